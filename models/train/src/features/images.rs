//! Reading dataset images for the networks: decode, resize and crop (one
//! or a batch in parallel, with optional flips), and finding the images that
//! cannot be used.

use std::path::{Path, PathBuf};

use asen_models::{decode_image, resize_and_crop, ModelError, PreprocessConfig, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::data::Dataset;

/// An image of the dataset that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadImage {
    /// Index in [`Dataset::images`].
    pub index: usize,
    /// The file, as resolved against the dataset root.
    pub path: PathBuf,
    /// Why (missing, unreadable, not an image, ...).
    pub reason: String,
}

/// Read, decode, resize and crop one dataset image.
pub fn load_crop(path: &Path, cfg: &PreprocessConfig) -> Result<RgbImage> {
    Ok(resize_and_crop(&read_image(path, cfg)?, cfg.size))
}

/// Read and decode an image file under `cfg`'s limits (errors name the file).
pub(crate) fn read_image(path: &Path, cfg: &PreprocessConfig) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    decode_image(&bytes, cfg).map_err(|e| e.with_source_name(path.display().to_string()))
}

/// Read, decode, resize and crop the dataset images `indices` in parallel,
/// flipping those whose `flips` entry is set.
pub(crate) fn load_crops(
    dataset: &Dataset,
    indices: &[usize],
    flips: &[bool],
    preprocess: &PreprocessConfig,
) -> Result<Vec<RgbImage>> {
    indices
        .par_iter()
        .zip(flips)
        .map(|(&i, &flip)| {
            let path = dataset.image_path(i).ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "image {i} is outside the dataset of {} images",
                    dataset.len()
                ))
            })?;
            let crop = load_crop(&path, preprocess)?;
            Ok(if flip {
                image::imageops::flip_horizontal(&crop)
            } else {
                crop
            })
        })
        .collect()
}

/// The images of `dataset` that cannot be read, decoded and cropped with
/// `preprocess` (checked in parallel, in dataset order): leave them out
/// with [`crate::without_images`] before fine-tuning, which decodes every
/// image it meets and stops at the first bad one.
pub fn unusable_images(dataset: &Dataset, preprocess: &PreprocessConfig) -> Vec<BadImage> {
    (0..dataset.len())
        .into_par_iter()
        .filter_map(|i| {
            let path = dataset.image_path(i)?;
            match load_crop(&path, preprocess) {
                Ok(_) => None,
                Err(e) => Some(BadImage {
                    index: i,
                    path,
                    reason: e.to_string(),
                }),
            }
        })
        .collect()
}
