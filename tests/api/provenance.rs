//! Which model built what: a catalogue records its model, answers name the model they were
//! computed with, and a request that would embed with another model than the catalogue's is
//! refused (409) naming both.

use std::sync::Arc;

use asen::service::{Model, Models};
use serde_json::{json, Value};

use crate::server::*;

/// Another model: the suite's network under another fingerprint, as a retrained model
/// would be (its vectors must not be mixed with the suite model's).
const OTHER: &str = "0123456789abcdef";

fn other_model(config: &asen::config::Config) -> Model {
    let embedder = asen_models::Embedder::load(
        config.model.path.as_ref().expect("the suite's model path"),
        &asen::commands::embedder_options(config).unwrap(),
    )
    .expect("load the checkpoint again");
    Model::new(OTHER.to_string(), embedder)
}

/// The seeded catalogue served by a server that holds only [`OTHER`].
fn served_by_another_model() -> Option<TestServer> {
    TestServer::seeded_with_models(|config, _suite| {
        Models::new(other_model(config), config.server.max_concurrent_forwards)
    })
}

/// The seeded catalogue served by a server whose default is [`OTHER`] and which also holds
/// the suite's model, the one that built `shirts`.
fn served_by_both() -> Option<TestServer> {
    TestServer::seeded_with_models(|config, suite: Arc<Model>| {
        let mut models = Models::new(other_model(config), config.server.max_concurrent_forwards);
        models.add_shared(suite);
        models
    })
}

fn suite_fingerprint(s: &TestServer) -> String {
    let model = ok(&s.call("GET", "/v1/model", R, None), "model");
    model["fingerprint"].as_str().unwrap().to_string()
}

fn image_search(s: &TestServer) -> Value {
    json!({"attribute": "attr_0", "image": b64(&s.image("10030.jpg")), "k": 3})
}

#[test]
fn a_new_catalogue_records_the_model_that_built_it() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let fingerprint = suite_fingerprint(&s);
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    let record = &details["schema"]["model"];
    assert_eq!(record["fingerprint"], fingerprint.as_str());
    assert_eq!(record["input_size"], 224);
    let attributes: Vec<&str> = record["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        attributes,
        (0..8).map(|i| format!("attr_{i}")).collect::<Vec<_>>()
    );
}

#[test]
fn search_answers_name_the_catalogues_model() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let fingerprint = suite_fingerprint(&s);
    let by_image = s.call("POST", SEARCH, R, Some(&image_search(&s)));
    ok(&by_image, "by image");
    assert_eq!(by_image.body["model"], fingerprint.as_str());
    let by_item = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 3})),
    );
    ok(&by_item, "by item");
    assert_eq!(by_item.body["model"], fingerprint.as_str());
}

#[test]
fn compare_copies_and_explain_answers_name_the_model() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let fingerprint = suite_fingerprint(&s);
    let compare = s.call(
        "POST",
        "/v1/compare",
        R,
        Some(&json!({"a": {"image": b64(&s.image("10002.jpg"))},
                     "b": {"catalogue": "shirts", "item_id": "10030.jpg"}})),
    );
    ok(&compare, "compare");
    assert_eq!(compare.body["model"], fingerprint.as_str());
    let copies = s.call(
        "POST",
        "/v1/catalogues/shirts/copies",
        R,
        Some(&json!({"item_id": "10002.jpg", "threshold": 0.5})),
    );
    ok(&copies, "copies");
    assert_eq!(copies.body["model"], fingerprint.as_str());
    let item = json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"});
    let explain = s.call("POST", "/v1/explain", R, Some(&item));
    ok(&explain, "explain");
    assert_eq!(explain.body["model"], fingerprint.as_str());
    let heatmap = s.call("POST", "/v1/explain/heatmap", R, Some(&item));
    assert_eq!(heatmap.status, 200);
    assert_eq!(heatmap.model.as_deref(), Some(fingerprint.as_str()));
}

#[test]
fn an_image_query_with_another_model_is_409_naming_both() {
    let Some(s) = served_by_another_model() else {
        return;
    };
    let reply = s.call("POST", SEARCH, R, Some(&image_search(&s)));
    assert_eq!(reply.status, 409, "{}", reply.body);
    let error = reply.error();
    let built_with = s
        .state
        .service
        .store("test")
        .unwrap()
        .schema("shirts")
        .unwrap()
        .model
        .unwrap()
        .fingerprint;
    assert!(error.contains(&built_with), "{error}");
    assert!(error.contains(OTHER), "{error}");
}

#[test]
fn an_item_query_with_another_model_still_answers_from_stored_vectors() {
    let Some(s) = served_by_another_model() else {
        return;
    };
    let reply = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 3})),
    );
    ok(&reply, "by item");
    assert_ne!(reply.body["model"], OTHER, "named by the catalogue's model");
}

#[test]
fn an_upsert_with_another_model_is_409_and_writes_nothing() {
    let Some(s) = served_by_another_model() else {
        return;
    };
    let body = json!({"items": [{"id": "new", "image": b64(&s.image("10030.jpg"))}]});
    let reply = s.call("PUT", "/v1/catalogues/shirts/items", W, Some(&body));
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.error().contains(OTHER), "{}", reply.error());
    let get = s.call("GET", "/v1/catalogues/shirts/items/new", R, None);
    assert_eq!(get.status, 404);
}

#[test]
fn explaining_an_item_with_another_model_is_409() {
    let Some(s) = served_by_another_model() else {
        return;
    };
    let item = json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"});
    let reply = s.call("POST", "/v1/explain", R, Some(&item));
    assert_eq!(reply.status, 409, "{}", reply.body);
}

#[test]
fn a_server_holding_the_catalogues_model_embeds_with_it() {
    let Some(s) = served_by_both() else { return };
    let reply = s.call("POST", SEARCH, R, Some(&image_search(&s)));
    ok(&reply, "image search");
    let model = reply.body["model"].as_str().unwrap();
    assert_ne!(model, OTHER, "the catalogue's model, not the default");
    let created = ok(&s.call("PUT", "/v1/catalogues/fresh", W, None), "create");
    assert_eq!(created["schema"]["model"]["fingerprint"], OTHER);
}

#[test]
fn comparing_items_of_catalogues_built_by_two_models_is_409() {
    let Some(s) = served_by_both() else { return };
    ok(&s.call("PUT", "/v1/catalogues/fresh", W, None), "create");
    let body = json!({"items": [{"id": "a", "image": b64(&s.image("10030.jpg"))}]});
    ok(
        &s.call("PUT", "/v1/catalogues/fresh/items", W, Some(&body)),
        "upsert with the default model",
    );
    let reply = s.call(
        "POST",
        "/v1/compare",
        R,
        Some(
            &json!({"a": {"catalogue": "shirts", "item_id": "10030.jpg"},
                     "b": {"catalogue": "fresh", "item_id": "a"}}),
        ),
    );
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(
        reply.error().contains("different models"),
        "{}",
        reply.error()
    );
}
