//! How much of an attention map lies on the garment of a product photo.
//!
//! Catalogue photos show the garment (or the person wearing it) on a plain
//! background. A pixel counts as garment when its colour differs from the
//! median colour of the image border by more than [`GARMENT_DIFFERENCE`] in
//! summed RGB; a cell of the attention grid counts when most of its pixels
//! do. [`attention_on_garment`] is the attention's mass on those cells:
//! uniform attention scores the garment's share of the grid (about 0.38 on
//! the test split at 7x7), attention that looks only at the garment scores 1.

use asen_models::AttentionMap;
use image::RgbImage;

/// Summed RGB difference from the border colour above which a pixel is garment.
pub const GARMENT_DIFFERENCE: u32 = 40;

/// The median of each channel over the pixels of the image's outer ring (one
/// pixel wide). A 0x0 image gives black.
pub fn border_colour(image: &RgbImage) -> [u8; 3] {
    let (w, h) = image.dimensions();
    let mut ring = Vec::with_capacity(2 * (w + h) as usize);
    for x in 0..w {
        ring.push(*image.get_pixel(x, 0));
        if h > 1 {
            ring.push(*image.get_pixel(x, h - 1));
        }
    }
    for y in 1..h.saturating_sub(1) {
        ring.push(*image.get_pixel(0, y));
        if w > 1 {
            ring.push(*image.get_pixel(w - 1, y));
        }
    }
    let mut out = [0u8; 3];
    for (c, slot) in out.iter_mut().enumerate() {
        let mut values: Vec<u8> = ring.iter().map(|p| p[c]).collect();
        values.sort_unstable();
        *slot = values.get(values.len() / 2).copied().unwrap_or(0);
    }
    out
}

/// Which cells of an `h x w` grid over `image` are garment, row-major: the
/// cells (PyTorch's adaptive-pooling boundaries) where more than half of the
/// pixels differ from [`border_colour`] by more than [`GARMENT_DIFFERENCE`].
pub fn garment_cells(image: &RgbImage, h: usize, w: usize) -> Vec<bool> {
    let (iw, ih) = (image.width() as usize, image.height() as usize);
    let border = border_colour(image);
    let differs = |x: usize, y: usize| {
        let p = image.get_pixel(x as u32, y as u32);
        let d: u32 = (0..3).map(|c| u32::from(p[c].abs_diff(border[c]))).sum();
        d > GARMENT_DIFFERENCE
    };
    // Cell i spans [floor(i * n / cells), ceil((i + 1) * n / cells)).
    let span = |i: usize, cells: usize, n: usize| (i * n / cells, ((i + 1) * n).div_ceil(cells));
    let mut out = Vec::with_capacity(h * w);
    for r in 0..h {
        let (y0, y1) = span(r, h, ih);
        for c in 0..w {
            let (x0, x1) = span(c, w, iw);
            let total = (y1 - y0) * (x1 - x0);
            let garment = (y0..y1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|&(x, y)| differs(x, y))
                .count();
            out.push(total > 0 && 2 * garment > total);
        }
    }
    out
}

/// The attention's mass on the garment cells of `crop` (the image the model
/// saw), in `[0, 1]` for a map that sums to 1.
pub fn attention_on_garment(crop: &RgbImage, attention: &AttentionMap) -> f32 {
    let cells = garment_cells(crop, attention.height, attention.width);
    attention
        .values
        .iter()
        .zip(cells)
        .filter(|(_, garment)| *garment)
        .map(|(v, _)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    /// A white 28x28 photo with a dark 14x14 square in its top-left quarter.
    fn photo() -> RgbImage {
        RgbImage::from_fn(28, 28, |x, y| {
            if x < 14 && y < 14 {
                Rgb([20, 30, 40])
            } else {
                Rgb([250, 250, 250])
            }
        })
    }

    #[test]
    fn the_border_colour_is_the_median_of_the_ring() {
        assert_eq!(border_colour(&photo()), [250, 250, 250]);
    }

    #[test]
    fn garment_cells_are_those_mostly_unlike_the_border() {
        let cells = garment_cells(&photo(), 2, 2);
        assert_eq!(cells, vec![true, false, false, false]);
    }

    #[test]
    fn a_faint_difference_is_background() {
        let faint = RgbImage::from_fn(8, 8, |x, _| {
            if x < 4 {
                Rgb([240, 240, 240])
            } else {
                Rgb([250, 250, 250])
            }
        });
        assert!(garment_cells(&faint, 1, 2).iter().all(|g| !g));
    }

    #[test]
    fn the_share_is_the_mass_on_garment_cells() {
        let map = AttentionMap {
            height: 2,
            width: 2,
            values: vec![0.7, 0.1, 0.1, 0.1],
        };
        assert!((attention_on_garment(&photo(), &map) - 0.7).abs() < 1e-6);
    }
}
