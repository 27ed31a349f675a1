//! Client of a running `asen serve` for `asen ingest --server URL`.
//!
//! The server embeds: the client sends each item's id, payload and base64 image in batches to
//! `PUT /v1/catalogues/{c}/items` and reads the Qdrant-style envelope back
//! (`{"result": .., "status": "ok", "time": ..}`, errors `{"status": {"error": ".."}}`).
//! The server stores the hex sha256 of each image's bytes as the item's `content_hash`, the
//! same hash the local pipeline computes; skip checks read it back with
//! `GET /v1/catalogues/{c}/items/{id}` (`result.content_hash`).
//!
//! HTTP/1.1 over `std::net` with one connection per request (`Connection: close`): ingestion
//! sends few, large requests, so a connection pool buys little and an async client would drag a
//! runtime into the CLI. Plain `http://` only; put a TLS proxy in front for remote servers.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use asen_index::{ItemId, Payload};
use serde::Serialize;

/// One item as sent to the server.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteItem {
    /// Item id.
    pub id: ItemId,
    /// Payload.
    pub payload: Payload,
    /// The encoded image file, base64 (standard alphabet, padded).
    pub image: String,
}

/// The server refused a request for its content (a 4xx other than auth or not-found).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRefusal {
    /// HTTP status.
    pub status: u16,
    /// The server's error message.
    pub message: String,
}

impl fmt::Display for RemoteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http {}: {}", self.status, self.message)
    }
}

/// A server's address and credentials.
#[derive(Debug, Clone)]
pub struct RemoteClient {
    host: String,
    port: u16,
    prefix: String,
    api_key: Option<String>,
    timeout: Duration,
}

struct Response {
    status: u16,
    body: Vec<u8>,
}

impl Response {
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

impl RemoteClient {
    /// A client of `url` (`http://host[:port][/prefix]`), sending `api_key` in the `api-key`
    /// header when given.
    pub fn new(url: &str, api_key: Option<String>, timeout: Duration) -> anyhow::Result<Self> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => bail!(
                "server url {url:?}: scheme {scheme:?} is not supported (only http://; use a TLS proxy for https)"
            ),
            None => bail!("server url {url:?} has no scheme (expected http://host:port)"),
        };
        let (authority, prefix) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| anyhow!("server url {url:?}: port {p:?} is not a number"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            bail!("server url {url:?} has no host");
        }
        Ok(RemoteClient {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            prefix: prefix.to_string(),
            api_key,
            timeout,
        })
    }

    fn catalogue_path(&self, catalogue: &str) -> String {
        format!(
            "{}/v1/catalogues/{}",
            self.prefix,
            encode_segment(catalogue)
        )
    }

    /// Creates the catalogue (`PUT /v1/catalogues/{c}` with an empty body: the server takes the
    /// schema from its model) unless `GET` finds it.
    pub fn ensure_catalogue(&self, catalogue: &str) -> anyhow::Result<()> {
        let path = self.catalogue_path(catalogue);
        let got = self.send("GET", &path, None)?;
        match got.status {
            200..=299 => Ok(()),
            404 => {
                let put = self.send("PUT", &path, Some(b""))?;
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

    /// The content hash stored with an item, `None` when the item is absent or has none.
    pub fn stored_hash(&self, catalogue: &str, id: &ItemId) -> anyhow::Result<Option<String>> {
        let path = format!(
            "{}/items/{}",
            self.catalogue_path(catalogue),
            encode_segment(id.as_str())
        );
        let resp = self.send("GET", &path, None)?;
        match resp.status {
            200..=299 => Ok(resp
                .json()
                .as_ref()
                .and_then(|v| v.pointer("/result/content_hash"))
                .and_then(|v| v.as_str())
                .map(str::to_string)),
            404 => Ok(None),
            s => bail!(
                "cannot read item {:?} of catalogue {catalogue:?} on the server: http {s}: {}",
                id.as_str(),
                resp.error_message()
            ),
        }
    }

    /// Sends a batch. `Ok(Err(..))` when the server refuses its content (a bad item: retry
    /// items alone to find it); `Err` when the server cannot be used at all (unreachable,
    /// wrong key, unknown catalogue, 5xx).
    pub fn put_items(
        &self,
        catalogue: &str,
        items: &[&RemoteItem],
    ) -> anyhow::Result<Result<(), RemoteRefusal>> {
        #[derive(Serialize)]
        struct Body<'a> {
            items: &'a [&'a RemoteItem],
        }
        let body = serde_json::to_vec(&Body { items })?;
        let path = format!("{}/items", self.catalogue_path(catalogue));
        let resp = self.send("PUT", &path, Some(&body))?;
        match resp.status {
            200..=299 => Ok(Ok(())),
            401 | 403 => bail!(
                "the server refused the api key (http {}): {}; set --api-key or ASEN_API_KEY",
                resp.status,
                resp.error_message()
            ),
            404 => bail!(
                "catalogue {catalogue:?} not found on the server: {}",
                resp.error_message()
            ),
            400..=499 => Ok(Err(RemoteRefusal {
                status: resp.status,
                message: resp.error_message(),
            })),
            s => bail!(
                "the server failed to store a batch of {} items: http {s}: {}",
                items.len(),
                resp.error_message()
            ),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> anyhow::Result<Response> {
        let what = || format!("{method} http://{}:{}{path}", self.host, self.port);
        let addr = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve server {}:{}", self.host, self.port))?
            .next()
            .ok_or_else(|| anyhow!("server {} has no address", self.host))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .with_context(|| format!("cannot connect to server {addr}"))?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: asen-ingest/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.host,
            self.port,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(key) = &self.api_key {
            head.push_str(&format!("api-key: {key}\r\n"));
        }
        let body = body.unwrap_or_default();
        if method != "GET" {
            head.push_str("Content-Type: application/json\r\n");
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream
            .write_all(head.as_bytes())
            .and_then(|_| stream.write_all(body))
            .and_then(|_| stream.flush())
            .with_context(|| format!("cannot send {}", what()))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("no answer to {}", what()))?;
        parse_response(&raw).with_context(|| format!("bad answer to {}", what()))
    }
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

fn parse_response(raw: &[u8]) -> anyhow::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("incomplete http response ({} bytes)", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).context("response headers are not utf-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.eq_ignore_ascii_case("chunked");
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            }
        }
    }
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        match length {
            Some(n) if n <= rest.len() => rest[..n].to_vec(),
            Some(n) => bail!("body cut short: {} of {n} bytes", rest.len()),
            None => rest.to_vec(),
        }
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunked body"))?;
        let size_text = std::str::from_utf8(&data[..eol])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| anyhow!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            bail!("chunk cut short");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls_are_parsed_or_refused_with_a_reason() {
        let c =
            RemoteClient::new("http://127.0.0.1:8080/api/", None, Duration::from_secs(1)).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.prefix.as_str()),
            ("127.0.0.1", 8080, "/api")
        );
        let c = RemoteClient::new("http://[::1]:9000", None, Duration::from_secs(1)).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 9000));
        let c = RemoteClient::new("http://example.org", None, Duration::from_secs(1)).unwrap();
        assert_eq!(c.port, 80);
        let err = RemoteClient::new("https://x", None, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("only http://"), "{err}");
        assert!(RemoteClient::new("localhost:80", None, Duration::from_secs(1)).is_err());
        assert!(RemoteClient::new("http://h:port", None, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("shoes/12 a?"), "shoes%2F12%20a%3F");
        assert_eq!(encode_segment("A-z_0.~"), "A-z_0.~");
    }

    #[test]
    fn responses_with_length_or_chunks_are_read() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"st\r\n1c\r\natus\":{\"error\":\"bad image\"}}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 400);
        assert_eq!(r.error_message(), "bad image");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
    }

    /// One-shot loopback server: answers one request with `answer`, returns what it received.
    fn serve_once(answer: String) -> (u16, std::thread::JoinHandle<String>) {
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
            s.write_all(answer.as_bytes()).unwrap();
            String::from_utf8(buf).unwrap()
        });
        (port, handle)
    }

    fn http(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn item() -> RemoteItem {
        RemoteItem {
            id: ItemId::new("a/1").unwrap(),
            payload: Payload::new(),
            image: "AAAA".into(),
        }
    }

    #[test]
    fn put_items_sends_key_and_json_and_maps_statuses() {
        let (port, h) = serve_once(http(
            "200 OK",
            "{\"result\":{},\"status\":\"ok\",\"time\":0.1}",
        ));
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            Some("k1".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(c.put_items("shirts", &[&item()]).unwrap(), Ok(()));
        let req = h.join().unwrap();
        assert!(
            req.starts_with("PUT /v1/catalogues/shirts/items HTTP/1.1\r\n"),
            "{req}"
        );
        assert!(req.contains("\r\napi-key: k1\r\n"));
        let body: serde_json::Value =
            serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(body["items"][0]["id"], "a/1");
        assert_eq!(body["items"][0]["image"], "AAAA");
        assert_eq!(
            body["items"][0].as_object().unwrap().len(),
            3,
            "id, payload, image only"
        );

        let (port, _h) = serve_once(http(
            "422 Unprocessable Entity",
            "{\"status\":{\"error\":\"not an image: a/1\"}}",
        ));
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let refusal = c.put_items("shirts", &[&item()]).unwrap().unwrap_err();
        assert_eq!(refusal.to_string(), "http 422: not an image: a/1");

        let (port, _h) = serve_once(http("401 Unauthorized", ""));
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let err = c.put_items("shirts", &[&item()]).unwrap_err().to_string();
        assert!(err.contains("api key"), "{err}");
    }

    #[test]
    fn stored_hash_reads_the_envelope_and_404_means_absent() {
        let (port, h) = serve_once(http(
            "200 OK",
            "{\"result\":{\"id\":\"a/1\",\"content_hash\":\"abc\"},\"status\":\"ok\"}",
        ));
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        let id = ItemId::new("a/1").unwrap();
        assert_eq!(c.stored_hash("c", &id).unwrap().as_deref(), Some("abc"));
        assert!(h
            .join()
            .unwrap()
            .starts_with("GET /v1/catalogues/c/items/a%2F1 HTTP/1.1"));
        let (port, _h) = serve_once(http("404 Not Found", ""));
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(c.stored_hash("c", &id).unwrap(), None);
    }

    #[test]
    fn unreachable_server_is_an_error_naming_it() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = RemoteClient::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(2),
        )
        .unwrap();
        let err = format!("{:#}", c.ensure_catalogue("c").unwrap_err());
        assert!(err.contains("cannot connect to server 127.0.0.1"), "{err}");
    }
}
