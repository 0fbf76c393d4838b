//! [`RocksVb`]: one `(vbid, revision)` store inside the shared instance.

use crate::codec::{
    Header, KeyBuf, Malformed, Prefix, SEQ_RECORD_MAX, SeqRecordBuilder, UndoBuilder, UndoRecord,
    body_size, data_key, decode_doc, decode_meta, decode_seq_record, disk_key, encode_doc, num_key,
    parse_num_key, prefix, prefix_end,
};
use crate::config::SyncFault;
use crate::db::{Cf, Shared, cf};
use crate::error::{backend, corrupt};
use crate::scan::RocksScan;
use bytes::Bytes;
use kvstore_core::batch::prepare_by_seqno;
use kvstore_core::store::check_priors;
use kvstore_core::{
    CommitBatch, CommitInfo, CompactionConfig, CompactionResult, DiskKey, Document, KeyRange,
    Prior, Revision, RollbackResult, ScanControl, ScanOptions, ScanStatus, Seqno, SeqnoScan,
    StoreError, StoreInfo, StoreResult, VBSTATE_LOCAL_NAME, VbStore, Vbid, VbucketState,
};
use rocksdb::{
    BottommostLevelCompaction, CompactOptions, DBPinnableSlice, FlushOptions, ReadOptions,
    WriteBatch,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Locks a mutex, recovering the data of a lock poisoned by a panic: every
/// critical section here keeps its data consistent at each early return.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How long `info()` may reuse RocksDB's size estimate.
const SIZE_ESTIMATE_TTL: Duration = Duration::from_secs(1);

/// Documents the compaction scan reads between two cancellation checks.
const CANCEL_CHECK_EVERY: usize = 256;

/// The writer's state.
pub(crate) struct Writer {
    /// The authoritative header of the revision.
    header: Header,
    /// The revision's local documents, read once on first need, so a commit
    /// takes their previous values for its undo record without a read.
    locals: Option<BTreeMap<String, Bytes>>,
    /// Rollbacks so far. A compaction that judged by-seqno entries stale
    /// under its snapshot removes them only if no rollback ran since (a
    /// rollback can make an overwritten version current again).
    rollbacks: u64,
}

/// One vbucket revision. Writers (commit, rollback, the apply step of
/// compaction) serialise on `writer`; readers go straight to RocksDB.
pub(crate) struct RocksVb {
    shared: Arc<Shared>,
    vbid: Vbid,
    revision: Revision,
    prefix: Prefix,
    end: Vec<u8>,
    writer: Mutex<Writer>,
    /// A copy of the header for readers, updated after every write.
    published: Mutex<Header>,
    /// One compaction at a time per revision.
    compacting: Mutex<()>,
    deleted: AtomicBool,
    /// Set once a write failed; `poison_cause` says why. The flag keeps the
    /// check on every read to one atomic load.
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    size_estimate: Mutex<Option<(Instant, u64)>>,
}

/// A candidate for purging found by the compaction scan.
struct Candidate {
    key: DiskKey,
    seqno: Seqno,
}

impl RocksVb {
    pub(crate) fn new(shared: Arc<Shared>, vbid: Vbid, revision: Revision, header: Header) -> Self {
        let p = prefix(vbid, revision);
        RocksVb {
            shared,
            vbid,
            revision,
            prefix: p,
            end: prefix_end(&p),
            writer: Mutex::new(Writer {
                header,
                locals: None,
                rollbacks: 0,
            }),
            published: Mutex::new(header),
            compacting: Mutex::new(()),
            deleted: AtomicBool::new(false),
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            size_estimate: Mutex::new(None),
        }
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Called by destroy and discover with the writer lock held.
    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    fn check_deleted(&self) -> StoreResult<()> {
        if self.deleted.load(Ordering::SeqCst) {
            return Err(StoreError::Deleted {
                vbid: self.vbid,
                revision: self.revision,
            });
        }
        Ok(())
    }

    /// True once a write failed on this handle.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Fails when the revision was destroyed or the handle is poisoned.
    fn check(&self) -> StoreResult<()> {
        self.check_deleted()?;
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StoreError::Poisoned {
                path: self.shared.path.clone(),
                cause: lock(&self.poison_cause).clone().unwrap_or_default(),
            });
        }
        Ok(())
    }

    fn poison(&self, cause: String) {
        tracing::error!(vbid = %self.vbid, revision = %self.revision, %cause,
            "write failed; the handle is poisoned until the store is reopened");
        let mut p = lock(&self.poison_cause);
        if p.is_none() {
            *p = Some(format!("{} {}: {cause}", self.vbid, self.revision));
        }
        self.poisoned.store(true, Ordering::Release);
    }

    fn corrupt(&self, which: Cf, key: &[u8], m: Malformed) -> StoreError {
        corrupt(&self.shared.path, which.name(), key, m)
    }

    /// Writes one batch durably. Any failure poisons the handle: RocksDB may
    /// have applied part of the work to its memtables or the log, and the
    /// cached header no longer matches the disk.
    fn write(&self, wb: WriteBatch) -> StoreResult<()> {
        if let Err(e) = self.shared.db.write_opt(wb, &self.shared.write_opts()) {
            self.poison(e.to_string());
            return Err(backend(e));
        }
        if self.shared.fault.as_ref().is_some_and(SyncFault::take) {
            let err = io::Error::other("injected sync failure");
            self.poison(err.to_string());
            return Err(StoreError::io("sync", &self.shared.path, err));
        }
        Ok(())
    }

    fn publish(&self, w: &mut Writer, header: Header) {
        w.header = header;
        *lock(&self.published) = header;
    }

    /// Every local document of the revision, by name.
    fn read_locals(&self) -> StoreResult<BTreeMap<String, Bytes>> {
        let db = &*self.shared.db;
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(self.prefix.to_vec()..self.end.clone());
        let mut it = db.raw_iterator_cf_opt(cf(db, Cf::Local)?, ro);
        it.seek(self.prefix);
        let mut out = BTreeMap::new();
        while let Some((k, v)) = it.item() {
            let suffix = k.get(self.prefix.len()..).unwrap_or_default();
            let name = std::str::from_utf8(suffix).map_err(|e| {
                self.corrupt(
                    Cf::Local,
                    k,
                    Malformed {
                        what: "local document name",
                        detail: e.to_string(),
                    },
                )
            })?;
            out.insert(name.to_owned(), Bytes::copy_from_slice(v));
            it.next();
        }
        it.status().map_err(backend)?;
        Ok(out)
    }

    fn decode_current(
        &self,
        key: &DiskKey,
        raw: Option<&DBPinnableSlice<'_>>,
        with_value: bool,
    ) -> StoreResult<Option<Document>> {
        raw.map(|raw| {
            decode_doc(key.clone(), raw, with_value)
                .map_err(|m| self.corrupt(Cf::ByKey, key.as_bytes(), m))
        })
        .transpose()
    }

    /// RocksDB's size estimate of this revision, refreshed at most once per
    /// [`SIZE_ESTIMATE_TTL`].
    fn disk_estimate(&self, fresh: bool) -> StoreResult<u64> {
        let mut cached = lock(&self.size_estimate);
        if !fresh
            && let Some((at, bytes)) = *cached
            && at.elapsed() < SIZE_ESTIMATE_TTL
        {
            return Ok(bytes);
        }
        let bytes = self.shared.disk_bytes(&self.prefix)?;
        *cached = Some((Instant::now(), bytes));
        Ok(bytes)
    }

    /// Empties the revision (rollback past the history): every document,
    /// local document and undo record goes, and the header restarts.
    fn rollback_to_zero(&self, w: &mut Writer) -> StoreResult<RollbackResult> {
        let db = &*self.shared.db;
        let bykey = cf(db, Cf::ByKey)?;
        let mut discarded = Vec::new();
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(self.prefix.to_vec()..self.end.clone());
        let mut it = db.raw_iterator_cf_opt(bykey, ro);
        it.seek(self.prefix);
        while let Some(k) = it.key() {
            let suffix = k.get(self.prefix.len()..).unwrap_or_default();
            discarded.push(disk_key(suffix).map_err(|m| self.corrupt(Cf::ByKey, k, m))?);
            it.next();
        }
        it.status().map_err(backend)?;
        drop(it);
        let mut wb = WriteBatch::default();
        for which in [Cf::ByKey, Cf::BySeqno, Cf::Local, Cf::Undo] {
            wb.delete_range_cf(cf(db, which)?, &self.prefix[..], &self.end[..]);
        }
        let header = Header::default();
        wb.put_cf(cf(db, Cf::Meta)?, self.prefix, header.encode());
        self.write(wb)?;
        self.publish(w, header);
        w.rollbacks += 1;
        w.locals = Some(BTreeMap::new());
        tracing::info!(vbid = %self.vbid, revision = %self.revision,
            discarded = discarded.len(), "rolled back to zero");
        Ok(RollbackResult {
            high_seqno: Seqno(0),
            discarded,
            to_zero: true,
        })
    }
}

impl VbStore for RocksVb {
    fn vbid(&self) -> Vbid {
        self.vbid
    }

    fn revision(&self) -> Revision {
        self.revision
    }

    fn commit(&self, batch: CommitBatch) -> StoreResult<CommitInfo> {
        self.commit_with_priors(batch, Vec::new())
    }

    fn commit_with_priors(
        &self,
        batch: CommitBatch,
        priors: Vec<Prior>,
    ) -> StoreResult<CommitInfo> {
        self.check()?;
        let mut w = self.lock_writer();
        self.check()?;
        let before = w.header;
        if batch.is_empty() {
            check_priors(self.vbid, &batch.items, &priors)?;
            return Ok(CommitInfo {
                high_seqno: Seqno(before.high),
                items: 0,
                bytes_written: 0,
            });
        }
        let (prepared, priors) = prepare_by_seqno(self.vbid, Seqno(before.high), batch, priors)?;
        let db = &*self.shared.db;
        let (bykey, byseqno) = (cf(db, Cf::ByKey)?, cf(db, Cf::BySeqno)?);
        let mut header = before;
        let mut undo = (self.shared.window > 0).then(|| UndoBuilder::new(&before));
        let mut wb = WriteBatch::default();

        // Items come in seqno order. Only the items whose prior is unknown
        // are read, in one multi-get: the previous version is what the
        // counts take out and what the undo record keeps.
        let keys = KeyBuf::new(
            &self.prefix,
            prepared.items.iter().map(|d| d.key.as_bytes()),
        );
        let unknown = |i: usize| priors.get(i).is_none_or(|p| *p == Prior::Unknown);
        let lookups: Vec<usize> = (0..prepared.items.len()).filter(|&i| unknown(i)).collect();
        let mut looked_up = if lookups.is_empty() {
            Vec::new()
        } else {
            db.batched_multi_get_cf(bykey, lookups.iter().map(|&i| keys.get(i)), false)
        }
        .into_iter();
        let mut value = Vec::with_capacity(256);
        for (i, doc) in prepared.items.iter().enumerate() {
            let key = keys.get(i);
            match priors.get(i) {
                Some(Prior::Absent) => {}
                Some(Prior::Present(old)) => {
                    header.account(old.is_deleted(), old.body_size(), false);
                    if let Some(u) = undo.as_mut() {
                        u.doc_version(old);
                    }
                }
                Some(Prior::Unknown) | None => {
                    let old = match looked_up.next() {
                        Some(r) => r.map_err(backend)?,
                        None => None,
                    };
                    if let Some(old) = old {
                        let (meta, old_value) =
                            decode_meta(&old).map_err(|m| self.corrupt(Cf::ByKey, key, m))?;
                        header.account(
                            meta.deleted.is_some(),
                            body_size(doc.key.len(), old_value),
                            false,
                        );
                        if let Some(u) = undo.as_mut() {
                            u.doc(doc.key.as_bytes(), &old);
                        }
                    }
                }
            }
            value.clear();
            encode_doc(doc, &mut value);
            wb.put_cf(bykey, key, &value);
            header.account(doc.is_deleted(), doc.body_size(), true);
        }

        // The by-seqno index: one record per commit (per SEQ_RECORD_MAX
        // items). The entries of overwritten versions stay where they are;
        // scans skip them (see the crate docs).
        let mut record = SeqRecordBuilder::new(prepared.items.len().min(SEQ_RECORD_MAX));
        for d in &prepared.items {
            record.push(d.meta.seqno.0, d.key.as_bytes(), d.is_deleted());
            if record.len() == SEQ_RECORD_MAX {
                wb.put_cf(byseqno, num_key(&self.prefix, record.last()), record.take());
            }
        }
        if record.len() > 0 {
            wb.put_cf(byseqno, num_key(&self.prefix, record.last()), record.take());
        }

        if !prepared.local.is_empty() {
            let local = cf(db, Cf::Local)?;
            if undo.is_some() && w.locals.is_none() {
                w.locals = Some(self.read_locals()?);
            }
            for (name, value) in &prepared.local {
                if let Some(u) = undo.as_mut() {
                    let old = w.locals.as_ref().and_then(|l| l.get(name));
                    u.local(name, old.map(|b| &b[..]));
                }
                let key = data_key(&self.prefix, name.as_bytes());
                match value {
                    Some(v) => wb.put_cf(local, key, v),
                    None => wb.delete_cf(local, key),
                }
            }
        }

        if let Some(max) = prepared.max_seqno {
            header.high = header.high.max(max.0);
        }
        header.commit_no = header.commit_no.saturating_add(1);
        match undo {
            Some(u) => {
                let undo_cf = cf(db, Cf::Undo)?;
                wb.put_cf(undo_cf, num_key(&self.prefix, header.commit_no), u.finish());
                // Keep the last `window` records.
                while (header.commit_no + 1).saturating_sub(header.undo_low) > self.shared.window {
                    wb.delete_cf(undo_cf, num_key(&self.prefix, header.undo_low));
                    header.undo_low += 1;
                }
            }
            None => header.undo_low = header.commit_no + 1,
        }
        wb.put_cf(cf(db, Cf::Meta)?, self.prefix, header.encode());
        let bytes_written = wb.size_in_bytes() as u64;
        self.write(wb)?;
        self.publish(&mut w, header);
        if let Some(cached) = w.locals.as_mut() {
            for (name, value) in prepared.local {
                match value {
                    Some(v) => cached.insert(name, v),
                    None => cached.remove(&name),
                };
            }
        }
        Ok(CommitInfo {
            high_seqno: Seqno(header.high),
            items: prepared.items.len(),
            bytes_written,
        })
    }

    fn get(&self, key: &DiskKey) -> StoreResult<Option<Document>> {
        self.check()?;
        let db = &*self.shared.db;
        let raw = db
            .get_pinned_cf(cf(db, Cf::ByKey)?, data_key(&self.prefix, key.as_bytes()))
            .map_err(backend)?;
        self.check_deleted()?;
        self.decode_current(key, raw.as_ref(), true)
    }

    fn get_many(&self, keys: &[DiskKey]) -> StoreResult<Vec<Option<Document>>> {
        self.check()?;
        let db = &*self.shared.db;
        let raw_keys: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| data_key(&self.prefix, k.as_bytes()))
            .collect();
        let got = db.batched_multi_get_cf(cf(db, Cf::ByKey)?, raw_keys.iter(), false);
        self.check_deleted()?;
        keys.iter()
            .zip(got)
            .map(|(k, r)| {
                let raw = r.map_err(backend)?;
                self.decode_current(k, raw.as_ref(), true)
            })
            .collect()
    }

    fn key_range(
        &self,
        range: &KeyRange,
        visit: &mut dyn FnMut(Document) -> ScanControl,
    ) -> StoreResult<ScanStatus> {
        self.check()?;
        if range.is_empty() {
            return Ok(ScanStatus::Done);
        }
        let db = &*self.shared.db;
        let start = data_key(&self.prefix, &range.start);
        let end = match &range.end {
            Some(e) => data_key(&self.prefix, e),
            None => self.end.clone(),
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(start.clone()..end);
        let mut it = db.raw_iterator_cf_opt(cf(db, Cf::ByKey)?, ro);
        it.seek(&start);
        while let Some((k, v)) = it.item() {
            let suffix = k.get(self.prefix.len()..).unwrap_or_default();
            let key = disk_key(suffix).map_err(|m| self.corrupt(Cf::ByKey, k, m))?;
            let doc = decode_doc(key, v, true).map_err(|m| self.corrupt(Cf::ByKey, k, m))?;
            match visit(doc) {
                ScanControl::Continue => {}
                ScanControl::Yield | ScanControl::Stop => return Ok(ScanStatus::Stopped),
            }
            it.next();
        }
        it.status().map_err(backend)?;
        self.check_deleted()?;
        Ok(ScanStatus::Done)
    }

    fn seqno_scan(
        &self,
        start: Seqno,
        end: Seqno,
        opts: ScanOptions,
    ) -> StoreResult<Box<dyn SeqnoScan>> {
        self.check()?;
        let scan = RocksScan::new(
            Arc::clone(&self.shared.db),
            self.shared.path.clone(),
            self.prefix,
            start,
            end,
            opts,
        )?;
        match scan {
            Some(scan) => Ok(Box::new(scan)),
            None => Err(StoreError::Deleted {
                vbid: self.vbid,
                revision: self.revision,
            }),
        }
    }

    fn rollback(&self, to: Seqno) -> StoreResult<RollbackResult> {
        self.check()?;
        let mut w = self.lock_writer();
        self.check()?;
        let current = w.header;
        if current.high <= to.0 {
            return Ok(RollbackResult {
                high_seqno: Seqno(current.high),
                ..RollbackResult::default()
            });
        }
        let db = &*self.shared.db;
        let (bykey, byseqno, undo_cf) =
            (cf(db, Cf::ByKey)?, cf(db, Cf::BySeqno)?, cf(db, Cf::Undo)?);

        // Walk the undo records from the newest. Older records overwrite
        // the entries of newer ones, so each key ends with its version from
        // before the oldest undone commit that overwrote it.
        let mut header = current;
        let mut docs: BTreeMap<DiskKey, Vec<u8>> = BTreeMap::new();
        let mut locals: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
        while header.high > to.0 && header.commit_no >= header.undo_low && header.commit_no > 0 {
            let key = num_key(&self.prefix, header.commit_no);
            let raw = db.get_pinned_cf(undo_cf, key).map_err(backend)?;
            let Some(raw) = raw else {
                return Err(self.corrupt(
                    Cf::Undo,
                    &key,
                    Malformed {
                        what: "undo record",
                        detail: format!("record of commit {} is missing", header.commit_no),
                    },
                ));
            };
            let rec = UndoRecord::decode(&raw).map_err(|m| self.corrupt(Cf::Undo, &key, m))?;
            docs.extend(rec.docs);
            locals.extend(rec.locals);
            header = Header {
                undo_low: header.undo_low,
                ..rec.prev
            };
        }
        if header.high > to.0 {
            return self.rollback_to_zero(&mut w);
        }
        let target = header.high;

        // Every key an undone commit wrote is in the by-seqno records above
        // the target (one or more per undone commit), including keys the
        // undone commits created.
        let mut touched: BTreeSet<DiskKey> = docs.keys().cloned().collect();
        let mut ro = ReadOptions::default();
        let from = num_key(&self.prefix, target.saturating_add(1));
        ro.set_iterate_range(from.to_vec()..self.end.clone());
        let mut it = db.raw_iterator_cf_opt(byseqno, ro);
        it.seek(from);
        while let Some((k, v)) = it.item() {
            let bad = |m| self.corrupt(Cf::BySeqno, k, m);
            let at = parse_num_key(k).ok_or_else(|| {
                bad(Malformed {
                    what: "by-seqno key",
                    detail: format!("{} bytes", k.len()),
                })
            })?;
            for e in decode_seq_record(v, at).map_err(bad)? {
                touched.insert(disk_key(e.key).map_err(bad)?);
            }
            it.next();
        }
        it.status().map_err(backend)?;
        drop(it);

        let touched: Vec<DiskKey> = touched.into_iter().collect();
        let keys: Vec<Vec<u8>> = touched
            .iter()
            .map(|k| data_key(&self.prefix, k.as_bytes()))
            .collect();
        let currents = db.batched_multi_get_cf(bykey, keys.iter(), true);
        let mut wb = WriteBatch::default();
        let mut counts = current;
        let mut discarded = Vec::new();
        for ((key, raw_key), cur) in touched.iter().zip(&keys).zip(currents) {
            let cur = cur.map_err(backend)?;
            let cur: Option<&[u8]> = cur.as_deref();
            let restored = match docs.get(key) {
                Some(prev) => Some(&prev[..]),
                None => cur,
            };
            // A version newer than the target was created by an undone
            // commit that had no earlier version to restore.
            let restored = match restored {
                Some(raw) => {
                    let (meta, value) =
                        decode_meta(raw).map_err(|m| self.corrupt(Cf::ByKey, raw_key, m))?;
                    let body = body_size(key.len(), value);
                    (meta.seqno.0 <= target).then_some((raw, meta, body))
                }
                None => None,
            };
            if cur == restored.map(|(raw, _, _)| raw) {
                continue;
            }
            discarded.push(key.clone());
            if let Some(cur) = cur {
                let (meta, value) =
                    decode_meta(cur).map_err(|m| self.corrupt(Cf::ByKey, raw_key, m))?;
                counts.account(meta.deleted.is_some(), body_size(key.len(), value), false);
            }
            // A restored version's by-seqno entry is still in its record
            // (entries of overwritten versions are only removed by a
            // compaction, which also ends the history), so restoring the
            // document makes the entry current again.
            match restored {
                Some((raw, meta, body)) => {
                    wb.put_cf(bykey, raw_key, raw);
                    counts.account(meta.deleted.is_some(), body, true);
                }
                None => wb.delete_cf(bykey, raw_key),
            }
        }
        // The records of the undone commits.
        wb.delete_range_cf(byseqno, &from[..], &self.end[..]);
        let local_cf = cf(db, Cf::Local)?;
        for (name, value) in &locals {
            let key = data_key(&self.prefix, name.as_bytes());
            match value {
                Some(v) => wb.put_cf(local_cf, key, v),
                None => wb.delete_cf(local_cf, key),
            }
        }
        wb.delete_range_cf(
            undo_cf,
            &num_key(&self.prefix, header.commit_no.saturating_add(1))[..],
            &self.end[..],
        );
        if (counts.live, counts.deleted, counts.data_bytes)
            != (header.live, header.deleted, header.data_bytes)
        {
            tracing::warn!(vbid = %self.vbid, revision = %self.revision,
                "rollback: recounted totals differ from the restored header; using the recount");
        }
        let restored = Header {
            high: target,
            purge: current.purge,
            live: counts.live,
            deleted: counts.deleted,
            data_bytes: counts.data_bytes,
            commit_no: header.commit_no,
            undo_low: header.undo_low,
        };
        wb.put_cf(cf(db, Cf::Meta)?, self.prefix, restored.encode());
        self.write(wb)?;
        self.publish(&mut w, restored);
        w.rollbacks += 1;
        if !locals.is_empty() {
            w.locals = None;
        }
        tracing::debug!(vbid = %self.vbid, revision = %self.revision, from = current.high,
            to = target, discarded = discarded.len(), "rolled back");
        Ok(RollbackResult {
            high_seqno: Seqno(target),
            discarded,
            to_zero: false,
        })
    }

    fn compact(&self, config: &CompactionConfig) -> StoreResult<CompactionResult> {
        self.check()?;
        let _one_at_a_time = lock(&self.compacting);
        let db = &*self.shared.db;
        let cfs = Cf::ALL
            .iter()
            .map(|&c| cf(db, c))
            .collect::<StoreResult<Vec<_>>>()?;
        if config.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        // Flush first so the size estimate sees what the memtables hold.
        if let Err(e) = db.flush_cfs_opt(&cfs, &FlushOptions::default()) {
            self.poison(e.to_string());
            return Err(backend(e));
        }
        let bytes_before = self.disk_estimate(true)?;
        let rollbacks_before = self.lock_writer().rollbacks;

        // Find candidates under a snapshot, without blocking writers, and
        // the by-seqno records to rewrite without their stale entries.
        let mut candidates = Vec::new();
        let mut rewrites: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
        let mut stale_entries = 0u64;
        {
            let snap = db.snapshot();
            let high = match snap
                .get_pinned_cf(cf(db, Cf::Meta)?, self.prefix)
                .map_err(backend)?
            {
                Some(raw) => {
                    Header::decode(&raw)
                        .map_err(|m| self.corrupt(Cf::Meta, &self.prefix, m))?
                        .high
                }
                None => {
                    return Err(StoreError::Deleted {
                        vbid: self.vbid,
                        revision: self.revision,
                    });
                }
            };
            let mut ro = ReadOptions::default();
            ro.set_iterate_range(self.prefix.to_vec()..self.end.clone());
            ro.fill_cache(false);
            let mut it = snap.raw_iterator_cf_opt(cf(db, Cf::ByKey)?, ro);
            it.seek(self.prefix);
            let mut seen = 0usize;
            let mut live: Vec<u64> = Vec::new();
            while let Some((k, v)) = it.item() {
                seen += 1;
                if seen.is_multiple_of(CANCEL_CHECK_EVERY) && config.is_cancelled() {
                    return Err(StoreError::Cancelled);
                }
                let suffix = k.get(self.prefix.len()..).unwrap_or_default();
                let key = disk_key(suffix).map_err(|m| self.corrupt(Cf::ByKey, k, m))?;
                let doc = decode_doc(key, v, false).map_err(|m| self.corrupt(Cf::ByKey, k, m))?;
                if config.is_dropped(&doc) || config.purges_tombstone(&doc, Seqno(high)) {
                    candidates.push(Candidate {
                        seqno: doc.meta.seqno,
                        key: doc.key,
                    });
                } else {
                    live.push(doc.meta.seqno.0);
                }
                it.next();
            }
            it.status().map_err(backend)?;
            drop(it);

            // An entry is stale when its seqno is no longer any document's:
            // the key was overwritten, or its version is about to be purged
            // (a candidate that a commit overwrites meanwhile is stale too).
            live.sort_unstable();
            let mut ro = ReadOptions::default();
            let upper = match high.checked_add(1) {
                Some(h) => num_key(&self.prefix, h).to_vec(),
                None => self.end.clone(),
            };
            ro.set_iterate_range(self.prefix.to_vec()..upper);
            ro.fill_cache(false);
            let mut it = snap.raw_iterator_cf_opt(cf(db, Cf::BySeqno)?, ro);
            it.seek(self.prefix);
            let mut record = SeqRecordBuilder::new(SEQ_RECORD_MAX);
            while let Some((k, v)) = it.item() {
                seen += 1;
                if seen.is_multiple_of(CANCEL_CHECK_EVERY) && config.is_cancelled() {
                    return Err(StoreError::Cancelled);
                }
                let bad = |m| self.corrupt(Cf::BySeqno, k, m);
                let at = parse_num_key(k).ok_or_else(|| {
                    bad(Malformed {
                        what: "by-seqno key",
                        detail: format!("{} bytes", k.len()),
                    })
                })?;
                let entries = decode_seq_record(v, at).map_err(bad)?;
                let before = entries.len();
                for e in entries {
                    if live.binary_search(&e.seqno).is_ok() {
                        record.push(e.seqno, e.key, e.deleted);
                    }
                }
                if record.len() < before {
                    stale_entries += (before - record.len()) as u64;
                    let kept = (record.len() > 0).then(|| record.take());
                    rewrites.push((k.to_vec(), kept));
                } else {
                    record.take();
                }
                it.next();
            }
            it.status().map_err(backend)?;
        }
        if config.is_cancelled() {
            return Err(StoreError::Cancelled);
        }

        // Apply under the writer lock, re-checking each candidate against
        // its current version: a commit made since the scan wins.
        let mut w = self.lock_writer();
        self.check()?;
        if config.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        let mut header = w.header;
        let (bykey, byseqno) = (cf(db, Cf::ByKey)?, cf(db, Cf::BySeqno)?);
        let keys: Vec<Vec<u8>> = candidates
            .iter()
            .map(|c| data_key(&self.prefix, c.key.as_bytes()))
            .collect();
        let currents = db.batched_multi_get_cf(bykey, keys.iter(), true);
        let mut wb = WriteBatch::default();
        let (mut tombstones, mut collection_items) = (0u64, 0u64);
        let high = Seqno(header.high);
        for ((cand, key), cur) in candidates.iter().zip(&keys).zip(currents) {
            let Some(cur) = cur.map_err(backend)? else {
                continue;
            };
            let (meta, value) = decode_meta(&cur).map_err(|m| self.corrupt(Cf::ByKey, key, m))?;
            let body = body_size(cand.key.len(), value);
            let doc = Document {
                key: cand.key.clone(),
                meta,
                value: Bytes::new(),
            };
            if doc.meta.seqno != cand.seqno {
                continue;
            }
            if config.is_dropped(&doc) {
                collection_items += 1;
            } else if config.purges_tombstone(&doc, high) {
                tombstones += 1;
                header.purge = header.purge.max(doc.meta.seqno.0);
            } else {
                continue;
            }
            wb.delete_cf(bykey, key);
            header.account(doc.is_deleted(), body, false);
        }
        // A rollback since the snapshot may have made stale entries current
        // again; they wait for the next compaction then.
        if w.rollbacks == rollbacks_before {
            for (key, record) in &rewrites {
                match record {
                    Some(r) => wb.put_cf(byseqno, key, r),
                    None => wb.delete_cf(byseqno, key),
                }
            }
        } else {
            stale_entries = 0;
        }
        // Compaction ends the rollback history, as compacting a couchfile
        // drops its old headers.
        let had_history = header.undo_low <= header.commit_no;
        header.undo_low = header.commit_no.saturating_add(1);
        if had_history {
            wb.delete_range_cf(cf(db, Cf::Undo)?, &self.prefix[..], &self.end[..]);
        }
        if !wb.is_empty() {
            wb.put_cf(cf(db, Cf::Meta)?, self.prefix, header.encode());
            self.write(wb)?;
            self.publish(&mut w, header);
        }
        drop(w);

        // Reclaim the space of what was deleted, and of overwritten
        // versions, in this revision's ranges only.
        let mut opts = CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
        for c in &cfs {
            db.compact_range_cf_opt(*c, Some(&self.prefix[..]), Some(&self.end[..]), &opts);
        }
        let bytes_after = self.disk_estimate(true)?;
        tracing::debug!(vbid = %self.vbid, revision = %self.revision, tombstones,
            collection_items, stale_entries, bytes_before, bytes_after, "compacted");
        Ok(CompactionResult {
            bytes_before,
            bytes_after,
            tombstones_purged: tombstones,
            collection_items_purged: collection_items,
            purge_seqno: Seqno(header.purge),
        })
    }

    fn get_local(&self, name: &str) -> StoreResult<Option<Bytes>> {
        self.check()?;
        let db = &*self.shared.db;
        let raw = db
            .get_pinned_cf(cf(db, Cf::Local)?, data_key(&self.prefix, name.as_bytes()))
            .map_err(backend)?;
        self.check_deleted()?;
        Ok(raw.map(|r| Bytes::copy_from_slice(&r)))
    }

    fn list_local(&self) -> StoreResult<Vec<(String, Bytes)>> {
        self.check()?;
        let db = &*self.shared.db;
        let mut ro = ReadOptions::default();
        ro.set_iterate_range(self.prefix.to_vec()..self.end.clone());
        let mut it = db.raw_iterator_cf_opt(cf(db, Cf::Local)?, ro);
        it.seek(self.prefix);
        let mut out = Vec::new();
        while let Some((k, v)) = it.item() {
            let suffix = k.get(self.prefix.len()..).unwrap_or_default();
            let name = std::str::from_utf8(suffix).map_err(|e| {
                self.corrupt(
                    Cf::Local,
                    k,
                    Malformed {
                        what: "local document name",
                        detail: e.to_string(),
                    },
                )
            })?;
            out.push((name.to_owned(), Bytes::copy_from_slice(v)));
            it.next();
        }
        it.status().map_err(backend)?;
        self.check_deleted()?;
        Ok(out)
    }

    fn vbstate(&self) -> StoreResult<Option<VbucketState>> {
        self.check()?;
        let db = &*self.shared.db;
        // One snapshot, so the state and the seqnos are from one commit.
        let snap = db.snapshot();
        let key = data_key(&self.prefix, VBSTATE_LOCAL_NAME.as_bytes());
        let Some(raw) = snap
            .get_pinned_cf(cf(db, Cf::Local)?, &key)
            .map_err(backend)?
        else {
            self.check_deleted()?;
            return Ok(None);
        };
        let mut state = VbucketState::decode(&raw)?;
        let header = match snap
            .get_pinned_cf(cf(db, Cf::Meta)?, self.prefix)
            .map_err(backend)?
        {
            Some(h) => Header::decode(&h).map_err(|m| self.corrupt(Cf::Meta, &self.prefix, m))?,
            None => {
                return Err(StoreError::Deleted {
                    vbid: self.vbid,
                    revision: self.revision,
                });
            }
        };
        state.high_seqno = Seqno(header.high);
        state.purge_seqno = Seqno(header.purge);
        Ok(Some(state))
    }

    fn info(&self) -> StoreResult<StoreInfo> {
        self.check()?;
        let h = *lock(&self.published);
        let disk = self.disk_estimate(false)?;
        Ok(StoreInfo {
            vbid: self.vbid,
            revision: self.revision,
            high_seqno: Seqno(h.high),
            purge_seqno: Seqno(h.purge),
            live_items: h.live,
            deleted_items: h.deleted,
            data_bytes: h.data_bytes,
            // RocksDB's estimate leaves out the memtables, so recent data
            // is counted at its logical size until it is flushed.
            file_bytes: disk.max(h.data_bytes),
            ..StoreInfo::default()
        })
    }
}
