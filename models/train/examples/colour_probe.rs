//! How much colour the per-cell colour histogram ([`asen_models::colour`]) carries before any
//! training: baseColour mAP on the test split (the paper's protocol, as `asen eval`) of three
//! fixed descriptors pooled from the 7x7 histogram map.
//!
//! `cargo run --release -p asen-train --example colour_probe -- LABELS.csv`
//!
//! Cells are weighted by how little of them is white or light grey (product photos on a white
//! background), a crude stand-in for the spatial attention a trained head learns.

use std::collections::HashMap;

use asen_models::colour::{ColourHistogram, COLOUR_BINS, GAIN};
use asen_models::{to_tensor, PreprocessConfig};
use asen_train::{evaluate_retrieval, load_crop, CsvOptions, Dataset, Split};
use candle_core::Device;
use rayon::prelude::*;

const CELLS: usize = 49;
/// Palette entries of the two lightest greys (L 80 and 95).
const LIGHT: [usize; 2] = [5, 6];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let csv = std::env::args()
        .nth(1)
        .ok_or("usage: colour_probe LABELS.csv")?;
    let attributes = [
        "gender",
        "masterCategory",
        "subCategory",
        "articleType",
        "baseColour",
        "season",
        "usage",
        "pattern",
    ];
    let dataset = Dataset::load_csv(&csv, &CsvOptions::new(attributes))?;
    let colour = dataset.attribute_index("baseColour")?;
    let mut images = dataset
        .probes(Split::Test)
        .images_by_attribute(attributes.len())[colour]
        .clone();
    images.sort_unstable();
    images.dedup();
    let cfg = PreprocessConfig::default();
    let hist = ColourHistogram::new(&Device::Cpu)?;
    // Per image: the 7x7 histograms, [bin][cell], as probabilities.
    let maps: HashMap<usize, Vec<f32>> = images
        .par_chunks(16)
        .map(
            |chunk| -> Result<Vec<(usize, Vec<f32>)>, asen_models::ModelError> {
                let crops = chunk
                    .iter()
                    .map(|&i| load_crop(&dataset.image_path(i).unwrap_or_default(), &cfg))
                    .collect::<Result<Vec<_>, _>>()?;
                let x = to_tensor(&crops, &Device::Cpu)?;
                let rows = hist.forward(&x, 7, 7)?.flatten_from(1)?.to_vec2::<f32>()?;
                Ok(chunk
                    .iter()
                    .copied()
                    .zip(
                        rows.into_iter()
                            .map(|r| r.iter().map(|v| (v / GAIN).powi(2)).collect()),
                    )
                    .collect())
            },
        )
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    let weight = |m: &[f32], c: usize| 1.0 - LIGHT.iter().map(|&b| m[b * CELLS + c]).sum::<f32>();
    type Descriptor = Box<dyn Fn(&[f32]) -> Vec<f32> + Sync>;
    let descriptors: Vec<(&str, Descriptor)> = vec![
        (
            "raw histogram, whole image",
            Box::new(|m| {
                (0..COLOUR_BINS)
                    .map(|b| m[b * CELLS..(b + 1) * CELLS].iter().sum())
                    .collect()
            }),
        ),
        (
            "raw histogram, cells weighted by non-white share",
            Box::new(move |m| {
                (0..COLOUR_BINS)
                    .map(|b| (0..CELLS).map(|c| m[b * CELLS + c] * weight(m, c)).sum())
                    .collect()
            }),
        ),
        (
            "sqrt per cell (as cached), cells weighted alike",
            Box::new(move |m| {
                (0..COLOUR_BINS)
                    .map(|b| {
                        (0..CELLS)
                            .map(|c| m[b * CELLS + c].sqrt() * weight(m, c))
                            .sum()
                    })
                    .collect()
            }),
        ),
    ];
    println!("| descriptor (no training) | baseColour mAP, test |\n| --- | --- |");
    for (name, describe) in descriptors {
        let report = evaluate_retrieval(&dataset, Split::Test, |i, a| {
            // Only baseColour is reported; other attributes get a constant vector.
            Ok(if a == colour {
                describe(&maps[&i])
            } else {
                vec![1.0; COLOUR_BINS]
            })
        })?;
        let row = &report.attributes[colour];
        println!("| {name} | {:.2} |", row.map * 100.0);
    }
    Ok(())
}
