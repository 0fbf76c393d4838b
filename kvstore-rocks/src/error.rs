//! Errors of this backend and their mapping into [`StoreError`].

use crate::codec::Malformed;
use kvstore_core::{CorruptionKind, StoreError};
use std::path::Path;

/// The backend's name in errors and logs.
pub const BACKEND: &str = "rocksdb";

/// An error raised by this backend (wrapped in
/// [`StoreError::Backend`] with `backend: "rocksdb"`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RocksError {
    /// RocksDB reported an error.
    #[error("{0}")]
    Rocks(#[from] rocksdb::Error),
    /// A column family this backend needs is not open.
    #[error("column family {0:?} is missing")]
    MissingColumnFamily(&'static str),
    /// The directory holds column families this build does not know.
    #[error("unknown column families {0:?}: written by a newer version?")]
    UnknownColumnFamilies(Vec<String>),
    /// A revision number would overflow.
    #[error("revision numbers of this vbucket are exhausted")]
    RevisionsExhausted,
}

impl From<RocksError> for StoreError {
    fn from(e: RocksError) -> Self {
        StoreError::Backend {
            backend: BACKEND,
            source: Box::new(e),
        }
    }
}

/// Wraps a RocksDB error. Corruption reported by RocksDB itself (a bad
/// block checksum, a damaged manifest) also lands here: RocksDB names the
/// file in its message, and it has no offset we could add.
pub(crate) fn backend(e: rocksdb::Error) -> StoreError {
    RocksError::Rocks(e).into()
}

/// A value of ours that did not decode, as a typed corruption error naming
/// the database directory and the column family and key it came from.
pub(crate) fn corrupt(path: &Path, cf: &str, key: &[u8], m: Malformed) -> StoreError {
    StoreError::corrupt(
        path,
        0,
        CorruptionKind::Malformed {
            what: m.what,
            detail: format!(
                "{} (column family {cf}, key {})",
                m.detail,
                key.escape_ascii()
            ),
        },
    )
}
