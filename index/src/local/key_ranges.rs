//! Splitting the keys under one prefix byte into ranges that several threads scan at once.
//!
//! sled iterates a leaf at a time, and on a cold page cache each leaf it reads waits for the
//! disk: one scan keeps one read in flight. The ranges let a reopen run several scans, so the
//! disk has several reads to work on. The split interpolates between the first and the last key
//! (their first 8 bytes after what they share, read as one big-endian number), so sequential or
//! random ids give ranges of similar size; any key set is covered exactly once whatever its
//! distribution.

use crate::error::Result;

/// Up to `parts` half-open ranges `[lo, hi)` that together hold every key starting with
/// `prefix` (below 0xff), each once, in key order. An empty prefix gives one range.
pub(crate) fn key_ranges(
    tree: &sled::Tree,
    prefix: u8,
    parts: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    assert!(prefix < 0xff, "the record prefixes are below 0xff");
    let (start, end) = (vec![prefix], vec![prefix + 1]);
    let mut keys = tree.range(start.clone()..end.clone()).keys();
    let first = keys.next().transpose()?;
    let last = keys.next_back().transpose()?;
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(vec![(start, end)]);
    };
    Ok(windows(start, end, &first, &last, parts))
}

/// `parts` ranges from `start` to `end` with bounds spread between `first` and `last`.
fn windows(
    start: Vec<u8>,
    end: Vec<u8>,
    first: &[u8],
    last: &[u8],
    parts: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    let common = first.iter().zip(last).take_while(|(a, b)| a == b).count();
    let number = |key: &[u8]| {
        let mut bytes = [0u8; 8];
        for (b, k) in bytes.iter_mut().zip(key.iter().skip(common)) {
            *b = *k;
        }
        u64::from_be_bytes(bytes)
    };
    let (lo, hi) = (number(first), number(last));
    let mut bounds = vec![start];
    for i in 1..parts.max(1) {
        let x = lo + ((u128::from(hi - lo) * i as u128) / parts as u128) as u64;
        let mut key = first[..common].to_vec();
        key.extend(x.to_be_bytes());
        if key > *bounds.last().expect("the start") && key < end {
            bounds.push(key);
        }
    }
    bounds.push(end);
    bounds
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tree(keys: &[Vec<u8>]) -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        for k in keys {
            tree.insert(k, b"v").unwrap();
        }
        (dir, tree)
    }

    /// How many ranges hold each key of the tree that starts with `prefix`.
    fn coverage(tree: &sled::Tree, prefix: u8, parts: usize) -> Vec<usize> {
        let ranges = key_ranges(tree, prefix, parts).unwrap();
        assert!(ranges.len() <= parts.max(1));
        assert!(ranges
            .windows(2)
            .all(|w| w[0].1 == w[1].0 && w[0].0 < w[1].0));
        tree.scan_prefix([prefix])
            .keys()
            .map(|k| {
                let k = k.unwrap();
                ranges
                    .iter()
                    .filter(|(lo, hi)| k.as_ref() >= lo.as_slice() && k.as_ref() < hi.as_slice())
                    .count()
            })
            .collect()
    }

    #[test]
    fn sequential_ids_split_into_even_ranges() {
        let keys: Vec<Vec<u8>> = (0..8000)
            .map(|i| format!("iitem-{i:06}").into_bytes())
            .collect();
        let (_dir, tree) = tree(&keys);
        let ranges = key_ranges(&tree, b'i', 8).unwrap();
        assert_eq!(ranges.len(), 8);
        let sizes: Vec<usize> = ranges
            .iter()
            .map(|(lo, hi)| tree.range(lo.clone()..hi.clone()).count())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 8000);
        assert!(sizes.iter().all(|&s| s > 500 && s < 1500), "{sizes:?}");
    }

    #[test]
    fn an_empty_prefix_is_one_range() {
        let (_dir, tree) = tree(&[b"other".to_vec()]);
        assert_eq!(key_ranges(&tree, b'i', 8).unwrap().len(), 1);
    }

    #[test]
    fn one_key_is_one_range() {
        let (_dir, tree) = tree(&[b"ia".to_vec(), b"v1".to_vec()]);
        assert_eq!(coverage(&tree, b'i', 8), vec![1]);
    }

    proptest! {
        #[test]
        fn every_key_under_the_prefix_is_in_exactly_one_range(
            keys in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..60),
            prefix in prop_oneof![Just(b'i'), Just(0u8), Just(0xfeu8)],
            parts in 1usize..10,
        ) {
            let mut all: Vec<Vec<u8>> = keys.iter().map(|k| {
                let mut p = vec![prefix];
                p.extend(k);
                p
            }).collect();
            all.extend(keys.iter().filter(|k| k.first() != Some(&prefix)).cloned());
            let (_dir, tree) = tree(&all);
            prop_assert!(coverage(&tree, prefix, parts).iter().all(|&c| c == 1));
        }
    }
}
