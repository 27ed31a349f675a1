//! `POST /v1/explain` (attention grid, JSON) and `POST /v1/explain/heatmap` (PNG), of an
//! image or of a stored item (its thumbnail: the crop the model saw at upsert).

use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::image_from_base64;
use crate::api::envelope::{ok, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
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
        .run(move |svc| explain::explain_subject(svc, &subject, &attribute).map(|e| e.grid()))
        .await?;
    Ok(ok(grid, started))
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
    let png = state
        .run(move |svc| {
            explain::explain_subject(svc, &subject, &attribute).and_then(|e| e.heatmap_png())
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}
