//! The heads the CPU engine runs: one dot-product head, or the two of a
//! fine-grid ASEN v2 (`head::asen_v2`, "fine grid").
//!
//! A fine-grid map holds, per cell of the fine grid, the last layer's
//! channels (repeated over each 2x2 block), then the fine channels. The
//! coarse head reads the first of those on the last layer's own grid (one
//! cell of each block, as `split_fine_map` takes them), the fine head the
//! fine channels on every cell; the embedding is the normalised sum of their
//! raw outputs and the attention the fine head's.

use super::head::DotProductEngine;
use super::kernels::KernelPath;
use super::map::{nchw_to_nhwc, Exec, MapShape};

/// A head compiled for the CPU engine.
#[derive(Debug)]
pub(crate) enum HeadEngine {
    /// One dot-product head on the whole map.
    Single(Box<DotProductEngine>),
    /// A fine-grid ASEN v2: `coarse` on the last layer's channels and grid,
    /// `fine` on the last `fine_channels` on the fine grid.
    TwoGrid {
        coarse: Box<DotProductEngine>,
        fine: Box<DotProductEngine>,
        fine_channels: usize,
    },
}

impl HeadEngine {
    /// Output dimension.
    pub(crate) fn dim(&self) -> usize {
        match self {
            HeadEngine::Single(e) => e.dim(),
            HeadEngine::TwoGrid { fine, .. } => fine.dim(),
        }
    }

    /// Checks that maps of `cells` cells (`h * w`) fit the head: a head
    /// with a position bias was trained on one grid.
    pub(crate) fn check_cells(&self, cells: usize) -> crate::error::Result<()> {
        let shown = match self {
            HeadEngine::Single(e) => e,
            HeadEngine::TwoGrid { fine, .. } => fine,
        };
        match shown.position_cells() {
            Some(expected) => crate::head::check_position_cells(expected, cells),
            None => Ok(()),
        }
    }

    /// The maps `s` as pixel rows `[B * h * w, C]`, for the attributes
    /// `attrs`: L2-normalised embeddings `[B, n, D]` and attention `[B, n, h * w]`.
    pub(crate) fn forward_rows(
        &self,
        path: KernelPath,
        rows: &[f32],
        s: MapShape,
        attrs: &[usize],
    ) -> (Vec<f32>, Vec<f32>) {
        match self {
            HeadEngine::Single(e) => e.forward_rows(path, rows, (s.b, s.h * s.w), attrs),
            HeadEngine::TwoGrid {
                coarse,
                fine,
                fine_channels,
            } => {
                let (coarse_rows, coarse_shape) = coarse_cells(rows, s, s.c - fine_channels);
                let fine_rows = fine_channels_of(rows, s.c, *fine_channels);
                let cells = (coarse_shape.b, coarse_shape.h * coarse_shape.w);
                let (mut sum, _) = coarse.forward_rows_raw(path, &coarse_rows, cells, attrs);
                let (f, attention) =
                    fine.forward_rows_raw(path, &fine_rows, (s.b, s.h * s.w), attrs);
                sum.iter_mut().zip(&f).for_each(|(a, b)| *a += b);
                super::head::l2_normalise_rows(&mut sum, self.dim());
                (sum, attention)
            }
        }
    }

    /// [`Self::forward_rows`] of maps in NCHW, `x` `[B, C, h, w]` flattened.
    pub(crate) fn forward(
        &self,
        path: KernelPath,
        x: &[f32],
        s: MapShape,
        attrs: &[usize],
    ) -> (Vec<f32>, Vec<f32>) {
        assert_eq!(x.len(), s.len());
        let mut rows = vec![0f32; x.len()];
        let as_rows = MapShape {
            h: 1,
            w: s.h * s.w,
            ..s
        };
        super::map::on_pool(|| nchw_to_nhwc(Exec::Parallel, x, as_rows, &mut rows));
        self.forward_rows(path, &rows, s, attrs)
    }
}

/// The first `channels` of every other row and column of pixel rows `s`:
/// the last layer's map on its own grid.
fn coarse_cells(rows: &[f32], s: MapShape, channels: usize) -> (Vec<f32>, MapShape) {
    let (h, w) = (s.h.div_ceil(2), s.w.div_ceil(2));
    let mut out = Vec::with_capacity(s.b * h * w * channels);
    for image in rows.chunks_exact(s.h * s.w * s.c) {
        for y in (0..s.h).step_by(2) {
            for x in (0..s.w).step_by(2) {
                let at = (y * s.w + x) * s.c;
                out.extend_from_slice(&image[at..at + channels]);
            }
        }
    }
    (
        out,
        MapShape {
            b: s.b,
            h,
            w,
            c: channels,
        },
    )
}

/// The last `fine` of the `c` channels of every pixel row.
fn fine_channels_of(rows: &[f32], c: usize, fine: usize) -> Vec<f32> {
    rows.chunks_exact(c)
        .flat_map(|px| px[c - fine..].iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_cells_take_one_cell_of_each_block() {
        // 1 image, 3x3 pixels, 2 channels: value = 10 * pixel + channel.
        let s = MapShape {
            b: 1,
            h: 3,
            w: 3,
            c: 2,
        };
        let rows: Vec<f32> = (0..9)
            .flat_map(|p| [10.0 * p as f32, 10.0 * p as f32 + 1.0])
            .collect();
        let (out, shape) = coarse_cells(&rows, s, 1);
        assert_eq!((shape.h, shape.w, shape.c), (2, 2, 1));
        assert_eq!(out, vec![0.0, 20.0, 60.0, 80.0]);
        assert_eq!(fine_channels_of(&rows, 2, 1)[..3], [1.0, 11.0, 21.0]);
    }
}
