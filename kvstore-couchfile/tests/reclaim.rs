//! Space reclamation under random overwrites: every document stays
//! readable while segments are reclaimed and dropped behind the writer.
//!
//! Found by the bench: a get raced a relocation that had started a new
//! log segment, found the relocated version in the shared memtable and
//! failed with "points at log segment N which does not exist" (the view's
//! segment map did not hold it yet). Reads now see the memtables as of
//! their view's commit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvstore_core::{CollectionId, CommitBatch, DiskKey, Document, KvStore, Seqno, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn key(i: u64) -> DiskKey {
    DiskKey::new(CollectionId(0), format!("key-{i:020}").as_bytes()).unwrap()
}

fn value(i: u64, round: u64) -> Vec<u8> {
    let mut v = format!("{i}/{round}/").into_bytes();
    v.resize(150, b'x');
    v
}

/// Loads keys in random order, overwrites them all in another random
/// order (with and without syncs, small segments so that reclamation and
/// segment drops run many times), and reads every key back after each
/// round, with the background maintenance running as in production.
fn random_overwrites_keep_every_document(sync: bool) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = CouchConfig {
        sync,
        segment_bytes: 1 << 20,
        memtable_bytes: 1 << 20,
        checkpoint_log_bytes: 2 << 20,
        ..CouchConfig::default()
    };
    let store = CouchStore::open(dir.path(), cfg).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let n = 40_000u64;
    let mut rng = StdRng::seed_from_u64(7);
    let mut seqno = 0u64;
    let mut current = vec![0u64; n as usize];
    for round in 0..4u64 {
        let mut order: Vec<u64> = (0..n).collect();
        order.shuffle(&mut rng);
        for chunk in order.chunks(1000) {
            let mut batch = CommitBatch::new();
            for &i in chunk {
                seqno += 1;
                batch = batch.item(Document::new(key(i), Seqno(seqno), value(i, round)));
                current[i as usize] = round;
            }
            vb.commit(batch).unwrap();
        }
        for _ in 0..n {
            let i = rng.random_range(0..n);
            let d = vb
                .get(&key(i))
                .unwrap_or_else(|e| panic!("round {round}, key {i}: {e}"))
                .unwrap_or_else(|| panic!("round {round}: key {i} is missing"));
            assert_eq!(
                d.value,
                value(i, current[i as usize]),
                "round {round}, key {i}"
            );
        }
    }
    for i in 0..n {
        let d = vb.get(&key(i)).unwrap().unwrap();
        assert_eq!(d.value, value(i, current[i as usize]), "key {i}");
    }
    let info = vb.info().unwrap();
    assert!(
        info.reclaim_passes > 0 && info.reclaimed_bytes > 0,
        "reclamation ran: {info:?}"
    );
    // And all of it again after a reopen.
    drop(vb);
    drop(store);
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vb = store.open(Vbid(0), kvstore_core::Revision(1)).unwrap();
    for i in 0..n {
        let d = vb.get(&key(i)).unwrap().unwrap();
        assert_eq!(
            d.value,
            value(i, current[i as usize]),
            "after reopen, key {i}"
        );
    }
}

#[test]
fn random_overwrites_without_sync_keep_every_document() {
    random_overwrites_keep_every_document(false);
}

#[test]
fn random_overwrites_with_sync_keep_every_document() {
    random_overwrites_keep_every_document(true);
}
