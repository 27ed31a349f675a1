//! How close the CPU engine's convolutions come to the core's peak: each
//! convolution shape of ResNet-50 up to layer3 (one image, as the engine runs
//! it at batch 16: one image per thread), on one thread, against the
//! multiply-add peak measured by a loop of independent FMAs on the same
//! core. Prints a table; run with
//! `cargo bench -p asen-models --bench conv_layers`
//! (`ASEN_BENCH_KERNELS=avx2-fma` for another kernel path, `ASEN_BENCH_SECS`
//! per timing, default 0.3; the best of 5 timings per shape).

use std::time::Instant;

use asen_models::engine_probe::{conv_gflops, ConvShape};
use asen_models::KernelPath;

/// ResNet-50's convolutions up to layer3, each with how often it occurs.
fn resnet50_layer3() -> Vec<(&'static str, ConvShape, usize)> {
    let conv = |c_in, c_out, kernel, stride, size| ConvShape {
        c_in,
        c_out,
        kernel,
        stride,
        pad: kernel / 2,
        size,
        batch: 1,
    };
    vec![
        ("stem 7x7/2", conv(3, 64, 7, 2, 224), 1),
        ("layer1 1x1 reduce", conv(256, 64, 1, 1, 56), 2),
        ("layer1 1x1 reduce (first)", conv(64, 64, 1, 1, 56), 1),
        ("layer1 3x3", conv(64, 64, 3, 1, 56), 3),
        ("layer1 1x1 expand", conv(64, 256, 1, 1, 56), 3),
        ("layer1 downsample", conv(64, 256, 1, 1, 56), 1),
        ("layer2 1x1 reduce (first)", conv(256, 128, 1, 1, 56), 1),
        ("layer2 3x3/2 (first)", conv(128, 128, 3, 2, 56), 1),
        ("layer2 1x1 reduce", conv(512, 128, 1, 1, 28), 3),
        ("layer2 3x3", conv(128, 128, 3, 1, 28), 3),
        ("layer2 1x1 expand", conv(128, 512, 1, 1, 28), 4),
        ("layer2 downsample 1x1/2", conv(256, 512, 1, 2, 56), 1),
        ("layer3 1x1 reduce (first)", conv(512, 256, 1, 1, 28), 1),
        ("layer3 3x3/2 (first)", conv(256, 256, 3, 2, 28), 1),
        ("layer3 1x1 reduce", conv(1024, 256, 1, 1, 14), 5),
        ("layer3 3x3", conv(256, 256, 3, 1, 14), 5),
        ("layer3 1x1 expand", conv(256, 1024, 1, 1, 14), 6),
        ("layer3 downsample 1x1/2", conv(512, 1024, 1, 2, 28), 1),
    ]
}

/// GFLOP/s of independent multiply-adds on this core: 24 chains of 512-bit
/// (or, on the AVX2 path, 256-bit) FMAs, enough to hide their latency.
fn fma_peak(path: KernelPath, secs: f64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        if !path.is_supported() {
            return None;
        }
        // Trips of 24 FMAs; returns the lanes of one.
        let run = |trips: usize| -> Option<usize> {
            // SAFETY: each loop needs its path's instructions, which the CPU
            // has (`is_supported` above).
            match path {
                KernelPath::Avx512 => Some(unsafe { peak::avx512(trips) }),
                KernelPath::Avx2Fma => Some(unsafe { peak::avx2(trips) }),
                _ => None,
            }
        };
        let trips = 20_000_000usize;
        let started = Instant::now();
        run(trips)?;
        let scale = (secs / started.elapsed().as_secs_f64()).max(1.0) as usize;
        let started = Instant::now();
        let mut lanes = 0;
        for _ in 0..scale {
            lanes = run(trips)?;
        }
        let s = started.elapsed().as_secs_f64();
        Some((scale * trips * 24 * lanes * 2) as f64 / s / 1e9)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (path, secs);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    /// `trips` x 24 independent 16-lane FMAs; returns the lanes (16).
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(trips: usize) -> usize {
        let (x, y) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-4));
        let mut acc = [_mm512_set1_ps(0.5); 24];
        for _ in 0..trips {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        std::hint::black_box(acc);
        16
    }

    /// `trips` x 24 independent 8-lane FMAs; returns the lanes (8).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(trips: usize) -> usize {
        let (x, y) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-4));
        let mut acc = [_mm256_set1_ps(0.5); 24];
        for _ in 0..trips {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        std::hint::black_box(acc);
        8
    }
}

fn main() {
    let path = match std::env::var("ASEN_BENCH_KERNELS") {
        Ok(k) => k.parse::<KernelPath>().expect("ASEN_BENCH_KERNELS"),
        Err(_) => KernelPath::detect(),
    };
    assert!(
        path.is_supported() && path != KernelPath::CandleOps,
        "kernel path {path} is not an engine path this CPU supports"
    );
    let secs: f64 = std::env::var("ASEN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.3);
    // Rayon is not used: every timing runs on this thread.
    let peak = fma_peak(path, secs);
    match peak {
        Some(p) => println!("kernel path {path}: FMA peak of one core {p:.1} GFLOP/s"),
        None => println!("kernel path {path}: no FMA peak loop for this path"),
    }
    println!();
    println!("| ResNet-50 layer (one image) | MACs (M) | times | GFLOP/s | of peak |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (mut total_macs, mut total_secs) = (0f64, 0f64);
    for (name, shape, times) in resnet50_layer3() {
        let g = conv_gflops(path, shape, secs, 5).expect("a supported engine path");
        let macs = shape.macs() as f64 * times as f64;
        total_macs += macs;
        total_secs += 2.0 * macs / (g * 1e9);
        let of_peak = peak.map_or("-".into(), |p| format!("{:.0} %", 100.0 * g / p));
        println!(
            "| {name} | {:.1} | {times} | {g:.1} | {of_peak} |",
            shape.macs() as f64 / 1e6
        );
    }
    let g = 2.0 * total_macs / total_secs / 1e9;
    let of_peak = peak.map_or("-".into(), |p| format!("{:.0} %", 100.0 * g / p));
    println!(
        "| all convolutions, weighted by their MACs | {:.0} | | {g:.1} | {of_peak} |",
        total_macs / 1e6
    );
    println!(
        "\nthe convolutions alone would run {:.1} images/s on this thread",
        1.0 / total_secs
    );
}
