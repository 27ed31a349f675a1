//! The real `asen serve` binary on a random loopback port, driven over HTTP: every route,
//! the error envelope for bad JSON, not-an-image, unknown attribute or catalogue, missing or
//! wrong key, oversized body and k out of range, then a graceful SIGTERM shutdown.
//!
//! The model is the official v1 checkpoint of the shared fixtures (random weights,
//! attributes `attr_0..attr_7`): skipped with a notice when `../shared` is absent, failing
//! when `ASEN_REQUIRE_SHARED=1`.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

const WRITE_KEY: &str = "test-write-key";
const READ_KEY: &str = "test-read-key";
const MAX_BODY: usize = 256 * 1024;

fn shared_dir() -> Option<PathBuf> {
    asen_test_support::shared_dir(&["golden/asen_v1_fashionai.pth.gz"])
}

struct Server {
    child: Child,
    base: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(shared: &std::path::Path) -> Server {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .arg("--model")
        .arg(shared.join("golden/asen_v1_fashionai.pth.gz"))
        .env("ASEN_API_KEY", WRITE_KEY)
        .env("ASEN_READ_KEY", READ_KEY)
        .env("ASEN_LIMITS__MAX_BODY_BYTES", MAX_BODY.to_string())
        .env("ASEN_LIMITS__MAX_K", "100")
        .env("ASEN_LIMITS__MAX_BATCH_ITEMS", "8")
        .env("ASEN_MODEL__BATCH_SIZE", "4")
        .env("RUST_LOG", "warn,asen=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start asen serve");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let Some(base) = line.trim().strip_prefix("asen listening on ") else {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("server did not start: stdout {line:?}, stderr {err}");
    };
    Server {
        base: base.to_string(),
        child,
        _data: data,
    }
}

struct Reply {
    status: u16,
    body: Value,
    bytes: Vec<u8>,
}

impl Reply {
    fn error(&self) -> String {
        self.body["status"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error envelope: {}", self.body))
            .to_string()
    }
}

fn call(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let raw = body.map(|b| b.to_string());
    send(
        server,
        method,
        path,
        key,
        "application/json",
        raw.as_deref().map(str::as_bytes),
    )
}

fn send(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: &str,
    body: Option<&[u8]>,
) -> Reply {
    let mut req =
        ureq::request(method, &format!("{}{path}", server.base)).timeout(Duration::from_secs(120));
    if let Some(k) = key {
        req = req.set("api-key", k);
    }
    let result = match body {
        Some(b) => req.set("content-type", content_type).send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: transport error {e}"),
    };
    let status = resp.status();
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        bytes,
    }
}

fn image(shared: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(shared.join("golden/images").join(name)).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ok(reply: &Reply, what: &str) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    assert_eq!(reply.body["status"], "ok", "{what}");
    assert!(reply.body["time"].as_f64().is_some(), "{what}");
    reply.body["result"].clone()
}

fn expect_error(reply: &Reply, status: u16, needle: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    let e = reply.error();
    assert!(
        e.contains(needle),
        "{what}: error {e:?} should mention {needle:?}"
    );
}

#[test]
fn every_route_over_http() {
    let Some(shared) = shared_dir() else { return };
    let started = Instant::now();
    let mut server = start(&shared);
    let s = &server;
    let w = Some(WRITE_KEY);
    let r = Some(READ_KEY);

    // Health, metrics, model, openapi (open routes).
    assert_eq!(
        ok(&call(s, "GET", "/healthz", None, None), "healthz"),
        "alive"
    );
    assert_eq!(
        ok(&call(s, "GET", "/readyz", None, None), "readyz"),
        "ready"
    );
    let model = ok(&call(s, "GET", "/v1/model", r, None), "model");
    assert_eq!(model["attributes"].as_array().unwrap().len(), 8);
    assert_eq!(model["attributes"][0]["name"], "attr_0");
    let dim = model["dimension"].as_u64().unwrap() as usize;
    assert!(model["match_thresholds"].is_null());
    let doc = call(s, "GET", "/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    for (method, path) in [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/model"),
        ("get", "/v1/catalogues"),
        ("put", "/v1/catalogues/{name}"),
        ("get", "/v1/catalogues/{name}"),
        ("delete", "/v1/catalogues/{name}"),
        ("put", "/v1/catalogues/{name}/items"),
        ("get", "/v1/catalogues/{name}/items/{id}"),
        ("delete", "/v1/catalogues/{name}/items/{id}"),
        ("post", "/v1/catalogues/{name}/search"),
        ("post", "/v1/catalogues/{name}/copies"),
        ("post", "/v1/compare"),
        ("post", "/v1/explain"),
        ("post", "/v1/explain/heatmap"),
        ("get", "/v1/catalogues/{name}/items/{id}/image"),
    ] {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "openapi.json lacks {method} {path}"
        );
    }

    // Keys: writes need the write key, reads the read key (or the write key).
    let create = call(s, "PUT", "/v1/catalogues/shirts", None, None);
    expect_error(&create, 401, "missing api key", "create without key");
    let create = call(
        s,
        "PUT",
        "/v1/catalogues/shirts",
        Some("wrong-key-123"),
        None,
    );
    expect_error(&create, 403, "wrong api key", "create with wrong key");
    let create = call(s, "PUT", "/v1/catalogues/shirts", r, None);
    expect_error(&create, 403, "wrong api key", "create with the read key");
    expect_error(
        &call(s, "GET", "/v1/catalogues", None, None),
        401,
        "missing api key",
        "list without key",
    );
    let created = ok(&call(s, "PUT", "/v1/catalogues/shirts", w, None), "create");
    assert_eq!(
        created["schema"]["dimension"].as_u64().unwrap() as usize,
        dim
    );
    expect_error(
        &call(s, "PUT", "/v1/catalogues/shirts", w, None),
        409,
        "already exists",
        "create twice",
    );
    let bad_attr = call(
        s,
        "PUT",
        "/v1/catalogues/other",
        w,
        Some(&json!({"attributes": ["sleeve"]})),
    );
    expect_error(&bad_attr, 422, "sleeve", "create with unknown attribute");

    // Items: JSON with base64 images...
    let names = [
        "10002.jpg",
        "10017.jpg",
        "10030.jpg",
        "15970.jpg",
        "59606.jpg",
    ];
    let items: Vec<Value> = names[..3]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({"id": n, "payload": {"brand": if i == 0 { "acme" } else { "zeta" }, "product": i / 2},
                   "image": b64(&image(&shared, n))})
        })
        .collect();
    let receipt = ok(
        &call(
            s,
            "PUT",
            "/v1/catalogues/shirts/items",
            w,
            Some(&json!({"items": items})),
        ),
        "upsert json",
    );
    assert_eq!(receipt["affected"], 3);
    // ... and multipart.
    let boundary = "asen-test-boundary";
    let mut body = Vec::new();
    let meta = json!([{"id": names[3], "payload": {"brand": "zeta", "product": 2}},
                      {"id": names[4], "payload": {"brand": "acme", "product": 3}}]);
    body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"items\"\r\ncontent-type: application/json\r\n\r\n{meta}\r\n").as_bytes());
    for n in &names[3..] {
        body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"image:{n}\"; filename=\"{n}\"\r\ncontent-type: image/jpeg\r\n\r\n").as_bytes());
        body.extend(image(&shared, n));
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let receipt = ok(
        &send(s, "PUT", "/v1/catalogues/shirts/items", w, &ct, Some(&body)),
        "upsert multipart",
    );
    assert_eq!(receipt["affected"], 2);

    let list = ok(&call(s, "GET", "/v1/catalogues", r, None), "list");
    assert_eq!(list[0]["name"], "shirts");
    assert_eq!(list[0]["items"], 5);
    assert_eq!(list[0]["attribute_counts"]["attr_3"], 5);
    let details = ok(&call(s, "GET", "/v1/catalogues/shirts", r, None), "details");
    assert_eq!(details["stats"]["items"], 5);
    let item = ok(
        &call(
            s,
            "GET",
            "/v1/catalogues/shirts/items/10017.jpg?with_vectors=true",
            r,
            None,
        ),
        "get item",
    );
    assert_eq!(item["payload"]["brand"], "zeta");
    assert_eq!(item["content_hash"].as_str().unwrap().len(), 64);
    let stored_vector = item["vectors"]["attr_2"].clone();
    assert_eq!(stored_vector.as_array().unwrap().len(), dim);

    // Search: by item, image, vector, weights, filter, group_by, threshold, recommend, rerank.
    let path = "/v1/catalogues/shirts/search";
    let hits = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_2", "item_id": "10017.jpg", "k": 3})),
        ),
        "search by item",
    );
    let hits = hits["hits"].as_array().unwrap().clone();
    assert_eq!(hits.len(), 3);
    assert!(
        hits.iter().all(|h| h["id"] != "10017.jpg"),
        "the query item is excluded"
    );
    let by_image = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attribute": "attr_2", "image": b64(&image(&shared, "10017.jpg")), "k": 1}),
            ),
        ),
        "search by image",
    );
    assert_eq!(
        by_image["hits"][0]["id"], "10017.jpg",
        "an image finds itself first"
    );
    assert!(by_image["hits"][0]["score"].as_f64().unwrap() > 0.99);
    let by_vector = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_2", "vector": stored_vector, "k": 1})),
        ),
        "search by vector",
    );
    assert_eq!(by_vector["hits"][0]["id"], "10017.jpg");
    let weighted = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attributes": {"attr_0": 0.7, "attr_5": 0.3}, "item_id": "10002.jpg", "k": 2}),
            ),
        ),
        "weighted",
    );
    let h0 = &weighted["hits"][0];
    let combined = 0.7 * h0["attribute_scores"]["attr_0"].as_f64().unwrap()
        + 0.3 * h0["attribute_scores"]["attr_5"].as_f64().unwrap();
    assert!(
        (h0["score"].as_f64().unwrap() - combined).abs() < 1e-3,
        "{h0}"
    );
    let filtered = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attribute": "attr_1", "item_id": "10002.jpg", "k": 10,
        "filter": {"match": {"field": "brand", "value": "acme"}}, "with_payload": true}),
            ),
        ),
        "filter",
    );
    let f = filtered["hits"].as_array().unwrap();
    assert_eq!(
        f.len(),
        1,
        "only 59606.jpg is acme besides the query: {filtered}"
    );
    assert_eq!(f[0]["payload"]["brand"], "acme");
    let grouped = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attribute": "attr_1", "item_id": "59606.jpg", "k": 10,
        "group_by": {"field": "product", "group_size": 2}}),
            ),
        ),
        "group_by",
    );
    let groups = grouped["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["hits"].as_array().unwrap().len() == 2),
        "{grouped}"
    );
    let none = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_1", "item_id": "59606.jpg", "score_threshold": 1.01})),
        ),
        "threshold",
    );
    assert_eq!(none["hits"].as_array().unwrap().len(), 0);
    let rec = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attribute": "attr_4", "positive": ["10002.jpg", "10017.jpg"], "negative": ["10030.jpg"], "k": 5}),
            ),
        ),
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
    let reranked = ok(
        &call(
            s,
            "POST",
            path,
            r,
            Some(
                &json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 4, "rerank_by": "attr_6"}),
            ),
        ),
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

    // Errors, each naming the problem.
    let raw = send(
        s,
        "POST",
        path,
        r,
        "application/json",
        Some(b"{\"attribute\": "),
    );
    expect_error(&raw, 400, "JSON", "bad json");
    let typed = call(
        s,
        "POST",
        path,
        r,
        Some(&json!({"attribute": "attr_0", "item_id": "x", "k": "ten"})),
    );
    expect_error(&typed, 422, "k", "wrong type");
    let unknown_field = call(
        s,
        "POST",
        path,
        r,
        Some(&json!({"attribute": "attr_0", "item_id": "x", "kk": 3})),
    );
    expect_error(&unknown_field, 422, "kk", "unknown field");
    let not_image = call(
        s,
        "POST",
        path,
        r,
        Some(&json!({"attribute": "attr_0", "image": b64(b"hello, not an image")})),
    );
    assert!(matches!(not_image.status, 415 | 422), "{}", not_image.body);
    assert!(not_image.error().contains("image"), "{}", not_image.error());
    let bad_b64 = call(
        s,
        "POST",
        path,
        r,
        Some(&json!({"attribute": "attr_0", "image": "%%%"})),
    );
    expect_error(&bad_b64, 400, "image: invalid base64", "bad base64");
    let bad_item_image = call(
        s,
        "PUT",
        "/v1/catalogues/shirts/items",
        w,
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
    expect_error(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "collar", "item_id": "10002.jpg"})),
        ),
        422,
        "collar",
        "unknown attribute",
    );
    expect_error(
        &call(
            s,
            "POST",
            "/v1/catalogues/nope/search",
            r,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg"})),
        ),
        404,
        "nope",
        "unknown catalogue",
    );
    expect_error(
        &call(s, "GET", "/v1/catalogues/nope", r, None),
        404,
        "nope",
        "unknown catalogue get",
    );
    expect_error(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_0", "item_id": "missing-item"})),
        ),
        404,
        "missing-item",
        "unknown item",
    );
    expect_error(
        &call(
            s,
            "GET",
            "/v1/catalogues/shirts/items/missing-item",
            r,
            None,
        ),
        404,
        "missing-item",
        "get unknown item",
    );
    expect_error(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 0})),
        ),
        400,
        "k = 0",
        "k = 0",
    );
    expect_error(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 101})),
        ),
        400,
        "1..=100",
        "k too large",
    );
    expect_error(
        &call(
            s,
            "POST",
            path,
            r,
            Some(&json!({"attribute": "attr_0", "vector": [1.0, 2.0]})),
        ),
        422,
        "dimension",
        "vector dimension",
    );
    expect_error(
        &call(s, "POST", path, r, Some(&json!({"attribute": "attr_0"}))),
        400,
        "exactly one query",
        "no query",
    );
    let big = json!({"items": [{"id": "big", "image": "A".repeat(MAX_BODY + 1024)}]});
    expect_error(
        &call(s, "PUT", "/v1/catalogues/shirts/items", w, Some(&big)),
        413,
        "max_body_bytes",
        "oversized body",
    );
    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"id": format!("n{i}"), "image": "aGk="}))
        .collect();
    expect_error(
        &call(
            s,
            "PUT",
            "/v1/catalogues/shirts/items",
            w,
            Some(&json!({"items": nine})),
        ),
        413,
        "max_batch_items",
        "batch too large",
    );
    expect_error(
        &call(s, "GET", "/v1/nothing", r, None),
        404,
        "no route GET /v1/nothing",
        "no route",
    );
    expect_error(
        &call(s, "PATCH", "/v1/catalogues/shirts", w, None),
        405,
        "method PATCH is not allowed on /v1/catalogues/shirts",
        "wrong method",
    );

    // Copy check.
    let same = ok(
        &call(
            s,
            "POST",
            "/v1/compare",
            r,
            Some(&json!({
        "a": {"image": b64(&image(&shared, "10002.jpg"))}, "b": {"catalogue": "shirts", "item_id": "10002.jpg"}})),
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
    let two = ok(
        &call(
            s,
            "POST",
            "/v1/compare",
            r,
            Some(&json!({
        "a": {"catalogue": "shirts", "item_id": "10002.jpg"}, "b": {"catalogue": "shirts", "item_id": "15970.jpg"}, "attributes": ["attr_1"]})),
        ),
        "compare items",
    );
    assert_eq!(two["attributes"].as_array().unwrap().len(), 1);
    expect_error(
        &call(
            s,
            "POST",
            "/v1/compare",
            r,
            Some(&json!({"a": {}, "b": {}})),
        ),
        400,
        "a: give",
        "compare without subjects",
    );
    let copies_path = "/v1/catalogues/shirts/copies";
    expect_error(
        &call(
            s,
            "POST",
            copies_path,
            r,
            Some(&json!({"item_id": "10002.jpg"})),
        ),
        422,
        "uncalibrated",
        "copies uncalibrated",
    );
    let copies = ok(
        &call(
            s,
            "POST",
            copies_path,
            r,
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
    let copies = ok(
        &call(
            s,
            "POST",
            copies_path,
            r,
            Some(
                &json!({"image": b64(&image(&shared, "10030.jpg")), "threshold": 0.999, "min_matches": 8}),
            ),
        ),
        "copies by image",
    );
    assert_eq!(copies[0]["id"], "10030.jpg");

    // Explain.
    let explain = json!({"image": b64(&image(&shared, "10030.jpg")), "attribute": "attr_3"});
    let grid = ok(
        &call(s, "POST", "/v1/explain", r, Some(&explain)),
        "explain",
    );
    let (h, wd) = (
        grid["height"].as_u64().unwrap() as usize,
        grid["width"].as_u64().unwrap() as usize,
    );
    assert_eq!(grid["grid"].as_array().unwrap().len(), h);
    let total: f64 = grid["grid"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(
        (total - 1.0).abs() < 1e-3 && wd > 1,
        "attention sums to 1: {total}"
    );
    let png = call(s, "POST", "/v1/explain/heatmap", r, Some(&explain));
    assert_eq!(png.status, 200);
    assert_eq!(&png.bytes[1..4], b"PNG");

    // Explain by item: the stored crop (a JPEG round trip of what the model saw) gives the
    // grid of the ingested image, up to JPEG noise.
    let by_item = json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"});
    let item_grid = ok(
        &call(s, "POST", "/v1/explain", r, Some(&by_item)),
        "explain item",
    );
    assert_eq!(item_grid["height"], grid["height"]);
    assert_eq!(item_grid["width"], grid["width"]);
    assert_eq!(item_grid["input_size"], 224);
    assert_eq!(
        item_grid["peak"], grid["peak"],
        "peak cell of item vs image"
    );
    let cells = |g: &Value| -> Vec<f64> {
        g["grid"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
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
    let png = call(s, "POST", "/v1/explain/heatmap", r, Some(&by_item));
    assert_eq!(png.status, 200, "{}", png.body);
    assert_eq!(&png.bytes[..8], b"\x89PNG\r\n\x1a\n");
    let png_size = |b: &[u8]| {
        (
            u32::from_be_bytes(b[16..20].try_into().unwrap()),
            u32::from_be_bytes(b[20..24].try_into().unwrap()),
        )
    };
    assert_eq!(png_size(&png.bytes), (224, 224), "heat-map of the crop");
    let item_image_path = "/v1/catalogues/shirts/items/10030.jpg/image";
    expect_error(
        &call(s, "GET", item_image_path, None, None),
        401,
        "missing api key",
        "item image without key",
    );
    let jpeg = call(s, "GET", item_image_path, r, None);
    assert_eq!(jpeg.status, 200, "{}", jpeg.body);
    assert_eq!(&jpeg.bytes[..2], &[0xFF, 0xD8], "a JPEG");
    let decoded = image::load_from_memory(&jpeg.bytes).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (224, 224));
    eprintln!("thumbnail of 10030.jpg: {} bytes", jpeg.bytes.len());
    // The same bytes explained as an image give the item's grid exactly.
    let same = ok(
        &call(
            s,
            "POST",
            "/v1/explain",
            r,
            Some(&json!({"image": b64(&jpeg.bytes), "attribute": "attr_3"})),
        ),
        "explain the thumbnail as an image",
    );
    let max_same = cells(&same)
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    assert!(max_same < 1e-4, "thumbnail as image vs item: {max_same}");
    for (body, status, needle, what) in [
        (
            json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3",
                   "image": b64(&image(&shared, "10030.jpg"))}),
            400,
            "not both",
            "explain with image and item",
        ),
        (
            json!({"attribute": "attr_3"}),
            400,
            "give",
            "explain with neither",
        ),
        (
            json!({"item_id": "10030.jpg", "attribute": "attr_3"}),
            400,
            "catalogue",
            "explain item without catalogue",
        ),
        (
            json!({"catalogue": "shirts", "item_id": "nope", "attribute": "attr_3"}),
            404,
            "nope",
            "explain unknown item",
        ),
        (
            json!({"catalogue": "hats", "item_id": "10030.jpg", "attribute": "attr_3"}),
            404,
            "hats",
            "explain item of unknown catalogue",
        ),
        (
            json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "sleeve"}),
            422,
            "sleeve",
            "explain item, unknown attribute",
        ),
    ] {
        expect_error(
            &call(s, "POST", "/v1/explain", r, Some(&body)),
            status,
            needle,
            what,
        );
    }
    expect_error(
        &call(s, "GET", "/v1/catalogues/shirts/items/nope/image", r, None),
        404,
        "nope",
        "image of unknown item",
    );

    // Deletes.
    ok(
        &call(
            s,
            "DELETE",
            "/v1/catalogues/shirts/items/10030.jpg",
            w,
            None,
        ),
        "delete item",
    );
    expect_error(
        &call(
            s,
            "DELETE",
            "/v1/catalogues/shirts/items/10030.jpg",
            w,
            None,
        ),
        404,
        "10030.jpg",
        "delete twice",
    );
    expect_error(
        &call(s, "GET", item_image_path, r, None),
        404,
        "10030.jpg",
        "image of a deleted item",
    );
    expect_error(
        &call(s, "POST", "/v1/explain/heatmap", r, Some(&by_item)),
        404,
        "10030.jpg",
        "heat-map of a deleted item",
    );
    // A re-upsert brings the image back (and replaces it).
    let again = json!({"items": [{"id": "10030.jpg", "image": b64(&image(&shared, "10017.jpg"))}]});
    ok(
        &call(s, "PUT", "/v1/catalogues/shirts/items", w, Some(&again)),
        "upsert again",
    );
    let replaced = call(s, "GET", item_image_path, r, None);
    assert_eq!(replaced.status, 200);
    let other = call(
        s,
        "GET",
        "/v1/catalogues/shirts/items/10017.jpg/image",
        r,
        None,
    );
    assert_eq!(
        replaced.bytes, other.bytes,
        "the update replaced the thumbnail"
    );
    ok(
        &call(
            s,
            "DELETE",
            "/v1/catalogues/shirts/items/10030.jpg",
            w,
            None,
        ),
        "delete again",
    );
    let metrics = call(s, "GET", "/metrics", None, None);
    let text = String::from_utf8(metrics.bytes).unwrap();
    assert!(
        text.contains("asen_catalogue_items{catalogue=\"shirts\"} 4"),
        "{text}"
    );
    assert!(
        text.contains("route=\"/v1/catalogues/{name}/search\",status=\"200\""),
        "{text}"
    );
    assert!(text.contains("status=\"401\""), "{text}");
    ok(&call(s, "DELETE", "/v1/catalogues/shirts", w, None), "drop");
    expect_error(
        &call(s, "GET", "/v1/catalogues/shirts", r, None),
        404,
        "shirts",
        "dropped",
    );
    let dropped_item =
        json!({"catalogue": "shirts", "item_id": "10002.jpg", "attribute": "attr_3"});
    expect_error(
        &call(s, "POST", "/v1/explain", r, Some(&dropped_item)),
        404,
        "shirts",
        "explain item of a dropped catalogue",
    );
    expect_error(
        &call(
            s,
            "GET",
            "/v1/catalogues/shirts/items/10002.jpg/image",
            r,
            None,
        ),
        404,
        "shirts",
        "image of a dropped catalogue",
    );
    // A catalogue created again under the same name starts without the old thumbnails.
    ok(
        &call(s, "PUT", "/v1/catalogues/shirts", w, None),
        "re-create",
    );
    expect_error(
        &call(
            s,
            "GET",
            "/v1/catalogues/shirts/items/10002.jpg/image",
            r,
            None,
        ),
        404,
        "10002.jpg",
        "image after re-create",
    );

    // Graceful shutdown on SIGTERM: exit 0 after flushing.
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "server did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "exit {status}: {err}");
    assert!(err.contains("store flushed"), "{err}");
    eprintln!("api suite took {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn refuses_public_bind_without_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "0.0.0.0:0", "--model", "/nonexistent"])
        .env_remove("ASEN_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an api key"), "{err}");
}
