//! A RocksDB backend of the [`kvstore_core`] storage contract (DESIGN §4).
//!
//! [`RocksStore`] implements [`kvstore_core::KvStore`]; the handles it hands
//! out implement [`kvstore_core::VbStore`]. Everything goes through the
//! `rocksdb` crate; this crate has no hand-written `unsafe` code (the
//! workspace denies it), see *Snapshots* for the one self-reference.
//!
//! # Layout
//!
//! One RocksDB instance holds every vbucket of a data directory. Column
//! families are per *kind of record*, never per vbucket:
//!
//! | family    | key                                  | value                              |
//! |-----------|--------------------------------------|------------------------------------|
//! | `bykey`   | prefix ++ disk key                   | format, metadata, value bytes      |
//! | `byseqno` | prefix ++ highest seqno held (u64 BE)| by-seqno record: seqnos, disk keys |
//! | `local`   | prefix ++ local document name        | local document bytes               |
//! | `undo`    | prefix ++ commit number (u64 BE)     | undo record of that commit         |
//! | `meta`    | prefix                               | header of the revision             |
//! | `meta`    | prefix ++ `d`                        | deletion mark (empty)              |
//! | `meta`    | vbid (u16 BE)                        | revision high-water mark           |
//! | `default` | `kvstore-rocks/format`               | layout version (2)                 |
//!
//! The prefix is the vbid (u16 big-endian) followed by the revision (u64
//! big-endian), so each `(vbid, revision)` is one contiguous key range in
//! every family, and big-endian numbers make byte order numeric order.
//!
//! Why not a column family per vbucket: 1024 vbuckets times several families
//! would mean thousands of memtables, thousands of sets of SST files, a
//! write-ahead log that cannot be recycled until the least busy family
//! flushes, and per-family open cost at startup. With a fixed set of
//! families, memtable memory, flushes and compactions are shared, while the
//! key prefix still gives each revision a range that can be scanned,
//! measured (`get_approximate_sizes`), compacted (`compact_range`) and
//! dropped (`delete_range`) on its own. Separate families per record kind
//! let each get its own tuning: Bloom filters where point lookups happen,
//! none where the family is only scanned.
//!
//! # Commit
//!
//! A commit is validated by [`kvstore_core::batch::prepare_with_priors`]
//! (exactly as `MemStore` does), then becomes **one** `WriteBatch` written
//! with `WriteOptions::set_sync(config.sync)`, and nothing is read before
//! it when the caller passes the *prior* of every item
//! ([`kvstore_core::VbStore::commit_with_priors`], [`kvstore_core::Prior`]):
//! the version the store held before, or `Absent`. The batch holds
//! - one `bykey` put per item, the whole document (a blind put);
//! - one `byseqno` record per commit (per 1,024 items): the seqno, tombstone
//!   flag and disk key of every item, in seqno order, under the highest of
//!   those seqnos;
//! - the local documents (the vbucket state is the local document
//!   `_local/vbstate`);
//! - the undo record (see *Rollback window*) and the trim of the record
//!   that left the window;
//! - the revision's header (high seqno, purge seqno, live and deleted
//!   counts, data bytes, history bounds), which makes
//!   [`kvstore_core::VbStore::info`] O(1).
//!
//! The counts stay exact without a lookup: each item's prior says whether
//! it replaces a live document, a tombstone or nothing, and how many bytes
//! go. Only the items whose prior is `Unknown` (all of them, through plain
//! [`kvstore_core::VbStore::commit`]) are read, in one multi-get, for the
//! counts and the undo record. Local documents are cached by the writer
//! after their first read, so their undo entries need no read either.
//!
//! An overwrite does not delete the old version's by-seqno entry: the entry
//! stays in its record, stale, and every scan skips it (see *Snapshots and
//! scans*), so the index still yields exactly one entry per key. Stale
//! entries are dropped by [`kvstore_core::VbStore::compact`], which rewrites
//! the records that hold them.
//!
//! RocksDB applies a batch atomically and recovers it from its write-ahead
//! log, so a crash leaves all of a commit or none of it; with `sync` (the
//! default), a commit that returned `Ok` has its log record synced to disk.
//! Writers of one revision serialise on a mutex; readers never take it.
//!
//! Any failed write poisons the handle: later calls return
//! [`kvstore_core::StoreError::Poisoned`] until the store is reopened.
//! [`RocksConfig::sync_fault`] injects such a failure in tests.
//!
//! # Snapshots and scans
//!
//! A by-seqno scan takes a RocksDB snapshot when it is created and reads
//! the `byseqno` records and the documents under it, so later commits,
//! compactions, rollbacks and even a destroy of the revision are invisible
//! to it. It reads the records in order, from the first one whose key (its
//! highest seqno) is at or above the start, and looks the documents of
//! their entries up in `bykey` 128 at a time with one multi-get. An entry
//! whose document in the snapshot has a newer seqno (the key was
//! overwritten) or is missing (purged) is stale and skipped; a tombstone
//! entry is skipped without a lookup when tombstones are not wanted. Each
//! key therefore appears once, at its newest version in the snapshot.
//!
//! The scan must be `'static`, but `rocksdb::Snapshot` borrows the
//! database, so the scan keeps an `Arc<DB>` and the snapshot together in a
//! `self_cell` (a small, dependency-free, widely used crate whose whole job
//! is this kind of self-reference; its macro checks at compile time that the
//! snapshot type is covariant, and its own audited `unsafe` stays inside
//! the macro). The alternative, extending the snapshot's lifetime to
//! `'static` by hand, would need a transmute in an `unsafe` module plus a
//! drop order that every later edit must preserve; `self_cell` enforces
//! that order (dependent first, then owner) itself. A parked scan keeps
//! the database open and its snapshot pinned, so long-parked scans hold
//! back space reclamation, as in any MVCC store, and a directory cannot be
//! reopened until every scan of the previous instance is dropped.
//!
//! # Revisions
//!
//! `create` allocates a revision one above the vbucket's high-water mark
//! (kept in `meta` and written in the same batch as the new header, so it
//! survives restarts and destroys) and above any header still present.
//! `destroy` range-deletes the revision's range in every family in one
//! batch, while holding the open handle's writer lock, then marks the
//! handle deleted. Scans already pinned keep their snapshot.
//! `mark_deleted` durably writes a deletion mark inside the revision's range
//! and changes nothing else, so handles and scans carry on. `discover`
//! range-deletes every marked revision, keeps the newest remaining revision
//! of each vbucket and range-deletes the older ones.
//! Opening a revision that is already open returns the same handle (a
//! registry of weak references).
//!
//! # Compaction
//!
//! [`kvstore_core::VbStore::compact`] does not use a compaction filter:
//! RocksDB runs filters without regard to snapshots, so a filter could pull
//! a purged tombstone, or a stale by-seqno entry that an older pinned scan
//! still needs, out from under that scan; and a filter would need the
//! revision's high seqno and every key's current version inside RocksDB's
//! threads. Instead it
//! 1. flushes the memtables and measures the revision's ranges;
//! 2. scans the revision's `bykey` range under a snapshot, without locks,
//!    collecting tombstones to purge (`CompactionConfig::purges_tombstone`,
//!    which never purges the high seqno), items of dropped collection
//!    generations (`CompactionConfig::is_dropped`) and the seqnos of every
//!    other document; then reads the `byseqno` records under the same
//!    snapshot and plans to rewrite each one that holds an entry whose seqno
//!    is no document's (stale), without those entries, or to delete it
//!    when nothing is left. It checks the cancel token as it goes (a
//!    cancelled compaction returns [`kvstore_core::StoreError::Cancelled`]
//!    having changed nothing);
//! 3. under the writer lock, re-reads each candidate and deletes it only if
//!    its current version is still the one found and still qualifies, so a
//!    commit made meanwhile is never lost; writes the planned records
//!    unless a rollback ran since the snapshot (a rollback can make an
//!    overwritten version current again; its entries then wait for the next
//!    compaction); raises the purge seqno to the highest purged tombstone;
//!    and drops the rollback history, all in one batch. Entries a commit
//!    made stale meanwhile are left for the next compaction, and scans skip
//!    them until then;
//! 4. runs `compact_range` over the revision's ranges to reclaim the space,
//!    and measures again.
//!
//! # Rollback window
//!
//! Each commit writes an undo record in the same batch: the header from
//! before it, the previous value of every local document it touched, and
//! the previous version of every document it *overwrote*, taken from the
//! item's prior (or read, for an `Unknown` prior). Documents it created
//! need nothing: a rollback finds them in the by-seqno records above its
//! target. That is all a rollback needs, and it cannot need less: an
//! overwritten version exists nowhere else once RocksDB has compacted it
//! away. Records beyond [`RocksConfig::rollback_window`] commits (default 64)
//! are trimmed in the same batch.
//!
//! A rollback within the window walks the undo records back to the newest
//! commit at or below the requested seqno, puts back every version they
//! hold, deletes the documents the undone commits created, range-deletes
//! the undone commits' by-seqno records, and writes the header of the
//! target commit, in one batch. The restored versions' by-seqno entries are
//! still in their records (only a compaction removes stale entries, and a
//! compaction also drops the history), so they are current again. Beyond
//! the window, or after a compaction (which drops the history, as the
//! contract allows), it rolls back to zero and empties the revision. It
//! always reports every key it changed.
//!
//! # Tuning defaults
//!
//! See [`RocksConfig`]: a 64 MiB LRU block cache shared by all families;
//! 10-bit Bloom filters on the point-read families (`bykey`, `local`,
//! `meta`) and none on the scanned ones (`byseqno`, `undo`), plus a
//! whole-key memtable filter on `bykey` so a read of a key that is not in
//! the memtable (a commit's lookup for an `Unknown` prior, a get of a new
//! key) skips the skip list; lz4 on upper
//! levels and zstd on the bottommost; one 64 MiB `WriteBufferManager`
//! budget for every memtable (16 MiB memtables for the bulk families);
//! 2 background jobs; a sync on every commit; level compaction with dynamic
//! level sizes. Snappy, zlib and bzip2 are not compiled in, and statistics
//! are off.
#![deny(missing_docs)]

mod codec;
mod config;
mod db;
mod error;
mod scan;
mod store;
mod vb;

pub use config::{RocksConfig, SyncFault};
pub use db::Tuning;
pub use error::{BACKEND, RocksError};
pub use store::RocksStore;
