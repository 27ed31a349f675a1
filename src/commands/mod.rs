//! One module per subcommand; each exposes `run(args, &config)`. This module opens what
//! they share from the [`Config`]: the store, the model, and the [`Service`] over them.

pub mod compare;
pub mod convert;
pub mod copies;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod inspect;
pub mod reindex;
pub mod search;
pub mod serve;
pub mod train;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use asen_index::{CatalogueStore, Durability, HnswConfig, LocalStore, StoreOptions};
use asen_models::{EmbedderOptions, PreprocessConfig};
use tracing::info;

use crate::config::{Config, StoreKind};
use crate::service::{Model, Models, Service, ServiceLimits};

/// Open the store `index.store` names.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn CatalogueStore>> {
    match config.store_kind()? {
        StoreKind::Local => {
            let dir = &config.index.data_dir;
            let store = LocalStore::open(
                dir,
                StoreOptions {
                    durability: if config.index.flush_writes {
                        Durability::Flush
                    } else {
                        Durability::Deferred
                    },
                    cache_capacity_bytes: config.index.cache_capacity_bytes,
                    ..StoreOptions::default()
                },
            )
            .with_context(|| format!("cannot open store {}", dir.display()))?;
            info!(data = %dir.display(), "local store opened");
            if let Some(m) = store.thumbnail_migration() {
                info!(
                    imported = m.imported,
                    skipped = m.skipped,
                    "thumbnails of an older version moved into the store"
                );
            }
            Ok(Arc::new(store))
        }
        StoreKind::Milvus(url) => open_milvus(&url),
    }
}

#[cfg(feature = "milvus")]
fn open_milvus(url: &str) -> anyhow::Result<Arc<dyn CatalogueStore>> {
    let shown = asen_index::redact_milvus_url(url);
    let store = asen_index::MilvusStore::open_url(url)
        .with_context(|| format!("cannot open store {shown}"))?;
    info!(store = %shown, "milvus store opened");
    Ok(Arc::new(store))
}

#[cfg(not(feature = "milvus"))]
fn open_milvus(_url: &str) -> anyhow::Result<Arc<dyn CatalogueStore>> {
    // `Config::validate` refuses milvus URLs in such a build; this is the same sentence.
    anyhow::bail!("a milvus:// store needs asen built with the milvus feature")
}

/// The options the embedder is loaded with.
pub fn embedder_options(config: &Config) -> anyhow::Result<EmbedderOptions> {
    Ok(EmbedderOptions {
        device: asen_models::parse_device(&config.model.device)?,
        batch_size: config.model.batch_size,
        preprocess: PreprocessConfig {
            max_pixels: config.limits.max_pixels,
            max_decode_bytes: config.limits.max_decode_bytes,
            ..PreprocessConfig::default()
        },
        weights_dirs: config.weights_dirs(),
    })
}

/// Load the configured model (or the shipped one) on its device.
pub fn load_model(config: &Config) -> anyhow::Result<Model> {
    let started = Instant::now();
    let model = Model::load(&config.model_path(), &embedder_options(config)?)?;
    let card = model.embedder().card();
    info!(
        fingerprint = model.fingerprint(),
        backbone = %card.backbone,
        attributes = card.attributes.len(),
        dimension = card.embedding_dim,
        calibrated = card.match_thresholds.is_some(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    Ok(model)
}

/// What a command needs opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The catalogue store.
    pub store: bool,
    /// The model.
    pub model: bool,
}

/// The service over what `needs` asks for, with the configured limits.
pub fn open_service(config: &Config, needs: Needs) -> anyhow::Result<Service> {
    let mut service = Service::new(
        ServiceLimits {
            max_batch_items: config.limits.max_batch_items,
            max_k: config.limits.max_k,
            decode_budget_bytes: config.limits.decode_budget_bytes,
            decode_wait_ms: config.limits.decode_wait_ms,
        },
        HnswConfig {
            m: config.index.m,
            ef_construction: config.index.ef_construction,
            ef_search: config.index.ef_search,
        },
        config.index.thumbnails,
    );
    if needs.store {
        service = service.with_store(open_store(config)?);
    }
    service.reindex_batch = config.model.batch_size;
    if needs.model {
        let model = load_model(config)?;
        let mut models = Models::new(model, config.server.max_concurrent_forwards);
        for path in &config.model.also {
            let other = Model::load(path, &embedder_options(config)?)?;
            info!(
                fingerprint = other.fingerprint(),
                path = %path.display(),
                "model also held"
            );
            models.add(other);
        }
        service = service.with_models(models);
    }
    Ok(service)
}
