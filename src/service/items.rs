//! Upserting items from images, reading and deleting them.

use std::collections::BTreeMap;

use asen_index::{CatalogueSchema, Item, ItemId, Payload, StoredItem, WriteReceipt};
use image::RgbImage;
use sha2::{Digest, Sha256};
use tracing::debug;

use super::{thumbnails, Result, Service, ServiceError};

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

/// Hex sha256 of the encoded image: stored as the item's `content_hash` so ingestion can
/// skip images already stored.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Model attribute indices of a catalogue's attributes (in schema order).
pub fn model_attributes(svc: &Service, schema: &CatalogueSchema) -> Result<Vec<usize>> {
    schema
        .attributes
        .iter()
        .map(|a| {
            svc.embedder.attribute_index(a).map_err(|_| {
                ServiceError::invalid(format!(
                    "catalogue attribute {a:?} is not an attribute of the loaded model"
                ))
            })
        })
        .collect()
}

/// Embed decoded images for every attribute of `schema`, in batches of the model's batch size:
/// one `attribute -> vector` map per image. For pipelines that decode elsewhere.
pub fn embed_for_schema(
    svc: &Service,
    schema: &CatalogueSchema,
    images: &[RgbImage],
) -> Result<Vec<BTreeMap<String, Vec<f32>>>> {
    let idx = model_attributes(svc, schema)?;
    let embedded = svc.embedder.embed_images(images, &idx)?;
    Ok(embedded
        .into_iter()
        .map(|per_attribute| {
            schema
                .attributes
                .iter()
                .cloned()
                .zip(per_attribute.into_iter().map(|e| e.vector))
                .collect()
        })
        .collect())
}

/// Decode, embed (every attribute of the catalogue) and upsert a batch of items.
/// Nothing is written if any image is bad; the error names the item.
#[tracing::instrument(skip_all, fields(catalogue = %catalogue, items = items.len()))]
pub fn upsert(svc: &Service, catalogue: &str, items: Vec<NewItem>) -> Result<WriteReceipt> {
    if items.is_empty() {
        return Err(ServiceError::invalid("items: the batch is empty"));
    }
    if items.len() > svc.limits.max_batch_items {
        return Err(ServiceError::BatchTooLarge {
            got: items.len(),
            limit: svc.limits.max_batch_items,
        });
    }
    let schema = svc.store.schema(catalogue)?;
    let mut crops = Vec::with_capacity(items.len());
    for item in &items {
        let image = svc
            .embedder
            .decode(&item.image)
            .map_err(|e| e.with_source_name(format!("of item {:?}", item.id.as_str())))?;
        crops.push(svc.embedder.crop(&image));
    }
    // Images at the input size are not resampled again: the crops are what the model sees.
    let vectors = embed_for_schema(svc, &schema, &crops)?;
    let thumbnails = match &svc.thumbnails {
        Some(t) if t.is_enabled() => Some(
            items
                .iter()
                .zip(&crops)
                .map(|(item, crop)| thumbnails::encode(crop, item.id.as_str()))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    let batch: Vec<Item> = items
        .into_iter()
        .zip(vectors)
        .map(|(new, vectors)| Item {
            content_hash: Some(content_hash(&new.image)),
            id: new.id,
            payload: new.payload,
            vectors,
        })
        .collect();
    let receipt = svc.store.upsert(catalogue, &batch)?;
    if let Some(store) = &svc.thumbnails {
        // After the store accepted the items; with thumbnails off, stale ones are removed.
        store.upsert(
            catalogue,
            batch.iter().enumerate().map(|(i, item)| {
                (
                    item.id.as_str(),
                    thumbnails.as_ref().map(|t| t[i].as_slice()),
                )
            }),
        )?;
    }
    debug!(catalogue, affected = receipt.affected, "items upserted");
    Ok(receipt)
}

/// One item (with vectors when asked), or `ItemNotFound`.
pub fn get(svc: &Service, catalogue: &str, id: &str, with_vectors: bool) -> Result<StoredItem> {
    let id = Service::item_id(id)?;
    svc.store
        .get(catalogue, &id, with_vectors)?
        .ok_or_else(|| ServiceError::ItemNotFound {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
        })
}

/// Delete one item; `ItemNotFound` if it was not there.
pub fn delete(svc: &Service, catalogue: &str, id: &str) -> Result<WriteReceipt> {
    let id = Service::item_id(id)?;
    let receipt = svc.store.delete(catalogue, std::slice::from_ref(&id))?;
    if let Some(t) = &svc.thumbnails {
        t.delete(catalogue, id.as_str())?;
    }
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
    #[test]
    fn content_hash_is_sha256_hex() {
        assert_eq!(
            super::content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
