//! Triplet sampling: as in the paper's training code (the default), or
//! following the data's value frequencies.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Split};
use asen_models::{ModelError, Result};

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

/// How triplet values are drawn (the attribute is always uniform).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// The paper's code: the anchor value uniformly among the attribute's
    /// values, the negative value uniformly among the others. Rare values
    /// are drawn as often as common ones.
    #[default]
    Paper,
    /// The anchor image uniformly among the attribute's labelled train
    /// images (values with two or more), the negative image uniformly among
    /// those with another value: common values, and the confusions between
    /// them (T-shirts against shirts), are drawn as often as they occur.
    ImageUniform,
}

impl std::str::FromStr for Sampling {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "paper" => Ok(Sampling::Paper),
            "image-uniform" => Ok(Sampling::ImageUniform),
            other => Err(ModelError::InvalidArgument(format!(
                "unknown sampling {other:?}; expected paper or image-uniform"
            ))),
        }
    }
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
    /// `(image, value)` of every labelled train image.
    labelled: Vec<(usize, usize)>,
    /// `(image, value)` of the images whose value has two or more images.
    anchors: Vec<(usize, usize)>,
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
    sampling: Sampling,
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
                let labelled: Vec<(usize, usize)> = by_value
                    .iter()
                    .enumerate()
                    .flat_map(|(v, images)| images.iter().map(move |&i| (i, v)))
                    .collect();
                let anchors = labelled
                    .iter()
                    .copied()
                    .filter(|&(_, v)| by_value[v].len() >= 2)
                    .collect();
                pools.push(Pool {
                    attribute: a,
                    by_value,
                    anchor_values,
                    present_values,
                    labelled,
                    anchors,
                });
            }
        }
        if pools.is_empty() {
            return Err(ModelError::InvalidArgument(
                "no attribute has a value with two train images and a second value: cannot sample triplets"
                    .into(),
            ));
        }
        Ok(TripletSampler {
            pools,
            seed,
            sampling: Sampling::Paper,
        })
    }

    /// Draw values the way `sampling` says.
    pub fn with_sampling(mut self, sampling: Sampling) -> Self {
        self.sampling = sampling;
        self
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
                if self.sampling == Sampling::ImageUniform {
                    return image_uniform(pool, &mut rng);
                }
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

/// One [`Sampling::ImageUniform`] triplet from `pool`.
fn image_uniform(pool: &Pool, rng: &mut ChaCha8Rng) -> Triplet {
    let (anchor, value) = pool.anchors[rng.gen_range(0..pool.anchors.len())];
    let same = &pool.by_value[value];
    // `same` has two or more images: draw among the others.
    let mut positive = same[rng.gen_range(0..same.len() - 1)];
    if positive == anchor {
        positive = same[same.len() - 1];
    }
    // The others: every labelled image whose value differs (at least one
    // exists: the pool has two values). Rejection is fast unless one value
    // holds nearly every image; fall back to a uniform other value then.
    let negative = (0..64)
        .map(|_| pool.labelled[rng.gen_range(0..pool.labelled.len())])
        .find(|&(_, v)| v != value)
        .map(|(i, _)| i)
        .unwrap_or_else(|| {
            let others: Vec<usize> = pool
                .present_values
                .iter()
                .copied()
                .filter(|&v| v != value)
                .collect();
            let images = &pool.by_value[others[rng.gen_range(0..others.len())]];
            images[rng.gen_range(0..images.len())]
        });
    Triplet {
        anchor,
        positive,
        negative,
        attribute: pool.attribute,
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

    /// A dataset of train images only, one per entry of `labels`.
    fn train_only(
        attributes: Vec<Attribute>,
        labels: impl Iterator<Item = Vec<Option<u32>>>,
    ) -> Dataset {
        let images = labels
            .enumerate()
            .map(|(i, labels)| ImageRecord {
                path: PathBuf::from(format!("{i}")),
                split: Split::Train,
                labels,
            })
            .collect();
        Dataset::from_parts(
            "",
            attributes,
            images,
            ProbeLists::default(),
            ProbeLists::default(),
            Path::new("t"),
        )
        .unwrap()
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
        let ds = train_only(attributes, labels.iter().map(|&c| vec![c, Some(0)]));
        for sampling in [Sampling::Paper, Sampling::ImageUniform] {
            let sampler = TripletSampler::new(&ds, 1).unwrap().with_sampling(sampling);
            assert_eq!(sampler.attributes(), vec![0]);
            for t in sampler.epoch(0, 200) {
                assert!(t.anchor < 3 && t.positive < 3, "{sampling:?}");
                assert_ne!(t.anchor, t.positive, "{sampling:?}");
                assert_eq!(t.negative, 3, "{sampling:?}");
            }
        }
    }

    /// Values: a x60, b x30, c x8, d x2. Paper sampling draws each anchor
    /// value a quarter of the time; image-uniform as often as it occurs, and
    /// its negatives follow the other values' frequencies.
    #[test]
    fn image_uniform_follows_value_frequencies() {
        let counts = [60usize, 30, 8, 2];
        let attributes = vec![Attribute {
            name: "type".into(),
            values: ["a", "b", "c", "d"].map(String::from).to_vec(),
        }];
        let values = counts
            .iter()
            .enumerate()
            .flat_map(|(v, &n)| std::iter::repeat_n(v as u32, n));
        let ds = train_only(attributes, values.map(|v| vec![Some(v)]));
        let label = |i: usize| ds.images()[i].labels[0].unwrap() as usize;
        let draws = 20_000;
        let share = |sampling: Sampling, pick: fn(&Triplet) -> usize| {
            let mut seen = [0usize; 4];
            for t in TripletSampler::new(&ds, 3)
                .unwrap()
                .with_sampling(sampling)
                .epoch(0, draws)
            {
                assert_eq!(label(t.anchor), label(t.positive));
                assert_ne!(label(t.anchor), label(t.negative));
                seen[label(pick(&t))] += 1;
            }
            seen.map(|n| n as f64 / draws as f64)
        };
        let paper = share(Sampling::Paper, |t| t.anchor);
        assert!(paper.iter().all(|p| (p - 0.25).abs() < 0.02), "{paper:?}");
        let anchors = share(Sampling::ImageUniform, |t| t.anchor);
        for (p, n) in anchors.iter().zip(counts) {
            assert!((p - n as f64 / 100.0).abs() < 0.02, "{anchors:?}");
        }
        // A negative of value v: sum over anchor values u != v of
        // P(u) * n_v / (100 - n_u).
        let negatives = share(Sampling::ImageUniform, |t| t.negative);
        for (v, p) in negatives.iter().enumerate() {
            let expected: f64 = (0..4)
                .filter(|&u| u != v)
                .map(|u| counts[u] as f64 / 100.0 * counts[v] as f64 / (100 - counts[u]) as f64)
                .sum();
            assert!((p - expected).abs() < 0.02, "{v}: {p} vs {expected}");
        }
        assert_eq!(
            "image-uniform".parse::<Sampling>().unwrap(),
            Sampling::ImageUniform
        );
        assert!("hard".parse::<Sampling>().is_err());
    }
}
