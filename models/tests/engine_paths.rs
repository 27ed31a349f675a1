//! The shipped model (`models/default`: MobileNetV2, colour histogram, ASEN
//! v2 head) gives the same embeddings and attention maps on every CPU
//! kernel path: the engine's AVX2 and portable kernels against candle's ops.

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
    let attrs: Vec<usize> = (0..8).collect();
    // Three images, one odd size so no map divides evenly.
    let x = Tensor::randn(0f32, 1.0, (3, 3, 224, 224), &Device::Cpu).unwrap();
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
                let (ga, ra) = (
                    ge.attention.as_ref().unwrap(),
                    re.attention.as_ref().unwrap(),
                );
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
