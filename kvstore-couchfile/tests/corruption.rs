//! Corruption tests: damage the last blocks of a real file, byte by byte,
//! and check that every case either opens to an earlier valid commit or
//! reports a typed corruption error. Nothing may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{CorruptionKind, KvStore, StoreError, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use std::fs;
use std::path::{Path, PathBuf};

/// Writes `batches` batches to a fresh store and returns the file.
fn make_file(dir: &Path, batches: u64) -> PathBuf {
    let store = CouchStore::open(dir, CouchConfig::default()).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    for b in 0..batches {
        vb.commit(common::batch(b)).unwrap();
    }
    let rev = vb.revision();
    dir.join(format!("0.couch.{}", rev.0))
}

/// What opening and reading a damaged copy gave.
#[derive(Debug, PartialEq, Eq, Hash, Clone, Copy)]
enum Outcome {
    /// Opened and read back exactly the state after this many batches.
    Batches(u64),
    /// Opened and read back an empty store.
    Empty,
    /// A typed corruption error.
    Corrupt,
}

fn check_copy(original: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(original).unwrap();
    damage(&mut bytes);
    fs::write(dir.path().join(name), &bytes).unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let found = store.discover().unwrap();
    assert_eq!(found.len(), 1);
    let (vbid, rev) = found[0];
    let as_outcome = |e: StoreError| -> Outcome {
        match e {
            StoreError::Corrupt(c) => {
                assert_eq!(c.path, dir.path().join(name), "the error names the file");
                Outcome::Corrupt
            }
            other => panic!("not a typed corruption error: {other}"),
        }
    };
    let vb = match store.open(vbid, rev) {
        Ok(vb) => vb,
        Err(e) => return as_outcome(e),
    };
    // An earlier valid commit, read back in full, or a typed error from a
    // damaged node met while reading.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| common::verify(&*vb))) {
        Ok(Ok(Some(n))) => Outcome::Batches(n + 1),
        Ok(Ok(None)) => Outcome::Empty,
        Ok(Err(e)) => as_outcome(e),
        Err(_) => panic!("{name}: opened to a state that is not an earlier commit"),
    }
}

#[test]
fn damage_in_the_last_blocks_never_panics() {
    let src = tempfile::tempdir().unwrap();
    let batches = 12;
    let file = make_file(src.path(), batches);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let len = fs::metadata(&file).unwrap().len() as usize;
    let from = len.saturating_sub(3 * 4096);
    let step: usize = std::env::var("COUCHFILE_CORRUPTION_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut outcomes = std::collections::HashMap::<(&str, Outcome), usize>::new();
    for pos in (from..len).step_by(step) {
        let o = check_copy(&file, &name, |b| b[pos] ^= 0x5a);
        if let Outcome::Batches(n) = o {
            assert!(
                n >= batches - 1,
                "a flip at {pos} lost more than the last commit: {n}"
            );
        }
        *outcomes.entry(("flip", o)).or_default() += 1;
        let o = check_copy(&file, &name, |b| b.truncate(pos));
        match o {
            Outcome::Batches(n) => assert!(n >= batches - 1, "truncation at {pos}: {n}"),
            other => panic!("truncating at {pos} is a torn tail and must open: {other:?}"),
        }
        *outcomes.entry(("truncate", o)).or_default() += 1;
    }
    let mut v: Vec<_> = outcomes.into_iter().collect();
    v.sort_by_key(|((k, o), _)| (*k, format!("{o:?}")));
    eprintln!(
        "{} bytes, last {} damaged with step {step}:",
        len,
        len - from
    );
    for ((kind, o), n) in v {
        eprintln!("  {kind:<8} {o:?}: {n}");
    }
}

#[test]
fn damaged_header_before_valid_data_is_reported() {
    let src = tempfile::tempdir().unwrap();
    let file = make_file(src.path(), 10);
    let store = CouchStore::open(src.path(), CouchConfig::default()).unwrap();
    let found = store.discover().unwrap();
    let vb = store.open(found[0].0, found[0].1).unwrap();
    drop(vb);
    drop(store);
    // Find the header before the newest: its block starts with 0x01.
    let bytes = fs::read(&file).unwrap();
    let headers: Vec<usize> = (0..bytes.len())
        .step_by(4096)
        .filter(|&b| bytes[b] == 1)
        .collect();
    assert!(headers.len() >= 3, "{headers:?}");
    let victim = headers[headers.len() - 2];
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let mut damaged = bytes.clone();
    damaged[victim + 20] ^= 0xff;
    fs::write(dir.path().join(&name), &damaged).unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let (vbid, rev) = store.discover().unwrap()[0];
    let err = store
        .open_couch(vbid, rev)
        .expect_err("a damaged header before valid data");
    let c = err.corruption().expect("typed corruption");
    assert_eq!(c.offset, victim as u64);
    assert!(
        matches!(c.kind, CorruptionKind::BadHeaderBeforeValidData { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&name), "{err}");

    // An unknown format version is refused, not skipped.
    let mut newer = bytes;
    let last = headers[headers.len() - 1];
    // The version follows the marker, the length and the magic.
    newer[last + 1 + 4 + 4] = 9;
    let crc_at = {
        let len = u32::from_le_bytes(newer[last + 1..last + 5].try_into().unwrap()) as usize;
        let payload = &newer[last + 5..last + 5 + len];
        let crc = crc32c::crc32c(payload);
        (last + 5 + len, crc)
    };
    newer[crc_at.0..crc_at.0 + 4].copy_from_slice(&crc_at.1.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(&name), &newer).unwrap();
    let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
    let (vbid, rev) = store.discover().unwrap()[0];
    let err = store.open_couch(vbid, rev).expect_err("unknown version");
    assert_eq!(
        err.corruption().map(|c| c.kind.clone()),
        Some(CorruptionKind::UnknownVersion(9))
    );
}

#[test]
fn empty_and_garbage_files_are_typed_errors() {
    for (what, content) in [
        ("empty", Vec::new()),
        ("zeros", vec![0u8; 10_000]),
        (
            "garbage",
            (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("a lone marker", vec![1u8]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("3.couch.1"), content).unwrap();
        let store = CouchStore::open(dir.path(), CouchConfig::default()).unwrap();
        let err = store
            .open_couch(Vbid(3), kvstore_core::Revision(1))
            .expect_err(what);
        assert!(err.corruption().is_some(), "{what}: {err}");
    }
}
