//! Bulk catalogue ingestion (`asen ingest`): a [`source`] of rows (CSV or folder), the
//! [`pipeline`] that reads, embeds and writes them, the [`report`] of failures, and the
//! [`remote`] client used with `--server`.

mod pipeline;
mod remote;
mod report;
mod source;

pub use pipeline::{ingest, Destination, PipelineConfig};
pub use remote::RemoteClient;
pub use report::ReportWriter;
pub use source::{read_dir, CsvSource};
