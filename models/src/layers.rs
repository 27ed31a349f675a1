//! Inference building blocks shared by the backbones: convolutions with
//! BatchNorm folded into their weights at load time, TensorFlow "SAME"
//! padding, and a fast depthwise convolution for the CPU.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::error::Result;

/// Activation applied after a convolution (fused into the depthwise kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    fn apply(self, x: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::None => Ok(x),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }

    #[inline]
    fn scalar(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Relu6 => v.clamp(0.0, 6.0),
        }
    }
}

/// Zero padding around a feature map: symmetric (PyTorch) or TensorFlow
/// "SAME" (computed from the input size at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    /// The same number of zeros on every side.
    Symmetric(usize),
    /// TF "SAME": see [`same_padding`].
    Same,
}

impl Padding {
    /// `(before, after)` padding along one axis of length `size`.
    fn amounts(self, size: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric(p) => (p, p),
            Padding::Same => same_padding(size, kernel, stride),
        }
    }
}

/// TensorFlow "SAME" padding along one axis: total
/// `max((ceil(size / stride) - 1) * stride + kernel - size, 0)`, with
/// `total / 2` before and the rest (the extra pixel) after.
pub fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let stride = stride.max(1);
    let out = size.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

/// Zero-pad the last two dims of `[B, C, H, W]` for a TF "SAME" conv.
pub fn pad_same(x: &Tensor, kernel: usize, stride: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (top, bottom) = same_padding(h, kernel, stride);
    let (left, right) = same_padding(w, kernel, stride);
    let x = if top + bottom > 0 {
        x.pad_with_zeros(2, top, bottom)?
    } else {
        x.clone()
    };
    let x = if left + right > 0 {
        x.pad_with_zeros(3, left, right)?
    } else {
        x
    };
    Ok(x)
}

/// Load `conv.weight` (no bias) and the BatchNorm at `bn` and return one
/// convolution with the BatchNorm folded in:
/// `w' = w * gamma / sqrt(var + eps)`, `b' = beta - mean * gamma / sqrt(var + eps)`.
pub fn conv_bn_folded(
    conv_vb: VarBuilder,
    bn_vb: VarBuilder,
    (c_in, c_out, kernel): (usize, usize, usize),
    cfg: Conv2dConfig,
    eps: f64,
) -> Result<Conv2d> {
    let weight = conv_vb.get((c_out, c_in / cfg.groups, kernel, kernel), "weight")?;
    let (weight, bias) = fold_bn(&weight, &bn_vb, c_out, eps)?;
    Ok(Conv2d::new(weight, Some(bias), cfg))
}

/// Fold BatchNorm statistics read from `bn_vb` into a conv weight
/// `[C_out, ..]` without bias; returns the new weight and bias.
fn fold_bn(weight: &Tensor, bn_vb: &VarBuilder, c_out: usize, eps: f64) -> Result<(Tensor, Tensor)> {
    let gamma = bn_vb.get(c_out, "weight")?;
    let beta = bn_vb.get(c_out, "bias")?;
    let mean = bn_vb.get(c_out, "running_mean")?;
    let var = bn_vb.get(c_out, "running_var")?;
    let scale = (gamma / (var + eps)?.sqrt()?)?;
    let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
    let bias = (beta - (mean * &scale)?)?;
    Ok((weight, bias))
}

/// A dense convolution with folded BatchNorm, optional TF "SAME" padding and
/// an activation.
#[derive(Debug, Clone)]
pub(crate) struct ConvBnAct {
    conv: Conv2d,
    same: Option<(usize, usize)>,
    act: Activation,
}

impl ConvBnAct {
    /// Conv `k`x`k` (stride `stride`, no bias) followed by BatchNorm (eps `eps`).
    pub(crate) fn new(
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
        (c_in, c_out, kernel, stride): (usize, usize, usize, usize),
        padding: Padding,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let (pad, same) = match padding {
            Padding::Symmetric(p) => (p, None),
            Padding::Same => (0, Some((kernel, stride))),
        };
        let cfg = Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        let conv = conv_bn_folded(conv_vb, bn_vb, (c_in, c_out, kernel), cfg, eps)?;
        Ok(Self { conv, same, act })
    }
}

impl Module for ConvBnAct {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match self.same {
            Some((k, s)) if k > 1 || s > 1 => {
                let x = pad_same(x, k, s).map_err(candle_core::Error::wrap)?;
                self.conv.forward(&x)?
            }
            _ => self.conv.forward(x)?,
        };
        self.act.apply(y)
    }
}

/// Depthwise (groups == channels) convolution with folded BatchNorm and a
/// fused activation. On the CPU it runs a direct kernel parallel over
/// (batch, channel) planes; elsewhere it pads and calls candle's grouped conv.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseConvBnAct {
    weight: Tensor,
    bias: Tensor,
    kernel: usize,
    stride: usize,
    padding: Padding,
    act: Activation,
    cpu: std::sync::Arc<DepthwiseParams>,
}

#[derive(Debug)]
struct DepthwiseParams {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl DepthwiseConvBnAct {
    /// Depthwise `k`x`k` conv on `channels` channels (weight
    /// `[C, 1, k, k]`, no bias) followed by BatchNorm (eps `eps`).
    pub(crate) fn new(
        conv_vb: VarBuilder,
        bn_vb: VarBuilder,
        (channels, kernel, stride): (usize, usize, usize),
        padding: Padding,
        eps: f64,
        act: Activation,
    ) -> Result<Self> {
        let weight = conv_vb.get((channels, 1, kernel, kernel), "weight")?;
        let (weight, bias) = fold_bn(&weight, &bn_vb, channels, eps)?;
        Self::from_folded(weight, bias, stride, padding, act)
    }

    fn from_folded(
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: Padding,
        act: Activation,
    ) -> Result<Self> {
        let (_, _, kernel, _) = weight.dims4()?;
        let cpu = DepthwiseParams {
            weight: weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?,
            bias: bias.to_dtype(DType::F32)?.to_vec1()?,
        };
        Ok(Self {
            weight,
            bias,
            kernel,
            stride,
            padding,
            act,
            cpu: std::sync::Arc::new(cpu),
        })
    }

    /// Candle's grouped convolution: the reference path and the non-CPU path.
    fn forward_grouped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (_, c, h, w) = x.dims4()?;
        let (top, bottom) = self.padding.amounts(h, self.kernel, self.stride);
        let (left, right) = self.padding.amounts(w, self.kernel, self.stride);
        let x = x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let y = x.conv2d(&self.weight, 0, self.stride, 1, c)?;
        let y = y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        self.act.apply(y)
    }
}

impl Module for DepthwiseConvBnAct {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            let (_, c, h, w) = x.dims4()?;
            if c * self.kernel * self.kernel != self.cpu.weight.len() {
                candle_core::bail!(
                    "depthwise conv expects {} channels, got {c}",
                    self.cpu.bias.len()
                );
            }
            let op = DepthwiseOp {
                params: self.cpu.clone(),
                kernel: self.kernel,
                stride: self.stride,
                pad_h: self.padding.amounts(h, self.kernel, self.stride),
                pad_w: self.padding.amounts(w, self.kernel, self.stride),
                act: self.act,
            };
            x.contiguous()?.apply_op1_no_bwd(&op)
        } else {
            self.forward_grouped(x)
        }
    }
}

struct DepthwiseOp {
    params: std::sync::Arc<DepthwiseParams>,
    kernel: usize,
    stride: usize,
    pad_h: (usize, usize),
    pad_w: (usize, usize),
    act: Activation,
}

impl DepthwiseOp {
    fn out_size(&self, size: usize, pad: (usize, usize)) -> usize {
        (size + pad.0 + pad.1).saturating_sub(self.kernel) / self.stride + 1
    }

    /// One (batch, channel) plane: `input` is `h*w`, `out` is `oh*ow`.
    fn plane(&self, input: &[f32], (h, w): (usize, usize), out: &mut [f32], ow: usize, c: usize) {
        let k = self.kernel;
        let s = self.stride;
        let weight = &self.params.weight[c * k * k..(c + 1) * k * k];
        let bias = self.params.bias[c];
        let (pt, pl) = (self.pad_h.0 as isize, self.pad_w.0 as isize);
        out.fill(bias);
        // Valid output columns for each kernel column: 0 <= ox*s + kx - pl < w.
        let ranges: Vec<(usize, usize)> = (0..k)
            .map(|kx| {
                let off = kx as isize - pl;
                let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
                let hi = if (w as isize) - off <= 0 {
                    0
                } else {
                    ((w as isize - off) as usize).div_ceil(s).min(ow)
                };
                (lo.min(ow), hi.max(lo).min(ow))
            })
            .collect();
        for (oy, out_row) in out.chunks_exact_mut(ow).enumerate() {
            for ky in 0..k {
                let iy = (oy * s + ky) as isize - pt;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let row = &input[iy as usize * w..(iy as usize + 1) * w];
                for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                    if lo >= hi {
                        continue;
                    }
                    let wv = weight[ky * k + kx];
                    let off = kx as isize - pl;
                    if s == 1 {
                        let start = (lo as isize + off) as usize;
                        let src = &row[start..start + (hi - lo)];
                        for (o, &v) in out_row[lo..hi].iter_mut().zip(src) {
                            *o += wv * v;
                        }
                    } else {
                        for (ox, o) in out_row.iter_mut().enumerate().take(hi).skip(lo) {
                            *o += wv * row[((ox * s) as isize + off) as usize];
                        }
                    }
                }
            }
        }
        if self.act != Activation::None {
            for o in out.iter_mut() {
                *o = self.act.scalar(*o);
            }
        }
    }
}

impl CustomOp1 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let data = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("depthwise conv: expected an f32 input"),
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("depthwise conv: input must be contiguous")
        };
        let data = &data[start..end];
        let oh = self.out_size(h, self.pad_h);
        let ow = self.out_size(w, self.pad_w);
        let mut out = vec![0f32; b * c * oh * ow];
        out.par_chunks_exact_mut(oh * ow)
            .zip(data.par_chunks_exact(h * w))
            .enumerate()
            .for_each(|(i, (o, inp))| self.plane(inp, (h, w), o, ow, i % c));
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn same_padding_matches_tf() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(224, 5, 2), (1, 2));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(7, 5, 1), (2, 2));
        assert_eq!(same_padding(225, 3, 2), (1, 1));
        assert_eq!(same_padding(1, 1, 1), (0, 0));
    }

    fn check_depthwise(h: usize, w: usize, k: usize, s: usize, padding: Padding, act: Activation) {
        let dev = Device::Cpu;
        let c = 5;
        let x = Tensor::randn(0f32, 1.0, (2, c, h, w), &dev).unwrap();
        let wt = Tensor::randn(0f32, 1.0, (c, 1, k, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, c, &dev).unwrap();
        let dw = DepthwiseConvBnAct::from_folded(wt, b, s, padding, act).unwrap();
        let fast = dw.forward(&x).unwrap();
        let slow = dw.forward_grouped(&x).unwrap();
        assert_eq!(fast.dims(), slow.dims());
        let diff = (fast - slow)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{h}x{w} k{k} s{s} {padding:?}: {diff}");
    }

    #[test]
    fn depthwise_kernel_matches_grouped_conv() {
        for (h, w) in [(7, 7), (8, 9), (1, 1), (14, 3)] {
            for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
                check_depthwise(h, w, k, s, Padding::Same, Activation::Relu6);
                check_depthwise(h, w, k, s, Padding::Symmetric(k / 2), Activation::None);
            }
        }
        check_depthwise(6, 6, 3, 1, Padding::Symmetric(0), Activation::Relu);
    }

    #[test]
    fn folded_bn_equals_conv_then_bn() {
        let dev = Device::Cpu;
        let (ci, co) = (3, 4);
        let mut map = std::collections::HashMap::new();
        map.insert("c.weight".to_string(), Tensor::randn(0f32, 1.0, (co, ci, 3, 3), &dev).unwrap());
        map.insert("bn.weight".to_string(), Tensor::rand(0.5f32, 1.5, co, &dev).unwrap());
        map.insert("bn.bias".to_string(), Tensor::randn(0f32, 0.1, co, &dev).unwrap());
        map.insert("bn.running_mean".to_string(), Tensor::randn(0f32, 0.1, co, &dev).unwrap());
        map.insert("bn.running_var".to_string(), Tensor::rand(0.5f32, 1.5, co, &dev).unwrap());
        let vb = VarBuilder::from_tensors(map.clone(), DType::F32, &dev);
        let cfg = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let folded = conv_bn_folded(vb.pp("c"), vb.pp("bn"), (ci, co, 3), cfg, 1e-5).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, ci, 6, 5), &dev).unwrap();
        let conv = Conv2d::new(map["c.weight"].clone(), None, cfg);
        let bn = candle_nn::BatchNorm::new(
            co,
            map["bn.running_mean"].clone(),
            map["bn.running_var"].clone(),
            map["bn.weight"].clone(),
            map["bn.bias"].clone(),
            1e-5,
        )
        .unwrap();
        let expected = candle_nn::ModuleT::forward_t(&bn, &conv.forward(&x).unwrap(), false).unwrap();
        let got = folded.forward(&x).unwrap();
        let diff = (got - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
