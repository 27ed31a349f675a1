//! Integration tests of `asen-index`, one binary of modules.

mod bad_input;
mod concurrency;
mod conformance;
mod data;
mod filters;
mod persistence;
mod properties;
mod recall;
mod scoring;
