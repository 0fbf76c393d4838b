//! Collections: scopes and collections declared by a JSON manifest.
//!
//! - [`manifest`]: parsing and validation of the upstream JSON format, and
//!   the successor rule;
//! - [`persist`]: the bucket manifest on disk (atomic replace, CRC32C);
//! - [`machine`]: the update state machine that lets one update be in
//!   flight, answers `Busy` only to other cookies, and never leaves stale
//!   state behind after a failure or a disconnect (upstream MB-43708);
//! - [`vbmanifest`]: each vbucket's collections, the system events an update
//!   emits, and the local documents that persist them.
//!
//! ```
//! use collections::Manifest;
//!
//! let m = Manifest::from_json(br#"{"uid":"1","scopes":[{"name":"_default","uid":"0",
//!     "collections":[{"name":"_default","uid":"0"},{"name":"orders","uid":"8","maxTTL":60}]}]}"#)
//!     .unwrap();
//! assert_eq!(m.collection_by_path("_default.orders").unwrap().max_ttl, Some(60));
//! assert!(Manifest::epoch().check_successor(&m).is_ok());
//! assert!(m.check_successor(&Manifest::epoch()).is_err(), "the uid may not go back");
//! ```

pub mod machine;
pub mod manifest;
pub mod persist;
pub(crate) mod sync;
pub mod vbmanifest;

pub use machine::{Cookie, Finished, Start, UpdateMachine};
pub use manifest::{Collection, Manifest, ManifestError, Scope, SuccessorError};
pub use persist::PersistError;
pub use vbmanifest::{Applied, CollectionStats, Dropped, VbManifest, VbManifestError, Visibility};
