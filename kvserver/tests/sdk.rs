//! The official Couchbase Python SDK (4.x) against a kvserver this test
//! starts: SCRAM login, bootstrap from the KV port, default and named
//! collections (the manifest set through the protocol), every document
//! operation the issue lists, durable upserts, and the SDK's errors.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PASSWORD, TestServer, USER, manifest, python, script, stats, users_file};
use kvserver::protocol::{opcode, status};
use std::process::Command;

#[test]
fn couchbase_sdk() {
    let py = python();
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let mut server = TestServer::start(&dir.path().join("data"), Some(&users), &[]);
    let mut c = server.client();
    let r = c
        .request(
            opcode::COLLECTIONS_SET_MANIFEST,
            0,
            0,
            &[],
            &[],
            manifest(0x10, &[]).as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, status::SUCCESS, "set manifest: {:?}", r.value);
    let out = Command::new(&py)
        .arg(script("sdk_test.py"))
        .args([&server.port.to_string(), USER, PASSWORD, "app", "orders"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("SDK OK"),
        "the SDK test failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The expiry the SDK's get_and_touch set (7200 s from now) is on the
    // document, as the server's key stats show.
    let vb = kvserver::cluster::vbucket_of(b"doc-default", 16);
    let k = stats(&mut c, &format!("key doc-default {vb}"));
    let exp: u64 = k["key_exptime"].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        exp > now + 3600 && exp <= now + 7200,
        "expiry {exp} is not the SDK's get_and_touch of 7200 s (now {now})"
    );
    // The named collection holds what the SDK wrote there.
    let s = stats(&mut c, "collections");
    assert_eq!(s["0x8:0x8:name"], "orders");
    assert!(s["0x8:0x8:items"].parse::<u64>().unwrap() >= 20, "{s:?}");
    drop(c);
    assert!(server.stop(), "the server did not shut down cleanly");
}
