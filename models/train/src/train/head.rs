//! [`TrainableHead`]: a head's parameters as trainable variables, drawn
//! reproducibly from a seed or read from a model directory, with precise
//! BatchNorm statistics recomputed from features.

use std::sync::Mutex;

use asen_models::{pointwise_conv, Head, HeadConfig, HeadKind, ModelDir, ModelError, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::run::{load_var_map, save_var_map};
use crate::features::FeatureCache;

/// A `VarMap` backend that draws fresh variables from a seeded generator,
/// following the `Init` hints exactly as candle would, so that
/// initialisation is reproducible on the CPU.
struct SeededVarMap {
    map: VarMap,
    rng: Mutex<ChaCha8Rng>,
}

impl SeededVarMap {
    fn draw(&self, shape: &Shape, init: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f32> {
            (0..n).map(|_| rng.gen_range(lo..up) as f32).collect()
        };
        let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| normal(rng, n, mean, std);
        match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } if up > lo => uniform(&mut rng, lo, up),
            Init::Uniform { lo, .. } => vec![lo as f32; n],
            Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
            Init::Kaiming {
                dist,
                fan,
                non_linearity,
            } => {
                let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
                match dist {
                    candle_nn::init::NormalOrUniform::Uniform => {
                        let bound = 3f64.sqrt() * std;
                        uniform(&mut rng, -bound, bound)
                    }
                    candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
                }
            }
        }
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(var) = data.get(name) {
            let t = var.as_tensor();
            if t.shape() != &s {
                candle_core::bail!(
                    "variable {name} has shape {:?}, asked for {:?}",
                    t.shape(),
                    s
                );
            }
            return t.to_dtype(dtype);
        }
        let values = self.draw(&s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let t = var.as_tensor().clone();
        data.insert(name.to_string(), var);
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        match data.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype),
            None => candle_core::bail!("no variable {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map
            .data()
            .lock()
            .map(|d| d.contains_key(name))
            .unwrap_or(false)
    }
}

/// `n` draws from the normal distribution (Box-Muller), reproducible from `rng`.
pub(crate) fn normal(rng: &mut ChaCha8Rng, n: usize, mean: f64, std: f64) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
            let u2: f64 = rng.gen();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (mean + std * z) as f32
        })
        .collect()
}

/// A trainable head: its variables and the head reading them.
pub struct TrainableHead {
    kind: HeadKind,
    cfg: HeadConfig,
    map: VarMap,
    device: Device,
}

impl TrainableHead {
    /// Fresh parameters for `kind` with sizes `cfg`, drawn from `seed`.
    pub fn new(kind: HeadKind, cfg: &HeadConfig, seed: u64, device: &Device) -> Result<Self> {
        let map = VarMap::new();
        let backend = SeededVarMap {
            map: map.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone());
        // Building the head draws every variable into `map`, in a fixed order.
        Head::new(kind, vb, cfg)?;
        Ok(Self {
            kind,
            cfg: cfg.clone(),
            map,
            device: device.clone(),
        })
    }

    /// The parameters of a saved model directory (kind and sizes from its card).
    pub fn load(model: &ModelDir, device: &Device) -> Result<Self> {
        let head = Self::new(model.card.head, &model.card.head_config, 0, device)?;
        load_var_map(&head.map, model)?;
        Ok(head)
    }

    /// The head over the current parameters (BatchNorm statistics as stored).
    pub fn head(&self) -> Result<Head> {
        let vb = VarBuilder::from_varmap(&self.map, DType::F32, &self.device);
        Head::new(self.kind, vb, &self.cfg)
    }

    /// The trainable variables (BatchNorm running statistics excluded).
    pub fn trainable_vars(&self) -> Vec<Var> {
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut named: Vec<(&String, &Var)> = data
            .iter()
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// Save every variable (safetensors, names at the root as in a model directory).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        save_var_map(&self.map, path)
    }

    /// The variables (shared: a fine-tuned backbone adds its own under
    /// `backbonenet.`).
    pub(crate) fn var_map(&self) -> &VarMap {
        &self.map
    }

    /// Set BatchNorm running statistics (v2's `img_bn1`) to the exact mean and
    /// (unbiased) variance of its input over `features` entries `indices`
    /// (precise BatchNorm): training mode leaves a momentum average over
    /// batches seen while the weights moved, not the final weights' statistics.
    pub fn recompute_batch_norm(&self, features: &FeatureCache, indices: &[usize]) -> Result<()> {
        self.recompute_batch_norm_from(
            indices
                .chunks(128)
                .map(|chunk| features.get(chunk, &self.device)),
        )
    }

    /// [`Self::recompute_batch_norm`] over backbone feature maps `[B, C, H, W]`
    /// from any source (the fine-tuning backbone, say). Nothing happens for
    /// heads without BatchNorm or when `batches` is empty.
    pub fn recompute_batch_norm_from(
        &self,
        batches: impl IntoIterator<Item = Result<Tensor>>,
    ) -> Result<()> {
        if self.kind != HeadKind::AsenV2 {
            return Ok(());
        }
        let data = self.map.data().lock().unwrap_or_else(|p| p.into_inner());
        let get = |n: &str| {
            data.get(n)
                .map(|v| v.as_tensor().clone())
                .ok_or_else(|| ModelError::InvalidArgument(format!("head has no variable {n}")))
        };
        // One BatchNorm per part: the whole map, or the coarse and the fine
        // heads of a fine-grid head, each on its own channels.
        let fine = self.cfg.fine_channels;
        let prefixes: &[&str] = if fine > 0 { &["", "fine."] } else { &[""] };
        let mut parts = prefixes
            .iter()
            .map(|prefix| {
                let c = match *prefix {
                    "" => self.cfg.in_channels - fine,
                    _ => fine,
                };
                BatchStats::new(
                    get(&format!("{prefix}conv1.weight"))?,
                    get(&format!("{prefix}conv1.bias"))?,
                    c,
                    &self.device,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        for x in batches {
            let x = x?;
            if fine > 0 {
                let (coarse, fine_x) = asen_models::split_fine_map(&x, fine)?;
                parts[0].add(&coarse)?;
                parts[1].add(&fine_x)?;
            } else {
                parts[0].add(&x)?;
            }
        }
        for (prefix, part) in prefixes.iter().zip(parts) {
            let Some((mean, var)) = part.finish()? else {
                return Ok(());
            };
            for (name, value) in [("running_mean", mean), ("running_var", var)] {
                data.get(&format!("{prefix}img_bn1.{name}"))
                    .ok_or_else(|| ModelError::InvalidArgument("head has no img_bn1".into()))?
                    .set(&value)?;
            }
        }
        Ok(())
    }
}

/// Sums of a 1x1 convolution's outputs over batches of maps, per channel.
struct BatchStats {
    weight: Tensor,
    bias: Tensor,
    sum: Tensor,
    sum_sq: Tensor,
    count: usize,
}

impl BatchStats {
    /// `weight` `[A, C, 1, 1]` (any shape of `A * C` values), `bias` `[A]`.
    fn new(weight: Tensor, bias: Tensor, channels: usize, device: &Device) -> Result<Self> {
        let a = bias.elem_count();
        Ok(Self {
            weight: weight.reshape((a, channels))?,
            bias: bias.reshape((1, a, 1))?,
            sum: Tensor::zeros(a, DType::F64, device)?,
            sum_sq: Tensor::zeros(a, DType::F64, device)?,
            count: 0,
        })
    }

    /// Add the outputs on `x` `[B, C, H, W]`.
    fn add(&mut self, x: &Tensor) -> Result<()> {
        let x = x.flatten_from(2)?; // [B, C, N]
        let y = pointwise_conv(&x, &self.weight, &self.bias)?; // [B, A, N]
        let y = y.transpose(0, 1)?.flatten_from(1)?.to_dtype(DType::F64)?; // [A, B*N]
        self.count += y.dim(1)?;
        self.sum = (&self.sum + y.sum(1)?)?;
        self.sum_sq = (&self.sum_sq + y.sqr()?.sum(1)?)?;
        Ok(())
    }

    /// Mean and unbiased variance (f32), `None` when nothing was added.
    fn finish(self) -> Result<Option<(Tensor, Tensor)>> {
        if self.count == 0 {
            return Ok(None);
        }
        let n = self.count as f64;
        let mean = (&self.sum / n)?;
        let var = ((self.sum_sq / n)? - mean.sqr()?)?
            .affine(n / (n - 1.0).max(1.0), 0.0)?
            .clamp(0.0, f64::INFINITY)?;
        Ok(Some((
            mean.to_dtype(DType::F32)?,
            var.to_dtype(DType::F32)?,
        )))
    }
}

/// Unused-variable guard: a map from names to tensors of a head (tests).
#[cfg(test)]
fn snapshot(head: &TrainableHead) -> std::collections::HashMap<String, Vec<f32>> {
    let data = head.map.data().lock().unwrap();
    data.iter()
        .map(|(n, v)| {
            (
                n.clone(),
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn initialisation_is_reproducible_from_the_seed() {
        for kind in [
            HeadKind::AsenV1,
            HeadKind::AsenV2,
            HeadKind::Csn,
            HeadKind::Global,
        ] {
            let a = snapshot(&TrainableHead::new(kind, &cfg(), 7, &Device::Cpu).unwrap());
            let b = snapshot(&TrainableHead::new(kind, &cfg(), 7, &Device::Cpu).unwrap());
            let c = snapshot(&TrainableHead::new(kind, &cfg(), 8, &Device::Cpu).unwrap());
            assert_eq!(a, b, "{kind}");
            assert_ne!(a, c, "{kind}");
            assert!(!a.is_empty());
        }
    }
}
