//! The real `asen` binary on real catalogue photos from `../shared/data/fashion-product-images`.
//!
//! Needs the shared fixtures: skipped with a notice when they are absent, failing instead when
//! `ASEN_REQUIRE_SHARED=1`. The model is the official v1 checkpoint from `../shared/golden`
//! (random-weight head, attributes `attr_0..attr_7`), so these tests do not depend on the
//! trained default model.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use asen_index::{CatalogueStore, Item, ItemId, LocalStore, SearchRequest, StoreOptions};
use base64::Engine;
use sha2::{Digest, Sha256};

fn shared_dir() -> Option<PathBuf> {
    asen_test_support::shared_dir(&[
        "data/fashion-product-images/labels.csv",
        "golden/asen_v1_fashionai.pth.gz",
    ])
}

fn asen(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .env_remove("ASEN_API_KEY")
        .env_remove("ASEN_DATA")
        .output()
        .expect("run asen")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The first `n` rows of `split` in labels.csv: (path relative to the data folder, full row).
fn labelled_rows(shared: &Path, split: &str, n: usize) -> (String, Vec<String>) {
    let text =
        std::fs::read_to_string(shared.join("data/fashion-product-images/labels.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    let rows = lines
        .filter(|l| l.split(',').nth(1) == Some(split))
        .take(n)
        .map(str::to_string)
        .collect();
    (header, rows)
}

/// A work folder with a CSV of `good` real images (copied), one corrupt image and one missing
/// file. Returns (folder, csv path, ids of the good rows).
fn catalogue_fixture(shared: &Path, good: usize) -> (tempfile::TempDir, PathBuf, Vec<String>) {
    let work = tempfile::tempdir().unwrap();
    let data = shared.join("data/fashion-product-images");
    let (header, rows) = labelled_rows(shared, "valid", good);
    std::fs::create_dir(work.path().join("images_225x300")).unwrap();
    std::fs::create_dir(work.path().join("images_224")).unwrap();
    let mut csv = format!("{header}\n");
    let mut ids = Vec::new();
    for row in &rows {
        let path = row.split(',').next().unwrap();
        std::fs::copy(data.join(path), work.path().join(path)).unwrap();
        ids.push(row.split(',').nth(2).unwrap().to_string());
        csv.push_str(row);
        csv.push('\n');
    }
    // A truncated JPEG (the first 2 kB of a real one) and a row whose file does not exist.
    let first = std::fs::read(work.path().join(rows[0].split(',').next().unwrap())).unwrap();
    std::fs::write(work.path().join("images_224/corrupt.jpg"), &first[..2048]).unwrap();
    csv.push_str("images_224/corrupt.jpg,valid,corrupt,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,,Broken\n");
    csv.push_str("images_224/missing.jpg,valid,missing,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,,Gone\n");
    let csv_path = work.path().join("items.csv");
    std::fs::write(&csv_path, csv).unwrap();
    (work, csv_path, ids)
}

fn golden_model(shared: &Path) -> String {
    shared
        .join("golden/asen_v1_fashionai.pth.gz")
        .display()
        .to_string()
}

#[test]
fn csv_ingest_reports_bad_images_and_rerun_skips_everything() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, ids) = catalogue_fixture(&shared, 6);
    let model = golden_model(&shared);
    let args = [
        "ingest",
        "--catalogue",
        "shop",
        "--csv",
        csv.to_str().unwrap(),
        "--data",
        "store",
        "--model",
        &model,
        "--batch-size",
        "4",
        "--upsert-batch",
        "4",
        "--report",
        "report.csv",
        "--payload-columns",
        "articleType,baseColour,year",
        "--quiet",
    ];
    let first = asen(&args, work.path());
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    let line = stdout(&first);
    assert!(
        line.starts_with("ingested 6, skipped 0, failed 2 of 8 rows"),
        "summary: {line}"
    );
    assert!(line.contains("items/s") && line.contains("failures listed in report.csv"));

    let report = std::fs::read_to_string(work.path().join("report.csv")).unwrap();
    let mut lines = report.lines();
    assert_eq!(lines.next(), Some("row,id,path,reason"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.len(), 2, "{report}");
    let corrupt = rest
        .iter()
        .find(|l| l.contains(",corrupt,"))
        .expect("corrupt row");
    assert!(
        corrupt.starts_with("8,") && corrupt.contains("truncated JPEG"),
        "{corrupt}"
    );
    let missing = rest
        .iter()
        .find(|l| l.contains(",missing,"))
        .expect("missing row");
    assert!(
        missing.starts_with("9,") && missing.contains("cannot read image"),
        "{missing}"
    );

    // Same command again: every stored image has the same hash, nothing is embedded.
    let second = asen(&args, work.path());
    assert!(second.status.success(), "stderr: {}", stderr(&second));
    let line = stdout(&second);
    assert!(
        line.starts_with("ingested 0, skipped 6, failed 2 of 8 rows"),
        "summary: {line}"
    );
    assert!(line.contains("model 0.0% of the time"), "{line}");

    // Every ingested item has its model-input crop as a 224x224 JPEG, in the store.
    {
        let store = LocalStore::open(work.path().join("store"), StoreOptions::default()).unwrap();
        let page = store.list("shop", None, 100).unwrap();
        assert_eq!(page.items.len(), 6);
        assert!(page.items.iter().all(|i| i.has_thumbnail));
        let mut sizes = Vec::new();
        for stored in &page.items {
            let jpeg = store
                .thumbnail("shop", &stored.id)
                .unwrap()
                .expect("thumbnail");
            let crop = image::load_from_memory(&jpeg).unwrap();
            assert_eq!((crop.width(), crop.height()), (224, 224));
            sizes.push(jpeg.len());
        }
        eprintln!("thumbnail bytes: {sizes:?}");
        // A missing thumbnail makes a re-run embed that item again, even with the same image:
        // store the item again, same hash, without its thumbnail.
        let id = ItemId::new(ids[1].clone()).unwrap();
        let stored = store.get("shop", &id, true).unwrap().expect("item");
        let mut item = Item::new(id.clone(), stored.vectors.expect("vectors"));
        item.payload = stored.payload;
        item.content_hash = stored.content_hash;
        store.upsert("shop", &[item]).unwrap();
        assert!(store.thumbnail("shop", &id).unwrap().is_none());
    }
    let third = asen(&args, work.path());
    assert!(third.status.success(), "stderr: {}", stderr(&third));
    assert!(
        stdout(&third).starts_with("ingested 1, skipped 5, failed 2 of 8 rows"),
        "summary: {}",
        stdout(&third)
    );

    let store = LocalStore::open(work.path().join("store"), StoreOptions::default()).unwrap();
    assert_eq!(store.count("shop").unwrap(), 6);
    let restored = store.list("shop", None, 100).unwrap();
    assert!(
        restored.items.iter().all(|i| i.has_thumbnail),
        "thumbnail restored"
    );
    let schema = store.schema("shop").unwrap();
    assert_eq!(schema.attributes.len(), 8);
    assert_eq!(schema.attributes[0], "attr_0");
    let id = ItemId::new(ids[2].clone()).unwrap();
    let item = store.get("shop", &id, true).unwrap().expect("item stored");
    let hash = item.content_hash.as_deref().expect("content hash stored");
    assert_eq!(hash.len(), 64);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(item.payload.len(), 3, "{:?}", item.payload);
    assert!(item.payload["year"].is_i64(), "{:?}", item.payload);
    assert!(item.payload["articleType"].is_string());
    let vectors = item.vectors.expect("vectors");
    assert_eq!(vectors.len(), 8);
    for (attribute, vector) in &vectors {
        assert_eq!(vector.len(), schema.dimension);
        let hits = store
            .search("shop", &SearchRequest::vector(attribute, vector.clone(), 3))
            .unwrap()
            .into_hits();
        assert_eq!(hits[0].id, id, "attribute {attribute}: {hits:?}");
        assert!(hits[0].score > 0.999, "{}", hits[0].score);
    }
}

#[test]
fn csv_ingest_writes_a_changed_payload_again() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, ids) = catalogue_fixture(&shared, 2);
    let model = golden_model(&shared);
    let args = [
        "ingest",
        "--catalogue",
        "shop",
        "--csv",
        csv.to_str().unwrap(),
        "--data",
        "store",
        "--model",
        &model,
        "--report",
        "report.csv",
        "--payload-columns",
        "articleType",
        "--quiet",
    ];
    let first = asen(&args, work.path());
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    // Same images, one row's article type edited: only that row is written again.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let row = lines
        .iter()
        .position(|l| l.split(',').nth(2) == Some(ids[0].as_str()))
        .expect("row of the first id");
    let mut fields: Vec<String> = lines[row].split(',').map(str::to_string).collect();
    fields[6] = "Edited".into(); // articleType
    lines[row] = fields.join(",");
    std::fs::write(&csv, lines.join("\n") + "\n").unwrap();
    let second = asen(&args, work.path());
    assert!(second.status.success(), "stderr: {}", stderr(&second));
    assert!(
        stdout(&second).starts_with("ingested 1, skipped 1, failed 2 of 4 rows"),
        "{}",
        stdout(&second)
    );
    let store = LocalStore::open(work.path().join("store"), StoreOptions::default()).unwrap();
    let id = ItemId::new(ids[0].clone()).unwrap();
    let item = store.get("shop", &id, false).unwrap().expect("item");
    assert_eq!(item.payload["articleType"], "Edited");
}

#[test]
fn folder_ingest_writes_a_jsonl_report() {
    let Some(shared) = shared_dir() else { return };
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("imgs");
    std::fs::create_dir_all(images.join("shoes")).unwrap();
    let (_, rows) = labelled_rows(&shared, "test", 2);
    let data = shared.join("data/fashion-product-images");
    for (row, dest) in rows.iter().zip(["a.jpg", "shoes/b.jpg"]) {
        std::fs::copy(data.join(row.split(',').next().unwrap()), images.join(dest)).unwrap();
    }
    std::fs::write(images.join("not-an-image.png"), b"plain text").unwrap();
    let model = golden_model(&shared);
    let out = asen(
        &[
            "ingest",
            "--catalogue",
            "folder",
            "--dir",
            "imgs",
            "--data",
            "store",
            "--model",
            &model,
            "--report",
            "failed.jsonl",
            "-q",
        ],
        work.path(),
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ingested 2, skipped 0, failed 1 of 3 rows"),
        "{}",
        stdout(&out)
    );
    let report = std::fs::read_to_string(work.path().join("failed.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = report
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{report}");
    assert_eq!(rows[0]["id"], "not-an-image");
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("image"),
        "{report}"
    );
    let store = LocalStore::open(work.path().join("store"), StoreOptions::default()).unwrap();
    let item = store
        .get("folder", &ItemId::new("shoes/b").unwrap(), false)
        .unwrap()
        .expect("nested image stored under its relative id");
    assert_eq!(item.payload["path"], "shoes/b.jpg");
}

#[test]
fn unusable_arguments_exit_2_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("items.csv"), "id,path\na,a.jpg\n").unwrap();
    let cases: [(&[&str], &str); 9] = [
        (
            &["ingest", "--catalogue", "c", "--csv", "nope.csv"],
            "cannot read csv nope.csv",
        ),
        (
            &[
                "ingest",
                "--catalogue",
                "c",
                "--csv",
                "items.csv",
                "--id-column",
                "sku",
            ],
            "column \"sku\" is not in items.csv (columns: id, path)",
        ),
        (
            &["ingest", "--catalogue", "c", "--dir", "nope"],
            "image folder nope does not exist",
        ),
        (&["ingest", "--catalogue", "c"], "--csv"),
        (
            &[
                "train",
                "--data",
                "items.csv",
                "--out",
                "run",
                "--freeze-batch-norm",
            ],
            "--freeze-batch-norm only apply with --finetune",
        ),
        (
            &[
                "train",
                "--data",
                "items.csv",
                "--out",
                "run",
                "--backbone",
                "efficientnet_lite0",
                "--fine-map",
            ],
            "--fine-map needs --backbone mobilenet_v2 and --head asen_v2",
        ),
        (
            &[
                "train",
                "--data",
                "items.csv",
                "--out",
                "run",
                "--garment-prior=-0.5",
            ],
            "--garment-prior must be a number >= 0, got -0.5",
        ),
        (
            &[
                "train",
                "--data",
                "items.csv",
                "--out",
                "run",
                "--finetune",
                "--garment-prior",
                "1",
            ],
            "--garment-prior cannot be combined with --finetune",
        ),
        (
            &[
                "train",
                "--data",
                "items.csv",
                "--out",
                "run",
                "--head",
                "asen_v1",
                "--position-bias",
            ],
            "--position-bias needs --head asen_v2 (got asen_v1)",
        ),
    ];
    for (args, expected) in cases {
        let out = asen(args, work.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(expected), "{args:?}: {err}");
        if !args.contains(&"--dir") && args.len() > 3 {
            assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        }
    }
    assert!(
        !work.path().join("asen-data").exists(),
        "no store created on bad arguments"
    );
}

/// What the loopback server saw.
#[derive(Default)]
struct ServerLog {
    requests: Vec<(String, String, Option<String>)>,
    /// id -> content hash and payload of items stored through PUT.
    stored: BTreeMap<String, (String, serde_json::Value)>,
    catalogue_exists: bool,
}

/// A minimal HTTP/1.1 server speaking the asen items contract (GET/PUT catalogue, GET item,
/// PUT items with the envelope), recording every request. Returns its port.
fn loopback_server(log: Arc<Mutex<ServerLog>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            handle(stream, &log);
        }
    });
    port
}

fn handle(mut stream: TcpStream, log: &Mutex<ServerLog>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.insert(k.to_lowercase(), v.trim().to_string());
    }
    let len = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let mut log = log.lock().unwrap();
    log.requests.push((
        method.clone(),
        path.clone(),
        headers.get("api-key").cloned(),
    ));
    let ok = |result: serde_json::Value| {
        (
            200,
            serde_json::json!({"result": result, "status": "ok", "time": 0.001}),
        )
    };
    let not_found = |what: &str| {
        (
            404,
            serde_json::json!({"status": {"error": format!("{what} not found")}}),
        )
    };
    let (status, answer) = match (method.as_str(), path.as_str()) {
        ("GET", "/v1/catalogues/remote") if log.catalogue_exists => ok(serde_json::json!({})),
        ("GET", "/v1/catalogues/remote") => not_found("catalogue remote"),
        ("PUT", "/v1/catalogues/remote") => {
            assert!(body.is_empty(), "schema comes from the server's model");
            log.catalogue_exists = true;
            ok(serde_json::json!({}))
        }
        ("PUT", "/v1/catalogues/remote/items") => {
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            for item in body["items"].as_array().unwrap() {
                // Like the real server: only id, payload and image; the hash is computed here.
                let mut keys: Vec<&String> = item.as_object().unwrap().keys().collect();
                keys.sort();
                assert_eq!(keys, ["id", "image", "payload"]);
                let image = base64::engine::general_purpose::STANDARD
                    .decode(item["image"].as_str().unwrap())
                    .unwrap();
                let hash: String = Sha256::digest(&image)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                log.stored.insert(
                    item["id"].as_str().unwrap().to_string(),
                    (hash, item["payload"].clone()),
                );
            }
            ok(serde_json::json!({"upserted": body["items"].as_array().unwrap().len()}))
        }
        ("GET", p) if p.starts_with("/v1/catalogues/remote/items/") => {
            let id = &p["/v1/catalogues/remote/items/".len()..];
            match log.stored.get(id) {
                Some((h, payload)) => {
                    ok(serde_json::json!({"id": id, "content_hash": h, "payload": payload}))
                }
                None => not_found("item"),
            }
        }
        _ => not_found("route"),
    };
    let text = answer.to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
        text.len()
    );
}

#[test]
fn server_ingest_puts_batches_with_the_key_and_rerun_skips() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, ids) = catalogue_fixture(&shared, 5);
    let log = Arc::new(Mutex::new(ServerLog::default()));
    let port = loopback_server(log.clone());
    let url = format!("http://127.0.0.1:{port}");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_asen"))
            .args([
                "ingest",
                "--catalogue",
                "remote",
                "--csv",
                csv.to_str().unwrap(),
                "--server",
                &url,
                "--batch-size",
                "2",
                "-q",
            ])
            .current_dir(work.path())
            .env("ASEN_API_KEY", "secret-key")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "stderr: {}", stderr(&first));
    assert!(
        stdout(&first).starts_with("ingested 5, skipped 0, failed 2 of 7 rows"),
        "{}",
        stdout(&first)
    );
    assert!(
        stdout(&first).contains("embedded by the server"),
        "{}",
        stdout(&first)
    );
    {
        let log = log.lock().unwrap();
        assert_eq!(log.stored.keys().cloned().collect::<Vec<_>>(), {
            let mut ids = ids.clone();
            ids.sort();
            ids
        });
        let puts: Vec<_> = log
            .requests
            .iter()
            .filter(|(m, p, _)| m == "PUT" && p.ends_with("/items"))
            .collect();
        assert_eq!(puts.len(), 3, "5 items in batches of 2");
        assert!(puts
            .iter()
            .all(|(_, _, key)| key.as_deref() == Some("secret-key")));
        assert!(log
            .requests
            .iter()
            .any(|(m, p, _)| m == "PUT" && p == "/v1/catalogues/remote"));
    }
    let report = std::fs::read_to_string(work.path().join("remote.ingest-report.csv")).unwrap();
    assert_eq!(
        report.lines().count(),
        3,
        "header + corrupt + missing: {report}"
    );

    let before = log.lock().unwrap().requests.len();
    let second = run();
    assert!(second.status.success(), "stderr: {}", stderr(&second));
    assert!(
        stdout(&second).starts_with("ingested 0, skipped 5, failed 2 of 7 rows"),
        "{}",
        stdout(&second)
    );
    let log = log.lock().unwrap();
    assert!(
        log.requests[before..].iter().all(|(m, _, _)| m == "GET"),
        "a re-run only reads: {:?}",
        &log.requests[before..]
    );
}

/// A work folder with a CSV of the first `n` test rows of labels.csv (images copied) and no
/// train or valid rows: what a team evaluating on its own labelled test set has.
fn test_only_fixture(shared: &Path, n: usize) -> (tempfile::TempDir, PathBuf) {
    let (header, rows) = labelled_rows(shared, "test", n);
    csv_fixture(shared, &header, &rows, "test-only.csv")
}

/// A work folder holding `rows` of labels.csv under `header` as the CSV `name`, their
/// images copied beside it at their relative paths.
fn csv_fixture(
    shared: &Path,
    header: &str,
    rows: &[String],
    name: &str,
) -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let data = shared.join("data/fashion-product-images");
    let mut csv = format!("{header}\n");
    for row in rows {
        let path = row.split(',').next().unwrap();
        let to = work.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(data.join(path), &to).unwrap_or_else(|e| panic!("copy {path}: {e}"));
        csv.push_str(row);
        csv.push('\n');
    }
    let csv_path = work.path().join(name);
    std::fs::write(&csv_path, csv).unwrap();
    (work, csv_path)
}

#[test]
fn eval_needs_only_the_evaluated_split() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv) = test_only_fixture(&shared, 60);
    let out = asen(
        &[
            "eval",
            "--data",
            csv.to_str().unwrap(),
            "--attributes",
            "articleType,baseColour",
            "--split",
            "test",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("(test)"), "{table}");
    assert!(table.contains("baseColour"), "{table}");
}

#[test]
fn eval_of_an_absent_split_exits_with_its_name() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv) = test_only_fixture(&shared, 20);
    let out = asen(
        &[
            "eval",
            "--data",
            csv.to_str().unwrap(),
            "--attributes",
            "baseColour",
            "--split",
            "valid",
        ],
        work.path(),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the valid split has no queries"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn train_on_a_test_only_csv_says_the_train_split_is_empty() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv) = test_only_fixture(&shared, 20);
    let out = asen(
        &[
            "train",
            "--data",
            csv.to_str().unwrap(),
            "--attributes",
            "baseColour",
            "--out",
            "m",
        ],
        work.path(),
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the train split is empty"),
        "{}",
        stderr(&out)
    );
}

/// `catalogue_fixture` plus rows pointing at `paths` (ids `bad0`, `bad1`, ...).
fn with_rows(csv: &Path, paths: &[&str]) {
    let mut text = std::fs::read_to_string(csv).unwrap();
    for (i, p) in paths.iter().enumerate() {
        text.push_str(&format!(
            "{p},valid,bad{i},Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,,X\n"
        ));
    }
    std::fs::write(csv, text).unwrap();
}

fn ingest_args<'a>(csv: &'a str, model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "ingest",
        "--catalogue",
        "shop",
        "--csv",
        csv,
        "--data",
        "store",
        "--model",
        model,
        "--report",
        "report.csv",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    args
}

#[cfg(unix)]
#[test]
fn ingest_refuses_paths_out_of_the_root_per_row_and_goes_on() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, _) = catalogue_fixture(&shared, 2);
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(
        outside.path().join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("passwd"),
        work.path().join("images_224/link.jpg"),
    )
    .unwrap();
    with_rows(
        &csv,
        &[
            "/dev/zero",
            "images_224/../../../../etc/passwd",
            "images_224/link.jpg",
        ],
    );
    let model = golden_model(&shared);
    let out = asen(
        &ingest_args(csv.to_str().unwrap(), &model, &[]),
        work.path(),
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ingested 2, skipped 0, failed 5 of 7 rows"),
        "{}",
        stdout(&out)
    );
    let report = std::fs::read_to_string(work.path().join("report.csv")).unwrap();
    assert!(report.contains("absolute image path"), "{report}");
    assert!(report.contains("climbs out"), "{report}");
    assert!(report.contains("outside the image root"), "{report}");
    assert!(
        !report.contains("root:x"),
        "no file contents in the report: {report}"
    );
}

#[cfg(unix)]
#[test]
fn ingest_outside_the_root_still_reads_only_bounded_regular_files() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, _) = catalogue_fixture(&shared, 2);
    let images = work.path().join("images_225x300");
    let largest = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .max()
        .unwrap();
    std::fs::write(
        work.path().join("images_224/big.jpg"),
        vec![0u8; largest as usize + 1],
    )
    .unwrap();
    let fifo = work.path().join("images_224/fifo.jpg");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    with_rows(
        &csv,
        &["/dev/zero", "images_224/big.jpg", "images_224/fifo.jpg"],
    );
    let model = golden_model(&shared);
    let limit = largest.to_string();
    let out = asen(
        &ingest_args(
            csv.to_str().unwrap(),
            &model,
            &["--allow-outside-root", "--max-file-bytes", &limit],
        ),
        work.path(),
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("ingested 2, skipped 0, failed 5 of 7 rows"),
        "{}",
        stdout(&out)
    );
    let report = std::fs::read_to_string(work.path().join("report.csv")).unwrap();
    assert_eq!(report.matches("not a regular file").count(), 2, "{report}");
    assert!(
        report.contains(&format!("over ingest.max_file_bytes ({largest})")),
        "{report}"
    );
}

/// A catalogue ingested with one model refuses an ingest with another: exit 2, one line
/// naming both fingerprints, nothing written.
#[test]
fn ingest_with_another_model_than_the_catalogues_exits_2_naming_both() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, _) = catalogue_fixture(&shared, 2);
    let csv = csv.display().to_string();
    let golden = golden_model(&shared);
    let first = asen(&ingest_args(&csv, &golden, &[]), work.path());
    assert!(first.status.success(), "{}", stderr(&first));
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default");
    let second = asen(
        &ingest_args(&csv, &shipped.display().to_string(), &[]),
        work.path(),
    );
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    let err = stderr(&second);
    let fingerprint = |p: &Path| asen::service::models::fingerprint_files(p).unwrap();
    assert!(err.contains(&fingerprint(Path::new(&golden))), "{err}");
    assert!(err.contains(&fingerprint(&shipped)), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[path = "common/retrained.rs"]
mod retrained;

/// `asen reindex` on a local data directory, SIGKILLed once it has re-embedded some items,
/// then run again: it resumes and switches, and every item holds the new model's vectors.
#[cfg(unix)]
#[test]
fn a_killed_reindex_resumes_and_completes() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv, ids) = catalogue_fixture(&shared, 40);
    let csv = csv.display().to_string();
    let golden = golden_model(&shared);
    let ingest = asen(&ingest_args(&csv, &golden, &[]), work.path());
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    let model = work.path().join("retrained");
    retrained::write_retrained(Path::new(&golden), &model);
    let reindex = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_asen"));
        c.args([
            "reindex",
            "-c",
            "shop",
            "--data",
            "store",
            "--batch-size",
            "4",
            "--model",
        ])
        .arg(&model)
        .current_dir(work.path())
        .env("RUST_LOG", "info")
        .env_remove("ASEN_DATA");
        c
    };
    let mut first = reindex()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(first.stderr.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        let done = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("done="))
            .and_then(|n| n.parse::<u64>().ok());
        if line.contains("reindex progress") && done.is_some_and(|d| d > 0) {
            break;
        }
    }
    first.kill().unwrap();
    first.wait().unwrap();
    {
        let store = asen_index::LocalStore::open(
            work.path().join("store"),
            asen_index::StoreOptions::default(),
        )
        .unwrap();
        let schema = asen_index::CatalogueStore::schema(&store, "shop").unwrap();
        assert!(schema.migration.is_some(), "killed before the switch");
        let info = asen_index::CatalogueStore::list_catalogues(&store).unwrap();
        let staged = info[0].attribute_counts["attr_0~next"];
        assert!(
            staged > 0 && staged < ids.len() as u64,
            "killed halfway: {staged}"
        );
    }
    let second = reindex().output().unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stdout(&second).contains("now holds model"),
        "{}",
        stdout(&second)
    );
    let store = asen_index::LocalStore::open(
        work.path().join("store"),
        asen_index::StoreOptions::default(),
    )
    .unwrap();
    let schema = asen_index::CatalogueStore::schema(&store, "shop").unwrap();
    assert_eq!(
        schema.model.unwrap().fingerprint,
        asen::service::models::fingerprint_files(&model).unwrap()
    );
    assert!(schema.migration.is_none());
    assert_eq!(schema.attributes.len(), 8, "{:?}", schema.attributes);
    let info = asen_index::CatalogueStore::list_catalogues(&store).unwrap();
    assert!(
        info[0]
            .attribute_counts
            .values()
            .all(|n| *n == ids.len() as u64),
        "{:?}",
        info[0].attribute_counts
    );
}

#[path = "common/extended.rs"]
mod extended;

/// A work folder with a CSV of the first `train` train and `valid` valid rows of labels.csv
/// that have a `pattern` label, their images copied.
fn split_fixture(shared: &Path, train: usize, valid: usize) -> (tempfile::TempDir, PathBuf) {
    let text =
        std::fs::read_to_string(shared.join("data/fashion-product-images/labels.csv")).unwrap();
    let header = text.lines().next().unwrap().to_string();
    let pattern = header.split(',').position(|c| c == "pattern").unwrap();
    let rows_of = |split: &str, n: usize| -> Vec<String> {
        text.lines()
            .skip(1)
            .filter(|l| {
                let cells: Vec<&str> = l.split(',').collect();
                cells[1] == split && !cells[pattern].is_empty()
            })
            .take(n)
            .map(str::to_string)
            .collect()
    };
    let mut rows = rows_of("train", train);
    rows.extend(rows_of("valid", valid));
    csv_fixture(shared, &header, &rows, "labels.csv")
}

/// `asen train --extend`: the new model holds every weight of the base unchanged, one more
/// attribute-embedding row, a card that names the base and the added attribute's match
/// threshold.
#[test]
fn train_extend_adds_an_attribute_and_keeps_every_base_weight() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv) = split_fixture(&shared, 90, 45);
    let base = work.path().join("base");
    let added = extended::write_base(&base);
    let out = asen(
        &[
            "train",
            "--extend",
            base.to_str().unwrap(),
            "--data",
            csv.to_str().unwrap(),
            "--attributes",
            &added,
            "--epochs",
            "1",
            "--triplets-per-epoch",
            "64",
            "--batch-size",
            "32",
            "--out",
            "ext",
        ],
        work.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let base_fingerprint = asen_models::fingerprint(&base).unwrap();
    assert!(
        stdout(&out).contains(&format!("extends {base_fingerprint}")),
        "{}",
        stdout(&out)
    );
    let best = asen_models::ModelDir::load(work.path().join("ext/best")).unwrap();
    let base_model = asen_models::ModelDir::load(&base).unwrap();
    let mut names = base_model.card.attribute_names();
    names.push(added.clone());
    assert_eq!(best.card.attribute_names(), names);
    assert_eq!(best.card.extends[0].fingerprint, base_fingerprint);
    assert!(best
        .card
        .match_thresholds
        .as_ref()
        .unwrap()
        .contains_key(&added));
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (name, t) in base_model.tensors() {
        let got = &best.tensors()[name];
        let got = if name == "attr_embedding.weight" {
            got.narrow(0, 0, t.dim(0).unwrap()).unwrap()
        } else {
            got.clone()
        };
        assert_eq!(values(&got), values(t), "{name} unchanged");
    }
}

#[test]
fn train_extend_refuses_a_size_the_base_fixes() {
    let Some(shared) = shared_dir() else { return };
    let (work, csv) = split_fixture(&shared, 4, 2);
    let base = work.path().join("base");
    extended::write_base(&base);
    let out = asen(
        &[
            "train",
            "--extend",
            base.to_str().unwrap(),
            "--data",
            csv.to_str().unwrap(),
            "--attributes",
            "pattern",
            "--dim",
            "64",
            "--out",
            "ext",
        ],
        work.path(),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--dim cannot be combined with --extend"),
        "{}",
        stderr(&out)
    );
}
