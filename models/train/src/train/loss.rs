//! The cosine margin ranking loss of ASEN.

use candle_core::{DType, Tensor, D};

use asen_models::{ModelError, Result};

/// The margin used in the paper.
pub const DEFAULT_MARGIN: f64 = 0.2;

/// `mean(max(0, margin - (cos(a, p) - cos(a, n))))` over a batch.
///
/// `anchor`, `positive`, `negative`: `(B, D)` L2-normalised embeddings (see
/// [`asen_models::l2_normalize_rows`]), so the cosine is the row-wise dot product. Returns a
/// scalar tensor; differentiable with respect to all three.
pub fn triplet_ranking_loss(
    anchor: &Tensor,
    positive: &Tensor,
    negative: &Tensor,
    margin: f64,
) -> Result<Tensor> {
    let shape = anchor.dims();
    if shape.len() != 2 || positive.dims() != shape || negative.dims() != shape {
        return Err(ModelError::InvalidArgument(format!(
            "triplet loss needs three (batch, dim) tensors of one shape, got anchor {:?}, positive {:?}, negative {:?}",
            anchor.dims(),
            positive.dims(),
            negative.dims()
        )));
    }
    if shape[0] == 0 {
        return Err(ModelError::InvalidArgument(
            "triplet loss of an empty batch".into(),
        ));
    }
    let cos_ap = (anchor * positive)?.sum(D::Minus1)?;
    let cos_an = (anchor * negative)?.sum(D::Minus1)?;
    let hinge = (cos_an - cos_ap)?.affine(1.0, margin)?.relu()?;
    Ok(hinge.to_dtype(DType::F32)?.mean_all()?)
}

/// The ranking loss over every valid negative of the batch ("batch all"):
/// `sum(mask * max(0, margin - cos(a_i, p_i) + cos(a_i, x_j))) / sum(mask)`.
///
/// `anchor`, `positive`: `(B, D)`; `candidates`: `(N, D)`, all L2-normalised;
/// `mask`: f32 `(B, N)`, 1 where `x_j` is a valid negative of triplet `i`
/// (same attribute, another value). With only each triplet's own negative in
/// the mask this is [`triplet_ranking_loss`]. Errors when the mask is empty.
pub fn batch_all_ranking_loss(
    anchor: &Tensor,
    positive: &Tensor,
    candidates: &Tensor,
    mask: &Tensor,
    margin: f64,
) -> Result<Tensor> {
    let (b, d) = anchor.dims2()?;
    let (n, dc) = candidates.dims2()?;
    if positive.dims() != [b, d] || dc != d || mask.dims() != [b, n] {
        return Err(ModelError::InvalidArgument(format!(
            "batch-all loss: anchor {:?}, positive {:?}, candidates {:?}, mask {:?} do not fit",
            anchor.dims(),
            positive.dims(),
            candidates.dims(),
            mask.dims()
        )));
    }
    let count = mask.sum_all()?.to_scalar::<f32>()?;
    if count < 1.0 {
        return Err(ModelError::InvalidArgument(
            "batch-all loss: no valid negative in the batch".into(),
        ));
    }
    let cos_ap = (anchor * positive)?.sum_keepdim(D::Minus1)?; // (B, 1)
    let cos_an = anchor.matmul(&candidates.t()?)?; // (B, N)
    let hinge = cos_an.broadcast_sub(&cos_ap)?.affine(1.0, margin)?.relu()?;
    Ok(((hinge * mask)?.sum_all()? / f64::from(count))?)
}

#[cfg(test)]
mod tests {
    use asen_models::l2_normalize_rows;
    use candle_core::{Device, Var};
    use candle_nn::{Optimizer, SGD};

    use super::*;

    #[test]
    fn hand_computed_values() {
        let d = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &d).unwrap();
        let p = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &d).unwrap();
        let n = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &d).unwrap();
        // Row 1: 0.2 - (1 - 0) < 0 -> 0. Row 2: 0.2 - (0 - 1) = 1.2.
        let loss = triplet_ranking_loss(&a, &p, &n, DEFAULT_MARGIN)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((loss - 0.6).abs() < 1e-6, "{loss}");
        assert!(triplet_ranking_loss(&a, &p, &n.narrow(0, 0, 1).unwrap(), 0.2).is_err());
    }

    #[test]
    fn batch_all_reduces_to_the_triplet_loss_and_averages_valid_pairs() {
        let d = Device::Cpu;
        let a = Tensor::new(&[[1f32, 0.0], [1.0, 0.0]], &d).unwrap();
        let p = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &d).unwrap();
        let n = Tensor::new(&[[0f32, 1.0], [1.0, 0.0]], &d).unwrap();
        let eye = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &d).unwrap();
        let own = batch_all_ranking_loss(&a, &p, &n, &eye, DEFAULT_MARGIN)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((own - 0.6).abs() < 1e-6, "{own}");
        // Every pair valid: row 1 hinges 0 (cos 0) and 0.2 (cos 1: 0.2 - 1 + 1);
        // row 2: 1.2 (cos 1 -> 0.2 - 0 + 1), 0.2 (cos 0 -> 0.2 - 0 + 0). Mean of 4.
        let all = Tensor::ones((2, 2), DType::F32, &d).unwrap();
        let mean = batch_all_ranking_loss(&a, &p, &n, &all, DEFAULT_MARGIN)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((mean - 1.6 / 4.0).abs() < 1e-6, "{mean}");
        let none = Tensor::zeros((2, 2), DType::F32, &d).unwrap();
        assert!(batch_all_ranking_loss(&a, &p, &n, &none, 0.2).is_err());
        assert!(batch_all_ranking_loss(&a, &p, &n, &eye.narrow(0, 0, 1).unwrap(), 0.2).is_err());
    }

    #[test]
    fn a_gradient_step_lowers_the_loss() {
        let d = Device::Cpu;
        let raw = |seed: f32| {
            let v: Vec<f32> = (0..8 * 16)
                .map(|i| ((i as f32 + seed) * 0.37).sin())
                .collect();
            Var::from_vec(v, (8, 16), &d).unwrap()
        };
        let (a, p, n) = (raw(0.0), raw(1.0), raw(2.0));
        let loss_of = || {
            let norm = |v: &Var| l2_normalize_rows(v.as_tensor()).unwrap();
            triplet_ranking_loss(&norm(&a), &norm(&p), &norm(&n), DEFAULT_MARGIN).unwrap()
        };
        let mut sgd = SGD::new(vec![a.clone(), p.clone(), n.clone()], 0.5).unwrap();
        let before = loss_of();
        let start = before.to_scalar::<f32>().unwrap();
        assert!(start > 0.0);
        sgd.backward_step(&before).unwrap();
        let after = loss_of().to_scalar::<f32>().unwrap();
        assert!(after < start, "loss went from {start} to {after}");
    }
}
