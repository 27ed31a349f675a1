//! Ranking metrics on plain slices.

use std::path::Path;

use rayon::prelude::*;

use asen_models::{cosine, l2_normalize, ModelError, Result};

/// Candidate indices by decreasing score.
///
/// Tie rule: candidates with equal scores keep their input order (a stable
/// sort), so the ranking, and any metric on it, is deterministic. NaN scores
/// rank last.
pub fn rank_by_score(scores: &[f32]) -> Vec<usize> {
    let key = |i: usize| {
        let s = scores[i];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    order
}

/// Average precision of one ranked list of relevance flags, over the whole
/// list: the mean of precision@k over the ranks k of the relevant items.
/// 0 when nothing is relevant.
pub fn average_precision(relevant_in_rank_order: impl IntoIterator<Item = bool>) -> f64 {
    let (mut hits, mut sum) = (0usize, 0f64);
    for (k, relevant) in relevant_in_rank_order.into_iter().enumerate() {
        if relevant {
            hits += 1;
            sum += hits as f64 / (k + 1) as f64;
        }
    }
    if hits == 0 {
        0.0
    } else {
        sum / hits as f64
    }
}

/// Per-query AP: each query (row of `queries`, `dim` floats each) ranks all
/// candidates by cosine ([`rank_by_score`] tie rule); a candidate is relevant
/// when its value equals the query's. Rayon-parallel over queries.
pub fn query_average_precisions(
    queries: &[f32],
    query_values: &[u32],
    candidates: &[f32],
    candidate_values: &[u32],
    dim: usize,
) -> Result<Vec<f64>> {
    if dim == 0
        || queries.len() != query_values.len() * dim
        || candidates.len() != candidate_values.len() * dim
    {
        return Err(ModelError::InvalidArgument(format!(
            "embedding matrices do not match dim {dim}: {} query floats for {} queries, {} candidate floats for {} candidates",
            queries.len(),
            query_values.len(),
            candidates.len(),
            candidate_values.len()
        )));
    }
    let normalise = |m: &[f32]| -> Vec<f32> {
        let mut m = m.to_vec();
        m.chunks_mut(dim).for_each(l2_normalize);
        m
    };
    let candidates = normalise(candidates);
    let queries = normalise(queries);
    Ok(queries
        .par_chunks(dim)
        .zip(query_values.par_iter())
        .map(|(q, &value)| {
            let scores: Vec<f32> = candidates
                .chunks(dim)
                .map(|c| q.iter().zip(c).map(|(a, b)| a * b).sum())
                .collect();
            average_precision(
                rank_by_score(&scores)
                    .into_iter()
                    .map(|i| candidate_values[i] == value),
            )
        })
        .collect())
}

/// Read a CSN-style triplet file: one `a b c` line of image ids per triplet,
/// meaning `a` should be closer to `c` than to `b`. Blank lines are skipped.
pub fn load_triplets(path: impl AsRef<Path>) -> Result<Vec<[usize; 3]>> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ids: Vec<usize> = line
            .split_whitespace()
            .map(str::parse)
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| ModelError::Dataset {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("expected three image ids `a b c`, got {line:?}"),
            })?;
        let [a, b, c] = ids[..] else {
            return Err(ModelError::Dataset {
                path: path.to_path_buf(),
                line: i + 1,
                reason: format!("expected three image ids `a b c`, got {} fields", ids.len()),
            });
        };
        out.push([a, b, c]);
    }
    Ok(out)
}

/// Fraction of triplets `[a, b, c]` with `cos(a, c) > cos(a, b)` (strictly:
/// a tie counts as wrong). `embeddings` holds one row of `dim` floats per
/// image id. 0 for no triplets.
pub fn triplet_accuracy(triplets: &[[usize; 3]], embeddings: &[f32], dim: usize) -> Result<f64> {
    if dim == 0 || !embeddings.len().is_multiple_of(dim) {
        return Err(ModelError::InvalidArgument(format!(
            "{} embedding floats is not a whole number of rows of dim {dim}",
            embeddings.len()
        )));
    }
    let n = embeddings.len() / dim;
    let row = |i: usize| -> Result<&[f32]> {
        embeddings.get(i * dim..(i + 1) * dim).ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "triplet names image {i}, but there are {n} embeddings"
            ))
        })
    };
    if triplets.is_empty() {
        return Ok(0.0);
    }
    let mut correct = 0usize;
    for &[a, b, c] in triplets {
        let (a, b, c) = (row(a)?, row(b)?, row(c)?);
        if cosine(a, c) > cosine(a, b) {
            correct += 1;
        }
    }
    Ok(correct as f64 / triplets.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn average_precision_by_hand() {
        // Relevant at ranks 1 and 3: (1/1 + 2/3) / 2.
        close(
            average_precision([true, false, true, false]),
            (1.0 + 2.0 / 3.0) / 2.0,
        );
        // Perfect ranking.
        close(average_precision([true, true, false, false]), 1.0);
        // Reversed ranking: relevant at ranks 3 and 4: (1/3 + 2/4) / 2.
        close(
            average_precision([false, false, true, true]),
            (1.0 / 3.0 + 0.5) / 2.0,
        );
        // Nothing relevant.
        close(average_precision([false, false]), 0.0);
        close(average_precision([]), 0.0);
    }

    #[test]
    fn ties_keep_candidate_order_and_nan_ranks_last() {
        assert_eq!(
            rank_by_score(&[0.5, 0.9, 0.5, f32::NAN, 0.9]),
            vec![1, 4, 0, 2, 3]
        );
    }

    #[test]
    fn query_aps_use_cosine_and_ties() {
        // Candidates: two identical directions, one relevant (value 1) after
        // an irrelevant one in input order, so the tie puts the irrelevant first.
        let candidates = [1.0, 0.0, 2.0, 0.0, 0.0, 1.0];
        let values = [0, 1, 1];
        let q = [3.0, 0.0];
        let aps = query_average_precisions(&q, &[1], &candidates, &values, 2).unwrap();
        // Ranking: c0 (irrelevant, tie first), c1 (relevant), c2 (relevant, cos 0).
        close(aps[0], (1.0 / 2.0 + 2.0 / 3.0) / 2.0);
        // A value no candidate has: AP 0.
        let aps = query_average_precisions(&q, &[7], &candidates, &values, 2).unwrap();
        close(aps[0], 0.0);
        assert!(query_average_precisions(&q, &[1, 2], &candidates, &values, 2).is_err());
    }

    #[test]
    fn triplets_parse_and_score() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("triplets.txt");
        std::fs::write(&p, "0 1 2\n\n0 2 1\n").unwrap();
        let t = load_triplets(&p).unwrap();
        assert_eq!(t, vec![[0, 1, 2], [0, 2, 1]]);
        // Image 2 is close to 0, image 1 far.
        let e = [1.0, 0.0, 0.0, 1.0, 0.9, 0.1];
        close(triplet_accuracy(&t, &e, 2).unwrap(), 0.5);
        close(triplet_accuracy(&t[..1], &e, 2).unwrap(), 1.0);
        assert!(triplet_accuracy(&[[0, 1, 5]], &e, 2).is_err());
        std::fs::write(&p, "0 1\n").unwrap();
        let err = load_triplets(&p).unwrap_err();
        assert!(err.to_string().contains("triplets.txt:1"), "{err}");
        std::fs::write(&p, "0 1 x\n").unwrap();
        assert!(load_triplets(&p).is_err());
    }
}
