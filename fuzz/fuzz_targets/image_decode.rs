//! Image decoding under tight pixel and memory limits: never a panic, and an image that
//! decodes is within the limits its header check promised.
#![no_main]

use asen_models::{decode_cost, decode_image, PreprocessConfig};
use libfuzzer_sys::fuzz_target;

const LIMITS: PreprocessConfig = PreprocessConfig {
    size: 224,
    max_pixels: 1 << 16,
    max_decode_bytes: 4 << 20,
};

fuzz_target!(|data: &[u8]| {
    let cost = decode_cost(data, &LIMITS);
    if let Ok(c) = &cost {
        assert!(c.bytes <= LIMITS.max_decode_bytes);
    }
    if let Ok(img) = decode_image(data, &LIMITS) {
        assert!(u64::from(img.width()) * u64::from(img.height()) <= LIMITS.max_pixels);
        assert!(cost.is_ok());
    }
});
