//! Model card JSON: parsed and validated, never a panic.
#![no_main]

use asen_models::ModelCard;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(card) = serde_json::from_slice::<ModelCard>(data) {
        let _ = card.validate();
    }
});
