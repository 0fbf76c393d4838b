//! Tuning of the RocksDB instance, and the test hook that fails a sync.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One mebibyte.
const MIB: usize = 1 << 20;

/// Settings of one [`crate::RocksStore`]. Every field has a documented
/// default (see [`RocksConfig::default`]); the defaults suit a data service
/// with up to a few hundred active vbuckets on a small machine.
#[derive(Debug, Clone)]
pub struct RocksConfig {
    /// Capacity of the LRU block cache shared by every column family.
    /// Default 64 MiB.
    pub block_cache_bytes: usize,
    /// Bits per key of the Bloom filters on the column families read by
    /// point lookups (`bykey`, `local`, `meta`); 0 disables them. The
    /// scan-only families (`byseqno`, `undo`) never get filters. When
    /// non-zero, `bykey` memtables get a whole-key filter too. Default 10
    /// (about 1% false positives).
    pub bloom_bits_per_key: f64,
    /// Memory budget of all memtables together, enforced by one
    /// `WriteBufferManager`. Default 64 MiB.
    pub write_buffer_budget_bytes: usize,
    /// Size of one memtable of a data family (`bykey`, `byseqno`, `undo`);
    /// the small families use a quarter of it. Default 16 MiB.
    pub write_buffer_bytes: usize,
    /// Flushes and compactions RocksDB may run at once. Default 2.
    pub max_background_jobs: i32,
    /// Compress SST files: lz4 on the upper levels, zstd on the bottommost
    /// level. Default true.
    pub compression: bool,
    /// Sync the write-ahead log on every commit, so a commit that returned
    /// `Ok` survives a power loss. When false a commit survives a process
    /// crash but not a machine crash. Default true.
    pub sync: bool,
    /// How many of the most recent commits of a vbucket a rollback restores
    /// exactly. Each commit keeps an undo record (the previous versions of
    /// the documents it overwrote); older records are trimmed, and a
    /// rollback past the window empties the revision (rolls back to zero).
    /// 0 keeps no history. Default 64.
    pub rollback_window: usize,
    /// Test hook: when set and armed, the next commit (or rollback or
    /// compaction write) reports a failed sync and poisons its handle.
    pub sync_fault: Option<SyncFault>,
}

impl Default for RocksConfig {
    fn default() -> Self {
        RocksConfig {
            block_cache_bytes: 64 * MIB,
            bloom_bits_per_key: 10.0,
            write_buffer_budget_bytes: 64 * MIB,
            write_buffer_bytes: 16 * MIB,
            max_background_jobs: 2,
            compression: true,
            sync: true,
            rollback_window: 64,
            sync_fault: None,
        }
    }
}

/// A shared flag that makes the next durable write of a store report a sync
/// failure, for testing the poisoning path (DESIGN §4.7). RocksDB offers no
/// way to make its own fsync fail from Rust, so the failure is injected
/// after the write batch has been handed to RocksDB: the data may therefore
/// be on disk, which is exactly the ambiguity a real failed fsync leaves.
#[derive(Debug, Clone, Default)]
pub struct SyncFault(Arc<AtomicBool>);

impl SyncFault {
    /// A flag that is not armed.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the next durable write fail.
    pub fn arm(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// True while armed.
    #[must_use]
    pub fn is_armed(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Disarms the flag; true when it was armed.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}
