//! The `couchfile` tool on a file written by the store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{KvStore, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_couchfile"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8(o.stdout).unwrap(),
        String::from_utf8(o.stderr).unwrap(),
    )
}

#[test]
fn info_and_dump_read_a_real_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vb = store.create(Vbid(7)).unwrap();
    for b in 0..6 {
        vb.commit(common::batch(b)).unwrap();
    }
    let file = dir.path().join(format!("7.couch.{}", vb.revision().0));
    let f = file.to_str().unwrap();

    let (ok, out, _) = run(&["info", f]);
    assert!(ok);
    assert!(out.contains("vbucket:         7"), "{out}");
    assert!(out.contains("high seqno:      60"), "{out}");
    assert!(out.contains("deleted items:   2"), "{out}");

    let (ok, out, _) = run(&["info", "--json", f]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["header"]["high_seqno"], 60);
    assert_eq!(v["header"]["live_items"], 55);

    let (ok, out, _) = run(&["dump", f, "--by-seqno"]);
    assert!(ok);
    let seqnos: Vec<u64> = out
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqnos.len(), 57);
    assert!(seqnos.windows(2).all(|w| w[0] < w[1]));
    assert!(out.contains("DELETED"));

    let (ok, out, _) = run(&["dump", f, "--by-key", "--values", "--json"]);
    assert!(ok);
    let docs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), 57);
    let hot = docs.iter().find(|d| d["key"] == "hot-0").unwrap();
    assert_eq!(hot["value"], "5");

    let (ok, out, _) = run(&["dump", f, "--local"]);
    assert!(ok);
    assert!(out.contains("_local/last: 5"), "{out}");
    assert!(
        out.contains("_local/vbstate: {\"state\":\"active\""),
        "{out}"
    );

    let (ok, out, _) = run(&["dump", f, "--headers"]);
    assert!(ok);
    assert_eq!(
        out.lines().count(),
        7,
        "the creation header and six commits: {out}"
    );

    // A file that is not a couchfile: a typed error, exit status 1.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a couchfile").unwrap();
    let (ok, _, err) = run(&["info", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no valid header found"), "{err}");
}
