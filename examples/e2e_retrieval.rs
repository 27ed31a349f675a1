//! Ingest the shared valid split with `asen ingest` and compare attribute-specific retrieval
//! with ImageNet pooled features, printing a markdown table (the numbers in `docs/results.md`).
//!
//! ```text
//! cargo build --release --bin asen
//! cargo run --release --example e2e_retrieval -- [--model DIR] [--queries N] [--seed S] [--asen BIN]
//! ```
//! Defaults: the shipped model, 200 test queries, seed 20200207, `target/release/asen`.

use std::path::PathBuf;

use asen_test_support::retrieval;

fn main() -> anyhow::Result<()> {
    let mut model = std::env::var_os("ASEN_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")));
    let mut queries = 200usize;
    let mut seed = 20_200_207u64;
    let mut asen = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/asen");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => model = value.into(),
            "--queries" => queries = value.parse()?,
            "--seed" => seed = value.parse()?,
            "--asen" => asen = value.into(),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    let work = tempfile::tempdir()?;
    let data = retrieval::shared_data_dir();
    anyhow::ensure!(
        data.join("labels.csv").is_file(),
        "no labels.csv in {} (set ASEN_SHARED_DIR)",
        data.display()
    );
    let eval = retrieval::evaluate(&asen, &data, &model, work.path(), queries, seed, 10)?;
    println!("model: {}", model.display());
    println!(
        "gallery: {} valid images, {} stored; ingest took {:.1} s: {}",
        eval.gallery,
        eval.stored,
        eval.ingest_time.as_secs_f64(),
        eval.ingest_summary
    );
    println!(
        "baseline: global-average-pooled {} features ({}), cosine, brute force; queries: {queries} test images, seed {seed}\n",
        eval.backbone,
        if eval.baseline_imagenet { "ImageNet weights" } else { "the model's own backbone" }
    );
    print!("{}", eval.table());
    Ok(())
}
