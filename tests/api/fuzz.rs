//! Structured random requests over HTTP against the in-process server: search bodies (random
//! filters and fields, or a valid body's bytes overwritten) and mutated multipart upserts.
//! The server answers each with a 2xx or a 4xx in the error envelope: never a 5xx, never a
//! body outside the envelope. Each target runs through `asen_fuzz::fuzz`: its case count in
//! the normal test run (`PROPTEST_CASES` overrides it), or as many requests as fit in
//! `ASEN_FUZZ_SECONDS` (the CI fuzz step).

use asen_fuzz::fuzz;
use proptest::prelude::*;
use serde_json::{json, Value};

use crate::server::*;

/// JSON values shaped like the API's: scalars, field names of the payloads, nested
/// filters (`match`, `in`, `range`, `and`, `or`, `not`).
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(vec![
            "brand",
            "product",
            "acme",
            "",
            "attr_0",
            "10002.jpg",
            "\u{0}",
            "ü"
        ])
        .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            (
                prop::sample::select(vec![
                    "match",
                    "in",
                    "range",
                    "and",
                    "or",
                    "not",
                    "field",
                    "value",
                    "values",
                    "gte",
                    "lt",
                    "attribute",
                    "item_id",
                    "k",
                    "filter"
                ]),
                inner
            )
                .prop_map(|(k, v)| json!({ k: v })),
        ]
    })
}

fn search_body() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(vec!["attr_0", "attr_7", "collar", ""])),
        prop::option::of(prop::sample::select(vec!["10002.jpg", "nope", ""])),
        prop::option::of(prop_oneof![
            Just(json!(0)),
            Just(json!(3)),
            Just(json!(100_000)),
            Just(json!(-1)),
            Just(json!("ten"))
        ]),
        prop::option::of(value()),
        prop::option::of(prop::collection::vec(any::<f32>(), 0..4)),
    )
        .prop_map(|(attribute, item_id, k, filter, vector)| {
            let mut body = serde_json::Map::new();
            if let Some(a) = attribute {
                body.insert("attribute".into(), json!(a));
            }
            if let Some(i) = item_id {
                body.insert("item_id".into(), json!(i));
            }
            if let Some(k) = k {
                body.insert("k".into(), k);
            }
            if let Some(f) = filter {
                body.insert("filter".into(), f);
            }
            if let Some(v) = vector {
                body.insert("vector".into(), json!(v));
            }
            Value::Object(body)
        })
}

fn check(reply: &Reply, what: &str) {
    assert!(
        reply.status < 500,
        "{what}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.bytes)
    );
    if reply.status >= 400 {
        assert!(
            reply.body["status"]["error"].is_string(),
            "{what}: {} outside the envelope: {}",
            reply.status,
            String::from_utf8_lossy(&reply.bytes)
        );
    }
}

/// A search body: generated from the request's grammar (nested filters, odd `k`s and
/// vectors), or a valid body with a filter whose bytes are overwritten.
fn search_bytes() -> impl Strategy<Value = Vec<u8>> {
    let seed = json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 3,
                      "filter": {"and": [{"match": {"field": "brand", "value": "acme"}},
                                         {"not": {"range": {"field": "product", "gte": 0}}}]}})
    .to_string()
    .into_bytes();
    let mutated = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
        .prop_map(move |writes| {
            let mut body = seed.clone();
            for (i, b) in writes {
                let at = i.index(body.len());
                body[at] = b;
            }
            body
        });
    prop_oneof![
        search_body().prop_map(|b| b.to_string().into_bytes()),
        mutated
    ]
}

#[test]
fn random_and_mutated_search_bodies_get_4xx_or_2xx_in_the_envelope() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    fuzz("search_bodies", 600, search_bytes(), |body| {
        let reply = s.send("POST", SEARCH, R, "application/json", Some(&body));
        check(&reply, &String::from_utf8_lossy(&body));
        Ok(())
    });
}

#[test]
fn mutated_multipart_upserts_get_4xx_or_2xx_in_the_envelope() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let boundary = "fuzz-boundary";
    let mut seed = Vec::new();
    seed.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"items\"\r\n\r\n[{{\"id\": \"m\", \"payload\": {{\"a\": 1}}}}]\r\n").as_bytes());
    seed.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"image:m\"; filename=\"m.png\"\r\ncontent-type: image/png\r\n\r\n").as_bytes());
    // A tiny PNG keeps each accepted upsert cheap.
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::from_pixel(4, 4, image::Rgb([200, 10, 10])))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    seed.extend(&png);
    seed.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let header_end = seed.len() - png.len() - boundary.len() - 8;
    let mutation = (
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        prop::option::weighted(0.2, any::<prop::sample::Index>()),
    );
    fuzz("multipart_upserts", 200, mutation, |(writes, cut)| {
        let mut body = seed.clone();
        for (i, b) in writes {
            // Mostly the multipart framing and the JSON part, where the parsers are.
            let at = i.index(header_end);
            body[at] = b;
        }
        if let Some(c) = cut {
            body.truncate(c.index(body.len()));
        }
        let reply = s.send(
            "PUT",
            "/v1/catalogues/shirts/items",
            W,
            &format!("multipart/form-data; boundary={boundary}"),
            Some(&body),
        );
        check(&reply, &String::from_utf8_lossy(&body));
        Ok(())
    });
}
