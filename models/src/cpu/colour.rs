//! The colour histogram of [`crate::colour`] as one CPU pass: the same
//! equations (block average, sRGB to CIELab, softmax over the palette, cell
//! average, square root, gain) evaluated per sample in registers instead of
//! as a chain of whole-tensor ops. One rayon task per image and sample row.

use rayon::prelude::*;

use crate::colour::{cell_range, COLOUR_BINS, GAIN, PALETTE, RGB_TO_XYZ_D65, SAMPLES, SIGMA};
use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

/// `[B, COLOUR_BINS, h, w]` histograms of the normalised NCHW batch `x`
/// (`b` images of `height` x `width`), as `ColourHistogram::forward`.
pub(crate) fn colour_histogram(
    x: &[f32],
    (b, height, width): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Vec<f32> {
    super::map::on_pool(|| histogram(x, (b, height, width), (h, w)))
}

fn histogram(
    x: &[f32],
    (b, height, width): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Vec<f32> {
    assert_eq!(x.len(), b * 3 * height * width);
    let (sh, sw) = ((SAMPLES * h).min(height), (SAMPLES * w).min(width));
    // Soft assignments of every sample: [B, sh, sw, K].
    let mut weights = vec![0f32; b * sh * sw * COLOUR_BINS];
    let rows_in = Cells::new(sh, height);
    let cols_in = Cells::new(sw, width);
    weights
        .par_chunks_exact_mut(sw * COLOUR_BINS)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, sy) = (row / sh, row % sh);
            let image = &x[img * 3 * height * width..(img + 1) * 3 * height * width];
            for (sx, bins) in dst.chunks_exact_mut(COLOUR_BINS).enumerate() {
                let rgb: [f32; 3] = std::array::from_fn(|ch| {
                    let plane = &image[ch * height * width..(ch + 1) * height * width];
                    let v = block_mean(plane, width, rows_in.range(sy), cols_in.range(sx));
                    (v * IMAGENET_STD[ch] + IMAGENET_MEAN[ch]).clamp(0.0, 1.0)
                });
                assign(lab(rgb), bins);
            }
        });
    // Cell averages of the assignments, square-rooted: [B, K, h, w].
    let rows_out = Cells::new(h, sh);
    let cols_out = Cells::new(w, sw);
    let mut out = vec![0f32; b * COLOUR_BINS * h * w];
    out.par_chunks_exact_mut(COLOUR_BINS * h * w)
        .enumerate()
        .for_each(|(img, dst)| {
            let samples = &weights[img * sh * sw * COLOUR_BINS..(img + 1) * sh * sw * COLOUR_BINS];
            let mut sums = vec![0f32; COLOUR_BINS];
            for cy in 0..h {
                for cx in 0..w {
                    sums.fill(0.0);
                    let (rows, cols) = (rows_out.range(cy), cols_out.range(cx));
                    let count = (rows.len() * cols.len()) as f32;
                    for sy in rows {
                        for sx in cols.clone() {
                            let s = &samples[(sy * sw + sx) * COLOUR_BINS..][..COLOUR_BINS];
                            sums.iter_mut().zip(s).for_each(|(a, &v)| *a += v);
                        }
                    }
                    for (k, &sum) in sums.iter().enumerate() {
                        dst[(k * h + cy) * w + cx] = (sum / count).sqrt() * GAIN;
                    }
                }
            }
        });
    out
}

/// The adaptive-pooling cells of `cells` over `size` ([`cell_range`]).
struct Cells {
    cells: usize,
    size: usize,
}

impl Cells {
    fn new(cells: usize, size: usize) -> Self {
        Self { cells, size }
    }

    fn range(&self, i: usize) -> std::ops::Range<usize> {
        cell_range(i, self.cells, self.size)
    }
}

/// Mean of `plane` (row length `width`) over `rows x cols`.
fn block_mean(
    plane: &[f32],
    width: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> f32 {
    let count = (rows.len() * cols.len()) as f32;
    let sum: f32 = rows
        .map(|r| {
            plane[r * width + cols.start..r * width + cols.end]
                .iter()
                .sum::<f32>()
        })
        .sum();
    sum / count
}

/// sRGB in `0..=1` (gamma 2.2) to CIELab (D65).
fn lab(rgb: [f32; 3]) -> [f32; 3] {
    let linear = rgb.map(|v| v.powf(2.2));
    let f: [f32; 3] = std::array::from_fn(|i| {
        let m = RGB_TO_XYZ_D65[i];
        (m[0] * linear[0] + m[1] * linear[1] + m[2] * linear[2])
            .max(1e-6)
            .powf(1.0 / 3.0)
    });
    [
        116.0 * f[1] - 16.0,
        500.0 * (f[0] - f[1]),
        200.0 * (f[1] - f[2]),
    ]
}

/// `bins = softmax_k(-|lab - palette_k|^2 / (2 sigma^2))`.
fn assign(lab: [f32; 3], bins: &mut [f32]) {
    let scale = -1.0 / (2.0 * SIGMA * SIGMA);
    let mut max = f32::NEG_INFINITY;
    for (b, p) in bins.iter_mut().zip(PALETTE.iter()) {
        let d2 = (lab[0] - p[0]).powi(2) + (lab[1] - p[1]).powi(2) + (lab[2] - p[2]).powi(2);
        *b = d2 * scale;
        max = max.max(*b);
    }
    // Separate loops, so the exponentials vectorise across the bins.
    bins.iter_mut()
        .for_each(|b| *b = exp_non_positive(*b - max));
    let sum: f32 = bins.iter().sum();
    bins.iter_mut().for_each(|b| *b /= sum);
}

/// `e^x` for `x <= 0`, within 3e-7 relative error (`e^-87` below -87):
/// `2^n * 2^f` with `n` the nearest integer to `x / ln 2` and `2^f` (`|f| <=
/// 1/2`) a degree-7 Taylor polynomial. Plain arithmetic, so a loop of them
/// vectorises where a loop of `f32::exp` calls does not; the histogram takes
/// 61 per sample, 3,136 samples per image.
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    // ln 2 in two parts: `n * LN_2_HI` is exact for |n| < 2^12, so `f`
    // keeps its precision however large `n` is (Cody and Waite).
    const LN_2_HI: f32 = 0.693_145_75;
    const LN_2_LO: f32 = 1.428_606_8e-6;
    // Adding and subtracting 1.5 * 2^23 rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let f = (x - n * LN_2_HI) - n * LN_2_LO;
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * f + c;
    }
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::ColourHistogram;

    #[test]
    fn the_exponential_matches_the_library_one() {
        for i in 0..=174_000 {
            let x = -(i as f32) * 5e-4;
            let (got, want) = (exp_non_positive(x), x.exp());
            assert!(
                (got - want).abs() <= 3e-7 * want + 1e-38,
                "e^{x}: {got} vs {want}"
            );
        }
        assert!(exp_non_positive(-1000.0) < 2e-38);
    }
    use candle_core::{Device, Tensor};

    /// Same numbers as the tensor-op implementation, for cells that divide
    /// the image evenly and for ones that do not.
    #[test]
    fn matches_the_tensor_ops() {
        let dev = Device::Cpu;
        let reference = ColourHistogram::new(&dev).unwrap();
        for (b, hh, ww, h, w) in [(2, 224, 224, 7, 7), (1, 225, 300, 8, 10), (1, 20, 13, 3, 2)] {
            let x = Tensor::randn(0f32, 1.0, (b, 3, hh, ww), &dev).unwrap();
            let want: Vec<f32> = reference
                .forward(&x, h, w)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let input: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let got = colour_histogram(&input, (b, hh, ww), (h, w));
            assert_eq!(got.len(), want.len());
            let max = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max < 1e-3, "{b}x{hh}x{ww} -> {h}x{w}: max diff {max}");
        }
    }
}
