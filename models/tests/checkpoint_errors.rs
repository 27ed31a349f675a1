//! Broken checkpoints give one error line naming the file and the problem.
//! The broken files are written here from the good golden ones (skipped with a
//! notice when the fixtures are absent, failing when `ASEN_REQUIRE_SHARED=1`).

mod fixtures;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use asen_models::{Checkpoint, ModelError};
use candle_core::{DType, Device, Tensor};

/// `<shared>/golden`, or `None` after the skip notice (see `fixtures::shared_dir`).
fn golden_dir() -> Option<PathBuf> {
    fixtures::shared_dir().map(|d| d.join("golden"))
}

/// The error as one line; asserts it names the file.
fn one_line(e: ModelError, file: &Path) -> String {
    let msg = e.to_string();
    println!("{msg}");
    assert!(!msg.contains('\n'), "multi-line error: {msg}");
    assert!(
        msg.contains(&file.display().to_string()),
        "error does not name {}: {msg}",
        file.display()
    );
    msg
}

fn format_error(path: &Path) -> String {
    let e = Checkpoint::load(path).unwrap_err();
    assert!(matches!(e, ModelError::CheckpointFormat { .. }), "{e:?}");
    one_line(e, path)
}

#[test]
fn not_a_checkpoint_empty_and_unsupported_opcode() {
    let tmp = tempfile::tempdir().unwrap();
    let text = tmp.path().join("notes.pth");
    std::fs::write(&text, "hello, not a checkpoint").unwrap();
    let msg = format_error(&text);
    assert!(
        msg.contains("not a pytorch or safetensors checkpoint (starts with bytes 68 65 6c 6c"),
        "{msg}"
    );

    let empty = tmp.path().join("empty.pth");
    std::fs::write(&empty, b"").unwrap();
    assert!(format_error(&empty).ends_with("the file is empty"));

    let bad_op = tmp.path().join("opcode.pth");
    std::fs::write(&bad_op, [0x80, 0x02, 0xff, 0x00]).unwrap();
    let msg = format_error(&bad_op);
    assert!(
        msg.contains("unsupported pickle opcode 0xff at offset 2"),
        "{msg}"
    );

    let missing = tmp.path().join("missing.pth");
    let e = Checkpoint::load(&missing).unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }));
    one_line(e, &missing);
}

#[test]
fn truncated_files() {
    let Some(dir) = golden_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Legacy: decompress, cut inside the raw storages, write uncompressed.
    let gz = std::fs::read(dir.join("asen_v1_fashionai.pth.gz")).unwrap();
    let mut legacy = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut legacy)
        .unwrap();
    assert_eq!(legacy.len(), 55_192_722);
    let cut = tmp.path().join("v1_truncated.pth");
    std::fs::write(&cut, &legacy[..legacy.len() - 1000]).unwrap();
    let msg = format_error(&cut);
    assert!(msg.contains("truncated file: storage"), "{msg}");
    // Cut inside the object pickle.
    std::fs::write(&cut, &legacy[..2000]).unwrap();
    let msg = format_error(&cut);
    assert!(msg.contains("object pickle: truncated pickle"), "{msg}");
    // Truncated gzip stream.
    let cut_gz = tmp.path().join("v1_truncated.pth.gz");
    std::fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    let msg = format_error(&cut_gz);
    assert!(msg.contains("corrupt or truncated gzip stream"), "{msg}");
    // Truncated zip archive (central directory lost).
    let zip = std::fs::read(dir.join("asen_v2_head.pth")).unwrap();
    let cut_zip = tmp.path().join("v2_truncated.pth");
    std::fs::write(&cut_zip, &zip[..zip.len() / 2]).unwrap();
    let msg = format_error(&cut_zip);
    assert!(msg.contains("not a readable zip archive"), "{msg}");
    // Truncated safetensors.
    let st = std::fs::read(dir.join("asen_v2_expected.safetensors")).unwrap();
    let cut_st = tmp.path().join("truncated.safetensors");
    std::fs::write(&cut_st, &st[..st.len() - 100]).unwrap();
    let msg = format_error(&cut_st);
    assert!(msg.contains("invalid safetensors"), "{msg}");
}

/// Save the v2 head's tensors, edited by `edit`, as safetensors and load the head.
fn v2_head_error(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> String {
    let good = Checkpoint::load(dir.join("asen_v2_head.pth")).unwrap();
    let mut tensors: HashMap<String, Tensor> = good.tensors().clone().into_iter().collect();
    edit(&mut tensors);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("edited.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    let e = ckpt.load_head(&Device::Cpu).unwrap_err();
    assert!(matches!(e, ModelError::CheckpointMismatch { .. }), "{e:?}");
    one_line(e, &path)
}

#[test]
fn missing_key() {
    let Some(dir) = golden_dir() else { return };
    let msg = v2_head_error(&dir, |t| {
        t.remove("embeddingnet.fc2.bias");
    });
    assert!(
        msg.ends_with("does not fit the asen_v2 model: 1 missing (fc2.bias [1024])"),
        "{msg}"
    );
}

#[test]
fn wrong_shaped_tensor() {
    let Some(dir) = golden_dir() else { return };
    let msg = v2_head_error(&dir, |t| {
        let w = t["embeddingnet.conv1.weight"].reshape((512, 1024)).unwrap();
        t.insert("embeddingnet.conv1.weight".into(), w);
    });
    assert!(
        msg.ends_with("1 mis-shaped (conv1.weight: expected [512, 1024, 1, 1], found [512, 1024])"),
        "{msg}"
    );
}

#[test]
fn unexpected_key() {
    let Some(dir) = golden_dir() else { return };
    let msg = v2_head_error(&dir, |t| {
        t.insert(
            "embeddingnet.extra.weight".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(msg.ends_with("1 unexpected (extra.weight [3])"), "{msg}");
}

#[test]
fn several_problems_in_one_report() {
    let Some(dir) = golden_dir() else { return };
    let msg = v2_head_error(&dir, |t| {
        t.remove("embeddingnet.attr_transform2.weight");
        t.remove("embeddingnet.img_bn1.running_var");
        t.insert(
            "embeddingnet.fc1.bias".into(),
            Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap(),
        );
        t.insert(
            "embeddingnet.attnnet.conv.weight".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        msg.contains("2 missing (attr_transform2.weight [512, 512], img_bn1.running_var [512])"),
        "{msg}"
    );
    assert!(
        msg.contains("1 unexpected (attnnet.conv.weight [1])"),
        "{msg}"
    );
    assert!(
        msg.contains("1 mis-shaped (fc1.bias: expected [512], found [7])"),
        "{msg}"
    );
}
