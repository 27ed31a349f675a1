//! Byte layout of the records in a catalogue's sled tree.
//!
//! One tree per catalogue, so that a batch (items, vectors, counters) is applied atomically
//! with `Tree::apply_batch`; kinds of record are key prefixes:
//! - `i<external id>` -> [`ItemRecord`] (internal id, attribute mask, content hash, payload),
//! - `v<internal id, u64 BE>` -> [`VectorRecord`] (attribute mask, unit `f32` vectors),
//! - `m<name>` -> counters (`seq`, `next_iid`) and graph dump records (`dump/<attribute index>`).
//!
//! Internal ids grow monotonically, so "records newer than a dump" is a range scan of `v`.

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::types::Payload;

pub(crate) const ITEM_PREFIX: u8 = b'i';
pub(crate) const VECTOR_PREFIX: u8 = b'v';
pub(crate) const META_SEQ: &[u8] = b"mseq";
pub(crate) const META_NEXT_IID: &[u8] = b"mnext_iid";

pub(crate) fn item_key(id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(ITEM_PREFIX);
    k.extend_from_slice(id.as_bytes());
    k
}

pub(crate) fn vector_key(iid: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = VECTOR_PREFIX;
    k[1..].copy_from_slice(&iid.to_be_bytes());
    k
}

pub(crate) fn iid_from_vector_key(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("vector key", format!("{} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

pub(crate) fn dump_key(attribute_index: usize) -> Vec<u8> {
    format!("mdump/{attribute_index}").into_bytes()
}

pub(crate) fn encode_u64(x: u64) -> [u8; 8] {
    x.to_be_bytes()
}

pub(crate) fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| corrupt(what, format!("{} bytes, expected 8", bytes.len())))?;
    Ok(u64::from_be_bytes(b))
}

pub(crate) fn corrupt(what: &str, detail: impl Into<String>) -> IndexError {
    IndexError::Corrupt {
        what: what.to_string(),
        detail: detail.into(),
    }
}

/// An item's record, keyed by external id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ItemRecord {
    pub iid: u64,
    /// Bit `a` set when the item has a vector for attribute `a`.
    pub mask: u64,
    pub content_hash: Option<String>,
    pub payload: Payload,
}

impl ItemRecord {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let payload = serde_json::to_vec(&self.payload).unwrap_or_else(|_| b"{}".to_vec());
        let hash = self.content_hash.as_deref().map(str::as_bytes);
        let mut out = Vec::with_capacity(20 + hash.map_or(0, <[u8]>::len) + payload.len());
        out.extend_from_slice(&self.iid.to_le_bytes());
        out.extend_from_slice(&self.mask.to_le_bytes());
        match hash {
            Some(h) => {
                out.extend_from_slice(&(h.len() as u32).to_le_bytes());
                out.extend_from_slice(h);
            }
            None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
        out.extend_from_slice(&payload);
        out
    }

    pub(crate) fn decode(key: &[u8], bytes: &[u8]) -> Result<Self> {
        let what = || {
            format!(
                "item {:?}",
                String::from_utf8_lossy(key.get(1..).unwrap_or(&[]))
            )
        };
        let short = || {
            corrupt(
                &what(),
                format!("truncated record of {} bytes", bytes.len()),
            )
        };
        let u64_at = |o: usize| -> Result<u64> {
            let b: [u8; 8] = bytes
                .get(o..o + 8)
                .ok_or_else(short)?
                .try_into()
                .map_err(|_| short())?;
            Ok(u64::from_le_bytes(b))
        };
        let iid = u64_at(0)?;
        let mask = u64_at(8)?;
        let hlen_bytes: [u8; 4] = bytes
            .get(16..20)
            .ok_or_else(short)?
            .try_into()
            .map_err(|_| short())?;
        let hlen = u32::from_le_bytes(hlen_bytes);
        let (content_hash, rest) = if hlen == u32::MAX {
            (None, 20)
        } else {
            let end = 20 + hlen as usize;
            let h = bytes.get(20..end).ok_or_else(short)?;
            let h = String::from_utf8(h.to_vec())
                .map_err(|_| corrupt(&what(), "content hash is not utf-8"))?;
            (Some(h), end)
        };
        let payload: Payload = serde_json::from_slice(&bytes[rest..])
            .map_err(|e| corrupt(&what(), format!("payload: {e}")))?;
        Ok(ItemRecord {
            iid,
            mask,
            content_hash,
            payload,
        })
    }
}

/// An item's vectors, keyed by internal id: mask, then `dimension` little-endian `f32` per
/// attribute present, in schema order.
pub(crate) struct VectorRecord {
    pub mask: u64,
    pub data: Vec<f32>,
}

impl VectorRecord {
    pub(crate) fn encode(mask: u64, vectors: &[&[f32]]) -> Vec<u8> {
        let n: usize = vectors.iter().map(|v| v.len()).sum();
        let mut out = Vec::with_capacity(8 + 4 * n);
        out.extend_from_slice(&mask.to_le_bytes());
        for v in vectors {
            for x in *v {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    pub(crate) fn decode(iid: u64, bytes: &[u8], dimension: usize) -> Result<Self> {
        let what = || format!("vectors of internal id {iid}");
        let head: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt(&what(), "truncated"))?;
        let mask = u64::from_le_bytes(head);
        let expected = 8 + 4 * dimension * mask.count_ones() as usize;
        if bytes.len() != expected {
            return Err(corrupt(
                &what(),
                format!("{} bytes, expected {expected}", bytes.len()),
            ));
        }
        let data = bytes[8..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(VectorRecord { mask, data })
    }

    /// The vector of attribute `a`, if present.
    pub(crate) fn get(&self, a: usize, dimension: usize) -> Option<&[f32]> {
        if self.mask & (1 << a) == 0 {
            return None;
        }
        let slot = (self.mask & ((1u64 << a) - 1)).count_ones() as usize;
        self.data.get(slot * dimension..(slot + 1) * dimension)
    }
}

/// Where an attribute's graph dump lives and what it covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DumpRecord {
    /// Directory name under the catalogue's dump directory.
    pub dir: String,
    /// Catalogue sequence number covered.
    pub sequence: u64,
    /// Every internal id below this was inserted in the graph when it was dumped.
    pub watermark: u64,
    /// Points in the dumped graph.
    pub points: u64,
    /// CRC-32 of the dump's two files (`graph::DUMP_FILES`, or for format 0
    /// `graph::LEGACY_DUMP_FILES`).
    pub crc_graph: u32,
    /// See `crc_graph`.
    pub crc_data: u32,
    /// 0: hnsw_rs's files (records written before the field existed); 1: asen's own.
    #[serde(default)]
    pub format: u32,
}

/// [`DumpRecord::format`] of asen's own dump files.
pub(crate) const DUMP_FORMAT_ASEN: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_record_round_trip() {
        let mut payload = Payload::new();
        payload.insert("brand".into(), "acme".into());
        for hash in [None, Some("abc".to_string()), Some(String::new())] {
            let r = ItemRecord {
                iid: 42,
                mask: 0b101,
                content_hash: hash,
                payload: payload.clone(),
            };
            let key = item_key("x");
            assert_eq!(ItemRecord::decode(&key, &r.encode()).unwrap(), r);
        }
        assert!(ItemRecord::decode(b"ix", &[1, 2, 3]).is_err());
    }

    #[test]
    fn vector_record_slots() {
        let a = [1.0f32, 2.0];
        let c = [5.0f32, 6.0];
        let bytes = VectorRecord::encode(0b101, &[&a, &c]);
        let r = VectorRecord::decode(1, &bytes, 2).unwrap();
        assert_eq!(r.get(0, 2), Some(&a[..]));
        assert_eq!(r.get(1, 2), None);
        assert_eq!(r.get(2, 2), Some(&c[..]));
        assert!(VectorRecord::decode(1, &bytes[..bytes.len() - 1], 2).is_err());
        assert_eq!(iid_from_vector_key(&vector_key(77)).unwrap(), 77);
    }

    // Structured random input: records as they could be found on a damaged disk. Decoding
    // answers a `Corrupt` error or a record, never panics or allocates past the input.
    mod fuzz {
        //! Every kind of on-disk record, decoded from random or mutated bytes: `Ok` or
        //! `Corrupt`, never a panic, and a decoded vector has the schema's size. One timed
        //! target (`asen_fuzz::fuzz`), each input one of the kinds.
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Input {
            Item {
                key: Vec<u8>,
                bytes: Vec<u8>,
            },
            Vector {
                bytes: Vec<u8>,
                dimension: usize,
            },
            /// Counters, vector keys and dump records: the small decoders.
            Meta(Vec<u8>),
            /// A valid item record with bytes overwritten.
            MutatedItem(Vec<(prop::sample::Index, u8)>),
        }

        fn input() -> impl Strategy<Value = Input> {
            let bytes = |n| prop::collection::vec(any::<u8>(), 0..n);
            prop_oneof![
                (bytes(40), bytes(300)).prop_map(|(key, bytes)| Input::Item { key, bytes }),
                (bytes(300), 0usize..64)
                    .prop_map(|(bytes, dimension)| Input::Vector { bytes, dimension }),
                bytes(200).prop_map(Input::Meta),
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
                    .prop_map(Input::MutatedItem),
            ]
        }

        #[test]
        fn records_decode_or_fail() {
            asen_fuzz::fuzz("records", 12_000, input(), |input| {
                match input {
                    Input::Item { key, bytes } => {
                        let _ = ItemRecord::decode(&key, &bytes);
                    }
                    Input::Vector { bytes, dimension } => {
                        if let Ok(r) = VectorRecord::decode(7, &bytes, dimension) {
                            for a in 0..64 {
                                if let Some(v) = r.get(a, dimension) {
                                    prop_assert_eq!(v.len(), dimension);
                                }
                            }
                        }
                    }
                    Input::Meta(bytes) => {
                        let _ = decode_u64("seq", &bytes);
                        let _ = iid_from_vector_key(&bytes);
                        let _ = serde_json::from_slice::<DumpRecord>(&bytes);
                    }
                    Input::MutatedItem(flips) => {
                        let mut payload = Payload::new();
                        payload.insert("brand".into(), "acme".into());
                        let mut bytes = ItemRecord {
                            iid: 9,
                            mask: 0b11,
                            content_hash: Some("h".into()),
                            payload,
                        }
                        .encode();
                        for (i, b) in flips {
                            let at = i.index(bytes.len());
                            bytes[at] = b;
                        }
                        let _ = ItemRecord::decode(&item_key("x"), &bytes);
                    }
                }
                Ok(())
            });
        }
    }
}
