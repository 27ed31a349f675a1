//! Where items come from: a CSV of image paths with payload columns, or a folder of images.
//!
//! Both are read up front into [`Records`]: the rows to ingest, and the rows rejected before any
//! image is opened (empty or invalid id, empty path, duplicate id, a path leaving the image
//! root), which go to the report.
//!
//! A source also names the folder its images must stay in ([`Records::root`]): the CSV's image
//! root, or the listed folder. A CSV path that is absolute or climbs out with `..` is refused
//! here; the pipeline refuses a file that resolves outside the root through a symlink when it
//! reads it. `--allow-outside-root` lifts both.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use asen_index::{ItemId, Payload};

/// Image file extensions a folder source picks up (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// One item to ingest.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// CSV row number (the header is row 1, as in a spreadsheet), or 1-based position in the
    /// folder listing.
    pub row: u64,
    /// Item id.
    pub id: ItemId,
    /// Image file.
    pub path: PathBuf,
    /// Payload stored with the item.
    pub payload: Payload,
}

/// A row that cannot be ingested, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// CSV row number (header = 1) or listing position.
    pub row: u64,
    /// The id as written, if any.
    pub id: String,
    /// The image path as written, if any.
    pub path: String,
    /// Why the row was rejected.
    pub reason: String,
}

/// What a source yields: rows to ingest and rows rejected on reading.
#[derive(Debug, Default)]
pub struct Records {
    /// Rows to ingest, in source order.
    pub records: Vec<Record>,
    /// Rows rejected before any image is read.
    pub rejected: Vec<Rejected>,
    /// The folder every image must resolve into (symlinks followed); `None` lets images be
    /// read from anywhere (`--allow-outside-root`).
    pub root: Option<PathBuf>,
}

impl Records {
    /// Rows in total (ingestable and rejected).
    pub fn total(&self) -> u64 {
        (self.records.len() + self.rejected.len()) as u64
    }

    /// Adds a row, rejecting invalid and duplicate ids.
    fn push(
        &mut self,
        row: u64,
        id: &str,
        path: PathBuf,
        payload: Payload,
        seen: &mut HashMap<String, u64>,
    ) {
        let reject = |reason: String| Rejected {
            row,
            id: id.to_string(),
            path: path.display().to_string(),
            reason,
        };
        if path.as_os_str().is_empty() {
            self.rejected.push(reject("empty image path".to_string()));
            return;
        }
        let item_id = match ItemId::new(id) {
            Ok(item_id) => item_id,
            Err(e) => {
                self.rejected.push(reject(format!("invalid id: {e}")));
                return;
            }
        };
        if let Some(first) = seen.get(id) {
            self.rejected
                .push(reject(format!("duplicate id, first seen at row {first}")));
            return;
        }
        seen.insert(id.to_string(), row);
        self.records.push(Record {
            row,
            id: item_id,
            path,
            payload,
        });
    }
}

/// How to read a CSV source.
#[derive(Debug, Clone)]
pub struct CsvSource {
    /// The CSV file (header row required).
    pub file: PathBuf,
    /// Relative image paths are resolved against this (default: the CSV's folder).
    pub image_root: Option<PathBuf>,
    /// Column holding the item id.
    pub id_column: String,
    /// Column holding the image path.
    pub path_column: String,
    /// Columns copied into the payload (default: every column but the id and path ones).
    pub payload_columns: Option<Vec<String>>,
    /// Accept absolute paths, `..` and symlinks leading out of the image root.
    pub allow_outside_root: bool,
}

/// Why a CSV image path may not be read when images must stay in the root: it is absolute,
/// or one of its components is `..`.
fn leaves_root(path: &str) -> Option<&'static str> {
    use std::path::Component;
    let path = Path::new(path);
    if path.is_absolute() || path.has_root() {
        return Some("absolute image path");
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        return Some("image path climbs out with \"..\"");
    }
    None
}

impl CsvSource {
    /// Reads every row. Fails (before any image is read) when the file cannot be read or a named
    /// column is missing; rows with problems are returned as [`Rejected`].
    pub fn read(&self) -> anyhow::Result<Records> {
        let mut reader = csv::ReaderBuilder::new()
            .flexible(true)
            .from_path(&self.file)
            .with_context(|| format!("cannot read csv {}", self.file.display()))?;
        let headers = reader
            .headers()
            .with_context(|| format!("cannot read the header row of {}", self.file.display()))?
            .clone();
        let column = |name: &str| -> anyhow::Result<usize> {
            match headers.iter().position(|h| h == name) {
                Some(i) => Ok(i),
                None => bail!(
                    "column {name:?} is not in {} (columns: {})",
                    self.file.display(),
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            }
        };
        let id_col = column(&self.id_column)?;
        let path_col = column(&self.path_column)?;
        let payload_cols: Vec<(String, usize)> = match &self.payload_columns {
            Some(names) => names
                .iter()
                .map(|n| Ok((n.clone(), column(n)?)))
                .collect::<anyhow::Result<_>>()?,
            None => headers
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != id_col && *i != path_col)
                .map(|(i, h)| (h.to_string(), i))
                .collect(),
        };
        let root = match &self.image_root {
            Some(root) => root.clone(),
            None => self
                .file
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let mut out = Records {
            // A CSV named without a folder has the empty root: the current folder.
            root: (!self.allow_outside_root).then(|| {
                if root.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    root.clone()
                }
            }),
            ..Records::default()
        };
        let mut seen = HashMap::new();
        for (i, result) in reader.records().enumerate() {
            // Row numbers count records, not lines: csv's line positions are off by one after
            // CRLF line ends, and a quoted field may span lines anyway.
            let row = i as u64 + 2;
            let record = match result {
                Ok(r) => r,
                Err(e) => {
                    out.rejected.push(Rejected {
                        row,
                        id: String::new(),
                        path: String::new(),
                        reason: format!("unreadable csv row: {e}"),
                    });
                    continue;
                }
            };
            let id = record.get(id_col).unwrap_or("").trim();
            let path_field = record.get(path_col).unwrap_or("").trim();
            if record.len() != headers.len() {
                out.rejected.push(Rejected {
                    row,
                    id: id.to_string(),
                    path: path_field.to_string(),
                    reason: format!(
                        "row has {} fields, the header has {}",
                        record.len(),
                        headers.len()
                    ),
                });
                continue;
            }
            if !self.allow_outside_root {
                if let Some(why) = leaves_root(path_field) {
                    out.rejected.push(Rejected {
                        row,
                        id: id.to_string(),
                        path: path_field.to_string(),
                        reason: format!(
                            "{why}: images must be inside the image root {} (give --allow-outside-root to read them anyway)",
                            root.display()
                        ),
                    });
                    continue;
                }
            }
            let path = if path_field.is_empty() {
                PathBuf::new()
            } else {
                root.join(path_field)
            };
            let mut payload = Payload::new();
            for (name, col) in &payload_cols {
                if let Some(value) = record.get(*col).map(str::trim).filter(|v| !v.is_empty()) {
                    payload.insert(name.clone(), payload_value(value));
                }
            }
            out.push(row, id, path, payload, &mut seen);
        }
        Ok(out)
    }
}

/// A CSV cell as a JSON value: canonical integers become numbers (so range filters work on
/// `year`), everything else stays a string.
fn payload_value(value: &str) -> serde_json::Value {
    match value.parse::<i64>() {
        Ok(n) if n.to_string() == value => serde_json::Value::from(n),
        _ => serde_json::Value::from(value),
    }
}

/// Every image under `dir` (recursively, sorted by path): the id is the path relative to `dir`
/// without its extension (`shoes/123`), the payload `{"path": "<relative path>"}`. Linked
/// folders are not entered; linked files are listed, and must resolve inside `dir` unless
/// `allow_outside_root`.
pub fn read_dir(dir: &Path, allow_outside_root: bool) -> anyhow::Result<Records> {
    if !dir.is_dir() {
        bail!(
            "image folder {} does not exist or is not a folder",
            dir.display()
        );
    }
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot list folder {}", current.display()))?;
        for entry in entries {
            let entry =
                entry.with_context(|| format!("cannot list folder {}", current.display()))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .with_context(|| format!("cannot stat {}", path.display()))?;
            if kind.is_dir() {
                pending.push(path);
            } else if has_image_extension(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut out = Records {
        root: (!allow_outside_root).then(|| dir.to_path_buf()),
        ..Records::default()
    };
    let mut seen = HashMap::new();
    for (i, path) in files.into_iter().enumerate() {
        let relative = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
        let rel_str = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        let id = match rel_str.rsplit_once('.') {
            Some((stem, _)) => stem.to_string(),
            None => rel_str.clone(),
        };
        let mut payload = Payload::new();
        payload.insert("path".to_string(), serde_json::Value::from(rel_str));
        out.push(i as u64 + 1, &id, path, payload, &mut seen);
    }
    Ok(out)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_source(dir: &Path, body: &str) -> CsvSource {
        let file = dir.join("items.csv");
        std::fs::write(&file, body).unwrap();
        CsvSource {
            file,
            image_root: None,
            id_column: "id".into(),
            path_column: "path".into(),
            payload_columns: None,
            allow_outside_root: false,
        }
    }

    #[test]
    fn csv_rows_become_records_with_typed_payloads() {
        let dir = tempfile::tempdir().unwrap();
        let src = csv_source(
            dir.path(),
            "path,id,colour,year\nimg/a.jpg,a,Red,2011\nimg/b.jpg,b,,0042\n",
        );
        let recs = src.read().unwrap();
        assert!(recs.rejected.is_empty());
        assert_eq!(recs.records.len(), 2);
        let a = &recs.records[0];
        assert_eq!((a.row, a.id.as_str()), (2, "a"));
        assert_eq!(a.path, dir.path().join("img/a.jpg"));
        assert_eq!(a.payload["colour"], "Red");
        assert_eq!(a.payload["year"], 2011);
        let b = &recs.records[1];
        assert!(
            !b.payload.contains_key("colour"),
            "blank cells are left out"
        );
        assert_eq!(
            b.payload["year"], "0042",
            "non-canonical integers stay strings"
        );
    }

    #[test]
    fn csv_bad_rows_are_rejected_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let src = csv_source(
            dir.path(),
            "id,path\na,a.jpg\n,b.jpg\nc,\na,d.jpg\ne,e.jpg,extra\nf,f.jpg\n",
        );
        let recs = src.read().unwrap();
        let ids: Vec<_> = recs.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "f"]);
        let reasons: Vec<_> = recs
            .rejected
            .iter()
            .map(|r| (r.row, r.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert_eq!(reasons[0].0, 3);
        assert!(reasons[0].1.contains("invalid id"));
        assert!(reasons[1].1.contains("empty image path"));
        assert!(reasons[2].1.contains("duplicate id, first seen at row 2"));
        assert!(reasons[3].1.contains("3 fields"));
        assert_eq!(recs.total(), 6);
    }

    #[test]
    fn csv_rows_are_numbered_by_record_with_crlf_and_multiline_fields() {
        let dir = tempfile::tempdir().unwrap();
        let src = csv_source(
            dir.path(),
            "id,path,title\r\na,a.jpg,x\r\nb,b.jpg,\"two\r\nlines\"\r\nc,c.jpg,y\nd,,z\n",
        );
        let recs = src.read().unwrap();
        let rows: Vec<_> = recs
            .records
            .iter()
            .map(|r| (r.id.as_str(), r.row))
            .collect();
        assert_eq!(rows, [("a", 2), ("b", 3), ("c", 4)]);
        assert_eq!(recs.records[1].payload["title"], "two\r\nlines");
        assert_eq!(recs.rejected[0].row, 5);
    }

    #[test]
    fn csv_unknown_column_and_missing_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = csv_source(dir.path(), "id,path\na,a.jpg\n");
        src.payload_columns = Some(vec!["colour".into()]);
        let err = format!("{:#}", src.read().unwrap_err());
        assert!(err.contains("column \"colour\" is not in"), "{err}");
        src.file = dir.path().join("missing.csv");
        let err = format!("{:#}", src.read().unwrap_err());
        assert!(err.contains("cannot read csv"), "{err}");
    }

    #[test]
    fn folder_lists_images_recursively_with_relative_ids() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shoes")).unwrap();
        for f in ["b.JPG", "a.png", "notes.txt", "shoes/c.webp"] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let recs = read_dir(dir.path(), false).unwrap();
        let ids: Vec<_> = recs.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "shoes/c"]);
        assert_eq!(recs.records[2].payload["path"], "shoes/c.webp");
        assert!(read_dir(&dir.path().join("nope"), false).is_err());
    }

    #[test]
    fn csv_paths_leaving_the_root_are_rejected_per_row() {
        let dir = tempfile::tempdir().unwrap();
        let src = csv_source(
            dir.path(),
            "id,path\na,/etc/passwd\nb,images/../../x.jpg\nc,../../../../etc/passwd\nd,ok.jpg\n",
        );
        let recs = src.read().unwrap();
        let ids: Vec<_> = recs.records.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["d"]);
        let reasons: Vec<_> = recs.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons[0].starts_with("absolute image path"), "{reasons:?}");
        assert!(reasons[1].contains("climbs out"), "{reasons:?}");
        assert!(reasons[2].contains("climbs out"), "{reasons:?}");
        assert_eq!(recs.root.as_deref(), Some(dir.path()));
    }

    #[test]
    fn allow_outside_root_accepts_absolute_paths_and_sets_no_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut src = csv_source(dir.path(), "id,path\na,/tmp/a.jpg\nb,../b.jpg\n");
        src.allow_outside_root = true;
        let recs = src.read().unwrap();
        assert_eq!(recs.records.len(), 2, "{:?}", recs.rejected);
        assert_eq!(recs.root, None);
    }

    // Structured random CSV text: quotes, separators, line ends, `..`, absolute paths,
    // blank and repeated ids. Reading never fails on a row (only on the header), accounts
    // for every record, and admits no path leaving the root.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn cell() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "a", "b", ",", "\"", "\r\n", "\n", "..", "/", " ", "x.jpg", "\u{0}", "ü", "1",
                ]),
                0..6,
            )
            .prop_map(|parts| parts.concat())
        }

        #[test]
        fn random_csv_rows_are_read_or_rejected() {
            let rows = prop::collection::vec(prop::collection::vec(cell(), 0..5), 0..12);
            asen_fuzz::fuzz("csv_source", 2000, rows, |rows| {
                let dir = tempfile::tempdir().unwrap();
                let mut body = String::from("id,path,colour\n");
                for row in &rows {
                    body.push_str(&row.join(","));
                    body.push('\n');
                }
                let src = csv_source(dir.path(), &body);
                let recs = src.read().unwrap();
                for r in &recs.records {
                    prop_assert!(r.path.starts_with(dir.path()), "{:?}", r.path);
                    let rel = r.path.strip_prefix(dir.path()).unwrap();
                    prop_assert!(
                        leaves_root(&rel.to_string_lossy()).is_none(),
                        "{:?}",
                        r.path
                    );
                    prop_assert!(!r.id.as_str().trim().is_empty());
                }
                Ok(())
            });
        }
    }
}
