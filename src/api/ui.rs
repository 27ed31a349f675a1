//! The web page at `/`: plain HTML, CSS and ES modules from `ui/`, embedded in the binary
//! (no CDN, nothing fetched at run time). The files are public (they hold no data; every
//! API call the page makes carries the key the user typed) and are sent with a
//! Content-Security-Policy that allows only this server's own scripts, styles and API, and
//! images from it, `blob:` (item images and heat-maps fetched with the key) and `data:` (a
//! chosen file shown before it is sent).

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::http::HeaderName;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// The page's Content-Security-Policy: no inline script or style, no other origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// One embedded file: its name under `/ui/` (`""` for the page itself), type and bytes.
pub struct UiFile {
    /// Name after `/ui/`; the page (`index.html`) is served at `/`.
    pub name: &'static str,
    /// `content-type`.
    pub content_type: &'static str,
    /// The file.
    pub body: &'static str,
}

/// Every file of the page.
pub const FILES: &[UiFile] = &[
    UiFile {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_str!("ui/index.html"),
    },
    UiFile {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("ui/style.css"),
    },
    UiFile {
        name: "api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/api.js"),
    },
    UiFile {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("ui/app.js"),
    },
];

fn serve(file: &UiFile) -> Response {
    (
        [
            (CONTENT_TYPE, file.content_type),
            (
                HeaderName::from_static("content-security-policy"),
                CONTENT_SECURITY_POLICY,
            ),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (HeaderName::from_static("referrer-policy"), "no-referrer"),
            (CACHE_CONTROL, "no-cache"),
        ],
        file.body,
    )
        .into_response()
}

/// `GET /`: the page.
pub async fn page() -> Response {
    serve(&FILES[0])
}

/// `GET /ui/{file}`: a stylesheet or module of the page; 404 in the error envelope otherwise.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    FILES
        .iter()
        .skip(1)
        .find(|f| f.name == name)
        .map(serve)
        .ok_or_else(|| ApiError::NoRoute {
            method: "GET".into(),
            path: format!("/ui/{name}"),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page and everything it loads, images aside.
    #[test]
    fn the_page_weighs_at_most_150_kb() {
        let total: usize = FILES.iter().map(|f| f.body.len()).sum();
        eprintln!("ui: {} files, {total} bytes uncompressed", FILES.len());
        assert!(total <= 150_000, "the page is {total} bytes");
    }

    #[test]
    fn the_page_loads_only_embedded_files_and_no_inline_script() {
        let html = FILES[0].body;
        for file in &FILES[1..] {
            assert!(
                html.contains(&format!("/ui/{}", file.name))
                    || FILES
                        .iter()
                        .any(|f| f.body.contains(&format!("./{}", file.name))),
                "{} is never loaded",
                file.name
            );
        }
        assert!(!html.contains("<script>"), "no inline script");
        assert!(!html.contains("style="), "no inline style");
        for f in FILES {
            assert!(
                !f.body.contains("http://") && !f.body.contains("https://"),
                "{} names another origin",
                f.name
            );
            assert!(!f.body.contains("innerHTML"), "{} writes HTML", f.name);
        }
    }

    #[tokio::test]
    async fn files_carry_the_policy() {
        let resp = page().await;
        assert_eq!(resp.headers()["content-type"], "text/html; charset=utf-8");
        assert_eq!(
            resp.headers()["content-security-policy"],
            CONTENT_SECURITY_POLICY
        );
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe-inline"));
        let js = asset(Path("app.js".into())).await.unwrap();
        assert_eq!(
            js.headers()["content-type"],
            "text/javascript; charset=utf-8"
        );
        assert_eq!(js.headers()["x-content-type-options"], "nosniff");
        let missing = asset(Path("index.html".into())).await.unwrap_err();
        assert_eq!(missing.status(), 404);
        assert!(asset(Path("../Cargo.toml".into())).await.is_err());
    }
}
