//! [`ApiError`]: every way a request fails, one exhaustive mapping to a status, and the
//! error envelope `{"status": {"error": "what, where"}, "time": s}` as body.

use asen_index::ErrorKind;
use asen_models::ModelError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;

/// A failed request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A service function failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The body could not be read as the route's JSON (syntax, types, size).
    #[error("{detail}")]
    BadBody {
        /// The status the rejection calls for (400, 413, 415, 422).
        status: StatusCode,
        /// What was wrong, with the JSON position when known.
        detail: String,
    },
    /// A parameter outside the JSON body is malformed (path, query, base64, multipart).
    #[error("{0}")]
    BadRequest(String),
    /// No key was given and the route needs one.
    #[error("missing api key for {route}: send it in the \"api-key\" header or as \"authorization: bearer <key>\"")]
    MissingKey {
        /// The route.
        route: String,
    },
    /// The key given is not accepted for the route.
    #[error("wrong api key for {route}")]
    WrongKey {
        /// The route.
        route: String,
    },
    /// No such route.
    #[error("no route {method} {path}")]
    NoRoute {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// The route exists, but not for this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// Method.
        method: String,
        /// Path.
        path: String,
    },
    /// The request ran past `limits.request_timeout_ms`.
    #[error("request timed out after {timeout_ms} ms (limits.request_timeout_ms)")]
    Timeout {
        /// The limit.
        timeout_ms: u64,
    },
    /// The server is shutting down or a worker failed.
    #[error("{0}")]
    Internal(String),
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        ApiError::Service(e.into())
    }
}

impl From<asen_index::IndexError> for ApiError {
    fn from(e: asen_index::IndexError) -> Self {
        ApiError::Service(e.into())
    }
}

fn model_status(e: &ModelError) -> StatusCode {
    match e {
        ModelError::UnsupportedImage { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ModelError::ImageDecode { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ModelError::ImageTooLarge { .. } | ModelError::DecodeTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        ModelError::UnknownAttribute { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        ModelError::InvalidArgument(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ModelError::CheckpointFormat { .. }
        | ModelError::CheckpointMismatch { .. }
        | ModelError::Card { .. }
        | ModelError::Device { .. }
        | ModelError::WeightsNotFound { .. }
        | ModelError::Dataset { .. }
        | ModelError::FeatureCache { .. }
        | ModelError::Io { .. }
        | ModelError::Candle(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    /// The HTTP status: an exhaustive match, so a new variant forces a decision.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Service(s) => match s {
                ServiceError::Model(e) => model_status(e),
                ServiceError::Index(e) => match e.kind() {
                    ErrorKind::InvalidInput => match e {
                        asen_index::IndexError::InvalidK { .. } => StatusCode::BAD_REQUEST,
                        asen_index::IndexError::BatchTooLarge { .. }
                        | asen_index::IndexError::PayloadTooLarge { .. }
                        | asen_index::IndexError::ThumbnailTooLarge { .. } => {
                            StatusCode::PAYLOAD_TOO_LARGE
                        }
                        _ => StatusCode::UNPROCESSABLE_ENTITY,
                    },
                    ErrorKind::NotFound => StatusCode::NOT_FOUND,
                    ErrorKind::Conflict => StatusCode::CONFLICT,
                    ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                },
                ServiceError::InvalidRequest { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ServiceError::InvalidK { .. } => StatusCode::BAD_REQUEST,
                ServiceError::BatchTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                ServiceError::ItemNotFound { .. } => StatusCode::NOT_FOUND,
                ServiceError::Uncalibrated => StatusCode::UNPROCESSABLE_ENTITY,
                ServiceError::Thumbnail(_) => StatusCode::INTERNAL_SERVER_ERROR,
                ServiceError::NoThumbnail { .. }
                | ServiceError::ModelMismatch { .. }
                | ServiceError::MixedModels { .. }
                | ServiceError::ModelNotLoaded { .. }
                | ServiceError::MigrationInProgress { .. } => StatusCode::CONFLICT,
                ServiceError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
                // A deployment without the part the request needs: not the client's fault.
                ServiceError::NoModel { .. } | ServiceError::NoStore { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
            ApiError::BadBody { status, .. } => *status,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MissingKey { .. } => StatusCode::UNAUTHORIZED,
            ApiError::WrongKey { .. } => StatusCode::FORBIDDEN,
            ApiError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Timeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope {
    /// `{"error": "..."}`.
    pub status: ErrorStatus,
    /// Seconds spent (0 when unknown).
    pub time: f64,
}

/// The error message.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorStatus {
    /// What went wrong and where.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            ApiError::Service(ServiceError::Busy { retry_after_s, .. }) => Some(*retry_after_s),
            _ => None,
        };
        let client_may_know = matches!(self, ApiError::Timeout { .. }) || retry_after.is_some();
        let error = if status.is_server_error() && !client_may_know {
            // Full detail for people with the logs, a brief answer for the client.
            tracing::error!(error = %self, "request failed");
            format!(
                "internal error ({})",
                status.canonical_reason().unwrap_or("error")
            )
        } else {
            tracing::debug!(error = %self, %status, "request rejected");
            self.to_string()
        };
        let body = ErrorEnvelope {
            status: ErrorStatus { error },
            time: 0.0,
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let not_found: ApiError = asen_index::IndexError::CatalogueNotFound {
            catalogue: "x".into(),
        }
        .into();
        assert_eq!(not_found.status(), StatusCode::NOT_FOUND);
        let k = ApiError::Service(ServiceError::InvalidK { k: 0, max: 10 });
        assert_eq!(k.status(), StatusCode::BAD_REQUEST);
        let img: ApiError = ModelError::ImageDecode {
            source_name: None,
            detail: "eof".into(),
        }
        .into();
        assert_eq!(img.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            ApiError::WrongKey { route: "r".into() }.status(),
            StatusCode::FORBIDDEN
        );
        let no_thumbnail = ApiError::Service(ServiceError::NoThumbnail {
            catalogue: "c".into(),
            id: "x".into(),
        });
        assert_eq!(no_thumbnail.status(), StatusCode::CONFLICT);
        assert!(no_thumbnail.to_string().contains("thumbnails on"));
    }
}
