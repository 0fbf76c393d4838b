//! A short engine workload on the embedded default backend (couchfile):
//! create vbuckets, set and get documents, a durable write (blocking, and as
//! a future), delete a vbucket while a guard holds it, shut down, warm up,
//! and check that everything came back. It prints what it does.
//!
//! It uses only the Rust API: no cookie, no notifier, no re-issued call.
//!
//! Usage: `cargo run --release -p engine --example demo [DATA_DIR]`
//! (default `target/demo-data`, emptied first).

use engine::{
    Backend, CollectionId, DiskKey, Engine, EngineConfig, EngineError, VbState, Vbid, WriteOptions,
};
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

fn key(i: u32) -> Result<DiskKey, engine::StoreError> {
    Ok(DiskKey::new(
        CollectionId::DEFAULT,
        format!("user::{i:05}").as_bytes(),
    )?)
}

/// A minimal executor for the future: the thread parks until woken.
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

fn block_on<F: Future>(f: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/demo-data".to_owned());
    let _ = std::fs::remove_dir_all(&dir);
    println!("data directory: {dir}");
    let mut config = EngineConfig::new(&dir);
    config.backend = "couchfile".parse::<Backend>()?;
    let engine = Engine::open(config.clone())?;
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
            match engine.set(vb, &key(i)?, value.clone(), WriteOptions::default()) {
                Ok(_) => break,
                // The memory quota is full until the flusher catches up.
                Err(EngineError::TemporaryFailure(_)) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
    }
    println!("set {n} documents across 4 vbuckets in {:?}", t.elapsed());

    // A durable write: the call returns once the flusher has persisted it.
    let t = Instant::now();
    let r = engine.set_durable(Vbid(0), &key(n)?, "durable", WriteOptions::default())?;
    println!(
        "durable set: seqno {} cas {:#x}, persisted when it returned ({:?})",
        r.seqno,
        r.cas.0,
        t.elapsed()
    );
    // The same as a future, for async callers.
    let pending = engine.set_async(
        Vbid(1),
        &key(n + 1)?,
        "durable too",
        WriteOptions::durable(),
    );
    let r = block_on(pending)?;
    println!("durable set through a future: seqno {}", r.seqno);
    // A durable delete takes the same options.
    let d = engine.delete(Vbid(1), &key(n + 1)?, WriteOptions::durable())?;
    println!("durable delete: seqno {}", d.seqno);

    let item = engine.get(Vbid(1), &key(4001)?)?;
    println!(
        "get vb:1 user::04001 -> {} (seqno {}, cas {:#x})",
        String::from_utf8_lossy(&item.value),
        item.meta.seqno,
        item.meta.cas.0
    );

    // Delete vbucket 3 while a guard (an operation in flight) still holds it.
    let guard = engine.vbucket(Vbid(3))?;
    engine.delete_vbucket(Vbid(3))?;
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
    engine.wait_for_deletions();
    println!(
        "  guard dropped: the files of vb:3 are gone (deletions done: {})",
        engine.deleter().destroyed_total()
    );

    engine.flush()?;
    let s = engine.stats();
    println!(
        "stats: {} vbuckets, {} items, {} flush batches, {} items flushed in {:?}, {} bytes on disk, {} failing",
        s.vbuckets,
        s.items,
        s.flush_batches,
        s.flushed_items,
        s.flush_time,
        s.disk_bytes,
        s.failing_vbuckets
    );
    engine.shutdown()?;
    println!("shut down");

    let t = Instant::now();
    let engine = Engine::open(config)?;
    let s = engine.stats();
    println!(
        "warmup: vbuckets {:?}, {} items in {:?}",
        engine
            .warmed_up()
            .iter()
            .map(|(v, _)| v.0)
            .collect::<Vec<_>>(),
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
