//! Tests specific to the RocksDB backend: the rollback window, the
//! injected sync failure, the layout's isolation and typed errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::RocksFactory;
use kvstore_core::testkit::{
    Harness, StoreFactory, all_by_key, doc, key, scan_seqnos, seqnos, tomb,
};
use kvstore_core::{
    CommitBatch, CompactionConfig, DiskKey, Document, KvStore, LocalOp, ScanControl, ScanOptions,
    Seqno, StoreError, VbStore, Vbid,
};
use kvstore_rocks::{RocksConfig, RocksStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Rollback within the window is exact; one commit further goes to zero and
/// reports every key.
#[test]
fn rollback_beyond_window_goes_to_zero() {
    let f = RocksFactory::with_window(3);
    let h = Harness::new(&f);
    let vb = h.store().create(Vbid(0)).unwrap();
    for s in 1..=6u64 {
        vb.commit(CommitBatch::new().item(doc(&key(&format!("k{}", s % 4)), s, "v")))
            .unwrap();
    }
    // Three commits back (6, 5, 4 undone) is inside the window.
    let r = vb.rollback(Seqno(3)).unwrap();
    assert!(!r.to_zero);
    assert_eq!(r.high_seqno, Seqno(3));
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [1, 2, 3]);
    // No history is left: any further rollback empties the revision.
    let r = vb.rollback(Seqno(2)).unwrap();
    assert!(r.to_zero);
    assert_eq!(r.high_seqno, Seqno(0));
    assert_eq!(r.discarded.len(), 3);
    assert!(scan_seqnos(&*vb, 0, u64::MAX, true).is_empty());
    let info = vb.info().unwrap();
    assert_eq!((info.live_items, info.high_seqno), (0, Seqno(0)));
    vb.commit(CommitBatch::new().item(doc(&key("again"), 1, "v")))
        .unwrap();
}

/// A zero window keeps no history at all.
#[test]
fn zero_window_always_rolls_back_to_zero() {
    let f = RocksFactory::with_window(0);
    let h = Harness::new(&f);
    let vb = h.store().create(Vbid(0)).unwrap();
    vb.commit(CommitBatch::new().item(doc(&key("a"), 1, "v")))
        .unwrap();
    vb.commit(CommitBatch::new().item(doc(&key("b"), 2, "v")))
        .unwrap();
    let r = vb.rollback(Seqno(1)).unwrap();
    assert!(r.to_zero);
}

/// The model test again with a window of 2 commits, so rollbacks beyond
/// the window happen often.
#[test]
fn model_with_small_window() {
    kvstore_core::testkit::model::model_random_operations(&RocksFactory::with_window(2));
}

/// After an injected sync failure the commit is on disk (the failure is
/// reported after the write) and the handle refuses everything.
#[test]
fn injected_failure_poisons_every_call() {
    let f = RocksFactory::default();
    let mut h = Harness::new(&f);
    let vb = h.store().create(Vbid(0)).unwrap();
    assert!(f.inject_sync_failure(h.dir()));
    let err = vb
        .commit(CommitBatch::new().item(doc(&key("a"), 1, "a")))
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    for e in [
        vb.info().unwrap_err(),
        vb.rollback(Seqno(0)).unwrap_err(),
        vb.compact(&CompactionConfig::default()).unwrap_err(),
        vb.seqno_scan(Seqno(0), Seqno(9), ScanOptions::default())
            .err()
            .unwrap(),
    ] {
        assert!(e.is_poisoned(), "{e}");
    }
    // Opening the same revision on the same store gives a fresh handle on
    // what RocksDB holds (contract c7); the poisoned one stays poisoned for
    // whoever still holds it.
    let again = h.store().open(Vbid(0), vb.revision()).unwrap();
    assert!(
        !Arc::ptr_eq(&vb, &again),
        "a poisoned handle is not handed out"
    );
    assert!(vb.get(&key("a")).unwrap_err().is_poisoned());
    assert!(again.get(&key("a")).unwrap().is_some());
    let rev = vb.revision();
    drop((vb, again));
    h.reopen();
    let vb = h.store().open(Vbid(0), rev).unwrap();
    assert!(vb.get(&key("a")).unwrap().is_some());
}

/// Two vbuckets and two revisions of one vbucket share the instance but
/// never each other's keys, and destroy range-deletes exactly one.
#[test]
fn prefixes_isolate_vbuckets() {
    let f = RocksFactory::default();
    let h = Harness::new(&f);
    let a = h.store().create(Vbid(1)).unwrap();
    let b = h.store().create(Vbid(256)).unwrap();
    let a2 = h.store().create(Vbid(1)).unwrap();
    for (i, vb) in [&a, &b, &a2].into_iter().enumerate() {
        vb.commit(
            CommitBatch::new()
                .item(doc(&key("same"), 1, &format!("{i}")))
                .local(LocalOp::Set {
                    name: "_local/x".into(),
                    value: format!("{i}").into(),
                }),
        )
        .unwrap();
    }
    h.store().destroy(Vbid(1), a.revision()).unwrap();
    for (i, vb) in [(1, &b), (2, &a2)] {
        assert_eq!(
            &vb.get(&key("same")).unwrap().unwrap().value[..],
            format!("{i}").as_bytes()
        );
        assert_eq!(vb.list_local().unwrap().len(), 1);
        assert_eq!(vb.info().unwrap().live_items, 1);
    }
    assert!(matches!(
        a.get(&key("same")).unwrap_err(),
        StoreError::Deleted { .. }
    ));
}

/// A scan parked across a rollback still sees its snapshot.
#[test]
fn scan_pinned_across_rollback() {
    let f = RocksFactory::default();
    let h = Harness::new(&f);
    let vb = h.store().create(Vbid(0)).unwrap();
    for s in 1..=10u64 {
        vb.commit(CommitBatch::new().item(doc(&key(&format!("k{s}")), s, "v")))
            .unwrap();
    }
    let mut scan = vb
        .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    let mut got = Vec::new();
    scan.run(&mut |d| {
        got.push(d.meta.seqno.0);
        ScanControl::Yield
    })
    .unwrap();
    vb.rollback(Seqno(4)).unwrap();
    scan.run(&mut |d| {
        got.push(d.meta.seqno.0);
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [1, 2, 3, 4]);
}

/// The store works without sync and without compression too.
#[test]
fn other_settings_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig {
        sync: false,
        compression: false,
        bloom_bits_per_key: 0.0,
        ..RocksConfig::default()
    };
    let store = RocksStore::open(dir.path(), config).unwrap();
    let vb = store.create(Vbid(3)).unwrap();
    vb.commit(CommitBatch::new().item(doc(&key("a"), 1, "a")))
        .unwrap();
    vb.compact(&CompactionConfig::default()).unwrap();
    assert!(vb.get(&key("a")).unwrap().is_some());
    assert_eq!(store.backend_name(), "rocksdb");
}

/// A directory written by an unknown layout version is refused with a
/// typed error.
#[test]
fn unknown_format_version_is_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path(), RocksConfig::default()).unwrap();
        store
            .db()
            .put(b"kvstore-rocks/format", 99u32.to_le_bytes())
            .unwrap();
    }
    let err = RocksStore::open(dir.path(), RocksConfig::default()).unwrap_err();
    let c = err.corruption().expect("a corruption error");
    assert_eq!(c.kind, kvstore_core::CorruptionKind::UnknownVersion(99));
}

/// The documents, local documents and high seqno after one commit.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct State {
    docs: BTreeMap<DiskKey, Document>,
    local: BTreeMap<String, Bytes>,
    high: u64,
}

fn read_state(vb: &dyn VbStore) -> State {
    let docs = all_by_key(vb)
        .into_iter()
        .map(|d| (d.key.clone(), d))
        .collect();
    let local = vb.list_local().unwrap().into_iter().collect();
    State {
        docs,
        local,
        high: vb.info().unwrap().high_seqno.0,
    }
}

/// Random commits (inserts, overwrites, deletes, local documents, some
/// without items) and rollbacks: while the store still holds the undo
/// records of the commits to undo, a rollback must land exactly on the
/// newest commit at or below its target (the conformance model also
/// accepts a rollback to zero anywhere, so it cannot check this).
#[test]
fn rollback_within_window_is_exact() {
    let window = 8;
    let f = RocksFactory::with_window(window);
    let mut h = Harness::new(&f);
    let mut vb = h.store().create(Vbid(0)).unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut history = vec![State::default()];
    // Undo records the store holds: one per commit, up to the window.
    let mut records = 0usize;
    let (mut exact, mut to_zero) = (0, 0);
    for step in 0..600 {
        let cur = history.last().unwrap().clone();
        match rng.random_range(0..20) {
            0..=12 => {
                let mut batch = CommitBatch::new();
                let mut seqno = cur.high;
                for _ in 0..rng.random_range(0..5) {
                    seqno += 1;
                    let k = key(&format!("k{}", rng.random_range(0..16)));
                    batch = batch.item(if rng.random_bool(0.25) {
                        tomb(&k, seqno, 1)
                    } else {
                        doc(&k, seqno, &format!("v{seqno}"))
                    });
                }
                if rng.random_bool(0.3) {
                    let name = format!("_local/{}", rng.random_range(0..3));
                    batch = batch.local(if rng.random_bool(0.3) {
                        LocalOp::Delete { name }
                    } else {
                        LocalOp::Set {
                            name,
                            value: format!("s{step}").into(),
                        }
                    });
                }
                if batch.is_empty() {
                    continue;
                }
                let mut next = cur.clone();
                for d in &batch.items {
                    next.docs.insert(d.key.clone(), d.clone());
                    next.high = d.meta.seqno.0;
                }
                for op in &batch.local {
                    match op {
                        LocalOp::Set { name, value } => {
                            next.local.insert(name.clone(), value.clone());
                        }
                        LocalOp::Delete { name } => {
                            next.local.remove(name);
                        }
                    }
                }
                vb.commit(batch).unwrap();
                history.push(next);
                records = (records + 1).min(window);
            }
            13..=17 => {
                let target = cur.high.saturating_sub(rng.random_range(0..12));
                let r = vb.rollback(Seqno(target)).unwrap();
                let newest = history.iter().rposition(|s| s.high <= target).unwrap();
                let back = history.len() - 1 - newest;
                let want = if back <= records {
                    assert!(
                        !r.to_zero,
                        "step {step}: {back} commits back, {records} records"
                    );
                    exact += usize::from(back > 0);
                    records -= back;
                    history.truncate(newest + 1);
                    history[newest].clone()
                } else {
                    assert!(r.to_zero, "step {step}: past the history, not to zero");
                    to_zero += 1;
                    records = 0;
                    history = vec![State::default()];
                    State::default()
                };
                assert_eq!(r.high_seqno.0, want.high, "step {step}");
                let discarded: BTreeSet<&DiskKey> = r.discarded.iter().collect();
                for k in cur.docs.keys().chain(want.docs.keys()) {
                    if cur.docs.get(k) != want.docs.get(k) {
                        assert!(discarded.contains(k), "step {step}: {k} not reported");
                    }
                }
            }
            _ => {
                let rev = vb.revision();
                drop(vb);
                h.reopen();
                vb = h.store().open(Vbid(0), rev).unwrap();
            }
        }
        let want = history.last().unwrap();
        assert_eq!(&read_state(&*vb), want, "step {step}");
        let info = vb.info().unwrap();
        let live = want.docs.values().filter(|d| !d.is_deleted()).count() as u64;
        assert_eq!(
            (info.live_items, info.deleted_items),
            (live, want.docs.len() as u64 - live)
        );
        let by_seqno = seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true));
        let mut expect: Vec<u64> = want.docs.values().map(|d| d.meta.seqno.0).collect();
        expect.sort_unstable();
        assert_eq!(by_seqno, expect, "step {step}");
    }
    assert!(
        exact > 20 && to_zero > 0,
        "exact {exact}, to zero {to_zero}"
    );
}

/// A destroy racing a writer: the writer gets `Deleted`, and no commit of
/// the destroyed revision survives in any column family.
#[test]
fn destroy_racing_commits_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), RocksConfig::default()).unwrap();
    let vb = store.create(Vbid(7)).unwrap();
    let rev = vb.revision();
    let committed = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            for seqno in 1u64.. {
                let batch = CommitBatch::new()
                    .item(doc(&key(&format!("k{}", seqno % 50)), seqno, "v"))
                    .local(LocalOp::Set {
                        name: "_local/n".into(),
                        value: seqno.to_string().into(),
                    });
                match vb.commit(batch) {
                    Ok(_) => committed.store(seqno, std::sync::atomic::Ordering::SeqCst),
                    Err(StoreError::Deleted { .. }) => return seqno,
                    Err(e) => panic!("{e}"),
                }
            }
            unreachable!()
        });
        while committed.load(std::sync::atomic::Ordering::SeqCst) < 100 {
            std::thread::yield_now();
        }
        store.destroy(Vbid(7), rev).unwrap();
        writer.join().unwrap();
    });
    let mut prefix = 7u16.to_be_bytes().to_vec();
    prefix.extend_from_slice(&rev.0.to_be_bytes());
    let db = store.db();
    for cf in ["bykey", "byseqno", "local", "undo", "meta"] {
        let handle = db.cf_handle(cf).unwrap();
        let left = db
            .prefix_iterator_cf(handle, &prefix)
            .map(Result::unwrap)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .count();
        assert_eq!(left, 0, "{cf} still holds keys of the destroyed revision");
    }
    drop(vb);
    let fresh = store.create(Vbid(7)).unwrap();
    assert!(fresh.revision() > rev);
    assert!(all_by_key(&*fresh).is_empty());
}

/// Point reads of `bykey` and the other families made by `f` on this
/// thread (RocksDB's per-thread perf counters: one per get, one per
/// multi-get).
fn reads_during(f: impl FnOnce()) -> u64 {
    use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut ctx = PerfContext::default();
    ctx.reset();
    f();
    let n = ctx.metric(PerfMetric::GetFromMemtableCount);
    set_perf_stats(PerfStatsLevel::Disable);
    n
}

/// A commit whose every prior is known reads nothing before it writes:
/// inserts (`Absent`), updates and deletes (`Present`), local documents
/// and the vbucket state alike, while a commit without priors reads its
/// keys.
#[test]
fn commits_with_known_priors_read_nothing() {
    use kvstore_core::{Prior, VbState, VbucketState};
    let f = RocksFactory::default();
    let h = Harness::new(&f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let state = VbucketState {
        state: VbState::Active,
        ..VbucketState::default()
    };
    let keys: Vec<DiskKey> = (0..50).map(|i| key(&format!("k{i:02}"))).collect();
    let mut stored: BTreeMap<DiskKey, Document> = BTreeMap::new();
    let mut seqno = 0;
    for round in 0..4u64 {
        let mut batch = CommitBatch::new()
            .local(LocalOp::Set {
                name: "_local/round".into(),
                value: round.to_string().into(),
            })
            .vbstate(state.clone());
        for k in keys
            .iter()
            .skip(usize::from(round == 3))
            .step_by(1 + usize::from(round == 3))
        {
            seqno += 1;
            batch = batch.item(if round == 2 && seqno % 3 == 0 {
                tomb(k, seqno, 1)
            } else {
                doc(k, seqno, &format!("v{seqno}"))
            });
        }
        let priors = batch
            .items
            .iter()
            .map(|d| Prior::from_read(stored.get(&d.key).cloned()))
            .collect();
        let n = reads_during(|| {
            vb.commit_with_priors(batch.clone(), priors).unwrap();
        });
        assert_eq!(n, 0, "round {round}: the commit read {n} times");
        for d in batch.items {
            stored.insert(d.key.clone(), d);
        }
    }
    // Without priors the keys are looked up (the counter does count).
    seqno += 1;
    let plain = doc(&keys[0], seqno, "plain");
    let n = reads_during(|| {
        vb.commit(CommitBatch::new().item(plain.clone())).unwrap();
    });
    assert!(n > 0, "a commit without priors looks its keys up");
    stored.insert(plain.key.clone(), plain);
    // The counts kept from the priors are exact.
    let info = vb.info().unwrap();
    let deleted = stored.values().filter(|d| d.is_deleted()).count() as u64;
    assert_eq!(
        (info.live_items, info.deleted_items),
        (50 - deleted, deleted)
    );
    assert_eq!(
        info.data_bytes,
        all_by_key(&*vb)
            .iter()
            .map(Document::body_size)
            .sum::<u64>()
    );
}

/// Bytes the `byseqno` family holds for revision `rev` of vbucket 0.
fn seqno_index_bytes(store: &RocksStore, rev: kvstore_core::Revision) -> usize {
    let mut prefix = 0u16.to_be_bytes().to_vec();
    prefix.extend_from_slice(&rev.0.to_be_bytes());
    let db = store.db();
    let cf = db.cf_handle("byseqno").unwrap();
    db.prefix_iterator_cf(cf, &prefix)
        .map(Result::unwrap)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// Overwrites leave their old by-seqno entries behind (scans skip them);
/// a compaction drops them, so the index shrinks back to about one entry
/// per key, and every scan still gives one entry per key, the newest.
#[test]
fn compaction_drops_stale_seqno_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), RocksConfig::default()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let keys: Vec<DiskKey> = (0..100).map(|i| key(&format!("key-{i:03}"))).collect();
    let mut seqno = 0;
    for _ in 0..30 {
        let mut batch = CommitBatch::new();
        for k in &keys {
            seqno += 1;
            batch = batch.item(doc(k, seqno, "v"));
        }
        vb.commit(batch).unwrap();
    }
    let before = seqno_index_bytes(&store, vb.revision());
    vb.compact(&CompactionConfig::default()).unwrap();
    let after = seqno_index_bytes(&store, vb.revision());
    assert!(
        after * 10 < before,
        "the index kept {after} of {before} bytes"
    );
    let scanned = seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true));
    assert_eq!(scanned, ((seqno - 99)..=seqno).collect::<Vec<_>>());
    // And again after a reopen.
    let rev = vb.revision();
    drop((vb, store));
    let store = RocksStore::open(dir.path(), RocksConfig::default()).unwrap();
    let vb = store.open(Vbid(0), rev).unwrap();
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), scanned);
}

/// Compactions racing commits and rollbacks that bring overwritten
/// versions back: a compaction that judged an entry stale before a
/// rollback made it current again must not drop it, so after every
/// rollback each key is still in the by-seqno scan.
#[test]
fn compaction_racing_rollbacks_keeps_restored_entries() {
    let dir = tempfile::tempdir().unwrap();
    let config = RocksConfig {
        sync: false,
        ..RocksConfig::default()
    };
    let store = RocksStore::open(dir.path(), config).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let keys: Vec<DiskKey> = (0..200).map(|i| key(&format!("r{i:03}"))).collect();
    // Keys never rewritten make each compaction's scan take a while, so
    // rollbacks land between its snapshot and its write.
    let still: Vec<DiskKey> = (0..20_000).map(|i| key(&format!("s{i:05}"))).collect();
    let load = |vb: &dyn VbStore| {
        let mut base = CommitBatch::new();
        for (i, k) in keys.iter().chain(&still).enumerate() {
            base = base.item(doc(k, i as u64 + 1, "base"));
        }
        vb.commit(base).unwrap();
    };
    load(&*vb);
    let mut rng = StdRng::seed_from_u64(15);
    /// Stops the compactor when the checks end, failed or not.
    struct Done<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                vb.compact(&CompactionConfig::default()).unwrap();
            }
        });
        let _done = Done(&done);
        for round in 0..150 {
            let high = vb.info().unwrap().high_seqno.0;
            let mut batch = CommitBatch::new();
            for (i, k) in keys.iter().enumerate() {
                batch = batch.item(doc(k, high + i as u64 + 1, "over"));
            }
            vb.commit(batch).unwrap();
            // Give a compaction time to take its snapshot of the overwrite.
            std::thread::sleep(std::time::Duration::from_micros(rng.random_range(0..3000)));
            let r = vb.rollback(Seqno(high)).unwrap();
            let got = scan_seqnos(&*vb, 0, u64::MAX, true);
            if r.to_zero {
                // A compaction ended the history first: start again.
                assert!(got.is_empty(), "round {round}");
                load(&*vb);
                continue;
            }
            assert_eq!(
                got.len(),
                keys.len() + still.len(),
                "round {round}: keys lost from the index"
            );
            assert!(got.iter().all(|d| &d.value[..] == b"base"), "round {round}");
        }
    });
}
