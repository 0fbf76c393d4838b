//! Times 1,000-item commits, synced and not, and reports bytes per commit
//! (a profiling aid).
#![allow(clippy::unwrap_used, missing_docs)]
use kvstore_core::{CollectionId, CommitBatch, DiskKey, Document, KvStore, Seqno, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use rand::{Rng, SeedableRng, rngs::StdRng};
fn main() {
    let modes: Vec<bool> = if std::env::var("ONLY_NOSYNC").is_ok() {
        vec![false]
    } else {
        vec![false, true]
    };
    for sync in modes {
        let dir = tempfile::tempdir().unwrap();
        let store = CouchStore::open(
            dir.path(),
            CouchConfig {
                sync,
                compression: match std::env::var("CODEC").as_deref() {
                    Ok("snappy") => kvstore_couchfile::Compression::Snappy,
                    Ok("none") => kvstore_couchfile::Compression::None,
                    _ => kvstore_couchfile::Compression::Lz4,
                },
                ..Default::default()
            },
        )
        .unwrap();
        let stats = store.io_stats();
        let vb = store.create(Vbid(0)).unwrap();
        let key =
            |i: u64| DiskKey::new(CollectionId::DEFAULT, format!("k{i:023}").as_bytes()).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let commits: u64 = std::env::var("COMMITS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let b0 = stats.bytes_written();
        let t = std::time::Instant::now();
        for c in 0..commits {
            let mut b = CommitBatch::new();
            for i in c * 1000..(c + 1) * 1000 {
                let mut v: Vec<u8> = (0..75).map(|_| rng.random()).collect();
                v.resize(150, b'x');
                b = b.item(Document::new(key(i), Seqno(i + 1), v));
            }
            vb.commit(b).unwrap();
        }
        let e = t.elapsed();
        println!(
            "sync={sync}: {:.0} us per commit, {} bytes per commit",
            e.as_micros() as f64 / commits as f64,
            (stats.bytes_written() - b0) / commits
        );
    }
}
