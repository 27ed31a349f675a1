//! `POST /v1/explain` (attention grid, JSON) and `POST /v1/explain/heatmap` (PNG), of an
//! image or of a stored item (its thumbnail: the crop the model saw at upsert).

use std::time::Instant;

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::image_from_base64;
use crate::api::envelope::{ok_answer, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::Answer;

/// Response header naming the fingerprint of the model that drew a heat-map (its body is a
/// PNG, so the JSON envelope's `model` cannot carry it).
pub const MODEL_HEADER: &str = "x-asen-model";
use crate::service::explain::{self, AttentionGrid, ExplainSubject};

/// An image, or a stored item, and the attribute whose attention to show.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    /// Base64 image (give this or `item_id`).
    #[serde(default)]
    pub image: Option<String>,
    /// Attribute name.
    pub attribute: String,
    /// Id of a stored item (with `catalogue`): its stored model-input crop is explained.
    #[serde(default)]
    pub item_id: Option<String>,
    /// Catalogue of `item_id`.
    #[serde(default)]
    pub catalogue: Option<String>,
}

impl ExplainBody {
    fn subject(&self) -> Result<ExplainSubject, ApiError> {
        match (&self.image, &self.item_id, &self.catalogue) {
            (Some(b64), None, None) => Ok(ExplainSubject::Image(image_from_base64("image", b64)?)),
            (None, Some(id), Some(catalogue)) => Ok(ExplainSubject::Item {
                catalogue: catalogue.clone(),
                id: id.clone(),
            }),
            (None, Some(id), None) => Err(ApiError::BadRequest(format!(
                "item_id {id:?}: give the item's \"catalogue\" too"
            ))),
            (Some(_), None, Some(_)) => Err(ApiError::BadRequest(
                "\"catalogue\" goes with \"item_id\", not with \"image\"".into(),
            )),
            (Some(_), Some(_), _) => Err(ApiError::BadRequest(
                "give \"image\" (base64) or \"item_id\" with \"catalogue\", not both".into(),
            )),
            (None, None, _) => Err(ApiError::BadRequest(
                "give \"image\" (base64) or \"item_id\" with \"catalogue\"".into(),
            )),
        }
    }
}

/// The ASA attention grid of an image, or of a stored item's crop, for an attribute.
#[utoipa::path(post, path = "/v1/explain", tag = "explain",
    request_body = ExplainBody,
    responses((status = 200, description = "attention grid", body = AttentionGrid),
              (status = 400, description = "neither or both of image and item_id", body = crate::api::error::ErrorEnvelope),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "the item was stored without its image (thumbnails off)", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "bad image or unknown attribute", body = crate::api::error::ErrorEnvelope)))]
pub async fn explain(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let subject = body.subject()?;
    let attribute = body.attribute;
    let grid = state
        .run(move |svc| {
            explain::explain_subject(svc, &subject, &attribute)
                .map(|e| Answer::new(e.grid(), Some(e.model.clone())))
        })
        .await?;
    Ok(ok_answer(grid, started))
}

/// The attention as a PNG heat-map over the cropped image the model saw.
#[utoipa::path(post, path = "/v1/explain/heatmap", tag = "explain",
    request_body = ExplainBody,
    responses((status = 200, description = "PNG heat-map", content_type = "image/png"),
              (status = 400, description = "neither or both of image and item_id", body = crate::api::error::ErrorEnvelope),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "the item was stored without its image (thumbnails off)", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "bad image or unknown attribute", body = crate::api::error::ErrorEnvelope)))]
pub async fn heatmap(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<Response, ApiError> {
    let subject = body.subject()?;
    let attribute = body.attribute;
    let (png, model) = state
        .run(move |svc| {
            let e = explain::explain_subject(svc, &subject, &attribute)?;
            Ok((e.heatmap_png()?, e.model))
        })
        .await?;
    let model = HeaderValue::from_str(&model).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/png")),
            (HeaderName::from_static(MODEL_HEADER), model),
        ],
        png,
    )
        .into_response())
}
