//! Parity of the checkpoint reader and the ASEN heads against the PyTorch
//! golden fixtures in `<workspace>/../shared/golden` (see its README).
//! Skips with a notice when the fixtures are absent, fails instead when
//! `ASEN_REQUIRE_SHARED=1`.

mod fixtures;

use std::path::PathBuf;

use asen_models::{Checkpoint, CheckpointFormat, HeadKind};

/// `<shared>/golden`, or `None` after the skip notice (see `fixtures::shared_dir`).
fn golden_dir() -> Option<PathBuf> {
    fixtures::shared_dir().map(|d| d.join("golden"))
}

#[test]
fn legacy_gz_v1_checkpoint_reads_272_tensors() {
    let Some(dir) = golden_dir() else { return };
    let ckpt = Checkpoint::load(dir.join("asen_v1_fashionai.pth.gz")).unwrap();
    assert_eq!(ckpt.format(), CheckpointFormat::Legacy);
    assert!(ckpt.gzipped());
    let t = ckpt.tensors();
    assert_eq!(t.len(), 272);
    assert!(t.keys().all(|k| k.starts_with("embeddingnet.")));
    let dims = |k: &str| t[k].dims().to_vec();
    assert_eq!(dims("embeddingnet.backbonenet.conv1.weight"), [64, 3, 7, 7]);
    assert_eq!(dims("embeddingnet.backbonenet.fc.weight"), [1000, 2048]);
    assert_eq!(
        dims("embeddingnet.backbonenet.layer3.5.bn3.running_var"),
        [1024]
    );
    assert_eq!(
        dims("embeddingnet.backbonenet.layer2.0.downsample.0.weight"),
        [512, 256, 1, 1]
    );
    assert_eq!(dims("embeddingnet.mask_fc1.weight"), [512, 8]);
    assert_eq!(dims("embeddingnet.mask_fc2.weight"), [1024, 8]);
    assert_eq!(dims("embeddingnet.conv1.weight"), [512, 1024, 1, 1]);
    assert_eq!(dims("embeddingnet.conv2.bias"), [1]);
    let nbt = &t["embeddingnet.backbonenet.bn1.num_batches_tracked"];
    assert_eq!(nbt.dims(), [0usize; 0]);
    assert_eq!(nbt.dtype(), candle_core::DType::I64);
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 43750);
    assert_eq!(ckpt.metadata().get("epoch").map(String::as_str), Some("7"));
    assert_eq!(ckpt.variant().unwrap(), HeadKind::AsenV1);
    // 13,753,897 learnable parameters as the official log counts them (fc
    // included, BatchNorm buffers excluded); 15,296 BN channels x 2 running
    // stats + 43 num_batches_tracked scalars more in the file.
    assert_eq!(ckpt.parameter_count(), 13_753_897);
    assert_eq!(ckpt.element_count(), 13_753_897 + 2 * 15_296 + 43);
    // Normalised: prefix stripped, fc and num_batches_tracked dropped.
    let n = ckpt.normalised().unwrap();
    assert_eq!(n.len(), 272 - 2 - 43);
    assert!(n.contains_key("backbonenet.layer3.5.conv3.weight"));
    assert!(n.contains_key("feature_fc.weight"));
    assert_eq!(ckpt.head_tensors().unwrap().len(), 12);
    let backbone = ckpt.backbone_tensors().unwrap();
    assert_eq!(backbone.len(), 43 + 43 * 4);
    assert_eq!(backbone["layer1.0.downsample.1.running_mean"].dims(), [256]);
}

#[test]
fn zip_v2_and_asenpp_checkpoints_read_16_and_13_tensors() {
    let Some(dir) = golden_dir() else { return };
    let v2 = Checkpoint::load(dir.join("asen_v2_head.pth")).unwrap();
    assert_eq!(v2.format(), CheckpointFormat::Zip);
    assert_eq!(v2.tensors().len(), 16);
    assert_eq!(
        v2.tensors()["embeddingnet.attr_embedding.weight"].dims(),
        [8, 512]
    );
    assert_eq!(v2.tensors()["embeddingnet.fc1.weight"].dims(), [512, 1536]);
    assert_eq!(v2.variant().unwrap(), HeadKind::AsenV2);
    assert_eq!(v2.metadata().get("epoch").map(String::as_str), Some("40"));
    let pp = Checkpoint::load(dir.join("asenpp_global_head.pth")).unwrap();
    assert_eq!(pp.format(), CheckpointFormat::Zip);
    assert_eq!(pp.tensors().len(), 13);
    assert_eq!(
        pp.tensors()["choices.global.attnnet.conv.weight"].dims(),
        [512, 1024, 1, 1]
    );
    assert_eq!(pp.variant().unwrap(), HeadKind::AsenPpGlobal);
    assert_eq!(pp.metadata().get("mAP").map(String::as_str), Some("0.6468"));
    let n = pp.normalised().unwrap();
    assert!(n.contains_key("attr_embedding.weight") && n.contains_key("feature_fc.bias"));
}

#[test]
fn zip_reader_matches_candle_pickle_reader() {
    let Some(dir) = golden_dir() else { return };
    let path = dir.join("asen_v2_head.pth");
    let ours = Checkpoint::load(&path).unwrap();
    let theirs = candle_core::pickle::read_all_with_key(&path, Some("state_dict")).unwrap();
    assert_eq!(theirs.len(), ours.tensors().len());
    for (name, t) in theirs {
        let diff = (ours.tensors()[&name]
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            - t.to_dtype(candle_core::DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        assert_eq!(diff, 0.0, "{name}");
    }
}

fn expected(
    dir: &std::path::Path,
    file: &str,
) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join(file), &candle_core::Device::Cpu).unwrap()
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Run `head` on the stored `feat` for attributes 0, 4, 7 and compare
/// `emb_c*` (atol 1e-5) and `attn_c*` (atol 1e-6); `forward_attributes` must
/// give the same numbers as `forward`.
fn check_head(
    head: &asen_models::Head,
    feat: &candle_core::Tensor,
    exp: &std::collections::HashMap<String, candle_core::Tensor>,
    label: &str,
) {
    let dev = candle_core::Device::Cpu;
    let shared = head.forward_attributes(feat, &[0, 4, 7]).unwrap();
    for (i, c) in [0u32, 4, 7].into_iter().enumerate() {
        let attr = candle_core::Tensor::full(c, 6, &dev).unwrap();
        let out = head.forward(feat, &attr, false).unwrap();
        let attn = out.attention.as_ref().unwrap();
        let d_emb = max_abs_diff(&out.embedding, &exp[&format!("emb_c{c}")]);
        let d_attn = max_abs_diff(attn, &exp[&format!("attn_c{c}")]);
        println!("{label} c={c}: emb max abs diff {d_emb:.2e}, attn {d_attn:.2e}");
        assert!(d_emb <= 1e-5, "{label} emb_c{c}: {d_emb}");
        assert!(d_attn <= 1e-6, "{label} attn_c{c}: {d_attn}");
        assert!(max_abs_diff(&shared[i].embedding, &out.embedding) <= 1e-6);
        assert!(max_abs_diff(shared[i].attention.as_ref().unwrap(), attn) <= 1e-7);
    }
    // Mixed attributes in one batch: row b uses attribute attrs[b].
    let attrs = [0u32, 4, 7, 7, 4, 0];
    let out = head
        .forward(
            feat,
            &candle_core::Tensor::new(&attrs, &dev).unwrap(),
            false,
        )
        .unwrap();
    for (b, c) in attrs.iter().enumerate() {
        let want = exp[&format!("emb_c{c}")].get(b).unwrap();
        assert!(
            max_abs_diff(&out.embedding.get(b).unwrap(), &want) <= 1e-5,
            "{label} mixed row {b}"
        );
    }
}

#[test]
fn v1_head_matches_pytorch_on_stored_features() {
    let Some(dir) = golden_dir() else { return };
    let ckpt = Checkpoint::load(dir.join("asen_v1_fashionai.pth.gz")).unwrap();
    let (head, cfg) = ckpt.load_head(&candle_core::Device::Cpu).unwrap();
    assert_eq!(head.kind(), HeadKind::AsenV1);
    assert_eq!(cfg, asen_models::HeadConfig::asen(1024, 8));
    let exp = expected(&dir, "asen_v1_expected.safetensors");
    check_head(&head, &exp["feat"], &exp, "v1");
}

#[test]
fn v2_head_matches_pytorch_on_stored_features() {
    let Some(dir) = golden_dir() else { return };
    let ckpt = Checkpoint::load(dir.join("asen_v2_head.pth")).unwrap();
    let (head, cfg) = ckpt.load_head(&candle_core::Device::Cpu).unwrap();
    assert_eq!(head.kind(), HeadKind::AsenV2);
    assert!(!cfg.feature_fc);
    assert_eq!(cfg.embedding_dim, 1024);
    let feat = expected(&dir, "asen_v1_expected.safetensors")
        .remove("feat")
        .unwrap();
    check_head(
        &head,
        &feat,
        &expected(&dir, "asen_v2_expected.safetensors"),
        "v2",
    );
}

#[test]
fn asenpp_global_head_matches_pytorch_on_stored_features() {
    let Some(dir) = golden_dir() else { return };
    let ckpt = Checkpoint::load(dir.join("asenpp_global_head.pth")).unwrap();
    let (head, cfg) = ckpt.load_head(&candle_core::Device::Cpu).unwrap();
    assert_eq!(cfg, asen_models::HeadConfig::asen(1024, 8));
    let feat = expected(&dir, "asen_v1_expected.safetensors")
        .remove("feat")
        .unwrap();
    let exp = expected(&dir, "asenpp_expected.safetensors");
    check_head(&head, &feat, &exp, "asen++");
    let asen_models::Head::AsenPpGlobal(pp) = &head else {
        panic!("not an ASEN++ head")
    };
    for c in [0u32, 4, 7] {
        let attr = candle_core::Tensor::full(c, 6, &candle_core::Device::Cpu).unwrap();
        let (raw, _) = pp.forward_raw(&feat, &attr, false).unwrap();
        let d = max_abs_diff(&raw, &exp[&format!("raw_c{c}")]);
        println!("asen++ c={c}: raw max abs diff {d:.2e}");
        assert!(d <= 1e-4, "raw_c{c}: {d}");
    }
}

#[test]
fn converted_v1_model_directory_reproduces_the_checkpoint() {
    let Some(dir) = golden_dir() else { return };
    let src = dir.join("asen_v1_fashionai.pth.gz");
    let summary = asen_models::inspect_checkpoint(&src).unwrap();
    let text = summary.to_string();
    println!("{text}");
    assert!(text.contains("13,753,897 learnable"), "{text}");
    assert_eq!(summary.parameter_count, 13_753_897);
    // Without fc (2,049,000) and the BN running stats: what the asen model uses.
    assert_eq!(summary.used_parameter_count, 13_753_897 - 2_049_000);
    assert_eq!(summary.backbone_tensor_count, 215);

    let out = tempfile::tempdir().unwrap();
    let names = [
        "skirt_length",
        "sleeve_length",
        "coat_length",
        "pant_length",
        "collar_design",
        "lapel_design",
        "neckline_design",
        "neck_design",
    ];
    let opts = asen_models::ConvertOptions {
        attributes: Some(
            names
                .iter()
                .map(|n| asen_models::AttributeSpec::named(*n))
                .collect(),
        ),
        command: Some("test".into()),
        ..Default::default()
    };
    let card = asen_models::convert_checkpoint(&src, out.path(), &opts).unwrap();
    assert_eq!(card.head, HeadKind::AsenV1);
    assert_eq!(card.backbone, "resnet50_layer3");
    assert_eq!(card.attribute_index("collar_design").unwrap(), 4);
    assert_eq!(
        card.provenance.source_sha256.as_deref().map(str::len),
        Some(64)
    );
    let model = asen_models::ModelDir::load(out.path()).unwrap();
    assert_eq!(model.card, card);
    assert_eq!(model.tensors().len(), 272 - 2 - 43);
    assert!(model
        .tensors()
        .contains_key("backbonenet.layer3.5.bn3.weight"));
    assert!(model.has_backbone().unwrap());
    let head = model.head(&candle_core::Device::Cpu).unwrap();
    let exp = expected(&dir, "asen_v1_expected.safetensors");
    check_head(&head, &exp["feat"], &exp, "v1 converted");
    // Wrong number of attribute names.
    let bad = asen_models::ConvertOptions {
        attributes: Some(vec![asen_models::AttributeSpec::named("a")]),
        ..Default::default()
    };
    let e = asen_models::convert_checkpoint(&src, out.path(), &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 attribute names given but checkpoint"), "{e}");
}

#[test]
fn converted_head_only_v2_and_asenpp_directories_reproduce_the_outputs() {
    let Some(dir) = golden_dir() else { return };
    let feat = expected(&dir, "asen_v1_expected.safetensors")
        .remove("feat")
        .unwrap();
    for (file, exp_file, kind) in [
        (
            "asen_v2_head.pth",
            "asen_v2_expected.safetensors",
            HeadKind::AsenV2,
        ),
        (
            "asenpp_global_head.pth",
            "asenpp_expected.safetensors",
            HeadKind::AsenPpGlobal,
        ),
    ] {
        let out = tempfile::tempdir().unwrap();
        let card =
            asen_models::convert_checkpoint(&dir.join(file), out.path(), &Default::default())
                .unwrap();
        assert_eq!(card.head, kind);
        assert_eq!(card.attributes[7].name, "attr_7");
        let notes = card.provenance.notes.clone().unwrap();
        assert!(notes.contains("head only"), "{notes}");
        let model = asen_models::ModelDir::load(out.path()).unwrap();
        assert!(!model.has_backbone().unwrap());
        let head = model.head(&candle_core::Device::Cpu).unwrap();
        assert_eq!(head.kind(), kind);
        check_head(&head, &feat, &expected(&dir, exp_file), file);
    }
}
