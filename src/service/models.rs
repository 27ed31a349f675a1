//! [`Models`]: the networks a service may run, keyed by fingerprint, and the one limit on
//! concurrent forward passes.
//!
//! A service holds zero models (item and vector searches, reads, deletes), one (the usual
//! server), or several: a catalogue may be re-embedded with a new model while the old one
//! still answers its queries. Every forward pass of the service goes through
//! [`Models::forward`], which takes one of `max_concurrent_forwards` permits, so the limit
//! lives here and not in each handler.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use asen_index::ModelRecord;
use asen_models::{Embedder, EmbedderOptions};

use super::{Result, ServiceError};

/// A loaded network and the fingerprint of its weights and card.
#[derive(Debug)]
pub struct Model {
    fingerprint: String,
    embedder: Embedder,
}

impl Model {
    /// Load a model directory (`card.json` + `model.safetensors`) or checkpoint file and
    /// fingerprint it.
    pub fn load(path: &Path, options: &EmbedderOptions) -> anyhow::Result<Self> {
        use anyhow::Context;
        let embedder = Embedder::load(path, options)
            .with_context(|| format!("cannot load model {}", path.display()))?;
        let fingerprint = fingerprint_files(path)
            .with_context(|| format!("cannot fingerprint model {}", path.display()))?;
        Ok(Self::new(fingerprint, embedder))
    }

    /// A model with a known fingerprint (tests, models built in memory).
    pub fn new(fingerprint: String, embedder: Embedder) -> Self {
        Self {
            fingerprint,
            embedder,
        }
    }

    /// sha256 of the weights and the card, shortened to 16 hex characters.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The network.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// What a catalogue built with this model records: fingerprint, backbone, every
    /// attribute it embeds (`identity` included when it has a copy signature), input size.
    pub fn record(&self) -> ModelRecord {
        let card = self.embedder.card();
        ModelRecord {
            fingerprint: self.fingerprint.clone(),
            backbone: card.backbone.clone(),
            attributes: self.embedder.attribute_names(),
            input_size: card.input_size,
        }
    }
}

/// How a model record reads in messages: `7e01e4fb8c83684e (mobilenet_v2, 224 px)`.
pub fn describe(record: &ModelRecord) -> String {
    format!(
        "{} ({}, {} px)",
        record.fingerprint, record.backbone, record.input_size
    )
}

/// The fingerprint of a model directory or checkpoint ([`asen_models::fingerprint`]).
pub fn fingerprint_files(path: &Path) -> std::io::Result<String> {
    asen_models::fingerprint(path)
}

/// Counting semaphore for blocking callers (the service runs on the blocking pool).
#[derive(Debug)]
struct ForwardLimit {
    max: usize,
    in_use: Mutex<usize>,
    freed: Condvar,
}

impl ForwardLimit {
    fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            in_use: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> ForwardPermit<'_> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner());
        while *in_use >= self.max {
            in_use = self.freed.wait(in_use).unwrap_or_else(|p| p.into_inner());
        }
        *in_use += 1;
        ForwardPermit { limit: self }
    }

    fn in_use(&self) -> usize {
        *self.in_use.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct ForwardPermit<'a> {
    limit: &'a ForwardLimit,
}

impl Drop for ForwardPermit<'_> {
    fn drop(&mut self) {
        let mut in_use = self.limit.in_use.lock().unwrap_or_else(|p| p.into_inner());
        *in_use -= 1;
        self.limit.freed.notify_one();
    }
}

/// The models of a service and the forward limit they share.
#[derive(Debug)]
pub struct Models {
    by_fingerprint: BTreeMap<String, Arc<Model>>,
    default: String,
    limit: ForwardLimit,
    forwards: AtomicU64,
}

impl Models {
    /// One model, the default, with at most `max_concurrent_forwards` passes at once.
    pub fn new(default: Model, max_concurrent_forwards: usize) -> Self {
        Self::shared(Arc::new(default), max_concurrent_forwards)
    }

    /// As [`Models::new`], over a model other services may hold too (tests load one once).
    pub fn shared(default: Arc<Model>, max_concurrent_forwards: usize) -> Self {
        let key = default.fingerprint.clone();
        Self {
            by_fingerprint: BTreeMap::from([(key.clone(), default)]),
            default: key,
            limit: ForwardLimit::new(max_concurrent_forwards),
            forwards: AtomicU64::new(0),
        }
    }

    /// Add another model (kept beside the default); a model already held is replaced.
    pub fn add(&mut self, model: Model) {
        self.add_shared(Arc::new(model));
    }

    /// As [`Models::add`], for a model other services may hold too.
    pub fn add_shared(&mut self, model: Arc<Model>) {
        if model.fingerprint != self.default {
            self.by_fingerprint.insert(model.fingerprint.clone(), model);
        }
    }

    /// The model new catalogues and image queries use.
    pub fn default_model(&self) -> &Arc<Model> {
        &self.by_fingerprint[&self.default]
    }

    /// A model by fingerprint.
    pub fn get(&self, fingerprint: &str) -> Option<&Arc<Model>> {
        self.by_fingerprint.get(fingerprint)
    }

    /// The model that computes `catalogue`'s vectors: the one its record names, else a held
    /// model that extends it (it computes the recorded model's attributes exactly as that
    /// model does), or the default for a catalogue without a record (vectors from before
    /// records were kept). [`ServiceError::ModelMismatch`] when this service holds neither:
    /// embedding with another model would give vectors that do not compare with the stored.
    pub fn for_catalogue(
        &self,
        catalogue: &str,
        record: Option<&ModelRecord>,
    ) -> Result<&Arc<Model>> {
        let Some(record) = record else {
            return Ok(self.default_model());
        };
        self.get(&record.fingerprint)
            .or_else(|| self.extending(&record.fingerprint).first().copied())
            .ok_or_else(|| ServiceError::ModelMismatch {
                catalogue: catalogue.to_string(),
                built_with: describe(record),
                loaded: self
                    .by_fingerprint
                    .values()
                    .map(|m| describe(&m.record()))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The held models that extend the model `fingerprint`, default first.
    pub fn extending(&self, fingerprint: &str) -> Vec<&Arc<Model>> {
        let default = self.default_model();
        std::iter::once(default)
            .chain(
                self.by_fingerprint
                    .values()
                    .filter(|m| !Arc::ptr_eq(m, default)),
            )
            .filter(|m| m.embedder.card().extends_model(fingerprint))
            .collect()
    }

    /// Fingerprints of every held model, sorted.
    pub fn fingerprints(&self) -> impl Iterator<Item = &str> {
        self.by_fingerprint.keys().map(String::as_str)
    }

    /// Run `f` (a forward pass) once a permit is free.
    pub fn forward<T>(&self, f: impl FnOnce() -> T) -> T {
        let _permit = self.limit.acquire();
        self.forwards.fetch_add(1, Ordering::Relaxed);
        f()
    }

    /// Forward passes running now.
    pub fn in_flight(&self) -> usize {
        self.limit.in_use()
    }

    /// Forward passes started since the service was built.
    pub fn forwards_started(&self) -> u64 {
        self.forwards.load(Ordering::Relaxed)
    }
}

/// The error of a service without a model asked to run one.
pub(crate) fn no_model(what: &str) -> ServiceError {
    ServiceError::NoModel {
        what: what.to_string(),
    }
}

/// `models` or [`ServiceError::NoModel`] naming what needed one.
pub(crate) fn require<'a>(models: Option<&'a Models>, what: &str) -> Result<&'a Models> {
    models.ok_or_else(|| no_model(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn forward_limit_bounds_concurrent_holders() {
        let limit = Arc::new(ForwardLimit::new(2));
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (limit, running, peak) = (limit.clone(), running.clone(), peak.clone());
                std::thread::spawn(move || {
                    let _p = limit.acquire();
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(limit.in_use(), 0, "every permit returned");
    }

    #[test]
    fn fingerprint_changes_with_card_or_weights() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("card.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"w1").unwrap();
        let a = fingerprint_files(dir.path()).unwrap();
        assert_eq!(a.len(), asen_models::FINGERPRINT_CHARS);
        assert_eq!(a, fingerprint_files(dir.path()).unwrap(), "stable");
        std::fs::write(dir.path().join("model.safetensors"), b"w2").unwrap();
        let b = fingerprint_files(dir.path()).unwrap();
        assert_ne!(a, b, "weights");
        std::fs::write(dir.path().join("card.json"), b"{ }").unwrap();
        assert_ne!(b, fingerprint_files(dir.path()).unwrap(), "card");
    }
}
