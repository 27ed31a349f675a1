//! EfficientNet-Lite0 (no squeeze-excitation, ReLU6, fixed stem and head):
//! 1280 channels at stride 32. Mirrors the TensorFlow `efficientnet_lite`
//! builder as ported to PyTorch by `efficientnet_pytorch` / `efficientnet-lite`
//! (names `_conv_stem`, `_bn0`, `_blocks.N._expand_conv/_bn0/_depthwise_conv/
//! _bn1/_project_conv/_bn2`, `_conv_head`, `_bn1`, `_fc`). TensorFlow "SAME"
//! padding (extra pixel bottom/right), BatchNorm eps 1e-3 folded into the convs.

use candle_core::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::error::Result;
use crate::layers::{Activation, ConvBnAct, DepthwiseConvBnAct, InvertedBottleneck, Padding};

const BN_EPS: f64 = 1e-3;
/// (repeats, kernel, first stride, expansion, output channels) per stage.
const STAGES: [(usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
];
const STEM: usize = 32;
const HEAD: usize = 1280;

/// ImageNet-1k classes of the `_fc` classifier.
const CLASSES: usize = 1000;

/// MBConv without squeeze-excitation: optional 1x1 expand (`_expand_conv`,
/// `_bn0`, ReLU6), depthwise (`_depthwise_conv`, `_bn1`, ReLU6), linear 1x1
/// projection (`_project_conv`, `_bn2`), identity skip when stride 1 and
/// in == out.
fn mb_conv(
    vb: VarBuilder,
    (c_in, c_out): (usize, usize),
    (kernel, stride, expansion): (usize, usize, usize),
) -> Result<InvertedBottleneck> {
    let hidden = c_in * expansion;
    let pw = Padding::Symmetric(0);
    let expand = if expansion != 1 {
        Some(ConvBnAct::new(
            vb.pp("_expand_conv"),
            vb.pp("_bn0"),
            (c_in, hidden, 1, 1),
            pw,
            BN_EPS,
            Activation::Relu6,
        )?)
    } else {
        None
    };
    let depthwise = DepthwiseConvBnAct::new(
        vb.pp("_depthwise_conv"),
        vb.pp("_bn1"),
        (hidden, kernel, stride),
        Padding::Same,
        BN_EPS,
        Activation::Relu6,
    )?;
    let project = ConvBnAct::new(
        vb.pp("_project_conv"),
        vb.pp("_bn2"),
        (hidden, c_out, 1, 1),
        pw,
        BN_EPS,
        Activation::None,
    )?;
    Ok(InvertedBottleneck {
        expand,
        depthwise,
        project,
        residual: stride == 1 && c_in == c_out,
    })
}

/// EfficientNet-Lite0 features: `[B, 3, H, W]` -> `[B, 1280, H/32, W/32]`
/// (after `_conv_head`, `_bn1`, ReLU6).
#[derive(Debug, Clone)]
pub struct EfficientNetLite0 {
    stem: ConvBnAct,
    blocks: Vec<InvertedBottleneck>,
    head: ConvBnAct,
}

impl EfficientNetLite0 {
    /// BatchNorm epsilon of every layer.
    pub const BN_EPS: f64 = BN_EPS;
    /// (repeats, kernel, first stride, expansion, output channels) per stage.
    pub const STAGES: [(usize, usize, usize, usize, usize); 7] = STAGES;
    /// Channels of the stem convolution.
    pub const STEM: usize = STEM;
    /// Channels of the final 1x1 convolution.
    pub const HEAD: usize = HEAD;
    /// Output channels of the feature map.
    pub const OUT_CHANNELS: usize = HEAD;

    /// Read the `_conv_stem`, `_blocks.*`, `_conv_head` tensors under `vb`
    /// (BatchNorm folded; `_fc` is ignored, see [`Lite0Classifier`]).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let stem = ConvBnAct::new(
            vb.pp("_conv_stem"),
            vb.pp("_bn0"),
            (3, STEM, 3, 2),
            Padding::Same,
            BN_EPS,
            Activation::Relu6,
        )?;
        let mut blocks = Vec::new();
        let mut c_in = STEM;
        let vb_blocks = vb.pp("_blocks");
        for (repeats, kernel, stride, expansion, c_out) in STAGES {
            for i in 0..repeats {
                let s = if i == 0 { stride } else { 1 };
                let vb = vb_blocks.pp(blocks.len().to_string());
                blocks.push(mb_conv(vb, (c_in, c_out), (kernel, s, expansion))?);
                c_in = c_out;
            }
        }
        let head = ConvBnAct::new(
            vb.pp("_conv_head"),
            vb.pp("_bn1"),
            (c_in, HEAD, 1, 1),
            Padding::Symmetric(0),
            BN_EPS,
            Activation::Relu6,
        )?;
        Ok(Self { stem, blocks, head })
    }
}

impl EfficientNetLite0 {
    /// The network as CPU-engine layers.
    pub(crate) fn engine_layers(&self) -> Result<Vec<crate::cpu::Layer>> {
        crate::layers::inverted_net_engine(&self.stem, &self.blocks, &self.head)
    }
}

impl Module for EfficientNetLite0 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.stem.forward(x)?;
        let x = self.blocks.iter().try_fold(x, |x, b| b.forward(&x))?;
        self.head.forward(&x)
    }
}

/// The ImageNet-1k classifier of EfficientNet-Lite0 (`_fc`): global
/// average pooling then a linear layer, `[B, 1280, h, w]` -> logits `[B, 1000]`.
/// Only used to check the converted weights (dropout is a no-op at inference).
#[derive(Debug, Clone)]
pub struct Lite0Classifier {
    fc: Linear,
}

impl Lite0Classifier {
    /// Read `_fc.weight` `[1000, 1280]` and `_fc.bias` `[1000]` under `vb`.
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc: candle_nn::linear(HEAD, CLASSES, vb.pp("_fc"))?,
        })
    }

    /// Logits `[B, 1000]` (no softmax) from the feature map `[B, 1280, h, w]`.
    pub fn forward(&self, map: &Tensor) -> Result<Tensor> {
        let pooled = map.mean((2, 3))?;
        Ok(self.fc.forward(&pooled)?)
    }
}
