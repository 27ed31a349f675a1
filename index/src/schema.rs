//! A catalogue's schema, fixed at creation.

use std::collections::BTreeMap;

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

/// Which model computed a catalogue's vectors, as the service records it at creation: the
/// index keeps it with the schema and never interprets it beyond [`ModelRecord::validate`].
///
/// Vectors of two models are not comparable, so the service embeds a catalogue's queries and
/// new items only with the model of this fingerprint, and refuses when it does not hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Hex digest of the model's weights and card (the service's fingerprint).
    pub fingerprint: String,
    /// Backbone name, for people reading the record.
    pub backbone: String,
    /// Every attribute the model embeds, in its order (the catalogue may index a subset).
    pub attributes: Vec<String>,
    /// Square input side in pixels: the size of the crops kept as thumbnails.
    pub input_size: u32,
}

impl ModelRecord {
    /// Longest fingerprint or backbone name accepted.
    pub const MAX_NAME_BYTES: usize = 128;

    /// Checks the fields' bounds (the record comes from the service, or from disk).
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(IndexError::InvalidSchema { reason });
        if self.fingerprint.is_empty()
            || self.fingerprint.len() > Self::MAX_NAME_BYTES
            || !self.fingerprint.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return bad(format!(
                "model fingerprint {:?} must be 1..={} hex digits",
                self.fingerprint,
                Self::MAX_NAME_BYTES
            ));
        }
        if self.backbone.len() > Self::MAX_NAME_BYTES {
            return bad(format!(
                "model backbone name is {} bytes, more than {}",
                self.backbone.len(),
                Self::MAX_NAME_BYTES
            ));
        }
        if self.attributes.is_empty() || self.attributes.len() > MAX_ATTRIBUTES {
            return bad(format!(
                "the model record lists {} attributes, outside 1..={MAX_ATTRIBUTES}",
                self.attributes.len()
            ));
        }
        if self.input_size == 0 || self.input_size > 4096 {
            return bad(format!(
                "model input size {} is outside 1..=4096",
                self.input_size
            ));
        }
        Ok(())
    }
}

/// The fixed shape of a catalogue: attribute names, dimension, graph parameters, storage,
/// and the model that built it. Similarity is always cosine (vectors are L2-normalised on
/// insert).
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
    /// The model whose vectors the catalogue holds; `None` for vectors from elsewhere (a
    /// client's own) and for catalogues created before models were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRecord>,
    /// A move to another model in progress (see [`Migration`]); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// Attributes renamed since they were created: catalogue name -> the name the model
    /// computes them under (see [`CatalogueSchema::model_attribute`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub renamed: BTreeMap<String, String>,
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
            model: None,
            migration: None,
            renamed: BTreeMap::new(),
        }
    }

    /// The name the model computes attribute `attribute` under: its original name when it
    /// was renamed, else its own.
    pub fn model_attribute<'a>(&'a self, attribute: &'a str) -> &'a str {
        self.renamed
            .get(attribute)
            .map_or(attribute, String::as_str)
    }

    /// Same schema recording the model that computes its vectors.
    pub fn with_model(mut self, model: ModelRecord) -> Self {
        self.model = Some(model);
        self
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
        if let Some(model) = &self.model {
            model.validate()?;
        }
        if let Some(m) = &self.migration {
            m.target.validate()?;
            for s in &m.staged {
                for name in [&s.attribute, &s.staging] {
                    if self.attribute_index(name).is_none() {
                        return bad(format!(
                            "the migration names attribute {name:?}, which the catalogue does not have"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// A catalogue moving to another model (the service's reindex): the model its new vectors
/// come from, and for each attribute being re-embedded the staging attribute that collects
/// its new vectors until the switch. Searches keep using the attributes themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// The model the catalogue moves to.
    pub target: ModelRecord,
    /// Attribute and staging attribute pairs.
    pub staged: Vec<StagedAttribute>,
}

/// One attribute being re-embedded, and the attribute collecting its new vectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedAttribute {
    /// The attribute searches use.
    pub attribute: String,
    /// The staging attribute (hidden from the service's users) filled with the new vectors.
    pub staging: String,
}

/// One change to a catalogue's schema, applied by
/// [`crate::CatalogueStore::alter_catalogue`] with the others of its call, in order, all or
/// none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum SchemaChange {
    /// A new attribute, last in the list; no item has a vector for it until
    /// [`crate::CatalogueStore::fill_attribute`] gives them one.
    AddAttribute {
        /// Its name (not yet an attribute of the catalogue).
        name: String,
    },
    /// Remove an attribute with its graph and every item's vector for it.
    DropAttribute {
        /// An attribute of the catalogue.
        name: String,
    },
    /// Rename an attribute; its vectors and graph stay as they are.
    RenameAttribute {
        /// An attribute of the catalogue.
        from: String,
        /// A name no other attribute has.
        to: String,
    },
    /// Record (or clear) the model the catalogue's vectors come from.
    SetModel {
        /// The model; `None` clears the record.
        model: Option<ModelRecord>,
    },
    /// Record (or clear) a migration in progress.
    SetMigration {
        /// The migration; `None` when it is over.
        migration: Option<Migration>,
    },
}

impl CatalogueSchema {
    /// The schema after `changes` (in order), validated, and for each of its attributes the
    /// index it had in `self` (`None` for an added one): what a backend needs to carry its
    /// records over. `catalogue` names the catalogue in errors.
    pub fn altered(
        &self,
        catalogue: &str,
        changes: &[SchemaChange],
    ) -> Result<(CatalogueSchema, Vec<Option<usize>>)> {
        let mut next = self.clone();
        let mut origin: Vec<Option<usize>> = (0..self.attributes.len()).map(Some).collect();
        let unknown = |name: &str| IndexError::UnknownAttribute {
            catalogue: catalogue.to_string(),
            attribute: name.to_string(),
        };
        let taken = |name: &str| IndexError::InvalidSchema {
            reason: format!("attribute {name:?} already exists in catalogue {catalogue:?}"),
        };
        for change in changes {
            match change {
                SchemaChange::AddAttribute { name } => {
                    if next.attribute_index(name).is_some() {
                        return Err(taken(name));
                    }
                    next.attributes.push(name.clone());
                    origin.push(None);
                }
                SchemaChange::DropAttribute { name } => {
                    let i = next.attribute_index(name).ok_or_else(|| unknown(name))?;
                    next.attributes.remove(i);
                    origin.remove(i);
                    next.renamed.remove(name);
                }
                SchemaChange::RenameAttribute { from, to } => {
                    let i = next.attribute_index(from).ok_or_else(|| unknown(from))?;
                    if from != to && next.attribute_index(to).is_some() {
                        return Err(taken(to));
                    }
                    next.attributes[i] = to.clone();
                    // A migration's staging attribute that takes its attribute's place takes
                    // its model name too; any other keeps its own.
                    let takes_over = self.migration.as_ref().is_some_and(|m| {
                        m.staged
                            .iter()
                            .any(|s| &s.staging == from && &s.attribute == to)
                    });
                    let own = next.renamed.remove(from).unwrap_or_else(|| from.clone());
                    let model_name = if takes_over {
                        self.model_attribute(to).to_string()
                    } else {
                        own
                    };
                    if &model_name != to {
                        next.renamed.insert(to.clone(), model_name);
                    }
                }
                SchemaChange::SetModel { model } => next.model = model.clone(),
                SchemaChange::SetMigration { migration } => next.migration = migration.clone(),
            }
        }
        next.validate()?;
        Ok((next, origin))
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

    fn record() -> ModelRecord {
        ModelRecord {
            fingerprint: "7e01e4fb8c83684e".into(),
            backbone: "mobilenet_v2".into(),
            attributes: vec!["collar".into(), "colour".into()],
            input_size: 224,
        }
    }

    #[test]
    fn a_schema_with_its_model_round_trips() {
        let s = CatalogueSchema::new(["collar"], 128).with_model(record());
        s.validate().unwrap();
        let back: CatalogueSchema =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.model, Some(record()));
    }

    #[test]
    fn a_schema_stored_before_models_were_recorded_reads_without_one() {
        let old = r#"{"attributes":["a"],"dimension":8}"#;
        let s: CatalogueSchema = serde_json::from_str(old).unwrap();
        assert_eq!(s.model, None);
        assert!(!serde_json::to_string(&s).unwrap().contains("model"));
    }

    #[test]
    fn bad_model_records_are_rejected() {
        let with = |f: fn(&mut ModelRecord)| {
            let mut r = record();
            f(&mut r);
            CatalogueSchema::new(["a"], 8).with_model(r)
        };
        for s in [
            with(|r| r.fingerprint.clear()),
            with(|r| r.fingerprint = "not hex!".into()),
            with(|r| r.fingerprint = "a".repeat(129)),
            with(|r| r.attributes.clear()),
            with(|r| r.input_size = 0),
        ] {
            assert!(
                matches!(s.validate(), Err(IndexError::InvalidSchema { .. })),
                "{s:?}"
            );
        }
    }

    fn changed(s: &CatalogueSchema, changes: &[SchemaChange]) -> Result<CatalogueSchema> {
        s.altered("c", changes).map(|(next, _)| next)
    }

    #[test]
    fn alterations_carry_each_attribute_from_its_old_position() {
        let s = CatalogueSchema::new(["a", "b", "c"], 8);
        let (next, origin) = s
            .altered(
                "c",
                &[
                    SchemaChange::AddAttribute { name: "d".into() },
                    SchemaChange::DropAttribute { name: "a".into() },
                    SchemaChange::RenameAttribute {
                        from: "c".into(),
                        to: "see".into(),
                    },
                ],
            )
            .unwrap();
        assert_eq!(next.attributes, ["b", "see", "d"]);
        assert_eq!(origin, [Some(1), Some(2), None]);
    }

    #[test]
    fn a_renamed_attribute_keeps_its_model_name_through_renames_and_a_switch() {
        let s = CatalogueSchema::new(["colour", "collar"], 8);
        let rename = |from: &str, to: &str| SchemaChange::RenameAttribute {
            from: from.into(),
            to: to.into(),
        };
        let once = changed(&s, &[rename("colour", "hue")]).unwrap();
        assert_eq!(once.model_attribute("hue"), "colour");
        let twice = changed(&once, &[rename("hue", "tint")]).unwrap();
        assert_eq!(twice.model_attribute("tint"), "colour");
        assert_eq!(twice.renamed.len(), 1);
        let back = changed(&twice, &[rename("tint", "colour")]).unwrap();
        assert!(back.renamed.is_empty());
        // A reindex: tint~next is filled, then takes tint's place and its model name.
        let migrating = changed(
            &twice,
            &[
                SchemaChange::AddAttribute {
                    name: "tint~next".into(),
                },
                SchemaChange::SetMigration {
                    migration: Some(Migration {
                        target: record(),
                        staged: vec![StagedAttribute {
                            attribute: "tint".into(),
                            staging: "tint~next".into(),
                        }],
                    }),
                },
            ],
        )
        .unwrap();
        let switched = changed(
            &migrating,
            &[
                SchemaChange::SetMigration { migration: None },
                SchemaChange::DropAttribute {
                    name: "tint".into(),
                },
                rename("tint~next", "tint"),
            ],
        )
        .unwrap();
        assert_eq!(switched.model_attribute("tint"), "colour");
        let dropped = changed(
            &switched,
            &[SchemaChange::DropAttribute {
                name: "tint".into(),
            }],
        )
        .unwrap();
        assert!(dropped.renamed.is_empty());
    }

    #[test]
    fn an_alteration_that_breaks_the_schema_is_refused_whole() {
        let s = CatalogueSchema::new(["a", "b"], 8);
        let add = |n: &str| SchemaChange::AddAttribute { name: n.into() };
        let drop = |n: &str| SchemaChange::DropAttribute { name: n.into() };
        assert!(matches!(
            changed(&s, &[add("b")]),
            Err(IndexError::InvalidSchema { .. })
        ));
        assert!(matches!(
            changed(&s, &[add("z"), drop("nope")]),
            Err(IndexError::UnknownAttribute { .. })
        ));
        assert!(matches!(
            changed(&s, &[drop("a"), drop("b")]),
            Err(IndexError::InvalidSchema { .. })
        ));
        let rename = SchemaChange::RenameAttribute {
            from: "a".into(),
            to: "b".into(),
        };
        assert!(matches!(
            changed(&s, &[rename]),
            Err(IndexError::InvalidSchema { .. })
        ));
    }

    #[test]
    fn a_migration_must_name_attributes_of_the_catalogue() {
        let s = CatalogueSchema::new(["a"], 8);
        let migration = |staging: &str| SchemaChange::SetMigration {
            migration: Some(Migration {
                target: record(),
                staged: vec![StagedAttribute {
                    attribute: "a".into(),
                    staging: staging.into(),
                }],
            }),
        };
        assert!(changed(&s, &[migration("a~next")]).is_err());
        let with = changed(
            &s,
            &[
                SchemaChange::AddAttribute {
                    name: "a~next".into(),
                },
                migration("a~next"),
            ],
        )
        .unwrap();
        assert_eq!(with.migration.unwrap().staged[0].staging, "a~next");
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
