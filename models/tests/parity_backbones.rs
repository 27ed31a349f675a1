//! ImageNet backbones against PyTorch (`backbones_expected.safetensors`,
//! golden README section 7): MobileNetV2 and EfficientNet-Lite0 from the
//! stored input tensors and end to end from the image files.

mod fixtures;

use asen_models::{
    preprocess_bytes, Backbone, BackboneKind, KernelPath, Lite0Classifier, PreprocessConfig,
};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

fn load(kind: BackboneKind) -> Backbone {
    let path = kind
        .imagenet_weights_path(&fixtures::weights_dirs())
        .unwrap();
    Backbone::load(kind, &path, &Device::Cpu).unwrap()
}

/// The backbone once per kernel path this CPU can run (the engine's AVX2
/// and portable kernels, and candle's ops), each checked against PyTorch.
fn on_every_path(kind: BackboneKind) -> Vec<(KernelPath, Backbone)> {
    let net = load(kind);
    KernelPath::available()
        .into_iter()
        .map(|p| (p, net.clone().with_kernels(p).unwrap()))
        .collect()
}

fn lite0_classifier() -> Lite0Classifier {
    let path = BackboneKind::EfficientNetLite0
        .imagenet_weights_path(&fixtures::weights_dirs())
        .unwrap();
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    Lite0Classifier::new(VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap()
}

/// The six golden input tensors `img0..img5` as one batch `[6, 3, 224, 224]`.
fn golden_batch(shared: &std::path::Path) -> Tensor {
    let g = fixtures::load_golden(shared, "preprocess.safetensors");
    let imgs: Vec<Tensor> = (0..6).map(|i| g[&format!("img{i}")].clone()).collect();
    Tensor::stack(&imgs, 0).unwrap()
}

fn from_files(shared: &std::path::Path) -> Tensor {
    let xs: Vec<Tensor> = fixtures::golden_images(shared)
        .iter()
        .map(|p| {
            let bytes = std::fs::read(p).unwrap();
            preprocess_bytes(&bytes, &PreprocessConfig::default(), &Device::Cpu).unwrap()
        })
        .collect();
    Tensor::cat(&xs, 0).unwrap()
}

fn argmax(logits: &Tensor) -> Vec<u32> {
    logits.argmax(D::Minus1).unwrap().to_vec1().unwrap()
}

#[test]
fn mobilenet_v2_matches_pytorch_on_stored_inputs() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let want = fixtures::load_golden(&shared, "backbones_expected.safetensors");
    let x = golden_batch(&shared);
    for (path, net) in on_every_path(BackboneKind::MobileNetV2) {
        let map = net.forward(&x).unwrap();
        let (max, _) = fixtures::abs_diff(&map, &want["mbv2_map"]);
        eprintln!("{path} mbv2_map: max abs diff {max:.3e}");
        assert!(max <= 2e-4, "{path} mbv2_map max abs diff {max}");
        let gap = map.mean((2, 3)).unwrap();
        let (max, _) = fixtures::abs_diff(&gap, &want["mbv2_gap"]);
        eprintln!("{path} mbv2_gap: max abs diff {max:.3e}");
        assert!(max <= 1e-4, "{path} mbv2_gap max abs diff {max}");
    }
}

#[test]
fn efficientnet_lite0_matches_pytorch_on_stored_inputs() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let want = fixtures::load_golden(&shared, "backbones_expected.safetensors");
    let x = golden_batch(&shared);
    let classifier = lite0_classifier();
    for (path, net) in on_every_path(BackboneKind::EfficientNetLite0) {
        let map = net.forward(&x).unwrap();
        let (max, _) = fixtures::abs_diff(&map, &want["lite0_map"]);
        eprintln!("{path} lite0_map: max abs diff {max:.3e}");
        assert!(max <= 2e-4, "{path} lite0_map max abs diff {max}");
        let logits = classifier.forward(&map).unwrap();
        let (max, _) = fixtures::abs_diff(&logits, &want["lite0_logits"]);
        eprintln!("{path} lite0_logits: max abs diff {max:.3e}");
        assert!(max <= 1e-4, "{path} lite0_logits max abs diff {max}");
        let top1: Vec<i64> = want["lite0_top1"].to_vec1().unwrap();
        let got: Vec<i64> = argmax(&logits).into_iter().map(i64::from).collect();
        assert_eq!(got, top1, "{path}");
    }
}

#[test]
fn backbones_end_to_end_from_image_files() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let want = fixtures::load_golden(&shared, "backbones_expected.safetensors");
    let x = from_files(&shared);
    let map = load(BackboneKind::EfficientNetLite0).forward(&x).unwrap();
    let logits = lite0_classifier().forward(&map).unwrap();
    let (max, _) = fixtures::abs_diff(&logits, &want["lite0_logits"]);
    eprintln!("lite0_logits end to end: max abs diff {max:.3e}");
    assert!(max <= 0.5, "lite0_logits end to end max abs diff {max}");
    let top1: Vec<i64> = want["lite0_top1"].to_vec1().unwrap();
    let got: Vec<i64> = argmax(&logits).into_iter().map(i64::from).collect();
    assert_eq!(got, top1);

    let gap = load(BackboneKind::MobileNetV2)
        .forward(&x)
        .unwrap()
        .mean((2, 3))
        .unwrap();
    let cos = cosine_rows(&gap, &want["mbv2_gap"]);
    eprintln!("mbv2_gap end to end cosine {cos:?}");
    assert!(cos.iter().all(|&c| c >= 0.999), "mbv2_gap cosine {cos:?}");
}

fn cosine_rows(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let dot = (a * b).unwrap().sum(1).unwrap();
    let na = a.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
    let nb = b.sqr().unwrap().sum(1).unwrap().sqrt().unwrap();
    (dot / (na * nb).unwrap()).unwrap().to_vec1().unwrap()
}

#[test]
fn lite0_recognises_a_tshirt_as_jersey() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let path = shared.join("data/fashion-product-images/images_224/10030.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let x = preprocess_bytes(&bytes, &PreprocessConfig::default(), &Device::Cpu).unwrap();
    let map = load(BackboneKind::EfficientNetLite0).forward(&x).unwrap();
    let probs =
        candle_nn::ops::softmax(&lite0_classifier().forward(&map).unwrap(), D::Minus1).unwrap();
    let top = argmax(&probs)[0];
    let p: f32 = probs
        .get(0)
        .unwrap()
        .get(top as usize)
        .unwrap()
        .to_scalar()
        .unwrap();
    eprintln!("10030.jpg: top-1 {top} p {p:.4}");
    assert_eq!(top, 610, "expected ImageNet class 610 (jersey), got {top}");
    assert!(p > 0.9, "p(jersey) = {p}");
}

#[test]
fn feature_maps_follow_the_input_size() {
    let x = Tensor::randn(0f32, 1.0, (1, 3, 225, 300), &Device::Cpu).unwrap();
    for kind in [BackboneKind::MobileNetV2, BackboneKind::EfficientNetLite0] {
        if kind
            .imagenet_weights_path(&fixtures::weights_dirs())
            .is_err()
        {
            eprintln!("SKIP {kind}: weights not found");
            continue;
        }
        for (path, net) in on_every_path(kind) {
            let y = net.forward(&x).unwrap();
            assert_eq!(y.dims(), &[1, 1280, 8, 10], "{kind} {path}");
        }
    }
}
