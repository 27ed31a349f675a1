//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

mod data;
mod device;
mod error;
pub mod eval;

pub use data::{
    generate_synthetic, Attribute, CsvOptions, Dataset, ImageRecord, Probe, ProbeLists, Split,
    SyntheticConfig, SyntheticDataset,
};
pub use device::parse_device;
pub use error::{ModelError, Result};
