//! Build the backbone feature cache of a CSV dataset and print its rate.
//!
//! `cargo run --release -p asen-train --example feature_cache -- LABELS.csv BACKBONE CACHE_FILE [LIMIT]`
//! (attributes: gender masterCategory subCategory articleType baseColour season usage pattern).
//! With LIMIT, only the first LIMIT images are kept (a timing run). BACKBONE `mobilenet_v2+colour`
//! appends the colour histogram channels (`asen train --colour-histogram`).

use std::time::Instant;

use asen_train::{dataset_features, CsvOptions, Dataset, FeatureOptions, Split};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [csv, backbone, cache, rest @ ..] = &args[..] else {
        return Err("usage: feature_cache LABELS.csv BACKBONE CACHE_FILE [LIMIT]".into());
    };
    let attributes = [
        "gender",
        "masterCategory",
        "subCategory",
        "articleType",
        "baseColour",
        "season",
        "usage",
        "pattern",
    ];
    let dataset = Dataset::load_csv(csv, &CsvOptions::new(attributes))?;
    let limit: Option<usize> = rest.first().map(|s| s.parse()).transpose()?;
    // `mobilenet_v2+colour` appends the per-cell colour histogram.
    let (name, colour) = match backbone.strip_suffix("+colour") {
        Some(name) => (name, true),
        None => (backbone.as_str(), false),
    };
    let mut opts = FeatureOptions::new(name.parse()?);
    opts.weights_dirs = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/../weights").into()];
    opts.colour_histogram = colour;
    let start = Instant::now();
    let total = limit.unwrap_or(dataset.len());
    let features = if let Some(n) = limit {
        // Timing run: only the first n images, through the same code path.
        let mut images = dataset.images()[..n].to_vec();
        images.iter_mut().for_each(|im| im.split = Split::Train);
        let sub = Dataset::from_parts(
            dataset.root().to_path_buf(),
            dataset.attributes().to_vec(),
            images,
            Default::default(),
            Default::default(),
            dataset.root(),
        )?;
        dataset_features(&sub, cache.as_ref(), &opts, &|d, t| eprint!("\r{d}/{t}"))?
    } else {
        dataset_features(&dataset, cache.as_ref(), &opts, &|d, t| {
            eprint!("\r{d}/{t}")
        })?
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "\n{backbone}: {total} images in {secs:.1} s ({:.1} images/s), {} bad",
        total as f64 / secs,
        features.bad_images.len()
    );
    Ok(())
}
