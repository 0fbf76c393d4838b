//! The engine: warmup, document operations, vbucket lifecycle, stats.
//!
//! # Memory policy: full eviction
//!
//! Memory holds only what is not yet on disk: the dirty items of each
//! vbucket and the batch the flusher is committing. Once committed, an item
//! is read from the store, whose own cache (the couchfile node cache, or
//! RocksDB's block cache) keeps hot data in memory. So the engine's memory is
//! bounded by the quota on dirty items, whatever the data set size, and
//! nothing acknowledged is ever dropped to make room: writes get
//! `TemporaryFailure` instead until the flusher catches up.

use crate::config::{Backend, EngineConfig};
use crate::cookie::{
    CookieId, CookieTable, Mailbox, MutationResult, NoNotify, Notifier, Outcome, Owner, WaitKind,
    Waiting,
};
use crate::deleter::Deleter;
use crate::error::{EngineError, EngineResult};
use crate::flusher::{self, Flushed, Flusher, flush_vbucket};
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, lock, thread};
use crate::vbmap::{DeleteWaiter, VBucketMap, VbGuard};
use crate::vbucket::{VBucket, VbData, VbHealth, item_bytes};
use bytes::Bytes;
use collections::{Applied, Finished, Manifest, Start, UpdateMachine, VbManifest, Visibility};
use kvstore_core::{
    Cas, CompactionConfig, CompactionResult, Datatype, DeleteSource, DiskKey, DocMeta, Document,
    KvStore, MemStore, RevSeqno, Seqno, StoreInfo, VbState, Vbid,
};
use std::time::Duration;

/// Memcached's rule: an expiry up to 30 days is relative to now.
const RELATIVE_EXPIRY_MAX: u32 = 30 * 24 * 3600;

/// Options of a mutation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Only apply if the document's CAS matches (0: no check).
    pub cas: Cas,
    /// Client flags.
    pub flags: u32,
    /// Expiry: 0 never; up to 30 days, seconds from now; else absolute Unix
    /// time.
    pub expiry: u32,
    /// The value's datatype bits.
    pub datatype: Datatype,
    /// Return only once the write is persisted: a blocking call waits, a
    /// future resolves then, and a cookie call returns `WouldBlock` and is
    /// notified. Without it a write returns once it is in memory, and the
    /// flusher persists it shortly after.
    pub durable: bool,
}

impl WriteOptions {
    /// Options of a durable write, otherwise the defaults.
    #[must_use]
    pub fn durable() -> Self {
        WriteOptions {
            durable: true,
            ..WriteOptions::default()
        }
    }

    /// The same options with a CAS check.
    #[must_use]
    pub fn with_cas(self, cas: Cas) -> Self {
        WriteOptions { cas, ..self }
    }
}

/// How a store call treats an existing document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Upsert.
    Set,
    /// Only if absent.
    Add,
    /// Only if present.
    Replace,
}

/// A document read by [`Engine::get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: DiskKey,
    /// The value.
    pub value: Bytes,
    /// The metadata.
    pub meta: DocMeta,
}

/// Counters and sizes of one vbucket.
#[derive(Debug, Clone, PartialEq)]
pub struct VbStats {
    /// The vbucket.
    pub vbid: Vbid,
    /// Its state.
    pub state: VbState,
    /// Its current failover uuid (the branch its seqnos belong to).
    pub vbucket_uuid: u64,
    /// The highest seqno handed out.
    pub high_seqno: Seqno,
    /// The highest seqno persisted.
    pub persisted_seqno: Seqno,
    /// Live documents.
    pub items: u64,
    /// Items waiting for the flusher (and in the batch being flushed).
    pub dirty_items: u64,
    /// Bytes of those items.
    pub dirty_bytes: u64,
    /// Flush commits so far.
    pub flush_batches: u64,
    /// Items committed by the flusher so far.
    pub flushed_items: u64,
    /// Time spent in flush commits.
    pub flush_time: Duration,
    /// Failed flush commits so far.
    pub flush_failures: u64,
    /// Flushes attempted while the vbucket was failing.
    pub flush_retries: u64,
    /// Times the store handle was reopened after a failure.
    pub store_reopens: u64,
    /// Whether flushes succeed, and if not, when the next attempt is.
    pub health: VbHealth,
    /// The last flush error, until a flush succeeds.
    pub flush_error: Option<String>,
    /// The store's counts and sizes (zero when the store cannot say).
    pub disk: StoreInfo,
    /// Why the store could not report its counts (for example, poisoned).
    pub disk_error: Option<String>,
}

/// Engine-wide counters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EngineStats {
    /// Vbuckets present.
    pub vbuckets: usize,
    /// Live documents.
    pub items: u64,
    /// Items waiting for the flusher.
    pub dirty_items: u64,
    /// Bytes of dirty items (what the quota limits).
    pub memory_used: u64,
    /// The memory quota.
    pub memory_quota: u64,
    /// Flush commits so far.
    pub flush_batches: u64,
    /// Items committed by the flusher so far.
    pub flushed_items: u64,
    /// Time spent in flush commits.
    pub flush_time: Duration,
    /// Failed flush commits so far.
    pub flush_failures: u64,
    /// Flushes attempted while their vbucket was failing.
    pub flush_retries: u64,
    /// Store handles reopened after a failure.
    pub store_reopens: u64,
    /// Vbuckets whose flushes are failing now.
    pub failing_vbuckets: usize,
    /// Vbuckets waiting out a flush back-off.
    pub backing_off: usize,
    /// Bytes the stores take on disk.
    pub disk_bytes: u64,
    /// Key and value bytes of the current version of every document on
    /// disk (what `disk_bytes` would be with no stale data at all).
    pub disk_live_bytes: u64,
    /// Bytes the stores' background space reclamation has given back to
    /// the filesystem (see [`StoreInfo::reclaimed_bytes`]).
    pub disk_reclaimed_bytes: u64,
    /// Vbuckets whose store is reclaiming space now.
    pub reclaiming_vbuckets: usize,
    /// Vbucket deletions waiting for their last guard or running.
    pub pending_deletions: usize,
    /// Calls with parked state (client cookies and Rust callers waiting).
    pub cookies: usize,
    /// A collections manifest update is in flight.
    pub collections_update_in_flight: bool,
}

/// The dirty-item memory budget.
#[derive(Debug)]
pub(crate) struct MemTracker {
    used: AtomicU64,
    quota: u64,
}

impl MemTracker {
    fn try_reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                (u + n <= self.quota).then_some(u + n)
            })
            .is_ok()
    }

    pub(crate) fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// What the engine's threads share.
pub(crate) struct Shared {
    pub(crate) config: EngineConfig,
    pub(crate) kv: std::sync::Arc<dyn KvStore>,
    pub(crate) map: VBucketMap,
    pub(crate) deleter: Arc<Deleter>,
    pub(crate) cookies: Arc<CookieTable>,
    pub(crate) flusher: Flusher,
    pub(crate) memory: MemTracker,
    /// The bucket's collections manifest.
    manifest: Mutex<Arc<Manifest>>,
    /// Where the manifest is persisted.
    manifest_store: ManifestStore,
    /// The collections update state machine.
    pub(crate) updates: UpdateMachine<Owner>,
    /// Held from the moment the machine hands a persisted manifest over
    /// until it is applied, and while a new update is validated and
    /// started: so a new update is never checked against the manifest
    /// before the one just persisted (the machine is idle in between).
    manifest_lock: Mutex<()>,
    shutting_down: AtomicBool,
    uuid_seed: AtomicU64,
    /// The vbuckets warmup found, with their states.
    warmed_up: Vec<(Vbid, VbState)>,
}

/// Where the bucket's manifest lives: a file in the data directory, or
/// nowhere for the memory backend (nothing of it may survive the process).
#[derive(Debug)]
enum ManifestStore {
    Dir(std::path::PathBuf),
    Memory,
}

impl ManifestStore {
    fn load(&self) -> Result<Option<Manifest>, collections::PersistError> {
        match self {
            ManifestStore::Dir(d) => collections::persist::load(d),
            ManifestStore::Memory => Ok(None),
        }
    }

    fn store(&self, m: &Manifest) -> Result<(), collections::PersistError> {
        match self {
            ManifestStore::Dir(d) => collections::persist::store(d, m),
            ManifestStore::Memory => Ok(()),
        }
    }
}

impl Shared {
    pub(crate) fn current_manifest(&self) -> Arc<Manifest> {
        Arc::clone(&lock(&self.manifest))
    }
}

/// Applies `m` to one vbucket (if active), queueing its system events.
pub(crate) fn apply_to(shared: &Arc<Shared>, vb: &VBucket, m: &Manifest) -> EngineResult<()> {
    {
        let mut d = lock(&vb.data);
        if d.state != VbState::Active {
            return Ok(());
        }
        let before = d.collections.items();
        let (mut high, mut cas) = (d.high_seqno, d.max_cas);
        let now = shared.config.clock.now_nanos();
        let applied = d
            .collections
            .update(m, &mut || {
                high += 1;
                cas = now.max(cas + 1);
                (Seqno(high), Cas(cas))
            })
            .map_err(|e| EngineError::CannotApplyManifest(format!("{}: {e}", vb.vbid())))?;
        d.high_seqno = high;
        d.max_cas = cas;
        let Applied::Events(events) = applied else {
            return Ok(());
        };
        for ev in events {
            let bytes = item_bytes(&ev);
            shared.memory.used.fetch_add(bytes, Ordering::AcqRel);
            d.dirty_bytes += bytes;
            if let Some(old) = d.dirty.insert(ev.key.clone(), ev) {
                let b = item_bytes(&old);
                d.dirty_bytes -= b;
                shared.memory.release(b);
            }
        }
        let dropped_items = before.saturating_sub(d.collections.items());
        d.live_items = d.live_items.saturating_sub(dropped_items);
        d.state_dirty = true;
    }
    flusher::schedule(shared, vb);
    Ok(())
}

/// Applies `m` to every active vbucket and makes it the current one. A
/// vbucket that refuses it does not stop the others: the manifest is
/// persisted already, so every vbucket that can take it does, and the
/// error names those that could not.
pub(crate) fn apply_manifest(shared: &Arc<Shared>, m: &Arc<Manifest>) -> EngineResult<()> {
    let mut failed = Vec::new();
    for vb in shared.map.guards() {
        if let Err(e) = apply_to(shared, &vb, m) {
            tracing::error!(vbid = %vb.vbid(), error = %e, uid = m.uid, "a vbucket refused the manifest");
            failed.push(e.to_string());
        }
    }
    *lock(&shared.manifest) = Arc::clone(m);
    if failed.is_empty() {
        Ok(())
    } else {
        Err(EngineError::CannotApplyManifest(failed.join("; ")))
    }
}

/// An open collection of one vbucket, with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectionInfo {
    /// The collection id.
    pub cid: kvstore_core::CollectionId,
    /// Its name.
    pub name: String,
    /// Its scope.
    pub scope: kvstore_core::ScopeId,
    /// The seqno its current generation started at.
    pub start_seqno: Seqno,
    /// Its counters: items, bytes, high seqno.
    pub stats: collections::CollectionStats,
}

/// The engine. See the crate docs.
///
/// Every call takes `&self`, so an engine is shared as `Arc<Engine>`
/// between threads; [`Engine::shutdown`] works on a shared engine too.
pub struct Engine {
    pub(crate) shared: Arc<Shared>,
    threads: Mutex<Vec<thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("backend", &self.shared.kv.backend_name())
            .field("data_dir", &self.shared.config.data_dir)
            .finish_non_exhaustive()
    }
}

fn open_backend(config: &EngineConfig) -> EngineResult<std::sync::Arc<dyn KvStore>> {
    Ok(match &config.backend {
        Backend::Couchfile(c) => std::sync::Arc::new(kvstore_couchfile::CouchStore::open(
            &config.data_dir,
            c.clone(),
        )?),
        Backend::Memory => std::sync::Arc::new(MemStore::new()),
        #[cfg(feature = "rocks")]
        Backend::Rocks(c) => std::sync::Arc::new(kvstore_rocks::RocksStore::open(
            config.data_dir.join("rocksdb"),
            c.clone(),
        )?),
        Backend::Custom(kv) => std::sync::Arc::clone(kv),
    })
}

/// How an engine call that may wait is to wait: under a client's cookie
/// (the would-block protocol), or in this process, for a Rust caller.
#[derive(Clone)]
pub(crate) enum Via {
    Client(CookieId),
    Local(Owner, Arc<Mailbox>),
}

impl Via {
    fn owner(&self) -> Owner {
        match self {
            Via::Client(c) => Owner::Client(*c),
            Via::Local(o, _) => *o,
        }
    }

    fn mailbox(&self) -> Option<Arc<Mailbox>> {
        match self {
            Via::Client(_) => None,
            Via::Local(_, m) => Some(Arc::clone(m)),
        }
    }
}

/// How a call that may wait went.
pub(crate) enum Step<T> {
    /// It finished.
    Done(T),
    /// It is parked; the ticket's owner is woken when it completes.
    Parked,
}

impl Engine {
    /// Opens the backend and warms up (see [`Engine::open_with_notifier`]),
    /// for callers that use the Rust API only: its blocking calls and
    /// futures need no notifier.
    pub fn open(config: EngineConfig) -> EngineResult<Self> {
        Self::open_with_notifier(config, std::sync::Arc::new(NoNotify))
    }

    /// Opens the backend and warms up: every vbucket found on disk comes
    /// back with its state, high seqno, CAS and item count. Stale revisions
    /// and temporary files are removed, and so is a store whose state was
    /// never committed (a create cut short by a crash). A vbucket whose
    /// store fails to open fails the warmup with an error naming it.
    /// `notifier` is told when a call parked under a client cookie can be
    /// collected (the would-block protocol of [`Engine::cookie`]).
    pub fn open_with_notifier(
        config: EngineConfig,
        notifier: std::sync::Arc<dyn Notifier>,
    ) -> EngineResult<Self> {
        let kv = open_backend(&config)?;
        let manifest_store = match config.backend {
            Backend::Memory => ManifestStore::Memory,
            _ => ManifestStore::Dir(config.data_dir.clone()),
        };
        let manifest = manifest_store
            .load()
            .map_err(|e| EngineError::Warmup(e.to_string()))?
            .unwrap_or_else(Manifest::epoch);
        let cookies = Arc::new(CookieTable::new(notifier));
        let deleter = Deleter::new();
        let map = VBucketMap::new(config.vbuckets);
        let found = kv.discover()?;
        let started = std::time::Instant::now();
        let mut warmed_up = Vec::new();
        for (vbid, revision) in &found {
            if usize::from(vbid.0) >= config.vbuckets {
                tracing::warn!(%vbid, "vbucket on disk is beyond the configured count; left alone");
                continue;
            }
            let store = kv.open(*vbid, *revision)?;
            let Some(state) = store.vbstate()? else {
                // Created, but its state never committed: the create did not
                // happen. Remove it, so the vbucket can be created again.
                tracing::warn!(%vbid, %revision, "removing a vbucket whose creation never completed");
                drop(store);
                kv.mark_deleted(*vbid, *revision)?;
                kv.destroy(*vbid, *revision)?;
                continue;
            };
            let info = store.info()?;
            let collections = VbManifest::from_local(&store.list_local()?)
                .map_err(|e| EngineError::Warmup(format!("{vbid}: collections: {e}")))?;
            let data = VbData {
                state: state.state,
                high_seqno: info.high_seqno.0,
                max_cas: state.max_cas.0,
                failover: state.failover,
                live_items: collections.items(),
                collections,
                ..VbData::default()
            };
            let vb = VBucket::new(
                store,
                std::sync::Arc::clone(&kv),
                Arc::clone(&deleter),
                Arc::clone(&cookies),
                data,
                info.high_seqno,
            );
            if let Err((_, e)) = map.insert(vb) {
                return Err(e);
            }
            warmed_up.push((*vbid, state.state));
        }
        tracing::info!(vbuckets = warmed_up.len(), backend = kv.backend_name(), elapsed = ?started.elapsed(), "warmup done");
        let flusher = Flusher::new(
            config.flusher_threads,
            config.flush_retry_min,
            config.flush_retry_max,
        );
        let shared = Arc::new(Shared {
            memory: MemTracker {
                used: AtomicU64::new(0),
                quota: config.memory_quota,
            },
            config,
            kv,
            map,
            deleter,
            cookies,
            flusher,
            manifest: Mutex::new(Arc::new(manifest)),
            manifest_store,
            updates: UpdateMachine::new(),
            manifest_lock: Mutex::new(()),
            shutting_down: AtomicBool::new(false),
            uuid_seed: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            warmed_up,
        });
        // A crash between persisting a manifest and flushing its system
        // events leaves vbuckets behind: bring them up to date.
        let current = shared.current_manifest();
        if let Err(e) = apply_manifest(&shared, &current) {
            tracing::error!(error = %e, "warmup: not every vbucket takes the bucket's manifest");
        }
        let mut threads = Vec::new();
        {
            let s = Arc::clone(&shared);
            threads.push(thread::spawn(move || s.deleter.run_worker()));
        }
        #[cfg(not(loom))]
        if shared.flusher.has_pool() {
            let s = Arc::clone(&shared);
            threads.push(thread::spawn(move || flusher::run_timer(&s)));
        }
        Ok(Engine {
            shared,
            threads: Mutex::new(threads),
        })
    }

    fn check_running(&self) -> EngineResult<()> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        Ok(())
    }

    /// The backend's name.
    #[must_use]
    pub fn backend_name(&self) -> &'static str {
        self.shared.kv.backend_name()
    }

    /// A guard on a vbucket, for direct access to its store (scans,
    /// compaction) while keeping it alive.
    pub fn vbucket(&self, vbid: Vbid) -> EngineResult<VbGuard> {
        self.shared.map.get(vbid)
    }

    /// The vbuckets warmup found when the engine opened, with the states
    /// they came back in (whatever happened to them since).
    #[must_use]
    pub fn warmed_up(&self) -> &[(Vbid, VbState)] {
        &self.shared.warmed_up
    }

    /// The vbuckets present now, with their states, in vbid order.
    #[must_use]
    pub fn vbuckets(&self) -> Vec<(Vbid, VbState)> {
        self.shared
            .map
            .guards()
            .iter()
            .map(|g| (g.vbid(), g.state()))
            .collect()
    }

    pub(crate) fn active(&self, vbid: Vbid) -> EngineResult<VbGuard> {
        self.check_running()?;
        let vb = self.shared.map.get(vbid)?;
        if vb.state() != VbState::Active {
            return Err(EngineError::NotMyVbucket(vbid));
        }
        Ok(vb)
    }

    pub(crate) fn now(&self) -> u32 {
        self.shared.config.clock.now_secs()
    }

    pub(crate) fn absolute_expiry(&self, expiry: u32) -> u32 {
        match expiry {
            0 => 0,
            e if e <= RELATIVE_EXPIRY_MAX => self.now().saturating_add(e),
            e => e,
        }
    }

    pub(crate) fn is_expired(&self, doc: &Document, now: u32) -> bool {
        !doc.is_deleted() && doc.meta.expiry != 0 && doc.meta.expiry <= now
    }

    /// `UnknownCollection` unless `key`'s collection is open in `d`.
    pub(crate) fn check_collection(d: &VbData, key: &DiskKey) -> EngineResult<()> {
        match d.collections.collection(key.collection()) {
            Some(_) => Ok(()),
            None => Err(EngineError::UnknownCollection {
                manifest_uid: d.collections.uid,
            }),
        }
    }

    /// The collection's maxTTL caps the expiry of new documents.
    pub(crate) fn cap_expiry(d: &VbData, key: &DiskKey, expiry: u32, now: u32) -> u32 {
        match d
            .collections
            .collection(key.collection())
            .and_then(|c| c.max_ttl)
            .filter(|t| *t > 0)
        {
            Some(ttl) => {
                let cap = now.saturating_add(ttl);
                if expiry == 0 { cap } else { expiry.min(cap) }
            }
            None => expiry,
        }
    }

    /// The visible version of `key`: present, in an open collection, and of
    /// the collection's current generation.
    pub(crate) fn visible(d: &VbData, key: &DiskKey, doc: Option<Document>) -> Option<Document> {
        doc.filter(|c| d.collections.visibility(key, c.meta.seqno) == Visibility::Visible)
    }

    /// Reads a document. An expired document reads as missing, and is
    /// deleted with a TTL tombstone. A document of a dropped collection, or
    /// of a dropped generation of a re-created one, never reads back.
    pub fn get(&self, vbid: Vbid, key: &DiskKey) -> EngineResult<Item> {
        let vb = self.active(vbid)?;
        let doc = {
            let d = lock(&vb.data);
            Self::check_collection(&d, key)?;
            d.memory(key).cloned()
        };
        let doc = match doc {
            Some(doc) => Some(doc),
            None => vb.read_store(|s| s.get(key))?,
        };
        let Some(doc) = doc.filter(|d| !d.is_deleted()) else {
            return Err(EngineError::KeyNotFound);
        };
        {
            let d = lock(&vb.data);
            match d.collections.visibility(key, doc.meta.seqno) {
                Visibility::Visible => {}
                Visibility::OldGeneration => return Err(EngineError::KeyNotFound),
                Visibility::UnknownCollection => {
                    return Err(EngineError::UnknownCollection {
                        manifest_uid: d.collections.uid,
                    });
                }
            }
        }
        if self.is_expired(&doc, self.now()) {
            self.expire(&vb, key)?;
            return Err(EngineError::KeyNotFound);
        }
        Ok(Item {
            key: doc.key,
            value: doc.value,
            meta: doc.meta,
        })
    }

    /// Replaces an expired document with a tombstone marked as a TTL
    /// deletion (if it is still the expired version).
    fn expire(&self, vb: &VbGuard, key: &DiskKey) -> EngineResult<()> {
        let now = self.now();
        let (mut d, current) = vb.current(key)?;
        let current = Self::visible(&d, key, current);
        let Some(cur) = current.filter(|c| self.is_expired(c, now)) else {
            return Ok(());
        };
        let seqno = d.next_seqno();
        let cas = d.next_cas(self.shared.config.clock.now_nanos());
        let tomb = Document {
            key: key.clone(),
            meta: DocMeta {
                cas,
                rev_seqno: RevSeqno(cur.meta.rev_seqno.0 + 1),
                seqno,
                flags: cur.meta.flags,
                expiry: now,
                datatype: Datatype::RAW,
                deleted: Some(DeleteSource::Ttl),
            },
            value: Bytes::new(),
        };
        d.live_items = d.live_items.saturating_sub(1);
        d.collections
            .note(key.collection(), seqno, -1, -(cur.body_size() as i64));
        self.put_dirty(&mut d, tomb, true);
        drop(d);
        flusher::schedule(&self.shared, vb);
        Ok(())
    }

    /// Reserves quota for a new dirty item, or fails with
    /// `TemporaryFailure` (and nudges the flusher).
    pub(crate) fn reserve(&self, vb: &VBucket, bytes: u64) -> EngineResult<()> {
        if self.shared.memory.try_reserve(bytes) {
            return Ok(());
        }
        flusher::schedule(&self.shared, vb);
        Err(EngineError::TemporaryFailure(format!(
            "memory quota of {} bytes is full; retry once the flusher catches up",
            self.shared.memory.quota
        )))
    }

    /// Adds `doc` to the dirty queue, replacing (and un-counting) any dirty
    /// version of its key. Its bytes must be reserved already, or `force`d:
    /// deletions always go in, since refusing them frees nothing.
    pub(crate) fn put_dirty(&self, d: &mut VbData, doc: Document, force: bool) {
        let bytes = item_bytes(&doc);
        if force {
            self.shared.memory.used.fetch_add(bytes, Ordering::AcqRel);
        }
        d.dirty_bytes += bytes;
        if let Some(old) = d.dirty.insert(doc.key.clone(), doc) {
            let b = item_bytes(&old);
            d.dirty_bytes -= b;
            self.shared.memory.release(b);
        }
    }

    /// Collects the result of a durable call parked under `cookie`, if any.
    pub(crate) fn collected(&self, cookie: CookieId) -> Option<EngineResult<MutationResult>> {
        self.shared
            .cookies
            .collect(cookie, WaitKind::Persist)
            .map(|r| r.and_then(outcome_mutation))
    }

    pub(crate) fn validate(&self, value: &[u8], datatype: Datatype) -> EngineResult<()> {
        if value.len() > self.shared.config.max_value_size {
            return Err(EngineError::TooBig {
                size: value.len(),
                max: self.shared.config.max_value_size,
            });
        }
        if !datatype.is_valid() {
            return Err(EngineError::InvalidArguments(format!(
                "unknown datatype bits {:#04x}",
                datatype.0
            )));
        }
        Ok(())
    }

    /// Stores a document (set, add or replace): the shared body of every
    /// way to call it.
    pub(crate) fn store_via(
        &self,
        via: &Via,
        vbid: Vbid,
        mode: StoreMode,
        key: &DiskKey,
        value: Bytes,
        opts: WriteOptions,
    ) -> EngineResult<Step<MutationResult>> {
        if opts.durable
            && let Via::Client(cookie) = via
            && let Some(r) = self.collected(*cookie)
        {
            return r.map(Step::Done);
        }
        self.validate(&value, opts.datatype)?;
        let vb = self.active(vbid)?;
        let now = self.now();
        let expiry = self.absolute_expiry(opts.expiry);
        let (d, current) = vb.current(key)?;
        if d.state != VbState::Active {
            return Err(EngineError::NotMyVbucket(vbid));
        }
        Self::check_collection(&d, key)?;
        let current = Self::visible(&d, key, current);
        let expiry = Self::cap_expiry(&d, key, expiry, now);
        let live = current
            .as_ref()
            .filter(|c| !c.is_deleted() && !self.is_expired(c, now));
        match (mode, live) {
            (StoreMode::Add, Some(_)) => return Err(EngineError::KeyExists),
            (StoreMode::Replace, None) => return Err(EngineError::KeyNotFound),
            _ => {}
        }
        if opts.cas != Cas(0) {
            match live {
                None => return Err(EngineError::KeyNotFound),
                Some(c) if c.meta.cas != opts.cas => return Err(EngineError::KeyExists),
                Some(_) => {}
            }
        }
        let was_live = live.is_some();
        let old_bytes = live.map_or(0, Document::body_size) as i64;
        let rev_seqno = current.as_ref().map_or(1, |c| c.meta.rev_seqno.0 + 1);
        let doc = Document {
            key: key.clone(),
            meta: DocMeta {
                cas: Cas(0),
                rev_seqno: RevSeqno(rev_seqno),
                seqno: Seqno(0),
                flags: opts.flags,
                expiry,
                datatype: opts.datatype,
                deleted: None,
            },
            value,
        };
        self.write_live(via, &vb, d, doc, (was_live, old_bytes), opts.durable, None)
    }

    /// Lands `doc`, a new live version of its key, in memory: reserves its
    /// memory (before taking a seqno, so a refused write leaves no gap),
    /// gives it a seqno and a CAS, marks it dirty, keeps the item and
    /// collection counts, and parks or waits for persistence when
    /// `durable`. `replaced` says whether a live version is replaced and
    /// its body size; `written` receives the new metadata.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn write_live(
        &self,
        via: &Via,
        vb: &VbGuard,
        mut d: crate::sync::MutexGuard<'_, VbData>,
        mut doc: Document,
        replaced: (bool, i64),
        durable: bool,
        written: Option<&mut Option<DocMeta>>,
    ) -> EngineResult<Step<MutationResult>> {
        let (was_live, old_bytes) = replaced;
        self.reserve(vb, item_bytes(&doc))?;
        doc.meta.seqno = d.next_seqno();
        doc.meta.cas = d.next_cas(self.shared.config.clock.now_nanos());
        let result = MutationResult {
            cas: doc.meta.cas,
            seqno: doc.meta.seqno,
            vbucket_uuid: d.uuid(),
        };
        let new_bytes = doc.body_size() as i64;
        let collection = doc.key.collection();
        if let Some(w) = written {
            *w = Some(doc.meta);
        }
        self.put_dirty(&mut d, doc, false);
        if !was_live {
            d.live_items += 1;
        }
        d.collections.note(
            collection,
            result.seqno,
            i64::from(!was_live),
            new_bytes - old_bytes,
        );
        self.finish_write(via, vb, d, result, durable)
    }

    /// Parks a durable write (under the data lock, so the flusher cannot
    /// complete the seqno before the ticket is parked) and schedules the
    /// flush.
    pub(crate) fn finish_write(
        &self,
        via: &Via,
        vb: &VbGuard,
        d: crate::sync::MutexGuard<'_, VbData>,
        result: MutationResult,
        durable: bool,
    ) -> EngineResult<Step<MutationResult>> {
        let step = if durable {
            self.shared.cookies.park_in(
                via.owner(),
                Waiting::Persist {
                    vbid: vb.vbid(),
                    seqno: result.seqno,
                    result,
                },
                &vb.waiters,
                via.mailbox(),
                |l, t| l.persist.entry(result.seqno.0).or_default().push(t),
            )?;
            Step::Parked
        } else {
            Step::Done(result)
        };
        drop(d);
        flusher::schedule(&self.shared, vb);
        Ok(step)
    }

    /// Deletes a document (a tombstone): the shared body of every way to
    /// call it.
    pub(crate) fn delete_via(
        &self,
        via: &Via,
        vbid: Vbid,
        key: &DiskKey,
        opts: WriteOptions,
    ) -> EngineResult<Step<MutationResult>> {
        let (cas, durable) = (opts.cas, opts.durable);
        if durable
            && let Via::Client(cookie) = via
            && let Some(r) = self.collected(*cookie)
        {
            return r.map(Step::Done);
        }
        let vb = self.active(vbid)?;
        let now = self.now();
        let (mut d, current) = vb.current(key)?;
        Self::check_collection(&d, key)?;
        let current = Self::visible(&d, key, current);
        let Some(cur) = current.filter(|c| !c.is_deleted() && !self.is_expired(c, now)) else {
            return Err(EngineError::KeyNotFound);
        };
        if cas != Cas(0) && cur.meta.cas != cas {
            return Err(EngineError::KeyExists);
        }
        let seqno = d.next_seqno();
        let new_cas = d.next_cas(self.shared.config.clock.now_nanos());
        let tomb = Document {
            key: key.clone(),
            meta: DocMeta {
                cas: new_cas,
                rev_seqno: RevSeqno(cur.meta.rev_seqno.0 + 1),
                seqno,
                flags: cur.meta.flags,
                expiry: now,
                datatype: Datatype::RAW,
                deleted: Some(DeleteSource::Explicit),
            },
            value: Bytes::new(),
        };
        let result = MutationResult {
            cas: new_cas,
            seqno,
            vbucket_uuid: d.uuid(),
        };
        self.put_dirty(&mut d, tomb, true);
        d.live_items = d.live_items.saturating_sub(1);
        d.collections
            .note(key.collection(), seqno, -1, -(cur.body_size() as i64));
        self.finish_write(via, &vb, d, result, durable)
    }

    /// Creates a vbucket (its store gets a new revision) in `state`. The
    /// vbucket and its state are durable when this returns; if it fails,
    /// the vbucket does not exist (also after a crash at any point of it).
    pub fn create_vbucket(&self, vbid: Vbid, state: VbState) -> EngineResult<()> {
        self.check_running()?;
        if usize::from(vbid.0) >= self.shared.map.capacity() {
            return Err(EngineError::NotMyVbucket(vbid));
        }
        if self.shared.map.get(vbid).is_ok() {
            return Err(EngineError::VbucketExists(vbid));
        }
        let uuid = self
            .shared
            .uuid_seed
            .fetch_add(0x6a09_e667_f3bc_c909, Ordering::Relaxed)
            ^ self.shared.config.clock.now_nanos();
        let vb = VBucket::create(
            vbid,
            state,
            std::sync::Arc::clone(&self.shared.kv),
            Arc::clone(&self.shared.deleter),
            Arc::clone(&self.shared.cookies),
            uuid,
        )?;
        // Serialised with manifest updates: a vbucket inserted while one is
        // being applied (after it listed the vbuckets, before it made its
        // manifest current) would otherwise take the old manifest and never
        // see the new one (found by the soak).
        let _serial = lock(&self.shared.manifest_lock);
        match self.shared.map.insert(vb) {
            Ok(vb) => {
                // A new active vbucket takes the bucket's collections.
                let m = self.shared.current_manifest();
                apply_to(&self.shared, &vb, &m)
            }
            Err((vb, e)) => {
                // Lost a race with another create: remove ours.
                if let Err(err) = vb.mark_deleted_durably() {
                    tracing::warn!(%vbid, error = %err, "could not mark a losing create deleted");
                }
                vb.mark_deleting();
                drop(vb);
                Err(e)
            }
        }
    }

    /// Changes a vbucket's state; persisted by the next flush (durable once
    /// [`Engine::flush`] returns, or shortly after in the background).
    pub fn set_vbucket_state(&self, vbid: Vbid, state: VbState) -> EngineResult<()> {
        self.check_running()?;
        let vb = self.shared.map.get(vbid)?;
        // Serialised with manifest updates, as in `create_vbucket`.
        let _serial = lock(&self.shared.manifest_lock);
        {
            let mut d = lock(&vb.data);
            d.state = state;
            d.state_dirty = true;
        }
        flusher::schedule(&self.shared, &vb);
        if state == VbState::Active {
            // An activated vbucket catches up with the bucket's collections.
            let m = self.shared.current_manifest();
            apply_to(&self.shared, &vb, &m)?;
        }
        Ok(())
    }

    /// Deletes a vbucket: the shared body of every way to call it.
    pub(crate) fn delete_vbucket_via(
        &self,
        via: Option<&Via>,
        vbid: Vbid,
    ) -> EngineResult<Step<()>> {
        if let Some(Via::Client(c)) = via
            && let Some(r) = self.shared.cookies.collect(*c, WaitKind::VbDeletion)
        {
            return r.map(|_| Step::Done(()));
        }
        self.check_running()?;
        let waiter = via.map(|v| DeleteWaiter {
            owner: v.owner(),
            slot: v.mailbox(),
            cookies: &self.shared.cookies,
        });
        Ok(match self.shared.map.delete_with(vbid, waiter)? {
            Some(_) => Step::Parked,
            None => Step::Done(()),
        })
    }

    /// The caller behind `cookie` is gone: frees any state parked under it
    /// and takes it out of every waiter list. A manifest update it had
    /// persisted is applied anyway, so memory matches what is on disk.
    pub fn release_cookie(&self, cookie: CookieId) {
        release_owner(&self.shared, Owner::Client(cookie));
    }
    /// Compacts a vbucket's store, purging the items of its dropped
    /// collections; a vbucket delete stops it.
    pub fn compact(
        &self,
        vbid: Vbid,
        mut config: CompactionConfig,
    ) -> EngineResult<CompactionResult> {
        self.check_running()?;
        let vb = self.shared.map.get(vbid)?;
        config.cancel = Some(vb.compaction.clone());
        let dropped = lock(&vb.data).collections.dropped_for_compaction();
        config.dropped.extend(dropped.iter().copied());
        let r = vb.store().compact(&config)?;
        if !dropped.is_empty() {
            let mut d = lock(&vb.data);
            d.collections.purged(&dropped);
            d.state_dirty = true;
            drop(d);
            flusher::schedule(&self.shared, &vb);
        }
        Ok(r)
    }

    /// Applies a collections manifest (the state machine of DESIGN §8): the
    /// shared body of every way to call it.
    pub(crate) fn set_collections_via(&self, via: &Via, json: &[u8]) -> EngineResult<Step<()>> {
        self.check_running()?;
        if let Via::Client(cookie) = via {
            match self.shared.cookies.collect(*cookie, WaitKind::Manifest) {
                None => {}
                Some(Err(e)) => return Err(e),
                Some(Ok(_)) => return finish_manifest(&self.shared, via.owner()).map(Step::Done),
            }
        }
        let next =
            Manifest::from_json(json).map_err(|e| EngineError::InvalidArguments(e.to_string()))?;
        let serial = lock(&self.shared.manifest_lock);
        let current = self.shared.current_manifest();
        current
            .check_successor(&next)
            .map_err(|e| EngineError::CannotApplyManifest(e.to_string()))?;
        if next == *current {
            return Ok(Step::Done(()));
        }
        let next = Arc::new(next);
        let owner = via.owner();
        match self.shared.updates.start(owner, Arc::clone(&next)) {
            Start::Started => drop(serial),
            Start::AlreadyInFlight => return Err(EngineError::WouldBlock),
            Start::Busy { .. } => {
                return Err(EngineError::Busy(
                    "a collections update is in progress for another connection".into(),
                ));
            }
        }
        let parked = match via {
            Via::Client(c) => self.shared.cookies.park(*c, Waiting::Manifest),
            Via::Local(o, m) => {
                self.shared
                    .cookies
                    .park_local(*o, Waiting::Manifest, Arc::clone(m))
            }
        };
        let ticket = match parked {
            Ok(t) => t,
            Err(e) => {
                self.shared.updates.finished(owner, false);
                return Err(e);
            }
        };
        let shared = Arc::clone(&self.shared);
        thread::spawn(move || {
            let result = shared.manifest_store.store(&next);
            if let Err(e) = &result {
                tracing::error!(error = %e, uid = next.uid, "persisting the collections manifest failed");
            }
            let finished = {
                let _serial = lock(&shared.manifest_lock);
                let f = shared.updates.finished(owner, result.is_ok());
                if let Finished::ApplyOrphan(m) = &f
                    && let Err(e) = apply_manifest(&shared, m)
                {
                    tracing::error!(error = %e, "applying an orphaned manifest failed");
                }
                f
            };
            // Outside the lock: a client's notifier may re-issue at once.
            match finished {
                Finished::NotifySuccess => {
                    shared.cookies.complete(ticket, |_| Ok(Outcome::Done));
                }
                Finished::NotifyFailure => {
                    let msg = result.err().map(|e| e.to_string()).unwrap_or_default();
                    shared.cookies.complete(ticket, |_| {
                        Err(EngineError::CannotApplyManifest(format!(
                            "persisting the manifest failed: {msg}"
                        )))
                    });
                }
                Finished::ApplyOrphan(_) | Finished::DropOrphan | Finished::Stale => {}
            }
        });
        Ok(Step::Parked)
    }

    /// The bucket's current collections manifest.
    #[must_use]
    pub fn manifest(&self) -> Arc<Manifest> {
        self.shared.current_manifest()
    }

    /// The id of the collection at `scope.collection`, with the manifest uid
    /// it was looked up in.
    pub fn collection_id(&self, path: &str) -> EngineResult<(u64, kvstore_core::CollectionId)> {
        let m = self.shared.current_manifest();
        let Some((scope, _)) = path.split_once('.') else {
            return Err(EngineError::InvalidArguments(format!(
                "{path:?} is not a scope.collection path"
            )));
        };
        if m.scope_by_name(scope).is_none() {
            return Err(EngineError::UnknownScope {
                manifest_uid: m.uid,
            });
        }
        m.collection_by_path(path)
            .map(|c| (m.uid, c.id))
            .ok_or(EngineError::UnknownCollection {
                manifest_uid: m.uid,
            })
    }

    /// The collections of one vbucket: open ones with their counters, and
    /// the dropped generations not yet purged.
    pub fn vbucket_collections(&self, vbid: Vbid) -> EngineResult<VbManifest> {
        let vb = self.shared.map.get(vbid)?;
        Ok(lock(&vb.data).collections.clone())
    }

    /// Per-collection counters of one vbucket.
    pub fn collection_stats(&self, vbid: Vbid) -> EngineResult<Vec<CollectionInfo>> {
        let vb = self.shared.map.get(vbid)?;
        let d = lock(&vb.data);
        Ok(d.collections
            .collections
            .values()
            .map(|c| CollectionInfo {
                cid: kvstore_core::CollectionId(c.cid),
                name: c.name.clone(),
                scope: kvstore_core::ScopeId(c.sid),
                start_seqno: Seqno(c.start),
                stats: c.stats,
            })
            .collect())
    }

    /// Flushes every vbucket now, in the calling thread, failing ones
    /// included (their back-off is skipped). When it returns Ok, every
    /// write made before the call is durable. Returns the first flush error
    /// (the items stay dirty and are retried).
    pub fn flush(&self) -> EngineResult<()> {
        let mut first_err = None;
        for vb in self.shared.map.guards() {
            let outcome = flush_vbucket(&vb, &self.shared);
            flusher::after_flush(&self.shared, &vb, &outcome);
            if let Flushed::Failed(msg) = outcome {
                first_err.get_or_insert(EngineError::TemporaryFailure(msg));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Waits until the background flusher has nothing queued or running.
    /// Vbuckets waiting out a back-off after a failure do not count.
    pub fn wait_for_flusher(&self) {
        self.shared.flusher.wait_idle();
    }

    /// Waits until every pending vbucket deletion is done.
    pub fn wait_for_deletions(&self) {
        self.shared.deleter.wait_idle();
    }

    /// The deletion queue (for its records of destroyed revisions).
    #[must_use]
    pub fn deleter(&self) -> &Deleter {
        &self.shared.deleter
    }

    /// One vbucket's stats.
    pub fn vbucket_stats(&self, vbid: Vbid) -> EngineResult<VbStats> {
        let vb = self.shared.map.get(vbid)?;
        Ok(Self::stats_of(&vb))
    }

    fn stats_of(vb: &VBucket) -> VbStats {
        let (disk, disk_error) = match vb.store().info() {
            Ok(i) => (i, None),
            Err(e) => (StoreInfo::default(), Some(e.to_string())),
        };
        let health = vb.health();
        let d = lock(&vb.data);
        let dirty = d.dirty.len() + d.flushing.as_ref().map_or(0, |f| f.len());
        VbStats {
            vbid: vb.vbid(),
            state: d.state,
            vbucket_uuid: d.uuid(),
            high_seqno: Seqno(d.high_seqno),
            persisted_seqno: vb.persisted_seqno(),
            items: d.live_items,
            dirty_items: dirty as u64,
            dirty_bytes: d.dirty_bytes,
            flush_batches: vb.counters.batches.load(Ordering::Relaxed),
            flushed_items: vb.counters.items.load(Ordering::Relaxed),
            flush_time: Duration::from_nanos(vb.counters.nanos.load(Ordering::Relaxed)),
            flush_failures: vb.counters.failures.load(Ordering::Relaxed),
            flush_retries: vb.counters.retries.load(Ordering::Relaxed),
            store_reopens: vb.counters.reopens.load(Ordering::Relaxed),
            health,
            flush_error: d.flush_error.clone(),
            disk,
            disk_error,
        }
    }

    /// Engine-wide stats.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats {
            memory_used: self.shared.memory.used(),
            memory_quota: self.shared.memory.quota,
            pending_deletions: self.shared.deleter.pending(),
            cookies: self.shared.cookies.len(),
            backing_off: self.shared.flusher.delayed(),
            collections_update_in_flight: {
                let _serial = lock(&self.shared.manifest_lock);
                self.shared.updates.in_flight().is_some()
            },
            ..EngineStats::default()
        };
        for vb in self.shared.map.guards() {
            s.vbuckets += 1;
            let v = Self::stats_of(&vb);
            s.items += v.items;
            s.dirty_items += v.dirty_items;
            s.flush_batches += v.flush_batches;
            s.flushed_items += v.flushed_items;
            s.flush_time += v.flush_time;
            s.flush_failures += v.flush_failures;
            s.flush_retries += v.flush_retries;
            s.store_reopens += v.store_reopens;
            s.failing_vbuckets += usize::from(v.health != VbHealth::Healthy);
            s.disk_bytes += v.disk.file_bytes;
            s.disk_live_bytes += v.disk.data_bytes;
            s.disk_reclaimed_bytes += v.disk.reclaimed_bytes;
            s.reclaiming_vbuckets += usize::from(v.disk.reclaiming);
        }
        s
    }

    /// Flushes everything, stops the background threads, lets go of the
    /// vbuckets (nothing is deleted) and closes the backend, which releases
    /// the data directory ([`kvstore_core::KvStore::close`]). Pending
    /// deletions finish first. It takes `&self`, so a shared `Arc<Engine>` can be shut down; every
    /// later call gets `ShuttingDown`, and a second shutdown does nothing.
    /// When it returns Ok, every write acknowledged before it is durable.
    pub fn shutdown(&self) -> EngineResult<()> {
        let threads = std::mem::take(&mut *lock(&self.threads));
        if self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.flusher.wait_idle();
        let flushed = self.flush();
        // No new flush tasks from here; the ones queued finish (and let go
        // of the engine) before this returns.
        self.shared.flusher.shutdown();
        self.shared.flusher.wait_idle();
        self.shared.deleter.shutdown();
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a background thread panicked");
            }
        }
        // Anything queued after the threads stopped.
        self.shared.deleter.run_pending();
        drop(self.shared.map.clear());
        // Let go of the data directory, so that it can be opened again at
        // once (by this process too).
        let closed = self.shared.kv.close().map_err(EngineError::from);
        tracing::info!("engine shut down");
        flushed.and(closed)
    }
}

impl Drop for Engine {
    /// Stops the background work without flushing (see
    /// [`Engine::shutdown`] for a clean stop). When this returns no flush
    /// task holds the backend any more: a task still running on a pool
    /// thread could otherwise drop the last handle on the backend after
    /// the process began to exit (RocksDB aborts then).
    fn drop(&mut self) {
        let threads = std::mem::take(&mut *lock(&self.threads));
        self.shared.shutting_down.store(true, Ordering::Release);
        self.shared.flusher.shutdown();
        self.shared.flusher.wait_idle();
        self.shared.deleter.shutdown();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// The result of a persistence wait.
pub(crate) fn outcome_mutation(o: Outcome) -> EngineResult<MutationResult> {
    match o {
        Outcome::Mutation(m) => Ok(m),
        Outcome::Done => Err(EngineError::InvalidArguments(
            "a persistence wait completed without a mutation".into(),
        )),
    }
}

/// A manifest update of `owner` was persisted: apply it now.
pub(crate) fn finish_manifest(shared: &Arc<Shared>, owner: Owner) -> EngineResult<()> {
    let _serial = lock(&shared.manifest_lock);
    match shared.updates.take(owner) {
        Some(m) => apply_manifest(shared, &m),
        None => Ok(()),
    }
}

/// The caller behind `owner` is gone: frees its parked state and takes it
/// out of every waiter list; a manifest it had persisted is applied.
pub(crate) fn release_owner(shared: &Arc<Shared>, owner: Owner) {
    if shared.cookies.release_owner(owner) {
        tracing::debug!(?owner, "released the state of a departed caller");
    }
    let _serial = lock(&shared.manifest_lock);
    if let Some(m) = shared.updates.disconnect(owner)
        && let Err(e) = apply_manifest(shared, &m)
    {
        tracing::error!(error = %e, "applying the manifest of a departed caller failed");
    }
}
