//! Explain: the attention grid (JSON) and heat-map (PNG), of an uploaded image or of a
//! stored item (its thumbnail, the model-input crop), and their errors.

use serde_json::{json, Value};

use crate::server::*;

fn explain_image(s: &TestServer) -> Value {
    json!({"image": b64(&s.image("10030.jpg")), "attribute": "attr_3"})
}

fn explain_item() -> Value {
    json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"})
}

#[test]
fn explain_an_image_gives_an_attention_grid_summing_to_one() {
    let Some(s) = TestServer::start() else { return };
    let grid = ok(
        &s.call("POST", "/v1/explain", R, Some(&explain_image(&s))),
        "explain",
    );
    let (h, wd) = (
        grid["height"].as_u64().unwrap() as usize,
        grid["width"].as_u64().unwrap() as usize,
    );
    assert_eq!(grid["grid"].as_array().unwrap().len(), h);
    assert!(grid["grid"]
        .as_array()
        .unwrap()
        .iter()
        .all(|row| row.as_array().unwrap().len() == wd));
    let total: f64 = cells(&grid).iter().sum();
    assert!(
        (total - 1.0).abs() < 1e-3 && wd > 1,
        "attention sums to 1: {total}"
    );
}

#[test]
fn heatmap_of_an_image_is_a_png() {
    let Some(s) = TestServer::start() else { return };
    let png = s.call("POST", "/v1/explain/heatmap", R, Some(&explain_image(&s)));
    assert_eq!(png.status, 200);
    assert_eq!(&png.bytes[1..4], b"PNG");
}

/// The stored crop (a JPEG round trip of what the model saw) gives the grid of the ingested
/// image, up to JPEG noise.
#[test]
fn explain_an_item_matches_the_grid_of_its_image() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let grid = ok(
        &s.call("POST", "/v1/explain", R, Some(&explain_image(&s))),
        "explain",
    );
    let item_grid = ok(
        &s.call("POST", "/v1/explain", R, Some(&explain_item())),
        "explain item",
    );
    assert_eq!(item_grid["height"], grid["height"]);
    assert_eq!(item_grid["width"], grid["width"]);
    assert_eq!(item_grid["input_size"], 224);
    assert_eq!(
        item_grid["peak"], grid["peak"],
        "peak cell of item vs image"
    );
    let (a, b) = (cells(&grid), cells(&item_grid));
    let max_diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let max_cell = a.iter().copied().fold(0.0, f64::max);
    eprintln!("explain item vs image: max abs diff {max_diff:.2e}, peak weight {max_cell:.2e}");
    assert!(
        max_diff < 0.1 * max_cell,
        "item grid too far from the image grid: {max_diff} (peak {max_cell})"
    );
}

#[test]
fn heatmap_of_an_item_is_a_224px_png_of_the_crop() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let png = s.call("POST", "/v1/explain/heatmap", R, Some(&explain_item()));
    assert_eq!(png.status, 200, "{}", png.body);
    assert_eq!(&png.bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(png_size(&png.bytes), (224, 224), "heat-map of the crop");
}

/// The item image route's bytes explained as an image give the item's grid exactly.
#[test]
fn explain_the_item_thumbnail_as_an_image_equals_explain_by_item() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let item_grid = ok(
        &s.call("POST", "/v1/explain", R, Some(&explain_item())),
        "explain item",
    );
    let jpeg = s.call(
        "GET",
        "/v1/catalogues/shirts/items/10030.jpg/image",
        R,
        None,
    );
    assert_eq!(jpeg.status, 200, "{}", jpeg.body);
    let same = ok(
        &s.call(
            "POST",
            "/v1/explain",
            R,
            Some(&json!({"image": b64(&jpeg.bytes), "attribute": "attr_3"})),
        ),
        "explain the thumbnail as an image",
    );
    let max_same = cells(&same)
        .iter()
        .zip(&cells(&item_grid))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(max_same < 1e-4, "thumbnail as image vs item: {max_same}");
}

/// `POST /v1/explain` with `body` over a catalogue holding 10002.jpg and 10030.jpg: the
/// error status and a message naming the problem.
fn explain_error(body: fn(&TestServer) -> Value, status: u16, needle: &str, what: &str) {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    ok(&s.upsert_json(&["10030.jpg"]), "upsert 10030.jpg");
    expect_error(
        &s.call("POST", "/v1/explain", R, Some(&body(&s))),
        status,
        needle,
        what,
    );
}

#[test]
fn explain_with_both_image_and_item_is_400() {
    explain_error(
        |s| {
            json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3",
                   "image": b64(&s.image("10030.jpg"))})
        },
        400,
        "not both",
        "explain with image and item",
    );
}

#[test]
fn explain_with_neither_image_nor_item_is_400() {
    explain_error(
        |_| json!({"attribute": "attr_3"}),
        400,
        "give",
        "explain with neither",
    );
}

#[test]
fn explain_an_item_without_its_catalogue_is_400() {
    explain_error(
        |_| json!({"item_id": "10030.jpg", "attribute": "attr_3"}),
        400,
        "catalogue",
        "explain item without catalogue",
    );
}

#[test]
fn explain_an_unknown_item_is_404() {
    explain_error(
        |_| json!({"catalogue": "shirts", "item_id": "nope", "attribute": "attr_3"}),
        404,
        "nope",
        "explain unknown item",
    );
}

#[test]
fn explain_an_item_of_an_unknown_catalogue_is_404() {
    explain_error(
        |_| json!({"catalogue": "hats", "item_id": "10030.jpg", "attribute": "attr_3"}),
        404,
        "hats",
        "explain item of unknown catalogue",
    );
}

#[test]
fn explain_an_item_on_an_unknown_attribute_is_422() {
    explain_error(
        |_| json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "sleeve"}),
        422,
        "sleeve",
        "explain item, unknown attribute",
    );
}
