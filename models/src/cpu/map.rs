//! NHWC feature maps: their shape, reusable buffers, and the conversions
//! from and to candle's NCHW at the engine's edges.

use std::sync::Mutex;

use rayon::prelude::*;

/// Whether a kernel splits its work over rayon's threads, or runs on the
/// calling thread (when the caller already runs one image per thread).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exec {
    Parallel,
    Serial,
}

impl Exec {
    /// `f(i, chunk)` for every `size`-long chunk of `data`.
    pub(crate) fn chunks<T: Send>(
        self,
        data: &mut [T],
        size: usize,
        f: impl Fn(usize, &mut [T]) + Sync + Send,
    ) {
        match self {
            Exec::Parallel => data
                .par_chunks_exact_mut(size)
                .enumerate()
                .for_each(|(i, c)| f(i, c)),
            Exec::Serial => data
                .chunks_exact_mut(size)
                .enumerate()
                .for_each(|(i, c)| f(i, c)),
        }
    }

    /// `f(i)` for `i` in `0..n`.
    pub(crate) fn range(self, n: usize, f: impl Fn(usize) + Sync + Send) {
        match self {
            Exec::Parallel => (0..n).into_par_iter().for_each(f),
            Exec::Serial => (0..n).for_each(f),
        }
    }
}

/// Run `f` on one of rayon's threads (the calling one, if it is one), so
/// that the parallel loops inside fork from within the pool. Called from
/// outside it, every loop would hand its work to the pool and put the
/// caller to sleep until the loop ends: two thread switches per layer.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// [`on_pool`], with the pool's other threads kept awake until `f` returns:
/// each polls for work ([`rayon::yield_now`]) instead of going to sleep
/// between two of `f`'s parallel loops. One image's layers are each split
/// over the threads, with a join after every block; waking a sleeping
/// thread for the next block (a futex and, on a virtual machine, a halted
/// virtual CPU) cost more than the blocks' own imbalance.
pub(crate) fn on_pool_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = &AtomicBool::new(false);
    rayon::scope(|s| {
        let owner = rayon::current_thread_index();
        for _ in 1..rayon::current_num_threads() {
            s.spawn(move |_| {
                // The thread running `f` may pick this job up while it waits
                // inside `f`: polling there would never end, as `f` could
                // not return under it.
                if rayon::current_thread_index() == owner {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
        }
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

/// The shape of an NHWC map: `b` images of `h` x `w` pixels of `c` channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapShape {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl MapShape {
    /// Elements in the map.
    pub(crate) fn len(&self) -> usize {
        self.b * self.h * self.w * self.c
    }

    /// Pixels in the map (`b * h * w`): the rows of a 1x1 convolution's gemm.
    pub(crate) fn pixels(&self) -> usize {
        self.b * self.h * self.w
    }

    /// Pixel `p` (counted over all images) as `(image, y, x)`.
    pub(crate) fn pixel(&self, p: usize) -> (usize, usize, usize) {
        let (img, at) = (p / (self.h * self.w), p % (self.h * self.w));
        (img, at / self.w, at % self.w)
    }
}

/// Buffers kept between forward passes, so a pass allocates (and the OS
/// zeroes) nothing once the pool has warmed up. A buffer handed out may be
/// longer than asked for and holds stale values: every user writes all of
/// the prefix it uses.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Vec<f32>>>,
}

/// At most this many buffers are kept (a network needs about four at once
/// per concurrent forward pass).
const MAX_POOLED: usize = 16;

impl BufferPool {
    /// A buffer of at least `len` elements: the smallest free one that is
    /// long enough, else the longest one grown.
    pub(crate) fn take(&self, len: usize) -> Vec<f32> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let fit = free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.len() >= len)
            .min_by_key(|(_, v)| v.len())
            .map(|(i, _)| i);
        let longest = || {
            free.iter()
                .enumerate()
                .max_by_key(|(_, v)| v.len())
                .map(|(i, _)| i)
        };
        let mut buf = match fit.or_else(longest) {
            Some(i) => free.swap_remove(i),
            None => Vec::new(),
        };
        drop(free);
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        buf
    }

    /// Return a buffer for later passes.
    pub(crate) fn give(&self, buf: Vec<f32>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < MAX_POOLED {
            free.push(buf);
        }
    }
}

/// `[B, C, H, W]` -> `[B, H, W, C]`.
pub(crate) fn nchw_to_nhwc(exec: Exec, x: &[f32], s: MapShape, out: &mut [f32]) {
    let plane = s.h * s.w;
    exec.chunks(&mut out[..s.len()], plane * s.c, |i, dst| {
        image_to_nhwc(&x[i * plane * s.c..(i + 1) * plane * s.c], plane, s.c, dst)
    });
}

#[inline(never)]
fn image_to_nhwc(src: &[f32], plane: usize, c: usize, dst: &mut [f32]) {
    for (p, px) in dst.chunks_exact_mut(c).enumerate() {
        for (ch, v) in px.iter_mut().enumerate() {
            *v = src[ch * plane + p];
        }
    }
}

/// `[B, H, W, C]` -> `[B, C, H, W]`.
pub(crate) fn nhwc_to_nchw(exec: Exec, x: &[f32], s: MapShape, out: &mut [f32]) {
    let plane = s.h * s.w;
    exec.chunks(&mut out[..s.len()], plane * s.c, |i, dst| {
        let src = &x[i * plane * s.c..(i + 1) * plane * s.c];
        for (p, px) in src.chunks_exact(s.c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * plane + p] = v;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes kept awake from several callers at once, nested in each
    /// other and in parallel loops, all finish with their own results (a
    /// polling thread never waits on a frame below it).
    #[test]
    fn kept_awake_passes_finish_when_nested_and_concurrent() {
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|t| {
                    s.spawn(move || {
                        on_pool_awake(|| {
                            (0..64u64)
                                .into_par_iter()
                                .map(|i| {
                                    on_pool_awake(|| (0..100u64).map(|j| i * j + t).sum::<u64>())
                                })
                                .sum::<u64>()
                        })
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (t, sum) in sums.into_iter().enumerate() {
            let want: u64 = (0..64u64)
                .map(|i| (0..100u64).map(|j| i * j + t as u64).sum::<u64>())
                .sum();
            assert_eq!(sum, want);
        }
    }

    #[test]
    fn layouts_round_trip() {
        let s = MapShape {
            b: 2,
            h: 3,
            w: 5,
            c: 4,
        };
        let x: Vec<f32> = (0..s.len()).map(|i| i as f32).collect();
        let mut nhwc = vec![0f32; s.len()];
        nchw_to_nhwc(Exec::Parallel, &x, s, &mut nhwc);
        let (img, y, px, ch) = (1, 2, 4, 3);
        assert_eq!(
            nhwc[((img * s.h + y) * s.w + px) * s.c + ch],
            x[((img * s.c + ch) * s.h + y) * s.w + px]
        );
        let mut back = vec![0f32; s.len()];
        nhwc_to_nchw(Exec::Serial, &nhwc, s, &mut back);
        assert_eq!(back, x);
    }

    #[test]
    fn the_pool_reuses_the_smallest_buffer_that_fits() {
        let pool = BufferPool::default();
        pool.give(vec![0.0; 10]);
        pool.give(vec![0.0; 100]);
        assert_eq!(pool.take(8).len(), 10);
        assert_eq!(pool.take(200).len(), 200);
        assert!(!pool.take(1).is_empty());
    }
}
