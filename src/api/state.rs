//! [`AppState`]: what every handler shares, given once to the router.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Semaphore;

use super::auth::Keys;
use super::error::ApiError;
use super::metrics::Metrics;
use crate::service::{self, Service};

/// Shared by all handlers (cheap to clone: `Arc`s).
#[derive(Clone)]
pub struct AppState {
    /// Store and model.
    pub service: Arc<Service>,
    /// Bounds concurrent model forwards.
    pub forwards: Arc<Semaphore>,
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
    /// `server.max_concurrent_forwards`.
    pub max_forwards: usize,
}

impl AppState {
    /// State over an opened service, with `max_concurrent_forwards` model permits.
    pub fn new(
        service: Service,
        keys: Keys,
        max_concurrent_forwards: usize,
        request_timeout_ms: u64,
        max_body_bytes: usize,
    ) -> Self {
        Self {
            service: Arc::new(service),
            forwards: Arc::new(Semaphore::new(max_concurrent_forwards.max(1))),
            keys: Arc::new(keys),
            metrics: Arc::new(Metrics::default()),
            ready: Arc::new(AtomicBool::new(true)),
            request_timeout_ms,
            max_body_bytes,
            max_forwards: max_concurrent_forwards.max(1),
        }
    }

    /// Model forwards holding a permit now.
    pub fn forwards_in_flight(&self) -> usize {
        self.max_forwards - self.forwards.available_permits()
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Run a service function on the blocking pool; with `uses_model`, first wait for a
    /// forward permit so at most `max_concurrent_forwards` model passes run at once.
    pub async fn run<T, F>(&self, uses_model: bool, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Service) -> service::Result<T> + Send + 'static,
    {
        let permit = if uses_model {
            Some(
                self.forwards
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ApiError::Internal("forward pool closed".into()))?,
            )
        } else {
            None
        };
        let svc = self.service.clone();
        let metrics = self.metrics.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if uses_model {
                metrics.forwards.fetch_add(1, Ordering::Relaxed);
            }
            f(&svc)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("worker failed: {e}")))?;
        Ok(out?)
    }
}
