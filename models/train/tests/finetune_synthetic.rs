//! CI-sized end-to-end fine-tuning on the synthetic garments at 32 px on the
//! CPU (the same code runs on a CUDA device): training runs, the backbone
//! weights and BatchNorm statistics move away from ImageNet's, the saved
//! model directory loads with `Embedder::load` and embeds exactly as the
//! trainer's own eval-mode network, and a resumed run continues from the
//! saved state; and with frozen BatchNorm the held-out loss of fixed
//! triplets falls (with BatchNorm in training mode it does not on this data,
//! so the end-to-end test checks the mechanics, not the loss).

mod support;

use asen_models::{BackboneKind, Embedder, EmbedderOptions, HeadKind, ModelDir};
use asen_train::{
    finetune, FinetuneNetwork, FinetuneSettings, Split, StepDecay, SyntheticConfig, TrainConfig,
    TrainEvent, TrainOptions, TripletSampler,
};
use candle_core::{Device, Tensor};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn mobilenet_v2_and_asen_v2_fine_tune_end_to_end() {
    let imagenet = match BackboneKind::MobileNetV2.imagenet_weights_path(&support::weights_dirs()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skipping: {e}");
            return;
        }
    };
    let (dir, dataset) = synthetic_dataset(32, (96, 24, 8), 5);

    // 32 px (a 1x1 MobileNetV2 map) keeps the CPU run short: fine-tuning on
    // the CPU runs about 2 triplets/s at 64 px on the loaded 2-core CI machine.
    let mut cfg = small_asen_v2(32);
    cfg.epochs = 2;
    cfg.triplets_per_epoch = 64;
    cfg.schedule = StepDecay::new(1e-3, 0.5, 1).unwrap();
    cfg.finetune = Some(FinetuneSettings {
        backbone_lr_scale: 0.1,
        flip: false,
        ..FinetuneSettings::default()
    });
    let out = dir.path().join("run");
    let dev = Device::Cpu;
    let mut losses = Vec::new();
    let outcome = finetune(&dataset, &cfg, &out, &options(), &dev, &mut |e| {
        if let TrainEvent::Step { loss, .. } = e {
            losses.push(*loss);
        }
    })
    .unwrap();
    assert_eq!(outcome.history.len(), 2);
    assert_eq!(losses.len(), 8);
    assert!(losses.iter().all(|l| l.is_finite()));

    // The saved backbone moved away from ImageNet: weights and BN statistics.
    let saved =
        candle_core::safetensors::load(outcome.last_dir.join("model.safetensors"), &dev).unwrap();
    let original = candle_core::safetensors::load(&imagenet, &dev).unwrap();
    for key in [
        "features.0.0.weight",
        "features.9.conv.3.weight",
        "features.18.1.running_mean",
        "features.18.1.running_var",
    ] {
        let d = max_abs_diff(&saved[&format!("backbonenet.{key}")], &original[key]);
        assert!(d > 1e-6, "{key} did not change");
    }
    assert!(saved.keys().all(|k| !k.contains("num_batches")));

    // Embedder::load of the directory == the trainer's eval-mode network.
    let embedder = Embedder::load(&outcome.last_dir, &EmbedderOptions::default()).unwrap();
    assert_eq!(embedder.card().backbone, "mobilenet_v2");
    let net =
        FinetuneNetwork::load(&cfg, &ModelDir::load(&outcome.last_dir).unwrap(), &dev).unwrap();
    let images: Vec<_> = dataset.split_indices(Split::Valid)[..4]
        .iter()
        .map(|&i| {
            asen_train::load_crop(
                &dataset.image_path(i).unwrap(),
                embedder.preprocess_config(),
            )
            .unwrap()
        })
        .collect();
    let x = asen_models::to_tensor(&images, &dev).unwrap();
    for attribute in [0usize, 3] {
        let attr = Tensor::from_vec(vec![attribute as u32; 4], 4, &dev).unwrap();
        let own = net.forward_t(&x, &attr, false).unwrap().embedding;
        let served: Vec<f32> = embedder
            .embed_crops(&images, &[attribute])
            .unwrap()
            .into_iter()
            .flat_map(|per| per[0].vector.clone())
            .collect();
        let served = Tensor::from_vec(served, own.shape(), &dev).unwrap();
        let d = max_abs_diff(&own, &served);
        assert!(d < 1e-4, "attribute {attribute}: max difference {d}");
    }

    // Resume: one more epoch trains exactly one, from the saved state.
    cfg.epochs = 3;
    let mut epochs = Vec::new();
    let resumed = finetune(
        &dataset,
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..options()
        },
        &dev,
        &mut |e| {
            if let TrainEvent::Epoch(r) = e {
                epochs.push(r.epoch);
            }
        },
    )
    .unwrap();
    assert_eq!(epochs, vec![3]);
    assert_eq!(resumed.history.len(), 3);
    let numbers: Vec<usize> = resumed.history.iter().map(|r| r.epoch).collect();
    assert_eq!(numbers, vec![1, 2, 3]);

    // Other settings cannot resume the same run.
    cfg.finetune = Some(FinetuneSettings {
        backbone_lr_scale: 0.2,
        flip: false,
        ..FinetuneSettings::default()
    });
    let err = finetune(
        &dataset,
        &cfg,
        &out,
        &TrainOptions {
            resume: true,
            ..options()
        },
        &dev,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("another configuration"), "{err}");
}

#[test]
fn resnet_and_the_colour_histogram_are_refused() {
    let (dir, dataset) = synthetic_dataset(32, (12, 8, 4), 0);
    let mut cfg = TrainConfig::new(HeadKind::Global, BackboneKind::ResNet50Layer3);
    let run = |cfg: &TrainConfig| {
        finetune(
            &dataset,
            cfg,
            &dir.path().join("run"),
            &options(),
            &Device::Cpu,
            &mut |_| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    assert!(run(&cfg).contains("resnet50_layer3"));
    cfg.backbone = BackboneKind::MobileNetV2;
    cfg.colour_histogram = true;
    assert!(run(&cfg).contains("colour histogram"));
}

/// Training options that find the shipped ImageNet weights.
fn options() -> TrainOptions {
    TrainOptions {
        weights_dirs: support::weights_dirs(),
        ..TrainOptions::default()
    }
}

/// ASEN v2 on MobileNetV2 at `size` px with 32-wide embedding, attention
/// and gate, in batches of 16 triplets: small enough for CI on the CPU.
fn small_asen_v2(size: u32) -> TrainConfig {
    let mut cfg = TrainConfig::new(HeadKind::AsenV2, BackboneKind::MobileNetV2);
    cfg.input_size = size;
    cfg.embedding_dim = 32;
    cfg.attention_dim = 32;
    cfg.gate_hidden = 32;
    cfg.batch_size = 16;
    cfg
}

/// `size`-px synthetic garments (`(train, valid, test)` images, `seed`)
/// written to a temporary folder (kept alive by the returned guard).
fn synthetic_dataset(
    size: u32,
    (train, valid, test): (usize, usize, usize),
    seed: u64,
) -> (tempfile::TempDir, asen_train::Dataset) {
    let synthetic = asen_train::generate_synthetic(&SyntheticConfig {
        size,
        train,
        valid,
        test,
        seed,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = synthetic.write(dir.path().join("data")).unwrap();
    (dir, dataset)
}

/// Triplet loss (margin 0.2) of `net` over 24 fixed triplets drawn with
/// seed 99, mean of batches of 8: in training mode (batch statistics, which
/// also move the running statistics) or in eval mode (what the network has
/// learnt, independent of the batch).
fn fixed_triplet_loss(
    net: &FinetuneNetwork,
    dataset: &asen_train::Dataset,
    size: usize,
    train: bool,
) -> f32 {
    let dev = Device::Cpu;
    let fixed = TripletSampler::new(dataset, 99).unwrap().epoch(1000, 24);
    let preprocess = asen_models::PreprocessConfig {
        size,
        ..Default::default()
    };
    let mut sum = 0.0;
    for batch in fixed.chunks(8) {
        let b = batch.len();
        let indices: Vec<usize> = [
            batch.iter().map(|t| t.anchor).collect::<Vec<_>>(),
            batch.iter().map(|t| t.positive).collect(),
            batch.iter().map(|t| t.negative).collect(),
        ]
        .concat();
        let attrs: Vec<u32> = (0..3)
            .flat_map(|_| batch.iter().map(|t| t.attribute as u32))
            .collect();
        let crops: Vec<_> = indices
            .iter()
            .map(|&i| asen_train::load_crop(&dataset.image_path(i).unwrap(), &preprocess).unwrap())
            .collect();
        let x = asen_models::to_tensor(&crops, &dev).unwrap();
        let attr = Tensor::from_vec(attrs, indices.len(), &dev).unwrap();
        let e = net.forward_t(&x, &attr, train).unwrap().embedding;
        let loss = asen_train::triplet_ranking_loss(
            &e.narrow(0, 0, b).unwrap(),
            &e.narrow(0, b, b).unwrap(),
            &e.narrow(0, 2 * b, b).unwrap(),
            0.2,
        )
        .unwrap();
        sum += loss.to_scalar::<f32>().unwrap();
    }
    sum / fixed.chunks(8).count() as f32
}

/// Fine-tune on the synthetic garments at `size` px with the backbone's
/// BatchNorm frozen or not; the held-out loss before and after, and the
/// valid mAP of every epoch.
fn fine_tune_run(freeze_batch_norm: bool, size: u32) -> Option<(f32, f32, Vec<f64>)> {
    if BackboneKind::MobileNetV2
        .imagenet_weights_path(&support::weights_dirs())
        .is_err()
    {
        eprintln!("skipping: no MobileNetV2 ImageNet weights");
        return None;
    }
    let (dir, dataset) = synthetic_dataset(size, (96, 32, 8), 11);
    let mut cfg = small_asen_v2(size);
    cfg.epochs = 3;
    cfg.triplets_per_epoch = 96;
    cfg.schedule = StepDecay::new(5e-4, 0.5, 10).unwrap();
    cfg.finetune = Some(FinetuneSettings {
        flip: false,
        freeze_batch_norm,
        ..FinetuneSettings::default()
    });
    let dev = Device::Cpu;
    let n_attr = dataset.attributes().len();
    let preprocess = asen_models::PreprocessConfig {
        size: size as usize,
        ..Default::default()
    };
    let train = dataset.split_indices(Split::Train);
    let initial = FinetuneNetwork::new(&cfg, n_attr, &support::weights_dirs(), &dev).unwrap();
    initial
        .recompute_head_batch_norm(&dataset, &train, &preprocess, 32)
        .unwrap();
    let before = fixed_triplet_loss(&initial, &dataset, size as usize, false);
    let out = dir.path().join("run");
    let outcome = finetune(&dataset, &cfg, &out, &options(), &dev, &mut |_| {}).unwrap();
    let trained =
        FinetuneNetwork::load(&cfg, &ModelDir::load(&outcome.last_dir).unwrap(), &dev).unwrap();
    let after = fixed_triplet_loss(&trained, &dataset, size as usize, false);
    let maps = outcome.history.iter().map(|r| r.valid_map).collect();
    Some((before, after, maps))
}

/// With frozen BatchNorm, fine-tuning learns: the held-out loss of fixed
/// train triplets falls and the last epoch's valid mAP beats the first's.
/// (With BatchNorm in training mode the same run gets worse on this data,
/// 0.157 -> 0.192 held loss and 44 -> 36 % valid mAP when measured; see
/// docs/results.md. Its gradient is checked in `train::backbone`.)
#[test]
fn frozen_batch_norm_fine_tuning_lowers_the_held_loss() {
    let Some((before, after, maps)) = fine_tune_run(true, 32) else {
        return;
    };
    eprintln!("held loss {before:.4} -> {after:.4}, valid mAP by epoch {maps:?}");
    assert!(after < before, "held loss rose: {before} -> {after}");
    assert!(
        maps[maps.len() - 1] > maps[0],
        "valid mAP did not improve: {maps:?}"
    );
}
