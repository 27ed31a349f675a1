//! The inverted bottleneck of MobileNetV2 and EfficientNet-Lite (1x1
//! expand, depthwise, 1x1 linear projection, identity skip), fused over
//! bands of rows.
//!
//! Run layer by layer, the expanded map (up to 112 x 112 x 96 floats, 4.8 MB
//! per image) is written by the expand gemm, read and written again by the
//! depthwise convolution, and read by the projection: each pass goes out to
//! the last-level cache or memory. Fused, each thread takes a band of a few
//! output rows at a time: it expands only the input rows the band reads
//! (keeping those the previous band already expanded), runs the depthwise
//! rows on them and projects the result, so the intermediate maps stay in a
//! few hundred KB that the core's L2 holds. For one image, each thread takes
//! a share of the rows: one parallel region per block instead of three.
//!
//! Measured on MobileNetV2 (2 threads): fusing only the blocks whose
//! expanded map exceeds 512 KB, batch 1 ran 3-15 % slower than fusing every
//! block; at batch 16 the two were alike. So every block runs fused.

use std::ops::Range;

use rayon::prelude::*;

use super::conv::Conv;
use super::depthwise::Depthwise;
use super::kernels::KernelPath;
use super::map::{BufferPool, Exec, MapShape};
use crate::layers::Activation;

/// The target size of one band's expanded rows.
const BAND_BYTES: usize = 256 << 10;

/// `project(depthwise(expand(x))) (+ x)`, each 1x1 convolution pointwise.
#[derive(Debug, Clone)]
pub(crate) struct Bottleneck {
    expand: Option<Conv>,
    depthwise: Depthwise,
    project: Conv,
    residual: bool,
}

/// The shapes inside a bottleneck for one input shape.
#[derive(Debug, Clone, Copy)]
struct Shapes {
    input: MapShape,
    expanded: MapShape,
    depthwise: MapShape,
    output: MapShape,
}

impl Bottleneck {
    /// The block from its layers; `expand` and `project` must be pointwise,
    /// and a `residual` block keeps its input's shape.
    pub(crate) fn new(
        expand: Option<Conv>,
        depthwise: Depthwise,
        project: Conv,
        residual: bool,
    ) -> Self {
        assert!(expand.as_ref().is_none_or(Conv::is_pointwise) && project.is_pointwise());
        Self {
            expand,
            depthwise,
            project,
            residual,
        }
    }

    fn shapes(&self, input: MapShape) -> Shapes {
        let expanded = self.expand.as_ref().map_or(input, |e| e.out_shape(input));
        let depthwise = self.depthwise.out_shape(expanded);
        let output = self.project.out_shape(depthwise);
        if self.residual {
            assert_eq!(input, output, "a residual bottleneck keeps its shape");
        }
        Shapes {
            input,
            expanded,
            depthwise,
            output,
        }
    }

    /// The output shape for an input of shape `x`.
    pub(crate) fn out_shape(&self, x: MapShape) -> MapShape {
        self.shapes(x).output
    }

    /// `out = block(x)`, NHWC.
    pub(crate) fn forward(
        &self,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        s: MapShape,
        pool: &BufferPool,
        out: &mut [f32],
    ) {
        assert_eq!(x.len(), s.len());
        assert_eq!(out.len(), self.shapes(s).output.len());
        let one = self.shapes(MapShape { b: 1, ..s });
        let (in_len, out_len) = (one.input.len(), one.output.len());
        let oh = one.output.h;
        // Parallel: each thread a contiguous share of every image's rows.
        let shares = match exec {
            Exec::Parallel => rayon::current_num_threads().clamp(1, oh),
            Exec::Serial => 1,
        };
        let rows_per_share = oh.div_ceil(shares);
        let share_len = rows_per_share * one.output.w * one.output.c;
        let run = |img: usize, share: usize, dst: &mut [f32]| {
            let rows = share * rows_per_share..((share + 1) * rows_per_share).min(oh);
            let image = &x[img * in_len..][..in_len];
            self.forward_rows(path, image, one, rows, pool, dst);
        };
        for (img, dst) in out.chunks_exact_mut(out_len).enumerate() {
            match exec {
                Exec::Parallel => dst
                    .par_chunks_mut(share_len)
                    .enumerate()
                    .for_each(|(share, d)| run(img, share, d)),
                Exec::Serial => run(img, 0, dst),
            }
        }
    }

    /// Layer by layer, each layer's whole map at a time: what the fused
    /// pass must equal.
    #[cfg(test)]
    fn forward_layers(
        &self,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        sh: Shapes,
        pool: &BufferPool,
        out: &mut [f32],
    ) {
        let mut expanded = None;
        if let Some(e) = &self.expand {
            let mut buf = pool.take(sh.expanded.len());
            e.forward_pixels(path, exec, x, None, &mut buf[..sh.expanded.len()]);
            expanded = Some(buf);
        }
        let e = expanded.as_deref().map_or(x, |b| &b[..sh.expanded.len()]);
        let mut dw = pool.take(sh.depthwise.len());
        let dw_out = &mut dw[..sh.depthwise.len()];
        self.depthwise.forward(path, exec, e, sh.expanded, dw_out);
        let residual = self.residual.then_some((x, Activation::None));
        self.project
            .forward_pixels(path, exec, dw_out, residual, out);
        pool.give(dw);
        expanded.into_iter().for_each(|b| pool.give(b));
    }

    /// Output rows `rows` of one image (`one.input.b == 1`) into `out`, on
    /// the calling thread, band by band.
    fn forward_rows(
        &self,
        path: KernelPath,
        x: &[f32],
        one: Shapes,
        rows: Range<usize>,
        pool: &BufferPool,
        out: &mut [f32],
    ) {
        let (e, d) = (one.expanded, one.depthwise);
        let e_row = e.w * e.c;
        let band = self.band_rows(e);
        let in_row = one.input.w * one.input.c;
        let (d_row, o_row) = (d.w * d.c, one.output.w * one.output.c);
        let band_in = self.depthwise.rows_read(band).min(e.h);
        let mut ebuf = pool.take(if self.expand.is_some() {
            band_in * e_row
        } else {
            1
        });
        let mut dbuf = pool.take(band * d_row);
        // Input rows expanded in `ebuf`, from its start (none yet).
        let mut have = 0..0;
        for b0 in rows.clone().step_by(band) {
            let b1 = (b0 + band).min(rows.end);
            let need = self.depthwise.input_rows(e, b0..b1);
            let source = match &self.expand {
                None => (x, 0),
                Some(expand) => {
                    // Keep the rows the last band expanded and this one reads.
                    let keep = need.start.max(have.start)..have.end.max(need.start);
                    if !keep.is_empty() {
                        ebuf.copy_within(
                            (keep.start - have.start) * e_row..(keep.end - have.start) * e_row,
                            0,
                        );
                    }
                    let fresh = keep.end..need.end;
                    expand.forward_pixels(
                        path,
                        Exec::Serial,
                        &x[fresh.start * in_row..fresh.end * in_row],
                        None,
                        &mut ebuf[(fresh.start - need.start) * e_row..(need.len()) * e_row],
                    );
                    have = need.clone();
                    (&ebuf[..need.len() * e_row], need.start)
                }
            };
            let dst = &mut dbuf[..(b1 - b0) * d_row];
            self.depthwise.forward_rows(path, source, e, b0..b1, dst);
            let at = (b0 - rows.start) * o_row..(b1 - rows.start) * o_row;
            let residual = self
                .residual
                .then(|| (&x[b0 * o_row..b1 * o_row], Activation::None));
            self.project
                .forward_pixels(path, Exec::Serial, dst, residual, &mut out[at]);
        }
        pool.give(ebuf);
        pool.give(dbuf);
    }

    /// Output rows per band: as many as keep the band's expanded input rows
    /// near [`BAND_BYTES`], at least one.
    fn band_rows(&self, e: MapShape) -> usize {
        let row_bytes = e.w * e.c * std::mem::size_of::<f32>();
        let mut band = 1;
        while band < e.h && self.depthwise.rows_read(band + 1) * row_bytes <= BAND_BYTES {
            band += 1;
        }
        band
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Padding;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 37 + seed * 11) % 101) as f32 - 50.0) / 100.0)
            .collect()
    }

    fn pointwise(c_in: usize, c_out: usize, act: Activation, seed: usize) -> Conv {
        Conv::new(
            &values(c_out * c_in, seed),
            (c_in, 1, 1),
            Padding::Symmetric(0),
            values(c_out, seed + 1),
            act,
        )
    }

    fn block(c_in: usize, ce: usize, c_out: usize, stride: usize, expand: bool) -> Bottleneck {
        let dw = Depthwise::new(
            &values(ce * 9, 3),
            values(ce, 4),
            3,
            stride,
            Padding::Symmetric(1),
            Activation::Relu6,
        );
        Bottleneck::new(
            expand.then(|| pointwise(c_in, ce, Activation::Relu6, 1)),
            dw,
            pointwise(ce, c_out, Activation::None, 5),
            stride == 1 && c_in == c_out,
        )
    }

    /// Fused (band by band, serial and split over threads) and layer by
    /// layer give the same map, on every engine path, for blocks with and
    /// without expansion and residual, both strides, odd sizes.
    #[test]
    fn fused_bands_match_the_layers_one_by_one() {
        let pool = BufferPool::default();
        for (h, w, c_in, ce, c_out, stride, expand) in [
            (57, 31, 16, 96, 16, 1, true),
            (64, 40, 24, 144, 32, 2, true),
            (90, 60, 32, 32, 16, 1, false),
            (33, 71, 8, 64, 8, 1, true),
            (7, 7, 16, 96, 16, 1, true),
            (3, 5, 8, 48, 16, 2, true),
        ] {
            let b = block(c_in, ce, c_out, stride, expand);
            let s = MapShape {
                b: 2,
                h,
                w,
                c: c_in,
            };
            let x = values(s.len(), 7);
            let o = b.out_shape(s);
            for path in KernelPath::available() {
                if path == KernelPath::CandleOps {
                    continue;
                }
                let mut want = vec![f32::NAN; o.len()];
                b.forward_layers(path, Exec::Serial, &x, b.shapes(s), &pool, &mut want);
                for exec in [Exec::Serial, Exec::Parallel] {
                    let mut got = vec![f32::NAN; o.len()];
                    b.forward(path, exec, &x, s, &pool, &mut got);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "{path} {exec:?} {h}x{w}x{ce} s{stride}: {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn a_band_of_expanded_rows_stays_within_the_target() {
        let b = block(16, 96, 24, 2, true);
        let e = MapShape {
            b: 1,
            h: 112,
            w: 112,
            c: 96,
        };
        let band = b.band_rows(e);
        let row_bytes = e.w * e.c * 4;
        assert!(b.depthwise.rows_read(band) * row_bytes <= BAND_BYTES);
        assert!(b.depthwise.rows_read(band + 1) * row_bytes > BAND_BYTES);
    }
}
