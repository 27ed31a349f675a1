//! Searching a catalogue: by vector, image or stored item, on one attribute or several with
//! weights, recommendations, and re-ranking by a second attribute.

use std::collections::BTreeMap;

use asen_index::{
    AttributeWeight, Filter, GroupBy, Hit, ItemId, Query, SearchRequest, SearchResults,
    WeightedVector, MAX_K,
};
use tracing::debug;

use super::{cosine, Answer, Result, Service, ServiceError};

/// Where the query vectors come from.
#[derive(Debug, Clone)]
pub enum QuerySource {
    /// A vector used for every requested attribute.
    Vector(Vec<f32>),
    /// An encoded image, embedded for each requested attribute.
    Image(Vec<u8>),
    /// A stored item of the catalogue (excluded from hits).
    Item(ItemId),
    /// Items to resemble and to avoid (excluded from hits).
    Recommend {
        /// At least one.
        positive: Vec<ItemId>,
        /// May be empty.
        negative: Vec<ItemId>,
    },
}

/// A search, validated against the catalogue by [`search`].
#[derive(Debug, Clone)]
pub struct SearchQuery {
    /// Attribute names with weights (one attribute of weight 1 for a plain search).
    pub attributes: Vec<(String, f32)>,
    /// The query.
    pub source: QuerySource,
    /// Hits (or groups) wanted.
    pub k: usize,
    /// Payload filter.
    pub filter: Option<Filter>,
    /// Group hits by a payload field.
    pub group_by: Option<GroupBy>,
    /// Drop hits scoring below this.
    pub score_threshold: Option<f32>,
    /// Return payloads.
    pub with_payload: bool,
    /// Re-rank the hits by similarity on this attribute (image or item queries).
    pub rerank_by: Option<String>,
    /// Graph candidate list size.
    pub ef_search: Option<usize>,
}

impl SearchQuery {
    /// A plain one-attribute query.
    pub fn new(attribute: impl Into<String>, source: QuerySource, k: usize) -> Self {
        Self {
            attributes: vec![(attribute.into(), 1.0)],
            source,
            k,
            filter: None,
            group_by: None,
            score_threshold: None,
            with_payload: false,
            rerank_by: None,
            ef_search: None,
        }
    }
}

/// Run a search; hits are best first, scores are (weighted) cosine similarities, or the
/// re-rank attribute's cosine when `rerank_by` is set. The answer names the catalogue's
/// model; an image query is embedded with it ([`ServiceError::ModelMismatch`] when this
/// service does not hold it).
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, k = query.k))]
pub fn search(
    svc: &Service,
    catalogue: &str,
    query: &SearchQuery,
) -> Result<Answer<SearchResults>> {
    svc.check_k(query.k)?;
    let store = svc.store("a search")?;
    // Shared: a migration's switch waits, so the query and the vectors are one model's.
    let gate = svc.write_gate(catalogue);
    let _shared = gate.read().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    if query.attributes.is_empty() {
        return Err(ServiceError::invalid(
            "give \"attribute\" or a non-empty \"attributes\" map",
        ));
    }
    let mut needed: Vec<String> = query.attributes.iter().map(|(a, _)| a.clone()).collect();
    if let Some(r) = &query.rerank_by {
        if query.group_by.is_some() {
            return Err(ServiceError::invalid(
                "rerank_by cannot be combined with group_by",
            ));
        }
        if !needed.contains(r) {
            needed.push(r.clone());
        }
    }
    for a in &needed {
        if schema.attribute_index(a).is_none() {
            return Err(asen_index::IndexError::UnknownAttribute {
                catalogue: catalogue.to_string(),
                attribute: a.clone(),
            }
            .into());
        }
    }
    let weights: Vec<AttributeWeight> = query
        .attributes
        .iter()
        .map(|(a, w)| AttributeWeight {
            attribute: a.clone(),
            weight: *w,
        })
        .collect();
    // Query vectors per attribute, when the source gives them.
    let mut rerank_vector: Option<Vec<f32>> = None;
    // The model of the stored vectors; an image query sets it to the model that embedded it
    // (the same one, or the default for a catalogue without a record).
    let mut used_model = schema.model.as_ref().map(|m| m.fingerprint.clone());
    let core = match &query.source {
        QuerySource::Vector(v) => {
            if query.rerank_by.is_some() {
                return Err(ServiceError::invalid(
                    "rerank_by needs an image or item_id query (a vector belongs to one attribute)",
                ));
            }
            weighted(&weights, |_| v.clone())
        }
        QuerySource::Image(bytes) => {
            let model = svc
                .models("an image query")?
                .for_catalogue(catalogue, schema.model.as_ref())?;
            used_model = Some(model.fingerprint().to_string());
            let vectors =
                svc.embed_for_catalogue(model, &schema, bytes, "of the query", &needed)?;
            if let Some(r) = &query.rerank_by {
                rerank_vector = vectors.get(r).cloned();
            }
            weighted(&weights, |a| vectors.get(a).cloned().unwrap_or_default())
        }
        QuerySource::Item(id) => {
            if let Some(r) = &query.rerank_by {
                let vectors = svc.item_vectors(catalogue, id)?;
                rerank_vector = Some(vectors.get(r).cloned().ok_or_else(|| {
                    asen_index::IndexError::MissingAttribute {
                        id: id.to_string(),
                        attribute: r.clone(),
                    }
                })?);
            }
            Query::Item {
                id: id.clone(),
                attributes: weights.clone(),
            }
        }
        QuerySource::Recommend { positive, negative } => {
            if query.rerank_by.is_some() {
                return Err(ServiceError::invalid(
                    "rerank_by needs an image or item_id query, not positive/negative",
                ));
            }
            if positive.is_empty() {
                return Err(ServiceError::invalid("positive: give at least one item id"));
            }
            Query::Recommend {
                positive: positive.clone(),
                negative: negative.clone(),
                attributes: weights.clone(),
            }
        }
    };
    let k = if query.rerank_by.is_some() {
        (query.k * 4).clamp(50, MAX_K)
    } else {
        query.k
    };
    let request = SearchRequest {
        query: core,
        k,
        ef_search: query.ef_search,
        score_threshold: query.score_threshold,
        filter: query.filter.clone(),
        with_payload: query.with_payload,
        group_by: query.group_by.clone(),
    };
    let results = store.search(catalogue, &request).map_err(|e| match e {
        asen_index::IndexError::ItemNotFound { catalogue, id } => {
            ServiceError::ItemNotFound { catalogue, id }
        }
        other => other.into(),
    })?;
    let (Some(attribute), Some(vector)) = (&query.rerank_by, rerank_vector) else {
        return Ok(Answer::new(results, used_model));
    };
    let hits = rerank(svc, catalogue, results.into_hits(), attribute, &vector)?;
    debug!(catalogue, hits = hits.len(), "re-ranked");
    Ok(Answer::new(
        SearchResults::Hits(hits.into_iter().take(query.k).collect()),
        used_model,
    ))
}

fn weighted(weights: &[AttributeWeight], vector: impl Fn(&str) -> Vec<f32>) -> Query {
    if let [only] = weights {
        if only.weight == 1.0 {
            return Query::Vector {
                attribute: only.attribute.clone(),
                vector: vector(&only.attribute),
            };
        }
    }
    Query::Weighted(
        weights
            .iter()
            .map(|w| WeightedVector {
                attribute: w.attribute.clone(),
                vector: vector(&w.attribute),
                weight: w.weight,
            })
            .collect(),
    )
}

/// Order `hits` by the cosine of their `attribute` vector with `vector` (items without the
/// attribute go last); the hit's score becomes that cosine.
fn rerank(
    svc: &Service,
    catalogue: &str,
    hits: Vec<Hit>,
    attribute: &str,
    vector: &[f32],
) -> Result<Vec<Hit>> {
    let mut scored = Vec::with_capacity(hits.len());
    for mut hit in hits {
        let stored = svc.store("re-ranking")?.get(catalogue, &hit.id, true)?;
        let score = stored
            .and_then(|s| s.vectors)
            .and_then(|v: BTreeMap<String, Vec<f32>>| v.get(attribute).map(|x| cosine(x, vector)));
        if let Some(s) = score {
            hit.attribute_scores.insert(attribute.to_string(), s);
        }
        hit.score = score.unwrap_or(f32::NEG_INFINITY);
        scored.push(hit);
    }
    scored.sort_by(|a, b| b.score.total_cmp(&a.score));
    for h in &mut scored {
        if h.score == f32::NEG_INFINITY {
            h.score = -1.0;
        }
    }
    Ok(scored)
}
