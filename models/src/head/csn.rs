//! Conditional Similarity Networks (Veit et al., CVPR 2017) as an ASEN
//! baseline: one shared embedding, one learned mask per attribute.
//!
//! ```text
//! g   = embed(mean_{h,w} x)          [B, D]      embed: Linear C -> D
//! m   = relu(masks.weight[c])        [B, D]      masks.weight [n, D]
//! emb = l2norm(g * m)                [B, D]
//! ```
//! No spatial attention. Masks start as N(0.9, 0.7), the CSN initialisation.

use candle_core::Tensor;
use candle_nn::{Embedding, Linear, Module, VarBuilder};

use super::{
    attribute_column, check_attribute_list, check_attributes, check_features, global_average_pool,
    l2_normalize_rows, HeadConfig, HeadKind, HeadOutput,
};
use crate::error::Result;

/// The CSN head.
#[derive(Debug, Clone)]
pub struct Csn {
    cfg: HeadConfig,
    embed: Linear,
    masks: Embedding,
}

impl Csn {
    /// Build from `vb`: `embed.weight [D, C]`, `embed.bias [D]`, `masks.weight [n, D]`.
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        cfg.validate(HeadKind::Csn)?;
        let masks = vb.pp("masks").get_with_hints(
            (cfg.n_attributes, cfg.embedding_dim),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.9,
                stdev: 0.7,
            },
        )?;
        Ok(Self {
            cfg: cfg.clone(),
            embed: candle_nn::linear(cfg.in_channels, cfg.embedding_dim, vb.pp("embed"))?,
            masks: Embedding::new(masks, cfg.embedding_dim),
        })
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]`, no attention.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, _train: bool) -> Result<HeadOutput> {
        let (b, _, _) = check_features(HeadKind::Csn, x, self.cfg.in_channels)?;
        check_attributes(HeadKind::Csn, attr, b, self.cfg.n_attributes)?;
        let g = self.embed.forward(&global_average_pool(x)?)?;
        self.mask(&g, attr)
    }

    /// `x` `[B, C, H, W]` -> one output per attribute; the shared embedding is computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        let (b, _, _) = check_features(HeadKind::Csn, x, self.cfg.in_channels)?;
        check_attribute_list(HeadKind::Csn, attrs, self.cfg.n_attributes)?;
        let g = self.embed.forward(&global_average_pool(x)?)?;
        attrs
            .iter()
            .map(|&a| self.mask(&g, &attribute_column(a, b, x)?))
            .collect()
    }

    fn mask(&self, g: &Tensor, attr: &Tensor) -> Result<HeadOutput> {
        let m = self.masks.forward(attr)?.relu()?;
        Ok(HeadOutput {
            embedding: l2_normalize_rows(&(g * m)?)?,
            attention: None,
        })
    }
}
