//! Where the tests find the shipped ImageNet weights: `models/weights/` of
//! this source tree (the library itself searches only where it is told).

use std::path::PathBuf;

/// The directories to search for the shipped backbone weights.
pub fn weights_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../weights"
    ))]
}
