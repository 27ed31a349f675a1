//! `/metrics`: catalogue sizes and request counters by route and status.

use serde_json::json;

use crate::server::*;

#[test]
fn metrics_count_items_and_requests_by_route_and_status() {
    let Some(s) = TestServer::seeded() else {
        return;
    };
    ok(
        &s.call("DELETE", "/v1/catalogues/shirts/items/10030.jpg", W, None),
        "delete item",
    );
    ok(
        &s.call(
            "POST",
            SEARCH,
            R,
            Some(&json!({"attribute": "attr_2", "item_id": "10017.jpg", "k": 3})),
        ),
        "search",
    );
    expect_error(
        &s.call("GET", "/v1/catalogues", None, None),
        401,
        "missing api key",
        "list without key",
    );
    let metrics = s.call("GET", "/metrics", R, None);
    assert_eq!(metrics.status, 200, "metrics with the read key");
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
}
