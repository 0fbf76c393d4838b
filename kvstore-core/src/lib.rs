//! Domain types, errors and the storage contract of the vbucket store.
//!
//! - [`types`]: `Vbid`, `Seqno`, `Cas`, `RevSeqno`, `Revision`,
//!   `CollectionId`, `ScopeId`.
//! - [`key`]: disk keys, a LEB128 collection id before the user key.
//! - [`doc`]: documents, metadata, local documents, the vbucket state.
//! - [`store`]: the [`KvStore`] / [`VbStore`] contract every backend
//!   implements.
//! - [`mem`]: [`MemStore`], the in-memory reference backend.
//! - `testkit` (feature `testkit`): the conformance suite every backend runs.
#![deny(missing_docs)]

pub mod batch;
pub mod doc;
pub mod error;
pub mod key;
pub mod mem;
pub mod store;
pub mod sync;
pub mod types;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use doc::{
    Datatype, DeleteSource, DocMeta, Document, FailoverEntry, LocalOp, VBSTATE_LOCAL_NAME, VbState,
    VbucketState,
};
pub use error::{Corruption, CorruptionKind, KeyError, StoreError, StoreResult};
pub use key::{DiskKey, MAX_USER_KEY_LEN};
pub use mem::{MemImage, MemStore};
pub use store::{
    CancelToken, CommitBatch, CommitInfo, CompactionConfig, CompactionResult, DroppedCollection,
    KeyRange, KvStore, Prior, RollbackResult, ScanControl, ScanOptions, ScanStatus, SeqnoScan,
    StoreInfo, VbStore,
};
pub use types::{Cas, CollectionId, RevSeqno, Revision, ScopeId, Seqno, Vbid};
