//! Write the real embeddings of a trained frozen-backbone model for one attribute as `.fvecs`,
//! for the index benchmark (`cargo bench -p asen-index --bench index_bench -- --data fvecs:OUT`).
//!
//! `cargo run --release -p asen-train --example export_embeddings -- MODEL_DIR LABELS.csv CACHE ATTRIBUTE OUT.fvecs`
//!
//! Every image of the CSV dataset is embedded from the feature cache (built on first use, as
//! `asen train` does); train and valid images come first and the test images last, so the bench's
//! queries (the last rows) are test images the gallery has never seen.

use std::io::Write;

use asen_models::ModelDir;
use asen_train::{dataset_features, CsvOptions, Dataset, FeatureOptions, Split};
use candle_core::{DType, Device};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, csv, cache, attribute, out] = &args[..] else {
        return Err(
            "usage: export_embeddings MODEL_DIR LABELS.csv CACHE ATTRIBUTE OUT.fvecs".into(),
        );
    };
    let model = ModelDir::load(model)?;
    let head = model.head(&Device::Cpu)?;
    let card = &model.card;
    let dataset = Dataset::load_csv(csv, &CsvOptions::new(card.attribute_names()))?;
    let a = card.attribute_index(attribute)?;
    let mut opts = FeatureOptions::new(card.backbone.parse()?);
    opts.colour_histogram = card.colour_histogram;
    opts.input_size = card.input_size;
    opts.weights_dirs = vec![concat!(env!("CARGO_MANIFEST_DIR"), "/../weights").into()];
    let features = dataset_features(&dataset, cache.as_ref(), &opts, &|_, _| {})?;
    let bad: Vec<usize> = features.bad_images.iter().map(|b| b.index).collect();
    let order: Vec<usize> = [Split::Train, Split::Valid, Split::Test]
        .into_iter()
        .flat_map(|s| dataset.split_indices(s))
        .filter(|i| !bad.contains(i))
        .collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    for chunk in order.chunks(64) {
        let x = features.cache.get(chunk, &Device::Cpu)?;
        let e = head.forward_attributes(&x, &[a])?.remove(0).embedding;
        for row in e.to_dtype(DType::F32)?.to_vec2::<f32>()? {
            file.write_all(&(row.len() as u32).to_le_bytes())?;
            for v in row {
                file.write_all(&v.to_le_bytes())?;
            }
        }
    }
    file.flush()?;
    eprintln!(
        "{} embeddings of {attribute} ({} test images last) written to {out}",
        order.len(),
        dataset.split_indices(Split::Test).len()
    );
    Ok(())
}
