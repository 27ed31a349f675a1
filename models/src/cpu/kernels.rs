//! Which instruction set the engine's kernels use, chosen once per network
//! at run time ([`KernelPath::detect`]) and overridable for tests and
//! benches ([`crate::Backbone::with_kernels`]).

/// The kernel implementation a [`crate::Backbone`] runs on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The engine with AVX-512F kernels (x86-64 with AVX-512F, AVX2 and
    /// FMA): the gemm's full tiles and the depthwise rows use 16-lane
    /// registers, everything else runs the AVX2 kernels.
    Avx512,
    /// The engine with AVX2 + FMA kernels (x86-64 with both features).
    Avx2Fma,
    /// The engine with portable kernels: plain Rust that the compiler
    /// vectorises for the baseline target (SSE2 on x86-64, NEON on aarch64).
    Portable,
    /// No engine: candle's ops and the NCHW custom ops of `layers`, the
    /// reference the engine is tested against and the path off the CPU.
    CandleOps,
}

impl KernelPath {
    /// The fastest engine path this CPU supports.
    pub fn detect() -> Self {
        if avx512_supported() {
            KernelPath::Avx512
        } else if avx2_fma_supported() {
            KernelPath::Avx2Fma
        } else {
            KernelPath::Portable
        }
    }

    /// Every path that can run on this CPU, fastest first.
    pub fn available() -> Vec<Self> {
        let mut paths = Vec::with_capacity(4);
        if avx512_supported() {
            paths.push(KernelPath::Avx512);
        }
        if avx2_fma_supported() {
            paths.push(KernelPath::Avx2Fma);
        }
        paths.push(KernelPath::Portable);
        paths.push(KernelPath::CandleOps);
        paths
    }

    /// Whether this path can run on this CPU.
    pub fn is_supported(self) -> bool {
        match self {
            KernelPath::Avx512 => avx512_supported(),
            KernelPath::Avx2Fma => avx2_fma_supported(),
            KernelPath::Portable | KernelPath::CandleOps => true,
        }
    }

    /// Short name (`avx512`, `avx2-fma`, `portable`, `candle-ops`).
    pub fn name(self) -> &'static str {
        match self {
            KernelPath::Avx512 => "avx512",
            KernelPath::Avx2Fma => "avx2-fma",
            KernelPath::Portable => "portable",
            KernelPath::CandleOps => "candle-ops",
        }
    }
}

impl std::fmt::Display for KernelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KernelPath {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        [
            KernelPath::Avx512,
            KernelPath::Avx2Fma,
            KernelPath::Portable,
            KernelPath::CandleOps,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| {
            format!("unknown kernel path {s:?}; expected avx512, avx2-fma, portable or candle-ops")
        })
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_fma_supported() -> bool {
    false
}

/// AVX-512F, and AVX2 + FMA for the kernels the path shares with
/// [`KernelPath::Avx2Fma`].
#[cfg(target_arch = "x86_64")]
fn avx512_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && avx2_fma_supported()
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_supported() -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detected_path_is_available_and_names_round_trip() {
        let detected = KernelPath::detect();
        assert!(KernelPath::available().contains(&detected));
        assert!(detected.is_supported());
        for p in KernelPath::available() {
            assert_eq!(p.name().parse::<KernelPath>().unwrap(), p);
        }
        assert!("avx".parse::<KernelPath>().is_err());
    }

    #[test]
    fn every_engine_path_is_available_where_detect_would_pick_it() {
        let available = KernelPath::available();
        // Faster paths imply the slower ones' instructions.
        if available.contains(&KernelPath::Avx512) {
            assert!(available.contains(&KernelPath::Avx2Fma));
        }
        assert_eq!(available.first(), Some(&KernelPath::detect()));
    }
}
