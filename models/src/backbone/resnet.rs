//! ResNet-50 truncated after `layer3` (stride 16, 1024 channels): the ASEN
//! backbone. Mirrors torchvision `models/resnet.py` (`Bottleneck` with the
//! stride on the 3x3 conv, "ResNet v1.5"); parameter names are torchvision's
//! (`conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`, ...). No
//! `layer4`, no `fc`. Every BatchNorm (eps 1e-5) is folded into its conv.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::cpu::{Layer, MaxPool};
use crate::error::Result;
use crate::layers::{add_relu, Activation, ConvBnAct, Padding};

const BN_EPS: f64 = 1e-5;

/// `conv{i}` + `bn{i}` under `vb`, folded.
fn conv_bn(
    vb: &VarBuilder,
    conv: &str,
    bn: &str,
    shape: (usize, usize, usize, usize),
    act: Activation,
) -> Result<ConvBnAct> {
    let padding = Padding::Symmetric(shape.2 / 2);
    ConvBnAct::new(vb.pp(conv), vb.pp(bn), shape, padding, BN_EPS, act)
}

/// torchvision `Bottleneck`: 1x1 reduce, 3x3 (stride here), 1x1 expand x4,
/// plus the identity or a strided 1x1 projection, then ReLU.
#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: ConvBnAct,
    conv2: ConvBnAct,
    conv3: ConvBnAct,
    downsample: Option<ConvBnAct>,
}

impl Bottleneck {
    fn new(vb: VarBuilder, c_in: usize, width: usize, stride: usize) -> Result<Self> {
        let c_out = width * 4;
        let conv1 = conv_bn(&vb, "conv1", "bn1", (c_in, width, 1, 1), Activation::Relu)?;
        let conv2 = conv_bn(
            &vb,
            "conv2",
            "bn2",
            (width, width, 3, stride),
            Activation::Relu,
        )?;
        let conv3 = conv_bn(&vb, "conv3", "bn3", (width, c_out, 1, 1), Activation::None)?;
        let downsample = if stride != 1 || c_in != c_out {
            let ds = vb.pp("downsample");
            Some(conv_bn(
                &ds,
                "0",
                "1",
                (c_in, c_out, 1, stride),
                Activation::None,
            )?)
        } else {
            None
        };
        Ok(Self {
            conv1,
            conv2,
            conv3,
            downsample,
        })
    }
}

impl Bottleneck {
    fn to_engine(&self) -> Result<Layer> {
        Ok(Layer::Residual {
            body: vec![
                Layer::Conv(self.conv1.to_engine()?),
                Layer::Conv(self.conv2.to_engine()?),
            ],
            last: self.conv3.to_engine()?,
            shortcut: self
                .downsample
                .as_ref()
                .map(|d| d.to_engine())
                .transpose()?,
            act: Activation::Relu,
        })
    }
}

impl Module for Bottleneck {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self
            .conv3
            .forward(&self.conv2.forward(&self.conv1.forward(x)?)?)?;
        let shortcut = match &self.downsample {
            Some(ds) => ds.forward(x)?,
            None => x.clone(),
        };
        add_relu(y, &shortcut)
    }
}

/// One torchvision `layerN`: `blocks` bottlenecks, the first one strided.
#[derive(Debug, Clone)]
struct Stage {
    blocks: Vec<Bottleneck>,
}

impl Stage {
    fn new(
        vb: VarBuilder,
        c_in: usize,
        width: usize,
        blocks: usize,
        stride: usize,
    ) -> Result<Self> {
        let mut out = Vec::with_capacity(blocks);
        for i in 0..blocks {
            let (c, s) = if i == 0 {
                (c_in, stride)
            } else {
                (width * 4, 1)
            };
            out.push(Bottleneck::new(vb.pp(i.to_string()), c, width, s)?);
        }
        Ok(Self { blocks: out })
    }
}

impl Module for Stage {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.blocks.iter().try_fold(x.clone(), |x, b| b.forward(&x))
    }
}

/// ResNet-50 up to `layer3`: `[B, 3, H, W]` -> `[B, 1024, H/16, W/16]`.
#[derive(Debug, Clone)]
pub struct ResNet50Layer3 {
    stem: ConvBnAct,
    layer1: Stage,
    layer2: Stage,
    layer3: Stage,
}

impl ResNet50Layer3 {
    /// Output channels of `layer3`.
    pub const OUT_CHANNELS: usize = 1024;

    /// Read the torchvision-named tensors under `vb` (BatchNorm folded).
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            stem: conv_bn(&vb, "conv1", "bn1", (3, 64, 7, 2), Activation::Relu)?,
            layer1: Stage::new(vb.pp("layer1"), 64, 64, 3, 1)?,
            layer2: Stage::new(vb.pp("layer2"), 256, 128, 4, 2)?,
            layer3: Stage::new(vb.pp("layer3"), 512, 256, 6, 2)?,
        })
    }
}

impl ResNet50Layer3 {
    /// The network as CPU-engine layers.
    pub(crate) fn engine_layers(&self) -> Result<Vec<Layer>> {
        let mut layers = vec![
            Layer::Conv(self.stem.to_engine()?),
            Layer::MaxPool(MaxPool {
                kernel: 3,
                stride: 2,
                pad: 1,
            }),
        ];
        for stage in [&self.layer1, &self.layer2, &self.layer3] {
            for block in &stage.blocks {
                layers.push(block.to_engine()?);
            }
        }
        Ok(layers)
    }
}

impl Module for ResNet50Layer3 {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.stem.forward(x)?;
        // MaxPool2d(3, stride 2, padding 1). The input is post-ReLU (>= 0) and
        // every window holds a real pixel, so zero padding equals -inf padding.
        let x = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
        let x = x.max_pool2d_with_stride(3, 2)?;
        let x = self.layer1.forward(&x)?;
        let x = self.layer2.forward(&x)?;
        self.layer3.forward(&x)
    }
}
