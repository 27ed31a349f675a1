//! Structured random inputs (proptest) for every parser of `asen-models` that reads outside
//! bytes: image decoding under the pixel and memory limits, checkpoints (safetensors, gzip,
//! legacy pickle, zip), and model cards. Each target mutates valid seeds (byte overwrites,
//! insertions, truncation) and also feeds raw random bytes; the property is that the parser
//! answers `Ok` or `Err` and never panics, and that an accepted image is within the limits.
//!
//! Each target runs through `asen_fuzz::fuzz`: its case count in the normal test run
//! (`PROPTEST_CASES` overrides it), or as many inputs as fit in `ASEN_FUZZ_SECONDS` (the CI
//! fuzz step). A failure is written to `tests/fuzz_inputs.proptest-regressions` and replayed
//! first from then on.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};

use asen_fuzz::fuzz;
use asen_models::{decode_cost, decode_image, Checkpoint, ModelCard, PreprocessConfig};
use candle_core::{Device, Tensor};
use proptest::prelude::*;

/// A mutation of a seed: byte overwrites at relative offsets, an insertion, a cut.
#[derive(Debug, Clone)]
struct Mutation {
    writes: Vec<(f64, u8)>,
    insert: Option<(f64, Vec<u8>)>,
    cut: Option<f64>,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    (
        prop::collection::vec((0.0..1.0f64, any::<u8>()), 0..8),
        prop::option::of((0.0..1.0f64, prop::collection::vec(any::<u8>(), 1..16))),
        prop::option::weighted(0.2, 0.0..1.0f64),
    )
        .prop_map(|(writes, insert, cut)| Mutation {
            writes,
            insert,
            cut,
        })
}

fn apply(seed: &[u8], m: &Mutation) -> Vec<u8> {
    let mut b = seed.to_vec();
    let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len.saturating_sub(1));
    for (f, byte) in &m.writes {
        if !b.is_empty() {
            let i = at(*f, b.len());
            b[i] = *byte;
        }
    }
    if let Some((f, bytes)) = &m.insert {
        let i = at(*f, b.len() + 1);
        b.splice(i..i, bytes.iter().copied());
    }
    if let Some(f) = m.cut {
        b.truncate(at(f, b.len() + 1));
    }
    b
}

fn encode(img: image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), format).unwrap();
    out
}

/// Small valid images: RGB8 PNG, 16-bit RGBA PNG, grey JPEG, RGB JPEG, lossless WebP.
fn image_seeds() -> Vec<Vec<u8>> {
    let rgb = image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 10, y as u8 * 15, 99]));
    let rgba16 = image::ImageBuffer::<image::Rgba<u16>, _>::from_fn(8, 8, |x, y| {
        image::Rgba([x as u16 * 999, y as u16 * 555, 7, 65535])
    });
    let grey = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * y) as u8]));
    vec![
        encode(
            image::DynamicImage::ImageRgb8(rgb.clone()),
            image::ImageFormat::Png,
        ),
        encode(
            image::DynamicImage::ImageRgba16(rgba16),
            image::ImageFormat::Png,
        ),
        encode(
            image::DynamicImage::ImageLuma8(grey),
            image::ImageFormat::Jpeg,
        ),
        encode(
            image::DynamicImage::ImageRgb8(rgb.clone()),
            image::ImageFormat::Jpeg,
        ),
        encode(
            image::DynamicImage::ImageRgb8(rgb),
            image::ImageFormat::WebP,
        ),
    ]
}

/// Tight limits, so a mutated header that declares a huge image is refused before any
/// allocation (and the test stays fast).
const LIMITS: PreprocessConfig = PreprocessConfig {
    size: 224,
    max_pixels: 1 << 16,
    max_decode_bytes: 4 << 20,
};

fn check_image(bytes: &[u8]) {
    let cost = decode_cost(bytes, &LIMITS);
    if let Ok(cost) = &cost {
        assert!(cost.bytes <= LIMITS.max_decode_bytes, "{cost:?}");
    }
    if let Ok(img) = decode_image(bytes, &LIMITS) {
        let (w, h) = img.dimensions();
        assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels);
        assert!(cost.is_ok(), "decoded, yet the header check refused it");
    }
}

/// A mutated seed image, or a format's magic followed by random bytes.
fn image_bytes() -> impl Strategy<Value = Vec<u8>> {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let mutated = (0..5usize, mutation())
        .prop_map(|(seed, m)| apply(&SEEDS.get_or_init(image_seeds)[seed], &m));
    let behind_a_magic = (
        prop::sample::select(vec![
            &b"\x89PNG\r\n\x1a\n"[..],
            &b"\xff\xd8\xff"[..],
            &b"RIFF\0\0\0\0WEBPVP8L"[..],
            &b""[..],
        ]),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(magic, tail)| [magic, &tail].concat());
    prop_oneof![mutated, behind_a_magic]
}

#[test]
fn image_decoding_survives_mutated_and_random_images() {
    fuzz("image_decoding", 4000, image_bytes(), |bytes| {
        check_image(&bytes);
        Ok(())
    });
}

fn safetensors_seed() -> Vec<u8> {
    let tensors: HashMap<String, Tensor> = [
        (
            "head.w".to_string(),
            Tensor::arange(0f32, 12., &Device::Cpu)
                .unwrap()
                .reshape((3, 4))
                .unwrap(),
        ),
        (
            "head.b".to_string(),
            Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seed.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    std::fs::read(path).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Checkpoint seeds: safetensors, its gzip, and, with the shared fixtures, the first 4 kB of
/// the official v1 legacy pickle stream (the object pickle) and the official v2 zip head.
fn checkpoint_seeds() -> Vec<Vec<u8>> {
    let st = safetensors_seed();
    let mut seeds = vec![gzip(&st), st];
    if let Some(shared) = asen_test_support::shared_dir(&[
        "golden/asen_v1_fashionai.pth.gz",
        "golden/asen_v2_head.pth",
    ]) {
        let gz = std::fs::read(shared.join("golden/asen_v1_fashionai.pth.gz")).unwrap();
        let mut head = vec![0u8; 4096];
        flate2::read::GzDecoder::new(gz.as_slice())
            .read_exact(&mut head)
            .unwrap();
        seeds.push(head);
        seeds.push(std::fs::read(shared.join("golden/asen_v2_head.pth")).unwrap());
    }
    seeds
}

/// A mutated seed checkpoint (1 in 4), or a format's magic followed by random bytes.
fn checkpoint_bytes() -> impl Strategy<Value = Vec<u8>> {
    static SEEDS: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    let mutated = (0..4usize, mutation()).prop_map(|(seed, m)| {
        let seeds = SEEDS.get_or_init(checkpoint_seeds);
        apply(&seeds[seed % seeds.len()], &m)
    });
    let behind_a_magic = (
        prop::sample::select(vec![
            &b"\x1f\x8b"[..],
            &b"PK\x03\x04"[..],
            &b"\x80\x02"[..],
            &b"\x08\0\0\0\0\0\0\0{"[..],
            &b""[..],
        ]),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(magic, tail)| [magic, &tail].concat());
    prop_oneof![1 => mutated, 3 => behind_a_magic]
}

#[test]
fn checkpoint_reading_survives_mutated_and_random_checkpoints() {
    fuzz("checkpoint_reading", 2600, checkpoint_bytes(), |bytes| {
        if let Ok(ckpt) = Checkpoint::from_bytes("fuzz.pth", bytes) {
            let _ = ckpt.variant();
            let _ = ckpt.normalised();
        }
        Ok(())
    });
}

#[test]
fn model_cards_survive_mutated_json() {
    let seed = include_bytes!("../default/card.json");
    fuzz("model_cards", 2000, mutation(), |m| {
        if let Ok(card) = serde_json::from_slice::<ModelCard>(&apply(seed, &m)) {
            let _ = card.validate();
        }
        Ok(())
    });
}
