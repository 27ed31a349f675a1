//! Request errors, each in the error envelope naming the problem: malformed search
//! requests, unknown names, k out of range, oversized bodies, no route, wrong method.

use serde_json::json;

use crate::server::*;

#[test]
fn bad_json_is_400() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let raw = s.send(
        "POST",
        SEARCH,
        R,
        "application/json",
        Some(b"{\"attribute\": "),
    );
    expect_error(&raw, 400, "JSON", "bad json");
}

#[test]
fn a_field_of_the_wrong_type_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let typed = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "item_id": "x", "k": "ten"})),
    );
    expect_error(&typed, 422, "k", "wrong type");
}

#[test]
fn an_unknown_field_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let unknown_field = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "item_id": "x", "kk": 3})),
    );
    expect_error(&unknown_field, 422, "kk", "unknown field");
}

#[test]
fn a_query_image_that_is_not_an_image_is_415_or_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let not_image = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "image": b64(b"hello, not an image")})),
    );
    assert!(matches!(not_image.status, 415 | 422), "{}", not_image.body);
    assert!(not_image.error().contains("image"), "{}", not_image.error());
}

#[test]
fn bad_base64_is_400() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let bad_b64 = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "image": "%%%"})),
    );
    expect_error(&bad_b64, 400, "image: invalid base64", "bad base64");
}

#[test]
fn search_on_an_unknown_attribute_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "collar", "item_id": "10002.jpg"})),
        ),
        422,
        "collar",
        "unknown attribute",
    );
}

#[test]
fn search_in_an_unknown_catalogue_is_404() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            "/v1/catalogues/nope/search",
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg"})),
        ),
        404,
        "nope",
        "unknown catalogue",
    );
}

#[test]
fn search_by_an_unknown_item_is_404() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "missing-item"})),
        ),
        404,
        "missing-item",
        "unknown item",
    );
}

#[test]
fn k_zero_is_400() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 0})),
        ),
        400,
        "k = 0",
        "k = 0",
    );
}

#[test]
fn k_over_max_k_is_400() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": MAX_K + 1})),
        ),
        400,
        "1..=100",
        "k too large",
    );
    // k = max_k itself is accepted.
    ok(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": MAX_K})),
        ),
        "k = max_k",
    );
}

#[test]
fn a_vector_of_the_wrong_dimension_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_0", "vector": [1.0, 2.0]})),
        ),
        422,
        "dimension",
        "vector dimension",
    );
}

#[test]
fn search_without_a_query_is_400() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call("POST", SEARCH, R, Some(&json!({"attribute": "attr_0"}))),
        400,
        "exactly one query",
        "no query",
    );
}

#[test]
fn a_body_over_max_body_bytes_is_413() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let big = json!({"items": [{"id": "big", "image": "A".repeat(MAX_BODY + 1024)}]});
    expect_error(
        &s.call("PUT", "/v1/catalogues/shirts/items", W, Some(&big)),
        413,
        "max_body_bytes",
        "oversized body",
    );
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    assert_eq!(details["stats"]["items"], 1, "nothing was stored");
}

#[test]
fn an_unknown_path_is_404_naming_method_and_path() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("GET", "/v1/nothing", R, None),
        404,
        "no route GET /v1/nothing",
        "no route",
    );
}

#[test]
fn a_wrong_method_is_405_naming_method_and_path() {
    let Some(s) = TestServer::start() else { return };
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    expect_error(
        &s.call("PATCH", "/v1/catalogues/shirts", W, None),
        405,
        "method PATCH is not allowed on /v1/catalogues/shirts",
        "wrong method",
    );
}
