//! What the API and the CLI do, without HTTP: synchronous functions over a [`Service`]
//! (the store and the model). Async callers run them on the blocking pool; the CLI and
//! `asen ingest` call them directly.
//!
//! Each function checks its request against the catalogue schema and the model card,
//! embeds images when needed, calls the store and maps the answer. Errors are
//! [`ServiceError`]s, which the API maps to statuses and the CLI prints.

pub mod catalogues;
pub mod compare;
pub mod explain;
pub mod items;
pub mod search;
pub mod thumbnails;

use std::collections::BTreeMap;
use std::sync::Arc;

use asen_index::{CatalogueStore, HnswConfig, IndexError, ItemId};
use asen_models::{Embedder, ModelError};
use serde::Serialize;
use thumbnails::{ThumbnailError, Thumbnails};

/// The store and the model, opened once and shared.
#[derive(Clone)]
pub struct Service {
    /// Catalogues.
    pub store: Arc<dyn CatalogueStore>,
    /// The model every image goes through.
    pub embedder: Arc<Embedder>,
    /// Request bounds enforced here (the API adds body size and time).
    pub limits: ServiceLimits,
    /// Graph parameters of new catalogues.
    pub hnsw: HnswConfig,
    /// Model-input crops of the items (explain by item, the item image route); `None` where
    /// no data directory backs the service (the CLI's scratch stores).
    pub thumbnails: Option<Arc<Thumbnails>>,
}

/// Bounds checked by service functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Most items in one upsert.
    pub max_batch_items: usize,
    /// Largest `k`.
    pub max_k: usize,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_batch_items: 256,
            max_k: 1000,
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
    /// The thumbnail store failed or holds an unreadable image.
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
}

impl ServiceError {
    pub(crate) fn invalid(reason: impl Into<String>) -> Self {
        ServiceError::InvalidRequest {
            reason: reason.into(),
        }
    }
}

/// Result alias of the service layer.
pub type Result<T> = std::result::Result<T, ServiceError>;

/// What `GET /v1/model` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
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
    /// Describe the loaded model.
    pub fn model_info(&self) -> ModelInfo {
        let card = self.embedder.card();
        ModelInfo {
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
            provenance: serde_json::to_value(&card.provenance).unwrap_or_default(),
        }
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

    /// Embed one encoded image for the named attributes (model order irrelevant).
    /// `label` names the image in errors ("of the query", "of a").
    pub fn embed_one(
        &self,
        bytes: &[u8],
        label: &str,
        attributes: &[String],
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let idx = attributes
            .iter()
            .map(|a| self.embedder.attribute_index(a))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let image = self
            .embedder
            .decode(bytes)
            .map_err(|e| e.with_source_name(label.to_string()))?;
        let mut out = self.embedder.embed_images(&[image], &idx)?;
        let per_attribute = out.pop().unwrap_or_default();
        Ok(attributes
            .iter()
            .cloned()
            .zip(per_attribute.into_iter().map(|e| e.vector))
            .collect())
    }

    /// The stored vectors of an item, or `ItemNotFound`.
    pub(crate) fn item_vectors(
        &self,
        catalogue: &str,
        id: &ItemId,
    ) -> Result<BTreeMap<String, Vec<f32>>> {
        let item =
            self.store
                .get(catalogue, id, true)?
                .ok_or_else(|| ServiceError::ItemNotFound {
                    catalogue: catalogue.to_string(),
                    id: id.to_string(),
                })?;
        Ok(item.vectors.unwrap_or_default())
    }
}

impl Service {
    /// The stored thumbnail (JPEG) of an item: the index's catalogue-not-found error or
    /// `ItemNotFound` when the item is absent, `NoThumbnail` when it has none.
    pub(crate) fn item_thumbnail(&self, catalogue: &str, id: &ItemId) -> Result<Vec<u8>> {
        if self.store.get(catalogue, id, false)?.is_none() {
            return Err(ServiceError::ItemNotFound {
                catalogue: catalogue.to_string(),
                id: id.to_string(),
            });
        }
        let stored = match &self.thumbnails {
            Some(t) => t.get(catalogue, id.as_str())?,
            None => None,
        };
        stored.ok_or_else(|| ServiceError::NoThumbnail {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
        })
    }
}

/// Cosine similarity of two vectors (0 when either is zero): the one
/// implementation, [`asen_models::cosine`].
pub use asen_models::cosine;
