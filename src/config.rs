//! One [`Config`] for the server, layered once at startup:
//! defaults < TOML file (`--config`) < `ASEN_SECTION__KEY` environment variables < CLI flags.
//! Nothing reads the environment after [`Config::load`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    #[error("environment variable {name}: unknown config section {section:?} (known: server, limits, model, index)")]
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
    /// The store.
    pub index: IndexConfig,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:8080`; port 0 picks a free one).
    pub bind: String,
    /// Data directory of the store.
    pub data_dir: PathBuf,
    /// Key required by write and admin routes (also accepted for reads); `ASEN_API_KEY`.
    pub api_key: Option<String>,
    /// Key required by read routes when set; `ASEN_READ_KEY`.
    pub read_key: Option<String>,
    /// How long in-flight requests may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout_ms: u64,
    /// Model forwards allowed to run at once (each uses the blocking pool).
    pub max_concurrent_forwards: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./asen-data"),
            api_key: None,
            read_key: None,
            shutdown_timeout_ms: 10_000,
            max_concurrent_forwards: 2,
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
    /// Model directory or checkpoint; the shipped model when unset.
    pub path: Option<PathBuf>,
    /// `cpu`, `cuda[:N]` or `metal[:N]`.
    pub device: String,
    /// Images per forward pass.
    pub batch_size: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            path: None,
            device: "cpu".into(),
            batch_size: 16,
        }
    }
}

/// `[index]`: options of the local store and of new catalogues.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IndexConfig {
    /// Flush every write before acknowledging it (otherwise sled flushes in the background).
    pub flush_writes: bool,
    /// HNSW neighbours per node for new catalogues.
    pub m: usize,
    /// Candidate list size while building graphs of new catalogues.
    pub ef_construction: usize,
    /// Candidate list size while searching, for new catalogues.
    pub ef_search: usize,
    /// sled page cache.
    pub cache_capacity_bytes: u64,
    /// Keep each item's model-input crop (224x224 JPEG, about 10 kB) in
    /// `<data_dir>/thumbnails/` on upsert, for explain by item and the item image route
    /// (`ASEN_INDEX__THUMBNAILS=false` to turn off).
    pub thumbnails: bool,
}

impl Default for IndexConfig {
    fn default() -> Self {
        let hnsw = asen_index::HnswConfig::default();
        Self {
            flush_writes: true,
            m: hnsw.m,
            ef_construction: hnsw.ef_construction,
            ef_search: hnsw.ef_search,
            cache_capacity_bytes: 512 * 1024 * 1024,
            thumbnails: true,
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
    /// `--model`.
    pub model: Option<PathBuf>,
    /// `--device`.
    pub device: Option<String>,
}

impl Config {
    /// Layer defaults, the optional file, the `ASEN_*` variables among `env` and the CLI
    /// overrides, then validate.
    ///
    /// Variables with a double underscore address a key (`ASEN_LIMITS__MAX_PIXELS=1000000`);
    /// `ASEN_API_KEY` and `ASEN_READ_KEY` are shorthands for the server keys. Values are read
    /// as TOML scalars (numbers, booleans), falling back to a string.
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
        for (name, value) in env {
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
            if !["server", "limits", "model", "index"].contains(&section.as_str()) {
                return Err(ConfigError::UnknownSection { name, section });
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .filter(|v| !v.is_table() && !v.is_array())
                .unwrap_or(toml::Value::String(value));
            let entry = tree
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => {
                    t.insert(key, parsed);
                }
                _ => {
                    return Err(ConfigError::Parse {
                        origin: "file".into(),
                        detail: format!("{section} must be a table"),
                    })
                }
            }
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
        if let Some(bind) = &overrides.bind {
            config.server.bind = bind.clone();
        }
        if let Some(dir) = &overrides.data_dir {
            config.server.data_dir = dir.clone();
        }
        if let Some(model) = &overrides.model {
            config.model.path = Some(model.clone());
        }
        if let Some(device) = &overrides.device {
            config.model.device = device.clone();
        }
        config.validate()?;
        Ok(config)
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
        if self.limits.request_timeout_ms == 0 {
            return invalid("limits.request_timeout_ms", "must be at least 1");
        }
        if self.model.batch_size == 0 {
            return invalid("model.batch_size", "must be at least 1");
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
