//! One HNSW graph per attribute over a sled store.
//!
//! A [`CatalogueStore`] holds catalogues; a catalogue's [`CatalogueSchema`] names its attributes
//! (one embedding space each), the vector dimension and the graph parameters. Items carry an
//! [`ItemId`], a JSON [`Payload`] and one vector per attribute they have. [`SearchRequest`]s search
//! one attribute's graph, or several with weights, optionally under a payload [`Filter`], and return
//! [`Hit`]s scored by cosine similarity.
#![warn(missing_docs)]

mod error;
mod filter;
mod graph;
mod local;
mod rescore;
mod schema;
mod store;
mod types;

pub use error::{ErrorKind, IndexError, Result};
pub use local::{
    ConsistencyReport, Durability, GraphRecovery, LocalStore, ProgressFn, RebuildProgress,
    StoreOptions,
};
pub use schema::{CatalogueSchema, HnswConfig, VectorStorage, MAX_ATTRIBUTES, MAX_DIMENSION};
pub use store::CatalogueStore;
pub use types::{
    AttributeStats, AttributeWeight, CatalogueInfo, CatalogueStats, Filter, GroupBy, Hit, HitGroup,
    Item, ItemId, ItemPage, MatchValue, Payload, Query, SearchRequest, SearchResults, StoredItem,
    WeightedVector, WriteReceipt, MAX_BATCH_ITEMS, MAX_ITEM_ID_BYTES, MAX_K,
};
