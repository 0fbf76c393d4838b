//! Engine settings.

use kvstore_couchfile::CouchConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The storage backend.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Append-only B-tree files (the default; pure Rust).
    Couchfile(CouchConfig),
    /// In memory only: nothing survives the process.
    Memory,
    /// RocksDB (feature `rocks`), in the `rocksdb` subdirectory of the data
    /// directory.
    #[cfg(feature = "rocks")]
    Rocks(kvstore_rocks::RocksConfig),
}

impl Default for Backend {
    fn default() -> Self {
        Backend::Couchfile(CouchConfig::default())
    }
}

/// A source of time: seconds for expiry, nanoseconds for CAS.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u32;
    /// Nanoseconds since the Unix epoch.
    fn now_nanos(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u32 {
        u32::try_from(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        )
        .unwrap_or(u32::MAX)
    }

    fn now_nanos(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// Settings of an [`crate::Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the backend keeps its files.
    pub data_dir: PathBuf,
    /// The backend.
    pub backend: Backend,
    /// The number of vbucket slots (default 1024).
    pub vbuckets: usize,
    /// Flusher threads (default 2). With 0, nothing is flushed until
    /// [`crate::Engine::flush`] is called (tests use this to control when
    /// blocked calls complete).
    pub flusher_threads: usize,
    /// Bytes of dirty items allowed in memory before writes get
    /// `TemporaryFailure` (default 256 MiB).
    pub memory_quota: u64,
    /// The largest value accepted (default 20 MiB, as upstream).
    pub max_value_size: usize,
    /// The clock (tests use a manual one).
    pub clock: Arc<dyn Clock>,
}

impl EngineConfig {
    /// Defaults, with files under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            backend: Backend::default(),
            vbuckets: 1024,
            flusher_threads: 2,
            memory_quota: 256 << 20,
            max_value_size: 20 << 20,
            clock: Arc::new(SystemClock),
        }
    }
}
