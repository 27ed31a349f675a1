//! asen as a library: the CLI's commands, the REST API, bulk ingestion and the service
//! layer over `asen-models` (the network) and `asen-index` (the store).
//!
//! The binary (`src/main.rs`) parses the command line, loads one [`config::Config`] and calls
//! [`run`]. Tests build the same app in process: [`api::router`] over an [`api::AppState`]
//! made from a [`service::Service`], served on `127.0.0.1:0`.
//!
//! ```text
//! main --> commands::<cmd>::run(args, &config)
//!            |-- serve:   api::router --> routes::<resource> --> service::<fn> --> store / models
//!            |-- ingest:  ingest::pipeline --> Sink: LocalSink --> service::items
//!            |                                      RemoteSink --> HTTP --> (server) service::items
//!            `-- search, compare, embed, eval, train, inspect, convert
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ingest;
pub mod service;
pub mod telemetry;

use crate::cli::Command;
use crate::config::Config;

/// Run one command under `config` (loaded once, with the command's flags applied).
pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Embed(args) => commands::embed::run(args, config),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Ingest(args) => commands::ingest::run(*args, config),
        Command::Serve(_) => commands::serve::run(config),
        Command::Search(args) => commands::search::run(args, config),
        Command::Compare(args) => commands::compare::run(args, config),
        Command::Train(args) => commands::train::run(*args, config),
        Command::Eval(args) => commands::eval::run(args, config),
        Command::CopySignature(args) => commands::copies::run(args, config),
        Command::Reindex(args) => commands::reindex::run(args, config),
    }
}
