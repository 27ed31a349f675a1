//! Payload [`Filter`]s as Milvus boolean expressions over the `payload` JSON field.
//!
//! The expression is pushed down to narrow what Milvus returns; asen then applies the filter
//! itself to every returned payload (`filter::matches`), so results follow asen's semantics
//! exactly wherever the pushed-down expression keeps every match. It does for `match`, `in`
//! and `and`/`or` of them. A `not` is not pushed down (Milvus's three-valued logic drops items
//! lacking the field, asen keeps them); it is evaluated by asen alone. A `range` on a field
//! holding an array of numbers matches in asen but not in Milvus (see `docs/milvus.md`).
//!
//! Every value and every key goes through [`string`] or a number formatter: nothing in a
//! filter can change the expression's structure.

use std::fmt::Write as _;

use crate::types::{Filter, MatchValue};

/// A Milvus string literal: double-quoted; backslash, quote and control characters escaped.
pub(crate) fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `payload["a"]["b"]` for the dotted path `a.b`.
fn path(field: &str) -> String {
    let mut out = String::from("payload");
    for part in field.split('.') {
        out.push('[');
        out.push_str(&string(part));
        out.push(']');
    }
    out
}

fn value(v: &MatchValue) -> String {
    match v {
        MatchValue::Bool(b) => b.to_string(),
        MatchValue::Integer(i) => i.to_string(),
        MatchValue::Keyword(s) => string(s),
    }
}

fn number(x: f64) -> String {
    // `{:?}` keeps a decimal point or exponent, so Milvus reads a float.
    format!("{x:?}")
}

/// The expression to push down, or `None` when Milvus cannot narrow the search (no filter,
/// or only parts asen evaluates alone).
pub(crate) fn pushdown(f: &Filter) -> Option<String> {
    match f {
        Filter::Match { field, value: v } => {
            let (p, v) = (path(field), value(v));
            Some(format!("({p} == {v} or json_contains({p}, {v}))"))
        }
        Filter::In { values, .. } if values.is_empty() => None,
        Filter::In { field, values } => {
            let p = path(field);
            let parts: Vec<String> = values
                .iter()
                .map(|v| {
                    let v = value(v);
                    format!("{p} == {v} or json_contains({p}, {v})")
                })
                .collect();
            Some(format!("({})", parts.join(" or ")))
        }
        Filter::Range {
            field,
            gt,
            gte,
            lt,
            lte,
        } => {
            let p = path(field);
            let bounds: Vec<String> = [(gt, ">"), (gte, ">="), (lt, "<"), (lte, "<=")]
                .iter()
                .filter_map(|(b, op)| b.map(|b| format!("{p} {op} {}", number(b))))
                .collect();
            Some(format!("({})", bounds.join(" and ")))
        }
        Filter::And(fs) => {
            let parts: Vec<String> = fs.iter().filter_map(pushdown).collect();
            (!parts.is_empty()).then(|| format!("({})", parts.join(" and ")))
        }
        Filter::Or(fs) if fs.is_empty() => None,
        Filter::Or(fs) => {
            let parts: Option<Vec<String>> = fs.iter().map(pushdown).collect();
            parts.map(|p| format!("({})", p.join(" or ")))
        }
        Filter::Not(_) => None,
    }
}

/// `key in ["a", "b"]` with every key escaped.
pub(crate) fn key_in(field: &str, keys: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    let list: Vec<String> = keys.into_iter().map(|k| string(k.as_ref())).collect();
    format!("{field} in [{}]", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(field: &str, v: MatchValue) -> Filter {
        Filter::Match {
            field: field.into(),
            value: v,
        }
    }

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("plain"), "\"plain\"");
        assert_eq!(string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(string("x\ny\u{1}"), "\"x\\ny\\u0001\"");
        assert_eq!(string("ünï"), "\"ünï\"");
    }

    #[test]
    fn a_hostile_value_stays_one_literal() {
        let evil = r#"x" or payload["a"] == "y"#;
        let e = pushdown(&m("brand", MatchValue::Keyword(evil.into()))).unwrap();
        assert_eq!(
            e,
            r#"(payload["brand"] == "x\" or payload[\"a\"] == \"y" or json_contains(payload["brand"], "x\" or payload[\"a\"] == \"y"))"#
        );
        // Outside literals, only the structure asen wrote: every quote inside is escaped.
        let unescaped = e
            .char_indices()
            .filter(|(i, c)| *c == '"' && !e[..*i].ends_with('\\'))
            .count();
        assert_eq!(unescaped, 8, "four literals, two quotes each");
        let key = pushdown(&m(r#"a"]) or (1 == 1"#, MatchValue::Integer(1))).unwrap();
        assert!(
            key.starts_with(r#"(payload["a\"]) or (1 == 1"] == 1"#),
            "{key}"
        );
    }

    #[test]
    fn shapes() {
        assert_eq!(
            pushdown(&m("p.brand", MatchValue::Bool(true))).unwrap(),
            r#"(payload["p"]["brand"] == true or json_contains(payload["p"]["brand"], true))"#
        );
        let range = Filter::Range {
            field: "price".into(),
            gt: None,
            gte: Some(10.0),
            lt: Some(1e300),
            lte: None,
        };
        assert_eq!(
            pushdown(&range).unwrap(),
            r#"(payload["price"] >= 10.0 and payload["price"] < 1e300)"#
        );
        let not = Filter::Not(Box::new(m("a", MatchValue::Integer(1))));
        assert_eq!(pushdown(&not), None);
        let and = Filter::And(vec![not.clone(), m("b", MatchValue::Integer(2))]);
        assert_eq!(
            pushdown(&and).unwrap(),
            r#"((payload["b"] == 2 or json_contains(payload["b"], 2)))"#
        );
        assert_eq!(
            pushdown(&Filter::Or(vec![not, m("b", MatchValue::Integer(2))])),
            None
        );
        assert_eq!(key_in("id", ["a\"", "b"]), r#"id in ["a\"", "b"]"#);
    }
}
