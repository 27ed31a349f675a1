//! Integration tests of `asen-index`, one binary of modules.

mod bad_input;
mod concurrency;
mod conformance;
mod data;
mod filters;
#[cfg(feature = "milvus")]
mod milvus;
mod payload_index;
mod persistence;
mod properties;
mod recall;
mod scoring;
