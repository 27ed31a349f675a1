//! The vocabulary shared by every backend: items, filters, search requests and hits.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::schema::CatalogueSchema;

/// Longest item id accepted, in bytes of UTF-8.
pub const MAX_ITEM_ID_BYTES: usize = 256;
/// Largest `k` a search may ask for.
pub const MAX_K: usize = 10_000;
/// Most items one upsert or delete batch may carry.
pub const MAX_BATCH_ITEMS: usize = 10_000;
/// Largest [`Item::thumbnail`] accepted, in bytes (1 MiB; the service's JPEG crops take about
/// 10 kB).
pub const MAX_THUMBNAIL_BYTES: usize = 1024 * 1024;

/// An item's external id: UTF-8, 1..=256 bytes. Construct with [`ItemId::new`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct ItemId(String);

impl ItemId {
    /// Checks the length and wraps the id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(IndexError::InvalidItemId {
                len: 0,
                reason: "id is empty",
            });
        }
        if id.len() > MAX_ITEM_ID_BYTES {
            return Err(IndexError::InvalidItemId {
                len: id.len(),
                reason: "id is longer than 256 bytes",
            });
        }
        Ok(ItemId(id))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ItemId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ItemId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ItemId::new(s).map_err(serde::de::Error::custom)
    }
}

/// An item's JSON payload: always an object (possibly empty).
pub type Payload = serde_json::Map<String, serde_json::Value>;

/// One item to upsert: id, payload, one vector per attribute it has (a shoe has no sleeve),
/// and optionally a thumbnail.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// External id; upserting an existing id replaces the item.
    pub id: ItemId,
    /// Payload, filtered and grouped on, returned with hits.
    #[serde(default)]
    pub payload: Payload,
    /// Attribute name -> vector (any scale; normalised on insert).
    pub vectors: BTreeMap<String, Vec<f32>>,
    /// Opaque hash of the source content, stored and returned by `get` so an ingester can skip
    /// images already stored.
    #[serde(default)]
    pub content_hash: Option<String>,
    /// A small image of the item (the service stores the model-input crop as JPEG), kept as
    /// opaque bytes and read back with [`crate::CatalogueStore::thumbnail`]; 1 to
    /// [`MAX_THUMBNAIL_BYTES`] bytes. The store never decodes it.
    ///
    /// Like everything else in an item, it is replaced by an upsert: `None` removes any
    /// thumbnail stored for the id, so a thumbnail never shows an older image than the vectors.
    /// Deleting the item (or dropping its catalogue) removes it.
    ///
    /// Serialised (as an array of bytes) only when present; absent means `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Vec<u8>>,
}

impl Item {
    /// An item with an empty payload, no content hash and no thumbnail.
    pub fn new(id: ItemId, vectors: BTreeMap<String, Vec<f32>>) -> Self {
        Item {
            id,
            payload: Payload::new(),
            vectors,
            content_hash: None,
            thumbnail: None,
        }
    }

    /// The same item with a thumbnail (see [`Item::thumbnail`]).
    pub fn with_thumbnail(mut self, thumbnail: impl Into<Vec<u8>>) -> Self {
        self.thumbnail = Some(thumbnail.into());
        self
    }
}

/// Shows the thumbnail's size, not its bytes.
impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Item")
            .field("id", &self.id)
            .field("payload", &self.payload)
            .field("vectors", &self.vectors)
            .field("content_hash", &self.content_hash)
            .field(
                "thumbnail",
                &self
                    .thumbnail
                    .as_ref()
                    .map(|t| format!("{} bytes", t.len())),
            )
            .finish()
    }
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredItem {
    /// External id.
    pub id: ItemId,
    /// Payload.
    pub payload: Payload,
    /// Attributes the item has vectors for, in schema order.
    pub attributes: Vec<String>,
    /// The unit-normalised vectors, when asked for.
    pub vectors: Option<BTreeMap<String, Vec<f32>>>,
    /// The content hash given at upsert.
    pub content_hash: Option<String>,
    /// Whether a thumbnail is stored (read it with [`crate::CatalogueStore::thumbnail`]), so an
    /// ingester's skip check needs no image bytes. `false` when absent from serialised input.
    #[serde(default)]
    pub has_thumbnail: bool,
}

/// A page of items from `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemPage {
    /// Items in id order (bytewise).
    pub items: Vec<StoredItem>,
    /// Pass as `after` to get the next page; `None` at the end.
    pub next_cursor: Option<ItemId>,
}

/// Most distinct values one [`crate::CatalogueStore::field_values`] call may return.
pub const MAX_FIELD_VALUES: usize = 1000;

/// One distinct value of a payload field and the number of live items holding it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValue {
    /// The value, as a [`Filter::Match`] takes it (keyword, integer or boolean).
    pub value: MatchValue,
    /// Live items whose field holds the value (an array field counts once per item).
    pub count: u64,
}

/// The distinct values of a payload field, from [`crate::CatalogueStore::field_values`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FieldValues {
    /// The dotted field path asked for.
    pub field: String,
    /// Most frequent first; ties by value (booleans, then integers ascending, then keywords
    /// in byte order). At most the `limit` asked for.
    pub values: Vec<FieldValue>,
    /// Live items whose field holds at least one keyword, integer or boolean.
    pub items: u64,
    /// Whether there were more distinct values than `limit` (the rarest were left out).
    pub truncated: bool,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteReceipt {
    /// The catalogue's sequence number after the write.
    pub sequence: u64,
    /// Items written (upsert) or removed (delete; ids not found are not counted).
    pub affected: usize,
    /// Whether the write was flushed to disk before returning.
    pub durable: bool,
}

/// A value compared by [`Filter::Match`] and [`Filter::In`]: keyword, integer or boolean.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MatchValue {
    /// A boolean field.
    Bool(bool),
    /// An integer field.
    Integer(i64),
    /// A string (keyword) field.
    Keyword(String),
}

/// A condition on payload fields. Field names are dotted paths into the payload object
/// (`"product.brand"`); a missing field matches nothing (except under `Not`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filter {
    /// The field equals the value (an array field matches if any element does).
    Match {
        /// Dotted field path.
        field: String,
        /// Value to compare with.
        value: MatchValue,
    },
    /// The field equals one of the values.
    In {
        /// Dotted field path.
        field: String,
        /// Accepted values.
        values: Vec<MatchValue>,
    },
    /// The numeric field lies in the range; absent bounds are open.
    Range {
        /// Dotted field path.
        field: String,
        /// Greater than.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gt: Option<f64>,
        /// Greater than or equal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gte: Option<f64>,
        /// Less than.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lt: Option<f64>,
        /// Less than or equal.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lte: Option<f64>,
    },
    /// All conditions hold (true when empty).
    And(Vec<Filter>),
    /// At least one condition holds (false when empty).
    Or(Vec<Filter>),
    /// The condition does not hold.
    Not(Box<Filter>),
}

/// One attribute's query vector and its weight in the combined score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedVector {
    /// Attribute name.
    pub attribute: String,
    /// Query vector (any scale).
    pub vector: Vec<f32>,
    /// Weight (> 0).
    #[serde(default = "one")]
    pub weight: f32,
}

/// An attribute and its weight, for queries whose vectors come from stored items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeWeight {
    /// Attribute name.
    pub attribute: String,
    /// Weight (> 0).
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// What to search with.
///
/// The score of a hit is the weighted sum over the requested attributes of the cosine
/// similarity between the query vector and the item's vector; an item lacking one of the
/// attributes contributes 0 for it. With one attribute of weight 1 the score is the cosine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// One attribute, one vector.
    Vector {
        /// Attribute name.
        attribute: String,
        /// Query vector (any scale).
        vector: Vec<f32>,
    },
    /// Several attributes with weights (e.g. collar 0.7, colour 0.3).
    Weighted(Vec<WeightedVector>),
    /// The stored vectors of an item (the item itself is excluded from hits).
    Item {
        /// The item whose vectors are the query.
        id: ItemId,
        /// Attributes to compare on, with weights.
        attributes: Vec<AttributeWeight>,
    },
    /// Average-vector recommendation: per attribute the query is
    /// `2 * mean(positives) - mean(negatives)` (just the mean when there are no negatives);
    /// positives and negatives are excluded from hits.
    Recommend {
        /// Items the results should resemble (at least one).
        positive: Vec<ItemId>,
        /// Items the results should not resemble.
        #[serde(default)]
        negative: Vec<ItemId>,
        /// Attributes to compare on, with weights.
        attributes: Vec<AttributeWeight>,
    },
}

/// A search: query, how many hits, and how to filter and present them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// What to search with.
    pub query: Query,
    /// Number of hits (or of groups with `group_by`), 1..=[`MAX_K`].
    pub k: usize,
    /// Candidate list size in the graphs; the catalogue's default when `None`.
    #[serde(default)]
    pub ef_search: Option<usize>,
    /// Drop hits scoring below this.
    #[serde(default)]
    pub score_threshold: Option<f32>,
    /// Only items whose payload passes the filter.
    #[serde(default)]
    pub filter: Option<Filter>,
    /// Return payloads with hits.
    #[serde(default)]
    pub with_payload: bool,
    /// Group hits by a payload field.
    #[serde(default)]
    pub group_by: Option<GroupBy>,
}

impl SearchRequest {
    /// A request for the `k` nearest items to `vector` on one attribute, defaults elsewhere.
    pub fn vector(attribute: impl Into<String>, vector: Vec<f32>, k: usize) -> Self {
        Self::new(
            Query::Vector {
                attribute: attribute.into(),
                vector,
            },
            k,
        )
    }

    /// A request with the given query and `k`, defaults elsewhere.
    pub fn new(query: Query, k: usize) -> Self {
        SearchRequest {
            query,
            k,
            ef_search: None,
            score_threshold: None,
            filter: None,
            with_payload: false,
            group_by: None,
        }
    }
}

/// Group hits by the value of a payload field (several images of one product).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBy {
    /// Dotted payload field; items without it are left out.
    pub field: String,
    /// Most hits per group (>= 1).
    pub group_size: usize,
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The item.
    pub id: ItemId,
    /// Combined score: weighted sum of cosine similarities (higher is better).
    pub score: f32,
    /// Cosine similarity per requested attribute.
    pub attribute_scores: BTreeMap<String, f32>,
    /// Payload, when asked for.
    pub payload: Option<Payload>,
}

/// Hits sharing one value of the `group_by` field, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HitGroup {
    /// The field's value.
    pub key: serde_json::Value,
    /// Up to `group_size` hits.
    pub hits: Vec<Hit>,
}

/// What a search returns: hits, or groups of hits when `group_by` was set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchResults {
    /// Plain hits, best first.
    Hits(Vec<Hit>),
    /// Groups, best group (by its best hit) first.
    Groups(Vec<HitGroup>),
}

impl SearchResults {
    /// All hits, flattening groups in order.
    pub fn into_hits(self) -> Vec<Hit> {
        match self {
            SearchResults::Hits(h) => h,
            SearchResults::Groups(g) => g.into_iter().flat_map(|g| g.hits).collect(),
        }
    }
}

/// A catalogue and its size, from `list_catalogues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueInfo {
    /// Catalogue name.
    pub name: String,
    /// Its schema.
    pub schema: CatalogueSchema,
    /// Live items.
    pub items: u64,
    /// Attribute -> live items having a vector for it.
    pub attribute_counts: BTreeMap<String, u64>,
}

/// Per-attribute graph statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeStats {
    /// Attribute name.
    pub attribute: String,
    /// Live items with this attribute (sled's count).
    pub live: u64,
    /// Slots in the graph: live points, tombstones and reclaimed slots waiting for a new point.
    pub graph_points: u64,
    /// Slots in the graph without a live item: deleted or replaced points, reclaimed or not.
    pub tombstones: u64,
    /// Completed compactions of this graph since the store was opened.
    pub compactions: u64,
    /// Sequence number covered by the last graph dump on disk.
    pub dumped_sequence: Option<u64>,
}

/// A catalogue's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueStats {
    /// Catalogue name.
    pub name: String,
    /// Live items.
    pub items: u64,
    /// Current sequence number (increases with every write batch).
    pub sequence: u64,
    /// One entry per attribute, in schema order.
    pub attributes: Vec<AttributeStats>,
    /// Approximate bytes the graphs' vectors take in memory.
    pub vector_bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_id_limits() {
        assert!(ItemId::new("").is_err());
        assert!(ItemId::new("x".repeat(256)).is_ok());
        assert!(matches!(
            ItemId::new("é".repeat(129)),
            Err(IndexError::InvalidItemId { len: 258, .. })
        ));
        let bad: std::result::Result<ItemId, _> = serde_json::from_str("\"\"");
        assert!(bad.is_err());
    }

    #[test]
    fn filter_json_shape() {
        let f: Filter = serde_json::from_str(
            r#"{"and":[{"match":{"field":"brand","value":"acme"}},
                       {"not":{"range":{"field":"price","gte":10.0}}},
                       {"in":{"field":"size","values":[1,2,"xl",true]}}]}"#,
        )
        .unwrap();
        let Filter::And(parts) = &f else {
            panic!("expected and, got {f:?}")
        };
        assert_eq!(parts.len(), 3);
        assert_eq!(
            parts[0],
            Filter::Match {
                field: "brand".into(),
                value: MatchValue::Keyword("acme".into())
            }
        );
    }
}
