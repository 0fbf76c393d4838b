//! [`RocksStore`]: the [`KvStore`] of one RocksDB instance.

use crate::codec::{
    DELETION_MARK, Header, Malformed, PREFIX_LEN, deletion_mark_key, hwm_key, parse_prefix, prefix,
    split_prefix,
};
use crate::config::RocksConfig;
use crate::db::{self, Cf, Shared, cf};
use crate::error::{BACKEND, RocksError, backend, corrupt};
use crate::vb::{RocksVb, lock};
use kvstore_core::{KvStore, Revision, StoreError, StoreResult, VbStore, Vbid};
use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Open handles, so that opening an open revision returns the same handle.
type Registry = HashMap<(Vbid, Revision), Weak<RocksVb>>;

/// What the `meta` family holds for one vbucket.
#[derive(Debug, Default)]
struct VbMeta {
    /// The revision high-water mark.
    hwm: u64,
    /// Revisions with a header.
    revisions: Vec<Revision>,
    /// Revisions marked deleted.
    marked: Vec<Revision>,
}

/// A RocksDB-backed [`KvStore`]: every vbucket revision of one data
/// directory lives in a single RocksDB instance. See the crate docs for the
/// layout.
///
/// Dropping the last `RocksStore`, handle and scan closes the database.
pub struct RocksStore {
    shared: Arc<Shared>,
    /// Guards create, open, destroy and discover against each other; lock
    /// order is this, then a handle's writer lock.
    registry: Mutex<Registry>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.shared.path)
            .field("sync", &self.shared.sync)
            .field("rollback_window", &self.shared.window)
            .finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Opens the store under `path`, creating the directory and the database
    /// when they do not exist.
    ///
    /// RocksDB locks the directory: reopening it fails (with a
    /// [`StoreError::Backend`] error) while any handle or scan of a previous
    /// instance on it is still alive.
    pub fn open(path: impl AsRef<Path>, config: RocksConfig) -> StoreResult<Self> {
        let path = path.as_ref();
        let db = db::open(path, &config)?;
        tracing::info!(path = %path.display(), sync = config.sync,
            rollback_window = config.rollback_window, "opened rocksdb store");
        Ok(RocksStore {
            shared: Arc::new(Shared {
                db: Arc::new(db),
                path: path.to_path_buf(),
                sync: config.sync,
                window: config.rollback_window as u64,
                fault: config.sync_fault,
            }),
            registry: Mutex::new(HashMap::new()),
        })
    }

    /// The database directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// The RocksDB instance, for tools and benchmarks that want to look
    /// underneath (read-only use is the only safe one).
    #[must_use]
    pub fn db(&self) -> &Arc<rocksdb::DB> {
        &self.shared.db
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    fn handle(
        &self,
        reg: &mut Registry,
        vbid: Vbid,
        revision: Revision,
        header: Header,
    ) -> Arc<RocksVb> {
        reg.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(RocksVb::new(
            Arc::clone(&self.shared),
            vbid,
            revision,
            header,
        ));
        reg.insert((vbid, revision), Arc::downgrade(&h));
        h
    }

    /// What the `meta` family says about every vbucket (or one).
    fn scan_meta(&self, only: Option<Vbid>) -> StoreResult<BTreeMap<Vbid, VbMeta>> {
        let db = &self.shared.db;
        let meta = cf(db, Cf::Meta)?;
        let mut ro = ReadOptions::default();
        if let Some(v) = only {
            ro.set_iterate_lower_bound(hwm_key(v).to_vec());
            if let Some(next) = v.0.checked_add(1) {
                ro.set_iterate_upper_bound(hwm_key(Vbid(next)).to_vec());
            }
        }
        let mut out: BTreeMap<Vbid, VbMeta> = BTreeMap::new();
        for item in db.iterator_cf_opt(meta, ro, IteratorMode::Start) {
            let (key, value) = item.map_err(backend)?;
            let parsed = split_prefix(&key).map(|(p, rest)| (parse_prefix(&p), rest));
            match (key.len(), parsed) {
                (2, _) => {
                    let vbid = Vbid(u16::from_be_bytes([key[0], key[1]]));
                    let hwm = <[u8; 8]>::try_from(&value[..])
                        .map(u64::from_le_bytes)
                        .map_err(|_| {
                            corrupt(
                                &self.shared.path,
                                Cf::Meta.name(),
                                &key,
                                Malformed {
                                    what: "revision high-water mark",
                                    detail: format!("{} bytes, expected 8", value.len()),
                                },
                            )
                        })?;
                    out.entry(vbid).or_default().hwm = hwm;
                }
                (PREFIX_LEN, Some(((vbid, rev), _))) => {
                    out.entry(vbid).or_default().revisions.push(rev);
                }
                (_, Some(((vbid, rev), [DELETION_MARK]))) => {
                    out.entry(vbid).or_default().marked.push(rev);
                }
                _ => {
                    tracing::warn!(key = %key.escape_ascii(), "unexpected key in the meta family");
                }
            }
        }
        Ok(out)
    }

    /// Removes revisions in one durable batch and fails their open handles
    /// with `Deleted`. Holds each open handle's writer lock across the write
    /// so no commit can land in a removed range.
    fn remove_revisions(&self, reg: &mut Registry, revs: &[(Vbid, Revision)]) -> StoreResult<()> {
        if revs.is_empty() {
            return Ok(());
        }
        let handles: Vec<Arc<RocksVb>> = revs
            .iter()
            .filter_map(|k| reg.remove(k).and_then(|w| w.upgrade()))
            .collect();
        let guards: Vec<_> = handles.iter().map(|h| h.lock_writer()).collect();
        let mut wb = WriteBatch::default();
        for &(vbid, rev) in revs {
            self.shared.delete_revision(&mut wb, &prefix(vbid, rev))?;
        }
        self.shared
            .db
            .write_opt(wb, &self.shared.write_opts())
            .map_err(backend)?;
        for h in &handles {
            h.mark_deleted();
        }
        drop(guards);
        Ok(())
    }
}

impl KvStore for RocksStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn discover(&self) -> StoreResult<Vec<(Vbid, Revision)>> {
        let mut reg = self.registry();
        let mut found = Vec::new();
        let mut stale = Vec::new();
        for (vbid, meta) in self.scan_meta(None)? {
            let VbMeta {
                mut revisions,
                marked,
                ..
            } = meta;
            // Revisions marked deleted go first, whatever else exists.
            revisions.retain(|r| {
                let doomed = marked.contains(r);
                if doomed {
                    tracing::info!(%vbid, revision = %r, "removing a revision marked deleted");
                    stale.push((vbid, *r));
                }
                !doomed
            });
            revisions.sort_unstable();
            let Some(newest) = revisions.pop() else {
                continue;
            };
            for r in revisions {
                tracing::info!(%vbid, revision = %r, "removing stale revision");
                stale.push((vbid, r));
            }
            found.push((vbid, newest));
        }
        self.remove_revisions(&mut reg, &stale)?;
        Ok(found)
    }

    fn create(&self, vbid: Vbid) -> StoreResult<Arc<dyn VbStore>> {
        let mut reg = self.registry();
        let meta = self
            .scan_meta(Some(vbid))?
            .remove(&vbid)
            .unwrap_or_default();
        let used = meta
            .revisions
            .iter()
            .map(|r| r.0)
            .max()
            .unwrap_or(0)
            .max(meta.hwm);
        let revision = Revision(used.checked_add(1).ok_or(RocksError::RevisionsExhausted)?);
        let header = Header::default();
        let meta = cf(&self.shared.db, Cf::Meta)?;
        let mut wb = WriteBatch::default();
        wb.put_cf(meta, hwm_key(vbid), revision.0.to_le_bytes());
        wb.put_cf(meta, prefix(vbid, revision), header.encode());
        self.shared
            .db
            .write_opt(wb, &self.shared.write_opts())
            .map_err(backend)?;
        tracing::debug!(%vbid, %revision, "created revision");
        Ok(self.handle(&mut reg, vbid, revision, header))
    }

    fn open(&self, vbid: Vbid, revision: Revision) -> StoreResult<Arc<dyn VbStore>> {
        let mut reg = self.registry();
        if let Some(h) = reg
            .get(&(vbid, revision))
            .and_then(Weak::upgrade)
            .filter(|h| !h.is_poisoned())
        {
            return Ok(h);
        }
        // A poisoned handle is left to its holders; a fresh one re-reads the
        // revision's header from the database.
        let header = self
            .shared
            .read_header(&prefix(vbid, revision))?
            .ok_or(StoreError::NoSuchRevision { vbid, revision })?;
        Ok(self.handle(&mut reg, vbid, revision, header))
    }

    fn mark_deleted(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let _reg = self.registry();
        let p = prefix(vbid, revision);
        if self.shared.read_header(&p)?.is_none() {
            return Err(StoreError::NoSuchRevision { vbid, revision });
        }
        // One small durable put; handles and scans carry on untouched, and
        // the next `discover` removes the revision.
        self.shared
            .db
            .put_cf_opt(
                cf(&self.shared.db, Cf::Meta)?,
                deletion_mark_key(&p),
                [],
                &self.shared.write_opts(),
            )
            .map_err(backend)?;
        tracing::debug!(%vbid, %revision, "marked revision deleted");
        Ok(())
    }

    fn destroy(&self, vbid: Vbid, revision: Revision) -> StoreResult<()> {
        let mut reg = self.registry();
        if self.shared.read_header(&prefix(vbid, revision))?.is_none() {
            return Err(StoreError::NoSuchRevision { vbid, revision });
        }
        self.remove_revisions(&mut reg, &[(vbid, revision)])?;
        tracing::debug!(%vbid, %revision, "destroyed revision");
        Ok(())
    }
}
