//! Read-only inspection of a couchfile, for the `couchfile` tool and tests.

use crate::btree::iterate;
use crate::cache::NodeCache;
use crate::codec::{decode_key_value, decode_seqno_value, parse_seqno_key};
use crate::file::{CouchFile, Opened};
use crate::header::Header;
use crate::io::Io;
use kvstore_core::{DiskKey, StoreError, StoreResult};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;

/// Opens a file for reading only; a torn tail is reported, not removed.
pub fn open_read_only(path: &Path) -> StoreResult<Opened> {
    CouchFile::open(path, false, Io::default(), NodeCache::new(16 << 20))
}

/// A header, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct HeaderInfo {
    /// Where the header block starts.
    pub offset: u64,
    /// The vbucket.
    pub vbid: u16,
    /// The file revision.
    pub revision: u64,
    /// Commits before this one in the file.
    pub commit: u64,
    /// The previous header.
    pub prev: Option<u64>,
    /// The highest seqno.
    pub high_seqno: u64,
    /// The purge seqno.
    pub purge_seqno: u64,
    /// When it was written (seconds since the epoch).
    pub timestamp: u64,
    /// Live documents.
    pub live_items: u64,
    /// Tombstones.
    pub deleted_items: u64,
    /// Key and value bytes of the current documents.
    pub data_bytes: u64,
    /// Local documents.
    pub local_docs: u64,
    /// Bytes written by this commit (its region).
    pub region_bytes: u64,
}

impl From<&Header> for HeaderInfo {
    fn from(h: &Header) -> Self {
        let by_key = h.by_key.map(|r| r.reduce).unwrap_or_default();
        HeaderInfo {
            offset: h.offset,
            vbid: h.vbid.0,
            revision: h.revision.0,
            commit: h.commit,
            prev: h.prev,
            high_seqno: h.high_seqno.0,
            purge_seqno: h.purge_seqno.0,
            timestamp: h.timestamp,
            live_items: by_key.live,
            deleted_items: by_key.deleted,
            data_bytes: by_key.bytes,
            local_docs: h.local.map(|r| r.reduce.count()).unwrap_or(0),
            region_bytes: h.offset - h.region_start,
        }
    }
}

/// What `couchfile info` prints.
#[derive(Debug, Clone, Serialize)]
pub struct FileInfo {
    /// The file.
    pub path: String,
    /// Its size.
    pub file_bytes: u64,
    /// Bytes after the newest header left by a torn commit.
    pub torn_bytes: u64,
    /// The newest header.
    pub header: HeaderInfo,
    /// Entries in the by-seqno tree.
    pub by_seqno_entries: u64,
    /// The share of the file not taken by current documents.
    pub fragmentation: f64,
}

/// Reads a file's summary.
pub fn info(path: &Path) -> StoreResult<FileInfo> {
    let o = open_read_only(path)?;
    let header = HeaderInfo::from(&o.header);
    let file_bytes = o.file.end() + o.torn_bytes;
    let stale = o.file.end().saturating_sub(header.data_bytes);
    Ok(FileInfo {
        path: path.display().to_string(),
        file_bytes,
        torn_bytes: o.torn_bytes,
        by_seqno_entries: o.header.by_seqno.map(|r| r.reduce.count()).unwrap_or(0),
        fragmentation: if o.file.end() == 0 {
            0.0
        } else {
            stale as f64 / o.file.end() as f64
        },
        header,
    })
}

/// Every header of the chain, newest first.
pub fn headers(path: &Path) -> StoreResult<Vec<HeaderInfo>> {
    let o = open_read_only(path)?;
    let mut out = vec![HeaderInfo::from(&o.header)];
    let mut h = o.header;
    while let Some(prev) = h.prev {
        h = o.file.read_header(prev)?;
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

fn doc_info(
    file: &CouchFile,
    key: &DiskKey,
    rec: &crate::codec::DocRecord,
    values: bool,
) -> StoreResult<DocInfo> {
    let value = if values {
        Some(printable(&file.read_value(&rec.value)?))
    } else {
        None
    };
    Ok(DocInfo {
        seqno: rec.meta.seqno.0,
        collection: key.collection().0,
        key: printable(key.user_key()),
        deleted: rec.meta.deleted.is_some(),
        cas: rec.meta.cas.0,
        rev_seqno: rec.meta.rev_seqno.0,
        flags: rec.meta.flags,
        expiry: rec.meta.expiry,
        datatype: rec.meta.datatype.0,
        value_bytes: rec.value.len(),
        value,
    })
}

fn bad(file: &CouchFile, e: crate::codec::DecodeError) -> StoreError {
    StoreError::corrupt(file.path(), 0, e.kind())
}

/// Visits every document in key order.
pub fn dump_by_key(path: &Path, values: bool, visit: &mut dyn FnMut(DocInfo)) -> StoreResult<()> {
    let o = open_read_only(path)?;
    let f = &o.file;
    iterate(&**f, o.header.by_key.as_ref(), b"", None, &mut |k, v| {
        let key = DiskKey::from_shared(k.clone()).map_err(|e| {
            StoreError::corrupt(
                f.path(),
                0,
                kvstore_core::CorruptionKind::Malformed {
                    what: "by-key tree key",
                    detail: e.to_string(),
                },
            )
        })?;
        let rec = decode_key_value(v).map_err(|e| bad(f, e))?;
        visit(doc_info(f, &key, &rec, values)?);
        Ok(true)
    })?;
    Ok(())
}

/// Visits every document in seqno order.
pub fn dump_by_seqno(path: &Path, values: bool, visit: &mut dyn FnMut(DocInfo)) -> StoreResult<()> {
    let o = open_read_only(path)?;
    let f = &o.file;
    iterate(&**f, o.header.by_seqno.as_ref(), b"", None, &mut |k, v| {
        parse_seqno_key(k).map_err(|e| bad(f, e))?;
        let (key, rec) = decode_seqno_value(v).map_err(|e| bad(f, e))?;
        visit(doc_info(f, &key, &rec, values)?);
        Ok(true)
    })?;
    Ok(())
}

/// Every local document: name and value (escaped).
pub fn dump_local(path: &Path) -> StoreResult<Vec<(String, String)>> {
    let o = open_read_only(path)?;
    let mut out = Vec::new();
    iterate(&*o.file, o.header.local.as_ref(), b"", None, &mut |k, v| {
        out.push((printable(k), printable(v)));
        Ok(true)
    })?;
    Ok(out)
}

/// A shared handle for callers that want to read several things from one
/// open file.
pub fn open_shared(path: &Path) -> StoreResult<Arc<CouchFile>> {
    Ok(open_read_only(path)?.file)
}
