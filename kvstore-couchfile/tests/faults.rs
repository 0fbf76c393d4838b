//! Counting syncs through the I/O layer, and failing each write and each
//! sync in turn (redb's crash-consistency idea). After any failure, and
//! without a reopen: reads serve exactly the acknowledged commits, and once
//! the fault is gone commits work again. After a reopen: a consistent
//! prefix holding every acknowledged commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{CompactionConfig, KvStore, Seqno, StoreError, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore, FaultInjector};
use std::sync::Arc;
use std::sync::atomic::Ordering;

fn quiet() -> CouchConfig {
    CouchConfig {
        background: false,
        ..CouchConfig::default()
    }
}

#[test]
fn one_sync_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(dir.path(), quiet()).unwrap();
    let stats = store.io_stats();
    let vb = store.create(Vbid(0)).unwrap();
    let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
    let (syncs, writes) = (stats.syncs(), stats.writes.load(Ordering::Relaxed));
    let commits = 50;
    for b in 0..commits {
        vb.commit(common::batch(b)).unwrap();
    }
    assert_eq!(stats.syncs() - syncs, commits, "one sync per commit");
    assert_eq!(
        stats.writes.load(Ordering::Relaxed) - writes,
        commits,
        "one write per commit (preallocation rides in the same write)"
    );
    let s = stats.syncs();
    assert!(cvb.checkpoint().unwrap());
    assert_eq!(stats.syncs() - s, 1, "one sync per checkpoint");
    let s = stats.syncs();
    vb.rollback(Seqno(40 * common::DOCS_PER_BATCH)).unwrap();
    assert_eq!(stats.syncs() - s, 1, "one sync per rollback");
    vb.compact(&CompactionConfig::default()).unwrap();
    let s = stats.syncs();
    vb.commit(common::batch(40)).unwrap();
    assert_eq!(
        stats.syncs() - s,
        1,
        "still one sync per commit after compaction"
    );
    common::verify(&*vb).unwrap();
}

#[derive(Debug, Clone, Copy)]
enum Point {
    Write,
    Sync,
}

/// Runs the workload with the `n`th write or sync failing. Returns false
/// once `n` is past the last I/O call of the workload.
fn run_with_failure(point: Point, n: u64) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let faults = FaultInjector::new();
    let config = CouchConfig {
        faults: Some(Arc::clone(&faults)),
        // Small segments, so rolls to new segments and reclamation of old
        // ones are among the failure points.
        segment_bytes: 64 << 10,
        ..quiet()
    };
    let store = CouchStore::open(dir.path(), config.clone()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
    for b in 0..3 {
        vb.commit(common::batch(b)).unwrap();
    }
    let mut acked: u64 = 2;
    match point {
        Point::Write => faults.fail_write_in(n),
        Point::Sync => faults.fail_sync_in(n),
    }
    let step = |what: &str, r: Result<(), StoreError>| -> Option<StoreError> {
        match r {
            Ok(()) => None,
            Err(e) => {
                eprintln!("{point:?} {n}: {what} failed: {e}");
                Some(e)
            }
        }
    };
    let mut failed = None;
    'work: {
        for b in 3..7 {
            if let Some(e) = step("commit", vb.commit(common::batch(b)).map(|_| ())) {
                failed = Some(("commit", e));
                break 'work;
            }
            acked = b;
        }
        if let Some(e) = step("checkpoint", cvb.checkpoint().map(|_| ())) {
            failed = Some(("checkpoint", e));
            break 'work;
        }
        if let Some(e) = step(
            "compact",
            vb.compact(&CompactionConfig {
                drop_deletes: true,
                ..CompactionConfig::default()
            })
            .map(|_| ()),
        ) {
            failed = Some(("compact", e));
            break 'work;
        }
        for b in 7..9 {
            if let Some(e) = step("commit", vb.commit(common::batch(b)).map(|_| ())) {
                failed = Some(("commit", e));
                break 'work;
            }
            acked = b;
        }
        // Back to the state after batch 7: a commit after the compaction,
        // in the rollback window.
        match vb.rollback(Seqno(8 * common::DOCS_PER_BATCH)) {
            Ok(r) => assert!(!r.to_zero && r.high_seqno == Seqno(80), "{r:?}"),
            Err(e) => {
                eprintln!("{point:?} {n}: rollback failed: {e}");
                failed = Some(("rollback", e));
                break 'work;
            }
        }
        acked = 7;
        if let Some(e) = step("commit", vb.commit(common::batch(8)).map(|_| ())) {
            failed = Some(("commit", e));
            break 'work;
        }
        acked = 8;
    }
    let fired = !faults.armed();
    if let Some((what, e)) = &failed {
        assert!(fired, "{what} failed without an injected fault: {e}");
        // No reopen: reads serve exactly what was acknowledged (a failed
        // rollback changed nothing), and the store takes commits again.
        let last = common::verify(&*vb)
            .unwrap_or_else(|e| panic!("{point:?} {n}: reads after a failed {what}: {e}"))
            .expect("batches 0-2 were acknowledged");
        let expect = if *what == "rollback" { 8 } else { acked };
        assert_eq!(
            last, expect,
            "{point:?} {n}: after a failed {what} the store serves batch {last}"
        );
        vb.commit(common::batch(last + 1))
            .unwrap_or_else(|e| panic!("{point:?} {n}: commit after a failed {what}: {e}"));
        acked = last + 1;
        assert_eq!(common::verify(&*vb).unwrap(), Some(acked));
    }
    drop(cvb);
    drop(vb);
    drop(store);
    faults.clear();
    let store = CouchStore::open(dir.path(), config).unwrap();
    let found = store.discover().unwrap();
    assert_eq!(found.len(), 1, "{point:?} {n}: {found:?}");
    let vb = store.open(found[0].0, found[0].1).unwrap();
    let last = common::verify(&*vb)
        .unwrap()
        .expect("batches 0-2 were acknowledged");
    assert!(
        last >= acked,
        "{point:?} {n}: batch {acked} was acknowledged, the store ends at {last}"
    );
    // The store takes new commits after the reopen.
    vb.commit(common::batch(last + 1)).unwrap();
    common::verify(&*vb).unwrap();
    fired
}

#[test]
fn failure_at_every_write_and_sync_point() {
    for point in [Point::Write, Point::Sync] {
        let mut n = 0;
        while run_with_failure(point, n) {
            n += 1;
            assert!(
                n < 2000,
                "the workload should have a bounded number of {point:?}s"
            );
        }
        eprintln!("{point:?}: failed each of {n} points");
        assert!(n >= 10, "{point:?}: only {n} points");
    }
}

/// `close` lets go of the directory at once: a second instance opens it
/// without waiting, sees every acknowledged commit, and the closed
/// instance's handles refuse further calls with a typed error.
#[test]
fn close_releases_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    for b in 0..5 {
        vb.commit(common::batch(b)).unwrap();
    }
    store.close().unwrap();
    store.close().unwrap();
    assert!(matches!(
        vb.commit(common::batch(5)),
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        vb.get(&common::key("b0-0")),
        Err(StoreError::Closed)
    ));
    assert!(matches!(store.create(Vbid(1)), Err(StoreError::Closed)));
    // The closed instance is still alive: had it kept its lock, this open
    // would fail once its wait for the lock ran out.
    let again = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vbs = again.discover().unwrap();
    let vb2 = again.open(Vbid(0), vbs[0].1).unwrap();
    assert_eq!(
        common::verify(&*vb2).unwrap(),
        Some(4),
        "every commit acknowledged"
    );
    vb2.commit(common::batch(5)).unwrap();
    drop(vb);
    drop(store);
}
