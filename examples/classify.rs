//! Classify images with EfficientNet-Lite0 and its ImageNet head: checks
//! that preprocessing and the shipped weights work end to end.
//!
//! ```text
//! cargo run --release --example classify -- ../shared/data/fashion-product-images/images_224/10030.jpg
//! ```
//! prints the top-5 ImageNet-1k classes (index and softmax probability);
//! for that T-shirt, class 610 ("jersey, T-shirt") with p of about 0.97.

use std::process::ExitCode;

use asen_models::{preprocess_bytes, Backbone, BackboneKind, Lite0Classifier, PreprocessConfig};
use candle_core::{DType, Device, D};
use candle_nn::VarBuilder;

fn run(paths: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::Cpu;
    let kind = BackboneKind::EfficientNetLite0;
    let weights =
        kind.imagenet_weights_path(&[concat!(env!("CARGO_MANIFEST_DIR"), "/models/weights")])?;
    let backbone = Backbone::load(kind, &weights, &device)?;
    let tensors = candle_core::safetensors::load(&weights, &device)?;
    let classifier = Lite0Classifier::new(VarBuilder::from_tensors(tensors, DType::F32, &device))?;
    let cfg = PreprocessConfig::default();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let x = preprocess_bytes(&bytes, &cfg, &device)
            .map_err(|e| e.with_source_name(path.as_str()))?;
        let logits = classifier.forward(&backbone.forward(&x)?)?;
        let probs: Vec<f32> = candle_nn::ops::softmax(&logits, D::Minus1)?
            .squeeze(0)?
            .to_vec1()?;
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        println!("{path}");
        for (class, p) in ranked.iter().take(5) {
            println!("  class {class:4}  p {p:.4}");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        eprintln!("usage: classify IMAGE...");
        return ExitCode::from(2);
    }
    match run(&paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
