//! The statuses an engine call can end with, as a client of the data service
//! expects them.

use kvstore_core::{StoreError, Vbid};
use std::sync::Arc;

/// Why an engine call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The call cannot finish now (cookie calls only, [`crate::Engine::cookie`]).
    /// Its state is kept under the caller's cookie; the engine calls the
    /// notifier later and the caller re-issues the call to collect the
    /// result. The Rust API never returns it: it waits instead.
    #[error("would block; the result is delivered through the cookie")]
    WouldBlock,
    /// The vbucket does not exist here or is not in a state to serve the call.
    #[error("{0}: not my vbucket")]
    NotMyVbucket(Vbid),
    /// The key does not exist.
    #[error("key not found")]
    KeyNotFound,
    /// The key exists (add) or its CAS did not match.
    #[error("key exists or CAS mismatch")]
    KeyExists,
    /// Append or prepend found no document to add to (memcached's
    /// `NOT_STORED`).
    #[error("not stored: the document does not exist")]
    NotStored,
    /// Increment or decrement met a value that is not a decimal number.
    #[error("the value is not a number that can be incremented or decremented")]
    DeltaBadValue,
    /// The value is larger than allowed.
    #[error("value of {size} bytes is over the {max}-byte limit")]
    TooBig {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The request itself is malformed.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// Try again later: memory is full, or a flush failed.
    #[error("temporary failure: {0}")]
    TemporaryFailure(String),
    /// Another request holds the resource (for example a manifest update).
    #[error("busy: {0}")]
    Busy(String),
    /// The collection does not exist (or was dropped).
    #[error("unknown collection (manifest uid {manifest_uid:#x})")]
    UnknownCollection {
        /// The manifest uid the engine is at.
        manifest_uid: u64,
    },
    /// The scope does not exist.
    #[error("unknown scope (manifest uid {manifest_uid:#x})")]
    UnknownScope {
        /// The manifest uid the engine is at.
        manifest_uid: u64,
    },
    /// A collections manifest could not be applied.
    #[error("cannot apply collections manifest: {0}")]
    CannotApplyManifest(String),
    /// The vbucket already exists.
    #[error("{0} already exists")]
    VbucketExists(Vbid),
    /// The storage backend failed.
    #[error("storage error: {0}")]
    Storage(Arc<StoreError>),
    /// The engine is shutting down.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// Warmup could not rebuild the engine's state from disk.
    #[error("warmup failed: {0}")]
    Warmup(String),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Storage(Arc::new(e))
    }
}

impl EngineError {
    /// The memcached binary-protocol status code of this error.
    #[must_use]
    pub fn status_code(&self) -> u16 {
        match self {
            EngineError::KeyNotFound => 0x0001,
            EngineError::KeyExists => 0x0002,
            EngineError::TooBig { .. } => 0x0003,
            EngineError::NotStored => 0x0005,
            EngineError::DeltaBadValue => 0x0006,
            EngineError::InvalidArguments(_) => 0x0004,
            EngineError::NotMyVbucket(_) => 0x0007,
            EngineError::UnknownCollection { .. } => 0x0088,
            EngineError::UnknownScope { .. } => 0x008c,
            EngineError::CannotApplyManifest(_) => 0x008a,
            EngineError::Busy(_) => 0x0085,
            EngineError::TemporaryFailure(_) | EngineError::ShuttingDown => 0x0086,
            EngineError::WouldBlock => 0x0086,
            EngineError::VbucketExists(_) => 0x0002,
            EngineError::Storage(_) | EngineError::Warmup(_) => 0x0084,
        }
    }
}

/// The result of an engine call.
pub type EngineResult<T> = Result<T, EngineError>;
