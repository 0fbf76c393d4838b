//! SIGKILL of the engine (not just the store), again and again, while a
//! child process runs durable sets, durable deletes and vbucket
//! delete/recreate cycles. The child announces each operation before it
//! starts (`TRY ...`) and acknowledges it once the engine returned
//! (`ACK ...`), one line each, so after a kill the parent knows every
//! acknowledged operation and the one (at most) in flight. After every
//! kill it warms up an engine on the same directory and checks:
//! - no acknowledged write or delete is lost;
//! - no value of an older incarnation of a vbucket is visible;
//! - no vbucket is left `Dead` or unusable (every vbucket the model says
//!   exists is there and active; the child creates the missing ones again
//!   at its next start, which fails loudly on a stale `VbucketExists`).
//!
//! `ENGINE_CRASH_KILLS` sets the number of kills (default 200).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::key;
use engine::{Engine, EngineConfig, EngineError, VbState, Vbid, WriteOptions};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

const CHILD: &str = "ENGINE_CRASH_CHILD_DIR";
const VBS: u16 = 4;
const KEYS: u32 = 12;

fn config(dir: &str) -> EngineConfig {
    let mut cfg = EngineConfig::new(dir);
    cfg.vbuckets = usize::from(VBS);
    cfg
}

fn value(i: u64) -> String {
    format!("op{i}")
}

/// The child: creates the missing vbuckets, then runs random durable
/// operations forever, each announced and acknowledged on stdout.
#[test]
#[ignore = "run by sigkill_loses_nothing_acknowledged as its child process"]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD) else {
        return;
    };
    let start: u64 = std::env::var("ENGINE_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    // End the line libtest started ("test crash_child ... "), so every
    // protocol line stands alone.
    say(String::new());
    let e = Engine::open(config(&dir)).unwrap();
    let mut i = start;
    let mut exists = [false; VBS as usize];
    for v in 0..VBS {
        match e.vbucket(Vbid(v)) {
            Ok(g) => {
                assert_eq!(g.state(), VbState::Active, "vb{v} warmed up not active");
                exists[usize::from(v)] = true;
            }
            Err(_) => {
                say(format!("TRY CREATE {v} {i}"));
                e.create_vbucket(Vbid(v), VbState::Active)
                    .unwrap_or_else(|err| panic!("vb{v} cannot be created again: {err}"));
                say(format!("ACK CREATE {v} {i}"));
                exists[usize::from(v)] = true;
                i += 1;
            }
        }
    }
    say("READY".into());
    let mut rng = StdRng::seed_from_u64(start);
    loop {
        let v = rng.random_range(0..VBS);
        let k = rng.random_range(0..KEYS);
        let roll = rng.random_range(0..100);
        if !exists[usize::from(v)] {
            say(format!("TRY CREATE {v} {i}"));
            let t = std::time::Instant::now();
            e.create_vbucket(Vbid(v), VbState::Active).unwrap();
            say(format!("ACK CREATE {v} {i} {}", t.elapsed().as_micros()));
            exists[usize::from(v)] = true;
        } else if roll < 60 {
            say(format!("TRY SET {v} {k} {i}"));
            let r = e
                .set_durable(
                    Vbid(v),
                    &key(&format!("k{k}")),
                    value(i),
                    WriteOptions::default(),
                )
                .unwrap();
            say(format!("ACK SET {v} {k} {i} {}", r.seqno.0));
        } else if roll < 92 {
            say(format!("TRY DEL {v} {k} {i}"));
            match e.delete_durable(Vbid(v), &key(&format!("k{k}")), WriteOptions::default()) {
                Ok(r) => say(format!("ACK DEL {v} {k} {i} {}", r.seqno.0)),
                Err(EngineError::KeyNotFound) => say(format!("ACK NODEL {v} {k} {i} 0")),
                Err(err) => panic!("{err}"),
            }
        } else {
            say(format!("TRY DROP {v} {i}"));
            e.delete_vbucket(Vbid(v)).unwrap();
            say(format!("ACK DROP {v} {i}"));
            exists[usize::from(v)] = false;
        }
        i += 1;
    }
}

/// What the parent knows of one vbucket.
#[derive(Debug, Default, Clone)]
struct VbModel {
    exists: bool,
    /// Key number -> (op index, seqno) of its live value; absent: no live
    /// value in this incarnation.
    live: HashMap<u32, (u64, u64)>,
    /// The op index of the last drop: values of earlier ops are of an older
    /// incarnation.
    epoch: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Create(u16),
    Drop(u16),
    Set(u16, u32, u64),
    Del(u16, u32, u64),
}

fn parse_try(rest: &[&str]) -> Option<Op> {
    let n = |i: usize| rest.get(i).and_then(|s| s.parse::<u64>().ok());
    Some(match *rest.first()? {
        "CREATE" => Op::Create(u16::try_from(n(1)?).ok()?),
        "DROP" => Op::Drop(u16::try_from(n(1)?).ok()?),
        "SET" => Op::Set(
            u16::try_from(n(1)?).ok()?,
            u32::try_from(n(2)?).ok()?,
            n(3)?,
        ),
        "DEL" => Op::Del(
            u16::try_from(n(1)?).ok()?,
            u32::try_from(n(2)?).ok()?,
            n(3)?,
        ),
        _ => return None,
    })
}

struct Model {
    vbs: Vec<VbModel>,
    in_flight: Option<Op>,
    acked: u64,
    ready: bool,
}

impl Model {
    fn line(&mut self, line: &str) {
        let parts: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| parts.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap();
        match parts.first().copied() {
            Some("READY") => self.ready = true,
            Some("TRY") => self.in_flight = parse_try(&parts[1..]),
            Some("ACK") => {
                self.in_flight = None;
                self.acked += 1;
                let v = usize::try_from(n(2)).unwrap();
                match parts[1] {
                    "CREATE" => {
                        self.vbs[v] = VbModel {
                            exists: true,
                            epoch: self.vbs[v].epoch,
                            ..VbModel::default()
                        }
                    }
                    "DROP" => {
                        self.vbs[v] = VbModel {
                            exists: false,
                            epoch: n(3),
                            ..VbModel::default()
                        }
                    }
                    "SET" => {
                        self.vbs[v]
                            .live
                            .insert(u32::try_from(n(3)).unwrap(), (n(4), n(5)));
                    }
                    "DEL" | "NODEL" => {
                        self.vbs[v].live.remove(&u32::try_from(n(3)).unwrap());
                    }
                    other => panic!("bad line {line:?} ({other})"),
                }
            }
            _ => {}
        }
    }

    /// Checks the warmed-up engine against the model, resolving the
    /// operation in flight by what it finds. Returns the acknowledged
    /// values checked.
    fn check(&mut self, e: &Engine, round: usize) -> usize {
        let mut checked = 0;
        let in_flight = self.in_flight.take();
        for v in 0..VBS {
            let m = &mut self.vbs[usize::from(v)];
            let present = match e.vbucket(Vbid(v)) {
                Ok(g) => {
                    assert_eq!(
                        g.state(),
                        VbState::Active,
                        "round {round}: vb{v} came back {:?}",
                        g.state()
                    );
                    true
                }
                Err(EngineError::NotMyVbucket(_)) => false,
                Err(err) => panic!("round {round}: vb{v}: {err}"),
            };
            match (&in_flight, m.exists, present) {
                (_, true, true) | (_, false, false) => {}
                (Some(Op::Drop(d)), true, false) if *d == v => {
                    // The drop in flight was made durable.
                    *m = VbModel {
                        exists: false,
                        epoch: u64::MAX,
                        ..VbModel::default()
                    };
                }
                (Some(Op::Create(c)), false, true) if *c == v => {
                    m.exists = true;
                    m.live.clear();
                }
                (_, true, false) => panic!("round {round}: vb{v} was lost"),
                (_, false, true) => panic!("round {round}: vb{v} was dropped and came back"),
            }
            if !present {
                continue;
            }
            for k in 0..KEYS {
                let got = match e.get(Vbid(v), &key(&format!("k{k}"))) {
                    Ok(item) => {
                        let s = String::from_utf8(item.value.to_vec()).unwrap();
                        let i: u64 = s.strip_prefix("op").unwrap().parse().unwrap();
                        Some((i, item.meta.seqno.0))
                    }
                    Err(EngineError::KeyNotFound) => None,
                    Err(err) => panic!("round {round}: vb{v} k{k} unusable: {err}"),
                };
                if let Some((i, _)) = got {
                    assert!(
                        m.epoch == u64::MAX || i >= m.epoch,
                        "round {round}: vb{v} k{k} holds op{i}, of an incarnation dropped at op{}",
                        m.epoch
                    );
                }
                let want = m.live.get(&k).copied();
                let flying = match &in_flight {
                    Some(Op::Set(fv, fk, i)) if *fv == v && *fk == k => Some(Some(*i)),
                    Some(Op::Del(fv, fk, _)) if *fv == v && *fk == k => Some(None),
                    _ => None,
                };
                let ok = match (got, want) {
                    (Some((i, s)), Some((wi, ws))) if (i, s) == (wi, ws) => true,
                    (None, None) => true,
                    _ => false,
                };
                if ok {
                    checked += usize::from(want.is_some());
                    continue;
                }
                // Only the operation in flight may explain a difference.
                match (flying, got) {
                    (Some(Some(fi)), Some((i, s))) if i == fi => {
                        m.live.insert(k, (i, s));
                    }
                    (Some(None), None) => {
                        m.live.remove(&k);
                    }
                    _ => panic!(
                        "round {round}: vb{v} k{k}: acknowledged {want:?}, found {got:?} (in flight: {in_flight:?})"
                    ),
                }
            }
            if m.epoch == u64::MAX {
                m.epoch = 0;
            }
        }
        checked
    }
}

#[test]
fn sigkill_loses_nothing_acknowledged() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let kills: usize = std::env::var("ENGINE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(13);
    let mut model = Model {
        vbs: vec![VbModel::default(); usize::from(VBS)],
        in_flight: None,
        acked: 0,
        ready: false,
    };
    let mut next = 0u64;
    let mut checked_total = 0;
    let mut drops_acked = 0;
    let mut ready_rounds = 0;
    let mut aimed = 0;
    for round in 0..kills {
        model.ready = false;
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir_s)
            .env("ENGINE_CRASH_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Most rounds kill after a few acknowledged operations; some aim
        // at a vbucket create or drop, killing as soon as one starts.
        let aim = rng.random_bool(0.35);
        let want = if aim { 400 } else { rng.random_range(1..12) };
        let mut acks = 0;
        let mut last_i = next;
        let mut note = |model: &mut Model, l: &str| {
            if l.starts_with("ACK DROP") {
                drops_acked += 1;
            }
            if let Some(i) = l.split(' ').nth_back(0).and_then(|s| s.parse::<u64>().ok()) {
                last_i = last_i.max(i);
            }
            model.line(l);
        };
        let mut died = false;
        while acks < want {
            match lines.next() {
                Some(Ok(l)) => {
                    acks += usize::from(l.starts_with("ACK"));
                    let hit = aim && (l.starts_with("TRY CREATE") || l.starts_with("TRY DROP"));
                    note(&mut model, &l);
                    if hit {
                        // A random point inside the operation: spin a
                        // little (a crash point, not a race to line up).
                        let until = std::time::Instant::now()
                            + std::time::Duration::from_micros(rng.random_range(0..1500));
                        while std::time::Instant::now() < until {
                            std::hint::spin_loop();
                        }
                        aimed += 1;
                        break;
                    }
                }
                _ => {
                    died = true;
                    break;
                }
            }
        }
        child.kill().unwrap();
        for l in lines.map_while(Result::ok) {
            note(&mut model, &l);
        }
        let status = child.wait().unwrap();
        if died {
            // It ended before the kill: a failed start (a vbucket it could
            // not create again, say) or a failed operation.
            let mut err = String::new();
            let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
            panic!("round {round}: the child died by itself ({status}): {err}");
        }
        ready_rounds += usize::from(model.ready);
        // Op indexes keep growing across rounds (seqnos are checked as
        // given by the engine).
        next = last_i.max(next) + 1_000_000;
        let e = Engine::open(config(&dir_s)).unwrap();
        checked_total += model.check(&e, round);
        e.shutdown().unwrap();
    }
    eprintln!(
        "{kills} kills ({ready_rounds} after the child's start-up, the rest during it; {aimed} aimed at a vbucket create or drop): {} operations acknowledged ({drops_acked} vbucket drops), {checked_total} acknowledged values checked after the kills; 0 lost, 0 from an older incarnation, 0 vbuckets dead or unusable",
        model.acked
    );
    assert!(
        model.acked as usize >= kills,
        "too few acknowledged operations"
    );
    assert!(drops_acked > 0, "no vbucket was dropped");
}
