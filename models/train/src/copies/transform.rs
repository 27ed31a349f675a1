//! What copiers and catalogues do to a product photo: rescale, crop, pad,
//! flip, re-encode, shift the colours a little, change a detail.

use image::{imageops, DynamicImage, Rgb, RgbImage};
use rand::Rng;

use asen_models::{ModelError, Result};

/// Ranges a copy is drawn from. [`CopyRecipe::evaluation`] is the issue's
/// test protocol; [`CopyRecipe::calibration`] adds colour shifts and a changed
/// detail, so the signature is fitted on harder copies than it is judged on.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyRecipe {
    /// Scale factor range of both sides.
    pub scale: (f32, f32),
    /// Smallest share of the area a crop keeps.
    pub min_area_kept: f32,
    /// Largest padding per side, as a share of that side.
    pub max_pad: f32,
    /// Probability of a horizontal flip.
    pub flip: f64,
    /// JPEG quality range.
    pub jpeg_quality: (u8, u8),
    /// Largest brightness change (0.1 = within 10 %).
    pub brightness: f32,
    /// Largest per-channel gain change (a colour cast).
    pub colour_shift: f32,
    /// Largest share of the image area painted over (a changed detail); 0 for none.
    pub changed_detail: f32,
}

impl CopyRecipe {
    /// The evaluation pairs: rescaled by 0.6-1.4, cropped to keep at least 70 % of the area,
    /// padded by at most 10 %, flipped half the time, JPEG quality 60-95, brightness within 10 %.
    pub fn evaluation() -> Self {
        Self {
            scale: (0.6, 1.4),
            min_area_kept: 0.7,
            max_pad: 0.1,
            flip: 0.5,
            jpeg_quality: (60, 95),
            brightness: 0.1,
            colour_shift: 0.0,
            changed_detail: 0.0,
        }
    }

    /// The fitting and calibration copies: the evaluation family, a colour cast of up to 5 %
    /// per channel and a detail of up to 4 % of the area painted over.
    pub fn calibration() -> Self {
        Self {
            colour_shift: 0.05,
            changed_detail: 0.04,
            ..Self::evaluation()
        }
    }

    /// A copy of `image`, drawn with `rng`: geometry first, then colours, then the
    /// detail, then a JPEG round trip.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> Result<RgbImage> {
        let scaled = self.rescale(image, rng);
        let cropped = self.crop(&scaled, rng);
        let padded = self.pad(&cropped, rng);
        let mut copy = if rng.gen_bool(self.flip) {
            imageops::flip_horizontal(&padded)
        } else {
            padded
        };
        self.shift_colours(&mut copy, rng);
        self.change_detail(&mut copy, rng);
        let quality = rng.gen_range(self.jpeg_quality.0..=self.jpeg_quality.1);
        jpeg_round_trip(copy, quality)
    }

    fn rescale(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let s = rng.gen_range(self.scale.0..=self.scale.1);
        let (w, h) = image.dimensions();
        let side = |v: u32| ((v as f32 * s).round() as u32).max(8);
        imageops::resize(image, side(w), side(h), imageops::FilterType::Triangle)
    }

    fn crop(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = image.dimensions();
        let keep = rng.gen_range(self.min_area_kept..=1.0);
        // Split the kept area between width and height, each at least `keep`.
        let kw = rng.gen_range(keep..=1.0);
        let kh = (keep / kw).min(1.0);
        let cw = ((w as f32 * kw).ceil() as u32).clamp(1, w);
        let ch = ((h as f32 * kh).ceil() as u32).clamp(1, h);
        let x = rng.gen_range(0..=w - cw);
        let y = rng.gen_range(0..=h - ch);
        imageops::crop_imm(image, x, y, cw, ch).to_image()
    }

    fn pad(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = image.dimensions();
        let share = rng.gen_range(0.0..=self.max_pad);
        let (pw, ph) = (
            (w as f32 * share).round() as u32,
            (h as f32 * share).round() as u32,
        );
        if pw == 0 && ph == 0 {
            return image.clone();
        }
        let fill = border_colour(image);
        let mut canvas = RgbImage::from_pixel(w + 2 * pw, h + 2 * ph, fill);
        imageops::replace(&mut canvas, image, pw as i64, ph as i64);
        canvas
    }

    fn shift_colours(&self, image: &mut RgbImage, rng: &mut impl Rng) {
        let b = rng.gen_range(1.0 - self.brightness..=1.0 + self.brightness);
        let gains: [f32; 3] = std::array::from_fn(|_| {
            b * rng.gen_range(1.0 - self.colour_shift..=1.0 + self.colour_shift)
        });
        for p in image.pixels_mut() {
            for (c, g) in gains.iter().enumerate() {
                p[c] = (p[c] as f32 * g).round().clamp(0.0, 255.0) as u8;
            }
        }
    }

    fn change_detail(&self, image: &mut RgbImage, rng: &mut impl Rng) {
        if self.changed_detail <= 0.0 {
            return;
        }
        let (w, h) = image.dimensions();
        let area = rng.gen_range(0.0..=self.changed_detail);
        let side = area.sqrt();
        let (dw, dh) = (
            ((w as f32 * side) as u32).max(1),
            ((h as f32 * side) as u32).max(1),
        );
        let (x0, y0) = (rng.gen_range(0..=w - dw), rng.gen_range(0..=h - dh));
        let colour = Rgb([rng.gen(), rng.gen(), rng.gen()]);
        for y in y0..y0 + dh {
            for x in x0..x0 + dw {
                image.put_pixel(x, y, colour);
            }
        }
    }
}

/// The median colour of the outermost pixels (what a catalogue pads with).
fn border_colour(image: &RgbImage) -> Rgb<u8> {
    let (w, h) = image.dimensions();
    let mut channels: [Vec<u8>; 3] = Default::default();
    for (x, y, p) in image.enumerate_pixels() {
        if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
            for c in 0..3 {
                channels[c].push(p[c]);
            }
        }
    }
    Rgb(std::array::from_fn(|c| {
        let v = &mut channels[c];
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(255)
    }))
}

fn jpeg_round_trip(image: RgbImage, quality: u8) -> Result<RgbImage> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality);
    DynamicImage::ImageRgb8(image)
        .write_with_encoder(encoder)
        .map_err(|e| ModelError::InvalidArgument(format!("cannot encode a copy as JPEG: {e}")))?;
    let decoded = image::load_from_memory(&bytes)
        .map_err(|e| ModelError::InvalidArgument(format!("cannot decode a JPEG copy: {e}")))?;
    Ok(decoded.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn photo() -> RgbImage {
        RgbImage::from_fn(90, 120, |x, y| Rgb([(x * 2) as u8, (y * 2) as u8, 200]))
    }

    #[test]
    fn the_same_seed_draws_the_same_copy() {
        let recipe = CopyRecipe::calibration();
        let a = recipe
            .apply(&photo(), &mut ChaCha8Rng::seed_from_u64(3))
            .unwrap();
        let b = recipe
            .apply(&photo(), &mut ChaCha8Rng::seed_from_u64(3))
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_crop_keeps_at_least_the_minimum_area() {
        let recipe = CopyRecipe::evaluation();
        let image = photo();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..200 {
            let c = recipe.crop(&image, &mut rng);
            let kept = (c.width() * c.height()) as f32 / (90.0 * 120.0);
            assert!(kept >= 0.7 - 0.02, "kept {kept}");
        }
    }

    #[test]
    fn padding_stays_within_the_limit_and_uses_the_border_colour() {
        let recipe = CopyRecipe::evaluation();
        let image = RgbImage::from_pixel(100, 100, Rgb([250, 250, 250]));
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            let p = recipe.pad(&image, &mut rng);
            assert!(
                p.width() <= 120 && p.height() <= 120,
                "{}x{}",
                p.width(),
                p.height()
            );
            assert_eq!(*p.get_pixel(0, 0), Rgb([250, 250, 250]));
        }
    }

    #[test]
    fn evaluation_copies_change_no_colour_cast_or_detail() {
        let recipe = CopyRecipe::evaluation();
        let mut image = RgbImage::from_pixel(40, 40, Rgb([100, 100, 100]));
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        recipe.change_detail(&mut image, &mut rng);
        assert!(image.pixels().all(|p| *p == Rgb([100, 100, 100])));
        recipe.shift_colours(&mut image, &mut rng);
        let p = image.get_pixel(0, 0);
        assert!(
            p[0] == p[1] && p[1] == p[2],
            "a brightness change only: {p:?}"
        );
    }
}
