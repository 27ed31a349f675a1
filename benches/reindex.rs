//! Reindex against ingest on the shared valid split, and what re-embedding from the stored
//! crops does to retrieval.
//!
//!   cargo bench --bench reindex          # needs ../shared (or ASEN_SHARED_DIR)
//!
//! 1. `asen ingest` of the split with the shipped model (reads, decodes and resizes the
//!    originals): wall time and items/s.
//! 2. `asen reindex` of that catalogue to the same network under another fingerprint (the
//!    shipped model with a changed card note): it re-embeds every item from its stored
//!    224x224 JPEG crop, so it costs what a reindex to a retrained model costs; wall time and
//!    items/s.
//! 3. Precision@10 and mAP (full ranking) of item-to-item search for every labelled attribute (the payload's label,
//!    the query item excluded), on up to 300 query items, for the catalogue as ingested and
//!    as re-embedded: the difference is what the JPEG round trip of the crops costs.
//!
//! Model load and store open are included in both wall times. Prints one table.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use asen_index::{CatalogueStore, LocalStore, Query, SearchRequest, StoreOptions};

const QUERIES: usize = 300;

fn shared() -> PathBuf {
    std::env::var_os("ASEN_SHARED_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"),
        PathBuf::from,
    )
}

fn run(args: &[&str]) -> f64 {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run asen");
    assert!(
        out.status.success(),
        "asen {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed().as_secs_f64()
}

/// The shipped model under another fingerprint: same weights, a changed card note.
fn renamed_model(work: &Path) -> PathBuf {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let to = work.join("model-b");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let card_path = to.join("card.json");
    let mut card: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&card_path).unwrap()).unwrap();
    card["provenance"]["notes"] = "the shipped model, copied for benches/reindex.rs".into();
    std::fs::write(&card_path, serde_json::to_vec_pretty(&card).unwrap()).unwrap();
    to
}

/// Per labelled attribute of item-to-item search: mean precision@10 (the 10 nearest other
/// items, unlabelled ones counting as misses) and mean average precision over the full
/// ranking of the other items labelled for the attribute.
fn retrieval(store: &LocalStore) -> BTreeMap<String, (f64, f64)> {
    let schema = store.schema("bench").unwrap();
    let mut ids = Vec::new();
    let mut after = None;
    loop {
        let page = store.list("bench", after.as_ref(), 256).unwrap();
        ids.extend(page.items.into_iter().map(|i| (i.id, i.payload)));
        match page.next_cursor {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let step = (ids.len() / QUERIES).max(1);
    let mut out = BTreeMap::new();
    for attribute in schema.attributes.iter().filter(|a| *a != "identity") {
        let (mut p10, mut ap, mut n) = (0.0, 0.0, 0);
        for (id, payload) in ids.iter().step_by(step).take(QUERIES) {
            let Some(label) = payload.get(attribute).filter(|v| !v.is_null()) else {
                continue;
            };
            let mut request = SearchRequest::new(
                Query::Item {
                    id: id.clone(),
                    attributes: vec![asen_index::AttributeWeight {
                        attribute: attribute.clone(),
                        weight: 1.0,
                    }],
                },
                ids.len(),
            );
            request.with_payload = true;
            request.ef_search = Some(ids.len());
            let hits = store.search("bench", &request).unwrap().into_hits();
            let labels: Vec<bool> = hits
                .iter()
                .filter(|h| &h.id != id)
                .filter_map(|h| h.payload.as_ref().and_then(|p| p.get(attribute)))
                .filter(|v| !v.is_null())
                .map(|v| v == label)
                .collect();
            let top: Vec<_> = hits.iter().filter(|h| &h.id != id).take(10).collect();
            let same = top
                .iter()
                .filter(|h| h.payload.as_ref().and_then(|p| p.get(attribute)) == Some(label))
                .count();
            p10 += same as f64 / 10.0;
            ap += asen_train::average_precision(labels);
            n += 1;
        }
        let n = n.max(1) as f64;
        out.insert(attribute.clone(), (p10 / n, ap / n));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn main() {
    let data = shared().join("data/fashion-product-images");
    let labels = std::fs::read_to_string(data.join("labels.csv")).expect("../shared labels.csv");
    let work = tempfile::tempdir().unwrap();
    let csv = work.path().join("valid.csv");
    let rows: Vec<&str> = labels
        .lines()
        .enumerate()
        .filter(|(i, l)| *i == 0 || l.split(',').nth(1) == Some("valid"))
        .map(|(_, l)| l)
        .collect();
    std::fs::write(&csv, rows.join("\n") + "\n").unwrap();
    let items = rows.len() - 1;
    let store = work.path().join("store");
    let (csv_s, data_s, store_s) = (
        csv.to_str().unwrap(),
        data.to_str().unwrap(),
        store.to_str().unwrap(),
    );
    let ingest_s = run(&[
        "ingest",
        "--catalogue",
        "bench",
        "--csv",
        csv_s,
        "--image-root",
        data_s,
        "--data",
        store_s,
        "--report",
        work.path().join("report.csv").to_str().unwrap(),
        "--quiet",
    ]);
    let ingested = work.path().join("ingested");
    copy_dir(&store, &ingested);
    let model_b = renamed_model(work.path());
    let reindex_s = run(&[
        "reindex",
        "--catalogue",
        "bench",
        "--data",
        store_s,
        "--model",
        model_b.to_str().unwrap(),
    ]);
    let before = retrieval(&LocalStore::open(&ingested, StoreOptions::default()).unwrap());
    let after = retrieval(&LocalStore::open(&store, StoreOptions::default()).unwrap());
    println!(
        "valid split: {items} images, {} cores, shipped model, batch 16",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| step | wall (s) | items/s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| `asen ingest` (originals) | {ingest_s:.1} | {:.1} |",
        items as f64 / ingest_s
    );
    println!(
        "| `asen reindex` (stored crops) | {reindex_s:.1} | {:.1} |",
        items as f64 / reindex_s
    );
    println!();
    println!("reindex / ingest items/s: {:.2}x", ingest_s / reindex_s);
    println!();
    println!(
        "| attribute | P@10 ingested | P@10 re-embedded from crops | mAP ingested | mAP re-embedded |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (attribute, (p, m)) in &before {
        let (p2, m2) = after[attribute];
        println!("| {attribute} | {p:.3} | {p2:.3} | {m:.3} | {m2:.3} |");
    }
    let mean = |m: &BTreeMap<String, (f64, f64)>, f: fn(&(f64, f64)) -> f64| {
        m.values().map(f).sum::<f64>() / m.len().max(1) as f64
    };
    println!(
        "| mean | {:.3} | {:.3} | {:.3} | {:.3} |",
        mean(&before, |v| v.0),
        mean(&after, |v| v.0),
        mean(&before, |v| v.1),
        mean(&after, |v| v.1)
    );
}
