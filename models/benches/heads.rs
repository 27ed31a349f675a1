//! Head inference cost per batch, and what `forward_attributes` saves over one
//! `forward` per attribute. Prints a table; run with
//! `cargo bench -p asen-models --bench heads` (the bench profile inherits release).
//! Random weights (VarMap), features `[8, 1024, 14, 14]`, all 8 attributes, CPU.

use std::time::{Duration, Instant};

use asen_models::{Head, HeadConfig, HeadKind};
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

fn median_time(mut f: impl FnMut(), reps: usize) -> Duration {
    f(); // warm-up
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

fn main() -> asen_models::Result<()> {
    let dev = Device::Cpu;
    let (b, c, n) = (8usize, 1024usize, 8usize);
    let x = Tensor::randn(0f32, 1.0, (b, c, 14, 14), &dev)?;
    let attrs: Vec<usize> = (0..n).collect();
    println!("| head | {n} x forward (ms) | forward_attributes (ms) | speed-up |");
    println!("| --- | ---: | ---: | ---: |");
    for kind in [
        HeadKind::AsenV1,
        HeadKind::AsenV2,
        HeadKind::AsenPpGlobal,
        HeadKind::Csn,
        HeadKind::Global,
    ] {
        let varmap = VarMap::new();
        let head = Head::new(
            kind,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            &HeadConfig::asen(c, n),
        )?;
        let separate = median_time(
            || {
                for &a in &attrs {
                    let attr = Tensor::full(a as u32, b, &dev).expect("attr");
                    head.forward(&x, &attr, false).expect("forward");
                }
            },
            7,
        );
        let shared = median_time(
            || {
                head.forward_attributes(&x, &attrs)
                    .expect("forward_attributes");
            },
            7,
        );
        println!(
            "| {kind} | {:.1} | {:.1} | {:.2}x |",
            separate.as_secs_f64() * 1e3,
            shared.as_secs_f64() * 1e3,
            separate.as_secs_f64() / shared.as_secs_f64()
        );
    }
    Ok(())
}
