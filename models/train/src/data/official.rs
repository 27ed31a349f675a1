//! The layout of the ASEN paper's data releases.
//!
//! A folder holds:
//! - `meta.json`: the attributes, either as a list of names (which fixes the
//!   attribute ids) with value counts and/or value names given as parallel
//!   lists or as maps keyed by name (keys case-insensitive), as in the
//!   paper's FashionAI release:
//!   `{"ATTRIBUTES": ["collar", ...], "ATTRIBUTES_NUM": {"collar": 5, ...},
//!   "ATTRIBUTES_VALUES": {"collar": ["round", ...], ...}}` or
//!   `{"attributes": [...], "num_values": [5, ...]}`; or as a map from
//!   attribute name to its value names (or count), in file order,
//!   `{"collar": ["round", "v_neck"], ...}` (optionally under `"attributes"`);
//! - `filenames_{train,valid,test}.txt`: one image path per line, relative to
//!   the folder; the 0-based line number is the image id within that split;
//! - `label_train.txt`: `id attr value [attr value ...]` per line (several
//!   lines may label one image);
//! - `query_{valid,test}.txt`, `candidate_{valid,test}.txt`: `id attr value`.
//!
//! Attributes and values may be written as 0-based ids or as names.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{Attribute, Dataset, ImageRecord, Probe, ProbeLists, Split};
use asen_models::{ModelError, Result};

/// A JSON value whose objects keep their key order (attribute order matters).
#[derive(Debug)]
enum Json {
    Null,
    Bool,
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any json value")
            }
            fn visit_unit<E>(self) -> std::result::Result<Json, E> {
                Ok(Json::Null)
            }
            fn visit_bool<E>(self, _: bool) -> std::result::Result<Json, E> {
                Ok(Json::Bool)
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Json, E> {
                Ok(Json::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Json, E> {
                Ok(Json::Number(v as f64))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Json, E> {
                Ok(Json::Number(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Json, E> {
                Ok(Json::String(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> std::result::Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element()? {
                    out.push(v);
                }
                Ok(Json::Array(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> std::result::Result<Json, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = a.next_entry::<String, Json>()? {
                    out.push((k, v));
                }
                Ok(Json::Object(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn dataset_err(path: &Path, line: usize, reason: impl Into<String>) -> ModelError {
    ModelError::Dataset {
        path: path.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// Value names from a count (`3` -> `0, 1, 2`) or a list of names.
fn value_names(v: &Json, attribute: &str, path: &Path) -> Result<Vec<String>> {
    let names = match v {
        Json::Number(n) if *n >= 1.0 && n.fract() == 0.0 => {
            (0..*n as u32).map(|i| i.to_string()).collect()
        }
        Json::Array(items) => items
            .iter()
            .map(|i| match i {
                Json::String(s) => Ok(s.clone()),
                Json::Number(n) => Ok(n.to_string()),
                _ => Err(dataset_err(
                    path,
                    0,
                    format!("attribute {attribute:?}: value names must be strings"),
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(dataset_err(
                path,
                0,
                format!("attribute {attribute:?}: expected a value count or a list of value names"),
            ))
        }
    };
    if names.is_empty() {
        return Err(dataset_err(
            path,
            0,
            format!("attribute {attribute:?} has no values"),
        ));
    }
    Ok(names)
}

fn parse_meta(path: &Path) -> Result<Vec<Attribute>> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let json: Json = serde_json::from_str(&text)
        .map_err(|e| dataset_err(path, e.line(), format!("invalid json: {e}")))?;
    let Json::Object(top) = json else {
        return Err(dataset_err(path, 0, "expected a json object"));
    };
    let get = |keys: &[&str]| {
        top.iter()
            .find(|(k, _)| keys.iter().any(|key| k.eq_ignore_ascii_case(key)))
            .map(|(_, v)| v)
    };
    let names = get(&["attributes", "attrs", "attribute_names"]);
    let values = get(&["attributes_values", "values", "value_names"]);
    let counts = get(&[
        "attributes_num",
        "num_values",
        "value_counts",
        "counts",
        "attr_num",
    ]);
    let attributes = match names {
        Some(Json::Array(names)) => {
            let mut attributes = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                let Json::String(name) = n else {
                    return Err(dataset_err(path, 0, "attribute names must be strings"));
                };
                let from_values = lookup(values, name, i).map(|v| value_names(v, name, path)).transpose()?;
                let from_counts = lookup(counts, name, i).map(|v| value_names(v, name, path)).transpose()?;
                let values = match (from_values, from_counts) {
                    (Some(v), Some(c)) if v.len() != c.len() => {
                        return Err(dataset_err(
                            path,
                            0,
                            format!(
                                "attribute {name:?} lists {} value names but counts {}",
                                v.len(),
                                c.len()
                            ),
                        ))
                    }
                    (Some(v), _) | (None, Some(v)) => v,
                    (None, None) => {
                        return Err(dataset_err(
                            path,
                            0,
                            format!("attribute {name:?} has no value count or value names"),
                        ))
                    }
                };
                attributes.push(Attribute {
                    name: name.clone(),
                    values,
                });
            }
            attributes
        }
        Some(Json::Object(map)) if values.is_none() && counts.is_none() => map_form(map, path)?,
        None if values.is_none() && counts.is_none() => map_form(&top, path)?,
        _ => {
            return Err(dataset_err(
                path,
                0,
                "expected {\"attributes\": [names], \"num_values\": [counts] or {name: count}, \"attributes_values\": {name: [values]}} or a map from attribute name to values",
            ))
        }
    };
    if attributes.is_empty() {
        return Err(dataset_err(path, 0, "no attributes"));
    }
    Ok(attributes)
}

/// Entry `name` of a map, or entry `index` of a list.
fn lookup<'a>(table: Option<&'a Json>, name: &str, index: usize) -> Option<&'a Json> {
    match table {
        Some(Json::Object(map)) => map.iter().find(|(k, _)| k == name).map(|(_, v)| v),
        Some(Json::Array(list)) => list.get(index),
        _ => None,
    }
}

fn map_form(map: &[(String, Json)], path: &Path) -> Result<Vec<Attribute>> {
    map.iter()
        .map(|(name, v)| {
            Ok(Attribute {
                name: name.clone(),
                values: value_names(v, name, path)?,
            })
        })
        .collect()
}

fn read_lines(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let mut lines: Vec<String> = text.lines().map(|l| l.trim().to_string()).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    Ok(lines)
}

struct Resolver<'a> {
    attributes: &'a [Attribute],
    by_name: HashMap<&'a str, usize>,
}

impl<'a> Resolver<'a> {
    fn new(attributes: &'a [Attribute]) -> Self {
        let by_name = attributes
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.as_str(), i))
            .collect();
        Resolver {
            attributes,
            by_name,
        }
    }

    fn attribute(&self, token: &str) -> Option<usize> {
        match token.parse::<usize>() {
            Ok(i) if i < self.attributes.len() => Some(i),
            Ok(_) => None,
            Err(_) => self.by_name.get(token).copied(),
        }
    }

    fn value(&self, attribute: usize, token: &str) -> Option<u32> {
        let values = &self.attributes[attribute].values;
        if let Some(i) = values.iter().position(|v| v == token) {
            return Some(i as u32);
        }
        match token.parse::<usize>() {
            Ok(i) if i < values.len() => Some(i as u32),
            _ => None,
        }
    }

    /// Parse `id attr value [attr value ...]` into (id, [(attr, value)]).
    fn line(
        &self,
        line: &str,
        pairs_max: Option<usize>,
        split_len: usize,
        path: &Path,
        no: usize,
    ) -> Result<(usize, Vec<(usize, u32)>)> {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        let pairs = tokens.len().saturating_sub(1) / 2;
        if tokens.len() < 3
            || tokens.len().is_multiple_of(2)
            || pairs_max.is_some_and(|m| pairs > m)
        {
            let expected = if pairs_max == Some(1) {
                "id attr value"
            } else {
                "id attr value [attr value ...]"
            };
            return Err(dataset_err(
                path,
                no,
                format!("expected `{expected}`, got {line:?}"),
            ));
        }
        let id: usize = tokens[0].parse().map_err(|_| {
            dataset_err(
                path,
                no,
                format!("image id {:?} is not a number", tokens[0]),
            )
        })?;
        if id >= split_len {
            return Err(dataset_err(
                path,
                no,
                format!("image id {id} is out of range: the split has {split_len} images"),
            ));
        }
        let mut out = Vec::with_capacity(pairs);
        for pair in tokens[1..].chunks(2) {
            let attribute = self
                .attribute(pair[0])
                .ok_or_else(|| dataset_err(path, no, format!("unknown attribute {:?}", pair[0])))?;
            let value = self.value(attribute, pair[1]).ok_or_else(|| {
                dataset_err(
                    path,
                    no,
                    format!(
                        "unknown value {:?} of attribute {:?} ({} values)",
                        pair[1],
                        self.attributes[attribute].name,
                        self.attributes[attribute].values.len()
                    ),
                )
            })?;
            out.push((attribute, value));
        }
        Ok((id, out))
    }
}

fn set_label(
    image: &mut ImageRecord,
    attribute: usize,
    value: u32,
    path: &Path,
    no: usize,
) -> Result<()> {
    match image.labels[attribute] {
        Some(old) if old != value => Err(dataset_err(
            path,
            no,
            format!(
                "conflicting labels for image {}: value {old} and {value} of attribute {attribute}",
                image.path.display()
            ),
        )),
        _ => {
            image.labels[attribute] = Some(value);
            Ok(())
        }
    }
}

impl Dataset {
    /// Load the official ASEN layout from `dir`; see the module documentation
    /// of `data::official` for the files. Valid and test labels come from the
    /// query and candidate files.
    pub fn load_official(dir: impl AsRef<Path>) -> Result<Dataset> {
        let dir = dir.as_ref();
        let meta_path = dir.join("meta.json");
        let attributes = parse_meta(&meta_path)?;
        let resolver = Resolver::new(&attributes);

        let mut images: Vec<ImageRecord> = Vec::new();
        let mut offsets = [0usize; 3];
        let mut lengths = [0usize; 3];
        for split in Split::ALL {
            let path = dir.join(format!("filenames_{split}.txt"));
            let lines = read_lines(&path)?;
            if lines.is_empty() {
                return Err(dataset_err(&path, 0, format!("the {split} split is empty")));
            }
            offsets[split as usize] = images.len();
            lengths[split as usize] = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                if line.is_empty() {
                    return Err(dataset_err(&path, i + 1, "empty file name"));
                }
                images.push(ImageRecord {
                    path: PathBuf::from(line),
                    split,
                    labels: vec![None; attributes.len()],
                });
            }
        }

        let label_path = dir.join("label_train.txt");
        let mut labelled_train = 0usize;
        for (i, line) in read_lines(&label_path)?.iter().enumerate() {
            if line.is_empty() {
                continue;
            }
            let (id, pairs) = resolver.line(line, None, lengths[0], &label_path, i + 1)?;
            let image = &mut images[offsets[0] + id];
            for (a, v) in pairs {
                set_label(image, a, v, &label_path, i + 1)?;
            }
            labelled_train += 1;
        }
        if labelled_train == 0 {
            return Err(dataset_err(&label_path, 0, "no training labels"));
        }

        let mut lists = [ProbeLists::default(), ProbeLists::default()];
        for (k, split) in [Split::Valid, Split::Test].into_iter().enumerate() {
            for kind in ["query", "candidate"] {
                let path = dir.join(format!("{kind}_{split}.txt"));
                let mut probes = Vec::new();
                for (i, line) in read_lines(&path)?.iter().enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    let (id, pairs) =
                        resolver.line(line, Some(1), lengths[split as usize], &path, i + 1)?;
                    let (attribute, value) = pairs[0];
                    let image = offsets[split as usize] + id;
                    set_label(&mut images[image], attribute, value, &path, i + 1)?;
                    probes.push(Probe {
                        image,
                        attribute,
                        value,
                    });
                }
                if probes.is_empty() {
                    return Err(dataset_err(
                        &path,
                        0,
                        format!("no {kind} in the {split} split"),
                    ));
                }
                if kind == "query" {
                    lists[k].queries = probes;
                } else {
                    lists[k].candidates = probes;
                }
            }
        }
        let [valid, test] = lists;
        Dataset::from_parts(dir, attributes, images, valid, test, &meta_path)
    }

    /// Write this dataset in the official layout into `dir` (attribute
    /// values as name lists in `meta.json`, ids elsewhere). Image paths are
    /// written relative when `dir` is the dataset root, else root-joined.
    pub fn write_official(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let write = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(|e| ModelError::io(p, e))
        };
        let meta = serde_json::json!({
            "attributes": self.attributes.iter().map(|a| a.name.clone()).collect::<Vec<_>>(),
            "num_values": self.attributes.iter().map(|a| a.values.clone()).collect::<Vec<_>>(),
        });
        write("meta.json", meta.to_string())?;
        let relative = dir == self.root;
        let mut local_id = vec![0usize; self.images.len()];
        for split in Split::ALL {
            let mut text = String::new();
            for (n, i) in self.split_indices(split).into_iter().enumerate() {
                local_id[i] = n;
                let p = if relative {
                    self.images[i].path.clone()
                } else {
                    self.root.join(&self.images[i].path)
                };
                let _ = writeln!(text, "{}", p.display());
            }
            write(&format!("filenames_{split}.txt"), text)?;
        }
        let mut text = String::new();
        for i in self.split_indices(Split::Train) {
            let pairs: Vec<String> = self.images[i]
                .labels
                .iter()
                .enumerate()
                .filter_map(|(a, v)| v.map(|v| format!("{a} {v}")))
                .collect();
            if !pairs.is_empty() {
                let _ = writeln!(text, "{} {}", local_id[i], pairs.join(" "));
            }
        }
        write("label_train.txt", text)?;
        for split in [Split::Valid, Split::Test] {
            let lists = self.probes(split);
            for (kind, probes) in [("query", &lists.queries), ("candidate", &lists.candidates)] {
                let mut text = String::new();
                for p in probes {
                    let _ = writeln!(text, "{} {} {}", local_id[p.image], p.attribute, p.value);
                }
                write(&format!("{kind}_{split}.txt"), text)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(dir: &Path, meta: &str) {
        let files = [
            ("meta.json", meta),
            ("filenames_train.txt", "a.jpg\nb.jpg\nc.jpg\n"),
            ("filenames_valid.txt", "d.jpg\ne.jpg\n"),
            ("filenames_test.txt", "f.jpg\ng.jpg\n"),
            ("label_train.txt", "0 0 1 1 0\n1 collar 0\n2 1 2\n"),
            ("query_valid.txt", "0 0 1\n"),
            ("candidate_valid.txt", "1 0 1\n1 1 2\n"),
            ("query_test.txt", "0 sleeve 0\n"),
            ("candidate_test.txt", "1 sleeve 0\n"),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn loads_list_and_map_meta_forms() {
        for meta in [
            r#"{"attributes": ["collar", "sleeve"], "num_values": [2, 3]}"#,
            r#"{"collar": ["round", "v"], "sleeve": 3}"#,
            r#"{"attributes": {"collar": 2, "sleeve": ["0", "1", "2"]}}"#,
            // The shape of the paper's FashionAI meta.json: value maps keyed
            // by name, in another order than the attribute list.
            r#"{"ATTRIBUTES": ["collar", "sleeve"], "ATTRIBUTES_NUM": {"sleeve": 3, "collar": 2},
                "ATTRIBUTES_VALUES": {"sleeve": ["none", "short", "long"], "collar": ["round", "v"]}}"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            layout(dir.path(), meta);
            let ds = Dataset::load_official(dir.path()).unwrap();
            assert_eq!(ds.attributes()[0].name, "collar");
            assert_eq!(ds.attributes()[1].name, "sleeve");
            assert_eq!(ds.len(), 7);
            assert_eq!(ds.images()[0].labels, vec![Some(1), Some(0)]);
            assert_eq!(ds.images()[1].labels, vec![Some(0), None]);
            assert_eq!(ds.images()[4].labels, vec![Some(1), Some(2)]);
            assert_eq!(ds.images()[5].split, Split::Test);
            let valid = ds.probes(Split::Valid);
            assert_eq!(
                valid.queries,
                vec![Probe {
                    image: 3,
                    attribute: 0,
                    value: 1
                }]
            );
            assert_eq!(valid.candidates.len(), 2);
        }
    }

    #[test]
    fn values_may_be_names() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), r#"{"collar": ["round", "v"], "sleeve": 3}"#);
        std::fs::write(dir.path().join("label_train.txt"), "0 collar v sleeve 2\n").unwrap();
        let ds = Dataset::load_official(dir.path()).unwrap();
        assert_eq!(ds.images()[0].labels, vec![Some(1), Some(2)]);
    }

    #[test]
    fn meta_errors() {
        for (meta, expect) in [
            (
                r#"{"attributes": ["collar"], "num_values": {"cuff": 2}}"#,
                "no value count",
            ),
            (
                r#"{"attributes": ["collar"], "num_values": [3], "values": [["a", "b"]]}"#,
                "lists 2 value names but counts 3",
            ),
            (r#"{"collar": 0}"#, "expected a value count"),
            (r#"[1, 2]"#, "expected a json object"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            layout(dir.path(), meta);
            let err = Dataset::load_official(dir.path()).unwrap_err();
            assert!(err.to_string().contains("meta.json:"), "{err}");
            assert!(err.to_string().contains(expect), "{meta}: {err}");
        }
    }

    fn assert_error(meta: &str, file: &str, text: &str, expect: &str) {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), meta);
        std::fs::write(dir.path().join(file), text).unwrap();
        let err = Dataset::load_official(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(expect),
            "{file}: {err} lacks {expect}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let meta = r#"{"collar": ["round", "v"], "sleeve": 3}"#;
        assert_error(
            meta,
            "label_train.txt",
            "0 0 1\n1 cuff 1\n",
            "label_train.txt:2: unknown attribute \"cuff\"",
        );
        assert_error(
            meta,
            "label_train.txt",
            "0 1 3\n",
            "label_train.txt:1: unknown value \"3\"",
        );
        assert_error(
            meta,
            "label_train.txt",
            "0 1\n",
            "label_train.txt:1: expected",
        );
        assert_error(meta, "label_train.txt", "x 1 1\n", "not a number");
        assert_error(meta, "label_train.txt", "9 1 1\n", "out of range");
        assert_error(
            meta,
            "query_valid.txt",
            "0 0 1 1 1\n",
            "query_valid.txt:1: expected `id attr value`",
        );
        assert_error(meta, "query_valid.txt", "1 0 0\n", "conflicting labels");
        assert_error(
            meta,
            "filenames_test.txt",
            "\n",
            "filenames_test.txt:0: the test split is empty",
        );
        assert_error(
            meta,
            "meta.json",
            "{\"collar\": }",
            "meta.json:1: invalid json",
        );
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), meta);
        std::fs::remove_file(dir.path().join("candidate_test.txt")).unwrap();
        let err = Dataset::load_official(dir.path()).unwrap_err();
        assert!(err.to_string().contains("candidate_test.txt"), "{err}");
    }

    #[test]
    fn write_then_load_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path(), r#"{"collar": ["round", "v"], "sleeve": 3}"#);
        let ds = Dataset::load_official(dir.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        ds.write_official(out.path()).unwrap();
        let back = Dataset::load_official(out.path()).unwrap();
        assert_eq!(back.attributes(), ds.attributes());
        assert_eq!(back.probes(Split::Valid), ds.probes(Split::Valid));
        assert_eq!(back.probes(Split::Test), ds.probes(Split::Test));
        for (a, b) in ds.images().iter().zip(back.images()) {
            assert_eq!(a.labels, b.labels);
            assert_eq!(dir.path().join(&a.path), b.path);
        }
    }
}
