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

/// Synthetic garments of `size` px, `(train, valid, test)` images drawn from
/// `seed`, written under `dir/data`.
#[allow(dead_code)]
pub fn synthetic(
    dir: &std::path::Path,
    size: u32,
    (train, valid, test): (usize, usize, usize),
    seed: u64,
) -> (asen_train::SyntheticDataset, asen_train::Dataset) {
    let synthetic = asen_train::generate_synthetic(&asen_train::SyntheticConfig {
        size,
        train,
        valid,
        test,
        seed,
        ..asen_train::SyntheticConfig::default()
    })
    .unwrap();
    let dataset = synthetic.write(dir.join("data")).unwrap();
    (synthetic, dataset)
}

/// The frozen MobileNetV2's maps of `dataset` at `input_size` px (on the
/// fine grid with `fine_map`), cached in `dir/cache.bin`.
#[allow(dead_code)]
pub fn mobilenet_features(
    dataset: &asen_train::Dataset,
    dir: &std::path::Path,
    input_size: u32,
    fine_map: bool,
) -> asen_train::DatasetFeatures {
    let mut fopts = asen_train::FeatureOptions::new(asen_models::BackboneKind::MobileNetV2);
    fopts.weights_dirs = weights_dirs();
    fopts.input_size = input_size;
    fopts.fine_map = fine_map;
    asen_train::dataset_features(dataset, &dir.join("cache.bin"), &fopts, &|_, _| {}).unwrap()
}
