//! Resource limits: the default 1,024 vbuckets open and serve under
//! `ulimit -n 1024` (the backend's descriptor cache keeps what it holds
//! open below the limit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::key;
use engine::{Engine, EngineConfig, WriteOptions};
use kvstore_core::{VbState, Vbid};
use std::process::Command;

const CHILD: &str = "VBSTORE_ULIMIT_CHILD";
const NAME: &str = "serves_1024_vbuckets_under_ulimit_1024";

/// Runs the body in a child process whose descriptor limit is 1,024.
#[test]
fn serves_1024_vbuckets_under_ulimit_1024() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 1024 && exec \"$0\" \"$@\"")
        .arg(exe)
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{err}");
    assert!(stdout.contains("1024 vbuckets served"), "{stdout}\n{err}");
    if let Some(l) = stdout.lines().find(|l| l.contains("vbuckets served")) {
        eprintln!("{l}");
    }
}

/// The soft limit on open files, from /proc.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn child(dir: &std::path::Path) {
    assert_eq!(
        open_files_limit(),
        1024,
        "the child runs under ulimit -n 1024"
    );
    let vbs = EngineConfig::new(dir).vbuckets;
    assert_eq!(vbs, 1024, "the default");
    let mut most = 0;
    {
        let e = Engine::open(EngineConfig::new(dir)).unwrap();
        for v in 0..vbs as u16 {
            e.create_vbucket(Vbid(v), VbState::Active).unwrap();
        }
        for round in 0..2 {
            for v in 0..vbs as u16 {
                let k = key(&format!("k{v}-{round}"));
                e.set(Vbid(v), &k, format!("v{v}"), WriteOptions::default())
                    .unwrap();
            }
            // Every vbucket's store commits: all 1,024 are written to.
            e.flush().unwrap();
            most = most.max(open_fds());
        }
        e.shutdown().unwrap();
    }
    // Warmup opens every store again; every document reads back.
    let e = Engine::open(EngineConfig::new(dir)).unwrap();
    for v in 0..vbs as u16 {
        for round in 0..2 {
            let item = e.get(Vbid(v), &key(&format!("k{v}-{round}"))).unwrap();
            assert_eq!(&item.value[..], format!("v{v}").as_bytes());
        }
    }
    most = most.max(open_fds());
    e.shutdown().unwrap();
    println!("{vbs} vbuckets served; at most {most} descriptors open");
}
