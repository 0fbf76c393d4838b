//! `kvstore-couchfile`: the embedded default backend. It needs no C++
//! toolchain.
//!
//! # Why this shape
//!
//! The first version of this crate was couchstore's shape: copy-on-write
//! B-trees in one append-only file, where every commit rewrote the
//! leaf-to-root path of every key it touched, in two trees, and garbage
//! stayed until a full compaction. With random keys that wrote and stored
//! an order of magnitude more than the LSM peers. Couchbase replaced
//! couchstore with Magma for the same reason (Lakshman et al., VLDB 2022):
//! a write-ahead log that also holds the documents (key-value separation,
//! as WiscKey), an index updated in large batches, and incremental garbage
//! collection of the log. This crate now has that shape:
//!
//! - **a commit is one append to a log and one `fdatasync`**; the log keeps
//!   the documents for good (their values are never rewritten into a tree);
//! - the commit's changes go to a **memtable**; a **checkpoint** folds many
//!   commits into the **index** (the by-key, by-seqno and local trees, whose
//!   leaves point at documents in the log) in one pass, so a leaf is
//!   rewritten once per checkpoint, not once per commit;
//! - **space is reclaimed automatically and incrementally**, one log segment
//!   at a time, by copying a sparse segment's live documents forward; the
//!   index is rewritten densely when it has grown to twice its dense size.
//!
//! # Files
//!
//! Each vbucket revision is a directory `<vbid>.couch.<rev>` holding:
//!
//! - `wal.<n>`: log segments, up to [`CouchConfig::segment_bytes`] each (see
//!   [`wal`] for the block, record and item formats);
//! - `index.<n>`: the index file (see below); normally one, two briefly
//!   while a dense rewrite replaces the old one.
//!
//! The data directory also holds a `LOCK` file, locked by the one store
//! instance using the directory.
//!
//! Creating a revision writes a `.tmp` directory, syncs it and renames it,
//! so after a crash a revision exists whole or not at all. Marking one
//! deleted renames it to `.deleted`; startup ([`kvstore_core::KvStore::discover`])
//! removes those, `.tmp` leftovers and older revisions.
//!
//! # The index file
//!
//! A run of 4 KiB blocks whose first byte is a marker (`0x00` data, `0x01`
//! header), with CRC32C-checked chunks written as a stream that skips the
//! markers, so no client byte can forge a header ([`block`]). Nodes
//! ([`node`]) are LZ4-compressed chunks. The by-key tree maps a disk key to
//! an index record: seqno, deletion state, expiry, key+value size and the
//! document's place in the log. The by-seqno tree maps a seqno to the
//! deletion state, size and place. The local tree holds local documents.
//! Interior entries carry their subtree's live count, tombstone count and
//! bytes, so counts and sizes are O(1). A child always lies before its
//! parent in the file and trees are at most [`btree::MAX_DEPTH`] deep; a
//! node that breaks either rule is reported as corruption, so a damaged
//! file can never make a reader loop or recurse without end.
//!
//! A checkpoint appends the changed nodes, the segment table (every log
//! segment's bytes and live bytes) and a header ([`header`]) with one
//! `pwrite` and one `fdatasync`. The header stamps the CRC32C of every byte
//! the checkpoint wrote (its *region*): on open, the newest header whose
//! region checks is used, and a torn last checkpoint falls back to the one
//! before it. The header also says where in the log replay starts.
//!
//! # Commit, durability and recovery
//!
//! [`kvstore_core::VbStore::commit`] validates the batch, looks up each
//! key's current version (for exact counts and the by-seqno entry it
//! replaces), encodes the documents (values Snappy-compressed when that pays)
//! into one record, appends it at the end of the newest segment and syncs.
//! **When `commit` returns, the batch is durable**; only then does it
//! enter the memtable and become visible. Small records are followed by
//! zero-filled space (a quarter of the file, 64 KiB to 4 MiB) in the same write, so most syncs do
//! not change the file's size and flush data blocks only.
//!
//! Opening a revision reads the newest valid index header and replays every
//! log record after its replay position into the memtable. The log ends at
//! the first block that does not start a valid record: an empty block, or a
//! damaged record with nothing valid after it (a torn final commit, which
//! the next write overwrites). A damaged or missing record *followed by* a
//! valid one cannot come from a crash and is reported as corruption naming
//! the file and offset.
//!
//! # Faults
//!
//! A failed write acknowledges nothing and leaves the store usable: the
//! garbage it may have left after the last durable record is zeroed by the
//! next write. A failed sync *poisons* the log writer, because the kernel
//! may have dropped the dirty pages and cleared the error (upstream
//! MB-42224): the commit is refused, and before anything else is written the
//! writer reopens the file and overwrites the failed region with zeros,
//! synced, so the refused commit can never reappear. Reads carry on
//! throughout: they only see acknowledged commits. No caller has to reopen
//! the store.
//!
//! # Space reclamation (on by default)
//!
//! See [`maint`]. Thresholds: a closed segment entirely behind the replay
//! position is reclaimed when less than [`CouchConfig::reclaim_live_ratio`]
//! (default 0.5) of its bytes are live and at least
//! [`CouchConfig::reclaim_min_garbage`] (default 256 KiB) are garbage (the
//! fragmentation threshold). While more than
//! [`CouchConfig::reclaim_garbage_ratio`] (default 0.2) of the whole log is
//! garbage, the closed segment with the least live share is reclaimed
//! whatever its share (the size threshold). The index is rewritten
//! densely when a checkpoint would leave it over
//! [`CouchConfig::index_rewrite_ratio`] (default 2) times its dense size, or
//! changes more than a quarter of its entries. Reclamation copies documents
//! in relocation records of 256 KiB, each holding the writer for one append,
//! so a commit waits at most for one of them. Explicit
//! [`kvstore_core::VbStore::compact`] also purges tombstones and dropped
//! collections per its config, rewrites the index and reclaims every closed
//! segment with garbage.
//!
//! # Resources
//!
//! Memory is bounded by [`CouchConfig::cache_bytes`] (index nodes),
//! [`CouchConfig::block_cache_bytes`] (log blocks) and
//! [`CouchConfig::memtable_budget`] (all memtables; past twice the budget,
//! commits wait for checkpoints). Open files are bounded by
//! [`CouchConfig::max_open_files`] through a descriptor cache ([`fdcache`]),
//! so 1,024 vbuckets run under `ulimit -n 1024`.
//!
//! # Rollback
//!
//! A rollback to seqno `s` takes the newest index header at or below `s`
//! whose log is still all there (normally the current or the previous
//! checkpoint), replays the log from its replay position up to the last
//! commit at or below `s`, and writes the result as a new checkpoint. The
//! exact window is therefore every commit since the previous checkpoint;
//! before that, or after a dense rewrite of the index, it rolls back to zero,
//! as the contract allows.
//!
//! # Reading the files
//!
//! The `couchfile` tool (feature `cli`, on by default) prints a revision's
//! header, counts, sizes, segments and fragmentation (`couchfile info DIR`)
//! and dumps its trees, headers, segments or log records (`couchfile dump
//! DIR --by-key|--by-seqno|--local|--headers|--segments|--log [--json]`).

pub mod block;
pub mod btree;
pub mod cache;
pub mod codec;
pub mod fdcache;
pub mod file;
pub mod header;
pub mod inspect;
pub mod io;
pub mod maint;
pub mod memtable;
pub mod node;
pub mod store;
pub mod wal;

pub use file::CouchFile;
pub use io::{FaultInjector, Io, IoStats};
pub use node::Compression;
pub use store::{CouchConfig, CouchStore, CouchVb};
