//! The one file that knows hnsw_rs. Catalogues written before asen had its own graph dumped
//! their graphs in hnsw_rs's format (`graph.hnsw.graph`, `graph.hnsw.data`); this file loads
//! such a dump and copies its links into an asen graph, so an upgrade keeps the graph instead
//! of rebuilding it. hnsw_rs's anyhow results, `usize` ids, borrowed loaders and panicking
//! asserts stop here. Tests also build hnsw_rs graphs here as a reference for recall.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use hnsw_rs::prelude::{DistL2, Distance, Hnsw as RsHnsw, HnswIo};

use super::hnsw::Hnsw;
use super::storage::{Int8, Kind, F16, F32};
use crate::distance::{dot_i8, norm_i8};

/// Basename of the two hnsw_rs dump files.
pub(crate) const BASENAME: &str = "graph";
/// The two hnsw_rs dump files, in the order of a dump record's CRCs.
pub(crate) const FILES: [&str; 2] = ["graph.hnsw.graph", "graph.hnsw.data"];
/// hnsw_rs caps layers at 16.
#[cfg(test)]
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

/// A storage kind hnsw_rs can hold: its element type and distance.
pub(crate) trait Legacy: Kind {
    type Dist: Distance<Self::Elem> + Default + Send + Sync + 'static;
    /// The auxiliary value of a stored vector.
    fn aux(v: &[Self::Elem]) -> f32;
}

impl Legacy for F32 {
    type Dist = DistL2;
    fn aux(_: &[f32]) -> f32 {
        0.0
    }
}

impl Legacy for F16 {
    type Dist = DistHalfDot;
    fn aux(_: &[u16]) -> f32 {
        0.0
    }
}

impl Legacy for Int8 {
    type Dist = DistInt8Cosine;
    fn aux(v: &[i8]) -> f32 {
        norm_i8(v)
    }
}

/// Loads an hnsw_rs dump from `dir` into an asen graph with the same points and links.
/// hnsw_rs asserts on malformed files; the panic is caught and reported as an error.
pub(crate) fn load<K: Legacy>(
    dir: &Path,
    dim: usize,
    m: usize,
    ef_construction: usize,
) -> Result<Hnsw<K>, String> {
    let dir = dir.to_path_buf();
    let loaded = catch_unwind(AssertUnwindSafe(move || -> Result<Hnsw<K>, String> {
        // The loaded graph borrows its loader; without mmap it holds no data from it, so the
        // loader is dropped with the graph at the end of this closure.
        let mut io = HnswIo::new(&dir, BASENAME);
        let h = io
            .load_hnsw::<K::Elem, K::Dist>()
            .map_err(|e| format!("{e:#}"))?;
        convert(&h, dim, m, ef_construction)
    }));
    match loaded {
        Ok(r) => r,
        Err(_) => Err("hnsw_rs panicked on a malformed dump".into()),
    }
}

/// Copies an hnsw_rs graph: points ordered by level (highest first, so point 0 is the entry
/// point), links translated from hnsw_rs's `(layer, rank)` ids to asen indices.
fn convert<K: Legacy>(
    h: &RsHnsw<'_, K::Elem, K::Dist>,
    dim: usize,
    m: usize,
    ef_construction: usize,
) -> Result<Hnsw<K>, String> {
    let mut g = Hnsw::<K>::new(dim, m, ef_construction);
    let pi = h.get_point_indexation();
    if pi.get_nb_point() == 0 {
        return Ok(g);
    }
    if pi.get_data_dimension() != dim {
        return Err(format!(
            "dump has dimension {}, schema says {dim}",
            pi.get_data_dimension()
        ));
    }
    let top = pi.get_max_level_observed() as usize;
    let mut points = Vec::with_capacity(pi.get_nb_point());
    let mut index: Vec<Vec<u32>> = vec![Vec::new(); top + 1];
    for l in (0..=top).rev() {
        for p in pi.get_layer_iterator(l) {
            let Ok(rank) = usize::try_from(p.get_point_id().1) else {
                continue;
            };
            let slot = &mut index[l];
            if slot.len() <= rank {
                slot.resize(rank + 1, u32::MAX);
            }
            slot[rank] = points.len() as u32;
            points.push(p);
        }
    }
    for p in &points {
        let level = p.get_point_id().0 as usize;
        let mut hood = p.get_neighborhood_id();
        hood.truncate(level + 1);
        let links: Vec<Vec<u32>> = hood
            .into_iter()
            .enumerate()
            .map(|(layer, ns)| {
                let cap = if layer == 0 { 2 * m } else { m };
                ns.into_iter()
                    .filter_map(|n| {
                        let (l, r) = (n.p_id.0, n.p_id.1);
                        let i = *index.get(l as usize)?.get(usize::try_from(r).ok()?)?;
                        (i != u32::MAX).then_some(i)
                    })
                    .take(cap)
                    .collect()
            })
            .collect();
        let v = p.get_v();
        if v.len() != dim {
            return Err(format!("a point has {} components, not {dim}", v.len()));
        }
        g.push_loaded(p.get_origin_id() as u64, v, K::aux(v), &links);
    }
    g.set_entry(Some((0, top as u8)));
    Ok(g)
}

/// An hnsw_rs graph of the same points (tests: the reference for recall and the source of
/// legacy dumps).
#[cfg(test)]
pub(crate) struct Reference<K: Legacy>(RsHnsw<'static, K::Elem, K::Dist>);

#[cfg(test)]
impl<K: Legacy> Reference<K> {
    pub(crate) fn build(points: &[(&[f32], u64)], m: usize, ef_construction: usize) -> Self {
        let h = RsHnsw::new(
            m,
            points.len().max(1024),
            MAX_LAYERS,
            ef_construction,
            K::Dist::default(),
        );
        let dim = points.first().map_or(0, |p| p.0.len());
        let stored: Vec<Vec<K::Elem>> = points
            .iter()
            .map(|(v, _)| {
                let mut out = vec![K::Elem::default(); dim];
                K::encode(v, &mut out);
                out
            })
            .collect();
        let data: Vec<(&[K::Elem], usize)> = stored
            .iter()
            .zip(points)
            .map(|(v, (_, id))| (v.as_slice(), *id as usize))
            .collect();
        h.parallel_insert_slice(&data);
        Reference(h)
    }

    /// hnsw_rs's own search: data ids, best first.
    pub(crate) fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<u64> {
        let mut q = vec![K::Elem::default(); query.len()];
        K::encode(query, &mut q);
        self.0
            .search_filter(&q, k, ef.max(k), None)
            .into_iter()
            .map(|n| n.get_origin_id() as u64)
            .collect()
    }

    pub(crate) fn dump(&self, dir: &Path) {
        use hnsw_rs::prelude::AnnT;
        let name = self.0.file_dump(dir, BASENAME).unwrap();
        assert_eq!(name, BASENAME);
    }
}
