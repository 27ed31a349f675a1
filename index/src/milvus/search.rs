//! Search on Milvus: resolve the query to unit vectors per attribute, let Milvus's HNSW pick
//! candidates per attribute under the pushed-down filter, then do in asen what Milvus does not:
//! the exact filter, exact weighted scores over every requested attribute, exclusions,
//! threshold and group-by. Too few results after that widen the candidate list, up to
//! Milvus's limit of 16384 per attribute.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

use super::layout::{self, Meta};
use super::{expr, Catalogue, MilvusStore, MILVUS_MAX_LIMIT};
use crate::distance::dot;
use crate::error::{IndexError, Result};
use crate::filter;
use crate::rescore::{average_vector, group_hits, normalized};
use crate::types::{
    AttributeWeight, Hit, HitGroup, ItemId, Payload, Query, SearchRequest, SearchResults,
};

struct Part {
    attribute: usize,
    name: String,
    vector: Vec<f32>,
    weight: f32,
}

struct Candidate {
    payload: Payload,
    scores: Vec<Option<f32>>,
}

pub(super) fn search(
    store: &MilvusStore,
    c: &Catalogue,
    req: &SearchRequest,
) -> Result<SearchResults> {
    let ef = crate::validate::search_request(&c.schema, req)?;
    let (parts, exclude) = resolve(store, c, &req.query)?;
    let pushed = req
        .filter
        .as_ref()
        .and_then(expr::pushdown)
        .unwrap_or_default();
    let per_group = req.group_by.as_ref().map_or(1, |g| g.group_size);
    let mut fetch = req.k * per_group + exclude.len();
    // Like the local store, anything asen rescores or filters starts from `ef` candidates per
    // attribute, so it picks from the same shortlist.
    if parts.len() > 1 || req.filter.is_some() || req.group_by.is_some() {
        fetch = fetch.max(ef);
    }
    loop {
        let limit = fetch.min(MILVUS_MAX_LIMIT);
        let mut candidates: HashMap<String, Candidate> = HashMap::new();
        let mut full = false;
        for (pi, p) in parts.iter().enumerate() {
            let found = store.client.search(
                &c.collection(p.attribute),
                "vector",
                &p.vector,
                limit,
                ef.max(limit),
                &pushed,
                &["id", "payload"],
            )?;
            full |= found.len() >= limit;
            for (row, score) in found {
                let id = layout::id_of(&row)?.to_string();
                if exclude.contains(&id) {
                    continue;
                }
                let cand = candidates.entry(id).or_insert_with(|| Candidate {
                    payload: layout::payload_of(&row),
                    scores: vec![None; parts.len()],
                });
                cand.scores[pi] = Some(score);
            }
        }
        if let Some(f) = &req.filter {
            candidates.retain(|_, cand| filter::matches(f, &cand.payload));
        }
        if parts.len() > 1 {
            rescore(store, c, &parts, &mut candidates)?;
        }
        let mut scored: Vec<(String, f32, Candidate)> = candidates
            .into_iter()
            .map(|(id, cand)| {
                let s = parts
                    .iter()
                    .zip(&cand.scores)
                    .map(|(p, s)| p.weight * s.unwrap_or(0.0))
                    .sum();
                (id, s, cand)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let below_threshold = req
            .score_threshold
            .is_some_and(|t| scored.last().is_some_and(|s| s.1 < t));
        let results = finish(req, &parts, scored)?;
        let produced = match &results {
            SearchResults::Hits(h) => h.len(),
            SearchResults::Groups(g) => g.len(),
        };
        if produced >= req.k || !full || limit >= MILVUS_MAX_LIMIT || below_threshold {
            return Ok(results);
        }
        fetch = limit * 4;
    }
}

/// Fills the scores of attributes on which a candidate was not among the hits: the exact
/// cosine from its stored vector, or 0 if it has none for that attribute.
fn rescore(
    store: &MilvusStore,
    c: &Catalogue,
    parts: &[Part],
    candidates: &mut HashMap<String, Candidate>,
) -> Result<()> {
    for (pi, p) in parts.iter().enumerate() {
        let missing: Vec<String> = candidates
            .iter()
            .filter(|(_, cand)| cand.scores[pi].is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for keys in missing.chunks(1024) {
            let rows =
                store
                    .client
                    .get(&c.collection(p.attribute), "id", keys, &["id", "vector"])?;
            for row in rows {
                let id = layout::id_of(&row)?.to_string();
                let v = layout::vector_of(&row)?;
                if let Some(cand) = candidates.get_mut(&id) {
                    cand.scores[pi] = Some(dot(&p.vector, &v));
                }
            }
        }
        for cand in candidates.values_mut() {
            cand.scores[pi].get_or_insert(0.0);
        }
    }
    Ok(())
}

fn finish(
    req: &SearchRequest,
    parts: &[Part],
    mut scored: Vec<(String, f32, Candidate)>,
) -> Result<SearchResults> {
    if let Some(t) = req.score_threshold {
        scored.retain(|s| s.1 >= t);
    }
    let hit = |(id, score, cand): &(String, f32, Candidate)| -> Result<Hit> {
        Ok(Hit {
            id: ItemId::new(id.clone())?,
            score: *score,
            attribute_scores: parts
                .iter()
                .zip(&cand.scores)
                .map(|(p, s)| (p.name.clone(), s.unwrap_or(0.0)))
                .collect::<BTreeMap<_, _>>(),
            payload: req.with_payload.then(|| cand.payload.clone()),
        })
    };
    match &req.group_by {
        None => Ok(SearchResults::Hits(
            scored.iter().take(req.k).map(hit).collect::<Result<_>>()?,
        )),
        Some(g) => {
            let mut keyed: Vec<(Value, Hit)> = Vec::new();
            for s in &scored {
                if let Some(k) = filter::field(&s.2.payload, &g.field) {
                    keyed.push((k.clone(), hit(s)?));
                }
            }
            Ok(SearchResults::Groups(
                group_hits(keyed, req.k, g.group_size)
                    .into_iter()
                    .map(|(key, hits)| HitGroup { key, hits })
                    .collect(),
            ))
        }
    }
}

fn invalid(reason: String) -> IndexError {
    IndexError::InvalidRequest { reason }
}

fn attribute_index(c: &Catalogue, attribute: &str) -> Result<usize> {
    crate::validate::attribute_index(&c.name, &c.schema, attribute)
}

fn check_weights<'a>(
    c: &Catalogue,
    ws: impl Iterator<Item = (&'a str, f32)>,
) -> Result<Vec<(usize, f32)>> {
    crate::validate::weights(&c.name, &c.schema, ws)
}

fn weights_of(ws: &[AttributeWeight]) -> impl Iterator<Item = (&str, f32)> {
    ws.iter().map(|w| (w.attribute.as_str(), w.weight))
}

/// The stored unit vectors of an item for the given attributes (those it has).
pub(super) fn vectors_of(
    store: &MilvusStore,
    c: &Catalogue,
    id: &ItemId,
    attributes: &[String],
) -> Result<BTreeMap<String, Vec<f32>>> {
    let mut out = BTreeMap::new();
    for a in attributes {
        let Some(i) = c.schema.attribute_index(a) else {
            continue;
        };
        let rows =
            store
                .client
                .get(&c.collection(i), "id", &[id.to_string()], &["id", "vector"])?;
        if let Some(row) = rows.first() {
            out.insert(a.clone(), layout::vector_of(row)?);
        }
    }
    Ok(out)
}

/// A stored item's vectors on the query's attributes; `ItemNotFound` if it does not exist.
fn stored(
    store: &MilvusStore,
    c: &Catalogue,
    id: &ItemId,
    attributes: &[usize],
) -> Result<BTreeMap<String, Vec<f32>>> {
    let rows = store
        .client
        .get(&c.names.items, "id", &[id.to_string()], &["id", "meta"])?;
    let row = rows.first().ok_or_else(|| IndexError::ItemNotFound {
        catalogue: c.name.clone(),
        id: id.to_string(),
    })?;
    let meta: Meta = layout::meta_of(row)?;
    let wanted: Vec<String> = attributes
        .iter()
        .filter(|&&a| meta.attributes.iter().any(|k| k == c.key(a)))
        .map(|&a| c.schema.attributes[a].clone())
        .collect();
    vectors_of(store, c, id, &wanted)
}

fn resolve(store: &MilvusStore, c: &Catalogue, q: &Query) -> Result<(Vec<Part>, HashSet<String>)> {
    let dim = c.schema.dimension;
    let mut exclude = HashSet::new();
    let part = |attribute: usize, vector: Vec<f32>, weight: f32| Part {
        attribute,
        name: c.schema.attributes[attribute].clone(),
        vector,
        weight,
    };
    let parts = match q {
        Query::Vector { attribute, vector } => {
            let a = attribute_index(c, attribute)?;
            vec![part(a, normalized(attribute, vector, dim)?, 1.0)]
        }
        Query::Weighted(ws) => {
            let idx = check_weights(c, ws.iter().map(|w| (w.attribute.as_str(), w.weight)))?;
            idx.into_iter()
                .zip(ws)
                .map(|((a, weight), w)| {
                    Ok(part(a, normalized(&w.attribute, &w.vector, dim)?, weight))
                })
                .collect::<Result<_>>()?
        }
        Query::Item { id, attributes } => {
            let idx = check_weights(c, weights_of(attributes))?;
            let attrs: Vec<usize> = idx.iter().map(|(a, _)| *a).collect();
            let vectors = stored(store, c, id, &attrs)?;
            exclude.insert(id.to_string());
            idx.into_iter()
                .map(|(a, weight)| {
                    let name = &c.schema.attributes[a];
                    let v = vectors
                        .get(name)
                        .ok_or_else(|| IndexError::MissingAttribute {
                            id: id.to_string(),
                            attribute: name.clone(),
                        })?;
                    Ok(part(a, v.clone(), weight))
                })
                .collect::<Result<_>>()?
        }
        Query::Recommend {
            positive,
            negative,
            attributes,
        } => {
            crate::validate::recommend_examples(positive.len(), negative.len())?;
            let idx = check_weights(c, weights_of(attributes))?;
            let attrs: Vec<usize> = idx.iter().map(|(a, _)| *a).collect();
            let mut load = |ids: &[ItemId]| -> Result<Vec<BTreeMap<String, Vec<f32>>>> {
                ids.iter()
                    .map(|id| {
                        exclude.insert(id.to_string());
                        stored(store, c, id, &attrs)
                    })
                    .collect()
            };
            let pos = load(positive)?;
            let neg = load(negative)?;
            idx.into_iter()
                .map(|(a, weight)| {
                    let name = &c.schema.attributes[a];
                    let p: Vec<&[f32]> = pos
                        .iter()
                        .filter_map(|r| r.get(name))
                        .map(|v| v.as_slice())
                        .collect();
                    let n: Vec<&[f32]> = neg
                        .iter()
                        .filter_map(|r| r.get(name))
                        .map(|v| v.as_slice())
                        .collect();
                    if p.is_empty() {
                        return Err(IndexError::MissingAttribute {
                            id: positive[0].to_string(),
                            attribute: name.clone(),
                        });
                    }
                    let vector = average_vector(&p, &n).ok_or_else(|| {
                        invalid(format!(
                            "positives and negatives cancel out on attribute {name:?}"
                        ))
                    })?;
                    Ok(part(a, vector, weight))
                })
                .collect::<Result<_>>()?
        }
    };
    Ok((parts, exclude))
}

/// Up to `n` item ids after `after`, in id order.
///
/// Milvus returns query rows in no particular order (Milvus Lite ignores `order_by`), at most
/// 16384 of them. A batch that hits the cap bounds the answer: the `n` smallest ids of the
/// range are no greater than the batch's `n`-th smallest, so the range shrinks to that and
/// is asked again, until a batch holds the whole range.
pub(super) fn ids_after(
    store: &MilvusStore,
    c: &Catalogue,
    after: Option<&ItemId>,
    n: usize,
) -> Result<Vec<ItemId>> {
    let lower = format!("id > {}", expr::string(after.map_or("", |a| a.as_str())));
    let mut upper: Option<String> = None;
    loop {
        let filter = match &upper {
            Some(u) => format!("{lower} and id <= {}", expr::string(u)),
            None => lower.clone(),
        };
        let rows = store
            .client
            .query(&c.names.items, &filter, &["id"], MILVUS_MAX_LIMIT)?;
        let mut ids: Vec<ItemId> = rows.iter().map(layout::id_of).collect::<Result<_>>()?;
        ids.sort();
        if ids.len() < MILVUS_MAX_LIMIT || n == 0 {
            ids.truncate(n);
            return Ok(ids);
        }
        upper = Some(ids[n.min(ids.len()) - 1].to_string());
    }
}
