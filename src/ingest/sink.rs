//! [`Sink`]: where ingested items go. Two implementations, one path each:
//! [`LocalSink`] calls `service::items` (the same functions as `PUT .../items`), and
//! [`super::RemoteSink`] sends the images to a running server's HTTP API, which calls them
//! there. Either way the content hash, the attribute order and the thumbnails are the
//! service's.

use std::sync::Arc;
use std::time::Duration;

use asen_index::{ErrorKind, ItemId, Payload};

use crate::service::items::{self, NewItem, PreparedItem};
use crate::service::{catalogues, Model, Service, ServiceError};

/// What a write did.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOutcome {
    /// Every item of the batch was written.
    Written {
        /// Time spent in forward passes here (zero when a server embeds).
        model_time: Duration,
    },
    /// The batch was refused for its content (nothing written); the reason names it.
    Refused(String),
}

/// A destination of the ingestion pipeline. `prepare` runs on the reading threads; the rest
/// on the pipeline's writer.
pub trait Sink: Sync {
    /// An item ready to write.
    type Prepared: Send;

    /// Create the catalogue from the model if it is missing, or check it fits the model.
    fn ensure_catalogue(&self, catalogue: &str) -> anyhow::Result<()>;

    /// Whether the item is stored with the image of hash `hash` and this payload already
    /// (then it is skipped).
    fn is_current(
        &self,
        catalogue: &str,
        id: &ItemId,
        hash: &str,
        payload: &Payload,
    ) -> anyhow::Result<bool>;

    /// Read an item's image into what `write` takes; `Err` is the reason it fails (the row
    /// goes to the report and the run continues).
    fn prepare(&self, item: NewItem) -> Result<Self::Prepared, String>;

    /// Write a batch; an `Err` stops the run (storage or transport failure).
    fn write(&self, catalogue: &str, batch: &[Self::Prepared]) -> anyhow::Result<WriteOutcome>;

    /// Items per `write`.
    fn batch_size(&self) -> usize;

    /// Whether the model runs in this process (the summary reports its share of the time).
    fn embeds_here(&self) -> bool;

    /// Make everything written durable.
    fn finish(&self) -> anyhow::Result<()>;
}

/// Writes through a [`Service`] with a store and a model.
pub struct LocalSink {
    service: Service,
    batch_size: usize,
    /// The model of the catalogue being ingested, found by `ensure_catalogue`: items are
    /// cropped to its input size and embedded by it.
    model: std::sync::OnceLock<Arc<Model>>,
}

impl LocalSink {
    /// A sink upserting `batch_size` items at a time.
    pub fn new(service: Service, batch_size: usize) -> Self {
        Self {
            service,
            batch_size: batch_size.max(1),
            model: std::sync::OnceLock::new(),
        }
    }
}

/// Whether a service error is about the request's content (the items), not the store.
fn is_refusal(e: &ServiceError) -> bool {
    match e {
        ServiceError::Index(e) => e.kind() == ErrorKind::InvalidInput,
        ServiceError::InvalidRequest { .. } | ServiceError::Thumbnail(_) => true,
        _ => false,
    }
}

impl Sink for LocalSink {
    type Prepared = PreparedItem;

    fn ensure_catalogue(&self, catalogue: &str) -> anyhow::Result<()> {
        if catalogues::ensure(&self.service, catalogue)? {
            tracing::info!(catalogue, "catalogue created from the model card");
        }
        let model = items::input_model(&self.service, catalogue)?;
        // One catalogue per run: a second call finds the model already set.
        let _ = self.model.set(Arc::clone(model));
        Ok(())
    }

    fn is_current(
        &self,
        catalogue: &str,
        id: &ItemId,
        hash: &str,
        payload: &Payload,
    ) -> anyhow::Result<bool> {
        use anyhow::Context;
        let stored = self
            .service
            .store("ingesting")?
            .get(catalogue, id, false)
            .with_context(|| {
                format!(
                    "cannot look up item {:?} in catalogue {catalogue:?}",
                    id.as_str()
                )
            })?;
        Ok(stored.is_some_and(|s| items::is_current(&self.service, &s, hash, payload)))
    }

    fn prepare(&self, item: NewItem) -> Result<PreparedItem, String> {
        let model = self
            .model
            .get()
            .ok_or("ingestion did not check the catalogue before reading images")?;
        // The model's message already says what failed ("cannot decode image: ...").
        items::prepare(&self.service, model, item).map_err(|e| e.to_string())
    }

    fn write(&self, catalogue: &str, batch: &[PreparedItem]) -> anyhow::Result<WriteOutcome> {
        match items::upsert_prepared(&self.service, catalogue, batch) {
            Ok(done) => Ok(WriteOutcome::Written {
                model_time: done.model_time,
            }),
            Err(e) if is_refusal(&e) => Ok(WriteOutcome::Refused(format!(
                "store refused the item: {e}"
            ))),
            Err(e) => {
                Err(anyhow::Error::new(e)
                    .context(format!("cannot write to catalogue {catalogue:?}")))
            }
        }
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn embeds_here(&self) -> bool {
        true
    }

    fn finish(&self) -> anyhow::Result<()> {
        use anyhow::Context;
        self.service
            .store("ingesting")?
            .flush()
            .context("cannot flush the store")
    }
}
