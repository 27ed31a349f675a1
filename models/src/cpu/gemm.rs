//! Single-precision matrix product with the layer's epilogue fused:
//! `C[M, N] = act(A[M, K] x B[K, N] + bias[N] (+ R[M, N]))`.
//!
//! B is a layer's weight, packed once at load into [`PackedB`] panels of
//! [`NR`] columns. A (the activations, row-major NHWC pixels) is read in
//! place: the micro-kernel broadcasts from [`MR`] row pointers, as XNNPACK's
//! NHWC kernels do, so nothing is copied per call. A row may be several runs
//! of floats ([`Taps`]: a convolution's taps where they lie in its input, an
//! implicit im2col), each with its own pointer. The output is cut into
//! tiles of up to [`M_BLOCK`] rows by [`PANELS_PER_TASK`] panels, one rayon
//! task each; a task's rows of A stay in cache across its panels.

use super::kernels::KernelPath;
use super::map::{Exec, MapShape};
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

/// The left operand of a convolution read in place (an implicit im2col):
/// output pixel `r`'s row of A is the `kernel * kernel` input channel
/// vectors it sees, taps outermost, read where they lie in the NHWC input
/// `x`. The same rows an im2col matrix would hold, in the same order,
/// without the copy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taps<'a> {
    pub x: &'a [f32],
    /// How a row of A is cut into runs of contiguous floats.
    pub runs: Runs,
    /// The input's shape.
    pub input: MapShape,
    /// The output's shape (its pixels are the rows of A).
    pub output: MapShape,
    pub kernel: usize,
    pub stride: usize,
    /// Leading padding `(top, left)`.
    pub pad: (usize, usize),
    /// At least `input.c` zeros.
    pub zeros: &'a [f32],
}

/// The runs of one row of a convolution's A.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Runs {
    /// One run per tap: its `C_in` channels, or zeros where the tap falls in
    /// the padding.
    Taps,
    /// One run per kernel row: its `kernel` neighbouring pixels, `kernel *
    /// C_in` floats (few channels, as in a stem). The input must already be
    /// padded (`pad` is zero), so every run lies inside it.
    KernelRows,
}

/// Segments per row of A at most: a 3x3 convolution's taps.
pub(crate) const MAX_SEGMENTS: usize = 9;

/// A's left operand in either form.
#[derive(Debug, Clone, Copy)]
enum Lhs<'a> {
    Rows(Rows<'a>),
    Taps(Taps<'a>),
}

impl Lhs<'_> {
    fn count(&self) -> usize {
        match self {
            Lhs::Rows(r) => r.count,
            Lhs::Taps(t) => t.output.pixels(),
        }
    }

    /// Point `strip` at the rows `rows` (`R` rows; those past `rows.end`
    /// repeat the last one). Filled in place: a strip is 9 x 12 pointers,
    /// and returning one by value cost a copy per tile row.
    fn fill<const R: usize>(&self, rows: std::ops::Range<usize>, seg: usize, strip: &mut Strip<R>) {
        debug_assert!(!rows.is_empty() && rows.end <= self.count());
        let row = |i: usize| (rows.start + i).min(rows.end - 1);
        let ptrs = &mut strip.ptrs;
        match *self {
            Lhs::Rows(Rows { data, stride, .. }) => {
                // Bounds checked once, for the strip's last row: the rows
                // before it lie inside too.
                assert!((rows.end - 1) * stride + seg <= data.len());
                for (i, p) in ptrs[0].iter_mut().enumerate() {
                    *p = data.as_ptr().wrapping_add(row(i) * stride);
                }
                strip.segments = 1;
            }
            Lhs::Taps(t) if t.runs == Runs::KernelRows => {
                let c = t.input.c;
                for (i, r) in (0..R).map(row).enumerate() {
                    let (img, oy, ox) = t.output.pixel(r);
                    for (ky, run) in ptrs[..t.kernel].iter_mut().enumerate() {
                        let at = ((img * t.input.h + oy * t.stride + ky) * t.input.w
                            + ox * t.stride)
                            * c;
                        run[i] = t.x[at..at + seg].as_ptr();
                    }
                }
                strip.segments = t.kernel;
            }
            Lhs::Taps(t) => {
                let c = seg;
                for (i, r) in (0..R).map(row).enumerate() {
                    let (img, oy, ox) = t.output.pixel(r);
                    for ky in 0..t.kernel {
                        let iy = (oy * t.stride + ky).checked_sub(t.pad.0);
                        for kx in 0..t.kernel {
                            let ix = (ox * t.stride + kx).checked_sub(t.pad.1);
                            let run = match (iy, ix) {
                                (Some(iy), Some(ix)) if iy < t.input.h && ix < t.input.w => {
                                    let at = ((img * t.input.h + iy) * t.input.w + ix) * c;
                                    &t.x[at..at + c]
                                }
                                _ => &t.zeros[..c],
                            };
                            ptrs[ky * t.kernel + kx][i] = run.as_ptr();
                        }
                    }
                }
                strip.segments = t.kernel * t.kernel;
            }
        }
    }
}

/// One strip of `R` rows of A: row `i` is `segments` runs of equal length,
/// run `s` at `ptrs[s][i]` (each pointer addresses a whole run inside the
/// operand's slices, which outlive the product).
struct Strip<const R: usize> {
    ptrs: [[*const f32; R]; MAX_SEGMENTS],
    segments: usize,
}

impl<const R: usize> Strip<R> {
    /// A strip with no runs yet ([`Lhs::fill`] points it).
    fn empty() -> Self {
        Self {
            ptrs: [[std::ptr::null(); R]; MAX_SEGMENTS],
            segments: 0,
        }
    }
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
    assert!(
        a.stride >= b.k() && (a.count == 0 || a.data.len() >= (a.count - 1) * a.stride + b.k())
    );
    product(path, exec, Lhs::Rows(a), b.k(), b, c, ep);
}

/// `c = epilogue(conv(x) x b)`: [`gemm`] with the convolution's rows of A
/// read in place ([`Taps`]); `b` has `kernel * kernel * C_in` rows in
/// `(ky, kx, c_in)` order and `c` is `[output pixels, b.n()]`.
pub(crate) fn conv_gemm(
    path: KernelPath,
    exec: Exec,
    a: Taps,
    b: &PackedB,
    c: &mut [f32],
    ep: Epilogue,
) {
    assert_eq!(b.k(), a.kernel * a.kernel * a.input.c);
    assert_eq!(a.x.len(), a.input.len());
    assert_eq!(a.output.b, a.input.b);
    let seg = match a.runs {
        Runs::Taps => {
            assert!(a.kernel * a.kernel <= MAX_SEGMENTS, "at most 3x3 taps");
            assert!(a.zeros.len() >= a.input.c);
            a.input.c
        }
        Runs::KernelRows => {
            assert!(a.kernel <= MAX_SEGMENTS && a.pad == (0, 0));
            let reach = |out: usize| (out.max(1) - 1) * a.stride + a.kernel;
            assert!(reach(a.output.h) <= a.input.h && reach(a.output.w) <= a.input.w);
            a.kernel * a.input.c
        }
    };
    product(path, exec, Lhs::Taps(a), seg, b, c, ep);
}

/// The tiled product: A's rows are segments of `seg` floats.
fn product(
    path: KernelPath,
    exec: Exec,
    a: Lhs,
    seg: usize,
    b: &PackedB,
    c: &mut [f32],
    ep: Epilogue,
) {
    let m = a.count();
    let (k, n) = (b.k(), b.n());
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
        let (mut wide, mut strip) = (Strip::<{ 2 * MR }>::empty(), Strip::<MR>::empty());
        let mut r0 = rows.start;
        while r0 < rows.end {
            #[cfg(target_arch = "x86_64")]
            if path == KernelPath::Avx512 && r0 + 2 * MR <= rows.end {
                // Two strips at once: 12 rows x 32 columns per tile, half
                // the loads of B per multiply-add of the 6-row tile.
                let col = panels.start * NR;
                a.fill(r0..r0 + 2 * MR, seg, &mut wide);
                // SAFETY: as for the 6-row kernel below: rows r0..r0 + 12
                // and the task's columns lie inside `c` and the residual,
                // the strip's runs hold `seg` floats each, tasks write
                // disjoint tiles of `c`, and the path is only chosen when
                // the CPU has AVX-512F.
                unsafe {
                    let store =
                        tile_store(&out, n, ep, r0..r0 + 2 * MR, col..(panels.end * NR).min(n));
                    let b_panels = (b.panel(panels.start).as_ptr(), panels.len());
                    avx512::tile_row(seg, &wide, b_panels, store);
                }
                r0 += 2 * MR;
                continue;
            }
            let r1 = (r0 + MR).min(rows.end);
            let mut rest = panels.clone();
            a.fill(r0..r1, seg, &mut strip);
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
                    // SAFETY: as above; each run of the strip holds `seg`
                    // floats and each panel `k * NR`; each kernel's
                    // instructions are present: the path is only chosen when
                    // the CPU has them (`KernelPath::is_supported`; AVX-512
                    // implies AVX2 + FMA there).
                    unsafe {
                        if path == KernelPath::Avx512 {
                            avx512::tile_row(seg, &strip, b_panels, store);
                        } else {
                            avx2::tile_row(seg, &strip, b_panels, store);
                        }
                    }
                    rest = simd.end..panels.end;
                }
            }
            for p in rest {
                let cols = p * NR..((p + 1) * NR).min(n);
                let mut acc = [0f32; MR * NR];
                micro_kernel(path, seg, &strip, b.panel(p), &mut acc);
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

/// `acc = A_strip x B_panel`: each row of the strip is its runs of `seg`
/// floats, `b` is `[runs * seg][NR]`.
#[inline]
fn micro_kernel(path: KernelPath, seg: usize, a: &Strip<MR>, b: &[f32], acc: &mut [f32; MR * NR]) {
    assert!(b.len() >= a.segments * seg * NR);
    match path {
        #[cfg(target_arch = "x86_64")]
        KernelPath::Avx2Fma | KernelPath::Avx512 => {
            // SAFETY: the network only selects these paths when the CPU has
            // AVX2 and FMA (`KernelPath::is_supported`); the strip's runs
            // hold `seg` floats each and the panel all their rows (asserted).
            unsafe { avx2::micro_kernel(seg, a, b.as_ptr(), acc) }
        }
        // SAFETY: as above for the strip and the panel.
        _ => unsafe { portable_micro_kernel(seg, a, b, acc) },
    }
}

/// # Safety
/// Each run of `a` must hold `seg` floats.
unsafe fn portable_micro_kernel(seg: usize, a: &Strip<MR>, b: &[f32], acc: &mut [f32; MR * NR]) {
    let mut c = [[0f32; NR]; MR];
    for (s, rows) in a.ptrs[..a.segments].iter().enumerate() {
        let panel = &b[s * seg * NR..(s + 1) * seg * NR];
        for (kk, bv) in panel.chunks_exact(NR).enumerate() {
            for i in 0..MR {
                let x = *rows[i].add(kk);
                for j in 0..NR {
                    c[i][j] += x * bv[j];
                }
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

    use super::{Strip, TileStore, MR, NR};

    /// The 6x16 AVX2 + FMA micro-kernel: 12 accumulators, two loads of B
    /// and six broadcasts of A (one per row) per step of `k`.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; each run of `a` must hold `seg`
    /// floats and `b` all of their rows.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_kernel(
        seg: usize,
        a: &Strip<MR>,
        b: *const f32,
        acc: &mut [f32; MR * NR],
    ) {
        for (i, ci) in accumulate(seg, a, b).iter().enumerate() {
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
    unsafe fn accumulate(seg: usize, a: &Strip<MR>, b: *const f32) -> [[__m256; 2]; MR] {
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        for (s, rows) in a.ptrs[..a.segments].iter().enumerate() {
            let b = b.add(s * seg * NR);
            // Not unrolled: four steps per trip measured 2 % slower here
            // (the AVX-512 kernel's 24 FMAs per step gain from it).
            for kk in 0..seg {
                step(&mut c, rows, b, kk);
            }
        }
        c
    }

    /// One step of `k`: two loads of B's row `kk`, a broadcast of each
    /// row's element `kk` of A, 12 multiply-adds.
    ///
    /// # Safety
    /// As [`accumulate`], with `kk` inside the run.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn step(c: &mut [[__m256; 2]; MR], rows: &[*const f32; MR], b: *const f32, kk: usize) {
        let b0 = _mm256_loadu_ps(b.add(kk * NR));
        let b1 = _mm256_loadu_ps(b.add(kk * NR + 8));
        for (ci, row) in c.iter_mut().zip(rows) {
            let x = _mm256_broadcast_ss(&*row.add(kk));
            ci[0] = _mm256_fmadd_ps(x, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(x, b1, ci[1]);
        }
    }

    /// The `MR` rows of the strip times `panels` consecutive full packed
    /// panels of B, each tile's bias, residual and activation applied in
    /// registers and stored straight to C.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; the strip's runs must hold `seg`
    /// floats, the panels all of their rows each, and `st` must address
    /// `MR` rows of `panels * NR` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_row(
        seg: usize,
        rows: &Strip<MR>,
        (b, panels): (*const f32, usize),
        st: TileStore,
    ) {
        debug_assert!(st.rows == MR && st.cols == panels * NR);
        let k = rows.segments * seg;
        let (lo, hi) = (_mm256_set1_ps(st.clamp.0), _mm256_set1_ps(st.clamp.1));
        let (out, ldc) = st.out;
        for p in 0..panels {
            let c = accumulate(seg, rows, b.add(p * k * NR));
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

    use super::{Strip, TileStore, NR};

    /// A tile of `R` rows by `P` panels (`16 * P` columns) in `R * P`
    /// registers: per step of `k`, one load of each panel's row of B and one
    /// broadcast of each row of A. `R = 12, P = 2` is the main kernel (24 of
    /// the 32 registers accumulate, 24 FMAs per 14 loads); 6 rows take the
    /// last rows of a block, `P = 1` an odd last panel.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; each run of `a` must hold `seg` floats
    /// and each panel all of their rows.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn accumulate<const R: usize, const P: usize>(
        seg: usize,
        a: &Strip<R>,
        b: [*const f32; P],
    ) -> [[__m512; P]; R] {
        let mut c = [[_mm512_setzero_ps(); P]; R];
        for (s, rows) in a.ptrs[..a.segments].iter().enumerate() {
            let b = b.map(|bj| bj.add(s * seg * NR));
            // Four steps per trip: the loop's own counter and pointer
            // updates would otherwise take issue slots from the FMAs.
            let mut kk = 0;
            while kk + 4 <= seg {
                for u in 0..4 {
                    step(&mut c, rows, b, kk + u);
                }
                kk += 4;
            }
            while kk < seg {
                step(&mut c, rows, b, kk);
                kk += 1;
            }
        }
        c
    }

    /// One step of `k`: a load of each panel's row `kk` of B, a broadcast of
    /// each row's element `kk` of A, `R * P` multiply-adds.
    ///
    /// # Safety
    /// As [`accumulate`], with `kk` inside the run.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn step<const R: usize, const P: usize>(
        c: &mut [[__m512; P]; R],
        rows: &[*const f32; R],
        b: [*const f32; P],
        kk: usize,
    ) {
        let mut bv = [_mm512_setzero_ps(); P];
        for (v, bj) in bv.iter_mut().zip(b) {
            *v = _mm512_loadu_ps(bj.add(kk * NR));
        }
        for (ci, row) in c.iter_mut().zip(rows) {
            let x = _mm512_set1_ps(*row.add(kk));
            for (cij, &bj) in ci.iter_mut().zip(&bv) {
                *cij = _mm512_fmadd_ps(x, bj, *cij);
            }
        }
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

    /// The strip's `R` rows of A (`MR` or `2 * MR`; those past `st.rows`
    /// repeat the last real one) times `panels` consecutive packed panels of B, two
    /// panels (32 columns) per tile, each tile's bias, residual and activation applied
    /// in registers and stored straight to C: rows and columns that do not
    /// exist (`st.rows`, `st.cols`) are computed but not stored.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; the strip's runs must hold `seg`
    /// floats, the panels all of their rows each, and `st` must address `st.rows` rows of
    /// `st.cols` floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_row<const R: usize>(
        seg: usize,
        rows: &Strip<R>,
        (b, panels): (*const f32, usize),
        st: TileStore,
    ) {
        let k = rows.segments * seg;
        let panel = |p: usize| b.add(p * k * NR);
        let mut p = 0;
        while p + 2 <= panels {
            let c = accumulate(seg, rows, [panel(p), panel(p + 1)]);
            store(c, p * NR, &st);
            p += 2;
        }
        if p < panels {
            let c = accumulate(seg, rows, [panel(p)]);
            store(c, p * NR, &st);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values as values;

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
