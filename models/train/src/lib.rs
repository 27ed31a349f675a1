//! Training and evaluation of ASEN models, on top of the inference crate
//! `asen-models` (which never depends on this one).
//!
//! How the types cooperate: a [`Dataset`] (official release layout, CSV or
//! [`generate_synthetic`]) lists images, splits, labels and the retrieval
//! probes. [`TripletSampler`] draws the training triplets of an epoch. Two
//! loops train a model described by a [`TrainConfig`]:
//! - [`train_head`]: a head on the frozen backbone, whose feature maps
//!   [`dataset_features`] computes once into a [`FeatureCache`];
//! - [`finetune`]: backbone ([`TrainableBackbone`]) and head
//!   ([`TrainableHead`]) end to end on the images ([`FinetuneNetwork`]).
//!
//! Both report [`TrainEvent`]s, select the epoch on the valid split's mAP
//! ([`evaluate_retrieval`], the paper's protocol) and write model
//! directories (`last/` with the resume state, `best/`) that
//! [`asen_models::ModelDir`] and [`asen_models::Embedder`] read. Evaluation
//! of a trained model: [`embed_split`] (cached features) or
//! [`embed_dataset_split`] (whole network), then [`evaluate_pairs`];
//! [`calibrate_thresholds`] sets the card's copy-check thresholds.
//!
//! Errors are [`asen_models::ModelError`] (its `Dataset` and `FeatureCache`
//! variants are this crate's), so a caller handles one error type.
//!
//! ```no_run
//! use asen_train::{generate_synthetic, SyntheticConfig, TripletSampler};
//!
//! # fn main() -> Result<(), asen_models::ModelError> {
//! let data = generate_synthetic(&SyntheticConfig::default())?;
//! let sampler = TripletSampler::new(&data.dataset, 0)?;
//! let triplets = sampler.epoch(0, 64); // anchor, positive, negative, attribute
//! # let _ = triplets;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod copies;
mod data;
mod eval;
mod features;
mod train;

pub use copies::{
    evaluate_copies, fit_copy_signature, fit_projection, flagged_share, look_alike_pairs, roc_auc,
    youden_threshold, CopyFitOptions, CopyPair, CopyProgress, CopyRecipe, CopyReport, FitConfig,
};
pub use data::{
    generate_synthetic, Attribute, CsvOptions, Dataset, ImageRecord, Probe, ProbeLists, Split,
    SyntheticConfig, SyntheticDataset,
};
pub use eval::{
    attention_on_garment, average_precision, best_f1_threshold, border_colour,
    calibrate_thresholds, embed_dataset_split, embed_split, evaluate_head, evaluate_pairs,
    evaluate_retrieval, garment_cells, load_triplets, pooled_split, query_average_precisions,
    random_split, rank_by_score, triplet_accuracy, AttributeScore, PairEmbeddings, RetrievalReport,
    GARMENT_DIFFERENCE,
};
pub use features::{
    dataset_features, load_crop, unusable_images, without_images, BadImage, CacheKey,
    DatasetFeatures, FeatureCache, FeatureOptions,
};
pub use train::{
    batch_all_ranking_loss, extend_head, extended_card, extension_config, finetune, train_head,
    triplet_ranking_loss, EpochRecord, ExtensionHead, FinetuneNetwork, FinetuneSettings,
    GarmentPrior, Negatives, ResumeState, Sampling, StepDecay, TrainConfig, TrainEvent,
    TrainOptions, TrainOutcome, TrainableBackbone, TrainableHead, Triplet, TripletSampler,
    ATTRIBUTE_ROWS, DEFAULT_MARGIN, GARMENT_TARGET, STATE_FILE,
};
