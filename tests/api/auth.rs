//! Keys: writes need the write key, reads the read key (or the write key); open routes none.

use crate::server::*;

#[test]
fn write_without_a_key_is_401() {
    let Some(s) = TestServer::start() else { return };
    let create = s.call("PUT", "/v1/catalogues/shirts", None, None);
    expect_error(&create, 401, "missing api key", "create without key");
}

#[test]
fn write_with_a_wrong_key_is_403() {
    let Some(s) = TestServer::start() else { return };
    let create = s.call("PUT", "/v1/catalogues/shirts", Some("wrong-key-123"), None);
    expect_error(&create, 403, "wrong api key", "create with wrong key");
}

#[test]
fn write_with_the_read_key_is_403() {
    let Some(s) = TestServer::start() else { return };
    let create = s.call("PUT", "/v1/catalogues/shirts", R, None);
    expect_error(&create, 403, "wrong api key", "create with the read key");
    // Nothing was created by the refused requests.
    assert_eq!(
        ok(&s.call("GET", "/v1/catalogues", R, None), "list"),
        serde_json::json!([])
    );
}

#[test]
fn read_without_a_key_is_401() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("GET", "/v1/catalogues", None, None),
        401,
        "missing api key",
        "list without key",
    );
}

#[test]
fn read_with_a_wrong_key_is_403() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call("GET", "/v1/catalogues", Some("wrong-key-123"), None),
        403,
        "wrong api key",
        "list with wrong key",
    );
}

#[test]
fn reads_accept_the_read_key_and_the_write_key() {
    let Some(s) = TestServer::start() else { return };
    ok(
        &s.call("GET", "/v1/catalogues", R, None),
        "list with the read key",
    );
    ok(
        &s.call("GET", "/v1/catalogues", W, None),
        "list with the write key",
    );
}

#[test]
fn item_image_without_a_key_is_401() {
    let Some(s) = TestServer::start() else { return };
    expect_error(
        &s.call(
            "GET",
            "/v1/catalogues/shirts/items/10030.jpg/image",
            None,
            None,
        ),
        401,
        "missing api key",
        "item image without key",
    );
}
