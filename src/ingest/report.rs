//! The report of rows and images that could not be ingested: CSV (`row,id,path,reason`) or,
//! for a `.jsonl` file name, one JSON object per line with the same fields.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;

/// One row or image that was not ingested.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// CSV row number (header = 1) or folder listing position.
    pub row: u64,
    /// Item id as written.
    pub id: String,
    /// Image path as written.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

enum Format {
    Csv(Box<csv::Writer<File>>),
    Jsonl(BufWriter<File>),
}

/// Writes failures as they happen, so a killed run still leaves its report.
pub struct ReportWriter {
    path: PathBuf,
    format: Format,
    written: u64,
}

impl ReportWriter {
    /// Creates (truncates) the report; the format follows the extension (`.jsonl` or CSV).
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = File::create(path)
            .with_context(|| format!("cannot create report {}", path.display()))?;
        let jsonl = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
        let format = if jsonl {
            Format::Jsonl(BufWriter::new(file))
        } else {
            // The header is written by hand so a report without failures still has one.
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(file);
            w.write_record(["row", "id", "path", "reason"])
                .with_context(|| format!("cannot write report {}", path.display()))?;
            w.flush()
                .with_context(|| format!("cannot write report {}", path.display()))?;
            Format::Csv(Box::new(w))
        };
        Ok(ReportWriter {
            path: path.to_path_buf(),
            format,
            written: 0,
        })
    }

    /// The report's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Failures written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Appends one failure and flushes it.
    pub fn write(&mut self, failure: &Failure) -> anyhow::Result<()> {
        let result = match &mut self.format {
            Format::Csv(w) => w
                .serialize(failure)
                .map_err(anyhow::Error::from)
                .and_then(|_| Ok(w.flush()?)),
            Format::Jsonl(w) => serde_json::to_writer(&mut *w, failure)
                .map_err(anyhow::Error::from)
                .and_then(|_| Ok(writeln!(w)?))
                .and_then(|_| Ok(w.flush()?)),
        };
        result.with_context(|| format!("cannot write report {}", self.path.display()))?;
        self.written += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(row: u64) -> Failure {
        Failure {
            row,
            id: "a,b".into(),
            path: "x/a.jpg".into(),
            reason: "cannot decode \"x\"".into(),
        }
    }

    #[test]
    fn csv_report_quotes_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.csv");
        let mut w = ReportWriter::create(&path).unwrap();
        w.write(&failure(3)).unwrap();
        assert_eq!(w.written(), 1);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "row,id,path,reason\n3,\"a,b\",x/a.jpg,\"cannot decode \"\"x\"\"\"\n"
        );
    }

    #[test]
    fn jsonl_report_has_one_object_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let mut w = ReportWriter::create(&path).unwrap();
        w.write(&failure(3)).unwrap();
        w.write(&failure(4)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1]["row"], 4);
        assert_eq!(rows[0]["reason"], "cannot decode \"x\"");
    }
}
