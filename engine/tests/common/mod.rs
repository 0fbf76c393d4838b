//! Helpers shared by the engine's tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use engine::{Backend, Clock, Engine, EngineConfig, EngineError, EngineResult, Notifier};
use kvstore_core::{CollectionId, DiskKey};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// A clock the test moves by hand.
#[derive(Debug)]
pub struct ManualClock {
    pub secs: AtomicU32,
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new(secs: u32) -> Arc<Self> {
        Arc::new(ManualClock {
            secs: AtomicU32::new(secs),
            nanos: AtomicU64::new(u64::from(secs) * 1_000_000_000),
        })
    }

    pub fn advance(&self, secs: u32) {
        self.secs.fetch_add(secs, Ordering::SeqCst);
        self.nanos
            .fetch_add(u64::from(secs) * 1_000_000_000, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> u32 {
        self.secs.load(Ordering::SeqCst)
    }

    fn now_nanos(&self) -> u64 {
        self.nanos.fetch_add(1, Ordering::SeqCst)
    }
}

/// Records notifications and lets a test wait for them.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<Vec<(u64, Result<(), String>)>>,
    cv: Condvar,
}

impl Notifier for Recorder {
    fn notify(&self, cookie: u64, status: EngineResult<()>) {
        self.seen
            .lock()
            .unwrap()
            .push((cookie, status.map_err(|e| e.to_string())));
        self.cv.notify_all();
    }
}

impl Recorder {
    /// Waits until `cookie` was notified; returns its status. A test that
    /// never gets its notification fails here after a generous bound.
    pub fn wait(&self, cookie: u64) -> Result<(), String> {
        let mut seen = self.seen.lock().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((_, s)) = seen.iter().find(|(c, _)| *c == cookie) {
                return s.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "cookie {cookie} was never notified"
            );
            seen = self
                .cv
                .wait_timeout(seen, Duration::from_millis(100))
                .unwrap()
                .0;
        }
    }

    /// Every notification so far.
    pub fn all(&self) -> Vec<(u64, Result<(), String>)> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self, cookie: u64) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| *c == cookie)
            .count()
    }
}

pub fn key(k: &str) -> DiskKey {
    DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).unwrap()
}

pub struct Opened {
    pub engine: Engine,
    pub notes: Arc<Recorder>,
    pub clock: Arc<ManualClock>,
}

/// Opens an engine on `dir` with `backend`, a manual clock at t=1,000,000,
/// and `flusher_threads` background flushers.
pub fn open(dir: &std::path::Path, backend: Backend, flusher_threads: usize) -> Opened {
    open_with(dir, backend, |c| c.flusher_threads = flusher_threads)
}

pub fn open_with(
    dir: &std::path::Path,
    backend: Backend,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Opened {
    let clock = ManualClock::new(1_000_000);
    let notes = Arc::new(Recorder::default());
    let mut cfg = EngineConfig::new(dir);
    cfg.backend = backend;
    cfg.vbuckets = 16;
    cfg.clock = clock.clone();
    tweak(&mut cfg);
    let engine = Engine::open_with_notifier(cfg, notes.clone()).unwrap();
    Opened {
        engine,
        notes,
        clock,
    }
}

/// Retries a call that may get `TemporaryFailure` while the flusher
/// catches up.
pub fn retry<T>(mut f: impl FnMut() -> EngineResult<T>) -> EngineResult<T> {
    for _ in 0..100_000 {
        match f() {
            Err(EngineError::TemporaryFailure(_)) => std::thread::sleep(Duration::from_micros(200)),
            other => return other,
        }
    }
    f()
}

/// A backend wrapper that fails the commits of chosen vbuckets, for as long
/// as they are chosen, as a full disk would (the commit is refused before
/// anything is written; the wrapped store itself stays healthy).
pub struct FaultyKv {
    inner: Arc<dyn kvstore_core::KvStore>,
    failing: Arc<Mutex<std::collections::HashSet<kvstore_core::Vbid>>>,
    /// Commits refused so far.
    pub refused: Arc<AtomicU64>,
}

impl FaultyKv {
    pub fn new(inner: Arc<dyn kvstore_core::KvStore>) -> Arc<Self> {
        Arc::new(FaultyKv {
            inner,
            failing: Arc::default(),
            refused: Arc::default(),
        })
    }

    /// Starts or stops failing the commits of `vbid`.
    pub fn set_failing(&self, vbid: kvstore_core::Vbid, failing: bool) {
        let mut f = self.failing.lock().unwrap();
        if failing {
            f.insert(vbid);
        } else {
            f.remove(&vbid);
        }
    }

    fn wrap(&self, s: Arc<dyn kvstore_core::VbStore>) -> Arc<dyn kvstore_core::VbStore> {
        Arc::new(FaultyVb {
            inner: s,
            failing: self.failing.clone(),
            refused: self.refused.clone(),
        })
    }
}

impl kvstore_core::KvStore for FaultyKv {
    fn backend_name(&self) -> &'static str {
        "faulty"
    }
    fn discover(
        &self,
    ) -> kvstore_core::StoreResult<Vec<(kvstore_core::Vbid, kvstore_core::Revision)>> {
        self.inner.discover()
    }
    fn create(
        &self,
        vbid: kvstore_core::Vbid,
    ) -> kvstore_core::StoreResult<Arc<dyn kvstore_core::VbStore>> {
        Ok(self.wrap(self.inner.create(vbid)?))
    }
    fn open(
        &self,
        vbid: kvstore_core::Vbid,
        revision: kvstore_core::Revision,
    ) -> kvstore_core::StoreResult<Arc<dyn kvstore_core::VbStore>> {
        Ok(self.wrap(self.inner.open(vbid, revision)?))
    }
    fn close(&self) -> kvstore_core::StoreResult<()> {
        self.inner.close()
    }
    fn mark_deleted(
        &self,
        vbid: kvstore_core::Vbid,
        revision: kvstore_core::Revision,
    ) -> kvstore_core::StoreResult<()> {
        self.inner.mark_deleted(vbid, revision)
    }
    fn destroy(
        &self,
        vbid: kvstore_core::Vbid,
        revision: kvstore_core::Revision,
    ) -> kvstore_core::StoreResult<()> {
        self.inner.destroy(vbid, revision)
    }
}

struct FaultyVb {
    inner: Arc<dyn kvstore_core::VbStore>,
    failing: Arc<Mutex<std::collections::HashSet<kvstore_core::Vbid>>>,
    refused: Arc<AtomicU64>,
}

impl kvstore_core::VbStore for FaultyVb {
    fn vbid(&self) -> kvstore_core::Vbid {
        self.inner.vbid()
    }
    fn revision(&self) -> kvstore_core::Revision {
        self.inner.revision()
    }
    fn commit(
        &self,
        batch: kvstore_core::CommitBatch,
    ) -> kvstore_core::StoreResult<kvstore_core::CommitInfo> {
        if self.failing.lock().unwrap().contains(&self.inner.vbid()) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(kvstore_core::StoreError::io(
                "write",
                format!("faulty:{}", self.inner.vbid()),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ));
        }
        self.inner.commit(batch)
    }
    fn get(&self, key: &DiskKey) -> kvstore_core::StoreResult<Option<kvstore_core::Document>> {
        self.inner.get(key)
    }
    fn key_range(
        &self,
        range: &kvstore_core::KeyRange,
        visit: &mut dyn FnMut(kvstore_core::Document) -> kvstore_core::ScanControl,
    ) -> kvstore_core::StoreResult<kvstore_core::ScanStatus> {
        self.inner.key_range(range, visit)
    }
    fn seqno_scan(
        &self,
        start: kvstore_core::Seqno,
        end: kvstore_core::Seqno,
        opts: kvstore_core::ScanOptions,
    ) -> kvstore_core::StoreResult<Box<dyn kvstore_core::SeqnoScan>> {
        self.inner.seqno_scan(start, end, opts)
    }
    fn rollback(
        &self,
        to: kvstore_core::Seqno,
    ) -> kvstore_core::StoreResult<kvstore_core::RollbackResult> {
        self.inner.rollback(to)
    }
    fn compact(
        &self,
        config: &kvstore_core::CompactionConfig,
    ) -> kvstore_core::StoreResult<kvstore_core::CompactionResult> {
        self.inner.compact(config)
    }
    fn get_local(&self, name: &str) -> kvstore_core::StoreResult<Option<bytes::Bytes>> {
        self.inner.get_local(name)
    }
    fn list_local(&self) -> kvstore_core::StoreResult<Vec<(String, bytes::Bytes)>> {
        self.inner.list_local()
    }
    fn vbstate(&self) -> kvstore_core::StoreResult<Option<kvstore_core::VbucketState>> {
        self.inner.vbstate()
    }
    fn info(&self) -> kvstore_core::StoreResult<kvstore_core::StoreInfo> {
        self.inner.info()
    }
}

/// Copies a directory tree (not the lock file).
#[allow(dead_code)]
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_tree(&e.path(), &dest);
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}
