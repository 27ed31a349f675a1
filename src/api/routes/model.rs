//! `GET /v1/model`.

use std::time::Instant;

use axum::extract::State;
use axum::response::Response;

use crate::api::envelope::ok;
use crate::api::error::ApiError;
use crate::api::state::AppState;

/// The loaded model: variant, backbone, attributes with value names, dimension, thresholds.
#[utoipa::path(get, path = "/v1/model", tag = "model",
    responses((status = 200, description = "model description", body = crate::service::ModelInfo)))]
pub async fn model(State(state): State<AppState>) -> Result<Response, ApiError> {
    Ok(ok(state.service.model_info()?, Instant::now()))
}
