//! Parity of the checkpoint reader and the ASEN heads against the PyTorch
//! golden fixtures in `<workspace>/../shared/golden` (see its README).
//! Skips with a notice when the fixtures are absent, fails instead when
//! `ASEN_REQUIRE_SHARED=1`.

use std::path::PathBuf;

use asen_models::{Checkpoint, CheckpointFormat, HeadKind};

fn golden_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ASEN_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")))
        .join("golden");
    if dir.join("README.md").exists() {
        return Some(dir);
    }
    if std::env::var("ASEN_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "ASEN_REQUIRE_SHARED=1 but the golden fixtures are missing at {}",
            dir.display()
        );
    }
    eprintln!("SKIP: golden fixtures not found at {}", dir.display());
    None
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
