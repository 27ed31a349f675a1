//! Filtered search: k hits whenever k items match, on both the exact and the graph path.

use asen_index::{CatalogueStore, Filter, FilterStrategy, MatchValue, SearchRequest, StoreOptions};
use serde_json::json;

use crate::data::*;

fn filtered_store(
    n: usize,
    options: StoreOptions,
) -> (tempfile::TempDir, asen_index::LocalStore, Vec<Vec<f32>>) {
    let (d, store) = store(options);
    let dim = 32;
    let mut r = rng(11);
    let data: Vec<Vec<f32>> = (0..n).map(|_| random_vector(&mut r, dim)).collect();
    // Filter correctness does not need a high-quality graph: build it cheaply.
    let cheap = asen_index::HnswConfig {
        m: 12,
        ef_construction: 48,
        ef_search: 64,
    };
    store
        .create_catalogue("c", &schema(&["a"], dim).with_hnsw(cheap))
        .unwrap();
    for chunk in data.chunks(2000).enumerate() {
        let items: Vec<_> = chunk
            .1
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let n = chunk.0 * 2000 + i;
                let mut it = item(n, &[("a", v)]);
                // "rare" on 0.5 % of items, "brand" cycling over 4 values, a price.
                it.payload = json!({"rare": n % 200 == 0, "brand": format!("b{}", n % 4), "price": n as f64})
                    .as_object()
                    .unwrap()
                    .clone();
                it
            })
            .collect();
        store.upsert("c", &items).unwrap();
    }
    (d, store, data)
}

fn check(
    store: &asen_index::LocalStore,
    data: &[Vec<f32>],
    filter: Filter,
    pred: impl Fn(usize) -> bool,
    k: usize,
) {
    let mut r = rng(5);
    let matching: Vec<usize> = (0..data.len()).filter(|i| pred(*i)).collect();
    for _ in 0..10 {
        let q = random_vector(&mut r, data[0].len());
        let mut req = SearchRequest::vector("a", q.clone(), k);
        req.filter = Some(filter.clone());
        let hits = store.search("c", &req).unwrap().into_hits();
        assert_eq!(hits.len(), k.min(matching.len()), "filter {filter:?}");
        for h in &hits {
            let i: usize = h.id.as_str().parse().unwrap();
            assert!(pred(i), "{} does not pass the filter", h.id);
        }
        // exactness on the matching subset: the best match must be found
        let best = matching
            .iter()
            .max_by(|a, b| cosine(&data[**a], &q).total_cmp(&cosine(&data[**b], &q)))
            .unwrap();
        assert_eq!(hits[0].id.as_str(), best.to_string());
    }
}

#[test]
fn selective_filter_returns_k_hits_out_of_20k() {
    let (_d, store, data) = filtered_store(20_000, StoreOptions::default());
    let rare = Filter::Match {
        field: "rare".into(),
        value: MatchValue::Bool(true),
    };
    // 0.5 % of 20k = 100 items match
    check(&store, &data, rare, |i| i % 200 == 0, 10);
}

#[test]
fn every_filter_strategy_returns_the_filtered_top_k() {
    let brand = Filter::In {
        field: "brand".into(),
        values: vec![MatchValue::Keyword("b1".into())],
    };
    for strategy in [
        FilterStrategy::Auto,
        FilterStrategy::ExactScan,
        FilterStrategy::GraphHook,
        FilterStrategy::PostFilter,
    ] {
        let options = StoreOptions {
            filter_strategy: strategy,
            ..StoreOptions::default()
        };
        let (_d, store, data) = filtered_store(2_000, options);
        check(&store, &data, brand.clone(), |i| i % 4 == 1, 10);
    }
}

#[test]
fn range_and_boolean_combinations() {
    let (_d, store, data) = filtered_store(3_000, StoreOptions::default());
    let f: Filter = serde_json::from_value(json!({"and": [
        {"range": {"field": "price", "gte": 100.0, "lt": 200.0}},
        {"not": {"match": {"field": "brand", "value": "b0"}}}
    ]}))
    .unwrap();
    check(
        &store,
        &data,
        f,
        |i| (100..200).contains(&i) && i % 4 != 0,
        20,
    );
    // fewer matches than k: all of them
    let few: Filter =
        serde_json::from_value(json!({"range": {"field": "price", "lte": 2.0}})).unwrap();
    check(&store, &data, few, |i| i <= 2, 10);
}

#[test]
fn post_filter_falls_back_when_the_sample_misleads() {
    // Forced post-filtering of a 0.5 % filter still returns k hits (widening, then exact scan).
    let options = StoreOptions {
        filter_strategy: FilterStrategy::PostFilter,
        ..StoreOptions::default()
    };
    let (_d, store, data) = filtered_store(4_000, options);
    let rare = Filter::Match {
        field: "rare".into(),
        value: MatchValue::Bool(true),
    };
    check(&store, &data, rare, |i| i % 200 == 0, 10);
}
