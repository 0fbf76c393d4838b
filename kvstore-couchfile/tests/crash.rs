//! Crash tests: this test binary re-runs itself as a child process that
//! commits batches and prints `ACK n` after each commit returns, with
//! background maintenance tuned so that, depending on the mode, the kill
//! mostly lands in a commit (small segments: rolls to new segments too), in
//! a checkpoint (tiny memtables, index rewrites), or in space reclamation
//! (tiny segments, reclaimed at 90% live, and compactions beside the
//! commits). The parent kills it with SIGKILL at random moments, reopens the
//! store and checks that every acknowledged batch is there, that no batch
//! is half there, and that the store opens.
//!
//! `COUCHFILE_CRASH_KILLS` sets the number of kills per test (default 200).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{CompactionConfig, KvStore, VbStore, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CHILD: &str = "COUCHFILE_CRASH_CHILD";
const DIR: &str = "COUCHFILE_CRASH_DIR";

fn config(mode: &str) -> CouchConfig {
    let mut c = CouchConfig {
        segment_bytes: 256 << 10,
        ..CouchConfig::default()
    };
    match mode {
        "checkpoint" => {
            c.memtable_bytes = 16 << 10;
            c.checkpoint_log_bytes = 64 << 10;
            c.index_rewrite_ratio = 1.2;
        }
        "reclaim" => {
            c.memtable_bytes = 32 << 10;
            c.segment_bytes = 48 << 10;
            c.reclaim_live_ratio = 0.9;
            c.reclaim_min_garbage = 1;
        }
        _ => {}
    }
    c
}

fn open_vb(dir: &Path, mode: &str) -> (CouchStore, std::sync::Arc<dyn VbStore>) {
    let store = CouchStore::open(dir, config(mode)).unwrap();
    let found = store.discover().unwrap();
    let vb = match found.as_slice() {
        [] => store.create(Vbid(0)).unwrap(),
        [(Vbid(0), rev)] => store.open(Vbid(0), *rev).unwrap(),
        other => panic!("discover found {other:?}"),
    };
    (store, vb)
}

/// The child: commits batches forever, acknowledging each on stdout.
#[test]
#[ignore = "run by the crash tests as their child process"]
fn crash_child() {
    let (Ok(mode), Ok(dir)) = (std::env::var(CHILD), std::env::var(DIR)) else {
        return;
    };
    let (_store, vb) = open_vb(Path::new(&dir), &mode);
    if mode == "reclaim" {
        let vb2 = std::sync::Arc::clone(&vb);
        std::thread::spawn(move || {
            loop {
                vb2.compact(&CompactionConfig {
                    drop_deletes: true,
                    ..CompactionConfig::default()
                })
                .unwrap();
            }
        });
    }
    let mut b = common::next_batch(&*vb);
    loop {
        vb.commit(common::batch(b)).unwrap();
        println!("ACK {b}");
        b += 1;
    }
}

fn kill_loop(mode: &str, seed: u64) {
    let kills: usize = std::env::var("COUCHFILE_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked: Option<u64> = None;
    let mut torn_seen = 0;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, mode)
            .env(DIR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut note = |line: &str| {
            if let Some(n) = line.strip_prefix("ACK ") {
                let n: u64 = n.trim().parse().unwrap();
                acked = Some(acked.map_or(n, |a| a.max(n)));
                true
            } else {
                false
            }
        };
        // Let it acknowledge a few batches (or none), then kill it at a
        // random moment, most likely inside a commit or a compaction.
        let wait_acks = rng.random_range(0..4);
        let mut seen = 0;
        while seen < wait_acks {
            match lines.next() {
                Some(Ok(line)) => {
                    if note(&line) {
                        seen += 1;
                    }
                }
                _ => break,
            }
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..4000)));
        child.kill().unwrap();
        // ACKs printed before the kill were acknowledged: collect them.
        for line in lines.map_while(Result::ok) {
            note(&line);
        }
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: the child was killed");

        let (store, vb) = open_vb(dir.path(), mode);
        let n = common::verify(&*vb).unwrap_or_else(|e| panic!("round {round}: {e}"));
        if let Some(a) = acked {
            assert!(
                n.is_some_and(|n| n >= a),
                "round {round}: batch {a} was acknowledged but the store ends at {n:?}"
            );
        }
        if n > acked {
            torn_seen += 1;
        }
        drop(vb);
        let mut files: Vec<String> = std::fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert!(
            files.len() == 2 && files[0].starts_with("0.couch.") && files[1] == "LOCK",
            "round {round}: one store after startup: {files:?}"
        );
    }
    eprintln!(
        "{mode}: {kills} kills, {} batches acknowledged, {torn_seen} rounds found a complete but unacknowledged last commit",
        acked.map_or(0, |a| a + 1)
    );
}

#[test]
fn sigkill_during_commits() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    kill_loop("commit", 1);
}

#[test]
fn sigkill_during_checkpoints() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    kill_loop("checkpoint", 2);
}

#[test]
fn sigkill_during_reclamation() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    kill_loop("reclaim", 3);
}
