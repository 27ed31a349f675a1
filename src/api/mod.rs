//! The REST API: [`router`] builds the axum app over an [`AppState`]; handlers live in
//! `routes/`, one module per resource, and call `crate::service`.
//!
//! Every answer uses the Qdrant-style envelope (`{"result", "status": "ok", "time"}`, or
//! `{"status": {"error"}}` with the status chosen by [`ApiError::status`]).

mod auth;
mod envelope;
mod error;
mod metrics;
mod openapi;
mod routes;
mod serve;
mod state;
mod ui;

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use tower_http::trace::TraceLayer;

pub use auth::Keys;
pub use error::ApiError;
pub use routes::items::{ItemBody, UpsertBody};
pub use serve::{serve, ServeOptions};
pub use state::AppState;

/// Every API route as (method, path), in the order of the router (checked against the
/// OpenAPI document by a test). The web page (`GET /` and `GET /ui/{file}`, see `ui`) is not
/// part of the API and not listed.
#[cfg_attr(not(test), allow(dead_code))]
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/v1/model"),
    ("GET", "/v1/catalogues"),
    ("PUT", "/v1/catalogues/{name}"),
    ("GET", "/v1/catalogues/{name}"),
    ("DELETE", "/v1/catalogues/{name}"),
    ("GET", "/v1/catalogues/{name}/fields/{field}/values"),
    ("GET", "/v1/catalogues/{name}/items"),
    ("PUT", "/v1/catalogues/{name}/items"),
    ("GET", "/v1/catalogues/{name}/items/{id}"),
    ("DELETE", "/v1/catalogues/{name}/items/{id}"),
    ("GET", "/v1/catalogues/{name}/items/{id}/image"),
    ("POST", "/v1/catalogues/{name}/search"),
    ("POST", "/v1/catalogues/{name}/copies"),
    ("POST", "/v1/compare"),
    ("POST", "/v1/explain"),
    ("POST", "/v1/explain/heatmap"),
    ("POST", "/v1/catalogues/{name}/reindex"),
    ("POST", "/v1/catalogues/{name}/attributes"),
    ("GET", "/v1/catalogues/{name}/reindex"),
    ("DELETE", "/v1/catalogues/{name}/attributes/{attribute}"),
    ("PATCH", "/v1/catalogues/{name}/attributes/{attribute}"),
];

/// Longest request target (path and query) the app reads; longer ones are answered 414 in the
/// envelope. (hyper itself answers 414 with an empty body past 65,534 bytes, before the app
/// sees the request.)
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The whole app: open routes (health, openapi, the web page), read routes (metrics too; read
/// key when
/// configured) and write routes (api key when configured), with body limit, request
/// timeout, metrics and one tracing span per request.
pub fn router(state: AppState) -> Router {
    let open = Router::new()
        .route("/healthz", get(routes::health::healthz))
        .route("/readyz", get(routes::health::readyz))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/", get(ui::page))
        .route("/ui/{file}", get(ui::asset));
    let read = Router::new()
        // Metrics name catalogues and their sizes: a read like any other.
        .route("/metrics", get(routes::health::metrics))
        .route("/v1/model", get(routes::model::model))
        .route("/v1/catalogues", get(routes::catalogues::list))
        .route("/v1/catalogues/{name}", get(routes::catalogues::get))
        .route(
            "/v1/catalogues/{name}/fields/{field}/values",
            get(routes::catalogues::field_values),
        )
        .route("/v1/catalogues/{name}/items", get(routes::items::list))
        .route("/v1/catalogues/{name}/items/{id}", get(routes::items::get))
        .route(
            "/v1/catalogues/{name}/items/{id}/image",
            get(routes::items::image),
        )
        .route("/v1/catalogues/{name}/search", post(routes::search::search))
        .route(
            "/v1/catalogues/{name}/copies",
            post(routes::compare::copies),
        )
        .route("/v1/compare", post(routes::compare::compare))
        .route("/v1/explain", post(routes::explain::explain))
        .route("/v1/explain/heatmap", post(routes::explain::heatmap))
        .route(
            "/v1/catalogues/{name}/reindex",
            get(routes::lifecycle::status),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_read,
        ));
    let write = Router::new()
        .route(
            "/v1/catalogues/{name}",
            put(routes::catalogues::create).delete(routes::catalogues::drop),
        )
        .route("/v1/catalogues/{name}/items", put(routes::items::upsert))
        .route(
            "/v1/catalogues/{name}/reindex",
            post(routes::lifecycle::start),
        )
        .route(
            "/v1/catalogues/{name}/attributes",
            post(routes::lifecycle::add_attribute),
        )
        .route(
            "/v1/catalogues/{name}/attributes/{attribute}",
            axum::routing::delete(routes::lifecycle::drop_attribute)
                .patch(routes::lifecycle::rename_attribute),
        )
        .route(
            "/v1/catalogues/{name}/items/{id}",
            axum::routing::delete(routes::items::delete),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_write,
        ));
    let max_body = state.max_body_bytes;
    Router::new()
        .merge(open)
        .merge(read)
        .merge(write)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn_with_state(state.clone(), timeout))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            envelope_errors,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("request", method = %req.method(), route)
        }))
        .with_state(state)
}

/// The outermost app layer: refuses request targets over [`MAX_URI_BYTES`] (414), and puts
/// every error answered outside [`ApiError`] (axum's extractor rejections: a body over the
/// limit on a route without a JSON body, a path segment that is not UTF-8, ...) into the
/// error envelope, keeping its status and headers.
async fn envelope_errors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > MAX_URI_BYTES {
        return ApiError::BadBody {
            status: StatusCode::URI_TOO_LONG,
            detail: format!(
                "request target of {target_len} bytes is longer than {MAX_URI_BYTES} bytes"
            ),
        }
        .into_response();
    }
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // Rejection texts are short; read at most 4 kB of them.
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let detail = if status == StatusCode::PAYLOAD_TOO_LARGE {
        format!(
            "request body is larger than limits.max_body_bytes ({} bytes)",
            state.max_body_bytes
        )
    } else if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let enveloped = ApiError::BadBody { status, detail }.into_response();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.remove(CONTENT_TYPE);
    let (new_parts, body) = enveloped.into_parts();
    parts.headers.extend(new_parts.headers);
    Response::from_parts(parts, body)
}

async fn no_route(method: Method, req: Request) -> ApiError {
    ApiError::NoRoute {
        method: method.to_string(),
        path: req.uri().path().to_string(),
    }
}

async fn wrong_method(method: Method, req: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: req.uri().path().to_string(),
    }
}

async fn timeout(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    let limit = state.request_timeout_ms;
    match tokio::time::timeout(Duration::from_millis(limit), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::Timeout { timeout_ms: limit }.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::openapi::ApiDoc;
    use super::*;
    use utoipa::OpenApi;

    #[test]
    fn openapi_lists_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (method, path) in ROUTES {
            let op = &paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} missing from openapi"))
                [method.to_ascii_lowercase()];
            assert!(op.is_object(), "{method} {path} missing from openapi");
        }
        let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            documented,
            ROUTES.len(),
            "openapi documents a route the router lacks"
        );
    }
}
