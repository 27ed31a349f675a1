//! Property: after any sequence of upserts and deletes, the store agrees with a model map,
//! searches never return absent items, and graphs hold exactly the live items.

use std::collections::BTreeMap;

use asen_index::{CatalogueStore, SearchRequest, StoreOptions};
use proptest::prelude::*;

use crate::data::*;

#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<(u8, [i8; 4])>),
    Delete(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        prop::collection::vec((0u8..40, prop::array::uniform4(-5i8..5)), 1..8).prop_map(Op::Upsert),
        prop::collection::vec(0u8..40, 1..6).prop_map(Op::Delete),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..25)) {
        let options = StoreOptions { compaction_min_points: 8, background_compaction: false, ..StoreOptions::default() };
        let (_d, store) = store(options);
        store.create_catalogue("c", &schema(&["a"], 4)).unwrap();
        let mut model: BTreeMap<u8, [f32; 4]> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Upsert(items) => {
                    let items: Vec<_> = items.into_iter().map(|(k, v)| {
                        let mut v = v.map(f32::from);
                        if v.iter().all(|x| *x == 0.0) { v[0] = 1.0; }
                        (k, v)
                    }).collect();
                    let batch: Vec<_> = items.iter().map(|(k, v)| item(k, &[("a", v)])).collect();
                    store.upsert("c", &batch).unwrap();
                    for (k, v) in items { model.insert(k, v); }
                }
                Op::Delete(keys) => {
                    let ids: Vec<_> = keys.iter().map(id).collect();
                    store.delete("c", &ids).unwrap();
                    for k in keys { model.remove(&k); }
                }
            }
        }
        prop_assert_eq!(store.count("c").unwrap(), model.len() as u64);
        for (k, v) in &model {
            let got = store.get("c", &id(k), true).unwrap().unwrap();
            let stored = &got.vectors.unwrap()["a"];
            prop_assert!(stored.iter().zip(unit(v)).all(|(a, b)| (a - b).abs() < 1e-6));
        }
        if !model.is_empty() {
            let hits = store.search("c", &SearchRequest::vector("a", vec![1.0, 0.5, -0.5, 0.2], 50)).unwrap().into_hits();
            prop_assert_eq!(hits.len(), model.len().min(50));
            for h in hits {
                let k: u8 = h.id.as_str().parse().unwrap();
                prop_assert!(model.contains_key(&k));
            }
        }
        prop_assert!(store.check_consistency("c").unwrap().is_consistent());
    }
}
