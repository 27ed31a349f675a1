//! `asen embed`: images in, one JSON object per image and attribute out.

use anyhow::Context;
use serde::Serialize;

use crate::cli::EmbedArgs;
use crate::config::Config;

#[derive(Serialize)]
struct Line<'a> {
    image: String,
    attribute: &'a str,
    dim: usize,
    vector: &'a [f32],
    #[serde(skip_serializing_if = "Option::is_none")]
    attention: Option<&'a asen_models::AttentionMap>,
}

/// Embed every image for the chosen attributes; prints JSON lines on stdout.
pub fn run(args: EmbedArgs, config: &Config) -> anyhow::Result<()> {
    let model = super::load_model(config)?;
    let model = model.embedder();
    let card = model.card();
    let attributes = args
        .attributes
        .iter()
        .map(|name| model.attribute_index(name))
        .collect::<Result<Vec<_>, _>>()?;
    let attributes = if attributes.is_empty() {
        (0..card.attributes.len()).collect()
    } else {
        attributes
    };
    let mut decoded = Vec::with_capacity(args.images.len());
    for path in &args.images {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let image = model
            .decode(&bytes)
            .map_err(|e| e.with_source_name(path.display().to_string()))?;
        decoded.push(image);
    }
    let embeddings = model.embed_images(&decoded, &attributes)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (path, per_attribute) in args.images.iter().zip(&embeddings) {
        for e in per_attribute {
            let line = Line {
                image: path.display().to_string(),
                attribute: &card.attributes[e.attribute].name,
                dim: e.vector.len(),
                vector: &e.vector,
                attention: if args.attention {
                    e.attention.as_ref()
                } else {
                    None
                },
            };
            serde_json::to_writer(&mut out, &line)?;
            use std::io::Write;
            writeln!(out)?;
        }
    }
    Ok(())
}
