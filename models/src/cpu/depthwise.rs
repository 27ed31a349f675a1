//! Depthwise convolution on NHWC maps: every output pixel is a sum over the
//! `k * k` taps of an input pixel's channel vector times the tap's weight
//! vector, so the inner loop runs over contiguous channels and vectorises.
//! One rayon task per output row; bias and activation are fused.

use std::ops::Range;

use super::kernels::KernelPath;
#[cfg(test)]
use super::map::Exec;
use super::map::MapShape;
use crate::layers::{Activation, Padding};

/// A depthwise `k`x`k` convolution with folded BatchNorm.
#[derive(Debug, Clone)]
pub(crate) struct Depthwise {
    channels: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    /// `[k * k][C]`: tap-major, so each tap's weights are one channel vector.
    weight: Vec<f32>,
    bias: Vec<f32>,
    act: Activation,
}

impl Depthwise {
    /// From a `[C, 1, k, k]` weight (PyTorch order) and its bias.
    pub(crate) fn new(
        weight_ckk: &[f32],
        bias: Vec<f32>,
        kernel: usize,
        stride: usize,
        padding: Padding,
        act: Activation,
    ) -> Self {
        let channels = bias.len();
        assert_eq!(weight_ckk.len(), channels * kernel * kernel);
        let mut weight = vec![0f32; channels * kernel * kernel];
        for c in 0..channels {
            for t in 0..kernel * kernel {
                weight[t * channels + c] = weight_ckk[c * kernel * kernel + t];
            }
        }
        Self {
            channels,
            kernel,
            stride,
            padding,
            weight,
            bias,
            act,
        }
    }

    /// The output shape for an input of shape `x`.
    pub(crate) fn out_shape(&self, x: MapShape) -> MapShape {
        let (oh, _) = self.geometry(x.h);
        let (ow, _) = self.geometry(x.w);
        MapShape {
            b: x.b,
            h: oh,
            w: ow,
            c: self.channels,
        }
    }

    /// Output length and leading padding along an axis of `size`.
    fn geometry(&self, size: usize) -> (usize, usize) {
        let (out, (before, _)) = self.padding.output(size, self.kernel, self.stride);
        (out, before)
    }

    /// `out = act(depthwise(x) + bias)`; `x` is NHWC of shape `shape`. The
    /// networks run it fused ([`Self::forward_rows`]); this whole-map form is
    /// the tests' reference.
    #[cfg(test)]
    pub(crate) fn forward(
        &self,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        shape: MapShape,
        out: &mut [f32],
    ) {
        assert_eq!(shape.c, self.channels);
        let o = self.out_shape(shape);
        assert_eq!(x.len(), shape.len());
        assert_eq!(out.len(), o.len());
        let image_len = shape.h * shape.w * shape.c;
        exec.chunks(out, o.w * o.c, |row, dst| {
            let (img, oy) = (row / o.h, row % o.h);
            let image = &x[img * image_len..][..image_len];
            self.row(path, image, 0, shape, oy, dst);
        });
    }

    /// The input rows (of an image `shape.h` rows high) that output rows
    /// `oy` read, clamped to the image.
    pub(crate) fn input_rows(&self, shape: MapShape, oy: Range<usize>) -> Range<usize> {
        let (_, pt) = self.geometry(shape.h);
        let first = (oy.start * self.stride).saturating_sub(pt);
        let last = ((oy.end.max(1) - 1) * self.stride + self.kernel).saturating_sub(pt);
        first.min(shape.h)..last.min(shape.h)
    }

    /// Input rows that `n` consecutive output rows read, padding included.
    pub(crate) fn rows_read(&self, n: usize) -> usize {
        (n.max(1) - 1) * self.stride + self.kernel
    }

    /// Output rows `oy` of one image (`shape.b == 1`) into `out` (`oy.len()`
    /// rows), on the calling thread, from `rows`: the image's rows from
    /// `first_row` on, which must include [`Self::input_rows`] of `oy`.
    pub(crate) fn forward_rows(
        &self,
        path: KernelPath,
        (rows, first_row): (&[f32], usize),
        shape: MapShape,
        oy: Range<usize>,
        out: &mut [f32],
    ) {
        assert_eq!(shape.c, self.channels);
        let o = self.out_shape(shape);
        let row_len = shape.w * shape.c;
        let need = self.input_rows(shape, oy.clone());
        assert!(oy.end <= o.h && out.len() == oy.len() * o.w * o.c);
        assert!(
            need.is_empty()
                || (first_row <= need.start
                    && first_row * row_len + rows.len() >= need.end * row_len),
            "depthwise rows: {need:?} not inside the {} rows from {first_row}",
            rows.len() / row_len
        );
        for (oy, dst) in oy.zip(out.chunks_exact_mut(o.w * o.c)) {
            self.row(path, rows, first_row, shape, oy, dst);
        }
    }

    /// Output row `oy` into `dst`, from `rows` (the image's rows from
    /// `first_row` on).
    fn row(
        &self,
        path: KernelPath,
        rows: &[f32],
        first_row: usize,
        shape: MapShape,
        oy: usize,
        dst: &mut [f32],
    ) {
        let (_, pt) = self.geometry(shape.h);
        let (_, pl) = self.geometry(shape.w);
        let job = RowJob {
            dw: self,
            rows,
            first_row,
            shape,
            oy,
            pad: (pt, pl),
        };
        let c = self.channels;
        match path {
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx512 => {
                // SAFETY: this path is only selected when the CPU has
                // AVX-512F, AVX2 and FMA.
                let done = unsafe { row_avx512(&job, dst, 0) };
                let done = unsafe { row_avx2(&job, dst, done) };
                job.run::<true>(dst, done..c);
            }
            #[cfg(target_arch = "x86_64")]
            KernelPath::Avx2Fma => {
                // SAFETY: this path is only selected when the CPU
                // has AVX2 and FMA.
                let done = unsafe { row_avx2(&job, dst, 0) };
                job.run::<true>(dst, done..c);
            }
            _ => job.run::<false>(dst, 0..c),
        }
    }
}

/// One output row of a depthwise convolution.
struct RowJob<'a> {
    dw: &'a Depthwise,
    /// The image's rows from `first_row` on.
    rows: &'a [f32],
    first_row: usize,
    shape: MapShape,
    oy: usize,
    pad: (usize, usize),
}

impl RowJob<'_> {
    /// The row's outputs for `channels` (the others are left as they are).
    #[inline(always)]
    fn run<const FMA: bool>(&self, dst: &mut [f32], channels: std::ops::Range<usize>) {
        if channels.is_empty() {
            return;
        }
        let dw = self.dw;
        let (k, s, c) = (dw.kernel, dw.stride, dw.channels);
        let (h, w) = (self.shape.h as isize, self.shape.w as isize);
        for (ox, pixel) in dst.chunks_exact_mut(c).enumerate() {
            let acc = &mut pixel[channels.clone()];
            acc.copy_from_slice(&dw.bias[channels.clone()]);
            for ky in 0..k {
                let iy = (self.oy * s + ky) as isize - self.pad.0 as isize;
                if iy < 0 || iy >= h {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s + kx) as isize - self.pad.1 as isize;
                    if ix < 0 || ix >= w {
                        continue;
                    }
                    let at = ((iy as usize - self.first_row) * w as usize + ix as usize) * c;
                    let input = &self.rows[at..at + c][channels.clone()];
                    let weight =
                        &dw.weight[(ky * k + kx) * c..(ky * k + kx + 1) * c][channels.clone()];
                    for ((a, &x), &wt) in acc.iter_mut().zip(input).zip(weight) {
                        *a = if FMA { x.mul_add(wt, *a) } else { *a + x * wt };
                    }
                }
            }
            match dw.act {
                Activation::None => {}
                Activation::Relu => acc.iter_mut().for_each(|v| *v = v.max(0.0)),
                Activation::Relu6 => acc.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
            }
        }
    }
}

/// Defines an `unsafe fn $name(job, dst, first) -> usize` that computes one
/// output row for the channels from `first` on, one block of `$lanes`
/// channels at a time, and returns where it stopped (the first channel of an
/// incomplete block). The block's bias and (for 3x3) its 9 tap weights stay
/// in registers while the row's pixels pass. Pixels whose taps all lie inside
/// the image read them at fixed offsets from one base pointer; the others
/// gather their tap pointers first, with taps in the padding pointing at a
/// zero vector. Kernels larger than 5x5 are left to the portable row.
///
/// One macro for the AVX2 and AVX-512 rows: they differ only in the
/// register width and the intrinsics' names.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_row {
    (
        $(#[$doc:meta])*
        $name:ident, $features:literal, $lanes:literal,
        load $load:ident, store $store:ident, set1 $set1:ident, zero $zero:ident,
        fmadd $fmadd:ident, min $min:ident, max $max:ident
    ) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU must support the function's target features.
        #[target_feature(enable = $features)]
        unsafe fn $name(job: &RowJob, dst: &mut [f32], first: usize) -> usize {
            use std::arch::x86_64::*;
            const LANES: usize = $lanes;
            let dw = job.dw;
            let (k, s, c) = (dw.kernel, dw.stride, dw.channels);
            let taps = k * k;
            if taps > MAX_TAPS {
                return first;
            }
            let zeros = [0f32; LANES];
            let (h, w) = (job.shape.h as isize, job.shape.w as isize);
            let (pt, pl) = (job.pad.0 as isize, job.pad.1 as isize);
            let ow = dst.len() / c;
            let top = (job.oy * s) as isize - pt;
            let rows_inside = top >= 0 && top + k as isize <= h;
            // Output columns whose k taps are all inside the row.
            let interior = if rows_inside && w + pl >= k as isize {
                let first = (pl as usize).div_ceil(s);
                let last = (((w + pl - k as isize) as usize) / s + 1).min(ow);
                first..last.max(first)
            } else {
                0..0
            };
            let (lo, hi) = dw.act.bounds();
            let (vlo, vhi) = ($set1(lo), $set1(hi));
            // Row `first_row` of the image is where `rows` starts.
            let image = job.rows.as_ptr();
            let top_in = top - job.first_row as isize;
            let out = dst.as_mut_ptr();
            let mut inputs = [zeros.as_ptr(); MAX_TAPS];
            let mut ch = first;
            while ch + LANES <= c {
                let bias = $load(dw.bias.as_ptr().add(ch));
                let wp = dw.weight.as_ptr().add(ch);
                let mut wv = [$zero(); 9];
                if k == 3 {
                    for (t, v) in wv.iter_mut().enumerate() {
                        *v = $load(wp.add(t * c));
                    }
                }
                for ox in 0..ow {
                    let mut acc = bias;
                    if interior.contains(&ox) {
                        let base =
                            image.add(((top_in * w) as usize + ox * s - pl as usize) * c + ch);
                        if k == 3 {
                            for ky in 0..3 {
                                let row = base.add(ky * w as usize * c);
                                acc = $fmadd($load(row), wv[ky * 3], acc);
                                acc = $fmadd($load(row.add(c)), wv[ky * 3 + 1], acc);
                                acc = $fmadd($load(row.add(2 * c)), wv[ky * 3 + 2], acc);
                            }
                        } else {
                            for ky in 0..k {
                                let row = base.add(ky * w as usize * c);
                                for kx in 0..k {
                                    let x = $load(row.add(kx * c));
                                    acc = $fmadd(x, $load(wp.add((ky * k + kx) * c)), acc);
                                }
                            }
                        }
                    } else {
                        for ky in 0..k {
                            let iy = top + ky as isize;
                            for kx in 0..k {
                                let ix = (ox * s + kx) as isize - pl;
                                inputs[ky * k + kx] = if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                    zeros.as_ptr()
                                } else {
                                    let iy = (iy - job.first_row as isize) as usize;
                                    image.add((iy * w as usize + ix as usize) * c + ch)
                                };
                            }
                        }
                        for (t, input) in inputs.iter().enumerate().take(taps) {
                            acc = $fmadd($load(*input), $load(wp.add(t * c)), acc);
                        }
                    }
                    acc = $min($max(acc, vlo), vhi);
                    $store(out.add(ox * c + ch), acc);
                }
                ch += LANES;
            }
            ch
        }
    };
}

#[cfg(target_arch = "x86_64")]
simd_row!(
    /// One output row with AVX2 + FMA, 8 channels per block.
    row_avx2, "avx2,fma", 8,
    load _mm256_loadu_ps, store _mm256_storeu_ps, set1 _mm256_set1_ps, zero _mm256_setzero_ps,
    fmadd _mm256_fmadd_ps, min _mm256_min_ps, max _mm256_max_ps
);

#[cfg(target_arch = "x86_64")]
simd_row!(
    /// One output row with AVX-512F, 16 channels per block.
    row_avx512, "avx512f", 16,
    load _mm512_loadu_ps, store _mm512_storeu_ps, set1 _mm512_set1_ps, zero _mm512_setzero_ps,
    fmadd _mm512_fmadd_ps, min _mm512_min_ps, max _mm512_max_ps
);

/// Taps of the largest kernel the SIMD rows handle (5x5).
#[cfg(target_arch = "x86_64")]
const MAX_TAPS: usize = 25;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine path against a direct evaluation of the definition, for
    /// channel counts off the 8- and 16-lane blocks, both strides, 3x3 and 5x5, and
    /// symmetric and TF "SAME" padding.
    #[test]
    fn depthwise_matches_the_definition_on_every_path() {
        for (c, k, stride, padding) in [
            (8, 3, 1, Padding::Symmetric(1)),
            (13, 3, 2, Padding::Symmetric(1)),
            (40, 3, 1, Padding::Symmetric(1)),
            (37, 3, 2, Padding::Symmetric(1)),
            (24, 5, 2, Padding::Same),
            (19, 5, 1, Padding::Same),
        ] {
            let shape = MapShape {
                b: 2,
                h: 9,
                w: 7,
                c,
            };
            let x: Vec<f32> = (0..shape.len())
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let weight: Vec<f32> = (0..c * k * k)
                .map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0)
                .collect();
            let bias: Vec<f32> = (0..c).map(|i| i as f32 / 10.0 - 0.5).collect();
            let dw = Depthwise::new(&weight, bias.clone(), k, stride, padding, Activation::Relu6);
            let o = dw.out_shape(shape);
            let (pt, _) = padding.amounts(shape.h, k, stride);
            let (pl, _) = padding.amounts(shape.w, k, stride);
            let mut want = vec![0f32; o.len()];
            for img in 0..o.b {
                for oy in 0..o.h {
                    for ox in 0..o.w {
                        for ch in 0..c {
                            let mut acc = bias[ch];
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * stride + ky) as isize - pt as isize;
                                    let ix = (ox * stride + kx) as isize - pl as isize;
                                    if iy < 0
                                        || ix < 0
                                        || iy >= shape.h as isize
                                        || ix >= shape.w as isize
                                    {
                                        continue;
                                    }
                                    let at =
                                        ((img * shape.h + iy as usize) * shape.w + ix as usize) * c
                                            + ch;
                                    acc += x[at] * weight[ch * k * k + ky * k + kx];
                                }
                            }
                            want[((img * o.h + oy) * o.w + ox) * c + ch] = acc.clamp(0.0, 6.0);
                        }
                    }
                }
            }
            for path in KernelPath::available() {
                if path == KernelPath::CandleOps {
                    continue;
                }
                let mut got = vec![f32::NAN; o.len()];
                dw.forward(path, Exec::Serial, &x, shape, &mut got);
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (g - w).abs() < 1e-4,
                        "{path} c {c} k {k} s {stride}: {g} vs {w}"
                    );
                }
            }
        }
    }
}
