//! Compaction: rebuild one attribute's graph without its tombstones and swap it in.
//!
//! The new graph is built from sled while searches keep using the old one and writers keep
//! writing; the writer lock is taken only to snapshot the live ids at the start and, at the
//! end, to insert what was written meanwhile and swap the `Arc`. Searches hold the graph
//! `RwLock` only long enough to clone the `Arc`, so they never wait for a compaction.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::records::{self, VectorRecord};
use super::{lock, read, write, Catalogue, RebuildProgress, StoreOptions};
use crate::error::{IndexError, Result};
use crate::graph::Graph;

const CHUNK: usize = 10_000;

pub(crate) fn compact(c: &Catalogue, a: usize, options: &StoreOptions) -> Result<()> {
    let (watermark, mut ids) = {
        let w = lock(&c.writer);
        let live = read(&c.live);
        let ids: Vec<u64> = live
            .items
            .iter()
            .filter(|(_, m)| m.mask & (1 << a) != 0)
            .map(|(iid, _)| *iid)
            .collect();
        (w.next_iid, ids)
    };
    ids.sort_unstable();
    let graph = Graph::new(&c.schema);
    let mut progress = RebuildProgress {
        catalogue: c.name.clone(),
        attribute: c.schema.attributes[a].clone(),
        reason: "compaction",
        done: 0,
        total: ids.len() as u64,
    };
    for chunk in ids.chunks(CHUNK) {
        if c.retired() {
            return Ok(());
        }
        insert_ids(c, &graph, a, chunk)?;
        progress.done += chunk.len() as u64;
        if let Some(f) = &options.progress {
            f(&progress);
        }
    }
    // Catch up with writes made during the build, then swap, all under the writer lock.
    let w = lock(&c.writer);
    if c.retired() {
        return Ok(());
    }
    let newer: Vec<u64> = {
        let live = read(&c.live);
        let mut v: Vec<u64> = live
            .items
            .iter()
            .filter(|(iid, m)| **iid >= watermark && m.mask & (1 << a) != 0)
            .map(|(iid, _)| *iid)
            .collect();
        v.sort_unstable();
        v
    };
    insert_ids(c, &graph, a, &newer)?;
    *write(&c.graphs[a].graph) = Arc::new(graph);
    c.graphs[a].compactions.fetch_add(1, Ordering::Relaxed);
    // The old dump is still correct (old graph + replay); dump the new one only if it is due.
    if w.inserts_since_dump > 0 && options.dump_every_inserts > 0 {
        super::recovery::dump_graph(c, a, &w)?;
    }
    Ok(())
}

/// Reads the vectors of `ids` from sled and inserts those still present.
fn insert_ids(c: &Catalogue, graph: &Graph, a: usize, ids: &[u64]) -> Result<()> {
    let dim = c.schema.dimension;
    let mut vs: Vec<(u64, Vec<f32>)> = Vec::with_capacity(ids.len());
    for &iid in ids {
        // Deleted since the snapshot: its record is gone, skip it.
        let Some(bytes) = c.tree.get(records::vector_key(iid))? else {
            continue;
        };
        let rec = VectorRecord::decode(iid, &bytes, dim)?;
        let v = rec.get(a, dim).ok_or_else(|| IndexError::Corrupt {
            what: format!("vectors of internal id {iid}"),
            detail: format!("attribute {} missing", c.schema.attributes[a]),
        })?;
        vs.push((iid, v.to_vec()));
    }
    let pts: Vec<(&[f32], u64)> = vs.iter().map(|(i, v)| (v.as_slice(), *i)).collect();
    graph.insert(&pts);
    Ok(())
}
