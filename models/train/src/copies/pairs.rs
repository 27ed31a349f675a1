//! Copy and look-alike pairs drawn from a labelled split: each anchor is
//! paired with a copy of itself (made by a [`super::CopyRecipe`]) and with a
//! hard negative, another product that shares its labels on the chosen
//! attributes (article type and colour: two different black T-shirts).

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::data::{Dataset, Split};

/// An anchor image and its hard negative (dataset image indices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyPair {
    /// The original image; its copy is drawn from it.
    pub anchor: usize,
    /// Another image with the same labels on the grouping attributes.
    pub negative: usize,
    /// The group (its position among the split's distinct label tuples).
    pub group: usize,
}

/// Up to `n` pairs from `split`, anchors drawn without replacement with `seed`, grouped by
/// the labels of `attributes` (indices into the dataset's attributes). Images missing one
/// of those labels, or alone in their group, are never anchors.
pub fn look_alike_pairs(
    dataset: &Dataset,
    split: Split,
    attributes: &[usize],
    n: usize,
    seed: u64,
) -> Vec<CopyPair> {
    let mut groups: BTreeMap<Vec<u32>, Vec<usize>> = BTreeMap::new();
    for i in dataset.split_indices(split) {
        let labels = &dataset.images()[i].labels;
        let key: Option<Vec<u32>> = attributes
            .iter()
            .map(|&a| labels.get(a).copied().flatten())
            .collect();
        if let Some(key) = key {
            groups.entry(key).or_default().push(i);
        }
    }
    let groups: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
    let mut anchors: Vec<(usize, usize)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, members)| members.iter().map(move |&i| (i, g)))
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    anchors.shuffle(&mut rng);
    anchors.truncate(n);
    anchors
        .into_iter()
        .map(|(anchor, group)| {
            let members = &groups[group];
            // Another member: draw among the others.
            let pick = rng.gen_range(0..members.len() - 1);
            let others = members.iter().copied().filter(|&m| m != anchor);
            let negative = others.clone().nth(pick).unwrap_or(anchor);
            CopyPair {
                anchor,
                negative,
                group,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{Attribute, ImageRecord, ProbeLists};
    use std::path::{Path, PathBuf};

    fn dataset() -> Dataset {
        let attributes = vec![
            Attribute {
                name: "type".into(),
                values: vec!["shirt".into(), "shoe".into()],
            },
            Attribute {
                name: "colour".into(),
                values: vec!["black".into(), "white".into()],
            },
        ];
        // (type, colour): 4 black shirts, 1 white shirt, 2 shoes without colour, 3 white shoes.
        let labels = [
            [Some(0), Some(0)],
            [Some(0), Some(0)],
            [Some(0), Some(0)],
            [Some(0), Some(0)],
            [Some(0), Some(1)],
            [Some(1), None],
            [Some(1), None],
            [Some(1), Some(1)],
            [Some(1), Some(1)],
            [Some(1), Some(1)],
        ];
        let images = labels
            .iter()
            .enumerate()
            .map(|(i, l)| ImageRecord {
                path: PathBuf::from(format!("{i}.jpg")),
                split: Split::Test,
                labels: l.to_vec(),
            })
            .collect();
        Dataset::from_parts(
            "",
            attributes,
            images,
            ProbeLists::default(),
            ProbeLists::default(),
            Path::new("t.csv"),
        )
        .unwrap()
    }

    #[test]
    fn negatives_share_the_labels_and_differ_from_the_anchor() {
        let ds = dataset();
        let pairs = look_alike_pairs(&ds, Split::Test, &[0, 1], 100, 0);
        assert_eq!(
            pairs.len(),
            7,
            "4 black shirts and 3 white shoes can be anchors"
        );
        for p in &pairs {
            assert_ne!(p.anchor, p.negative);
            assert_eq!(ds.images()[p.anchor].labels, ds.images()[p.negative].labels);
        }
    }

    #[test]
    fn anchors_are_distinct_and_the_draw_follows_the_seed() {
        let ds = dataset();
        let a = look_alike_pairs(&ds, Split::Test, &[0, 1], 5, 9);
        let b = look_alike_pairs(&ds, Split::Test, &[0, 1], 5, 9);
        assert_eq!(a, b);
        let mut anchors: Vec<usize> = a.iter().map(|p| p.anchor).collect();
        anchors.sort_unstable();
        anchors.dedup();
        assert_eq!(anchors.len(), 5);
    }

    #[test]
    fn another_split_has_no_pairs() {
        assert!(look_alike_pairs(&dataset(), Split::Valid, &[0, 1], 5, 0).is_empty());
    }
}
