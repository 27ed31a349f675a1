//! Forward + backward of a 1x1 convolution over 192 flattened 7x7 maps (one training step of
//! 64 triplets on MobileNetV2 + colour channels): the batched `weight.broadcast_matmul(x)` form
//! against one `[B*N, C] x [C, O]` product (`head::pointwise_conv`). Prints both and the ratio.
//!
//! `cargo run --release -p asen-train --example pointwise_conv_grad`

use candle_core::{Device, Tensor, Var};
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (192, 1341, 49), &dev)?;
    let w = Var::randn(0f32, 0.02, (256, 1341), &dev)?;
    let b = Tensor::zeros((1, 256, 1), candle_core::DType::F32, &dev)?;
    for round in 0..2 {
        let t = std::time::Instant::now();
        for _ in 0..5 {
            let y = w
                .as_tensor()
                .broadcast_matmul(&x)?
                .broadcast_add(&b)?
                .tanh()?;
            let g = y.sum_all()?.backward()?;
            let _ = g.get(&w).unwrap();
        }
        let old = t.elapsed().as_secs_f64() / 5.0;
        let t = std::time::Instant::now();
        for _ in 0..5 {
            let (bb, c, n) = x.dims3()?;
            let rows = x.transpose(1, 2)?.reshape((bb * n, c))?;
            let y = rows
                .matmul(&w.as_tensor().t()?)?
                .reshape((bb, n, 256))?
                .transpose(1, 2)?
                .broadcast_add(&b)?
                .tanh()?;
            let g = y.sum_all()?.backward()?;
            let _ = g.get(&w).unwrap();
        }
        let new = t.elapsed().as_secs_f64() / 5.0;
        println!(
            "round {round}: broadcast {old:.3} s/step, single gemm {new:.3} s/step, {:.1}x",
            old / new
        );
    }
    Ok(())
}
