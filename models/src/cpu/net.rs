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
        dims: (usize, usize, usize, usize),
    ) -> (Vec<f32>, MapShape) {
        let mut maps = self.forward_tapped(layout, path, x, dims, &[]);
        maps.pop().expect("the output map")
    }

    /// Like [`Self::forward`], and also the map after each of the first
    /// `taps[k]` layers (`taps` ascending, each below the layer count): the
    /// tapped maps in order, then the output.
    pub(crate) fn forward_tapped(
        &self,
        layout: Layout,
        path: KernelPath,
        x: &[f32],
        (b, c, h, w): (usize, usize, usize, usize),
        taps: &[usize],
    ) -> Vec<(Vec<f32>, MapShape)> {
        let one = MapShape { b: 1, h, w, c };
        assert_eq!(x.len(), b * one.len());
        assert!(taps.windows(2).all(|p| p[0] < p[1]));
        assert!(taps.last().is_none_or(|&t| t < self.layers.len()));
        let stages = self.stages(taps);
        let shapes: Vec<MapShape> = stages
            .iter()
            .scan(one, |s, stage| {
                *s = stage.iter().fold(*s, |s, l| l.out_shape(s));
                Some(*s)
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = shapes.iter().map(|o| vec![0f32; b * o.len()]).collect();
        let image = |exec, i: usize, dst: &mut [&mut [f32]]| {
            self.forward_image(
                layout,
                path,
                exec,
                &x[i * one.len()..][..one.len()],
                one,
                &stages,
                dst,
            )
        };
        if b == 1 {
            let mut dst: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            on_pool_awake(|| image(Exec::Parallel, 0, &mut dst));
        } else {
            // One destination list per image: its slice of every output.
            let mut per_image: Vec<Vec<&mut [f32]>> = (0..b).map(|_| Vec::new()).collect();
            for (out, o) in outs.iter_mut().zip(&shapes) {
                for (dst, chunk) in per_image.iter_mut().zip(out.chunks_exact_mut(o.len())) {
                    dst.push(chunk);
                }
            }
            on_pool(|| {
                per_image
                    .par_iter_mut()
                    .enumerate()
                    .for_each(|(i, dst)| image(Exec::Serial, i, dst));
            });
        }
        outs.into_iter()
            .zip(shapes)
            .map(|(out, o)| (out, MapShape { b, ..o }))
            .collect()
    }

    /// The layers cut after each tap.
    fn stages(&self, taps: &[usize]) -> Vec<&[Layer]> {
        let mut stages = Vec::with_capacity(taps.len() + 1);
        let mut start = 0;
        for &t in taps {
            stages.push(&self.layers[start..t]);
            start = t;
        }
        stages.push(&self.layers[start..]);
        stages
    }

    /// One image (`s.b == 1`, NCHW) through `stages` in turn, the map after
    /// each into the matching `out` in `layout`.
    #[allow(clippy::too_many_arguments)]
    fn forward_image(
        &self,
        layout: Layout,
        path: KernelPath,
        exec: Exec,
        x: &[f32],
        s: MapShape,
        stages: &[&[Layer]],
        out: &mut [&mut [f32]],
    ) {
        let mut cur = self.pool.take(s.len());
        nchw_to_nhwc(exec, x, s, &mut cur[..s.len()]);
        let mut shape = s;
        for (stage, out) in stages.iter().zip(out.iter_mut()) {
            let (y, o) = run_layers(stage, path, exec, &cur[..shape.len()], shape, &self.pool);
            if let Some(y) = y {
                self.pool.give(std::mem::replace(&mut cur, y));
            }
            shape = o;
            let map = &cur[..o.len()];
            match layout {
                Layout::Nchw => nhwc_to_nchw(exec, map, o, out),
                Layout::Nhwc => out.copy_from_slice(map),
            }
        }
        self.pool.give(cur);
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
