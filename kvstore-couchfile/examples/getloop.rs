//! Times warm random gets (a profiling aid).
#![allow(clippy::unwrap_used, missing_docs)]
use kvstore_core::{CollectionId, CommitBatch, DiskKey, Document, KvStore, Seqno, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = CouchStore::open(
        dir.path(),
        CouchConfig {
            sync: false,
            ..Default::default()
        },
    )
    .unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let key =
        |i: u64| DiskKey::new(CollectionId::DEFAULT, format!("key{i:021}").as_bytes()).unwrap();
    let n = 100_000u64;
    for c in 0..n / 1000 {
        let mut b = CommitBatch::new();
        for i in c * 1000..(c + 1) * 1000 {
            b = b.item(Document::new(key(i), Seqno(i + 1), vec![7u8; 150]));
        }
        vb.commit(b).unwrap();
    }
    let keys: Vec<DiskKey> = (0..n).map(key).collect();
    for k in &keys {
        vb.get(k).unwrap();
    }
    let (h0, _) = store.cache_hit_miss();
    vb.get(&keys[5]).unwrap();
    let (h1, _) = store.cache_hit_miss();
    println!("nodes per get: {}", h1 - h0);
    // Fold the memtable into the index, so gets go through the trees.
    let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
    cvb.checkpoint().unwrap();
    for k in &keys {
        vb.get(k).unwrap();
    }
    let t = std::time::Instant::now();
    let mut x = 0u64;
    let gets: u64 = std::env::var("GETS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    for i in 0..gets {
        let k = &keys[((i * 7919) % n) as usize];
        x += vb.get(k).unwrap().unwrap().value.len() as u64;
    }
    let e = t.elapsed();
    println!("{} ns per get ({x})", e.as_nanos() / u128::from(gets));
}
