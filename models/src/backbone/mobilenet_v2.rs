//! MobileNetV2 1.0 feature extractor (`features.0` .. `features.18`, no
//! classifier): 1280 channels at stride 32. Mirrors torchvision
//! `models/mobilenetv2.py` in its original flat layout
//! (`features.i.conv.{0,1,3,4,6,7}`): symmetric padding, BatchNorm eps 1e-5
//! folded into the convs, ReLU6.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;
use crate::layers::{Activation, ConvBnAct, DepthwiseConvBnAct, InvertedBottleneck, Padding};

const BN_EPS: f64 = 1e-5;
/// (expansion t, output channels c, repeats n, first stride s).
const SETTINGS: [(usize, usize, usize, usize); 7] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
];
const STEM: usize = 32;
const HEAD: usize = 1280;

/// torchvision `InvertedResidual`: optional 1x1 expand + ReLU6, 3x3
/// depthwise + ReLU6, 1x1 linear projection, residual when stride 1 and
/// in == out.
fn inverted_residual(
    vb: VarBuilder,
    c_in: usize,
    c_out: usize,
    stride: usize,
    t: usize,
) -> Result<InvertedBottleneck> {
    let vb = vb.pp("conv");
    let hidden = c_in * t;
    let pw = Padding::Symmetric(0);
    // Index of the depthwise conv inside `conv`: 0 without expansion, 3 with.
    let (expand, dw) = if t == 1 {
        (None, 0)
    } else {
        let e = ConvBnAct::new(
            vb.pp("0"),
            vb.pp("1"),
            (c_in, hidden, 1, 1),
            pw,
            BN_EPS,
            Activation::Relu6,
        )?;
        (Some(e), 3)
    };
    let depthwise = DepthwiseConvBnAct::new(
        vb.pp(dw.to_string()),
        vb.pp((dw + 1).to_string()),
        (hidden, 3, stride),
        Padding::Symmetric(1),
        BN_EPS,
        Activation::Relu6,
    )?;
    let project = ConvBnAct::new(
        vb.pp((dw + 3).to_string()),
        vb.pp((dw + 4).to_string()),
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

/// MobileNetV2 features: `[B, 3, H, W]` -> `[B, 1280, H/32, W/32]`
/// (after the last 1x1 conv, BN and ReLU6).
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    stem: ConvBnAct,
    blocks: Vec<InvertedBottleneck>,
    head: ConvBnAct,
}

impl MobileNetV2 {
    /// BatchNorm epsilon of every layer.
    pub const BN_EPS: f64 = BN_EPS;
    /// (expansion t, output channels c, repeats n, first stride s) per stage.
    pub const SETTINGS: [(usize, usize, usize, usize); 7] = SETTINGS;
    /// Channels of the stem convolution.
    pub const STEM: usize = STEM;
    /// Channels of the final 1x1 convolution.
    pub const HEAD: usize = HEAD;
    /// Output channels of the feature map.
    pub const OUT_CHANNELS: usize = HEAD;
    /// Blocks up to the end of the stride-16 stage (the 96-channel one).
    pub const FINE_BLOCKS: usize = 13;
    /// Channels of the stride-16 map ([`Self::forward_fine`]).
    pub const FINE_CHANNELS: usize = 96;

    /// Read `features.*` under `vb` (BatchNorm folded).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("features");
        let stem = ConvBnAct::new(
            vb.pp("0.0"),
            vb.pp("0.1"),
            (3, STEM, 3, 2),
            Padding::Symmetric(1),
            BN_EPS,
            Activation::Relu6,
        )?;
        let mut blocks = Vec::new();
        let mut c_in = STEM;
        for (t, c, n, s) in SETTINGS {
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                blocks.push(inverted_residual(
                    vb.pp((blocks.len() + 1).to_string()),
                    c_in,
                    c,
                    stride,
                    t,
                )?);
                c_in = c;
            }
        }
        let last = (blocks.len() + 1).to_string();
        let head = ConvBnAct::new(
            vb.pp(format!("{last}.0")),
            vb.pp(format!("{last}.1")),
            (c_in, HEAD, 1, 1),
            Padding::Symmetric(0),
            BN_EPS,
            Activation::Relu6,
        )?;
        Ok(Self { stem, blocks, head })
    }
}

impl MobileNetV2 {
    /// The network as CPU-engine layers.
    pub(crate) fn engine_layers(&self) -> Result<Vec<crate::cpu::Layer>> {
        crate::layers::inverted_net_engine(&self.stem, &self.blocks, &self.head)
    }
}

impl MobileNetV2 {
    /// The stride-16 map (after block [`Self::FINE_BLOCKS`], 96 channels)
    /// and the final stride-32 map, from one pass.
    pub fn forward_fine(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let x = self.stem.forward(x)?;
        let (early, late) = self.blocks.split_at(Self::FINE_BLOCKS);
        let fine = early.iter().try_fold(x, |x, b| b.forward(&x))?;
        let x = late.iter().try_fold(fine.clone(), |x, b| b.forward(&x))?;
        Ok((fine, self.head.forward(&x)?))
    }
}

impl Module for MobileNetV2 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.stem.forward(x)?;
        let x = self.blocks.iter().try_fold(x, |x, b| b.forward(&x))?;
        self.head.forward(&x)
    }
}
