//! The write-ahead value log: every commit is one record appended to the
//! store's newest log segment and made durable with one `fdatasync`.
//! Documents stay in the log after the commit (key-value separation): the
//! index points at them, and space reclamation copies the live ones out of
//! sparse segments.
//!
//! # Segments
//!
//! A segment is a file `wal.<n>` of 4 KiB blocks. Block 0 is the segment
//! header (marker `0x03`). Every later block starts with a marker byte, as
//! in the index files: `0x02` starts a record, `0x00` continues one (or is
//! unused, zero-filled space). Record bytes are written as a logical stream
//! that skips the marker bytes, so no byte a client chooses can ever sit
//! where a marker goes, and a record start can never be forged by a value.
//!
//! # Records
//!
//! A record starts at a block boundary. Its logical bytes are a 40-byte
//! header (magic, kind, the store's commit number, the high seqno after it,
//! the payload length, the payload's CRC32C and the header's own CRC32C)
//! and the payload. The payload of a commit holds its documents, each an
//! *item*: its body length, the CRC32C of its body, and the body (key,
//! metadata, value, the value Snappy-compressed when that pays), then the
//! local-document changes. An item is addressed by a [`WalPtr`]: segment,
//! physical offset of its first byte, logical length, so a read of one
//! document checks that document's own CRC and nothing else.
//!
//! # Durability and recovery
//!
//! A commit is one `pwrite` at the end of the segment and one `fdatasync`.
//! Small records are followed by zero-filled space (a quarter of the file,
//! 64 KiB to 4 MiB) in the same write, so the file is extended rarely and
//! most syncs flush only data blocks, not the inode. On open, records are read from the index's replay
//! position until a block that does not start a valid record. If that block
//! is empty (zeros, or the end of the file), the log ends there. If it holds
//! a damaged record, it is a torn final commit when no valid record follows
//! it anywhere (a commit starts only after the previous one's sync
//! returned); otherwise the damage is reported as corruption.
//!
//! A failed write leaves garbage after the last durable record: the writer
//! remembers how far it may reach and zeroes it as part of the next write.
//! A failed sync *poisons* the writer (the kernel may have dropped the dirty
//! pages and cleared the error): before anything else is written, it
//! reopens the file and overwrites the failed region with zeros, synced, so
//! a commit whose sync failed is refused, never kept by accident.

use crate::block::{BLOCK_SIZE, MARKER_DATA};
use crate::cache::BlockCache;
use crate::codec::{DecodeError, DecodeResult, Reader, put_bytes, put_varint};
use crate::fdcache::{FdCache, FileSlot, StoreDir};
use crate::io::{FileIo, sync_dir};
use bytes::Bytes;
use kvstore_core::{
    Cas, CorruptionKind, Datatype, DeleteSource, DiskKey, DocMeta, Document, RevSeqno, Revision,
    Seqno, StoreError, StoreResult, Vbid,
};
use std::sync::Arc;

/// The first byte of a block that starts a record.
pub const MARKER_RECORD: u8 = 0x02;
/// The first byte of a segment's header block.
pub const MARKER_SEGMENT: u8 = 0x03;
/// Logical bytes per block (the rest is the marker).
pub const BLOCK_PAYLOAD: u64 = BLOCK_SIZE - 1;
/// The logical length of a record header.
pub const RECORD_HEADER_LEN: usize = 40;
/// The largest record payload.
pub const MAX_RECORD_LEN: u64 = 1 << 30;
/// The largest item (a 20 MiB value plus its key and metadata, with room).
pub const MAX_ITEM_LEN: u64 = 64 << 20;
const RECORD_MAGIC: [u8; 4] = *b"CFWR";
const SEGMENT_MAGIC: [u8; 4] = *b"CFWS";
/// The log format version.
pub const WAL_VERSION: u8 = 1;
/// Records smaller than this count as small: a writer of small records
/// gets zero-filled space ahead of it, written in the background.
pub const PREALLOC_BELOW: u64 = 64 << 10;
/// When less than this much zero-filled space is left ahead of the writer,
/// more is added.
pub const PREALLOC_LOW: u64 = 256 << 10;
/// Zero-filled space is added in steps of a quarter of the file, between
/// these bounds, so a small vbucket's segment stays small.
const PREALLOC_MIN: u64 = 64 << 10;
const PREALLOC_MAX: u64 = 1 << 20;

/// A zero-fill of the space ahead of the writer, done in the background.
#[derive(Debug, Default)]
pub struct Prealloc {
    state: std::sync::Mutex<PreallocState>,
    done: std::sync::Condvar,
}

#[derive(Debug, Default, Clone, Copy)]
struct PreallocState {
    /// A fill of `[from, ..)` is running: the writer must not write at or
    /// past `from` until it ends.
    running_from: Option<u64>,
    /// Zeros reach this far (durably).
    zeroed_to: u64,
}

impl Prealloc {
    fn lock(&self) -> std::sync::MutexGuard<'_, PreallocState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How far zeros reach, waiting first for a running fill if a write up
    /// to `end` would reach into it.
    fn settled(&self, end: u64) -> u64 {
        let mut g = self.lock();
        while g.running_from.is_some_and(|f| end > f) {
            g = self
                .done
                .wait(g)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        g.zeroed_to
    }

    /// Starts a fill from `from` unless one runs.
    fn begin(&self, from: u64) -> bool {
        let mut g = self.lock();
        if g.running_from.is_some() {
            return false;
        }
        g.running_from = Some(from);
        true
    }

    fn end(&self, zeroed_to: Option<u64>) {
        let mut g = self.lock();
        g.running_from = None;
        if let Some(z) = zeroed_to {
            g.zeroed_to = g.zeroed_to.max(z);
        }
        drop(g);
        self.done.notify_all();
    }
}

/// What a record does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A commit: documents and local-document changes.
    Commit,
    /// Documents copied out of a sparse segment by space reclamation, with
    /// their original seqnos; each applies only if it is still the
    /// document's current version.
    Relocate,
    /// Documents removed by compaction (purged tombstones and items of
    /// dropped collections), each only if still at the given seqno.
    Purge,
}

impl RecordKind {
    fn tag(self) -> u8 {
        match self {
            RecordKind::Commit => 1,
            RecordKind::Relocate => 2,
            RecordKind::Purge => 3,
        }
    }

    fn from_tag(t: u8) -> Option<Self> {
        match t {
            1 => Some(RecordKind::Commit),
            2 => Some(RecordKind::Relocate),
            3 => Some(RecordKind::Purge),
            _ => None,
        }
    }
}

/// Where an item is: segment, physical offset of its first byte, and its
/// logical length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct WalPtr {
    /// The segment number.
    pub seg: u32,
    /// Physical offset in the segment file.
    pub off: u64,
    /// Logical length: 8 bytes of framing plus the body.
    pub len: u32,
}

/// The physical offset of logical byte `l` of a record starting at block
/// boundary `base`.
#[must_use]
pub fn phys_of(base: u64, l: u64) -> u64 {
    base + (l / BLOCK_PAYLOAD) * BLOCK_SIZE + 1 + l % BLOCK_PAYLOAD
}

/// The physical bytes spanned by `len` logical bytes starting at physical
/// offset `off` (which is not a block start).
#[must_use]
pub fn phys_span(off: u64, len: u64) -> u64 {
    crate::block::phys_span(off, len)
}

/// The name of segment `n`.
#[must_use]
pub fn segment_name(n: u32) -> String {
    format!("wal.{n}")
}

/// Parses a segment file name.
#[must_use]
pub fn parse_segment_name(name: &str) -> Option<u32> {
    name.strip_prefix("wal.")?.parse().ok()
}

// ---------------------------------------------------------------- items

/// Value codec tags of an item.
const VALUE_RAW: u8 = 0;
const VALUE_SNAPPY: u8 = 1;

/// Encodes one document as an item (framing included) into `out`. Values
/// of 32 bytes or more are Snappy-compressed when that saves an eighth;
/// `snappy` is reused across the items of a record (its table is sized to
/// each input, so small values cost little).
pub fn encode_item_with(doc: &Document, out: &mut Vec<u8>, snappy: &mut snap::raw::Encoder) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    let m = &doc.meta;
    put_bytes(out, doc.key.as_bytes());
    put_varint(out, m.seqno.0);
    put_varint(out, m.rev_seqno.0);
    out.extend_from_slice(&m.cas.0.to_le_bytes());
    out.extend_from_slice(&m.flags.to_le_bytes());
    out.extend_from_slice(&m.expiry.to_le_bytes());
    out.push(m.datatype.0);
    out.push(DeleteSource::to_byte(m.deleted));
    let v = &doc.value[..];
    let mut written = false;
    if v.len() >= 32 {
        // Compress into the record's tail, leaving room for the tag and a
        // length of up to three varint bytes in front; move it down when
        // the length needs fewer. Raw if compression does not pay.
        let at = out.len();
        let max = snap::raw::max_compress_len(v.len());
        out.resize(at + 4 + max, 0);
        if let Ok(n) = snappy.compress(v, &mut out[at + 4..])
            && n + n / 8 < v.len()
            && n < (1 << 21)
        {
            let mut len = [0u8; 3];
            let mut l = 0;
            let mut x = n;
            loop {
                let b = (x & 0x7f) as u8;
                x >>= 7;
                if x == 0 {
                    len[l] = b;
                    l += 1;
                    break;
                }
                len[l] = b | 0x80;
                l += 1;
            }
            out[at] = VALUE_SNAPPY;
            out[at + 1..at + 1 + l].copy_from_slice(&len[..l]);
            out.copy_within(at + 4..at + 4 + n, at + 1 + l);
            out.truncate(at + 1 + l + n);
            written = true;
        } else {
            out.truncate(at);
        }
    }
    if !written {
        out.push(VALUE_RAW);
        put_bytes(out, v);
    }
    let body_len = (out.len() - start - 8) as u32;
    let crc = crc32c::crc32c(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes one document as an item with a fresh compressor.
pub fn encode_item(doc: &Document, out: &mut Vec<u8>) {
    encode_item_with(doc, out, &mut snap::raw::Encoder::new());
}

/// What an item says about its document without decoding the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemHead {
    /// The key.
    pub key: DiskKey,
    /// The metadata.
    pub meta: DocMeta,
    /// The value's length once decompressed.
    pub value_len: u64,
}

fn item_body(item: &[u8]) -> DecodeResult<&[u8]> {
    let mut r = Reader::new(item, "log item");
    let len = r.u32()? as usize;
    let stored = r.u32()?;
    let body = r.take(len)?;
    if !r.is_empty() {
        return Err(DecodeError::new(
            "log item",
            format!("{} bytes after the body", r.remaining()),
        ));
    }
    let computed = crc32c::crc32c(body);
    if computed != stored {
        return Err(DecodeError::new(
            "log item",
            format!("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"),
        ));
    }
    Ok(body)
}

fn decode_head(r: &mut Reader<'_>) -> DecodeResult<(DiskKey, DocMeta)> {
    decode_head_for(r, None)
}

/// Decodes an item's key and metadata; when the key is `expect`, that key
/// is reused rather than parsed and copied again.
fn decode_head_for(
    r: &mut Reader<'_>,
    expect: Option<&DiskKey>,
) -> DecodeResult<(DiskKey, DocMeta)> {
    let raw = r.bytes(kvstore_core::key::MAX_DISK_KEY_LEN, "key length")?;
    let key = match expect {
        Some(k) if k.as_bytes() == raw => k.clone(),
        _ => DiskKey::from_bytes(raw)
            .map_err(|e| DecodeError::new("log item", format!("bad key: {e}")))?,
    };
    let seqno = Seqno(r.varint()?);
    let rev_seqno = RevSeqno(r.varint()?);
    let cas = Cas(r.u64()?);
    let flags = r.u32()?;
    let expiry = r.u32()?;
    let datatype = Datatype(r.u8()?);
    let byte = r.u8()?;
    let deleted = DeleteSource::from_byte(byte)
        .ok_or_else(|| DecodeError::new("log item", format!("unknown deletion source {byte}")))?;
    Ok((
        key,
        DocMeta {
            cas,
            rev_seqno,
            seqno,
            flags,
            expiry,
            datatype,
            deleted,
        },
    ))
}

/// Decodes a whole item (framing included) into a document.
pub fn decode_item(item: &[u8]) -> DecodeResult<Document> {
    decode_item_for(item, None)
}

/// [`decode_item`] for a read of `expect`: an item holding that key reuses
/// it (a different key is decoded as it is, for the caller to reject).
pub fn decode_item_for(item: &[u8], expect: Option<&DiskKey>) -> DecodeResult<Document> {
    let body = item_body(item)?;
    let mut r = Reader::new(body, "log item");
    let (key, meta) = decode_head_for(&mut r, expect)?;
    let value = match r.u8()? {
        VALUE_RAW => Bytes::copy_from_slice(r.bytes(MAX_ITEM_LEN as usize, "value length")?),
        VALUE_SNAPPY => {
            let c = r.bytes(MAX_ITEM_LEN as usize, "compressed length")?;
            let n = snap::raw::decompress_len(c)
                .map_err(|e| DecodeError::new("log item", format!("snappy: {e}")))?;
            if n as u64 > MAX_ITEM_LEN {
                return Err(DecodeError::new("log item", "value longer than allowed"));
            }
            let v = snap::raw::Decoder::new()
                .decompress_vec(c)
                .map_err(|e| DecodeError::new("log item", format!("snappy: {e}")))?;
            Bytes::from(v)
        }
        t => {
            return Err(DecodeError::new(
                "log item",
                format!("unknown value codec {t}"),
            ));
        }
    };
    if !r.is_empty() {
        return Err(DecodeError::new("log item", "trailing bytes"));
    }
    Ok(Document { key, meta, value })
}

/// Decodes an item's key and metadata only.
pub fn decode_item_head(item: &[u8]) -> DecodeResult<ItemHead> {
    let body = item_body(item)?;
    let mut r = Reader::new(body, "log item");
    let (key, meta) = decode_head(&mut r)?;
    let value_len = match r.u8()? {
        VALUE_RAW => r.varint_max(MAX_ITEM_LEN, "value length")?,
        VALUE_SNAPPY => {
            let c = r.bytes(MAX_ITEM_LEN as usize, "compressed length")?;
            snap::raw::decompress_len(c)
                .map_err(|e| DecodeError::new("log item", format!("snappy: {e}")))?
                as u64
        }
        t => {
            return Err(DecodeError::new(
                "log item",
                format!("unknown value codec {t}"),
            ));
        }
    };
    Ok(ItemHead {
        key,
        meta,
        value_len,
    })
}

// -------------------------------------------------------------- records

/// A record being built: its logical payload, with the logical offsets of
/// its items.
pub struct RecordBuilder {
    logical: Vec<u8>,
    items: Vec<(usize, usize)>,
    snappy: snap::raw::Encoder,
}

impl std::fmt::Debug for RecordBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordBuilder")
            .field("bytes", &self.logical.len())
            .field("items", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl RecordBuilder {
    /// An empty record with room for `bytes`.
    #[must_use]
    pub fn with_capacity(bytes: usize) -> Self {
        let mut logical = Vec::with_capacity(RECORD_HEADER_LEN + bytes);
        logical.resize(RECORD_HEADER_LEN, 0);
        RecordBuilder {
            logical,
            items: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }

    /// Appends an encoded item (from [`encode_item`]).
    pub fn push_item_bytes(&mut self, item: &[u8]) {
        self.items.push((self.logical.len(), item.len()));
        self.logical.extend_from_slice(item);
    }

    /// Encodes and appends a document.
    pub fn push_doc(&mut self, doc: &Document) {
        let start = self.logical.len();
        encode_item_with(doc, &mut self.logical, &mut self.snappy);
        self.items.push((start, self.logical.len() - start));
    }

    /// Appends raw payload bytes (the local-document section, a purge list).
    pub fn push_raw(&mut self, raw: &[u8]) {
        self.logical.extend_from_slice(raw);
    }

    /// Items so far.
    #[must_use]
    pub fn item_count(&self) -> usize {
        self.items.len()
    }

    /// Logical bytes so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.logical.len()
    }

    /// True when nothing but the header is there.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.logical.len() == RECORD_HEADER_LEN
    }

    /// Seals the record: fills in its header and lays it out in blocks.
    /// `items` of the result are the items' pointers relative to the record
    /// start (add the record's physical offset).
    #[must_use]
    pub fn seal(mut self, kind: RecordKind, commit: u64, high: Seqno) -> SealedRecord {
        let payload_len = (self.logical.len() - RECORD_HEADER_LEN) as u32;
        let payload_crc = crc32c::crc32c(&self.logical[RECORD_HEADER_LEN..]);
        let h = &mut self.logical[..RECORD_HEADER_LEN];
        h[0..4].copy_from_slice(&RECORD_MAGIC);
        h[4] = WAL_VERSION;
        h[5] = kind.tag();
        h[6..8].copy_from_slice(&0u16.to_le_bytes());
        h[8..16].copy_from_slice(&commit.to_le_bytes());
        h[16..24].copy_from_slice(&high.0.to_le_bytes());
        h[24..28].copy_from_slice(&payload_len.to_le_bytes());
        h[28..32].copy_from_slice(&payload_crc.to_le_bytes());
        h[32..36].copy_from_slice(&0u32.to_le_bytes());
        let hc = crc32c::crc32c(&h[..36]);
        h[36..40].copy_from_slice(&hc.to_le_bytes());
        let blocks = (self.logical.len() as u64).div_ceil(BLOCK_PAYLOAD).max(1);
        let mut phys = Vec::with_capacity((blocks * BLOCK_SIZE) as usize);
        for (i, chunk) in self.logical.chunks(BLOCK_PAYLOAD as usize).enumerate() {
            phys.push(if i == 0 { MARKER_RECORD } else { MARKER_DATA });
            phys.extend_from_slice(chunk);
        }
        phys.resize((blocks * BLOCK_SIZE) as usize, 0);
        let items = self
            .items
            .iter()
            .map(|&(l, n)| (phys_of(0, l as u64), n as u32))
            .collect();
        SealedRecord {
            phys,
            items,
            commit,
        }
    }
}

/// A record laid out in blocks, ready to append.
#[derive(Debug)]
pub struct SealedRecord {
    /// Its physical bytes, a whole number of blocks.
    pub phys: Vec<u8>,
    /// Its items: offset from the record start, and logical length.
    pub items: Vec<(u64, u32)>,
    /// Its commit number.
    pub commit: u64,
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Record {
    /// What it does.
    pub kind: RecordKind,
    /// The store's commit number.
    pub commit: u64,
    /// The high seqno after it.
    pub high: Seqno,
    /// Its segment.
    pub seg: u32,
    /// Its physical offset.
    pub offset: u64,
    /// Physical bytes it takes (whole blocks).
    pub phys_len: u64,
    /// Its logical bytes (header and payload).
    pub logical: Bytes,
}

/// A parsed record header.
struct RecHeader {
    kind: RecordKind,
    commit: u64,
    high: Seqno,
    payload_len: u32,
    payload_crc: u32,
}

fn parse_header(h: &[u8]) -> Result<RecHeader, CorruptionKind> {
    let bad = |d: &str| CorruptionKind::Malformed {
        what: "log record header",
        detail: d.to_owned(),
    };
    if h.len() < RECORD_HEADER_LEN {
        return Err(bad("short"));
    }
    if h[0..4] != RECORD_MAGIC {
        return Err(bad("bad magic"));
    }
    let stored = u32::from_le_bytes([h[36], h[37], h[38], h[39]]);
    let computed = crc32c::crc32c(&h[..36]);
    if stored != computed {
        return Err(CorruptionKind::Checksum { stored, computed });
    }
    if h[4] != WAL_VERSION {
        return Err(CorruptionKind::UnknownVersion(u32::from(h[4])));
    }
    let kind = RecordKind::from_tag(h[5]).ok_or_else(|| bad("unknown record kind"))?;
    let u64_at = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&h[i..i + 8]);
        u64::from_le_bytes(a)
    };
    let payload_len = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if u64::from(payload_len) > MAX_RECORD_LEN {
        return Err(CorruptionKind::ImpossibleLength {
            len: u64::from(payload_len),
            max: MAX_RECORD_LEN,
        });
    }
    Ok(RecHeader {
        kind,
        commit: u64_at(8),
        high: Seqno(u64_at(16)),
        payload_len,
        payload_crc: u32::from_le_bytes([h[28], h[29], h[30], h[31]]),
    })
}

/// Removes block markers from `phys` (which starts at physical offset
/// `at`), checking that every block start inside it is a data marker.
pub fn demark(
    phys: &[u8],
    at: u64,
    path: impl FnOnce() -> std::path::PathBuf,
) -> StoreResult<Vec<u8>> {
    let mut out = Vec::with_capacity(phys.len());
    let mut i = 0usize;
    while i < phys.len() {
        let p = at + i as u64;
        if p.is_multiple_of(BLOCK_SIZE) {
            if phys[i] != MARKER_DATA {
                return Err(StoreError::corrupt(
                    path(),
                    p,
                    CorruptionKind::Malformed {
                        what: "log block marker",
                        detail: format!("an item runs into a block marked {:#04x}", phys[i]),
                    },
                ));
            }
            i += 1;
            continue;
        }
        let room = (BLOCK_SIZE - p % BLOCK_SIZE) as usize;
        let end = (i + room).min(phys.len());
        out.extend_from_slice(&phys[i..end]);
        i = end;
    }
    Ok(out)
}

/// What probing a block boundary found.
#[derive(Debug)]
pub enum Probe {
    /// A valid record.
    Record(Record),
    /// Nothing was ever written there: zeros, or the end of the file.
    Empty,
    /// Something that is not a valid record.
    Damaged(CorruptionKind),
}

/// Reads the record at `offset` of segment `seg`, if a valid one is there.
pub fn probe(file: &FileIo, seg: u32, file_len: u64, offset: u64) -> StoreResult<Probe> {
    if offset >= file_len {
        return Ok(Probe::Empty);
    }
    let avail = (file_len - offset).min(BLOCK_SIZE) as usize;
    let mut first = vec![0u8; avail];
    file.read_at(&mut first, offset)?;
    if first[0] != MARKER_RECORD {
        if first.iter().all(|b| *b == 0) {
            return Ok(Probe::Empty);
        }
        return Ok(Probe::Damaged(CorruptionKind::Malformed {
            what: "log block",
            detail: format!("no record starts here (marker {:#04x})", first[0]),
        }));
    }
    let Some(hdr) = first.get(1..1 + RECORD_HEADER_LEN) else {
        return Ok(Probe::Damaged(CorruptionKind::Truncated {
            needed: offset + 1 + RECORD_HEADER_LEN as u64,
            available: file_len,
        }));
    };
    let h = match parse_header(hdr) {
        Ok(h) => h,
        Err(k) => return Ok(Probe::Damaged(k)),
    };
    let logical_len = RECORD_HEADER_LEN as u64 + u64::from(h.payload_len);
    let blocks = logical_len.div_ceil(BLOCK_PAYLOAD).max(1);
    let phys_len = blocks * BLOCK_SIZE;
    if offset + phys_span(offset + 1, logical_len) + 1 > file_len {
        return Ok(Probe::Damaged(CorruptionKind::Truncated {
            needed: offset + phys_len,
            available: file_len,
        }));
    }
    let want = (phys_len.min(file_len - offset)) as usize;
    let mut phys = first;
    if want > phys.len() {
        let had = phys.len();
        phys.resize(want, 0);
        file.read_at(&mut phys[had..], offset + had as u64)?;
    }
    // The first block's marker is the record marker; every later one must
    // be a data marker.
    let mut logical = Vec::with_capacity(logical_len as usize);
    for (i, block) in phys.chunks(BLOCK_SIZE as usize).enumerate() {
        if i > 0 && block[0] != MARKER_DATA {
            return Ok(Probe::Damaged(CorruptionKind::Malformed {
                what: "log record",
                detail: format!("block {i} of the record is marked {:#04x}", block[0]),
            }));
        }
        logical.extend_from_slice(&block[1..]);
    }
    logical.truncate(logical_len as usize);
    if logical.len() as u64 != logical_len {
        return Ok(Probe::Damaged(CorruptionKind::Truncated {
            needed: offset + phys_len,
            available: file_len,
        }));
    }
    let computed = crc32c::crc32c(&logical[RECORD_HEADER_LEN..]);
    if computed != h.payload_crc {
        return Ok(Probe::Damaged(CorruptionKind::Checksum {
            stored: h.payload_crc,
            computed,
        }));
    }
    Ok(Probe::Record(Record {
        kind: h.kind,
        commit: h.commit,
        high: h.high,
        seg,
        offset,
        phys_len,
        logical: Bytes::from(logical),
    }))
}

/// The parts of a commit or relocation record's payload.
#[derive(Debug, Clone, Default)]
pub struct Payload {
    /// The items: pointer (of this record) and bytes.
    pub items: Vec<(WalPtr, Bytes)>,
    /// Local-document changes: name and new value (`None` deletes).
    pub locals: Vec<(String, Option<Bytes>)>,
    /// For a purge record: the keys and the seqnos they must still be at.
    pub purges: Vec<(DiskKey, Seqno)>,
    /// For a purge record: the purge seqno after it.
    pub purge_seqno: Seqno,
}

/// Encodes the local-document section of a commit.
pub fn encode_locals(locals: &[(String, Option<Bytes>)], out: &mut Vec<u8>) {
    put_varint(out, locals.len() as u64);
    for (name, v) in locals {
        match v {
            Some(v) => {
                out.push(1);
                put_bytes(out, name.as_bytes());
                put_bytes(out, v);
            }
            None => {
                out.push(0);
                put_bytes(out, name.as_bytes());
            }
        }
    }
}

/// Encodes a purge list.
pub fn encode_purges(purges: &[(DiskKey, Seqno)], purge_seqno: Seqno, out: &mut Vec<u8>) {
    put_varint(out, purges.len() as u64);
    for (k, s) in purges {
        put_bytes(out, k.as_bytes());
        put_varint(out, s.0);
    }
    put_varint(out, purge_seqno.0);
}

impl Record {
    /// Splits the payload into items and local changes (commit, relocate)
    /// or purges.
    pub fn payload(&self) -> DecodeResult<Payload> {
        let logical = &self.logical;
        let mut r = Reader::new(&logical[RECORD_HEADER_LEN..], "log record payload");
        let mut p = Payload::default();
        match self.kind {
            RecordKind::Commit | RecordKind::Relocate => {
                let n = r.varint_max(MAX_RECORD_LEN / 8, "item count")?;
                // The count prefix is the first payload bytes; items follow.
                for _ in 0..n {
                    let at = RECORD_HEADER_LEN + r.pos();
                    let body_len = r.u32()? as usize;
                    r.u32()?;
                    r.take(body_len)?;
                    let len = 8 + body_len;
                    let ptr = WalPtr {
                        seg: self.seg,
                        off: phys_of(self.offset, at as u64),
                        len: len as u32,
                    };
                    p.items.push((ptr, logical.slice(at..at + len)));
                }
                let nl = r.varint_max(MAX_RECORD_LEN / 2, "local count")?;
                for _ in 0..nl {
                    let op = r.u8()?;
                    let name = r.bytes(kvstore_core::doc::MAX_LOCAL_NAME_LEN, "local name")?;
                    let name = String::from_utf8(name.to_vec()).map_err(|_| {
                        DecodeError::new("log record payload", "local name is not UTF-8")
                    })?;
                    let value = match op {
                        0 => None,
                        1 => Some(Bytes::copy_from_slice(
                            r.bytes(MAX_RECORD_LEN as usize, "local value")?,
                        )),
                        t => {
                            return Err(DecodeError::new(
                                "log record payload",
                                format!("unknown local op {t}"),
                            ));
                        }
                    };
                    p.locals.push((name, value));
                }
            }
            RecordKind::Purge => {
                let n = r.varint_max(MAX_RECORD_LEN / 2, "purge count")?;
                for _ in 0..n {
                    let raw = r.bytes(kvstore_core::key::MAX_DISK_KEY_LEN, "key length")?;
                    let key = DiskKey::from_bytes(raw).map_err(|e| {
                        DecodeError::new("log record payload", format!("bad key: {e}"))
                    })?;
                    p.purges.push((key, Seqno(r.varint()?)));
                }
                p.purge_seqno = Seqno(r.varint()?);
            }
        }
        if !r.is_empty() {
            return Err(DecodeError::new("log record payload", "trailing bytes"));
        }
        Ok(p)
    }
}

/// The item count prefix of a commit or relocation payload, written first.
pub fn item_count_prefix(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(10);
    put_varint(&mut v, n as u64);
    v
}

// ------------------------------------------------------------- segments

/// One segment file of a store.
#[derive(Debug)]
pub struct Segment {
    /// Its number.
    pub no: u32,
    /// Its file.
    pub slot: Arc<FileSlot>,
    /// Names it in the block cache.
    pub cache_id: u64,
}

impl Segment {
    /// A segment over an existing file.
    #[must_use]
    pub fn new(no: u32, slot: Arc<FileSlot>) -> Arc<Self> {
        Arc::new(Segment {
            no,
            slot,
            cache_id: crate::cache::new_file_id(),
        })
    }

    /// Reads the item at `ptr`, through the block cache.
    pub fn read_item(&self, ptr: WalPtr, cache: &BlockCache) -> StoreResult<Bytes> {
        let len = u64::from(ptr.len);
        if !(8..=MAX_ITEM_LEN).contains(&len) {
            return Err(StoreError::corrupt(
                self.slot.path(),
                ptr.off,
                CorruptionKind::ImpossibleLength {
                    len,
                    max: MAX_ITEM_LEN,
                },
            ));
        }
        let span = phys_span(ptr.off, len);
        let first = ptr.off / BLOCK_SIZE;
        let last = (ptr.off + span - 1) / BLOCK_SIZE;
        // Fast path: the item lies in one cached block.
        if first == last
            && let Some(b) = cache.get((self.cache_id, first))
        {
            let s = (ptr.off % BLOCK_SIZE) as usize;
            if let Some(item) = b.get(s..s + len as usize) {
                return Ok(b.slice_ref(item));
            }
        }
        let s = (ptr.off - first * BLOCK_SIZE) as usize;
        let corrupt_span = || {
            StoreError::corrupt(
                self.slot.path(),
                ptr.off,
                CorruptionKind::Truncated {
                    needed: ptr.off + span,
                    available: 0,
                },
            )
        };
        // Spread over several blocks: every one of them cached, or one read.
        let mut cached = Vec::with_capacity((last - first + 1) as usize * BLOCK_SIZE as usize);
        for blk in first..=last {
            match cache.get((self.cache_id, blk)) {
                Some(b) if b.len() == BLOCK_SIZE as usize => cached.extend_from_slice(&b),
                _ => {
                    cached.clear();
                    break;
                }
            }
        }
        if !cached.is_empty() {
            let phys = cached.get(s..s + span as usize).ok_or_else(corrupt_span)?;
            return Ok(Bytes::from(demark(phys, ptr.off, || self.slot.path())?));
        }
        let f = self.slot.get()?;
        // One read into one buffer, which the cached blocks then share (no
        // copy per block).
        let end = (last + 1) * BLOCK_SIZE;
        let mut buf = vec![0u8; (end - first * BLOCK_SIZE) as usize];
        if f.read_at(&mut buf, first * BLOCK_SIZE).is_err() {
            // The segment's last block may be short: read what there is.
            let file_len = f.size()?;
            if ptr.off + span > file_len {
                return Err(StoreError::corrupt(
                    self.slot.path(),
                    ptr.off,
                    CorruptionKind::Truncated {
                        needed: ptr.off + span,
                        available: file_len,
                    },
                ));
            }
            buf.truncate((file_len.min(end) - first * BLOCK_SIZE) as usize);
            f.read_at(&mut buf, first * BLOCK_SIZE)?;
        }
        let buf = Bytes::from(buf);
        // Only items up to a few blocks are worth caching.
        if last - first < 16 {
            for i in 0..=(last - first) as usize {
                let b = i * BLOCK_SIZE as usize;
                if let Some(block) = buf.get(b..b + BLOCK_SIZE as usize) {
                    cache.insert((self.cache_id, first + i as u64), buf.slice_ref(block));
                }
            }
        }
        let phys = buf.get(s..s + span as usize).ok_or_else(corrupt_span)?;
        if first == last {
            // Within one block: no marker inside.
            return Ok(buf.slice_ref(phys));
        }
        Ok(Bytes::from(demark(phys, ptr.off, || self.slot.path())?))
    }

    /// Puts freshly written blocks in the block cache.
    pub fn cache_blocks(&self, offset: u64, phys: &[u8], cache: &BlockCache) {
        debug_assert!(offset.is_multiple_of(BLOCK_SIZE));
        for (i, b) in phys.chunks(BLOCK_SIZE as usize).enumerate() {
            if b.len() == BLOCK_SIZE as usize {
                cache.insert(
                    (self.cache_id, offset / BLOCK_SIZE + i as u64),
                    Bytes::copy_from_slice(b),
                );
            }
        }
    }
}

/// The header block of a segment.
fn segment_header(vbid: Vbid, revision: Revision, no: u32) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE as usize];
    b[0] = MARKER_SEGMENT;
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&SEGMENT_MAGIC);
    p.push(WAL_VERSION);
    p.extend_from_slice(&vbid.0.to_le_bytes());
    p.extend_from_slice(&revision.0.to_le_bytes());
    p.extend_from_slice(&no.to_le_bytes());
    let crc = crc32c::crc32c(&p);
    p.extend_from_slice(&crc.to_le_bytes());
    b[1..1 + p.len()].copy_from_slice(&p);
    b
}

/// Checks a segment's header block.
pub fn check_segment_header(
    file: &FileIo,
    vbid: Vbid,
    revision: Revision,
    no: u32,
) -> StoreResult<()> {
    let corrupt = |d: String| {
        StoreError::corrupt(
            file.path(),
            0,
            CorruptionKind::Malformed {
                what: "log segment header",
                detail: d,
            },
        )
    };
    let len = file.size()?;
    if len < BLOCK_SIZE {
        return Err(StoreError::corrupt(
            file.path(),
            0,
            CorruptionKind::Truncated {
                needed: BLOCK_SIZE,
                available: len,
            },
        ));
    }
    let mut b = vec![0u8; 24];
    file.read_at(&mut b, 0)?;
    if b[0] != MARKER_SEGMENT || b[1..5] != SEGMENT_MAGIC {
        return Err(corrupt("bad marker or magic".into()));
    }
    if b[5] != WAL_VERSION {
        return Err(StoreError::corrupt(
            file.path(),
            0,
            CorruptionKind::UnknownVersion(u32::from(b[5])),
        ));
    }
    let stored = u32::from_le_bytes([b[20], b[21], b[22], b[23]]);
    let computed = crc32c::crc32c(&b[1..20]);
    if stored != computed {
        return Err(StoreError::corrupt(
            file.path(),
            0,
            CorruptionKind::Checksum { stored, computed },
        ));
    }
    let v = u16::from_le_bytes([b[6], b[7]]);
    let mut r8 = [0u8; 8];
    r8.copy_from_slice(&b[8..16]);
    let rev = u64::from_le_bytes(r8);
    let n = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
    if v != vbid.0 || rev != revision.0 || n != no {
        return Err(corrupt(format!(
            "belongs to vb:{v} rev:{rev} segment {n}, not {vbid} {revision} segment {no}"
        )));
    }
    Ok(())
}

/// Creates segment `no` in `dir`, atomically: the header block is written
/// and synced under a temporary name, which is then renamed, and the
/// directory synced. So a `wal.<n>` file always starts with a whole header
/// (a damaged one is corruption), and a creation that failed leaves only a
/// `.tmp` file, which the next open removes.
pub fn create_segment(
    fds: &Arc<FdCache>,
    dir: &Arc<StoreDir>,
    vbid: Vbid,
    revision: Revision,
    no: u32,
) -> StoreResult<Arc<Segment>> {
    let name = segment_name(no);
    let path = dir.path().join(&name);
    let tmp = dir.path().join(format!("{name}.tmp"));
    // Left by a creation that failed: nothing in it was ever acknowledged.
    for p in [&tmp, &path] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", p, e)),
        }
    }
    let f = FileIo::create(&tmp, fds.io().clone())?;
    f.write_at(&segment_header(vbid, revision, no), 0)?;
    f.sync()?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(|e| StoreError::io("rename", &tmp, e))?;
    sync_dir(fds.io(), &dir.path())?;
    let slot = fds.slot(dir, name, true);
    Ok(Segment::new(no, slot))
}

/// Appends records to the newest segment.
#[derive(Debug)]
pub struct WalWriter {
    /// The segment being written.
    pub seg: Arc<Segment>,
    /// Where the next record goes (a block boundary).
    pub pos: u64,
    /// The file's length (preallocated zeros included).
    pub file_len: u64,
    /// Bytes from `pos` up to here may hold garbage of a failed write and
    /// are zeroed by the next write.
    pub dirty_until: u64,
    /// Why the writer is poisoned: a sync failed and the failed region has
    /// not been overwritten since.
    pub poisoned: Option<String>,
    /// Segment size past which a new segment is started.
    pub segment_bytes: u64,
    /// Whether records are synced.
    pub sync: bool,
    /// The background zero-fill of this segment.
    pub prealloc: Arc<Prealloc>,
    /// Records appended lately were small (see [`PREALLOC_BELOW`]).
    pub small_records: bool,
}

impl WalWriter {
    /// Zeroes what a failed append left after the last durable record,
    /// if anything ([`WalWriter::recover`]). Run before anything makes the
    /// writer's position durable as a replay start (a checkpoint, a
    /// rollback, a close): a torn write can land a whole refused record,
    /// which replay would otherwise bring back.
    pub fn recover_if_dirty(&mut self) -> StoreResult<()> {
        if self.poisoned.is_some() || self.dirty_until > self.pos {
            self.recover()?;
        }
        Ok(())
    }

    /// Overwrites whatever a failed write or sync may have left after the
    /// last durable record with zeros, through a newly opened descriptor,
    /// and syncs. Clears the poison on success.
    pub fn recover(&mut self) -> StoreResult<()> {
        self.seg.slot.close();
        let f = self.seg.slot.get()?;
        let len = f.size()?;
        self.file_len = self.file_len.max(len);
        let end = self
            .dirty_until
            .max(self.pos + BLOCK_SIZE)
            .min(self.file_len.max(self.pos));
        if end > self.pos {
            f.write_at(&vec![0u8; (end - self.pos) as usize], self.pos)?;
        }
        f.sync()?;
        self.dirty_until = self.pos;
        if self.poisoned.take().is_some() {
            tracing::info!(path = %self.seg.slot.path().display(), "log writer recovered after a failed sync");
        }
        Ok(())
    }

    /// Appends `rec` and makes it durable. Returns its physical offset.
    ///
    /// On a write error nothing is acknowledged and the writer stays usable;
    /// on a sync error it is poisoned until [`WalWriter::recover`] succeeds
    /// (which the next append tries first).
    pub fn append(&mut self, rec: &SealedRecord) -> StoreResult<u64> {
        if self.poisoned.is_some() || self.dirty_until > self.pos {
            self.recover()?;
        }
        let start = self.pos;
        let end = start + rec.phys.len() as u64;
        self.small_records = (rec.phys.len() as u64) < PREALLOC_BELOW;
        // Zeros added in the background count once they are durable; a
        // record reaching into a fill that is still running waits for it.
        self.file_len = self.file_len.max(self.prealloc.settled(end));
        let zero_to = self.dirty_until.max(end);
        let f = self.seg.slot.get()?;
        let result = if zero_to > end {
            let mut buf = Vec::with_capacity((zero_to - start) as usize);
            buf.extend_from_slice(&rec.phys);
            buf.resize((zero_to - start) as usize, 0);
            f.write_at(&buf, start)
        } else {
            f.write_at(&rec.phys, start)
        };
        if let Err(e) = result {
            self.dirty_until = self.dirty_until.max(zero_to);
            self.file_len = self.file_len.max(f.size().unwrap_or(0));
            return Err(e);
        }
        if self.sync
            && let Err(e) = f.sync()
        {
            self.dirty_until = self.dirty_until.max(zero_to);
            self.poisoned = Some(e.to_string());
            tracing::error!(error = %e, path = %self.seg.slot.path().display(), "log sync failed; the commit is refused and the writer recovers before the next one");
            return Err(e);
        }
        self.pos = end;
        self.file_len = self.file_len.max(zero_to);
        self.dirty_until = self.pos;
        Ok(start)
    }

    /// True when `rec` should go to a new segment.
    #[must_use]
    pub fn needs_roll(&self, rec: &SealedRecord) -> bool {
        self.pos > BLOCK_SIZE && self.pos + rec.phys.len() as u64 > self.segment_bytes
    }

    /// Where a zero-fill ahead of the writer should go, when one is due:
    /// small records are being written and less than [`PREALLOC_LOW`] of
    /// zeros is left. Marks the fill running; the caller writes it (without
    /// the writer's lock) and ends it with [`WalWriter::prealloc_done`].
    pub fn prealloc_due(&mut self) -> Option<(Arc<Segment>, Arc<Prealloc>, u64, u64)> {
        self.file_len = self.file_len.max(self.prealloc.lock().zeroed_to);
        let room = self.file_len.saturating_sub(self.pos);
        if !self.small_records
            || room >= PREALLOC_LOW
            || self.pos + PREALLOC_LOW > self.segment_bytes
        {
            return None;
        }
        let from = self
            .file_len
            .max(self.dirty_until)
            .next_multiple_of(BLOCK_SIZE);
        let step = (self.file_len / 4).clamp(PREALLOC_MIN, PREALLOC_MAX);
        let to = (from + step).min(self.segment_bytes.max(from + PREALLOC_MIN));
        if !self.prealloc.begin(from) {
            return None;
        }
        Some((Arc::clone(&self.seg), Arc::clone(&self.prealloc), from, to))
    }
}

/// Writes zeros over `[from, to)` of `seg` and syncs; ends the fill either
/// way. Runs without the writer's lock: the writer does not touch that
/// range until the fill ends.
pub fn prealloc_fill(seg: &Segment, p: &Prealloc, from: u64, to: u64) -> StoreResult<()> {
    let r = (|| {
        let f = seg.slot.get()?;
        f.write_at(&vec![0u8; (to - from) as usize], from)?;
        f.sync()
    })();
    p.end(r.is_ok().then_some(to));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Io;
    use kvstore_core::CollectionId;

    fn doc(k: &str, s: u64, v: &[u8]) -> Document {
        Document::new(
            DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).unwrap(),
            Seqno(s),
            v.to_vec(),
        )
    }

    #[test]
    fn items_roundtrip_with_and_without_compression() {
        for v in [
            &b""[..],
            b"short",
            &[b'x'; 500][..],
            &(0..=255u8).collect::<Vec<_>>()[..],
        ] {
            let d = doc("k", 7, v);
            let mut out = Vec::new();
            encode_item(&d, &mut out);
            assert_eq!(decode_item(&out).unwrap(), d);
            let h = decode_item_head(&out).unwrap();
            assert_eq!(
                (h.key, h.meta, h.value_len),
                (d.key, d.meta, v.len() as u64)
            );
        }
        let mut out = Vec::new();
        encode_item(&doc("k", 1, &[b'y'; 300]), &mut out);
        assert!(out.len() < 100, "compressible values are compressed");
        out[20] ^= 1;
        assert!(decode_item(&out).is_err());
    }

    #[test]
    fn records_lay_out_in_marked_blocks() {
        let mut b = RecordBuilder::with_capacity(0);
        b.push_raw(&item_count_prefix(300));
        let docs: Vec<Document> = (0..300)
            .map(|i| doc(&format!("k{i}"), i + 1, &[i as u8; 40]))
            .collect();
        for d in &docs {
            b.push_doc(d);
        }
        let mut locals = Vec::new();
        encode_locals(
            &[("_local/x".into(), Some(Bytes::from_static(b"v")))],
            &mut locals,
        );
        b.push_raw(&locals);
        let rec = b.seal(RecordKind::Commit, 9, Seqno(300));
        assert_eq!(rec.phys.len() % BLOCK_SIZE as usize, 0);
        assert_eq!(rec.phys[0], MARKER_RECORD);
        for blk in rec.phys.chunks(BLOCK_SIZE as usize).skip(1) {
            assert_eq!(blk[0], MARKER_DATA);
        }
        let dir = tempfile::tempdir().unwrap();
        let f = FileIo::create(&dir.path().join("w"), Io::default()).unwrap();
        let base = 3 * BLOCK_SIZE;
        f.write_at(&rec.phys, base).unwrap();
        let len = f.size().unwrap();
        let Probe::Record(r) = probe(&f, 5, len, base).unwrap() else {
            panic!("no record")
        };
        assert_eq!(
            (r.commit, r.high, r.kind),
            (9, Seqno(300), RecordKind::Commit)
        );
        let p = r.payload().unwrap();
        assert_eq!(p.items.len(), 300);
        assert_eq!(p.locals.len(), 1);
        for ((ptr, bytes), (off, n)) in p.items.iter().zip(&rec.items) {
            assert_eq!(ptr.off, base + off);
            assert_eq!(ptr.len, *n);
            let span = phys_span(ptr.off, u64::from(ptr.len));
            let mut phys = vec![0u8; span as usize];
            f.read_at(&mut phys, ptr.off).unwrap();
            assert_eq!(
                demark(&phys, ptr.off, || f.path().to_path_buf()).unwrap(),
                bytes.to_vec()
            );
        }
        assert_eq!(decode_item(&p.items[299].1).unwrap(), docs[299]);
        // A flipped payload byte is a damaged record; zeros are empty.
        let mut bad = rec.phys.clone();
        bad[5000] ^= 0x10;
        f.write_at(&bad, base).unwrap();
        assert!(matches!(
            probe(&f, 5, len, base).unwrap(),
            Probe::Damaged(_)
        ));
        assert!(matches!(probe(&f, 5, len, 0).unwrap(), Probe::Empty));
        assert!(matches!(probe(&f, 5, len, len).unwrap(), Probe::Empty));
    }

    #[test]
    fn phys_of_skips_markers() {
        assert_eq!(phys_of(0, 0), 1);
        assert_eq!(phys_of(0, BLOCK_PAYLOAD - 1), BLOCK_SIZE - 1);
        assert_eq!(phys_of(0, BLOCK_PAYLOAD), BLOCK_SIZE + 1);
        assert_eq!(phys_of(BLOCK_SIZE, 10), BLOCK_SIZE + 11);
    }
}
