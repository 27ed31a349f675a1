//! [`CompactPayload`]: how the live set holds each item's payload in memory.
//!
//! A [`Payload`] is a `serde_json::Map`, a B-tree whose first node has room for 11 entries
//! whatever the count: about 640 bytes for a payload of one field, more than an `int8` graph
//! holds per item and attribute. The live set keeps every live payload (filters, group-by and
//! hits read it without a sled read), so it stores them as a boxed slice of `(key, value)` pairs
//! sorted by key, with the keys shared through a [`KeyInterner`]: one field costs 48 bytes plus
//! what its value owns. Nested objects stay maps; they are rare in catalogue payloads.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use crate::filter::Fields;
use crate::types::Payload;

/// Distinct keys an interner shares. Past this, new keys are allocated per item (correct, only
/// larger), so a catalogue whose items invent keys cannot grow the interner without bound.
const MAX_INTERNED_KEYS: usize = 4096;

/// The top-level keys of a catalogue's payloads, held once.
#[derive(Default)]
pub(crate) struct KeyInterner {
    keys: HashSet<Arc<str>>,
}

impl KeyInterner {
    /// The shared copy of `key`, registering it while there is room.
    fn intern(&mut self, key: &str) -> Arc<str> {
        if let Some(k) = self.keys.get(key) {
            return Arc::clone(k);
        }
        let k: Arc<str> = Arc::from(key);
        if self.keys.len() < MAX_INTERNED_KEYS {
            self.keys.insert(Arc::clone(&k));
        }
        k
    }

    /// Registers `key` if no copy is held and there is room.
    fn share(&mut self, key: &Arc<str>) {
        if self.keys.len() < MAX_INTERNED_KEYS && !self.keys.contains(key) {
            self.keys.insert(Arc::clone(key));
        }
    }

    /// Keys held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// A payload as `(key, value)` pairs sorted by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct CompactPayload(Box<[(Arc<str>, Value)]>);

impl CompactPayload {
    /// The compact form of `payload`, its keys taken from `keys`.
    pub(crate) fn new(payload: &Payload, keys: &mut KeyInterner) -> Self {
        let mut fields: Vec<(Arc<str>, Value)> = payload
            .iter()
            .map(|(k, v)| (keys.intern(k), v.clone()))
            .collect();
        fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        CompactPayload(fields.into_boxed_slice())
    }

    /// Registers this payload's keys with `keys` (a live set rebuilt for a new schema adopts
    /// the payloads of the old one, and its later items share their keys).
    pub(crate) fn share_keys(&self, keys: &mut KeyInterner) {
        for (k, _) in self.0.iter() {
            keys.share(k);
        }
    }

    /// The payload as a map, for a hit or a listing.
    pub(crate) fn to_map(&self) -> Payload {
        self.0
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }
}

impl Fields for CompactPayload {
    fn top(&self, key: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|(k, _)| k.as_ref().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    fn for_each_top(&self, f: &mut dyn FnMut(&str, &Value)) {
        for (k, v) in self.0.iter() {
            f(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Payload {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("test payloads are objects"),
        }
    }

    #[test]
    fn round_trips_through_the_map() {
        let p = payload(json!({"z": 1, "a": "x", "m": {"n": [1, 2]}, "b": null}));
        let c = CompactPayload::new(&p, &mut KeyInterner::default());
        assert_eq!(c.to_map(), p);
    }

    #[test]
    fn finds_every_top_level_field_and_no_other() {
        let p = payload(json!({"colour": "red", "size": 40, "brand": "acme", "tags": ["a"]}));
        let c = CompactPayload::new(&p, &mut KeyInterner::default());
        for (k, v) in &p {
            assert_eq!(c.top(k), Some(v), "{k}");
        }
        assert_eq!(c.top("missing"), None);
        assert_eq!(c.top(""), None);
    }

    #[test]
    fn items_share_their_keys() {
        let mut keys = KeyInterner::default();
        let a = CompactPayload::new(&payload(json!({"shard": "s1"})), &mut keys);
        let b = CompactPayload::new(&payload(json!({"shard": "s2"})), &mut keys);
        assert!(Arc::ptr_eq(&a.0[0].0, &b.0[0].0));
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn the_interner_stops_growing_at_its_cap() {
        let mut keys = KeyInterner::default();
        for i in 0..MAX_INTERNED_KEYS + 10 {
            let c = CompactPayload::new(&payload(json!({ format!("k{i}"): i })), &mut keys);
            assert_eq!(c.top(&format!("k{i}")), Some(&json!(i)));
        }
        assert_eq!(keys.len(), MAX_INTERNED_KEYS);
    }

    #[test]
    fn an_adopted_payload_lends_its_keys() {
        let mut old = KeyInterner::default();
        let a = CompactPayload::new(&payload(json!({"shard": "s1"})), &mut old);
        let mut new = KeyInterner::default();
        a.share_keys(&mut new);
        let b = CompactPayload::new(&payload(json!({"shard": "s2"})), &mut new);
        assert!(Arc::ptr_eq(&a.0[0].0, &b.0[0].0));
    }

    #[test]
    fn an_empty_payload_holds_nothing() {
        let c = CompactPayload::new(&Payload::new(), &mut KeyInterner::default());
        assert!(c.0.is_empty());
        assert!(c.to_map().is_empty());
    }
}
