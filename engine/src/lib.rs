//! The vbucket engine: what the persistence layer of a Couchbase-style data
//! service does, over any [`kvstore_core::KvStore`] backend.
//!
//! A durable write, in a few lines:
//!
//! ```
//! use engine::{CollectionId, DiskKey, Engine, EngineConfig, VbState, Vbid, WriteOptions};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path()))?;
//! engine.create_vbucket(Vbid(0), VbState::Active)?;
//! let key = DiskKey::new(CollectionId::DEFAULT, b"greeting")?;
//! let r = engine.set_durable(Vbid(0), &key, "hello", WriteOptions::default())?;
//! assert!(engine.vbucket(Vbid(0))?.persisted_seqno() >= r.seqno); // on disk now
//! # Ok(())
//! # }
//! ```
//!
//! - [`Engine`] serves document operations, assigns seqnos and CAS per
//!   vbucket, queues dirty items (one per key) for the flusher, warms up
//!   from disk, and applies collections manifests. Its Rust API returns
//!   results directly: blocking calls, or a [`Pending`] future. No cookie,
//!   notifier or re-issue is needed; [`api`] says what is durable when each
//!   call returns.
//! - [`Engine::cookie`] is the would-block protocol for a network server:
//!   a call that must wait returns `WouldBlock`, the [`Notifier`] is told,
//!   and the re-issued call collects the result ([`CookieTable`]). Each
//!   parking has its own token, so a reused cookie id never collects
//!   another call's result.
//! - [`VBucketMap`] holds one slot per vbucket. [`VBucketMap::get`] returns
//!   a [`VbGuard`]: while it lives, the vbucket incarnation and its store
//!   stay usable. Any thread may delete a vbucket at any moment; the call
//!   returns at once, and the incarnation's files are destroyed exactly
//!   once, by the [`Deleter`], after the last guard drops (upstream
//!   MB-33463). The vbucket can be created again at once, as a new
//!   revision. `tests/loom.rs` checks these rules with loom on this code.
//! - A vbucket whose store fails recovers by itself: it keeps serving and
//!   keeps its dirty items, backs off on its own (other vbuckets keep their
//!   pace), reopens the store from its last durable commit and flushes
//!   again. [`VbStats::health`] and [`EngineStats`] show failures, retries
//!   and reopens.
//!
//! The crate re-exports the types its API uses, so a consumer depends on
//! this crate alone.
//!
//! ```
//! use engine::{CollectionId, DiskKey, Engine, EngineConfig, EngineError, VbState, Vbid, WriteOptions};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path()))?;
//! engine.create_vbucket(Vbid(0), VbState::Active)?;
//! let key = DiskKey::new(CollectionId::DEFAULT, b"greeting")?;
//! engine.set(Vbid(0), &key, "hello", WriteOptions::default())?;
//! assert_eq!(&engine.get(Vbid(0), &key)?.value[..], b"hello");
//! assert!(matches!(engine.get(Vbid(1), &key), Err(EngineError::NotMyVbucket(_))));
//! engine.shutdown()?;
//!
//! // Warmup finds the vbucket and the document again.
//! let engine = Engine::open(EngineConfig::new(dir.path()))?;
//! assert_eq!(engine.warmed_up(), [(Vbid(0), VbState::Active)]);
//! assert_eq!(&engine.get(Vbid(0), &key)?.value[..], b"hello");
//! # Ok(())
//! # }
//! ```

pub mod api;
pub mod config;
pub mod cookie;
pub mod deleter;
pub mod engine;
pub mod error;
pub(crate) mod flusher;
pub mod rmw;
pub(crate) mod sync;
pub mod vbmap;
pub mod vbucket;

pub use api::{CookieCalls, Pending};
pub use config::{Backend, Clock, EngineConfig, ParseBackendError, SystemClock};
pub use cookie::{
    CookieId, CookieTable, MutationResult, NoNotify, Notifier, Outcome, Owner, Ticket, WaitKind,
    Waiting,
};
pub use deleter::{Deleter, Destroyed};
pub use engine::{CollectionInfo, Engine, EngineStats, Item, StoreMode, VbStats, WriteOptions};
pub use error::{EngineError, EngineResult};
pub use rmw::{ArithOp, ArithOptions, Concat, Counter};
pub use vbmap::{VBucketMap, VbGuard};
pub use vbucket::{VBucket, VbHealth};

// The types the API uses, so a consumer needs no other crate.
pub use collections::{Manifest, VbManifest};
pub use kvstore_core::{
    Cas, CollectionId, CompactionConfig, CompactionResult, Datatype, DiskKey, DocMeta, KvStore,
    ScopeId, Seqno, StoreError, VbState, Vbid,
};
pub use kvstore_couchfile::CouchConfig;
#[cfg(feature = "rocks")]
pub use kvstore_rocks::RocksConfig;
