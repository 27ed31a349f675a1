//! The CPU inference engine behind [`crate::Backbone`]: the backbones'
//! layers compiled at load into NHWC kernels that candle's ops do not have.
//!
//! - Every convolution is one gemm ([`gemm`]) whose weight was packed once
//!   at load, with bias, residual and activation fused into the store of
//!   each output tile; a 1x1 convolution multiplies the map itself.
//! - Depthwise convolutions run over contiguous channels ([`depthwise`]).
//! - Inverted bottlenecks run fused over bands of rows, so their expanded
//!   map stays in the core's cache ([`bottleneck`]).
//! - Buffers come from a pool kept with the network, so a warm forward pass
//!   allocates only its output.
//! - Kernels exist for AVX-512F, AVX2 + FMA and in portable Rust; [`KernelPath`]
//!   picks one at run time, and `CandleOps` runs candle's own ops instead
//!   (the reference the engine is tested against, and the path off the CPU).
//!
//! The engine runs on rayon's pool, as the rest of the crate.

mod bottleneck;
mod colour;
mod conv;
mod depthwise;
mod gemm;
mod head;
mod kernels;
mod map;
mod math;
mod net;
pub mod probe;
mod two_grid;

pub(crate) use bottleneck::Bottleneck;
pub(crate) use colour::colour_histogram;
pub(crate) use conv::{Conv, MaxPool};
pub(crate) use depthwise::Depthwise;
pub(crate) use head::{DotProductEngine, DotProductWeights};
pub use kernels::KernelPath;
pub(crate) use map::{on_pool_awake, MapShape};
pub(crate) use net::{CpuNet, Layer, Layout};
pub(crate) use two_grid::HeadEngine;

/// `len` values spread over [-1, 1], different for each `seed`: the kernel
/// tests' inputs and weights.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: u32) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}
