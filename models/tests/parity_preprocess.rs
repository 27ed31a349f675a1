//! Preprocessing parity with the PyTorch/Pillow pipeline
//! (`/work/shared/golden/preprocess.safetensors`, golden README sections 1-2).

mod fixtures;

use asen_models::{decode_image, preprocess_bytes, resize_and_crop, to_tensor, PreprocessConfig};
use candle_core::{Device, Tensor};
use image::RgbImage;

fn rgb_from_tensor(t: &Tensor) -> RgbImage {
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    let data: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    RgbImage::from_raw(w as u32, h as u32, data).unwrap()
}

#[test]
fn resize_crop_normalise_from_decoded_pixels_is_bit_exact() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let g = fixtures::load_golden(&shared, "preprocess.safetensors");
    for i in 0..6 {
        let rgb = rgb_from_tensor(&g[&format!("rgb{i}")]);
        let crop = resize_and_crop(&rgb, 224);
        let x = to_tensor(&[crop], &Device::Cpu)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let (max, _) = fixtures::abs_diff(&x, &g[&format!("img{i}")]);
        assert_eq!(
            max, 0.0,
            "img{i}: resize + crop + normalise differs by {max}"
        );
    }
}

#[test]
fn antialiased_downscale_matches_pillow_bilinear() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let g = fixtures::load_golden(&shared, "preprocess.safetensors");
    let rgb3 = rgb_from_tensor(&g["rgb3"]);
    let probe = rgb_from_tensor(&g["aa_probe"]);
    // resize_and_crop(112) = PIL's 112x149 resize cropped at top round(37 / 2) = 18.
    let got = resize_and_crop(&rgb3, 112);
    let want = image::imageops::crop_imm(&probe, 0, 18, 112, 112).to_image();
    let mismatched = got
        .as_raw()
        .iter()
        .zip(want.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(mismatched, 0, "aa_probe: {mismatched} bytes differ");
}

#[test]
fn decoded_golden_files_match_pillow_decode() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let g = fixtures::load_golden(&shared, "preprocess.safetensors");
    for (i, path) in fixtures::golden_images(&shared).iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let rgb = decode_image(&bytes, &PreprocessConfig::default()).unwrap();
        let want = rgb_from_tensor(&g[&format!("rgb{i}")]);
        assert_eq!(rgb.dimensions(), want.dimensions(), "{}", path.display());
        let max_level = rgb
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .max()
            .unwrap();
        // Different JPEG decoders (zune-jpeg vs libjpeg-turbo) differ by a
        // few levels; PNG must be identical.
        let bound = if path.extension().is_some_and(|e| e == "png") {
            0
        } else {
            8
        };
        assert!(
            max_level <= bound,
            "{}: max {max_level} levels",
            path.display()
        );
    }
}

#[test]
fn full_preprocessing_from_files_is_within_decoder_tolerance() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let g = fixtures::load_golden(&shared, "preprocess.safetensors");
    for (i, path) in fixtures::golden_images(&shared).iter().enumerate() {
        let bytes = std::fs::read(path).unwrap();
        let x = preprocess_bytes(&bytes, &PreprocessConfig::default(), &Device::Cpu).unwrap();
        let (max, mean) = fixtures::abs_diff(&x.squeeze(0).unwrap(), &g[&format!("img{i}")]);
        assert!(
            mean <= 0.005 && max <= 0.1,
            "{}: mean {mean} max {max}",
            path.display()
        );
    }
}
