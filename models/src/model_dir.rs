//! [`ModelDir`]: the one reader of a model directory (`card.json` +
//! `model.safetensors`). The embedder, the CLI and the trainers (resuming,
//! reloading the best epoch) all go through it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::card::{ModelCard, CARD_FILE, WEIGHTS_FILE};
use crate::checkpoint::Checkpoint;
use crate::error::Result;
use crate::head::Head;

/// A model directory read from disk: its validated card and its weights
/// (head tensors at the root, a fine-tuned backbone under `backbonenet.`).
#[derive(Debug, Clone)]
pub struct ModelDir {
    path: PathBuf,
    /// The card.
    pub card: ModelCard,
    /// The weights file, as read.
    pub checkpoint: Checkpoint,
}

impl ModelDir {
    /// Read `dir/card.json` (validated) and `dir/model.safetensors`.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let card = ModelCard::load(dir.join(CARD_FILE))?;
        let checkpoint = Checkpoint::load(dir.join(WEIGHTS_FILE))?;
        Ok(Self {
            path: dir.to_path_buf(),
            card,
            checkpoint,
        })
    }

    /// The directory this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The head of the card's kind and sizes on `device`, every key checked.
    pub fn head(&self, device: &Device) -> Result<Head> {
        self.checkpoint
            .load_head_as(self.card.head, &self.card.head_config, device)
    }

    /// Whether the weights hold their own backbone (`backbonenet.*`, a
    /// fine-tuned or converted model); without, the backbone is the shipped
    /// ImageNet one of the card's kind (a frozen-backbone model).
    pub fn has_backbone(&self) -> Result<bool> {
        Ok(!self.checkpoint.backbone_tensors()?.is_empty())
    }

    /// Every tensor of `model.safetensors` under its stored name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        self.checkpoint.tensors()
    }
}
