//! Criterion benches of the couchfile backend through the `KvStore` trait:
//! fills with one sync per 1,000-item commit (24-byte keys, 150-byte values),
//! warm random reads, a full by-seqno scan, and compaction throughput.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kvstore_core::{
    CollectionId, CommitBatch, CompactionConfig, DiskKey, Document, KvStore, ScanControl,
    ScanOptions, Seqno, VbStore, Vbid,
};
use kvstore_couchfile::{CouchConfig, CouchStore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use std::sync::Arc;
use std::time::Duration;

const BATCH: u64 = 1000;
const VALUE: usize = 150;
const PRELOAD: u64 = 100_000;

fn key(i: u64) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, format!("key{i:021}").as_bytes()).unwrap()
}

fn value(i: u64) -> Vec<u8> {
    // Half random, half repeated: about as compressible as db_bench's values.
    let mut rng = StdRng::seed_from_u64(i);
    let mut v: Vec<u8> = (0..VALUE / 2).map(|_| rng.random()).collect();
    v.resize(VALUE, b'x');
    v
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: CouchStore,
    vb: Arc<dyn VbStore>,
    seqno: u64,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    Fixture {
        _dir: dir,
        store,
        vb,
        seqno: 0,
    }
}

impl Fixture {
    fn commit(&mut self, keys: &[u64]) {
        let mut batch = CommitBatch::new();
        for &k in keys {
            self.seqno += 1;
            batch = batch.item(Document::new(key(k), Seqno(self.seqno), value(k)));
        }
        self.vb.commit(batch).unwrap();
    }

    fn preload(&mut self, n: u64) {
        let keys: Vec<u64> = (0..n).collect();
        for chunk in keys.chunks(BATCH as usize) {
            self.commit(chunk);
        }
    }
}

fn fills(c: &mut Criterion) {
    let mut g = c.benchmark_group("fill");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    let commits = 20u64;
    g.throughput(Throughput::Elements(commits * BATCH));
    g.bench_function("fillseq", |b| {
        b.iter_batched(
            fixture,
            |mut f| {
                for c in 0..commits {
                    let keys: Vec<u64> = (c * BATCH..(c + 1) * BATCH).collect();
                    f.commit(&keys);
                }
                f
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("fillrandom", |b| {
        let mut rng = StdRng::seed_from_u64(7);
        b.iter_batched(
            || {
                let mut keys: Vec<u64> = (0..commits * BATCH).collect();
                keys.shuffle(&mut rng);
                (fixture(), keys)
            },
            |(mut f, keys)| {
                for chunk in keys.chunks(BATCH as usize) {
                    f.commit(chunk);
                }
                f
            },
            BatchSize::PerIteration,
        );
    });
    // One more 1,000-item durable commit of new sequential keys into a store
    // that already holds `PRELOAD` items: the steady-state batch cost.
    g.throughput(Throughput::Elements(BATCH));
    let mut f = fixture();
    f.preload(PRELOAD);
    let mut next = PRELOAD;
    g.bench_function("fillbatch", |b| {
        b.iter(|| {
            let keys: Vec<u64> = (next..next + BATCH).collect();
            next += BATCH;
            f.commit(&keys);
        });
    });
    g.finish();
}

fn reads(c: &mut Criterion) {
    let mut f = fixture();
    f.preload(PRELOAD);
    let keys: Vec<DiskKey> = (0..PRELOAD).map(key).collect();
    let mut g = c.benchmark_group("read");
    g.sample_size(10);
    // Warm the cache once.
    for k in &keys {
        f.vb.get(k).unwrap();
    }
    let mut rng = StdRng::seed_from_u64(9);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("readrandom", |b| {
        b.iter(|| {
            for _ in 0..1000 {
                let k = &keys[rng.random_range(0..keys.len())];
                assert!(f.vb.get(k).unwrap().is_some());
            }
        });
    });
    g.throughput(Throughput::Elements(PRELOAD));
    g.bench_function("seqno_scan", |b| {
        b.iter(|| {
            let mut n = 0u64;
            let mut scan =
                f.vb.seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
                    .unwrap();
            scan.run(&mut |_| {
                n += 1;
                ScanControl::Continue
            })
            .unwrap();
            assert_eq!(n, PRELOAD);
        });
    });
    g.finish();
    let (hits, misses) = f.store.cache_hit_miss();
    eprintln!("node cache: {hits} hits, {misses} misses");
}

fn compaction(c: &mut Criterion) {
    let mut g = c.benchmark_group("compact");
    g.sample_size(10);
    let mut probe = fixture();
    probe.preload(PRELOAD / 2);
    probe.preload(PRELOAD / 2);
    let bytes = probe.vb.info().unwrap().file_bytes;
    drop(probe);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("compact", |b| {
        b.iter_batched(
            || {
                let mut f = fixture();
                // Two generations of the same keys: half the file is stale.
                f.preload(PRELOAD / 2);
                f.preload(PRELOAD / 2);
                f
            },
            |f| {
                let r = f.vb.compact(&CompactionConfig::default()).unwrap();
                assert!(r.bytes_after < r.bytes_before);
                f
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(benches, fills, reads, compaction);
criterion_main!(benches);
