//! The command line: one `Command` variant per subcommand, one `Args` struct each.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Overrides;
use crate::telemetry::LogFormat;

/// asen: attribute-specific similarity search for fashion images.
///
/// Every command reads one configuration: defaults, then the TOML file of --config, then
/// ASEN_SECTION__KEY environment variables, then its flags.
#[derive(Debug, Parser)]
#[command(name = "asen", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML config file (sections server, limits, model, index, ingest, log, train).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Log format on stderr, pretty or json (level from RUST_LOG) [default: log.format].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
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
    /// Serve the REST API over a data directory until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Search a catalogue of a local data directory and print a table.
    Search(SearchArgs),
    /// Compare two images attribute by attribute (the copy check) and print a table.
    Compare(CompareArgs),
    /// Train a head (ASEN v1/v2, CSN, global) on a labelled dataset: on cached features
    /// of the frozen backbone, or end to end with --finetune (any device).
    Train(Box<TrainArgs>),
    /// Evaluate a model or a baseline with the ASEN retrieval protocol (per-attribute mAP),
    /// or the copy verdict on synthetic copies and look-alikes (--copies).
    Eval(EvalArgs),
    /// Fit a model's copy signature on copies of train images and calibrate its threshold
    /// on valid pairs; writes copy_signature.safetensors and the card entry.
    CopySignature(CopySignatureArgs),
    /// Re-embed a catalogue with another model from the crops it keeps, beside its current
    /// vectors, and switch when done (resumable: run it again after a kill).
    Reindex(ReindexArgs),
}

/// `asen reindex`.
#[derive(Debug, Args)]
pub struct ReindexArgs {
    /// Catalogue to re-embed.
    #[arg(long, short = 'c')]
    pub catalogue: String,
    /// The new model (`--model`): loaded here, or with --server the model the server holds
    /// (`asen serve --also-model`), named by its fingerprint.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Store selection (without --server).
    #[command(flatten)]
    pub store: StoreArgs,
    /// Ask a running server to do it (http://host:port) and follow its progress.
    #[arg(long)]
    pub server: Option<String>,
    /// API key sent with --server [default: server.api_key, ASEN_API_KEY].
    #[arg(long)]
    pub api_key: Option<String>,
}

/// Which store a command opens.
#[derive(Debug, Clone, Args, Default)]
pub struct StoreArgs {
    /// Data directory of the local store [default: index.data_dir, ./asen-data].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Store: local, or milvus://HOST:PORT[?db=NAME&token=KEY] (milvus+tls:// for TLS; needs
    /// the milvus feature) [default: index.store, local].
    #[arg(long)]
    pub store: Option<String>,
}

/// `asen serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store selection.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on; port 0 picks a free one [default: server.bind, 127.0.0.1:8080].
    #[arg(long)]
    pub bind: Option<String>,
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Another model to hold beside --model (repeatable): catalogues built with it keep
    /// answering image queries, and `asen reindex --server` can move a catalogue to it.
    #[arg(long = "also-model")]
    pub also_models: Vec<PathBuf>,
}

/// `asen search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Store selection.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Catalogue to search.
    #[arg(long, short = 'c')]
    pub catalogue: String,
    /// Attribute to search on; repeat as NAME=WEIGHT for a weighted search.
    #[arg(long = "attribute", short = 'a', required = true)]
    pub attributes: Vec<String>,
    /// Query image file.
    #[arg(long, conflicts_with = "item", required_unless_present = "item")]
    pub image: Option<PathBuf>,
    /// Query item id of the catalogue.
    #[arg(long)]
    pub item: Option<String>,
    /// Number of hits.
    #[arg(long, short = 'k', default_value_t = 10)]
    pub k: usize,
    /// Re-rank the hits by this attribute.
    #[arg(long)]
    pub rerank_by: Option<String>,
    /// Payload fields to show as columns (comma separated).
    #[arg(long, value_delimiter = ',')]
    pub show: Vec<String>,
}

/// `asen compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// First image (e.g. the original design).
    pub a: PathBuf,
    /// Second image (e.g. the suspected copy).
    pub b: PathBuf,
    /// Attributes to compare on (repeat; default all).
    #[arg(long = "attribute", short = 'a')]
    pub attributes: Vec<String>,
}

/// Where a model comes from and where it runs.
#[derive(Debug, Clone, Args, Default)]
pub struct ModelArgs {
    /// Model directory (card.json + model.safetensors) or official .pth[.gz]
    /// checkpoint [default: model.path, else the shipped model]
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Device: cpu, cuda[:N] or metal[:N] [default: model.device, cpu].
    #[arg(long)]
    pub device: Option<String>,
    /// Images per forward pass (per request with --server) [default: model.batch_size, 16].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Largest accepted image, in pixels (width x height as declared) [default: limits.max_pixels].
    #[arg(long)]
    pub max_pixels: Option<u64>,
}

impl ModelArgs {
    /// These flags as config overrides.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            model: self.model.clone(),
            device: self.device.clone(),
            batch_size: self.batch_size,
            max_pixels: self.max_pixels,
            ..Overrides::default()
        }
    }
}

impl StoreArgs {
    /// Add these flags to `overrides`.
    pub fn add_to(&self, overrides: Overrides) -> Overrides {
        Overrides {
            data_dir: self.data.clone(),
            store: self.store.clone(),
            ..overrides
        }
    }
}

/// `asen embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Model selection.
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
    /// Store selection.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Send the images to a running `asen serve` instead (http[s]://host:port)
    /// [default: ingest.server].
    #[arg(long, conflicts_with_all = ["data", "store"])]
    pub server: Option<String>,
    /// API key sent with --server [default: server.api_key, ASEN_API_KEY].
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds to wait for the server on each request [default: ingest.timeout_s, 120].
    #[arg(long)]
    pub timeout_s: Option<u64>,
    /// Model selection.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Threads reading and decoding images [default: ingest.threads, one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Most items written per store upsert (local) [default: ingest.upsert_batch, 256].
    #[arg(long)]
    pub upsert_batch: Option<usize>,
    /// Do not keep each item's model-input crop (224x224 JPEG, about 10 kB) in the
    /// store (local); explain by item and the item image route need it.
    #[arg(long, conflicts_with = "server")]
    pub no_thumbnails: bool,
    /// Largest image file read; larger files and anything but a regular file go to the
    /// report [default: ingest.max_file_bytes, 67108864].
    #[arg(long)]
    pub max_file_bytes: Option<u64>,
    /// Read images outside the image root (the CSV's folder or --image-root, or --dir):
    /// absolute paths, `..` and symlinks leading out [default: ingest.allow_outside_root].
    #[arg(long)]
    pub allow_outside_root: bool,
    /// Where failed rows and images are listed (CSV, or JSON lines for a .jsonl name)
    /// [default: <catalogue>.ingest-report.csv].
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    pub quiet: bool,
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

/// `asen train`. Flags override the `[train]` section of the `--config` file, whose keys
/// are the flag names with underscores (`data = "labels.csv"`, `head = "asen_v2"`).
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The dataset.
    #[command(flatten)]
    pub data: DataArgs,
    /// Output folder: best/ and last/ model directories [required here or in the config].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Extend this model directory (an asen_v2 model on a frozen backbone) with the
    /// dataset's attributes, all new to it: only their rows of the head's attribute
    /// embedding are trained, every other weight stays the base model's, so a catalogue it
    /// built can take the new attributes alone (POST /v1/catalogues/{c}/attributes). The
    /// base fixes backbone, head, sizes, input size and colour histogram.
    #[arg(long, value_name = "MODEL_DIR")]
    pub extend: Option<PathBuf>,
    /// Backbone: mobilenet_v2 or efficientnet_lite0, frozen (or fine-tuned with
    /// --finetune) [default: mobilenet_v2].
    #[arg(long)]
    pub backbone: Option<String>,
    /// Head: asen_v1, asen_v2, csn or global [default: asen_v2].
    #[arg(long)]
    pub head: Option<String>,
    /// Embedding size [default: 128].
    #[arg(long)]
    pub dim: Option<usize>,
    /// asen_v2 only: no final projection; the embedding is the attended,
    /// gated feature map channels (C values, e.g. 1341), `--dim` is ignored.
    #[arg(long)]
    pub no_feature_fc: bool,
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
    /// Triplet sampling: paper (values uniform, as the paper's code) or
    /// image-uniform (values as often as they occur) [default: paper].
    #[arg(long)]
    pub sampling: Option<String>,
    /// Negatives of the loss: sampled (each triplet's own, as the paper) or
    /// batch-all (every image of the batch embedded for the same attribute
    /// with another value) [default: sampled].
    #[arg(long)]
    pub negatives: Option<String>,
    /// Append the per-cell colour histogram (61 CIELab bins) to the backbone's
    /// feature map: the frozen ImageNet layer keeps little colour.
    #[arg(long)]
    pub colour_histogram: bool,
    /// Put the feature map on MobileNetV2's 14x14 stride-16 grid and train a
    /// second ASEN v2 head on that stage's own channels (and the colour
    /// histogram), so the spatial attention can find small regions
    /// (asen_v2 on mobilenet_v2 only; docs/results.md "Region attention").
    #[arg(long)]
    pub fine_map: bool,
    /// Weight of a prior that keeps at least 0.9 of each attribute's
    /// attention on the garment (cells unlike the photo's border colour);
    /// 0 (the default) leaves the attention to the ranking loss
    /// (docs/results.md "Region attention").
    #[arg(long, value_name = "WEIGHT")]
    pub garment_prior: Option<f64>,
    /// Let the shown attention (the fine head's with --fine-map) learn a
    /// bias per attribute and map cell: where each attribute tends to be in
    /// the photo, learnt from the ranking loss (asen_v2 only; the model then
    /// embeds at its own input size only; docs/results.md "A position bias").
    #[arg(long)]
    pub position_bias: bool,
    /// Fine-tune the backbone (mobilenet_v2 or efficientnet_lite0) and the head
    /// end to end on the images instead of training the head on cached features.
    #[arg(long)]
    pub finetune: bool,
    /// With --finetune: the backbone's learning rate as a fraction of the
    /// head's [default: 0.1].
    #[arg(long)]
    pub backbone_lr_scale: Option<f64>,
    /// With --finetune: no random horizontal flips of the training images.
    #[arg(long)]
    pub no_flip: bool,
    /// With --finetune: keep the backbone's BatchNorm in eval mode (ImageNet
    /// running statistics, affine parameters trained) instead of batch statistics.
    #[arg(long)]
    pub freeze_batch_norm: bool,
    /// Device: cpu, or with --finetune also cuda[:N] (a build with
    /// `--features cuda`) or metal[:N] (`--features metal`).
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
    /// The dataset.
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
    /// Evaluate the copy verdict instead: copies of the split's images (rescaled 0.6-1.4,
    /// cropped to >= 70 % of the area, padded <= 10 %, flipped half the time, JPEG 60-95,
    /// brightness within 10 %) against look-alikes (same --group-by labels).
    #[arg(long)]
    pub copies: bool,
    /// Copy and look-alike pairs drawn with --copies.
    #[arg(long, default_value_t = 600)]
    pub pairs: usize,
    /// Seed of the pairs and copies drawn with --copies.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Attributes whose shared labels make a look-alike (--copies).
    #[arg(long, value_delimiter = ',', default_value = "articleType,baseColour")]
    pub group_by: Vec<String>,
}

/// `asen copy-signature`.
#[derive(Debug, Args)]
pub struct CopySignatureArgs {
    /// Model directory to add the signature to [default: the shipped model].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The dataset (train and valid splits are used; test is never read).
    #[command(flatten)]
    pub data: DataArgs,
    /// Attributes whose shared labels make a look-alike (the hard negatives).
    #[arg(long, value_delimiter = ',', default_value = "articleType,baseColour")]
    pub group_by: Vec<String>,
    /// Train anchors.
    #[arg(long, default_value_t = 3000)]
    pub anchors: usize,
    /// Copies per train anchor.
    #[arg(long, default_value_t = 2)]
    pub copies_per_anchor: usize,
    /// Passes over the train pairs.
    #[arg(long, default_value_t = 60)]
    pub epochs: usize,
    /// Seed of anchors, copies, negatives and the initial projection.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Command {
    /// The flags of this command that override the configuration.
    pub fn overrides(&self) -> Overrides {
        match self {
            Command::Embed(a) => a.model.overrides(),
            Command::Compare(a) => a.model.overrides(),
            Command::Search(a) => a.store.add_to(a.model.overrides()),
            Command::Reindex(a) => Overrides {
                api_key: a.api_key.clone(),
                ..a.store.add_to(a.model.overrides())
            },
            Command::Serve(a) => Overrides {
                bind: a.bind.clone(),
                also_models: a.also_models.clone(),
                ..a.store.add_to(a.model.overrides())
            },
            Command::Ingest(a) => Overrides {
                thumbnails: a.no_thumbnails.then_some(false),
                api_key: a.api_key.clone(),
                ingest_server: a.server.clone(),
                ingest_threads: a.threads,
                upsert_batch: a.upsert_batch,
                timeout_s: a.timeout_s,
                max_file_bytes: a.max_file_bytes,
                allow_outside_root: a.allow_outside_root.then_some(true),
                ..a.store.add_to(a.model.overrides())
            },
            Command::Eval(a) => Overrides {
                model: a.model.clone(),
                ..Overrides::default()
            },
            Command::CopySignature(a) => Overrides {
                model: a.model.clone(),
                ..Overrides::default()
            },
            Command::Inspect(_) | Command::Convert(_) | Command::Train(_) => Overrides::default(),
        }
    }
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
