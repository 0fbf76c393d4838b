//! The cookie table (sharded: DashMap) against one mutex over a HashMap
//! (the table before issue 13), each doing the cycle of a parked call:
//! park, complete, collect. One thread, then two threads on different
//! cookies (what connections of a server do).
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use engine::{CookieTable, NoNotify, Outcome, WaitKind, Waiting};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const OPS: u64 = 200_000;

/// The old shape: one global mutex.
#[derive(Default)]
struct OneMutex(Mutex<HashMap<u64, (u64, Option<Outcome>)>>);

impl OneMutex {
    fn cycle(&self, cookie: u64, token: u64) {
        self.0.lock().unwrap().insert(cookie, (token, None));
        if let Some(e) = self.0.lock().unwrap().get_mut(&cookie)
            && e.0 == token
        {
            e.1 = Some(Outcome::Done);
        }
        black_box(self.0.lock().unwrap().remove(&cookie));
    }
}

fn table_cycle(t: &CookieTable, cookie: u64) {
    let ticket = t.park(cookie, Waiting::Manifest).unwrap();
    t.complete(ticket, |_| Ok(Outcome::Done));
    black_box(t.collect(cookie, WaitKind::Manifest));
}

fn threads(n: u64, work: impl Fn(u64) + Sync + Send + 'static) -> Duration {
    let work = Arc::new(work);
    let barrier = Arc::new(Barrier::new(n as usize));
    let hs: Vec<_> = (0..n)
        .map(|i| {
            let (w, b) = (work.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                let t = Instant::now();
                for k in 0..OPS {
                    w(i * 1_000_000 + (k % 512));
                }
                t.elapsed()
            })
        })
        .collect();
    hs.into_iter().map(|h| h.join().unwrap()).max().unwrap()
}

fn cookies(c: &mut Criterion) {
    let mut g = c.benchmark_group("cookie_cycle");
    g.throughput(Throughput::Elements(OPS));
    g.sample_size(10);
    for n in [1u64, 2] {
        g.bench_function(format!("dashmap_table_{n}_threads"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let t = Arc::new(CookieTable::new(Arc::new(NoNotify)));
                        threads(n, move |c| table_cycle(&t, c))
                    })
                    .sum()
            });
        });
        g.bench_function(format!("one_mutex_{n}_threads"), |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let t = Arc::new(OneMutex::default());
                        threads(n, move |c| t.cycle(c, c))
                    })
                    .sum()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, cookies);
criterion_main!(benches);
