//! [`CouchStore`] (the [`KvStore`]) and its per-revision handles.

use crate::btree::{iterate, lookup};
use crate::cache::{BlockCache, NodeCache};
use crate::codec::{decode_key_rec, decode_seq_rec, parse_seqno_key, seqno_key};
use crate::fdcache::{FdCache, Pin, StoreDir, open_files_limit};
use crate::file::CouchFile;
use crate::header::{Header, SegmentStat, SegmentTable};
use crate::io::{FaultInjector, Io, sync_dir};
use crate::memtable::{Change, Found, IndexRec, Memtable};
use crate::node::Compression;
use crate::wal::{
    RecordBuilder, RecordKind, Segment, WalPtr, WalWriter, check_segment_header, create_segment,
    decode_item_head, encode_locals, item_count_prefix, parse_segment_name, segment_name,
};
use bytes::Bytes;
use kvstore_core::batch::prepare;
use kvstore_core::{
    CommitBatch, CommitInfo, CompactionConfig, CompactionResult, CorruptionKind, DiskKey, Document,
    KeyRange, KvStore, Revision, RollbackResult, ScanControl, ScanOptions, ScanStatus, Seqno,
    SeqnoScan, StoreError, StoreInfo, StoreResult, VBSTATE_LOCAL_NAME, VbStore, Vbid, VbucketState,
};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Settings of a [`CouchStore`].
///
/// Memory is bounded by `cache_bytes + block_cache_bytes + memtable_budget`
/// (plus what checkpoints and scans hold briefly), whatever the data size
/// and the number of vbuckets.
#[derive(Debug, Clone)]
pub struct CouchConfig {
    /// Sync every commit (default true). Turning it off keeps atomicity but
    /// not durability across a power loss.
    pub sync: bool,
    /// Target uncompressed index node size in bytes (default 4096).
    pub node_size: usize,
    /// Index node compression (default LZ4).
    pub compression: Compression,
    /// Bytes of decoded index nodes cached, shared by every vbucket
    /// (default 48 MiB).
    pub cache_bytes: usize,
    /// Bytes of log blocks cached, shared by every vbucket (default
    /// 64 MiB). Commits put what they write here, so recent documents read
    /// from memory.
    pub block_cache_bytes: usize,
    /// A vbucket's memtable is checkpointed into its index once it holds
    /// this many bytes (default 8 MiB).
    pub memtable_bytes: usize,
    /// All memtables together; past it the largest is checkpointed first,
    /// and past twice it commits wait for checkpoints (default 64 MiB).
    pub memtable_budget: usize,
    /// A checkpoint is also taken once this many log bytes were written
    /// since the last one, which bounds the work of recovery (default
    /// 64 MiB).
    pub checkpoint_log_bytes: u64,
    /// A log segment is closed and a new one started past this size
    /// (default 16 MiB).
    pub segment_bytes: u64,
    /// A closed segment is reclaimed (its live documents copied forward and
    /// the file removed) once less than this share of its bytes is live
    /// (default 0.5).
    pub reclaim_live_ratio: f64,
    /// ... and at least this many of its bytes are garbage (default
    /// 256 KiB).
    pub reclaim_min_garbage: u64,
    /// The size threshold: while more than this share of the whole log is
    /// garbage, the closed segment with the least live share is reclaimed
    /// too, whatever its share (default 0.2, so the log stays within 1.25x
    /// of its live bytes once reclamation catches up).
    pub reclaim_garbage_ratio: f64,
    /// The index file is rewritten densely (instead of appended to) when a
    /// checkpoint would leave it larger than this multiple of its dense size,
    /// or when the checkpoint changes more than a quarter of its entries
    /// (default 2.0).
    pub index_rewrite_ratio: f64,
    /// Open file descriptors kept across every vbucket (default: half the
    /// process's `ulimit -n`, at most 512).
    pub max_open_files: usize,
    /// Run checkpoints and space reclamation on a background thread
    /// (default true). With false they run inside `commit` when due, which
    /// makes tests deterministic.
    pub background: bool,
    /// Injects I/O failures (tests).
    pub faults: Option<Arc<FaultInjector>>,
}

impl Default for CouchConfig {
    fn default() -> Self {
        let fds = open_files_limit().map_or(256, |l| (l / 2).clamp(16, 512)) as usize;
        CouchConfig {
            sync: true,
            node_size: 4096,
            compression: Compression::Lz4,
            cache_bytes: 48 << 20,
            block_cache_bytes: 64 << 20,
            memtable_bytes: 8 << 20,
            memtable_budget: 64 << 20,
            checkpoint_log_bytes: 64 << 20,
            segment_bytes: 16 << 20,
            reclaim_live_ratio: 0.5,
            reclaim_min_garbage: 256 << 10,
            reclaim_garbage_ratio: 0.2,
            index_rewrite_ratio: 2.0,
            max_open_files: fds,
            background: true,
            faults: None,
        }
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here
/// leaves the data consistent at each early return.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a directory name in the data directory says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirKind {
    /// `<vbid>.couch.<rev>`
    Live,
    /// `<vbid>.couch.<rev>.tmp`: a create that did not finish.
    Tmp,
    /// `<vbid>.couch.<rev>.deleted`: marked deleted, removed at startup.
    Deleted,
}

/// Parses a store directory name.
pub(crate) fn parse_name(name: &str) -> Option<(Vbid, Revision, DirKind)> {
    let mut parts = name.split('.');
    let vbid: u16 = parts.next()?.parse().ok()?;
    if parts.next()? != "couch" {
        return None;
    }
    let rev: u64 = parts.next()?.parse().ok()?;
    let kind = match parts.next() {
        None => DirKind::Live,
        Some("tmp") => DirKind::Tmp,
        Some("deleted") => DirKind::Deleted,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((Vbid(vbid), Revision(rev), kind))
}

/// The directory name of a revision.
#[must_use]
pub fn store_name(vbid: Vbid, rev: Revision) -> String {
    format!("{}.couch.{}", vbid.0, rev.0)
}

/// The name a revision's directory takes once it is marked deleted.
#[must_use]
pub fn deleted_name(vbid: Vbid, rev: Revision) -> String {
    format!("{}.deleted", store_name(vbid, rev))
}

/// The name of index file `n`.
#[must_use]
pub fn index_name(n: u32) -> String {
    format!("index.{n}")
}

fn parse_index_name(name: &str) -> Option<u32> {
    name.strip_prefix("index.")?.parse().ok()
}

/// Wakes the maintenance thread and tells it when to stop.
#[derive(Default)]
pub(crate) struct MaintSignal {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl MaintSignal {
    pub(crate) fn poke(&self) {
        lock(&self.state).0 = true;
        self.cv.notify_all();
    }

    fn stop(&self) {
        lock(&self.state).1 = true;
        self.cv.notify_all();
    }

    /// Waits for a poke or `timeout`; false once stopped.
    pub(crate) fn wait(&self, timeout: Duration) -> bool {
        let mut g = lock(&self.state);
        if !g.0 && !g.1 {
            g = self
                .cv
                .wait_timeout(g, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        g.0 = false;
        !g.1
    }
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: CouchConfig,
    pub(crate) io: Io,
    pub(crate) nodes: Arc<NodeCache>,
    pub(crate) blocks: Arc<BlockCache>,
    pub(crate) fds: Arc<FdCache>,
    revs: Mutex<HashMap<Vbid, u64>>,
    handles: Mutex<HashMap<Vbid, Vec<Weak<CouchVb>>>>,
    pub(crate) signal: Arc<MaintSignal>,
    /// Bytes held by every memtable.
    pub(crate) memtables: AtomicUsize,
    /// Held until the store is closed or dropped: one instance per
    /// directory (none for read-only inspection).
    dir_lock: Mutex<Option<fs::File>>,
    /// Set by [`KvStore::close`]: handles refuse every call.
    pub(crate) closed: AtomicBool,
    /// Held shared by the store's own calls, exclusively by `close`.
    gate: RwLock<()>,
    /// Inspection only: nothing on disk is changed.
    pub(crate) read_only: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.signal.stop();
    }
}

impl Shared {
    /// Admits one call on the store, or refuses it once the store is
    /// closed; `close` waits for the calls admitted.
    fn admit(&self) -> StoreResult<std::sync::RwLockReadGuard<'_, ()>> {
        let g = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        Ok(g)
    }

    /// A store context that reads `dir` and changes nothing: no lock, no
    /// maintenance thread.
    pub(crate) fn read_only(dir: &Path, mut config: CouchConfig) -> Arc<Shared> {
        config.background = false;
        let io = Io::default();
        Arc::new(Shared {
            dir: dir.to_path_buf(),
            nodes: NodeCache::new(config.cache_bytes),
            blocks: BlockCache::new(config.block_cache_bytes),
            fds: FdCache::new(config.max_open_files, io.clone()),
            io,
            config,
            revs: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            signal: Arc::new(MaintSignal::default()),
            memtables: AtomicUsize::new(0),
            dir_lock: Mutex::new(None),
            closed: AtomicBool::new(false),
            gate: RwLock::new(()),
            read_only: true,
        })
    }

    pub(crate) fn path(&self, vbid: Vbid, rev: Revision) -> PathBuf {
        self.dir.join(store_name(vbid, rev))
    }

    pub(crate) fn next_rev(&self, vbid: Vbid) -> Revision {
        let mut revs = lock(&self.revs);
        let r = revs.entry(vbid).or_insert(0);
        *r += 1;
        Revision(*r)
    }

    pub(crate) fn live_handles(&self, vbid: Vbid) -> Vec<Arc<CouchVb>> {
        let mut handles = lock(&self.handles);
        let list = handles.entry(vbid).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    pub(crate) fn all_handles(&self) -> Vec<Arc<CouchVb>> {
        let mut handles = lock(&self.handles);
        let mut out = Vec::new();
        for list in handles.values_mut() {
            list.retain(|w| w.strong_count() > 0);
            out.extend(list.iter().filter_map(Weak::upgrade));
        }
        out
    }

    fn register(&self, h: &Arc<CouchVb>) {
        lock(&self.handles)
            .entry(h.vbid)
            .or_default()
            .push(Arc::downgrade(h));
    }
}

/// The couchfile backend: one directory per vbucket revision, each holding
/// an index file and log segments (see the crate docs).
///
/// ```
/// use kvstore_core::{CollectionId, CommitBatch, DiskKey, Document, KvStore, Seqno, Vbid};
/// use kvstore_couchfile::{CouchConfig, CouchStore};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let store = CouchStore::open(dir.path(), CouchConfig::default())?;
/// let vb = store.create(Vbid(0))?;
/// let key = DiskKey::new(CollectionId::DEFAULT, b"k")?;
/// // Durable when `commit` returns: one log append and one fdatasync.
/// vb.commit(CommitBatch::new().item(Document::new(key.clone(), Seqno(1), "v")))?;
/// let rev = vb.revision();
/// drop((vb, store));
///
/// let store = CouchStore::open(dir.path(), CouchConfig::default())?;
/// assert_eq!(store.discover()?, [(Vbid(0), rev)]);
/// let vb = store.open(Vbid(0), rev)?;
/// assert_eq!(&vb.get(&key)?.expect("durable").value[..], b"v");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct CouchStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CouchStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchStore")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// How long `open` waits for another instance on the same directory (in
/// this process, one being dropped) to let go of it.
const LOCK_WAIT: Duration = Duration::from_secs(30);

fn lock_dir(dir: &Path) -> StoreResult<fs::File> {
    let path = dir.join("LOCK");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io("open lock file", &path, e))?;
    let started = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) if started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::io(
                    "lock",
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::WouldBlock,
                        "the data directory is in use by another store instance",
                    ),
                ));
            }
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io("lock", &path, e)),
        }
    }
}

impl CouchStore {
    /// Opens (creating if needed) the data directory `dir` and starts the
    /// maintenance thread. Nothing is removed until [`KvStore::discover`]
    /// runs. A second instance on the same directory waits for the first to
    /// be dropped, up to 30 seconds, then fails.
    pub fn open(dir: &Path, config: CouchConfig) -> StoreResult<Self> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        let dir_lock = lock_dir(dir)?;
        let io = Io {
            stats: Arc::default(),
            faults: config.faults.clone(),
        };
        let mut revs: HashMap<Vbid, u64> = HashMap::new();
        for (vbid, rev, _) in list_stores(dir)? {
            let r = revs.entry(vbid).or_insert(0);
            *r = (*r).max(rev.0);
        }
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            nodes: NodeCache::new(config.cache_bytes),
            blocks: BlockCache::new(config.block_cache_bytes),
            fds: FdCache::new(config.max_open_files, io.clone()),
            io,
            config,
            revs: Mutex::new(revs),
            handles: Mutex::new(HashMap::new()),
            signal: Arc::new(MaintSignal::default()),
            memtables: AtomicUsize::new(0),
            dir_lock: Mutex::new(Some(dir_lock)),
            closed: AtomicBool::new(false),
            gate: RwLock::new(()),
            read_only: false,
        });
        if shared.config.background {
            let weak = Arc::downgrade(&shared);
            let signal = Arc::clone(&shared.signal);
            std::thread::Builder::new()
                .name("couchfile-maint".into())
                .spawn(move || crate::maint::run(&weak, &signal))
                .map_err(|e| StoreError::io("spawn maintenance thread", dir, e))?;
        }
        Ok(CouchStore { shared })
    }

    /// The data directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// I/O counters of every file of this store.
    #[must_use]
    pub fn io_stats(&self) -> Arc<crate::io::IoStats> {
        Arc::clone(&self.shared.io.stats)
    }

    /// Node-cache hits and misses.
    #[must_use]
    pub fn cache_hit_miss(&self) -> (u64, u64) {
        self.shared.nodes.hit_miss()
    }

    /// Block-cache hits and misses.
    #[must_use]
    pub fn block_hit_miss(&self) -> (u64, u64) {
        self.shared.blocks.hit_miss()
    }

    /// Bytes held by the node cache and the block cache now.
    #[must_use]
    pub fn cache_bytes(&self) -> (usize, usize) {
        (self.shared.nodes.weight(), self.shared.blocks.weight())
    }

    /// File descriptors open now.
    #[must_use]
    pub fn open_files(&self) -> usize {
        self.shared.fds.open_count()
    }

    /// Bytes held by every vbucket's memtable.
    #[must_use]
    pub fn memtable_bytes(&self) -> usize {
        self.shared.memtables.load(Ordering::Relaxed)
    }

    /// Opens a revision as the concrete handle type. An open revision
    /// gives its existing handle, unless that handle was deleted.
    pub fn open_couch(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<CouchVb>> {
        let _admitted = self.shared.admit()?;
        if let Some(h) = self
            .shared
            .live_handles(vbid)
            .into_iter()
            .find(|h| h.revision == revision && !h.deleted.load(Ordering::SeqCst))
        {
            return Ok(h);
        }
        let path = self.shared.path(vbid, revision);
        if !path.is_dir() {
            return Err(StoreError::NoSuchRevision { vbid, revision });
        }
        let h = CouchVb::open(&self.shared, vbid, revision, StoreDir::new(path))?;
        self.shared.register(&h);
        Ok(h)
    }

    /// Runs pending maintenance (checkpoints, space reclamation) of every
    /// open vbucket now, in the calling thread; returns how many steps ran.
    pub fn maintain(&self) -> StoreResult<usize> {
        let mut n = 0;
        for h in self.shared.all_handles() {
            while h.maintain_once()? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Lists the store directories in `dir`; a file named like a store is a
/// file of the first format, which this build does not read.
pub(crate) fn list_stores(dir: &Path) -> StoreResult<Vec<(Vbid, Revision, DirKind)>> {
    let rd = fs::read_dir(dir).map_err(|e| StoreError::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io("list directory", dir, e))?;
        let Some(parsed) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        // Followed through a symlink: a store directory may live on
        // another filesystem.
        let meta =
            fs::metadata(entry.path()).map_err(|e| StoreError::io("stat", entry.path(), e))?;
        if !meta.is_dir() {
            if parsed.2 == DirKind::Live {
                return Err(StoreError::corrupt(
                    entry.path(),
                    0,
                    CorruptionKind::UnknownVersion(1),
                ));
            }
            continue;
        }
        out.push(parsed);
    }
    Ok(out)
}

pub(crate) fn remove_dir(path: &Path) -> StoreResult<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

pub(crate) fn remove_file(path: &Path) -> StoreResult<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove", path, e)),
    }
}

impl KvStore for CouchStore {
    fn backend_name(&self) -> &'static str {
        "couchfile"
    }

    fn close(&self) -> StoreResult<()> {
        let _exclusive = self
            .shared
            .gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.shared.signal.stop();
        // Wait out the maintenance step and the commit in progress of every
        // handle; both check `closed` once they hold their lock.
        for h in self.shared.all_handles() {
            h.stop.store(true, Ordering::SeqCst);
            drop(lock(&h.maint));
            let mut w = lock(&h.writer);
            // A refused append must not come back at the next open.
            if let Err(e) = w.wal.recover_if_dirty() {
                tracing::warn!(vbid = %h.vbid, error = %e, "could not clear a failed append at close");
            }
            drop(w);
        }
        drop(lock(&self.shared.dir_lock).take());
        tracing::debug!(dir = %self.shared.dir.display(), "store closed");
        Ok(())
    }

    fn discover(&self) -> StoreResult<Vec<(Vbid, Revision)>> {
        let _admitted = self.shared.admit()?;
        let dir = &self.shared.dir;
        let mut newest: BTreeMap<Vbid, Revision> = BTreeMap::new();
        let mut remove = Vec::new();
        let stores = list_stores(dir)?;
        for &(vbid, rev, kind) in &stores {
            match kind {
                DirKind::Live => {
                    let e = newest.entry(vbid).or_insert(rev);
                    *e = (*e).max(rev);
                }
                DirKind::Tmp => remove.push(format!("{}.tmp", store_name(vbid, rev))),
                DirKind::Deleted => remove.push(deleted_name(vbid, rev)),
            }
        }
        for &(vbid, rev, kind) in &stores {
            if kind == DirKind::Live && newest.get(&vbid) != Some(&rev) {
                remove.push(store_name(vbid, rev));
            }
        }
        for name in &remove {
            tracing::info!(dir = %name, "removing a stale store");
            remove_dir(&dir.join(name))?;
        }
        if !remove.is_empty() {
            sync_dir(&self.shared.io, dir)?;
        }
        Ok(newest.into_iter().collect())
    }

    fn create(&self, vbid: Vbid) -> StoreResult<Arc<dyn VbStore>> {
        let _admitted = self.shared.admit()?;
        let revision = self.shared.next_rev(vbid);
        let path = self.shared.path(vbid, revision);
        let tmp = self
            .shared
            .dir
            .join(format!("{}.tmp", store_name(vbid, revision)));
        remove_dir(&tmp)?;
        fs::create_dir(&tmp).map_err(|e| StoreError::io("create directory", &tmp, e))?;
        let sd = StoreDir::new(tmp.clone());
        let fds = &self.shared.fds;
        let seg = create_segment(fds, &sd, vbid, revision, 1)?;
        drop(seg);
        let header = Header {
            vbid,
            revision,
            timestamp: now_secs(),
            wal_seg: 1,
            wal_off: crate::block::BLOCK_SIZE,
            next_commit: 1,
            ..Header::default()
        };
        crate::maint::write_fresh_index(
            &self.shared,
            &sd,
            1,
            header,
            &SegmentTable(vec![SegmentStat {
                no: 1,
                phys: crate::block::BLOCK_SIZE,
                ..SegmentStat::default()
            }]),
        )?;
        sync_dir(&self.shared.io, &tmp)?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
        sync_dir(&self.shared.io, &self.shared.dir)?;
        let h = CouchVb::open(&self.shared, vbid, revision, StoreDir::new(path))?;
        self.shared.register(&h);
        Ok(h)
    }

    fn open(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<dyn VbStore>> {
        Ok(self.open_couch(vbid, revision)?)
    }

    fn mark_deleted(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let _admitted = self.shared.admit()?;
        let handles: Vec<Arc<CouchVb>> = self
            .shared
            .live_handles(vbid)
            .into_iter()
            .filter(|h| h.revision == revision)
            .collect();
        // Stop maintenance of the revision and wait for a running step, so
        // nothing writes into the directory while it moves.
        let mut guards = Vec::new();
        for h in &handles {
            h.stop.store(true, Ordering::SeqCst);
            guards.push(lock(&h.maint));
        }
        let path = self.shared.path(vbid, revision);
        let marked = self.shared.dir.join(deleted_name(vbid, revision));
        match fs::rename(&path, &marked) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchRevision { vbid, revision });
            }
            Err(e) => {
                for h in &handles {
                    h.stop.store(false, Ordering::SeqCst);
                }
                return Err(StoreError::io("rename", &path, e));
            }
        }
        for h in &handles {
            h.dir.moved_to(marked.clone());
        }
        if let Err(e) = sync_dir(&self.shared.io, &self.shared.dir) {
            // Not durable: undo the rename, so that the revision stays as
            // the caller is told, and a restart does not remove it.
            match fs::rename(&marked, &path) {
                Ok(()) => {
                    for h in &handles {
                        h.dir.moved_to(path.clone());
                        h.stop.store(false, Ordering::SeqCst);
                    }
                }
                Err(undo) => tracing::error!(dir = %marked.display(), error = %undo,
                    "could not undo a deletion mark"),
            }
            return Err(e);
        }
        Ok(())
    }

    fn destroy(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let _admitted = self.shared.admit()?;
        let mut marked = false;
        for h in self.shared.live_handles(vbid) {
            if h.revision == revision {
                h.stop.store(true, Ordering::SeqCst);
                let _maint = lock(&h.maint);
                let _w = lock(&h.writer);
                h.deleted.store(true, Ordering::SeqCst);
                h.release_memtables();
                marked = true;
            }
        }
        let path = self.shared.path(vbid, revision);
        let deleted = self.shared.dir.join(deleted_name(vbid, revision));
        let existed = path.exists() || deleted.exists();
        remove_dir(&path)?;
        remove_dir(&deleted)?;
        if !existed && !marked {
            return Err(StoreError::NoSuchRevision { vbid, revision });
        }
        sync_dir(&self.shared.io, &self.shared.dir)
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A consistent view of the index file: a file and one of its headers.
#[derive(Debug, Clone)]
pub struct View {
    /// The file.
    pub file: Arc<CouchFile>,
    /// The header.
    pub header: Header,
    /// The decoded roots (by key, by seqno, local), filled on first use.
    pub roots: [crate::node::Resolved; 3],
}

impl View {
    /// A view of `header` in `file`.
    #[must_use]
    pub fn new(file: Arc<CouchFile>, header: Header) -> Self {
        View {
            file,
            header,
            roots: Default::default(),
        }
    }

    /// The index record of `key`.
    pub(crate) fn lookup(&self, key: &DiskKey) -> StoreResult<Option<IndexRec>> {
        let Some(raw) = lookup(
            &*self.file,
            self.header.by_key.as_ref(),
            Some(&self.roots[0]),
            key.as_bytes(),
        )?
        else {
            return Ok(None);
        };
        decode_key_rec(&raw)
            .map(Some)
            .map_err(|e| StoreError::corrupt(self.file.path(), 0, e.kind()))
    }
}

/// Counts of a store, kept up to date by every change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) live: u64,
    pub(crate) deleted: u64,
    pub(crate) bytes: u64,
}

impl Counts {
    pub(crate) fn remove(&mut self, r: &IndexRec) {
        if r.is_deleted() {
            self.deleted = self.deleted.saturating_sub(1);
        } else {
            self.live = self.live.saturating_sub(1);
        }
        self.bytes = self.bytes.saturating_sub(u64::from(r.body));
    }

    pub(crate) fn add(&mut self, r: &IndexRec) {
        if r.is_deleted() {
            self.deleted += 1;
        } else {
            self.live += 1;
        }
        self.bytes += u64::from(r.body);
    }
}

/// A memtable being checkpointed, with the state at the moment it froze.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub(crate) mem: Arc<Memtable>,
    pub(crate) high: Seqno,
    pub(crate) purge: Seqno,
    pub(crate) locals: Arc<BTreeMap<String, Bytes>>,
    pub(crate) segs: BTreeMap<u32, SegmentStat>,
    pub(crate) wal_seg: u32,
    pub(crate) wal_off: u64,
    pub(crate) next_commit: u64,
    pub(crate) reclaimed: u64,
}

/// Everything a reader needs, published as one immutable value per change.
#[derive(Debug)]
pub struct VbView {
    pub(crate) index: Arc<View>,
    pub(crate) frozen: Option<Arc<Frozen>>,
    pub(crate) active: Arc<Memtable>,
    pub(crate) segments: Arc<BTreeMap<u32, Arc<Segment>>>,
    pub(crate) locals: Arc<BTreeMap<String, Bytes>>,
    pub(crate) high_seqno: Seqno,
    pub(crate) purge_seqno: Seqno,
    /// The last commit applied.
    pub(crate) commit: u64,
    pub(crate) counts: Counts,
    pub(crate) disk_bytes: u64,
    pub(crate) reclaimed: u64,
}

impl VbView {
    /// A copy with the same contents, to change and publish.
    pub(crate) fn fork(&self) -> VbView {
        VbView {
            index: Arc::clone(&self.index),
            frozen: self.frozen.clone(),
            active: Arc::clone(&self.active),
            segments: Arc::clone(&self.segments),
            locals: Arc::clone(&self.locals),
            high_seqno: self.high_seqno,
            purge_seqno: self.purge_seqno,
            commit: self.commit,
            counts: self.counts,
            disk_bytes: self.disk_bytes,
            reclaimed: self.reclaimed,
        }
    }

    /// The current version of `key` as of commit `at`: memtables first,
    /// then the index.
    pub(crate) fn lookup_at(&self, key: &DiskKey, at: u64) -> StoreResult<Option<IndexRec>> {
        match self.active.get(key, at) {
            Found::Rec(r) => return Ok(Some(r)),
            Found::Purged => return Ok(None),
            Found::Missing => {}
        }
        if let Some(f) = &self.frozen {
            match f.mem.get(key, at) {
                Found::Rec(r) => return Ok(Some(r)),
                Found::Purged => return Ok(None),
                Found::Missing => {}
            }
        }
        self.index.lookup(key)
    }

    /// The newest version of `key` in the memtables, applied or still
    /// being applied. Only a caller holding the writer lock (so that no
    /// commit is in progress, and this view is the newest) may read the
    /// document it points at; readers use [`VbView::lookup_at`] with the
    /// view's commit.
    pub(crate) fn lookup(&self, key: &DiskKey) -> StoreResult<Option<IndexRec>> {
        self.lookup_at(key, u64::MAX)
    }

    /// [`VbView::lookup`] with the key's memtable hash computed already.
    pub(crate) fn lookup_hashed(&self, key: &DiskKey, h: u64) -> StoreResult<Option<IndexRec>> {
        match self.active.get_hashed(key, h, u64::MAX) {
            Found::Rec(r) => return Ok(Some(r)),
            Found::Purged => return Ok(None),
            Found::Missing => {}
        }
        if let Some(f) = &self.frozen {
            match f.mem.get_hashed(key, h, u64::MAX) {
                Found::Rec(r) => return Ok(Some(r)),
                Found::Purged => return Ok(None),
                Found::Missing => {}
            }
        }
        self.index.lookup(key)
    }

    /// The memtables' own view of `key` as of `at` (the index not asked).
    pub(crate) fn in_memory(&self, key: &DiskKey, at: u64) -> Found {
        match self.active.get(key, at) {
            Found::Missing => self
                .frozen
                .as_ref()
                .map_or(Found::Missing, |f| f.mem.get(key, at)),
            other => other,
        }
    }

    /// Reads the log item `rec` points at, as a document, checking that it
    /// is the version the index says.
    pub(crate) fn read_doc(
        &self,
        rec: &IndexRec,
        blocks: &BlockCache,
        expect: Option<&DiskKey>,
    ) -> StoreResult<Document> {
        let doc = self.read_ptr_for(rec.ptr, blocks, expect)?;
        if doc.meta.seqno != rec.seqno || expect.is_some_and(|k| *k != doc.key) {
            let path = self.seg_path(rec.ptr.seg);
            return Err(StoreError::corrupt(
                path,
                rec.ptr.off,
                CorruptionKind::Malformed {
                    what: "log item",
                    detail: format!(
                        "holds seqno {} of {:?}; the index expects seqno {}",
                        doc.meta.seqno, doc.key, rec.seqno
                    ),
                },
            ));
        }
        Ok(doc)
    }

    fn seg_path(&self, seg: u32) -> PathBuf {
        self.segments
            .get(&seg)
            .map_or_else(|| PathBuf::from(segment_name(seg)), |s| s.slot.path())
    }

    /// Reads and decodes the item at `ptr`.
    pub(crate) fn read_ptr(&self, ptr: WalPtr, blocks: &BlockCache) -> StoreResult<Document> {
        self.read_ptr_for(ptr, blocks, None)
    }

    /// [`VbView::read_ptr`] of an item expected to hold `expect`.
    fn read_ptr_for(
        &self,
        ptr: WalPtr,
        blocks: &BlockCache,
        expect: Option<&DiskKey>,
    ) -> StoreResult<Document> {
        let seg = self.segments.get(&ptr.seg).ok_or_else(|| {
            StoreError::corrupt(
                self.index.file.path(),
                0,
                CorruptionKind::Malformed {
                    what: "index record",
                    detail: format!("points at log segment {} which does not exist", ptr.seg),
                },
            )
        })?;
        let raw = seg.read_item(ptr, blocks)?;
        crate::wal::decode_item_for(&raw, expect)
            .map_err(|e| StoreError::corrupt(seg.slot.path(), ptr.off, e.kind()))
    }

    /// Pins every file of the view open.
    pub(crate) fn pin_all(&self) -> StoreResult<Vec<Pin>> {
        let mut pins = Vec::with_capacity(self.segments.len() + 1);
        pins.push(self.index.file.slot().pin()?);
        for s in self.segments.values() {
            pins.push(s.slot.pin()?);
        }
        Ok(pins)
    }
}

/// The writer's state: the log, commit numbers and segment accounting.
#[derive(Debug)]
pub(crate) struct Writer {
    pub(crate) wal: WalWriter,
    pub(crate) next_commit: u64,
    pub(crate) segs: BTreeMap<u32, SegmentStat>,
    /// Log bytes written since the last checkpoint froze the memtable.
    pub(crate) since_checkpoint: u64,
}

impl Writer {
    pub(crate) fn disk_bytes(&self, index_end: u64) -> u64 {
        index_end + self.segs.values().map(|s| s.phys).sum::<u64>()
    }
}

/// The index file's writer: only maintenance (checkpoints, rollback,
/// rewrites) touches it.
#[derive(Debug)]
pub(crate) struct IndexWriter {
    pub(crate) file: Arc<CouchFile>,
    pub(crate) no: u32,
    pub(crate) end: u64,
    pub(crate) header: Header,
    /// A write or sync after `end` failed and what it left could not be cut
    /// off yet. Until it is, commits are refused: a header that was
    /// reported failed but reached the disk could otherwise come back at
    /// the next open under commits made since (a rollback's, say).
    pub(crate) dirty: bool,
    /// A dense rewrite that failed left this file, not removed yet (same
    /// reason).
    pub(crate) leftover: Option<PathBuf>,
}

impl IndexWriter {
    /// Appends `bytes` at `end` and syncs (when `sync`). On failure, cuts
    /// the file back to `end` at once, durably; if even that fails the
    /// writer stays dirty.
    pub(crate) fn append(&mut self, bytes: &[u8], sync: bool) -> StoreResult<()> {
        self.clean()?;
        let f = self.file.io()?;
        let r = f
            .write_at(bytes, self.end)
            .and_then(|()| if sync { f.sync() } else { Ok(()) });
        if r.is_err() {
            self.dirty = true;
            let _ = self.clean();
        }
        r
    }

    /// Cuts off what a failed write left, and removes a failed rewrite's
    /// file, durably.
    pub(crate) fn clean(&mut self) -> StoreResult<()> {
        if self.dirty {
            let f = self.file.io()?;
            f.truncate(self.end)?;
            f.sync()?;
            self.dirty = false;
        }
        if let Some(path) = self.leftover.clone() {
            remove_file(&path)?;
            if let Some(dir) = path.parent() {
                sync_dir(self.file.io()?.io(), dir)?;
            }
            self.leftover = None;
        }
        Ok(())
    }

    /// True when a failed write still needs cleaning up.
    pub(crate) fn unclean(&self) -> bool {
        self.dirty || self.leftover.is_some()
    }
}

/// Counters of one vbucket's background work.
#[derive(Debug, Default)]
pub struct MaintStats {
    /// Checkpoints taken.
    pub checkpoints: AtomicU64,
    /// Index rewrites.
    pub rewrites: AtomicU64,
    /// Segments reclaimed.
    pub reclaims: AtomicU64,
    /// Bytes of live documents copied forward by reclamation.
    pub relocated_bytes: AtomicU64,
    /// Reclamation passes started.
    pub reclaim_started: AtomicU64,
    /// True while a reclamation pass runs.
    pub reclaiming: AtomicBool,
    /// Maintenance steps that failed.
    pub failures: AtomicU64,
}

/// One vbucket revision of a [`CouchStore`].
pub struct CouchVb {
    pub(crate) vbid: Vbid,
    pub(crate) revision: Revision,
    pub(crate) shared: Arc<Shared>,
    pub(crate) dir: Arc<StoreDir>,
    pub(crate) state: RwLock<Arc<VbView>>,
    pub(crate) writer: Mutex<Writer>,
    /// Held by checkpoints, reclamation, compaction, rollback and destroy,
    /// which must not overlap.
    pub(crate) maint: Mutex<IndexWriter>,
    pub(crate) deleted: AtomicBool,
    pub(crate) stop: AtomicBool,
    /// Mirrors [`IndexWriter::unclean`], for commits to check cheaply.
    pub(crate) index_unclean: AtomicBool,
    /// Signalled when a checkpoint installs (commits waiting for memory).
    pub(crate) installed: Condvar,
    pub(crate) installed_lock: Mutex<u64>,
    pub(crate) not_before: Mutex<Option<Instant>>,
    /// The next log segment, created ahead of time by maintenance so that
    /// a commit that fills the current one does not wait for a file
    /// creation. Its lock is held while a segment file is being created
    /// (by maintenance or by the writer), so no two creations of one
    /// segment number ever race; lock order: `writer`, then `spare`.
    pub(crate) spare: Mutex<Option<Arc<Segment>>>,
    /// The number of the segment the writer appends to (maintenance reads
    /// it without the writer's lock).
    pub(crate) head_seg: AtomicU32,
    /// Background work counters.
    pub stats: MaintStats,
}

impl std::fmt::Debug for CouchVb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchVb")
            .field("vbid", &self.vbid)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl Drop for CouchVb {
    fn drop(&mut self) {
        self.release_memtables();
    }
}

fn corrupt_at(path: &Path, offset: u64, e: crate::codec::DecodeError) -> StoreError {
    StoreError::corrupt(path, offset, e.kind())
}

/// The index record of an item read back from the log.
pub(crate) fn rec_of(head: &crate::wal::ItemHead, ptr: WalPtr) -> IndexRec {
    IndexRec {
        seqno: head.meta.seqno,
        deleted: head.meta.deleted,
        expiry: head.meta.expiry,
        body: u32::try_from(head.key.len() as u64 + head.value_len).unwrap_or(u32::MAX),
        ptr,
    }
}

/// A memtable's key bytes as a key (they were a valid key when stored).
pub(crate) fn mem_key(k: &[u8]) -> StoreResult<DiskKey> {
    DiskKey::from_bytes(k).map_err(StoreError::Key)
}

fn seg_stat(segs: &mut BTreeMap<u32, SegmentStat>, no: u32) -> &mut SegmentStat {
    segs.entry(no).or_insert_with(|| SegmentStat {
        no,
        ..SegmentStat::default()
    })
}

/// Applies records to a memtable, keeping counts and segment accounting:
/// the one code path of a commit, of recovery and of a rollback's replay.
pub(crate) struct Apply<'a> {
    pub(crate) view: &'a VbView,
    pub(crate) mem: &'a Memtable,
    pub(crate) counts: Counts,
    pub(crate) segs: &'a mut BTreeMap<u32, SegmentStat>,
    pub(crate) locals: Option<BTreeMap<String, Bytes>>,
    pub(crate) high: Seqno,
    pub(crate) purge: Seqno,
    pub(crate) added_bytes: usize,
}

impl Apply<'_> {
    fn current(&self, key: &DiskKey) -> StoreResult<Option<IndexRec>> {
        match self.mem.get(key, u64::MAX) {
            Found::Rec(r) => Ok(Some(r)),
            Found::Purged => Ok(None),
            Found::Missing => self.view.lookup(key),
        }
    }

    fn seg(&mut self, no: u32) -> &mut SegmentStat {
        seg_stat(self.segs, no)
    }

    /// A new version of each document (a commit). `known`, when given,
    /// holds the current versions the caller already looked up, and the
    /// keys' memtable hashes.
    pub(crate) fn commit<K: std::borrow::Borrow<DiskKey>>(
        &mut self,
        commit: u64,
        items: &[(K, IndexRec)],
        known: Option<(&[Option<IndexRec>], &[u64])>,
    ) -> StoreResult<()> {
        let looked_up: (Vec<Option<IndexRec>>, Vec<u64>);
        let (priors, hashes) = match known {
            Some(k) => k,
            None => {
                let hashes: Vec<u64> = items
                    .iter()
                    .map(|(k, _)| self.mem.hash(k.borrow()))
                    .collect();
                let priors = items
                    .iter()
                    .map(|(k, _)| self.current(k.borrow()))
                    .collect::<StoreResult<_>>()?;
                looked_up = (priors, hashes);
                (&looked_up.0[..], &looked_up.1[..])
            }
        };
        // New seqnos enter the memtable in ascending order.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_unstable_by_key(|&i| items[i].1.seqno);
        let mut m = self.mem.write();
        let before = m.held();
        for i in order {
            let (key, rec) = &items[i];
            let prior = priors[i];
            if let Some(p) = &prior {
                self.counts.remove(p);
                let s = seg_stat(self.segs, p.ptr.seg);
                s.live = s.live.saturating_sub(u64::from(p.ptr.len));
            }
            self.counts.add(rec);
            let s = seg_stat(self.segs, rec.ptr.seg);
            s.total += u64::from(rec.ptr.len);
            s.live += u64::from(rec.ptr.len);
            m.apply_hashed(
                key.borrow(),
                hashes[i],
                commit,
                Change::Put(*rec),
                prior,
                true,
            );
        }
        self.added_bytes += m.held().saturating_sub(before);
        Ok(())
    }

    /// Relocated copies: each takes effect only if the document is still at
    /// that seqno and still points where the copy came from.
    pub(crate) fn relocate(
        &mut self,
        commit: u64,
        items: &[(DiskKey, IndexRec, WalPtr)],
    ) -> StoreResult<()> {
        let before = self.mem.bytes();
        for (key, rec, from) in items {
            let len = u64::from(rec.ptr.len);
            self.seg(rec.ptr.seg).total += len;
            let cur = self.current(key)?;
            match cur {
                Some(c) if c.seqno == rec.seqno && c.ptr == *from => {
                    let s = self.seg(from.seg);
                    s.live = s.live.saturating_sub(u64::from(from.len));
                    self.seg(rec.ptr.seg).live += len;
                    self.mem
                        .write()
                        .apply(key, commit, Change::Put(*rec), cur, false);
                }
                _ => {}
            }
        }
        self.added_bytes += self.mem.bytes().saturating_sub(before);
        Ok(())
    }

    /// Purges: each key goes if it is still at that seqno.
    pub(crate) fn purge(
        &mut self,
        commit: u64,
        purges: &[(DiskKey, Seqno)],
        purge_seqno: Seqno,
    ) -> StoreResult<()> {
        let before = self.mem.bytes();
        for (key, seqno) in purges {
            let cur = self.current(key)?;
            if let Some(c) = cur
                && c.seqno == *seqno
            {
                self.counts.remove(&c);
                let s = self.seg(c.ptr.seg);
                s.live = s.live.saturating_sub(u64::from(c.ptr.len));
                self.mem
                    .write()
                    .apply(key, commit, Change::Purge, cur, false);
            }
        }
        self.purge = self.purge.max(purge_seqno);
        self.added_bytes += self.mem.bytes().saturating_sub(before);
        Ok(())
    }

    /// Local-document changes.
    pub(crate) fn locals(&mut self, changes: &[(String, Option<Bytes>)]) {
        if changes.is_empty() {
            return;
        }
        let locals = self
            .locals
            .get_or_insert_with(|| (*self.view.locals).clone());
        let mut m = self.mem.write();
        for (name, v) in changes {
            match v {
                Some(v) => {
                    locals.insert(name.clone(), v.clone());
                }
                None => {
                    locals.remove(name);
                }
            }
            m.local_changed(name);
        }
    }

    /// Applies a record read back from the log.
    pub(crate) fn record(&mut self, rec: &crate::wal::Record) -> StoreResult<()> {
        let path = PathBuf::from(segment_name(rec.seg));
        let p = rec
            .payload()
            .map_err(|e| corrupt_at(&path, rec.offset, e))?;
        match rec.kind {
            RecordKind::Commit => {
                let mut items = Vec::with_capacity(p.items.len());
                for (ptr, raw) in &p.items {
                    let head = decode_item_head(raw).map_err(|e| corrupt_at(&path, ptr.off, e))?;
                    let r = rec_of(&head, *ptr);
                    items.push((head.key, r));
                }
                self.commit(rec.commit, &items, None)?;
                self.locals(&p.locals);
                self.high = self.high.max(rec.high);
            }
            RecordKind::Relocate => {
                let mut items = Vec::with_capacity(p.items.len());
                for (ptr, raw) in &p.items {
                    let head = decode_item_head(raw).map_err(|e| corrupt_at(&path, ptr.off, e))?;
                    let r = rec_of(&head, *ptr);
                    // The copy's origin is found by the key's current
                    // version: whatever the copy replaced at that seqno.
                    let from = self.current(&head.key)?.filter(|c| c.seqno == r.seqno);
                    let from = from.map_or(*ptr, |c| c.ptr);
                    items.push((head.key, r, from));
                }
                self.relocate(rec.commit, &items)?;
            }
            RecordKind::Purge => {
                self.purge(rec.commit, &p.purges, p.purge_seqno)?;
            }
        }
        Ok(())
    }
}

impl CouchVb {
    /// Opens the revision in `dir`: the newest index header, the log
    /// segments, and a replay of every record after the header.
    pub(crate) fn open(
        shared: &Arc<Shared>,
        vbid: Vbid,
        revision: Revision,
        dir: Arc<StoreDir>,
    ) -> StoreResult<Arc<Self>> {
        let path = dir.path();
        let rd = fs::read_dir(&path).map_err(|e| StoreError::io("list directory", &path, e))?;
        let (mut indexes, mut segs_on_disk) = (Vec::new(), Vec::new());
        for entry in rd {
            let entry = entry.map_err(|e| StoreError::io("list directory", &path, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if let Some(n) = parse_index_name(&name) {
                indexes.push(n);
            } else if let Some(n) = parse_segment_name(&name) {
                segs_on_disk.push(n);
            } else if name.ends_with(".tmp") && !shared.read_only {
                remove_file(&path.join(&name))?;
            }
        }
        indexes.sort_unstable();
        segs_on_disk.sort_unstable();
        let Some(&index_no) = indexes.last() else {
            return Err(StoreError::corrupt(
                &path,
                0,
                CorruptionKind::Malformed {
                    what: "store directory",
                    detail: "holds no index file".into(),
                },
            ));
        };
        let writable = !shared.read_only;
        let mut index_no = index_no;
        let opened = loop {
            let slot = shared.fds.slot(&dir, index_name(index_no), writable);
            match CouchFile::open(slot, writable, Arc::clone(&shared.nodes)) {
                Ok(o) => break o,
                // A dense rewrite writes its one header last: a newest index
                // file with no valid header is a rewrite that did not finish,
                // and the one before it is still the index.
                Err(e)
                    if e.corruption()
                        .is_some_and(|c| c.kind == CorruptionKind::NoHeader)
                        && indexes.len() > 1 =>
                {
                    tracing::warn!(path = %path.display(), index = index_no, "removing an index rewrite that did not finish");
                    if writable {
                        remove_file(&path.join(index_name(index_no)))?;
                    }
                    indexes.pop();
                    index_no = *indexes.last().unwrap_or(&0);
                }
                Err(e) => return Err(e),
            }
        };
        let header = opened.header.clone();
        if header.vbid != vbid || header.revision != revision {
            return Err(StoreError::corrupt(
                opened.file.path(),
                header.offset,
                CorruptionKind::Malformed {
                    what: "header",
                    detail: format!(
                        "belongs to {} {}, not {vbid} {revision}",
                        header.vbid, header.revision
                    ),
                },
            ));
        }
        if writable {
            for n in &indexes[..indexes.len() - 1] {
                remove_file(&path.join(index_name(*n)))?;
            }
        }
        let table = match header.segments {
            None => SegmentTable::default(),
            Some(p) => {
                let raw = opened.file.read_chunk(p)?;
                SegmentTable::decode(&raw)
                    .map_err(|e| corrupt_at(&opened.file.path(), p.offset, e))?
            }
        };
        let mut stats: BTreeMap<u32, SegmentStat> = table.0.iter().map(|s| (s.no, *s)).collect();
        let max_table = stats.keys().next_back().copied().unwrap_or(0);
        let mut segments = BTreeMap::new();
        for n in segs_on_disk {
            if stats.contains_key(&n) || n > max_table {
                let slot = shared.fds.slot(&dir, segment_name(n), writable);
                check_segment_header(&*slot.get()?, vbid, revision, n)?;
                segments.insert(n, Segment::new(n, slot));
            } else if writable {
                tracing::info!(path = %path.display(), segment = n, "removing a reclaimed log segment");
                remove_file(&path.join(segment_name(n)))?;
            }
        }
        for s in stats.values() {
            if !segments.contains_key(&s.no) {
                return Err(StoreError::corrupt(
                    path.join(segment_name(s.no)),
                    0,
                    CorruptionKind::Malformed {
                        what: "store directory",
                        detail: format!("log segment {} is missing", s.no),
                    },
                ));
            }
        }
        let view = View::new(Arc::clone(&opened.file), header.clone());
        let locals = crate::maint::read_locals(&view)?;
        let reduce = header.by_key.map(|r| r.reduce).unwrap_or_default();
        let counts = Counts {
            live: reduce.live,
            deleted: reduce.deleted,
            bytes: reduce.bytes,
        };
        let base = VbView {
            index: Arc::new(view),
            frozen: None,
            active: Arc::new(Memtable::new()),
            segments: Arc::new(segments.clone()),
            locals: Arc::new(locals),
            high_seqno: header.high_seqno,
            purge_seqno: header.purge_seqno,
            commit: header.next_commit.saturating_sub(1),
            counts,
            disk_bytes: 0,
            reclaimed: header.reclaimed,
        };
        // Replay every record after the header.
        let mem = Arc::clone(&base.active);
        let mut apply = Apply {
            view: &base,
            mem: &mem,
            counts,
            segs: &mut stats,
            locals: None,
            high: header.high_seqno,
            purge: header.purge_seqno,
            added_bytes: 0,
        };
        let mut last_commit = header.next_commit.saturating_sub(1);
        let mut since = 0;
        let tail = crate::maint::replay(
            &segments,
            header.wal_seg,
            header.wal_off,
            last_commit,
            &mut |rec| {
                if rec.commit <= last_commit {
                    return Err(StoreError::corrupt(
                        PathBuf::from(segment_name(rec.seg)),
                        rec.offset,
                        CorruptionKind::Malformed {
                            what: "log record",
                            detail: format!(
                                "commit {} does not follow commit {last_commit}",
                                rec.commit
                            ),
                        },
                    ));
                }
                last_commit = rec.commit;
                since += rec.phys_len;
                apply.record(rec)
            },
        )?;
        let Apply {
            counts,
            locals,
            high,
            purge,
            added_bytes,
            ..
        } = apply;
        let last_seg = segments.values().next_back().cloned().ok_or_else(|| {
            StoreError::corrupt(
                &path,
                0,
                CorruptionKind::Malformed {
                    what: "store directory",
                    detail: "holds no log segment".into(),
                },
            )
        })?;
        let file_len = last_seg.slot.get()?.size()?;
        for s in stats.values_mut() {
            if let Some(seg) = segments.get(&s.no) {
                s.phys = seg.slot.get()?.size()?;
            }
        }
        // Segments after the one the log ends in were created ahead of
        // time and never written: remove them, so the writer carries on
        // where the log ends (and zeroes a torn tail there first).
        let (last_seg, file_len) = match tail {
            Some((seg, _, _)) if seg < last_seg.no => {
                let later: Vec<u32> = segments.range(seg + 1..).map(|(n, _)| *n).collect();
                for n in later {
                    if let Some(s) = segments.remove(&n) {
                        if writable {
                            s.slot.remove_on_drop();
                        }
                        stats.remove(&n);
                    }
                }
                let s = Arc::clone(&segments[&seg]);
                let len = s.slot.get()?.size()?;
                (s, len)
            }
            _ => (last_seg, file_len),
        };
        let (pos, dirty_until) = match tail {
            Some((seg, pos, dirty)) if seg == last_seg.no => (pos, dirty),
            _ => (crate::block::BLOCK_SIZE, file_len),
        };
        let wal = WalWriter {
            seg: Arc::clone(&last_seg),
            pos,
            file_len,
            dirty_until,
            poisoned: None,
            segment_bytes: shared.config.segment_bytes,
            sync: shared.config.sync,
            prealloc: Arc::default(),
            small_records: false,
        };
        let w = Writer {
            wal,
            next_commit: last_commit + 1,
            segs: stats,
            since_checkpoint: since,
        };
        let head_seg = AtomicU32::new(w.wal.seg.no);
        shared.memtables.fetch_add(added_bytes, Ordering::Relaxed);
        let view = VbView {
            segments: Arc::new(segments),
            locals: locals.map_or_else(|| Arc::clone(&base.locals), Arc::new),
            high_seqno: high,
            purge_seqno: purge,
            commit: last_commit,
            counts,
            disk_bytes: w.disk_bytes(opened.file.end()),
            ..base.fork()
        };
        let iw = IndexWriter {
            end: opened.file.end(),
            file: opened.file,
            no: index_no,
            header,
            dirty: false,
            leftover: None,
        };
        Ok(Arc::new(CouchVb {
            vbid,
            revision,
            shared: Arc::clone(shared),
            dir,
            state: RwLock::new(Arc::new(view)),
            writer: Mutex::new(w),
            maint: Mutex::new(iw),
            deleted: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            index_unclean: AtomicBool::new(false),
            installed: Condvar::new(),
            installed_lock: Mutex::new(0),
            not_before: Mutex::new(None),
            spare: Mutex::new(None),
            head_seg,
            stats: MaintStats::default(),
        }))
    }

    /// Opens a revision for inspection: nothing on disk changes.
    pub(crate) fn open_read_only(
        shared: &Arc<Shared>,
        vbid: Vbid,
        revision: Revision,
        dir: &Path,
    ) -> StoreResult<Arc<Self>> {
        Self::open(shared, vbid, revision, StoreDir::new(dir.to_path_buf()))
    }

    /// Every log segment's bytes and live bytes, now.
    #[must_use]
    pub fn segment_stats(&self) -> Vec<SegmentStat> {
        lock(&self.writer).segs.values().copied().collect()
    }

    /// The current view.
    pub fn view(&self) -> Arc<VbView> {
        Arc::clone(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn publish(&self, view: VbView) {
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    /// Gives the memory of this handle's memtables back to the budget.
    pub(crate) fn release_memtables(&self) {
        let v = self.view();
        let mut held = v.active.read().held();
        if let Some(f) = &v.frozen {
            held += f.mem.read().held();
        }
        let _ = self
            .shared
            .memtables
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(m.saturating_sub(held))
            });
        // Nothing is counted twice if this runs again.
        let mut fresh = v.fork();
        fresh.active = Arc::new(v.active.successor());
        fresh.frozen = None;
        self.publish(fresh);
    }

    pub(crate) fn check(&self) -> StoreResult<()> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        if self.deleted.load(Ordering::SeqCst) {
            return Err(StoreError::Deleted {
                vbid: self.vbid,
                revision: self.revision,
            });
        }
        Ok(())
    }

    /// The log writer's state: whether a failed sync is still to recover
    /// from.
    #[must_use]
    pub fn poisoned(&self) -> Option<String> {
        lock(&self.writer).wal.poisoned.clone()
    }

    /// Appends a sealed record (starting a new segment first when the
    /// current one is full) and returns its segment and offset. On failure
    /// nothing changed in memory.
    pub(crate) fn append(
        &self,
        w: &mut Writer,
        rec: &crate::wal::SealedRecord,
        new_segments: &mut Option<BTreeMap<u32, Arc<Segment>>>,
        current: &VbView,
    ) -> StoreResult<(Arc<Segment>, u64)> {
        if w.wal.needs_roll(rec) {
            let base = new_segments
                .take()
                .unwrap_or_else(|| (*current.segments).clone());
            *new_segments = Some(self.roll(w, base)?);
        }
        let off = w.wal.append(rec)?;
        let seg = Arc::clone(&w.wal.seg);
        if let Some(s) = w.segs.get_mut(&seg.no) {
            s.phys = s.phys.max(w.wal.file_len);
        }
        w.since_checkpoint += rec.phys.len() as u64;
        seg.cache_blocks(off, &rec.phys, &self.shared.blocks);
        Ok((seg, off))
    }

    /// Starts a new log segment (after recovering the writer if a failed
    /// write left it dirty) and returns `segments` with it added.
    pub(crate) fn roll(
        &self,
        w: &mut Writer,
        mut segments: BTreeMap<u32, Arc<Segment>>,
    ) -> StoreResult<BTreeMap<u32, Arc<Segment>>> {
        if w.wal.poisoned.is_some() || w.wal.dirty_until > w.wal.pos {
            w.wal.recover()?;
        }
        let no = w.wal.seg.no + 1;
        let seg = {
            // Waits for a creation by maintenance in progress, if any.
            let mut spare = lock(&self.spare);
            match spare.take() {
                Some(s) if s.no == no => s,
                // A spare is only ever made for the segment after the
                // writer's, so this cannot happen; its file is left alone.
                _ => create_segment(&self.shared.fds, &self.dir, self.vbid, self.revision, no)?,
            }
        };
        self.head_seg.store(no, Ordering::Release);
        segments.insert(no, Arc::clone(&seg));
        w.segs.insert(
            no,
            SegmentStat {
                no,
                phys: crate::block::BLOCK_SIZE,
                ..SegmentStat::default()
            },
        );
        w.wal.seg = seg;
        w.wal.pos = crate::block::BLOCK_SIZE;
        w.wal.file_len = crate::block::BLOCK_SIZE;
        w.wal.dirty_until = w.wal.pos;
        w.wal.prealloc = Arc::default();
        Ok(segments)
    }

    /// True when no spare segment is ready and none is being created.
    pub(crate) fn spare_missing(&self) -> bool {
        self.spare.try_lock().is_ok_and(|s| s.is_none())
    }

    /// Closes the current log segment (when it holds records) so that all
    /// of the log so far can be reclaimed.
    pub(crate) fn seal_segment(&self) -> StoreResult<()> {
        let mut w = lock(&self.writer);
        if w.wal.pos <= crate::block::BLOCK_SIZE {
            return Ok(());
        }
        let v = self.view();
        let segs = self.roll(&mut w, (*v.segments).clone())?;
        let mut nv = v.fork();
        nv.segments = Arc::new(segs);
        nv.disk_bytes = w.disk_bytes(v.index.file.end());
        self.publish(nv);
        Ok(())
    }

    /// Waits while this store's memtables hold more than twice their
    /// share, so memory stays bounded when checkpoints fall behind.
    fn backpressure(&self) {
        let cfg = &self.shared.config;
        if !cfg.background {
            return;
        }
        let limit = cfg.memtable_bytes.saturating_mul(2);
        let global = cfg.memtable_budget.saturating_mul(2);
        let started = Instant::now();
        loop {
            let v = self.view();
            let mine = v.active.bytes();
            let over = mine > limit
                || (self.shared.memtables.load(Ordering::Relaxed) > global
                    && mine > cfg.memtable_bytes / 4);
            if !over || self.deleted.load(Ordering::SeqCst) || started.elapsed() > LOCK_WAIT {
                return;
            }
            self.shared.signal.poke();
            let g = lock(&self.installed_lock);
            let _ = self
                .installed
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Publishes the result of applying a record.
    pub(crate) fn finish_apply(
        &self,
        w: &Writer,
        base: &VbView,
        apply: Apply<'_>,
        commit: u64,
        new_segments: Option<BTreeMap<u32, Arc<Segment>>>,
    ) {
        let Apply {
            counts,
            locals,
            high,
            purge,
            added_bytes,
            ..
        } = apply;
        self.shared
            .memtables
            .fetch_add(added_bytes, Ordering::Relaxed);
        let index_end = base.index.file.end();
        let mut v = base.fork();
        if let Some(l) = locals {
            v.locals = Arc::new(l);
        }
        if let Some(s) = new_segments {
            v.segments = Arc::new(s);
        }
        v.counts = counts;
        v.high_seqno = high;
        v.purge_seqno = purge;
        v.commit = commit;
        v.disk_bytes = w.disk_bytes(index_end);
        self.publish(v);
    }

    fn maybe_maintain(&self) {
        let cfg = &self.shared.config;
        if cfg.background {
            let v = self.view();
            if v.active.bytes() > cfg.memtable_bytes
                || self.shared.memtables.load(Ordering::Relaxed) > cfg.memtable_budget
            {
                self.shared.signal.poke();
            }
            return;
        }
        // Inline maintenance (no background thread): run what is due.
        loop {
            match self.maintain_once() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!(vbid = %self.vbid, error = %e, "maintenance step failed; it is retried later");
                    break;
                }
            }
        }
    }

    fn get_impl(&self, v: &VbView, key: &DiskKey) -> StoreResult<Option<Document>> {
        // As of the view's commit: a commit or relocation in progress has
        // its versions in the shared memtable already, pointing into a
        // segment it may have started, which this view's segment map does
        // not hold until that commit is published.
        match v.lookup_at(key, v.commit)? {
            None => Ok(None),
            Some(rec) => Ok(Some(v.read_doc(&rec, &self.shared.blocks, Some(key))?)),
        }
    }

    fn vbstate_of(v: &VbView) -> StoreResult<Option<VbucketState>> {
        let Some(raw) = v.locals.get(VBSTATE_LOCAL_NAME) else {
            return Ok(None);
        };
        let mut state = VbucketState::decode(raw)?;
        state.high_seqno = v.high_seqno;
        state.purge_seqno = v.purge_seqno;
        Ok(Some(state))
    }
}

impl VbStore for CouchVb {
    fn vbid(&self) -> Vbid {
        self.vbid
    }

    fn revision(&self) -> Revision {
        self.revision
    }

    fn commit(&self, batch: CommitBatch) -> StoreResult<CommitInfo> {
        self.check()?;
        if self.shared.read_only {
            return Err(StoreError::io(
                "commit",
                self.dir.path(),
                std::io::Error::new(std::io::ErrorKind::PermissionDenied, "opened read-only"),
            ));
        }
        self.backpressure();
        if self.index_unclean.load(Ordering::Acquire) {
            let mut iw = lock(&self.maint);
            iw.clean()?;
            self.index_unclean.store(false, Ordering::Release);
        }
        let info = {
            let mut w = lock(&self.writer);
            self.check()?;
            let v = self.view();
            let prepared = prepare(self.vbid, v.high_seqno, batch)?;
            if prepared.items.is_empty() && prepared.local.is_empty() {
                return Ok(CommitInfo {
                    high_seqno: v.high_seqno,
                    items: 0,
                    bytes_written: 0,
                });
            }
            let n = prepared.items.len();
            let hashes: Vec<u64> = prepared
                .items
                .iter()
                .map(|d| v.active.hash(&d.key))
                .collect();
            let priors: Vec<Option<IndexRec>> = prepared
                .items
                .iter()
                .zip(&hashes)
                .map(|(d, h)| v.lookup_hashed(&d.key, *h))
                .collect::<StoreResult<_>>()?;
            let high = prepared.max_seqno.unwrap_or(v.high_seqno).max(v.high_seqno);
            let est: usize = prepared
                .items
                .iter()
                .map(|d| d.key.len() + d.value.len() + 48)
                .sum::<usize>()
                + 64;
            let mut rb = RecordBuilder::with_capacity(est);
            rb.push_raw(&item_count_prefix(n));
            for d in &prepared.items {
                rb.push_doc(d);
            }
            let mut locals = Vec::new();
            encode_locals(&prepared.local, &mut locals);
            rb.push_raw(&locals);
            let commit = w.next_commit;
            let rec = rb.seal(RecordKind::Commit, commit, high);
            let mut new_segments = None;
            let (seg, off) = self.append(&mut w, &rec, &mut new_segments, &v)?;
            w.next_commit += 1;
            let items: Vec<(&DiskKey, IndexRec)> = prepared
                .items
                .iter()
                .zip(&rec.items)
                .map(|(d, &(rel, len))| {
                    (
                        &d.key,
                        IndexRec {
                            seqno: d.meta.seqno,
                            deleted: d.meta.deleted,
                            expiry: d.meta.expiry,
                            body: u32::try_from(d.body_size()).unwrap_or(u32::MAX),
                            ptr: WalPtr {
                                seg: seg.no,
                                off: off + rel,
                                len,
                            },
                        },
                    )
                })
                .collect();
            let mut segs = std::mem::take(&mut w.segs);
            let mut apply = Apply {
                view: &v,
                mem: &v.active,
                counts: v.counts,
                segs: &mut segs,
                locals: None,
                high: v.high_seqno.max(high),
                purge: v.purge_seqno,
                added_bytes: 0,
            };
            let applied = apply.commit(commit, &items, Some((&priors, &hashes)));
            apply.locals(&prepared.local);
            // The record is durable; memory follows it even if a lookup
            // failed above (it cannot, the priors were read already).
            drop(applied);
            let bytes_written = rec.phys.len() as u64;
            w.segs = std::mem::take(apply.segs);
            let high_after = apply.high;
            self.finish_apply(&w, &v, apply, commit, new_segments);
            let chores = (w.wal.small_records
                && w.wal.file_len.saturating_sub(w.wal.pos) < crate::wal::PREALLOC_LOW)
                || (w.wal.pos > w.wal.segment_bytes / 4 * 3 && self.spare_missing());
            (
                CommitInfo {
                    high_seqno: high_after,
                    items: n,
                    bytes_written,
                },
                chores,
            )
        };
        let (info, chores) = info;
        if chores && self.shared.config.background {
            self.shared.signal.poke();
        }
        self.maybe_maintain();
        Ok(info)
    }

    fn get(&self, key: &DiskKey) -> StoreResult<Option<Document>> {
        self.check()?;
        let v = self.view();
        self.get_impl(&v, key)
    }

    fn get_many(&self, keys: &[DiskKey]) -> StoreResult<Vec<Option<Document>>> {
        self.check()?;
        let v = self.view();
        keys.iter().map(|k| self.get_impl(&v, k)).collect()
    }

    fn key_range(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> StoreResult<ScanStatus> {
        self.check()?;
        if range.is_empty() {
            return Ok(ScanStatus::Done);
        }
        let v = self.view();
        let at = v.commit;
        // The memtables' keys in the range, newest version of each.
        let mut mem: BTreeMap<DiskKey, Found> = BTreeMap::new();
        let mut collect = |m: &Memtable| -> StoreResult<()> {
            let inner = m.read();
            for (k, kv) in inner.range(&range.start, range.end.as_deref()) {
                let found = match kv.at(at).map(|x| x.change) {
                    Some(Change::Put(r)) => Found::Rec(r),
                    Some(Change::Purge) => Found::Purged,
                    None => continue,
                };
                let key = mem_key(k)?;
                mem.entry(key).or_insert(found);
            }
            Ok(())
        };
        collect(&v.active)?;
        if let Some(f) = &v.frozen {
            collect(&f.mem)?;
        }
        let blocks = &self.shared.blocks;
        let mut stopped = false;
        let mut mem_iter = mem.into_iter().peekable();
        let mut emit = |key: &DiskKey, rec: &IndexRec, stopped: &mut bool| -> StoreResult<bool> {
            let doc = v.read_doc(rec, blocks, Some(key))?;
            *stopped = visit(doc) != ScanControl::Continue;
            Ok(!*stopped)
        };
        let index = Arc::clone(&v.index);
        iterate(
            &*index.file,
            index.header.by_key.as_ref(),
            &range.start,
            range.end.as_deref(),
            &mut |k, raw| {
                while let Some((mk, _)) = mem_iter.peek() {
                    if mk.as_bytes() >= &k[..] {
                        break;
                    }
                    if let Some((mk, Found::Rec(r))) = mem_iter.next()
                        && !emit(&mk, &r, &mut stopped)?
                    {
                        return Ok(false);
                    }
                }
                if let Some((mk, _)) = mem_iter.peek()
                    && mk.as_bytes() == &k[..]
                {
                    if let Some((mk, Found::Rec(r))) = mem_iter.next() {
                        return emit(&mk, &r, &mut stopped);
                    }
                    return Ok(true);
                }
                let key = DiskKey::from_shared(k.clone()).map_err(|e| {
                    StoreError::corrupt(
                        index.file.path(),
                        0,
                        CorruptionKind::Malformed {
                            what: "by-key tree key",
                            detail: e.to_string(),
                        },
                    )
                })?;
                let rec = decode_key_rec(raw)
                    .map_err(|e| StoreError::corrupt(index.file.path(), 0, e.kind()))?;
                emit(&key, &rec, &mut stopped)
            },
        )?;
        if !stopped {
            for (mk, f) in mem_iter {
                if let Found::Rec(r) = f
                    && !emit(&mk, &r, &mut stopped)?
                {
                    break;
                }
            }
        }
        Ok(if stopped {
            ScanStatus::Stopped
        } else {
            ScanStatus::Done
        })
    }

    fn seqno_scan(
        &self,
        start: Seqno,
        end: Seqno,
        opts: ScanOptions,
    ) -> StoreResult<Box<dyn SeqnoScan>> {
        self.check()?;
        let view = self.view();
        let pins = view.pin_all()?;
        Ok(Box::new(CouchScan {
            at: view.commit,
            view,
            _pins: pins,
            blocks: Arc::clone(&self.shared.blocks),
            next: Some(start),
            end,
            opts,
            last: None,
        }))
    }

    fn rollback(&self, to: Seqno) -> StoreResult<RollbackResult> {
        self.check()?;
        crate::maint::rollback(self, to)
    }

    fn compact(&self, config: &CompactionConfig) -> StoreResult<CompactionResult> {
        self.check()?;
        crate::maint::compact(self, config)
    }

    fn get_local(&self, name: &str) -> StoreResult<Option<Bytes>> {
        self.check()?;
        Ok(self.view().locals.get(name).cloned())
    }

    fn list_local(&self) -> StoreResult<Vec<(String, Bytes)>> {
        self.check()?;
        Ok(self
            .view()
            .locals
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn vbstate(&self) -> StoreResult<Option<VbucketState>> {
        self.check()?;
        Self::vbstate_of(&self.view())
    }

    fn info(&self) -> StoreResult<StoreInfo> {
        self.check()?;
        let v = self.view();
        Ok(StoreInfo {
            vbid: self.vbid,
            revision: self.revision,
            high_seqno: v.high_seqno,
            purge_seqno: v.purge_seqno,
            live_items: v.counts.live,
            deleted_items: v.counts.deleted,
            data_bytes: v.counts.bytes,
            file_bytes: v.disk_bytes,
            reclaimed_bytes: v.reclaimed,
            reclaim_passes: self.stats.reclaim_started.load(Ordering::Relaxed),
            reclaiming: self.stats.reclaiming.load(Ordering::Relaxed),
        })
    }
}

/// A by-seqno scan pinned to one view: the index's by-seqno tree up to the
/// index's high seqno, then the memtables' newer seqnos, each checked
/// against the newest version of its key as of the view.
struct CouchScan {
    view: Arc<VbView>,
    at: u64,
    _pins: Vec<Pin>,
    blocks: Arc<BlockCache>,
    next: Option<Seqno>,
    end: Seqno,
    opts: ScanOptions,
    last: Option<Seqno>,
}

impl CouchScan {
    /// Delivers `doc` (seqno `s`) unless filtered; returns false to stop.
    fn deliver(
        &mut self,
        s: Seqno,
        mut doc: Document,
        status: &mut ScanStatus,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> bool {
        self.next = s.0.checked_add(1).map(Seqno);
        if doc.is_deleted() && !self.opts.include_deleted {
            return true;
        }
        if self.opts.keys_only {
            doc.value = Bytes::new();
        }
        self.last = Some(s);
        match visit(doc) {
            ScanControl::Continue => true,
            ScanControl::Yield => {
                *status = ScanStatus::Yielded;
                false
            }
            ScanControl::Stop => {
                *status = ScanStatus::Stopped;
                false
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }
}

impl SeqnoScan for CouchScan {
    fn snapshot_high_seqno(&self) -> Seqno {
        self.view.high_seqno
    }

    fn run(&mut self, visit: &mut dyn FnMut(Document) -> ScanControl) -> StoreResult<ScanStatus> {
        let Some(next) = self.next.filter(|n| *n <= self.end) else {
            self.next = None;
            return Ok(ScanStatus::Done);
        };
        let view = Arc::clone(&self.view);
        let index_high = view.index.header.high_seqno;
        let mut status = ScanStatus::Done;
        let mut go_on = true;
        if next <= index_high {
            let file = &view.index.file;
            let upto = self.end.min(index_high);
            let end_key = upto.0.checked_add(1).map(|e| seqno_key(Seqno(e)));
            iterate(
                &**file,
                view.index.header.by_seqno.as_ref(),
                &seqno_key(next),
                end_key.as_ref().map(|k| &k[..]),
                &mut |k, raw| {
                    if self.cancelled() {
                        status = ScanStatus::Stopped;
                        go_on = false;
                        return Ok(false);
                    }
                    let s = parse_seqno_key(k)
                        .map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))?;
                    let r = decode_seq_rec(raw)
                        .map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))?;
                    if r.deleted.is_some() && !self.opts.include_deleted {
                        self.next = s.0.checked_add(1).map(Seqno);
                        return Ok(true);
                    }
                    let doc = view.read_ptr(r.ptr, &self.blocks)?;
                    // A newer version in the memtables supersedes this one.
                    match view.in_memory(&doc.key, self.at) {
                        Found::Rec(m) if m.seqno != s => {
                            self.next = s.0.checked_add(1).map(Seqno);
                            return Ok(true);
                        }
                        Found::Purged => {
                            self.next = s.0.checked_add(1).map(Seqno);
                            return Ok(true);
                        }
                        _ => {}
                    }
                    go_on = self.deliver(s, doc, &mut status, visit);
                    Ok(go_on)
                },
            )?;
            if go_on {
                self.next = index_high.0.checked_add(1).map(Seqno);
            }
        }
        if go_on && let Some(from) = self.next.filter(|n| *n <= self.end) {
            // Newer seqnos are all in the memtables (frozen ones first).
            let mut pending: Vec<(u64, DiskKey)> = Vec::new();
            let mut take = |m: &Memtable| -> StoreResult<()> {
                let inner = m.read();
                for (s, k) in inner.seqnos(from.0.max(index_high.0 + 1), self.end.0) {
                    pending.push((s, mem_key(k)?));
                }
                Ok(())
            };
            if let Some(f) = &view.frozen {
                take(&f.mem)?;
            }
            take(&view.active)?;
            pending.sort_unstable_by_key(|p| p.0);
            for (s, key) in pending {
                if self.cancelled() {
                    status = ScanStatus::Stopped;
                    break;
                }
                let s = Seqno(s);
                let Some(rec) = view.lookup_at(&key, self.at)?.filter(|r| r.seqno == s) else {
                    self.next = s.0.checked_add(1).map(Seqno);
                    continue;
                };
                if rec.is_deleted() && !self.opts.include_deleted {
                    self.next = s.0.checked_add(1).map(Seqno);
                    continue;
                }
                let doc = view.read_doc(&rec, &self.blocks, Some(&key))?;
                if !self.deliver(s, doc, &mut status, visit) {
                    break;
                }
            }
        }
        if status != ScanStatus::Yielded {
            self.next = None;
        }
        Ok(status)
    }

    fn last_seqno(&self) -> Option<Seqno> {
        self.last
    }
}
