//! One attribute's HNSW graph over unit vectors, in one of three storage kinds.
//!
//! The graph is asen's own ([`hnsw`]: hnswlib's algorithm on flat, append-only arrays shared by
//! inserting and searching threads; [`storage`]: the arrays and the vector kinds; [`dump`]:
//! its file format). hnsw_rs, the library the first graphs were built with, now only reads
//! the dumps those catalogues left ([`legacy`]), so an upgrade keeps their graphs.

use std::path::Path;

use rayon::prelude::*;

mod dump;
mod hnsw;
mod legacy;
mod storage;

pub(crate) use dump::DumpCrcs;
use hnsw::Hnsw;
use storage::{Int8, Kind, F16, F32};

use crate::error::{IndexError, Result};
use crate::schema::{CatalogueSchema, VectorStorage};

/// The files of a dump in asen's format, in the order of a dump record's CRCs.
pub(crate) const DUMP_FILES: [&str; 2] = [dump::LINKS_FILE, dump::VECTORS_FILE];
/// The files of a dump in hnsw_rs's format (catalogues written before asen's own graph).
pub(crate) const LEGACY_DUMP_FILES: [&str; 2] = legacy::FILES;

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

enum Inner {
    F32(Hnsw<F32>),
    F16(Hnsw<F16>),
    Int8(Hnsw<Int8>),
}

/// Runs `$body` with `$g` bound to the graph of whichever kind `$inner` holds.
macro_rules! with_graph {
    ($inner:expr, $g:ident => $body:expr) => {
        match $inner {
            Inner::F32($g) => $body,
            Inner::F16($g) => $body,
            Inner::Int8($g) => $body,
        }
    };
}

/// Writes an hnsw_rs dump of `f32` points into `dir`, as catalogues did before asen had its
/// own graph (tests of the upgrade path).
#[cfg(test)]
pub(crate) fn write_legacy_dump(dir: &Path, points: &[(&[f32], u64)], m: usize, ef_c: usize) {
    legacy::Reference::<F32>::build(points, m, ef_c).dump(dir);
}

/// Batches at least this large are inserted in parallel.
const PARALLEL_INSERTS: usize = 32;

/// One attribute's graph. Data ids are the catalogue's internal ids (`u64`).
pub(crate) struct Graph {
    inner: Inner,
}

impl Graph {
    /// An empty graph for the schema's dimension, storage kind and HNSW parameters.
    pub(crate) fn new(schema: &CatalogueSchema) -> Self {
        let (d, h) = (schema.dimension, schema.hnsw);
        let inner = match schema.storage {
            VectorStorage::F32 => Inner::F32(Hnsw::new(d, h.m, h.ef_construction)),
            VectorStorage::F16 => Inner::F16(Hnsw::new(d, h.m, h.ef_construction)),
            VectorStorage::Int8 => Inner::Int8(Hnsw::new(d, h.m, h.ef_construction)),
        };
        Graph { inner }
    }

    /// Whether graph scores are exact cosines (no rescoring needed).
    pub(crate) fn exact(&self) -> bool {
        with_graph!(&self.inner, g => exact_of(g))
    }

    /// Inserts unit vectors with their internal ids, in parallel for large batches.
    pub(crate) fn insert(&self, points: &[(&[f32], u64)]) {
        with_graph!(&self.inner, g => {
            if points.len() >= PARALLEL_INSERTS {
                points.par_iter().for_each(|(v, id)| g.insert(v, *id));
            } else {
                points.iter().for_each(|(v, id)| g.insert(v, *id));
            }
        })
    }

    /// Inserts points into several graphs in one parallel pass (no barrier between graphs):
    /// `(graph number, unit vector, data id)`, with `graph` mapping a number to its graph.
    pub(crate) fn insert_each<'g>(
        points: &[(usize, &[f32], u64)],
        graph: impl Fn(usize) -> &'g Graph + Sync,
    ) {
        let one =
            |&(a, v, id): &(usize, &[f32], u64)| with_graph!(&graph(a).inner, g => g.insert(v, id));
        if points.len() >= PARALLEL_INSERTS {
            points.par_iter().for_each(one);
        } else {
            points.iter().for_each(one);
        }
    }

    /// The `k` nearest points to a unit query, as `(internal id, approximate cosine)`, best
    /// first. With `keep`, only points it accepts are returned (the walk passes through
    /// rejected points, as in hnswlib).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        let found = with_graph!(&self.inner, g => g.search(query, k, ef, keep));
        found.into_iter().map(|(id, d)| (id, 1.0 - d)).collect()
    }

    /// Slots in the graph: live points, dead ones and free slots.
    pub(crate) fn len(&self) -> usize {
        with_graph!(&self.inner, g => g.len())
    }

    /// Free slots that inserts will reuse before the graph grows.
    pub(crate) fn free_slots(&self) -> usize {
        with_graph!(&self.inner, g => g.free_slots())
    }

    /// Flags the points whose internal ids `dead` accepts as dead; returns how many were
    /// newly flagged. No insert of such an id may be under way.
    pub(crate) fn mark_dead(&self, dead: impl Fn(u64) -> bool + Sync) -> usize {
        with_graph!(&self.inner, g => g.mark_dead(dead))
    }

    /// Unlinks the dead points and frees their slots for new points (searches and inserts go
    /// on meanwhile); returns how many slots were freed.
    pub(crate) fn reclaim(&self) -> usize {
        with_graph!(&self.inner, g => g.reclaim())
    }

    /// Internal ids of every point in the graph (for consistency checks; O(n)).
    pub(crate) fn ids(&self) -> Vec<u64> {
        with_graph!(&self.inner, g => (0..g.len() as u32).map(|i| g.points().id(i)).collect())
    }

    /// Bytes the graph holds in memory: vectors, lists, ids and levels.
    pub(crate) fn memory_bytes(&self) -> u64 {
        with_graph!(&self.inner, g => {
            (g.len() * g.points().bytes_per_point() + g.upper_bytes()) as u64
        })
    }

    /// Approximate bytes of vector data held.
    pub(crate) fn vector_bytes(&self, storage: VectorStorage) -> u64 {
        let dim = with_graph!(&self.inner, g => g.points().dim());
        (self.len() * dim * storage.bytes_per_component()) as u64
    }

    /// Writes the graph into `dir` (which must exist and be empty); returns the files' CRCs.
    /// No insert may run meanwhile.
    pub(crate) fn dump(&self, dir: &Path, attribute: &str) -> Result<DumpCrcs> {
        with_graph!(&self.inner, g => {
            let _no_reclaim = g.pause_maintenance();
            dump::write(g, dir)
        })
        .map_err(|e| graph_error(attribute, format!("dump failed: {e}")))
    }

    /// Loads a graph dumped by [`Graph::dump`], with the CRCs of the bytes it read.
    pub(crate) fn load(
        dir: &Path,
        schema: &CatalogueSchema,
        attribute: &str,
    ) -> Result<(Self, DumpCrcs)> {
        let (d, ef) = (schema.dimension, schema.hnsw.ef_construction);
        let loaded = match schema.storage {
            VectorStorage::F32 => dump::read(dir, d, ef).map(|(g, c)| (Inner::F32(g), c)),
            VectorStorage::F16 => dump::read(dir, d, ef).map(|(g, c)| (Inner::F16(g), c)),
            VectorStorage::Int8 => dump::read(dir, d, ef).map(|(g, c)| (Inner::Int8(g), c)),
        };
        let (inner, crcs) =
            loaded.map_err(|e| graph_error(attribute, format!("load failed: {e}")))?;
        Ok((Graph { inner }, crcs))
    }

    /// Loads a graph that hnsw_rs dumped (a catalogue from before asen's own graph).
    pub(crate) fn load_legacy(
        dir: &Path,
        schema: &CatalogueSchema,
        attribute: &str,
    ) -> Result<Self> {
        let (d, m, ef) = (schema.dimension, schema.hnsw.m, schema.hnsw.ef_construction);
        let inner = match schema.storage {
            VectorStorage::F32 => legacy::load(dir, d, m, ef).map(Inner::F32),
            VectorStorage::F16 => legacy::load(dir, d, m, ef).map(Inner::F16),
            VectorStorage::Int8 => legacy::load(dir, d, m, ef).map(Inner::Int8),
        }
        .map_err(|e| graph_error(attribute, format!("legacy load failed: {e}")))?;
        Ok(Graph { inner })
    }
}

fn exact_of<K: Kind>(_: &Hnsw<K>) -> bool {
    K::EXACT
}

fn graph_error(attribute: &str, detail: impl Into<String>) -> IndexError {
    IndexError::Graph {
        attribute: attribute.to_string(),
        detail: detail.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::CatalogueSchema;

    fn unit(v: Vec<f32>) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }

    fn points(n: usize, dim: usize) -> Vec<Vec<f32>> {
        random_units(n, dim, 12345)
    }

    /// `n` random unit vectors (components uniform in -0.5..0.5 before normalising) from `seed`.
    pub(crate) fn random_units(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut s = seed;
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

    /// Clustered unit vectors: `centres` random centres plus noise (like real embeddings).
    pub(crate) fn clustered(n: usize, dim: usize, centres: usize) -> Vec<Vec<f32>> {
        let c = points(centres, dim);
        let noise = points(n + 1, dim);
        (0..n)
            .map(|i| {
                unit(
                    c[i % centres]
                        .iter()
                        .zip(&noise[i + 1])
                        .map(|(a, b)| a + 0.6 * b)
                        .collect(),
                )
            })
            .collect()
    }

    fn exact_top(data: &[Vec<f32>], q: &[f32], k: usize) -> Vec<u64> {
        let mut s: Vec<(u64, f32)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64, v.iter().zip(q).map(|(a, b)| a * b).sum()))
            .collect();
        s.sort_by(|a, b| b.1.total_cmp(&a.1));
        s.into_iter().take(k).map(|x| x.0).collect()
    }

    fn with_ids(data: &[Vec<f32>], offset: u64) -> Vec<(&[f32], u64)> {
        data.iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), i as u64 + offset))
            .collect()
    }

    const STORAGES: [VectorStorage; 3] =
        [VectorStorage::F32, VectorStorage::F16, VectorStorage::Int8];

    #[test]
    fn every_storage_finds_the_point_itself_and_reloads() {
        let data = points(300, 16);
        for storage in STORAGES {
            let schema = CatalogueSchema::new(["a"], 16).with_storage(storage);
            let g = Graph::new(&schema);
            g.insert(&with_ids(&data, 7));
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
            let written = g.dump(dir.path(), "a").unwrap();
            let (back, read) = Graph::load(dir.path(), &schema, "a").unwrap();
            assert_eq!(
                written, read,
                "{storage:?}: CRCs of the bytes written and read"
            );
            assert_eq!(back.len(), 300);
            let mut ids = back.ids();
            ids.sort_unstable();
            assert_eq!(ids, (7..307).collect::<Vec<u64>>());
            for q in [&data[42], &data[0], &data[299]] {
                assert_eq!(
                    back.search(q, 5, 64, None),
                    g.search(q, 5, 64, None),
                    "{storage:?}"
                );
            }
        }
    }

    #[test]
    fn search_recalls_as_well_as_hnsw_rs_on_clustered_vectors() {
        let (n, dim, k, ef) = (4000, 32, 10, 64);
        let all = clustered(n + 100, dim, 20);
        let (data, queries) = all.split_at(n);
        let pts = with_ids(data, 0);
        for storage in STORAGES {
            let schema = CatalogueSchema::new(["a"], dim).with_storage(storage);
            let g = Graph::new(&schema);
            g.insert(&pts);
            let (m, efc) = (schema.hnsw.m, schema.hnsw.ef_construction);
            type Search = Box<dyn Fn(&[f32]) -> Vec<u64>>;
            let reference: Search = match storage {
                VectorStorage::F32 => {
                    let r = legacy::Reference::<F32>::build(&pts, m, efc);
                    Box::new(move |q| r.search(q, k, ef))
                }
                VectorStorage::F16 => {
                    let r = legacy::Reference::<F16>::build(&pts, m, efc);
                    Box::new(move |q| r.search(q, k, ef))
                }
                VectorStorage::Int8 => {
                    let r = legacy::Reference::<Int8>::build(&pts, m, efc);
                    Box::new(move |q| r.search(q, k, ef))
                }
            };
            let (mut ours, mut theirs) = (0, 0);
            for q in queries {
                let truth = exact_top(data, q, k);
                let found = g.search(q, k, ef, None);
                assert_eq!(found.len(), k);
                ours += found.iter().filter(|h| truth.contains(&h.0)).count();
                theirs += reference(q).iter().filter(|id| truth.contains(id)).count();
            }
            let total = (queries.len() * k) as f64;
            let (ours, theirs) = (ours as f64 / total, theirs as f64 / total);
            // The compressed kinds rank approximately (rescoring fixes it in the store).
            let floor = if storage == VectorStorage::F32 {
                0.95
            } else {
                0.85
            };
            assert!(
                ours >= floor,
                "{storage:?}: recall {ours} (hnsw_rs {theirs})"
            );
            assert!(
                ours >= theirs - 0.02,
                "{storage:?}: recall {ours} < hnsw_rs {theirs}"
            );
        }
    }

    #[test]
    fn an_hnsw_rs_dump_loads_with_its_links() {
        let (n, dim, k) = (2000, 24, 10);
        let all = clustered(n + 50, dim, 10);
        let (data, queries) = all.split_at(n);
        let pts = with_ids(data, 100);
        let schema = CatalogueSchema::new(["a"], dim);
        let reference = legacy::Reference::<F32>::build(&pts, 16, 100);
        let dir = tempfile::tempdir().unwrap();
        reference.dump(dir.path());
        let g = Graph::load_legacy(dir.path(), &schema, "a").unwrap();
        assert_eq!(g.len(), n);
        let mut hit = 0;
        for q in queries {
            let truth: Vec<u64> = exact_top(data, q, k).iter().map(|i| i + 100).collect();
            hit += g
                .search(q, k, 64, None)
                .iter()
                .filter(|h| truth.contains(&h.0))
                .count();
        }
        let recall = hit as f64 / (queries.len() * k) as f64;
        assert!(recall >= 0.95, "recall over the converted links {recall}");
        // The converted graph takes inserts like any other.
        g.insert(&[(&queries[0], 1)]);
        assert_eq!(g.search(&queries[0], 1, 64, None)[0].0, 1);
    }

    #[test]
    fn a_corrupt_legacy_dump_is_an_error_not_a_panic() {
        let data = points(20, 16);
        let reference = legacy::Reference::<F32>::build(&with_ids(&data, 0), 16, 100);
        let dir = tempfile::tempdir().unwrap();
        reference.dump(dir.path());
        std::fs::write(dir.path().join(LEGACY_DUMP_FILES[1]), b"garbage").unwrap();
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let res = Graph::load_legacy(dir.path(), &CatalogueSchema::new(["a"], 16), "a");
        std::panic::set_hook(hook);
        assert!(matches!(res, Err(IndexError::Graph { .. })));
    }

    /// A dump of 40 points, its two files' bytes.
    fn small_dump(storage: VectorStorage) -> (CatalogueSchema, Vec<u8>, Vec<u8>) {
        let schema = CatalogueSchema::new(["a"], 8).with_storage(storage);
        let g = Graph::new(&schema);
        g.insert(&with_ids(&points(40, 8), 0));
        let dir = tempfile::tempdir().unwrap();
        g.dump(dir.path(), "a").unwrap();
        let read = |f: &str| std::fs::read(dir.path().join(f)).unwrap();
        (schema, read(DUMP_FILES[0]), read(DUMP_FILES[1]))
    }

    fn load_bytes(schema: &CatalogueSchema, links: &[u8], vectors: &[u8]) -> Result<usize> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DUMP_FILES[0]), links).unwrap();
        std::fs::write(dir.path().join(DUMP_FILES[1]), vectors).unwrap();
        Graph::load(dir.path(), schema, "a").map(|(g, _)| g.len())
    }

    #[test]
    fn damaged_dumps_are_errors_that_say_what() {
        let (schema, links, vectors) = small_dump(VectorStorage::F32);
        assert_eq!(load_bytes(&schema, &links, &vectors).unwrap(), 40);
        let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
            (
                "bad magic",
                [b"X".as_slice(), &links[1..]].concat(),
                vectors.clone(),
            ),
            (
                "more than its file holds",
                {
                    let mut l = links.clone();
                    l[28..36].copy_from_slice(&(1u64 << 40).to_le_bytes());
                    l
                },
                vectors.clone(),
            ),
            (
                "vectors file has",
                links.clone(),
                vectors[..vectors.len() - 4].to_vec(),
            ),
            (
                "links file ends",
                links[..links.len() - 3].to_vec(),
                vectors.clone(),
            ),
            (
                "bytes after its last point",
                [links.as_slice(), &[0]].concat(),
                vectors.clone(),
            ),
            ("dimension", links.clone(), vectors.clone()),
        ];
        for (i, (what, l, v)) in cases.into_iter().enumerate() {
            let schema = if i == 5 {
                CatalogueSchema::new(["a"], 4)
            } else {
                schema.clone()
            };
            let err = load_bytes(&schema, &l, &v).unwrap_err().to_string();
            assert!(err.contains(what), "case {what:?}: {err}");
        }
        let (f16_schema, ..) = small_dump(VectorStorage::F16);
        let err = load_bytes(&f16_schema, &links, &vectors)
            .unwrap_err()
            .to_string();
        assert!(err.contains("storage kind"), "{err}");
    }

    mod fuzz {
        //! A dump's links file with bytes overwritten, inserted or cut: loading answers a
        //! graph or an error, never a panic, and a loaded graph can be searched.
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Damage {
            Overwrite(prop::sample::Index, u8),
            Truncate(prop::sample::Index),
            Insert(prop::sample::Index, u8),
        }

        fn damage() -> impl Strategy<Value = Vec<Damage>> {
            prop::collection::vec(
                prop_oneof![
                    6 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Overwrite(i, b)),
                    1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
                    1 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
                ],
                1..5,
            )
        }

        #[test]
        fn damaged_links_load_or_fail() {
            let (schema, links, vectors) = small_dump(VectorStorage::Int8);
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(DUMP_FILES[1]), &vectors).unwrap();
            asen_fuzz::fuzz("graph_dump", 3_000, damage(), |damage| {
                let mut bytes = links.clone();
                for d in damage {
                    match d {
                        Damage::Overwrite(i, b) if !bytes.is_empty() => {
                            let at = i.index(bytes.len());
                            bytes[at] = b;
                        }
                        Damage::Overwrite(..) => {}
                        Damage::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
                        Damage::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), b),
                    }
                }
                std::fs::write(dir.path().join(DUMP_FILES[0]), &bytes).unwrap();
                if let Ok((g, _)) = Graph::load(dir.path(), &schema, "a") {
                    let q = points(1, 8).remove(0);
                    let hits = g.search(&q, 5, 16, None);
                    prop_assert!(hits.len() <= 5);
                }
                Ok(())
            });
        }
    }
}
