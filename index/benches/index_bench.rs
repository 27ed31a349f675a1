//! Index benchmark (`harness = false`): build rate, queries/s and recall@10 at several ef,
//! memory per item for f32/f16/int8 storage, reopen and rebuild times, and the filtered-search
//! switch-over between the graph filter hook and an exact scan, and filtered search with and
//! without the payload index. Prints markdown tables.
//!
//! ```text
//! cargo bench -p asen-index --bench index_bench -- --n 100000 --dim 256 --data clustered \
//!     --queries 1000 --storage f32,f16,int8 --ef 16,32,64,128,256 --filters --export /tmp/asen-vecs
//! ```
//! `--data` is `uniform`, `clustered` (Gaussian mixture), `lowrank`, or `fvecs:<path>` (e.g. real
//! asen embeddings; queries are then the last `--queries` rows). `--export <dir>` writes
//! `base.fvecs`, `query.fvecs` and `gt.ivecs` for `benches/ann_baselines.py`.
//!
//! `--no-rebuild` skips the full-rebuild timing (as long as the build itself).
//!
//! `--payload-index` gives items keyword fields of 0.1 %, 1 %, 10 % and 50 % selectivity and
//! times keyword and range filters at those selectivities through the payload index and through the
//! unindexed path (`StoreOptions::payload_index = false`), f32 storage only, and skips the
//! full-rebuild timing (as long as the build itself):
//! ```text
//! cargo bench -p asen-index --bench index_bench -- --n 1000000 --dim 128 --storage f32 \
//!     --ef 64 --queries 300 --ef-construction 100 --payload-index
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use asen_index::{
    CatalogueSchema, CatalogueStore, Durability, Filter, FilterStrategy, HnswConfig, Item, ItemId,
    LocalStore, SearchRequest, StoreOptions, VectorStorage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

struct Args {
    n: usize,
    dim: usize,
    queries: usize,
    data: String,
    storage: Vec<VectorStorage>,
    ef: Vec<usize>,
    m: usize,
    ef_construction: usize,
    filters: bool,
    payload_index: bool,
    export: Option<String>,
    json: Option<String>,
    seed: u64,
    rebuild: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        n: env_or("ASEN_BENCH_N", 20_000),
        dim: env_or("ASEN_BENCH_DIM", 128),
        queries: 500,
        data: "clustered".into(),
        storage: vec![VectorStorage::F32, VectorStorage::F16, VectorStorage::Int8],
        ef: vec![16, 32, 64, 128, 256],
        m: 16,
        ef_construction: 200,
        filters: false,
        payload_index: false,
        export: None,
        json: None,
        seed: 42,
        rebuild: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = val().parse().expect("--n"),
            "--dim" => a.dim = val().parse().expect("--dim"),
            "--queries" => a.queries = val().parse().expect("--queries"),
            "--data" => a.data = val(),
            "--m" => a.m = val().parse().expect("--m"),
            "--ef-construction" => a.ef_construction = val().parse().expect("--ef-construction"),
            "--seed" => a.seed = val().parse().expect("--seed"),
            "--export" => a.export = Some(val()),
            "--json" => a.json = Some(val()),
            "--filters" => a.filters = true,
            "--no-rebuild" => a.rebuild = false,
            "--payload-index" => a.payload_index = true,
            "--ef" => a.ef = val().split(',').map(|x| x.parse().expect("--ef")).collect(),
            "--storage" => {
                a.storage = val()
                    .split(',')
                    .map(|s| match s {
                        "f32" => VectorStorage::F32,
                        "f16" => VectorStorage::F16,
                        "int8" => VectorStorage::Int8,
                        other => panic!("unknown storage {other}"),
                    })
                    .collect()
            }
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn env_or(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn gaussian(r: &mut StdRng) -> f32 {
    let u1: f32 = r.gen_range(f32::EPSILON..1.0);
    let u2: f32 = r.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
}

/// `n + queries` vectors; queries are held-out samples of the same distribution.
fn generate(args: &Args) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let total = args.n + args.queries;
    let mut r = StdRng::seed_from_u64(args.seed);
    let d = args.dim;
    let mut all: Vec<Vec<f32>> = match args.data.as_str() {
        "uniform" => (0..total)
            .map(|_| (0..d).map(|_| r.gen_range(-1.0..1.0)).collect())
            .collect(),
        "clustered" => {
            let k = 100;
            let centres: Vec<Vec<f32>> = (0..k)
                .map(|_| (0..d).map(|_| gaussian(&mut r)).collect())
                .collect();
            (0..total)
                .map(|_| {
                    let c = &centres[r.gen_range(0..k)];
                    c.iter().map(|x| x + 0.6 * gaussian(&mut r)).collect()
                })
                .collect()
        }
        "lowrank" => {
            let rank = 16;
            let basis: Vec<Vec<f32>> = (0..rank)
                .map(|_| (0..d).map(|_| gaussian(&mut r)).collect())
                .collect();
            (0..total)
                .map(|_| {
                    let w: Vec<f32> = (0..rank).map(|_| gaussian(&mut r)).collect();
                    (0..d)
                        .map(|j| {
                            w.iter().zip(&basis).map(|(w, b)| w * b[j]).sum::<f32>()
                                + 0.05 * gaussian(&mut r)
                        })
                        .collect()
                })
                .collect()
        }
        other => match other.strip_prefix("fvecs:") {
            Some(path) => read_fvecs(Path::new(path)),
            None => panic!("unknown --data {other}"),
        },
    };
    let queries = all.split_off(all.len() - args.queries.min(all.len() / 2));
    (all, queries)
}

fn read_fvecs(path: &Path) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(path).expect("read fvecs");
    let mut out = Vec::new();
    let mut o = 0;
    while o + 4 <= bytes.len() {
        let d = u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
        o += 4;
        out.push(
            bytes[o..o + 4 * d]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        );
        o += 4 * d;
    }
    out
}

fn write_vecs<T: Copy>(path: &Path, rows: &[Vec<T>], to_bytes: impl Fn(T) -> [u8; 4]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    for r in rows {
        f.write_all(&(r.len() as u32).to_le_bytes()).unwrap();
        for x in r {
            f.write_all(&to_bytes(*x)).unwrap();
        }
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact top-k by cosine among `ids` (all when `None`).
fn truth(
    base: &[Vec<f32>],
    queries: &[Vec<f32>],
    k: usize,
    keep: impl Fn(usize) -> bool + Sync,
) -> Vec<Vec<u32>> {
    queries
        .par_iter()
        .map(|q| {
            let mut s: Vec<(u32, f32)> = base
                .iter()
                .enumerate()
                .filter(|(i, _)| keep(*i))
                .map(|(i, v)| (i as u32, dot(v, q)))
                .collect();
            let k = k.min(s.len());
            if k == 0 {
                return Vec::new();
            }
            s.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            s.truncate(k);
            s.sort_by(|a, b| b.1.total_cmp(&a.1));
            s.into_iter().map(|(i, _)| i).collect()
        })
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn options(filter_strategy: FilterStrategy) -> StoreOptions {
    StoreOptions {
        durability: Durability::Deferred,
        dump_every_inserts: 0,
        filter_strategy,
        ..StoreOptions::default()
    }
}

/// Item `id`'s bucket in 0..1000, spread over ids.
fn bucket(id: usize) -> usize {
    (id * 7919) % 1000
}

/// Item `id`'s payload: its bucket, and with `keywords` the keyword fields `k1000`, `k100`,
/// `k10` and `k2`, whose value `v0` holds 0.1 %, 1 %, 10 % and 50 % of items.
fn bench_payload(id: usize, keywords: bool) -> asen_index::Payload {
    let b = bucket(id);
    let mut p = asen_index::Payload::new();
    p.insert("bucket".into(), b.into());
    if keywords {
        for m in [1000, 100, 10, 2] {
            p.insert(format!("k{m}"), format!("v{}", b % m).into());
        }
    }
    p
}

/// Single-threaded queries/s and recall@10.
fn run_queries(
    store: &LocalStore,
    queries: &[Vec<f32>],
    gt: &[Vec<u32>],
    ef: usize,
    filter: Option<&Filter>,
) -> (f64, f64) {
    // Only the requests are timed (as the baselines time only their query calls); recall is
    // counted between them, each answer dropped before the next, so no answer's memory piles up.
    let mut busy = std::time::Duration::ZERO;
    let mut found = 0usize;
    let mut expected = 0usize;
    for (q, t) in queries.iter().zip(gt) {
        let start = Instant::now();
        let mut req = SearchRequest::vector("a", q.clone(), 10);
        req.ef_search = Some(ef);
        req.filter = filter.cloned();
        let hits = store.search("c", &req).expect("search").into_hits();
        busy += start.elapsed();
        let t: HashSet<u32> = t.iter().copied().collect();
        expected += t.len();
        found += hits
            .iter()
            .filter(|h| t.contains(&h.id.as_str().parse::<u32>().unwrap()))
            .count();
    }
    let qps = queries.len() as f64 / busy.as_secs_f64();
    (qps, found as f64 / expected.max(1) as f64)
}

fn main() {
    let args = parse_args();
    let (base, queries) = generate(&args);
    let n = base.len();
    println!(
        "# asen-index bench: n={n} dim={} queries={} data={} M={} ef_construction={} threads={}, cpus={}\n",
        args.dim,
        queries.len(),
        args.data,
        args.m,
        args.ef_construction,
        rayon::current_num_threads(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let base_unit: Vec<Vec<f32>> = base.par_iter().map(|v| unit(v)).collect();
    let query_unit: Vec<Vec<f32>> = queries.par_iter().map(|v| unit(v)).collect();
    let t = Instant::now();
    let gt = truth(&base_unit, &query_unit, 10, |_| true);
    println!(
        "ground truth (brute force, all threads): {:.2} s\n",
        t.elapsed().as_secs_f64()
    );
    if let Some(dir) = &args.export {
        let dir = Path::new(dir);
        std::fs::create_dir_all(dir).expect("export dir");
        write_vecs(&dir.join("base.fvecs"), &base, f32::to_le_bytes);
        write_vecs(&dir.join("query.fvecs"), &queries, f32::to_le_bytes);
        write_vecs(&dir.join("gt.ivecs"), &gt, u32::to_le_bytes);
        println!("exported base/query/gt to {}\n", dir.display());
    }

    println!("| storage | build items/s | RSS bytes/item | graph vector bytes/item | ef | queries/s (1 thread) | recall@10 |");
    println!("|---|---|---|---|---|---|---|");
    let mut timings = Vec::new();
    let mut json_rows = Vec::new();
    for &storage in &args.storage {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = CatalogueSchema::new(["a"], args.dim)
            .with_hnsw(HnswConfig {
                m: args.m,
                ef_construction: args.ef_construction,
                ef_search: 64,
            })
            .with_storage(storage);
        let rss0 = rss_bytes();
        let store = LocalStore::open(dir.path(), options(FilterStrategy::Auto)).expect("open");
        store.create_catalogue("c", &schema).expect("create");
        let start = Instant::now();
        for (c, chunk) in base.chunks(1000).enumerate() {
            let items: Vec<Item> = chunk
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let id = c * 1000 + i;
                    let mut it = Item::new(
                        ItemId::new(id.to_string()).unwrap(),
                        [("a".to_string(), v.clone())].into(),
                    );
                    it.payload = bench_payload(id, args.payload_index);
                    it
                })
                .collect();
            store.upsert("c", &items).expect("upsert");
            if (c + 1) % 100 == 0 {
                eprintln!(
                    "built {} items, {:.0} s",
                    (c + 1) * 1000,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        store.flush().expect("flush");
        let build = start.elapsed().as_secs_f64();
        let rss = rss_bytes().saturating_sub(rss0);
        let vbytes = store.stats("c").expect("stats").vector_bytes;
        // One untimed pass first (as ann_baselines.py does): the first timed ef would
        // otherwise pay for the caches the build left cold.
        run_queries(&store, &queries, &gt, args.ef[0], None);
        for &ef in &args.ef {
            let (qps, recall) = run_queries(&store, &queries, &gt, ef, None);
            json_rows.push(format!(
                "{{\"storage\":\"{storage:?}\",\"ef\":{ef},\"qps\":{qps:.1},\"recall\":{recall:.4},\"build_rate\":{:.1}}}",
                n as f64 / build
            ));
            println!(
                "| {storage:?} | {:.0} | {:.0} | {:.0} | {ef} | {qps:.0} | {recall:.3} |",
                n as f64 / build,
                rss as f64 / n as f64,
                vbytes as f64 / n as f64
            );
        }
        // close (dumps the graph), reopen from the dump, then from sled alone
        let t = Instant::now();
        drop(store);
        let close = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let store = LocalStore::open(dir.path(), options(FilterStrategy::Auto)).expect("reopen");
        let reopen = t.elapsed().as_secs_f64();
        let replayed: u64 = store.recovery_report().iter().map(|r| r.replayed).sum();
        drop(store);
        if args.filters && storage == VectorStorage::F32 {
            filter_switch_over(dir.path(), &base_unit, &queries, &query_unit);
        }
        if args.payload_index {
            if storage == VectorStorage::F32 {
                payload_index_table(dir.path(), &base_unit, &queries, &query_unit);
            }
            continue;
        }
        if !args.rebuild {
            timings.push((storage, close, reopen, replayed, f64::NAN));
            continue;
        }
        std::fs::remove_dir_all(dir.path().join("graphs")).expect("remove dumps");
        let t = Instant::now();
        let s = LocalStore::open(dir.path(), options(FilterStrategy::Auto)).expect("rebuild");
        let rebuild = t.elapsed().as_secs_f64();
        std::mem::forget(s); // skip the close-time dump; the temp dir goes anyway
        timings.push((storage, close, reopen, replayed, rebuild));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, format!("[{}]\n", json_rows.join(",\n"))).expect("write json");
    }
    println!(
        "\n| storage | close + dump s | reopen from dump s (replayed) | full rebuild from sled s |"
    );
    println!("|---|---|---|---|");
    for (s, close, reopen, replayed, rebuild) in timings {
        println!("| {s:?} | {close:.2} | {reopen:.2} ({replayed}) | {rebuild:.2} |");
    }
}

fn filter_switch_over(
    dir: &Path,
    base_unit: &[Vec<f32>],
    queries: &[Vec<f32>],
    query_unit: &[Vec<f32>],
) {
    let n = base_unit.len();
    let queries = &queries[..queries.len().min(env_or("ASEN_BENCH_FILTER_QUERIES", 100))];
    let query_unit = &query_unit[..queries.len()];
    let per_mille = [1usize, 5, 10, 20, 50, 100, 200, 500];
    let mut rows = Vec::new();
    // Reopen the store with each path forced.
    for (mode, strategy) in [
        ("graph filter hook", FilterStrategy::GraphHook),
        ("exact scan", FilterStrategy::ExactScan),
        ("post-filter", FilterStrategy::PostFilter),
        ("auto", FilterStrategy::Auto),
    ] {
        let s = LocalStore::open(dir, options(strategy)).expect("reopen");
        for &pm in &per_mille {
            let filter = Filter::Range {
                field: "bucket".into(),
                gt: None,
                gte: None,
                lt: Some(pm as f64),
                lte: None,
            };
            let gt = truth(base_unit, query_unit, 10, |i| (i * 7919) % 1000 < pm);
            let (qps, recall) = run_queries(&s, queries, &gt, 64, Some(&filter));
            rows.push((pm, mode, qps, recall));
        }
        drop(s);
    }
    println!(
        "\n### filtered search, n={n}, k=10, ef=64, {} queries\n",
        queries.len()
    );
    println!("| selectivity | path | queries/s | recall@10 |");
    println!("|---|---|---|---|");
    rows.sort_by_key(|r| r.0);
    for (pm, mode, qps, recall) in rows {
        println!(
            "| {:.1} % | {mode} | {qps:.0} | {recall:.3} |",
            pm as f64 / 10.0
        );
    }
}

/// Per-query latencies (sorted, seconds), queries/s and per-query recall@10 of filtered
/// searches.
struct Timed {
    qps: f64,
    latencies: Vec<f64>,
    /// (found, expected) per query, in query order.
    found: Vec<(usize, usize)>,
}

impl Timed {
    /// Recall@10 over the first `queries` queries.
    fn recall(&self, queries: usize) -> f64 {
        let (f, e) = self.found[..queries.min(self.found.len())]
            .iter()
            .fold((0, 0), |(f, e), (a, b)| (f + a, e + b));
        f as f64 / e.max(1) as f64
    }

    fn percentile(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

fn run_timed(store: &LocalStore, queries: &[Vec<f32>], gt: &[Vec<u32>], filter: &Filter) -> Timed {
    let mut latencies = Vec::with_capacity(queries.len());
    let mut found = Vec::with_capacity(queries.len());
    let start = Instant::now();
    for (q, t) in queries.iter().zip(gt) {
        let mut req = SearchRequest::vector("a", q.clone(), 10);
        req.ef_search = Some(64);
        req.filter = Some(filter.clone());
        let t0 = Instant::now();
        let hits = store.search("c", &req).expect("search").into_hits();
        latencies.push(t0.elapsed().as_secs_f64());
        let t: HashSet<u32> = t.iter().copied().collect();
        let hit = hits
            .iter()
            .filter(|h| t.contains(&h.id.as_str().parse::<u32>().unwrap()))
            .count();
        found.push((hit, t.len()));
    }
    let qps = queries.len() as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    Timed {
        qps,
        latencies,
        found,
    }
}

/// Keyword and range filters at 0.1 %, 1 % and 10 % selectivity, with the payload index and
/// without (every payload evaluated), [`FilterStrategy::Auto`] both ways.
fn payload_index_table(
    dir: &Path,
    base_unit: &[Vec<f32>],
    queries: &[Vec<f32>],
    query_unit: &[Vec<f32>],
) {
    let n = base_unit.len();
    let unindexed_queries = env_or("ASEN_BENCH_UNINDEXED_QUERIES", 50).min(queries.len());
    let cases: Vec<(usize, &str, Filter)> = [1usize, 10, 100, 500]
        .into_iter()
        .flat_map(|pm| {
            let keyword = Filter::Match {
                field: format!("k{}", 1000 / pm),
                value: asen_index::MatchValue::Keyword("v0".into()),
            };
            let range = Filter::Range {
                field: "bucket".into(),
                gt: None,
                gte: None,
                lt: Some(pm as f64),
                lte: None,
            };
            [(pm, "keyword", keyword), (pm, "range", range)]
        })
        .collect();
    let truths: Vec<Vec<Vec<u32>>> = cases
        .iter()
        .map(|(pm, kind, _)| {
            let m = 1000 / pm;
            if *kind == "keyword" {
                truth(base_unit, query_unit, 10, |i| bucket(i).is_multiple_of(m))
            } else {
                truth(base_unit, query_unit, 10, |i| bucket(i) < *pm)
            }
        })
        .collect();
    let mut rows = Vec::new();
    let mut index_bytes = 0;
    let mut opens = Vec::new();
    for indexed in [false, true] {
        let t = Instant::now();
        let s = LocalStore::open(
            dir,
            StoreOptions {
                payload_index: indexed,
                ..options(FilterStrategy::Auto)
            },
        )
        .expect("reopen");
        opens.push(t.elapsed().as_secs_f64());
        index_bytes = s.payload_index_bytes("c").expect("index bytes");
        let count = if indexed {
            queries.len()
        } else {
            unindexed_queries
        };
        for ((pm, kind, filter), gt) in cases.iter().zip(&truths) {
            let timed = run_timed(&s, &queries[..count], &gt[..count], filter);
            rows.push((*pm, *kind, indexed, count, timed));
        }
        drop(s);
    }
    println!(
        "\n### payload index, n={n}, k=10, ef=64, FilterStrategy::Auto, 1 thread\n\n\
         payload index: {index_bytes} bytes ({:.1} bytes/item) for 5 fields; open from the \
         graph dump (item scan, live set and payload index): {:.2} s, {:.2} s\n",
        index_bytes as f64 / n as f64,
        opens[0],
        opens[1]
    );
    println!(
        "| selectivity | filter | path | queries | q/s | p50 ms | p99 ms | recall@10 | \
         recall@10 (first {unindexed_queries}) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    rows.sort_by_key(|r| (r.0, r.1, r.2));
    for (pm, kind, indexed, count, t) in &rows {
        println!(
            "| {:.1} % | {kind} | {} | {count} | {:.0} | {:.2} | {:.2} | {:.3} | {:.3} |",
            *pm as f64 / 10.0,
            if *indexed {
                "payload index"
            } else {
                "unindexed"
            },
            t.qps,
            t.percentile(0.5) * 1e3,
            t.percentile(0.99) * 1e3,
            t.recall(*count),
            t.recall(unindexed_queries)
        );
    }
    println!("\n| selectivity | filter | q/s ratio (index / unindexed) | p99 ratio (unindexed / index) |");
    println!("|---|---|---|---|");
    for pair in rows.chunks(2) {
        let (old, new) = (&pair[0].4, &pair[1].4);
        println!(
            "| {:.1} % | {} | {:.1} | {:.1} |",
            pair[0].0 as f64 / 10.0,
            pair[0].1,
            new.qps / old.qps,
            old.percentile(0.99) / new.percentile(0.99)
        );
    }
}
