//! Reading checkpoints: PyTorch `.pth` (legacy pre-1.6 and zip formats,
//! optionally gzip-compressed) and safetensors, key normalisation, variant
//! detection and key checking.
//!
//! [`Checkpoint::load`] detects the container by its magic bytes, finds the
//! state dict (under `state_dict` for asen, `model` for ASEN++, or at the top
//! level) and returns every tensor under its raw name, contiguous, on the CPU.
//! [`Checkpoint::normalised`] maps the names to asen's layout (see
//! [`normalise_key`]) and [`CheckedTensors`] builds a model while collecting a
//! [`KeyReport`].

mod keys;
mod pth;
mod report;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub use keys::{detect_variant, normalise_key};
pub use report::{CheckedTensors, KeyReport, ShapeMismatch};

use crate::error::{ModelError, Result};
use crate::head::{Head, HeadConfig, HeadKind};
use pth::Value;

/// The container a checkpoint was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// Pre-1.6 PyTorch serialisation (a sequence of pickles plus raw storages).
    Legacy,
    /// PyTorch >= 1.6 zip archive (`data.pkl` + `data/<key>`).
    Zip,
    /// A safetensors file.
    Safetensors,
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::Legacy => "pytorch legacy",
            CheckpointFormat::Zip => "pytorch zip",
            CheckpointFormat::Safetensors => "safetensors",
        })
    }
}

/// All tensors of a checkpoint file, under their raw names.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    path: PathBuf,
    format: CheckpointFormat,
    gzipped: bool,
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

/// Most bytes a gzipped checkpoint may unpack to (4 GiB: far above any ASEN checkpoint).
pub const MAX_GUNZIPPED_BYTES: u64 = 4 << 30;

fn format_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::CheckpointFormat {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Checkpoint {
    /// Read a checkpoint file. Gzip is detected by its magic bytes and
    /// decompressed in memory; then a zip archive, a legacy pickle stream or a
    /// safetensors header is expected. Storage locations (`cuda:0`) are ignored.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let raw = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_bytes(path, raw)
    }

    /// Parse checkpoint bytes; `path` is used for error messages only.
    pub fn from_bytes(path: impl AsRef<Path>, raw: Vec<u8>) -> Result<Self> {
        let path = path.as_ref();
        if raw.is_empty() {
            return Err(format_err(path, "the file is empty"));
        }
        let gzipped = raw.starts_with(&[0x1f, 0x8b]);
        let data = if gzipped {
            let mut out = Vec::new();
            // A gzip bomb stops at the limit instead of taking all memory.
            flate2::read::GzDecoder::new(raw.as_slice())
                .take(MAX_GUNZIPPED_BYTES + 1)
                .read_to_end(&mut out)
                .map_err(|e| format_err(path, format!("corrupt or truncated gzip stream: {e}")))?;
            if out.len() as u64 > MAX_GUNZIPPED_BYTES {
                return Err(format_err(
                    path,
                    format!("the gzip stream unpacks to more than {MAX_GUNZIPPED_BYTES} bytes"),
                ));
            }
            out
        } else {
            raw
        };
        let (format, contents) = if data.starts_with(b"PK\x03\x04") {
            let c = pth::read_zip(&data).map_err(|e| format_err(path, e))?;
            (CheckpointFormat::Zip, Some(c))
        } else if looks_like_safetensors(&data) {
            // Checked before the pickle PROTO byte: a safetensors header length
            // may well start with 0x80.
            (CheckpointFormat::Safetensors, None)
        } else if data.first() == Some(&0x80) {
            let c = pth::read_legacy(&data).map_err(|e| format_err(path, e))?;
            (CheckpointFormat::Legacy, Some(c))
        } else {
            let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(format_err(
                path,
                format!(
                    "not a pytorch or safetensors checkpoint (starts with bytes {})",
                    head.join(" ")
                ),
            ));
        };
        let (tensors, metadata) = match contents {
            Some(c) => state_dict(path, c)?,
            None => {
                let t = candle_core::safetensors::load_buffer(&data, &Device::Cpu)
                    .map_err(|e| format_err(path, format!("invalid safetensors: {e}")))?;
                (t.into_iter().collect(), BTreeMap::new())
            }
        };
        Ok(Self {
            path: path.to_path_buf(),
            format,
            gzipped,
            tensors,
            metadata,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The container format.
    pub fn format(&self) -> CheckpointFormat {
        self.format
    }

    /// Whether the file was gzip-compressed.
    pub fn gzipped(&self) -> bool {
        self.gzipped
    }

    /// Every tensor under its raw name, contiguous, on the CPU.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Scalar entries of the wrapper dict (`epoch`, `prec`, `mAP`), as text.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Number of scalar elements in all tensors, including the ones a model
    /// ignores (unused `fc`, `num_batches_tracked`).
    pub fn element_count(&self) -> usize {
        self.tensors.values().map(|t| t.elem_count()).sum()
    }

    /// Number of learnable parameters, as PyTorch's `model.parameters()` counts
    /// them: every tensor except the BatchNorm buffers (`running_mean`,
    /// `running_var`, `num_batches_tracked`), the unused `fc` included. The
    /// golden v1 file gives 13,753,897, the figure of the official training log.
    pub fn parameter_count(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(k, _)| {
                !(k.ends_with(".running_mean")
                    || k.ends_with(".running_var")
                    || k.ends_with(".num_batches_tracked"))
            })
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// The ASEN variant, from the keys.
    pub fn variant(&self) -> Result<HeadKind> {
        detect_variant(self.tensors.keys().map(String::as_str)).ok_or_else(|| {
            let sample: Vec<&str> = self.tensors.keys().take(5).map(String::as_str).collect();
            format_err(
                &self.path,
                format!(
                    "cannot tell the ASEN variant from its {} keys (first: {})",
                    self.tensors.len(),
                    sample.join(", ")
                ),
            )
        })
    }

    /// Tensors under normalised names (see `checkpoint::normalise_key`), ignored keys dropped.
    /// Two raw keys mapping to one name is a format error.
    pub fn normalised(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        for (raw, t) in &self.tensors {
            if let Some(name) = normalise_key(raw) {
                if out.insert(name.clone(), t.clone()).is_some() {
                    return Err(format_err(
                        &self.path,
                        format!("two keys map to the normalised name {name} (one is {raw})"),
                    ));
                }
            }
        }
        Ok(out)
    }

    /// Build the head this checkpoint holds (variant from the keys, sizes from
    /// the shapes), checking every head key: missing, unexpected (outside
    /// `backbonenet.`) and mis-shaped tensors are reported together as
    /// [`ModelError::CheckpointMismatch`]. Parameters end up on `device` as f32.
    pub fn load_head(&self, device: &Device) -> Result<(Head, HeadConfig)> {
        let kind = self.variant()?;
        let tensors = self.head_tensors()?;
        let cfg =
            HeadConfig::infer(kind, &tensors).map_err(|reason| ModelError::CheckpointMismatch {
                path: self.path.clone(),
                variant: kind.to_string(),
                report: reason,
            })?;
        let head = self.load_head_as(kind, &cfg, device)?;
        Ok((head, cfg))
    }

    /// Build a `kind` head with the sizes `cfg` from this checkpoint's head
    /// tensors, with the same complete key check as [`Checkpoint::load_head`].
    pub fn load_head_as(&self, kind: HeadKind, cfg: &HeadConfig, device: &Device) -> Result<Head> {
        let checked = CheckedTensors::new(self.head_tensors()?);
        let built = Head::new(kind, checked.var_builder(DType::F32, device), cfg);
        let report = checked.report();
        if !report.is_clean() {
            return Err(ModelError::CheckpointMismatch {
                path: self.path.clone(),
                variant: kind.to_string(),
                report: report.to_string(),
            });
        }
        built
    }

    /// The normalised backbone tensors with the `backbonenet.` prefix removed
    /// (`conv1.weight`, `layer3.5.bn3.running_var`, ...), for building a
    /// backbone alone; `fc.*`, `layer4.*` and `num_batches_tracked` are already gone.
    pub fn backbone_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self
            .normalised()?
            .into_iter()
            .filter_map(|(k, t)| k.strip_prefix("backbonenet.").map(|k| (k.to_owned(), t)))
            .collect())
    }

    /// The normalised head tensors (everything outside `backbonenet.`).
    pub fn head_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self
            .normalised()?
            .into_iter()
            .filter(|(k, _)| !k.starts_with("backbonenet."))
            .collect())
    }
}

fn looks_like_safetensors(data: &[u8]) -> bool {
    if data.len() < 9 {
        return false;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&data[..8]);
    let n = u64::from_le_bytes(n);
    n > 0 && n <= (data.len() - 8) as u64 && data[8] == b'{'
}

type StateDict = (BTreeMap<String, Tensor>, BTreeMap<String, String>);

/// Find the state dict in the unpickled root and materialise its tensors.
fn state_dict(path: &Path, c: pth::PthContents) -> Result<StateDict> {
    let root = match c.root {
        Value::Dict(d) => d,
        other => {
            return Err(format_err(
                path,
                format!("top-level object is not a dict but {}", kind_name(&other)),
            ))
        }
    };
    let mut metadata = BTreeMap::new();
    let mut entries = None;
    for wrapper in ["state_dict", "model"] {
        if let Some((_, Value::Dict(d))) = root
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == wrapper))
        {
            entries = Some(d.clone());
            break;
        }
    }
    for (k, v) in &root {
        if let Value::Str(k) = k {
            match v {
                Value::Int(i) => drop(metadata.insert(k.clone(), i.to_string())),
                Value::Float(x) => drop(metadata.insert(k.clone(), x.to_string())),
                Value::Str(s) => drop(metadata.insert(k.clone(), s.clone())),
                _ => {}
            }
        }
    }
    let entries = entries.unwrap_or(root);
    let mut tensors = BTreeMap::new();
    for (k, v) in entries {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        let storage = c.storages.get(&t.key).ok_or_else(|| {
            format_err(
                path,
                format!("tensor {name} refers to missing storage {}", t.key),
            )
        })?;
        let tensor = pth::materialise(&t, storage)
            .map_err(|e| format_err(path, format!("tensor {name}: {e}")))?;
        tensors.insert(name, tensor);
    }
    if tensors.is_empty() {
        return Err(format_err(
            path,
            "no tensors found (looked under 'state_dict', 'model' and the top level)",
        ));
    }
    Ok((tensors, metadata))
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "a bool",
        Value::Int(_) | Value::BigInt(_) => "an int",
        Value::Float(_) => "a float",
        Value::Str(_) => "a string",
        Value::Bytes(_) => "bytes",
        Value::Tuple(_) => "a tuple",
        Value::List(_) => "a list",
        Value::Dict(_) => "a dict",
        Value::Global { .. } => "a class",
        Value::Call { .. } => "an object",
        Value::Storage { .. } => "a storage",
        Value::Tensor(_) => "a tensor",
        Value::Mark => "a mark",
    }
}
