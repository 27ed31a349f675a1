//! Reopening: dumps loaded without rebuild, newer records replayed, bad dumps rebuilt.

use std::sync::{Arc, Mutex};

use asen_index::{CatalogueStore, LocalStore, SearchRequest, StoreOptions};

use crate::data::*;

fn fill(store: &LocalStore, from: usize, to: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut r = rng(seed);
    let data: Vec<Vec<f32>> = (from..to).map(|_| random_vector(&mut r, 16)).collect();
    let items: Vec<_> = data
        .iter()
        .enumerate()
        .map(|(i, v)| item(from + i, &[("a", v), ("b", v)]))
        .collect();
    store.upsert("c", &items).unwrap();
    data
}

fn assert_findable(store: &LocalStore, data: &[Vec<f32>], offset: usize) {
    for (i, v) in data.iter().enumerate().step_by(37) {
        let hits = store
            .search("c", &SearchRequest::vector("b", v.clone(), 1))
            .unwrap()
            .into_hits();
        assert_eq!(hits[0].id.as_str(), (offset + i).to_string());
    }
}

#[test]
fn reopen_loads_dumps_and_replays_newer_records() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second);
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        first = fill(&store, 0, 1500, 1);
        store.checkpoint().unwrap();
        second = fill(&store, 1500, 2000, 2);
        store.delete("c", &[id(3)]).unwrap();
        // dropped without its close-time dump: simulate by forgetting
        std::mem::forget(store);
    }
    // sled's lock is released only at process exit for a forgotten store, so reopen a copy
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let store = LocalStore::open(copy.path(), StoreOptions::default()).unwrap();
    let rep = store.recovery_report();
    assert!(
        rep.iter().all(|r| r.source == "dump" && r.replayed == 500),
        "{rep:?}"
    );
    assert_eq!(store.count("c").unwrap(), 1999);
    assert_findable(&store, &first[4..], 4);
    assert_findable(&store, &second, 1500);
    assert!(store.check_consistency("c").unwrap().is_consistent());
    assert_eq!(store.stats("c").unwrap().attributes[0].tombstones, 1);
}

#[test]
fn clean_close_dumps_so_reopen_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        fill(&store, 0, 500, 3);
    }
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store
        .recovery_report()
        .iter()
        .all(|r| r.source == "dump" && r.replayed == 0));
    assert_eq!(store.count("c").unwrap(), 500);
}

#[test]
fn corrupt_or_missing_dump_is_rebuilt_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let data;
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        data = fill(&store, 0, 800, 4);
    }
    // corrupt one attribute's data file, delete the other's graph file
    let mut files = Vec::new();
    collect_files(&dir.path().join("graphs"), &mut files);
    let data_file = files
        .iter()
        .find(|p| p.to_string_lossy().contains("/a0-") && p.extension().unwrap() == "vectors")
        .unwrap();
    let mut bytes = std::fs::read(data_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(data_file, bytes).unwrap();
    let graph_file = files
        .iter()
        .find(|p| p.to_string_lossy().contains("/a1-") && p.extension().unwrap() == "links")
        .unwrap();
    std::fs::remove_file(graph_file).unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let s2 = Arc::clone(&seen);
    let options = StoreOptions {
        progress: Some(Arc::new(move |p: &asen_index::RebuildProgress| {
            s2.lock().unwrap().push(p.clone())
        })),
        ..StoreOptions::default()
    };
    let store = LocalStore::open(dir.path(), options).unwrap();
    let sources: Vec<_> = store.recovery_report().iter().map(|r| r.source).collect();
    assert_eq!(sources, ["corrupt dump", "no dump"]);
    let seen = seen.lock().unwrap();
    assert!(seen
        .iter()
        .any(|p| p.attribute == "a" && p.done == 800 && p.total == 800));
    assert_findable(&store, &data, 0);
    assert!(store.check_consistency("c").unwrap().is_consistent());
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.path().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn empty_attribute_graphs_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "sleeve"], 4))
            .unwrap();
        store.create_catalogue("empty", &schema(&["a"], 4)).unwrap();
        store
            .upsert("c", &[item("shoe", &[("a", &[1.0, 0.0, 0.0, 0.0])])])
            .unwrap();
        store.checkpoint().unwrap();
    }
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(
        store.recovery_report().iter().all(|r| r.source == "dump"),
        "{:?}",
        store.recovery_report()
    );
    assert_eq!(store.count("c").unwrap(), 1);
    let hits = store
        .search("c", &SearchRequest::vector("sleeve", vec![1.0; 4], 3))
        .unwrap()
        .into_hits();
    assert!(hits.is_empty());
    assert!(store.check_consistency("empty").unwrap().is_consistent());
}

#[test]
fn orphan_dump_directories_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        fill(&store, 0, 100, 5);
    }
    let mut files = Vec::new();
    collect_files(&dir.path().join("graphs"), &mut files);
    let cat_dir = files[0].parent().unwrap().parent().unwrap().to_path_buf();
    let orphan = cat_dir.join("a0-s999-i999");
    std::fs::create_dir_all(&orphan).unwrap();
    std::fs::write(orphan.join("graph.hnsw.data"), b"half written").unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!orphan.exists());
    assert!(store.recovery_report().iter().all(|r| r.source == "dump"));
}

#[test]
fn thumbnails_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store.create_catalogue("c", &schema(&["a"], 4)).unwrap();
        store
            .upsert(
                "c",
                &[
                    item("x", &[("a", &[1.0, 0.0, 0.0, 0.0])]).with_thumbnail(b"jpeg x".to_vec()),
                    item("y", &[("a", &[0.0, 1.0, 0.0, 0.0])]),
                ],
            )
            .unwrap();
    }
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert_eq!(
        store.thumbnail("c", &id("x")).unwrap().as_deref(),
        Some(&b"jpeg x"[..])
    );
    assert!(
        store
            .get("c", &id("x"), false)
            .unwrap()
            .unwrap()
            .has_thumbnail
    );
    assert_eq!(store.thumbnail("c", &id("y")).unwrap(), None);
    assert!(store.thumbnail_migration().is_none(), "nothing to import");
}

/// Writes an old-style thumbnail database (`<dir>/thumbnails/`, keys `catalogue \0 id`), as
/// the service kept before thumbnails moved into the store.
fn write_legacy_thumbnails(dir: &std::path::Path, entries: &[(&str, &str, Vec<u8>)]) {
    let db = sled::Config::new()
        .path(dir.join("thumbnails"))
        .open()
        .unwrap();
    for (catalogue, item, jpeg) in entries {
        let mut key = catalogue.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(item.as_bytes());
        db.insert(key, jpeg.as_slice()).unwrap();
    }
    db.insert(b"no separator", b"x").unwrap();
    db.flush().unwrap();
}

#[test]
fn old_thumbnail_folder_is_imported_on_open_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store.create_catalogue("shop", &schema(&["a"], 2)).unwrap();
        store.create_catalogue("shop2", &schema(&["a"], 2)).unwrap();
        let items: Vec<_> = ["a", "b", "c", "huge"]
            .iter()
            .map(|i| item(i, &[("a", &[1.0, 0.0])]))
            .collect();
        store.upsert("shop", &items).unwrap();
        store.upsert("shop2", &items[..1]).unwrap();
        // Written through the store already: kept over the old database's entry.
        store
            .upsert(
                "shop",
                &[item("c", &[("a", &[1.0, 0.0])]).with_thumbnail(b"new c".to_vec())],
            )
            .unwrap();
    }
    write_legacy_thumbnails(
        dir.path(),
        &[
            ("shop", "a", b"old a".to_vec()),
            ("shop", "b", b"old b".to_vec()),
            ("shop", "c", b"old c".to_vec()),
            ("shop", "gone", b"deleted item".to_vec()),
            ("shop", "huge", vec![1; asen_index::MAX_THUMBNAIL_BYTES + 1]),
            ("shop2", "a", b"old shop2 a".to_vec()),
            ("dropped", "a", b"unknown catalogue".to_vec()),
        ],
    );
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    let report = store.thumbnail_migration().copied().expect("imported");
    assert_eq!(report.imported, 3, "{report:?}");
    assert_eq!(report.skipped, 5, "{report:?}");
    assert!(
        !dir.path().join("thumbnails").exists(),
        "old folder removed"
    );
    assert!(!dir.path().join("thumbnails.imported").exists());
    let dyn_store: &dyn CatalogueStore = &store;
    let thumb = |c: &str, i: &str| dyn_store.thumbnail(c, &id(i)).unwrap();
    assert_eq!(thumb("shop", "a").as_deref(), Some(&b"old a"[..]));
    assert_eq!(thumb("shop", "b").as_deref(), Some(&b"old b"[..]));
    assert_eq!(thumb("shop", "c").as_deref(), Some(&b"new c"[..]));
    assert_eq!(thumb("shop", "gone"), None);
    assert_eq!(thumb("shop", "huge"), None);
    assert_eq!(thumb("shop2", "a").as_deref(), Some(&b"old shop2 a"[..]));
    assert!(
        dyn_store
            .get("shop", &id("a"), false)
            .unwrap()
            .unwrap()
            .has_thumbnail
    );
    assert!(
        !dyn_store
            .get("shop", &id("huge"), false)
            .unwrap()
            .unwrap()
            .has_thumbnail
    );
    drop(store);

    // Imported for good: the next open finds no folder, the thumbnails stay.
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(store.thumbnail_migration().is_none());
    assert_eq!(
        store.thumbnail("shop", &id("a")).unwrap().as_deref(),
        Some(&b"old a"[..])
    );
}

#[test]
fn a_half_removed_imported_folder_is_cleaned_up_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(LocalStore::open(dir.path(), StoreOptions::default()).unwrap());
    // A crash after the rename, during the removal.
    let leftover = dir.path().join("thumbnails.imported");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("db"), b"partial").unwrap();
    let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
    assert!(!leftover.exists());
    assert!(store.thumbnail_migration().is_none());
}

mod corrupt_dumps {
    //! Structured random damage to the graph dumps (bytes overwritten, files cut or
    //! grown): reopening detects it (checksums), rebuilds the graphs from sled, and finds
    //! every item; a damaged dump is never loaded.
    use super::*;
    use proptest::prelude::*;

    /// A closed store with dumps of 200 items in 2 attributes (made once, copied per case).
    fn template() -> &'static std::path::Path {
        static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
            store
                .create_catalogue("c", &schema(&["a", "b"], 16))
                .unwrap();
            fill(&store, 0, 200, 11);
            drop(store);
            dir
        })
        .path()
    }

    #[derive(Debug, Clone)]
    enum Damage {
        Overwrite(Vec<(prop::sample::Index, u8)>),
        Cut(prop::sample::Index),
        Grow(Vec<u8>),
    }

    fn damage() -> impl Strategy<Value = Damage> {
        prop_oneof![
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
                .prop_map(Damage::Overwrite),
            any::<prop::sample::Index>().prop_map(Damage::Cut),
            prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Grow),
        ]
    }

    #[test]
    fn a_damaged_dump_is_rebuilt_from_sled() {
        let input = (any::<prop::sample::Index>(), damage());
        asen_fuzz::fuzz("corrupt_dumps", 24, input, |(file, damage)| {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(template(), dir.path());
            let mut files = Vec::new();
            collect_files(&dir.path().join("graphs"), &mut files);
            files.sort();
            prop_assume!(!files.is_empty());
            let target = &files[file.index(files.len())];
            let before = std::fs::read(target).unwrap();
            let mut bytes = before.clone();
            match &damage {
                Damage::Overwrite(writes) => {
                    for (i, b) in writes {
                        if !bytes.is_empty() {
                            let at = i.index(bytes.len());
                            bytes[at] = *b;
                        }
                    }
                }
                Damage::Cut(i) => bytes.truncate(i.index(bytes.len().max(1))),
                Damage::Grow(tail) => bytes.extend(tail),
            }
            prop_assume!(bytes != before);
            std::fs::write(target, &bytes).unwrap();
            let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
            let sources: Vec<_> = store.recovery_report().iter().map(|r| r.source).collect();
            prop_assert!(
                sources.contains(&"corrupt dump"),
                "{sources:?} after damaging {target:?}"
            );
            prop_assert!(store.check_consistency("c").unwrap().is_consistent());
            let data = {
                let mut r = rng(11);
                (0..200)
                    .map(|_| random_vector(&mut r, 16))
                    .collect::<Vec<_>>()
            };
            assert_findable(&store, &data, 0);
            Ok(())
        });
    }
}

/// An altered catalogue reopens as altered: the dropped attribute's vectors are gone, the
/// kept graphs load from their (moved) dumps, and the added attribute's graph, whose dump a
/// fill made stale, is rebuilt from sled with every filled item.
#[test]
fn an_altered_and_filled_catalogue_reopens_consistent() {
    use asen_index::SchemaChange;
    let dir = tempfile::tempdir().unwrap();
    let data;
    {
        let store = LocalStore::open(dir.path(), StoreOptions::default()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        data = fill(&store, 0, 600, 4);
        store.checkpoint().unwrap();
        store
            .alter_catalogue(
                "c",
                &[
                    SchemaChange::DropAttribute { name: "a".into() },
                    SchemaChange::AddAttribute { name: "p".into() },
                ],
            )
            .unwrap();
        for chunk in (0..600).collect::<Vec<_>>().chunks(200) {
            let batch: Vec<_> = chunk.iter().map(|&i| (id(i), data[i].clone())).collect();
            store.fill_attribute("c", "p", &batch).unwrap();
        }
        assert!(store.check_consistency("c").unwrap().is_consistent());
        std::mem::forget(store);
    }
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let store = LocalStore::open(copy.path(), StoreOptions::default()).unwrap();
    let rep = store.recovery_report();
    let b = rep.iter().find(|r| r.attribute == "b").unwrap();
    assert_eq!((b.source, b.replayed), ("dump", 0), "{rep:?}");
    let p = rep.iter().find(|r| r.attribute == "p").unwrap();
    assert_ne!(p.source, "dump", "{rep:?}");
    assert_eq!(p.replayed, 600);
    assert_eq!(store.schema("c").unwrap().attributes, ["b", "p"]);
    assert!(store.check_consistency("c").unwrap().is_consistent());
    assert_findable(&store, &data, 0);
    for (i, v) in data.iter().enumerate().step_by(53) {
        let hits = store
            .search("c", &SearchRequest::vector("p", v.clone(), 1))
            .unwrap()
            .into_hits();
        assert_eq!(hits[0].id.as_str(), i.to_string());
    }
    let item = store.get("c", &id(7), true).unwrap().unwrap();
    assert_eq!(item.vectors.unwrap().len(), 2, "b and p, no a");
}

/// Reclaimed slots are dumped as unlinked points with stale ids; a reopen loads them, finds
/// everything live and reclaims them again on the next write.
#[test]
fn a_graph_with_reclaimed_slots_survives_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = || StoreOptions {
        compaction_min_points: 100,
        background_compaction: false,
        ..StoreOptions::default()
    };
    let data;
    {
        let store = LocalStore::open(dir.path(), options()).unwrap();
        store
            .create_catalogue("c", &schema(&["a", "b"], 16))
            .unwrap();
        fill(&store, 0, 1000, 5);
        // 100 replaced: 10 % tombstones, past the reclaim threshold, under compaction's.
        data = fill(&store, 0, 100, 6);
        let stats = store.stats("c").unwrap();
        assert_eq!(stats.attributes[1].compactions, 0);
        assert_eq!(stats.attributes[1].graph_points, 1100);
    }
    let store = LocalStore::open(dir.path(), options()).unwrap();
    assert!(store
        .recovery_report()
        .iter()
        .all(|r| r.source == "dump" && r.replayed == 0));
    assert_findable(&store, &data, 0);
    assert!(store.check_consistency("c").unwrap().is_consistent());
    // 100 new items take the freed slots again.
    fill(&store, 1000, 1100, 7);
    let stats = store.stats("c").unwrap();
    assert_eq!(stats.attributes[1].graph_points, 1100, "{stats:?}");
    assert_eq!(stats.attributes[1].live, 1100);
}
