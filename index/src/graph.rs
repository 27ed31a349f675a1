//! The one file that knows hnsw_rs: its anyhow results, `usize` ids, borrowed loaders and
//! panicking asserts stop here. A [`Graph`] holds one attribute's HNSW over unit vectors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use hnsw_rs::prelude::{AnnT, DistL2, Distance, FilterT, Hnsw, HnswIo, Neighbour};

use crate::error::{IndexError, Result};
use crate::schema::{CatalogueSchema, VectorStorage};

/// Basename of the two dump files (`graph.hnsw.graph`, `graph.hnsw.data`) in a dump directory.
pub(crate) const DUMP_BASENAME: &str = "graph";
/// hnsw_rs caps layers at 16.
const MAX_LAYERS: usize = 16;

/// Cosine distance on unit `f16` vectors stored as raw bits: `1 - dot`, clamped at 0.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DistHalfDot;

impl Distance<u16> for DistHalfDot {
    fn eval(&self, va: &[u16], vb: &[u16]) -> f32 {
        let dot: f32 = va
            .iter()
            .zip(vb)
            .map(|(a, b)| half::f16::from_bits(*a).to_f32() * half::f16::from_bits(*b).to_f32())
            .sum();
        (1.0 - dot).max(0.0)
    }
}

/// Cosine distance on per-vector scaled `i8` vectors: `1 - a.b / (|a| |b|)` in integers.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct DistInt8Cosine;

impl Distance<i8> for DistInt8Cosine {
    fn eval(&self, va: &[i8], vb: &[i8]) -> f32 {
        let (mut dot, mut na, mut nb) = (0i32, 0i32, 0i32);
        for (a, b) in va.iter().zip(vb) {
            let (a, b) = (*a as i32, *b as i32);
            dot += a * b;
            na += a * a;
            nb += b * b;
        }
        if na == 0 || nb == 0 {
            return 1.0;
        }
        (1.0 - dot as f32 / ((na as f32).sqrt() * (nb as f32).sqrt())).max(0.0)
    }
}

/// Quantises a unit vector to `i8` with its own max-abs scale (the scale cancels in the cosine).
pub(crate) fn quantize_i8(v: &[f32]) -> Vec<i8> {
    let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return vec![0; v.len()];
    }
    let s = 127.0 / max;
    v.iter()
        .map(|x| (x * s).round().clamp(-127.0, 127.0) as i8)
        .collect()
}

/// Converts a vector to raw `f16` bits.
pub(crate) fn to_f16_bits(v: &[f32]) -> Vec<u16> {
    v.iter()
        .map(|x| half::f16::from_f32(*x).to_bits())
        .collect()
}

enum Inner {
    F32(Hnsw<'static, f32, DistL2>),
    F16(Hnsw<'static, u16, DistHalfDot>),
    Int8(Hnsw<'static, i8, DistInt8Cosine>),
}

/// One attribute's graph. Data ids are the catalogue's internal ids (`u64`).
pub(crate) struct Graph {
    inner: Inner,
    dimension: usize,
}

impl Graph {
    /// An empty graph sized for about `capacity` points.
    pub(crate) fn new(schema: &CatalogueSchema, capacity: usize) -> Self {
        let h = schema.hnsw;
        let cap = capacity.max(1024);
        let inner = match schema.storage {
            VectorStorage::F32 => {
                Inner::F32(Hnsw::new(h.m, cap, MAX_LAYERS, h.ef_construction, DistL2))
            }
            VectorStorage::F16 => Inner::F16(Hnsw::new(
                h.m,
                cap,
                MAX_LAYERS,
                h.ef_construction,
                DistHalfDot,
            )),
            VectorStorage::Int8 => Inner::Int8(Hnsw::new(
                h.m,
                cap,
                MAX_LAYERS,
                h.ef_construction,
                DistInt8Cosine,
            )),
        };
        Graph {
            inner,
            dimension: schema.dimension,
        }
    }

    /// Whether graph scores are exact cosines (no rescoring needed).
    pub(crate) fn exact(&self) -> bool {
        matches!(self.inner, Inner::F32(_))
    }

    /// Inserts unit vectors with their internal ids, in parallel for large batches.
    pub(crate) fn insert(&self, points: &[(&[f32], u64)]) {
        let parallel = points.len() >= 32;
        match &self.inner {
            Inner::F32(h) => {
                let data: Vec<(&[f32], usize)> =
                    points.iter().map(|(v, id)| (*v, *id as usize)).collect();
                if parallel {
                    h.parallel_insert_slice(&data);
                } else {
                    data.into_iter().for_each(|p| h.insert_slice(p));
                }
            }
            Inner::F16(h) => {
                let conv: Vec<Vec<u16>> = points.iter().map(|(v, _)| to_f16_bits(v)).collect();
                let data: Vec<(&[u16], usize)> = conv
                    .iter()
                    .zip(points)
                    .map(|(v, (_, id))| (v.as_slice(), *id as usize))
                    .collect();
                if parallel {
                    h.parallel_insert_slice(&data);
                } else {
                    data.into_iter().for_each(|p| h.insert_slice(p));
                }
            }
            Inner::Int8(h) => {
                let conv: Vec<Vec<i8>> = points.iter().map(|(v, _)| quantize_i8(v)).collect();
                let data: Vec<(&[i8], usize)> = conv
                    .iter()
                    .zip(points)
                    .map(|(v, (_, id))| (v.as_slice(), *id as usize))
                    .collect();
                if parallel {
                    h.parallel_insert_slice(&data);
                } else {
                    data.into_iter().for_each(|p| h.insert_slice(p));
                }
            }
        }
    }

    /// The `k` nearest points to a unit query, as `(internal id, approximate cosine)`, best
    /// first. With `keep`, only points it accepts are returned (hnsw_rs filter hook: slow for
    /// selective predicates, see the crate docs).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        let hook = keep.map(|f| move |id: &usize| f(*id as u64));
        let filter: Option<&dyn FilterT> = hook.as_ref().map(|h| h as &dyn FilterT);
        let ef = ef.max(k);
        let found: Vec<Neighbour> = match &self.inner {
            Inner::F32(h) => h.search_filter(query, k, ef, filter),
            Inner::F16(h) => h.search_filter(&to_f16_bits(query), k, ef, filter),
            Inner::Int8(h) => h.search_filter(&quantize_i8(query), k, ef, filter),
        };
        let l2 = matches!(self.inner, Inner::F32(_));
        found
            .into_iter()
            .map(|n| {
                let d = n.get_distance();
                let score = if l2 { 1.0 - d * d / 2.0 } else { 1.0 - d };
                (n.get_origin_id() as u64, score)
            })
            .collect()
    }

    /// Points in the graph, live or not.
    pub(crate) fn len(&self) -> usize {
        match &self.inner {
            Inner::F32(h) => h.get_nb_point(),
            Inner::F16(h) => h.get_nb_point(),
            Inner::Int8(h) => h.get_nb_point(),
        }
    }

    /// Internal ids of every point in the graph (for consistency checks; O(n)).
    pub(crate) fn ids(&self) -> Vec<u64> {
        // hnsw_rs's point iterator unwraps the entry point: never call it on an empty graph.
        if self.len() == 0 {
            return Vec::new();
        }
        match &self.inner {
            Inner::F32(h) => h
                .get_point_indexation()
                .into_iter()
                .map(|p| p.get_origin_id() as u64)
                .collect(),
            Inner::F16(h) => h
                .get_point_indexation()
                .into_iter()
                .map(|p| p.get_origin_id() as u64)
                .collect(),
            Inner::Int8(h) => h
                .get_point_indexation()
                .into_iter()
                .map(|p| p.get_origin_id() as u64)
                .collect(),
        }
    }

    /// Approximate bytes of vector data held.
    pub(crate) fn vector_bytes(&self, storage: VectorStorage) -> u64 {
        (self.len() * self.dimension * storage.bytes_per_component()) as u64
    }

    /// Writes the graph into `dir` (which must exist and be empty).
    pub(crate) fn dump(&self, dir: &Path, attribute: &str) -> Result<()> {
        let res = match &self.inner {
            Inner::F32(h) => h.file_dump(dir, DUMP_BASENAME),
            Inner::F16(h) => h.file_dump(dir, DUMP_BASENAME),
            Inner::Int8(h) => h.file_dump(dir, DUMP_BASENAME),
        };
        let name = res.map_err(|e| graph_error(attribute, format!("dump failed: {e:#}")))?;
        if name != DUMP_BASENAME {
            return Err(graph_error(
                attribute,
                format!("dump went to unexpected basename {name:?}"),
            ));
        }
        Ok(())
    }

    /// Loads a graph dumped by [`Graph::dump`]. hnsw_rs asserts on malformed files; the panic is
    /// caught and reported as an error (callers verify checksums first, so this is a last guard).
    pub(crate) fn load(dir: &Path, schema: &CatalogueSchema, attribute: &str) -> Result<Self> {
        let dir = dir.to_path_buf();
        let storage = schema.storage;
        let loaded = catch_unwind(AssertUnwindSafe(move || -> anyhow_free::Result<Inner> {
            // The loaded Hnsw borrows its loader for `'b`; without mmap it holds no data from it,
            // so the loader (a path and a few options, ~100 bytes) is leaked to make the graph
            // `'static` instead of building a self-referential wrapper.
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(&dir, DUMP_BASENAME)));
            Ok(match storage {
                VectorStorage::F32 => {
                    let mut h = io
                        .load_hnsw::<f32, DistL2>()
                        .map_err(|e| format!("{e:#}"))?;
                    h.set_extend_candidates(false);
                    Inner::F32(h)
                }
                VectorStorage::F16 => {
                    let mut h = io
                        .load_hnsw::<u16, DistHalfDot>()
                        .map_err(|e| format!("{e:#}"))?;
                    h.set_extend_candidates(false);
                    Inner::F16(h)
                }
                VectorStorage::Int8 => {
                    let mut h = io
                        .load_hnsw::<i8, DistInt8Cosine>()
                        .map_err(|e| format!("{e:#}"))?;
                    h.set_extend_candidates(false);
                    Inner::Int8(h)
                }
            })
        }));
        let inner = match loaded {
            Ok(Ok(inner)) => inner,
            Ok(Err(msg)) => return Err(graph_error(attribute, format!("load failed: {msg}"))),
            Err(_) => return Err(graph_error(attribute, "load panicked on a malformed dump")),
        };
        let graph = Graph {
            inner,
            dimension: schema.dimension,
        };
        let dim = match &graph.inner {
            Inner::F32(h) => h.get_point_indexation().get_data_dimension(),
            Inner::F16(h) => h.get_point_indexation().get_data_dimension(),
            Inner::Int8(h) => h.get_point_indexation().get_data_dimension(),
        };
        if graph.len() > 0 && dim != schema.dimension {
            return Err(graph_error(
                attribute,
                format!("dump has dimension {dim}, schema says {}", schema.dimension),
            ));
        }
        Ok(graph)
    }
}

mod anyhow_free {
    pub(super) type Result<T> = std::result::Result<T, String>;
}

fn graph_error(attribute: &str, detail: impl Into<String>) -> IndexError {
    IndexError::Graph {
        attribute: attribute.to_string(),
        detail: detail.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::CatalogueSchema;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn points(n: usize, dim: usize) -> Vec<Vec<f32>> {
        let mut s = 12345u64;
        (0..n)
            .map(|_| {
                unit(
                    (0..dim)
                        .map(|_| {
                            s = s
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn every_storage_finds_the_point_itself_and_reloads() {
        let data = points(300, 16);
        for storage in [VectorStorage::F32, VectorStorage::F16, VectorStorage::Int8] {
            let schema = CatalogueSchema::new(["a"], 16).with_storage(storage);
            let g = Graph::new(&schema, 300);
            let pts: Vec<(&[f32], u64)> = data
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_slice(), i as u64 + 7))
                .collect();
            g.insert(&pts);
            assert_eq!(g.len(), 300);
            let hits = g.search(&data[42], 3, 64, None);
            assert_eq!(hits[0].0, 49, "{storage:?}");
            assert!(
                (hits[0].1 - 1.0).abs() < 0.02,
                "{storage:?} score {}",
                hits[0].1
            );
            let odd = |id: u64| id % 2 == 1;
            let filtered = g.search(&data[42], 5, 64, Some(&odd));
            assert!(filtered.iter().all(|(id, _)| id % 2 == 1));

            let dir = tempfile::tempdir().unwrap();
            g.dump(dir.path(), "a").unwrap();
            let back = Graph::load(dir.path(), &schema, "a").unwrap();
            assert_eq!(back.len(), 300);
            assert_eq!(back.search(&data[42], 1, 64, None)[0].0, 49);
        }
    }

    #[test]
    fn corrupt_dump_is_an_error_not_a_panic() {
        let schema = CatalogueSchema::new(["a"], 16);
        let g = Graph::new(&schema, 10);
        let data = points(20, 16);
        let pts: Vec<(&[f32], u64)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), i as u64))
            .collect();
        g.insert(&pts);
        let dir = tempfile::tempdir().unwrap();
        g.dump(dir.path(), "a").unwrap();
        let data_file = dir.path().join("graph.hnsw.data");
        std::fs::write(&data_file, b"garbage").unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let res = Graph::load(dir.path(), &schema, "a");
        std::panic::set_hook(hook);
        assert!(matches!(res, Err(IndexError::Graph { .. })));
    }

    #[test]
    fn int8_distance_is_cosine() {
        let a = quantize_i8(&unit(vec![1.0, 2.0, 3.0]));
        let b = quantize_i8(&unit(vec![1.0, 2.0, 3.0]));
        assert!(DistInt8Cosine.eval(&a, &b) < 1e-3);
        let c = quantize_i8(&unit(vec![-1.0, -2.0, -3.0]));
        assert!((DistInt8Cosine.eval(&a, &c) - 2.0).abs() < 1e-3);
    }
}
