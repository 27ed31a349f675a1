//! Catalogue-scale benchmarks (`harness = false`, not run in CI). Three subcommands:
//!
//! ```text
//! # Build a catalogue of N items x A attributes (clustered random unit vectors, one keyword
//! # field `shard` whose value s0 holds 0.1 % of items) into DIR through CatalogueStore,
//! # timing searches (p50/p99) while the last 10 % are ingested, then close it.
//! cargo bench -p asen-index --bench scale -- build --n 1000000 --attributes 8 --dim 128 --store DIR
//!
//! # In a fresh process: RSS of an empty store, reopen DIR (time), RSS after the reopen, disk
//! # size, then searches per attribute (unfiltered and 0.1 % filtered: p50/p99, k hits).
//! cargo bench -p asen-index --bench scale -- reopen --store DIR
//!
//! # 30 minutes of mixed upserts, deletes and searches on a 200k catalogue: RSS, p99 latency and
//! # recall@10 (against brute force over the live items) every minute.
//! cargo bench -p asen-index --bench scale -- soak --n 200000 --minutes 30
//! ```
//! Knobs: `--m`, `--ef-construction`, `--ef`, `--storage f32|f16|int8`, `--cache-mb` (sled's
//! cache, default 512), `--seed`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asen_index::{
    CatalogueSchema, CatalogueStore, Durability, Filter, HnswConfig, Item, ItemId, LocalStore,
    MatchValue, SearchRequest, StoreOptions, VectorStorage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

/// The system allocator, counting the bytes allocated and not yet freed, so that `reopen`
/// can split the resident memory into live heap (the live set, payload index, sled's cache,
/// the graphs' upper layers) and the rest (the graphs' memory mappings, allocator slack).
struct Counting;
static HEAP: AtomicI64 = AtomicI64::new(0);
// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as i64, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        HEAP.fetch_add(l.size() as i64, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        HEAP.fetch_sub(l.size() as i64, Ordering::Relaxed);
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        HEAP.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}
#[global_allocator]
static GA: Counting = Counting;

struct Args {
    cmd: String,
    n: usize,
    attributes: usize,
    dim: usize,
    m: usize,
    ef_construction: usize,
    ef: usize,
    storage: VectorStorage,
    cache_mb: u64,
    store: Option<PathBuf>,
    minutes: u64,
    seed: u64,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    let cmd = it.next().unwrap_or_else(|| "help".into());
    let mut a = Args {
        cmd,
        n: 1_000_000,
        attributes: 8,
        dim: 128,
        m: 16,
        ef_construction: 200,
        ef: 64,
        storage: VectorStorage::F32,
        cache_mb: 512,
        store: None,
        minutes: 30,
        seed: 42,
    };
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = val().parse().expect("--n"),
            "--attributes" => a.attributes = val().parse().expect("--attributes"),
            "--dim" => a.dim = val().parse().expect("--dim"),
            "--m" => a.m = val().parse().expect("--m"),
            "--ef-construction" => a.ef_construction = val().parse().expect("--ef-construction"),
            "--ef" => a.ef = val().parse().expect("--ef"),
            "--storage" => {
                a.storage = match val().as_str() {
                    "f32" => VectorStorage::F32,
                    "f16" => VectorStorage::F16,
                    "int8" => VectorStorage::Int8,
                    s => panic!("unknown storage {s}"),
                }
            }
            "--cache-mb" => a.cache_mb = val().parse().expect("--cache-mb"),
            "--store" => a.store = Some(PathBuf::from(val())),
            "--minutes" => a.minutes = val().parse().expect("--minutes"),
            "--seed" => a.seed = val().parse().expect("--seed"),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn attribute_names(n: usize) -> Vec<String> {
    (0..n).map(|a| format!("a{a}")).collect()
}

fn options(args: &Args) -> StoreOptions {
    StoreOptions {
        durability: Durability::Deferred,
        dump_every_inserts: 0,
        cache_capacity_bytes: args.cache_mb << 20,
        ..StoreOptions::default()
    }
}

fn schema(args: &Args, attributes: usize) -> CatalogueSchema {
    CatalogueSchema::new(attribute_names(attributes), args.dim)
        .with_hnsw(HnswConfig {
            m: args.m,
            ef_construction: args.ef_construction,
            ef_search: args.ef,
        })
        .with_storage(args.storage)
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn disk_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn gaussian(r: &mut StdRng) -> f32 {
    let u1: f32 = r.gen_range(f32::EPSILON..1.0);
    let u2: f32 = r.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

fn unit(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// Clustered unit vectors (100 centres per attribute, noise 0.6): vector `i` of attribute `a`
/// is a function of (seed, a, i) alone, so any item can be regenerated.
struct Vectors {
    centres: Vec<Vec<Vec<f32>>>,
    seed: u64,
    dim: usize,
}

impl Vectors {
    fn new(attributes: usize, dim: usize, seed: u64) -> Self {
        let centres = (0..attributes)
            .map(|a| {
                let mut r = StdRng::seed_from_u64(seed ^ ((a as u64 + 1) * 0x9e37_79b9));
                (0..100)
                    .map(|_| (0..dim).map(|_| gaussian(&mut r)).collect())
                    .collect()
            })
            .collect();
        Vectors { centres, seed, dim }
    }

    /// Vector number `i` (a version counter lets the soak replace an item's vector).
    fn get(&self, a: usize, i: u64) -> Vec<f32> {
        let mut r =
            StdRng::seed_from_u64(self.seed.wrapping_mul(31).wrapping_add(i) ^ ((a as u64) << 56));
        let c = &self.centres[a][r.gen_range(0..100)];
        unit(
            (0..self.dim)
                .map(|j| c[j] + 0.6 * gaussian(&mut r))
                .collect(),
        )
    }
}

/// Item `i`: one vector per attribute and the `shard` keyword (`s0` for 0.1 % of items).
fn item(v: &Vectors, attributes: usize, i: u64, version: u64) -> Item {
    let vectors = (0..attributes)
        .map(|a| (format!("a{a}"), v.get(a, i + version * 1_000_000_007)))
        .collect();
    let mut it = Item::new(ItemId::new(i.to_string()).unwrap(), vectors);
    it.payload
        .insert("shard".into(), format!("s{}", (i * 7919) % 1000).into());
    it
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn ms(s: f64) -> String {
    format!("{:.2}", s * 1e3)
}

fn shard_filter() -> Filter {
    Filter::Match {
        field: "shard".into(),
        value: MatchValue::Keyword("s0".into()),
    }
}

/// One timed search; returns (seconds, hits).
fn timed_search(store: &LocalStore, req: &SearchRequest) -> (f64, usize) {
    let t = Instant::now();
    let hits = store.search("c", req).expect("search").into_hits().len();
    (t.elapsed().as_secs_f64(), hits)
}

fn build(args: &Args) {
    let dir = args.store.clone().expect("build needs --store DIR");
    if dir.exists() {
        panic!("{} exists; remove it first", dir.display());
    }
    let vectors = Vectors::new(args.attributes, args.dim, args.seed);
    let store = Arc::new(LocalStore::open(&dir, options(args)).expect("open"));
    store
        .create_catalogue("c", &schema(args, args.attributes))
        .expect("create");
    println!(
        "# build: n={} attributes={} dim={} storage={:?} M={} ef_construction={} threads={} sled cache {} MB",
        args.n, args.attributes, args.dim, args.storage, args.m, args.ef_construction,
        rayon::current_num_threads(), args.cache_mb
    );
    let chunk = 2000usize;
    let start = Instant::now();
    let searching = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let lat = std::sync::Mutex::new(Vec::<f64>::new());
    std::thread::scope(|scope| {
        // Searches while the last 10 % are ingested: one thread, back to back.
        scope.spawn(|| {
            let mut r = StdRng::seed_from_u64(7);
            while !stop.load(Ordering::Acquire) {
                if !searching.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let a = r.gen_range(0..args.attributes);
                let q = vectors.get(a, u64::MAX - r.gen_range(0..1_000_000u64));
                let mut req = SearchRequest::vector(format!("a{a}"), q, 10);
                req.ef_search = Some(args.ef);
                let (s, _) = timed_search(&store, &req);
                lat.lock().unwrap().push(s);
            }
        });
        let mut last = Instant::now();
        for c in (0..args.n).step_by(chunk) {
            let items: Vec<Item> = (c..(c + chunk).min(args.n))
                .into_par_iter()
                .map(|i| item(&vectors, args.attributes, i as u64, 0))
                .collect();
            store.upsert("c", &items).expect("upsert");
            let done = c + items.len();
            if done * 10 >= args.n * 9 {
                searching.store(true, Ordering::Release);
            }
            if last.elapsed() > Duration::from_secs(15) || done == args.n {
                last = Instant::now();
                let el = start.elapsed().as_secs_f64();
                let rate = done as f64 / el;
                eprintln!(
                    "built {done}/{} items in {el:.0} s: {rate:.0} items/s ({:.0} vectors/s), ETA {:.0} s, RSS {:.2} GB",
                    args.n,
                    rate * args.attributes as f64,
                    (args.n - done) as f64 / rate,
                    rss_bytes() as f64 / 1e9
                );
            }
        }
        stop.store(true, Ordering::Release);
    });
    let build_s = start.elapsed().as_secs_f64();
    let rss_built = rss_bytes();
    let graph = store.graph_memory_bytes("c").expect("graph bytes");
    let mut lat = lat.into_inner().unwrap();
    lat.sort_by(f64::total_cmp);
    let t = Instant::now();
    drop(store);
    let close_s = t.elapsed().as_secs_f64();
    println!("\n| items | attributes | build s | items/s | vectors/s | RSS after build GB | graph bytes/item | close + dump s | disk GB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {build_s:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {close_s:.1} | {:.2} |",
        args.n,
        args.attributes,
        args.n as f64 / build_s,
        (args.n * args.attributes) as f64 / build_s,
        rss_built as f64 / 1e9,
        graph as f64 / args.n as f64,
        disk_bytes(&dir) as f64 / 1e9
    );
    println!(
        "\nsearches during the last 10 % of ingestion (1 thread, k 10, ef {}): {} searches, p50 {} ms, p99 {} ms",
        args.ef,
        lat.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
}

fn reopen(args: &Args) {
    let dir = args.store.clone().expect("reopen needs --store DIR");
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let empty = LocalStore::open(empty_dir.path(), options(args)).expect("open empty");
    let rss_empty = rss_bytes();
    let heap0 = HEAP.load(Ordering::Relaxed);
    let t = Instant::now();
    let store = LocalStore::open(&dir, options(args)).expect("reopen");
    let reopen_s = t.elapsed().as_secs_f64();
    let rss = rss_bytes();
    let heap = HEAP.load(Ordering::Relaxed) - heap0;
    drop(empty);
    let sources: Vec<&str> = store.recovery_report().iter().map(|r| r.source).collect();
    let n = store.count("c").expect("count") as usize;
    let stats = store.stats("c").expect("stats");
    let attributes = stats.attributes.len();
    let graph = store.graph_memory_bytes("c").expect("graph bytes");
    let payload = store.payload_index_bytes("c").expect("payload bytes");
    println!(
        "# reopen: {} items x {attributes} attributes, sled cache {} MB, graphs from {:?}\n",
        n, args.cache_mb, sources
    );
    println!("| reopen s | RSS empty store MB | RSS after reopen GB | resident bytes/item | per item per attribute | graph bytes/item | live heap bytes/item | payload index bytes/item | disk GB |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let per_item = rss.saturating_sub(rss_empty) as f64 / n as f64;
    println!(
        "| {reopen_s:.2} | {:.0} | {:.2} | {per_item:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} |",
        rss_empty as f64 / 1e6,
        rss as f64 / 1e9,
        per_item / attributes as f64,
        graph as f64 / n as f64,
        heap as f64 / n as f64,
        payload as f64 / n as f64,
        disk_bytes(&dir) as f64 / 1e9
    );
    let vectors = Vectors::new(attributes, stats_dim(&store), args.seed);
    println!("\n| attribute | filter | searches | p50 ms | p99 ms | min hits (k = 10) |");
    println!("|---|---|---|---|---|---|");
    let mut r = StdRng::seed_from_u64(9);
    for a in 0..attributes {
        for filtered in [false, true] {
            let mut lat = Vec::new();
            let mut min_hits = usize::MAX;
            for _ in 0..300 {
                let q = vectors.get(a, u64::MAX - r.gen_range(0..1_000_000u64));
                let mut req = SearchRequest::vector(format!("a{a}"), q, 10);
                req.ef_search = Some(args.ef);
                if filtered {
                    req.filter = Some(shard_filter());
                }
                let (s, hits) = timed_search(&store, &req);
                lat.push(s);
                min_hits = min_hits.min(hits);
            }
            lat.sort_by(f64::total_cmp);
            println!(
                "| a{a} | {} | {} | {} | {} | {min_hits} |",
                if filtered {
                    "shard = s0 (0.1 %)"
                } else {
                    "none"
                },
                lat.len(),
                ms(percentile(&lat, 0.5)),
                ms(percentile(&lat, 0.99))
            );
        }
    }
}

fn stats_dim(store: &LocalStore) -> usize {
    store.schema("c").map(|s| s.dimension).expect("schema")
}

/// Recall@10 of `queries` against brute force over the live vectors of attribute 0.
fn recall(
    store: &LocalStore,
    live: &HashMap<u64, Vec<f32>>,
    queries: &[Vec<f32>],
    ef: usize,
) -> f64 {
    let ids: Vec<(&u64, &Vec<f32>)> = live.iter().collect();
    let truths: Vec<Vec<u64>> = queries
        .par_iter()
        .map(|q| {
            let mut s: Vec<(u64, f32)> = ids
                .iter()
                .map(|(i, v)| (**i, v.iter().zip(q).map(|(a, b)| a * b).sum()))
                .collect();
            s.select_nth_unstable_by(9, |a, b| b.1.total_cmp(&a.1));
            s.truncate(10);
            s.into_iter().map(|x| x.0).collect()
        })
        .collect();
    let mut hit = 0;
    for (q, t) in queries.iter().zip(&truths) {
        let mut req = SearchRequest::vector("a0", q.clone(), 10);
        req.ef_search = Some(ef);
        let hits = store.search("c", &req).expect("search").into_hits();
        hit += hits
            .iter()
            .filter(|h| t.contains(&h.id.as_str().parse::<u64>().unwrap()))
            .count();
    }
    hit as f64 / (queries.len() * 10) as f64
}

fn soak(args: &Args) {
    let dir = tempfile::tempdir().expect("tempdir");
    let vectors = Vectors::new(1, args.dim, args.seed);
    let store = LocalStore::open(dir.path(), options(args)).expect("open");
    store
        .create_catalogue("c", &schema(args, 1))
        .expect("create");
    println!(
        "# soak: {} items x 1 attribute, dim {}, {} minutes of mixed writes and searches, sled cache {} MB",
        args.n, args.dim, args.minutes, args.cache_mb
    );
    // The bench's mirror of the live vectors (the recall oracle).
    let mut live: HashMap<u64, Vec<f32>> = HashMap::with_capacity(args.n);
    let mut version: HashMap<u64, u64> = HashMap::new();
    let t = Instant::now();
    for c in (0..args.n as u64).step_by(2000) {
        let items: Vec<Item> = (c..(c + 2000).min(args.n as u64))
            .into_par_iter()
            .map(|i| item(&vectors, 1, i, 0))
            .collect();
        for it in &items {
            let i: u64 = it.id.as_str().parse().unwrap();
            live.insert(i, it.vectors["a0"].clone());
        }
        store.upsert("c", &items).expect("upsert");
    }
    println!("built in {:.0} s\n", t.elapsed().as_secs_f64());
    println!("| minute | live items | graph points | compactions | RSS MB | searches | p50 ms | p99 ms | recall@10 (ef {}) | upserts | deletes |", args.ef);
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut r = StdRng::seed_from_u64(11);
    let mut next_id = args.n as u64;
    let queries: Vec<Vec<f32>> = (0..50).map(|q| vectors.get(0, u64::MAX - q)).collect();
    let start = Instant::now();
    for minute in 1..=args.minutes {
        let end = start + Duration::from_secs(60 * minute);
        let (mut lat, mut upserts, mut deletes) = (Vec::new(), 0usize, 0usize);
        while Instant::now() < end {
            // One round: 100 replaced vectors, 50 deleted items, 50 new ones, 200 searches.
            let keys: Vec<u64> = live.keys().copied().collect();
            let replace: Vec<Item> = (0..100)
                .map(|_| {
                    let i = keys[r.gen_range(0..keys.len())];
                    let v = version.entry(i).or_insert(0);
                    *v += 1;
                    item(&vectors, 1, i, *v)
                })
                .collect();
            let mut gone: Vec<u64> = (0..50).map(|_| keys[r.gen_range(0..keys.len())]).collect();
            gone.sort_unstable();
            gone.dedup();
            let fresh: Vec<Item> = (0..50).map(|k| item(&vectors, 1, next_id + k, 0)).collect();
            next_id += 50;
            for it in replace.iter().chain(&fresh) {
                live.insert(it.id.as_str().parse().unwrap(), it.vectors["a0"].clone());
            }
            store.upsert("c", &replace).expect("upsert");
            store.upsert("c", &fresh).expect("upsert");
            let gone_ids: Vec<ItemId> = gone
                .iter()
                .map(|i| ItemId::new(i.to_string()).unwrap())
                .collect();
            store.delete("c", &gone_ids).expect("delete");
            for i in &gone {
                live.remove(i);
            }
            upserts += 150;
            deletes += gone.len();
            for _ in 0..200 {
                let q = vectors.get(0, u64::MAX - 1000 - r.gen_range(0..1_000_000u64));
                let mut req = SearchRequest::vector("a0", q, 10);
                req.ef_search = Some(args.ef);
                lat.push(timed_search(&store, &req).0);
            }
        }
        lat.sort_by(f64::total_cmp);
        let stats = store.stats("c").expect("stats");
        let rec = recall(&store, &live, &queries, args.ef);
        println!(
            "| {minute} | {} | {} | {} | {:.0} | {} | {} | {} | {rec:.3} | {upserts} | {deletes} |",
            stats.items,
            stats.attributes[0].graph_points,
            stats.attributes[0].compactions,
            rss_bytes() as f64 / 1e6,
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }
    // The control: the same live items in a graph built afresh (a compaction), same queries.
    store.compact("c").expect("compact");
    let stats = store.stats("c").expect("stats");
    println!(
        "\nafter a compaction (the live items in a fresh graph of {} points): recall@10 {:.3} with the same {} queries",
        stats.attributes[0].graph_points,
        recall(&store, &live, &queries, args.ef),
        queries.len()
    );
}

fn main() {
    let args = parse_args();
    match args.cmd.as_str() {
        "build" => build(&args),
        "reopen" => reopen(&args),
        "soak" => soak(&args),
        _ => eprintln!("usage: scale build|reopen|soak [flags]; see the file's header"),
    }
}
