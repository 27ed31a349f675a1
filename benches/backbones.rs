//! Backbone throughput on the CPU: images/s of each backbone at batch 1 and
//! 16 (224x224 input), plus ResNet-50 + the ASEN v1 head (one attribute)
//! when the golden checkpoint is present, printed as a markdown table.
//!
//! ```text
//! cargo bench --bench backbones   # ASEN_BENCH_SECS=3 per cell; ASEN_BENCH_ONLY=mobilenet_v2 for one
//!                                 # network, ASEN_BENCH_BATCH=1 (or 16) for one batch size,
//!                                 # ASEN_BENCH_MODEL=DIR to bench a model directory as "shipped"
//! ```
//! ResNet-50 uses the golden v1 checkpoint's backbone when `../shared` is
//! present, otherwise random weights (timing does not depend on the values).
//! The PyTorch counterpart is `benches/pytorch_backbones.py`; results and
//! the machine are recorded in `docs/benchmarks.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use asen_models::{
    Backbone, BackboneKind, Checkpoint, Embedder, EmbedderOptions, Head, KernelPath,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

fn shared_dir() -> PathBuf {
    asen_test_support::shared_root()
}

fn build(kind: BackboneKind, device: &Device) -> (Backbone, &'static str) {
    if let Ok(path) =
        kind.imagenet_weights_path(&[concat!(env!("CARGO_MANIFEST_DIR"), "/models/weights")])
    {
        return (
            Backbone::load(kind, &path, device).expect("load weights"),
            "imagenet",
        );
    }
    let ckpt = shared_dir().join("golden/asen_v1_fashionai.pth.gz");
    if let Ok(ckpt) = Checkpoint::load(&ckpt) {
        let tensors: std::collections::HashMap<String, Tensor> = ckpt
            .normalised()
            .expect("normalise")
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix("backbonenet.").map(|k| (k.to_string(), t)))
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        return (
            Backbone::new(kind, vb).expect("build"),
            "golden v1 checkpoint",
        );
    }
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    (Backbone::new(kind, vb).expect("build"), "random")
}

/// Images per second of `forward` at `batch`, over at least `budget`.
fn images_per_s(
    forward: &dyn Fn(&Tensor) -> Tensor,
    batch: usize,
    budget: Duration,
    device: &Device,
) -> f64 {
    let x = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), device).expect("input");
    forward(&x);
    let start = Instant::now();
    let mut runs = 0;
    while runs < 2 || start.elapsed() < budget {
        std::hint::black_box(forward(&x));
        runs += 1;
    }
    (runs * batch) as f64 / start.elapsed().as_secs_f64()
}

/// ResNet-50 layer3 + ASEN v1 head of the golden checkpoint, if present.
fn asen_v1(device: &Device) -> Option<(Backbone, Head)> {
    let ckpt = Checkpoint::load(shared_dir().join("golden/asen_v1_fashionai.pth.gz")).ok()?;
    let (head, _) = ckpt.load_head(device).expect("load head");
    let (backbone, _) = build(BackboneKind::ResNet50Layer3, device);
    Some((backbone, head))
}

/// The shipped model (`models/default`, or the model directory
/// `ASEN_BENCH_MODEL` names): MobileNetV2, the colour histogram and the ASEN
/// v2 head for each of its attributes.
fn shipped(device: &Device) -> Option<Embedder> {
    let dir = std::env::var("ASEN_BENCH_MODEL")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/models/default").into());
    let opts = EmbedderOptions {
        device: device.clone(),
        weights_dirs: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/models/weights").into()],
        ..EmbedderOptions::default()
    };
    Embedder::load(dir, &opts).ok()
}

/// One measured row: network, weights, kernel path, images/s at batch 1 and 16.
struct Row {
    network: String,
    weights: &'static str,
    kernels: KernelPath,
    b1: f64,
    b16: f64,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let secs: f64 = std::env::var("ASEN_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let budget = Duration::from_secs_f64(secs);
    let device = Device::Cpu;
    let kernels = match std::env::var("ASEN_BENCH_KERNELS") {
        Ok(k) => k.parse::<KernelPath>().expect("ASEN_BENCH_KERNELS"),
        Err(_) => KernelPath::detect(),
    };
    println!(
        "candle 0.11.1 CPU, {} threads, {kernels} kernels, 224x224, >= {secs} s per cell",
        candle_core::utils::get_num_threads()
    );
    println!();
    println!("| network | weights | batch 1 (img/s) | batch 16 (img/s) |");
    println!("| --- | --- | ---: | ---: |");
    let only = std::env::var("ASEN_BENCH_ONLY").ok();
    // For profiling one batch size: the other column reads 0.
    let only_batch: Option<usize> = std::env::var("ASEN_BENCH_BATCH")
        .ok()
        .map(|b| b.parse().expect("ASEN_BENCH_BATCH: 1 or 16"));
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mut rows = Vec::new();
    let mut record = |network: &str, weights: &'static str, forward: &dyn Fn(&Tensor) -> Tensor| {
        let b1 = if only_batch != Some(16) {
            images_per_s(forward, 1, budget, &device)
        } else {
            0.0
        };
        let b16 = if only_batch != Some(1) {
            images_per_s(forward, 16, budget, &device)
        } else {
            0.0
        };
        println!("| {network} | {weights} | {b1:.1} | {b16:.1} |");
        rows.push(Row {
            network: network.to_string(),
            weights,
            kernels,
            b1,
            b16,
        });
    };
    for kind in BackboneKind::ALL {
        if !wanted(kind.name()) {
            continue;
        }
        let (net, weights) = build(kind, &device);
        let net = net.with_kernels(kernels).expect("kernel path");
        record(kind.name(), weights, &|x| net.forward(x).expect("forward"));
    }
    const V1: &str = "resnet50_layer3 + asen_v1 head";
    if wanted(V1) {
        if let Some((backbone, head)) = asen_v1(&device) {
            let backbone = backbone.with_kernels(kernels).expect("kernel path");
            record(V1, "golden v1 checkpoint", &|x| {
                let feat = backbone.forward(x).expect("backbone");
                let attr =
                    Tensor::zeros(x.dim(0).expect("batch"), DType::U32, &device).expect("attr");
                head.forward(&feat, &attr, false).expect("head").embedding
            });
        }
    }
    const SHIPPED: &str = "shipped: mobilenet_v2 + colour + asen_v2 x 8";
    if wanted(SHIPPED) {
        match shipped(&device) {
            Some(embedder) => {
                let embedder = embedder.with_kernels(kernels).expect("kernel path");
                let attributes: Vec<usize> = (0..8).collect();
                let weights: &'static str = match std::env::var("ASEN_BENCH_MODEL") {
                    Ok(dir) => Box::leak(dir.into_boxed_str()),
                    Err(_) => "models/default",
                };
                record(SHIPPED, weights, &|x| {
                    let out = embedder.embed_normalised(x, &attributes).expect("embed");
                    std::hint::black_box(out);
                    Tensor::zeros(1, DType::F32, &device).expect("token")
                });
            }
            None => eprintln!("SKIP {SHIPPED}: the model directory did not load"),
        }
    }
    if let Ok(path) = std::env::var("ASEN_BENCH_JSON") {
        std::fs::write(&path, to_json(&rows)).expect("write ASEN_BENCH_JSON");
    }
}

/// `[{"network", "weights", "kernels", "b1", "b16"}, ...]` for
/// `benches/forward_compare.py`.
fn to_json(rows: &[Row]) -> String {
    let items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"network\": {:?}, \"weights\": {:?}, \"kernels\": \"{}\", \"b1\": {:.3}, \"b16\": {:.3}}}",
                r.network, r.weights, r.kernels, r.b1, r.b16
            )
        })
        .collect();
    format!("[\n{}\n]\n", items.join(",\n"))
}
