//! Training: the triplet sampler, the cosine margin ranking loss, the on-disk
//! feature cache, the learning rate schedule, dataset feature extraction and
//! the trainer loop that ties them to a frozen backbone and a head, and the
//! fine-tuning loop that trains backbone and head end to end.

mod cache;
mod features;
mod finetune;
mod loss;
mod sampler;
mod schedule;
mod trainer;

pub use cache::{CacheKey, FeatureCache};
pub use features::{
    dataset_features, load_crop, without_images, BadImage, DatasetFeatures, FeatureOptions,
};
pub use finetune::{
    embed_dataset_split, finetune, unusable_images, FinetuneNetwork, FinetuneSettings,
};
pub use loss::{batch_all_ranking_loss, l2_normalize, triplet_ranking_loss, DEFAULT_MARGIN};
pub use sampler::{Sampling, Triplet, TripletSampler};
pub use schedule::StepDecay;
pub use trainer::{
    map_by_attribute, train_head, trained_card, utc_date, EpochRecord, Negatives, ResumeState,
    TrainConfig, TrainEvent, TrainOptions, TrainOutcome, TrainableHead, STATE_FILE,
};
