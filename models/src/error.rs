//! The crate-wide error type.
//!
//! Variants are grouped by what the caller can do about them: a bad image
//! (4xx for a server, exit code 2 for the CLI), a bad checkpoint or model
//! card, an unknown attribute, or an internal failure of the tensor library.

use std::path::PathBuf;

/// Everything that can go wrong in `asen-models`.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The bytes are not an image in a supported format (JPEG, PNG, WebP).
    #[error("unsupported image format{}: {detail}", origin(.source_name))]
    UnsupportedImage {
        /// File name or other label of the input, when known.
        source_name: Option<String>,
        /// What was seen.
        detail: String,
    },
    /// The image could not be decoded (empty, truncated, corrupt).
    #[error("cannot decode image{}: {detail}", origin(.source_name))]
    ImageDecode {
        /// File name or other label of the input, when known.
        source_name: Option<String>,
        /// The decoder's message.
        detail: String,
    },
    /// The image declares more pixels than allowed (decompression-bomb guard).
    #[error("image{} is {width}x{height} = {} pixels, over the limit of {max_pixels}", origin(.source_name), (*.width as u64) * (*.height as u64))]
    ImageTooLarge {
        /// File name or other label of the input, when known.
        source_name: Option<String>,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The configured limit.
        max_pixels: u64,
    },
    /// Decoding the image would take more memory than allowed: its pixel count is within
    /// the limit, but its sample depth and channels (a 16-bit RGBA PNG takes 8 bytes a
    /// pixel, plus the RGB8 copy) make the decoded buffers too large.
    #[error("image{} is {width}x{height} at {bytes_per_pixel} bytes per pixel: decoding it takes {bytes} bytes, over the limit of {max_bytes} (limits.max_decode_bytes)", origin(.source_name))]
    DecodeTooLarge {
        /// File name or other label of the input, when known.
        source_name: Option<String>,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Bytes per decoded pixel (channels x sample bytes).
        bytes_per_pixel: u8,
        /// Memory the decode would take.
        bytes: u64,
        /// The configured limit.
        max_bytes: u64,
    },
    /// A checkpoint could not be parsed at all (not a PyTorch or safetensors file, corrupt pickle).
    #[error("cannot read checkpoint {}: {reason}", .path.display())]
    CheckpointFormat {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A checkpoint parsed but its tensors do not fit the model.
    #[error("checkpoint {} does not fit the {variant} model: {report}", .path.display())]
    CheckpointMismatch {
        /// The file.
        path: PathBuf,
        /// The model variant it was loaded as.
        variant: String,
        /// Missing, unexpected and mis-shaped keys, by name.
        report: String,
    },
    /// The model card is missing or invalid.
    #[error("invalid model card {}: {reason}", .path.display())]
    Card {
        /// The card file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An attribute name or index the model does not know.
    #[error("unknown attribute {name:?}; the model knows: {}", .known.join(", "))]
    UnknownAttribute {
        /// What was asked for.
        name: String,
        /// The attribute names of the model.
        known: Vec<String>,
    },
    /// A device string that cannot be parsed or a device this build cannot use.
    #[error("device {requested:?}: {reason}")]
    Device {
        /// What was asked for.
        requested: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// A weights file is in none of the places searched for it.
    #[error("weights file {file} not found (searched {})", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    WeightsNotFound {
        /// The file name looked for.
        file: String,
        /// The directories searched, in order.
        searched: Vec<PathBuf>,
    },
    /// Invalid arguments or configuration (sizes, batch sizes, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A dataset file (labels, split lists) is malformed.
    #[error("{}:{line}: {reason}", .path.display())]
    Dataset {
        /// The file.
        path: PathBuf,
        /// 1-based line number (0 when the whole file is at fault).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// A feature cache file is unusable as asked (stale key, incomplete, corrupt).
    #[error("feature cache {}: {reason}", .path.display())]
    FeatureCache {
        /// The cache file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// I/O on a named file.
    #[error("{}: {cause}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (shown in the message, not repeated as a source).
        cause: std::io::Error,
    },
    /// The tensor library failed (a bug or resource exhaustion, not bad input).
    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

fn origin(source_name: &Option<String>) -> String {
    match source_name {
        Some(name) => format!(" {name}"),
        None => String::new(),
    }
}

impl ModelError {
    /// Whether the error is caused by the caller's input (image, checkpoint,
    /// attribute, argument) rather than by the library or the machine.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            ModelError::Candle(_) | ModelError::Io { .. } | ModelError::WeightsNotFound { .. }
        )
    }

    /// Attach a file name to an image error that has none.
    pub fn with_source_name(mut self, name: impl Into<String>) -> Self {
        match &mut self {
            ModelError::UnsupportedImage { source_name, .. }
            | ModelError::ImageDecode { source_name, .. }
            | ModelError::ImageTooLarge { source_name, .. }
            | ModelError::DecodeTooLarge { source_name, .. } => {
                source_name.get_or_insert_with(|| name.into());
            }
            _ => {}
        }
        self
    }

    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Result alias used throughout the crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_errors_name_their_source() {
        let e = ModelError::ImageTooLarge {
            source_name: None,
            width: 40000,
            height: 40000,
            max_pixels: 64_000_000,
        }
        .with_source_name("bomb.png");
        assert_eq!(
            e.to_string(),
            "image bomb.png is 40000x40000 = 1600000000 pixels, over the limit of 64000000"
        );
        assert!(e.is_input_error());
    }
}
