//! What and how to train: [`TrainConfig`] (head, backbone, sizes, schedule,
//! sampling, negatives) and the fine-tuning additions
//! ([`FinetuneSettings`]), shared by the head trainer and fine-tuning.

use asen_models::{BackboneKind, HeadConfig, HeadKind, ModelError, Result};
use serde::{Deserialize, Serialize};

use super::loss::DEFAULT_MARGIN;
use super::sampler::Sampling;
use super::schedule::StepDecay;

fn default_true() -> bool {
    true
}

/// What and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Head architecture (`global`, `csn`, `asen_v1`, `asen_v2`, ...).
    pub head: HeadKind,
    /// The frozen backbone whose features are cached.
    pub backbone: BackboneKind,
    /// Whether the per-cell colour histogram ([`asen_models::colour`]) is appended
    /// to the backbone's feature map.
    #[serde(default)]
    pub colour_histogram: bool,
    /// Whether the feature map is on the backbone's fine grid
    /// ([`asen_models::Backbone::with_fine_map`]).
    #[serde(default)]
    pub fine_map: bool,
    /// Square input side in pixels.
    pub input_size: u32,
    /// Embedding size `D` (ignored without `feature_fc`).
    pub embedding_dim: usize,
    /// Whether the head ends in the `feature_fc` projection to `D`. ASEN v2
    /// only may go without: its embedding is then the attended, gated
    /// feature itself (`C` values), which starts close to the backbone's
    /// pooled features instead of a random projection of them.
    #[serde(default = "default_true")]
    pub feature_fc: bool,
    /// Width of the attention branch (ASEN heads).
    pub attention_dim: usize,
    /// Hidden width of the channel gate (ASEN heads).
    pub gate_hidden: usize,
    /// Epochs to train in all (a resumed run continues up to it).
    pub epochs: usize,
    /// Triplets drawn per epoch.
    pub triplets_per_epoch: usize,
    /// Triplets per optimiser step.
    pub batch_size: usize,
    /// Learning rate schedule (Adam, no weight decay).
    pub schedule: StepDecay,
    /// Margin of the ranking loss.
    pub margin: f64,
    /// Seed of the initialisation and of the triplets.
    pub seed: u64,
    /// How triplet values are drawn.
    #[serde(default)]
    pub sampling: Sampling,
    /// Which negatives each anchor is ranked against.
    #[serde(default)]
    pub negatives: Negatives,
    /// End-to-end fine-tuning settings ([`crate::finetune`]); `None` for a
    /// head trained on cached features of the frozen backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneSettings>,
    /// Weight of the garment prior on the attention ([`crate::GarmentPrior`]);
    /// 0 leaves the attention to the ranking loss alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub garment_prior: f64,
    /// Whether the shown attention (the fine head's on a fine grid) learns a
    /// bias per attribute and cell ([`asen_models::HeadConfig::position_cells`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub position_bias: bool,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// The negatives of the ranking loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Negatives {
    /// The paper: each anchor against its own sampled negative.
    #[default]
    Sampled,
    /// Each anchor against every image of the batch embedded for the same
    /// attribute with another value (batch-all: about 3x the batch / the
    /// number of attributes negatives per anchor instead of one), so the
    /// violating, confusable ones drive the gradient.
    BatchAll,
}

impl std::str::FromStr for Negatives {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sampled" => Ok(Negatives::Sampled),
            "batch-all" => Ok(Negatives::BatchAll),
            other => Err(ModelError::InvalidArgument(format!(
                "unknown negatives {other:?}; expected sampled or batch-all"
            ))),
        }
    }
}

impl TrainConfig {
    /// The defaults for `head` on `backbone`: D 128, attention and gate
    /// width 256, 10 epochs of 20,000 triplets in batches of 64, Adam 1e-4
    /// halved every 4 epochs, margin 0.2, seed 0.
    pub fn new(head: HeadKind, backbone: BackboneKind) -> Self {
        Self {
            head,
            backbone,
            colour_histogram: false,
            fine_map: false,
            input_size: 224,
            embedding_dim: 128,
            feature_fc: true,
            attention_dim: 256,
            gate_hidden: 256,
            epochs: 10,
            triplets_per_epoch: 20_000,
            batch_size: 64,
            schedule: StepDecay {
                base_lr: 1e-4,
                factor: 0.5,
                every_epochs: 4,
            },
            margin: DEFAULT_MARGIN,
            seed: 0,
            sampling: Sampling::Paper,
            negatives: Negatives::Sampled,
            finetune: None,
            garment_prior: 0.0,
            position_bias: false,
        }
    }

    /// The head sizes for `n_attributes` attributes on this backbone.
    pub fn head_config(&self, n_attributes: usize) -> HeadConfig {
        HeadConfig {
            in_channels: self.feature_channels(),
            n_attributes,
            attention_dim: self.attention_dim,
            gate_hidden: self.gate_hidden,
            embedding_dim: if self.feature_fc {
                self.embedding_dim
            } else {
                self.feature_channels()
            },
            feature_fc: self.feature_fc,
            // On the fine grid, everything after the last layer's channels
            // (the fine stage's and the colour histogram's) is the fine head's.
            fine_channels: if self.fine_map {
                self.feature_channels() - self.backbone.out_channels()
            } else {
                0
            },
            position_cells: if self.position_bias {
                self.map_side().pow(2)
            } else {
                0
            },
        }
    }

    /// Side of the feature map this configuration trains on (the fine grid's
    /// with `fine_map`): the input size over the backbone's stride, rounded
    /// up as its padded convolutions round.
    pub fn map_side(&self) -> usize {
        let stride = match self.fine_map {
            true => self.backbone.stride() / 2,
            false => self.backbone.stride(),
        };
        (self.input_size as usize).div_ceil(stride)
    }

    /// Channels of the feature maps this configuration trains on.
    pub fn feature_channels(&self) -> usize {
        self.backbone
            .feature_channels(self.colour_histogram, self.fine_map)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.fine_map && self.backbone.fine_stage().is_none() {
            return Err(ModelError::InvalidArgument(format!(
                "backbone {} has no fine feature grid (mobilenet_v2 has one)",
                self.backbone
            )));
        }
        if self.epochs == 0 || self.triplets_per_epoch == 0 || self.batch_size == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "training needs epochs, triplets per epoch and batch size >= 1, got {}, {}, {}",
                self.epochs, self.triplets_per_epoch, self.batch_size
            )));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(ModelError::InvalidArgument(format!(
                "margin must be a finite number >= 0, got {}",
                self.margin
            )));
        }
        if !(self.garment_prior.is_finite() && self.garment_prior >= 0.0) {
            return Err(ModelError::InvalidArgument(format!(
                "the garment prior's weight must be a finite number >= 0, got {}",
                self.garment_prior
            )));
        }
        if self.garment_prior > 0.0 && self.finetune.is_some() {
            return Err(ModelError::InvalidArgument(
                "the garment prior trains on cached features; fine-tuning the backbone does not support it".into(),
            ));
        }
        if self.position_bias && self.head != HeadKind::AsenV2 {
            return Err(ModelError::InvalidArgument(format!(
                "only an asen_v2 head has a position bias, not {}",
                self.head
            )));
        }
        if !self.feature_fc && self.head != HeadKind::AsenV2 {
            return Err(ModelError::InvalidArgument(format!(
                "only an asen_v2 head can go without feature_fc, not {}",
                self.head
            )));
        }
        StepDecay::new(
            self.schedule.base_lr,
            self.schedule.factor,
            self.schedule.every_epochs,
        )?;
        if let Some(f) = &self.finetune {
            f.validate()?;
        }
        self.head_config(1).validate(self.head)
    }
}

/// What fine-tuning adds to a [`TrainConfig`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSettings {
    /// Backbone learning rate as a fraction of the head's (0 keeps the
    /// backbone's weights, though its BatchNorm statistics still adapt).
    pub backbone_lr_scale: f64,
    /// Flip each training image horizontally with probability 1/2.
    pub flip: bool,
    /// Keep the backbone's BatchNorm in eval mode while training (running
    /// statistics fixed, affine parameters still trained): "frozen
    /// BatchNorm", the usual choice when batches are small or the images far
    /// from ImageNet's. Off by default: BatchNorm trains with batch statistics.
    #[serde(default)]
    pub freeze_batch_norm: bool,
}

impl Default for FinetuneSettings {
    /// Backbone at a tenth of the head's learning rate, flips on.
    fn default() -> Self {
        Self {
            backbone_lr_scale: 0.1,
            flip: true,
            freeze_batch_norm: false,
        }
    }
}

impl FinetuneSettings {
    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.backbone_lr_scale.is_finite() && self.backbone_lr_scale >= 0.0) {
            return Err(ModelError::InvalidArgument(format!(
                "backbone learning-rate scale must be a finite number >= 0, got {}",
                self.backbone_lr_scale
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(FinetuneSettings::default().validate().is_ok());
        let bad = FinetuneSettings {
            backbone_lr_scale: f64::NAN,
            ..FinetuneSettings::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("scale"));
    }

    #[test]
    fn the_position_bias_covers_the_map_the_head_attends_on() {
        let mut cfg = TrainConfig::new(HeadKind::AsenV2, BackboneKind::MobileNetV2);
        cfg.position_bias = true;
        assert_eq!(cfg.head_config(8).position_cells, 49);
        cfg.fine_map = true;
        assert_eq!(cfg.head_config(8).position_cells, 196);
        cfg.input_size = 200; // padded convolutions round up: a 13x13 fine grid
        assert_eq!(cfg.head_config(8).position_cells, 169);
        cfg.position_bias = false;
        assert_eq!(cfg.head_config(8).position_cells, 0);
    }

    #[test]
    fn only_asen_v2_takes_a_position_bias() {
        let mut cfg = TrainConfig::new(HeadKind::AsenV1, BackboneKind::MobileNetV2);
        cfg.position_bias = true;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("position bias"), "{err}");
    }
}
