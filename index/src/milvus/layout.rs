//! How a catalogue lies in Milvus: collection names, fields and rows (see `docs/milvus.md`).
//!
//! - `asen_catalogues`: one row per catalogue, its schema as JSON: the registry every asen
//!   process reads, and the commit point of creating and dropping a catalogue.
//! - `asen_<c>_i`: one row per item: payload, content hash, attributes, thumbnail reference.
//!   The commit point of an upsert: `get`, `list` and `count` read it.
//! - `asen_<c>_a<n>`: one collection per attribute: the unit vector under an HNSW
//!   inner-product index, and a copy of the payload so that filters run in Milvus. `n` is the
//!   attribute's collection number ([`Slot`]), fixed for the attribute's life and never reused
//!   within the catalogue, so adding, dropping and renaming attributes renames no collection.
//!   A catalogue stored before attributes could change has no [`Placement`] in its registry
//!   row: attribute `i` is then collection `i`, named in item rows by its attribute name.
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

/// Where one attribute lies: its collection's number and the key item rows name it by
/// ([`Meta::attributes`]). Both stay when the attribute is renamed, so a rename rewrites
/// only the registry row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot {
    pub collection: usize,
    pub key: String,
}

/// Where a catalogue's attributes lie, kept in the registry row beside the schema (under the
/// schema JSON's `milvus` key, which the schema itself ignores): one [`Slot`] per attribute in
/// schema order, the next collection number, and the slots of dropped attributes whose
/// collection and item-row keys may not be removed yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Placement {
    pub slots: Vec<Slot>,
    pub next: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<Slot>,
}

impl Placement {
    /// The placement of a catalogue whose registry row has none: collection `i` for attribute
    /// `i`, keyed by the attribute's name (how catalogues were stored before).
    pub(crate) fn implied(schema: &CatalogueSchema) -> Self {
        Placement {
            slots: schema
                .attributes
                .iter()
                .enumerate()
                .map(|(i, a)| Slot {
                    collection: i,
                    key: a.clone(),
                })
                .collect(),
            next: schema.attributes.len(),
            retired: Vec::new(),
        }
    }

    /// The placement after an alteration, from [`CatalogueSchema::altered`]'s `origin` (the old
    /// position of each new attribute): kept attributes keep their slot, an added one gets a
    /// new collection number and a key no live or retired slot has, a dropped one is retired.
    pub(crate) fn altered(&self, origin: &[Option<usize>]) -> Self {
        let mut next = self.next;
        let mut slots: Vec<Slot> = Vec::with_capacity(origin.len());
        let mut retired = self.retired.clone();
        retired.extend(
            self.slots
                .iter()
                .enumerate()
                .filter(|(i, _)| !origin.contains(&Some(*i)))
                .map(|(_, s)| s.clone()),
        );
        for o in origin {
            let slot = match o {
                Some(i) => self.slots[*i].clone(),
                None => loop {
                    let n = next;
                    next += 1;
                    // Keys of catalogues stored before are attribute names, which may look
                    // like `#<n>`: skip a number whose key is still in use.
                    let key = format!("#{n}");
                    let used = |s: &Slot| s.key == key;
                    if !self.slots.iter().any(used) && !retired.iter().any(used) {
                        break Slot { collection: n, key };
                    }
                },
            };
            slots.push(slot);
        }
        Placement {
            slots,
            next,
            retired,
        }
    }
}

pub(crate) fn registry_row(
    name: &str,
    schema: &CatalogueSchema,
    placement: Option<&Placement>,
) -> Result<Row> {
    let mut value = serde_json::to_value(schema).map_err(|e| corrupt("schema", e))?;
    if let (Some(p), Value::Object(m)) = (placement, &mut value) {
        let p = serde_json::to_value(p).map_err(|e| corrupt("placement", e))?;
        m.insert("milvus".to_string(), p);
    }
    let text = serde_json::to_string(&value).map_err(|e| corrupt("schema", e))?;
    Ok(object(
        json!({"name": name, "schema": text, "_v": PLACEHOLDER}),
    ))
}

/// The schema of a registry row and where its attributes lie.
pub(crate) fn schema_of(row: &Row) -> Result<(CatalogueSchema, Placement)> {
    let text = row
        .get("schema")
        .and_then(Value::as_str)
        .ok_or_else(|| corrupt("registry row", "no schema"))?;
    let mut value: Value = serde_json::from_str(text).map_err(|e| corrupt("registry schema", e))?;
    let placement = match &mut value {
        Value::Object(m) => m.remove("milvus"),
        _ => None,
    };
    let schema: CatalogueSchema =
        serde_json::from_value(value).map_err(|e| corrupt("registry schema", e))?;
    let placement = match placement {
        Some(p) => serde_json::from_value(p).map_err(|e| corrupt("registry placement", e))?,
        None => Placement::implied(&schema),
    };
    if placement.slots.len() != schema.attributes.len() {
        return Err(corrupt(
            "registry placement",
            format!(
                "{} slots for {} attributes",
                placement.slots.len(),
                schema.attributes.len()
            ),
        ));
    }
    Ok((schema, placement))
}

/// What the item row knows besides the payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Keys ([`Slot::key`]) of the attributes the item has vectors for, in schema order. A key
    /// no live slot has (left by a dropped attribute) is ignored.
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
    fn placements_survive_drop_add_and_rename() {
        let schema = CatalogueSchema::new(["collar", "sleeve"], 4);
        let p = Placement::implied(&schema);
        // Drop collar, add pattern, add "#3"-looking keys avoided.
        let q = p.altered(&[Some(1), None]);
        assert_eq!(q.slots[0], p.slots[1]);
        assert_eq!(q.slots[1].collection, 2);
        assert_eq!(q.retired, [p.slots[0].clone()]);
        let r = q.altered(&[Some(0), Some(1), None]);
        assert_eq!(r.slots[2].collection, 3, "numbers are never reused");
        let legacy = Placement::implied(&CatalogueSchema::new(["#2", "b"], 4));
        let l = legacy.altered(&[Some(0), Some(1), None]);
        assert_ne!(l.slots[2].key, "#2");
        // Round trip through a registry row; a row without a placement implies one.
        let row = registry_row("c", &schema, Some(&q)).unwrap();
        let (s2, q2) = schema_of(&row).unwrap();
        assert_eq!((s2, q2), (schema.clone(), q));
        let row = registry_row("c", &schema, None).unwrap();
        assert_eq!(schema_of(&row).unwrap().1, p);
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
