//! Attribute-specific embedding heads.

use serde::{Deserialize, Serialize};

/// The head architectures asen knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HeadKind {
    /// ASEN v1 (AAAI 2020): one-hot masks, conv2 attention logits, feature_fc.
    #[serde(rename = "asen_v1")]
    AsenV1,
    /// ASENet_V2: attribute embedding rows, BatchNorm, scaled dot-product attention.
    #[serde(rename = "asen_v2")]
    AsenV2,
    /// ASEN++ global branch.
    #[serde(rename = "asen_pp_global")]
    AsenPpGlobal,
    /// Conditional Similarity Networks baseline.
    #[serde(rename = "csn")]
    Csn,
    /// Attribute-agnostic global embedding baseline.
    #[serde(rename = "global")]
    Global,
}
