//! One HNSW graph per attribute over a sled store.
//!
//! A [`CatalogueStore`] holds catalogues; a catalogue's [`CatalogueSchema`] names its attributes
//! (one embedding space each), the vector dimension and the graph parameters. Items carry an
//! [`ItemId`], a JSON [`Payload`] and one vector per attribute they have. [`SearchRequest`]s search
//! one attribute's graph, or several with weights, optionally under a payload [`Filter`], and return
//! [`Hit`]s scored by cosine similarity. An item may also carry a thumbnail (opaque image bytes,
//! [`Item::thumbnail`]), replaced and removed with the item and read back with
//! [`CatalogueStore::thumbnail`].
//!
//! [`LocalStore`] is the backend in this crate: sled holds items, unit-normalised vectors,
//! payloads and a sequence number (the source of truth); each attribute has an in-memory HNSW
//! graph (asen's own, `graph`), dumped to disk with the sequence it covers so a restart loads it and replays only newer
//! records. Deletes and updates leave tombstones that searches skip until a background compaction
//! rebuilds the graph. The HTTP service holds it as `Arc<dyn CatalogueStore>`.
//!
//! ```
//! use std::collections::BTreeMap;
//! use asen_index::{CatalogueSchema, CatalogueStore, Item, ItemId, LocalStore, SearchRequest, StoreOptions};
//!
//! # fn main() -> asen_index::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! let store = LocalStore::open(dir.path(), StoreOptions::default())?;
//! store.create_catalogue("shirts", &CatalogueSchema::new(["collar", "colour"], 3))?;
//! let mut vectors = BTreeMap::new();
//! vectors.insert("collar".to_string(), vec![1.0, 0.0, 0.0]);
//! vectors.insert("colour".to_string(), vec![0.0, 1.0, 0.0]);
//! store.upsert("shirts", &[Item::new(ItemId::new("sku-1")?, vectors)])?;
//!
//! let hits = store
//!     .search("shirts", &SearchRequest::vector("collar", vec![0.9, 0.1, 0.0], 5))?
//!     .into_hits();
//! assert_eq!(hits[0].id.as_str(), "sku-1");
//! assert!(hits[0].score > 0.99); // cosine similarity
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod distance;
mod error;
mod filter;
mod graph;
mod local;
#[cfg(feature = "milvus")]
mod milvus;
mod rescore;
mod schema;
mod store;
mod types;
mod validate;

pub use error::{ErrorKind, IndexError, Result};
pub use local::{
    ConsistencyReport, Durability, FilterStrategy, GraphRecovery, LocalStore, ProgressFn,
    RebuildProgress, StoreOptions, ThumbnailMigration,
};
#[cfg(feature = "milvus")]
pub use milvus::{redact as redact_milvus_url, MilvusOptions, MilvusStore};
pub use schema::{
    CatalogueSchema, HnswConfig, Migration, ModelRecord, SchemaChange, StagedAttribute,
    VectorStorage, MAX_ATTRIBUTES, MAX_DIMENSION,
};
pub use store::CatalogueStore;
pub use types::{
    AttributeStats, AttributeWeight, CatalogueInfo, CatalogueStats, FieldValue, FieldValues,
    Filter, GroupBy, Hit, HitGroup, Item, ItemId, ItemPage, MatchValue, Payload, Query,
    SearchRequest, SearchResults, StoredItem, WeightedVector, WriteReceipt, MAX_BATCH_ITEMS,
    MAX_FIELD_VALUES, MAX_ITEM_ID_BYTES, MAX_K, MAX_THUMBNAIL_BYTES,
};
