//! Byte-level encoding: varints, a bounds-checked reader, and the document
//! record stored in the leaves of the by-key and by-seqno trees.
//!
//! Every decoder checks each length against the bytes that remain before it
//! slices or allocates, so a damaged file gives a [`DecodeError`] (turned into
//! a typed corruption error by the caller, who knows the file and offset),
//! never a panic or a huge allocation.

use crate::block::ChunkPtr;
use bytes::Bytes;
use kvstore_core::{
    Cas, CorruptionKind, Datatype, DeleteSource, DiskKey, DocMeta, Document, RevSeqno, Seqno,
};

/// A structure that did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Which structure.
    pub what: &'static str,
    /// What was wrong.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(what: &'static str, detail: impl Into<String>) -> Self {
        DecodeError {
            what,
            detail: detail.into(),
        }
    }

    /// As a corruption kind.
    #[must_use]
    pub fn kind(self) -> CorruptionKind {
        CorruptionKind::Malformed {
            what: self.what,
            detail: self.detail,
        }
    }
}

pub(crate) type DecodeResult<T> = Result<T, DecodeError>;

/// Appends an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Appends a length-prefixed byte string.
pub(crate) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A cursor over bytes that refuses to read past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn err(&self, detail: impl Into<String>) -> DecodeError {
        DecodeError::new(self.what, format!("{} at byte {}", detail.into(), self.pos))
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> DecodeResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!("needs {n} bytes but {} remain", self.remaining())));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    #[inline]
    pub(crate) fn u8(&mut self) -> DecodeResult<u8> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    pub(crate) fn u32(&mut self) -> DecodeResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    #[inline]
    pub(crate) fn u64(&mut self) -> DecodeResult<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> DecodeResult<u64> {
        // Most varints here are one byte.
        if let Some(&b) = self.buf.get(self.pos)
            && b < 0x80
        {
            self.pos += 1;
            return Ok(u64::from(b));
        }
        let mut v: u64 = 0;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// A varint that must fit `max`.
    #[inline]
    pub(crate) fn varint_max(&mut self, max: u64, field: &str) -> DecodeResult<u64> {
        let v = self.varint()?;
        if v > max {
            return Err(self.err(format!("{field} {v} exceeds {max}")));
        }
        Ok(v)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    #[inline]
    pub(crate) fn bytes(&mut self, max: usize, field: &str) -> DecodeResult<&'a [u8]> {
        let len = self.varint_max(max as u64, field)? as usize;
        self.take(len)
    }
}

/// Where a document's value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueRef {
    /// In the leaf itself (small values).
    Inline(Bytes),
    /// In a chunk of its own.
    External(ChunkPtr),
}

impl ValueRef {
    /// The value's length in bytes.
    #[must_use]
    pub fn len(&self) -> u64 {
        match self {
            ValueRef::Inline(b) => b.len() as u64,
            ValueRef::External(p) => u64::from(p.len),
        }
    }

    /// True for an empty value.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A document's metadata and value reference, as a tree leaf stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRecord {
    /// The metadata.
    pub meta: DocMeta,
    /// The value.
    pub value: ValueRef,
}

const VALUE_INLINE: u8 = 0;
const VALUE_EXTERNAL: u8 = 1;

impl DocRecord {
    /// Encodes the record (without its key).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let m = &self.meta;
        put_varint(out, m.seqno.0);
        put_varint(out, m.rev_seqno.0);
        out.extend_from_slice(&m.cas.0.to_le_bytes());
        out.extend_from_slice(&m.flags.to_le_bytes());
        out.extend_from_slice(&m.expiry.to_le_bytes());
        out.push(m.datatype.0);
        out.push(DeleteSource::to_byte(m.deleted));
        match &self.value {
            ValueRef::Inline(v) => {
                out.push(VALUE_INLINE);
                put_bytes(out, v);
            }
            ValueRef::External(p) => {
                out.push(VALUE_EXTERNAL);
                put_varint(out, p.offset);
                put_varint(out, u64::from(p.len));
            }
        }
    }

    /// Decodes a record from `src[start..]`; inline values share `src`.
    pub(crate) fn decode(src: &Bytes, r: &mut Reader<'_>) -> DecodeResult<Self> {
        let seqno = Seqno(r.varint()?);
        let rev_seqno = RevSeqno(r.varint()?);
        let cas = Cas(r.u64()?);
        let flags = r.u32()?;
        let expiry = r.u32()?;
        let datatype = Datatype(r.u8()?);
        let byte = r.u8()?;
        let deleted = DeleteSource::from_byte(byte).ok_or_else(|| {
            DecodeError::new("document record", format!("unknown deletion source {byte}"))
        })?;
        let value = match r.u8()? {
            VALUE_INLINE => {
                let v = r.bytes(crate::block::MAX_CHUNK_LEN, "inline value length")?;
                ValueRef::Inline(slice_of(src, v))
            }
            VALUE_EXTERNAL => {
                let offset = r.varint()?;
                let len = r.varint_max(crate::block::MAX_CHUNK_LEN as u64, "value length")?;
                ValueRef::External(ChunkPtr {
                    offset,
                    len: len as u32,
                })
            }
            other => {
                return Err(DecodeError::new(
                    "document record",
                    format!("unknown value tag {other}"),
                ));
            }
        };
        Ok(DocRecord {
            meta: DocMeta {
                cas,
                rev_seqno,
                seqno,
                flags,
                expiry,
                datatype,
                deleted,
            },
            value,
        })
    }

    /// The bytes this document counts in `data_bytes`: key plus value.
    #[must_use]
    pub fn body_size(&self, key_len: usize) -> u64 {
        key_len as u64 + self.value.len()
    }
}

/// A zero-copy sub-slice of `src`; `part` must point into `src`.
pub(crate) fn slice_of(src: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        return Bytes::new();
    }
    src.slice_ref(part)
}

/// The by-seqno tree key of a seqno: big-endian so byte order is seqno order.
#[must_use]
pub fn seqno_key(s: Seqno) -> [u8; 8] {
    s.0.to_be_bytes()
}

/// Parses a by-seqno tree key.
pub(crate) fn parse_seqno_key(k: &[u8]) -> DecodeResult<Seqno> {
    let a: [u8; 8] = k
        .try_into()
        .map_err(|_| DecodeError::new("by-seqno key", format!("{} bytes, not 8", k.len())))?;
    Ok(Seqno(u64::from_be_bytes(a)))
}

/// A by-seqno leaf value: the key, then the record.
pub(crate) fn encode_seqno_value(key: &DiskKey, rec: &DocRecord, out: &mut Vec<u8>) {
    put_bytes(out, key.as_bytes());
    rec.encode(out);
}

/// Just what a leaf's reduction needs of a record: whether it is a
/// tombstone and its value length. Skips the rest without decoding it.
pub(crate) fn record_summary(r: &mut Reader<'_>) -> DecodeResult<(bool, u64)> {
    r.varint()?; // seqno
    r.varint()?; // rev seqno
    r.take(8 + 4 + 4 + 1)?; // cas, flags, expiry, datatype
    let deleted = r.u8()? != 0;
    let len = match r.u8()? {
        VALUE_INLINE => r.varint_max(crate::block::MAX_CHUNK_LEN as u64, "inline value length")?,
        VALUE_EXTERNAL => {
            r.varint()?;
            r.varint_max(crate::block::MAX_CHUNK_LEN as u64, "value length")?
        }
        other => {
            return Err(DecodeError::new(
                "document record",
                format!("unknown value tag {other}"),
            ));
        }
    };
    Ok((deleted, len))
}

/// Decodes a by-seqno leaf value.
pub(crate) fn decode_seqno_value(src: &Bytes) -> DecodeResult<(DiskKey, DocRecord)> {
    let mut r = Reader::new(src, "by-seqno record");
    let raw = r.bytes(kvstore_core::key::MAX_DISK_KEY_LEN, "key length")?;
    let key = DiskKey::from_bytes(raw)
        .map_err(|e| DecodeError::new("by-seqno record", format!("bad key: {e}")))?;
    let rec = DocRecord::decode(src, &mut r)?;
    Ok((key, rec))
}

/// Decodes a by-key leaf value.
pub(crate) fn decode_key_value(src: &Bytes) -> DecodeResult<DocRecord> {
    let mut r = Reader::new(src, "by-key record");
    DocRecord::decode(src, &mut r)
}

/// A document from a key and a record whose value is inline (external values
/// are resolved by the caller).
pub(crate) fn document(key: DiskKey, rec: DocRecord, value: Bytes) -> Document {
    Document {
        key,
        meta: rec.meta,
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn record_roundtrip() {
        let rec = DocRecord {
            meta: DocMeta {
                cas: Cas(u64::MAX),
                rev_seqno: RevSeqno(3),
                seqno: Seqno(1 << 40),
                flags: 7,
                expiry: 9,
                datatype: Datatype(3),
                deleted: Some(DeleteSource::Ttl),
            },
            value: ValueRef::Inline(Bytes::from_static(b"hello")),
        };
        let mut out = Vec::new();
        rec.encode(&mut out);
        let src = Bytes::from(out);
        let back = decode_key_value(&src).unwrap();
        assert_eq!(back, rec);
        let ext = DocRecord {
            value: ValueRef::External(ChunkPtr {
                offset: 123_456,
                len: 99,
            }),
            ..rec
        };
        let mut out = Vec::new();
        ext.encode(&mut out);
        assert_eq!(decode_key_value(&Bytes::from(out)).unwrap(), ext);
    }

    #[test]
    fn varint_limits() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(Reader::new(&out, "t").varint().unwrap(), u64::MAX);
        let bad = [0xffu8; 11];
        assert!(Reader::new(&bad, "t").varint().is_err());
        let over = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(Reader::new(&over, "t").varint().is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let src = Bytes::from(raw);
            let _ = decode_key_value(&src);
            let _ = decode_seqno_value(&src);
        }
    }
}
