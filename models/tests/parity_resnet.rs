//! ResNet-50 `layer3` against PyTorch: the backbone of the golden ASEN v1
//! checkpoint (`asen_v1_fashionai.pth.gz`, `embeddingnet.backbonenet.*`) on
//! the stored inputs `img0..img5` vs `feat` of `asen_v1_expected.safetensors`
//! (golden README sections 3-4, tolerance atol 1e-4).

mod fixtures;

use std::collections::HashMap;

use asen_models::{Backbone, BackboneKind, Checkpoint, KernelPath};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

#[test]
fn resnet50_layer3_matches_pytorch_on_stored_inputs() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let ckpt = Checkpoint::load(shared.join("golden/asen_v1_fashionai.pth.gz")).unwrap();
    let backbone: HashMap<String, Tensor> = ckpt
        .normalised()
        .unwrap()
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("backbonenet.").map(|k| (k.to_string(), t)))
        .collect();
    // 43 convs + 43 BatchNorms x 4 (num_batches_tracked and fc are ignored).
    assert_eq!(backbone.len(), 43 + 43 * 4);
    let vb = VarBuilder::from_tensors(backbone, DType::F32, &Device::Cpu);
    let net = Backbone::new(BackboneKind::ResNet50Layer3, vb).unwrap();
    for path in KernelPath::available() {
        check_against_pytorch(&shared, &net.clone().with_kernels(path).unwrap(), path);
    }
}

/// The stored inputs through `net` (on kernel path `path`) against PyTorch.
fn check_against_pytorch(shared: &std::path::Path, net: &Backbone, path: KernelPath) {
    let inputs = fixtures::load_golden(shared, "preprocess.safetensors");
    let want = fixtures::load_golden(shared, "asen_v1_expected.safetensors");
    // Two batches of three keep peak memory modest while exercising B > 1.
    for start in [0, 3] {
        let x: Vec<Tensor> = (start..start + 3)
            .map(|i| inputs[&format!("img{i}")].clone())
            .collect();
        let feat = net.forward(&Tensor::stack(&x, 0).unwrap()).unwrap();
        let expected = want["feat"].narrow(0, start, 3).unwrap();
        let (max, mean) = fixtures::abs_diff(&feat, &expected);
        eprintln!("{path} resnet feat images {start}..: max {max:.3e} mean {mean:.3e}");
        assert!(
            max <= 1e-4,
            "{path} feat images {start}..{}: max abs diff {max} (mean {mean})",
            start + 3
        );
    }
}
