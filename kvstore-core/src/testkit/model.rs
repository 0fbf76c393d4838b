//! A property test: random sets, deletes, commits, reopens, scans (some
//! across commits and compactions), rollbacks and compactions, checked after
//! every step against a plain `BTreeMap` model.

use super::{Harness, StoreFactory};
use crate::doc::{Document, LocalOp};
use crate::key::DiskKey;
use crate::store::{
    CommitBatch, CompactionConfig, KeyRange, Prior, ScanControl, ScanOptions, ScanStatus, VbStore,
};
use crate::sync::Arc;
use crate::types::{CollectionId, Revision, Seqno, Vbid};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

/// The number of cases run by default; `KVSTORE_MODEL_CASES` overrides it.
pub const DEFAULT_CASES: u32 = 256;

/// One step of a random sequence.
#[derive(Debug, Clone)]
pub enum Op {
    /// Stage a set of key `key` (in collection 8 when `coll`), with a value
    /// of the chosen size class.
    Set {
        /// Key index.
        key: u8,
        /// In collection 8 rather than the default one.
        coll: bool,
        /// Value size class: 0 small, 1 medium, 2 larger than a block.
        size: u8,
    },
    /// Stage a delete.
    Delete {
        /// Key index.
        key: u8,
        /// In collection 8.
        coll: bool,
    },
    /// Stage a local-document change.
    Local {
        /// Name index.
        name: u8,
        /// Delete rather than set.
        delete: bool,
    },
    /// Commit what is staged.
    Commit {
        /// Pass the exact prior of every item (from the model), as a caller
        /// that reads before it writes would.
        hinted: bool,
    },
    /// Drop everything and reopen the backend.
    Reopen,
    /// Scan a by-seqno range with yields.
    Scan {
        /// How far below the high seqno to start.
        back: u8,
        /// Yield after this many documents.
        every: u8,
    },
    /// Start a scan, commit (and maybe compact) in the middle, finish it.
    ScanAcross {
        /// Compact too.
        compact: bool,
    },
    /// Roll back this many seqnos.
    Rollback {
        /// Distance below the high seqno.
        back: u8,
    },
    /// Compact, purging tombstones or not.
    Compact {
        /// Purge every tombstone.
        drop_deletes: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0u8..24, any::<bool>(), prop_oneof![8 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(key, coll, size)| Op::Set { key, coll, size }),
        3 => (0u8..24, any::<bool>()).prop_map(|(key, coll)| Op::Delete { key, coll }),
        1 => (0u8..4, any::<bool>()).prop_map(|(name, delete)| Op::Local { name, delete }),
        5 => any::<bool>().prop_map(|hinted| Op::Commit { hinted }),
        1 => Just(Op::Reopen),
        2 => (0u8..30, 1u8..6).prop_map(|(back, every)| Op::Scan { back, every }),
        1 => any::<bool>().prop_map(|compact| Op::ScanAcross { compact }),
        2 => (0u8..20).prop_map(|back| Op::Rollback { back }),
        1 => any::<bool>().prop_map(|drop_deletes| Op::Compact { drop_deletes }),
    ]
}

/// A random operation sequence.
pub fn ops_strategy() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op_strategy(), 1..60)
}

#[derive(Clone, Default, PartialEq, Eq, Debug)]
struct State {
    docs: BTreeMap<DiskKey, Document>,
    local: BTreeMap<String, Bytes>,
    high: u64,
}

struct Model {
    state: State,
    /// The state after every commit still reachable by rollback, oldest
    /// first; the first entry is the base (empty, or a compaction point).
    history: Vec<State>,
    staged: Vec<Document>,
    staged_local: Vec<LocalOp>,
    next_seqno: u64,
}

impl Model {
    fn new() -> Self {
        Model {
            state: State::default(),
            history: vec![State::default()],
            staged: Vec::new(),
            staged_local: Vec::new(),
            next_seqno: 1,
        }
    }

    fn take_batch(&mut self) -> CommitBatch {
        CommitBatch {
            items: std::mem::take(&mut self.staged),
            local: std::mem::take(&mut self.staged_local),
            vbstate: None,
        }
    }

    /// The exact prior of every item of `batch`: the committed version of
    /// its key (the store's state before the batch).
    fn priors(&self, batch: &CommitBatch) -> Vec<Prior> {
        batch
            .items
            .iter()
            .map(|d| Prior::from_read(self.state.docs.get(&d.key).cloned()))
            .collect()
    }

    fn apply(&mut self, batch: &CommitBatch) {
        if batch.is_empty() {
            return;
        }
        for d in &batch.items {
            match self.state.docs.get(&d.key) {
                Some(old) if old.meta.seqno > d.meta.seqno => {}
                _ => {
                    self.state.docs.insert(d.key.clone(), d.clone());
                }
            }
            self.state.high = self.state.high.max(d.meta.seqno.0);
        }
        for op in &batch.local {
            match op {
                LocalOp::Set { name, value } => {
                    self.state.local.insert(name.clone(), value.clone());
                }
                LocalOp::Delete { name } => {
                    self.state.local.remove(name);
                }
            }
        }
        self.history.push(self.state.clone());
    }
}

fn model_key(key: u8, coll: bool) -> DiskKey {
    let cid = if coll {
        CollectionId(8)
    } else {
        CollectionId::DEFAULT
    };
    DiskKey::new(cid, format!("key-{key:02}").as_bytes()).expect("valid key")
}

fn value_for(seqno: u64, size: u8) -> Vec<u8> {
    let len = match size {
        0 => (seqno % 40) as usize,
        1 => 300 + (seqno % 700) as usize,
        _ => 5000 + (seqno % 4000) as usize,
    };
    (0..len).map(|i| (seqno as usize + i * 7) as u8).collect()
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)*)));
        }
    };
}

type Step = Result<(), TestCaseError>;

fn err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> TestCaseError + '_ {
    move |e| TestCaseError::fail(format!("{what}: {e}"))
}

fn read_all(vb: &dyn VbStore) -> Result<Vec<Document>, TestCaseError> {
    let mut out = Vec::new();
    vb.key_range(&KeyRange::all(), &mut |d| {
        out.push(d);
        ScanControl::Continue
    })
    .map_err(err("key_range"))?;
    Ok(out)
}

fn compare(vb: &dyn VbStore, state: &State) -> Step {
    let docs = read_all(vb)?;
    let expect: Vec<&Document> = state.docs.values().collect();
    check!(
        docs.len() == expect.len(),
        "store has {} documents, model {}",
        docs.len(),
        expect.len()
    );
    for (got, want) in docs.iter().zip(&expect) {
        check!(got == *want, "by key: store {got:?}, model {want:?}");
    }
    let mut by_seqno = Vec::new();
    let mut scan = vb
        .seqno_scan(
            Seqno(0),
            Seqno(u64::MAX),
            ScanOptions {
                include_deleted: true,
                ..ScanOptions::default()
            },
        )
        .map_err(err("seqno_scan"))?;
    scan.run(&mut |d| {
        by_seqno.push(d.meta.seqno.0);
        ScanControl::Continue
    })
    .map_err(err("scan run"))?;
    let mut want: Vec<u64> = state.docs.values().map(|d| d.meta.seqno.0).collect();
    want.sort_unstable();
    check!(
        by_seqno == want,
        "by seqno: store {by_seqno:?}, model {want:?}"
    );
    let info = vb.info().map_err(err("info"))?;
    let live = state.docs.values().filter(|d| !d.is_deleted()).count() as u64;
    check!(
        (info.live_items, info.deleted_items) == (live, state.docs.len() as u64 - live),
        "counts: store {}/{}, model {}/{}",
        info.live_items,
        info.deleted_items,
        live,
        state.docs.len() as u64 - live
    );
    let data_bytes: u64 = state.docs.values().map(Document::body_size).sum();
    check!(
        info.data_bytes == data_bytes,
        "data bytes: store {}, model {data_bytes}",
        info.data_bytes
    );
    check!(
        info.high_seqno.0 == state.high,
        "high seqno: store {}, model {}",
        info.high_seqno,
        state.high
    );
    let local: BTreeMap<String, Bytes> = vb
        .list_local()
        .map_err(err("list_local"))?
        .into_iter()
        .collect();
    check!(
        local == state.local,
        "local: store {local:?}, model {:?}",
        state.local
    );
    for probe in [model_key(0, false), model_key(23, true)] {
        let got = vb.get(&probe).map_err(err("get"))?;
        check!(
            got.as_ref() == state.docs.get(&probe),
            "get {probe}: store {got:?}"
        );
    }
    Ok(())
}

struct Run<'f> {
    h: Harness<'f>,
    vb: Option<Arc<dyn VbStore>>,
    m: Model,
    window: usize,
}

impl Run<'_> {
    fn vb(&self) -> &dyn VbStore {
        self.vb.as_deref().expect("vbucket is open")
    }

    fn commit(&mut self, hinted: bool) -> Step {
        let batch = self.m.take_batch();
        if hinted {
            let priors = self.m.priors(&batch);
            self.vb()
                .commit_with_priors(batch.clone(), priors)
                .map_err(err("commit with priors"))?;
        } else {
            self.vb().commit(batch.clone()).map_err(err("commit"))?;
        }
        self.m.apply(&batch);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Step {
        match *op {
            Op::Set { key, coll, size } => {
                let seqno = self.m.next_seqno;
                self.m.next_seqno += 1;
                let mut d =
                    Document::new(model_key(key, coll), Seqno(seqno), value_for(seqno, size));
                d.meta.flags = seqno as u32;
                d.meta.cas = crate::Cas(seqno << 16);
                self.m.staged.push(d);
            }
            Op::Delete { key, coll } => {
                let seqno = self.m.next_seqno;
                self.m.next_seqno += 1;
                self.m.staged.push(Document::tombstone(
                    model_key(key, coll),
                    Seqno(seqno),
                    seqno as u32,
                ));
            }
            Op::Local { name, delete } => {
                let name = format!("_local/model/{name}");
                self.m.staged_local.push(if delete {
                    LocalOp::Delete { name }
                } else {
                    LocalOp::Set {
                        name,
                        value: Bytes::from(format!("v{}", self.m.next_seqno)),
                    }
                });
            }
            Op::Commit { hinted } => self.commit(hinted)?,
            Op::Reopen => {
                let rev: Revision = self.vb().revision();
                self.vb = None;
                self.m.staged.clear();
                self.m.staged_local.clear();
                self.h.reopen();
                let found = self.h.store().discover().map_err(err("discover"))?;
                check!(
                    found == vec![(Vbid(0), rev)],
                    "discover: {found:?}, want rev {rev}"
                );
                self.vb = Some(self.h.store().open(Vbid(0), rev).map_err(err("open"))?);
            }
            Op::Scan { back, every } => {
                let start = self.m.state.high.saturating_sub(u64::from(back));
                let mut got = Vec::new();
                let mut scan = self
                    .vb()
                    .seqno_scan(
                        Seqno(start),
                        Seqno(u64::MAX),
                        ScanOptions {
                            include_deleted: true,
                            ..ScanOptions::default()
                        },
                    )
                    .map_err(err("seqno_scan"))?;
                let mut guard = 0;
                loop {
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
                        .map_err(err("scan run"))?;
                    if st == ScanStatus::Done {
                        break;
                    }
                    guard += 1;
                    check!(guard < 10_000, "scan does not finish");
                }
                let mut want: Vec<&Document> = self
                    .m
                    .state
                    .docs
                    .values()
                    .filter(|d| d.meta.seqno.0 >= start)
                    .collect();
                want.sort_by_key(|d| d.meta.seqno);
                check!(
                    got.len() == want.len(),
                    "scan from {start}: {} vs {}",
                    got.len(),
                    want.len()
                );
                for (g, w) in got.iter().zip(want) {
                    check!(g == w, "scan: store {g:?}, model {w:?}");
                }
            }
            Op::ScanAcross { compact } => {
                let snapshot = self.m.state.clone();
                let mut got = Vec::new();
                let mut scan = self
                    .vb()
                    .seqno_scan(
                        Seqno(0),
                        Seqno(u64::MAX),
                        ScanOptions {
                            include_deleted: true,
                            ..ScanOptions::default()
                        },
                    )
                    .map_err(err("seqno_scan"))?;
                let st = scan
                    .run(&mut |d| {
                        got.push(d);
                        ScanControl::Yield
                    })
                    .map_err(err("scan run"))?;
                self.commit(true)?;
                if compact {
                    self.step(&Op::Compact { drop_deletes: true })?;
                }
                if st != ScanStatus::Done {
                    scan.run(&mut |d| {
                        got.push(d);
                        ScanControl::Continue
                    })
                    .map_err(err("scan run"))?;
                }
                let mut want: Vec<&Document> = snapshot.docs.values().collect();
                want.sort_by_key(|d| d.meta.seqno);
                check!(
                    got.len() == want.len(),
                    "pinned scan: {} vs {}",
                    got.len(),
                    want.len()
                );
                for (g, w) in got.iter().zip(want) {
                    check!(g == w, "pinned scan: store {g:?}, model {w:?}");
                }
            }
            Op::Rollback { back } => {
                self.m.staged.clear();
                self.m.staged_local.clear();
                let target = self.m.state.high.saturating_sub(u64::from(back));
                let before = self.m.state.clone();
                let r = self.vb().rollback(Seqno(target)).map_err(err("rollback"))?;
                check!(
                    r.high_seqno.0 <= target,
                    "rollback to {target} left {}",
                    r.high_seqno
                );
                let newest = self.m.history.iter().rposition(|s| s.high <= target);
                let after = if r.to_zero {
                    check!(
                        r.high_seqno == Seqno(0),
                        "to_zero with high {}",
                        r.high_seqno
                    );
                    self.m.history = vec![State::default()];
                    State::default()
                } else {
                    let pos = self
                        .m
                        .history
                        .iter()
                        .rposition(|s| s.high == r.high_seqno.0 && s.high <= target);
                    let Some(pos) = pos else {
                        return Err(TestCaseError::fail(format!(
                            "rollback to {target} landed on {} which no commit had",
                            r.high_seqno
                        )));
                    };
                    let commits_back = self.m.history.len() - 1 - newest.unwrap_or(0);
                    if commits_back <= self.window {
                        check!(
                            Some(pos) == newest,
                            "rollback to {target} within the exact window landed on {}",
                            r.high_seqno
                        );
                    }
                    self.m.history.truncate(pos + 1);
                    self.m.history[pos].clone()
                };
                let discarded: BTreeSet<&DiskKey> = r.discarded.iter().collect();
                let changed = before
                    .docs
                    .keys()
                    .chain(after.docs.keys())
                    .filter(|k| before.docs.get(*k) != after.docs.get(*k));
                for k in changed {
                    check!(discarded.contains(k), "rollback did not report {k}");
                }
                self.m.state = after;
                self.m.next_seqno = self.m.state.high + 1;
            }
            Op::Compact { drop_deletes } => {
                let r = self
                    .vb()
                    .compact(&CompactionConfig {
                        drop_deletes,
                        ..CompactionConfig::default()
                    })
                    .map_err(err("compact"))?;
                if drop_deletes {
                    let high = self.m.state.high;
                    let purged = self
                        .m
                        .state
                        .docs
                        .values()
                        .filter(|d| d.is_deleted() && d.meta.seqno.0 < high)
                        .count() as u64;
                    check!(
                        r.tombstones_purged == purged,
                        "purged {} want {purged}",
                        r.tombstones_purged
                    );
                    self.m
                        .state
                        .docs
                        .retain(|_, d| !d.is_deleted() || d.meta.seqno.0 >= high);
                }
                // Compaction may discard rollback history.
                self.m.history = vec![self.m.state.clone()];
            }
        }
        Ok(())
    }
}

fn run_case(f: &dyn StoreFactory, ops: &[Op]) -> Step {
    let h = Harness::new(f);
    let vb = h.store().create(Vbid(0)).map_err(err("create"))?;
    let mut run = Run {
        h,
        vb: Some(vb),
        m: Model::new(),
        window: f.exact_rollback_window(),
    };
    for (i, op) in ops.iter().enumerate() {
        run.step(op)
            .map_err(|e| TestCaseError::fail(format!("step {i} {op:?}: {e}")))?;
        compare(run.vb(), &run.m.state)
            .map_err(|e| TestCaseError::fail(format!("after step {i} {op:?}: {e}")))?;
    }
    Ok(())
}

/// Runs the model test; panics with the shrunk failing sequence.
pub fn model_random_operations(f: &dyn StoreFactory) {
    let cases = std::env::var("KVSTORE_MODEL_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&ops_strategy(), |ops| run_case(f, &ops)) {
        panic!("model test failed: {e}");
    }
}
