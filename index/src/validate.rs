//! Checks every backend applies before writing (catalogue names, batch sizes and items) and
//! before searching (the request's bounds, attribute names and weights).

use crate::error::{IndexError, Result};
use crate::filter;
use crate::rescore::normalized;
use crate::schema::{CatalogueSchema, MAX_ATTRIBUTES};
use crate::types::{Item, ItemId, SearchRequest, MAX_BATCH_ITEMS, MAX_K, MAX_THUMBNAIL_BYTES};

/// A catalogue name: 1..=64 bytes of `[A-Za-z0-9_-]`.
pub(crate) fn catalogue_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() || name.len() > 64 {
        "must be 1..=64 bytes"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        "may contain only ascii letters, digits, '_' and '-'"
    } else {
        return Ok(());
    };
    Err(IndexError::InvalidCatalogueName {
        name: name.chars().take(80).collect(),
        reason: reason.into(),
    })
}

/// A write batch of at most [`MAX_BATCH_ITEMS`].
pub(crate) fn batch_len(len: usize) -> Result<()> {
    if len > MAX_BATCH_ITEMS {
        return Err(IndexError::BatchTooLarge {
            got: len,
            limit: MAX_BATCH_ITEMS,
        });
    }
    Ok(())
}

/// Checks one item against its catalogue's schema (attributes, vectors, payload size, content
/// hash, thumbnail) and returns its unit vectors by attribute index.
pub(crate) fn item(
    catalogue: &str,
    schema: &CatalogueSchema,
    item: &Item,
) -> Result<Vec<Option<Vec<f32>>>> {
    let id = item.id.as_str();
    if item.vectors.is_empty() {
        return Err(IndexError::EmptyItem { id: id.to_string() });
    }
    let mut by_index: Vec<Option<Vec<f32>>> = vec![None; schema.attributes.len()];
    for (attr, v) in &item.vectors {
        let a = schema
            .attribute_index(attr)
            .ok_or_else(|| IndexError::UnknownAttribute {
                catalogue: catalogue.to_string(),
                attribute: attr.chars().take(80).collect(),
            })?;
        by_index[a] = Some(normalized(attr, v, schema.dimension)?);
    }
    let payload_bytes = serde_json::to_vec(&item.payload)
        .map(|b| b.len())
        .unwrap_or(usize::MAX);
    if payload_bytes > schema.max_payload_bytes {
        return Err(IndexError::PayloadTooLarge {
            id: id.to_string(),
            bytes: payload_bytes,
            limit: schema.max_payload_bytes,
        });
    }
    if item.content_hash.as_ref().is_some_and(|h| h.len() > 1024) {
        return Err(IndexError::InvalidRequest {
            reason: format!("item {id:?}: content hash longer than 1024 bytes"),
        });
    }
    match item.thumbnail.as_deref() {
        Some(t) if t.len() > MAX_THUMBNAIL_BYTES => Err(IndexError::ThumbnailTooLarge {
            id: id.to_string(),
            bytes: t.len(),
            limit: MAX_THUMBNAIL_BYTES,
        }),
        Some([]) => Err(IndexError::InvalidRequest {
            reason: format!("item {id:?}: thumbnail is empty (use None for none)"),
        }),
        _ => Ok(by_index),
    }
}

/// Most example items (positive and negative together) of one recommendation.
pub(crate) const MAX_RECOMMEND_EXAMPLES: usize = 1_000;

/// A recommendation's examples: at least one positive, at most
/// [`MAX_RECOMMEND_EXAMPLES`] in all.
pub(crate) fn recommend_examples(positive: usize, negative: usize) -> Result<()> {
    let invalid = |reason: &str| IndexError::InvalidRequest {
        reason: reason.to_string(),
    };
    if positive == 0 {
        return Err(invalid("recommend needs at least one positive item"));
    }
    if positive + negative > MAX_RECOMMEND_EXAMPLES {
        return Err(invalid("recommend takes at most 1000 example items"));
    }
    Ok(())
}

/// Item ids with unit vectors for one attribute.
pub(crate) type Fill = Vec<(ItemId, Vec<f32>)>;

/// Checks a [`crate::CatalogueStore::fill_attribute`] batch: the attribute's position, and
/// the vectors normalised; at most [`MAX_BATCH_ITEMS`], each id once.
pub(crate) fn fill(
    catalogue: &str,
    schema: &CatalogueSchema,
    attribute: &str,
    vectors: &[(ItemId, Vec<f32>)],
) -> Result<(usize, Fill)> {
    batch_len(vectors.len())?;
    let a = attribute_index(catalogue, schema, attribute)?;
    let mut seen = std::collections::HashSet::with_capacity(vectors.len());
    let mut out = Vec::with_capacity(vectors.len());
    for (id, v) in vectors {
        if !seen.insert(id.as_str()) {
            return Err(IndexError::InvalidRequest {
                reason: format!("item {:?} is listed twice in one fill", id.as_str()),
            });
        }
        out.push((id.clone(), normalized(attribute, v, schema.dimension)?));
    }
    Ok((a, out))
}

/// Position of `attribute` in catalogue `catalogue`'s schema, or `UnknownAttribute`.
pub(crate) fn attribute_index(
    catalogue: &str,
    schema: &CatalogueSchema,
    attribute: &str,
) -> Result<usize> {
    schema
        .attribute_index(attribute)
        .ok_or_else(|| IndexError::UnknownAttribute {
            catalogue: catalogue.to_string(),
            attribute: attribute.chars().take(80).collect(),
        })
}

/// A weighted query's (attribute index, weight) pairs: known attributes, each once, finite
/// positive weights, at least one and at most [`MAX_ATTRIBUTES`].
pub(crate) fn weights<'a>(
    catalogue: &str,
    schema: &CatalogueSchema,
    ws: impl Iterator<Item = (&'a str, f32)>,
) -> Result<Vec<(usize, f32)>> {
    let invalid = |reason: String| IndexError::InvalidRequest { reason };
    let mut out: Vec<(usize, f32)> = Vec::new();
    for (name, w) in ws {
        let a = attribute_index(catalogue, schema, name)?;
        if !w.is_finite() || w <= 0.0 {
            return Err(invalid(format!(
                "weight {w} of attribute {name:?} must be finite and > 0"
            )));
        }
        if out.iter().any(|(b, _)| *b == a) {
            return Err(invalid(format!("attribute {name:?} is given twice")));
        }
        out.push((a, w));
    }
    if out.is_empty() {
        return Err(invalid("the query names no attribute".into()));
    }
    if out.len() > MAX_ATTRIBUTES {
        return Err(invalid("too many attributes".into()));
    }
    Ok(out)
}

/// Largest `ef_search` a request may ask for.
pub(crate) const MAX_EF: usize = 10_000;

/// A search request's bounds (k, ef_search, score_threshold, group_by, filter); returns the
/// `ef_search` to use (the schema's when the request gives none).
pub(crate) fn search_request(schema: &CatalogueSchema, req: &SearchRequest) -> Result<usize> {
    let invalid = |reason: String| IndexError::InvalidRequest { reason };
    if req.k == 0 || req.k > MAX_K {
        return Err(IndexError::InvalidK {
            k: req.k,
            max: MAX_K,
        });
    }
    let ef = req.ef_search.unwrap_or(schema.hnsw.ef_search);
    if ef == 0 || ef > MAX_EF {
        return Err(invalid(format!("ef_search = {ef} is outside 1..={MAX_EF}")));
    }
    if req.score_threshold.is_some_and(|t| !t.is_finite()) {
        return Err(invalid("score_threshold is not finite".into()));
    }
    if let Some(g) = &req.group_by {
        if g.field.is_empty() {
            return Err(invalid("group_by field is empty".into()));
        }
        if g.group_size == 0 || g.group_size > MAX_K {
            return Err(invalid(format!(
                "group_size = {} is outside 1..={MAX_K}",
                g.group_size
            )));
        }
    }
    if let Some(f) = &req.filter {
        filter::validate(f)?;
    }
    Ok(ef)
}
