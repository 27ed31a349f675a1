//! End to end: `asen ingest` the valid split of the shared Fashion Product Images with the
//! shipped default model, then query `baseColour` and `articleType` with test-split images.
//! Precision@10 on each attribute must beat global-average-pooled ImageNet features of the same
//! backbone on the same queries (brute-force cosine, computed here).
//!
//! Needs `../shared` (skip-or-fail rule: `ASEN_REQUIRE_SHARED=1` fails when absent) and the
//! trained default model (`$ASEN_MODEL_DIR`, else `models/default`): skipped with a notice when
//! the model is absent, failing instead when `ASEN_REQUIRE_MODEL=1`.
//! CI-sized: the whole valid split as gallery (1,332 images), 200 test queries drawn with a
//! fixed seed (`ASEN_E2E_QUERIES` to change the number).

use std::path::{Path, PathBuf};

use asen_test_support::retrieval;

const SEED: u64 = 20_200_207;
const K: usize = 10;

#[test]
fn ingested_valid_split_beats_imagenet_pooled_features_at_precision_10() {
    let Some(data) = retrieval::shared_data() else {
        return;
    };
    let model = model_dir();
    if !model.join("card.json").is_file() {
        if std::env::var("ASEN_REQUIRE_MODEL").as_deref() == Ok("1") {
            panic!(
                "default model missing at {} (ASEN_REQUIRE_MODEL=1)",
                model.display()
            );
        }
        eprintln!(
            "NOT RUN: the trained default model is not at {} (set ASEN_MODEL_DIR)",
            model.display()
        );
        return;
    }
    let queries = std::env::var("ASEN_E2E_QUERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let work = tempfile::tempdir().unwrap();
    let eval = retrieval::evaluate(
        Path::new(env!("CARGO_BIN_EXE_asen")),
        &data,
        &model,
        work.path(),
        queries,
        SEED,
        K,
    )
    .unwrap_or_else(|e| panic!("evaluation failed: {e:#}"));
    eprintln!("{}\n{}", eval.ingest_summary, eval.table());
    assert!(
        eval.stored as f64 >= 0.99 * eval.gallery as f64,
        "only {} of {} gallery images stored: {}",
        eval.stored,
        eval.gallery,
        eval.ingest_summary
    );
    assert!(
        eval.baseline_imagenet,
        "baseline must use ImageNet weights of {}",
        eval.backbone
    );
    for r in &eval.results {
        assert!(
            r.queries >= queries / 2,
            "{}: only {} labelled queries",
            r.attribute,
            r.queries
        );
        assert!(
            r.asen > r.baseline,
            "{}: ASEN P@{K} {:.3} does not beat the ImageNet baseline {:.3}\n{}",
            r.attribute,
            r.asen,
            r.baseline,
            eval.table()
        );
    }
}

/// `$ASEN_MODEL_DIR`, else the shipped `models/default` of this checkout.
fn model_dir() -> PathBuf {
    std::env::var_os("ASEN_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/default")))
}
