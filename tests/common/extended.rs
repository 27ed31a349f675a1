//! Models for the tests of extending a model with an attribute, cut from the shipped model
//! (whose last attribute is `pattern`): a base without its last attribute, and an extension
//! of that base adding it back. The extension computes exactly what the shipped model
//! computes, so every vector it gives is known.

use std::path::Path;

use asen_models::{BaseModel, ModelCard, SIGNATURE_FILE};

const ROWS: &str = "attr_embedding.weight";

/// The shipped model of this checkout.
pub fn shipped() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default")
}

/// Write into `out` (created) the shipped model without its last attribute: one row fewer
/// in the attribute embedding, the card without it. Returns the attribute left out.
pub fn write_base(out: &Path) -> String {
    let shipped = shipped();
    std::fs::create_dir_all(out).unwrap();
    let mut card = ModelCard::load(&shipped).unwrap();
    let dropped = card.attributes.pop().unwrap().name;
    card.head_config.n_attributes -= 1;
    if let Some(t) = card.match_thresholds.as_mut() {
        t.remove(&dropped);
    }
    let file = shipped.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &candle_core::Device::Cpu).unwrap();
    let rows = &tensors[ROWS];
    let kept = rows.narrow(0, 0, rows.dim(0).unwrap() - 1).unwrap();
    tensors.insert(ROWS.to_string(), kept);
    candle_core::safetensors::save(&tensors, out.join("model.safetensors")).unwrap();
    copy_signature(&shipped, out);
    card.save(out).unwrap();
    dropped
}

/// Write into `out` (created) the shipped model as an extension of `base` (written by
/// [`write_base`]): the shipped weights, its card naming `base` as the model it extends.
#[allow(dead_code)] // not every test binary writes one
pub fn write_extension(base: &Path, out: &Path) {
    let shipped = shipped();
    std::fs::create_dir_all(out).unwrap();
    let mut card = ModelCard::load(&shipped).unwrap();
    card.extends = vec![BaseModel {
        fingerprint: asen_models::fingerprint(base).unwrap(),
        attributes: ModelCard::load(base).unwrap().attribute_names(),
    }];
    std::fs::copy(
        shipped.join("model.safetensors"),
        out.join("model.safetensors"),
    )
    .unwrap();
    copy_signature(&shipped, out);
    card.save(out).unwrap();
}

fn copy_signature(from: &Path, to: &Path) {
    if from.join(SIGNATURE_FILE).is_file() {
        std::fs::copy(from.join(SIGNATURE_FILE), to.join(SIGNATURE_FILE)).unwrap();
    }
}
