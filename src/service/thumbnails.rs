//! The model-input crop of every item (the resized, centre-cropped RGB image the embedder
//! saw), encoded as JPEG so that `explain` and `GET /v1/catalogues/{c}/items/{id}/image` can
//! show an item without its original file. The store keeps the bytes with the item
//! (`Item::thumbnail`), so every backend holds them and deletes them with the item.

use image::RgbImage;
use jpeg_encoder::{ColorType, Encoder};

/// JPEG quality of stored thumbnails (a 224x224 crop takes 7 to 13 kB, about 10 kB on average).
pub const JPEG_QUALITY: u8 = 90;

/// What can go wrong with thumbnails.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// A crop could not be encoded.
    #[error("cannot encode the thumbnail of item {id:?} as jpeg: {detail}")]
    Encode {
        /// The item.
        id: String,
        /// The encoder's message.
        detail: String,
    },
    /// A stored thumbnail could not be decoded.
    #[error("stored thumbnail of item {id:?} in catalogue {catalogue:?} is unreadable: {detail}")]
    Decode {
        /// The catalogue.
        catalogue: String,
        /// The item.
        id: String,
        /// The decoder's message.
        detail: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ThumbnailError>;

/// Encode a crop as baseline JPEG at [`JPEG_QUALITY`], full-resolution chroma (4:4:4);
/// `id` names the item in errors. Ingestion encodes one per item, so the encoder is
/// `jpeg-encoder`'s (AVX2 colour conversion and DCT): 0.5 ms for a 224x224 crop
/// against 1.2 ms with `image`'s, in `docs/benchmarks.md`.
pub fn encode(crop: &RgbImage, id: &str) -> Result<Vec<u8>> {
    let error = |detail: String| ThumbnailError::Encode {
        id: id.to_string(),
        detail,
    };
    let (w, h) = crop.dimensions();
    let (w, h) = (
        u16::try_from(w).map_err(|_| error(format!("width {w} is over 65535")))?,
        u16::try_from(h).map_err(|_| error(format!("height {h} is over 65535")))?,
    );
    let mut out = Vec::with_capacity(16 * 1024);
    let mut encoder = Encoder::new(&mut out, JPEG_QUALITY);
    encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::F_1_1);
    encoder
        .encode(crop.as_raw(), w, h, ColorType::Rgb)
        .map_err(|e| error(e.to_string()))?;
    Ok(out)
}

/// Decode a stored thumbnail.
pub fn decode(jpeg: &[u8], catalogue: &str, id: &str) -> Result<RgbImage> {
    image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map(|im| im.to_rgb8())
        .map_err(|e| ThumbnailError::Decode {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn crop(seed: u8) -> RgbImage {
        RgbImage::from_fn(224, 224, |x, y| {
            Rgb([
                (x as u8).wrapping_add(seed),
                y as u8,
                ((x + y) / 2) as u8 ^ seed,
            ])
        })
    }

    #[test]
    fn jpeg_round_trip_keeps_size_and_is_close() {
        let c = crop(7);
        let jpeg = encode(&c, "x").unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert!(jpeg.len() < 224 * 224 * 3 / 4, "{} bytes", jpeg.len());
        let back = decode(&jpeg, "c", "x").unwrap();
        assert_eq!(back.dimensions(), (224, 224));
        let mean_abs: f64 = c
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / c.as_raw().len() as f64;
        assert!(mean_abs < 4.0, "mean abs error {mean_abs}");
        let e = decode(b"not a jpeg", "c", "x").unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
    }

    #[test]
    fn a_crop_wider_than_jpeg_allows_is_an_error_naming_the_item() {
        let e = encode(&RgbImage::new(70_000, 1), "wide").unwrap_err();
        assert!(
            e.to_string().contains("\"wide\"") && e.to_string().contains("70000"),
            "{e}"
        );
    }
}
