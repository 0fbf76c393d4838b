//! Named conformance cases, one or more per numbered item of DESIGN §4.

use super::{Harness, StoreFactory, all_by_key, doc, key, key_in, scan_seqnos, seqnos, tomb};
use crate::doc::Document;
use crate::doc::{LocalOp, VbState, VbucketState};
use crate::error::StoreError;
use crate::key::DiskKey;
use crate::store::{
    CancelToken, CommitBatch, CompactionConfig, DroppedCollection, KeyRange, Prior, ScanControl,
    ScanOptions, ScanStatus, VbStore,
};
use crate::sync::Arc;
use crate::types::{Cas, CollectionId, Seqno, Vbid};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};

fn commit(vb: &dyn VbStore, batch: CommitBatch) {
    vb.commit(batch).expect("commit");
}

fn values(docs: &[crate::Document]) -> Vec<(String, u64, bool)> {
    docs.iter()
        .map(|d| {
            (
                String::from_utf8_lossy(d.key.user_key()).into_owned(),
                d.meta.seqno.0,
                d.is_deleted(),
            )
        })
        .collect()
}

fn local_set(name: &str, value: &str) -> LocalOp {
    LocalOp::Set {
        name: name.to_owned(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn vbstate(state: VbState, cas: u64) -> VbucketState {
    VbucketState {
        state,
        max_cas: Cas(cas),
        ..VbucketState::default()
    }
}

/// §4.1: a commit that returned Ok is there after a reopen, data, tombstones,
/// metadata and all.
pub fn c1_commit_survives_reopen(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let (a, b) = (key("a"), key("b"));
    let revision = {
        let vb = h.store().create(Vbid(5)).unwrap();
        let mut d = doc(&a, 1, "alpha");
        d.meta.cas = Cas(0x1234);
        d.meta.flags = 0xdead_beef;
        d.meta.expiry = 77;
        d.meta.datatype = crate::Datatype(crate::Datatype::JSON);
        d.meta.rev_seqno = crate::RevSeqno(9);
        commit(&*vb, CommitBatch::new().item(d).item(tomb(&b, 2, 100)));
        vb.revision()
    };
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), vec![(Vbid(5), revision)]);
    let vb = h.store().open(Vbid(5), revision).unwrap();
    let got = vb.get(&a).unwrap().expect("a survives");
    assert_eq!(&got.value[..], b"alpha");
    assert_eq!(got.meta.cas, Cas(0x1234));
    assert_eq!(got.meta.flags, 0xdead_beef);
    assert_eq!(got.meta.expiry, 77);
    assert_eq!(got.meta.datatype.0, crate::Datatype::JSON);
    assert_eq!(got.meta.rev_seqno.0, 9);
    assert_eq!(got.meta.seqno, Seqno(1));
    let t = vb.get(&b).unwrap().expect("tombstone survives");
    assert!(t.is_deleted());
    assert_eq!(t.meta.expiry, 100);
    let info = vb.info().unwrap();
    assert_eq!(info.high_seqno, Seqno(2));
    assert_eq!((info.live_items, info.deleted_items), (1, 1));
}

/// §4.1: a batch the store rejects leaves nothing behind: no item, no local
/// document, no state.
pub fn c1_rejected_batch_changes_nothing(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 10, "a")));
    let bad = CommitBatch::new()
        .item(doc(&key("b"), 11, "b"))
        .item(doc(&key("c"), 5, "c"))
        .local(local_set("_local/x", "x"))
        .vbstate(vbstate(VbState::Active, 1));
    let err = vb.commit(bad).unwrap_err();
    assert!(
        matches!(err, StoreError::SeqnoNotIncreasing { .. }),
        "{err}"
    );
    assert!(vb.get(&key("b")).unwrap().is_none());
    assert!(vb.get_local("_local/x").unwrap().is_none());
    assert!(vb.vbstate().unwrap().is_none());
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(10));
    // The store still works.
    commit(&*vb, CommitBatch::new().item(doc(&key("b"), 11, "b")));
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [10, 11]);
}

/// §4.1: local documents and the vbucket state commit with the data, and
/// survive a reopen.
pub fn c1_local_docs_and_vbstate_commit_with_data(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let rev = {
        let vb = h.store().create(Vbid(1)).unwrap();
        commit(
            &*vb,
            CommitBatch::new()
                .item(doc(&key("a"), 1, "a"))
                .local(local_set("_local/one", "1"))
                .local(local_set("_local/two", "2"))
                .vbstate(vbstate(VbState::Replica, 42)),
        );
        commit(
            &*vb,
            CommitBatch::new()
                .item(doc(&key("b"), 2, "b"))
                .local(LocalOp::Delete {
                    name: "_local/one".into(),
                }),
        );
        vb.revision()
    };
    h.reopen();
    let vb = h.store().open(Vbid(1), rev).unwrap();
    assert!(vb.get_local("_local/one").unwrap().is_none());
    assert_eq!(&vb.get_local("_local/two").unwrap().unwrap()[..], b"2");
    let state = vb.vbstate().unwrap().expect("state persisted");
    assert_eq!(state.state, VbState::Replica);
    assert_eq!(state.max_cas, Cas(42));
    assert_eq!(state.high_seqno, Seqno(2), "the store fills the high seqno");
    let names: Vec<String> = vb
        .list_local()
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.contains(&"_local/two".to_owned()), "{names:?}");
    assert!(
        names.contains(&crate::VBSTATE_LOCAL_NAME.to_owned()),
        "{names:?}"
    );
}

/// §4.1: an empty batch commits nothing and fails nothing.
pub fn c1_empty_commit_changes_nothing(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 3, "a")));
    let info = vb.commit(CommitBatch::new()).unwrap();
    assert_eq!(info.high_seqno, Seqno(3));
    assert_eq!(info.items, 0);
    assert_eq!(all_by_key(&*vb).len(), 1);
}

/// §4.2: a seqno at or below the high seqno is refused.
pub fn c2_seqnos_must_increase(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 5, "a")));
    for s in [5, 4, 0] {
        let err = vb
            .commit(CommitBatch::new().item(doc(&key("b"), s, "b")))
            .unwrap_err();
        match err {
            StoreError::SeqnoNotIncreasing { seqno, high, vbid } => {
                assert_eq!((seqno, high, vbid), (Seqno(s), Seqno(5), Vbid(0)));
            }
            other => panic!("expected SeqnoNotIncreasing, got {other}"),
        }
    }
    let err = vb
        .commit(
            CommitBatch::new()
                .item(doc(&key("b"), 6, "b"))
                .item(doc(&key("c"), 6, "c")),
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch { .. }), "{err}");
    commit(&*vb, CommitBatch::new().item(doc(&key("b"), 6, "b")));
}

/// §4.2: an update removes the key's old by-seqno entry.
pub fn c2_update_replaces_seqno_entry(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let (a, b) = (key("a"), key("b"));
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&a, 1, "a1"))
            .item(doc(&b, 2, "b1")),
    );
    commit(&*vb, CommitBatch::new().item(doc(&a, 3, "a2")));
    commit(&*vb, CommitBatch::new().item(tomb(&b, 4, 9)));
    commit(&*vb, CommitBatch::new().item(doc(&b, 5, "b2")));
    let by_seqno = scan_seqnos(&*vb, 0, u64::MAX, true);
    assert_eq!(seqnos(&by_seqno), [3, 5]);
    assert_eq!(&by_seqno[0].value[..], b"a2");
    let info = vb.info().unwrap();
    assert_eq!((info.live_items, info.deleted_items), (2, 0));
    assert_eq!(
        info.data_bytes,
        by_seqno.iter().map(|d| d.body_size()).sum::<u64>()
    );
}

/// §4.2: when a batch holds one key twice, the highest seqno wins.
pub fn c2_duplicate_key_keeps_highest_seqno(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let a = key("a");
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&a, 7, "newest"))
            .item(doc(&a, 2, "oldest"))
            .item(doc(&a, 4, "middle")),
    );
    let all = scan_seqnos(&*vb, 0, u64::MAX, true);
    assert_eq!(seqnos(&all), [7]);
    assert_eq!(&all[0].value[..], b"newest");
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(7));
}

/// §4.2: tombstones stay, readable and counted, until compaction purges them.
pub fn c2_tombstones_stay_until_compaction(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let (a, b) = (key("a"), key("b"));
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&a, 1, "a"))
            .item(doc(&b, 2, "b")),
    );
    commit(&*vb, CommitBatch::new().item(tomb(&a, 3, 10)));
    commit(&*vb, CommitBatch::new().item(doc(&b, 4, "b2")));
    assert!(vb.get(&a).unwrap().unwrap().is_deleted());
    assert_eq!(vb.info().unwrap().deleted_items, 1);
    vb.compact(&CompactionConfig::default()).unwrap();
    assert!(
        vb.get(&a).unwrap().unwrap().is_deleted(),
        "a compaction that purges nothing keeps tombstones"
    );
    vb.compact(&CompactionConfig {
        drop_deletes: true,
        ..CompactionConfig::default()
    })
    .unwrap();
    assert!(vb.get(&a).unwrap().is_none());
    assert_eq!(vb.info().unwrap().deleted_items, 0);
}

/// The exact prior of every item of `batch` in a store holding `state`.
fn priors_from(state: &BTreeMap<DiskKey, Document>, batch: &CommitBatch) -> Vec<Prior> {
    batch
        .items
        .iter()
        .map(|d| Prior::from_read(state.get(&d.key).cloned()))
        .collect()
}

/// Applies a committed batch to a model of the documents.
fn apply_items(state: &mut BTreeMap<DiskKey, Document>, batch: &CommitBatch) {
    let mut items: Vec<&Document> = batch.items.iter().collect();
    items.sort_by_key(|d| d.meta.seqno);
    for d in items {
        state.insert(d.key.clone(), d.clone());
    }
}

/// What a by-seqno scan of `[start, end]` must deliver from `state`.
fn expected_scan(
    state: &BTreeMap<DiskKey, Document>,
    start: u64,
    end: u64,
    include_deleted: bool,
) -> Vec<Document> {
    let mut want: Vec<Document> = state
        .values()
        .filter(|d| (start..=end).contains(&d.meta.seqno.0))
        .filter(|d| include_deleted || !d.is_deleted())
        .cloned()
        .collect();
    want.sort_by_key(|d| d.meta.seqno);
    want
}

/// A whole by-seqno scan that yields after every `every` documents and is
/// resumed until done.
fn scan_resumed(vb: &dyn VbStore, every: usize) -> Vec<Document> {
    let mut scan = vb
        .seqno_scan(
            Seqno(0),
            Seqno(u64::MAX),
            ScanOptions {
                include_deleted: true,
                ..ScanOptions::default()
            },
        )
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..100_000 {
        let mut n = 0;
        let st = scan
            .run(&mut |d| {
                got.push(d);
                n += 1;
                if n == every {
                    ScanControl::Yield
                } else {
                    ScanControl::Continue
                }
            })
            .unwrap();
        if st == ScanStatus::Done {
            return got;
        }
    }
    panic!("a resumed scan does not finish");
}

/// §4.2, §4.3: after many updates of the same keys (batches of one, a few
/// and all of them; tombstones and re-creations; a key twice in a batch;
/// half the commits with exact priors, half without), every by-seqno scan,
/// whole, partial or resumed, delivers one entry per key, its newest
/// version; a scan pinned halfway still delivers its own snapshot; the
/// counts are exact.
pub fn c2_scans_after_many_updates(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let keys: Vec<DiskKey> = (0..40).map(|i| key(&format!("hot{i:02}"))).collect();
    let mut state: BTreeMap<DiskKey, Document> = BTreeMap::new();
    let mut seqno = 0u64;
    let mut commits = 0u64;
    let mut pinned = None;
    for round in 0..30u64 {
        let touched: Vec<&DiskKey> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| !(*i as u64 + round).is_multiple_of(3) || round.is_multiple_of(5))
            .map(|(_, k)| k)
            .collect();
        let per_commit = match round % 4 {
            0 => 1,
            1 => 7,
            2 => touched.len(),
            _ => 3,
        };
        for chunk in touched.chunks(per_commit) {
            let mut batch = CommitBatch::new();
            for k in chunk {
                seqno += 1;
                batch = batch.item(if seqno.is_multiple_of(11) {
                    tomb(k, seqno, 1)
                } else {
                    doc(k, seqno, &format!("{k}@{seqno}"))
                });
            }
            if round % 6 == 2 {
                seqno += 1;
                batch = batch.item(doc(chunk[0], seqno, &format!("again@{seqno}")));
            }
            commits += 1;
            if commits.is_multiple_of(2) {
                let priors = priors_from(&state, &batch);
                vb.commit_with_priors(batch.clone(), priors).unwrap();
            } else {
                commit(&*vb, batch.clone());
            }
            apply_items(&mut state, &batch);
        }
        if round == 14 {
            let scan = vb
                .seqno_scan(
                    Seqno(0),
                    Seqno(u64::MAX),
                    ScanOptions {
                        include_deleted: true,
                        ..ScanOptions::default()
                    },
                )
                .unwrap();
            pinned = Some((state.clone(), scan));
        }
    }

    let all = scan_seqnos(&*vb, 0, u64::MAX, true);
    let distinct: BTreeSet<&DiskKey> = all.iter().map(|d| &d.key).collect();
    assert_eq!(distinct.len(), all.len(), "one by-seqno entry per key");
    assert_eq!(all.len(), keys.len());
    assert_eq!(all, expected_scan(&state, 0, u64::MAX, true));
    assert_eq!(
        scan_seqnos(&*vb, 0, u64::MAX, false),
        expected_scan(&state, 0, u64::MAX, false)
    );
    for (start, end) in [
        (1, seqno / 2),
        (seqno / 3, 2 * seqno / 3),
        (seqno - 20, seqno),
        (seqno, seqno),
        (seqno + 1, u64::MAX),
    ] {
        assert_eq!(
            scan_seqnos(&*vb, start, end, true),
            expected_scan(&state, start, end, true),
            "scan of [{start}, {end}]"
        );
    }
    for every in [1, 3] {
        assert_eq!(scan_resumed(&*vb, every), all, "yielding every {every}");
    }
    let info = vb.info().unwrap();
    let live = state.values().filter(|d| !d.is_deleted()).count() as u64;
    assert_eq!(
        (info.live_items, info.deleted_items),
        (live, keys.len() as u64 - live)
    );
    assert_eq!(
        info.data_bytes,
        state.values().map(Document::body_size).sum::<u64>()
    );
    assert_eq!(info.high_seqno, Seqno(seqno));

    let (then, mut scan) = pinned.expect("pinned halfway");
    let mut got = Vec::new();
    let st = scan
        .run(&mut |d| {
            got.push(d);
            ScanControl::Continue
        })
        .unwrap();
    assert_eq!(st, ScanStatus::Done);
    assert_eq!(got, expected_scan(&then, 0, u64::MAX, true), "pinned scan");
}

/// Everything a caller can observe of `vb`, for comparing two stores that
/// took the same commits (file sizes aside).
#[derive(Debug, PartialEq)]
struct Observed {
    by_key: Vec<Document>,
    by_seqno: Vec<Document>,
    live_by_seqno: Vec<Document>,
    local: Vec<(String, Bytes)>,
    vbstate: Option<VbucketState>,
    counts: (Seqno, Seqno, u64, u64, u64),
}

fn observe(vb: &dyn VbStore) -> Observed {
    let info = vb.info().unwrap();
    Observed {
        by_key: all_by_key(vb),
        by_seqno: scan_seqnos(vb, 0, u64::MAX, true),
        live_by_seqno: scan_seqnos(vb, 0, u64::MAX, false),
        local: vb.list_local().unwrap(),
        vbstate: vb.vbstate().unwrap(),
        counts: (
            info.high_seqno,
            info.purge_seqno,
            info.live_items,
            info.deleted_items,
            info.data_bytes,
        ),
    }
}

/// Batch `b` of [`c2_priors_give_the_same_results`]: sets, updates,
/// tombstones and re-creations over 30 keys, now and then a key twice, a
/// local document and the vbucket state; seqnos continue from `seqno`.
fn mixed_batch(b: u64, seqno: &mut u64) -> CommitBatch {
    let mut batch = CommitBatch::new();
    let n = 1 + (b * 7) % 12;
    for j in 0..n {
        *seqno += 1;
        let k = key(&format!("k{:02}", (b * 5 + j * 3) % 30));
        batch = batch.item(if (b + j) % 5 == 4 {
            tomb(&k, *seqno, 1)
        } else {
            doc(&k, *seqno, &"v".repeat(((b + j) % 9) as usize))
        });
    }
    if b % 4 == 1 {
        *seqno += 1;
        batch = batch.item(doc(&key(&format!("k{:02}", (b * 5) % 30)), *seqno, "dup"));
    }
    if b.is_multiple_of(3) {
        batch = batch.local(local_set("_local/m", &format!("m{b}")));
    }
    if b % 7 == 3 {
        batch = batch.local(LocalOp::Delete {
            name: "_local/m".into(),
        });
    }
    if b.is_multiple_of(2) {
        batch = batch.vbstate(vbstate(VbState::Active, b));
    }
    batch
}

/// §4.2: commits with exact priors ([`VbStore::commit_with_priors`]) leave
/// everything a caller can observe as commits without them do: reads,
/// scans, counts, local documents, what a rollback restores and reports,
/// compaction, and all of it after a reopen.
pub fn c2_priors_give_the_same_results(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let plain = h.store().create(Vbid(0)).unwrap();
    let hinted = h.store().create(Vbid(1)).unwrap();
    let mut state: BTreeMap<DiskKey, Document> = BTreeMap::new();
    let mut seqno = 0u64;
    let mut highs = Vec::new();
    let run = |from: u64,
               to: u64,
               state: &mut BTreeMap<DiskKey, Document>,
               seqno: &mut u64,
               highs: &mut Vec<Seqno>| {
        for b in from..to {
            let batch = mixed_batch(b, seqno);
            let priors = priors_from(state, &batch);
            let a = plain.commit(batch.clone()).unwrap();
            let c = hinted.commit_with_priors(batch.clone(), priors).unwrap();
            assert_eq!(
                (a.high_seqno, a.items),
                (c.high_seqno, c.items),
                "batch {b}"
            );
            apply_items(state, &batch);
            assert_eq!(observe(&*plain), observe(&*hinted), "after batch {b}");
            highs.push(a.high_seqno);
        }
    };
    run(0, 24, &mut state, &mut seqno, &mut highs);

    // Roll both back 1 commit, go on, then roll back 3 commits, all made
    // since the first rollback (a rollback point is as far back as some
    // backends keep history: couchfile's window starts there).
    let window = f.exact_rollback_window();
    let mut next = 24;
    for back in [1usize, 3] {
        let target = highs[highs.len() - 1 - back];
        let a = plain.rollback(target).unwrap();
        let c = hinted.rollback(target).unwrap();
        let as_set =
            |r: &crate::RollbackResult| r.discarded.iter().cloned().collect::<BTreeSet<_>>();
        assert_eq!((a.high_seqno, a.to_zero), (c.high_seqno, c.to_zero));
        assert_eq!(
            as_set(&a),
            as_set(&c),
            "rollback to {target} reports the same keys"
        );
        if back < window {
            assert!(
                !a.to_zero && a.high_seqno == target,
                "inside the window: to {target}, got {} (to zero: {})",
                a.high_seqno,
                a.to_zero
            );
        }
        assert_eq!(
            observe(&*plain),
            observe(&*hinted),
            "after rollback to {target}"
        );
        highs.truncate(highs.len() - back);
        // Go on from the rolled-back state, with priors that describe it.
        state = all_by_key(&*plain)
            .into_iter()
            .map(|d| (d.key.clone(), d))
            .collect();
        seqno = plain.info().unwrap().high_seqno.0;
        run(next, next + 8, &mut state, &mut seqno, &mut highs);
        next += 8;
    }

    let cfg = CompactionConfig {
        drop_deletes: true,
        ..CompactionConfig::default()
    };
    let a = plain.compact(&cfg).unwrap();
    let c = hinted.compact(&cfg).unwrap();
    assert_eq!(
        (a.tombstones_purged, a.purge_seqno),
        (c.tombstones_purged, c.purge_seqno)
    );
    assert_eq!(observe(&*plain), observe(&*hinted), "after compaction");
    state = all_by_key(&*plain)
        .into_iter()
        .map(|d| (d.key.clone(), d))
        .collect();
    run(40, 48, &mut state, &mut seqno, &mut highs);

    let revs = (plain.revision(), hinted.revision());
    let before = observe(&*plain);
    drop((plain, hinted));
    h.reopen();
    let plain = h.store().open(Vbid(0), revs.0).unwrap();
    let hinted = h.store().open(Vbid(1), revs.1).unwrap();
    assert_eq!(observe(&*plain), before, "after reopen");
    assert_eq!(observe(&*hinted), before, "after reopen, with priors");
    let target = highs[highs.len() - 3];
    let a = plain.rollback(target).unwrap();
    let c = hinted.rollback(target).unwrap();
    assert_eq!((a.high_seqno, a.to_zero), (c.high_seqno, c.to_zero));
    assert_eq!(observe(&*plain), observe(&*hinted), "rollback after reopen");
}

/// §4.3: get returns tombstones, flagged as such, and `None` for absent keys.
pub fn c3_get_flags_tombstones(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut t = tomb(&key("gone"), 1, 5);
    t.meta.deleted = Some(crate::DeleteSource::Ttl);
    commit(
        &*vb,
        CommitBatch::new().item(t).item(doc(&key("here"), 2, "x")),
    );
    let got = vb.get(&key("gone")).unwrap().unwrap();
    assert_eq!(got.meta.deleted, Some(crate::DeleteSource::Ttl));
    assert!(!vb.get(&key("here")).unwrap().unwrap().is_deleted());
    assert!(vb.get(&key("never")).unwrap().is_none());
    // The same user key in another collection is another document.
    assert!(vb.get(&key_in(CollectionId(8), "here")).unwrap().is_none());
}

/// §4.3: get-many answers in the order asked.
pub fn c3_get_many_keeps_order(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 0..50u64 {
        batch = batch.item(doc(&key(&format!("k{i:02}")), i + 1, &format!("v{i}")));
    }
    commit(&*vb, batch);
    let ask = [key("k30"), key("nope"), key("k01"), key("k49"), key("k30")];
    let got = vb.get_many(&ask).unwrap();
    let got: Vec<Option<String>> = got
        .into_iter()
        .map(|d| d.map(|d| String::from_utf8(d.value.to_vec()).unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            Some("v30".into()),
            None,
            Some("v1".into()),
            Some("v49".into()),
            Some("v30".into())
        ]
    );
}

/// §4.3: a key range is `[start, end)` in key order.
pub fn c3_key_range_is_half_open(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for (i, k) in ["e", "a", "c", "b", "d"].iter().enumerate() {
        batch = batch.item(doc(&key(k), i as u64 + 1, k));
    }
    commit(&*vb, batch);
    let range = KeyRange::new(key("b").as_bytes(), key("d").as_bytes());
    let mut got = Vec::new();
    vb.key_range(&range, &mut |d| {
        got.push(String::from_utf8_lossy(d.key.user_key()).into_owned());
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(got, ["b", "c"]);
    let mut first = Vec::new();
    let status = vb
        .key_range(&KeyRange::all(), &mut |d| {
            first.push(d.key.clone());
            ScanControl::Stop
        })
        .unwrap();
    assert_eq!(status, ScanStatus::Stopped);
    assert_eq!(first, [key("a")]);
    let empty = KeyRange::new(key("d").as_bytes(), key("b").as_bytes());
    let status = vb
        .key_range(&empty, &mut |_| panic!("nothing in an empty range"))
        .unwrap();
    assert_eq!(status, ScanStatus::Done);
}

/// §4.3: a collection's keys form one range.
pub fn c3_key_range_by_collection(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let cids = [0u32, 8, 9, 0x7f, 0x80, 0x100, 0x4000];
    let mut batch = CommitBatch::new();
    let mut seqno = 0;
    for cid in cids {
        for k in ["x", "y"] {
            seqno += 1;
            batch = batch.item(doc(&key_in(CollectionId(cid), k), seqno, k));
        }
    }
    commit(&*vb, batch);
    for cid in cids {
        let mut got = Vec::new();
        vb.key_range(&KeyRange::collection(CollectionId(cid)), &mut |d| {
            got.push((d.key.collection(), d.key.user_key().to_vec()));
            ScanControl::Continue
        })
        .unwrap();
        assert_eq!(
            got,
            [
                (CollectionId(cid), b"x".to_vec()),
                (CollectionId(cid), b"y".to_vec())
            ],
            "collection {cid:#x}"
        );
    }
}

/// §4.3: a by-seqno scan covers `[start, end]`, both ends included.
pub fn c3_seqno_scan_is_inclusive(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=10u64 {
        batch = batch.item(doc(&key(&format!("k{i}")), i * 10, "v"));
    }
    commit(&*vb, batch);
    assert_eq!(seqnos(&scan_seqnos(&*vb, 20, 50, true)), [20, 30, 40, 50]);
    assert_eq!(seqnos(&scan_seqnos(&*vb, 21, 49, true)), [30, 40]);
    assert_eq!(seqnos(&scan_seqnos(&*vb, 100, 100, true)), [100]);
    assert!(scan_seqnos(&*vb, 101, u64::MAX, true).is_empty());
    assert!(scan_seqnos(&*vb, 50, 20, true).is_empty());
}

/// §4.3: a scan sees the snapshot it began on, whatever is committed (or
/// compacted) after.
pub fn c3_scan_pinned_to_snapshot(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=20u64 {
        batch = batch.item(doc(&key(&format!("k{i:02}")), i, "old"));
    }
    commit(&*vb, batch);
    let mut scan = vb
        .seqno_scan(Seqno(1), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    assert_eq!(scan.snapshot_high_seqno(), Seqno(20));
    let mut got = Vec::new();
    let st = scan
        .run(&mut |d| {
            got.push(d);
            ScanControl::Yield
        })
        .unwrap();
    assert_eq!(st, ScanStatus::Yielded);
    // Overwrite everything, delete some, add new keys, and compact.
    let mut batch = CommitBatch::new();
    for i in 1..=20u64 {
        let k = key(&format!("k{i:02}"));
        batch = batch.item(if i % 3 == 0 {
            tomb(&k, 100 + i, 1)
        } else {
            doc(&k, 100 + i, "new")
        });
    }
    batch = batch.item(doc(&key("extra"), 200, "new"));
    commit(&*vb, batch);
    vb.compact(&CompactionConfig {
        drop_deletes: true,
        ..CompactionConfig::default()
    })
    .unwrap();
    let st = scan
        .run(&mut |d| {
            got.push(d);
            ScanControl::Continue
        })
        .unwrap();
    assert_eq!(st, ScanStatus::Done);
    assert_eq!(seqnos(&got), (1..=20).collect::<Vec<_>>());
    assert!(got.iter().all(|d| &d.value[..] == b"old"));
    // A new scan sees the new state.
    let now = scan_seqnos(&*vb, 0, u64::MAX, false);
    assert!(now.iter().all(|d| &d.value[..] == b"new"));
    assert_eq!(now.len(), 15);
}

/// §4.3: a scan can yield after any document and resume after it.
pub fn c3_scan_yields_and_resumes(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=100u64 {
        batch = batch.item(doc(&key(&format!("k{i:03}")), i, "v"));
    }
    commit(&*vb, batch);
    let mut scan = vb
        .seqno_scan(Seqno(1), Seqno(100), ScanOptions::default())
        .unwrap();
    let mut got = Vec::new();
    let mut runs = 0;
    loop {
        runs += 1;
        let mut in_run = 0;
        let st = scan
            .run(&mut |d| {
                got.push(d.meta.seqno.0);
                in_run += 1;
                if in_run == 7 {
                    ScanControl::Yield
                } else {
                    ScanControl::Continue
                }
            })
            .unwrap();
        assert_eq!(scan.last_seqno(), got.last().map(|s| Seqno(*s)));
        if st == ScanStatus::Done {
            break;
        }
        assert_eq!(st, ScanStatus::Yielded);
        assert!(runs < 100, "the scan makes progress");
    }
    assert_eq!(got, (1..=100).collect::<Vec<_>>());
    assert_eq!(runs, 15);
    // After Done, further runs deliver nothing.
    let st = scan.run(&mut |_| panic!("nothing after done")).unwrap();
    assert_eq!(st, ScanStatus::Done);
}

/// §4.3: a visitor can stop a scan, and so can a cancel token from another
/// thread.
pub fn c3_scan_stop_and_cancel(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=30u64 {
        batch = batch.item(doc(&key(&format!("k{i:02}")), i, "v"));
    }
    commit(&*vb, batch);
    let mut scan = vb
        .seqno_scan(Seqno(1), Seqno(30), ScanOptions::default())
        .unwrap();
    let mut n = 0;
    let st = scan
        .run(&mut |_| {
            n += 1;
            if n == 5 {
                ScanControl::Stop
            } else {
                ScanControl::Continue
            }
        })
        .unwrap();
    assert_eq!((st, n), (ScanStatus::Stopped, 5));
    let st = scan
        .run(&mut |_| panic!("a stopped scan stays stopped"))
        .unwrap();
    assert_ne!(st, ScanStatus::Yielded);

    let token = CancelToken::new();
    let mut scan = vb
        .seqno_scan(
            Seqno(1),
            Seqno(30),
            ScanOptions {
                cancel: Some(token.clone()),
                ..ScanOptions::default()
            },
        )
        .unwrap();
    let mut n = 0;
    let st = scan
        .run(&mut |_| {
            n += 1;
            if n == 3 {
                let t = token.clone();
                std::thread::spawn(move || t.cancel()).join().unwrap();
            }
            ScanControl::Continue
        })
        .unwrap();
    assert_eq!((st, n), (ScanStatus::Stopped, 3));
}

/// §4.3: scans skip tombstones unless asked, and can leave values out.
pub fn c3_scan_options(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key("a"), 1, "value-a"))
            .item(tomb(&key("b"), 2, 1))
            .item(doc(&key("c"), 3, "value-c")),
    );
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, 10, false)), [1, 3]);
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, 10, true)), [1, 2, 3]);
    let mut scan = vb
        .seqno_scan(
            Seqno(0),
            Seqno(10),
            ScanOptions {
                keys_only: true,
                ..ScanOptions::default()
            },
        )
        .unwrap();
    let mut got = Vec::new();
    scan.run(&mut |d| {
        got.push(d);
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|d| d.value.is_empty()));
    assert_eq!(got[1].key, key("c"));
}

/// §4.3: values larger than a block, and enough keys for a deep tree, read
/// back exactly through every read path.
pub fn c3_large_values_and_many_keys(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let value = |i: u64| -> Vec<u8> {
        let len = if i.is_multiple_of(97) {
            20_000 + i as usize
        } else {
            10 + (i as usize % 200)
        };
        (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
    };
    let n = 5000u64;
    let rev = {
        let vb = h.store().create(Vbid(9)).unwrap();
        for chunk in (1..=n).collect::<Vec<_>>().chunks(1000) {
            let mut batch = CommitBatch::new();
            for &i in chunk {
                let k = key(&format!("key-{:08}", (i * 7919) % 100_000));
                batch = batch.item(crate::Document::new(k, Seqno(i), value(i)));
            }
            commit(&*vb, batch);
        }
        vb.revision()
    };
    h.reopen();
    let vb = h.store().open(Vbid(9), rev).unwrap();
    let by_seqno = scan_seqnos(&*vb, 0, u64::MAX, false);
    assert_eq!(by_seqno.len(), n as usize);
    for d in &by_seqno {
        assert_eq!(d.value, value(d.meta.seqno.0), "seqno {}", d.meta.seqno);
    }
    let by_key = all_by_key(&*vb);
    assert_eq!(by_key.len(), n as usize);
    assert!(by_key.windows(2).all(|w| w[0].key < w[1].key));
    for i in (1..=n).step_by(37) {
        let k = key(&format!("key-{:08}", (i * 7919) % 100_000));
        assert_eq!(vb.get(&k).unwrap().unwrap().value, value(i));
    }
    assert_eq!(vb.info().unwrap().live_items, n);
}

/// Commits `n` single-item batches to keys `k0..k{n-1}`, seqnos `base+1..`.
fn commit_series(vb: &dyn VbStore, base: u64, n: u64) {
    for i in 0..n {
        commit(
            vb,
            CommitBatch::new().item(doc(
                &key(&format!("k{i}")),
                base + i + 1,
                &format!("v{}", base + i + 1),
            )),
        );
    }
}

/// §4.4: rollback restores exactly the newest commit at or below the seqno,
/// within the backend's exact window.
pub fn c4_rollback_to_exact_commit(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let window = f.exact_rollback_window().min(8) as u64;
    commit_series(&*vb, 0, 10);
    let target = 10 - window + 1;
    let before = scan_seqnos(&*vb, 0, target, true);
    let r = vb.rollback(Seqno(target)).unwrap();
    assert!(!r.to_zero);
    assert_eq!(r.high_seqno, Seqno(target));
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(target));
    let after = scan_seqnos(&*vb, 0, u64::MAX, true);
    assert_eq!(values(&after), values(&before));
    // Rolling back to the current high seqno or beyond changes nothing.
    let r = vb.rollback(Seqno(target + 5)).unwrap();
    assert_eq!(r.high_seqno, Seqno(target));
    assert!(r.discarded.is_empty());
}

/// §4.4: a seqno between two commits restores the older one.
pub fn c4_rollback_between_commits_goes_to_older(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 10, "a")));
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key("b"), 20, "b"))
            .item(doc(&key("c"), 30, "c")),
    );
    let r = vb.rollback(Seqno(25)).unwrap();
    assert_eq!(r.high_seqno, Seqno(10));
    assert_eq!(values(&all_by_key(&*vb)), [("a".to_owned(), 10, false)]);
}

/// §4.4: rollback reports every key whose state it changed.
pub fn c4_rollback_reports_discarded_keys(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&a, 1, "a1"))
            .item(doc(&b, 2, "b1")),
    );
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&a, 3, "a2"))
            .item(doc(&c, 4, "c1")),
    );
    commit(
        &*vb,
        CommitBatch::new()
            .item(tomb(&b, 5, 1))
            .item(doc(&d, 6, "d1")),
    );
    let r = vb.rollback(Seqno(2)).unwrap();
    assert_eq!(r.high_seqno, Seqno(2));
    let mut discarded = r.discarded.clone();
    discarded.sort();
    discarded.dedup();
    assert_eq!(discarded, [a.clone(), b.clone(), c.clone(), d.clone()]);
    assert_eq!(&vb.get(&a).unwrap().unwrap().value[..], b"a1");
    assert!(!vb.get(&b).unwrap().unwrap().is_deleted());
    assert!(vb.get(&c).unwrap().is_none());
    assert!(vb.get(&d).unwrap().is_none());
    let info = vb.info().unwrap();
    assert_eq!((info.live_items, info.deleted_items), (2, 0));
}

/// §4.4: rollback brings back the local documents and state of that commit.
pub fn c4_rollback_restores_local_and_vbstate(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key("a"), 1, "a"))
            .local(local_set("_local/m", "first"))
            .vbstate(vbstate(VbState::Active, 100)),
    );
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key("b"), 2, "b"))
            .local(local_set("_local/m", "second"))
            .local(local_set("_local/n", "new"))
            .vbstate(vbstate(VbState::Replica, 200)),
    );
    vb.rollback(Seqno(1)).unwrap();
    assert_eq!(&vb.get_local("_local/m").unwrap().unwrap()[..], b"first");
    assert!(vb.get_local("_local/n").unwrap().is_none());
    let s = vb.vbstate().unwrap().unwrap();
    assert_eq!(
        (s.state, s.max_cas, s.high_seqno),
        (VbState::Active, Cas(100), Seqno(1))
    );
}

/// §4.4: after a rollback the caller reuses the discarded seqnos, and no
/// trace of the discarded versions shows.
pub fn c4_rollback_then_reuse_seqnos(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit_series(&*vb, 0, 6);
    vb.rollback(Seqno(3)).unwrap();
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key("k0"), 4, "again"))
            .item(doc(&key("z"), 5, "z")),
    );
    let all = scan_seqnos(&*vb, 0, u64::MAX, true);
    assert_eq!(
        values(&all),
        [
            ("k1".to_owned(), 2, false),
            ("k2".to_owned(), 3, false),
            ("k0".to_owned(), 4, false),
            ("z".to_owned(), 5, false)
        ]
    );
    assert_eq!(&vb.get(&key("k0")).unwrap().unwrap().value[..], b"again");
    assert!(vb.get(&key("k4")).unwrap().is_none());
}

/// §4.4: a rollback is durable.
pub fn c4_rollback_survives_reopen(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let rev = {
        let vb = h.store().create(Vbid(2)).unwrap();
        commit_series(&*vb, 0, 5);
        vb.rollback(Seqno(2)).unwrap();
        vb.revision()
    };
    h.reopen();
    let vb = h.store().open(Vbid(2), rev).unwrap();
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [1, 2]);
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(2));
    commit(&*vb, CommitBatch::new().item(doc(&key("n"), 3, "n")));
}

/// §4.4: a rollback past a compaction lands on a real earlier commit, or on
/// zero, never on a mixture.
pub fn c4_rollback_past_compaction_is_consistent(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit_series(&*vb, 0, 5);
    vb.compact(&CompactionConfig::default()).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("late"), 6, "late")));
    let r = vb.rollback(Seqno(3)).unwrap();
    assert!(r.high_seqno <= Seqno(3));
    let all = values(&scan_seqnos(&*vb, 0, u64::MAX, true));
    if r.to_zero {
        assert_eq!(r.high_seqno, Seqno(0));
        assert!(all.is_empty(), "{all:?}");
    } else {
        let expect: Vec<_> = (1..=r.high_seqno.0)
            .map(|s| (format!("k{}", s - 1), s, false))
            .collect();
        assert_eq!(all, expect);
    }
    assert_eq!(vb.info().unwrap().high_seqno, r.high_seqno);
}

/// §4.5: only tombstones deleted before the purge time go.
pub fn c5_purges_only_old_tombstones(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(
        &*vb,
        CommitBatch::new()
            .item(tomb(&key("old"), 1, 100))
            .item(tomb(&key("young"), 2, 300))
            .item(doc(&key("live"), 3, "x")),
    );
    let r = vb
        .compact(&CompactionConfig {
            purge_before_ts: 200,
            ..CompactionConfig::default()
        })
        .unwrap();
    assert_eq!(r.tombstones_purged, 1);
    assert!(vb.get(&key("old")).unwrap().is_none());
    assert!(vb.get(&key("young")).unwrap().unwrap().is_deleted());
    assert!(!vb.get(&key("live")).unwrap().unwrap().is_deleted());
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [2, 3]);
}

/// §4.5: the tombstone at the high seqno is never purged, so the high seqno
/// survives compaction.
pub fn c5_never_purges_high_seqno(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let rev = {
        let vb = h.store().create(Vbid(0)).unwrap();
        commit(&*vb, CommitBatch::new().item(doc(&key("a"), 1, "a")));
        commit(&*vb, CommitBatch::new().item(tomb(&key("a"), 2, 1)));
        let r = vb
            .compact(&CompactionConfig {
                drop_deletes: true,
                ..CompactionConfig::default()
            })
            .unwrap();
        assert_eq!(r.tombstones_purged, 0);
        vb.revision()
    };
    h.reopen();
    let vb = h.store().open(Vbid(0), rev).unwrap();
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(2));
    assert!(vb.get(&key("a")).unwrap().unwrap().is_deleted());
}

/// §4.5: with a purge seqno bound, newer tombstones stay.
pub fn c5_purge_before_seqno_bounds_purging(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=6u64 {
        batch = batch.item(tomb(&key(&format!("t{i}")), i, 1));
    }
    commit(&*vb, batch.item(doc(&key("live"), 7, "x")));
    let r = vb
        .compact(&CompactionConfig {
            drop_deletes: true,
            purge_before_seqno: Some(Seqno(4)),
            ..CompactionConfig::default()
        })
        .unwrap();
    assert_eq!(r.tombstones_purged, 4);
    assert_eq!(r.purge_seqno, Seqno(4));
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [5, 6, 7]);
}

/// §4.5: items of a dropped collection generation go; items of the
/// re-created collection (higher seqnos) and other collections stay.
pub fn c5_purges_dropped_collection_generation(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let c8 = CollectionId(8);
    let c9 = CollectionId(9);
    commit(
        &*vb,
        CommitBatch::new()
            .item(doc(&key_in(c8, "a"), 1, "old"))
            .item(doc(&key_in(c8, "b"), 2, "old"))
            .item(tomb(&key_in(c8, "c"), 3, 1))
            .item(doc(&key_in(c9, "a"), 4, "keep")),
    );
    // Dropped at seqno 5, re-created after; one key written again.
    commit(
        &*vb,
        CommitBatch::new().item(doc(&key_in(c8, "b"), 6, "new")),
    );
    let r = vb
        .compact(&CompactionConfig {
            dropped: vec![DroppedCollection {
                cid: c8,
                end_seqno: Seqno(5),
            }],
            ..CompactionConfig::default()
        })
        .unwrap();
    assert_eq!(r.collection_items_purged, 2);
    assert!(vb.get(&key_in(c8, "a")).unwrap().is_none());
    assert_eq!(
        &vb.get(&key_in(c8, "b")).unwrap().unwrap().value[..],
        b"new"
    );
    assert!(vb.get(&key_in(c8, "c")).unwrap().is_none());
    assert_eq!(
        &vb.get(&key_in(c9, "a")).unwrap().unwrap().value[..],
        b"keep"
    );
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [4, 6]);
    let info = vb.info().unwrap();
    assert_eq!((info.live_items, info.deleted_items), (2, 0));
}

/// §4.5: the purge seqno rises to the highest purged tombstone and persists.
pub fn c5_advances_purge_seqno(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let rev = {
        let vb = h.store().create(Vbid(0)).unwrap();
        commit(
            &*vb,
            CommitBatch::new()
                .item(tomb(&key("a"), 3, 1))
                .item(tomb(&key("b"), 7, 1))
                .item(doc(&key("c"), 9, "c"))
                .vbstate(vbstate(VbState::Active, 1)),
        );
        let r = vb
            .compact(&CompactionConfig {
                drop_deletes: true,
                ..CompactionConfig::default()
            })
            .unwrap();
        assert_eq!(r.purge_seqno, Seqno(7));
        vb.revision()
    };
    h.reopen();
    let vb = h.store().open(Vbid(0), rev).unwrap();
    assert_eq!(vb.info().unwrap().purge_seqno, Seqno(7));
    assert_eq!(vb.vbstate().unwrap().unwrap().purge_seqno, Seqno(7));
}

/// §4.5: commits made while compactions run are all there afterwards, and
/// after a reopen.
pub fn c5_commits_during_compaction_are_kept(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let vb = h.store().create(Vbid(3)).unwrap();
    let mut seed = CommitBatch::new();
    for i in 1..=2000u64 {
        seed = seed.item(doc(&key(&format!("seed{i:05}")), i, "seed-value"));
    }
    commit(&*vb, seed);
    let batches = 150u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut compactions = 0;
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut seqno = 2000;
            for b in 0..batches {
                let mut batch = CommitBatch::new();
                for j in 0..10 {
                    seqno += 1;
                    let k = key(&format!("w{b:04}-{j}"));
                    batch = batch.item(doc(&k, seqno, &format!("v{seqno}")));
                }
                // Rewrite a seed key too, so compaction sees moving data.
                seqno += 1;
                batch = batch.item(doc(&key(&format!("seed{:05}", b + 1)), seqno, "rewritten"));
                vb.commit(batch).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) || compactions < 3 {
            vb.compact(&CompactionConfig::default()).unwrap();
            compactions += 1;
        }
        writer.join().unwrap();
    });
    let check = |vb: &dyn VbStore| {
        let all = all_by_key(vb);
        assert_eq!(all.len() as u64, 2000 + batches * 10);
        for b in 0..batches {
            let got = vb.get(&key(&format!("seed{:05}", b + 1))).unwrap().unwrap();
            assert_eq!(&got.value[..], b"rewritten");
            for j in 0..10 {
                assert!(vb.get(&key(&format!("w{b:04}-{j}"))).unwrap().is_some());
            }
        }
        assert_eq!(vb.info().unwrap().high_seqno, Seqno(2000 + batches * 11));
    };
    check(&*vb);
    let rev = vb.revision();
    drop(vb);
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), vec![(Vbid(3), rev)]);
    check(&*h.store().open(Vbid(3), rev).unwrap());
}

/// §4.5: a cancelled compaction fails with `Cancelled` and changes nothing.
pub fn c5_cancelled_compaction_changes_nothing(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(
        &*vb,
        CommitBatch::new()
            .item(tomb(&key("a"), 1, 1))
            .item(doc(&key("b"), 2, "b")),
    );
    let token = CancelToken::new();
    token.cancel();
    let err = vb
        .compact(&CompactionConfig {
            drop_deletes: true,
            cancel: Some(token),
            ..CompactionConfig::default()
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Cancelled), "{err}");
    assert!(vb.get(&key("a")).unwrap().unwrap().is_deleted());
    commit(&*vb, CommitBatch::new().item(doc(&key("c"), 3, "c")));
    assert_eq!(seqnos(&scan_seqnos(&*vb, 0, u64::MAX, true)), [1, 2, 3]);
}

/// §4.5: compaction reports the size before and after, and reclaims space
/// left by overwrites.
pub fn c5_reports_sizes(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let mut seqno = 0;
    for round in 0..20 {
        let mut batch = CommitBatch::new();
        for i in 0..100 {
            seqno += 1;
            let v = format!("{round}-{}", "x".repeat(100));
            batch = batch.item(doc(&key(&format!("k{i}")), seqno, &v));
        }
        commit(&*vb, batch);
    }
    let r = vb.compact(&CompactionConfig::default()).unwrap();
    assert!(r.bytes_before > 0);
    assert!(
        r.bytes_after <= r.bytes_before,
        "after {} before {}",
        r.bytes_after,
        r.bytes_before
    );
    let info = vb.info().unwrap();
    assert_eq!(info.live_items, 100);
    assert!(info.file_bytes > 0 && info.data_bytes > 0);
}

/// §4.6: each create gets a higher revision.
pub fn c6_create_bumps_revision(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let a = h.store().create(Vbid(4)).unwrap();
    let ra = a.revision();
    let b = h.store().create(Vbid(4)).unwrap();
    assert!(b.revision() > ra);
    h.store().destroy(Vbid(4), ra).unwrap();
    let rb = b.revision();
    drop(b);
    h.store().destroy(Vbid(4), rb).unwrap();
    let c = h.store().create(Vbid(4)).unwrap();
    assert!(c.revision() > rb, "revisions are not reused after destroy");
    let other = h.store().create(Vbid(5)).unwrap();
    assert_eq!(other.vbid(), Vbid(5));
}

/// §4.6: two revisions of one vbucket never see each other's data.
pub fn c6_revisions_are_isolated(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let old = h.store().create(Vbid(7)).unwrap();
    commit(&*old, CommitBatch::new().item(doc(&key("a"), 1, "old")));
    let new = h.store().create(Vbid(7)).unwrap();
    assert!(new.get(&key("a")).unwrap().is_none());
    assert_eq!(new.info().unwrap().high_seqno, Seqno(0));
    commit(&*new, CommitBatch::new().item(doc(&key("b"), 1, "new")));
    commit(&*old, CommitBatch::new().item(doc(&key("c"), 2, "old")));
    assert_eq!(
        values(&all_by_key(&*old)),
        [("a".into(), 1, false), ("c".into(), 2, false)]
    );
    assert_eq!(values(&all_by_key(&*new)), [("b".into(), 1, false)]);
}

/// §4.6: destroy removes exactly one revision.
pub fn c6_destroy_removes_only_that_revision(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let old = h.store().create(Vbid(7)).unwrap();
    commit(&*old, CommitBatch::new().item(doc(&key("a"), 1, "old")));
    let new = h.store().create(Vbid(7)).unwrap();
    commit(&*new, CommitBatch::new().item(doc(&key("b"), 1, "new")));
    let other = h.store().create(Vbid(8)).unwrap();
    commit(&*other, CommitBatch::new().item(doc(&key("c"), 1, "other")));
    let (old_rev, new_rev, other_rev) = (old.revision(), new.revision(), other.revision());
    drop(old);
    h.store().destroy(Vbid(7), old_rev).unwrap();
    assert_eq!(values(&all_by_key(&*new)), [("b".into(), 1, false)]);
    drop((new, other));
    h.reopen();
    let mut found = h.store().discover().unwrap();
    found.sort();
    assert_eq!(found, [(Vbid(7), new_rev), (Vbid(8), other_rev)]);
    let err = h
        .store()
        .destroy(Vbid(7), old_rev)
        .expect_err("already gone");
    assert!(matches!(err, StoreError::NoSuchRevision { .. }), "{err}");
}

/// §4.6: a handle whose revision was destroyed fails with `Deleted`.
pub fn c6_destroyed_handle_fails_cleanly(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(1)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 1, "a")));
    h.store().destroy(Vbid(1), vb.revision()).unwrap();
    let err = vb
        .commit(CommitBatch::new().item(doc(&key("b"), 2, "b")))
        .unwrap_err();
    assert!(matches!(err, StoreError::Deleted { .. }), "{err}");
    match vb.get(&key("a")) {
        Err(StoreError::Deleted { .. }) => {}
        other => panic!("expected Deleted, got {other:?}"),
    }
    // A new incarnation starts empty.
    let fresh = h.store().create(Vbid(1)).unwrap();
    assert!(fresh.get(&key("a")).unwrap().is_none());
}

/// §4.6: a scan that began before a destroy finishes on its snapshot (or
/// reports the deletion); it never sees the next incarnation.
pub fn c6_scan_outlives_destroy(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(1)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=500u64 {
        batch = batch.item(doc(&key(&format!("k{i:04}")), i, "old"));
    }
    commit(&*vb, batch);
    let mut scan = vb
        .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    let mut got = Vec::new();
    scan.run(&mut |d| {
        got.push(d);
        ScanControl::Yield
    })
    .unwrap();
    h.store().destroy(Vbid(1), vb.revision()).unwrap();
    drop(vb);
    let fresh = h.store().create(Vbid(1)).unwrap();
    let mut batch = CommitBatch::new();
    for i in 1..=500u64 {
        batch = batch.item(doc(&key(&format!("k{i:04}")), i, "new"));
    }
    commit(&*fresh, batch);
    match scan.run(&mut |d| {
        got.push(d);
        ScanControl::Continue
    }) {
        Ok(st) => {
            assert_eq!(st, ScanStatus::Done);
            assert_eq!(seqnos(&got), (1..=500).collect::<Vec<_>>());
            assert!(got.iter().all(|d| &d.value[..] == b"old"));
        }
        Err(e) => assert!(
            matches!(
                e,
                StoreError::Deleted { .. } | StoreError::NoSuchRevision { .. }
            ),
            "{e}"
        ),
    }
}

/// §4.6: at startup the newest revision of each vbucket wins and stale ones
/// are removed.
pub fn c6_discover_keeps_newest_and_removes_stale(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let (r1, r2) = {
        // A crash between recreating a vbucket and destroying the old
        // incarnation leaves both behind.
        let a = h.store().create(Vbid(2)).unwrap();
        commit(&*a, CommitBatch::new().item(doc(&key("a"), 1, "old")));
        let b = h.store().create(Vbid(2)).unwrap();
        commit(&*b, CommitBatch::new().item(doc(&key("b"), 1, "new")));
        (a.revision(), b.revision())
    };
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), [(Vbid(2), r2)]);
    let err = h
        .store()
        .open(Vbid(2), r1)
        .err()
        .expect("stale revision gone");
    assert!(matches!(err, StoreError::NoSuchRevision { .. }), "{err}");
    let vb = h.store().open(Vbid(2), r2).unwrap();
    assert_eq!(values(&all_by_key(&*vb)), [("b".into(), 1, false)]);
    drop(vb);
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), [(Vbid(2), r2)]);
}

/// §4.6: a vbucket created after another incarnation compacted still gets a
/// revision above every revision used before.
pub fn c6_create_after_compaction_gets_new_revision(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let vb = h.store().create(Vbid(6)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 1, "a")));
    vb.compact(&CompactionConfig::default()).unwrap();
    vb.compact(&CompactionConfig::default()).unwrap();
    let old = vb.revision();
    let new = h.store().create(Vbid(6)).unwrap();
    assert!(new.revision() > old, "{} vs {}", new.revision(), old);
    let newrev = new.revision();
    drop((vb, new));
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), [(Vbid(6), newrev)]);
}

/// §4.6: opening a revision that does not exist is a typed error.
pub fn c6_open_unknown_revision_is_error(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let err = h
        .store()
        .open(Vbid(3), crate::Revision(99))
        .err()
        .expect("no such revision");
    assert!(matches!(err, StoreError::NoSuchRevision { .. }), "{err}");
    assert!(h.store().discover().unwrap().is_empty());
}

/// §4.6: a revision marked deleted stays readable and writable through its
/// open handle (and pinned scans), but after a restart it is gone, even
/// though it was never destroyed; other revisions are untouched.
pub fn c6_marked_deleted_stays_usable_but_never_comes_back(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let keep = h.store().create(Vbid(1)).unwrap();
    commit(&*keep, CommitBatch::new().item(doc(&key("k"), 1, "keep")));
    let vb = h.store().create(Vbid(2)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 1, "a")));
    let mut scan = vb
        .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    h.store().mark_deleted(Vbid(2), vb.revision()).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("b"), 2, "b")));
    assert_eq!(&vb.get(&key("a")).unwrap().unwrap().value[..], b"a");
    let mut seen = 0;
    scan.run(&mut |_| {
        seen += 1;
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(seen, 1);
    let err = h
        .store()
        .mark_deleted(Vbid(9), crate::Revision(1))
        .expect_err("no such revision");
    assert!(matches!(err, StoreError::NoSuchRevision { .. }), "{err}");
    let keep_rev = keep.revision();
    drop((vb, scan, keep));
    h.reopen();
    assert_eq!(h.store().discover().unwrap(), [(Vbid(1), keep_rev)]);
    // The vbucket can be created again, above every revision used.
    let again = h.store().create(Vbid(2)).unwrap();
    assert!(again.get(&key("a")).unwrap().is_none());
}

/// §4.7: a failed sync refuses its commit and poisons the store until it
/// recovers: either the backend recovers by itself (then the refused commit
/// is wholly absent and later commits succeed), or every call fails with
/// `Poisoned` until the store is reopened. Reads may carry on meanwhile,
/// and only ever see acknowledged commits. After a reopen the failed
/// commit is wholly there or wholly absent, and commits work.
pub fn c7_failed_sync_poisons_until_reopen(f: &dyn StoreFactory) {
    let mut h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    commit(&*vb, CommitBatch::new().item(doc(&key("a"), 1, "a")));
    if !f.inject_sync_failure(h.dir()) {
        eprintln!("c7_failed_sync_poisons_until_reopen: this backend cannot inject sync failures");
        return;
    }
    let err = vb
        .commit(
            CommitBatch::new()
                .item(doc(&key("b"), 2, "b"))
                .item(doc(&key("c"), 3, "c")),
        )
        .unwrap_err();
    assert!(
        !err.is_poisoned(),
        "the first error is the sync failure: {err}"
    );
    match vb.get(&key("a")) {
        Ok(a) => {
            assert_eq!(&a.unwrap().value[..], b"a");
            assert!(vb.get(&key("b")).unwrap().is_none(), "refused: not visible");
            assert!(vb.get(&key("c")).unwrap().is_none(), "refused: not visible");
        }
        Err(e) => assert!(e.is_poisoned(), "{e}"),
    }
    let recovered = match vb.commit(CommitBatch::new().item(doc(&key("d"), 4, "d"))) {
        Ok(_) => {
            // Recovered by itself: the refused commit is gone for good.
            assert!(vb.get(&key("b")).unwrap().is_none());
            assert!(vb.get(&key("c")).unwrap().is_none());
            assert_eq!(&vb.get(&key("d")).unwrap().unwrap().value[..], b"d");
            true
        }
        Err(e) => {
            assert!(e.is_poisoned(), "{e}");
            false
        }
    };
    let rev = vb.revision();
    // Opening the revision again, without reopening the backend, gives a
    // usable handle on what is durable: the same one when the backend
    // recovered by itself, otherwise a fresh one (the poisoned handle stays
    // poisoned for whoever still holds it).
    let fresh = h.store().open(Vbid(0), rev).unwrap();
    if recovered {
        assert!(Arc::ptr_eq(&vb, &fresh), "a recovered handle is kept");
    } else {
        assert!(
            !Arc::ptr_eq(&vb, &fresh),
            "a poisoned handle is not handed out"
        );
        assert!(vb.get(&key("a")).unwrap_err().is_poisoned());
    }
    assert!(fresh.get(&key("a")).unwrap().is_some());
    let fb = fresh.get(&key("b")).unwrap().is_some();
    assert_eq!(
        fb,
        fresh.get(&key("c")).unwrap().is_some(),
        "all or nothing"
    );
    drop(fresh);
    drop(vb);
    h.reopen();
    let vb = h.store().open(Vbid(0), rev).unwrap();
    let b = vb.get(&key("b")).unwrap().is_some();
    let c = vb.get(&key("c")).unwrap().is_some();
    assert_eq!(b, c, "the failed commit is all there or not at all");
    if recovered {
        assert!(!b, "a commit refused before recovery never comes back");
        assert!(vb.get(&key("d")).unwrap().is_some(), "acknowledged");
    } else {
        assert!(vb.get(&key("d")).unwrap().is_none());
    }
    let high = vb.info().unwrap().high_seqno;
    commit(
        &*vb,
        CommitBatch::new().item(doc(&key("e"), high.0 + 1, "e")),
    );
}

/// §4.7: priors that cannot be right (a count other than zero or one per
/// item, a version of another key, a seqno not below the item's) make the
/// whole batch fail with `InvalidBatch` and change nothing.
pub fn c7_impossible_priors_are_typed_errors(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let a = key("a");
    commit(&*vb, CommitBatch::new().item(doc(&a, 1, "a1")));
    let batch = || {
        CommitBatch::new()
            .item(doc(&a, 2, "a2"))
            .item(doc(&key("b"), 3, "b"))
            .local(local_set("_local/x", "x"))
    };
    let stored = vb.get(&a).unwrap().unwrap();
    for priors in [
        vec![Prior::Present(stored.clone())],
        vec![Prior::Present(stored.clone()), Prior::Absent, Prior::Absent],
        vec![
            Prior::Present(stored.clone()),
            Prior::Present(stored.clone()),
        ],
        vec![Prior::Present(doc(&a, 2, "a2")), Prior::Absent],
    ] {
        let err = vb.commit_with_priors(batch(), priors.clone()).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidBatch { .. }),
            "{priors:?}: {err}"
        );
    }
    assert_eq!(vb.get(&a).unwrap().unwrap(), stored);
    assert!(vb.get(&key("b")).unwrap().is_none());
    assert!(vb.get_local("_local/x").unwrap().is_none());
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(1));
    // The right priors, and none, still commit.
    vb.commit_with_priors(batch(), vec![Prior::Present(stored), Prior::Absent])
        .unwrap();
    assert_eq!(vb.info().unwrap().high_seqno, Seqno(3));
    vb.commit_with_priors(CommitBatch::new().item(doc(&key("c"), 4, "c")), Vec::new())
        .unwrap();
    assert_eq!(vb.info().unwrap().live_items, 3);
}

/// §4.7: bad calls give typed errors, never panics.
pub fn c7_bad_input_is_typed_error(f: &dyn StoreFactory) {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).unwrap();
    let long_name = "x".repeat(crate::doc::MAX_LOCAL_NAME_LEN + 1);
    let err = vb
        .commit(CommitBatch::new().local(LocalOp::Set {
            name: long_name,
            value: Bytes::new(),
        }))
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidBatch { .. }), "{err}");
    assert!(vb.get_local("_local/none").unwrap().is_none());
    assert!(vb.vbstate().unwrap().is_none());
    let err = h.store().destroy(Vbid(9), crate::Revision(1)).unwrap_err();
    assert!(matches!(err, StoreError::NoSuchRevision { .. }), "{err}");
    let rev = vb.revision();
    let again = h.store().open(Vbid(0), rev).unwrap();
    assert!(
        Arc::ptr_eq(&vb, &again),
        "opening an open revision gives its handle"
    );
}
