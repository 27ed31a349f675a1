//! Evaluation of payload [`Filter`]s.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::error::{IndexError, Result};
use crate::types::{FieldValue, FieldValues, Filter, MatchValue, Payload, MAX_FIELD_VALUES};

/// Deepest nesting of and/or/not accepted.
const MAX_FILTER_DEPTH: usize = 32;
/// Most conditions in one filter.
const MAX_FILTER_NODES: usize = 1024;

/// Checks a filter's shape before use: fields named, ranges bounded by finite numbers,
/// bounded size and depth.
pub(crate) fn validate(filter: &Filter) -> Result<()> {
    let mut nodes = 0;
    validate_node(filter, 0, &mut nodes)
}

fn validate_node(f: &Filter, depth: usize, nodes: &mut usize) -> Result<()> {
    let bad = |reason: String| Err(IndexError::InvalidFilter { reason });
    *nodes += 1;
    if depth > MAX_FILTER_DEPTH {
        return bad(format!("nesting deeper than {MAX_FILTER_DEPTH}"));
    }
    if *nodes > MAX_FILTER_NODES {
        return bad(format!("more than {MAX_FILTER_NODES} conditions"));
    }
    match f {
        Filter::Match { field, .. } | Filter::In { field, .. } if field.is_empty() => {
            bad("empty field name".into())
        }
        Filter::Match { .. } | Filter::In { .. } => Ok(()),
        Filter::Range {
            field,
            gt,
            gte,
            lt,
            lte,
        } => {
            if field.is_empty() {
                return bad("empty field name".into());
            }
            let bounds = [gt, gte, lt, lte];
            if bounds.iter().all(|b| b.is_none()) {
                return bad(format!("range on {field:?} has no bound"));
            }
            if bounds.iter().any(|b| b.is_some_and(|x| !x.is_finite())) {
                return bad(format!("range on {field:?} has a non-finite bound"));
            }
            Ok(())
        }
        Filter::And(fs) | Filter::Or(fs) => fs
            .iter()
            .try_for_each(|f| validate_node(f, depth + 1, nodes)),
        Filter::Not(f) => validate_node(f, depth + 1, nodes),
    }
}

/// A payload's top-level fields, read the same way whether it is held as a map (a request, a
/// Milvus row) or in the local live set's compact form.
pub(crate) trait Fields {
    /// The value of top-level field `key`.
    fn top(&self, key: &str) -> Option<&Value>;
    /// Calls `f` on every top-level field.
    fn for_each_top(&self, f: &mut dyn FnMut(&str, &Value));
}

impl Fields for Payload {
    fn top(&self, key: &str) -> Option<&Value> {
        self.get(key)
    }

    fn for_each_top(&self, f: &mut dyn FnMut(&str, &Value)) {
        for (k, v) in self {
            f(k, v);
        }
    }
}

/// Looks up a dotted path in a payload.
pub(crate) fn field<'a, P: Fields + ?Sized>(payload: &'a P, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = payload.top(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

fn value_matches(v: &Value, want: &MatchValue) -> bool {
    match (v, want) {
        (Value::Array(items), _) => items.iter().any(|i| scalar_matches(i, want)),
        _ => scalar_matches(v, want),
    }
}

fn scalar_matches(v: &Value, want: &MatchValue) -> bool {
    match (v, want) {
        (Value::String(s), MatchValue::Keyword(w)) => s == w,
        (Value::Bool(b), MatchValue::Bool(w)) => b == w,
        (Value::Number(n), MatchValue::Integer(w)) => n.as_i64() == Some(*w),
        _ => false,
    }
}

/// Whether a payload passes a (validated) filter.
pub(crate) fn matches<P: Fields + ?Sized>(filter: &Filter, payload: &P) -> bool {
    match filter {
        Filter::Match { field: f, value } => {
            field(payload, f).is_some_and(|v| value_matches(v, value))
        }
        Filter::In { field: f, values } => {
            field(payload, f).is_some_and(|v| values.iter().any(|w| value_matches(v, w)))
        }
        Filter::Range {
            field: f,
            gt,
            gte,
            lt,
            lte,
        } => {
            let in_range = |x: f64| {
                gt.is_none_or(|b| x > b)
                    && gte.is_none_or(|b| x >= b)
                    && lt.is_none_or(|b| x < b)
                    && lte.is_none_or(|b| x <= b)
            };
            match field(payload, f) {
                Some(Value::Number(n)) => n.as_f64().is_some_and(in_range),
                Some(Value::Array(items)) => items.iter().any(|i| i.as_f64().is_some_and(in_range)),
                _ => false,
            }
        }
        Filter::And(fs) => fs.iter().all(|f| matches(f, payload)),
        Filter::Or(fs) => fs.iter().any(|f| matches(f, payload)),
        Filter::Not(f) => !matches(f, payload),
    }
}

/// Checks a `field_values` request: a field named, `limit` in 1..=[`MAX_FIELD_VALUES`].
pub(crate) fn check_field_values(field: &str, limit: usize) -> Result<()> {
    if field.is_empty() {
        return Err(IndexError::InvalidRequest {
            reason: "field_values: empty field name".into(),
        });
    }
    if limit == 0 || limit > MAX_FIELD_VALUES {
        return Err(IndexError::InvalidRequest {
            reason: format!("field_values limit {limit} is outside 1..={MAX_FIELD_VALUES}"),
        });
    }
    Ok(())
}

/// A value a [`Filter::Match`] can select, or `None`.
fn match_value(v: &Value) -> Option<MatchValue> {
    match v {
        Value::String(s) => Some(MatchValue::Keyword(s.clone())),
        Value::Bool(b) => Some(MatchValue::Bool(*b)),
        Value::Number(n) => n.as_i64().map(MatchValue::Integer),
        _ => None,
    }
}

/// Sort key of a value among equal counts: booleans, integers, keywords.
fn value_order(v: &MatchValue) -> (u8, bool, i64, &str) {
    match v {
        MatchValue::Bool(b) => (0, *b, 0, ""),
        MatchValue::Integer(i) => (1, false, *i, ""),
        MatchValue::Keyword(s) => (2, false, 0, s.as_str()),
    }
}

/// Counts the distinct values of a payload field, one payload at a time: the one tally behind
/// every [`crate::CatalogueStore::field_values`] (the caller checks the request first).
pub(crate) struct FieldTally<'f> {
    field: &'f str,
    counts: HashMap<MatchValue, u64>,
    items: u64,
}

impl<'f> FieldTally<'f> {
    pub(crate) fn new(field: &'f str) -> Self {
        FieldTally {
            field,
            counts: HashMap::new(),
            items: 0,
        }
    }

    /// Counts one live item's payload.
    pub(crate) fn add<P: Fields + ?Sized>(&mut self, payload: &P) {
        let Some(v) = field(payload, self.field) else {
            return;
        };
        let distinct: HashSet<MatchValue> = match v {
            Value::Array(list) => list.iter().filter_map(match_value).collect(),
            _ => match_value(v).into_iter().collect(),
        };
        if distinct.is_empty() {
            return;
        }
        self.items += 1;
        for value in distinct {
            *self.counts.entry(value).or_default() += 1;
        }
    }

    /// The `limit` most frequent values, ties by value.
    pub(crate) fn finish(self, limit: usize) -> FieldValues {
        let mut values: Vec<FieldValue> = self
            .counts
            .into_iter()
            .map(|(value, count)| FieldValue { value, count })
            .collect();
        values.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| value_order(&a.value).cmp(&value_order(&b.value)))
        });
        let truncated = values.len() > limit;
        values.truncate(limit);
        FieldValues {
            field: self.field.to_string(),
            values,
            items: self.items,
            truncated,
        }
    }
}

/// [`FieldTally`] over a collection of payloads.
pub(crate) fn tally_field_values<'a, P: Fields + 'a>(
    payloads: impl IntoIterator<Item = &'a P>,
    field_path: &str,
    limit: usize,
) -> FieldValues {
    let mut tally = FieldTally::new(field_path);
    for p in payloads {
        tally.add(p);
    }
    tally.finish(limit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Payload {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn keyword_range_bool_and_nesting() {
        let p = payload(json!({"brand": "acme", "price": 12.5, "sale": true,
                               "tags": ["red", "wool"], "product": {"id": 7}}));
        let m = |f: &str| -> Filter { serde_json::from_str(f).unwrap() };
        assert!(matches(
            &m(r#"{"match":{"field":"brand","value":"acme"}}"#),
            &p
        ));
        assert!(!matches(
            &m(r#"{"match":{"field":"brand","value":"other"}}"#),
            &p
        ));
        assert!(matches(
            &m(r#"{"match":{"field":"tags","value":"wool"}}"#),
            &p
        ));
        assert!(matches(
            &m(r#"{"match":{"field":"product.id","value":7}}"#),
            &p
        ));
        assert!(matches(
            &m(r#"{"match":{"field":"sale","value":true}}"#),
            &p
        ));
        assert!(matches(
            &m(r#"{"in":{"field":"brand","values":["x","acme"]}}"#),
            &p
        ));
        assert!(matches(
            &m(r#"{"range":{"field":"price","gte":12.5,"lt":13}}"#),
            &p
        ));
        assert!(!matches(&m(r#"{"range":{"field":"price","gt":12.5}}"#), &p));
        assert!(!matches(&m(r#"{"range":{"field":"missing","gt":0}}"#), &p));
        assert!(matches(
            &m(r#"{"not":{"match":{"field":"missing","value":1}}}"#),
            &p
        ));
        assert!(matches(&m(r#"{"and":[]}"#), &p));
        assert!(!matches(&m(r#"{"or":[]}"#), &p));
    }

    #[test]
    fn malformed_filters_are_rejected() {
        let no_bound = Filter::Range {
            field: "x".into(),
            gt: None,
            gte: None,
            lt: None,
            lte: None,
        };
        assert!(validate(&no_bound).is_err());
        let nan = Filter::Range {
            field: "x".into(),
            gt: Some(f64::NAN),
            gte: None,
            lt: None,
            lte: None,
        };
        assert!(validate(&nan).is_err());
        let mut deep = Filter::And(vec![]);
        for _ in 0..40 {
            deep = Filter::Not(Box::new(deep));
        }
        assert!(validate(&deep).is_err());
    }

    #[test]
    fn field_values_count_items_and_order_by_count() {
        let payloads: Vec<Payload> = [
            json!({"colour": "Black", "tags": ["a", "b", "a"]}),
            json!({"colour": "Navy", "tags": "b"}),
            json!({"colour": "Black", "tags": [1.5, null]}),
            json!({"colour": 3}),
            json!({"colour": {"nested": true}}),
            json!({}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let colours = tally_field_values(&payloads, "colour", 10);
        assert_eq!(
            colours.items, 4,
            "objects and absent fields are not counted"
        );
        let got: Vec<(MatchValue, u64)> = colours
            .values
            .iter()
            .map(|v| (v.value.clone(), v.count))
            .collect();
        assert_eq!(
            got,
            vec![
                (MatchValue::Keyword("Black".into()), 2),
                (MatchValue::Integer(3), 1),
                (MatchValue::Keyword("Navy".into()), 1),
            ]
        );
        assert!(!colours.truncated);
        let tags = tally_field_values(&payloads, "tags", 1);
        assert_eq!(
            tags.items, 2,
            "an array of floats and nulls holds nothing countable"
        );
        assert_eq!(tags.values.len(), 1);
        assert_eq!(tags.values[0].value, MatchValue::Keyword("b".into()));
        assert_eq!(
            tags.values[0].count, 2,
            "a repeated element counts once per item"
        );
        assert!(tags.truncated);
        assert!(check_field_values("", 1).is_err());
        assert!(check_field_values("x", 0).is_err());
        assert!(check_field_values("x", MAX_FIELD_VALUES + 1).is_err());
    }
}
