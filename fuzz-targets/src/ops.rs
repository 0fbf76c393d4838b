//! `ops`: a couchfile store and kvstore-core's [`MemStore`] driven through
//! the same random operations, compared after every step (redb's fuzzer
//! does the same against its own model).
//!
//! The input (through `arbitrary`) picks a store configuration (from
//! "checkpoint and reclaim at nearly every commit" to "checkpoint rarely")
//! and a sequence of operations: staged sets, deletes, local documents and
//! vbucket states; commits (with exact priors or none); rollbacks;
//! compactions (tombstone purges by time, by seqno, all, and a dropped
//! collection generation); checkpoints and maintenance; scans with yields,
//! and scans held across commits and compactions; clean reopens and
//! crashes; and faults armed through [`FaultInjector`]: a torn write (half
//! the buffer lands) or a failed sync, `n` calls from now.
//!
//! # What is compared
//!
//! After every step both stores must hold the same documents (by key,
//! tombstones included, metadata and values), the same by-seqno entries
//! (one per key), the same local documents and vbucket state, counts, data
//! bytes and high seqno. A call may fail only when an injected fault fired
//! during it.
//!
//! # What is allowed
//!
//! - A failed commit or rollback changes nothing the store serves. A failed
//!   compaction may have purged or not (it writes purge records before its
//!   checkpoints).
//! - After a crash, every operation that failed since the last successful
//!   commit may have landed whole, or not at all; nothing else may differ.
//! - A rollback lands on the newest commit at or below its target, or on an
//!   older one, or on zero (the contract lets history go). It must be exact
//!   when the target is at or above the newest checkpoint the harness knows
//!   of (couchfile's rollback window always includes the commits since its
//!   current checkpoint; see kvstore-couchfile's crate docs, "Rollback").
//!   Its discarded keys cover every key whose state changed.
//!
//! When the reference cannot follow couchfile (a rollback to before the
//! reference's last compaction), it is rebuilt by replaying the commits and
//! compactions that lead to the state couchfile landed on.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use kvstore_core::{
    Cas, CollectionId, CommitBatch, CompactionConfig, Datatype, DiskKey, Document,
    DroppedCollection, KeyRange, KvStore, LocalOp, MemImage, MemStore, Prior, RevSeqno,
    ScanControl, ScanOptions, ScanStatus, Seqno, SeqnoScan, VbState, VbStore, Vbid, VbucketState,
};
use kvstore_couchfile::{CouchConfig, CouchStore, CouchVb, FaultInjector};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Operations run per input at most.
pub const MAX_OPS: usize = 64;
/// Distinct user keys per collection.
pub const KEYS: u8 = 16;
/// Rollback history the reference keeps (every commit of an input).
const HISTORY: usize = 1 << 20;
const VB: Vbid = Vbid(0);

/// An I/O fault to arm: the `n`th write or sync from now fails.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Fault {
    /// A torn write: the first half of the buffer lands, then an error.
    Write(u8),
    /// A failed sync (the data was written).
    Sync(u8),
}

/// One step.
#[derive(Debug, Clone, Arbitrary)]
pub enum Op {
    /// Stage a set of key `key` (collection 8 when `coll`).
    Set {
        /// Key number (mod [`KEYS`]).
        key: u8,
        /// In collection 8 rather than the default collection.
        coll: bool,
        /// Value size class: small, medium, over a block, compressible.
        size: u8,
    },
    /// Stage a delete (a tombstone deleted at its seqno, as a time).
    Delete {
        /// Key number.
        key: u8,
        /// In collection 8.
        coll: bool,
    },
    /// Stage a local-document set or delete.
    Local {
        /// Name number (mod 4).
        name: u8,
        /// Delete rather than set.
        delete: bool,
    },
    /// Stage a vbucket state.
    State(u8),
    /// Commit what is staged.
    Commit {
        /// Pass the exact prior of every item (read from the reference).
        hinted: bool,
    },
    /// Roll back this far below the high seqno.
    Rollback(u8),
    /// Compact.
    Compact {
        /// Purge every tombstone.
        drop_deletes: bool,
        /// Purge tombstones deleted more than this far below the high seqno.
        older_than: Option<u8>,
        /// Only tombstones this far below the high seqno or further.
        seqno_bound: Option<u8>,
        /// Purge collection 8's items up to this far below the high seqno.
        drop_collection: Option<u8>,
    },
    /// Take a checkpoint.
    Checkpoint,
    /// Run due maintenance.
    Maintain,
    /// Scan by seqno from this far below the high seqno, yielding every
    /// `every` documents.
    Scan {
        /// Distance below the high seqno.
        back: u8,
        /// Yield period (0: never).
        every: u8,
    },
    /// Start a scan, commit what is staged (and maybe compact) while it is
    /// parked, then finish it: it must see its snapshot only.
    ScanAcross {
        /// Compact too.
        compact: bool,
    },
    /// Close (or just drop) everything and reopen.
    Reopen {
        /// Close the store first rather than dropping it.
        clean: bool,
    },
    /// Arm a fault.
    Arm(Fault),
    /// Arm a fault, commit what is staged, and crash.
    TornCommit(Fault),
}

/// One input.
#[derive(Debug, Clone, Arbitrary)]
pub struct Input {
    /// The store configuration (mod 3).
    pub profile: u8,
    /// The steps (at most [`MAX_OPS`] run).
    pub ops: Vec<Op>,
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run_input(&input);
}

/// Runs one structured input; panics with the step and the difference when
/// a property breaks.
pub fn run_input(input: &Input) {
    let dir = crate::scratch_dir();
    let mut h = Harness::new(dir.path(), input.profile);
    for (i, op) in input.ops.iter().take(MAX_OPS).enumerate() {
        if let Err(e) = h.step(op) {
            panic!("step {i} {op:?}: {e}\nsteps: {:#?}", &input.ops[..=i]);
        }
    }
}

/// The couchfile configuration of a profile.
#[must_use]
pub fn config(profile: u8, faults: &Arc<FaultInjector>) -> CouchConfig {
    let mut c = CouchConfig {
        background: false,
        node_size: 512,
        cache_bytes: 1 << 20,
        block_cache_bytes: 256 << 10,
        max_open_files: 32,
        faults: Some(Arc::clone(faults)),
        ..CouchConfig::default()
    };
    match profile % 3 {
        0 => {
            // Checkpoints at nearly every commit, tiny segments, reclamation
            // all the time (the conformance suite's "aggressive" settings).
            c.memtable_bytes = 2048;
            c.segment_bytes = 24 << 10;
            c.reclaim_live_ratio = 0.9;
            c.reclaim_min_garbage = 1;
            c.checkpoint_log_bytes = 16 << 10;
        }
        1 => {
            c.memtable_bytes = 16 << 10;
            c.segment_bytes = 64 << 10;
            c.reclaim_min_garbage = 4 << 10;
            c.checkpoint_log_bytes = 64 << 10;
        }
        _ => {
            c.compression = kvstore_couchfile::Compression::Snappy;
        }
    }
    c
}

/// The key `key` of the default collection or collection 8.
#[must_use]
pub fn key_of(key: u8, coll: bool) -> DiskKey {
    let cid = if coll {
        CollectionId(8)
    } else {
        CollectionId::DEFAULT
    };
    match DiskKey::new(cid, format!("key-{:02}", key % KEYS).as_bytes()) {
        Ok(k) => k,
        Err(e) => panic!("a fixed test key is valid: {e}"),
    }
}

fn all_keys() -> Vec<DiskKey> {
    let mut keys: Vec<DiskKey> = (0..KEYS)
        .flat_map(|k| [key_of(k, false), key_of(k, true)])
        .collect();
    keys.push(match DiskKey::new(CollectionId(9), b"never") {
        Ok(k) => k,
        Err(e) => panic!("a fixed test key is valid: {e}"),
    });
    keys
}

fn value_of(seqno: u64, size: u8) -> Vec<u8> {
    match size % 4 {
        0 => (0..(seqno % 40)).map(|i| (seqno + i * 7) as u8).collect(),
        1 => (0..300 + seqno % 700)
            .map(|i| (seqno + i * 7) as u8)
            .collect(),
        2 => (0..5000 + seqno % 4000)
            .map(|i| (seqno * 31 + i * 13) as u8)
            .collect(),
        // Compresses well: snappy-stored values.
        _ => format!("{{\"n\":{seqno}}}").repeat(40).into_bytes(),
    }
}

/// Everything a store serves, read through its public API.
#[derive(Debug, PartialEq)]
struct Snapshot {
    by_key: Vec<Document>,
    collection8: Vec<Document>,
    by_seqno: Vec<Document>,
    gets: Vec<Option<Document>>,
    local: Vec<(String, Bytes)>,
    vbstate: Option<VbucketState>,
    counts: (u64, u64, u64),
    high: Seqno,
}

fn snapshot(vb: &dyn VbStore) -> Result<Snapshot, String> {
    let range = |r: &KeyRange| -> Result<Vec<Document>, String> {
        let mut out = Vec::new();
        let st = vb
            .key_range(r, &mut |d| {
                out.push(d);
                ScanControl::Continue
            })
            .map_err(|e| format!("key_range: {e}"))?;
        if st != ScanStatus::Done {
            return Err(format!("key_range ended {st:?}"));
        }
        Ok(out)
    };
    let by_key = range(&KeyRange::all())?;
    let collection8 = range(&KeyRange::collection(CollectionId(8)))?;
    let mut scan = vb
        .seqno_scan(
            Seqno(0),
            Seqno(u64::MAX),
            ScanOptions {
                include_deleted: true,
                ..ScanOptions::default()
            },
        )
        .map_err(|e| format!("seqno_scan: {e}"))?;
    let by_seqno = drain(&mut *scan, 0)?;
    let gets = vb
        .get_many(&all_keys())
        .map_err(|e| format!("get_many: {e}"))?;
    let local = vb.list_local().map_err(|e| format!("list_local: {e}"))?;
    let mut vbstate = vb.vbstate().map_err(|e| format!("vbstate: {e}"))?;
    if let Some(s) = &mut vbstate {
        // The backends agree on what was purged, not on the purge seqno a
        // rollback restores.
        s.purge_seqno = Seqno(0);
    }
    let info = vb.info().map_err(|e| format!("info: {e}"))?;
    Ok(Snapshot {
        by_key,
        collection8,
        by_seqno,
        gets,
        local,
        vbstate,
        counts: (info.live_items, info.deleted_items, info.data_bytes),
        high: info.high_seqno,
    })
}

/// Runs a scan to its end, yielding every `every` documents (0: never).
fn drain(scan: &mut dyn SeqnoScan, every: u8) -> Result<Vec<Document>, String> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let mut n = 0u8;
        let st = scan
            .run(&mut |d| {
                out.push(d);
                n = n.wrapping_add(1);
                if every > 0 && n == every {
                    ScanControl::Yield
                } else {
                    ScanControl::Continue
                }
            })
            .map_err(|e| format!("scan run: {e}"))?;
        match st {
            ScanStatus::Done => return Ok(out),
            ScanStatus::Yielded => {}
            ScanStatus::Stopped => return Err("a scan stopped by itself".into()),
        }
    }
    Err("a scan does not finish".into())
}

/// The first difference between two snapshots.
fn diff(couch: &Snapshot, model: &Snapshot) -> Option<String> {
    fn first<T: PartialEq + std::fmt::Debug>(what: &str, a: &[T], b: &[T]) -> Option<String> {
        if a == b {
            return None;
        }
        let i = a.iter().zip(b).take_while(|(x, y)| x == y).count();
        Some(format!(
            "{what}: couchfile has {} entries, the model {}; first difference at {i}:\n  couchfile {:?}\n  model     {:?}",
            a.len(),
            b.len(),
            a.get(i),
            b.get(i)
        ))
    }
    first("by key", &couch.by_key, &model.by_key)
        .or_else(|| first("by seqno", &couch.by_seqno, &model.by_seqno))
        .or_else(|| first("collection 8", &couch.collection8, &model.collection8))
        .or_else(|| first("get", &couch.gets, &model.gets))
        .or_else(|| first("local docs", &couch.local, &model.local))
        .or_else(|| {
            (couch.vbstate != model.vbstate).then(|| {
                format!(
                    "vbstate: couchfile {:?}, model {:?}",
                    couch.vbstate, model.vbstate
                )
            })
        })
        .or_else(|| {
            (couch.counts != model.counts).then(|| {
                format!(
                    "live/deleted/data bytes: couchfile {:?}, model {:?}",
                    couch.counts, model.counts
                )
            })
        })
        .or_else(|| {
            (couch.high != model.high)
                .then(|| format!("high seqno: couchfile {}, model {}", couch.high, model.high))
        })
}

/// What the reference replays to rebuild a state.
#[derive(Debug, Clone)]
enum MemOp {
    Commit(CommitBatch),
    Compact(CompactionConfig),
}

/// An operation that failed: after a crash it may have landed.
#[derive(Debug, Clone)]
enum Failed {
    Commit(CommitBatch),
    Compact(CompactionConfig),
    Rollback(Seqno),
}

/// A state the store can roll back to: its high seqno and the length of
/// the replay log that builds it.
#[derive(Debug, Clone, Copy)]
struct Point {
    high: u64,
    log_len: usize,
}

/// The reference: a `MemStore` and the linear history that built it.
struct Reference {
    store: MemStore,
    vb: Arc<dyn VbStore>,
    log: Vec<MemOp>,
    points: Vec<Point>,
}

impl Reference {
    fn new() -> Result<Self, String> {
        Self::replay(
            Vec::new(),
            vec![Point {
                high: 0,
                log_len: 0,
            }],
        )
    }

    /// A fresh `MemStore` with `log` applied.
    fn replay(log: Vec<MemOp>, points: Vec<Point>) -> Result<Self, String> {
        let store = MemStore::open_image(MemImage::new(), HISTORY);
        let vb = store
            .create(VB)
            .map_err(|e| format!("reference create: {e}"))?;
        for op in &log {
            match op {
                MemOp::Commit(b) => {
                    vb.commit(b.clone())
                        .map_err(|e| format!("reference replay commit: {e}"))?;
                }
                MemOp::Compact(c) => {
                    vb.compact(c)
                        .map_err(|e| format!("reference replay compact: {e}"))?;
                }
            }
        }
        Ok(Reference {
            store,
            vb,
            log,
            points,
        })
    }

    /// The reference rebuilt at point `pos`.
    fn at_point(&self, pos: usize) -> Result<Self, String> {
        let p = self.points[pos];
        Self::replay(self.log[..p.log_len].to_vec(), self.points[..=pos].to_vec())
    }

    /// The reference with one more operation applied (on a copy).
    fn with(&self, op: MemOp) -> Result<Self, String> {
        let mut r = Self::replay(self.log.clone(), self.points.clone())?;
        r.apply(op)?;
        Ok(r)
    }

    fn apply(&mut self, op: MemOp) -> Result<(), String> {
        match &op {
            MemOp::Commit(b) => {
                self.vb
                    .commit(b.clone())
                    .map_err(|e| format!("reference commit: {e}"))?;
            }
            MemOp::Compact(c) => {
                self.vb
                    .compact(c)
                    .map_err(|e| format!("reference compact: {e}"))?;
            }
        }
        self.log.push(op);
        let high = self
            .vb
            .info()
            .map_err(|e| format!("reference info: {e}"))?
            .high_seqno
            .0;
        self.points.push(Point {
            high,
            log_len: self.log.len(),
        });
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), String> {
        let rev = self.vb.revision();
        let store = MemStore::open_image(self.store.image(), HISTORY);
        self.vb = store
            .open(VB, rev)
            .map_err(|e| format!("reference reopen: {e}"))?;
        self.store = store;
        Ok(())
    }
}

struct Harness<'d> {
    dir: &'d Path,
    profile: u8,
    faults: Arc<FaultInjector>,
    store: Option<CouchStore>,
    vb: Option<Arc<CouchVb>>,
    model: Reference,
    staged: CommitBatch,
    next_seqno: u64,
    /// Operations that failed since the last successful commit.
    failed: Vec<Failed>,
    /// Rollbacks to this seqno or above must be exact.
    anchor: u64,
    /// Maintenance counters when last looked at.
    counters: u64,
}

fn counters(vb: &CouchVb) -> u64 {
    let s = &vb.stats;
    [
        &s.checkpoints,
        &s.rewrites,
        &s.reclaims,
        &s.failures,
        &s.reclaim_started,
    ]
    .iter()
    .map(|c| c.load(Ordering::Relaxed))
    .sum()
}

impl<'d> Harness<'d> {
    fn new(dir: &'d Path, profile: u8) -> Self {
        let faults = FaultInjector::new();
        let store = match CouchStore::open(dir, config(profile, &faults)) {
            Ok(s) => s,
            Err(e) => panic!("open a new couchfile store: {e}"),
        };
        let vb = match store
            .create(VB)
            .and_then(|v| store.open_couch(VB, v.revision()))
        {
            Ok(v) => v,
            Err(e) => panic!("create a vbucket: {e}"),
        };
        let model = match Reference::new() {
            Ok(m) => m,
            Err(e) => panic!("{e}"),
        };
        Harness {
            dir,
            profile,
            faults,
            store: Some(store),
            vb: Some(vb),
            model,
            staged: CommitBatch::new(),
            next_seqno: 1,
            failed: Vec::new(),
            anchor: 0,
            counters: 0,
        }
    }

    fn vb(&self) -> Result<&Arc<CouchVb>, String> {
        self.vb.as_ref().ok_or_else(|| "no open vbucket".to_owned())
    }

    fn high(&self) -> Result<u64, String> {
        Ok(self
            .model
            .vb
            .info()
            .map_err(|e| format!("reference info: {e}"))?
            .high_seqno
            .0)
    }

    fn seqno(&mut self) -> Seqno {
        let s = self.next_seqno;
        self.next_seqno += 1;
        Seqno(s)
    }

    fn compare(&self) -> Result<(), String> {
        let couch = snapshot(&**self.vb()?)?;
        let model = snapshot(&*self.model.vb)?;
        match diff(&couch, &model) {
            None => Ok(()),
            Some(d) => Err(d),
        }
    }

    /// Runs `f` and says whether an armed fault fired during it.
    fn io<T>(&self, f: impl FnOnce() -> T) -> (T, bool) {
        let armed = self.faults.armed();
        let r = f();
        (r, armed && !self.faults.armed())
    }

    fn step(&mut self, op: &Op) -> Result<(), String> {
        match *op {
            Op::Set { key, coll, size } => {
                let s = self.seqno();
                let mut d = Document::new(key_of(key, coll), s, value_of(s.0, size));
                d.meta.cas = Cas(s.0 << 16 | u64::from(key));
                d.meta.rev_seqno = RevSeqno(s.0 / 3 + 1);
                d.meta.flags = s.0 as u32 ^ 0xdead;
                d.meta.expiry = if size % 5 == 4 { s.0 as u32 + 1000 } else { 0 };
                d.meta.datatype = Datatype(size % 8);
                self.staged.items.push(d);
            }
            Op::Delete { key, coll } => {
                let s = self.seqno();
                let mut d = Document::tombstone(key_of(key, coll), s, s.0 as u32);
                d.meta.cas = Cas(s.0 << 16);
                self.staged.items.push(d);
            }
            Op::Local { name, delete } => {
                let name = format!("_local/fuzz/{}", name % 4);
                self.staged.local.push(if delete {
                    LocalOp::Delete { name }
                } else {
                    LocalOp::Set {
                        name,
                        value: Bytes::from(format!("v{}", self.next_seqno).repeat(3)),
                    }
                });
            }
            Op::State(s) => {
                self.staged.vbstate = Some(VbucketState {
                    state: [
                        VbState::Active,
                        VbState::Replica,
                        VbState::Pending,
                        VbState::Dead,
                    ][usize::from(s % 4)],
                    max_cas: Cas(u64::from(s) << 20),
                    snapshot_start: Seqno(u64::from(s)),
                    snapshot_end: Seqno(u64::from(s) * 2),
                    ..VbucketState::default()
                });
            }
            Op::Commit { hinted } => self.commit(hinted)?,
            Op::Rollback(back) => self.rollback(back)?,
            Op::Compact {
                drop_deletes,
                older_than,
                seqno_bound,
                drop_collection,
            } => {
                let high = self.high()?;
                let below = |b: u8| high.saturating_sub(u64::from(b));
                let config = CompactionConfig {
                    drop_deletes,
                    purge_before_ts: older_than.map_or(0, |b| below(b) as u32),
                    purge_before_seqno: seqno_bound.map(|b| Seqno(below(b))),
                    dropped: drop_collection
                        .map(|b| DroppedCollection {
                            cid: CollectionId(8),
                            end_seqno: Seqno(below(b)),
                        })
                        .into_iter()
                        .collect(),
                    cancel: None,
                };
                self.compact(config)?;
            }
            Op::Checkpoint => {
                let vb = Arc::clone(self.vb()?);
                let (r, fired) = self.io(|| vb.checkpoint());
                self.anchor = self.high()?;
                if let Err(e) = r
                    && !fired
                {
                    return Err(format!("checkpoint failed without a fault: {e}"));
                }
                self.compare()?;
            }
            Op::Maintain => {
                let store = self.store.as_ref().ok_or_else(|| "no store".to_owned())?;
                let (r, fired) = self.io(|| store.maintain());
                self.anchor = self.high()?;
                if let Err(e) = r
                    && !fired
                {
                    return Err(format!("maintenance failed without a fault: {e}"));
                }
                self.compare()?;
            }
            Op::Scan { back, every } => {
                let start = Seqno(self.high()?.saturating_sub(u64::from(back)));
                let opts = || ScanOptions {
                    include_deleted: back % 2 == 0,
                    keys_only: back % 3 == 0,
                    cancel: None,
                };
                let mut c = self
                    .vb()?
                    .seqno_scan(start, Seqno(u64::MAX), opts())
                    .map_err(|e| format!("seqno_scan: {e}"))?;
                let mut m = self
                    .model
                    .vb
                    .seqno_scan(start, Seqno(u64::MAX), opts())
                    .map_err(|e| format!("reference seqno_scan: {e}"))?;
                if c.snapshot_high_seqno() != m.snapshot_high_seqno() {
                    return Err(format!(
                        "scan snapshot high: couchfile {}, model {}",
                        c.snapshot_high_seqno(),
                        m.snapshot_high_seqno()
                    ));
                }
                let got = drain(&mut *c, every)?;
                let want = drain(&mut *m, 0)?;
                if got != want {
                    return Err(format!(
                        "scan from {start}: couchfile {got:?}\nmodel {want:?}"
                    ));
                }
                if c.last_seqno() != m.last_seqno() {
                    return Err(format!(
                        "scan last seqno: couchfile {:?}, model {:?}",
                        c.last_seqno(),
                        m.last_seqno()
                    ));
                }
            }
            Op::ScanAcross { compact } => {
                let opts = || ScanOptions {
                    include_deleted: true,
                    ..ScanOptions::default()
                };
                let mut c = self
                    .vb()?
                    .seqno_scan(Seqno(0), Seqno(u64::MAX), opts())
                    .map_err(|e| format!("seqno_scan: {e}"))?;
                let mut m = self
                    .model
                    .vb
                    .seqno_scan(Seqno(0), Seqno(u64::MAX), opts())
                    .map_err(|e| format!("reference seqno_scan: {e}"))?;
                let mut got = Vec::new();
                let first = c
                    .run(&mut |d| {
                        got.push(d);
                        ScanControl::Yield
                    })
                    .map_err(|e| format!("scan run: {e}"))?;
                self.commit(true)?;
                if compact {
                    self.compact(CompactionConfig {
                        drop_deletes: true,
                        ..CompactionConfig::default()
                    })?;
                }
                if first != ScanStatus::Done {
                    got.extend(drain(&mut *c, 0)?);
                }
                let want = drain(&mut *m, 0)?;
                if got != want {
                    return Err(format!(
                        "a scan held across a commit: couchfile {got:?}\nmodel {want:?}"
                    ));
                }
            }
            Op::Reopen { clean } => self.reopen(clean)?,
            Op::Arm(f) => self.arm(f),
            Op::TornCommit(f) => {
                self.arm(f);
                self.commit(false)?;
                self.reopen(false)?;
            }
        }
        let now = match &self.vb {
            Some(vb) => counters(vb),
            None => 0,
        };
        if now != self.counters {
            // A checkpoint, rewrite or reclamation ran inside this step:
            // the exact rollback window starts no later than here.
            self.counters = now;
            self.anchor = self.high()?;
        }
        Ok(())
    }

    fn arm(&self, f: Fault) {
        // One fault at a time, so `armed` tells whether it fired.
        self.faults.clear();
        match f {
            Fault::Write(n) => self.faults.fail_write_in(u64::from(n % 8)),
            Fault::Sync(n) => self.faults.fail_sync_in(u64::from(n % 8)),
        }
    }

    fn commit(&mut self, hinted: bool) -> Result<(), String> {
        let batch = std::mem::take(&mut self.staged);
        let priors: Vec<Prior> = if hinted {
            let keys: Vec<DiskKey> = batch.items.iter().map(|d| d.key.clone()).collect();
            self.model
                .vb
                .get_many(&keys)
                .map_err(|e| format!("reference get_many: {e}"))?
                .into_iter()
                .map(Prior::from_read)
                .collect()
        } else {
            Vec::new()
        };
        let vb = Arc::clone(self.vb()?);
        let (r, fired) = self.io(|| vb.commit_with_priors(batch.clone(), priors.clone()));
        match r {
            Ok(info) => {
                if !batch.is_empty() {
                    self.model
                        .vb
                        .commit_with_priors(batch.clone(), priors)
                        .map_err(|e| {
                            format!("the reference refuses a commit couchfile took: {e}")
                        })?;
                    self.model.log.push(MemOp::Commit(batch));
                    let high = self.high()?;
                    self.model.points.push(Point {
                        high,
                        log_len: self.model.log.len(),
                    });
                    self.failed.clear();
                }
                let high = self.high()?;
                if info.high_seqno.0 != high {
                    return Err(format!(
                        "commit says high seqno {}, the model has {high}",
                        info.high_seqno
                    ));
                }
            }
            Err(e) if fired => {
                let _ = e;
                if !batch.is_empty() {
                    self.failed.push(Failed::Commit(batch));
                }
            }
            Err(e) => return Err(format!("commit failed without a fault: {e}")),
        }
        self.compare()
    }

    fn compact(&mut self, config: CompactionConfig) -> Result<(), String> {
        let vb = Arc::clone(self.vb()?);
        let (r, fired) = self.io(|| vb.compact(&config));
        self.anchor = self.high()?;
        match r {
            Ok(got) => {
                let want = self
                    .model
                    .vb
                    .compact(&config)
                    .map_err(|e| format!("reference compact: {e}"))?;
                self.model.log.push(MemOp::Compact(config.clone()));
                let high = self.high()?;
                self.model.points.push(Point {
                    high,
                    log_len: self.model.log.len(),
                });
                if (got.tombstones_purged, got.collection_items_purged)
                    != (want.tombstones_purged, want.collection_items_purged)
                {
                    return Err(format!(
                        "compaction purged {}/{} (tombstones/collection items), the model {}/{}",
                        got.tombstones_purged,
                        got.collection_items_purged,
                        want.tombstones_purged,
                        want.collection_items_purged
                    ));
                }
                self.failed.clear();
                self.compare()
            }
            Err(e) if fired => {
                let _ = e;
                if self.compare().is_err() {
                    // Its purge records landed before the failure.
                    let alt = self.model.with(MemOp::Compact(config.clone()))?;
                    let couch = snapshot(&**self.vb()?)?;
                    if let Some(d) = diff(&couch, &snapshot(&*alt.vb)?) {
                        return Err(format!(
                            "after a failed compaction the store is neither as before nor compacted: {d}"
                        ));
                    }
                    self.model = alt;
                } else {
                    self.failed.push(Failed::Compact(config));
                }
                Ok(())
            }
            Err(e) => Err(format!("compaction failed without a fault: {e}")),
        }
    }

    fn rollback(&mut self, back: u8) -> Result<(), String> {
        self.staged = CommitBatch::new();
        let high = self.high()?;
        let target = high.saturating_sub(u64::from(back));
        let before = snapshot(&*self.model.vb)?;
        let exact_from = self.anchor;
        let vb = Arc::clone(self.vb()?);
        let (r, fired) = self.io(|| vb.rollback(Seqno(target)));
        let r = match r {
            Ok(r) => r,
            Err(e) if fired => {
                let _ = e;
                self.failed.push(Failed::Rollback(Seqno(target)));
                return self.compare();
            }
            Err(e) => return Err(format!("rollback to {target} failed without a fault: {e}")),
        };
        // Acknowledged: an operation that failed before it may no longer
        // land at a crash.
        self.failed.clear();
        if target >= high {
            if r.high_seqno.0 != high || r.to_zero {
                return Err(format!(
                    "a rollback to {target}, at or above the high seqno {high}, gave {r:?}"
                ));
            }
        } else {
            if r.high_seqno.0 > target {
                return Err(format!(
                    "rollback to {target} left high seqno {}",
                    r.high_seqno
                ));
            }
            self.land(target, r.high_seqno.0, r.to_zero, exact_from)?;
        }
        let after = snapshot(&*self.model.vb)?;
        let discarded: BTreeSet<&DiskKey> = r.discarded.iter().collect();
        for (k, (b, a)) in all_keys().iter().zip(before.gets.iter().zip(&after.gets)) {
            if b != a && !discarded.contains(k) {
                return Err(format!(
                    "rollback to {target} changed {k} ({b:?} -> {a:?}) without reporting it"
                ));
            }
        }
        self.compare()
    }

    /// Moves the reference to where a rollback to `target` landed (`high`,
    /// or zero), checking that the landing is allowed: exact when `target`
    /// is at or above `exact_from`.
    fn land(
        &mut self,
        target: u64,
        high: u64,
        to_zero: bool,
        exact_from: u64,
    ) -> Result<(), String> {
        self.anchor = high;
        self.next_seqno = self.next_seqno.max(high + 1);
        let newest = self.model.points.iter().rposition(|p| p.high <= target);
        if to_zero {
            if high != 0 {
                return Err(format!("a rollback to zero left high seqno {high}"));
            }
            if target >= exact_from && newest.is_some_and(|p| self.model.points[p].high > 0) {
                return Err(format!(
                    "rollback to {target} went to zero inside the exact window (from {exact_from})"
                ));
            }
            self.model = Reference::new()?;
            return Ok(());
        }
        let Some(pos) = self.model.points.iter().rposition(|p| p.high == high) else {
            return Err(format!(
                "rollback to {target} landed on high seqno {high}, which no commit had"
            ));
        };
        if target >= exact_from && Some(pos) != newest {
            return Err(format!(
                "rollback to {target} inside the exact window (from {exact_from}) landed on {high}, not on the newest commit at or below it"
            ));
        }
        let r = self
            .model
            .vb
            .rollback(Seqno(high))
            .map_err(|e| format!("reference rollback: {e}"))?;
        let reached = self
            .model
            .vb
            .info()
            .map_err(|e| format!("reference info: {e}"))?;
        if r.to_zero || reached.high_seqno.0 != high {
            // The reference compacted that history away, or couchfile
            // landed further back than the newest commit: replay the
            // history up to the landing point.
            self.model = self.model.at_point(pos)?;
        }
        self.model.points.truncate(pos + 1);
        let len = self.model.points[pos].log_len;
        self.model.log.truncate(len);
        Ok(())
    }

    fn reopen(&mut self, clean: bool) -> Result<(), String> {
        self.faults.clear();
        self.staged = CommitBatch::new();
        let rev = self.vb()?.revision();
        self.vb = None;
        if let Some(store) = self.store.take() {
            if clean {
                store.close().map_err(|e| format!("close: {e}"))?;
            }
            drop(store);
        }
        let store = CouchStore::open(self.dir, config(self.profile, &self.faults))
            .map_err(|e| format!("reopen: {e}"))?;
        let found = store.discover().map_err(|e| format!("discover: {e}"))?;
        let [(vbid, rev_now)] = found[..] else {
            return Err(format!(
                "discover found {found:?}, want one revision of {VB}"
            ));
        };
        if vbid != VB || rev_now < rev {
            return Err(format!("discover found {found:?}, had {rev}"));
        }
        let vb = store
            .open_couch(VB, rev_now)
            .map_err(|e| format!("open after reopen: {e}"))?;
        self.counters = counters(&vb);
        self.vb = Some(vb);
        self.store = Some(store);
        self.model.reopen()?;
        let high = self.high()?;
        self.anchor = high;
        let failed = std::mem::take(&mut self.failed);
        if self.compare().is_ok() {
            return Ok(());
        }
        // Only an operation that failed since the last acknowledged commit
        // may explain a difference: it landed after all.
        let couch = snapshot(&**self.vb()?)?;
        let mut tried = Vec::new();
        for f in failed.iter().rev() {
            match f {
                Failed::Commit(b) => {
                    let alt = self.model.with(MemOp::Commit(b.clone()))?;
                    match diff(&couch, &snapshot(&*alt.vb)?) {
                        None => {
                            self.model = alt;
                            self.next_seqno = self.next_seqno.max(couch.high.0 + 1);
                            return Ok(());
                        }
                        Some(d) => tried.push(format!("with the failed commit: {d}")),
                    }
                }
                Failed::Compact(c) => {
                    let alt = self.model.with(MemOp::Compact(c.clone()))?;
                    match diff(&couch, &snapshot(&*alt.vb)?) {
                        None => {
                            self.model = alt;
                            return Ok(());
                        }
                        Some(d) => tried.push(format!("with the failed compaction: {d}")),
                    }
                }
                Failed::Rollback(t) => {
                    let to_zero = couch.high.0 == 0 && couch.by_key.is_empty();
                    if couch.high.0 <= t.0 {
                        let alt = if to_zero {
                            Reference::new()?
                        } else if let Some(pos) = self
                            .model
                            .points
                            .iter()
                            .rposition(|p| p.high == couch.high.0)
                        {
                            self.model.at_point(pos)?
                        } else {
                            tried.push(format!(
                                "with the failed rollback to {t}: no commit had high seqno {}",
                                couch.high
                            ));
                            continue;
                        };
                        match diff(&couch, &snapshot(&*alt.vb)?) {
                            None => {
                                self.model = alt;
                                return Ok(());
                            }
                            Some(d) => tried.push(format!("with the failed rollback to {t}: {d}")),
                        }
                    }
                }
            }
        }
        let base = diff(&couch, &snapshot(&*self.model.vb)?).unwrap_or_default();
        Err(format!(
            "after reopen the store differs from what was acknowledged: {base}\n(failed since the last commit: {failed:?}; {})",
            tried.join("; ")
        ))
    }
}
