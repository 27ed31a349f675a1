//! `asen ingest`: load a CSV or a folder of images into a catalogue, locally or on a server.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use asen_index::{CatalogueSchema, CatalogueStore, IndexError, LocalStore, StoreOptions};
use asen_models::{Embedder, PreprocessConfig};

use crate::cli::IngestArgs;
use crate::ingest::{
    ingest, read_dir, CsvSource, Destination, PipelineConfig, RemoteClient, ReportWriter,
};
use crate::service::thumbnails::Thumbnails;

/// Runs one ingestion and prints the summary line on stdout.
pub fn run(args: IngestArgs) -> anyhow::Result<()> {
    if args.model.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
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
        }
        .read()?,
        (None, Some(dir)) => read_dir(dir)?,
        _ => bail!("give exactly one of --csv FILE and --dir DIR"),
    };
    let report_path = args
        .report
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}.ingest-report.csv", args.catalogue)));
    let report = ReportWriter::create(&report_path)?;
    let config = PipelineConfig {
        batch_size: args.model.batch_size,
        prepare_threads: args
            .threads
            .unwrap_or_else(|| PipelineConfig::default().prepare_threads),
        upsert_batch: args.upsert_batch,
        progress: !args.quiet,
    };
    tracing::info!(
        catalogue = %args.catalogue,
        rows = records.total(),
        rejected = records.rejected.len(),
        "ingestion starts"
    );
    let summary = match &args.server {
        Some(url) => {
            let client = RemoteClient::new(
                url,
                args.api_key.clone(),
                Duration::from_secs(args.timeout_s),
            )?;
            client.ensure_catalogue(&args.catalogue)?;
            let preprocess = PreprocessConfig {
                max_pixels: args.model.max_pixels,
                ..PreprocessConfig::default()
            };
            let destination = Destination::Remote {
                client: &client,
                preprocess,
            };
            ingest(records, &args.catalogue, destination, &config, report)?
        }
        None => {
            let embedder = super::load_embedder(&args.model)?;
            let store = LocalStore::open(&args.data, StoreOptions::default())
                .with_context(|| format!("cannot open store {}", args.data.display()))?;
            ensure_catalogue(&store, &args.catalogue, &embedder)?;
            let thumbnails =
                Thumbnails::open(&args.data, !args.no_thumbnails).with_context(|| {
                    format!("cannot open the thumbnails of {}", args.data.display())
                })?;
            let destination = Destination::Local {
                store: &store,
                embedder: &embedder,
                thumbnails: Some(&thumbnails),
            };
            let summary = ingest(records, &args.catalogue, destination, &config, report)?;
            store
                .checkpoint()
                .with_context(|| format!("cannot save the graphs of {}", args.data.display()))?;
            thumbnails.flush().with_context(|| {
                format!("cannot flush the thumbnails of {}", args.data.display())
            })?;
            summary
        }
    };
    tracing::info!(
        catalogue = %args.catalogue,
        ingested = summary.ingested,
        skipped = summary.skipped,
        failed = summary.failed,
        "ingestion done"
    );
    println!("{}", summary.line());
    Ok(())
}

/// Creates the catalogue with the model's attributes and dimension, or checks that an
/// existing one has them.
fn ensure_catalogue(store: &LocalStore, name: &str, embedder: &Embedder) -> anyhow::Result<()> {
    let card = embedder.card();
    let attributes = card.attribute_names();
    match store.schema(name) {
        Ok(schema) => {
            if schema.attributes != attributes || schema.dimension != card.embedding_dim {
                bail!(
                    "catalogue {name:?} has attributes [{}] of dimension {}, the model embeds [{}] of dimension {}",
                    schema.attributes.join(", "),
                    schema.dimension,
                    attributes.join(", "),
                    card.embedding_dim
                );
            }
            Ok(())
        }
        Err(IndexError::CatalogueNotFound { .. }) => {
            store
                .create_catalogue(name, &CatalogueSchema::new(attributes, card.embedding_dim))
                .with_context(|| format!("cannot create catalogue {name:?}"))?;
            tracing::info!(catalogue = name, "catalogue created from the model card");
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("cannot read catalogue {name:?}")),
    }
}
