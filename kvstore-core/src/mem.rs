//! `MemStore`: an in-memory backend that honours the whole contract.
//!
//! It is the reference model for property tests, the engine's fast unit-test
//! backend, and the store of a memory-only bucket. Its "disk" is a
//! [`MemImage`]: a new `MemStore` over the same image behaves like a reopen
//! (open handles, caches and poisoning are gone; committed data is there).
//!
//! Snapshots are copy-on-write: a scan pins an `Arc` of the vbucket's data,
//! and a commit copies the data only while such a scan is alive. Rollback
//! keeps an undo record per commit, up to a configurable number of commits;
//! compaction clears that history, as compacting a couchfile drops its old
//! headers.

use crate::batch::{PreparedBatch, prepare_with_priors};
use crate::doc::{Document, VBSTATE_LOCAL_NAME, VbucketState};
use crate::error::{StoreError, StoreResult};
use crate::key::DiskKey;
use crate::store::{
    CommitBatch, CommitInfo, CompactionConfig, CompactionResult, KeyRange, KvStore, Prior,
    RollbackResult, ScanControl, ScanOptions, ScanStatus, SeqnoScan, StoreInfo, VbStore,
};
use crate::sync::{Arc, AtomicBool, Mutex, Ordering, RwLock, lock, read, write};
use crate::types::{Revision, Seqno, Vbid};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Weak;

/// Per-document bookkeeping bytes counted in `file_bytes`.
const DOC_OVERHEAD: u64 = 64;

/// The default number of commits a vbucket can be rolled back through.
pub const DEFAULT_HISTORY: usize = 1024;

/// The state a [`MemStore`] stands on, shared by every `MemStore` opened on
/// it. Dropping every `MemStore` does not drop the image.
#[derive(Default)]
pub struct MemImage {
    vbuckets: Mutex<BTreeMap<Vbid, VbRevisions>>,
    fail_next_sync: AtomicBool,
}

impl std::fmt::Debug for MemImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemImage").finish_non_exhaustive()
    }
}

impl MemImage {
    /// A new, empty image.
    #[must_use]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Makes the next commit of any vbucket fail as if its sync had failed,
    /// which poisons that handle until the store is reopened.
    pub fn inject_sync_failure(&self) {
        self.fail_next_sync.store(true, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct VbRevisions {
    highest: u64,
    live: BTreeMap<Revision, Arc<VbCell>>,
}

struct VbCell {
    data: RwLock<Arc<VbData>>,
    writer: Mutex<VecDeque<Undo>>,
    deleted: AtomicBool,
    /// Marked for deletion: a reopen does not find it.
    doomed: AtomicBool,
}

impl VbCell {
    fn new() -> Arc<Self> {
        Arc::new(VbCell {
            data: RwLock::new(Arc::new(VbData::default())),
            writer: Mutex::new(VecDeque::new()),
            deleted: AtomicBool::new(false),
            doomed: AtomicBool::new(false),
        })
    }
}

#[derive(Clone, Default)]
struct VbData {
    by_key: BTreeMap<DiskKey, Document>,
    by_seqno: BTreeMap<Seqno, DiskKey>,
    local: BTreeMap<String, Bytes>,
    high_seqno: Seqno,
    purge_seqno: Seqno,
    live: u64,
    deleted: u64,
    data_bytes: u64,
    local_bytes: u64,
}

/// How to undo one commit.
struct Undo {
    high_before: Seqno,
    items: Vec<(DiskKey, Option<Document>)>,
    local: Vec<(String, Option<Bytes>)>,
}

impl VbData {
    fn account(&mut self, doc: &Document, add: bool) {
        let (counter, bytes) = if doc.is_deleted() {
            (&mut self.deleted, doc.body_size())
        } else {
            (&mut self.live, doc.body_size())
        };
        if add {
            *counter += 1;
            self.data_bytes += bytes;
        } else {
            *counter -= 1;
            self.data_bytes -= bytes;
        }
    }

    fn put(&mut self, doc: Document) -> Option<Document> {
        let prev = self.remove(&doc.key);
        self.account(&doc, true);
        self.by_seqno.insert(doc.meta.seqno, doc.key.clone());
        self.by_key.insert(doc.key.clone(), doc);
        prev
    }

    fn remove(&mut self, key: &DiskKey) -> Option<Document> {
        let prev = self.by_key.remove(key)?;
        self.by_seqno.remove(&prev.meta.seqno);
        self.account(&prev, false);
        Some(prev)
    }

    fn set_local(&mut self, name: String, value: Option<Bytes>) -> Option<Bytes> {
        let prev = match value {
            Some(v) => {
                self.local_bytes += v.len() as u64;
                self.local.insert(name, v)
            }
            None => self.local.remove(&name),
        };
        if let Some(p) = &prev {
            self.local_bytes -= p.len() as u64;
        }
        prev
    }

    fn apply(&mut self, batch: PreparedBatch) -> Undo {
        let mut undo = Undo {
            high_before: self.high_seqno,
            items: Vec::with_capacity(batch.items.len()),
            local: Vec::with_capacity(batch.local.len()),
        };
        if let Some(max) = batch.max_seqno {
            self.high_seqno = max;
        }
        for doc in batch.items {
            let key = doc.key.clone();
            undo.items.push((key, self.put(doc)));
        }
        for (name, value) in batch.local {
            let prev = self.set_local(name.clone(), value);
            undo.local.push((name, prev));
        }
        undo
    }

    fn undo(&mut self, undo: Undo, discarded: &mut BTreeSet<DiskKey>) {
        for (key, prev) in undo.items.into_iter().rev() {
            self.remove(&key);
            if let Some(p) = prev {
                self.put(p);
            }
            discarded.insert(key);
        }
        for (name, prev) in undo.local.into_iter().rev() {
            self.set_local(name, prev);
        }
        self.high_seqno = undo.high_before;
    }

    fn file_bytes(&self) -> u64 {
        self.data_bytes + (self.live + self.deleted) * DOC_OVERHEAD + self.local_bytes
    }
}

/// An in-memory [`KvStore`]. See the module docs.
pub struct MemStore {
    image: Arc<MemImage>,
    handles: Mutex<HashMap<(Vbid, Revision), Weak<MemVbStore>>>,
    history: usize,
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore")
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    /// A store on a fresh image, with [`DEFAULT_HISTORY`] commits of rollback
    /// history per vbucket.
    #[must_use]
    pub fn new() -> Self {
        Self::open_image(MemImage::new(), DEFAULT_HISTORY)
    }

    /// A store on an existing image: the in-memory equivalent of reopening a
    /// directory. `history` bounds the commits a rollback can undo.
    #[must_use]
    pub fn open_image(image: Arc<MemImage>, history: usize) -> Self {
        MemStore {
            image,
            handles: Mutex::new(HashMap::new()),
            history,
        }
    }

    /// The image under this store.
    #[must_use]
    pub fn image(&self) -> Arc<MemImage> {
        Arc::clone(&self.image)
    }

    fn handle(&self, vbid: Vbid, revision: Revision, cell: Arc<VbCell>) -> Arc<dyn VbStore> {
        let mut handles = lock(&self.handles);
        if let Some(h) = handles
            .get(&(vbid, revision))
            .and_then(Weak::upgrade)
            .filter(|h| lock(&h.poisoned).is_none())
        {
            return h;
        }
        handles.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(MemVbStore {
            vbid,
            revision,
            cell,
            image: Arc::clone(&self.image),
            poisoned: Mutex::new(None),
            history: self.history,
        });
        handles.insert((vbid, revision), Arc::downgrade(&h));
        h
    }
}

impl KvStore for MemStore {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn discover(&self) -> StoreResult<Vec<(Vbid, Revision)>> {
        let mut vbs = lock(&self.image.vbuckets);
        let mut found = Vec::new();
        for (vbid, revs) in vbs.iter_mut() {
            revs.live.retain(|rev, cell| {
                let doomed = cell.doomed.load(Ordering::SeqCst);
                if doomed {
                    cell.deleted.store(true, Ordering::SeqCst);
                    tracing::info!(%vbid, revision = %rev, "removed a revision marked deleted");
                }
                !doomed
            });
            let Some(newest) = revs.live.keys().next_back().copied() else {
                continue;
            };
            let stale: Vec<Revision> = revs.live.range(..newest).map(|(r, _)| *r).collect();
            for r in stale {
                if let Some(cell) = revs.live.remove(&r) {
                    cell.deleted.store(true, Ordering::SeqCst);
                    tracing::info!(%vbid, revision = %r, "removed stale revision");
                }
            }
            found.push((*vbid, newest));
        }
        Ok(found)
    }

    fn create(&self, vbid: Vbid) -> StoreResult<Arc<dyn VbStore>> {
        let (revision, cell) = {
            let mut vbs = lock(&self.image.vbuckets);
            let revs = vbs.entry(vbid).or_default();
            revs.highest += 1;
            let revision = Revision(revs.highest);
            let cell = VbCell::new();
            revs.live.insert(revision, Arc::clone(&cell));
            (revision, cell)
        };
        Ok(self.handle(vbid, revision, cell))
    }

    fn open(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<dyn VbStore>> {
        let cell = lock(&self.image.vbuckets)
            .get(&vbid)
            .and_then(|r| r.live.get(&revision))
            .cloned()
            .ok_or(StoreError::NoSuchRevision { vbid, revision })?;
        Ok(self.handle(vbid, revision, cell))
    }

    fn mark_deleted(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let vbs = lock(&self.image.vbuckets);
        let cell = vbs
            .get(&vbid)
            .and_then(|r| r.live.get(&revision))
            .ok_or(StoreError::NoSuchRevision { vbid, revision })?;
        cell.doomed.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn destroy(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let cell = lock(&self.image.vbuckets)
            .get_mut(&vbid)
            .and_then(|r| r.live.remove(&revision))
            .ok_or(StoreError::NoSuchRevision { vbid, revision })?;
        cell.deleted.store(true, Ordering::SeqCst);
        Ok(())
    }
}

struct MemVbStore {
    vbid: Vbid,
    revision: Revision,
    cell: Arc<VbCell>,
    image: Arc<MemImage>,
    poisoned: Mutex<Option<String>>,
    history: usize,
}

impl MemVbStore {
    fn path(&self) -> PathBuf {
        PathBuf::from(format!("mem:{}.{}", self.vbid.0, self.revision.0))
    }

    fn check(&self) -> StoreResult<()> {
        if self.cell.deleted.load(Ordering::SeqCst) {
            return Err(StoreError::Deleted {
                vbid: self.vbid,
                revision: self.revision,
            });
        }
        if let Some(cause) = lock(&self.poisoned).clone() {
            return Err(StoreError::Poisoned {
                path: self.path(),
                cause,
            });
        }
        Ok(())
    }

    fn snapshot(&self) -> StoreResult<Arc<VbData>> {
        self.check()?;
        Ok(Arc::clone(&read(&self.cell.data)))
    }
}

impl VbStore for MemVbStore {
    fn vbid(&self) -> Vbid {
        self.vbid
    }

    fn revision(&self) -> Revision {
        self.revision
    }

    fn commit(&self, batch: CommitBatch) -> StoreResult<CommitInfo> {
        self.commit_with_priors(batch, Vec::new())
    }

    /// Checks every prior against the stored version and refuses the whole
    /// batch when one is wrong, so a caller's tests on `MemStore` catch the
    /// priors a trusting backend would silently take.
    fn commit_with_priors(
        &self,
        batch: CommitBatch,
        priors: Vec<Prior>,
    ) -> StoreResult<CommitInfo> {
        self.check()?;
        let mut history = lock(&self.cell.writer);
        let high = read(&self.cell.data).high_seqno;
        let (prepared, priors) = prepare_with_priors(self.vbid, high, batch, priors)?;
        {
            let data = read(&self.cell.data);
            for (doc, prior) in prepared.items.iter().zip(&priors) {
                let stored = data.by_key.get(&doc.key);
                let right = match prior {
                    Prior::Unknown => true,
                    Prior::Absent => stored.is_none(),
                    Prior::Present(p) => stored == Some(p),
                };
                if !right {
                    return Err(StoreError::InvalidBatch {
                        vbid: self.vbid,
                        reason: format!(
                            "the prior of {} is {prior:?}, but the store holds {stored:?}",
                            doc.key
                        ),
                    });
                }
            }
        }
        if self.image.fail_next_sync.swap(false, Ordering::SeqCst) {
            let err = io::Error::other("injected sync failure");
            *lock(&self.poisoned) = Some(err.to_string());
            return Err(StoreError::io("sync", self.path(), err));
        }
        let items = prepared.items.len();
        let bytes_written = prepared.items.iter().map(Document::body_size).sum();
        let mut guard = write(&self.cell.data);
        let data = Arc::make_mut(&mut guard);
        let undo = data.apply(prepared);
        history.push_back(undo);
        while history.len() > self.history {
            history.pop_front();
        }
        Ok(CommitInfo {
            high_seqno: data.high_seqno,
            items,
            bytes_written,
        })
    }

    fn get(&self, key: &DiskKey) -> StoreResult<Option<Document>> {
        self.check()?;
        Ok(read(&self.cell.data).by_key.get(key).cloned())
    }

    fn get_many(&self, keys: &[DiskKey]) -> StoreResult<Vec<Option<Document>>> {
        self.check()?;
        let data = read(&self.cell.data);
        Ok(keys.iter().map(|k| data.by_key.get(k).cloned()).collect())
    }

    fn key_range(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> StoreResult<ScanStatus> {
        let snap = self.snapshot()?;
        if range.is_empty() {
            return Ok(ScanStatus::Done);
        }
        let end = range
            .end
            .as_deref()
            .map_or(Bound::Unbounded, Bound::Excluded);
        let bounds: (Bound<&[u8]>, Bound<&[u8]>) = (Bound::Included(&range.start[..]), end);
        for (_, doc) in snap.by_key.range::<[u8], _>(bounds) {
            match visit(doc.clone()) {
                ScanControl::Continue => {}
                ScanControl::Yield | ScanControl::Stop => return Ok(ScanStatus::Stopped),
            }
        }
        Ok(ScanStatus::Done)
    }

    fn seqno_scan(
        &self,
        start: Seqno,
        end: Seqno,
        opts: ScanOptions,
    ) -> StoreResult<Box<dyn SeqnoScan>> {
        let snap = self.snapshot()?;
        Ok(Box::new(MemScan {
            snap,
            next: Some(start),
            end,
            opts,
            last: None,
        }))
    }

    fn rollback(&self, to: Seqno) -> StoreResult<RollbackResult> {
        self.check()?;
        let mut history = lock(&self.cell.writer);
        let mut guard = write(&self.cell.data);
        if guard.high_seqno <= to {
            return Ok(RollbackResult {
                high_seqno: guard.high_seqno,
                ..RollbackResult::default()
            });
        }
        let data = Arc::make_mut(&mut guard);
        let mut discarded = BTreeSet::new();
        while data.high_seqno > to {
            let Some(undo) = history.pop_back() else {
                break;
            };
            data.undo(undo, &mut discarded);
        }
        let to_zero = data.high_seqno > to;
        if to_zero {
            discarded.extend(data.by_key.keys().cloned());
            *data = VbData::default();
            history.clear();
        }
        Ok(RollbackResult {
            high_seqno: data.high_seqno,
            discarded: discarded.into_iter().collect(),
            to_zero,
        })
    }

    fn compact(&self, config: &CompactionConfig) -> StoreResult<CompactionResult> {
        self.check()?;
        let mut history = lock(&self.cell.writer);
        let snap = Arc::clone(&read(&self.cell.data));
        let bytes_before = snap.file_bytes();
        let mut purge = Vec::new();
        let (mut tombstones, mut collection_items) = (0, 0);
        let mut purge_seqno = snap.purge_seqno;
        for doc in snap.by_key.values() {
            if config.is_dropped(doc) {
                collection_items += 1;
                purge.push(doc.key.clone());
            } else if config.purges_tombstone(doc, snap.high_seqno) {
                tombstones += 1;
                purge_seqno = purge_seqno.max(doc.meta.seqno);
                purge.push(doc.key.clone());
            }
        }
        if config.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        drop(snap);
        let mut guard = write(&self.cell.data);
        let data = Arc::make_mut(&mut guard);
        for key in &purge {
            data.remove(key);
        }
        data.purge_seqno = purge_seqno;
        history.clear();
        Ok(CompactionResult {
            bytes_before,
            bytes_after: data.file_bytes(),
            tombstones_purged: tombstones,
            collection_items_purged: collection_items,
            purge_seqno,
        })
    }

    fn get_local(&self, name: &str) -> StoreResult<Option<Bytes>> {
        self.check()?;
        Ok(read(&self.cell.data).local.get(name).cloned())
    }

    fn list_local(&self) -> StoreResult<Vec<(String, Bytes)>> {
        let snap = self.snapshot()?;
        Ok(snap
            .local
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn vbstate(&self) -> StoreResult<Option<VbucketState>> {
        let snap = self.snapshot()?;
        let Some(raw) = snap.local.get(VBSTATE_LOCAL_NAME) else {
            return Ok(None);
        };
        let mut state = VbucketState::decode(raw)?;
        state.high_seqno = snap.high_seqno;
        state.purge_seqno = snap.purge_seqno;
        Ok(Some(state))
    }

    fn info(&self) -> StoreResult<StoreInfo> {
        let snap = self.snapshot()?;
        Ok(StoreInfo {
            vbid: self.vbid,
            revision: self.revision,
            high_seqno: snap.high_seqno,
            purge_seqno: snap.purge_seqno,
            live_items: snap.live,
            deleted_items: snap.deleted,
            data_bytes: snap.data_bytes,
            file_bytes: snap.file_bytes(),
            ..StoreInfo::default()
        })
    }
}

struct MemScan {
    snap: Arc<VbData>,
    /// The next seqno to look at; `None` once the scan has finished.
    next: Option<Seqno>,
    end: Seqno,
    opts: ScanOptions,
    last: Option<Seqno>,
}

impl SeqnoScan for MemScan {
    fn snapshot_high_seqno(&self) -> Seqno {
        self.snap.high_seqno
    }

    fn run(&mut self, visit: &mut dyn FnMut(Document) -> ScanControl) -> StoreResult<ScanStatus> {
        let Some(next) = self.next.filter(|n| *n <= self.end) else {
            self.next = None;
            return Ok(ScanStatus::Done);
        };
        let snap = Arc::clone(&self.snap);
        for (seqno, key) in snap.by_seqno.range(next..=self.end) {
            if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Ok(ScanStatus::Stopped);
            }
            self.next = seqno.0.checked_add(1).map(Seqno);
            let Some(doc) = snap.by_key.get(key) else {
                continue;
            };
            if doc.is_deleted() && !self.opts.include_deleted {
                continue;
            }
            let mut doc = doc.clone();
            if self.opts.keys_only {
                doc.value = Bytes::new();
            }
            self.last = Some(*seqno);
            match visit(doc) {
                ScanControl::Continue => {}
                ScanControl::Yield => return Ok(ScanStatus::Yielded),
                ScanControl::Stop => {
                    self.next = None;
                    return Ok(ScanStatus::Stopped);
                }
            }
        }
        self.next = None;
        Ok(ScanStatus::Done)
    }

    fn last_seqno(&self) -> Option<Seqno> {
        self.last
    }
}
