//! The ASEN++ (Dong et al., TIP 2021) global branch: the v2 dot-product
//! attention without BatchNorm, with `conv` for `conv1` and an always present
//! `feature_fc`. Flat layout: `choices.global.attrnet.attr_embedding.weight`
//! -> `attr_embedding.weight`, `choices.global.attnnet.X` -> `X`.
//!
//! ```text
//! img = tanh(conv(x)); t = tanh(attr_transform1(e))        e = attr_embedding.weight[c]
//! attn = softmax_N(sum_A(t * img) / sqrt(A));  v = sum_N x * attn
//! raw = feature_fc(v * sigmoid(fc2(relu(fc1(cat[v, relu(attr_transform2(e))])))))
//! emb = raw / max(||raw||, 1e-12)
//! ```

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::asen_v2::DotProductHead;
use super::{HeadConfig, HeadKind, HeadOutput};
use crate::error::Result;

/// The ASEN++ global-branch head.
#[derive(Debug, Clone)]
pub struct AsenPpGlobal(DotProductHead);

impl AsenPpGlobal {
    pub(crate) fn engine_weights(&self) -> Result<crate::cpu::DotProductWeights> {
        self.0.engine_weights()
    }

    /// Build from `vb` (`feature_fc` is always created).
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        Ok(Self(DotProductHead::new(
            HeadKind::AsenPpGlobal,
            vb,
            cfg,
            "conv",
            None,
        )?))
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        self.0.config()
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]`, attention `[B, H, W]`.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        self.0.forward(x, attr, train)
    }

    /// The branch output before normalisation, `[B, D]`, and attention `[B, H, W]`
    /// (ASEN++ normalises only at evaluation time; its training losses see this).
    pub fn forward_raw(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<(Tensor, Tensor)> {
        self.0.forward_raw(x, attr, train)
    }

    /// `x` `[B, C, H, W]` -> one output per attribute; `tanh(conv(x))` computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        self.0.forward_attributes(x, attrs)
    }
}
