//! Crash test (DESIGN §9): a child process commits batches and acknowledges
//! each one on stdout once `commit` returned; the parent kills it with
//! SIGKILL at random moments, reopens the store and checks that every
//! acknowledged batch is there, that no batch is half there, and that the
//! store opens. Each child continues from what the previous one left.
//!
//! `KVSTORE_ROCKS_CRASH_KILLS` sets the number of kills (default 50);
//! `KVSTORE_ROCKS_CRASH_SEED` fixes the random seed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvstore_core::{
    Cas, CollectionId, CommitBatch, CompactionConfig, DiskKey, Document, KeyRange, KvStore,
    LocalOp, ScanControl, ScanOptions, Seqno, VbState, VbStore, Vbid, VbucketState,
};
use kvstore_rocks::{RocksConfig, RocksStore};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CHILD_ENV: &str = "KVSTORE_ROCKS_CRASH_CHILD";
const KILLS_ENV: &str = "KVSTORE_ROCKS_CRASH_KILLS";
const SEED_ENV: &str = "KVSTORE_ROCKS_CRASH_SEED";
const DEFAULT_KILLS: u32 = 50;

/// Keys written once per batch, plus keys every batch overwrites.
const OWN_KEYS: u64 = 8;
const SHARED_KEYS: u64 = 4;
const SEQNOS_PER_BATCH: u64 = OWN_KEYS + SHARED_KEYS;

fn config() -> RocksConfig {
    RocksConfig {
        block_cache_bytes: 8 << 20,
        write_buffer_budget_bytes: 16 << 20,
        write_buffer_bytes: 4 << 20,
        ..RocksConfig::default()
    }
}

fn own_key(b: u64, j: u64) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, format!("b{b:08}-{j}").as_bytes()).unwrap()
}

fn shared_key(j: u64) -> DiskKey {
    DiskKey::new(CollectionId(8), format!("shared-{j}").as_bytes()).unwrap()
}

fn own_value(b: u64, j: u64) -> Vec<u8> {
    // Sizes vary from tiny to several KiB so batches span WAL blocks.
    let len = 16 + ((b * 131 + j * 977) % 6000) as usize;
    let mut v = format!("batch {b} item {j} ").into_bytes();
    v.resize(len, b'a' + (b % 26) as u8);
    v
}

/// Batch `b`, the first of whose seqnos is `(b - 1) * SEQNOS_PER_BATCH + 1`.
fn batch(b: u64) -> CommitBatch {
    let mut seqno = (b - 1) * SEQNOS_PER_BATCH;
    let mut batch = CommitBatch::new();
    for j in 0..OWN_KEYS {
        seqno += 1;
        batch = batch.item(Document::new(own_key(b, j), Seqno(seqno), own_value(b, j)));
    }
    for j in 0..SHARED_KEYS {
        seqno += 1;
        batch = batch.item(Document::new(
            shared_key(j),
            Seqno(seqno),
            b.to_string().into_bytes(),
        ));
    }
    batch
        .local(LocalOp::Set {
            name: "_local/last-batch".into(),
            value: b.to_string().into(),
        })
        .vbstate(VbucketState {
            state: VbState::Active,
            max_cas: Cas(b),
            snapshot_end: Seqno(seqno),
            ..VbucketState::default()
        })
}

/// The child: commit batches forever, acknowledging each.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let store = RocksStore::open(&dir, config()).unwrap();
    let vb: std::sync::Arc<dyn VbStore> = match store.discover().unwrap().first() {
        Some(&(vbid, rev)) => store.open(vbid, rev).unwrap(),
        None => store.create(Vbid(0)).unwrap(),
    };
    let last = vb.vbstate().unwrap().map_or(0, |s| s.max_cas.0);
    assert_eq!(vb.info().unwrap().high_seqno.0, last * SEQNOS_PER_BATCH);
    let mut out = std::io::stdout().lock();
    for b in last + 1.. {
        vb.commit(batch(b)).unwrap();
        writeln!(out, "ACK {b}").unwrap();
        out.flush().unwrap();
        if b % 25 == 0 {
            // Get killed mid-compaction too, now and then.
            vb.compact(&CompactionConfig::default()).unwrap();
        }
    }
}

/// Checks the store under `dir`; returns the last batch it holds.
fn verify(dir: &Path, acked: u64) -> u64 {
    let store = RocksStore::open(dir, config()).expect("the store opens after a crash");
    let found = store.discover().unwrap();
    let Some(&(vbid, rev)) = found.first() else {
        assert_eq!(acked, 0, "batches were acknowledged but no vbucket exists");
        return 0;
    };
    assert_eq!(found.len(), 1, "{found:?}");
    let vb = store.open(vbid, rev).unwrap();
    let last = vb.vbstate().unwrap().map_or(0, |s| s.max_cas.0);
    assert!(
        last >= acked,
        "batch {acked} was acknowledged, the store has {last}"
    );
    let local = vb.get_local("_local/last-batch").unwrap();
    assert_eq!(
        local.map(|v| String::from_utf8(v.to_vec()).unwrap()),
        (last > 0).then(|| last.to_string()),
        "the local document commits with its batch"
    );
    let info = vb.info().unwrap();
    assert_eq!(info.high_seqno.0, last * SEQNOS_PER_BATCH);

    let mut docs = BTreeMap::new();
    vb.key_range(&KeyRange::all(), &mut |d| {
        docs.insert(d.key.clone(), d);
        ScanControl::Continue
    })
    .unwrap();
    let shared = if last > 0 { SHARED_KEYS } else { 0 };
    assert_eq!(
        docs.len() as u64,
        last * OWN_KEYS + shared,
        "no batch is half there"
    );
    for b in 1..=last {
        for j in 0..OWN_KEYS {
            let d = docs
                .get(&own_key(b, j))
                .unwrap_or_else(|| panic!("batch {b} key {j} missing"));
            assert_eq!(d.value, own_value(b, j), "batch {b} key {j}");
            assert_eq!(d.meta.seqno.0, (b - 1) * SEQNOS_PER_BATCH + j + 1);
        }
    }
    for j in 0..shared {
        let d = &docs[&shared_key(j)];
        assert_eq!(d.value, last.to_string().into_bytes(), "shared key {j}");
    }
    assert_eq!(info.live_items, docs.len() as u64);
    let mut by_seqno = 0u64;
    let mut scan = vb
        .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
        .unwrap();
    scan.run(&mut |_| {
        by_seqno += 1;
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(by_seqno, docs.len() as u64, "one by-seqno entry per key");
    last
}

#[test]
fn crash_kill_loop() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let kills: u32 = std::env::var(KILLS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("crash test: {kills} kills, seed {seed} (set {SEED_ENV} to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut on_disk = 0u64;
    let mut unacked_durable = 0u32;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut max = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ACK ").and_then(|n| n.parse().ok()) {
                    max = n;
                    let _ = tx.send(n);
                }
            }
            max
        });
        // Let a random number of batches through, then kill after a random
        // delay: sometimes before the first commit, mostly mid-commit.
        let wait_for = rng.random_range(0..12u64);
        let mut seen = 0;
        while seen < wait_for {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(_) => seen += 1,
                Err(e) => panic!("round {round}: child made no progress: {e}"),
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..20_000)));
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the child exited on its own"
        );
        let acked = reader.join().unwrap();
        let last = verify(dir.path(), acked);
        assert!(last >= on_disk, "round {round}: batches disappeared");
        if last > acked {
            // The killed child had a durable commit it never acknowledged.
            unacked_durable += 1;
        }
        on_disk = last;
    }
    eprintln!(
        "crash test: {kills} kills, {on_disk} batches on disk; in {unacked_durable} rounds \
         the last durable batch was never acknowledged"
    );
    assert!(on_disk > 0, "the children committed nothing");
}
