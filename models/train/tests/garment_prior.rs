//! The garment prior (`TrainConfig::garment_prior`) moves the attention onto
//! the garment: the same small ASEN v2 run on the synthetic garments, with
//! and without it, and the attention's mass on the garment cells of the
//! test images (the rule of `asen_train::garment_cells`) compared (measured:
//! 0.26 without, 0.86 with; asserted: at least 0.8, and 0.3 above).

mod support;

use asen_models::{BackboneKind, HeadKind, PreprocessConfig};
use asen_train::{
    garment_cells, load_crop, train_head, Dataset, FeatureCache, Split, StepDecay, TrainConfig,
    TrainOptions, TrainableHead,
};
use candle_core::Device;

const SIZE: u32 = 128;

/// Mean attention mass on the garment cells over the test images, all attributes.
fn garment_mass(head: &asen_models::Head, dataset: &Dataset, cache: &FeatureCache) -> f64 {
    let test = dataset.split_indices(Split::Test);
    let x = cache.get(&test, &Device::Cpu).unwrap();
    let (_, h, w) = cache.dims();
    let preprocess = PreprocessConfig {
        size: SIZE as usize,
        ..PreprocessConfig::default()
    };
    let masks: Vec<Vec<bool>> = test
        .iter()
        .map(|&i| {
            let crop = load_crop(&dataset.image_path(i).unwrap(), &preprocess).unwrap();
            garment_cells(&crop, h, w)
        })
        .collect();
    let attributes: Vec<usize> = (0..dataset.attributes().len()).collect();
    let outs = head.forward_attributes(&x, &attributes).unwrap();
    let mut sum = 0f64;
    for out in &outs {
        let maps: Vec<Vec<f32>> = out
            .attention
            .as_ref()
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2()
            .unwrap();
        for (map, mask) in maps.iter().zip(&masks) {
            sum += map
                .iter()
                .zip(mask)
                .filter(|(_, g)| **g)
                .map(|(v, _)| f64::from(*v))
                .sum::<f64>();
        }
    }
    sum / (outs.len() * test.len()) as f64
}

fn train(dataset: &Dataset, cache: &FeatureCache, prior: f64, out: &std::path::Path) -> f64 {
    let mut cfg = TrainConfig::new(HeadKind::AsenV2, BackboneKind::MobileNetV2);
    cfg.input_size = SIZE;
    cfg.embedding_dim = 32;
    cfg.attention_dim = 32;
    cfg.gate_hidden = 32;
    cfg.epochs = 2;
    cfg.triplets_per_epoch = 640;
    cfg.batch_size = 32;
    cfg.schedule = StepDecay::new(1e-3, 0.5, 2).unwrap();
    cfg.garment_prior = prior;
    train_head(
        dataset,
        cache,
        &cfg,
        out,
        &TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let model = asen_models::ModelDir::load(out.join("last")).unwrap();
    let head = TrainableHead::load(&model, &Device::Cpu)
        .unwrap()
        .head()
        .unwrap();
    garment_mass(&head, dataset, cache)
}

#[test]
fn the_garment_prior_moves_the_attention_onto_the_garment() {
    let dir = tempfile::tempdir().unwrap();
    let (_, dataset) = support::synthetic(dir.path(), 96, (120, 30, 30), 3);
    let cache = support::mobilenet_features(&dataset, dir.path(), SIZE, false).cache;
    let without = train(&dataset, &cache, 0.0, &dir.path().join("without"));
    let with = train(&dataset, &cache, 2.0, &dir.path().join("with"));
    eprintln!("attention on the garment: {without:.3} without the prior, {with:.3} with it");
    assert!(
        with >= 0.8 && with > without + 0.3,
        "without {without:.3}, with {with:.3}"
    );
}
