//! `asen eval`: the paper's retrieval protocol on a dataset split for a
//! trained model, the ImageNet pooled-feature baseline or random vectors; a
//! table on stdout, JSON on request.
//!
//! Models whose backbone is the frozen ImageNet one (every model `asen
//! train` writes) are evaluated from the same feature cache as training;
//! models with their own backbone weights (converted checkpoints) run the
//! whole network on every image.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use asen_models::{BackboneKind, Embedder, EmbedderOptions, ModelDir, PreprocessConfig};
use asen_train::{
    calibrate_thresholds, embed_split, evaluate_pairs, load_crop, pooled_split, random_split,
    without_images, BadImage, Dataset, PairEmbeddings, Split,
};

use super::train::{cached_features, default_cache, load_dataset, report_bad_images, MapExtras};
use crate::cli::EvalArgs;
use crate::config::Config;

/// Run `asen eval`.
pub fn run(args: EvalArgs, config: &Config) -> anyhow::Result<()> {
    let split = match Split::parse(&args.split) {
        Some(s @ (Split::Valid | Split::Test)) => s,
        _ => bail!("--split must be valid or test, got {:?}", args.split),
    };
    if args.copies {
        return super::copies::evaluate(&args, split, config);
    }
    let weights_dirs = config.weights_dirs();
    let dataset = load_dataset(&args.data)?;
    let data_path = args.data.data.clone().unwrap_or_default();
    if dataset.probes(split).queries.is_empty() {
        bail!(
            "{}: the {split} split has no queries (is it empty?)",
            data_path.display()
        );
    }
    let cache_dir = Path::new(".");
    let (label, pairs, usable, bad) = match (&args.baseline, &args.model) {
        (Some(_), Some(_)) => bail!("give either --model or --baseline, not both"),
        (Some(b), None) if b == "random" => (
            "random".to_string(),
            random_split(&dataset, split, 128, 0),
            dataset.clone(),
            Vec::new(),
        ),
        (Some(b), None) if b == "imagenet" => {
            let backbone: BackboneKind = args.backbone.parse()?;
            let cache =
                args.data.cache.clone().unwrap_or_else(|| {
                    default_cache(cache_dir, backbone, MapExtras::default(), 224)
                });
            let (features, usable) = cached_features(
                &dataset,
                backbone,
                MapExtras::default(),
                224,
                &cache,
                &weights_dirs,
            )?;
            let pairs = pooled_split(&features.cache, &usable, split)?;
            (
                format!("imagenet pooled {backbone}"),
                pairs,
                usable,
                features.bad_images,
            )
        }
        (Some(b), None) => bail!("unknown baseline {b:?}; expected imagenet or random"),
        // `--model` is in the config's model path; unset, the shipped model.
        (None, _) => {
            let path = config.model_path();
            evaluate_model(&path, &dataset, split, &args, cache_dir, &weights_dirs)?
        }
    };
    let report = evaluate_pairs(&usable, split, &pairs)?;
    println!("{label} on {} ({split}):", data_path.display());
    println!("{report}");
    if let Some(json) = &args.json {
        let value = serde_json::json!({
            "model": label,
            "data": data_path.display().to_string(),
            "report": report,
            "bad_images": bad,
        });
        std::fs::write(json, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("cannot write {}", json.display()))?;
    }
    report_bad_images(&bad);
    Ok(())
}

type Evaluated = (String, PairEmbeddings, Dataset, Vec<BadImage>);

fn evaluate_model(
    path: &Path,
    dataset: &Dataset,
    split: Split,
    args: &EvalArgs,
    cache_dir: &Path,
    weights_dirs: &[PathBuf],
) -> anyhow::Result<Evaluated> {
    let label = path.display().to_string();
    let model_dir = if path.is_dir() {
        Some(
            ModelDir::load(path)
                .with_context(|| format!("cannot load model {}", path.display()))?,
        )
    } else {
        None
    };
    let frozen = match &model_dir {
        Some(m) => !m.has_backbone()?,
        None => false,
    };
    if let (true, Some(model)) = (frozen, model_dir) {
        let device = asen_models::parse_device("cpu")?;
        let head = model.head(&device)?;
        let head_attributes = model_attributes(&model.card, dataset)?;
        let backbone: BackboneKind = model.card.backbone.parse()?;
        let size = model.card.input_size;
        let extras = MapExtras::of_card(&model.card);
        let cache = args
            .data
            .cache
            .clone()
            .unwrap_or_else(|| default_cache(cache_dir, backbone, extras, size));
        let (features, usable) =
            cached_features(dataset, backbone, extras, size, &cache, weights_dirs)?;
        let pairs = embed_split(
            &head,
            &features.cache,
            &usable,
            split,
            args.batch_size,
            Some(&head_attributes),
        )?;
        if args.write_thresholds {
            let by_name = calibrate_thresholds(&usable, split, &pairs, 1500);
            let mut card = model.card.clone();
            card.match_thresholds = Some(by_name);
            card.save(path)?;
            eprintln!(
                "match thresholds calibrated on the {split} split written to {}",
                path.join("card.json").display()
            );
        }
        return Ok((label, pairs, usable, features.bad_images));
    }
    if args.write_thresholds {
        bail!(
            "--write-thresholds needs a model directory trained by asen train (frozen backbone): {}",
            path.display()
        );
    }
    let opts = EmbedderOptions {
        weights_dirs: weights_dirs.to_vec(),
        ..EmbedderOptions::default()
    };
    let embedder = Embedder::load(path, &opts)
        .with_context(|| format!("cannot load model {}", path.display()))?;
    let head_attributes = model_attributes(embedder.card(), dataset)?;
    let cfg = PreprocessConfig {
        size: embedder.card().input_size as usize,
        ..PreprocessConfig::default()
    };
    let n_attr = dataset.attributes().len();
    let per_attribute = dataset.probes(split).images_by_attribute(n_attr);
    let images: BTreeSet<usize> = per_attribute.iter().flatten().copied().collect();
    let images: Vec<usize> = images.into_iter().collect();
    let mut bad = Vec::new();
    let mut pairs = PairEmbeddings::new();
    for chunk in images.chunks(args.batch_size.max(1)) {
        let mut crops = Vec::with_capacity(chunk.len());
        let mut ids = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let file = dataset.image_path(i).unwrap_or_default();
            match load_crop(&file, &cfg) {
                Ok(c) => {
                    crops.push(c);
                    ids.push(i);
                }
                Err(e) => bad.push(BadImage {
                    index: i,
                    path: file,
                    reason: e.to_string(),
                }),
            }
        }
        if crops.is_empty() {
            continue;
        }
        let out = embedder.embed_crops(&crops, &head_attributes)?;
        for (&i, per) in ids.iter().zip(out) {
            for (a, e) in per.into_iter().enumerate() {
                if per_attribute[a].binary_search(&i).is_ok() {
                    pairs.insert((i, a), e.vector);
                }
            }
        }
    }
    let set: BTreeSet<usize> = bad.iter().map(|b| b.index).collect();
    let usable = without_images(dataset, &set)?;
    Ok((label, pairs, usable, bad))
}

/// For each dataset attribute, the model's index of the attribute of that name.
fn model_attributes(
    card: &asen_models::ModelCard,
    dataset: &Dataset,
) -> anyhow::Result<Vec<usize>> {
    dataset
        .attributes()
        .iter()
        .map(|a| {
            card.attribute_index(&a.name).with_context(|| {
                format!(
                    "the dataset's attribute {:?} is not one of the model's",
                    a.name
                )
            })
        })
        .collect()
}
