//! A tiny synthetic dataset of drawn garments with known attribute regions.
//!
//! Every image is a front view of a top on a noisy background:
//! - `collar` (`round`, `v_neck`, `turtleneck`, `boat`): the neckline, at the
//!   top of the torso;
//! - `sleeve_length` (`sleeveless`, `short`, `long`): both sides of the torso;
//! - `colour` (`red`, `green`, `blue`, `yellow`, `purple`, `orange`): the
//!   whole garment;
//! - `pattern` (`solid`, `stripes`, `checks`, `dots`): the torso.
//!
//! Labels are drawn independently and uniformly, so only the right region
//! tells an attribute. Nuisances: the garment is shifted by up to `jitter`
//! of the image size, the background grey level, tint and per-pixel noise
//! vary, and the garment colour varies in brightness. Region boxes (relative
//! `[x0, y0, x1, y1]`, jitter included) let tests check where attention peaks.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::{build_from_named, CsvOptions, Dataset, Split};
use asen_models::{ModelError, Result};

const COLLARS: [&str; 4] = ["round", "v_neck", "turtleneck", "boat"];
const SLEEVES: [&str; 3] = ["sleeveless", "short", "long"];
const COLOURS: [(&str, [f32; 3]); 6] = [
    ("red", [200.0, 40.0, 40.0]),
    ("green", [40.0, 160.0, 60.0]),
    ("blue", [40.0, 70.0, 210.0]),
    ("yellow", [225.0, 205.0, 40.0]),
    ("purple", [140.0, 50.0, 175.0]),
    ("orange", [240.0, 130.0, 30.0]),
];
const PATTERNS: [&str; 4] = ["solid", "stripes", "checks", "dots"];
/// The attribute names, in id order.
const ATTRIBUTES: [&str; 4] = ["collar", "sleeve_length", "colour", "pattern"];

// Garment geometry in relative coordinates before jitter.
const TORSO: [f32; 4] = [0.32, 0.30, 0.68, 0.88];
const NECK_X: f32 = 0.5;
const NECK_Y: f32 = 0.30;

/// Options of [`generate_synthetic`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticConfig {
    /// Width and height of the square images in pixels (at least 32).
    pub size: u32,
    /// Number of train images.
    pub train: usize,
    /// Number of valid images.
    pub valid: usize,
    /// Number of test images.
    pub test: usize,
    /// Seed of everything drawn (labels, nuisances, query draw).
    pub seed: u64,
    /// Amplitude of the per-pixel background noise, 0 to 1.
    pub noise: f32,
    /// Largest shift of the garment, as a fraction of the image size.
    pub jitter: f32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            size: 96,
            train: 600,
            valid: 150,
            test: 150,
            seed: 0,
            noise: 0.25,
            jitter: 0.04,
        }
    }
}

/// A generated dataset: the [`Dataset`] (root empty until written), the
/// images in id order and the region of each attribute.
#[derive(Debug, Clone)]
pub struct SyntheticDataset {
    /// The labels, splits and probe lists.
    pub dataset: Dataset,
    /// One image per dataset image, same order.
    pub images: Vec<RgbImage>,
    seed: u64,
    regions: Vec<(String, Vec<[f32; 4]>)>,
}

struct Drawn {
    image: RgbImage,
    labels: [usize; 4],
}

fn inside(b: [f32; 4], x: f32, y: f32) -> bool {
    x >= b[0] && x < b[2] && y >= b[1] && y < b[3]
}

/// Per-image nuisances.
#[derive(Clone, Copy)]
struct Nuisance {
    dx: f32,
    dy: f32,
    grey: f32,
    tint: [f32; 3],
    brightness: f32,
}

fn draw(config: &SyntheticConfig, index: usize) -> Drawn {
    let mut rng = ChaCha8Rng::seed_from_u64(
        config.seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let labels = [
        rng.gen_range(0..COLLARS.len()),
        rng.gen_range(0..SLEEVES.len()),
        rng.gen_range(0..COLOURS.len()),
        rng.gen_range(0..PATTERNS.len()),
    ];
    let j = config.jitter.max(0.0);
    let nuisance = Nuisance {
        dx: if j > 0.0 { rng.gen_range(-j..=j) } else { 0.0 },
        dy: if j > 0.0 { rng.gen_range(-j..=j) } else { 0.0 },
        grey: rng.gen_range(80.0..=170.0),
        tint: std::array::from_fn(|_| rng.gen_range(-15.0..=15.0)),
        brightness: rng.gen_range(0.8..=1.1),
    };
    let image = draw_garment(config, labels, &nuisance, &mut rng);
    Drawn { image, labels }
}

fn draw_garment(
    config: &SyntheticConfig,
    labels: [usize; 4],
    nuisance: &Nuisance,
    rng: &mut ChaCha8Rng,
) -> RgbImage {
    let [collar, sleeve, colour, pattern] = labels;
    let Nuisance {
        dx,
        dy,
        grey,
        tint,
        brightness,
    } = *nuisance;
    let base = COLOURS[colour].1.map(|c| (c * brightness).min(255.0));
    let dark = base.map(|c| c * 0.45);
    let light = [235.0, 235.0, 225.0];
    let size = config.size as f32;
    // Pattern period in relative units: 8 px at 96 px.
    let period = 8.0 / 96.0;
    let noise = config.noise.clamp(0.0, 1.0) * 70.0;

    let sleeve_bottom = match sleeve {
        0 => None,
        1 => Some(0.45),
        _ => Some(0.80),
    };
    let mut image = RgbImage::new(config.size, config.size);
    for (px, py, pixel) in image.enumerate_pixels_mut() {
        let x = (px as f32 + 0.5) / size - dx;
        let y = (py as f32 + 0.5) / size - dy;
        let on_torso = inside(TORSO, x, y);
        let cut = on_torso
            && match collar {
                0 => (x - NECK_X).powi(2) + (y - NECK_Y).powi(2) < 0.085f32.powi(2),
                1 => y < NECK_Y + 0.15 && (x - NECK_X).abs() < 0.09 * (1.0 - (y - NECK_Y) / 0.15),
                3 => y < NECK_Y + 0.035 && (x - NECK_X).abs() < 0.13,
                _ => false,
            };
        let turtle = collar == 2 && inside([0.42, 0.19, 0.58, NECK_Y], x, y);
        let on_sleeve = sleeve_bottom.is_some_and(|bottom| {
            inside([0.19, NECK_Y, TORSO[0], bottom], x, y)
                || inside([TORSO[2], NECK_Y, 0.81, bottom], x, y)
        });
        let rgb = if on_torso && !cut {
            let u = ((x - TORSO[0]) / period).floor() as i64;
            let v = ((y - TORSO[1]) / period).floor() as i64;
            let fu = (x - TORSO[0]) / period - u as f32 - 0.5;
            let fv = (y - TORSO[1]) / period - v as f32 - 0.5;
            match pattern {
                1 if ((y - TORSO[1]) / (period * 0.5)).floor() as i64 % 2 == 1 => dark,
                2 if (u + v) % 2 == 1 => dark,
                3 if fu * fu + fv * fv < 0.07 => light,
                _ => base,
            }
        } else if turtle {
            base.map(|c| c * 0.8)
        } else if on_sleeve {
            base
        } else {
            let n = if noise > 0.0 {
                rng.gen_range(-noise..=noise)
            } else {
                0.0
            };
            [grey + tint[0] + n, grey + tint[1] + n, grey + tint[2] + n]
        };
        *pixel = Rgb(rgb.map(|c| c.clamp(0.0, 255.0) as u8));
    }
    image
}

fn image_path(split: Split, index: usize) -> PathBuf {
    PathBuf::from(format!("images/{split}_{index:06}.png"))
}

/// Generate the synthetic dataset in memory (rayon-parallel, deterministic
/// for a given config).
pub fn generate_synthetic(config: &SyntheticConfig) -> Result<SyntheticDataset> {
    if config.size < 32 {
        return Err(ModelError::InvalidArgument(format!(
            "synthetic image size {} is under 32 pixels",
            config.size
        )));
    }
    if config.train == 0 || config.valid == 0 || config.test == 0 {
        return Err(ModelError::InvalidArgument(format!(
            "every synthetic split needs images (train {}, valid {}, test {})",
            config.train, config.valid, config.test
        )));
    }
    let total = config.train + config.valid + config.test;
    let drawn: Vec<Drawn> = (0..total)
        .into_par_iter()
        .map(|i| draw(config, i))
        .collect();
    let rows = drawn
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let split = if i < config.train {
                Split::Train
            } else if i < config.train + config.valid {
                Split::Valid
            } else {
                Split::Test
            };
            let names = [
                COLLARS[d.labels[0]],
                SLEEVES[d.labels[1]],
                COLOURS[d.labels[2]].0,
                PATTERNS[d.labels[3]],
            ];
            (
                image_path(split, i),
                split,
                names.iter().map(|n| Some(n.to_string())).collect(),
            )
        })
        .collect();
    let attributes: Vec<String> = ATTRIBUTES.iter().map(|a| a.to_string()).collect();
    let dataset = build_from_named(
        PathBuf::new(),
        &attributes,
        rows,
        config.seed,
        Path::new("<synthetic>"),
    )?;
    let j = config.jitter.max(0.0);
    let grow = |b: [f32; 4]| [b[0] - j, b[1] - j, b[2] + j, b[3] + j];
    let regions = vec![
        ("collar".to_string(), vec![grow([0.36, 0.18, 0.64, 0.46])]),
        (
            "sleeve_length".to_string(),
            vec![
                grow([0.19, NECK_Y, TORSO[0], 0.80]),
                grow([TORSO[2], NECK_Y, 0.81, 0.80]),
            ],
        ),
        ("pattern".to_string(), vec![grow(TORSO)]),
    ];
    Ok(SyntheticDataset {
        dataset,
        images: drawn.into_iter().map(|d| d.image).collect(),
        seed: config.seed,
        regions,
    })
}

impl SyntheticDataset {
    /// The first region of `attribute` as relative `[x0, y0, x1, y1]`, or
    /// `None` for an attribute of the whole garment (`colour`) or an unknown
    /// name. `sleeve_length` has two boxes (left first); see [`Self::regions`].
    pub fn region(&self, attribute: &str) -> Option<[f32; 4]> {
        self.regions(attribute).first().copied()
    }

    /// Every region box of `attribute` (empty for whole-garment attributes).
    pub fn regions(&self, attribute: &str) -> &[[f32; 4]] {
        self.regions
            .iter()
            .find(|(a, _)| a == attribute)
            .map_or(&[], |(_, boxes)| boxes.as_slice())
    }

    /// Write the images (PNG under `images/`) and `labels.csv`
    /// (`path,split,collar,sleeve_length,colour,pattern`) into `dir`, and
    /// return the dataset read back from that CSV (root `dir`); it equals
    /// [`Self::dataset`] but for the root. `dataset.write_official(dir)`
    /// adds the official layout beside it.
    pub fn write(&self, dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref();
        let images_dir = dir.join("images");
        std::fs::create_dir_all(&images_dir).map_err(|e| ModelError::io(&images_dir, e))?;
        self.dataset
            .images()
            .par_iter()
            .zip(&self.images)
            .try_for_each(|(record, image)| {
                let path = dir.join(&record.path);
                image.save(&path).map_err(|e| ModelError::Io {
                    path: path.clone(),
                    cause: std::io::Error::other(e.to_string()),
                })
            })?;
        let csv_path = dir.join("labels.csv");
        let io_err = |e: ::csv::Error| ModelError::Io {
            path: csv_path.clone(),
            cause: std::io::Error::other(e.to_string()),
        };
        let mut writer = ::csv::Writer::from_path(&csv_path).map_err(io_err)?;
        let mut header = vec!["path", "split"];
        header.extend(ATTRIBUTES);
        writer.write_record(&header).map_err(io_err)?;
        let attributes = self.dataset.attributes();
        for record in self.dataset.images() {
            let mut row = vec![
                record.path.to_string_lossy().into_owned(),
                record.split.to_string(),
            ];
            for (a, label) in record.labels.iter().enumerate() {
                row.push(label.map_or(String::new(), |v| attributes[a].values[v as usize].clone()));
            }
            writer.write_record(&row).map_err(io_err)?;
        }
        writer.flush().map_err(|e| ModelError::io(&csv_path, e))?;
        drop(writer);
        let mut options = CsvOptions::new(ATTRIBUTES);
        options.seed = self.seed;
        Dataset::load_csv(&csv_path, &options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> SyntheticConfig {
        SyntheticConfig {
            train: 60,
            valid: 20,
            test: 20,
            seed: 3,
            ..SyntheticConfig::default()
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = generate_synthetic(&small()).unwrap();
        let b = generate_synthetic(&small()).unwrap();
        assert_eq!(a.dataset, b.dataset);
        assert_eq!(a.images, b.images);
        let c = generate_synthetic(&SyntheticConfig { seed: 4, ..small() }).unwrap();
        assert_ne!(a.images, c.images);
        assert_eq!(a.images.len(), 100);
        assert_eq!(a.images[0].dimensions(), (96, 96));
        assert_eq!(a.dataset.attributes().len(), 4);
        assert_eq!(a.dataset.split_indices(Split::Valid).len(), 20);
    }

    /// Pixels that differ between two drawings with the same nuisances whose
    /// labels differ only in `attribute` all lie in that attribute's boxes.
    #[test]
    fn attributes_show_only_in_their_regions() {
        let config = SyntheticConfig {
            noise: 0.0,
            ..small()
        };
        let ds = generate_synthetic(&config).unwrap();
        let nuisance = Nuisance {
            dx: 0.03,
            dy: -0.04,
            grey: 120.0,
            tint: [5.0, -5.0, 0.0],
            brightness: 1.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for (attribute, count) in [("collar", 4), ("sleeve_length", 3), ("pattern", 4)] {
            let a = ATTRIBUTES.iter().position(|n| *n == attribute).unwrap();
            let boxes = ds.regions(attribute);
            assert!(!boxes.is_empty());
            let mut labels = [0usize, 0, 2, 0];
            let first = draw_garment(&config, labels, &nuisance, &mut rng);
            for value in 1..count {
                labels[a] = value;
                let other = draw_garment(&config, labels, &nuisance, &mut rng);
                let mut differing = 0;
                for (x, y, p) in first.enumerate_pixels() {
                    if p != other.get_pixel(x, y) {
                        differing += 1;
                        let (rx, ry) = ((x as f32 + 0.5) / 96.0, (y as f32 + 0.5) / 96.0);
                        assert!(
                            boxes.iter().any(|b| inside(*b, rx, ry)),
                            "{attribute}={value}: pixel {x},{y} differs outside {boxes:?}"
                        );
                    }
                }
                assert!(
                    differing > 20,
                    "{attribute}={value} changed {differing} pixels"
                );
            }
        }
        assert!(ds.region("colour").is_none());
        assert_eq!(ds.regions("sleeve_length").len(), 2);
    }

    #[test]
    fn written_csv_reads_back_equal() {
        let ds = generate_synthetic(&small()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let back = ds.write(dir.path()).unwrap();
        assert_eq!(back.root(), dir.path());
        assert_eq!(back.images(), ds.dataset.images());
        assert_eq!(back.attributes(), ds.dataset.attributes());
        assert_eq!(back.probes(Split::Test), ds.dataset.probes(Split::Test));
        let first = image::open(back.image_path(0).unwrap()).unwrap().to_rgb8();
        assert_eq!(first, ds.images[0]);
        back.write_official(dir.path()).unwrap();
        let official = Dataset::load_official(dir.path()).unwrap();
        assert_eq!(
            official.probes(Split::Valid),
            ds.dataset.probes(Split::Valid)
        );
        assert_eq!(official.images()[5].path, ds.dataset.images()[5].path);
    }
}
