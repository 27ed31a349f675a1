//! The copy check: per-attribute similarity of two images or items, a per-attribute match
//! decision from the model card's calibrated thresholds, the instance-level copy verdict from
//! the model's copy signature (the `identity` vector), and catalogue-wide copy search.
//!
//! The attributes say which design points two garments share; they are category-level, so
//! two different black T-shirts share all of them. The verdict says whether one is a copy of
//! the other: the cosine of their `identity` signatures against the card's calibrated
//! `copy_signature.threshold`.

use std::collections::BTreeMap;
use std::sync::Arc;

use asen_index::{
    AttributeWeight, CatalogueSchema, Filter, ItemId, Payload, Query, SearchRequest, MAX_K,
};
use asen_models::IDENTITY_ATTRIBUTE;
use serde::Serialize;

use super::{cosine, Answer, Model, Result, Service, ServiceError};

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

/// The instance-level decision: is one a copy of the other?
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CopyVerdict {
    /// Cosine similarity of the two copy signatures (`identity` vectors).
    pub similarity: f32,
    /// The card's calibrated threshold (`copy_signature.threshold`).
    pub threshold: f32,
    /// `similarity >= threshold`.
    pub is_copy: bool,
}

impl CopyVerdict {
    fn new(similarity: f32, threshold: f32) -> Self {
        Self {
            similarity,
            threshold,
            is_copy: similarity >= threshold,
        }
    }
}

/// The result of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Comparison {
    /// The copy verdict; absent when the model has no copy signature or a stored item has
    /// no identity vector (a catalogue built before the signature).
    pub copy: Option<CopyVerdict>,
    /// Per attribute (design point), in model order.
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

/// Decide per attribute from similarities and optional thresholds, with the copy verdict
/// when there is one (pure; unit-tested).
pub fn decide(
    similarities: Vec<(String, Option<f32>)>,
    thresholds: Option<&BTreeMap<String, f32>>,
    thresholds_source: &str,
    copy: Option<CopyVerdict>,
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
    let points = if !calibrated {
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
    let verdict = match &copy {
        Some(c) if c.is_copy => format!(
            "copy: the same design (identity {:.3} >= {:.3}); {points}",
            c.similarity, c.threshold
        ),
        Some(c) => format!(
            "not a copy (identity {:.3} < {:.3}); {points}",
            c.similarity, c.threshold
        ),
        None => points,
    };
    Comparison {
        copy,
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

fn thresholds_source(model: &Model) -> String {
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

/// The vectors of a subject for `attributes`: an image embedded by `model` (for the
/// attributes of `schema` when given: renamed ones by their model names), an item's stored.
fn vectors(
    svc: &Service,
    model: &Model,
    schema: Option<&CatalogueSchema>,
    subject: &Subject,
    label: &str,
    attributes: &[String],
) -> Result<BTreeMap<String, Vec<f32>>> {
    match subject {
        Subject::Image(bytes) => match schema {
            Some(schema) => svc.embed_for_catalogue(model, schema, bytes, label, attributes),
            None => svc.embed_one(model, bytes, label, attributes),
        },
        Subject::Item { catalogue, id } => svc.item_vectors(catalogue, id),
    }
}

/// The model a comparison runs with: the model of the catalogue its stored items come from
/// (both the same, else [`ServiceError::MixedModels`]), or the default for two images.
fn comparison_model<'s>(svc: &'s Service, a: &Subject, b: &Subject) -> Result<&'s Arc<Model>> {
    let of = |s: &Subject| match s {
        Subject::Item { catalogue, .. } => svc
            .catalogue_model(catalogue, "the copy check")
            .map(|m| Some((catalogue.clone(), m))),
        Subject::Image(_) => Ok(None),
    };
    match (of(a)?, of(b)?) {
        // A model that extends the other computes the other's attributes as it does.
        (Some((_, ma)), Some((_, mb))) if extends(ma, mb) => Ok(ma),
        (Some((_, ma)), Some((_, mb))) if extends(mb, ma) => Ok(mb),
        (Some((ca, ma)), Some((cb, mb))) if ma.fingerprint() != mb.fingerprint() => {
            Err(ServiceError::MixedModels {
                a: format!(
                    "catalogue {ca:?} (model {})",
                    super::models::describe(&ma.record())
                ),
                b: format!(
                    "catalogue {cb:?} (model {})",
                    super::models::describe(&mb.record())
                ),
            })
        }
        (Some((_, m)), _) | (_, Some((_, m))) => Ok(m),
        (None, None) => svc.model("the copy check"),
    }
}

/// Whether `a` is another model than `b` that extends it.
fn extends(a: &Model, b: &Model) -> bool {
    a.fingerprint() != b.fingerprint() && a.embedder().card().extends_model(b.fingerprint())
}

/// Compare two subjects on `attributes` (all of the model's when empty), with the model of
/// the stored items' catalogue, or the default model for two images.
#[tracing::instrument(skip_all)]
pub fn compare(
    svc: &Service,
    a: &Subject,
    b: &Subject,
    attributes: &[String],
) -> Result<Answer<Comparison>> {
    let model = comparison_model(svc, a, b)?;
    let embedder = model.embedder();
    let card = embedder.card();
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
    let signature = card
        .copy_signature
        .as_ref()
        .filter(|_| embedder.signature().is_some());
    let mut wanted = attributes.clone();
    if signature.is_some() {
        wanted.push(IDENTITY_ATTRIBUTE.to_string());
    }
    let va = vectors(svc, model, None, a, "of a", &wanted)?;
    let vb = vectors(svc, model, None, b, "of b", &wanted)?;
    let copy = match (
        signature,
        va.get(IDENTITY_ATTRIBUTE),
        vb.get(IDENTITY_ATTRIBUTE),
    ) {
        (Some(spec), Some(x), Some(y)) => Some(CopyVerdict::new(cosine(x, y), spec.threshold)),
        _ => None,
    };
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
    let comparison = decide(
        sims,
        card.match_thresholds.as_ref(),
        &thresholds_source(model),
        copy,
    );
    Ok(Answer::new(
        comparison,
        Some(model.fingerprint().to_string()),
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
    /// The copy verdict against the query, when the model has a copy signature and the
    /// catalogue stores identity vectors (then every hit is a copy).
    pub copy: Option<CopyVerdict>,
    /// Attributes on which it matches, in schema order.
    pub matching: Vec<String>,
    /// Similarity on each matching attribute.
    pub attribute_scores: BTreeMap<String, f32>,
    /// Payload, when asked for.
    #[schema(value_type = Object)]
    pub payload: Option<Payload>,
}

/// Copies of the query in a catalogue.
///
/// With a copy signature (the model has one and the catalogue stores `identity` vectors), the
/// hits are the items the verdict calls copies (identity similarity at or above the card's
/// threshold), most similar first, each with the design points it matches; `min_matches`
/// (0 allowed) then asks for that many design points too. Without one, the hits are the items
/// matching on at least `min_matches` design points, most matches first (ties by mean
/// similarity).
#[tracing::instrument(skip_all, fields(catalogue = %catalogue))]
pub fn copies(svc: &Service, catalogue: &str, query: &CopiesQuery) -> Result<Answer<Vec<CopyHit>>> {
    svc.check_k(query.k)?;
    let store = svc.store("a copy search")?;
    let gate = svc.write_gate(catalogue);
    let _shared = gate.read().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    let model = svc
        .models("a copy search")?
        .for_catalogue(catalogue, schema.model.as_ref())?;
    let embedder = model.embedder();
    let signature = embedder
        .card()
        .copy_signature
        .as_ref()
        .filter(|_| embedder.signature().is_some())
        .filter(|_| schema.attribute_index(IDENTITY_ATTRIBUTE).is_some());
    let design_points: Vec<String> = schema
        .attributes
        .iter()
        .filter(|a| a.as_str() != IDENTITY_ATTRIBUTE)
        .cloned()
        .collect();
    let least = if signature.is_some() { 0 } else { 1 };
    if query.min_matches < least || query.min_matches > design_points.len() {
        return Err(ServiceError::invalid(format!(
            "min_matches = {} is outside {least}..={} (the catalogue's design points)",
            query.min_matches,
            design_points.len()
        )));
    }
    if let Subject::Item { catalogue: c, .. } = &query.subject {
        if c != catalogue {
            return Err(ServiceError::invalid(format!(
                "the query item must be in catalogue {catalogue:?}, not {c:?}"
            )));
        }
    }
    let card_thresholds = embedder.card().match_thresholds.as_ref();
    let threshold_of = |a: &str| -> Result<f32> {
        match (query.threshold, card_thresholds) {
            (Some(t), _) => Ok(t),
            (None, Some(map)) => map.get(a).copied().ok_or(ServiceError::Uncalibrated),
            (None, None) => Err(ServiceError::Uncalibrated),
        }
    };
    let hits = match signature {
        Some(spec) => copies_by_verdict(
            svc,
            model,
            &schema,
            catalogue,
            query,
            &design_points,
            spec.threshold,
            &threshold_of,
        ),
        None => copies_by_design_points(
            svc,
            model,
            &schema,
            catalogue,
            query,
            &design_points,
            &threshold_of,
        ),
    }?;
    Ok(Answer::new(hits, Some(model.fingerprint().to_string())))
}

/// The search for one attribute: by vector for an image, by the stored item otherwise (which
/// excludes the item itself).
fn attribute_query(
    query: &CopiesQuery,
    attribute: &str,
    vectors: &BTreeMap<String, Vec<f32>>,
) -> Option<Query> {
    match &query.subject {
        Subject::Item { id, .. } => Some(Query::Item {
            id: id.clone(),
            attributes: vec![AttributeWeight {
                attribute: attribute.to_string(),
                weight: 1.0,
            }],
        }),
        Subject::Image(_) => vectors.get(attribute).map(|v| Query::Vector {
            attribute: attribute.to_string(),
            vector: v.clone(),
        }),
    }
}

fn search_above(
    svc: &Service,
    catalogue: &str,
    query: &CopiesQuery,
    core: Query,
    threshold: f32,
) -> Result<Option<Vec<asen_index::Hit>>> {
    let request = SearchRequest {
        query: core,
        k: (query.k * 10).clamp(100, MAX_K),
        ef_search: None,
        score_threshold: Some(threshold),
        filter: query.filter.clone(),
        with_payload: query.with_payload,
        group_by: None,
    };
    match svc.store("a copy search")?.search(catalogue, &request) {
        Ok(r) => Ok(Some(r.into_hits())),
        // The query item lacks this attribute: it cannot match on it.
        Err(asen_index::IndexError::MissingAttribute { .. }) => Ok(None),
        Err(asen_index::IndexError::ItemNotFound { catalogue, id }) => {
            Err(ServiceError::ItemNotFound { catalogue, id })
        }
        Err(e) => Err(e.into()),
    }
}

#[allow(clippy::too_many_arguments)]
fn copies_by_verdict(
    svc: &Service,
    model: &Model,
    schema: &CatalogueSchema,
    catalogue: &str,
    query: &CopiesQuery,
    design_points: &[String],
    copy_threshold: f32,
    threshold_of: &dyn Fn(&str) -> Result<f32>,
) -> Result<Vec<CopyHit>> {
    let mut wanted = design_points.to_vec();
    wanted.push(IDENTITY_ATTRIBUTE.to_string());
    let vectors = vectors(
        svc,
        model,
        Some(schema),
        &query.subject,
        "of the query",
        &wanted,
    )?;
    let Some(core) = attribute_query(query, IDENTITY_ATTRIBUTE, &vectors) else {
        return Ok(Vec::new());
    };
    let Some(candidates) = search_above(svc, catalogue, query, core, copy_threshold)? else {
        // The query item has no identity vector (stored before the signature).
        return Ok(Vec::new());
    };
    let store = svc.store("a copy search")?;
    let mut hits = Vec::new();
    for hit in candidates {
        let stored = store
            .get(catalogue, &hit.id, true)?
            .and_then(|item| item.vectors)
            .unwrap_or_default();
        let mut matching = Vec::new();
        let mut attribute_scores = BTreeMap::new();
        for a in design_points {
            let (Some(x), Some(y)) = (vectors.get(a), stored.get(a)) else {
                continue;
            };
            let s = cosine(x, y);
            match threshold_of(a) {
                Ok(t) if s >= t => {
                    matching.push(a.clone());
                    attribute_scores.insert(a.clone(), s);
                }
                Ok(_) => {}
                // Uncalibrated design points: undecided, fine unless some are asked for.
                Err(e) if query.min_matches > 0 => return Err(e),
                Err(_) => {}
            }
        }
        if matching.len() >= query.min_matches {
            hits.push(CopyHit {
                id: hit.id,
                copy: Some(CopyVerdict::new(hit.score, copy_threshold)),
                matching,
                attribute_scores,
                payload: hit.payload,
            });
        }
        if hits.len() == query.k {
            break;
        }
    }
    Ok(hits)
}

fn copies_by_design_points(
    svc: &Service,
    model: &Model,
    schema: &CatalogueSchema,
    catalogue: &str,
    query: &CopiesQuery,
    design_points: &[String],
    threshold_of: &dyn Fn(&str) -> Result<f32>,
) -> Result<Vec<CopyHit>> {
    let vectors = match &query.subject {
        Subject::Image(_) => vectors(
            svc,
            model,
            Some(schema),
            &query.subject,
            "of the query",
            design_points,
        )?,
        Subject::Item { .. } => BTreeMap::new(),
    };
    let mut found: BTreeMap<ItemId, CopyHit> = BTreeMap::new();
    for attribute in design_points {
        let threshold = threshold_of(attribute)?;
        let Some(core) = attribute_query(query, attribute, &vectors) else {
            continue;
        };
        let Some(hits) = search_above(svc, catalogue, query, core, threshold)? else {
            continue;
        };
        for hit in hits {
            let entry = found.entry(hit.id.clone()).or_insert_with(|| CopyHit {
                id: hit.id.clone(),
                copy: None,
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
        let c = decide(vec![("collar".into(), Some(0.9))], None, "card", None);
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
            None,
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

    #[test]
    fn the_copy_verdict_leads_the_sentence() {
        let t: BTreeMap<String, f32> = [("colour".to_string(), 0.5)].into();
        let sims = || vec![("colour".to_string(), Some(0.9))];
        let copy = decide(sims(), Some(&t), "v", Some(CopyVerdict::new(0.8, 0.6)));
        assert!(copy.copy.as_ref().is_some_and(|c| c.is_copy));
        assert!(
            copy.verdict.starts_with("copy: the same design"),
            "{}",
            copy.verdict
        );
        let other = decide(sims(), Some(&t), "v", Some(CopyVerdict::new(0.5, 0.6)));
        assert!(!other.copy.as_ref().is_some_and(|c| c.is_copy));
        assert!(other.verdict.starts_with("not a copy"), "{}", other.verdict);
        assert_eq!(
            other.matching,
            vec!["colour".to_string()],
            "design points still decided"
        );
    }

    #[test]
    fn a_similarity_equal_to_the_threshold_is_a_copy() {
        assert!(CopyVerdict::new(0.6, 0.6).is_copy);
        assert!(!CopyVerdict::new(0.599, 0.6).is_copy);
    }
}
