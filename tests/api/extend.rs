//! A catalogue built with a model takes a new attribute from a model that extends it
//! (`asen train --extend`): only the new attribute's vectors are computed, the others stay
//! bit-identical, and the catalogue records the extension afterwards. The base is the shipped
//! model without `pattern`, the extension the shipped model naming that base
//! (tests/common/extended.rs).

use std::path::PathBuf;
use std::sync::OnceLock;

use asen::service::{Model, Models};
use serde_json::{json, Value};

use crate::lifecycle::wait_for_reindex;
use crate::server::*;

#[path = "../common/extended.rs"]
mod extended;

/// `base/` and `ext/`, written once per test binary, and the attribute `ext` adds.
pub(crate) fn models_dir() -> &'static (tempfile::TempDir, String) {
    static DIR: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let added = extended::write_base(&dir.path().join("base"));
        extended::write_extension(&dir.path().join("base"), &dir.path().join("ext"));
        (dir, added)
    })
}

/// `base` or `ext` of [`models_dir`], or `shipped`.
fn model_path(name: &str) -> PathBuf {
    match name {
        "shipped" => extended::shipped(),
        _ => models_dir().0.path().join(name),
    }
}

fn load(config: &asen::config::Config, name: &str) -> Model {
    Model::load(
        &model_path(name),
        &asen::commands::embedder_options(config).unwrap(),
    )
    .unwrap_or_else(|e| panic!("load {name}: {e:#}"))
}

pub(crate) fn fingerprint(name: &str) -> String {
    asen_models::fingerprint(&model_path(name)).unwrap()
}

/// A server whose default model is `default`, also holding `also`.
fn served(default: &str, also: &[&str]) -> Option<TestServer> {
    served_on(None, default, also)
}

/// [`served`] over the store `store` names (a `milvus://` URL), or a local one.
pub(crate) fn served_on(store: Option<&str>, default: &str, also: &[&str]) -> Option<TestServer> {
    let (default, also): (String, Vec<String>) =
        (default.into(), also.iter().map(|s| s.to_string()).collect());
    let models = move |config: &asen::config::Config, _suite| {
        let mut models = Models::new(load(config, &default), 1);
        for name in &also {
            models.add(load(config, name));
        }
        models
    };
    match store {
        Some(store) => TestServer::start_on_with_models(store, models),
        None => TestServer::start_with_models(models),
    }
}

/// Catalogue `shop` with three photos, built by the server's default model.
fn shop(s: &TestServer) {
    catalogue_of_three(s, "shop");
}

/// Catalogue `name` (created afresh) with three photos, built by the server's default model.
pub(crate) fn catalogue_of_three(s: &TestServer, name: &str) {
    let _ = s.call("DELETE", &format!("/v1/catalogues/{name}"), W, None);
    ok(
        &s.call("PUT", &format!("/v1/catalogues/{name}"), W, None),
        "create",
    );
    let items: Vec<Value> = NAMES[..3]
        .iter()
        .map(|n| json!({"id": n, "image": b64(&s.image(n))}))
        .collect();
    ok(
        &s.call(
            "PUT",
            &format!("/v1/catalogues/{name}/items"),
            W,
            Some(&json!({ "items": items })),
        ),
        "upsert",
    );
}

fn vectors(s: &TestServer, id: &str) -> Value {
    vectors_in(s, "shop", id)
}

/// The stored vectors of item `id` of `catalogue`, by attribute.
pub(crate) fn vectors_in(s: &TestServer, catalogue: &str, id: &str) -> Value {
    ok(
        &s.call(
            "GET",
            &format!("/v1/catalogues/{catalogue}/items/{id}?with_vectors=true"),
            R,
            None,
        ),
        "item",
    )["vectors"]
        .clone()
}

pub(crate) fn bits(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| (x.as_f64().unwrap() as f32).to_bits())
        .collect()
}

/// The status of an addition that started (202).
pub(crate) fn started(reply: &Reply) -> Value {
    assert_eq!(reply.status, 202, "{}", reply.body);
    reply.body["result"].clone()
}

fn add(s: &TestServer, body: Value) -> Reply {
    s.call("POST", "/v1/catalogues/shop/attributes", W, Some(&body))
}

#[test]
fn an_extension_adds_its_attribute_and_leaves_the_others_bit_identical() {
    let Some(s) = served("base", &["ext"]) else {
        return;
    };
    let added = &models_dir().1;
    shop(&s);
    let before = vectors(&s, NAMES[0]);
    let status = started(&add(&s, json!({ "name": added })));
    assert_eq!(status["target"], fingerprint("ext").as_str());
    wait_for_reindex(&s, "shop");
    let after = vectors(&s, NAMES[0]);
    let base_attributes = before.as_object().unwrap();
    assert_eq!(base_attributes.len() + 1, after.as_object().unwrap().len());
    for (a, v) in base_attributes {
        assert_eq!(bits(v), bits(&after[a]), "{a} bit-identical");
    }
    assert!(after.get(added.as_str()).is_some(), "{after}");
}

#[test]
fn after_the_addition_the_catalogue_records_the_extension() {
    let Some(s) = served("base", &["ext"]) else {
        return;
    };
    shop(&s);
    started(&add(&s, json!({ "name": models_dir().1 })));
    wait_for_reindex(&s, "shop");
    let details = ok(&s.call("GET", "/v1/catalogues/shop", R, None), "details");
    assert_eq!(
        details["schema"]["model"]["fingerprint"],
        fingerprint("ext").as_str()
    );
    assert_eq!(details["schema"]["attributes"].as_array().unwrap().len(), 9);
}

/// The added attribute is searched by image with the extension, and finds the photo itself.
#[test]
fn the_added_attribute_is_searched_by_image() {
    let Some(s) = served("base", &["ext"]) else {
        return;
    };
    let added = &models_dir().1;
    shop(&s);
    started(&add(&s, json!({ "name": added })));
    wait_for_reindex(&s, "shop");
    let reply = s.call(
        "POST",
        "/v1/catalogues/shop/search",
        R,
        Some(&json!({"attribute": added, "image": b64(&s.image(NAMES[1])), "k": 1})),
    );
    let answer = ok(&reply, "search the added attribute");
    assert_eq!(answer["hits"][0]["id"], NAMES[1]);
    // The added vectors come from the stored JPEG crop, the query from the original.
    assert!(
        answer["hits"][0]["score"].as_f64().unwrap() > 0.9,
        "{answer}"
    );
    assert_eq!(reply.body["model"], fingerprint("ext").as_str());
}

/// A server holding only the extension serves a catalogue its base built: image queries are
/// embedded by the extension, which computes the base's attributes exactly as the base does.
#[test]
fn a_server_holding_only_the_extension_serves_a_catalogue_of_its_base() {
    let Some(first) = served("base", &[]) else {
        return;
    };
    shop(&first);
    let stored = vectors(&first, NAMES[2]);
    let s = first.restarted_with_models(|config, _suite| Models::new(load(config, "ext"), 1));
    drop(first);
    let reply = s.call(
        "POST",
        "/v1/catalogues/shop/search",
        R,
        Some(&json!({"attribute": "articleType", "image": b64(&s.image(NAMES[2])), "k": 1})),
    );
    let answer = ok(&reply, "image search with the extension");
    assert_eq!(reply.body["model"], fingerprint("ext").as_str());
    assert_eq!(answer["hits"][0]["id"], NAMES[2]);
    assert!(
        answer["hits"][0]["score"].as_f64().unwrap() > 0.999,
        "{answer}"
    );
    assert_eq!(
        bits(&stored["articleType"]),
        bits(&vectors(&s, NAMES[2])["articleType"])
    );
}

/// The shipped model has the attribute but does not extend the catalogue's model.
#[test]
fn a_named_model_that_does_not_extend_the_catalogues_is_422() {
    let Some(s) = served("base", &["shipped"]) else {
        return;
    };
    shop(&s);
    let reply = add(
        &s,
        json!({ "name": models_dir().1, "model": fingerprint("shipped") }),
    );
    expect_error(&reply, 422, "does not extend model", "not an extension");
}

#[test]
fn without_an_extension_held_adding_is_422() {
    let Some(s) = served("base", &["shipped"]) else {
        return;
    };
    shop(&s);
    let reply = add(&s, json!({ "name": models_dir().1 }));
    expect_error(&reply, 422, "no model held here extends it", "no extension");
}

#[test]
fn a_named_model_not_held_is_409() {
    let Some(s) = served("base", &["ext"]) else {
        return;
    };
    shop(&s);
    let reply = add(
        &s,
        json!({ "name": models_dir().1, "model": "0123456789abcdef" }),
    );
    expect_error(&reply, 409, "not loaded", "a model not held");
}
