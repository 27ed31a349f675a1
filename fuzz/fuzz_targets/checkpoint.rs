//! Checkpoint bytes (gzip, zip, legacy pickle, safetensors): never a panic.
#![no_main]

use asen_models::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(ckpt) = Checkpoint::from_bytes("fuzz.pth", data.to_vec()) {
        let _ = ckpt.variant();
        let _ = ckpt.normalised();
    }
});
