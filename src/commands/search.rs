//! `asen search`: query a catalogue of a local data directory and print a table.

use anyhow::Context;

use super::Needs;
use crate::cli::SearchArgs;
use crate::config::Config;
use crate::service::search::{self, QuerySource, SearchQuery};

/// Parse `name` or `name=weight`.
fn parse_attribute(text: &str) -> anyhow::Result<(String, f32)> {
    match text.split_once('=') {
        None => Ok((text.to_string(), 1.0)),
        Some((name, w)) => {
            let weight: f32 = w
                .parse()
                .with_context(|| format!("attribute {text:?}: weight {w:?} is not a number"))?;
            Ok((name.to_string(), weight))
        }
    }
}

/// Run the search and print rank, id, score, per-attribute scores and chosen payload fields.
pub fn run(args: SearchArgs, config: &Config) -> anyhow::Result<()> {
    let attributes = args
        .attributes
        .iter()
        .map(|a| parse_attribute(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let source = match (&args.image, &args.item) {
        (Some(path), _) => QuerySource::Image(
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
        ),
        (None, Some(id)) => QuerySource::Item(asen_index::ItemId::new(id.clone())?),
        (None, None) => anyhow::bail!("give --image or --item"),
    };
    // Only an image query runs the network; item queries read stored vectors.
    let svc = super::open_service(
        config,
        Needs {
            store: true,
            model: matches!(source, QuerySource::Image(_)),
        },
    )?;
    let mut query = SearchQuery::new(String::new(), source, args.k);
    query.attributes = attributes;
    query.rerank_by = args.rerank_by.clone();
    query.with_payload = !args.show.is_empty();
    let answer = search::search(&svc, &args.catalogue, &query)?;
    let hits = answer.value.into_hits();
    let mut score_columns: Vec<String> = query.attributes.iter().map(|(a, _)| a.clone()).collect();
    if let Some(r) = &args.rerank_by {
        if !score_columns.contains(r) {
            score_columns.push(r.clone());
        }
    }
    let mut rows = vec![{
        let mut h = vec!["rank".to_string(), "id".to_string(), "score".to_string()];
        h.extend(score_columns.iter().cloned());
        h.extend(args.show.iter().cloned());
        h
    }];
    for (i, hit) in hits.iter().enumerate() {
        let mut row = vec![
            (i + 1).to_string(),
            hit.id.to_string(),
            format!("{:.4}", hit.score),
        ];
        for a in &score_columns {
            row.push(
                hit.attribute_scores
                    .get(a)
                    .map_or("-".to_string(), |s| format!("{s:.4}")),
            );
        }
        for field in &args.show {
            let v = hit.payload.as_ref().and_then(|p| p.get(field));
            row.push(match v {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => "-".to_string(),
            });
        }
        rows.push(row);
    }
    print!("{}", table(&rows));
    if hits.is_empty() {
        println!("(no hits)");
    }
    println!(
        "model: {}",
        answer.model.as_deref().unwrap_or("not recorded")
    );
    Ok(())
}

/// Left-aligned columns separated by two spaces, a rule under the header.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_attribute_flags() {
        assert_eq!(parse_attribute("collar").unwrap(), ("collar".into(), 1.0));
        assert_eq!(
            parse_attribute("collar=0.5").unwrap(),
            ("collar".into(), 0.5)
        );
        assert!(parse_attribute("collar=x").is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(&[
            vec!["id".into(), "score".into()],
            vec!["sku-1".into(), "0.9".into()],
        ]);
        assert_eq!(t, "id     score\n-----  -----\nsku-1  0.9\n");
    }
}
