//! [`LocalStore`]: catalogues in one sled database, one in-memory HNSW graph per attribute.
//!
//! sled is the source of truth. Each catalogue has one sled tree (see `records.rs` for the key
//! layout) so that a write batch is applied atomically, and a second tree for its items'
//! thumbnails (external id -> bytes), written in the same sled transaction as the items they
//! belong to; graphs are derived state, rebuilt or replayed from sled on open (`recovery.rs`)
//! and kept compact in the background: tombstones' slots are reclaimed for new points
//! (`reclaim.rs`), and graphs left mostly empty are rebuilt (`compaction.rs`). Thumbnails of
//! a pre-store data directory are imported on open (`legacy_thumbnails.rs`).

mod compact_payload;
mod compaction;
mod filter_plan;
mod key_ranges;
mod legacy_thumbnails;
mod payload_index;
mod reclaim;
mod records;
mod recovery;
mod search;
mod sorted_blocks;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::error::{IndexError, Result};
use crate::graph::Graph;
use crate::schema::{CatalogueSchema, SchemaChange};
use crate::store::CatalogueStore;
use crate::types::{
    AttributeStats, CatalogueInfo, CatalogueStats, FieldValues, Item, ItemId, ItemPage, Payload,
    SearchRequest, SearchResults, StoredItem, WriteReceipt, MAX_BATCH_ITEMS,
};
use crate::validate;
use compact_payload::{CompactPayload, KeyInterner};
pub use legacy_thumbnails::ThumbnailMigration;
use payload_index::PayloadIndex;
use records::{ItemRecord, VectorRecord};

/// When a write is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every upsert and delete is flushed to disk before it returns (receipt `durable: true`).
    #[default]
    Flush,
    /// Writes return once applied; sled flushes in the background (about every 500 ms) and on
    /// [`CatalogueStore::flush`]. Faster ingestion; a crash may lose the last unflushed batches
    /// (whole batches only, never part of one).
    Deferred,
}

/// How filtered searches find candidates. `Auto` picks by the number of matching items,
/// counted exactly by the payload index where the filter is indexable (see
/// [`StoreOptions::payload_index`]) and estimated on a sample otherwise; the others force one
/// path (benchmarks, diagnosis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FilterStrategy {
    /// Selective filters (at most [`StoreOptions::exact_scan_fraction`] of live items, or
    /// [`StoreOptions::exact_scan_max_items`]) scan their matches exactly; others walk the graph
    /// unfiltered, widened by 1 / selectivity, and filter the candidates.
    #[default]
    Auto,
    /// Always score every matching item exactly.
    ExactScan,
    /// Always walk the graph with the filter hook (slow for selective filters: the walk
    /// passes through every rejected point).
    GraphHook,
    /// Always walk the graph unfiltered and filter the candidates (falls back to an exact scan
    /// when too few pass).
    PostFilter,
}

/// Progress of a graph rebuild, reported through [`StoreOptions::progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Catalogue being rebuilt.
    pub catalogue: String,
    /// Attribute whose graph is rebuilt.
    pub attribute: String,
    /// Why: `"no dump"`, `"stale dump"`, `"corrupt dump"`, `"compaction"`.
    pub reason: &'static str,
    /// Points inserted so far.
    pub done: u64,
    /// Points to insert.
    pub total: u64,
}

/// Callback receiving rebuild progress (the library never prints).
pub type ProgressFn = Arc<dyn Fn(&RebuildProgress) + Send + Sync>;

/// Options for [`LocalStore::open`].
#[derive(Clone)]
pub struct StoreOptions {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// Compact an attribute's graph when tombstones exceed this fraction of its points.
    pub compaction_threshold: f64,
    /// Do not compact or reclaim graphs with fewer points than this.
    pub compaction_min_points: usize,
    /// Reclaim an attribute's tombstones (unlink them and reuse their slots for new points)
    /// when those not yet reclaimed exceed this fraction of its graph's points (0: never).
    pub reclaim_threshold: f64,
    /// Run compactions on a background thread (searches never wait); `false` runs them inline
    /// in the write that triggered them.
    pub background_compaction: bool,
    /// Dump a catalogue's graphs after this many inserts since its last dump (0: only on
    /// [`LocalStore::checkpoint`] and on close).
    pub dump_every_inserts: u64,
    /// With [`FilterStrategy::Auto`], filtered searches scan the matching items exactly when at
    /// most this fraction of live items match (see `docs/benchmarks.md`).
    pub exact_scan_fraction: f64,
    /// ... or when at most this many items match, whatever the fraction.
    pub exact_scan_max_items: usize,
    /// Which path filtered searches take.
    pub filter_strategy: FilterStrategy,
    /// Answer filters from the in-memory payload index where they are indexable (exact
    /// match counts, no pass over every payload). `false` evaluates every filter on every live
    /// payload, as before the index (benchmarks, diagnosis); the index is kept up to date
    /// either way.
    pub payload_index: bool,
    /// sled page cache, bytes.
    pub cache_capacity_bytes: u64,
    /// Receives graph rebuild progress (open and compaction).
    pub progress: Option<ProgressFn>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            durability: Durability::Flush,
            compaction_threshold: 0.2,
            compaction_min_points: 1000,
            reclaim_threshold: 0.05,
            background_compaction: true,
            dump_every_inserts: 200_000,
            exact_scan_fraction: 0.05,
            exact_scan_max_items: 2_000,
            filter_strategy: FilterStrategy::Auto,
            payload_index: true,
            cache_capacity_bytes: 512 * 1024 * 1024,
            progress: None,
        }
    }
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("durability", &self.durability)
            .field("compaction_threshold", &self.compaction_threshold)
            .field("compaction_min_points", &self.compaction_min_points)
            .field("reclaim_threshold", &self.reclaim_threshold)
            .field("background_compaction", &self.background_compaction)
            .field("dump_every_inserts", &self.dump_every_inserts)
            .field("exact_scan_fraction", &self.exact_scan_fraction)
            .field("exact_scan_max_items", &self.exact_scan_max_items)
            .field("filter_strategy", &self.filter_strategy)
            .field("payload_index", &self.payload_index)
            .field("cache_capacity_bytes", &self.cache_capacity_bytes)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What [`LocalStore::open`] did per attribute graph, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphRecovery {
    /// Catalogue.
    pub catalogue: String,
    /// Attribute.
    pub attribute: String,
    /// `"dump"` when loaded from a dump, otherwise the rebuild reason.
    pub source: &'static str,
    /// Points inserted from sled records newer than the dump (all points after a rebuild).
    pub replayed: u64,
}

/// Result of [`LocalStore::check_consistency`]: sled's view against the graphs'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyReport {
    /// Live items in sled.
    pub items: u64,
    /// Per attribute: (live items with the attribute in sled, distinct live ids in the graph,
    /// duplicate points in the graph).
    pub attributes: Vec<(String, u64, u64, u64)>,
}

impl ConsistencyReport {
    /// Whether every graph holds exactly the live items of its attribute, once.
    pub fn is_consistent(&self) -> bool {
        self.attributes
            .iter()
            .all(|(_, sled, graph, dup)| sled == graph && *dup == 0)
    }
}

/// In-memory view of a live item (payload kept for filters, group-by and hits).
pub(crate) struct ItemMeta {
    pub id: ItemId,
    pub mask: u64,
    pub payload: CompactPayload,
}

/// Live items by internal id, with per-attribute counts and the index of their payloads.
/// Items enter and leave only through [`LiveSet::insert`] and [`LiveSet::remove`], which keep
/// the counts and the payload index exact.
pub(crate) struct LiveSet {
    pub items: HashMap<u64, Arc<ItemMeta>>,
    pub counts: Vec<u64>,
    pub payloads: PayloadIndex,
    keys: KeyInterner,
}

impl LiveSet {
    /// An empty set for a schema of `attributes` attributes.
    fn new(attributes: usize) -> Self {
        LiveSet {
            items: HashMap::new(),
            counts: vec![0; attributes],
            payloads: PayloadIndex::default(),
            keys: KeyInterner::default(),
        }
    }

    /// Makes item `id` live as internal id `iid`, with its payload in compact form.
    fn insert(&mut self, iid: u64, id: ItemId, mask: u64, payload: &Payload) {
        let payload = CompactPayload::new(payload, &mut self.keys);
        self.insert_meta(iid, Arc::new(ItemMeta { id, mask, payload }));
    }

    /// Makes a meta of another live set live here as it is; its keys join this set's.
    fn adopt(&mut self, iid: u64, meta: Arc<ItemMeta>) {
        meta.payload.share_keys(&mut self.keys);
        self.insert_meta(iid, meta);
    }

    fn insert_meta(&mut self, iid: u64, meta: Arc<ItemMeta>) {
        self.remove(iid);
        for (a, c) in self.counts.iter_mut().enumerate() {
            if meta.mask & (1 << a) != 0 {
                *c += 1;
            }
        }
        self.payloads.add(iid, &meta.payload);
        self.items.insert(iid, meta);
    }

    fn remove(&mut self, iid: u64) {
        if let Some(meta) = self.items.remove(&iid) {
            for (a, c) in self.counts.iter_mut().enumerate() {
                if meta.mask & (1 << a) != 0 {
                    *c -= 1;
                }
            }
            self.payloads.remove(iid, &meta.payload);
        }
    }

    /// Gives a live item attribute `a` (its payload, hence the payload index, is unchanged).
    fn add_attribute(&mut self, iid: u64, a: usize, mask: u64) {
        let Some(meta) = self.items.get(&iid) else {
            return;
        };
        let meta = Arc::new(ItemMeta {
            id: meta.id.clone(),
            mask,
            payload: meta.payload.clone(),
        });
        self.items.insert(iid, meta);
        self.counts[a] += 1;
    }
}

/// Counters owned by the single writer of a catalogue.
pub(crate) struct WriterState {
    pub sequence: u64,
    pub next_iid: u64,
    pub inserts_since_dump: u64,
}

/// One attribute's graph; the `Arc` is swapped by compaction, searches clone it and never wait.
pub(crate) struct GraphSlot {
    pub graph: RwLock<Arc<Graph>>,
    pub compacting: AtomicBool,
    pub compactions: AtomicU64,
    pub dumped_sequence: Mutex<Option<u64>>,
}

impl GraphSlot {
    fn new(graph: Graph, dumped: Option<u64>) -> Self {
        GraphSlot {
            graph: RwLock::new(Arc::new(graph)),
            compacting: AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            dumped_sequence: Mutex::new(dumped),
        }
    }

    /// A slot over a graph another slot holds too (an altered catalogue keeps its graphs).
    fn shared(graph: Arc<Graph>, dumped: Option<u64>) -> Self {
        GraphSlot {
            graph: RwLock::new(graph),
            compacting: AtomicBool::new(false),
            compactions: AtomicU64::new(0),
            dumped_sequence: Mutex::new(dumped),
        }
    }

    pub(crate) fn current(&self) -> Arc<Graph> {
        Arc::clone(&read(&self.graph))
    }
}

pub(crate) struct Catalogue {
    /// Number of its sled trees and dump folder.
    pub id: u64,
    pub name: String,
    pub schema: CatalogueSchema,
    pub tree: sled::Tree,
    /// External id -> thumbnail bytes, for live items only; written with `tree` in one
    /// transaction (see [`apply_writes`]).
    pub thumbnails: sled::Tree,
    pub dump_dir: PathBuf,
    pub writer: Mutex<WriterState>,
    pub live: RwLock<LiveSet>,
    pub graphs: Vec<GraphSlot>,
    pub dropped: AtomicBool,
    /// Set once an alteration has published the catalogue's successor: a writer that finds
    /// it set after taking the writer lock retries on the successor, and a compaction stops.
    pub replaced: AtomicBool,
    pub workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Catalogue {
    /// Dropped or replaced: background work on this catalogue has no purpose.
    pub(crate) fn retired(&self) -> bool {
        self.dropped.load(Ordering::Acquire) || self.replaced.load(Ordering::Acquire)
    }
}

/// A poisoned lock means a thread panicked while holding it; the data it guards is still
/// structurally valid (every update is a single insert/remove), so carry on.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
pub(crate) fn lock<T>(l: &Mutex<T>) -> MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Serialize, Deserialize)]
struct CatalogueEntry {
    id: u64,
    schema: CatalogueSchema,
}

const CATALOGUES_TREE: &[u8] = b"catalogues";
const NEXT_CATALOGUE_ID: &[u8] = b"next_catalogue_id";

/// The local backend: sled for items, vectors and payloads, HNSW graphs in memory, graph
/// dumps on disk for fast restarts.
pub struct LocalStore {
    db: sled::Db,
    dir: PathBuf,
    options: StoreOptions,
    catalogues: RwLock<BTreeMap<String, Arc<Catalogue>>>,
    admin: Mutex<()>,
    recovery: Vec<GraphRecovery>,
    thumbnail_migration: Option<ThumbnailMigration>,
}

impl std::fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalStore")
            .field("dir", &self.dir)
            .field(
                "catalogues",
                &read(&self.catalogues).keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl LocalStore {
    /// Opens (or creates) a store in `dir`: sled under `dir/sled`, graph dumps under
    /// `dir/graphs`. Graph dumps are loaded and newer sled records replayed; a missing, stale
    /// or corrupt dump is rebuilt from sled, reporting through `options.progress`.
    ///
    /// A `dir/thumbnails/` folder (the separate thumbnail database the service kept before
    /// thumbnails moved into the store) is imported once: the thumbnails of items that exist
    /// are copied into the store, then the folder is removed; see
    /// [`LocalStore::thumbnail_migration`].
    pub fn open(dir: impl AsRef<Path>, options: StoreOptions) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| IndexError::io(&dir, e))?;
        let db = open_sled(&dir.join("sled"), options.cache_capacity_bytes)?;
        let entries = db.open_tree(CATALOGUES_TREE)?;
        let mut catalogues = BTreeMap::new();
        let mut recovery = Vec::new();
        let mut ids = HashSet::new();
        for kv in entries.iter() {
            let (k, v) = kv?;
            let name = String::from_utf8_lossy(&k).into_owned();
            let entry: CatalogueEntry = serde_json::from_slice(&v).map_err(|e| {
                records::corrupt(&format!("catalogue entry {name:?}"), e.to_string())
            })?;
            ids.insert(entry.id);
            let (cat, rec) =
                recovery::open_catalogue(&db, &dir, &name, entry.id, entry.schema, &options)?;
            recovery.extend(rec);
            catalogues.insert(name, Arc::new(cat));
        }
        recovery::drop_orphan_trees(&db, &ids)?;
        let thumbnail_migration = legacy_thumbnails::import(&dir, &db, &catalogues)?;
        let store = LocalStore {
            db,
            dir,
            options,
            catalogues: RwLock::new(catalogues),
            admin: Mutex::new(()),
            recovery,
            thumbnail_migration,
        };
        // Dumps keep reclaimed slots as unlinked points: free them (and start any compaction
        // that is due) before the first write.
        let cats: Vec<_> = read(&store.catalogues).values().cloned().collect();
        for c in &cats {
            store.maybe_compact(c);
        }
        Ok(store)
    }

    /// What [`LocalStore::open`] imported from an old `thumbnails/` folder; `None` when there
    /// was none.
    pub fn thumbnail_migration(&self) -> Option<&ThumbnailMigration> {
        self.thumbnail_migration.as_ref()
    }

    /// How each graph was restored by [`LocalStore::open`].
    pub fn recovery_report(&self) -> &[GraphRecovery] {
        &self.recovery
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn catalogue(&self, name: &str) -> Result<Arc<Catalogue>> {
        read(&self.catalogues)
            .get(name)
            .cloned()
            .ok_or_else(|| IndexError::CatalogueNotFound {
                catalogue: name.chars().take(80).collect(),
            })
    }

    /// Dumps every catalogue's graphs (with the sequence they cover) so the next open needs no
    /// rebuild or replay. Blocks that catalogue's writers while it runs; searches continue.
    pub fn checkpoint(&self) -> Result<()> {
        let cats: Vec<_> = read(&self.catalogues).values().cloned().collect();
        for c in cats {
            let mut w = lock(&c.writer);
            recovery::dump_graphs(&c, &mut w, &self.db)?;
        }
        Ok(())
    }

    /// Compacts a catalogue's graphs now, on the calling thread, if they hold any tombstone.
    pub fn compact(&self, catalogue: &str) -> Result<()> {
        let c = self.catalogue(catalogue)?;
        for a in 0..c.graphs.len() {
            if c.graphs[a]
                .compacting
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let res = compaction::compact(&c, a, &self.options);
                c.graphs[a].compacting.store(false, Ordering::Release);
                res?;
            }
        }
        Ok(())
    }

    /// Waits for background compactions started so far.
    pub fn wait_for_compactions(&self) {
        let cats: Vec<_> = read(&self.catalogues).values().cloned().collect();
        for c in cats {
            let handles: Vec<_> = lock(&c.workers).drain(..).collect();
            for h in handles {
                let _ = h.join();
            }
        }
    }

    /// Approximate heap bytes of a catalogue's payload index (posting lists, numeric columns,
    /// indexed keywords), for capacity planning and benchmarks.
    pub fn payload_index_bytes(&self, catalogue: &str) -> Result<u64> {
        let c = self.catalogue(catalogue)?;
        let bytes = read(&c.live).payloads.heap_bytes();
        Ok(bytes as u64)
    }

    /// Bytes a catalogue's graphs hold in memory (vectors, neighbour lists, ids and levels of
    /// every point, tombstones included), for capacity planning and benchmarks.
    pub fn graph_memory_bytes(&self, catalogue: &str) -> Result<u64> {
        let c = self.catalogue(catalogue)?;
        Ok(c.graphs.iter().map(|g| g.current().memory_bytes()).sum())
    }

    /// Compares sled's live items with each graph's points (O(n)); the crash test's oracle.
    pub fn check_consistency(&self, catalogue: &str) -> Result<ConsistencyReport> {
        let c = self.catalogue(catalogue)?;
        let _w = lock(&c.writer);
        let mut sled_items: HashMap<u64, u64> = HashMap::new();
        for kv in c.tree.scan_prefix([records::ITEM_PREFIX]) {
            let (k, v) = kv?;
            let r = ItemRecord::decode(&k, &v)?;
            sled_items.insert(r.iid, r.mask);
        }
        let mut attributes = Vec::new();
        for (a, name) in c.schema.attributes.iter().enumerate() {
            let in_sled = sled_items.values().filter(|m| *m & (1 << a) != 0).count() as u64;
            let ids = c.graphs[a].current().ids();
            let mut seen = HashSet::new();
            let mut dup = 0;
            let mut live_in_graph = 0;
            for id in ids {
                if !seen.insert(id) {
                    dup += 1;
                } else if sled_items.get(&id).is_some_and(|m| m & (1 << a) != 0) {
                    live_in_graph += 1;
                }
            }
            attributes.push((name.clone(), in_sled, live_in_graph, dup));
        }
        Ok(ConsistencyReport {
            items: sled_items.len() as u64,
            attributes,
        })
    }

    fn durable_flush(&self) -> Result<bool> {
        match self.options.durability {
            Durability::Flush => {
                self.db.flush()?;
                Ok(true)
            }
            Durability::Deferred => Ok(false),
        }
    }

    /// Validates a batch and turns it into records; nothing is written on error.
    fn prepare<'a>(&self, c: &Catalogue, items: &'a [Item]) -> Result<Vec<PreparedItem<'a>>> {
        validate::batch_len(items.len())?;
        items
            .iter()
            .map(|item| {
                let by_index = validate::item(&c.name, &c.schema, item)?;
                let mask = by_index
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| v.is_some())
                    .fold(0u64, |m, (a, _)| m | (1 << a));
                Ok(PreparedItem {
                    id: item.id.clone(),
                    mask,
                    vectors: by_index,
                    payload: item.payload.clone(),
                    content_hash: item.content_hash.clone(),
                    thumbnail: item.thumbnail.as_deref(),
                })
            })
            .collect()
    }

    /// Starts the maintenance an attribute's tombstones call for: a compaction when they
    /// (reclaimed slots included) pass `compaction_threshold` of its points, otherwise a
    /// reclaim when those not yet reclaimed pass `reclaim_threshold`. One job per attribute at
    /// a time.
    fn maybe_compact(&self, c: &Arc<Catalogue>) {
        for a in 0..c.graphs.len() {
            let graph = c.graphs[a].current();
            let points = graph.len() as u64;
            let free = graph.free_slots() as u64;
            drop(graph);
            let live = read(&c.live).counts[a];
            let tombstones = points.saturating_sub(live);
            if points < self.options.compaction_min_points as u64 {
                continue;
            }
            let job = if (tombstones as f64) > self.options.compaction_threshold * points as f64 {
                Job::Compact
            } else if self.options.reclaim_threshold > 0.0
                && (tombstones.saturating_sub(free) as f64)
                    > self.options.reclaim_threshold * points as f64
            {
                Job::Reclaim
            } else {
                continue;
            };
            if c.graphs[a]
                .compacting
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let run = {
                let options = self.options.clone();
                move |cat: &Catalogue| {
                    // A failed compaction leaves the old graph in place; the next write that
                    // crosses the threshold tries again.
                    match job {
                        Job::Compact => {
                            let _ = compaction::compact(cat, a, &options);
                        }
                        Job::Reclaim => {
                            reclaim::reclaim(cat, a);
                        }
                    }
                    cat.graphs[a].compacting.store(false, Ordering::Release);
                }
            };
            if self.options.background_compaction {
                let cat = Arc::clone(c);
                let handle = std::thread::Builder::new()
                    .name(format!("asen-{}-{a}", job.name()))
                    .spawn(move || run(&cat));
                match handle {
                    Ok(h) => {
                        let mut workers = lock(&c.workers);
                        workers.retain(|h| !h.is_finished());
                        workers.push(h);
                    }
                    Err(_) => c.graphs[a].compacting.store(false, Ordering::Release),
                }
            } else {
                run(c);
            }
        }
    }
}

/// Background maintenance of one attribute's graph.
#[derive(Clone, Copy)]
enum Job {
    Compact,
    Reclaim,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Job::Compact => "compact",
            Job::Reclaim => "reclaim",
        }
    }
}

struct PreparedItem<'a> {
    id: ItemId,
    mask: u64,
    vectors: Vec<Option<Vec<f32>>>,
    payload: Payload,
    content_hash: Option<String>,
    thumbnail: Option<&'a [u8]>,
}

/// Writes a batch's records: each item's record and vectors, its thumbnail (or the removal
/// of one it had), the removal of the vectors of the items it replaces, and the catalogue's
/// sequence and next internal id. Returns the internal ids of the replaced items.
fn write_records(
    c: &Catalogue,
    fresh: &[(u64, &PreparedItem)],
    sequence: u64,
    next_iid: u64,
) -> Result<Vec<u64>> {
    let mut batch = sled::Batch::default();
    let mut thumbnails = sled::Batch::default();
    let mut thumbnail_writes = 0usize;
    let mut replaced = Vec::new();
    for &(iid, p) in fresh {
        let key = records::item_key(p.id.as_str());
        if let Some(old) = c.tree.get(&key)? {
            let old = ItemRecord::decode(&key, &old)?;
            batch.remove(&records::vector_key(old.iid));
            replaced.push(old.iid);
        }
        let record = ItemRecord {
            iid,
            mask: p.mask,
            content_hash: p.content_hash.clone(),
            payload: p.payload.clone(),
        };
        batch.insert(key, record.encode());
        let vs: Vec<&[f32]> = p.vectors.iter().flatten().map(Vec::as_slice).collect();
        batch.insert(&records::vector_key(iid), VectorRecord::encode(p.mask, &vs));
        // The thumbnail follows the item: replaced, or removed when the new item has none.
        match p.thumbnail {
            Some(t) => {
                thumbnails.insert(p.id.as_str().as_bytes(), t);
                thumbnail_writes += 1;
            }
            None => {
                if c.thumbnails.contains_key(p.id.as_str())? {
                    thumbnails.remove(p.id.as_str().as_bytes());
                    thumbnail_writes += 1;
                }
            }
        }
    }
    batch.insert(records::META_SEQ, &records::encode_u64(sequence));
    batch.insert(records::META_NEXT_IID, &records::encode_u64(next_iid));
    apply_writes(c, batch, (thumbnail_writes > 0).then_some(thumbnails))?;
    Ok(replaced)
}

/// Applies a catalogue's record batch and its thumbnail batch as one atomic step: a plain
/// `apply_batch` when no thumbnail changes, otherwise one sled transaction over both trees.
/// Either way sled seals the writes as one batch in its log, so recovery after a crash sees all
/// of them or none, and readers (which take sled's read lock) never see half of them.
fn apply_writes(
    c: &Catalogue,
    records: sled::Batch,
    thumbnails: Option<sled::Batch>,
) -> Result<()> {
    use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
    let Some(thumbnails) = thumbnails else {
        c.tree.apply_batch(records)?;
        return Ok(());
    };
    (&c.tree, &c.thumbnails)
        .transaction(|(tree, thumbs)| {
            tree.apply_batch(&records)?;
            thumbs.apply_batch(&thumbnails)?;
            Ok::<(), ConflictableTransactionError<std::convert::Infallible>>(())
        })
        .map_err(|e| match e {
            TransactionError::Storage(e) => IndexError::Storage(e),
            TransactionError::Abort(never) => match never {},
        })
}

/// Inserts a batch's new points into every graph that they have a vector for, all attributes
/// in one parallel pass.
fn insert_fresh(c: &Catalogue, fresh: &[(u64, &PreparedItem)]) {
    let graphs: Vec<Arc<Graph>> = c.graphs.iter().map(GraphSlot::current).collect();
    let points: Vec<(usize, &[f32], u64)> = fresh
        .iter()
        .flat_map(|(iid, p)| {
            p.vectors
                .iter()
                .enumerate()
                .filter_map(move |(a, v)| v.as_deref().map(|v| (a, v, *iid)))
        })
        .collect();
    Graph::insert_each(&points, |a| &graphs[a]);
}

/// Open sled, waiting up to 3 s for its file lock: a store dropped an instant
/// ago releases the lock only when sled's background flusher thread exits on
/// its next tick, so an immediate reopen in the same process would fail.
/// Another live process holding the store still gets the lock error.
fn open_sled(path: &Path, cache_capacity_bytes: u64) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .open()
        {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return Ok(other?),
        }
    }
}

impl Drop for LocalStore {
    fn drop(&mut self) {
        self.wait_for_compactions();
        // Best effort: a dump saves the next open a replay; sled stays the source of truth.
        let cats: Vec<_> = read(&self.catalogues).values().cloned().collect();
        for c in cats {
            let mut w = lock(&c.writer);
            if w.inserts_since_dump > 0 {
                let _ = recovery::dump_graphs(&c, &mut w, &self.db);
            }
        }
        let _ = self.db.flush();
    }
}

impl CatalogueStore for LocalStore {
    fn create_catalogue(&self, name: &str, schema: &CatalogueSchema) -> Result<()> {
        validate::catalogue_name(name)?;
        schema.validate()?;
        let _admin = lock(&self.admin);
        if read(&self.catalogues).contains_key(name) {
            return Err(IndexError::CatalogueExists {
                catalogue: name.to_string(),
            });
        }
        let entries = self.db.open_tree(CATALOGUES_TREE)?;
        let id = match self.db.get(NEXT_CATALOGUE_ID)? {
            Some(b) => records::decode_u64("next catalogue id", &b)?,
            None => 0,
        };
        self.db
            .insert(NEXT_CATALOGUE_ID, &records::encode_u64(id + 1))?;
        let entry = CatalogueEntry {
            id,
            schema: schema.clone(),
        };
        let bytes = serde_json::to_vec(&entry)
            .map_err(|e| records::corrupt("catalogue entry", e.to_string()))?;
        // Start from empty trees even if a crash interrupted an earlier drop of this id.
        self.db.drop_tree(recovery::tree_name(id))?;
        self.db.drop_tree(recovery::thumbnail_tree_name(id))?;
        entries.insert(name.as_bytes(), bytes)?;
        self.db.flush()?;
        let (cat, _) =
            recovery::open_catalogue(&self.db, &self.dir, name, id, schema.clone(), &self.options)?;
        write(&self.catalogues).insert(name.to_string(), Arc::new(cat));
        Ok(())
    }

    fn drop_catalogue(&self, name: &str) -> Result<()> {
        let _admin = lock(&self.admin);
        let c = self.catalogue(name)?;
        let _w = lock(&c.writer);
        c.dropped.store(true, Ordering::Release);
        let entries = self.db.open_tree(CATALOGUES_TREE)?;
        entries.remove(name.as_bytes())?;
        self.db.flush()?;
        write(&self.catalogues).remove(name);
        self.db.drop_tree(c.tree.name())?;
        self.db.drop_tree(c.thumbnails.name())?;
        self.db.flush()?;
        if c.dump_dir.exists() {
            std::fs::remove_dir_all(&c.dump_dir).map_err(|e| IndexError::io(&c.dump_dir, e))?;
        }
        Ok(())
    }

    fn list_catalogues(&self) -> Result<Vec<CatalogueInfo>> {
        let cats: Vec<_> = read(&self.catalogues).values().cloned().collect();
        Ok(cats
            .iter()
            .map(|c| {
                let live = read(&c.live);
                CatalogueInfo {
                    name: c.name.clone(),
                    schema: c.schema.clone(),
                    items: live.items.len() as u64,
                    attribute_counts: c
                        .schema
                        .attributes
                        .iter()
                        .cloned()
                        .zip(live.counts.iter().copied())
                        .collect(),
                }
            })
            .collect())
    }

    fn schema(&self, catalogue: &str) -> Result<CatalogueSchema> {
        Ok(self.catalogue(catalogue)?.schema.clone())
    }

    fn alter_catalogue(
        &self,
        catalogue: &str,
        changes: &[SchemaChange],
    ) -> Result<CatalogueSchema> {
        let _admin = lock(&self.admin);
        let c = self.catalogue(catalogue)?;
        let (schema, origin) = c.schema.altered(catalogue, changes)?;
        let mut w = lock(&c.writer);
        let next = self.alter_locked(&c, &mut w, schema.clone(), &origin)?;
        // Publish before the old catalogue's writers are let go: they find it replaced and
        // retry on this one. Compactions of the old one see it replaced and stop.
        write(&self.catalogues).insert(catalogue.to_string(), Arc::new(next));
        c.replaced.store(true, Ordering::Release);
        Ok(schema)
    }

    fn fill_attribute(
        &self,
        catalogue: &str,
        attribute: &str,
        vectors: &[(ItemId, Vec<f32>)],
    ) -> Result<WriteReceipt> {
        let c = self.catalogue(catalogue)?;
        let (a, vectors) = validate::fill(catalogue, &c.schema, attribute, vectors)?;
        let mut w = lock(&c.writer);
        if c.replaced.load(Ordering::Acquire) {
            drop(w);
            return self.fill_attribute(catalogue, attribute, &vectors);
        }
        if c.dropped.load(Ordering::Acquire) {
            return Err(IndexError::CatalogueNotFound {
                catalogue: catalogue.to_string(),
            });
        }
        let dim = c.schema.dimension;
        let mut batch = sled::Batch::default();
        let mut filled: Vec<(u64, u64, &[f32], ItemId)> = Vec::new();
        for (id, v) in &vectors {
            let key = records::item_key(id.as_str());
            let Some(bytes) = c.tree.get(&key)? else {
                continue;
            };
            let mut r = ItemRecord::decode(&key, &bytes)?;
            if r.mask & (1 << a) != 0 {
                continue;
            }
            let vkey = records::vector_key(r.iid);
            let old = c
                .tree
                .get(vkey)?
                .ok_or_else(|| records::corrupt(&format!("item {id}"), "vectors missing"))?;
            let old = VectorRecord::decode(r.iid, &old, dim)?;
            r.mask |= 1 << a;
            let all: Vec<&[f32]> = (0..c.schema.attributes.len())
                .filter_map(|b| {
                    if b == a {
                        Some(v.as_slice())
                    } else {
                        old.get(b, dim)
                    }
                })
                .collect();
            batch.insert(&vkey, VectorRecord::encode(r.mask, &all));
            batch.insert(key, r.encode());
            filled.push((r.iid, r.mask, v.as_slice(), id.clone()));
        }
        if filled.is_empty() {
            return Ok(WriteReceipt {
                sequence: w.sequence,
                affected: 0,
                durable: true,
            });
        }
        // The attribute's dump no longer holds every point below its watermark: the next
        // open rebuilds this graph (only this one) from sled.
        batch.remove(records::dump_key(a));
        let sequence = w.sequence + 1;
        batch.insert(records::META_SEQ, &records::encode_u64(sequence));
        c.tree.apply_batch(batch)?;
        w.sequence = sequence;
        *lock(&c.graphs[a].dumped_sequence) = None;
        let durable = self.durable_flush()?;
        let points: Vec<(&[f32], u64)> = filled.iter().map(|(iid, _, v, _)| (*v, *iid)).collect();
        c.graphs[a].current().insert(&points);
        {
            let mut live = write(&c.live);
            for (iid, mask, _, _) in &filled {
                live.add_attribute(*iid, a, *mask);
            }
        }
        Ok(WriteReceipt {
            sequence,
            affected: filled.len(),
            durable,
        })
    }

    fn upsert(&self, catalogue: &str, items: &[Item]) -> Result<WriteReceipt> {
        let c = self.catalogue(catalogue)?;
        let prepared = self.prepare(&c, items)?;
        let mut w = lock(&c.writer);
        if c.replaced.load(Ordering::Acquire) {
            // Altered while this batch waited: check it against the new schema.
            drop((w, prepared));
            return self.upsert(catalogue, items);
        }
        if c.dropped.load(Ordering::Acquire) {
            return Err(IndexError::CatalogueNotFound {
                catalogue: catalogue.to_string(),
            });
        }
        // Later duplicates of an id in the batch win; earlier ones are never written.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, p) in prepared.iter().enumerate() {
            last.insert(p.id.as_str(), i);
        }
        let mut fresh: Vec<(u64, &PreparedItem)> = Vec::new();
        let mut next_iid = w.next_iid;
        for (i, p) in prepared.iter().enumerate() {
            if last[p.id.as_str()] == i {
                fresh.push((next_iid, p));
                next_iid += 1;
            }
        }
        let sequence = w.sequence + 1;
        // The records (with the lookups of the items they replace) are written while the
        // graphs take the new points: the write is one thread's work and the inserts fill the
        // others. Graphs first, then publish: a search that meets a new id in a graph before
        // it is live simply skips it. If the write fails, the new points are never published:
        // like deleted points, searches skip them and compaction drops them. Their internal
        // ids are never handed out again, and a dump taken meanwhile records a watermark past
        // the stored one, so the next open rebuilds from the records rather than trust it.
        let (written, ()) = rayon::join(
            || write_records(&c, &fresh, sequence, next_iid),
            || insert_fresh(&c, &fresh),
        );
        w.next_iid = next_iid;
        let replaced = written?;
        w.sequence = sequence;
        let flushed = self.durable_flush();
        {
            let mut live = write(&c.live);
            for iid in &replaced {
                live.remove(*iid);
            }
            for (iid, p) in &fresh {
                live.insert(*iid, p.id.clone(), p.mask, &p.payload);
            }
        }
        w.inserts_since_dump += fresh.len() as u64;
        if self.options.dump_every_inserts > 0
            && w.inserts_since_dump >= self.options.dump_every_inserts
        {
            recovery::dump_graphs(&c, &mut w, &self.db)?;
        }
        drop(w);
        if !replaced.is_empty() {
            self.maybe_compact(&c);
        }
        Ok(WriteReceipt {
            sequence,
            affected: fresh.len(),
            durable: flushed?,
        })
    }

    fn delete(&self, catalogue: &str, ids: &[ItemId]) -> Result<WriteReceipt> {
        let c = self.catalogue(catalogue)?;
        if ids.len() > MAX_BATCH_ITEMS {
            return Err(IndexError::BatchTooLarge {
                got: ids.len(),
                limit: MAX_BATCH_ITEMS,
            });
        }
        let mut w = lock(&c.writer);
        if c.replaced.load(Ordering::Acquire) {
            drop(w);
            return self.delete(catalogue, ids);
        }
        let mut batch = sled::Batch::default();
        let mut thumbnails = sled::Batch::default();
        let mut thumbnail_writes = 0usize;
        let mut removed = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let key = records::item_key(id.as_str());
            if let Some(old) = c.tree.get(&key)? {
                let old = ItemRecord::decode(&key, &old)?;
                batch.remove(key);
                batch.remove(&records::vector_key(old.iid));
                removed.push(old.iid);
                if c.thumbnails.contains_key(id.as_str())? {
                    thumbnails.remove(id.as_str().as_bytes());
                    thumbnail_writes += 1;
                }
            }
        }
        if removed.is_empty() {
            return Ok(WriteReceipt {
                sequence: w.sequence,
                affected: 0,
                durable: true,
            });
        }
        let sequence = w.sequence + 1;
        batch.insert(records::META_SEQ, &records::encode_u64(sequence));
        apply_writes(&c, batch, (thumbnail_writes > 0).then_some(thumbnails))?;
        w.sequence = sequence;
        let durable = self.durable_flush()?;
        {
            let mut live = write(&c.live);
            for iid in &removed {
                live.remove(*iid);
            }
        }
        drop(w);
        self.maybe_compact(&c);
        Ok(WriteReceipt {
            sequence,
            affected: removed.len(),
            durable,
        })
    }

    fn get(&self, catalogue: &str, id: &ItemId, with_vectors: bool) -> Result<Option<StoredItem>> {
        let c = self.catalogue(catalogue)?;
        let key = records::item_key(id.as_str());
        let Some(bytes) = c.tree.get(&key)? else {
            return Ok(None);
        };
        let record = ItemRecord::decode(&key, &bytes)?;
        Ok(Some(stored_item(&c, id.clone(), record, with_vectors)?))
    }

    fn thumbnail(&self, catalogue: &str, id: &ItemId) -> Result<Option<Vec<u8>>> {
        let c = self.catalogue(catalogue)?;
        Ok(c.thumbnails.get(id.as_str())?.map(|t| t.to_vec()))
    }

    fn list(&self, catalogue: &str, after: Option<&ItemId>, limit: usize) -> Result<ItemPage> {
        let c = self.catalogue(catalogue)?;
        if limit == 0 || limit > MAX_BATCH_ITEMS {
            return Err(IndexError::InvalidRequest {
                reason: format!("list limit {limit} is outside 1..={MAX_BATCH_ITEMS}"),
            });
        }
        let start = match after {
            Some(id) => {
                let mut k = records::item_key(id.as_str());
                k.push(0);
                k
            }
            None => vec![records::ITEM_PREFIX],
        };
        let end = vec![records::ITEM_PREFIX + 1];
        let mut items = Vec::new();
        let mut more = false;
        for kv in c.tree.range(start..end) {
            let (k, v) = kv?;
            if items.len() == limit {
                more = true;
                break;
            }
            let record = ItemRecord::decode(&k, &v)?;
            let id = String::from_utf8(k[1..].to_vec())
                .ok()
                .and_then(|s| ItemId::new(s).ok())
                .ok_or_else(|| records::corrupt("item key", "not a valid item id"))?;
            items.push(stored_item(&c, id, record, false)?);
        }
        let next_cursor = if more {
            items.last().map(|i| i.id.clone())
        } else {
            None
        };
        Ok(ItemPage { items, next_cursor })
    }

    fn field_values(&self, catalogue: &str, field: &str, limit: usize) -> Result<FieldValues> {
        let c = self.catalogue(catalogue)?;
        crate::filter::check_field_values(field, limit)?;
        // The live set holds every live item's payload in memory: no sled read.
        let live = read(&c.live);
        Ok(crate::filter::tally_field_values(
            live.items.values().map(|meta| &meta.payload),
            field,
            limit,
        ))
    }

    fn count(&self, catalogue: &str) -> Result<u64> {
        let c = self.catalogue(catalogue)?;
        let n = read(&c.live).items.len() as u64;
        Ok(n)
    }

    fn search(&self, catalogue: &str, request: &SearchRequest) -> Result<SearchResults> {
        let c = self.catalogue(catalogue)?;
        search::search(&c, request, &self.options)
    }

    fn stats(&self, catalogue: &str) -> Result<CatalogueStats> {
        let c = self.catalogue(catalogue)?;
        let sequence = lock(&c.writer).sequence;
        let live = read(&c.live);
        let mut vector_bytes = 0;
        let attributes = c
            .schema
            .attributes
            .iter()
            .enumerate()
            .map(|(a, name)| {
                let g = c.graphs[a].current();
                vector_bytes += g.vector_bytes(c.schema.storage);
                let points = g.len() as u64;
                AttributeStats {
                    attribute: name.clone(),
                    live: live.counts[a],
                    graph_points: points,
                    tombstones: points.saturating_sub(live.counts[a]),
                    compactions: c.graphs[a].compactions.load(Ordering::Relaxed),
                    dumped_sequence: *lock(&c.graphs[a].dumped_sequence),
                }
            })
            .collect();
        Ok(CatalogueStats {
            name: c.name.clone(),
            items: live.items.len() as u64,
            sequence,
            attributes,
            vector_bytes,
        })
    }

    fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

fn stored_item(
    c: &Catalogue,
    id: ItemId,
    record: ItemRecord,
    with_vectors: bool,
) -> Result<StoredItem> {
    let attributes = c
        .schema
        .attributes
        .iter()
        .enumerate()
        .filter(|(a, _)| record.mask & (1 << a) != 0)
        .map(|(_, n)| n.clone())
        .collect();
    let vectors = if with_vectors {
        let bytes = c
            .tree
            .get(records::vector_key(record.iid))?
            .ok_or_else(|| records::corrupt(&format!("item {id}"), "vectors missing"))?;
        let v = VectorRecord::decode(record.iid, &bytes, c.schema.dimension)?;
        Some(
            c.schema
                .attributes
                .iter()
                .enumerate()
                .filter_map(|(a, n)| {
                    v.get(a, c.schema.dimension)
                        .map(|x| (n.clone(), x.to_vec()))
                })
                .collect(),
        )
    } else {
        None
    };
    let has_thumbnail = c.thumbnails.contains_key(id.as_str())?;
    Ok(StoredItem {
        id,
        payload: record.payload,
        attributes,
        vectors,
        content_hash: record.content_hash,
        has_thumbnail,
    })
}

impl LocalStore {
    /// Applies a schema change under `c`'s writer lock: records carried over (masks and
    /// vector records rewritten only when an attribute is dropped), the entry and the
    /// records in one sled transaction, then a new in-memory catalogue sharing the kept
    /// graphs replaces `c`, which is marked replaced so that writers waiting on it retry.
    fn alter_locked(
        &self,
        c: &Catalogue,
        w: &mut WriterState,
        schema: CatalogueSchema,
        origin: &[Option<usize>],
    ) -> Result<Catalogue> {
        let dim = c.schema.dimension;
        let old_len = c.schema.attributes.len();
        let keeps_positions = origin
            .iter()
            .enumerate()
            .all(|(j, o)| o.is_none_or(|i| i == j))
            && origin.iter().flatten().count() == old_len;
        let mut batch = sled::Batch::default();
        if !keeps_positions {
            for kv in c.tree.scan_prefix([records::ITEM_PREFIX]) {
                let (k, v) = kv?;
                let mut r = ItemRecord::decode(&k, &v)?;
                let key = records::vector_key(r.iid);
                let bytes = c.tree.get(key)?.ok_or_else(|| {
                    records::corrupt(&format!("internal id {}", r.iid), "vectors missing")
                })?;
                let old = VectorRecord::decode(r.iid, &bytes, dim)?;
                let kept: Vec<&[f32]> = origin
                    .iter()
                    .filter_map(|o| o.and_then(|i| old.get(i, dim)))
                    .collect();
                r.mask = remap_mask(r.mask, origin);
                batch.insert(&key, VectorRecord::encode(r.mask, &kept));
                batch.insert(k, r.encode());
            }
        }
        // Each kept graph's dump record follows its attribute; an added attribute starts
        // without one.
        for (j, o) in origin.iter().enumerate() {
            match o
                .map(|i| c.tree.get(records::dump_key(i)))
                .transpose()?
                .flatten()
            {
                Some(dump) => batch.insert(records::dump_key(j), dump),
                None => batch.remove(records::dump_key(j)),
            }
        }
        for j in origin.len()..old_len {
            batch.remove(records::dump_key(j));
        }
        let sequence = w.sequence + 1;
        batch.insert(records::META_SEQ, &records::encode_u64(sequence));
        let entry = serde_json::to_vec(&CatalogueEntry {
            id: c.id,
            schema: schema.clone(),
        })
        .map_err(|e| records::corrupt("catalogue entry", e.to_string()))?;
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        let entries = self.db.open_tree(CATALOGUES_TREE)?;
        (&entries, &c.tree)
            .transaction(|(entries, tree)| {
                tree.apply_batch(&batch)?;
                entries.insert(c.name.as_bytes(), entry.as_slice())?;
                Ok::<(), ConflictableTransactionError<std::convert::Infallible>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(e) => IndexError::Storage(e),
                TransactionError::Abort(never) => match never {},
            })?;
        self.db.flush()?;
        w.sequence = sequence;

        let graphs = origin
            .iter()
            .map(|o| match o {
                Some(i) => {
                    GraphSlot::shared(c.graphs[*i].current(), *lock(&c.graphs[*i].dumped_sequence))
                }
                None => GraphSlot::new(Graph::new(&schema), None),
            })
            .collect();
        let mut live = LiveSet::new(schema.attributes.len());
        for (iid, meta) in read(&c.live).items.iter() {
            let meta = if keeps_positions {
                Arc::clone(meta)
            } else {
                Arc::new(ItemMeta {
                    id: meta.id.clone(),
                    mask: remap_mask(meta.mask, origin),
                    payload: meta.payload.clone(),
                })
            };
            live.adopt(*iid, meta);
        }
        Ok(Catalogue {
            id: c.id,
            name: c.name.clone(),
            schema,
            tree: c.tree.clone(),
            thumbnails: c.thumbnails.clone(),
            dump_dir: c.dump_dir.clone(),
            writer: Mutex::new(WriterState {
                sequence,
                next_iid: w.next_iid,
                inserts_since_dump: w.inserts_since_dump,
            }),
            live: RwLock::new(live),
            graphs,
            dropped: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
        })
    }
}

/// A mask over the old attribute positions as a mask over the new ones (`origin[j]` is
/// the old position of new attribute `j`).
fn remap_mask(mask: u64, origin: &[Option<usize>]) -> u64 {
    origin
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_some_and(|i| mask & (1 << i) != 0))
        .fold(0, |m, (j, _)| m | (1 << j))
}
