//! Search load against the real `asen serve`: queries/s and p50/p99 latency at N concurrent
//! clients for D seconds against a catalogue of M items, counting errors.
//!
//! ```text
//! cargo bench --bench service_load                       # 32 clients, 30 s, 10 000 items
//! ASEN_LOAD_CLIENTS=8 ASEN_LOAD_SECS=5 ASEN_LOAD_ITEMS=2000 cargo bench --bench service_load
//! ```
//! The catalogue is built directly through the store (random unit vectors, one per model
//! of the first `ASEN_LOAD_ATTRIBUTES` (default 2) model attributes; no model forwards), then the server is started over it and every client loops
//! `POST /v1/catalogues/load/search` with a random stored item as the query (`k` = 10, one
//! attribute) or, with `ASEN_LOAD_QUERY=vector`, a random vector. Results go in
//! `docs/benchmarks.md`. The model is the shared v1 checkpoint (`ASEN_LOAD_MODEL` overrides).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use asen_index::{CatalogueSchema, CatalogueStore, Item, ItemId, LocalStore, StoreOptions};
use rand::{Rng, SeedableRng};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let clients: usize = env_or("ASEN_LOAD_CLIENTS", 32);
    let secs: u64 = env_or("ASEN_LOAD_SECS", 30);
    let n_items: usize = env_or("ASEN_LOAD_ITEMS", 10_000);
    let vector_queries = std::env::var("ASEN_LOAD_QUERY").as_deref() == Ok("vector");
    let model = std::env::var_os("ASEN_LOAD_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/golden/asen_v1_fashionai.pth.gz"
            ))
        });
    let opts = asen_models::EmbedderOptions {
        weights_dirs: vec![PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/weights"
        ))],
        ..asen_models::EmbedderOptions::default()
    };
    let embedder = asen_models::Embedder::load(&model, &opts)
        .unwrap_or_else(|e| panic!("cannot load model {}: {e}", model.display()));
    let n_attributes: usize = env_or("ASEN_LOAD_ATTRIBUTES", 2);
    let attributes: Vec<String> = embedder
        .card()
        .attribute_names()
        .into_iter()
        .take(n_attributes.max(1))
        .collect();
    let dim = embedder.card().embedding_dim;
    drop(embedder);

    let data = std::env::temp_dir().join(format!("asen-load-{}", std::process::id()));
    let built = Instant::now();
    {
        let store = LocalStore::open(&data, StoreOptions::default()).expect("open store");
        store
            .create_catalogue("load", &CatalogueSchema::new(attributes.clone(), dim))
            .expect("create catalogue");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for chunk in (0..n_items).collect::<Vec<_>>().chunks(1000) {
            let items: Vec<Item> = chunk
                .iter()
                .map(|i| {
                    let vectors: BTreeMap<String, Vec<f32>> = attributes
                        .iter()
                        .map(|a| {
                            (
                                a.clone(),
                                (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect(),
                            )
                        })
                        .collect();
                    let mut item = Item::new(ItemId::new(format!("item-{i}")).unwrap(), vectors);
                    item.payload
                        .insert("brand".into(), serde_json::json!(format!("b{}", i % 20)));
                    item
                })
                .collect();
            store.upsert("load", &items).expect("upsert");
        }
        store.flush().expect("flush");
    }
    eprintln!(
        "built {n_items} items x {} attributes (dim {dim}) in {:.1} s",
        attributes.len(),
        built.elapsed().as_secs_f64()
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_asen"))
        .args(["serve", "--bind", "127.0.0.1:0", "--data"])
        .arg(&data)
        .arg("--model")
        .arg(&model)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start asen serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("asen listening on ")
        .expect("bound address")
        .to_string();
    let url = format!("{base}/v1/catalogues/load/search");

    let deadline = Instant::now() + Duration::from_secs(secs);
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            let attributes = attributes.clone();
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(100 + c as u64);
                let (mut lat, mut errors) = (Vec::new(), 0usize);
                while Instant::now() < deadline {
                    let attribute = &attributes[rng.gen_range(0..attributes.len())];
                    let body = if vector_queries {
                        let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                        serde_json::json!({"attribute": attribute, "vector": v, "k": 10})
                    } else {
                        let id = format!("item-{}", rng.gen_range(0..n_items));
                        serde_json::json!({"attribute": attribute, "item_id": id, "k": 10})
                    };
                    let t = Instant::now();
                    match agent.post(&url).send_json(body) {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.into_string();
                            lat.push(t.elapsed());
                        }
                        _ => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in threads {
        let (lat, e) = t.join().unwrap();
        all.extend(lat);
        errors += e;
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "| clients | seconds | items | query | requests | errors | queries/s | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {clients} | {secs} | {n_items} | {} | {} | {errors} | {:.0} | {:.2} | {:.2} |",
        if vector_queries { "vector" } else { "item_id" },
        all.len(),
        all.len() as f64 / wall,
        pct(0.50),
        pct(0.99)
    );
}
