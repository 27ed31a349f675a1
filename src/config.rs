//! One [`Config`] for every command, layered once in `main`:
//! defaults < TOML file (`--config`) < `ASEN_SECTION__KEY` environment variables < CLI flags.
//! Nothing reads the environment after [`Config::load`].
//!
//! The environment convention is one: `ASEN_<SECTION>__<KEY>` (`ASEN_LIMITS__MAX_PIXELS`),
//! plus the two key shorthands `ASEN_API_KEY` and `ASEN_READ_KEY`. A value goes in as a
//! string when the key takes one (keys, paths, addresses: `ASEN_API_KEY=123456789012` is
//! the key "123456789012"), otherwise as a TOML scalar (`true`, `4000000`).
//!
//! The model directory is found in this order (the first that is set or exists):
//! 1. `--model PATH`, 2. `ASEN_MODEL__PATH`, 3. `[model] path` in the config file,
//! 4. `default/` beside the `asen` executable (an installed binary with its model),
//! 5. `models/default/` of the source tree the binary was built from (`cargo run`, tests).
//!
//! Backbone weights a model directory does not carry (the shipped model's frozen
//! ImageNet backbone) are looked up in: `[model] weights_dir`, `weights/` beside the
//! executable, the executable's folder, then `models/weights/` of the source tree.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::telemetry::LogFormat;

/// What can be wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown or mistyped keys.
    #[error("config {origin}: {detail}")]
    Parse {
        /// The file, or "environment" for `ASEN_*` variables.
        origin: String,
        /// The parser's message.
        detail: String,
    },
    /// An `ASEN_SECTION__KEY` variable names an unknown section.
    #[error("environment variable {name}: unknown config section {section:?} (known: {})", SECTIONS.join(", "))]
    UnknownSection {
        /// The variable.
        name: String,
        /// The section it names.
        section: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: {field}: {reason}")]
    Invalid {
        /// Dotted key.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Sections of the config file, which `ASEN_<SECTION>__<KEY>` may address.
const SECTIONS: &[&str] = &[
    "server", "limits", "model", "index", "ingest", "log", "train",
];

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listening, keys, shutdown.
    pub server: ServerConfig,
    /// Request bounds.
    pub limits: LimitsConfig,
    /// Which model and where it runs.
    pub model: ModelConfig,
    /// The store: which one, where, and the options of new catalogues.
    pub index: IndexConfig,
    /// Bulk ingestion (`asen ingest`).
    pub ingest: IngestConfig,
    /// Logging.
    pub log: LogConfig,
    /// `asen train` settings (the long flag names, with underscores).
    pub train: TrainSettings,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks a free one).
    pub bind: String,
    /// Key required by write and admin routes (also accepted for reads); `ASEN_API_KEY`.
    /// `asen ingest --server` sends it.
    pub api_key: Option<String>,
    /// Key required by read routes when set; `ASEN_READ_KEY`.
    pub read_key: Option<String>,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout_ms: u64,
    /// Model forwards allowed to run at once (each uses the blocking pool).
    pub max_concurrent_forwards: usize,
    /// Longest a client may take to send a request line and headers before the connection
    /// is closed (slow-header clients hold a connection each).
    pub header_read_timeout_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            api_key: None,
            read_key: None,
            shutdown_timeout_ms: 10_000,
            max_concurrent_forwards: 2,
            header_read_timeout_ms: 10_000,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Largest image, in declared pixels (width x height).
    pub max_pixels: u64,
    /// Most memory one image decode may take, counting bytes per pixel (a 16-bit RGBA PNG
    /// takes 8 a pixel) and the RGB8 copy.
    pub max_decode_bytes: u64,
    /// Most memory all image decodes in flight may take together; past it a decode waits
    /// `decode_wait_ms`, then the request is answered 503 with `Retry-After`.
    pub decode_budget_bytes: u64,
    /// Longest a decode waits for room in `decode_budget_bytes`.
    pub decode_wait_ms: u64,
    /// Most items in one upsert.
    pub max_batch_items: usize,
    /// Largest `k` of a search.
    pub max_k: usize,
    /// Longest a request may take before it is answered 503.
    pub request_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            max_pixels: asen_models::PreprocessConfig::DEFAULT_MAX_PIXELS,
            max_decode_bytes: asen_models::PreprocessConfig::DEFAULT_MAX_DECODE_BYTES,
            decode_budget_bytes: 1 << 30,
            decode_wait_ms: 2_000,
            max_batch_items: 256,
            max_k: 1000,
            request_timeout_ms: 60_000,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Model directory or checkpoint; the shipped model when unset (see the module docs
    /// for the search order).
    pub path: Option<PathBuf>,
    /// `cpu`, `cuda[:N]` or `metal[:N]`.
    pub device: String,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Folder searched first for backbone weights a model directory does not carry.
    pub weights_dir: Option<PathBuf>,
    /// More models held beside the default (`asen serve --also-model`): a catalogue built
    /// with one of them keeps answering image queries, and a reindex can move a catalogue to
    /// one of them.
    pub also: Vec<PathBuf>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            device: "cpu".into(),
            batch_size: 16,
            weights_dir: None,
            also: Vec::new(),
        }
    }
}

/// `[index]`: options of the local store and of new catalogues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Which store: `local` (the embedded sled + HNSW store under `data_dir`) or a Milvus URL,
    /// `milvus://HOST:PORT[?db=..&token=..]` (`milvus+tls://` for TLS; feature `milvus`).
    pub store: String,
    /// Data directory of the local store.
    pub data_dir: PathBuf,
    /// Flush every write before acknowledging it (otherwise sled flushes in the background).
    pub flush_writes: bool,
    /// HNSW neighbours per node for new catalogues.
    pub m: usize,
    /// Candidate list size while building graphs of new catalogues.
    pub ef_construction: usize,
    /// Candidate list size while searching, for new catalogues.
    pub ef_search: usize,
    /// sled page cache, bytes: about the most of the store that sled keeps in memory, so
    /// part of the server's RSS budget (docs/reliability.md "Soak" says what else is).
    pub cache_capacity_bytes: u64,
    /// Keep each item's model-input crop (224x224 JPEG, about 10 kB) in the store on
    /// upsert, for explain by item and the item image route
    /// (`ASEN_INDEX__THUMBNAILS=false` to turn off).
    pub thumbnails: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        let hnsw = asen_index::HnswConfig::default();
        Self {
            store: "local".into(),
            data_dir: PathBuf::from("./asen-data"),
            flush_writes: true,
            m: hnsw.m,
            ef_construction: hnsw.ef_construction,
            ef_search: hnsw.ef_search,
            cache_capacity_bytes: 512 * 1024 * 1024,
            thumbnails: true,
        }
    }
}

/// `[ingest]`: bulk ingestion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Send images to this running `asen serve` (`http[s]://host:port`) instead of the
    /// local store; the server embeds them.
    pub server: Option<String>,
    /// Threads reading, hashing and decoding images (0: one per core).
    pub threads: usize,
    /// Most items per store upsert (local) or per request (`server`).
    pub upsert_batch: usize,
    /// Seconds to wait for the server on each request.
    pub timeout_s: u64,
    /// Largest image file read; a larger one (or anything but a regular file) goes to the
    /// report and the run goes on.
    pub max_file_bytes: u64,
    /// Read images outside the image root too (absolute paths, `..`, symlinks leading out).
    pub allow_outside_root: bool,
    /// Scheduling priority of the reading threads (see [`ReaderPriority`]).
    pub reader_priority: ReaderPriority,
}

/// `ingest.reader_priority`: when the threads that read and decode images run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReaderPriority {
    /// Only on cycles no other thread wants (Linux `SCHED_IDLE`; elsewhere as `normal`):
    /// decoding fills the gaps the model's threads leave instead of slowing the forward
    /// passes. Whenever no item is ready, the writer has the next few read on the model's
    /// threads, so other busy processes slow the reading but cannot stall it.
    #[default]
    Idle,
    /// At the same priority as everything else.
    Normal,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            server: None,
            threads: 0,
            upsert_batch: 256,
            timeout_s: 120,
            max_file_bytes: 64 << 20,
            allow_outside_root: false,
            reader_priority: ReaderPriority::Idle,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json` lines on stderr (level from `RUST_LOG`).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
        }
    }
}

/// `[train]`: the settings of `asen train`, named as its long flags (with underscores);
/// flags override them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TrainSettings {
    pub data: Option<PathBuf>,
    pub format: Option<String>,
    pub attributes: Option<Vec<String>>,
    pub path_column: Option<String>,
    pub split_column: Option<String>,
    pub probe_seed: Option<u64>,
    pub cache: Option<PathBuf>,
    pub out: Option<PathBuf>,
    pub backbone: Option<String>,
    pub colour_histogram: Option<bool>,
    pub fine_map: Option<bool>,
    pub garment_prior: Option<f64>,
    pub position_bias: Option<bool>,
    pub head: Option<String>,
    pub dim: Option<usize>,
    pub no_feature_fc: Option<bool>,
    pub attention_dim: Option<usize>,
    pub gate_hidden: Option<usize>,
    pub input_size: Option<u32>,
    pub epochs: Option<usize>,
    pub triplets_per_epoch: Option<usize>,
    pub batch_size: Option<usize>,
    pub lr: Option<f64>,
    pub lr_decay: Option<f64>,
    pub lr_step: Option<usize>,
    pub margin: Option<f64>,
    pub seed: Option<u64>,
    pub sampling: Option<String>,
    pub negatives: Option<String>,
    pub finetune: Option<bool>,
    pub backbone_lr_scale: Option<f64>,
    pub flip: Option<bool>,
    pub freeze_batch_norm: Option<bool>,
    pub device: Option<String>,
}

/// Which catalogue store a command opens (`index.store`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded store (sled + one HNSW graph per attribute) under `index.data_dir`.
    Local,
    /// A Milvus server or cluster: `milvus://HOST:PORT` or `milvus+tls://HOST:PORT`, with
    /// optional `?db=..&token=..&timeout_ms=..&flush=true` (needs the `milvus` feature).
    Milvus(String),
}

impl std::str::FromStr for StoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(StoreKind::Local),
            url if url.starts_with("milvus://") || url.starts_with("milvus+tls://") => {
                if cfg!(feature = "milvus") {
                    Ok(StoreKind::Milvus(url.to_string()))
                } else {
                    Err(
                        "a milvus:// store needs asen built with the milvus feature \
                         (this binary was built without the milvus feature: \
                         cargo build --release --features milvus)"
                            .into(),
                    )
                }
            }
            other => Err(format!(
                "{other:?} is not a store this build knows (expected \"local\" or \
                 \"milvus://HOST:PORT\")"
            )),
        }
    }
}

/// Values given on the command line; `None` leaves the layers below in place.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--bind`.
    pub bind: Option<String>,
    /// `--data`.
    pub data_dir: Option<PathBuf>,
    /// `--store`.
    pub store: Option<String>,
    /// `--model`.
    pub model: Option<PathBuf>,
    /// `asen serve --also-model` (repeatable), added to `model.also`.
    pub also_models: Vec<PathBuf>,
    /// `--device`.
    pub device: Option<String>,
    /// `--batch-size` (images per forward pass).
    pub batch_size: Option<usize>,
    /// `--max-pixels`.
    pub max_pixels: Option<u64>,
    /// `--no-thumbnails` gives `Some(false)`.
    pub thumbnails: Option<bool>,
    /// `--api-key`.
    pub api_key: Option<String>,
    /// `asen ingest --server`.
    pub ingest_server: Option<String>,
    /// `asen ingest --threads`.
    pub ingest_threads: Option<usize>,
    /// `asen ingest --upsert-batch`.
    pub upsert_batch: Option<usize>,
    /// `asen ingest --timeout-s`.
    pub timeout_s: Option<u64>,
    /// `asen ingest --max-file-bytes`.
    pub max_file_bytes: Option<u64>,
    /// `asen ingest --allow-outside-root` gives `Some(true)`.
    pub allow_outside_root: Option<bool>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        fn set<T: Clone>(slot: &mut T, value: &Option<T>) {
            if let Some(v) = value {
                *slot = v.clone();
            }
        }
        set(&mut config.server.bind, &self.bind);
        set(&mut config.index.data_dir, &self.data_dir);
        set(&mut config.index.store, &self.store);
        if self.model.is_some() {
            config.model.path = self.model.clone();
        }
        config.model.also.extend(self.also_models.iter().cloned());
        set(&mut config.model.device, &self.device);
        set(&mut config.model.batch_size, &self.batch_size);
        set(&mut config.limits.max_pixels, &self.max_pixels);
        set(&mut config.index.thumbnails, &self.thumbnails);
        if self.api_key.is_some() {
            config.server.api_key = self.api_key.clone();
        }
        if self.ingest_server.is_some() {
            config.ingest.server = self.ingest_server.clone();
        }
        set(&mut config.ingest.threads, &self.ingest_threads);
        set(&mut config.ingest.upsert_batch, &self.upsert_batch);
        set(&mut config.ingest.timeout_s, &self.timeout_s);
        set(&mut config.ingest.max_file_bytes, &self.max_file_bytes);
        set(
            &mut config.ingest.allow_outside_root,
            &self.allow_outside_root,
        );
        set(&mut config.log.format, &self.log_format);
    }
}

/// A TOML scalar read from an environment variable's text, if it is one.
fn scalar(text: &str) -> Option<toml::Value> {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
}

/// Whether `tree` deserialises into a [`Config`].
fn fits(tree: &toml::Table) -> bool {
    toml::Value::Table(tree.clone())
        .try_into::<Config>()
        .is_ok()
}

impl Config {
    /// Layer defaults, the optional file, the `ASEN_*` variables among `env` and the CLI
    /// overrides, then validate.
    ///
    /// Variables with a double underscore address a key (`ASEN_LIMITS__MAX_PIXELS=1000000`);
    /// `ASEN_API_KEY` and `ASEN_READ_KEY` are shorthands for the server keys. A value is
    /// taken as a string where the key accepts one, else as a TOML scalar.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Config, ConfigError> {
        let mut tree = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            tree = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Parse {
                    origin: path.display().to_string(),
                    detail: e.to_string(),
                })?;
        }
        let mut vars: Vec<(String, String)> = env.into_iter().collect();
        vars.sort();
        for (name, value) in vars {
            let Some(rest) = name.strip_prefix("ASEN_") else {
                continue;
            };
            let (section, key) = match rest {
                "API_KEY" => ("server".to_string(), "api_key".to_string()),
                "READ_KEY" => ("server".to_string(), "read_key".to_string()),
                _ => match rest.split_once("__") {
                    Some((s, k)) => (s.to_ascii_lowercase(), k.to_ascii_lowercase()),
                    None => continue,
                },
            };
            if !SECTIONS.contains(&section.as_str()) {
                return Err(ConfigError::UnknownSection { name, section });
            }
            let as_string = toml::Value::String(value.clone());
            let mut with_string = tree.clone();
            insert(&mut with_string, &section, &key, as_string.clone())?;
            // Keys that take a string keep the text as it is; others get the scalar.
            tree = if fits(&with_string) {
                with_string
            } else {
                let mut with_scalar = tree;
                insert(
                    &mut with_scalar,
                    &section,
                    &key,
                    scalar(&value).unwrap_or(as_string),
                )?;
                with_scalar
            };
        }
        let mut config: Config =
            toml::Value::Table(tree)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    origin: file.map_or("environment".into(), |p| {
                        format!("{} or environment", p.display())
                    }),
                    detail: e.to_string(),
                })?;
        overrides.apply(&mut config);
        config.validate()?;
        Ok(config)
    }

    /// The store `index.store` names.
    pub fn store_kind(&self) -> Result<StoreKind, ConfigError> {
        self.index
            .store
            .parse()
            .map_err(|reason| ConfigError::Invalid {
                field: "index.store",
                reason,
            })
    }

    /// The model directory or checkpoint to load (see the module docs for the order).
    pub fn model_path(&self) -> PathBuf {
        if let Some(path) = &self.model.path {
            return path.clone();
        }
        let beside_exe = exe_dir()
            .map(|d| d.join("default"))
            .filter(|d| d.join("card.json").is_file());
        beside_exe.unwrap_or_else(|| source_tree().join("models").join("default"))
    }

    /// Folders searched for backbone weights, in order.
    pub fn weights_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.model.weights_dir.iter().cloned().collect();
        if let Some(exe) = exe_dir() {
            dirs.push(exe.join("weights"));
            dirs.push(exe);
        }
        dirs.push(source_tree().join("models").join("weights"));
        dirs
    }

    /// The bind address, parsed.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server
            .bind
            .parse()
            .map_err(|e: std::net::AddrParseError| ConfigError::Invalid {
                field: "server.bind",
                reason: format!("{:?} is not an address:port ({e})", self.server.bind),
            })
    }

    /// Check ranges and the no-key-no-public-bind rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let addr = self.bind_addr()?;
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_string(),
            })
        };
        if self.server.api_key.is_none() && !addr.ip().is_loopback() {
            return invalid(
                "server.api_key",
                &format!("refusing to bind non-loopback address {addr} without an api key (set ASEN_API_KEY)"),
            );
        }
        for (field, key) in [
            ("server.api_key", &self.server.api_key),
            ("server.read_key", &self.server.read_key),
        ] {
            if key.as_deref().is_some_and(|k| k.len() < 8) {
                return invalid(field, "keys must be at least 8 characters");
            }
        }
        if self.server.max_concurrent_forwards == 0 {
            return invalid("server.max_concurrent_forwards", "must be at least 1");
        }
        if self.limits.max_body_bytes < 1024 {
            return invalid("limits.max_body_bytes", "must be at least 1024");
        }
        if self.limits.max_pixels == 0 {
            return invalid("limits.max_pixels", "must be at least 1");
        }
        if self.limits.max_batch_items == 0
            || self.limits.max_batch_items > asen_index::MAX_BATCH_ITEMS
        {
            return invalid(
                "limits.max_batch_items",
                &format!("must be in 1..={}", asen_index::MAX_BATCH_ITEMS),
            );
        }
        if self.limits.max_k == 0 || self.limits.max_k > asen_index::MAX_K {
            return invalid(
                "limits.max_k",
                &format!("must be in 1..={}", asen_index::MAX_K),
            );
        }
        if self.limits.max_decode_bytes < 1 << 20 {
            return invalid(
                "limits.max_decode_bytes",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if self.limits.decode_budget_bytes < self.limits.max_decode_bytes {
            return invalid(
                "limits.decode_budget_bytes",
                "must be at least limits.max_decode_bytes (one largest image must fit)",
            );
        }
        if self.server.header_read_timeout_ms == 0 {
            return invalid("server.header_read_timeout_ms", "must be at least 1");
        }
        if self.limits.request_timeout_ms == 0 {
            return invalid("limits.request_timeout_ms", "must be at least 1");
        }
        if self.model.batch_size == 0 {
            return invalid("model.batch_size", "must be at least 1");
        }
        self.store_kind()?;
        if self.ingest.upsert_batch == 0 || self.ingest.upsert_batch > asen_index::MAX_BATCH_ITEMS {
            return invalid(
                "ingest.upsert_batch",
                &format!("must be in 1..={}", asen_index::MAX_BATCH_ITEMS),
            );
        }
        if self.ingest.max_file_bytes == 0 {
            return invalid("ingest.max_file_bytes", "must be at least 1");
        }
        if self.ingest.timeout_s == 0 {
            return invalid("ingest.timeout_s", "must be at least 1");
        }
        if self.index.m < 2 || self.index.ef_construction == 0 || self.index.ef_search == 0 {
            return invalid(
                "index",
                "m must be >= 2, ef_construction and ef_search >= 1",
            );
        }
        Ok(())
    }
}

/// Set `section.key` in `tree`.
fn insert(
    tree: &mut toml::Table,
    section: &str,
    key: &str,
    value: toml::Value,
) -> Result<(), ConfigError> {
    let entry = tree
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key.to_string(), value);
            Ok(())
        }
        _ => Err(ConfigError::Parse {
            origin: "file".into(),
            detail: format!("{section} must be a table"),
        }),
    }
}

/// The folder of the running executable.
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

/// The source tree this binary was built from (for `cargo run` and tests).
fn source_tree() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::load(None, [], &Overrides::default()).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.bind_addr().unwrap().port(), 8080);
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("asen.toml");
        std::fs::write(
            &file,
            "[limits]\nmax_pixels = 1000\nmax_k = 50\n[server]\nbind = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            env(&[
                ("ASEN_LIMITS__MAX_PIXELS", "2000"),
                ("ASEN_API_KEY", "secret-key-1"),
                ("ASEN_MODEL", "ignored-no-double-underscore"),
                ("HOME", "/root"),
            ]),
            &Overrides {
                bind: Some("127.0.0.1:0".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.limits.max_pixels, 2000, "env beats file");
        assert_eq!(c.limits.max_k, 50, "file beats default");
        assert_eq!(c.server.bind, "127.0.0.1:0", "flag beats file");
        assert_eq!(c.server.api_key.as_deref(), Some("secret-key-1"));
        assert_eq!(c.limits.max_batch_items, 256, "default kept");
        assert!(c.index.thumbnails, "thumbnails on by default");
        let off = Config::load(
            None,
            env(&[("ASEN_INDEX__THUMBNAILS", "false")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(!off.index.thumbnails);
    }

    #[test]
    fn reader_priority_is_idle_unless_set_to_normal() {
        let default = Config::load(None, [], &Overrides::default()).unwrap();
        assert_eq!(default.ingest.reader_priority, ReaderPriority::Idle);
        let normal = Config::load(
            None,
            env(&[("ASEN_INGEST__READER_PRIORITY", "normal")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(normal.ingest.reader_priority, ReaderPriority::Normal);
        let e = Config::load(
            None,
            env(&[("ASEN_INGEST__READER_PRIORITY", "sometimes")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load(
            None,
            env(&[("ASEN_LIMITS__MAX_K", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("limits.max_k"), "{e}");
        let e = Config::load(
            None,
            env(&[("ASEN_LIMITS__MAX_KAY", "3")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_kay"), "{e}");
        let e =
            Config::load(None, env(&[("ASEN_NOPE__X", "3")]), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let e = Config::load(
            None,
            env(&[("ASEN_LIMITS__MAX_K", "many")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("max_k"), "{e}");
    }

    #[test]
    fn keys_from_the_environment_stay_strings() {
        let digits = Config::load(
            None,
            env(&[("ASEN_API_KEY", "123456789012")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(digits.server.api_key.as_deref(), Some("123456789012"));
        let quoted = Config::load(
            None,
            env(&[("ASEN_READ_KEY", "\"quoted-key\"")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            quoted.server.read_key.as_deref(),
            Some("\"quoted-key\""),
            "taken literally"
        );
        let numbers = Config::load(
            None,
            env(&[
                ("ASEN_MODEL__BATCH_SIZE", "4"),
                ("ASEN_MODEL__DEVICE", "cpu"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(numbers.model.batch_size, 4);
    }

    #[test]
    fn every_section_is_reachable_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("ASEN_INGEST__UPSERT_BATCH", "64"),
                ("ASEN_LOG__FORMAT", "json"),
                ("ASEN_TRAIN__EPOCHS", "3"),
                ("ASEN_INDEX__DATA_DIR", "/tmp/x"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.ingest.upsert_batch, 64);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.train.epochs, Some(3));
        assert_eq!(c.index.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn model_path_prefers_the_configured_one() {
        let given = Config::load(
            None,
            env(&[("ASEN_MODEL__PATH", "env-model")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(given.model_path(), PathBuf::from("env-model"));
        let flag = Config::load(
            None,
            env(&[("ASEN_MODEL__PATH", "env-model")]),
            &Overrides {
                model: Some("flag-model".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(flag.model_path(), PathBuf::from("flag-model"));
        // Unset: the shipped model (here the source tree's, no `default/` beside the test).
        let shipped = Config::default().model_path();
        assert!(shipped.ends_with("models/default"), "{}", shipped.display());
        assert!(shipped.join("card.json").is_file());
    }

    #[test]
    fn unknown_store_is_refused() {
        let e = Config::load(
            None,
            env(&[("ASEN_INDEX__STORE", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("index.store"), "{e}");
    }

    #[test]
    fn milvus_store_urls() {
        let config = Config::load(
            None,
            env(&[("ASEN_INDEX__STORE", "milvus://127.0.0.1:19530?db=shop")]),
            &Overrides::default(),
        );
        if cfg!(feature = "milvus") {
            assert_eq!(
                config.unwrap().store_kind().unwrap(),
                StoreKind::Milvus("milvus://127.0.0.1:19530?db=shop".into())
            );
        } else {
            let e = config.unwrap_err().to_string();
            assert!(e.contains("built without the milvus feature"), "{e}");
        }
    }

    #[test]
    fn public_bind_needs_a_key() {
        let public = Overrides {
            bind: Some("0.0.0.0:8080".into()),
            ..Overrides::default()
        };
        let e = Config::load(None, [], &public).unwrap_err();
        assert!(e.to_string().contains("without an api key"), "{e}");
        let ok = Config::load(None, env(&[("ASEN_API_KEY", "0123456789")]), &public);
        assert!(ok.is_ok());
    }
}
