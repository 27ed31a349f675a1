//! Bad input: typed errors, nothing written.

use std::collections::BTreeMap;

use asen_index::{
    CatalogueStore, ErrorKind, IndexError, Item, ItemId, SearchRequest, StoreOptions,
};
use serde_json::json;

use crate::data::*;

fn assert_nothing_written(store: &asen_index::LocalStore) {
    assert_eq!(store.count("c").unwrap(), 1);
    assert_eq!(store.stats("c").unwrap().sequence, 1);
}

#[test]
fn bad_items_are_rejected_whole_batch() {
    let (_d, store) = store(StoreOptions::default());
    let sch = schema(&["a", "b"], 4).clone();
    let mut small = sch.clone();
    small.max_payload_bytes = 100;
    store.create_catalogue("c", &small).unwrap();
    store
        .upsert("c", &[item("ok", &[("a", &[1.0, 0.0, 0.0, 0.0])])])
        .unwrap();
    let good = item("good", &[("a", &[1.0, 2.0, 3.0, 4.0])]);
    let mut big = item("big", &[("a", &[1.0, 2.0, 3.0, 4.0])]);
    big.payload = json!({"x": "y".repeat(200)}).as_object().unwrap().clone();
    type Check = fn(&IndexError) -> bool;
    let cases: Vec<(Item, Check)> = vec![
        (item("d", &[("a", &[1.0, 2.0])]), |e| {
            matches!(
                e,
                IndexError::DimensionMismatch {
                    expected: 4,
                    got: 2,
                    ..
                }
            )
        }),
        (item("n", &[("a", &[1.0, f32::NAN, 0.0, 0.0])]), |e| {
            matches!(e, IndexError::NonFiniteVector { index: 1, .. })
        }),
        (item("i", &[("a", &[1.0, f32::INFINITY, 0.0, 0.0])]), |e| {
            matches!(e, IndexError::NonFiniteVector { .. })
        }),
        (item("z", &[("a", &[0.0; 4])]), |e| {
            matches!(e, IndexError::ZeroVector { .. })
        }),
        (item("u", &[("sleeve", &[1.0; 4])]), |e| {
            matches!(e, IndexError::UnknownAttribute { .. })
        }),
        (Item::new(id("e"), BTreeMap::new()), |e| {
            matches!(e, IndexError::EmptyItem { .. })
        }),
        (big, |e| {
            matches!(e, IndexError::PayloadTooLarge { limit: 100, .. })
        }),
    ];
    for (bad, is_expected) in cases {
        let err = store.upsert("c", &[good.clone(), bad]).unwrap_err();
        assert!(is_expected(&err), "unexpected error {err:?}");
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert_nothing_written(&store);
        assert!(store.get("c", &id("good"), false).unwrap().is_none());
    }
    assert!(matches!(
        ItemId::new(""),
        Err(IndexError::InvalidItemId { .. })
    ));
    assert!(matches!(
        ItemId::new("x".repeat(257)),
        Err(IndexError::InvalidItemId { len: 257, .. })
    ));
    let too_many: Vec<Item> = (0..10_001).map(|i| item(i, &[("a", &[1.0; 4])])).collect();
    assert!(matches!(
        store.upsert("c", &too_many),
        Err(IndexError::BatchTooLarge { .. })
    ));
    assert_nothing_written(&store);
}

#[test]
fn bad_searches_are_typed_errors() {
    let (_d, store) = store(StoreOptions::default());
    store.create_catalogue("c", &schema(&["a"], 4)).unwrap();
    store
        .upsert("c", &[item("ok", &[("a", &[1.0, 0.0, 0.0, 0.0])])])
        .unwrap();
    let q = vec![1.0, 0.0, 0.0, 0.0];
    for k in [0, 10_001] {
        let err = store
            .search("c", &SearchRequest::vector("a", q.clone(), k))
            .unwrap_err();
        assert!(matches!(err, IndexError::InvalidK { .. }), "{err}");
    }
    let err = store
        .search("c", &SearchRequest::vector("zzz", q.clone(), 1))
        .unwrap_err();
    assert!(matches!(err, IndexError::UnknownAttribute { .. }));
    let err = store
        .search("c", &SearchRequest::vector("a", vec![1.0; 3], 1))
        .unwrap_err();
    assert!(matches!(err, IndexError::DimensionMismatch { .. }));
    let err = store
        .search("c", &SearchRequest::vector("a", vec![f32::NAN; 4], 1))
        .unwrap_err();
    assert!(matches!(err, IndexError::NonFiniteVector { .. }));
    let err = store
        .search("nope", &SearchRequest::vector("a", q.clone(), 1))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let mut req = SearchRequest::vector("a", q.clone(), 1);
    req.ef_search = Some(0);
    assert!(matches!(
        store.search("c", &req),
        Err(IndexError::InvalidRequest { .. })
    ));
    let mut req = SearchRequest::vector("a", q, 1);
    req.filter = Some(serde_json::from_value(json!({"range": {"field": "p"}})).unwrap());
    assert!(matches!(
        store.search("c", &req),
        Err(IndexError::InvalidFilter { .. })
    ));
}

#[test]
fn bad_catalogues_are_rejected() {
    let (_d, store) = store(StoreOptions::default());
    let s = schema(&["a"], 4);
    for name in ["", "a/b", "ü", &"x".repeat(65)] {
        assert!(matches!(
            store.create_catalogue(name, &s),
            Err(IndexError::InvalidCatalogueName { .. })
        ));
    }
    assert!(matches!(
        store.create_catalogue("c", &schema(&["a"], 0)),
        Err(IndexError::InvalidSchema { .. })
    ));
    store.create_catalogue("c", &s).unwrap();
    assert_eq!(
        store.create_catalogue("c", &s).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    assert_eq!(
        store.drop_catalogue("x").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}
