//! Document operations, their statuses, CAS and expiry; the would-block
//! protocol; the memory quota. Every case runs on each backend.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::{key, open, open_with, retry};
use engine::{Backend, EngineError, WriteOptions};
use kvstore_core::{Cas, Datatype, DeleteSource, VbState, Vbid};

const V0: Vbid = Vbid(0);

fn opts() -> WriteOptions {
    WriteOptions::default()
}

fn statuses(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open_with(dir.path(), backend, |c| {
        c.flusher_threads = 1;
        c.max_value_size = 1024;
    });
    let e = &o.engine;
    let k = key("doc");
    // A vbucket that does not exist, or is not active.
    assert!(matches!(
        e.get(V0, &k),
        Err(EngineError::NotMyVbucket(Vbid(0)))
    ));
    assert!(matches!(
        e.set(V0, &k, "v", opts()),
        Err(EngineError::NotMyVbucket(_))
    ));
    assert!(matches!(
        e.get(Vbid(500), &k),
        Err(EngineError::NotMyVbucket(_))
    ));
    e.create_vbucket(V0, VbState::Replica).unwrap();
    assert!(matches!(
        e.create_vbucket(V0, VbState::Active),
        Err(EngineError::VbucketExists(_))
    ));
    assert!(matches!(
        e.set(V0, &k, "v", opts()),
        Err(EngineError::NotMyVbucket(_))
    ));
    assert!(matches!(e.get(V0, &k), Err(EngineError::NotMyVbucket(_))));
    e.set_vbucket_state(V0, VbState::Active).unwrap();

    assert!(matches!(e.get(V0, &k), Err(EngineError::KeyNotFound)));
    assert!(matches!(
        e.replace(V0, &k, "v", opts()),
        Err(EngineError::KeyNotFound)
    ));
    assert!(matches!(
        e.delete(V0, &k, WriteOptions::default()),
        Err(EngineError::KeyNotFound)
    ));
    let a = e
        .add(
            V0,
            &k,
            "first",
            WriteOptions {
                flags: 0xabcd,
                datatype: Datatype(Datatype::JSON),
                ..opts()
            },
        )
        .unwrap();
    assert!(matches!(
        e.add(V0, &k, "again", opts()),
        Err(EngineError::KeyExists)
    ));
    let item = e.get(V0, &k).unwrap();
    assert_eq!(&item.value[..], b"first");
    assert_eq!(item.meta.cas, a.cas);
    assert_eq!(item.meta.flags, 0xabcd);
    assert_eq!(item.meta.datatype, Datatype(Datatype::JSON));
    assert_eq!(item.meta.rev_seqno.0, 1);

    // CAS: a mismatch is KeyExists, a match succeeds with a new CAS.
    let wrong = WriteOptions {
        cas: Cas(a.cas.0 + 12345),
        ..opts()
    };
    assert!(matches!(
        e.set(V0, &k, "x", wrong),
        Err(EngineError::KeyExists)
    ));
    assert!(matches!(
        e.replace(V0, &k, "x", wrong),
        Err(EngineError::KeyExists)
    ));
    let r = e
        .replace(
            V0,
            &k,
            "second",
            WriteOptions {
                cas: a.cas,
                ..opts()
            },
        )
        .unwrap();
    assert!(r.cas > a.cas && r.seqno > a.seqno);
    assert_eq!(e.get(V0, &k).unwrap().meta.rev_seqno.0, 2);
    // CAS on a missing key.
    let missing = WriteOptions {
        cas: Cas(5),
        ..opts()
    };
    assert!(matches!(
        e.set(V0, &key("none"), "x", missing),
        Err(EngineError::KeyNotFound)
    ));

    // Delete: CAS-checked, then the key reads as missing; add works again.
    assert!(matches!(
        e.delete(V0, &k, WriteOptions::default().with_cas(Cas(1))),
        Err(EngineError::KeyExists)
    ));
    let d = e
        .delete(V0, &k, WriteOptions::default().with_cas(r.cas))
        .unwrap();
    assert!(d.seqno > r.seqno);
    assert!(matches!(e.get(V0, &k), Err(EngineError::KeyNotFound)));
    assert!(matches!(
        e.delete(V0, &k, WriteOptions::default()),
        Err(EngineError::KeyNotFound)
    ));
    e.add(V0, &k, "third", opts()).unwrap();
    assert_eq!(e.get(V0, &k).unwrap().meta.rev_seqno.0, 4);

    // Bad requests.
    let big = Bytes::from(vec![0u8; 1025]);
    assert!(matches!(
        e.set(V0, &k, big, opts()),
        Err(EngineError::TooBig {
            size: 1025,
            max: 1024
        })
    ));
    let bad_dt = WriteOptions {
        datatype: Datatype(0x80),
        ..opts()
    };
    assert!(matches!(
        e.set(V0, &k, "x", bad_dt),
        Err(EngineError::InvalidArguments(_))
    ));

    // Seqnos are per vbucket.
    e.create_vbucket(Vbid(1), VbState::Active).unwrap();
    let s1 = e.set(Vbid(1), &k, "other", opts()).unwrap();
    assert_eq!(s1.seqno.0, 1);
    let s0 = e.set(V0, &key("more"), "v", opts()).unwrap();
    assert!(s0.seqno.0 > 4);
    assert_ne!(s0.vbucket_uuid, s1.vbucket_uuid);

    // Everything reads back the same once flushed.
    e.flush().unwrap();
    assert_eq!(&e.get(V0, &k).unwrap().value[..], b"third");
    let st = e.vbucket_stats(V0).unwrap();
    assert_eq!(st.items, 2);
    assert_eq!(st.dirty_items, 0);
    assert_eq!(st.persisted_seqno, st.high_seqno);
    assert_eq!(st.disk.live_items, 2);
    e.set_vbucket_state(V0, VbState::Dead).unwrap();
    assert!(matches!(e.get(V0, &k), Err(EngineError::NotMyVbucket(_))));
}

fn expiry(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let (e, clock) = (&o.engine, &o.clock);
    e.create_vbucket(V0, VbState::Active).unwrap();
    let now = clock.secs.load(std::sync::atomic::Ordering::SeqCst);
    // Relative (up to 30 days) and absolute expiry.
    e.set(
        V0,
        &key("rel"),
        "r",
        WriteOptions {
            expiry: 10,
            ..opts()
        },
    )
    .unwrap();
    e.set(
        V0,
        &key("abs"),
        "a",
        WriteOptions {
            expiry: now + 3_000_000,
            ..opts()
        },
    )
    .unwrap();
    e.set(V0, &key("never"), "n", opts()).unwrap();
    assert_eq!(e.get(V0, &key("rel")).unwrap().meta.expiry, now + 10);
    e.flush().unwrap();
    clock.advance(9);
    assert!(e.get(V0, &key("rel")).is_ok());
    clock.advance(1);
    // At the expiry second the item is gone.
    assert!(matches!(
        e.get(V0, &key("rel")),
        Err(EngineError::KeyNotFound)
    ));
    assert!(matches!(
        e.replace(V0, &key("rel"), "x", opts()),
        Err(EngineError::KeyNotFound)
    ));
    // The read recorded a TTL deletion, which is what reaches disk.
    e.flush().unwrap();
    let vb = e.vbucket(V0).unwrap();
    let tomb = vb.store().get(&key("rel")).unwrap().expect("a tombstone");
    assert_eq!(tomb.meta.deleted, Some(DeleteSource::Ttl));
    // An explicit delete is recorded as such.
    e.delete(V0, &key("never"), WriteOptions::default())
        .unwrap();
    e.flush().unwrap();
    let t = vb.store().get(&key("never")).unwrap().unwrap();
    assert_eq!(t.meta.deleted, Some(DeleteSource::Explicit));
    // Add over an expired key succeeds.
    clock.advance(3_000_000);
    assert!(matches!(
        e.get(V0, &key("abs")),
        Err(EngineError::KeyNotFound)
    ));
    e.add(V0, &key("abs"), "again", opts()).unwrap();
    assert_eq!(&e.get(V0, &key("abs")).unwrap().value[..], b"again");
    assert_eq!(e.vbucket_stats(V0).unwrap().items, 1);
}

fn durable_write_completes_through_cookie(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let durable = WriteOptions {
        durable: true,
        ..opts()
    };
    assert!(matches!(
        e.cookie(42).set(V0, &key("d"), "v", durable),
        Err(EngineError::WouldBlock)
    ));
    // Re-issued before it is persisted: still blocked, nothing re-applied.
    assert!(matches!(
        e.cookie(42).set(V0, &key("d"), "v", durable),
        Err(EngineError::WouldBlock)
    ));
    assert_eq!(e.vbucket_stats(V0).unwrap().high_seqno.0, 1);
    assert!(o.notes.all().is_empty());
    e.flush().unwrap();
    assert_eq!(o.notes.wait(42), Ok(()));
    let r = e.cookie(42).set(V0, &key("d"), "v", durable).unwrap();
    assert_eq!(r.seqno.0, 1);
    assert!(e.vbucket(V0).unwrap().persisted_seqno() >= r.seqno);
    assert_eq!(e.stats().cookies, 0, "collected state is freed");
    assert_eq!(o.notes.count(42), 1);
    // A durable delete takes the same path.
    assert!(matches!(
        e.cookie(43).delete(V0, &key("d"), WriteOptions::durable()),
        Err(EngineError::WouldBlock)
    ));
    e.flush().unwrap();
    assert_eq!(o.notes.wait(43), Ok(()));
    let d = e
        .cookie(43)
        .delete(V0, &key("d"), WriteOptions::durable())
        .unwrap();
    assert_eq!(d.seqno.0, 2);
}

fn cookie_dropped_before_collecting(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let durable = WriteOptions {
        durable: true,
        ..opts()
    };
    assert!(matches!(
        e.cookie(7).set(V0, &key("a"), "v", durable),
        Err(EngineError::WouldBlock)
    ));
    assert!(matches!(
        e.cookie(8).set(V0, &key("b"), "v", durable),
        Err(EngineError::WouldBlock)
    ));
    assert_eq!(e.stats().cookies, 2);
    // 7 disconnects before the flush; 8 after it, before collecting.
    e.release_cookie(7);
    e.flush().unwrap();
    assert_eq!(o.notes.wait(8), Ok(()));
    e.release_cookie(8);
    assert_eq!(e.stats().cookies, 0, "both states freed");
    assert_eq!(o.notes.count(7), 0, "a departed cookie is not notified");
    // The writes themselves are durable regardless.
    assert!(e.get(V0, &key("a")).is_ok() && e.get(V0, &key("b")).is_ok());
}

fn memory_quota(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open_with(dir.path(), backend, |c| {
        c.flusher_threads = 0;
        c.memory_quota = 64 * 1024;
    });
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let value = vec![b'x'; 500];
    let mut accepted = 0;
    let refused = loop {
        match e.set(V0, &key(&format!("k{accepted}")), value.clone(), opts()) {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 10_000, "the quota never refused a write");
    };
    assert!(
        matches!(refused, EngineError::TemporaryFailure(_)),
        "{refused}"
    );
    let st = e.stats();
    assert!(
        st.memory_used <= st.memory_quota,
        "{} > {}",
        st.memory_used,
        st.memory_quota
    );
    assert!(accepted > 50);
    let seqno_before = e.vbucket_stats(V0).unwrap().high_seqno;
    // A refused write takes no seqno.
    assert!(e.set(V0, &key("again"), value.clone(), opts()).is_err());
    assert_eq!(e.vbucket_stats(V0).unwrap().high_seqno, seqno_before);
    // Once the flusher drains the queue, writes succeed again, and nothing
    // acknowledged was dropped.
    e.flush().unwrap();
    assert_eq!(e.stats().memory_used, 0);
    e.set(V0, &key("again"), value.clone(), opts()).unwrap();
    for i in 0..accepted {
        assert!(e.get(V0, &key(&format!("k{i}"))).is_ok());
    }
}

/// Pushing writes past the quota with the background flusher running: every
/// write eventually succeeds and memory stays bounded.
fn memory_quota_with_background_flusher(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open_with(dir.path(), backend, |c| {
        c.flusher_threads = 1;
        c.memory_quota = 64 * 1024;
    });
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let value = vec![b'y'; 500];
    let mut refusals = 0;
    for i in 0..2000 {
        let r = retry(|| {
            let r = e.set(V0, &key(&format!("k{i}")), value.clone(), opts());
            if r.is_err() {
                refusals += 1;
            }
            r
        });
        r.unwrap();
        assert!(e.stats().memory_used <= 64 * 1024);
    }
    e.wait_for_flusher();
    e.flush().unwrap();
    assert_eq!(e.vbucket_stats(V0).unwrap().items, 2000);
    eprintln!("{refusals} writes were refused with TemporaryFailure and retried");
}

fn delete_vbucket_with_cookie(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 1);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    e.set(V0, &key("a"), "v", opts()).unwrap();
    assert!(matches!(
        e.cookie(99).delete_vbucket(V0),
        Err(EngineError::WouldBlock)
    ));
    assert!(matches!(
        e.get(V0, &key("a")),
        Err(EngineError::NotMyVbucket(_))
    ));
    assert_eq!(o.notes.wait(99), Ok(()));
    e.cookie(99).delete_vbucket(V0).unwrap();
    assert!(matches!(
        e.delete_vbucket(V0),
        Err(EngineError::NotMyVbucket(_))
    ));
    assert_eq!(e.deleter().destroyed_total(), 1);
    e.create_vbucket(V0, VbState::Active).unwrap();
    assert!(matches!(
        e.get(V0, &key("a")),
        Err(EngineError::KeyNotFound)
    ));
}

macro_rules! on_backend {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn statuses_and_cas() {
                super::statuses($backend);
            }
            #[test]
            fn expiry() {
                super::expiry($backend);
            }
            #[test]
            fn durable_write_completes_through_cookie() {
                super::durable_write_completes_through_cookie($backend);
            }
            #[test]
            fn cookie_dropped_before_collecting() {
                super::cookie_dropped_before_collecting($backend);
            }
            #[test]
            fn memory_quota() {
                super::memory_quota($backend);
            }
            #[test]
            fn memory_quota_with_background_flusher() {
                super::memory_quota_with_background_flusher($backend);
            }
            #[test]
            fn delete_vbucket_with_cookie() {
                super::delete_vbucket_with_cookie($backend);
            }
        }
    };
}

on_backend!(memory, Backend::Memory);
on_backend!(couchfile, Backend::Couchfile(Default::default()));
#[cfg(feature = "rocks")]
on_backend!(rocksdb, Backend::Rocks(Default::default()));

/// A flush that fails reports its status to the waiting cookie, keeps the
/// item dirty, and shows the error in the vbucket's stats.
#[test]
fn failed_flush_reports_status_to_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let faults = kvstore_couchfile::FaultInjector::new();
    let backend = Backend::Couchfile(kvstore_couchfile::CouchConfig {
        faults: Some(faults.clone()),
        // Maintenance inside commits, so that the armed fault is taken by
        // the flush under test and not by a background log chore.
        background: false,
        ..Default::default()
    });
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let durable = WriteOptions {
        durable: true,
        ..opts()
    };
    assert!(matches!(
        e.cookie(5).set(V0, &key("a"), "v", durable),
        Err(EngineError::WouldBlock)
    ));
    faults.fail_sync_in(0);
    assert!(matches!(e.flush(), Err(EngineError::TemporaryFailure(_))));
    let status = o.notes.wait(5);
    assert!(
        status
            .as_ref()
            .is_err_and(|s| s.contains("injected sync failure")),
        "{status:?}"
    );
    // The re-issued call collects the error; it does not run again.
    match e.cookie(5).set(V0, &key("a"), "v", durable) {
        Err(EngineError::TemporaryFailure(msg)) => assert!(msg.contains("flush of vb:0 failed")),
        other => panic!("{other:?}"),
    }
    assert_eq!(e.stats().cookies, 0);
    let st = e.vbucket_stats(V0).unwrap();
    assert_eq!(st.high_seqno.0, 1, "the call was not re-run");
    assert_eq!(st.dirty_items, 1, "nothing is dropped");
    assert_eq!(st.flush_failures, 1);
    assert!(st.flush_error.is_some());
    assert!(matches!(
        st.health,
        engine::VbHealth::Failing {
            consecutive_failures: 1,
            ..
        }
    ));
    // The next flush persists the item from the last durable commit, with
    // no restart: the store recovered its handle by itself, or the engine
    // reopened the revision because the handle stayed poisoned.
    e.flush().unwrap();
    let st = e.vbucket_stats(V0).unwrap();
    assert_eq!(st.dirty_items, 0);
    assert_eq!(st.persisted_seqno.0, 1);
    assert!(st.store_reopens <= 1, "{}", st.store_reopens);
    assert_eq!(st.flush_retries, 1);
    assert_eq!(st.health, engine::VbHealth::Healthy);
    assert_eq!(&e.get(V0, &key("a")).unwrap().value[..], b"v");
}
