//! Searches run while a writer upserts, deletes and triggers background compactions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use asen_index::{CatalogueStore, SearchRequest, StoreOptions};

use crate::data::*;

/// A store with catalogue `c` (one 16-d attribute `a`) holding items `k0`..`k{n-1}`, and the
/// random source that made them, to go on with.
fn filled(
    options: StoreOptions,
    n: usize,
    seed: u64,
) -> (
    tempfile::TempDir,
    Arc<asen_index::LocalStore>,
    rand::rngs::StdRng,
) {
    let (dir, store) = store(options);
    store.create_catalogue("c", &schema(&["a"], 16)).unwrap();
    let mut r = rng(seed);
    let first: Vec<_> = (0..n)
        .map(|i| item(format!("k{i}"), &[("a", &random_vector(&mut r, 16))]))
        .collect();
    store.upsert("c", &first).unwrap();
    (dir, Arc::new(store), r)
}

/// The 10 nearest items of catalogue `c` to a random vector.
fn search_random(
    store: &asen_index::LocalStore,
    r: &mut rand::rngs::StdRng,
) -> Vec<asen_index::Hit> {
    store
        .search("c", &SearchRequest::vector("a", random_vector(r, 16), 10))
        .unwrap()
        .into_hits()
}

#[test]
fn searches_run_alongside_ingestion_and_compaction() {
    let options = StoreOptions {
        compaction_min_points: 200,
        ..StoreOptions::default()
    };
    let (_d, store, mut r) = filled(options, 1000, 1);
    let done = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|s| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut r = rng(100 + s);
                let mut n = 0;
                while !done.load(Ordering::Acquire) || n < 50 {
                    let hits = search_random(&store, &mut r);
                    assert_eq!(hits.len(), 10);
                    let mut ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    assert_eq!(
                        ids.len(),
                        10,
                        "an item and its replaced version both visible"
                    );
                    n += 1;
                }
                n
            })
        })
        .collect();
    for round in 0..10 {
        // replace 300 items (tombstones), then the compaction threshold is crossed
        let batch: Vec<_> = (0..300)
            .map(|i| item(format!("k{i}"), &[("a", &random_vector(&mut r, 16))]))
            .collect();
        store.upsert("c", &batch).unwrap();
        let extra: Vec<_> = (0..20)
            .map(|i| {
                item(
                    format!("k{}", 1000 + round * 20 + i),
                    &[("a", &random_vector(&mut r, 16))],
                )
            })
            .collect();
        store.upsert("c", &extra).unwrap();
    }
    done.store(true, Ordering::Release);
    let searched: usize = searchers.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(searched >= 100);
    store.wait_for_compactions();
    assert_eq!(store.count("c").unwrap(), 1200);
    let stats = store.stats("c").unwrap();
    assert!(stats.attributes[0].compactions >= 1, "{stats:?}");
    assert!(store.check_consistency("c").unwrap().is_consistent());
}

/// Steady replacement below the compaction threshold: reclaims free the replaced points'
/// slots and new points reuse them, so the graph keeps its size and no compaction runs.
/// (Inline maintenance, so that the bound does not depend on the background thread's pace.)
#[test]
fn churn_reuses_reclaimed_slots_instead_of_growing_or_compacting() {
    let options = StoreOptions {
        compaction_min_points: 200,
        background_compaction: false,
        ..StoreOptions::default()
    };
    let (_d, store, mut r) = filled(options, 2000, 2);
    let done = Arc::new(AtomicBool::new(false));
    let searcher = {
        let store = Arc::clone(&store);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let mut r = rng(200);
            while !done.load(Ordering::Acquire) {
                let hits = search_random(&store, &mut r);
                assert_eq!(hits.len(), 10);
            }
        })
    };
    // 40 rounds of 60 replacements: 2,400 replaced points in all, more than the catalogue.
    for round in 0..40 {
        let batch: Vec<_> = (0..60)
            .map(|i| {
                let k = (round * 60 + i) % 2000;
                item(format!("k{k}"), &[("a", &random_vector(&mut r, 16))])
            })
            .collect();
        store.upsert("c", &batch).unwrap();
    }
    done.store(true, Ordering::Release);
    searcher.join().unwrap();
    store.wait_for_compactions();
    let stats = store.stats("c").unwrap();
    let a = &stats.attributes[0];
    assert_eq!(a.live, 2000);
    assert_eq!(a.compactions, 0, "{stats:?}");
    // Without reuse the graph would hold 4,400 points; the reclaim threshold (5 %) plus one
    // batch bounds the unreclaimed ones.
    assert!(a.graph_points <= 2000 + 2000 / 10 + 60, "{stats:?}");
    assert!(store.check_consistency("c").unwrap().is_consistent());
}
