//! The one file that knows hnsw_rs: its anyhow results, `usize` ids, borrowed loaders and
//! panicking asserts stop here. A [`Graph`] holds one attribute's HNSW over unit vectors.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use hnsw_rs::prelude::{AnnT, DistL2, Distance, Hnsw, HnswIo};
use rayon::prelude::*;

mod frozen;

use frozen::{Frozen, FrozenBuilder, FrozenKind};

use crate::distance::{dot, dot_i8, norm_i8};
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
        let (na, nb) = (norm_i8(va), norm_i8(vb));
        if na == 0.0 || nb == 0.0 {
            return 1.0;
        }
        (1.0 - dot_i8(va, vb) as f32 / (na * nb)).max(0.0)
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

/// Points inserted since the last freeze are searched exactly and merged with the frozen
/// results; past `len / 100` of them, clamped to `MIN_REFREEZE..=MAX_REFREEZE`, the inserting
/// thread refreezes (an O(len) copy, so larger graphs refreeze less often).
const MIN_REFREEZE: usize = 256;
/// The delta is kept under this many points however large the graph (an exact scan per query).
const MAX_REFREEZE: usize = 1024;

/// What a search reads: the frozen graph and the points inserted after it (unit `f32`).
#[derive(Clone)]
struct Snapshot {
    frozen: Arc<Frozen>,
    delta: Arc<Vec<(u64, Arc<[f32]>)>>,
}

/// One attribute's graph. Data ids are the catalogue's internal ids (`u64`).
///
/// hnsw_rs holds the live graph (inserts, dumps, loads); searches run over a [`Frozen`] flat
/// copy of it plus an exact scan of the points inserted since that copy was made. Once the
/// delta passes `len / 100` points (clamped to `MIN_REFREEZE..=MAX_REFREEZE`), the inserting
/// thread refreezes.
pub(crate) struct Graph {
    inner: Inner,
    dimension: usize,
    state: RwLock<Snapshot>,
    /// Held while a thread refreezes, so only one does.
    freezing: Mutex<()>,
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
        Graph::wrap(inner, schema.dimension)
    }

    fn wrap(inner: Inner, dimension: usize) -> Self {
        let kind = match inner {
            Inner::F32(_) => FrozenKind::F32,
            Inner::F16(_) => FrozenKind::F16,
            Inner::Int8(_) => FrozenKind::Int8,
        };
        Graph {
            inner,
            dimension,
            state: RwLock::new(Snapshot {
                frozen: Arc::new(Frozen::empty(kind, dimension)),
                delta: Arc::new(Vec::new()),
            }),
            freezing: Mutex::new(()),
        }
    }

    fn snapshot(&self) -> Snapshot {
        self.state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Copies the current hnsw_rs graph into a new [`Frozen`] and drops the delta points it
    /// covers. Inserts may run meanwhile: points they add after the copy stay in the delta.
    pub(crate) fn freeze(&self) {
        let _one = self.freezing.lock().unwrap_or_else(PoisonError::into_inner);
        let cut = self.snapshot().delta.len();
        let frozen = match &self.inner {
            Inner::F32(h) => freeze_hnsw(h, FrozenKind::F32, self.dimension, |b, id, v, l| {
                b.push_f32(id, v, l)
            }),
            Inner::F16(h) => freeze_hnsw(h, FrozenKind::F16, self.dimension, |b, id, v, l| {
                b.push_f16(id, v, l)
            }),
            Inner::Int8(h) => freeze_hnsw(h, FrozenKind::Int8, self.dimension, |b, id, v, l| {
                b.push_i8(id, v, l)
            }),
        };
        // Only a vector of the wrong length fails the copy; keep searching the old one + delta.
        let Some(frozen) = frozen else {
            return;
        };
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let rest = state.delta.get(cut..).unwrap_or_default().to_vec();
        *state = Snapshot {
            frozen: Arc::new(frozen),
            delta: Arc::new(rest),
        };
    }

    /// Points held by the frozen copy and the delta (for tests and stats).
    #[cfg(test)]
    fn frozen_split(&self) -> (usize, usize) {
        let s = self.snapshot();
        (s.frozen.len(), s.delta.len())
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
        if points.is_empty() {
            return;
        }
        let due = {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            let mut delta = Vec::with_capacity(state.delta.len() + points.len());
            delta.extend(state.delta.iter().cloned());
            delta.extend(points.iter().map(|(v, id)| (*id, Arc::<[f32]>::from(*v))));
            state.delta = Arc::new(delta);
            let limit = (state.frozen.len() / 100).clamp(MIN_REFREEZE, MAX_REFREEZE);
            state.delta.len() > limit
        };
        if due {
            self.freeze();
        }
    }

    /// The `k` nearest points to a unit query, as `(internal id, approximate cosine)`, best
    /// first, from the frozen graph and an exact scan of newer points. With `keep`, only points
    /// it accepts are returned (the walk passes through rejected points, as in hnswlib).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        let snap = self.snapshot();
        let ef = ef.max(k);
        let mut found = if snap.frozen.len() > 0 {
            let q = snap.frozen.prepare(query);
            snap.frozen.search(&q, k, ef, keep)
        } else {
            Vec::new()
        };
        if !snap.delta.is_empty() {
            // Only delta points closer than the current k-th can enter the result.
            let mut worst = if found.len() >= k {
                found.last().map_or(f32::INFINITY, |w| w.1)
            } else {
                f32::INFINITY
            };
            let before = found.len();
            for (id, v) in snap.delta.iter() {
                let d = 1.0 - dot(query, v);
                if d >= worst || keep.is_some_and(|f| !f(*id)) {
                    continue;
                }
                found.push((*id, d));
                if found.len() >= 2 * k.max(16) {
                    found.sort_by(|a, b| a.1.total_cmp(&b.1));
                    found.truncate(k + (found.len() - k) / 2);
                    worst = found.get(k - 1).map_or(worst, |w| w.1);
                }
            }
            if found.len() > before {
                // A point inserted while a freeze was copying may be in both parts.
                let mut seen = HashSet::with_capacity(found.len());
                found.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
                found.retain(|(id, _)| seen.insert(*id));
                found.truncate(k);
            }
        }
        found.into_iter().map(|(id, d)| (id, 1.0 - d)).collect()
    }

    /// The same search through hnsw_rs's own `search_filter` on the live graph (the reference
    /// the frozen search is tested against).
    #[cfg(test)]
    pub(crate) fn search_hnsw_rs(&self, query: &[f32], k: usize, ef: usize) -> Vec<(u64, f32)> {
        let ef = ef.max(k);
        let found: Vec<hnsw_rs::prelude::Neighbour> = match &self.inner {
            Inner::F32(h) => h.search_filter(query, k, ef, None),
            Inner::F16(h) => h.search_filter(&to_f16_bits(query), k, ef, None),
            Inner::Int8(h) => h.search_filter(&quantize_i8(query), k, ef, None),
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
        let graph = Graph::wrap(inner, schema.dimension);
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
        graph.freeze();
        Ok(graph)
    }
}

/// Copies an hnsw_rs graph into a [`Frozen`]: points ordered by level (highest first), links
/// translated from hnsw_rs's `(layer, rank)` point ids to dense indices. Links to points that
/// are not in the copy (inserted while it was made) are dropped.
fn freeze_hnsw<T, D, F>(
    h: &Hnsw<'static, T, D>,
    kind: FrozenKind,
    dim: usize,
    push: F,
) -> Option<Frozen>
where
    T: Clone + Send + Sync,
    D: Distance<T> + Send + Sync,
    F: Fn(&mut FrozenBuilder, u64, &[T], Vec<Vec<u32>>) -> bool,
{
    let pi = h.get_point_indexation();
    if pi.get_nb_point() == 0 {
        return Some(Frozen::empty(kind, dim));
    }
    let top = pi.get_max_level_observed() as usize;
    // Dense order: layer `top` first; `dense[l][rank]` is the dense index of point (l, rank).
    let mut points = Vec::with_capacity(pi.get_nb_point());
    let mut dense: Vec<Vec<u32>> = vec![Vec::new(); top + 1];
    for l in (0..=top).rev() {
        for p in pi.get_layer_iterator(l) {
            let rank = p.get_point_id().1;
            if rank < 0 {
                continue;
            }
            let slot = &mut dense[l];
            if slot.len() <= rank as usize {
                slot.resize(rank as usize + 1, u32::MAX);
            }
            slot[rank as usize] = points.len() as u32;
            points.push(p);
        }
    }
    let links: Vec<Vec<Vec<u32>>> = points
        .par_iter()
        .map(|p| {
            let level = p.get_point_id().0 as usize;
            let mut hood = p.get_neighborhood_id();
            hood.truncate(level + 1);
            hood.into_iter()
                .map(|ns| {
                    ns.into_iter()
                        .filter_map(|n| {
                            let pid = n.p_id;
                            let d = *dense
                                .get(pid.0 as usize)?
                                .get(usize::try_from(pid.1).ok()?)?;
                            (d != u32::MAX).then_some(d)
                        })
                        .collect()
                })
                .collect()
        })
        .collect();
    let mut b = FrozenBuilder::new(kind, dim, points.len());
    for (p, l) in points.iter().zip(links) {
        // A vector of another length would shift every later dense index: give up the copy.
        if !push(&mut b, p.get_origin_id() as u64, p.get_v(), l) {
            return None;
        }
    }
    Some(b.finish())
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

    /// Clustered unit vectors: `centres` random centres plus noise (like real embeddings).
    fn clustered(n: usize, dim: usize, centres: usize) -> Vec<Vec<f32>> {
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

    #[test]
    fn frozen_search_agrees_with_hnsw_rs_and_brute_force() {
        let (n, dim, k, ef) = (4000, 32, 10, 64);
        let all = clustered(n + 100, dim, 20);
        let (data, queries) = all.split_at(n);
        for storage in [VectorStorage::F32, VectorStorage::F16, VectorStorage::Int8] {
            let schema = CatalogueSchema::new(["a"], dim).with_storage(storage);
            let g = Graph::new(&schema, n);
            let pts: Vec<(&[f32], u64)> = data
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_slice(), i as u64))
                .collect();
            g.insert(&pts);
            g.freeze();
            assert_eq!(g.frozen_split(), (n, 0), "{storage:?}");
            let (mut same, mut hit_frozen, mut hit_hnsw) = (0, 0, 0);
            for q in queries {
                let ours: Vec<u64> = g.search(q, k, ef, None).iter().map(|h| h.0).collect();
                let theirs: Vec<u64> = g.search_hnsw_rs(q, k, ef).iter().map(|h| h.0).collect();
                let truth = exact_top(data, q, k);
                assert_eq!(ours.len(), k);
                same += ours.iter().filter(|id| theirs.contains(id)).count();
                hit_frozen += ours.iter().filter(|id| truth.contains(id)).count();
                hit_hnsw += theirs.iter().filter(|id| truth.contains(id)).count();
            }
            let total = (queries.len() * k) as f64;
            let (same, rf, rh) = (
                same as f64 / total,
                hit_frozen as f64 / total,
                hit_hnsw as f64 / total,
            );
            assert!(
                same >= 0.9,
                "{storage:?}: frozen and hnsw_rs top-k overlap {same}"
            );
            // The compressed kinds rank approximately (rescoring fixes it in the store).
            let floor = if storage == VectorStorage::F32 {
                0.95
            } else {
                0.85
            };
            assert!(
                rf >= floor,
                "{storage:?}: frozen recall {rf} (hnsw_rs {rh})"
            );
            assert!(
                rf >= rh - 0.02,
                "{storage:?}: frozen recall {rf} < hnsw_rs {rh}"
            );
        }
    }

    #[test]
    fn inserts_after_a_freeze_are_found_and_trigger_a_refreeze() {
        let dim = 16;
        let data = points(MIN_REFREEZE + 600, dim);
        let schema = CatalogueSchema::new(["a"], dim);
        let g = Graph::new(&schema, data.len());
        let pts: Vec<(&[f32], u64)> = data
            .iter()
            .enumerate()
            .map(|(i, v)| (v.as_slice(), i as u64))
            .collect();
        g.insert(&pts[..200]);
        assert_eq!(
            g.frozen_split(),
            (0, 200),
            "under the limit: all in the delta"
        );
        g.freeze();
        assert_eq!(g.frozen_split(), (200, 0));
        g.insert(&pts[200..300]);
        assert_eq!(g.frozen_split(), (200, 100));
        // A delta point and a frozen point are both found, with exact-ish scores.
        for i in [42usize, 250] {
            let hits = g.search(&data[i], 3, 64, None);
            assert_eq!(hits[0].0, i as u64);
            assert!((hits[0].1 - 1.0).abs() < 1e-4);
        }
        let even = |id: u64| id.is_multiple_of(2);
        let hits = g.search(&data[251], 5, 64, Some(&even));
        assert_eq!(hits.len(), 5);
        assert!(hits.iter().all(|(id, _)| id % 2 == 0));
        // Past the limit the inserting call refreezes everything.
        g.insert(&pts[300..]);
        assert_eq!(g.frozen_split(), (data.len(), 0));
        assert_eq!(g.search(&data[800], 1, 64, None)[0].0, 800);
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
