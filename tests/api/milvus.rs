//! The REST API on the Milvus store (feature `milvus`): the same requests answered the same
//! on both stores, and a restart of Milvus and `asen serve` (both SIGKILLed) that loses no
//! acknowledged item.
//!
//! The server is `ASEN_MILVUS_URL`; the restart test starts its own from `ASEN_MILVUS_LITE`
//! (the `milvus-lite` executable). Without them the tests skip with a notice, and fail when
//! `ASEN_REQUIRE_MILVUS=1`.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::server::*;

/// Held by every test that uses the shared Milvus server (`ASEN_MILVUS_URL`): one lists every
/// catalogue of the server and compares the list with a local store's, so the others must not
/// create theirs meanwhile.
static SHARED_MILVUS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The shared Milvus server's URL and its lock, or `None` (after the skip notice).
fn shared_milvus() -> Option<(String, std::sync::MutexGuard<'static, ()>)> {
    let url = configured("ASEN_MILVUS_URL")?;
    Some((url, SHARED_MILVUS.lock().unwrap_or_else(|p| p.into_inner())))
}

fn configured(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("ASEN_REQUIRE_MILVUS").as_deref() != Ok("1"),
                "ASEN_REQUIRE_MILVUS=1 but {var} is not set"
            );
            eprintln!("SKIPPED: {var} is not set (a Milvus server for the milvus store tests)");
            None
        }
    }
}

/// The reply without what differs between two runs of one request: the elapsed time, and a
/// write receipt's `durable` (Milvus acknowledges a write once it is in its WAL, so `durable`
/// is true only with `flush=true`; see docs/milvus.md).
fn stable(reply: &Reply) -> Value {
    let mut body = reply.body.clone();
    if let Some(o) = body.as_object_mut() {
        o.remove("time");
        if let Some(r) = o.get_mut("result").and_then(Value::as_object_mut) {
            r.remove("durable");
        }
    }
    body
}

/// Seeds `shirts` as the suite's `seeded` server does, after dropping any earlier one.
fn seed(s: &TestServer) {
    let _ = s.call("DELETE", "/v1/catalogues/shirts", W, None);
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    assert_eq!(
        ok(&s.upsert_json(&NAMES[..3]), "upsert json")["affected"],
        3
    );
    assert_eq!(ok(&s.upsert_multipart(), "upsert multipart")["affected"], 2);
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| close(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

#[test]
fn the_api_answers_the_same_on_milvus_and_local() {
    let Some((url, _serial)) = shared_milvus() else {
        return;
    };
    let Some(local) = TestServer::start() else {
        return;
    };
    let milvus = TestServer::start_on(&url).expect("fixtures checked above");
    seed(&local);
    seed(&milvus);
    let s = &local;
    let stored = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10017.jpg?with_vectors=true",
            R,
            None,
        ),
        "vectors",
    );
    let vector = stored["vectors"]["attr_2"].clone();
    let search = |body: Value| {
        (
            "POST",
            "/v1/catalogues/shirts/search".to_string(),
            Some(body),
        )
    };
    let get = |path: &str| ("GET", path.to_string(), None);
    let requests: Vec<(&str, String, Option<Value>)> = vec![
        get("/v1/catalogues"),
        get("/v1/catalogues/shirts"),
        get("/v1/catalogues/shirts/items/10002.jpg"),
        get("/v1/catalogues/shirts/items/10017.jpg?with_vectors=true"),
        get("/v1/catalogues/shirts/items/missing-item"),
        get("/v1/catalogues/nope"),
        search(json!({"attribute": "attr_2", "item_id": "10017.jpg", "k": 3})),
        search(json!({"attribute": "attr_2", "image": b64(&s.image("10017.jpg")), "k": 2})),
        search(json!({"attribute": "attr_2", "vector": vector, "k": 1})),
        search(
            json!({"attributes": {"attr_0": 0.7, "attr_5": 0.3}, "item_id": "10002.jpg", "k": 2}),
        ),
        search(
            json!({"attribute": "attr_1", "item_id": "10002.jpg", "k": 10,
                      "filter": {"match": {"field": "brand", "value": "acme"}}, "with_payload": true}),
        ),
        search(
            json!({"attribute": "attr_1", "item_id": "10002.jpg", "k": 10,
                      "filter": {"not": {"match": {"field": "brand", "value": "acme\" or 1 == 1"}}}}),
        ),
        search(
            json!({"attribute": "attr_1", "item_id": "59606.jpg", "k": 10,
                      "group_by": {"field": "product", "group_size": 2}}),
        ),
        search(json!({"attribute": "attr_1", "item_id": "59606.jpg", "score_threshold": 1.01})),
        search(
            json!({"attribute": "attr_4", "positive": ["10002.jpg"], "negative": ["10030.jpg"], "k": 3}),
        ),
        search(
            json!({"attribute": "attr_4", "item_id": "10002.jpg", "k": 3, "rerank_by": "attr_6"}),
        ),
        (
            "POST",
            "/v1/explain".into(),
            Some(json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "attr_3"})),
        ),
        (
            "POST",
            "/v1/compare".into(),
            Some(
                json!({"a": {"catalogue": "shirts", "item_id": "10002.jpg"}, "b": {"catalogue": "shirts", "item_id": "10017.jpg"}}),
            ),
        ),
        (
            "POST",
            "/v1/catalogues/shirts/copies".into(),
            Some(json!({"item_id": "10002.jpg", "k": 3})),
        ),
    ];
    for (method, path, body) in &requests {
        let a = local.call(method, path, R, body.as_ref());
        let b = milvus.call(method, path, R, body.as_ref());
        assert_eq!(
            a.status, b.status,
            "{method} {path} {body:?}: {} vs {}",
            a.body, b.body
        );
        assert!(
            close(&stable(&a), &stable(&b)),
            "{method} {path} {body:?}:\nlocal  {}\nmilvus {}",
            stable(&a),
            stable(&b)
        );
    }
    // The thumbnail, byte for byte.
    let path = "/v1/catalogues/shirts/items/10030.jpg/image";
    let (a, b) = (
        local.call("GET", path, R, None),
        milvus.call("GET", path, R, None),
    );
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(a.bytes, b.bytes);
    // Writes: delete, then drop.
    for (method, path) in [
        ("DELETE", "/v1/catalogues/shirts/items/10030.jpg"),
        ("GET", "/v1/catalogues/shirts/items/10030.jpg"),
        ("GET", "/v1/catalogues/shirts/items/10030.jpg/image"),
        ("DELETE", "/v1/catalogues/shirts"),
        ("GET", "/v1/catalogues/shirts"),
    ] {
        let (a, b) = (
            local.call(method, path, W, None),
            milvus.call(method, path, W, None),
        );
        assert_eq!(
            a.status, b.status,
            "{method} {path}: {} vs {}",
            a.body, b.body
        );
        assert!(
            close(&stable(&a), &stable(&b)),
            "{method} {path}: {} vs {}",
            a.body,
            b.body
        );
    }
}

/// A child process killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_milvus(exe: &str, data: &Path, port: u16) -> Killed {
    let child = Command::new(exe)
        .args(["server", "--data-dir"])
        .arg(data)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start milvus-lite");
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "milvus-lite did not listen");
        std::thread::sleep(Duration::from_millis(200));
    }
    Killed(child)
}

/// `asen serve` on the Milvus store at `port`; its base URL.
fn start_asen(shared: &Path, port: u16) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "127.0.0.1:0", "--store"])
        .arg(format!("milvus://127.0.0.1:{port}"))
        .arg("--model")
        .arg(shared.join(CHECKPOINT))
        .env("ASEN_API_KEY", WRITE_KEY)
        .env("ASEN_READ_KEY", READ_KEY)
        .env("ASEN_LIMITS__MAX_BODY_BYTES", MAX_BODY.to_string())
        .env("ASEN_MODEL__BATCH_SIZE", "4")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start asen serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(base) = line.trim().strip_prefix("asen listening on ") else {
        let mut err = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        panic!("asen serve did not start: {line:?} {err}");
    };
    (Killed(child), base.to_string())
}

#[test]
fn acknowledged_items_survive_killing_milvus_and_asen() {
    let Some(exe) = configured("ASEN_MILVUS_LITE") else {
        return;
    };
    let Some(shared) = shared() else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let milvus = start_milvus(&exe, data.path(), port);
    let (asen, base) = start_asen(&shared, port);
    let call = |base: &str, method: &str, path: &str, body: Option<&Value>| {
        let raw = body.map(|b| b.to_string());
        send(
            base,
            method,
            path,
            W,
            "application/json",
            raw.as_deref().map(str::as_bytes),
        )
    };
    ok(&call(&base, "PUT", "/v1/catalogues/shirts", None), "create");
    let mut acknowledged = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let image = std::fs::read(shared.join("golden/images").join(name)).unwrap();
        let body = json!({"items": [{"id": name, "payload": {"n": i}, "image": b64(&image)}]});
        let r = call(&base, "PUT", "/v1/catalogues/shirts/items", Some(&body));
        if r.status == 200 {
            acknowledged.push(name.to_string());
        }
    }
    assert_eq!(acknowledged.len(), NAMES.len(), "every upsert acknowledged");
    // No flush, no graceful stop: both die now.
    drop(asen);
    drop(milvus);

    let _milvus = start_milvus(&exe, data.path(), port);
    let (_asen, base) = start_asen(&shared, port);
    for (i, name) in acknowledged.iter().enumerate() {
        let item = ok(
            &call(
                &base,
                "GET",
                &format!("/v1/catalogues/shirts/items/{name}"),
                None,
            ),
            "item after restart",
        );
        assert_eq!(item["payload"]["n"], i, "{name}");
        let image = call(
            &base,
            "GET",
            &format!("/v1/catalogues/shirts/items/{name}/image"),
            None,
        );
        assert_eq!(image.status, 200, "thumbnail of {name} after restart");
    }
    let hits = ok(
        &call(
            &base,
            "POST",
            "/v1/catalogues/shirts/search",
            Some(&json!({"attribute": "attr_2", "item_id": "10017.jpg", "k": 10})),
        ),
        "search after restart",
    );
    assert_eq!(hits["hits"].as_array().unwrap().len(), NAMES.len() - 1);
}

/// The model lifecycle on the Milvus store: reindex to the retrained model from the crops kept
/// in Milvus, then drop and rename attributes, each checked by the searches that depend on it.
#[test]
fn reindex_drop_and_rename_work_on_milvus() {
    let Some((url, _serial)) = shared_milvus() else {
        return;
    };
    let mut target = String::new();
    let Some(s) = TestServer::start_on_with_models(&url, |config, suite| {
        crate::lifecycle::with_retrained(config, suite, &mut target)
    }) else {
        return;
    };
    let c = "/v1/catalogues/lifecycle_m";
    let _ = s.call("DELETE", c, W, None);
    ok(&s.call("PUT", c, W, None), "create");
    let items: Vec<Value> = NAMES
        .iter()
        .map(|n| json!({"id": n, "image": b64(&s.image(n))}))
        .collect();
    ok(
        &s.call(
            "PUT",
            &format!("{c}/items"),
            W,
            Some(&json!({ "items": items })),
        ),
        "upsert",
    );
    let started = s.call(
        "POST",
        &format!("{c}/reindex"),
        W,
        Some(&json!({"model": target})),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    crate::lifecycle::wait_for_reindex(&s, "lifecycle_m");
    let details = ok(&s.call("GET", c, R, None), "details");
    assert_eq!(details["schema"]["model"]["fingerprint"], target.as_str());
    assert_eq!(details["schema"]["attributes"].as_array().unwrap().len(), 8);
    let search = |attribute: &str| {
        s.call(
            "POST",
            &format!("{c}/search"),
            R,
            Some(&json!({"attribute": attribute, "image": b64(&s.image("10030.jpg")), "k": 1})),
        )
    };
    let after = search("attr_0");
    let hit = &ok(&after, "search after the reindex")["hits"][0];
    assert_eq!(hit["id"], "10030.jpg");
    assert!(hit["score"].as_f64().unwrap() > 0.9, "{hit}");
    assert_eq!(after.body["model"], target.as_str());
    ok(
        &s.call("DELETE", &format!("{c}/attributes/attr_1"), W, None),
        "drop",
    );
    assert_eq!(search("attr_1").status, 422);
    ok(
        &s.call(
            "PATCH",
            &format!("{c}/attributes/attr_0"),
            W,
            Some(&json!({"name": "neckline"})),
        ),
        "rename",
    );
    let renamed = search("neckline");
    assert_eq!(ok(&renamed, "renamed")["hits"][0]["id"], "10030.jpg");
    ok(&s.call("DELETE", c, W, None), "drop the catalogue");
}

/// Adding an attribute from a model that extends the catalogue's, on the Milvus store: only
/// the new attribute's vectors are computed, the others read back bit-identical, and the
/// catalogue records the extension.
#[test]
fn an_extension_adds_its_attribute_on_milvus() {
    let Some((url, _serial)) = shared_milvus() else {
        return;
    };
    let Some(s) = crate::extend::served_on(Some(&url), "base", &["ext"]) else {
        return;
    };
    use crate::extend::{bits, catalogue_of_three, fingerprint, models_dir, started, vectors_in};
    catalogue_of_three(&s, "extend_m");
    let before = vectors_in(&s, "extend_m", NAMES[0]);
    let added = &models_dir().1;
    started(&s.call(
        "POST",
        "/v1/catalogues/extend_m/attributes",
        W,
        Some(&json!({ "name": added })),
    ));
    crate::lifecycle::wait_for_reindex(&s, "extend_m");
    let after = vectors_in(&s, "extend_m", NAMES[0]);
    for (a, v) in before.as_object().unwrap() {
        assert_eq!(bits(v), bits(&after[a]), "{a} bit-identical");
    }
    assert!(after.get(added.as_str()).is_some(), "{after}");
    let details = ok(
        &s.call("GET", "/v1/catalogues/extend_m", R, None),
        "details",
    );
    assert_eq!(
        details["schema"]["model"]["fingerprint"],
        fingerprint("ext").as_str()
    );
    ok(
        &s.call("DELETE", "/v1/catalogues/extend_m", W, None),
        "clean up",
    );
}
