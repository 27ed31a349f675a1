//! Depthwise convolution on NHWC maps: every output pixel is a sum over the
//! `k * k` taps of an input pixel's channel vector times the tap's weight
//! vector, so the inner loop runs over contiguous channels and vectorises.
//! One rayon task per output row; bias and activation are fused.

use super::kernels::KernelPath;
use super::map::{Exec, MapShape};
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

    /// `out = act(depthwise(x) + bias)`; `x` is NHWC of shape `shape`.
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
        let (_, pt) = self.geometry(shape.h);
        let (_, pl) = self.geometry(shape.w);
        let row_len = o.w * o.c;
        exec.chunks(out, row_len, |row, dst| {
            let (img, oy) = (row / o.h, row % o.h);
            let image = &x[img * shape.h * shape.w * shape.c..][..shape.h * shape.w * shape.c];
            let rows = RowJob {
                dw: self,
                image,
                shape,
                oy,
                pad: (pt, pl),
            };
            match path {
                #[cfg(target_arch = "x86_64")]
                KernelPath::Avx2Fma => {
                    // SAFETY: this path is only selected when the CPU
                    // has AVX2 and FMA.
                    unsafe { row_avx2(&rows, dst) }
                }
                _ => rows.run::<false>(dst),
            }
        });
    }
}

/// One output row of a depthwise convolution.
struct RowJob<'a> {
    dw: &'a Depthwise,
    image: &'a [f32],
    shape: MapShape,
    oy: usize,
    pad: (usize, usize),
}

impl RowJob<'_> {
    #[inline(always)]
    fn run<const FMA: bool>(&self, dst: &mut [f32]) {
        let dw = self.dw;
        let (k, s, c) = (dw.kernel, dw.stride, dw.channels);
        let (h, w) = (self.shape.h as isize, self.shape.w as isize);
        for (ox, acc) in dst.chunks_exact_mut(c).enumerate() {
            acc.copy_from_slice(&dw.bias);
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
                    let at = (iy as usize * w as usize + ix as usize) * c;
                    let input = &self.image[at..at + c];
                    let weight = &dw.weight[(ky * k + kx) * c..(ky * k + kx + 1) * c];
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

/// One output row with AVX2 + FMA, one block of 8 channels at a time: the
/// block's bias and (for 3x3) its 9 tap weights stay in registers while the
/// row's pixels pass. Pixels whose taps all lie inside the image read them
/// at fixed offsets from one base pointer; the others gather their tap
/// pointers first, with taps in the padding pointing at a zero vector.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &RowJob, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let dw = job.dw;
    let (k, s, c) = (dw.kernel, dw.stride, dw.channels);
    let taps = k * k;
    if taps > MAX_TAPS {
        return job.run::<true>(dst);
    }
    let zeros = [0f32; 8];
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
    let (vlo, vhi) = (_mm256_set1_ps(lo), _mm256_set1_ps(hi));
    let image = job.image.as_ptr();
    let out = dst.as_mut_ptr();
    let mut inputs = [zeros.as_ptr(); MAX_TAPS];
    let mut ch = 0;
    while ch + 8 <= c {
        let bias = _mm256_loadu_ps(dw.bias.as_ptr().add(ch));
        let wp = dw.weight.as_ptr().add(ch);
        let mut wv = [_mm256_setzero_ps(); 9];
        if k == 3 {
            for (t, v) in wv.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(wp.add(t * c));
            }
        }
        for ox in 0..ow {
            let mut acc = bias;
            if interior.contains(&ox) {
                let base = image.add(((top * w) as usize + ox * s - pl as usize) * c + ch);
                if k == 3 {
                    for ky in 0..3 {
                        let row = base.add(ky * w as usize * c);
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(row), wv[ky * 3], acc);
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(c)), wv[ky * 3 + 1], acc);
                        acc = _mm256_fmadd_ps(_mm256_loadu_ps(row.add(2 * c)), wv[ky * 3 + 2], acc);
                    }
                } else {
                    for ky in 0..k {
                        let row = base.add(ky * w as usize * c);
                        for kx in 0..k {
                            let x = _mm256_loadu_ps(row.add(kx * c));
                            acc =
                                _mm256_fmadd_ps(x, _mm256_loadu_ps(wp.add((ky * k + kx) * c)), acc);
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
                            image.add((iy as usize * w as usize + ix as usize) * c + ch)
                        };
                    }
                }
                for (t, input) in inputs.iter().enumerate().take(taps) {
                    let x = _mm256_loadu_ps(*input);
                    acc = _mm256_fmadd_ps(x, _mm256_loadu_ps(wp.add(t * c)), acc);
                }
            }
            acc = _mm256_min_ps(_mm256_max_ps(acc, vlo), vhi);
            _mm256_storeu_ps(out.add(ox * c + ch), acc);
        }
        ch += 8;
    }
    if ch < c {
        // The last channels (fewer than 8) through the portable row, which
        // also rewrites the blocks above with the same values.
        job.run::<true>(dst);
    }
}

/// Taps of the largest kernel the AVX2 row handles (5x5).
#[cfg(target_arch = "x86_64")]
const MAX_TAPS: usize = 25;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every engine path against a direct evaluation of the definition, for
    /// channel counts off the 8-lane blocks, both strides, 3x3 and 5x5, and
    /// symmetric and TF "SAME" padding.
    #[test]
    fn depthwise_matches_the_definition_on_every_path() {
        for (c, k, stride, padding) in [
            (8, 3, 1, Padding::Symmetric(1)),
            (13, 3, 2, Padding::Symmetric(1)),
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
