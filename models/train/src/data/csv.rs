//! The CSV loader: one row per image, a path column, a split column and
//! attribute columns chosen by the caller.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{build_from_named, Dataset, Split};
use asen_models::{ModelError, Result};

/// How to read a CSV dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    /// Column holding the image path, relative to the CSV's folder.
    pub path_column: String,
    /// Column holding `train`, `valid` (or `val`) or `test`.
    pub split_column: String,
    /// Attribute columns, in the order that defines attribute ids.
    pub attributes: Vec<String>,
    /// Seed of the 1:4 query/candidate draw of the valid and test splits.
    pub seed: u64,
}

impl CsvOptions {
    /// Options reading `attributes` with the default `path` and `split`
    /// columns and seed 0.
    pub fn new<S: Into<String>>(attributes: impl IntoIterator<Item = S>) -> Self {
        CsvOptions {
            path_column: "path".into(),
            split_column: "split".into(),
            attributes: attributes.into_iter().map(Into::into).collect(),
            seed: 0,
        }
    }
}

fn column(headers: &::csv::StringRecord, name: &str, path: &Path) -> Result<usize> {
    headers
        .iter()
        .position(|h| h.trim() == name)
        .ok_or_else(|| ModelError::Dataset {
            path: path.to_path_buf(),
            line: 1,
            reason: format!(
                "no column {name:?}; the header has: {}",
                headers.iter().collect::<Vec<_>>().join(", ")
            ),
        })
}

impl Dataset {
    /// Load a CSV dataset (RFC 4180 quoting, a header row). Blank cells and
    /// `NA` are unknown values. Value ids are assigned by frequency over the
    /// whole file (most frequent first, ties by name), so they are stable.
    /// The root is the CSV's folder.
    pub fn load_csv(csv_path: impl AsRef<Path>, options: &CsvOptions) -> Result<Dataset> {
        let path = csv_path.as_ref();
        if options.attributes.is_empty() {
            return Err(ModelError::InvalidArgument(format!(
                "no attribute columns given for {}",
                path.display()
            )));
        }
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(true)
            .flexible(false)
            .from_reader(std::io::BufReader::new(file));
        let malformed = |e: ::csv::Error| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            ModelError::Dataset {
                path: path.to_path_buf(),
                line,
                reason: format!("malformed csv: {e}"),
            }
        };
        let headers = reader.headers().map_err(malformed)?.clone();
        let path_col = column(&headers, &options.path_column, path)?;
        let split_col = column(&headers, &options.split_column, path)?;
        let attr_cols = options
            .attributes
            .iter()
            .map(|a| column(&headers, a, path))
            .collect::<Result<Vec<_>>>()?;

        let mut rows = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut record = ::csv::StringRecord::new();
        loop {
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => return Err(malformed(e)),
            }
            let line = record.position().map_or(0, |p| p.line() as usize);
            let bad = |reason: String| ModelError::Dataset {
                path: path.to_path_buf(),
                line,
                reason,
            };
            let image = record.get(path_col).unwrap_or("").trim();
            if image.is_empty() {
                return Err(bad(format!("empty {:?} cell", options.path_column)));
            }
            if let Some(first) = seen.insert(image.to_string(), line) {
                return Err(bad(format!(
                    "image {image:?} is listed again (first on line {first})"
                )));
            }
            let split_cell = record.get(split_col).unwrap_or("");
            let split = Split::parse(split_cell).ok_or_else(|| {
                bad(format!(
                    "unknown split {split_cell:?} (expected train, valid or test)"
                ))
            })?;
            let labels = attr_cols
                .iter()
                .map(|&c| {
                    let v = record.get(c).unwrap_or("").trim();
                    (!v.is_empty() && v != "NA").then(|| v.to_string())
                })
                .collect();
            rows.push((PathBuf::from(image), split, labels));
        }
        let root = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        build_from_named(root, &options.attributes, rows, options.seed, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("labels.csv");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_quoted_rows_and_unknowns() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "path,split,colour,name\n\
             a.jpg,train,red,\"Shirt, red\"\n\
             b.jpg,train,NA,x\n\
             c.jpg,val,blue,x\n\
             d.jpg,test,,x\n\
             e.jpg,test,red,x\n",
        );
        let ds = Dataset::load_csv(&p, &CsvOptions::new(["colour"])).unwrap();
        assert_eq!(ds.root(), dir.path());
        assert_eq!(ds.attributes()[0].values, vec!["red", "blue"]);
        let labels: Vec<_> = ds.images().iter().map(|i| i.labels[0]).collect();
        assert_eq!(labels, vec![Some(0), None, Some(1), None, Some(0)]);
        assert_eq!(ds.images()[2].split, Split::Valid);
        assert_eq!(ds.image_path(0).unwrap(), dir.path().join("a.jpg"));
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "path,split,colour\na.jpg,train,red\nb.jpg,dev,red\n",
        );
        let err = Dataset::load_csv(&p, &CsvOptions::new(["colour"])).unwrap_err();
        assert!(matches!(err, ModelError::Dataset { line: 3, .. }), "{err}");
        assert!(err.to_string().contains("labels.csv:3"), "{err}");

        let err = Dataset::load_csv(&p, &CsvOptions::new(["collar"])).unwrap_err();
        assert!(err.to_string().contains("no column \"collar\""), "{err}");

        let p = write(
            dir.path(),
            "path,split,colour\na.jpg,train,red\na.jpg,test,red\n",
        );
        let err = Dataset::load_csv(&p, &CsvOptions::new(["colour"])).unwrap_err();
        assert!(
            err.to_string().contains("listed again (first on line 2)"),
            "{err}"
        );

        let p = write(dir.path(), "path,split,colour\na.jpg,train\n");
        let err = Dataset::load_csv(&p, &CsvOptions::new(["colour"])).unwrap_err();
        assert!(matches!(err, ModelError::Dataset { line: 2, .. }), "{err}");

        let err = Dataset::load_csv(dir.path().join("nope.csv"), &CsvOptions::new(["colour"]))
            .unwrap_err();
        assert!(matches!(err, ModelError::Io { .. }));
    }

    #[test]
    fn fashion_product_images_labels_load() {
        let Some(shared) =
            asen_test_support::shared_dir(&["data/fashion-product-images/labels.csv"])
        else {
            return;
        };
        let csv = shared.join("data/fashion-product-images/labels.csv");
        let ds = Dataset::load_csv(
            &csv,
            &CsvOptions::new(["articleType", "baseColour", "pattern"]),
        )
        .unwrap();
        assert_eq!(ds.len(), 9933);
        assert_eq!(ds.split_indices(Split::Train).len(), 6787);
        assert_eq!(ds.attributes()[2].values.len(), 4);
        let pattern_test = ds
            .probes(Split::Test)
            .queries
            .iter()
            .chain(&ds.probes(Split::Test).candidates)
            .filter(|p| p.attribute == 2)
            .count();
        assert_eq!(pattern_test, 565);
    }
}
