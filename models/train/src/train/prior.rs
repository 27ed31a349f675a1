//! A weak prior on where the attention looks: the garment.
//!
//! Trained on the ranking loss alone, an attribute's attention goes wherever
//! the loss finds a cue, and for gender, season or article type the framing
//! of the photo (the wall at both edges) is one. The prior adds, per triplet
//! image, `weight * max(0, target - mass)`, where `mass` is the attention's
//! share on the image's garment cells ([`crate::garment_cells`], the rule
//! the evaluation in `docs/results.md` uses). It is a hinge: attention that
//! already keeps `target` of its mass on the garment feels nothing, so the
//! ranking loss still decides where on the garment to look.
//!
//! Images whose mask says nothing (no garment cell, every cell garment, or
//! an unreadable file) get an all-garment mask, so the prior never acts on
//! them.

use asen_models::{PreprocessConfig, Result};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::data::Dataset;
use crate::eval::garment_cells;
use crate::features::load_crop;

/// The attention mass on the garment below which the prior acts.
pub const GARMENT_TARGET: f64 = 0.9;

/// Images whose masks are computed between two progress reports.
const MASK_CHUNK: usize = 256;

/// Per dataset image, which cells of the attention grid are garment.
#[derive(Debug, Clone)]
pub struct GarmentPrior {
    cells: usize,
    /// `len * cells` entries, 1 for a garment cell.
    masks: Vec<f32>,
    weight: f64,
    /// Images whose mask marks some cells and not all.
    informative: usize,
}

impl GarmentPrior {
    /// The masks of every image of `dataset`, cropped as the feature cache
    /// crops them (`input_size`), on a `grid` of `(rows, columns)`.
    /// `progress(done, total, informative)` follows the work.
    pub fn from_dataset(
        dataset: &Dataset,
        input_size: u32,
        grid: (usize, usize),
        weight: f64,
        progress: &mut dyn FnMut(usize, usize, usize),
    ) -> Self {
        let preprocess = PreprocessConfig {
            size: input_size as usize,
            ..PreprocessConfig::default()
        };
        let (rows, cols) = grid;
        let cells = rows * cols;
        let n = dataset.len();
        let mut masks = Vec::with_capacity(n * cells);
        let mut informative = 0;
        for start in (0..n).step_by(MASK_CHUNK) {
            let end = (start + MASK_CHUNK).min(n);
            let chunk: Vec<Option<Vec<bool>>> = (start..end)
                .into_par_iter()
                .map(|i| {
                    let path = dataset.image_path(i)?;
                    let crop = load_crop(&path, &preprocess).ok()?;
                    Some(garment_cells(&crop, rows, cols))
                })
                .collect();
            for mask in chunk {
                informative += usize::from(push_mask(&mut masks, cells, mask.as_deref()));
            }
            progress(end, n, informative);
        }
        Self {
            cells,
            masks,
            weight,
            informative,
        }
    }

    /// A prior from masks given directly, `cells` per image (a mask that
    /// marks no cell or every cell never acts, as in [`Self::from_dataset`]).
    pub fn from_masks(cells: usize, masks: &[bool], weight: f64) -> Self {
        assert!(cells > 0 && masks.len().is_multiple_of(cells));
        let mut flat = Vec::with_capacity(masks.len());
        let informative = masks
            .chunks(cells)
            .filter(|m| push_mask(&mut flat, cells, Some(m)))
            .count();
        Self {
            cells,
            masks: flat,
            weight,
            informative,
        }
    }

    /// Images whose mask lets the prior act.
    pub fn informative(&self) -> usize {
        self.informative
    }

    /// The penalty of attention maps `attention` `[B, H, W]` (`H * W` the
    /// grid's cells) of dataset images `indices`: the mean hinge, weighted.
    pub fn loss(&self, attention: &Tensor, indices: &[usize]) -> Result<Tensor> {
        let b = indices.len();
        let flat = attention.reshape((b, self.cells))?;
        let mut rows = Vec::with_capacity(b * self.cells);
        for &i in indices {
            rows.extend_from_slice(&self.masks[i * self.cells..][..self.cells]);
        }
        let mask =
            Tensor::from_vec(rows, (b, self.cells), &Device::Cpu)?.to_device(attention.device())?;
        let mass = (flat * mask)?.sum(1)?;
        let shortfall = (GARMENT_TARGET - mass)?.relu()?;
        Ok((shortfall.mean_all()? * self.weight)?)
    }
}

/// Appends `mask` (1 for garment) to `masks`, or all ones when it says
/// nothing; returns whether it lets the prior act.
fn push_mask(masks: &mut Vec<f32>, cells: usize, mask: Option<&[bool]>) -> bool {
    match mask.filter(|m| m.iter().any(|&g| g) && !m.iter().all(|&g| g)) {
        Some(m) => {
            masks.extend(m.iter().map(|&g| if g { 1f32 } else { 0.0 }));
            true
        }
        None => {
            masks.extend(std::iter::repeat_n(1f32, cells));
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attention(rows: &[[f32; 4]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_vec(flat, (rows.len(), 2, 2), &Device::Cpu).unwrap()
    }

    fn value(t: &Tensor) -> f32 {
        t.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn attention_on_the_garment_costs_nothing() {
        let prior = GarmentPrior::from_masks(4, &[true, true, false, false], 1.0);
        let loss = prior
            .loss(&attention(&[[0.5, 0.45, 0.05, 0.0]]), &[0])
            .unwrap();
        assert_eq!(value(&loss), 0.0);
    }

    #[test]
    fn attention_off_the_garment_costs_the_weighted_shortfall() {
        let prior = GarmentPrior::from_masks(4, &[true, false, false, false], 2.0);
        let loss = prior
            .loss(&attention(&[[0.4, 0.2, 0.2, 0.2]]), &[0])
            .unwrap();
        assert!((value(&loss) - 2.0 * (0.9 - 0.4)).abs() < 1e-6);
    }

    #[test]
    fn each_image_is_scored_on_its_own_mask() {
        let masks = vec![
            true, false, false, false, // image 0: the first cell
            false, false, false, true, // image 1: the last cell
        ];
        let prior = GarmentPrior::from_masks(4, &masks, 1.0);
        let on_first = attention(&[[1.0, 0.0, 0.0, 0.0]]);
        assert_eq!(value(&prior.loss(&on_first, &[0]).unwrap()), 0.0);
        assert!((value(&prior.loss(&on_first, &[1]).unwrap()) - 0.9).abs() < 1e-6);
    }

    #[test]
    fn masks_that_say_nothing_never_act() {
        let masks = vec![
            false, false, false, false, // no garment found
            true, true, true, true, // garment everywhere
            true, false, false, false,
        ];
        let prior = GarmentPrior::from_masks(4, &masks, 1.0);
        assert_eq!(prior.informative(), 1);
        let spread = attention(&[[0.25; 4]]);
        assert_eq!(value(&prior.loss(&spread, &[0]).unwrap()), 0.0);
        assert_eq!(value(&prior.loss(&spread, &[1]).unwrap()), 0.0);
        assert!(value(&prior.loss(&spread, &[2]).unwrap()) > 0.0);
    }

    #[test]
    fn the_gradient_moves_attention_onto_the_garment() {
        use candle_nn::{Optimizer, VarMap, SGD};
        let prior = GarmentPrior::from_masks(4, &[false, false, true, true], 1.0);
        let vars = VarMap::new();
        let logits = vars
            .get(
                (1, 4),
                "logits",
                candle_nn::Init::Const(0.0),
                candle_core::DType::F32,
                &Device::Cpu,
            )
            .unwrap();
        let mut sgd = SGD::new(vars.all_vars(), 1.0).unwrap();
        let mass = |l: &Tensor| {
            let a = candle_nn::ops::softmax(l, 1).unwrap();
            a.narrow(1, 2, 2)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let before = mass(&logits);
        for _ in 0..20 {
            let a = candle_nn::ops::softmax(&logits, 1).unwrap();
            let loss = prior.loss(&a.reshape((1, 2, 2)).unwrap(), &[0]).unwrap();
            sgd.backward_step(&loss).unwrap();
        }
        let after = mass(&logits);
        assert!(before < 0.51 && after >= 0.85, "{before} -> {after}");
    }
}
