//! The `couchfile` tool on a store written by the backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/forge.rs"]
mod forge;

use kvstore_core::{KvStore, StoreError, Vbid};
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
    let cvb = store.open_couch(Vbid(7), vb.revision()).unwrap();
    for b in 0..6 {
        vb.commit(common::batch(b)).unwrap();
        if b == 3 {
            // Batches 0-3 go into the index; 4 and 5 stay in the log.
            cvb.checkpoint().unwrap();
        }
    }
    let file = dir.path().join(format!("7.couch.{}", vb.revision().0));
    let f = file.to_str().unwrap();

    let (ok, out, _) = run(&["info", f]);
    assert!(ok);
    assert!(out.contains("vbucket:         7"), "{out}");
    assert!(out.contains("high seqno:      60"), "{out}");
    assert!(out.contains("deleted items:   2"), "{out}");
    assert!(out.contains("log records after the checkpoint: 2"), "{out}");

    let (ok, out, _) = run(&["info", "--json", f]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["high_seqno"], 60);
    assert_eq!(v["live_items"], 55);
    assert_eq!(
        v["header"]["high_seqno"], 40,
        "the checkpoint holds batches 0-3"
    );
    assert_eq!(v["segments"].as_array().unwrap().len(), 1);

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
        2,
        "the creation header and one checkpoint: {out}"
    );

    let (ok, out, _) = run(&["dump", f, "--log"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 6, "six commit records: {out}");
    assert!(out.lines().all(|l| l.contains(" commit ")), "{out}");

    let (ok, out, _) = run(&["dump", f, "--segments", "--json"]);
    assert!(ok);
    let seg: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert!(seg["live_bytes"].as_u64().unwrap() > 0, "{out}");

    // A directory that is not a store, and a store whose index is garbage:
    // typed errors, exit status 1.
    let (ok, _, err) = run(&["info", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("<vbid>.couch.<rev>"), "{err}");
    let junk = dir.path().join("9.couch.1");
    std::fs::create_dir(&junk).unwrap();
    std::fs::write(junk.join("index.1"), b"not an index file").unwrap();
    let (ok, _, err) = run(&["info", junk.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("no valid header found"), "{err}");
}

/// A checksum-valid index whose by-key root lists itself as its child: the
/// tool and the store report corruption (no stack overflow, no endless
/// loop).
#[test]
fn a_cycle_in_the_tree_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let rev = {
        let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
        let vb = store.create(Vbid(3)).unwrap();
        let cvb = store.open_couch(Vbid(3), vb.revision()).unwrap();
        for b in 0..4 {
            vb.commit(common::batch(b)).unwrap();
        }
        cvb.checkpoint().unwrap();
        vb.revision()
    };
    let store_dir = dir.path().join(format!("3.couch.{}", rev.0));
    let root = forge::self_referencing_root(&store_dir);
    let f = store_dir.to_str().unwrap();

    let (ok, out, err) = run(&["dump", f, "--by-key"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("does not lie before its parent"),
        "a typed corruption report: {err}"
    );

    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let vb = store.open(Vbid(3), rev).unwrap();
    match vb.get(&common::key("b0-0")) {
        Err(StoreError::Corrupt(c)) => assert_eq!(c.offset, root.offset, "{c:?}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}
