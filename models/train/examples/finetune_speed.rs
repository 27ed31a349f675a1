//! Triplets/s of one fine-tuning step (backbone + head forward in training
//! mode, backward, two Adam updates) on random normalised images, without
//! decoding: the model's share of `asen train --finetune`.
//!
//! ```sh
//! cargo run --release -p asen-train --example finetune_speed -- [BACKBONE] [SIZE] [TRIPLETS] [STEPS] [DEVICE]
//! # defaults: mobilenet_v2 224 8 3 cpu
//! ```

use std::time::Instant;

use asen_models::{parse_device, BackboneKind, HeadKind};
use asen_train::{triplet_ranking_loss, FinetuneNetwork, TrainConfig};
use candle_core::Tensor;
use candle_nn::Optimizer;

/// The process's peak resident memory (Linux `VmHWM`), or "n/a".
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "n/a".into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.into());
    let backbone: BackboneKind = arg(0, "mobilenet_v2").parse()?;
    let size: usize = arg(1, "224").parse()?;
    let triplets: usize = arg(2, "8").parse()?;
    let steps: usize = arg(3, "3").parse()?;
    let device = parse_device(&arg(4, "cpu"))?;

    let mut cfg = TrainConfig::new(HeadKind::AsenV2, backbone);
    cfg.input_size = size as u32;
    let n_attributes = 8;
    let weights_dirs = [concat!(env!("CARGO_MANIFEST_DIR"), "/../weights").into()];
    let net = FinetuneNetwork::new(&cfg, n_attributes, &weights_dirs, &device)?;
    let (head_vars, backbone_vars) = net.trainable_vars();
    let mut head_opt = cfg.schedule.adam(head_vars)?;
    let mut backbone_opt = cfg.schedule.adam(backbone_vars)?;
    let b = triplets;
    let attrs: Vec<u32> = (0..3 * b).map(|i| (i % b % n_attributes) as u32).collect();
    let attr = Tensor::from_vec(attrs, 3 * b, &device)?;
    println!(
        "backbone {backbone}, {size} px, {b} triplets ({} images) per step, device {device:?}",
        3 * b
    );
    let mut times = Vec::new();
    for step in 0..=steps {
        let x = Tensor::randn(0f32, 1.0, (3 * b, 3, size, size), &device)?;
        let started = Instant::now();
        let e = net.forward_t(&x, &attr, true)?.embedding;
        let loss = triplet_ranking_loss(
            &e.narrow(0, 0, b)?,
            &e.narrow(0, b, b)?,
            &e.narrow(0, 2 * b, b)?,
            0.2,
        )?;
        let grads = loss.backward()?;
        head_opt.step(&grads)?;
        backbone_opt.step(&grads)?;
        let value = loss.to_scalar::<f32>()?;
        let secs = started.elapsed().as_secs_f64();
        // Step 0 warms up (allocations, first-touch pages) and is not counted.
        if step > 0 {
            times.push(secs);
        }
        println!(
            "step {step}: loss {value:.4}, {secs:.2} s, {:.2} triplets/s, peak memory {}",
            b as f64 / secs,
            peak_memory()
        );
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    println!(
        "mean over {} steps: {mean:.2} s/step, {:.2} triplets/s, {:.1} images/s",
        times.len(),
        b as f64 / mean,
        3.0 * b as f64 / mean
    );
    Ok(())
}
