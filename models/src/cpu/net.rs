//! A backbone as a list of engine layers, run on NHWC buffers from a pool.

use super::conv::{Conv, MaxPool};
use super::depthwise::Depthwise;
use super::kernels::KernelPath;
use super::map::{nchw_to_nhwc, nhwc_to_nchw, BufferPool, MapShape};
use crate::layers::Activation;

/// One step of a network.
#[derive(Debug, Clone)]
pub(crate) enum Layer {
    /// A dense convolution.
    Conv(Conv),
    /// A depthwise convolution.
    Depthwise(Depthwise),
    /// Max pooling.
    MaxPool(MaxPool),
    /// Layers one after the other.
    Sequence(Vec<Layer>),
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
            Layer::Depthwise(d) => d.out_shape(x),
            Layer::MaxPool(p) => p.out_shape(x),
            Layer::Sequence(layers) => layers.iter().fold(x, |s, l| l.out_shape(s)),
            Layer::Residual { body, last, .. } => {
                last.out_shape(body.iter().fold(x, |s, l| l.out_shape(s)))
            }
        }
    }

    /// Run on `x` (shape `s`, NHWC); returns a pooled buffer whose prefix
    /// holds the output.
    fn run(&self, path: KernelPath, x: &[f32], s: MapShape, pool: &BufferPool) -> Vec<f32> {
        let o = self.out_shape(s);
        if let Layer::Sequence(layers) = self {
            if let (Some(y), _) = run_layers(layers, path, x, s, pool) {
                return y;
            }
        }
        let mut out = pool.take(o.len());
        match self {
            Layer::Sequence(_) => out[..o.len()].copy_from_slice(x),
            Layer::Conv(c) => c.forward(path, x, s, None, &mut out[..o.len()], pool),
            Layer::Depthwise(d) => d.forward(path, x, s, &mut out[..o.len()]),
            Layer::MaxPool(p) => p.forward(x, s, &mut out[..o.len()]),
            Layer::Residual {
                body,
                last,
                shortcut,
                act,
            } => {
                let (y, ys) = run_layers(body, path, x, s, pool);
                let y_in = y.as_deref().unwrap_or(x);
                let short = shortcut.as_ref().map(|sc| {
                    let mut buf = pool.take(o.len());
                    sc.forward(path, x, s, None, &mut buf[..o.len()], pool);
                    buf
                });
                let residual = short.as_deref().map_or(x, |b| &b[..o.len()]);
                last.forward(
                    path,
                    &y_in[..ys.len()],
                    ys,
                    Some((residual, *act)),
                    &mut out[..o.len()],
                    pool,
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
    x: &[f32],
    s: MapShape,
    pool: &BufferPool,
) -> (Option<Vec<f32>>, MapShape) {
    let mut cur: Option<Vec<f32>> = None;
    let mut shape = s;
    for layer in layers {
        let input = cur.as_deref().map_or(x, |b| &b[..shape.len()]);
        let next = layer.run(path, input, shape, pool);
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

    /// `x` is `[b, 3, h, w]` (NCHW); returns the output map in NCHW and
    /// its shape.
    pub(crate) fn forward(
        &self,
        path: KernelPath,
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
    ) -> (Vec<f32>, MapShape) {
        let s = MapShape { b, h, w, c };
        assert_eq!(x.len(), s.len());
        let mut input = self.pool.take(s.len());
        nchw_to_nhwc(x, s, &mut input[..s.len()]);
        let (y, o) = run_layers(&self.layers, path, &input[..s.len()], s, &self.pool);
        let mut out = vec![0f32; o.len()];
        match y {
            Some(y) => {
                nhwc_to_nchw(&y[..o.len()], o, &mut out);
                self.pool.give(y);
            }
            None => nhwc_to_nchw(&input[..o.len()], o, &mut out),
        }
        self.pool.give(input);
        (out, o)
    }
}
