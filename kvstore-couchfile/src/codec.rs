//! Byte-level encoding: varints, a bounds-checked reader, and the records
//! stored in the leaves of the by-key and by-seqno index trees.
//!
//! Every decoder checks each length against the bytes that remain before it
//! slices or allocates, so a damaged file gives a [`DecodeError`] (turned into
//! a typed corruption error by the caller, who knows the file and offset),
//! never a panic or a huge allocation.

use crate::memtable::IndexRec;
use crate::wal::WalPtr;
use bytes::Bytes;
use kvstore_core::{CorruptionKind, DeleteSource, Seqno};

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

/// The by-key leaf value: an [`IndexRec`] without its key.
pub(crate) fn encode_key_rec(rec: &IndexRec, out: &mut Vec<u8>) {
    put_varint(out, rec.seqno.0);
    out.push(DeleteSource::to_byte(rec.deleted));
    out.extend_from_slice(&rec.expiry.to_le_bytes());
    put_varint(out, u64::from(rec.body));
    put_ptr(rec.ptr, out);
}

fn put_ptr(p: WalPtr, out: &mut Vec<u8>) {
    put_varint(out, u64::from(p.seg));
    put_varint(out, p.off);
    put_varint(out, u64::from(p.len));
}

fn take_ptr(r: &mut Reader<'_>) -> DecodeResult<WalPtr> {
    Ok(WalPtr {
        seg: r.varint_max(u64::from(u32::MAX), "segment")? as u32,
        off: r.varint()?,
        len: r.varint_max(crate::wal::MAX_ITEM_LEN, "item length")? as u32,
    })
}

fn take_deleted(r: &mut Reader<'_>, what: &'static str) -> DecodeResult<Option<DeleteSource>> {
    let b = r.u8()?;
    DeleteSource::from_byte(b)
        .ok_or_else(|| DecodeError::new(what, format!("unknown deletion source {b}")))
}

/// Decodes a by-key leaf value.
pub(crate) fn decode_key_rec(src: &[u8]) -> DecodeResult<IndexRec> {
    let mut r = Reader::new(src, "by-key record");
    let seqno = Seqno(r.varint()?);
    let deleted = take_deleted(&mut r, "by-key record")?;
    let expiry = r.u32()?;
    let body = r.varint_max(u64::from(u32::MAX), "body size")? as u32;
    let ptr = take_ptr(&mut r)?;
    if !r.is_empty() {
        return Err(DecodeError::new("by-key record", "trailing bytes"));
    }
    Ok(IndexRec {
        seqno,
        deleted,
        expiry,
        body,
        ptr,
    })
}

/// The by-seqno leaf value: deletion state, body size and the item.
pub(crate) fn encode_seq_rec(rec: &IndexRec, out: &mut Vec<u8>) {
    out.push(DeleteSource::to_byte(rec.deleted));
    put_varint(out, u64::from(rec.body));
    put_ptr(rec.ptr, out);
}

/// A by-seqno entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRec {
    /// `Some` for a tombstone.
    pub deleted: Option<DeleteSource>,
    /// Key plus value bytes.
    pub body: u32,
    /// The item in the log.
    pub ptr: WalPtr,
}

/// Decodes a by-seqno leaf value.
pub(crate) fn decode_seq_rec(src: &[u8]) -> DecodeResult<SeqRec> {
    let mut r = Reader::new(src, "by-seqno record");
    let deleted = take_deleted(&mut r, "by-seqno record")?;
    let body = r.varint_max(u64::from(u32::MAX), "body size")? as u32;
    let ptr = take_ptr(&mut r)?;
    if !r.is_empty() {
        return Err(DecodeError::new("by-seqno record", "trailing bytes"));
    }
    Ok(SeqRec { deleted, body, ptr })
}

/// What a by-key leaf's reduction needs: tombstone or not, and body size.
/// Reads only those fields (the record is checked whole when it is read).
pub(crate) fn key_rec_summary(src: &[u8]) -> DecodeResult<(bool, u64)> {
    let mut r = Reader::new(src, "by-key record");
    r.varint()?;
    let deleted = take_deleted(&mut r, "by-key record")?;
    r.take(4)?;
    let body = r.varint_max(u64::from(u32::MAX), "body size")?;
    Ok((deleted.is_some(), body))
}

/// What a by-seqno leaf's reduction needs.
pub(crate) fn seq_rec_summary(src: &[u8]) -> DecodeResult<(bool, u64)> {
    let mut r = Reader::new(src, "by-seqno record");
    let deleted = take_deleted(&mut r, "by-seqno record")?;
    let body = r.varint_max(u64::from(u32::MAX), "body size")?;
    Ok((deleted.is_some(), body))
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_roundtrip() {
        let rec = IndexRec {
            seqno: Seqno(1 << 40),
            deleted: Some(DeleteSource::Ttl),
            expiry: 9,
            body: 77,
            ptr: WalPtr {
                seg: 3,
                off: 123_456,
                len: 99,
            },
        };
        let mut out = Vec::new();
        encode_key_rec(&rec, &mut out);
        assert_eq!(decode_key_rec(&out).unwrap(), rec);
        assert_eq!(key_rec_summary(&out).unwrap(), (true, 77));
        let mut out = Vec::new();
        encode_seq_rec(&rec, &mut out);
        let s = decode_seq_rec(&out).unwrap();
        assert_eq!((s.deleted, s.body, s.ptr), (rec.deleted, rec.body, rec.ptr));
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
            let _ = decode_key_rec(&raw);
            let _ = decode_seq_rec(&raw);
        }
    }
}
