//! `POST /v1/compare` and `POST /v1/catalogues/{c}/copies`.

use std::time::Instant;

use asen_index::{Filter, ItemId};
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::image_from_base64;
use crate::api::envelope::{ok_answer, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::compare::{self, CopiesQuery, Subject};

/// One side of a comparison: an image, or a stored item (`catalogue` + `item_id`).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubjectBody {
    /// Base64 image.
    #[serde(default)]
    pub image: Option<String>,
    /// Catalogue of `item_id`.
    #[serde(default)]
    pub catalogue: Option<String>,
    /// A stored item.
    #[serde(default)]
    pub item_id: Option<String>,
}

impl SubjectBody {
    fn into_subject(self, field: &str) -> Result<Subject, ApiError> {
        match (self.image, self.catalogue, self.item_id) {
            (Some(b64), None, None) => Ok(Subject::Image(image_from_base64(
                &format!("{field}.image"),
                &b64,
            )?)),
            (None, Some(catalogue), Some(id)) => Ok(Subject::Item {
                catalogue,
                id: ItemId::new(id)
                    .map_err(|e| ApiError::BadRequest(format!("{field}.item_id: {e}")))?,
            }),
            _ => Err(ApiError::BadRequest(format!(
                "{field}: give \"image\" (base64), or \"catalogue\" and \"item_id\""
            ))),
        }
    }
}

/// Compare two images or items attribute by attribute.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompareBody {
    /// The first image or item (e.g. the original design).
    pub a: SubjectBody,
    /// The second (e.g. the suspected copy).
    pub b: SubjectBody,
    /// Attributes to compare on (all of the model's when absent).
    #[serde(default)]
    pub attributes: Vec<String>,
}

/// Per-attribute cosine similarity, match decisions from the card's calibrated thresholds
/// (or "uncalibrated"), and a verdict naming the matching design points.
#[utoipa::path(post, path = "/v1/compare", tag = "copies",
    request_body = CompareBody,
    responses((status = 200, description = "comparison", body = compare::Comparison),
              (status = 422, description = "bad image or unknown attribute", body = crate::api::error::ErrorEnvelope)))]
pub async fn compare(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CompareBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let a = body.a.into_subject("a")?;
    let b = body.b.into_subject("b")?;
    let attributes = body.attributes;
    let result = state
        .run(move |svc| compare::compare(svc, &a, &b, &attributes))
        .await?;
    Ok(ok_answer(result, started))
}

fn default_k() -> usize {
    10
}

fn default_min_matches() -> usize {
    1
}

/// Catalogue items matching a query on at least `min_matches` attributes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopiesBody {
    /// Base64 image as the query.
    #[serde(default)]
    pub image: Option<String>,
    /// An item of this catalogue as the query (excluded from hits).
    #[serde(default)]
    pub item_id: Option<String>,
    /// Least number of matching attributes.
    #[serde(default = "default_min_matches")]
    pub min_matches: usize,
    /// Most items returned.
    #[serde(default = "default_k")]
    pub k: usize,
    /// One cosine threshold for every attribute, overriding the card's calibrated ones.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Payload filter.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filter: Option<Filter>,
    /// Return payloads.
    #[serde(default)]
    pub with_payload: bool,
}

/// Items of a catalogue that copy the query on at least `min_matches` attributes.
#[utoipa::path(post, path = "/v1/catalogues/{name}/copies", tag = "copies",
    params(("name" = String, Path, description = "catalogue name")),
    request_body = CopiesBody,
    responses((status = 200, description = "matching items, most matches first", body = [compare::CopyHit]),
              (status = 422, description = "uncalibrated model without threshold, bad image", body = crate::api::error::ErrorEnvelope)))]
pub async fn copies(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<CopiesBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let subject = match (body.image, body.item_id) {
        (Some(b64), None) => Subject::Image(image_from_base64("image", &b64)?),
        (None, Some(id)) => Subject::Item {
            catalogue: name.clone(),
            id: ItemId::new(id).map_err(|e| ApiError::BadRequest(format!("item_id: {e}")))?,
        },
        _ => {
            return Err(ApiError::BadRequest(
                "give exactly one query: \"image\" (base64) or \"item_id\"".into(),
            ))
        }
    };
    let query = CopiesQuery {
        subject,
        min_matches: body.min_matches,
        k: body.k,
        threshold: body.threshold,
        filter: body.filter,
        with_payload: body.with_payload,
    };
    let hits = state
        .run(move |svc| compare::copies(svc, &name, &query))
        .await?;
    Ok(ok_answer(hits, started))
}
