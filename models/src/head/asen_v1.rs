//! ASEN v1 (Ma et al., AAAI 2020): attribute-guided spatial attention from
//! one-hot masks, then attribute-guided channel attention, then `feature_fc`.
//!
//! With `x` `[B, C, H, W]`, attribute `c`, `N = H*W`:
//! ```text
//! img  = tanh(conv1(x))                                  [B, A, N]
//! m    = tanh(mask_fc1.weight[:, c])                     [B, A]     (column c = one-hot product)
//! attn = softmax_N(tanh(conv2(m * img)))                 [B, N]
//! v    = sum_N x * attn                                  [B, C]
//! a    = relu(mask_fc2.weight[:, c])                     [B, C]
//! gate = sigmoid(fc2(relu(fc1(cat[v, a]))))              [B, C]
//! emb  = l2norm(feature_fc(v * gate))                    [B, D]
//! ```
//! Tensors: `mask_fc1.weight [A, n]`, `mask_fc2.weight [C, n]` (no bias),
//! `conv1 [A, C, 1, 1]`, `conv2 [1, A, 1, 1]`, `fc1 [G, 2C]`, `fc2 [C, G]`,
//! `feature_fc [D, C]`, each with a bias.

use candle_core::{Tensor, D};
use candle_nn::{Linear, Module, VarBuilder};

use super::{
    attention_pool, attribute_column, check_attribute_list, check_attributes, check_features,
    l2_normalize_rows, Conv1x1, HeadConfig, HeadKind, HeadOutput,
};
use crate::error::Result;

/// The ASEN v1 head.
#[derive(Debug, Clone)]
pub struct AsenV1 {
    cfg: HeadConfig,
    /// `mask_fc1.weight` transposed: row c = the attribute's spatial mask `[n, A]`.
    mask1: Tensor,
    /// `mask_fc2.weight` transposed: `[n, C]`.
    mask2: Tensor,
    conv1: Conv1x1,
    conv2: Conv1x1,
    fc1: Linear,
    fc2: Linear,
    feature_fc: Linear,
}

impl AsenV1 {
    /// Build from `vb` (tensor names above).
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        cfg.validate(HeadKind::AsenV1)?;
        let (c, a, n) = (cfg.in_channels, cfg.attention_dim, cfg.n_attributes);
        // PyTorch's Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = n.
        let bound = 1.0 / (n as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let mask1 = vb
            .pp("mask_fc1")
            .get_with_hints((a, n), "weight", init)?
            .t()?
            .contiguous()?;
        let mask2 = vb
            .pp("mask_fc2")
            .get_with_hints((c, n), "weight", init)?
            .t()?
            .contiguous()?;
        Ok(Self {
            cfg: cfg.clone(),
            mask1,
            mask2,
            conv1: Conv1x1::new(c, a, vb.pp("conv1"))?,
            conv2: Conv1x1::new(a, 1, vb.pp("conv2"))?,
            fc1: candle_nn::linear(2 * c, cfg.gate_hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.gate_hidden, c, vb.pp("fc2"))?,
            feature_fc: candle_nn::linear(c, cfg.embedding_dim, vb.pp("feature_fc"))?,
        })
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]`, attention `[B, H, W]`.
    /// v1 has no BatchNorm or dropout, so `train` changes nothing.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, _train: bool) -> Result<HeadOutput> {
        let (b, h, w) = check_features(HeadKind::AsenV1, x, self.cfg.in_channels)?;
        check_attributes(HeadKind::AsenV1, attr, b, self.cfg.n_attributes)?;
        let x = x.flatten_from(2)?;
        let img = self.conv1.forward(&x)?.tanh()?;
        self.attend(&x, &img, attr, h, w)
    }

    /// `x` `[B, C, H, W]` -> one output per attribute; `tanh(conv1(x))` is computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        let (b, h, w) = check_features(HeadKind::AsenV1, x, self.cfg.in_channels)?;
        check_attribute_list(HeadKind::AsenV1, attrs, self.cfg.n_attributes)?;
        let x = x.flatten_from(2)?;
        let img = self.conv1.forward(&x)?.tanh()?;
        attrs
            .iter()
            .map(|&a| self.attend(&x, &img, &attribute_column(a, b, &x)?, h, w))
            .collect()
    }

    /// The attribute-dependent part: `x` `[B, C, N]`, `img` `[B, A, N]`.
    fn attend(
        &self,
        x: &Tensor,
        img: &Tensor,
        attr: &Tensor,
        h: usize,
        w: usize,
    ) -> Result<HeadOutput> {
        let b = x.dim(0)?;
        let m = self.mask1.index_select(attr, 0)?.tanh()?; // [B, A]
        let logits = self
            .conv2
            .forward(&img.broadcast_mul(&m.unsqueeze(2)?)?)?
            .tanh()?; // [B, 1, N]
        let (v, attn) = attention_pool(x, &logits.squeeze(1)?)?;
        let a = self.mask2.index_select(attr, 0)?.relu()?; // [B, C]
        let gate = candle_nn::ops::sigmoid(
            &self.fc2.forward(
                &self
                    .fc1
                    .forward(&Tensor::cat(&[&v, &a], D::Minus1)?)?
                    .relu()?,
            )?,
        )?;
        let emb = l2_normalize_rows(&self.feature_fc.forward(&(v * gate)?)?)?;
        Ok(HeadOutput {
            embedding: emb,
            attention: Some(attn.reshape((b, h, w))?),
        })
    }
}
