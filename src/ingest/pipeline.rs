//! The ingestion pipeline: parallel read + hash + decode, batched inference, batched writes.
//!
//! ```text
//! records --[N prepare threads: read, sha256, skip check, decode, crop, thumbnail JPEG]--> bounded channel
//!   --[this thread: batches of `batch_size`, Embedder forward, all attributes at once]--> bounded channel
//!   --[writer thread: upsert batches into the store (then their thumbnails), or PUT them to a server]
//! ```
//!
//! Items whose stored content hash equals the sha256 of their image bytes are skipped before
//! decoding, which makes a re-run a no-op and an interrupted run resumable. Rows and images that
//! fail go to the report and the run continues; storage and transport failures stop it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use asen_index::{CatalogueStore, ErrorKind, Item, MAX_BATCH_ITEMS};
use asen_models::{decode_image, resize_and_crop, Embedder, PreprocessConfig};
use base64::Engine;
use image::RgbImage;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use super::remote::{RemoteClient, RemoteItem};
use super::report::{Failure, ReportWriter};
use super::source::{Record, Records};
use crate::service::thumbnails::{self, Thumbnails};

/// Pipeline knobs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Images per forward pass (local) or per PUT request (remote).
    pub batch_size: usize,
    /// Threads reading, hashing and decoding images.
    pub prepare_threads: usize,
    /// Most items per store upsert (local); several inference batches are grouped.
    pub upsert_batch: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            batch_size: 16,
            prepare_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            upsert_batch: 256,
            progress: true,
        }
    }
}

/// Where items go.
pub enum Destination<'a> {
    /// Embed here and upsert into a store.
    Local {
        /// The store (the catalogue must exist with the model's schema).
        store: &'a dyn CatalogueStore,
        /// The model.
        embedder: &'a Embedder,
        /// Where each item's model-input crop is kept (JPEG), when given; with thumbnails
        /// disabled, stale ones of re-written items are removed.
        thumbnails: Option<&'a Thumbnails>,
    },
    /// Send images to a running server, which embeds them.
    Remote {
        /// Client of the server.
        client: &'a RemoteClient,
        /// Decoding limits used to reject bad images before sending them.
        preprocess: PreprocessConfig,
    },
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestSummary {
    /// Rows in the source.
    pub total: u64,
    /// Items written.
    pub ingested: u64,
    /// Items already stored with the same image hash.
    pub skipped: u64,
    /// Rows and images in the report.
    pub failed: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Time spent in the model's forward passes; `None` when a server embeds.
    pub model_time: Option<Duration>,
    /// The report file.
    pub report: PathBuf,
}

impl IngestSummary {
    /// Items written per second of wall time.
    pub fn items_per_second(&self) -> f64 {
        self.ingested as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Share of the wall time spent in the model, 0..=1 (`None` when a server embeds).
    pub fn model_share(&self) -> Option<f64> {
        self.model_time
            .map(|t| (t.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9)).min(1.0))
    }

    /// The one-line summary printed at the end of a run.
    pub fn line(&self) -> String {
        format!(
            "ingested {}, skipped {}, failed {} of {} rows in {:.1} s ({:.1} items/s, {}){}",
            self.ingested,
            self.skipped,
            self.failed,
            self.total,
            self.elapsed.as_secs_f64(),
            self.items_per_second(),
            match self.model_share() {
                Some(share) => format!("model {:.1}% of the time", 100.0 * share),
                None => "embedded by the server".to_string(),
            },
            if self.failed > 0 {
                format!("; failures listed in {}", self.report.display())
            } else {
                String::new()
            }
        )
    }
}

enum DestinationKind {
    Local,
    Remote,
}

/// The image of a prepared item, in the form its destination needs.
enum Content {
    /// The crop, and its JPEG when thumbnails are stored.
    Crop(RgbImage, Option<Vec<u8>>),
    Base64(String),
}

enum Prepared {
    Skipped,
    Failed(Failure),
    Ready {
        index: usize,
        hash: String,
        content: Content,
    },
    /// The destination cannot be read: stop the run.
    Fatal(anyhow::Error),
}

enum WriteBatch {
    /// Items with their thumbnails (JPEG) when stored.
    Local(Vec<(usize, Item, Option<Vec<u8>>)>),
    Remote(Vec<(usize, RemoteItem)>),
}

/// Lowercase hex sha256 of `bytes`: the content hash stored with each item.
pub fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn failure(record: &Record, reason: String) -> Failure {
    Failure {
        row: record.row,
        id: record.id.to_string(),
        path: record.path.display().to_string(),
        reason,
    }
}

fn progress_bar(total: u64, enabled: bool) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{bar:40} {pos}/{len} items  {rate}  ETA {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.1} items/s", state.per_sec());
            },
        );
    bar.set_style(style);
    bar
}

/// Ingests `records` into `catalogue` at `destination`, writing failures to `report`.
///
/// Returns the summary when the run completes (even with failed rows); an error only when the
/// destination fails (storage, model or transport), after stopping every thread.
pub fn ingest(
    records: Records,
    catalogue: &str,
    destination: Destination<'_>,
    config: &PipelineConfig,
    mut report: ReportWriter,
) -> anyhow::Result<IngestSummary> {
    let start = Instant::now();
    let destination_kind = match destination {
        Destination::Local { .. } => DestinationKind::Local,
        Destination::Remote { .. } => DestinationKind::Remote,
    };
    let total = records.total();
    let bar = progress_bar(total, config.progress);
    for rejected in &records.rejected {
        report.write(&Failure {
            row: rejected.row,
            id: rejected.id.clone(),
            path: rejected.path.clone(),
            reason: rejected.reason.clone(),
        })?;
        bar.inc(1);
    }
    let report = Mutex::new(report);
    let records = records.records;
    let batch_size = config.batch_size.clamp(1, MAX_BATCH_ITEMS);
    let upsert_batch = config.upsert_batch.clamp(batch_size, MAX_BATCH_ITEMS);
    let abort = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let mut skipped = 0u64;
    let mut model_time = Duration::ZERO;

    let outcome: anyhow::Result<u64> = std::thread::scope(|scope| {
        let (prepared_tx, prepared_rx) = sync_channel::<Prepared>(batch_size * 2);
        for _ in 0..config.prepare_threads.max(1) {
            let tx = prepared_tx.clone();
            let (records, next, abort, destination) = (&records, &next, &abort, &destination);
            scope.spawn(move || loop {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                let Some(record) = records.get(index) else {
                    break;
                };
                let prepared = prepare(index, record, catalogue, destination);
                if tx.send(prepared).is_err() {
                    break;
                }
            });
        }
        drop(prepared_tx);

        let (write_tx, write_rx) = sync_channel::<WriteBatch>(2);
        let writer = {
            let (records, report, bar, destination, abort) =
                (&records, &report, &bar, &destination, &abort);
            scope.spawn(move || {
                let result = write_loop(
                    write_rx,
                    catalogue,
                    destination,
                    records,
                    report,
                    bar,
                    upsert_batch,
                );
                if result.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                result
            })
        };

        // This thread: collect prepared items into batches and run the model.
        let mut run = || -> anyhow::Result<()> {
            let mut batch: Vec<(usize, String, Content)> = Vec::with_capacity(batch_size);
            for prepared in prepared_rx.iter() {
                if abort.load(Ordering::Relaxed) {
                    break;
                }
                match prepared {
                    Prepared::Skipped => {
                        skipped += 1;
                        bar.inc(1);
                    }
                    Prepared::Failed(f) => {
                        lock(&report).write(&f)?;
                        bar.inc(1);
                    }
                    Prepared::Fatal(e) => return Err(e),
                    Prepared::Ready {
                        index,
                        hash,
                        content,
                    } => {
                        batch.push((index, hash, content));
                        if batch.len() == batch_size {
                            let b = std::mem::take(&mut batch);
                            model_time += send_batch(b, &records, &destination, &write_tx)?;
                        }
                    }
                }
            }
            if !batch.is_empty() && !abort.load(Ordering::Relaxed) {
                model_time += send_batch(batch, &records, &destination, &write_tx)?;
            }
            Ok(())
        };
        let main_result = run();
        if main_result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        drop(prepared_rx);
        drop(write_tx);
        let written = writer
            .join()
            .map_err(|_| anyhow!("the writer thread panicked"))?;
        // The writer's error is the root cause when both failed (the main thread then only
        // saw a closed channel).
        let written = written?;
        main_result?;
        Ok(written)
    });
    bar.finish_and_clear();
    let ingested = outcome?;
    let report = report
        .into_inner()
        .map_err(|_| anyhow!("report lock poisoned"))?;
    Ok(IngestSummary {
        total,
        ingested,
        skipped,
        failed: report.written(),
        elapsed: start.elapsed(),
        model_time: match destination_kind {
            DestinationKind::Local => Some(model_time),
            DestinationKind::Remote => None,
        },
        report: report.path().to_path_buf(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Read, hash, skip check, decode: runs on the prepare threads.
fn prepare(
    index: usize,
    record: &Record,
    catalogue: &str,
    destination: &Destination<'_>,
) -> Prepared {
    let bytes = match std::fs::read(&record.path) {
        Ok(b) => b,
        Err(e) => return Prepared::Failed(failure(record, format!("cannot read image: {e}"))),
    };
    let hash = content_hash(&bytes);
    let stored = match destination {
        Destination::Local { store, .. } => store
            .get(catalogue, &record.id, false)
            .map(|item| item.and_then(|i| i.content_hash))
            .with_context(|| {
                format!(
                    "cannot look up item {:?} in catalogue {catalogue:?}",
                    record.id.as_str()
                )
            }),
        Destination::Remote { client, .. } => client.stored_hash(catalogue, &record.id),
    };
    match stored {
        // Same image, and its thumbnail stored when thumbnails are on (so a re-run with
        // thumbnails on fills in items ingested without).
        Ok(Some(h)) if h == hash => match destination {
            Destination::Local {
                thumbnails: Some(t),
                ..
            } if t.is_enabled() => match t.contains(catalogue, record.id.as_str()) {
                Ok(true) => return Prepared::Skipped,
                Ok(false) => {}
                Err(e) => {
                    return Prepared::Fatal(
                        anyhow::Error::new(e).context("cannot read the thumbnail store"),
                    )
                }
            },
            _ => return Prepared::Skipped,
        },
        Ok(_) => {}
        Err(e) => return Prepared::Fatal(e),
    }
    let preprocess = match destination {
        Destination::Local { embedder, .. } => embedder.preprocess_config(),
        Destination::Remote { preprocess, .. } => preprocess,
    };
    let image = match decode_image(&bytes, preprocess) {
        Ok(im) => im,
        // The model's message already says what failed ("cannot decode image: truncated JPEG ..").
        Err(e) => return Prepared::Failed(failure(record, e.to_string())),
    };
    let content = match destination {
        Destination::Local { thumbnails, .. } => {
            let crop = resize_and_crop(&image, preprocess.size);
            let jpeg = match thumbnails {
                Some(t) if t.is_enabled() => match thumbnails::encode(&crop, record.id.as_str()) {
                    Ok(jpeg) => Some(jpeg),
                    Err(e) => return Prepared::Failed(failure(record, e.to_string())),
                },
                _ => None,
            };
            Content::Crop(crop, jpeg)
        }
        Destination::Remote { .. } => {
            Content::Base64(base64::engine::general_purpose::STANDARD.encode(&bytes))
        }
    };
    Prepared::Ready {
        index,
        hash,
        content,
    }
}

/// Turns a batch of prepared items into a write batch (running the model for a local
/// destination) and hands it to the writer. Returns the time spent in the model.
fn send_batch(
    batch: Vec<(usize, String, Content)>,
    records: &[Record],
    destination: &Destination<'_>,
    write_tx: &std::sync::mpsc::SyncSender<WriteBatch>,
) -> anyhow::Result<Duration> {
    let mut model_time = Duration::ZERO;
    let write = match destination {
        Destination::Local { embedder, .. } => {
            let mut ids = Vec::with_capacity(batch.len());
            let mut crops = Vec::with_capacity(batch.len());
            for (index, hash, content) in batch {
                if let Content::Crop(crop, jpeg) = content {
                    ids.push((index, hash, jpeg));
                    crops.push(crop);
                }
            }
            let card = embedder.card();
            let all: Vec<usize> = (0..card.attributes.len()).collect();
            let t = Instant::now();
            let embeddings = embedder
                .embed_crops(&crops, &all)
                .context("model forward failed")?;
            model_time = t.elapsed();
            let items = ids
                .into_iter()
                .zip(embeddings)
                .map(|((index, hash, jpeg), per_attribute)| {
                    let record = &records[index];
                    let vectors: BTreeMap<String, Vec<f32>> = per_attribute
                        .into_iter()
                        .map(|e| (card.attributes[e.attribute].name.clone(), e.vector))
                        .collect();
                    let item = Item {
                        id: record.id.clone(),
                        payload: record.payload.clone(),
                        vectors,
                        content_hash: Some(hash),
                    };
                    (index, item, jpeg)
                })
                .collect();
            WriteBatch::Local(items)
        }
        Destination::Remote { .. } => WriteBatch::Remote(
            batch
                .into_iter()
                // The server hashes the bytes itself (same sha256) and stores it.
                .filter_map(|(index, _hash, content)| match content {
                    Content::Base64(image) => Some((
                        index,
                        RemoteItem {
                            id: records[index].id.clone(),
                            payload: records[index].payload.clone(),
                            image,
                        },
                    )),
                    Content::Crop(..) => None,
                })
                .collect(),
        ),
    };
    write_tx
        .send(write)
        .map_err(|_| anyhow!("the writer stopped"))?;
    Ok(model_time)
}

/// The writer thread: upserts (grouping queued batches up to `upsert_batch`) or PUTs.
/// Returns the number of items written.
fn write_loop(
    rx: Receiver<WriteBatch>,
    catalogue: &str,
    destination: &Destination<'_>,
    records: &[Record],
    report: &Mutex<ReportWriter>,
    bar: &ProgressBar,
    upsert_batch: usize,
) -> anyhow::Result<u64> {
    let mut written = 0u64;
    while let Ok(batch) = rx.recv() {
        match batch {
            WriteBatch::Local(mut items) => {
                let Destination::Local {
                    store, thumbnails, ..
                } = destination
                else {
                    continue;
                };
                // Group whatever is already queued into one upsert (one flush).
                while items.len() < upsert_batch {
                    match rx.try_recv() {
                        Ok(WriteBatch::Local(more)) => items.extend(more),
                        Ok(WriteBatch::Remote(_)) => {}
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                written +=
                    upsert_local(*store, *thumbnails, catalogue, items, records, report, bar)?;
            }
            WriteBatch::Remote(items) => {
                let Destination::Remote { client, .. } = destination else {
                    continue;
                };
                written += put_remote(client, catalogue, items, records, report, bar)?;
            }
        }
    }
    Ok(written)
}

/// Writes the thumbnails of items the store accepted (or removes stale ones when
/// thumbnails are off).
fn write_thumbnails<'a>(
    thumbnails: Option<&Thumbnails>,
    catalogue: &str,
    items: impl IntoIterator<Item = &'a (usize, Item, Option<Vec<u8>>)>,
) -> anyhow::Result<()> {
    let Some(t) = thumbnails else {
        return Ok(());
    };
    t.upsert(
        catalogue,
        items
            .into_iter()
            .map(|(_, item, jpeg)| (item.id.as_str(), jpeg.as_deref())),
    )
    .with_context(|| format!("cannot write the thumbnails of catalogue {catalogue:?}"))
}

fn upsert_local(
    store: &dyn CatalogueStore,
    thumbnails: Option<&Thumbnails>,
    catalogue: &str,
    items: Vec<(usize, Item, Option<Vec<u8>>)>,
    records: &[Record],
    report: &Mutex<ReportWriter>,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let batch: Vec<Item> = items.iter().map(|(_, item, _)| item.clone()).collect();
    match store.upsert(catalogue, &batch) {
        Ok(_) => {
            write_thumbnails(thumbnails, catalogue, &items)?;
            bar.inc(batch.len() as u64);
            Ok(batch.len() as u64)
        }
        // A batch is validated whole: find the offending items one by one.
        Err(e) if e.kind() == ErrorKind::InvalidInput => {
            let mut written = 0;
            for entry in &items {
                let (index, item, _) = entry;
                match store.upsert(catalogue, std::slice::from_ref(item)) {
                    Ok(_) => {
                        write_thumbnails(thumbnails, catalogue, [entry])?;
                        written += 1
                    }
                    Err(e) if e.kind() == ErrorKind::InvalidInput => {
                        lock(report).write(&failure(
                            &records[*index],
                            format!("store refused the item: {e}"),
                        ))?;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("cannot write to catalogue {catalogue:?}"))
                    }
                }
                bar.inc(1);
            }
            Ok(written)
        }
        Err(e) => Err(e).with_context(|| format!("cannot write to catalogue {catalogue:?}")),
    }
}

fn put_remote(
    client: &RemoteClient,
    catalogue: &str,
    items: Vec<(usize, RemoteItem)>,
    records: &[Record],
    report: &Mutex<ReportWriter>,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let batch: Vec<&RemoteItem> = items.iter().map(|(_, item)| item).collect();
    match client.put_items(catalogue, &batch)? {
        Ok(()) => {
            bar.inc(batch.len() as u64);
            Ok(batch.len() as u64)
        }
        // The server refused the batch (4xx): isolate the items it refuses.
        Err(refusal) if items.len() > 1 => {
            tracing::debug!(catalogue, reason = %refusal, "batch refused, retrying items one by one");
            let mut written = 0;
            for (index, item) in &items {
                match client.put_items(catalogue, &[item])? {
                    Ok(()) => written += 1,
                    Err(refusal) => lock(report).write(&failure(
                        &records[*index],
                        format!("server refused the item: {refusal}"),
                    ))?,
                }
                bar.inc(1);
            }
            Ok(written)
        }
        Err(refusal) => {
            let (index, _) = &items[0];
            lock(report).write(&failure(
                &records[*index],
                format!("server refused the item: {refusal}"),
            ))?;
            bar.inc(1);
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_hash_is_hex_sha256() {
        assert_eq!(
            content_hash(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn summary_line_names_counts_rate_and_report() {
        let s = IngestSummary {
            total: 10,
            ingested: 6,
            skipped: 2,
            failed: 2,
            elapsed: Duration::from_secs(3),
            model_time: Some(Duration::from_millis(1500)),
            report: PathBuf::from("r.csv"),
        };
        assert_eq!(
            s.line(),
            "ingested 6, skipped 2, failed 2 of 10 rows in 3.0 s (2.0 items/s, model 50.0% of the time); failures listed in r.csv"
        );
        let remote = IngestSummary {
            model_time: None,
            failed: 0,
            ..s
        };
        assert_eq!(
            remote.line(),
            "ingested 6, skipped 2, failed 0 of 10 rows in 3.0 s (2.0 items/s, embedded by the server)"
        );
    }
}
