//! The bench's durable sequence on couchfile alone (a profiling aid; the
//! comparison with the peers is `cargo xtask bench`): durable batches of
//! random keys, single-item durable commits, warm random reads, durable
//! random updates, with the bytes on disk after each phase.
#![allow(clippy::unwrap_used, missing_docs)]
use kvstore_core::{CollectionId, CommitBatch, DiskKey, Document, KvStore, Seqno, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng, rngs::StdRng};
use std::time::Instant;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn key(i: u64) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, format!("k{i:023}").as_bytes()).unwrap()
}

fn value(i: u64, version: u64) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(i.wrapping_mul(0x9e37_79b9) ^ version ^ 42);
    let mut v: Vec<u8> = (0..75).map(|_| rng.random()).collect();
    v.resize(150, b'x');
    v
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

fn pct(mut v: Vec<u64>, p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize] as f64 / 1000.0
}

fn now_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n = env("ITEMS", 500_000);
    let single = env("SINGLE", 300);
    let reads = env("READS", 200_000);
    let updates = env("UPDATES", 200);
    let dir = tempfile::tempdir().unwrap();
    let mut config = CouchConfig::default();
    if let Ok(m) = std::env::var("MEMTABLE_MB") {
        config.memtable_bytes = m.parse::<usize>().unwrap() << 20;
        config.memtable_budget = config.memtable_bytes * 2;
    }
    if let Ok(m) = std::env::var("CACHE_MB") {
        config.cache_bytes = m.parse::<usize>().unwrap() << 20;
    }
    if let Ok(m) = std::env::var("BLOCK_MB") {
        config.block_cache_bytes = m.parse::<usize>().unwrap() << 20;
    }
    if let Ok(r) = std::env::var("REWRITE_RATIO") {
        config.index_rewrite_ratio = r.parse().unwrap();
    }
    if std::env::var("NO_BACKGROUND").is_ok() {
        config.background = false;
    }
    let store = CouchStore::open(dir.path(), config).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut keys: Vec<u64> = (0..n).collect();
    keys.shuffle(&mut rng);
    let mut seqno = 0;
    let mut commit = |items: &[(u64, u64)], lat: &mut Vec<u64>| {
        let mut b = CommitBatch::new();
        for &(i, version) in items {
            seqno += 1;
            b = b.item(Document::new(key(i), Seqno(seqno), value(i, version)));
        }
        let t = Instant::now();
        vb.commit(b).unwrap();
        lat.push(t.elapsed().as_nanos() as u64);
    };
    let mut lat = Vec::new();
    let t = Instant::now();
    for c in keys.chunks(1000) {
        let items: Vec<(u64, u64)> = c.iter().map(|&i| (i, 0)).collect();
        commit(&items, &mut lat);
    }
    let s = t.elapsed().as_secs_f64();
    let (nc, bc) = store.cache_bytes();
    println!(
        "  rss now {} MiB, peak {} MiB; node cache {} MiB, block cache {} MiB, memtables {} MiB",
        now_rss_kib() / 1024,
        rss_kib() / 1024,
        nc >> 20,
        bc >> 20,
        store.memtable_bytes() >> 20
    );
    println!(
        "durablebatch:  {:>9.0} items/s  p50 {:.0} us p99 {:.0} us  disk {:.1} MiB",
        n as f64 / s,
        pct(lat.clone(), 0.5),
        pct(lat, 0.99),
        dir_bytes(dir.path()) as f64 / 1048576.0
    );
    if std::env::var("TIME_CHECKPOINT").is_ok() {
        let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
        let t = Instant::now();
        cvb.checkpoint().unwrap();
        println!("checkpoint of everything: {:?}", t.elapsed());
        let t = Instant::now();
        cvb.checkpoint().unwrap();
        println!("empty checkpoint: {:?}", t.elapsed());
    }
    let mut lat = Vec::new();
    let t = Instant::now();
    let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
    let stat = |c: &kvstore_couchfile::CouchVb| {
        (
            c.stats
                .checkpoints
                .load(std::sync::atomic::Ordering::Relaxed),
            c.stats.rewrites.load(std::sync::atomic::Ordering::Relaxed),
            c.stats
                .reclaim_started
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    for i in 0..single {
        let before = stat(&cvb);
        commit(&[(n + i, 0)], &mut lat);
        let last = *lat.last().unwrap();
        if last > 2_000_000 {
            println!(
                "  slow single commit {i}: {} us; maintenance before {before:?} after {:?}",
                last / 1000,
                stat(&cvb)
            );
        }
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "durablesingle: {:>9.0} commits/s p50 {:.0} us p99 {:.0} us  disk {:.1} MiB",
        single as f64 / s,
        pct(lat.clone(), 0.5),
        pct(lat, 0.99),
        dir_bytes(dir.path()) as f64 / 1048576.0
    );
    let probe: Vec<DiskKey> = (0..reads).map(|_| key(rng.random_range(0..n))).collect();
    let mut lat = Vec::with_capacity(reads as usize);
    let (nodes0, blocks0) = (store.cache_hit_miss(), store.block_hit_miss());
    let t = Instant::now();
    for k in &probe {
        let o = Instant::now();
        let d = vb.get(k).unwrap().unwrap();
        lat.push(o.elapsed().as_nanos() as u64);
        std::hint::black_box(d);
    }
    let s = t.elapsed().as_secs_f64();
    drop(probe);
    println!(
        "warmread:      {:>9.0} gets/s    p50 {:.1} us p99 {:.1} us",
        reads as f64 / s,
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );
    let (nodes1, blocks1) = (store.cache_hit_miss(), store.block_hit_miss());
    println!(
        "  node cache hits {} misses {}; block cache hits {} misses {}",
        nodes1.0 - nodes0.0,
        nodes1.1 - nodes0.1,
        blocks1.0 - blocks0.0,
        blocks1.1 - blocks0.1
    );
    keys.shuffle(&mut rng);
    let mut lat = Vec::new();
    let t = Instant::now();
    let upd = (updates * 1000).min(n) as usize;
    for c in keys[..upd].chunks(1000) {
        let items: Vec<(u64, u64)> = c.iter().map(|&i| (i, 1)).collect();
        commit(&items, &mut lat);
    }
    let s = t.elapsed().as_secs_f64();
    let (nc, bc) = store.cache_bytes();
    println!(
        "  rss now {} MiB, peak {} MiB; node cache {} MiB, block cache {} MiB, memtables {} MiB",
        now_rss_kib() / 1024,
        rss_kib() / 1024,
        nc >> 20,
        bc >> 20,
        store.memtable_bytes() >> 20
    );
    println!(
        "durableupdate: {:>9.0} items/s  p50 {:.0} us p99 {:.0} us  disk {:.1} MiB",
        upd as f64 / s,
        pct(lat.clone(), 0.5),
        pct(lat, 0.99),
        dir_bytes(dir.path()) as f64 / 1048576.0
    );
    let breakdown = |when: &str| {
        let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
        let segs = cvb.segment_stats();
        let (phys, total, live): (u64, u64, u64) = segs.iter().fold((0, 0, 0), |a, s| {
            (a.0 + s.phys, a.1 + s.total, a.2 + s.live)
        });
        let v = cvb.view();
        let _ = &v;
        println!(
            "  {when}: {} segments: {:.1} MiB on disk, {:.1} MiB written, {:.1} MiB live; index+log info {:.1} MiB; checkpoints {} rewrites {} reclaims {} relocated {:.1} MiB",
            segs.len(),
            phys as f64 / 1048576.0,
            total as f64 / 1048576.0,
            live as f64 / 1048576.0,
            vb.info().unwrap().file_bytes as f64 / 1048576.0,
            cvb.stats
                .checkpoints
                .load(std::sync::atomic::Ordering::Relaxed),
            cvb.stats
                .rewrites
                .load(std::sync::atomic::Ordering::Relaxed),
            cvb.stats
                .reclaims
                .load(std::sync::atomic::Ordering::Relaxed),
            cvb.stats
                .relocated_bytes
                .load(std::sync::atomic::Ordering::Relaxed) as f64
                / 1048576.0,
        );
    };
    breakdown("after updates");
    std::thread::sleep(std::time::Duration::from_secs(env("SETTLE", 3)));
    breakdown("after idle");
    println!(
        "after {}s idle: disk {:.1} MiB; peak RSS {} MiB; open files {}; memtables {} KiB",
        env("SETTLE", 3),
        dir_bytes(dir.path()) as f64 / 1048576.0,
        rss_kib() / 1024,
        store.open_files(),
        store.memtable_bytes() / 1024
    );
    let info = vb.info().unwrap();
    println!("{info:?}");
}
