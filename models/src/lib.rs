//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

pub mod card;
pub mod checkpoint;
mod convert;
mod device;
mod error;
pub mod head;

pub use card::{AttributeSpec, ModelCard, Provenance};
pub use checkpoint::{CheckedTensors, Checkpoint, CheckpointFormat, KeyReport};
pub use convert::{
    convert_checkpoint, inspect_checkpoint, CheckpointSummary, ConvertOptions, ModelDir,
};
pub use device::parse_device;
pub use error::{ModelError, Result};
pub use head::{Head, HeadConfig, HeadKind, HeadOutput};
