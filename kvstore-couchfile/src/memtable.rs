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
//!
//! # Layout
//!
//! The memtable is what bounds how many commits a checkpoint folds at once,
//! so it is kept compact: keys live in one byte arena, each key's newest
//! version in one fixed-size entry, older versions (rare: a key changed
//! twice between checkpoints) in a side list, and a hash table (SipHash,
//! keyed per process, as client keys are hashed) maps a key to its entry,
//! so point lookups compare one key rather than the long shared prefixes an
//! ordered map would walk through. About 100 bytes per key. Ordered walks
//! (key ranges, checkpoints) sort the entries they need.

use crate::wal::WalPtr;
use hashbrown::HashTable;
use kvstore_core::{DeleteSource, DiskKey, Seqno};
use std::collections::BTreeSet;
use std::hash::BuildHasher;
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

const NONE: u32 = u32::MAX;

/// One key: where its bytes are, its newest version, and what the store
/// had before the first version here.
#[derive(Debug, Clone, Copy)]
struct Entry {
    key_off: u32,
    key_len: u16,
    newest: Version,
    /// The seqno of the version the store had before this memtable (0:
    /// none), whose by-seqno entry a checkpoint removes.
    prior_seqno: u64,
    /// The next older version here, in `older` (or `NONE`).
    older: u32,
}

/// An older version of a key, chained newest first.
#[derive(Debug, Clone, Copy)]
struct Older {
    version: Version,
    next: u32,
}

/// A key's versions, as a walk over the memtable returns them.
#[derive(Debug, Clone, Copy)]
pub struct KeyVersions<'a> {
    m: &'a MemInner,
    e: &'a Entry,
}

impl KeyVersions<'_> {
    /// The newest version made at or before `commit`.
    #[must_use]
    pub fn at(&self, commit: u64) -> Option<Version> {
        if self.e.newest.commit <= commit {
            return Some(self.e.newest);
        }
        let mut i = self.e.older;
        while i != NONE {
            let o = *self.m.older.get(i as usize);
            if o.version.commit <= commit {
                return Some(o.version);
            }
            i = o.next;
        }
        None
    }

    /// The newest version.
    #[must_use]
    pub fn last(&self) -> Version {
        self.e.newest
    }

    /// The seqno the store had for the key before this memtable.
    #[must_use]
    pub fn prior_seqno(&self) -> Option<Seqno> {
        (self.e.prior_seqno != 0).then_some(Seqno(self.e.prior_seqno))
    }
}

/// Elements per chunk of a [`Chunked`].
const CHUNK: usize = 4096;

/// A vector grown a fixed-size chunk at a time: nothing is moved when it
/// grows (no copy under the memtable's lock), and at most one chunk is
/// unused (no doubling slack).
#[derive(Debug)]
struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Copy> Chunked<T> {
    fn push(&mut self, t: T) {
        match self.chunks.last_mut() {
            Some(c) if c.len() < CHUNK => c.push(t),
            _ => {
                let mut c = Vec::with_capacity(CHUNK);
                c.push(t);
                self.chunks.push(c);
            }
        }
        self.len += 1;
    }

    fn get(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    fn get_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }

    fn last(&self) -> Option<&T> {
        self.chunks.last().and_then(|c| c.last())
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The first index whose element fails `pred` (elements ordered so
    /// that `pred` holds for a prefix).
    fn partition_point(&self, pred: impl Fn(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(self.get(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn bytes(&self) -> usize {
        self.chunks.len() * CHUNK * std::mem::size_of::<T>()
    }
}

/// Bytes per chunk of the key arena; a key never straddles two chunks.
const ARENA_CHUNK: usize = 64 << 10;

/// Keys, appended in chunks (no copy when it grows). A key is named by its
/// offset: chunk number times [`ARENA_CHUNK`] plus its place in the chunk.
#[derive(Debug, Default)]
struct Arena {
    chunks: Vec<Vec<u8>>,
}

impl Arena {
    fn push(&mut self, k: &[u8]) -> u32 {
        let fits = self
            .chunks
            .last()
            .is_some_and(|c| c.len() + k.len() <= ARENA_CHUNK);
        if !fits {
            self.chunks
                .push(Vec::with_capacity(ARENA_CHUNK.max(k.len())));
        }
        let n = self.chunks.len() - 1;
        let c = &mut self.chunks[n];
        let off = n * ARENA_CHUNK + c.len();
        c.extend_from_slice(k);
        off as u32
    }

    fn get(&self, off: u32, len: u16) -> &[u8] {
        let (c, at) = (off as usize / ARENA_CHUNK, off as usize % ARENA_CHUNK);
        &self.chunks[c][at..at + usize::from(len)]
    }

    fn bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// What the memtable holds, behind its lock.
#[derive(Debug)]
pub struct MemInner {
    hasher: foldhash::fast::RandomState,
    table: HashTable<u32>,
    entries: Chunked<Entry>,
    arena: Arena,
    older: Chunked<Older>,
    /// New seqnos here (relocations and purges keep theirs), ascending:
    /// seqno and entry.
    by_seqno: Chunked<(u64, u32)>,
    /// Local documents changed here.
    pub locals_changed: BTreeSet<String>,
    /// The newest commit applied.
    pub commits: u64,
}

impl Default for MemInner {
    fn default() -> Self {
        MemInner {
            hasher: foldhash::fast::RandomState::default(),
            table: HashTable::new(),
            entries: Chunked::default(),
            arena: Arena::default(),
            older: Chunked::default(),
            by_seqno: Chunked::default(),
            locals_changed: BTreeSet::new(),
            commits: 0,
        }
    }
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

impl Found {
    fn of(v: Option<Version>) -> Found {
        match v {
            Some(Version {
                change: Change::Put(r),
                ..
            }) => Found::Rec(r),
            Some(Version {
                change: Change::Purge,
                ..
            }) => Found::Purged,
            None => Found::Missing,
        }
    }
}

impl Memtable {
    /// An empty memtable.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty memtable hashing as this one does, so one hash of a key
    /// serves both (see [`Memtable::hash`]).
    #[must_use]
    pub fn successor(&self) -> Self {
        let m = self.read();
        // About as many keys as the last one held: room in the table from
        // the start, so it does not grow (rehash) step by step.
        Memtable {
            inner: RwLock::new(MemInner {
                hasher: m.hasher.clone(),
                table: HashTable::with_capacity(m.entries.len),
                ..MemInner::default()
            }),
        }
    }

    /// The hash of `key` in this memtable and its successors.
    pub fn hash(&self, key: &DiskKey) -> u64 {
        self.read().hasher.hash_one(key.as_bytes())
    }

    /// [`Memtable::get`] with the key's hash already computed.
    pub fn get_hashed(&self, key: &DiskKey, hash: u64, commit: u64) -> Found {
        let m = self.read();
        Found::of(
            m.versions_hashed(key.as_bytes(), hash)
                .and_then(|kv| kv.at(commit)),
        )
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
        Found::of(m.versions(key.as_bytes()).and_then(|kv| kv.at(commit)))
    }

    /// Estimated bytes held.
    pub fn bytes(&self) -> usize {
        self.read().held()
    }

    /// True when nothing was applied.
    pub fn is_empty(&self) -> bool {
        let m = self.read();
        m.entries.len == 0 && m.locals_changed.is_empty()
    }
}

impl MemInner {
    fn key_of(&self, e: &Entry) -> &[u8] {
        self.arena.get(e.key_off, e.key_len)
    }

    fn find_hashed(&self, key: &[u8], h: u64) -> Option<u32> {
        self.table
            .find(h, |&i| self.key_of(self.entries.get(i as usize)) == key)
            .copied()
    }

    fn versions(&self, key: &[u8]) -> Option<KeyVersions<'_>> {
        self.versions_hashed(key, self.hasher.hash_one(key))
    }

    fn versions_hashed(&self, key: &[u8], h: u64) -> Option<KeyVersions<'_>> {
        self.find_hashed(key, h).map(|i| KeyVersions {
            m: self,
            e: self.entries.get(i as usize),
        })
    }

    /// The newest version of `key`.
    #[must_use]
    pub fn current(&self, key: &DiskKey) -> Found {
        Found::of(self.versions(key.as_bytes()).map(|kv| kv.last()))
    }

    /// Keys here.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len
    }

    /// True when no key is here.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.len == 0
    }

    /// Records a change of `key` by `commit`; `prior` is what the store
    /// held before this change (used only for the key's first version
    /// here). `new_seqno` is false for a change that keeps its seqno (a
    /// relocated copy, a purge). New seqnos must be applied in ascending
    /// order.
    pub fn apply(
        &mut self,
        key: &DiskKey,
        commit: u64,
        change: Change,
        prior: Option<IndexRec>,
        new_seqno: bool,
    ) {
        let h = self.hasher.hash_one(key.as_bytes());
        self.apply_hashed(key, h, commit, change, prior, new_seqno);
    }

    /// [`MemInner::apply`] with the key's hash already computed.
    pub fn apply_hashed(
        &mut self,
        key: &DiskKey,
        h: u64,
        commit: u64,
        change: Change,
        prior: Option<IndexRec>,
        new_seqno: bool,
    ) {
        self.commits = self.commits.max(commit);
        let v = Version { commit, change };
        let idx = match self.find_hashed(key.as_bytes(), h) {
            Some(i) => {
                let older_at = self.older.len as u32;
                let e = self.entries.get_mut(i as usize);
                let old = Older {
                    version: e.newest,
                    next: e.older,
                };
                e.newest = v;
                e.older = older_at;
                self.older.push(old);
                i
            }
            None => {
                let k = key.as_bytes();
                let i = self.entries.len as u32;
                let key_off = self.arena.push(k);
                self.entries.push(Entry {
                    key_off,
                    key_len: k.len() as u16,
                    newest: v,
                    prior_seqno: prior.map_or(0, |p| p.seqno.0),
                    older: NONE,
                });
                let (entries, arena, hasher) = (&self.entries, &self.arena, &self.hasher);
                self.table.insert_unique(h, i, |&j| {
                    let e = entries.get(j as usize);
                    hasher.hash_one(arena.get(e.key_off, e.key_len))
                });
                i
            }
        };
        if new_seqno && let Change::Put(r) = change {
            debug_assert!(self.by_seqno.last().is_none_or(|l| l.0 < r.seqno.0));
            self.by_seqno.push((r.seqno.0, idx));
        }
    }

    /// Notes a changed local document.
    pub fn local_changed(&mut self, name: &str) {
        if !self.locals_changed.contains(name) {
            self.locals_changed.insert(name.to_owned());
        }
    }

    /// Bytes held: what the chunks reserve, and the hash table's share
    /// for the keys here (about ten bytes a key at its load factor; what a
    /// successor reserves in advance is counted as it fills).
    #[must_use]
    pub fn held(&self) -> usize {
        self.entries.bytes()
            + self.arena.bytes()
            + self.older.bytes()
            + self.by_seqno.bytes()
            + self.entries.len * 10
            + self
                .locals_changed
                .iter()
                .map(|n| n.len() + 64)
                .sum::<usize>()
    }

    /// The keys in `[start, end)`, sorted, with their versions.
    #[must_use]
    pub fn range(&self, start: &[u8], end: Option<&[u8]>) -> Vec<(&[u8], KeyVersions<'_>)> {
        let mut v: Vec<(&[u8], KeyVersions<'_>)> = self
            .entries
            .iter()
            .map(|e| (self.key_of(e), KeyVersions { m: self, e }))
            .filter(|(k, _)| *k >= start && end.is_none_or(|e| *k < e))
            .collect();
        // A document store's keys share long prefixes: compare the 16
        // bytes after the prefix common to all of them first, as integers,
        // and whole keys only on a tie.
        let common = v.first().map_or(0, |first| {
            v.iter().fold(first.0.len(), |n, (k, _)| {
                n.min(
                    first
                        .0
                        .iter()
                        .zip(k.iter())
                        .take_while(|(a, b)| a == b)
                        .count(),
                )
            })
        });
        let head = |k: &[u8]| -> u128 {
            let mut b = [0u8; 16];
            let tail = k.get(common..).unwrap_or(&[]);
            let n = tail.len().min(16);
            b[..n].copy_from_slice(&tail[..n]);
            u128::from_be_bytes(b)
        };
        let mut keyed: Vec<(u128, (&[u8], KeyVersions<'_>))> =
            v.drain(..).map(|e| (head(e.0), e)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.0.cmp(b.1.0)));
        keyed.into_iter().map(|(_, e)| e).collect()
    }

    /// The by-seqno entries with `from <= seqno <= to`: seqno and key
    /// bytes.
    #[must_use]
    pub fn seqnos(&self, from: u64, to: u64) -> Vec<(u64, &[u8])> {
        let lo = self.by_seqno.partition_point(|e| e.0 < from);
        let hi = self.by_seqno.partition_point(|e| e.0 <= to).max(lo);
        (lo..hi)
            .map(|j| {
                let &(s, i) = self.by_seqno.get(j);
                (s, self.key_of(self.entries.get(i as usize)))
            })
            .collect()
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
        m.write()
            .apply(&k, 5, Change::Put(rec(10)), Some(rec(3)), true);
        m.write()
            .apply(&k, 7, Change::Put(rec(12)), Some(rec(10)), true);
        m.write().apply(&k, 9, Change::Purge, None, false);
        assert_eq!(m.get(&k, 4), Found::Missing);
        assert_eq!(m.get(&k, 5), Found::Rec(rec(10)));
        assert_eq!(m.get(&k, 8), Found::Rec(rec(12)));
        assert_eq!(m.get(&k, 9), Found::Purged);
        let inner = m.read();
        let r = inner.range(b"", None);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].1.prior_seqno(),
            Some(Seqno(3)),
            "the first prior is kept"
        );
        assert_eq!(inner.seqnos(11, 100).len(), 1);
        assert_eq!(inner.seqnos(0, 9).len(), 0);
        assert!(inner.held() > 0);
    }

    #[test]
    fn many_keys_hash_and_sort() {
        let m = Memtable::new();
        for i in (0..5000u64).rev() {
            let k = DiskKey::new(CollectionId::DEFAULT, format!("key{i:08}").as_bytes()).unwrap();
            m.write()
                .apply(&k, 1, Change::Put(rec(10_000 - i)), None, true);
        }
        let inner = m.read();
        assert_eq!(inner.len(), 5000);
        let r = inner.range(b"\x00key00001000", Some(b"\x00key00002000"));
        assert_eq!(r.len(), 1000);
        assert!(r.windows(2).all(|w| w[0].0 < w[1].0));
        let k = DiskKey::new(CollectionId::DEFAULT, b"key00000042").unwrap();
        assert_eq!(inner.current(&k), Found::Rec(rec(10_000 - 42)));
    }
}
