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

use std::path::Path;

use asen_models::{ModelDir, ModelError, Result};
use candle_core::Device;

use super::config::TrainConfig;
use super::head::TrainableHead;
use super::prior::GarmentPrior;
use super::run::{
    batch_norm_sample, run_epoch, trained_card, RunDirs, TrainEvent, TrainOptions, TrainOutcome,
};
use super::sampler::TripletSampler;
use crate::data::{Dataset, Split};
use crate::eval::evaluate_head;
use crate::features::FeatureCache;

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
    let expected = cfg.feature_channels();
    if c != expected {
        return Err(ModelError::InvalidArgument(format!(
            "feature cache {} has {c} channels, backbone {}{}{} gives {expected}",
            features.path().display(),
            cfg.backbone,
            if cfg.fine_map {
                " on its fine grid"
            } else {
                ""
            },
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
        let model = ModelDir::load(&dirs.last)?;
        if model.card.head != cfg.head || model.card.head_config != head_cfg {
            return Err(ModelError::InvalidArgument(format!(
                "{} holds a {} head of other sizes than this run's",
                dirs.last.display(),
                model.card.head
            )));
        }
        TrainableHead::load(&model, &device)?
    } else {
        TrainableHead::new(cfg.head, &head_cfg, cfg.seed, &device)?
    };
    let mut optimizer = cfg.schedule.adam(trainable.trainable_vars())?;
    let train_images = dataset.split_indices(Split::Train);
    let bn_sample = batch_norm_sample(&train_images, cfg.seed, 2048);
    let eval_batch = opts.eval_batch();
    let card = trained_card(dataset, cfg, opts.command.clone(), opts.notes.clone())?;
    let prior = garment_prior(dataset, features, cfg, progress);
    for epoch in state.epoch..cfg.epochs {
        let trained = run_epoch(
            epoch,
            &sampler,
            (cfg, dataset, features),
            &|| trainable.head(),
            0,
            true,
            prior.as_ref(),
            &mut optimizer,
            progress,
        )?;
        trainable.recompute_batch_norm(features, &bn_sample)?;
        let report = evaluate_head(
            &trainable.head()?,
            features,
            dataset,
            Split::Valid,
            eval_batch,
        )?;
        let record = trained.record(epoch, report.map);
        dirs.finish_epoch(&mut state, (&record, &report), (trainable.var_map(), &card))?;
        progress(&TrainEvent::Epoch(record));
    }
    dirs.outcome(state)
}

/// The garment prior of `cfg` (none at weight 0), its masks on the grid of
/// the cached maps.
fn garment_prior(
    dataset: &Dataset,
    features: &FeatureCache,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(&TrainEvent),
) -> Option<GarmentPrior> {
    if cfg.garment_prior <= 0.0 {
        return None;
    }
    let (_, h, w) = features.dims();
    Some(GarmentPrior::from_dataset(
        dataset,
        cfg.input_size,
        (h, w),
        cfg.garment_prior,
        &mut |done, total, informative| {
            progress(&TrainEvent::GarmentMasks {
                done,
                total,
                informative,
            })
        },
    ))
}
