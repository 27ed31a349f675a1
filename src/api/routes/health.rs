//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::api::envelope::ok;
use crate::api::error::{ApiError, ErrorEnvelope, ErrorStatus};
use crate::api::state::AppState;

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive")))]
pub async fn healthz() -> Response {
    ok("alive", Instant::now())
}

/// The store and model are loaded and the server is not draining.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, description = "draining")))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        ok("ready", Instant::now())
    } else {
        let body = ErrorEnvelope {
            status: ErrorStatus {
                error: "not ready: the server is shutting down".into(),
            },
            time: 0.0,
        };
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
    }
}

/// Prometheus text: requests by route and status, latency sums, model forwards, items.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let catalogues = state.run(crate::service::catalogues::list).await?;
    let items: Vec<(String, u64)> = catalogues.into_iter().map(|c| (c.name, c.items)).collect();
    let svc = &state.service;
    let text = state
        .metrics
        .render(&items, svc.forwards_started(), svc.forwards_in_flight());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}
