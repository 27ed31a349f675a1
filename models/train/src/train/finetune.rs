//! Fine-tuning: the backbone and the head trained end to end on images.
//!
//! Same sampler, loss, schedule, validation protocol and checkpoint layout
//! as the head trainer ([`crate::train_head`]); what differs is that images
//! are decoded and preprocessed every step (train split, optional horizontal
//! flip), the [`TrainableBackbone`] runs with BatchNorm in training mode
//! (batch statistics; running statistics updated with momentum 0.1 in the
//! variables themselves) and its parameters get their own Adam with the
//! learning rate scaled by [`crate::FinetuneSettings::backbone_lr_scale`].
//!
//! Everything is device-generic candle: pass a CUDA device (a build with
//! the `cuda` feature) to train on a GPU. A saved model directory holds the
//! fine-tuned backbone under `backbonenet.` (with BatchNorm running
//! statistics), which [`asen_models::Embedder::load`] picks up instead of the
//! ImageNet weights; validation runs the very same folded inference network.

use std::path::{Path, PathBuf};
use std::time::Instant;

use asen_models::{
    to_tensor, Backbone, Embedder, HeadOutput, ModelCard, ModelDir, ModelError, PreprocessConfig,
    Result,
};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::backbone::TrainableBackbone;
use super::config::TrainConfig;
use super::head::TrainableHead;
use super::run::{
    batch_loss, batch_norm_sample, checked_loss, load_var_map, trained_card, triplet_batch,
    EpochRecord, RunDirs, TrainEvent, TrainOptions, TrainOutcome,
};
use super::sampler::TripletSampler;
use super::schedule::StepDecay;
use crate::data::{Dataset, Split};
use crate::eval::{embed_dataset_split, evaluate_pairs};
use crate::features::load_crops;

/// Name prefix of the backbone's variables in a model directory.
const BACKBONE_PREFIX: &str = "backbonenet";

/// Backbone and head over one set of variables (head names at the root,
/// backbone names under `backbonenet.`), trainable end to end.
pub struct FinetuneNetwork {
    head: TrainableHead,
    backbone: TrainableBackbone,
    cfg: TrainConfig,
    n_attributes: usize,
    device: Device,
}

impl FinetuneNetwork {
    fn build(cfg: &TrainConfig, n_attributes: usize, device: &Device) -> Result<Self> {
        if cfg.colour_histogram || cfg.fine_map {
            return Err(ModelError::InvalidArgument(
                "the colour histogram and the fine grid are not supported when fine-tuning the backbone".into(),
            ));
        }
        let head = TrainableHead::new(cfg.head, &cfg.head_config(n_attributes), cfg.seed, device)?;
        let vb = VarBuilder::from_varmap(head.var_map(), DType::F32, device).pp(BACKBONE_PREFIX);
        let backbone = TrainableBackbone::new(cfg.backbone, vb)?;
        Ok(Self {
            head,
            backbone,
            cfg: cfg.clone(),
            n_attributes,
            device: device.clone(),
        })
    }

    /// A head drawn from `cfg.seed` on the shipped ImageNet backbone of
    /// `cfg.backbone`, found in `weights_dirs` by
    /// [`asen_models::locate_weights`].
    pub fn new(
        cfg: &TrainConfig,
        n_attributes: usize,
        weights_dirs: &[PathBuf],
        device: &Device,
    ) -> Result<Self> {
        let net = Self::build(cfg, n_attributes, device)?;
        let path = cfg.backbone.imagenet_weights_path(weights_dirs)?;
        let tensors = candle_core::safetensors::load(&path, device).map_err(|e| {
            ModelError::CheckpointFormat {
                path: path.clone(),
                reason: e.to_string(),
            }
        })?;
        let data = net
            .head
            .var_map()
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut problems = Vec::new();
        for (name, var) in data.iter() {
            let Some(key) = name
                .strip_prefix(BACKBONE_PREFIX)
                .and_then(|k| k.strip_prefix('.'))
            else {
                continue;
            };
            match tensors.get(key) {
                Some(t) if t.shape() == var.shape() => var.set(&t.to_dtype(DType::F32)?)?,
                Some(t) => problems.push(format!(
                    "{key} has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )),
                None => problems.push(format!("{key} is missing")),
            }
        }
        drop(data);
        if !problems.is_empty() {
            problems.sort();
            return Err(ModelError::CheckpointMismatch {
                path,
                variant: format!("{} backbone", cfg.backbone),
                report: problems.join("; "),
            });
        }
        Ok(net)
    }

    /// The network saved in a model directory by a run of `cfg` (as many
    /// attributes as its card).
    pub fn load(cfg: &TrainConfig, model: &ModelDir, device: &Device) -> Result<Self> {
        let net = Self::build(cfg, model.card.attributes.len(), device)?;
        load_var_map(net.head.var_map(), model)?;
        Ok(net)
    }

    /// Embeddings (and attention) of a normalised batch `x` `[B, 3, S, S]`
    /// for one attribute per image (`attr` `[B]`, u32). With `train`, every
    /// BatchNorm uses (and updates the running statistics from) the batch,
    /// but the backbone's when the run's settings freeze it.
    pub fn forward_t(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        let frozen = self
            .cfg
            .finetune
            .as_ref()
            .is_some_and(|f| f.freeze_batch_norm);
        let features = self.backbone.forward_t(x, train && !frozen)?;
        // Rebuilt every call: some heads keep re-laid-out copies of variables.
        self.head.head()?.forward(&features, attr, train)
    }

    /// Set the head's BatchNorm running statistics (ASEN v2's `img_bn1`) from
    /// the features of `images` under the backbone in eval mode, as
    /// inference will see them (the head trainer does the same from its
    /// cache after every epoch).
    pub fn recompute_head_batch_norm(
        &self,
        dataset: &Dataset,
        images: &[usize],
        preprocess: &PreprocessConfig,
        batch: usize,
    ) -> Result<()> {
        let backbone = self.inference_backbone()?;
        let features = images.chunks(batch.max(1)).map(|chunk| {
            let crops = load_crops(dataset, chunk, &vec![false; chunk.len()], preprocess)?;
            let x = to_tensor(&crops, &self.device)?;
            backbone.forward(&x)
        });
        self.head.recompute_batch_norm_from(features)
    }

    /// The trainable variables of the head and of the backbone, each sorted
    /// by name (BatchNorm running statistics excluded).
    pub fn trainable_vars(&self) -> (Vec<Var>, Vec<Var>) {
        let data = self
            .head
            .var_map()
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut named: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let (backbone, head): (Vec<_>, Vec<_>) = named
            .into_iter()
            .partition(|(n, _)| n.starts_with(&format!("{BACKBONE_PREFIX}.")));
        let vars = |v: Vec<(&String, &Var)>| v.into_iter().map(|(_, v)| v.clone()).collect();
        (vars(head), vars(backbone))
    }

    /// The inference model over the current variables (BatchNorm folded with
    /// its running statistics): what [`Embedder::load`] gives for a directory
    /// this network is saved to with `card`.
    pub fn embedder(&self, card: ModelCard, batch_size: usize) -> Result<Embedder> {
        let backbone = self.inference_backbone()?;
        let head = self.head.head()?;
        if card.attributes.len() != self.n_attributes {
            return Err(ModelError::InvalidArgument(format!(
                "card has {} attributes, the network {}",
                card.attributes.len(),
                self.n_attributes
            )));
        }
        Embedder::from_modules(card, backbone, head, &self.device, batch_size)
    }

    /// The folded inference backbone over detached copies of the current
    /// backbone variables: what serving runs. Detached, so that no autograd
    /// graph is recorded (off the CPU the folded layers are candle ops, and a
    /// graph through a 64-image batch does not fit a GPU).
    fn inference_backbone(&self) -> Result<Backbone> {
        let prefix = format!("{BACKBONE_PREFIX}.");
        let tensors: std::collections::HashMap<String, Tensor> = self
            .head
            .var_map()
            .data()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|(name, var)| {
                let key = name.strip_prefix(&prefix)?;
                Some((key.to_string(), var.as_tensor().detach()))
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &self.device);
        Backbone::new(self.cfg.backbone, vb)
    }

    /// Save every variable (head at the root, backbone under `backbonenet.`).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.head.save(path)
    }
}

/// Fine-tune `cfg.backbone` and a `cfg.head` head end to end on the images
/// of `dataset` on `device`, selecting on the valid split's mAP;
/// checkpoints go to `out_dir/last` and `out_dir/best` as with
/// [`crate::train_head`] (`cfg.finetune` `None` means the default
/// [`crate::FinetuneSettings`]). ResNet-50 and the colour histogram are refused.
pub fn finetune(
    dataset: &Dataset,
    cfg: &TrainConfig,
    out_dir: &Path,
    opts: &TrainOptions,
    device: &Device,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Result<TrainOutcome> {
    let settings = cfg.finetune.clone().unwrap_or_default();
    let cfg = TrainConfig {
        finetune: Some(settings.clone()),
        ..cfg.clone()
    };
    cfg.validate()?;
    if dataset.probes(Split::Valid).queries.is_empty() {
        return Err(ModelError::InvalidArgument(
            "the valid split has no retrieval queries: nothing to select the best epoch on".into(),
        ));
    }
    let n_attr = dataset.attributes().len();
    let sampler = TripletSampler::new(dataset, cfg.seed)?.with_sampling(cfg.sampling);
    let dirs = RunDirs::new(out_dir);
    let (mut state, resumed) = dirs.start(&cfg, opts.resume)?;
    let net = if resumed {
        let model = ModelDir::load(&dirs.last)?;
        if model.card.attributes.len() != n_attr {
            return Err(ModelError::InvalidArgument(format!(
                "{} has {} attributes, the dataset {n_attr}",
                dirs.last.display(),
                model.card.attributes.len()
            )));
        }
        FinetuneNetwork::load(&cfg, &model, device)?
    } else {
        FinetuneNetwork::new(&cfg, n_attr, &opts.weights_dirs, device)?
    };
    let (head_vars, backbone_vars) = net.trainable_vars();
    let mut head_opt = cfg.schedule.adam(head_vars)?;
    let backbone_schedule = StepDecay {
        base_lr: cfg.schedule.base_lr * settings.backbone_lr_scale,
        ..cfg.schedule
    };
    let mut backbone_opt = backbone_schedule.adam(backbone_vars)?;
    let preprocess = PreprocessConfig {
        size: cfg.input_size as usize,
        ..PreprocessConfig::default()
    };
    let eval_batch = if opts.eval_batch_size == 0 {
        64
    } else {
        opts.eval_batch_size
    };
    let card = trained_card(dataset, &cfg, opts.command.clone(), opts.notes.clone())?;
    let bn_sample = batch_norm_sample(&dataset.split_indices(Split::Train), cfg.seed, 512);
    for epoch in state.epoch..cfg.epochs {
        let started = Instant::now();
        let lr = cfg.schedule.apply(&mut head_opt, epoch);
        backbone_schedule.apply(&mut backbone_opt, epoch);
        let triplets = sampler.epoch(epoch as u64, cfg.triplets_per_epoch);
        let steps = triplets.len().div_ceil(cfg.batch_size);
        progress(&TrainEvent::EpochStart {
            epoch: epoch + 1,
            steps,
        });
        // Flips depend only on the seed and the epoch, like the triplets.
        let mut flip_rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xf11f ^ ((epoch as u64) << 32));
        let mut loss_sum = 0f64;
        for (s, batch) in triplets.chunks(cfg.batch_size).enumerate() {
            let b = batch.len();
            let (indices, attrs) = triplet_batch(batch);
            let flips: Vec<bool> = (0..indices.len())
                .map(|_| settings.flip && flip_rng.gen::<bool>())
                .collect();
            let crops = load_crops(dataset, &indices, &flips, &preprocess)?;
            let x = to_tensor(&crops, device)?;
            let attr = Tensor::from_vec(attrs, 3 * b, device)?;
            let out = net.forward_t(&x, &attr, true)?;
            let loss = batch_loss(&out.embedding, &cfg, dataset, batch, &indices)?;
            let grads = loss.backward()?;
            head_opt.step(&grads)?;
            if settings.backbone_lr_scale > 0.0 {
                backbone_opt.step(&grads)?;
            }
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
        net.recompute_head_batch_norm(dataset, &bn_sample, &preprocess, eval_batch)?;
        let embedder = net.embedder(card.clone(), eval_batch)?;
        let pairs = embed_dataset_split(&embedder, dataset, Split::Valid, eval_batch)?;
        let report = evaluate_pairs(dataset, Split::Valid, &pairs)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: loss_sum / triplets.len() as f64,
            valid_map: report.map,
            triplets_per_s: triplets.len() as f64 / train_secs.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
        };
        dirs.finish_epoch(&mut state, (&record, &report), (net.head.var_map(), &card))?;
        progress(&TrainEvent::Epoch(record));
    }
    dirs.outcome(state)
}
