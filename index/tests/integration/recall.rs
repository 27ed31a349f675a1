//! Graph search against brute force.

use std::collections::HashSet;

use asen_index::{CatalogueStore, SearchRequest, StoreOptions, VectorStorage};

use crate::data::*;

fn recall_at_10(storage: VectorStorage, clustered_data: bool) -> f64 {
    let (_d, store) = store(StoreOptions::default());
    let dim = 64;
    let n = 5_000;
    let mut r = rng(7);
    let queries = 100;
    // Queries come from the same distribution as the data (held-out samples).
    let mut data = if clustered_data {
        clustered(&mut r, n + queries, dim, 50)
    } else {
        (0..n + queries)
            .map(|_| random_vector(&mut r, dim))
            .collect()
    };
    let held_out = data.split_off(n);
    store
        .create_catalogue("c", &schema(&["a"], dim).with_storage(storage))
        .unwrap();
    for chunk in data.chunks(1000).enumerate() {
        let items: Vec<_> = chunk
            .1
            .iter()
            .enumerate()
            .map(|(i, v)| item(chunk.0 * 1000 + i, &[("a", v)]))
            .collect();
        store.upsert("c", &items).unwrap();
    }
    let mut found = 0;
    for q in held_out {
        let truth: HashSet<String> = brute_force(&data, &q, 10)
            .into_iter()
            .map(|i| i.to_string())
            .collect();
        let hits = store
            .search("c", &SearchRequest::vector("a", q.clone(), 10))
            .unwrap()
            .into_hits();
        assert_eq!(hits.len(), 10);
        for w in hits.windows(2) {
            assert!(w[0].score >= w[1].score);
        }
        for h in &hits {
            let i: usize = h.id.as_str().parse().unwrap();
            assert!(
                (h.score - cosine(&data[i], &q)).abs() < 1e-3,
                "score is the cosine"
            );
        }
        found += hits
            .iter()
            .filter(|h| truth.contains(h.id.as_str()))
            .count();
    }
    found as f64 / (queries * 10) as f64
}

#[test]
fn recall_at_default_parameters_f32_uniform() {
    let r = recall_at_10(VectorStorage::F32, false);
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn recall_at_default_parameters_f32_clustered() {
    let r = recall_at_10(VectorStorage::F32, true);
    assert!(r >= 0.95, "recall@10 = {r}");
}

#[test]
fn recall_with_f16_and_int8_storage_after_rescoring() {
    for s in [VectorStorage::F16, VectorStorage::Int8] {
        let r = recall_at_10(s, true);
        assert!(r >= 0.95, "{s:?}: recall@10 = {r}");
    }
}
