//! `asen compare` and `asen search` through the real binary: readable tables, one-line errors
//! with exit code 2. Uses the shared v1 checkpoint (skipped with a notice when `../shared` is
//! absent, failing when `ASEN_REQUIRE_SHARED=1`).

use std::path::PathBuf;
use std::process::Command;

fn shared_dir() -> Option<PathBuf> {
    asen_test_support::shared_dir(&["golden/asen_v1_fashionai.pth.gz"])
}

fn asen(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compare_prints_a_table_and_names_bad_images() {
    let Some(shared) = shared_dir() else { return };
    let model = shared.join("golden/asen_v1_fashionai.pth.gz");
    let img = |n: &str| shared.join("golden/images").join(n).display().to_string();
    let m = model.display().to_string();
    let (code, out, err) = asen(&[
        "compare",
        &img("10002.jpg"),
        &img("10002.jpg"),
        "-a",
        "attr_1",
        "-a",
        "attr_4",
        "--model",
        &m,
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("attribute  similarity  threshold  match"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("attr_1     1.0000"),
        "an image is identical to itself: {out}"
    );
    assert!(out.contains("verdict: uncalibrated"), "{out}");
    let (code, _, err) = asen(&["compare", &img("10002.jpg"), "Cargo.toml", "--model", &m]);
    assert_eq!(code, 2);
    assert!(err.contains("unsupported image format of b"), "{err}");
    let (code, _, err) = asen(&[
        "compare",
        &img("10002.jpg"),
        &img("10017.jpg"),
        "-a",
        "collar",
        "--model",
        &m,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown attribute \"collar\""), "{err}");
}

#[test]
fn search_reports_a_missing_catalogue() {
    let Some(shared) = shared_dir() else { return };
    let data = tempfile::tempdir().unwrap();
    let m = shared
        .join("golden/asen_v1_fashionai.pth.gz")
        .display()
        .to_string();
    let d = data.path().display().to_string();
    let (code, _, err) = asen(&[
        "search", "--data", &d, "-c", "nope", "-a", "attr_0", "--item", "x", "--model", &m,
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("catalogue \"nope\" not found"), "{err}");
}

/// Runs the binary in `cwd`.
fn asen_in(cwd: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Three products of the bundled demo catalogue, ingested with the shipped model into
/// `<work>/data`.
fn demo_store(work: &std::path::Path) {
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/catalogue/images");
    let csv = work.join("items.csv");
    let mut text = String::from("id,path,colour\n");
    for (id, colour) in [
        ("20343", "Black"),
        ("11414", "Black"),
        ("13828", "Navy Blue"),
    ] {
        text.push_str(&format!("{id},{id}.jpg,{colour}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    // The images stay where they are: they are read from the image root, which paths in
    // the CSV may not leave.
    let (code, out, err) = asen_in(
        work,
        &[
            "ingest",
            "--catalogue",
            "demo",
            "--csv",
            "items.csv",
            "--image-root",
            images.to_str().unwrap(),
            "--data",
            "data",
            "--quiet",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("ingested 3, skipped 0, failed 0"), "{out}");
}

#[test]
fn search_by_item_loads_no_model() {
    let work = tempfile::tempdir().unwrap();
    demo_store(work.path());
    // A model path that does not exist: an item query must not try to load it.
    let (code, out, err) = asen_in(
        work.path(),
        &[
            "search",
            "--data",
            "data",
            "-c",
            "demo",
            "-a",
            "baseColour",
            "--item",
            "20343",
            "-k",
            "2",
            "--model",
            "no-such-model",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 5, "header, rule, 2 hits, model: {out}");
    assert!(
        out.lines().last().unwrap().starts_with("model: "),
        "the catalogue's model is named: {out}"
    );
    // An image query needs it, and says which one is missing.
    let image =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/catalogue/images/20343.jpg");
    let (code, _, err) = asen_in(
        work.path(),
        &[
            "search",
            "--data",
            "data",
            "-c",
            "demo",
            "-a",
            "baseColour",
            "--image",
            image.to_str().unwrap(),
            "--model",
            "no-such-model",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("cannot load model no-such-model"), "{err}");
}

#[test]
fn compare_of_two_images_opens_no_store() {
    let work = tempfile::tempdir().unwrap();
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/catalogue/images");
    let a = images.join("20343.jpg").display().to_string();
    let b = images.join("11414.jpg").display().to_string();
    let (code, out, err) = asen_in(work.path(), &["compare", &a, &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verdict: not a copy (identity "),
        "two different black tops are not a copy: {out}"
    );
    assert!(out.contains("); matching design points"), "{out}");
    assert!(
        std::fs::read_dir(work.path()).unwrap().next().is_none(),
        "compare wrote into its working folder (a store was opened)"
    );
}

#[test]
fn compare_calls_a_rescaled_cropped_reencoded_photo_a_copy() {
    let work = tempfile::tempdir().unwrap();
    let images = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/catalogue/images");
    let original = images.join("20343.jpg");
    // What a copier does: crop to 80 % of each side off centre, scale by 0.7, flip, JPEG 70.
    let photo = image::open(&original).unwrap().to_rgb8();
    let (w, h) = photo.dimensions();
    let cropped =
        image::imageops::crop_imm(&photo, w / 10, h / 20, w * 4 / 5, h * 4 / 5).to_image();
    let scaled = image::imageops::resize(
        &cropped,
        cropped.width() * 7 / 10,
        cropped.height() * 7 / 10,
        image::imageops::FilterType::Triangle,
    );
    let flipped = image::imageops::flip_horizontal(&scaled);
    let copy = work.path().join("copy.jpg");
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(flipped)
        .write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut bytes, 70,
        ))
        .unwrap();
    std::fs::write(&copy, bytes).unwrap();
    let a = original.display().to_string();
    let b = copy.display().to_string();
    let (code, out, err) = asen_in(work.path(), &["compare", &a, &b]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("verdict: copy: the same design (identity "),
        "{out}"
    );
}
