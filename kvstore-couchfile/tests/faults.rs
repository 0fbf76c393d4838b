//! Counting syncs through the I/O layer, and failing each write and each
//! sync in turn (redb's crash-consistency idea): after any failure the store
//! reopens to a consistent prefix holding every acknowledged commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{CompactionConfig, KvStore, Seqno, StoreError, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore, FaultInjector};
use std::sync::Arc;

#[test]
fn one_sync_per_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let stats = store.io_stats();
    let vb = store.create(Vbid(0)).unwrap();
    let (syncs, writes) = (
        stats.syncs(),
        stats.writes.load(std::sync::atomic::Ordering::Relaxed),
    );
    let commits = 50;
    for b in 0..commits {
        vb.commit(common::batch(b)).unwrap();
    }
    assert_eq!(stats.syncs() - syncs, commits, "one sync per commit");
    assert_eq!(
        stats.writes.load(std::sync::atomic::Ordering::Relaxed) - writes,
        commits,
        "one write per commit"
    );
    let s = stats.syncs();
    vb.rollback(Seqno(40 * common::DOCS_PER_BATCH)).unwrap();
    assert_eq!(stats.syncs() - s, 1, "one sync per rollback");
    let s = stats.syncs();
    vb.compact(&CompactionConfig::default()).unwrap();
    // The bulk copy, the header after the catch-up, and the directory after
    // the rename.
    assert_eq!(stats.syncs() - s, 3, "syncs per compaction");
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
        final_catchup_docs: 0,
        ..CouchConfig::default()
    };
    let store = CouchStore::open(dir.path(), config.clone()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
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
        // Back to the state after batch 7, a commit made after the
        // compaction, so still in the rollback chain.
        match vb.rollback(Seqno(8 * common::DOCS_PER_BATCH)) {
            Ok(r) => assert!(!r.to_zero && r.high_seqno == Seqno(80), "{r:?}"),
            Err(e) => {
                // A failed rollback is all or nothing: it may have landed.
                acked = 7;
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
        if *what != "compact" {
            match point {
                // A failed sync of the live file poisons the handle.
                Point::Sync => {
                    let again = vb.get(&common::key("b0-0")).unwrap_err();
                    assert!(again.is_poisoned(), "{point:?} {n}: after {what}: {again}");
                }
                // A failed write does not: the handle reads on, and the
                // next commit is written where the failed one was.
                Point::Write => {
                    assert!(
                        vb.get(&common::key("b0-0")).unwrap().is_some(),
                        "{point:?} {n}: after {what}"
                    );
                    if *what == "commit" {
                        vb.commit(common::batch(acked + 1))
                            .unwrap_or_else(|e| panic!("{point:?} {n}: commit again: {e}"));
                        acked += 1;
                    }
                }
            }
        }
    }
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
    fired
}

#[test]
fn failure_at_every_write_and_sync_point() {
    for point in [Point::Write, Point::Sync] {
        let mut n = 0;
        while run_with_failure(point, n) {
            n += 1;
            assert!(
                n < 1000,
                "the workload should have a bounded number of {point:?}s"
            );
        }
        eprintln!("{point:?}: failed each of {n} points");
        assert!(n >= 10, "{point:?}: only {n} points");
    }
}
