//! Kill test over HTTP: the real `asen serve`, SIGKILLed at random moments while clients
//! upsert, delete and search. After each restart, every acknowledged write is visible, no
//! unacknowledged batch is half-visible, and every acknowledged delete stays deleted (by id
//! and in search results).
//!
//! `ASEN_KILL_ROUNDS` (default 20) and `ASEN_KILL_SEED` change the run; the figures are
//! printed on stderr (`--nocapture`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::process::{call, spawn_with, Process};
use crate::server::*;

/// What the clients know for sure, and what they sent without an answer.
#[derive(Default)]
struct Ledger {
    /// Acknowledged upserts not deleted since (must be visible).
    live: BTreeSet<String>,
    /// Acknowledged deletes (must stay gone).
    deleted: BTreeSet<String>,
    /// Batches sent without an answer (all or none of each may be visible).
    unacknowledged: Vec<Vec<String>>,
    /// Ids whose delete got no answer (either state is fine; never checked again).
    uncertain: BTreeSet<String>,
    /// Totals.
    unacknowledged_total: u64,
    upserts_acked: u64,
    deletes_acked: u64,
}

/// A short-timeout request that reports transport failures as `None` (the server died).
fn try_send(
    base: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&serde_json::Value>,
) -> Option<(u16, serde_json::Value)> {
    let req = ureq::request(method, &format!("{base}{path}"))
        .timeout(Duration::from_secs(20))
        .set("api-key", key);
    let result = match body {
        Some(b) => req.send_json(b.clone()),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return None,
    };
    let status = resp.status();
    let body = resp.into_json().ok()?;
    Some((status, body))
}

fn exists(p: &Process, id: &str) -> bool {
    let reply = call(p, "GET", &format!("/v1/catalogues/k/items/{id}"), R, None);
    match reply.status {
        200 => true,
        404 => false,
        s => panic!("GET {id}: {s} {}", reply.body),
    }
}

#[test]
fn sigkill_during_upserts_deletes_and_searches_loses_no_acknowledged_write() {
    let Some(shared) = shared() else { return };
    let rounds: usize = std::env::var("ASEN_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("ASEN_KILL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let started = Instant::now();
    let data = tempfile::tempdir().unwrap();
    let images: Vec<String> = NAMES
        .iter()
        .map(|n| b64(&std::fs::read(shared.join("golden/images").join(n)).unwrap()))
        .collect();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut verified_visible = 0u64;
    let mut verified_deleted = 0u64;
    let mut whole_unacked = 0u64;
    let mut searches_total = 0u64;
    for round in 0..=rounds {
        let mut p = spawn_with(&shared, data.path(), &[]);
        // Check what the previous rounds left.
        {
            let mut l = ledger.lock().unwrap();
            for id in &l.live {
                assert!(
                    exists(&p, id),
                    "round {round}: acknowledged {id} is missing"
                );
                verified_visible += 1;
            }
            for id in &l.deleted {
                assert!(!exists(&p, id), "round {round}: deleted {id} is back");
                verified_deleted += 1;
            }
            for batch in std::mem::take(&mut l.unacknowledged) {
                let visible: Vec<bool> = batch.iter().map(|id| exists(&p, id)).collect();
                let n = visible.iter().filter(|v| **v).count();
                assert!(
                    n == 0 || n == batch.len(),
                    "round {round}: unacknowledged batch {batch:?} is half-visible ({n})"
                );
                if n == batch.len() {
                    whole_unacked += 1;
                    // Visible now, so it must stay (it is durable): treat as acknowledged.
                    l.live.extend(batch);
                }
            }
            // Deleted items stay out of search results too.
            if let Some(probe) = l.live.iter().next().cloned() {
                let hits = crate::server::ok(
                    &call(
                        &p,
                        "POST",
                        "/v1/catalogues/k/search",
                        R,
                        Some(&json!({"attribute": "attr_0", "item_id": probe, "k": MAX_K})),
                    ),
                    "search after restart",
                );
                for hit in hits["hits"].as_array().into_iter().flatten() {
                    let id = hit["id"].as_str().unwrap();
                    assert!(
                        !l.deleted.contains(id),
                        "round {round}: deleted {id} is a hit"
                    );
                }
            }
        }
        if round == 0 {
            let created = call(&p, "PUT", "/v1/catalogues/k", W, None);
            assert_eq!(created.status, 200, "{}", created.body);
        }
        if round == rounds {
            break;
        }
        // Clients: two writers (upsert batches of 1-3, delete acknowledged items) and one
        // searcher, until the kill.
        let stop = Arc::new(AtomicBool::new(false));
        let searches = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for writer in 0..2u64 {
            let (base, stop, ledger, images) =
                (p.base.clone(), stop.clone(), ledger.clone(), images.clone());
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (round as u64) << 8 ^ writer);
            clients.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let delete = rng.gen_bool(0.25);
                    // Picked and taken out of `live` under one lock, so the two writers
                    // never delete the same item.
                    let victim = if delete {
                        let mut l = ledger.lock().unwrap();
                        let live: Vec<&String> = l.live.iter().collect();
                        let id =
                            (live.len() > 4).then(|| live[rng.gen_range(0..live.len())].clone());
                        if let Some(id) = &id {
                            l.live.remove(id);
                        }
                        id
                    } else {
                        None
                    };
                    if let Some(id) = victim {
                        let path = format!("/v1/catalogues/k/items/{id}");
                        match try_send(&base, "DELETE", &path, WRITE_KEY, None) {
                            Some((200, _)) => {
                                let mut l = ledger.lock().unwrap();
                                l.deleted.insert(id);
                                l.deletes_acked += 1;
                            }
                            Some((s, b)) => panic!("delete {id}: {s} {b}"),
                            None => {
                                ledger.lock().unwrap().uncertain.insert(id);
                            }
                        }
                        continue;
                    }
                    let size = rng.gen_range(1..=3);
                    let ids: Vec<String> = (0..size)
                        .map(|j| format!("r{round}-w{writer}-{n}-{j}"))
                        .collect();
                    let items: Vec<_> = ids
                        .iter()
                        .map(|id| {
                            json!({"id": id, "payload": {"round": round},
                                   "image": images[rng.gen_range(0..images.len())]})
                        })
                        .collect();
                    let body = json!({ "items": items });
                    match try_send(
                        &base,
                        "PUT",
                        "/v1/catalogues/k/items",
                        WRITE_KEY,
                        Some(&body),
                    ) {
                        Some((200, receipt)) => {
                            assert_eq!(receipt["result"]["affected"], size, "{receipt}");
                            let mut l = ledger.lock().unwrap();
                            l.upserts_acked += size as u64;
                            l.live.extend(ids);
                        }
                        Some((s, b)) => panic!("upsert: {s} {b}"),
                        None => {
                            let mut l = ledger.lock().unwrap();
                            l.unacknowledged_total += 1;
                            l.unacknowledged.push(ids);
                        }
                    }
                }
            }));
        }
        {
            let (base, stop, searches) = (p.base.clone(), stop.clone(), searches.clone());
            let probe = ledger.lock().unwrap().live.iter().next().cloned();
            clients.push(std::thread::spawn(move || {
                let Some(probe) = probe else { return };
                while !stop.load(Ordering::Relaxed) {
                    let body = json!({"attribute": "attr_1", "item_id": probe, "k": 10});
                    match try_send(
                        &base,
                        "POST",
                        "/v1/catalogues/k/search",
                        READ_KEY,
                        Some(&body),
                    ) {
                        Some((200, _)) => {
                            searches.fetch_add(1, Ordering::Relaxed);
                            // Leave the cores to the writers' forward passes.
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        // The probe itself may have been deleted meanwhile.
                        Some((404, _)) | None => {}
                        Some((s, b)) => panic!("search: {s} {b}"),
                    }
                }
            }));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..2000)));
        // No new request after this; those in flight meet the kill.
        stop.store(true, Ordering::Relaxed);
        p.child.kill().unwrap(); // SIGKILL
        let _ = p.child.wait();
        for c in clients {
            c.join().expect("a client failed");
        }
        searches_total += searches.load(Ordering::Relaxed);
    }
    let l = ledger.lock().unwrap();
    eprintln!(
        "kill test: {rounds} kills in {:.1} s (seed {seed}); writes acknowledged {} items, \
         deletes acknowledged {}; at the end {} live items found, {} deleted items gone; \
         over all restarts {verified_visible} visibility checks and {verified_deleted} \
         deletion checks passed; of {} unacknowledged batches {whole_unacked} fully visible, \
         0 half-visible; {searches_total} searches answered",
        started.elapsed().as_secs_f64(),
        l.upserts_acked,
        l.deletes_acked,
        l.live.len(),
        l.deleted.len(),
        l.unacknowledged_total,
    );
    assert!(
        l.upserts_acked > 0 && l.deletes_acked > 0,
        "the clients did too little"
    );
}
