//! Crash test (`harness = false`): the binary re-executes itself as a child (chosen by the
//! `ASEN_CRASH_CHILD` env var) that ingests and deletes in batches, printing `ack <step>` after
//! each acknowledged write; the parent SIGKILLs it at a random moment, reopens the store and
//! checks that every acknowledged write is present and findable, that the one write in flight
//! is either wholly visible or wholly absent, that every live item has exactly the thumbnail
//! of its visible version (and deleted ones none), and that every graph holds exactly sled's
//! live items. Rounds: `ASEN_CRASH_ROUNDS` (default 20).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use asen_index::{
    CatalogueSchema, CatalogueStore, Item, ItemId, LocalStore, SearchRequest, StoreOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DIM: usize = 32;
const CHILD_ENV: &str = "ASEN_CRASH_CHILD";
const MAX_STEPS: u64 = 400;

fn options() -> StoreOptions {
    StoreOptions {
        dump_every_inserts: 150,
        compaction_min_points: 50,
        ..StoreOptions::default()
    }
}

fn vector(id: &str, version: u64) -> Vec<f32> {
    let seed = id
        .bytes()
        .fold(version.wrapping_mul(0x9e3779b97f4a7c15), |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
    let mut r = StdRng::seed_from_u64(seed);
    (0..DIM).map(|_| r.gen_range(-1.0f32..1.0)).collect()
}

/// The thumbnail of an item version: none for `i5` items, removed when an `i1` item is
/// replaced, otherwise 2 to 5 kB of bytes distinct per id and version.
fn thumbnail(id: &str, version: u64) -> Option<Vec<u8>> {
    if id.ends_with("i5") || (version > 0 && id.ends_with("i1")) {
        return None;
    }
    let seed = id.bytes().fold(version.wrapping_add(7), |h, b| {
        (h ^ b as u64).wrapping_mul(31)
    });
    let len = 2000 + (seed % 3000) as usize;
    let mut bytes = format!("{id}:{version}:").into_bytes();
    bytes.extend((0..len).map(|i| (seed as usize).wrapping_add(i * 13) as u8));
    Some(bytes)
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    v.iter().map(|x| (*x as f64 / n) as f32).collect()
}

fn name(round: u64, step: u64, i: u64) -> String {
    format!("r{round}s{step}i{i}")
}

/// One write of the deterministic workload.
enum Op {
    /// (id, vector version)
    Upsert(Vec<(String, u64)>),
    Delete(Vec<String>),
}

fn op(round: u64, step: u64) -> Op {
    if step % 4 == 3 {
        return Op::Delete((0..5).map(|i| name(round, step - 1, i)).collect());
    }
    let mut items: Vec<(String, u64)> = (0..20).map(|i| (name(round, step, i), 0)).collect();
    if step % 4 == 2 {
        items.extend((0..3).map(|i| (name(round, step - 2, i), step)));
    }
    Op::Upsert(items)
}

fn apply(model: &mut BTreeMap<String, u64>, o: &Op) {
    match o {
        Op::Upsert(items) => items.iter().for_each(|(id, v)| {
            model.insert(id.clone(), *v);
        }),
        Op::Delete(ids) => ids.iter().for_each(|id| {
            model.remove(id);
        }),
    }
}

fn child(dir: &Path, round: u64) {
    let store = LocalStore::open(dir, options()).expect("child opens the store");
    if round == 0 {
        store
            .create_catalogue("c", &CatalogueSchema::new(["a", "b"], DIM))
            .expect("create catalogue");
        println!("created");
    }
    for step in 0..MAX_STEPS {
        match op(round, step) {
            Op::Upsert(items) => {
                let items: Vec<Item> = items
                    .iter()
                    .map(|(id, v)| {
                        let vec = vector(id, *v);
                        let mut vs = BTreeMap::new();
                        vs.insert("a".to_string(), vec.clone());
                        // every 7th item has no "b"
                        if !id.ends_with("i7") {
                            vs.insert("b".to_string(), vec.iter().rev().copied().collect());
                        }
                        let mut it = Item::new(ItemId::new(id.clone()).unwrap(), vs);
                        it.content_hash = Some(format!("{id}:{v}"));
                        it.thumbnail = thumbnail(id, *v);
                        it
                    })
                    .collect();
                let r = store.upsert("c", &items).expect("upsert");
                assert!(r.durable);
            }
            Op::Delete(ids) => {
                let ids: Vec<ItemId> = ids.into_iter().map(|i| ItemId::new(i).unwrap()).collect();
                store.delete("c", &ids).expect("delete");
            }
        }
        println!("ack {step}");
        if step % 10 == 9 {
            store.checkpoint().expect("checkpoint");
        }
    }
    // Wait to be killed.
    std::thread::sleep(Duration::from_secs(60));
}

fn verify(
    dir: &Path,
    round: u64,
    acked: Option<u64>,
    model: &mut BTreeMap<String, u64>,
    rng: &mut StdRng,
) -> Result<String, String> {
    let store = LocalStore::open(dir, options()).map_err(|e| format!("reopen: {e}"))?;
    let first_unacked = acked.map_or(0, |s| s + 1);
    let mut before = model.clone();
    for s in 0..first_unacked {
        apply(&mut before, &op(round, s));
    }
    // The write in flight: wholly applied or wholly absent.
    let in_flight = op(round, first_unacked);
    let probe: Vec<String> = match &in_flight {
        Op::Upsert(items) => items.iter().take(20).map(|(id, _)| id.clone()).collect(),
        Op::Delete(ids) => ids.clone(),
    };
    let present = probe
        .iter()
        .filter(|id| {
            store
                .get("c", &ItemId::new(id.as_str()).unwrap(), false)
                .ok()
                .flatten()
                .is_some()
        })
        .count();
    let applied = match &in_flight {
        Op::Upsert(_) => present == probe.len(),
        Op::Delete(_) => present == 0,
    };
    if present != 0 && present != probe.len() {
        return Err(format!(
            "step {first_unacked} is half-visible: {present}/{} items",
            probe.len()
        ));
    }
    if applied {
        apply(&mut before, &in_flight);
    }
    *model = before;

    let count = store.count("c").map_err(|e| e.to_string())?;
    if count != model.len() as u64 {
        return Err(format!("count {count} != expected {}", model.len()));
    }
    for (id, version) in model.iter() {
        let got = store
            .get("c", &ItemId::new(id.as_str()).unwrap(), true)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("acknowledged item {id} missing"))?;
        let want = unit(&vector(id, *version));
        let a = &got.vectors.as_ref().unwrap()["a"];
        if a.iter().zip(&want).any(|(x, y)| (x - y).abs() > 1e-5) {
            return Err(format!(
                "item {id} has the wrong vector (expected version {version})"
            ));
        }
        if got.content_hash.as_deref() != Some(format!("{id}:{version}").as_str()) {
            return Err(format!("item {id} has content hash {:?}", got.content_hash));
        }
        let want = thumbnail(id, *version);
        let thumb = store
            .thumbnail("c", &ItemId::new(id.as_str()).unwrap())
            .map_err(|e| e.to_string())?;
        if thumb != want || got.has_thumbnail != want.is_some() {
            return Err(format!(
                "item {id} (version {version}) has the wrong thumbnail: {:?} ({} bytes), flag {}",
                thumb
                    .as_ref()
                    .map(|t| String::from_utf8_lossy(&t[..t.len().min(24)]).into_owned()),
                thumb.as_ref().map_or(0, Vec::len),
                got.has_thumbnail
            ));
        }
    }
    // Items of this round that are gone (deleted, or in a write that never happened) left
    // no thumbnail behind.
    for s in 0..=first_unacked {
        let ids: Vec<String> = match op(round, s) {
            Op::Upsert(items) => items.into_iter().map(|(id, _)| id).collect(),
            Op::Delete(ids) => ids,
        };
        for id in ids.iter().filter(|id| !model.contains_key(*id)) {
            let thumb = store
                .thumbnail("c", &ItemId::new(id.as_str()).unwrap())
                .map_err(|e| e.to_string())?;
            if thumb.is_some() {
                return Err(format!("item {id} is gone but its thumbnail is not"));
            }
        }
    }
    // Findable: this round's items and a sample of older ones, by their own vector.
    let tag = format!("r{round}s");
    let ids: Vec<&String> = model.keys().collect();
    let mut checked = 0;
    for (id, version) in model.iter() {
        if !id.starts_with(&tag) && rng.gen_range(0..20) != 0 {
            continue;
        }
        let q = vector(id, *version);
        let hits = store
            .search("c", &SearchRequest::vector("a", q, 3))
            .map_err(|e| e.to_string())?
            .into_hits();
        if hits.first().map(|h| h.id.as_str()) != Some(id.as_str()) {
            return Err(format!(
                "item {id} not found by its own vector: {:?}",
                hits.first().map(|h| &h.id)
            ));
        }
        checked += 1;
    }
    let report = store.check_consistency("c").map_err(|e| e.to_string())?;
    if !report.is_consistent() {
        return Err(format!("graphs disagree with sled: {report:?}"));
    }
    let sources: Vec<&str> = store.recovery_report().iter().map(|r| r.source).collect();
    Ok(format!(
        "{} items ({} of {} searched), in-flight step {first_unacked} {}, graphs from {sources:?}",
        model.len(),
        checked,
        ids.len(),
        if applied { "applied" } else { "absent" }
    ))
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let round = std::env::var("ASEN_CRASH_ROUND")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(Path::new(&dir), round);
        return;
    }
    // libtest-style filter arguments: skip when a filter excludes us.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !args.is_empty() && !args.iter().any(|a| "crash".contains(a.as_str())) {
        return;
    }
    let rounds: u64 = std::env::var("ASEN_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("own executable");
    let mut rng = StdRng::seed_from_u64(
        std::env::var("ASEN_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2020),
    );
    let mut model = BTreeMap::new();
    let start = Instant::now();
    let mut failures = 0;
    for round in 0..rounds {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path())
            .env("ASEN_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Round 0 must at least create the catalogue before it may die.
        if round == 0 {
            while let Ok(l) = rx.recv_timeout(Duration::from_secs(30)) {
                if l == "created" {
                    break;
                }
            }
        }
        let wait = Duration::from_millis(rng.gen_range(30..700));
        std::thread::sleep(wait);
        child.kill().expect("SIGKILL child");
        let status = child.wait().expect("reap child");
        reader.join().ok();
        let acked = rx
            .try_iter()
            .filter_map(|l| l.strip_prefix("ack ").and_then(|s| s.parse::<u64>().ok()))
            .max();
        match verify(dir.path(), round, acked, &mut model, &mut rng) {
            Ok(summary) => println!(
                "round {round:2}: killed after {:>3} ms ({status}), acked steps 0..={}: ok, {summary}",
                wait.as_millis(),
                acked.map_or("none".to_string(), |a| a.to_string())
            ),
            Err(e) => {
                failures += 1;
                println!("round {round:2}: FAILED: {e}");
            }
        }
    }
    println!(
        "crash test: {rounds} rounds, {failures} failures, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}
