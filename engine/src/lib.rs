//! The vbucket engine: what the persistence layer of a Couchbase-style data
//! service does, over any [`kvstore_core::KvStore`] backend.
//!
//! - [`VBucketMap`] holds one slot per vbucket. [`VBucketMap::get`] returns
//!   a [`VbGuard`]: while it lives, the vbucket incarnation and its store
//!   stay usable. Any thread may delete a vbucket at any moment
//!   ([`VBucketMap::delete`]); the call returns at once, and the
//!   incarnation's files are destroyed exactly once, by the [`Deleter`],
//!   after the last guard drops (upstream MB-33463). The vbucket can be
//!   created again at once, as a new revision. `tests/loom.rs` checks these
//!   rules with loom on this code.
//! - [`Engine`] serves document operations, assigns seqnos and CAS per
//!   vbucket, queues dirty items (one per key) for the flusher, warms up from
//!   disk, and keeps blocked calls under cookies ([`CookieTable`], the
//!   would-block protocol).
//!
//! ```
//! use engine::{Engine, EngineConfig, EngineError, NoNotify, WriteOptions};
//! use kvstore_core::{CollectionId, DiskKey, VbState, Vbid};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(NoNotify))?;
//! engine.create_vbucket(Vbid(0), VbState::Active)?;
//! let key = DiskKey::new(CollectionId::DEFAULT, b"greeting")?;
//! engine.set(1, Vbid(0), &key, "hello", WriteOptions::default())?;
//! assert_eq!(&engine.get(Vbid(0), &key)?.value[..], b"hello");
//! assert!(matches!(engine.get(Vbid(1), &key), Err(EngineError::NotMyVbucket(_))));
//! engine.shutdown()?;
//!
//! // Warmup finds the vbucket and the document again.
//! let engine = Engine::open(EngineConfig::new(dir.path()), Arc::new(NoNotify))?;
//! assert_eq!(&engine.get(Vbid(0), &key)?.value[..], b"hello");
//! # Ok(())
//! # }
//! ```

pub mod config;
pub mod cookie;
pub mod deleter;
pub mod engine;
pub mod error;
pub(crate) mod flusher;
pub(crate) mod sync;
pub mod vbmap;
pub mod vbucket;

pub use config::{Backend, Clock, EngineConfig, SystemClock};
pub use cookie::{CookieId, CookieTable, MutationResult, NoNotify, Notifier, Outcome, Waiting};
pub use deleter::{Deleter, Destroyed};
pub use engine::{CollectionInfo, Engine, EngineStats, Item, StoreMode, VbStats, WriteOptions};
pub use error::{EngineError, EngineResult};
pub use vbmap::{VBucketMap, VbGuard};
pub use vbucket::VBucket;
