//! How much of each attribute's spatial attention (the map `explain` returns)
//! lies on the garment, over the test photos of the shared data, as a
//! markdown table (the numbers in `docs/results.md`, "Region attention").
//! A cell is garment when most of its pixels differ from the photo's median
//! border colour by more than 40 in summed RGB (`asen_train::garment_cells`).
//!
//! ```text
//! cargo run --release --example attention_on_garment -- [--model DIR] [--data CSV]
//!     [--limit N] [--heatmaps DIR --ids 20343,1636 [--sheet pattern,articleType]]
//! ```
//! Defaults: the shipped model, `../shared/data/fashion-product-images/labels.csv`,
//! every test photo. `--heatmaps` writes `ID.jpg` for the test photos `--ids`
//! names: the crop the model saw, then explain's heat-map for each attribute of
//! `--sheet` (default pattern, articleType, baseColour), side by side.

use std::path::{Path, PathBuf};

use anyhow::Context;
use asen::service::explain::heatmap;
use asen_models::{Embedder, EmbedderOptions};
use asen_train::{attention_on_garment, garment_cells};

struct Args {
    model: PathBuf,
    data: PathBuf,
    limit: usize,
    heatmaps: Option<PathBuf>,
    ids: Vec<String>,
    sheet: Vec<String>,
}

fn parse_args() -> anyhow::Result<Args> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut args = Args {
        model: root.join("models/default"),
        data: root.join("../shared/data/fashion-product-images/labels.csv"),
        limit: 0,
        heatmaps: None,
        ids: Vec::new(),
        sheet: ["pattern", "articleType", "baseColour"]
            .map(String::from)
            .to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => args.model = value.into(),
            "--data" => args.data = value.into(),
            "--limit" => args.limit = value.parse()?,
            "--heatmaps" => args.heatmaps = Some(value.into()),
            "--ids" => args.ids = value.split(',').map(str::to_string).collect(),
            "--sheet" => args.sheet = value.split(',').map(str::to_string).collect(),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// `(id, image path)` of every test row of the labels CSV.
fn test_photos(csv_path: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let root = csv_path.parent().unwrap_or(Path::new("."));
    let mut reader = csv::Reader::from_path(csv_path)
        .with_context(|| format!("cannot read {}", csv_path.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow::anyhow!("{} has no {name} column", csv_path.display()))
    };
    let (path, split, id) = (col("path")?, col("split")?, col("id")?);
    let mut out = Vec::new();
    for row in reader.records() {
        let row = row?;
        if &row[split] == "test" {
            out.push((row[id].to_string(), root.join(&row[path])));
        }
    }
    Ok(out)
}

/// Images of one size side by side.
fn sheet(tiles: &[image::RgbImage]) -> image::RgbImage {
    let (w, h) = tiles[0].dimensions();
    let mut out = image::RgbImage::new(w * tiles.len() as u32, h);
    for (i, tile) in tiles.iter().enumerate() {
        image::imageops::replace(&mut out, tile, i64::from(w) * i as i64, 0);
    }
    out
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let embedder = Embedder::load(
        &args.model,
        &EmbedderOptions {
            weights_dirs: vec![root.join("models/weights")],
            ..EmbedderOptions::default()
        },
    )?;
    let names: Vec<String> = embedder
        .card()
        .attributes
        .iter()
        .map(|a| a.name.clone())
        .collect();
    let attributes: Vec<usize> = (0..names.len()).collect();
    let mut photos = test_photos(&args.data)?;
    if args.limit > 0 {
        photos.truncate(args.limit);
    }
    if let Some(dir) = &args.heatmaps {
        std::fs::create_dir_all(dir)?;
    }
    let mut shares = vec![Vec::new(); names.len()];
    let mut garment_fraction = Vec::new();
    let started = std::time::Instant::now();
    for (done, (id, path)) in photos.iter().enumerate() {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let crop = embedder.crop(&embedder.decode(&bytes)?);
        let embeddings = embedder.embed_crops(std::slice::from_ref(&crop), &attributes)?;
        for (a, e) in embeddings[0].iter().enumerate() {
            let map = e
                .attention
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("the model's head has no spatial attention"))?;
            shares[a].push(attention_on_garment(&crop, map));
            if a == 0 {
                let cells = garment_cells(&crop, map.height, map.width);
                garment_fraction
                    .push(cells.iter().filter(|g| **g).count() as f32 / cells.len() as f32);
            }
        }
        if let (Some(dir), true) = (&args.heatmaps, args.ids.contains(id)) {
            let mut tiles = vec![crop.clone()];
            for wanted in &args.sheet {
                let a = names
                    .iter()
                    .position(|n| n == wanted)
                    .ok_or_else(|| anyhow::anyhow!("the model has no attribute {wanted}"))?;
                let map = embeddings[0][a].attention.as_ref().expect("checked above");
                tiles.push(heatmap(&crop, map));
            }
            sheet(&tiles).save(dir.join(format!("{id}.jpg")))?;
        }
        if (done + 1) % 200 == 0 {
            let rate = (done + 1) as f64 / started.elapsed().as_secs_f64();
            eprintln!(
                "{}/{} photos, {rate:.1}/s, eta {:.0} s",
                done + 1,
                photos.len(),
                (photos.len() - done - 1) as f64 / rate
            );
        }
    }
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let grid = embedder.card().input_size as usize;
    println!(
        "model {}, {} test photos, garment cells {:.2} of the grid on average (input {grid} px)",
        args.model.display(),
        photos.len(),
        mean(&garment_fraction)
    );
    println!("| attribute | attention on the garment (mean) | photos below 0.8 |");
    println!("| --- | ---: | ---: |");
    for (name, s) in names.iter().zip(&shares) {
        let below = s.iter().filter(|v| **v < 0.8).count();
        println!("| {name} | {:.3} | {below} |", mean(s));
    }
    Ok(())
}
