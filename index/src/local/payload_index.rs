//! [`PayloadIndex`]: a catalogue's live payloads indexed by field, so that a filter's matching
//! ids are found without evaluating it on every payload.
//!
//! For every field path (dotted, as [`crate::Filter`] names them) it holds the sorted ids of the
//! items whose value, or one of whose array elements, is each keyword, integer or boolean, and a
//! sorted column of (number, id) for ranges. It is maintained by the live set on every insert and
//! removal, so upserts, updates (old payload removed first), deletes, opening and schema changes
//! all keep it exact; compaction changes no internal id and leaves it alone.
//!
//! Memory is bounded two ways: strings longer than [`MAX_KEYWORD_BYTES`] are not indexed (a
//! filter on such a keyword is not answered here), and at most [`MAX_FIELDS`] field paths are
//! indexed per catalogue (a filter on a path refused for that reason is not answered here
//! either).

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::sorted_blocks::SortedBlocks;
use crate::filter::Fields;
use crate::types::MatchValue;

/// Longest string value indexed, in bytes: longer ones are text, not keywords.
pub(crate) const MAX_KEYWORD_BYTES: usize = 256;
/// Most field paths indexed per catalogue.
pub(crate) const MAX_FIELDS: usize = 256;

/// A finite number ordered by value; `-0.0` is stored as `0.0` so ranges treat them alike.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Num(f64);

impl Num {
    pub(crate) fn new(x: f64) -> Self {
        Num(if x == 0.0 { 0.0 } else { x })
    }
}

impl Eq for Num {}

impl PartialOrd for Num {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Num {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Bounds of a range filter; absent bounds are open.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bounds {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

impl Bounds {
    fn contains(&self, x: f64) -> bool {
        self.gt.is_none_or(|b| x > b)
            && self.gte.is_none_or(|b| x >= b)
            && self.lt.is_none_or(|b| x < b)
            && self.lte.is_none_or(|b| x <= b)
    }

    /// Keys of the numeric column around the range: every entry in range lies in
    /// `start..end`, and only an entry at a strict lower bound with internal id `u64::MAX` lies
    /// there out of range ([`Bounds::contains`] drops it).
    fn keys(&self) -> ((Num, u64), (Num, u64)) {
        let start = [
            self.gt.map(|b| (Num::new(b), u64::MAX)),
            self.gte.map(|b| (Num::new(b), 0)),
        ]
        .into_iter()
        .flatten()
        .fold((Num::new(f64::NEG_INFINITY), 0), std::cmp::max);
        // An inclusive upper bound ends past every id at its value but u64::MAX, an id the
        // store never reaches (ids count writes from 0).
        let end = [
            self.lt.map(|b| (Num::new(b), 0)),
            self.lte.map(|b| (Num::new(b), u64::MAX)),
        ]
        .into_iter()
        .flatten()
        .fold((Num::new(f64::INFINITY), u64::MAX), std::cmp::min);
        (start, end)
    }
}

/// One field path's index.
#[derive(Debug, Default)]
struct FieldIndex {
    /// Keyword, integer and boolean values -> ids holding them.
    values: HashMap<MatchValue, SortedBlocks<u64>>,
    /// (number, id) for every numeric value or array element.
    numbers: SortedBlocks<(Num, u64)>,
}

impl FieldIndex {
    fn is_empty(&self) -> bool {
        self.values.is_empty() && self.numbers.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        let per_value = std::mem::size_of::<(MatchValue, SortedBlocks<u64>)>() + 8;
        let values: usize = self
            .values
            .iter()
            .map(|(v, ids)| {
                let key = match v {
                    MatchValue::Keyword(s) => s.capacity(),
                    _ => 0,
                };
                per_value + key + ids.heap_bytes()
            })
            .sum();
        values + self.numbers.heap_bytes()
    }
}

/// Ids by payload value, for every field path of a catalogue's live items.
#[derive(Debug, Default)]
pub(crate) struct PayloadIndex {
    fields: HashMap<String, FieldIndex>,
    /// A path was refused because [`MAX_FIELDS`] were indexed: from then on a path missing from
    /// `fields` may be held by some item, and new paths are never indexed (a path indexed later
    /// would miss the items that were refused).
    saturated: bool,
}

/// One scalar reached by a field path: a value of the path or an element of its array.
enum Leaf {
    Value(MatchValue),
    Number(f64),
    Both(MatchValue, f64),
    /// Matches nothing (null, object, nested array, long string).
    Skip,
}

impl PayloadIndex {
    /// Indexes a live item's payload.
    pub(crate) fn add(&mut self, iid: u64, payload: &impl Fields) {
        visit(payload, &mut String::new(), &mut |path, value| {
            let Some(field) = self.field_for_insert(path) else {
                return;
            };
            for_each_leaf(value, |leaf| match leaf {
                Leaf::Value(v) => {
                    field.values.entry(v).or_default().insert(iid);
                }
                Leaf::Number(x) => {
                    field.numbers.insert((Num::new(x), iid));
                }
                Leaf::Both(v, x) => {
                    field.values.entry(v).or_default().insert(iid);
                    field.numbers.insert((Num::new(x), iid));
                }
                Leaf::Skip => {}
            });
        });
    }

    /// Removes an item that was indexed with this payload.
    pub(crate) fn remove(&mut self, iid: u64, payload: &impl Fields) {
        visit(payload, &mut String::new(), &mut |path, value| {
            let Some(field) = self.fields.get_mut(path) else {
                return;
            };
            for_each_leaf(value, |leaf| match leaf {
                Leaf::Value(v) => remove_value(&mut field.values, &v, iid),
                Leaf::Number(x) => {
                    field.numbers.remove(&(Num::new(x), iid));
                }
                Leaf::Both(v, x) => {
                    remove_value(&mut field.values, &v, iid);
                    field.numbers.remove(&(Num::new(x), iid));
                }
                Leaf::Skip => {}
            });
            if field.is_empty() {
                self.fields.remove(path);
            }
        });
    }

    /// The field's index, created if the limit allows.
    fn field_for_insert(&mut self, path: &str) -> Option<&mut FieldIndex> {
        if !self.fields.contains_key(path) {
            if self.saturated || self.fields.len() >= MAX_FIELDS {
                self.saturated = true;
                return None;
            }
            self.fields.insert(path.to_string(), FieldIndex::default());
        }
        self.fields.get_mut(path)
    }

    fn field(&self, path: &str) -> Result<Option<&FieldIndex>, Unindexed> {
        match self.fields.get(path) {
            Some(f) => Ok(Some(f)),
            None if self.saturated => Err(Unindexed),
            None => Ok(None),
        }
    }

    /// Whether `value` can be answered: long keywords are not indexed.
    fn indexable(value: &MatchValue) -> bool {
        !matches!(value, MatchValue::Keyword(s) if s.len() > MAX_KEYWORD_BYTES)
    }

    /// Ids whose field holds `value`, ascending; `Err` when the index cannot tell.
    pub(crate) fn ids_eq(&self, path: &str, value: &MatchValue) -> Result<Vec<u64>, Unindexed> {
        if !Self::indexable(value) {
            return Err(Unindexed);
        }
        Ok(self
            .field(path)?
            .and_then(|f| f.values.get(value))
            .map_or_else(Vec::new, |ids| ids.iter().copied().collect()))
    }

    /// How many ids [`PayloadIndex::ids_eq`] would return, without collecting them.
    pub(crate) fn count_eq(&self, path: &str, value: &MatchValue) -> Result<usize, Unindexed> {
        if !Self::indexable(value) {
            return Err(Unindexed);
        }
        Ok(self
            .field(path)?
            .and_then(|f| f.values.get(value))
            .map_or(0, SortedBlocks::len))
    }

    /// Ids with a number (or array element) in range, ascending and distinct.
    pub(crate) fn ids_in_range(&self, path: &str, b: &Bounds) -> Result<Vec<u64>, Unindexed> {
        let Some(f) = self.field(path)? else {
            return Ok(Vec::new());
        };
        let (start, end) = b.keys();
        let mut ids: Vec<u64> = f
            .numbers
            .iter_from(&start)
            .take_while(|e| **e < end)
            .filter(|(x, _)| b.contains(x.0))
            .map(|(_, iid)| *iid)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// About how many ids [`PayloadIndex::ids_in_range`] would return, from the numeric
    /// column's block lengths: at least that many, more when an item has several numbers in
    /// range (it counts once per number).
    pub(crate) fn count_in_range(&self, path: &str, b: &Bounds) -> Result<usize, Unindexed> {
        let Some(f) = self.field(path)? else {
            return Ok(0);
        };
        let (start, end) = b.keys();
        Ok(f.numbers.count_between(&start, &end))
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.fields
            .iter()
            .map(|(k, f)| k.capacity() + f.heap_bytes())
            .sum()
    }
}

/// The index cannot answer for this field or value (see the module's limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unindexed;

fn remove_value(values: &mut HashMap<MatchValue, SortedBlocks<u64>>, v: &MatchValue, iid: u64) {
    if let Some(ids) = values.get_mut(v) {
        ids.remove(&iid);
        if ids.is_empty() {
            values.remove(v);
        }
    }
}

/// Calls `f` with every field path of a payload and the non-object value it reaches. Keys
/// containing a dot are skipped: a dotted filter path can never reach them.
fn visit(payload: &impl Fields, path: &mut String, f: &mut impl FnMut(&str, &Value)) {
    payload.for_each_top(&mut |key, value| visit_field(key, value, path, true, f));
}

/// [`visit`] below `path`, the path of a nested object.
fn visit_object(object: &Map<String, Value>, path: &mut String, f: &mut impl FnMut(&str, &Value)) {
    for (key, value) in object {
        visit_field(key, value, path, false, f);
    }
}

/// [`visit`] of one field `key` under `path` (`top`: `path` is the payload itself, so the key
/// takes no leading dot).
fn visit_field(
    key: &str,
    value: &Value,
    path: &mut String,
    top: bool,
    f: &mut impl FnMut(&str, &Value),
) {
    if key.contains('.') {
        return;
    }
    let len = path.len();
    if !top {
        path.push('.');
    }
    path.push_str(key);
    match value {
        Value::Object(inner) => visit_object(inner, path, f),
        _ => f(path, value),
    }
    path.truncate(len);
}

/// The scalars a filter can match in a field's value: the value itself, or each element of an
/// array (nested arrays and objects in an array match nothing, as in [`crate::filter`]).
fn for_each_leaf(value: &Value, mut f: impl FnMut(Leaf)) {
    match value {
        Value::Array(items) => items.iter().for_each(|i| f(leaf(i))),
        _ => f(leaf(value)),
    }
}

fn leaf(v: &Value) -> Leaf {
    match v {
        Value::String(s) if s.len() <= MAX_KEYWORD_BYTES => {
            Leaf::Value(MatchValue::Keyword(s.clone()))
        }
        Value::Bool(b) => Leaf::Value(MatchValue::Bool(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), Some(x)) => Leaf::Both(MatchValue::Integer(i), x),
            (None, Some(x)) => Leaf::Number(x),
            (Some(i), None) => Leaf::Value(MatchValue::Integer(i)),
            (None, None) => Leaf::Skip,
        },
        _ => Leaf::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn kw(s: &str) -> MatchValue {
        MatchValue::Keyword(s.into())
    }

    fn range(gt: Option<f64>, gte: Option<f64>, lt: Option<f64>, lte: Option<f64>) -> Bounds {
        Bounds { gt, gte, lt, lte }
    }

    #[test]
    fn removing_a_payload_removes_its_ids() {
        let mut idx = PayloadIndex::default();
        idx.add(1, &payload(json!({"brand": "acme"})));
        idx.add(2, &payload(json!({"brand": "acme"})));
        idx.remove(1, &payload(json!({"brand": "acme"})));
        assert_eq!(idx.ids_eq("brand", &kw("acme")), Ok(vec![2]));
        idx.remove(2, &payload(json!({"brand": "acme"})));
        assert!(idx.fields.is_empty(), "an emptied field is dropped");
    }

    #[test]
    fn array_elements_are_values_of_their_field() {
        let mut idx = PayloadIndex::default();
        idx.add(
            5,
            &payload(json!({"tags": ["red", "wool", "red", true, 3, [9], {"x": 1}]})),
        );
        assert_eq!(idx.ids_eq("tags", &kw("red")), Ok(vec![5]));
        assert_eq!(idx.ids_eq("tags", &MatchValue::Bool(true)), Ok(vec![5]));
        assert_eq!(idx.ids_eq("tags", &MatchValue::Integer(3)), Ok(vec![5]));
        assert_eq!(idx.ids_eq("tags", &MatchValue::Integer(9)), Ok(vec![]));
        assert_eq!(idx.ids_eq("tags.x", &MatchValue::Integer(1)), Ok(vec![]));
    }

    #[test]
    fn nested_objects_are_dotted_paths_and_dotted_keys_are_skipped() {
        let mut idx = PayloadIndex::default();
        idx.add(
            1,
            &payload(json!({"product": {"id": 7}, "a.b": 1, "": {"x": 2}})),
        );
        assert_eq!(
            idx.ids_eq("product.id", &MatchValue::Integer(7)),
            Ok(vec![1])
        );
        assert_eq!(idx.ids_eq("a.b", &MatchValue::Integer(1)), Ok(vec![]));
        assert_eq!(idx.ids_eq(".x", &MatchValue::Integer(2)), Ok(vec![1]));
        assert_eq!(idx.ids_eq("x", &MatchValue::Integer(2)), Ok(vec![]));
    }

    #[test]
    fn floats_match_ranges_but_not_integers() {
        let mut idx = PayloadIndex::default();
        idx.add(1, &payload(json!({"price": 7.0})));
        idx.add(2, &payload(json!({"price": 7})));
        assert_eq!(idx.ids_eq("price", &MatchValue::Integer(7)), Ok(vec![2]));
        let seven = range(None, Some(7.0), None, Some(7.0));
        assert_eq!(idx.ids_in_range("price", &seven), Ok(vec![1, 2]));
    }

    #[test]
    fn strict_bounds_exclude_their_value() {
        let mut idx = PayloadIndex::default();
        for (iid, price) in [(1, 1.0), (2, 2.0), (3, 3.0)] {
            idx.add(iid, &payload(json!({ "price": price })));
        }
        let open = range(Some(1.0), None, Some(3.0), None);
        assert_eq!(idx.ids_in_range("price", &open), Ok(vec![2]));
        let closed = range(None, Some(1.0), None, Some(3.0));
        assert_eq!(idx.ids_in_range("price", &closed), Ok(vec![1, 2, 3]));
        let mixed = range(Some(0.0), Some(2.0), None, None);
        assert_eq!(idx.ids_in_range("price", &mixed), Ok(vec![2, 3]));
    }

    #[test]
    fn negative_zero_is_zero() {
        let mut idx = PayloadIndex::default();
        idx.add(1, &payload(json!({ "x": -0.0 })));
        let from_zero = range(None, Some(0.0), None, None);
        assert_eq!(idx.ids_in_range("x", &from_zero), Ok(vec![1]));
    }

    #[test]
    fn an_item_with_several_numbers_in_range_is_returned_once() {
        let mut idx = PayloadIndex::default();
        idx.add(4, &payload(json!({ "sizes": [36, 38, 40] })));
        let all = range(None, Some(0.0), None, None);
        assert_eq!(idx.ids_in_range("sizes", &all), Ok(vec![4]));
        assert_eq!(idx.count_in_range("sizes", &all), Ok(3));
    }

    #[test]
    fn range_counts_leave_out_strict_bounds() {
        let mut idx = PayloadIndex::default();
        for (iid, price) in [(1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0)] {
            idx.add(iid, &payload(json!({ "price": price })));
        }
        let open = range(Some(1.0), None, Some(3.0), None);
        assert_eq!(idx.count_in_range("price", &open), Ok(1));
        let closed = range(None, Some(1.0), None, Some(3.0));
        assert_eq!(idx.count_in_range("price", &closed), Ok(4));
    }

    #[test]
    fn long_keywords_are_not_answered() {
        let mut idx = PayloadIndex::default();
        let long = "x".repeat(MAX_KEYWORD_BYTES + 1);
        idx.add(1, &payload(json!({ "text": long.clone() })));
        assert_eq!(idx.ids_eq("text", &kw(&long)), Err(Unindexed));
        assert_eq!(idx.ids_eq("text", &kw("x")), Ok(vec![]));
    }

    #[test]
    fn paths_past_the_field_limit_are_unknown_not_absent() {
        let mut idx = PayloadIndex::default();
        let wide: Map<String, Value> = (0..=MAX_FIELDS)
            .map(|i| (format!("f{i}"), json!(1)))
            .collect();
        idx.add(1, &wide);
        assert_eq!(idx.fields.len(), MAX_FIELDS);
        let refused = (0..=MAX_FIELDS)
            .map(|i| format!("f{i}"))
            .find(|f| !idx.fields.contains_key(f))
            .unwrap();
        assert_eq!(
            idx.ids_eq(&refused, &MatchValue::Integer(1)),
            Err(Unindexed)
        );
        assert_eq!(
            idx.ids_eq("never_seen", &MatchValue::Integer(1)),
            Err(Unindexed)
        );
    }

    #[test]
    fn unseen_paths_are_empty_before_the_limit() {
        let mut idx = PayloadIndex::default();
        idx.add(1, &payload(json!({ "a": 1 })));
        assert_eq!(idx.ids_eq("b", &MatchValue::Integer(1)), Ok(vec![]));
        assert_eq!(
            idx.ids_in_range("b", &range(None, Some(0.0), None, None)),
            Ok(vec![])
        );
    }

    #[test]
    fn heap_bytes_grow_with_items() {
        let mut idx = PayloadIndex::default();
        let before = idx.heap_bytes();
        for i in 0..1000u64 {
            idx.add(
                i,
                &payload(json!({ "brand": format!("b{}", i % 10), "price": i })),
            );
        }
        assert!(idx.heap_bytes() > before + 1000 * 16);
    }
}
