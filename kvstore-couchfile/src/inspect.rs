//! Read-only inspection of a vbucket revision's directory, for the
//! `couchfile` tool and tests.
//!
//! Opening for inspection reads the newest index header and replays the log
//! after it in memory, exactly as a store open does, but writes nothing:
//! no torn tail is cut, no leftover removed, and the data directory's lock
//! is not taken, so a running store can be inspected.

use crate::block::BLOCK_SIZE;
use crate::header::Header;
use crate::store::{CouchConfig, CouchVb, Shared, parse_name};
use crate::wal::{Probe, RecordKind, decode_item_head, probe};
use kvstore_core::{
    CorruptionKind, Document, KeyRange, ScanControl, ScanOptions, Seqno, StoreError, StoreResult,
    VbStore,
};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// Opens the revision in `dir` (a `<vbid>.couch.<rev>` directory) without
/// changing anything on disk.
pub fn open(dir: &Path) -> StoreResult<Arc<CouchVb>> {
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_name)
        .ok_or_else(|| {
            StoreError::corrupt(
                dir,
                0,
                CorruptionKind::Malformed {
                    what: "store directory",
                    detail: "its name is not <vbid>.couch.<rev>".into(),
                },
            )
        })?;
    if !dir.is_dir() {
        return Err(StoreError::io(
            "open",
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let config = CouchConfig {
        background: false,
        cache_bytes: 16 << 20,
        block_cache_bytes: 16 << 20,
        ..CouchConfig::default()
    };
    let shared = Shared::read_only(dir.parent().unwrap_or(dir), config);
    CouchVb::open_read_only(&shared, name.0, name.1, dir)
}

/// A header, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderInfo {
    /// Where the header block starts in the index file.
    pub offset: u64,
    /// The vbucket.
    pub vbid: u16,
    /// The revision.
    pub revision: u64,
    /// Checkpoints before this one.
    pub checkpoint: u64,
    /// The previous header.
    pub prev: Option<u64>,
    /// The highest seqno the trees hold.
    pub high_seqno: u64,
    /// The purge seqno.
    pub purge_seqno: u64,
    /// When it was written (seconds since the epoch).
    pub timestamp: u64,
    /// Live documents in the trees.
    pub live_items: u64,
    /// Tombstones in the trees.
    pub deleted_items: u64,
    /// Key and value bytes of the current documents in the trees.
    pub data_bytes: u64,
    /// Local documents.
    pub local_docs: u64,
    /// Bytes written by this checkpoint (its region).
    pub region_bytes: u64,
    /// Where log replay starts: segment and offset.
    pub replay_from: (u32, u64),
    /// The commit number of the first record replayed.
    pub next_commit: u64,
    /// Log bytes reclaimed so far.
    pub reclaimed_bytes: u64,
}

impl From<&Header> for HeaderInfo {
    fn from(h: &Header) -> Self {
        let by_key = h.by_key.map(|r| r.reduce).unwrap_or_default();
        HeaderInfo {
            offset: h.offset,
            vbid: h.vbid.0,
            revision: h.revision.0,
            checkpoint: h.commit,
            prev: h.prev,
            high_seqno: h.high_seqno.0,
            purge_seqno: h.purge_seqno.0,
            timestamp: h.timestamp,
            live_items: by_key.live,
            deleted_items: by_key.deleted,
            data_bytes: by_key.bytes,
            local_docs: h.local.map(|r| r.reduce.count()).unwrap_or(0),
            region_bytes: h.offset - h.region_start,
            replay_from: (h.wal_seg, h.wal_off),
            next_commit: h.next_commit,
            reclaimed_bytes: h.reclaimed,
        }
    }
}

/// One log segment, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct SegmentInfo {
    /// Its number.
    pub no: u32,
    /// Its file size.
    pub file_bytes: u64,
    /// Document bytes written to it.
    pub item_bytes: u64,
    /// Document bytes current versions still point at.
    pub live_bytes: u64,
}

/// What `couchfile info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSummary {
    /// The directory.
    pub path: String,
    /// The newest index header.
    pub header: HeaderInfo,
    /// The index file's size.
    pub index_bytes: u64,
    /// Every file's size together.
    pub disk_bytes: u64,
    /// The highest seqno, log records after the checkpoint included.
    pub high_seqno: u64,
    /// Live documents, log included.
    pub live_items: u64,
    /// Tombstones, log included.
    pub deleted_items: u64,
    /// Key and value bytes of the current documents.
    pub data_bytes: u64,
    /// Log records after the checkpoint (replayed at open).
    pub records_after_checkpoint: u64,
    /// The log segments.
    pub segments: Vec<SegmentInfo>,
    /// The share of the log not taken by current documents.
    pub log_fragmentation: f64,
}

/// A revision's summary.
pub fn info(dir: &Path) -> StoreResult<StoreSummary> {
    let vb = open(dir)?;
    let v = vb.view();
    let segs = vb.segment_stats();
    let (item, live): (u64, u64) = segs
        .iter()
        .fold((0, 0), |a, s| (a.0 + s.total, a.1 + s.live));
    let info = vb.info()?;
    Ok(StoreSummary {
        path: dir.display().to_string(),
        header: HeaderInfo::from(&v.index.header),
        index_bytes: v.index.file.end(),
        disk_bytes: info.file_bytes,
        high_seqno: info.high_seqno.0,
        live_items: info.live_items,
        deleted_items: info.deleted_items,
        data_bytes: info.data_bytes,
        records_after_checkpoint: v
            .commit
            .saturating_sub(v.index.header.next_commit.saturating_sub(1)),
        segments: segs
            .iter()
            .map(|s| SegmentInfo {
                no: s.no,
                file_bytes: s.phys,
                item_bytes: s.total,
                live_bytes: s.live,
            })
            .collect(),
        log_fragmentation: if item == 0 {
            0.0
        } else {
            (item - live) as f64 / item as f64
        },
    })
}

/// Every index header of the rollback chain, newest first.
pub fn headers(dir: &Path) -> StoreResult<Vec<HeaderInfo>> {
    let vb = open(dir)?;
    let v = vb.view();
    let mut out = vec![HeaderInfo::from(&v.index.header)];
    let mut h = v.index.header.clone();
    while let Some(prev) = h.prev {
        h = v.index.file.read_header(prev)?;
        out.push(HeaderInfo::from(&h));
    }
    Ok(out)
}

/// One document, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct DocInfo {
    /// The seqno.
    pub seqno: u64,
    /// The collection id.
    pub collection: u32,
    /// The user key (escaped where not printable).
    pub key: String,
    /// Tombstone?
    pub deleted: bool,
    /// CAS.
    pub cas: u64,
    /// Rev seqno.
    pub rev_seqno: u64,
    /// Flags.
    pub flags: u32,
    /// Expiry (deletion time for a tombstone).
    pub expiry: u32,
    /// Datatype bits.
    pub datatype: u8,
    /// Value length.
    pub value_bytes: u64,
    /// The value, escaped, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// Bytes as text: UTF-8 without control characters as is, anything else
/// escaped.
#[must_use]
pub fn printable(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => b.escape_ascii().to_string(),
    }
}

fn doc_info(d: &Document, values: bool) -> DocInfo {
    DocInfo {
        seqno: d.meta.seqno.0,
        collection: d.key.collection().0,
        key: printable(d.key.user_key()),
        deleted: d.is_deleted(),
        cas: d.meta.cas.0,
        rev_seqno: d.meta.rev_seqno.0,
        flags: d.meta.flags,
        expiry: d.meta.expiry,
        datatype: d.meta.datatype.0,
        value_bytes: d.value.len() as u64,
        value: values.then(|| printable(&d.value)),
    }
}

/// Visits every document (tombstones too) in key order.
pub fn dump_by_key(dir: &Path, values: bool, visit: &mut dyn FnMut(DocInfo)) -> StoreResult<()> {
    let vb = open(dir)?;
    vb.key_range(&KeyRange::all(), &mut |d| {
        visit(doc_info(&d, values));
        ScanControl::Continue
    })?;
    Ok(())
}

/// Visits every document (tombstones too) in seqno order.
pub fn dump_by_seqno(dir: &Path, values: bool, visit: &mut dyn FnMut(DocInfo)) -> StoreResult<()> {
    let vb = open(dir)?;
    let mut scan = vb.seqno_scan(
        Seqno(0),
        Seqno(u64::MAX),
        ScanOptions {
            include_deleted: true,
            ..ScanOptions::default()
        },
    )?;
    scan.run(&mut |d| {
        visit(doc_info(&d, values));
        ScanControl::Continue
    })?;
    Ok(())
}

/// Every local document: name and value (escaped).
pub fn dump_local(dir: &Path) -> StoreResult<Vec<(String, String)>> {
    let vb = open(dir)?;
    Ok(vb
        .list_local()?
        .into_iter()
        .map(|(k, v)| (printable(k.as_bytes()), printable(&v)))
        .collect())
}

/// The log segments.
pub fn segments(dir: &Path) -> StoreResult<Vec<SegmentInfo>> {
    Ok(info(dir)?.segments)
}

/// One log record, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct RecordInfo {
    /// The segment.
    pub segment: u32,
    /// The record's offset in it.
    pub offset: u64,
    /// Commit, relocate or purge.
    pub kind: &'static str,
    /// The store's commit number.
    pub commit: u64,
    /// The high seqno after it.
    pub high_seqno: u64,
    /// Its size on disk.
    pub bytes: u64,
    /// Documents in it.
    pub items: usize,
    /// The seqnos of its documents.
    pub seqnos: Vec<u64>,
}

/// Visits every record of every segment, in log order; the first damaged
/// or empty block ends a segment.
pub fn dump_log(dir: &Path, visit: &mut dyn FnMut(RecordInfo)) -> StoreResult<()> {
    let vb = open(dir)?;
    let v = vb.view();
    for (no, seg) in v.segments.iter() {
        let f = seg.slot.get()?;
        let len = f.size()?;
        let mut pos = BLOCK_SIZE;
        while let Probe::Record(r) = probe(&f, *no, len, pos)? {
            let p = r
                .payload()
                .map_err(|e| StoreError::corrupt(f.path(), pos, e.kind()))?;
            let mut seqnos = Vec::with_capacity(p.items.len());
            for (ptr, raw) in &p.items {
                let h = decode_item_head(raw)
                    .map_err(|e| StoreError::corrupt(f.path(), ptr.off, e.kind()))?;
                seqnos.push(h.meta.seqno.0);
            }
            if r.kind == RecordKind::Purge {
                seqnos.extend(p.purges.iter().map(|x| x.1.0));
            }
            visit(RecordInfo {
                segment: *no,
                offset: pos,
                kind: match r.kind {
                    RecordKind::Commit => "commit",
                    RecordKind::Relocate => "relocate",
                    RecordKind::Purge => "purge",
                },
                commit: r.commit,
                high_seqno: r.high.0,
                bytes: r.phys_len,
                items: p.items.len().max(p.purges.len()),
                seqnos,
            });
            pos += r.phys_len;
        }
    }
    Ok(())
}
