//! The REST API over HTTP, one behaviour per test: the real router served in process on
//! `127.0.0.1:0` over a fresh temp store per test ([`server::TestServer`]), the model loaded
//! once per test binary; plus `process.rs`, the real `asen serve` binary for what only a
//! process shows (the listening line, `ASEN_*` configuration, SIGTERM drain and flush, the
//! public-bind refusal).
//!
//! The model is the official v1 checkpoint of the shared fixtures (random weights,
//! attributes `attr_0..attr_7`): every test needing it is skipped with a `SKIPPED` notice
//! when `../shared` is absent, and fails when `ASEN_REQUIRE_SHARED=1`
//! (`asen_test_support::shared_dir`).

mod server;

mod auth;
mod catalogues;
mod compare;
mod errors;
mod explain;
mod extend;
mod fuzz;
mod hardening;
mod health;
mod items;
mod kill;
mod lifecycle;
mod metrics;
#[cfg(feature = "milvus")]
mod milvus;
mod process;
mod provenance;
mod search;
