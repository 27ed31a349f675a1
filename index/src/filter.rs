//! Evaluation of payload [`Filter`]s.

use serde_json::Value;

use crate::error::{IndexError, Result};
use crate::types::{Filter, MatchValue, Payload};

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

/// Looks up a dotted path in a payload.
pub(crate) fn field<'a>(payload: &'a Payload, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = payload.get(parts.next()?)?;
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
pub(crate) fn matches(filter: &Filter, payload: &Payload) -> bool {
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
}
