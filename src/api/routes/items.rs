//! `PUT /v1/catalogues/{c}/items` (JSON with base64 images, or multipart),
//! `GET /v1/catalogues/{c}/items` (a page), `GET` and `DELETE /v1/catalogues/{c}/items/{id}`,
//! `GET /v1/catalogues/{c}/items/{id}/image`.

use std::collections::HashMap;
use std::time::Instant;

use asen_index::{ItemId, Payload};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::image_from_base64;
use crate::api::envelope::{ok, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::items::{self, NewItem};

/// A batch of items to upsert.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    /// The items; each is embedded for every attribute of the catalogue.
    pub items: Vec<ItemBody>,
}

/// One item of an upsert (also what `asen ingest --server` sends).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    /// External id (1..=256 bytes).
    pub id: String,
    /// JSON object stored with the item (filter, group and return it).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Payload,
    /// The image, base64 (JPEG, PNG, WebP). In a multipart request, omit it and send a
    /// part named `image:<id>` instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

fn to_new_items(
    body: Vec<ItemBody>,
    mut parts: HashMap<String, Vec<u8>>,
) -> Result<Vec<NewItem>, ApiError> {
    body.into_iter()
        .enumerate()
        .map(|(i, item)| {
            let id = ItemId::new(item.id.clone())
                .map_err(|e| ApiError::BadRequest(format!("items[{i}].id: {e}")))?;
            let image = match (&item.image, parts.remove(&item.id)) {
                (Some(b64), None) => image_from_base64(&format!("items[{i}].image"), b64)?,
                (None, Some(bytes)) => bytes,
                (Some(_), Some(_)) => {
                    return Err(ApiError::BadRequest(format!(
                        "items[{i}] ({:?}): give the image as base64 or as a part, not both",
                        item.id
                    )))
                }
                (None, None) => {
                    return Err(ApiError::BadRequest(format!(
                    "items[{i}] ({:?}): no image (base64 \"image\" or multipart part \"image:{}\")",
                    item.id, item.id
                )))
                }
            };
            Ok(NewItem {
                id,
                payload: item.payload,
                image,
            })
        })
        .collect()
}

async fn read_multipart(
    mut multipart: Multipart,
) -> Result<(Vec<ItemBody>, HashMap<String, Vec<u8>>), ApiError> {
    let mut items: Option<Vec<ItemBody>> = None;
    let mut parts = HashMap::new();
    let bad = |e: axum::extract::multipart::MultipartError| {
        let status = e.status();
        ApiError::BadBody {
            status,
            detail: format!("multipart body: {}", e.body_text()),
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "items" {
            let bytes = field.bytes().await.map_err(bad)?;
            items = Some(
                serde_json::from_slice(&bytes).map_err(|e| ApiError::BadBody {
                    status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    detail: format!("multipart part \"items\": invalid JSON: {e}"),
                })?,
            );
        } else if let Some(id) = name.strip_prefix("image:") {
            let id = id.to_string();
            if parts.contains_key(&id) {
                return Err(ApiError::BadBody {
                    status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    detail: format!(
                        "multipart part \"image:{id}\" appears twice; send one image per item"
                    ),
                });
            }
            let bytes = field.bytes().await.map_err(bad)?;
            parts.insert(id, bytes.to_vec());
        } else {
            return Err(ApiError::BadRequest(format!(
                "multipart part {name:?}: expected \"items\" or \"image:<id>\""
            )));
        }
    }
    let items = items.ok_or_else(|| {
        ApiError::BadRequest("multipart body: no part named \"items\" (JSON array)".into())
    })?;
    if let Some(extra) = parts.keys().find(|k| !items.iter().any(|i| &i.id == *k)) {
        return Err(ApiError::BadRequest(format!(
            "multipart part \"image:{extra}\" has no entry in \"items\""
        )));
    }
    Ok((items, parts))
}

/// Upsert a batch: JSON `{"items": [{"id", "payload", "image": base64}]}` or multipart with a
/// JSON part `items` and one part `image:<id>` per item.
#[utoipa::path(put, path = "/v1/catalogues/{name}/items", tag = "items",
    params(("name" = String, Path, description = "catalogue name")),
    request_body(content = UpsertBody, description = "JSON, or multipart/form-data with parts `items` and `image:<id>`"),
    responses((status = 200, description = "write receipt"),
              (status = 413, description = "body, image or batch too large", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "bad image or item", body = crate::api::error::ErrorEnvelope)))]
pub async fn upsert(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let multipart = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let (body, parts) = if multipart {
        let m = Multipart::from_request(req, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("multipart body: {}", e.body_text())))?;
        read_multipart(m).await?
    } else {
        let ApiJson(body) = ApiJson::<UpsertBody>::from_request(req, &state).await?;
        (body.items, HashMap::new())
    };
    if body.len() > state.service.limits.max_batch_items {
        return Err(crate::service::ServiceError::BatchTooLarge {
            got: body.len(),
            limit: state.service.limits.max_batch_items,
        }
        .into());
    }
    // Blank and duplicate ids are refused before any image is looked at.
    items::check_batch(&state.service, body.iter().map(|i| i.id.as_str()))?;
    let new_items = to_new_items(body, parts)?;
    let receipt = state
        .run(move |svc| items::upsert(svc, &name, new_items))
        .await?;
    Ok(ok(receipt, started))
}

/// Query of `GET /v1/catalogues/{c}/items/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GetParams {
    /// Include the stored vectors.
    #[serde(default)]
    pub with_vectors: bool,
}

/// One item: payload, attributes, content hash, optionally vectors.
#[utoipa::path(get, path = "/v1/catalogues/{name}/items/{id}", tag = "items",
    params(("name" = String, Path, description = "catalogue name"),
           ("id" = String, Path, description = "item id"), GetParams),
    responses((status = 200, description = "the item"),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope)))]
pub async fn get(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    params: Result<Query<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Query(params) =
        params.map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))?;
    let item = state
        .run(move |svc| items::get(svc, &name, &id, params.with_vectors))
        .await?;
    Ok(ok(item, started))
}

fn default_page_size() -> usize {
    50
}

/// Query of `GET /v1/catalogues/{c}/items`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Start after this item id (the `next_cursor` of the previous page).
    #[serde(default)]
    pub after: Option<String>,
    /// Items per page, 1..=10000.
    #[serde(default = "default_page_size")]
    #[param(default = 50)]
    pub limit: usize,
}

/// A page of items in id order: `{"items": [...], "next_cursor": id or null}`, without vectors.
#[utoipa::path(get, path = "/v1/catalogues/{name}/items", tag = "items",
    params(("name" = String, Path, description = "catalogue name"), ListParams),
    responses((status = 200, description = "a page of items and the cursor of the next one"),
              (status = 400, description = "bad cursor or query string", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "limit out of range", body = crate::api::error::ErrorEnvelope),
              (status = 404, description = "unknown catalogue", body = crate::api::error::ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    Path(name): Path<String>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Query(params) =
        params.map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))?;
    let page = state
        .run(move |svc| items::list(svc, &name, params.after.as_deref(), params.limit))
        .await?;
    Ok(ok(page, started))
}

/// Delete one item.
#[utoipa::path(delete, path = "/v1/catalogues/{name}/items/{id}", tag = "items",
    params(("name" = String, Path, description = "catalogue name"),
           ("id" = String, Path, description = "item id")),
    responses((status = 200, description = "write receipt"),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope)))]
pub async fn delete(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let receipt = state.run(move |svc| items::delete(svc, &name, &id)).await?;
    Ok(ok(receipt, started))
}

/// The item's stored image: the model-input crop (JPEG) kept when it was upserted.
#[utoipa::path(get, path = "/v1/catalogues/{name}/items/{id}/image", tag = "items",
    params(("name" = String, Path, description = "catalogue name"),
           ("id" = String, Path, description = "item id")),
    responses((status = 200, description = "the crop the model saw", content_type = "image/jpeg"),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope),
              (status = 409, description = "the item was stored without its image (thumbnails off)", body = crate::api::error::ErrorEnvelope)))]
pub async fn image(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let jpeg = state.run(move |svc| items::image(svc, &name, &id)).await?;
    Ok(([(CONTENT_TYPE, "image/jpeg")], jpeg).into_response())
}
