//! `asen ingest`: load a CSV or a folder of images into a catalogue, through the local
//! service or a running server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use asen_models::PreprocessConfig;

use super::Needs;
use crate::cli::IngestArgs;
use crate::config::{Config, ReaderPriority};
use crate::ingest::{
    ingest, read_dir, CsvSource, LocalSink, PipelineConfig, Records, RemoteClient, RemoteSink,
    ReportWriter, Sink,
};

/// Runs one ingestion and prints the summary line on stdout.
pub fn run(args: IngestArgs, config: &Config) -> anyhow::Result<()> {
    // Read the whole source first: a missing file or unknown column stops here, before the
    // model or the store is touched.
    let records = match (&args.csv, &args.dir) {
        (Some(csv), None) => CsvSource {
            file: csv.clone(),
            image_root: args.image_root.clone(),
            id_column: args.id_column.clone(),
            path_column: args.path_column.clone(),
            payload_columns: (!args.payload_columns.is_empty())
                .then(|| args.payload_columns.clone()),
            allow_outside_root: config.ingest.allow_outside_root,
        }
        .read()?,
        (None, Some(dir)) => read_dir(dir, config.ingest.allow_outside_root)?,
        _ => bail!("give exactly one of --csv FILE and --dir DIR"),
    };
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ingest-report.csv", args.catalogue)));
    let report = ReportWriter::create(&report_path)?;
    let pipeline = PipelineConfig {
        prepare_threads: match config.ingest.threads {
            0 => PipelineConfig::default().prepare_threads,
            n => n,
        },
        progress: !args.quiet,
        max_file_bytes: config.ingest.max_file_bytes,
        idle_readers: config.ingest.reader_priority == ReaderPriority::Idle,
    };
    tracing::info!(
        catalogue = %args.catalogue,
        rows = records.total(),
        rejected = records.rejected.len(),
        "ingestion starts"
    );
    match &config.ingest.server {
        Some(url) => {
            let client = RemoteClient::new(
                url,
                config.server.api_key.clone(),
                Duration::from_secs(config.ingest.timeout_s),
            )?;
            let preprocess = PreprocessConfig {
                max_pixels: config.limits.max_pixels,
                max_decode_bytes: config.limits.max_decode_bytes,
                ..PreprocessConfig::default()
            };
            let sink = RemoteSink::new(client, preprocess, config.model.batch_size);
            run_with(&sink, records, &args.catalogue, &pipeline, report)
        }
        None => {
            let service = super::open_service(
                config,
                Needs {
                    store: true,
                    model: true,
                },
            )?;
            let sink = LocalSink::new(service, config.ingest.upsert_batch);
            run_with(&sink, records, &args.catalogue, &pipeline, report)
        }
    }
}

fn run_with(
    sink: &impl Sink,
    records: Records,
    catalogue: &str,
    pipeline: &PipelineConfig,
    report: ReportWriter,
) -> anyhow::Result<()> {
    sink.ensure_catalogue(catalogue)?;
    let summary = ingest(records, catalogue, sink, pipeline, report)?;
    tracing::info!(
        catalogue,
        ingested = summary.ingested,
        skipped = summary.skipped,
        failed = summary.failed,
        "ingestion done"
    );
    println!("{}", summary.line());
    println!("{}", summary.stages_line());
    Ok(())
}
