//! The command line: one `Command` variant per subcommand, one `Args` struct each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// asen: attribute-specific similarity search for fashion images.
#[derive(Debug, Parser)]
#[command(name = "asen", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr (level from RUST_LOG).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "ASEN_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed images for one or more attributes and print JSON.
    Embed(EmbedArgs),
    /// Describe a model directory or checkpoint (variant, attributes, parameters).
    Inspect(InspectArgs),
    /// Convert an official PyTorch checkpoint into an asen model directory.
    Convert(ConvertArgs),
    /// Load a CSV or a folder of images into a catalogue (local store or running server).
    Ingest(Box<IngestArgs>),
}

/// Where a model comes from and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Model directory (card.json + model.safetensors) or official .pth[.gz]
    /// checkpoint [default: the shipped model]
    #[arg(long, env = "ASEN_MODEL")]
    pub model: Option<PathBuf>,
    /// Device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu", env = "ASEN_DEVICE")]
    pub device: String,
    /// Images per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Largest accepted image, in pixels (width x height as declared).
    #[arg(long, default_value_t = asen_models::PreprocessConfig::DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
}

/// `asen embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Attribute name (repeat for several; default: every attribute of the model).
    #[arg(long = "attribute", short = 'a')]
    pub attributes: Vec<String>,
    /// Include the spatial attention map of each embedding.
    #[arg(long)]
    pub attention: bool,
    /// Image files (JPEG, PNG, WebP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `asen inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Model directory or checkpoint file.
    pub model: PathBuf,
}

/// `asen convert`.
#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// Official checkpoint (.pth, .pth.gz; legacy or zip format).
    pub input: PathBuf,
    /// Output model directory.
    pub output: PathBuf,
    /// Attribute names in index order, comma separated (default attr_0, attr_1, ...).
    #[arg(long, value_delimiter = ',')]
    pub attributes: Vec<String>,
    /// Backbone the checkpoint was trained with.
    #[arg(long, default_value = "resnet50_layer3")]
    pub backbone: String,
    /// Input side in pixels.
    #[arg(long, default_value_t = 224)]
    pub input_size: u32,
}

/// `asen ingest`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["csv", "dir"])))]
pub struct IngestArgs {
    /// Catalogue to fill (created from the model card if missing).
    #[arg(long)]
    pub catalogue: String,
    /// CSV with a header row: one image per row.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Relative CSV image paths are resolved against this [default: the CSV's folder].
    #[arg(long, requires = "csv")]
    pub image_root: Option<PathBuf>,
    /// CSV column holding the item id.
    #[arg(long, default_value = "id", requires = "csv")]
    pub id_column: String,
    /// CSV column holding the image path.
    #[arg(long, default_value = "path", requires = "csv")]
    pub path_column: String,
    /// CSV columns stored as the payload, comma separated [default: all but id and path].
    #[arg(long, value_delimiter = ',', requires = "csv")]
    pub payload_columns: Vec<String>,
    /// Folder of images (recursive; id = relative path without extension).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Local store directory.
    #[arg(
        long,
        default_value = "./asen-data",
        env = "ASEN_DATA",
        conflicts_with = "server"
    )]
    pub data: PathBuf,
    /// Send the images to a running `asen serve` instead (http://host:port).
    #[arg(long)]
    pub server: Option<String>,
    /// API key for --server.
    #[arg(long, env = "ASEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds to wait for the server on each request.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Threads reading and decoding images [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most items written per store upsert (local).
    #[arg(long, default_value_t = 256)]
    pub upsert_batch: usize,
    /// Where failed rows and images are listed (CSV, or JSON lines for a .jsonl name)
    /// [default: <catalogue>.ingest-report.csv].
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
