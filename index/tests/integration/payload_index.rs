//! The payload index answers filtered searches exactly: same ids as brute force over the items
//! that pass the filter, after updates, deletes, compaction and a reopen.

use std::path::Path;

use asen_index::{CatalogueStore, Filter, Item, LocalStore, SearchRequest, StoreOptions};
use serde_json::{json, Value};

use crate::data::*;

const DIM: usize = 24;
const N: usize = 3_000;

/// Item `i`'s payload; `version` changes every value but the id-derived ones.
fn payload_of(i: usize, version: usize) -> Value {
    let j = i + version * 7;
    let colour = ["black", "navy", "red"][j % 3];
    json!({
        "brand": format!("brand{}", j % 40),
        "price": (j % 500) as f64 + 0.25,
        "sizes": [j % 7, 10 + j % 3],
        "sale": j.is_multiple_of(9),
        "meta": {"colour": colour},
    })
}

fn item_of(i: usize, v: &[f32], version: usize) -> Item {
    let mut it = item(i, &[("a", v)]);
    it.payload = payload_of(i, version).as_object().unwrap().clone();
    it
}

fn cheap_schema() -> asen_index::CatalogueSchema {
    schema(&["a"], DIM).with_hnsw(asen_index::HnswConfig {
        m: 12,
        ef_construction: 48,
        ef_search: 64,
    })
}

fn fill(store: &LocalStore) -> Vec<Vec<f32>> {
    let mut r = rng(21);
    let data: Vec<Vec<f32>> = (0..N).map(|_| random_vector(&mut r, DIM)).collect();
    store.create_catalogue("c", &cheap_schema()).unwrap();
    let items: Vec<Item> = data
        .iter()
        .enumerate()
        .map(|(i, v)| item_of(i, v, 0))
        .collect();
    for chunk in items.chunks(1000) {
        store.upsert("c", chunk).unwrap();
    }
    data
}

fn filter(v: Value) -> Filter {
    serde_json::from_value(v).unwrap()
}

/// Filters of every kind the index answers, each matching at most a few hundred of the items.
fn selective_filters() -> Vec<Filter> {
    [
        json!({"match": {"field": "brand", "value": "brand7"}}),
        json!({"in": {"field": "brand", "values": ["brand1", "brand2", "nobrand"]}}),
        json!({"range": {"field": "price", "gte": 10.0, "lt": 30.0}}),
        json!({"range": {"field": "price", "gt": 490.25}}),
        json!({"and": [{"match": {"field": "sizes", "value": 3}},
                       {"match": {"field": "meta.colour", "value": "red"}},
                       {"range": {"field": "price", "lte": 200.0}}]}),
        json!({"and": [{"match": {"field": "brand", "value": "brand3"}},
                       {"not": {"match": {"field": "sale", "value": true}}}]}),
        json!({"or": [{"match": {"field": "brand", "value": "brand5"}},
                      {"range": {"field": "price", "lt": 5.0}}]}),
        json!({"and": [{"match": {"field": "sale", "value": true}},
                       {"not": {"range": {"field": "price", "gte": 100.0}}}]}),
    ]
    .into_iter()
    .map(filter)
    .collect()
}

/// Ids of the `k` items passing `f` closest to `q`, by brute force over the store's payloads.
fn exact_answer(
    store: &LocalStore,
    data: &[Vec<f32>],
    f: &Filter,
    q: &[f32],
    k: usize,
) -> Vec<String> {
    let mut scored: Vec<(usize, f32)> = (0..data.len())
        .filter_map(|i| {
            let got = store.get("c", &id(i), false).unwrap()?;
            let passes = matches_payload(f, &Value::Object(got.payload));
            passes.then(|| (i, cosine(&data[i], q)))
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
        .into_iter()
        .take(k)
        .map(|(i, _)| i.to_string())
        .collect()
}

/// The filter evaluated on one payload, independently of the library.
fn matches_payload(f: &Filter, p: &Value) -> bool {
    let field = |path: &str| {
        path.split('.')
            .try_fold(p, |cur, part| cur.as_object()?.get(part))
    };
    let scalars = |v: &Value| -> Vec<Value> {
        match v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        }
    };
    let eq = |v: &Value, want: &asen_index::MatchValue| {
        let want = serde_json::to_value(want).unwrap();
        match (v, &want) {
            (Value::Number(a), Value::Number(b)) => {
                a.as_i64().is_some() && a.as_i64() == b.as_i64()
            }
            _ => v == &want,
        }
    };
    match f {
        Filter::Match { field: path, value } => {
            field(path).is_some_and(|v| scalars(v).iter().any(|s| eq(s, value)))
        }
        Filter::In {
            field: path,
            values,
        } => {
            field(path).is_some_and(|v| scalars(v).iter().any(|s| values.iter().any(|w| eq(s, w))))
        }
        Filter::Range {
            field: path,
            gt,
            gte,
            lt,
            lte,
        } => field(path).is_some_and(|v| {
            scalars(v).iter().filter_map(Value::as_f64).any(|x| {
                gt.is_none_or(|b| x > b)
                    && gte.is_none_or(|b| x >= b)
                    && lt.is_none_or(|b| x < b)
                    && lte.is_none_or(|b| x <= b)
            })
        }),
        Filter::And(fs) => fs.iter().all(|g| matches_payload(g, p)),
        Filter::Or(fs) => fs.iter().any(|g| matches_payload(g, p)),
        Filter::Not(g) => !matches_payload(g, p),
    }
}

fn search_ids(store: &LocalStore, f: &Filter, q: &[f32], k: usize) -> Vec<String> {
    let mut req = SearchRequest::vector("a", q.to_vec(), k);
    req.filter = Some(f.clone());
    store
        .search("c", &req)
        .unwrap()
        .into_hits()
        .into_iter()
        .map(|h| h.id.to_string())
        .collect()
}

/// Every selective filter, a few queries each: the store's hits against brute force.
fn assert_exact(store: &LocalStore, data: &[Vec<f32>]) {
    let mut r = rng(8);
    for f in selective_filters() {
        for _ in 0..3 {
            let q = random_vector(&mut r, DIM);
            let want = exact_answer(store, data, &f, &q, 10);
            assert!(
                !want.is_empty(),
                "filter {f:?} matches nothing: a useless case"
            );
            assert_eq!(search_ids(store, &f, &q, 10), want, "filter {f:?}");
        }
    }
}

#[test]
fn indexed_filters_return_the_exact_filtered_top_k() {
    let (_d, store) = store(StoreOptions::default());
    let data = fill(&store);
    assert_exact(&store, &data);
}

#[test]
fn updates_and_deletes_move_items_between_filter_values() {
    let (_d, store) = store(StoreOptions::default());
    let data = fill(&store);
    let updated: Vec<Item> = (0..N).step_by(2).map(|i| item_of(i, &data[i], 1)).collect();
    for chunk in updated.chunks(500) {
        store.upsert("c", chunk).unwrap();
    }
    let gone: Vec<_> = (1..N).step_by(5).map(id).collect();
    for chunk in gone.chunks(500) {
        store.delete("c", chunk).unwrap();
    }
    assert_exact(&store, &data);
}

#[test]
fn compaction_keeps_filtered_answers_exact() {
    let options = StoreOptions {
        compaction_min_points: 10,
        background_compaction: false,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    let data = fill(&store);
    let updated: Vec<Item> = (0..N / 2).map(|i| item_of(i, &data[i], 2)).collect();
    for chunk in updated.chunks(500) {
        store.upsert("c", chunk).unwrap();
    }
    store.compact("c").unwrap();
    assert_exact(&store, &data);
}

fn answers(store: &LocalStore) -> Vec<Vec<String>> {
    let mut r = rng(9);
    selective_filters()
        .iter()
        .map(|f| search_ids(store, f, &random_vector(&mut r, DIM), 10))
        .collect()
}

fn reopen(dir: &Path) -> LocalStore {
    LocalStore::open(dir, StoreOptions::default()).unwrap()
}

#[test]
fn the_index_rebuilt_on_reopen_gives_the_same_answers() {
    let (dir, store) = store(StoreOptions::default());
    let data = fill(&store);
    let updated: Vec<Item> = (0..N).step_by(4).map(|i| item_of(i, &data[i], 3)).collect();
    store.upsert("c", &updated).unwrap();
    store.delete("c", &[id(10), id(11), id(12)]).unwrap();
    let before = answers(&store);
    let bytes = store.payload_index_bytes("c").unwrap();
    drop(store);
    let store = reopen(dir.path());
    assert_eq!(answers(&store), before);
    assert_eq!(store.payload_index_bytes("c").unwrap() > 0, bytes > 0);
}

#[test]
fn the_index_matches_the_unindexed_path() {
    let (dir, store) = store(StoreOptions::default());
    fill(&store);
    let indexed = answers(&store);
    drop(store);
    let unindexed = LocalStore::open(
        dir.path(),
        StoreOptions {
            payload_index: false,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    assert_eq!(answers(&unindexed), indexed);
}

#[test]
fn broad_single_conditions_return_k_passing_hits() {
    // A small exact-scan limit sends these to the post-filter walk without an id set.
    let options = StoreOptions {
        exact_scan_max_items: 100,
        exact_scan_fraction: 0.0,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    fill(&store);
    let broad = [
        json!({"match": {"field": "sale", "value": false}}),
        json!({"range": {"field": "price", "lt": 400.0}}),
        json!({"in": {"field": "meta.colour", "values": ["black", "navy"]}}),
    ];
    let mut r = rng(12);
    for f in broad.into_iter().map(filter) {
        let q = random_vector(&mut r, DIM);
        let mut req = SearchRequest::vector("a", q, 10);
        req.filter = Some(f.clone());
        let hits = store.search("c", &req).unwrap().into_hits();
        assert_eq!(hits.len(), 10, "filter {f:?}");
        for h in hits {
            let i: usize = h.id.as_str().parse().unwrap();
            let p = store.get("c", &id(i), false).unwrap().unwrap().payload;
            assert!(
                matches_payload(&f, &Value::Object(p)),
                "{} fails {f:?}",
                h.id
            );
        }
    }
}
