//! Typed errors. Every failure a backend can report is a variant here; none of
//! them is a panic.

use crate::types::{Revision, Seqno, Vbid};
use std::io;
use std::path::PathBuf;

/// A disk key that is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The user key has no bytes.
    #[error("the user key is empty")]
    Empty,
    /// The user key is longer than allowed.
    #[error("the user key is {len} bytes, more than the {max} allowed")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The collection prefix ends before its last byte.
    #[error("the collection prefix is truncated")]
    TruncatedPrefix,
    /// The collection prefix has trailing zero groups.
    #[error("the collection prefix is not in canonical LEB128 form")]
    NonCanonicalPrefix,
    /// The collection prefix encodes a value above `u32::MAX`.
    #[error("the collection prefix does not fit in 32 bits")]
    PrefixOverflow,
}

/// What was wrong with a corrupt file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CorruptionKind {
    /// A CRC32C did not match.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The checksum the file holds.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The file ends before a chunk it points at.
    #[error("truncated: needed {needed} bytes, the file has {available}")]
    Truncated {
        /// Bytes the read needed.
        needed: u64,
        /// Bytes there were.
        available: u64,
    },
    /// A length field is larger than any valid value.
    #[error("impossible length {len} (limit {max})")]
    ImpossibleLength {
        /// The length read.
        len: u64,
        /// The largest valid length.
        max: u64,
    },
    /// The file was written by a format version this build does not know.
    #[error("unknown format version {0}")]
    UnknownVersion(u32),
    /// A header is damaged but valid data follows it.
    #[error("damaged header followed by valid data at offset {later_offset}")]
    BadHeaderBeforeValidData {
        /// Where the later valid data starts.
        later_offset: u64,
    },
    /// The file holds no valid header at all.
    #[error("no valid header found")]
    NoHeader,
    /// A structure decoded to something that cannot be right.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which structure.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

/// A corruption found in a file: which file, where, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt file {}: at offset {offset}: {kind}", path.display())]
pub struct Corruption {
    /// The file.
    pub path: PathBuf,
    /// The byte offset of the damaged structure.
    pub offset: u64,
    /// The check that failed.
    pub kind: CorruptionKind,
}

/// The error type of every [`crate::KvStore`] and [`crate::VbStore`] call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// An operating-system I/O call failed.
    #[error("I/O error during {op} on {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A file failed a check; see [`Corruption`].
    #[error(transparent)]
    Corrupt(Box<Corruption>),
    /// A sync failed earlier, so the kernel may have dropped dirty pages; the
    /// store refuses further calls until it is reopened.
    #[error("store {} is poisoned by an earlier failed sync ({cause}); reopen it", path.display())]
    Poisoned {
        /// The store's file or directory.
        path: PathBuf,
        /// The error that poisoned it.
        cause: String,
    },
    /// A key did not validate.
    #[error("invalid key: {0}")]
    Key(#[from] KeyError),
    /// A commit carried a seqno at or below the store's high seqno.
    #[error("{vbid}: seqno {seqno} is not above the high seqno {high}")]
    SeqnoNotIncreasing {
        /// The vbucket.
        vbid: Vbid,
        /// The offending seqno.
        seqno: Seqno,
        /// The store's high seqno.
        high: Seqno,
    },
    /// A batch was malformed in some other way.
    #[error("invalid batch for {vbid}: {reason}")]
    InvalidBatch {
        /// The vbucket.
        vbid: Vbid,
        /// What was wrong.
        reason: String,
    },
    /// No store exists for this vbucket revision.
    #[error("{vbid} {revision} does not exist")]
    NoSuchRevision {
        /// The vbucket.
        vbid: Vbid,
        /// The revision asked for.
        revision: Revision,
    },
    /// The revision was deleted while this handle still referred to it.
    #[error("{vbid} {revision} has been deleted")]
    Deleted {
        /// The vbucket.
        vbid: Vbid,
        /// Its revision.
        revision: Revision,
    },
    /// The store was closed ([`crate::KvStore::close`]); its handles no
    /// longer read or write.
    #[error("the store was closed")]
    Closed,
    /// The operation was cancelled (for example a compaction stopped by a
    /// vbucket delete).
    #[error("cancelled")]
    Cancelled,
    /// A local document or vbucket state could not be decoded.
    #[error("bad local document {name:?}: {reason}")]
    BadLocalDoc {
        /// The document name.
        name: String,
        /// What was wrong.
        reason: String,
    },
    /// The backend library reported an error of its own.
    #[error("{backend} error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds a corruption error.
    pub fn corrupt(path: impl Into<PathBuf>, offset: u64, kind: CorruptionKind) -> Self {
        StoreError::Corrupt(Box::new(Corruption {
            path: path.into(),
            offset,
            kind,
        }))
    }

    /// The corruption details, when this is a corruption error.
    #[must_use]
    pub fn corruption(&self) -> Option<&Corruption> {
        match self {
            StoreError::Corrupt(c) => Some(c),
            _ => None,
        }
    }

    /// True when the store refuses calls until reopened.
    #[must_use]
    pub fn is_poisoned(&self) -> bool {
        matches!(self, StoreError::Poisoned { .. })
    }
}

impl From<Corruption> for StoreError {
    fn from(c: Corruption) -> Self {
        StoreError::Corrupt(Box::new(c))
    }
}

/// The result type of store calls.
pub type StoreResult<T> = Result<T, StoreError>;
