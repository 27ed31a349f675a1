//! Hostile or broken inputs give one-line errors naming the problem, never a panic.

mod fixtures;

use asen_models::{decode_image, preprocess_bytes, ModelError, PreprocessConfig};
use candle_core::Device;

fn err(bytes: &[u8]) -> ModelError {
    preprocess_bytes(bytes, &PreprocessConfig::default(), &Device::Cpu).unwrap_err()
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

/// A PNG signature plus a valid IHDR declaring `w` x `h` RGB8, an IDAT of
/// garbage and no IEND: the pixels could never be decoded.
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

#[test]
fn empty_input_is_unsupported() {
    let e = err(b"");
    assert!(matches!(e, ModelError::UnsupportedImage { .. }), "{e:?}");
    assert!(e.to_string().contains("empty input (0 bytes)"), "{e}");
}

#[test]
fn text_file_is_unsupported() {
    let e = err(b"id,articleType,baseColour\n10030,Tshirts,Black\n");
    assert!(matches!(e, ModelError::UnsupportedImage { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("text") && msg.contains("expected JPEG, PNG or WebP"),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
}

#[test]
fn other_formats_are_named() {
    let e = err(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;");
    assert!(e.to_string().contains("image/gif"), "{e}");
}

#[test]
fn declared_bomb_is_refused_before_decoding() {
    let e = err(&png_header(40_000, 40_000));
    match &e {
        ModelError::ImageTooLarge {
            width,
            height,
            max_pixels,
            ..
        } => {
            assert_eq!((*width, *height), (40_000, 40_000));
            assert_eq!(*max_pixels, PreprocessConfig::DEFAULT_MAX_PIXELS);
        }
        other => panic!("expected ImageTooLarge, got {other:?}"),
    }
    assert!(e.to_string().contains("40000x40000"), "{e}");
    // Under the limit, the same garbage pixel data is a decode error instead.
    let e = decode_image(&png_header(64, 64), &PreprocessConfig::default()).unwrap_err();
    assert!(matches!(e, ModelError::ImageDecode { .. }), "{e:?}");
}

#[test]
fn truncated_jpeg_is_a_decode_error() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let bytes = std::fs::read(shared.join("golden/images/10030.jpg")).unwrap();
    for cut in [3, 20, 300, bytes.len() / 2, bytes.len() - 10] {
        let e = err(&bytes[..cut]);
        assert!(
            matches!(e, ModelError::ImageDecode { .. }),
            "cut at {cut}: {e:?}"
        );
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
