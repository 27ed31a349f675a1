//! Write the synthetic garment dataset to a folder (PNG images, labels.csv
//! and the official ASEN layout), then print its size and attribute regions.
//!
//! `cargo run --release -p asen-train --example synthetic_garments -- OUT_DIR [TRAIN VALID TEST]`

use asen_train::{generate_synthetic, SyntheticConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = args
        .next()
        .ok_or("usage: synthetic_garments OUT_DIR [TRAIN VALID TEST]")?;
    let mut config = SyntheticConfig::default();
    let sizes: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if let [train, valid, test] = sizes[..] {
        (config.train, config.valid, config.test) = (train, valid, test);
    }
    let synthetic = generate_synthetic(&config)?;
    let dataset = synthetic.write(&out)?;
    dataset.write_official(&out)?;
    println!("{} images written to {out}", dataset.len());
    for attribute in dataset.attributes() {
        println!(
            "{:<14} {:?} regions {:?}",
            attribute.name,
            attribute.values,
            synthetic.regions(&attribute.name)
        );
    }
    Ok(())
}
