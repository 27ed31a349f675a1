//! [`TestServer`]: the real router served in process on `127.0.0.1:0`, over a fresh temp store,
//! with the model of the shared fixtures loaded once per test binary; and the HTTP helpers
//! (`ureq`) every test module uses.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use asen::api::{self, AppState, Keys};
use asen::commands::{self, Needs};
use asen::config::Config;
use asen::service::{Model, Models};
use base64::Engine;
use serde_json::{json, Value};

pub const WRITE_KEY: &str = "test-write-key";
pub const READ_KEY: &str = "test-read-key";
pub const W: Option<&str> = Some(WRITE_KEY);
pub const R: Option<&str> = Some(READ_KEY);
/// `limits.max_body_bytes` of every test server.
pub const MAX_BODY: usize = 256 * 1024;
/// `limits.max_k`.
pub const MAX_K: usize = 100;
/// `limits.max_batch_items`.
pub const MAX_BATCH: usize = 8;
/// The official v1 checkpoint (random head, attributes `attr_0..attr_7`).
pub const CHECKPOINT: &str = "golden/asen_v1_fashionai.pth.gz";
/// The catalogue photos the tests upsert, in the order of the old single test.
pub const NAMES: [&str; 5] = [
    "10002.jpg",
    "10017.jpg",
    "10030.jpg",
    "15970.jpg",
    "59606.jpg",
];
/// The search route of the seeded catalogue.
pub const SEARCH: &str = "/v1/catalogues/shirts/search";

/// The shared fixtures this suite needs, through the one gate (`SKIPPED` notice, or a panic
/// under `ASEN_REQUIRE_SHARED=1`).
pub fn shared() -> Option<PathBuf> {
    asen_test_support::shared_dir(&[
        CHECKPOINT,
        "golden/images/10002.jpg",
        "golden/images/10017.jpg",
        "golden/images/10030.jpg",
        "golden/images/15970.jpg",
        "golden/images/59606.jpg",
    ])
}

/// The configuration every server of the suite runs under (also given to the real binary
/// through `ASEN_*` variables by `process.rs`).
pub fn config(data: &Path, shared: &Path) -> Config {
    let mut config = Config::default();
    config.index.data_dir = data.to_path_buf();
    config.model.path = Some(shared.join(CHECKPOINT));
    config.model.batch_size = 4;
    config.limits.max_body_bytes = MAX_BODY;
    config.limits.max_k = MAX_K;
    config.limits.max_batch_items = MAX_BATCH;
    config.server.api_key = Some(WRITE_KEY.into());
    config.server.read_key = Some(READ_KEY.into());
    config
}

/// The model, loaded once per test binary and shared by every server.
fn model(config: &Config) -> Arc<Model> {
    static MODEL: OnceLock<Arc<Model>> = OnceLock::new();
    MODEL
        .get_or_init(|| Arc::new(commands::load_model(config).expect("load the v1 checkpoint")))
        .clone()
}

/// The router of `asen serve`, in process, on a random loopback port.
pub struct TestServer {
    pub base: String,
    pub shared: PathBuf,
    /// The server's state (readiness flag, service), shared with the running router.
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _data: tempfile::TempDir,
}

impl TestServer {
    /// A server over an empty store; `None` (after the skip notice) without the fixtures.
    pub fn start() -> Option<Self> {
        Self::start_with(|_| {})
    }

    /// A server over an empty store, its configuration changed by `tweak` first.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let shared = shared()?;
        Some(Self::serve(shared, tempfile::tempdir().unwrap(), tweak))
    }

    /// A server over the store `store` names (`index.store`, e.g. a `milvus://` URL);
    /// `None` (after the skip notice) without the fixtures.
    #[cfg_attr(not(feature = "milvus"), allow(dead_code))]
    pub fn start_on(store: &str) -> Option<Self> {
        let shared = shared()?;
        Some(Self::serve_on(
            shared,
            tempfile::tempdir().unwrap(),
            Some(store),
            |_| {},
        ))
    }

    /// [`TestServer::start_on`] with the models `models` returns (given the suite's
    /// configuration and model).
    #[cfg_attr(not(feature = "milvus"), allow(dead_code))]
    pub fn start_on_with_models(
        store: &str,
        models: impl FnOnce(&Config, Arc<Model>) -> Models,
    ) -> Option<Self> {
        let shared = shared()?;
        Some(Self::serve_models(
            shared,
            tempfile::tempdir().unwrap(),
            Some(store),
            |_| {},
            models,
        ))
    }

    /// A server over an empty local store holding `models`.
    pub fn start_with_models(models: impl FnOnce(&Config, Arc<Model>) -> Models) -> Option<Self> {
        let shared = shared()?;
        Some(Self::serve_models(
            shared,
            tempfile::tempdir().unwrap(),
            None,
            |_| {},
            models,
        ))
    }

    /// A server holding `models` over a copy of this server's store (flushed first).
    pub fn restarted_with_models(
        &self,
        models: impl FnOnce(&Config, Arc<Model>) -> Models,
    ) -> Self {
        self.state
            .service
            .store_handle()
            .expect("a store")
            .flush()
            .expect("flush the store");
        let data = tempfile::tempdir().unwrap();
        copy_dir(self._data.path(), data.path());
        Self::serve_models(self.shared.clone(), data, None, |_| {}, models)
    }

    /// A server over the store in `data` (taken over: removed when the server is dropped).
    fn serve(shared: PathBuf, data: tempfile::TempDir, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::serve_on(shared, data, None, tweak)
    }

    fn serve_on(
        shared: PathBuf,
        data: tempfile::TempDir,
        store: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        Self::serve_models(shared, data, store, tweak, |config, suite| {
            Models::shared(suite, config.server.max_concurrent_forwards)
        })
    }

    fn serve_models(
        shared: PathBuf,
        data: tempfile::TempDir,
        store: Option<&str>,
        tweak: impl FnOnce(&mut Config),
        models: impl FnOnce(&Config, Arc<Model>) -> Models,
    ) -> Self {
        let mut config = config(data.path(), &shared);
        if let Some(store) = store {
            config.index.store = store.to_string();
        }
        tweak(&mut config);
        let service = commands::open_service(
            &config,
            Needs {
                store: true,
                model: false,
            },
        )
        .expect("open the store")
        .with_models(models(&config, model(&config)));
        let state = AppState::new(
            service,
            Keys {
                api_key: config.server.api_key.clone(),
                read_key: config.server.read_key.clone(),
            },
            config.limits.request_timeout_ms,
            config.limits.max_body_bytes,
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = api::router(state.clone());
        let options = api::ServeOptions {
            header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        };
        let thread = std::thread::Builder::new()
            .name(format!("server {addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
                    let server = api::serve(listener, app, options, async move {
                        let _ = stopped.await;
                        let _ = drain_tx.send(());
                    });
                    // Drain for at most 5 s once asked to stop (as `asen serve` does).
                    let deadline = async move {
                        let _ = drain_rx.await;
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    };
                    tokio::select! {
                        _ = server => {}
                        _ = deadline => {}
                    }
                });
            })
            .unwrap();
        Self {
            base: format!("http://{addr}"),
            shared,
            state,
            stop: Some(stop),
            thread: Some(thread),
            _data: data,
        }
    }

    /// A server over a fresh copy of the store that `seed` fills over HTTP once per test
    /// binary (`template` caches it): the forward passes of seeding are paid once, and each
    /// test still owns its store.
    fn from_template(
        template: &'static OnceLock<PathBuf>,
        name: &str,
        seed: fn(&TestServer),
    ) -> Option<Self> {
        let (shared, data) = Self::template_copy(template, name, seed)?;
        Some(Self::serve(shared, data, |_| {}))
    }

    /// A fresh copy of the template store (seeded on first use) and the fixtures' root.
    fn template_copy(
        template: &'static OnceLock<PathBuf>,
        name: &str,
        seed: fn(&TestServer),
    ) -> Option<(PathBuf, tempfile::TempDir)> {
        let shared = shared()?;
        let dir = template.get_or_init(|| {
            let seeder = Self::start().expect("fixtures checked above");
            seed(&seeder);
            seeder
                .state
                .service
                .store_handle()
                .expect("a store")
                .flush()
                .expect("flush the seeded store");
            let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
            remove_stale_templates(tmp, name);
            let dir = tmp.join(format!("api-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(seeder._data.path(), &dir);
            drop(seeder);
            dir
        });
        let data = tempfile::tempdir().unwrap();
        copy_dir(dir, data.path());
        Some((shared, data))
    }

    /// A server whose catalogue `shirts` holds the five photos of [`NAMES`]: the first three
    /// upserted as JSON (base64 images), the last two as multipart, as the old suite did.
    /// Payloads: brand `acme` for 10002.jpg and 59606.jpg, `zeta` otherwise; product
    /// 0, 0, 1, 2, 3. (Seeded once per binary, copied per test.)
    pub fn seeded() -> Option<Self> {
        Self::from_template(&SEEDED, "seeded", seed_shirts)
    }

    /// [`TestServer::seeded`]'s store served with the models `models` returns (given the
    /// suite's configuration and model): for a catalogue built with a model the server does
    /// not hold, or holds beside another default.
    pub fn seeded_with_models(models: impl FnOnce(&Config, Arc<Model>) -> Models) -> Option<Self> {
        let (shared, data) = Self::template_copy(&SEEDED, "seeded", seed_shirts)?;
        Some(Self::serve_models(shared, data, None, |_| {}, models))
    }

    /// A server whose catalogue `shirts` holds only 10002.jpg (for request errors, where
    /// the catalogue and item must exist but the ranking does not matter).
    pub fn with_one_item() -> Option<Self> {
        static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
        Self::from_template(&TEMPLATE, "one-item", |s| {
            ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
            let receipt = ok(&s.upsert_json(&NAMES[..1]), "upsert json");
            assert_eq!(receipt["affected"], 1);
        })
    }

    /// Upsert `names` (a prefix of [`NAMES`]) into `shirts` as JSON with base64 images.
    pub fn upsert_json(&self, names: &[&str]) -> Reply {
        let items: Vec<Value> = names
            .iter()
            .map(|n| {
                let i = NAMES.iter().position(|m| m == n).unwrap();
                json!({"id": n, "payload": {"brand": if i == 0 { "acme" } else { "zeta" }, "product": i / 2},
                       "image": b64(&self.image(n))})
            })
            .collect();
        self.call(
            "PUT",
            "/v1/catalogues/shirts/items",
            W,
            Some(&json!({"items": items})),
        )
    }

    /// Upsert 15970.jpg and 59606.jpg into `shirts` as multipart (one `items` JSON part,
    /// one `image:<id>` part per image).
    pub fn upsert_multipart(&self) -> Reply {
        let boundary = "asen-test-boundary";
        let mut body = Vec::new();
        let meta = json!([{"id": NAMES[3], "payload": {"brand": "zeta", "product": 2}},
                          {"id": NAMES[4], "payload": {"brand": "acme", "product": 3}}]);
        body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"items\"\r\ncontent-type: application/json\r\n\r\n{meta}\r\n").as_bytes());
        for n in &NAMES[3..] {
            body.extend(format!("--{boundary}\r\ncontent-disposition: form-data; name=\"image:{n}\"; filename=\"{n}\"\r\ncontent-type: image/jpeg\r\n\r\n").as_bytes());
            body.extend(self.image(n));
            body.extend(b"\r\n");
        }
        body.extend(format!("--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/form-data; boundary={boundary}");
        self.send("PUT", "/v1/catalogues/shirts/items", W, &ct, Some(&body))
    }

    /// The bytes of a golden photo.
    pub fn image(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.shared.join("golden/images").join(name)).unwrap()
    }

    /// The model's embedding dimension (`GET /v1/model`).
    pub fn dimension(&self) -> usize {
        let model = ok(&self.call("GET", "/v1/model", R, None), "model");
        model["dimension"].as_u64().unwrap() as usize
    }

    /// A JSON request (`body` serialised) with the `api-key` header when `key` is given.
    pub fn call(&self, method: &str, path: &str, key: Option<&str>, body: Option<&Value>) -> Reply {
        let raw = body.map(|b| b.to_string());
        self.send(
            method,
            path,
            key,
            "application/json",
            raw.as_deref().map(str::as_bytes),
        )
    }

    /// A raw request.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        content_type: &str,
        body: Option<&[u8]>,
    ) -> Reply {
        send(&self.base, method, path, key, content_type, body)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The store of [`TestServer::seeded`], filled once per test binary.
static SEEDED: OnceLock<PathBuf> = OnceLock::new();

fn seed_shirts(s: &TestServer) {
    ok(&s.call("PUT", "/v1/catalogues/shirts", W, None), "create");
    let receipt = ok(&s.upsert_json(&NAMES[..3]), "upsert json");
    assert_eq!(receipt["affected"], 3);
    let receipt = ok(&s.upsert_multipart(), "upsert multipart");
    assert_eq!(receipt["affected"], 2);
}

/// Remove the templates `api-<name>-<pid>` of earlier runs (over an hour old): statics are
/// never dropped, so a run cannot remove its own.
fn remove_stale_templates(tmp: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    let prefix = format!("api-{name}-");
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if stale && entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copy the folder `from` into `to` (created), recursively.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// One answer: status, body as JSON (`Null` when it is not JSON) and the raw bytes.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub bytes: Vec<u8>,
    /// The `retry-after` header, if any.
    pub retry_after: Option<String>,
    /// The `x-asen-model` header (heat-maps), if any.
    pub model: Option<String>,
}

impl Reply {
    /// The message of the error envelope (`{"status": {"error": ...}}`).
    pub fn error(&self) -> String {
        self.body["status"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error envelope: {}", self.body))
            .to_string()
    }
}

/// A raw request against `base` (a server in process or the real binary).
pub fn send(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    content_type: &str,
    body: Option<&[u8]>,
) -> Reply {
    let mut req = ureq::request(method, &format!("{base}{path}")).timeout(Duration::from_secs(120));
    if let Some(k) = key {
        req = req.set("api-key", k);
    }
    let result = match body {
        Some(b) => req.set("content-type", content_type).send_bytes(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {path}: transport error {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(str::to_string);
    let model = resp.header("x-asen-model").map(str::to_string);
    let mut bytes = Vec::new();
    resp.into_reader().read_to_end(&mut bytes).unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        body,
        bytes,
        retry_after,
        model,
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 200 in the ok envelope (`status: "ok"`, a numeric `time`); its `result`.
pub fn ok(reply: &Reply, what: &str) -> Value {
    assert_eq!(reply.status, 200, "{what}: {}", reply.body);
    assert_eq!(reply.body["status"], "ok", "{what}");
    assert!(reply.body["time"].as_f64().is_some(), "{what}");
    reply.body["result"].clone()
}

/// `status` with an error envelope whose message contains `needle`.
pub fn expect_error(reply: &Reply, status: u16, needle: &str, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.body);
    let e = reply.error();
    assert!(
        e.contains(needle),
        "{what}: error {e:?} should mention {needle:?}"
    );
}

/// The cells of an explain grid, row by row.
pub fn cells(g: &Value) -> Vec<f64> {
    g["grid"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().clone())
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Width and height from a PNG's IHDR chunk.
pub fn png_size(b: &[u8]) -> (u32, u32) {
    (
        u32::from_be_bytes(b[16..20].try_into().unwrap()),
        u32::from_be_bytes(b[20..24].try_into().unwrap()),
    )
}
