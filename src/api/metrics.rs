//! Request counters and latency sums rendered as Prometheus text at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::state::AppState;

/// (method, route, status).
type RequestKey = (String, String, u16);

/// Counters since start.
#[derive(Debug, Default)]
pub struct Metrics {
    /// (method, route, status) -> (requests, seconds).
    requests: Mutex<BTreeMap<RequestKey, (u64, f64)>>,
}

impl Metrics {
    /// Count one request.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let e = map
            .entry((method.to_string(), route.to_string(), status))
            .or_default();
        e.0 += 1;
        e.1 += seconds;
    }

    /// Prometheus text exposition; `items` are per-catalogue item counts.
    /// `forwards` counts model passes started, `in_flight_forwards` those running now.
    pub fn render(
        &self,
        items: &[(String, u64)],
        forwards: u64,
        in_flight_forwards: usize,
    ) -> String {
        let mut out = String::new();
        let map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP asen_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE asen_http_requests_total counter\n");
        for ((m, r, s), (n, _)) in map.iter() {
            let _ = writeln!(
                out,
                "asen_http_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}"
            );
        }
        out.push_str("# HELP asen_http_request_duration_seconds Time spent answering.\n");
        out.push_str("# TYPE asen_http_request_duration_seconds summary\n");
        for ((m, r, s), (n, secs)) in map.iter() {
            let labels = format!("method=\"{m}\",route=\"{r}\",status=\"{s}\"");
            let _ = writeln!(
                out,
                "asen_http_request_duration_seconds_sum{{{labels}}} {secs}"
            );
            let _ = writeln!(
                out,
                "asen_http_request_duration_seconds_count{{{labels}}} {n}"
            );
        }
        out.push_str("# HELP asen_model_forwards_total Model passes started.\n");
        out.push_str("# TYPE asen_model_forwards_total counter\n");
        let _ = writeln!(out, "asen_model_forwards_total {forwards}");
        out.push_str("# HELP asen_model_forwards_in_flight Model passes running now.\n");
        out.push_str("# TYPE asen_model_forwards_in_flight gauge\n");
        let _ = writeln!(out, "asen_model_forwards_in_flight {in_flight_forwards}");
        out.push_str("# HELP asen_catalogue_items Live items per catalogue.\n");
        out.push_str("# TYPE asen_catalogue_items gauge\n");
        for (c, n) in items {
            let _ = writeln!(out, "asen_catalogue_items{{catalogue=\"{c}\"}} {n}");
        }
        out
    }
}

/// The method label: the standard methods by name, anything else as `other`, so that made-up
/// methods cannot grow the number of series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Middleware counting every request by method, matched route (`unmatched` for no route)
/// and status: every label takes a bounded set of values.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let resp = next.run(req).await;
    state.metrics.record(
        method,
        &route,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters() {
        let m = super::Metrics::default();
        m.record("GET", "/healthz", 200, 0.5);
        m.record("GET", "/healthz", 200, 0.25);
        let text = m.render(&[("shirts".into(), 3)], 7, 1);
        assert!(text.contains(
            "asen_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"
        ));
        assert!(text.contains("asen_http_request_duration_seconds_sum{method=\"GET\",route=\"/healthz\",status=\"200\"} 0.75"));
        assert!(text.contains("asen_catalogue_items{catalogue=\"shirts\"} 3"));
        assert!(text.contains("asen_model_forwards_total 7"));
        assert!(text.contains("asen_model_forwards_in_flight 1"));
    }

    #[test]
    fn made_up_methods_share_one_label() {
        use axum::http::Method;
        for name in ["FOO", "BAR", "X-Y"] {
            let m = Method::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(super::method_label(&m), "other", "{name}");
        }
        assert_eq!(super::method_label(&Method::PUT), "PUT");
    }
}
