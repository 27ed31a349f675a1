//! The model card: what a saved asen model is, in `card.json` beside its
//! `model.safetensors` (backbone under `backbonenet.`, head at the root, the
//! normalised names of `checkpoint::normalise_key`).
//!
//! ```json
//! { "format_version": 1, "head": "asen_v1", "backbone": "resnet50_layer3",
//!   "input_size": 224, "embedding_dim": 1024, "feature_channels": 1024,
//!   "attributes": [{"name": "skirt_length", "values": ["short", "long"]}, ...],
//!   "head_config": {"in_channels": 1024, "n_attributes": 8, "attention_dim": 512,
//!                   "gate_hidden": 512, "embedding_dim": 1024, "feature_fc": true},
//!   "match_thresholds": {"skirt_length": 0.92},
//!   "provenance": {"source_file": "...", "source_sha256": "...", "command": "...",
//!                  "date": "2026-11-27", "notes": "..."} }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::head::{HeadConfig, HeadKind};
use crate::signature::{CopySignatureSpec, IDENTITY_ATTRIBUTE};

/// The card format this build reads and writes.
pub const CARD_FORMAT_VERSION: u32 = 1;
/// File name of the card inside a model directory.
pub const CARD_FILE: &str = "card.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// One attribute (condition) of the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributeSpec {
    /// Attribute name (`collar_design`), unique within the card.
    pub name: String,
    /// Names of its values (`["shirt collar", "peter pan", ...]`); may be empty when unknown.
    #[serde(default)]
    pub values: Vec<String>,
}

impl AttributeSpec {
    /// An attribute with no value names.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            values: Vec::new(),
        }
    }
}

/// Where the weights came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The converted or trained-from file name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_file: Option<String>,
    /// sha256 (hex) of that file, as stored (compressed or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
    /// The command that produced the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// UTC date, `YYYY-MM-DD`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
}

/// A model that this one extends: it computes that model's attributes exactly as it does
/// (same backbone, same head weights) and adds attributes after them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// The base model's fingerprint ([`crate::fingerprint`]).
    pub fingerprint: String,
    /// The base model's attributes: the first ones of this card, in the same order.
    pub attributes: Vec<String>,
}

/// Description of a saved model (`card.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Card format version ([`CARD_FORMAT_VERSION`]).
    pub format_version: u32,
    /// The head architecture.
    pub head: HeadKind,
    /// Backbone name: `resnet50_layer3`, `mobilenet_v2`, `efficientnet_lite0`, ...
    pub backbone: String,
    /// Square input side in pixels the model expects (224).
    pub input_size: u32,
    /// Attributes in index order (index = the head's attribute id).
    pub attributes: Vec<AttributeSpec>,
    /// Embedding size `D`.
    pub embedding_dim: usize,
    /// Channels of the backbone feature map (the colour histogram's included).
    pub feature_channels: usize,
    /// Whether the per-cell colour histogram ([`crate::colour`]) is appended
    /// to the backbone's channels.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub colour_histogram: bool,
    /// Whether the feature map is on the fine grid of the backbone's earlier
    /// stage ([`crate::Backbone::with_fine_map`]: 14x14 for MobileNetV2 at 224 px).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fine_map: bool,
    /// Head hyper-parameters.
    pub head_config: HeadConfig,
    /// Optional per-attribute cosine similarity above which two items count as
    /// the same design (used by the copy check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_thresholds: Option<BTreeMap<String, f32>>,
    /// The instance-level copy signature ([`crate::signature`]), when the model
    /// directory has one (`copy_signature.safetensors`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_signature: Option<CopySignatureSpec>,
    /// The models this one extends, nearest first (empty for a model trained on its own):
    /// vectors a catalogue holds from any of them are this model's vectors too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extends: Vec<BaseModel>,
    /// Where the weights came from.
    #[serde(default)]
    pub provenance: Provenance,
}

impl ModelCard {
    /// A card for `head` with sizes `cfg`, attribute names checked against `cfg.n_attributes`.
    pub fn new(
        head: HeadKind,
        backbone: impl Into<String>,
        input_size: u32,
        attributes: Vec<AttributeSpec>,
        head_config: HeadConfig,
    ) -> Result<Self> {
        let card = Self {
            format_version: CARD_FORMAT_VERSION,
            head,
            backbone: backbone.into(),
            input_size,
            attributes,
            embedding_dim: head_config.embedding_dim,
            feature_channels: head_config.in_channels,
            colour_histogram: false,
            fine_map: false,
            head_config,
            match_thresholds: None,
            copy_signature: None,
            extends: Vec::new(),
            provenance: Provenance::default(),
        };
        card.validate()
            .map_err(|reason| ModelError::InvalidArgument(format!("model card: {reason}")))?;
        Ok(card)
    }

    /// Read a card from `card.json` or from a model directory containing one.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = card_path(path.as_ref());
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Card {
            path: path.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| ModelError::Card {
            path: path.clone(),
            reason: format!("invalid json: {e}"),
        })?;
        card.validate()
            .map_err(|reason| ModelError::Card { path, reason })?;
        Ok(card)
    }

    /// Write the card (pretty JSON) to `card.json` or into a model directory.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = card_path(path.as_ref());
        self.validate().map_err(|reason| ModelError::Card {
            path: path.clone(),
            reason,
        })?;
        let text = serde_json::to_string_pretty(self).map_err(|e| ModelError::Card {
            path: path.clone(),
            reason: format!("cannot serialise: {e}"),
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| ModelError::io(&path, e))
    }

    /// Check internal consistency; the reason names the offending field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != CARD_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads {CARD_FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.backbone.trim().is_empty() {
            return Err("backbone is empty".into());
        }
        if self.input_size == 0 {
            return Err("input_size is 0".into());
        }
        if self.attributes.is_empty() {
            return Err("attributes is empty".into());
        }
        let mut seen = HashSet::new();
        for a in &self.attributes {
            if a.name.trim().is_empty() {
                return Err("an attribute has an empty name".into());
            }
            if !seen.insert(a.name.as_str()) {
                return Err(format!("attribute {:?} appears twice", a.name));
            }
        }
        let cfg = &self.head_config;
        if cfg.n_attributes != self.attributes.len() {
            return Err(format!(
                "head_config.n_attributes is {} but {} attributes are listed",
                cfg.n_attributes,
                self.attributes.len()
            ));
        }
        if cfg.embedding_dim != self.embedding_dim {
            return Err(format!(
                "embedding_dim {} differs from head_config.embedding_dim {}",
                self.embedding_dim, cfg.embedding_dim
            ));
        }
        if cfg.in_channels != self.feature_channels {
            return Err(format!(
                "feature_channels {} differs from head_config.in_channels {}",
                self.feature_channels, cfg.in_channels
            ));
        }
        cfg.validate(self.head).map_err(|e| e.to_string())?;
        if let Some(t) = &self.match_thresholds {
            for (name, v) in t {
                if !seen.contains(name.as_str()) {
                    return Err(format!("match_thresholds names unknown attribute {name:?}"));
                }
                if !v.is_finite() || !(-1.0..=1.0).contains(v) {
                    return Err(format!(
                        "match_thresholds[{name:?}] = {v} is not a cosine in [-1, 1]"
                    ));
                }
            }
        }
        if let Some(sig) = &self.copy_signature {
            if sig.dim != self.embedding_dim {
                return Err(format!(
                    "copy_signature.dim {} differs from embedding_dim {} (the signature is stored \
                     as one more attribute vector of a catalogue)",
                    sig.dim, self.embedding_dim
                ));
            }
            if !sig.threshold.is_finite() || !(-1.0..=1.0).contains(&sig.threshold) {
                return Err(format!(
                    "copy_signature.threshold = {} is not a cosine in [-1, 1]",
                    sig.threshold
                ));
            }
            if seen.contains(IDENTITY_ATTRIBUTE) {
                return Err(format!(
                    "attribute {IDENTITY_ATTRIBUTE:?} is reserved for the copy signature"
                ));
            }
        }
        self.validate_extends()
    }

    /// Each base model is named by a fingerprint and its attributes are this card's first
    /// ones, in order.
    fn validate_extends(&self) -> std::result::Result<(), String> {
        for base in &self.extends {
            let hex = !base.fingerprint.is_empty()
                && base.fingerprint.len() <= 64
                && base.fingerprint.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex {
                return Err(format!(
                    "extends: fingerprint {:?} is not 1..=64 hex digits",
                    base.fingerprint
                ));
            }
            let prefix = !base.attributes.is_empty()
                && base.attributes.len() < self.attributes.len()
                && base
                    .attributes
                    .iter()
                    .zip(&self.attributes)
                    .all(|(b, a)| *b == a.name);
            if !prefix {
                return Err(format!(
                    "extends: model {} has attributes {:?}, which must be the first ones of \
                     this card's, in order, with at least one added",
                    base.fingerprint, base.attributes
                ));
            }
        }
        Ok(())
    }

    /// Whether this model extends the model `fingerprint` (directly or through another),
    /// so that it computes every attribute of that model exactly as it does.
    pub fn extends_model(&self, fingerprint: &str) -> bool {
        self.extends.iter().any(|b| b.fingerprint == fingerprint)
    }

    /// Attribute names in index order.
    pub fn attribute_names(&self) -> Vec<String> {
        self.attributes.iter().map(|a| a.name.clone()).collect()
    }

    /// Index of the attribute called `name`.
    pub fn attribute_index(&self, name: &str) -> Result<usize> {
        self.attributes
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| ModelError::UnknownAttribute {
                name: name.to_owned(),
                known: self.attribute_names(),
            })
    }
}

fn card_path(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join(CARD_FILE)
    } else {
        path.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> ModelCard {
        ModelCard::new(
            HeadKind::AsenV1,
            "resnet50_layer3",
            224,
            vec![
                AttributeSpec::named("collar"),
                AttributeSpec {
                    name: "sleeve".into(),
                    values: vec!["short".into()],
                },
            ],
            HeadConfig::asen(1024, 2),
        )
        .unwrap()
    }

    #[test]
    fn round_trips_through_json_with_serde_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = card();
        c.match_thresholds = Some([("collar".to_owned(), 0.9f32)].into());
        c.provenance.notes = Some("test".into());
        c.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CARD_FILE)).unwrap();
        assert!(text.contains("\"head\": \"asen_v1\""), "{text}");
        assert_eq!(ModelCard::load(dir.path()).unwrap(), c);
        assert_eq!(c.attribute_index("sleeve").unwrap(), 1);
        let e = c.attribute_index("hem").unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown attribute \"hem\"; the model knows: collar, sleeve"
        );
    }

    #[test]
    fn invalid_cards_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CARD_FILE);
        let mut c = card();
        c.head_config.n_attributes = 3;
        let text = serde_json::to_string(&c).unwrap();
        std::fs::write(&path, text).unwrap();
        let e = ModelCard::load(&path).unwrap_err().to_string();
        assert!(
            e.contains("head_config.n_attributes is 3 but 2 attributes are listed"),
            "{e}"
        );
        assert!(e.starts_with("invalid model card "), "{e}");

        let mut c = card();
        c.match_thresholds = Some([("hem".to_owned(), 0.5f32)].into());
        assert!(c
            .validate()
            .unwrap_err()
            .contains("unknown attribute \"hem\""));
        let mut c = card();
        c.attributes[1].name = "collar".into();
        assert!(c.validate().unwrap_err().contains("appears twice"));

        std::fs::write(&path, "{\"format_version\": 1").unwrap();
        let e = ModelCard::load(&path).unwrap_err().to_string();
        assert!(e.contains("invalid json"), "{e}");
        let e = ModelCard::load(dir.path().join("nope.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
        std::fs::write(
            &path,
            serde_json::to_string(&card())
                .unwrap()
                .replace("asen_v1", "asen_v9"),
        )
        .unwrap();
        assert!(ModelCard::load(&path).is_err());
    }

    fn extension(base_attributes: &[&str]) -> ModelCard {
        let mut c = card();
        c.extends = vec![BaseModel {
            fingerprint: "00ff00ff".into(),
            attributes: base_attributes.iter().map(|a| a.to_string()).collect(),
        }];
        c
    }

    #[test]
    fn an_extension_names_a_prefix_of_its_attributes() {
        let c = extension(&["collar"]);
        assert_eq!(c.validate(), Ok(()));
        assert!(c.extends_model("00ff00ff"));
        assert!(!c.extends_model("11"));
    }

    #[test]
    fn an_extension_of_other_attributes_is_invalid() {
        for base in [&["sleeve"][..], &["collar", "sleeve"][..], &[][..]] {
            let err = extension(base).validate().unwrap_err();
            assert!(err.contains("must be the first ones"), "{base:?}: {err}");
        }
    }

    #[test]
    fn an_extension_fingerprint_must_be_hex() {
        let mut c = extension(&["collar"]);
        c.extends[0].fingerprint = "not hex".into();
        assert!(c.validate().unwrap_err().contains("hex digits"));
    }
}
