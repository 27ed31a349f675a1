//! The copy check: per-attribute similarity of two images or items, a per-attribute match
//! decision from the model card's calibrated thresholds, and catalogue-wide copy search.

use std::collections::BTreeMap;

use asen_index::{AttributeWeight, Filter, ItemId, Payload, Query, SearchRequest, MAX_K};
use serde::Serialize;

use super::{cosine, Result, Service, ServiceError};

/// One side of a comparison.
#[derive(Debug, Clone)]
pub enum Subject {
    /// An encoded image.
    Image(Vec<u8>),
    /// A stored item.
    Item {
        /// Its catalogue.
        catalogue: String,
        /// Its id.
        id: ItemId,
    },
}

/// One attribute of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AttributeComparison {
    /// Attribute name.
    pub attribute: String,
    /// Cosine similarity; absent when a stored item lacks the attribute.
    pub similarity: Option<f32>,
    /// The calibrated threshold, when the model has one for this attribute.
    pub threshold: Option<f32>,
    /// Whether the two match on it; absent when uncalibrated.
    pub matches: Option<bool>,
}

/// The result of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    /// Per attribute, in model order.
    pub attributes: Vec<AttributeComparison>,
    /// Whether match decisions were made (the card has `match_thresholds`).
    pub calibrated: bool,
    /// Where the thresholds come from.
    pub thresholds_source: String,
    /// Attributes on which the two match.
    pub matching: Vec<String>,
    /// One sentence for people.
    pub verdict: String,
}

/// Decide per attribute from similarities and optional thresholds (pure; unit-tested).
pub fn decide(
    similarities: Vec<(String, Option<f32>)>,
    thresholds: Option<&BTreeMap<String, f32>>,
    thresholds_source: &str,
) -> Comparison {
    let attributes: Vec<AttributeComparison> = similarities
        .into_iter()
        .map(|(attribute, similarity)| {
            let threshold = thresholds.and_then(|t| t.get(&attribute).copied());
            let matches = match (similarity, threshold) {
                (Some(s), Some(t)) => Some(s >= t),
                (None, Some(_)) => Some(false),
                _ => None,
            };
            AttributeComparison {
                attribute,
                similarity,
                threshold,
                matches,
            }
        })
        .collect();
    let calibrated = attributes.iter().any(|a| a.threshold.is_some());
    let matching: Vec<String> = attributes
        .iter()
        .filter(|a| a.matches == Some(true))
        .map(|a| a.attribute.clone())
        .collect();
    let decided = attributes.iter().filter(|a| a.matches.is_some()).count();
    let verdict = if !calibrated {
        "uncalibrated: the model card has no match_thresholds, so no match is decided; \
         compare the similarities yourself"
            .to_string()
    } else if matching.is_empty() {
        format!("no design point matches (0 of {decided} attributes)")
    } else {
        format!(
            "matching design points: {} ({} of {decided} attributes)",
            matching.join(", "),
            matching.len()
        )
    };
    Comparison {
        attributes,
        calibrated,
        thresholds_source: if calibrated {
            thresholds_source.to_string()
        } else {
            "none (uncalibrated)".to_string()
        },
        matching,
        verdict,
    }
}

fn thresholds_source(svc: &Service) -> String {
    let Ok(model) = svc.model("the copy check") else {
        return "none (no model)".to_string();
    };
    let p = &model.embedder().card().provenance;
    let mut s =
        "model card match_thresholds, calibrated on validation pairs by the model's trainer"
            .to_string();
    if let Some(notes) = &p.notes {
        s.push_str(": ");
        s.push_str(notes);
    }
    s
}

fn vectors(
    svc: &Service,
    subject: &Subject,
    label: &str,
    attributes: &[String],
) -> Result<BTreeMap<String, Vec<f32>>> {
    match subject {
        Subject::Image(bytes) => svc.embed_one(bytes, label, attributes),
        Subject::Item { catalogue, id } => svc.item_vectors(catalogue, id),
    }
}

/// Compare two subjects on `attributes` (all of the model's when empty).
#[tracing::instrument(skip_all)]
pub fn compare(
    svc: &Service,
    a: &Subject,
    b: &Subject,
    attributes: &[String],
) -> Result<Comparison> {
    let card = svc.model("the copy check")?.embedder().card();
    let attributes: Vec<String> = if attributes.is_empty() {
        card.attribute_names()
    } else {
        // Each attribute once: the answer has one row per attribute, so its size is bounded
        // by the model's attributes, not by the request.
        let mut seen = std::collections::HashSet::with_capacity(attributes.len());
        for name in attributes {
            card.attribute_index(name)?;
            if !seen.insert(name.as_str()) {
                return Err(ServiceError::invalid(format!(
                    "attributes: {name:?} is listed twice; name each attribute once"
                )));
            }
        }
        attributes.to_vec()
    };
    let va = vectors(svc, a, "of a", &attributes)?;
    let vb = vectors(svc, b, "of b", &attributes)?;
    let sims = attributes
        .iter()
        .map(|name| {
            let s = match (va.get(name), vb.get(name)) {
                (Some(x), Some(y)) => Some(cosine(x, y)),
                _ => None,
            };
            (name.clone(), s)
        })
        .collect();
    Ok(decide(
        sims,
        card.match_thresholds.as_ref(),
        &thresholds_source(svc),
    ))
}

/// A catalogue-wide copy search.
#[derive(Debug, Clone)]
pub struct CopiesQuery {
    /// The query: an image, or an item of the same catalogue (excluded from hits).
    pub subject: Subject,
    /// Least number of matching attributes.
    pub min_matches: usize,
    /// Most items returned.
    pub k: usize,
    /// One threshold for every attribute, overriding the card's.
    pub threshold: Option<f32>,
    /// Payload filter.
    pub filter: Option<Filter>,
    /// Return payloads.
    pub with_payload: bool,
}

/// A catalogue item that matches the query on enough attributes.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CopyHit {
    /// The item.
    #[schema(value_type = String)]
    pub id: ItemId,
    /// Attributes on which it matches, in schema order.
    pub matching: Vec<String>,
    /// Similarity on each matching attribute.
    pub attribute_scores: BTreeMap<String, f32>,
    /// Payload, when asked for.
    #[schema(value_type = Object)]
    pub payload: Option<Payload>,
}

/// Items matching the query on at least `min_matches` attributes, most matches first
/// (ties by mean similarity).
#[tracing::instrument(skip_all, fields(catalogue = %catalogue))]
pub fn copies(svc: &Service, catalogue: &str, query: &CopiesQuery) -> Result<Vec<CopyHit>> {
    svc.check_k(query.k)?;
    let store = svc.store("a copy search")?;
    let schema = store.schema(catalogue)?;
    if query.min_matches == 0 || query.min_matches > schema.attributes.len() {
        return Err(ServiceError::invalid(format!(
            "min_matches = {} is outside 1..={} (the catalogue's attributes)",
            query.min_matches,
            schema.attributes.len()
        )));
    }
    let card_thresholds = svc
        .model("a copy search")?
        .embedder()
        .card()
        .match_thresholds
        .as_ref();
    let threshold_of = |a: &str| -> Result<f32> {
        match (query.threshold, card_thresholds) {
            (Some(t), _) => Ok(t),
            (None, Some(map)) => map.get(a).copied().ok_or(ServiceError::Uncalibrated),
            (None, None) => Err(ServiceError::Uncalibrated),
        }
    };
    let image_vectors = match &query.subject {
        Subject::Image(bytes) => Some(svc.embed_one(bytes, "of the query", &schema.attributes)?),
        Subject::Item { catalogue: c, .. } => {
            if c != catalogue {
                return Err(ServiceError::invalid(format!(
                    "the query item must be in catalogue {catalogue:?}, not {c:?}"
                )));
            }
            None
        }
    };
    let candidates = (query.k * 10).clamp(100, MAX_K);
    let mut found: BTreeMap<ItemId, CopyHit> = BTreeMap::new();
    for attribute in &schema.attributes {
        let threshold = threshold_of(attribute)?;
        let core = match (&image_vectors, &query.subject) {
            (Some(v), _) => Query::Vector {
                attribute: attribute.clone(),
                vector: v[attribute].clone(),
            },
            (None, Subject::Item { id, .. }) => Query::Item {
                id: id.clone(),
                attributes: vec![AttributeWeight {
                    attribute: attribute.clone(),
                    weight: 1.0,
                }],
            },
            (None, Subject::Image(_)) => unreachable!("image subjects are embedded above"),
        };
        let request = SearchRequest {
            query: core,
            k: candidates,
            ef_search: None,
            score_threshold: Some(threshold),
            filter: query.filter.clone(),
            with_payload: query.with_payload,
            group_by: None,
        };
        let hits = match store.search(catalogue, &request) {
            Ok(r) => r.into_hits(),
            // The query item lacks this attribute: it cannot match on it.
            Err(asen_index::IndexError::MissingAttribute { .. }) => continue,
            Err(asen_index::IndexError::ItemNotFound { catalogue, id }) => {
                return Err(ServiceError::ItemNotFound { catalogue, id })
            }
            Err(e) => return Err(e.into()),
        };
        for hit in hits {
            let entry = found.entry(hit.id.clone()).or_insert_with(|| CopyHit {
                id: hit.id.clone(),
                matching: Vec::new(),
                attribute_scores: BTreeMap::new(),
                payload: hit.payload.clone(),
            });
            entry.matching.push(attribute.clone());
            entry.attribute_scores.insert(attribute.clone(), hit.score);
        }
    }
    let mut hits: Vec<CopyHit> = found
        .into_values()
        .filter(|h| h.matching.len() >= query.min_matches)
        .collect();
    let mean = |h: &CopyHit| h.attribute_scores.values().sum::<f32>() / h.matching.len() as f32;
    hits.sort_by(|a, b| {
        b.matching
            .len()
            .cmp(&a.matching.len())
            .then(mean(b).total_cmp(&mean(a)))
    });
    hits.truncate(query.k);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncalibrated_decides_nothing() {
        let c = decide(vec![("collar".into(), Some(0.9))], None, "card");
        assert!(!c.calibrated);
        assert_eq!(c.attributes[0].matches, None);
        assert!(c.matching.is_empty());
        assert!(c.verdict.starts_with("uncalibrated"), "{}", c.verdict);
    }

    #[test]
    fn calibrated_names_matching_attributes() {
        let t: BTreeMap<String, f32> = [
            ("collar".to_string(), 0.8),
            ("colour".to_string(), 0.5),
            ("sleeve".to_string(), 0.7),
        ]
        .into();
        let c = decide(
            vec![
                ("collar".into(), Some(0.85)),
                ("colour".into(), Some(0.2)),
                ("sleeve".into(), None),
            ],
            Some(&t),
            "validation",
        );
        assert!(c.calibrated);
        assert_eq!(c.matching, vec!["collar".to_string()]);
        assert_eq!(c.attributes[1].matches, Some(false));
        assert_eq!(
            c.attributes[2].matches,
            Some(false),
            "missing attribute is no match"
        );
        assert_eq!(
            c.verdict,
            "matching design points: collar (1 of 3 attributes)"
        );
        assert_eq!(c.thresholds_source, "validation");
    }
}
