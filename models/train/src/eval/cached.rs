//! The retrieval protocol over cached backbone features: a trained head,
//! the backbone's own pooled features (the ImageNet baseline) or random
//! vectors (the chance baseline), and the per-attribute copy-check
//! thresholds calibrated from the same embeddings.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use asen_models::{cosine, Head, ModelError, Result};

use super::retrieval::{evaluate_retrieval, RetrievalReport};
use crate::data::{Dataset, Split};
use crate::features::FeatureCache;

/// Embeddings keyed by `(image, attribute)`.
pub type PairEmbeddings = HashMap<(usize, usize), Vec<f32>>;

/// Embed, with `head`, every `(image, attribute)` pair that the `split`
/// probes need, from the cached features, `batch` images at a time (the
/// attribute-independent part of the head runs once per batch). Dataset
/// attribute `a` is the head's attribute `head_attributes[a]` (the identity
/// when `None`).
pub fn embed_split(
    head: &Head,
    features: &FeatureCache,
    dataset: &Dataset,
    split: Split,
    batch: usize,
    head_attributes: Option<&[usize]>,
) -> Result<PairEmbeddings> {
    let n_attr = dataset.attributes().len();
    let identity: Vec<usize> = (0..n_attr).collect();
    let head_attributes = head_attributes.unwrap_or(&identity);
    if head_attributes.len() != n_attr {
        return Err(ModelError::InvalidArgument(format!(
            "{} head attributes given for a dataset of {n_attr} attributes",
            head_attributes.len()
        )));
    }
    let per_attribute = dataset.probes(split).images_by_attribute(n_attr);
    let mut wanted: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (a, images) in per_attribute.iter().enumerate() {
        for &i in images {
            wanted.entry(i).or_default().push(a);
        }
    }
    let images: Vec<usize> = wanted.keys().copied().collect();
    let mut out = HashMap::new();
    for chunk in images.chunks(batch.max(1)) {
        let x = features.get(chunk, &Device::Cpu)?;
        let outputs = head.forward_attributes(&x, head_attributes)?;
        for (a, output) in outputs.into_iter().enumerate() {
            let rows = output.embedding.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            for (&i, row) in chunk.iter().zip(rows) {
                if wanted[&i].contains(&a) {
                    out.insert((i, a), row);
                }
            }
        }
    }
    Ok(out)
}

/// The backbone's globally average-pooled features of the pairs `split`
/// needs: one vector per image, the same for every attribute.
pub fn pooled_split(
    features: &FeatureCache,
    dataset: &Dataset,
    split: Split,
) -> Result<PairEmbeddings> {
    let n_attr = dataset.attributes().len();
    let per_attribute = dataset.probes(split).images_by_attribute(n_attr);
    let mut images: Vec<usize> = per_attribute.iter().flatten().copied().collect();
    images.sort_unstable();
    images.dedup();
    let mut pooled = HashMap::new();
    for chunk in images.chunks(128) {
        let x = features
            .get(chunk, &Device::Cpu)?
            .flatten_from(2)?
            .mean(2)?;
        for (&i, row) in chunk.iter().zip(x.to_vec2::<f32>()?) {
            pooled.insert(i, row);
        }
    }
    let mut out = HashMap::new();
    for (a, images) in per_attribute.iter().enumerate() {
        for &i in images {
            out.insert((i, a), pooled[&i].clone());
        }
    }
    Ok(out)
}

/// Random unit-free vectors (`dim` values, seeded) for the pairs `split`
/// needs: the chance level of the protocol.
pub fn random_split(dataset: &Dataset, split: Split, dim: usize, seed: u64) -> PairEmbeddings {
    let n_attr = dataset.attributes().len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for (a, images) in dataset
        .probes(split)
        .images_by_attribute(n_attr)
        .iter()
        .enumerate()
    {
        for &i in images {
            let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            out.insert((i, a), v);
        }
    }
    out
}

/// Evaluate precomputed pair embeddings with the paper's protocol.
pub fn evaluate_pairs(
    dataset: &Dataset,
    split: Split,
    pairs: &PairEmbeddings,
) -> Result<RetrievalReport> {
    evaluate_retrieval(dataset, split, |i, a| {
        pairs.get(&(i, a)).cloned().ok_or_else(|| {
            ModelError::InvalidArgument(format!("no embedding of image {i} for attribute {a}"))
        })
    })
}

/// [`embed_split`] (attributes in the same order) then [`evaluate_pairs`].
pub fn evaluate_head(
    head: &Head,
    features: &FeatureCache,
    dataset: &Dataset,
    split: Split,
    batch: usize,
) -> Result<RetrievalReport> {
    let pairs = embed_split(head, features, dataset, split, batch, None)?;
    evaluate_pairs(dataset, split, &pairs)
}

/// Per attribute, the cosine threshold that maximises the F1 score of
/// "same value" over every pair of distinct `split` images labelled for
/// that attribute (queries and candidates together, at most `max_images`
/// of them, drawn with a fixed seed): pairs at or above the threshold are
/// predicted to share the value. Attributes without a same-value pair are
/// left out.
pub fn calibrate_thresholds(
    dataset: &Dataset,
    split: Split,
    pairs: &PairEmbeddings,
    max_images: usize,
) -> BTreeMap<String, f32> {
    let lists = dataset.probes(split);
    let mut out = BTreeMap::new();
    for (a, attribute) in dataset.attributes().iter().enumerate() {
        let mut labelled: Vec<(usize, u32)> = lists
            .queries
            .iter()
            .chain(&lists.candidates)
            .filter(|p| p.attribute == a && pairs.contains_key(&(p.image, a)))
            .map(|p| (p.image, p.value))
            .collect();
        labelled.sort_unstable();
        labelled.dedup();
        if labelled.len() > max_images {
            let mut rng = ChaCha8Rng::seed_from_u64(a as u64);
            rand::seq::SliceRandom::shuffle(&mut labelled[..], &mut rng);
            labelled.truncate(max_images);
        }
        let mut scored = Vec::new();
        for x in 0..labelled.len() {
            for y in x + 1..labelled.len() {
                let (i, vi) = labelled[x];
                let (j, vj) = labelled[y];
                scored.push((cosine(&pairs[&(i, a)], &pairs[&(j, a)]), vi == vj));
            }
        }
        if let Some(t) = best_f1_threshold(&mut scored) {
            out.insert(attribute.name.clone(), t);
        }
    }
    out
}

/// The score threshold maximising F1 of `(score, positive)` pairs, where a
/// pair is predicted positive when its score is at or above the threshold.
/// `None` without a positive pair.
pub fn best_f1_threshold(scored: &mut [(f32, bool)]) -> Option<f32> {
    let positives = scored.iter().filter(|s| s.1).count();
    if positives == 0 {
        return None;
    }
    scored.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut best = (f64::NEG_INFINITY, scored[0].0);
    let mut k = 0;
    while k < scored.len() {
        // Take all pairs tied at this score together.
        let score = scored[k].0;
        while k < scored.len() && scored[k].0 == score {
            if scored[k].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            k += 1;
        }
        let f1 = 2.0 * tp as f64 / (2 * tp + fp + (positives - tp)) as f64;
        if f1 > best.0 {
            best = (f1, score);
        }
    }
    Some(best.1.clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_threshold_on_a_hand_computed_case() {
        // Sorted: 0.9 +, 0.8 +, 0.7 -, 0.6 +, 0.1 -.
        // t=0.9: tp1 fp0 fn2 -> 2/4=0.5; t=0.8: tp2 fn1 -> 4/5=0.8;
        // t=0.7: tp2 fp1 fn1 -> 4/6; t=0.6: tp3 fp1 -> 6/7=0.857; t=0.1: 6/8.
        let mut s = vec![
            (0.7, false),
            (0.9, true),
            (0.1, false),
            (0.6, true),
            (0.8, true),
        ];
        assert_eq!(best_f1_threshold(&mut s), Some(0.6));
        let mut none = vec![(0.5, false)];
        assert_eq!(best_f1_threshold(&mut none), None);
        // Ties are decided together: both 0.5 pairs fall on the same side.
        let mut tied = vec![(0.5, true), (0.5, false), (0.2, false)];
        assert_eq!(best_f1_threshold(&mut tied), Some(0.5));
    }
}
