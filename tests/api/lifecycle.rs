//! A catalogue's model lifecycle over HTTP: reindex to another model while clients search,
//! and dropping an attribute.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use asen::service::{Model, Models};
use serde_json::{json, Value};

use crate::server::*;

#[path = "../common/retrained.rs"]
mod retrained;

/// The retrained model's directory, written once per test binary.
pub(crate) fn retrained_dir(shared: &std::path::Path) -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        retrained::write_retrained(&shared.join(CHECKPOINT), &dir.path().join("model"));
        dir
    })
    .path()
}

/// The suite's model (the default) and the retrained one, for a test server; the retrained
/// model's fingerprint goes to `fingerprint`.
pub(crate) fn with_retrained(
    config: &asen::config::Config,
    suite: Arc<Model>,
    fingerprint: &mut String,
) -> Models {
    let dir = retrained_dir(&shared().expect("fixtures checked by the server"));
    let other = Model::load(
        &dir.join("model"),
        &asen::commands::embedder_options(config).unwrap(),
    )
    .expect("load the retrained model");
    *fingerprint = other.fingerprint().to_string();
    let mut models = Models::shared(suite, config.server.max_concurrent_forwards);
    models.add(other);
    models
}

/// Poll `GET .../reindex` of `catalogue` until it is done (panics if it fails or takes over
/// two minutes).
pub(crate) fn wait_for_reindex(s: &TestServer, catalogue: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = ok(
            &s.call(
                "GET",
                &format!("/v1/catalogues/{catalogue}/reindex"),
                R,
                None,
            ),
            "status",
        );
        match status["state"]["state"].as_str().unwrap() {
            "running" => assert!(Instant::now() < deadline, "still running: {status}"),
            "done" => return,
            other => panic!("reindex {other}: {status}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seeded catalogue (built with the suite model, the default) on a server that also
/// holds the retrained model; and that model's fingerprint.
fn served_with_retrained() -> Option<(TestServer, String)> {
    let mut fingerprint = String::new();
    let s = TestServer::seeded_with_models(|config, suite| {
        with_retrained(config, suite, &mut fingerprint)
    })?;
    Some((s, fingerprint))
}

fn fingerprint_of(s: &TestServer) -> String {
    ok(&s.call("GET", "/v1/model", R, None), "model")["fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

/// 16 more items (the five photos under other ids), so that a reindex takes a while.
fn add_copies(s: &TestServer) {
    for batch in 0..2 {
        let items: Vec<Value> = (0..MAX_BATCH)
            .map(|i| {
                let n = batch * MAX_BATCH + i;
                json!({"id": format!("copy-{n}"), "image": b64(&s.image(NAMES[n % NAMES.len()]))})
            })
            .collect();
        ok(
            &s.call(
                "PUT",
                "/v1/catalogues/shirts/items",
                W,
                Some(&json!({ "items": items })),
            ),
            "upsert copies",
        );
    }
}

fn reindex_state(s: &TestServer) -> Value {
    ok(
        &s.call("GET", "/v1/catalogues/shirts/reindex", R, None),
        "status",
    )
}

#[test]
fn reindex_while_eight_clients_search_has_no_error_and_no_mixed_answer() {
    let Some((s, target)) = served_with_retrained() else {
        return;
    };
    let before = fingerprint_of(&s);
    let vector_before = attr_0_of(&s, "10030.jpg");
    add_copies(&s);
    let query = json!({"attribute": "attr_0", "image": b64(&s.image("10030.jpg")), "k": 1});
    let stop = Arc::new(AtomicBool::new(false));
    let base = s.base.clone();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, base, query, before, target) = (
                stop.clone(),
                base.clone(),
                query.clone(),
                before.clone(),
                target.clone(),
            );
            std::thread::spawn(move || {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = send(
                        &base,
                        "POST",
                        SEARCH,
                        R,
                        "application/json",
                        Some(query.to_string().as_bytes()),
                    );
                    assert_eq!(reply.status, 200, "{}", reply.body);
                    let model = reply.body["model"].as_str().unwrap().to_string();
                    assert!(model == before || model == target, "{model}");
                    let hit = &reply.body["result"]["hits"][0];
                    answers.push((model, hit["score"].as_f64().unwrap()));
                    // The query photo is in the catalogue: with one model's query and
                    // vectors it is found with a near-1 score; mixed, it would score low.
                    assert!(
                        hit["score"].as_f64().unwrap() > 0.9,
                        "a mixed-model answer: {}",
                        reply.body
                    );
                    std::thread::sleep(Duration::from_millis(40));
                }
                answers
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let started = s.call(
        "POST",
        "/v1/catalogues/shirts/reindex",
        W,
        Some(&json!({ "model": target })),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    wait_for_reindex(&s, "shirts");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let answers: Vec<(String, f64)> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("a client failed"))
        .collect();
    assert!(
        answers.iter().any(|(m, _)| m == &before),
        "answers before the switch"
    );
    assert!(
        answers.iter().any(|(m, _)| m == &target),
        "answers after the switch"
    );
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    assert_eq!(details["schema"]["model"]["fingerprint"], target.as_str());
    assert!(details["schema"].get("migration").is_none(), "{details}");
    let attributes = details["schema"]["attributes"].as_array().unwrap();
    assert_eq!(
        attributes.len(),
        8,
        "no staging attribute left: {attributes:?}"
    );
    assert_eq!(details["stats"]["items"], 21);
    // The check above can see a mix: the two models' vectors of one photo differ.
    let cosine = dot(&vector_before, &attr_0_of(&s, "10030.jpg"));
    assert!(
        cosine < 0.5,
        "old and new vectors too alike to tell a mix: {cosine}"
    );
}

fn attr_0_of(s: &TestServer, id: &str) -> Vec<f64> {
    let item = ok(
        &s.call(
            "GET",
            &format!("/v1/catalogues/shirts/items/{id}?with_vectors=true"),
            R,
            None,
        ),
        "item",
    );
    item["vectors"]["attr_0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn a_reindex_to_a_model_the_server_does_not_hold_is_409() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let reply = s.call(
        "POST",
        "/v1/catalogues/shirts/reindex",
        W,
        Some(&json!({"model": "0123456789abcdef"})),
    );
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.error().contains("--also-model"), "{}", reply.error());
    assert_eq!(reindex_state(&s)["state"]["state"], "none");
}

#[test]
fn a_reindex_needs_the_write_key() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let reply = s.call(
        "POST",
        "/v1/catalogues/shirts/reindex",
        R,
        Some(&json!({"model": "00"})),
    );
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[test]
fn dropping_an_attribute_removes_its_graph_and_vectors() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let schema = ok(
        &s.call("DELETE", "/v1/catalogues/shirts/attributes/attr_1", W, None),
        "drop",
    );
    assert!(!schema["attributes"]
        .as_array()
        .unwrap()
        .contains(&json!("attr_1")));
    let search = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_1", "item_id": "10002.jpg", "k": 3})),
    );
    assert_eq!(search.status, 422, "{}", search.body);
    let item = ok(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10002.jpg?with_vectors=true",
            R,
            None,
        ),
        "item",
    );
    assert!(item["vectors"].get("attr_1").is_none(), "{item}");
    assert!(item["vectors"].get("attr_0").is_some(), "{item}");
    let other = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "image": b64(&s.image("10030.jpg")), "k": 1})),
    );
    assert_eq!(ok(&other, "image search")["hits"][0]["id"], "10030.jpg");
}

#[test]
fn a_renamed_attribute_is_searched_and_explained_under_its_new_name() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let schema = ok(
        &s.call(
            "PATCH",
            "/v1/catalogues/shirts/attributes/attr_0",
            W,
            Some(&json!({"name": "neckline"})),
        ),
        "rename",
    );
    assert_eq!(schema["attributes"][0], "neckline");
    assert_eq!(schema["renamed"]["neckline"], "attr_0");
    // An image query on the new name is embedded by the model's attr_0 head: the photo
    // finds itself.
    let by_image = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "neckline", "image": b64(&s.image("10030.jpg")), "k": 1})),
    );
    let hit = &ok(&by_image, "image search")["hits"][0];
    assert_eq!(hit["id"], "10030.jpg");
    assert!(hit["score"].as_f64().unwrap() > 0.99, "{hit}");
    let old = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_0", "item_id": "10002.jpg", "k": 1})),
    );
    assert_eq!(old.status, 422, "{}", old.body);
    let explain = s.call(
        "POST",
        "/v1/explain",
        R,
        Some(&json!({"catalogue": "shirts", "item_id": "10030.jpg", "attribute": "neckline"})),
    );
    ok(&explain, "explain under the new name");
}

#[test]
fn renaming_to_a_name_in_use_is_422() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let reply = s.call(
        "PATCH",
        "/v1/catalogues/shirts/attributes/attr_0",
        W,
        Some(&json!({"name": "attr_1"})),
    );
    assert_eq!(reply.status, 422, "{}", reply.body);
}

#[test]
fn dropping_an_unknown_attribute_is_422() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    let reply = s.call("DELETE", "/v1/catalogues/shirts/attributes/nope", W, None);
    assert_eq!(reply.status, 422, "{}", reply.body);
}

/// `asen reindex --server`: the real server holding the retrained model beside the default
/// re-embeds the catalogue, and the command follows it to the end.
#[test]
fn reindex_command_drives_a_running_server() {
    let Some(shared) = shared() else { return };
    let model_dir = retrained_dir(&shared).join("model");
    let data = tempfile::tempdir().unwrap();
    let server = crate::process::spawn_args(
        &shared,
        data.path(),
        &["--also-model", model_dir.to_str().unwrap()],
        &[],
    );
    let call = |method: &str, path: &str, body: Option<&Value>| {
        crate::process::call(&server, method, path, W, body)
    };
    ok(&call("PUT", "/v1/catalogues/shirts", None), "create");
    let items: Vec<Value> = NAMES
        .iter()
        .map(|n| json!({"id": n, "image": b64(&std::fs::read(shared.join("golden/images").join(n)).unwrap())}))
        .collect();
    ok(
        &call(
            "PUT",
            "/v1/catalogues/shirts/items",
            Some(&json!({ "items": items })),
        ),
        "upsert",
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_asen"))
        .args([
            "reindex",
            "-c",
            "shirts",
            "--server",
            &server.base,
            "--model",
        ])
        .arg(&model_dir)
        .env("ASEN_API_KEY", WRITE_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("now holds model"), "{stdout}");
    let target = asen::service::models::fingerprint_files(&model_dir).unwrap();
    let details = ok(&call("GET", "/v1/catalogues/shirts", None), "details");
    assert_eq!(details["schema"]["model"]["fingerprint"], target.as_str());
}

/// An attribute of the catalogue's model that the catalogue did not index is added from the
/// stored crops: the other attributes' vectors stay bit-identical, the new one is searchable.
#[test]
fn an_added_attribute_is_computed_from_the_crops_alone() {
    let Some(s) = TestServer::start() else { return };
    ok(
        &s.call(
            "PUT",
            "/v1/catalogues/shirts",
            W,
            Some(&json!({"attributes": ["attr_0", "attr_1"]})),
        ),
        "create with two attributes",
    );
    ok(&s.upsert_json(&NAMES[..3]), "upsert");
    let bits = |v: &Value, a: &str| -> Vec<u32> {
        v["vectors"][a]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| (x.as_f64().unwrap() as f32).to_bits())
            .collect()
    };
    let item = |s: &TestServer| {
        ok(
            &s.call(
                "GET",
                "/v1/catalogues/shirts/items/10030.jpg?with_vectors=true",
                R,
                None,
            ),
            "item",
        )
    };
    let before = item(&s);
    let started = s.call(
        "POST",
        "/v1/catalogues/shirts/attributes",
        W,
        Some(&json!({"name": "attr_2"})),
    );
    assert_eq!(started.status, 202, "{}", started.body);
    wait_for_reindex(&s, "shirts");
    let after = item(&s);
    for a in ["attr_0", "attr_1"] {
        assert_eq!(bits(&before, a), bits(&after, a), "{a} bit-identical");
    }
    assert!(after["vectors"].get("attr_2").is_some(), "{after}");
    let details = ok(&s.call("GET", "/v1/catalogues/shirts", R, None), "details");
    assert_eq!(
        details["schema"]["attributes"],
        json!(["attr_0", "attr_1", "attr_2"])
    );
    assert!(details["schema"].get("migration").is_none());
    let search = s.call(
        "POST",
        SEARCH,
        R,
        Some(&json!({"attribute": "attr_2", "image": b64(&s.image("10030.jpg")), "k": 1})),
    );
    let hit = &ok(&search, "search the added attribute")["hits"][0];
    assert_eq!(hit["id"], "10030.jpg");
    assert!(hit["score"].as_f64().unwrap() > 0.9, "{hit}");
}

#[test]
fn adding_an_attribute_the_model_lacks_is_422() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    ok(
        &s.call("DELETE", "/v1/catalogues/shirts/attributes/attr_1", W, None),
        "drop",
    );
    let reply = s.call(
        "POST",
        "/v1/catalogues/shirts/attributes",
        W,
        Some(&json!({"name": "neckline"})),
    );
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.error().contains("no attribute"), "{}", reply.error());
}
