//! Searches run while a writer upserts, deletes and triggers background compactions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use asen_index::{CatalogueStore, SearchRequest, StoreOptions};

use crate::data::*;

#[test]
fn searches_run_alongside_ingestion_and_compaction() {
    let options = StoreOptions {
        compaction_min_points: 200,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    let store = Arc::new(store);
    store.create_catalogue("c", &schema(&["a"], 16)).unwrap();
    let mut r = rng(1);
    let first: Vec<_> = (0..1000)
        .map(|i| item(format!("k{i}"), &[("a", &random_vector(&mut r, 16))]))
        .collect();
    store.upsert("c", &first).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let searchers: Vec<_> = (0..2)
        .map(|s| {
            let store = Arc::clone(&store);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let mut r = rng(100 + s);
                let mut n = 0;
                while !done.load(Ordering::Acquire) || n < 50 {
                    let hits = store
                        .search(
                            "c",
                            &SearchRequest::vector("a", random_vector(&mut r, 16), 10),
                        )
                        .unwrap()
                        .into_hits();
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
