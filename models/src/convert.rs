//! Official ASEN checkpoints -> asen model directories (`model.safetensors` +
//! `card.json`, read back by [`crate::ModelDir`]) and inspection summaries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};

use crate::card::{AttributeSpec, ModelCard, Provenance, CARD_FILE, WEIGHTS_FILE};
use crate::checkpoint::{Checkpoint, CheckpointFormat};
use crate::error::{ModelError, Result};
use crate::head::{HeadConfig, HeadKind};

/// Options of [`convert_checkpoint`].
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Attribute names (and value names) in index order; `None` gives `attr_0..attr_{n-1}`.
    pub attributes: Option<Vec<AttributeSpec>>,
    /// Backbone name for the card (`resnet50_layer3` for the official checkpoints).
    pub backbone: String,
    /// Input side in pixels (224).
    pub input_size: u32,
    /// The command line to record in the card's provenance.
    pub command: Option<String>,
    /// Free text for the card.
    pub notes: Option<String>,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        Self {
            attributes: None,
            backbone: "resnet50_layer3".into(),
            input_size: 224,
            command: None,
            notes: None,
        }
    }
}

/// Convert an official checkpoint (`.pth`, `.pth.gz`, safetensors with official
/// names) into a model directory `out_dir` (created if needed): all normalised
/// tensors as float32 in `model.safetensors` (ignored keys dropped) and a
/// validated `card.json`. The head keys are checked by building the head
/// first, so a broken checkpoint fails before anything is written.
pub fn convert_checkpoint(src: &Path, out_dir: &Path, opts: &ConvertOptions) -> Result<ModelCard> {
    let ckpt = Checkpoint::load(src)?;
    let (head, cfg) = ckpt.load_head(&Device::Cpu)?;
    let attributes = match &opts.attributes {
        Some(a) if a.len() != cfg.n_attributes => {
            return Err(ModelError::InvalidArgument(format!(
                "{} attribute names given but checkpoint {} has {} attributes",
                a.len(),
                src.display(),
                cfg.n_attributes
            )))
        }
        Some(a) => a.clone(),
        None => (0..cfg.n_attributes)
            .map(|i| AttributeSpec::named(format!("attr_{i}")))
            .collect(),
    };
    let mut card = ModelCard::new(
        head.kind(),
        opts.backbone.clone(),
        opts.input_size,
        attributes,
        cfg,
    )?;
    let bytes = std::fs::read(src).map_err(|e| ModelError::io(src, e))?;
    let has_backbone = ckpt
        .normalised()?
        .keys()
        .any(|k| k.starts_with("backbonenet."));
    let mut notes = vec![format!(
        "converted from a {} {} checkpoint{}",
        ckpt.format(),
        head.kind(),
        if ckpt.gzipped() { " (gzip)" } else { "" }
    )];
    if !has_backbone {
        notes.push("head only: no backbonenet.* tensors".into());
    }
    notes.extend(opts.notes.clone());
    card.provenance = Provenance {
        source_file: src.file_name().map(|n| n.to_string_lossy().into_owned()),
        source_sha256: Some(hex(&Sha256::digest(&bytes))),
        command: opts.command.clone(),
        date: Some(utc_date()),
        notes: Some(notes.join("; ")),
    };
    let tensors: HashMap<String, Tensor> = ckpt
        .normalised()?
        .into_iter()
        .map(|(k, t)| {
            let t = if t.dtype().is_float() {
                t.to_dtype(DType::F32)?
            } else {
                t
            };
            Ok((k, t))
        })
        .collect::<Result<_>>()?;
    std::fs::create_dir_all(out_dir).map_err(|e| ModelError::io(out_dir, e))?;
    let weights = out_dir.join(WEIGHTS_FILE);
    candle_core::safetensors::save(&tensors, &weights)?;
    card.save(out_dir.join(CARD_FILE))?;
    Ok(card)
}

/// What [`inspect_checkpoint`] finds.
#[derive(Debug, Clone)]
pub struct CheckpointSummary {
    /// The file.
    pub path: PathBuf,
    /// Container format.
    pub format: CheckpointFormat,
    /// Whether it was gzip-compressed.
    pub gzipped: bool,
    /// Detected head variant.
    pub variant: HeadKind,
    /// Head sizes read from the shapes.
    pub head_config: HeadConfig,
    /// Number of tensors in the file.
    pub tensor_count: usize,
    /// Learnable parameters as PyTorch counts them (BatchNorm buffers excluded,
    /// the unused backbone `fc` included): 13,753,897 for the golden v1 file.
    pub parameter_count: usize,
    /// Learnable parameters the asen model uses (also without the `fc`, `layer4`
    /// and other ignored keys).
    pub used_parameter_count: usize,
    /// Number of backbone tensors (normalised, ignored keys dropped).
    pub backbone_tensor_count: usize,
    /// Scalar entries of the wrapper dict (`epoch`, `prec`, `mAP`).
    pub metadata: BTreeMap<String, String>,
}

impl fmt::Display for CheckpointSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:        {}", self.path.display())?;
        writeln!(
            f,
            "format:      {}{}",
            self.format,
            if self.gzipped { " (gzip)" } else { "" }
        )?;
        writeln!(f, "variant:     {}", self.variant)?;
        writeln!(f, "attributes:  {}", self.head_config.n_attributes)?;
        writeln!(
            f,
            "head:        in_channels {}, attention_dim {}, gate_hidden {}, embedding_dim {}, feature_fc {}",
            self.head_config.in_channels,
            self.head_config.attention_dim,
            self.head_config.gate_hidden,
            self.head_config.embedding_dim,
            self.head_config.feature_fc
        )?;
        writeln!(
            f,
            "tensors:     {} ({} backbone after normalisation)",
            self.tensor_count, self.backbone_tensor_count
        )?;
        writeln!(
            f,
            "parameters:  {} learnable, as PyTorch counts them (incl. unused fc; excl. BatchNorm buffers)",
            group(self.parameter_count)
        )?;
        write!(
            f,
            "used:        {} learnable parameters in the asen model",
            group(self.used_parameter_count)
        )?;
        for (k, v) in &self.metadata {
            write!(f, "\n{:<12} {v}", format!("{k}:"))?;
        }
        Ok(())
    }
}

/// Read a checkpoint and summarise it (variant, attributes, parameter counts).
pub fn inspect_checkpoint(path: &Path) -> Result<CheckpointSummary> {
    let ckpt = Checkpoint::load(path)?;
    let variant = ckpt.variant()?;
    let head = ckpt.head_tensors()?;
    let head_config =
        HeadConfig::infer(variant, &head).map_err(|report| ModelError::CheckpointMismatch {
            path: path.to_path_buf(),
            variant: variant.to_string(),
            report,
        })?;
    let normalised = ckpt.normalised()?;
    let is_buffer = |k: &str| k.ends_with(".running_mean") || k.ends_with(".running_var");
    Ok(CheckpointSummary {
        path: path.to_path_buf(),
        format: ckpt.format(),
        gzipped: ckpt.gzipped(),
        variant,
        head_config,
        tensor_count: ckpt.tensors().len(),
        parameter_count: ckpt.parameter_count(),
        used_parameter_count: normalised
            .iter()
            .filter(|(k, _)| !is_buffer(k))
            .map(|(_, t)| t.elem_count())
            .sum(),
        backbone_tensor_count: normalised
            .keys()
            .filter(|k| k.starts_with("backbonenet."))
            .count(),
        metadata: ckpt.metadata().clone(),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, proleptic Gregorian),
/// as model cards record it.
pub fn utc_date() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    civil_date((secs / 86_400) as i64)
}

fn civil_date(days_since_epoch: i64) -> String {
    let z = days_since_epoch + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_grouping() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(20_419), "2025-11-27");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(group(13_753_897), "13,753,897");
        assert_eq!(group(512), "512");
    }
}
