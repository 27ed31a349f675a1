//! ASEN inference on candle: preprocessing, backbones, attribute-specific
//! heads, PyTorch checkpoint reading, model cards and the [`Embedder`].
//! Training, datasets and evaluation live in the `asen-train` crate, which
//! builds on this one (never the reverse).
//!
//! How the types cooperate: a model directory holds a [`ModelCard`] (what
//! the model is: backbone, head, attributes, thresholds, provenance) and
//! `model.safetensors`; [`ModelDir::load`] is the one reader of it.
//! [`Embedder::load`] builds on it: the [`Backbone`] named by the card (its
//! own tensors, or the shipped ImageNet weights found by [`locate_weights`]
//! in the directories the caller lists in [`EmbedderOptions`]), then the
//! [`Head`]. Images go in as bytes ([`preprocess_bytes`] under the limits of
//! [`PreprocessConfig`]) or decoded RGB; one L2-normalised vector (and the
//! attention map) per image and attribute comes out. [`cosine`] compares two.
//!
//! Official checkpoints: [`Checkpoint::load`] reads a `.pth` (legacy or zip,
//! optionally gzipped) or a safetensors file; its keys are normalised
//! (backbone under `backbonenet.`, head at the root) and [`CheckedTensors`]
//! builds models from them while collecting a [`KeyReport`].
//! [`convert_checkpoint`] turns one into a model directory.
//!
//! The library reads no environment variables: where models and weights
//! live is the caller's configuration.
//!
//! ```no_run
//! use asen_models::{Checkpoint, ModelError};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), ModelError> {
//! let ckpt = Checkpoint::load("asen_v1_fashionai.pth.gz")?;
//! let (head, cfg) = ckpt.load_head(&Device::Cpu)?; // every head key checked
//! let feat = Tensor::zeros((2, cfg.in_channels, 14, 14), candle_core::DType::F32, &Device::Cpu)?;
//! let attr = Tensor::new(&[0u32, 4], &Device::Cpu)?; // one attribute per image
//! let out = head.forward(&feat, &attr, false)?; // embedding [2, 1024], attention [2, 14, 14]
//! let per_attribute = head.forward_attributes(&feat, &[0, 4, 7])?; // shared conv1 branch
//! # let _ = (out, per_attribute);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod backbone;
mod card;
mod checkpoint;
pub mod colour;
mod convert;
mod cpu;
mod device;
mod embedder;
mod error;
mod fingerprint;
mod head;
mod layers;
mod model_dir;
mod preprocess;
mod signature;
mod vector;

pub use backbone::{
    locate_weights, Backbone, BackboneKind, EfficientNetLite0, Lite0Classifier, MobileNetV2,
    ResNet50Layer3,
};
pub use card::{
    AttributeSpec, BaseModel, ModelCard, Provenance, CARD_FILE, CARD_FORMAT_VERSION, WEIGHTS_FILE,
};
pub use checkpoint::{CheckedTensors, Checkpoint, CheckpointFormat, KeyReport, ShapeMismatch};
pub use convert::{
    convert_checkpoint, inspect_checkpoint, utc_date, CheckpointSummary, ConvertOptions,
};
pub use cpu::probe as engine_probe;
pub use cpu::KernelPath;
pub use device::parse_device;
pub use embedder::{AttentionMap, Embedder, EmbedderOptions, Embedding};
pub use error::{ModelError, Result};
pub use fingerprint::{fingerprint, FINGERPRINT_CHARS};
pub use head::{
    l2_normalize_rows, pointwise_conv, split_fine_map, AsenPpGlobal, AsenV1, AsenV2, Csn,
    GlobalHead, Head, HeadConfig, HeadKind, HeadOutput, Supervised,
};
pub use layers::{
    conv2d_taps, conv_bn_folded, depthwise_conv2d_taps, pad_same, same_padding, Activation, Padding,
};
pub use model_dir::ModelDir;
pub use preprocess::{
    decode_cost, decode_image, preprocess_bytes, resize_and_crop, to_tensor, DecodeCost,
    PreprocessConfig, IMAGENET_MEAN, IMAGENET_STD,
};
pub use signature::{CopySignature, CopySignatureSpec, IDENTITY_ATTRIBUTE, SIGNATURE_FILE};
pub use vector::{cosine, l2_normalize};

/// The largest absolute difference between two tensors of one shape (tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .expect("tensors of one shape")
}
