//! `asen train`: load a labelled dataset, cache the frozen backbone's feature
//! maps (progress bar), train a head with a triplets/s and ETA bar, keep the
//! best epoch on validation mAP, calibrate the copy-check thresholds on the
//! valid split and list the images that could not be used.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use asen_models::{BackboneKind, Embedder, EmbedderOptions, HeadKind, ModelDir, PreprocessConfig};
use asen_train::{
    calibrate_thresholds, dataset_features, embed_dataset_split, embed_split, extend_head,
    extension_config, finetune, train_head, unusable_images, without_images, BadImage, CsvOptions,
    Dataset, DatasetFeatures, FeatureOptions, FinetuneSettings, Split, StepDecay, TrainConfig,
    TrainEvent, TrainOptions, TrainOutcome,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::{DataArgs, TrainArgs};
use crate::config::Config;

/// Load the dataset named by `args` (CSV file or official folder).
pub fn load_dataset(args: &DataArgs) -> anyhow::Result<Dataset> {
    let path = args
        .data
        .as_ref()
        .context("no dataset given: pass --data (a CSV file or an official ASEN folder)")?;
    let format = match args.format.as_deref() {
        Some(f) => f.to_string(),
        None if path.is_dir() => "official".into(),
        None => "csv".into(),
    };
    match format.as_str() {
        "csv" => {
            if args.attributes.is_empty() {
                bail!(
                    "{}: a CSV dataset needs its attribute columns: pass --attributes a,b,c",
                    path.display()
                );
            }
            let mut opts = CsvOptions::new(args.attributes.iter().cloned());
            if let Some(c) = &args.path_column {
                opts.path_column = c.clone();
            }
            if let Some(c) = &args.split_column {
                opts.split_column = c.clone();
            }
            opts.seed = args.probe_seed.unwrap_or(0);
            Ok(Dataset::load_csv(path, &opts)
                .with_context(|| format!("cannot load dataset {}", path.display()))?)
        }
        "official" => Ok(Dataset::load_official(path)
            .with_context(|| format!("cannot load dataset {}", path.display()))?),
        other => bail!("unknown dataset format {other:?}; expected csv or official"),
    }
}

/// What the cached feature maps carry besides the backbone's last layer.
#[derive(Debug, Clone, Copy, Default)]
pub struct MapExtras {
    /// The per-cell colour histogram.
    pub colour_histogram: bool,
    /// The fine grid of the backbone's earlier stage.
    pub fine_map: bool,
}

impl MapExtras {
    /// The extras a model card names.
    pub fn of_card(card: &asen_models::ModelCard) -> Self {
        Self {
            colour_histogram: card.colour_histogram,
            fine_map: card.fine_map,
        }
    }

    /// The extras a training configuration names.
    pub fn of_config(cfg: &TrainConfig) -> Self {
        Self {
            colour_histogram: cfg.colour_histogram,
            fine_map: cfg.fine_map,
        }
    }
}

/// Build (or reopen) the feature cache of `dataset` with a progress bar, and
/// return it with the dataset minus the images that could not be read.
pub fn cached_features(
    dataset: &Dataset,
    backbone: BackboneKind,
    extras: MapExtras,
    input_size: u32,
    cache: &Path,
    weights_dirs: &[PathBuf],
) -> anyhow::Result<(DatasetFeatures, Dataset)> {
    let mut opts = FeatureOptions::new(backbone);
    opts.weights_dirs = weights_dirs.to_vec();
    opts.colour_histogram = extras.colour_histogram;
    opts.fine_map = extras.fine_map;
    opts.input_size = input_size;
    let bar = ProgressBar::new(dataset.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("features {bar:30} {pos}/{len} images {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = std::time::Instant::now();
    let features = dataset_features(dataset, cache, &opts, &|done, _| {
        bar.set_position(done as u64)
    })
    .with_context(|| format!("cannot build the feature cache {}", cache.display()))?;
    bar.finish_and_clear();
    tracing::info!(
        cache = %cache.display(),
        images = dataset.len(),
        elapsed_s = started.elapsed().as_secs_f64(),
        "feature cache ready"
    );
    let bad: BTreeSet<usize> = features.bad_images.iter().map(|b| b.index).collect();
    let usable = without_images(dataset, &bad)?;
    Ok((features, usable))
}

/// The cache file used when none is given.
pub fn default_cache(
    dir: &Path,
    backbone: BackboneKind,
    extras: MapExtras,
    input_size: u32,
) -> PathBuf {
    let colour = if extras.colour_histogram {
        "+colour"
    } else {
        ""
    };
    let fine = if extras.fine_map { "+fine" } else { "" };
    dir.join(format!(
        "features-{}{fine}{colour}-{input_size}.bin",
        backbone.name()
    ))
}

/// Print the unusable images, one per line, after a run.
pub fn report_bad_images(bad: &[BadImage]) {
    if bad.is_empty() {
        return;
    }
    eprintln!(
        "{} image(s) could not be used and were left out:",
        bad.len()
    );
    for b in bad {
        let path = b.path.display().to_string();
        if b.reason.contains(&path) {
            eprintln!("  {}", b.reason);
        } else {
            eprintln!("  {path}: {}", b.reason);
        }
    }
}

fn parse_head(name: &str) -> anyhow::Result<HeadKind> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        anyhow::anyhow!(
            "unknown head {name:?}; expected asen_v1, asen_v2, asen_pp_global, csn or global"
        )
    })
}

/// Run `asen train`.
pub fn run(args: TrainArgs, config: &Config) -> anyhow::Result<()> {
    if let Some(base) = &args.extend {
        let fixed = [
            ("--backbone", args.backbone.is_some()),
            ("--head", args.head.is_some()),
            ("--dim", args.dim.is_some()),
            ("--no-feature-fc", args.no_feature_fc),
            ("--attention-dim", args.attention_dim.is_some()),
            ("--gate-hidden", args.gate_hidden.is_some()),
            ("--input-size", args.input_size.is_some()),
            ("--colour-histogram", args.colour_histogram),
            ("--fine-map", args.fine_map),
            ("--garment-prior", args.garment_prior.is_some()),
            ("--position-bias", args.position_bias),
            ("--finetune", args.finetune),
        ];
        if let Some((flag, _)) = fixed.iter().find(|(_, given)| *given) {
            bail!(
                "{flag} cannot be combined with --extend: the base model {} fixes it",
                base.display()
            );
        }
    }
    // `[train]` of the config file (and ASEN_TRAIN__*), under the flags.
    let file = config.train.clone();
    let data = DataArgs {
        data: args.data.data.clone().or(file.data),
        format: args.data.format.clone().or(file.format),
        attributes: if args.data.attributes.is_empty() {
            file.attributes.unwrap_or_default()
        } else {
            args.data.attributes.clone()
        },
        path_column: args.data.path_column.clone().or(file.path_column),
        split_column: args.data.split_column.clone().or(file.split_column),
        probe_seed: args.data.probe_seed.or(file.probe_seed),
        cache: args.data.cache.clone().or(file.cache),
    };
    let out = args
        .out
        .clone()
        .or(file.out)
        .context("no output folder: pass --out DIR")?;
    let backbone: BackboneKind = args
        .backbone
        .or(file.backbone)
        .unwrap_or_else(|| "mobilenet_v2".into())
        .parse()?;
    if backbone == BackboneKind::ResNet50Layer3 {
        bail!("resnet50_layer3 has no shipped ImageNet weights; train on mobilenet_v2 or efficientnet_lite0");
    }
    let head = parse_head(&args.head.or(file.head).unwrap_or_else(|| "asen_v2".into()))?;
    let mut cfg = TrainConfig::new(head, backbone);
    cfg.colour_histogram = args.colour_histogram || file.colour_histogram.unwrap_or(false);
    cfg.fine_map = args.fine_map || file.fine_map.unwrap_or(false);
    if cfg.fine_map && (backbone.fine_stage().is_none() || head != HeadKind::AsenV2) {
        bail!("--fine-map needs --backbone mobilenet_v2 and --head asen_v2 (got {backbone} and {head})");
    }
    cfg.garment_prior = args.garment_prior.or(file.garment_prior).unwrap_or(0.0);
    if !(cfg.garment_prior.is_finite() && cfg.garment_prior >= 0.0) {
        bail!(
            "--garment-prior must be a number >= 0, got {}",
            cfg.garment_prior
        );
    }
    cfg.position_bias = args.position_bias || file.position_bias.unwrap_or(false);
    if cfg.position_bias && head != HeadKind::AsenV2 {
        bail!("--position-bias needs --head asen_v2 (got {head})");
    }
    cfg.embedding_dim = args.dim.or(file.dim).unwrap_or(cfg.embedding_dim);
    cfg.feature_fc = !(args.no_feature_fc || file.no_feature_fc.unwrap_or(false));
    cfg.attention_dim = args
        .attention_dim
        .or(file.attention_dim)
        .unwrap_or(cfg.attention_dim);
    cfg.gate_hidden = args
        .gate_hidden
        .or(file.gate_hidden)
        .unwrap_or(cfg.gate_hidden);
    cfg.input_size = args
        .input_size
        .or(file.input_size)
        .unwrap_or(cfg.input_size);
    cfg.epochs = args.epochs.or(file.epochs).unwrap_or(cfg.epochs);
    cfg.triplets_per_epoch = args
        .triplets_per_epoch
        .or(file.triplets_per_epoch)
        .unwrap_or(cfg.triplets_per_epoch);
    cfg.batch_size = args
        .batch_size
        .or(file.batch_size)
        .unwrap_or(cfg.batch_size);
    cfg.schedule = StepDecay::new(
        args.lr.or(file.lr).unwrap_or(cfg.schedule.base_lr),
        args.lr_decay
            .or(file.lr_decay)
            .unwrap_or(cfg.schedule.factor),
        args.lr_step
            .or(file.lr_step)
            .unwrap_or(cfg.schedule.every_epochs),
    )?;
    cfg.margin = args.margin.or(file.margin).unwrap_or(cfg.margin);
    cfg.seed = args.seed.or(file.seed).unwrap_or(cfg.seed);
    if let Some(s) = args.sampling.clone().or(file.sampling) {
        cfg.sampling = s.parse()?;
    }
    if let Some(n) = args.negatives.clone().or(file.negatives) {
        cfg.negatives = n.parse()?;
    }
    let finetune = args.finetune || file.finetune.unwrap_or(false);
    let device_name = if args.device != "cpu" {
        args.device.clone()
    } else {
        file.device.clone().unwrap_or_else(|| "cpu".into())
    };
    if finetune {
        let defaults = FinetuneSettings::default();
        cfg.finetune = Some(FinetuneSettings {
            backbone_lr_scale: args
                .backbone_lr_scale
                .or(file.backbone_lr_scale)
                .unwrap_or(defaults.backbone_lr_scale),
            flip: !args.no_flip && file.flip.unwrap_or(defaults.flip),
            freeze_batch_norm: args.freeze_batch_norm
                || file.freeze_batch_norm.unwrap_or(defaults.freeze_batch_norm),
        });
        if cfg.colour_histogram || cfg.fine_map || cfg.garment_prior > 0.0 {
            bail!("--colour-histogram, --fine-map and --garment-prior cannot be combined with --finetune");
        }
    } else {
        if device_name != "cpu" {
            bail!(
                "device {device_name:?}: training on cached features of the frozen backbone runs on the cpu; pass --finetune to train backbone and head on {device_name}"
            );
        }
        if args.backbone_lr_scale.is_some() || args.no_flip || args.freeze_batch_norm {
            bail!(
                "--backbone-lr-scale, --no-flip and --freeze-batch-norm only apply with --finetune"
            );
        }
    }

    let dataset = load_dataset(&data)?;
    for split in [Split::Train, Split::Valid] {
        if dataset.split_indices(split).is_empty() {
            bail!(
                "{}: the {split} split is empty",
                data.data.as_deref().unwrap_or(Path::new("")).display()
            );
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if let Some(base) = &args.extend {
        return run_extend(
            base,
            &dataset,
            &data,
            &cfg,
            &out,
            args.resume,
            &config.weights_dirs(),
        );
    }
    if finetune {
        return run_finetune(
            &dataset,
            &data,
            &cfg,
            &out,
            args.resume,
            &device_name,
            &config.weights_dirs(),
        );
    }
    let cache = data.cache.clone().unwrap_or_else(|| {
        default_cache(&out, backbone, MapExtras::of_config(&cfg), cfg.input_size)
    });
    let (features, usable) = cached_features(
        &dataset,
        backbone,
        MapExtras::of_config(&cfg),
        cfg.input_size,
        &cache,
        &config.weights_dirs(),
    )?;

    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let notes = format!(
        "trained by asen train on {} ({} images: {} train, {} valid, {} test; {} unusable); frozen {} ImageNet backbone{}",
        data.data.as_deref().unwrap_or(Path::new("")).display(),
        dataset.len(),
        dataset.split_indices(Split::Train).len(),
        dataset.split_indices(Split::Valid).len(),
        dataset.split_indices(Split::Test).len(),
        features.bad_images.len(),
        backbone,
        if cfg.colour_histogram {
            " and the per-cell colour histogram"
        } else {
            ""
        }
    );
    let bar = epoch_bar();
    let outcome = train_head(
        &usable,
        &features.cache,
        &cfg,
        &out,
        &TrainOptions {
            resume: args.resume,
            command: Some(command),
            notes: Some(notes),
            eval_batch_size: 64,
            weights_dirs: config.weights_dirs(),
        },
        &mut |event| show_event(&bar, &cfg, event),
    )?;
    bar.finish_and_clear();

    calibrate_best(&outcome.best_dir, &features, &usable, None)?;

    print_best(&outcome);
    report_bad_images(&features.bad_images);
    Ok(())
}

/// Calibrate the match thresholds of the dataset's attributes (the head's `rows` of them,
/// in order, else the first ones) for the best model of a run in `best_dir`, on the valid
/// split of its cached features, and add them to its card.
fn calibrate_best(
    best_dir: &Path,
    features: &DatasetFeatures,
    usable: &Dataset,
    rows: Option<&[usize]>,
) -> anyhow::Result<()> {
    let best = ModelDir::load(best_dir)
        .with_context(|| format!("cannot reload {}", best_dir.display()))?;
    let head = best.head(&asen_models::parse_device("cpu")?)?;
    let pairs = embed_split(&head, &features.cache, usable, Split::Valid, 64, rows)?;
    let mut card = best.card;
    card.match_thresholds
        .get_or_insert_with(Default::default)
        .extend(calibrate_thresholds(usable, Split::Valid, &pairs, 1500));
    card.save(best_dir)?;
    Ok(())
}

fn print_best(outcome: &TrainOutcome) {
    println!(
        "best: epoch {} with valid mAP {:.2} % -> {}",
        outcome.best_epoch,
        outcome.best_map * 100.0,
        outcome.best_dir.display()
    );
}

/// The per-epoch progress bar of a training run.
fn epoch_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} {bar:30} {pos}/{len} triplets {per_sec} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// One line above `bar`; a hidden bar (no terminal) drops `println`, so
/// straight to stderr then.
fn print_line(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Follow a training event on `bar`; one line per finished epoch.
fn show_event(bar: &ProgressBar, cfg: &TrainConfig, event: &TrainEvent) {
    match event {
        TrainEvent::EpochStart { epoch, steps } => {
            bar.reset();
            bar.set_length((steps * cfg.batch_size).min(cfg.triplets_per_epoch) as u64);
            bar.set_prefix(format!("{epoch}/{}", cfg.epochs));
        }
        TrainEvent::Step { triplets, loss, .. } => {
            bar.inc(*triplets as u64);
            bar.set_message(format!("loss {loss:.4}"));
        }
        TrainEvent::GarmentMasks {
            done,
            total,
            informative,
        } => {
            if bar.length() != Some(*total as u64) {
                bar.reset();
                bar.set_length(*total as u64);
                bar.set_prefix("garment masks");
            }
            bar.set_position(*done as u64);
            if done == total {
                print_line(
                    bar,
                    format!(
                        "garment prior (weight {}): {informative} of {total} images have a garment mask",
                        cfg.garment_prior
                    ),
                );
            }
        }
        TrainEvent::Epoch(r) => {
            let line = format!(
                "epoch {:>3}  lr {:.1e}  loss {:.4}  valid mAP {:.2} %  {:.1} triplets/s  {:.0} s",
                r.epoch,
                r.lr,
                r.loss,
                r.valid_map * 100.0,
                r.triplets_per_s,
                r.seconds
            );
            print_line(bar, line);
        }
    }
}

/// `asen train --finetune`: check the images once, train backbone and head
/// end to end on `device`, calibrate the best model's copy-check thresholds
/// on the valid split with the full network.
fn run_finetune(
    dataset: &Dataset,
    data: &DataArgs,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    device_name: &str,
    weights_dirs: &[PathBuf],
) -> anyhow::Result<()> {
    let device = &asen_models::parse_device(device_name)?;
    let preprocess = PreprocessConfig {
        size: cfg.input_size as usize,
        ..PreprocessConfig::default()
    };
    let bad = unusable_images(dataset, &preprocess);
    let usable = without_images(dataset, &bad.iter().map(|b| b.index).collect())?;
    let settings = cfg.finetune.clone().unwrap_or_default();
    let notes = format!(
        "trained by asen train --finetune on {} ({} images: {} train, {} valid, {} test; {} unusable); {} fine-tuned from ImageNet (backbone lr x{}, flips {}, BatchNorm {})",
        data.data.as_deref().unwrap_or(Path::new("")).display(),
        dataset.len(),
        dataset.split_indices(Split::Train).len(),
        dataset.split_indices(Split::Valid).len(),
        dataset.split_indices(Split::Test).len(),
        bad.len(),
        cfg.backbone,
        settings.backbone_lr_scale,
        if settings.flip { "on" } else { "off" },
        if settings.freeze_batch_norm {
            "frozen"
        } else {
            "trained with batch statistics"
        },
    );
    let bar = epoch_bar();
    let outcome = finetune(
        &usable,
        cfg,
        out,
        &TrainOptions {
            resume,
            command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
            notes: Some(notes),
            eval_batch_size: 32,
            weights_dirs: weights_dirs.to_vec(),
        },
        device,
        &mut |event| show_event(&bar, cfg, event),
    )?;
    bar.finish_and_clear();

    let best = Embedder::load(
        &outcome.best_dir,
        &EmbedderOptions {
            device: device.clone(),
            ..EmbedderOptions::default()
        },
    )
    .with_context(|| format!("cannot reload {}", outcome.best_dir.display()))?;
    let pairs = embed_dataset_split(&best, &usable, Split::Valid, 32)?;
    let mut card = best.card().clone();
    card.match_thresholds = Some(calibrate_thresholds(&usable, Split::Valid, &pairs, 1500));
    card.save(&outcome.best_dir)?;
    print_best(&outcome);
    report_bad_images(&bad);
    Ok(())
}

/// `asen train --extend BASE`: train the dataset's attributes' rows on the cached features of
/// the base model's backbone (every other weight frozen), then calibrate their match
/// thresholds on the valid split. `cfg` gives the schedule and sampling; the base fixes the
/// rest.
fn run_extend(
    base_path: &Path,
    dataset: &Dataset,
    data: &DataArgs,
    cfg: &TrainConfig,
    out: &Path,
    resume: bool,
    weights_dirs: &[PathBuf],
) -> anyhow::Result<()> {
    let base = ModelDir::load(base_path)
        .with_context(|| format!("cannot load the base model {}", base_path.display()))?;
    let base_fingerprint = asen_models::fingerprint(base_path)
        .with_context(|| format!("cannot fingerprint {}", base_path.display()))?;
    let mut ecfg = extension_config(&base.card)?;
    ecfg.epochs = cfg.epochs;
    ecfg.triplets_per_epoch = cfg.triplets_per_epoch;
    ecfg.batch_size = cfg.batch_size;
    ecfg.schedule = cfg.schedule;
    ecfg.margin = cfg.margin;
    ecfg.seed = cfg.seed;
    ecfg.sampling = cfg.sampling;
    ecfg.negatives = cfg.negatives;
    let cache = data.cache.clone().unwrap_or_else(|| {
        default_cache(
            out,
            ecfg.backbone,
            MapExtras::of_config(&ecfg),
            ecfg.input_size,
        )
    });
    let (features, usable) = cached_features(
        dataset,
        ecfg.backbone,
        MapExtras::of_config(&ecfg),
        ecfg.input_size,
        &cache,
        weights_dirs,
    )?;
    let added = dataset
        .attributes()
        .iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let notes = format!(
        "extends model {base_fingerprint} ({} attributes) with {added}: only their rows of \
         attr_embedding were trained, every other weight is the base model's; trained by asen \
         train --extend on {} ({} images: {} train, {} valid, {} test; {} unusable)",
        base.card.attributes.len(),
        data.data.as_deref().unwrap_or(Path::new("")).display(),
        dataset.len(),
        dataset.split_indices(Split::Train).len(),
        dataset.split_indices(Split::Valid).len(),
        dataset.split_indices(Split::Test).len(),
        features.bad_images.len(),
    );
    let bar = epoch_bar();
    let outcome = extend_head(
        &usable,
        &features.cache,
        &base,
        &base_fingerprint,
        &ecfg,
        out,
        &TrainOptions {
            resume,
            command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
            notes: Some(notes),
            eval_batch_size: 64,
            weights_dirs: weights_dirs.to_vec(),
        },
        &mut |event| show_event(&bar, &ecfg, event),
    )?;
    bar.finish_and_clear();

    // Match thresholds of the added attributes, beside the base's.
    let first = base.card.attributes.len();
    let rows: Vec<usize> = (first..first + usable.attributes().len()).collect();
    calibrate_best(&outcome.best_dir, &features, &usable, Some(&rows))?;
    print_best(&outcome);
    println!(
        "extends {base_fingerprint} ({}); the new model's fingerprint: {}",
        base_path.display(),
        asen_models::fingerprint(&outcome.best_dir)?
    );
    report_bad_images(&features.bad_images);
    Ok(())
}
