//! The data, sampler and metric working together on the synthetic garments,
//! with hand-made features standing in for a model: a feature read from an
//! attribute's own region must retrieve that attribute well, a feature that
//! ignores the image must not.

use asen_train::{
    evaluate_retrieval, generate_synthetic, CsvOptions, Dataset, Split, SyntheticConfig,
    TripletSampler,
};

/// Mean chroma (RGB minus grey) of the pixels inside a relative box.
fn chroma(image: &image::RgbImage, b: [f32; 4]) -> Vec<f32> {
    let (w, h) = image.dimensions();
    let mut sum = [0f32; 3];
    let mut n = 0f32;
    for (x, y, p) in image.enumerate_pixels() {
        let (rx, ry) = ((x as f32 + 0.5) / w as f32, (y as f32 + 0.5) / h as f32);
        if rx >= b[0] && rx < b[2] && ry >= b[1] && ry < b[3] {
            let grey = (p[0] as f32 + p[1] as f32 + p[2] as f32) / 3.0;
            for c in 0..3 {
                sum[c] += p[c] as f32 - grey;
            }
            n += 1.0;
        }
    }
    sum.iter().map(|s| s / n.max(1.0)).collect()
}

#[test]
fn region_features_retrieve_their_attribute_and_constant_ones_do_not() {
    let synthetic = generate_synthetic(&SyntheticConfig {
        train: 400,
        valid: 200,
        test: 300,
        seed: 11,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dataset = synthetic.write(dir.path()).unwrap();
    let mut options = CsvOptions::new(["collar", "sleeve_length", "colour", "pattern"]);
    options.seed = 11;
    let reloaded = Dataset::load_csv(dir.path().join("labels.csv"), &options).unwrap();
    assert_eq!(reloaded, dataset);

    let colour = dataset.attribute_index("colour").unwrap();
    let centre = [0.40, 0.50, 0.60, 0.80];
    let by_chroma = |i: usize, _a: usize| Ok(chroma(&synthetic.images[i], centre));
    let report = evaluate_retrieval(&dataset, Split::Test, by_chroma).unwrap();
    assert!(report.attributes[colour].map > 0.9, "{report}");
    for (a, row) in report.attributes.iter().enumerate() {
        if a != colour {
            assert!(
                row.map < 0.6,
                "chroma should not tell {}: {report}",
                row.attribute
            );
        }
    }
    let constant = evaluate_retrieval(&dataset, Split::Test, |_, _| Ok(vec![1.0])).unwrap();
    assert!(constant.map < 0.5, "{constant}");
    assert_eq!(constant.queries, report.queries);

    let sampler = TripletSampler::new(&dataset, 0).unwrap();
    assert_eq!(sampler.attributes(), vec![0, 1, 2, 3]);
    let epoch = sampler.epoch(0, 10_000);
    assert_eq!(epoch.len(), 10_000);
}
