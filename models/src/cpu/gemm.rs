//! Single-precision matrix product with the layer's epilogue fused:
//! `C[M, N] = act(A[M, K] x B[K, N] + bias[N] (+ R[M, N]))`.
//!
//! B is a layer's weight, packed once at load into [`PackedB`] panels of
//! [`NR`] columns. A (the activations, row-major NHWC pixels) is read in
//! place: the micro-kernel broadcasts from [`MR`] row pointers, as XNNPACK's
//! NHWC kernels do, so nothing is copied per call. The output is cut into
//! tiles of up to [`M_BLOCK`] rows by [`PANELS_PER_TASK`] panels, one rayon
//! task each; a task's rows of A stay in cache across its panels.

use super::kernels::KernelPath;
use super::map::Exec;
use crate::layers::Activation;

/// Rows of one micro-kernel tile.
pub(crate) const MR: usize = 6;
/// Columns of one micro-kernel tile (two AVX registers).
pub(crate) const NR: usize = 16;
/// Rows of A one task covers (a multiple of [`MR`]).
const M_BLOCK: usize = MR * 8;
/// Column panels one task computes.
const PANELS_PER_TASK: usize = 4;
/// Products of fewer multiply-adds than this run on the calling thread
/// (about 10 us of one core: the heads' small products at batch 1).
const SERIAL_BELOW_MACS: usize = 1 << 18;

/// A `[K, N]` matrix packed into `ceil(N / NR)` panels, each `[K][NR]`
/// (columns past `N` are zero).
#[derive(Debug, Clone)]
pub(crate) struct PackedB {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl PackedB {
    /// Pack the matrix whose element `(k, n)` is `at(k, n)`.
    pub(crate) fn pack(k: usize, n: usize, at: impl Fn(usize, usize) -> f32) -> Self {
        let panels = n.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        for (p, panel) in data.chunks_exact_mut(k * NR).enumerate() {
            for (kk, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    let col = p * NR + j;
                    if col < n {
                        *v = at(kk, col);
                    }
                }
            }
        }
        Self { k, n, data }
    }

    /// Rows (the reduction length).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Columns (output channels).
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// What is applied to each output element after the product.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epilogue<'a> {
    /// Added per column (the folded BatchNorm's shift), length N.
    pub bias: &'a [f32],
    /// Added element-wise before the activation (a residual), `[M, N]`.
    pub residual: Option<&'a [f32]>,
    /// Applied last.
    pub act: Activation,
}

/// The left operand of a product: `count` rows of `data`, `stride` apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub data: &'a [f32],
    pub count: usize,
    pub stride: usize,
}

/// `c = epilogue(a x b)` where `a` has `b.k()` columns and `c` is
/// `[a.count, b.n()]`, contiguous.
pub(crate) fn gemm(
    path: KernelPath,
    exec: Exec,
    a: Rows,
    b: &PackedB,
    c: &mut [f32],
    ep: Epilogue,
) {
    let Rows {
        data: a,
        count: m,
        stride: lda,
    } = a;
    let (k, n) = (b.k(), b.n());
    assert!(lda >= k && (m == 0 || a.len() >= (m - 1) * lda + k));
    assert_eq!(c.len(), m * n);
    assert_eq!(ep.bias.len(), n);
    if let Some(r) = ep.residual {
        assert_eq!(r.len(), m * n);
    }
    let m_blocks = m.div_ceil(M_BLOCK);
    let groups = b.panels().div_ceil(PANELS_PER_TASK);
    let out = SharedOut(c.as_mut_ptr());
    // A product this small costs less than waking another thread for it.
    let exec = if m * n * k < SERIAL_BELOW_MACS {
        Exec::Serial
    } else {
        exec
    };
    exec.range(m_blocks * groups, |task| {
        let (mb, g) = (task / groups, task % groups);
        let rows = mb * M_BLOCK..((mb + 1) * M_BLOCK).min(m);
        let panels = g * PANELS_PER_TASK..((g + 1) * PANELS_PER_TASK).min(b.panels());
        let mut r0 = rows.start;
        while r0 < rows.end {
            #[cfg(target_arch = "x86_64")]
            if path == KernelPath::Avx512 && r0 + 2 * MR <= rows.end {
                // Two strips at once: 12 rows x 32 columns per tile, half
                // the loads of B per multiply-add of the 6-row tile.
                let col = panels.start * NR;
                // SAFETY: as for the 6-row kernel below: rows r0..r0 + 12
                // and the task's columns lie inside `a`, `c` and the
                // residual, tasks write disjoint tiles of `c`, and the path
                // is only chosen when the CPU has AVX-512F.
                unsafe {
                    let store =
                        tile_store(&out, n, ep, r0..r0 + 2 * MR, col..(panels.end * NR).min(n));
                    let a_rows: [*const f32; 2 * MR] =
                        std::array::from_fn(|i| a[(r0 + i) * lda..][..k].as_ptr());
                    let b_panels = (b.panel(panels.start).as_ptr(), panels.len());
                    avx512::tile_row(k, a_rows, b_panels, store);
                }
                r0 += 2 * MR;
                continue;
            }
            let r1 = (r0 + MR).min(rows.end);
            let mut rest = panels.clone();
            // Rows past the end repeat the last one; their sums are dropped.
            let a_rows: [&[f32]; MR] =
                std::array::from_fn(|i| &a[(r0 + i).min(r1 - 1) * lda..][..k]);
            #[cfg(target_arch = "x86_64")]
            if matches!(path, KernelPath::Avx2Fma | KernelPath::Avx512) {
                // AVX-512 takes every tile of the row (masked stores for the
                // last rows and columns); AVX2 the full ones.
                let simd = match path {
                    KernelPath::Avx512 => panels.clone(),
                    _ if r1 - r0 == MR => panels.start..panels.end.min(n / NR).max(panels.start),
                    _ => panels.start..panels.start,
                };
                if !simd.is_empty() {
                    let col = simd.start * NR;
                    let cols = (simd.end * NR).min(n) - col;
                    // SAFETY: rows r0..r1 and columns col..col + cols lie
                    // inside `c` and the residual (asserted shapes), and
                    // tasks write disjoint tiles of `c`, which outlives the
                    // loop.
                    let store = unsafe { tile_store(&out, n, ep, r0..r1, col..col + cols) };
                    let b_panels = (b.panel(simd.start).as_ptr(), simd.len());
                    // SAFETY: as above; each row of `a_rows` holds `k`
                    // floats and each panel `k * NR`; each kernel's
                    // instructions are present: the path is only chosen when
                    // the CPU has them (`KernelPath::is_supported`; AVX-512
                    // implies AVX2 + FMA there).
                    unsafe {
                        let a_ptrs = a_rows.map(|r| r.as_ptr());
                        if path == KernelPath::Avx512 {
                            avx512::tile_row(k, a_ptrs, b_panels, store);
                        } else {
                            avx2::tile_row(k, a_ptrs, b_panels, store);
                        }
                    }
                    rest = simd.end..panels.end;
                }
            }
            for p in rest {
                let cols = p * NR..((p + 1) * NR).min(n);
                let mut acc = [0f32; MR * NR];
                micro_kernel(path, k, a_rows, b.panel(p), &mut acc);
                // SAFETY: tasks write disjoint (rows, cols) tiles of `c`,
                // which outlives the parallel loop.
                unsafe { store_tile(&out, n, r0..r1, cols, &acc, ep) };
            }
            r0 = r1;
        }
    });
}

/// Where a row of full tiles goes and what is applied on the way (the SIMD
/// row kernels' epilogue).
#[cfg(target_arch = "x86_64")]
struct TileStore {
    /// The tile row's first output element and the output's row stride.
    out: (*mut f32, usize),
    /// The first tile's biases (the next tiles' follow).
    bias: *const f32,
    /// The first tile's first residual element (same stride as `out`).
    residual: Option<*const f32>,
    /// The activation as a clamp.
    clamp: (f32, f32),
    /// Rows of the tile row that exist (at most the kernel's rows; the AVX2
    /// kernel takes only full ones).
    rows: usize,
    /// Columns from the first tile's on that exist (the AVX2 kernel takes
    /// only full panels).
    cols: usize,
}

/// Where the tile row `rows` x `cols` of the `[_, n]` output goes, with
/// `ep` applied.
///
/// # Safety
/// `rows` and `cols` must lie inside the output and the residual.
#[cfg(target_arch = "x86_64")]
unsafe fn tile_store(
    out: &SharedOut,
    n: usize,
    ep: Epilogue,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> TileStore {
    let at = rows.start * n + cols.start;
    TileStore {
        out: (out.0.add(at), n),
        bias: ep.bias.as_ptr().add(cols.start),
        residual: ep.residual.map(|r| r.as_ptr().add(at)),
        clamp: ep.act.bounds(),
        rows: rows.len(),
        cols: cols.len(),
    }
}

struct SharedOut(*mut f32);
// SAFETY: only used to write disjoint tiles from rayon tasks.
unsafe impl Sync for SharedOut {}

/// Write the tile `acc` (`MR x NR`) to `rows x cols` of the `[_, n]`
/// output through the epilogue.
///
/// # Safety
/// No other thread may access those elements of the output meanwhile.
#[inline(never)]
unsafe fn store_tile(
    out: &SharedOut,
    n: usize,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    acc: &[f32; MR * NR],
    ep: Epilogue,
) {
    let bias = &ep.bias[cols.clone()];
    for (i, r) in rows.enumerate() {
        let dst = std::slice::from_raw_parts_mut(out.0.add(r * n + cols.start), cols.len());
        let src = &acc[i * NR..i * NR + cols.len()];
        match ep.residual {
            Some(res) => {
                let res = &res[r * n + cols.start..r * n + cols.end];
                for (((d, &s), &b), &x) in dst.iter_mut().zip(src).zip(bias).zip(res) {
                    *d = ep.act.scalar(s + b + x);
                }
            }
            None => {
                for ((d, &s), &b) in dst.iter_mut().zip(src).zip(bias) {
                    *d = ep.act.scalar(s + b);
                }
            }
        }
    }
}

/// `acc = A_rows x B_panel` over `k`: each of `a` is one row of A (`k`
/// values), `b` is `[k][NR]`.
#[inline]
fn micro_kernel(path: KernelPath, k: usize, a: [&[f32]; MR], b: &[f32], acc: &mut [f32; MR * NR]) {
    assert!(a.iter().all(|r| r.len() >= k) && b.len() >= k * NR);
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2Fma | KernelPath::Avx512 => {
            // SAFETY: the network only selects these paths when the CPU has
            // AVX2 and FMA (`KernelPath::is_supported`); the slices hold `k`
            // values of each row and `k` rows of the panel (asserted).
            unsafe { avx2::micro_kernel(k, a.map(|r| r.as_ptr()), b.as_ptr(), acc) }
        }
        _ => portable_micro_kernel(k, a, b, acc),
    }
}

fn portable_micro_kernel(k: usize, a: [&[f32]; MR], b: &[f32], acc: &mut [f32; MR * NR]) {
    let mut c = [[0f32; NR]; MR];
    for (kk, bv) in b.chunks_exact(NR).take(k).enumerate() {
        for i in 0..MR {
            let x = a[i][kk];
            for j in 0..NR {
                c[i][j] += x * bv[j];
            }
        }
    }
    for i in 0..MR {
        acc[i * NR..(i + 1) * NR].copy_from_slice(&c[i]);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{TileStore, MR, NR};

    /// The 6x16 AVX2 + FMA micro-kernel: 12 accumulators, two loads of B
    /// and six broadcasts of A (one per row) per step of `k`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; each row of `a` must hold `k`
    /// floats and `b` `k * NR`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_kernel(
        k: usize,
        a: [*const f32; MR],
        b: *const f32,
        acc: &mut [f32; MR * NR],
    ) {
        for (i, ci) in accumulate(k, a, b).iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(i * NR), ci[0]);
            _mm256_storeu_ps(acc.as_mut_ptr().add(i * NR + 8), ci[1]);
        }
    }

    /// The tile's sums in 12 registers: per step of `k`, two loads of B and
    /// one broadcast of each row of A.
    ///
    /// # Safety
    /// As [`micro_kernel`].
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn accumulate(k: usize, a: [*const f32; MR], b: *const f32) -> [[__m256; 2]; MR] {
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        for kk in 0..k {
            let b0 = _mm256_loadu_ps(b.add(kk * NR));
            let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
            for (i, ci) in c.iter_mut().enumerate() {
                let x = _mm256_broadcast_ss(&*a[i].add(kk));
                ci[0] = _mm256_fmadd_ps(x, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(x, b1, ci[1]);
            }
        }
        c
    }

    /// `MR` rows of A (`rows`) times `panels` consecutive full packed panels
    /// of B, each tile's bias, residual and activation applied in registers
    /// and stored straight to C.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the rows must hold `k` floats,
    /// the panels `k * NR` each, and `st` must address `MR` rows of
    /// `panels * NR` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_row(
        k: usize,
        rows: [*const f32; MR],
        (b, panels): (*const f32, usize),
        st: TileStore,
    ) {
        debug_assert!(st.rows == MR && st.cols == panels * NR);
        let (lo, hi) = (_mm256_set1_ps(st.clamp.0), _mm256_set1_ps(st.clamp.1));
        let (out, ldc) = st.out;
        for p in 0..panels {
            let c = accumulate(k, rows, b.add(p * k * NR));
            let col = p * NR;
            let bias = [
                _mm256_loadu_ps(st.bias.add(col)),
                _mm256_loadu_ps(st.bias.add(col + 8)),
            ];
            for (i, ci) in c.iter().enumerate() {
                for half in 0..2 {
                    let at = i * ldc + col + half * 8;
                    let mut v = _mm256_add_ps(ci[half], bias[half]);
                    if let Some(r) = st.residual {
                        v = _mm256_add_ps(v, _mm256_loadu_ps(r.add(at)));
                    }
                    v = _mm256_min_ps(_mm256_max_ps(v, lo), hi);
                    _mm256_storeu_ps(out.add(at), v);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{TileStore, NR};

    /// A tile of `R` rows by `P` panels (`16 * P` columns) in `R * P`
    /// registers: per step of `k`, one load of each panel's row of B and one
    /// broadcast of each row of A. `R = 12, P = 2` is the main kernel (24 of
    /// the 32 registers accumulate, 24 FMAs per 14 loads); 6 rows take the
    /// last rows of a block, `P = 1` an odd last panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; each row of `a` must hold `k` floats
    /// and each panel `k * NR`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn accumulate<const R: usize, const P: usize>(
        k: usize,
        a: [*const f32; R],
        b: [*const f32; P],
    ) -> [[__m512; P]; R] {
        let mut c = [[_mm512_setzero_ps(); P]; R];
        for kk in 0..k {
            let mut bv = [_mm512_setzero_ps(); P];
            for (v, bj) in bv.iter_mut().zip(b) {
                *v = _mm512_loadu_ps(bj.add(kk * NR));
            }
            for (i, ci) in c.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a[i].add(kk));
                for (cij, &bj) in ci.iter_mut().zip(&bv) {
                    *cij = _mm512_fmadd_ps(x, bj, *cij);
                }
            }
        }
        c
    }

    /// Bias, residual and clamp on a tile of `P` panels starting at column
    /// `col` of the row of tiles, stored straight to C: the first `st.rows`
    /// rows, and of the columns only those before `st.cols` (masked).
    ///
    /// # Safety
    /// As [`tile_row`].
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn store<const R: usize, const P: usize>(
        c: [[__m512; P]; R],
        col: usize,
        st: &TileStore,
    ) {
        let (lo, hi) = (_mm512_set1_ps(st.clamp.0), _mm512_set1_ps(st.clamp.1));
        let (out, ldc) = st.out;
        let mut mask = [0 as __mmask16; P];
        let mut bias = [_mm512_setzero_ps(); P];
        for (j, (m, b)) in mask.iter_mut().zip(&mut bias).enumerate() {
            let left = st.cols.saturating_sub(col + j * NR).min(NR);
            *m = ((1u32 << left) - 1) as __mmask16;
            *b = _mm512_maskz_loadu_ps(*m, st.bias.add(col + j * NR));
        }
        for (i, ci) in c.iter().enumerate().take(st.rows) {
            for (j, (&cij, &bj)) in ci.iter().zip(&bias).enumerate() {
                let at = i * ldc + col + j * NR;
                let mut v = _mm512_add_ps(cij, bj);
                if let Some(r) = st.residual {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[j], r.add(at)));
                }
                v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
                _mm512_mask_storeu_ps(out.add(at), mask[j], v);
            }
        }
    }

    /// `R` rows of A (`rows`: `MR` or `2 * MR`; those past `st.rows` repeat
    /// the last real one) times `panels` consecutive packed panels of B, two
    /// panels (32 columns) per tile, each tile's bias, residual and activation applied
    /// in registers and stored straight to C: rows and columns that do not
    /// exist (`st.rows`, `st.cols`) are computed but not stored.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; the rows must hold `k` floats, the
    /// panels `k * NR` each, and `st` must address `st.rows` rows of
    /// `st.cols` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_row<const R: usize>(
        k: usize,
        rows: [*const f32; R],
        (b, panels): (*const f32, usize),
        st: TileStore,
    ) {
        let panel = |p: usize| b.add(p * k * NR);
        let mut p = 0;
        while p + 2 <= panels {
            let c = accumulate(k, rows, [panel(p), panel(p + 1)]);
            store(c, p * NR, &st);
            p += 2;
        }
        if p < panels {
            let c = accumulate(k, rows, [panel(p)]);
            store(c, p * NR, &st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(data: &[f32], count: usize, stride: usize) -> Rows<'_> {
        Rows {
            data,
            count,
            stride,
        }
    }

    fn reference(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], ep: Epilogue) -> Vec<f32> {
        let mut c = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += a[i * k + kk] as f64 * b[kk * n + j] as f64;
                }
                let r = ep.residual.map_or(0.0, |r| r[i * n + j]);
                c[i * n + j] = ep.act.scalar(s as f32 + ep.bias[j] + r);
            }
        }
        c
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// Every size around the tile edges, each activation, with and without
    /// a residual, on every engine path: within 1e-4 of an f64 product.
    #[test]
    fn gemm_matches_the_definition_on_every_path() {
        for path in KernelPath::available() {
            if path == KernelPath::CandleOps {
                continue;
            }
            for &(m, k, n) in &[
                (1, 1, 1),
                (5, 3, 17),
                (7, 16, 16),
                (49, 33, 40),
                (13, 24, 48),
                (97, 64, 130),
            ] {
                let a = values(m * k, 1);
                let bm = values(k * n, 2);
                let bias = values(n, 3);
                let res = values(m * n, 4);
                let packed = PackedB::pack(k, n, |kk, j| bm[kk * n + j]);
                for act in [Activation::None, Activation::Relu, Activation::Relu6] {
                    for residual in [None, Some(res.as_slice())] {
                        let ep = Epilogue {
                            bias: &bias,
                            residual,
                            act,
                        };
                        let mut c = vec![f32::NAN; m * n];
                        gemm(path, Exec::Parallel, rows(&a, m, k), &packed, &mut c, ep);
                        let want = reference(m, k, n, &a, &bm, ep);
                        for (x, y) in c.iter().zip(&want) {
                            assert!((x - y).abs() < 1e-4, "{path} {m}x{k}x{n}: {x} vs {y}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gemm_reads_rows_with_a_stride() {
        let (m, k, n, lda) = (9, 5, 20, 8);
        let a = values(m * lda, 5);
        let bm = values(k * n, 6);
        let bias = vec![0f32; n];
        let packed = PackedB::pack(k, n, |kk, j| bm[kk * n + j]);
        let dense: Vec<f32> = (0..m)
            .flat_map(|i| a[i * lda..i * lda + k].to_vec())
            .collect();
        let ep = Epilogue {
            bias: &bias,
            residual: None,
            act: Activation::None,
        };
        let mut c = vec![0f32; m * n];
        gemm(
            KernelPath::detect(),
            Exec::Serial,
            rows(&a, m, lda),
            &packed,
            &mut c,
            ep,
        );
        let want = reference(m, k, n, &dense, &bm, ep);
        for (x, y) in c.iter().zip(&want) {
            assert!((x - y).abs() < 1e-4);
        }
    }
}
