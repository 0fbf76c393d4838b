//! A short engine workload on the embedded default backend (couchfile):
//! create vbuckets, set and get documents, wait for a durable write, delete a
//! vbucket while a guard holds it, shut down, warm up, and check that
//! everything came back. It prints what it does.
//!
//! Usage: `cargo run --release -p engine --example demo [DATA_DIR]`
//! (default `target/demo-data`, emptied first).

use engine::{Engine, EngineConfig, EngineError, Notifier, WriteOptions};
use kvstore_core::{CollectionId, DiskKey, VbState, Vbid};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// Wakes the demo when a blocked call completes.
#[derive(Default)]
struct Wakeup {
    done: Mutex<Vec<u64>>,
    cv: Condvar,
}

impl Notifier for Wakeup {
    fn notify(&self, cookie: u64, _status: Result<(), EngineError>) {
        self.done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(cookie);
        self.cv.notify_all();
    }
}

impl Wakeup {
    fn wait(&self, cookie: u64) {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while !done.contains(&cookie) {
            done = self
                .cv
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

fn key(i: u32) -> Result<DiskKey, kvstore_core::KeyError> {
    DiskKey::new(CollectionId::DEFAULT, format!("user::{i:05}").as_bytes())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/demo-data".to_owned());
    let _ = std::fs::remove_dir_all(&dir);
    println!("data directory: {dir}");
    let wake = Arc::new(Wakeup::default());
    let engine = Engine::open(EngineConfig::new(&dir), wake.clone())?;
    println!("opened the engine on the {} backend", engine.backend_name());

    for v in 0..4 {
        engine.create_vbucket(Vbid(v), VbState::Active)?;
    }
    println!("created vbuckets 0-3 (active)");

    let t = Instant::now();
    let n = 20_000u32;
    for i in 0..n {
        let vb = Vbid((i % 4) as u16);
        let value = format!("{{\"id\":{i},\"name\":\"user {i}\"}}");
        loop {
            match engine.set(
                u64::from(i),
                vb,
                &key(i)?,
                value.clone(),
                WriteOptions::default(),
            ) {
                Ok(_) => break,
                Err(EngineError::TemporaryFailure(_)) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("set {n} documents across 4 vbuckets in {:?}", t.elapsed());

    // A durable write: it blocks until the flusher has persisted it.
    let durable = WriteOptions {
        durable: true,
        ..WriteOptions::default()
    };
    let cookie = 1_000_000;
    let t = Instant::now();
    match engine.set(cookie, Vbid(0), &key(n)?, "durable", durable) {
        Err(EngineError::WouldBlock) => {}
        other => return Err(format!("expected WouldBlock, got {other:?}").into()),
    }
    wake.wait(cookie);
    let r = engine.set(cookie, Vbid(0), &key(n)?, "durable", durable)?;
    println!(
        "durable set: blocked, notified, collected seqno {} cas {:#x} after {:?}",
        r.seqno,
        r.cas.0,
        t.elapsed()
    );

    let item = engine.get(Vbid(1), &key(4001)?)?;
    println!(
        "get vb:1 user::04001 -> {} (seqno {}, cas {:#x})",
        String::from_utf8_lossy(&item.value),
        item.meta.seqno,
        item.meta.cas.0
    );

    // Delete vbucket 3 while a guard (an operation in flight) still holds it.
    let guard = engine.vbucket(Vbid(3))?;
    let delete_cookie = 2_000_000;
    match engine.delete_vbucket(Some(delete_cookie), Vbid(3)) {
        Err(EngineError::WouldBlock) => {}
        other => return Err(format!("expected WouldBlock, got {other:?}").into()),
    }
    println!(
        "deleted vb:3 while a guard holds it: new lookups get {}; its files stay until the guard drops",
        engine
            .get(Vbid(3), &key(3)?)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    );
    let still = guard.store().info()?;
    println!(
        "  the guard still reads the old incarnation: {} items, {} bytes on disk",
        still.live_items, still.file_bytes
    );
    drop(guard);
    wake.wait(delete_cookie);
    engine.delete_vbucket(Some(delete_cookie), Vbid(3))?;
    println!(
        "  guard dropped: the files of vb:3 are gone (deletions done: {})",
        engine.deleter().destroyed_total()
    );

    engine.flush()?;
    let s = engine.stats();
    println!(
        "stats: {} vbuckets, {} items, {} flush batches, {} items flushed in {:?}, {} bytes on disk",
        s.vbuckets, s.items, s.flush_batches, s.flushed_items, s.flush_time, s.disk_bytes
    );
    engine.shutdown()?;
    println!("shut down");

    let t = Instant::now();
    let engine = Engine::open(EngineConfig::new(&dir), wake)?;
    let s = engine.stats();
    println!(
        "warmup: {} vbuckets, {} items in {:?}",
        s.vbuckets,
        s.items,
        t.elapsed()
    );
    let mut checked = 0;
    for i in 0..n {
        let vb = Vbid((i % 4) as u16);
        match engine.get(vb, &key(i)?) {
            Ok(item) if vb.0 != 3 => {
                assert_eq!(
                    item.value,
                    format!("{{\"id\":{i},\"name\":\"user {i}\"}}").as_bytes()
                );
                checked += 1;
            }
            Err(EngineError::NotMyVbucket(_)) if vb.0 == 3 => {}
            other => return Err(format!("user::{i} after warmup: {other:?}").into()),
        }
    }
    println!("after warmup: all {checked} documents of vb:0-2 read back; vb:3 stays deleted");
    engine.shutdown()?;
    Ok(())
}
