//! Which instruction set the engine's kernels use, chosen once per network
//! at run time ([`KernelPath::detect`]) and overridable for tests and
//! benches ([`crate::Backbone::with_kernels`]).

/// The kernel implementation a [`crate::Backbone`] runs on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPath {
    /// The engine with AVX2 + FMA kernels (x86-64 with both features; also
    /// what an AVX-512 machine runs: there is no AVX-512 kernel).
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
        if avx2_fma_supported() {
            KernelPath::Avx2Fma
        } else {
            KernelPath::Portable
        }
    }

    /// Every path that can run on this CPU, fastest first.
    pub fn available() -> Vec<Self> {
        let mut paths = Vec::with_capacity(3);
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
            KernelPath::Avx2Fma => avx2_fma_supported(),
            KernelPath::Portable | KernelPath::CandleOps => true,
        }
    }

    /// Short name (`avx2-fma`, `portable`, `candle-ops`).
    pub fn name(self) -> &'static str {
        match self {
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
            KernelPath::Avx2Fma,
            KernelPath::Portable,
            KernelPath::CandleOps,
        ]
        .into_iter()
        .find(|p| p.name() == s)
        .ok_or_else(|| {
            format!("unknown kernel path {s:?}; expected avx2-fma, portable or candle-ops")
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
        assert!("avx512".parse::<KernelPath>().is_err());
    }
}
