//! Trainable forms of MobileNetV2 and EfficientNet-Lite0, for fine-tuning.
//!
//! The inference backbones fold BatchNorm into the convolutions and run
//! CPU-only kernels without a backward pass. Here every layer is made of
//! plain, device-generic candle ops that have gradients: a `k`x`k`
//! convolution is the sum over its `k * k` taps of a shifted, strided view of
//! the padded input (a matmul per image batch for dense convs, a
//! per-channel multiply for depthwise ones), BatchNorm is candle's
//! [`candle_nn::BatchNorm`] (batch statistics and running-statistic updates
//! in training mode), activations are ReLU6 clamps.
//!
//! Parameter names are those of the weight files (`features.*` for
//! MobileNetV2, `_conv_stem`, `_blocks.N.*`, `_conv_head` for Lite0), so a
//! [`VarBuilder`] over a `VarMap` loads the ImageNet weights into trainable
//! variables, and the folded inference [`asen_models::Backbone`] can be built from
//! the same names after training. BatchNorm running statistics live in the
//! `VarMap` itself (candle's `batch_norm` keeps the `Var` it was given), so
//! saving the map saves them.
//!
//! ResNet-50 is not supported: its stem max-pool (3x3, stride 2) has no
//! backward in candle 0.11, and it has no shipped ImageNet weights.

use candle_core::Tensor;
use candle_nn::{BatchNorm, BatchNormConfig, ModuleT, VarBuilder};

use asen_models::{
    conv2d_taps, depthwise_conv2d_taps, Activation, BackboneKind, EfficientNetLite0 as Lite0,
    MobileNetV2 as Mbv2, ModelError, Padding, Result,
};

/// A conv (dense or depthwise, no bias), a BatchNorm and an activation.
#[derive(Debug, Clone)]
struct ConvBnTrain {
    weight: Tensor,
    depthwise: bool,
    stride: usize,
    padding: Padding,
    bn: BatchNorm,
    act: Activation,
}

impl ConvBnTrain {
    /// Dense `(c_in, c_out, kernel, stride)` conv at `conv_vb`, BatchNorm at `bn_vb`.
    fn dense(
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
        (c_in, c_out, kernel, stride): (usize, usize, usize, usize),
        padding: Padding,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let weight = conv_vb.get((c_out, c_in, kernel, kernel), "weight")?;
        Ok(Self {
            weight,
            depthwise: false,
            stride,
            padding,
            bn: batch_norm(c_out, eps, bn_vb)?,
            act,
        })
    }

    /// Depthwise `(channels, kernel, stride)` conv at `conv_vb`, BatchNorm at `bn_vb`.
    fn depthwise(
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
        (channels, kernel, stride): (usize, usize, usize),
        padding: Padding,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let weight = conv_vb.get((channels, 1, kernel, kernel), "weight")?;
        Ok(Self {
            weight,
            depthwise: true,
            stride,
            padding,
            bn: batch_norm(channels, eps, bn_vb)?,
            act,
        })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = if self.depthwise {
            depthwise_conv2d_taps(x, &self.weight, self.stride, self.padding)?
        } else {
            conv2d_taps(x, &self.weight, self.stride, self.padding)?
        };
        let y = self.bn.forward_t(&y, train)?;
        Ok(self.act.apply(y)?)
    }
}

/// PyTorch's BatchNorm2d: affine, momentum 0.1, running statistics read
/// from (and updated in) `running_mean` / `running_var` under `vb`.
fn batch_norm(channels: usize, eps: f64, vb: VarBuilder) -> Result<BatchNorm> {
    Ok(candle_nn::batch_norm(
        channels,
        BatchNormConfig {
            eps,
            remove_mean: true,
            affine: true,
            momentum: 0.1,
        },
        vb,
    )?)
}

/// Inverted residual / MBConv without squeeze-excitation.
#[derive(Debug, Clone)]
struct BottleneckTrain {
    expand: Option<ConvBnTrain>,
    depthwise: ConvBnTrain,
    project: ConvBnTrain,
    residual: bool,
}

impl BottleneckTrain {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.expand {
            Some(e) => e.forward_t(x, train)?,
            None => x.clone(),
        };
        let y = self
            .project
            .forward_t(&self.depthwise.forward_t(&y, train)?, train)?;
        if self.residual {
            Ok((y + x)?)
        } else {
            Ok(y)
        }
    }
}

/// A trainable backbone: `[B, 3, H, W]` -> `[B, 1280, h, w]`, equal in eval
/// mode to the folded inference [`asen_models::Backbone`] of the same weights.
#[derive(Debug, Clone)]
pub struct TrainableBackbone {
    kind: BackboneKind,
    stem: ConvBnTrain,
    blocks: Vec<BottleneckTrain>,
    head: ConvBnTrain,
}

impl TrainableBackbone {
    /// Build `kind` from the tensors under `vb` (names as in the weight
    /// files). ResNet-50 is refused: see the module documentation.
    pub fn new(kind: BackboneKind, vb: VarBuilder) -> Result<Self> {
        match kind {
            BackboneKind::MobileNetV2 => mobilenet_v2(vb),
            BackboneKind::EfficientNetLite0 => efficientnet_lite0(vb),
            BackboneKind::ResNet50Layer3 => Err(ModelError::InvalidArgument(
                "fine-tuning resnet50_layer3 is not supported (candle 0.11 has no backward for its 3x3 stride-2 stem max-pool); fine-tune mobilenet_v2 or efficientnet_lite0".into(),
            )),
        }
    }

    /// Which architecture this is.
    pub fn kind(&self) -> BackboneKind {
        self.kind
    }

    /// Feature map `[B, 1280, h, w]` of a normalised batch `[B, 3, H, W]`.
    /// With `train`, every BatchNorm normalises with the batch statistics and
    /// updates its running statistics (momentum 0.1); without, it uses them.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match x.dims() {
            [_, 3, h, w] if *h > 0 && *w > 0 => {}
            dims => {
                return Err(ModelError::InvalidArgument(format!(
                    "backbone {} expects a [B, 3, H, W] batch, got shape {dims:?}",
                    self.kind
                )))
            }
        }
        let mut y = self.stem.forward_t(x, train)?;
        for block in &self.blocks {
            y = block.forward_t(&y, train)?;
        }
        self.head.forward_t(&y, train)
    }
}

/// MobileNetV2 `features.*` (torchvision layout, see `mobilenet_v2.rs`).
fn mobilenet_v2(vb: VarBuilder) -> Result<TrainableBackbone> {
    let vb = vb.pp("features");
    let eps = Mbv2::BN_EPS;
    let stem = ConvBnTrain::dense(
        vb.pp("0.0"),
        vb.pp("0.1"),
        (3, Mbv2::STEM, 3, 2),
        Padding::Symmetric(1),
        eps,
        Activation::Relu6,
    )?;
    let mut blocks = Vec::new();
    let mut c_in = Mbv2::STEM;
    for (t, c_out, n, s) in Mbv2::SETTINGS {
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let vb = vb.pp((blocks.len() + 1).to_string()).pp("conv");
            let hidden = c_in * t;
            let (expand, dw) = if t == 1 {
                (None, 0)
            } else {
                let e = ConvBnTrain::dense(
                    vb.pp("0"),
                    vb.pp("1"),
                    (c_in, hidden, 1, 1),
                    Padding::Symmetric(0),
                    eps,
                    Activation::Relu6,
                )?;
                (Some(e), 3)
            };
            let depthwise = ConvBnTrain::depthwise(
                vb.pp(dw.to_string()),
                vb.pp((dw + 1).to_string()),
                (hidden, 3, stride),
                Padding::Symmetric(1),
                eps,
                Activation::Relu6,
            )?;
            let project = ConvBnTrain::dense(
                vb.pp((dw + 3).to_string()),
                vb.pp((dw + 4).to_string()),
                (hidden, c_out, 1, 1),
                Padding::Symmetric(0),
                eps,
                Activation::None,
            )?;
            blocks.push(BottleneckTrain {
                expand,
                depthwise,
                project,
                residual: stride == 1 && c_in == c_out,
            });
            c_in = c_out;
        }
    }
    let last = (blocks.len() + 1).to_string();
    let head = ConvBnTrain::dense(
        vb.pp(format!("{last}.0")),
        vb.pp(format!("{last}.1")),
        (c_in, Mbv2::HEAD, 1, 1),
        Padding::Symmetric(0),
        eps,
        Activation::Relu6,
    )?;
    Ok(TrainableBackbone {
        kind: BackboneKind::MobileNetV2,
        stem,
        blocks,
        head,
    })
}

/// EfficientNet-Lite0 `_conv_stem`, `_blocks.*`, `_conv_head` (TF "SAME"
/// padding, see `efficientnet_lite.rs`); `_fc` is not part of the backbone.
fn efficientnet_lite0(vb: VarBuilder) -> Result<TrainableBackbone> {
    let eps = Lite0::BN_EPS;
    let stem = ConvBnTrain::dense(
        vb.pp("_conv_stem"),
        vb.pp("_bn0"),
        (3, Lite0::STEM, 3, 2),
        Padding::Same,
        eps,
        Activation::Relu6,
    )?;
    let mut blocks = Vec::new();
    let mut c_in = Lite0::STEM;
    for (repeats, kernel, stride, expansion, c_out) in Lite0::STAGES {
        for i in 0..repeats {
            let s = if i == 0 { stride } else { 1 };
            let vb = vb.pp("_blocks").pp(blocks.len().to_string());
            let hidden = c_in * expansion;
            let expand = if expansion != 1 {
                Some(ConvBnTrain::dense(
                    vb.pp("_expand_conv"),
                    vb.pp("_bn0"),
                    (c_in, hidden, 1, 1),
                    Padding::Symmetric(0),
                    eps,
                    Activation::Relu6,
                )?)
            } else {
                None
            };
            let depthwise = ConvBnTrain::depthwise(
                vb.pp("_depthwise_conv"),
                vb.pp("_bn1"),
                (hidden, kernel, s),
                Padding::Same,
                eps,
                Activation::Relu6,
            )?;
            let project = ConvBnTrain::dense(
                vb.pp("_project_conv"),
                vb.pp("_bn2"),
                (hidden, c_out, 1, 1),
                Padding::Symmetric(0),
                eps,
                Activation::None,
            )?;
            blocks.push(BottleneckTrain {
                expand,
                depthwise,
                project,
                residual: s == 1 && c_in == c_out,
            });
            c_in = c_out;
        }
    }
    let head = ConvBnTrain::dense(
        vb.pp("_conv_head"),
        vb.pp("_bn1"),
        (c_in, Lite0::HEAD, 1, 1),
        Padding::Symmetric(0),
        eps,
        Activation::Relu6,
    )?;
    Ok(TrainableBackbone {
        kind: BackboneKind::EfficientNetLite0,
        stem,
        blocks,
        head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The tap convolutions equal candle's conv2d (dense and grouped), for
    /// odd and even sizes, strides 1 and 2, symmetric and "SAME" padding.
    #[test]
    fn tap_convs_match_candle_conv2d() {
        let dev = Device::Cpu;
        for (h, w, k, s, padding) in [
            (9, 8, 3, 2, Padding::Symmetric(1)),
            (8, 8, 3, 2, Padding::Same),
            (7, 10, 5, 2, Padding::Same),
            (6, 5, 3, 1, Padding::Symmetric(1)),
            (6, 6, 5, 1, Padding::Same),
            (5, 5, 1, 1, Padding::Symmetric(0)),
        ] {
            let x = Tensor::randn(0f32, 1.0, (2, 4, h, w), &dev).unwrap();
            let (top, bottom) = padding.amounts(h, k, s);
            let (left, right) = padding.amounts(w, k, s);
            let xp = x
                .pad_with_zeros(2, top, bottom)
                .unwrap()
                .pad_with_zeros(3, left, right)
                .unwrap();
            let wd = Tensor::randn(0f32, 1.0, (6, 4, k, k), &dev).unwrap();
            let expect = xp.conv2d(&wd, 0, s, 1, 1).unwrap();
            let got = conv2d_taps(&x, &wd, s, padding).unwrap();
            assert_eq!(got.dims(), expect.dims());
            assert!(max_diff(&got, &expect) < 1e-4, "dense {h}x{w} k{k} s{s}");
            let wg = Tensor::randn(0f32, 1.0, (4, 1, k, k), &dev).unwrap();
            let expect = xp.conv2d(&wg, 0, s, 1, 4).unwrap();
            let got = depthwise_conv2d_taps(&x, &wg, s, padding).unwrap();
            assert_eq!(got.dims(), expect.dims());
            assert!(
                max_diff(&got, &expect) < 1e-4,
                "depthwise {h}x{w} k{k} s{s}"
            );
        }
    }

    /// Training-mode BatchNorm (batch statistics) has the right gradient
    /// with respect to its input and affine parameters: central finite
    /// differences in f64 (the running statistics move on every call, which
    /// the training-mode output does not depend on).
    #[test]
    fn training_batch_norm_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F64, &dev);
        let bn = batch_norm(3, 1e-5, vb).unwrap();
        // A non-trivial scale, so that the weight's gradient is checked away from 1.
        map.data().lock().unwrap()["weight"]
            .set(&Tensor::new(&[0.5f64, 1.5, -0.7], &dev).unwrap())
            .unwrap();
        let x = Var::randn(0f64, 1.0, (4, 3, 3, 2), &dev).unwrap();
        let probe = Tensor::randn(0f64, 1.0, (4, 3, 3, 2), &dev).unwrap();
        let f = |x: &Tensor| -> Tensor {
            let y = bn.forward_t(x, true).unwrap();
            (y.tanh().unwrap() * &probe).unwrap().sum_all().unwrap()
        };
        let grads = f(x.as_tensor()).backward().unwrap();
        let vars = map.data().lock().unwrap().clone();
        for (name, var) in [
            ("input", &x),
            ("weight", &vars["weight"]),
            ("bias", &vars["bias"]),
        ] {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let loss = || f(x.as_tensor()).to_scalar::<f64>().unwrap();
            check_gradient(var, grad, loss, 1, 1e-5, name);
        }
    }

    /// Central finite differences of a scalar function of the depthwise
    /// weight and input agree with the backward pass (f64).
    #[test]
    fn depthwise_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        for (k, s, padding) in [(3, 2, Padding::Symmetric(1)), (5, 1, Padding::Same)] {
            let x = Var::randn(0f64, 1.0, (2, 3, 7, 6), &dev).unwrap();
            let w = Var::randn(0f64, 1.0, (3, 1, k, k), &dev).unwrap();
            let probe = {
                let y = depthwise_conv2d_taps(x.as_tensor(), w.as_tensor(), s, padding).unwrap();
                Tensor::randn(0f64, 1.0, y.shape(), &dev).unwrap()
            };
            // A non-linear scalar so that the check is not trivially linear.
            let loss = || {
                let y = depthwise_conv2d_taps(x.as_tensor(), w.as_tensor(), s, padding).unwrap();
                (y.tanh().unwrap() * &probe).unwrap().sum_all().unwrap()
            };
            let grads = loss().backward().unwrap();
            for (name, var) in [("weight", &w), ("input", &x)] {
                let grad = grads.get(var.as_tensor()).unwrap();
                let value = || loss().to_scalar::<f64>().unwrap();
                check_gradient(var, grad, value, 7, 1e-6, &format!("k{k} s{s} {name}"));
            }
        }
    }

    /// Central finite differences (step 1e-5) of `loss`, re-evaluated with
    /// every `stride`-th element of `var` moved up and down in place, agree
    /// with the backward pass's `grad` within `tol` (relative, plus `tol`).
    fn check_gradient(
        var: &Var,
        grad: &Tensor,
        loss: impl Fn() -> f64,
        stride: usize,
        tol: f64,
        label: &str,
    ) {
        let g = grad.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let base = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let shape = var.as_tensor().shape().clone();
        let eps = 1e-5;
        let at = |i: usize, delta: f64| {
            let mut v = base.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, &shape, var.device()).unwrap())
                .unwrap();
            let value = loss();
            var.set(&Tensor::from_vec(base.clone(), &shape, var.device()).unwrap())
                .unwrap();
            value
        };
        for i in (0..base.len()).step_by(stride) {
            let numeric = (at(i, eps) - at(i, -eps)) / (2.0 * eps);
            assert!(
                (numeric - g[i]).abs() < tol * (1.0 + numeric.abs()),
                "{label}[{i}]: numeric {numeric}, backward {}",
                g[i]
            );
        }
    }

    fn imagenet_varmap(kind: BackboneKind) -> Option<(VarMap, TrainableBackbone)> {
        let dirs = [concat!(env!("CARGO_MANIFEST_DIR"), "/../weights")];
        let path = match kind.imagenet_weights_path(&dirs) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("skipping: {e}");
                return None;
            }
        };
        let dev = Device::Cpu;
        let mut map = VarMap::new();
        let net =
            TrainableBackbone::new(kind, VarBuilder::from_varmap(&map, DType::F32, &dev)).unwrap();
        map.load(&path).unwrap();
        Some((map, net))
    }

    /// In eval mode the trainable form equals the folded inference backbone
    /// on the shipped ImageNet weights (64x64 random input).
    #[test]
    fn eval_mode_equals_the_folded_backbone() {
        for kind in [BackboneKind::MobileNetV2, BackboneKind::EfficientNetLite0] {
            let Some((map, net)) = imagenet_varmap(kind) else {
                return;
            };
            let dev = Device::Cpu;
            let folded =
                asen_models::Backbone::new(kind, VarBuilder::from_varmap(&map, DType::F32, &dev))
                    .unwrap();
            let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
            let a = net.forward_t(&x, false).unwrap();
            let b = folded.forward(&x).unwrap();
            assert_eq!(a.dims(), &[2, 1280, 2, 2]);
            let d = max_diff(&a, &b);
            assert!(d < 1e-4, "{kind}: max difference {d}");
        }
    }

    /// One training-mode backward reaches every weight, BatchNorm scale and
    /// shift of the backbone, and the forward updated every running mean in
    /// the `VarMap` itself.
    #[test]
    fn gradients_reach_every_parameter_and_running_stats_update() {
        let Some((map, net)) = imagenet_varmap(BackboneKind::MobileNetV2) else {
            return;
        };
        let dev = Device::Cpu;
        let before: std::collections::HashMap<String, Tensor> = map
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
            .collect();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 64), &dev).unwrap();
        let y = net.forward_t(&x, true).unwrap();
        let probe = Tensor::randn(0f32, 1.0, y.shape(), &dev).unwrap();
        let loss = (y * probe).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = map.data().lock().unwrap();
        assert_eq!(data.len(), 52 + 52 * 4);
        for (name, var) in data.iter() {
            if name.ends_with("running_mean") || name.ends_with("running_var") {
                if name.ends_with("running_mean") {
                    assert!(
                        max_diff(var.as_tensor(), &before[name]) > 0.0,
                        "{name} was not updated"
                    );
                }
                continue;
            }
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let norm = g
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{name}: gradient norm {norm}"
            );
        }
    }

    #[test]
    fn resnet_is_refused_with_a_reason() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let e = TrainableBackbone::new(BackboneKind::ResNet50Layer3, vb).unwrap_err();
        assert!(e.to_string().contains("max-pool"), "{e}");
    }
}
