//! The ingestion pipeline: parallel read + hash + skip check + prepare, batched writes.
//!
//! ```text
//! records --[N reading threads: read, sha256, skip check, Sink::prepare]--> bounded channel
//!   --[this thread: batches of Sink::batch_size, Sink::write]
//! ```
//!
//! The reading threads run at idle priority by default (`ingest.reader_priority`): the
//! model's threads keep both cores during a forward pass, and decoding takes the cycles they
//! leave (joins, serial steps, the store's writes). When no item is ready, this thread has the
//! next few read on rayon's threads (normal priority) rather than wait, so ingestion goes on
//! when other processes take every core and the idle-priority readers get none.
//!
//! A local [`Sink`] prepares by decoding and cropping (`service::items::prepare`) and writes by
//! embedding and upserting (`service::items::upsert_prepared`); a remote one checks the image
//! and PUTs it to a server. Items stored with the sha256 of their image bytes and the same
//! payload are skipped before decoding, which makes a re-run a no-op and an interrupted run
//! resumable; a changed image or payload is written again. Rows and images that fail go to the report and the run continues; storage and
//! transport failures stop it.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, TryRecvError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::report::{Failure, ReportWriter};
use super::sink::{Sink, WriteOutcome};
use super::source::{Record, Records};
use crate::service::items::{content_hash, NewItem};

/// Pipeline knobs.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Threads reading, hashing and decoding images.
    pub prepare_threads: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
    /// Largest image file read (`ingest.max_file_bytes`); larger ones go to the report.
    pub max_file_bytes: u64,
    /// Run the reading threads only on otherwise idle cycles (`ingest.reader_priority`).
    pub idle_readers: bool,
}

impl PipelineConfig {
    /// Default `max_file_bytes`: 64 MiB, twice the server's default body limit.
    pub const DEFAULT_MAX_FILE_BYTES: u64 = 64 << 20;
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            prepare_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            progress: true,
            max_file_bytes: Self::DEFAULT_MAX_FILE_BYTES,
            idle_readers: true,
        }
    }
}

/// Read one image file for ingestion: only a regular file (not a device, FIFO, socket or
/// folder), of at most `max_bytes`, and, when `root` is given (canonical), one that resolves
/// inside it with symlinks followed. The error is one line naming the problem, never the
/// file's contents.
pub fn read_image(path: &Path, root: Option<&Path>, max_bytes: u64) -> Result<Vec<u8>, String> {
    let real = path
        .canonicalize()
        .map_err(|e| format!("cannot read image: {e}"))?;
    if let Some(root) = root {
        if !real.starts_with(root) {
            return Err(format!(
                "the file resolves to {}, outside the image root {} (give --allow-outside-root to read it)",
                real.display(),
                root.display()
            ));
        }
    }
    let regular = |meta: &std::fs::Metadata| -> Result<(), String> {
        if !meta.is_file() {
            return Err("not a regular file (a device, FIFO, socket or folder)".to_string());
        }
        if meta.len() > max_bytes {
            return Err(format!(
                "the file is {} bytes, over ingest.max_file_bytes ({max_bytes})",
                meta.len()
            ));
        }
        Ok(())
    };
    // Checked before opening: opening a FIFO would block.
    regular(&std::fs::metadata(&real).map_err(|e| format!("cannot read image: {e}"))?)?;
    let file = std::fs::File::open(&real).map_err(|e| format!("cannot read image: {e}"))?;
    regular(
        &file
            .metadata()
            .map_err(|e| format!("cannot read image: {e}"))?,
    )?;
    let mut bytes = Vec::new();
    // A file that grows while it is read is still cut at the limit.
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read image: {e}"))?;
    if bytes.len() as u64 > max_bytes {
        return Err(format!(
            "the file grew past ingest.max_file_bytes ({max_bytes}) while it was read"
        ));
    }
    Ok(bytes)
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
    /// Where the time went, stage by stage.
    pub stages: StageTimes,
}

/// Busy time per ingestion stage, summed over the threads that run it (the
/// reading threads overlap with the writing thread, so the stages add up to
/// more than the wall time when they overlap).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    /// Reading the file, hashing it and checking the store for it (reading threads).
    pub read: Duration,
    /// Decoding, resizing and cropping (reading threads, when the model runs here).
    pub decode: Duration,
    /// Writing batches: the forward passes are `IngestSummary::model_time`; this
    /// is the rest (vector and record writes, or the request to a server).
    pub write: Duration,
    /// Threads reading and decoding.
    pub reading_threads: usize,
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

    /// Each stage's busy time and its share of all stages' time: where an
    /// ingest spends its effort (`stages: read+hash 2.0 s (6%), ...`).
    pub fn stages_line(&self) -> String {
        let model = self.model_time.unwrap_or_default();
        let parts = [
            ("read+hash", self.stages.read),
            ("decode+resize", self.stages.decode),
            ("forward", model),
            (
                match self.model_time {
                    Some(_) => "store write",
                    None => "server requests",
                },
                self.stages.write.saturating_sub(model),
            ),
        ];
        let total: f64 = parts
            .iter()
            .map(|(_, d)| d.as_secs_f64())
            .sum::<f64>()
            .max(1e-9);
        let listed: Vec<String> = parts
            .iter()
            .filter(|(name, _)| *name != "forward" || self.model_time.is_some())
            .map(|(name, d)| {
                format!(
                    "{name} {:.1} s ({:.0}%)",
                    d.as_secs_f64(),
                    100.0 * d.as_secs_f64() / total
                )
            })
            .collect();
        format!(
            "stages (read and decode: CPU time of {} reading threads; the rest: wall time of the writer): {}",
            self.stages.reading_threads,
            listed.join(", ")
        )
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

enum Prepared<P> {
    Skipped,
    Failed(Failure),
    Ready {
        index: usize,
        item: P,
    },
    /// The destination cannot be read: stop the run.
    Fatal(anyhow::Error),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Ingests `records` into `catalogue` through `sink`, writing failures to `report`.
///
/// Returns the summary when the run completes (even with failed rows); an error only when the
/// destination fails (storage, model or transport), after stopping every thread.
pub fn ingest<S: Sink>(
    records: Records,
    catalogue: &str,
    sink: &S,
    config: &PipelineConfig,
    mut report: ReportWriter,
) -> anyhow::Result<IngestSummary> {
    let start = Instant::now();
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
    // The root, resolved once: a missing root fails every row the same way, in the report.
    let root = records
        .root
        .as_ref()
        .map(|r| r.canonicalize().unwrap_or_else(|_| r.clone()));
    let records = records.records;
    let limits = ReadLimits {
        root: root.as_deref(),
        max_file_bytes: config.max_file_bytes,
    };
    let batch_size = sink.batch_size();
    let abort = AtomicBool::new(false);
    let next = AtomicUsize::new(0);
    let mut skipped = 0u64;
    let mut written = 0u64;
    let mut model_time = Duration::ZERO;
    let mut write_time = Duration::ZERO;
    let busy = Busy::default();
    let reading_threads = config.prepare_threads.max(1);

    let outcome: anyhow::Result<()> = std::thread::scope(|scope| {
        let (prepared_tx, prepared_rx) = sync_channel::<Prepared<S::Prepared>>(batch_size * 2);
        for _ in 0..config.prepare_threads.max(1) {
            let tx = prepared_tx.clone();
            let (records, next, abort, busy) = (&records, &next, &abort, &busy);
            let idle = config.idle_readers;
            scope.spawn(move || {
                if idle {
                    run_on_idle_cycles();
                }
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(record) = records.get(index) else {
                        break;
                    };
                    if tx
                        .send(prepare(index, record, catalogue, sink, limits, busy))
                        .is_err()
                    {
                        break;
                    }
                }
            });
        }
        drop(prepared_tx);

        let mut write = |batch: Vec<(usize, S::Prepared)>| -> anyhow::Result<()> {
            let started = Instant::now();
            let (n, time) = write_batch(sink, catalogue, batch, &records, &report, &bar)?;
            write_time += started.elapsed();
            written += n;
            model_time += time;
            Ok(())
        };
        // This thread: collect prepared items into batches and write them.
        let mut run = || -> anyhow::Result<()> {
            let mut batch = Vec::with_capacity(batch_size);
            // Items this thread read itself.
            let mut own = std::collections::VecDeque::new();
            loop {
                let prepared = match own.pop_front() {
                    Some(prepared) => prepared,
                    None => match prepared_rx.try_recv() {
                        Ok(prepared) => prepared,
                        Err(TryRecvError::Disconnected) => break,
                        // Nothing ready: read the next few records on the model's threads
                        // (normal priority) instead of waiting.
                        Err(TryRecvError::Empty) => {
                            let chunk = 2 * rayon::current_num_threads();
                            let first = next.fetch_add(chunk, Ordering::Relaxed);
                            let claimed =
                                first.min(records.len())..(first + chunk).min(records.len());
                            if claimed.is_empty() {
                                match prepared_rx.recv() {
                                    Ok(prepared) => prepared,
                                    Err(_) => break,
                                }
                            } else {
                                own.extend(read_on_pool(
                                    claimed, &records, catalogue, sink, limits, &busy,
                                ));
                                continue;
                            }
                        }
                    },
                };
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
                    Prepared::Ready { index, item } => {
                        batch.push((index, item));
                        if batch.len() == batch_size {
                            write(std::mem::take(&mut batch))?;
                        }
                    }
                }
            }
            if !batch.is_empty() {
                write(batch)?;
            }
            Ok(())
        };
        let result = run();
        if result.is_err() {
            abort.store(true, Ordering::Relaxed);
        }
        // Unblock the reading threads so the scope can end.
        drop(prepared_rx);
        result
    });
    bar.finish_and_clear();
    outcome?;
    sink.finish()?;
    let report = report
        .into_inner()
        .map_err(|_| anyhow!("report lock poisoned"))?;
    Ok(IngestSummary {
        total,
        ingested: written,
        skipped,
        failed: report.written(),
        elapsed: start.elapsed(),
        model_time: sink.embeds_here().then_some(model_time),
        report: report.path().to_path_buf(),
        stages: StageTimes {
            read: busy.read.total(),
            decode: busy.decode.total(),
            write: write_time,
            reading_threads,
        },
    })
}

/// Let the calling thread run only when a core would otherwise be idle (Linux's
/// `SCHED_IDLE`); elsewhere it keeps its priority.
fn run_on_idle_cycles() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the call's duration; pid 0 is the
        // calling thread.
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
            tracing::debug!("cannot lower a reading thread's priority; it keeps the default");
        }
    }
}

/// CPU time the calling thread has used (Linux's `CLOCK_THREAD_CPUTIME_ID`), so that a
/// reading thread waiting for a core at idle priority does not count as busy; elsewhere,
/// wall time since the first call.
fn thread_cpu_time() -> Duration {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write to.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return Duration::new(
                ts.tv_sec.max(0) as u64,
                ts.tv_nsec.clamp(0, 999_999_999) as u32,
            );
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Nanoseconds added up by several threads.
#[derive(Default)]
struct Nanos(std::sync::atomic::AtomicU64);

impl Nanos {
    /// Add the calling thread's CPU time since `since` (a [`thread_cpu_time`]).
    fn add(&self, since: Duration) {
        let spent = thread_cpu_time().saturating_sub(since);
        let ns = spent.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.0.fetch_add(ns, Ordering::Relaxed);
    }

    fn total(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}

/// The reading threads' busy time per stage.
#[derive(Default)]
struct Busy {
    read: Nanos,
    decode: Nanos,
}

/// Where and how much the reading threads may read.
#[derive(Debug, Clone, Copy)]
struct ReadLimits<'a> {
    root: Option<&'a Path>,
    max_file_bytes: u64,
}

/// Read, hash, skip check, prepare: runs on the reading threads.
fn prepare<S: Sink>(
    index: usize,
    record: &Record,
    catalogue: &str,
    sink: &S,
    limits: ReadLimits<'_>,
    busy: &Busy,
) -> Prepared<S::Prepared> {
    let started = thread_cpu_time();
    let prepared = read_and_check(record, catalogue, sink, limits);
    busy.read.add(started);
    let item = match prepared {
        Ok(item) => item,
        Err(done) => return done,
    };
    let started = thread_cpu_time();
    let prepared = match sink.prepare(item) {
        Ok(item) => Prepared::Ready { index, item },
        Err(reason) => Prepared::Failed(failure(record, reason)),
    };
    busy.decode.add(started);
    prepared
}

/// [`prepare`] the records `indices` on rayon's threads, in order.
fn read_on_pool<S: Sink>(
    indices: std::ops::Range<usize>,
    records: &[Record],
    catalogue: &str,
    sink: &S,
    limits: ReadLimits<'_>,
    busy: &Busy,
) -> Vec<Prepared<S::Prepared>> {
    use rayon::prelude::*;
    indices
        .into_par_iter()
        .map(|i| prepare(i, &records[i], catalogue, sink, limits, busy))
        .collect()
}

/// Read and hash the image and ask the store whether it is already there:
/// the item to prepare, or what to report instead.
fn read_and_check<S: Sink>(
    record: &Record,
    catalogue: &str,
    sink: &S,
    limits: ReadLimits<'_>,
) -> Result<NewItem, Prepared<S::Prepared>> {
    let bytes = match read_image(&record.path, limits.root, limits.max_file_bytes) {
        Ok(b) => b,
        Err(reason) => return Err(Prepared::Failed(failure(record, reason))),
    };
    match sink.is_current(
        catalogue,
        &record.id,
        &content_hash(&bytes),
        &record.payload,
    ) {
        Ok(true) => return Err(Prepared::Skipped),
        Ok(false) => {}
        Err(e) => return Err(Prepared::Fatal(e)),
    }
    Ok(NewItem {
        id: record.id.clone(),
        payload: record.payload.clone(),
        image: bytes,
    })
}

/// Writes a batch; a batch refused for its content is retried item by item, and the items
/// refused alone go to the report. Returns the items written and the model time.
fn write_batch<S: Sink>(
    sink: &S,
    catalogue: &str,
    batch: Vec<(usize, S::Prepared)>,
    records: &[Record],
    report: &Mutex<ReportWriter>,
    bar: &ProgressBar,
) -> anyhow::Result<(u64, Duration)> {
    let (indices, items): (Vec<usize>, Vec<S::Prepared>) = batch.into_iter().unzip();
    match sink.write(catalogue, &items)? {
        WriteOutcome::Written { model_time } => {
            bar.inc(items.len() as u64);
            return Ok((items.len() as u64, model_time));
        }
        WriteOutcome::Refused(reason) if items.len() == 1 => {
            lock(report).write(&failure(&records[indices[0]], reason))?;
            bar.inc(1);
            return Ok((0, Duration::ZERO));
        }
        WriteOutcome::Refused(reason) => {
            tracing::debug!(catalogue, %reason, "batch refused, retrying items one by one");
        }
    }
    let (mut written, mut model_time) = (0, Duration::ZERO);
    for (index, item) in indices.into_iter().zip(items) {
        match sink.write(catalogue, std::slice::from_ref(&item))? {
            WriteOutcome::Written { model_time: t } => {
                written += 1;
                model_time += t;
            }
            WriteOutcome::Refused(reason) => {
                lock(report).write(&failure(&records[index], reason))?
            }
        }
        bar.inc(1);
    }
    Ok((written, model_time))
}

#[cfg(test)]
mod tests {
    use super::*;
    use asen_index::{ItemId, Payload};

    #[test]
    fn a_device_is_not_read() {
        let err = read_image(Path::new("/dev/zero"), None, 1 << 20).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn a_file_over_the_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big.jpg");
        std::fs::write(&file, vec![0u8; 1001]).unwrap();
        let err = read_image(&file, None, 1000).unwrap_err();
        assert!(
            err.contains("1001 bytes, over ingest.max_file_bytes (1000)"),
            "{err}"
        );
        assert_eq!(read_image(&file, None, 1001).unwrap().len(), 1001);
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret.jpg");
        std::fs::write(&secret, b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        let link = root.path().join("link.jpg");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let canonical = root.path().canonicalize().unwrap();
        let err = read_image(&link, Some(&canonical), 1 << 20).unwrap_err();
        assert!(err.contains("outside the image root"), "{err}");
        assert!(!err.contains("secret\""), "no contents: {err}");
        assert_eq!(read_image(&link, None, 1 << 20).unwrap(), b"secret");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_inside_the_root_is_read() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("a.jpg"), b"img").unwrap();
        let link = root.path().join("b.jpg");
        std::os::unix::fs::symlink(root.path().join("a.jpg"), &link).unwrap();
        let canonical = root.path().canonicalize().unwrap();
        assert_eq!(read_image(&link, Some(&canonical), 100).unwrap(), b"img");
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
            stages: StageTimes {
                read: Duration::from_millis(500),
                decode: Duration::from_millis(1000),
                write: Duration::from_millis(2000),
                reading_threads: 2,
            },
        };
        assert_eq!(
            s.line(),
            "ingested 6, skipped 2, failed 2 of 10 rows in 3.0 s (2.0 items/s, model 50.0% of the time); failures listed in r.csv"
        );
        assert_eq!(
            s.stages_line(),
            "stages (read and decode: CPU time of 2 reading threads; the rest: wall time of the writer): read+hash 0.5 s (14%), decode+resize 1.0 s (29%), forward 1.5 s (43%), store write 0.5 s (14%)"
        );
        let remote = IngestSummary {
            model_time: None,
            failed: 0,
            ..s
        };
        assert_eq!(
            remote.stages_line(),
            "stages (read and decode: CPU time of 2 reading threads; the rest: wall time of the writer): read+hash 0.5 s (14%), decode+resize 1.0 s (29%), server requests 2.0 s (57%)"
        );
        assert_eq!(
            remote.line(),
            "ingested 6, skipped 2, failed 0 of 10 rows in 3.0 s (2.0 items/s, embedded by the server)"
        );
    }

    /// A sink whose `prepare` is slow on the reading threads (not on rayon's, where the
    /// writer has items read when none is ready).
    struct SlowReaders {
        prepared_by_writer: AtomicUsize,
        written: Mutex<Vec<String>>,
    }

    impl Sink for SlowReaders {
        type Prepared = String;

        fn ensure_catalogue(&self, _: &str) -> anyhow::Result<()> {
            Ok(())
        }

        fn is_current(&self, _: &str, _: &ItemId, _: &str, _: &Payload) -> anyhow::Result<bool> {
            Ok(false)
        }

        fn prepare(&self, item: NewItem) -> Result<String, String> {
            if rayon::current_thread_index().is_some() {
                self.prepared_by_writer.fetch_add(1, Ordering::Relaxed);
            } else {
                std::thread::sleep(Duration::from_millis(30));
            }
            Ok(item.id.to_string())
        }

        fn write(&self, _: &str, batch: &[String]) -> anyhow::Result<WriteOutcome> {
            lock(&self.written).extend(batch.iter().cloned());
            Ok(WriteOutcome::Written {
                model_time: Duration::ZERO,
            })
        }

        fn batch_size(&self) -> usize {
            4
        }

        fn embeds_here(&self) -> bool {
            false
        }

        fn finish(&self) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_writer_reads_images_itself_when_none_is_ready() {
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<Record> = (0..20)
            .map(|i| {
                let path = dir.path().join(format!("{i}.jpg"));
                std::fs::write(&path, [i as u8; 8]).unwrap();
                Record {
                    row: i + 2,
                    id: ItemId::new(format!("item-{i}")).unwrap(),
                    path,
                    payload: Payload::new(),
                }
            })
            .collect();
        let sink = SlowReaders {
            prepared_by_writer: AtomicUsize::new(0),
            written: Mutex::new(Vec::new()),
        };
        let config = PipelineConfig {
            prepare_threads: 2,
            progress: false,
            ..PipelineConfig::default()
        };
        let report = ReportWriter::create(&dir.path().join("report.csv")).unwrap();
        let source = Records {
            records,
            rejected: Vec::new(),
            root: None,
        };
        let summary = ingest(source, "c", &sink, &config, report).unwrap();
        assert_eq!(summary.ingested, 20);
        let mut written = lock(&sink.written).clone();
        written.sort();
        written.dedup();
        assert_eq!(written.len(), 20, "every item once");
        assert!(sink.prepared_by_writer.load(Ordering::Relaxed) > 0);
    }
}
