//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

mod backbone;
pub mod checkpoint;
mod device;
mod error;
pub mod head;
mod layers;
mod preprocess;

pub use backbone::{
    locate_weights, Backbone, BackboneKind, EfficientNetLite0, Lite0Classifier, MobileNetV2,
    ResNet50Layer3,
};
pub use checkpoint::{CheckedTensors, Checkpoint, CheckpointFormat, KeyReport};
pub use device::parse_device;
pub use error::{ModelError, Result};
pub use head::HeadKind;
pub use layers::{conv_bn_folded, pad_same, same_padding};
pub use preprocess::{
    decode_image, preprocess_bytes, resize_and_crop, to_tensor, PreprocessConfig, IMAGENET_MEAN,
    IMAGENET_STD,
};
