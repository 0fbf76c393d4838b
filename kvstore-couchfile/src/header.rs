//! The index file header: what one checkpoint made of the index.
//!
//! A header records the three tree roots, the high and purge seqnos, the
//! previous header (for rollback), the *region* this checkpoint wrote (the
//! physical bytes from the end of the previous durable write up to the
//! header block, with their CRC32C; checking it is what lets a checkpoint
//! use a single sync), where in the log replay starts (every record from
//! there on is newer than the trees), and the table of log segments with
//! their live bytes.

use crate::block::ChunkPtr;
use crate::codec::{DecodeError, Reader, put_varint};
use crate::node::Reduce;
use kvstore_core::{CorruptionKind, Revision, Seqno, Vbid};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 2;
const MAGIC: [u8; 4] = *b"VBCF";
const NONE: u64 = u64::MAX;

/// A tree root: where it is and its reduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Root {
    /// The root node.
    pub ptr: ChunkPtr,
    /// The whole tree's reduction.
    pub reduce: Reduce,
}

/// One commit's header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    /// Where the header block starts (not stored; known from where it was
    /// read or written).
    pub offset: u64,
    /// The vbucket.
    pub vbid: Vbid,
    /// The file revision.
    pub revision: Revision,
    /// The previous header, if any.
    pub prev: Option<u64>,
    /// First physical byte written by this commit.
    pub region_start: u64,
    /// CRC32C of the physical bytes `[region_start, offset)`.
    pub region_crc: u32,
    /// Headers written to this file before this one.
    pub commit: u64,
    /// The highest seqno committed.
    pub high_seqno: Seqno,
    /// The highest seqno purged by compaction.
    pub purge_seqno: Seqno,
    /// When the header was written, in seconds since the epoch.
    pub timestamp: u64,
    /// The by-key tree.
    pub by_key: Option<Root>,
    /// The by-seqno tree.
    pub by_seqno: Option<Root>,
    /// The local-documents tree.
    pub local: Option<Root>,
    /// The log segment where replay starts.
    pub wal_seg: u32,
    /// The physical offset in that segment where replay starts.
    pub wal_off: u64,
    /// The commit number the record at the replay position has (or the
    /// next commit gets).
    pub next_commit: u64,
    /// The segment table chunk (see [`SegmentTable`]).
    pub segments: Option<ChunkPtr>,
    /// Headers with a lower `commit` cannot be rolled back to (a rollback
    /// or a rewrite of the index discarded what they relied on).
    pub history_floor: u64,
    /// Bytes of log reclaimed so far, in total.
    pub reclaimed: u64,
    /// Node bytes of the trees right after the index was last rewritten
    /// densely (0 before the first rewrite).
    pub dense_bytes: u64,
    /// Entries in the by-key tree when it was last rewritten.
    pub dense_entries: u64,
}

/// Appends `header` to `out`, stamping its region: the physical bytes from
/// `region_start` to the header block, whose CRC is `prior_crc` (over what
/// was already flushed from `region_start`) extended by `out`'s bytes and
/// the padding before the header block.
pub(crate) fn append_header(
    out: &mut crate::block::PhysWriter,
    header: &mut Header,
    region_start: u64,
    prior_crc: u32,
) {
    let bs = crate::block::BLOCK_SIZE;
    let pad = (bs - out.pos() % bs) % bs;
    let mut crc = crc32c::crc32c_append(prior_crc, out.bytes());
    crc = crc32c::crc32c_append(crc, &vec![0u8; pad as usize]);
    header.region_start = region_start;
    header.region_crc = crc;
    header.offset = out.write_header(&header.encode());
}

/// One log segment as a checkpoint recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SegmentStat {
    /// The segment number.
    pub no: u32,
    /// Item bytes written to it.
    pub total: u64,
    /// Item bytes of it that current versions still point at.
    pub live: u64,
    /// Its physical length.
    pub phys: u64,
    /// The checkpoint at which it was first seen with nothing live and
    /// nothing to replay (it is removed one checkpoint later, so the
    /// previous checkpoint stays a rollback point).
    pub empty_since: Option<u64>,
}

/// The segment table stored in a chunk of the index file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SegmentTable(pub Vec<SegmentStat>);

impl SegmentTable {
    /// Encodes the table.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.0.len() * 16);
        put_varint(&mut out, self.0.len() as u64);
        for s in &self.0 {
            put_varint(&mut out, u64::from(s.no));
            put_varint(&mut out, s.total);
            put_varint(&mut out, s.live);
            put_varint(&mut out, s.phys);
            put_varint(&mut out, s.empty_since.map_or(0, |c| c + 1));
        }
        out
    }

    /// Decodes the table.
    pub fn decode(raw: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(raw, "segment table");
        let n = r.varint_max(raw.len() as u64, "segment count")?;
        let mut v = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let no = r.varint_max(u64::from(u32::MAX), "segment number")? as u32;
            let total = r.varint()?;
            let live = r.varint()?;
            let phys = r.varint()?;
            let e = r.varint()?;
            if live > total {
                return Err(DecodeError::new(
                    "segment table",
                    format!("segment {no}: {live} live bytes of {total}"),
                ));
            }
            if v.last().is_some_and(|p: &SegmentStat| p.no >= no) {
                return Err(DecodeError::new("segment table", "segments out of order"));
            }
            v.push(SegmentStat {
                no,
                total,
                live,
                phys,
                empty_since: e.checked_sub(1),
            });
        }
        if !r.is_empty() {
            return Err(DecodeError::new("segment table", "trailing bytes"));
        }
        Ok(SegmentTable(v))
    }
}

impl Header {
    /// Encodes the header payload.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.vbid.0.to_le_bytes());
        out.extend_from_slice(&self.revision.0.to_le_bytes());
        out.extend_from_slice(&self.prev.unwrap_or(NONE).to_le_bytes());
        out.extend_from_slice(&self.region_start.to_le_bytes());
        out.extend_from_slice(&self.region_crc.to_le_bytes());
        out.extend_from_slice(&self.commit.to_le_bytes());
        out.extend_from_slice(&self.high_seqno.0.to_le_bytes());
        out.extend_from_slice(&self.purge_seqno.0.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        for root in [&self.by_key, &self.by_seqno, &self.local] {
            match root {
                None => out.push(0),
                Some(r) => {
                    out.push(1);
                    out.extend_from_slice(&r.ptr.offset.to_le_bytes());
                    out.extend_from_slice(&r.ptr.len.to_le_bytes());
                    out.extend_from_slice(&r.reduce.live.to_le_bytes());
                    out.extend_from_slice(&r.reduce.deleted.to_le_bytes());
                    out.extend_from_slice(&r.reduce.bytes.to_le_bytes());
                }
            }
        }
        out.extend_from_slice(&self.wal_seg.to_le_bytes());
        out.extend_from_slice(&self.wal_off.to_le_bytes());
        out.extend_from_slice(&self.next_commit.to_le_bytes());
        match self.segments {
            None => out.push(0),
            Some(p) => {
                out.push(1);
                out.extend_from_slice(&p.offset.to_le_bytes());
                out.extend_from_slice(&p.len.to_le_bytes());
            }
        }
        out.extend_from_slice(&self.history_floor.to_le_bytes());
        out.extend_from_slice(&self.reclaimed.to_le_bytes());
        out.extend_from_slice(&self.dense_bytes.to_le_bytes());
        out.extend_from_slice(&self.dense_entries.to_le_bytes());
        out
    }

    /// Decodes a header payload found at `offset`.
    pub fn decode(payload: &[u8], offset: u64) -> Result<Header, CorruptionKind> {
        let mut r = Reader::new(payload, "header");
        let malformed = |e: DecodeError| e.kind();
        let magic = r.take(4).map_err(malformed)?;
        if magic != MAGIC {
            return Err(CorruptionKind::Malformed {
                what: "header",
                detail: format!("bad magic {magic:02x?}"),
            });
        }
        let version = r.u32().map_err(malformed)?;
        if version != FORMAT_VERSION {
            return Err(CorruptionKind::UnknownVersion(version));
        }
        let mut fields = || -> Result<Header, DecodeError> {
            let vbid = Vbid(u16::from_le_bytes([r.u8()?, r.u8()?]));
            let revision = Revision(r.u64()?);
            let prev = match r.u64()? {
                NONE => None,
                p => Some(p),
            };
            let region_start = r.u64()?;
            let region_crc = r.u32()?;
            let commit = r.u64()?;
            let high_seqno = Seqno(r.u64()?);
            let purge_seqno = Seqno(r.u64()?);
            let timestamp = r.u64()?;
            let mut roots = [None; 3];
            for root in &mut roots {
                *root = match r.u8()? {
                    0 => None,
                    1 => Some(Root {
                        ptr: ChunkPtr {
                            offset: r.u64()?,
                            len: r.u32()?,
                        },
                        reduce: Reduce {
                            live: r.u64()?,
                            deleted: r.u64()?,
                            bytes: r.u64()?,
                        },
                    }),
                    t => return Err(DecodeError::new("header", format!("bad root tag {t}"))),
                };
            }
            let wal_seg = r.u32()?;
            let wal_off = r.u64()?;
            let next_commit = r.u64()?;
            let segments = match r.u8()? {
                0 => None,
                1 => Some(ChunkPtr {
                    offset: r.u64()?,
                    len: r.u32()?,
                }),
                t => return Err(DecodeError::new("header", format!("bad segment tag {t}"))),
            };
            let history_floor = r.u64()?;
            let reclaimed = r.u64()?;
            let dense_bytes = r.u64()?;
            let dense_entries = r.u64()?;
            if !r.is_empty() {
                return Err(DecodeError::new(
                    "header",
                    format!("{} trailing bytes", r.remaining()),
                ));
            }
            if prev.is_some_and(|p| p >= offset)
                || region_start > offset
                || roots.iter().flatten().any(|rt| rt.ptr.offset >= offset)
                || segments.is_some_and(|p| p.offset >= offset)
            {
                return Err(DecodeError::new(
                    "header",
                    "points forward: a root, its segment table, its previous header or its region lies after it",
                ));
            }
            let [by_key, by_seqno, local] = roots;
            Ok(Header {
                offset,
                vbid,
                revision,
                prev,
                region_start,
                region_crc,
                commit,
                high_seqno,
                purge_seqno,
                timestamp,
                by_key,
                by_seqno,
                local,
                wal_seg,
                wal_off,
                next_commit,
                segments,
                history_floor,
                reclaimed,
                dense_bytes,
                dense_entries,
            })
        };
        fields().map_err(DecodeError::kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_version_check() {
        let h = Header {
            offset: 8192,
            vbid: Vbid(1023),
            revision: Revision(7),
            prev: Some(4096),
            region_start: 5000,
            region_crc: 0xdead_beef,
            commit: 3,
            high_seqno: Seqno(99),
            purge_seqno: Seqno(5),
            timestamp: 1_700_000_000,
            by_key: Some(Root {
                ptr: ChunkPtr {
                    offset: 4200,
                    len: 77,
                },
                reduce: Reduce {
                    live: 1,
                    deleted: 2,
                    bytes: 3,
                },
            }),
            by_seqno: None,
            local: None,
            wal_seg: 2,
            wal_off: 8192,
            next_commit: 17,
            segments: Some(ChunkPtr {
                offset: 4100,
                len: 20,
            }),
            history_floor: 1,
            reclaimed: 5,
            dense_bytes: 6,
            dense_entries: 7,
        };
        let enc = h.encode();
        assert!(enc.len() <= crate::block::MAX_HEADER_LEN);
        assert_eq!(Header::decode(&enc, 8192).unwrap(), h);
        let mut v3 = enc.clone();
        v3[4] = 3;
        assert_eq!(
            Header::decode(&v3, 8192),
            Err(CorruptionKind::UnknownVersion(3))
        );
        assert!(Header::decode(&enc[..enc.len() - 1], 8192).is_err());
        // A header cannot point at a later one.
        assert!(Header::decode(&enc, 4096).is_err());
    }

    #[test]
    fn segment_table_roundtrip() {
        let t = SegmentTable(vec![
            SegmentStat {
                no: 1,
                total: 100,
                live: 40,
                phys: 8192,
                empty_since: None,
            },
            SegmentStat {
                no: 4,
                total: 0,
                live: 0,
                phys: 4096,
                empty_since: Some(3),
            },
        ]);
        assert_eq!(SegmentTable::decode(&t.encode()).unwrap(), t);
        let mut bad = t.clone();
        bad.0[0].live = 101;
        assert!(SegmentTable::decode(&bad.encode()).is_err());
    }
}
