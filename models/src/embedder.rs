//! [`Embedder`]: backbone + head + card, the one type the service calls.
//!
//! Images in (encoded bytes or decoded RGB), one L2-normalised vector per
//! requested attribute out, with the spatial attention map when the head has
//! one. The backbone runs once per image and the attribute-independent part of
//! the head once per batch, whatever the number of attributes asked for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use image::RgbImage;

use crate::backbone::{Backbone, BackboneKind};
use crate::card::ModelCard;
use crate::checkpoint::{CheckedTensors, Checkpoint};
use crate::error::{ModelError, Result};
use crate::head::Head;
use crate::model_dir::ModelDir;
use crate::preprocess::{decode_image, resize_and_crop, to_tensor, PreprocessConfig};
use crate::signature::{CopySignature, IDENTITY_ATTRIBUTE, SIGNATURE_FILE};

/// Options for [`Embedder::load`].
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    /// Where to run (see [`crate::parse_device`]).
    pub device: Device,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Decoding limits; `size` is overridden by the card's input size.
    pub preprocess: PreprocessConfig,
    /// Directories searched, in order, for the shipped ImageNet weights of
    /// a frozen-backbone model ([`crate::locate_weights`]); the caller
    /// decides where they live.
    pub weights_dirs: Vec<PathBuf>,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            batch_size: 16,
            preprocess: PreprocessConfig::default(),
            weights_dirs: Vec::new(),
        }
    }
}

/// A spatial attention map: `values[h * width + w]`, summing to 1.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttentionMap {
    /// Rows of the feature grid.
    pub height: usize,
    /// Columns of the feature grid.
    pub width: usize,
    /// Row-major weights.
    pub values: Vec<f32>,
}

/// The embedding of one image for one attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Index of the attribute in [`Embedder::attribute_names`]: the card's
    /// attributes, then [`IDENTITY_ATTRIBUTE`] when the model has a copy signature.
    pub attribute: usize,
    /// L2-normalised vector of the card's `embedding_dim` (the signature's
    /// `dim` for the identity attribute).
    pub vector: Vec<f32>,
    /// Where the head looked (heads with spatial attention only).
    pub attention: Option<AttentionMap>,
}

/// A loaded model ready to embed images.
#[derive(Debug, Clone)]
pub struct Embedder {
    card: ModelCard,
    backbone: Backbone,
    head: Head,
    /// The head compiled for the CPU engine (a snapshot of its weights taken
    /// when this embedder was built), where the engine has a kernel for it.
    head_engine: Option<std::sync::Arc<crate::cpu::HeadEngine>>,
    signature: Option<CopySignature>,
    device: Device,
    batch_size: usize,
    preprocess: PreprocessConfig,
}

impl Embedder {
    /// Load a model: a model directory (`card.json` + `model.safetensors`),
    /// or an official `.pth` / `.pth.gz` checkpoint (attributes then named
    /// `attr_0..`, ResNet-50 backbone from the checkpoint).
    ///
    /// A model directory without `backbonenet.*` tensors uses the shipped
    /// ImageNet weights of the card's backbone (a frozen-backbone model).
    pub fn load(path: impl AsRef<Path>, opts: &EmbedderOptions) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            let model = ModelDir::load(path)?;
            let mut embedder = Self::from_parts(model.card, &model.checkpoint, opts)?;
            if let Some(spec) = &embedder.card.copy_signature {
                let signature = CopySignature::load(
                    &path.join(SIGNATURE_FILE),
                    spec,
                    embedder.card.feature_channels,
                    &embedder.device,
                )?;
                embedder.signature = Some(signature);
            }
            Ok(embedder)
        } else if path.is_file() {
            let ckpt = Checkpoint::load(path)?;
            let kind = ckpt.variant()?;
            let (_, cfg) = ckpt.load_head(&Device::Cpu)?;
            let attributes = (0..cfg.n_attributes)
                .map(|i| crate::card::AttributeSpec::named(format!("attr_{i}")))
                .collect();
            let card = ModelCard::new(
                kind,
                BackboneKind::ResNet50Layer3.name(),
                opts.preprocess.size as u32,
                attributes,
                cfg,
            )?;
            Self::from_parts(card, &ckpt, opts)
        } else {
            Err(ModelError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model file or directory",
                ),
            ))
        }
    }

    fn from_parts(card: ModelCard, ckpt: &Checkpoint, opts: &EmbedderOptions) -> Result<Self> {
        if opts.batch_size == 0 {
            return Err(ModelError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let device = opts.device.clone();
        let kind: BackboneKind = card.backbone.parse()?;
        if card.fine_map && kind.fine_stage().is_none() {
            return Err(ModelError::Card {
                path: ckpt.path().to_path_buf(),
                reason: format!("fine_map is set but backbone {kind} has no fine grid"),
            });
        }
        let channels = kind.feature_channels(card.colour_histogram, card.fine_map);
        if channels != card.feature_channels {
            return Err(ModelError::Card {
                path: ckpt.path().to_path_buf(),
                reason: format!(
                    "feature_channels {} does not match backbone {kind}{}{} ({channels} channels)",
                    card.feature_channels,
                    if card.fine_map {
                        " on its fine grid"
                    } else {
                        ""
                    },
                    if card.colour_histogram {
                        " with the colour histogram"
                    } else {
                        ""
                    },
                ),
            });
        }
        let head = ckpt.load_head_as(card.head, &card.head_config, &device)?;
        let backbone_tensors = ckpt.backbone_tensors()?;
        let backbone = if backbone_tensors.is_empty() {
            let weights = kind.imagenet_weights_path(&opts.weights_dirs)?;
            Backbone::load(kind, &weights, &device)?
        } else {
            load_backbone(kind, backbone_tensors, ckpt.path(), &device)?
        };
        let backbone = if card.colour_histogram {
            backbone.with_colour_histogram(&device)?
        } else {
            backbone
        };
        let backbone = if card.fine_map {
            backbone.with_fine_map()?
        } else {
            backbone
        };
        let preprocess = PreprocessConfig {
            size: card.input_size as usize,
            ..opts.preprocess
        };
        let head_engine = head_engine(&head, &device)?;
        Ok(Self {
            card,
            backbone,
            head,
            head_engine,
            signature: None,
            device,
            batch_size: opts.batch_size,
            preprocess,
        })
    }

    /// An embedder over modules built in memory (the fine-tuning trainer of
    /// `asen-train` validates with it): the same as [`Embedder::load`] of the
    /// directory those modules are saved to.
    pub fn from_modules(
        card: ModelCard,
        backbone: Backbone,
        head: Head,
        device: &Device,
        batch_size: usize,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(ModelError::InvalidArgument(
                "batch size must be at least 1".into(),
            ));
        }
        let preprocess = PreprocessConfig {
            size: card.input_size as usize,
            ..PreprocessConfig::default()
        };
        let head_engine = head_engine(&head, device)?;
        Ok(Self {
            card,
            backbone,
            head,
            head_engine,
            signature: None,
            device: device.clone(),
            batch_size,
            preprocess,
        })
    }

    /// The model card (attributes, dimension, thresholds, provenance).
    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The preprocessing applied to every image.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// The same embedder with its backbone on CPU kernel path `kernels`
    /// ([`Backbone::with_kernels`]).
    pub fn with_kernels(mut self, kernels: crate::KernelPath) -> Result<Self> {
        self.backbone = self.backbone.with_kernels(kernels)?;
        Ok(self)
    }

    /// The same embedder with a copy signature (its spec must be in the card):
    /// what `asen-train` uses while calibrating one.
    pub fn with_signature(
        mut self,
        spec: crate::CopySignatureSpec,
        signature: CopySignature,
    ) -> Result<Self> {
        if signature.channels() != self.card.feature_channels || signature.dim() != spec.dim {
            return Err(ModelError::InvalidArgument(format!(
                "copy signature [{}, {}] does not fit {} feature channels and dim {}",
                signature.channels(),
                signature.dim(),
                self.card.feature_channels,
                spec.dim
            )));
        }
        self.card.copy_signature = Some(spec);
        self.card
            .validate()
            .map_err(|reason| ModelError::InvalidArgument(format!("model card: {reason}")))?;
        self.signature = Some(signature);
        Ok(self)
    }

    /// The copy signature, when the model has one.
    pub fn signature(&self) -> Option<&CopySignature> {
        self.signature.as_ref()
    }

    /// Every attribute this embedder embeds, in index order: the card's, then
    /// [`IDENTITY_ATTRIBUTE`] (the copy signature) when the model has one.
    pub fn attribute_names(&self) -> Vec<String> {
        let mut names = self.card.attribute_names();
        if self.signature.is_some() {
            names.push(IDENTITY_ATTRIBUTE.to_string());
        }
        names
    }

    /// Index of an attribute by name ([`Self::attribute_names`]), or an error
    /// listing the known ones.
    pub fn attribute_index(&self, name: &str) -> Result<usize> {
        match self.identity_index() {
            Some(i) if name == IDENTITY_ATTRIBUTE => Ok(i),
            _ => self
                .card
                .attribute_index(name)
                .map_err(|_| ModelError::UnknownAttribute {
                    name: name.to_owned(),
                    known: self.attribute_names(),
                }),
        }
    }

    /// Index of the identity attribute, when the model has a copy signature.
    pub fn identity_index(&self) -> Option<usize> {
        self.signature.as_ref().map(|_| self.card.attributes.len())
    }

    /// Embedding size of attribute `index`.
    pub fn dimension(&self, index: usize) -> usize {
        match (&self.signature, self.identity_index()) {
            (Some(sig), Some(i)) if i == index => sig.dim(),
            _ => self.card.embedding_dim,
        }
    }

    /// Decode encoded image bytes (JPEG, PNG, WebP) under the pixel limit.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage> {
        decode_image(bytes, &self.preprocess)
    }

    /// Resize and centre-crop a decoded image to the model input (what the model sees).
    pub fn crop(&self, image: &RgbImage) -> RgbImage {
        resize_and_crop(image, self.preprocess.size)
    }

    /// Embed encoded images for `attributes` (all of the card's when empty).
    /// Returns, per image, one [`Embedding`] per attribute in the order asked.
    pub fn embed_bytes(
        &self,
        images: &[&[u8]],
        attributes: &[usize],
    ) -> Result<Vec<Vec<Embedding>>> {
        let decoded = images
            .iter()
            .map(|b| self.decode(b))
            .collect::<Result<Vec<_>>>()?;
        self.embed_images(&decoded, attributes)
    }

    /// Embed decoded RGB images (any size; resized and cropped here).
    pub fn embed_images(
        &self,
        images: &[RgbImage],
        attributes: &[usize],
    ) -> Result<Vec<Vec<Embedding>>> {
        let crops: Vec<RgbImage> = images.iter().map(|im| self.crop(im)).collect();
        self.embed_crops(&crops, attributes)
    }

    /// Embed images already resized and cropped to the input size.
    pub fn embed_crops(
        &self,
        crops: &[RgbImage],
        attributes: &[usize],
    ) -> Result<Vec<Vec<Embedding>>> {
        let all: Vec<usize>;
        let count = self.attribute_names().len();
        let attributes = if attributes.is_empty() {
            all = (0..count).collect();
            &all
        } else {
            attributes
        };
        if let Some(&bad) = attributes.iter().find(|&&a| a >= count) {
            return Err(ModelError::UnknownAttribute {
                name: format!("#{bad}"),
                known: self.attribute_names(),
            });
        }
        let size = self.preprocess.size as u32;
        if let Some(im) = crops.iter().find(|im| im.dimensions() != (size, size)) {
            return Err(ModelError::InvalidArgument(format!(
                "crop is {}x{}, the model expects {size}x{size}",
                im.width(),
                im.height()
            )));
        }
        let mut out = Vec::with_capacity(crops.len());
        for chunk in crops.chunks(self.batch_size) {
            let x = to_tensor(chunk, &self.device)?;
            out.extend(self.embed_tensor(&x, attributes)?);
        }
        Ok(out)
    }

    /// Backbone feature maps `[B, C, h, w]` of a normalised batch `[B, 3, S, S]`.
    pub fn features(&self, x: &Tensor) -> Result<Tensor> {
        self.backbone.forward(x)
    }

    /// Embed a normalised batch `[B, 3, S, S]` (what [`preprocess_bytes`]
    /// returns, stacked) for `attributes`, all of them valid indices: the
    /// forward pass alone, as the benches time it.
    ///
    /// [`preprocess_bytes`]: crate::preprocess_bytes
    pub fn embed_normalised(
        &self,
        x: &Tensor,
        attributes: &[usize],
    ) -> Result<Vec<Vec<Embedding>>> {
        let count = self.attribute_names().len();
        if let Some(&bad) = attributes.iter().find(|&&a| a >= count) {
            return Err(ModelError::UnknownAttribute {
                name: format!("#{bad}"),
                known: self.attribute_names(),
            });
        }
        if x.dim(0)? == 1 && self.engine_runs(x) {
            // One image: the network, the histogram and the head each split
            // over the threads, which stay awake from one step to the next.
            return crate::cpu::on_pool_awake(|| self.embed_tensor(x, attributes));
        }
        self.embed_tensor(x, attributes)
    }

    /// Whether the CPU engine runs the head on `feats`.
    fn engine_runs(&self, feats: &Tensor) -> bool {
        feats.device().is_cpu()
            && feats.dtype() == DType::F32
            && self.backbone.kernels() != crate::KernelPath::CandleOps
    }

    /// [`Head::forward_attributes`] on the CPU engine, from the feature maps.
    fn engine_head(
        &self,
        engine: &crate::cpu::HeadEngine,
        feats: &Tensor,
        attrs: &[usize],
    ) -> Result<Vec<crate::HeadOutput>> {
        let (b, c, h, w) = feats.dims4()?;
        let kernels = self.backbone.kernels();
        let s = crate::cpu::MapShape { b, h, w, c };
        engine.check_cells(h * w)?;
        let (emb, attn) =
            crate::backbone::with_cpu_f32(feats, |x| engine.forward(kernels, x, s, attrs))?;
        head_outputs(
            &emb,
            &attn,
            (b, h, w),
            (attrs.len(), engine.dim()),
            feats.device(),
        )
    }

    /// What the heads and the copy signature make of the feature maps:
    /// per attribute of `heads`, its output; and the signatures when asked.
    fn heads_and_signatures(
        &self,
        x: &Tensor,
        heads: &[usize],
        signatures: bool,
    ) -> Result<HeadsAndSignatures> {
        // On the CPU engine, the head reads the network's pixel rows as they come.
        if let (Some(engine), true) = (&self.head_engine, self.engine_runs(x)) {
            if let Some((rows, s)) = self.backbone.forward_rows(x)? {
                let n_pix = s.h * s.w;
                let outputs = if heads.is_empty() {
                    Vec::new()
                } else {
                    let kernels = self.backbone.kernels();
                    engine.check_cells(n_pix)?;
                    let (emb, attn) = engine.forward_rows(kernels, &rows, s, heads);
                    let sizes = (heads.len(), engine.dim());
                    head_outputs(&emb, &attn, (s.b, s.h, s.w), sizes, x.device())?
                };
                let signatures = match &self.signature {
                    Some(sig) if signatures => {
                        let pooled =
                            CopySignature::pool_rows(&rows, (s.b, n_pix, s.c), x.device())?;
                        Some(sig.project(&pooled)?.to_vec2::<f32>()?)
                    }
                    _ => None,
                };
                return Ok((s.b, outputs, signatures));
            }
        }
        let feats = self.backbone.forward(x)?;
        let outputs = match &self.head_engine {
            _ if heads.is_empty() => Vec::new(),
            Some(engine) if self.engine_runs(&feats) => self.engine_head(engine, &feats, heads)?,
            _ => self.head.forward_attributes(&feats, heads)?,
        };
        let signatures = match &self.signature {
            Some(sig) if signatures => Some(sig.forward(&feats)?.to_vec2::<f32>()?),
            _ => None,
        };
        Ok((feats.dim(0)?, outputs, signatures))
    }

    fn embed_tensor(&self, x: &Tensor, attributes: &[usize]) -> Result<Vec<Vec<Embedding>>> {
        let identity = self.identity_index();
        let heads: Vec<usize> = attributes
            .iter()
            .copied()
            .filter(|&a| Some(a) != identity)
            .collect();
        let wants_signature = identity.is_some_and(|i| attributes.contains(&i));
        let (batch, outputs, signatures) = self.heads_and_signatures(x, &heads, wants_signature)?;
        let mut per_image: Vec<Vec<Embedding>> = (0..batch)
            .map(|_| Vec::with_capacity(attributes.len()))
            .collect();
        let mut outputs = heads.iter().copied().zip(outputs);
        for &attribute in attributes {
            if Some(attribute) == identity {
                let rows = signatures.iter().flatten();
                for (image, vector) in per_image.iter_mut().zip(rows) {
                    image.push(Embedding {
                        attribute,
                        vector: vector.clone(),
                        attention: None,
                    });
                }
                continue;
            }
            // The head answers `heads` in order, which is `attributes` without the identity.
            let Some((attribute, output)) = outputs.next() else {
                break;
            };
            let vectors = output.embedding.to_dtype(DType::F32)?.to_vec2::<f32>()?;
            let maps = match &output.attention {
                Some(a) => {
                    let (_, h, w) = a.dims3()?;
                    let rows = a.to_dtype(DType::F32)?.flatten_from(1)?.to_vec2::<f32>()?;
                    rows.into_iter()
                        .map(|values| {
                            Some(AttentionMap {
                                height: h,
                                width: w,
                                values,
                            })
                        })
                        .collect()
                }
                None => vec![None; batch],
            };
            for ((image, vector), attention) in per_image.iter_mut().zip(vectors).zip(maps) {
                image.push(Embedding {
                    attribute,
                    vector,
                    attention,
                });
            }
        }
        Ok(per_image)
    }
}

/// The batch size, each asked head's output, and the copy signatures when
/// asked.
type HeadsAndSignatures = (usize, Vec<crate::HeadOutput>, Option<Vec<Vec<f32>>>);

/// The engine head's embeddings (`[B, n, D]`) and attention maps (`[B, n,
/// h * w]`) as one output per attribute.
fn head_outputs(
    emb: &[f32],
    attn: &[f32],
    (b, h, w): (usize, usize, usize),
    (n, d): (usize, usize),
    device: &Device,
) -> Result<Vec<crate::HeadOutput>> {
    (0..n)
        .map(|j| {
            let rows = |data: &[f32], len: usize| -> Vec<f32> {
                (0..b)
                    .flat_map(|i| data[(i * n + j) * len..(i * n + j + 1) * len].to_vec())
                    .collect()
            };
            Ok(crate::HeadOutput {
                embedding: Tensor::from_vec(rows(emb, d), (b, d), device)?,
                attention: Some(Tensor::from_vec(rows(attn, h * w), (b, h, w), device)?),
            })
        })
        .collect()
}

fn load_backbone(
    kind: BackboneKind,
    tensors: BTreeMap<String, Tensor>,
    path: &Path,
    device: &Device,
) -> Result<Backbone> {
    let checked = CheckedTensors::new(tensors);
    let built = Backbone::new(kind, checked.var_builder(DType::F32, device));
    let report = checked.report();
    if !report.is_clean() {
        return Err(ModelError::CheckpointMismatch {
            path: path.to_path_buf(),
            variant: format!("{kind} backbone"),
            report: report.to_string(),
        });
    }
    built
}

/// The CPU engine's version of `head`, when it runs on the CPU and the
/// engine has a kernel for its kind.
fn head_engine(
    head: &Head,
    device: &Device,
) -> Result<Option<std::sync::Arc<crate::cpu::HeadEngine>>> {
    if !device.is_cpu() {
        return Ok(None);
    }
    Ok(head.cpu_engine()?.map(std::sync::Arc::new))
}
