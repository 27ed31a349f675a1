//! ASENet_V2 and (shared with `asen_pp`) the scaled dot-product attention
//! head: attribute embedding rows instead of one-hot masks, no `conv2`.
//!
//! With `x` `[B, C, H, W]`, attribute `c`, `N = H*W`, `A` the attention width:
//! ```text
//! e    = attr_embedding.weight[c]                          [B, A]   (a row)
//! img  = tanh(img_bn1(conv1(x)))                           [B, A, N] (v2; ASEN++: tanh(conv(x)))
//! t    = tanh(attr_transform1(e))                          [B, A]
//! attn = softmax_N(sum_A(t * img) / sqrt(A))               [B, N]
//! v    = sum_N x * attn                                    [B, C]
//! gate = sigmoid(fc2(relu(fc1(cat[v, relu(attr_transform2(e))]))))   [B, C]
//! out  = v * gate, then feature_fc if present              [B, D]
//! emb  = l2norm(out)
//! ```

use candle_core::{Tensor, D};
use candle_nn::{BatchNorm, Embedding, Linear, Module, ModuleT, VarBuilder};

use super::{
    attention_pool, check_attribute_list, check_attributes, check_features, l2_normalize_rows,
    Conv1x1, HeadConfig, HeadKind, HeadOutput,
};
use crate::error::Result;

/// The dot-product attention head both v2 and the ASEN++ global branch are.
#[derive(Debug, Clone)]
pub(crate) struct DotProductHead {
    kind: HeadKind,
    cfg: HeadConfig,
    attr_embedding: Embedding,
    attr_transform1: Linear,
    attr_transform2: Linear,
    conv: Conv1x1,
    bn: Option<BatchNorm>,
    fc1: Linear,
    fc2: Linear,
    feature_fc: Option<Linear>,
}

impl DotProductHead {
    /// `conv_name`: `conv1` (v2) or `conv` (ASEN++); `bn_name`: `Some("img_bn1")` for v2.
    pub(crate) fn new(
        kind: HeadKind,
        vb: VarBuilder,
        cfg: &HeadConfig,
        conv_name: &str,
        bn_name: Option<&str>,
    ) -> Result<Self> {
        cfg.validate(kind)?;
        let (c, a) = (cfg.in_channels, cfg.attention_dim);
        let embedding = vb.pp("attr_embedding").get_with_hints(
            (cfg.n_attributes, a),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        let bn = match bn_name {
            Some(name) => Some(candle_nn::batch_norm(
                a,
                candle_nn::BatchNormConfig {
                    eps: 1e-5,
                    ..Default::default()
                },
                vb.pp(name),
            )?),
            None => None,
        };
        let with_feature_fc = kind == HeadKind::AsenPpGlobal || cfg.feature_fc;
        Ok(Self {
            kind,
            cfg: HeadConfig {
                feature_fc: with_feature_fc,
                ..cfg.clone()
            },
            attr_embedding: Embedding::new(embedding, a),
            attr_transform1: candle_nn::linear(a, a, vb.pp("attr_transform1"))?,
            attr_transform2: candle_nn::linear(a, a, vb.pp("attr_transform2"))?,
            conv: Conv1x1::new(c, a, vb.pp(conv_name))?,
            bn,
            fc1: candle_nn::linear(c + a, cfg.gate_hidden, vb.pp("fc1"))?,
            fc2: candle_nn::linear(cfg.gate_hidden, c, vb.pp("fc2"))?,
            feature_fc: if with_feature_fc {
                Some(candle_nn::linear(
                    c,
                    cfg.embedding_dim,
                    vb.pp("feature_fc"),
                )?)
            } else {
                None
            },
        })
    }

    pub(crate) fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `x` `[B, C, N]` -> `img` `[B, A, N]`.
    fn image_branch(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.conv.forward(x)?;
        let y = match &self.bn {
            Some(bn) => bn.forward_t(&y, train)?,
            None => y,
        };
        Ok(y.tanh()?)
    }

    pub(crate) fn forward(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        let (out, attn) = self.forward_raw(x, attr, train)?;
        Ok(HeadOutput {
            embedding: l2_normalize_rows(&out)?,
            attention: Some(attn),
        })
    }

    /// Like `forward` but returns the branch output before L2 normalisation `[B, D]`.
    pub(crate) fn forward_raw(
        &self,
        x: &Tensor,
        attr: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (b, h, w) = check_features(self.kind, x, self.cfg.in_channels)?;
        check_attributes(self.kind, attr, b, self.cfg.n_attributes)?;
        let x = x.flatten_from(2)?;
        let img = self.image_branch(&x, train)?;
        let (out, attn) = self.attend(&x, &img, attr)?;
        Ok((out, attn.reshape((b, h, w))?))
    }

    /// Every attribute of `attrs` in one pass: the same equations as
    /// [`Self::forward`] with the attributes as one more batch axis, so a
    /// forward pass for 8 attributes runs a dozen tensor ops, not 8 times
    /// as many (each op has a fixed cost that dominated the head at batch 1).
    pub(crate) fn forward_attributes(
        &self,
        x: &Tensor,
        attrs: &[usize],
    ) -> Result<Vec<HeadOutput>> {
        let (b, h, w) = check_features(self.kind, x, self.cfg.in_channels)?;
        check_attribute_list(self.kind, attrs, self.cfg.n_attributes)?;
        if attrs.is_empty() {
            return Ok(Vec::new());
        }
        let n = attrs.len();
        let x = x.flatten_from(2)?; // [B, C, N]
        let img = self.image_branch(&x, false)?; // [B, A, N]
        let ids: Vec<u32> = attrs.iter().map(|&a| a as u32).collect();
        let e = self
            .attr_embedding
            .forward(&Tensor::new(ids.as_slice(), x.device())?)?; // [n, A]
        let t = self.attr_transform1.forward(&e)?.tanh()?;
        let scale = (self.cfg.attention_dim as f64).sqrt();
        let logits = (t.broadcast_left(b)?.matmul(&img)? / scale)?; // [B, n, N]
        let attn = candle_nn::ops::softmax_last_dim(&logits)?;
        let v = attn.matmul(&x.transpose(1, 2)?)?; // [B, n, C]
        let a = self
            .attr_transform2
            .forward(&e)?
            .relu()?
            .broadcast_left(b)?; // [B, n, A]
        let hidden = self
            .fc1
            .forward(&Tensor::cat(&[&v, &a], D::Minus1)?)?
            .relu()?;
        let gate = candle_nn::ops::sigmoid(&self.fc2.forward(&hidden)?)?;
        let out = (v * gate)?;
        let out = match &self.feature_fc {
            Some(fc) => fc.forward(&out)?,
            None => out,
        };
        let embedding = l2_normalize_rows(&out)?; // [B, n, D]
        (0..n)
            .map(|j| {
                Ok(HeadOutput {
                    embedding: embedding.narrow(1, j, 1)?.squeeze(1)?,
                    attention: Some(attn.narrow(1, j, 1)?.reshape((b, h, w))?),
                })
            })
            .collect()
    }

    /// The weights as plain vectors for the CPU engine (a snapshot: the
    /// BatchNorm of the image branch folded with its running statistics).
    pub(crate) fn engine_weights(&self) -> Result<crate::cpu::DotProductWeights> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?)
        };
        let linear = |l: &Linear| -> Result<(Vec<f32>, Vec<f32>)> {
            let bias = match l.bias() {
                Some(b) => flat(b)?,
                None => vec![0.0; l.weight().dim(0)?],
            };
            Ok((flat(l.weight())?, bias))
        };
        let (c, a) = (self.cfg.in_channels, self.cfg.attention_dim);
        let mut conv_w = flat(&self.conv.weight)?;
        let mut conv_b = flat(&self.conv.bias)?;
        if let Some(bn) = &self.bn {
            let mean = flat(bn.running_mean())?;
            let var = flat(bn.running_var())?;
            let (gamma, beta) = match bn.weight_and_bias() {
                Some((g, b)) => (flat(g)?, flat(b)?),
                None => (vec![1.0; a], vec![0.0; a]),
            };
            for o in 0..a {
                let s = gamma[o] / (var[o] + bn.eps() as f32).sqrt();
                conv_w[o * c..(o + 1) * c].iter_mut().for_each(|w| *w *= s);
                conv_b[o] = (conv_b[o] - mean[o]) * s + beta[o];
            }
        }
        Ok(crate::cpu::DotProductWeights {
            embedding: flat(self.attr_embedding.embeddings())?,
            transform1: linear(&self.attr_transform1)?,
            transform2: linear(&self.attr_transform2)?,
            conv: (conv_w, conv_b),
            fc1: linear(&self.fc1)?,
            fc2: linear(&self.fc2)?,
            feature_fc: self.feature_fc.as_ref().map(linear).transpose()?,
            channels: c,
            attention_dim: a,
            hidden: self.cfg.gate_hidden,
        })
    }

    /// `x` `[B, C, N]`, `img` `[B, A, N]` -> unnormalised output `[B, D]`, attention `[B, N]`.
    fn attend(&self, x: &Tensor, img: &Tensor, attr: &Tensor) -> Result<(Tensor, Tensor)> {
        let e = self.attr_embedding.forward(attr)?; // [B, A]
        let t = self.attr_transform1.forward(&e)?.tanh()?;
        let scale = (self.cfg.attention_dim as f64).sqrt();
        let logits = (t.unsqueeze(1)?.matmul(img)?.squeeze(1)? / scale)?; // [B, N]
        let (v, attn) = attention_pool(x, &logits)?;
        let a = self.attr_transform2.forward(&e)?.relu()?;
        let gate = candle_nn::ops::sigmoid(
            &self.fc2.forward(
                &self
                    .fc1
                    .forward(&Tensor::cat(&[&v, &a], D::Minus1)?)?
                    .relu()?,
            )?,
        )?;
        let out = (v * gate)?;
        let out = match &self.feature_fc {
            Some(fc) => fc.forward(&out)?,
            None => out,
        };
        Ok((out, attn))
    }
}

/// The ASENet_V2 head: tensors `attr_embedding.weight [n, A]`,
/// `attr_transform1/2 [A, A]`, `conv1 [A, C, 1, 1]`, `img_bn1` (BatchNorm,
/// eps 1e-5), `fc1 [G, C + A]`, `fc2 [C, G]`, optional `feature_fc [D, C]`.
#[derive(Debug, Clone)]
pub struct AsenV2(DotProductHead);

impl AsenV2 {
    /// Build from `vb`; `cfg.feature_fc` says whether `feature_fc` exists.
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        Ok(Self(DotProductHead::new(
            HeadKind::AsenV2,
            vb,
            cfg,
            "conv1",
            Some("img_bn1"),
        )?))
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        self.0.config()
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]`, attention `[B, H, W]`.
    /// With `train`, `img_bn1` normalises with the batch statistics.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        self.0.forward(x, attr, train)
    }

    /// `x` `[B, C, H, W]` -> one output per attribute (inference; BatchNorm in eval
    /// mode); `tanh(img_bn1(conv1(x)))` is computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        self.0.forward_attributes(x, attrs)
    }

    pub(crate) fn engine_weights(&self) -> Result<crate::cpu::DotProductWeights> {
        self.0.engine_weights()
    }
}
