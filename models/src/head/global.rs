//! The attribute-agnostic baseline: one embedding for every attribute.
//!
//! ```text
//! emb = l2norm(fc(mean_{h,w} x))     [B, D]      fc: Linear C -> D
//! ```
//! The attribute is validated and otherwise ignored; no spatial attention.

use candle_core::Tensor;
use candle_nn::{Linear, Module, VarBuilder};

use super::{
    check_attribute_list, check_attributes, check_features, global_average_pool, l2_normalize_rows,
    HeadConfig, HeadKind, HeadOutput,
};
use crate::error::Result;

/// The global-embedding head.
#[derive(Debug, Clone)]
pub struct GlobalHead {
    cfg: HeadConfig,
    fc: Linear,
}

impl GlobalHead {
    /// Build from `vb`: `fc.weight [D, C]`, `fc.bias [D]`.
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        cfg.validate(HeadKind::Global)?;
        Ok(Self {
            cfg: cfg.clone(),
            fc: candle_nn::linear(cfg.in_channels, cfg.embedding_dim, vb.pp("fc"))?,
        })
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` (checked, unused) -> embedding `[B, D]`.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, _train: bool) -> Result<HeadOutput> {
        let (b, _, _) = check_features(HeadKind::Global, x, self.cfg.in_channels)?;
        check_attributes(HeadKind::Global, attr, b, self.cfg.n_attributes)?;
        self.embed(x)
    }

    /// `x` `[B, C, H, W]` -> the same embedding for each of `attrs`, computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        check_features(HeadKind::Global, x, self.cfg.in_channels)?;
        check_attribute_list(HeadKind::Global, attrs, self.cfg.n_attributes)?;
        let out = self.embed(x)?;
        Ok(attrs.iter().map(|_| out.clone()).collect())
    }

    fn embed(&self, x: &Tensor) -> Result<HeadOutput> {
        let e = self.fc.forward(&global_average_pool(x)?)?;
        Ok(HeadOutput {
            embedding: l2_normalize_rows(&e)?,
            attention: None,
        })
    }
}
