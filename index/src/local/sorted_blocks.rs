//! [`SortedBlocks`]: a sorted set stored as a list of short sorted blocks, so that an insert or
//! a remove anywhere moves at most one block instead of the whole set.

/// Most entries in one block; a block that grows past it is split.
const BLOCK: usize = 256;
/// A block shrunk below this is merged with a neighbour when the two fit in one block.
const MERGE_BELOW: usize = BLOCK / 4;

/// A sorted set of `T`. Invariants: no block is empty, each block is sorted, and every entry of
/// a block is below every entry of the next block.
#[derive(Debug, Clone)]
pub(crate) struct SortedBlocks<T> {
    blocks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for SortedBlocks<T> {
    fn default() -> Self {
        SortedBlocks {
            blocks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Ord + Copy> SortedBlocks<T> {
    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `x`; `false` when it was already there.
    pub(crate) fn insert(&mut self, x: T) -> bool {
        if self.blocks.is_empty() {
            self.blocks.push(vec![x]);
            self.len = 1;
            return true;
        }
        // The last block starting at or below x (the first block when x is below all).
        let b = self
            .blocks
            .partition_point(|blk| blk[0] <= x)
            .saturating_sub(1);
        let blk = &mut self.blocks[b];
        let Err(pos) = blk.binary_search(&x) else {
            return false;
        };
        blk.insert(pos, x);
        self.len += 1;
        if blk.len() > BLOCK {
            self.split(b, pos);
        }
        true
    }

    /// Splits an overfull block. Appending at the very end (ids grow, so most inserts do) keeps
    /// the old block full and starts a new one; otherwise the block is halved.
    fn split(&mut self, b: usize, inserted_at: usize) {
        let last = b + 1 == self.blocks.len();
        let blk = &mut self.blocks[b];
        let appended = last && inserted_at + 1 == blk.len();
        let at = if appended { BLOCK } else { BLOCK / 2 };
        let tail = blk.split_off(at);
        blk.shrink_to_fit();
        self.blocks.insert(b + 1, tail);
    }

    /// Removes `x`; `false` when it was not there.
    pub(crate) fn remove(&mut self, x: &T) -> bool {
        let b = self.blocks.partition_point(|blk| blk[0] <= *x);
        let Some(b) = b.checked_sub(1) else {
            return false;
        };
        let blk = &mut self.blocks[b];
        let Ok(pos) = blk.binary_search(x) else {
            return false;
        };
        blk.remove(pos);
        self.len -= 1;
        if blk.is_empty() {
            self.blocks.remove(b);
        } else if blk.len() < MERGE_BELOW {
            self.merge_around(b);
        }
        true
    }

    /// Merges a small block into its next (or previous) neighbour when both fit in one block.
    fn merge_around(&mut self, b: usize) {
        let fits = |x: &Vec<T>, y: &Vec<T>| x.len() + y.len() <= BLOCK;
        if b + 1 < self.blocks.len() && fits(&self.blocks[b], &self.blocks[b + 1]) {
            let next = self.blocks.remove(b + 1);
            self.blocks[b].extend(next);
        } else if b > 0 && fits(&self.blocks[b - 1], &self.blocks[b]) {
            let cur = self.blocks.remove(b);
            self.blocks[b - 1].extend(cur);
        }
    }

    /// Whether `x` is held.
    #[cfg(test)]
    pub(crate) fn contains(&self, x: &T) -> bool {
        let b = self.blocks.partition_point(|blk| blk[0] <= *x);
        b.checked_sub(1)
            .is_some_and(|b| self.blocks[b].binary_search(x).is_ok())
    }

    /// Every entry, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.blocks.iter().flatten()
    }

    /// Position of the first entry not below `lo`: (block, index in block).
    fn lower_bound(&self, lo: &T) -> (usize, usize) {
        let b = self.blocks.partition_point(|blk| blk[blk.len() - 1] < *lo);
        match self.blocks.get(b) {
            Some(blk) => (b, blk.partition_point(|x| x < lo)),
            None => (b, 0),
        }
    }

    /// Entries from the first not below `lo`, ascending.
    pub(crate) fn iter_from(&self, lo: &T) -> impl Iterator<Item = &T> + '_ {
        let (b, i) = self.lower_bound(lo);
        let first = self.blocks.get(b).map_or(&[][..], |blk| &blk[i..]);
        first.iter().chain(self.blocks.iter().skip(b + 1).flatten())
    }

    /// Number of entries in `lo..hi` (half-open), from block lengths: no walk over the entries.
    pub(crate) fn count_between(&self, lo: &T, hi: &T) -> usize {
        if hi <= lo {
            return 0;
        }
        let (b0, i0) = self.lower_bound(lo);
        let (b1, i1) = self.lower_bound(hi);
        if b0 == b1 {
            return i1 - i0;
        }
        let middle: usize = self.blocks[b0 + 1..b1].iter().map(Vec::len).sum();
        (self.blocks[b0].len() - i0) + middle + i1
    }

    /// Heap bytes held (capacity, not length).
    pub(crate) fn heap_bytes(&self) -> usize {
        let entries: usize = self.blocks.iter().map(Vec::capacity).sum();
        entries * std::mem::size_of::<T>() + self.blocks.capacity() * std::mem::size_of::<Vec<T>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn check_invariants(s: &SortedBlocks<u32>) {
        assert!(s.blocks.iter().all(|b| !b.is_empty() && b.len() <= BLOCK));
        let all: Vec<u32> = s.iter().copied().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]), "not strictly sorted");
        assert_eq!(all.len(), s.len());
    }

    #[test]
    fn appending_in_order_fills_blocks() {
        let mut s = SortedBlocks::default();
        for i in 0..(BLOCK as u32 * 4) {
            s.insert(i);
        }
        assert_eq!(s.blocks.len(), 4);
        check_invariants(&s);
    }

    #[test]
    fn count_between_matches_iteration() {
        let mut s = SortedBlocks::default();
        for i in (0..5000u32).rev() {
            s.insert(i * 3);
        }
        check_invariants(&s);
        assert_eq!(
            s.count_between(&10, &3001),
            (10..3001).filter(|x| x % 3 == 0).count()
        );
        assert_eq!(s.count_between(&20_000, &30_000), 0);
        assert_eq!(s.count_between(&5, &5), 0);
        assert_eq!(s.iter_from(&14_996).copied().collect::<Vec<_>>(), [14_997]);
    }

    #[test]
    fn removing_everything_leaves_no_block() {
        let mut s = SortedBlocks::default();
        for i in 0..2000u32 {
            s.insert(i * 7 % 2000);
        }
        for i in 0..2000u32 {
            assert!(s.remove(&i));
        }
        assert!(s.is_empty());
        assert!(s.blocks.is_empty());
        assert!(!s.remove(&3));
    }

    proptest! {
        #[test]
        fn behaves_as_a_btreeset(ops in proptest::collection::vec((any::<bool>(), 0u32..3000), 0..4000)) {
            let mut s = SortedBlocks::default();
            let mut model = BTreeSet::new();
            for (add, x) in ops {
                if add {
                    prop_assert_eq!(s.insert(x), model.insert(x));
                } else {
                    prop_assert_eq!(s.remove(&x), model.remove(&x));
                }
            }
            check_invariants(&s);
            prop_assert!(s.iter().copied().eq(model.iter().copied()));
            prop_assert!(s.iter_from(&1500).copied().eq(model.range(1500..).copied()));
            prop_assert_eq!(s.count_between(&700, &2100), model.range(700..2100).count());
            prop_assert!(model.iter().all(|x| s.contains(x)));
        }
    }
}
