//! Fitting the signature's projection on pooled features of anchors and their
//! copies, and choosing its threshold.
//!
//! The loss is InfoNCE in both directions: in a batch, an anchor's signature
//! must be nearer its own copy than every other copy. Batches are filled group
//! by group (same article type and colour), so most of the other copies in a
//! batch are look-alikes: the hard negatives the verdict must reject.

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{loss::cross_entropy, AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
pub(crate) use rand_distr_free::standard_normal;

use asen_models::{CopySignature, ModelError, Result};

/// Settings of [`fit_projection`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitConfig {
    /// Components of a signature.
    pub dim: usize,
    /// Passes over the pairs.
    pub epochs: usize,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Softmax temperature of the InfoNCE logits.
    pub temperature: f64,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of the initial projection and of the batch order.
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            dim: 128,
            epochs: 60,
            batch_size: 256,
            temperature: 0.05,
            learning_rate: 1e-3,
            seed: 0,
        }
    }
}

/// A signature fitted on pooled anchors `[N, C]` and copies `[N, C]` (row i is a copy of
/// anchor i), `groups[i]` naming the look-alike group of pair i. The mean is the anchors'.
pub fn fit_projection(
    anchors: &Tensor,
    copies: &Tensor,
    groups: &[usize],
    cfg: &FitConfig,
) -> Result<CopySignature> {
    let (n, c) = anchors.dims2()?;
    if copies.dims() != [n, c] || groups.len() != n {
        return Err(ModelError::InvalidArgument(format!(
            "copy signature fit: {n} anchors of {c} channels, copies {:?}, {} groups",
            copies.dims(),
            groups.len()
        )));
    }
    if n < 2 || cfg.dim == 0 || cfg.batch_size < 2 {
        return Err(ModelError::InvalidArgument(
            "copy signature fit needs at least 2 pairs, a dim and batches of 2 or more".into(),
        ));
    }
    let device = anchors.device().clone();
    let mean = anchors.mean(0)?;
    let a = anchors.broadcast_sub(&mean)?;
    let b = copies.broadcast_sub(&mean)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let scale = 1.0 / (c as f32).sqrt();
    let init: Vec<f32> = (0..c * cfg.dim)
        .map(|_| standard_normal(&mut rng) * scale)
        .collect();
    let w = Var::from_tensor(&Tensor::from_vec(init, (c, cfg.dim), &device)?)?;
    let mut opt = AdamW::new(
        vec![w.clone()],
        ParamsAdamW {
            lr: cfg.learning_rate,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    for _ in 0..cfg.epochs {
        for batch in grouped_batches(groups, cfg.batch_size, &mut rng) {
            if batch.len() < 2 {
                continue;
            }
            let idx = Tensor::from_vec(
                batch.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                batch.len(),
                &device,
            )?;
            let za = normalise(&a.index_select(&idx, 0)?.matmul(w.as_tensor())?)?;
            let zb = normalise(&b.index_select(&idx, 0)?.matmul(w.as_tensor())?)?;
            let logits = (za.matmul(&zb.t()?)? / cfg.temperature)?;
            let target = Tensor::arange(0u32, batch.len() as u32, &device)?;
            let loss = ((cross_entropy(&logits, &target)?
                + cross_entropy(&logits.t()?, &target)?)?
                / 2.0)?;
            opt.backward_step(&loss)?;
        }
    }
    CopySignature::new(mean, w.as_tensor().to_dtype(DType::F32)?)
}

fn normalise(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// One epoch's batches: the groups in a random order, members shuffled within each, cut
/// into consecutive batches (so look-alikes share batches).
fn grouped_batches(groups: &[usize], batch_size: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut by_group: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    let mut order: Vec<Vec<usize>> = by_group.into_values().collect();
    order.shuffle(rng);
    let mut flat = Vec::with_capacity(groups.len());
    for mut members in order {
        members.shuffle(rng);
        flat.extend(members);
    }
    flat.chunks(batch_size).map(<[usize]>::to_vec).collect()
}

/// Area under the ROC curve of scores `positives` against `negatives` (ties count half).
pub fn roc_auc(positives: &[f32], negatives: &[f32]) -> f64 {
    if positives.is_empty() || negatives.is_empty() {
        return f64::NAN;
    }
    let mut neg = negatives.to_vec();
    neg.sort_by(f32::total_cmp);
    let mut wins = 0.0;
    for &p in positives {
        let below = neg.partition_point(|&x| x < p);
        let ties = neg[below..].partition_point(|&x| x <= p);
        wins += below as f64 + ties as f64 / 2.0;
    }
    wins / (positives.len() * negatives.len()) as f64
}

/// The threshold with the largest share of copies flagged minus look-alikes flagged
/// (Youden's J), halfway between the two scores it separates.
pub fn youden_threshold(copies: &[f32], look_alikes: &[f32]) -> Option<f32> {
    if copies.is_empty() || look_alikes.is_empty() {
        return None;
    }
    let mut all: Vec<(f32, bool)> = copies
        .iter()
        .map(|&s| (s, true))
        .chain(look_alikes.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|x, y| y.0.total_cmp(&x.0));
    let (np, nn) = (copies.len() as f64, look_alikes.len() as f64);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut best = (f64::MIN, all[0].0);
    for (k, &(score, is_copy)) in all.iter().enumerate() {
        if is_copy {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // Cut only between distinct scores.
        let next = all.get(k + 1).map(|x| x.0);
        if next == Some(score) {
            continue;
        }
        let j = tp / np - fp / nn;
        if j > best.0 {
            best = (j, next.map_or(score, |n| (score + n) / 2.0));
        }
    }
    Some(best.1)
}

/// Share of `scores` at or above `threshold`.
pub fn flagged_share(scores: &[f32], threshold: f32) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s >= threshold).count() as f64 / scores.len() as f64
}

/// A standard normal draw without rand_distr (Box-Muller).
mod rand_distr_free {
    use rand::Rng;

    pub fn standard_normal(rng: &mut impl Rng) -> f32 {
        let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
        let u2: f32 = rng.gen();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn auc_counts_wins_and_half_ties() {
        assert_eq!(roc_auc(&[0.9, 0.8], &[0.1, 0.2]), 1.0);
        assert_eq!(roc_auc(&[0.1], &[0.9]), 0.0);
        assert_eq!(roc_auc(&[0.5], &[0.5]), 0.5);
        assert!((roc_auc(&[0.5, 0.9], &[0.6, 0.1]) - 0.75).abs() < 1e-12);
    }

    #[test]
    fn youden_separates_separable_scores() {
        let t = youden_threshold(&[0.9, 0.95, 0.8], &[0.5, 0.6, 0.7]).unwrap();
        assert!(t > 0.7 && t < 0.8, "{t}");
        assert_eq!(flagged_share(&[0.9, 0.95, 0.8], t), 1.0);
        assert_eq!(flagged_share(&[0.5, 0.6, 0.7], t), 0.0);
    }

    #[test]
    fn batches_cover_every_pair_once_and_keep_groups_together() {
        let groups = [0, 1, 0, 2, 1, 0, 2, 2, 1, 0];
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let batches = grouped_batches(&groups, 4, &mut rng);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let flat: Vec<usize> = batches.into_iter().flatten().map(|i| groups[i]).collect();
        let changes = flat.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 2, "three groups, each contiguous: {flat:?}");
    }

    #[test]
    fn a_fit_pulls_copies_together_and_pushes_look_alikes_apart() {
        // Pairs differ from each other in channels 0..4 and share noise in 4..8: the fit must
        // learn to read the first four.
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 64;
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..n {
            let id: Vec<f32> = (0..4).map(|_| standard_normal(&mut rng)).collect();
            for v in [&mut a, &mut b] {
                v.extend(id.iter().map(|x| x + 0.05 * standard_normal(&mut rng)));
                v.extend((0..4).map(|_| 3.0 * standard_normal(&mut rng)));
            }
        }
        let a = Tensor::from_vec(a, (n, 8), &dev).unwrap();
        let b = Tensor::from_vec(b, (n, 8), &dev).unwrap();
        let groups: Vec<usize> = (0..n).map(|i| i % 4).collect();
        let cfg = FitConfig {
            dim: 4,
            epochs: 80,
            batch_size: 32,
            temperature: 0.1,
            learning_rate: 1e-2,
            seed: 0,
        };
        let sig = fit_projection(&a, &b, &groups, &cfg).unwrap();
        let za = sig.project(&a).unwrap();
        let zb = sig.project(&b).unwrap();
        let sim = za
            .matmul(&zb.t().unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let pos: Vec<f32> = (0..n).map(|i| sim[i][i]).collect();
        let neg: Vec<f32> = (0..n).map(|i| sim[i][(i + 1) % n]).collect();
        assert!(roc_auc(&pos, &neg) > 0.95, "auc {}", roc_auc(&pos, &neg));
    }
}
