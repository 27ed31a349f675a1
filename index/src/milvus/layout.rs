//! How a catalogue lies in Milvus: collection names, fields and rows (see `docs/milvus.md`).
//!
//! - `asen_catalogues`: one row per catalogue, its schema as JSON: the registry every asen
//!   process reads, and the commit point of creating and dropping a catalogue.
//! - `asen_<c>_i`: one row per item: payload, content hash, attributes, thumbnail reference.
//!   The commit point of an upsert: `get`, `list` and `count` read it.
//! - `asen_<c>_a<n>`: one collection per attribute (`n` its position in the schema): the unit
//!   vector under an HNSW inner-product index, and a copy of the payload so that filters run in
//!   Milvus. A new attribute is a new collection, so it can be added to a live catalogue.
//! - `asen_<c>_t`: thumbnails, base64 in chunks under Milvus's VarChar limit, keyed by a token
//!   the item row names, so a reader never sees chunks of another version.
//!
//! Milvus requires a vector field in every collection: the registry, item and thumbnail
//! collections carry a constant 2-d `_v`, never searched.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{Field, Row};
use crate::error::{IndexError, Result};
use crate::schema::CatalogueSchema;
use crate::types::{ItemId, Payload};

pub(crate) const REGISTRY: &str = "asen_catalogues";
/// Raw thumbnail bytes per chunk: 48,000 bytes are 64,000 base64 characters, under the
/// 65,535 of a VarChar.
pub(crate) const THUMBNAIL_CHUNK: usize = 48_000;
const CHUNK_CHARS: u32 = 65_535;
/// Longest primary key: item ids are at most 256 bytes.
const KEY_BYTES: u32 = 512;
/// The constant vector of collections Milvus makes carry one.
const PLACEHOLDER: [f32; 2] = [1.0, 0.0];

/// The collections of one catalogue.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub items: String,
    pub thumbnails: String,
    prefix: String,
}

impl Names {
    /// Milvus names allow `[A-Za-z0-9_]`; catalogue names also allow `-`. `_` becomes `_u` and
    /// `-` becomes `_h`, so the mapping is injective and `_i`, `_t`, `_a<n>` end every name.
    pub(crate) fn new(catalogue: &str) -> Self {
        let mut enc = String::with_capacity(catalogue.len() * 2);
        for ch in catalogue.chars() {
            match ch {
                '_' => enc.push_str("_u"),
                '-' => enc.push_str("_h"),
                c => enc.push(c),
            }
        }
        let prefix = format!("asen_{enc}");
        Names {
            items: format!("{prefix}_i"),
            thumbnails: format!("{prefix}_t"),
            prefix,
        }
    }

    pub(crate) fn attribute(&self, index: usize) -> String {
        format!("{}_a{index}", self.prefix)
    }

    /// Every collection of the catalogue for a schema with `attributes` attributes.
    pub(crate) fn all(&self, attributes: usize) -> Vec<String> {
        let mut v = vec![self.items.clone(), self.thumbnails.clone()];
        v.extend((0..attributes).map(|a| self.attribute(a)));
        v
    }
}

pub(crate) fn registry_fields() -> Vec<Field<'static>> {
    vec![
        Field::Key("name", 64),
        Field::Text("schema", CHUNK_CHARS),
        Field::Vector("_v", 2, 16, 64),
    ]
}

pub(crate) fn item_fields() -> Vec<Field<'static>> {
    vec![
        Field::Key("id", KEY_BYTES),
        Field::Json("payload"),
        Field::Json("meta"),
        Field::Vector("_v", 2, 16, 64),
    ]
}

pub(crate) fn attribute_fields(schema: &CatalogueSchema) -> Vec<Field<'static>> {
    vec![
        Field::Key("id", KEY_BYTES),
        Field::Json("payload"),
        Field::Vector(
            "vector",
            schema.dimension,
            schema.hnsw.m,
            schema.hnsw.ef_construction,
        ),
    ]
}

pub(crate) fn thumbnail_fields() -> Vec<Field<'static>> {
    vec![
        Field::Key("key", 64),
        Field::Text("item", KEY_BYTES),
        Field::Text("data", CHUNK_CHARS),
        Field::Vector("_v", 2, 16, 64),
    ]
}

pub(crate) fn registry_row(name: &str, schema: &CatalogueSchema) -> Result<Row> {
    let text = serde_json::to_string(schema).map_err(|e| corrupt("schema", e))?;
    Ok(object(
        json!({"name": name, "schema": text, "_v": PLACEHOLDER}),
    ))
}

pub(crate) fn schema_of(row: &Row) -> Result<CatalogueSchema> {
    let text = row
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("registry row", "no schema"))?;
    serde_json::from_str(text).map_err(|e| corrupt("registry schema", e))
}

/// What the item row knows besides the payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Attribute names the item has vectors for, in schema order.
    pub attributes: Vec<String>,
    #[serde(default)]
    pub content_hash: Option<String>,
    /// The thumbnail's chunk token and chunk count.
    #[serde(default)]
    pub thumbnail: Option<(String, usize)>,
}

pub(crate) fn item_row(id: &ItemId, payload: &Payload, meta: &Meta) -> Result<Row> {
    let meta = serde_json::to_value(meta).map_err(|e| corrupt("item meta", e))?;
    Ok(object(json!({
        "id": id.as_str(),
        "payload": Value::Object(payload.clone()),
        "meta": meta,
        "_v": PLACEHOLDER,
    })))
}

pub(crate) fn attribute_row(id: &ItemId, payload: &Payload, vector: &[f32]) -> Row {
    object(json!({
        "id": id.as_str(),
        "payload": Value::Object(payload.clone()),
        "vector": vector,
    }))
}

/// The rows of one thumbnail: keys `<token>:<chunk>`.
pub(crate) fn thumbnail_rows(id: &ItemId, token: &str, bytes: &[u8]) -> Vec<Row> {
    use base64::Engine as _;
    bytes
        .chunks(THUMBNAIL_CHUNK)
        .enumerate()
        .map(|(i, chunk)| {
            object(json!({
                "key": chunk_key(token, i),
                "item": id.as_str(),
                "data": base64::engine::general_purpose::STANDARD.encode(chunk),
                "_v": PLACEHOLDER,
            }))
        })
        .collect()
}

pub(crate) fn chunk_key(token: &str, chunk: usize) -> String {
    format!("{token}:{chunk}")
}

pub(crate) fn chunks_count(len: usize) -> usize {
    len.div_ceil(THUMBNAIL_CHUNK)
}

/// Reassembles a thumbnail from its chunk rows (any order).
pub(crate) fn thumbnail_bytes(token: &str, count: usize, rows: &[Row]) -> Result<Vec<u8>> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for i in 0..count {
        let key = chunk_key(token, i);
        let row = rows
            .iter()
            .find(|r| r.get("key").and_then(Value::as_str) == Some(key.as_str()))
            .ok_or_else(|| corrupt("thumbnail", format!("chunk {key} is missing")))?;
        let data = row.get("data").and_then(Value::as_str).unwrap_or_default();
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| corrupt("thumbnail chunk", e))?,
        );
    }
    Ok(out)
}

pub(crate) fn id_of(row: &Row) -> Result<ItemId> {
    let id = row
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("row", "no id"))?;
    ItemId::new(id)
}

pub(crate) fn payload_of(row: &Row) -> Payload {
    match row.get("payload") {
        Some(Value::Object(m)) => m.clone(),
        _ => Payload::new(),
    }
}

pub(crate) fn meta_of(row: &Row) -> Result<Meta> {
    let v = row.get("meta").cloned().unwrap_or(Value::Null);
    serde_json::from_value(v).map_err(|e| corrupt("item meta", e))
}

pub(crate) fn vector_of(row: &Row) -> Result<Vec<f32>> {
    let v = row
        .get("vector")
        .and_then(Value::as_array)
        .ok_or_else(|| corrupt("attribute row", "no vector"))?;
    v.iter()
        .map(|x| {
            x.as_f64()
                .map(|x| x as f32)
                .ok_or_else(|| corrupt("attribute row", "vector is not numeric"))
        })
        .collect()
}

fn object(v: Value) -> Row {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("json! of an object literal"),
    }
}

fn corrupt(what: &str, detail: impl std::fmt::Display) -> IndexError {
    IndexError::Corrupt {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_are_injective_and_valid() {
        let names = ["a_b", "a-b", "a_hb", "ab", "a__b", "A_h"];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let c = Names::new(n);
            assert!(c
                .items
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            assert!(seen.insert(c.items.clone()), "{n} collides");
        }
        assert_eq!(Names::new("shirts-2").attribute(3), "asen_shirts_h2_a3");
    }

    #[test]
    fn thumbnails_round_trip_through_chunks() {
        let id = ItemId::new("x").unwrap();
        let bytes: Vec<u8> = (0..(2 * THUMBNAIL_CHUNK + 5)).map(|i| i as u8).collect();
        let mut rows = thumbnail_rows(&id, "tok", &bytes);
        assert_eq!(rows.len(), chunks_count(bytes.len()));
        assert!(rows
            .iter()
            .all(|r| r["data"].as_str().unwrap().len() <= CHUNK_CHARS as usize));
        rows.reverse();
        assert_eq!(thumbnail_bytes("tok", 3, &rows).unwrap(), bytes);
        assert!(thumbnail_bytes("other", 3, &rows).is_err());
    }
}
