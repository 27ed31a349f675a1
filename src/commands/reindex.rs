//! `asen reindex`: re-embed a catalogue with another model from the crops it keeps, here
//! over a data directory no server holds, or by a running server (`--server`), showing
//! progress with rate and ETA either way.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::Needs;
use crate::cli::ReindexArgs;
use crate::config::Config;
use crate::ingest::RemoteClient;
use crate::service::lifecycle::{self, Progress};
use crate::service::models::fingerprint_files;

/// How often the bar is redrawn, and a server asked for its status.
const POLL: Duration = Duration::from_millis(500);
/// How often progress is logged when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// Run `asen reindex`.
pub fn run(args: ReindexArgs, config: &Config) -> anyhow::Result<()> {
    match &args.server {
        Some(url) => remote(&args, url, config),
        None => local(&args, config),
    }
}

fn bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} {bar:30} {pos}/{len} items  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn show(bar: &ProgressBar, pass: u64, done: u64, total: u64, rate: f64, eta: Option<f64>) {
    bar.set_prefix(format!("pass {pass}"));
    bar.set_length(total);
    bar.set_position(done);
    let eta = eta.map_or("-".to_string(), |s| format!("{s:.0} s"));
    bar.set_message(format!("{rate:.1} items/s  eta {eta}"));
}

/// In this process: the store opened here, the new model as the default. Fills are not
/// flushed one by one (a killed run redoes what was lost: the migration resumes from the
/// store); the switch flushes, and so does the end of the command.
fn local(args: &ReindexArgs, config: &Config) -> anyhow::Result<()> {
    let mut config = config.clone();
    config.index.flush_writes = false;
    let config = &config;
    let svc = super::open_service(
        config,
        Needs {
            store: true,
            model: true,
        },
    )?;
    let fingerprint = svc.model("a reindex")?.fingerprint().to_string();
    let migration = lifecycle::begin_reindex(&svc, &args.catalogue, &fingerprint)?;
    let progress = Arc::new(Progress::new(&fingerprint));
    let bar = bar();
    let watcher = {
        let (progress, bar) = (Arc::clone(&progress), bar.clone());
        // Without a terminal the bar draws nothing: progress goes to the log instead.
        let logged = !std::io::stderr().is_terminal();
        std::thread::spawn(move || {
            let mut last_log = std::time::Instant::now();
            while progress.state() == lifecycle::JobState::Running {
                let s = progress.status("");
                show(&bar, s.passes, s.done, s.total, s.items_per_s, s.eta_s);
                if logged && last_log.elapsed() >= LOG_EVERY {
                    last_log = std::time::Instant::now();
                    tracing::info!(
                        pass = s.passes,
                        done = s.done,
                        total = s.total,
                        items_per_s = format!("{:.1}", s.items_per_s),
                        eta_s = s.eta_s.map(|e| format!("{e:.0}")),
                        "reindex progress"
                    );
                }
                std::thread::sleep(POLL);
            }
        })
    };
    let result = lifecycle::run_migration(&svc, &args.catalogue, &progress);
    progress.finish(&result);
    let _ = watcher.join();
    bar.finish_and_clear();
    let schema = result?;
    if let Some(store) = svc.store_handle() {
        store.flush().context("cannot flush the store")?;
    }
    println!(
        "catalogue {:?} now holds model {}'s vectors: {} attributes re-embedded, {} items at {:.1} items/s",
        args.catalogue,
        migration.target.fingerprint,
        migration.staged.len(),
        svc.store("a reindex")?.count(&args.catalogue)?,
        progress.rate()
    );
    debug_assert!(schema.migration.is_none());
    Ok(())
}

/// By a running server: start (or resume) there, then follow its status until it ends.
fn remote(args: &ReindexArgs, url: &str, config: &Config) -> anyhow::Result<()> {
    let path = config.model_path();
    let fingerprint = fingerprint_files(&path)
        .with_context(|| format!("cannot fingerprint model {}", path.display()))?;
    let client = RemoteClient::new(
        url,
        config.server.api_key.clone(),
        Duration::from_secs(config.ingest.timeout_s),
    )?;
    client.reindex(&args.catalogue, Some(&fingerprint))?;
    let bar = bar();
    loop {
        let status = client.reindex(&args.catalogue, None)?;
        let n = |k: &str| status.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
        let state = status
            .pointer("/state/state")
            .and_then(|v| v.as_str())
            .unwrap_or("unknown")
            .to_string();
        show(
            &bar,
            n("passes"),
            n("done"),
            n("total"),
            status
                .get("items_per_s")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0),
            status.get("eta_s").and_then(|v| v.as_f64()),
        );
        match state.as_str() {
            "running" => std::thread::sleep(POLL),
            "done" => {
                bar.finish_and_clear();
                println!(
                    "catalogue {:?} now holds model {fingerprint}'s vectors (server {url})",
                    args.catalogue
                );
                return Ok(());
            }
            "failed" => {
                bar.finish_and_clear();
                let error = status
                    .pointer("/state/error")
                    .and_then(|v| v.as_str())
                    .unwrap_or("unknown error");
                anyhow::bail!(
                    "the reindex of {:?} failed on the server: {error}",
                    args.catalogue
                );
            }
            other => {
                bar.finish_and_clear();
                anyhow::bail!(
                    "the server reports the reindex of {:?} as {other:?}; run the command again to resume it",
                    args.catalogue
                );
            }
        }
    }
}
