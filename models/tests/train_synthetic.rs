//! CI-sized training run on the synthetic garments (well under two minutes
//! on a laptop CPU): real MobileNetV2 features cached once, an ASEN v1 head
//! trained on them. The loss must fall, the test mAP must beat random
//! vectors by a wide margin, and the spatial attention for `collar` (a
//! region-level attribute) must peak inside the collar region on most test
//! images. A resumed run must continue from the saved state.

use std::collections::BTreeSet;

use asen_models::{
    dataset_features, evaluate_head, evaluate_pairs, random_split, train_head, without_images,
    BackboneKind, FeatureOptions, HeadKind, ModelCard, Split, StepDecay, SyntheticConfig,
    TrainConfig, TrainEvent, TrainOptions, TrainableHead,
};

#[test]
fn asen_v1_learns_the_synthetic_garments_and_looks_at_the_collar() {
    let synthetic = asen_models::generate_synthetic(&SyntheticConfig {
        size: 96,
        train: 360,
        valid: 80,
        test: 80,
        seed: 5,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = synthetic.write(dir.path().join("data")).unwrap();

    // 192 px input: a 6x6 MobileNetV2 grid.
    let mut fopts = FeatureOptions::new(BackboneKind::MobileNetV2);
    fopts.input_size = 192;
    let features = dataset_features(&dataset, &dir.path().join("cache.bin"), &fopts, &|_, _| {})
        .unwrap();
    assert!(features.bad_images.is_empty());
    let cache = features.cache;
    assert_eq!(cache.dims(), (1280, 6, 6));

    let mut cfg = TrainConfig::new(HeadKind::AsenV1, BackboneKind::MobileNetV2);
    cfg.input_size = 192;
    cfg.embedding_dim = 64;
    cfg.attention_dim = 64;
    cfg.gate_hidden = 64;
    cfg.epochs = 3;
    cfg.triplets_per_epoch = 3200;
    cfg.batch_size = 32;
    cfg.schedule = StepDecay::new(1e-3, 0.5, 2).unwrap();
    cfg.seed = 3;
    let out = dir.path().join("run");
    let mut step_losses = Vec::new();
    let outcome = train_head(
        &dataset,
        &cache,
        &cfg,
        &out,
        &TrainOptions::default(),
        &mut |e| {
            if let TrainEvent::Step { loss, .. } = e {
                step_losses.push(*loss);
            }
        },
    )
    .unwrap();
    assert_eq!(outcome.history.len(), 3);
    let first: f32 = step_losses[..20].iter().sum::<f32>() / 20.0;
    let n = step_losses.len();
    let last: f32 = step_losses[n - 20..].iter().sum::<f32>() / 20.0;
    assert!(last < 0.6 * first, "loss went from {first} to {last}");

    // Test mAP of the best checkpoint against random vectors.
    let card = ModelCard::load(&outcome.best_dir).unwrap();
    let trained = TrainableHead::load(
        card.head,
        &card.head_config,
        &outcome.best_dir.join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let head = trained.head().unwrap();
    let report = evaluate_head(&head, &cache, &dataset, Split::Test, 64).unwrap();
    let random = evaluate_pairs(
        &dataset,
        Split::Test,
        &random_split(&dataset, Split::Test, 64, 1),
    )
    .unwrap();
    assert!(
        report.map > random.map + 0.25,
        "trained {report}\nrandom {random}"
    );

    // Where the collar attention peaks on the test images.
    let collar = dataset.attribute_index("collar").unwrap();
    let region = synthetic.region("collar").unwrap();
    let test = dataset.split_indices(Split::Test);
    let x = cache.get(&test, &candle_core::Device::Cpu).unwrap();
    let outputs = head.forward_attributes(&x, &[collar]).unwrap();
    let maps = outputs[0].attention.as_ref().unwrap().to_vec3::<f32>().unwrap();
    let mut inside = 0;
    for map in &maps {
        let (h, w) = (map.len(), map[0].len());
        let mut best = (0, 0, f32::MIN);
        for (r, row) in map.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                if v > best.2 {
                    best = (r, c, v);
                }
            }
        }
        let (cx, cy) = (
            (best.1 as f32 + 0.5) / w as f32,
            (best.0 as f32 + 0.5) / h as f32,
        );
        if cx >= region[0] && cx < region[2] && cy >= region[1] && cy < region[3] {
            inside += 1;
        }
    }
    let rate = inside as f64 / maps.len() as f64;
    println!("collar attention peaks inside the collar region on {inside}/{} test images ({:.0} %)", maps.len(), rate * 100.0);
    assert!(
        rate >= 0.6,
        "collar attention peaks inside the collar region {region:?} on only {inside} of {} test images ({:.0} %)",
        maps.len(),
        rate * 100.0
    );

    // Resume: a finished run asked for one more epoch trains exactly one.
    cfg.epochs = 4;
    let mut epochs = Vec::new();
    let resumed = train_head(
        &dataset,
        &cache,
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..TrainOptions::default()
        },
        &mut |e| {
            if let TrainEvent::Epoch(r) = e {
                epochs.push(r.epoch);
            }
        },
    )
    .unwrap();
    assert_eq!(epochs, vec![4]);
    assert_eq!(resumed.history.len(), 4);
    assert!(resumed.best_map >= outcome.best_map);
}

#[test]
fn bad_images_are_zeroed_listed_and_left_out() {
    let synthetic = asen_models::generate_synthetic(&SyntheticConfig {
        size: 64,
        train: 30,
        valid: 10,
        test: 10,
        seed: 2,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = synthetic.write(dir.path()).unwrap();
    let missing = dataset.image_path(3).unwrap();
    std::fs::remove_file(&missing).unwrap();
    let corrupt = dataset.image_path(35).unwrap();
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();

    let mut fopts = FeatureOptions::new(BackboneKind::MobileNetV2);
    fopts.input_size = 64;
    fopts.batch_size = 8;
    let cache_path = dir.path().join("cache.bin");
    let features = dataset_features(&dataset, &cache_path, &fopts, &|_, _| {}).unwrap();
    let bad: Vec<usize> = features.bad_images.iter().map(|b| b.index).collect();
    assert_eq!(bad, vec![3, 35]);
    assert_eq!(features.bad_images[0].path, missing);
    assert!(
        features.bad_images[1].reason.contains(&corrupt.display().to_string()),
        "{:?}",
        features.bad_images[1]
    );
    let zeros = features.cache.get(&[3], &candle_core::Device::Cpu).unwrap();
    assert_eq!(zeros.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);

    // Reopened, the cache still knows its bad images.
    let again = dataset_features(&dataset, &cache_path, &fopts, &|_, _| {}).unwrap();
    assert_eq!(again.bad_images, features.bad_images);

    let set: BTreeSet<usize> = bad.into_iter().collect();
    let kept = without_images(&dataset, &set).unwrap();
    assert!(kept.images()[3].labels.iter().all(|l| l.is_none()));
    for split in [Split::Valid, Split::Test] {
        let lists = kept.probes(split);
        assert!(lists.queries.iter().chain(&lists.candidates).all(|p| !set.contains(&p.image)));
    }
}
