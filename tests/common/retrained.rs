//! A "retrained" model for lifecycle tests: the official v1 checkpoint converted to a model
//! directory, with the rows of its last layer (`feature_fc`) in reverse order. Its vectors
//! are the suite model's with the components reversed, so a vector of one model compared
//! with a vector of the other scores low, and a mixed-model answer shows.

use std::path::Path;

/// Write the retrained model into `out` (created) from the checkpoint `checkpoint`.
pub fn write_retrained(checkpoint: &Path, out: &Path) {
    asen_models::convert_checkpoint(checkpoint, out, &asen_models::ConvertOptions::default())
        .expect("convert the checkpoint");
    let file = out.join("model.safetensors");
    let mut tensors =
        candle_core::safetensors::load(&file, &candle_core::Device::Cpu).expect("read weights");
    let mut reversed = 0;
    for (name, tensor) in tensors.iter_mut() {
        if name.ends_with("feature_fc.weight") || name.ends_with("feature_fc.bias") {
            let rows = tensor.dim(0).unwrap() as u32;
            let order: Vec<u32> = (0..rows).rev().collect();
            let index =
                candle_core::Tensor::new(order.as_slice(), &candle_core::Device::Cpu).unwrap();
            *tensor = tensor.index_select(&index, 0).unwrap();
            reversed += 1;
        }
    }
    assert_eq!(
        reversed,
        2,
        "feature_fc weight and bias: {:?}",
        tensors.keys()
    );
    candle_core::safetensors::save(&tensors, &file).expect("write weights");
}
