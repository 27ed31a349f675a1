//! Catalogues: create, list, details, drop, and their errors.

use serde_json::json;

use crate::server::*;

#[test]
fn create_answers_the_schema_with_the_model_dimension() {
    let Some(s) = TestServer::start() else { return };
    let dim = s.dimension();
    let created = ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    assert_eq!(
        created["schema"]["dimension"].as_u64().unwrap() as usize,
        dim
    );
}

#[test]
fn create_twice_is_409() {
    let Some(s) = TestServer::start() else { return };
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    expect_error(
        &s.call("PUT", "/v1/catalogues/shirts", W, None),
        409,
        "already exists",
        "create twice",
    );
}

#[test]
fn create_with_an_unknown_attribute_is_422() {
    let Some(s) = TestServer::start() else { return };
    let bad_attr = s.call(
        "PUT",
        "/v1/catalogues/other",
        W,
        Some(&json!({"attributes": ["sleeve"]})),
    );
    expect_error(&bad_attr, 422, "sleeve", "create with unknown attribute");
}

#[test]
fn list_and_details_count_every_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let list = ok(&s.call("GET", "/v1/catalogues", R, None), "list");
    assert_eq!(list[0]["name"], "shirts");
    assert_eq!(list[0]["items"], 5);
    assert_eq!(list[0]["attribute_counts"]["attr_3"], 5);
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    assert_eq!(details["stats"]["items"], 5);
}

#[test]
fn get_an_unknown_catalogue_is_404() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("GET", "/v1/catalogues/nope", R, None),
        404,
        "nope",
        "unknown catalogue get",
    );
}

#[test]
fn drop_removes_the_catalogue_with_its_items_and_thumbnails() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    ok(&s.call("DELETE", "/v1/catalogues/shirts", W, None), "drop");
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts", R, None),
        404,
        "shirts",
        "dropped",
    );
    let dropped_item =
        json!({"catalogue": "shirts", "item_id": "10002.jpg", "attribute": "attr_3"});
    expect_error(
        &s.call("POST", "/v1/explain", R, Some(&dropped_item)),
        404,
        "shirts",
        "explain item of a dropped catalogue",
    );
    expect_error(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10002.jpg/image",
            R,
            None,
        ),
        404,
        "shirts",
        "image of a dropped catalogue",
    );
}

#[test]
fn a_re_created_catalogue_starts_without_the_old_thumbnails() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    // The thumbnail exists before the drop.
    let before = s.call(
        "GET",
        "/v1/catalogues/shirts/items/10002.jpg/image",
        R,
        None,
    );
    assert_eq!(before.status, 200, "{}", before.body);
    ok(&s.call("DELETE", "/v1/catalogues/shirts", W, None), "drop");
    ok(
        &s.call("PUT", "/v1/catalogues/shirts", W, None),
        "re-create",
    );
    expect_error(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10002.jpg/image",
            R,
            None,
        ),
        404,
        "10002.jpg",
        "image after re-create",
    );
}

#[test]
fn field_values_with_counts() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let brands = ok(
        &s.call("GET", "/v1/catalogues/shirts/fields/brand/values", R, None),
        "brand values",
    );
    assert_eq!(
        brands,
        json!({"field": "brand", "items": 5, "truncated": false,
               "values": [{"value": "zeta", "count": 3}, {"value": "acme", "count": 2}]})
    );
    let products = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/fields/product/values?limit=1",
            R,
            None,
        ),
        "product values, one",
    );
    assert_eq!(
        products["values"],
        json!([{"value": 0, "count": 2}]),
        "integers, the most frequent"
    );
    assert_eq!(products["truncated"], true);
    let none = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/fields/nothing/values",
            R,
            None,
        ),
        "absent field",
    );
    assert_eq!(none["values"], json!([]));
    expect_error(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/fields/brand/values?limit=1001",
            R,
            None,
        ),
        422,
        "outside 1..=1000",
        "limit over the maximum",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues/nope/fields/brand/values", R, None),
        404,
        "\"nope\" not found",
        "unknown catalogue",
    );
}
