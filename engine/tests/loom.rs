//! Loom models of the real vbucket map, guards, deferred deletion and cookie
//! table (with the real `MemStore` under them). Run with
//! `cargo xtask loom` (`RUSTFLAGS="--cfg loom"`, `LOOM_MAX_PREEMPTIONS=2`).
#![cfg(loom)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use engine::{
    Backend, CookieTable, Deleter, Engine, EngineConfig, EngineError, Notifier, Outcome, VBucket,
    VBucketMap, WaitKind, Waiting, WriteOptions,
};
use kvstore_core::{
    CollectionId, CommitBatch, DiskKey, Document, KvStore, MemStore, ScanControl, ScanOptions,
    ScanStatus, Seqno, StoreError, VbState, Vbid,
};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Counts notifications per cookie; with a backend, also records whether
/// vbucket 0's watched revision still existed when the cookie was told.
#[derive(Default)]
struct Counting(
    std::sync::Mutex<Vec<(u64, bool)>>,
    std::sync::Mutex<Option<(std::sync::Arc<dyn KvStore>, kvstore_core::Revision)>>,
    std::sync::Mutex<Vec<bool>>,
);

impl Notifier for Counting {
    fn notify(&self, cookie: u64, status: Result<(), EngineError>) {
        self.0.lock().unwrap().push((cookie, status.is_ok()));
        if let Some((kv, rev)) = &*self.1.lock().unwrap() {
            let exists = !matches!(
                kv.open(Vbid(0), *rev),
                Err(StoreError::NoSuchRevision { .. })
            );
            self.2.lock().unwrap().push(exists);
        }
    }
}

struct World {
    map: Arc<VBucketMap>,
    kv: std::sync::Arc<dyn KvStore>,
    deleter: Arc<Deleter>,
    cookies: Arc<CookieTable>,
    notified: std::sync::Arc<Counting>,
}

fn key(k: &str) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).unwrap()
}

fn world() -> World {
    let notified = std::sync::Arc::new(Counting::default());
    World {
        map: Arc::new(VBucketMap::new(2)),
        kv: std::sync::Arc::new(MemStore::new()),
        deleter: Deleter::new(),
        cookies: Arc::new(CookieTable::new(notified.clone())),
        notified,
    }
}

impl World {
    /// Creates vbucket 0 with one committed document and returns its revision.
    fn create(&self, value: &str) -> kvstore_core::Revision {
        let vb = VBucket::create(
            Vbid(0),
            VbState::Active,
            self.kv.clone(),
            self.deleter.clone(),
            self.cookies.clone(),
            1,
        )
        .unwrap();
        let high = vb.store().info().unwrap().high_seqno;
        vb.store()
            .commit(CommitBatch::new().item(Document::new(key("k"), high.next(), value.to_owned())))
            .unwrap();
        let rev = vb.store().revision();
        self.map.insert(vb).map_err(|(_, e)| e).unwrap();
        rev
    }

    /// The background deletion task, as a loom thread.
    fn spawn_deleter(&self) -> thread::JoinHandle<()> {
        let d = self.deleter.clone();
        thread::spawn(move || {
            d.run_pending();
        })
    }

    /// Runs what is still queued and returns the deletions done.
    fn finish(&self) -> Vec<engine::Destroyed> {
        self.deleter.run_pending();
        self.deleter.destroyed()
    }
}

/// 1. Guard vs delete: a live guard never sees its store destroyed; the
///    destruction runs exactly once, after the last guard drops.
#[test]
fn guard_vs_delete() {
    loom::model(|| {
        let w = world();
        let rev = w.create("v1");
        let map = w.map.clone();
        let user = thread::spawn(move || {
            if let Ok(g) = map.get(Vbid(0)) {
                let doc = g
                    .store()
                    .get(&key("k"))
                    .expect("the store of a live guard is usable");
                assert_eq!(&doc.expect("committed").value[..], b"v1");
                g.store()
                    .commit(CommitBatch::new().item(Document::new(key("k2"), Seqno(2), "v2")))
                    .expect("and writable");
            }
        });
        let map = w.map.clone();
        let del = thread::spawn(move || map.delete(Vbid(0), None).unwrap());
        let bg = w.spawn_deleter();
        user.join().unwrap();
        del.join().unwrap();
        bg.join().unwrap();
        let done = w.finish();
        assert_eq!(done.len(), 1, "destroyed exactly once: {done:?}");
        assert_eq!((done[0].vbid, done[0].revision), (Vbid(0), rev));
        assert!(done[0].error.is_none());
        assert!(matches!(
            w.kv.open(Vbid(0), rev),
            Err(StoreError::NoSuchRevision { .. })
        ));
    });
}

/// 2. Delete vs delete: exactly one succeeds, and the files go once. A delete
///    that asked to be told hears it once, after the files are gone.
#[test]
fn delete_vs_delete() {
    loom::model(|| {
        let w = world();
        w.create("v1");
        let ok = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = [None, Some(7u64)]
            .into_iter()
            .map(|cookie| {
                let map = w.map.clone();
                let cookies = w.cookies.clone();
                let ok = ok.clone();
                thread::spawn(
                    move || match map.delete(Vbid(0), cookie.map(|c| (c, &*cookies))) {
                        Ok(()) | Err(EngineError::WouldBlock) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(EngineError::NotMyVbucket(_)) => {}
                        Err(e) => panic!("{e}"),
                    },
                )
            })
            .collect();
        let bg = w.spawn_deleter();
        for h in handles {
            h.join().unwrap();
        }
        bg.join().unwrap();
        assert_eq!(ok.load(Ordering::SeqCst), 1, "exactly one delete wins");
        assert_eq!(w.finish().len(), 1);
        // If the cookie's delete won, it was told once, with success; if it
        // lost, its parked state was released and nobody was told.
        let told = w.notified.0.lock().unwrap().clone();
        match w.cookies.collect(7, WaitKind::VbDeletion) {
            Some(Ok(Outcome::Done)) => assert_eq!(told, [(7, true)]),
            None => assert!(told.is_empty(), "{told:?}"),
            other => panic!("{other:?}"),
        }
        assert!(w.cookies.is_empty());
    });
}

/// 3. Delete vs recreate with a live old guard: the old guard keeps working
///    on the old incarnation, the new incarnation sees none of it, and only
///    the old revision is destroyed.
#[test]
fn delete_vs_recreate_with_live_guard() {
    loom::model(|| {
        let w = world();
        let old_rev = w.create("old");
        let old = w.map.get(Vbid(0)).unwrap();
        let (map, kv, deleter, cookies) = (
            w.map.clone(),
            w.kv.clone(),
            w.deleter.clone(),
            w.cookies.clone(),
        );
        let recreate = thread::spawn(move || {
            map.delete(Vbid(0), None).unwrap();
            let vb = VBucket::create(Vbid(0), VbState::Active, kv, deleter, cookies, 2).unwrap();
            let new_rev = vb.store().revision();
            vb.store()
                .commit(CommitBatch::new().item(Document::new(key("new"), Seqno(1), "new")))
                .unwrap();
            map.insert(vb).map_err(|(_, e)| e).unwrap();
            new_rev
        });
        let user = thread::spawn(move || {
            old.store()
                .commit(CommitBatch::new().item(Document::new(key("late"), Seqno(2), "old")))
                .expect("the old incarnation stays writable while guarded");
            assert!(
                old.store().get(&key("new")).unwrap().is_none(),
                "no data of the new incarnation"
            );
            assert_eq!(
                &old.store().get(&key("k")).unwrap().unwrap().value[..],
                b"old"
            );
        });
        let bg = w.spawn_deleter();
        let new_rev = recreate.join().unwrap();
        user.join().unwrap();
        bg.join().unwrap();
        assert!(new_rev > old_rev);
        let done = w.finish();
        assert_eq!(done.len(), 1);
        assert_eq!(
            done[0].revision, old_rev,
            "only the old revision is destroyed"
        );
        let cur = w.map.get(Vbid(0)).unwrap();
        assert_eq!(cur.store().revision(), new_rev);
        assert!(cur.store().get(&key("late")).unwrap().is_none());
        assert!(cur.store().get(&key("k")).unwrap().is_none());
        assert!(cur.store().get(&key("new")).unwrap().is_some());
    });
}

/// 4. A scan holding a guard across a yield vs delete: the scan finishes on
///    its snapshot and the files go only after the guard drops.
#[test]
fn scan_across_yield_vs_delete() {
    loom::model(|| {
        let w = world();
        w.create("v1");
        {
            let g = w.map.get(Vbid(0)).unwrap();
            g.store()
                .commit(CommitBatch::new().item(Document::new(key("k2"), Seqno(2), "v2")))
                .unwrap();
        }
        let guard = w.map.get(Vbid(0)).unwrap();
        let scanner = thread::spawn(move || {
            let mut scan = guard
                .store()
                .seqno_scan(Seqno(0), Seqno(u64::MAX), ScanOptions::default())
                .unwrap();
            let mut seen = Vec::new();
            let st = scan
                .run(&mut |d| {
                    seen.push(d.meta.seqno.0);
                    ScanControl::Yield
                })
                .unwrap();
            assert_eq!(st, ScanStatus::Yielded);
            thread::yield_now();
            // The guard still holds the incarnation: its store is intact.
            assert!(
                guard.store().info().is_ok(),
                "store destroyed under a live guard"
            );
            let st = scan
                .run(&mut |d| {
                    seen.push(d.meta.seqno.0);
                    ScanControl::Continue
                })
                .unwrap();
            assert_eq!(st, ScanStatus::Done);
            assert_eq!(seen, [1, 2]);
        });
        let map = w.map.clone();
        let del = thread::spawn(move || map.delete(Vbid(0), None).unwrap());
        let bg = w.spawn_deleter();
        scanner.join().unwrap();
        del.join().unwrap();
        bg.join().unwrap();
        assert_eq!(w.finish().len(), 1);
    });
}

/// 5. The would-block protocol: completion (notify) vs collection vs the
///    cookie going away. The notifier is called at most once, only for a
///    pending call, and the state is freed exactly once.
#[test]
fn cookie_notify_vs_collect_vs_release() {
    loom::model(|| {
        let w = world();
        let ticket = w.cookies.park(9, Waiting::Manifest).unwrap();
        let frees = Arc::new(AtomicUsize::new(0));
        let c = w.cookies.clone();
        let notify = thread::spawn(move || c.complete(ticket, |_| Ok(Outcome::Done)));
        let (c, f) = (w.cookies.clone(), frees.clone());
        let collect = thread::spawn(move || match c.collect(9, WaitKind::Manifest) {
            Some(Ok(Outcome::Done)) => {
                f.fetch_add(1, Ordering::SeqCst);
            }
            Some(Err(EngineError::WouldBlock)) | None => {}
            other => panic!("{other:?}"),
        });
        let (c, f) = (w.cookies.clone(), frees.clone());
        let release = thread::spawn(move || {
            if c.release(9) {
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        let completed = notify.join().unwrap();
        collect.join().unwrap();
        release.join().unwrap();
        let told = w.notified.0.lock().unwrap().len();
        assert_eq!(
            told,
            usize::from(completed),
            "notified exactly when completed"
        );
        assert!(told <= 1);
        assert_eq!(
            frees.load(Ordering::SeqCst) + w.cookies.len(),
            1,
            "the state is freed exactly once (or still waits for collection)"
        );
    });
}

/// 6. The last guard drop races a delete (that asks to hear when the files
///    are gone) and the deleter: the files go exactly once, after the last
///    guard, and the cookie is told once, only after they are gone.
#[test]
fn last_guard_drop_vs_delete_vs_deleter() {
    loom::model(|| {
        let w = world();
        let rev = w.create("v1");
        *w.notified.1.lock().unwrap() = Some((w.kv.clone(), rev));
        let guard = w.map.get(Vbid(0)).unwrap();
        let user = thread::spawn(move || {
            assert!(guard.store().get(&key("k")).unwrap().is_some());
            drop(guard);
        });
        let (map, cookies) = (w.map.clone(), w.cookies.clone());
        let del = thread::spawn(move || map.delete(Vbid(0), Some((7, &*cookies))));
        let bg = w.spawn_deleter();
        user.join().unwrap();
        assert!(matches!(del.join().unwrap(), Err(EngineError::WouldBlock)));
        bg.join().unwrap();
        let done = w.finish();
        assert_eq!(done.len(), 1, "destroyed exactly once: {done:?}");
        assert_eq!(*w.notified.0.lock().unwrap(), [(7, true)], "told once");
        assert_eq!(
            *w.notified.2.lock().unwrap(),
            [false],
            "the cookie was told before the files were gone"
        );
        assert!(matches!(
            w.cookies.collect(7, WaitKind::VbDeletion),
            Some(Ok(Outcome::Done))
        ));
        assert!(w.cookies.is_empty());
    });
}

fn memory_engine(notified: std::sync::Arc<Counting>) -> Engine {
    let mut cfg = EngineConfig::new("/nonexistent/loom");
    cfg.backend = Backend::Memory;
    cfg.vbuckets = 1;
    cfg.flusher_threads = 0;
    Engine::open_with_notifier(cfg, notified).unwrap()
}

/// 7. A durable write parked on a vbucket races the vbucket's delete: the
///    write either never parks (`NotMyVbucket`) or is told `NotMyVbucket`
///    exactly once when the incarnation goes; nothing stays parked.
#[test]
fn parked_durable_write_vs_delete() {
    loom::model(|| {
        let notified = std::sync::Arc::new(Counting::default());
        let e = Arc::new(memory_engine(notified.clone()));
        e.create_vbucket(Vbid(0), VbState::Active).unwrap();
        let e1 = e.clone();
        let writer = thread::spawn(move || {
            e1.cookie(5)
                .set(Vbid(0), &key("k"), "v", WriteOptions::durable())
        });
        let e2 = e.clone();
        let deleter = thread::spawn(move || e2.delete_vbucket(Vbid(0)));
        let w = writer.join().unwrap();
        deleter.join().unwrap().unwrap();
        e.wait_for_deletions();
        let told = notified.0.lock().unwrap().clone();
        match w {
            Err(EngineError::WouldBlock) => {
                assert_eq!(told, [(5, false)], "told once, with the failure");
                assert!(matches!(
                    e.cookie(5)
                        .set(Vbid(0), &key("k"), "v", WriteOptions::durable()),
                    Err(EngineError::NotMyVbucket(Vbid(0)))
                ));
            }
            Err(EngineError::NotMyVbucket(_)) => assert!(told.is_empty(), "{told:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.stats().cookies, 0, "nothing stays parked");
        e.shutdown().unwrap();
    });
}

fn manifest_json(uid: u64, colls: &[(&str, u32)]) -> String {
    let mut cs = vec![r#"{"name":"_default","uid":"0"}"#.to_owned()];
    cs.extend(
        colls
            .iter()
            .map(|(n, id)| format!(r#"{{"name":"{n}","uid":"{id:x}"}}"#)),
    );
    format!(
        r#"{{"uid":"{uid:x}","scopes":[{{"name":"_default","uid":"0","collections":[{}]}}]}}"#,
        cs.join(",")
    )
}

/// 8. `Engine::set_collections` end to end over `MemStore`: a blocking
///    update races another cookie's update that disconnects while it is in
///    flight. Whatever the order, the machine ends idle, every persisted
///    manifest is applied (an orphaned one too), the vbucket matches the
///    bucket's manifest, and no state is left parked.
#[test]
fn set_collections_end_to_end() {
    loom::model(|| {
        let notified = std::sync::Arc::new(Counting::default());
        let e = Arc::new(memory_engine(notified.clone()));
        e.create_vbucket(Vbid(0), VbState::Active).unwrap();
        let m1 = manifest_json(1, &[("a", 8)]);
        let m2 = manifest_json(2, &[("a", 8), ("b", 9)]);
        let e1 = e.clone();
        let a = thread::spawn(move || e1.set_collections(m1.as_bytes()));
        let b = match e.cookie(9).set_collections(m2.as_bytes()) {
            Err(EngineError::WouldBlock) => {
                e.release_cookie(9);
                true
            }
            Ok(()) | Err(EngineError::Busy(_)) | Err(EngineError::CannotApplyManifest(_)) => false,
            Err(other) => panic!("{other}"),
        };
        let a = a.join().unwrap();
        assert!(
            matches!(
                a,
                Ok(()) | Err(EngineError::Busy(_)) | Err(EngineError::CannotApplyManifest(_))
            ),
            "{a:?}"
        );
        // An orphaned update is applied by its background task: wait for
        // the machine to go idle (a stale in-flight update never would).
        while e.stats().collections_update_in_flight {
            thread::yield_now();
        }
        let uid = e.manifest().uid;
        if a.is_ok() {
            assert!(uid >= 1);
        }
        if b {
            assert_eq!(uid, 2, "the orphaned update was applied");
        }
        assert!(
            e.vbucket_collections(Vbid(0))
                .unwrap()
                .matches(&e.manifest())
        );
        assert_eq!(e.stats().cookies, 0, "nothing stays parked");
        e.shutdown().unwrap();
    });
}
