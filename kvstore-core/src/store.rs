//! The storage contract (DESIGN §4): [`KvStore`] manages the revisions of many
//! vbuckets, and [`VbStore`] is one `(vbid, revision)` store.
//!
//! The split is deliberate: a handle pins one incarnation. A caller holding
//! an `Arc<dyn VbStore>` for revision 3 keeps talking to revision 3 even after
//! the vbucket is recreated as revision 4, so it can never read the new
//! incarnation's data by accident. The engine's access guards hold exactly
//! such a handle.

use crate::doc::{Document, LocalOp, VbucketState};
use crate::error::StoreResult;
use crate::key::DiskKey;
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::types::{CollectionId, Revision, Seqno, Vbid};
use bytes::Bytes;

/// One atomic, durable unit of change for one vbucket.
///
/// Item seqnos must all be above the store's high seqno. When a key appears
/// more than once, the version with the highest seqno wins and the others are
/// dropped, so the store still keeps one by-seqno entry per key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitBatch {
    /// Sets and deletes (a delete is a document with `meta.deleted` set).
    pub items: Vec<Document>,
    /// Local-document changes.
    pub local: Vec<LocalOp>,
    /// The vbucket state to persist with this commit, if it changed.
    pub vbstate: Option<VbucketState>,
}

impl CommitBatch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a set or a delete.
    #[must_use]
    pub fn item(mut self, doc: Document) -> Self {
        self.items.push(doc);
        self
    }

    /// Adds a local-document change.
    #[must_use]
    pub fn local(mut self, op: LocalOp) -> Self {
        self.local.push(op);
        self
    }

    /// Sets the vbucket state to persist.
    #[must_use]
    pub fn vbstate(mut self, state: VbucketState) -> Self {
        self.vbstate = Some(state);
        self
    }

    /// True when the batch changes nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty() && self.local.is_empty() && self.vbstate.is_none()
    }

    /// The highest item seqno in the batch.
    #[must_use]
    pub fn max_seqno(&self) -> Option<Seqno> {
        self.items.iter().map(|d| d.meta.seqno).max()
    }
}

/// What the caller knows about the version of one item's key that the store
/// holds *before* a commit: the item's prior. A hint, passed beside the batch
/// to [`VbStore::commit_with_priors`], that lets a backend keep its counts,
/// indexes and rollback history without reading the key first.
///
/// # What the caller promises
///
/// - [`Prior::Unknown`] promises nothing. The backend finds out for itself,
///   exactly as [`VbStore::commit`] does.
/// - [`Prior::Absent`] promises that the store holds no version of the key:
///   neither a live document nor a tombstone ([`VbStore::get`] would return
///   `None` right before the commit).
/// - [`Prior::Present`] promises that the store holds exactly this document
///   for the key, tombstone or not: [`VbStore::get`] right before the commit
///   would return a document equal to it (same key, metadata and value).
///
/// The prior always describes the store, never the batch: when a key appears
/// more than once in one batch, every occurrence carries the same prior, the
/// version stored before the commit (the kept, highest-seqno occurrence's
/// prior is the one used). After a commit failed, its outcome is unknown (it
/// may be wholly on disk or wholly absent), so a caller must not derive
/// priors from that commit's items; it passes [`Prior::Unknown`] for them, or
/// reads the keys, until a commit succeeds.
///
/// A caller that reads each key's current version before writing it (the
/// engine does, to check CAS and bump the rev seqno) has the prior already:
/// it is the document that read returned, or `Absent` when it returned none,
/// provided the read came from the store and not from items still waiting
/// to be flushed.
///
/// # What happens when a prior is wrong
///
/// Every backend checks what it can check without reading: a `Present`
/// document whose key is not the item's key, or whose seqno is not below the
/// item's, makes the whole batch fail with [`crate::StoreError::InvalidBatch`]
/// and change nothing. A backend may check more and reject the batch the same
/// way ([`crate::MemStore`] compares every prior with what it holds, so tests
/// of a caller on `MemStore` catch wrong priors).
///
/// A backend that trusts a wrong prior still commits the items exactly: every
/// read and scan returns them, and every by-seqno scan still delivers one
/// entry per key, the newest. What it does not guarantee is what depends on
/// the old version: [`StoreInfo`]'s counts and data bytes may drift, and a
/// rollback that undoes the commit may restore the wrong version of that key
/// (for example, after a wrong `Absent`, delete it instead of restoring it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prior {
    /// Nothing is known; the backend looks the key up if it needs to.
    #[default]
    Unknown,
    /// The store holds no version of the key.
    Absent,
    /// The store holds exactly this document for the key (live or tombstone).
    Present(Document),
}

impl Prior {
    /// The prior described by the result of a read of the key: `Present`
    /// for a document (tombstones included), `Absent` for none.
    #[must_use]
    pub fn from_read(doc: Option<Document>) -> Self {
        match doc {
            Some(d) => Prior::Present(d),
            None => Prior::Absent,
        }
    }
}

/// Checks what every backend checks of priors without reading: `priors` is
/// empty or has one entry per item, and every `Present` prior is a version
/// of its item's key with a lower seqno.
///
/// # Errors
/// [`crate::StoreError::InvalidBatch`] naming the first bad prior.
pub fn check_priors(vbid: Vbid, items: &[Document], priors: &[Prior]) -> StoreResult<()> {
    let invalid = |reason: String| Err(crate::StoreError::InvalidBatch { vbid, reason });
    if priors.is_empty() {
        return Ok(());
    }
    if priors.len() != items.len() {
        return invalid(format!(
            "{} priors for {} items (give none, or one per item)",
            priors.len(),
            items.len()
        ));
    }
    for (doc, prior) in items.iter().zip(priors) {
        if let Prior::Present(p) = prior {
            if p.key != doc.key {
                return invalid(format!(
                    "the prior of item {} (seqno {}) is a version of key {}",
                    doc.key, doc.meta.seqno, p.key
                ));
            }
            if p.meta.seqno >= doc.meta.seqno {
                return invalid(format!(
                    "the prior of item {} has seqno {}, not below the item's {}",
                    doc.key, p.meta.seqno, doc.meta.seqno
                ));
            }
        }
    }
    Ok(())
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitInfo {
    /// The store's high seqno after the commit.
    pub high_seqno: Seqno,
    /// Items written (after de-duplication).
    pub items: usize,
    /// Bytes appended or written, where the backend can tell.
    pub bytes_written: u64,
}

/// A half-open range of disk keys, `[start, end)`; `end: None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    /// First key included.
    pub start: Vec<u8>,
    /// First key excluded, or `None` for the end of the keyspace.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    #[must_use]
    pub fn all() -> Self {
        Self::default()
    }

    /// True when no key can fall in the range (`end <= start`).
    ///
    /// ```
    /// use kvstore_core::KeyRange;
    /// assert!(KeyRange::new(b"b", b"a").is_empty());
    /// assert!(KeyRange::new(b"a", b"a").is_empty());
    /// assert!(!KeyRange::new(b"a", b"b").is_empty());
    /// assert!(!KeyRange::all().is_empty());
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|e| e <= &self.start[..])
    }

    /// Every key of one collection.
    #[must_use]
    pub fn collection(cid: CollectionId) -> Self {
        let (start, end) = DiskKey::collection_range(cid);
        KeyRange {
            start,
            end: Some(end),
        }
    }

    /// `[start, end)`.
    #[must_use]
    pub fn new(start: &[u8], end: &[u8]) -> Self {
        KeyRange {
            start: start.to_vec(),
            end: Some(end.to_vec()),
        }
    }

    /// True when `key` falls inside the range.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= &self.start[..] && self.end.as_deref().is_none_or(|e| key < e)
    }
}

/// What a visitor wants after seeing one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanControl {
    /// Deliver the next one.
    Continue,
    /// Pause; a later [`SeqnoScan::run`] resumes after this document.
    Yield,
    /// End the scan now.
    Stop,
}

/// How a scan call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanStatus {
    /// Every document in the range was delivered.
    Done,
    /// The visitor asked to pause; call `run` again to resume.
    Yielded,
    /// The visitor stopped the scan or its cancel token was set.
    Stopped,
}

/// Options of a by-seqno scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Deliver tombstones too.
    pub include_deleted: bool,
    /// Deliver only keys and metadata (values left empty).
    pub keys_only: bool,
    /// Set from any thread to stop the scan at its next document.
    pub cancel: Option<CancelToken>,
}

/// A by-seqno scan pinned to the snapshot it was created on: commits made
/// after its creation are invisible to it. It holds whatever it needs to keep
/// that snapshot readable, so it may be parked between `run` calls (for
/// example while a replication stream waits for buffer space).
pub trait SeqnoScan: Send {
    /// The high seqno of the snapshot being scanned.
    fn snapshot_high_seqno(&self) -> Seqno;

    /// Delivers documents in seqno order until the range ends, the visitor
    /// yields or stops, or the cancel token is set.
    fn run(&mut self, visit: &mut dyn FnMut(Document) -> ScanControl) -> StoreResult<ScanStatus>;

    /// The seqno of the last document delivered, if any.
    fn last_seqno(&self) -> Option<Seqno>;
}

/// A flag another thread sets to stop a scan or a compaction.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once [`CancelToken::cancel`] was called.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A collection generation that was dropped: its items with seqnos up to
/// `end_seqno` are garbage. Items of a re-created (resurrected) collection
/// with the same id have higher seqnos and are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DroppedCollection {
    /// The collection id.
    pub cid: CollectionId,
    /// The seqno of the drop event; items at or below it are dropped.
    pub end_seqno: Seqno,
}

/// What a compaction may purge.
#[derive(Debug, Clone, Default)]
pub struct CompactionConfig {
    /// Tombstones whose deletion time is strictly below this (seconds since
    /// the epoch) may be purged. 0 purges none by time.
    pub purge_before_ts: u32,
    /// When set, only tombstones at or below this seqno may be purged.
    pub purge_before_seqno: Option<Seqno>,
    /// Purge every tombstone regardless of its age.
    pub drop_deletes: bool,
    /// Dropped collection generations whose items are purged.
    pub dropped: Vec<DroppedCollection>,
    /// Stops the compaction; the store is then left as it was.
    pub cancel: Option<CancelToken>,
}

impl CompactionConfig {
    /// True when `doc` is an item of a dropped collection generation.
    #[must_use]
    pub fn is_dropped(&self, doc: &Document) -> bool {
        let cid = doc.key.collection();
        self.dropped
            .iter()
            .any(|d| d.cid == cid && doc.meta.seqno <= d.end_seqno)
    }

    /// True when `doc` is a tombstone old enough to purge. The document at
    /// the store's high seqno is never purged, so the high seqno survives.
    #[must_use]
    pub fn purges_tombstone(&self, doc: &Document, high_seqno: Seqno) -> bool {
        if !doc.is_deleted() || doc.meta.seqno >= high_seqno {
            return false;
        }
        if self.purge_before_seqno.is_some_and(|s| doc.meta.seqno > s) {
            return false;
        }
        self.drop_deletes || doc.meta.expiry < self.purge_before_ts
    }

    /// True when the cancel token is set.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactionResult {
    /// Store size before, in bytes.
    pub bytes_before: u64,
    /// Store size after, in bytes.
    pub bytes_after: u64,
    /// Tombstones purged.
    pub tombstones_purged: u64,
    /// Items of dropped collections purged.
    pub collection_items_purged: u64,
    /// The purge seqno after the compaction.
    pub purge_seqno: Seqno,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RollbackResult {
    /// The high seqno now in force: at or below the requested seqno.
    pub high_seqno: Seqno,
    /// Every key whose state changed, so the caller can fix its memory.
    pub discarded: Vec<DiskKey>,
    /// True when history was gone and the store was emptied to seqno 0.
    pub to_zero: bool,
}

/// Sizes and counts of one store, each O(1) to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StoreInfo {
    /// The vbucket.
    pub vbid: Vbid,
    /// The revision now in use.
    pub revision: Revision,
    /// The highest seqno committed.
    pub high_seqno: Seqno,
    /// The highest seqno purged by compaction.
    pub purge_seqno: Seqno,
    /// Live documents.
    pub live_items: u64,
    /// Tombstones.
    pub deleted_items: u64,
    /// Key and value bytes of the current version of every document.
    pub data_bytes: u64,
    /// Bytes the store takes on disk (or in memory for `MemStore`).
    pub file_bytes: u64,
    /// Bytes the backend's own space reclamation has given back to the
    /// filesystem over the revision's life (0 for a backend that leaves
    /// this to its library, as RocksDB's compaction does).
    pub reclaimed_bytes: u64,
    /// Reclamation passes started since the store was opened.
    pub reclaim_passes: u64,
    /// True while a reclamation pass runs.
    pub reclaiming: bool,
}

impl StoreInfo {
    /// The share of the store taken by stale data, from 0.0 to 1.0.
    #[must_use]
    pub fn fragmentation(&self) -> f64 {
        if self.file_bytes == 0 {
            return 0.0;
        }
        let stale = self.file_bytes.saturating_sub(self.data_bytes);
        stale as f64 / self.file_bytes as f64
    }
}

/// One vbucket incarnation's store. All methods take `&self`; a backend
/// serialises writers internally (the engine's flusher is the only writer of
/// a vbucket, but compaction runs beside it).
pub trait VbStore: Send + Sync {
    /// The vbucket.
    fn vbid(&self) -> Vbid;

    /// The revision in use now. A backend may move to a new revision when it
    /// compacts (couchfile does); the incarnation stays the same.
    fn revision(&self) -> Revision;

    /// Applies the batch atomically and durably (DESIGN §4.1, §4.2).
    fn commit(&self, batch: CommitBatch) -> StoreResult<CommitInfo>;

    /// [`VbStore::commit`] with a [`Prior`] per item of `batch.items`, in the
    /// same order (or none at all: an empty `priors` is exactly `commit`).
    /// The observable result is the same as `commit`'s whenever the priors
    /// are right; see [`Prior`] for what the caller promises and what a
    /// wrong prior can do.
    ///
    /// The default checks the priors with [`check_priors`] and ignores them;
    /// a backend that can use them to avoid reading keys overrides it.
    fn commit_with_priors(
        &self,
        batch: CommitBatch,
        priors: Vec<Prior>,
    ) -> StoreResult<CommitInfo> {
        check_priors(self.vbid(), &batch.items, &priors)?;
        self.commit(batch)
    }

    /// One document, tombstones included.
    fn get(&self, key: &DiskKey) -> StoreResult<Option<Document>>;

    /// Many documents, in the order of `keys`.
    fn get_many(&self, keys: &[DiskKey]) -> StoreResult<Vec<Option<Document>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }

    /// Visits documents in key order within `range`, tombstones included.
    /// A key-range read does not resume: `Yield` ends it like `Stop`.
    fn key_range(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> StoreResult<ScanStatus>;

    /// A by-seqno scan of `[start, end]`, pinned to the current snapshot.
    fn seqno_scan(
        &self,
        start: Seqno,
        end: Seqno,
        opts: ScanOptions,
    ) -> StoreResult<Box<dyn SeqnoScan>>;

    /// Restores the newest commit whose high seqno is at or below `to`
    /// (DESIGN §4.4).
    fn rollback(&self, to: Seqno) -> StoreResult<RollbackResult>;

    /// Purges per `config` (DESIGN §4.5). Commits may run concurrently.
    fn compact(&self, config: &CompactionConfig) -> StoreResult<CompactionResult>;

    /// A local document.
    fn get_local(&self, name: &str) -> StoreResult<Option<Bytes>>;

    /// Every local document, in name order.
    fn list_local(&self) -> StoreResult<Vec<(String, Bytes)>>;

    /// The persisted vbucket state, with `high_seqno` and `purge_seqno` filled
    /// from the store itself; `None` when no state was ever committed.
    fn vbstate(&self) -> StoreResult<Option<VbucketState>>;

    /// Counts and sizes.
    fn info(&self) -> StoreResult<StoreInfo>;
}

/// A backend: the stores of every vbucket revision under one root.
///
/// It must be usable as `Arc<dyn KvStore>` so the engine can pick a backend
/// at run time.
///
/// ```
/// use kvstore_core::{
///     CollectionId, CommitBatch, DiskKey, Document, KvStore, MemStore, ScanControl,
///     ScanOptions, Seqno, Vbid,
/// };
/// use std::sync::Arc;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let backend: Arc<dyn KvStore> = Arc::new(MemStore::new());
/// let vb = backend.create(Vbid(3))?;
/// let key = DiskKey::new(CollectionId::DEFAULT, b"hello")?;
/// vb.commit(CommitBatch::new().item(Document::new(key.clone(), Seqno(1), "world")))?;
///
/// let doc = vb.get(&key)?.expect("committed");
/// assert_eq!(&doc.value[..], b"world");
///
/// let mut seen = Vec::new();
/// let mut scan = vb.seqno_scan(Seqno(1), Seqno(u64::MAX), ScanOptions::default())?;
/// scan.run(&mut |d| {
///     seen.push(d.meta.seqno);
///     ScanControl::Continue
/// })?;
/// assert_eq!(seen, [Seqno(1)]);
/// # Ok(())
/// # }
/// ```
pub trait KvStore: Send + Sync {
    /// A short backend name for logs and reports.
    fn backend_name(&self) -> &'static str;

    /// Lets go of the data directory before the store is dropped: stops
    /// background work, waits for the commit or maintenance step in
    /// progress, and releases the directory lock, so that another instance
    /// may open it at once. Every acknowledged commit was durable already;
    /// close adds nothing to that. Later calls on the store, and on handles
    /// it gave out, fail with [`crate::StoreError::Closed`] (a backend that
    /// holds no exclusive lock may keep serving them). Closing twice does
    /// nothing.
    fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    /// Finds the newest revision of every vbucket, removing stale revisions
    /// and temporary files. Called once at startup.
    fn discover(&self) -> StoreResult<Vec<(Vbid, Revision)>>;

    /// Creates a new, empty incarnation of `vbid` with a revision above every
    /// revision this backend has used for it.
    fn create(&self, vbid: Vbid) -> StoreResult<Arc<dyn VbStore>>;

    /// Opens an existing revision. Opening a revision that is already open
    /// returns the same handle, unless that handle is poisoned: then a fresh
    /// handle on what is durable is returned (the poisoned one stays
    /// poisoned for whoever still holds it). This is how a caller recovers
    /// from a failed sync without reopening the whole backend.
    fn open(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<dyn VbStore>>;

    /// Makes the coming deletion of this revision durable, without
    /// disturbing handles and scans still using it: after a crash or restart,
    /// [`KvStore::discover`] must not find it, even if [`KvStore::destroy`]
    /// never ran. The engine calls it when a vbucket is deleted, long before
    /// the last reader lets go.
    fn mark_deleted(&self, vbid: Vbid, revision: Revision) -> StoreResult<()>;

    /// Removes exactly this revision. Handles still open on it fail with
    /// [`crate::StoreError::Deleted`] from then on, except scans already
    /// pinned, which finish on their snapshot.
    fn destroy(&self, vbid: Vbid, revision: Revision) -> StoreResult<()>;
}
