//! The conformance suite of the storage contract (DESIGN §4, §9).
//!
//! Every backend runs all of it with one line in a test file:
//!
//! ```ignore
//! kvstore_core::conformance_tests!(my_backend::TestFactory::default());
//! ```
//!
//! The cases are plain functions taking a [`StoreFactory`], grouped by the
//! numbered item of DESIGN §4 they check: `c1_*` atomic durable commit,
//! `c2_*` caller seqnos and one by-seqno entry per key, `c3_*` reads and
//! scans, `c4_*` rollback, `c5_*` compaction, `c6_*` revisions, `c7_*`
//! typed errors and poisoning. [`model::model_random_operations`] runs random
//! operation sequences against a `BTreeMap` model.
//!
//! This is test code: a broken contract panics with a message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cases;
pub mod model;

use crate::doc::Document;
use crate::error::StoreResult;
use crate::key::DiskKey;
use crate::mem::{DEFAULT_HISTORY, MemImage, MemStore};
use crate::store::{KeyRange, KvStore, ScanControl, ScanOptions, ScanStatus, VbStore};
use crate::sync::Arc;
use crate::types::{CollectionId, Seqno};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// How the suite opens a backend.
pub trait StoreFactory: Send + Sync {
    /// Opens the backend rooted at `dir`, or reopens it after every handle of
    /// the previous instance was dropped.
    fn open(&self, dir: &Path) -> StoreResult<Arc<dyn KvStore>>;

    /// Arms a sync failure: the next durable sync of a store under `dir`
    /// fails. Returns false when the backend cannot inject one, and the
    /// poisoning case then says so and checks nothing.
    fn inject_sync_failure(&self, _dir: &Path) -> bool {
        false
    }

    /// How many of the most recent commits a rollback must restore exactly.
    /// Beyond that a backend may roll back further, to an older commit or to
    /// zero, as the contract allows.
    fn exact_rollback_window(&self) -> usize {
        usize::MAX
    }
}

/// The factory of [`MemStore`]: one [`MemImage`] per directory stands in for
/// the files, so reopening finds the data committed before.
#[derive(Default)]
pub struct MemFactory {
    images: Mutex<HashMap<PathBuf, Arc<MemImage>>>,
}

impl StoreFactory for MemFactory {
    fn open(&self, dir: &Path) -> StoreResult<Arc<dyn KvStore>> {
        let image = Arc::clone(
            self.images
                .lock()
                .unwrap()
                .entry(dir.to_path_buf())
                .or_default(),
        );
        Ok(Arc::new(MemStore::open_image(image, DEFAULT_HISTORY)))
    }

    fn inject_sync_failure(&self, dir: &Path) -> bool {
        match self.images.lock().unwrap().get(dir) {
            Some(image) => {
                image.inject_sync_failure();
                true
            }
            None => false,
        }
    }
}

/// A backend opened on a temporary directory, which it can reopen.
pub struct Harness<'f> {
    factory: &'f dyn StoreFactory,
    dir: tempfile::TempDir,
    store: Option<Arc<dyn KvStore>>,
}

impl<'f> Harness<'f> {
    /// Opens the factory's backend on a fresh temporary directory.
    pub fn new(factory: &'f dyn StoreFactory) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = factory.open(dir.path()).expect("open backend");
        Harness {
            factory,
            dir,
            store: Some(store),
        }
    }

    /// The backend.
    pub fn store(&self) -> &Arc<dyn KvStore> {
        self.store.as_ref().expect("store is open")
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The factory.
    pub fn factory(&self) -> &'f dyn StoreFactory {
        self.factory
    }

    /// Drops the backend and opens it again. Every handle the caller holds
    /// must have been dropped first.
    pub fn reopen(&mut self) {
        self.store = None;
        self.store = Some(self.factory.open(self.dir.path()).expect("reopen backend"));
    }
}

/// A key in `cid`.
pub fn key_in(cid: CollectionId, k: &str) -> DiskKey {
    DiskKey::new(cid, k.as_bytes()).expect("valid test key")
}

/// A key in the default collection.
pub fn key(k: &str) -> DiskKey {
    key_in(CollectionId::DEFAULT, k)
}

/// A live document.
pub fn doc(k: &DiskKey, seqno: u64, value: &str) -> Document {
    Document::new(k.clone(), Seqno(seqno), value.as_bytes().to_vec())
}

/// A tombstone deleted at `when`.
pub fn tomb(k: &DiskKey, seqno: u64, when: u32) -> Document {
    Document::tombstone(k.clone(), Seqno(seqno), when)
}

/// Every document in key order, tombstones included.
pub fn all_by_key(vb: &dyn VbStore) -> Vec<Document> {
    let mut out = Vec::new();
    let status = vb
        .key_range(&KeyRange::all(), &mut |d| {
            out.push(d);
            ScanControl::Continue
        })
        .expect("key range");
    assert_eq!(status, ScanStatus::Done);
    out
}

/// Every document in seqno order over `[start, end]`.
pub fn scan_seqnos(vb: &dyn VbStore, start: u64, end: u64, include_deleted: bool) -> Vec<Document> {
    let mut out = Vec::new();
    let mut scan = vb
        .seqno_scan(
            Seqno(start),
            Seqno(end),
            ScanOptions {
                include_deleted,
                ..ScanOptions::default()
            },
        )
        .expect("seqno scan");
    let status = scan
        .run(&mut |d| {
            out.push(d);
            ScanControl::Continue
        })
        .expect("scan run");
    assert_eq!(status, ScanStatus::Done);
    out
}

/// The seqnos of `docs`.
pub fn seqnos(docs: &[Document]) -> Vec<u64> {
    docs.iter().map(|d| d.meta.seqno.0).collect()
}

/// Generates one `#[test]` per conformance case for a backend.
///
/// The argument is an expression that builds a [`StoreFactory`]; it is
/// evaluated once per test.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@cases $factory;
            c1_commit_survives_reopen,
            c1_rejected_batch_changes_nothing,
            c1_local_docs_and_vbstate_commit_with_data,
            c1_empty_commit_changes_nothing,
            c2_seqnos_must_increase,
            c2_update_replaces_seqno_entry,
            c2_duplicate_key_keeps_highest_seqno,
            c2_tombstones_stay_until_compaction,
            c2_scans_after_many_updates,
            c2_priors_give_the_same_results,
            c3_get_flags_tombstones,
            c3_get_many_keeps_order,
            c3_key_range_is_half_open,
            c3_key_range_by_collection,
            c3_seqno_scan_is_inclusive,
            c3_scan_pinned_to_snapshot,
            c3_scan_yields_and_resumes,
            c3_scan_stop_and_cancel,
            c3_scan_options,
            c3_large_values_and_many_keys,
            c4_rollback_to_exact_commit,
            c4_rollback_between_commits_goes_to_older,
            c4_rollback_reports_discarded_keys,
            c4_rollback_restores_local_and_vbstate,
            c4_rollback_then_reuse_seqnos,
            c4_rollback_survives_reopen,
            c4_rollback_past_compaction_is_consistent,
            c5_purges_only_old_tombstones,
            c5_never_purges_high_seqno,
            c5_purge_before_seqno_bounds_purging,
            c5_purges_dropped_collection_generation,
            c5_advances_purge_seqno,
            c5_commits_during_compaction_are_kept,
            c5_cancelled_compaction_changes_nothing,
            c5_reports_sizes,
            c6_create_bumps_revision,
            c6_revisions_are_isolated,
            c6_destroy_removes_only_that_revision,
            c6_destroyed_handle_fails_cleanly,
            c6_scan_outlives_destroy,
            c6_discover_keeps_newest_and_removes_stale,
            c6_create_after_compaction_gets_new_revision,
            c6_open_unknown_revision_is_error,
            c6_marked_deleted_stays_usable_but_never_comes_back,
            c7_failed_sync_poisons_until_reopen,
            c7_bad_input_is_typed_error,
            c7_impossible_priors_are_typed_errors,
        );
        #[test]
        fn model_random_operations() {
            let factory = $factory;
            $crate::testkit::model::model_random_operations(&factory);
        }
    };
    (@cases $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let factory = $factory;
                $crate::testkit::cases::$case(&factory);
            }
        )*
    };
}
