//! Evaluation: the paper's attribute-specific retrieval protocol (per
//! attribute mAP, overall mAP weighted by queries) and triplet accuracy for
//! CSN-style triplet files.
//!
//! Embeddings come from the caller, one `Vec<f32>` per (image, attribute), so
//! this module needs no model: the trainer and the CLI pass a closure over
//! whatever computed them.

mod metrics;
mod retrieval;

pub use metrics::{
    average_precision, cosine, load_triplets, query_average_precisions, rank_by_score,
    triplet_accuracy,
};
pub use retrieval::{evaluate_retrieval, AttributeScore, RetrievalReport};
