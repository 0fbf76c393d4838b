//! The Couchbase extensions of the binary protocol, over a socket:
//! HELLO, authentication, the error map, buckets, the cluster config,
//! collections, vbucket commands, durability and OBSERVE_SEQNO, snappy,
//! and the safe-by-default rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PASSWORD, TestServer, USER, manifest, users_file};
use kvserver::client::Client;
use kvserver::protocol::{feature, opcode, status};
use kvserver::sasl::Mechanism;
use std::io::{Read, Write};

fn set_extras() -> [u8; 8] {
    [0, 0, 0, 1, 0, 0, 0, 0]
}

#[test]
fn hello_auth_error_map_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let mut server = TestServer::start(
        &dir.path().join("data"),
        Some(&users),
        &["--buckets", "default,other"],
    );
    let mut c = Client::connect(server.addr()).unwrap();
    // Only what we offer is agreed; unknown and repeated features are not.
    let agreed = c
        .hello(
            "t",
            &[
                feature::XERROR,
                0x7777,
                feature::COLLECTIONS,
                feature::XERROR,
                feature::XATTR,
            ],
        )
        .unwrap();
    assert_eq!(agreed, vec![feature::XERROR, feature::COLLECTIONS]);
    // Before authenticating: refused.
    let r = c.request(opcode::GET, 0, 0, &[], b"\x00k", &[]).unwrap();
    assert_eq!(r.status, status::EACCESS);
    let r = c
        .request(opcode::SASL_LIST_MECHS, 0, 0, &[], &[], &[])
        .unwrap();
    assert_eq!(&r.value[..], b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN");
    assert_eq!(
        c.auth_scram(Mechanism::ScramSha256, USER, "wrong").unwrap(),
        status::AUTH_ERROR
    );
    assert_eq!(
        c.auth_scram(Mechanism::Plain, "nobody", PASSWORD).unwrap(),
        status::AUTH_ERROR
    );
    for m in [
        Mechanism::ScramSha1,
        Mechanism::ScramSha256,
        Mechanism::Plain,
        Mechanism::ScramSha512,
    ] {
        assert_eq!(
            c.auth_scram(m, USER, PASSWORD).unwrap(),
            status::SUCCESS,
            "{m:?}"
        );
    }
    let r = c
        .request(opcode::GET_ERROR_MAP, 0, 0, &[], &[], &2u16.to_be_bytes())
        .unwrap();
    let map: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(map["version"], 2);
    assert_eq!(map["errors"]["7"]["name"], "NOT_MY_VBUCKET");
    // No bucket selected yet (no bucket is named as the user).
    let r = c.request(opcode::GET, 0, 0, &[], b"\x00k", &[]).unwrap();
    assert_eq!(r.status, status::NO_BUCKET);
    let r = c
        .request(opcode::SELECT_BUCKET, 0, 0, &[], b"nope", &[])
        .unwrap();
    assert_eq!(r.status, status::KEY_ENOENT);
    // Buckets are separate.
    for (b, v) in [("default", "in default"), ("other", "in other")] {
        let r = c
            .request(opcode::SELECT_BUCKET, 0, 0, &[], b.as_bytes(), &[])
            .unwrap();
        assert_eq!(r.status, status::SUCCESS);
        let r = c
            .request(opcode::SET, 0, 0, &set_extras(), b"\x00k", v.as_bytes())
            .unwrap();
        assert_eq!(r.status, status::SUCCESS);
    }
    let r = c.request(opcode::GET, 0, 0, &[], b"\x00k", &[]).unwrap();
    assert_eq!(&r.value[..], b"in other");
    // The cluster config: one node serving every vbucket, on this port.
    let r = c
        .request(opcode::GET_CLUSTER_CONFIG, 0, 0, &[], &[], &[])
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(cfg["name"], "other");
    assert_eq!(
        cfg["vBucketServerMap"]["vBucketMap"]
            .as_array()
            .unwrap()
            .len(),
        16
    );
    assert_eq!(cfg["nodesExt"][0]["services"]["kv"], server.port);
    // The text protocol is refused when authentication is required.
    let mut t = std::net::TcpStream::connect(server.addr()).unwrap();
    t.write_all(b"get k\r\n").unwrap();
    let mut got = String::new();
    t.read_to_string(&mut got).unwrap();
    assert_eq!(got, "CLIENT_ERROR unauthenticated\r\n");
    drop(c);
    assert!(server.stop());
}

fn alt_durable(level: u8) -> Vec<u8> {
    vec![0x11, level]
}

#[test]
fn collections_vbuckets_durability_snappy() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    let mut c = Client::connect(server.addr()).unwrap();
    c.hello(
        "t",
        &[
            feature::XERROR,
            feature::COLLECTIONS,
            feature::JSON,
            feature::SNAPPY,
            feature::ALT_REQUEST,
            feature::SYNC_REPLICATION,
            feature::MUTATION_SEQNO,
        ],
    )
    .unwrap();
    // Collections through the protocol.
    let r = c
        .request(
            opcode::COLLECTIONS_SET_MANIFEST,
            0,
            0,
            &[],
            &[],
            manifest(0x20, &[]).as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, status::SUCCESS);
    let r = c
        .request(opcode::COLLECTIONS_GET_MANIFEST, 0, 0, &[], &[], &[])
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(m["uid"], "20");
    let r = c
        .request(opcode::COLLECTIONS_GET_ID, 0, 0, &[], &[], b"app.orders")
        .unwrap();
    assert_eq!(r.status, status::SUCCESS);
    assert_eq!(&r.extras[..8], &0x20u64.to_be_bytes());
    assert_eq!(&r.extras[8..], &8u32.to_be_bytes());
    let r = c
        .request(opcode::COLLECTIONS_GET_ID, 0, 0, &[], &[], b"app.nope")
        .unwrap();
    assert_eq!(r.status, status::UNKNOWN_COLLECTION);
    assert_eq!(&r.value[..], br#"{"manifest_uid":"20"}"#);
    let r = c
        .request(opcode::COLLECTIONS_GET_ID, 0, 0, &[], &[], b"nope.x")
        .unwrap();
    assert_eq!(r.status, status::UNKNOWN_SCOPE);
    let r = c
        .request(opcode::COLLECTIONS_GET_ID, 0, 0, &[], &[], b".")
        .unwrap();
    assert_eq!(
        &r.extras[8..],
        &0u32.to_be_bytes(),
        "'.' is _default._default"
    );
    // An older manifest is refused.
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
    assert_eq!(r.status, status::CANNOT_APPLY_MANIFEST);
    // Collection-prefixed keys: the same user key in two collections.
    let vb = kvserver::cluster::vbucket_of(b"k", 16);
    for (prefix, v) in [(&b"\x00"[..], "default"), (&b"\x08"[..], "orders")] {
        let key = [prefix, b"k"].concat();
        let r = c
            .request(opcode::SET, vb, 0, &set_extras(), &key, v.as_bytes())
            .unwrap();
        assert_eq!(r.status, status::SUCCESS);
        assert_eq!(r.extras.len(), 16, "mutation seqno extras");
    }
    let r = c.request(opcode::GET, vb, 0, &[], b"\x08k", &[]).unwrap();
    assert_eq!(&r.value[..], b"orders");
    let r = c.request(opcode::GET, vb, 0, &[], b"\x09k", &[]).unwrap();
    assert_eq!(r.status, status::UNKNOWN_COLLECTION);
    assert_eq!(&r.value[..], br#"{"manifest_uid":"20"}"#);
    // Durable writes: every level is persisted before the reply, which
    // OBSERVE_SEQNO confirms; a bad level is refused.
    for level in 1..=3u8 {
        let r = c
            .request_alt(
                opcode::SET,
                vb,
                0,
                &alt_durable(level),
                &set_extras(),
                b"\x00d",
                b"durable",
            )
            .unwrap();
        assert_eq!(r.status, status::SUCCESS, "level {level}");
        let uuid = &r.extras[..8];
        let seqno = u64::from_be_bytes(r.extras[8..16].try_into().unwrap());
        let o = c
            .request(opcode::OBSERVE_SEQNO, vb, 0, &[], &[], uuid)
            .unwrap();
        assert_eq!(o.status, status::SUCCESS);
        assert_eq!(o.value[0], 0, "no failover");
        let persisted = u64::from_be_bytes(o.value[11..19].try_into().unwrap());
        assert!(
            persisted >= seqno,
            "level {level}: persisted {persisted} < {seqno}"
        );
    }
    let r = c
        .request_alt(
            opcode::SET,
            vb,
            0,
            &alt_durable(9),
            &set_extras(),
            b"\x00d",
            b"x",
        )
        .unwrap();
    assert_eq!(r.status, status::DURABILITY_INVALID_LEVEL);
    let r = c
        .request_alt(opcode::DELETE, vb, 0, &alt_durable(3), &[], b"\x00d", &[])
        .unwrap();
    assert_eq!(r.status, status::SUCCESS, "durable delete");
    // Snappy: a compressed value is stored, and served compressed to a
    // client that negotiated snappy (and plain to one that did not).
    let body = "snappy ".repeat(1000);
    let packed = snap::raw::Encoder::new()
        .compress_vec(body.as_bytes())
        .unwrap();
    let mut raw = bytes::BytesMut::new();
    kvserver::protocol::encode_request(
        &mut raw,
        opcode::SET,
        vb,
        77,
        0,
        &set_extras(),
        b"\x00z",
        &packed,
    );
    raw[5] = 0x02; // datatype snappy
    c.send_raw(&raw).unwrap();
    assert_eq!(c.read_response().unwrap().status, status::SUCCESS);
    let r = c.request(opcode::GET, vb, 0, &[], b"\x00z", &[]).unwrap();
    assert_eq!(r.datatype & 0x02, 0x02);
    assert_eq!(
        snap::raw::Decoder::new().decompress_vec(&r.value).unwrap(),
        body.as_bytes()
    );
    let mut plain = Client::connect(server.addr()).unwrap();
    let r = plain.request(opcode::GET, 0, 0, &[], b"z", &[]).unwrap();
    assert_eq!((r.datatype, &r.value[..]), (0, body.as_bytes()));
    // A snappy value from a client that did not negotiate it is refused.
    let mut raw2 = raw.clone();
    raw2[5] = 0x02;
    plain.send_raw(&raw2).unwrap();
    assert_eq!(plain.read_response().unwrap().status, status::EINVAL);
    // Vbucket commands, and NOT_MY_VBUCKET with the cluster config.
    let r = c.request(opcode::GET_VBUCKET, 5, 0, &[], &[], &[]).unwrap();
    assert_eq!(&r.value[..], &1u32.to_be_bytes());
    let r = c
        .request(opcode::SET_VBUCKET, 5, 0, &[2], &[], &[])
        .unwrap();
    assert_eq!(r.status, status::SUCCESS);
    let r = c
        .request(opcode::SET, 5, 0, &set_extras(), b"\x00r", b"v")
        .unwrap();
    assert_eq!(r.status, status::NOT_MY_VBUCKET);
    let cfg: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    assert!(
        cfg["vBucketServerMap"].is_object(),
        "NOT_MY_VBUCKET carries the config"
    );
    let r = c
        .request(opcode::DEL_VBUCKET, 5, 0, &[], &[], b"async=0")
        .unwrap();
    assert_eq!(r.status, status::SUCCESS);
    let r = c.request(opcode::GET_VBUCKET, 5, 0, &[], &[], &[]).unwrap();
    assert_eq!(r.status, status::NOT_MY_VBUCKET);
    let r = c.request(opcode::DEL_VBUCKET, 5, 0, &[], &[], &[]).unwrap();
    assert_eq!(r.status, status::NOT_MY_VBUCKET, "a second delete");
    let r = c
        .request(opcode::SET_VBUCKET, 5, 0, &[1], &[], &[])
        .unwrap();
    assert_eq!(r.status, status::SUCCESS, "recreated");
    let r = c.request(opcode::GET, 5, 0, &[], b"\x00r", &[]).unwrap();
    assert_eq!(r.status, status::KEY_ENOENT);
    // Stats groups.
    let s = common::stats(&mut c, "vbucket");
    assert_eq!(s.len(), 16);
    assert_eq!(s["vb_5"], "active");
    drop(c);
    drop(plain);
    assert!(server.stop());
}

#[test]
fn safe_by_default() {
    let dir = tempfile::tempdir().unwrap();
    // A non-loopback address without a users file is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvserver"))
        .arg("--data-dir")
        .arg(dir.path().join("d"))
        .args(["--listen", "0.0.0.0:0", "--vbuckets", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a users file"));
    // Connections over the limit are closed at once; the others serve.
    let mut server = TestServer::start(&dir.path().join("data"), None, &["--max-connections", "3"]);
    let mut keep: Vec<Client> = (0..3)
        .map(|_| Client::connect(server.addr()).unwrap())
        .collect();
    for c in &mut keep {
        assert_eq!(
            c.request(opcode::NOOP, 0, 0, &[], &[], &[]).unwrap().status,
            status::SUCCESS
        );
    }
    let mut extra = Client::connect(server.addr()).unwrap();
    assert!(
        extra.request(opcode::NOOP, 0, 0, &[], &[], &[]).is_err(),
        "a 4th connection was served"
    );
    drop(keep);
    drop(extra);
    assert!(server.stop());
}

/// SIGTERM and SIGINT: what was acknowledged (without durability) is on
/// disk after a graceful stop, and nothing new is accepted.
#[test]
fn graceful_shutdown_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    for (round, sig) in ["TERM", "INT"].into_iter().enumerate() {
        let mut c = Client::connect(server.addr()).unwrap();
        for i in 0..500 {
            let k = format!("r{round}-{i}");
            let r = c
                .request(opcode::SET, 0, 0, &set_extras(), k.as_bytes(), b"v")
                .unwrap();
            assert_eq!(r.status, status::SUCCESS);
        }
        drop(c);
        let port = server.port;
        assert!(server.stop_with(sig), "SIGTERM/SIGINT: not a clean exit");
        assert!(
            Client::connect(("127.0.0.1", port)).is_err(),
            "still accepting after {sig}"
        );
        server.restart();
        let mut c = Client::connect(server.addr()).unwrap();
        for r in 0..=round {
            for i in 0..500 {
                let k = format!("r{r}-{i}");
                let got = c
                    .request(opcode::GET, 0, 0, &[], k.as_bytes(), &[])
                    .unwrap();
                assert_eq!(got.status, status::SUCCESS, "{k} lost by a graceful {sig}");
            }
        }
    }
    assert!(server.stop());
}
