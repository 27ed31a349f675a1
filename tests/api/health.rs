//! Open routes: health, readiness, the model card, the OpenAPI document.

use std::sync::atomic::Ordering;

use crate::server::*;

#[test]
fn healthz_and_readyz_answer_without_a_key() {
    let Some(s) = TestServer::start() else { return };
    assert_eq!(
        ok(&s.call("GET", "/healthz", None, None), "healthz"),
        "alive"
    );
    assert_eq!(ok(&s.call("GET", "/readyz", None, None), "readyz"), "ready");
}

#[test]
fn readyz_is_503_once_not_ready_while_healthz_stays_alive() {
    let Some(s) = TestServer::start() else { return };
    s.state.ready.store(false, Ordering::Relaxed);
    expect_error(
        &s.call("GET", "/readyz", None, None),
        503,
        "not ready",
        "readyz while shutting down",
    );
    assert_eq!(
        ok(&s.call("GET", "/healthz", None, None), "healthz"),
        "alive"
    );
}

#[test]
fn model_card_lists_the_checkpoint_attributes_uncalibrated() {
    let Some(s) = TestServer::start() else { return };
    let model = ok(&s.call("GET", "/v1/model", R, None), "model");
    assert_eq!(model["attributes"].as_array().unwrap().len(), 8);
    assert_eq!(model["attributes"][0]["name"], "attr_0");
    assert!(model["dimension"].as_u64().unwrap() > 0);
    assert!(model["match_thresholds"].is_null());
}

#[test]
fn openapi_json_documents_every_route() {
    let Some(s) = TestServer::start() else { return };
    let doc = s.call("GET", "/openapi.json", None, None);
    assert_eq!(doc.status, 200);
    let expected = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/v1/model"),
        ("get", "/v1/catalogues"),
        ("put", "/v1/catalogues/{name}"),
        ("get", "/v1/catalogues/{name}"),
        ("delete", "/v1/catalogues/{name}"),
        ("get", "/v1/catalogues/{name}/fields/{field}/values"),
        ("get", "/v1/catalogues/{name}/items"),
        ("put", "/v1/catalogues/{name}/items"),
        ("get", "/v1/catalogues/{name}/items/{id}"),
        ("delete", "/v1/catalogues/{name}/items/{id}"),
        ("post", "/v1/catalogues/{name}/search"),
        ("post", "/v1/catalogues/{name}/copies"),
        ("post", "/v1/compare"),
        ("post", "/v1/explain"),
        ("post", "/v1/explain/heatmap"),
        ("get", "/v1/catalogues/{name}/items/{id}/image"),
        ("post", "/v1/catalogues/{name}/reindex"),
        ("post", "/v1/catalogues/{name}/attributes"),
        ("get", "/v1/catalogues/{name}/reindex"),
        ("delete", "/v1/catalogues/{name}/attributes/{attribute}"),
        ("patch", "/v1/catalogues/{name}/attributes/{attribute}"),
    ];
    for (method, path) in expected {
        assert!(
            doc.body["paths"][path][method].is_object(),
            "openapi.json lacks {method} {path}"
        );
    }
    // The router's own list agrees with the document served over HTTP.
    assert_eq!(asen::api::ROUTES.len(), expected.len());
    for (method, path) in asen::api::ROUTES {
        assert!(
            doc.body["paths"][*path][method.to_ascii_lowercase()].is_object(),
            "openapi.json lacks {method} {path} of api::ROUTES"
        );
    }
}
