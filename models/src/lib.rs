//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
//!
//! Checkpoints and heads: [`Checkpoint::load`] reads an official `.pth`
//! (legacy or zip, optionally gzipped) or a safetensors file; its keys are
//! normalised (backbone under `backbonenet.`, head at the root) and
//! [`CheckedTensors`] builds models from them while collecting a
//! [`KeyReport`]. [`convert_checkpoint`] turns an official checkpoint into a
//! model directory (`model.safetensors` + [`ModelCard`]), which
//! [`ModelDir::load`] reads back.
//!
//! ```no_run
//! use asen_models::{Checkpoint, ModelError};
//! use candle_core::{Device, Tensor};
//!
//! # fn main() -> Result<(), ModelError> {
//! let ckpt = Checkpoint::load("asen_v1_fashionai.pth.gz")?;
//! let (head, cfg) = ckpt.load_head(&Device::Cpu)?; // every head key checked
//! let feat = Tensor::zeros((2, cfg.in_channels, 14, 14), candle_core::DType::F32, &Device::Cpu)?;
//! let attr = Tensor::new(&[0u32, 4], &Device::Cpu)?; // one attribute per image
//! let out = head.forward(&feat, &attr, false)?; // embedding [2, 1024], attention [2, 14, 14]
//! let per_attribute = head.forward_attributes(&feat, &[0, 4, 7])?; // shared conv1 branch
//! # let _ = (out, per_attribute);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod backbone;
pub mod card;
pub mod checkpoint;
pub mod colour;
mod convert;
mod data;
mod device;
mod embedder;
mod error;
mod eval;
pub mod head;
mod layers;
mod preprocess;
mod train;

pub use backbone::{
    locate_weights, Backbone, BackboneKind, EfficientNetLite0, Lite0Classifier, MobileNetV2,
    ResNet50Layer3, TrainableBackbone,
};
pub use card::{AttributeSpec, ModelCard, Provenance};
pub use checkpoint::{CheckedTensors, Checkpoint, CheckpointFormat, KeyReport};
pub use convert::{
    convert_checkpoint, inspect_checkpoint, CheckpointSummary, ConvertOptions, ModelDir,
};
pub use data::{
    generate_synthetic, Attribute, CsvOptions, Dataset, ImageRecord, Probe, ProbeLists, Split,
    SyntheticConfig, SyntheticDataset,
};
pub use device::parse_device;
pub use embedder::{
    default_model_dir, AttentionMap, Embedder, EmbedderOptions, Embedding, MODEL_DIR_ENV,
};
pub use error::{ModelError, Result};
pub use eval::{
    average_precision, best_f1_threshold, calibrate_thresholds, cosine, embed_split, evaluate_head,
    evaluate_pairs, evaluate_retrieval, load_triplets, pooled_split, query_average_precisions,
    random_split, rank_by_score, triplet_accuracy, AttributeScore, PairEmbeddings, RetrievalReport,
};
pub use head::{Head, HeadConfig, HeadKind, HeadOutput};
pub use layers::{conv_bn_folded, pad_same, same_padding};
pub use preprocess::{
    decode_image, preprocess_bytes, resize_and_crop, to_tensor, PreprocessConfig, IMAGENET_MEAN,
    IMAGENET_STD,
};
pub use train::{
    batch_all_ranking_loss, dataset_features, embed_dataset_split, finetune, l2_normalize,
    load_crop, map_by_attribute, train_head, trained_card, triplet_ranking_loss, unusable_images,
    utc_date, without_images, BadImage, CacheKey, DatasetFeatures, EpochRecord, FeatureCache,
    FeatureOptions, FinetuneNetwork, FinetuneSettings, Negatives, ResumeState, Sampling, StepDecay,
    TrainConfig, TrainEvent, TrainOptions, TrainOutcome, TrainableHead, Triplet, TripletSampler,
    DEFAULT_MARGIN, STATE_FILE,
};
