//! The file header: what one commit made of the file.
//!
//! A header records the three tree roots, the high and purge seqnos, the
//! previous header (for rollback), and the *region* this commit wrote: the
//! physical bytes from the end of the previous durable write up to the header
//! block, with their CRC32C. Checking the region is what lets a commit use a
//! single sync (see the crate docs).

use crate::block::ChunkPtr;
use crate::codec::{DecodeError, Reader};
use crate::node::Reduce;
use kvstore_core::{CorruptionKind, Revision, Seqno, Vbid};

/// The on-disk format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
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
            if !r.is_empty() {
                return Err(DecodeError::new(
                    "header",
                    format!("{} trailing bytes", r.remaining()),
                ));
            }
            if prev.is_some_and(|p| p >= offset) || region_start > offset {
                return Err(DecodeError::new(
                    "header",
                    "points forward: its previous header or region lies after it",
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
        };
        let enc = h.encode();
        assert!(enc.len() <= crate::block::MAX_HEADER_LEN);
        assert_eq!(Header::decode(&enc, 8192).unwrap(), h);
        let mut v2 = enc.clone();
        v2[4] = 2;
        assert_eq!(
            Header::decode(&v2, 8192),
            Err(CorruptionKind::UnknownVersion(2))
        );
        assert!(Header::decode(&enc[..enc.len() - 1], 8192).is_err());
        // A header cannot point at a later one.
        assert!(Header::decode(&enc, 4096).is_err());
    }
}
