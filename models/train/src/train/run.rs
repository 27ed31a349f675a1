//! What the head trainer and fine-tuning share: the run's records and
//! options, the checkpoint directories of a run (`last/` with the resume
//! state, `best/`), the model card of a trained model, and the loss of a
//! batch of triplets.

use std::path::{Path, PathBuf};
use std::time::Instant;

use asen_models::{
    utc_date, AttributeSpec, ModelCard, ModelDir, ModelError, Provenance, Result, WEIGHTS_FILE,
};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::config::{Negatives, TrainConfig};
use super::loss::{batch_all_ranking_loss, triplet_ranking_loss};
use super::prior::GarmentPrior;
use super::sampler::{Triplet, TripletSampler};
use crate::data::Dataset;
use crate::eval::RetrievalReport;

/// File of the resume state inside `last/`.
pub const STATE_FILE: &str = "state.json";

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean training loss.
    pub loss: f64,
    /// Validation mAP (0 to 1).
    pub valid_map: f64,
    /// Training throughput.
    pub triplets_per_s: f64,
    /// Wall time of the epoch, validation included.
    pub seconds: f64,
}

/// The optimizer-free resume state written beside the last checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// Epochs completed.
    pub epoch: usize,
    /// Best validation mAP so far.
    pub best_map: f64,
    /// Epoch (1-based) of the best checkpoint.
    pub best_epoch: usize,
    /// Seed of the run.
    pub seed: u64,
    /// The configuration of the run (a resume must use the same).
    pub config: TrainConfig,
    /// Every epoch so far.
    pub history: Vec<EpochRecord>,
}

/// Progress reports of [`crate::train_head`].
#[derive(Debug, Clone)]
pub enum TrainEvent {
    /// An epoch starts: `steps` optimiser steps of `batch` triplets.
    EpochStart {
        /// 1-based epoch.
        epoch: usize,
        /// Steps in the epoch.
        steps: usize,
    },
    /// One optimiser step done.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Triplets in the step.
        triplets: usize,
        /// Loss of the step.
        loss: f32,
    },
    /// An epoch finished (validation done, checkpoints written).
    Epoch(EpochRecord),
    /// Garment masks for the attention prior: `done` of `total` images.
    GarmentMasks {
        /// Images done.
        done: usize,
        /// Images in the dataset.
        total: usize,
        /// Images so far whose mask lets the prior act (some cells are
        /// garment, not all).
        informative: usize,
    },
}

/// How to run a training.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `<out>/last/` when it exists.
    pub resume: bool,
    /// The command line that started the run (written into the cards, every
    /// absolute path reduced to its file name).
    pub command: Option<String>,
    /// Free text about the data (written into the cards, absolute paths
    /// reduced to file names).
    pub notes: Option<String>,
    /// Directories searched, in order, for the shipped ImageNet weights of
    /// the backbone (fine-tuning starts from them; see
    /// [`asen_models::locate_weights`]).
    pub weights_dirs: Vec<PathBuf>,
    /// Images per forward pass during validation (64 when 0).
    pub eval_batch_size: usize,
}

impl TrainOptions {
    /// Images per forward pass during validation.
    pub(crate) fn eval_batch(&self) -> usize {
        if self.eval_batch_size == 0 {
            64
        } else {
            self.eval_batch_size
        }
    }
}

/// The result of a training run.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Model directory of the best validation checkpoint.
    pub best_dir: PathBuf,
    /// Model directory of the last epoch.
    pub last_dir: PathBuf,
    /// Best validation mAP and its epoch.
    pub best_map: f64,
    /// 1-based epoch of the best checkpoint.
    pub best_epoch: usize,
    /// Every epoch of the run (those before a resume included).
    pub history: Vec<EpochRecord>,
}

/// Up to `n` of `images` drawn with `seed`, in ascending order: the images
/// whose features set the head's BatchNorm statistics after each epoch.
pub(crate) fn batch_norm_sample(images: &[usize], seed: u64, n: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut v = images.to_vec();
    rand::seq::SliceRandom::shuffle(&mut v[..], &mut rng);
    v.truncate(n);
    v.sort_unstable();
    v
}

/// `(B, 3B)` f32: 1 where image `indices[j]`, embedded for triplet
/// `j % B`'s attribute, is a negative of triplet `i` (same attribute, a known
/// other value). Each triplet's own negative is always in it.
fn negative_mask(
    dataset: &Dataset,
    batch: &[Triplet],
    indices: &[usize],
    device: &Device,
) -> Result<Tensor> {
    let b = batch.len();
    let mut mask = vec![0f32; b * indices.len()];
    for (i, t) in batch.iter().enumerate() {
        let value = dataset.images()[t.anchor].labels[t.attribute];
        for (j, &image) in indices.iter().enumerate() {
            let other = dataset.images()[image].labels[t.attribute];
            if batch[j % b].attribute == t.attribute && other.is_some() && other != value {
                mask[i * indices.len() + j] = 1.0;
            }
        }
    }
    Ok(Tensor::from_vec(mask, (b, indices.len()), device)?)
}

/// Save every variable of `map` (safetensors, names as in the map).
pub(crate) fn save_var_map(map: &VarMap, path: &Path) -> Result<()> {
    map.save(path).map_err(|e| ModelError::Io {
        path: path.to_path_buf(),
        cause: std::io::Error::other(e.to_string()),
    })
}

/// Set every variable of `map` from the tensor of the same name in `model`
/// (a model directory a run of the same configuration wrote).
pub(crate) fn load_var_map(map: &VarMap, model: &ModelDir) -> Result<()> {
    let data = map.data().lock().unwrap_or_else(|p| p.into_inner());
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match model.tensors().get(name) {
            Some(t) if t.shape() == var.shape() => var.set(&t.to_dtype(DType::F32)?)?,
            Some(t) => problems.push(format!(
                "{name} has shape {:?}, expected {:?}",
                t.dims(),
                var.dims()
            )),
            None => problems.push(format!("{name} is missing")),
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    problems.sort();
    Err(ModelError::CheckpointMismatch {
        path: model.checkpoint.path().to_path_buf(),
        variant: format!("{} model", model.card.head),
        report: problems.join("; "),
    })
}

/// Write a model directory (`model.safetensors` + `card.json`) of the
/// variables in `map`.
fn write_model_dir(dir: &Path, map: &VarMap, card: &ModelCard) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    save_var_map(map, &dir.join(WEIGHTS_FILE))?;
    card.save(dir)
}

/// Where a run keeps its checkpoints: `last/` (with the resume state) and `best/`.
pub(crate) struct RunDirs {
    pub(crate) last: PathBuf,
    pub(crate) best: PathBuf,
    pub(crate) state: PathBuf,
}

impl RunDirs {
    pub(crate) fn new(out_dir: &Path) -> Self {
        let last = out_dir.join("last");
        Self {
            state: last.join(STATE_FILE),
            best: out_dir.join("best"),
            last,
        }
    }

    /// The resume state of `cfg`'s run: read from `last/` when `resume` is
    /// asked and it exists (it must have been written by the same
    /// configuration, `epochs` aside), else a fresh one. The flag says
    /// whether it was read.
    pub(crate) fn start(&self, cfg: &TrainConfig, resume: bool) -> Result<(ResumeState, bool)> {
        let state_path = &self.state;
        if resume && state_path.is_file() {
            let text =
                std::fs::read_to_string(state_path).map_err(|e| ModelError::io(state_path, e))?;
            let mut state: ResumeState = serde_json::from_str(&text).map_err(|e| {
                ModelError::InvalidArgument(format!(
                    "{}: invalid resume state: {e}",
                    state_path.display()
                ))
            })?;
            let same = TrainConfig {
                epochs: cfg.epochs,
                ..state.config.clone()
            };
            if &same != cfg {
                return Err(ModelError::InvalidArgument(format!(
                    "{} was written by another configuration ({:?}); resume with the same one or start a new output directory",
                    state_path.display(),
                    state.config
                )));
            }
            state.config = cfg.clone();
            Ok((state, true))
        } else {
            let state = ResumeState {
                epoch: 0,
                best_map: f64::NEG_INFINITY,
                best_epoch: 0,
                seed: cfg.seed,
                config: cfg.clone(),
                history: Vec::new(),
            };
            Ok((state, false))
        }
    }

    /// Record a finished epoch: history and best so far in `state`, the
    /// variables of `map` with `card` (notes from `record` and `report`) into
    /// `last/` and, when the validation mAP improved, `best/`.
    pub(crate) fn finish_epoch(
        &self,
        state: &mut ResumeState,
        (record, report): (&EpochRecord, &RetrievalReport),
        (map, card): (&VarMap, &ModelCard),
    ) -> Result<()> {
        state.epoch = record.epoch;
        state.history.push(record.clone());
        let improved = report.map > state.best_map;
        if improved {
            state.best_map = report.map;
            state.best_epoch = record.epoch;
        }
        let mut epoch_card = card.clone();
        epoch_card.provenance.notes =
            Some(card_notes(card.provenance.notes.as_deref(), record, report));
        write_model_dir(&self.last, map, &epoch_card)?;
        write_json(&self.state, state)?;
        if improved {
            write_model_dir(&self.best, map, &epoch_card)?;
            write_json(&self.best.join("valid.json"), report)?;
        }
        Ok(())
    }

    /// The outcome of a run whose epochs are done.
    pub(crate) fn outcome(self, state: ResumeState) -> Result<TrainOutcome> {
        if !self.best.join(WEIGHTS_FILE).is_file() {
            return Err(ModelError::InvalidArgument(format!(
                "{} holds no best checkpoint (was the run already complete at resume?)",
                self.best.display()
            )));
        }
        Ok(TrainOutcome {
            best_dir: self.best,
            last_dir: self.last,
            best_map: state.best_map,
            best_epoch: state.best_epoch,
            history: state.history,
        })
    }
}

/// The dataset images of a batch of triplets (anchors, then positives, then
/// negatives) and the attribute of each.
pub(crate) fn triplet_batch(batch: &[Triplet]) -> (Vec<usize>, Vec<u32>) {
    let b = batch.len();
    let mut indices = Vec::with_capacity(3 * b);
    indices.extend(batch.iter().map(|t| t.anchor));
    indices.extend(batch.iter().map(|t| t.positive));
    indices.extend(batch.iter().map(|t| t.negative));
    let attrs = (0..3)
        .flat_map(|_| batch.iter().map(|t| t.attribute as u32))
        .collect();
    (indices, attrs)
}

/// The ranking loss of embeddings `[3B, D]` of `batch` laid out as
/// [`triplet_batch`] (`indices`), with `cfg`'s margin and negatives.
pub(crate) fn batch_loss(
    embedding: &Tensor,
    cfg: &TrainConfig,
    dataset: &Dataset,
    batch: &[Triplet],
    indices: &[usize],
) -> Result<Tensor> {
    let b = batch.len();
    let (anchor, positive) = (embedding.narrow(0, 0, b)?, embedding.narrow(0, b, b)?);
    match cfg.negatives {
        Negatives::Sampled => triplet_ranking_loss(
            &anchor,
            &positive,
            &embedding.narrow(0, 2 * b, b)?,
            cfg.margin,
        ),
        Negatives::BatchAll => batch_all_ranking_loss(
            &anchor,
            &positive,
            embedding,
            &negative_mask(dataset, batch, indices, embedding.device())?,
            cfg.margin,
        ),
    }
}

/// What one epoch of training on cached features did, before its validation.
pub(crate) struct EpochTraining {
    /// Learning rate of the epoch.
    pub(crate) lr: f64,
    /// Triplets trained on.
    pub(crate) triplets: usize,
    /// Summed loss (per triplet).
    pub(crate) loss_sum: f64,
    /// When the epoch started.
    pub(crate) started: Instant,
    /// Seconds of the optimiser steps alone.
    pub(crate) train_secs: f64,
}

impl EpochTraining {
    /// The record of 0-based `epoch` once validated at `valid_map` (its wall time so far).
    pub(crate) fn record(&self, epoch: usize, valid_map: f64) -> EpochRecord {
        EpochRecord {
            epoch: epoch + 1,
            lr: self.lr,
            loss: self.loss_sum / self.triplets.max(1) as f64,
            valid_map,
            triplets_per_s: self.triplets as f64 / self.train_secs.max(1e-9),
            seconds: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// One epoch on cached features: the schedule's rate, the epoch's triplets from `sampler`,
/// then optimiser steps on batches of `cfg.batch_size`, each embedded by the head `head`
/// builds (rebuilt every step: heads may keep re-laid-out copies of the variables) with the
/// head's attribute `offset` + the dataset's, BatchNorm on batch statistics when
/// `train_batch_norm`, and the garment `prior` on the attention when given.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_epoch(
    epoch: usize,
    sampler: &TripletSampler,
    (cfg, dataset, features): (&TrainConfig, &Dataset, &crate::features::FeatureCache),
    head: &dyn Fn() -> Result<asen_models::Head>,
    offset: u32,
    train_batch_norm: bool,
    prior: Option<&GarmentPrior>,
    optimizer: &mut candle_nn::AdamW,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<EpochTraining> {
    use candle_nn::Optimizer;
    let started = Instant::now();
    let lr = cfg.schedule.apply(optimizer, epoch);
    let triplets = sampler.epoch(epoch as u64, cfg.triplets_per_epoch);
    progress(&TrainEvent::EpochStart {
        epoch: epoch + 1,
        steps: triplets.len().div_ceil(cfg.batch_size),
    });
    let device = Device::Cpu;
    let mut loss_sum = 0f64;
    for (s, batch) in triplets.chunks(cfg.batch_size).enumerate() {
        let b = batch.len();
        let (indices, attrs) = triplet_batch(batch);
        let x = features.get(&indices, &device)?;
        let attrs: Vec<u32> = attrs.into_iter().map(|a| a + offset).collect();
        let attr = Tensor::from_vec(attrs, 3 * b, &device)?;
        let out = head()?.forward_supervised(&x, &attr, train_batch_norm)?;
        let mut loss = batch_loss(&out.embeddings[0], cfg, dataset, batch, &indices)?;
        for extra in &out.embeddings[1..] {
            loss = (loss + batch_loss(extra, cfg, dataset, batch, &indices)?)?;
        }
        if let (Some(prior), Some(attention)) = (prior, &out.attention) {
            loss = (loss + prior.loss(attention, &indices)?)?;
        }
        optimizer.backward_step(&loss)?;
        let value = checked_loss(&loss, epoch, s)?;
        loss_sum += f64::from(value) * b as f64;
        progress(&TrainEvent::Step {
            epoch: epoch + 1,
            step: s + 1,
            triplets: b,
            loss: value,
        });
    }
    Ok(EpochTraining {
        lr,
        triplets: triplets.len(),
        loss_sum,
        started,
        train_secs: started.elapsed().as_secs_f64(),
    })
}

/// A finite loss value, or the error that stops the run.
pub(crate) fn checked_loss(loss: &Tensor, epoch: usize, step: usize) -> Result<f32> {
    let value = loss.to_scalar::<f32>()?;
    if !value.is_finite() {
        return Err(ModelError::InvalidArgument(format!(
            "the loss became {value} at epoch {} step {}; lower the learning rate",
            epoch + 1,
            step + 1
        )));
    }
    Ok(value)
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| {
        ModelError::InvalidArgument(format!("cannot serialise {}: {e}", path.display()))
    })?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// The card of a model trained with `cfg` on `dataset`.
pub fn trained_card(
    dataset: &Dataset,
    cfg: &TrainConfig,
    command: Option<String>,
    notes: Option<String>,
) -> Result<ModelCard> {
    let attributes = dataset
        .attributes()
        .iter()
        .map(|a| AttributeSpec {
            name: a.name.clone(),
            values: a.values.clone(),
        })
        .collect();
    let mut card = ModelCard::new(
        cfg.head,
        cfg.backbone.name(),
        cfg.input_size,
        attributes,
        cfg.head_config(dataset.attributes().len()),
    )?;
    card.colour_histogram = cfg.colour_histogram;
    card.fine_map = cfg.fine_map;
    card.provenance = trained_provenance(command.as_deref(), notes.as_deref());
    Ok(card)
}

/// The provenance of a model trained today by `command` on data described by `notes`
/// (absolute paths reduced to file names).
pub(crate) fn trained_provenance(command: Option<&str>, notes: Option<&str>) -> Provenance {
    Provenance {
        source_file: None,
        source_sha256: None,
        command: command.map(without_absolute_paths),
        date: Some(utc_date()),
        notes: notes.map(without_absolute_paths),
    }
}

/// `text` with every absolute path reduced to its file name, so that a
/// card records no machine's layout (`--data /home/me/data/labels.csv`
/// becomes `--data labels.csv`). Words are split at whitespace; a path
/// after `=` (`--out=/x/y`) is reduced too.
pub(crate) fn without_absolute_paths(text: &str) -> String {
    let reduce = |word: &str| -> String {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (Some(k), v),
            None => (None, word),
        };
        let path = Path::new(value);
        let value = if path.is_absolute() {
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            value.to_string()
        };
        match key {
            Some(k) => format!("{k}={value}"),
            None => value,
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    for c in text.chars() {
        if c.is_whitespace() {
            out.push_str(&reduce(&word));
            word.clear();
            out.push(c);
        } else {
            word.push(c);
        }
    }
    out.push_str(&reduce(&word));
    out
}

/// The card notes of an epoch: the run's own notes (`base`), then the
/// validation result.
fn card_notes(base: Option<&str>, record: &EpochRecord, report: &RetrievalReport) -> String {
    let per: Vec<String> = report
        .attributes
        .iter()
        .map(|a| format!("{} {:.2}", a.attribute, a.map * 100.0))
        .collect();
    let mut notes = format!(
        "epoch {}: valid mAP {:.2} % ({}); train loss {:.4}",
        record.epoch,
        record.valid_map * 100.0,
        per.join(", "),
        record.loss
    );
    if let Some(extra) = base {
        notes = format!("{extra}; {notes}");
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_become_file_names() {
        assert_eq!(
            without_absolute_paths(
                "/opt/bin/asen train --data /home/me/labels.csv --out=/runs/x --cache rel/c.bin"
            ),
            "asen train --data labels.csv --out=x --cache rel/c.bin"
        );
        assert_eq!(
            without_absolute_paths("trained on /data/labels.csv (9 images)"),
            "trained on labels.csv (9 images)"
        );
    }
}
