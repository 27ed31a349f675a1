//! A backbone as a list of engine layers, run on NHWC buffers from a pool.

use super::bottleneck::Bottleneck;
use super::conv::{Conv, MaxPool};
use super::kernels::KernelPath;
use rayon::prelude::*;

use super::map::{nchw_to_nhwc, nhwc_to_nchw, on_pool, on_pool_awake, BufferPool, Exec, MapShape};
use crate::layers::Activation;

/// One step of a network.
#[derive(Debug, Clone)]
pub(crate) enum Layer {
    /// A dense convolution.
    Conv(Conv),
    /// Max pooling.
    MaxPool(MaxPool),
    /// An inverted bottleneck, fused over bands of rows where it pays.
    Bottleneck(Bottleneck),
    /// `act(last(body(x)) + shortcut(x))` with the sum and `act` inside
    /// `last`'s epilogue (`last` itself is linear); the shortcut is the
    /// identity when `None`.
    Residual {
        body: Vec<Layer>,
        last: Conv,
        shortcut: Option<Conv>,
        act: Activation,
    },
}

impl Layer {
    fn out_shape(&self, x: MapShape) -> MapShape {
        match self {
            Layer::Conv(c) => c.out_shape(x),
            Layer::MaxPool(p) => p.out_shape(x),
            Layer::Bottleneck(b) => b.out_shape(x),
            Layer::Residual { body, last, .. } => {
                last.out_shape(body.iter().fold(x, |s, l| l.out_shape(s)))
            }
        }
    }

    /// Run on `x` (shape `s`, NHWC); returns a pooled buffer whose prefix
    /// holds the output.
    fn run(
        &self,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        s: MapShape,
        pool: &BufferPool,
    ) -> Vec<f32> {
        let o = self.out_shape(s);
        let mut out = pool.take(o.len());
        match self {
            Layer::Conv(c) => c.forward(path, exec, (x, s), None, pool, &mut out[..o.len()]),
            Layer::MaxPool(p) => p.forward(exec, x, s, &mut out[..o.len()]),
            Layer::Bottleneck(b) => b.forward(path, exec, x, s, pool, &mut out[..o.len()]),
            Layer::Residual {
                body,
                last,
                shortcut,
                act,
            } => {
                let (y, ys) = run_layers(body, path, exec, x, s, pool);
                let y_in = y.as_deref().unwrap_or(x);
                let short = shortcut.as_ref().map(|sc| {
                    let mut buf = pool.take(o.len());
                    sc.forward(path, exec, (x, s), None, pool, &mut buf[..o.len()]);
                    buf
                });
                let residual = short.as_deref().map_or(x, |b| &b[..o.len()]);
                last.forward(
                    path,
                    exec,
                    (&y_in[..ys.len()], ys),
                    Some((residual, *act)),
                    pool,
                    &mut out[..o.len()],
                );
                y.into_iter().chain(short).for_each(|b| pool.give(b));
            }
        }
        out
    }
}

/// Run `layers` in order from `x`; `None` when there are none (the output
/// is `x` itself).
fn run_layers(
    layers: &[Layer],
    path: KernelPath,
    exec: Exec,
    x: &[f32],
    s: MapShape,
    pool: &BufferPool,
) -> (Option<Vec<f32>>, MapShape) {
    let mut cur: Option<Vec<f32>> = None;
    let mut shape = s;
    for layer in layers {
        let input = cur.as_deref().map_or(x, |b| &b[..shape.len()]);
        let next = layer.run(path, exec, input, shape, pool);
        shape = layer.out_shape(shape);
        if let Some(old) = cur.replace(next) {
            pool.give(old);
        }
    }
    (cur, shape)
}

/// A whole backbone for the engine.
#[derive(Debug)]
pub(crate) struct CpuNet {
    layers: Vec<Layer>,
    pool: BufferPool,
}

impl CpuNet {
    pub(crate) fn new(layers: Vec<Layer>) -> Self {
        Self {
            layers,
            pool: BufferPool::default(),
        }
    }

    /// `x` is `[b, 3, h, w]` (NCHW); returns the output map in `layout` and
    /// its shape. One image splits each layer's work over rayon's threads;
    /// several run one image per thread, each layer on that thread, so the
    /// threads never wait for each other between layers.
    pub(crate) fn forward(
        &self,
        layout: Layout,
        path: KernelPath,
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
    ) -> (Vec<f32>, MapShape) {
        let one = MapShape { b: 1, h, w, c };
        assert_eq!(x.len(), b * one.len());
        let o1 = self.out_shape(one);
        let mut out = vec![0f32; b * o1.len()];
        let image = |exec, src: &[f32], dst: &mut [f32]| {
            self.forward_image(layout, path, exec, src, one, dst)
        };
        if b == 1 {
            on_pool_awake(|| image(Exec::Parallel, x, &mut out));
        } else {
            on_pool(|| {
                out.par_chunks_exact_mut(o1.len())
                    .zip(x.par_chunks_exact(one.len()))
                    .for_each(|(dst, src)| image(Exec::Serial, src, dst));
            });
        }
        (out, MapShape { b, ..o1 })
    }

    fn out_shape(&self, s: MapShape) -> MapShape {
        self.layers.iter().fold(s, |s, l| l.out_shape(s))
    }

    /// One image (`s.b == 1`, NCHW) into `out` in `layout`.
    fn forward_image(
        &self,
        layout: Layout,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        s: MapShape,
        out: &mut [f32],
    ) {
        let mut input = self.pool.take(s.len());
        nchw_to_nhwc(exec, x, s, &mut input[..s.len()]);
        let (y, o) = run_layers(&self.layers, path, exec, &input[..s.len()], s, &self.pool);
        let map = y.as_deref().unwrap_or(&input);
        match layout {
            Layout::Nchw => nhwc_to_nchw(exec, &map[..o.len()], o, out),
            Layout::Nhwc => out.copy_from_slice(&map[..o.len()]),
        }
        y.into_iter().for_each(|y| self.pool.give(y));
        self.pool.give(input);
    }
}

/// How an output map is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `[b, c, h, w]`: channel planes (candle's layout).
    Nchw,
    /// `[b, h, w, c]`: each pixel's channels together.
    Nhwc,
}
