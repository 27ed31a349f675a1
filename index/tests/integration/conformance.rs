//! The backend-neutral suite: every check takes `&dyn CatalogueStore`, so another backend
//! (Milvus) runs the same checks by calling [`run_all`] (or [`run_all_with`]) with its own store.

use std::panic::{catch_unwind, AssertUnwindSafe};

use asen_index::{
    CatalogueSchema, CatalogueStore, Durability, ErrorKind, SearchRequest, StoreOptions,
    VectorStorage,
};
use serde_json::json;

use crate::data::*;

/// What a check gets: the store, a catalogue name of its own, and the vector storage its
/// catalogues use.
pub struct Ctx<'a> {
    pub store: &'a dyn CatalogueStore,
    pub name: String,
    pub storage: VectorStorage,
}

impl Ctx<'_> {
    /// A schema with the suite's vector storage.
    fn schema(&self, attributes: &[&str], dim: usize) -> CatalogueSchema {
        schema(attributes, dim).with_storage(self.storage)
    }
}

type Check = fn(&Ctx);

/// Every check, by name (the name is also its catalogue's suffix).
const CHECKS: &[(&str, Check)] = &[
    ("life", lifecycle),
    ("items", items_round_trip),
    ("list", listing_pages),
    ("search", search_basics),
    ("storage", storage_is_as_created),
];

/// Runs every conformance check against a store with `f32` catalogues, using catalogue names
/// prefixed by `prefix`.
pub fn run_all(store: &dyn CatalogueStore, prefix: &str) {
    run_all_with(store, prefix, VectorStorage::F32);
}

/// Runs every check with catalogues of the given vector storage. A failing check does not stop
/// the others; the suite then fails naming every failed check.
pub fn run_all_with(store: &dyn CatalogueStore, prefix: &str, storage: VectorStorage) {
    let mut failed = Vec::new();
    for (name, check) in CHECKS {
        let cx = Ctx {
            store,
            name: format!("{prefix}_{name}"),
            storage,
        };
        if catch_unwind(AssertUnwindSafe(|| check(&cx))).is_err() {
            failed.push(*name);
        }
    }
    assert!(
        failed.is_empty(),
        "conformance checks failed ({storage:?} storage): {failed:?}"
    );
}

fn lifecycle(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    let s = cx.schema(&["collar", "colour"], 8);
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

fn items_round_trip(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    store
        .create_catalogue(name, &cx.schema(&["collar", "sleeve"], 4))
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

fn listing_pages(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    store.create_catalogue(name, &cx.schema(&["a"], 2)).unwrap();
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

fn search_basics(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    store.create_catalogue(name, &cx.schema(&["a"], 3)).unwrap();
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

/// The catalogue keeps the vector storage it was created with.
fn storage_is_as_created(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    store.create_catalogue(name, &cx.schema(&["a"], 4)).unwrap();
    assert_eq!(store.schema(name).unwrap().storage, cx.storage);
    let info = store.list_catalogues().unwrap();
    let mine = info.iter().find(|c| c.name == name).expect("listed");
    assert_eq!(mine.schema.storage, cx.storage);
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
        durability: Durability::Deferred,
        ..StoreOptions::default()
    };
    let (_d, store) = store(options);
    run_all_with(&store, "deferred", VectorStorage::Int8);
    // What the name promises: writes are acknowledged before a flush, and the graphs hold
    // one byte per component.
    store
        .create_catalogue(
            "int8",
            &schema(&["a"], 16).with_storage(VectorStorage::Int8),
        )
        .unwrap();
    let items: Vec<_> = (0..10)
        .map(|i| item(i, &[("a", &[1.0 + i as f32; 16][..])]))
        .collect();
    let receipt = store.upsert("int8", &items).unwrap();
    assert!(
        !receipt.durable,
        "deferred flush acknowledges before flushing"
    );
    let stats = store.stats("int8").unwrap();
    assert_eq!(stats.attributes[0].graph_points, 10);
    assert_eq!(
        stats.vector_bytes,
        10 * 16 * VectorStorage::Int8.bytes_per_component() as u64
    );
    store.flush().unwrap();
}
