//! Creating, describing and dropping catalogues.

use asen_index::{
    CatalogueInfo, CatalogueSchema, CatalogueStats, FieldValues, HnswConfig, IndexError,
};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{Result, Service, ServiceError};

/// How to create a catalogue; every field optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCatalogue {
    /// Attributes to index (a subset of the model's); all of them when absent.
    #[serde(default)]
    pub attributes: Option<Vec<String>>,
    /// Graph parameters; the server's `[index]` defaults when absent.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub hnsw: Option<HnswConfig>,
}

/// A catalogue's schema and statistics.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CatalogueDetails {
    /// Schema fixed at creation.
    #[schema(value_type = Object)]
    pub schema: CatalogueSchema,
    /// Counts and graph statistics.
    #[schema(value_type = Object)]
    pub stats: CatalogueStats,
}

/// Create `name` with the default model's dimension and the chosen attributes, recording
/// the model (fingerprint, backbone, attributes, input size) in its schema.
#[tracing::instrument(skip_all, fields(catalogue = name))]
pub fn create(svc: &Service, name: &str, spec: &NewCatalogue) -> Result<CatalogueDetails> {
    let model = svc.model("creating a catalogue")?;
    let embedder = model.embedder();
    let card = embedder.card();
    let attributes = match &spec.attributes {
        Some(list) if list.is_empty() => {
            return Err(ServiceError::invalid(
                "attributes: give at least one attribute",
            ))
        }
        Some(list) => {
            for a in list {
                embedder.attribute_index(a)?;
            }
            list.clone()
        }
        None => embedder.attribute_names(),
    };
    let schema = CatalogueSchema::new(attributes, card.embedding_dim)
        .with_hnsw(spec.hnsw.unwrap_or(svc.hnsw))
        .with_model(model.record());
    svc.store("creating a catalogue")?
        .create_catalogue(name, &schema)?;
    info!(
        catalogue = name,
        attributes = schema.attributes.len(),
        "catalogue created"
    );
    details(svc, name)
}

/// Schema and statistics of one catalogue.
pub fn details(svc: &Service, name: &str) -> Result<CatalogueDetails> {
    Ok(CatalogueDetails {
        schema: svc.store("describing a catalogue")?.schema(name)?,
        stats: svc.store("describing a catalogue")?.stats(name)?,
    })
}

/// Every catalogue with its per-attribute counts.
pub fn list(svc: &Service) -> Result<Vec<CatalogueInfo>> {
    Ok(svc.store("listing catalogues")?.list_catalogues()?)
}

/// The distinct values of a payload field with their item counts, most frequent first (at
/// most `limit`; the store checks it): what the page offers as filters.
pub fn field_values(svc: &Service, name: &str, field: &str, limit: usize) -> Result<FieldValues> {
    Ok(svc
        .store("reading a field's values")?
        .field_values(name, field, limit)?)
}

/// Drop a catalogue and its items (thumbnails included).
#[tracing::instrument(skip_all, fields(catalogue = name))]
pub fn drop(svc: &Service, name: &str) -> Result<()> {
    svc.store("dropping a catalogue")?.drop_catalogue(name)?;
    info!(catalogue = name, "catalogue dropped");
    Ok(())
}

/// Create `name` with every attribute of the model if it is missing, or check that the
/// existing catalogue has exactly the model's attributes and dimension (bulk ingestion).
/// A catalogue built before the model had its copy signature (every attribute but
/// `identity`) is accepted: its items are written without the identity vector. A catalogue
/// recorded as built by another model is refused ([`ServiceError::ModelMismatch`]).
/// Whether it was created.
pub fn ensure(svc: &Service, name: &str) -> Result<bool> {
    let models = svc.models("ingesting")?;
    match svc.store("ingesting")?.schema(name) {
        Ok(schema) if schema.migration.is_some() => {
            // Being reindexed: the upserts write what the migration needs (items::upsert_prepared).
            super::items::input_model(svc, name)?;
            Ok(false)
        }
        Ok(schema) => {
            let model = models.for_catalogue(name, schema.model.as_ref())?;
            let embedder = model.embedder();
            let card = embedder.card();
            let attributes = embedder.attribute_names();
            let design_points = card.attribute_names();
            let known = schema.attributes == attributes || schema.attributes == design_points;
            if !known || schema.dimension != card.embedding_dim {
                return Err(ServiceError::invalid(format!(
                    "catalogue {name:?} has attributes [{}] of dimension {}, the model embeds [{}] of dimension {}",
                    schema.attributes.join(", "),
                    schema.dimension,
                    attributes.join(", "),
                    card.embedding_dim
                )));
            }
            Ok(false)
        }
        Err(IndexError::CatalogueNotFound { .. }) => {
            create(svc, name, &NewCatalogue::default())?;
            Ok(true)
        }
        Err(e) => Err(e.into()),
    }
}
