//! Where the model looks: the ASA spatial attention map of an image for one attribute, as a
//! grid and as a PNG heat-map over the cropped image the model saw.

use asen_models::AttentionMap;
use image::{Rgb, RgbImage};
use serde::Serialize;

use super::{thumbnails, Model, Result, Service, ServiceError};

/// The attention of one image for one attribute.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Attribute name.
    pub attribute: String,
    /// The attention grid (sums to 1).
    pub attention: AttentionMap,
    /// The resized, centre-cropped image the model saw.
    pub crop: RgbImage,
    /// Fingerprint of the model that computed the attention.
    pub model: String,
}

/// The JSON form of an [`Explanation`].
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttentionGrid {
    /// Attribute name.
    pub attribute: String,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// `grid[row][col]`, summing to 1.
    pub grid: Vec<Vec<f32>>,
    /// Input side of the crop the grid covers, in pixels.
    pub input_size: u32,
    /// Row and column of the largest weight.
    pub peak: [usize; 2],
}

impl Explanation {
    /// The grid as rows, with its peak.
    pub fn grid(&self) -> AttentionGrid {
        let a = &self.attention;
        let grid: Vec<Vec<f32>> = a
            .values
            .chunks(a.width.max(1))
            .map(<[f32]>::to_vec)
            .collect();
        let peak = a
            .values
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.total_cmp(y.1))
            .map_or(0, |(i, _)| i);
        AttentionGrid {
            attribute: self.attribute.clone(),
            height: a.height,
            width: a.width,
            grid,
            input_size: self.crop.width(),
            peak: [peak / a.width.max(1), peak % a.width.max(1)],
        }
    }

    /// A PNG: the crop blended with a blue-to-red colour map of the attention, upsampled
    /// bilinearly and scaled so the peak is red.
    pub fn heatmap_png(&self) -> Result<Vec<u8>> {
        let heat = heatmap(&self.crop, &self.attention);
        let mut out = std::io::Cursor::new(Vec::new());
        heat.write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| ServiceError::invalid(format!("cannot encode heat-map png: {e}")))?;
        Ok(out.into_inner())
    }
}

/// Blend `crop` with the colour-mapped `attention` (pure; unit-tested).
pub fn heatmap(crop: &RgbImage, attention: &AttentionMap) -> RgbImage {
    let (w, h) = crop.dimensions();
    let (gw, gh) = (attention.width.max(1), attention.height.max(1));
    let max = attention
        .values
        .iter()
        .copied()
        .fold(f32::MIN_POSITIVE, f32::max);
    let at = |r: usize, c: usize| attention.values.get(r * gw + c).copied().unwrap_or(0.0) / max;
    let mut out = RgbImage::new(w, h);
    for y in 0..h {
        // Pixel centre in grid coordinates.
        let gy = ((y as f32 + 0.5) * gh as f32 / h as f32 - 0.5).clamp(0.0, (gh - 1) as f32);
        let (y0, fy) = (gy.floor() as usize, gy.fract());
        let y1 = (y0 + 1).min(gh - 1);
        for x in 0..w {
            let gx = ((x as f32 + 0.5) * gw as f32 / w as f32 - 0.5).clamp(0.0, (gw - 1) as f32);
            let (x0, fx) = (gx.floor() as usize, gx.fract());
            let x1 = (x0 + 1).min(gw - 1);
            let v = (at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx) * (1.0 - fy)
                + (at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx) * fy;
            let colour = jet(v.clamp(0.0, 1.0));
            let p = crop.get_pixel(x, y);
            let mix = |i: usize| (0.5 * p[i] as f32 + 0.5 * colour[i]).round() as u8;
            out.put_pixel(x, y, Rgb([mix(0), mix(1), mix(2)]));
        }
    }
    out
}

/// Jet colour map over [0, 0.875] so that 1 is pure red and 0 dark blue.
fn jet(v: f32) -> [f32; 3] {
    let v = v * 0.875;
    let c = |x: f32| 255.0 * (1.5 - (4.0 * v - x).abs()).clamp(0.0, 1.0);
    [c(3.0), c(2.0), c(1.0)]
}

/// What to explain: an encoded image, or a stored item's thumbnail.
#[derive(Debug, Clone)]
pub enum ExplainSubject {
    /// Encoded image bytes (JPEG, PNG, WebP).
    Image(Vec<u8>),
    /// An item of a catalogue.
    Item {
        /// The catalogue.
        catalogue: String,
        /// The item id.
        id: String,
    },
}

/// The attention of `subject` for `attribute`.
pub fn explain_subject(
    svc: &Service,
    subject: &ExplainSubject,
    attribute: &str,
) -> Result<Explanation> {
    match subject {
        ExplainSubject::Image(bytes) => explain(svc, bytes, attribute),
        ExplainSubject::Item { catalogue, id } => explain_item(svc, catalogue, id, attribute),
    }
}

/// The attention of an encoded image for `attribute`.
#[tracing::instrument(skip_all, fields(attribute = %attribute))]
pub fn explain(svc: &Service, image: &[u8], attribute: &str) -> Result<Explanation> {
    let model = svc.model("explain")?;
    let embedder = model.embedder();
    let index = embedder.attribute_index(attribute)?;
    let (decoded, permit) = svc.decode(embedder, image, "to explain")?;
    let crop = embedder.crop(&decoded);
    drop((decoded, permit));
    explain_crop(svc, model, crop, index, attribute)
}

/// The attention of a stored item for `attribute`, over the item's thumbnail (the crop the
/// model saw at upsert, after a JPEG round trip). Unknown catalogue or item: the not-found
/// errors; an item stored without a thumbnail: [`ServiceError::NoThumbnail`].
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, attribute = %attribute))]
pub fn explain_item(
    svc: &Service,
    catalogue: &str,
    id: &str,
    attribute: &str,
) -> Result<Explanation> {
    let schema = svc.store("explain")?.schema(catalogue)?;
    let model = svc
        .models("explain")?
        .for_catalogue(catalogue, schema.model.as_ref())?;
    let embedder = model.embedder();
    // A renamed attribute is computed under its model name.
    let index = embedder.attribute_index(schema.model_attribute(attribute))?;
    let id = Service::item_id(id)?;
    let jpeg = svc.item_thumbnail(catalogue, &id)?;
    let crop = thumbnails::decode(&jpeg, catalogue, id.as_str())?;
    let size = embedder.preprocess_config().size as u32;
    if crop.dimensions() != (size, size) {
        return Err(ServiceError::invalid(format!(
            "the stored image of item {:?} is {}x{}, the model expects {size}x{size}: \
             upsert or ingest the item again, or send the image as \"image\"",
            id.as_str(),
            crop.width(),
            crop.height()
        )));
    }
    explain_crop(svc, model, crop, index, attribute)
}

fn explain_crop(
    svc: &Service,
    model: &Model,
    crop: RgbImage,
    index: usize,
    attribute: &str,
) -> Result<Explanation> {
    let models = svc.models("explain")?;
    let embedder = model.embedder();
    let mut out = models.forward(|| embedder.embed_crops(std::slice::from_ref(&crop), &[index]))?;
    let attention = out
        .pop()
        .and_then(|mut per_attribute| per_attribute.pop())
        .and_then(|e| e.attention)
        .ok_or_else(|| {
            ServiceError::invalid(format!(
                "the model's head ({:?}) has no spatial attention to explain",
                embedder.card().head
            ))
        })?;
    Ok(Explanation {
        attribute: attribute.to_string(),
        attention,
        crop,
        model: model.fingerprint().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heatmap_is_red_at_the_peak_and_blue_elsewhere() {
        let crop = RgbImage::from_pixel(28, 28, Rgb([0, 0, 0]));
        let mut values = vec![0.0; 4];
        values[0] = 1.0; // top-left cell
        let a = AttentionMap {
            height: 2,
            width: 2,
            values,
        };
        let heat = heatmap(&crop, &a);
        let tl = heat.get_pixel(0, 0);
        let br = heat.get_pixel(27, 27);
        assert!(tl[0] > 100 && tl[2] < 20, "top-left should be red: {tl:?}");
        assert!(
            br[2] > 60 && br[0] < 20,
            "bottom-right should be blue: {br:?}"
        );
        let e = Explanation {
            attribute: "x".into(),
            attention: a,
            crop,
            model: "00".into(),
        };
        assert_eq!(e.grid().peak, [0, 0]);
        let png = e.heatmap_png().unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
