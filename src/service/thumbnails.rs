//! [`Thumbnails`]: the model-input crop of every item (the resized, centre-cropped RGB
//! image the embedder saw), stored as JPEG so that `explain` and
//! `GET /v1/catalogues/{c}/items/{id}/image` can show an item without its original file.
//!
//! A sled database of its own under the data directory (`<data>/thumbnails/`, beside the
//! index's `<data>/sled/`), keyed `catalogue \0 item id`. The catalogue store stays free of
//! images; this store follows it: every upsert writes (or, with thumbnails off, removes)
//! the item's thumbnail after the store accepted the item, deletes and catalogue drops
//! remove them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use image::codecs::jpeg::JpegEncoder;
use image::RgbImage;

/// JPEG quality of stored thumbnails (a 224x224 crop takes 7 to 13 kB, about 10 kB on average).
pub const JPEG_QUALITY: u8 = 90;

/// Name of the thumbnail database's folder inside the data directory.
pub const DIR_NAME: &str = "thumbnails";

/// What can go wrong with thumbnails.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    /// The sled database failed (open, read, write).
    #[error("thumbnail store {}: {source}", .path.display())]
    Storage {
        /// The database folder.
        path: PathBuf,
        /// sled's error.
        source: sled::Error,
    },
    /// A crop could not be encoded.
    #[error("cannot encode the thumbnail of item {id:?} as jpeg: {detail}")]
    Encode {
        /// The item.
        id: String,
        /// The encoder's message.
        detail: String,
    },
    /// A stored thumbnail could not be decoded.
    #[error("stored thumbnail of item {id:?} in catalogue {catalogue:?} is unreadable: {detail}")]
    Decode {
        /// The catalogue.
        catalogue: String,
        /// The item.
        id: String,
        /// The decoder's message.
        detail: String,
    },
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ThumbnailError>;

/// The thumbnail database.
pub struct Thumbnails {
    db: sled::Db,
    path: PathBuf,
    enabled: bool,
}

impl std::fmt::Debug for Thumbnails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Thumbnails")
            .field("path", &self.path)
            .field("enabled", &self.enabled)
            .finish()
    }
}

fn key(catalogue: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(catalogue.len() + 1 + id.len());
    k.extend_from_slice(catalogue.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn prefix(catalogue: &str) -> Vec<u8> {
    let mut k = catalogue.as_bytes().to_vec();
    k.push(0);
    k
}

impl Thumbnails {
    /// Open (or create) the database in `<data_dir>/thumbnails`. With `enabled` false,
    /// [`Thumbnails::upsert`] removes instead of writing (stored thumbnails stay readable).
    /// Waits up to 3 s for sled's file lock, which a store dropped an instant ago still holds.
    pub fn open(data_dir: &Path, enabled: bool) -> Result<Self> {
        let path = data_dir.join(DIR_NAME);
        let deadline = Instant::now() + Duration::from_secs(3);
        let db = loop {
            match sled::Config::new()
                .path(&path)
                .cache_capacity(16 * 1024 * 1024)
                .open()
            {
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => break other,
            }
        }
        .map_err(|source| ThumbnailError::Storage {
            path: path.clone(),
            source,
        })?;
        tracing::info!(path = %path.display(), items = db.len(), enabled, "thumbnail store opened");
        Ok(Self { db, path, enabled })
    }

    /// Whether upserts store thumbnails (`index.thumbnails`).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    fn storage(&self) -> impl Fn(sled::Error) -> ThumbnailError + '_ {
        |source| ThumbnailError::Storage {
            path: self.path.clone(),
            source,
        }
    }

    /// Store `jpeg` as the thumbnail of `catalogue`/`id`, replacing any earlier one.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn put(&self, catalogue: &str, id: &str, jpeg: &[u8]) -> Result<()> {
        self.db
            .insert(key(catalogue, id), jpeg)
            .map_err(self.storage())?;
        Ok(())
    }

    /// After the store accepted a batch: write the thumbnails when enabled (one sled batch),
    /// otherwise remove any stale ones of these ids, so a thumbnail never shows an older image.
    pub fn upsert<'a>(
        &self,
        catalogue: &str,
        items: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (id, jpeg) in items {
            match jpeg {
                Some(jpeg) if self.enabled => batch.insert(key(catalogue, id), jpeg),
                _ => batch.remove(key(catalogue, id)),
            }
        }
        self.db.apply_batch(batch).map_err(self.storage())
    }

    /// The JPEG of `catalogue`/`id`, if stored.
    pub fn get(&self, catalogue: &str, id: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get(key(catalogue, id))
            .map_err(self.storage())?
            .map(|v| v.to_vec()))
    }

    /// Whether `catalogue`/`id` has a thumbnail.
    pub fn contains(&self, catalogue: &str, id: &str) -> Result<bool> {
        self.db
            .contains_key(key(catalogue, id))
            .map_err(self.storage())
    }

    /// Remove one thumbnail; whether it was there.
    pub fn delete(&self, catalogue: &str, id: &str) -> Result<bool> {
        Ok(self
            .db
            .remove(key(catalogue, id))
            .map_err(self.storage())?
            .is_some())
    }

    /// Remove every thumbnail of `catalogue`; how many there were.
    pub fn drop_catalogue(&self, catalogue: &str) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for entry in self.db.scan_prefix(prefix(catalogue)).keys() {
            batch.remove(entry.map_err(self.storage())?);
            n += 1;
        }
        self.db.apply_batch(batch).map_err(self.storage())?;
        Ok(n)
    }

    /// Thumbnails stored for `catalogue`.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn count(&self, catalogue: &str) -> usize {
        self.db.scan_prefix(prefix(catalogue)).count()
    }

    /// Write everything to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush().map_err(self.storage())?;
        Ok(())
    }
}

/// Encode a crop as JPEG at [`JPEG_QUALITY`]; `id` names the item in errors.
pub fn encode(crop: &RgbImage, id: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(16 * 1024);
    JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY)
        .encode_image(crop)
        .map_err(|e| ThumbnailError::Encode {
            id: id.to_string(),
            detail: e.to_string(),
        })?;
    Ok(out)
}

/// Decode a stored thumbnail.
pub fn decode(jpeg: &[u8], catalogue: &str, id: &str) -> Result<RgbImage> {
    image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)
        .map(|im| im.to_rgb8())
        .map_err(|e| ThumbnailError::Decode {
            catalogue: catalogue.to_string(),
            id: id.to_string(),
            detail: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn crop(seed: u8) -> RgbImage {
        RgbImage::from_fn(224, 224, |x, y| {
            Rgb([
                (x as u8).wrapping_add(seed),
                y as u8,
                ((x + y) / 2) as u8 ^ seed,
            ])
        })
    }

    #[test]
    fn put_get_delete_and_drop_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let t = Thumbnails::open(dir.path(), true).unwrap();
        let a = encode(&crop(1), "a").unwrap();
        let b = encode(&crop(2), "b").unwrap();
        t.put("shop", "a", &a).unwrap();
        t.upsert("shop", [("b", Some(b.as_slice()))]).unwrap();
        // A catalogue whose name extends another's must not share its prefix.
        t.put("shop2", "a", &b).unwrap();
        assert_eq!(t.get("shop", "a").unwrap().as_deref(), Some(a.as_slice()));
        assert_eq!(t.get("shop2", "a").unwrap().as_deref(), Some(b.as_slice()));
        assert!(t.get("shop", "c").unwrap().is_none());
        assert!(t.contains("shop", "b").unwrap());
        // An update replaces.
        t.put("shop", "a", &b).unwrap();
        assert_eq!(t.get("shop", "a").unwrap().as_deref(), Some(b.as_slice()));
        assert!(t.delete("shop", "a").unwrap());
        assert!(!t.delete("shop", "a").unwrap());
        assert!(t.get("shop", "a").unwrap().is_none());
        t.put("shop", "a", &a).unwrap();
        assert_eq!(t.count("shop"), 2);
        assert_eq!(t.drop_catalogue("shop").unwrap(), 2);
        assert_eq!(t.count("shop"), 0);
        assert_eq!(t.count("shop2"), 1, "other catalogue kept");
        t.flush().unwrap();
        drop(t);
        // Reopened (the lock of the dropped db is waited for): contents persist.
        let t = Thumbnails::open(dir.path(), false).unwrap();
        assert_eq!(t.get("shop2", "a").unwrap().as_deref(), Some(b.as_slice()));
    }

    #[test]
    fn disabled_upsert_removes_stale_thumbnails() {
        let dir = tempfile::tempdir().unwrap();
        let t = Thumbnails::open(dir.path(), false).unwrap();
        assert!(!t.is_enabled());
        t.put("c", "x", b"old").unwrap();
        t.upsert("c", [("x", Some(b"new".as_slice()))]).unwrap();
        assert!(t.get("c", "x").unwrap().is_none());
    }

    #[test]
    fn jpeg_round_trip_keeps_size_and_is_close() {
        let c = crop(7);
        let jpeg = encode(&c, "x").unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert!(jpeg.len() < 224 * 224 * 3 / 4, "{} bytes", jpeg.len());
        let back = decode(&jpeg, "c", "x").unwrap();
        assert_eq!(back.dimensions(), (224, 224));
        let mean_abs: f64 = c
            .as_raw()
            .iter()
            .zip(back.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / c.as_raw().len() as f64;
        assert!(mean_abs < 4.0, "mean abs error {mean_abs}");
        let e = decode(b"not a jpeg", "c", "x").unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
    }
}
