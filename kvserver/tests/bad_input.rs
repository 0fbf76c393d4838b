//! Hostile input: random bytes, truncated frames, huge declared lengths,
//! bad magic, over-long text lines, and slowloris clients, while a
//! well-behaved client keeps working on another connection. The server
//! answers or closes each hostile connection, never panics, keeps serving
//! the good client, and its memory stays bounded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{BufMut, BytesMut};
use common::{TestServer, stats};
use kvserver::protocol::{self, opcode, status};
use rand::{Rng, RngCore};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Reads until the server closes (or resets) the connection; returns what
/// it sent. A connection the server never closes fails the test.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("the server neither answered nor closed: {e}"),
        }
    }
}

fn header(op: u8, magic: u8, key: u16, extras: u8, body: u32) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(magic);
    b.put_u8(op);
    b.put_u16(key);
    b.put_u8(extras);
    b.put_u8(0);
    b.put_u16(0);
    b.put_u32(body);
    b.put_u32(0x1234);
    b.put_u64(0);
    b.to_vec()
}

fn first_response(bytes: &[u8]) -> Option<protocol::Response> {
    let mut b = BytesMut::from(bytes);
    protocol::decode_response(&mut b).ok().flatten()
}

#[test]
fn hostile_clients_do_not_hurt_a_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(
        &dir.path().join("data"),
        None,
        &[
            "--idle-timeout",
            "2",
            "--max-value-size",
            "1000000",
            "--max-frame-size",
            "1048576",
        ],
    );
    let addr = server.addr();
    let rss_before = server.rss_kib();

    // The good client: sets and gets its own keys throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let good_ops = Arc::new(AtomicU64::new(0));
    let good = {
        let (stop, ops, addr) = (Arc::clone(&stop), Arc::clone(&good_ops), addr.clone());
        std::thread::spawn(move || {
            let mut c = kvserver::client::Client::connect(addr).unwrap();
            let mut errors = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                i += 1;
                let key = format!("good-{}", i % 500);
                let val = format!("v{i}");
                let r = c
                    .request(opcode::SET, 0, 0, &[0; 8], key.as_bytes(), val.as_bytes())
                    .unwrap();
                if r.status != status::SUCCESS {
                    errors.push(format!("set {key}: {:#x}", r.status));
                }
                let r = c
                    .request(opcode::GET, 0, 0, &[], key.as_bytes(), &[])
                    .unwrap();
                if r.status != status::SUCCESS || r.value != val.as_bytes() {
                    errors.push(format!("get {key}: {:#x} {:?}", r.status, r.value));
                }
                ops.fetch_add(2, Ordering::Relaxed);
            }
            errors
        })
    };

    let mut rng = rand::rng();
    // 1. Random bytes (binary or text, by their first byte), then FIN.
    for _ in 0..150 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut data = vec![0u8; rng.random_range(1..4096)];
        rng.fill_bytes(&mut data);
        if rng.random_bool(0.5) {
            data[0] = protocol::MAGIC_REQ;
        }
        let _ = s.write_all(&data);
        let _ = s.shutdown(Shutdown::Write);
        read_to_close(&mut s);
    }
    // 2. Truncated frames: a header promising 100 bytes, 50 sent.
    for _ in 0..20 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut f = header(opcode::SET, protocol::MAGIC_REQ, 3, 8, 100);
        f.extend_from_slice(&[7u8; 50]);
        s.write_all(&f).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_to_close(&mut s);
    }
    // 3. Huge declared lengths: refused before the body is read.
    for body in [u32::MAX, 1 << 30, 1_048_577] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&header(opcode::SET, protocol::MAGIC_REQ, 3, 8, body))
            .unwrap();
        let got = read_to_close(&mut s);
        let r = first_response(&got).expect("an answer to a huge frame");
        assert_eq!(r.status, status::E2BIG, "declared body {body}");
    }
    // 4. Bad magic after a good request: answered, then closed.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut f = header(opcode::NOOP, protocol::MAGIC_REQ, 0, 0, 0);
        f.extend(header(opcode::GET, 0x42, 0, 0, 0));
        s.write_all(&f).unwrap();
        let got = read_to_close(&mut s);
        let mut b = BytesMut::from(&got[..]);
        let noop = protocol::decode_response(&mut b).unwrap().unwrap();
        assert_eq!((noop.opcode, noop.status), (opcode::NOOP, status::SUCCESS));
        let bad = protocol::decode_response(&mut b).unwrap().unwrap();
        assert_eq!(bad.status, status::EINVAL);
    }
    // 5. Text: an endless line, and a data block over the limit.
    {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&vec![b'g'; 20_000]);
        let got = read_to_close(&mut s);
        assert!(String::from_utf8_lossy(&got).contains("CLIENT_ERROR line too long"));
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"set k 0 0 999999999\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_close(&mut s);
        assert!(String::from_utf8_lossy(&got).starts_with("SERVER_ERROR object too large"));
    }
    // 6. Many half-sent large frames held open: bounded memory, then the
    //    idle timeout closes them.
    let mut held = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(&addr).unwrap();
        let mut f = header(opcode::SET, protocol::MAGIC_REQ, 3, 8, 1_000_000);
        f.extend_from_slice(&vec![1u8; 64 << 10]);
        s.write_all(&f).unwrap();
        held.push(s);
    }
    // 7. Slowloris: one byte of a header at a time; the server closes the
    //    connection before the client is done, as it never completes a
    //    request within the idle timeout.
    let mut drip = TcpStream::connect(&addr).unwrap();
    let frame = header(opcode::GET, protocol::MAGIC_REQ, 0, 0, 10);
    let mut closed_early = false;
    for b in frame.iter().cycle().take(200) {
        if drip.write_all(&[*b]).is_err() {
            closed_early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !closed_early {
        closed_early = read_to_close(&mut drip).is_empty();
    }
    assert!(closed_early, "a slowloris client was not closed");
    for s in &mut held {
        read_to_close(s);
    }
    let rss_after = server.rss_kib();

    stop.store(true, Ordering::Release);
    let errors = good.join().unwrap();
    assert!(errors.is_empty(), "the good client saw errors: {errors:?}");
    let ops = good_ops.load(Ordering::Relaxed);
    assert!(ops > 0);
    let mut c = server.client();
    let s = stats(&mut c, "");
    println!(
        "good client: {ops} ops, 0 errors; rss {rss_before} KiB -> {rss_after} KiB; protocol_errors {}, idle_closed {}",
        s["protocol_errors"], s["idle_closed"]
    );
    assert!(s["protocol_errors"].parse::<u64>().unwrap() > 0);
    assert!(s["idle_closed"].parse::<u64>().unwrap() >= 50);
    // 50 connections each holding 64 KiB of a frame, plus the rest: far
    // below what unbounded buffering of the declared lengths would take.
    assert!(
        rss_after < rss_before + 128 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    drop(c);
    assert!(server.stop());
}
