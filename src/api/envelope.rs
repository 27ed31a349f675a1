//! The success envelope `{"result": .., "status": "ok", "time": seconds}` and [`ApiJson`], the
//! JSON extractor whose rejections become [`ApiError`]s (same error envelope as everything else).

use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::ApiError;
use crate::service::Answer;

/// A successful answer.
#[derive(Debug, Serialize)]
pub struct Envelope<T> {
    /// The answer.
    pub result: T,
    /// Always `"ok"`.
    pub status: &'static str,
    /// Seconds spent in the handler.
    pub time: f64,
    /// Fingerprint of the model the answer was computed with (searches, compare, explain);
    /// absent from answers no model is involved in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// Wrap `result` with the time elapsed since `started`.
pub fn ok<T: Serialize>(result: T, started: Instant) -> Response {
    envelope(result, None, started)
}

/// Wrap a service [`Answer`] with the time elapsed since `started` and its model.
pub fn ok_answer<T: Serialize>(answer: Answer<T>, started: Instant) -> Response {
    envelope(answer.value, answer.model, started)
}

fn envelope<T: Serialize>(result: T, model: Option<String>, started: Instant) -> Response {
    axum::Json(Envelope {
        result,
        status: "ok",
        time: started.elapsed().as_secs_f64(),
        model,
    })
    .into_response()
}

/// `axum::Json` with the app's error format on rejection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(from_rejection(rejection)),
        }
    }
}

/// Turn a JSON rejection into an error naming the problem.
pub fn from_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = match &rejection {
        JsonRejection::JsonDataError(_) => format!("invalid JSON body: {}", rejection.body_text()),
        JsonRejection::JsonSyntaxError(_) => {
            format!("malformed JSON body: {}", rejection.body_text())
        }
        JsonRejection::MissingJsonContentType(_) => {
            "expected a JSON body with content-type: application/json".to_string()
        }
        _ if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
            "request body is larger than limits.max_body_bytes".to_string()
        }
        _ => format!("cannot read JSON body: {}", rejection.body_text()),
    };
    ApiError::BadBody { status, detail }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;

    #[tokio::test]
    async fn success_envelope_shape() {
        let resp = ok(vec![1, 2], Instant::now());
        assert_eq!(resp.status(), 200);
        let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["result"], serde_json::json!([1, 2]));
        assert!(v["time"].as_f64().unwrap() >= 0.0);
    }

    #[tokio::test]
    async fn error_envelope_shape() {
        let resp = ApiError::BadRequest("bad base64 in items[0].image".into()).into_response();
        assert_eq!(resp.status(), 400);
        let body = to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"]["error"], "bad base64 in items[0].image");
    }

    #[tokio::test]
    async fn json_rejection_names_the_field() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Body {
            k: usize,
        }
        let req = Request::builder()
            .header("content-type", "application/json")
            .body(axum::body::Body::from(r#"{"k": "ten"}"#))
            .unwrap();
        let err = ApiJson::<Body>::from_request(req, &()).await.unwrap_err();
        assert_eq!(err.status(), 422);
        assert!(err.to_string().contains("k:"), "{err}");
    }
}
