//! Triplet sampling as in the paper's training code.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Split};
use crate::error::{ModelError, Result};

/// One training triplet: `anchor` and `positive` share a value of
/// `attribute`, `negative` has another value of it. Fields index
/// [`Dataset::images`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Triplet {
    /// The anchor image.
    pub anchor: usize,
    /// An image with the anchor's value.
    pub positive: usize,
    /// An image with another value.
    pub negative: usize,
    /// The attribute the triplet is about.
    pub attribute: usize,
}

#[derive(Debug, Clone)]
struct Pool {
    attribute: usize,
    /// Train images per value id (empty for unused values).
    by_value: Vec<Vec<usize>>,
    /// Values with at least two images (anchor candidates).
    anchor_values: Vec<usize>,
    /// Values with at least one image (negative candidates).
    present_values: Vec<usize>,
}

/// Draws triplets from the train split: an attribute uniformly, then a value
/// uniformly among that attribute's values that have at least two train
/// images (so anchor and positive differ), anchor and positive uniformly
/// among that value's images, then a negative value uniformly among the other
/// values present, and a negative image of it. Attributes without such a
/// value pair are never drawn. Every epoch is a fresh draw, reproducible from
/// the seed and the epoch number.
#[derive(Debug, Clone)]
pub struct TripletSampler {
    pools: Vec<Pool>,
    seed: u64,
}

impl TripletSampler {
    /// Index the train split of `dataset`. Fails when no attribute has a
    /// value with two train images and another value with one.
    pub fn new(dataset: &Dataset, seed: u64) -> Result<TripletSampler> {
        let train = dataset.split_indices(Split::Train);
        let mut pools = Vec::new();
        for (a, attribute) in dataset.attributes().iter().enumerate() {
            let mut by_value = vec![Vec::new(); attribute.values.len()];
            for &i in &train {
                if let Some(v) = dataset.images()[i].labels[a] {
                    by_value[v as usize].push(i);
                }
            }
            let present_values: Vec<usize> = (0..by_value.len())
                .filter(|&v| !by_value[v].is_empty())
                .collect();
            let anchor_values: Vec<usize> = (0..by_value.len())
                .filter(|&v| by_value[v].len() >= 2)
                .collect();
            if present_values.len() >= 2 && !anchor_values.is_empty() {
                pools.push(Pool {
                    attribute: a,
                    by_value,
                    anchor_values,
                    present_values,
                });
            }
        }
        if pools.is_empty() {
            return Err(ModelError::InvalidArgument(
                "no attribute has a value with two train images and a second value: cannot sample triplets"
                    .into(),
            ));
        }
        Ok(TripletSampler { pools, seed })
    }

    /// Attribute indices the sampler draws from.
    pub fn attributes(&self) -> Vec<usize> {
        self.pools.iter().map(|p| p.attribute).collect()
    }

    /// `count` triplets for epoch `epoch` (same seed and epoch, same list).
    pub fn epoch(&self, epoch: u64, count: usize) -> Vec<Triplet> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        (0..count)
            .map(|_| {
                let pool = &self.pools[rng.gen_range(0..self.pools.len())];
                let value = pool.anchor_values[rng.gen_range(0..pool.anchor_values.len())];
                let images = &pool.by_value[value];
                let mut pair = images.choose_multiple(&mut rng, 2);
                let (anchor, positive) = match (pair.next(), pair.next()) {
                    (Some(&a), Some(&p)) => (a, p),
                    // Unreachable: anchor values have two images.
                    _ => (images[0], images[0]),
                };
                let other = rng.gen_range(0..pool.present_values.len() - 1);
                let mut negative_value = pool.present_values[other];
                if negative_value == value {
                    negative_value = pool.present_values[pool.present_values.len() - 1];
                }
                let negatives = &pool.by_value[negative_value];
                Triplet {
                    anchor,
                    positive,
                    negative: negatives[rng.gen_range(0..negatives.len())],
                    attribute: pool.attribute,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::data::{generate_synthetic, Attribute, ImageRecord, ProbeLists, SyntheticConfig};

    #[test]
    fn triplets_are_valid_reproducible_and_fresh() {
        let ds = generate_synthetic(&SyntheticConfig {
            train: 200,
            valid: 10,
            test: 10,
            ..SyntheticConfig::default()
        })
        .unwrap()
        .dataset;
        let sampler = TripletSampler::new(&ds, 9).unwrap();
        let e0 = sampler.epoch(0, 2000);
        assert_eq!(e0, sampler.epoch(0, 2000));
        assert_ne!(e0, sampler.epoch(1, 2000));
        assert_ne!(e0, TripletSampler::new(&ds, 10).unwrap().epoch(0, 2000));
        let mut per_attribute = HashMap::new();
        for t in &e0 {
            let label = |i: usize| ds.images()[i].labels[t.attribute];
            assert_ne!(t.anchor, t.positive);
            assert_eq!(label(t.anchor), label(t.positive));
            assert_ne!(label(t.anchor), label(t.negative));
            for i in [t.anchor, t.positive, t.negative] {
                assert_eq!(ds.images()[i].split, Split::Train);
            }
            *per_attribute.entry(t.attribute).or_insert(0usize) += 1;
        }
        // Attributes uniform: 4 attributes, 500 each expected.
        for a in 0..4 {
            let n = per_attribute[&a];
            assert!((400..600).contains(&n), "attribute {a} drawn {n} times");
        }
    }

    #[test]
    fn values_without_pairs_and_unknowns_are_skipped() {
        let attributes = vec![
            Attribute {
                name: "colour".into(),
                values: vec!["red".into(), "blue".into(), "green".into()],
            },
            Attribute {
                name: "shape".into(),
                values: vec!["round".into()],
            },
        ];
        // red x3, blue x1, green none, one unknown; shape has a single value.
        let labels = [Some(0), Some(0), Some(0), Some(1), None];
        let images = labels
            .iter()
            .enumerate()
            .map(|(i, &c)| ImageRecord {
                path: PathBuf::from(format!("{i}")),
                split: Split::Train,
                labels: vec![c, Some(0)],
            })
            .collect();
        let ds = Dataset::from_parts(
            "",
            attributes,
            images,
            ProbeLists::default(),
            ProbeLists::default(),
            Path::new("t"),
        )
        .unwrap();
        let sampler = TripletSampler::new(&ds, 1).unwrap();
        assert_eq!(sampler.attributes(), vec![0]);
        for t in sampler.epoch(0, 200) {
            assert!(t.anchor < 3 && t.positive < 3);
            assert_eq!(t.negative, 3);
        }
    }
}
