//! Engine settings.

use kvstore_core::KvStore;
use kvstore_couchfile::CouchConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The storage backend. It parses from its name (`"couchfile"`,
/// `"memory"`, `"rocksdb"`) with default settings, for configs and CLIs:
///
/// ```
/// use engine::Backend;
/// assert!(matches!("couchfile".parse::<Backend>(), Ok(Backend::Couchfile(_))));
/// assert!(matches!("memory".parse::<Backend>(), Ok(Backend::Memory)));
/// assert!("floppy".parse::<Backend>().is_err());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum Backend {
    /// Append-only B-tree files (the default; pure Rust).
    Couchfile(CouchConfig),
    /// In memory only: nothing survives the process.
    Memory,
    /// RocksDB (feature `rocks`), in the `rocksdb` subdirectory of the data
    /// directory.
    #[cfg(feature = "rocks")]
    Rocks(kvstore_rocks::RocksConfig),
    /// A backend the caller opened (tests wrap one to inject faults). The
    /// bucket's manifest is kept in the data directory, as for couchfile.
    Custom(Arc<dyn KvStore>),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Couchfile(c) => f.debug_tuple("Couchfile").field(c).finish(),
            Backend::Memory => f.write_str("Memory"),
            #[cfg(feature = "rocks")]
            Backend::Rocks(c) => f.debug_tuple("Rocks").field(c).finish(),
            Backend::Custom(kv) => f.debug_tuple("Custom").field(&kv.backend_name()).finish(),
        }
    }
}

/// A backend name that is not known (or not built in).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseBackendError {
    /// No backend has this name.
    #[error("unknown backend {0:?} (expected couchfile, memory or rocksdb)")]
    Unknown(String),
    /// The RocksDB backend needs the `rocks` feature.
    #[error("the rocksdb backend is not built in (enable the engine's `rocks` feature)")]
    NotBuilt,
}

impl std::str::FromStr for Backend {
    type Err = ParseBackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "couchfile" | "couchstore" => Ok(Backend::Couchfile(CouchConfig::default())),
            "memory" | "mem" => Ok(Backend::Memory),
            #[cfg(feature = "rocks")]
            "rocksdb" | "rocks" => Ok(Backend::Rocks(kvstore_rocks::RocksConfig::default())),
            #[cfg(not(feature = "rocks"))]
            "rocksdb" | "rocks" => Err(ParseBackendError::NotBuilt),
            _ => Err(ParseBackendError::Unknown(s.to_owned())),
        }
    }
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
    /// The first back-off after a failed flush of a vbucket (default
    /// 10 ms); it doubles with each failure in a row, up to
    /// `flush_retry_max` (default 5 s). Each vbucket has its own.
    pub flush_retry_min: Duration,
    /// The longest back-off between flush attempts of a failing vbucket.
    pub flush_retry_max: Duration,
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
            flush_retry_min: Duration::from_millis(10),
            flush_retry_max: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
        }
    }
}
