//! `POST /v1/catalogues/{c}/search`.

use std::collections::BTreeMap;
use std::time::Instant;

use asen_index::{Filter, GroupBy, ItemId};
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::image_from_base64;
use crate::api::envelope::{ok_answer, ApiJson};
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::service::search::{self, QuerySource, SearchQuery};

fn default_k() -> usize {
    10
}

/// A search. Give one attribute (`attribute`) or several with weights (`attributes`), and
/// exactly one query: `item_id`, `image` (base64), `vector`, or `positive` (with optional
/// `negative`) item ids for a recommendation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// Attribute to search on.
    #[serde(default)]
    pub attribute: Option<String>,
    /// Attributes with weights (`{"collar": 0.7, "colour": 0.3}`).
    #[serde(default)]
    pub attributes: Option<BTreeMap<String, f32>>,
    /// A stored item as the query (excluded from hits).
    #[serde(default)]
    pub item_id: Option<String>,
    /// An image (base64) as the query.
    #[serde(default)]
    pub image: Option<String>,
    /// A vector of the model's dimension as the query.
    #[serde(default)]
    pub vector: Option<Vec<f32>>,
    /// Items the results should resemble (recommendation).
    #[serde(default)]
    pub positive: Option<Vec<String>>,
    /// Items the results should not resemble (recommendation).
    #[serde(default)]
    pub negative: Option<Vec<String>>,
    /// Number of hits (or groups), 1..=limits.max_k.
    #[serde(default = "default_k")]
    pub k: usize,
    /// Payload filter (`{"match": {"field": "brand", "value": "acme"}}`, and/or/not, in, range).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub filter: Option<Filter>,
    /// Group hits by a payload field: `{"field": "product", "group_size": 2}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub group_by: Option<GroupBy>,
    /// Drop hits scoring below this.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// Return payloads with hits.
    #[serde(default)]
    pub with_payload: bool,
    /// Re-rank hits by similarity on this attribute (image or item queries).
    #[serde(default)]
    pub rerank_by: Option<String>,
    /// Graph candidate list size (higher: better recall, slower).
    #[serde(default)]
    pub ef_search: Option<usize>,
}

fn ids(field: &str, list: Vec<String>) -> Result<Vec<ItemId>, ApiError> {
    list.into_iter()
        .enumerate()
        .map(|(i, id)| {
            ItemId::new(id).map_err(|e| ApiError::BadRequest(format!("{field}[{i}]: {e}")))
        })
        .collect()
}

impl SearchBody {
    /// Check the shape and build the service query.
    pub fn into_query(self) -> Result<SearchQuery, ApiError> {
        let attributes: Vec<(String, f32)> = match (self.attribute, self.attributes) {
            (Some(a), None) => vec![(a, 1.0)],
            (None, Some(map)) if !map.is_empty() => map.into_iter().collect(),
            (None, Some(_)) => {
                return Err(ApiError::BadRequest("attributes: the map is empty".into()))
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::BadRequest(
                    "give either \"attribute\" or \"attributes\", not both".into(),
                ))
            }
            (None, None) => {
                return Err(ApiError::BadRequest(
                    "missing \"attribute\" (or weighted \"attributes\")".into(),
                ))
            }
        };
        let given = [
            self.item_id.is_some(),
            self.image.is_some(),
            self.vector.is_some(),
            self.positive.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            return Err(ApiError::BadRequest(format!(
                "give exactly one query of \"item_id\", \"image\", \"vector\" or \"positive\" (got {given})"
            )));
        }
        if self.negative.is_some() && self.positive.is_none() {
            return Err(ApiError::BadRequest(
                "\"negative\" needs \"positive\" item ids".into(),
            ));
        }
        let source = if let Some(id) = self.item_id {
            QuerySource::Item(
                ItemId::new(id).map_err(|e| ApiError::BadRequest(format!("item_id: {e}")))?,
            )
        } else if let Some(b64) = self.image {
            QuerySource::Image(image_from_base64("image", &b64)?)
        } else if let Some(v) = self.vector {
            QuerySource::Vector(v)
        } else {
            QuerySource::Recommend {
                positive: ids("positive", self.positive.unwrap_or_default())?,
                negative: ids("negative", self.negative.unwrap_or_default())?,
            }
        };
        Ok(SearchQuery {
            attributes,
            source,
            k: self.k,
            filter: self.filter,
            group_by: self.group_by,
            score_threshold: self.score_threshold,
            with_payload: self.with_payload,
            rerank_by: self.rerank_by,
            ef_search: self.ef_search,
        })
    }
}

/// Search a catalogue; result is `{"hits": [...]}` or `{"groups": [...]}` with `group_by`.
#[utoipa::path(post, path = "/v1/catalogues/{name}/search", tag = "search",
    params(("name" = String, Path, description = "catalogue name")),
    request_body = SearchBody,
    responses((status = 200, description = "hits, best first"),
              (status = 400, description = "malformed query or k out of range", body = crate::api::error::ErrorEnvelope),
              (status = 404, description = "unknown catalogue or item", body = crate::api::error::ErrorEnvelope),
              (status = 422, description = "unknown attribute or bad image", body = crate::api::error::ErrorEnvelope)))]
pub async fn search(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SearchBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let query = body.into_query()?;
    let results = state
        .run(move |svc| search::search(svc, &name, &query))
        .await?;
    Ok(ok_answer(results, started))
}
