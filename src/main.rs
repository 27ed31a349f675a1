//! The `asen` binary: CLI, REST API and bulk ingestion over `asen-models`
//! (the network) and `asen-index` (the store).

mod api;
mod cli;
mod commands;
mod config;
mod ingest;
mod service;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, the whole chain: "cannot load model x: checkpoint x: ...".
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Embed(args) => commands::embed::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Ingest(args) => commands::ingest::run(*args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Search(args) => commands::search::run(args),
        Command::Compare(args) => commands::compare::run(args),
        Command::Train(args) => commands::train::run(*args),
        Command::Eval(args) => commands::eval::run(args),
    }
}
