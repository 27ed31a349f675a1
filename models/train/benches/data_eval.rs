//! Timings of the model-free training pieces, printed as a table:
//! synthetic generation and writing, triplet sampling, the retrieval metric
//! and the feature cache. `cargo bench -p asen-train --bench data_eval`.

use std::time::Instant;

use asen_train::{
    generate_synthetic, query_average_precisions, FeatureCache, SyntheticConfig, TripletSampler,
};
use candle_core::{Device, Tensor};

fn time<T>(label: &str, unit: &str, items: usize, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let s = start.elapsed().as_secs_f64();
    println!(
        "{label:<48} {:>9.1} ms {:>12.0} {unit}/s",
        s * 1e3,
        items as f64 / s
    );
    out
}

fn main() {
    println!("{:<48} {:>12} {:>17}", "step", "time", "throughput");
    let config = SyntheticConfig {
        train: 1200,
        valid: 300,
        test: 300,
        ..SyntheticConfig::default()
    };
    let synthetic = time(
        "generate 1800 synthetic 96x96 images",
        "images",
        1800,
        || generate_synthetic(&config).expect("generate"),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let dataset = time(
        "write 1800 PNGs + labels.csv, read back",
        "images",
        1800,
        || synthetic.write(dir.path()).expect("write"),
    );
    let sampler = TripletSampler::new(&dataset, 0).expect("sampler");
    time("sample 100k triplets", "triplets", 100_000, || {
        sampler.epoch(0, 100_000)
    });

    let (nq, nc, dim) = (1000, 4000, 128);
    let rand = |n: usize, seed: u32| -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) - 0.5
            })
            .collect()
    };
    let (q, c) = (rand(nq * dim, 1), rand(nc * dim, 2));
    let qv: Vec<u32> = (0..nq as u32).map(|i| i % 10).collect();
    let cv: Vec<u32> = (0..nc as u32).map(|i| i % 10).collect();
    time(
        "mAP: 1000 queries x 4000 candidates, dim 128",
        "queries",
        nq,
        || query_average_precisions(&q, &qv, &c, &cv, dim).expect("map"),
    );

    let (n, ch, hw) = (512, 2048, 7);
    let path = dir.path().join("features.bin");
    let batch = |i: &[usize]| {
        Ok(Tensor::ones(
            (i.len(), ch, hw, hw),
            candle_core::DType::F32,
            &Device::Cpu,
        )?)
    };
    let cache = time(
        "cache build: 512 x 2048x7x7 (f16, 102 MB)",
        "maps",
        n,
        || FeatureCache::build(&path, "bench", n, 64, batch, &|_, _| {}).expect("build"),
    );
    let indices: Vec<usize> = (0..n).rev().step_by(2).take(64).collect();
    time(
        "cache read: batch of 64 maps to f32 tensor",
        "maps",
        64,
        || cache.get(&indices, &Device::Cpu).expect("get"),
    );
}
