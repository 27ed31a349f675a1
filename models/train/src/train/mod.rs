//! Training: the triplet sampler, the cosine margin ranking loss, the
//! learning rate schedule, and the two loops built on them: the head trainer
//! on cached features of a frozen backbone (`trainer`) and end-to-end
//! fine-tuning of backbone and head (`finetune`, with the trainable backbone
//! of `backbone`). What both loops share (run records, checkpoint
//! directories, the trained card, the loss of a batch) is in `run`; the
//! configuration in `config`; the trainable head in `head`; the garment
//! prior on the attention in `prior`.

mod backbone;
mod config;
mod extend;
mod finetune;
mod head;
mod loss;
mod prior;
mod run;
mod sampler;
mod schedule;
mod trainer;

pub use backbone::TrainableBackbone;
pub use config::{FinetuneSettings, Negatives, TrainConfig};
pub use extend::{extend_head, extended_card, extension_config, ExtensionHead, ATTRIBUTE_ROWS};
pub use finetune::{finetune, FinetuneNetwork};
pub use head::TrainableHead;
pub use loss::{batch_all_ranking_loss, triplet_ranking_loss, DEFAULT_MARGIN};
pub use prior::{GarmentPrior, GARMENT_TARGET};
pub use run::{EpochRecord, ResumeState, TrainEvent, TrainOptions, TrainOutcome, STATE_FILE};
pub use sampler::{Sampling, Triplet, TripletSampler};
pub use schedule::StepDecay;
pub use trainer::train_head;
