//! What the API and the CLI do, without HTTP: synchronous functions over a [`Service`]
//! (the store and the model). Async callers run them on the blocking pool; the CLI and
//! `asen ingest` call them directly.
//!
//! Each function checks its request against the catalogue schema and the model card,
//! embeds images when needed, calls the store and maps the answer. Errors are
//! [`ServiceError`]s, which the API maps to statuses and the CLI prints.

pub mod catalogues;
pub mod compare;
pub mod decode;
pub mod explain;
pub mod items;
pub mod lifecycle;
pub mod models;
pub mod search;
pub mod thumbnails;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use asen_index::{CatalogueStore, HnswConfig, IndexError, ItemId};
use asen_models::ModelError;
use serde::Serialize;
use thumbnails::ThumbnailError;

pub use models::{Model, Models};

/// What the API and the CLI share: the store and the models, each optional, opened once.
///
/// A service without models answers item and vector queries, reads and deletes; one
/// without a store embeds and compares images. Asking for the missing part is a
/// [`ServiceError::NoModel`] or [`ServiceError::NoStore`] naming what needed it.
#[derive(Clone)]
pub struct Service {
    store: Option<Arc<dyn CatalogueStore>>,
    models: Option<Arc<Models>>,
    /// Request bounds enforced here (the API adds body size and time).
    pub limits: ServiceLimits,
    /// Graph parameters of new catalogues.
    pub hnsw: HnswConfig,
    /// Keep each upserted item's model-input crop (JPEG) in the store, for explain by item
    /// and the item image route (`index.thumbnails`).
    pub thumbnails: bool,
    /// Bytes that concurrent image decodes may hold together.
    pub decode_budget: Arc<decode::DecodeBudget>,
    /// Crops per forward pass of a reindex (`model.batch_size`).
    pub reindex_batch: usize,
    /// Per catalogue, the lock that orders writes and model-using reads (shared) with the
    /// start and the switch of a migration (exclusive): see [`lifecycle`].
    gates: Arc<Mutex<HashMap<String, Arc<RwLock<()>>>>>,
    /// Migration jobs this service started, by catalogue.
    pub(crate) jobs: Arc<Mutex<HashMap<String, Arc<lifecycle::Progress>>>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("store", &self.store.is_some())
            .field("models", &self.models)
            .field("limits", &self.limits)
            .field("thumbnails", &self.thumbnails)
            .finish()
    }
}

/// Bounds checked by service functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Most items in one upsert.
    pub max_batch_items: usize,
    /// Largest `k`.
    pub max_k: usize,
    /// Bytes that image decodes in flight may hold together (`limits.decode_budget_bytes`).
    pub decode_budget_bytes: u64,
    /// Longest a decode waits for room in that budget before the request is refused
    /// as busy (`limits.decode_wait_ms`).
    pub decode_wait_ms: u64,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_batch_items: 256,
            max_k: 1000,
            decode_budget_bytes: 1 << 30,
            decode_wait_ms: 2_000,
        }
    }
}

/// Everything a service function can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model refused an image or an attribute, or failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The store refused the request or failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The request is malformed in a way neither library checks.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong, naming the field.
        reason: String,
    },
    /// `k` outside the configured range.
    #[error("k = {k} is outside 1..={max}")]
    InvalidK {
        /// The k asked for.
        k: usize,
        /// The configured `limits.max_k`.
        max: usize,
    },
    /// More items than `limits.max_batch_items`.
    #[error("batch of {got} items exceeds the limit of {limit} (limits.max_batch_items)")]
    BatchTooLarge {
        /// Items sent.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// An item id given as a query does not exist.
    #[error("item {id:?} not found in catalogue {catalogue:?}")]
    ItemNotFound {
        /// The catalogue.
        catalogue: String,
        /// The id.
        id: String,
    },
    /// A thumbnail could not be encoded, or a stored one is unreadable.
    #[error(transparent)]
    Thumbnail(#[from] ThumbnailError),
    /// The item exists but has no stored thumbnail (stored with thumbnails off).
    #[error("item {id:?} of catalogue {catalogue:?} has no stored image (it was stored with index.thumbnails off, or by an older version): upsert or ingest it again with thumbnails on, or send the image as \"image\"")]
    NoThumbnail {
        /// The catalogue.
        catalogue: String,
        /// The id.
        id: String,
    },
    /// A decision needs match thresholds and the model card has none.
    #[error("the model is uncalibrated (its card has no match_thresholds); give \"threshold\" explicitly")]
    Uncalibrated,
    /// A shared resource is spent for now (the decode budget); the request may be retried.
    #[error("busy: {what}; retry in {retry_after_s} s")]
    Busy {
        /// What is spent, with the figures.
        what: String,
        /// Seconds after which a retry may succeed (the `Retry-After` header).
        retry_after_s: u64,
    },
    /// The request needs a network and this service runs without one.
    #[error("{what} needs a model, and none is loaded here (give --model, or [model] path)")]
    NoModel {
        /// What needed it ("an image query").
        what: String,
    },
    /// A catalogue's vectors come from a model this service does not hold: embedding a query
    /// or an item with another model would mix two embedding spaces.
    #[error("catalogue {catalogue:?} was built with model {built_with}, but the model loaded here is {loaded}: embedding with it would mix two models' vectors; load the catalogue's model (--model), or reindex the catalogue to this one")]
    ModelMismatch {
        /// The catalogue.
        catalogue: String,
        /// Its recorded model.
        built_with: String,
        /// The models held here.
        loaded: String,
    },
    /// A model named by fingerprint (a reindex target) is not loaded here.
    #[error("model {fingerprint} is not loaded here (loaded: {loaded}): start the server with --also-model PATH (or [model] also) to hold it beside the default")]
    ModelNotLoaded {
        /// The fingerprint asked for.
        fingerprint: String,
        /// The models held.
        loaded: String,
    },
    /// A catalogue is being moved to another model; the request must wait for the switch.
    #[error("catalogue {catalogue:?} is being reindexed to model {target}: let that finish first (see GET /v1/catalogues/{catalogue}/reindex)")]
    MigrationInProgress {
        /// The catalogue.
        catalogue: String,
        /// The migration's target.
        target: String,
    },
    /// The two sides of a comparison are stored items of catalogues built with different
    /// models: their vectors do not compare.
    #[error("{a} and {b} were built with different models: their vectors do not compare; compare images, or items of catalogues built with one model")]
    MixedModels {
        /// The first side's catalogue and model.
        a: String,
        /// The second side's.
        b: String,
    },
    /// The request needs a catalogue store and this service runs without one.
    #[error("{what} needs a catalogue store, and none is open here")]
    NoStore {
        /// What needed it.
        what: String,
    },
}

impl ServiceError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        ServiceError::InvalidRequest {
            reason: reason.into(),
        }
    }
}

/// An answer with the fingerprint of the model it was computed with: the catalogue's for
/// searches (its stored vectors and any query embedded for it), the model that embedded the
/// images for compare and explain. `None` when no model is known (vectors a client stored
/// in a catalogue without a model record).
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// The model's fingerprint.
    pub model: Option<String>,
}

impl<T> Answer<T> {
    /// `value` computed with `model`.
    pub fn new(value: T, model: Option<String>) -> Self {
        Self { value, model }
    }

    /// The same model, another value.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        Answer {
            value: f(self.value),
            model: self.model,
        }
    }
}

/// Result alias of the service layer.
pub type Result<T> = std::result::Result<T, ServiceError>;

/// What `GET /v1/model` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// sha256 of the model's weights and card, shortened (names the model in answers).
    pub fingerprint: String,
    /// Head variant (asen_v1, asen_v2, ...).
    #[schema(value_type = String)]
    pub variant: serde_json::Value,
    /// Backbone name.
    pub backbone: String,
    /// Square input side in pixels.
    pub input_size: u32,
    /// Embedding dimension of every attribute.
    pub dimension: usize,
    /// Attributes with their value names.
    pub attributes: Vec<AttributeInfo>,
    /// Per-attribute match thresholds of the copy check, when calibrated.
    pub match_thresholds: Option<BTreeMap<String, f32>>,
    /// The copy verdict's signature (searchable as the attribute `identity`): its size,
    /// calibrated threshold and how it was calibrated; absent when the model has none.
    #[schema(value_type = Object)]
    pub copy_signature: Option<asen_models::CopySignatureSpec>,
    /// Where the weights came from.
    #[schema(value_type = Object)]
    pub provenance: serde_json::Value,
}

/// One attribute of the model.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttributeInfo {
    /// Name.
    pub name: String,
    /// Value names (may be empty).
    pub values: Vec<String>,
}

impl Service {
    /// A service with neither store nor models; add them with [`Service::with_store`] and
    /// [`Service::with_models`].
    pub fn new(limits: ServiceLimits, hnsw: HnswConfig, thumbnails: bool) -> Self {
        Self {
            store: None,
            models: None,
            decode_budget: decode::DecodeBudget::new(
                limits.decode_budget_bytes,
                std::time::Duration::from_millis(limits.decode_wait_ms),
            ),
            limits,
            hnsw,
            thumbnails,
            reindex_batch: 16,
            gates: Arc::default(),
            jobs: Arc::default(),
        }
    }

    /// The write gate of `catalogue` (created on first use).
    pub fn write_gate(&self, catalogue: &str) -> Arc<RwLock<()>> {
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(gates.entry(catalogue.to_string()).or_default())
    }

    /// The same service over `store`.
    pub fn with_store(mut self, store: Arc<dyn CatalogueStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The same service with `models`.
    pub fn with_models(mut self, models: Models) -> Self {
        self.models = Some(Arc::new(models));
        self
    }

    /// The store, or [`ServiceError::NoStore`] naming `what` needed it.
    pub fn store(&self, what: &str) -> Result<&dyn CatalogueStore> {
        self.store.as_deref().ok_or_else(|| ServiceError::NoStore {
            what: what.to_string(),
        })
    }

    /// The store handle, when one is open (flushing at shutdown).
    pub fn store_handle(&self) -> Option<&Arc<dyn CatalogueStore>> {
        self.store.as_ref()
    }

    /// The models, or [`ServiceError::NoModel`] naming what needed one.
    pub fn models(&self, what: &str) -> Result<&Models> {
        models::require(self.models.as_deref(), what)
    }

    /// The default model, or [`ServiceError::NoModel`].
    pub fn model(&self, what: &str) -> Result<&Arc<Model>> {
        Ok(self.models(what)?.default_model())
    }

    /// Forward passes running now (0 without models).
    pub fn forwards_in_flight(&self) -> usize {
        self.models.as_ref().map_or(0, |m| m.in_flight())
    }

    /// Forward passes started since start (0 without models).
    pub fn forwards_started(&self) -> u64 {
        self.models.as_ref().map_or(0, |m| m.forwards_started())
    }

    /// The model of `catalogue` (see [`Models::for_catalogue`]), read from its schema.
    pub fn catalogue_model(&self, catalogue: &str, what: &str) -> Result<&Arc<Model>> {
        let schema = self.store(what)?.schema(catalogue)?;
        self.models(what)?
            .for_catalogue(catalogue, schema.model.as_ref())
    }

    /// Describe the default model.
    pub fn model_info(&self) -> Result<ModelInfo> {
        let model = self.model("describing the model")?;
        let card = model.embedder().card();
        Ok(ModelInfo {
            fingerprint: model.fingerprint().to_string(),
            variant: serde_json::to_value(card.head).unwrap_or(serde_json::Value::Null),
            backbone: card.backbone.clone(),
            input_size: card.input_size,
            dimension: card.embedding_dim,
            attributes: card
                .attributes
                .iter()
                .map(|a| AttributeInfo {
                    name: a.name.clone(),
                    values: a.values.clone(),
                })
                .collect(),
            match_thresholds: card.match_thresholds.clone(),
            copy_signature: card
                .copy_signature
                .clone()
                .filter(|_| model.embedder().signature().is_some()),
            provenance: serde_json::to_value(&card.provenance).unwrap_or_default(),
        })
    }

    /// Check `k` against `limits.max_k`.
    pub(crate) fn check_k(&self, k: usize) -> Result<()> {
        if k == 0 || k > self.limits.max_k {
            return Err(ServiceError::InvalidK {
                k,
                max: self.limits.max_k,
            });
        }
        Ok(())
    }

    /// Parse an item id given by a user.
    pub(crate) fn item_id(id: &str) -> Result<ItemId> {
        Ok(ItemId::new(id)?)
    }

    /// Decode `bytes` with `embedder` under the pixel and memory limits, holding the image's
    /// decode cost from the decode budget until the returned permit is dropped. `label`
    /// names the image in errors.
    pub fn decode(
        &self,
        embedder: &asen_models::Embedder,
        bytes: &[u8],
        label: &str,
    ) -> Result<(image::RgbImage, decode::DecodePermit)> {
        let named = |e: ModelError| e.with_source_name(label.to_string());
        let cost = asen_models::decode_cost(bytes, embedder.preprocess_config()).map_err(named)?;
        let permit = self.decode_budget.acquire(cost.bytes)?;
        let image = embedder.decode(bytes).map_err(named)?;
        Ok((image, permit))
    }

    /// Embed one encoded image with `model` for the named attributes (model order irrelevant).
    /// `label` names the image in errors ("of the query", "of a").
    pub fn embed_one(
        &self,
        model: &Model,
        bytes: &[u8],
        label: &str,
        attributes: &[String],
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let models = self.models("an image")?;
        let embedder = model.embedder();
        let idx = attributes
            .iter()
            .map(|a| embedder.attribute_index(a))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let (image, permit) = self.decode(embedder, bytes, label)?;
        // The full-size image is only needed until its crop is taken.
        let crop = embedder.crop(&image);
        drop((image, permit));
        let mut out = models.forward(|| embedder.embed_crops(&[crop], &idx))?;
        let per_attribute = out.pop().unwrap_or_default();
        Ok(attributes
            .iter()
            .cloned()
            .zip(per_attribute.into_iter().map(|e| e.vector))
            .collect())
    }

    /// [`Service::embed_one`] for attributes of a catalogue: each embedded under its model
    /// name ([`CatalogueSchema::model_attribute`], for renamed ones), keyed by its catalogue
    /// name.
    pub fn embed_for_catalogue(
        &self,
        model: &Model,
        schema: &asen_index::CatalogueSchema,
        bytes: &[u8],
        label: &str,
        attributes: &[String],
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let model_names: Vec<String> = attributes
            .iter()
            .map(|a| schema.model_attribute(a).to_string())
            .collect();
        let mut by_model_name = self.embed_one(model, bytes, label, &model_names)?;
        Ok(attributes
            .iter()
            .zip(&model_names)
            .filter_map(|(a, m)| by_model_name.remove(m).map(|v| (a.clone(), v)))
            .collect())
    }

    /// The stored vectors of an item, or `ItemNotFound`.
    pub(crate) fn item_vectors(
        &self,
        catalogue: &str,
        id: &ItemId,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let item = self
            .store("a stored item")?
            .get(catalogue, id, true)?
            .ok_or_else(|| ServiceError::ItemNotFound {
                catalogue: catalogue.to_string(),
                id: id.to_string(),
            })?;
        Ok(item.vectors.unwrap_or_default())
    }

    /// The stored thumbnail (JPEG) of an item: the index's catalogue-not-found error or
    /// `ItemNotFound` when the item is absent, `NoThumbnail` when it has none.
    pub(crate) fn item_thumbnail(&self, catalogue: &str, id: &ItemId) -> Result<Vec<u8>> {
        let store = self.store("a stored item's image")?;
        if store.get(catalogue, id, false)?.is_none() {
            return Err(ServiceError::ItemNotFound {
                catalogue: catalogue.to_string(),
                id: id.to_string(),
            });
        }
        store
            .thumbnail(catalogue, id)?
            .ok_or_else(|| ServiceError::NoThumbnail {
                catalogue: catalogue.to_string(),
                id: id.to_string(),
            })
    }
}

/// Cosine similarity of two vectors (0 when either is zero): the one
/// implementation, [`asen_models::cosine`].
pub use asen_models::cosine;
