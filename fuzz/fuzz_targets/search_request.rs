//! Search filters and item ids as they arrive in request JSON: parsed (and re-serialised
//! when accepted), never a panic.
#![no_main]

use asen_index::{Filter, ItemId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(filter) = serde_json::from_slice::<Filter>(data) {
        let text = serde_json::to_string(&filter).unwrap();
        let again: Filter = serde_json::from_str(&text).unwrap();
        assert_eq!(again, filter);
    }
    let _ = serde_json::from_slice::<ItemId>(data);
});
