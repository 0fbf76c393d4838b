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
