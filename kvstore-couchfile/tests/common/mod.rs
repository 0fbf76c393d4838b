//! A batch workload whose every committed prefix can be checked exactly.
//!
//! Batch `b` (from 0) has seqnos `10b+1 ..= 10b+10`:
//! - 8 new keys `b{b}-{j}` (every fourth value is 5,000 bytes, stored in a
//!   chunk of its own; the rest are small and inline);
//! - an overwrite of `hot-{b % 5}` with the value `b`;
//! - a tombstone for `b{b-4}-1` from batch 4 on, before that a new key
//!   `early-{b}`;
//! - the local document `_local/last` set to `b`, and the vbucket state.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kvstore_core::{
    CollectionId, CommitBatch, DiskKey, Document, KeyRange, LocalOp, ScanControl, ScanOptions,
    Seqno, VbState, VbStore, VbucketState,
};
use std::collections::BTreeMap;

pub const DOCS_PER_BATCH: u64 = 10;

pub fn key(s: &str) -> DiskKey {
    DiskKey::new(CollectionId(8), s.as_bytes()).unwrap()
}

pub fn value(b: u64, j: u64) -> Vec<u8> {
    let len = if j.is_multiple_of(4) {
        5000
    } else {
        20 + (b + j) as usize % 40
    };
    (0..len)
        .map(|i| (b as usize * 7 + j as usize * 13 + i) as u8)
        .collect()
}

pub fn batch(b: u64) -> CommitBatch {
    let mut seqno = b * DOCS_PER_BATCH;
    let mut next = || {
        seqno += 1;
        Seqno(seqno)
    };
    let mut batch = CommitBatch::new();
    for j in 0..8 {
        batch = batch.item(Document::new(
            key(&format!("b{b}-{j}")),
            next(),
            value(b, j),
        ));
    }
    batch = batch.item(Document::new(
        key(&format!("hot-{}", b % 5)),
        next(),
        b.to_string().into_bytes(),
    ));
    let s = next();
    batch = batch.item(if b >= 4 {
        Document::tombstone(key(&format!("b{}-1", b - 4)), s, b as u32)
    } else {
        Document::new(key(&format!("early-{b}")), s, b.to_string().into_bytes())
    });
    batch
        .local(LocalOp::Set {
            name: "_local/last".into(),
            value: b.to_string().into(),
        })
        .vbstate(VbucketState {
            state: VbState::Active,
            ..VbucketState::default()
        })
}

/// The batch to commit next: one past the last one in the store.
pub fn next_batch(vb: &dyn VbStore) -> u64 {
    let high = vb.info().unwrap().high_seqno.0;
    high.div_ceil(DOCS_PER_BATCH)
}

/// The expected documents (user key → value, or None for a tombstone)
/// after batches `0..=n`.
pub fn expected(n: Option<u64>) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut m = BTreeMap::new();
    let Some(n) = n else { return m };
    for b in 0..=n {
        for j in 0..8 {
            m.insert(format!("b{b}-{j}"), Some(value(b, j)));
        }
        m.insert(format!("hot-{}", b % 5), Some(b.to_string().into_bytes()));
        if b >= 4 {
            m.insert(format!("b{}-1", b - 4), None);
        } else {
            m.insert(format!("early-{b}"), Some(b.to_string().into_bytes()));
        }
    }
    m
}

/// Checks that the store holds exactly batches `0..=n` for some `n` and
/// returns `n` (`None` for an empty store). Any read error is returned as
/// is; a mismatch is a panic.
pub fn verify(vb: &dyn VbStore) -> Result<Option<u64>, kvstore_core::StoreError> {
    let info = vb.info()?;
    let high = info.high_seqno.0;
    assert_eq!(
        high % DOCS_PER_BATCH,
        0,
        "high seqno {high} is not at a batch boundary: a batch is half there"
    );
    let n = (high / DOCS_PER_BATCH).checked_sub(1);
    let last = vb.get_local("_local/last")?;
    assert_eq!(
        last.map(|v| String::from_utf8(v.to_vec()).unwrap()),
        n.map(|n| n.to_string()),
        "the local document commits with the data"
    );
    let want = expected(n);
    let mut got = BTreeMap::new();
    vb.key_range(&KeyRange::all(), &mut |d| {
        let k = String::from_utf8(d.key.user_key().to_vec()).unwrap();
        let v = if d.is_deleted() {
            None
        } else {
            Some(d.value.to_vec())
        };
        got.insert(k, v);
        ScanControl::Continue
    })?;
    // Compaction may have purged tombstones; everything else must be exact.
    for (k, v) in &want {
        match (v, got.get(k)) {
            (None, None) => {}
            (v, g) => assert_eq!(g, Some(v), "key {k} after batches 0..={n:?}"),
        }
    }
    assert!(
        got.keys().all(|k| want.contains_key(k)),
        "keys from a later batch after batches 0..={n:?}"
    );
    let mut seqnos = Vec::new();
    let mut scan = vb.seqno_scan(
        Seqno(0),
        Seqno(u64::MAX),
        ScanOptions {
            include_deleted: true,
            ..ScanOptions::default()
        },
    )?;
    scan.run(&mut |d| {
        seqnos.push(d.meta.seqno.0);
        ScanControl::Continue
    })?;
    assert_eq!(seqnos.len(), got.len(), "one by-seqno entry per key");
    assert!(seqnos.windows(2).all(|w| w[0] < w[1]));
    let live = got.values().filter(|v| v.is_some()).count() as u64;
    assert_eq!(
        (info.live_items, info.deleted_items),
        (live, got.len() as u64 - live)
    );
    let state = vb.vbstate()?;
    assert_eq!(state.map(|s| s.high_seqno.0), n.map(|_| high));
    Ok(n)
}
