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

use std::path::{Path, PathBuf};

use anyhow::Context;
use asen_models::{Embedder, EmbedderOptions, PreprocessConfig, CARD_FILE};

use crate::cli::ModelArgs;

/// Name of the environment variable that overrides the default model directory.
const MODEL_DIR_ENV: &str = "ASEN_MODEL_DIR";

/// The model directory used when none is given: `$ASEN_MODEL_DIR`, else
/// `default/` next to the executable, else `models/default/` of this source tree.
// TODO(config): moves into the config module.
pub(crate) fn default_model_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let beside_exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("default")))
        .filter(|d| d.join(CARD_FILE).is_file());
    beside_exe
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")))
}

/// Where the shipped ImageNet backbone weights are looked for, in order:
/// `weights/` next to the executable, the executable's directory, then
/// `models/weights/` of this source tree (tests, examples, `cargo run`).
// TODO(config): moves into the config module.
pub(crate) fn weights_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.join("weights"));
        dirs.push(exe_dir);
    }
    dirs.push(PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/weights"
    )));
    dirs
}

/// Load the model named by `args` (or the shipped default) on its device.
pub fn load_embedder(args: &ModelArgs) -> anyhow::Result<Embedder> {
    let device = asen_models::parse_device(&args.device)?;
    let path = args.model.clone().unwrap_or_else(default_model_dir);
    let opts = EmbedderOptions {
        device,
        batch_size: args.batch_size,
        preprocess: PreprocessConfig {
            max_pixels: args.max_pixels,
            ..PreprocessConfig::default()
        },
        weights_dirs: weights_dirs(),
    };
    Embedder::load(&path, &opts).with_context(|| format!("cannot load model {}", path.display()))
}
