//! Opening the RocksDB instance, and what every handle shares.

use crate::codec::{Header, Prefix, prefix_end};
use crate::config::{RocksConfig, SyncFault};
use crate::error::{RocksError, backend, corrupt};
use kvstore_core::{CorruptionKind, StoreError, StoreResult};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
    Range, WriteBatch, WriteBufferManager, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The column families, besides RocksDB's `default` (which holds only the
/// format marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cf {
    /// `prefix ++ disk key` → metadata and value.
    ByKey,
    /// `prefix ++ seqno (u64 BE)` → disk key.
    BySeqno,
    /// `prefix ++ name` → local document value.
    Local,
    /// `prefix ++ commit number (u64 BE)` → undo record.
    Undo,
    /// `prefix` → header; `vbid (u16 BE)` → revision high-water mark.
    Meta,
}

impl Cf {
    /// Every family that holds per-revision keys.
    pub const ALL: [Cf; 5] = [Cf::ByKey, Cf::BySeqno, Cf::Local, Cf::Undo, Cf::Meta];

    /// The family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::ByKey => "bykey",
            Cf::BySeqno => "byseqno",
            Cf::Local => "local",
            Cf::Undo => "undo",
            Cf::Meta => "meta",
        }
    }

    /// Point lookups read this family, so Bloom filters pay off.
    fn point_reads(self) -> bool {
        matches!(self, Cf::ByKey | Cf::Local | Cf::Meta)
    }

    /// This family carries bulk data (full-size memtables).
    fn bulk(self) -> bool {
        matches!(self, Cf::ByKey | Cf::BySeqno | Cf::Undo)
    }
}

/// The handle of one column family.
pub(crate) fn cf(db: &DB, which: Cf) -> StoreResult<&ColumnFamily> {
    db.cf_handle(which.name())
        .ok_or_else(|| RocksError::MissingColumnFamily(which.name()).into())
}

/// The on-disk layout version, kept in the `default` family.
const FORMAT_KEY: &[u8] = b"kvstore-rocks/format";
const FORMAT_VERSION: u32 = 2;

/// What every store handle of one instance shares.
pub(crate) struct Shared {
    pub db: Arc<DB>,
    pub path: PathBuf,
    pub sync: bool,
    pub window: u64,
    pub fault: Option<SyncFault>,
}

impl Shared {
    /// Write options of every durable write.
    pub fn write_opts(&self) -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(self.sync);
        o
    }

    /// The header of a revision, `None` when the revision does not exist.
    pub fn read_header(&self, p: &Prefix) -> StoreResult<Option<Header>> {
        let meta = cf(&self.db, Cf::Meta)?;
        match self.db.get_pinned_cf(meta, p).map_err(backend)? {
            None => Ok(None),
            Some(raw) => Header::decode(&raw)
                .map(Some)
                .map_err(|m| corrupt(&self.path, Cf::Meta.name(), p, m)),
        }
    }

    /// Adds the removal of a whole revision, every family, to `wb`.
    pub fn delete_revision(&self, wb: &mut WriteBatch, p: &Prefix) -> StoreResult<()> {
        let end = prefix_end(p);
        for which in Cf::ALL {
            wb.delete_range_cf(cf(&self.db, which)?, &p[..], &end[..]);
        }
        Ok(())
    }

    /// RocksDB's estimate of the SST bytes holding a revision (memtables
    /// are not counted: the C API the crate wraps cannot include them).
    pub fn disk_bytes(&self, p: &Prefix) -> StoreResult<u64> {
        let end = prefix_end(p);
        let mut total = 0u64;
        for which in Cf::ALL {
            let sizes = self
                .db
                .get_approximate_sizes_cf(cf(&self.db, which)?, &[Range::new(p, &end)]);
            total = total.saturating_add(sizes.iter().sum::<u64>());
        }
        Ok(total)
    }
}

/// Share of a `bykey` memtable spent on its Bloom filter (about 30 bits
/// per key for 200-byte documents).
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// The options of one column family.
fn cf_options(config: &RocksConfig, cache: &Cache, which: Cf) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    if which.point_reads() && config.bloom_bits_per_key > 0.0 {
        // `false`: a full (not the removed block-based) filter.
        table.set_bloom_filter(config.bloom_bits_per_key, false);
    }
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    if config.compression {
        o.set_compression_type(DBCompressionType::Lz4);
        o.set_bottommost_compression_type(DBCompressionType::Zstd);
    } else {
        o.set_compression_type(DBCompressionType::None);
        o.set_bottommost_compression_type(DBCompressionType::None);
    }
    let buffer = if which.bulk() {
        config.write_buffer_bytes
    } else {
        (config.write_buffer_bytes / 4).max(1 << 20)
    };
    o.set_write_buffer_size(buffer);
    if which == Cf::ByKey && config.bloom_bits_per_key > 0.0 {
        // A whole-key Bloom filter in the memtable too: every commit first
        // looks up the current version of each key it writes, and for new
        // keys that lookup otherwise walks the memtable skip list.
        o.set_memtable_whole_key_filtering(true);
        o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
    }
    o.set_level_compaction_dynamic_level_bytes(true);
    o
}

/// The RocksDB options this backend runs with, for opening RocksDB
/// directly on identical settings (the bench's raw-RocksDB peer does, so
/// the two are compared like for like).
///
/// Every `Options` returned shares one block cache and one write-buffer
/// budget, sized from the [`RocksConfig`]; each keeps them alive for as
/// long as it is in use.
///
/// ```
/// let tuning = kvstore_rocks::Tuning::new(&kvstore_rocks::RocksConfig::default());
/// let dir = tempfile::tempdir().unwrap();
/// let db = rocksdb::DB::open_cf_descriptors(
///     &tuning.db_options(),
///     dir.path(),
///     vec![
///         rocksdb::ColumnFamilyDescriptor::new("docs", tuning.by_key_options()),
///         rocksdb::ColumnFamilyDescriptor::new("seqnos", tuning.by_seqno_options()),
///     ],
/// )
/// .unwrap();
/// db.put_cf(db.cf_handle("docs").unwrap(), b"k", b"v").unwrap();
/// ```
pub struct Tuning {
    config: RocksConfig,
    cache: Cache,
    buffers: WriteBufferManager,
}

impl Tuning {
    /// A block cache and a write-buffer budget sized from `config`.
    #[must_use]
    pub fn new(config: &RocksConfig) -> Self {
        Tuning {
            config: config.clone(),
            cache: Cache::new_lru_cache(config.block_cache_bytes),
            buffers: WriteBufferManager::new_write_buffer_manager(
                config.write_buffer_budget_bytes,
                false,
            ),
        }
    }

    /// Database-wide options: create if missing, the shared write-buffer
    /// budget, background jobs, and write-ahead-log bounds.
    #[must_use]
    pub fn db_options(&self) -> Options {
        let config = &self.config;
        let mut db = Options::default();
        db.create_if_missing(true);
        db.create_missing_column_families(true);
        db.set_write_buffer_manager(&self.buffers);
        db.set_max_background_jobs(config.max_background_jobs);
        // Every commit writes several families, most of them small (a
        // header, a by-seqno record, an undo record per commit), and a log
        // file can only go once every family with data in it has flushed.
        // Flushing all families together whenever one flushes keeps the log
        // as short as one memtable's worth, as with a single family; the
        // total bound stays as a backstop.
        db.set_atomic_flush(true);
        db.set_max_total_wal_size((config.write_buffer_budget_bytes as u64).saturating_mul(2));
        db.set_bytes_per_sync(1 << 20);
        db.set_keep_log_file_num(4);
        db.set_max_log_file_size(8 << 20);
        db
    }

    /// The options of the family that holds documents by key (`bykey`):
    /// Bloom filters on disk and in the memtable, full-size memtables.
    #[must_use]
    pub fn by_key_options(&self) -> Options {
        cf_options(&self.config, &self.cache, Cf::ByKey)
    }

    /// The options of the family that indexes documents by seqno
    /// (`byseqno`): scanned only, so no Bloom filter; full-size memtables.
    #[must_use]
    pub fn by_seqno_options(&self) -> Options {
        cf_options(&self.config, &self.cache, Cf::BySeqno)
    }

    /// The options and names of every family of this backend's layout.
    fn descriptors(&self) -> Vec<ColumnFamilyDescriptor> {
        let mut cfs = vec![ColumnFamilyDescriptor::new(
            rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
            {
                let mut o = cf_options(&self.config, &self.cache, Cf::Meta);
                o.set_write_buffer_size(1 << 20);
                o
            },
        )];
        for which in Cf::ALL {
            cfs.push(ColumnFamilyDescriptor::new(
                which.name(),
                cf_options(&self.config, &self.cache, which),
            ));
        }
        cfs
    }
}

impl std::fmt::Debug for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tuning")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Opens (creating if needed) the database under `path`.
pub(crate) fn open(path: &Path, config: &RocksConfig) -> StoreResult<DB> {
    std::fs::create_dir_all(path).map_err(|e| StoreError::io("create directory", path, e))?;
    let tuning = Tuning::new(config);
    let (opts, cfs) = (tuning.db_options(), tuning.descriptors());
    if path.join("CURRENT").exists() {
        let existing = DB::list_cf(&opts, path).map_err(backend)?;
        let unknown: Vec<String> = existing
            .into_iter()
            .filter(|n| {
                n != rocksdb::DEFAULT_COLUMN_FAMILY_NAME && !Cf::ALL.iter().any(|c| c.name() == n)
            })
            .collect();
        if !unknown.is_empty() {
            return Err(RocksError::UnknownColumnFamilies(unknown).into());
        }
    }
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(backend)?;
    match db.get_pinned(FORMAT_KEY).map_err(backend)? {
        Some(raw) => {
            let version = <[u8; 4]>::try_from(&raw[..]).map(u32::from_le_bytes);
            match version {
                Ok(FORMAT_VERSION) => {}
                Ok(v) => {
                    return Err(StoreError::corrupt(
                        path,
                        0,
                        CorruptionKind::UnknownVersion(v),
                    ));
                }
                Err(_) => {
                    return Err(StoreError::corrupt(
                        path,
                        0,
                        CorruptionKind::Malformed {
                            what: "format marker",
                            detail: format!("{} bytes, expected 4", raw.len()),
                        },
                    ));
                }
            }
        }
        None => {
            let mut o = WriteOptions::default();
            o.set_sync(true);
            db.put_opt(FORMAT_KEY, FORMAT_VERSION.to_le_bytes(), &o)
                .map_err(backend)?;
        }
    }
    Ok(db)
}
