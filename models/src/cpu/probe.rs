//! Timing of single engine layers, for `cargo bench -p asen-models --bench
//! conv_layers`: how close each convolution shape of a network comes to the
//! core's multiply-add peak, apart from everything around it.

use std::time::Instant;

use super::conv::Conv;
use super::kernels::KernelPath;
use super::map::{BufferPool, Exec, MapShape};
use crate::layers::{Activation, Padding};

/// One convolution's shape: `c_in -> c_out`, `kernel`x`kernel`, `stride`,
/// symmetric `pad`, on `batch` square maps of side `size`.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    /// Input channels.
    pub c_in: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zeros on every side.
    pub pad: usize,
    /// The input map's side.
    pub size: usize,
    /// Images.
    pub batch: usize,
}

impl ConvShape {
    /// Multiply-adds of one pass.
    pub fn macs(&self) -> usize {
        let out = (self.size + 2 * self.pad - self.kernel) / self.stride + 1;
        self.batch * out * out * self.c_out * self.c_in * self.kernel * self.kernel
    }
}

/// GFLOP/s (two per multiply-add) of the convolution `shape` with a ReLU,
/// on the calling thread, on kernel path `path`: the best of `turns` timings
/// of enough passes to fill about `secs` seconds each. `None` when the CPU
/// lacks the path's instructions, or for `CandleOps` (not an engine path).
pub fn conv_gflops(path: KernelPath, shape: ConvShape, secs: f64, turns: usize) -> Option<f64> {
    if !path.is_supported() || path == KernelPath::CandleOps {
        return None;
    }
    let ConvShape {
        c_in,
        c_out,
        kernel,
        stride,
        pad,
        size,
        batch,
    } = shape;
    let weight: Vec<f32> = (0..c_out * c_in * kernel * kernel)
        .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
        .collect();
    let conv = Conv::new(
        &weight,
        (c_in, kernel, stride),
        Padding::Symmetric(pad),
        vec![0.01; c_out],
        Activation::Relu,
    );
    let input = MapShape {
        b: batch,
        h: size,
        w: size,
        c: c_in,
    };
    let x: Vec<f32> = (0..input.len()).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut out = vec![0f32; conv.out_shape(input).len()];
    let pool = BufferPool::default();
    let mut pass = || conv.forward(path, Exec::Serial, (&x, input), None, &pool, &mut out);
    pass();
    let flops = 2.0 * shape.macs() as f64;
    let started = Instant::now();
    pass();
    let once = started.elapsed().as_secs_f64().max(1e-6);
    let reps = ((secs / once) as usize).max(1);
    let best = (0..turns.max(1))
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                pass();
            }
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    Some(flops * reps as f64 / best / 1e9)
}
