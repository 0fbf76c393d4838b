//! Guard acquire + release against `Arc::clone` + drop of the same `Arc`
//! (the baseline), and two threads on different vbuckets against one.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::{CookieTable, Deleter, NoNotify, VBucket, VBucketMap};
use kvstore_core::{KvStore, MemStore, VbState, Vbid};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn map() -> Arc<VBucketMap> {
    let kv: Arc<dyn KvStore> = Arc::new(MemStore::new());
    let deleter = Deleter::new();
    let cookies = Arc::new(CookieTable::new(Arc::new(NoNotify)));
    let map = Arc::new(VBucketMap::new(1024));
    for v in 0..4 {
        let vb = VBucket::create(
            Vbid(v),
            VbState::Active,
            kv.clone(),
            deleter.clone(),
            cookies.clone(),
            1,
        )
        .unwrap();
        map.insert(vb).map_err(|(_, e)| e).unwrap();
    }
    map
}

const OPS: u64 = 1_000_000;

fn run(map: &VBucketMap, vbid: Vbid, n: u64) {
    for _ in 0..n {
        let g = map.get(black_box(vbid)).unwrap();
        black_box(&g);
        drop(g);
    }
}

fn guards(c: &mut Criterion) {
    let map = map();
    let mut g = c.benchmark_group("guard");
    g.throughput(Throughput::Elements(OPS));
    g.bench_function("arc_clone_drop", |b| {
        let guard = map.get(Vbid(0)).unwrap();
        b.iter(|| {
            for _ in 0..OPS {
                // VbGuard's clone is exactly `Arc::clone` of the incarnation.
                let c = black_box(&guard).clone();
                black_box(&c);
                drop(c);
            }
        });
    });
    g.bench_function("get_drop_1_thread", |b| b.iter(|| run(&map, Vbid(0), OPS)));
    g.throughput(Throughput::Elements(2 * OPS));
    g.bench_function("get_drop_2_threads", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let barrier = Arc::new(Barrier::new(3));
                let hs: Vec<_> = [Vbid(1), Vbid(2)]
                    .into_iter()
                    .map(|v| {
                        let (m, b) = (map.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            b.wait();
                            run(&m, v, OPS);
                        })
                    })
                    .collect();
                barrier.wait();
                let t = Instant::now();
                for h in hs {
                    h.join().unwrap();
                }
                total += t.elapsed();
            }
            total
        });
    });
    g.finish();

    // The machine's own two-thread scaling, with no shared memory at all:
    // the ceiling for any two-thread ratio measured here.
    let mut m = c.benchmark_group("machine");
    m.throughput(Throughput::Elements(OPS));
    let spin = |n: u64| {
        let mut x = 0u64;
        for i in 0..n * 8 {
            x = black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        x
    };
    m.bench_function("alu_1_thread", |b| b.iter(|| spin(OPS)));
    m.throughput(Throughput::Elements(2 * OPS));
    m.bench_function("alu_2_threads", |b| {
        b.iter(|| {
            std::thread::scope(|s| {
                s.spawn(|| spin(OPS));
                s.spawn(|| spin(OPS));
            });
        });
    });
    m.finish();
}

criterion_group!(benches, guards);
criterion_main!(benches);
