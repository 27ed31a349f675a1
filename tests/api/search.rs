//! Search over the seeded catalogue: by item, image, vector, weights, filter, group_by,
//! score threshold, recommend and rerank_by.

use serde_json::{json, Value};

use crate::server::*;

fn search(s: &TestServer, body: Value, what: &str) -> Value {
    ok(&s.call("POST", SEARCH, R, Some(&body)), what)
}

#[test]
fn search_by_item_excludes_the_query_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let hits = search(
        &s,
        json!({"attribute": "attr_2", "item_id": "10017.jpg", "k": 3}),
        "search by item",
    );
    let hits = hits["hits"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter().all(|h| h["id"] != "10017.jpg"),
        "the query item is excluded"
    );
}

#[test]
fn search_by_image_finds_the_same_photo_first() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let by_image = search(
        &s,
        json!({"attribute": "attr_2", "image": b64(&s.image("10017.jpg")), "k": 1}),
        "search by image",
    );
    assert_eq!(
        by_image["hits"][0]["id"], "10017.jpg",
        "an image finds itself first"
    );
    assert!(by_image["hits"][0]["score"].as_f64().unwrap() > 0.99);
}

#[test]
fn search_by_a_stored_vector_finds_its_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let item = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10017.jpg?with_vectors=true",
            R,
            None,
        ),
        "get item",
    );
    let stored_vector = item["vectors"]["attr_2"].clone();
    let by_vector = search(
        &s,
        json!({"attribute": "attr_2", "vector": stored_vector, "k": 1}),
        "search by vector",
    );
    assert_eq!(by_vector["hits"][0]["id"], "10017.jpg");
}

#[test]
fn weighted_search_combines_attribute_scores() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let weighted = search(
        &s,
        json!({"attributes": {"attr_0": 0.7, "attr_5": 0.3}, "item_id": "10002.jpg", "k": 2}),
        "weighted",
    );
    let h0 = &weighted["hits"][0];
    let combined = 0.7 * h0["attribute_scores"]["attr_0"].as_f64().unwrap()
        + 0.3 * h0["attribute_scores"]["attr_5"].as_f64().unwrap();
    assert!(
        (h0["score"].as_f64().unwrap() - combined).abs() < 1e-3,
        "{h0}"
    );
}

#[test]
fn filter_keeps_only_matching_payloads() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let filtered = search(
        &s,
        json!({"attribute": "attr_1", "item_id": "10002.jpg", "k": 10,
               "filter": {"match": {"field": "brand", "value": "acme"}}, "with_payload": true}),
        "filter",
    );
    let f = filtered["hits"].as_array().unwrap();
    assert_eq!(
        f.len(),
        1,
        "only 59606.jpg is acme besides the query: {filtered}"
    );
    assert_eq!(f[0]["payload"]["brand"], "acme");
    assert_eq!(f[0]["id"], "59606.jpg");
}

#[test]
fn group_by_groups_hits_by_a_payload_field() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let grouped = search(
        &s,
        json!({"attribute": "attr_1", "item_id": "59606.jpg", "k": 10,
               "group_by": {"field": "product", "group_size": 2}}),
        "group_by",
    );
    let groups = grouped["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["hits"].as_array().unwrap().len() == 2),
        "{grouped}"
    );
}

#[test]
fn score_threshold_above_one_returns_no_hits() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let none = search(
        &s,
        json!({"attribute": "attr_1", "item_id": "59606.jpg", "score_threshold": 1.01}),
        "threshold",
    );
    assert_eq!(none["hits"].as_array().unwrap().len(), 0);
}

#[test]
fn recommend_excludes_positives_and_negatives() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let rec = search(
        &s,
        json!({"attribute": "attr_4", "positive": ["10002.jpg", "10017.jpg"], "negative": ["10030.jpg"], "k": 5}),
        "recommend",
    );
    let rec_ids: Vec<&str> = rec["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        rec_ids.len(),
        2,
        "positives and negatives are excluded: {rec_ids:?}"
    );
    assert!(
        rec_ids
            .iter()
            .all(|id| ["15970.jpg", "59606.jpg"].contains(id)),
        "{rec_ids:?}"
    );
}

#[test]
fn rerank_by_orders_hits_by_the_second_attribute() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let reranked = search(
        &s,
        json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 4, "rerank_by": "attr_6"}),
        "rerank",
    );
    let rr = reranked["hits"].as_array().unwrap();
    assert_eq!(rr.len(), 4);
    let rerank_scores: Vec<f64> = rr
        .iter()
        .map(|h| h["attribute_scores"]["attr_6"].as_f64().unwrap())
        .collect();
    assert!(
        rerank_scores.windows(2).all(|p| p[0] >= p[1]),
        "ordered by attr_6: {rerank_scores:?}"
    );
}
