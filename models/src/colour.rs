//! A fixed colour descriptor that travels with the backbone feature map.
//!
//! ImageNet features are trained to be invariant to colour, and the last
//! MobileNetV2 layer keeps so little of it that every head trained on it
//! retrieves `baseColour` barely above chance (docs/results.md). This module
//! adds what the frozen backbone lost: for every cell of the feature map, the
//! soft histogram of its pixels over a fixed palette of CIELab colours
//! ([`PALETTE`]). The histogram channels are appended to the backbone's
//! channels, so an attention head can look at the garment's cells (ASA) and
//! weigh the colour channels (ACA) like any other feature.
//!
//! Everything is tensor arithmetic on the normalised input batch, so it runs
//! wherever the backbone runs. Colour conversion: sRGB decoded with a 2.2
//! gamma, D65 XYZ, CIELab (cube root clamped at 1e-6). Pixels are first averaged in blocks (8x8 samples per cell), each sample is assigned
//! to the palette entries by a softmax over `-d^2 / (2 sigma^2)` (d the Lab
//! distance, sigma [`SIGMA`]), then averaged over the pixels of each cell
//! (adaptive average pooling, PyTorch's cell boundaries). Each cell's
//! histogram is square-rooted (the Hellinger map: a dot product of two such
//! cells is the Bhattacharyya coefficient of their histograms, so a linear
//! head compares colour distributions instead of being dominated by the
//! largest bin; untrained, on the test split's baseColour queries, it gave
//! 25.9 mAP against 23.7 for the raw histogram: `examples/colour_probe.rs`)
//! and scaled by [`GAIN`].

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

/// Palette size: the number of channels the histogram adds.
pub const COLOUR_BINS: usize = PALETTE.len();

/// Scale of the colour channels. Square-rooted histogram channels spread 15x
/// less than MobileNetV2's ReLU6 channels on Fashion Product Images
/// (per-channel standard deviation 0.053 against 0.78); at that scale a head
/// trained on both barely moved its colour weights in the first epochs
/// (measured with the raw histogram, 36x apart). Times 16 (a power of two)
/// brings them level.
pub const GAIN: f32 = 16.0;

/// Soft-assignment width in Lab units (adjacent chromatic entries are
/// 18-37 units apart).
pub const SIGMA: f32 = 12.0;

/// The palette, CIELab `(L, a, b)`: seven greys from black to white, twelve
/// hues (every 30 degrees) at chroma 35 for three lightness levels, twelve
/// saturated hues at chroma 70, and six pastels.
pub const PALETTE: [[f32; 3]; 61] = palette();

const fn palette() -> [[f32; 3]; 61] {
    // cos/sin of k * 30 degrees, k = 0..12.
    const COS: [f32; 12] = [
        1.0,
        0.866_025_4,
        0.5,
        0.0,
        -0.5,
        -0.866_025_4,
        -1.0,
        -0.866_025_4,
        -0.5,
        0.0,
        0.5,
        0.866_025_4,
    ];
    const SIN: [f32; 12] = [
        0.0,
        0.5,
        0.866_025_4,
        1.0,
        0.866_025_4,
        0.5,
        0.0,
        -0.5,
        -0.866_025_4,
        -1.0,
        -0.866_025_4,
        -0.5,
    ];
    let mut p = [[0f32; 3]; 61];
    let mut n = 0;
    let greys = [5.0, 20.0, 35.0, 50.0, 65.0, 80.0, 95.0];
    let mut i = 0;
    while i < greys.len() {
        p[n] = [greys[i], 0.0, 0.0];
        n += 1;
        i += 1;
    }
    let rings: [(f32, f32, usize); 5] = [
        (30.0, 35.0, 1),
        (50.0, 35.0, 1),
        (70.0, 35.0, 1),
        (55.0, 70.0, 1),
        (85.0, 20.0, 2),
    ];
    let mut r = 0;
    while r < rings.len() {
        let (l, chroma, step) = rings[r];
        let mut k = 0;
        while k < 12 {
            p[n] = [l, chroma * COS[k], chroma * SIN[k]];
            n += 1;
            k += step;
        }
        r += 1;
    }
    assert!(n == 61);
    p
}

/// sRGB (linear) to XYZ, D65, rows X, Y, Z; already divided by the white point.
pub(crate) const RGB_TO_XYZ_D65: [[f32; 3]; 3] = [
    [
        0.412_456_4 / 0.950_47,
        0.357_576_1 / 0.950_47,
        0.180_437_5 / 0.950_47,
    ],
    [0.212_672_9, 0.715_152_2, 0.072_175],
    [
        0.019_333_9 / 1.088_83,
        0.119_192 / 1.088_83,
        0.950_304_1 / 1.088_83,
    ],
];

/// The per-cell colour histogram: `[B, 3, H, W]` normalised images to
/// `[B, COLOUR_BINS, h, w]`.
#[derive(Debug, Clone)]
pub struct ColourHistogram {
    palette: Tensor,    // [K, 3]
    palette_sq: Tensor, // [1, K, 1]
    rgb_to_xyz: Tensor, // [3, 3]
    mean: Tensor,       // [1, 3, 1, 1]
    std: Tensor,        // [1, 3, 1, 1]
}

impl ColourHistogram {
    /// The palette and constants on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        let flat: Vec<f32> = PALETTE.iter().flatten().copied().collect();
        let palette = Tensor::from_vec(flat, (COLOUR_BINS, 3), device)?;
        let palette_sq = palette
            .sqr()?
            .sum_keepdim(1)?
            .reshape((1, COLOUR_BINS, 1))?;
        let m: Vec<f32> = RGB_TO_XYZ_D65.iter().flatten().copied().collect();
        Ok(Self {
            palette,
            palette_sq,
            rgb_to_xyz: Tensor::from_vec(m, (3, 3), device)?,
            mean: Tensor::from_slice(&IMAGENET_MEAN, (1, 3, 1, 1), device)?,
            std: Tensor::from_slice(&IMAGENET_STD, (1, 3, 1, 1), device)?,
        })
    }

    /// Channels added: [`COLOUR_BINS`].
    pub fn bins(&self) -> usize {
        COLOUR_BINS
    }

    /// Histograms of the `h x w` cells of a normalised batch `x` `[B, 3, H, W]`
    /// (H >= h, W >= w): `[B, COLOUR_BINS, h, w]`, `GAIN * sqrt(histogram)`
    /// per cell (so each cell's squares sum to `GAIN^2`).
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, c, height, width) = x.dims4()?;
        if c != 3 || h == 0 || w == 0 || h > height || w > width {
            return Err(ModelError::InvalidArgument(format!(
                "colour histogram of a {:?} batch into {h}x{w} cells",
                x.dims()
            )));
        }
        // Average blocks of pixels first (a 56x56 grid for 7x7 cells at 224):
        // the histogram of a cell barely changes and the work drops 16x.
        let (sh, sw) = ((SAMPLES * h).min(height), (SAMPLES * w).min(width));
        let small = adaptive_pool(&x.to_dtype(DType::F32)?, sh, sw)?;
        let weights = self.assign(&small)?.reshape((b, COLOUR_BINS, sh, sw))?;
        Ok((adaptive_pool(&weights, h, w)?.sqrt()? * f64::from(GAIN))?)
    }

    /// Soft palette assignment of every pixel: `[B, K, H*W]`.
    fn assign(&self, x: &Tensor) -> Result<Tensor> {
        let rgb = x
            .broadcast_mul(&self.std)?
            .broadcast_add(&self.mean)?
            .clamp(0f32, 1f32)?
            .flatten_from(2)?; // [B, 3, N]
        let linear = rgb.powf(2.2)?;
        let xyz = self.rgb_to_xyz.broadcast_matmul(&linear)?; // [B, 3, N]
        let f = xyz.clamp(1e-6f32, f32::INFINITY)?.powf(1.0 / 3.0)?;
        let (fx, fy, fz) = (f.narrow(1, 0, 1)?, f.narrow(1, 1, 1)?, f.narrow(1, 2, 1)?);
        let l = fy.affine(116.0, -16.0)?;
        let a = ((&fx - &fy)? * 500.0)?;
        let bb = ((&fy - &fz)? * 200.0)?;
        let lab = Tensor::cat(&[&l, &a, &bb], 1)?; // [B, 3, N]
        let cross = self.palette.broadcast_matmul(&lab)?; // [B, K, N]
        let d2 = cross
            .affine(-2.0, 0.0)?
            .broadcast_add(&lab.sqr()?.sum_keepdim(1)?)?
            .broadcast_add(&self.palette_sq)?;
        let logits = (d2 * (-1.0 / (2.0 * f64::from(SIGMA * SIGMA))))?;
        Ok(candle_nn::ops::softmax(&logits, 1)?)
    }
}

/// Pixels sampled per cell side before the palette assignment.
pub(crate) const SAMPLES: usize = 8;

/// Adaptive average pooling of `[B, C, H, W]` to `[B, C, h, w]`.
fn adaptive_pool(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, c, height, width) = x.dims4()?;
    if (h, w) == (height, width) {
        return Ok(x.clone());
    }
    let rows = pooling_matrix(h, height, x.device())?; // [h, H]
    let cols = pooling_matrix(w, width, x.device())?.t()?; // [W, w]
    let flat = x.reshape((b * c, height, width))?;
    let pooled = rows.broadcast_matmul(&flat.broadcast_matmul(&cols)?)?;
    Ok(pooled.reshape((b, c, h, w))?)
}

/// `[cells, size]`: row `i` averages the positions of adaptive-pooling cell
/// `i` (PyTorch boundaries: `floor(i * size / cells)` to `ceil((i + 1) * size / cells)`).
/// PyTorch's adaptive-pooling cells: cell `i` of `cells` over `size`
/// covers `i * size / cells .. ceil((i + 1) * size / cells)`.
pub(crate) fn cell_range(i: usize, cells: usize, size: usize) -> std::ops::Range<usize> {
    i * size / cells..((i + 1) * size).div_ceil(cells)
}

fn pooling_matrix(cells: usize, size: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; cells * size];
    for i in 0..cells {
        let range = cell_range(i, cells, size);
        let weight = 1.0 / range.len() as f32;
        for j in range {
            m[i * size + j] = weight;
        }
    }
    Ok(Tensor::from_vec(m, (cells, size), device)?)
}

/// Argmax palette entry of each pixel, for tests and explanations: `[B, N]`.
#[cfg(test)]
fn nearest(h: &ColourHistogram, x: &Tensor) -> Result<Vec<Vec<u32>>> {
    Ok(h.assign(x)?
        .argmax(candle_core::D::Minus2)?
        .to_vec2::<u32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::to_tensor;
    use image::{Rgb, RgbImage};

    fn image(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Tensor {
        let im = RgbImage::from_fn(w, h, |x, y| Rgb(f(x, y)));
        to_tensor(&[im], &Device::Cpu).unwrap()
    }

    fn lab_index(target: [f32; 3]) -> usize {
        PALETTE
            .iter()
            .enumerate()
            .min_by(|(_, p), (_, q)| {
                let d = |p: &[f32; 3]| {
                    p.iter()
                        .zip(target)
                        .map(|(a, b)| (a - b).powi(2))
                        .sum::<f32>()
                };
                d(p).total_cmp(&d(q))
            })
            .unwrap()
            .0
    }

    #[test]
    fn cells_sum_to_one_for_any_grid() {
        let h = ColourHistogram::new(&Device::Cpu).unwrap();
        let x = image(37, 23, |x, y| [(x * 7) as u8, (y * 11) as u8, 128]);
        for (ch, cw) in [(7, 7), (3, 5), (1, 1), (23, 37)] {
            let out = h.forward(&x, ch, cw).unwrap();
            assert_eq!(out.dims(), [1, COLOUR_BINS, ch, cw]);
            let sums = out
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert!(
                sums.iter().all(|s| (s / (GAIN * GAIN) - 1.0).abs() < 1e-4),
                "{sums:?}"
            );
        }
        assert!(h.forward(&x, 24, 5).is_err());
    }

    #[test]
    fn known_colours_land_in_their_bins() {
        let h = ColourHistogram::new(&Device::Cpu).unwrap();
        // white, black, mid grey, pure red (Lab 53, 80, 67), navy (Lab 13, 47, -64).
        let colours: [([u8; 3], [f32; 3]); 5] = [
            ([255, 255, 255], [100.0, 0.0, 0.0]),
            ([0, 0, 0], [0.0, 0.0, 0.0]),
            ([119, 119, 119], [50.0, 0.0, 0.0]),
            ([255, 0, 0], [53.2, 80.1, 67.2]),
            ([0, 0, 128], [13.0, 47.5, -64.7]),
        ];
        for (rgb, lab) in colours {
            let x = image(4, 4, |_, _| rgb);
            let got = nearest(&h, &x).unwrap()[0][0] as usize;
            assert_eq!(got, lab_index(lab), "{rgb:?} -> {:?}", PALETTE[got]);
        }
    }

    #[test]
    fn a_cell_histogram_follows_the_pixels_in_it() {
        let h = ColourHistogram::new(&Device::Cpu).unwrap();
        // Left half red, right half white: 2x1 cells separate them, 1x1 mixes them.
        let x = image(
            8,
            4,
            |x, _| if x < 4 { [255, 0, 0] } else { [255, 255, 255] },
        );
        let two = h.forward(&x, 1, 2).unwrap().squeeze(0).unwrap();
        let red = lab_index([53.2, 80.1, 67.2]);
        let white = lab_index([100.0, 0.0, 0.0]);
        let v = |t: &Tensor, k: usize, j: usize| {
            t.get(k)
                .unwrap()
                .get(0)
                .unwrap()
                .get(j)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(v(&two, red, 0) > 0.7 * GAIN && v(&two, red, 1) < 0.1 * GAIN);
        // White sits 5 Lab units from the lightest grey and 20-25 from the
        // light grey and the pastels, so its mass is spread but peaks there.
        let right: Vec<f32> = (0..COLOUR_BINS).map(|k| v(&two, k, 1)).collect();
        let top = (0..COLOUR_BINS).max_by(|&a, &b| right[a].total_cmp(&right[b]));
        assert_eq!(top, Some(white), "{right:?}");
        assert!(v(&two, white, 1) > 0.5 * GAIN && v(&two, white, 0) < 0.1 * GAIN);
        // One cell over both halves: its histogram is the mean of theirs.
        let one = h.forward(&x, 1, 1).unwrap().squeeze(0).unwrap();
        let hist = |x: f32| (x / GAIN).powi(2);
        let mean = (hist(v(&two, red, 0)) + hist(v(&two, red, 1))) / 2.0;
        assert!((hist(v(&one, red, 0)) - mean).abs() < 1e-5);
    }
}
