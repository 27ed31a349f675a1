//! A read-only, flat copy of an HNSW graph and the search over it.
//!
//! hnsw_rs's own search allocates an `Arc` per candidate, builds a fresh visited `HashMap` per call
//! and takes a lock per neighbour list (see `docs/benchmarks.md`). A [`Frozen`] graph holds the
//! same links as `u32` CSR arrays per layer and the vectors contiguously, and searches with
//! `(distance, u32)` heaps and a visited-epoch array reused per thread. It knows nothing of
//! hnsw_rs: `graph.rs` fills it through [`FrozenBuilder`].
//!
//! Dense indices are ordered by level, highest first, so layer `l` holds exactly the points
//! `0..layers[l].len()` and point 0 (on the top layer) is the entry point.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use crate::distance::{dot, dot_i8, norm_i8};

/// Vectors of all frozen points, in the graph's storage kind.
enum Vectors {
    /// Unit vectors; distance `1 - dot`.
    F32(Vec<f32>),
    /// Unit vectors as `f16` bits; distance `1 - dot`, clamped at 0.
    F16(Vec<u16>),
    /// Per-vector scaled `i8` with each vector's integer norm; distance `1 - cosine`, clamped at 0.
    Int8 { data: Vec<i8>, norms: Vec<f32> },
}

/// A query prepared for one storage kind (quantised like the stored vectors).
pub(crate) enum PreparedQuery {
    /// `f32` query (also used, rounded through `f16`, for `f16` graphs).
    F32(Vec<f32>),
    /// Quantised query and its integer norm.
    Int8(Vec<i8>, f32),
}

/// One layer's links in CSR form: the neighbours of point `i` are
/// `links[offsets[i]..offsets[i + 1]]`.
#[derive(Default)]
struct Layer {
    offsets: Vec<u32>,
    links: Vec<u32>,
}

impl Layer {
    fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    #[inline]
    fn neighbours(&self, i: u32) -> &[u32] {
        let i = i as usize;
        &self.links[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// A flat, immutable HNSW graph over unit vectors.
pub(crate) struct Frozen {
    dim: usize,
    ids: Vec<u64>,
    vectors: Vectors,
    layers: Vec<Layer>,
}

/// The storage kind a [`FrozenBuilder`] collects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrozenKind {
    /// `f32` vectors.
    F32,
    /// `f16` bits.
    F16,
    /// Scaled `i8`.
    Int8,
}

/// Collects points (in dense order: highest level first) and their links into a [`Frozen`].
pub(crate) struct FrozenBuilder {
    dim: usize,
    ids: Vec<u64>,
    vectors: Vectors,
    /// `links[i][l]`: neighbours of point `i` on layer `l`, as dense indices.
    links: Vec<Vec<Vec<u32>>>,
}

impl FrozenBuilder {
    pub(crate) fn new(kind: FrozenKind, dim: usize, capacity: usize) -> Self {
        let vectors = match kind {
            FrozenKind::F32 => Vectors::F32(Vec::with_capacity(capacity * dim)),
            FrozenKind::F16 => Vectors::F16(Vec::with_capacity(capacity * dim)),
            FrozenKind::Int8 => Vectors::Int8 {
                data: Vec::with_capacity(capacity * dim),
                norms: Vec::with_capacity(capacity),
            },
        };
        FrozenBuilder {
            dim,
            ids: Vec::with_capacity(capacity),
            vectors,
            links: Vec::with_capacity(capacity),
        }
    }

    /// Adds an `f32` point (builder of kind `F32`). Returns false on a kind or length mismatch.
    pub(crate) fn push_f32(&mut self, id: u64, v: &[f32], links: Vec<Vec<u32>>) -> bool {
        match &mut self.vectors {
            Vectors::F32(data) if v.len() == self.dim => data.extend_from_slice(v),
            _ => return false,
        }
        self.ids.push(id);
        self.links.push(links);
        true
    }

    /// Adds an `f16` point (builder of kind `F16`).
    pub(crate) fn push_f16(&mut self, id: u64, v: &[u16], links: Vec<Vec<u32>>) -> bool {
        match &mut self.vectors {
            Vectors::F16(data) if v.len() == self.dim => data.extend_from_slice(v),
            _ => return false,
        }
        self.ids.push(id);
        self.links.push(links);
        true
    }

    /// Adds an `i8` point (builder of kind `Int8`).
    pub(crate) fn push_i8(&mut self, id: u64, v: &[i8], links: Vec<Vec<u32>>) -> bool {
        match &mut self.vectors {
            Vectors::Int8 { data, norms } if v.len() == self.dim => {
                data.extend_from_slice(v);
                norms.push(norm_i8(v));
            }
            _ => return false,
        }
        self.ids.push(id);
        self.links.push(links);
        true
    }

    /// Builds the CSR layers. Links to points out of range for their layer are dropped.
    pub(crate) fn finish(self) -> Frozen {
        let n = self.ids.len();
        let top = self.links.iter().map(|l| l.len()).max().unwrap_or(0);
        let mut layers: Vec<Layer> = Vec::with_capacity(top);
        for l in 0..top {
            // Points with a list on layer `l` form a prefix (dense order is by level).
            let count = self.links.iter().take_while(|ls| ls.len() > l).count();
            let mut layer = Layer {
                offsets: Vec::with_capacity(count + 1),
                links: Vec::new(),
            };
            layer.offsets.push(0);
            for ls in &self.links[..count] {
                layer
                    .links
                    .extend(ls[l].iter().copied().filter(|&j| (j as usize) < count));
                layer.offsets.push(layer.links.len() as u32);
            }
            layers.push(layer);
        }
        debug_assert!(layers.first().is_none_or(|l| l.len() == n));
        Frozen {
            dim: self.dim,
            ids: self.ids,
            vectors: self.vectors,
            layers,
        }
    }
}

/// Total order on distances for the heaps (NaN sorts last).
#[derive(Clone, Copy, PartialEq)]
struct Dist(f32);

impl Eq for Dist {}

impl PartialOrd for Dist {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dist {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Per-thread search scratch: visited marks by epoch, reused heaps and an `f16` decode buffer.
#[derive(Default)]
struct Scratch {
    epoch: u32,
    marks: Vec<u32>,
    candidates: BinaryHeap<Reverse<(Dist, u32)>>,
    results: BinaryHeap<(Dist, u32)>,
    decoded: Vec<f32>,
}

impl Scratch {
    /// Starts a new search over `n` points: bumps the epoch (clearing on wrap-around).
    fn begin(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.epoch = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    /// Marks `i` visited; returns whether it was new.
    #[inline]
    fn visit(&mut self, i: u32) -> bool {
        let m = &mut self.marks[i as usize];
        if *m == self.epoch {
            false
        } else {
            *m = self.epoch;
            true
        }
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

impl Frozen {
    /// An empty graph.
    pub(crate) fn empty(kind: FrozenKind, dim: usize) -> Self {
        FrozenBuilder::new(kind, dim, 0).finish()
    }

    /// Points held.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Prepares a unit `f32` query for this graph's storage kind.
    pub(crate) fn prepare(&self, query: &[f32]) -> PreparedQuery {
        match &self.vectors {
            Vectors::F32(_) => PreparedQuery::F32(query.to_vec()),
            Vectors::F16(_) => PreparedQuery::F32(
                query
                    .iter()
                    .map(|x| half::f16::from_f32(*x).to_f32())
                    .collect(),
            ),
            Vectors::Int8 { .. } => {
                let q = super::quantize_i8(query);
                let n = norm_i8(&q);
                PreparedQuery::Int8(q, n)
            }
        }
    }

    /// Distance from the query to point `i` (lower is closer; `1 - cosine` for every kind).
    #[inline]
    fn distance(&self, q: &PreparedQuery, i: u32, decoded: &mut Vec<f32>) -> f32 {
        let d = self.dim;
        let at = i as usize * d;
        match (&self.vectors, q) {
            (Vectors::F32(data), PreparedQuery::F32(q)) => 1.0 - dot(q, &data[at..at + d]),
            (Vectors::F16(data), PreparedQuery::F32(q)) => {
                decoded.resize(d, 0.0);
                data[at..at + d]
                    .reinterpret_cast::<half::f16>()
                    .convert_to_f32_slice(decoded);
                (1.0 - dot(q, decoded)).max(0.0)
            }
            (Vectors::Int8 { data, norms }, PreparedQuery::Int8(q, qn)) => {
                let nb = norms[i as usize];
                if *qn == 0.0 || nb == 0.0 {
                    return 1.0;
                }
                let dot = dot_i8(q, &data[at..at + d]);
                (1.0 - dot as f32 / (qn * nb)).max(0.0)
            }
            // A query prepared for another kind: never closer than anything.
            _ => f32::INFINITY,
        }
    }

    /// The `k` nearest points accepted by `keep`, as `(data id, distance)`, closest first: greedy
    /// descent through the upper layers, then a best-first search of layer 0 with `ef`
    /// candidates. Rejected points are walked through but never returned (as in hnswlib).
    pub(crate) fn search(
        &self,
        q: &PreparedQuery,
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        let n = self.len();
        if n == 0 || k == 0 {
            return Vec::new();
        }
        let ef = ef.max(k);
        SCRATCH.with(|s| {
            let mut guard = s.borrow_mut();
            let s = &mut *guard;
            s.begin(n);
            let mut ep = 0u32;
            let mut ep_d = self.distance(q, ep, &mut s.decoded);
            for layer in self.layers[1..].iter().rev() {
                let mut changed = true;
                while changed {
                    changed = false;
                    for &j in layer.neighbours(ep) {
                        let d = self.distance(q, j, &mut s.decoded);
                        if d < ep_d {
                            ep_d = d;
                            ep = j;
                            changed = true;
                        }
                    }
                }
            }
            self.search_base(s, q, ep, ep_d, ef, keep);
            let mut out: Vec<(u64, f32)> = s
                .results
                .drain()
                .map(|(d, i)| (self.ids[i as usize], d.0))
                .collect();
            out.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            out.truncate(k);
            out
        })
    }

    fn search_base(
        &self,
        s: &mut Scratch,
        q: &PreparedQuery,
        ep: u32,
        ep_d: f32,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) {
        let accepted = |i: u32| keep.is_none_or(|f| f(self.ids[i as usize]));
        let base = &self.layers[0];
        s.visit(ep);
        s.candidates.push(Reverse((Dist(ep_d), ep)));
        if accepted(ep) {
            s.results.push((Dist(ep_d), ep));
        }
        let mut bound = if s.results.len() >= ef {
            ep_d
        } else {
            f32::INFINITY
        };
        while let Some(Reverse((Dist(d), i))) = s.candidates.pop() {
            if d > bound {
                break;
            }
            for &j in base.neighbours(i) {
                if !s.visit(j) {
                    continue;
                }
                let dj = self.distance(q, j, &mut s.decoded);
                if s.results.len() < ef || dj < bound {
                    s.candidates.push(Reverse((Dist(dj), j)));
                    if accepted(j) {
                        s.results.push((Dist(dj), j));
                        if s.results.len() > ef {
                            s.results.pop();
                        }
                        if s.results.len() >= ef {
                            bound = s.results.peek().map_or(f32::INFINITY, |r| r.0 .0);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_graph_is_walked_to_the_far_end() {
        // Five points on a line (1-d "unit" vectors are all +-1, so use 2-d on a quarter circle),
        // linked as a chain on layer 0; point 0 alone on layer 1.
        let angles = [0.0f32, 0.3, 0.6, 0.9, 1.2];
        let mut b = FrozenBuilder::new(FrozenKind::F32, 2, 5);
        for (i, a) in angles.iter().enumerate() {
            let mut l0 = Vec::new();
            if i > 0 {
                l0.push(i as u32 - 1);
            }
            if i < 4 {
                l0.push(i as u32 + 1);
            }
            let links = if i == 0 { vec![l0, vec![]] } else { vec![l0] };
            assert!(b.push_f32(100 + i as u64, &[a.cos(), a.sin()], links));
        }
        assert!(!b.push_i8(1, &[1, 2], vec![vec![]]), "kind mismatch");
        let f = b.finish();
        assert_eq!(f.len(), 5);
        let q = f.prepare(&[1.2f32.cos(), 1.2f32.sin()]);
        let hits = f.search(&q, 2, 2, None);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![104, 103]);
        assert!(hits[0].1.abs() < 1e-6);
        let odd = |id: u64| id % 2 == 1;
        let hits = f.search(&q, 1, 5, Some(&odd));
        assert_eq!(hits[0].0, 103);
        assert!(Frozen::empty(FrozenKind::F32, 2)
            .search(&q, 3, 10, None)
            .is_empty());
    }
}
