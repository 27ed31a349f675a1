//! The backend-neutral suite: every check takes `&dyn CatalogueStore`, so another backend
//! (Milvus) runs the same checks by calling [`run_all`] (or [`run_all_with`]) with its own store.

use std::panic::{catch_unwind, AssertUnwindSafe};

use asen_index::{
    CatalogueSchema, CatalogueStore, Durability, ErrorKind, IndexError, ItemId, MatchValue,
    Migration, ModelRecord, Query, SchemaChange, SearchRequest, StagedAttribute, StoreOptions,
    VectorStorage, MAX_THUMBNAIL_BYTES,
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
    ("values", field_values_count_live_items),
    ("search", search_basics),
    ("storage", storage_is_as_created),
    ("model", model_record_is_kept),
    ("add_fill", added_attribute_is_filled_and_searchable),
    ("fill_skips", fill_skips_absent_and_present_items),
    ("fill_checks", fill_refuses_a_bad_batch_whole),
    ("drop_attr", dropped_attribute_loses_its_vectors_and_graph),
    ("rename_attr", renamed_attribute_keeps_vectors_and_graph),
    ("alter_atomic", failed_alteration_changes_nothing),
    (
        "alter_writes",
        writes_after_an_alteration_use_the_new_schema,
    ),
    ("alter_model", alteration_records_model_and_migration),
    ("thumb_rt", thumbnail_round_trip),
    ("thumb_replace", thumbnail_is_replaced_by_upsert),
    ("thumb_none", thumbnail_none_removes_the_stored_one),
    ("thumb_delete", thumbnail_is_removed_by_delete),
    ("thumb_drop", thumbnail_is_removed_by_drop_catalogue),
    ("thumb_flag", has_thumbnail_flag_in_get_and_list),
    ("thumb_unknown", thumbnail_of_unknown_catalogue_or_item),
    ("thumb_limits", thumbnail_too_large_or_empty_is_refused),
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

fn field_values_count_live_items(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    store.create_catalogue(name, &cx.schema(&["a"], 2)).unwrap();
    let payloads = [
        json!({"gender": "Men", "colour": "Black", "year": 2011, "tags": ["sale", "new"]}),
        json!({"gender": "Women", "colour": "Black", "year": 2012, "tags": ["sale", "sale"]}),
        json!({"gender": "Men", "colour": "Navy Blue", "year": 2011, "sold_out": true}),
        json!({"gender": "Men", "colour": {"not": "countable"}, "year": 2011.5}),
        json!({"product": {"brand": "acme"}}),
    ];
    let items: Vec<_> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut it = item(format!("i{i}"), &[("a", &[1.0, i as f32])]);
            it.payload = p.as_object().unwrap().clone();
            it
        })
        .collect();
    store.upsert(name, &items).unwrap();
    let pairs = |field: &str, limit: usize| {
        let v = store.field_values(name, field, limit).unwrap();
        let pairs: Vec<(MatchValue, u64)> = v
            .values
            .iter()
            .map(|x| (x.value.clone(), x.count))
            .collect();
        (pairs, v.items, v.truncated)
    };
    let kw = |s: &str| MatchValue::Keyword(s.to_string());
    assert_eq!(
        pairs("gender", 10),
        (vec![(kw("Men"), 3), (kw("Women"), 1)], 4, false)
    );
    assert_eq!(
        pairs("colour", 10),
        (vec![(kw("Black"), 2), (kw("Navy Blue"), 1)], 3, false),
        "an object value is not counted"
    );
    assert_eq!(
        pairs("year", 10),
        (
            vec![
                (MatchValue::Integer(2011), 2),
                (MatchValue::Integer(2012), 1)
            ],
            3,
            false
        ),
        "integers only: 2011.5 is not a value a match filter selects"
    );
    assert_eq!(
        pairs("tags", 10),
        (vec![(kw("sale"), 2), (kw("new"), 1)], 2, false),
        "array elements, once per item"
    );
    assert_eq!(
        pairs("sold_out", 10),
        (vec![(MatchValue::Bool(true), 1)], 1, false)
    );
    assert_eq!(
        pairs("product.brand", 10),
        (vec![(kw("acme"), 1)], 1, false)
    );
    assert_eq!(pairs("missing", 10), (vec![], 0, false));
    assert_eq!(
        pairs("gender", 1),
        (vec![(kw("Men"), 3)], 4, true),
        "the rarest value is left out"
    );
    // Deletes and replacements count at once.
    store.delete(name, &[id("i0")]).unwrap();
    let mut moved = items[1].clone();
    moved.payload = json!({"gender": "Men"}).as_object().unwrap().clone();
    store.upsert(name, &[moved]).unwrap();
    assert_eq!(pairs("gender", 10), (vec![(kw("Men"), 3)], 3, false));
    for limit in [0, asen_index::MAX_FIELD_VALUES + 1] {
        let e = store.field_values(name, "gender", limit).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "limit {limit}: {e}");
    }
    assert_eq!(
        store.field_values(name, "", 10).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
    assert_eq!(
        store
            .field_values(&format!("{name}_missing"), "gender", 10)
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
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

/// Distinct fake image bytes (the store never decodes them).
/// The model a catalogue was created with comes back from `schema` and `list_catalogues`, and
/// an invalid record is refused at creation.
fn model_record_is_kept(cx: &Ctx) {
    let (store, name) = (cx.store, cx.name.as_str());
    let record = ModelRecord {
        fingerprint: "00ff00ff00ff00ff".into(),
        backbone: "mobilenet_v2".into(),
        attributes: vec!["collar".into(), "colour".into(), "pattern".into()],
        input_size: 224,
    };
    let s = cx
        .schema(&["collar", "colour"], 8)
        .with_model(record.clone());
    store.create_catalogue(name, &s).unwrap();
    assert_eq!(store.schema(name).unwrap().model, Some(record.clone()));
    let listed = store.list_catalogues().unwrap();
    let info = listed.iter().find(|c| c.name == name).unwrap();
    assert_eq!(info.schema.model, Some(record.clone()));
    let bad = cx.schema(&["collar"], 8).with_model(ModelRecord {
        fingerprint: "not hex".into(),
        ..record
    });
    let other = format!("{name}_bad");
    assert!(matches!(
        store.create_catalogue(&other, &bad),
        Err(IndexError::InvalidSchema { .. })
    ));
    assert!(store.schema(&other).is_err());
    store.drop_catalogue(name).unwrap();
}

// --- Altering a catalogue: add, fill, drop, rename, model record ----------------------------

fn add(name: &str) -> SchemaChange {
    SchemaChange::AddAttribute { name: name.into() }
}

fn drop_attr(name: &str) -> SchemaChange {
    SchemaChange::DropAttribute { name: name.into() }
}

/// A catalogue `collar`, `sleeve` (dimension 4) with `x` (both), `y` (both) and `z` (collar
/// only).
fn altered_catalogue<'c>(cx: &'c Ctx) -> &'c str {
    let name = cx.name.as_str();
    cx.store
        .create_catalogue(name, &cx.schema(&["collar", "sleeve"], 4))
        .unwrap();
    let items = [
        item(
            "x",
            &[
                ("collar", &[1.0, 0.0, 0.0, 0.0]),
                ("sleeve", &[0.0, 1.0, 0.0, 0.0]),
            ],
        ),
        item(
            "y",
            &[
                ("collar", &[0.6, 0.8, 0.0, 0.0]),
                ("sleeve", &[0.0, 0.0, 1.0, 0.0]),
            ],
        ),
        item("z", &[("collar", &[0.0, 0.0, 0.0, 1.0])]),
    ];
    cx.store.upsert(name, &items).unwrap();
    name
}

fn vectors_of(
    store: &dyn CatalogueStore,
    name: &str,
    item: &str,
) -> std::collections::BTreeMap<String, Vec<f32>> {
    store
        .get(name, &id(item), true)
        .unwrap()
        .unwrap()
        .vectors
        .unwrap()
}

fn nearest(
    store: &dyn CatalogueStore,
    name: &str,
    attribute: &str,
    v: &[f32],
    k: usize,
) -> Vec<String> {
    let request = SearchRequest::new(
        Query::Vector {
            attribute: attribute.into(),
            vector: v.to_vec(),
        },
        k,
    );
    store
        .search(name, &request)
        .unwrap()
        .into_hits()
        .into_iter()
        .map(|h| h.id.to_string())
        .collect()
}

fn counts(store: &dyn CatalogueStore, name: &str) -> std::collections::BTreeMap<String, u64> {
    let all = store.list_catalogues().unwrap();
    all.into_iter()
        .find(|c| c.name == name)
        .unwrap()
        .attribute_counts
        .into_iter()
        .collect()
}

fn added_attribute_is_filled_and_searchable(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let before_x = vectors_of(store, name, "x");
    let before_z = vectors_of(store, name, "z");
    let schema = store.alter_catalogue(name, &[add("pattern")]).unwrap();
    assert_eq!(schema.attributes, ["collar", "sleeve", "pattern"]);
    assert_eq!(store.schema(name).unwrap(), schema);
    assert_eq!(counts(store, name)["pattern"], 0);
    let fill = [
        (id("x"), vec![0.0, 0.0, 2.0, 0.0]),
        (id("z"), vec![0.0, 3.0, 0.0, 0.0]),
    ];
    let r = store.fill_attribute(name, "pattern", &fill).unwrap();
    assert_eq!(r.affected, 2);
    let after_x = vectors_of(store, name, "x");
    assert_eq!(
        after_x["pattern"],
        vec![0.0, 0.0, 1.0, 0.0],
        "unit-normalised"
    );
    for a in ["collar", "sleeve"] {
        assert_eq!(
            after_x[a].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            before_x[a].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{a} bit-identical"
        );
    }
    assert_eq!(vectors_of(store, name, "z")["collar"], before_z["collar"]);
    assert_eq!(
        store
            .get(name, &id("x"), false)
            .unwrap()
            .unwrap()
            .attributes,
        ["collar", "sleeve", "pattern"]
    );
    assert_eq!(
        nearest(store, name, "pattern", &[0.0, 1.0, 0.0, 0.0], 5),
        ["z", "x"]
    );
    assert_eq!(counts(store, name)["pattern"], 2);
    assert_eq!(
        nearest(store, name, "collar", &[1.0, 0.0, 0.0, 0.0], 1),
        ["x"]
    );
    store.drop_catalogue(name).unwrap();
}

fn fill_skips_absent_and_present_items(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let sleeve_y = vectors_of(store, name, "y")["sleeve"].clone();
    let fill = [
        (id("y"), vec![1.0, 0.0, 0.0, 0.0]),
        (id("z"), vec![1.0, 0.0, 0.0, 0.0]),
        (id("ghost"), vec![1.0, 0.0, 0.0, 0.0]),
    ];
    let r = store.fill_attribute(name, "sleeve", &fill).unwrap();
    assert_eq!(r.affected, 1, "only z lacked sleeve");
    assert_eq!(
        vectors_of(store, name, "y")["sleeve"],
        sleeve_y,
        "y kept its own"
    );
    assert!(store.get(name, &id("ghost"), false).unwrap().is_none());
    assert_eq!(counts(store, name)["sleeve"], 3);
    store.drop_catalogue(name).unwrap();
}

fn fill_refuses_a_bad_batch_whole(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    store.alter_catalogue(name, &[add("pattern")]).unwrap();
    let twice = [
        (id("x"), vec![1.0, 0.0, 0.0, 0.0]),
        (id("x"), vec![0.0, 1.0, 0.0, 0.0]),
    ];
    let short = [
        (id("y"), vec![1.0, 0.0, 0.0, 0.0]),
        (id("z"), vec![1.0, 0.0]),
    ];
    for bad in [&twice[..], &short[..]] {
        let e = store.fill_attribute(name, "pattern", bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    }
    assert!(matches!(
        store.fill_attribute(name, "nope", &[(id("x"), vec![1.0, 0.0, 0.0, 0.0])]),
        Err(IndexError::UnknownAttribute { .. })
    ));
    assert_eq!(counts(store, name)["pattern"], 0, "nothing written");
    store.drop_catalogue(name).unwrap();
}

fn dropped_attribute_loses_its_vectors_and_graph(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let sleeve_x = vectors_of(store, name, "x")["sleeve"].clone();
    let schema = store.alter_catalogue(name, &[drop_attr("collar")]).unwrap();
    assert_eq!(schema.attributes, ["sleeve"]);
    let x = store.get(name, &id("x"), true).unwrap().unwrap();
    assert_eq!(x.attributes, ["sleeve"]);
    let vectors = x.vectors.unwrap();
    assert_eq!(vectors.len(), 1);
    assert_eq!(vectors["sleeve"], sleeve_x);
    let z = store.get(name, &id("z"), true).unwrap().unwrap();
    assert!(z.attributes.is_empty(), "z kept only collar");
    assert_eq!(store.count(name).unwrap(), 3, "items stay");
    let request = SearchRequest::new(
        Query::Vector {
            attribute: "collar".into(),
            vector: vec![1.0, 0.0, 0.0, 0.0],
        },
        3,
    );
    assert!(matches!(
        store.search(name, &request),
        Err(IndexError::UnknownAttribute { .. })
    ));
    assert_eq!(
        nearest(store, name, "sleeve", &[0.0, 0.0, 1.0, 0.0], 1),
        ["y"]
    );
    // A new attribute of the same name starts empty: nothing of the dropped one comes back.
    store.alter_catalogue(name, &[add("collar")]).unwrap();
    assert_eq!(counts(store, name)["collar"], 0);
    assert!(nearest(store, name, "collar", &[1.0, 0.0, 0.0, 0.0], 3).is_empty());
    store.drop_catalogue(name).unwrap();
}

fn renamed_attribute_keeps_vectors_and_graph(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let collar_y = vectors_of(store, name, "y")["collar"].clone();
    let rename = SchemaChange::RenameAttribute {
        from: "collar".into(),
        to: "neckline".into(),
    };
    let schema = store.alter_catalogue(name, &[rename]).unwrap();
    assert_eq!(schema.attributes, ["neckline", "sleeve"]);
    assert_eq!(vectors_of(store, name, "y")["neckline"], collar_y);
    assert_eq!(
        nearest(store, name, "neckline", &[0.0, 0.0, 0.0, 1.0], 1),
        ["z"]
    );
    assert_eq!(counts(store, name)["neckline"], 3);
    store.drop_catalogue(name).unwrap();
}

fn failed_alteration_changes_nothing(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let before = store.schema(name).unwrap();
    let e = store
        .alter_catalogue(name, &[add("pattern"), drop_attr("nope")])
        .unwrap_err();
    assert!(matches!(e, IndexError::UnknownAttribute { .. }), "{e}");
    let e = store
        .alter_catalogue(name, &[drop_attr("collar"), drop_attr("sleeve")])
        .unwrap_err();
    assert!(matches!(e, IndexError::InvalidSchema { .. }), "{e}");
    assert_eq!(store.schema(name).unwrap(), before);
    assert!(matches!(
        store.alter_catalogue(&format!("{name}_absent"), &[add("a")]),
        Err(IndexError::CatalogueNotFound { .. })
    ));
    store.drop_catalogue(name).unwrap();
}

fn writes_after_an_alteration_use_the_new_schema(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    store
        .alter_catalogue(name, &[drop_attr("collar"), add("pattern")])
        .unwrap();
    let new = item(
        "w",
        &[
            ("sleeve", &[0.0, 1.0, 0.0, 0.0]),
            ("pattern", &[1.0, 0.0, 0.0, 0.0]),
        ],
    );
    store.upsert(name, &[new]).unwrap();
    let old = item("v", &[("collar", &[1.0, 0.0, 0.0, 0.0])]);
    assert!(matches!(
        store.upsert(name, &[old]),
        Err(IndexError::UnknownAttribute { .. })
    ));
    assert_eq!(
        nearest(store, name, "pattern", &[1.0, 0.0, 0.0, 0.0], 3),
        ["w"]
    );
    assert_eq!(store.delete(name, &[id("x")]).unwrap().affected, 1);
    assert_eq!(
        nearest(store, name, "sleeve", &[0.0, 1.0, 0.0, 0.0], 5),
        ["w", "y"]
    );
    store.drop_catalogue(name).unwrap();
}

fn alteration_records_model_and_migration(cx: &Ctx) {
    let (store, name) = (cx.store, altered_catalogue(cx));
    let record = |fingerprint: &str| ModelRecord {
        fingerprint: fingerprint.into(),
        backbone: "mobilenet_v2".into(),
        attributes: vec!["collar".into(), "sleeve".into()],
        input_size: 224,
    };
    let migration = Migration {
        target: record("bb"),
        staged: vec![StagedAttribute {
            attribute: "collar".into(),
            staging: "collar~next".into(),
        }],
    };
    store
        .alter_catalogue(
            name,
            &[
                SchemaChange::SetModel {
                    model: Some(record("aa")),
                },
                add("collar~next"),
                SchemaChange::SetMigration {
                    migration: Some(migration.clone()),
                },
            ],
        )
        .unwrap();
    let schema = store.schema(name).unwrap();
    assert_eq!(schema.model, Some(record("aa")));
    assert_eq!(schema.migration, Some(migration));
    // The switch: the staged attribute takes the place of the old one, in one step.
    store
        .fill_attribute(name, "collar~next", &[(id("x"), vec![0.0, 0.0, 0.0, 1.0])])
        .unwrap();
    let switched = store
        .alter_catalogue(
            name,
            &[
                SchemaChange::SetMigration { migration: None },
                drop_attr("collar"),
                SchemaChange::RenameAttribute {
                    from: "collar~next".into(),
                    to: "collar".into(),
                },
                SchemaChange::SetModel {
                    model: Some(record("bb")),
                },
            ],
        )
        .unwrap();
    assert_eq!(switched.attributes, ["sleeve", "collar"]);
    assert_eq!(switched.migration, None);
    assert_eq!(store.schema(name).unwrap().model, Some(record("bb")));
    assert_eq!(
        vectors_of(store, name, "x")["collar"],
        vec![0.0, 0.0, 0.0, 1.0]
    );
    assert_eq!(counts(store, name)["collar"], 1);
    store.drop_catalogue(name).unwrap();
}

fn jpeg(seed: u8, len: usize) -> Vec<u8> {
    let mut b = vec![0xFF, 0xD8];
    b.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    b
}

fn thumbnail_catalogue<'c>(cx: &'c Ctx) -> &'c str {
    cx.store
        .create_catalogue(&cx.name, &cx.schema(&["a", "b"], 3))
        .unwrap();
    &cx.name
}

fn thumbnail_of(store: &dyn CatalogueStore, name: &str, item: &str) -> Option<Vec<u8>> {
    store.thumbnail(name, &id(item)).unwrap()
}

fn thumbnail_round_trip(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let big = jpeg(1, 200_000);
    let small = jpeg(2, 10);
    store
        .upsert(
            name,
            &[
                item("x", &[("a", &[1.0, 0.0, 0.0])]).with_thumbnail(big.clone()),
                item("y", &[("b", &[0.0, 1.0, 0.0])]).with_thumbnail(small.clone()),
                item("z", &[("a", &[0.0, 0.0, 1.0])]),
            ],
        )
        .unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), Some(big));
    assert_eq!(thumbnail_of(store, name, "y"), Some(small));
    assert_eq!(thumbnail_of(store, name, "z"), None);
    // The largest accepted thumbnail round-trips too.
    let max = jpeg(3, MAX_THUMBNAIL_BYTES - 2);
    store
        .upsert(
            name,
            &[item("m", &[("a", &[1.0, 1.0, 0.0])]).with_thumbnail(max.clone())],
        )
        .unwrap();
    assert_eq!(thumbnail_of(store, name, "m"), Some(max));
    // A thumbnail does not disturb the rest of the item, nor search.
    let got = store.get(name, &id("x"), true).unwrap().unwrap();
    assert_eq!(got.vectors.unwrap()["a"], vec![1.0, 0.0, 0.0]);
    let hits = store
        .search(name, &SearchRequest::vector("a", vec![1.0, 0.0, 0.0], 1))
        .unwrap()
        .into_hits();
    assert_eq!(hits[0].id.as_str(), "x");
    store.flush().unwrap();
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_is_replaced_by_upsert(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(name, &[item("x", &[("a", v)]).with_thumbnail(jpeg(1, 50))])
        .unwrap();
    store
        .upsert(name, &[item("x", &[("a", v)]).with_thumbnail(jpeg(2, 70))])
        .unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), Some(jpeg(2, 70)));
    // Within one batch the last occurrence of an id wins, thumbnail included.
    store
        .upsert(
            name,
            &[
                item("x", &[("a", v)]).with_thumbnail(jpeg(3, 10)),
                item("x", &[("a", v)]).with_thumbnail(jpeg(4, 20)),
            ],
        )
        .unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), Some(jpeg(4, 20)));
    store
        .upsert(
            name,
            &[
                item("x", &[("a", v)]).with_thumbnail(jpeg(5, 10)),
                item("x", &[("a", v)]),
            ],
        )
        .unwrap();
    assert_eq!(
        thumbnail_of(store, name, "x"),
        None,
        "last occurrence has none"
    );
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_none_removes_the_stored_one(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(
            name,
            &[
                item("x", &[("a", v)]).with_thumbnail(jpeg(1, 50)),
                item("y", &[("a", v)]).with_thumbnail(jpeg(2, 50)),
            ],
        )
        .unwrap();
    store.upsert(name, &[item("x", &[("b", v)])]).unwrap();
    assert_eq!(
        thumbnail_of(store, name, "x"),
        None,
        "an update without one removes it"
    );
    assert!(
        !store
            .get(name, &id("x"), false)
            .unwrap()
            .unwrap()
            .has_thumbnail
    );
    assert_eq!(
        thumbnail_of(store, name, "y"),
        Some(jpeg(2, 50)),
        "others kept"
    );
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_is_removed_by_delete(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(
            name,
            &[
                item("x", &[("a", v)]).with_thumbnail(jpeg(1, 50)),
                item("y", &[("a", v)]).with_thumbnail(jpeg(2, 50)),
            ],
        )
        .unwrap();
    assert_eq!(store.delete(name, &[id("x")]).unwrap().affected, 1);
    assert_eq!(thumbnail_of(store, name, "x"), None);
    assert_eq!(thumbnail_of(store, name, "y"), Some(jpeg(2, 50)));
    // Re-created without a thumbnail: the deleted one does not come back.
    store.upsert(name, &[item("x", &[("a", v)])]).unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), None);
    assert!(
        !store
            .get(name, &id("x"), false)
            .unwrap()
            .unwrap()
            .has_thumbnail
    );
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_is_removed_by_drop_catalogue(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(name, &[item("x", &[("a", v)]).with_thumbnail(jpeg(1, 50))])
        .unwrap();
    // A catalogue whose name extends this one's keeps its own thumbnails.
    let other = format!("{name}2");
    store
        .create_catalogue(&other, &cx.schema(&["a"], 3))
        .unwrap();
    store
        .upsert(
            &other,
            &[item("x", &[("a", v)]).with_thumbnail(jpeg(2, 50))],
        )
        .unwrap();
    store.drop_catalogue(name).unwrap();
    assert_eq!(
        store.thumbnail(name, &id("x")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(thumbnail_of(store, &other, "x"), Some(jpeg(2, 50)));
    // The name re-created: empty, no thumbnail of the dropped catalogue's item.
    store.create_catalogue(name, &cx.schema(&["a"], 3)).unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), None);
    store.upsert(name, &[item("x", &[("a", v)])]).unwrap();
    assert_eq!(thumbnail_of(store, name, "x"), None);
    store.drop_catalogue(name).unwrap();
    store.drop_catalogue(&other).unwrap();
}

fn has_thumbnail_flag_in_get_and_list(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(
            name,
            &[
                item("with", &[("a", v)]).with_thumbnail(jpeg(1, 50)),
                item("without", &[("a", v)]),
            ],
        )
        .unwrap();
    for with_vectors in [false, true] {
        let get = |i: &str| store.get(name, &id(i), with_vectors).unwrap().unwrap();
        assert!(get("with").has_thumbnail);
        assert!(!get("without").has_thumbnail);
    }
    let page = store.list(name, None, 10).unwrap();
    let flags: Vec<(&str, bool)> = page
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.has_thumbnail))
        .collect();
    assert_eq!(flags, [("with", true), ("without", false)]);
    // The flag is in the JSON the service sends; JSON without it still reads (as false).
    let mut json = serde_json::to_value(&page.items[0]).unwrap();
    assert_eq!(json["has_thumbnail"], true);
    json.as_object_mut().unwrap().remove("has_thumbnail");
    let old: asen_index::StoredItem = serde_json::from_value(json).unwrap();
    assert!(!old.has_thumbnail);
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_of_unknown_catalogue_or_item(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let missing = format!("{name}_missing");
    let e = store.thumbnail(&missing, &id("x")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(matches!(e, IndexError::CatalogueNotFound { .. }), "{e}");
    assert_eq!(thumbnail_of(store, name, "nobody"), None);
    store.drop_catalogue(name).unwrap();
}

fn thumbnail_too_large_or_empty_is_refused(cx: &Ctx) {
    let (store, name) = (cx.store, thumbnail_catalogue(cx));
    let v: &[f32] = &[1.0, 0.0, 0.0];
    store
        .upsert(name, &[item("ok", &[("a", v)]).with_thumbnail(jpeg(1, 50))])
        .unwrap();
    let sequence = store.stats(name).unwrap().sequence;
    let e = store
        .upsert(
            name,
            &[
                item("fine", &[("a", v)]).with_thumbnail(jpeg(2, 50)),
                item("huge", &[("a", v)]).with_thumbnail(vec![0; MAX_THUMBNAIL_BYTES + 1]),
            ],
        )
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("\"huge\""), "names the item: {e}");
    let e = store
        .upsert(name, &[item("ok", &[("a", v)]).with_thumbnail(Vec::new())])
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(e.to_string().contains("\"ok\""), "names the item: {e}");
    // Nothing of the refused batches was written.
    assert_eq!(store.stats(name).unwrap().sequence, sequence);
    assert!(store.get(name, &id("fine"), false).unwrap().is_none());
    assert_eq!(thumbnail_of(store, name, "fine"), None);
    assert_eq!(thumbnail_of(store, name, "ok"), Some(jpeg(1, 50)));
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

/// A store that keeps the provided [`CatalogueStore::field_values`] (paging through `list`):
/// every other method is the local store's.
struct ProvidedFieldValues<'a>(&'a dyn CatalogueStore);

impl CatalogueStore for ProvidedFieldValues<'_> {
    fn create_catalogue(&self, name: &str, schema: &CatalogueSchema) -> asen_index::Result<()> {
        self.0.create_catalogue(name, schema)
    }
    fn drop_catalogue(&self, name: &str) -> asen_index::Result<()> {
        self.0.drop_catalogue(name)
    }
    fn list_catalogues(&self) -> asen_index::Result<Vec<asen_index::CatalogueInfo>> {
        self.0.list_catalogues()
    }
    fn schema(&self, catalogue: &str) -> asen_index::Result<CatalogueSchema> {
        self.0.schema(catalogue)
    }
    fn alter_catalogue(
        &self,
        catalogue: &str,
        changes: &[SchemaChange],
    ) -> asen_index::Result<CatalogueSchema> {
        self.0.alter_catalogue(catalogue, changes)
    }
    fn fill_attribute(
        &self,
        catalogue: &str,
        attribute: &str,
        vectors: &[(ItemId, Vec<f32>)],
    ) -> asen_index::Result<asen_index::WriteReceipt> {
        self.0.fill_attribute(catalogue, attribute, vectors)
    }
    fn upsert(
        &self,
        catalogue: &str,
        items: &[asen_index::Item],
    ) -> asen_index::Result<asen_index::WriteReceipt> {
        self.0.upsert(catalogue, items)
    }
    fn delete(
        &self,
        catalogue: &str,
        ids: &[asen_index::ItemId],
    ) -> asen_index::Result<asen_index::WriteReceipt> {
        self.0.delete(catalogue, ids)
    }
    fn get(
        &self,
        catalogue: &str,
        id: &asen_index::ItemId,
        with_vectors: bool,
    ) -> asen_index::Result<Option<asen_index::StoredItem>> {
        self.0.get(catalogue, id, with_vectors)
    }
    fn thumbnail(
        &self,
        catalogue: &str,
        id: &asen_index::ItemId,
    ) -> asen_index::Result<Option<Vec<u8>>> {
        self.0.thumbnail(catalogue, id)
    }
    fn list(
        &self,
        catalogue: &str,
        after: Option<&asen_index::ItemId>,
        limit: usize,
    ) -> asen_index::Result<asen_index::ItemPage> {
        self.0.list(catalogue, after, limit)
    }
    fn count(&self, catalogue: &str) -> asen_index::Result<u64> {
        self.0.count(catalogue)
    }
    fn search(
        &self,
        catalogue: &str,
        request: &SearchRequest,
    ) -> asen_index::Result<asen_index::SearchResults> {
        self.0.search(catalogue, request)
    }
    fn stats(&self, catalogue: &str) -> asen_index::Result<asen_index::CatalogueStats> {
        self.0.stats(catalogue)
    }
    fn flush(&self) -> asen_index::Result<()> {
        self.0.flush()
    }
}

#[test]
fn the_provided_field_values_passes_the_same_check() {
    let (_d, store) = store(StoreOptions::default());
    let provided = ProvidedFieldValues(&store);
    field_values_count_live_items(&Ctx {
        store: &provided,
        name: "provided_values".into(),
        storage: VectorStorage::F32,
    });
}
