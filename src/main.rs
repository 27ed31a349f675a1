//! The `asen` binary: parse the command line, load the configuration once, run the command.

use std::process::ExitCode;

use asen::cli::Cli;
use asen::config::{Config, Overrides};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        log_format: cli.log_format,
        ..cli.command.overrides()
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(config) => config,
        Err(err) => return fail(&anyhow::Error::new(err)),
    };
    asen::telemetry::init(config.log.format);
    match asen::run(cli.command, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

/// One line, the whole chain ("cannot load model x: checkpoint x: ..."), exit code 2.
fn fail(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(2)
}
