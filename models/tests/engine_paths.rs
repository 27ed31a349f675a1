//! The shipped model (`models/default`: MobileNetV2, colour histogram, ASEN
//! v2 head) gives the same embeddings and attention maps on every CPU
//! kernel path: the engine's AVX-512, AVX2 and portable kernels against
//! candle's ops.

use asen_models::{Embedder, EmbedderOptions, KernelPath};
use candle_core::{Device, Tensor};

fn shipped() -> Embedder {
    let opts = EmbedderOptions {
        weights_dirs: vec![concat!(env!("CARGO_MANIFEST_DIR"), "/weights").into()],
        ..EmbedderOptions::default()
    };
    Embedder::load(concat!(env!("CARGO_MANIFEST_DIR"), "/default"), &opts).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn every_kernel_path_embeds_the_shipped_model_alike() {
    let embedder = shipped();
    // Every attribute, the copy signature's `identity` included.
    let attrs: Vec<usize> = (0..embedder.attribute_names().len()).collect();
    assert!(attrs.len() > 8, "the shipped model has a copy signature");
    // Five images: more than the engine's micro-batch of four.
    let x = Tensor::randn(0f32, 1.0, (5, 3, 224, 224), &Device::Cpu).unwrap();
    let reference = embedder
        .clone()
        .with_kernels(KernelPath::CandleOps)
        .unwrap()
        .embed_normalised(&x, &attrs)
        .unwrap();
    for path in KernelPath::available() {
        let got = embedder
            .clone()
            .with_kernels(path)
            .unwrap()
            .embed_normalised(&x, &attrs)
            .unwrap();
        for (image, (g, r)) in got.iter().zip(&reference).enumerate() {
            for (ge, re) in g.iter().zip(r) {
                assert_eq!(ge.attribute, re.attribute);
                let max = max_abs_diff(&ge.vector, &re.vector);
                assert!(
                    max < 1e-4,
                    "{path} image {image} attribute {}: {max}",
                    ge.attribute
                );
                let (Some(ga), Some(ra)) = (ge.attention.as_ref(), re.attention.as_ref()) else {
                    assert!(ge.attention.is_none() && re.attention.is_none());
                    continue;
                };
                assert_eq!((ga.height, ga.width), (ra.height, ra.width));
                let max = max_abs_diff(&ga.values, &ra.values);
                assert!(
                    max < 1e-5,
                    "{path} attention of attribute {}: {max}",
                    ge.attribute
                );
            }
        }
    }
}

#[test]
fn a_subset_of_attributes_comes_back_in_the_order_asked() {
    let embedder = shipped();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 224, 224), &Device::Cpu).unwrap();
    let all = embedder
        .embed_normalised(&x, &(0..8).collect::<Vec<_>>())
        .unwrap();
    let some = embedder.embed_normalised(&x, &[5, 1]).unwrap();
    for (s, a) in some.iter().zip(&all) {
        assert_eq!(s[0].attribute, 5);
        assert_eq!(s[1].attribute, 1);
        assert_eq!(s[0].vector, a[5].vector);
        assert_eq!(s[1].vector, a[1].vector);
    }
}

/// Forward passes from several threads at once (as a server runs them)
/// share rayon's pool, where a thread that runs one pass's parallel loop can
/// pick up another pass's work: every pass still gets exactly its own
/// result.
#[test]
fn concurrent_forward_passes_match_one_at_a_time() {
    let embedder = shipped();
    let attrs: Vec<usize> = (0..8).collect();
    let inputs: Vec<Tensor> = (0..4)
        .map(|_| Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap())
        .collect();
    let alone: Vec<_> = inputs
        .iter()
        .map(|x| embedder.embed_normalised(x, &attrs).unwrap())
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| {
                let embedder = &embedder;
                let attrs = &attrs;
                s.spawn(move || {
                    (0..5)
                        .map(|_| embedder.embed_normalised(x, attrs).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            for got in h.join().unwrap() {
                for (g, a) in got[0].iter().zip(&alone[i][0]) {
                    assert_eq!(g.vector, a.vector, "input {i} attribute {}", g.attribute);
                }
            }
        }
    });
}
