//! A catalogue's schema, fixed at creation.

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};

/// Most attributes a catalogue may have.
pub const MAX_ATTRIBUTES: usize = 64;
/// Largest vector dimension accepted.
pub const MAX_DIMENSION: usize = 4096;

/// How vectors are held in the in-memory graphs. sled always keeps the exact `f32` vectors,
/// which rescore the shortlist of the compressed kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VectorStorage {
    /// 4 bytes per component; graph distances are exact.
    #[default]
    F32,
    /// 2 bytes per component (IEEE half); shortlist rescored in `f32`.
    F16,
    /// 1 byte per component (per-vector max-abs scalar quantisation); shortlist rescored in `f32`.
    Int8,
}

impl VectorStorage {
    /// Bytes per vector component in the graph.
    pub fn bytes_per_component(self) -> usize {
        match self {
            VectorStorage::F32 => 4,
            VectorStorage::F16 => 2,
            VectorStorage::Int8 => 1,
        }
    }
}

/// HNSW construction and search parameters, shared by every attribute graph of a catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HnswConfig {
    /// Maximum neighbours per node and layer (`M`), 4..=255.
    pub m: usize,
    /// Candidate list size while building (`ef_construction`), >= `m`.
    pub ef_construction: usize,
    /// Default candidate list size while searching, used when a request gives none.
    pub ef_search: usize,
}

impl Default for HnswConfig {
    fn default() -> Self {
        HnswConfig {
            m: 16,
            ef_construction: 200,
            // 64 gave recall@10 0.94 on 100k clustered 256-d vectors, 128 gave 0.98
            // (docs/benchmarks.md).
            ef_search: 128,
        }
    }
}

/// The fixed shape of a catalogue: attribute names, dimension, graph parameters, storage.
/// Similarity is always cosine (vectors are L2-normalised on insert).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogueSchema {
    /// Attribute names, one embedding space (and one graph) each, e.g. `["collar", "colour"]`.
    pub attributes: Vec<String>,
    /// Number of components of every vector.
    pub dimension: usize,
    /// Graph parameters.
    #[serde(default)]
    pub hnsw: HnswConfig,
    /// How the graphs hold vectors.
    #[serde(default)]
    pub storage: VectorStorage,
    /// Largest serialised JSON payload accepted per item.
    #[serde(default = "default_max_payload_bytes")]
    pub max_payload_bytes: usize,
}

fn default_max_payload_bytes() -> usize {
    CatalogueSchema::DEFAULT_MAX_PAYLOAD_BYTES
}

impl CatalogueSchema {
    /// Default payload limit: 64 KiB.
    pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 64 * 1024;

    /// A schema with default HNSW parameters, `f32` storage and the default payload limit.
    pub fn new<S: Into<String>>(attributes: impl IntoIterator<Item = S>, dimension: usize) -> Self {
        CatalogueSchema {
            attributes: attributes.into_iter().map(Into::into).collect(),
            dimension,
            hnsw: HnswConfig::default(),
            storage: VectorStorage::default(),
            max_payload_bytes: Self::DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }

    /// Same schema with other graph parameters.
    pub fn with_hnsw(mut self, hnsw: HnswConfig) -> Self {
        self.hnsw = hnsw;
        self
    }

    /// Same schema with another vector storage.
    pub fn with_storage(mut self, storage: VectorStorage) -> Self {
        self.storage = storage;
        self
    }

    /// Position of an attribute in [`Self::attributes`].
    pub fn attribute_index(&self, attribute: &str) -> Option<usize> {
        self.attributes.iter().position(|a| a == attribute)
    }

    /// Checks every field; called by `create_catalogue`.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(IndexError::InvalidSchema { reason });
        if self.attributes.is_empty() {
            return bad("at least one attribute is required".into());
        }
        if self.attributes.len() > MAX_ATTRIBUTES {
            return bad(format!(
                "{} attributes exceed the limit of {MAX_ATTRIBUTES}",
                self.attributes.len()
            ));
        }
        for (i, a) in self.attributes.iter().enumerate() {
            if a.is_empty() || a.len() > 64 {
                return bad(format!("attribute name {a:?} must be 1..=64 bytes"));
            }
            if self.attributes[..i].contains(a) {
                return bad(format!("attribute {a:?} is listed twice"));
            }
        }
        if self.dimension == 0 || self.dimension > MAX_DIMENSION {
            return bad(format!(
                "dimension {} is outside 1..={MAX_DIMENSION}",
                self.dimension
            ));
        }
        let h = &self.hnsw;
        if !(4..=255).contains(&h.m) {
            return bad(format!("hnsw m = {} is outside 4..=255", h.m));
        }
        if h.ef_construction < h.m || h.ef_construction > 4096 {
            return bad(format!(
                "hnsw ef_construction = {} must be in m..=4096",
                h.ef_construction
            ));
        }
        if h.ef_search == 0 || h.ef_search > 10_000 {
            return bad(format!(
                "hnsw ef_search = {} is outside 1..=10000",
                h.ef_search
            ));
        }
        if self.max_payload_bytes == 0 || self.max_payload_bytes > 16 * 1024 * 1024 {
            return bad(format!(
                "max_payload_bytes = {} is outside 1..=16 MiB",
                self.max_payload_bytes
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_schema_is_valid_and_round_trips() {
        let s = CatalogueSchema::new(["collar", "colour"], 128);
        s.validate().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: CatalogueSchema = serde_json::from_str(&json).unwrap();
        assert_eq!(s, back);
        assert_eq!(back.attribute_index("colour"), Some(1));
    }

    #[test]
    fn bad_schemas_are_rejected() {
        let ok = CatalogueSchema::new(["a"], 8);
        let cases = [
            CatalogueSchema::new(Vec::<String>::new(), 8),
            CatalogueSchema::new(["a", "a"], 8),
            CatalogueSchema::new(["a"], 0),
            ok.clone().with_hnsw(HnswConfig {
                m: 300,
                ..HnswConfig::default()
            }),
            ok.clone().with_hnsw(HnswConfig {
                ef_search: 0,
                ..HnswConfig::default()
            }),
        ];
        for c in cases {
            assert!(
                matches!(c.validate(), Err(IndexError::InvalidSchema { .. })),
                "{c:?}"
            );
        }
    }
}
