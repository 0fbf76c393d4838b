//! `kvstore-couchfile`: the embedded default backend. One append-only file
//! per vbucket revision, named `<vbid>.couch.<rev>`, holding three
//! copy-on-write B+trees (by key, by seqno, local documents). It needs no C++
//! toolchain.
//!
//! # File format
//!
//! - The file is a run of 4 KiB blocks. The first byte of every block is a
//!   marker: `0x00` for data, `0x01` for a header ([`block`]). Data is
//!   written as a byte stream that skips marker bytes, so client bytes can
//!   never forge a header block.
//! - Everything else is a **chunk**: a 4-byte length, a CRC32C of the
//!   payload, then the payload. Values above
//!   [`CouchConfig::inline_value_max`] get a chunk of their own; smaller ones
//!   live inside the leaves.
//! - **Nodes** ([`node`]) are chunks holding a codec byte (none, snappy,
//!   LZ4), the uncompressed length and the compressed node. Interior entries
//!   carry their subtree's reduction: live count, tombstone count and key +
//!   value bytes, so item counts and fragmentation are read off the root.
//! - The **by-key** tree maps a disk key to the document record (seqno, CAS,
//!   rev seqno, flags, expiry, datatype, deletion, value or value pointer).
//!   The **by-seqno** tree maps a big-endian seqno to the key and the same
//!   record, so a backfill scan needs no second lookup. An update removes
//!   the key's old by-seqno entry in the same commit.
//! - A **header** ([`header`]) starts a block. It holds the three roots, the
//!   high and purge seqnos, the offset of the previous header (the rollback
//!   chain), and the commit's *region*: its first byte and the CRC32C of every
//!   physical byte from there to the header block.
//!
//! # Commit protocol: one sync per commit
//!
//! A commit builds, in memory, every new node of the three trees (each node
//! on the path to any changed key is rewritten once per batch; overflowing
//! nodes split into evenly filled siblings), then the header, and writes all
//! of it with one `pwrite` at the end of the committed part, followed by one
//! `fdatasync`. The commit is acknowledged only after the sync returns.
//!
//! Why one sync is enough. After a crash, the newest header-marked block is
//! examined first:
//! - if its header decodes and its CRC holds **and** the CRC of its region
//!   matches, every byte the commit wrote is on disk. Every node it points at
//!   is either in that region or was written by an earlier commit, which
//!   was synced before this one began. The commit is complete, so it is used
//!   (an unacknowledged but complete commit is allowed: all or nothing);
//! - otherwise the commit is torn: the kernel wrote some of its pages and not
//!   others, in any order. Its header block can only be the file's **last**
//!   block, because nothing is written after a header until the next commit,
//!   which starts only after this one's sync returned. So the previous header
//!   is used instead, and it must be intact, since its commit was synced.
//!
//! Upstream couchstore needs two syncs because it cannot tell a header whose
//! data never reached the disk from a good one; the region CRC is what tells
//! them apart here.
//!
//! Damage that a crash cannot explain is reported, not skipped: a damaged or
//! region-failing header that is not in the last block (later data follows
//! it), a second damaged header, or a newest header whose predecessor does
//! not decode, are typed corruption errors naming the file and offset
//! ([`kvstore_core::CorruptionKind::BadHeaderBeforeValidData`]). A torn
//! tail is cut off when the file is next opened for writing, before anything
//! is appended, so a torn commit never ends up followed by valid data.
//!
//! A failed sync **poisons** the handle: every later call fails with
//! [`kvstore_core::StoreError::Poisoned`] until the revision is opened again
//! (`open` then gives a fresh handle), because after a failed `fsync` the
//! kernel may have dropped the dirty pages (upstream MB-42224), and only a
//! reopen re-reads what really is on disk. A failed write does not poison:
//! nothing of it was published, the file is cut back to the last commit, and
//! the next commit is written there again.
//!
//! # Rollback, compaction, revisions
//!
//! Rollback walks the previous-header chain to the newest header at or below
//! the target seqno and appends a copy of it (one sync). See [`compact`] for
//! compaction, which writes `<vbid>.couch.<rev>.compact` and switches to
//! `<vbid>.couch.<rev+1>`, holding commits back only for the final catch-up.
//! New revisions are always above every revision used for the vbucket, and
//! [`kvstore_core::KvStore::discover`] keeps the newest file of each vbucket,
//! removing older ones and `.compact` / `.tmp` leftovers.
//!
//! # Reading the files
//!
//! The `couchfile` tool (feature `cli`, on by default) prints a file's
//! header, counts, sizes and fragmentation (`couchfile info FILE`) and dumps
//! its trees or headers (`couchfile dump FILE --by-key|--by-seqno|--local|
//! --headers [--json]`).

pub mod block;
pub mod btree;
pub mod cache;
pub mod codec;
pub mod compact;
pub mod file;
pub mod header;
pub mod inspect;
pub mod io;
pub mod node;
pub mod store;

pub use file::CouchFile;
pub use io::{FaultInjector, Io, IoStats};
pub use node::Compression;
pub use store::{CouchConfig, CouchStore, CouchVb};
