//! `asen convert`: official `.pth` to an asen model directory.

use asen_models::{convert_checkpoint, AttributeSpec, ConvertOptions};

use crate::cli::ConvertArgs;

/// Convert and print where the model went.
pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    args.backbone.parse::<asen_models::BackboneKind>()?;
    let opts = ConvertOptions {
        attributes: (!args.attributes.is_empty())
            .then(|| args.attributes.iter().map(AttributeSpec::named).collect()),
        backbone: args.backbone.clone(),
        input_size: args.input_size,
        command: Some(std::env::args().collect::<Vec<_>>().join(" ")),
        notes: None,
    };
    let card = convert_checkpoint(&args.input, &args.output, &opts)?;
    println!(
        "wrote {} ({} {}, {} attributes, {}-d embeddings)",
        args.output.display(),
        card.head,
        card.backbone,
        card.attributes.len(),
        card.embedding_dim
    );
    Ok(())
}
