//! Depthwise convolution on NHWC maps: every output pixel is a sum over the
//! `k * k` taps of an input pixel's channel vector times the tap's weight
//! vector, so the inner loop runs over contiguous channels and vectorises.
//! One rayon task per output row; bias and activation are fused.

use rayon::prelude::*;

use super::kernels::KernelPath;
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
        let (before, after) = self.padding.amounts(size, self.kernel, self.stride);
        let out = (size + before + after).saturating_sub(self.kernel) / self.stride + 1;
        (out, before)
    }

    /// `out = act(depthwise(x) + bias)`; `x` is NHWC of shape `shape`.
    pub(crate) fn forward(&self, path: KernelPath, x: &[f32], shape: MapShape, out: &mut [f32]) {
        assert_eq!(shape.c, self.channels);
        let o = self.out_shape(shape);
        assert_eq!(x.len(), shape.len());
        assert_eq!(out.len(), o.len());
        let (_, pt) = self.geometry(shape.h);
        let (_, pl) = self.geometry(shape.w);
        let row_len = o.w * o.c;
        out.par_chunks_exact_mut(row_len)
            .enumerate()
            .for_each(|(row, dst)| {
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

/// [`RowJob::run`] compiled for AVX2 + FMA.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &RowJob, dst: &mut [f32]) {
    job.run::<true>(dst)
}
