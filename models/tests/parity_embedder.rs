//! End to end from the JPEG/PNG files through [`Embedder`] with the full
//! official ASEN v1 checkpoint (legacy format, gzipped, `cuda:0` storages):
//! decode, Pillow-exact resize and crop, ResNet-50 to layer3, v1 head, against
//! PyTorch's `emb_c*` / `attn_c*` (golden README section 8: cosine >= 0.9999,
//! attention max abs difference <= 1e-3 with another JPEG decoder).

mod fixtures;

use asen_models::{Embedder, EmbedderOptions};

#[test]
fn official_v1_checkpoint_embeds_images_like_pytorch() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let model = Embedder::load(
        shared.join("golden/asen_v1_fashionai.pth.gz"),
        &EmbedderOptions::default(),
    )
    .expect("load the official v1 checkpoint");
    assert_eq!(model.card().attributes.len(), 8);
    assert_eq!(model.card().embedding_dim, 1024);

    let bytes: Vec<Vec<u8>> = fixtures::golden_images(&shared)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    let refs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    let attributes = [0usize, 4, 7];
    let out = model.embed_bytes(&refs, &attributes).expect("embed");
    assert_eq!(out.len(), 6);

    let expected = fixtures::load_golden(&shared, "asen_v1_expected.safetensors");
    for (j, &c) in attributes.iter().enumerate() {
        let emb = expected[&format!("emb_c{c}")].to_vec2::<f32>().unwrap();
        let attn = expected[&format!("attn_c{c}")]
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, image) in out.iter().enumerate() {
            let got = &image[j];
            assert_eq!(got.attribute, c);
            let cos: f32 = got.vector.iter().zip(&emb[i]).map(|(a, b)| a * b).sum();
            assert!(cos >= 0.9999, "image {i} attribute {c}: cosine {cos}");
            let map = got.attention.as_ref().expect("v1 has attention");
            assert_eq!((map.height, map.width), (14, 14));
            let max = map
                .values
                .iter()
                .zip(&attn[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max <= 1e-3, "image {i} attribute {c}: attention diff {max}");
        }
    }
}

#[test]
fn unknown_attribute_index_is_an_error() {
    let Some(shared) = fixtures::shared_dir() else {
        return;
    };
    let model = Embedder::load(
        shared.join("golden/asen_v1_fashionai.pth.gz"),
        &EmbedderOptions::default(),
    )
    .unwrap();
    let image = image::RgbImage::new(224, 224);
    let err = model.embed_images(&[image], &[8]).unwrap_err().to_string();
    assert!(err.contains("unknown attribute"), "{err}");
    assert!(model.attribute_index("collar").is_err());
}
