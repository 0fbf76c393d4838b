//! Byte layouts of every key and value this backend writes.
//!
//! All integers inside keys are big-endian so that byte order is numeric
//! order; integers inside values are little-endian. Every value that has a
//! structure starts with a format byte, so a later layout can be told apart.

use kvstore_core::{
    Cas, DeleteSource, DiskKey, DocMeta, Document, RevSeqno, Revision, Seqno, Vbid,
};

/// Length of the `(vbid, revision)` prefix of every per-revision key.
pub(crate) const PREFIX_LEN: usize = 10;

/// The `(vbid, revision)` prefix: vbid as u16 BE, then revision as u64 BE.
pub(crate) type Prefix = [u8; PREFIX_LEN];

/// Key of the per-vbucket revision high-water mark in the `meta` family:
/// just the vbid, so it sorts before every header of that vbucket and lies
/// outside every revision's range.
pub(crate) fn hwm_key(vbid: Vbid) -> [u8; 2] {
    vbid.0.to_be_bytes()
}

/// Suffix of the deletion mark of a revision in the `meta` family. The
/// mark lies inside the revision's range, so destroying the revision
/// removes it too.
pub(crate) const DELETION_MARK: u8 = b'd';

/// Key of the deletion mark of the revision with prefix `p`.
pub(crate) fn deletion_mark_key(p: &Prefix) -> [u8; PREFIX_LEN + 1] {
    let mut k = [DELETION_MARK; PREFIX_LEN + 1];
    k[..PREFIX_LEN].copy_from_slice(p);
    k
}

/// The prefix of `(vbid, revision)`.
pub(crate) fn prefix(vbid: Vbid, revision: Revision) -> Prefix {
    let mut p = [0u8; PREFIX_LEN];
    p[..2].copy_from_slice(&vbid.0.to_be_bytes());
    p[2..].copy_from_slice(&revision.0.to_be_bytes());
    p
}

/// The smallest key above every key that starts with `p`: the exclusive end
/// of the revision's range.
pub(crate) fn prefix_end(p: &Prefix) -> Vec<u8> {
    let mut end = p.to_vec();
    for i in (0..end.len()).rev() {
        if end[i] == 0xff {
            end[i] = 0;
        } else {
            end[i] += 1;
            return end;
        }
    }
    // Only the all-0xff prefix gets here; no suffix we write is this long
    // or sorts this high, so the key still bounds the range.
    let mut end = p.to_vec();
    end.extend(std::iter::repeat_n(0xff, 1024));
    end
}

/// Splits a key into its prefix and suffix.
pub(crate) fn split_prefix(key: &[u8]) -> Option<(Prefix, &[u8])> {
    if key.len() < PREFIX_LEN {
        return None;
    }
    let (p, rest) = key.split_at(PREFIX_LEN);
    let mut out = [0u8; PREFIX_LEN];
    out.copy_from_slice(p);
    Some((out, rest))
}

/// Decodes a prefix back into `(vbid, revision)`.
pub(crate) fn parse_prefix(p: &Prefix) -> (Vbid, Revision) {
    let mut v = [0u8; 2];
    v.copy_from_slice(&p[..2]);
    let mut r = [0u8; 8];
    r.copy_from_slice(&p[2..]);
    (Vbid(u16::from_be_bytes(v)), Revision(u64::from_be_bytes(r)))
}

/// `prefix ++ suffix`.
pub(crate) fn data_key(p: &Prefix, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX_LEN + suffix.len());
    k.extend_from_slice(p);
    k.extend_from_slice(suffix);
    k
}

/// Many prefixed keys in one allocation.
pub(crate) struct KeyBuf {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl KeyBuf {
    /// `prefix ++ suffix` for every suffix, in order.
    pub fn new<'a>(p: &Prefix, suffixes: impl ExactSizeIterator<Item = &'a [u8]>) -> Self {
        let n = suffixes.len();
        let mut buf = Vec::with_capacity(n * (PREFIX_LEN + 32));
        let mut ends = Vec::with_capacity(n);
        for s in suffixes {
            buf.extend_from_slice(p);
            buf.extend_from_slice(s);
            ends.push(buf.len());
        }
        KeyBuf { buf, ends }
    }

    /// Key `i`.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.buf[start..self.ends[i]]
    }
}

/// `prefix ++ n` (u64 BE): by-seqno and undo keys.
pub(crate) fn num_key(p: &Prefix, n: u64) -> [u8; PREFIX_LEN + 8] {
    let mut k = [0u8; PREFIX_LEN + 8];
    k[..PREFIX_LEN].copy_from_slice(p);
    k[PREFIX_LEN..].copy_from_slice(&n.to_be_bytes());
    k
}

/// Parses the number of a by-seqno or undo key.
pub(crate) fn parse_num_key(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(PREFIX_LEN..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// A value that did not decode: what it was and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    pub what: &'static str,
    pub detail: String,
}

fn malformed(what: &'static str, detail: impl Into<String>) -> Malformed {
    Malformed {
        what,
        detail: detail.into(),
    }
}

/// A little reader over a byte slice that reports short input as
/// [`Malformed`].
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.buf.len() < n {
            return Err(malformed(
                self.what,
                format!("needs {n} more bytes, has {}", self.buf.len()),
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Malformed> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

// ---------------------------------------------------------------- documents

/// Format byte of a `bykey` value.
const DOC_FORMAT: u8 = 2;

/// The most bytes of metadata before a value: the format byte, five
/// varints (seqno, cas, rev seqno, flags, expiry) and two bytes.
const DOC_META_MAX: usize = 1 + 10 * 3 + 5 * 2 + 2;

/// Appends the `bykey` value of `doc`: the format byte, the seqno, cas, rev
/// seqno, flags and expiry as LEB128 varints, the datatype byte, the
/// deletion-state byte, then the value. Varints keep the metadata of a
/// typical document near 15 bytes (a cas is a nanosecond clock, 9 bytes;
/// zero fields take one), so a document costs about what it would in a
/// plain key-value store: fewer bytes per block means more documents in the
/// block cache and less to log, flush and compact.
pub(crate) fn encode_doc(doc: &Document, out: &mut Vec<u8>) {
    let m = &doc.meta;
    out.reserve(DOC_META_MAX + doc.value.len());
    out.push(DOC_FORMAT);
    put_varint(out, m.seqno.0);
    put_varint(out, m.cas.0);
    put_varint(out, m.rev_seqno.0);
    put_varint(out, u64::from(m.flags));
    put_varint(out, u64::from(m.expiry));
    out.push(m.datatype.0);
    out.push(DeleteSource::to_byte(m.deleted));
    out.extend_from_slice(&doc.value);
}

/// Decodes the metadata of a `bykey` value and returns the value bytes.
pub(crate) fn decode_meta(raw: &[u8]) -> Result<(DocMeta, &[u8]), Malformed> {
    const WHAT: &str = "document";
    let mut r = Reader {
        buf: raw,
        what: WHAT,
    };
    let format = r.u8()?;
    if format != DOC_FORMAT {
        return Err(malformed(WHAT, format!("unknown format {format}")));
    }
    let seqno = Seqno(r.varint()?);
    let cas = Cas(r.varint()?);
    let rev_seqno = RevSeqno(r.varint()?);
    let flags = u32::try_from(r.varint()?).map_err(|_| malformed(WHAT, "flags above 32 bits"))?;
    let expiry = u32::try_from(r.varint()?).map_err(|_| malformed(WHAT, "expiry above 32 bits"))?;
    let datatype = kvstore_core::Datatype(r.u8()?);
    let byte = r.u8()?;
    let deleted = DeleteSource::from_byte(byte)
        .ok_or_else(|| malformed(WHAT, format!("unknown delete source {byte}")))?;
    let meta = DocMeta {
        cas,
        rev_seqno,
        seqno,
        flags,
        expiry,
        datatype,
        deleted,
    };
    Ok((meta, r.rest()))
}

/// Decodes a whole document.
pub(crate) fn decode_doc(
    key: DiskKey,
    raw: &[u8],
    with_value: bool,
) -> Result<Document, Malformed> {
    let (meta, value) = decode_meta(raw)?;
    Ok(Document {
        key,
        meta,
        value: if with_value {
            bytes::Bytes::copy_from_slice(value)
        } else {
            bytes::Bytes::new()
        },
    })
}

/// Parses the disk key held in a key suffix or a by-seqno value.
pub(crate) fn disk_key(raw: &[u8]) -> Result<DiskKey, Malformed> {
    DiskKey::from_bytes(raw).map_err(|e| malformed("disk key", e.to_string()))
}

// --------------------------------------------------------- by-seqno records

/// Format byte of a by-seqno record.
const SEQ_FORMAT: u8 = 1;

/// The most entries one by-seqno record holds; a commit with more items
/// writes several records.
pub(crate) const SEQ_RECORD_MAX: usize = 1024;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed(self.what, "varint longer than 10 bytes"))
    }
}

/// Builds one by-seqno record: the seqno and disk key of up to
/// [`SEQ_RECORD_MAX`] items of one commit, in seqno order. It is stored
/// under the prefix and the highest seqno it holds, so the records of a
/// revision sort in seqno order and never overlap (every commit's seqnos
/// are above every earlier commit's).
///
/// Layout: format byte, entry count (u32 LE), then per entry the seqno as a
/// varint delta from the previous entry's (the first from 0), a varint of
/// `key length << 1 | tombstone`, and the disk key.
pub(crate) struct SeqRecordBuilder {
    buf: Vec<u8>,
    n: u32,
    last: u64,
}

impl SeqRecordBuilder {
    pub fn new(capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(5 + capacity * 28);
        buf.push(SEQ_FORMAT);
        buf.extend_from_slice(&[0u8; 4]);
        SeqRecordBuilder { buf, n: 0, last: 0 }
    }

    /// Adds an entry; seqnos must come in increasing order.
    pub fn push(&mut self, seqno: u64, key: &[u8], deleted: bool) {
        debug_assert!(self.n == 0 || seqno > self.last);
        put_varint(&mut self.buf, seqno - self.last);
        put_varint(
            &mut self.buf,
            ((key.len() as u64) << 1) | u64::from(deleted),
        );
        self.buf.extend_from_slice(key);
        self.last = seqno;
        self.n += 1;
    }

    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// The highest seqno added, the record's key.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The encoded record; the builder is ready for the next one.
    pub fn take(&mut self) -> Vec<u8> {
        let capacity = self.buf.capacity();
        let mut out = std::mem::replace(&mut self.buf, Vec::with_capacity(capacity));
        out[1..5].copy_from_slice(&self.n.to_le_bytes());
        self.buf.push(SEQ_FORMAT);
        self.buf.extend_from_slice(&[0u8; 4]);
        self.n = 0;
        self.last = 0;
        out
    }
}

/// One entry of a by-seqno record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SeqEntry<'a> {
    pub seqno: u64,
    pub deleted: bool,
    pub key: &'a [u8],
}

/// Decodes a by-seqno record stored under seqno `at`: its entries, in
/// increasing seqno order, none above `at`.
pub(crate) fn decode_seq_record(raw: &[u8], at: u64) -> Result<Vec<SeqEntry<'_>>, Malformed> {
    const WHAT: &str = "by-seqno record";
    let mut r = Reader {
        buf: raw,
        what: WHAT,
    };
    let format = r.u8()?;
    if format != SEQ_FORMAT {
        return Err(malformed(WHAT, format!("unknown format {format}")));
    }
    let n = r.u32()? as usize;
    // Each entry takes at least 3 bytes, which bounds the allocation.
    if n > r.buf.len() / 3 {
        return Err(malformed(
            WHAT,
            format!("{n} entries in {} bytes", r.buf.len()),
        ));
    }
    let mut out = Vec::with_capacity(n);
    let mut seqno = 0u64;
    for i in 0..n {
        let delta = r.varint()?;
        if i > 0 && delta == 0 {
            return Err(malformed(WHAT, "seqnos not increasing"));
        }
        seqno = seqno
            .checked_add(delta)
            .ok_or_else(|| malformed(WHAT, "seqno overflows"))?;
        let lk = r.varint()?;
        let len = usize::try_from(lk >> 1).map_err(|_| malformed(WHAT, "key length"))?;
        let key = r.take(len)?;
        out.push(SeqEntry {
            seqno,
            deleted: lk & 1 == 1,
            key,
        });
    }
    if !r.rest().is_empty() {
        return Err(malformed(WHAT, "trailing bytes"));
    }
    if seqno > at {
        return Err(malformed(
            WHAT,
            format!("holds seqno {seqno}, above its key {at}"),
        ));
    }
    Ok(out)
}

// ------------------------------------------------------------------ headers

/// Format byte of a header.
const HEADER_FORMAT: u8 = 1;

/// Encoded length of a header.
pub(crate) const HEADER_LEN: usize = 1 + 8 * 7;

/// The per-revision header kept in `meta` under the bare prefix, rewritten
/// by every commit so that `info()` never has to count anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// Highest committed seqno.
    pub high: u64,
    /// Highest tombstone seqno purged by compaction.
    pub purge: u64,
    /// Live documents.
    pub live: u64,
    /// Tombstones.
    pub deleted: u64,
    /// Key plus value bytes of every current document.
    pub data_bytes: u64,
    /// Number of the last commit (numbers undo records).
    pub commit_no: u64,
    /// Lowest commit number that still has an undo record; above
    /// `commit_no` when there is no history.
    pub undo_low: u64,
}

impl Default for Header {
    fn default() -> Self {
        Header {
            high: 0,
            purge: 0,
            live: 0,
            deleted: 0,
            data_bytes: 0,
            commit_no: 0,
            undo_low: 1,
        }
    }
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = HEADER_FORMAT;
        let fields = [
            self.high,
            self.purge,
            self.live,
            self.deleted,
            self.data_bytes,
            self.commit_no,
            self.undo_low,
        ];
        for (i, f) in fields.iter().enumerate() {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&f.to_le_bytes());
        }
        out
    }

    pub fn decode(raw: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader {
            buf: raw,
            what: "header",
        };
        let format = r.u8()?;
        if format != HEADER_FORMAT {
            return Err(malformed("header", format!("unknown format {format}")));
        }
        let h = Header {
            high: r.u64()?,
            purge: r.u64()?,
            live: r.u64()?,
            deleted: r.u64()?,
            data_bytes: r.u64()?,
            commit_no: r.u64()?,
            undo_low: r.u64()?,
        };
        if !r.rest().is_empty() {
            return Err(malformed("header", "trailing bytes"));
        }
        Ok(h)
    }

    /// Counts a document version in (`add`) or out.
    pub fn account(&mut self, deleted: bool, body: u64, add: bool) {
        let counter = if deleted {
            &mut self.deleted
        } else {
            &mut self.live
        };
        if add {
            *counter = counter.saturating_add(1);
            self.data_bytes = self.data_bytes.saturating_add(body);
        } else {
            *counter = counter.saturating_sub(1);
            self.data_bytes = self.data_bytes.saturating_sub(body);
        }
    }
}

/// Key plus value bytes of a stored version, from its key and the value
/// bytes [`decode_meta`] returned.
pub(crate) fn body_size(key_len: usize, value: &[u8]) -> u64 {
    (key_len + value.len()) as u64
}

// ------------------------------------------------------------- undo records

/// Format byte of an undo record.
const UNDO_FORMAT: u8 = 1;

/// Builds the undo record of one commit: the header before it, the previous
/// value of every local document it touched, and the previous version of
/// every document it overwrote. Documents it created need no entry: a
/// rollback finds them through the by-seqno index (their seqno is above the
/// target), so inserts cost nothing here.
pub(crate) struct UndoBuilder {
    buf: Vec<u8>,
    locals: Vec<u8>,
    n_locals: u32,
    n_docs: u32,
}

impl UndoBuilder {
    pub fn new(prev: &Header) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.push(UNDO_FORMAT);
        buf.extend_from_slice(&prev.encode());
        // The document count, filled in by `finish`.
        buf.extend_from_slice(&[0u8; 4]);
        UndoBuilder {
            buf,
            locals: Vec::new(),
            n_locals: 0,
            n_docs: 0,
        }
    }

    /// Records the previous value of local document `name`.
    pub fn local(&mut self, name: &str, prev: Option<&[u8]>) {
        self.n_locals += 1;
        self.locals
            .extend_from_slice(&(name.len() as u16).to_le_bytes());
        self.locals.extend_from_slice(name.as_bytes());
        match prev {
            None => self.locals.push(0),
            Some(v) => {
                self.locals.push(1);
                self.locals
                    .extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.locals.extend_from_slice(v);
            }
        }
    }

    /// Records the previous stored version (raw `bykey` value) of `key`.
    pub fn doc(&mut self, key: &[u8], raw: &[u8]) {
        self.n_docs += 1;
        self.buf
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(raw.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(raw);
    }

    /// Records `doc` as the previous stored version of its key, encoded as
    /// `bykey` stores it (the same bytes [`UndoBuilder::doc`] would copy).
    pub fn doc_version(&mut self, doc: &Document) {
        self.n_docs += 1;
        let key = doc.key.as_bytes();
        self.buf
            .extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.buf.extend_from_slice(key);
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0u8; 4]);
        encode_doc(doc, &mut self.buf);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The encoded record: format, header, docs count and docs, locals
    /// count and locals.
    pub fn finish(mut self) -> Vec<u8> {
        let at = 1 + HEADER_LEN;
        self.buf[at..at + 4].copy_from_slice(&self.n_docs.to_le_bytes());
        self.buf.extend_from_slice(&self.n_locals.to_le_bytes());
        self.buf.extend_from_slice(&self.locals);
        self.buf
    }
}

/// A decoded undo record.
#[derive(Debug)]
pub(crate) struct UndoRecord {
    pub prev: Header,
    /// Previous versions of overwritten documents (raw `bykey` values).
    pub docs: Vec<(DiskKey, Vec<u8>)>,
    /// Previous values of touched local documents.
    pub locals: Vec<(String, Option<Vec<u8>>)>,
}

impl UndoRecord {
    pub fn decode(raw: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader {
            buf: raw,
            what: "undo record",
        };
        let format = r.u8()?;
        if format != UNDO_FORMAT {
            return Err(malformed("undo record", format!("unknown format {format}")));
        }
        let prev = Header::decode(r.take(HEADER_LEN)?)?;
        let n_docs = r.u32()?;
        let mut docs = Vec::new();
        for _ in 0..n_docs {
            let klen = usize::from(r.u16()?);
            let key = disk_key(r.take(klen)?)?;
            let vlen = r.u32()? as usize;
            let value = r.take(vlen)?.to_vec();
            decode_meta(&value)?;
            docs.push((key, value));
        }
        let n_locals = r.u32()?;
        let mut locals = Vec::new();
        for _ in 0..n_locals {
            let nlen = usize::from(r.u16()?);
            let name = std::str::from_utf8(r.take(nlen)?)
                .map_err(|e| malformed("undo record", format!("local name: {e}")))?
                .to_owned();
            let value = match r.u8()? {
                0 => None,
                1 => {
                    let vlen = r.u32()? as usize;
                    Some(r.take(vlen)?.to_vec())
                }
                other => {
                    return Err(malformed("undo record", format!("bad local tag {other}")));
                }
            };
            locals.push((name, value));
        }
        if !r.rest().is_empty() {
            return Err(malformed("undo record", "trailing bytes"));
        }
        Ok(UndoRecord { prev, docs, locals })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvstore_core::{CollectionId, Datatype};

    #[test]
    fn prefixes_order_and_bound_ranges() {
        let a = prefix(Vbid(1), Revision(7));
        assert_eq!(parse_prefix(&a), (Vbid(1), Revision(7)));
        let end = prefix_end(&a);
        assert_eq!(end, prefix(Vbid(1), Revision(8)).to_vec());
        let wrap = prefix(Vbid(1), Revision(u64::MAX));
        assert_eq!(prefix_end(&wrap), prefix(Vbid(2), Revision(0)).to_vec());
        let top = [0xffu8; PREFIX_LEN];
        assert!(prefix_end(&top).as_slice() > data_key(&top, &[0xff; 600]).as_slice());
        assert!(hwm_key(Vbid(1)).as_slice() < a.as_slice());
        assert_eq!(parse_num_key(&num_key(&a, 42)), Some(42));
        let mark = deletion_mark_key(&a);
        assert!(mark.as_slice() > a.as_slice() && mark.as_slice() < end.as_slice());
    }

    #[test]
    fn doc_roundtrip() {
        let key = DiskKey::new(CollectionId(8), b"k").unwrap();
        let mut d = Document::new(key.clone(), Seqno(9), "value");
        d.meta.cas = Cas(3);
        d.meta.flags = 0xdead;
        d.meta.datatype = Datatype(Datatype::JSON);
        d.meta.deleted = Some(DeleteSource::Ttl);
        let mut raw = Vec::new();
        encode_doc(&d, &mut raw);
        assert_eq!(decode_doc(key.clone(), &raw, true).unwrap(), d);
        assert!(decode_doc(key.clone(), &raw[..5], true).is_err());
        assert!(decode_meta(&[9u8; 40]).is_err());
        // Every field at its widest, and a flags varint above 32 bits.
        let mut wide = Document::new(key.clone(), Seqno(u64::MAX), "v");
        wide.meta.cas = Cas(u64::MAX);
        wide.meta.rev_seqno = RevSeqno(u64::MAX);
        wide.meta.flags = u32::MAX;
        wide.meta.expiry = u32::MAX;
        let mut raw = Vec::new();
        encode_doc(&wide, &mut raw);
        assert_eq!(raw.len(), DOC_META_MAX + 1);
        assert_eq!(decode_doc(key.clone(), &raw, true).unwrap(), wide);
        let mut bad = vec![DOC_FORMAT, 1, 0, 1];
        put_varint(&mut bad, 1 << 33);
        bad.extend_from_slice(&[0, 0, 0]);
        assert!(decode_meta(&bad).is_err());
    }

    #[test]
    fn seq_record_roundtrip() {
        let mut b = SeqRecordBuilder::new(4);
        b.push(3, b"\x00a", false);
        b.push(4, b"\x08bb", true);
        b.push(300, b"\x00ccc", false);
        assert_eq!((b.len(), b.last()), (3, 300));
        let raw = b.take();
        assert_eq!(b.len(), 0);
        let got = decode_seq_record(&raw, 300).unwrap();
        let seqnos: Vec<(u64, bool, &[u8])> =
            got.iter().map(|e| (e.seqno, e.deleted, e.key)).collect();
        assert_eq!(
            seqnos,
            [
                (3, false, &b"\x00a"[..]),
                (4, true, &b"\x08bb"[..]),
                (300, false, &b"\x00ccc"[..])
            ]
        );
        // Stored under a lower key than its highest seqno, or damaged.
        assert!(decode_seq_record(&raw, 299).is_err());
        assert!(decode_seq_record(&raw[..raw.len() - 1], 300).is_err());
        let mut long = raw.clone();
        long.push(0);
        assert!(decode_seq_record(&long, 300).is_err());
        let mut huge = raw.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_seq_record(&huge, 300).is_err());
        b.push(7, b"\x00z", false);
        assert_eq!(decode_seq_record(&b.take(), 7).unwrap()[0].seqno, 7);
    }

    #[test]
    fn undo_doc_version_is_the_stored_bytes() {
        let key = DiskKey::new(CollectionId(8), b"k").unwrap();
        let d = Document::new(key.clone(), Seqno(4), "value");
        let mut raw = Vec::new();
        encode_doc(&d, &mut raw);
        let h = Header::default();
        let mut copied = UndoBuilder::new(&h);
        copied.doc(key.as_bytes(), &raw);
        let mut encoded = UndoBuilder::new(&h);
        encoded.doc_version(&d);
        assert_eq!(copied.finish(), encoded.finish());
    }

    #[test]
    fn header_and_undo_roundtrip() {
        let h = Header {
            high: 5,
            purge: 2,
            live: 3,
            deleted: 1,
            data_bytes: 99,
            commit_no: 4,
            undo_low: 2,
        };
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let key = DiskKey::new(CollectionId(0), b"a").unwrap();
        let mut raw = Vec::new();
        encode_doc(&Document::new(key.clone(), Seqno(1), "x"), &mut raw);
        let mut b = UndoBuilder::new(&h);
        b.local("_local/a", None);
        b.doc(key.as_bytes(), &raw);
        b.local("_local/b", Some(b"v"));
        let rec = UndoRecord::decode(&b.finish()).unwrap();
        assert_eq!(rec.prev, h);
        assert_eq!(rec.docs, vec![(key, raw)]);
        assert_eq!(
            rec.locals,
            vec![
                ("_local/a".to_owned(), None),
                ("_local/b".to_owned(), Some(b"v".to_vec()))
            ]
        );
        let empty = UndoRecord::decode(&UndoBuilder::new(&h).finish()).unwrap();
        assert!(empty.docs.is_empty() && empty.locals.is_empty());
    }
}
