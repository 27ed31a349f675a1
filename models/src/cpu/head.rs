//! The dot-product attention head (ASEN v2, and the ASEN++ global branch)
//! for every attribute of a batch at once, on the engine's gemm.
//!
//! The equations are those of `head::asen_v2` (see there). At load, the
//! image-branch BatchNorm is folded into its 1x1 convolution, and what
//! depends on the attribute alone is computed once per attribute:
//! `t = tanh(attr_transform1(e))`, and `fc1`'s response to
//! `relu(attr_transform2(e))` (the second half of its input), which becomes a
//! per-attribute bias of `fc1` on the pooled features. A forward pass is then
//! three gemms over the batch's pixels or (image, attribute) rows, the
//! attention softmax and pooling, and the L2 normalisation.

use rayon::prelude::*;

use super::gemm::{gemm, Epilogue, PackedB, Rows};
use super::kernels::KernelPath;
use super::map::Exec;
use super::math::{map_in_place, sigmoid, tanh};
use crate::layers::Activation;

/// The plain weights of a dot-product head, in PyTorch's layouts.
pub(crate) struct DotProductWeights {
    /// `[n_attr, A]` attribute embedding rows.
    pub embedding: Vec<f32>,
    /// `[A, A]` and `[A]`.
    pub transform1: (Vec<f32>, Vec<f32>),
    /// `[A, A]` and `[A]`.
    pub transform2: (Vec<f32>, Vec<f32>),
    /// `[A, C]` and `[A]`, BatchNorm already folded in.
    pub conv: (Vec<f32>, Vec<f32>),
    /// `[H, C + A]` and `[H]`.
    pub fc1: (Vec<f32>, Vec<f32>),
    /// `[C, H]` and `[C]`.
    pub fc2: (Vec<f32>, Vec<f32>),
    /// `[D, C]` and `[D]`, if the head has a final projection.
    pub feature_fc: Option<(Vec<f32>, Vec<f32>)>,
    /// `[n_attr, cells]`: the attention's position bias, gain applied.
    pub position: Option<Vec<f32>>,
    pub channels: usize,
    pub attention_dim: usize,
    pub hidden: usize,
}

/// A dot-product head ready for the CPU.
#[derive(Debug)]
pub(crate) struct DotProductEngine {
    channels: usize,
    attention_dim: usize,
    hidden: usize,
    /// `x [pixels, C] -> img [pixels, A]` (tanh applied after).
    conv: PackedB,
    conv_bias: Vec<f32>,
    /// `[n_attr][A]`: `tanh(attr_transform1(e))` of each attribute.
    queries: Vec<f32>,
    /// `[n_attr][H]`: `fc1_b + fc1_w[:, C..] relu(attr_transform2(e))`.
    fc1_attribute: Vec<f32>,
    /// `v [rows, C] -> [rows, H]` (the first C columns of fc1).
    fc1: PackedB,
    fc2: PackedB,
    fc2_bias: Vec<f32>,
    feature_fc: Option<(PackedB, Vec<f32>)>,
    /// `[n_attr][cells]`, added to the attention logits.
    position: Option<Vec<f32>>,
    n_attributes: usize,
}

/// `W [out, in]` as the packed `[in, out]` right operand of `x W^T`,
/// reading the first `cols` of each row.
fn pack_linear(w: &[f32], out: usize, row_len: usize, cols: usize) -> PackedB {
    PackedB::pack(cols, out, |k, o| w[o * row_len + k])
}

/// `W x + b` for one vector.
fn affine(w: &[f32], b: &[f32], x: &[f32]) -> Vec<f32> {
    b.iter()
        .enumerate()
        .map(|(o, &bo)| {
            bo + w[o * x.len()..(o + 1) * x.len()]
                .iter()
                .zip(x)
                .map(|(a, b)| a * b)
                .sum::<f32>()
        })
        .collect()
}

impl DotProductEngine {
    pub(crate) fn new(w: DotProductWeights) -> Self {
        let (c, a, h) = (w.channels, w.attention_dim, w.hidden);
        let n_attributes = w.embedding.len() / a;
        let mut queries = Vec::with_capacity(n_attributes * a);
        let mut fc1_attribute = Vec::with_capacity(n_attributes * h);
        for e in w.embedding.chunks_exact(a) {
            queries.extend(
                affine(&w.transform1.0, &w.transform1.1, e)
                    .iter()
                    .map(|v| v.tanh()),
            );
            let t2: Vec<f32> = affine(&w.transform2.0, &w.transform2.1, e)
                .into_iter()
                .map(|v| v.max(0.0))
                .collect();
            for o in 0..h {
                let row = &w.fc1.0[o * (c + a)..(o + 1) * (c + a)];
                let dot: f32 = row[c..].iter().zip(&t2).map(|(x, y)| x * y).sum();
                fc1_attribute.push(w.fc1.1[o] + dot);
            }
        }
        Self {
            channels: c,
            attention_dim: a,
            hidden: h,
            conv: pack_linear(&w.conv.0, a, c, c),
            conv_bias: w.conv.1,
            queries,
            fc1_attribute,
            fc1: pack_linear(&w.fc1.0, h, c + a, c),
            fc2: pack_linear(&w.fc2.0, c, h, h),
            fc2_bias: w.fc2.1,
            feature_fc: w.feature_fc.map(|(fw, fb)| {
                let d = fb.len();
                (pack_linear(&fw, d, c, c), fb)
            }),
            position: w.position,
            n_attributes,
        }
    }

    /// Output dimension.
    pub(crate) fn dim(&self) -> usize {
        self.feature_fc
            .as_ref()
            .map_or(self.channels, |(_, b)| b.len())
    }

    /// The cells its position bias covers (the map must have as many), or
    /// `None` without one.
    pub(crate) fn position_cells(&self) -> Option<usize> {
        self.position.as_ref().map(|p| p.len() / self.n_attributes)
    }

    /// The maps as pixel rows `[B * N, C]`, for the attributes `attrs`
    /// (valid indices): L2-normalised embeddings `[B, n, D]` and attention
    /// `[B, n, N]`.
    pub(crate) fn forward_rows(
        &self,
        path: KernelPath,
        rows: &[f32],
        (b, n_pix): (usize, usize),
        attrs: &[usize],
    ) -> (Vec<f32>, Vec<f32>) {
        super::map::on_pool(|| {
            let (mut out, attn) = self.forward_in_pool(path, rows, (b, n_pix), attrs);
            l2_normalise_rows(&mut out, self.dim());
            (out, attn)
        })
    }

    /// [`Self::forward_rows`] before the L2 normalisation: what a
    /// fine-grid ASEN v2 sums over its two heads.
    pub(crate) fn forward_rows_raw(
        &self,
        path: KernelPath,
        rows: &[f32],
        (b, n_pix): (usize, usize),
        attrs: &[usize],
    ) -> (Vec<f32>, Vec<f32>) {
        super::map::on_pool(|| self.forward_in_pool(path, rows, (b, n_pix), attrs))
    }

    /// The head's outputs before the L2 normalisation, and the attention.
    fn forward_in_pool(
        &self,
        path: KernelPath,
        rows: &[f32],
        (b, n_pix): (usize, usize),
        attrs: &[usize],
    ) -> (Vec<f32>, Vec<f32>) {
        let (c, a, h, n) = (self.channels, self.attention_dim, self.hidden, attrs.len());
        assert_eq!(rows.len(), b * c * n_pix);
        assert!(attrs.iter().all(|&i| i < self.n_attributes));
        assert!(self.position_cells().is_none_or(|cells| cells == n_pix));
        // Image branch: tanh(conv(x)) [B * N, A].
        let mut img = vec![0f32; b * n_pix * a];
        let plain = |bias| Epilogue {
            bias,
            residual: None,
            act: Activation::None,
        };
        gemm(
            path,
            Exec::Parallel,
            rows_of(rows, b * n_pix, c),
            &self.conv,
            &mut img,
            plain(&self.conv_bias),
        );
        map_in_place(path, &mut img, tanh);
        // Attention per (image, attribute) and the pooled features v.
        let scale = 1.0 / (a as f32).sqrt();
        let mut attn = vec![0f32; b * n * n_pix];
        let mut pooled = vec![0f32; b * n * c];
        attn.par_chunks_exact_mut(n_pix)
            .zip(pooled.par_chunks_exact_mut(c))
            .enumerate()
            .for_each(|(row, (weights, v))| {
                let (image, j) = (row / n, row % n);
                let q = &self.queries[attrs[j] * a..(attrs[j] + 1) * a];
                let pixels = &img[image * n_pix * a..(image + 1) * n_pix * a];
                for (wt, px) in weights.iter_mut().zip(pixels.chunks_exact(a)) {
                    *wt = dot(q, px) * scale;
                }
                if let Some(p) = &self.position {
                    let bias = &p[attrs[j] * n_pix..(attrs[j] + 1) * n_pix];
                    weights.iter_mut().zip(bias).for_each(|(wt, b)| *wt += b);
                }
                softmax(weights);
                v.fill(0.0);
                let feats = &rows[image * n_pix * c..(image + 1) * n_pix * c];
                for (&wt, px) in weights.iter().zip(feats.chunks_exact(c)) {
                    v.iter_mut().zip(px).for_each(|(acc, &f)| *acc += wt * f);
                }
            });
        // Gate: sigmoid(fc2(relu(fc1(cat[v, a])))), with fc1's attribute half
        // as a per-row bias.
        let m = b * n;
        let attribute_bias: Vec<f32> = (0..m)
            .flat_map(|row| {
                let j = attrs[row % n];
                self.fc1_attribute[j * h..(j + 1) * h].iter().copied()
            })
            .collect();
        let zeros = vec![0f32; h];
        let mut hidden = vec![0f32; m * h];
        let ep = Epilogue {
            bias: &zeros,
            residual: Some(&attribute_bias),
            act: Activation::Relu,
        };
        gemm(
            path,
            Exec::Parallel,
            rows_of(&pooled, m, c),
            &self.fc1,
            &mut hidden,
            ep,
        );
        let mut gate = vec![0f32; m * c];
        gemm(
            path,
            Exec::Parallel,
            rows_of(&hidden, m, h),
            &self.fc2,
            &mut gate,
            plain(&self.fc2_bias),
        );
        map_in_place(path, &mut gate, sigmoid);
        gate.iter_mut().zip(&pooled).for_each(|(g, &v)| *g *= v);
        let out = match &self.feature_fc {
            Some((fc, bias)) => {
                let mut out = vec![0f32; m * bias.len()];
                gemm(
                    path,
                    Exec::Parallel,
                    rows_of(&gate, m, c),
                    fc,
                    &mut out,
                    plain(bias),
                );
                out
            }
            None => gate,
        };
        (out, attn)
    }
}

/// Each row of `dim` values divided by its L2 norm (at least 1e-12).
pub(crate) fn l2_normalise_rows(values: &mut [f32], dim: usize) {
    for row in values.chunks_exact_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

/// `count` contiguous rows of `stride` values.
fn rows_of(data: &[f32], count: usize, stride: usize) -> Rows<'_> {
    Rows {
        data,
        count,
        stride,
    }
}

/// `a . b` in 16 running sums, so the loop vectorises (one sum would be a
/// chain of dependent additions).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0f32; 16];
    let (a16, b16) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = a16
        .remainder()
        .iter()
        .zip(b16.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a16.zip(b16) {
        for i in 0..16 {
            sums[i] += x[i] * y[i];
        }
    }
    sums.iter().sum::<f32>() + tail
}

/// In-place softmax of one row.
fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_plain_sum_for_every_length() {
        for len in [0, 1, 5, 16, 37, 256, 1341] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            let got = f64::from(dot(&a, &b));
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{len}: {got} vs {want}"
            );
        }
    }
}
