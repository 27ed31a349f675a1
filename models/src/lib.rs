//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

mod device;
mod error;

pub use device::parse_device;
pub use error::{ModelError, Result};
