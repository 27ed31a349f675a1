//! The retrieval protocol over images embedded by a whole network (an
//! [`Embedder`]): what validates fine-tuning, whose backbone changes.

use std::collections::BTreeMap;

use asen_models::{Embedder, ModelError, Result};

use super::cached::PairEmbeddings;
use crate::data::{Dataset, Split};
use crate::features::load_crops;

/// Embed, with `embedder`, every `(image, attribute)` pair that the `split`
/// probes of `dataset` need, decoding the images (`embedder`'s attributes
/// must be the dataset's, in order, as in a model trained on it).
pub fn embed_dataset_split(
    embedder: &Embedder,
    dataset: &Dataset,
    split: Split,
    batch: usize,
) -> Result<PairEmbeddings> {
    let n_attr = dataset.attributes().len();
    if embedder.card().attributes.len() != n_attr {
        return Err(ModelError::InvalidArgument(format!(
            "the model has {} attributes, the dataset {n_attr}",
            embedder.card().attributes.len()
        )));
    }
    let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (a, images) in dataset
        .probes(split)
        .images_by_attribute(n_attr)
        .iter()
        .enumerate()
    {
        for &i in images {
            wanted.entry(i).or_default().push(a);
        }
    }
    let images: Vec<usize> = wanted.keys().copied().collect();
    let all: Vec<usize> = (0..n_attr).collect();
    let mut out = PairEmbeddings::new();
    for chunk in images.chunks(batch.max(1)) {
        let crops = load_crops(
            dataset,
            chunk,
            &vec![false; chunk.len()],
            embedder.preprocess_config(),
        )?;
        for (&i, per_attribute) in chunk.iter().zip(embedder.embed_crops(&crops, &all)?) {
            for e in per_attribute {
                if wanted[&i].contains(&e.attribute) {
                    out.insert((i, e.attribute), e.vector);
                }
            }
        }
    }
    Ok(out)
}
