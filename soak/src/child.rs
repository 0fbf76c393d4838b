//! The child: an engine under a mixed load from several threads until it
//! is killed.
//!
//! - Workers (one per group of vbuckets, so each vbucket has one writer and
//!   the worker's own model of it is exact): sets and deletes, durable or
//!   not, reads checked against that model at once, a compaction of their
//!   vbucket now and then, and a vbucket delete followed by its re-creation.
//! - A collections thread: a new manifest every few hundred milliseconds
//!   that drops a user collection or brings one back (resurrection: the
//!   same id, none of its old items). Writes and reads of user collections
//!   hold a read lock that the manifest change takes for writing, so each
//!   operation sees one manifest.
//! - A compactor: compactions of random vbuckets, racing the workers'
//!   writes and vbucket deletes.
//! - The main thread: the peak RSS (VmHWM) and counters, every 200 ms.
//!
//! Every operation that changes state is announced (`TRY`) and
//! acknowledged (`ACK`) on stdout; see [`crate::proto`].

use crate::model::{COLLS, KEYS, VBS, cid, key, manifest_json, open_bits, value, value_op};
use crate::proto::{Line, Op};
use engine::{CompactionConfig, Engine, EngineError, StoreError, VbState, Vbid, WriteOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// The collections as the child last set them.
#[derive(Debug, Clone)]
struct Colls {
    uid: u64,
    open: u32,
    /// Bumped at every drop or creation of a collection, so a worker knows
    /// its model entries of an older generation are void.
    generation: [u64; COLLS as usize + 1],
}

impl Colls {
    fn is_open(&self, c: u8) -> bool {
        c == 0 || self.open & (1 << (c - 1)) != 0
    }
}

struct Shared {
    engine: Engine,
    out: Mutex<std::io::Stdout>,
    colls: RwLock<Colls>,
    next_op: AtomicU64,
    reads: AtomicU64,
    checks: AtomicU64,
}

impl Shared {
    fn say(&self, line: &Line) {
        let mut o = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A parent that went away ends the child: nothing to report to.
        if writeln!(o, "{line}").and_then(|()| o.flush()).is_err() {
            std::process::exit(3);
        }
    }

    fn violation(&self, what: String) {
        self.say(&Line::Violation(what));
    }

    fn op(&self) -> u64 {
        self.next_op.fetch_add(1, Ordering::Relaxed)
    }

    fn colls(&self) -> std::sync::RwLockReadGuard<'_, Colls> {
        self.colls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The child's settings.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    /// The engine configuration.
    pub engine: engine::EngineConfig,
    /// The first operation number to use.
    pub start: u64,
    /// The random seed.
    pub seed: u64,
    /// Worker threads.
    pub workers: u16,
}

/// Runs the child until it is killed.
pub fn run(cfg: ChildConfig) -> ! {
    let engine = match Engine::open(cfg.engine.clone()) {
        Ok(e) => e,
        Err(e) => {
            println!("{}", Line::Violation(format!("warmup failed: {e}")));
            std::process::exit(2);
        }
    };
    let m = engine.manifest();
    let shared = Arc::new(Shared {
        colls: RwLock::new(Colls {
            uid: m.uid,
            open: open_bits(&m),
            generation: [0; COLLS as usize + 1],
        }),
        engine,
        out: Mutex::new(std::io::stdout()),
        next_op: AtomicU64::new(cfg.start),
        reads: AtomicU64::new(0),
        checks: AtomicU64::new(0),
    });
    let s = &shared;
    if m.uid == 0 {
        let all = (1u32 << COLLS) - 1;
        let op = Op::Manifest { uid: 1, open: all };
        s.say(&Line::Try(0, op));
        if let Err(e) = s.engine.set_collections(manifest_json(1, all).as_bytes()) {
            s.violation(format!("the first manifest failed: {e}"));
            std::process::exit(2);
        }
        s.say(&Line::Ack(0, op, 0));
        let mut c = s
            .colls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        c.uid = 1;
        c.open = all;
    }
    for vb in 0..VBS {
        if s.engine.vbucket(Vbid(vb)).is_err() {
            create(s, 0, vb);
        }
    }
    s.say(&Line::Ready);
    let workers = cfg.workers.clamp(1, VBS);
    for w in 0..workers {
        let sh = Arc::clone(&shared);
        let seed = cfg.seed ^ cfg.start ^ u64::from(w) << 48;
        let vbs: Vec<u16> = (0..VBS).filter(|v| v % workers == w).collect();
        std::thread::spawn(move || Worker::new(&sh, u32::from(w) + 1, vbs, seed).run());
    }
    let sh = Arc::clone(&shared);
    let seed = cfg.seed ^ cfg.start;
    let t = u32::from(workers) + 1;
    std::thread::spawn(move || collections(&sh, t, seed));
    let sh = Arc::clone(&shared);
    std::thread::spawn(move || compactor(&sh, seed.rotate_left(17)));
    loop {
        std::thread::sleep(Duration::from_millis(200));
        s.say(&Line::Stat {
            rss_kb: peak_rss_kb(),
            reads: s.reads.load(Ordering::Relaxed),
            checks: s.checks.load(Ordering::Relaxed),
        });
    }
}

/// VmHWM of this process, in KiB (0 where /proc is missing).
#[must_use]
pub fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn create(s: &Shared, t: u32, vb: u16) {
    let op = Op::CreateVb { vb };
    s.say(&Line::Try(t, op));
    match s.engine.create_vbucket(Vbid(vb), VbState::Active) {
        Ok(()) => s.say(&Line::Ack(t, op, 0)),
        Err(e) => {
            s.violation(format!("vb:{vb} cannot be created: {e}"));
            std::process::exit(2);
        }
    }
}

struct Worker<'s> {
    s: &'s Shared,
    t: u32,
    vbs: Vec<u16>,
    rng: StdRng,
    /// Per key: what it holds (operation number, or `None`), and the
    /// collection generation that holds it.
    model: HashMap<(u16, u8, u16), (Option<u64>, u64)>,
}

impl<'s> Worker<'s> {
    fn new(s: &'s Shared, t: u32, vbs: Vec<u16>, seed: u64) -> Self {
        let mut w = Worker {
            s,
            t,
            vbs,
            rng: StdRng::seed_from_u64(seed),
            model: HashMap::new(),
        };
        // What warmup found (the parent has checked it).
        let colls = s.colls();
        for vb in w.vbs.clone() {
            for c in 0..=COLLS {
                for k in 0..KEYS {
                    let v = match s.engine.get(Vbid(vb), &key(c, k)) {
                        Ok(item) => value_op(&item.value),
                        Err(_) => None,
                    };
                    w.model
                        .insert((vb, c, k), (v, colls.generation[usize::from(c)]));
                }
            }
        }
        drop(colls);
        w
    }

    fn run(mut self) {
        loop {
            let vb = self.vbs[self.rng.random_range(0..self.vbs.len())];
            let roll = self.rng.random_range(0..1000);
            if roll < 4 {
                self.recreate(vb);
            } else if roll < 12 {
                let r = self.s.engine.compact(
                    Vbid(vb),
                    CompactionConfig {
                        drop_deletes: self.rng.random_bool(0.5),
                        ..CompactionConfig::default()
                    },
                );
                match r {
                    Ok(_) => self.s.say(&Line::Compacted),
                    Err(e) => self
                        .s
                        .violation(format!("vb:{vb} compaction by its owner failed: {e}")),
                }
            } else {
                let c = if self.rng.random_bool(0.5) {
                    0
                } else {
                    self.rng.random_range(1..=COLLS)
                };
                let k = self.rng.random_range(0..KEYS);
                let roll = self.rng.random_range(0..1000);
                self.doc_op(vb, c, k, roll);
            }
        }
    }

    fn recreate(&mut self, vb: u16) {
        let s = self.s;
        let op = Op::DropVb { vb };
        s.say(&Line::Try(self.t, op));
        if let Err(e) = s.engine.delete_vbucket(Vbid(vb)) {
            s.violation(format!("vb:{vb} delete failed: {e}"));
        }
        s.say(&Line::Ack(self.t, op, 0));
        create(s, self.t, vb);
        let colls = s.colls();
        for ((v, c, _), e) in &mut self.model {
            if *v == vb {
                *e = (None, colls.generation[usize::from(*c)]);
            }
        }
    }

    fn doc_op(&mut self, vb: u16, c: u8, k: u16, roll: u32) {
        let s = self.s;
        let colls = s.colls();
        let key = key(c, k);
        let generation = colls.generation[usize::from(c)];
        let entry = self.model.entry((vb, c, k)).or_insert((None, generation));
        if entry.1 != generation {
            *entry = (None, generation);
        }
        let want = entry.0;
        if !colls.is_open(c) {
            s.reads.fetch_add(1, Ordering::Relaxed);
            match s.engine.get(Vbid(vb), &key) {
                Err(EngineError::UnknownCollection { .. }) => {
                    s.checks.fetch_add(1, Ordering::Relaxed);
                }
                other => s.violation(format!(
                    "vb:{vb} c{c} key-{k}: collection {} is dropped (manifest {:#x}), the read gave {other:?}",
                    cid(c),
                    colls.uid
                )),
            }
            return;
        }
        let durable = roll.is_multiple_of(4);
        let opts = if durable {
            WriteOptions::durable()
        } else {
            WriteOptions::default()
        };
        if roll < 450 {
            let i = s.op();
            let op = Op::Set {
                vb,
                c,
                k,
                i,
                durable,
            };
            s.say(&Line::Try(self.t, op));
            match s.engine.set(Vbid(vb), &key, value(i), opts) {
                Ok(r) => {
                    s.say(&Line::Ack(self.t, op, r.seqno.0));
                    self.model.insert((vb, c, k), (Some(i), generation));
                }
                Err(e) => s.violation(format!("vb:{vb} c{c} key-{k}: set failed: {e}")),
            }
        } else if roll < 600 {
            let i = s.op();
            let op = Op::Del {
                vb,
                c,
                k,
                i,
                durable,
            };
            s.say(&Line::Try(self.t, op));
            match s.engine.delete(Vbid(vb), &key, opts) {
                Ok(r) => {
                    if want.is_none() {
                        s.violation(format!(
                            "vb:{vb} c{c} key-{k}: deleted a key the model says is absent"
                        ));
                    }
                    s.say(&Line::Ack(self.t, op, r.seqno.0));
                    self.model.insert((vb, c, k), (None, generation));
                }
                Err(EngineError::KeyNotFound) => {
                    if want.is_some() {
                        s.violation(format!(
                            "vb:{vb} c{c} key-{k}: delete says not found, the model has op {want:?}"
                        ));
                    }
                    s.say(&Line::Ack(self.t, op, 0));
                }
                Err(e) => s.violation(format!("vb:{vb} c{c} key-{k}: delete failed: {e}")),
            }
        } else {
            s.reads.fetch_add(1, Ordering::Relaxed);
            let got = match s.engine.get(Vbid(vb), &key) {
                Ok(item) => match value_op(&item.value) {
                    Some(i) => Ok(Some(i)),
                    None => Err(format!(
                        "a value no operation wrote ({} bytes)",
                        item.value.len()
                    )),
                },
                Err(EngineError::KeyNotFound) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            match got {
                Ok(v) if v == want => {
                    s.checks.fetch_add(1, Ordering::Relaxed);
                }
                other => s.violation(format!(
                    "vb:{vb} c{c} key-{k}: read {other:?}, acknowledged {want:?}"
                )),
            }
        }
    }
}

/// Drops or brings back a user collection every 50 to 300 ms.
fn collections(s: &Shared, t: u32, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        std::thread::sleep(Duration::from_millis(rng.random_range(50..300)));
        let mut colls = s
            .colls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let c = rng.random_range(1..=COLLS);
        let open = colls.open ^ (1 << (c - 1));
        let uid = colls.uid + 1;
        let op = Op::Manifest { uid, open };
        s.say(&Line::Try(t, op));
        match s
            .engine
            .set_collections(manifest_json(uid, open).as_bytes())
        {
            Ok(()) => {
                s.say(&Line::Ack(t, op, 0));
                colls.uid = uid;
                colls.open = open;
                colls.generation[usize::from(c)] += 1;
            }
            Err(e) => s.violation(format!("manifest {uid:#x} failed: {e}")),
        }
    }
}

/// Compacts random vbuckets, racing their owners' writes and deletes.
fn compactor(s: &Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    loop {
        std::thread::sleep(Duration::from_millis(rng.random_range(20..200)));
        let vb = rng.random_range(0..VBS);
        let r = s.engine.compact(
            Vbid(vb),
            CompactionConfig {
                drop_deletes: rng.random_bool(0.3),
                ..CompactionConfig::default()
            },
        );
        match r {
            Ok(_) => s.say(&Line::Compacted),
            // The vbucket was deleted under it.
            Err(EngineError::NotMyVbucket(_)) => {}
            Err(EngineError::Storage(e))
                if matches!(*e, StoreError::Cancelled | StoreError::Deleted { .. }) => {}
            Err(e) => s.violation(format!("vb:{vb} compaction failed: {e}")),
        }
    }
}
