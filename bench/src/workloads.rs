//! The workloads, with LevelDB's `db_bench` names, run in one sequence per
//! store so every store sees the same data in the same order.
//!
//! | workload | what | durability |
//! |---|---|---|
//! | fillseq | N items, sequential keys, 1,000 per commit | not synced |
//! | fillrandom | N items, random order, 1,000 per commit | not synced |
//! | overwrite | every key again, random order | not synced |
//! | readrandom | random gets of present keys (timed each) | - |
//! | readmissing | random gets of absent keys (timed each) | - |
//! | readseq | a full scan in key order | - |
//! | seqnoscan | a full scan in seqno order with values (a backfill), on one snapshot | - |
//! | deleterandom | N/10 random deletes, 1,000 per commit | not synced |
//! | compact | a full compaction | - |
//! | fillbatch | N items, 1,000 per synced commit (timed each) | synced |
//! | fillsync | N/100 items, one per synced commit (timed each) | synced |
//! | vbucket | N items over 1,024 vbuckets, per-vbucket synced commits in rounds, as a flusher does (timed each) | synced |
//! | durablebatch | D items (default 500,000), random key order, 1,000 per synced commit (timed each) | synced |
//! | durablesingle | 300 new keys in random order, one per synced commit (timed each) | synced |
//! | warmread | random gets of keys durablebatch loaded (timed each) | - |
//! | durableupdate | 200 synced commits of 1,000 random updates of loaded keys (timed each) | synced |
//!
//! Key order: fillseq, fillbatch, fillsync and vbucket write keys in
//! ascending order; every other writing workload writes them in a random
//! order (a seeded shuffle, the same for every store), which is how a
//! document store's keys arrive. The last four run on one store, in that
//! order, and the bytes on disk are measured after each of them with the
//! store's own background work (checkpoints, space reclamation) left to run
//! as it would in production: nothing is forced and nothing waited for.

use crate::stores::{self, BenchStore, Item, Kind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Every workload, in the order they run.
pub const WORKLOADS: [&str; 16] = [
    "fillseq",
    "fillrandom",
    "overwrite",
    "readrandom",
    "readmissing",
    "readseq",
    "seqnoscan",
    "deleterandom",
    "compact",
    "fillbatch",
    "fillsync",
    "vbucket",
    "durablebatch",
    "durablesingle",
    "warmread",
    "durableupdate",
];

/// The key order of each workload, as the report states it.
#[must_use]
pub fn key_order(workload: &str) -> &'static str {
    match workload {
        "fillseq" | "fillbatch" | "fillsync" | "vbucket" => "sequential",
        "readseq" => "key order (scan)",
        "seqnoscan" => "seqno order (scan)",
        "compact" => "-",
        _ => "random",
    }
}

/// Sizes of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Settings {
    /// Items loaded.
    pub items: u64,
    /// Key size in bytes.
    pub key_size: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Random reads (each timed).
    pub reads: u64,
    /// Items in fillsync (one per synced commit).
    pub sync_items: u64,
    /// Vbuckets of the vbucket workload.
    pub vbuckets: u16,
    /// Rounds of per-vbucket commits in the vbucket workload.
    pub vbucket_rounds: u64,
    /// Items per commit.
    pub batch: usize,
    /// The random seed (the same for every store).
    pub seed: u64,
    /// Times the whole sequence runs per store, stores taking turns; the
    /// report gives the median of each figure.
    #[serde(default = "one")]
    pub repetitions: u32,
    /// Items of durablebatch (random keys, `batch` per synced commit).
    #[serde(default = "durable_items")]
    pub durable_items: u64,
    /// Single-item synced commits of durablesingle.
    #[serde(default = "durable_single")]
    pub durable_single: u64,
    /// Synced commits of `batch` random updates in durableupdate.
    #[serde(default = "durable_update_commits")]
    pub durable_update_commits: u64,
    /// Seconds every store is left idle after durableupdate before its
    /// size is taken once more (its background compaction or reclamation
    /// running as it would in production).
    #[serde(default = "settle_secs")]
    pub settle_secs: u64,
}

fn settle_secs() -> u64 {
    5
}

fn durable_items() -> u64 {
    500_000
}

fn durable_single() -> u64 {
    300
}

fn durable_update_commits() -> u64 {
    200
}

fn one() -> u32 {
    1
}

impl Settings {
    /// The default run: about 10 minutes for five stores on 2 cores.
    #[must_use]
    pub fn full() -> Self {
        Settings {
            items: 200_000,
            key_size: 24,
            value_size: 150,
            reads: 200_000,
            sync_items: 2_000,
            vbuckets: 1024,
            vbucket_rounds: 2,
            batch: 1000,
            seed: 42,
            repetitions: 3,
            durable_items: durable_items(),
            durable_single: durable_single(),
            durable_update_commits: durable_update_commits(),
            settle_secs: settle_secs(),
        }
    }

    /// `--quick`: about a minute.
    #[must_use]
    pub fn quick() -> Self {
        Settings {
            items: 100_000,
            reads: 100_000,
            sync_items: 500,
            vbucket_rounds: 1,
            repetitions: 1,
            durable_items: 100_000,
            durable_update_commits: 50,
            settle_secs: 2,
            ..Self::full()
        }
    }

    fn key(&self, i: u64) -> Vec<u8> {
        let digits = self.key_size.saturating_sub(1).max(1);
        let mut k = format!("k{i:0digits$}").into_bytes();
        k.truncate(self.key_size.max(1));
        k
    }

    fn missing_key(&self, i: u64) -> Vec<u8> {
        let mut k = self.key(i);
        k[0] = b'm';
        k
    }

    /// Value `version` of key `i`: half random bytes, half repeated, about
    /// as compressible as db_bench's values.
    fn value(&self, i: u64, version: u64) -> Vec<u8> {
        let mut rng = StdRng::seed_from_u64(i.wrapping_mul(0x9e37_79b9) ^ version ^ self.seed);
        let mut v: Vec<u8> = (0..self.value_size / 2).map(|_| rng.random()).collect();
        v.resize(self.value_size, b'x');
        v
    }
}

/// One figure.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Measure {
    /// The workload.
    pub workload: String,
    /// Operations (items written, read or scanned).
    pub ops: u64,
    /// Wall time.
    pub secs: f64,
    /// Operations per second.
    pub ops_per_sec: f64,
    /// Median latency of a timed operation, in microseconds.
    pub p50_us: Option<f64>,
    /// 99th-percentile latency, in microseconds.
    pub p99_us: Option<f64>,
}

/// What one store did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StoreRun {
    /// The store.
    pub store: String,
    /// One figure per workload run.
    pub measures: Vec<Measure>,
    /// Bytes on disk after fillrandom and overwrite.
    pub disk_after_load: Option<u64>,
    /// Bytes on disk after deleterandom and compact.
    pub disk_after_compaction: Option<u64>,
    /// Bytes on disk after each phase of the durable sequence
    /// (durablebatch, durablesingle, durableupdate), measured as soon as
    /// the phase ends, with background work still running.
    #[serde(default)]
    pub disk_after: BTreeMap<String, u64>,
    /// The p99 latency (microseconds) of durableupdate's commits that
    /// overlapped the store's space reclamation, with how many did, and the
    /// p99 of those that did not; for stores that report their
    /// reclamation.
    #[serde(default)]
    pub reclaim_p99: Option<ReclaimLatency>,
    /// Peak resident memory of the process that ran it, in KiB.
    pub peak_rss_kib: u64,
    /// Digests of what the reads and scans returned: equal across stores
    /// when every store returned the same data.
    pub digests: BTreeMap<String, u64>,
    /// The error that stopped the run, if any.
    pub error: Option<String>,
}

/// Commit latency with and without space reclamation running beside it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct ReclaimLatency {
    /// p99 of the commits that overlapped reclamation, microseconds.
    pub p99_with_us: Option<f64>,
    /// How many commits overlapped reclamation.
    pub commits_with: usize,
    /// p99 of the other commits, microseconds.
    pub p99_without_us: Option<f64>,
    /// How many commits did not overlap it.
    pub commits_without: usize,
}

/// FNV-1a, to digest what reads return.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn add(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        self.0 = self.0.rotate_left(7) ^ 0xff;
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)] as f64 / 1000.0)
}

struct Runner<'a> {
    kind: Kind,
    s: &'a Settings,
    root: &'a Path,
    run: StoreRun,
    progress: &'a mut dyn FnMut(&str),
    only: &'a [String],
}

type R<T> = Result<T, String>;

impl Runner<'_> {
    fn wants(&self, w: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == w)
    }

    fn record(&mut self, workload: &str, ops: u64, started: Instant, mut lat: Vec<u64>) {
        let secs = started.elapsed().as_secs_f64();
        lat.sort_unstable();
        self.run.measures.push(Measure {
            workload: workload.to_owned(),
            ops,
            secs,
            ops_per_sec: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            p50_us: percentile(&lat, 0.50),
            p99_us: percentile(&lat, 0.99),
        });
        (self.progress)(workload);
    }

    fn open(&self, name: &str, sync: bool, vbuckets: u16) -> R<Box<dyn BenchStore>> {
        stores::open(self.kind, &self.root.join(name), sync, vbuckets)
    }

    /// Writes `keys` (values of `version`, or tombstones) in batches,
    /// continuing seqnos from `seqno`; times each commit into `lat`.
    fn load(
        &self,
        store: &mut dyn BenchStore,
        keys: &[u64],
        (version, delete): (u64, bool),
        seqno: &mut u64,
        batch: usize,
        lat: Option<&mut Vec<u64>>,
    ) -> R<()> {
        let mut lat = lat;
        for chunk in keys.chunks(batch.max(1)) {
            let items: Vec<Item> = chunk
                .iter()
                .map(|&i| {
                    *seqno += 1;
                    Item {
                        key: self.s.key(i),
                        value: if delete {
                            Vec::new()
                        } else {
                            self.s.value(i, version)
                        },
                        seqno: *seqno,
                        deleted: delete,
                    }
                })
                .collect();
            let t = Instant::now();
            store.write(0, &items)?;
            if let Some(l) = lat.as_deref_mut() {
                l.push(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(())
    }

    fn all(&mut self) -> R<()> {
        let s = self.s.clone();
        let n = s.items;
        let mut rng = StdRng::seed_from_u64(s.seed);
        let seq_keys: Vec<u64> = (0..n).collect();
        let mut shuffled = seq_keys.clone();
        shuffled.shuffle(&mut rng);

        if self.wants("fillseq") {
            let mut st = self.open("fillseq", false, 1)?;
            let t = Instant::now();
            self.load(&mut *st, &seq_keys, (0, false), &mut 0, s.batch, None)?;
            self.record("fillseq", n, t, Vec::new());
        }

        // The main store: fillrandom, then the reads, deletes and compaction.
        let mut seqno = 0;
        let mut st = self.open("main", false, 1)?;
        let t = Instant::now();
        self.load(&mut *st, &shuffled, (0, false), &mut seqno, s.batch, None)?;
        if self.wants("fillrandom") {
            self.record("fillrandom", n, t, Vec::new());
        }
        let mut overwrite = seq_keys.clone();
        overwrite.shuffle(&mut rng);
        let t = Instant::now();
        self.load(&mut *st, &overwrite, (1, false), &mut seqno, s.batch, None)?;
        if self.wants("overwrite") {
            self.record("overwrite", n, t, Vec::new());
        }
        self.run.disk_after_load = Some(st.disk_bytes()?);

        // Warm the caches a little, untimed.
        for _ in 0..(s.reads / 10) {
            st.get(0, &s.key(rng.random_range(0..n)))?;
        }
        if self.wants("readrandom") {
            let mut lat = Vec::with_capacity(s.reads as usize);
            let mut d = Fnv::new();
            let mut rrng = StdRng::seed_from_u64(s.seed + 1);
            let t = Instant::now();
            for _ in 0..s.reads {
                let i = rrng.random_range(0..n);
                let o = Instant::now();
                let v = st.get(0, &s.key(i))?;
                lat.push(o.elapsed().as_nanos() as u64);
                let v = v.ok_or_else(|| format!("readrandom: key {i} is missing"))?;
                d.add(&v);
            }
            self.record("readrandom", s.reads, t, lat);
            self.run.digests.insert("readrandom".into(), d.0);
        }
        if self.wants("readmissing") {
            let mut lat = Vec::with_capacity(s.reads as usize);
            let mut rrng = StdRng::seed_from_u64(s.seed + 2);
            let t = Instant::now();
            for _ in 0..s.reads {
                let i = rrng.random_range(0..n);
                let o = Instant::now();
                let v = st.get(0, &s.missing_key(i))?;
                lat.push(o.elapsed().as_nanos() as u64);
                if v.is_some() {
                    return Err(format!("readmissing: absent key {i} was found"));
                }
            }
            self.record("readmissing", s.reads, t, lat);
        }
        if self.wants("readseq") {
            let mut d = Fnv::new();
            let t = Instant::now();
            let count = st.scan_keys(0, &mut |k, v| {
                d.add(k);
                d.add(v);
            })?;
            if count != n {
                return Err(format!("readseq: {count} documents, expected {n}"));
            }
            self.record("readseq", count, t, Vec::new());
            self.run.digests.insert("readseq".into(), d.0);
        }
        if self.wants("seqnoscan") {
            let mut d = Fnv::new();
            let t = Instant::now();
            let count = st.scan_seqnos(0, 0, &mut |seqno, k, v| {
                d.add(&seqno.to_be_bytes());
                d.add(k);
                d.add(v);
            })?;
            if count != n {
                return Err(format!("seqnoscan: {count} entries, expected {n}"));
            }
            self.record("seqnoscan", count, t, Vec::new());
            self.run.digests.insert("seqnoscan".into(), d.0);
        }
        let mut victims = seq_keys.clone();
        victims.shuffle(&mut rng);
        victims.truncate((n / 10) as usize);
        let t = Instant::now();
        self.load(&mut *st, &victims, (2, true), &mut seqno, s.batch, None)?;
        if self.wants("deleterandom") {
            self.record("deleterandom", victims.len() as u64, t, Vec::new());
        }
        // What survives the deletes reads the same everywhere.
        let mut d = Fnv::new();
        st.scan_keys(0, &mut |k, v| {
            d.add(k);
            d.add(v);
        })?;
        self.run.digests.insert("after-deletes".into(), d.0);
        if self.wants("compact") {
            let t = Instant::now();
            st.compact()?;
            self.record("compact", n, t, Vec::new());
            self.run.disk_after_compaction = Some(st.disk_bytes()?);
        }
        drop(st);

        if self.wants("fillbatch") {
            let mut st = self.open("fillbatch", true, 1)?;
            let mut lat = Vec::new();
            let t = Instant::now();
            self.load(
                &mut *st,
                &seq_keys,
                (0, false),
                &mut 0,
                s.batch,
                Some(&mut lat),
            )?;
            self.record("fillbatch", n, t, lat);
        }
        if self.wants("fillsync") {
            let mut st = self.open("fillsync", true, 1)?;
            let mut lat = Vec::new();
            let keys: Vec<u64> = (0..s.sync_items).collect();
            let t = Instant::now();
            self.load(&mut *st, &keys, (0, false), &mut 0, 1, Some(&mut lat))?;
            self.record("fillsync", s.sync_items, t, lat);
        }
        if self.wants("vbucket") {
            self.vbucket_workload()?;
        }
        if ["durablebatch", "durablesingle", "warmread", "durableupdate"]
            .iter()
            .any(|w| self.wants(w))
        {
            self.durable_sequence()?;
        }
        Ok(())
    }

    /// durablebatch, durablesingle, warmread and durableupdate, on one
    /// store, every commit synced, every key order random.
    fn durable_sequence(&mut self) -> R<()> {
        let s = self.s.clone();
        let n = s.durable_items.max(1);
        let mut rng = StdRng::seed_from_u64(s.seed ^ 0xd0ab1e);
        let mut keys: Vec<u64> = (0..n).collect();
        keys.shuffle(&mut rng);
        let mut st = self.open("durable", true, 1)?;
        let mut seqno = 0;
        let mut lat = Vec::new();
        let t = Instant::now();
        self.load(
            &mut *st,
            &keys,
            (0, false),
            &mut seqno,
            s.batch,
            Some(&mut lat),
        )?;
        self.record("durablebatch", n, t, lat);
        self.run
            .disk_after
            .insert("durablebatch".into(), st.disk_bytes()?);

        let mut singles: Vec<u64> = (n..n + s.durable_single.max(1)).collect();
        singles.shuffle(&mut rng);
        let mut lat = Vec::new();
        let t = Instant::now();
        self.load(
            &mut *st,
            &singles,
            (0, false),
            &mut seqno,
            1,
            Some(&mut lat),
        )?;
        self.record("durablesingle", singles.len() as u64, t, lat);
        self.run
            .disk_after
            .insert("durablesingle".into(), st.disk_bytes()?);

        let mut lat = Vec::with_capacity(s.reads as usize);
        let mut d = Fnv::new();
        let mut rrng = StdRng::seed_from_u64(s.seed + 3);
        let t = Instant::now();
        for _ in 0..s.reads {
            let i = rrng.random_range(0..n);
            let o = Instant::now();
            let v = st.get(0, &s.key(i))?;
            lat.push(o.elapsed().as_nanos() as u64);
            let v = v.ok_or_else(|| format!("warmread: key {i} is missing"))?;
            d.add(&v);
        }
        self.record("warmread", s.reads, t, lat);
        self.run.digests.insert("warmread".into(), d.0);

        let mut updates = keys;
        updates.shuffle(&mut rng);
        let count = (s.durable_update_commits.max(1) as usize * s.batch.max(1)).min(updates.len());
        updates.truncate(count);
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let t = Instant::now();
        for chunk in updates.chunks(s.batch.max(1)) {
            let mut one = Vec::new();
            let before = st.reclaim_activity();
            self.load(
                &mut *st,
                chunk,
                (1, false),
                &mut seqno,
                chunk.len(),
                Some(&mut one),
            )?;
            let after = st.reclaim_activity();
            match (before, after) {
                (Some(b), Some(a)) if b.overlaps(&a) => with.extend(one),
                _ => without.extend(one),
            }
        }
        let mut all: Vec<u64> = with.iter().chain(&without).copied().collect();
        all.sort_unstable();
        self.record("durableupdate", count as u64, t, all);
        self.run
            .disk_after
            .insert("durableupdate".into(), st.disk_bytes()?);
        // The same idle time for every store, then the size once more.
        std::thread::sleep(std::time::Duration::from_secs(s.settle_secs));
        self.run
            .disk_after
            .insert("settled".into(), st.disk_bytes()?);
        if st.reclaim_activity().is_some() {
            with.sort_unstable();
            without.sort_unstable();
            self.run.reclaim_p99 = Some(ReclaimLatency {
                p99_with_us: percentile(&with, 0.99),
                commits_with: with.len(),
                p99_without_us: percentile(&without, 0.99),
                commits_without: without.len(),
            });
        }
        // What the updates left reads the same everywhere.
        let mut d = Fnv::new();
        let c = st.scan_keys(0, &mut |k, v| {
            d.add(k);
            d.add(v);
        })?;
        d.add(&c.to_be_bytes());
        self.run.digests.insert("after-updates".into(), d.0);
        Ok(())
    }

    /// N items over V vbuckets (item i goes to vbucket i mod V); in each of
    /// R rounds every vbucket commits its share, synced, as the flusher does.
    fn vbucket_workload(&mut self) -> R<()> {
        let s = self.s.clone();
        let vbs = u64::from(s.vbuckets.max(1));
        let mut st = self.open("vbucket", true, s.vbuckets.max(1))?;
        let per_vb = s.items.div_ceil(vbs);
        let rounds = s.vbucket_rounds.max(1);
        let per_commit = per_vb.div_ceil(rounds).max(1);
        let mut seqnos = vec![0u64; vbs as usize];
        let mut lat = Vec::new();
        let mut written = 0;
        let t = Instant::now();
        for round in 0..rounds {
            for vb in 0..vbs {
                let from = round * per_commit;
                let to = ((round + 1) * per_commit).min(per_vb);
                let items: Vec<Item> = (from..to)
                    .map(|j| j * vbs + vb)
                    .filter(|i| *i < s.items)
                    .map(|i| {
                        seqnos[vb as usize] += 1;
                        Item {
                            key: s.key(i),
                            value: s.value(i, 0),
                            seqno: seqnos[vb as usize],
                            deleted: false,
                        }
                    })
                    .collect();
                if items.is_empty() {
                    continue;
                }
                written += items.len() as u64;
                let o = Instant::now();
                st.write(vb as u16, &items)?;
                lat.push(o.elapsed().as_nanos() as u64);
            }
        }
        self.record("vbucket", written, t, lat);
        // Spot-check: every vbucket holds its share.
        let mut d = Fnv::new();
        for vb in [0, vbs / 2, vbs - 1] {
            let c = st.scan_keys(vb as u16, &mut |k, _| d.add(k))?;
            d.add(&c.to_be_bytes());
        }
        self.run.digests.insert("vbucket".into(), d.0);
        Ok(())
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Folds repeated runs of one store into one: the median of every figure,
/// the largest peak RSS, and the first error. Digests must agree across
/// repetitions; a disagreement is reported as an error.
#[must_use]
pub fn merge_runs(runs: Vec<StoreRun>) -> StoreRun {
    let Some(first) = runs.first().cloned() else {
        return StoreRun::default();
    };
    let mut out = StoreRun {
        measures: Vec::new(),
        peak_rss_kib: runs.iter().map(|r| r.peak_rss_kib).max().unwrap_or(0),
        error: runs.iter().find_map(|r| r.error.clone()),
        ..first.clone()
    };
    if out.error.is_none() && runs.iter().any(|r| r.digests != first.digests) {
        out.error = Some("repetitions returned different data".into());
    }
    for w in WORKLOADS {
        let ms: Vec<&Measure> = runs
            .iter()
            .filter_map(|r| r.measures.iter().find(|m| m.workload == w))
            .collect();
        if ms.is_empty() {
            continue;
        }
        let opt = |f: &dyn Fn(&Measure) -> Option<f64>| {
            let v: Vec<f64> = ms.iter().filter_map(|m| f(m)).collect();
            (!v.is_empty()).then(|| median(v))
        };
        out.measures.push(Measure {
            workload: w.to_owned(),
            ops: ms[0].ops,
            secs: median(ms.iter().map(|m| m.secs).collect()),
            ops_per_sec: median(ms.iter().map(|m| m.ops_per_sec).collect()),
            p50_us: opt(&|m| m.p50_us),
            p99_us: opt(&|m| m.p99_us),
        });
    }
    let disk = |f: &dyn Fn(&StoreRun) -> Option<u64>| {
        let v: Vec<f64> = runs.iter().filter_map(|r| f(r).map(|b| b as f64)).collect();
        (!v.is_empty()).then(|| median(v) as u64)
    };
    out.disk_after_load = disk(&|r| r.disk_after_load);
    out.disk_after_compaction = disk(&|r| r.disk_after_compaction);
    let phases: std::collections::BTreeSet<String> = runs
        .iter()
        .flat_map(|r| r.disk_after.keys().cloned())
        .collect();
    out.disk_after = phases
        .into_iter()
        .filter_map(|p| disk(&|r| r.disk_after.get(&p).copied()).map(|b| (p, b)))
        .collect();
    let rec: Vec<ReclaimLatency> = runs.iter().filter_map(|r| r.reclaim_p99).collect();
    out.reclaim_p99 = (!rec.is_empty()).then(|| {
        let opt = |f: &dyn Fn(&ReclaimLatency) -> Option<f64>| {
            let v: Vec<f64> = rec.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| median(v))
        };
        ReclaimLatency {
            p99_with_us: opt(&|m| m.p99_with_us),
            commits_with: rec.iter().map(|m| m.commits_with).sum(),
            p99_without_us: opt(&|m| m.p99_without_us),
            commits_without: rec.iter().map(|m| m.commits_without).sum(),
        }
    });
    out
}

/// The peak resident memory of this process, in KiB (Linux).
#[must_use]
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Runs every workload (or those in `only`) against `kind`, with its files
/// under `root`. `progress` hears the name of each workload as it ends.
pub fn run_store(
    kind: Kind,
    settings: &Settings,
    root: &Path,
    only: &[String],
    progress: &mut dyn FnMut(&str),
) -> StoreRun {
    let mut r = Runner {
        kind,
        s: settings,
        root,
        run: StoreRun {
            store: kind.name().to_owned(),
            ..StoreRun::default()
        },
        progress,
        only,
    };
    if let Err(e) = r.all() {
        r.run.error = Some(e);
    }
    r.run.peak_rss_kib = peak_rss_kib();
    r.run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ops: &[f64], digest: u64) -> StoreRun {
        StoreRun {
            store: "s".into(),
            measures: vec![Measure {
                workload: "fillseq".into(),
                ops: 10,
                secs: 1.0,
                ops_per_sec: ops[0],
                p50_us: Some(ops[0]),
                p99_us: None,
            }],
            disk_after_load: Some(ops[0] as u64),
            digests: [("readseq".to_owned(), digest)].into(),
            peak_rss_kib: ops[0] as u64,
            ..StoreRun::default()
        }
    }

    #[test]
    fn merge_takes_medians_and_checks_digests() {
        let m = merge_runs(vec![run(&[5.0], 1), run(&[1.0], 1), run(&[3.0], 1)]);
        assert_eq!(m.measures[0].ops_per_sec, 3.0);
        assert_eq!(m.measures[0].p50_us, Some(3.0));
        assert_eq!(m.disk_after_load, Some(3));
        assert_eq!(m.peak_rss_kib, 5);
        assert!(m.error.is_none());
        let bad = merge_runs(vec![run(&[1.0], 1), run(&[1.0], 2)]);
        assert!(bad.error.is_some());
    }
}
