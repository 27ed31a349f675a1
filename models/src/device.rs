//! Parsing `cpu`, `cuda[:N]` and `metal[:N]` into a candle [`Device`].

use candle_core::Device;

use crate::error::{ModelError, Result};

/// Parse a device string (`cpu`, `cuda`, `cuda:1`, `metal`) and open the device.
///
/// CUDA and Metal need the `cuda` / `metal` cargo features; without them the
/// error says which feature to enable.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    let (kind, ordinal) = match spec.split_once(':') {
        Some((kind, n)) => {
            let n: usize = n.parse().map_err(|_| ModelError::Device {
                requested: spec.to_string(),
                reason: format!("device ordinal {n:?} is not a number"),
            })?;
            (kind, n)
        }
        None => (spec, 0),
    };
    let unavailable = |feature: &str| ModelError::Device {
        requested: spec.to_string(),
        reason: format!("this build has no {feature} support; rebuild with `--features {feature}`"),
    };
    let open_failed = |e: candle_core::Error| ModelError::Device {
        requested: spec.to_string(),
        reason: e.to_string(),
    };
    match kind {
        "cpu" if ordinal == 0 => Ok(Device::Cpu),
        "cuda" if candle_core::utils::cuda_is_available() => {
            Device::new_cuda(ordinal).map_err(open_failed)
        }
        "cuda" => Err(unavailable("cuda")),
        "metal" if candle_core::utils::metal_is_available() => {
            Device::new_metal(ordinal).map_err(open_failed)
        }
        "metal" => Err(unavailable("metal")),
        _ => Err(ModelError::Device {
            requested: spec.to_string(),
            reason: "expected cpu, cuda[:N] or metal[:N]".to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses() {
        assert!(parse_device("cpu").unwrap().is_cpu());
    }

    #[test]
    fn bad_specs_are_explained() {
        let e = parse_device("tpu").unwrap_err().to_string();
        assert!(e.contains("expected cpu"), "{e}");
        let e = parse_device("cuda:x").unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        if !candle_core::utils::cuda_is_available() {
            let e = parse_device("cuda").unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
