//! The three CNN backbones that turn a normalised image batch into a
//! feature map: ResNet-50 up to `layer3` (ASEN's own), MobileNetV2 and
//! EfficientNet-Lite0 (ImageNet weights shipped in `models/weights/`).
//!
//! [`BackboneKind`] names one (as in model cards); [`Backbone::new`] builds it
//! from a [`VarBuilder`] whose names mirror the weight files, folding every
//! BatchNorm into its convolution for inference.

mod efficientnet_lite;
mod mobilenet_v2;
mod resnet;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::colour::ColourHistogram;
use crate::cpu::{CpuNet, KernelPath, MapShape};
use crate::error::{ModelError, Result};

pub use efficientnet_lite::{EfficientNetLite0, Lite0Classifier};
pub use mobilenet_v2::MobileNetV2;
pub use resnet::ResNet50Layer3;

/// Which backbone architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BackboneKind {
    /// torchvision ResNet-50 truncated after `layer3` (1024 channels, stride 16).
    #[serde(rename = "resnet50_layer3")]
    ResNet50Layer3,
    /// MobileNetV2 1.0 features (1280 channels, stride 32).
    #[serde(rename = "mobilenet_v2")]
    MobileNetV2,
    /// EfficientNet-Lite0 features (1280 channels, stride 32).
    #[serde(rename = "efficientnet_lite0")]
    EfficientNetLite0,
}

impl BackboneKind {
    /// Every kind, in declaration order.
    pub const ALL: [BackboneKind; 3] = [
        BackboneKind::ResNet50Layer3,
        BackboneKind::MobileNetV2,
        BackboneKind::EfficientNetLite0,
    ];

    /// The serde / model-card name (`resnet50_layer3`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BackboneKind::ResNet50Layer3 => "resnet50_layer3",
            BackboneKind::MobileNetV2 => "mobilenet_v2",
            BackboneKind::EfficientNetLite0 => "efficientnet_lite0",
        }
    }

    /// Channels of the output feature map.
    pub fn out_channels(self) -> usize {
        match self {
            BackboneKind::ResNet50Layer3 => ResNet50Layer3::OUT_CHANNELS,
            BackboneKind::MobileNetV2 => MobileNetV2::OUT_CHANNELS,
            BackboneKind::EfficientNetLite0 => EfficientNetLite0::OUT_CHANNELS,
        }
    }

    /// Channels of the feature map with or without the appended colour
    /// histogram ([`crate::colour`]) and the fine grid's stage
    /// ([`Backbone::with_fine_map`]).
    pub fn feature_channels(self, colour_histogram: bool, fine_map: bool) -> usize {
        let fine = match (fine_map, self.fine_stage()) {
            (true, Some(stage)) => stage.channels,
            _ => 0,
        };
        self.out_channels()
            + fine
            + if colour_histogram {
                crate::colour::COLOUR_BINS
            } else {
                0
            }
    }

    /// The stage whose map sets the fine grid, for the kinds that have one:
    /// MobileNetV2's stride-16 stage (ResNet-50 layer3 is at stride 16 already).
    pub fn fine_stage(self) -> Option<FineStage> {
        match self {
            BackboneKind::MobileNetV2 => Some(FineStage {
                channels: MobileNetV2::FINE_CHANNELS,
                engine_layers: 1 + MobileNetV2::FINE_BLOCKS,
            }),
            _ => None,
        }
    }

    /// Total downsampling factor (input side / feature-map side).
    pub fn stride(self) -> usize {
        match self {
            BackboneKind::ResNet50Layer3 => 16,
            BackboneKind::MobileNetV2 | BackboneKind::EfficientNetLite0 => 32,
        }
    }

    /// File name of the shipped ImageNet weights (safetensors), or `None`
    /// for ResNet-50, whose weights come from the ASEN checkpoint itself.
    pub fn default_weights_file(self) -> Option<&'static str> {
        match self {
            BackboneKind::ResNet50Layer3 => None,
            BackboneKind::MobileNetV2 => Some("mobilenetv2_imagenet_features.safetensors"),
            BackboneKind::EfficientNetLite0 => Some("efficientnet_lite0_imagenet.safetensors"),
        }
    }

    /// Locate the shipped ImageNet weights in `dirs` with [`locate_weights`].
    /// Errors for ResNet-50, which has none.
    pub fn imagenet_weights_path<P: AsRef<Path>>(self, dirs: &[P]) -> Result<PathBuf> {
        let file = self.default_weights_file().ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "backbone {} has no shipped ImageNet weights; its weights come from the ASEN checkpoint",
                self.name()
            ))
        })?;
        locate_weights(file, dirs)
    }
}

impl std::fmt::Display for BackboneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for BackboneKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        BackboneKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                ModelError::InvalidArgument(format!(
                    "unknown backbone {s:?}; expected resnet50_layer3, mobilenet_v2 or efficientnet_lite0"
                ))
            })
    }
}

/// The earlier stage a fine feature grid taps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FineStage {
    /// Channels of its map.
    pub channels: usize,
    /// Layers of the engine network up to and including it.
    pub engine_layers: usize,
}

/// Find the weights file `file` in the first of `dirs` that holds it. The
/// caller decides where weights live (the `asen` binary: its configuration,
/// then `weights/` beside the executable, the executable's directory and the
/// source tree's `models/weights/`); the library reads no environment.
/// The error lists every directory searched, in order.
pub fn locate_weights<P: AsRef<Path>>(file: &str, dirs: &[P]) -> Result<PathBuf> {
    let searched: Vec<PathBuf> = dirs.iter().map(|d| d.as_ref().to_path_buf()).collect();
    match searched.iter().map(|d| d.join(file)).find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => Err(ModelError::WeightsNotFound {
            file: file.to_string(),
            searched,
        }),
    }
}

/// Images per forward on the CPU: larger batches are split. Keeps the
/// im2col buffers and activations near the caches (the ResNet stem's im2col
/// is 7.4 MB per image) while each gemm still sees several images; batch 16
/// in chunks of 4 measured faster than one pass of 16 (docs/benchmarks.md).
const CPU_MICRO_BATCH: usize = 4;

/// Images per forward of the CPU engine ([`crate::cpu`]).
const ENGINE_MICRO_BATCH: usize = 4;

#[derive(Debug, Clone)]
enum Net {
    ResNet50Layer3(ResNet50Layer3),
    MobileNetV2(MobileNetV2),
    EfficientNetLite0(EfficientNetLite0),
}

/// A backbone ready for inference: `[B, 3, H, W]` normalised images to the
/// feature map `[B, C, h, w]` (C = [`Backbone::out_channels`]: the network's
/// channels, then the colour histogram's when it has one).
#[derive(Debug, Clone)]
pub struct Backbone {
    kind: BackboneKind,
    net: Net,
    /// The same network compiled for the CPU engine (loaded on the CPU only).
    engine: Option<std::sync::Arc<CpuNet>>,
    kernels: KernelPath,
    colour: Option<ColourHistogram>,
    /// The fine grid's stage, when the map is on its grid.
    fine: Option<FineStage>,
}

impl Backbone {
    /// Build `kind` from the tensors under `vb`, named as in the weight
    /// files (ResNet: torchvision `conv1`, `layer1.0.conv1`, ...; MobileNetV2:
    /// `features.*`; Lite0: `_conv_stem`, `_blocks.N.*`, `_conv_head`).
    pub fn new(kind: BackboneKind, vb: VarBuilder) -> Result<Self> {
        let on_cpu = vb.device().is_cpu();
        let net = match kind {
            BackboneKind::ResNet50Layer3 => Net::ResNet50Layer3(ResNet50Layer3::new(vb)?),
            BackboneKind::MobileNetV2 => Net::MobileNetV2(MobileNetV2::new(vb)?),
            BackboneKind::EfficientNetLite0 => Net::EfficientNetLite0(EfficientNetLite0::new(vb)?),
        };
        let engine = if on_cpu {
            let layers = match &net {
                Net::ResNet50Layer3(m) => m.engine_layers()?,
                Net::MobileNetV2(m) => m.engine_layers()?,
                Net::EfficientNetLite0(m) => m.engine_layers()?,
            };
            Some(std::sync::Arc::new(CpuNet::new(layers)))
        } else {
            None
        };
        Ok(Self {
            kind,
            net,
            engine,
            kernels: KernelPath::detect(),
            colour: None,
            fine: None,
        })
    }

    /// Run the CPU forward pass on `kernels` instead of the detected best
    /// path (tests and benches compare them). Errors when this CPU cannot
    /// run that path.
    pub fn with_kernels(mut self, kernels: KernelPath) -> Result<Self> {
        if !kernels.is_supported() {
            return Err(ModelError::InvalidArgument(format!(
                "this CPU cannot run the {kernels} kernels"
            )));
        }
        self.kernels = kernels;
        Ok(self)
    }

    /// The kernel path CPU forward passes use.
    pub fn kernels(&self) -> KernelPath {
        self.kernels
    }

    /// The CPU engine, when this forward pass should use it.
    fn engine_for(&self, x: &Tensor) -> Option<&CpuNet> {
        let usable = x.device().is_cpu() && x.dtype() == DType::F32;
        match (&self.engine, self.kernels) {
            (Some(engine), kernels) if usable && kernels != KernelPath::CandleOps => {
                Some(engine.as_ref())
            }
            _ => None,
        }
    }

    /// `x` is a `[B, 3, H, W]` batch of at least one pixel.
    fn check_input(&self, x: &Tensor) -> Result<()> {
        match x.dims() {
            [_, 3, h, w] if *h > 0 && *w > 0 => Ok(()),
            dims => Err(ModelError::InvalidArgument(format!(
                "backbone {} expects a [B, 3, H, W] batch, got shape {dims:?}",
                self.kind
            ))),
        }
    }

    /// The feature map of `x` as pixel rows, `[B * h * w, C]` (the network's
    /// channels, then the fine stage's and the colour histogram's bins when
    /// the backbone has them), with `(B, h, w, C)`: what the CPU head reads,
    /// without the layout changes of a `[B, C, h, w]` tensor. `None` when the
    /// CPU engine does not run this pass.
    pub(crate) fn forward_rows(&self, x: &Tensor) -> Result<Option<(Vec<f32>, MapShape)>> {
        let Some(engine) = self.engine_for(x) else {
            return Ok(None);
        };
        self.check_input(x)?;
        let (b, _, height, width) = x.dims4()?;
        let taps: Vec<usize> = self.fine.iter().map(|f| f.engine_layers).collect();
        with_cpu_f32(x, |input| {
            let image_len = 3 * height * width;
            let mut rows = Vec::new();
            let mut shape = None;
            for chunk in input.chunks(ENGINE_MICRO_BATCH * image_len) {
                let n = chunk.len() / image_len;
                let mut maps = engine.forward_tapped(
                    crate::cpu::Layout::Nhwc,
                    self.kernels,
                    chunk,
                    (n, 3, height, width),
                    &taps,
                );
                let coarse = maps.pop().expect("the output map");
                let fine = maps.pop();
                let grid = fine.as_ref().map_or(coarse.1, |f| f.1);
                let hist = self.colour.as_ref().map(|_| {
                    crate::cpu::colour_histogram(
                        crate::cpu::Layout::Nhwc,
                        self.kernels,
                        chunk,
                        (n, height, width),
                        (grid.h, grid.w),
                    )
                });
                let s = append_rows(&mut rows, &coarse, fine.as_ref(), hist.as_deref());
                shape = Some(MapShape { b, ..s });
            }
            Ok(shape.map(|s| (rows, s)))
        })?
    }

    /// The feature map of `x` on the CPU engine, the colour histogram (if
    /// any) computed from the same copy of the input. On the fine grid, the
    /// pixel rows of [`Self::forward_rows`] turned into channel planes.
    fn forward_engine(&self, engine: &CpuNet, x: &Tensor) -> Result<Tensor> {
        if self.fine.is_some() {
            let (rows, s) = self.forward_rows(x)?.ok_or_else(|| {
                ModelError::InvalidArgument("the CPU engine cannot run this batch".into())
            })?;
            return Ok(Tensor::from_vec(rows, (s.b, s.h, s.w, s.c), x.device())?
                .permute((0, 3, 1, 2))?
                .contiguous()?);
        }
        let (b, c, height, width) = x.dims4()?;
        let ((out, o), hist) = with_cpu_f32(x, |input| {
            let map = engine.forward(
                crate::cpu::Layout::Nchw,
                self.kernels,
                input,
                (b, c, height, width),
            );
            let hist = self.colour.as_ref().map(|_| {
                crate::cpu::colour_histogram(
                    crate::cpu::Layout::Nchw,
                    self.kernels,
                    input,
                    (b, height, width),
                    (map.1.h, map.1.w),
                )
            });
            (map, hist)
        })?;
        let map = Tensor::from_vec(out, (o.b, o.c, o.h, o.w), x.device())?;
        match (&self.colour, hist) {
            (Some(colour), Some(hist)) => {
                let hist = Tensor::from_vec(hist, (b, colour.bins(), o.h, o.w), x.device())?;
                Ok(Tensor::cat(&[&map, &hist], 1)?)
            }
            _ => Ok(map),
        }
    }

    /// Put the feature map on the grid of MobileNetV2's stride-16 stage
    /// (14x14 at 224 px, twice the last layer's): each cell carries the last
    /// layer's channels of the cell it lies in, the stage's own 96 channels
    /// and (with the histogram) its own colours, so a spatial attention can
    /// single out a region a quarter the size. Errors for other backbones.
    pub fn with_fine_map(mut self) -> Result<Self> {
        self.fine = Some(self.kind.fine_stage().ok_or_else(|| {
            ModelError::InvalidArgument(format!(
                "backbone {} has no fine feature grid (mobilenet_v2 has one)",
                self.kind
            ))
        })?);
        Ok(self)
    }

    /// Whether the map is on the fine grid.
    pub fn has_fine_map(&self) -> bool {
        self.fine.is_some()
    }

    /// Append the per-cell colour histogram ([`crate::colour`]) to every
    /// feature map: [`crate::colour::COLOUR_BINS`] more channels.
    pub fn with_colour_histogram(mut self, device: &Device) -> Result<Self> {
        self.colour = Some(ColourHistogram::new(device)?);
        Ok(self)
    }

    /// Whether the colour histogram is appended.
    pub fn has_colour_histogram(&self) -> bool {
        self.colour.is_some()
    }

    /// Channels of the feature maps this backbone returns.
    pub fn out_channels(&self) -> usize {
        self.kind
            .feature_channels(self.has_colour_histogram(), self.has_fine_map())
    }

    /// Load `kind` from a safetensors file (float32) onto `device`.
    pub fn load(kind: BackboneKind, path: &Path, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, device).map_err(|e| {
            ModelError::CheckpointFormat {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::new(kind, vb).map_err(|e| match e {
            ModelError::Candle(c) => ModelError::CheckpointMismatch {
                path: path.to_path_buf(),
                variant: kind.name().to_string(),
                report: c.to_string(),
            },
            other => other,
        })
    }

    /// Which architecture this is.
    pub fn kind(&self) -> BackboneKind {
        self.kind
    }

    /// Feature map `[B, C, h, w]` of a normalised batch `[B, 3, H, W]`
    /// (any H, W; h = ceil-ish H / stride).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let b = x.dim(0)?;
        let micro = if self.engine_for(x).is_some() {
            ENGINE_MICRO_BATCH
        } else {
            CPU_MICRO_BATCH
        };
        if x.device().is_cpu() && b > micro {
            let outs = (0..b)
                .step_by(micro)
                .map(|start| self.forward_all(&x.narrow(0, start, micro.min(b - start))?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Tensor::cat(&outs, 0)?);
        }
        self.forward_all(x)
    }

    fn forward_all(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(engine) = self.engine_for(x) {
            return self.forward_engine(engine, x);
        }
        let (y, fine) = match (&self.net, self.fine) {
            (Net::MobileNetV2(m), Some(_)) => {
                let (fine, y) = m.forward_fine(x)?;
                (y, Some(fine))
            }
            (Net::ResNet50Layer3(m), _) => (m.forward(x)?, None),
            (Net::MobileNetV2(m), None) => (m.forward(x)?, None),
            (Net::EfficientNetLite0(m), _) => (m.forward(x)?, None),
        };
        let (y, (h, w)) = match &fine {
            Some(fine) => {
                let (_, _, h, w) = fine.dims4()?;
                (Tensor::cat(&[&coarse_on_grid(&y, h, w)?, fine], 1)?, (h, w))
            }
            None => {
                let (_, _, h, w) = y.dims4()?;
                (y, (h, w))
            }
        };
        match &self.colour {
            Some(colour) => {
                let hist = colour.forward(x, h, w)?.to_dtype(y.dtype())?;
                Ok(Tensor::cat(&[&y, &hist], 1)?)
            }
            None => Ok(y),
        }
    }
}

/// The cell of a map half as fine that fine cell `i` lies in (the last one
/// for the odd cell a ceil-halving leaves).
fn coarse_cell(i: usize, coarse: usize) -> usize {
    (i / 2).min(coarse - 1)
}

/// `y` `[B, C, hc, wc]` repeated onto an `h x w` grid twice as fine.
fn coarse_on_grid(y: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, hc, wc) = y.dims4()?;
    let index = |n: usize, coarse: usize| -> Result<Tensor> {
        let ids: Vec<u32> = (0..n).map(|i| coarse_cell(i, coarse) as u32).collect();
        Ok(Tensor::new(ids.as_slice(), y.device())?)
    };
    Ok(y.index_select(&index(h, hc)?, 2)?
        .index_select(&index(w, wc)?, 3)?)
}

/// Append one micro-batch's rows to `rows`: per cell of the finest grid, the
/// coarse map's channels (of the cell it lies in), then the fine map's and
/// the histogram's. Maps are NHWC; returns the rows' shape.
fn append_rows(
    rows: &mut Vec<f32>,
    (coarse, co): &(Vec<f32>, MapShape),
    fine: Option<&(Vec<f32>, MapShape)>,
    hist: Option<&[f32]>,
) -> MapShape {
    let grid = fine.map_or(*co, |f| f.1);
    let cells = grid.b * grid.h * grid.w;
    let fc = fine.map_or(0, |f| f.1.c);
    let bins = hist.map_or(0, |h| h.len() / cells);
    let c = co.c + fc + bins;
    rows.reserve(cells * c);
    for i in 0..grid.b {
        for r in 0..grid.h {
            for q in 0..grid.w {
                let cell = (i * grid.h + r) * grid.w + q;
                let (cr, cq) = if fine.is_some() {
                    (coarse_cell(r, co.h), coarse_cell(q, co.w))
                } else {
                    (r, q)
                };
                let at = ((i * co.h + cr) * co.w + cq) * co.c;
                rows.extend_from_slice(&coarse[at..at + co.c]);
                if let Some((fine, _)) = fine {
                    rows.extend_from_slice(&fine[cell * fc..(cell + 1) * fc]);
                }
                if let Some(hist) = hist {
                    rows.extend_from_slice(&hist[cell * bins..(cell + 1) * bins]);
                }
            }
        }
    }
    MapShape { c, ..grid }
}

/// `f` on the values of the f32 CPU tensor `x` in row-major order: read in
/// place when `x` is contiguous (a batch of 16 images is 9.6 MB that a copy
/// would allocate and fault in on every call), copied otherwise.
pub(crate) fn with_cpu_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&data[start..end]));
        }
    }
    let copy: Vec<f32> = x.flatten_all()?.to_vec1()?;
    Ok(f(&copy))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_serde_and_names() {
        for kind in BackboneKind::ALL {
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{}\"", kind.name()));
            assert_eq!(serde_json::from_str::<BackboneKind>(&json).unwrap(), kind);
            assert_eq!(kind.name().parse::<BackboneKind>().unwrap(), kind);
        }
        assert!("resnet101".parse::<BackboneKind>().is_err());
        assert_eq!(BackboneKind::ResNet50Layer3.out_channels(), 1024);
        assert_eq!(BackboneKind::MobileNetV2.out_channels(), 1280);
        assert_eq!(BackboneKind::EfficientNetLite0.out_channels(), 1280);
    }

    #[test]
    fn missing_weights_list_the_searched_places() {
        let dirs = [Path::new("/nonexistent"), Path::new("/also/missing")];
        let e = locate_weights("no_such_file.safetensors", &dirs).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("no_such_file.safetensors")
                && msg.contains("/nonexistent")
                && msg.contains("/also/missing"),
            "{msg}"
        );
        assert!(BackboneKind::ResNet50Layer3
            .imagenet_weights_path(&dirs)
            .is_err());
    }

    /// A MobileNetV2 with random weights, on the fine grid with the colour
    /// histogram, on the given kernels.
    fn fine_mobilenet(kernels: KernelPath) -> Backbone {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        Backbone::new(BackboneKind::MobileNetV2, vb)
            .unwrap()
            .with_colour_histogram(&dev)
            .unwrap()
            .with_fine_map()
            .unwrap()
            .with_kernels(kernels)
            .unwrap()
    }

    #[test]
    fn the_fine_map_is_on_the_stride_16_grid() {
        let net = fine_mobilenet(KernelPath::detect());
        assert_eq!(net.out_channels(), 1280 + 96 + 61);
        for (side, grid) in [(224, 14), (200, 13)] {
            let x = Tensor::randn(0f32, 1.0, (2, 3, side, side), &Device::Cpu).unwrap();
            let y = net.forward(&x).unwrap();
            assert_eq!(y.dims(), &[2, 1280 + 96 + 61, grid, grid]);
            // The last layer's channels repeat over each 2x2 block.
            let first = y.narrow(1, 0, 1280).unwrap();
            let (a, b) = (
                first.narrow(2, 0, 1).unwrap().narrow(3, 0, 1).unwrap(),
                first.narrow(2, 1, 1).unwrap().narrow(3, 1, 1).unwrap(),
            );
            assert_eq!(crate::max_abs_diff(&a, &b), 0.0);
        }
    }

    #[test]
    fn the_fine_map_is_the_same_on_the_engine_and_on_candle_ops() {
        let x = Tensor::randn(0f32, 1.0, (2, 3, 96, 96), &Device::Cpu).unwrap();
        let engine = fine_mobilenet(KernelPath::detect()).forward(&x).unwrap();
        let candle = fine_mobilenet(KernelPath::CandleOps).forward(&x).unwrap();
        assert_eq!(engine.dims(), candle.dims());
        let scale = candle
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = crate::max_abs_diff(&engine, &candle);
        assert!(diff <= 1e-4 * scale.max(1.0), "{diff} of {scale}");
    }

    #[test]
    fn only_mobilenet_has_a_fine_grid() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let lite = Backbone::new(BackboneKind::EfficientNetLite0, vb).unwrap();
        assert!(lite.with_fine_map().is_err());
    }

    /// The ResNet asks for exactly torchvision's names up to `layer3` and
    /// maps any input size to stride 16 (BN folding itself is checked in
    /// `layers::tests::folded_bn_equals_conv_then_bn`).
    #[test]
    fn resnet_builds_from_torchvision_names_and_folds_bn() {
        let dev = Device::Cpu;
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let net = Backbone::new(BackboneKind::ResNet50Layer3, vb).unwrap();
        let names: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        assert!(names.contains(&"layer1.0.downsample.0.weight".to_string()));
        assert!(names.contains(&"layer3.5.bn3.running_var".to_string()));
        assert!(!names
            .iter()
            .any(|n| n.starts_with("layer4") || n.starts_with("fc")));
        // 43 convs, 43 BatchNorms x 4 tensors.
        assert_eq!(names.len(), 43 + 43 * 4);
        let x = Tensor::randn(0f32, 1.0, (2, 3, 64, 48), &dev).unwrap();
        let y = net.forward(&x).unwrap();
        assert_eq!(y.dims(), &[2, 1024, 4, 3]);
        assert!(net
            .forward(&Tensor::zeros((2, 4, 8, 8), DType::F32, &dev).unwrap())
            .is_err());
    }
}
