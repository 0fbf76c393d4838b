//! Vbucket deletion while operations are in flight (upstream MB-33463), in
//! our terms, and a stress test that deletes and recreates vbuckets
//! thousands of times under load on the couchfile backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{key, open};
use engine::{Backend, EngineError, WriteOptions};
use kvstore_core::{
    CompactionConfig, ScanControl, ScanOptions, ScanStatus, Seqno, StoreError, VbState, Vbid,
};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

fn couch() -> Backend {
    Backend::Couchfile(kvstore_couchfile::CouchConfig::default())
}

/// The stores in the data directory (not the lock file).
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "LOCK")
        .collect();
    v.sort();
    v
}

/// Operations racing a delete end in success or `NotMyVbucket`, nothing
/// else; the files go once the last of them is done.
#[test]
fn concurrent_operations_while_deleting() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 2);
    let e = Arc::new(o.engine);
    e.create_vbucket(Vbid(0), VbState::Active).unwrap();
    let start = Arc::new(Barrier::new(5));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (e, start, stop, outcomes) =
                (e.clone(), start.clone(), stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                start.wait();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let k = key(&format!("t{t}-{i}"));
                    let r = e
                        .set(Vbid(0), &k, "v", WriteOptions::default())
                        .map(|_| ())
                        .and_then(|()| e.get(Vbid(0), &k).map(|_| ()));
                    match r {
                        Ok(()) | Err(EngineError::NotMyVbucket(_)) => {}
                        Err(EngineError::TemporaryFailure(_)) => {}
                        Err(other) => outcomes.lock().unwrap().push(other.to_string()),
                    }
                    i += 1;
                }
            })
        })
        .collect();
    start.wait();
    std::thread::sleep(std::time::Duration::from_millis(50));
    e.delete_vbucket(Vbid(0)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        outcomes.lock().unwrap().is_empty(),
        "{:?}",
        outcomes.lock().unwrap()
    );
    e.wait_for_deletions();
    assert_eq!(e.deleter().destroyed_total(), 1);
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// A scan holding a guard keeps the files until it is done.
#[test]
fn delete_while_scanning() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 1);
    let e = &o.engine;
    e.create_vbucket(Vbid(0), VbState::Active).unwrap();
    for i in 0..500 {
        e.set(
            Vbid(0),
            &key(&format!("k{i:03}")),
            "v",
            WriteOptions::default(),
        )
        .unwrap();
    }
    e.flush().unwrap();
    let guard = e.vbucket(Vbid(0)).unwrap();
    let mut scan = guard
        .store()
        .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    let mut n = 0;
    assert_eq!(
        scan.run(&mut |_| {
            n += 1;
            if n == 100 {
                ScanControl::Yield
            } else {
                ScanControl::Continue
            }
        })
        .unwrap(),
        ScanStatus::Yielded
    );
    e.delete_vbucket(Vbid(0)).unwrap();
    assert!(matches!(
        e.get(Vbid(0), &key("k000")),
        Err(EngineError::NotMyVbucket(_))
    ));
    e.wait_for_flusher();
    assert_eq!(
        e.stats().pending_deletions,
        1,
        "the deletion waits for the guard"
    );
    assert_eq!(
        files(dir.path()).len(),
        1,
        "the guarded incarnation's file stays"
    );
    assert_eq!(
        scan.run(&mut |_| {
            n += 1;
            ScanControl::Continue
        })
        .unwrap(),
        ScanStatus::Done
    );
    assert_eq!(n, 500);
    drop(scan);
    drop(guard);
    e.wait_for_deletions();
    assert!(files(dir.path()).is_empty(), "{:?}", files(dir.path()));
}

/// Of many racing deletes exactly one succeeds.
#[test]
fn concurrent_delete() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 1);
    let e = Arc::new(o.engine);
    for round in 0..20 {
        e.create_vbucket(Vbid(3), VbState::Active).unwrap();
        let barrier = Arc::new(Barrier::new(4));
        let wins = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let (e, b, w) = (e.clone(), barrier.clone(), wins.clone());
                std::thread::spawn(move || {
                    b.wait();
                    match e.delete_vbucket(Vbid(3)) {
                        Ok(()) => {
                            w.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(EngineError::NotMyVbucket(_)) => {}
                        Err(other) => panic!("{other}"),
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
    }
    e.wait_for_deletions();
    assert_eq!(e.deleter().destroyed_total(), 20);
}

/// Delete, recreate, then flush the new state: after a restart the vbucket
/// is the new incarnation, in its new state, with none of the old data.
#[test]
fn delete_then_recreate_then_flush_state() {
    let dir = tempfile::tempdir().unwrap();
    {
        let o = open(dir.path(), couch(), 1);
        let e = &o.engine;
        e.create_vbucket(Vbid(2), VbState::Active).unwrap();
        e.set(Vbid(2), &key("old"), "v", WriteOptions::default())
            .unwrap();
        e.flush().unwrap();
        let old_guard = e.vbucket(Vbid(2)).unwrap();
        e.delete_vbucket(Vbid(2)).unwrap();
        e.create_vbucket(Vbid(2), VbState::Active).unwrap();
        e.set(Vbid(2), &key("new"), "v", WriteOptions::default())
            .unwrap();
        e.set_vbucket_state(Vbid(2), VbState::Replica).unwrap();
        e.flush().unwrap();
        // The old incarnation is still readable through its guard.
        assert!(old_guard.store().get(&key("old")).unwrap().is_some());
        assert!(old_guard.store().get(&key("new")).unwrap().is_none());
        drop(old_guard);
        e.wait_for_deletions();
        o.engine.shutdown().unwrap();
    }
    let o = open(dir.path(), couch(), 1);
    let e = &o.engine;
    let st = e.vbucket_stats(Vbid(2)).unwrap();
    assert_eq!(st.state, VbState::Replica);
    assert_eq!(st.items, 1);
    e.set_vbucket_state(Vbid(2), VbState::Active).unwrap();
    assert!(e.get(Vbid(2), &key("new")).is_ok());
    assert!(matches!(
        e.get(Vbid(2), &key("old")),
        Err(EngineError::KeyNotFound)
    ));
    assert_eq!(files(dir.path()).len(), 1);
}

/// A delete stops a running compaction; after a recreate, compaction of the
/// new incarnation succeeds.
#[test]
fn compaction_cancelled_by_delete_then_succeeds_after_recreate() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 2);
    let e = Arc::new(o.engine);
    e.create_vbucket(Vbid(1), VbState::Active).unwrap();
    let value = vec![b'x'; 200];
    for i in 0..60_000u32 {
        common::retry(|| {
            e.set(
                Vbid(1),
                &key(&format!("k{i:06}")),
                value.clone(),
                WriteOptions::default(),
            )
        })
        .unwrap();
    }
    e.wait_for_flusher();
    e.flush().unwrap();
    // Start compactions until one is caught mid-way by the delete.
    let e2 = e.clone();
    let compactor = std::thread::spawn(move || {
        let mut results = Vec::new();
        loop {
            match e2.compact(Vbid(1), CompactionConfig::default()) {
                Ok(_) => results.push("ok"),
                Err(EngineError::Storage(s)) if matches!(*s, StoreError::Cancelled) => {
                    results.push("cancelled");
                    return results;
                }
                Err(EngineError::NotMyVbucket(_)) => {
                    results.push("gone");
                    return results;
                }
                Err(other) => panic!("{other}"),
            }
        }
    });
    std::thread::sleep(std::time::Duration::from_millis(30));
    e.delete_vbucket(Vbid(1)).unwrap();
    let results = compactor.join().unwrap();
    assert!(
        results
            .last()
            .is_some_and(|r| *r == "cancelled" || *r == "gone"),
        "{results:?}"
    );
    e.wait_for_deletions();
    assert!(
        files(dir.path()).is_empty(),
        "no file and no .compact left: {:?}",
        files(dir.path())
    );
    e.create_vbucket(Vbid(1), VbState::Active).unwrap();
    for i in 0..100u32 {
        e.set(
            Vbid(1),
            &key(&format!("n{i}")),
            "v",
            WriteOptions::default(),
        )
        .unwrap();
        e.delete(Vbid(1), &key(&format!("n{i}")), WriteOptions::default())
            .unwrap();
    }
    e.flush().unwrap();
    let r = e
        .compact(
            Vbid(1),
            CompactionConfig {
                drop_deletes: true,
                ..CompactionConfig::default()
            },
        )
        .unwrap();
    assert_eq!(r.tombstones_purged, 99);
    eprintln!("compactions before the cancel: {results:?}");
}

/// Sets, gets and scans on four vbuckets while another thread deletes and
/// recreates them thousands of times: no panic, no read of another
/// incarnation's data, no leftover files.
///
/// Every value is tagged with the generation counter read before its write.
/// The deleter bumps the counter to an odd value before a delete and to the
/// next even value after the recreate. A read that saw the same even
/// generation before and after must only find values of that generation
/// (except writes that straddled a recreate, which the writer announces
/// before writing).
#[test]
fn stress_delete_and_recreate_under_load() {
    let cycles: u64 = std::env::var("ENGINE_STRESS_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 2);
    let e = Arc::new(o.engine);
    const VBS: u16 = 4;
    for v in 0..VBS {
        e.create_vbucket(Vbid(v), VbState::Active).unwrap();
    }
    let gens: Arc<Vec<AtomicU64>> = Arc::new((0..VBS).map(|_| AtomicU64::new(0)).collect());
    let uncertain: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let checked = Arc::new(AtomicU64::new(0));

    let worker = |t: u64| {
        let (e, gens, uncertain, stop, reads, checked) = (
            e.clone(),
            gens.clone(),
            uncertain.clone(),
            stop.clone(),
            reads.clone(),
            checked.clone(),
        );
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let vb = Vbid(((i + t) % u64::from(VBS)) as u16);
                let g = &gens[usize::from(vb.0)];
                let k = key(&format!("k{}", i % 64));
                match i % 4 {
                    // Write, tagged with the generation.
                    0 | 1 => {
                        let g0 = g.load(Ordering::SeqCst);
                        if g0 % 2 == 1 {
                            continue;
                        }
                        let value = format!("{g0}:{t}:{i}");
                        uncertain.lock().unwrap().insert(value.clone());
                        let r = e.set(vb, &k, value.clone(), WriteOptions::default());
                        if g.load(Ordering::SeqCst) == g0 || r.is_err() {
                            uncertain.lock().unwrap().remove(&value);
                        }
                    }
                    // Read through the engine.
                    2 => {
                        let g0 = g.load(Ordering::SeqCst);
                        let r = e.get(vb, &k);
                        let g1 = g.load(Ordering::SeqCst);
                        reads.fetch_add(1, Ordering::Relaxed);
                        match r {
                            Ok(item) if g0 == g1 && g0 % 2 == 0 => {
                                let v = String::from_utf8(item.value.to_vec()).unwrap();
                                if !uncertain.lock().unwrap().contains(&v) {
                                    let tag: u64 = v.split(':').next().unwrap().parse().unwrap();
                                    assert_eq!(
                                        tag, g0,
                                        "{vb} gen {g0} read {v}: another incarnation's data"
                                    );
                                    checked.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(_)
                            | Err(EngineError::KeyNotFound | EngineError::NotMyVbucket(_)) => {}
                            Err(EngineError::TemporaryFailure(_)) => {}
                            Err(other) => panic!("{other}"),
                        }
                    }
                    // Scan the persisted data through a guard.
                    _ => {
                        let g0 = g.load(Ordering::SeqCst);
                        let Ok(guard) = e.vbucket(vb) else { continue };
                        let g1 = g.load(Ordering::SeqCst);
                        let mut seen = Vec::new();
                        let mut scan = guard
                            .store()
                            .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
                            .unwrap();
                        scan.run(&mut |d| {
                            seen.push(String::from_utf8(d.value.to_vec()).unwrap());
                            ScanControl::Continue
                        })
                        .unwrap();
                        let g2 = g.load(Ordering::SeqCst);
                        if g0 == g2 && g0 == g1 && g0 % 2 == 0 {
                            let unc = uncertain.lock().unwrap();
                            for v in seen.iter().filter(|v| !unc.contains(*v)) {
                                let tag: u64 = v.split(':').next().unwrap().parse().unwrap();
                                assert_eq!(tag, g0, "{vb} scan at gen {g0} found {v}");
                                checked.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }
        })
    };
    let workers: Vec<_> = (0..3).map(worker).collect();
    for c in 0..cycles {
        let vb = Vbid((c % u64::from(VBS)) as u16);
        let g = &gens[usize::from(vb.0)];
        g.fetch_add(1, Ordering::SeqCst);
        e.delete_vbucket(vb).unwrap();
        e.create_vbucket(vb, VbState::Active).unwrap();
        g.fetch_add(1, Ordering::SeqCst);
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    e.wait_for_deletions();
    let destroyed = e.deleter().destroyed_total();
    let failed: Vec<_> = e
        .deleter()
        .destroyed()
        .into_iter()
        .filter(|d| d.error.is_some())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(destroyed, cycles);
    let e = Arc::into_inner(e).expect("workers are done");
    e.shutdown().unwrap();
    let left = files(dir.path());
    assert_eq!(
        left.len(),
        usize::from(VBS),
        "one file per live vbucket: {left:?}"
    );
    eprintln!(
        "{cycles} delete/recreate cycles, {} reads, {} values checked against their generation",
        reads.load(Ordering::Relaxed),
        checked.load(Ordering::Relaxed)
    );
}

/// A crash while a deleted vbucket is still held by a guard: at warmup the
/// vbucket stays deleted (its files were marked at delete time).
#[test]
fn deleted_vbucket_held_by_a_guard_does_not_come_back_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), couch(), 1);
    let e = &o.engine;
    e.create_vbucket(Vbid(4), VbState::Active).unwrap();
    e.create_vbucket(Vbid(5), VbState::Active).unwrap();
    e.set(Vbid(4), &key("a"), "v", WriteOptions::default())
        .unwrap();
    e.flush().unwrap();
    let guard = e.vbucket(Vbid(4)).unwrap();
    e.delete_vbucket(Vbid(4)).unwrap();
    // The guard keeps working on the deleted incarnation.
    assert!(guard.store().get(&key("a")).unwrap().is_some());
    // "Crash": what is on disk now, with the guard still holding the
    // deleted incarnation, is what a restart finds. (A copy of the
    // directory stands for the disk after a crash: the running instance
    // keeps its lock on the original.)
    let image = tempfile::tempdir().unwrap();
    common::copy_tree(dir.path(), image.path());
    drop(guard);
    drop(o);
    let dir = image;
    let o = open(dir.path(), couch(), 1);
    assert!(matches!(
        o.engine.vbucket(Vbid(4)),
        Err(EngineError::NotMyVbucket(_))
    ));
    assert!(o.engine.vbucket(Vbid(5)).is_ok());
    assert_eq!(
        files(dir.path()),
        ["5.couch.1"],
        "the marked file was removed at startup"
    );
}
