//! Bulk catalogue ingestion (`asen ingest`): a [`source`] of rows (CSV or folder), the
//! [`pipeline`] that reads and writes them, the [`sink`] they go to (the local service or a
//! running server), and the [`report`] of failures.

mod pipeline;
mod remote;
mod report;
mod sink;
mod source;

pub use pipeline::{ingest, IngestSummary, PipelineConfig, StageTimes};
pub use remote::{RemoteClient, RemoteSink};
pub use report::ReportWriter;
pub use sink::{LocalSink, Sink, WriteOutcome};
pub use source::{read_dir, CsvSource, Records};
