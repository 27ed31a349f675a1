//! The colour histogram of [`crate::colour`] as one CPU pass: the same
//! equations (block average, sRGB to CIELab, softmax over the palette, cell
//! average, square root, gain) evaluated in registers instead of as a chain
//! of whole-tensor ops.
//!
//! One rayon task per image and sample row. A row's samples are the lanes:
//! every step is one loop over [`LANES`] samples, so the compiler turns it
//! into vector code of the kernel path's width (16 samples per AVX-512
//! register), the powers and exponentials included ([`super::math`]). Each
//! lane runs the same IEEE operations on every path, so the paths agree bit
//! for bit. The row then adds its samples' bins into the output cells it
//! touches, and the cells sum the rows.

use std::ops::Range;

use rayon::prelude::*;

use super::math::{exp, pow};
use super::net::Layout;
use super::KernelPath;
use crate::colour::{cell_range, COLOUR_BINS, GAIN, PALETTE, RGB_TO_XYZ_D65, SAMPLES, SIGMA};
use crate::preprocess::{IMAGENET_MEAN, IMAGENET_STD};

/// Samples handled together (a 224-pixel row has 56).
const LANES: usize = 64;

/// One value per lane.
type Lanes = [f32; LANES];

/// Histograms of the normalised NCHW batch `x` (`b` images of `height` x
/// `width`), as `ColourHistogram::forward`: `[B, COLOUR_BINS, h, w]` in
/// [`Layout::Nchw`], `[B, h, w, COLOUR_BINS]` (each cell's bins together)
/// in [`Layout::Nhwc`].
pub(crate) fn colour_histogram(
    layout: Layout,
    kernels: KernelPath,
    x: &[f32],
    (b, height, width): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Vec<f32> {
    super::map::on_pool(|| histogram(layout, kernels, x, (b, height, width), (h, w)))
}

/// Where the samples and cells of one image lie, the ranges computed once
/// (each is two integer divisions, which per sample and bin added up to most
/// of the histogram's time).
struct Grid {
    height: usize,
    width: usize,
    /// Output columns.
    w: usize,
    /// Sample rows and columns.
    sh: usize,
    sw: usize,
    /// Image columns averaged into each sample column.
    cols_in: Vec<Range<usize>>,
    /// Sample rows of each output row, and sample columns of each output column.
    rows_out: Vec<Range<usize>>,
    cols_out: Vec<Range<usize>>,
}

impl Grid {
    fn new((height, width): (usize, usize), (h, w): (usize, usize)) -> Self {
        let (sh, sw) = ((SAMPLES * h).min(height), (SAMPLES * w).min(width));
        let ranges = |cells: usize, size: usize| -> Vec<Range<usize>> {
            (0..cells).map(|i| cell_range(i, cells, size)).collect()
        };
        Self {
            height,
            width,
            w,
            sh,
            sw,
            cols_in: ranges(sw, width),
            rows_out: ranges(h, sh),
            cols_out: ranges(w, sw),
        }
    }

    /// Image rows averaged into sample row `sy`.
    fn rows_in(&self, sy: usize) -> Range<usize> {
        cell_range(sy, self.sh, self.height)
    }
}

fn histogram(
    layout: Layout,
    kernels: KernelPath,
    x: &[f32],
    (b, height, width): (usize, usize, usize),
    (h, w): (usize, usize),
) -> Vec<f32> {
    assert_eq!(x.len(), b * 3 * height * width);
    let grid = Grid::new((height, width), (h, w));
    let image_len = 3 * height * width;
    // Per sample row, its bins summed over each output column: [B, sh, K, w].
    let mut rows = vec![0f32; b * grid.sh * COLOUR_BINS * w];
    rows.par_chunks_exact_mut(COLOUR_BINS * w)
        .enumerate()
        .for_each(|(row, dst)| {
            let (img, sy) = (row / grid.sh, row % grid.sh);
            let image = &x[img * image_len..(img + 1) * image_len];
            sample_row(kernels, &grid, image, sy, dst);
        });
    // Cell averages, square-rooted: [B, K, h, w].
    let mut out = vec![0f32; b * COLOUR_BINS * h * w];
    out.par_chunks_exact_mut(COLOUR_BINS * h * w)
        .enumerate()
        .for_each(|(img, dst)| {
            let rows = &rows[img * grid.sh * COLOUR_BINS * w..][..grid.sh * COLOUR_BINS * w];
            for cy in 0..h {
                let sample_rows = grid.rows_out[cy].clone();
                for k in 0..COLOUR_BINS {
                    for cx in 0..w {
                        let count = (sample_rows.len() * grid.cols_out[cx].len()) as f32;
                        let sum: f32 = sample_rows
                            .clone()
                            .map(|sy| rows[(sy * COLOUR_BINS + k) * w + cx])
                            .sum();
                        let at = match layout {
                            Layout::Nchw => (k * h + cy) * w + cx,
                            Layout::Nhwc => (cy * w + cx) * COLOUR_BINS + k,
                        };
                        dst[at] = (sum / count).sqrt() * GAIN;
                    }
                }
            }
        });
    out
}

/// Sample row `sy` of one image (`[3, height, width]`): every sample's
/// palette weights, added into `dst` (`[K, w]`) per output column.
fn sample_row(kernels: KernelPath, grid: &Grid, image: &[f32], sy: usize, dst: &mut [f32]) {
    dst.fill(0.0);
    let plane = grid.height * grid.width;
    let rows = grid.rows_in(sy);
    // The block's image rows summed once per channel, so a sample adds up
    // only its columns.
    let mut column_sums = vec![0f32; 3 * grid.width];
    for (ch, sums) in column_sums.chunks_exact_mut(grid.width).enumerate() {
        for r in rows.clone() {
            let row = &image[ch * plane + r * grid.width..][..grid.width];
            sums.iter_mut().zip(row).for_each(|(s, &v)| *s += v);
        }
    }
    let mut rgb = [[0f32; LANES]; 3];
    let mut weights = [[0f32; LANES]; COLOUR_BINS];
    for start in (0..grid.sw).step_by(LANES) {
        let n = (grid.sw - start).min(LANES);
        // Block means in 0..=1; lanes past the row repeat its last sample.
        for (ch, (sums, rgb)) in column_sums
            .chunks_exact(grid.width)
            .zip(rgb.iter_mut())
            .enumerate()
        {
            for (lane, value) in rgb.iter_mut().enumerate() {
                let cols = grid.cols_in[start + lane.min(n - 1)].clone();
                let mean =
                    sums[cols.clone()].iter().sum::<f32>() / (rows.len() * cols.len()) as f32;
                *value = (mean * IMAGENET_STD[ch] + IMAGENET_MEAN[ch]).clamp(0.0, 1.0);
            }
        }
        assign(kernels, &rgb, &mut weights);
        for (cx, cols) in grid.cols_out.iter().enumerate() {
            let (lo, hi) = (cols.start.max(start), cols.end.min(start + n));
            if lo < hi {
                for (k, bins) in weights.iter().enumerate() {
                    dst[k * grid.w + cx] += bins[lo - start..hi - start].iter().sum::<f32>();
                }
            }
        }
    }
}

/// [`assign_lanes`] compiled for the kernel path's vector width.
fn assign(kernels: KernelPath, rgb: &[Lanes; 3], weights: &mut [Lanes; COLOUR_BINS]) {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only selected on a CPU with these features.
        KernelPath::Avx512 => unsafe { assign_avx512(rgb, weights) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2Fma => unsafe { assign_avx2(rgb, weights) },
        _ => assign_lanes(rgb, weights),
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn assign_avx512(rgb: &[Lanes; 3], weights: &mut [Lanes; COLOUR_BINS]) {
    assign_lanes(rgb, weights)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn assign_avx2(rgb: &[Lanes; 3], weights: &mut [Lanes; COLOUR_BINS]) {
    assign_lanes(rgb, weights)
}

/// `weights[k] = softmax_k(-|lab - palette_k|^2 / (2 sigma^2))` of every
/// lane's sRGB colour (`0..=1`, gamma 2.2) in CIELab (D65).
#[inline(always)]
fn assign_lanes(rgb: &[Lanes; 3], weights: &mut [Lanes; COLOUR_BINS]) {
    let linear: [Lanes; 3] = std::array::from_fn(|ch| rgb[ch].map(|v| pow(v.max(1e-30), 2.2)));
    let f: [Lanes; 3] = std::array::from_fn(|row| {
        let m = RGB_TO_XYZ_D65[row];
        std::array::from_fn(|i| {
            let xyz = m[0] * linear[0][i] + m[1] * linear[1][i] + m[2] * linear[2][i];
            pow(xyz.max(1e-6), 1.0 / 3.0)
        })
    });
    let lab: [Lanes; 3] = [
        f[1].map(|y| 116.0 * y - 16.0),
        std::array::from_fn(|i| 500.0 * (f[0][i] - f[1][i])),
        std::array::from_fn(|i| 200.0 * (f[1][i] - f[2][i])),
    ];
    let scale = -1.0 / (2.0 * SIGMA * SIGMA);
    let mut max = [f32::NEG_INFINITY; LANES];
    for (bins, p) in weights.iter_mut().zip(PALETTE.iter()) {
        for i in 0..LANES {
            let (dl, da, db) = (lab[0][i] - p[0], lab[1][i] - p[1], lab[2][i] - p[2]);
            let z = (dl * dl + da * da + db * db) * scale;
            bins[i] = z;
            max[i] = if z > max[i] { z } else { max[i] };
        }
    }
    let mut sum = [0f32; LANES];
    for bins in weights.iter_mut() {
        for i in 0..LANES {
            let e = exp(bins[i] - max[i]);
            bins[i] = e;
            sum[i] += e;
        }
    }
    let inverse = sum.map(|s| 1.0 / s);
    for bins in weights.iter_mut() {
        for i in 0..LANES {
            bins[i] *= inverse[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::colour::ColourHistogram;

    #[test]
    fn the_cells_last_layout_holds_the_same_values() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 48), &dev).unwrap();
        let input: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (h, w) = (4, 3);
        let planes = colour_histogram(
            Layout::Nchw,
            KernelPath::detect(),
            &input,
            (2, 64, 48),
            (h, w),
        );
        let cells = colour_histogram(
            Layout::Nhwc,
            KernelPath::detect(),
            &input,
            (2, 64, 48),
            (h, w),
        );
        for img in 0..2 {
            for k in 0..COLOUR_BINS {
                for cell in 0..h * w {
                    assert_eq!(
                        planes[(img * COLOUR_BINS + k) * h * w + cell],
                        cells[(img * h * w + cell) * COLOUR_BINS + k]
                    );
                }
            }
        }
    }

    #[test]
    fn every_kernel_path_gives_the_same_bits() {
        let dev = Device::Cpu;
        // 300 wide: a row of 80 samples spans two groups of lanes.
        let x = Tensor::randn(0f32, 1.0, (2, 3, 224, 300), &dev).unwrap();
        let input: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let reference = colour_histogram(
            Layout::Nchw,
            KernelPath::Portable,
            &input,
            (2, 224, 300),
            (7, 10),
        );
        for path in KernelPath::available() {
            let got = colour_histogram(Layout::Nchw, path, &input, (2, 224, 300), (7, 10));
            assert!(got == reference, "{path:?} differs from the portable path");
        }
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
            let got = colour_histogram(
                Layout::Nchw,
                KernelPath::detect(),
                &input,
                (b, hh, ww),
                (h, w),
            );
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
