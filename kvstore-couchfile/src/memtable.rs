//! The in-memory part of the index: every change committed since the last
//! checkpoint, per key, with the commit that made it.
//!
//! A commit's record is durable in the log before its changes enter the
//! memtable, so the memtable only ever holds acknowledged state. Readers look
//! here first (the newest versions), then in the index. A checkpoint freezes
//! the memtable (a new, empty one takes the commits that follow), folds the
//! frozen one into the index trees in one pass, and drops it.
//!
//! Versions of a key are kept in commit order and never edited, so a scan
//! pinned to commit `c` sees exactly what was there at `c` by ignoring
//! versions of later commits. Only a rollback takes versions away, and it
//! does so by replacing the memtable, not by editing it.

use crate::wal::WalPtr;
use kvstore_core::{DeleteSource, DiskKey, Seqno};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// What the index holds for one document: where its current version is in
/// the log, and what counts and purging need to know of it without reading
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexRec {
    /// The version's seqno.
    pub seqno: Seqno,
    /// `Some` for a tombstone.
    pub deleted: Option<DeleteSource>,
    /// The expiry (for a tombstone, its deletion time).
    pub expiry: u32,
    /// Key plus value bytes, as counted in `data_bytes`.
    pub body: u32,
    /// The item in the log.
    pub ptr: WalPtr,
}

impl IndexRec {
    /// True for a tombstone.
    #[must_use]
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }
}

/// One change to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A new current version (a set, a delete, or a relocated copy of the
    /// same version).
    Put(IndexRec),
    /// The key is gone (a purged tombstone or a dropped collection's item).
    Purge,
}

/// A change and the commit that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// The commit number.
    pub commit: u64,
    /// The change.
    pub change: Change,
}

/// Every version of one key in this memtable.
#[derive(Debug, Clone, Default)]
pub struct KeyVersions {
    /// The version the store had before the first one here (from an older
    /// memtable or the index), needed to remove its by-seqno entry.
    pub prior: Option<IndexRec>,
    /// In commit order.
    pub versions: Vec<Version>,
}

impl KeyVersions {
    /// The newest version made at or before `commit`.
    #[must_use]
    pub fn at(&self, commit: u64) -> Option<&Version> {
        self.versions.iter().rev().find(|v| v.commit <= commit)
    }

    /// The newest version.
    #[must_use]
    pub fn last(&self) -> Option<&Version> {
        self.versions.last()
    }
}

/// Bytes one version costs, roughly (for the memory budget).
const VERSION_BYTES: usize = 48;
/// Bytes a key's entry costs beyond its versions.
const KEY_BYTES: usize = 96;

/// What the memtable holds, behind its lock.
#[derive(Debug, Default)]
pub struct MemInner {
    /// Versions by key.
    pub keys: BTreeMap<DiskKey, KeyVersions>,
    /// Seqnos of the `Put`s here (relocations reuse theirs), for seqno
    /// scans: seqno → key.
    pub by_seqno: BTreeMap<u64, DiskKey>,
    /// Local documents changed here.
    pub locals_changed: BTreeSet<String>,
    /// Estimated bytes held.
    pub bytes: usize,
    /// The newest commit applied.
    pub commits: u64,
}

/// A memtable.
#[derive(Debug, Default)]
pub struct Memtable {
    inner: RwLock<MemInner>,
}

/// What a lookup in the memtables found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A current version.
    Rec(IndexRec),
    /// The key was purged.
    Purged,
    /// Nothing here: look further.
    Missing,
}

impl Memtable {
    /// An empty memtable.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Read access.
    pub fn read(&self) -> RwLockReadGuard<'_, MemInner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Write access.
    pub fn write(&self) -> RwLockWriteGuard<'_, MemInner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The newest version of `key` made at or before `commit`.
    pub fn get(&self, key: &DiskKey, commit: u64) -> Found {
        let m = self.read();
        match m.keys.get(key).and_then(|kv| kv.at(commit)) {
            Some(Version {
                change: Change::Put(r),
                ..
            }) => Found::Rec(*r),
            Some(Version {
                change: Change::Purge,
                ..
            }) => Found::Purged,
            None => Found::Missing,
        }
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.read().bytes
    }

    /// True when nothing was applied.
    pub fn is_empty(&self) -> bool {
        let m = self.read();
        m.keys.is_empty() && m.locals_changed.is_empty()
    }
}

impl MemInner {
    /// Records a change of `key` by `commit`; `prior` is what the store
    /// held before this change (used only for the key's first version
    /// here). `new_seqno` is false for a change that keeps its seqno (a
    /// relocated copy, a purge).
    pub fn apply(
        &mut self,
        key: &DiskKey,
        commit: u64,
        change: Change,
        prior: Option<IndexRec>,
        new_seqno: bool,
    ) {
        if new_seqno && let Change::Put(r) = change {
            self.by_seqno.insert(r.seqno.0, key.clone());
            self.bytes += 32;
        }
        self.commits = self.commits.max(commit);
        match self.keys.get_mut(key) {
            Some(kv) => {
                kv.versions.push(Version { commit, change });
                self.bytes += VERSION_BYTES;
            }
            None => {
                self.bytes += KEY_BYTES + VERSION_BYTES + 2 * key.len();
                self.keys.insert(
                    key.clone(),
                    KeyVersions {
                        prior,
                        versions: vec![Version { commit, change }],
                    },
                );
            }
        }
    }

    /// Notes a changed local document.
    pub fn local_changed(&mut self, name: &str) {
        if !self.locals_changed.contains(name) {
            self.bytes += 64 + name.len();
            self.locals_changed.insert(name.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_core::CollectionId;

    fn rec(s: u64) -> IndexRec {
        IndexRec {
            seqno: Seqno(s),
            deleted: None,
            expiry: 0,
            body: 3,
            ptr: WalPtr::default(),
        }
    }

    #[test]
    fn versions_are_visible_by_commit() {
        let m = Memtable::new();
        let k = DiskKey::new(CollectionId::DEFAULT, b"k").unwrap();
        m.write().apply(&k, 5, Change::Put(rec(10)), None, true);
        m.write()
            .apply(&k, 7, Change::Put(rec(12)), Some(rec(10)), true);
        m.write().apply(&k, 9, Change::Purge, None, false);
        assert_eq!(m.get(&k, 4), Found::Missing);
        assert_eq!(m.get(&k, 5), Found::Rec(rec(10)));
        assert_eq!(m.get(&k, 8), Found::Rec(rec(12)));
        assert_eq!(m.get(&k, 9), Found::Purged);
        let inner = m.read();
        assert_eq!(inner.keys[&k].prior, None, "the first prior is kept");
        assert_eq!(inner.by_seqno.len(), 2);
    }
}
