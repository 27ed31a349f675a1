//! The copy signature: an instance-level embedding that tells a copy of a
//! design from a look-alike.
//!
//! The attribute heads are category-level (two different black T-shirts match
//! on every attribute). The signature pools the whole backbone feature map
//! (global average, so a flip or a shifted crop barely moves it), centres it on
//! the training mean and projects it with a learned linear map to
//! [`CopySignatureSpec::dim`] components, L2-normalised. Two images are copies
//! when the cosine of their signatures reaches the calibrated
//! [`CopySignatureSpec::threshold`].
//!
//! Weights live in `copy_signature.safetensors` beside the model
//! (`mean` `[C]`, `projection` `[C, D]`); `asen-train` fits and calibrates
//! them on synthetic copies of train images.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// File name of the signature weights inside a model directory.
pub const SIGNATURE_FILE: &str = "copy_signature.safetensors";

/// Name under which the signature appears as a searchable attribute.
pub const IDENTITY_ATTRIBUTE: &str = "identity";

/// The card's description of a model's copy signature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopySignatureSpec {
    /// Components of a signature (128 f32 = 512 bytes per item).
    pub dim: usize,
    /// Cosine similarity at or above which two images are copies.
    pub threshold: f32,
    /// How the threshold was chosen (data, pairs, rule).
    #[serde(default)]
    pub calibration: String,
}

/// The signature network: global average pooling, centring, a linear map.
#[derive(Debug, Clone)]
pub struct CopySignature {
    mean: Tensor,
    projection: Tensor,
}

impl CopySignature {
    /// From a mean `[C]` and a projection `[C, D]`.
    pub fn new(mean: Tensor, projection: Tensor) -> Result<Self> {
        let (c, _) = projection.dims2()?;
        if mean.dims() != [c] {
            return Err(ModelError::InvalidArgument(format!(
                "copy signature: mean has shape {:?}, the projection expects [{c}]",
                mean.dims()
            )));
        }
        Ok(Self {
            mean: mean.to_dtype(DType::F32)?,
            projection: projection.to_dtype(DType::F32)?,
        })
    }

    /// Read `copy_signature.safetensors` and check it against the card.
    pub fn load(
        path: &Path,
        spec: &CopySignatureSpec,
        channels: usize,
        device: &Device,
    ) -> Result<Self> {
        let tensors =
            candle_core::safetensors::load(path, device).map_err(|e| ModelError::Card {
                path: path.to_path_buf(),
                reason: format!("cannot read the copy signature weights: {e}"),
            })?;
        let get = |name: &str| {
            tensors.get(name).cloned().ok_or_else(|| ModelError::Card {
                path: path.to_path_buf(),
                reason: format!("copy signature tensor {name:?} is missing"),
            })
        };
        let (mean, projection) = (get("mean")?, get("projection")?);
        if projection.dims() != [channels, spec.dim] {
            return Err(ModelError::Card {
                path: path.to_path_buf(),
                reason: format!(
                    "copy signature projection has shape {:?}, the card asks for [{channels}, {}]",
                    projection.dims(),
                    spec.dim
                ),
            });
        }
        Self::new(mean, projection)
    }

    /// Write the weights to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors = [
            ("mean".to_string(), self.mean.clone()),
            ("projection".to_string(), self.projection.clone()),
        ];
        candle_core::safetensors::save(&tensors.into_iter().collect(), path)
            .map_err(|e| ModelError::io(path, std::io::Error::other(e.to_string())))
    }

    /// Components of a signature.
    pub fn dim(&self) -> usize {
        self.projection.dims()[1]
    }

    /// Channels of the feature map it reads.
    pub fn channels(&self) -> usize {
        self.projection.dims()[0]
    }

    /// The training mean `[C]`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// The projection `[C, D]`.
    pub fn projection(&self) -> &Tensor {
        &self.projection
    }

    /// Globally pooled features `[B, C]` of feature maps `[B, C, H, W]`.
    pub fn pool(features: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = features.dims4()?;
        if features.device().is_cpu() && features.dtype() == DType::F32 && h * w > 0 {
            // One pass over the map in place: ingestion pools every batch, and
            // the two tensor means below copied it twice.
            let means = crate::backbone::with_cpu_f32(features, |x| {
                x.chunks_exact(h * w)
                    .map(|cell| cell.iter().sum::<f32>() / (h * w) as f32)
                    .collect::<Vec<f32>>()
            })?;
            return Ok(Tensor::from_vec(means, (b, c), features.device())?);
        }
        Ok(features
            .to_dtype(DType::F32)?
            .mean(D::Minus1)?
            .mean(D::Minus1)?)
    }

    /// Globally pooled features `[B, C]` of pixel rows `[B * N, C]` (`N`
    /// pixels per image).
    pub fn pool_rows(
        rows: &[f32],
        (b, n, c): (usize, usize, usize),
        device: &Device,
    ) -> Result<Tensor> {
        if rows.len() != b * n * c || n == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "copy signature: {} values are not {b} images of {n} pixels of {c} channels",
                rows.len()
            )));
        }
        let mut means = vec![0f32; b * c];
        for (image, mean) in rows.chunks_exact(n * c).zip(means.chunks_exact_mut(c)) {
            for pixel in image.chunks_exact(c) {
                mean.iter_mut().zip(pixel).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m /= n as f32);
        }
        Ok(Tensor::from_vec(means, (b, c), device)?)
    }

    /// L2-normalised signatures `[B, D]` of pooled features `[B, C]`.
    pub fn project(&self, pooled: &Tensor) -> Result<Tensor> {
        let centred = pooled.broadcast_sub(&self.mean)?;
        let y = centred.matmul(&self.projection)?;
        let norm = y
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        Ok(y.broadcast_div(&norm)?)
    }

    /// Signatures `[B, D]` of backbone feature maps `[B, C, H, W]`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        self.project(&Self::pool(features)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signature() -> CopySignature {
        let dev = Device::Cpu;
        let mean = Tensor::new(&[1f32, 0.0, 0.0], &dev).unwrap();
        let projection = Tensor::new(&[[1f32, 0.0], [0.0, 2.0], [0.0, 0.0]], &dev).unwrap();
        CopySignature::new(mean, projection).unwrap()
    }

    #[test]
    fn pools_centres_projects_and_normalises() {
        let dev = Device::Cpu;
        // One image, 3 channels, a 1x2 map: pooled [2, 1, 5].
        let x = Tensor::new(&[[[[1f32, 3.0]], [[0.0, 2.0]], [[5.0, 5.0]]]], &dev).unwrap();
        let y = signature().forward(&x).unwrap().to_vec2::<f32>().unwrap();
        // centred [1, 1, 5] -> projected [1, 2] -> normalised.
        let n = 5f32.sqrt();
        assert!(
            (y[0][0] - 1.0 / n).abs() < 1e-6 && (y[0][1] - 2.0 / n).abs() < 1e-6,
            "{y:?}"
        );
    }

    #[test]
    fn pooling_in_place_matches_the_tensor_means() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 7, 7), &dev).unwrap();
        let fast = CopySignature::pool(&x).unwrap().to_vec2::<f32>().unwrap();
        let slow = x.mean(D::Minus1).unwrap().mean(D::Minus1).unwrap();
        let slow = slow.to_vec2::<f32>().unwrap();
        for (f, s) in fast.iter().flatten().zip(slow.iter().flatten()) {
            assert!((f - s).abs() < 1e-6, "{f} against {s}");
        }
        // A strided view (not contiguous) pools the same.
        let t = x.transpose(2, 3).unwrap();
        let strided = CopySignature::pool(&t).unwrap().to_vec2::<f32>().unwrap();
        for (a, b) in strided.iter().flatten().zip(fast.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} against {b}");
        }
    }

    #[test]
    fn pooling_pixel_rows_matches_pooling_the_map() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 3, 4), &dev).unwrap();
        let rows: Vec<f32> = x
            .permute((0, 2, 3, 1))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = CopySignature::pool_rows(&rows, (2, 12, 5), &dev).unwrap();
        let want = CopySignature::pool(&x).unwrap();
        let (got, want) = (
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap(),
        );
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6, "{g} against {w}");
        }
        assert!(CopySignature::pool_rows(&rows, (2, 11, 5), &dev).is_err());
    }

    #[test]
    fn a_mean_of_the_wrong_size_is_refused() {
        let dev = Device::Cpu;
        let mean = Tensor::new(&[1f32, 0.0], &dev).unwrap();
        let projection = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(CopySignature::new(mean, projection).is_err());
    }

    #[test]
    fn saves_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNATURE_FILE);
        signature().save(&path).unwrap();
        let spec = CopySignatureSpec {
            dim: 2,
            threshold: 0.9,
            calibration: String::new(),
        };
        let back = CopySignature::load(&path, &spec, 3, &Device::Cpu).unwrap();
        assert_eq!(
            back.projection().to_vec2::<f32>().unwrap()[1],
            vec![0.0, 2.0]
        );
        let wrong = CopySignatureSpec { dim: 4, ..spec };
        assert!(CopySignature::load(&path, &wrong, 3, &Device::Cpu).is_err());
    }
}
