//! Server settings: flags and an optional JSON config file give the same
//! fields; a flag wins over the file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error("config file {path}: {msg}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        msg: String,
    },
    /// A non-loopback address without a users file.
    #[error(
        "refusing to listen on {0} without a users file: give --users-file, or listen on 127.0.0.1"
    )]
    OpenWithoutAuth(SocketAddr),
    /// Some other setting is out of range.
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// The limits a client is held to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; more are closed at accept.
    pub max_connections: usize,
    /// The largest value (default 20 MiB, as upstream).
    pub max_value_size: usize,
    /// The largest request body; a larger declared body is refused before
    /// it is read and the connection is closed.
    pub max_frame_size: usize,
    /// A connection with no complete request for this long is closed, and
    /// so is one that takes this long to send one request (slowloris).
    pub idle_timeout: Duration,
    /// Bytes of responses a connection may have queued; past that it stops
    /// reading requests until the client reads.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_value_size: 20 << 20,
            max_frame_size: (20 << 20) + 4096,
            idle_timeout: Duration::from_secs(300),
            max_output: 4 << 20,
        }
    }
}

/// Everything the server is started with.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where to listen (default 127.0.0.1:11210).
    pub listen: SocketAddr,
    /// The data directory; each bucket gets a subdirectory.
    pub data_dir: PathBuf,
    /// The engine backend by name (`couchfile`, `memory`, `rocksdb`).
    pub backend: String,
    /// The buckets (default: one, `default`). Clients that do not select
    /// a bucket use the first.
    pub buckets: Vec<String>,
    /// The users file; when given, every client must authenticate.
    pub users_file: Option<PathBuf>,
    /// Vbuckets per bucket (default 1024), created active at first start.
    pub vbuckets: usize,
    /// Flusher threads per bucket.
    pub flusher_threads: usize,
    /// Bytes of dirty items a bucket may hold.
    pub memory_quota: u64,
    /// Client limits.
    pub limits: Limits,
    /// Write the bound port here once listening (for tests and scripts).
    pub port_file: Option<PathBuf>,
}

impl ServerConfig {
    /// Defaults with data under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 11210)),
            data_dir: data_dir.into(),
            backend: "couchfile".into(),
            buckets: vec!["default".into()],
            users_file: None,
            vbuckets: 1024,
            flusher_threads: 2,
            memory_quota: 256 << 20,
            limits: Limits::default(),
            port_file: None,
        }
    }

    /// Checks the rules that keep a default server safe.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.listen.ip().is_loopback() && self.users_file.is_none() {
            return Err(ConfigError::OpenWithoutAuth(self.listen));
        }
        if self.buckets.is_empty() {
            return Err(ConfigError::Invalid("at least one bucket is needed".into()));
        }
        for b in &self.buckets {
            let ok = !b.is_empty()
                && b.len() <= 100
                && b.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"_-.%".contains(&c))
                && !b.starts_with('.');
            if !ok {
                return Err(ConfigError::Invalid(format!("bad bucket name {b:?}")));
            }
        }
        if self.vbuckets == 0 || self.vbuckets > 1024 {
            return Err(ConfigError::Invalid("vbuckets must be 1 to 1024".into()));
        }
        if self.limits.max_frame_size < self.limits.max_value_size {
            return Err(ConfigError::Invalid(
                "max frame size must be at least the max value size".into(),
            ));
        }
        Ok(())
    }
}

/// The config file: every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Listen address.
    pub listen: Option<SocketAddr>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Backend name.
    pub backend: Option<String>,
    /// Bucket names.
    pub buckets: Option<Vec<String>>,
    /// Users file.
    pub users_file: Option<PathBuf>,
    /// Vbuckets per bucket.
    pub vbuckets: Option<usize>,
    /// Flusher threads per bucket.
    pub flusher_threads: Option<usize>,
    /// Memory quota per bucket, bytes.
    pub memory_quota: Option<u64>,
    /// Max connections.
    pub max_connections: Option<usize>,
    /// Max value size, bytes.
    pub max_value_size: Option<usize>,
    /// Max frame size, bytes.
    pub max_frame_size: Option<usize>,
    /// Idle timeout, seconds.
    pub idle_timeout_secs: Option<u64>,
}

impl ConfigFile {
    /// Reads a JSON config file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let raw = std::fs::read(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })?;
        serde_json::from_slice(&raw).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            msg: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn safe_by_default() {
        let mut c = ServerConfig::new("/tmp/x");
        assert!(c.listen.ip().is_loopback());
        c.validate().unwrap();
        c.listen = "0.0.0.0:11210".parse().unwrap();
        assert!(matches!(c.validate(), Err(ConfigError::OpenWithoutAuth(_))));
        c.users_file = Some("/tmp/users.json".into());
        c.validate().unwrap();
        c.buckets = vec!["../etc".into()];
        assert!(c.validate().is_err());
    }
}
