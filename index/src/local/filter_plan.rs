//! Filter planning: the live ids passing a filter, from the payload index where the filter (or
//! enough of it) is indexable, with the rest of it evaluated on those ids' payloads only.
//!
//! Every filter node the index can answer becomes an exact [`IdSet`]; in an `and`, the
//! cheapest conjuncts (by the index's counts) are answered by the index and intersected, and
//! conjuncts that are not indexable, or that would match far more items than the set so far,
//! are evaluated on the payloads of the set's ids. A filter with no indexable part yields
//! `None`: the caller evaluates it on every payload, as before the index.

use super::payload_index::{Bounds, PayloadIndex, Unindexed};
use super::LiveSet;
use crate::filter;
use crate::types::Filter;

/// A conjunct counted at more than this many times the set so far is evaluated on the set's
/// payloads instead of collected from the index and intersected.
const MATERIALIZE_RATIO: usize = 32;

/// Live ids, in one of two exact forms. Both vectors are ascending and distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdSet {
    /// Exactly these ids.
    Only(Vec<u64>),
    /// Every live id but these (which are live).
    AllBut(Vec<u64>),
}

impl IdSet {
    /// Ids held, given the live set's size.
    pub(crate) fn len(&self, live: usize) -> usize {
        match self {
            IdSet::Only(ids) => ids.len(),
            IdSet::AllBut(ids) => live.saturating_sub(ids.len()),
        }
    }

    /// Whether a live id is held.
    pub(crate) fn contains(&self, iid: u64) -> bool {
        match self {
            IdSet::Only(ids) => ids.binary_search(&iid).is_ok(),
            IdSet::AllBut(ids) => ids.binary_search(&iid).is_err(),
        }
    }

    /// The ids held, ascending (O(live items) for [`IdSet::AllBut`]).
    pub(crate) fn into_ids(self, live: &LiveSet) -> Vec<u64> {
        match self {
            IdSet::Only(ids) => ids,
            IdSet::AllBut(except) => {
                let mut ids: Vec<u64> = live
                    .items
                    .keys()
                    .filter(|iid| except.binary_search(iid).is_err())
                    .copied()
                    .collect();
                ids.sort_unstable();
                ids
            }
        }
    }

    /// The set without `exclude` (ids a query by example leaves out).
    pub(crate) fn without(self, exclude: &std::collections::HashSet<u64>, live: &LiveSet) -> IdSet {
        if exclude.is_empty() {
            return self;
        }
        match self {
            IdSet::Only(mut ids) => {
                ids.retain(|iid| !exclude.contains(iid));
                IdSet::Only(ids)
            }
            IdSet::AllBut(except) => {
                let mut more: Vec<u64> = exclude
                    .iter()
                    .filter(|iid| live.items.contains_key(iid))
                    .copied()
                    .collect();
                more.sort_unstable();
                IdSet::AllBut(union(&except, &more))
            }
        }
    }

    fn not(self) -> IdSet {
        match self {
            IdSet::Only(ids) => IdSet::AllBut(ids),
            IdSet::AllBut(ids) => IdSet::Only(ids),
        }
    }

    fn and(self, other: IdSet) -> IdSet {
        match (self, other) {
            (IdSet::Only(a), IdSet::Only(b)) => IdSet::Only(intersection(&a, &b)),
            (IdSet::Only(a), IdSet::AllBut(b)) | (IdSet::AllBut(b), IdSet::Only(a)) => {
                IdSet::Only(difference(&a, &b))
            }
            (IdSet::AllBut(a), IdSet::AllBut(b)) => IdSet::AllBut(union(&a, &b)),
        }
    }

    fn or(self, other: IdSet) -> IdSet {
        self.not().and(other.not()).not()
    }
}

/// The live ids passing `f` (validated), or `None` when no part of it is indexable.
pub(crate) fn candidates(live: &LiveSet, f: &Filter) -> Option<IdSet> {
    ids(live, f).ok()
}

/// For a single `match`, `in` or `range`, the index's count: at least the number of live ids
/// passing it (an item counts once per matching array element, and strict range bounds count
/// as inclusive). `None` for any other filter or one the index cannot answer.
pub(crate) fn leaf_count(live: &LiveSet, f: &Filter) -> Option<usize> {
    match f {
        Filter::Match { .. } | Filter::In { .. } | Filter::Range { .. } => {
            count(&live.payloads, live.items.len(), f).ok()
        }
        Filter::And(_) | Filter::Or(_) | Filter::Not(_) => None,
    }
}

fn ids(live: &LiveSet, f: &Filter) -> Result<IdSet, Unindexed> {
    let index = &live.payloads;
    match f {
        Filter::Match { field, value } => index.ids_eq(field, value).map(IdSet::Only),
        Filter::In { field, values } => {
            let mut all = Vec::new();
            for v in values {
                all.extend(index.ids_eq(field, v)?);
            }
            all.sort_unstable();
            all.dedup();
            Ok(IdSet::Only(all))
        }
        Filter::Range {
            field,
            gt,
            gte,
            lt,
            lte,
        } => {
            let b = Bounds {
                gt: *gt,
                gte: *gte,
                lt: *lt,
                lte: *lte,
            };
            index.ids_in_range(field, &b).map(IdSet::Only)
        }
        Filter::Not(g) => ids(live, g).map(IdSet::not),
        Filter::Or(gs) => gs
            .iter()
            .try_fold(IdSet::Only(Vec::new()), |acc, g| Ok(acc.or(ids(live, g)?))),
        Filter::And(gs) => conjunction(live, gs),
    }
}

/// An `and`: indexable conjuncts from the smallest count up, intersected while each is not much
/// larger than the set so far; the other conjuncts evaluated on the set's payloads.
fn conjunction(live: &LiveSet, gs: &[Filter]) -> Result<IdSet, Unindexed> {
    let total = live.items.len();
    let mut counted: Vec<(usize, &Filter)> = Vec::new();
    let mut rest: Vec<&Filter> = Vec::new();
    for g in gs {
        match count(&live.payloads, total, g) {
            Ok(n) => counted.push((n, g)),
            Err(Unindexed) => rest.push(g),
        }
    }
    counted.sort_by_key(|(n, _)| *n);
    let mut set = IdSet::AllBut(Vec::new());
    for (n, g) in counted {
        if set.len(total) == 0 {
            // Nothing left to narrow: the other conjuncts cannot add an id.
            return Ok(IdSet::Only(Vec::new()));
        }
        if n <= set.len(total).saturating_mul(MATERIALIZE_RATIO) {
            set = set.and(ids(live, g)?);
        } else {
            rest.push(g);
        }
    }
    if rest.is_empty() || set.len(total) == 0 {
        return Ok(set);
    }
    match set {
        IdSet::Only(mut v) => {
            v.retain(|iid| {
                live.items
                    .get(iid)
                    .is_some_and(|m| rest.iter().all(|g| filter::matches(g, &m.payload)))
            });
            Ok(IdSet::Only(v))
        }
        // Evaluating the rest on nearly every payload is the unindexed path's work.
        IdSet::AllBut(_) => Err(Unindexed),
    }
}

/// About how many ids `f` passes, from the index's counts alone (no id collected).
fn count(index: &PayloadIndex, total: usize, f: &Filter) -> Result<usize, Unindexed> {
    match f {
        Filter::Match { field, value } => index.count_eq(field, value),
        Filter::In { field, values } => values.iter().try_fold(0usize, |n, v| {
            Ok(n.saturating_add(index.count_eq(field, v)?))
        }),
        Filter::Range {
            field,
            gt,
            gte,
            lt,
            lte,
        } => index.count_in_range(
            field,
            &Bounds {
                gt: *gt,
                gte: *gte,
                lt: *lt,
                lte: *lte,
            },
        ),
        Filter::Not(g) => count(index, total, g).map(|n| total.saturating_sub(n).max(1)),
        Filter::Or(gs) => gs.iter().try_fold(0usize, |n, g| {
            Ok(n.saturating_add(count(index, total, g)?).min(total))
        }),
        Filter::And(gs) => {
            let counts: Vec<usize> = gs
                .iter()
                .filter_map(|g| count(index, total, g).ok())
                .collect();
            if counts.is_empty() && !gs.is_empty() {
                return Err(Unindexed);
            }
            Ok(counts.into_iter().min().unwrap_or(total))
        }
    }
}

fn intersection(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    small
        .iter()
        .filter(|x| large.binary_search(x).is_ok())
        .copied()
        .collect()
}

fn difference(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter()
        .filter(|x| b.binary_search(x).is_err())
        .copied()
        .collect()
}

fn union(a: &[u64], b: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;
    use crate::types::{ItemId, MatchValue, Payload};

    fn insert(live: &mut LiveSet, iid: u64, payload: &Payload) {
        live.insert(iid, ItemId::new("x").unwrap(), 1, payload);
    }

    fn live_of(payloads: &[Value]) -> LiveSet {
        let mut live = LiveSet::new(1);
        for (iid, p) in payloads.iter().enumerate() {
            insert(&mut live, iid as u64, p.as_object().unwrap());
        }
        live
    }

    fn f(v: Value) -> Filter {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_not_is_every_other_live_id() {
        let live = live_of(&[json!({"b": "x"}), json!({"b": "y"}), json!({})]);
        let set = candidates(
            &live,
            &f(json!({"not": {"match": {"field": "b", "value": "x"}}})),
        );
        assert_eq!(set, Some(IdSet::AllBut(vec![0])));
        assert_eq!(set.unwrap().into_ids(&live), vec![1, 2]);
    }

    #[test]
    fn an_unindexable_conjunct_is_evaluated_on_the_candidates() {
        let long = "y".repeat(super::super::payload_index::MAX_KEYWORD_BYTES + 1);
        let live = live_of(&[
            json!({"b": "x", "t": long.clone()}),
            json!({"b": "x", "t": "short"}),
            json!({"b": "z", "t": long.clone()}),
        ]);
        let filter = f(json!({"and": [
            {"match": {"field": "b", "value": "x"}},
            {"match": {"field": "t", "value": long}}
        ]}));
        assert_eq!(candidates(&live, &filter), Some(IdSet::Only(vec![0])));
    }

    #[test]
    fn a_filter_with_no_indexable_part_has_no_plan() {
        let long = "y".repeat(super::super::payload_index::MAX_KEYWORD_BYTES + 1);
        let live = live_of(&[json!({"t": long.clone()})]);
        let filter = f(json!({"or": [
            {"match": {"field": "t", "value": long}},
            {"match": {"field": "b", "value": "x"}}
        ]}));
        assert_eq!(candidates(&live, &filter), None);
    }

    #[test]
    fn a_large_conjunct_is_checked_on_the_payloads_of_a_small_one() {
        let payloads: Vec<Value> = (0..200)
            .map(|i| json!({"rare": i == 7, "common": i != 3}))
            .collect();
        let live = live_of(&payloads);
        let filter = f(json!({"and": [
            {"match": {"field": "common", "value": true}},
            {"match": {"field": "rare", "value": true}}
        ]}));
        assert_eq!(candidates(&live, &filter), Some(IdSet::Only(vec![7])));
    }

    #[test]
    fn excluded_ids_leave_both_forms() {
        let live = live_of(&[json!({"b": 1}), json!({"b": 1}), json!({"b": 2})]);
        let exclude = [1u64].into_iter().collect();
        let only = IdSet::Only(vec![0, 1]).without(&exclude, &live);
        assert_eq!(only, IdSet::Only(vec![0]));
        let all_but = IdSet::AllBut(vec![2]).without(&exclude, &live);
        assert_eq!(all_but.len(3), 1);
    }

    // Random payloads, writes and filters: the planned set equals the filter evaluated on
    // every live payload.

    fn scalar() -> impl Strategy<Value = Value> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| json!(s)),
            (-3i64..4).prop_map(|i| json!(i)),
            prop::sample::select(vec![-1.5f64, -0.0, 0.5, 1.0, 2.5]).prop_map(|x| json!(x)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(Value::Null),
        ]
    }

    fn field_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            4 => scalar(),
            2 => prop::collection::vec(scalar(), 0..4).prop_map(Value::Array),
            1 => scalar().prop_map(|v| json!({"size": v})),
        ]
    }

    fn payload() -> impl Strategy<Value = Payload> {
        prop::collection::btree_map(
            prop::sample::select(vec!["brand", "price", "tags", "meta"]),
            field_value(),
            0..4,
        )
        .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    fn match_value() -> impl Strategy<Value = MatchValue> {
        prop_oneof![
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| MatchValue::Keyword(s.into())),
            (-3i64..4).prop_map(MatchValue::Integer),
            any::<bool>().prop_map(MatchValue::Bool),
        ]
    }

    fn bound() -> impl Strategy<Value = Option<f64>> {
        prop::option::of(prop::sample::select(vec![-2.0, -0.0, 0.5, 1.0, 2.0, 3.0]))
    }

    fn leaf_filter() -> impl Strategy<Value = Filter> {
        let field =
            prop::sample::select(vec!["brand", "price", "tags", "meta.size", "meta", "none"])
                .prop_map(String::from);
        prop_oneof![
            (field.clone(), match_value())
                .prop_map(|(field, value)| Filter::Match { field, value }),
            (field.clone(), prop::collection::vec(match_value(), 0..3))
                .prop_map(|(field, values)| Filter::In { field, values }),
            (field, bound(), bound(), bound(), bound())
                .prop_filter("a range needs a bound", |(_, a, b, c, d)| {
                    a.is_some() || b.is_some() || c.is_some() || d.is_some()
                })
                .prop_map(|(field, gt, gte, lt, lte)| Filter::Range {
                    field,
                    gt,
                    gte,
                    lt,
                    lte
                }),
        ]
    }

    fn any_filter() -> impl Strategy<Value = Filter> {
        leaf_filter().prop_recursive(3, 16, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::And),
                prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::Or),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        })
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Upsert item `key` (a new internal id; the old one removed, as the store does).
        Upsert(u8, Payload),
        Delete(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u8..40, payload()).prop_map(|(k, p)| Op::Upsert(k, p)),
            1 => (0u8..40).prop_map(Op::Delete),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn planned_ids_equal_brute_force(
            ops in prop::collection::vec(op(), 1..120),
            filters in prop::collection::vec(any_filter(), 1..8),
        ) {
            let mut live = LiveSet::new(1);
            let mut by_key: BTreeMap<u8, u64> = BTreeMap::new();
            let mut next_iid = 0u64;
            for op in ops {
                match op {
                    Op::Upsert(k, p) => {
                        if let Some(old) = by_key.insert(k, next_iid) {
                            live.remove(old);
                        }
                        insert(&mut live, next_iid, &p);
                        next_iid += 1;
                    }
                    Op::Delete(k) => {
                        if let Some(old) = by_key.remove(&k) {
                            live.remove(old);
                        }
                    }
                }
            }
            for filter in &filters {
                let mut expected: Vec<u64> = live
                    .items
                    .iter()
                    .filter(|(_, m)| filter::matches(filter, &m.payload))
                    .map(|(iid, _)| *iid)
                    .collect();
                expected.sort_unstable();
                if let Some(n) = leaf_count(&live, filter) {
                    prop_assert!(n >= expected.len(), "{:?} counted {} < {}", filter, n, expected.len());
                }
                let Some(set) = candidates(&live, filter) else {
                    prop_assert!(has_and(filter), "only an and can fall back: {:?}", filter);
                    continue;
                };
                prop_assert_eq!(set.len(live.items.len()), expected.len(), "{:?}", filter);
                prop_assert_eq!(set.into_ids(&live), expected, "{:?}", filter);
            }
        }
    }

    fn has_and(f: &Filter) -> bool {
        match f {
            Filter::And(_) => true,
            Filter::Or(gs) => gs.iter().any(has_and),
            Filter::Not(g) => has_and(g),
            _ => false,
        }
    }
}
