//! Engine set and get throughput with the background flusher running, per
//! backend. Prints the persisted items per second and the peak RSS.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use engine::{Backend, Engine, EngineConfig, EngineError, NoNotify, WriteOptions};
use kvstore_core::{CollectionId, DiskKey, VbState, Vbid};
use std::sync::Arc;
use std::time::Instant;

const VBUCKETS: u16 = 64;
const OPS: u64 = 10_000;

fn key(i: u64) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, format!("key{i:021}").as_bytes()).unwrap()
}

fn backends() -> Vec<(&'static str, Backend)> {
    #[allow(unused_mut)]
    let mut v = vec![
        ("memory", Backend::Memory),
        ("couchfile", Backend::Couchfile(Default::default())),
    ];
    #[cfg(feature = "rocks")]
    v.push(("rocksdb", Backend::Rocks(Default::default())));
    v
}

fn engine(dir: &std::path::Path, backend: Backend) -> Engine {
    let mut cfg = EngineConfig::new(dir);
    cfg.backend = backend;
    cfg.vbuckets = usize::from(VBUCKETS);
    let e = Engine::open_with_notifier(cfg, Arc::new(NoNotify)).unwrap();
    for v in 0..VBUCKETS {
        e.create_vbucket(Vbid(v), VbState::Active).unwrap();
    }
    e
}

fn set_all(e: &Engine, from: u64, n: u64) {
    let value = vec![b'v'; 150];
    for i in from..from + n {
        let vb = Vbid((i % u64::from(VBUCKETS)) as u16);
        loop {
            match e.set(vb, &key(i), value.clone(), WriteOptions::default()) {
                Ok(_) => break,
                Err(EngineError::TemporaryFailure(_)) => std::thread::yield_now(),
                Err(err) => panic!("{err}"),
            }
        }
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn ops(c: &mut Criterion) {
    for (name, backend) in backends() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path(), backend);
        let mut g = c.benchmark_group(format!("engine/{name}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(OPS));
        let mut next = 0u64;
        g.bench_function("set", |b| {
            b.iter_batched(
                || {
                    let from = next;
                    next += OPS;
                    from
                },
                |from| set_all(&e, from, OPS),
                BatchSize::PerIteration,
            );
        });
        e.wait_for_flusher();
        e.flush().unwrap();
        let written = next;
        g.bench_function("get", |b| {
            let mut i = 0u64;
            b.iter(|| {
                for _ in 0..OPS {
                    i = (i + 7919) % written;
                    let vb = Vbid((i % u64::from(VBUCKETS)) as u16);
                    e.get(vb, &key(i)).unwrap();
                }
            });
        });
        g.finish();
        // Persisted items per second: a fresh load, timed until the flusher
        // has committed all of it.
        let before = e.stats().flushed_items;
        let t = Instant::now();
        set_all(&e, written, 100_000);
        e.wait_for_flusher();
        e.flush().unwrap();
        let flushed = e.stats().flushed_items - before;
        eprintln!(
            "engine/{name}: persisted {flushed} items in {:?} = {:.0} items/s; peak RSS so far {} MiB",
            t.elapsed(),
            flushed as f64 / t.elapsed().as_secs_f64(),
            peak_rss_kib() / 1024
        );
        e.shutdown().unwrap();
    }
}

criterion_group!(benches, ops);
criterion_main!(benches);
