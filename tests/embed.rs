//! `asen embed`, `asen inspect` and `asen convert` through the real binary:
//! the official checkpoint converts and embeds, and every kind of bad input
//! ends with exit code 2 and one line naming the problem.

use std::path::PathBuf;
use std::process::{Command, Output};

fn asen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run asen")
}

/// The shared fixtures with the golden files (skip-or-fail: `asen_test_support::shared_dir`).
fn shared() -> Option<PathBuf> {
    asen_test_support::shared_dir(&["golden"])
}

/// Exit code 2 and exactly one stderr line containing every `needle`.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {:?}", lines[0]);
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn convert_inspect_and_embed_the_official_checkpoint() {
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("fashionai-v1");
    let ckpt = shared.join("golden/asen_v1_fashionai.pth.gz");
    let names = "skirt,coat,collar_design,lapel,neckline,pant,sleeve,neck_design";
    let out = asen(&[
        "convert",
        ckpt.to_str().unwrap(),
        model.to_str().unwrap(),
        "--attributes",
        names,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = asen(&["inspect", model.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("asen_v1") && text.contains("resnet50_layer3"),
        "{text}"
    );
    assert!(text.contains("collar_design"), "{text}");

    let image = shared.join("golden/images/10030.jpg");
    let out = asen(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "-a",
        "collar_design",
        "--attention",
        image.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["attribute"], "collar_design");
    assert_eq!(line["dim"], 1024);
    let v: Vec<f64> = serde_json::from_value(line["vector"].clone()).unwrap();
    let norm: f64 = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    // The converted model gives the golden embedding (attribute 2 = column 2 is not
    // stored; attribute 4 is): check attribute "neckline" = index 4.
    let out = asen(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "-a",
        "neckline",
        image.to_str().unwrap(),
    ]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f32> = serde_json::from_value(line["vector"].clone()).unwrap();
    let expected = candle_core::safetensors::load(
        shared.join("golden/asen_v1_expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap()["emb_c4"]
        .to_vec2::<f32>()
        .unwrap();
    let cos: f32 = got.iter().zip(&expected[0]).map(|(a, b)| a * b).sum();
    assert!(cos >= 0.9999, "cosine to PyTorch {cos}");
}

#[test]
fn bad_images_exit_2_with_one_line() {
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let model = shared.join("golden/asen_v1_fashionai.pth.gz");
    let jpeg = std::fs::read(shared.join("golden/images/10030.jpg")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("empty.jpg", vec![], &["empty.jpg", "0 bytes"]),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 3].to_vec(),
            &["truncated.jpg"],
        ),
        (
            "notes.txt",
            b"just some text\n".to_vec(),
            &["notes.txt", "text"],
        ),
        (
            "bomb.png",
            png_header(40_000, 40_000),
            &["bomb.png", "40000x40000"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = asen(&[
            "embed",
            "--model",
            model.to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        assert_one_line_error(&out, needles);
    }
    let out = asen(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "-a",
        "collar",
        shared.join("golden/images/10030.jpg").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["unknown attribute \"collar\"", "attr_0"]);
}

#[test]
fn bad_checkpoints_exit_2_with_one_line() {
    let Some(shared) = shared() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = shared.join("golden/images/10030.jpg");
    let image = image.to_str().unwrap();

    let text = tmp.path().join("notes.pth");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let out = asen(&["embed", "--model", text.to_str().unwrap(), image]);
    assert_one_line_error(
        &out,
        &["notes.pth", "not a pytorch or safetensors checkpoint"],
    );
    let out = asen(&["inspect", text.to_str().unwrap()]);
    assert_one_line_error(&out, &["notes.pth"]);

    // A model directory whose weights lost one key or have one wrong shape.
    let model = tmp.path().join("m");
    let out = asen(&[
        "convert",
        shared.join("golden/asen_v2_head.pth").to_str().unwrap(),
        model.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let weights = model.join("model.safetensors");
    let good = candle_core::safetensors::load(&weights, &candle_core::Device::Cpu).unwrap();

    let mut missing = good.clone();
    missing.remove("fc2.bias");
    candle_core::safetensors::save(&missing, &weights).unwrap();
    let out = asen(&["embed", "--model", model.to_str().unwrap(), image]);
    assert_one_line_error(&out, &["missing", "fc2.bias"]);

    let mut misshaped = good.clone();
    let w = misshaped["conv1.weight"].clone();
    misshaped.insert("conv1.weight".into(), w.flatten_from(1).unwrap());
    candle_core::safetensors::save(&misshaped, &weights).unwrap();
    let out = asen(&["embed", "--model", model.to_str().unwrap(), image]);
    assert_one_line_error(&out, &["conv1.weight", "expected [512, 1024, 1, 1]"]);
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose IHDR declares `w` x `h` pixels, followed by a scrap of IDAT.
fn png_header(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    let mut idat = b"IDAT".to_vec();
    idat.extend_from_slice(&[0x78, 0x9c, 1, 2, 3, 4]);
    png.extend_from_slice(&6u32.to_be_bytes());
    png.extend_from_slice(&idat);
    png.extend_from_slice(&crc32(&idat).to_be_bytes());
    png
}
