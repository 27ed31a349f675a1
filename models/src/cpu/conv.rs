//! Dense convolutions on NHWC maps as one gemm each: a 1x1 stride-1
//! convolution multiplies the map itself (`[pixels, C_in]`) by the packed
//! weight; any other reads its rows of A (`[pixels, k * k * C_in]`, taps
//! outermost) in place from the map, with no im2col copy: each tap's
//! channel vector is one run ([`Runs::Taps`]), or for the stems' 3
//! channels each kernel row of a padded copy of the input
//! ([`Runs::KernelRows`]).

use super::gemm::{conv_gemm, gemm, Epilogue, PackedB, Rows, Runs, Taps, MAX_SEGMENTS};
use super::kernels::KernelPath;
use super::map::{BufferPool, Exec, MapShape};
use crate::layers::{Activation, Padding};

/// A `k`x`k` convolution with folded BatchNorm and an activation.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    c_in: usize,
    kernel: usize,
    stride: usize,
    padding: Padding,
    /// `[k * k * C_in, C_out]`, rows in `(ky, kx, c_in)` order.
    weight: PackedB,
    bias: Vec<f32>,
    act: Activation,
    /// `C_in` zeros: the taps that fall in the padding read these.
    zeros: Vec<f32>,
}

/// Input channels from which a convolution reads each tap as one run
/// ([`Runs::Taps`]); below, runs this short (the stems' 3 channels) would
/// cost the kernel more than the copy of a padded input saves
/// ([`Runs::KernelRows`]).
const TAP_RUNS_MIN_CHANNELS: usize = 16;

impl Conv {
    /// From a `[C_out, C_in, k, k]` weight (PyTorch order) and its bias.
    pub(crate) fn new(
        weight_oikk: &[f32],
        (c_in, kernel, stride): (usize, usize, usize),
        padding: Padding,
        bias: Vec<f32>,
        act: Activation,
    ) -> Self {
        let c_out = bias.len();
        assert_eq!(weight_oikk.len(), c_out * c_in * kernel * kernel);
        assert!(
            kernel <= MAX_SEGMENTS,
            "kernels up to {MAX_SEGMENTS}x{MAX_SEGMENTS}"
        );
        let weight = PackedB::pack(kernel * kernel * c_in, c_out, |row, co| {
            let (tap, ci) = (row / c_in, row % c_in);
            weight_oikk[(co * c_in + ci) * kernel * kernel + tap]
        });
        Self {
            c_in,
            kernel,
            stride,
            padding,
            weight,
            bias,
            act,
            zeros: vec![0.0; c_in],
        }
    }

    /// Output channels.
    pub(crate) fn c_out(&self) -> usize {
        self.bias.len()
    }

    /// Output length and `(before, after)` padding along an axis of `size`.
    fn geometry(&self, size: usize) -> (usize, (usize, usize)) {
        self.padding.output(size, self.kernel, self.stride)
    }

    /// The output shape for an input of shape `x`.
    pub(crate) fn out_shape(&self, x: MapShape) -> MapShape {
        MapShape {
            b: x.b,
            h: self.geometry(x.h).0,
            w: self.geometry(x.w).0,
            c: self.c_out(),
        }
    }

    /// Whether this is a 1x1, stride-1, unpadded convolution: one gemm over
    /// the map's pixels, each output pixel from its own input pixel.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding.output(1, 1, 1).1 == (0, 0)
    }

    /// A pointwise convolution ([`Self::is_pointwise`]) of the pixels in `x`
    /// (`[pixels, C_in]`, any number of them) into `out` (`[pixels, C_out]`),
    /// with the residual as in [`Self::forward`].
    pub(crate) fn forward_pixels(
        &self,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        residual: Option<(&[f32], Activation)>,
        out: &mut [f32],
    ) {
        assert!(
            self.is_pointwise(),
            "forward_pixels needs a 1x1 stride-1 convolution"
        );
        assert_eq!(x.len() % self.c_in, 0);
        let a = Rows {
            data: x,
            count: x.len() / self.c_in,
            stride: self.c_in,
        };
        gemm(path, exec, a, &self.weight, out, self.epilogue(residual));
    }

    /// The gemm's epilogue: `act` after the bias, or with a residual `(r,
    /// post)` the sum and `post` (fused only when `act` is the identity, as
    /// in every residual block here: asserted).
    fn epilogue<'a>(&'a self, residual: Option<(&'a [f32], Activation)>) -> Epilogue<'a> {
        match residual {
            Some((r, post)) => {
                assert_eq!(
                    self.act,
                    Activation::None,
                    "a residual follows a linear conv"
                );
                Epilogue {
                    bias: &self.bias,
                    residual: Some(r),
                    act: post,
                }
            }
            None => Epilogue {
                bias: &self.bias,
                residual: None,
                act: self.act,
            },
        }
    }

    /// `out = act(conv(x) + bias)`, or with a residual `(r, post)`:
    /// `out = post(act(conv(x) + bias) + r)`, all NHWC; `r` has the output's
    /// shape. Fused only when `act` is the identity, as in every residual
    /// block here (asserted). `x` has shape `shape`; the padded copy of a
    /// stem's input comes from `pool`.
    pub(crate) fn forward(
        &self,
        path: KernelPath,
        exec: Exec,
        (x, shape): (&[f32], MapShape),
        residual: Option<(&[f32], Activation)>,
        pool: &BufferPool,
        out: &mut [f32],
    ) {
        assert_eq!(shape.c, self.c_in);
        assert_eq!(x.len(), shape.len());
        let o = self.out_shape(shape);
        if self.is_pointwise() {
            self.forward_pixels(path, exec, x, residual, out);
            return;
        }
        let ep = self.epilogue(residual);
        let (_, pad_h) = self.geometry(shape.h);
        let (_, pad_w) = self.geometry(shape.w);
        if self.kernel * self.kernel <= MAX_SEGMENTS && self.c_in >= TAP_RUNS_MIN_CHANNELS {
            let taps = Taps {
                x,
                runs: Runs::Taps,
                input: shape,
                output: o,
                kernel: self.kernel,
                stride: self.stride,
                pad: (pad_h.0, pad_w.0),
                zeros: &self.zeros,
            };
            conv_gemm(path, exec, taps, &self.weight, out, ep);
            return;
        }
        // Few channels (a stem): the input padded once, so that each kernel
        // row of each output pixel is one run of `kernel * C_in` floats.
        let padded = MapShape {
            b: shape.b,
            h: shape.h + pad_h.0 + pad_h.1,
            w: shape.w + pad_w.0 + pad_w.1,
            c: shape.c,
        };
        let mut buf = pool.take(padded.len());
        let xp = &mut buf[..padded.len()];
        pad_map(exec, (x, shape), (pad_h.0, pad_w.0), (xp, padded));
        let taps = Taps {
            x: xp,
            runs: Runs::KernelRows,
            input: padded,
            output: o,
            kernel: self.kernel,
            stride: self.stride,
            pad: (0, 0),
            zeros: &self.zeros,
        };
        conv_gemm(path, exec, taps, &self.weight, out, ep);
        pool.give(buf);
    }
}

/// Copy the NHWC map `x` into the larger `out`, `(top, left)` pixels in
/// from its corner, zeros around it.
fn pad_map(
    exec: Exec,
    (x, s): (&[f32], MapShape),
    (top, left): (usize, usize),
    (out, p): (&mut [f32], MapShape),
) {
    let row = s.w * s.c;
    exec.chunks(out, p.w * p.c, |r, dst| {
        let (img, py) = (r / p.h, r % p.h);
        match py.checked_sub(top).filter(|&y| y < s.h) {
            Some(y) => {
                let at = (img * s.h + y) * row;
                let (head, rest) = dst.split_at_mut(left * s.c);
                let (mid, tail) = rest.split_at_mut(row);
                head.fill(0.0);
                mid.copy_from_slice(&x[at..at + row]);
                tail.fill(0.0);
            }
            None => dst.fill(0.0),
        }
    });
}

/// Max pooling `k`x`k` with stride and symmetric padding on an NHWC map
/// (padding never wins: it is skipped, as PyTorch's `-inf` padding).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool {
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
}

impl MaxPool {
    fn out_len(&self, size: usize) -> usize {
        (size + 2 * self.pad).saturating_sub(self.kernel) / self.stride + 1
    }

    /// The output shape for an input of shape `x`.
    pub(crate) fn out_shape(&self, x: MapShape) -> MapShape {
        MapShape {
            b: x.b,
            h: self.out_len(x.h),
            w: self.out_len(x.w),
            c: x.c,
        }
    }

    /// `out = maxpool(x)`.
    pub(crate) fn forward(&self, exec: Exec, x: &[f32], s: MapShape, out: &mut [f32]) {
        let o = self.out_shape(s);
        let c = s.c;
        exec.chunks(out, o.w * c, |row, dst| {
            let (img, oy) = (row / o.h, row % o.h);
            let image = &x[img * s.h * s.w * c..(img + 1) * s.h * s.w * c];
            for (ox, px) in dst.chunks_exact_mut(c).enumerate() {
                px.fill(f32::NEG_INFINITY);
                for ky in 0..self.kernel {
                    let iy = (oy * self.stride + ky) as isize - self.pad as isize;
                    if iy < 0 || iy >= s.h as isize {
                        continue;
                    }
                    for kx in 0..self.kernel {
                        let ix = (ox * self.stride + kx) as isize - self.pad as isize;
                        if ix < 0 || ix >= s.w as isize {
                            continue;
                        }
                        let at = (iy as usize * s.w + ix as usize) * c;
                        for (m, &v) in px.iter_mut().zip(&image[at..at + c]) {
                            *m = m.max(v);
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values as values;

    /// The convolution by its definition (f64 sums, NHWC in and out).
    fn reference(conv: &Conv, w: &[f32], x: &[f32], s: MapShape) -> Vec<f32> {
        let o = conv.out_shape(s);
        let (k, st) = (conv.kernel, conv.stride);
        let (_, (top, _)) = conv.geometry(s.h);
        let (_, (left, _)) = conv.geometry(s.w);
        let mut out = vec![0f32; o.len()];
        for img in 0..s.b {
            for (oy, ox, co) in
                (0..o.h).flat_map(|y| (0..o.w).flat_map(move |x| (0..o.c).map(move |c| (y, x, c))))
            {
                let mut sum = conv.bias[co] as f64;
                for (ky, kx, ci) in
                    (0..k).flat_map(|a| (0..k).flat_map(move |b| (0..s.c).map(move |c| (a, b, c))))
                {
                    let iy = (oy * st + ky) as isize - top as isize;
                    let ix = (ox * st + kx) as isize - left as isize;
                    if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                        continue;
                    }
                    let xv = x[((img * s.h + iy as usize) * s.w + ix as usize) * s.c + ci];
                    let wv = w[((co * s.c + ci) * k + ky) * k + kx];
                    sum += xv as f64 * wv as f64;
                }
                out[((img * o.h + oy) * o.w + ox) * o.c + co] = conv.act.scalar(sum as f32);
            }
        }
        out
    }

    /// Both ways of reading the input in place (a run per tap, a run per
    /// kernel row of a padded copy), with strides, symmetric and "same"
    /// padding, strips cut at the last rows, on every engine path: within
    /// 1e-4 of the definition.
    #[test]
    fn convolutions_match_the_definition_on_every_path() {
        let cases = [
            // (c_in, c_out, kernel, stride, padding, h, w): taps as runs
            (16, 20, 3, 1, Padding::Symmetric(1), 5, 7),
            (24, 33, 3, 2, Padding::Symmetric(1), 9, 6),
            (16, 16, 1, 2, Padding::Symmetric(0), 7, 7),
            (16, 8, 3, 2, Padding::Same, 8, 5),
            // kernel rows as runs (the stems)
            (3, 16, 7, 2, Padding::Symmetric(3), 11, 13),
            (3, 32, 3, 2, Padding::Same, 10, 9),
            (3, 17, 3, 1, Padding::Symmetric(1), 4, 6),
        ];
        for path in KernelPath::available() {
            if path == KernelPath::CandleOps {
                continue;
            }
            for (i, &(c_in, c_out, k, stride, padding, h, w)) in cases.iter().enumerate() {
                let weight = values(c_out * c_in * k * k, 1 + i as u32);
                let bias = values(c_out, 2);
                let conv = Conv::new(&weight, (c_in, k, stride), padding, bias, Activation::Relu6);
                let shape = MapShape {
                    b: 2,
                    h,
                    w,
                    c: c_in,
                };
                let x = values(shape.len(), 3);
                let mut out = vec![f32::NAN; conv.out_shape(shape).len()];
                let pool = BufferPool::default();
                conv.forward(path, Exec::Parallel, (&x, shape), None, &pool, &mut out);
                let want = reference(&conv, &weight, &x, shape);
                for (j, (a, b)) in out.iter().zip(&want).enumerate() {
                    assert!((a - b).abs() < 1e-4, "{path} case {i} at {j}: {a} vs {b}");
                }
            }
        }
    }
}
