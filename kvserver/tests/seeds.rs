//! The two seed scenarios, over real sockets:
//!
//! - MB-43708: a client disconnects while its SET_COLLECTIONS_MANIFEST is
//!   parked; the next set-collections from anyone succeeds, and no parked
//!   state is left behind.
//! - MB-33463: DEL_VBUCKET and recreate of a vbucket while several client
//!   connections read and write it: no error other than NOT_MY_VBUCKET, and
//!   no value of an old incarnation ever reads back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::BytesMut;
use common::{TestServer, manifest, stats};
use kvserver::protocol::{self, opcode, status};
use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Waits until `cond` holds on fresh stats. The bound is generous: a
/// manifest is persisted with fsyncs, which a busy disk can hold up for
/// seconds.
fn wait_for(
    c: &mut kvserver::client::Client,
    what: &str,
    cond: impl Fn(&std::collections::HashMap<String, String>) -> bool,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::time::Instant::now() < deadline {
        if cond(&stats(c, "")) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    panic!("timed out waiting for {what}: {:?}", stats(c, ""));
}

fn num(s: &std::collections::HashMap<String, String>, k: &str) -> u64 {
    s[k].parse().unwrap()
}

#[test]
fn disconnect_while_parked_on_set_collections() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    let mut admin = server.client();
    let mut released_while_parked = 0;
    let rounds = 20u64;
    for round in 0..rounds {
        // A: send the manifest and hang up at once (the FIN travels with
        // the request, so the server finds it while the request is parked).
        let mut a = server.client();
        let mut req = BytesMut::new();
        let m = manifest(2 * round + 1, &[("c", 9 + u32::try_from(round).unwrap())]);
        protocol::encode_request(
            &mut req,
            opcode::COLLECTIONS_SET_MANIFEST,
            0,
            1,
            0,
            &[],
            &[],
            m.as_bytes(),
        );
        let before = num(&stats(&mut admin, ""), "parked_released");
        a.send_raw(&req).unwrap();
        a.stream().shutdown(Shutdown::Both).unwrap();
        drop(a);
        // The server has let A go (only `admin` is connected), and the
        // update A left behind has finished persisting (the engine keeps
        // other updates out with a brief Busy meanwhile, so that an older
        // manifest can never be persisted after a newer one). A stale
        // update, one that never ends, fails here.
        wait_for(
            &mut admin,
            "A's connection to close and its update to end",
            |s| num(s, "curr_connections") == 1 && s["ep_collections_update_in_flight"] == "false",
        );
        let s = stats(&mut admin, "");
        released_while_parked += num(&s, "parked_released") - before;
        // ... and a new set-collections from another connection succeeds
        // at the first try.
        let next = manifest(2 * round + 2, &[("c", 9 + u32::try_from(round).unwrap())]);
        let r = admin
            .request(
                opcode::COLLECTIONS_SET_MANIFEST,
                0,
                0,
                &[],
                &[],
                next.as_bytes(),
            )
            .unwrap();
        assert_eq!(
            r.status,
            status::SUCCESS,
            "round {round}: set-collections after a departed parked one: {}",
            String::from_utf8_lossy(&r.value)
        );
    }
    assert!(
        released_while_parked > 0,
        "no round disconnected while parked; the scenario was not exercised"
    );
    let s = stats(&mut admin, "");
    assert_eq!(s["ep_parked_cookies"], "0", "parked state leaked: {s:?}");
    assert_eq!(s["ep_collections_update_in_flight"], "false");
    let r = admin
        .request(opcode::COLLECTIONS_GET_MANIFEST, 0, 0, &[], &[], &[])
        .unwrap();
    let got: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
    assert_eq!(got["uid"], format!("{:x}", 2 * rounds));
    println!("{released_while_parked} of {rounds} rounds released a parked set-collections");
    drop(admin);
    assert!(server.stop());
}

const VB: u16 = 3;

#[derive(Default)]
struct Shared {
    /// Acknowledged writes: (key, ack order).
    acked: Mutex<Vec<(Vec<u8>, u64)>>,
    /// Hands out the order of acknowledgements and of delete cuts.
    order: AtomicU64,
    /// Writes acknowledged before this order belong to a deleted
    /// incarnation (published once the DEL_VBUCKET that follows was
    /// answered).
    old_floor: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<Vec<String>>,
    stale_reads: AtomicU64,
    nmvb: AtomicU64,
    ops: AtomicU64,
}

fn worker(addr: String, id: usize, sh: Arc<Shared>) {
    let mut c = kvserver::client::Client::connect(addr).unwrap();
    c.hello("worker", &[protocol::feature::XERROR]).unwrap();
    let mut n = 0u64;
    let mut rng = rand::rng();
    while !sh.stop.load(Ordering::Acquire) {
        n += 1;
        let key = format!("w{id}-{n}").into_bytes();
        let value = format!("value of {id}-{n}");
        let r = c
            .request(opcode::SET, VB, 0, &[0; 8], &key, value.as_bytes())
            .unwrap();
        sh.ops.fetch_add(1, Ordering::Relaxed);
        match r.status {
            status::SUCCESS => {
                let ord = sh.order.fetch_add(1, Ordering::AcqRel);
                sh.acked.lock().unwrap().push((key, ord));
            }
            status::NOT_MY_VBUCKET => {
                sh.nmvb.fetch_add(1, Ordering::Relaxed);
            }
            s => sh
                .errors
                .lock()
                .unwrap()
                .push(format!("set: status {s:#x}")),
        }
        // Read a key acknowledged before the last delete: it must be gone.
        let floor = sh.old_floor.load(Ordering::Acquire);
        let pick = {
            let acked = sh.acked.lock().unwrap();
            let old: Vec<&(Vec<u8>, u64)> = acked.iter().filter(|(_, o)| *o < floor).collect();
            if old.is_empty() {
                None
            } else {
                Some(
                    old[rand::Rng::random_range(&mut rng, 0..old.len())]
                        .0
                        .clone(),
                )
            }
        };
        if let Some(k) = pick {
            let r = c.request(opcode::GET, VB, 0, &[], &k, &[]).unwrap();
            sh.ops.fetch_add(1, Ordering::Relaxed);
            match r.status {
                status::SUCCESS => {
                    sh.stale_reads.fetch_add(1, Ordering::Relaxed);
                    sh.errors.lock().unwrap().push(format!(
                        "read {} of an old incarnation: {:?}",
                        String::from_utf8_lossy(&k),
                        String::from_utf8_lossy(&r.value)
                    ));
                }
                status::KEY_ENOENT => {}
                status::NOT_MY_VBUCKET => {
                    sh.nmvb.fetch_add(1, Ordering::Relaxed);
                }
                s => sh
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("get: status {s:#x}")),
            }
        }
        // And one of the newest: found, gone (deleted since), or NMVB.
        let last = sh.acked.lock().unwrap().last().map(|(k, _)| k.clone());
        if let Some(k) = last {
            let r = c.request(opcode::GET, VB, 0, &[], &k, &[]).unwrap();
            sh.ops.fetch_add(1, Ordering::Relaxed);
            match r.status {
                status::SUCCESS | status::KEY_ENOENT => {}
                status::NOT_MY_VBUCKET => {
                    sh.nmvb.fetch_add(1, Ordering::Relaxed);
                }
                s => sh
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("get new: status {s:#x}")),
            }
        }
    }
}

#[test]
fn del_vbucket_and_recreate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(&dir.path().join("data"), None, &[]);
    let sh = Arc::new(Shared::default());
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let (addr, sh) = (server.addr(), Arc::clone(&sh));
            std::thread::spawn(move || worker(addr, i, sh))
        })
        .collect();
    let mut ctl = server.client();
    let cycles = 20;
    for cycle in 0..cycles {
        // Let the workers get some writes into this incarnation.
        let start = sh.order.load(Ordering::Acquire);
        while sh.order.load(Ordering::Acquire) < start + 30 {
            std::thread::yield_now();
        }
        let cut = sh.order.fetch_add(1, Ordering::AcqRel);
        let value: &[u8] = if cycle % 2 == 0 { b"async=0" } else { b"" };
        let r = ctl
            .request(opcode::DEL_VBUCKET, VB, 0, &[], &[], value)
            .unwrap();
        assert_eq!(r.status, status::SUCCESS, "cycle {cycle}: DEL_VBUCKET");
        sh.old_floor.store(cut, Ordering::Release);
        let r = ctl
            .request(opcode::SET_VBUCKET, VB, 0, &[1], &[], &[])
            .unwrap();
        assert_eq!(
            r.status,
            status::SUCCESS,
            "cycle {cycle}: SET_VBUCKET (recreate)"
        );
    }
    sh.stop.store(true, Ordering::Release);
    for w in workers {
        w.join().unwrap();
    }
    let errors = sh.errors.lock().unwrap().clone();
    let acked = sh.acked.lock().unwrap().len();
    println!(
        "{cycles} delete/recreate cycles; {} ops, {acked} writes acknowledged, {} NOT_MY_VBUCKET, {} errors",
        sh.ops.load(Ordering::Relaxed),
        sh.nmvb.load(Ordering::Relaxed),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "errors other than NOT_MY_VBUCKET: {errors:?}"
    );
    assert_eq!(sh.stale_reads.load(Ordering::Relaxed), 0);
    // The vbucket serves after the last recreate, and nothing is parked.
    let r = ctl
        .request(opcode::SET, VB, 0, &[0; 8], b"after", b"v")
        .unwrap();
    assert_eq!(r.status, status::SUCCESS);
    let s = stats(&mut ctl, "");
    assert_eq!(s["ep_parked_cookies"], "0");
    let mut b = BytesMut::new();
    protocol::encode_request(&mut b, opcode::QUIT, 0, 0, 0, &[], &[], &[]);
    ctl.send_raw(&b).unwrap();
    ctl.stream().flush().ok();
    drop(ctl);
    assert!(server.stop());
}
