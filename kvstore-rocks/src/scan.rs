//! By-seqno scans pinned to a RocksDB snapshot.
//!
//! `rocksdb::Snapshot<'a>` borrows the database, while a [`SeqnoScan`] must
//! be `'static` so a replication stream can park it. [`PinnedSnapshot`]
//! keeps the `Arc<DB>` and the snapshot borrowing it in one value through
//! the `self_cell` crate, which does the self-reference without any unsafe
//! code in this crate and drops the snapshot before the database handle.

use crate::codec::{
    Header, Malformed, Prefix, data_key, decode_doc, decode_seq_record, disk_key, num_key,
    parse_num_key, prefix_end,
};
use crate::db::{Cf, cf};
use crate::error::{backend, corrupt};
use kvstore_core::{Document, ScanControl, ScanOptions, ScanStatus, Seqno, SeqnoScan, StoreResult};
use rocksdb::{DB, ReadOptions, Snapshot};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// How many index entries one refill looks up.
const BATCH: usize = 128;

type Snap<'a> = Snapshot<'a>;

self_cell::self_cell!(
    /// A RocksDB snapshot together with the database handle it borrows.
    struct PinnedSnapshot {
        owner: Arc<DB>,
        #[covariant]
        dependent: Snap,
    }
);

/// A by-seqno scan of one revision under one snapshot.
///
/// It reads the `byseqno` records in order and fetches the documents of
/// their entries, [`BATCH`] at a time, with one multi-get on `bykey`, both
/// under the snapshot taken at creation. An entry whose document has a
/// newer seqno (the key was overwritten) or is gone (purged) is stale and
/// skipped, so each key is delivered once, at its newest version in the
/// snapshot. Entries read but not looked up, and documents fetched but not
/// delivered, wait while the scan is parked; the next records are read by
/// seeking after the last record read, under the same snapshot.
pub(crate) struct RocksScan {
    pinned: PinnedSnapshot,
    path: PathBuf,
    prefix: Prefix,
    /// Where the next record read starts (records holding seqnos at or
    /// above it); `None` once the index is exhausted.
    next: Option<u64>,
    end: u64,
    opts: ScanOptions,
    /// Entries (seqno, disk key) read from the index, not yet looked up.
    pending: VecDeque<(u64, Vec<u8>)>,
    buffer: VecDeque<Document>,
    last: Option<Seqno>,
    high: Seqno,
    stopped: bool,
}

impl RocksScan {
    /// Pins a snapshot now. `None` when the revision does not exist in it
    /// (it was destroyed).
    pub(crate) fn new(
        db: Arc<DB>,
        path: PathBuf,
        prefix: Prefix,
        start: Seqno,
        end: Seqno,
        opts: ScanOptions,
    ) -> StoreResult<Option<Self>> {
        let pinned = PinnedSnapshot::new(db, |db| db.snapshot());
        let header = pinned.with_dependent(|db, snap| -> StoreResult<Option<Header>> {
            let raw = snap
                .get_pinned_cf(cf(db, Cf::Meta)?, prefix)
                .map_err(backend)?;
            raw.map(|raw| {
                Header::decode(&raw).map_err(|m| corrupt(&path, Cf::Meta.name(), &prefix, m))
            })
            .transpose()
        })?;
        let Some(header) = header else {
            return Ok(None);
        };
        Ok(Some(RocksScan {
            pinned,
            path,
            prefix,
            next: (start <= end).then_some(start.0),
            end: end.0,
            opts,
            pending: VecDeque::new(),
            buffer: VecDeque::new(),
            last: None,
            high: Seqno(header.high),
            stopped: false,
        }))
    }

    /// Reads index records until at least [`BATCH`] entries of the range
    /// are pending or the range ends.
    fn read_index(&mut self) -> StoreResult<()> {
        let Some(from) = self.next else {
            return Ok(());
        };
        let (prefix, end, path) = (self.prefix, self.end, &self.path);
        let include_deleted = self.opts.include_deleted;
        let pending = &mut self.pending;
        let next = self
            .pinned
            .with_dependent(|db, snap| -> StoreResult<Option<u64>> {
                let start = num_key(&prefix, from);
                let mut ro = ReadOptions::default();
                ro.set_iterate_range(start.to_vec()..prefix_end(&prefix));
                let mut it = snap.raw_iterator_cf_opt(cf(db, Cf::BySeqno)?, ro);
                it.seek(start);
                let mut next = Some(from);
                while pending.len() < BATCH {
                    let Some((k, v)) = it.item() else {
                        it.status().map_err(backend)?;
                        return Ok(None);
                    };
                    let bad = |m| corrupt(path, Cf::BySeqno.name(), k, m);
                    let at = parse_num_key(k).ok_or_else(|| {
                        bad(Malformed {
                            what: "by-seqno key",
                            detail: format!("{} bytes", k.len()),
                        })
                    })?;
                    for e in decode_seq_record(v, at).map_err(bad)? {
                        if e.seqno < from {
                            continue;
                        }
                        if e.seqno > end {
                            return Ok(None);
                        }
                        // A tombstone entry is never delivered without
                        // tombstones, current or stale.
                        if e.deleted && !include_deleted {
                            continue;
                        }
                        pending.push_back((e.seqno, e.key.to_vec()));
                    }
                    next = at.checked_add(1);
                    if next.is_none_or(|n| n > end) {
                        return Ok(None);
                    }
                    it.next();
                }
                Ok(next)
            })?;
        self.next = next;
        Ok(())
    }

    /// Looks up the next [`BATCH`] pending entries and buffers the
    /// documents of those that are current.
    fn look_up(&mut self) -> StoreResult<()> {
        let n = self.pending.len().min(BATCH);
        let entries: Vec<(u64, Vec<u8>)> = self.pending.drain(..n).collect();
        let (prefix, path, opts) = (self.prefix, &self.path, &self.opts);
        let docs = self
            .pinned
            .with_dependent(|db, snap| -> StoreResult<Vec<Document>> {
                let keys: Vec<Vec<u8>> =
                    entries.iter().map(|(_, k)| data_key(&prefix, k)).collect();
                let mut ro = ReadOptions::default();
                ro.set_snapshot(snap);
                let values =
                    db.batched_multi_get_cf_opt(cf(db, Cf::ByKey)?, keys.iter(), false, &ro);
                let mut docs = Vec::with_capacity(entries.len());
                for (((seqno, raw_key), key), value) in entries.iter().zip(&keys).zip(values) {
                    let index_key = num_key(&prefix, *seqno);
                    let dk = disk_key(raw_key)
                        .map_err(|m| corrupt(path, Cf::BySeqno.name(), &index_key, m))?;
                    // Purged (a tombstone or a dropped collection's item):
                    // the entry is stale.
                    let Some(value) = value.map_err(backend)? else {
                        continue;
                    };
                    let doc = decode_doc(dk, &value, !opts.keys_only)
                        .map_err(|m| corrupt(path, Cf::ByKey.name(), key, m))?;
                    if doc.meta.seqno.0 > *seqno {
                        // Overwritten: the entry is stale.
                        continue;
                    }
                    if doc.meta.seqno.0 < *seqno {
                        return Err(corrupt(
                            path,
                            Cf::BySeqno.name(),
                            &index_key,
                            Malformed {
                                what: "by-seqno entry",
                                detail: format!(
                                    "its document has the older seqno {}",
                                    doc.meta.seqno
                                ),
                            },
                        ));
                    }
                    if doc.is_deleted() && !opts.include_deleted {
                        continue;
                    }
                    docs.push(doc);
                }
                Ok(docs)
            })?;
        self.buffer.extend(docs);
        Ok(())
    }

    /// Fills the buffer with the next documents; leaves it empty only when
    /// the range is done.
    fn refill(&mut self) -> StoreResult<()> {
        while self.buffer.is_empty() && (self.next.is_some() || !self.pending.is_empty()) {
            if self.pending.len() < BATCH {
                self.read_index()?;
            }
            self.look_up()?;
        }
        Ok(())
    }
}

impl SeqnoScan for RocksScan {
    fn snapshot_high_seqno(&self) -> Seqno {
        self.high
    }

    fn run(&mut self, visit: &mut dyn FnMut(Document) -> ScanControl) -> StoreResult<ScanStatus> {
        if self.stopped {
            return Ok(ScanStatus::Stopped);
        }
        loop {
            if self.buffer.is_empty() {
                self.refill()?;
                if self.buffer.is_empty() {
                    return Ok(ScanStatus::Done);
                }
                continue;
            }
            if self.opts.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
                return Ok(ScanStatus::Stopped);
            }
            let Some(doc) = self.buffer.pop_front() else {
                continue;
            };
            self.last = Some(doc.meta.seqno);
            match visit(doc) {
                ScanControl::Continue => {}
                ScanControl::Yield => return Ok(ScanStatus::Yielded),
                ScanControl::Stop => {
                    self.stopped = true;
                    self.buffer.clear();
                    self.pending.clear();
                    self.next = None;
                    return Ok(ScanStatus::Stopped);
                }
            }
        }
    }

    fn last_seqno(&self) -> Option<Seqno> {
        self.last
    }
}

// The scan holds only owned data and a snapshot of an `Arc<DB>`.
const _: () = {
    const fn assert_send<T: Send + 'static>() {}
    assert_send::<RocksScan>();
};
