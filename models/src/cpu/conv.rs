//! Dense convolutions on NHWC maps as one gemm each: a 1x1 stride-1
//! convolution multiplies the map itself (`[pixels, C_in]`) by the packed
//! weight; any other goes through an NHWC im2col (`[pixels, k * k * C_in]`,
//! taps outermost, so each tap copies one contiguous channel vector).

use super::gemm::{gemm, Epilogue, PackedB, Rows};
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
}

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
    /// block here (asserted). `x` has shape `shape`; an im2col matrix, when
    /// needed, comes from `pool`.
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
        let k = self.weight.k();
        // The im2col matrix comes from the network's pool, not a
        // thread-local: a rayon thread that runs this layer's parallel
        // loops may meanwhile steal work of another forward pass that
        // needs one of its own.
        let mut buf = pool.take(o.pixels() * k);
        let cols = &mut buf[..o.pixels() * k];
        let geometry = Im2Col {
            kernel: self.kernel,
            stride: self.stride,
            pad: (pad_h.0, pad_w.0),
        };
        geometry.fill(exec, x, shape, o, cols);
        let a = Rows {
            data: cols,
            count: o.pixels(),
            stride: k,
        };
        gemm(path, exec, a, &self.weight, out, ep);
        pool.give(buf);
    }
}

/// Where each output pixel of a convolution reads its taps.
struct Im2Col {
    kernel: usize,
    stride: usize,
    /// Leading padding `(top, left)`.
    pad: (usize, usize),
}

impl Im2Col {
    /// Row `(img, oy, ox)` of `cols` gets the `k * k` input channel vectors
    /// the output pixel sees, zeros where a tap falls in the padding.
    fn fill(&self, exec: Exec, x: &[f32], s: MapShape, o: MapShape, cols: &mut [f32]) {
        let row_len = self.kernel * self.kernel * s.c;
        exec.chunks(cols, o.w * row_len, |row, dst| {
            let (img, oy) = (row / o.h, row % o.h);
            let image = &x[img * s.h * s.w * s.c..(img + 1) * s.h * s.w * s.c];
            self.fill_row(image, s, oy, dst);
        });
    }

    /// The rows of `cols` for output row `oy` of one image.
    #[inline(never)]
    fn fill_row(&self, image: &[f32], s: MapShape, oy: usize, dst: &mut [f32]) {
        let (k, c) = (self.kernel, s.c);
        let row_len = k * k * c;
        for (ox, px) in dst.chunks_exact_mut(row_len).enumerate() {
            let left = (ox * self.stride) as isize - self.pad.1 as isize;
            let inside_x = left >= 0 && left as usize + k <= s.w;
            for ky in 0..k {
                let iy = (oy * self.stride + ky) as isize - self.pad.0 as isize;
                if inside_x && iy >= 0 && (iy as usize) < s.h {
                    // The k taps of this row are k neighbouring pixels: one
                    // copy (a few floats each for the stems' 3 channels).
                    let at = (iy as usize * s.w + left as usize) * c;
                    px[ky * k * c..(ky + 1) * k * c].copy_from_slice(&image[at..at + k * c]);
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * self.stride + kx) as isize - self.pad.1 as isize;
                    let tap = &mut px[(ky * k + kx) * c..(ky * k + kx + 1) * c];
                    if iy < 0 || iy >= s.h as isize || ix < 0 || ix >= s.w as isize {
                        tap.fill(0.0);
                    } else {
                        let at = (iy as usize * s.w + ix as usize) * c;
                        tap.copy_from_slice(&image[at..at + c]);
                    }
                }
            }
        }
    }
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
