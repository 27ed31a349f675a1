//! [`RemoteSink`]: `asen ingest --server URL`, a client of a running `asen serve`.
//!
//! The server embeds: the client checks each image decodes under the pixel limit, sends
//! ids, payloads and base64 images in batches to `PUT /v1/catalogues/{c}/items` (the wire
//! type is the API's own [`ItemBody`]) and reads the envelope back (`{"result": ..,
//! "status": "ok", "time": ..}`, errors `{"status": {"error": ".."}}`). The server stores the
//! hex sha256 of each image as the item's `content_hash`, the same hash as a local run;
//! skip checks read it back with `GET /v1/catalogues/{c}/items/{id}`.
//!
//! HTTP goes through `ureq` (http and https, every resolved address tried in turn, one
//! timeout per request), and no reply is read past [`MAX_REPLY_BYTES`].

use std::io::Read;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use asen_index::{ItemId, Payload};
use asen_models::{decode_image, PreprocessConfig};
use base64::Engine;

use super::sink::{Sink, WriteOutcome};
use crate::api::ItemBody;
use crate::service::items::NewItem;

/// Largest reply read from the server (the envelope of a write or of one item).
pub const MAX_REPLY_BYTES: u64 = 4 * 1024 * 1024;

/// A reply: status and body.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The server's error message: `status.error` of the envelope, else the body text.
    fn error_message(&self) -> String {
        if let Some(msg) = self
            .json()
            .as_ref()
            .and_then(|v| v.pointer("/status/error"))
            .and_then(|v| v.as_str())
        {
            return msg.to_string();
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            "(empty body)".to_string()
        } else {
            text.chars().take(300).collect()
        }
    }
}

/// A running server's address and credentials.
#[derive(Debug, Clone)]
pub struct RemoteClient {
    base: String,
    api_key: Option<String>,
    agent: ureq::Agent,
}

impl RemoteClient {
    /// A client of `url` (`http[s]://host[:port][/prefix]`), sending `api_key` in the
    /// `api-key` header when given.
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> anyhow::Result<Self> {
        match url.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() && !rest.starts_with('/') => {}
            Some(("http" | "https", _)) => bail!("server url {url:?} has no host"),
            Some((scheme, _)) => {
                bail!("server url {url:?}: scheme {scheme:?} is not supported (http or https)")
            }
            None => bail!("server url {url:?} has no scheme (expected http://host:port)"),
        }
        let agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            .user_agent(concat!("asen-ingest/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            base: url.trim_end_matches('/').to_string(),
            api_key,
            agent,
        })
    }

    fn catalogue_url(&self, catalogue: &str) -> String {
        format!("{}/v1/catalogues/{}", self.base, encode_segment(catalogue))
    }

    /// Creates the catalogue (`PUT /v1/catalogues/{c}` with an empty body: the server takes
    /// the schema from its model) unless `GET` finds it.
    pub fn ensure_catalogue(&self, catalogue: &str) -> anyhow::Result<()> {
        let url = self.catalogue_url(catalogue);
        let got = self.send("GET", &url, None)?;
        match got.status {
            200..=299 => Ok(()),
            404 => {
                let put = self.send("PUT", &url, Some(b""))?;
                match put.status {
                    200..=299 | 409 => Ok(()),
                    s => bail!(
                        "cannot create catalogue {catalogue:?} on the server: http {s}: {}",
                        put.error_message()
                    ),
                }
            }
            s => bail!(
                "cannot read catalogue {catalogue:?} on the server: http {s}: {}",
                got.error_message()
            ),
        }
    }

    /// The content hash and payload stored with an item, `None` when the item is absent.
    pub fn stored(
        &self,
        catalogue: &str,
        id: &ItemId,
    ) -> anyhow::Result<Option<(Option<String>, Payload)>> {
        let url = format!(
            "{}/items/{}",
            self.catalogue_url(catalogue),
            encode_segment(id.as_str())
        );
        let reply = self.send("GET", &url, None)?;
        match reply.status {
            200..=299 => {
                let json = reply.json().unwrap_or_default();
                let hash = json
                    .pointer("/result/content_hash")
                    .and_then(|v| v.as_str())
                    .map(str::to_string);
                let payload = json
                    .pointer("/result/payload")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                Ok(Some((hash, payload)))
            }
            404 => Ok(None),
            s => bail!(
                "cannot read item {:?} of catalogue {catalogue:?} on the server: http {s}: {}",
                id.as_str(),
                reply.error_message()
            ),
        }
    }

    /// `POST /v1/catalogues/{c}/reindex` (start or resume a reindex to the model
    /// `fingerprint`, which the server must hold), or with `None` `GET` its status: the
    /// status object.
    pub fn reindex(
        &self,
        catalogue: &str,
        fingerprint: Option<&str>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/reindex", self.catalogue_url(catalogue));
        let reply = match fingerprint {
            Some(fp) => {
                let body = serde_json::to_vec(&serde_json::json!({ "model": fp }))?;
                self.send("POST", &url, Some(&body))?
            }
            None => self.send("GET", &url, None)?,
        };
        match reply.status {
            200..=299 => Ok(reply
                .json()
                .and_then(|j| j.get("result").cloned())
                .unwrap_or_default()),
            s => bail!(
                "the server refused the reindex of catalogue {catalogue:?}: http {s}: {}",
                reply.error_message()
            ),
        }
    }

    /// Sends a batch. `Ok(Refused)` when the server refuses its content (a bad item: retry
    /// items alone to find it); `Err` when the server cannot be used at all (unreachable,
    /// wrong key, unknown catalogue, 5xx).
    pub fn put_items(&self, catalogue: &str, items: &[ItemBody]) -> anyhow::Result<WriteOutcome> {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            items: &'a [ItemBody],
        }
        let body = serde_json::to_vec(&Body { items })?;
        let url = format!("{}/items", self.catalogue_url(catalogue));
        let reply = self.send("PUT", &url, Some(&body))?;
        match reply.status {
            200..=299 => Ok(WriteOutcome::Written {
                model_time: Duration::ZERO,
            }),
            401 | 403 => bail!(
                "the server refused the api key (http {}): {}; set --api-key or ASEN_API_KEY",
                reply.status,
                reply.error_message()
            ),
            404 => bail!(
                "catalogue {catalogue:?} not found on the server: {}",
                reply.error_message()
            ),
            400..=499 => Ok(WriteOutcome::Refused(format!(
                "server refused the item: http {}: {}",
                reply.status,
                reply.error_message()
            ))),
            s => bail!(
                "the server failed to store a batch of {} items: http {s}: {}",
                items.len(),
                reply.error_message()
            ),
        }
    }

    /// One request. Every request of this client is idempotent (reads, catalogue creation,
    /// upserts by id), so a transport failure is retried once on a fresh connection: a pooled
    /// keep-alive connection the server has closed meanwhile fails the first try.
    fn send(&self, method: &str, url: &str, body: Option<&[u8]>) -> anyhow::Result<Reply> {
        match self.send_once(method, url, body) {
            Err(SendError::Transport(first)) => {
                tracing::debug!(method, url, error = %first, "transport error, retrying once");
                match self.send_once(method, url, body) {
                    Err(SendError::Transport(e)) => {
                        Err(anyhow!("{e}")).with_context(|| format!("cannot reach {method} {url}"))
                    }
                    Err(SendError::Other(e)) => Err(e),
                    Ok(reply) => Ok(reply),
                }
            }
            Err(SendError::Other(e)) => Err(e),
            Ok(reply) => Ok(reply),
        }
    }

    fn send_once(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<Reply, SendError> {
        let mut request = self
            .agent
            .request(method, url)
            .set("accept", "application/json");
        if let Some(key) = &self.api_key {
            request = request.set("api-key", key);
        }
        let result = match body {
            Some([]) => request.send_bytes(&[]),
            Some(bytes) => request
                .set("content-type", "application/json")
                .send_bytes(bytes),
            None => request.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(SendError::Transport(Box::new(t))),
        };
        let status = response.status();
        let mut body = Vec::new();
        response
            .into_reader()
            .take(MAX_REPLY_BYTES + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("no complete answer to {method} {url}"))
            .map_err(SendError::Other)?;
        if body.len() as u64 > MAX_REPLY_BYTES {
            return Err(SendError::Other(anyhow!(
                "the answer to {method} {url} is larger than {MAX_REPLY_BYTES} bytes"
            )));
        }
        Ok(Reply { status, body })
    }
}

/// Why one try of a request failed.
enum SendError {
    /// The connection failed: worth one more try.
    Transport(Box<ureq::Transport>),
    /// Anything else.
    Other(anyhow::Error),
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Sends items to a running server, which embeds and stores them.
pub struct RemoteSink {
    client: RemoteClient,
    preprocess: PreprocessConfig,
    batch_size: usize,
}

impl RemoteSink {
    /// A sink over `client` sending `batch_size` items per request; images are checked
    /// against `preprocess`'s limits before they are sent.
    pub fn new(client: RemoteClient, preprocess: PreprocessConfig, batch_size: usize) -> Self {
        Self {
            client,
            preprocess,
            batch_size: batch_size.max(1),
        }
    }
}

impl Sink for RemoteSink {
    type Prepared = ItemBody;

    fn ensure_catalogue(&self, catalogue: &str) -> anyhow::Result<()> {
        self.client.ensure_catalogue(catalogue)
    }

    fn is_current(
        &self,
        catalogue: &str,
        id: &ItemId,
        hash: &str,
        payload: &Payload,
    ) -> anyhow::Result<bool> {
        Ok(match self.client.stored(catalogue, id)? {
            Some((stored_hash, stored_payload)) => {
                stored_hash.as_deref() == Some(hash) && &stored_payload == payload
            }
            None => false,
        })
    }

    fn prepare(&self, item: NewItem) -> Result<ItemBody, String> {
        // Refuse here what the server would refuse, without sending it.
        decode_image(&item.image, &self.preprocess).map_err(|e| e.to_string())?;
        Ok(ItemBody {
            id: item.id.to_string(),
            payload: item.payload,
            image: Some(base64::engine::general_purpose::STANDARD.encode(&item.image)),
        })
    }

    fn write(&self, catalogue: &str, batch: &[ItemBody]) -> anyhow::Result<WriteOutcome> {
        self.client.put_items(catalogue, batch)
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn embeds_here(&self) -> bool {
        false
    }

    fn finish(&self) -> anyhow::Result<()> {
        // The server acknowledges each batch once it is durable.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use asen_index::Payload;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-request HTTP server answering `answer`; returns its port and the request.
    fn serve_once(answer: Vec<u8>) -> (u16, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head, then the announced body.
            loop {
                let n = s.read(&mut chunk).unwrap();
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    while buf.len() < i + 4 + len {
                        let n = s.read(&mut chunk).unwrap();
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    break;
                }
            }
            let _ = s.write_all(&answer);
            String::from_utf8(buf).unwrap()
        });
        (port, handle)
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn client(port: u16, key: Option<&str>) -> RemoteClient {
        RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            key.map(str::to_string),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn item() -> ItemBody {
        ItemBody {
            id: "a/1".into(),
            payload: Payload::new(),
            image: Some("AAAA".into()),
        }
    }

    #[test]
    fn urls_need_an_http_or_https_scheme_and_a_host() {
        let t = Duration::from_secs(1);
        assert!(RemoteClient::new("http://[::1]:9000/prefix/", None, t).is_ok());
        assert!(RemoteClient::new("https://asen.example:443", None, t).is_ok());
        let err = RemoteClient::new("ftp://h:1", None, t).unwrap_err();
        assert!(err.to_string().contains("http or https"), "{err}");
        let err = RemoteClient::new("localhost:80", None, t).unwrap_err();
        assert!(err.to_string().contains("no scheme"), "{err}");
        let err = RemoteClient::new("http://", None, t).unwrap_err();
        assert!(err.to_string().contains("no host"), "{err}");
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("shoes/12 a?"), "shoes%2F12%20a%3F");
        assert_eq!(encode_segment("A-z_0.~"), "A-z_0.~");
    }

    #[test]
    fn put_items_sends_key_and_json() {
        let (port, h) = serve_once(http("200 OK", r#"{"result":{},"status":"ok"}"#));
        let outcome = client(port, Some("k1"))
            .put_items("shirts", &[item()])
            .unwrap();
        assert!(matches!(outcome, WriteOutcome::Written { .. }));
        let req = h.join().unwrap();
        assert!(
            req.starts_with("PUT /v1/catalogues/shirts/items HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.to_lowercase().contains("\r\napi-key: k1\r\n"), "{req}");
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["items"][0]["id"], "a/1");
        assert_eq!(body["items"][0]["image"], "AAAA");
    }

    #[test]
    fn put_items_maps_a_4xx_to_a_refusal() {
        let (port, _h) = serve_once(http(
            "422 Unprocessable Entity",
            r#"{"status":{"error":"not an image: a/1"}}"#,
        ));
        let outcome = client(port, None).put_items("c", &[item()]).unwrap();
        assert_eq!(
            outcome,
            WriteOutcome::Refused("server refused the item: http 422: not an image: a/1".into())
        );
    }

    #[test]
    fn put_items_stops_on_a_wrong_key() {
        let (port, _h) = serve_once(http(
            "401 Unauthorized",
            r#"{"status":{"error":"missing key"}}"#,
        ));
        let err = client(port, None)
            .put_items("c", &[item()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("api key"), "{err}");
    }

    #[test]
    fn stored_reads_hash_and_payload_from_the_envelope() {
        let (port, h) = serve_once(http(
            "200 OK",
            r#"{"result":{"id":"x y","content_hash":"abc","payload":{"brand":"acme"}},"status":"ok"}"#,
        ));
        let id = ItemId::new("x y").unwrap();
        let (hash, payload) = client(port, None).stored("c", &id).unwrap().unwrap();
        assert_eq!(hash.as_deref(), Some("abc"));
        assert_eq!(payload["brand"], "acme");
        assert!(h
            .join()
            .unwrap()
            .starts_with("GET /v1/catalogues/c/items/x%20y HTTP/1.1"));
    }

    #[test]
    fn stored_of_a_404_is_absent() {
        let (port, _h) = serve_once(http("404 Not Found", r#"{"status":{"error":"no"}}"#));
        let id = ItemId::new("x").unwrap();
        assert_eq!(client(port, None).stored("c", &id).unwrap(), None);
    }

    #[test]
    fn replies_over_the_limit_are_refused() {
        let big = "x".repeat(MAX_REPLY_BYTES as usize + 10);
        let (port, _h) = serve_once(http("200 OK", &big));
        let id = ItemId::new("x").unwrap();
        let err = client(port, None).stored("c", &id).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn a_dropped_connection_is_retried_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            // First connection: read the request head, then close without an answer.
            let (mut first, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = first.read(&mut buf);
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            let _ = second.read(&mut buf);
            second
                .write_all(&http("200 OK", r#"{"result":{},"status":"ok"}"#))
                .unwrap();
        });
        client(port, None).ensure_catalogue("c").unwrap();
        server.join().unwrap();
    }

    #[test]
    fn unreachable_server_is_an_error_naming_it() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = client(port, None)
            .ensure_catalogue("c")
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }
}
