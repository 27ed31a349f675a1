//! Opening a catalogue: live items from sled, graphs from dumps plus replay of newer records,
//! or rebuilt from sled when a dump is missing, stale or corrupt. Also writes the dumps.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, RwLock};

use super::key_ranges::key_ranges;
use super::records::{self, DumpRecord, ItemRecord, VectorRecord, DUMP_FORMAT_ASEN};
use super::{
    lock, Catalogue, GraphRecovery, GraphSlot, LiveSet, RebuildProgress, StoreOptions, WriterState,
};
use crate::error::{IndexError, Result};
use crate::graph::{Graph, LEGACY_DUMP_FILES};
use crate::schema::CatalogueSchema;

/// Points inserted per chunk while rebuilding (one progress report each).
const REBUILD_CHUNK: usize = 10_000;

const TREE_PREFIX: &str = "catalogue/";
const THUMBNAIL_TREE_SUFFIX: &str = "/thumbnails";

/// The sled tree of catalogue `id`'s records.
pub(crate) fn tree_name(id: u64) -> Vec<u8> {
    format!("{TREE_PREFIX}{id}").into_bytes()
}

/// The sled tree of catalogue `id`'s thumbnails.
pub(crate) fn thumbnail_tree_name(id: u64) -> Vec<u8> {
    format!("{TREE_PREFIX}{id}{THUMBNAIL_TREE_SUFFIX}").into_bytes()
}

/// Drops the trees of catalogues that no longer exist: a crash in `drop_catalogue` after the
/// catalogue's entry was removed leaves them (and its thumbnails are worth the disk space).
pub(crate) fn drop_orphan_trees(db: &sled::Db, live: &HashSet<u64>) -> Result<()> {
    let mut dropped = false;
    for name in db.tree_names() {
        let Some(rest) = std::str::from_utf8(&name)
            .ok()
            .and_then(|n| n.strip_prefix(TREE_PREFIX))
        else {
            continue;
        };
        let id = rest.strip_suffix(THUMBNAIL_TREE_SUFFIX).unwrap_or(rest);
        if id.parse::<u64>().is_ok_and(|id| !live.contains(&id)) {
            db.drop_tree(&name)?;
            dropped = true;
        }
    }
    if dropped {
        db.flush()?;
    }
    Ok(())
}

fn dump_root(store_dir: &Path, id: u64) -> PathBuf {
    store_dir.join("graphs").join(format!("catalogue-{id}"))
}

pub(crate) fn open_catalogue(
    db: &sled::Db,
    store_dir: &Path,
    name: &str,
    id: u64,
    schema: CatalogueSchema,
    options: &StoreOptions,
) -> Result<(Catalogue, Vec<GraphRecovery>)> {
    let tree = db.open_tree(tree_name(id))?;
    let thumbnails = db.open_tree(thumbnail_tree_name(id))?;
    let sequence = match tree.get(records::META_SEQ)? {
        Some(b) => records::decode_u64("sequence", &b)?,
        None => 0,
    };
    let next_iid = match tree.get(records::META_NEXT_IID)? {
        Some(b) => records::decode_u64("next internal id", &b)?,
        None => 0,
    };
    let dump_dir = dump_root(store_dir, id);
    // The scan of the item records and the reads of the dumps need nothing from each other, so
    // they overlap, and every dump is read by a thread of its own (each read is one pass over
    // its files): on a cold page cache the threads wait for the disk more than they compute.
    // Replays and rebuilds then run one attribute at a time, with their progress reports.
    let (live, dumps) = std::thread::scope(|s| {
        let loads: Vec<_> = schema
            .attributes
            .iter()
            .enumerate()
            .map(|(a, attribute)| {
                let (tree, dump_dir, schema) = (&tree, &dump_dir, &schema);
                s.spawn(move || load_dump(tree, dump_dir, a, attribute, schema, sequence, next_iid))
            })
            .collect();
        let live = scan_items(&tree, schema.attributes.len());
        let dumps = loads
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<_>>>();
        (live, dumps)
    });
    let (live, dumps) = (live?, dumps?);
    let mut graphs = Vec::new();
    let mut report = Vec::new();
    for ((a, attribute), dump) in schema.attributes.iter().enumerate().zip(dumps) {
        let (graph, dumped, source, replayed) = match dump {
            Ok((graph, dump)) => {
                let replayed = insert_from(&tree, &graph, &schema, a, dump.watermark, None)?;
                (graph, Some(dump.sequence), "dump", replayed)
            }
            Err(reason) => {
                let graph = Graph::new(&schema);
                let progress = options.progress.as_ref().map(|p| {
                    (
                        p,
                        RebuildProgress {
                            catalogue: name.to_string(),
                            attribute: attribute.clone(),
                            reason,
                            done: 0,
                            total: live.counts[a],
                        },
                    )
                });
                let replayed = insert_from(&tree, &graph, &schema, a, 0, progress)?;
                (graph, None, reason, replayed)
            }
        };
        report.push(GraphRecovery {
            catalogue: name.to_string(),
            attribute: attribute.clone(),
            source,
            replayed,
        });
        graphs.push(GraphSlot::new(graph, dumped));
    }
    remove_orphan_dumps(&tree, &dump_dir, schema.attributes.len());
    let replayed_total: u64 = report.iter().map(|r| r.replayed).sum();
    let cat = Catalogue {
        id,
        name: name.to_string(),
        schema,
        tree,
        thumbnails,
        dump_dir,
        writer: Mutex::new(WriterState {
            sequence,
            next_iid,
            inserts_since_dump: replayed_total,
        }),
        live: RwLock::new(live),
        graphs,
        dropped: AtomicBool::new(false),
        replaced: AtomicBool::new(false),
        workers: Mutex::new(Vec::new()),
    };
    Ok((cat, report))
}

/// Item records decoded between two turns of a scanning thread at the live set.
const SCAN_CHUNK: usize = 4096;

/// Threads that scan the item records at once, each its own key range: on a cold page cache
/// each leaf sled reads waits for the disk, so more scans than cores keep more reads in flight.
const SCAN_THREADS: usize = 8;

/// The one pass over the item records: fills the live set and its payload index. The key
/// space is cut into ranges ([`key_ranges`]) that threads scan and decode (parsing the JSON
/// payloads) at once, entering their records into the live set a chunk at a time (its
/// contents do not depend on the order).
fn scan_items(tree: &sled::Tree, attributes: usize) -> Result<LiveSet> {
    let ranges = key_ranges(tree, records::ITEM_PREFIX, SCAN_THREADS)?;
    let live = Mutex::new(LiveSet::new(attributes));
    std::thread::scope(|s| {
        let scans: Vec<_> = ranges
            .iter()
            .map(|range| s.spawn(|| scan_range(tree, range, &live)))
            .collect();
        scans
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    Ok(live.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// The item records of `[lo, hi)` into `live`.
fn scan_range(
    tree: &sled::Tree,
    (lo, hi): &(Vec<u8>, Vec<u8>),
    live: &Mutex<LiveSet>,
) -> Result<()> {
    let mut chunk = Vec::with_capacity(SCAN_CHUNK);
    let mut iter = tree.range(lo.as_slice()..hi.as_slice());
    loop {
        for kv in iter.by_ref().take(SCAN_CHUNK) {
            let (k, v) = kv?;
            chunk.push(decode_item(&k, &v)?);
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let mut live = lock(live);
        for (r, id) in chunk.drain(..) {
            live.insert(r.iid, id, r.mask, &r.payload);
        }
    }
}

fn decode_item(key: &[u8], value: &[u8]) -> Result<(ItemRecord, crate::types::ItemId)> {
    let r = ItemRecord::decode(key, value)?;
    let id = std::str::from_utf8(&key[1..])
        .ok()
        .and_then(|s| crate::types::ItemId::new(s).ok())
        .ok_or_else(|| records::corrupt("item key", "not a valid item id"))?;
    Ok((r, id))
}

/// Removes dump directories no record points to (left by a crash in the middle of a dump).
/// Best effort: a leftover directory wastes disk but is never read.
fn remove_orphan_dumps(tree: &sled::Tree, dump_dir: &Path, attributes: usize) {
    let current: Vec<String> = (0..attributes)
        .filter_map(|a| tree.get(records::dump_key(a)).ok().flatten())
        .filter_map(|b| serde_json::from_slice::<DumpRecord>(&b).ok())
        .map(|d| d.dir)
        .collect();
    let Ok(entries) = std::fs::read_dir(dump_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !current.contains(&name) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Loads attribute `a`'s dump if it is present, intact and consistent with sled. The outer
/// error is a storage failure; the inner `Err` is the reason to rebuild instead.
#[allow(clippy::type_complexity)]
fn load_dump(
    tree: &sled::Tree,
    dump_dir: &Path,
    a: usize,
    attribute: &str,
    schema: &CatalogueSchema,
    sequence: u64,
    next_iid: u64,
) -> Result<std::result::Result<(Graph, DumpRecord), &'static str>> {
    let Some(bytes) = tree.get(records::dump_key(a))? else {
        return Ok(Err("no dump"));
    };
    let Ok(dump) = serde_json::from_slice::<DumpRecord>(&bytes) else {
        return Ok(Err("corrupt dump"));
    };
    if dump.sequence > sequence || dump.watermark > next_iid {
        return Ok(Err("stale dump"));
    }
    if dump.points == 0 {
        // An empty graph is recorded without files.
        return Ok(Ok((Graph::new(schema), dump)));
    }
    let dir = dump_dir.join(&dump.dir);
    if dump.format != DUMP_FORMAT_ASEN {
        return Ok(load_legacy_dump(&dir, schema, attribute, dump));
    }
    if !crate::graph::DUMP_FILES
        .iter()
        .all(|f| dir.join(f).is_file())
    {
        return Ok(Err("no dump"));
    }
    // The CRCs are computed while the files are read: every byte is read once.
    match Graph::load(&dir, schema, attribute) {
        Ok((g, crcs))
            if crcs.links == dump.crc_graph
                && crcs.vectors == dump.crc_data
                && g.len() as u64 == dump.points =>
        {
            Ok(Ok((g, dump)))
        }
        _ => Ok(Err("corrupt dump")),
    }
}

/// Loads a dump in hnsw_rs's format (written before asen had its own graph), checking its
/// CRCs first. The next dump of the catalogue is written in asen's format.
fn load_legacy_dump(
    dir: &Path,
    schema: &CatalogueSchema,
    attribute: &str,
    dump: DumpRecord,
) -> std::result::Result<(Graph, DumpRecord), &'static str> {
    let crc = |file: &str| crc_file(&dir.join(file));
    match (crc(LEGACY_DUMP_FILES[0]), crc(LEGACY_DUMP_FILES[1])) {
        (Ok(g), Ok(d)) if g == dump.crc_graph && d == dump.crc_data => {}
        (Err(_), _) | (_, Err(_)) => return Err("no dump"),
        _ => return Err("corrupt dump"),
    }
    match Graph::load_legacy(dir, schema, attribute) {
        Ok(g) if g.len() as u64 == dump.points => Ok((g, dump)),
        _ => Err("corrupt dump"),
    }
}

fn crc_file(path: &Path) -> std::io::Result<u32> {
    let mut f = File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Inserts into `graph` every stored vector of attribute `a` with internal id >= `from`.
/// Only live items have vector records, so this is a replay (or, from 0, a rebuild).
pub(crate) fn insert_from(
    tree: &sled::Tree,
    graph: &Graph,
    schema: &CatalogueSchema,
    a: usize,
    from: u64,
    mut progress: Option<(&super::ProgressFn, RebuildProgress)>,
) -> Result<u64> {
    let dim = schema.dimension;
    let end = [records::VECTOR_PREFIX + 1];
    let mut chunk: Vec<(u64, Vec<f32>)> = Vec::with_capacity(REBUILD_CHUNK);
    let mut total = 0u64;
    let mut flush = |chunk: &mut Vec<(u64, Vec<f32>)>, total: &mut u64| {
        let pts: Vec<(&[f32], u64)> = chunk.iter().map(|(i, v)| (v.as_slice(), *i)).collect();
        graph.insert(&pts);
        *total += chunk.len() as u64;
        chunk.clear();
        if let Some((f, p)) = progress.as_mut() {
            p.done = *total;
            f(p);
        }
    };
    for kv in tree.range(records::vector_key(from).to_vec()..end.to_vec()) {
        let (k, v) = kv?;
        let iid = records::iid_from_vector_key(&k)?;
        let rec = VectorRecord::decode(iid, &v, dim)?;
        if let Some(x) = rec.get(a, dim) {
            chunk.push((iid, x.to_vec()));
        }
        if chunk.len() == REBUILD_CHUNK {
            flush(&mut chunk, &mut total);
        }
    }
    if !chunk.is_empty() || total == 0 {
        flush(&mut chunk, &mut total);
    }
    Ok(total)
}

/// Dumps every graph of a catalogue. The caller holds the writer lock, so every record below
/// `next_iid` is in the graphs and none is being added.
pub(crate) fn dump_graphs(c: &Catalogue, w: &mut WriterState, db: &sled::Db) -> Result<()> {
    if c.retired() {
        return Ok(());
    }
    for a in 0..c.graphs.len() {
        dump_graph(c, a, w)?;
    }
    db.flush()?;
    w.inserts_since_dump = 0;
    Ok(())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IndexError + '_ {
    move |e| IndexError::io(path, e)
}

pub(crate) fn dump_graph(c: &Catalogue, a: usize, w: &WriterState) -> Result<()> {
    let graph = c.graphs[a].current();
    if graph.len() == 0 {
        let record = DumpRecord {
            dir: String::new(),
            sequence: w.sequence,
            watermark: w.next_iid,
            points: 0,
            crc_graph: 0,
            crc_data: 0,
            format: DUMP_FORMAT_ASEN,
        };
        return write_record(c, a, w, record);
    }
    let name = format!("a{a}-s{}-i{}", w.sequence, w.next_iid);
    let dir = c.dump_dir.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // The files are synced and their CRCs computed as they are written.
    let crcs = graph.dump(&dir, &c.schema.attributes[a])?;
    let record = DumpRecord {
        dir: name.clone(),
        sequence: w.sequence,
        watermark: w.next_iid,
        points: graph.len() as u64,
        crc_graph: crcs.links,
        crc_data: crcs.vectors,
        format: DUMP_FORMAT_ASEN,
    };
    write_record(c, a, w, record)
}

/// Points the attribute at its new dump, then removes the previous dump's files.
fn write_record(c: &Catalogue, a: usize, w: &WriterState, record: DumpRecord) -> Result<()> {
    let name = record.dir.clone();
    let old = c.tree.get(records::dump_key(a))?;
    let bytes =
        serde_json::to_vec(&record).map_err(|e| records::corrupt("dump record", e.to_string()))?;
    c.tree.insert(records::dump_key(a), bytes)?;
    c.tree.flush()?;
    *lock(&c.graphs[a].dumped_sequence) = Some(w.sequence);
    if let Some(old) = old.and_then(|b| serde_json::from_slice::<DumpRecord>(&b).ok()) {
        if old.dir != name && !old.dir.is_empty() {
            let _ = std::fs::remove_dir_all(c.dump_dir.join(old.dir));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_of_catalogues_without_an_entry_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        for id in [1, 2] {
            for name in [tree_name(id), thumbnail_tree_name(id)] {
                db.open_tree(name).unwrap().insert(b"k", b"v").unwrap();
            }
        }
        db.open_tree(b"catalogues").unwrap();
        db.open_tree(b"catalogue/not-a-number").unwrap();
        drop_orphan_trees(&db, &HashSet::from([2])).unwrap();
        let names: HashSet<Vec<u8>> = db.tree_names().iter().map(|n| n.to_vec()).collect();
        assert!(!names.contains(&tree_name(1)));
        assert!(!names.contains(&thumbnail_tree_name(1)));
        assert!(names.contains(&tree_name(2)));
        assert!(names.contains(&thumbnail_tree_name(2)));
        assert!(names.contains(b"catalogues".as_slice()));
        assert!(names.contains(b"catalogue/not-a-number".as_slice()));
    }

    /// Rewrites attribute 0's dump of a closed store as an asen older than its own graph left
    /// it: hnsw_rs's two files, in a record of format 0. Returns the dump's directory name.
    fn downgrade_dump(store_dir: &Path, dim: usize) -> String {
        // The store was dropped an instant ago: wait for sled's lock as a reopen does.
        let db = super::super::open_sled(&store_dir.join("sled"), 16 << 20).unwrap();
        let (id, tree, record) = first_dump_record(&db);
        assert_eq!(record.format, DUMP_FORMAT_ASEN);
        let vectors: Vec<(u64, Vec<f32>)> = tree
            .scan_prefix([records::VECTOR_PREFIX])
            .map(|kv| {
                let (k, v) = kv.unwrap();
                let iid = records::iid_from_vector_key(&k).unwrap();
                let rec = VectorRecord::decode(iid, &v, dim).unwrap();
                (iid, rec.get(0, dim).unwrap().to_vec())
            })
            .collect();
        let points: Vec<(&[f32], u64)> = vectors.iter().map(|(i, v)| (v.as_slice(), *i)).collect();
        let root = dump_root(store_dir, id);
        std::fs::remove_dir_all(root.join(&record.dir)).unwrap();
        let name = "legacy".to_string();
        let legacy = root.join(&name);
        std::fs::create_dir_all(&legacy).unwrap();
        crate::graph::write_legacy_dump(&legacy, &points, 16, 100);
        let old = DumpRecord {
            dir: name.clone(),
            points: points.len() as u64,
            crc_graph: crc_file(&legacy.join(LEGACY_DUMP_FILES[0])).unwrap(),
            crc_data: crc_file(&legacy.join(LEGACY_DUMP_FILES[1])).unwrap(),
            format: 0,
            ..record
        };
        tree.insert(records::dump_key(0), serde_json::to_vec(&old).unwrap())
            .unwrap();
        db.flush().unwrap();
        name
    }

    /// The first catalogue tree holding a dump record for attribute 0, and that record.
    fn first_dump_record(db: &sled::Db) -> (u64, sled::Tree, DumpRecord) {
        let (id, tree) = (0..8)
            .map(|id| (id, db.open_tree(tree_name(id)).unwrap()))
            .find(|(_, t)| t.contains_key(records::dump_key(0)).unwrap())
            .expect("a catalogue with a dump");
        let bytes = tree.get(records::dump_key(0)).unwrap().unwrap();
        (id, tree, serde_json::from_slice(&bytes).unwrap())
    }

    fn dump_format(store_dir: &Path) -> (u32, String) {
        let db = super::super::open_sled(&store_dir.join("sled"), 16 << 20).unwrap();
        let (_, _, r) = first_dump_record(&db);
        (r.format, r.dir)
    }

    /// An upgraded store: its dump records are format 0 (hnsw_rs's files). It opens from them
    /// without a rebuild, finds every item, and its next dump is in asen's format.
    #[test]
    fn a_store_with_hnsw_rs_dumps_opens_from_them_and_dumps_in_asen_format() {
        use crate::{CatalogueSchema, CatalogueStore, Item, ItemId, LocalStore, SearchRequest};
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let dim = 16;
        let mut r = StdRng::seed_from_u64(5);
        let vectors: Vec<Vec<f32>> = (0..400)
            .map(|_| {
                let v: Vec<f32> = (0..dim).map(|_| r.gen_range(-1.0..1.0)).collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / n).collect()
            })
            .collect();
        let item = |i: usize| {
            Item::new(
                ItemId::new(i.to_string()).unwrap(),
                [("a".to_string(), vectors[i].clone())].into(),
            )
        };
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
            store
                .create_catalogue("c", &CatalogueSchema::new(["a"], dim))
                .unwrap();
            store
                .upsert("c", &(0..399).map(item).collect::<Vec<_>>())
                .unwrap();
        }
        let legacy = downgrade_dump(dir.path(), dim);
        {
            let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
            let rep: Vec<_> = store
                .recovery_report()
                .iter()
                .map(|r| (r.source, r.replayed))
                .collect();
            assert_eq!(rep, [("dump", 0)]);
            for i in (0..399).step_by(7) {
                let req = SearchRequest::vector("a", vectors[i].clone(), 1);
                let hits = store.search("c", &req).unwrap().into_hits();
                assert_eq!(hits[0].id.as_str(), i.to_string(), "item {i}");
            }
            assert!(store.check_consistency("c").unwrap().is_consistent());
            store.upsert("c", &[item(399)]).unwrap();
        }
        let (format, name) = dump_format(dir.path());
        assert_eq!(format, DUMP_FORMAT_ASEN);
        assert_ne!(name, legacy);
    }
}
