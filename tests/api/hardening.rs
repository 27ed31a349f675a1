//! The probes of issue 15, each as it was found, over HTTP: `/metrics` behind the read key,
//! bounded metric labels, every error in the envelope (body limit on every route, a non-UTF-8
//! path, a long path), the header read timeout, the decode memory limit and budget, and
//! duplicate or blank ids and attributes refused.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::*;

/// One raw HTTP/1.1 request over a fresh connection; the status line and the body.
fn raw(s: &TestServer, request: &[u8]) -> (String, String) {
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn metrics_without_the_read_key_is_401() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("GET", "/metrics", None, None),
        401,
        "missing api key",
        "metrics without key",
    );
}

#[test]
fn made_up_methods_are_counted_under_one_label() {
    let Some(s) = TestServer::start() else { return };
    for i in 0..20 {
        let reply = s.call(&format!("MADEUP{i}"), "/healthz", None, None);
        assert_eq!(reply.status, 405, "{}", reply.body);
    }
    let text = String::from_utf8(s.call("GET", "/metrics", R, None).bytes).unwrap();
    assert!(!text.contains("MADEUP"), "{text}");
    assert!(
        text.contains(
            "asen_http_requests_total{method=\"other\",route=\"/healthz\",status=\"405\"} 20"
        ),
        "{text}"
    );
}

#[test]
fn an_oversized_body_on_catalogue_creation_is_413_in_the_envelope() {
    let Some(s) = TestServer::start() else { return };
    let body = vec![b' '; MAX_BODY + 1];
    let reply = s.send(
        "PUT",
        "/v1/catalogues/x",
        W,
        "application/json",
        Some(&body),
    );
    expect_error(&reply, 413, "limits.max_body_bytes", "oversized create");
}

#[test]
fn an_oversized_body_on_upsert_is_413_in_the_envelope() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let body = vec![b' '; MAX_BODY + 1];
    let reply = s.send(
        "PUT",
        "/v1/catalogues/shirts/items",
        W,
        "application/json",
        Some(&body),
    );
    expect_error(&reply, 413, "limits.max_body_bytes", "oversized upsert");
}

#[test]
fn a_non_utf8_item_id_is_400_in_the_envelope() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let (status, body) = raw(
        &s,
        format!("GET /v1/catalogues/shirts/items/%FF%FE HTTP/1.1\r\nhost: x\r\napi-key: {READ_KEY}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(status.contains(" 400 "), "{status}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert!(
        v["status"]["error"].as_str().unwrap().contains("UTF-8"),
        "{body}"
    );
}

#[test]
fn a_long_path_is_414_in_the_envelope() {
    let Some(s) = TestServer::start() else { return };
    let path = format!("/v1/catalogues/{}", "a".repeat(asen::api::MAX_URI_BYTES));
    expect_error(
        &s.call("GET", &path, R, None),
        414,
        "request target of",
        "long path",
    );
}

#[test]
fn a_client_that_stops_mid_headers_is_cut_off_at_the_header_timeout() {
    let Some(s) = TestServer::start_with(|c| c.server.header_read_timeout_ms = 300) else {
        return;
    };
    let addr = s.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    // The server closes the connection (EOF, or a reset) without waiting for the rest.
    let _ = stream.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "still open after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(250),
        "closed at once: {waited:?}"
    );
}

#[test]
fn a_spent_decode_budget_is_503_with_retry_after() {
    let Some(s) = TestServer::start_with(|c| c.limits.decode_wait_ms = 0) else {
        return;
    };
    let budget = s.state.service.decode_budget.clone();
    let _held = budget.acquire(u64::MAX).unwrap();
    let reply = s.call(
        "POST",
        "/v1/compare",
        R,
        Some(&json!({"a": {"image": b64(&s.image(NAMES[0]))}, "b": {"image": b64(&s.image(NAMES[1]))}})),
    );
    expect_error(&reply, 503, "decode_budget_bytes", "spent budget");
    assert_eq!(reply.retry_after.as_deref(), Some("1"));
}

#[test]
fn duplicate_ids_in_one_batch_are_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let img = b64(&s.image(NAMES[1]));
    let reply = s.call(
        "PUT",
        "/v1/catalogues/shirts/items",
        W,
        Some(&json!({"items": [{"id": "dup", "image": img}, {"id": "dup", "image": img}]})),
    );
    expect_error(&reply, 422, "duplicate id \"dup\"", "duplicate ids");
    let missing = s.call("GET", "/v1/catalogues/shirts/items/dup", R, None);
    assert_eq!(missing.status, 404, "nothing of the batch was written");
}

#[test]
fn a_blank_id_is_422_like_an_empty_one() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let reply = s.call(
        "PUT",
        "/v1/catalogues/shirts/items",
        W,
        Some(&json!({"items": [{"id": "   ", "image": b64(&s.image(NAMES[1]))}]})),
    );
    expect_error(&reply, 422, "blank", "blank id");
}

#[test]
fn a_duplicate_multipart_image_part_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let boundary = "b0undary";
    let mut body = Vec::new();
    body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"items\"\r\n\r\n[{{\"id\": \"m\"}}]\r\n").as_bytes());
    for _ in 0..2 {
        body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"image:m\"; filename=\"m.jpg\"\r\ncontent-type: image/jpeg\r\n\r\n").as_bytes());
        body.extend(s.image(NAMES[1]));
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    let reply = s.send(
        "PUT",
        "/v1/catalogues/shirts/items",
        W,
        &format!("multipart/form-data; boundary={boundary}"),
        Some(&body),
    );
    expect_error(&reply, 422, "\"image:m\" appears twice", "duplicate part");
}

#[test]
fn compare_with_a_repeated_attribute_is_422() {
    let Some(s) = TestServer::with_one_item() else {
        return;
    };
    let reply = s.call(
        "POST",
        "/v1/compare",
        R,
        Some(&json!({"a": {"catalogue": "shirts", "item_id": NAMES[0]},
                     "b": {"catalogue": "shirts", "item_id": NAMES[0]},
                     "attributes": vec!["attr_0"; 1000]})),
    );
    expect_error(
        &reply,
        422,
        "\"attr_0\" is listed twice",
        "repeated attribute",
    );
}
