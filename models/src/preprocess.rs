//! Image preprocessing: decode under a pixel limit, EXIF orientation, RGB,
//! resize, centre crop and ImageNet normalisation.
//!
//! The pipeline reproduces the evaluation transform of the ASEN training code
//! (`Image.open(p).convert('RGB')`, torchvision `Resize(S)`, `CenterCrop(S)`,
//! `ToTensor()`, `Normalize(mean, std)`), including Pillow's fixed-point
//! bilinear resampling, so that identical decoded pixels give bit-identical
//! tensors.
//!
//! ```no_run
//! # fn main() -> asen_models::Result<()> {
//! use asen_models::{preprocess_bytes, PreprocessConfig};
//! let bytes = std::fs::read("shirt.jpg").unwrap();
//! let x = preprocess_bytes(&bytes, &PreprocessConfig::default(), &candle_core::Device::Cpu)?;
//! assert_eq!(x.dims(), &[1, 3, 224, 224]);
//! # Ok(()) }
//! ```

use std::io::Cursor;

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{ModelError, Result};

/// ImageNet channel means (RGB) used by `Normalize`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB) used by `Normalize`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Options of the preprocessing pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreprocessConfig {
    /// Side of the square model input in pixels (shorter side resized to it,
    /// then centre-cropped). 224 for every ASEN model.
    pub size: usize,
    /// Largest accepted `width * height` as declared in the image header,
    /// checked before any pixel is decoded (decompression-bomb guard).
    pub max_pixels: u64,
    /// Largest memory one decode may take, in bytes: the decoded buffer at the image's own
    /// sample depth and channels, plus the RGB8 copy and a rotated copy when needed
    /// ([`decode_cost`]). Checked from the header, before any pixel is decoded, and given
    /// to the decoder as its allocation limit.
    #[serde(default = "default_max_decode_bytes")]
    pub max_decode_bytes: u64,
}

impl PreprocessConfig {
    /// Default `max_pixels`: 40 megapixels, more than any camera photo
    /// (a 7296x5472 frame) while a decoded RGBA8 buffer stays at 160 MB.
    pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
    /// Default `max_decode_bytes`: 256 MiB, room for a 40-megapixel RGB8 JPEG (120 MB) or
    /// a 35-megapixel RGBA8 PNG (4 + 3 bytes a pixel), but not for a 40-megapixel 16-bit
    /// RGBA PNG (8 + 3 bytes a pixel, 440 MB).
    pub const DEFAULT_MAX_DECODE_BYTES: u64 = 256 << 20;
}

fn default_max_decode_bytes() -> u64 {
    PreprocessConfig::DEFAULT_MAX_DECODE_BYTES
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            size: 224,
            max_pixels: Self::DEFAULT_MAX_PIXELS,
            max_decode_bytes: Self::DEFAULT_MAX_DECODE_BYTES,
        }
    }
}

/// What decoding one image costs, read from its header ([`decode_cost`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeCost {
    /// Declared width.
    pub width: u32,
    /// Declared height.
    pub height: u32,
    /// Bytes per decoded pixel at the image's own depth and channels.
    pub bytes_per_pixel: u8,
    /// Bytes the decode holds at its peak: the decoded buffer, the RGB8 copy unless the
    /// image is RGB8 already, and a second buffer when the EXIF orientation rotates it.
    pub bytes: u64,
}

/// The memory [`decode_image`] will take for `bytes`, from the header alone, after the same
/// format, size and limit checks (so an image refused here is refused by `decode_image`,
/// and one accepted here decodes within `cfg.max_decode_bytes`). Callers use it to reserve
/// memory from a shared budget before decoding.
pub fn decode_cost(bytes: &[u8], cfg: &PreprocessConfig) -> Result<DecodeCost> {
    open_checked(bytes, cfg).map(|(_, cost, _)| cost)
}

/// Guess the format, refuse truncated JPEGs, read the header and check the pixel and memory
/// limits: the decoder, ready to decode within `cfg.max_decode_bytes`.
fn open_checked<'a>(
    bytes: &'a [u8],
    cfg: &PreprocessConfig,
) -> Result<(
    impl ImageDecoder + 'a,
    DecodeCost,
    image::metadata::Orientation,
)> {
    let format = detect_format(bytes)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        // zune-jpeg fills missing scan data with grey; Pillow refuses
        // truncated files, and so do we.
        return Err(ModelError::ImageDecode {
            source_name: None,
            detail: format!(
                "truncated JPEG ({} bytes, no end-of-image marker)",
                bytes.len()
            ),
        });
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Header parsing must not be refused by the image crate's own limits:
    // our pixel check below gives the precise error.
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(decode_error)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > cfg.max_pixels {
        return Err(ModelError::ImageTooLarge {
            source_name: None,
            width,
            height,
            max_pixels: cfg.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(ModelError::ImageDecode {
            source_name: None,
            detail: format!("image declares an empty size {width}x{height}"),
        });
    }
    let orientation = decoder.orientation().map_err(decode_error)?;
    let color = decoder.color_type();
    let bytes_per_pixel = color.bytes_per_pixel();
    let own = pixels.saturating_mul(u64::from(bytes_per_pixel));
    let rgb_copy = if color == image::ColorType::Rgb8 {
        0
    } else {
        pixels.saturating_mul(3)
    };
    let rotated = if orientation == image::metadata::Orientation::NoTransforms {
        0
    } else {
        own
    };
    let cost = DecodeCost {
        width,
        height,
        bytes_per_pixel,
        bytes: own.saturating_add(rgb_copy).saturating_add(rotated),
    };
    if cost.bytes > cfg.max_decode_bytes {
        return Err(ModelError::DecodeTooLarge {
            source_name: None,
            width,
            height,
            bytes_per_pixel,
            bytes: cost.bytes,
            max_bytes: cfg.max_decode_bytes,
        });
    }
    let mut limits = Limits::default();
    // The decoder's own allocations stay within the same budget (plus slack for its
    // tables on tiny images).
    limits.max_alloc = Some(cfg.max_decode_bytes.max(16 << 20));
    decoder.set_limits(limits).map_err(decode_error)?;
    Ok((decoder, cost, orientation))
}

/// Decode JPEG, PNG or WebP bytes into RGB8, as Pillow's `convert('RGB')`
/// would (alpha dropped without compositing, grey replicated), after
/// applying the EXIF orientation.
///
/// The format is guessed from the bytes; anything else is
/// [`ModelError::UnsupportedImage`]. The declared size is checked against
/// `cfg.max_pixels` before decoding ([`ModelError::ImageTooLarge`]), and the memory the
/// decode takes against `cfg.max_decode_bytes` ([`ModelError::DecodeTooLarge`]); decoder
/// failures (empty, truncated or corrupt data) are [`ModelError::ImageDecode`].
pub fn decode_image(bytes: &[u8], cfg: &PreprocessConfig) -> Result<RgbImage> {
    let (decoder, _, orientation) = open_checked(bytes, cfg)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    image.apply_orientation(orientation);
    Ok(image.into_rgb8())
}

fn detect_format(bytes: &[u8]) -> Result<ImageFormat> {
    let unsupported = |detail: String| ModelError::UnsupportedImage {
        source_name: None,
        detail,
    };
    if bytes.is_empty() {
        return Err(unsupported("empty input (0 bytes)".to_string()));
    }
    match image::guess_format(bytes) {
        Ok(f @ (ImageFormat::Jpeg | ImageFormat::Png | ImageFormat::WebP)) => Ok(f),
        Ok(other) => Err(unsupported(format!(
            "looks like {}, expected JPEG, PNG or WebP",
            other.to_mime_type()
        ))),
        Err(_) => {
            // The bytes themselves are never quoted: the input may be any file (an ingest
            // row pointing at a password file must not show up in a report).
            let kind = if bytes
                .iter()
                .take(512)
                .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
            {
                "text"
            } else {
                "unrecognised binary data"
            };
            Err(unsupported(format!(
                "{kind} ({} bytes), expected JPEG, PNG or WebP",
                bytes.len()
            )))
        }
    }
}

/// Walk the JPEG marker segments and entropy-coded scans and report whether
/// an end-of-image marker (`FF D9`) is reached inside the data.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut i = 2; // after SOI
    loop {
        // Marker: one or more 0xFF fill bytes, then the code.
        if bytes.get(i) != Some(&0xFF) {
            return false;
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return false;
        };
        i += 1;
        match marker {
            0xD9 => return true,
            0x01 | 0xD0..=0xD7 => continue,
            _ => {
                let Some(len) = bytes.get(i..i + 2) else {
                    return false;
                };
                i += usize::from(u16::from_be_bytes([len[0], len[1]]));
                if i > bytes.len() {
                    return false;
                }
                if marker == 0xDA {
                    // Entropy-coded data: FF 00 is a stuffed byte, FF D0-D7 a
                    // restart marker; any other FF xx starts the next marker.
                    loop {
                        match (bytes.get(i), bytes.get(i + 1)) {
                            (Some(0xFF), Some(0x00 | 0xD0..=0xD7)) => i += 2,
                            (Some(0xFF), Some(_)) => break,
                            (Some(_), _) => i += 1,
                            (None, _) => return false,
                        }
                    }
                }
            }
        }
    }
}

/// Map an `image` error to ours, as one line of text.
fn decode_error(e: image::ImageError) -> ModelError {
    let one_line = |s: String| s.split_whitespace().collect::<Vec<_>>().join(" ");
    match e {
        image::ImageError::Unsupported(u) => ModelError::UnsupportedImage {
            source_name: None,
            detail: one_line(u.to_string()),
        },
        other => ModelError::ImageDecode {
            source_name: None,
            detail: one_line(other.to_string()),
        },
    }
}

/// Resize the shorter side to `size` (the longer one to
/// `int(size * long / short)`) with Pillow's `BILINEAR` filter reproduced
/// exactly, then crop the centre `size` x `size` square (offsets rounded
/// half to even, as torchvision's `CenterCrop`).
///
/// Images already at the target size are not resampled. Returns an empty
/// image when `size` is 0 or the input is empty.
pub fn resize_and_crop(image: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    if size == 0 || w == 0 || h == 0 {
        return RgbImage::new(0, 0);
    }
    let (new_w, new_h) = if w <= h {
        (size, (size as u64 * h as u64 / w as u64) as usize)
    } else {
        ((size as u64 * w as u64 / h as u64) as usize, size)
    };
    let left = round_half_even_div2(new_w.saturating_sub(size));
    let top = round_half_even_div2(new_h.saturating_sub(size));
    let (crop_w, crop_h) = (size.min(new_w), size.min(new_h));
    // Only the pixels the crop keeps are resampled: the same values, a quarter less work for
    // a 3:4 photo.
    let window = pil_bilinear_window(
        image,
        (new_w, new_h),
        left..left + crop_w,
        top..top + crop_h,
    );
    if (crop_w, crop_h) == (size, size) {
        return window;
    }
    let mut out = RgbImage::new(size as u32, size as u32);
    let src = window.as_raw();
    for (y, row) in src.chunks_exact(crop_w * 3).enumerate() {
        let at = y * size * 3;
        out.as_mut()[at..at + crop_w * 3].copy_from_slice(row);
    }
    out
}

/// `round(n / 2)` with Python's round-half-to-even.
fn round_half_even_div2(n: usize) -> usize {
    let half = n / 2;
    if n % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

/// Pillow's fixed-point precision for 8-bit resampling (`Resample.c`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per output position: first input index, the fixed-point weights.
struct Coefficients {
    bounds: Vec<(usize, usize)>,
    ksize: usize,
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the bilinear
/// (triangle, support 1) filter over the whole input range.
fn bilinear_coefficients(in_size: usize, out_size: usize) -> Coefficients {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, scaled when reducing
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero; negative values clamp to 0 anyway.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = (((center + support + 0.5) as i64).min(in_size as i64) as usize)
            .saturating_sub(xmin)
            .min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(xmax) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = (1.0 - t.abs()).max(0.0);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..(xx + 1) * ksize];
        for (x, kx) in k.iter().enumerate().take(xmax) {
            let w = if ww != 0.0 { kx / ww } else { *kx };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            row[x] = if w < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    Coefficients {
        bounds,
        ksize,
        weights,
    }
}

#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// The pixels `cols` x `rows` of Pillow's `Image.resize((w, h), BILINEAR)` on RGB8, `(w, h)`
/// = `size`: horizontal pass, then vertical pass, each skipped when that side does not change
/// (as Pillow does). Each output pixel is an exact integer sum of its taps, so computing only
/// a window gives the values of the whole resize.
fn pil_bilinear_window(
    image: &RgbImage,
    size: (usize, usize),
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
) -> RgbImage {
    let (in_w, in_h) = (image.width() as usize, image.height() as usize);
    let (out_w, out_h) = size;
    let src = image.as_raw();
    let rounding = 1i32 << (PRECISION_BITS - 1);
    let width = cols.len();
    let vertical = (out_h != in_h).then(|| bilinear_coefficients(in_h, out_h));
    // The input rows the vertical pass reads (all of `rows` when it is skipped).
    let (first, last) = match &vertical {
        Some(c) => rows.clone().fold((usize::MAX, 0), |(lo, hi), yy| {
            let (ymin, ymax) = c.bounds[yy];
            (lo.min(ymin), hi.max(ymin + ymax))
        }),
        None => (rows.start, rows.end),
    };
    let first = first.min(last);
    // Horizontal pass over those rows, for the window's columns only.
    let mut tmp = vec![0u8; width * (last - first) * 3];
    if out_w != in_w {
        let c = bilinear_coefficients(in_w, out_w);
        for (y, out_row) in (first..last).zip(tmp.chunks_exact_mut(width * 3)) {
            let row = &src[y * in_w * 3..(y + 1) * in_w * 3];
            for (xx, out_px) in cols.clone().zip(out_row.chunks_exact_mut(3)) {
                let (xmin, xmax) = c.bounds[xx];
                let k = &c.weights[xx * c.ksize..xx * c.ksize + xmax];
                let taps = &row[xmin * 3..(xmin + xmax) * 3];
                let mut ss = [rounding; 3];
                for (p, &kx) in taps.chunks_exact(3).zip(k) {
                    ss[0] += i32::from(p[0]) * kx;
                    ss[1] += i32::from(p[1]) * kx;
                    ss[2] += i32::from(p[2]) * kx;
                }
                for (o, v) in out_px.iter_mut().zip(ss) {
                    *o = clip8(v);
                }
            }
        }
    } else {
        for (y, out_row) in (first..last).zip(tmp.chunks_exact_mut(width * 3)) {
            let at = (y * in_w + cols.start) * 3;
            out_row.copy_from_slice(&src[at..at + width * 3]);
        }
    }
    let out = match vertical {
        Some(c) => {
            // Row by row: each output row is a weighted sum of whole input rows, which
            // vectorises (integer sums, so the order of the taps does not change a bit).
            let mut out = vec![0u8; width * rows.len() * 3];
            let mut acc = vec![0i32; width * 3];
            for (yy, out_row) in rows.clone().zip(out.chunks_exact_mut(width * 3)) {
                let (ymin, ymax) = c.bounds[yy];
                let k = &c.weights[yy * c.ksize..yy * c.ksize + ymax];
                acc.iter_mut().for_each(|a| *a = rounding);
                for (y, &ky) in (ymin..ymin + ymax).zip(k) {
                    let at = (y - first) * width * 3;
                    for (a, &p) in acc.iter_mut().zip(&tmp[at..at + width * 3]) {
                        *a += i32::from(p) * ky;
                    }
                }
                for (o, &a) in out_row.iter_mut().zip(&acc) {
                    *o = clip8(a);
                }
            }
            out
        }
        None => tmp,
    };
    RgbImage::from_raw(width as u32, rows.len() as u32, out)
        .expect("buffer length is width * height * 3 by construction")
}

/// Stack RGB8 images of one size into a normalised float32 batch
/// `[B, 3, H, W]`: `x = u8 / 255`, then `(x - mean) / std` with the
/// ImageNet statistics, in float32 and in that order (bit-exact with
/// torchvision's `ToTensor` + `Normalize`).
pub fn to_tensor(images: &[RgbImage], device: &Device) -> Result<Tensor> {
    let first = images.first().ok_or_else(|| {
        ModelError::InvalidArgument("to_tensor needs at least one image".to_string())
    })?;
    let (w, h) = first.dimensions();
    let (w, h) = (w as usize, h as usize);
    let plane = w * h;
    if let Some((i, img)) = images
        .iter()
        .enumerate()
        .find(|(_, img)| img.dimensions() != first.dimensions())
    {
        return Err(ModelError::InvalidArgument(format!(
            "image {i} is {}x{}, image 0 is {w}x{h}; a batch needs one size",
            img.width(),
            img.height()
        )));
    }
    // A byte has 256 values: look each channel's normalised value up
    // instead of dividing per sample (the same expression, so the same bits).
    let table: [[f32; 256]; 3] = std::array::from_fn(|ch| {
        let (mean, std) = (IMAGENET_MEAN[ch], IMAGENET_STD[ch]);
        std::array::from_fn(|v| (v as f32 / 255.0 - mean) / std)
    });
    let mut data = Vec::with_capacity(images.len() * 3 * plane);
    for img in images {
        for (ch, table) in table.iter().enumerate() {
            data.extend(
                img.as_raw()
                    .chunks_exact(3)
                    .map(|px| table[usize::from(px[ch])]),
            );
        }
    }
    Ok(Tensor::from_vec(data, (images.len(), 3, h, w), device)?)
}

/// Decode, resize, crop and normalise one encoded image into `[1, 3, S, S]`.
pub fn preprocess_bytes(bytes: &[u8], cfg: &PreprocessConfig, device: &Device) -> Result<Tensor> {
    let image = decode_image(bytes, cfg)?;
    let crop = resize_and_crop(&image, cfg.size);
    to_tensor(&[crop], device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_rgba16(width: u32, height: u32) -> Vec<u8> {
        let img = image::ImageBuffer::<image::Rgba<u16>, _>::from_pixel(
            width,
            height,
            image::Rgba([1000, 2000, 3000, 65535]),
        );
        let mut out = Vec::new();
        DynamicImage::ImageRgba16(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn an_error_never_quotes_the_input() {
        let err = decode_image(
            b"root:x:0:0:root:/root:/bin/bash\n",
            &PreprocessConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(!err.contains("root"), "{err}");
        assert!(!err.contains("72 6f"), "{err}");
        assert!(err.contains("text (32 bytes)"), "{err}");
    }

    #[test]
    fn decode_cost_counts_bytes_per_pixel_and_the_rgb_copy() {
        let cost = decode_cost(&png_rgba16(64, 32), &PreprocessConfig::default()).unwrap();
        assert_eq!(cost.bytes_per_pixel, 8);
        assert_eq!(cost.bytes, 64 * 32 * (8 + 3));
    }

    #[test]
    fn a_deep_image_within_the_pixel_limit_is_refused_by_the_memory_limit() {
        let cfg = PreprocessConfig {
            max_decode_bytes: 64 * 32 * 11 - 1,
            ..PreprocessConfig::default()
        };
        let err = decode_image(&png_rgba16(64, 32), &cfg).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::DecodeTooLarge {
                    bytes_per_pixel: 8,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("limits.max_decode_bytes"), "{err}");
    }

    #[test]
    fn round_half_even_matches_python() {
        // round(149/2) = round(74.5) = 74, round(3/2) = 2, round(1/2) = 0
        assert_eq!(round_half_even_div2(149), 74);
        assert_eq!(round_half_even_div2(3), 2);
        assert_eq!(round_half_even_div2(1), 0);
        assert_eq!(round_half_even_div2(74), 37);
        assert_eq!(round_half_even_div2(0), 0);
    }

    #[test]
    fn coefficients_sum_to_one_in_fixed_point() {
        for (i, o) in [(300, 224), (225, 112), (201, 224), (7, 3), (3, 7)] {
            let c = bilinear_coefficients(i, o);
            for (xx, &(xmin, xmax)) in c.bounds.iter().enumerate() {
                assert!(xmin + xmax <= i);
                let s: i64 = c.weights[xx * c.ksize..xx * c.ksize + xmax]
                    .iter()
                    .map(|&w| i64::from(w))
                    .sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= xmax as i64,
                    "{i}->{o} at {xx}: {s}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(37, 91, image::Rgb([10, 200, 255]));
        let out = resize_and_crop(&img, 16);
        assert_eq!(out.dimensions(), (16, 16));
        assert!(out.pixels().all(|p| p.0 == [10, 200, 255]));
    }

    #[test]
    fn resize_keeps_aspect_by_truncation() {
        let img = RgbImage::new(300, 180);
        let c = bilinear_coefficients(300, 373);
        assert_eq!(c.bounds.len(), 373);
        assert_eq!(resize_and_crop(&img, 224).dimensions(), (224, 224));
        assert_eq!(
            resize_and_crop(&RgbImage::new(0, 5), 224).dimensions(),
            (0, 0)
        );
    }

    #[test]
    fn normalisation_is_channel_planar() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
        img.put_pixel(1, 0, image::Rgb([0, 255, 0]));
        let t = to_tensor(&[img], &Device::Cpu).unwrap();
        assert_eq!(t.dims(), &[1, 3, 1, 2]);
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v[0], (1.0 - 0.485) / 0.229);
        assert_eq!(v[1], (0.0 - 0.485) / 0.229);
        assert_eq!(v[3], (1.0 - 0.456) / 0.224);
    }

    #[test]
    fn every_byte_normalises_to_the_divided_value_in_every_image_of_a_batch() {
        let img = |shift: u8| {
            RgbImage::from_fn(256, 1, |x, _| {
                let v = (x as u8).wrapping_add(shift);
                image::Rgb([v, v.wrapping_add(85), v.wrapping_add(170)])
            })
        };
        let t = to_tensor(&[img(0), img(7)], &Device::Cpu).unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        for (i, shift) in [0u8, 7].into_iter().enumerate() {
            for ch in 0..3 {
                for x in 0..256 {
                    let byte = (x as u8).wrapping_add(shift).wrapping_add(85 * ch as u8);
                    let want = (f32::from(byte) / 255.0 - IMAGENET_MEAN[ch]) / IMAGENET_STD[ch];
                    assert_eq!(
                        v[(i * 3 + ch) * 256 + x],
                        want,
                        "image {i} channel {ch} x {x}"
                    );
                }
            }
        }
    }

    #[test]
    fn mixed_sizes_are_refused() {
        let e = to_tensor(&[RgbImage::new(2, 2), RgbImage::new(3, 2)], &Device::Cpu).unwrap_err();
        assert!(e.to_string().contains("one size"), "{e}");
        assert!(to_tensor(&[], &Device::Cpu).is_err());
    }
}
