//! Backbone feature maps of every image, computed once, kept on disk as f16
//! and memory-mapped.
//!
//! File layout (little-endian): the magic `ASENFC1\0`; `count` u64; `C`, `H`,
//! `W` u32; `done` u64 (entries `0..done` are written); the key length u32
//! and the key in UTF-8; zero padding to a multiple of 64 bytes; then
//! `count * C * H * W` f16 values, entry-major. Building writes batches in
//! index order and bumps `done` after each, so an interrupted build resumes
//! where it stopped; a file whose key, count or size does not match is
//! rebuilt from scratch.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use half::f16;
use memmap2::Mmap;

use asen_models::{ModelError, Result};

const MAGIC: &[u8; 8] = b"ASENFC1\0";
const DONE_OFFSET: u64 = 28;
const KEY_MAX: usize = 4096;

/// What a cache was computed from: change any part and the cache is stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// Backbone name and weights, e.g. `resnet50@imagenet1k-v2`.
    pub backbone: String,
    /// Square input size in pixels the images were resized to.
    pub input_size: u32,
    /// Dataset identity, e.g. [`crate::Dataset::fingerprint`].
    pub dataset: String,
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "backbone={};input_size={};dataset={}",
            self.backbone, self.input_size, self.dataset
        )
    }
}

struct Header {
    count: u64,
    dims: [u32; 3],
    done: u64,
    key: String,
    data_offset: u64,
}

impl Header {
    fn entry_len(&self) -> u64 {
        self.dims.iter().map(|&d| d as u64).product()
    }

    fn file_len(&self) -> u64 {
        self.data_offset + self.count * self.entry_len() * 2
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data_offset as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.count.to_le_bytes());
        for d in self.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&self.done.to_le_bytes());
        out.extend_from_slice(&(self.key.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.resize(self.data_offset as usize, 0);
        out
    }

    fn data_offset_for(key: &str) -> u64 {
        (40 + key.len() as u64).div_ceil(64) * 64
    }

    /// Read a header; `Ok(None)` when the file is not a cache or is truncated.
    fn read(file: &mut File) -> std::io::Result<Option<Header>> {
        let mut fixed = [0u8; 40];
        if file.read_exact(&mut fixed).is_err() || &fixed[..8] != MAGIC {
            return Ok(None);
        }
        let u64_at = |o: usize| u64::from_le_bytes(fixed[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(fixed[o..o + 4].try_into().unwrap_or([0; 4]));
        let key_len = u32_at(36) as usize;
        if key_len > KEY_MAX {
            return Ok(None);
        }
        let mut key = vec![0u8; key_len];
        if file.read_exact(&mut key).is_err() {
            return Ok(None);
        }
        let Ok(key) = String::from_utf8(key) else {
            return Ok(None);
        };
        let header = Header {
            count: u64_at(8),
            dims: [u32_at(16), u32_at(20), u32_at(24)],
            done: u64_at(28),
            data_offset: Header::data_offset_for(&key),
            key,
        };
        let len = file.metadata()?.len();
        if header.done > header.count || header.file_len() != len {
            return Ok(None);
        }
        Ok(Some(header))
    }
}

/// A complete, memory-mapped feature cache.
#[derive(Debug)]
pub struct FeatureCache {
    path: PathBuf,
    key: String,
    count: usize,
    dims: [usize; 3],
    data_offset: usize,
    map: Mmap,
}

fn cache_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::FeatureCache {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl FeatureCache {
    /// Open a complete cache built for `key`; fails (without touching the
    /// file) when it is missing, incomplete, corrupt or stale.
    pub fn open(path: impl AsRef<Path>, key: &str) -> Result<FeatureCache> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let header = Header::read(&mut file)
            .map_err(|e| ModelError::io(path, e))?
            .ok_or_else(|| cache_err(path, "not a feature cache, or truncated"))?;
        if header.key != key {
            return Err(cache_err(
                path,
                format!("stale: built for {:?}, wanted {key:?}", header.key),
            ));
        }
        if header.done != header.count {
            return Err(cache_err(
                path,
                format!(
                    "incomplete: {} of {} entries written",
                    header.done, header.count
                ),
            ));
        }
        Self::map(path, &file, header)
    }

    fn map(path: &Path, file: &File, header: Header) -> Result<FeatureCache> {
        // SAFETY: the cache file is owned by this library; callers must not
        // truncate it while a FeatureCache maps it (documented on `build`).
        let map = unsafe { Mmap::map(file) }.map_err(|e| ModelError::io(path, e))?;
        Ok(FeatureCache {
            path: path.to_path_buf(),
            count: header.count as usize,
            dims: header.dims.map(|d| d as usize),
            data_offset: header.data_offset as usize,
            key: header.key,
            map,
        })
    }

    /// Open the cache at `path` if it is complete and built for `key`;
    /// otherwise compute what is missing and open it.
    ///
    /// `compute(indices)` returns the feature maps of those images as a
    /// `(indices.len(), C, H, W)` tensor of any float dtype; it is called
    /// with consecutive index batches of at most `batch_size`, in order,
    /// starting after the last entry already written when a build with the
    /// same key and count was interrupted. `progress(done, total)` is called
    /// after each batch. Values are stored as f16. The file must not be
    /// modified by others while the returned cache is alive.
    pub fn build<F>(
        path: impl AsRef<Path>,
        key: &str,
        count: usize,
        batch_size: usize,
        mut compute: F,
        progress: &dyn Fn(usize, usize),
    ) -> Result<FeatureCache>
    where
        F: FnMut(&[usize]) -> Result<Tensor>,
    {
        let path = path.as_ref();
        if count == 0 || batch_size == 0 {
            return Err(ModelError::InvalidArgument(format!(
                "feature cache {} needs count and batch_size >= 1, got {count} and {batch_size}",
                path.display()
            )));
        }
        if key.len() > KEY_MAX {
            return Err(ModelError::InvalidArgument(format!(
                "feature cache key is {} bytes, over {KEY_MAX}",
                key.len()
            )));
        }
        let existing = match File::open(path) {
            Ok(mut f) => Header::read(&mut f)
                .map_err(|e| ModelError::io(path, e))?
                .filter(|h| h.key == key && h.count == count as u64),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ModelError::io(path, e)),
        };
        let (mut file, mut header) = match existing {
            Some(header) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| ModelError::io(path, e))?;
                (file, header)
            }
            None => {
                // Learn C, H, W from the first batch, then lay out the file.
                let first: Vec<usize> = (0..batch_size.min(count)).collect();
                let batch = compute(&first)?;
                let dims = match batch.dims() {
                    &[n, c, h, w] if n == first.len() && c * h * w > 0 => [c, h, w],
                    other => {
                        return Err(ModelError::InvalidArgument(format!(
                        "feature batch for {} images has shape {other:?}, expected ({}, C, H, W)",
                        first.len(),
                        first.len()
                    )))
                    }
                };
                let dims = dims.map(|d| d as u32);
                let header = Header {
                    count: count as u64,
                    dims,
                    done: 0,
                    data_offset: Header::data_offset_for(key),
                    key: key.to_string(),
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
                }
                let mut file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
                    .map_err(|e| ModelError::io(path, e))?;
                let io = |e| ModelError::io(path, e);
                file.write_all(&header.encode()).map_err(io)?;
                file.set_len(header.file_len()).map_err(io)?;
                let mut header = header;
                write_batch(&mut file, &mut header, &first, &batch, path)?;
                progress(header.done as usize, count);
                (file, header)
            }
        };
        while (header.done as usize) < count {
            let start = header.done as usize;
            let indices: Vec<usize> = (start..count.min(start + batch_size)).collect();
            let batch = compute(&indices)?;
            write_batch(&mut file, &mut header, &indices, &batch, path)?;
            progress(header.done as usize, count);
        }
        file.sync_data().map_err(|e| ModelError::io(path, e))?;
        Self::map(path, &file, header)
    }

    /// Feature maps of `indices` as a `(indices.len(), C, H, W)` f32 tensor on
    /// `device` (converted from f16 after the transfer).
    pub fn get(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let entry = self.dims.iter().product::<usize>();
        let mut values = Vec::with_capacity(indices.len() * entry);
        for &i in indices {
            if i >= self.count {
                return Err(ModelError::InvalidArgument(format!(
                    "feature cache {} has {} entries, asked for entry {i}",
                    self.path.display(),
                    self.count
                )));
            }
            let start = self.data_offset + i * entry * 2;
            let bytes = &self.map[start..start + entry * 2];
            values.extend(
                bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]]))),
            );
        }
        let [c, h, w] = self.dims;
        let t = Tensor::from_vec(values, (indices.len(), c, h, w), &Device::Cpu)?;
        Ok(t.to_device(device)?.to_dtype(DType::F32)?)
    }

    /// Number of entries (images).
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the cache has no entries (never true: builds need one).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `(C, H, W)` of every entry.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.dims[0], self.dims[1], self.dims[2])
    }

    /// The key the cache was built for.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_batch(
    file: &mut File,
    header: &mut Header,
    indices: &[usize],
    batch: &Tensor,
    path: &Path,
) -> Result<()> {
    let [c, h, w] = header.dims.map(|d| d as usize);
    if batch.dims() != [indices.len(), c, h, w] {
        return Err(ModelError::InvalidArgument(format!(
            "feature batch for {} images has shape {:?}, expected ({}, {c}, {h}, {w})",
            indices.len(),
            batch.dims(),
            indices.len()
        )));
    }
    let values = batch
        .to_dtype(DType::F16)?
        .flatten_all()?
        .to_vec1::<f16>()?;
    let mut bytes = Vec::with_capacity(values.len() * 2);
    for v in values {
        bytes.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    let offset = header.data_offset + indices[0] as u64 * header.entry_len() * 2;
    let io = |e| ModelError::io(path, e);
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    file.write_all(&bytes).map_err(io)?;
    header.done = (indices[indices.len() - 1] + 1) as u64;
    file.seek(SeekFrom::Start(DONE_OFFSET)).map_err(io)?;
    file.write_all(&header.done.to_le_bytes()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Entry i is filled with i + k / 8 for k = 0.. (exact in f16).
    fn features(indices: &[usize]) -> Result<Tensor> {
        let per = 2 * 3 * 4;
        let v: Vec<f32> = indices
            .iter()
            .flat_map(|&i| (0..per).map(move |k| i as f32 + k as f32 / 8.0))
            .collect();
        Ok(Tensor::from_vec(v, (indices.len(), 2, 3, 4), &Device::Cpu)?)
    }

    fn key(dataset: &str) -> String {
        CacheKey {
            backbone: "resnet50".into(),
            input_size: 224,
            dataset: dataset.into(),
        }
        .to_string()
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/features.bin");
        let seen = RefCell::new(Vec::new());
        let cache = FeatureCache::build(&path, &key("a"), 10, 4, features, &|d, t| {
            seen.borrow_mut().push((d, t))
        })
        .unwrap();
        assert_eq!(*seen.borrow(), vec![(4, 10), (8, 10), (10, 10)]);
        assert_eq!(cache.dims(), (2, 3, 4));
        assert_eq!(cache.len(), 10);
        let got = cache.get(&[7, 2, 9], &Device::Cpu).unwrap();
        let want = features(&[7, 2, 9]).unwrap();
        assert_eq!(got.dims(), &[3, 2, 3, 4]);
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        assert!(cache.get(&[10], &Device::Cpu).is_err());
        drop(cache);

        // A second build with the same key computes nothing.
        let calls = RefCell::new(0);
        let again = FeatureCache::build(
            &path,
            &key("a"),
            10,
            4,
            |i: &[usize]| {
                *calls.borrow_mut() += 1;
                features(i)
            },
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(*calls.borrow(), 0);
        assert_eq!(again.key(), key("a"));
        assert!(FeatureCache::open(&path, &key("a")).is_ok());
    }

    #[test]
    fn stale_key_is_rebuilt_and_refused_by_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.bin");
        FeatureCache::build(&path, &key("a"), 5, 2, features, &|_, _| {}).unwrap();
        let err = FeatureCache::open(&path, &key("b")).unwrap_err();
        assert!(err.to_string().contains("stale"), "{err}");
        let calls = RefCell::new(Vec::new());
        let shifted = |i: &[usize]| {
            calls.borrow_mut().extend_from_slice(i);
            let shifted: Vec<usize> = i.iter().map(|x| x + 100).collect();
            features(&shifted)
        };
        let cache = FeatureCache::build(&path, &key("b"), 5, 2, shifted, &|_, _| {}).unwrap();
        assert_eq!(*calls.borrow(), vec![0, 1, 2, 3, 4]);
        let v = cache
            .get(&[0], &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(v[0], 100.0);
        // A different count is stale too.
        drop(cache);
        let cache = FeatureCache::build(&path, &key("b"), 3, 2, features, &|_, _| {}).unwrap();
        assert_eq!(cache.len(), 3);
        // Garbage is not a cache.
        std::fs::write(&path, b"not a cache").unwrap();
        assert!(FeatureCache::open(&path, &key("b")).is_err());
        assert_eq!(
            FeatureCache::build(&path, &key("b"), 3, 2, features, &|_, _| {})
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn interrupted_build_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.bin");
        let failing = |i: &[usize]| {
            if i[0] >= 4 {
                Err(ModelError::InvalidArgument("interrupted".into()))
            } else {
                features(i)
            }
        };
        assert!(FeatureCache::build(&path, &key("a"), 9, 2, failing, &|_, _| {}).is_err());
        let err = FeatureCache::open(&path, &key("a")).unwrap_err();
        assert!(err.to_string().contains("incomplete: 4 of 9"), "{err}");
        let calls = RefCell::new(Vec::new());
        let cache = FeatureCache::build(
            &path,
            &key("a"),
            9,
            2,
            |i: &[usize]| {
                calls.borrow_mut().extend_from_slice(i);
                features(i)
            },
            &|_, _| {},
        )
        .unwrap();
        assert_eq!(*calls.borrow(), vec![4, 5, 6, 7, 8]);
        let all: Vec<usize> = (0..9).collect();
        let got = cache
            .get(&all, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want = features(&all)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn wrong_batch_shapes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("features.bin");
        let flat = |i: &[usize]| Ok(Tensor::zeros((i.len(), 4), DType::F32, &Device::Cpu)?);
        assert!(FeatureCache::build(&path, &key("a"), 4, 2, flat, &|_, _| {}).is_err());
        let short = |i: &[usize]| features(&i[..1]);
        assert!(FeatureCache::build(&path, &key("a"), 4, 2, short, &|_, _| {}).is_err());
    }
}
