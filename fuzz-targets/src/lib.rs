//! The fuzz targets' bodies, on stable Rust.
//!
//! Each target is a function from bytes to nothing that panics when a
//! property breaks. The nightly crate in `fuzz/` wraps each in
//! `fuzz_target!` (one line per target) and `cargo xtask fuzz` runs them
//! under libFuzzer; this crate's tests replay every seed
//! (`fuzz/seeds/<target>/`) and every saved crash
//! (`fuzz/regressions/<target>/`) on stable, in the normal suite, so a
//! fixed crash stays fixed without nightly.
//!
//! | target | what it drives |
//! | --- | --- |
//! | `core_codecs` | kvstore-core: disk keys (LEB128 prefix), the vbucket-state document, deletion bytes, datatypes |
//! | `manifest` | collections: the manifest parser and the successor rule, structure-aware, against a reference model of the rule |
//! | `couchfile_decode` | every couchfile decoder on raw bytes: nodes, headers, segment tables, log items and records, block markers; round trips |
//! | `couchfile_open` | a real revision directory, damaged, opened for inspection (every header, tree, segment and record) and as a store (reads, a commit, checkpoint, rollback, compaction) |
//! | `ops` | a couchfile store and `MemStore` through the same random commits, reopens, crashes (torn writes, failed syncs), rollbacks, compactions and maintenance, compared after every step |
//! | `kvserver_frames` | kvserver's binary request and response decoders, frame infos and the text parser, whole and in pieces |
//!
//! A target added later (a connection's state machine, say) is a module
//! here, a line in [`TARGETS`], a `[[bin]]` of one line in `fuzz/`, and
//! seeds in [`seeds`].

pub mod codecs;
pub mod couchfile_decode;
pub mod couchfile_open;
pub mod kvserver_frames;
pub mod manifest;
pub mod ops;
pub mod seeds;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name: the `fuzz/` binary and the seed folder are named so.
    pub name: &'static str,
    /// Runs one input; panics when a property breaks.
    pub run: fn(&[u8]),
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "core_codecs",
        run: codecs::run,
    },
    Target {
        name: "manifest",
        run: manifest::run,
    },
    Target {
        name: "couchfile_decode",
        run: couchfile_decode::run,
    },
    Target {
        name: "couchfile_open",
        run: couchfile_open::run,
    },
    Target {
        name: "ops",
        run: ops::run,
    },
    Target {
        name: "kvserver_frames",
        run: kvserver_frames::run,
    },
];

/// The target named `name`.
#[must_use]
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A scratch directory for one input: on tmpfs (`/dev/shm`) where there is
/// one, so the stores' syncs cost nothing and the fuzzer runs many more
/// inputs a second; the crash semantics the targets check do not depend on
/// the medium.
///
/// # Panics
/// When no temporary directory can be made (the machine is at fault, not
/// the input).
#[must_use]
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("vbstore-fuzz-")
            .tempdir_in(shm)
            .or_else(|_| tempfile::tempdir())
    } else {
        tempfile::tempdir()
    };
    match dir {
        Ok(d) => d,
        Err(e) => panic!("no temporary directory: {e}"),
    }
}
