//! The Milvus backend against a real server (feature `milvus`): the conformance suite, filters
//! with hostile values, and every kind of search compared with the local store on the same data.
//!
//! The server is `ASEN_MILVUS_URL` (e.g. `milvus://127.0.0.1:19530`, Milvus Lite in CI). Without
//! it the tests skip with a notice, and fail when `ASEN_REQUIRE_MILVUS=1`.

use std::collections::BTreeMap;

use asen_index::{
    AttributeWeight, CatalogueStore, Filter, GroupBy, MatchValue, MilvusStore, Query,
    SearchRequest, SearchResults, StoreOptions, WeightedVector,
};
use serde_json::json;

use crate::conformance::run_all;
use crate::data::*;

/// The configured server, or `None` (with a notice) when there is none.
pub fn milvus() -> Option<MilvusStore> {
    match std::env::var("ASEN_MILVUS_URL") {
        Ok(url) if !url.is_empty() => {
            Some(MilvusStore::open_url(&url).expect("cannot open ASEN_MILVUS_URL"))
        }
        _ => {
            assert!(
                std::env::var("ASEN_REQUIRE_MILVUS").as_deref() != Ok("1"),
                "ASEN_REQUIRE_MILVUS=1 but ASEN_MILVUS_URL is not set"
            );
            eprintln!("skipped: no Milvus server (set ASEN_MILVUS_URL=milvus://HOST:PORT)");
            None
        }
    }
}

/// Catalogue names of this run: several runs may share one server.
pub fn prefix(name: &str) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000_000;
    format!("{name}{}x{t}", std::process::id())
}

#[test]
fn milvus_store_passes_the_conformance_suite() {
    let Some(store) = milvus() else { return };
    run_all(&store, &prefix("m"));
}

fn payload(v: serde_json::Value) -> asen_index::Payload {
    v.as_object().unwrap().clone()
}

/// Equal JSON, numbers within 1e-12 relative.
fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_json(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn ids(r: SearchResults) -> Vec<String> {
    r.into_hits()
        .into_iter()
        .map(|h| h.id.to_string())
        .collect()
}

/// Values with quotes, backslashes and operators match themselves only, as keys and values.
#[test]
fn hostile_filter_values_do_not_change_the_expression() {
    let Some(store) = milvus() else { return };
    let name = prefix("esc");
    store.create_catalogue(&name, &schema(&["a"], 3)).unwrap();
    let hostile = [
        r#"x" or payload["brand"] != "x"#,
        r#"back\slash\"#,
        "new\nline",
        "]) or (1 == 1",
        "ünïcødé",
        "' or '1'=='1",
    ];
    let mut items = Vec::new();
    for (i, v) in hostile.iter().enumerate() {
        let mut it = item(format!("h{i}"), &[("a", &[1.0, i as f32, 0.0])]);
        it.payload = payload(json!({ "brand": v, *v: 1 }));
        items.push(it);
    }
    let mut plain = item("plain", &[("a", &[1.0, 0.0, 0.0])]);
    plain.payload = payload(json!({"brand": "x"}));
    items.push(plain);
    store.upsert(&name, &items).unwrap();
    for (i, v) in hostile.iter().enumerate() {
        let mut req = SearchRequest::vector("a", vec![1.0, 0.0, 0.0], 10);
        req.filter = Some(Filter::Match {
            field: "brand".into(),
            value: MatchValue::Keyword(v.to_string()),
        });
        assert_eq!(
            ids(store.search(&name, &req).unwrap()),
            [format!("h{i}")],
            "{v:?}"
        );
        // The value as a key (no dots: a dotted key is a path).
        if !v.contains('.') {
            req.filter = Some(Filter::Match {
                field: v.to_string(),
                value: MatchValue::Integer(1),
            });
            assert_eq!(
                ids(store.search(&name, &req).unwrap()),
                [format!("h{i}")],
                "key {v:?}"
            );
        }
    }
    // A hostile id in a delete removes that item only.
    assert_eq!(
        store
            .delete(&name, &[id(r#"h0" or id != "x"#)])
            .unwrap()
            .affected,
        0
    );
    assert_eq!(store.count(&name).unwrap(), hostile.len() as u64 + 1);
    store.drop_catalogue(&name).unwrap();
}

/// Same data, same requests, same answers: filters, weights, item queries, recommend,
/// group-by, thresholds.
#[test]
fn searches_agree_with_the_local_store() {
    let Some(milvus) = milvus() else { return };
    let (_d, local) = store(StoreOptions::default());
    let name = prefix("diff");
    let dim = 16;
    let mut r = rng(21);
    let mut items = Vec::new();
    for n in 0..300 {
        let collar = random_vector(&mut r, dim);
        let colour = random_vector(&mut r, dim);
        let mut vs: Vec<(&str, &[f32])> = vec![("collar", &collar)];
        if n % 7 != 0 {
            vs.push(("colour", &colour));
        }
        let mut it = item(format!("i{n:03}"), &vs);
        let mut p = json!({
            "brand": format!("b{}", n % 5),
            "price": n as f64 / 3.0,
            "tags": [format!("t{}", n % 3), "all"],
            "product": {"id": n / 4},
            "sale": n % 2 == 0,
        });
        if n % 11 == 0 {
            p.as_object_mut().unwrap().remove("brand");
        }
        it.payload = payload(p);
        items.push(it);
    }
    for s in [&milvus as &dyn CatalogueStore, &local] {
        s.create_catalogue(&name, &schema(&["collar", "colour"], dim))
            .unwrap();
        s.upsert(&name, &items).unwrap();
    }
    let q1 = random_vector(&mut r, dim);
    let q2 = random_vector(&mut r, dim);
    let m = |f: &str, v: MatchValue| Filter::Match {
        field: f.into(),
        value: v,
    };
    let filters = [
        m("brand", MatchValue::Keyword("b2".into())),
        m("tags", MatchValue::Keyword("t1".into())),
        m("product.id", MatchValue::Integer(7)),
        m("sale", MatchValue::Bool(true)),
        Filter::In {
            field: "brand".into(),
            values: vec![
                MatchValue::Keyword("b1".into()),
                MatchValue::Keyword("b3".into()),
            ],
        },
        Filter::Range {
            field: "price".into(),
            gt: Some(10.0),
            gte: None,
            lt: None,
            lte: Some(50.5),
        },
        Filter::Not(Box::new(m("brand", MatchValue::Keyword("b0".into())))),
        Filter::And(vec![
            m("sale", MatchValue::Bool(false)),
            Filter::Not(Box::new(m("tags", MatchValue::Keyword("t0".into())))),
        ]),
        Filter::Or(vec![
            m("brand", MatchValue::Keyword("b4".into())),
            m("product.id", MatchValue::Integer(3)),
        ]),
    ];
    let weights = |a: f32, b: f32| {
        vec![
            AttributeWeight {
                attribute: "collar".into(),
                weight: a,
            },
            AttributeWeight {
                attribute: "colour".into(),
                weight: b,
            },
        ]
    };
    let mut requests = vec![
        SearchRequest::vector("collar", q1.clone(), 10),
        SearchRequest::new(
            Query::Weighted(vec![
                WeightedVector {
                    attribute: "collar".into(),
                    vector: q1.clone(),
                    weight: 0.7,
                },
                WeightedVector {
                    attribute: "colour".into(),
                    vector: q2.clone(),
                    weight: 0.3,
                },
            ]),
            10,
        ),
        SearchRequest::new(
            Query::Item {
                id: id("i001"),
                attributes: weights(1.0, 0.5),
            },
            10,
        ),
        SearchRequest::new(
            Query::Recommend {
                positive: vec![id("i002"), id("i003")],
                negative: vec![id("i004")],
                attributes: weights(0.5, 0.5),
            },
            10,
        ),
    ];
    for f in &filters {
        let mut req = SearchRequest::vector("colour", q2.clone(), 10);
        req.filter = Some(f.clone());
        req.with_payload = true;
        requests.push(req);
    }
    let mut grouped = SearchRequest::vector("collar", q1.clone(), 5);
    grouped.group_by = Some(GroupBy {
        field: "product.id".into(),
        group_size: 2,
    });
    requests.push(grouped);
    let mut thresholded = SearchRequest::vector("collar", q1.clone(), 50);
    thresholded.score_threshold = Some(0.2);
    requests.push(thresholded);

    for req in &requests {
        let a = milvus.search(&name, req).unwrap();
        let b = local.search(&name, req).unwrap();
        let (ha, hb) = (a.clone().into_hits(), b.clone().into_hits());
        assert_eq!(
            ha.iter().map(|h| &h.id).collect::<Vec<_>>(),
            hb.iter().map(|h| &h.id).collect::<Vec<_>>(),
            "{req:?}"
        );
        for (x, y) in ha.iter().zip(&hb) {
            assert!((x.score - y.score).abs() < 1e-4, "{req:?}: {x:?} vs {y:?}");
            // Milvus may return a payload's floats an ulp or two off (docs/milvus.md).
            assert!(
                same_json(&json!(x.payload), &json!(y.payload)),
                "{x:?} vs {y:?}"
            );
            let keys = |h: &asen_index::Hit| h.attribute_scores.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(x), keys(y));
        }
        if let (SearchResults::Groups(ga), SearchResults::Groups(gb)) = (&a, &b) {
            let keys =
                |g: &[asen_index::HitGroup]| g.iter().map(|g| g.key.clone()).collect::<Vec<_>>();
            assert_eq!(keys(ga), keys(gb));
        }
    }
    // Errors of the same kind for the same mistakes.
    let bad = [
        SearchRequest::vector("sleeve", q1.clone(), 10),
        SearchRequest::vector("collar", vec![1.0; 3], 10),
        SearchRequest::vector("collar", q1.clone(), 0),
        SearchRequest::new(
            Query::Item {
                id: id("nobody"),
                attributes: weights(1.0, 1.0),
            },
            10,
        ),
        SearchRequest::new(
            Query::Item {
                id: id("i007"),
                attributes: weights(1.0, 1.0),
            },
            10,
        ),
    ];
    for req in &bad {
        let a = milvus.search(&name, req).unwrap_err();
        let b = local.search(&name, req).unwrap_err();
        assert_eq!(a.kind(), b.kind(), "{req:?}: {a} vs {b}");
        assert_eq!(a.to_string(), b.to_string());
    }
    // Stored vectors and counts agree.
    let gm = milvus.get(&name, &id("i014"), true).unwrap().unwrap();
    let gl = local.get(&name, &id("i014"), true).unwrap().unwrap();
    assert_eq!(gm.attributes, gl.attributes);
    let close = |a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>| {
        a.keys().eq(b.keys())
            && a.values()
                .zip(b.values())
                .all(|(x, y)| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-6))
    };
    assert!(close(
        gm.vectors.as_ref().unwrap(),
        gl.vectors.as_ref().unwrap()
    ));
    let (im, il) = (
        milvus.list_catalogues().unwrap(),
        local.list_catalogues().unwrap(),
    );
    let mine = |v: &[asen_index::CatalogueInfo]| {
        v.iter()
            .find(|c| c.name == name)
            .map(|c| (c.items, c.attribute_counts.clone()))
    };
    assert_eq!(mine(&im), mine(&il));
    milvus.drop_catalogue(&name).unwrap();
}

/// Gets and searches on an attribute that stays keep working, with its vectors bit-identical,
/// while another attribute is dropped, added again and filled over and over: the registry row
/// switches readers from one placement to the next, and no alteration renames a collection.
#[test]
fn reads_keep_working_while_attributes_change() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let Some(store) = milvus() else { return };
    let name = prefix("alt");
    store
        .create_catalogue(&name, &schema(&["churn", "keep"], 4))
        .unwrap();
    let mut r = rng(5);
    let items: Vec<_> = (0..20)
        .map(|n| {
            let (a, b) = (random_vector(&mut r, 4), random_vector(&mut r, 4));
            item(format!("i{n:02}"), &[("churn", &a), ("keep", &b)])
        })
        .collect();
    store.upsert(&name, &items).unwrap();
    let keep_before = store.get(&name, &id("i07"), true).unwrap().unwrap().vectors;
    let keep_before = keep_before.unwrap()["keep"].clone();
    let stop = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let hits = store
                    .search(
                        &name,
                        &SearchRequest::vector("keep", vec![1.0, 0.0, 0.0, 0.0], 5),
                    )
                    .unwrap()
                    .into_hits();
                assert_eq!(hits.len(), 5);
                let got = store.get(&name, &id("i07"), true).unwrap().unwrap();
                assert_eq!(got.vectors.unwrap()["keep"], keep_before);
                assert!(got.attributes.contains(&"keep".to_string()));
                reads.fetch_add(1, Ordering::Relaxed);
            }
        });
        for _ in 0..3 {
            store
                .alter_catalogue(
                    &name,
                    &[
                        asen_index::SchemaChange::DropAttribute {
                            name: "churn".into(),
                        },
                        asen_index::SchemaChange::AddAttribute {
                            name: "churn".into(),
                        },
                    ],
                )
                .unwrap();
            let fill: Vec<_> = (0..20)
                .map(|n| (id(format!("i{n:02}")), random_vector(&mut r, 4)))
                .collect();
            assert_eq!(
                store
                    .fill_attribute(&name, "churn", &fill)
                    .unwrap()
                    .affected,
                20
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(reads.load(Ordering::Relaxed) > 0);
    let info = store.list_catalogues().unwrap();
    let info = info.iter().find(|c| c.name == name).unwrap();
    assert_eq!(info.schema.attributes, ["keep", "churn"]);
    assert_eq!(info.attribute_counts["churn"], 20);
    assert_eq!(info.attribute_counts["keep"], 20);
    let got = store.get(&name, &id("i07"), false).unwrap().unwrap();
    assert_eq!(got.attributes, ["keep", "churn"]);
    store.drop_catalogue(&name).unwrap();
}
