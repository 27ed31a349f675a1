//! Reclaiming: unlink one attribute's tombstones from its graph so that new points reuse their
//! slots, instead of rebuilding the graph.
//!
//! A compaction ([`super::compaction`]) builds a second graph and swaps it in, so while it runs
//! the attribute holds two graphs: under steady replacement the memory swings with the cycle.
//! A reclaim works in place: the dead points are flagged under the writer lock (so no insert
//! of theirs is in flight), then unlinked beside searches and writes, and their slots go to the
//! graph's free list, which inserts use before they grow the graph. Under churn the graph keeps
//! its size; compaction remains for shrinking a graph after mass deletes.

use super::{lock, read, Catalogue};

/// Flags the attribute's tombstones and frees their slots; returns how many were freed.
pub(crate) fn reclaim(c: &Catalogue, a: usize) -> usize {
    let graph = c.graphs[a].current();
    {
        let _w = lock(&c.writer);
        if c.retired() {
            return 0;
        }
        let live = read(&c.live);
        let bit = 1u64 << a;
        graph.mark_dead(|iid| live.items.get(&iid).is_none_or(|m| m.mask & bit == 0));
    }
    graph.reclaim()
}
