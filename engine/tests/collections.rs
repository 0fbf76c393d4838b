//! Collections through the engine: our equivalents of upstream's manifest
//! update tests, the busy/failure/disconnect rules, resurrection on every
//! backend, maxTTL, and a property test over random manifest sequences.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use collections::Manifest;
use common::{Opened, open};
use engine::{Backend, Engine, EngineConfig, EngineError, WriteOptions};
use kvstore_core::{CollectionId, DiskKey, ScanControl, ScanOptions, Seqno, VbState, Vbid};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

const V0: Vbid = Vbid(0);
static COOKIE: AtomicU64 = AtomicU64::new(1_000);

fn cookie() -> u64 {
    COOKIE.fetch_add(1, Ordering::SeqCst)
}

/// Runs `set_collections` through the would-block protocol to its result.
fn set_manifest(o: &Opened, json: &str) -> Result<(), EngineError> {
    let c = cookie();
    match o.engine.cookie(c).set_collections(json.as_bytes()) {
        Err(EngineError::WouldBlock) => {}
        other => return other,
    }
    let _ = o.notes.wait(c);
    o.engine.cookie(c).set_collections(json.as_bytes())
}

/// A manifest of the default scope and collection plus `colls` (name, id,
/// scope id, maxTTL) and `scopes` (name, id).
fn json(uid: u64, scopes: &[(&str, u32)], colls: &[(&str, u32, u32, Option<u32>)]) -> String {
    let mut all = vec![("_default".to_owned(), 0u32)];
    all.extend(scopes.iter().map(|(n, i)| ((*n).to_owned(), *i)));
    let scopes: Vec<String> = all
        .iter()
        .map(|(name, sid)| {
            let mut cs: Vec<String> = colls
                .iter()
                .filter(|c| c.2 == *sid)
                .map(|(n, id, _, ttl)| match ttl {
                    Some(t) => format!(r#"{{"name":"{n}","uid":"{id:x}","maxTTL":{t}}}"#),
                    None => format!(r#"{{"name":"{n}","uid":"{id:x}"}}"#),
                })
                .collect();
            if *sid == 0 {
                cs.insert(0, r#"{"name":"_default","uid":"0"}"#.into());
            }
            format!(
                r#"{{"name":"{name}","uid":"{sid:x}","collections":[{}]}}"#,
                cs.join(",")
            )
        })
        .collect();
    format!(r#"{{"uid":"{uid:x}","scopes":[{}]}}"#, scopes.join(","))
}

fn fruit_key(k: &str) -> DiskKey {
    DiskKey::new(CollectionId(8), k.as_bytes()).unwrap()
}

fn couch() -> Backend {
    Backend::Couchfile(Default::default())
}

fn active(dir: &std::path::Path, backend: Backend) -> Opened {
    let o = open(dir, backend, 1);
    o.engine.create_vbucket(V0, VbState::Active).unwrap();
    o
}

#[test]
fn update_succeeds_through_would_block_and_collect() {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), couch());
    let e = &o.engine;
    assert!(matches!(
        e.set(V0, &fruit_key("a"), "v", WriteOptions::default()),
        Err(EngineError::UnknownCollection { manifest_uid: 0 })
    ));
    let m = json(1, &[], &[("fruit", 8, 0, None)]);
    let c = cookie();
    assert!(matches!(
        e.cookie(c).set_collections(m.as_bytes()),
        Err(EngineError::WouldBlock)
    ));
    assert_eq!(o.notes.wait(c), Ok(()));
    assert_eq!(
        e.manifest().uid,
        0,
        "applied only when the cookie comes back"
    );
    e.cookie(c).set_collections(m.as_bytes()).unwrap();
    assert_eq!(e.manifest().uid, 1);
    assert!(e.vbucket_collections(V0).unwrap().matches(&e.manifest()));
    e.set(V0, &fruit_key("a"), "v", WriteOptions::default())
        .unwrap();
    assert_eq!(
        e.collection_id("_default.fruit").unwrap(),
        (1, CollectionId(8))
    );
    assert!(matches!(
        e.collection_id("_default.veg"),
        Err(EngineError::UnknownCollection { .. })
    ));
    assert!(matches!(
        e.collection_id("nope.fruit"),
        Err(EngineError::UnknownScope { .. })
    ));
    assert!(matches!(
        e.collection_id("nodot"),
        Err(EngineError::InvalidArguments(_))
    ));
    let stats = e.collection_stats(V0).unwrap();
    let fruit = stats.iter().find(|c| c.name == "fruit").unwrap();
    assert_eq!(fruit.stats.items, 1);
    // The same manifest again is a no-op success, without blocking.
    e.cookie(cookie()).set_collections(m.as_bytes()).unwrap();
    assert_eq!(e.stats().cookies, 0);
}

/// Upstream's SetCollectionsWithNoDirectory: a persistence failure gives
/// `CannotApplyManifest` and changes nothing; once the directory is back
/// the same manifest succeeds. (The memory backend persists nothing, so it
/// needs no directory: see `regressions::memory_backend_keeps_nothing_on_disk`.)
#[test]
fn set_collections_with_no_directory() {
    let backend = couch();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let o = active(&data, backend);
    let m = json(1, &[], &[("fruit", 8, 0, None)]);
    std::fs::remove_dir_all(&data).unwrap();
    match set_manifest(&o, &m) {
        Err(EngineError::CannotApplyManifest(msg)) => {
            assert!(msg.contains("persisting"), "{msg}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(o.engine.manifest().uid, 0, "nothing applied");
    assert!(
        o.engine
            .vbucket_collections(V0)
            .unwrap()
            .collection(CollectionId(8))
            .is_none()
    );
    std::fs::create_dir(&data).unwrap();
    set_manifest(&o, &m).unwrap();
    assert_eq!(o.engine.manifest().uid, 1);
    assert!(data.join("collections.manifest").exists());
    assert_eq!(o.engine.stats().cookies, 0);
}

#[test]
fn non_successors_are_rejected_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), Backend::Memory);
    set_manifest(
        &o,
        &json(
            5,
            &[("shop", 9)],
            &[("fruit", 8, 0, None), ("veg", 10, 9, None)],
        ),
    )
    .unwrap();
    let before = (
        o.engine.manifest(),
        o.engine.vbucket_collections(V0).unwrap(),
    );
    let cases = [
        json(4, &[("shop", 9)], &[("fruit", 8, 0, None)]),
        json(
            6,
            &[("shop", 9)],
            &[("apple", 8, 0, None), ("veg", 10, 9, None)],
        ),
        // A scope move.
        json(
            6,
            &[("shop", 9)],
            &[("fruit", 8, 9, None), ("veg", 10, 9, None)],
        ),
        json(
            6,
            &[("store", 9)],
            &[("fruit", 8, 0, None), ("veg", 10, 9, None)],
        ),
        json(5, &[("shop", 9)], &[("fruit", 8, 0, None)]),
    ];
    for m in &cases {
        match o.engine.cookie(cookie()).set_collections(m.as_bytes()) {
            Err(EngineError::CannotApplyManifest(_)) => {}
            other => panic!("{m}: {other:?}"),
        }
    }
    for bad in [
        "{",
        r#"{"uid":"7","scopes":[]}"#,
        r#"{"uid":"zz","scopes":[]}"#,
    ] {
        assert!(matches!(
            o.engine.cookie(cookie()).set_collections(bad.as_bytes()),
            Err(EngineError::InvalidArguments(_))
        ));
    }
    assert_eq!(
        (
            o.engine.manifest(),
            o.engine.vbucket_collections(V0).unwrap()
        ),
        before
    );
    // Nothing was left in flight.
    set_manifest(&o, &json(6, &[("shop", 9)], &[("fruit", 8, 0, None)])).unwrap();
}

#[test]
fn update_survives_warmup_and_junk_fails_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = json(
        3,
        &[("shop", 9)],
        &[("fruit", 8, 0, Some(500)), ("veg", 10, 9, None)],
    );
    let before = {
        let o = active(dir.path(), couch());
        set_manifest(&o, &m).unwrap();
        for i in 0..10 {
            o.engine
                .set(
                    V0,
                    &fruit_key(&format!("k{i}")),
                    "v",
                    WriteOptions::default(),
                )
                .unwrap();
        }
        let before = o.engine.vbucket_collections(V0).unwrap();
        o.engine.shutdown().unwrap();
        before
    };
    {
        let o = open(dir.path(), couch(), 1);
        assert_eq!(
            *o.engine.manifest(),
            Manifest::from_json(m.as_bytes()).unwrap()
        );
        assert_eq!(o.engine.vbucket_collections(V0).unwrap(), before);
        assert_eq!(o.engine.vbucket_stats(V0).unwrap().items, 10);
        assert!(o.engine.get(V0, &fruit_key("k3")).is_ok());
        o.engine.shutdown().unwrap();
    }
    std::fs::write(
        dir.path().join("collections.manifest"),
        b"junk junk junk junk",
    )
    .unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.vbuckets = 16;
    match Engine::open_with_notifier(cfg, std::sync::Arc::new(engine::NoNotify)) {
        Err(EngineError::Warmup(msg)) => {
            assert!(
                msg.contains("collections.manifest") && msg.contains("magic"),
                "{msg}"
            );
        }
        other => panic!("a junk manifest must fail warmup: {other:?}"),
    }
}

#[test]
fn a_second_cookie_is_busy_until_the_first_completes_fails_or_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Couchfile: the memory backend keeps its manifest in memory only, so
    // removing the directory would not make its persistence fail.
    let o = active(&data, couch());
    let e = &o.engine;
    let m1 = json(1, &[], &[("a", 8, 0, None)]);
    let m2 = json(2, &[], &[("a", 8, 0, None), ("b", 9, 0, None)]);
    // Completes.
    let (a, b) = (cookie(), cookie());
    assert!(matches!(
        e.cookie(a).set_collections(m1.as_bytes()),
        Err(EngineError::WouldBlock)
    ));
    assert!(matches!(
        e.cookie(b).set_collections(m2.as_bytes()),
        Err(EngineError::Busy(_))
    ));
    let _ = o.notes.wait(a);
    assert!(
        matches!(
            e.cookie(b).set_collections(m2.as_bytes()),
            Err(EngineError::Busy(_))
        ),
        "persisted, not yet collected"
    );
    e.cookie(a).set_collections(m1.as_bytes()).unwrap();
    set_manifest(&o, &m2).unwrap();
    // Fails: the machine is free at once, before the error is collected.
    let m3 = json(3, &[], &[("a", 8, 0, None)]);
    std::fs::remove_dir_all(&data).unwrap();
    let a = cookie();
    assert!(matches!(
        e.cookie(a).set_collections(m3.as_bytes()),
        Err(EngineError::WouldBlock)
    ));
    assert!(o.notes.wait(a).is_err());
    std::fs::create_dir(&data).unwrap();
    set_manifest(&o, &m3).unwrap();
    assert!(matches!(
        e.cookie(a).set_collections(m3.as_bytes()),
        Err(EngineError::CannotApplyManifest(_))
    ));
    // Disconnects: its persisted manifest is applied anyway, and the next
    // update goes through.
    let m4 = json(4, &[], &[("a", 8, 0, None), ("c", 10, 0, None)]);
    let a = cookie();
    assert!(matches!(
        e.cookie(a).set_collections(m4.as_bytes()),
        Err(EngineError::WouldBlock)
    ));
    e.release_cookie(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while e.manifest().uid != 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the orphaned update was never applied"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(e.vbucket_collections(V0).unwrap().matches(&e.manifest()));
    set_manifest(&o, &json(5, &[], &[("a", 8, 0, None)])).unwrap();
    assert_eq!(e.stats().cookies, 0);
}

#[test]
fn max_ttl_caps_new_documents() {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), Backend::Memory);
    set_manifest(&o, &json(1, &[], &[("fruit", 8, 0, Some(100))])).unwrap();
    let now = o.clock.secs.load(Ordering::SeqCst);
    let e = &o.engine;
    e.set(V0, &fruit_key("none"), "v", WriteOptions::default())
        .unwrap();
    e.set(
        V0,
        &fruit_key("long"),
        "v",
        WriteOptions {
            expiry: 1000,
            ..Default::default()
        },
    )
    .unwrap();
    e.set(
        V0,
        &fruit_key("short"),
        "v",
        WriteOptions {
            expiry: 10,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        e.get(V0, &fruit_key("none")).unwrap().meta.expiry,
        now + 100
    );
    assert_eq!(
        e.get(V0, &fruit_key("long")).unwrap().meta.expiry,
        now + 100
    );
    assert_eq!(
        e.get(V0, &fruit_key("short")).unwrap().meta.expiry,
        now + 10
    );
    o.clock.advance(100);
    assert!(matches!(
        e.get(V0, &fruit_key("none")),
        Err(EngineError::KeyNotFound)
    ));
    // The default collection has no maxTTL.
    e.set(V0, &common::key("d"), "v", WriteOptions::default())
        .unwrap();
    assert_eq!(e.get(V0, &common::key("d")).unwrap().meta.expiry, 0);
}

/// System events on disk, in seqno order, for one update that creates a
/// scope, drops a collection, creates one and drops a scope.
#[test]
fn system_events_are_persisted_in_upstream_order() {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), couch());
    set_manifest(
        &o,
        &json(1, &[("s9", 9)], &[("c8", 8, 0, None), ("c9", 9, 9, None)]),
    )
    .unwrap();
    let high = o.engine.vbucket_stats(V0).unwrap().high_seqno;
    set_manifest(&o, &json(2, &[("s10", 10)], &[("c10", 10, 10, None)])).unwrap();
    o.engine.flush().unwrap();
    let vb = o.engine.vbucket(V0).unwrap();
    let mut events = Vec::new();
    let mut scan = vb
        .store()
        .seqno_scan(
            high.next(),
            Seqno(u64::MAX),
            ScanOptions {
                include_deleted: true,
                ..Default::default()
            },
        )
        .unwrap();
    scan.run(&mut |d| {
        let kind = if d.key.user_key()[0] == 1 {
            "scope"
        } else {
            "collection"
        };
        events.push(format!(
            "{}{kind}",
            if d.is_deleted() { "drop " } else { "create " }
        ));
        ScanControl::Continue
    })
    .unwrap();
    assert_eq!(
        events,
        [
            "create scope",
            "drop collection",
            "drop collection",
            "create collection",
            "drop scope"
        ]
    );
}

/// Drop and re-create `fruit` `cycles` times (optionally ending dropped).
/// Checks the open and dropped lists with their seqnos, and that no old item
/// reads back, before and after compaction.
fn resurrection(backend: Backend, cycles: u32, drop_at_end: bool) {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), backend);
    let e = &o.engine;
    let mut uid = 1;
    let with = |uid| json(uid, &[], &[("fruit", 8, 0, None)]);
    let without = |uid| json(uid, &[], &[]);
    set_manifest(&o, &with(uid)).unwrap();
    let first_start = e
        .vbucket_collections(V0)
        .unwrap()
        .collection(CollectionId(8))
        .unwrap()
        .start;
    e.set(V0, &fruit_key("gen0"), "0", WriteOptions::default())
        .unwrap();
    e.set(V0, &fruit_key("shared"), "gen 0", WriteOptions::default())
        .unwrap();
    e.flush().unwrap();
    let mut last_drop = 0;
    for cycle in 1..=cycles {
        uid += 1;
        set_manifest(&o, &without(uid)).unwrap();
        assert!(matches!(
            e.get(V0, &fruit_key("shared")),
            Err(EngineError::UnknownCollection { .. })
        ));
        last_drop = e.vbucket_stats(V0).unwrap().high_seqno.0;
        uid += 1;
        set_manifest(&o, &with(uid)).unwrap();
        let vc = e.vbucket_collections(V0).unwrap();
        let c = vc.collection(CollectionId(8)).unwrap();
        assert_eq!(
            c.start,
            last_drop + 1,
            "the new generation starts at its create event"
        );
        assert_eq!(c.stats.items, 0, "a new generation starts empty");
        let d = vc.dropped[&CollectionId(8)];
        assert_eq!((d.start, d.end), (first_start, last_drop));
        // Old items never read back, even the key written in every cycle.
        assert!(matches!(
            e.get(V0, &fruit_key("gen0")),
            Err(EngineError::KeyNotFound)
        ));
        assert!(matches!(
            e.get(V0, &fruit_key("shared")),
            Err(EngineError::KeyNotFound)
        ));
        e.set(
            V0,
            &fruit_key("shared"),
            format!("gen {cycle}"),
            WriteOptions::default(),
        )
        .unwrap();
        if cycle % 2 == 0 {
            e.flush().unwrap();
        }
    }
    if drop_at_end {
        uid += 1;
        set_manifest(&o, &without(uid)).unwrap();
        last_drop = e.vbucket_stats(V0).unwrap().high_seqno.0;
    }
    let check = |phase: &str| {
        let vc = e.vbucket_collections(V0).unwrap();
        assert!(
            matches!(
                e.get(V0, &fruit_key("gen0")),
                Err(EngineError::KeyNotFound | EngineError::UnknownCollection { .. })
            ),
            "{phase}"
        );
        if drop_at_end {
            assert!(vc.collection(CollectionId(8)).is_none(), "{phase}");
            assert!(
                matches!(
                    e.get(V0, &fruit_key("shared")),
                    Err(EngineError::UnknownCollection { .. })
                ),
                "{phase}"
            );
        } else {
            let item = e.get(V0, &fruit_key("shared")).unwrap();
            assert_eq!(
                &item.value[..],
                format!("gen {cycles}").as_bytes(),
                "{phase}"
            );
            let c = vc.collection(CollectionId(8)).unwrap();
            assert_eq!(c.stats.items, 1, "{phase}");
        }
        assert_eq!(
            e.vbucket_stats(V0).unwrap().items,
            u64::from(!drop_at_end),
            "{phase}"
        );
        vc
    };
    e.flush().unwrap();
    let vc = check("before compaction");
    let d = vc.dropped[&CollectionId(8)];
    assert_eq!((d.start, d.end), (first_start, last_drop));
    e.compact(V0, Default::default()).unwrap();
    e.flush().unwrap();
    let vc = check("after compaction");
    assert!(
        vc.dropped.is_empty(),
        "compaction purged the dropped generations"
    );
    // On disk, only the current generation's item is left.
    let vb = e.vbucket(V0).unwrap();
    let mut fruit_docs = Vec::new();
    let mut scan = vb
        .store()
        .seqno_scan(
            Seqno(0),
            Seqno(u64::MAX),
            ScanOptions {
                include_deleted: true,
                ..Default::default()
            },
        )
        .unwrap();
    scan.run(&mut |d| {
        if d.key.collection() == CollectionId(8) {
            fruit_docs.push(String::from_utf8(d.value.to_vec()).unwrap());
        }
        ScanControl::Continue
    })
    .unwrap();
    let want: Vec<String> = if drop_at_end {
        vec![]
    } else {
        vec![format!("gen {cycles}")]
    };
    assert_eq!(fruit_docs, want);
}

macro_rules! resurrection_on {
    ($name:ident, $backend:expr) => {
        mod $name {
            use super::*;
            #[test]
            fn one_cycle() {
                resurrection($backend, 1, false);
            }
            #[test]
            fn one_cycle_then_drop() {
                resurrection($backend, 1, true);
            }
            #[test]
            fn three_cycles() {
                resurrection($backend, 3, false);
            }
            #[test]
            fn three_cycles_then_drop() {
                resurrection($backend, 3, true);
            }
        }
    };
}

resurrection_on!(resurrection_memory, Backend::Memory);
resurrection_on!(resurrection_couchfile, couch());
#[cfg(feature = "rocks")]
resurrection_on!(resurrection_rocksdb, Backend::Rocks(Default::default()));

/// One change a random step proposes.
#[derive(Debug, Clone)]
enum Change {
    AddCollection { id: u32, scope_ix: usize },
    DropCollection { ix: usize },
    AddScope { id: u32 },
    DropScope { ix: usize },
    Rename { ix: usize },
    Move { ix: usize },
    SetTtl { ix: usize, ttl: Option<u32> },
    UidBack,
    SameUidDifferent,
    Garbage,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (8u32..20, 0usize..4).prop_map(|(id, scope_ix)| Change::AddCollection { id, scope_ix }),
        3 => (0usize..8).prop_map(|ix| Change::DropCollection { ix }),
        2 => (8u32..14).prop_map(|id| Change::AddScope { id }),
        1 => (0usize..4).prop_map(|ix| Change::DropScope { ix }),
        1 => (0usize..8).prop_map(|ix| Change::Rename { ix }),
        1 => (0usize..8).prop_map(|ix| Change::Move { ix }),
        1 => (0usize..8, proptest::option::of(1u32..1000)).prop_map(|(ix, ttl)| Change::SetTtl { ix, ttl }),
        1 => Just(Change::UidBack),
        1 => Just(Change::SameUidDifferent),
        1 => Just(Change::Garbage),
    ]
}

/// Builds the JSON of a proposed next manifest from the current one.
fn propose(cur: &Manifest, ch: &Change) -> String {
    let mut scopes: BTreeMap<u32, String> = cur
        .scopes
        .values()
        .map(|s| (s.id.0, s.name.clone()))
        .collect();
    let mut colls: BTreeMap<u32, (String, u32, Option<u32>)> = cur
        .collections
        .values()
        .map(|c| (c.id.0, (c.name.clone(), c.scope.0, c.max_ttl)))
        .collect();
    let mut uid = cur.uid + 1;
    let user_colls: Vec<u32> = colls.keys().copied().filter(|c| *c >= 8).collect();
    let user_scopes: Vec<u32> = scopes.keys().copied().filter(|s| *s >= 8).collect();
    let pick = |v: &[u32], ix: usize| v.get(ix % v.len().max(1)).copied();
    match ch {
        Change::AddCollection { id, scope_ix } => {
            let sids: Vec<u32> = scopes.keys().copied().collect();
            let sid = sids[scope_ix % sids.len()];
            colls.entry(*id).or_insert((format!("c{id}"), sid, None));
        }
        Change::DropCollection { ix } => {
            if let Some(c) = pick(&user_colls, *ix) {
                colls.remove(&c);
            }
        }
        Change::AddScope { id } => {
            scopes.entry(*id).or_insert(format!("s{id}"));
        }
        Change::DropScope { ix } => {
            if let Some(s) = pick(&user_scopes, *ix) {
                scopes.remove(&s);
                colls.retain(|_, c| c.1 != s);
            }
        }
        Change::Rename { ix } => {
            if let Some(c) = pick(&user_colls, *ix) {
                colls.get_mut(&c).unwrap().0.push('x');
            }
        }
        Change::Move { ix } => {
            if let (Some(c), Some(&s)) = (pick(&user_colls, *ix), user_scopes.first()) {
                let e = colls.get_mut(&c).unwrap();
                e.1 = if e.1 == s { 0 } else { s };
            }
        }
        Change::SetTtl { ix, ttl } => {
            if let Some(c) = pick(&user_colls, *ix) {
                colls.get_mut(&c).unwrap().2 = *ttl;
            }
        }
        Change::UidBack => uid = cur.uid.saturating_sub(1),
        Change::SameUidDifferent => {
            uid = cur.uid;
            colls.insert(19, ("c19".into(), 0, None));
        }
        Change::Garbage => {
            return format!(r#"{{"uid":"{uid:x}","scopes":[{{"name":"bad name","uid":"0"}}]}}"#);
        }
    }
    let scope_list: Vec<(String, u32)> = scopes
        .iter()
        .filter(|(id, _)| **id != 0)
        .map(|(id, n)| (n.clone(), *id))
        .collect();
    let coll_list: Vec<(String, u32, u32, Option<u32>)> = colls
        .iter()
        .filter(|(id, _)| **id != 0)
        .map(|(id, (n, s, t))| (n.clone(), *id, *s, *t))
        .collect();
    let s: Vec<(&str, u32)> = scope_list.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    let c: Vec<(&str, u32, u32, Option<u32>)> = coll_list
        .iter()
        .map(|(n, i, s, t)| (n.as_str(), *i, *s, *t))
        .collect();
    json(uid, &s, &c)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random manifest sequences, valid and invalid: accepted successors are
    /// applied exactly (bucket and vbuckets), rejected ones change nothing.
    #[test]
    fn random_manifest_sequences(changes in proptest::collection::vec(change(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        let o = active(dir.path(), Backend::Memory);
        o.engine.create_vbucket(Vbid(1), VbState::Active).unwrap();
        o.engine.create_vbucket(Vbid(2), VbState::Replica).unwrap();
        for ch in &changes {
            let cur = o.engine.manifest();
            let before: Vec<_> = (0..3).map(|v| o.engine.vbucket_collections(Vbid(v)).unwrap()).collect();
            let proposal = propose(&cur, ch);
            let expect = Manifest::from_json(proposal.as_bytes())
                .map_err(|_| ())
                .and_then(|m| cur.check_successor(&m).map(|()| m).map_err(|_| ()));
            let got = set_manifest(&o, &proposal);
            match (&expect, &got) {
                (Ok(m), Ok(())) => {
                    prop_assert_eq!(&*o.engine.manifest(), m);
                    for v in 0..2 {
                        prop_assert!(o.engine.vbucket_collections(Vbid(v)).unwrap().matches(m), "{ch:?} vb {v}");
                    }
                    prop_assert_eq!(&o.engine.vbucket_collections(Vbid(2)).unwrap(), &before[2], "replicas are not updated");
                }
                (Err(()), Err(EngineError::InvalidArguments(_) | EngineError::CannotApplyManifest(_))) => {
                    prop_assert_eq!(&o.engine.manifest(), &cur);
                    for (v, b) in before.iter().enumerate() {
                        prop_assert_eq!(&o.engine.vbucket_collections(Vbid(v as u16)).unwrap(), b);
                    }
                }
                _ => prop_assert!(false, "{ch:?}: expected {expect:?}, got {got:?}\n{proposal}"),
            }
        }
        prop_assert_eq!(o.engine.stats().cookies, 0);
    }
}

#[test]
fn dropped_collection_items_vanish_at_once_and_compaction_purges_them() {
    let dir = tempfile::tempdir().unwrap();
    let o = active(dir.path(), couch());
    let e = &o.engine;
    set_manifest(&o, &json(1, &[], &[("fruit", 8, 0, None)])).unwrap();
    for i in 0..100 {
        e.set(
            V0,
            &fruit_key(&format!("k{i}")),
            "v",
            WriteOptions::default(),
        )
        .unwrap();
    }
    e.set(V0, &common::key("keep"), "v", WriteOptions::default())
        .unwrap();
    assert_eq!(e.vbucket_stats(V0).unwrap().items, 101);
    // Some of them still dirty when the drop lands.
    set_manifest(&o, &json(2, &[], &[])).unwrap();
    assert!(matches!(
        e.get(V0, &fruit_key("k1")),
        Err(EngineError::UnknownCollection { manifest_uid: 2 })
    ));
    assert_eq!(e.vbucket_stats(V0).unwrap().items, 1);
    e.flush().unwrap();
    let vb = e.vbucket(V0).unwrap();
    assert!(
        vb.store().get(&fruit_key("k1")).unwrap().is_some(),
        "still on disk before compaction"
    );
    let r = e.compact(V0, Default::default()).unwrap();
    assert_eq!(r.collection_items_purged, 100);
    assert!(vb.store().get(&fruit_key("k1")).unwrap().is_none());
    assert!(e.get(V0, &common::key("keep")).is_ok());
    drop(vb);
    assert!(e.vbucket_collections(V0).unwrap().dropped.is_empty());
    // The purge is remembered: no dropped generation after a restart.
    o.engine.shutdown().unwrap();
    let o = open(dir.path(), couch(), 1);
    let vc = o.engine.vbucket_collections(V0).unwrap();
    assert!(vc.dropped.is_empty(), "{vc:?}");
    assert_eq!(o.engine.vbucket_stats(V0).unwrap().items, 1);
}
