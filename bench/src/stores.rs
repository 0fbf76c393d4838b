//! The stores under test, behind one small trait.
//!
//! Our backends run through the `KvStore` contract, one `VbStore` per
//! vbucket. Each commit passes the prior of every item
//! (`VbStore::commit_with_priors`): the version the store held before, as
//! the engine knows it from the read it makes before every write. Here a
//! map of the documents committed through this handle stands in for the
//! engine's knowledge (its memory counts in the process's peak RSS); keys it
//! does not know, in a store that already held data when opened, go as
//! `Prior::Unknown`.
//!
//! Raw RocksDB does what a user who picked RocksDB instead would do: blind
//! puts of key → (seqno, tombstone flag, value) into one column family, one
//! atomic batch per commit, with the options kvstore-rocks runs with. It
//! keeps no by-seqno index, so its seqno scan reads every document under a
//! snapshot and sorts them by seqno.
//!
//! redb and fjall keep what a vbucket store must keep: a by-key index
//! (key → seqno, flags, value) and a by-seqno index (seqno → key), written
//! in one atomic batch per commit, with the old seqno entry removed when a
//! key is overwritten (which needs a read of the old version) and deletes
//! kept as tombstones.
//!
//! Vbuckets are a 2-byte key prefix in the peers' single database.

use kvstore_core::{
    CollectionId, CommitBatch, CompactionConfig, DiskKey, Document, KeyRange, KvStore, Prior,
    ScanControl, ScanOptions, Seqno, VbStore, Vbid,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A store error, as text (the bench reports it and stops).
pub type Result<T> = std::result::Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> String {
    move |e| format!("{what}: {e}")
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub struct Item {
    /// The key.
    pub key: Vec<u8>,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// The seqno the driver assigned.
    pub seqno: u64,
    /// A delete (a tombstone).
    pub deleted: bool,
}

/// Which store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// kvstore-couchfile through the trait.
    Couchfile,
    /// kvstore-rocks through the trait.
    RocksBackend,
    /// rocksdb calls, same settings as kvstore-rocks.
    RawRocks,
    /// redb.
    Redb,
    /// fjall.
    Fjall,
}

impl Kind {
    /// Every store.
    pub const ALL: [Kind; 5] = [
        Kind::Couchfile,
        Kind::RocksBackend,
        Kind::RawRocks,
        Kind::Redb,
        Kind::Fjall,
    ];

    /// Its name in reports and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Kind::Couchfile => "couchfile",
            Kind::RocksBackend => "kvstore-rocks",
            Kind::RawRocks => "rocksdb",
            Kind::Redb => "redb",
            Kind::Fjall => "fjall",
        }
    }

    /// Parses a name.
    #[must_use]
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// True for the stores a user would pick instead of ours.
    #[must_use]
    pub fn is_peer(self) -> bool {
        matches!(self, Kind::RawRocks | Kind::Redb | Kind::Fjall)
    }
}

/// Sees one document of a by-seqno scan: seqno, key, value.
pub type SeqnoVisitor<'a> = dyn FnMut(u64, &[u8], &[u8]) + 'a;

/// What the workloads need of a store.
pub trait BenchStore {
    /// Commits one batch to vbucket `vb`, synced or not.
    fn write(&mut self, vb: u16, items: &[Item]) -> Result<()>;
    /// Reads one key; `None` when absent or deleted.
    fn get(&mut self, vb: u16, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visits live documents of `vb` in key order; returns how many.
    fn scan_keys(&mut self, vb: u16, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64>;
    /// Visits documents of `vb` (tombstones too, with empty values) in
    /// seqno order from `from`, with their values, as a replication
    /// backfill needs them; returns how many.
    fn scan_seqnos(&mut self, vb: u16, from: u64, f: &mut SeqnoVisitor<'_>) -> Result<u64>;
    /// A full compaction (tombstones purged where the store can).
    fn compact(&mut self) -> Result<()>;
    /// Bytes the store takes on disk.
    fn disk_bytes(&self) -> Result<u64>;
    /// Where the store says how its background space reclamation stands,
    /// so the driver can tell which commits overlapped it; `None` for
    /// stores that do not say.
    fn reclaim_activity(&self) -> Option<ReclaimActivity> {
        None
    }
}

/// A store's background space reclamation at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimActivity {
    /// Reclamation passes started so far.
    pub started: u64,
    /// True while one runs.
    pub running: bool,
}

impl ReclaimActivity {
    /// True when reclamation ran at some point between `self` (taken
    /// before) and `after`.
    #[must_use]
    pub fn overlaps(&self, after: &ReclaimActivity) -> bool {
        self.running || after.running || after.started != self.started
    }
}

/// Opens `kind` on `dir` (existing data is kept), syncing each commit when
/// `sync`.
pub fn open(kind: Kind, dir: &Path, sync: bool, vbuckets: u16) -> Result<Box<dyn BenchStore>> {
    std::fs::create_dir_all(dir).map_err(err("create directory"))?;
    Ok(match kind {
        Kind::Couchfile => {
            let cfg = kvstore_couchfile::CouchConfig {
                sync,
                ..Default::default()
            };
            let kv = kvstore_couchfile::CouchStore::open(dir, cfg).map_err(err("couchfile"))?;
            Box::new(OurStore::open(Arc::new(kv), dir, vbuckets)?)
        }
        Kind::RocksBackend => {
            let cfg = kvstore_rocks::RocksConfig {
                sync,
                ..Default::default()
            };
            let kv = kvstore_rocks::RocksStore::open(dir, cfg).map_err(err("kvstore-rocks"))?;
            Box::new(OurStore::open(Arc::new(kv), dir, vbuckets)?)
        }
        Kind::RawRocks => Box::new(RawRocks::open(dir, sync)?),
        Kind::Redb => Box::new(Redb::open(dir, sync)?),
        Kind::Fjall => Box::new(Fjall::open(dir, sync)?),
    })
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(err("list directory"))? {
            let e = e.map_err(err("list directory"))?;
            let m = e.metadata().map_err(err("stat"))?;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    Ok(total)
}

/// One of our backends: one vbucket store per vbucket.
struct OurStore {
    _kv: Arc<dyn KvStore>,
    dir: PathBuf,
    vbs: HashMap<u16, Arc<dyn VbStore>>,
    /// The newest version committed through this handle, per vbucket and
    /// key: the priors of later commits (see the module docs).
    known: HashMap<u16, Known>,
    /// True when the store held nothing when opened, so a key missing from
    /// `known` is absent from the store too.
    complete: bool,
}

/// What `OurStore` remembers of one vbucket's keys: the newest version of
/// each, as the documents it builds (`Document::new`, or a tombstone
/// deleted at 1) need it. Kept lean, since its upkeep is timed with the
/// commits it serves: the keys live in one arena, the index maps a 64-bit
/// hash of a key to its slot, and the values are the commits' own buffers.
/// Two keys with one hash (never seen in practice) both go as
/// `Prior::Unknown` from then on.
#[derive(Default)]
struct Known {
    index: HashMap<u64, u32, std::hash::BuildHasherDefault<Prehashed>>,
    keys: Vec<u8>,
    slots: Vec<Version>,
    collided: std::collections::HashSet<u64, std::hash::BuildHasherDefault<Prehashed>>,
}

/// The newest version of a key.
struct Version {
    key_at: usize,
    key_len: usize,
    seqno: u64,
    deleted: bool,
    value: bytes::Bytes,
}

impl Version {
    /// The document this version is, under `key`.
    fn doc(&self, key: &DiskKey) -> Document {
        if self.deleted {
            Document::tombstone(key.clone(), Seqno(self.seqno), 1)
        } else {
            Document::new(key.clone(), Seqno(self.seqno), self.value.clone())
        }
    }
}

/// A hash of a short key, eight bytes at a time (the std hasher is built to
/// resist hash flooding, which a benchmark does not need).
fn key_hash(bytes: &[u8]) -> u64 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K).rotate_left(29);
    }
    let mut w = [0u8; 8];
    w[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    h = (h ^ u64::from_le_bytes(w)).wrapping_mul(K);
    h ^ (h >> 32)
}

/// The identity hash of a key that is already a hash.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Known {
    /// The newest version of `key` (hash `h`), if known.
    fn get(&self, h: u64, key: &[u8]) -> Option<&Version> {
        if self.ambiguous(h) {
            return None;
        }
        let v = &self.slots[*self.index.get(&h)? as usize];
        (self.keys.get(v.key_at..v.key_at + v.key_len) == Some(key)).then_some(v)
    }

    /// True when `h` is the hash of two keys, which are then unknown.
    fn ambiguous(&self, h: u64) -> bool {
        self.collided.contains(&h)
    }

    /// Records the newest version of `key` (hash `h`).
    fn put(&mut self, h: u64, key: &[u8], seqno: u64, deleted: bool, value: bytes::Bytes) {
        match self.index.get(&h).map(|&i| i as usize) {
            Some(i) => {
                let v = &mut self.slots[i];
                if self.keys.get(v.key_at..v.key_at + v.key_len) == Some(key) {
                    (v.seqno, v.deleted, v.value) = (seqno, deleted, value);
                } else {
                    self.collided.insert(h);
                }
            }
            None => {
                let Ok(slot) = u32::try_from(self.slots.len()) else {
                    self.collided.insert(h);
                    return;
                };
                self.slots.push(Version {
                    key_at: self.keys.len(),
                    key_len: key.len(),
                    seqno,
                    deleted,
                    value,
                });
                self.keys.extend_from_slice(key);
                self.index.insert(h, slot);
            }
        }
    }

    /// Forgets `key` (hash `h`): its prior is unknown from now on.
    fn forget(&mut self, h: u64) {
        self.collided.insert(h);
    }
}

impl OurStore {
    fn open(kv: Arc<dyn KvStore>, dir: &Path, vbuckets: u16) -> Result<Self> {
        let mut vbs = HashMap::new();
        let found = kv.discover().map_err(err("discover"))?;
        let complete = found.is_empty();
        for (vbid, rev) in found {
            vbs.insert(vbid.0, kv.open(vbid, rev).map_err(err("open"))?);
        }
        for v in 0..vbuckets {
            if let std::collections::hash_map::Entry::Vacant(e) = vbs.entry(v) {
                e.insert(kv.create(Vbid(v)).map_err(err("create"))?);
            }
        }
        Ok(OurStore {
            _kv: kv,
            dir: dir.to_path_buf(),
            vbs,
            known: HashMap::new(),
            complete,
        })
    }

    fn vb(&self, vb: u16) -> Result<&Arc<dyn VbStore>> {
        self.vbs.get(&vb).ok_or_else(|| format!("no vbucket {vb}"))
    }
}

fn disk_key(key: &[u8]) -> Result<DiskKey> {
    DiskKey::new(CollectionId::DEFAULT, key).map_err(err("key"))
}

impl BenchStore for OurStore {
    fn write(&mut self, vb: u16, items: &[Item]) -> Result<()> {
        let store = Arc::clone(self.vb(vb)?);
        let complete = self.complete;
        let known = self.known.entry(vb).or_default();
        let mut batch = CommitBatch {
            items: Vec::with_capacity(items.len()),
            ..CommitBatch::default()
        };
        let mut priors = Vec::with_capacity(items.len());
        let mut values = Vec::with_capacity(items.len());
        let mut hashes = Vec::with_capacity(items.len());
        for it in items {
            let key = disk_key(&it.key)?;
            let h = key_hash(&it.key);
            let value = bytes::Bytes::from(it.value.clone());
            priors.push(match known.get(h, &it.key) {
                Some(v) => Prior::Present(v.doc(&key)),
                None if complete && !known.ambiguous(h) => Prior::Absent,
                None => Prior::Unknown,
            });
            batch.items.push(if it.deleted {
                Document::tombstone(key, Seqno(it.seqno), 1)
            } else {
                Document::new(key, Seqno(it.seqno), value.clone())
            });
            values.push(value);
            hashes.push(h);
        }
        // A key twice in one batch: both occurrences carry the stored
        // version's prior, and the later (higher-seqno) version is the one
        // remembered.
        let mut order: Vec<usize> = (0..items.len()).collect();
        if !items.windows(2).all(|w| w[0].seqno < w[1].seqno) {
            order.sort_by_key(|&i| items[i].seqno);
        }
        if let Err(e) = store.commit_with_priors(batch, priors) {
            // The commit may or may not be on disk: forget what it touched,
            // so later commits pass `Unknown` for those keys.
            for &h in &hashes {
                known.forget(h);
            }
            return Err(format!("commit: {e}"));
        }
        for i in order {
            let it = &items[i];
            known.put(hashes[i], &it.key, it.seqno, it.deleted, values[i].clone());
        }
        Ok(())
    }

    fn reclaim_activity(&self) -> Option<ReclaimActivity> {
        let mut a = ReclaimActivity {
            started: 0,
            running: false,
        };
        for vb in self.vbs.values() {
            let i = vb.info().ok()?;
            a.started += i.reclaim_passes;
            a.running |= i.reclaiming;
        }
        Some(a)
    }

    fn get(&mut self, vb: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let doc = self.vb(vb)?.get(&disk_key(key)?).map_err(err("get"))?;
        Ok(doc.filter(|d| !d.is_deleted()).map(|d| d.value.to_vec()))
    }

    fn scan_keys(&mut self, vb: u16, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut n = 0;
        self.vb(vb)?
            .key_range(&KeyRange::all(), &mut |d| {
                if !d.is_deleted() {
                    f(d.key.user_key(), &d.value);
                    n += 1;
                }
                ScanControl::Continue
            })
            .map_err(err("key range"))?;
        Ok(n)
    }

    fn scan_seqnos(&mut self, vb: u16, from: u64, f: &mut SeqnoVisitor<'_>) -> Result<u64> {
        let mut n = 0;
        let mut scan = self
            .vb(vb)?
            .seqno_scan(
                Seqno(from),
                Seqno(u64::MAX),
                ScanOptions {
                    include_deleted: true,
                    ..ScanOptions::default()
                },
            )
            .map_err(err("seqno scan"))?;
        scan.run(&mut |d| {
            f(d.meta.seqno.0, d.key.user_key(), &d.value);
            n += 1;
            ScanControl::Continue
        })
        .map_err(err("seqno scan"))?;
        Ok(n)
    }

    fn compact(&mut self) -> Result<()> {
        let cfg = CompactionConfig {
            drop_deletes: true,
            ..CompactionConfig::default()
        };
        for vb in self.vbs.values() {
            vb.compact(&cfg).map_err(err("compact"))?;
        }
        Ok(())
    }

    fn disk_bytes(&self) -> Result<u64> {
        dir_bytes(&self.dir)
    }
}

/// The by-key value of a peer: seqno (8, BE), tombstone flag (1), value.
fn peer_value(it: &Item) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + it.value.len());
    v.extend_from_slice(&it.seqno.to_be_bytes());
    v.push(u8::from(it.deleted));
    v.extend_from_slice(&it.value);
    v
}

fn peer_decode(raw: &[u8]) -> Result<(u64, bool, &[u8])> {
    if raw.len() < 9 {
        return Err(format!("peer value of {} bytes", raw.len()));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&raw[..8]);
    Ok((u64::from_be_bytes(s), raw[8] == 1, &raw[9..]))
}

fn pkey(vb: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&vb.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn pseq(vb: u16, seqno: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(&vb.to_be_bytes());
    k[2..].copy_from_slice(&seqno.to_be_bytes());
    k
}

/// Raw rocksdb, configured as kvstore-rocks configures it by default,
/// doing blind puts (see the module docs).
struct RawRocks {
    db: rocksdb::DB,
    dir: PathBuf,
    sync: bool,
}

impl RawRocks {
    fn open(dir: &Path, sync: bool) -> Result<Self> {
        // Exactly the options `kvstore-rocks` runs with (block cache, Bloom
        // filters, memtables, compression, write-buffer budget), so the two
        // differ only in what they do per operation.
        let tuning = kvstore_rocks::Tuning::new(&kvstore_rocks::RocksConfig::default());
        let opts = tuning.db_options();
        let cfs = vec![rocksdb::ColumnFamilyDescriptor::new(
            "data",
            tuning.by_key_options(),
        )];
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, cfs).map_err(err("rocksdb open"))?;
        Ok(RawRocks {
            db,
            dir: dir.to_path_buf(),
            sync,
        })
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| format!("no column family {name}"))
    }
}

impl BenchStore for RawRocks {
    fn write(&mut self, vb: u16, items: &[Item]) -> Result<()> {
        let data = self.cf("data")?;
        let mut batch = rocksdb::WriteBatch::default();
        for it in items {
            batch.put_cf(data, pkey(vb, &it.key), peer_value(it));
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo).map_err(err("rocksdb write"))
    }

    fn get(&mut self, vb: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let data = self.cf("data")?;
        match self
            .db
            .get_pinned_cf(data, pkey(vb, key))
            .map_err(err("rocksdb get"))?
        {
            None => Ok(None),
            Some(v) => {
                let (_, deleted, value) = peer_decode(&v)?;
                Ok((!deleted).then(|| value.to_vec()))
            }
        }
    }

    fn scan_keys(&mut self, vb: u16, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let data = self.cf("data")?;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_range(rocksdb::PrefixRange(vb.to_be_bytes().to_vec()));
        let mut it = self.db.raw_iterator_cf_opt(data, ro);
        it.seek_to_first();
        let mut n = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (_, deleted, value) = peer_decode(v)?;
            if !deleted {
                f(&k[2..], value);
                n += 1;
            }
            it.next();
        }
        it.status().map_err(err("rocksdb iterate"))?;
        Ok(n)
    }

    fn scan_seqnos(&mut self, vb: u16, from: u64, f: &mut SeqnoVisitor<'_>) -> Result<u64> {
        // No by-seqno index: every document of the vbucket under one
        // snapshot, sorted by seqno.
        let data = self.cf("data")?;
        let snap = self.db.snapshot();
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_range(rocksdb::PrefixRange(vb.to_be_bytes().to_vec()));
        let mut it = snap.raw_iterator_cf_opt(data, ro);
        it.seek_to_first();
        let mut docs: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let (seqno, _, value) = peer_decode(v)?;
            if seqno >= from {
                docs.push((seqno, k[2..].to_vec(), value.to_vec()));
            }
            it.next();
        }
        it.status().map_err(err("rocksdb iterate"))?;
        docs.sort_unstable_by_key(|d| d.0);
        for (s, k, v) in &docs {
            f(*s, k, v);
        }
        Ok(docs.len() as u64)
    }

    fn compact(&mut self) -> Result<()> {
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        let cf = self.cf("data")?;
        self.db
            .compact_range_cf_opt(cf, None::<&[u8]>, None::<&[u8]>, &co);
        Ok(())
    }

    fn disk_bytes(&self) -> Result<u64> {
        dir_bytes(&self.dir)
    }
}

const REDB_DATA: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("data");
const REDB_SEQ: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("seq");

/// redb: one file, two tables.
struct Redb {
    db: redb::Database,
    path: PathBuf,
    sync: bool,
}

impl Redb {
    fn open(dir: &Path, sync: bool) -> Result<Self> {
        let path = dir.join("data.redb");
        let db = redb::Database::create(&path).map_err(err("redb open"))?;
        let mut s = Redb { db, path, sync };
        // Create the tables so reads of an empty store work.
        s.write(0, &[])?;
        Ok(s)
    }
}

impl BenchStore for Redb {
    fn write(&mut self, vb: u16, items: &[Item]) -> Result<()> {
        use redb::ReadableTable;
        let mut tx = self.db.begin_write().map_err(err("redb begin"))?;
        tx.set_durability(if self.sync {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })
        .map_err(err("redb durability"))?;
        {
            let mut data = tx.open_table(REDB_DATA).map_err(err("redb table"))?;
            let mut seq = tx.open_table(REDB_SEQ).map_err(err("redb table"))?;
            for it in items {
                let k = pkey(vb, &it.key);
                let old = data
                    .get(k.as_slice())
                    .map_err(err("redb get"))?
                    .map(|g| peer_decode(g.value()).map(|(s, _, _)| s))
                    .transpose()?;
                if let Some(old) = old {
                    seq.remove(pseq(vb, old).as_slice())
                        .map_err(err("redb remove"))?;
                }
                data.insert(k.as_slice(), peer_value(it).as_slice())
                    .map_err(err("redb insert"))?;
                seq.insert(pseq(vb, it.seqno).as_slice(), it.key.as_slice())
                    .map_err(err("redb insert"))?;
            }
        }
        tx.commit().map_err(err("redb commit"))
    }

    fn get(&mut self, vb: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(err("redb begin"))?;
        let data = tx.open_table(REDB_DATA).map_err(err("redb table"))?;
        let k = pkey(vb, key);
        let Some(g) = data.get(k.as_slice()).map_err(err("redb get"))? else {
            return Ok(None);
        };
        let (_, deleted, value) = peer_decode(g.value())?;
        Ok((!deleted).then(|| value.to_vec()))
    }

    fn scan_keys(&mut self, vb: u16, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(err("redb begin"))?;
        let data = tx.open_table(REDB_DATA).map_err(err("redb table"))?;
        let lo = vb.to_be_bytes();
        let hi = vb.checked_add(1).map(u16::to_be_bytes);
        let range = match &hi {
            Some(hi) => data.range::<&[u8]>(lo.as_slice()..hi.as_slice()),
            None => data.range::<&[u8]>(lo.as_slice()..),
        }
        .map_err(err("redb range"))?;
        let mut n = 0;
        for e in range {
            let (k, v) = e.map_err(err("redb range"))?;
            let (_, deleted, value) = peer_decode(v.value())?;
            if !deleted {
                f(&k.value()[2..], value);
                n += 1;
            }
        }
        Ok(n)
    }

    fn scan_seqnos(&mut self, vb: u16, from: u64, f: &mut SeqnoVisitor<'_>) -> Result<u64> {
        use redb::ReadableDatabase;
        let tx = self.db.begin_read().map_err(err("redb begin"))?;
        let seq = tx.open_table(REDB_SEQ).map_err(err("redb table"))?;
        let data = tx.open_table(REDB_DATA).map_err(err("redb table"))?;
        let lo = pseq(vb, from);
        let hi = pseq(vb, u64::MAX);
        let mut n = 0;
        for e in seq
            .range::<&[u8]>(lo.as_slice()..=hi.as_slice())
            .map_err(err("redb range"))?
        {
            let (k, v) = e.map_err(err("redb range"))?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&k.value()[2..10]);
            let key = v.value();
            let doc = data
                .get(pkey(vb, key).as_slice())
                .map_err(err("redb get"))?
                .ok_or_else(|| "seqno index points at a missing key".to_string())?;
            let (_, _, value) = peer_decode(doc.value())?;
            f(u64::from_be_bytes(s), key, value);
            n += 1;
        }
        Ok(n)
    }

    fn compact(&mut self) -> Result<()> {
        self.db.compact().map_err(err("redb compact"))?;
        Ok(())
    }

    fn disk_bytes(&self) -> Result<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.len())
            .map_err(err("stat"))
    }
}

/// fjall: one database, two keyspaces.
struct Fjall {
    db: fjall::Database,
    data: fjall::Keyspace,
    seq: fjall::Keyspace,
    dir: PathBuf,
    sync: bool,
}

impl Fjall {
    fn open(dir: &Path, sync: bool) -> Result<Self> {
        let db = fjall::Database::builder(dir)
            .open()
            .map_err(err("fjall open"))?;
        let data = db
            .keyspace("data", fjall::KeyspaceCreateOptions::default)
            .map_err(err("fjall keyspace"))?;
        let seq = db
            .keyspace("seq", fjall::KeyspaceCreateOptions::default)
            .map_err(err("fjall keyspace"))?;
        Ok(Fjall {
            db,
            data,
            seq,
            dir: dir.to_path_buf(),
            sync,
        })
    }
}

impl BenchStore for Fjall {
    fn write(&mut self, vb: u16, items: &[Item]) -> Result<()> {
        let mut batch = self
            .db
            .batch()
            .durability(self.sync.then_some(fjall::PersistMode::SyncAll));
        for it in items {
            let k = pkey(vb, &it.key);
            if let Some(old) = self.data.get(&k).map_err(err("fjall get"))? {
                batch.remove(&self.seq, pseq(vb, peer_decode(&old)?.0).to_vec());
            }
            batch.insert(&self.data, k, peer_value(it));
            batch.insert(&self.seq, pseq(vb, it.seqno).to_vec(), it.key.clone());
        }
        batch.commit().map_err(err("fjall commit"))
    }

    fn get(&mut self, vb: u16, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.data.get(pkey(vb, key)).map_err(err("fjall get"))? {
            None => Ok(None),
            Some(v) => {
                let (_, deleted, value) = peer_decode(&v)?;
                Ok((!deleted).then(|| value.to_vec()))
            }
        }
    }

    fn scan_keys(&mut self, vb: u16, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<u64> {
        let mut n = 0;
        for g in self.data.prefix(vb.to_be_bytes()) {
            let (k, v) = g.into_inner().map_err(err("fjall iterate"))?;
            let (_, deleted, value) = peer_decode(&v)?;
            if !deleted {
                f(&k[2..], value);
                n += 1;
            }
        }
        Ok(n)
    }

    fn scan_seqnos(&mut self, vb: u16, from: u64, f: &mut SeqnoVisitor<'_>) -> Result<u64> {
        use fjall::Readable;
        // One snapshot for both keyspaces, as a backfill needs.
        let snap = self.db.snapshot();
        let mut n = 0;
        for g in snap.range(&self.seq, pseq(vb, from)..=pseq(vb, u64::MAX)) {
            let (k, key) = g.into_inner().map_err(err("fjall iterate"))?;
            let mut s = [0u8; 8];
            s.copy_from_slice(&k[2..10]);
            let doc = snap
                .get(&self.data, pkey(vb, &key))
                .map_err(err("fjall get"))?
                .ok_or_else(|| "seqno index points at a missing key".to_string())?;
            let (_, _, value) = peer_decode(&doc)?;
            f(u64::from_be_bytes(s), &key, value);
            n += 1;
        }
        Ok(n)
    }

    fn compact(&mut self) -> Result<()> {
        self.data.major_compact().map_err(err("fjall compact"))?;
        self.seq.major_compact().map_err(err("fjall compact"))?;
        Ok(())
    }

    fn disk_bytes(&self) -> Result<u64> {
        dir_bytes(&self.dir)
    }
}
