//! End-to-end retrieval evaluation shared by `tests/e2e.rs` and `examples/e2e_retrieval.rs`.
//!
//! 1. Write the valid split of Fashion Product Images as a CSV and load it with the real
//!    `asen ingest` binary into a fresh local store (the gallery).
//! 2. Embed a seeded sample of test-split images with the same model and search the store on
//!    each attribute: precision@k is the share of the k hits whose label for that attribute
//!    equals the query's (blank and `NA` labels are unknown: such queries are left out, such
//!    hits never match).
//! 3. Baseline on the same queries and gallery: global-average-pooled feature maps of the same
//!    backbone with its ImageNet weights, cosine similarity, brute force.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use asen_index::{CatalogueStore, LocalStore, SearchRequest, StoreOptions};
use asen_models::{
    decode_image, resize_and_crop, to_tensor, Backbone, BackboneKind, Embedder, EmbedderOptions,
    PreprocessConfig,
};
use candle_core::{Device, Tensor};
use image::RgbImage;

/// Attributes evaluated, as named in `labels.csv` and in the model card.
pub const ATTRIBUTES: [&str; 2] = ["baseColour", "articleType"];

/// One labelled image.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// Product id.
    pub id: String,
    /// Image path relative to the data folder.
    pub path: String,
    /// Column -> value for the attribute columns.
    pub labels: HashMap<String, String>,
}

impl Labelled {
    /// The label of `attribute`, `None` when unknown (blank or `NA`).
    pub fn label(&self, attribute: &str) -> Option<&str> {
        self.labels
            .get(attribute)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty() && *s != "NA")
    }
}

/// Rows of `labels.csv` in `split`, in file order.
pub fn read_split(data_dir: &Path, split: &str) -> anyhow::Result<Vec<Labelled>> {
    let file = data_dir.join("labels.csv");
    let mut reader =
        csv::Reader::from_path(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no column {name} in {}", file.display()))
    };
    let (path_col, split_col, id_col) = (col("path")?, col("split")?, col("id")?);
    let attr_cols: Vec<(String, usize)> = ATTRIBUTES
        .iter()
        .map(|a| Ok((a.to_string(), col(a)?)))
        .collect::<anyhow::Result<_>>()?;
    let mut out = Vec::new();
    for record in reader.records() {
        let record = record?;
        if record.get(split_col) != Some(split) {
            continue;
        }
        out.push(Labelled {
            id: record.get(id_col).unwrap_or_default().to_string(),
            path: record.get(path_col).unwrap_or_default().to_string(),
            labels: attr_cols
                .iter()
                .map(|(name, i)| (name.clone(), record.get(*i).unwrap_or_default().to_string()))
                .collect(),
        });
    }
    Ok(out)
}

/// A seeded sample of `n` rows (Fisher-Yates with splitmix64), in sampled order.
pub fn sample(rows: &[Labelled], n: usize, seed: u64) -> Vec<Labelled> {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    for i in (1..idx.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        idx.swap(i, j);
    }
    idx.into_iter().take(n).map(|i| rows[i].clone()).collect()
}

/// Precision@k of one attribute, for the model and the baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeResult {
    /// Attribute name.
    pub attribute: String,
    /// Queries with a known label.
    pub queries: usize,
    /// Mean precision@k of the ASEN embedding for this attribute.
    pub asen: f64,
    /// Mean precision@k of the ImageNet pooled-feature baseline.
    pub baseline: f64,
}

/// Everything one evaluation measured.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// `k` of precision@k.
    pub k: usize,
    /// Gallery size (valid split rows).
    pub gallery: usize,
    /// Items the store holds after ingestion.
    pub stored: u64,
    /// The `asen ingest` summary line.
    pub ingest_summary: String,
    /// Wall time of `asen ingest`.
    pub ingest_time: Duration,
    /// The backbone of the model (and of the baseline).
    pub backbone: String,
    /// Whether the baseline used the shipped ImageNet weights (else the model's own backbone).
    pub baseline_imagenet: bool,
    /// One entry per evaluated attribute.
    pub results: Vec<AttributeResult>,
}

impl Evaluation {
    /// A markdown table of the results.
    pub fn table(&self) -> String {
        let mut s = format!(
            "| attribute | queries | ASEN P@{k} | ImageNet GAP ({}) P@{k} |\n| --- | --- | --- | --- |\n",
            self.backbone,
            k = self.k
        );
        for r in &self.results {
            s.push_str(&format!(
                "| {} | {} | {:.3} | {:.3} |\n",
                r.attribute, r.queries, r.asen, r.baseline
            ));
        }
        s
    }
}

fn decode_crop(
    data_dir: &Path,
    row: &Labelled,
    cfg: &PreprocessConfig,
) -> anyhow::Result<RgbImage> {
    let path = data_dir.join(&row.path);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let image =
        decode_image(&bytes, cfg).with_context(|| format!("cannot decode {}", path.display()))?;
    Ok(resize_and_crop(&image, cfg.size))
}

fn l2_normalised(mut v: Vec<f32>) -> Vec<f32> {
    asen_models::l2_normalize(&mut v);
    v
}

/// Global-average-pooled, L2-normalised backbone features of `rows`.
fn pooled_features(
    backbone: &dyn Fn(&Tensor) -> anyhow::Result<Tensor>,
    data_dir: &Path,
    rows: &[Labelled],
    cfg: &PreprocessConfig,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(32) {
        let crops = chunk
            .iter()
            .map(|r| decode_crop(data_dir, r, cfg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let x = to_tensor(&crops, &Device::Cpu)?;
        let pooled = backbone(&x)?.mean((2, 3))?.to_vec2::<f32>()?;
        out.extend(pooled.into_iter().map(l2_normalised));
    }
    Ok(out)
}

fn precision(hits: &[&Labelled], attribute: &str, label: &str) -> f64 {
    let k = hits.len().max(1);
    hits.iter()
        .filter(|h| h.label(attribute) == Some(label))
        .count() as f64
        / k as f64
}

/// Runs the whole evaluation; `work` receives the CSV, the store and the report.
pub fn evaluate(
    asen_bin: &Path,
    data_dir: &Path,
    model_dir: &Path,
    work: &Path,
    n_queries: usize,
    seed: u64,
    k: usize,
) -> anyhow::Result<Evaluation> {
    let gallery = read_split(data_dir, "valid")?;
    let queries = sample(&read_split(data_dir, "test")?, n_queries, seed);
    if gallery.is_empty() || queries.is_empty() {
        bail!("no valid or test rows in {}", data_dir.display());
    }
    let csv_path = work.join("valid.csv");
    let mut w = csv::Writer::from_path(&csv_path)?;
    w.write_record(["id", "path", "baseColour", "articleType"])?;
    for row in &gallery {
        w.write_record([
            row.id.as_str(),
            row.path.as_str(),
            row.labels["baseColour"].as_str(),
            row.labels["articleType"].as_str(),
        ])?;
    }
    w.flush()?;
    drop(w);

    // 1. The gallery, through the real binary.
    let store_dir = work.join("store");
    let started = Instant::now();
    let out = Command::new(asen_bin)
        .args(["ingest", "--catalogue", "valid", "--quiet", "--csv"])
        .arg(&csv_path)
        .arg("--image-root")
        .arg(data_dir)
        .arg("--data")
        .arg(&store_dir)
        .arg("--model")
        .arg(model_dir)
        .arg("--report")
        .arg(work.join("report.csv"))
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("cannot run {}", asen_bin.display()))?;
    let ingest_time = started.elapsed();
    if !out.status.success() {
        bail!(
            "asen ingest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ingest_summary = String::from_utf8_lossy(&out.stdout).trim().to_string();

    // 2. Queries through the model and the store.
    let opts = EmbedderOptions {
        weights_dirs: weights_dirs(),
        ..EmbedderOptions::default()
    };
    let embedder = Embedder::load(model_dir, &opts)?;
    let cfg = *embedder.preprocess_config();
    let attr_idx = ATTRIBUTES
        .iter()
        .map(|a| embedder.attribute_index(a))
        .collect::<Result<Vec<_>, _>>()
        .context("the model lacks an evaluated attribute")?;
    let store = LocalStore::open(&store_dir, StoreOptions::default())?;
    let stored = store.count("valid")?;
    let by_id: HashMap<&str, &Labelled> = gallery.iter().map(|r| (r.id.as_str(), r)).collect();
    let mut asen_sum = [0.0f64; ATTRIBUTES.len()];
    let mut counted = [0usize; ATTRIBUTES.len()];
    let mut query_crops = Vec::with_capacity(queries.len());
    for q in &queries {
        query_crops.push(decode_crop(data_dir, q, &cfg)?);
    }
    let embeddings = embedder.embed_crops(&query_crops, &attr_idx)?;
    for (q, per_attribute) in queries.iter().zip(&embeddings) {
        for (a, (attribute, e)) in ATTRIBUTES.iter().zip(per_attribute).enumerate() {
            let Some(label) = q.label(attribute) else {
                continue;
            };
            let hits = store
                .search(
                    "valid",
                    &SearchRequest::vector(*attribute, e.vector.clone(), k),
                )?
                .into_hits();
            let hits: Vec<&Labelled> = hits
                .iter()
                .filter_map(|h| by_id.get(h.id.as_str()).copied())
                .collect();
            asen_sum[a] += precision(&hits, attribute, label);
            counted[a] += 1;
        }
    }

    // 3. The baseline: ImageNet weights of the same backbone, pooled, brute force.
    let kind: BackboneKind = embedder.card().backbone.parse()?;
    let imagenet = match kind.imagenet_weights_path(&weights_dirs()) {
        Ok(path) => Some(Backbone::load(kind, &path, &Device::Cpu)?),
        Err(_) => None,
    };
    let forward = |x: &Tensor| -> anyhow::Result<Tensor> {
        Ok(match &imagenet {
            Some(b) => b.forward(x)?,
            None => embedder.features(x)?,
        })
    };
    let gallery_feats = pooled_features(&forward, data_dir, &gallery, &cfg)?;
    let query_feats = pooled_features(&forward, data_dir, &queries, &cfg)?;
    let mut base_sum = [0.0f64; ATTRIBUTES.len()];
    for (q, qf) in queries.iter().zip(&query_feats) {
        let mut scored: Vec<(f32, usize)> = gallery_feats
            .iter()
            .enumerate()
            .map(|(i, g)| (g.iter().zip(qf).map(|(a, b)| a * b).sum::<f32>(), i))
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let hits: Vec<&Labelled> = scored.iter().take(k).map(|&(_, i)| &gallery[i]).collect();
        for (a, attribute) in ATTRIBUTES.iter().enumerate() {
            if let Some(label) = q.label(attribute) {
                base_sum[a] += precision(&hits, attribute, label);
            }
        }
    }
    let results = ATTRIBUTES
        .iter()
        .enumerate()
        .map(|(a, attribute)| AttributeResult {
            attribute: attribute.to_string(),
            queries: counted[a],
            asen: asen_sum[a] / counted[a].max(1) as f64,
            baseline: base_sum[a] / counted[a].max(1) as f64,
        })
        .collect();
    Ok(Evaluation {
        k,
        gallery: gallery.len(),
        stored,
        ingest_summary,
        ingest_time,
        backbone: kind.name().to_string(),
        baseline_imagenet: imagenet.is_some(),
        results,
    })
}

/// The data folder inside the shared fixtures.
pub const DATA_DIR: &str = "data/fashion-product-images";

/// The shared Fashion Product Images folder (`<shared>/data/fashion-product-images`), where
/// it may be: the caller checks for `labels.csv` (the example reports a missing one itself).
pub fn shared_data_dir() -> PathBuf {
    crate::shared_root().join(DATA_DIR)
}

/// The shared Fashion Product Images folder through the fixture gate ([`crate::shared_dir`]):
/// `None` after the skip notice when `labels.csv` is missing, a panic under
/// `ASEN_REQUIRE_SHARED=1`.
pub fn shared_data() -> Option<PathBuf> {
    crate::shared_dir(&["data/fashion-product-images/labels.csv"]).map(|d| d.join(DATA_DIR))
}

/// The shipped ImageNet weights of this source tree (`models/weights/` of the checkout; this
/// crate lives in `tests/support`).
fn weights_dirs() -> Vec<PathBuf> {
    vec![PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/weights"
    ))]
}
