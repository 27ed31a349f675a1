//! A catalogue's model lifecycle: `POST/GET /v1/catalogues/{name}/reindex`,
//! `POST /v1/catalogues/{name}/attributes`, `DELETE/PATCH
//! /v1/catalogues/{name}/attributes/{attribute}`.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::envelope::{ok, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::lifecycle;

/// Which model to re-embed a catalogue with.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReindexBody {
    /// Fingerprint of a model the server holds (`GET /v1/model` for the default; others are
    /// loaded with `--also-model`).
    pub model: String,
}

/// Re-embed every item from its stored crop with another model, beside the current vectors;
/// the catalogue switches when done. Starting again resumes a stopped one.
#[utoipa::path(post, path = "/v1/catalogues/{name}/reindex", tag = "lifecycle",
    params(("name" = String, Path, description = "catalogue name")),
    request_body = ReindexBody,
    responses((status = 202, description = "started or running", body = lifecycle::MigrationStatus),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "model not loaded, or another reindex running", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "the model cannot re-embed this catalogue (dimension, attributes, input size, items without crops)", body = crate::api::error::ErrorEnvelope)))]
pub async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ReindexBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let status = state
        .run(move |svc| lifecycle::start(svc, &name, &body.model))
        .await?;
    let mut response = ok(status, started);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response.into_response())
}

/// How far a reindex got: done and total items of the current pass, rate, ETA, state.
#[utoipa::path(get, path = "/v1/catalogues/{name}/reindex", tag = "lifecycle",
    params(("name" = String, Path, description = "catalogue name")),
    responses((status = 200, description = "status", body = lifecycle::MigrationStatus),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope)))]
pub async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let status = state.run(move |svc| lifecycle::status(svc, &name)).await?;
    Ok(ok(status, started))
}

/// Drop an attribute: its graph and every item's vector for it.
#[utoipa::path(delete, path = "/v1/catalogues/{name}/attributes/{attribute}", tag = "lifecycle",
    params(("name" = String, Path, description = "catalogue name"),
           ("attribute" = String, Path, description = "attribute to drop")),
    responses((status = 200, description = "the new schema"),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "a reindex is running", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "unknown attribute, or the last one", body = crate::api::error::ErrorEnvelope)))]
pub async fn drop_attribute(
    State(state): State<AppState>,
    Path((name, attribute)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let schema = state
        .run(move |svc| lifecycle::drop_attribute(svc, &name, &attribute))
        .await?;
    Ok(ok(schema, started))
}

/// A new name for an attribute.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    /// The new name.
    pub name: String,
}

/// Rename an attribute; its vectors and graph stay.
#[utoipa::path(patch, path = "/v1/catalogues/{name}/attributes/{attribute}", tag = "lifecycle",
    params(("name" = String, Path, description = "catalogue name"),
           ("attribute" = String, Path, description = "attribute to rename")),
    request_body = RenameBody,
    responses((status = 200, description = "the new schema"),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "a reindex is running", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "unknown attribute or name taken", body = crate::api::error::ErrorEnvelope)))]
pub async fn rename_attribute(
    State(state): State<AppState>,
    Path((name, attribute)): Path<(String, String)>,
    ApiJson(body): ApiJson<RenameBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let schema = state
        .run(move |svc| lifecycle::rename_attribute(svc, &name, &attribute, &body.name))
        .await?;
    Ok(ok(schema, started))
}

/// An attribute to add.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddAttributeBody {
    /// An attribute the catalogue does not index yet.
    pub name: String,
    /// Fingerprint of the model that computes it: the catalogue's model or one that extends
    /// it (`asen train --extend`). When absent: the catalogue's model if it has the
    /// attribute, else the one held model that extends it with the attribute.
    #[serde(default)]
    pub model: Option<String>,
}

/// Add an attribute of the catalogue's model, or of a model that extends it: only its vectors
/// are computed, from the stored crops, and only its graph is built. With an extending model,
/// the catalogue records that model once the attribute is in. Follow it with
/// `GET .../reindex`.
#[utoipa::path(post, path = "/v1/catalogues/{name}/attributes", tag = "lifecycle",
    params(("name" = String, Path, description = "catalogue name")),
    request_body = AddAttributeBody,
    responses((status = 202, description = "started or running", body = lifecycle::MigrationStatus),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "the catalogue's model is not loaded, or a migration is running", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "not an attribute of the model, already indexed, or items without crops", body = crate::api::error::ErrorEnvelope)))]
pub async fn add_attribute(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<AddAttributeBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let status = state
        .run(move |svc| lifecycle::start_adding(svc, &name, &body.name, body.model.as_deref()))
        .await?;
    let mut response = ok(status, started);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response.into_response())
}
