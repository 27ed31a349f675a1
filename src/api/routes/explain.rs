//! `POST /v1/explain` (attention grid, JSON) and `POST /v1/explain/heatmap` (PNG).

use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::image_from_base64;
use crate::api::envelope::{ok, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::explain::{self, AttentionGrid};

/// An image and the attribute whose attention to show.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainBody {
    /// Base64 image.
    #[serde(default)]
    pub image: Option<String>,
    /// Attribute name.
    pub attribute: String,
    /// Not supported: catalogues store vectors, not images.
    #[serde(default)]
    pub item_id: Option<String>,
}

impl ExplainBody {
    fn image(&self) -> Result<Vec<u8>, ApiError> {
        match (&self.image, &self.item_id) {
            (Some(b64), None) => image_from_base64("image", b64),
            (None, Some(id)) => Err(ApiError::BadRequest(format!(
                "item_id {id:?}: catalogues store embeddings, not images; send the item's image as \"image\""
            ))),
            _ => Err(ApiError::BadRequest("give \"image\" (base64)".into())),
        }
    }
}

/// The ASA attention grid of an image for an attribute.
#[utoipa::path(post, path = "/v1/explain", tag = "explain",
    request_body = ExplainBody,
    responses((status = 200, description = "attention grid", body = AttentionGrid),
              (status = 422, description = "bad image or unknown attribute", body = crate::api::error::ErrorEnvelope)))]
pub async fn explain(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let image = body.image()?;
    let attribute = body.attribute;
    let grid = state
        .run(true, move |svc| {
            explain::explain(svc, &image, &attribute).map(|e| e.grid())
        })
        .await?;
    Ok(ok(grid, started))
}

/// The attention as a PNG heat-map over the cropped image the model saw.
#[utoipa::path(post, path = "/v1/explain/heatmap", tag = "explain",
    request_body = ExplainBody,
    responses((status = 200, description = "PNG heat-map", content_type = "image/png"),
              (status = 422, description = "bad image or unknown attribute", body = crate::api::error::ErrorEnvelope)))]
pub async fn heatmap(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ExplainBody>,
) -> Result<Response, ApiError> {
    let image = body.image()?;
    let attribute = body.attribute;
    let png = state
        .run(true, move |svc| {
            explain::explain(svc, &image, &attribute).and_then(|e| e.heatmap_png())
        })
        .await?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}
