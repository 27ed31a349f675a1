//! Backbone feature maps of a whole dataset, computed once into a
//! [`FeatureCache`]: the CPU training mode (frozen backbone) and the
//! evaluation of a frozen-backbone model both read them from there.
//!
//! Images that cannot be read or decoded do not stop the build: their entry
//! is filled with zeros and they are listed in a sidecar file
//! (`<cache>.bad.json`) so that every later run knows them too and leaves
//! them out (see [`without_images`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use rayon::prelude::*;

use asen_models::{to_tensor, Backbone, BackboneKind, ModelError, PreprocessConfig, Result};

use super::cache::{CacheKey, FeatureCache};
use super::images::{load_crop, BadImage};
use crate::data::{Dataset, ImageRecord, Probe, ProbeLists};

/// What to compute features with.
#[derive(Debug, Clone)]
pub struct FeatureOptions {
    /// The frozen backbone.
    pub backbone: BackboneKind,
    /// Append the per-cell colour histogram ([`asen_models::colour`]) to its maps.
    pub colour_histogram: bool,
    /// Put the maps on the backbone's fine grid ([`asen_models::Backbone::with_fine_map`]).
    pub fine_map: bool,
    /// Directories searched, in order, for its shipped ImageNet weights
    /// ([`asen_models::locate_weights`]).
    pub weights_dirs: Vec<PathBuf>,
    /// Square input side (224).
    pub input_size: u32,
    /// Images per backbone forward.
    pub batch_size: usize,
    /// Where the backbone runs.
    pub device: Device,
}

impl FeatureOptions {
    /// Options for `backbone` at 224 pixels, batches of 32, on the CPU.
    pub fn new(backbone: BackboneKind) -> Self {
        Self {
            backbone,
            colour_histogram: false,
            fine_map: false,
            weights_dirs: Vec::new(),
            input_size: 224,
            batch_size: 32,
            device: Device::Cpu,
        }
    }

    /// The cache key of `dataset` under these options.
    pub fn cache_key(&self, dataset: &Dataset) -> String {
        CacheKey {
            backbone: format!(
                "{}{}{}@imagenet",
                self.backbone.name(),
                if self.fine_map { "+fine" } else { "" },
                if self.colour_histogram {
                    format!(
                        "+colour{}sqrtx{}",
                        asen_models::colour::COLOUR_BINS,
                        asen_models::colour::GAIN
                    )
                } else {
                    String::new()
                }
            ),
            input_size: self.input_size,
            dataset: dataset.images_fingerprint(),
        }
        .to_string()
    }
}

/// A built feature cache and the images left out of it.
#[derive(Debug)]
pub struct DatasetFeatures {
    /// One `(C, H, W)` map per dataset image (zeros for bad images).
    pub cache: FeatureCache,
    /// Images that could not be read, in index order.
    pub bad_images: Vec<BadImage>,
}

fn sidecar_path(cache_path: &Path) -> PathBuf {
    let mut name = cache_path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".bad.json");
    cache_path.with_file_name(name)
}

fn read_sidecar(path: &Path) -> Result<Vec<BadImage>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| ModelError::FeatureCache {
            path: path.to_path_buf(),
            reason: format!("invalid bad-image list: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ModelError::io(path, e)),
    }
}

fn write_sidecar(path: &Path, bad: &[BadImage]) -> Result<()> {
    let text = serde_json::to_string_pretty(bad).map_err(|e| ModelError::FeatureCache {
        path: path.to_path_buf(),
        reason: format!("cannot serialise the bad-image list: {e}"),
    })?;
    std::fs::write(path, text).map_err(|e| ModelError::io(path, e))
}

/// Compute (or reopen) the feature cache of every image of `dataset` at
/// `cache_path`. Decoding runs in parallel; the backbone runs in batches of
/// `opts.batch_size`. An interrupted build resumes. `progress(done, total)`
/// follows each batch. Unusable images get zero features and are returned
/// (and remembered beside the cache); the build fails only when every image
/// of a batch of the first build is bad, or on I/O errors of the cache.
pub fn dataset_features(
    dataset: &Dataset,
    cache_path: &Path,
    opts: &FeatureOptions,
    progress: &dyn Fn(usize, usize),
) -> Result<DatasetFeatures> {
    let key = opts.cache_key(dataset);
    let sidecar = sidecar_path(cache_path);
    if let Ok(cache) = FeatureCache::open(cache_path, &key) {
        if cache.len() == dataset.len() {
            let bad_images = read_sidecar(&sidecar)?;
            progress(cache.len(), cache.len());
            return Ok(DatasetFeatures { cache, bad_images });
        }
    }
    let weights = opts.backbone.imagenet_weights_path(&opts.weights_dirs)?;
    let backbone = Backbone::load(opts.backbone, &weights, &opts.device)?;
    let backbone = if opts.colour_histogram {
        backbone.with_colour_histogram(&opts.device)?
    } else {
        backbone
    };
    let backbone = if opts.fine_map {
        backbone.with_fine_map()?
    } else {
        backbone
    };
    let cfg = PreprocessConfig {
        size: opts.input_size as usize,
        ..PreprocessConfig::default()
    };
    let size = opts.input_size;
    let bad = Mutex::new(read_sidecar(&sidecar)?);
    let compute = |indices: &[usize]| -> Result<Tensor> {
        let crops: Vec<(usize, Result<RgbImage>)> = indices
            .par_iter()
            .map(|&i| {
                let path = dataset.image_path(i).unwrap_or_default();
                (i, load_crop(&path, &cfg))
            })
            .collect();
        let mut images = Vec::with_capacity(crops.len());
        let mut new_bad = Vec::new();
        for (i, crop) in crops {
            match crop {
                Ok(im) => images.push(im),
                Err(e) => {
                    new_bad.push(BadImage {
                        index: i,
                        path: dataset.image_path(i).unwrap_or_default(),
                        reason: e.to_string(),
                    });
                    images.push(RgbImage::new(size, size));
                }
            }
        }
        let x = to_tensor(&images, &opts.device)?;
        let mut feats = backbone.forward(&x)?;
        if !new_bad.is_empty() {
            // Zero the bad entries so nothing of the black placeholder leaks.
            let keep: Vec<f32> = indices
                .iter()
                .map(|i| {
                    if new_bad.iter().any(|b| b.index == *i) {
                        0.0
                    } else {
                        1.0
                    }
                })
                .collect();
            let keep = Tensor::from_vec(keep, (indices.len(), 1, 1, 1), feats.device())?;
            feats = feats.broadcast_mul(&keep.to_dtype(feats.dtype())?)?;
            let mut all = bad.lock().unwrap_or_else(|p| p.into_inner());
            all.retain(|b| !indices.contains(&b.index));
            all.extend(new_bad);
            all.sort_by_key(|b| b.index);
            write_sidecar(&sidecar, &all)?;
        }
        Ok(feats.to_dtype(DType::F32)?)
    };
    if dataset.is_empty() {
        return Err(ModelError::InvalidArgument(
            "the dataset has no images to compute features of".into(),
        ));
    }
    // A fresh build must not inherit a stale bad list.
    if FeatureCache::open(cache_path, &key).is_err() && !partial_build_of(cache_path, &key) {
        let mut all = bad.lock().unwrap_or_else(|p| p.into_inner());
        all.clear();
        if sidecar.exists() {
            std::fs::remove_file(&sidecar).map_err(|e| ModelError::io(&sidecar, e))?;
        }
    }
    let cache = FeatureCache::build(
        cache_path,
        &key,
        dataset.len(),
        opts.batch_size,
        compute,
        progress,
    )?;
    let bad_images = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(DatasetFeatures { cache, bad_images })
}

/// Whether `path` holds an interrupted build for `key` (the cache resumes it).
fn partial_build_of(path: &Path, key: &str) -> bool {
    match FeatureCache::open(path, key) {
        Err(ModelError::FeatureCache { reason, .. }) => reason.starts_with("incomplete"),
        _ => false,
    }
}

/// `dataset` with the images in `bad` made unusable: their labels become
/// unknown (never sampled) and their valid/test probes are dropped. Indices
/// of the other images are unchanged, so a feature cache still lines up.
pub fn without_images(dataset: &Dataset, bad: &BTreeSet<usize>) -> Result<Dataset> {
    if bad.is_empty() {
        return Ok(dataset.clone());
    }
    let images: Vec<ImageRecord> = dataset
        .images()
        .iter()
        .enumerate()
        .map(|(i, im)| {
            let mut im = im.clone();
            if bad.contains(&i) {
                im.labels.iter_mut().for_each(|l| *l = None);
            }
            im
        })
        .collect();
    let keep = |lists: &ProbeLists| {
        let f = |ps: &[Probe]| {
            ps.iter()
                .filter(|p| !bad.contains(&p.image))
                .copied()
                .collect()
        };
        ProbeLists {
            queries: f(&lists.queries),
            candidates: f(&lists.candidates),
        }
    };
    Dataset::from_parts(
        dataset.root().to_path_buf(),
        dataset.attributes().to_vec(),
        images,
        keep(dataset.probes(crate::data::Split::Valid)),
        keep(dataset.probes(crate::data::Split::Test)),
        dataset.root(),
    )
}
