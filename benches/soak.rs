//! Soak: mixed load against the real `asen serve` for a long time, with periodic restarts,
//! printing once a minute the server's RSS, its open file descriptors, the p99 latency and the
//! error counts; at the end, drift between minute 5 and the last minute (RSS, fds, p99; more
//! than 10 % up is flagged) and the unexpected errors (any 5xx, any transport error outside a
//! restart). Not run in CI.
//!
//! ```text
//! cargo bench --bench soak                                   # 30 min, restart every 5 min
//! ASEN_SOAK_MINUTES=10 ASEN_SOAK_RESTART_S=120 cargo bench --bench soak
//! ASEN_SOAK_BIN=/tmp/asen cargo bench --bench soak   # serve a copy of the binary
//! ```
//! Load: `ASEN_SOAK_CLIENTS` (default 4) clients, each looping over search by item (50 %),
//! search by image (10 %, one forward), upsert of one item (20 %, one forward, ids cycling
//! over 300 so the store stays bounded), delete (10 %) and get (10 %). Restarts alternate
//! SIGTERM (graceful) and SIGKILL, 30 s past a minute boundary so every sample is taken
//! well after one. Linux only (`/proc`). Needs the shared fixtures (`../shared`).
//!
//! The server inherits the bench's environment, so its settings and the allocator's can be
//! varied per run: `ASEN_INDEX__CACHE_CAPACITY_BYTES=67108864` (sled's cache, 512 MiB by
//! default), `MALLOC_ARENA_MAX=2` (glibc). Each minute's row also has the anonymous part of
//! the RSS (the heap) and the size of the data directory on disk.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::{Rng, SeedableRng};
use serde_json::json;

const KEY: &str = "soak-write-key";

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spawn(model: &Path, data: &Path) -> (Child, String) {
    // ASEN_SOAK_BIN: a copy of the binary, so that rebuilding during a long soak changes
    // nothing under it.
    let bin = std::env::var_os("ASEN_SOAK_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_asen")), PathBuf::from);
    let mut child = Command::new(bin)
        .args(["serve", "--bind", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--model")
        .arg(model)
        .env("ASEN_API_KEY", KEY)
        .env("ASEN_MODEL__BATCH_SIZE", "4")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start asen serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("asen listening on ")
        .unwrap_or_else(|| panic!("server did not start: {line:?}"))
        .to_string();
    (child, base)
}

/// One `/proc/<pid>/status` field in MiB (0 when absent).
fn status_mib(status: &str, field: &str) -> f64 {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// VmRSS and its anonymous part (heap: sled's cache, the allocator's arenas, the model) in MiB,
/// and the number of open descriptors of `pid`.
fn rss_and_fds(pid: u32) -> (f64, f64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    (
        status_mib(&status, "VmRSS:"),
        status_mib(&status, "RssAnon:"),
        fds,
    )
}

/// Bytes on disk under `dir` in MiB: the store's files, which sled's cache (at most
/// `index.cache_capacity_bytes`) holds a part of.
fn disk_mib(dir: &Path) -> f64 {
    fn walk(dir: &Path) -> u64 {
        std::fs::read_dir(dir).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
    }
    walk(dir) as f64 / (1024.0 * 1024.0)
}

#[derive(Default)]
struct Minute {
    latencies_ms: Vec<f64>,
    unexpected: u64,
    during_restart: u64,
}

fn main() {
    let minutes: u64 = env_or("ASEN_SOAK_MINUTES", 30);
    let restart_s: u64 = env_or("ASEN_SOAK_RESTART_S", 300);
    let clients: usize = env_or("ASEN_SOAK_CLIENTS", 4);
    let shared = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared"));
    let model = shared.join("golden/asen_v1_fashionai.pth.gz");
    let images: Vec<String> = [
        "10002.jpg",
        "10017.jpg",
        "10030.jpg",
        "15970.jpg",
        "59606.jpg",
    ]
    .iter()
    .map(|n| {
        let bytes = std::fs::read(shared.join("golden/images").join(n))
            .unwrap_or_else(|e| panic!("the soak needs ../shared/golden/images/{n}: {e}"));
        base64::engine::general_purpose::STANDARD.encode(bytes)
    })
    .collect();
    let data = tempfile::tempdir().unwrap();
    let (child, base) = spawn(&model, data.path());
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    agent
        .put(&format!("{base}/v1/catalogues/soak"))
        .set("api-key", KEY)
        .call()
        .expect("create the catalogue");
    for i in 0..20 {
        let body = json!({"items": [{"id": format!("s{i}"), "image": images[i % images.len()]}]});
        agent
            .put(&format!("{base}/v1/catalogues/soak/items"))
            .set("api-key", KEY)
            .send_json(body)
            .expect("seed");
    }
    let server = Arc::new(Mutex::new((child, base)));
    let restarting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let minute = Arc::new(Mutex::new(Minute::default()));
    let requests = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (server, restarting, stop, minute, requests, images) = (
                server.clone(),
                restarting.clone(),
                stop.clone(),
                minute.clone(),
                requests.clone(),
                images.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(60))
                    .build();
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(c as u64);
                while !stop.load(Ordering::Relaxed) {
                    let base = server.lock().unwrap().1.clone();
                    let id = format!("s{}", rng.gen_range(0..300));
                    let roll = rng.gen_range(0..100);
                    let attribute = format!("attr_{}", rng.gen_range(0..8));
                    let t = Instant::now();
                    let was_restarting = restarting.load(Ordering::Relaxed);
                    let result = if roll < 50 {
                        agent
                            .post(&format!("{base}/v1/catalogues/soak/search"))
                            .set("api-key", KEY)
                            .send_json(json!({"attribute": attribute, "item_id": format!("s{}", rng.gen_range(0..20)), "k": 10}))
                    } else if roll < 60 {
                        agent
                            .post(&format!("{base}/v1/catalogues/soak/search"))
                            .set("api-key", KEY)
                            .send_json(json!({"attribute": attribute, "image": images[rng.gen_range(0..images.len())], "k": 10}))
                    } else if roll < 80 {
                        agent
                            .put(&format!("{base}/v1/catalogues/soak/items"))
                            .set("api-key", KEY)
                            .send_json(json!({"items": [{"id": id, "payload": {"n": roll}, "image": images[rng.gen_range(0..images.len())]}]}))
                    } else if roll < 90 {
                        agent
                            .delete(&format!("{base}/v1/catalogues/soak/items/{id}"))
                            .set("api-key", KEY)
                            .call()
                    } else {
                        agent
                            .get(&format!("{base}/v1/catalogues/soak/items/{id}"))
                            .set("api-key", KEY)
                            .call()
                    };
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    requests.fetch_add(1, Ordering::Relaxed);
                    let mut m = minute.lock().unwrap();
                    match result {
                        Ok(_) => m.latencies_ms.push(ms),
                        // Deletes and gets of ids not stored now, and searches by a seed item
                        // deleted meanwhile, are part of the mix.
                        Err(ureq::Error::Status(404, _)) => m.latencies_ms.push(ms),
                        Err(ureq::Error::Status(_, _)) => m.unexpected += 1,
                        Err(_) if was_restarting || restarting.load(Ordering::Relaxed) => {
                            m.during_restart += 1;
                            drop(m);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(_) => m.unexpected += 1,
                    }
                }
            })
        })
        .collect();

    println!("minute  rss_mib  anon_mib  data_mib  fds  requests  p99_ms  errors_unexpected  errors_during_restart  restarts");
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut restarts = 0u64;
    let mut next_restart = Duration::from_secs(restart_s + 30);
    let mut total_unexpected = 0;
    for m in 1..=minutes {
        let minute_end = Duration::from_secs(60 * m);
        while started.elapsed() < minute_end {
            if started.elapsed() >= next_restart {
                restarting.store(true, Ordering::Relaxed);
                let mut s = server.lock().unwrap();
                if restarts.is_multiple_of(2) {
                    let _ = Command::new("kill")
                        .args(["-TERM", &s.0.id().to_string()])
                        .status();
                } else {
                    let _ = s.0.kill();
                }
                let _ = s.0.wait();
                *s = spawn(&model, data.path());
                drop(s);
                restarts += 1;
                next_restart += Duration::from_secs(restart_s);
                // Requests in flight at the restart finish (with an error) within a second.
                std::thread::sleep(Duration::from_secs(1));
                restarting.store(false, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let pid = server.lock().unwrap().0.id();
        let (rss, anon, fds) = rss_and_fds(pid);
        let data_mib = disk_mib(data.path());
        let mut sample = std::mem::take(&mut *minute.lock().unwrap());
        sample.latencies_ms.sort_by(f64::total_cmp);
        let p99 = sample
            .latencies_ms
            .get(
                (sample.latencies_ms.len() * 99 / 100)
                    .min(sample.latencies_ms.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(f64::NAN);
        total_unexpected += sample.unexpected;
        println!(
            "{m:>6}  {rss:>7.1}  {anon:>8.1}  {data_mib:>8.1}  {fds:>3}  {:>8}  {p99:>6.1}  {:>17}  {:>21}  {restarts:>8}",
            requests.swap(0, Ordering::Relaxed),
            sample.unexpected,
            sample.during_restart,
        );
        rows.push((rss, fds as f64, p99));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let _ = server.lock().unwrap().0.kill();
    if rows.len() >= 5 {
        let (first, last) = (rows[4], rows[rows.len() - 1]);
        for (name, a, b) in [
            ("rss_mib", first.0, last.0),
            ("fds", first.1, last.1),
            ("p99_ms", first.2, last.2),
        ] {
            let change = (b - a) / a * 100.0;
            println!(
                "drift {name}: minute 5 {a:.1}, minute {} {b:.1} ({change:+.1} %){}",
                rows.len(),
                if change > 10.0 { "  DRIFT" } else { "" }
            );
        }
    }
    println!("unexpected errors: {total_unexpected}; restarts: {restarts}");
}
