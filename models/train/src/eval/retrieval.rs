//! The attribute-specific retrieval protocol of the ASEN paper.

use std::fmt;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::query_average_precisions;
use crate::data::{Dataset, Probe, Split};
use asen_models::{ModelError, Result};

/// The score of one attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeScore {
    /// Attribute name.
    pub attribute: String,
    /// Number of queries of this attribute.
    pub queries: usize,
    /// Number of candidates ranked by each query.
    pub candidates: usize,
    /// Mean average precision over the queries, 0 to 1 (0 without queries).
    pub map: f64,
}

/// Per-attribute and overall mAP of one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetrievalReport {
    /// The split evaluated (`valid` or `test`).
    pub split: String,
    /// One row per attribute, in attribute order.
    pub attributes: Vec<AttributeScore>,
    /// Total number of queries.
    pub queries: usize,
    /// Overall mAP, 0 to 1: per-attribute mAP weighted by query count (the
    /// mean AP over all queries).
    pub map: f64,
}

impl fmt::Display for RetrievalReport {
    /// A table with mAP in percent, e.g.
    /// `collar  120  480  65.32`, then an `overall` row.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self
            .attributes
            .iter()
            .map(|a| a.attribute.len())
            .chain([9, "overall".len()])
            .max()
            .unwrap_or(9);
        writeln!(
            f,
            "{:<width$}  {:>8}  {:>10}  {:>7}",
            "attribute", "queries", "candidates", "mAP %"
        )?;
        for a in &self.attributes {
            writeln!(
                f,
                "{:<width$}  {:>8}  {:>10}  {:>7.2}",
                a.attribute,
                a.queries,
                a.candidates,
                a.map * 100.0
            )?;
        }
        write!(
            f,
            "{:<width$}  {:>8}  {:>10}  {:>7.2}",
            format!("overall ({})", self.split),
            self.queries,
            "",
            self.map * 100.0
        )
    }
}

/// Evaluate `split` of `dataset`: per attribute, each query ranks all
/// candidates of that attribute by cosine of their embeddings for that
/// attribute; relevant = same value; AP over the whole list (0 without a
/// relevant candidate; ties keep candidate-list order).
///
/// `embed(image, attribute)` returns the embedding of an image under an
/// attribute; it is called once per probe, in parallel (rayon). Every
/// embedding must have the same length. With a model, embed the pairs listed
/// by [`crate::ProbeLists::images_by_attribute`] in batches first and let
/// `embed` look them up.
pub fn evaluate_retrieval<F>(dataset: &Dataset, split: Split, embed: F) -> Result<RetrievalReport>
where
    F: Fn(usize, usize) -> Result<Vec<f32>> + Sync,
{
    let lists = dataset.probes(split);
    if lists.queries.is_empty() {
        return Err(ModelError::InvalidArgument(format!(
            "the {split} split has no retrieval queries"
        )));
    }
    let mut rows = Vec::with_capacity(dataset.attributes().len());
    let mut dim = None;
    let mut total_ap = 0f64;
    for (a, attribute) in dataset.attributes().iter().enumerate() {
        let select = |probes: &[Probe]| -> Vec<Probe> {
            probes
                .iter()
                .filter(|p| p.attribute == a)
                .copied()
                .collect()
        };
        let queries = select(&lists.queries);
        let candidates = select(&lists.candidates);
        let gather = |probes: &[Probe]| -> Result<Vec<Vec<f32>>> {
            probes.par_iter().map(|p| embed(p.image, a)).collect()
        };
        let q = gather(&queries)?;
        let c = gather(&candidates)?;
        for (probe, e) in queries.iter().zip(&q).chain(candidates.iter().zip(&c)) {
            let d = *dim.get_or_insert(e.len());
            if e.len() != d || d == 0 {
                return Err(ModelError::InvalidArgument(format!(
                    "embedding of image {} for attribute {:?} has {} values, expected {d}",
                    probe.image,
                    attribute.name,
                    e.len()
                )));
            }
        }
        let aps = match dim {
            Some(d) if !queries.is_empty() => query_average_precisions(
                &q.concat(),
                &queries.iter().map(|p| p.value).collect::<Vec<_>>(),
                &c.concat(),
                &candidates.iter().map(|p| p.value).collect::<Vec<_>>(),
                d,
            )?,
            _ => Vec::new(),
        };
        let sum: f64 = aps.iter().sum();
        total_ap += sum;
        rows.push(AttributeScore {
            attribute: attribute.name.clone(),
            queries: queries.len(),
            candidates: candidates.len(),
            map: if aps.is_empty() {
                0.0
            } else {
                sum / aps.len() as f64
            },
        });
    }
    Ok(RetrievalReport {
        split: split.to_string(),
        queries: lists.queries.len(),
        map: total_ap / lists.queries.len() as f64,
        attributes: rows,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::data::{Attribute, ImageRecord, ProbeLists};

    /// Two attributes; `colour` has 1 query, `shape` 3 queries.
    fn dataset() -> Dataset {
        let attributes = vec![
            Attribute {
                name: "colour".into(),
                values: vec!["red".into(), "blue".into()],
            },
            Attribute {
                name: "shape".into(),
                values: vec!["round".into(), "square".into()],
            },
        ];
        let labels = [(0, 0), (0, 0), (1, 1), (1, 0), (0, 1), (1, 1)];
        let mut images = vec![ImageRecord {
            path: "t.png".into(),
            split: Split::Train,
            labels: vec![Some(0), Some(0)],
        }];
        for (i, (c, s)) in labels.iter().enumerate() {
            images.push(ImageRecord {
                path: format!("{i}.png").into(),
                split: Split::Test,
                labels: vec![Some(*c), Some(*s)],
            });
        }
        let probe = |image: usize, attribute: usize| Probe {
            image,
            attribute,
            value: images[image].labels[attribute].unwrap(),
        };
        let test = ProbeLists {
            queries: vec![probe(1, 0), probe(1, 1), probe(2, 1), probe(3, 1)],
            candidates: vec![
                probe(4, 0),
                probe(5, 0),
                probe(6, 0),
                probe(4, 1),
                probe(5, 1),
                probe(6, 1),
            ],
        };
        Dataset::from_parts(
            "",
            attributes,
            images,
            ProbeLists::default(),
            test,
            Path::new("t"),
        )
        .unwrap()
    }

    #[test]
    fn perfect_reversed_and_weighted() {
        let ds = dataset();
        // Perfect: the embedding is the one-hot value of the attribute.
        let oracle = |i: usize, a: usize| {
            let v = ds.images()[i].labels[a].unwrap() as usize;
            let mut e = vec![0.0; 2];
            e[v] = 1.0;
            Ok(e)
        };
        let r = evaluate_retrieval(&ds, Split::Test, oracle).unwrap();
        assert_eq!(r.queries, 4);
        assert!((r.map - 1.0).abs() < 1e-12);
        assert_eq!(r.attributes[1].queries, 3);
        assert_eq!(r.attributes[1].candidates, 3);

        // Reversed for colour only: the query points away from its own value.
        let reversed = |i: usize, a: usize| {
            let v = ds.images()[i].labels[a].unwrap() as usize;
            let mut e = vec![0.0; 2];
            let flip = a == 0 && i == 1;
            e[if flip { 1 - v } else { v }] = 1.0;
            Ok(e)
        };
        let r = evaluate_retrieval(&ds, Split::Test, reversed).unwrap();
        // Colour query 1 (red) embeds as blue; candidates 4 blue, 5 red,
        // 6 blue score 1, 0, 1: ranking 4, 6, 5 puts the only relevant last.
        assert!((r.attributes[0].map - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.attributes[1].map - 1.0).abs() < 1e-12);
        // Weighted by queries: (1/3 * 1 + 1 * 3) / 4, not the mean of rows.
        assert!((r.map - (1.0 / 3.0 + 3.0) / 4.0).abs() < 1e-12);
        let table = r.to_string();
        assert!(
            table.contains("colour") && table.contains("33.33"),
            "{table}"
        );
        assert!(
            table.contains("overall (test)") && table.contains("83.33"),
            "{table}"
        );
        let json = serde_json::to_string(&r).unwrap();
        let back: RetrievalReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn constant_embeddings_rank_by_candidate_order() {
        let ds = dataset();
        let r = evaluate_retrieval(&ds, Split::Test, |_, _| Ok(vec![1.0, 1.0])).unwrap();
        // Every score ties, so rankings follow the candidate order 4, 5, 6.
        // Shape candidates: round, square, square. Queries 1 and 2 (round):
        // AP 1; query 3 (square): (1/2 + 2/3) / 2. Colour candidates: blue,
        // red, blue; query 1 (red): AP 1/2.
        let shape = (1.0 + 1.0 + (0.5 + 2.0 / 3.0) / 2.0) / 3.0;
        assert!((r.attributes[1].map - shape).abs() < 1e-12);
        assert!((r.attributes[0].map - 0.5).abs() < 1e-12);
    }

    #[test]
    fn errors_on_bad_embeddings_and_empty_split() {
        let ds = dataset();
        let err =
            evaluate_retrieval(&ds, Split::Test, |i, _| Ok(vec![1.0; 1 + i % 2])).unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        assert!(evaluate_retrieval(&ds, Split::Valid, |_, _| Ok(vec![1.0])).is_err());
        let err = evaluate_retrieval(&ds, Split::Test, |_, _| {
            Err(ModelError::InvalidArgument("boom".into()))
        })
        .unwrap_err();
        assert!(err.to_string().contains("boom"));
    }
}
