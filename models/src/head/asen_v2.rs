//! ASENet_V2 and (shared with `asen_pp`) the scaled dot-product attention
//! head: attribute embedding rows instead of one-hot masks, no `conv2`.
//!
//! With `x` `[B, C, H, W]`, attribute `c`, `N = H*W`, `A` the attention width:
//! ```text
//! e    = attr_embedding.weight[c]                          [B, A]   (a row)
//! img  = tanh(img_bn1(conv1(x)))                           [B, A, N] (v2; ASEN++: tanh(conv(x)))
//! t    = tanh(attr_transform1(e))                          [B, A]
//! attn = softmax_N(sum_A(t * img) / sqrt(A) + p)           [B, N]
//! v    = sum_N x * attn                                    [B, C]
//! gate = sigmoid(fc2(relu(fc1(cat[v, relu(attr_transform2(e))]))))   [B, C]
//! out  = v * gate, then feature_fc if present              [B, D]
//! emb  = l2norm(out)
//! ```
//! `p` is 0, or with `position_cells` a learned per-attribute bias over the
//! cells, `POSITION_GAIN * position_bias[c]` (see [`POSITION_GAIN`]).

use candle_core::{Tensor, D};
use candle_nn::{BatchNorm, Embedding, Linear, Module, ModuleT, VarBuilder};

use super::{
    attention_pool, check_attribute_list, check_attributes, check_features, l2_normalize_rows,
    Conv1x1, HeadConfig, HeadKind, HeadOutput, Supervised,
};
use crate::error::Result;

/// Gain on the stored position bias. The bias starts at zero and Adam moves
/// each parameter by about the learning rate per step, so unscaled it would
/// stay within about 1 of zero in a training run, against attention logits
/// of up to `sqrt(A)`; stored times this gain, it learns ten times as fast.
/// On the synthetic garments the sleeve attention peaked in its region on
/// 74 % of the test images without the gain, 99 % with it
/// (docs/results.md, "A position bias").
pub const POSITION_GAIN: f64 = 10.0;

/// A head whose position bias covers `expected` cells reads only maps of that
/// many: it was trained on one grid (candle's path and the CPU engine alike).
pub(crate) fn check_position_cells(expected: usize, cells: usize) -> Result<()> {
    if expected == cells {
        return Ok(());
    }
    Err(crate::error::ModelError::InvalidArgument(format!(
        "the head's position bias covers {expected} cells, the feature map has {cells} (was the model trained at another input size?)"
    )))
}

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
    /// `[n_attributes, cells]`, stored without [`POSITION_GAIN`].
    position_bias: Option<Tensor>,
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
            position_bias: match cfg.position_cells {
                0 => None,
                cells => Some(vb.get_with_hints(
                    (cfg.n_attributes, cells),
                    "position_bias",
                    candle_nn::Init::Const(0.0),
                )?),
            },
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
        let (out, attn) = self.attributes_raw(x, attrs)?;
        split_attributes(&l2_normalize_rows(&out)?, &attn, (b, h, w))
    }

    /// [`Self::forward_attributes`] before the L2 normalisation: outputs
    /// `[B, n, D]` and attention `[B, n, H*W]`.
    pub(crate) fn attributes_raw(&self, x: &Tensor, attrs: &[usize]) -> Result<(Tensor, Tensor)> {
        let (b, _, _) = check_features(self.kind, x, self.cfg.in_channels)?;
        check_attribute_list(self.kind, attrs, self.cfg.n_attributes)?;
        let x = x.flatten_from(2)?; // [B, C, N]
        let img = self.image_branch(&x, false)?; // [B, A, N]
        let ids: Vec<u32> = attrs.iter().map(|&a| a as u32).collect();
        let ids = Tensor::new(ids.as_slice(), x.device())?;
        let e = self.attr_embedding.forward(&ids)?; // [n, A]
        let t = self.attr_transform1.forward(&e)?.tanh()?;
        let scale = (self.cfg.attention_dim as f64).sqrt();
        let logits = (t.broadcast_left(b)?.matmul(&img)? / scale)?; // [B, n, N]
        let logits = match self.position_logits(&ids, x.dim(2)?)? {
            Some(p) => logits.broadcast_add(&p)?,
            None => logits,
        };
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
        Ok((out, attn))
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
            position: match &self.position_bias {
                Some(p) => Some(flat(&(p * POSITION_GAIN)?)?),
                None => None,
            },
            channels: c,
            attention_dim: a,
            hidden: self.cfg.gate_hidden,
        })
    }

    /// The position bias of the attributes `attr` (u32 `[k]`) with its gain,
    /// `[k, N]`, for a map of `cells` cells; `None` without one.
    fn position_logits(&self, attr: &Tensor, cells: usize) -> Result<Option<Tensor>> {
        let Some(bias) = &self.position_bias else {
            return Ok(None);
        };
        check_position_cells(self.cfg.position_cells, cells)?;
        Ok(Some((bias.index_select(attr, 0)? * POSITION_GAIN)?))
    }

    /// `x` `[B, C, N]`, `img` `[B, A, N]` -> unnormalised output `[B, D]`, attention `[B, N]`.
    fn attend(&self, x: &Tensor, img: &Tensor, attr: &Tensor) -> Result<(Tensor, Tensor)> {
        let e = self.attr_embedding.forward(attr)?; // [B, A]
        let t = self.attr_transform1.forward(&e)?.tanh()?;
        let scale = (self.cfg.attention_dim as f64).sqrt();
        let logits = (t.unsqueeze(1)?.matmul(img)?.squeeze(1)? / scale)?; // [B, N]
        let logits = match self.position_logits(attr, x.dim(2)?)? {
            Some(p) => (logits + p)?,
            None => logits,
        };
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

/// Embeddings `[B, n, D]` and attention `[B, n, H*W]` as one output per attribute.
fn split_attributes(
    embedding: &Tensor,
    attn: &Tensor,
    (b, h, w): (usize, usize, usize),
) -> Result<Vec<HeadOutput>> {
    (0..embedding.dim(1)?)
        .map(|j| {
            Ok(HeadOutput {
                embedding: embedding.narrow(1, j, 1)?.squeeze(1)?,
                attention: Some(attn.narrow(1, j, 1)?.reshape((b, h, w))?),
            })
        })
        .collect()
}

/// The ASENet_V2 head: tensors `attr_embedding.weight [n, A]`,
/// `attr_transform1/2 [A, A]`, `conv1 [A, C, 1, 1]`, `img_bn1` (BatchNorm,
/// eps 1e-5), `fc1 [G, C + A]`, `fc2 [C, G]`, optional `feature_fc [D, C]`.
#[derive(Debug, Clone)]
pub struct AsenV2 {
    cfg: HeadConfig,
    /// The head on the last layer's map (all of it without a fine grid).
    coarse: DotProductHead,
    /// With a fine grid (`cfg.fine_channels > 0`): the same head, under
    /// `fine.`, on the fine stage's channels (the last `fine_channels`).
    fine: Option<Box<DotProductHead>>,
}

impl AsenV2 {
    /// Build from `vb`; `cfg.feature_fc` says whether `feature_fc` exists.
    ///
    /// With `cfg.fine_channels > 0` the input is a map on the fine grid
    /// ([`crate::Backbone::with_fine_map`]): the last layer's channels
    /// repeated over each 2x2 block, then `fine_channels` of the fine stage
    /// (and the colour histogram). The head is then two: one on the last
    /// layer's map (taken back to its own grid), one under `fine.` on the
    /// fine channels alone, whose attention can only gather what its cells
    /// hold, so it has to find the region. The embedding is the normalised
    /// sum of both outputs; the attention map is the fine head's.
    ///
    /// With `cfg.position_cells > 0` the head whose attention is shown (the
    /// fine one on a fine grid) adds a learned bias per attribute and cell
    /// to its attention logits: where each attribute tends to be, learnt
    /// from the ranking loss alone (docs/results.md, "A position bias").
    pub fn new(vb: VarBuilder, cfg: &HeadConfig) -> Result<Self> {
        cfg.validate(HeadKind::AsenV2)?;
        let part = |in_channels, position_cells| HeadConfig {
            in_channels,
            fine_channels: 0,
            position_cells,
            ..cfg.clone()
        };
        let build = |vb: VarBuilder, cfg: &HeadConfig| {
            DotProductHead::new(HeadKind::AsenV2, vb, cfg, "conv1", Some("img_bn1"))
        };
        let fine = match cfg.fine_channels {
            0 => None,
            f => Some(Box::new(build(
                vb.pp("fine"),
                &part(f, cfg.position_cells),
            )?)),
        };
        let coarse_cells = match fine {
            Some(_) => 0,
            None => cfg.position_cells,
        };
        Ok(Self {
            cfg: cfg.clone(),
            coarse: build(vb, &part(cfg.in_channels - cfg.fine_channels, coarse_cells))?,
            fine,
        })
    }

    /// Its sizes.
    pub fn config(&self) -> &HeadConfig {
        &self.cfg
    }

    /// `x` `[B, C, H, W]`, `attr` u32 `[B]` -> embedding `[B, D]`, attention `[B, H, W]`.
    /// With `train`, `img_bn1` normalises with the batch statistics.
    pub fn forward(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<HeadOutput> {
        let Some(fine) = &self.fine else {
            return self.coarse.forward(x, attr, train);
        };
        let (a, b, attention) = self.both_raw(fine, x, attr, train)?;
        Ok(HeadOutput {
            embedding: l2_normalize_rows(&(a + b)?)?,
            attention: Some(attention),
        })
    }

    /// A fine-grid head's two raw outputs on `x` (coarse, fine) and the fine
    /// head's attention.
    fn both_raw(
        &self,
        fine: &DotProductHead,
        x: &Tensor,
        attr: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        check_features(HeadKind::AsenV2, x, self.cfg.in_channels)?;
        let (coarse_x, fine_x) = split_fine_map(x, self.cfg.fine_channels)?;
        let (a, _) = self.coarse.forward_raw(&coarse_x, attr, train)?;
        let (b, attention) = fine.forward_raw(&fine_x, attr, train)?;
        Ok((a, b, attention))
    }

    /// The embeddings a training loss is summed over: [`Self::forward`]'s,
    /// and with a fine grid also the fine head's alone (normalised). The
    /// second makes the fine head tell the attributes apart on its own, so
    /// its attention must find where each one is: trained on the sum alone,
    /// the last layer's map (every cell of which sees the whole garment)
    /// does the work and the fine attention stays anywhere
    /// (docs/results.md, "Region attention").
    pub fn forward_supervised(&self, x: &Tensor, attr: &Tensor, train: bool) -> Result<Supervised> {
        let Some(fine) = &self.fine else {
            let out = self.coarse.forward(x, attr, train)?;
            return Ok(Supervised {
                embeddings: vec![out.embedding],
                attention: out.attention,
            });
        };
        let (a, b, attention) = self.both_raw(fine, x, attr, train)?;
        Ok(Supervised {
            embeddings: vec![l2_normalize_rows(&(a + &b)?)?, l2_normalize_rows(&b)?],
            attention: Some(attention),
        })
    }

    /// `x` `[B, C, H, W]` -> one output per attribute (inference; BatchNorm in eval
    /// mode); `tanh(img_bn1(conv1(x)))` is computed once.
    pub fn forward_attributes(&self, x: &Tensor, attrs: &[usize]) -> Result<Vec<HeadOutput>> {
        let Some(fine) = &self.fine else {
            return self.coarse.forward_attributes(x, attrs);
        };
        let (b, h, w) = check_features(HeadKind::AsenV2, x, self.cfg.in_channels)?;
        let (coarse_x, fine_x) = split_fine_map(x, self.cfg.fine_channels)?;
        let (a, _) = self.coarse.attributes_raw(&coarse_x, attrs)?;
        let (f, attention) = fine.attributes_raw(&fine_x, attrs)?;
        split_attributes(&l2_normalize_rows(&(a + f)?)?, &attention, (b, h, w))
    }

    /// The head compiled for the CPU engine: one dot-product head, or with a
    /// fine grid the two.
    pub(crate) fn cpu_engine(&self) -> Result<crate::cpu::HeadEngine> {
        use crate::cpu::{DotProductEngine, HeadEngine};
        let coarse = DotProductEngine::new(self.coarse.engine_weights()?);
        Ok(match &self.fine {
            None => HeadEngine::Single(Box::new(coarse)),
            Some(fine) => HeadEngine::TwoGrid {
                coarse: Box::new(coarse),
                fine: Box::new(DotProductEngine::new(fine.engine_weights()?)),
                fine_channels: self.cfg.fine_channels,
            },
        })
    }
}

/// A map on the fine grid `[B, C, H, W]` as the two heads of a fine-grid
/// [`AsenV2`] read it: the last layer's channels (the first `C -
/// fine_channels`) on their own grid (one cell of each 2x2 block), and the
/// last `fine_channels` on the fine grid.
pub fn split_fine_map(x: &Tensor, fine_channels: usize) -> Result<(Tensor, Tensor)> {
    let (_, c, h, w) = x.dims4()?;
    let f = fine_channels;
    if f == 0 || f >= c {
        return Err(crate::ModelError::InvalidArgument(format!(
            "a fine map of {c} channels cannot end in {f} fine channels"
        )));
    }
    let every_other = |n: usize| -> Result<Tensor> {
        let ids: Vec<u32> = (0..n).step_by(2).map(|i| i as u32).collect();
        Ok(Tensor::new(ids.as_slice(), x.device())?)
    };
    let coarse = x
        .contiguous()?
        .index_select(&every_other(h)?, 2)?
        .index_select(&every_other(w)?, 3)?
        .narrow(1, 0, c - f)?
        .contiguous()?;
    Ok((coarse, x.narrow(1, c - f, f)?.contiguous()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    /// 12 channels: 8 of the last layer, then 4 fine ones.
    fn fine_cfg() -> HeadConfig {
        HeadConfig {
            in_channels: 12,
            n_attributes: 3,
            attention_dim: 8,
            gate_hidden: 6,
            embedding_dim: 10,
            feature_fc: true,
            fine_channels: 4,
            position_cells: 0,
        }
    }

    fn head_of(cfg: &HeadConfig) -> (VarMap, AsenV2) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let head = AsenV2::new(vb, cfg).unwrap();
        (varmap, head)
    }

    fn fine_head() -> (VarMap, AsenV2) {
        head_of(&fine_cfg())
    }

    /// A fine-grid head with a position bias over a 5x6 grid, its bias set
    /// to random values (it starts at zero).
    fn positioned_head() -> (VarMap, AsenV2) {
        let cfg = HeadConfig {
            position_cells: 30,
            ..fine_cfg()
        };
        let (varmap, _) = head_of(&cfg);
        let bias = Tensor::randn(0f32, 0.3, (3, 30), &Device::Cpu).unwrap();
        varmap.data().lock().unwrap()["fine.position_bias"]
            .set(&bias)
            .unwrap();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let head = AsenV2::new(vb, &cfg).unwrap();
        (varmap, head)
    }

    fn tensors_of(varmap: &VarMap) -> BTreeMap<String, Tensor> {
        varmap
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
            .collect()
    }

    use std::collections::BTreeMap;

    #[test]
    fn a_fine_grid_head_has_a_second_head_under_fine() {
        let (varmap, _) = fine_head();
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"conv1.weight".to_string()));
        assert!(names.contains(&"fine.conv1.weight".to_string()));
        assert_eq!(
            HeadConfig::infer(HeadKind::AsenV2, &tensors_of(&varmap)).unwrap(),
            fine_cfg()
        );
    }

    #[test]
    fn the_position_bias_sits_on_the_shown_head_and_is_read_back() {
        let (varmap, _) = positioned_head();
        let tensors = tensors_of(&varmap);
        assert_eq!(tensors["fine.position_bias"].dims(), [3, 30]);
        assert!(!tensors.contains_key("position_bias"));
        let cfg = HeadConfig::infer(HeadKind::AsenV2, &tensors).unwrap();
        assert_eq!(cfg.position_cells, 30);

        // Without a fine grid the one head holds it.
        let single = HeadConfig {
            in_channels: 8,
            fine_channels: 0,
            position_cells: 9,
            ..fine_cfg()
        };
        let (varmap, _) = head_of(&single);
        let tensors = tensors_of(&varmap);
        assert_eq!(tensors["position_bias"].dims(), [3, 9]);
        assert_eq!(
            HeadConfig::infer(HeadKind::AsenV2, &tensors).unwrap(),
            single
        );
    }

    #[test]
    fn the_position_bias_moves_the_attention_to_its_cell() {
        let (varmap, head) = positioned_head();
        let mut bias = vec![0f32; 3 * 30];
        bias[30 + 17] = 2.0; // attribute 1, cell 17: a logit 20 higher with the gain
        let bias = Tensor::from_vec(bias, (3, 30), &Device::Cpu).unwrap();
        varmap.data().lock().unwrap()["fine.position_bias"]
            .set(&bias)
            .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 12, 5, 6), &Device::Cpu).unwrap();
        let out = head.forward_attributes(&x, &[1]).unwrap();
        let maps = out[0].attention.as_ref().unwrap().flatten_from(1).unwrap();
        for map in maps.to_vec2::<f32>().unwrap() {
            assert!(map[17] > 0.99, "cell 17 holds {}", map[17]);
        }
    }

    #[test]
    fn a_map_of_another_size_than_the_position_bias_is_refused() {
        let (_, head) = positioned_head();
        let x = Tensor::randn(0f32, 1.0, (1, 12, 4, 4), &Device::Cpu).unwrap();
        let err = head.forward_attributes(&x, &[0]).unwrap_err();
        assert!(err.to_string().contains("covers 30 cells"), "{err}");
        let attr = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        assert!(head.forward(&x, &attr, false).is_err());
        let engine = head.cpu_engine().unwrap();
        assert!(engine.check_cells(16).is_err());
        assert!(engine.check_cells(30).is_ok());
    }

    #[test]
    fn the_cpu_engine_runs_both_heads_as_candle_does() {
        engine_matches_candle(&fine_head().1);
    }

    #[test]
    fn the_cpu_engine_adds_the_position_bias_as_candle_does() {
        engine_matches_candle(&positioned_head().1);
    }

    /// The CPU engine's outputs for `head` on every kernel path against
    /// candle's ops, on a 5x6 fine grid.
    fn engine_matches_candle(head: &AsenV2) {
        let engine = head.cpu_engine().unwrap();
        // An odd fine grid: the last layer's grid is 3x3.
        let (b, c, h, w) = (2, 12, 5, 6);
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &Device::Cpu).unwrap();
        let attrs = [2, 0];
        let want = head.forward_attributes(&x, &attrs).unwrap();
        let flat: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        for path in crate::KernelPath::available() {
            if path == crate::KernelPath::CandleOps {
                continue;
            }
            let s = crate::cpu::MapShape { b, h, w, c };
            let (emb, attn) = engine.forward(path, &flat, s, &attrs);
            for (j, out) in want.iter().enumerate() {
                let e: Vec<Vec<f32>> = out.embedding.to_vec2().unwrap();
                let a: Vec<Vec<f32>> = out
                    .attention
                    .as_ref()
                    .unwrap()
                    .flatten_from(1)
                    .unwrap()
                    .to_vec2()
                    .unwrap();
                for i in 0..b {
                    let d = engine.dim();
                    let got_e = &emb[(i * attrs.len() + j) * d..][..d];
                    let got_a = &attn[(i * attrs.len() + j) * h * w..][..h * w];
                    let diff = got_e
                        .iter()
                        .zip(&e[i])
                        .chain(got_a.iter().zip(&a[i]))
                        .map(|(x, y)| (x - y).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        diff < 1e-5,
                        "{path} image {i} attribute {}: {diff}",
                        attrs[j]
                    );
                }
            }
        }
    }

    #[test]
    fn the_attention_is_on_the_fine_grid_and_sums_to_one() {
        let (_, head) = fine_head();
        let x = Tensor::randn(0f32, 1.0, (2, 12, 6, 5), &Device::Cpu).unwrap();
        let attr = Tensor::new(&[0u32, 2], &Device::Cpu).unwrap();
        let out = head.forward(&x, &attr, false).unwrap();
        let a = out.attention.unwrap();
        assert_eq!(a.dims(), [2, 6, 5]);
        let sums = super::super::map_sums(&a);
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    }

    #[test]
    fn all_attributes_at_once_match_one_at_a_time() {
        let (_, head) = fine_head();
        let x = Tensor::randn(0f32, 1.0, (2, 12, 4, 4), &Device::Cpu).unwrap();
        let outs = head.forward_attributes(&x, &[1, 2]).unwrap();
        for (out, a) in outs.iter().zip([1u32, 2]) {
            let one = head
                .forward(&x, &Tensor::new(&[a, a], &Device::Cpu).unwrap(), false)
                .unwrap();
            let diff = crate::max_abs_diff(&out.embedding, &one.embedding);
            assert!(diff < 1e-5, "attribute {a}: {diff}");
        }
    }

    #[test]
    fn training_supervises_the_sum_and_the_fine_head_alone() {
        let (_, head) = fine_head();
        let x = Tensor::randn(0f32, 1.0, (2, 12, 4, 4), &Device::Cpu).unwrap();
        let attr = Tensor::new(&[0u32, 1], &Device::Cpu).unwrap();
        let parts = head.forward_supervised(&x, &attr, true).unwrap();
        assert_eq!(parts.embeddings.len(), 2);
        let whole = head.forward(&x, &attr, true).unwrap();
        let attention = parts.attention.expect("the fine head's attention");
        assert!(crate::max_abs_diff(&attention, &whole.attention.unwrap()) < 1e-6);
        assert!(crate::max_abs_diff(&parts.embeddings[0], &whole.embedding) < 1e-5);
    }

    #[test]
    fn the_last_layer_head_reads_one_cell_of_each_block() {
        // Channel 0 holds the cell's row, so the coarse part keeps rows 0, 2, 4.
        let rows: Vec<f32> = (0..2 * 5 * 4).map(|i| ((i / 4) % 5) as f32).collect();
        let x = Tensor::from_vec(rows, (1, 2, 5, 4), &Device::Cpu).unwrap();
        let (coarse, fine) = split_fine_map(&x, 1).unwrap();
        assert_eq!(coarse.dims(), [1, 1, 3, 2]);
        assert_eq!(fine.dims(), [1, 1, 5, 4]);
        let kept = coarse.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(kept, vec![0.0, 0.0, 2.0, 2.0, 4.0, 4.0]);
        assert!(split_fine_map(&x, 2).is_err());
    }

    #[test]
    fn a_fine_grid_needs_feature_fc_and_asen_v2() {
        let mut cfg = fine_cfg();
        cfg.feature_fc = false;
        cfg.embedding_dim = 12;
        assert!(cfg.validate(HeadKind::AsenV2).is_err());
        assert!(fine_cfg().validate(HeadKind::AsenV1).is_err());
    }
}
