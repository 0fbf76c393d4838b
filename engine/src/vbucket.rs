//! One vbucket incarnation: its store handle, its in-memory state (seqnos,
//! CAS, the dirty queue), and the deferred deletion that runs when the last
//! reference to a deleted incarnation drops.

use crate::cookie::{CookieTable, WaiterList};
use crate::deleter::{Deleter, DeletionJob};
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering, lock};
use kvstore_core::{
    CancelToken, Cas, DiskKey, Document, FailoverEntry, KvStore, Seqno, StoreResult, VbState,
    VbStore, Vbid, VbucketState,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bytes an in-memory item costs beyond its key and value.
pub(crate) const ITEM_OVERHEAD: u64 = 128;

/// What a dirty item costs in memory.
pub(crate) fn item_bytes(d: &Document) -> u64 {
    d.key.len() as u64 + d.value.len() as u64 + ITEM_OVERHEAD
}

/// The mutable in-memory state of a vbucket, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct VbData {
    pub(crate) state: VbState,
    /// The last seqno handed out.
    pub(crate) high_seqno: u64,
    /// The largest CAS handed out.
    pub(crate) max_cas: u64,
    pub(crate) failover: Vec<FailoverEntry>,
    /// Items not yet handed to the flusher, one per key (newest wins).
    pub(crate) dirty: HashMap<DiskKey, Document>,
    /// Items the flusher is committing; still readable until it lands.
    pub(crate) flushing: Option<std::sync::Arc<HashMap<DiskKey, Document>>>,
    /// Bumped whenever `flushing` is cleared, so a reader that went to disk
    /// can tell whether a flush landed meanwhile.
    pub(crate) flush_gen: u64,
    /// The vbucket state changed and must be persisted.
    pub(crate) state_dirty: bool,
    /// Live documents, counting dirty ones.
    pub(crate) live_items: u64,
    /// Bytes of dirty and flushing items.
    pub(crate) dirty_bytes: u64,
    /// The error of the last failed flush, until one succeeds.
    pub(crate) flush_error: Option<String>,
    /// The vbucket's collections.
    pub(crate) collections: collections::VbManifest,
}

impl VbData {
    /// The state to persist with the next flush.
    pub(crate) fn vbstate(&self) -> VbucketState {
        VbucketState {
            state: self.state,
            high_seqno: Seqno(self.high_seqno),
            max_cas: Cas(self.max_cas),
            failover: self.failover.clone(),
            ..VbucketState::default()
        }
    }

    /// The in-memory version of `key` (dirty, then being flushed).
    pub(crate) fn memory(&self, key: &DiskKey) -> Option<&Document> {
        self.dirty
            .get(key)
            .or_else(|| self.flushing.as_ref().and_then(|f| f.get(key)))
    }

    /// The next seqno.
    pub(crate) fn next_seqno(&mut self) -> Seqno {
        self.high_seqno += 1;
        Seqno(self.high_seqno)
    }

    /// A CAS above every CAS handed out, near the clock (a hybrid logical
    /// clock, as upstream).
    pub(crate) fn next_cas(&mut self, now_nanos: u64) -> Cas {
        self.max_cas = now_nanos.max(self.max_cas + 1);
        Cas(self.max_cas)
    }

    /// The current failover uuid.
    pub(crate) fn uuid(&self) -> u64 {
        self.failover.first().map_or(0, |e| e.uuid)
    }
}

/// Counters of one vbucket's flushes.
#[derive(Debug, Default)]
pub(crate) struct FlushCounters {
    pub(crate) batches: AtomicU64,
    pub(crate) items: AtomicU64,
    pub(crate) nanos: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Flushes attempted while the vbucket was failing.
    pub(crate) retries: AtomicU64,
    /// Store handles reopened after a failure.
    pub(crate) reopens: AtomicU64,
}

/// Whether a vbucket's store is persisting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VbHealth {
    /// The last flush succeeded (or none failed yet).
    Healthy,
    /// Flushes are failing. The vbucket keeps serving from memory and
    /// keeps its dirty items; the next attempt reopens the store from its
    /// last durable commit and flushes them again.
    Failing {
        /// Failed flushes in a row.
        consecutive_failures: u32,
        /// How long until the next attempt (zero: due now).
        retry_in: Duration,
        /// The last error.
        error: String,
    },
}

/// The back-off state of one vbucket's flushes.
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) consecutive: u32,
    pub(crate) retry_at: Option<Instant>,
    pub(crate) error: Option<String>,
    /// The store must be reopened before the next commit.
    pub(crate) reopen: bool,
}

impl Health {
    pub(crate) fn report(&self, now: Instant) -> VbHealth {
        match &self.error {
            None => VbHealth::Healthy,
            Some(e) => VbHealth::Failing {
                consecutive_failures: self.consecutive,
                retry_in: self
                    .retry_at
                    .map_or(Duration::ZERO, |t| t.saturating_duration_since(now)),
                error: e.clone(),
            },
        }
    }
}

/// A vbucket incarnation.
///
/// Held by the vbucket map while current, and by every [`crate::VbGuard`].
/// Its store cannot be destroyed while any of them lives: destruction is
/// queued by `Drop`, which runs after the last one is gone.
pub struct VBucket {
    vbid: Vbid,
    /// The store handle; replaced when a failed store is reopened.
    store: Mutex<std::sync::Arc<dyn VbStore>>,
    kv: std::sync::Arc<dyn KvStore>,
    deleter: Arc<Deleter>,
    pub(crate) cookies: Arc<CookieTable>,
    deleting: AtomicBool,
    pub(crate) compaction: CancelToken,
    pub(crate) data: Mutex<VbData>,
    /// Held for a whole flush: one flush of a vbucket at a time.
    pub(crate) flush_lock: Mutex<()>,
    pub(crate) flush_scheduled: AtomicBool,
    /// A flush task found the flush lock taken and left its work to the
    /// holder, which schedules another flush when it is done.
    pub(crate) flush_again: AtomicBool,
    persisted: AtomicU64,
    /// Tickets parked on this incarnation.
    pub(crate) waiters: Arc<WaiterList>,
    pub(crate) counters: FlushCounters,
    pub(crate) health: Mutex<Health>,
}

impl std::fmt::Debug for VBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VBucket")
            .field("vbid", &self.vbid)
            .field("revision", &self.store().revision())
            .field("deleting", &self.is_deleting())
            .finish_non_exhaustive()
    }
}

impl VBucket {
    /// An incarnation over `store`, with state `data` (from warmup or
    /// creation).
    pub(crate) fn new(
        store: std::sync::Arc<dyn VbStore>,
        kv: std::sync::Arc<dyn KvStore>,
        deleter: Arc<Deleter>,
        cookies: Arc<CookieTable>,
        data: VbData,
        persisted: Seqno,
    ) -> Self {
        VBucket {
            vbid: store.vbid(),
            store: Mutex::new(store),
            kv,
            deleter,
            cookies,
            deleting: AtomicBool::new(false),
            compaction: CancelToken::new(),
            data: Mutex::new(data),
            flush_lock: Mutex::new(()),
            flush_scheduled: AtomicBool::new(false),
            flush_again: AtomicBool::new(false),
            persisted: AtomicU64::new(persisted.0),
            waiters: Arc::new(WaiterList::default()),
            counters: FlushCounters::default(),
            health: Mutex::new(Health::default()),
        }
    }

    /// Creates a new incarnation of `vbid` in the backend, with `state`
    /// committed durably before it is returned. If that commit fails, the
    /// new revision is removed again; a crash before it lands leaves a
    /// store without state, which warmup discards: either way the vbucket
    /// does not exist, and can be created again.
    pub fn create(
        vbid: Vbid,
        state: VbState,
        kv: std::sync::Arc<dyn KvStore>,
        deleter: Arc<Deleter>,
        cookies: Arc<CookieTable>,
        uuid: u64,
    ) -> StoreResult<Self> {
        let store = kv.create(vbid)?;
        let data = VbData {
            state,
            failover: vec![FailoverEntry {
                uuid,
                seqno: Seqno(0),
            }],
            ..VbData::default()
        };
        if let Err(e) = store.commit(kvstore_core::CommitBatch::new().vbstate(data.vbstate())) {
            let revision = store.revision();
            drop(store);
            if let Err(e2) = kv
                .mark_deleted(vbid, revision)
                .and_then(|()| kv.destroy(vbid, revision))
            {
                tracing::warn!(%vbid, %revision, error = %e2, "could not remove a half-created vbucket; warmup will");
            }
            return Err(e);
        }
        Ok(Self::new(store, kv, deleter, cookies, data, Seqno(0)))
    }

    /// The vbucket id.
    #[must_use]
    pub fn vbid(&self) -> Vbid {
        self.vbid
    }

    /// The store of this incarnation. After a failure the engine may
    /// replace the handle with a fresh one on the same revision, so hold the
    /// returned handle only as long as needed.
    #[must_use]
    pub fn store(&self) -> std::sync::Arc<dyn VbStore> {
        std::sync::Arc::clone(&lock(&self.store))
    }

    /// Puts a reopened handle in place of a failed one.
    pub(crate) fn replace_store(&self, store: std::sync::Arc<dyn VbStore>) {
        *lock(&self.store) = store;
    }

    /// Reads through the store. A read that meets a poisoned handle waits
    /// for the flush in progress (which reopens the store after the failed
    /// sync that poisoned it) and is tried once more on the handle then in
    /// place. Memory holds every item not yet durable, so what a fresh
    /// handle shows is never newer than what the engine serves.
    pub(crate) fn read_store<T>(
        &self,
        read: impl Fn(&dyn VbStore) -> StoreResult<T>,
    ) -> StoreResult<T> {
        match read(&*self.store()) {
            Err(e) if e.is_poisoned() => {
                drop(lock(&self.flush_lock));
                read(&*self.store())
            }
            r => r,
        }
    }

    /// The backend.
    pub(crate) fn kv(&self) -> &std::sync::Arc<dyn KvStore> {
        &self.kv
    }

    /// How its flushes are doing.
    #[must_use]
    pub fn health(&self) -> VbHealth {
        lock(&self.health).report(Instant::now())
    }

    /// The vbucket's state.
    #[must_use]
    pub fn state(&self) -> VbState {
        lock(&self.data).state
    }

    /// The highest seqno the flusher has committed.
    #[must_use]
    pub fn persisted_seqno(&self) -> Seqno {
        Seqno(self.persisted.load(Ordering::Acquire))
    }

    pub(crate) fn set_persisted(&self, s: Seqno) {
        self.persisted.fetch_max(s.0, Ordering::AcqRel);
    }

    /// The highest seqno handed out.
    #[must_use]
    pub fn high_seqno(&self) -> Seqno {
        Seqno(lock(&self.data).high_seqno)
    }

    /// True once the vbucket was deleted; the incarnation lives on only
    /// until its last guard drops.
    #[must_use]
    pub fn is_deleting(&self) -> bool {
        self.deleting.load(Ordering::Acquire)
    }

    /// Makes the coming deletion durable in the backend, so that a crash
    /// before the last guard drops cannot bring the vbucket back at warmup.
    pub(crate) fn mark_deleted_durably(&self) -> StoreResult<()> {
        self.kv.mark_deleted(self.vbid, self.store().revision())
    }

    /// Marks the incarnation deleted and stops a running compaction of it;
    /// its files go when the last reference drops.
    pub(crate) fn mark_deleting(&self) {
        if self.deleting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.deleter.announce();
        self.compaction.cancel();
    }

    /// The data lock and the current version of `key`: in memory if it is
    /// there, else from the store. The disk read happens without the lock;
    /// if a flush landed meanwhile the lookup is retried, so the version
    /// returned is current as long as the returned lock is held.
    pub(crate) fn current(
        &self,
        key: &DiskKey,
    ) -> StoreResult<(MutexGuard<'_, VbData>, Option<Document>)> {
        loop {
            let d = lock(&self.data);
            if let Some(doc) = d.memory(key) {
                let doc = doc.clone();
                return Ok((d, Some(doc)));
            }
            let generation = d.flush_gen;
            drop(d);
            let disk = self.read_store(|s| s.get(key))?;
            let d = lock(&self.data);
            if d.flush_gen == generation {
                if let Some(doc) = d.memory(key) {
                    let doc = doc.clone();
                    return Ok((d, Some(doc)));
                }
                return Ok((d, disk));
            }
        }
    }
}

impl Drop for VBucket {
    fn drop(&mut self) {
        if !self.deleting.load(Ordering::Acquire) {
            return;
        }
        let waiters = self.waiters.take_all();
        self.deleter.push(DeletionJob {
            vbid: self.vbid,
            kv: std::sync::Arc::clone(&self.kv),
            store: self.store(),
            parked: waiters.persist.into_values().flatten().collect(),
            notify: waiters.deletion,
            cookies: Arc::clone(&self.cookies),
        });
    }
}
