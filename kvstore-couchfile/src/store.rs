//! [`CouchStore`] (the [`KvStore`]) and its per-revision handles.

use crate::block::PhysWriter;
use crate::btree::{Action, NodeWriter, TreeKind, iterate, lookup, modify};
use crate::cache::NodeCache;
use crate::codec::{
    DocRecord, ValueRef, decode_key_value, decode_seqno_value, document, encode_seqno_value,
    parse_seqno_key, seqno_key,
};
use crate::file::CouchFile;
use crate::header::Header;
use crate::io::{FaultInjector, FileIo, Io, sync_dir};
use crate::node::Compression;
use bytes::Bytes;
use kvstore_core::batch::{PreparedBatch, prepare};
use kvstore_core::{
    CommitBatch, CommitInfo, CompactionConfig, CompactionResult, CorruptionKind, DiskKey, Document,
    KeyRange, KvStore, Revision, RollbackResult, ScanControl, ScanOptions, ScanStatus, Seqno,
    SeqnoScan, StoreError, StoreInfo, StoreResult, VBSTATE_LOCAL_NAME, VbStore, Vbid, VbucketState,
};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

/// Settings of a [`CouchStore`].
#[derive(Debug, Clone)]
pub struct CouchConfig {
    /// Sync every commit (default true). Turning it off keeps atomicity but
    /// not durability across a power loss.
    pub sync: bool,
    /// Target uncompressed node size in bytes (default 4096).
    pub node_size: usize,
    /// Values up to this many bytes are stored inside the tree leaves; larger
    /// ones get a chunk of their own (default 512).
    pub inline_value_max: usize,
    /// Node compression (default LZ4).
    pub compression: Compression,
    /// Bytes of decoded nodes cached, shared by every vbucket (default
    /// 256 MiB).
    pub cache_bytes: usize,
    /// Compaction catches up without blocking commits until the remaining
    /// changes are at most this many documents, then takes the commit lock
    /// for the final catch-up and the switch (default 2000).
    pub final_catchup_docs: usize,
    /// Injects I/O failures (tests).
    pub faults: Option<Arc<FaultInjector>>,
}

impl Default for CouchConfig {
    fn default() -> Self {
        CouchConfig {
            sync: true,
            node_size: 4096,
            inline_value_max: 512,
            compression: Compression::Lz4,
            cache_bytes: 256 << 20,
            final_catchup_docs: 2000,
            faults: None,
        }
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here
/// leaves the data consistent at each early return.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a file name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileKind {
    /// `<vbid>.couch.<rev>`
    Live,
    /// `<vbid>.couch.<rev>.compact`
    Compact,
    /// `<vbid>.couch.<rev>.tmp`
    Tmp,
    /// `<vbid>.couch.<rev>.deleted`: marked deleted, removed at startup.
    Deleted,
}

/// Parses a couchfile name.
pub(crate) fn parse_name(name: &str) -> Option<(Vbid, Revision, FileKind)> {
    let mut parts = name.split('.');
    let vbid: u16 = parts.next()?.parse().ok()?;
    if parts.next()? != "couch" {
        return None;
    }
    let rev: u64 = parts.next()?.parse().ok()?;
    let kind = match parts.next() {
        None => FileKind::Live,
        Some("compact") => FileKind::Compact,
        Some("tmp") => FileKind::Tmp,
        Some("deleted") => FileKind::Deleted,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some((Vbid(vbid), Revision(rev), kind))
}

/// The name of the file compaction of `rev` writes.
#[must_use]
pub fn compact_name(vbid: Vbid, rev: Revision) -> String {
    format!("{}.compact", file_name(vbid, rev))
}

/// The name a revision's file takes once it is marked deleted.
#[must_use]
pub fn deleted_name(vbid: Vbid, rev: Revision) -> String {
    format!("{}.deleted", file_name(vbid, rev))
}

/// The file name of a revision.
#[must_use]
pub fn file_name(vbid: Vbid, rev: Revision) -> String {
    format!("{}.couch.{}", vbid.0, rev.0)
}

pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: CouchConfig,
    pub(crate) io: Io,
    pub(crate) cache: Arc<NodeCache>,
    revs: Mutex<HashMap<Vbid, u64>>,
    handles: Mutex<HashMap<Vbid, Vec<Weak<CouchVb>>>>,
}

impl Shared {
    pub(crate) fn path(&self, vbid: Vbid, rev: Revision) -> PathBuf {
        self.dir.join(file_name(vbid, rev))
    }

    pub(crate) fn next_rev(&self, vbid: Vbid) -> Revision {
        let mut revs = lock(&self.revs);
        let r = revs.entry(vbid).or_insert(0);
        *r += 1;
        Revision(*r)
    }

    fn live_handles(&self, vbid: Vbid) -> Vec<Arc<CouchVb>> {
        let mut handles = lock(&self.handles);
        let list = handles.entry(vbid).or_default();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    fn register(&self, h: &Arc<CouchVb>) {
        lock(&self.handles)
            .entry(h.vbid)
            .or_default()
            .push(Arc::downgrade(h));
    }
}

/// The couchfile backend: one file per vbucket revision in one directory.
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

impl CouchStore {
    /// Opens (creating if needed) the directory `dir`. Nothing is removed
    /// until [`KvStore::discover`] runs.
    pub fn open(dir: &Path, config: CouchConfig) -> StoreResult<Self> {
        fs::create_dir_all(dir).map_err(|e| StoreError::io("create directory", dir, e))?;
        let io = Io {
            stats: Arc::default(),
            faults: config.faults.clone(),
        };
        let mut revs: HashMap<Vbid, u64> = HashMap::new();
        for (vbid, rev, _) in list_files(dir)? {
            let r = revs.entry(vbid).or_insert(0);
            *r = (*r).max(rev.0);
        }
        let cache = NodeCache::new(config.cache_bytes);
        Ok(CouchStore {
            shared: Arc::new(Shared {
                dir: dir.to_path_buf(),
                config,
                io,
                cache,
                revs: Mutex::new(revs),
                handles: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The directory.
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
        self.shared.cache.hit_miss()
    }

    /// Opens a revision as the concrete handle type.
    pub fn open_couch(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<CouchVb>> {
        if let Some(h) = self.shared.live_handles(vbid).into_iter().find(|h| {
            h.revision() == revision
                && !h.deleted.load(Ordering::SeqCst)
                && !h.is_poisoned.load(Ordering::Acquire)
        }) {
            return Ok(h);
        }
        // No usable handle: a poisoned one is left to its holders, and a
        // fresh one is read from what is durable on disk.
        let path = self.shared.path(vbid, revision);
        if !path.exists() {
            return Err(StoreError::NoSuchRevision { vbid, revision });
        }
        let opened = CouchFile::open(
            &path,
            true,
            self.shared.io.clone(),
            Arc::clone(&self.shared.cache),
        )?;
        if opened.header.vbid != vbid {
            return Err(StoreError::corrupt(
                &path,
                opened.header.offset,
                CorruptionKind::Malformed {
                    what: "header",
                    detail: format!("belongs to {}, not {vbid}", opened.header.vbid),
                },
            ));
        }
        let h = CouchVb::new(vbid, revision, &self.shared, opened.file, opened.header);
        self.shared.register(&h);
        Ok(h)
    }
}

/// Lists the couchfiles in `dir`.
pub(crate) fn list_files(dir: &Path) -> StoreResult<Vec<(Vbid, Revision, FileKind)>> {
    let rd = fs::read_dir(dir).map_err(|e| StoreError::io("list directory", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| StoreError::io("list directory", dir, e))?;
        if let Some(parsed) = entry.file_name().to_str().and_then(parse_name) {
            out.push(parsed);
        }
    }
    Ok(out)
}

fn remove_file(path: &Path) -> StoreResult<()> {
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

    fn discover(&self) -> StoreResult<Vec<(Vbid, Revision)>> {
        let dir = &self.shared.dir;
        let mut newest: BTreeMap<Vbid, Revision> = BTreeMap::new();
        let mut remove = Vec::new();
        let files = list_files(dir)?;
        for &(vbid, rev, kind) in &files {
            match kind {
                FileKind::Live => {
                    let e = newest.entry(vbid).or_insert(rev);
                    *e = (*e).max(rev);
                }
                FileKind::Compact => remove.push(compact_name(vbid, rev)),
                FileKind::Tmp => remove.push(format!("{}.tmp", file_name(vbid, rev))),
                FileKind::Deleted => remove.push(deleted_name(vbid, rev)),
            }
        }
        for &(vbid, rev, kind) in &files {
            if kind == FileKind::Live && newest.get(&vbid) != Some(&rev) {
                remove.push(file_name(vbid, rev));
            }
        }
        for name in &remove {
            tracing::info!(file = %name, "removing stale file");
            remove_file(&dir.join(name))?;
        }
        if !remove.is_empty() {
            sync_dir(&self.shared.io, dir)?;
        }
        Ok(newest.into_iter().collect())
    }

    fn create(&self, vbid: Vbid) -> StoreResult<Arc<dyn VbStore>> {
        let revision = self.shared.next_rev(vbid);
        let path = self.shared.path(vbid, revision);
        let tmp = self
            .shared
            .dir
            .join(format!("{}.tmp", file_name(vbid, revision)));
        remove_file(&tmp)?;
        let fio = FileIo::create(&tmp, self.shared.io.clone())?;
        let mut out = PhysWriter::new(0);
        let header = Header {
            vbid,
            revision,
            timestamp: now_secs(),
            ..Header::default()
        };
        out.write_header(&header.encode());
        fio.write_at(out.bytes(), 0)?;
        fio.sync()?;
        fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
        sync_dir(&self.shared.io, &self.shared.dir)?;
        drop(fio);
        let opened = CouchFile::open(
            &path,
            true,
            self.shared.io.clone(),
            Arc::clone(&self.shared.cache),
        )?;
        let h = CouchVb::new(vbid, revision, &self.shared, opened.file, opened.header);
        self.shared.register(&h);
        Ok(h)
    }

    fn open(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<dyn VbStore>> {
        Ok(self.open_couch(vbid, revision)?)
    }

    fn mark_deleted(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        // Wait for a running compaction to stop, so the revision cannot move
        // to a new file after we renamed this one.
        let handles = self.shared.live_handles(vbid);
        let mut guards = Vec::new();
        for h in &handles {
            if h.revision() == revision {
                h.stop_compaction.store(true, Ordering::SeqCst);
                guards.push(lock(&h.maintenance));
            }
        }
        let path = self.shared.path(vbid, revision);
        let marked = self.shared.dir.join(deleted_name(vbid, revision));
        match fs::rename(&path, &marked) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchRevision { vbid, revision });
            }
            Err(e) => return Err(StoreError::io("rename", &path, e)),
        }
        // Open handles keep their descriptor; the name no longer matters.
        if let Err(e) = sync_dir(&self.shared.io, &self.shared.dir) {
            // Not durable: undo the rename, so the caller's "the vbucket
            // stays" holds and a restart does not remove it.
            if let Err(undo) = fs::rename(&marked, &path) {
                tracing::error!(file = %marked.display(), error = %undo, "could not undo a deletion mark");
            }
            return Err(e);
        }
        Ok(())
    }

    fn destroy(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let mut marked = false;
        for h in self.shared.live_handles(vbid) {
            // Stop a running compaction and wait for it, so the revision
            // cannot move under us.
            h.stop_compaction.store(true, Ordering::SeqCst);
            let _maint = lock(&h.maintenance);
            if h.revision() == revision {
                h.deleted.store(true, Ordering::SeqCst);
                marked = true;
            } else {
                h.stop_compaction.store(false, Ordering::SeqCst);
            }
        }
        let path = self.shared.path(vbid, revision);
        let deleted = self.shared.dir.join(deleted_name(vbid, revision));
        let existed = path.exists() || deleted.exists();
        remove_file(&path)?;
        remove_file(&deleted)?;
        remove_file(&self.shared.dir.join(compact_name(vbid, revision)))?;
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

/// A consistent view: a file and one of its headers.
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
}

/// Nodes a commit wrote, to be cached once it lands.
pub(crate) type WrittenNodes = Vec<(crate::block::ChunkPtr, Arc<crate::node::Node>)>;

pub(crate) struct WriterState {
    pub(crate) file: Arc<CouchFile>,
    /// Where the next write goes (the end of the committed part).
    pub(crate) end: u64,
}

/// One vbucket revision of a [`CouchStore`].
pub struct CouchVb {
    pub(crate) vbid: Vbid,
    pub(crate) shared: Arc<Shared>,
    revision: RwLock<Revision>,
    pub(crate) current: RwLock<Arc<View>>,
    pub(crate) writer: Mutex<WriterState>,
    /// Held by compaction, rollback and destroy, which must not overlap.
    pub(crate) maintenance: Mutex<()>,
    pub(crate) stop_compaction: AtomicBool,
    poisoned: Mutex<Option<String>>,
    /// Set with `poisoned`, so the common path checks an atomic, not a lock.
    is_poisoned: AtomicBool,
    pub(crate) deleted: AtomicBool,
}

impl std::fmt::Debug for CouchVb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchVb")
            .field("vbid", &self.vbid)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

impl CouchVb {
    fn new(
        vbid: Vbid,
        revision: Revision,
        shared: &Arc<Shared>,
        file: Arc<CouchFile>,
        header: Header,
    ) -> Arc<Self> {
        let end = file.end();
        Arc::new(CouchVb {
            vbid,
            shared: Arc::clone(shared),
            revision: RwLock::new(revision),
            current: RwLock::new(Arc::new(View::new(Arc::clone(&file), header))),
            writer: Mutex::new(WriterState { file, end }),
            maintenance: Mutex::new(()),
            stop_compaction: AtomicBool::new(false),
            poisoned: Mutex::new(None),
            is_poisoned: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        })
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn publish(&self, view: View) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(view);
    }

    pub(crate) fn set_revision(&self, rev: Revision) {
        *self
            .revision
            .write()
            .unwrap_or_else(PoisonError::into_inner) = rev;
    }

    pub(crate) fn check(&self) -> StoreResult<()> {
        if self.deleted.load(Ordering::SeqCst) {
            return Err(StoreError::Deleted {
                vbid: self.vbid,
                revision: self.revision(),
            });
        }
        if !self.is_poisoned.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(cause) = lock(&self.poisoned).clone() {
            return Err(StoreError::Poisoned {
                path: self.view().file.path().to_path_buf(),
                cause,
            });
        }
        Ok(())
    }

    /// Marks the handle poisoned by `e` and returns `e`.
    pub(crate) fn poison(&self, e: StoreError) -> StoreError {
        tracing::error!(vbid = %self.vbid, error = %e, "store poisoned; reopen to recover");
        *lock(&self.poisoned) = Some(e.to_string());
        self.is_poisoned.store(true, Ordering::Release);
        e
    }

    /// Writes `out` at its base, syncs, and publishes `header` as the new
    /// committed state. A failed sync poisons the handle (the kernel may
    /// have dropped the dirty pages). A failed write does not: nothing of
    /// it was published, the file is cut back to the committed end, and
    /// the next commit writes there again.
    pub(crate) fn land(
        &self,
        w: &mut WriterState,
        out: &PhysWriter,
        header: Header,
        nodes: WrittenNodes,
    ) -> StoreResult<()> {
        if let Err(e) = w.file.io().write_at(out.bytes(), out.base()) {
            if let Err(t) = w.file.io().truncate(w.end) {
                tracing::warn!(vbid = %self.vbid, error = %t, "could not cut a failed write back");
            }
            return Err(e);
        }
        if self.shared.config.sync {
            w.file.io().sync().map_err(|e| self.poison(e))?;
        }
        w.end = out.pos();
        w.file.set_end(w.end);
        for (ptr, node) in nodes {
            w.file.cache_node(ptr, node);
        }
        self.publish(View::new(Arc::clone(&w.file), header));
        Ok(())
    }

    fn record_to_doc(
        &self,
        file: &CouchFile,
        key: DiskKey,
        rec: DocRecord,
    ) -> StoreResult<Document> {
        let value = file.read_value(&rec.value)?;
        Ok(document(key, rec, value))
    }

    fn decode_by_key(file: &CouchFile, raw: &Bytes) -> StoreResult<DocRecord> {
        decode_key_value(raw).map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))
    }

    /// Builds the tree changes of a prepared batch into `out`; returns the new
    /// header (offset not yet known) and the nodes written.
    pub(crate) fn build_commit(
        &self,
        file: &CouchFile,
        base: &Header,
        prepared: PreparedBatch,
        out: &mut PhysWriter,
    ) -> StoreResult<(Header, WrittenNodes)> {
        let cfg = &self.shared.config;
        // Every record of the commit is encoded into one arena, sliced into
        // shared buffers: two allocations per commit, not two per item.
        let n = prepared.items.len();
        let mut arena = Vec::with_capacity(
            n * 96
                + prepared
                    .items
                    .iter()
                    .map(|d| d.value.len().min(cfg.inline_value_max) * 2)
                    .sum::<usize>(),
        );
        let mut spans = Vec::with_capacity(n);
        for doc in &prepared.items {
            let vref = if doc.value.len() <= cfg.inline_value_max {
                ValueRef::Inline(doc.value.clone())
            } else {
                ValueRef::External(out.write_chunk(&doc.value))
            };
            let rec = DocRecord {
                meta: doc.meta,
                value: vref,
            };
            let a = arena.len();
            rec.encode(&mut arena);
            let b = arena.len();
            encode_seqno_value(&doc.key, &rec, &mut arena);
            spans.push((a, b, arena.len()));
        }
        let arena = Bytes::from(arena);
        let mut key_actions = Vec::with_capacity(n);
        let mut seq_puts = Vec::with_capacity(n);
        for (doc, (a, b, c)) in prepared.items.iter().zip(spans) {
            key_actions.push(Action::Put(doc.key.to_shared(), arena.slice(a..b)));
            seq_puts.push((doc.meta.seqno, arena.slice(b..c)));
        }
        let mut nw = NodeWriter::new(out, cfg.compression, cfg.node_size, true);
        let mut old_seqnos = Vec::new();
        let mut bad: Option<StoreError> = None;
        let by_key = modify(
            file,
            &mut nw,
            TreeKind::ByKey,
            base.by_key,
            &key_actions,
            &mut |_, old| match decode_key_value(old) {
                Ok(rec) => old_seqnos.push(rec.meta.seqno),
                Err(e) => {
                    bad.get_or_insert_with(|| StoreError::corrupt(file.path(), 0, e.kind()));
                }
            },
        )?;
        if let Some(e) = bad {
            return Err(e);
        }
        let mut seq_actions: Vec<Action> = old_seqnos
            .into_iter()
            .map(|s| Action::Remove(Bytes::copy_from_slice(&seqno_key(s))))
            .chain(
                seq_puts
                    .into_iter()
                    .map(|(s, v)| Action::Put(Bytes::copy_from_slice(&seqno_key(s)), v)),
            )
            .collect();
        seq_actions.sort_by(|a, b| a.key().cmp(b.key()));
        let by_seqno = modify(
            file,
            &mut nw,
            TreeKind::BySeqno,
            base.by_seqno,
            &seq_actions,
            &mut |_, _| {},
        )?;
        let local_actions: Vec<Action> = prepared
            .local
            .into_iter()
            .map(|(name, v)| match v {
                Some(v) => Action::Put(Bytes::from(name), v),
                None => Action::Remove(Bytes::from(name)),
            })
            .collect();
        let local = modify(
            file,
            &mut nw,
            TreeKind::Local,
            base.local,
            &local_actions,
            &mut |_, _| {},
        )?;
        let nodes = std::mem::take(&mut nw.written);
        let header = Header {
            offset: 0,
            vbid: self.vbid,
            revision: base.revision,
            prev: Some(base.offset),
            region_start: 0,
            region_crc: 0,
            commit: base.commit + 1,
            high_seqno: prepared
                .max_seqno
                .unwrap_or(base.high_seqno)
                .max(base.high_seqno),
            purge_seqno: base.purge_seqno,
            timestamp: now_secs(),
            by_key,
            by_seqno,
            local,
        };
        Ok((header, nodes))
    }
}

/// Appends `header` to `out`, stamping its region: the physical bytes from
/// `region_start` to the header block, whose CRC is `prior_crc` (over what was
/// already flushed from `region_start`) extended by `out`'s bytes and the
/// padding before the header block.
pub(crate) fn append_header(
    out: &mut PhysWriter,
    header: &mut Header,
    region_start: u64,
    prior_crc: u32,
) {
    let bs = crate::block::BLOCK_SIZE;
    let pad = (bs - out.pos() % bs) % bs;
    let mut crc = crc32c::crc32c_append(prior_crc, out.bytes());
    crc = crc32c::crc32c_append(crc, &vec![0u8; pad as usize]);
    header.region_start = region_start;
    header.region_crc = crc;
    header.offset = out.write_header(&header.encode());
}

impl VbStore for CouchVb {
    fn vbid(&self) -> Vbid {
        self.vbid
    }

    fn revision(&self) -> Revision {
        *self.revision.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn commit(&self, batch: CommitBatch) -> StoreResult<CommitInfo> {
        self.check()?;
        let mut w = lock(&self.writer);
        self.check()?;
        let view = self.view();
        let prepared = prepare(self.vbid, view.header.high_seqno, batch)?;
        if prepared.items.is_empty() && prepared.local.is_empty() {
            return Ok(CommitInfo {
                high_seqno: view.header.high_seqno,
                items: 0,
                bytes_written: 0,
            });
        }
        let items = prepared.items.len();
        let mut out = PhysWriter::new(w.end);
        let (mut header, nodes) = self.build_commit(&w.file, &view.header, prepared, &mut out)?;
        append_header(&mut out, &mut header, w.end, 0);
        let bytes_written = out.len() as u64;
        let high_seqno = header.high_seqno;
        self.land(&mut w, &out, header, nodes)?;
        Ok(CommitInfo {
            high_seqno,
            items,
            bytes_written,
        })
    }

    fn get(&self, key: &DiskKey) -> StoreResult<Option<Document>> {
        self.check()?;
        let view = self.view();
        let Some(raw) = lookup(
            &*view.file,
            view.header.by_key.as_ref(),
            Some(&view.roots[0]),
            key.as_bytes(),
        )?
        else {
            return Ok(None);
        };
        let rec = Self::decode_by_key(&view.file, &raw)?;
        Ok(Some(self.record_to_doc(&view.file, key.clone(), rec)?))
    }

    fn get_many(&self, keys: &[DiskKey]) -> StoreResult<Vec<Option<Document>>> {
        self.check()?;
        let view = self.view();
        keys.iter()
            .map(|key| {
                match lookup(
                    &*view.file,
                    view.header.by_key.as_ref(),
                    Some(&view.roots[0]),
                    key.as_bytes(),
                )? {
                    None => Ok(None),
                    Some(raw) => {
                        let rec = Self::decode_by_key(&view.file, &raw)?;
                        Ok(Some(self.record_to_doc(&view.file, key.clone(), rec)?))
                    }
                }
            })
            .collect()
    }

    fn key_range(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> StoreResult<ScanStatus> {
        self.check()?;
        let view = self.view();
        let file = &view.file;
        let mut stopped = false;
        iterate(
            &**file,
            view.header.by_key.as_ref(),
            &range.start,
            range.end.as_deref(),
            &mut |k, v| {
                let key = DiskKey::from_shared(k.clone()).map_err(|e| {
                    StoreError::corrupt(
                        file.path(),
                        0,
                        CorruptionKind::Malformed {
                            what: "by-key tree key",
                            detail: e.to_string(),
                        },
                    )
                })?;
                let rec = Self::decode_by_key(file, v)?;
                let doc = self.record_to_doc(file, key, rec)?;
                stopped = visit(doc) != ScanControl::Continue;
                Ok(!stopped)
            },
        )?;
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
        Ok(Box::new(CouchScan {
            view: self.view(),
            next: Some(start),
            end,
            opts,
            last: None,
        }))
    }

    fn rollback(&self, to: Seqno) -> StoreResult<RollbackResult> {
        self.check()?;
        let _maint = lock(&self.maintenance);
        let mut w = lock(&self.writer);
        self.check()?;
        let view = self.view();
        let now = &view.header;
        if now.high_seqno <= to {
            return Ok(RollbackResult {
                high_seqno: now.high_seqno,
                ..RollbackResult::default()
            });
        }
        let mut target = None;
        let mut h = now.clone();
        while let Some(prev) = h.prev {
            h = view.file.read_header(prev)?;
            if h.high_seqno <= to {
                target = Some(h);
                break;
            }
        }
        let file = &view.file;
        let mut discarded = Vec::new();
        let from = target.as_ref().map_or(Seqno(0), |t| t.high_seqno.next());
        iterate(
            &**file,
            now.by_seqno.as_ref(),
            &seqno_key(from),
            None,
            &mut |_, v| {
                let (key, _) = decode_seqno_value(v)
                    .map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))?;
                discarded.push(key);
                Ok(true)
            },
        )?;
        let to_zero = target.is_none();
        let mut header = match target {
            Some(t) => Header {
                commit: now.commit + 1,
                timestamp: now_secs(),
                ..t
            },
            None => {
                // History is gone: back to an empty store.
                iterate(&**file, now.by_key.as_ref(), b"", None, &mut |k, _| {
                    if let Ok(key) = DiskKey::from_shared(k.clone()) {
                        discarded.push(key);
                    }
                    Ok(true)
                })?;
                Header {
                    vbid: self.vbid,
                    revision: now.revision,
                    commit: now.commit + 1,
                    timestamp: now_secs(),
                    ..Header::default()
                }
            }
        };
        discarded.sort();
        discarded.dedup();
        let mut out = PhysWriter::new(w.end);
        append_header(&mut out, &mut header, w.end, 0);
        let high_seqno = header.high_seqno;
        self.land(&mut w, &out, header, Vec::new())?;
        Ok(RollbackResult {
            high_seqno,
            discarded,
            to_zero,
        })
    }

    fn compact(&self, config: &CompactionConfig) -> StoreResult<CompactionResult> {
        crate::compact::compact(self, config)
    }

    fn get_local(&self, name: &str) -> StoreResult<Option<Bytes>> {
        self.check()?;
        let view = self.view();
        lookup(
            &*view.file,
            view.header.local.as_ref(),
            Some(&view.roots[2]),
            name.as_bytes(),
        )
    }

    fn list_local(&self) -> StoreResult<Vec<(String, Bytes)>> {
        self.check()?;
        let view = self.view();
        let mut out = Vec::new();
        iterate(
            &*view.file,
            view.header.local.as_ref(),
            b"",
            None,
            &mut |k, v| {
                out.push((String::from_utf8_lossy(k).into_owned(), v.clone()));
                Ok(true)
            },
        )?;
        Ok(out)
    }

    fn vbstate(&self) -> StoreResult<Option<VbucketState>> {
        self.check()?;
        let view = self.view();
        let Some(raw) = lookup(
            &*view.file,
            view.header.local.as_ref(),
            Some(&view.roots[2]),
            VBSTATE_LOCAL_NAME.as_bytes(),
        )?
        else {
            return Ok(None);
        };
        let mut state = VbucketState::decode(&raw)?;
        state.high_seqno = view.header.high_seqno;
        state.purge_seqno = view.header.purge_seqno;
        Ok(Some(state))
    }

    fn info(&self) -> StoreResult<StoreInfo> {
        self.check()?;
        let view = self.view();
        let h = &view.header;
        let reduce = h.by_key.map(|r| r.reduce).unwrap_or_default();
        Ok(StoreInfo {
            vbid: self.vbid,
            revision: self.revision(),
            high_seqno: h.high_seqno,
            purge_seqno: h.purge_seqno,
            live_items: reduce.live,
            deleted_items: reduce.deleted,
            data_bytes: reduce.bytes,
            file_bytes: view.file.end(),
        })
    }
}

/// A by-seqno scan pinned to one view. It holds the file open, so it keeps
/// working after the vbucket is compacted or destroyed.
struct CouchScan {
    view: Arc<View>,
    next: Option<Seqno>,
    end: Seqno,
    opts: ScanOptions,
    last: Option<Seqno>,
}

impl SeqnoScan for CouchScan {
    fn snapshot_high_seqno(&self) -> Seqno {
        self.view.header.high_seqno
    }

    fn run(&mut self, visit: &mut dyn FnMut(Document) -> ScanControl) -> StoreResult<ScanStatus> {
        let Some(next) = self.next.filter(|n| *n <= self.end) else {
            self.next = None;
            return Ok(ScanStatus::Done);
        };
        let view = Arc::clone(&self.view);
        let file = &view.file;
        let start = seqno_key(next);
        let end_key = self.end.0.checked_add(1).map(|e| seqno_key(Seqno(e)));
        let mut status = ScanStatus::Done;
        iterate(
            &**file,
            view.header.by_seqno.as_ref(),
            &start,
            end_key.as_ref().map(|k| &k[..]),
            &mut |k, v| {
                if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                    status = ScanStatus::Stopped;
                    return Ok(false);
                }
                let seqno = parse_seqno_key(k)
                    .map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))?;
                self.next = seqno.0.checked_add(1).map(Seqno);
                let (key, rec) = decode_seqno_value(v)
                    .map_err(|e| StoreError::corrupt(file.path(), 0, e.kind()))?;
                if rec.meta.deleted.is_some() && !self.opts.include_deleted {
                    return Ok(true);
                }
                let value = if self.opts.keys_only {
                    Bytes::new()
                } else {
                    file.read_value(&rec.value)?
                };
                self.last = Some(seqno);
                match visit(document(key, rec, value)) {
                    ScanControl::Continue => Ok(true),
                    ScanControl::Yield => {
                        status = ScanStatus::Yielded;
                        Ok(false)
                    }
                    ScanControl::Stop => {
                        status = ScanStatus::Stopped;
                        Ok(false)
                    }
                }
            },
        )?;
        if status != ScanStatus::Yielded {
            self.next = None;
        }
        Ok(status)
    }

    fn last_seqno(&self) -> Option<Seqno> {
        self.last
    }
}
