//! API keys: write and admin routes need `ASEN_API_KEY` when one is configured, read routes
//! need the read key (or the write key) when one is configured. Keys are compared in
//! constant time.

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::state::AppState;

/// The configured keys.
#[derive(Clone, Default)]
pub struct Keys {
    /// Needed by write and admin routes; accepted everywhere.
    pub api_key: Option<String>,
    /// Needed by read routes when set.
    pub read_key: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys.
        f.debug_struct("Keys")
            .field("api_key", &self.api_key.is_some())
            .field("read_key", &self.read_key.is_some())
            .finish()
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads (search, compare, get).
    Read,
    /// Writes and admin (create, upsert, delete).
    Write,
}

fn equal(given: &str, expected: &str) -> bool {
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The key sent in `api-key` or `authorization: bearer`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get("authorization")?.to_str().ok()?;
    let (scheme, key) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

impl Keys {
    /// Whether a request with `given` may use a route of kind `access`.
    pub fn check(&self, access: Access, given: Option<&str>, route: &str) -> Result<(), ApiError> {
        let accepted: Vec<&str> = match access {
            Access::Write => self.api_key.iter().map(String::as_str).collect(),
            Access::Read => match &self.read_key {
                None => Vec::new(),
                Some(r) => std::iter::once(r.as_str())
                    .chain(self.api_key.as_deref())
                    .collect(),
            },
        };
        if accepted.is_empty() {
            return Ok(());
        }
        let route = route.to_string();
        let given = given.ok_or_else(|| ApiError::MissingKey {
            route: route.clone(),
        })?;
        // Compare against every accepted key (no early exit).
        let ok = accepted.iter().fold(false, |acc, k| acc | equal(given, k));
        if ok {
            Ok(())
        } else {
            Err(ApiError::WrongKey { route })
        }
    }
}

fn route_name(req: &Request) -> String {
    let path = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_string(), |m| m.as_str().to_string());
    format!("{} {path}", req.method())
}

/// Middleware for read routes.
pub async fn require_read(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.keys.check(
        Access::Read,
        presented_key(req.headers()),
        &route_name(&req),
    )?;
    Ok(next.run(req).await)
}

/// Middleware for write and admin routes.
pub async fn require_write(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    state.keys.check(
        Access::Write,
        presented_key(req.headers()),
        &route_name(&req),
    )?;
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(api: Option<&str>, read: Option<&str>) -> Keys {
        Keys {
            api_key: api.map(str::to_string),
            read_key: read.map(str::to_string),
        }
    }

    #[test]
    fn no_keys_means_open() {
        let k = keys(None, None);
        assert!(k.check(Access::Write, None, "r").is_ok());
        assert!(k.check(Access::Read, None, "r").is_ok());
    }

    #[test]
    fn write_key_guards_writes_only() {
        let k = keys(Some("write-secret"), None);
        assert!(matches!(
            k.check(Access::Write, None, "PUT /x"),
            Err(ApiError::MissingKey { .. })
        ));
        assert!(matches!(
            k.check(Access::Write, Some("write-secreT"), "PUT /x"),
            Err(ApiError::WrongKey { .. })
        ));
        assert!(k
            .check(Access::Write, Some("write-secret"), "PUT /x")
            .is_ok());
        assert!(k.check(Access::Read, None, "GET /x").is_ok());
    }

    #[test]
    fn read_key_accepts_either_key() {
        let k = keys(Some("write-secret"), Some("read-secret"));
        assert!(k.check(Access::Read, Some("read-secret"), "r").is_ok());
        assert!(k.check(Access::Read, Some("write-secret"), "r").is_ok());
        assert!(k.check(Access::Read, Some("nope"), "r").is_err());
        assert!(
            k.check(Access::Write, Some("read-secret"), "w").is_err(),
            "read key cannot write"
        );
    }

    #[test]
    fn key_from_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&h), Some("abc"));
        h.insert("api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&h), Some("xyz"));
    }
}
