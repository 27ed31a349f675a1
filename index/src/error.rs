//! The crate's error type: one enum, variants by category, fields carrying the facts.

use std::path::PathBuf;

/// Result alias used throughout `asen-index`.
pub type Result<T> = std::result::Result<T, IndexError>;

/// Broad category of an [`IndexError`], so callers (the HTTP service) can map an error to a
/// status without matching every variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request was malformed or violates a limit; nothing was written.
    InvalidInput,
    /// A named catalogue or item does not exist.
    NotFound,
    /// The thing to create already exists.
    Conflict,
    /// Storage, I/O or an internal invariant failed.
    Internal,
}

/// Everything that can go wrong in the index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// No catalogue with this name.
    #[error("catalogue {catalogue:?} not found")]
    CatalogueNotFound {
        /// The name asked for.
        catalogue: String,
    },
    /// A catalogue with this name already exists.
    #[error("catalogue {catalogue:?} already exists")]
    CatalogueExists {
        /// The name asked for.
        catalogue: String,
    },
    /// A catalogue name is empty, too long or uses characters outside `[A-Za-z0-9_-]`.
    #[error("invalid catalogue name {name:?}: {reason}")]
    InvalidCatalogueName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The schema given at creation is inconsistent.
    #[error("invalid schema: {reason}")]
    InvalidSchema {
        /// What is wrong with it.
        reason: String,
    },
    /// An attribute name not in the catalogue's schema.
    #[error("unknown attribute {attribute:?} in catalogue {catalogue:?}")]
    UnknownAttribute {
        /// The catalogue.
        catalogue: String,
        /// The attribute asked for.
        attribute: String,
    },
    /// A vector with the wrong number of components.
    #[error("attribute {attribute:?}: expected a vector of dimension {expected}, got {got}")]
    DimensionMismatch {
        /// The attribute the vector belongs to.
        attribute: String,
        /// The catalogue's dimension.
        expected: usize,
        /// The length received.
        got: usize,
    },
    /// A vector with a NaN or infinite component.
    #[error("attribute {attribute:?}: component {index} is not finite")]
    NonFiniteVector {
        /// The attribute the vector belongs to.
        attribute: String,
        /// Index of the first bad component.
        index: usize,
    },
    /// A vector whose norm is zero (cosine similarity is undefined).
    #[error("attribute {attribute:?}: vector has zero norm")]
    ZeroVector {
        /// The attribute the vector belongs to.
        attribute: String,
    },
    /// An item id that is empty or longer than [`crate::MAX_ITEM_ID_BYTES`].
    #[error("invalid item id ({len} bytes): {reason}")]
    InvalidItemId {
        /// Length of the id in bytes.
        len: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An item carries no vector at all.
    #[error("item {id:?} has no vector")]
    EmptyItem {
        /// The item.
        id: String,
    },
    /// A payload that is not a JSON object (or null).
    #[error("item {id:?}: payload must be a JSON object")]
    InvalidPayload {
        /// The item.
        id: String,
    },
    /// A payload whose serialised size exceeds the catalogue's limit.
    #[error("item {id:?}: payload of {bytes} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The item.
        id: String,
        /// Serialised size.
        bytes: usize,
        /// The catalogue's `max_payload_bytes`.
        limit: usize,
    },
    /// A thumbnail larger than [`crate::MAX_THUMBNAIL_BYTES`].
    #[error("item {id:?}: thumbnail of {bytes} bytes exceeds the limit of {limit} bytes")]
    ThumbnailTooLarge {
        /// The item.
        id: String,
        /// The thumbnail's size.
        bytes: usize,
        /// [`crate::MAX_THUMBNAIL_BYTES`].
        limit: usize,
    },
    /// A batch larger than [`crate::MAX_BATCH_ITEMS`].
    #[error("batch of {got} items exceeds the limit of {limit}")]
    BatchTooLarge {
        /// Items in the batch.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// No item with this id (for queries by item and recommendations).
    #[error("item {id:?} not found in catalogue {catalogue:?}")]
    ItemNotFound {
        /// The catalogue.
        catalogue: String,
        /// The id asked for.
        id: String,
    },
    /// A query item lacks the attribute the query needs.
    #[error("item {id:?} has no vector for attribute {attribute:?}")]
    MissingAttribute {
        /// The item.
        id: String,
        /// The attribute.
        attribute: String,
    },
    /// `k` outside `1..=MAX_K`.
    #[error("k = {k} is outside 1..={max}")]
    InvalidK {
        /// The k asked for.
        k: usize,
        /// [`crate::MAX_K`].
        max: usize,
    },
    /// Any other malformed request (bad weights, empty query, bad group size, ...).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong with it.
        reason: String,
    },
    /// A malformed filter.
    #[error("invalid filter: {reason}")]
    InvalidFilter {
        /// What is wrong with it.
        reason: String,
    },
    /// sled failed.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A file operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A record in sled could not be decoded.
    #[error("corrupt record {what}: {detail}")]
    Corrupt {
        /// Which record (kind and key).
        what: String,
        /// What was wrong.
        detail: String,
    },
    /// A remote backend (Milvus) failed, or answered what asen cannot read.
    #[error("backend {operation} failed: {detail}")]
    Backend {
        /// What asen asked of it.
        operation: String,
        /// Its message.
        detail: String,
    },
    /// The graph library failed (dump, load).
    #[error("graph for attribute {attribute:?}: {detail}")]
    Graph {
        /// The attribute whose graph failed.
        attribute: String,
        /// The library's message.
        detail: String,
    },
}

impl IndexError {
    /// The error's category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IndexError::CatalogueNotFound { .. } | IndexError::ItemNotFound { .. } => {
                ErrorKind::NotFound
            }
            IndexError::CatalogueExists { .. } => ErrorKind::Conflict,
            IndexError::InvalidCatalogueName { .. }
            | IndexError::InvalidSchema { .. }
            | IndexError::UnknownAttribute { .. }
            | IndexError::DimensionMismatch { .. }
            | IndexError::NonFiniteVector { .. }
            | IndexError::ZeroVector { .. }
            | IndexError::InvalidItemId { .. }
            | IndexError::EmptyItem { .. }
            | IndexError::InvalidPayload { .. }
            | IndexError::PayloadTooLarge { .. }
            | IndexError::ThumbnailTooLarge { .. }
            | IndexError::BatchTooLarge { .. }
            | IndexError::MissingAttribute { .. }
            | IndexError::InvalidK { .. }
            | IndexError::InvalidRequest { .. }
            | IndexError::InvalidFilter { .. } => ErrorKind::InvalidInput,
            IndexError::Storage(_)
            | IndexError::Io { .. }
            | IndexError::Corrupt { .. }
            | IndexError::Backend { .. }
            | IndexError::Graph { .. } => ErrorKind::Internal,
        }
    }

    #[allow(dead_code)] // used by the local store
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IndexError::Io {
            path: path.into(),
            source,
        }
    }
}
