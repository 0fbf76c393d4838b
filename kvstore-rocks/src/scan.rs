//! By-seqno scans pinned to a RocksDB snapshot.
//!
//! `rocksdb::Snapshot<'a>` borrows the database, while a [`SeqnoScan`] must
//! be `'static` so a replication stream can park it. [`PinnedSnapshot`]
//! keeps the `Arc<DB>` and the snapshot borrowing it in one value through
//! the `self_cell` crate, which does the self-reference without any unsafe
//! code in this crate and drops the snapshot before the database handle.

use crate::codec::{
    Header, Malformed, Prefix, data_key, decode_doc, disk_key, num_key, parse_num_key, prefix_end,
};
use crate::db::{Cf, cf};
use crate::error::{backend, corrupt};
use kvstore_core::{Document, ScanControl, ScanOptions, ScanStatus, Seqno, SeqnoScan, StoreResult};
use rocksdb::{DB, ReadOptions, Snapshot};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

/// How many index entries one refill reads.
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
/// It reads the `byseqno` index in batches and fetches the documents of each
/// batch with one multi-get on `bykey`, both under the snapshot taken at
/// creation. Documents fetched but not yet delivered wait in a small buffer
/// while the scan is parked; the next batch is read by seeking after the
/// last seqno read, under the same snapshot.
pub(crate) struct RocksScan {
    pinned: PinnedSnapshot,
    path: PathBuf,
    prefix: Prefix,
    /// The next seqno to read from the index; `None` once it is exhausted.
    next: Option<u64>,
    end: u64,
    opts: ScanOptions,
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
            buffer: VecDeque::new(),
            last: None,
            high: Seqno(header.high),
            stopped: false,
        }))
    }

    /// Reads the next batch of the index and its documents into the buffer.
    fn refill(&mut self) -> StoreResult<()> {
        let Some(from) = self.next else {
            return Ok(());
        };
        let prefix = self.prefix;
        let path = &self.path;
        let end = self.end;
        let opts = &self.opts;
        let (docs, next) = self.pinned.with_dependent(
            |db, snap| -> StoreResult<(Vec<Document>, Option<u64>)> {
                let start = num_key(&prefix, from);
                let upper = match end.checked_add(1) {
                    Some(e) => num_key(&prefix, e).to_vec(),
                    None => prefix_end(&prefix),
                };
                let mut ro = ReadOptions::default();
                ro.set_iterate_range(start.to_vec()..upper);
                let mut it = snap.raw_iterator_cf_opt(cf(db, Cf::BySeqno)?, ro);
                it.seek(start);
                let mut entries: Vec<(u64, Vec<u8>)> = Vec::with_capacity(BATCH);
                while entries.len() < BATCH
                    && let Some((k, v)) = it.item()
                {
                    let seqno = parse_num_key(k).ok_or_else(|| {
                        corrupt(
                            path,
                            Cf::BySeqno.name(),
                            k,
                            Malformed {
                                what: "by-seqno key",
                                detail: format!("{} bytes", k.len()),
                            },
                        )
                    })?;
                    entries.push((seqno, v.to_vec()));
                    it.next();
                }
                it.status().map_err(backend)?;
                let more = it.valid();
                drop(it);

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
                    let bad_entry = |detail: String| {
                        corrupt(
                            path,
                            Cf::BySeqno.name(),
                            &index_key,
                            Malformed {
                                what: "by-seqno entry",
                                detail,
                            },
                        )
                    };
                    let Some(value) = value.map_err(backend)? else {
                        return Err(bad_entry("points at a missing document".into()));
                    };
                    let doc = decode_doc(dk, &value, !opts.keys_only)
                        .map_err(|m| corrupt(path, Cf::ByKey.name(), key, m))?;
                    if doc.meta.seqno.0 != *seqno {
                        return Err(bad_entry(format!("document has seqno {}", doc.meta.seqno)));
                    }
                    if doc.is_deleted() && !opts.include_deleted {
                        continue;
                    }
                    docs.push(doc);
                }
                let next = match entries.last() {
                    Some((s, _)) if more => s.checked_add(1),
                    _ => None,
                };
                Ok((docs, next))
            },
        )?;
        self.buffer.extend(docs);
        self.next = next;
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
                if self.next.is_none() {
                    return Ok(ScanStatus::Done);
                }
                self.refill()?;
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
