//! The copy verdict's signal: fit an instance-level signature on synthetic
//! copies of train images, calibrate its threshold on valid pairs, and measure
//! it on any split.
//!
//! - [`CopyRecipe`]: how a copy is made (rescale, crop, pad, flip, JPEG, colours, a detail).
//! - [`look_alike_pairs`]: anchors and hard negatives (same article type and colour).
//! - [`fit_copy_signature`]: pooled backbone features of train anchors and their copies,
//!   a projection fitted with InfoNCE ([`fit_projection`]), the threshold from valid pairs
//!   (Youden's J), so the test split is never seen.
//! - [`evaluate_copies`]: AUC and flagged shares on a split's pairs at the card's threshold.

mod fit;
mod pairs;
mod transform;

use candle_core::Tensor;
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use asen_models::{
    resize_and_crop, CopySignature, CopySignatureSpec, Embedder, ModelError, Result,
};

use crate::data::{Dataset, Split};
use crate::features::read_image;

pub use fit::{fit_projection, flagged_share, roc_auc, youden_threshold, FitConfig};
pub use pairs::{look_alike_pairs, CopyPair};
pub use transform::CopyRecipe;

/// Progress of a long step: (what, done, total).
pub type CopyProgress<'a> = &'a (dyn Fn(&str, usize, usize) + Sync);

/// Settings of [`fit_copy_signature`].
#[derive(Debug, Clone, PartialEq)]
pub struct CopyFitOptions {
    /// Train anchors (each with `copies_per_anchor` copies).
    pub anchors: usize,
    /// Copies drawn per train anchor.
    pub copies_per_anchor: usize,
    /// Valid pairs the threshold is chosen on.
    pub calibration_pairs: usize,
    /// Attributes whose shared labels make a look-alike (`articleType`, `baseColour`).
    pub group_by: Vec<String>,
    /// The projection fit.
    pub fit: FitConfig,
    /// Seed of the anchors, copies and negatives.
    pub seed: u64,
}

impl Default for CopyFitOptions {
    fn default() -> Self {
        Self {
            anchors: 3000,
            copies_per_anchor: 2,
            calibration_pairs: 600,
            group_by: vec!["articleType".into(), "baseColour".into()],
            fit: FitConfig::default(),
            seed: 0,
        }
    }
}

/// Scores of a split's pairs and what they give at a threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CopyReport {
    /// The split the pairs come from.
    pub split: String,
    /// Copies scored.
    pub copies: usize,
    /// Look-alikes scored.
    pub look_alikes: usize,
    /// Area under the ROC curve, copies against look-alikes.
    pub auc: f64,
    /// The threshold applied.
    pub threshold: f32,
    /// Share of copies at or above it.
    pub flagged_copies: f64,
    /// Share of look-alikes at or above it.
    pub flagged_look_alikes: f64,
    /// Cosine similarities of each copy to its original.
    #[serde(skip)]
    pub copy_scores: Vec<f32>,
    /// Cosine similarities of each look-alike to its anchor.
    #[serde(skip)]
    pub look_alike_scores: Vec<f32>,
}

impl std::fmt::Display for CopyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| {} split | value |", self.split)?;
        writeln!(f, "| --- | ---: |")?;
        writeln!(
            f,
            "| copies / look-alikes | {} / {} |",
            self.copies, self.look_alikes
        )?;
        writeln!(f, "| ROC-AUC | {:.4} |", self.auc)?;
        writeln!(f, "| threshold | {:.4} |", self.threshold)?;
        writeln!(
            f,
            "| copies flagged | {:.1} % |",
            100.0 * self.flagged_copies
        )?;
        write!(
            f,
            "| look-alikes flagged | {:.1} % |",
            100.0 * self.flagged_look_alikes
        )
    }
}

/// Fit a copy signature for `embedder`'s backbone on `dataset`'s train split and calibrate
/// its threshold on the valid split. Returns the weights and the card entry.
pub fn fit_copy_signature(
    embedder: &Embedder,
    dataset: &Dataset,
    opts: &CopyFitOptions,
    progress: CopyProgress,
) -> Result<(CopySignature, CopySignatureSpec, CopyReport)> {
    let groups = group_attributes(dataset, &opts.group_by)?;
    let pairs = look_alike_pairs(dataset, Split::Train, &groups, opts.anchors, opts.seed);
    if pairs.len() < 2 {
        return Err(ModelError::InvalidArgument(
            "the train split has no two images sharing the grouping labels".into(),
        ));
    }
    let recipe = CopyRecipe::calibration();
    let k = opts.copies_per_anchor.max(1);
    let originals: Vec<usize> = pairs.iter().map(|p| p.anchor).collect();
    let anchors = pooled_images(
        embedder,
        dataset,
        &originals,
        None,
        0,
        "train anchors",
        progress,
    )?;
    let mut anchor_rows = Vec::new();
    let mut copy_rows = Vec::new();
    let mut pair_groups = Vec::new();
    for round in 0..k {
        let copies = pooled_images(
            embedder,
            dataset,
            &originals,
            Some(&recipe),
            opts.seed.wrapping_add(1 + round as u64),
            "train copies",
            progress,
        )?;
        anchor_rows.push(anchors.clone());
        copy_rows.push(copies);
        pair_groups.extend(pairs.iter().map(|p| p.group));
    }
    let anchors = Tensor::cat(&anchor_rows, 0)?;
    let copies = Tensor::cat(&copy_rows, 0)?;
    progress("fitting", 0, 1);
    let signature = fit_projection(&anchors, &copies, &pair_groups, &opts.fit)?;
    progress("fitting", 1, 1);
    let valid = score_split(
        embedder,
        &signature,
        dataset,
        Split::Valid,
        &groups,
        opts.calibration_pairs,
        opts.seed.wrapping_add(1000),
        &recipe,
        progress,
    )?;
    let threshold = youden_threshold(&valid.0, &valid.1).ok_or_else(|| {
        ModelError::InvalidArgument(
            "the valid split has no look-alike pairs to calibrate on".into(),
        )
    })?;
    let report = report(Split::Valid, valid, threshold);
    let spec = CopySignatureSpec {
        dim: signature.dim(),
        threshold,
        calibration: format!(
            "fitted on {} train anchors x {k} copies, threshold by Youden's J on {} valid copies \
             and {} valid look-alikes (same {}), seed {}",
            pairs.len(),
            report.copies,
            report.look_alikes,
            opts.group_by.join(" and "),
            opts.seed
        ),
    };
    Ok((signature, spec, report))
}

/// Score `n` pairs of `split` (copies made by `recipe`) with the embedder's signature, at
/// its card threshold.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_copies(
    embedder: &Embedder,
    dataset: &Dataset,
    split: Split,
    group_by: &[String],
    n: usize,
    seed: u64,
    recipe: &CopyRecipe,
    progress: CopyProgress,
) -> Result<CopyReport> {
    let (Some(signature), Some(spec)) = (embedder.signature(), &embedder.card().copy_signature)
    else {
        return Err(ModelError::InvalidArgument(
            "the model has no copy signature (copy_signature.safetensors)".into(),
        ));
    };
    let groups = group_attributes(dataset, group_by)?;
    let scores = score_split(
        embedder, signature, dataset, split, &groups, n, seed, recipe, progress,
    )?;
    if scores.0.is_empty() {
        return Err(ModelError::InvalidArgument(format!(
            "the {split} split has no two images sharing the grouping labels"
        )));
    }
    Ok(report(split, scores, spec.threshold))
}

fn report(split: Split, (copies, look_alikes): (Vec<f32>, Vec<f32>), threshold: f32) -> CopyReport {
    CopyReport {
        split: split.to_string(),
        copies: copies.len(),
        look_alikes: look_alikes.len(),
        auc: roc_auc(&copies, &look_alikes),
        threshold,
        flagged_copies: flagged_share(&copies, threshold),
        flagged_look_alikes: flagged_share(&look_alikes, threshold),
        copy_scores: copies,
        look_alike_scores: look_alikes,
    }
}

fn group_attributes(dataset: &Dataset, names: &[String]) -> Result<Vec<usize>> {
    names.iter().map(|n| dataset.attribute_index(n)).collect()
}

/// (copy scores, look-alike scores) of up to `n` pairs of `split`.
#[allow(clippy::too_many_arguments)]
fn score_split(
    embedder: &Embedder,
    signature: &CopySignature,
    dataset: &Dataset,
    split: Split,
    groups: &[usize],
    n: usize,
    seed: u64,
    recipe: &CopyRecipe,
    progress: CopyProgress,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let pairs = look_alike_pairs(dataset, split, groups, n, seed);
    let anchors: Vec<usize> = pairs.iter().map(|p| p.anchor).collect();
    let negatives: Vec<usize> = pairs.iter().map(|p| p.negative).collect();
    let what = format!("{split} pairs");
    let a = signature.project(&pooled_images(
        embedder, dataset, &anchors, None, 0, &what, progress,
    )?)?;
    let c = signature.project(&pooled_images(
        embedder,
        dataset,
        &anchors,
        Some(recipe),
        seed.wrapping_add(1),
        &what,
        progress,
    )?)?;
    let g = signature.project(&pooled_images(
        embedder, dataset, &negatives, None, 0, &what, progress,
    )?)?;
    let rowwise =
        |x: &Tensor, y: &Tensor| -> Result<Vec<f32>> { Ok((x * y)?.sum(1)?.to_vec1::<f32>()?) };
    Ok((rowwise(&a, &c)?, rowwise(&a, &g)?))
}

/// Pooled backbone features `[N, C]` of dataset images, or of copies of them made by
/// `recipe` (image i's copy drawn from seed `(seed, i)`, so the draw is reproducible
/// whatever the batching and threads).
fn pooled_images(
    embedder: &Embedder,
    dataset: &Dataset,
    indices: &[usize],
    recipe: Option<&CopyRecipe>,
    seed: u64,
    what: &str,
    progress: CopyProgress,
) -> Result<Tensor> {
    let cfg = *embedder.preprocess_config();
    let batch = 32;
    let mut rows = Vec::with_capacity(indices.len());
    for (b, chunk) in indices.chunks(batch).enumerate() {
        let crops: Vec<RgbImage> = chunk
            .par_iter()
            .map(|&i| {
                let path = dataset.image_path(i).unwrap_or_default();
                let image = read_image(&path, &cfg)?;
                let image = match recipe {
                    Some(r) => {
                        let mut rng = ChaCha8Rng::seed_from_u64(
                            seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        );
                        r.apply(&image, &mut rng)?
                    }
                    None => image,
                };
                Ok(resize_and_crop(&image, cfg.size))
            })
            .collect::<Result<_>>()?;
        let x = asen_models::to_tensor(&crops, embedder.device())?;
        rows.push(CopySignature::pool(&embedder.features(&x)?)?);
        progress(
            what,
            (b * batch + chunk.len()).min(indices.len()),
            indices.len(),
        );
    }
    if rows.is_empty() {
        return Err(ModelError::InvalidArgument(format!("{what}: no images")));
    }
    Ok(Tensor::cat(&rows, 0)?)
}
