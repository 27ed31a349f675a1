//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

pub mod checkpoint;
mod device;
mod error;
pub mod head;

pub use checkpoint::{CheckedTensors, Checkpoint, CheckpointFormat, KeyReport};
pub use device::parse_device;
pub use error::{ModelError, Result};
pub use head::{Head, HeadConfig, HeadKind, HeadOutput};
