//! Issue 13: one regression test per numbered point (first written against
//! the old API, to see each one fail on the old code).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{key, open};
use engine::{Backend, EngineError, WriteOptions};
use kvstore_core::{CollectionId, DiskKey, VbState, Vbid};
use kvstore_couchfile::{CouchConfig, FaultInjector};
use std::sync::Arc;
use std::time::Duration;

const V0: Vbid = Vbid(0);
const V1: Vbid = Vbid(1);

fn durable() -> WriteOptions {
    WriteOptions {
        durable: true,
        ..WriteOptions::default()
    }
}

fn faulty() -> (Arc<FaultInjector>, Backend) {
    let faults = FaultInjector::new();
    let backend = Backend::Couchfile(CouchConfig {
        faults: Some(faults.clone()),
        // Checkpoints and reclamation inside commits, so that the armed
        // fault is taken by the commit under test and not by a background
        // chore.
        background: false,
        ..CouchConfig::default()
    });
    (faults, backend)
}

/// Point 1: one failed write must not take the vbucket offline.
#[test]
fn failed_write_does_not_take_the_vbucket_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, backend) = faulty();
    let o = open(dir.path(), backend.clone(), 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.set(V0, &key("a"), "1", WriteOptions::default()).unwrap();
    e.flush().unwrap();
    faults.fail_write_in(0);
    e.set(V0, &key("b"), "2", WriteOptions::default()).unwrap();
    let err = e.flush().unwrap_err().to_string();
    assert!(
        !err.contains("sync"),
        "a write error is not a sync error: {err}"
    );
    faults.clear();
    // Reads and writes carry on.
    assert_eq!(&e.get(V0, &key("a")).unwrap().value[..], b"1");
    assert_eq!(&e.get(V0, &key("b")).unwrap().value[..], b"2");
    e.set(V0, &key("c"), "3", WriteOptions::default()).unwrap();
    e.flush().unwrap();
    drop(o);
    let o = open(dir.path(), backend, 0);
    for (k, v) in [("a", "1"), ("b", "2"), ("c", "3")] {
        assert_eq!(&o.engine.get(V0, &key(k)).unwrap().value[..], v.as_bytes());
    }
}

/// Point 2: a failing vbucket's back-off must not occupy a flusher worker.
#[test]
fn a_failing_vbucket_does_not_hold_a_flusher_worker() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, backend) = faulty();
    let o = open(dir.path(), backend, 1);
    let e = Arc::new(o.engine);
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.create_vbucket(V1, VbState::Active).unwrap();
    faults.fail_sync_in(0);
    assert!(matches!(
        e.cookie(10).set(V0, &key("a"), "v", durable()),
        Err(EngineError::WouldBlock)
    ));
    assert!(o.notes.wait(10).is_err(), "vb0's flush failed");
    for i in 0..3u64 {
        let c = 20 + i;
        let k = key(&format!("k{i}"));
        assert!(matches!(
            e.cookie(c).set(V1, &k, "v", durable()),
            Err(EngineError::WouldBlock)
        ));
        assert_eq!(o.notes.wait(c), Ok(()));
        e.cookie(c).set(V1, &k, "v", durable()).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = e.clone();
    std::thread::spawn(move || {
        e2.wait_for_flusher();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the flusher never went idle: vb0's back-off keeps a worker busy"
    );
    assert_eq!(e.vbucket_stats(V1).unwrap().flush_failures, 0);
}

/// Point 3: a released cookie's durable wait must not complete the next
/// call made under the same cookie id.
#[test]
fn released_cookie_cannot_collect_another_calls_result() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), Backend::Memory, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.create_vbucket(V1, VbState::Active).unwrap();
    assert!(matches!(
        e.cookie(7).set(V0, &key("a"), "v0", durable()),
        Err(EngineError::WouldBlock)
    ));
    e.release_cookie(7);
    assert!(matches!(
        e.cookie(7).set(V1, &key("b"), "v1", durable()),
        Err(EngineError::WouldBlock)
    ));
    e.delete_vbucket(V0).unwrap();
    e.wait_for_deletions();
    e.flush().unwrap();
    let r = e.cookie(7).set(V1, &key("b"), "v1", durable());
    let r = r.expect("the vb1 call collects its own result");
    assert_eq!(r.seqno.0, 1);
    assert_eq!(&e.get(V1, &key("b")).unwrap().value[..], b"v1");
}

/// Point 4: a create that fails after the store exists (as a crash there
/// would) must leave no Dead vbucket behind.
#[test]
fn failed_create_leaves_a_vbucket_that_can_be_created() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, backend) = faulty();
    {
        let o = open(dir.path(), backend.clone(), 0);
        // Write 0 is the new file's header, write 1 the state commit.
        faults.fail_write_in(1);
        assert!(o.engine.create_vbucket(V0, VbState::Active).is_err());
        faults.clear();
    }
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    assert!(matches!(e.vbucket(V0), Err(EngineError::NotMyVbucket(_))));
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.set(V0, &key("a"), "v", WriteOptions::default()).unwrap();
}

/// Point 4: a store with no committed state (a crash between creating the
/// file and committing the state) is not a vbucket.
#[test]
fn a_store_without_state_is_not_a_vbucket() {
    use kvstore_core::KvStore;
    let dir = tempfile::tempdir().unwrap();
    {
        let kv = kvstore_couchfile::CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
        kv.create(V0).unwrap();
    }
    let o = open(dir.path(), Backend::Couchfile(CouchConfig::default()), 0);
    let e = &o.engine;
    assert!(matches!(e.vbucket(V0), Err(EngineError::NotMyVbucket(_))));
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.set(V0, &key("a"), "v", WriteOptions::default()).unwrap();
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

fn set_manifest(o: &common::Opened, cookie: u64, json: &str) -> Result<(), EngineError> {
    match o.engine.cookie(cookie).set_collections(json.as_bytes()) {
        Err(EngineError::WouldBlock) => {}
        other => return other,
    }
    let _ = o.notes.wait(cookie);
    o.engine.cookie(cookie).set_collections(json.as_bytes())
}

/// Point 5: the memory backend keeps nothing on disk, and needs no
/// directory.
#[test]
fn memory_backend_keeps_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("never-created");
    let o = open(&missing, Backend::Memory, 0);
    o.engine.create_vbucket(V0, VbState::Active).unwrap();
    set_manifest(&o, 100, &manifest_json(1, &[("fruit", 8)])).unwrap();
    assert_eq!(o.engine.manifest().uid, 1);
    assert!(!missing.exists(), "nothing was written");
    drop(o);

    let o = open(dir.path(), Backend::Memory, 0);
    o.engine.create_vbucket(V0, VbState::Active).unwrap();
    set_manifest(&o, 101, &manifest_json(1, &[("fruit", 8)])).unwrap();
    o.engine.shutdown().unwrap();
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file in the data directory"
    );
    let o = open(dir.path(), Backend::Memory, 0);
    assert_eq!(o.engine.manifest().uid, 0, "nothing survives a restart");
}

/// Point 6: a vbucket delete whose durable mark fails reports the error,
/// and the vbucket stays.
#[test]
fn vbucket_delete_whose_mark_fails_returns_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (faults, backend) = faulty();
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.set(V0, &key("a"), "v", WriteOptions::default()).unwrap();
    e.flush().unwrap();
    faults.fail_sync_in(0);
    let r = e.delete_vbucket(V0);
    assert!(matches!(r, Err(EngineError::Storage(_))), "{r:?}");
    faults.clear();
    assert_eq!(&e.get(V0, &key("a")).unwrap().value[..], b"v");
    e.delete_vbucket(V0).unwrap();
    assert!(matches!(e.vbucket(V0), Err(EngineError::NotMyVbucket(_))));
}

/// Point 7: applying a manifest carries on past a vbucket that refuses it.
#[test]
fn apply_manifest_carries_on_past_a_failing_vbucket() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let couch = || Backend::Couchfile(CouchConfig::default());
    {
        // A vbucket 0 that is at manifest uid 2 with other content.
        let o = open(other.path(), couch(), 1);
        o.engine.create_vbucket(V0, VbState::Active).unwrap();
        set_manifest(&o, 200, &manifest_json(2, &[("veg", 9)])).unwrap();
        o.engine.shutdown().unwrap();
    }
    {
        let o = open(dir.path(), couch(), 1);
        for v in 0..3 {
            o.engine.create_vbucket(Vbid(v), VbState::Active).unwrap();
        }
        set_manifest(&o, 201, &manifest_json(1, &[("fruit", 8)])).unwrap();
        o.engine.shutdown().unwrap();
    }
    // Swap in the other vbucket 0 (the same revision, so its headers match).
    let vb0 = dir.path().join("0.couch.1");
    std::fs::remove_dir_all(&vb0).unwrap();
    std::fs::create_dir(&vb0).unwrap();
    common::copy_tree(&other.path().join("0.couch.1"), &vb0);
    let o = open(dir.path(), couch(), 1);
    let e = &o.engine;
    assert_eq!(e.manifest().uid, 1);
    let r = set_manifest(&o, 202, &manifest_json(2, &[("fruit", 8), ("nut", 10)]));
    match r {
        Err(EngineError::CannotApplyManifest(msg)) => assert!(msg.contains("vb:0"), "{msg}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.manifest().uid,
        2,
        "the persisted manifest is the current one"
    );
    let nut = DiskKey::new(CollectionId(10), b"k").unwrap();
    for v in [Vbid(1), Vbid(2)] {
        assert!(
            e.vbucket_collections(v)
                .unwrap()
                .collection(CollectionId(10))
                .is_some(),
            "{v} was updated"
        );
        e.set(v, &nut, "v", WriteOptions::default()).unwrap();
    }
}

/// Point 2, with a fault that lasts: while vb0 waits out a long back-off,
/// the one flusher worker keeps persisting vb1, vb0 is not retried before
/// its time, and vb1 never shares vb0's back-off. Once the fault clears,
/// vb0 persists everything it kept.
#[test]
fn a_vbucket_in_back_off_does_not_delay_others() {
    let dir = tempfile::tempdir().unwrap();
    let couch = kvstore_couchfile::CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let faulty = common::FaultyKv::new(Arc::new(couch));
    let o = common::open_with(dir.path(), Backend::Custom(faulty.clone()), |c| {
        c.flusher_threads = 1;
        // Far longer than the test: vb0 must not be retried meanwhile.
        c.flush_retry_min = Duration::from_secs(3600);
        c.flush_retry_max = Duration::from_secs(3600);
    });
    let e = Arc::new(o.engine);
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.create_vbucket(V1, VbState::Active).unwrap();
    faulty.set_failing(V0, true);
    let r = e.set_durable(V0, &key("a"), "v", WriteOptions::default());
    assert!(matches!(r, Err(EngineError::TemporaryFailure(_))), "{r:?}");
    for i in 0..20 {
        let pending = e.set_async(V1, &key(&format!("k{i}")), "v", durable());
        match pending.wait_timeout(Duration::from_secs(30)) {
            Ok(r) => {
                r.unwrap();
            }
            Err(_) => panic!("vb1's durable write {i} waits behind vb0's back-off"),
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let e2 = e.clone();
    std::thread::spawn(move || {
        e2.wait_for_flusher();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(30)).is_ok(),
        "the flusher never went idle while vb0 backs off"
    );
    let s0 = e.vbucket_stats(V0).unwrap();
    assert_eq!(
        s0.flush_failures, 1,
        "vb0 was retried before its back-off ended"
    );
    assert!(
        matches!(&s0.health, engine::VbHealth::Failing { consecutive_failures: 1, retry_in, .. } if *retry_in > Duration::from_secs(60)),
        "{:?}",
        s0.health
    );
    assert_eq!(e.stats().backing_off, 1);
    assert_eq!(e.stats().failing_vbuckets, 1);
    let s1 = e.vbucket_stats(V1).unwrap();
    assert_eq!((s1.flush_failures, s1.flush_retries), (0, 0));
    assert_eq!(s1.health, engine::VbHealth::Healthy);
    assert_eq!(s1.persisted_seqno.0, 20);
    // vb0 keeps its write; once the disk has room, it goes out.
    assert_eq!(&e.get(V0, &key("a")).unwrap().value[..], b"v");
    faulty.set_failing(V0, false);
    e.flush().unwrap();
    let s0 = e.vbucket_stats(V0).unwrap();
    assert_eq!(s0.persisted_seqno, s0.high_seqno);
    assert_eq!(s0.health, engine::VbHealth::Healthy);
}

/// Point 3, the other half: a released cookie's persistence wait cannot
/// complete a manifest update parked later under the same id.
#[test]
fn released_cookie_cannot_complete_a_later_manifest_update() {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), Backend::Memory, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    assert!(matches!(
        e.cookie(7).set(V0, &key("a"), "v0", durable()),
        Err(EngineError::WouldBlock)
    ));
    e.release_cookie(7);
    let m = manifest_json(1, &[("fruit", 8)]);
    assert!(matches!(
        e.cookie(7).set_collections(m.as_bytes()),
        Err(EngineError::WouldBlock)
    ));
    // The flush persists vb0's write; its old waiter must not touch cookie 7.
    e.flush().unwrap();
    let _ = o.notes.wait(7);
    e.cookie(7).set_collections(m.as_bytes()).unwrap();
    assert_eq!(e.manifest().uid, 1, "the manifest was applied, not skipped");
    assert!(
        e.vbucket_collections(V0)
            .unwrap()
            .collection(CollectionId(8))
            .is_some()
    );
}

/// Point 3, the manifest machine: a cookie leaves while its manifest is
/// persisted and its id is reused for another update at once. That call
/// must not be told "still in flight" with nothing parked for it (it would
/// never hear back): it is `Busy`, or, once the orphaned update is done,
/// it starts (and is then told).
#[test]
fn a_reused_cookie_id_is_not_told_a_departed_update_is_its_own() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let o = open(dir.path(), Backend::Couchfile(CouchConfig::default()), 0);
        let e = &o.engine;
        e.create_vbucket(V0, VbState::Active).unwrap();
        let m1 = manifest_json(1, &[("fruit", 8)]);
        let m2 = manifest_json(2, &[("fruit", 8), ("veg", 9)]);
        assert!(matches!(
            e.cookie(7).set_collections(m1.as_bytes()),
            Err(EngineError::WouldBlock)
        ));
        e.release_cookie(7);
        match e.cookie(7).set_collections(m2.as_bytes()) {
            Err(EngineError::Busy(_)) => {}
            Err(EngineError::WouldBlock) => {
                assert_eq!(
                    e.stats().cookies,
                    1,
                    "round {round}: WouldBlock, nothing parked"
                );
                let _ = o.notes.wait(7);
                e.cookie(7).set_collections(m2.as_bytes()).unwrap();
            }
            other => panic!("round {round}: {other:?}"),
        }
        while e.stats().collections_update_in_flight {
            std::thread::yield_now();
        }
        assert!(e.manifest().uid >= 1, "the orphaned manifest was applied");
        assert_eq!(e.stats().cookies, 0);
    }
}

/// Found by the soak (issue 12): a vbucket created while a manifest update
/// was being applied (after the update listed the vbuckets, before it made
/// its manifest the bucket's) took the old manifest and kept it until the
/// next update, so the vbucket had a collection open that the bucket had
/// dropped, or the other way round. Each round starts a create and an
/// update together; afterwards the vbucket must be at the bucket's
/// manifest.
#[test]
fn a_vbucket_created_during_a_manifest_update_takes_the_new_manifest() {
    const ROUNDS: u16 = 300;
    let dir = tempfile::tempdir().unwrap();
    let o = common::open_with(dir.path(), Backend::Memory, |c| {
        c.vbuckets = usize::from(ROUNDS) + 1;
    });
    let e = &o.engine;
    let json = |uid: u16| {
        let extra = if uid % 2 == 1 {
            r#",{"name":"fruit","uid":"8"}"#
        } else {
            ""
        };
        format!(
            r#"{{"uid":"{uid:x}","scopes":[{{"name":"_default","uid":"0","collections":[{{"name":"_default","uid":"0"}}{extra}]}}]}}"#
        )
    };
    let barrier = std::sync::Barrier::new(2);
    for round in 1..=ROUNDS {
        let vb = Vbid(round);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                e.create_vbucket(vb, VbState::Active).unwrap();
            });
            barrier.wait();
            e.set_collections(json(round).as_bytes()).unwrap();
        });
        let m = e.manifest();
        let vc = e.vbucket_collections(vb).unwrap();
        assert_eq!(
            (vc.uid, vc.collection(CollectionId(8)).is_some()),
            (m.uid, m.collections.contains_key(&CollectionId(8))),
            "round {round}: {vb} is at another manifest than the bucket"
        );
    }
}
