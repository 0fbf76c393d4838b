//! Crash test: durable upserts (persistToMajority) through the Couchbase
//! SDK, SIGKILL of the server at random points of the write stream,
//! restart, and every write the SDK saw acknowledged reads back, across
//! every round. `KVSERVER_CRASH_KILLS=N` sets the number of kills (50 by
//! default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{PASSWORD, TestServer, USER, python, script, users_file};
use kvserver::protocol::{opcode, status};
use rand::Rng;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn sigkill_loses_no_durable_write() {
    let py = python();
    let kills: usize = std::env::var("KVSERVER_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let mut server = TestServer::start(&dir.path().join("data"), Some(&users), &[]);
    let mut acked: Vec<String> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..kills {
        let prefix = format!("r{round}");
        let mut writer = Command::new(&py)
            .arg(script("crash_writer.py"))
            .args([&server.port.to_string(), USER, PASSWORD, &prefix])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let out = writer.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledged writes, while the
        // next one is on its way.
        let target = rng.random_range(1..=6);
        let mut seen = 0;
        while seen < target {
            let line = rx
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|e| panic!("round {round}: the SDK writer said nothing ({e})"));
            if let Some(k) = line.strip_prefix("ACK ") {
                acked.push(k.to_owned());
                seen += 1;
            }
        }
        server.kill();
        // Acknowledgements that were already on their way count too.
        let _ = writer.kill();
        let _ = writer.wait();
        while let Ok(line) = rx.try_recv() {
            if let Some(k) = line.strip_prefix("ACK ") {
                acked.push(k.to_owned());
            }
        }
        server.restart();
        // Every acknowledged durable write, of this round and every
        // earlier one, is there.
        let mut c = server.client();
        let mut lost = Vec::new();
        for k in &acked {
            let vb = kvserver::cluster::vbucket_of(k.as_bytes(), 16);
            let r = c
                .request(opcode::GET, vb, 0, &[], k.as_bytes(), &[])
                .unwrap();
            let i: u64 = k.rsplit('-').next().unwrap().parse().unwrap();
            let ok = r.status == status::SUCCESS && {
                let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
                v["i"] == i
            };
            if !ok {
                lost.push(k.clone());
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: {} of {} acknowledged durable writes lost: {lost:?}",
            lost.len(),
            acked.len()
        );
    }
    println!(
        "{kills} kills, {} acknowledged durable writes, 0 lost",
        acked.len()
    );
    assert!(server.stop());
}
