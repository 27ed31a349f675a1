//! Evaluation: the paper's attribute-specific retrieval protocol (per
//! attribute mAP, overall mAP weighted by queries), triplet accuracy for
//! CSN-style triplet files, and the copy-check threshold calibration.
//!
//! Embeddings come from the caller, one `Vec<f32>` per (image, attribute), so
//! the protocol needs no model: `retrieval` takes a closure over whatever
//! computed them. `cached` computes them from a feature cache (a trained
//! head, the ImageNet pooled baseline, random vectors) and calibrates the
//! thresholds; `images` runs a whole [`asen_models::Embedder`] on the images.

mod cached;
mod garment;
mod images;
mod metrics;
mod retrieval;

pub use cached::{
    best_f1_threshold, calibrate_thresholds, embed_split, evaluate_head, evaluate_pairs,
    pooled_split, random_split, PairEmbeddings,
};
pub use garment::{attention_on_garment, border_colour, garment_cells, GARMENT_DIFFERENCE};
pub use images::embed_dataset_split;
pub use metrics::{
    average_precision, load_triplets, query_average_precisions, rank_by_score, triplet_accuracy,
};
pub use retrieval::{evaluate_retrieval, AttributeScore, RetrievalReport};
