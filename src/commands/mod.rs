//! One module per subcommand; each exposes `run(args)`.

pub mod compare;
pub mod convert;
pub mod embed;
pub mod eval;
pub mod ingest;
pub mod inspect;
pub mod search;
pub mod serve;
pub mod train;

use anyhow::Context;
use asen_models::{Embedder, EmbedderOptions, PreprocessConfig};

use crate::cli::ModelArgs;

/// Load the model named by `args` (or the shipped default) on its device.
pub fn load_embedder(args: &ModelArgs) -> anyhow::Result<Embedder> {
    let device = asen_models::parse_device(&args.device)?;
    let path = args
        .model
        .clone()
        .unwrap_or_else(asen_models::default_model_dir);
    let opts = EmbedderOptions {
        device,
        batch_size: args.batch_size,
        preprocess: PreprocessConfig {
            max_pixels: args.max_pixels,
            ..PreprocessConfig::default()
        },
        weights_dir: None,
    };
    Embedder::load(&path, &opts).with_context(|| format!("cannot load model {}", path.display()))
}
