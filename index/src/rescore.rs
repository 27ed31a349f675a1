//! Exact scoring helpers: vector checks and normalisation, group-by and the average-vector
//! recommendation (the dot product itself is in `distance.rs`).

use std::collections::HashMap;

use crate::error::{IndexError, Result};
use crate::types::Hit;

/// Checks a vector's length and components and returns it scaled to unit length.
pub(crate) fn normalized(attribute: &str, v: &[f32], dimension: usize) -> Result<Vec<f32>> {
    if v.len() != dimension {
        return Err(IndexError::DimensionMismatch {
            attribute: attribute.to_string(),
            expected: dimension,
            got: v.len(),
        });
    }
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(IndexError::NonFiniteVector {
            attribute: attribute.to_string(),
            index,
        });
    }
    let norm = sum_of_squares(v).sqrt();
    if norm == 0.0 || !norm.is_finite() {
        return Err(IndexError::ZeroVector {
            attribute: attribute.to_string(),
        });
    }
    Ok(v.iter().map(|x| (*x as f64 / norm) as f32).collect())
}

/// The sum of squares in `f64` (no overflow for any finite `f32`), over eight independent
/// partial sums so the loop vectorises instead of waiting on one running total.
fn sum_of_squares(v: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let chunks = v.chunks_exact(8);
    let tail: f64 = chunks
        .remainder()
        .iter()
        .map(|&x| x as f64 * x as f64)
        .sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x as f64 * x as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

/// The average-vector recommendation query for one attribute: `2 * mean(pos) - mean(neg)`,
/// or `mean(pos)` without negatives, normalised. `None` when it is the zero vector.
pub(crate) fn average_vector(positive: &[&[f32]], negative: &[&[f32]]) -> Option<Vec<f32>> {
    let dim = positive.first()?.len();
    let mean = |vs: &[&[f32]]| -> Vec<f64> {
        let mut m = vec![0f64; dim];
        for v in vs {
            for (a, x) in m.iter_mut().zip(v.iter()) {
                *a += *x as f64;
            }
        }
        m.iter_mut().for_each(|a| *a /= vs.len() as f64);
        m
    };
    let pos = mean(positive);
    let q: Vec<f64> = if negative.is_empty() {
        pos
    } else {
        let neg = mean(negative);
        pos.iter().zip(&neg).map(|(p, n)| 2.0 * p - n).collect()
    };
    let norm = q.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm < 1e-12 {
        return None;
    }
    Some(q.iter().map(|x| (x / norm) as f32).collect())
}

/// Groups hits (already sorted best first) by a key, keeping at most `group_size` per group and
/// `groups` groups, in order of each group's best hit.
pub(crate) fn group_hits(
    hits: Vec<(serde_json::Value, Hit)>,
    groups: usize,
    group_size: usize,
) -> Vec<(serde_json::Value, Vec<Hit>)> {
    let mut order: Vec<(serde_json::Value, Vec<Hit>)> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for (key, hit) in hits {
        let name = key.to_string();
        match slot.get(&name) {
            Some(&i) if order[i].1.len() < group_size => order[i].1.push(hit),
            Some(_) => {}
            None if order.len() < groups => {
                slot.insert(name, order.len());
                order.push((key, vec![hit]));
            }
            None => {}
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ItemId;
    use std::collections::BTreeMap;

    #[test]
    fn normalise_checks_input() {
        let v = normalized("a", &[3.0, 4.0], 2).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(matches!(
            normalized("a", &[1.0], 2),
            Err(IndexError::DimensionMismatch {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            normalized("a", &[1.0, f32::NAN], 2),
            Err(IndexError::NonFiniteVector { index: 1, .. })
        ));
        assert!(matches!(
            normalized("a", &[f32::INFINITY, 0.0], 2),
            Err(IndexError::NonFiniteVector { index: 0, .. })
        ));
        assert!(matches!(
            normalized("a", &[0.0, 0.0], 2),
            Err(IndexError::ZeroVector { .. })
        ));
        // huge but finite components must not overflow the norm
        assert!(normalized("a", &[3e38, 3e38], 2).is_ok());
    }

    #[test]
    fn average_vector_strategy() {
        let p1 = [1.0f32, 0.0];
        let p2 = [0.0f32, 1.0];
        let q = average_vector(&[&p1, &p2], &[]).unwrap();
        assert!((q[0] - q[1]).abs() < 1e-6);
        let q = average_vector(&[&p1], &[&p2]).unwrap();
        assert!(q[0] > 0.0 && q[1] < 0.0);
        assert!(average_vector(&[&p1], &[&[2.0, 0.0]]).is_none());
    }

    #[test]
    fn grouping_keeps_order_and_sizes() {
        let hit = |id: &str, s: f32| Hit {
            id: ItemId::new(id).unwrap(),
            score: s,
            attribute_scores: BTreeMap::new(),
            payload: None,
        };
        let hits = vec![
            ("a".into(), hit("1", 0.9)),
            ("b".into(), hit("2", 0.8)),
            ("a".into(), hit("3", 0.7)),
            ("a".into(), hit("4", 0.6)),
            ("c".into(), hit("5", 0.5)),
        ];
        let g = group_hits(hits, 2, 2);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, serde_json::Value::from("a"));
        assert_eq!(g[0].1.len(), 2);
        assert_eq!(g[1].1[0].id.as_str(), "2");
    }
}
