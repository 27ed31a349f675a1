//! One HNSW graph per attribute over a sled store.
#![warn(missing_docs)]
