//! The backend-neutral suite: every function takes `&dyn CatalogueStore`, so another backend
//! (Milvus) runs the same checks by calling [`run_all`] with its own store.

use asen_index::{CatalogueStore, ErrorKind, SearchRequest, StoreOptions};
use serde_json::json;

use crate::data::*;

/// Runs every conformance check against a store, using catalogues prefixed by `prefix`.
pub fn run_all(store: &dyn CatalogueStore, prefix: &str) {
    lifecycle(store, &format!("{prefix}_life"));
    items_round_trip(store, &format!("{prefix}_items"));
    listing_pages(store, &format!("{prefix}_list"));
    search_basics(store, &format!("{prefix}_search"));
}

fn lifecycle(store: &dyn CatalogueStore, name: &str) {
    let s = schema(&["collar", "colour"], 8);
    store.create_catalogue(name, &s).unwrap();
    assert_eq!(store.schema(name).unwrap(), s);
    let info = store.list_catalogues().unwrap();
    let mine = info.iter().find(|c| c.name == name).expect("listed");
    assert_eq!(mine.items, 0);
    assert_eq!(mine.attribute_counts.len(), 2);
    assert_eq!(
        store.create_catalogue(name, &s).unwrap_err().kind(),
        ErrorKind::Conflict
    );
    store.drop_catalogue(name).unwrap();
    assert_eq!(store.count(name).unwrap_err().kind(), ErrorKind::NotFound);
    assert!(store
        .list_catalogues()
        .unwrap()
        .iter()
        .all(|c| c.name != name));
    // a dropped name can be reused, empty
    store.create_catalogue(name, &s).unwrap();
    assert_eq!(store.count(name).unwrap(), 0);
    store.drop_catalogue(name).unwrap();
}

fn items_round_trip(store: &dyn CatalogueStore, name: &str) {
    store
        .create_catalogue(name, &schema(&["collar", "sleeve"], 4))
        .unwrap();
    let mut shoe = item("shoe-1", &[("collar", &[1.0, 0.0, 0.0, 0.0])]);
    shoe.payload = json!({"brand": "acme"}).as_object().unwrap().clone();
    shoe.content_hash = Some("sha256:abc".into());
    let shirt = item(
        "shirt-1",
        &[
            ("collar", &[0.0, 2.0, 0.0, 0.0]),
            ("sleeve", &[0.0, 0.0, 3.0, 0.0]),
        ],
    );
    let r = store.upsert(name, &[shoe.clone(), shirt]).unwrap();
    assert_eq!(r.affected, 2);
    let got = store.get(name, &id("shoe-1"), true).unwrap().unwrap();
    assert_eq!(got.payload, shoe.payload);
    assert_eq!(got.content_hash.as_deref(), Some("sha256:abc"));
    assert_eq!(got.attributes, vec!["collar".to_string()]);
    assert_eq!(got.vectors.unwrap()["collar"], vec![1.0, 0.0, 0.0, 0.0]);
    let shirt = store.get(name, &id("shirt-1"), true).unwrap().unwrap();
    assert_eq!(
        shirt.vectors.unwrap()["sleeve"],
        vec![0.0, 0.0, 1.0, 0.0],
        "stored unit-normalised"
    );
    let info = store.list_catalogues().unwrap();
    let mine = info.iter().find(|c| c.name == name).unwrap();
    assert_eq!(mine.attribute_counts["collar"], 2);
    assert_eq!(mine.attribute_counts["sleeve"], 1);
    // replace keeps the count, changes the payload
    let mut shoe2 = shoe.clone();
    shoe2.payload = json!({"brand": "other"}).as_object().unwrap().clone();
    let r2 = store.upsert(name, &[shoe2]).unwrap();
    assert!(r2.sequence > r.sequence);
    assert_eq!(store.count(name).unwrap(), 2);
    assert_eq!(
        store
            .get(name, &id("shoe-1"), false)
            .unwrap()
            .unwrap()
            .payload["brand"],
        "other"
    );
    assert_eq!(
        store
            .delete(name, &[id("shoe-1"), id("missing")])
            .unwrap()
            .affected,
        1
    );
    assert!(store.get(name, &id("shoe-1"), false).unwrap().is_none());
    assert_eq!(store.count(name).unwrap(), 1);
    store.flush().unwrap();
    store.drop_catalogue(name).unwrap();
}

fn listing_pages(store: &dyn CatalogueStore, name: &str) {
    store.create_catalogue(name, &schema(&["a"], 2)).unwrap();
    let items: Vec<_> = (0..25)
        .map(|i| item(format!("{i:03}"), &[("a", &[1.0, i as f32])]))
        .collect();
    store.upsert(name, &items).unwrap();
    let mut after = None;
    let mut seen = Vec::new();
    loop {
        let page = store.list(name, after.as_ref(), 10).unwrap();
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|i| i.id.to_string()));
        match page.next_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("{i:03}")).collect();
    assert_eq!(seen, expected);
    assert!(store.list(name, None, 0).is_err());
    store.drop_catalogue(name).unwrap();
}

fn search_basics(store: &dyn CatalogueStore, name: &str) {
    store.create_catalogue(name, &schema(&["a"], 3)).unwrap();
    let items = vec![
        item("x", &[("a", &[1.0, 0.0, 0.0])]),
        item("y", &[("a", &[0.0, 1.0, 0.0])]),
        item("xy", &[("a", &[1.0, 1.0, 0.0])]),
    ];
    store.upsert(name, &items).unwrap();
    let hits = store
        .search(name, &SearchRequest::vector("a", vec![2.0, 0.1, 0.0], 3))
        .unwrap()
        .into_hits();
    let ids: Vec<&str> = hits.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["x", "xy", "y"]);
    assert!(hits[0].score > 0.99 && hits[0].score <= 1.0001);
    assert!(hits[0].payload.is_none());
    let mut req = SearchRequest::vector("a", vec![1.0, 0.0, 0.0], 3);
    req.score_threshold = Some(0.5);
    req.with_payload = true;
    let hits = store.search(name, &req).unwrap().into_hits();
    assert_eq!(hits.len(), 2, "threshold drops y (score 0)");
    assert!(hits[0].payload.is_some());
    let stats = store.stats(name).unwrap();
    assert_eq!(stats.items, 3);
    assert_eq!(stats.attributes[0].live, 3);
    store.drop_catalogue(name).unwrap();
}

#[test]
fn local_store_passes_the_conformance_suite() {
    let (_d, store) = store(StoreOptions::default());
    let dyn_store: &dyn CatalogueStore = &store;
    run_all(dyn_store, "local");
}

#[test]
fn local_store_with_deferred_flush_and_int8_passes_too() {
    let options = StoreOptions {
        durability: asen_index::Durability::Deferred,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    run_all(&store, "deferred");
}
