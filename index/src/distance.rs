//! Vector primitives shared by the graphs and exact scoring: dot products of `f32` and `i8`
//! slices, vectorised with AVX-512 or AVX2 where the CPU has it (detected at run time), and the
//! integer norm of a quantised vector.

/// Dot product of two `f32` slices (the cosine of two unit vectors). Extra components of the
/// longer slice are ignored.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("avx2")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { dot_fma(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_generic(a, b)
}

/// Four independent 16-lane fused multiply-add chains (64 components per step), then one
/// chain, then a masked load for the last 0-15 components: no scalar tail.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): `i + 16 * j + 16 <= n` for every full load in the loops below, and
    // the masked load reads only the `n - i < 16` lanes its mask selects.
    while i + 64 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm512_loadu_ps(pa.add(i + 16 * j)) };
            let y = unsafe { _mm512_loadu_ps(pb.add(i + 16 * j)) };
            *acc = _mm512_fmadd_ps(x, y, *acc);
        }
        i += 64;
    }
    while i + 16 <= n {
        let x = unsafe { _mm512_loadu_ps(pa.add(i)) };
        let y = unsafe { _mm512_loadu_ps(pb.add(i)) };
        acc[0] = _mm512_fmadd_ps(x, y, acc[0]);
        i += 16;
    }
    if i < n {
        let mask: __mmask16 = (1u16 << (n - i)) - 1;
        let x = unsafe { _mm512_maskz_loadu_ps(mask, pa.add(i)) };
        let y = unsafe { _mm512_maskz_loadu_ps(mask, pb.add(i)) };
        acc[1] = _mm512_fmadd_ps(x, y, acc[1]);
    }
    let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    _mm512_reduce_add_ps(sum)
}

/// Four independent 8-lane fused multiply-add chains (32 components per step), so the loop
/// is bound by loads rather than by the latency of one accumulator.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (all loads): `i + 8 * j + 8 <= n` for every load in the loops below.
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = unsafe { _mm256_loadu_ps(pa.add(i + 8 * j)) };
            let y = unsafe { _mm256_loadu_ps(pb.add(i + 8 * j)) };
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    while i + 8 <= n {
        let x = unsafe { _mm256_loadu_ps(pa.add(i)) };
        let y = unsafe { _mm256_loadu_ps(pb.add(i)) };
        acc[0] = _mm256_fmadd_ps(x, y, acc[0]);
        i += 8;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
    let quad = _mm_add_ps(half, _mm_movehl_ps(half, half));
    let one = _mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1));
    let mut total = _mm_cvtss_f32(one);
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// Sixteen independent lanes so the compiler keeps two or four vector accumulators.
#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    let mut s = [0f32; 8];
    for j in 0..8 {
        s[j] = acc[j] + acc[j + 8];
    }
    (s[0] + s[4]) + (s[1] + s[5]) + ((s[2] + s[6]) + (s[3] + s[7])) + tail
}

/// Integer dot product of two `i8` slices (exact). Extra components of the longer slice are
/// ignored.
#[inline]
pub(crate) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { dot_i8_avx2(a, b) };
        }
    }
    dot_i8_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_generic(a, b)
}

#[inline(always)]
fn dot_i8_generic(a: &[i8], b: &[i8]) -> i32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0i32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for j in 0..16 {
            acc[j] += x[j] as i32 * y[j] as i32;
        }
    }
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| *x as i32 * *y as i32)
        .sum();
    acc.iter().sum::<i32>() + tail
}

/// Euclidean norm of an `i8` vector, from its exact integer square.
#[inline]
pub(crate) fn norm_i8(v: &[i8]) -> f32 {
    (dot_i8(v, v) as f32).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_products_match_plain_loops() {
        for n in [0usize, 1, 7, 16, 33, 37, 256, 300] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - plain).abs() < 1e-4, "n {n}");
            assert!((dot_generic(&a, &b) - plain).abs() < 1e-4, "generic, n {n}");
            let ai: Vec<i8> = (0..n).map(|i| (i as i32 % 255 - 127) as i8).collect();
            let bi: Vec<i8> = (0..n).map(|i| ((i * 7) as i32 % 255 - 127) as i8).collect();
            let plain_i: i32 = ai.iter().zip(&bi).map(|(x, y)| *x as i32 * *y as i32).sum();
            assert_eq!(dot_i8(&ai, &bi), plain_i, "n {n}");
            assert_eq!(dot_i8_generic(&ai, &bi), plain_i, "generic, n {n}");
            let sq: i32 = ai.iter().map(|x| *x as i32 * *x as i32).sum();
            assert_eq!(norm_i8(&ai), (sq as f32).sqrt(), "n {n}");
        }
    }

    /// Every kernel the CPU can run, whichever `dot` dispatches to: CI machines may lack the
    /// widest.
    #[test]
    fn every_f32_kernel_matches_a_plain_loop() {
        for n in [
            0usize, 1, 7, 15, 16, 17, 31, 33, 63, 64, 65, 128, 200, 256, 300,
        ] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n + 3).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let close = |x: f32| (x - plain).abs() < 1e-4;
            assert!(close(dot_generic(&a, &b)), "generic, n {n}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: detected just above.
                    assert!(close(unsafe { dot_avx512(&a, &b) }), "avx512, n {n}");
                    assert!(
                        close(unsafe { dot_avx512(&b, &a) }),
                        "avx512 swapped, n {n}"
                    );
                } else {
                    eprintln!("note: no AVX-512 on this CPU; its dot product is not tested here");
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: detected just above.
                    assert!(close(unsafe { dot_fma(&a, &b) }), "fma, n {n}");
                }
            }
        }
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.05).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
    }

    #[test]
    fn extra_components_of_the_longer_slice_are_ignored() {
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
        assert_eq!(dot_i8(&[1, 2, 3], &[1, 1]), 3);
        let long: Vec<i8> = (0..40).map(|i| i as i8).collect();
        assert_eq!(dot_i8(&long, &long[..17]), dot_i8(&long[..17], &long[..17]));
        let longf: Vec<f32> = (0..40).map(|i| i as f32).collect();
        assert_eq!(dot(&longf, &longf[..17]), dot(&longf[..17], &longf[..17]));
    }
}
