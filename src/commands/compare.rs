//! `asen compare`: the copy check between two image files, as a table.

use std::sync::Arc;

use anyhow::Context;
use asen_index::{HnswConfig, LocalStore, StoreOptions};

use crate::cli::CompareArgs;
use crate::service::compare::{self, Subject};
use crate::service::{Service, ServiceLimits};

/// Compare and print one row per attribute, then the verdict.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let a = Subject::Image(read(&args.a)?);
    let b = Subject::Image(read(&args.b)?);
    let embedder = super::load_embedder(&args.model)?;
    // No catalogue is involved: an empty in-memory store stands in.
    let scratch = tempdir()?;
    let store = LocalStore::open(scratch.path(), StoreOptions::default())?;
    let svc = Service {
        store: Arc::new(store),
        embedder: Arc::new(embedder),
        limits: ServiceLimits::default(),
        hnsw: HnswConfig::default(),
        thumbnails: None,
    };
    let result = compare::compare(&svc, &a, &b, &args.attributes).map_err(|e| match e {
        crate::service::ServiceError::Model(m) => anyhow::Error::new(m).context(format!(
            "comparing {} and {}",
            args.a.display(),
            args.b.display()
        )),
        other => anyhow::Error::new(other),
    })?;
    let mut rows = vec![vec![
        "attribute".to_string(),
        "similarity".to_string(),
        "threshold".to_string(),
        "match".to_string(),
    ]];
    for a in &result.attributes {
        rows.push(vec![
            a.attribute.clone(),
            a.similarity.map_or("-".into(), |s| format!("{s:.4}")),
            a.threshold.map_or("-".into(), |t| format!("{t:.4}")),
            match a.matches {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "?".into(),
            },
        ]);
    }
    print!("{}", super::search::table(&rows));
    println!("\nverdict: {}", result.verdict);
    println!("thresholds: {}", result.thresholds_source);
    Ok(())
}

struct TempDir(std::path::PathBuf);

impl TempDir {
    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let dir = std::env::temp_dir().join(format!(
        "asen-compare-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(TempDir(dir))
}
