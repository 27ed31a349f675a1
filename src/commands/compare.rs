//! `asen compare`: the copy check between two image files, as a table.

use anyhow::Context;

use super::Needs;
use crate::cli::CompareArgs;
use crate::config::Config;
use crate::service::compare::{self, Subject};

/// Compare and print one row per attribute, then the verdict.
pub fn run(args: CompareArgs, config: &Config) -> anyhow::Result<()> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let a = Subject::Image(read(&args.a)?);
    let b = Subject::Image(read(&args.b)?);
    // Two image files: no catalogue is read, so no store is opened.
    let svc = super::open_service(
        config,
        Needs {
            store: false,
            model: true,
        },
    )?;
    let answer = compare::compare(&svc, &a, &b, &args.attributes).map_err(|e| match e {
        crate::service::ServiceError::Model(m) => anyhow::Error::new(m).context(format!(
            "comparing {} and {}",
            args.a.display(),
            args.b.display()
        )),
        other => anyhow::Error::new(other),
    })?;
    let result = answer.value;
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
    if let Some(model) = answer.model {
        println!("model: {model}");
    }
    Ok(())
}
