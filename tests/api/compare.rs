//! Compare (two subjects, per attribute) and copies (near-duplicates in a catalogue) with
//! the uncalibrated v1 checkpoint.

use serde_json::json;

use crate::server::*;

const COPIES: &str = "/v1/catalogues/shirts/copies";

#[test]
fn compare_an_image_with_its_stored_item_is_similar_on_every_attribute() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let same = ok(
        &s.call(
            "POST",
            "/v1/compare",
            R,
            Some(&json!({
                "a": {"image": b64(&s.image("10002.jpg"))},
                "b": {"catalogue": "shirts", "item_id": "10002.jpg"}})),
        ),
        "compare",
    );
    assert_eq!(same["calibrated"], false);
    assert!(same["verdict"]
        .as_str()
        .unwrap()
        .starts_with("uncalibrated"));
    let sims = same["attributes"].as_array().unwrap();
    assert_eq!(sims.len(), 8);
    assert!(sims
        .iter()
        .all(|a| a["similarity"].as_f64().unwrap() > 0.99 && a["matches"].is_null()));
}

#[test]
fn compare_two_items_on_chosen_attributes() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let two = ok(
        &s.call(
            "POST",
            "/v1/compare",
            R,
            Some(&json!({
                "a": {"catalogue": "shirts", "item_id": "10002.jpg"},
                "b": {"catalogue": "shirts", "item_id": "15970.jpg"},
                "attributes": ["attr_1"]})),
        ),
        "compare items",
    );
    assert_eq!(two["attributes"].as_array().unwrap().len(), 1);
}

#[test]
fn compare_without_subjects_is_400() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("POST", "/v1/compare", R, Some(&json!({"a": {}, "b": {}}))),
        400,
        "a: give",
        "compare without subjects",
    );
}

#[test]
fn copies_without_a_threshold_on_an_uncalibrated_model_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call("POST", COPIES, R, Some(&json!({"item_id": "10002.jpg"}))),
        422,
        "uncalibrated",
        "copies uncalibrated",
    );
}

#[test]
fn copies_of_an_item_at_threshold_minus_one_are_every_other_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let copies = ok(
        &s.call(
            "POST",
            COPIES,
            R,
            Some(&json!({"item_id": "10002.jpg", "threshold": -1.0, "min_matches": 8})),
        ),
        "copies",
    );
    assert_eq!(
        copies.as_array().unwrap().len(),
        4,
        "every other item matches at threshold -1: {copies}"
    );
    assert_eq!(copies[0]["matching"].as_array().unwrap().len(), 8);
}

#[test]
fn copies_of_an_image_find_its_stored_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let copies = ok(
        &s.call(
            "POST",
            COPIES,
            R,
            Some(
                &json!({"image": b64(&s.image("10030.jpg")), "threshold": 0.999, "min_matches": 8}),
            ),
        ),
        "copies by image",
    );
    assert_eq!(copies[0]["id"], "10030.jpg");
}
