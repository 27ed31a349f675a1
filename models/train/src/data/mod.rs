//! Datasets for training and evaluating attribute-specific embeddings.
//!
//! A [`Dataset`] is held in memory: a root folder, the attributes with their
//! value names, every image (path relative to the root, split, one optional
//! label per attribute) and, for the `valid` and `test` splits, the
//! per-attribute query and candidate lists of the retrieval protocol.
//!
//! Three ways in: [`Dataset::load_official`] (the layout of the ASEN paper's
//! data releases), [`Dataset::load_csv`] (one row per image, attribute
//! columns picked by the caller) and [`generate_synthetic`] (drawn garments
//! with known attribute regions, for fast end-to-end tests).

mod csv;
mod official;
mod synthetic;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use asen_models::{ModelError, Result};

pub use self::csv::CsvOptions;
pub use self::synthetic::{generate_synthetic, SyntheticConfig, SyntheticDataset};

/// One of the three dataset splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// Used to sample training triplets.
    Train,
    /// Used to pick a checkpoint.
    Valid,
    /// Used for the reported numbers.
    Test,
}

impl Split {
    /// All splits, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Valid, Split::Test];

    /// The name used in file names and CSV cells (`train`, `valid`, `test`).
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
            Split::Test => "test",
        }
    }

    /// Parse a split name; `val` and `validation` are accepted for `valid`.
    pub fn parse(name: &str) -> Option<Split> {
        match name.trim().to_ascii_lowercase().as_str() {
            "train" => Some(Split::Train),
            "valid" | "val" | "validation" => Some(Split::Valid),
            "test" => Some(Split::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An attribute and the names of its values (value id = position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// Attribute name, e.g. `collar`.
    pub name: String,
    /// Value names, e.g. `["round", "v_neck"]`.
    pub values: Vec<String>,
}

/// One image of a dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Path relative to the dataset root.
    pub path: PathBuf,
    /// The split the image belongs to.
    pub split: Split,
    /// One label per attribute (same order as [`Dataset::attributes`]);
    /// `None` is unknown and never matches anything.
    pub labels: Vec<Option<u32>>,
}

/// An entry of a query or candidate list: image `image` labelled `value` for
/// attribute `attribute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe {
    /// Index into [`Dataset::images`].
    pub image: usize,
    /// Attribute index.
    pub attribute: usize,
    /// Value id of that attribute.
    pub value: u32,
}

/// Query and candidate lists of one evaluation split.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeLists {
    /// Queries: each ranks every candidate of its attribute.
    pub queries: Vec<Probe>,
    /// Candidates: the retrieval gallery.
    pub candidates: Vec<Probe>,
}

impl ProbeLists {
    /// For each attribute `0..num_attributes`, the distinct images (sorted)
    /// that appear as a query or a candidate of it: the (image, attribute)
    /// embeddings an evaluation needs, so a model can compute them in
    /// batches beforehand.
    pub fn images_by_attribute(&self, num_attributes: usize) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); num_attributes];
        for p in self.queries.iter().chain(&self.candidates) {
            if let Some(list) = out.get_mut(p.attribute) {
                list.push(p.image);
            }
        }
        for list in &mut out {
            list.sort_unstable();
            list.dedup();
        }
        out
    }
}

/// An in-memory dataset; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    root: PathBuf,
    attributes: Vec<Attribute>,
    images: Vec<ImageRecord>,
    valid: ProbeLists,
    test: ProbeLists,
}

impl Dataset {
    /// Assemble a dataset from its parts, checking that every label, probe
    /// and image index is in range and that there is at least one image.
    /// A split may be empty: each command checks the splits it uses
    /// (`asen train` needs train and valid, `asen eval` only the one it
    /// evaluates).
    /// `source` names the origin in error messages.
    pub fn from_parts(
        root: impl Into<PathBuf>,
        attributes: Vec<Attribute>,
        images: Vec<ImageRecord>,
        valid: ProbeLists,
        test: ProbeLists,
        source: &Path,
    ) -> Result<Dataset> {
        let bad = |reason: String| ModelError::Dataset {
            path: source.to_path_buf(),
            line: 0,
            reason,
        };
        if attributes.is_empty() {
            return Err(bad("no attributes".into()));
        }
        for (i, image) in images.iter().enumerate() {
            if image.labels.len() != attributes.len() {
                return Err(bad(format!(
                    "image {i} ({}) has {} labels for {} attributes",
                    image.path.display(),
                    image.labels.len(),
                    attributes.len()
                )));
            }
            for (a, label) in image.labels.iter().enumerate() {
                if let Some(v) = label {
                    if *v as usize >= attributes[a].values.len() {
                        return Err(bad(format!(
                            "image {} has value {v} for attribute {:?}, which has {} values",
                            image.path.display(),
                            attributes[a].name,
                            attributes[a].values.len()
                        )));
                    }
                }
            }
        }
        if images.is_empty() {
            return Err(bad("no images".into()));
        }
        for (split, lists) in [(Split::Valid, &valid), (Split::Test, &test)] {
            for probe in lists.queries.iter().chain(&lists.candidates) {
                let ok = images.get(probe.image).is_some_and(|im| {
                    im.split == split
                        && probe.attribute < attributes.len()
                        && im.labels[probe.attribute] == Some(probe.value)
                });
                if !ok {
                    return Err(bad(format!(
                        "{split} probe {probe:?} does not name a {split} image with that label"
                    )));
                }
            }
        }
        Ok(Dataset {
            root: root.into(),
            attributes,
            images,
            valid,
            test,
        })
    }

    /// The folder image paths are relative to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The attributes, in id order.
    pub fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }

    /// Index of the attribute called `name`.
    pub fn attribute_index(&self, name: &str) -> Result<usize> {
        self.attributes
            .iter()
            .position(|a| a.name == name)
            .ok_or_else(|| ModelError::UnknownAttribute {
                name: name.to_string(),
                known: self.attributes.iter().map(|a| a.name.clone()).collect(),
            })
    }

    /// Every image, in id order.
    pub fn images(&self) -> &[ImageRecord] {
        &self.images
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len()
    }

    /// Whether there are no images (never true for a loaded dataset).
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Absolute (root-joined) path of image `index`, if it exists.
    pub fn image_path(&self, index: usize) -> Option<PathBuf> {
        self.images.get(index).map(|im| self.root.join(&im.path))
    }

    /// Indices of the images of `split`, in id order.
    pub fn split_indices(&self, split: Split) -> Vec<usize> {
        (0..self.images.len())
            .filter(|&i| self.images[i].split == split)
            .collect()
    }

    /// Query and candidate lists of `split` (empty for `train`).
    pub fn probes(&self, split: Split) -> &ProbeLists {
        static EMPTY: ProbeLists = ProbeLists {
            queries: Vec::new(),
            candidates: Vec::new(),
        };
        match split {
            Split::Train => &EMPTY,
            Split::Valid => &self.valid,
            Split::Test => &self.test,
        }
    }

    /// A stable 64-bit FNV-1a fingerprint (16 hex digits) of the image paths in order: what
    /// a feature cache depends on. Labels, attributes and splits do not change the features,
    /// so a model trained on other labels of the same images (`asen train --extend`)
    /// reuses the cache.
    pub fn images_fingerprint(&self) -> String {
        let mut h = Fnv::new();
        for im in &self.images {
            h.write(im.path.to_string_lossy().as_bytes());
            h.write(&[2]);
        }
        format!("{:016x}", h.0)
    }

    /// A stable 64-bit FNV-1a fingerprint (16 hex digits) of the image list,
    /// splits and attribute schema: changes when the data changes, so caches
    /// keyed by it are rebuilt.
    pub fn fingerprint(&self) -> String {
        let mut h = Fnv::new();
        for a in &self.attributes {
            h.write(a.name.as_bytes());
            h.write(&[0]);
            for v in &a.values {
                h.write(v.as_bytes());
                h.write(&[1]);
            }
        }
        for im in &self.images {
            h.write(im.path.to_string_lossy().as_bytes());
            h.write(&[2, im.split as u8]);
        }
        format!("{:016x}", h.0)
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Draw the query and candidate lists of `split`, per attribute 1 query for
/// every 4 candidates, deterministically from `seed`. Images whose value is
/// unknown are in neither list. Each attribute and split draws from its own
/// seeded stream, so adding an attribute does not reshuffle the others.
pub(crate) fn draw_probes(
    images: &[ImageRecord],
    num_attributes: usize,
    split: Split,
    seed: u64,
) -> ProbeLists {
    let mut lists = ProbeLists::default();
    for attribute in 0..num_attributes {
        let mut labelled: Vec<Probe> = images
            .iter()
            .enumerate()
            .filter(|(_, im)| im.split == split)
            .filter_map(|(image, im)| {
                im.labels[attribute].map(|value| Probe {
                    image,
                    attribute,
                    value,
                })
            })
            .collect();
        let stream =
            seed ^ (attribute as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((split as u64) << 56);
        let mut rng = ChaCha8Rng::seed_from_u64(stream);
        labelled.shuffle(&mut rng);
        let n_queries = (labelled.len() + 2) / 5;
        let (q, c) = labelled.split_at(n_queries);
        let mut q = q.to_vec();
        let mut c = c.to_vec();
        q.sort_by_key(|p| p.image);
        c.sort_by_key(|p| p.image);
        lists.queries.extend(q);
        lists.candidates.extend(c);
    }
    lists
}

/// Turn string labels into value ids sorted by frequency (most frequent
/// first, then by name) and assemble a dataset with drawn probe lists.
/// `rows` are (path, split, one optional value name per attribute).
pub(crate) fn build_from_named(
    root: PathBuf,
    attribute_names: &[String],
    rows: Vec<(PathBuf, Split, Vec<Option<String>>)>,
    seed: u64,
    source: &Path,
) -> Result<Dataset> {
    if rows.is_empty() {
        return Err(ModelError::Dataset {
            path: source.to_path_buf(),
            line: 0,
            reason: "no labelled rows".into(),
        });
    }
    let mut attributes = Vec::with_capacity(attribute_names.len());
    let mut lookups: Vec<HashMap<String, u32>> = Vec::with_capacity(attribute_names.len());
    for (a, name) in attribute_names.iter().enumerate() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, _, labels) in &rows {
            if let Some(v) = &labels[a] {
                *counts.entry(v.as_str()).or_default() += 1;
            }
        }
        let mut values: Vec<(&str, usize)> = counts.into_iter().collect();
        values.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
        let values: Vec<String> = values.into_iter().map(|(v, _)| v.to_string()).collect();
        if values.is_empty() {
            return Err(ModelError::Dataset {
                path: source.to_path_buf(),
                line: 0,
                reason: format!("attribute {name:?} has no known value in any row"),
            });
        }
        lookups.push(
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (v.clone(), i as u32))
                .collect(),
        );
        attributes.push(Attribute {
            name: name.clone(),
            values,
        });
    }
    let images: Vec<ImageRecord> = rows
        .into_iter()
        .map(|(path, split, labels)| ImageRecord {
            path,
            split,
            labels: labels
                .iter()
                .enumerate()
                .map(|(a, v)| v.as_ref().map(|v| lookups[a][v]))
                .collect(),
        })
        .collect();
    let valid = draw_probes(&images, attributes.len(), Split::Valid, seed);
    let test = draw_probes(&images, attributes.len(), Split::Test, seed);
    Dataset::from_parts(root, attributes, images, valid, test, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize) -> Vec<(PathBuf, Split, Vec<Option<String>>)> {
        (0..n)
            .map(|i| {
                let split = Split::ALL[i % 3];
                let colour = match i % 4 {
                    0 => None,
                    1 | 2 => Some("red".to_string()),
                    _ => Some("blue".to_string()),
                };
                (PathBuf::from(format!("{i}.png")), split, vec![colour])
            })
            .collect()
    }

    #[test]
    fn the_images_fingerprint_ignores_labels_and_the_full_one_does_not() {
        let build = |name: &str| {
            build_from_named(
                PathBuf::from("/r"),
                &[name.into()],
                rows(30),
                7,
                Path::new("x.csv"),
            )
            .unwrap()
        };
        let (a, b) = (build("colour"), build("pattern"));
        assert_eq!(a.images_fingerprint(), b.images_fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn values_sorted_by_frequency_and_probes_split_one_to_four() {
        let ds = build_from_named(
            PathBuf::from("/r"),
            &["colour".into()],
            rows(300),
            7,
            Path::new("x.csv"),
        )
        .unwrap();
        assert_eq!(ds.attributes()[0].values, vec!["red", "blue"]);
        let valid = ds.probes(Split::Valid);
        let known = ds
            .split_indices(Split::Valid)
            .into_iter()
            .filter(|&i| ds.images()[i].labels[0].is_some())
            .count();
        assert_eq!(valid.queries.len() + valid.candidates.len(), known);
        assert_eq!(valid.queries.len(), (known + 2) / 5);
        for p in valid.queries.iter().chain(&valid.candidates) {
            assert!(ds.images()[p.image].labels[0].is_some());
            assert_eq!(ds.images()[p.image].split, Split::Valid);
        }
        // Same seed, same draw; another seed, another draw.
        let again = build_from_named(
            PathBuf::from("/r"),
            &["colour".into()],
            rows(300),
            7,
            Path::new("x.csv"),
        )
        .unwrap();
        assert_eq!(ds, again);
        let other = build_from_named(
            PathBuf::from("/r"),
            &["colour".into()],
            rows(300),
            8,
            Path::new("x.csv"),
        )
        .unwrap();
        assert_ne!(ds.probes(Split::Valid), other.probes(Split::Valid));
        let needed = valid.images_by_attribute(1);
        assert_eq!(needed[0].len(), known);
        assert!(needed[0].windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn a_test_only_dataset_loads_with_test_probes() {
        let rows: Vec<_> = rows(30)
            .into_iter()
            .map(|(path, _, labels)| (path, Split::Test, labels))
            .collect();
        let ds = build_from_named(
            PathBuf::new(),
            &["colour".into()],
            rows,
            1,
            Path::new("x.csv"),
        )
        .unwrap();
        assert!(ds.split_indices(Split::Train).is_empty());
        assert!(ds.probes(Split::Valid).queries.is_empty());
        assert!(!ds.probes(Split::Test).queries.is_empty());
    }

    #[test]
    fn a_dataset_without_rows_is_an_error() {
        let err = build_from_named(
            PathBuf::new(),
            &["colour".into()],
            Vec::new(),
            1,
            Path::new("x.csv"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no labelled rows"), "{err}");
    }

    #[test]
    fn unknown_attribute_names_known_ones() {
        let ds = build_from_named(
            PathBuf::new(),
            &["colour".into()],
            rows(30),
            1,
            Path::new("x.csv"),
        )
        .unwrap();
        assert_eq!(ds.attribute_index("colour").unwrap(), 0);
        let err = ds.attribute_index("collar").unwrap_err();
        assert!(err.to_string().contains("colour"));
    }
}
