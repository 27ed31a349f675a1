//! Search over a catalogue: resolve the query to unit vectors per attribute, pick candidates
//! (graph walk, filter hook, or exact scan of the filtered subset), score exactly where the graph
//! score is not, then threshold, group and assemble hits.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use super::filter_plan::{self, IdSet};
use super::records::{self, ItemRecord, VectorRecord};
use super::{read, Catalogue, FilterStrategy, ItemMeta, LiveSet, StoreOptions};
use crate::distance::dot;
use crate::error::{IndexError, Result};
use crate::filter;
use crate::rescore::{average_vector, group_hits, normalized};
use crate::types::{
    AttributeWeight, Filter, Hit, HitGroup, ItemId, Query, SearchRequest, SearchResults,
};

use crate::validate::MAX_EF;
/// Shortlist multiplier for f16 and int8 graphs, whose scores are rescored exactly.
const COMPRESSED_OVERSAMPLE: usize = 2;

/// One attribute of the resolved query.
struct Part {
    attribute: usize,
    vector: Vec<f32>,
    weight: f32,
}

struct Plan {
    parts: Vec<Part>,
    exclude: HashSet<u64>,
}

struct Scored {
    iid: u64,
    score: f32,
    per_attribute: Vec<f32>,
    meta: Arc<ItemMeta>,
}

pub(crate) fn search(
    c: &Catalogue,
    req: &SearchRequest,
    options: &StoreOptions,
) -> Result<SearchResults> {
    let ef = crate::validate::search_request(&c.schema, req)?;
    let plan = resolve(c, &req.query)?;
    let need = req.k;
    let per_group = req.group_by.as_ref().map_or(1, |g| g.group_size);

    let mode = match &req.filter {
        None => Mode::Unfiltered,
        Some(f) => filtered_mode(c, f, &plan, options),
    };
    if let Mode::Exact(ids) = &mode {
        let scored = score_exact(c, &plan, ids.iter().copied())?;
        return Ok(finish(c, req, scored));
    }

    let graphs: Vec<_> = plan
        .parts
        .iter()
        .map(|p| c.graphs[p.attribute].current())
        .collect();
    let needs_rescore = plan.parts.len() > 1 || graphs.iter().any(|g| !g.exact());
    // Compressed graphs rank approximately: walk a wider list and let exact rescoring pick.
    let oversample = if graphs.iter().all(|g| g.exact()) {
        1
    } else {
        COMPRESSED_OVERSAMPLE
    };
    let (live_total, tombstone_factor) = {
        let live = read(&c.live);
        // Graph points per live point: how many more hits a walk needs to keep `k` live ones.
        let factor = plan
            .parts
            .iter()
            .zip(&graphs)
            .map(|(p, g)| g.len() as f64 / live.counts[p.attribute].max(1) as f64)
            .fold(1.0, f64::max);
        (live.items.len(), factor)
    };
    // Post-filtering walks k / selectivity candidates (plus margin) to keep k after the filter.
    let post_factor = match &mode {
        Mode::Post(_, est) => 1.5 / est.max(1e-4),
        _ => 1.0,
    };
    let mut fetch = need * per_group;
    loop {
        let wanted = ((fetch + plan.exclude.len()) as f64 * post_factor).ceil() as usize;
        // Post-filtering also widens ef, so about `ef` candidates survive the filter.
        let ef_eff = (ef as f64 * post_factor).ceil() as usize;
        let knbn = wanted.max(ef_eff).min(MAX_EF * 4) * oversample;
        // A single exact graph returns only what can be kept (the walk still uses `knbn`
        // candidates); merged or rescored parts, and groups (any candidate may open one),
        // need the whole candidate list.
        let take = if needs_rescore || req.group_by.is_some() {
            knbn
        } else {
            ((wanted as f64 * tombstone_factor).ceil() as usize).min(knbn)
        };
        let mut seen = HashSet::new();
        let mut approx: Vec<(u64, f32)> = Vec::with_capacity(take);
        let mut exhausted = true;
        for (p, g) in plan.parts.iter().zip(&graphs) {
            let found = match &mode {
                Mode::Hook(m) => {
                    let keep = |id: u64| m.binary_search(&id).is_ok();
                    g.search(&p.vector, take, knbn, Some(&keep))
                }
                _ => g.search(&p.vector, take, knbn, None),
            };
            if found.len() >= take {
                exhausted = false;
            }
            if plan.parts.len() == 1 && plan.exclude.is_empty() {
                // One graph returns each point once, and nothing is excluded.
                approx.extend(found);
                continue;
            }
            for (iid, s) in found {
                if !plan.exclude.contains(&iid) && seen.insert(iid) {
                    approx.push((iid, s));
                }
            }
        }
        let keep = match &mode {
            Mode::Post(keep, _) => Some(keep),
            _ => None,
        };
        let (results, below_threshold) = if needs_rescore || req.group_by.is_some() {
            scored_results(c, req, &plan, approx, keep, needs_rescore)?
        } else {
            let (hits, below) = ranked_hits(c, req, approx, keep);
            (SearchResults::Hits(hits), below)
        };
        let produced = match &results {
            SearchResults::Hits(h) => h.len(),
            SearchResults::Groups(g) => g.len(),
        };
        if produced >= need || exhausted || below_threshold {
            return Ok(results);
        }
        // Too many tombstones, excluded ids or filtered-out points in the way: widen, and past
        // the whole graph fall back to an exact scan (filter-matching or all live items).
        fetch *= 4;
        if wanted > live_total.max(1) * 2 || knbn >= MAX_EF * 4 {
            let ids: Vec<u64> = match &mode {
                Mode::Hook(m) | Mode::Exact(m) => m.clone(),
                Mode::Post(Keep::Filter(f), _) => all_matching(c, f, &plan, options),
                Mode::Post(Keep::Ids(set), _) => set.clone().into_ids(&read(&c.live)),
                Mode::Unfiltered => read(&c.live)
                    .items
                    .keys()
                    .filter(|i| !plan.exclude.contains(i))
                    .copied()
                    .collect(),
            };
            let scored = score_exact(c, &plan, ids.into_iter())?;
            return Ok(finish(c, req, scored));
        }
    }
}

/// Results from candidates that need exact scores (several parts or a compressed graph) or
/// grouping, and whether some candidate scored below the request's threshold.
fn scored_results(
    c: &Catalogue,
    req: &SearchRequest,
    plan: &Plan,
    mut approx: Vec<(u64, f32)>,
    keep: Option<&Keep<'_>>,
    needs_rescore: bool,
) -> Result<(SearchResults, bool)> {
    if let Some(keep) = keep {
        let live = read(&c.live);
        approx.retain(|(iid, _)| {
            live.items
                .get(iid)
                .is_some_and(|m| keep.passes(*iid, &m.payload))
        });
    }
    let scored = if needs_rescore {
        score_exact(c, plan, approx.iter().map(|(i, _)| *i))?
    } else {
        let live = read(&c.live);
        approx
            .iter()
            .filter_map(|(iid, s)| {
                live.items.get(iid).map(|m| Scored {
                    iid: *iid,
                    score: *s,
                    per_attribute: vec![*s],
                    meta: Arc::clone(m),
                })
            })
            .collect()
    };
    let lowest = scored.iter().map(|s| s.score).fold(f32::INFINITY, f32::min);
    let below_threshold = req.score_threshold.is_some_and(|t| lowest < t);
    Ok((finish(c, req, scored), below_threshold))
}

/// Hits straight from one exact graph's scores, best first, built under one lock of the live
/// set with no intermediate copies (the common query: one attribute, no groups), and whether
/// some live candidate scored below the request's threshold.
fn ranked_hits(
    c: &Catalogue,
    req: &SearchRequest,
    mut approx: Vec<(u64, f32)>,
    keep: Option<&Keep<'_>>,
) -> (Vec<Hit>, bool) {
    approx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    // One name: the request's attribute (resolution already checked it against this schema).
    let name = resolve_names(c, req).into_iter().next();
    let live = read(&c.live);
    // First the items, in a loop with nothing else in it, so their cache misses overlap; each
    // id's bytes are fetched ahead of the copies below.
    let mut picked: Vec<(&ItemMeta, f32)> = Vec::with_capacity(req.k.min(approx.len()));
    let mut below_threshold = false;
    for (iid, score) in approx {
        if picked.len() == req.k {
            break;
        }
        let Some(meta) = live.items.get(&iid) else {
            continue;
        };
        if keep.is_some_and(|k| !k.passes(iid, &meta.payload)) {
            continue;
        }
        if req.score_threshold.is_some_and(|t| score < t) {
            below_threshold = true;
            break;
        }
        prefetch(meta.id.as_str().as_ptr());
        picked.push((meta, score));
    }
    let hits = picked
        .into_iter()
        .map(|(meta, score)| Hit {
            id: meta.id.clone(),
            score,
            attribute_scores: name
                .map(|n| BTreeMap::from([(n.clone(), score)]))
                .unwrap_or_default(),
            payload: req.with_payload.then(|| meta.payload.to_map()),
        })
        .collect();
    (hits, below_threshold)
}

/// Asks the core to start loading the cache line at `p` (a hint: no effect on results).
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and has no effect on memory, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// How a search finds candidates.
enum Mode<'a> {
    Unfiltered,
    /// Exact scan of the matching ids (ascending).
    Exact(Vec<u64>),
    /// Graph walk with the filter hook over the matching ids (ascending).
    Hook(Vec<u64>),
    /// Unfiltered graph walk widened by 1 / selectivity, then the filter.
    Post(Keep<'a>, f64),
}

/// Which items pass the filter on the post-filter path.
enum Keep<'a> {
    /// The payload index's exact answer (query exclusions already removed).
    Ids(IdSet),
    /// The filter itself, evaluated on each candidate's payload.
    Filter(&'a Filter),
}

impl Keep<'_> {
    fn passes(&self, iid: u64, payload: &impl filter::Fields) -> bool {
        match self {
            Keep::Ids(set) => set.contains(iid),
            Keep::Filter(f) => filter::matches(f, payload),
        }
    }
}

/// Most matching items scanned exactly under [`FilterStrategy::Auto`].
fn exact_limit(options: &StoreOptions, live_total: usize) -> usize {
    options
        .exact_scan_max_items
        .max((options.exact_scan_fraction * live_total as f64) as usize)
}

/// The path of a filtered search: from the payload index's exact set when the filter is
/// indexable, otherwise from the filter evaluated on payloads.
fn filtered_mode<'a>(
    c: &Catalogue,
    f: &'a Filter,
    plan: &Plan,
    options: &StoreOptions,
) -> Mode<'a> {
    if options.payload_index {
        let live = read(&c.live);
        if let Some(mode) = broad_leaf_mode(&live, f, options) {
            return mode;
        }
        if let Some(set) = filter_plan::candidates(&live, f) {
            return indexed_mode(&live, set.without(&plan.exclude, &live), options);
        }
    }
    scanned_mode(c, f, plan, options)
}

/// Post-filtering for a single condition the index counts above twice the exact-scan limit:
/// that path tests each candidate's payload, so collecting (and, for a range, sorting) a large
/// id set would only add cost. The count may exceed the matching items (array elements, range
/// ends), which only narrows the first walk: the search loop widens it when too few pass.
fn broad_leaf_mode<'a>(live: &LiveSet, f: &'a Filter, options: &StoreOptions) -> Option<Mode<'a>> {
    if options.filter_strategy != FilterStrategy::Auto {
        return None;
    }
    let live_total = live.items.len();
    let count = filter_plan::leaf_count(live, f)?;
    (count > 2 * exact_limit(options, live_total)).then(|| {
        let selectivity = count.min(live_total) as f64 / live_total.max(1) as f64;
        Mode::Post(Keep::Filter(f), selectivity)
    })
}

/// The path for an exact set of matching ids: its size, not an estimate, picks it.
fn indexed_mode<'a>(live: &LiveSet, set: IdSet, options: &StoreOptions) -> Mode<'a> {
    let live_total = live.items.len();
    let count = set.len(live_total);
    let selectivity = count as f64 / live_total.max(1) as f64;
    let limit = exact_limit(options, live_total);
    match options.filter_strategy {
        FilterStrategy::ExactScan => Mode::Exact(set.into_ids(live)),
        FilterStrategy::GraphHook => Mode::Hook(set.into_ids(live)),
        FilterStrategy::PostFilter => Mode::Post(Keep::Ids(set), selectivity),
        FilterStrategy::Auto if count <= limit => Mode::Exact(set.into_ids(live)),
        FilterStrategy::Auto if count <= 2 * limit => Mode::Hook(set.into_ids(live)),
        FilterStrategy::Auto => Mode::Post(Keep::Ids(set), selectivity),
    }
}

/// The path for a filter the index cannot answer: selectivity estimated on a sample, matches
/// counted by evaluating the filter on every live payload where the path needs them.
fn scanned_mode<'a>(c: &Catalogue, f: &'a Filter, plan: &Plan, options: &StoreOptions) -> Mode<'a> {
    let live_total = read(&c.live).items.len();
    let limit = exact_limit(options, live_total);
    match options.filter_strategy {
        FilterStrategy::ExactScan => Mode::Exact(matching(c, f, plan)),
        FilterStrategy::GraphHook => Mode::Hook(matching(c, f, plan)),
        FilterStrategy::PostFilter => Mode::Post(Keep::Filter(f), selectivity(c, f)),
        FilterStrategy::Auto => {
            let est = selectivity(c, f);
            if est * live_total as f64 <= 2.0 * limit as f64 {
                // Probably selective: count exactly, scan if it is.
                let ids = matching(c, f, plan);
                if ids.len() <= limit {
                    Mode::Exact(ids)
                } else {
                    Mode::Hook(ids)
                }
            } else {
                Mode::Post(Keep::Filter(f), est)
            }
        }
    }
}

/// Items sampled to estimate a filter's selectivity.
const SELECTIVITY_SAMPLE: usize = 1024;

/// Fraction of live items passing the filter, estimated on a sample (hash order, so it is
/// unrelated to payload values).
fn selectivity(c: &Catalogue, f: &Filter) -> f64 {
    let live = read(&c.live);
    let sample = live.items.len().min(SELECTIVITY_SAMPLE);
    let hits = live
        .items
        .values()
        .take(sample)
        .filter(|m| filter::matches(f, &m.payload))
        .count();
    (hits as f64 + 0.5) / (sample as f64 + 1.0)
}

/// Every live id passing the filter, minus the query's exclusions, ascending: from the payload
/// index where it can answer, otherwise by evaluating every payload.
fn all_matching(c: &Catalogue, f: &Filter, plan: &Plan, options: &StoreOptions) -> Vec<u64> {
    if options.payload_index {
        let live = read(&c.live);
        if let Some(set) = filter_plan::candidates(&live, f) {
            return set.without(&plan.exclude, &live).into_ids(&live);
        }
    }
    matching(c, f, plan)
}

/// Every live id passing the filter, minus the query's exclusions, ascending (O(live items)).
fn matching(c: &Catalogue, f: &Filter, plan: &Plan) -> Vec<u64> {
    let live = read(&c.live);
    let mut ids: Vec<u64> = live
        .items
        .iter()
        .filter(|(iid, m)| !plan.exclude.contains(iid) && filter::matches(f, &m.payload))
        .map(|(iid, _)| *iid)
        .collect();
    ids.sort_unstable();
    ids
}

fn invalid(reason: String) -> IndexError {
    IndexError::InvalidRequest { reason }
}

/// Exact weighted cosines from the stored `f32` vectors; ids no longer live are dropped.
fn score_exact(c: &Catalogue, plan: &Plan, ids: impl Iterator<Item = u64>) -> Result<Vec<Scored>> {
    let dim = c.schema.dimension;
    let metas: Vec<(u64, Arc<ItemMeta>)> = {
        let live = read(&c.live);
        ids.filter_map(|iid| live.items.get(&iid).map(|m| (iid, Arc::clone(m))))
            .collect()
    };
    let mut out = Vec::with_capacity(metas.len());
    for (iid, meta) in metas {
        // Deleted between the live lookup and now: skip.
        let Some(bytes) = c.tree.get(records::vector_key(iid))? else {
            continue;
        };
        let rec = VectorRecord::decode(iid, &bytes, dim)?;
        let mut score = 0f32;
        let mut per_attribute = Vec::with_capacity(plan.parts.len());
        let mut any = false;
        for p in &plan.parts {
            let s = match rec.get(p.attribute, dim) {
                Some(v) => {
                    any = true;
                    dot(&p.vector, v)
                }
                None => 0.0,
            };
            score += p.weight * s;
            per_attribute.push(s);
        }
        if any {
            out.push(Scored {
                iid,
                score,
                per_attribute,
                meta,
            });
        }
    }
    Ok(out)
}

/// Sorts, thresholds, groups and builds hits.
fn finish(c: &Catalogue, req: &SearchRequest, mut scored: Vec<Scored>) -> SearchResults {
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.iid.cmp(&b.iid)));
    if let Some(t) = req.score_threshold {
        scored.retain(|s| s.score >= t);
    }
    let names: Vec<&String> = resolve_names(c, req);
    let hit = |s: &Scored| Hit {
        id: s.meta.id.clone(),
        score: s.score,
        attribute_scores: names
            .iter()
            .zip(&s.per_attribute)
            .map(|(n, v)| ((*n).clone(), *v))
            .collect::<BTreeMap<_, _>>(),
        payload: req.with_payload.then(|| s.meta.payload.to_map()),
    };
    match &req.group_by {
        None => SearchResults::Hits(scored.iter().take(req.k).map(hit).collect()),
        Some(g) => {
            let keyed = scored
                .iter()
                .filter_map(|s| {
                    filter::field(&s.meta.payload, &g.field).map(|k| (k.clone(), hit(s)))
                })
                .collect();
            SearchResults::Groups(
                group_hits(keyed, req.k, g.group_size)
                    .into_iter()
                    .map(|(key, hits)| HitGroup { key, hits })
                    .collect(),
            )
        }
    }
}

/// Attribute names of the query's parts, in part order (resolution already validated them).
fn resolve_names<'a>(c: &'a Catalogue, req: &SearchRequest) -> Vec<&'a String> {
    let names: Vec<&str> = match &req.query {
        Query::Vector { attribute, .. } => vec![attribute.as_str()],
        Query::Weighted(ws) => ws.iter().map(|w| w.attribute.as_str()).collect(),
        Query::Item { attributes, .. } | Query::Recommend { attributes, .. } => {
            attributes.iter().map(|w| w.attribute.as_str()).collect()
        }
    };
    names
        .into_iter()
        .filter_map(|n| c.schema.attribute_index(n).map(|a| &c.schema.attributes[a]))
        .collect()
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

/// An item's internal id and vectors, for queries by stored item.
fn stored(c: &Catalogue, id: &ItemId) -> Result<(u64, VectorRecord)> {
    let key = records::item_key(id.as_str());
    let not_found = || IndexError::ItemNotFound {
        catalogue: c.name.clone(),
        id: id.to_string(),
    };
    let bytes = c.tree.get(&key)?.ok_or_else(not_found)?;
    let rec = ItemRecord::decode(&key, &bytes)?;
    let vbytes = c
        .tree
        .get(records::vector_key(rec.iid))?
        .ok_or_else(not_found)?;
    Ok((
        rec.iid,
        VectorRecord::decode(rec.iid, &vbytes, c.schema.dimension)?,
    ))
}

fn weights_of(ws: &[AttributeWeight]) -> impl Iterator<Item = (&str, f32)> {
    ws.iter().map(|w| (w.attribute.as_str(), w.weight))
}

fn resolve(c: &Catalogue, q: &Query) -> Result<Plan> {
    let dim = c.schema.dimension;
    let mut exclude = HashSet::new();
    let parts = match q {
        Query::Vector { attribute, vector } => {
            let a = attribute_index(c, attribute)?;
            vec![Part {
                attribute: a,
                vector: normalized(attribute, vector, dim)?,
                weight: 1.0,
            }]
        }
        Query::Weighted(ws) => {
            let idx = check_weights(c, ws.iter().map(|w| (w.attribute.as_str(), w.weight)))?;
            idx.into_iter()
                .zip(ws)
                .map(|((a, weight), w)| {
                    Ok(Part {
                        attribute: a,
                        vector: normalized(&w.attribute, &w.vector, dim)?,
                        weight,
                    })
                })
                .collect::<Result<_>>()?
        }
        Query::Item { id, attributes } => {
            let idx = check_weights(c, weights_of(attributes))?;
            let (iid, rec) = stored(c, id)?;
            exclude.insert(iid);
            idx.into_iter()
                .map(|(a, weight)| {
                    let v = rec
                        .get(a, dim)
                        .ok_or_else(|| IndexError::MissingAttribute {
                            id: id.to_string(),
                            attribute: c.schema.attributes[a].clone(),
                        })?;
                    Ok(Part {
                        attribute: a,
                        vector: v.to_vec(),
                        weight,
                    })
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
            let mut load = |ids: &[ItemId]| -> Result<Vec<(ItemId, VectorRecord)>> {
                ids.iter()
                    .map(|id| {
                        stored(c, id).map(|(iid, r)| {
                            exclude.insert(iid);
                            (id.clone(), r)
                        })
                    })
                    .collect()
            };
            let pos = load(positive)?;
            let neg = load(negative)?;
            idx.into_iter()
                .map(|(a, weight)| {
                    let p: Vec<&[f32]> = pos.iter().filter_map(|(_, r)| r.get(a, dim)).collect();
                    let n: Vec<&[f32]> = neg.iter().filter_map(|(_, r)| r.get(a, dim)).collect();
                    if p.is_empty() {
                        return Err(IndexError::MissingAttribute {
                            id: positive[0].to_string(),
                            attribute: c.schema.attributes[a].clone(),
                        });
                    }
                    let vector = average_vector(&p, &n).ok_or_else(|| {
                        invalid(format!(
                            "positives and negatives cancel out on attribute {:?}",
                            c.schema.attributes[a]
                        ))
                    })?;
                    Ok(Part {
                        attribute: a,
                        vector,
                        weight,
                    })
                })
                .collect::<Result<_>>()?
        }
    };
    Ok(Plan { parts, exclude })
}
