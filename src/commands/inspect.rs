//! `asen inspect`: what a model directory or checkpoint contains.

use anyhow::Context;
use asen_models::{inspect_checkpoint, ModelDir};

use crate::cli::InspectArgs;

/// Print a summary of a model directory (its card) or a checkpoint file.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    if args.model.is_dir() {
        let model = ModelDir::load(&args.model)
            .with_context(|| format!("cannot read model {}", args.model.display()))?;
        let (card, ckpt) = (&model.card, &model.checkpoint);
        println!("model:       {}", args.model.display());
        println!("variant:     {}", card.head);
        println!(
            "backbone:    {} (input {}px)",
            card.backbone, card.input_size
        );
        println!("embedding:   {} dimensions", card.embedding_dim);
        let own = ckpt.element_count();
        println!("parameters:  {own} in model.safetensors");
        if ckpt.backbone_tensors()?.is_empty() {
            println!("             (head only: backbone uses the shipped ImageNet weights)");
        }
        println!("attributes:  {}", card.attributes.len());
        for a in &card.attributes {
            let threshold = card
                .match_thresholds
                .as_ref()
                .and_then(|t| t.get(&a.name))
                .map(|t| format!(", match threshold {t:.3}"))
                .unwrap_or_default();
            println!("  {:<16} {} values{threshold}", a.name, a.values.len());
        }
        if let Some(cmd) = &card.provenance.command {
            println!("trained by:  {cmd}");
        }
    } else {
        println!("{}", inspect_checkpoint(&args.model)?);
    }
    Ok(())
}
