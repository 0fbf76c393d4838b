//! Corruption tests: damage a real store's files (the index file and the
//! log segments), byte by byte, and check that every case either opens to an
//! earlier valid commit or reports a typed corruption error naming the
//! damaged file. Nothing may panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use kvstore_core::{CorruptionKind, KvStore, StoreError, Vbid};
use kvstore_couchfile::{CouchConfig, CouchStore};
use std::fs;
use std::path::{Path, PathBuf};

fn quiet() -> CouchConfig {
    CouchConfig {
        background: false,
        // Small segments: the store has several, so damage to a sealed one
        // and to the newest one are both tried.
        segment_bytes: 16 << 10,
        ..CouchConfig::default()
    }
}

fn one_segment() -> CouchConfig {
    CouchConfig {
        segment_bytes: 1 << 20,
        ..quiet()
    }
}

/// Writes `batches` batches to a fresh store, with a checkpoint after
/// `checkpoint_after` of them, and returns the store's directory.
fn make_store(dir: &Path, batches: u64, checkpoint_after: u64) -> PathBuf {
    make_store_with(dir, batches, checkpoint_after, quiet())
}

fn make_store_with(dir: &Path, batches: u64, checkpoint_after: u64, c: CouchConfig) -> PathBuf {
    let store = CouchStore::open(dir, c).unwrap();
    let vb = store.create(Vbid(0)).unwrap();
    let cvb = store.open_couch(Vbid(0), vb.revision()).unwrap();
    for b in 0..batches {
        vb.commit(common::batch(b)).unwrap();
        if b + 1 == checkpoint_after {
            cvb.checkpoint().unwrap();
        }
    }
    dir.join(format!("0.couch.{}", vb.revision().0))
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

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Copies the store, damages `file` in the copy, opens and reads it.
fn check_copy(store_dir: &Path, file: &str, damage: impl FnOnce(&mut Vec<u8>)) -> Outcome {
    let root = tempfile::tempdir().unwrap();
    let name = store_dir.file_name().unwrap();
    let copy = root.path().join(name);
    copy_dir(store_dir, &copy);
    let mut bytes = fs::read(copy.join(file)).unwrap();
    damage(&mut bytes);
    fs::write(copy.join(file), &bytes).unwrap();
    let store = CouchStore::open(root.path(), quiet()).unwrap();
    let found = store.discover().unwrap();
    assert_eq!(found.len(), 1);
    let (vbid, rev) = found[0];
    let as_outcome = |e: StoreError| -> Outcome {
        match e {
            StoreError::Corrupt(c) => {
                assert!(
                    c.path.starts_with(&copy),
                    "the error names a file of the store: {c}"
                );
                Outcome::Corrupt
            }
            other => panic!("{file}: not a typed corruption error: {other}"),
        }
    };
    let vb = match store.open(vbid, rev) {
        Ok(vb) => vb,
        Err(e) => return as_outcome(e),
    };
    // An earlier valid commit, read back in full, or a typed error from
    // damage met while reading.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| common::verify(&*vb))) {
        Ok(Ok(Some(n))) => Outcome::Batches(n + 1),
        Ok(Ok(None)) => Outcome::Empty,
        Ok(Err(e)) => as_outcome(e),
        Err(_) => panic!(
            "{file}: opened to a state that is not an earlier commit ({})",
            copy.display()
        ),
    }
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn damage_anywhere_never_panics_and_never_mixes_commits() {
    let src = tempfile::tempdir().unwrap();
    let batches = 24;
    let store_dir = make_store(src.path(), batches, 14);
    if let Ok(keep) = std::env::var("COUCHFILE_CORRUPTION_KEEP") {
        copy_dir(
            &store_dir,
            &Path::new(&keep).join(store_dir.file_name().unwrap()),
        );
    }
    let step: usize = std::env::var("COUCHFILE_CORRUPTION_STEP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(11);
    let mut names = files(&store_dir);
    assert!(
        names.iter().filter(|n| n.starts_with("wal.")).count() >= 3,
        "{names:?}"
    );
    // The segment the log ends in: the newest one holding a record (a
    // newer one may be a spare, created ahead of time and still empty).
    let newest_wal = names
        .iter()
        .filter(|n| n.starts_with("wal."))
        .filter(|n| {
            let b = fs::read(store_dir.join(n)).unwrap();
            b.get(4096) == Some(&0x02)
        })
        .max_by_key(|n| n[4..].parse::<u32>().unwrap())
        .unwrap()
        .clone();
    if let Ok(only) = std::env::var("COUCHFILE_CORRUPTION_FILE") {
        names.retain(|n| *n == only);
    }
    let mut outcomes = std::collections::BTreeMap::<(String, &str, String), usize>::new();
    let mut tried = 0;
    for name in &names {
        let path = store_dir.join(name);
        let original = fs::read(&path).unwrap();
        let len = original.len();
        // Every `step`th byte that holds data, and a sample of the zeroed
        // (preallocated or padding) bytes between.
        let positions: Vec<usize> = (0..len)
            .filter(|&p| (original[p] != 0 && p % step == 0) || p % 1021 == 0)
            .collect();
        for pos in positions {
            tried += 1;
            if std::env::var("COUCHFILE_CORRUPTION_TRACE").is_ok() {
                eprintln!("{name} {pos}");
            }
            let o = check_copy(&store_dir, name, |b| b[pos] ^= 0x5a);
            if let Outcome::Batches(n) = o {
                // Only damage to the newest commit (the torn-tail case) may
                // lose a commit; anything else is reported, not skipped.
                assert!(
                    n >= batches - 1,
                    "{name}: a flip at {pos} lost more than the last commit: {n}"
                );
            }
            let kind = if name.starts_with("index") {
                "index".to_owned()
            } else if *name == newest_wal {
                "newest segment".to_owned()
            } else {
                "sealed segment".to_owned()
            };
            *outcomes
                .entry((kind.clone(), "flip", format!("{o:?}")))
                .or_default() += 1;
            // Truncating the newest segment is a torn tail, which must open;
            // truncating anything else may lose data the store needs and
            // must then be reported.
            let o = check_copy(&store_dir, name, |b| b.truncate(pos));
            if *name == newest_wal && pos >= 4096 {
                match o {
                    Outcome::Batches(n) => {
                        assert!(n >= 14, "truncating {name} at {pos}: {n}")
                    }
                    other => panic!("truncating {name} at {pos} is a torn tail: {other:?}"),
                }
            } else if let Outcome::Batches(n) = o {
                assert!(n >= batches - 1, "truncating {name} at {pos}: {n}");
            }
            *outcomes
                .entry((kind, "truncate", format!("{o:?}")))
                .or_default() += 1;
        }
    }
    eprintln!("{tried} positions over {} files, step {step}:", names.len());
    for ((kind, what, o), n) in outcomes {
        eprintln!("  {kind:<15} {what:<8} {o}: {n}");
    }
}

#[test]
fn damaged_record_before_valid_records_is_reported() {
    let src = tempfile::tempdir().unwrap();
    let store_dir = make_store_with(src.path(), 6, 100, one_segment());
    // The second record of the only segment: damage its payload.
    let wal = store_dir.join("wal.1");
    let bytes = fs::read(&wal).unwrap();
    let starts: Vec<usize> = (4096..bytes.len())
        .step_by(4096)
        .filter(|&b| bytes[b] == 0x02)
        .collect();
    assert!(starts.len() >= 6, "{starts:?}");
    let victim = starts[1];
    let o = check_copy(&store_dir, "wal.1", |b| b[victim + 100] ^= 0xff);
    assert_eq!(
        o,
        Outcome::Corrupt,
        "a lost acknowledged commit is reported"
    );
    // The same damage to the last record is a torn final commit.
    let last = starts[starts.len() - 1];
    let o = check_copy(&store_dir, "wal.1", |b| b[last + 100] ^= 0xff);
    assert_eq!(o, Outcome::Batches(5));

    // And the error says which file, where, and what.
    let root = tempfile::tempdir().unwrap();
    let copy = root.path().join(store_dir.file_name().unwrap());
    copy_dir(&store_dir, &copy);
    let mut b = fs::read(copy.join("wal.1")).unwrap();
    b[victim + 100] ^= 0xff;
    fs::write(copy.join("wal.1"), &b).unwrap();
    let store = CouchStore::open(root.path(), quiet()).unwrap();
    let (vbid, rev) = store.discover().unwrap()[0];
    let err = store.open_couch(vbid, rev).expect_err("damaged record");
    let c = err.corruption().expect("typed corruption");
    assert_eq!(c.offset, victim as u64, "{err}");
    assert!(
        matches!(c.kind, CorruptionKind::BadHeaderBeforeValidData { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("wal.1"), "{err}");
}

#[test]
fn damaged_header_before_valid_data_is_reported() {
    let src = tempfile::tempdir().unwrap();
    let store_dir = make_store(src.path(), 10, 100);
    {
        let store = CouchStore::open(src.path(), quiet()).unwrap();
        let (vbid, rev) = store.discover().unwrap()[0];
        let vb = store.open_couch(vbid, rev).unwrap();
        for _ in 0..3 {
            // Checkpoints with nothing new still write a header.
            kvstore_core::VbStore::commit(&*vb, common::batch(common::next_batch(&*vb))).unwrap();
            vb.checkpoint().unwrap();
        }
    }
    let index = store_dir.join("index.1");
    let bytes = fs::read(&index).unwrap();
    let headers: Vec<usize> = (0..bytes.len())
        .step_by(4096)
        .filter(|&b| bytes[b] == 1)
        .collect();
    assert!(headers.len() >= 3, "{headers:?}");
    let victim = headers[headers.len() - 2];
    let root = tempfile::tempdir().unwrap();
    let copy = root.path().join(store_dir.file_name().unwrap());
    copy_dir(&store_dir, &copy);
    let mut damaged = bytes.clone();
    damaged[victim + 20] ^= 0xff;
    fs::write(copy.join("index.1"), &damaged).unwrap();
    let store = CouchStore::open(root.path(), quiet()).unwrap();
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
    assert!(err.to_string().contains("index.1"), "{err}");
    drop(store);

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
    let root = tempfile::tempdir().unwrap();
    let copy = root.path().join(store_dir.file_name().unwrap());
    copy_dir(&store_dir, &copy);
    fs::write(copy.join("index.1"), &newer).unwrap();
    let store = CouchStore::open(root.path(), quiet()).unwrap();
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
        for file in ["index.1", "wal.1"] {
            let root = tempfile::tempdir().unwrap();
            let store_dir = make_store(root.path(), 3, 2);
            fs::write(store_dir.join(file), &content).unwrap();
            let store = CouchStore::open(root.path(), quiet()).unwrap();
            let err = store
                .open_couch(Vbid(0), kvstore_core::Revision(1))
                .expect_err(what);
            assert!(err.corruption().is_some(), "{what} {file}: {err}");
        }
    }
    // A file of the first format, where a store directory belongs: refused
    // with a typed error, never taken for garbage and removed.
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join("3.couch.1"), b"old").unwrap();
    let err = CouchStore::open(root.path(), quiet()).expect_err("first-format file");
    assert_eq!(
        err.corruption().map(|c| c.kind.clone()),
        Some(CorruptionKind::UnknownVersion(1))
    );
    assert!(root.path().join("3.couch.1").exists());
}
