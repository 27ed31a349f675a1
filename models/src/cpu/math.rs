//! Elementary functions as plain arithmetic: `exp`, `pow` and `tanh` in a
//! form a loop of them vectorises (a loop of `f32::exp` calls stays a loop of
//! library calls), and [`map_in_place`] to run such a loop at the kernel
//! path's vector width.
//!
//! Each is a polynomial on a reduced argument (Cody-Waite for `exp`, the
//! `atanh` series for `log2`, the Taylor series of `tanh` near 0) and is
//! tested against the standard library over the range the engine uses.

use super::KernelPath;

/// `f` applied to every value of `data`, in a loop compiled for the path's
/// vector width (the portable path: the baseline target's).
pub(crate) fn map_in_place(path: KernelPath, data: &mut [f32], f: impl Fn(f32) -> f32) {
    match path {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the path is only selected on a CPU with these features.
        KernelPath::Avx512 => unsafe { map_avx512(data, f) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        KernelPath::Avx2Fma => unsafe { map_avx2(data, f) },
        _ => map_lanes(data, f),
    }
}

/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn map_avx512(data: &mut [f32], f: impl Fn(f32) -> f32) {
    map_lanes(data, f)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn map_avx2(data: &mut [f32], f: impl Fn(f32) -> f32) {
    map_lanes(data, f)
}

#[inline(always)]
fn map_lanes(data: &mut [f32], f: impl Fn(f32) -> f32) {
    data.iter_mut().for_each(|v| *v = f(*v));
}

/// `tanh x` within 5e-7 relative error: the Taylor series to `x^15` for
/// `|x| < 1/2` (next term under 5e-9 there), `(1 - e) / (1 + e)` with
/// `e = e^(-2|x|)` above, where `1 - e` no longer cancels. Both are
/// computed and one is selected, so a loop of them has no branch.
#[inline(always)]
pub(crate) fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let a2 = a * a;
    // tanh x = sum of 2^2n (2^2n - 1) B_2n x^(2n-1) / (2n)!.
    let mut series = -929_569.0 / 638_512_875.0;
    for c in [
        21_844.0 / 6_081_075.0,
        -1_382.0 / 155_925.0,
        62.0 / 2_835.0,
        -17.0 / 315.0,
        2.0 / 15.0,
        -1.0 / 3.0,
        1.0,
    ] {
        series = series * a2 + c;
    }
    let small = a * series;
    let e = exp(-2.0 * a);
    let large = (1.0 - e) / (1.0 + e);
    let t = if a < 0.5 { small } else { large };
    t.copysign(x)
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x^y` for a normal `x > 0` whose result is a normal float, as
/// `2^(y log2 x)`: within 3e-6 relative of `f32::powf` for the colour
/// histogram's arguments (tested).
#[inline(always)]
pub(crate) fn pow(x: f32, y: f32) -> f32 {
    exp2(y * log2(x))
}

/// `log2 x` for a normal `x > 0`: the exponent plus `ln m / ln 2` of the
/// mantissa `m` in `[sqrt(1/2), sqrt(2))`, from the series of
/// `2 atanh((m - 1) / (m + 1))` to the 9th power (error under 1e-9 there).
#[inline(always)]
pub(crate) fn log2(x: f32) -> f32 {
    let bits = x.to_bits();
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let high = mantissa > std::f32::consts::SQRT_2;
    let m = if high { mantissa * 0.5 } else { mantissa };
    let exponent = ((bits >> 23) as i32 - 127 + i32::from(high)) as f32;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = (((t2 * (1.0 / 9.0) + 1.0 / 7.0) * t2 + 1.0 / 5.0) * t2 + 1.0 / 3.0) * t2 + 1.0;
    2.0 * t * series * std::f32::consts::LOG2_E + exponent
}

/// `2^y` for `y` in `-126..=127` (clamped there): `2^n` with `n` the
/// nearest integer, times `e^(f ln 2)` of the rest.
#[inline(always)]
pub(crate) fn exp2(y: f32) -> f32 {
    let y = y.clamp(-126.0, 127.0);
    let shifted = y + ROUND;
    let n = shifted - ROUND;
    let f = (y - n) * std::f32::consts::LN_2;
    taylor_exp(f) * power_of_two(shifted)
}

/// `e^x` within 3e-7 relative error for `x` in `-87..=88` (clamped there,
/// so `e^-87` below): `2^n e^f` with `n` the nearest integer to `x / ln 2`
/// and `|f| <= ln 2 / 2`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // ln 2 in two parts: `n * LN_2_HI` is exact for |n| < 2^12, so `f`
    // keeps its precision however large `n` is (Cody and Waite).
    const LN_2_HI: f32 = 0.693_145_75;
    const LN_2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let f = (x - n * LN_2_HI) - n * LN_2_LO;
    taylor_exp(f) * power_of_two(shifted)
}

/// Adding and subtracting 1.5 * 2^23 rounds a float under 2^22 in size to
/// the nearest integer `n`, which the sum holds in its low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `2^n` for the `n` in `-126..=127` that `shifted = v + ROUND` rounded `v`
/// to. Integer arithmetic on the bits, since a float-to-integer cast
/// (saturating in Rust) does not vectorise.
#[inline(always)]
fn power_of_two(shifted: f32) -> f32 {
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    f32::from_bits(n.wrapping_add(127) << 23)
}

/// `e^f` for `|f| <= ln 2 / 2`: the degree-7 Taylor polynomial.
#[inline(always)]
fn taylor_exp(f: f32) -> f32 {
    let mut p = 1.0 / 5040.0;
    for c in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * f + c;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count + 1` points from `lo` to `hi`, evenly spaced.
    fn range(lo: f32, hi: f32, count: usize) -> impl Iterator<Item = f32> {
        (0..=count).map(move |i| lo + (hi - lo) * i as f32 / count as f32)
    }

    #[test]
    fn the_exponential_matches_the_library_one() {
        for x in range(-87.0, 88.0, 350_000) {
            let (got, want) = (exp(x), x.exp());
            assert!((got - want).abs() <= 3e-7 * want, "e^{x}: {got} vs {want}");
        }
        assert!(exp(-1000.0) < 2e-38);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn the_powers_match_the_library_ones_over_the_histograms_range() {
        // Gamma of a colour in 0..=1, cube root of an XYZ value in 1e-6..=1.1.
        for (y, lo, hi) in [(2.2f32, 1e-6f32, 1.0f32), (1.0 / 3.0, 1e-6, 1.1)] {
            for i in 0..=200_000 {
                let x = lo * (hi / lo).powf(i as f32 / 200_000.0);
                let (got, want) = (pow(x, y), x.powf(y));
                assert!(
                    (got - want).abs() <= 3e-6 * want,
                    "{x}^{y}: {got} vs {want}"
                );
            }
        }
        // The clamp's floor gives a tiny number, not a NaN or an infinity.
        let tiny = pow(1e-30, 2.2);
        assert!(tiny.is_finite() && (0.0..1e-37).contains(&tiny), "{tiny}");
        assert_eq!(log2(1.0), 0.0);
        assert_eq!(log2(0.25), -2.0);
    }

    #[test]
    fn tanh_matches_the_library_one() {
        for x in range(-12.0, 12.0, 480_000).chain(range(-1e-3, 1e-3, 20_000)) {
            let (got, want) = (tanh(x), x.tanh());
            assert!(
                (got - want).abs() <= 5e-7 * want.abs() + 1e-30,
                "tanh {x}: {got} vs {want}"
            );
        }
        assert_eq!(tanh(0.0), 0.0);
        assert_eq!(tanh(100.0), 1.0);
        assert_eq!(tanh(-100.0), -1.0);
    }

    #[test]
    fn sigmoid_matches_the_library_form() {
        for x in range(-80.0, 80.0, 160_000) {
            let (got, want) = (sigmoid(x), 1.0 / (1.0 + (-x).exp()));
            assert!(
                (got - want).abs() <= 5e-7 * want,
                "sigmoid {x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn every_path_maps_to_the_same_bits() {
        let data: Vec<f32> = range(-6.0, 6.0, 10_001).collect();
        let mut reference = data.clone();
        map_in_place(KernelPath::Portable, &mut reference, tanh);
        for path in KernelPath::available() {
            let mut got = data.clone();
            map_in_place(path, &mut got, tanh);
            assert!(got == reference, "{path:?}");
        }
    }
}
