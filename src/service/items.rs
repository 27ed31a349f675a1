//! Upserting items from images, reading and deleting them: the one write path of asen.
//!
//! An upsert is two steps. [`prepare`] reads one image (sha256 content hash, decode under the
//! pixel limit, the model's resize and centre crop, the thumbnail JPEG); it needs the model's
//! preprocessing only, so bulk ingestion runs it on many threads. [`upsert_prepared`] embeds
//! a batch for every attribute of the catalogue, in schema order, and writes the items with
//! their thumbnails in one store upsert. [`upsert`] (the HTTP route) does both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use asen_index::{CatalogueSchema, Item, ItemId, ItemPage, Payload, StoredItem, WriteReceipt};
use image::RgbImage;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::{thumbnails, Model, Result, Service, ServiceError};

/// One item to store: id, payload and the encoded image (JPEG, PNG, WebP).
#[derive(Debug, Clone)]
pub struct NewItem {
    /// External id.
    pub id: ItemId,
    /// JSON payload.
    pub payload: Payload,
    /// Encoded image bytes.
    pub image: Vec<u8>,
}

/// An item whose image is read and cropped, ready to embed.
#[derive(Debug, Clone)]
pub struct PreparedItem {
    /// External id.
    pub id: ItemId,
    /// JSON payload.
    pub payload: Payload,
    /// Hex sha256 of the encoded image ([`content_hash`]).
    pub content_hash: String,
    /// The model-input crop.
    pub crop: RgbImage,
    /// The crop as JPEG, when the service keeps thumbnails.
    pub thumbnail: Option<Vec<u8>>,
}

/// What [`upsert_prepared`] did.
#[derive(Debug, Clone)]
pub struct Upserted {
    /// The store's receipt.
    pub receipt: WriteReceipt,
    /// Time spent in forward passes.
    pub model_time: Duration,
}

/// Hex sha256 of the encoded image: stored as the item's `content_hash` so ingestion can
/// skip images already stored.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `stored` already holds the image of hash `hash` and the payload `payload`, with
/// everything this service would write for it (its thumbnail, when thumbnails are kept):
/// ingestion skips it.
pub fn is_current(svc: &Service, stored: &StoredItem, hash: &str, payload: &Payload) -> bool {
    stored.content_hash.as_deref() == Some(hash)
        && &stored.payload == payload
        && (!svc.thumbnails || stored.has_thumbnail)
}

/// Read one image: hash, decode (pixel limit), crop to `model`'s input (the catalogue's:
/// [`Service::catalogue_model`]), and encode the
/// thumbnail when the service keeps them. The error names the item.
pub fn prepare(svc: &Service, model: &Model, item: NewItem) -> Result<PreparedItem> {
    let embedder = model.embedder();
    let (image, permit) = svc.decode(
        embedder,
        &item.image,
        &format!("of item {:?}", item.id.as_str()),
    )?;
    let crop = embedder.crop(&image);
    drop((image, permit));
    let thumbnail = if svc.thumbnails {
        Some(thumbnails::encode(&crop, item.id.as_str())?)
    } else {
        None
    };
    Ok(PreparedItem {
        content_hash: content_hash(&item.image),
        id: item.id,
        payload: item.payload,
        crop,
        thumbnail,
    })
}

/// Which model computes which of a catalogue's attributes for a new item: one group (the
/// catalogue's model, every attribute) normally; during a migration, the catalogue's model
/// for the attributes searches use (when this service holds it) and the target model for the
/// staging attributes (when it holds that one). Each group: the model, and per attribute its
/// catalogue name and model attribute index.
type Plan<'s> = Vec<(&'s Arc<Model>, Vec<(String, usize)>)>;

fn embedding_plan<'s>(
    svc: &'s Service,
    catalogue: &str,
    schema: &CatalogueSchema,
) -> Result<Plan<'s>> {
    let models = svc.models("an upsert")?;
    let group = |model: &'s Arc<Model>, names: Vec<(String, String)>| -> Result<_> {
        let idx = names
            .into_iter()
            .map(|(name, model_name)| {
                let i = model.embedder().attribute_index(&model_name).map_err(|_| {
                    ServiceError::invalid(format!(
                        "catalogue attribute {name:?} is not an attribute of model {}",
                        model.fingerprint()
                    ))
                })?;
                Ok((name, i))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((model, idx))
    };
    let live = models.for_catalogue(catalogue, schema.model.as_ref());
    let Some(migration) = &schema.migration else {
        let names = schema
            .attributes
            .iter()
            .map(|a| (a.clone(), schema.model_attribute(a).to_string()));
        return Ok(vec![group(live?, names.collect())?]);
    };
    let staging: Vec<&str> = migration
        .staged
        .iter()
        .map(|s| s.staging.as_str())
        .collect();
    let mut plan = Vec::new();
    let live_names: Vec<(String, String)> = schema
        .attributes
        .iter()
        .filter(|a| !staging.contains(&a.as_str()))
        .map(|a| (a.clone(), schema.model_attribute(a).to_string()))
        .collect();
    let live_error = match live {
        Ok(model) => {
            plan.push(group(model, live_names)?);
            None
        }
        Err(e) => Some(e),
    };
    if let Some(target) = models.get(&migration.target.fingerprint) {
        let names = migration.staged.iter().map(|s| {
            let model_name = schema.model_attribute(&s.attribute).to_string();
            (s.staging.clone(), model_name)
        });
        plan.push(group(target, names.collect())?);
    }
    match (plan.is_empty(), live_error) {
        // Neither model is here: the catalogue's own error says which it needs.
        (true, Some(e)) => Err(e),
        _ => Ok(plan),
    }
}

/// The model whose input size new items of `catalogue` are cropped to: the catalogue's,
/// or during a migration the target's when the catalogue's is not held (both take the same
/// size: a reindex checks it).
pub fn input_model<'s>(svc: &'s Service, catalogue: &str) -> Result<&'s Arc<Model>> {
    let schema = svc.store("an upsert")?.schema(catalogue)?;
    let models = svc.models("an upsert")?;
    let live = models.for_catalogue(catalogue, schema.model.as_ref());
    match (&live, &schema.migration) {
        (Err(_), Some(m)) => models.get(&m.target.fingerprint).map_or(live, Ok),
        _ => live,
    }
}

/// A batch is refused whole when it is empty, larger than `limits.max_batch_items`, holds an
/// id made only of whitespace, or holds one id twice (the store would keep only the last,
/// so the receipt would count items that were overwritten in the same write).
pub fn check_batch<'a>(svc: &Service, ids: impl ExactSizeIterator<Item = &'a str>) -> Result<()> {
    let len = ids.len();
    if len == 0 {
        return Err(ServiceError::invalid("items: the batch is empty"));
    }
    if len > svc.limits.max_batch_items {
        return Err(ServiceError::BatchTooLarge {
            got: len,
            limit: svc.limits.max_batch_items,
        });
    }
    let mut seen = std::collections::HashMap::with_capacity(len);
    for (i, id) in ids.enumerate() {
        if id.trim().is_empty() {
            return Err(ServiceError::invalid(format!(
                "items[{i}].id: the id is blank (only whitespace)"
            )));
        }
        if let Some(first) = seen.insert(id, i) {
            return Err(ServiceError::invalid(format!(
                "items[{i}].id: duplicate id {id:?} (also items[{first}]); send each item once per batch"
            )));
        }
    }
    Ok(())
}

/// Embed prepared items for every attribute of the catalogue (in schema order) and upsert
/// them with their thumbnails in one store write.
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, items = items.len()))]
pub fn upsert_prepared(svc: &Service, catalogue: &str, items: &[PreparedItem]) -> Result<Upserted> {
    check_batch(svc, items.iter().map(|i| i.id.as_str()))?;
    let store = svc.store("an upsert")?;
    // Shared with other writers; a migration's start and switch wait for this write.
    let gate = svc.write_gate(catalogue);
    let _shared = gate.read().unwrap_or_else(|p| p.into_inner());
    let schema = store.schema(catalogue)?;
    let plan = embedding_plan(svc, catalogue, &schema)?;
    let models = svc.models("an upsert")?;
    let crops: Vec<RgbImage> = items.iter().map(|i| i.crop.clone()).collect();
    let started = Instant::now();
    let mut vectors: Vec<BTreeMap<String, Vec<f32>>> = vec![BTreeMap::new(); items.len()];
    for (model, attributes) in &plan {
        let idx: Vec<usize> = attributes.iter().map(|(_, i)| *i).collect();
        // Images at the input size are not resampled again: the crops are what the model sees.
        let embedded = models.forward(|| model.embedder().embed_crops(&crops, &idx))?;
        for (item, per_attribute) in vectors.iter_mut().zip(embedded) {
            for ((name, _), e) in attributes.iter().zip(per_attribute) {
                item.insert(name.clone(), e.vector);
            }
        }
    }
    let model_time = started.elapsed();
    let batch: Vec<Item> = items
        .iter()
        .zip(vectors)
        .map(|(item, vectors)| Item {
            id: item.id.clone(),
            payload: item.payload.clone(),
            vectors,
            content_hash: Some(item.content_hash.clone()),
            thumbnail: item.thumbnail.clone(),
        })
        .collect();
    let receipt = store.upsert(catalogue, &batch)?;
    debug!(catalogue, affected = receipt.affected, "items upserted");
    Ok(Upserted {
        receipt,
        model_time,
    })
}

/// Decode, embed (every attribute of the catalogue) and upsert a batch of items.
/// Nothing is written if any image is bad; the error names the item.
pub fn upsert(svc: &Service, catalogue: &str, items: Vec<NewItem>) -> Result<WriteReceipt> {
    check_batch(svc, items.iter().map(|i| i.id.as_str()))?;
    // The catalogue first: an unknown one is a 404, and a model this service does not hold a
    // 409, before any image is decoded.
    let model = input_model(svc, catalogue)?;
    let prepared = items
        .into_iter()
        .map(|item| prepare(svc, model, item))
        .collect::<Result<Vec<_>>>()?;
    Ok(upsert_prepared(svc, catalogue, &prepared)?.receipt)
}

/// One item (with vectors when asked), or `ItemNotFound`.
pub fn get(svc: &Service, catalogue: &str, id: &str, with_vectors: bool) -> Result<StoredItem> {
    let id = Service::item_id(id)?;
    svc.store("reading an item")?
        .get(catalogue, &id, with_vectors)?
        .ok_or_else(|| ServiceError::ItemNotFound {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
        })
}

/// Up to `limit` items of a catalogue in id order (bytewise), after the item `after` (the
/// `next_cursor` of the previous page), without vectors. The store checks `limit`.
pub fn list(svc: &Service, catalogue: &str, after: Option<&str>, limit: usize) -> Result<ItemPage> {
    let after = after.map(Service::item_id).transpose()?;
    Ok(svc
        .store("listing items")?
        .list(catalogue, after.as_ref(), limit)?)
}

/// Delete one item (and its thumbnail); `ItemNotFound` if it was not there.
pub fn delete(svc: &Service, catalogue: &str, id: &str) -> Result<WriteReceipt> {
    let id = Service::item_id(id)?;
    let receipt = svc
        .store("a delete")?
        .delete(catalogue, std::slice::from_ref(&id))?;
    if receipt.affected == 0 {
        return Err(ServiceError::ItemNotFound {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
        });
    }
    Ok(receipt)
}

/// The stored JPEG of an item's model-input crop: 404 errors for an unknown catalogue or
/// item, `NoThumbnail` for an item stored without one.
pub fn image(svc: &Service, catalogue: &str, id: &str) -> Result<Vec<u8>> {
    let id = Service::item_id(id)?;
    svc.item_thumbnail(catalogue, &id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use asen_index::HnswConfig;

    fn stored(hash: &str, brand: &str, has_thumbnail: bool) -> StoredItem {
        StoredItem {
            id: ItemId::new("a").unwrap(),
            payload: serde_json::from_value(serde_json::json!({ "brand": brand })).unwrap(),
            attributes: vec![],
            vectors: None,
            content_hash: Some(hash.to_string()),
            has_thumbnail,
        }
    }

    #[test]
    fn an_item_is_current_only_with_the_same_image_payload_and_thumbnail() {
        let svc = Service::new(
            super::super::ServiceLimits::default(),
            HnswConfig::default(),
            true,
        );
        let acme: Payload = serde_json::from_value(serde_json::json!({"brand": "acme"})).unwrap();
        assert!(is_current(&svc, &stored("h", "acme", true), "h", &acme));
        assert!(
            !is_current(&svc, &stored("other", "acme", true), "h", &acme),
            "image"
        );
        assert!(
            !is_current(&svc, &stored("h", "zeta", true), "h", &acme),
            "payload"
        );
        assert!(
            !is_current(&svc, &stored("h", "acme", false), "h", &acme),
            "thumbnail"
        );
        let without = Service::new(
            super::super::ServiceLimits::default(),
            HnswConfig::default(),
            false,
        );
        assert!(is_current(
            &without,
            &stored("h", "acme", false),
            "h",
            &acme
        ));
    }

    #[test]
    fn content_hash_is_sha256_hex() {
        assert_eq!(
            super::content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
