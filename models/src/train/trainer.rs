//! The trainer: a head on top of a frozen backbone whose feature maps are
//! cached ([`crate::dataset_features`]), trained with triplets drawn fresh
//! every epoch, the cosine margin ranking loss and Adam with step decay.
//!
//! Every epoch writes `last/` (a model directory plus `state.json`, the
//! optimizer-free resume state) and, when the validation mAP improves,
//! `best/`, under the output directory. Parameters are initialised from the
//! seed (not from candle's unseeded CPU generator), and triplets depend only
//! on the seed and the epoch, so a run is reproducible; a resumed run
//! restarts Adam's moments, which is the only difference from an
//! uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, Optimizer, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backbone::BackboneKind;
use crate::card::{AttributeSpec, ModelCard, Provenance, WEIGHTS_FILE};
use crate::data::{Dataset, Split};
use crate::error::{ModelError, Result};
use crate::eval::{evaluate_head, RetrievalReport};
use crate::head::{Head, HeadConfig, HeadKind};
use crate::train::cache::FeatureCache;
use crate::train::finetune::FinetuneSettings;
use crate::train::loss::{batch_all_ranking_loss, triplet_ranking_loss};
use crate::train::sampler::{Sampling, Triplet, TripletSampler};
use crate::train::schedule::StepDecay;

/// File of the resume state inside `last/`.
pub const STATE_FILE: &str = "state.json";

fn default_true() -> bool {
    true
}

/// What and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Head architecture (`global`, `csn`, `asen_v1`, `asen_v2`, ...).
    pub head: HeadKind,
    /// The frozen backbone whose features are cached.
    pub backbone: BackboneKind,
    /// Whether the per-cell colour histogram ([`crate::colour`]) is appended
    /// to the backbone's feature map.
    #[serde(default)]
    pub colour_histogram: bool,
    /// Square input side in pixels.
    pub input_size: u32,
    /// Embedding size `D` (ignored without `feature_fc`).
    pub embedding_dim: usize,
    /// Whether the head ends in the `feature_fc` projection to `D`. ASEN v2
    /// only may go without: its embedding is then the attended, gated
    /// feature itself (`C` values), which starts close to the backbone's
    /// pooled features instead of a random projection of them.
    #[serde(default = "default_true")]
    pub feature_fc: bool,
    /// Width of the attention branch (ASEN heads).
    pub attention_dim: usize,
    /// Hidden width of the channel gate (ASEN heads).
    pub gate_hidden: usize,
    /// Epochs to train in all (a resumed run continues up to it).
    pub epochs: usize,
    /// Triplets drawn per epoch.
    pub triplets_per_epoch: usize,
    /// Triplets per optimiser step.
    pub batch_size: usize,
    /// Learning rate schedule (Adam, no weight decay).
    pub schedule: StepDecay,
    /// Margin of the ranking loss.
    pub margin: f64,
    /// Seed of the initialisation and of the triplets.
    pub seed: u64,
    /// How triplet values are drawn.
    #[serde(default)]
    pub sampling: Sampling,
    /// Which negatives each anchor is ranked against.
    #[serde(default)]
    pub negatives: Negatives,
    /// End-to-end fine-tuning settings ([`crate::finetune`]); `None` for a
    /// head trained on cached features of the frozen backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneSettings>,
}

/// The negatives of the ranking loss.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Negatives {
    /// The paper: each anchor against its own sampled negative.
    #[default]
    Sampled,
    /// Each anchor against every image of the batch embedded for the same
    /// attribute with another value (batch-all: about 3x the batch / the
    /// number of attributes negatives per anchor instead of one), so the
    /// violating, confusable ones drive the gradient.
    BatchAll,
}

impl std::str::FromStr for Negatives {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sampled" => Ok(Negatives::Sampled),
            "batch-all" => Ok(Negatives::BatchAll),
            other => Err(ModelError::InvalidArgument(format!(
                "unknown negatives {other:?}; expected sampled or batch-all"
            ))),
        }
    }
}

impl TrainConfig {
    /// The defaults for `head` on `backbone`: D 128, attention and gate
    /// width 256, 10 epochs of 20,000 triplets in batches of 64, Adam 1e-4
    /// halved every 4 epochs, margin 0.2, seed 0.
    pub fn new(head: HeadKind, backbone: BackboneKind) -> Self {
        Self {
            head,
            backbone,
            colour_histogram: false,
            input_size: 224,
            embedding_dim: 128,
            feature_fc: true,
            attention_dim: 256,
            gate_hidden: 256,
            epochs: 10,
            triplets_per_epoch: 20_000,
            batch_size: 64,
            schedule: StepDecay {
                base_lr: 1e-4,
                factor: 0.5,
                every_epochs: 4,
            },
            margin: crate::train::loss::DEFAULT_MARGIN,
            seed: 0,
            sampling: Sampling::Paper,
            negatives: Negatives::Sampled,
            finetune: None,
        }
    }

    /// The head sizes for `n_attributes` attributes on this backbone.
    pub fn head_config(&self, n_attributes: usize) -> HeadConfig {
        HeadConfig {
            in_channels: self.backbone.feature_channels(self.colour_histogram),
            n_attributes,
            attention_dim: self.attention_dim,
            gate_hidden: self.gate_hidden,
            embedding_dim: if self.feature_fc {
                self.embedding_dim
            } else {
                self.backbone.feature_channels(self.colour_histogram)
            },
            feature_fc: self.feature_fc,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.triplets_per_epoch == 0 || self.batch_size == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "training needs epochs, triplets per epoch and batch size >= 1, got {}, {}, {}",
                self.epochs, self.triplets_per_epoch, self.batch_size
            )));
        }
        if !(self.margin.is_finite() && self.margin >= 0.0) {
            return Err(ModelError::InvalidArgument(format!(
                "margin must be a finite number >= 0, got {}",
                self.margin
            )));
        }
        if !self.feature_fc && self.head != HeadKind::AsenV2 {
            return Err(ModelError::InvalidArgument(format!(
                "only an asen_v2 head can go without feature_fc, not {}",
                self.head
            )));
        }
        StepDecay::new(
            self.schedule.base_lr,
            self.schedule.factor,
            self.schedule.every_epochs,
        )?;
        if let Some(f) = &self.finetune {
            f.validate()?;
        }
        self.head_config(1).validate(self.head)
    }
}

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

/// Progress reports of [`train_head`].
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
}

/// How to run a training.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `<out>/last/` when it exists.
    pub resume: bool,
    /// The command line that started the run (written into the cards).
    pub command: Option<String>,
    /// Free text about the data (written into the cards).
    pub notes: Option<String>,
    /// Images per forward pass during validation (64 when 0).
    pub eval_batch_size: usize,
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

/// A `VarMap` backend that draws fresh variables from a seeded generator,
/// following the `Init` hints exactly as candle would, so that
/// initialisation is reproducible on the CPU.
struct SeededVarMap {
    map: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededVarMap {
    fn draw(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
            (0..n).map(|_| rng.gen_range(lo..up) as f32).collect()
        };
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    // Box-Muller.
                    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
                    let u2: f64 = rng.gen();
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    (mean + std * z) as f32
                })
                .collect()
        };
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } if up > lo => uniform(&mut rng, lo, up),
            Init::Uniform { lo, .. } => vec![lo as f32; n],
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)
                    }
                    candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(var) = data.get(name) {
            let t = var.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "variable {name} has shape {:?}, asked for {:?}",
                    t.shape(),
                    s
                );
            }
            return t.to_dtype(dtype);
        }
        let values = self.draw(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// A trainable head: its variables and the head reading them.
pub struct TrainableHead {
    kind: HeadKind,
    cfg: HeadConfig,
    map: VarMap,
    device: Device,
}

impl TrainableHead {
    /// Fresh parameters for `kind` with sizes `cfg`, drawn from `seed`.
    pub fn new(kind: HeadKind, cfg: &HeadConfig, seed: u64, device: &Device) -> Result<Self> {
        let map = VarMap::new();
        let backend = SeededVarMap {
            map: map.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        // Building the head draws every variable into `map`, in a fixed order.
        Head::new(kind, vb, cfg)?;
        Ok(Self {
            kind,
            cfg: cfg.clone(),
            map,
            device: device.clone(),
        })
    }

    /// Load the parameters of a saved model directory's weights file.
    pub fn load(kind: HeadKind, cfg: &HeadConfig, weights: &Path, device: &Device) -> Result<Self> {
        let mut head = Self::new(kind, cfg, 0, device)?;
        head.map
            .load(weights)
            .map_err(|e| ModelError::CheckpointFormat {
                path: weights.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(head)
    }

    /// The head over the current parameters (BatchNorm statistics as stored).
    pub fn head(&self) -> Result<Head> {
        let vb = VarBuilder::from_varmap(&self.map, DType::F32, &self.device);
        Head::new(self.kind, vb, &self.cfg)
    }

    /// The trainable variables (BatchNorm running statistics excluded).
    pub fn trainable_vars(&self) -> Vec<Var> {
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut named: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// Save every variable (safetensors, names at the root as in a model directory).
    pub fn save(&self, path: &Path) -> Result<()> {
        save_var_map(&self.map, path)
    }

    /// The variables (shared: a fine-tuned backbone adds its own under
    /// `backbonenet.`).
    pub(crate) fn var_map(&self) -> &VarMap {
        &self.map
    }

    /// Set BatchNorm running statistics (v2's `img_bn1`) to the exact mean and
    /// (unbiased) variance of its input over `features` entries `indices`
    /// (precise BatchNorm): training mode leaves a momentum average over
    /// batches seen while the weights moved, not the final weights' statistics.
    pub fn recompute_batch_norm(&self, features: &FeatureCache, indices: &[usize]) -> Result<()> {
        self.recompute_batch_norm_from(
            indices
                .chunks(128)
                .map(|chunk| features.get(chunk, &self.device)),
        )
    }

    /// [`Self::recompute_batch_norm`] over backbone feature maps `[B, C, H, W]`
    /// from any source (the fine-tuning backbone, say). Nothing happens for
    /// heads without BatchNorm or when `batches` is empty.
    pub fn recompute_batch_norm_from(
        &self,
        batches: impl IntoIterator<Item = Result<Tensor>>,
    ) -> Result<()> {
        if self.kind != HeadKind::AsenV2 {
            return Ok(());
        }
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        let get = |n: &str| {
            data.get(n)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| ModelError::InvalidArgument(format!("head has no variable {n}")))
        };
        let a = self.cfg.attention_dim;
        let w = get("conv1.weight")?.reshape((a, self.cfg.in_channels))?;
        let b = get("conv1.bias")?.reshape((1, a, 1))?;
        let mut sum = Tensor::zeros(a, DType::F64, &self.device)?;
        let mut sum_sq = Tensor::zeros(a, DType::F64, &self.device)?;
        let mut count = 0usize;
        for x in batches {
            let x = x?.flatten_from(2)?; // [B, C, N]
            let y = crate::head::pointwise_conv(&x, &w, &b)?; // [B, A, N]
            let y = y.transpose(0, 1)?.flatten_from(1)?.to_dtype(DType::F64)?; // [A, B*N]
            count += y.dim(1)?;
            sum = (sum + y.sum(1)?)?;
            sum_sq = (sum_sq + y.sqr()?.sum(1)?)?;
        }
        if count == 0 {
            return Ok(());
        }
        let n = count as f64;
        let mean = (&sum / n)?;
        let var = ((sum_sq / n)? - mean.sqr()?)?
            .affine(n / (n - 1.0).max(1.0), 0.0)?
            .clamp(0.0, f64::INFINITY)?;
        data.get("img_bn1.running_mean")
            .ok_or_else(|| ModelError::InvalidArgument("head has no img_bn1".into()))?
            .set(&mean.to_dtype(DType::F32)?)?;
        data.get("img_bn1.running_var")
            .ok_or_else(|| ModelError::InvalidArgument("head has no img_bn1".into()))?
            .set(&var.to_dtype(DType::F32)?)?;
        Ok(())
    }
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
        opts: &TrainOptions,
    ) -> Result<()> {
        state.epoch = record.epoch;
        state.history.push(record.clone());
        let improved = report.map > state.best_map;
        if improved {
            state.best_map = report.map;
            state.best_epoch = record.epoch;
        }
        let mut epoch_card = card.clone();
        epoch_card.provenance.notes = Some(card_notes(opts, record, report));
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

/// Today's UTC date as `YYYY-MM-DD`.
pub fn utc_date() -> String {
    crate::convert::utc_date_today()
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
    card.provenance = Provenance {
        source_file: None,
        source_sha256: None,
        command,
        date: Some(utc_date()),
        notes,
    };
    Ok(card)
}

/// Train a head of `cfg.head` on the cached backbone `features` of
/// `dataset` (one entry per dataset image), selecting on the valid split's
/// mAP; checkpoints go to `out_dir/last` and `out_dir/best`.
pub fn train_head(
    dataset: &Dataset,
    features: &FeatureCache,
    cfg: &TrainConfig,
    out_dir: &Path,
    opts: &TrainOptions,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome> {
    cfg.validate()?;
    if features.len() != dataset.len() {
        return Err(ModelError::InvalidArgument(format!(
            "feature cache {} has {} entries for a dataset of {} images",
            features.path().display(),
            features.len(),
            dataset.len()
        )));
    }
    let (c, _, _) = features.dims();
    let expected = cfg.backbone.feature_channels(cfg.colour_histogram);
    if c != expected {
        return Err(ModelError::InvalidArgument(format!(
            "feature cache {} has {c} channels, backbone {}{} gives {expected}",
            features.path().display(),
            cfg.backbone,
            if cfg.colour_histogram {
                " with the colour histogram"
            } else {
                ""
            },
        )));
    }
    if dataset.probes(Split::Valid).queries.is_empty() {
        return Err(ModelError::InvalidArgument(
            "the valid split has no retrieval queries: nothing to select the best epoch on".into(),
        ));
    }
    if cfg.finetune.is_some() {
        return Err(ModelError::InvalidArgument(
            "this configuration fine-tunes the backbone: train it with finetune, not on cached features".into(),
        ));
    }
    let device = Device::Cpu;
    let sampler = TripletSampler::new(dataset, cfg.seed)?.with_sampling(cfg.sampling);
    let head_cfg = cfg.head_config(dataset.attributes().len());
    let dirs = RunDirs::new(out_dir);
    let (mut state, resumed) = dirs.start(cfg, opts.resume)?;
    let trainable = if resumed {
        TrainableHead::load(cfg.head, &head_cfg, &dirs.last.join(WEIGHTS_FILE), &device)?
    } else {
        TrainableHead::new(cfg.head, &head_cfg, cfg.seed, &device)?
    };
    let mut optimizer = cfg.schedule.adam(trainable.trainable_vars())?;
    let train_images = dataset.split_indices(Split::Train);
    let bn_sample = batch_norm_sample(&train_images, cfg.seed, 2048);
    let eval_batch = if opts.eval_batch_size == 0 {
        64
    } else {
        opts.eval_batch_size
    };
    let card = trained_card(dataset, cfg, opts.command.clone(), opts.notes.clone())?;
    for epoch in state.epoch..cfg.epochs {
        let started = Instant::now();
        let lr = cfg.schedule.apply(&mut optimizer, epoch);
        let triplets = sampler.epoch(epoch as u64, cfg.triplets_per_epoch);
        let steps = triplets.len().div_ceil(cfg.batch_size);
        progress(&TrainEvent::EpochStart {
            epoch: epoch + 1,
            steps,
        });
        let mut loss_sum = 0f64;
        for (s, batch) in triplets.chunks(cfg.batch_size).enumerate() {
            let b = batch.len();
            let (indices, attrs) = triplet_batch(batch);
            let x = features.get(&indices, &device)?;
            // Rebuilt every step: some heads keep re-laid-out copies of variables.
            let head = trainable.head()?;
            let attr = Tensor::from_vec(attrs, 3 * b, &device)?;
            let out = head.forward(&x, &attr, true)?;
            let loss = batch_loss(&out.embedding, cfg, dataset, batch, &indices)?;
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
        let train_secs = started.elapsed().as_secs_f64();
        trainable.recompute_batch_norm(features, &bn_sample)?;
        let report = evaluate_head(
            &trainable.head()?,
            features,
            dataset,
            Split::Valid,
            eval_batch,
        )?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / triplets.len() as f64,
            valid_map: report.map,
            triplets_per_s: triplets.len() as f64 / train_secs.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
        };
        dirs.finish_epoch(
            &mut state,
            (&record, &report),
            (trainable.var_map(), &card),
            opts,
        )?;
        progress(&TrainEvent::Epoch(record));
    }
    dirs.outcome(state)
}

fn card_notes(opts: &TrainOptions, record: &EpochRecord, report: &RetrievalReport) -> String {
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
    if let Some(extra) = &opts.notes {
        notes = format!("{extra}; {notes}");
    }
    notes
}

/// Per-attribute validation mAP from a report, by attribute name.
pub fn map_by_attribute(report: &RetrievalReport) -> BTreeMap<String, f64> {
    report
        .attributes
        .iter()
        .map(|a| (a.attribute.clone(), a.map))
        .collect()
}

/// Unused-variable guard: a map from names to tensors of a head (tests).
#[cfg(test)]
fn snapshot(head: &TrainableHead) -> std::collections::HashMap<String, Vec<f32>> {
    let data = head.map.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HeadConfig {
        HeadConfig {
            in_channels: 16,
            n_attributes: 3,
            attention_dim: 8,
            gate_hidden: 6,
            embedding_dim: 10,
            feature_fc: true,
        }
    }

    #[test]
    fn initialisation_is_reproducible_from_the_seed() {
        for kind in [
            HeadKind::AsenV1,
            HeadKind::AsenV2,
            HeadKind::Csn,
            HeadKind::Global,
        ] {
            let a = snapshot(&TrainableHead::new(kind, &cfg(), 7, &Device::Cpu).unwrap());
            let b = snapshot(&TrainableHead::new(kind, &cfg(), 7, &Device::Cpu).unwrap());
            let c = snapshot(&TrainableHead::new(kind, &cfg(), 8, &Device::Cpu).unwrap());
            assert_eq!(a, b, "{kind}");
            assert_ne!(a, c, "{kind}");
            assert!(!a.is_empty());
        }
    }

    #[test]
    fn date_is_iso() {
        let d = utc_date();
        assert_eq!(d.len(), 10, "{d}");
        assert!(d.starts_with("20"), "{d}");
    }
}
