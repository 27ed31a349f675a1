//! `asen copy-signature` and `asen eval --copies`: fit, calibrate and measure the copy
//! verdict's instance-level signature (see `asen_train::fit_copy_signature`).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use asen_models::{Embedder, EmbedderOptions, ModelCard, SIGNATURE_FILE};
use asen_train::{
    evaluate_copies, fit_copy_signature, CopyFitOptions, CopyRecipe, CopyReport, Dataset,
    FitConfig, Split,
};
use indicatif::{ProgressBar, ProgressStyle};

use super::train::load_dataset;
use crate::cli::{CopySignatureArgs, DataArgs, EvalArgs};
use crate::config::Config;

/// Run `asen copy-signature`.
pub fn run(args: CopySignatureArgs, config: &Config) -> anyhow::Result<()> {
    let model_path = config.model_path();
    if !model_path.is_dir() {
        anyhow::bail!(
            "{}: a copy signature is written into a model directory (card.json + model.safetensors)",
            model_path.display()
        );
    }
    let dataset = load_grouped(&args.data, &args.group_by)?;
    for split in [Split::Train, Split::Valid] {
        if dataset.split_indices(split).is_empty() {
            anyhow::bail!("the {split} split is empty: the signature is fitted on train and calibrated on valid");
        }
    }
    let embedder = load_embedder(&model_path, config)?;
    // Stored as one more attribute vector of a catalogue: the model's embedding size.
    let dim = embedder.card().embedding_dim;
    let opts = CopyFitOptions {
        anchors: args.anchors,
        copies_per_anchor: args.copies_per_anchor,
        group_by: args.group_by.clone(),
        fit: FitConfig {
            dim,
            epochs: args.epochs,
            seed: args.seed,
            ..FitConfig::default()
        },
        seed: args.seed,
        ..CopyFitOptions::default()
    };
    let started = Instant::now();
    let bar = Bar::new();
    let (signature, spec, report) =
        fit_copy_signature(&embedder, &dataset, &opts, &|what, done, total| {
            bar.show(what, done, total)
        })?;
    bar.finish();
    let weights = model_path.join(SIGNATURE_FILE);
    signature
        .save(&weights)
        .with_context(|| format!("cannot write {}", weights.display()))?;
    let mut card = ModelCard::load(&model_path)?;
    card.copy_signature = Some(spec);
    card.save(&model_path)?;
    println!(
        "copy signature ({} components) written to {} in {:.0} s; calibrated on valid:",
        signature.dim(),
        weights.display(),
        started.elapsed().as_secs_f64()
    );
    println!("{report}");
    Ok(())
}

/// `asen eval --copies`: the verdict on the split's copies and look-alikes.
pub fn evaluate(args: &EvalArgs, split: Split, config: &Config) -> anyhow::Result<()> {
    let dataset = load_grouped(&args.data, &args.group_by)?;
    let model_path = config.model_path();
    let embedder = load_embedder(&model_path, config)?;
    let bar = Bar::new();
    let report = evaluate_copies(
        &embedder,
        &dataset,
        split,
        &args.group_by,
        args.pairs,
        args.seed,
        &CopyRecipe::evaluation(),
        &|what, done, total| bar.show(what, done, total),
    )?;
    bar.finish();
    println!(
        "copy verdict of {} on {} ({split}, seed {}):",
        model_path.display(),
        args.data.data.as_deref().unwrap_or(Path::new("")).display(),
        args.seed
    );
    println!("{report}");
    if let Some(json) = &args.json {
        write_json(json, &report)?;
    }
    Ok(())
}

fn write_json(path: &Path, report: &CopyReport) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(report)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The dataset, with the grouping attributes as its attributes when --attributes is not given.
fn load_grouped(data: &DataArgs, group_by: &[String]) -> anyhow::Result<Dataset> {
    let mut data = data.clone();
    if data.attributes.is_empty() {
        data.attributes = group_by.to_vec();
    }
    load_dataset(&data)
}

fn load_embedder(path: &Path, config: &Config) -> anyhow::Result<Embedder> {
    let opts = EmbedderOptions {
        weights_dirs: config.weights_dirs(),
        ..EmbedderOptions::default()
    };
    Embedder::load(path, &opts).with_context(|| format!("cannot load model {}", path.display()))
}

/// One progress bar with rate and ETA, re-labelled per step.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }

    fn show(&self, what: &str, done: usize, total: usize) {
        if self.0.prefix() != what {
            self.0.set_prefix(what.to_string());
            self.0.reset();
        }
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
