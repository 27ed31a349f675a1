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
    /// Train a head (ASEN v1/v2, CSN, global) on a labelled dataset (frozen backbone, cached features).
    Train(TrainArgs),
    /// Evaluate a model or a baseline with the ASEN retrieval protocol (per-attribute mAP).
    Eval(EvalArgs),
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

/// A labelled dataset: a CSV file or an official ASEN split folder.
#[derive(Debug, Clone, Args, Default)]
pub struct DataArgs {
    /// Dataset: a CSV file (path, split and attribute columns) or a folder in the official ASEN layout.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Dataset layout: csv or official [default: csv for a file, official for a folder].
    #[arg(long)]
    pub format: Option<String>,
    /// CSV attribute columns, comma separated, in attribute-id order.
    #[arg(long, value_delimiter = ',')]
    pub attributes: Vec<String>,
    /// CSV column holding the image path (relative to the CSV's folder) [default: path].
    #[arg(long)]
    pub path_column: Option<String>,
    /// CSV column holding train / valid / test [default: split].
    #[arg(long)]
    pub split_column: Option<String>,
    /// Seed of the 1:4 query/candidate draw of a CSV's valid and test splits [default: 0].
    #[arg(long)]
    pub probe_seed: Option<u64>,
    /// Feature cache file [default: <out or .>/features-<backbone>-<size>.bin].
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// `asen train`. Flags override the `--config` file, whose keys are the
/// flag names with underscores (`{"data": "labels.csv", "head": "asen_v2", "epochs": 10}`).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// JSON file of settings (keys: the long flag names, with underscores).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder: best/ and last/ model directories [required here or in the config].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Frozen backbone: mobilenet_v2 or efficientnet_lite0 [default: mobilenet_v2].
    #[arg(long)]
    pub backbone: Option<String>,
    /// Head: asen_v1, asen_v2, csn or global [default: asen_v2].
    #[arg(long)]
    pub head: Option<String>,
    /// Embedding size [default: 128].
    #[arg(long)]
    pub dim: Option<usize>,
    /// Attention branch width of the ASEN heads [default: 256].
    #[arg(long)]
    pub attention_dim: Option<usize>,
    /// Channel-gate hidden width of the ASEN heads [default: 256].
    #[arg(long)]
    pub gate_hidden: Option<usize>,
    /// Square input side in pixels [default: 224].
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Epochs [default: 10].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Triplets drawn per epoch [default: 20000].
    #[arg(long)]
    pub triplets_per_epoch: Option<usize>,
    /// Triplets per optimiser step [default: 64].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Adam learning rate of the first epochs [default: 1e-4].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Learning-rate multiplier at each decay step [default: 0.5].
    #[arg(long)]
    pub lr_decay: Option<f64>,
    /// Epochs between decay steps [default: 4].
    #[arg(long)]
    pub lr_step: Option<usize>,
    /// Margin of the cosine ranking loss [default: 0.2].
    #[arg(long)]
    pub margin: Option<f64>,
    /// Seed of the initialisation and the triplets [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Continue from <out>/last/ (optimizer-free: Adam restarts).
    #[arg(long)]
    pub resume: bool,
    /// Device: only cpu trains here (frozen backbone); cuda fine-tuning is not implemented.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `asen eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory or checkpoint [default: the shipped model unless --baseline is given].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Evaluate a baseline instead of a model: imagenet (pooled backbone features) or random.
    #[arg(long)]
    pub baseline: Option<String>,
    /// Backbone of the imagenet baseline.
    #[arg(long, default_value = "mobilenet_v2")]
    pub backbone: String,
    #[command(flatten)]
    pub data: DataArgs,
    /// Split: valid or test.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Calibrate the model's copy-check thresholds on this split (use valid)
    /// and write them into its card.json (models trained by asen train).
    #[arg(long)]
    pub write_thresholds: bool,
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
