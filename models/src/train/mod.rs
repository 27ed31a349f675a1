//! Training pieces that need no particular model: the triplet sampler, the
//! cosine margin ranking loss, the on-disk feature cache and the learning
//! rate schedule. The trainer loop that ties them to a backbone and an ASEN
//! head builds on these.

mod cache;
mod loss;
mod sampler;
mod schedule;

pub use cache::{CacheKey, FeatureCache};
pub use loss::{l2_normalize, triplet_ranking_loss, DEFAULT_MARGIN};
pub use sampler::{Triplet, TripletSampler};
pub use schedule::StepDecay;
