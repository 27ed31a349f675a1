//! Backbone features for training and evaluation: dataset images read and
//! cropped for the networks (`images`), the frozen backbone's feature maps
//! of a whole dataset computed once (`extract`) into an on-disk, memory-mapped
//! [`FeatureCache`] (`cache`).

mod cache;
mod extract;
mod images;

pub use cache::{CacheKey, FeatureCache};
pub use extract::{dataset_features, without_images, DatasetFeatures, FeatureOptions};
pub use images::{load_crop, unusable_images, BadImage};
pub(crate) use images::{load_crops, read_image};
