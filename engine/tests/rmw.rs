//! The read-modify-write operations the memcached protocol needs:
//! increment/decrement, append/prepend, touch and get-and-touch, with their
//! statuses, CAS checks, expiry, durability through a cookie, and warmup.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{key, open};
use engine::{ArithOp, ArithOptions, Backend, Concat, EngineError, WriteOptions};
use kvstore_core::{Cas, Datatype, VbState, Vbid};

const V0: Vbid = Vbid(0);

fn arith(delta: u64, initial: Option<u64>) -> ArithOptions {
    ArithOptions {
        delta,
        initial,
        ..ArithOptions::default()
    }
}

fn arithmetic(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let persistent = matches!(backend, Backend::Couchfile(_));
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let k = key("n");
    // Missing without an initial value; with one it is created.
    assert!(matches!(
        e.arithmetic(V0, &k, ArithOp::Increment, arith(1, None)),
        Err(EngineError::KeyNotFound)
    ));
    let c = e
        .arithmetic(V0, &k, ArithOp::Increment, arith(1, Some(10)))
        .unwrap();
    assert_eq!(c.value, 10, "a created counter starts at the initial value");
    let c = e
        .arithmetic(V0, &k, ArithOp::Increment, arith(5, Some(0)))
        .unwrap();
    assert_eq!(c.value, 15);
    let item = e.get(V0, &k).unwrap();
    assert_eq!(&item.value[..], b"15");
    assert_eq!(item.meta.cas, c.mutation.cas);
    // Decrement stops at zero; increment wraps at 2^64.
    assert_eq!(
        e.arithmetic(V0, &k, ArithOp::Decrement, arith(100, None))
            .unwrap()
            .value,
        0
    );
    e.set(V0, &k, u64::MAX.to_string(), WriteOptions::default())
        .unwrap();
    assert_eq!(
        e.arithmetic(V0, &k, ArithOp::Increment, arith(2, None))
            .unwrap()
            .value,
        1
    );
    // A value that is not a number.
    e.set(V0, &k, "abc", WriteOptions::default()).unwrap();
    assert!(matches!(
        e.arithmetic(V0, &k, ArithOp::Increment, arith(1, None)),
        Err(EngineError::DeltaBadValue)
    ));
    assert_eq!(EngineError::DeltaBadValue.status_code(), 0x06);
    // Trailing spaces are allowed (memcached pads shortened counters).
    e.set(V0, &k, "9  ", WriteOptions::default()).unwrap();
    assert_eq!(
        e.arithmetic(V0, &k, ArithOp::Increment, arith(1, None))
            .unwrap()
            .value,
        10
    );
    // CAS checks; flags and expiry of the existing document stay.
    let m = e
        .set(
            V0,
            &k,
            "7",
            WriteOptions {
                flags: 42,
                expiry: 100,
                ..WriteOptions::default()
            },
        )
        .unwrap();
    let wrong = ArithOptions {
        cas: Cas(m.cas.0 + 1),
        ..arith(1, None)
    };
    assert!(matches!(
        e.arithmetic(V0, &k, ArithOp::Increment, wrong),
        Err(EngineError::KeyExists)
    ));
    let right = ArithOptions {
        cas: m.cas,
        ..arith(1, None)
    };
    let c = e.arithmetic(V0, &k, ArithOp::Increment, right).unwrap();
    assert_eq!(c.value, 8);
    assert!(c.mutation.cas > m.cas);
    assert!(c.mutation.seqno > m.seqno);
    let item = e.get(V0, &k).unwrap();
    assert_eq!(item.meta.flags, 42);
    assert_eq!(item.meta.expiry, 1_000_000 + 100);
    // The counter survives a restart.
    if persistent {
        o.engine.shutdown().unwrap();
        drop(o);
        let o = open(dir.path(), Backend::Couchfile(Default::default()), 0);
        assert_eq!(&o.engine.get(V0, &k).unwrap().value[..], b"8");
    }
}

fn append_prepend(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let k = key("s");
    assert!(matches!(
        e.append(V0, &k, "x", WriteOptions::default()),
        Err(EngineError::NotStored)
    ));
    assert_eq!(EngineError::NotStored.status_code(), 0x05);
    let m = e
        .set(
            V0,
            &k,
            "mid",
            WriteOptions {
                flags: 7,
                datatype: Datatype(Datatype::JSON),
                ..WriteOptions::default()
            },
        )
        .unwrap();
    e.append(V0, &k, "-end", WriteOptions::default()).unwrap();
    let m2 = e
        .prepend(V0, &k, "start-", WriteOptions::default())
        .unwrap();
    assert!(m2.cas > m.cas);
    let item = e.get(V0, &k).unwrap();
    assert_eq!(&item.value[..], b"start-mid-end");
    assert_eq!(item.meta.flags, 7, "flags are kept");
    assert!(
        !item.meta.datatype.has(Datatype::JSON),
        "the result is not known to be JSON"
    );
    // CAS mismatch, then a match.
    assert!(matches!(
        e.append(
            V0,
            &k,
            "!",
            WriteOptions::default().with_cas(Cas(m2.cas.0 + 9))
        ),
        Err(EngineError::KeyExists)
    ));
    e.append(V0, &k, "!", WriteOptions::default().with_cas(m2.cas))
        .unwrap();
    assert_eq!(&e.get(V0, &k).unwrap().value[..], b"start-mid-end!");
    // Over the value size limit.
    let big = vec![b'x'; 20 << 20];
    assert!(matches!(
        e.append(V0, &k, big, WriteOptions::default()),
        Err(EngineError::TooBig { .. })
    ));
}

fn durable_append_through_cookie(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let e = &o.engine;
    e.create_vbucket(V0, VbState::Active).unwrap();
    let k = key("d");
    e.set(V0, &k, "a", WriteOptions::default()).unwrap();
    e.flush().unwrap();
    let durable = WriteOptions::durable();
    assert!(matches!(
        e.cookie(9).concat(V0, &k, Concat::Append, "b", durable),
        Err(EngineError::WouldBlock)
    ));
    e.flush().unwrap();
    assert_eq!(o.notes.wait(9), Ok(()));
    let m = e
        .cookie(9)
        .concat(V0, &k, Concat::Append, "b", durable)
        .unwrap();
    assert!(e.vbucket(V0).unwrap().persisted_seqno() >= m.seqno);
    assert_eq!(&e.get(V0, &k).unwrap().value[..], b"ab", "applied once");
    assert_eq!(e.stats().cookies, 0);
}

fn touch_and_gat(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let o = open(dir.path(), backend, 0);
    let (e, clock) = (&o.engine, &o.clock);
    e.create_vbucket(V0, VbState::Active).unwrap();
    let k = key("t");
    assert!(matches!(e.touch(V0, &k, 10), Err(EngineError::KeyNotFound)));
    assert!(matches!(
        e.get_and_touch(V0, &k, 10),
        Err(EngineError::KeyNotFound)
    ));
    let m = e
        .set(
            V0,
            &k,
            "v",
            WriteOptions {
                flags: 3,
                ..WriteOptions::default()
            },
        )
        .unwrap();
    let t = e.touch(V0, &k, 10).unwrap();
    assert!(t.cas > m.cas, "a touch is a mutation");
    let item = e.get(V0, &k).unwrap();
    assert_eq!(item.meta.expiry, 1_000_010);
    assert_eq!(item.meta.cas, t.cas);
    let g = e.get_and_touch(V0, &k, 20).unwrap();
    assert_eq!(&g.value[..], b"v");
    assert_eq!(g.meta.flags, 3);
    assert_eq!(g.meta.expiry, 1_000_020);
    assert_eq!(e.get(V0, &k).unwrap().meta.cas, g.meta.cas);
    // Touch to 0 removes the expiry.
    e.touch(V0, &k, 0).unwrap();
    clock.advance(100);
    assert!(e.get(V0, &k).is_ok());
    // Expired documents are gone for touch and gat too (lazy expiry).
    e.touch(V0, &k, 5).unwrap();
    clock.advance(5);
    assert!(matches!(
        e.get_and_touch(V0, &k, 100),
        Err(EngineError::KeyNotFound)
    ));
    assert!(matches!(e.get(V0, &k), Err(EngineError::KeyNotFound)));
    // An absolute expiry in the past expires at once.
    clock.advance(2_000_000);
    e.set(V0, &k, "v", WriteOptions::default()).unwrap();
    e.touch(V0, &k, 30 * 24 * 3600 + 1).unwrap();
    assert!(matches!(e.get(V0, &k), Err(EngineError::KeyNotFound)));
    // Not my vbucket.
    assert!(matches!(
        e.touch(Vbid(1), &k, 1),
        Err(EngineError::NotMyVbucket(_))
    ));
}

macro_rules! on_backend {
    ($name:ident, $backend:expr) => {
        mod $name {
            #[test]
            fn arithmetic() {
                super::arithmetic($backend);
            }
            #[test]
            fn append_prepend() {
                super::append_prepend($backend);
            }
            #[test]
            fn durable_append_through_cookie() {
                super::durable_append_through_cookie($backend);
            }
            #[test]
            fn touch_and_gat() {
                super::touch_and_gat($backend);
            }
        }
    };
}

on_backend!(memory, engine::Backend::Memory);
on_backend!(couchfile, engine::Backend::Couchfile(Default::default()));
