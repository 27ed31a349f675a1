//! [`AppState`]: what every handler shares, given once to the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::auth::Keys;
use super::error::ApiError;
use super::metrics::Metrics;
use crate::service::{self, Service};

/// Shared by all handlers (cheap to clone: `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// Store and models (the service bounds concurrent forward passes itself).
    pub service: Arc<Service>,
    /// Accepted keys.
    pub keys: Arc<Keys>,
    /// Request counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// False while starting and once shutting down (`/readyz`).
    pub ready: Arc<AtomicBool>,
    /// `limits.request_timeout_ms`.
    pub request_timeout_ms: u64,
    /// `limits.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl AppState {
    /// State over an opened service.
    pub fn new(
        service: Service,
        keys: Keys,
        request_timeout_ms: u64,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            service: Arc::new(service),
            keys: Arc::new(keys),
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(true)),
            request_timeout_ms,
            max_body_bytes,
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Run a service function on the blocking pool (it may embed images: the service waits
    /// for a forward permit itself).
    pub async fn run<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Service) -> service::Result<T> + Send + 'static,
    {
        let svc = self.service.clone();
        let out = tokio::task::spawn_blocking(move || f(&svc))
            .await
            .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?;
        Ok(out?)
    }
}
