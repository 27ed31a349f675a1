//! Inference building blocks shared by the backbones: convolutions with
//! BatchNorm folded into their weights at load time, TensorFlow "SAME"
//! padding, a fast depthwise convolution for the CPU, and convolutions as
//! sums over kernel taps ([`conv2d_taps`], [`depthwise_conv2d_taps`]): plain
//! candle ops with gradients on every device, used by the depthwise layer off
//! the CPU and by the trainable backbone of `asen-train`.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp1, Layout, Module, Shape, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use rayon::prelude::*;

use crate::error::{ModelError, Result};

/// Activation applied after a convolution (fused into the depthwise kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Identity.
    None,
    /// `max(x, 0)`.
    Relu,
    /// `min(max(x, 0), 6)`.
    Relu6,
}

impl Activation {
    /// Apply the activation to `x` (any shape).
    pub fn apply(self, x: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::None => Ok(x),
            Activation::Relu => x.relu(),
            Activation::Relu6 => x.clamp(0f32, 6f32),
        }
    }

    /// The activation as a clamp `(lo, hi)`: every one here is one.
    pub(crate) fn bounds(self) -> (f32, f32) {
        match self {
            Activation::None => (f32::NEG_INFINITY, f32::INFINITY),
            Activation::Relu => (0.0, f32::INFINITY),
            Activation::Relu6 => (0.0, 6.0),
        }
    }

    #[inline]
    pub(crate) fn scalar(self, v: f32) -> f32 {
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
pub enum Padding {
    /// The same number of zeros on every side.
    Symmetric(usize),
    /// TF "SAME": see [`same_padding`].
    Same,
}

impl Padding {
    /// `(before, after)` padding along one axis of length `size`.
    pub fn amounts(self, size: usize, kernel: usize, stride: usize) -> (usize, usize) {
        match self {
            Padding::Symmetric(p) => (p, p),
            Padding::Same => same_padding(size, kernel, stride),
        }
    }

    /// Output length along an axis of `size` for a `kernel` with `stride`,
    /// and the `(before, after)` padding that gives it.
    pub fn output(self, size: usize, kernel: usize, stride: usize) -> (usize, (usize, usize)) {
        let pad = self.amounts(size, kernel, stride);
        let out = (size + pad.0 + pad.1).saturating_sub(kernel) / stride + 1;
        (out, pad)
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
fn fold_bn(
    weight: &Tensor,
    bn_vb: &VarBuilder,
    c_out: usize,
    eps: f64,
) -> Result<(Tensor, Tensor)> {
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
///
/// On the CPU (f32) it runs as im2col (skipped for 1x1 stride-1 convs, which
/// are a plain matmul on the NCHW map) + one batched gemm + a fused in-place
/// bias-and-activation pass; elsewhere it uses candle's `conv2d`.
#[derive(Debug, Clone)]
pub(crate) struct ConvBnAct {
    conv: Conv2d,
    /// `[C_out, C_in * k * k]`, the gemm view of the folded weight.
    weight_2d: Tensor,
    bias: std::sync::Arc<Vec<f32>>,
    kernel: usize,
    stride: usize,
    padding: Padding,
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
        let pad = match padding {
            Padding::Symmetric(p) => p,
            Padding::Same => 0,
        };
        let cfg = Conv2dConfig {
            padding: pad,
            stride,
            ..Default::default()
        };
        let conv = conv_bn_folded(conv_vb, bn_vb, (c_in, c_out, kernel), cfg, eps)?;
        let weight_2d = conv
            .weight()
            .reshape((c_out, c_in * kernel * kernel))?
            .contiguous()?;
        let bias = match conv.bias() {
            Some(b) => b.to_dtype(DType::F32)?.to_vec1()?,
            None => vec![0.0; c_out],
        };
        Ok(Self {
            conv,
            weight_2d,
            bias: std::sync::Arc::new(bias),
            kernel,
            stride,
            padding,
            act,
        })
    }

    /// candle's `conv2d`: the reference path and the non-CPU path.
    fn forward_candle(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match self.padding {
            Padding::Same if self.kernel > 1 || self.stride > 1 => {
                let x = pad_same(x, self.kernel, self.stride).map_err(candle_core::Error::wrap)?;
                self.conv.forward(&x)?
            }
            _ => self.conv.forward(x)?,
        };
        self.act.apply(y)
    }
}

impl ConvBnAct {
    /// The same convolution for the CPU engine (weight packed once).
    pub(crate) fn to_engine(&self) -> Result<crate::cpu::Conv> {
        let weight = self.conv.weight();
        let (_, c_in, _, _) = weight.dims4()?;
        let weight: Vec<f32> = weight.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        Ok(crate::cpu::Conv::new(
            &weight,
            (c_in, self.kernel, self.stride),
            self.padding,
            self.bias.as_ref().clone(),
            self.act,
        ))
    }
}

impl Module for ConvBnAct {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if !(x.device().is_cpu() && x.dtype() == DType::F32) {
            return self.forward_candle(x);
        }
        let (b, c, h, w) = x.dims4()?;
        let k = self.kernel;
        let pad_h = self.padding.amounts(h, k, self.stride);
        let pad_w = self.padding.amounts(w, k, self.stride);
        let oh = (h + pad_h.0 + pad_h.1).saturating_sub(k) / self.stride + 1;
        let ow = (w + pad_w.0 + pad_w.1).saturating_sub(k) / self.stride + 1;
        let (c_out, _) = self.weight_2d.dims2()?;
        let bias_act = BiasAct {
            bias: self.bias.clone(),
            act: self.act,
        };
        let trivial = k == 1 && self.stride == 1 && pad_h == (0, 0) && pad_w == (0, 0);
        if b == 1 && trivial {
            // [C_out, C] x [C, H*W]: the map itself is the gemm operand.
            let y = self.weight_2d.matmul(&x.reshape((c, h * w))?)?;
            y.inplace_op1(&bias_act)?;
            return y.reshape((1, c_out, oh, ow));
        }
        // One gemm for the whole batch: [C_out, K] x [K, B*OH*OW], then one
        // pass that adds the bias, applies the activation and writes NCHW.
        let op = Im2Col {
            kernel: k,
            stride: self.stride,
            pad_h,
            pad_w,
        };
        let cols = x.contiguous()?.apply_op1_no_bwd(&op)?;
        let y = self.weight_2d.matmul(&cols)?;
        if b == 1 {
            y.inplace_op1(&bias_act)?;
            return y.reshape((1, c_out, oh, ow));
        }
        let y = y.apply_op1_no_bwd(&ToBatchMajor { batch: b, bias_act })?;
        y.reshape((b, c_out, oh, ow))
    }
}

/// `[B, C, H, W]` -> `[C * k * k, B * OH * OW]`: rows in `(c, ky, kx)` order
/// (the order of a flattened `[C_out, C, k, k]` weight), columns image-major,
/// zero padding. With k = 1, stride 1 it is the `[C, B * H * W]` transpose.
struct Im2Col {
    kernel: usize,
    stride: usize,
    pad_h: (usize, usize),
    pad_w: (usize, usize),
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("im2col: expected an f32 input")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("im2col: input must be contiguous")
        };
        let data = &data[start..end];
        let (k, s) = (self.kernel, self.stride);
        let oh = (h + self.pad_h.0 + self.pad_h.1).saturating_sub(k) / s + 1;
        let ow = (w + self.pad_w.0 + self.pad_w.1).saturating_sub(k) / s + 1;
        let n = oh * ow;
        let bn = b * n;
        let mut out = vec![0f32; c * k * k * bn];
        let ranges = valid_ranges(k, s, self.pad_w.0, w, ow);
        let pt = self.pad_h.0 as isize;
        // One task per input channel: it owns rows c*k*k .. (c+1)*k*k.
        out.par_chunks_exact_mut(k * k * bn)
            .enumerate()
            .for_each(|(ch, dst)| {
                for img in 0..b {
                    let plane = &data[(img * c + ch) * h * w..(img * c + ch + 1) * h * w];
                    for ky in 0..k {
                        for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                            let r = ky * k + kx;
                            let row_out = &mut dst[r * bn + img * n..r * bn + (img + 1) * n];
                            let off = kx as isize - self.pad_w.0 as isize;
                            for (oy, o) in row_out.chunks_exact_mut(ow).enumerate() {
                                let iy = (oy * s + ky) as isize - pt;
                                if iy < 0 || iy >= h as isize || lo >= hi {
                                    continue; // stays zero
                                }
                                let row = &plane[iy as usize * w..(iy as usize + 1) * w];
                                if s == 1 {
                                    let st = (lo as isize + off) as usize;
                                    o[lo..hi].copy_from_slice(&row[st..st + (hi - lo)]);
                                } else {
                                    for (ox, v) in o.iter_mut().enumerate().take(hi).skip(lo) {
                                        *v = row[((ox * s) as isize + off) as usize];
                                    }
                                }
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((c * k * k, bn))))
    }
}

/// `[C, B * N]` -> `[B, C, N]` with `act(x + bias[c])` applied on the way.
struct ToBatchMajor {
    batch: usize,
    bias_act: BiasAct,
}

impl CustomOp1 for ToBatchMajor {
    fn name(&self) -> &'static str {
        "to-batch-major-bias-act"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("to-batch-major: expected f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("to-batch-major: input must be contiguous")
        };
        let data = &data[start..end];
        let (c, bn) = layout.shape().dims2()?;
        let b = self.batch;
        if b == 0 || bn % b != 0 || c != self.bias_act.bias.len() {
            candle_core::bail!("to-batch-major: cannot split [{c}, {bn}] into {b} images");
        }
        let n = bn / b;
        let mut out = vec![0f32; c * bn];
        out.par_chunks_exact_mut(n).enumerate().for_each(|(i, o)| {
            let (img, ch) = (i / c, i % c);
            o.copy_from_slice(&data[ch * bn + img * n..ch * bn + (img + 1) * n]);
            self.bias_act.row(o, ch);
        });
        Ok((CpuStorage::F32(out), Shape::from((b, c, n))))
    }
}

/// For each kernel column `kx`, the output columns `lo..hi` whose input
/// column `ox * stride + kx - pad_left` lies inside `0..w`.
fn valid_ranges(k: usize, s: usize, pad_left: usize, w: usize, ow: usize) -> Vec<(usize, usize)> {
    (0..k)
        .map(|kx| {
            let off = kx as isize - pad_left as isize;
            let lo = if off >= 0 {
                0
            } else {
                ((-off) as usize).div_ceil(s)
            };
            let hi = if (w as isize) - off <= 0 {
                0
            } else {
                ((w as isize - off) as usize).div_ceil(s).min(ow)
            };
            (lo.min(ow), hi.max(lo).min(ow))
        })
        .collect()
}

/// In place on `[.., C, N]`: `x = act(x + bias[c])`.
struct BiasAct {
    bias: std::sync::Arc<Vec<f32>>,
    act: Activation,
}

impl InplaceOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias-act: expected f32")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-act: input must be contiguous")
        };
        let dims = layout.shape().dims();
        let (c, n) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        if c != self.bias.len() {
            candle_core::bail!("bias-act: {c} channels for {} biases", self.bias.len());
        }
        data[start..end]
            .par_chunks_exact_mut(n)
            .enumerate()
            .for_each(|(i, row)| self.row(row, i % c));
        Ok(())
    }
}

impl BiasAct {
    #[inline]
    fn row(&self, row: &mut [f32], channel: usize) {
        let b = self.bias[channel];
        match self.act {
            Activation::None => row.iter_mut().for_each(|v| *v += b),
            Activation::Relu => row.iter_mut().for_each(|v| *v = (*v + b).max(0.0)),
            Activation::Relu6 => row.iter_mut().for_each(|v| *v = (*v + b).clamp(0.0, 6.0)),
        }
    }
}

/// `a = relu(a + b)` in place (the end of a ResNet bottleneck); candle ops
/// off the CPU.
pub(crate) fn add_relu(a: Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if a.device().is_cpu() && a.dtype() == DType::F32 && a.is_contiguous() && b.dims() == a.dims() {
        let b = b.contiguous()?;
        a.inplace_op2(&b, &AddRelu)?;
        Ok(a)
    } else {
        (a + b)?.relu()
    }
}

struct AddRelu;

impl candle_core::InplaceOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "add-relu"
    }

    fn cpu_fwd(
        &self,
        a: &mut CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (a, b) else {
            candle_core::bail!("add-relu: expected f32")
        };
        let (Some((sa, ea)), Some((sb, eb))) = (la.contiguous_offsets(), lb.contiguous_offsets())
        else {
            candle_core::bail!("add-relu: inputs must be contiguous")
        };
        a[sa..ea]
            .par_chunks_mut(4096)
            .zip(b[sb..eb].par_chunks(4096))
            .for_each(|(x, y)| {
                x.iter_mut()
                    .zip(y)
                    .for_each(|(x, &y)| *x = (*x + y).max(0.0))
            });
        Ok(())
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
    /// Off the CPU: the sum over the `k * k` taps of shifted views times
    /// per-channel weights (a few elementwise kernels), not candle's grouped
    /// `conv2d`, which runs one convolution per channel.
    fn forward_grouped(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = x.dim(1)?;
        let y = depthwise_conv2d_taps(x, &self.weight, self.stride, self.padding)
            .map_err(candle_core::Error::wrap)?;
        let y = y.broadcast_add(&self.bias.reshape((1, c, 1, 1))?)?;
        self.act.apply(y)
    }
}

impl DepthwiseConvBnAct {
    /// The same convolution for the CPU engine.
    pub(crate) fn to_engine(&self) -> crate::cpu::Depthwise {
        crate::cpu::Depthwise::new(
            &self.cpu.weight,
            self.cpu.bias.clone(),
            self.kernel,
            self.stride,
            self.padding,
            self.act,
        )
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
        let ranges = valid_ranges(k, s, self.pad_w.0, w, ow);
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

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
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

/// The inverted bottleneck shared by MobileNetV2 (`InvertedResidual`) and
/// EfficientNet-Lite (MBConv without squeeze-excitation): optional 1x1 expand,
/// depthwise, linear 1x1 projection, identity skip when `residual`
/// (stride 1 and in == out). The backbones differ only in names and padding.
#[derive(Debug, Clone)]
pub(crate) struct InvertedBottleneck {
    pub(crate) expand: Option<ConvBnAct>,
    pub(crate) depthwise: DepthwiseConvBnAct,
    pub(crate) project: ConvBnAct,
    pub(crate) residual: bool,
}

impl InvertedBottleneck {
    /// The same block for the CPU engine.
    pub(crate) fn to_engine(&self) -> Result<crate::cpu::Layer> {
        let expand = self.expand.as_ref().map(|e| e.to_engine()).transpose()?;
        Ok(crate::cpu::Layer::Bottleneck(crate::cpu::Bottleneck::new(
            expand,
            self.depthwise.to_engine(),
            self.project.to_engine()?,
            self.residual,
        )))
    }
}

/// A stem convolution, inverted bottlenecks and a head convolution (the
/// shape of MobileNetV2 and EfficientNet-Lite) as CPU-engine layers.
pub(crate) fn inverted_net_engine(
    stem: &ConvBnAct,
    blocks: &[InvertedBottleneck],
    head: &ConvBnAct,
) -> Result<Vec<crate::cpu::Layer>> {
    use crate::cpu::Layer;
    let mut layers = vec![Layer::Conv(stem.to_engine()?)];
    for block in blocks {
        layers.push(block.to_engine()?);
    }
    layers.push(Layer::Conv(head.to_engine()?));
    Ok(layers)
}

impl Module for InvertedBottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.expand {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let y = self.project.forward(&self.depthwise.forward(&y)?)?;
        if self.residual {
            y + x
        } else {
            Ok(y)
        }
    }
}

// Convolutions as sums over kernel taps, from differentiable candle ops
// only (reshape, pad, narrow, matmul, multiply): device-generic and with
// gradients. Inference uses the depthwise one off the CPU; the trainable
// backbone of `asen-train` builds every layer from them.

/// The `k * k` shifted views of `x` `[B, C, H, W]` seen by a `k`x`k` conv
/// with `stride` and `padding`, in `(ky, kx)` order, each `[B, C, OH, OW]`:
/// `view[ky * k + kx][.., oy, ox] = x_padded[.., oy * stride + ky, ox * stride + kx]`.
///
/// Strided views come from splitting each padded axis into `(rows, stride)`
/// (a reshape) and narrowing both parts, so only reshape, pad and narrow are
/// used: all have gradients on every device.
fn tap_views(x: &Tensor, kernel: usize, stride: usize, padding: Padding) -> Result<Vec<Tensor>> {
    let (b, c, h, w) = x.dims4()?;
    let s = stride.max(1);
    let (top, bottom) = padding.amounts(h, kernel, s);
    let (left, right) = padding.amounts(w, kernel, s);
    let (hp, wp) = (h + top + bottom, w + left + right);
    if hp < kernel || wp < kernel {
        return Err(ModelError::InvalidArgument(format!(
            "a {kernel}x{kernel} convolution needs a map of at least {kernel}x{kernel} after padding, got {hp}x{wp}"
        )));
    }
    let (oh, ow) = ((hp - kernel) / s + 1, (wp - kernel) / s + 1);
    // Every index used is below s * (o + (k - 1) / s): pad or trim to it.
    let (hq, wq) = (oh + (kernel - 1) / s, ow + (kernel - 1) / s);
    let fit = |x: Tensor, dim: usize, before: usize, after: usize, size: usize, target: usize| {
        let x = if before + after > 0 {
            x.pad_with_zeros(dim, before, after)?
        } else {
            x
        };
        if size < target {
            x.pad_with_zeros(dim, 0, target - size)
        } else if size > target {
            x.narrow(dim, 0, target)
        } else {
            Ok(x)
        }
    };
    let xp = fit(x.clone(), 2, top, bottom, hp, s * hq)?;
    let xp = fit(xp, 3, left, right, wp, s * wq)?;
    let mut views = Vec::with_capacity(kernel * kernel);
    if s == 1 {
        for ky in 0..kernel {
            for kx in 0..kernel {
                views.push(xp.narrow(2, ky, oh)?.narrow(3, kx, ow)?);
            }
        }
    } else {
        let x6 = xp.reshape((b, c, hq, s, wq, s))?;
        for ky in 0..kernel {
            for kx in 0..kernel {
                let v = x6
                    .narrow(2, ky / s, oh)?
                    .narrow(3, ky % s, 1)?
                    .narrow(4, kx / s, ow)?
                    .narrow(5, kx % s, 1)?
                    .reshape((b, c, oh, ow))?;
                views.push(v);
            }
        }
    }
    Ok(views)
}

/// Dense convolution without bias, `x` `[B, C, H, W]`, `weight`
/// `[O, C, k, k]` -> `[B, O, OH, OW]`: the taps stacked into
/// `[B * OH * OW, C * k * k]` (im2col from differentiable ops) times the
/// flattened weight; a 1x1 stride-1 conv is one plain matmul.
pub fn conv2d_taps(x: &Tensor, weight: &Tensor, stride: usize, padding: Padding) -> Result<Tensor> {
    let (o, c, k, _) = weight.dims4()?;
    let b = x.dim(0)?;
    let views = tap_views(x, k, stride, padding)?;
    let (_, _, oh, ow) = views[0].dims4()?;
    let n = oh * ow;
    // [B, C, k*k, OH, OW]: rows in (c, ky, kx) order, as the weight flattens.
    let cols = if views.len() == 1 {
        views[0].reshape((b, c, n))?
    } else {
        Tensor::stack(&views, 2)?.reshape((b, c * k * k, n))?
    };
    let rows = cols.transpose(1, 2)?.reshape((b * n, c * k * k))?;
    let y = rows.matmul(&weight.reshape((o, c * k * k))?.t()?)?;
    Ok(y.reshape((b, oh, ow, o))?.permute((0, 3, 1, 2))?)
}

/// Depthwise convolution without bias, `x` `[B, C, H, W]`, `weight`
/// `[C, 1, k, k]` -> `[B, C, OH, OW]`: the sum over taps of each shifted view
/// times its per-channel weight.
pub fn depthwise_conv2d_taps(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: Padding,
) -> Result<Tensor> {
    let (c, one, k, _) = weight.dims4()?;
    if one != 1 || x.dim(1)? != c {
        return Err(ModelError::InvalidArgument(format!(
            "depthwise weight of shape {:?} does not fit an input of shape {:?}",
            weight.dims(),
            x.dims()
        )));
    }
    let views = tap_views(x, k, stride, padding)?;
    let taps = weight.reshape((c, k * k))?;
    let mut acc: Option<Tensor> = None;
    for (t, view) in views.iter().enumerate() {
        let w = taps.narrow(1, t, 1)?.reshape((1, c, 1, 1))?;
        let term = view.broadcast_mul(&w)?;
        acc = Some(match acc {
            Some(a) => (a + term)?,
            None => term,
        });
    }
    acc.ok_or_else(|| ModelError::InvalidArgument("depthwise conv with an empty kernel".into()))
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
        let diff = crate::max_abs_diff(&fast, &slow);
        assert!(diff < 1e-5, "{h}x{w} k{k} s{s} {padding:?}: {diff}");
    }

    #[test]
    fn depthwise_kernel_matches_the_off_cpu_taps() {
        for (h, w) in [(7, 7), (8, 9), (1, 1), (14, 3)] {
            for (k, s) in [(3, 1), (3, 2), (5, 1), (5, 2)] {
                check_depthwise(h, w, k, s, Padding::Same, Activation::Relu6);
                check_depthwise(h, w, k, s, Padding::Symmetric(k / 2), Activation::None);
            }
        }
        check_depthwise(6, 6, 3, 1, Padding::Symmetric(0), Activation::Relu);
    }

    #[test]
    fn im2col_conv_matches_candle_conv() {
        let dev = Device::Cpu;
        for (k, s, padding, h, w) in [
            (3, 1, Padding::Symmetric(1), 9, 7),
            (3, 2, Padding::Symmetric(1), 9, 8),
            (7, 2, Padding::Symmetric(3), 17, 16),
            (1, 2, Padding::Symmetric(0), 9, 9),
            (1, 1, Padding::Symmetric(0), 5, 6),
            (3, 2, Padding::Same, 8, 8),
            (3, 2, Padding::Same, 1, 1),
        ] {
            let (ci, co) = (3, 4);
            let mut map = std::collections::HashMap::new();
            map.insert(
                "c.weight".to_string(),
                Tensor::randn(0f32, 1.0, (co, ci, k, k), &dev).unwrap(),
            );
            map.insert(
                "bn.weight".to_string(),
                Tensor::rand(0.5f32, 1.5, co, &dev).unwrap(),
            );
            map.insert(
                "bn.bias".to_string(),
                Tensor::randn(0f32, 0.1, co, &dev).unwrap(),
            );
            map.insert(
                "bn.running_mean".to_string(),
                Tensor::randn(0f32, 0.1, co, &dev).unwrap(),
            );
            map.insert(
                "bn.running_var".to_string(),
                Tensor::rand(0.5f32, 1.5, co, &dev).unwrap(),
            );
            let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
            let conv = ConvBnAct::new(
                vb.pp("c"),
                vb.pp("bn"),
                (ci, co, k, s),
                padding,
                1e-3,
                Activation::Relu6,
            )
            .unwrap();
            for batch in [1, 3] {
                let x = Tensor::randn(0f32, 1.0, (batch, ci, h, w), &dev).unwrap();
                let fast = conv.forward(&x).unwrap();
                let slow = conv.forward_candle(&x).unwrap();
                assert_eq!(fast.dims(), slow.dims(), "k{k} s{s} {padding:?}");
                let diff = crate::max_abs_diff(&fast, &slow);
                // Outputs lie in [0, 6] (ReLU6) and sum up to 7*7*ci products in a
                // different order: a few f32 ulps of 6 is ~1e-5, so allow 5e-5.
                assert!(diff < 5e-5, "batch {batch} k{k} s{s} {padding:?}: {diff}");
            }
        }
    }

    #[test]
    fn add_relu_matches_candle_ops() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (2, 3, 5, 5), &dev).unwrap();
        let want = (&a + &b).unwrap().relu().unwrap();
        let got = add_relu(a.copy().unwrap(), &b).unwrap();
        let diff = crate::max_abs_diff(&got, &want);
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn folded_bn_equals_conv_then_bn() {
        let dev = Device::Cpu;
        let (ci, co) = (3, 4);
        let mut map = std::collections::HashMap::new();
        map.insert(
            "c.weight".to_string(),
            Tensor::randn(0f32, 1.0, (co, ci, 3, 3), &dev).unwrap(),
        );
        map.insert(
            "bn.weight".to_string(),
            Tensor::rand(0.5f32, 1.5, co, &dev).unwrap(),
        );
        map.insert(
            "bn.bias".to_string(),
            Tensor::randn(0f32, 0.1, co, &dev).unwrap(),
        );
        map.insert(
            "bn.running_mean".to_string(),
            Tensor::randn(0f32, 0.1, co, &dev).unwrap(),
        );
        map.insert(
            "bn.running_var".to_string(),
            Tensor::rand(0.5f32, 1.5, co, &dev).unwrap(),
        );
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
        let expected =
            candle_nn::ModuleT::forward_t(&bn, &conv.forward(&x).unwrap(), false).unwrap();
        let got = folded.forward(&x).unwrap();
        let diff = crate::max_abs_diff(&got, &expected);
        assert!(diff < 1e-5, "{diff}");
    }
}
