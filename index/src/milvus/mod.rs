//! [`MilvusStore`]: the [`CatalogueStore`] on a Milvus server or cluster (feature `milvus`).
//!
//! Milvus holds everything (`layout.rs` names the collections), so any number of asen
//! processes on one Milvus give the same answers. `client.rs` is the only file that knows the
//! SDK; `expr.rs` turns payload filters into Milvus expressions; `search.rs` resolves queries
//! and does in asen what Milvus does not (exact weighted rescoring, recommendation, group-by,
//! thresholds). Every read is Strong, so a read sees every write acknowledged before it.

mod client;
mod expr;
mod layout;
mod search;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::error::{IndexError, Result};
use crate::schema::{CatalogueSchema, SchemaChange};
use crate::store::CatalogueStore;
use crate::types::{
    AttributeStats, CatalogueInfo, CatalogueStats, Item, ItemId, ItemPage, SearchRequest,
    SearchResults, StoredItem, WriteReceipt, MAX_BATCH_ITEMS,
};
use crate::validate;
use client::{Client, Endpoint, Row};
use layout::{Meta, Names, Placement, REGISTRY};

/// Most rows one Milvus query or search returns (`offset + limit`).
pub(crate) const MILVUS_MAX_LIMIT: usize = 16_384;

/// How to reach Milvus and when a write is acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct MilvusOptions {
    /// `http://host:port` or `https://host:port` (gRPC).
    pub uri: String,
    /// TLS (the URL's `milvus+tls://` scheme).
    pub tls: bool,
    /// API key or `user:password` (the URL's `token`).
    pub token: Option<String>,
    /// Database (the URL's `db`; Milvus's `default` when absent).
    pub database: Option<String>,
    /// Per-call timeout (the URL's `timeout_ms`, default 30 s).
    pub timeout: Duration,
    /// Flush after every write, so the receipt says `durable` (the URL's `flush=true`). Without
    /// it a write is acknowledged once it is in Milvus's write-ahead log (see `docs/milvus.md`).
    pub flush_writes: bool,
}

impl MilvusOptions {
    /// Parses `milvus://HOST:PORT[?db=NAME&token=KEY&timeout_ms=N&flush=true]`, or
    /// `milvus+tls://...` for TLS. Query values are percent-decoded.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |reason: &str| IndexError::InvalidRequest {
            reason: format!("milvus url {:?}: {reason}", redact(url)),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("milvus+tls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("milvus://") {
            (false, r)
        } else {
            return Err(bad("expected milvus://HOST:PORT or milvus+tls://HOST:PORT"));
        };
        let (host, query) = rest.split_once('?').unwrap_or((rest, ""));
        let host = host.trim_end_matches('/');
        if host.is_empty() || host.contains('/') || host.contains('@') {
            return Err(bad("expected HOST:PORT after the scheme"));
        }
        let host = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:19530")
        };
        let mut options = MilvusOptions {
            uri: format!("{}://{host}", if tls { "https" } else { "http" }),
            tls,
            token: None,
            database: None,
            timeout: Duration::from_secs(30),
            flush_writes: false,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad("bad percent-encoding"))?;
            match k {
                "db" => options.database = Some(v),
                "token" => options.token = Some(v),
                "timeout_ms" => {
                    let ms: u64 = v.parse().map_err(|_| bad("timeout_ms is not a number"))?;
                    options.timeout = Duration::from_millis(ms.max(1));
                }
                "flush" => {
                    options.flush_writes = v.parse().map_err(|_| bad("flush is not a boolean"))?
                }
                other => return Err(bad(&format!("unknown parameter {other:?}"))),
            }
        }
        Ok(options)
    }
}

/// The URL without its token, for messages and logs.
pub fn redact(url: &str) -> String {
    match url.split_once('?') {
        None => url.to_string(),
        Some((base, query)) => {
            let q: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some(("token", _)) => "token=***".to_string(),
                    _ => p.to_string(),
                })
                .collect();
            format!("{base}?{}", q.join("&"))
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Catalogues in Milvus collections; see the module docs and `docs/milvus.md`.
pub struct MilvusStore {
    client: Client,
    options: MilvusOptions,
    /// The newest write sequence (Milvus timestamp) this process acknowledged, per catalogue.
    sequences: Mutex<HashMap<String, u64>>,
    tokens: AtomicU64,
    /// Upserts and deletes hold it shared; alterations and fills, which rewrite item rows
    /// they read, hold it alone, so that they never put back an item row an upsert of this
    /// process replaced meanwhile. (Between processes nothing orders them: see
    /// `docs/milvus.md`.)
    writes: RwLock<()>,
}

impl std::fmt::Debug for MilvusStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilvusStore")
            .field("uri", &self.options.uri)
            .field("database", &self.options.database)
            .finish_non_exhaustive()
    }
}

/// What a catalogue lookup gives: its collections, schema and where its attributes lie.
struct Catalogue {
    name: String,
    names: Names,
    schema: CatalogueSchema,
    placement: Placement,
}

impl Catalogue {
    fn from_row(name: &str, row: &Row) -> Result<Self> {
        let (schema, placement) = layout::schema_of(row)?;
        Ok(Catalogue {
            name: name.to_string(),
            names: Names::new(name),
            schema,
            placement,
        })
    }

    /// The collection of attribute `i` (its position in the schema).
    fn collection(&self, i: usize) -> String {
        self.names.attribute(self.placement.slots[i].collection)
    }

    /// The key item rows name attribute `i` by.
    fn key(&self, i: usize) -> &str {
        &self.placement.slots[i].key
    }

    /// Every collection of the catalogue, those of retired attributes included.
    fn collections(&self) -> Vec<String> {
        let mut v = vec![self.names.items.clone(), self.names.thumbnails.clone()];
        let slots = self.placement.slots.iter().chain(&self.placement.retired);
        v.extend(slots.map(|s| self.names.attribute(s.collection)));
        v
    }

    /// The names, in schema order, of the attributes an item row's keys name.
    fn attributes_of(&self, meta: &Meta) -> Vec<String> {
        (0..self.schema.attributes.len())
            .filter(|&i| meta.attributes.iter().any(|k| k == self.key(i)))
            .map(|i| self.schema.attributes[i].clone())
            .collect()
    }
}

impl MilvusStore {
    /// Connects and creates the catalogue registry collection if it is missing.
    pub fn open(options: MilvusOptions) -> Result<Self> {
        let client = Client::connect(&Endpoint {
            uri: options.uri.clone(),
            tls: options.tls,
            token: options.token.clone(),
            database: options.database.clone(),
            timeout: options.timeout,
        })?;
        if !client.has_collection(REGISTRY)? {
            // Another process may create it at the same moment: only a failure that leaves no
            // registry is one.
            if let Err(e) = client.create_collection(REGISTRY, &layout::registry_fields()) {
                if !client.has_collection(REGISTRY)? {
                    return Err(e);
                }
            }
        }
        Ok(MilvusStore {
            client,
            options,
            sequences: Mutex::new(HashMap::new()),
            tokens: AtomicU64::new(0),
            writes: RwLock::new(()),
        })
    }

    /// Connects to the server a `milvus://` URL names; see [`MilvusOptions::from_url`].
    pub fn open_url(url: &str) -> Result<Self> {
        Self::open(MilvusOptions::from_url(url)?)
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &MilvusOptions {
        &self.options
    }

    fn catalogue(&self, name: &str) -> Result<Catalogue> {
        let rows = self
            .client
            .get(REGISTRY, "name", &[name.to_string()], &["name", "schema"])?;
        let row = rows.first().ok_or_else(|| IndexError::CatalogueNotFound {
            catalogue: name.chars().take(80).collect(),
        })?;
        Catalogue::from_row(name, row)
    }

    /// Every catalogue of the registry.
    fn catalogues(&self) -> Result<Vec<Catalogue>> {
        let rows = self.client.query(
            REGISTRY,
            "name != \"\"",
            &["name", "schema"],
            MILVUS_MAX_LIMIT,
        )?;
        rows.iter()
            .map(|row| {
                let name = row.get("name").and_then(Value::as_str).unwrap_or_default();
                Catalogue::from_row(name, row)
            })
            .collect()
    }

    /// Runs a read on the catalogue; if it fails while an alteration replaced the collections
    /// it read (a dropped attribute's collection goes after the registry row changed), runs
    /// it once more on the catalogue as it is now.
    fn reading<T>(&self, name: &str, read: impl Fn(&Catalogue) -> Result<T>) -> Result<T> {
        let c = self.catalogue(name)?;
        match read(&c) {
            Err(e @ IndexError::Backend { .. }) => {
                let now = self.catalogue(name)?;
                if now.placement == c.placement {
                    return Err(e);
                }
                read(&now)
            }
            other => other,
        }
    }

    fn lock_writes(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.writes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_rewrites(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.writes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn acknowledge(&self, catalogue: &str, timestamp: u64) -> u64 {
        let mut s = self.sequences.lock().unwrap_or_else(|p| p.into_inner());
        let last = s.entry(catalogue.to_string()).or_insert(0);
        *last = timestamp.max(*last + 1);
        *last
    }

    fn receipt(&self, c: &Catalogue, timestamp: u64, affected: usize) -> Result<WriteReceipt> {
        if self.options.flush_writes {
            self.client.flush(&c.collections())?;
        }
        Ok(WriteReceipt {
            sequence: self.acknowledge(&c.name, timestamp),
            affected,
            durable: self.options.flush_writes,
        })
    }

    fn token(&self) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:x}-{:x}-{n:x}", std::process::id())
    }

    /// Item rows by id.
    fn item_rows(&self, c: &Catalogue, ids: &[ItemId]) -> Result<Vec<Row>> {
        let keys: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        self.client
            .get(&c.names.items, "id", &keys, &["id", "payload", "meta"])
    }

    /// Drops the collections of the catalogue's retired attributes and their keys from every
    /// item row (under the rewrite lock).
    fn remove_retired(&self, c: &Catalogue) -> Result<()> {
        let retired = &c.placement.retired;
        for slot in retired {
            self.client
                .drop_collection(&c.names.attribute(slot.collection))?;
        }
        // Keys of live slots are never retired ones, so only stale keys go.
        let stale = |k: &String| retired.iter().any(|s| s.key == *k);
        let mut after: Option<ItemId> = None;
        loop {
            let page = search::ids_after(self, c, after.as_ref(), MAX_BATCH_ITEMS)?;
            let Some(last) = page.last().cloned() else {
                return Ok(());
            };
            let mut rewritten = Vec::new();
            for row in self.item_rows(c, &page)? {
                let mut meta = layout::meta_of(&row)?;
                if meta.attributes.iter().any(stale) {
                    meta.attributes.retain(|k| !stale(k));
                    let id = layout::id_of(&row)?;
                    rewritten.push(layout::item_row(&id, &layout::payload_of(&row), &meta)?);
                }
            }
            self.client.upsert(&c.names.items, rewritten)?;
            after = Some(last);
        }
    }

    fn stored_item(&self, c: &Catalogue, row: &Row, with_vectors: bool) -> Result<StoredItem> {
        let id = layout::id_of(row)?;
        let meta = layout::meta_of(row)?;
        let attributes = c.attributes_of(&meta);
        let vectors = if with_vectors {
            Some(search::vectors_of(self, c, &id, &attributes)?)
        } else {
            None
        };
        Ok(StoredItem {
            payload: layout::payload_of(row),
            attributes,
            vectors,
            content_hash: meta.content_hash,
            has_thumbnail: meta.thumbnail.is_some(),
            id,
        })
    }
}

impl CatalogueStore for MilvusStore {
    fn create_catalogue(&self, name: &str, schema: &CatalogueSchema) -> Result<()> {
        validate::catalogue_name(name)?;
        schema.validate()?;
        match self.catalogue(name) {
            Ok(_) => {
                return Err(IndexError::CatalogueExists {
                    catalogue: name.to_string(),
                })
            }
            Err(IndexError::CatalogueNotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let names = Names::new(name);
        // Leftovers of a create or drop that stopped half way belong to no catalogue. (Not
        // found by listing collections: Milvus Lite's reply to that is malformed for the SDK.)
        self.client.drop_collection(&names.items)?;
        self.client.drop_collection(&names.thumbnails)?;
        // Attribute collections are numbered, with gaps where attributes were dropped: every
        // number the new schema uses, and those after it while they exist.
        let mut a = 0;
        while a < schema.attributes.len() || self.client.has_collection(&names.attribute(a))? {
            self.client.drop_collection(&names.attribute(a))?;
            a += 1;
        }
        for a in 0..schema.attributes.len() {
            self.client
                .create_collection(&names.attribute(a), &layout::attribute_fields(schema))?;
        }
        self.client
            .create_collection(&names.thumbnails, &layout::thumbnail_fields())?;
        self.client
            .create_collection(&names.items, &layout::item_fields())?;
        // The registry row is the commit point: the catalogue exists from here on.
        self.client
            .upsert(REGISTRY, vec![layout::registry_row(name, schema, None)?])?;
        Ok(())
    }

    fn drop_catalogue(&self, name: &str) -> Result<()> {
        let c = self.catalogue(name)?;
        self.client
            .delete(REGISTRY, &expr::key_in("name", [name]))?;
        for coll in c.collections() {
            self.client.drop_collection(&coll)?;
        }
        self.sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    fn list_catalogues(&self) -> Result<Vec<CatalogueInfo>> {
        let mut out = Vec::new();
        for c in self.catalogues()? {
            let items = self.client.count(&c.names.items, "")?;
            let mut attribute_counts = std::collections::BTreeMap::new();
            for (i, a) in c.schema.attributes.iter().enumerate() {
                attribute_counts.insert(a.clone(), self.client.count(&c.collection(i), "")?);
            }
            out.push(CatalogueInfo {
                name: c.name,
                schema: c.schema,
                items,
                attribute_counts,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn schema(&self, catalogue: &str) -> Result<CatalogueSchema> {
        Ok(self.catalogue(catalogue)?.schema)
    }

    fn alter_catalogue(
        &self,
        catalogue: &str,
        changes: &[SchemaChange],
    ) -> Result<CatalogueSchema> {
        let _rewrites = self.lock_rewrites();
        let c = self.catalogue(catalogue)?;
        // Every check comes before the first write: on error the catalogue is as it was.
        let (schema, origin) = c.schema.altered(catalogue, changes)?;
        let placement = c.placement.altered(&origin);
        let row = layout::registry_row(catalogue, &schema, Some(&placement))?;
        // 1. A collection for each added attribute, under a number no attribute of the
        //    catalogue had: nothing refers to it yet. (One that exists is a leftover of an
        //    earlier catalogue of this name.)
        let added: Vec<String> = origin
            .iter()
            .enumerate()
            .filter(|(_, o)| o.is_none())
            .map(|(j, _)| c.names.attribute(placement.slots[j].collection))
            .collect();
        let created = added.iter().try_for_each(|coll| {
            self.client.drop_collection(coll)?;
            self.client
                .create_collection(coll, &layout::attribute_fields(&schema))
        });
        // 2. The registry row: the commit point. Readers switch to the new schema here.
        let committed = created.and_then(|()| self.client.upsert(REGISTRY, vec![row]));
        if let Err(e) = committed {
            for coll in &added {
                let _ = self.client.drop_collection(coll);
            }
            return Err(e);
        }
        let next = Catalogue {
            name: c.name.clone(),
            names: c.names.clone(),
            schema: schema.clone(),
            placement,
        };
        // 3. Dropped attributes (and those an earlier alteration could not finish removing):
        //    their collections and their keys in item rows go. The alteration is done
        //    whatever happens here; what is left stays retired, ignored by readers, and the
        //    next alteration removes it.
        if !next.placement.retired.is_empty() && self.remove_retired(&next).is_ok() {
            let mut clean = next.placement.clone();
            clean.retired.clear();
            let row = layout::registry_row(catalogue, &schema, Some(&clean))?;
            // Not finishing this leaves the slots retired: harmless, and retried.
            let _ = self.client.upsert(REGISTRY, vec![row]);
        }
        if self.options.flush_writes {
            let mut collections = vec![REGISTRY.to_string()];
            collections.extend(next.collections());
            self.client.flush(&collections)?;
        }
        Ok(schema)
    }

    fn fill_attribute(
        &self,
        catalogue: &str,
        attribute: &str,
        vectors: &[(ItemId, Vec<f32>)],
    ) -> Result<WriteReceipt> {
        let _rewrites = self.lock_rewrites();
        let c = self.catalogue(catalogue)?;
        let (a, vectors) = validate::fill(catalogue, &c.schema, attribute, vectors)?;
        let ids: Vec<ItemId> = vectors.iter().map(|(id, _)| id.clone()).collect();
        let key = c.key(a).to_string();
        let mut attribute_rows = Vec::new();
        let mut item_rows = Vec::new();
        for row in self.item_rows(&c, &ids)? {
            let id = layout::id_of(&row)?;
            let mut meta = layout::meta_of(&row)?;
            if meta.attributes.contains(&key) {
                continue;
            }
            let Some((_, v)) = vectors.iter().find(|(i, _)| *i == id) else {
                continue;
            };
            let payload = layout::payload_of(&row);
            attribute_rows.push(layout::attribute_row(&id, &payload, v));
            // The keys in schema order; any a dropped attribute left go too.
            meta.attributes = (0..c.schema.attributes.len())
                .map(|b| c.key(b).to_string())
                .filter(|k| *k == key || meta.attributes.contains(k))
                .collect();
            item_rows.push(layout::item_row(&id, &payload, &meta)?);
        }
        if item_rows.is_empty() {
            return self.receipt(&c, 0, 0);
        }
        let affected = item_rows.len();
        // The vectors first; the item rows, which say the items have them, are the commit
        // point, as in an upsert.
        self.client.upsert(&c.collection(a), attribute_rows)?;
        let timestamp = self.client.upsert(&c.names.items, item_rows)?;
        self.receipt(&c, timestamp, affected)
    }

    fn upsert(&self, catalogue: &str, items: &[Item]) -> Result<WriteReceipt> {
        let _writes = self.lock_writes();
        let c = self.catalogue(catalogue)?;
        validate::batch_len(items.len())?;
        let vectors: Vec<Vec<Option<Vec<f32>>>> = items
            .iter()
            .map(|i| validate::item(&c.name, &c.schema, i))
            .collect::<Result<_>>()?;
        // Later duplicates of an id in the batch win.
        let mut last: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            last.insert(item.id.as_str(), i);
        }
        let mut order: Vec<usize> = last.values().copied().collect();
        order.sort_unstable();

        // 1. Thumbnail chunks under fresh tokens; nothing refers to them yet.
        let mut chunk_rows = Vec::new();
        let mut metas = Vec::with_capacity(order.len());
        for &i in &order {
            let item = &items[i];
            let thumbnail = item.thumbnail.as_deref().map(|t| {
                let token = self.token();
                chunk_rows.extend(layout::thumbnail_rows(&item.id, &token, t));
                (token, layout::chunks_count(t.len()))
            });
            metas.push(Meta {
                attributes: (0..c.schema.attributes.len())
                    .filter(|&a| vectors[i][a].is_some())
                    .map(|a| c.key(a).to_string())
                    .collect(),
                content_hash: item.content_hash.clone(),
                thumbnail,
            });
        }
        for rows in chunk_rows.chunks(64) {
            self.client.upsert(&c.names.thumbnails, rows.to_vec())?;
        }
        // 2. Vectors, one collection per attribute; an attribute the item no longer has goes.
        for (a, _) in c.schema.attributes.iter().enumerate() {
            let mut rows = Vec::new();
            let mut gone = Vec::new();
            for &i in &order {
                let item = &items[i];
                match &vectors[i][a] {
                    Some(v) => rows.push(layout::attribute_row(&item.id, &item.payload, v)),
                    None => gone.push(item.id.as_str()),
                }
            }
            let coll = c.collection(a);
            self.client.upsert(&coll, rows)?;
            if !gone.is_empty() {
                self.client.delete(&coll, &expr::key_in("id", gone))?;
            }
        }
        // 3. The item rows: the commit point of get, list and count.
        let rows: Vec<Row> = order
            .iter()
            .zip(&metas)
            .map(|(&i, m)| layout::item_row(&items[i].id, &items[i].payload, m))
            .collect::<Result<_>>()?;
        let timestamp = self.client.upsert(&c.names.items, rows)?;
        // 4. Chunks of replaced thumbnails.
        let ids: Vec<&str> = order.iter().map(|&i| items[i].id.as_str()).collect();
        let keep: Vec<String> = metas
            .iter()
            .filter_map(|m| m.thumbnail.as_ref())
            .flat_map(|(t, n)| (0..*n).map(move |k| layout::chunk_key(t, k)))
            .collect();
        let mut stale = expr::key_in("item", &ids);
        if !keep.is_empty() {
            stale = format!("{stale} and not ({})", expr::key_in("key", &keep));
        }
        self.client.delete(&c.names.thumbnails, &stale)?;
        self.receipt(&c, timestamp, order.len())
    }

    fn delete(&self, catalogue: &str, ids: &[ItemId]) -> Result<WriteReceipt> {
        let _writes = self.lock_writes();
        let c = self.catalogue(catalogue)?;
        if ids.len() > MAX_BATCH_ITEMS {
            return Err(IndexError::BatchTooLarge {
                got: ids.len(),
                limit: MAX_BATCH_ITEMS,
            });
        }
        let present = self.item_rows(&c, ids)?;
        if present.is_empty() {
            return self.receipt(&c, 0, 0);
        }
        let keys: Vec<String> = present
            .iter()
            .map(layout::id_of)
            .map(|r| r.map(|i| i.to_string()))
            .collect::<Result<_>>()?;
        let timestamp = self
            .client
            .delete(&c.names.items, &expr::key_in("id", &keys))?;
        for a in 0..c.schema.attributes.len() {
            self.client
                .delete(&c.collection(a), &expr::key_in("id", &keys))?;
        }
        self.client
            .delete(&c.names.thumbnails, &expr::key_in("item", &keys))?;
        self.receipt(&c, timestamp, keys.len())
    }

    fn get(&self, catalogue: &str, id: &ItemId, with_vectors: bool) -> Result<Option<StoredItem>> {
        self.reading(catalogue, |c| {
            let rows = self.item_rows(c, std::slice::from_ref(id))?;
            rows.first()
                .map(|r| self.stored_item(c, r, with_vectors))
                .transpose()
        })
    }

    fn thumbnail(&self, catalogue: &str, id: &ItemId) -> Result<Option<Vec<u8>>> {
        let c = self.catalogue(catalogue)?;
        let rows = self.item_rows(&c, std::slice::from_ref(id))?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let Some((token, count)) = layout::meta_of(row)?.thumbnail else {
            return Ok(None);
        };
        let keys: Vec<String> = (0..count).map(|k| layout::chunk_key(&token, k)).collect();
        let chunks = self
            .client
            .get(&c.names.thumbnails, "key", &keys, &["key", "data"])?;
        layout::thumbnail_bytes(&token, count, &chunks).map(Some)
    }

    fn list(&self, catalogue: &str, after: Option<&ItemId>, limit: usize) -> Result<ItemPage> {
        if limit == 0 || limit > MAX_BATCH_ITEMS {
            return Err(IndexError::InvalidRequest {
                reason: format!("list limit {limit} is outside 1..={MAX_BATCH_ITEMS}"),
            });
        }
        let c = self.catalogue(catalogue)?;
        let page = search::ids_after(self, &c, after, limit + 1)?;
        let more = page.len() > limit;
        let ids: Vec<ItemId> = page.into_iter().take(limit).collect();
        let rows = self.item_rows(&c, &ids)?;
        let mut items: Vec<StoredItem> = rows
            .iter()
            .map(|r| self.stored_item(&c, r, false))
            .collect::<Result<_>>()?;
        items.sort_by(|a, b| a.id.cmp(&b.id));
        let next_cursor = if more {
            items.last().map(|i| i.id.clone())
        } else {
            None
        };
        Ok(ItemPage { items, next_cursor })
    }

    fn count(&self, catalogue: &str) -> Result<u64> {
        let c = self.catalogue(catalogue)?;
        self.client.count(&c.names.items, "")
    }

    fn search(&self, catalogue: &str, request: &SearchRequest) -> Result<SearchResults> {
        self.reading(catalogue, |c| search::search(self, c, request))
    }

    fn stats(&self, catalogue: &str) -> Result<CatalogueStats> {
        let c = self.catalogue(catalogue)?;
        let items = self.client.count(&c.names.items, "")?;
        let mut attributes = Vec::new();
        let mut vector_bytes = 0;
        for (i, a) in c.schema.attributes.iter().enumerate() {
            let live = self.client.count(&c.collection(i), "")?;
            vector_bytes += live * c.schema.dimension as u64 * 4;
            attributes.push(AttributeStats {
                attribute: a.clone(),
                live,
                graph_points: live,
                tombstones: 0,
                compactions: 0,
                dumped_sequence: None,
            });
        }
        let sequence = self
            .sequences
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&c.name)
            .copied()
            .unwrap_or(0);
        Ok(CatalogueStats {
            name: c.name,
            items,
            sequence,
            attributes,
            vector_bytes,
        })
    }

    fn flush(&self) -> Result<()> {
        let mut collections = vec![REGISTRY.to_string()];
        for c in self.catalogues()? {
            collections.extend(c.collections());
        }
        self.client.flush(&collections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let o = MilvusOptions::from_url("milvus://127.0.0.1:19531").unwrap();
        assert_eq!(o.uri, "http://127.0.0.1:19531");
        assert!(!o.tls && o.token.is_none() && o.database.is_none());
        let o = MilvusOptions::from_url(
            "milvus+tls://db.example.com?db=shop&token=root%3AMilvus&timeout_ms=500&flush=true",
        )
        .unwrap();
        assert_eq!(o.uri, "https://db.example.com:19530");
        assert!(o.tls && o.flush_writes);
        assert_eq!(o.token.as_deref(), Some("root:Milvus"));
        assert_eq!(o.database.as_deref(), Some("shop"));
        assert_eq!(o.timeout, Duration::from_millis(500));
        for bad in [
            "http://x:1",
            "milvus://",
            "milvus://x:1?colour=red",
            "milvus://x:1?token=%zz",
            "milvus://x:1/path",
        ] {
            assert!(MilvusOptions::from_url(bad).is_err(), "{bad}");
        }
        let e = MilvusOptions::from_url("milvus://x:1?token=secret&bad=1").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert_eq!(
            redact("milvus://h:1?db=a&token=s"),
            "milvus://h:1?db=a&token=***"
        );
    }
}
