//! One-time import of the thumbnail database the service kept beside the store before
//! thumbnails moved behind [`crate::CatalogueStore`]: a sled database of its own in
//! `<store dir>/thumbnails/`, keyed `catalogue \0 item id`, valued with JPEG bytes.
//!
//! On open, the entries whose catalogue and item exist are copied into the catalogues'
//! thumbnail trees, the store is flushed, and the folder is renamed to
//! `thumbnails.imported/` and then removed. A crash before the rename repeats the import on the
//! next open (entries already in the store are kept, so it is idempotent); a crash after it
//! only leaves the renamed folder, which the next open removes. The folder must be gone before
//! the store accepts writes: importing it again later could bring back a thumbnail an upsert
//! has since removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::{open_sled, records, Catalogue};
use crate::error::{IndexError, Result};
use crate::types::MAX_THUMBNAIL_BYTES;

/// Folder of the old thumbnail database inside the store directory.
pub(crate) const LEGACY_DIR: &str = "thumbnails";
/// What the old folder is renamed to once imported, before it is removed.
const IMPORTED_DIR: &str = "thumbnails.imported";
/// Thumbnails written per sled batch while importing.
const BATCH: usize = 1000;

/// What [`crate::LocalStore::open`] imported from an old `thumbnails/` folder (the service
/// logs it; the library never prints).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ThumbnailMigration {
    /// Thumbnails copied into the store.
    pub imported: u64,
    /// Entries left out: unknown catalogue or item, malformed key, empty or larger than
    /// [`MAX_THUMBNAIL_BYTES`], or the item already had a thumbnail in the store.
    pub skipped: u64,
}

fn io_error(path: &Path, e: impl Into<std::io::Error>) -> IndexError {
    IndexError::io(path, e.into())
}

fn sled_error(path: &Path, e: sled::Error) -> IndexError {
    match e {
        sled::Error::Io(e) => io_error(path, e),
        other => io_error(path, std::io::Error::other(other.to_string())),
    }
}

/// Imports `<dir>/thumbnails/` into the catalogues' thumbnail trees and removes it; `None`
/// when there is no such folder.
pub(crate) fn import(
    dir: &Path,
    db: &sled::Db,
    catalogues: &BTreeMap<String, Arc<Catalogue>>,
) -> Result<Option<ThumbnailMigration>> {
    let imported_dir = dir.join(IMPORTED_DIR);
    if imported_dir.exists() {
        std::fs::remove_dir_all(&imported_dir).map_err(|e| io_error(&imported_dir, e))?;
    }
    let legacy = dir.join(LEGACY_DIR);
    if !legacy.is_dir() {
        return Ok(None);
    }
    let mut report = ThumbnailMigration::default();
    {
        let old = open_sled(&legacy, 16 * 1024 * 1024).map_err(|e| match e {
            IndexError::Storage(e) => sled_error(&legacy, e),
            other => other,
        })?;
        let mut pending: BTreeMap<&str, (sled::Batch, usize)> = BTreeMap::new();
        for kv in old.iter() {
            let (key, value) = kv.map_err(|e| sled_error(&legacy, e))?;
            let Some((catalogue, id)) = split_key(&key) else {
                report.skipped += 1;
                continue;
            };
            let Some((name, c)) = catalogues.get_key_value(catalogue) else {
                report.skipped += 1;
                continue;
            };
            if value.is_empty()
                || value.len() > MAX_THUMBNAIL_BYTES
                || !c.tree.contains_key(records::item_key(id))?
                || c.thumbnails.contains_key(id)?
            {
                report.skipped += 1;
                continue;
            }
            let (batch, n) = pending.entry(name.as_str()).or_default();
            batch.insert(id.as_bytes(), value);
            *n += 1;
            report.imported += 1;
            if *n == BATCH {
                let (batch, _) = pending.remove(name.as_str()).unwrap_or_default();
                c.thumbnails.apply_batch(batch)?;
            }
        }
        for (name, (batch, _)) in pending {
            catalogues[name].thumbnails.apply_batch(batch)?;
        }
        db.flush()?;
    }
    std::fs::rename(&legacy, &imported_dir).map_err(|e| io_error(&legacy, e))?;
    std::fs::remove_dir_all(&imported_dir).map_err(|e| io_error(&imported_dir, e))?;
    Ok(Some(report))
}

/// `catalogue \0 id` -> `(catalogue, id)`, both UTF-8 and non-empty.
fn split_key(key: &[u8]) -> Option<(&str, &str)> {
    let sep = key.iter().position(|&b| b == 0)?;
    let catalogue = std::str::from_utf8(&key[..sep]).ok()?;
    let id = std::str::from_utf8(&key[sep + 1..]).ok()?;
    (!catalogue.is_empty() && crate::types::ItemId::new(id).is_ok()).then_some((catalogue, id))
}

#[cfg(test)]
mod tests {
    use super::split_key;

    #[test]
    fn keys_split_at_the_first_nul() {
        assert_eq!(split_key(b"shop\0sku-1"), Some(("shop", "sku-1")));
        assert_eq!(split_key(b"shop\0a\0b"), Some(("shop", "a\0b")));
        assert_eq!(split_key(b"shop"), None);
        assert_eq!(split_key(b"\0x"), None);
        assert_eq!(split_key(b"shop\0"), None);
        assert_eq!(split_key(b"shop\0\xff"), None);
    }
}
