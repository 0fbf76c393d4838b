//! Every seed (`fuzz/seeds/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) through its target, on stable: a crash
//! libFuzzer found stays fixed in the normal test suite.
//!
//! To keep a crash: copy the input libFuzzer saved (`cargo xtask fuzz`
//! prints its path) to `fuzz/regressions/<target>/<short-name>`, fix the
//! bug, and this test runs it from then on.
//!
//! The seeds are made by code ([`fuzz_targets::seeds`]); to write them
//! again: `cargo test -p fuzz-targets --test replay -- --ignored write_seeds`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use fuzz_targets::{TARGETS, seeds};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut failures = Vec::new();
    let mut n = 0;
    for t in TARGETS {
        for path in inputs(&fuzz_dir().join(kind).join(t.name)) {
            let data = std::fs::read(&path).unwrap();
            n += 1;
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                failures.push(format!("{}: {msg}", path.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} inputs failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    n
}

#[test]
fn every_seed_passes() {
    let n = replay("seeds");
    assert!(n >= TARGETS.len(), "only {n} seeds");
}

#[test]
fn every_saved_crash_stays_fixed() {
    replay("regressions");
}

#[test]
fn every_target_has_small_seeds_and_a_fuzz_binary() {
    let bins = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for t in TARGETS {
        let files = inputs(&fuzz_dir().join("seeds").join(t.name));
        assert!(!files.is_empty(), "{} has no seeds", t.name);
        assert!(
            files.len() <= 12,
            "{} has {} seeds; keep it small",
            t.name,
            files.len()
        );
        for f in files {
            let len = std::fs::metadata(&f).unwrap().len();
            assert!(
                len as usize <= seeds::MAX_SEED,
                "{} is {len} bytes",
                f.display()
            );
        }
        assert!(
            bins.contains(&format!("name = \"{}\"", t.name)),
            "fuzz/Cargo.toml has no [[bin]] for {}",
            t.name
        );
        let body = std::fs::read_to_string(fuzz_dir().join(format!("fuzz_targets/{}.rs", t.name)))
            .unwrap();
        assert!(
            body.contains("fuzz_target!") && body.contains("fuzz_targets::"),
            "fuzz_targets/{}.rs does not call its target",
            t.name
        );
    }
}

/// The seeds on disk are what the generator makes (run `write_seeds` after
/// changing it).
#[test]
fn seeds_on_disk_are_generated() {
    for t in TARGETS {
        for (name, bytes) in seeds::seeds(t.name) {
            let path = fuzz_dir().join("seeds").join(t.name).join(&name);
            let on_disk = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {e} (run write_seeds)", path.display()));
            assert_eq!(
                on_disk,
                bytes,
                "{} is stale (run write_seeds)",
                path.display()
            );
        }
    }
}

#[test]
#[ignore = "writes fuzz/seeds/; run by hand after changing the generator"]
fn write_seeds() {
    for t in TARGETS {
        let dir = fuzz_dir().join("seeds").join(t.name);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds::seeds(t.name) {
            assert!(
                bytes.len() <= seeds::MAX_SEED,
                "{}/{name} is too big",
                t.name
            );
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// Inputs of bugs found and not fixed yet (`fuzz/open-crashes/`): each one
/// must still fail its target. When one passes, its bug is fixed: move it
/// to `fuzz/regressions/`.
#[test]
#[ignore = "open bugs: see fuzz/open-crashes/README.md"]
fn open_crashes_still_fail() {
    for t in TARGETS {
        for path in inputs(&fuzz_dir().join("open-crashes").join(t.name)) {
            let data = std::fs::read(&path).unwrap();
            let failed = catch_unwind(AssertUnwindSafe(|| (t.run)(&data))).is_err();
            assert!(
                failed,
                "{} passes now: move it to fuzz/regressions/",
                path.display()
            );
        }
    }
}
