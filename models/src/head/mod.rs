//! Attribute-specific embedding heads: from a backbone feature map and one
//! attribute per image to an L2-normalised embedding (and, for the ASEN
//! variants, the spatial attention map that produced it).
//!
//! Every head is built with `new(vb, &cfg)` from a [`HeadConfig`], so the same
//! code loads a converted checkpoint (`VarBuilder` over its tensors) or
//! creates fresh, initialised parameters for training (`VarBuilder::from_varmap`).
//! Tensor names are the official ASEN names of each variant (see
//! `checkpoint::normalise_key`). Nothing depends on the spatial size: any
//! `H x W` works (14x14 for ResNet-50 layer3 at 224, 7x7 for MobileNetV2, ...).
//!
//! * [`Head::forward`]: `x` f32 `[B, C, H, W]`, `attr` u32 `[B]` (one attribute
//!   per row, rows may differ) -> [`HeadOutput`].
//! * [`Head::forward_attributes`]: one image batch, several attributes; the
//!   attribute-independent part (`tanh(conv1(x))`, the pooled feature, ...) is
//!   computed once and shared.

mod asen_pp;
mod asen_v1;
mod asen_v2;
mod csn;
mod global;

use std::collections::BTreeMap;
use std::fmt;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use asen_pp::AsenPpGlobal;
pub use asen_v1::AsenV1;
pub(crate) use asen_v2::check_position_cells;
pub use asen_v2::{split_fine_map, AsenV2};
pub use csn::Csn;
pub use global::GlobalHead;

use crate::error::{ModelError, Result};

/// The head architectures asen knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeadKind {
    /// ASEN v1 (AAAI 2020): one-hot masks, conv2 attention logits, feature_fc.
    #[serde(rename = "asen_v1")]
    AsenV1,
    /// ASENet_V2: attribute embedding rows, BatchNorm, scaled dot-product attention.
    #[serde(rename = "asen_v2")]
    AsenV2,
    /// ASEN++ global branch.
    #[serde(rename = "asen_pp_global")]
    AsenPpGlobal,
    /// Conditional Similarity Networks baseline.
    #[serde(rename = "csn")]
    Csn,
    /// Attribute-agnostic global embedding baseline.
    #[serde(rename = "global")]
    Global,
}

impl HeadKind {
    /// The serde / card name (`asen_v1`, `asen_v2`, `asen_pp_global`, `csn`, `global`).
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::AsenV1 => "asen_v1",
            HeadKind::AsenV2 => "asen_v2",
            HeadKind::AsenPpGlobal => "asen_pp_global",
            HeadKind::Csn => "csn",
            HeadKind::Global => "global",
        }
    }

    /// Whether the head produces a spatial attention map.
    pub fn has_attention(self) -> bool {
        matches!(
            self,
            HeadKind::AsenV1 | HeadKind::AsenV2 | HeadKind::AsenPpGlobal
        )
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sizes of a head. The official ASEN values on ResNet-50 layer3 are
/// `in_channels 1024, attention_dim 512, gate_hidden 512, embedding_dim 1024`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadConfig {
    /// Channels `C` of the backbone feature map.
    pub in_channels: usize,
    /// Number of attributes (conditions).
    pub n_attributes: usize,
    /// Width of the attention branch: `conv1`/`conv` output channels,
    /// `mask_fc1` rows (v1), attribute embedding size (v2, ASEN++). Unused by
    /// `csn` and `global`.
    pub attention_dim: usize,
    /// Hidden width of the channel-attention gate (`fc1` output). Unused by `csn` and `global`.
    pub gate_hidden: usize,
    /// Output embedding size `D`. For v2 without `feature_fc` it must equal `in_channels`.
    pub embedding_dim: usize,
    /// v2 only: whether a final `feature_fc` Linear exists (v1 and ASEN++ always have one).
    #[serde(default)]
    pub feature_fc: bool,
    /// v2 only: channels of the fine stage at the end of `in_channels`
    /// (0 without a fine grid): see [`AsenV2::new`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub fine_channels: usize,
    /// v2 only: cells (`H * W`) of the map under a learned per-attribute
    /// bias on the attention logits, 0 without: see
    /// [`AsenV2::new`]. It sits on the head whose attention is shown (the
    /// fine head of a fine grid), so the map must have this many cells.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub position_cells: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl HeadConfig {
    /// The official ASEN sizes for a backbone with `in_channels` channels.
    pub fn asen(in_channels: usize, n_attributes: usize) -> Self {
        Self {
            in_channels,
            n_attributes,
            attention_dim: 512,
            gate_hidden: 512,
            embedding_dim: 1024,
            feature_fc: true,
            fine_channels: 0,
            position_cells: 0,
        }
    }

    /// Check the sizes for a head kind.
    pub fn validate(&self, kind: HeadKind) -> Result<()> {
        let bad = |what: &str| {
            Err(ModelError::InvalidArgument(format!(
                "{kind} head config: {what} ({self:?})"
            )))
        };
        if self.in_channels == 0 || self.n_attributes == 0 || self.embedding_dim == 0 {
            return bad("in_channels, n_attributes and embedding_dim must be positive");
        }
        if kind.has_attention() && (self.attention_dim == 0 || self.gate_hidden == 0) {
            return bad("attention_dim and gate_hidden must be positive");
        }
        if kind == HeadKind::AsenV2 && !self.feature_fc && self.embedding_dim != self.in_channels {
            return bad("without feature_fc the embedding_dim must equal in_channels");
        }
        if self.fine_channels > 0 {
            if kind != HeadKind::AsenV2 {
                return bad("only asen_v2 has a fine grid (fine_channels must be 0)");
            }
            if !self.feature_fc || self.fine_channels >= self.in_channels {
                return bad(
                    "a fine grid needs feature_fc and fewer fine_channels than in_channels",
                );
            }
        }
        if self.position_cells > 0 && kind != HeadKind::AsenV2 {
            return bad("only asen_v2 has a position bias (position_cells must be 0)");
        }
        Ok(())
    }

    /// Read the sizes of a `kind` head from the shapes of its (normalised) tensors.
    /// Returns a description of the first missing or malformed tensor otherwise.
    pub fn infer(kind: HeadKind, tensors: &BTreeMap<String, Tensor>) -> Result<Self, String> {
        let dims = |name: &str, rank: usize| -> Result<Vec<usize>, String> {
            let t = tensors
                .get(name)
                .ok_or_else(|| format!("tensor {name} is missing"))?;
            if t.rank() != rank {
                return Err(format!(
                    "tensor {name} has shape {:?}, expected rank {rank}",
                    t.dims()
                ));
            }
            Ok(t.dims().to_vec())
        };
        Ok(match kind {
            HeadKind::AsenV1 => {
                let m1 = dims("mask_fc1.weight", 2)?;
                let ff = dims("feature_fc.weight", 2)?;
                let fc1 = dims("fc1.weight", 2)?;
                Self {
                    in_channels: ff[1],
                    n_attributes: m1[1],
                    attention_dim: m1[0],
                    gate_hidden: fc1[0],
                    embedding_dim: ff[0],
                    feature_fc: true,
                    fine_channels: 0,
                    position_cells: 0,
                }
            }
            HeadKind::AsenV2 | HeadKind::AsenPpGlobal => {
                let e = dims("attr_embedding.weight", 2)?;
                let fc1 = dims("fc1.weight", 2)?;
                let fc2 = dims("fc2.weight", 2)?;
                let feature_fc = tensors.contains_key("feature_fc.weight");
                let fine_channels = match tensors.contains_key("fine.fc2.weight") {
                    true => dims("fine.fc2.weight", 2)?[0],
                    false => 0,
                };
                let bias = match fine_channels {
                    0 => "position_bias",
                    _ => "fine.position_bias",
                };
                let position_cells = match tensors.contains_key(bias) {
                    true => dims(bias, 2)?[1],
                    false => 0,
                };
                let in_channels = fc2[0] + fine_channels;
                let embedding_dim = if feature_fc {
                    dims("feature_fc.weight", 2)?[0]
                } else {
                    in_channels
                };
                Self {
                    in_channels,
                    n_attributes: e[0],
                    attention_dim: e[1],
                    gate_hidden: fc1[0],
                    embedding_dim,
                    feature_fc: kind == HeadKind::AsenPpGlobal || feature_fc,
                    fine_channels,
                    position_cells,
                }
            }
            HeadKind::Csn => {
                let m = dims("masks.weight", 2)?;
                let e = dims("embed.weight", 2)?;
                Self {
                    in_channels: e[1],
                    n_attributes: m[0],
                    attention_dim: 0,
                    gate_hidden: 0,
                    embedding_dim: e[0],
                    feature_fc: false,
                    fine_channels: 0,
                    position_cells: 0,
                }
            }
            HeadKind::Global => {
                let w = dims("fc.weight", 2)?;
                return Err(format!(
                    "a global head does not store its attribute count (fc.weight {w:?}); it comes from the model card"
                ));
            }
        })
    }
}

/// What a head returns for a batch.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// f32 `[B, D]`, each row L2-normalised.
    pub embedding: Tensor,
    /// f32 `[B, H, W]`, each map sums to 1; `None` for heads without spatial attention.
    pub attention: Option<Tensor>,
}

/// A head's outputs for a training step ([`Head::forward_supervised`]).
#[derive(Debug, Clone)]
pub struct Supervised {
    /// f32 `[B, D]` each, L2-normalised: the embeddings a loss sums over.
    pub embeddings: Vec<Tensor>,
    /// f32 `[B, H, W]`, each map summing to 1: the attention `explain`
    /// returns; `None` for heads without spatial attention.
    pub attention: Option<Tensor>,
}

/// Any of the five heads, behind one interface.
#[derive(Debug, Clone)]
pub enum Head {
    /// ASEN v1.
    AsenV1(AsenV1),
    /// ASENet_V2.
    AsenV2(AsenV2),
    /// ASEN++ global branch.
    AsenPpGlobal(AsenPpGlobal),
    /// Conditional Similarity Networks.
    Csn(Csn),
    /// Attribute-agnostic global embedding.
    Global(GlobalHead),
}

impl Head {
    /// The head compiled for the CPU engine, for the kinds it has a kernel
    /// for (the dot-product heads: ASEN v2 and the ASEN++ global branch): a
    /// snapshot of the current weights.
    pub(crate) fn cpu_engine(&self) -> Result<Option<crate::cpu::HeadEngine>> {
        Ok(match self {
            Head::AsenV2(h) => Some(h.cpu_engine()?),
            Head::AsenPpGlobal(h) => Some(crate::cpu::HeadEngine::Single(Box::new(
                crate::cpu::DotProductEngine::new(h.engine_weights()?),
            ))),
            _ => None,
        })
    }

    /// Build a head of `kind` with parameters from `vb` (a checkpoint or a `VarMap`).
    pub fn new(kind: HeadKind, vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        Ok(match kind {
            HeadKind::AsenV1 => Head::AsenV1(AsenV1::new(vb, cfg)?),
            HeadKind::AsenV2 => Head::AsenV2(AsenV2::new(vb, cfg)?),
            HeadKind::AsenPpGlobal => Head::AsenPpGlobal(AsenPpGlobal::new(vb, cfg)?),
            HeadKind::Csn => Head::Csn(Csn::new(vb, cfg)?),
            HeadKind::Global => Head::Global(GlobalHead::new(vb, cfg)?),
        })
    }

    /// Which head this is.
    pub fn kind(&self) -> HeadKind {
        match self {
            Head::AsenV1(_) => HeadKind::AsenV1,
            Head::AsenV2(_) => HeadKind::AsenV2,
            Head::AsenPpGlobal(_) => HeadKind::AsenPpGlobal,
            Head::Csn(_) => HeadKind::Csn,
            Head::Global(_) => HeadKind::Global,
        }
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        match self {
            Head::AsenV1(h) => h.config(),
            Head::AsenV2(h) => h.config(),
            Head::AsenPpGlobal(h) => h.config(),
            Head::Csn(h) => h.config(),
            Head::Global(h) => h.config(),
        }
    }

    /// `x` f32 `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]` (L2-normalised)
    /// and attention `[B, H, W]` (ASEN variants). `train` switches BatchNorm
    /// (v2) to batch statistics.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        match self {
            Head::AsenV1(h) => h.forward(x, attr, train),
            Head::AsenV2(h) => h.forward(x, attr, train),
            Head::AsenPpGlobal(h) => h.forward(x, attr, train),
            Head::Csn(h) => h.forward(x, attr, train),
            Head::Global(h) => h.forward(x, attr, train),
        }
    }

    /// What a training loss reads: the embeddings it sums over
    /// ([`Self::forward`]'s, and for a fine-grid ASEN v2 also its fine
    /// head's alone, [`AsenV2::forward_supervised`]) and the attention map
    /// `explain` would show, for a prior on where it looks.
    pub fn forward_supervised(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<Supervised> {
        match self {
            Head::AsenV2(h) => h.forward_supervised(x, attr, train),
            _ => {
                let out = self.forward(x, attr, train)?;
                Ok(Supervised {
                    embeddings: vec![out.embedding],
                    attention: out.attention,
                })
            }
        }
    }

    /// Inference for several attributes of the same images: `x` f32
    /// `[B, C, H, W]` -> one [`HeadOutput`] per entry of `attrs`, in order.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        match self {
            Head::AsenV1(h) => h.forward_attributes(x, attrs),
            Head::AsenV2(h) => h.forward_attributes(x, attrs),
            Head::AsenPpGlobal(h) => h.forward_attributes(x, attrs),
            Head::Csn(h) => h.forward_attributes(x, attrs),
            Head::Global(h) => h.forward_attributes(x, attrs),
        }
    }
}

// ---------------------------------------------------------------------------
// Building blocks shared by the heads.

/// Check `x` is `[B, C, H, W]` with `C = in_channels`; returns `(B, H, W)`.
fn check_features(kind: HeadKind, x: &Tensor, in_channels: usize) -> Result<(usize, usize, usize)> {
    let dims = x.dims();
    if dims.len() != 4 || dims[1] != in_channels {
        return Err(ModelError::InvalidArgument(format!(
            "{kind} head expects features [B, {in_channels}, H, W], got {dims:?}"
        )));
    }
    Ok((dims[0], dims[2], dims[3]))
}

/// Check `attr` is u32 `[B]` with every index below `n`.
fn check_attributes(kind: HeadKind, attr: &Tensor, batch: usize, n: usize) -> Result<()> {
    if attr.dims() != [batch] || attr.dtype() != DType::U32 {
        return Err(ModelError::InvalidArgument(format!(
            "{kind} head expects attributes u32 [{batch}], got {:?} {:?}",
            attr.dtype(),
            attr.dims()
        )));
    }
    if let Some(bad) = attr
        .to_vec1::<u32>()?
        .into_iter()
        .find(|&a| a as usize >= n)
    {
        return Err(ModelError::InvalidArgument(format!(
            "attribute index {bad} out of range (the {kind} head has {n} attributes)"
        )));
    }
    Ok(())
}

/// Check attribute indices for `forward_attributes`.
fn check_attribute_list(kind: HeadKind, attrs: &[usize], n: usize) -> Result<()> {
    if let Some(bad) = attrs.iter().find(|&&a| a >= n) {
        return Err(ModelError::InvalidArgument(format!(
            "attribute index {bad} out of range (the {kind} head has {n} attributes)"
        )));
    }
    Ok(())
}

/// The same attribute for every row: u32 `[B]`.
fn attribute_column(attr: usize, batch: usize, x: &Tensor) -> Result<Tensor> {
    Ok(Tensor::full(attr as u32, batch, x.device())?)
}

/// A 1x1 convolution applied to flattened maps, as a matrix product:
/// `[B, C, N]` -> `[B, O, N]` (N = H*W). Parameters are stored as the
/// PyTorch `Conv2d` ones: `weight [O, C, 1, 1]`, `bias [O]`.
#[derive(Debug, Clone)]
struct Conv1x1 {
    weight: Tensor, // [O, C]
    bias: Tensor,   // [1, O, 1]
}

impl Conv1x1 {
    fn new(in_c: usize, out_c: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb
            .get_with_hints(
                (out_c, in_c, 1, 1),
                "weight",
                candle_nn::init::DEFAULT_KAIMING_UNIFORM,
            )?
            .reshape((out_c, in_c))?;
        let bound = 1.0 / (in_c as f64).sqrt();
        let bias = vb
            .get_with_hints(
                out_c,
                "bias",
                candle_nn::Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )?
            .reshape((1, out_c, 1))?;
        Ok(Self { weight, bias })
    }

    /// `[B, C, N]` -> `[B, O, N]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        pointwise_conv(x, &self.weight, &self.bias)
    }
}

/// A 1x1 convolution of flattened maps `x` `[B, C, N]` with `weight` `[O, C]`
/// and `bias` `[1, O, 1]`: `[B, O, N]`. One `[B*N, C] x [C, O]` product: the
/// batched `weight.broadcast_matmul(x)` form is as fast forward but its
/// backward materialises a `[B, O, C]` weight gradient (261 MB for a
/// training step of 192 MobileNetV2 maps) before summing it.
pub fn pointwise_conv(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let (b, c, n) = x.dims3()?;
    let o = weight.dim(0)?;
    let rows = x.transpose(1, 2)?.reshape((b * n, c))?;
    let y = rows
        .matmul(&weight.t()?)?
        .reshape((b, n, o))?
        .transpose(1, 2)?;
    Ok(y.broadcast_add(bias)?)
}

/// Softmax over the N positions of `logits [B, N]`, then the weighted sum of
/// `x [B, C, N]`: returns pooled `[B, C]` and attention `[B, N]`.
fn attention_pool(x: &Tensor, logits: &Tensor) -> Result<(Tensor, Tensor)> {
    // `softmax` (exp, sum, divide) rather than the fused `softmax_last_dim`:
    // the fused op has no backward in candle 0.11, which silently cut the whole
    // spatial-attention branch (conv1, img_bn1, attr_transform1, mask_fc1,
    // conv2) off the gradient in training.
    let attn = candle_nn::ops::softmax(logits, D::Minus1)?;
    let pooled = x.matmul(&attn.unsqueeze(2)?)?.squeeze(2)?;
    Ok((pooled, attn))
}

/// Row-wise L2 normalisation of `[B, D]`: `x / max(||x||_2, 1e-12)`
/// (PyTorch `F.normalize`; the plain `x / ||x||` of v1/v2 for every
/// non-zero row, and a zero row stays zero): the tensor form, with
/// gradients, of [`crate::l2_normalize`]. Every head ends in it.
pub fn l2_normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Global average pool `[B, C, H, W]` -> `[B, C]`.
fn global_average_pool(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(2)?.mean(2)?)
}

/// Each map's total weight, for attention maps `[B, H, W]` (tests).
#[cfg(test)]
pub(crate) fn map_sums(a: &Tensor) -> Vec<f32> {
    a.flatten_from(1)
        .and_then(|m| m.sum(1))
        .and_then(|m| m.to_vec1::<f32>())
        .expect("attention maps [B, H, W]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    #[test]
    fn l2_normalize_rows_gives_unit_rows_and_keeps_zero_rows() {
        let x = Tensor::new(&[[3f32, 4.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let y = l2_normalize_rows(&x).unwrap().to_vec2::<f32>().unwrap();
        assert!((y[0][0] - 0.6).abs() < 1e-6 && (y[0][1] - 0.8).abs() < 1e-6);
        assert_eq!(y[1], vec![0.0, 0.0]);
    }

    fn cfg() -> HeadConfig {
        HeadConfig {
            in_channels: 16,
            n_attributes: 3,
            attention_dim: 8,
            gate_hidden: 6,
            embedding_dim: 10,
            feature_fc: true,
            fine_channels: 0,
            position_cells: 0,
        }
    }

    #[test]
    fn every_head_trains_from_a_varmap_on_any_spatial_size() {
        let dev = Device::Cpu;
        for kind in [
            HeadKind::AsenV1,
            HeadKind::AsenV2,
            HeadKind::AsenPpGlobal,
            HeadKind::Csn,
            HeadKind::Global,
        ] {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
            let head = Head::new(kind, vb, &cfg()).unwrap();
            assert_eq!(head.kind(), kind);
            assert!(
                !varmap.all_vars().is_empty(),
                "{kind} created no parameters"
            );
            for (h, w) in [(7, 7), (5, 9), (1, 1)] {
                let x = Tensor::randn(0f32, 1.0, (4, 16, h, w), &dev).unwrap();
                let attr = Tensor::new(&[0u32, 2, 1, 2], &dev).unwrap();
                for train in [false, true] {
                    let out = head.forward(&x, &attr, train).unwrap();
                    assert_eq!(out.embedding.dims(), [4, 10]);
                    let norms = out
                        .embedding
                        .sqr()
                        .unwrap()
                        .sum(1)
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap();
                    assert!(
                        norms.iter().all(|n| (n - 1.0).abs() < 1e-5),
                        "{kind}: {norms:?}"
                    );
                    match &out.attention {
                        Some(a) => {
                            assert!(kind.has_attention());
                            assert_eq!(a.dims(), [4, h, w]);
                            let s = map_sums(a);
                            assert!(s.iter().all(|s| (s - 1.0).abs() < 1e-5), "{kind}: {s:?}");
                        }
                        None => assert!(!kind.has_attention()),
                    }
                }
                // The gradient reaches every parameter (BatchNorm running
                // statistics excepted): a fused op without backward once cut
                // the whole attention branch off silently.
                let out = head.forward(&x, &attr, true).unwrap();
                let weights = Tensor::randn(0f32, 1.0, out.embedding.dims(), &dev).unwrap();
                let loss = (out.embedding * weights).unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                let data = varmap.data().lock().unwrap();
                let missing: Vec<&String> = data
                    .iter()
                    .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
                    .filter(|(_, v)| grads.get(v.as_tensor()).is_none())
                    .map(|(n, _)| n)
                    .collect();
                assert!(missing.is_empty(), "{kind}: no gradient for {missing:?}");
            }
        }
    }

    #[test]
    fn forward_attributes_matches_forward_and_conditioning_matters() {
        let dev = Device::Cpu;
        for kind in [
            HeadKind::AsenV1,
            HeadKind::AsenV2,
            HeadKind::AsenPpGlobal,
            HeadKind::Csn,
            HeadKind::Global,
        ] {
            let varmap = VarMap::new();
            let head = Head::new(
                kind,
                VarBuilder::from_varmap(&varmap, DType::F32, &dev),
                &cfg(),
            )
            .unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 16, 3, 4), &dev).unwrap();
            let outs = head.forward_attributes(&x, &[2, 0]).unwrap();
            assert_eq!(outs.len(), 2);
            for (out, a) in outs.iter().zip([2u32, 0]) {
                let attr = Tensor::new(&[a, a], &dev).unwrap();
                let single = head.forward(&x, &attr, false).unwrap();
                let d = (&out.embedding - &single.embedding)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap();
                assert!(d.to_scalar::<f32>().unwrap() < 1e-6, "{kind}");
            }
            let d = (&outs[0].embedding - &outs[1].embedding)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap();
            let differs = d.to_scalar::<f32>().unwrap() > 1e-4;
            assert_eq!(differs, kind != HeadKind::Global, "{kind}");
        }
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let head = Head::new(
            HeadKind::AsenV1,
            VarBuilder::from_varmap(&varmap, DType::F32, &dev),
            &cfg(),
        )
        .unwrap();
        let x = Tensor::zeros((2, 16, 3, 3), DType::F32, &dev).unwrap();
        let e = head
            .forward(&x, &Tensor::new(&[0u32, 3], &dev).unwrap(), false)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid argument: attribute index 3 out of range (the asen_v1 head has 3 attributes)"
        );
        let e = head
            .forward(&x, &Tensor::new(&[0u32], &dev).unwrap(), false)
            .unwrap_err();
        assert!(e.to_string().contains("attributes u32 [2]"), "{e}");
        let e = head
            .forward(
                &x.flatten_from(2).unwrap(),
                &Tensor::new(&[0u32, 1], &dev).unwrap(),
                false,
            )
            .unwrap_err();
        assert!(e.to_string().contains("features [B, 16, H, W]"), "{e}");
        assert!(head.forward_attributes(&x, &[5]).is_err());
        let mut c = cfg();
        c.feature_fc = false;
        assert!(c.validate(HeadKind::AsenV2).is_err());
    }
}
