//! ASEN on candle: preprocessing, backbones, attribute-specific heads,
//! PyTorch checkpoint loading, training and evaluation.
#![warn(missing_docs)]

mod data;
mod device;
mod error;
mod eval;
mod train;

pub use data::{
    generate_synthetic, Attribute, CsvOptions, Dataset, ImageRecord, Probe, ProbeLists, Split,
    SyntheticConfig, SyntheticDataset,
};
pub use device::parse_device;
pub use error::{ModelError, Result};
pub use eval::{
    average_precision, cosine, evaluate_retrieval, load_triplets, query_average_precisions,
    rank_by_score, triplet_accuracy, AttributeScore, RetrievalReport,
};
pub use train::{
    l2_normalize, triplet_ranking_loss, CacheKey, FeatureCache, StepDecay, Triplet, TripletSampler,
    DEFAULT_MARGIN,
};
