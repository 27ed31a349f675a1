//! Where a graph keeps its points: append-only buckets of flat arrays that inserting threads
//! fill while searching threads read, and the three vector kinds with their distances.
//!
//! Bucket `b` holds `BASE << b` points, so a graph grows without ever moving a point (readers
//! keep plain references) and wastes at most the unused tail of its last bucket, which is an
//! anonymous mapping and so costs no resident memory until it is written.
//!
//! Per point (128-d `f32`, `m` = 16): the vector (512 bytes), the layer-0 list (count + `2m`
//! `u32`, 132 bytes), the data id (8), the level (1) and an auxiliary `f32` (4; the integer norm
//! of an `i8` vector). Upper-layer lists live in a map beside the buckets (about one point in
//! `m` has any).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::quantize_i8;
use crate::distance::{dot, dot_i8, norm_i8};
use crate::schema::VectorStorage;

/// The bits of a point's level byte that hold its level (levels go up to 15).
const LEVEL_BITS: u8 = 0x3f;
/// Flag: the point's item is gone. It stays linked (searches walk through it) until a
/// reclaim unlinks it; inserts no longer choose it as a neighbour.
pub(crate) const DEAD: u8 = 0x80;
/// Flag: the point is unlinked and its slot waits on the free list for a new point.
pub(crate) const FREE: u8 = 0x40;

/// Points in bucket 0; bucket `b` holds `BASE << b`.
const BASE: usize = 1024;
/// Buckets: enough for `BASE << 32` points.
const BUCKETS: usize = 32;

/// Bucket and offset of point `i`.
#[inline]
fn locate(i: usize) -> (usize, usize) {
    let q = i / BASE + 1;
    let b = (usize::BITS - 1 - q.leading_zeros()) as usize;
    (b, i - BASE * ((1 << b) - 1))
}

/// A storage kind: how a unit `f32` vector is stored and how distances (`1 - cosine`, lower is
/// closer) are computed on the stored form.
pub(crate) trait Kind: Send + Sync + 'static {
    /// One stored component.
    type Elem: Copy
        + Default
        + Send
        + Sync
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static;
    /// A query prepared for this kind.
    type Query: Send;
    /// The schema's name for this kind.
    const STORAGE: VectorStorage;
    /// Whether distances are exact cosines of the `f32` vectors.
    const EXACT: bool;
    /// Whether distances read the auxiliary value (kinds without one never load it: it lives
    /// in another array, and loading it would cost a cache miss per distance).
    const USES_AUX: bool;
    /// Writes the stored form of `v` into `out`; returns the point's auxiliary value.
    fn encode(v: &[f32], out: &mut [Self::Elem]) -> f32;
    /// Prepares a unit query.
    fn prepare(q: &[f32]) -> Self::Query;
    /// Distance between two stored points (the neighbour heuristic while inserting).
    fn between(a: &[Self::Elem], aux_a: f32, b: &[Self::Elem], aux_b: f32) -> f32;
    /// Distance from a prepared query to a stored point.
    fn distance(q: &Self::Query, v: &[Self::Elem], aux: f32) -> f32;
    /// Component bytes in little-endian order (dumps).
    fn write_le(v: &[Self::Elem], out: &mut Vec<u8>);
    /// Turns components whose bytes were copied from a dump (little-endian) into native ones:
    /// nothing to do on a little-endian CPU.
    fn le_to_native(v: &mut [Self::Elem]);
    /// Bytes per component.
    const BYTES: usize;
}

/// Unit `f32` vectors; distance `1 - dot`.
pub(crate) struct F32;
/// Unit vectors as `f16` bits; distance `1 - dot`, clamped at 0.
pub(crate) struct F16;
/// Per-vector scaled `i8` with the integer norm as auxiliary value; distance `1 - cosine`.
pub(crate) struct Int8;

impl Kind for F32 {
    type Elem = f32;
    type Query = Vec<f32>;
    const STORAGE: VectorStorage = VectorStorage::F32;
    const EXACT: bool = true;
    const USES_AUX: bool = false;
    const BYTES: usize = 4;

    fn encode(v: &[f32], out: &mut [f32]) -> f32 {
        out.copy_from_slice(v);
        0.0
    }

    fn prepare(q: &[f32]) -> Vec<f32> {
        q.to_vec()
    }

    #[inline]
    fn between(a: &[f32], _: f32, b: &[f32], _: f32) -> f32 {
        1.0 - dot(a, b)
    }

    #[inline]
    fn distance(q: &Vec<f32>, v: &[f32], _aux: f32) -> f32 {
        1.0 - dot(q, v)
    }

    fn write_le(v: &[f32], out: &mut Vec<u8>) {
        out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }

    fn le_to_native(v: &mut [f32]) {
        if cfg!(target_endian = "big") {
            v.iter_mut()
                .for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
        }
    }
}

impl Kind for F16 {
    type Elem = u16;
    type Query = Vec<f32>;
    const STORAGE: VectorStorage = VectorStorage::F16;
    const EXACT: bool = false;
    const USES_AUX: bool = false;
    const BYTES: usize = 2;

    fn encode(v: &[f32], out: &mut [u16]) -> f32 {
        for (o, x) in out.iter_mut().zip(v) {
            *o = half::f16::from_f32(*x).to_bits();
        }
        0.0
    }

    fn prepare(q: &[f32]) -> Vec<f32> {
        q.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
    }

    fn between(a: &[u16], _: f32, b: &[u16], _: f32) -> f32 {
        let (mut x, mut y) = ([0f32; 64], [0f32; 64]);
        let mut sum = 0f32;
        for (ca, cb) in a.chunks(64).zip(b.chunks(64)) {
            let (x, y) = (&mut x[..ca.len()], &mut y[..cb.len()]);
            ca.reinterpret_cast::<half::f16>().convert_to_f32_slice(x);
            cb.reinterpret_cast::<half::f16>().convert_to_f32_slice(y);
            sum += dot(x, y);
        }
        (1.0 - sum).max(0.0)
    }

    #[inline]
    fn distance(q: &Vec<f32>, v: &[u16], _aux: f32) -> f32 {
        // Decoded in blocks on the stack: no allocation per distance.
        let mut sum = 0f32;
        let mut block = [0f32; 64];
        for (qs, vs) in q.chunks(64).zip(v.chunks(64)) {
            let b = &mut block[..vs.len()];
            vs.reinterpret_cast::<half::f16>().convert_to_f32_slice(b);
            sum += dot(qs, b);
        }
        (1.0 - sum).max(0.0)
    }

    fn write_le(v: &[u16], out: &mut Vec<u8>) {
        out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }

    fn le_to_native(v: &mut [u16]) {
        if cfg!(target_endian = "big") {
            v.iter_mut().for_each(|x| *x = u16::from_le(*x));
        }
    }
}

impl Kind for Int8 {
    type Elem = i8;
    type Query = (Vec<i8>, f32);
    const STORAGE: VectorStorage = VectorStorage::Int8;
    const EXACT: bool = false;
    const USES_AUX: bool = true;
    const BYTES: usize = 1;

    fn encode(v: &[f32], out: &mut [i8]) -> f32 {
        out.copy_from_slice(&quantize_i8(v));
        norm_i8(out)
    }

    fn prepare(q: &[f32]) -> (Vec<i8>, f32) {
        let q = quantize_i8(q);
        let n = norm_i8(&q);
        (q, n)
    }

    fn between(a: &[i8], aux_a: f32, b: &[i8], aux_b: f32) -> f32 {
        if aux_a == 0.0 || aux_b == 0.0 {
            return 1.0;
        }
        (1.0 - dot_i8(a, b) as f32 / (aux_a * aux_b)).max(0.0)
    }

    #[inline]
    fn distance(q: &(Vec<i8>, f32), v: &[i8], aux: f32) -> f32 {
        if q.1 == 0.0 || aux == 0.0 {
            return 1.0;
        }
        (1.0 - dot_i8(&q.0, v) as f32 / (q.1 * aux)).max(0.0)
    }

    fn write_le(v: &[i8], out: &mut Vec<u8>) {
        out.extend(v.iter().map(|x| *x as u8));
    }

    fn le_to_native(_: &mut [i8]) {}
}

/// Smallest bucket mapped with huge pages: its arrays' partly filled 2 MB tails (at most
/// 10 MB) stay under a sixth of it.
const HUGE_PAGE_MIN_BUCKET_BYTES: usize = 64 << 20;

/// One bucket's arrays, in an anonymous memory mapping: its pages are zero (a valid value for
/// every array) and cost no memory until a point is written into them, so the unused tail of
/// the last bucket stays free whatever the allocator's thresholds.
struct Bucket<E> {
    _map: memmap2::MmapMut,
    /// Start of the mapping, taken once from `&mut` (all access goes through it).
    base: *mut u8,
    points: usize,
    dim: usize,
    m0: usize,
    /// Byte offsets of the ids (`u64`), aux (`u32` bits), layer-0 lists (`u32`), vectors (`E`)
    /// and levels (`u8`).
    offsets: [usize; 5],
    _elem: std::marker::PhantomData<E>,
}

impl<E: Copy + Default> Bucket<E> {
    fn new(points: usize, dim: usize, m0: usize) -> Self {
        let sizes = [
            8 * points,
            4 * points,
            4 * points * (m0 + 1),
            std::mem::size_of::<E>() * points * dim,
            points,
        ];
        let mut offsets = [0usize; 5];
        let mut at = 0usize;
        for (o, size) in offsets.iter_mut().zip(sizes) {
            *o = at;
            at = (at + size).next_multiple_of(64);
        }
        let mut map = memmap2::MmapMut::map_anon(at.max(1))
            .unwrap_or_else(|e| panic!("cannot map {at} bytes for a graph bucket: {e}"));
        // Huge pages where the kernel offers them on request: a million-point graph is
        // gigabytes touched at random, and 4 KB pages would cost a fault per page on load and
        // a TLB miss per hop in a search. Each of a bucket's five arrays fills from its start,
        // so a huge page holds up to 2 MB past each array's last point: only buckets large
        // enough that this tail is a small share take them. Refusals keep 4 KB pages.
        #[cfg(target_os = "linux")]
        if at >= HUGE_PAGE_MIN_BUCKET_BYTES {
            let _ = map.advise(memmap2::Advice::HugePage);
        }
        let base = map.as_mut_ptr();
        Bucket {
            _map: map,
            base,
            points,
            dim,
            m0,
            offsets,
            _elem: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// `T` must be valid for all-zero bytes and the array at `offset` must hold `len` of them.
    unsafe fn array<T>(&self, offset: usize, len: usize) -> &[T] {
        // SAFETY: in bounds of the mapping, aligned (page-aligned base, 64-byte offsets), and
        // zeroed memory is a valid `T` (see the caller's contract).
        unsafe { std::slice::from_raw_parts(self.base.add(offset) as *const T, len) }
    }

    fn ids(&self) -> &[AtomicU64] {
        // SAFETY: the ids array holds `points` atomics.
        unsafe { self.array(self.offsets[0], self.points) }
    }

    fn aux(&self) -> &[AtomicU32] {
        // SAFETY: the aux array holds `points` atomics.
        unsafe { self.array(self.offsets[1], self.points) }
    }

    fn links0(&self) -> &[AtomicU32] {
        // SAFETY: the lists hold `points * (m0 + 1)` atomics.
        unsafe { self.array(self.offsets[2], self.points * (self.m0 + 1)) }
    }

    fn levels(&self) -> &[AtomicU8] {
        // SAFETY: the levels array holds `points` atomics.
        unsafe { self.array(self.offsets[4], self.points) }
    }

    /// Pointer to the vector of point `at`.
    fn vector_ptr(&self, at: usize) -> *mut E {
        debug_assert!(at < self.points);
        // SAFETY: `at < points`, so the slot is inside the vectors array.
        unsafe { (self.base.add(self.offsets[3]) as *mut E).add(at * self.dim) }
    }
}

/// The points of one graph, in buckets that never move.
pub(crate) struct Points<K: Kind> {
    dim: usize,
    m0: usize,
    buckets: [OnceLock<Bucket<K::Elem>>; BUCKETS],
}

// SAFETY: the buckets' raw pointers address mappings they own. A point's vector is written
// only while no other thread can reach the point: by the thread that reserved a new slot,
// before its index is published (release stores into link lists or the entry point, read with
// acquire loads), or by the insert that reuses a freed slot, which no list or entry point
// holds any more and which no operation that could have read it is still running (the
// graph's grace period, see `hnsw::Grace`). Otherwise it is only read.
unsafe impl<K: Kind> Sync for Points<K> {}
// SAFETY: as above; the buckets own their data.
unsafe impl<K: Kind> Send for Points<K> {}

impl<K: Kind> Points<K> {
    pub(crate) fn new(dim: usize, m0: usize) -> Self {
        Points {
            dim,
            m0,
            buckets: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    #[inline]
    fn bucket(&self, i: u32) -> (&Bucket<K::Elem>, usize) {
        let (b, at) = locate(i as usize);
        let bucket = self.buckets[b]
            .get()
            .expect("point index past the reserved points");
        (bucket, at)
    }

    /// Makes room for point `i` (allocating its bucket if needed).
    pub(crate) fn reserve(&self, i: u32) {
        let (b, _) = locate(i as usize);
        self.buckets[b].get_or_init(|| Bucket::new(BASE << b, self.dim, self.m0));
    }

    /// Stores point `i`'s vector, data id and level (clearing its flags).
    ///
    /// # Safety
    /// No other thread may read or write the slot until this returns and the index is
    /// published with a release store: `i` was reserved by the calling thread and not yet
    /// published, or it is a freed slot that the calling thread took off the free list.
    pub(crate) unsafe fn write(&self, i: u32, id: u64, level: u8, v: &[f32]) {
        let (b, at) = self.bucket(i);
        // SAFETY: by the contract above this thread is the slot's only accessor.
        let slot = unsafe { std::slice::from_raw_parts_mut(b.vector_ptr(at), self.dim) };
        let aux = K::encode(v, slot);
        b.ids()[at].store(id, Ordering::Relaxed);
        b.levels()[at].store(level, Ordering::Relaxed);
        b.aux()[at].store(aux.to_bits(), Ordering::Relaxed);
    }

    /// Stores an already encoded point (loading a legacy graph); same contract as
    /// [`Points::write`].
    ///
    /// # Safety
    /// See [`Points::write`].
    pub(crate) unsafe fn write_encoded(&self, i: u32, id: u64, level: u8, v: &[K::Elem], aux: f32) {
        let (b, at) = self.bucket(i);
        // SAFETY: by the contract above this thread is the slot's only accessor.
        let slot = unsafe { std::slice::from_raw_parts_mut(b.vector_ptr(at), self.dim) };
        slot.copy_from_slice(v);
        self.write_meta(i, id, level, aux);
    }

    /// Stores point `i`'s data id, level and auxiliary value (its vector is in place).
    pub(crate) fn write_meta(&self, i: u32, id: u64, level: u8, aux: f32) {
        let (b, at) = self.bucket(i);
        b.ids()[at].store(id, Ordering::Relaxed);
        b.levels()[at].store(level, Ordering::Relaxed);
        b.aux()[at].store(aux.to_bits(), Ordering::Relaxed);
    }

    /// Hands `fill` the vector storage of points `0..n` as bytes, one bucket's run of points
    /// at a time, in index order (loading a dump: the file's bytes go straight into place, with
    /// no staging buffer). The bytes are little-endian components, as a dump holds them.
    pub(crate) fn fill_vectors<E>(
        &mut self,
        n: usize,
        mut fill: impl FnMut(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut start = 0usize;
        while start < n {
            self.reserve(start as u32);
            let (b, at) = locate(start);
            debug_assert_eq!(at, 0);
            let count = (BASE << b).min(n - start);
            let bucket = self.buckets[b].get().expect("reserved above");
            let len = count * self.dim;
            let ptr = bucket.vector_ptr(0);
            // SAFETY: `&mut self` makes this the only access to the graph; the run is inside
            // the bucket's vector array, and any bytes are a valid `u8`.
            let bytes = unsafe {
                std::slice::from_raw_parts_mut(ptr as *mut u8, len * std::mem::size_of::<K::Elem>())
            };
            fill(bytes)?;
            // SAFETY: as above; every bit pattern is a valid component of the three kinds
            // (`f32`, `u16`, `i8`), so the bytes just read are valid elements.
            let elems = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
            K::le_to_native(elems);
            start += count;
        }
        Ok(())
    }

    /// Point `i`'s stored vector and auxiliary value. `i` must be published.
    #[inline]
    pub(crate) fn vector(&self, i: u32) -> (&[K::Elem], f32) {
        let (b, at) = self.bucket(i);
        // SAFETY: a published point's vector is no longer written (see `write`).
        let v = unsafe { std::slice::from_raw_parts(b.vector_ptr(at) as *const K::Elem, self.dim) };
        let aux = if K::USES_AUX {
            f32::from_bits(b.aux()[at].load(Ordering::Relaxed))
        } else {
            0.0
        };
        (v, aux)
    }

    /// Asks the CPU to start loading cache lines `lines` (64 bytes each, counted from the
    /// start) of point `i`'s vector; lines past its end are skipped.
    #[inline]
    pub(crate) fn prefetch(&self, i: u32, lines: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            let (b, at) = self.bucket(i);
            let p = b.vector_ptr(at) as *const i8;
            let end = (self.dim * K::BYTES).min(lines.end * 64);
            let mut off = lines.start * 64;
            while off < end {
                // SAFETY: a prefetch of any address is harmless; this one is inside the slot.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(p.add(off), std::arch::x86_64::_MM_HINT_T0)
                };
                off += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (i, lines);
    }

    /// Asks the CPU to start loading point `i`'s layer-0 list.
    #[inline]
    pub(crate) fn prefetch_links0(&self, i: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let list = self.links0(i);
            let p = list.as_ptr() as *const i8;
            let mut off = 0;
            while off < list.len() * 4 {
                // SAFETY: a prefetch of any address is harmless; this one is inside the list.
                unsafe {
                    std::arch::x86_64::_mm_prefetch(p.add(off), std::arch::x86_64::_MM_HINT_T0)
                };
                off += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
    }

    /// Distance from a prepared query to point `i`.
    #[inline]
    pub(crate) fn distance(&self, q: &K::Query, i: u32) -> f32 {
        let (v, aux) = self.vector(i);
        K::distance(q, v, aux)
    }

    pub(crate) fn id(&self, i: u32) -> u64 {
        let (b, at) = self.bucket(i);
        b.ids()[at].load(Ordering::Relaxed)
    }

    pub(crate) fn level(&self, i: u32) -> u8 {
        let (b, at) = self.bucket(i);
        b.levels()[at].load(Ordering::Relaxed) & LEVEL_BITS
    }

    /// Point `i`'s flags ([`DEAD`], [`FREE`]).
    #[inline]
    pub(crate) fn flags(&self, i: u32) -> u8 {
        let (b, at) = self.bucket(i);
        b.levels()[at].load(Ordering::Acquire) & !LEVEL_BITS
    }

    /// Sets `flags` on point `i` (keeping its level unless `level` is given).
    pub(crate) fn set_flags(&self, i: u32, flags: u8, level: Option<u8>) {
        let (b, at) = self.bucket(i);
        let slot = &b.levels()[at];
        match level {
            Some(l) => slot.store((l & LEVEL_BITS) | flags, Ordering::Release),
            None => {
                slot.fetch_or(flags & !LEVEL_BITS, Ordering::AcqRel);
            }
        }
    }

    /// Point `i`'s layer-0 list: the count, then `m0` slots.
    #[inline]
    pub(crate) fn links0(&self, i: u32) -> &[AtomicU32] {
        let (b, at) = self.bucket(i);
        let w = self.m0 + 1;
        &b.links0()[at * w..(at + 1) * w]
    }

    /// Components per vector.
    pub(crate) fn dim(&self) -> usize {
        self.dim
    }

    /// Distance between two stored points.
    #[inline]
    pub(crate) fn between(&self, i: u32, j: u32) -> f32 {
        let (a, aa) = self.vector(i);
        let (b, ab) = self.vector(j);
        K::between(a, aa, b, ab)
    }

    /// Bytes each written point occupies in the buckets (the unwritten tail of the last
    /// bucket is never touched, so it costs address space, not memory).
    pub(crate) fn bytes_per_point(&self) -> usize {
        self.dim * K::BYTES + (self.m0 + 1) * 4 + 8 + 1 + 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_indices() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(BASE - 1), (0, BASE - 1));
        assert_eq!(locate(BASE), (1, 0));
        assert_eq!(locate(3 * BASE - 1), (1, 2 * BASE - 1));
        assert_eq!(locate(3 * BASE), (2, 0));
        let mut expected = (0usize, 0usize);
        for i in 0..20 * BASE {
            assert_eq!(locate(i), expected, "index {i}");
            expected.1 += 1;
            if expected.1 == BASE << expected.0 {
                expected = (expected.0 + 1, 0);
            }
        }
    }

    #[test]
    fn a_written_point_reads_back_in_every_kind() {
        let v = [0.6f32, 0.8, 0.0];
        let p = Points::<F32>::new(3, 4);
        p.reserve(5000);
        // SAFETY: single-threaded test; the point is written before it is read.
        unsafe { p.write(5000, 77, 2, &v) };
        assert_eq!(p.vector(5000).0, &v);
        assert_eq!((p.id(5000), p.level(5000)), (77, 2));
        assert!(p.distance(&F32::prepare(&v), 5000).abs() < 1e-6);

        let p = Points::<F16>::new(3, 4);
        p.reserve(0);
        // SAFETY: as above.
        unsafe { p.write(0, 1, 0, &v) };
        assert!(p.distance(&F16::prepare(&v), 0) < 1e-3);

        let p = Points::<Int8>::new(3, 4);
        p.reserve(0);
        // SAFETY: as above.
        unsafe { p.write(0, 1, 0, &v) };
        assert!(p.distance(&Int8::prepare(&v), 0) < 1e-3);
        let back = [-0.6f32, -0.8, 0.0];
        assert!((p.distance(&Int8::prepare(&back), 0) - 2.0).abs() < 1e-3);
    }
}
