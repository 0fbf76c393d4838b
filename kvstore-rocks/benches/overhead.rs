//! What `kvstore-rocks` costs over the RocksDB under it: the same workloads
//! run through the `VbStore` trait and as **blind puts** into raw RocksDB,
//! the workload a user who picked RocksDB instead would run. The raw side
//! opens a second instance with `RocksStore::open` and the same
//! configuration, so the options, column families and sync setting are
//! identical, and puts each key's 150-byte value into `bykey` with nothing
//! read first, no by-seqno index, no undo record and no header.
//!
//! - **write_new**: one synced commit of 1,000 new items (24-byte keys,
//!   150-byte values), into stores that hold 0 to 47,000 items (see
//!   [`COMMITS_PER_STORE`]). The backend gets `Prior::Absent` for every item
//!   (the engine knows a key is new), and, as `kvstore_rocks_unhinted`, no
//!   priors at all, which makes it read every key first.
//! - **write_update**: one synced commit of 1,000 updates of random keys
//!   among the 10,000 loaded (untimed) into each fresh store; the backend
//!   gets each key's previous document as `Prior::Present`.
//! - **read**: 1,000 random point reads of a preloaded vbucket of 100,000
//!   items, flushed and compacted first, against `get_pinned_cf` plus a copy
//!   of the value.
//!
//! `kvstore_rocks / raw_blind_puts` is the ratio issue 15 sets targets on.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use bytes::Bytes;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use kvstore_core::{
    CollectionId, CommitBatch, DiskKey, Document, KvStore, Prior, Seqno, VbStore, Vbid,
};
use kvstore_rocks::{RocksConfig, RocksStore};
use rand::{Rng, SeedableRng};
use rocksdb::{WriteBatch, WriteOptions};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BATCH: u64 = 1000;
const VALUE_LEN: usize = 150;
const PRELOAD: u64 = 100_000;
const READS: usize = 1000;
/// Keys loaded into each fresh store of the update workload.
const UPDATE_KEYS: u64 = 10_000;

/// Stand-in for the per-revision prefix of the raw baseline.
const RAW_PREFIX: [u8; 10] = [0, 1, 0, 0, 0, 0, 0, 0, 0, 1];

fn key(n: u64) -> DiskKey {
    // 24 user-key bytes.
    DiskKey::new(CollectionId::DEFAULT, format!("key{n:021}").as_bytes()).unwrap()
}

fn value(n: u64, version: u64) -> Bytes {
    let mut v = format!("value-{n}-{version}-").into_bytes();
    v.resize(VALUE_LEN, b'v');
    Bytes::from(v)
}

fn prefixed(suffix: &[u8]) -> Vec<u8> {
    let mut k = RAW_PREFIX.to_vec();
    k.extend_from_slice(suffix);
    k
}

/// One write of a workload: keys, values and seqnos, and the documents
/// they replace (for the priors).
struct Input {
    docs: Vec<Document>,
    priors: Vec<Prior>,
}

impl Input {
    fn batch(&self) -> CommitBatch {
        CommitBatch {
            items: self.docs.clone(),
            ..CommitBatch::default()
        }
    }
}

/// Items `first..first + BATCH`, new.
fn new_items(first: u64) -> Input {
    let docs: Vec<Document> = (first..first + BATCH)
        .map(|n| Document::new(key(n), Seqno(n + 1), value(n, 0)))
        .collect();
    let priors = vec![Prior::Absent; docs.len()];
    Input { docs, priors }
}

/// Commit `i` (from 0) of the update workload on a store loaded with
/// [`load_for_updates`]: 1,000 random keys of the loaded ones, each at a
/// new version; the priors are the versions `known` holds.
fn updates(i: u64, known: &mut [Document]) -> Input {
    let mut rng = rand::rngs::StdRng::seed_from_u64(i);
    let mut docs = Vec::with_capacity(BATCH as usize);
    let mut priors = Vec::with_capacity(BATCH as usize);
    let mut picked = std::collections::BTreeSet::new();
    let base = UPDATE_KEYS + i * BATCH;
    while picked.len() < BATCH as usize {
        picked.insert(rng.random_range(0..UPDATE_KEYS));
    }
    for (j, n) in picked.into_iter().enumerate() {
        let d = Document::new(key(n), Seqno(base + j as u64 + 1), value(n, i + 1));
        priors.push(Prior::Present(known[n as usize].clone()));
        known[n as usize] = d.clone();
        docs.push(d);
    }
    Input { docs, priors }
}

/// The first [`UPDATE_KEYS`] items, as loaded, and the same as batches.
fn load_for_updates() -> (Vec<Document>, Vec<Input>) {
    let inputs: Vec<Input> = (0..UPDATE_KEYS / BATCH)
        .map(|b| new_items(b * BATCH))
        .collect();
    let known = inputs.iter().flat_map(|i| i.docs.iter().cloned()).collect();
    (known, inputs)
}

struct Raw {
    store: RocksStore,
    opts: WriteOptions,
}

impl Raw {
    fn db(&self) -> &rocksdb::DB {
        self.store.db()
    }

    /// Blind puts of key → value.
    fn write(&self, docs: &[Document]) {
        let db = self.db();
        let bykey = db.cf_handle("bykey").unwrap();
        let mut wb = WriteBatch::default();
        for d in docs {
            wb.put_cf(bykey, prefixed(d.key.as_bytes()), &d.value);
        }
        db.write_opt(wb, &self.opts).unwrap();
    }
}

fn open_raw(dir: &Path) -> Raw {
    let config = RocksConfig::default();
    let mut opts = WriteOptions::default();
    opts.set_sync(config.sync);
    Raw {
        store: RocksStore::open(dir, config).unwrap(),
        opts,
    }
}

fn open_ours(dir: &Path) -> (Arc<dyn VbStore>, RocksStore) {
    let store = RocksStore::open(dir, RocksConfig::default()).unwrap();
    (store.create(Vbid(0)).unwrap(), store)
}

/// Flushes and fully compacts every column family, so both sides of a read
/// comparison read the same shape of tree.
fn settle(db: &rocksdb::DB) {
    for cf in ["default", "bykey", "byseqno", "local", "undo", "meta"] {
        let cf = db.cf_handle(cf).unwrap();
        db.flush_cf(cf).unwrap();
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    }
}

/// Commits per store before a fresh one replaces it: 48 batches of 1,000
/// documents fit in one memtable, so no flush or compaction runs while
/// timing and every sample sees the same store sizes. (With one growing
/// store, background flushes and compactions competing for the 2 cores made
/// the same benchmark swing by 30% from run to run.)
const COMMITS_PER_STORE: u64 = 48;

/// How one side opens a store, prepares it (untimed) and writes one input.
struct Side<S> {
    open: fn(&Path) -> S,
    prepare: fn(&S),
    write: fn(&S, &Input),
}

fn ours_new() -> Side<(Arc<dyn VbStore>, RocksStore)> {
    Side {
        open: open_ours,
        prepare: |_| {},
        write: |(vb, _), input| {
            vb.commit_with_priors(input.batch(), input.priors.clone())
                .unwrap();
        },
    }
}

fn ours_unhinted() -> Side<(Arc<dyn VbStore>, RocksStore)> {
    Side {
        open: open_ours,
        prepare: |_| {},
        write: |(vb, _), input| {
            vb.commit(input.batch()).unwrap();
        },
    }
}

fn raw_side() -> Side<Raw> {
    Side {
        open: open_raw,
        prepare: |_| {},
        write: |raw, input| raw.write(&input.docs),
    }
}

fn ours_loaded() -> Side<(Arc<dyn VbStore>, RocksStore)> {
    Side {
        prepare: |(vb, _)| {
            for input in load_for_updates().1 {
                vb.commit_with_priors(input.batch(), input.priors).unwrap();
            }
        },
        ..ours_new()
    }
}

fn raw_loaded() -> Side<Raw> {
    Side {
        prepare: |raw| {
            for input in load_for_updates().1 {
                raw.write(&input.docs);
            }
        },
        ..raw_side()
    }
}

/// A timer of one write at a time into fresh stores of `side`, each taking
/// fewer than [`COMMITS_PER_STORE`] commits; opening and preparing stores
/// and making inputs is not timed. `input(i, known)` makes write `i` of a
/// store, `known` being the documents loaded into it.
fn timer<'a, S: 'a>(
    side: Side<S>,
    input: fn(u64, &mut [Document]) -> Input,
) -> Box<dyn FnMut() -> Duration + 'a> {
    let mut store: Option<(S, tempfile::TempDir, Vec<Document>)> = None;
    let mut n = 0u64;
    Box::new(move || {
        if n.is_multiple_of(COMMITS_PER_STORE) {
            drop(store.take());
            let dir = tempfile::tempdir().unwrap();
            let s = (side.open)(dir.path());
            (side.prepare)(&s);
            store = Some((s, dir, load_for_updates().0));
        }
        let (s, _, known) = store.as_mut().unwrap();
        let data = input(n % COMMITS_PER_STORE, known);
        n += 1;
        let start = Instant::now();
        (side.write)(s, &data);
        start.elapsed()
    })
}

fn new_input(i: u64, _: &mut [Document]) -> Input {
    new_items(UPDATE_KEYS + i * BATCH)
}

fn bench_timer(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut t: impl FnMut() -> Duration) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| (0..iters).map(|_| t()).sum());
    });
}

fn writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_new_1000x150B_sync");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(10));
    bench_timer(&mut g, "kvstore_rocks", timer(ours_new(), new_input));
    bench_timer(&mut g, "raw_blind_puts", timer(raw_side(), new_input));
    g.finish();
    let mut g = c.benchmark_group("write_update_1000x150B_sync");
    g.throughput(Throughput::Elements(BATCH));
    g.measurement_time(Duration::from_secs(10));
    bench_timer(&mut g, "kvstore_rocks", timer(ours_loaded(), updates));
    bench_timer(&mut g, "raw_blind_puts", timer(raw_loaded(), updates));
    g.finish();
}

fn preload_ours() -> (Arc<dyn VbStore>, RocksStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (vb, store) = open_ours(dir.path());
    for first in (0..PRELOAD).step_by(BATCH as usize) {
        let input = new_items(first);
        vb.commit_with_priors(input.batch(), input.priors).unwrap();
    }
    settle(store.db());
    (vb, store, dir)
}

fn preload_raw() -> (Raw, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let raw = open_raw(dir.path());
    for first in (0..PRELOAD).step_by(BATCH as usize) {
        raw.write(&new_items(first).docs);
    }
    settle(raw.db());
    (raw, dir)
}

fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("read_1000_random_of_100k");
    g.throughput(Throughput::Elements(READS as u64));
    g.measurement_time(Duration::from_secs(10));
    let keys: Vec<DiskKey> = (0..PRELOAD).map(key).collect();
    let (vb, store, _dir) = preload_ours();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    g.bench_function("kvstore_rocks", |b| {
        b.iter(|| {
            for _ in 0..READS {
                let k = &keys[rng.random_range(0..keys.len())];
                black_box(vb.get(k).unwrap());
            }
        });
    });
    drop((vb, store));
    let (raw, _dir) = preload_raw();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let db = raw.db();
    let bykey = db.cf_handle("bykey").unwrap();
    g.bench_function("raw", |b| {
        b.iter(|| {
            for _ in 0..READS {
                let k = &keys[rng.random_range(0..keys.len())];
                let v = db.get_pinned_cf(bykey, prefixed(k.as_bytes())).unwrap();
                black_box(v.map(|v| Bytes::copy_from_slice(&v)));
            }
        });
    });
    g.finish();
}

/// One side of a paired comparison: each call times one operation.
type Paired<'a> = (&'static str, Box<dyn FnMut() -> Duration + 'a>);

/// Runs the sides in rotating order, `rounds` times each, and prints the
/// median of each and its throughput relative to the first's. Interleaving
/// puts every side under the same machine conditions, which separate
/// criterion runs on a shared 2-core machine do not.
fn paired(name: &str, rounds: usize, mut sides: Vec<Paired<'_>>) {
    let n = sides.len();
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); n];
    for round in 0..rounds {
        for k in 0..n {
            let i = (round + k) % n;
            times[i].push((sides[i].1)());
        }
    }
    let medians: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort_unstable();
            t[t.len() / 2].as_secs_f64() * 1e3
        })
        .collect();
    let last = n - 1;
    for (i, (label, _)) in sides.iter().enumerate() {
        println!(
            "paired {name}/{label}: median {:.3} ms, throughput relative to {} {:.3}",
            medians[i],
            sides[last].0,
            medians[last] / medians[i]
        );
    }
}

fn paired_writes() {
    paired(
        "write_new_1000x150B_sync",
        480,
        vec![
            ("kvstore_rocks", timer(ours_new(), new_input)),
            ("kvstore_rocks_unhinted", timer(ours_unhinted(), new_input)),
            ("raw_blind_puts", timer(raw_side(), new_input)),
        ],
    );
    paired(
        "write_update_1000x150B_sync",
        480,
        vec![
            ("kvstore_rocks", timer(ours_loaded(), updates)),
            ("raw_blind_puts", timer(raw_loaded(), updates)),
        ],
    );
}

fn paired_reads() {
    let keys: Vec<DiskKey> = (0..PRELOAD).map(key).collect();
    let (vb, _store, _dir_a) = preload_ours();
    let (raw, _dir_b) = preload_raw();
    let db = raw.db();
    let bykey = db.cf_handle("bykey").unwrap();
    let mut rng_a = rand::rngs::StdRng::seed_from_u64(7);
    let mut rng_b = rand::rngs::StdRng::seed_from_u64(7);
    paired(
        "read_1000_random_of_100k",
        400,
        vec![
            (
                "kvstore_rocks",
                Box::new(|| {
                    let picks: Vec<&DiskKey> = (0..READS)
                        .map(|_| &keys[rng_a.random_range(0..keys.len())])
                        .collect();
                    let start = Instant::now();
                    for k in picks {
                        black_box(vb.get(k).unwrap());
                    }
                    start.elapsed()
                }),
            ),
            (
                "raw",
                Box::new(|| {
                    let picks: Vec<&DiskKey> = (0..READS)
                        .map(|_| &keys[rng_b.random_range(0..keys.len())])
                        .collect();
                    let start = Instant::now();
                    for k in picks {
                        let v = db.get_pinned_cf(bykey, prefixed(k.as_bytes())).unwrap();
                        black_box(v.map(|v| Bytes::copy_from_slice(&v)));
                    }
                    start.elapsed()
                }),
            ),
        ],
    );
}

fn main() {
    let mut c = Criterion::default().sample_size(10).configure_from_args();
    writes(&mut c);
    reads(&mut c);
    c.final_summary();
    // Criterion's list/test modes and filtered runs skip the paired runs.
    if std::env::args().len() <= 2 && std::env::var_os("OVERHEAD_NO_PAIRED").is_none() {
        paired_writes();
        paired_reads();
    }
}
