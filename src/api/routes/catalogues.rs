//! `PUT/GET/DELETE /v1/catalogues/{name}`, `GET /v1/catalogues`,
//! `GET /v1/catalogues/{name}/fields/{field}/values`.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use crate::api::envelope::ok;
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::catalogues::{self, NewCatalogue};

/// Create a catalogue over the model's attributes (or a subset); body optional.
#[utoipa::path(put, path = "/v1/catalogues/{name}", tag = "catalogues",
    params(("name" = String, Path, description = "catalogue name ([A-Za-z0-9_-])")),
    request_body(content = NewCatalogue, description = "optional"),
    responses((status = 200, description = "created", body = catalogues::CatalogueDetails),
              (status = 409, description = "exists", body = crate::api::error::ErrorEnvelope)))]
pub async fn create(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let spec: NewCatalogue = if body.iter().all(u8::is_ascii_whitespace) {
        NewCatalogue::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::BadBody {
            status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            detail: format!("invalid JSON body: {e}"),
        })?
    };
    let details = state
        .run(move |svc| catalogues::create(svc, &name, &spec))
        .await?;
    Ok(ok(details, started))
}

/// A catalogue's schema and statistics.
#[utoipa::path(get, path = "/v1/catalogues/{name}", tag = "catalogues",
    params(("name" = String, Path, description = "catalogue name")),
    responses((status = 200, description = "schema and stats", body = catalogues::CatalogueDetails),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let details = state
        .run(move |svc| catalogues::details(svc, &name))
        .await?;
    Ok(ok(details, started))
}

/// Drop a catalogue and all its items.
#[utoipa::path(delete, path = "/v1/catalogues/{name}", tag = "catalogues",
    params(("name" = String, Path, description = "catalogue name")),
    responses((status = 200, description = "dropped"),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope)))]
pub async fn drop(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    state.run(move |svc| catalogues::drop(svc, &name)).await?;
    Ok(ok(true, started))
}

/// Every catalogue with its schema and item counts per attribute.
#[utoipa::path(get, path = "/v1/catalogues", tag = "catalogues",
    responses((status = 200, description = "catalogues")))]
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let all = state.run(catalogues::list).await?;
    Ok(ok(all, started))
}

fn default_values_limit() -> usize {
    100
}

/// Query of `GET /v1/catalogues/{c}/fields/{field}/values`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ValuesParams {
    /// Most values returned, 1..=1000 (the rarest are left out, and `truncated` says so).
    #[serde(default = "default_values_limit")]
    #[param(default = 100)]
    pub limit: usize,
}

/// The distinct values of a payload field (dotted path) with the number of items holding
/// each, most frequent first: strings, integers and booleans, as a `match` filter takes them.
#[utoipa::path(get, path = "/v1/catalogues/{name}/fields/{field}/values", tag = "catalogues",
    params(("name" = String, Path, description = "catalogue name"),
           ("field" = String, Path, description = "dotted payload field, e.g. `gender` or `product.brand`"),
           ValuesParams),
    responses((status = 200, description = "`{field, values: [{value, count}], items, truncated}`"),
              (status = 400, description = "bad query string", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "limit out of range or empty field", body = crate::api::error::ErrorEnvelope),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope)))]
pub async fn field_values(
    State(state): State<AppState>,
    Path((name, field)): Path<(String, String)>,
    params: Result<Query<ValuesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Query(params) =
        params.map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))?;
    let values = state
        .run(move |svc| catalogues::field_values(svc, &name, &field, params.limit))
        .await?;
    Ok(ok(values, started))
}
