//! Items: upsert (JSON and multipart), get with vectors, the item image route, delete, and
//! their errors.

use serde_json::{json, Value};

use crate::server::*;

const ITEM_IMAGE: &str = "/v1/catalogues/shirts/items/10030.jpg/image";

#[test]
fn upsert_json_with_base64_images() {
    let Some(s) = TestServer::start() else { return };
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    let receipt = ok(&s.upsert_json(&NAMES[..3]), "upsert json");
    assert_eq!(receipt["affected"], 3);
    let item = ok(
        &s.call("GET", "/v1/catalogues/shirts/items/10002.jpg", R, None),
        "get item",
    );
    assert_eq!(item["payload"]["brand"], "acme");
    assert_eq!(item["payload"]["product"], 0);
}

#[test]
fn upsert_multipart_with_image_parts() {
    let Some(s) = TestServer::start() else { return };
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    let receipt = ok(&s.upsert_multipart(), "upsert multipart");
    assert_eq!(receipt["affected"], 2);
    let item = ok(
        &s.call("GET", "/v1/catalogues/shirts/items/59606.jpg", R, None),
        "get item",
    );
    assert_eq!(item["payload"]["brand"], "acme");
    assert_eq!(item["payload"]["product"], 3);
}

#[test]
fn get_item_with_vectors() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let dim = s.dimension();
    let item = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10017.jpg?with_vectors=true",
            R,
            None,
        ),
        "get item",
    );
    assert_eq!(item["payload"]["brand"], "zeta");
    assert_eq!(item["content_hash"].as_str().unwrap().len(), 64);
    assert_eq!(item["vectors"]["attr_2"].as_array().unwrap().len(), dim);
}

#[test]
fn get_an_unknown_item_is_404() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items/missing-item", R, None),
        404,
        "missing-item",
        "get unknown item",
    );
}

#[test]
fn upsert_of_a_broken_image_names_the_item() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let bad_item_image = s.call(
        "PUT",
        "/v1/catalogues/shirts/items",
        W,
        Some(&json!({"items": [{"id": "broken", "image": b64(b"GIF89a nope")}]})),
    );
    assert!(
        matches!(bad_item_image.status, 415 | 422),
        "{}",
        bad_item_image.body
    );
    assert!(
        bad_item_image.error().contains("broken"),
        "names the item: {}",
        bad_item_image.error()
    );
}

#[test]
fn upsert_over_max_batch_items_is_413() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let nine: Vec<Value> = (0..MAX_BATCH + 1)
        .map(|i| json!({"id": format!("n{i}"), "image": "aGk="}))
        .collect();
    assert_eq!(nine.len(), 9);
    expect_error(
        &s.call(
            "PUT",
            "/v1/catalogues/shirts/items",
            W,
            Some(&json!({"items": nine})),
        ),
        413,
        "max_batch_items",
        "batch too large",
    );
}

#[test]
fn item_image_is_the_224px_jpeg_crop() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    expect_error(
        &s.call("GET", ITEM_IMAGE, None, None),
        401,
        "missing api key",
        "item image without key",
    );
    let jpeg = s.call("GET", ITEM_IMAGE, R, None);
    assert_eq!(jpeg.status, 200, "{}", jpeg.body);
    assert_eq!(&jpeg.bytes[..2], &[0xFF, 0xD8], "a JPEG");
    let decoded = image::load_from_memory(&jpeg.bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (224, 224));
    eprintln!("thumbnail of 10030.jpg: {} bytes", jpeg.bytes.len());
}

#[test]
fn image_of_an_unknown_item_is_404() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items/nope/image", R, None),
        404,
        "nope",
        "image of unknown item",
    );
}

#[test]
fn delete_item_removes_it_with_its_thumbnail() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    ok(
        &s.call("DELETE", "/v1/catalogues/shirts/items/10030.jpg", W, None),
        "delete item",
    );
    expect_error(
        &s.call("DELETE", "/v1/catalogues/shirts/items/10030.jpg", W, None),
        404,
        "10030.jpg",
        "delete twice",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items/10030.jpg", R, None),
        404,
        "10030.jpg",
        "get a deleted item",
    );
    expect_error(
        &s.call("GET", ITEM_IMAGE, R, None),
        404,
        "10030.jpg",
        "image of a deleted item",
    );
    let by_item = json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"});
    expect_error(
        &s.call("POST", "/v1/explain/heatmap", R, Some(&by_item)),
        404,
        "10030.jpg",
        "heat-map of a deleted item",
    );
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    assert_eq!(details["stats"]["items"], 4);
}

#[test]
fn re_upsert_after_delete_brings_back_and_replaces_the_thumbnail() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    ok(
        &s.call("DELETE", "/v1/catalogues/shirts/items/10030.jpg", W, None),
        "delete item",
    );
    let again = json!({"items": [{"id": "10030.jpg", "image": b64(&s.image("10017.jpg"))}]});
    ok(
        &s.call("PUT", "/v1/catalogues/shirts/items", W, Some(&again)),
        "upsert again",
    );
    let replaced = s.call("GET", ITEM_IMAGE, R, None);
    assert_eq!(replaced.status, 200);
    let other = s.call(
        "GET",
        "/v1/catalogues/shirts/items/10017.jpg/image",
        R,
        None,
    );
    assert_eq!(
        replaced.bytes, other.bytes,
        "the update replaced the thumbnail"
    );
    ok(
        &s.call("DELETE", "/v1/catalogues/shirts/items/10030.jpg", W, None),
        "delete again",
    );
}

#[test]
fn list_items_page_by_page() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let mut seen = Vec::new();
    let mut path = "/v1/catalogues/shirts/items?limit=2".to_string();
    loop {
        let page = ok(&s.call("GET", &path, R, None), "list page");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2, "{page}");
        for item in items {
            assert!(item["payload"]["brand"].is_string(), "{item}");
            assert!(item["vectors"].is_null(), "no vectors in a listing");
            seen.push(item["id"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/catalogues/shirts/items?limit=2&after={cursor}"),
            None => break,
        }
    }
    let mut expected: Vec<String> = NAMES.iter().map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(seen, expected, "every item once, in id order");
    let all = ok(
        &s.call("GET", "/v1/catalogues/shirts/items", R, None),
        "default page",
    );
    assert_eq!(all["items"].as_array().unwrap().len(), NAMES.len());
    assert!(all["next_cursor"].is_null());
}

#[test]
fn list_items_errors() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items?limit=0", R, None),
        422,
        "outside 1..=",
        "limit 0",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items?limit=ten", R, None),
        400,
        "query string",
        "limit not a number",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues/nope/items", R, None),
        404,
        "\"nope\" not found",
        "unknown catalogue",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues/shirts/items", None, None),
        401,
        "missing api key",
        "a read route",
    );
}
