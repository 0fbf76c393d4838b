//! Stores, reads, scans, rolls back and reopens data through the `KvStore`
//! contract, on the in-memory reference backend.

use kvstore_core::{
    CollectionId, CommitBatch, DiskKey, Document, KvStore, MemImage, MemStore, ScanControl,
    ScanOptions, Seqno, StoreResult, VbState, Vbid, VbucketState,
};

fn main() -> StoreResult<()> {
    let image = MemImage::new();
    let store = MemStore::open_image(image.clone(), 1024);
    let vb = store.create(Vbid(0))?;
    println!("created {} {}", vb.vbid(), vb.revision());

    let mut batch = CommitBatch::new().vbstate(VbucketState {
        state: VbState::Active,
        ..VbucketState::default()
    });
    for i in 1..=5u64 {
        let key = DiskKey::new(CollectionId::DEFAULT, format!("user::{i}").as_bytes())?;
        batch = batch.item(Document::new(key, Seqno(i), format!("{{\"n\":{i}}}")));
        // Two commits: seqnos 1-3, then 4-5.
        if i == 3 || i == 5 {
            let info = vb.commit(std::mem::take(&mut batch))?;
            println!(
                "committed {} items, high seqno {}",
                info.items, info.high_seqno
            );
        }
    }

    let key = DiskKey::new(CollectionId::DEFAULT, b"user::3")?;
    if let Some(doc) = vb.get(&key)? {
        println!("get {key} -> {}", String::from_utf8_lossy(&doc.value));
    }

    let mut scan = vb.seqno_scan(Seqno(2), Seqno(4), ScanOptions::default())?;
    scan.run(&mut |doc| {
        println!("scan seqno {} key {}", doc.meta.seqno, doc.key);
        ScanControl::Continue
    })?;

    let r = vb.rollback(Seqno(3))?;
    println!(
        "rolled back to {} (discarded {} keys)",
        r.high_seqno,
        r.discarded.len()
    );

    let revision = vb.revision();
    drop((vb, store));
    let reopened = MemStore::open_image(image, 1024);
    let found = reopened.discover()?;
    println!("reopened: found {found:?}");
    let vb = reopened.open(Vbid(0), revision)?;
    let info = vb.info()?;
    println!(
        "after reopen: {} live items, high seqno {}, state {:?}",
        info.live_items,
        info.high_seqno,
        vb.vbstate()?.map(|s| s.state)
    );
    Ok(())
}
