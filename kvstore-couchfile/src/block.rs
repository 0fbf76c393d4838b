//! The physical layout: 4 KiB blocks, each starting with a marker byte.
//!
//! A data block starts with `0x00`, a header block with `0x01`. Chunks (a
//! 4-byte length, a 4-byte CRC32C, then the payload) are written as a
//! logical byte stream that skips the first byte of every block, so no
//! payload byte, however chosen by a client, can ever sit where a marker
//! goes. A header always starts a block, right after its `0x01` marker, and
//! so can be found by scanning back from the end of the file one block at a
//! time.

use crate::io::FileIo;
use bytes::Bytes;
use kvstore_core::{CorruptionKind, StoreError, StoreResult};

/// The block size.
pub const BLOCK_SIZE: u64 = 4096;
/// The first byte of a data block.
pub const MARKER_DATA: u8 = 0x00;
/// The first byte of a header block.
pub const MARKER_HEADER: u8 = 0x01;
/// Bytes before a chunk's payload: length and CRC32C.
pub const CHUNK_PREFIX: u64 = 8;
/// The largest chunk payload a file may hold (values are at most 20 MiB in
/// practice; anything above this is damage).
pub const MAX_CHUNK_LEN: usize = 64 << 20;
/// The largest header payload: the header block holds the marker, a length,
/// the payload and a CRC.
pub const MAX_HEADER_LEN: usize = BLOCK_SIZE as usize - 9;

/// Where a chunk is: the physical offset of its prefix and its payload
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChunkPtr {
    /// Physical offset of the chunk's first byte (its length prefix).
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// The physical bytes that `logical` payload bytes take when written from
/// physical position `pos`, counting the block markers they step over.
#[must_use]
pub fn phys_span(pos: u64, logical: u64) -> u64 {
    let mut remaining = logical;
    let mut p = pos;
    while remaining > 0 {
        if p.is_multiple_of(BLOCK_SIZE) {
            p += 1;
            continue;
        }
        let room = BLOCK_SIZE - p % BLOCK_SIZE;
        let take = room.min(remaining);
        p += take;
        remaining -= take;
    }
    p - pos
}

/// Builds the physical bytes of a write that starts at `base`.
#[derive(Debug)]
pub struct PhysWriter {
    base: u64,
    buf: Vec<u8>,
}

impl PhysWriter {
    /// A writer whose first byte will land at physical offset `base`.
    #[must_use]
    pub fn new(base: u64) -> Self {
        PhysWriter {
            base,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// The physical offset the next byte lands at.
    #[must_use]
    pub fn pos(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// Where this writer started.
    #[must_use]
    pub fn base(&self) -> u64 {
        self.base
    }

    /// The bytes built so far.
    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes built so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when nothing was built.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn put_logical(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let p = self.pos();
            if p.is_multiple_of(BLOCK_SIZE) {
                self.buf.push(MARKER_DATA);
                continue;
            }
            let room = (BLOCK_SIZE - p % BLOCK_SIZE) as usize;
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
    }

    /// Appends a chunk and returns where it is.
    pub fn write_chunk(&mut self, payload: &[u8]) -> ChunkPtr {
        let offset = self.pos();
        let len = payload.len() as u32;
        let mut prefix = [0u8; CHUNK_PREFIX as usize];
        prefix[..4].copy_from_slice(&len.to_le_bytes());
        prefix[4..].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        self.put_logical(&prefix);
        self.put_logical(payload);
        ChunkPtr { offset, len }
    }

    /// Pads to the next block boundary and appends a header block. Returns
    /// the header block's offset.
    pub fn write_header(&mut self, payload: &[u8]) -> u64 {
        debug_assert!(payload.len() <= MAX_HEADER_LEN);
        let p = self.pos();
        if !p.is_multiple_of(BLOCK_SIZE) {
            let pad = (BLOCK_SIZE - p % BLOCK_SIZE) as usize;
            self.buf.resize(self.buf.len() + pad, 0);
        }
        let offset = self.pos();
        self.buf.push(MARKER_HEADER);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.buf
            .extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        offset
    }

    /// Writes what was built to `file` at `base` and starts a new run at the
    /// end of it.
    pub fn flush_to(&mut self, file: &FileIo) -> StoreResult<()> {
        if !self.buf.is_empty() {
            file.write_at(&self.buf, self.base)?;
            self.base += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

/// Reads `span` physical bytes at `offset` and removes block markers,
/// checking each is a data marker.
fn read_logical(file: &FileIo, offset: u64, span: u64) -> StoreResult<Vec<u8>> {
    let mut phys = vec![0u8; span as usize];
    file.read_at(&mut phys, offset)?;
    let mut out = Vec::with_capacity(phys.len());
    let mut i = 0usize;
    while i < phys.len() {
        let p = offset + i as u64;
        if p.is_multiple_of(BLOCK_SIZE) {
            if phys[i] != MARKER_DATA {
                return Err(StoreError::corrupt(
                    file.path(),
                    p,
                    CorruptionKind::Malformed {
                        what: "block marker",
                        detail: format!("a chunk runs into a block marked {:#04x}", phys[i]),
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

/// Reads and checks the chunk at `ptr` in a file of `file_len` bytes.
pub fn read_chunk(file: &FileIo, file_len: u64, ptr: ChunkPtr) -> StoreResult<Bytes> {
    let corrupt = |offset: u64, kind| StoreError::corrupt(file.path(), offset, kind);
    if ptr.len as usize > MAX_CHUNK_LEN {
        return Err(corrupt(
            ptr.offset,
            CorruptionKind::ImpossibleLength {
                len: u64::from(ptr.len),
                max: MAX_CHUNK_LEN as u64,
            },
        ));
    }
    let span = phys_span(ptr.offset, CHUNK_PREFIX + u64::from(ptr.len));
    let end = ptr.offset.saturating_add(span);
    if end > file_len {
        return Err(corrupt(
            ptr.offset,
            CorruptionKind::Truncated {
                needed: end,
                available: file_len,
            },
        ));
    }
    let logical = read_logical(file, ptr.offset, span)?;
    let stored_len = u32::from_le_bytes([logical[0], logical[1], logical[2], logical[3]]);
    if stored_len != ptr.len {
        return Err(corrupt(
            ptr.offset,
            CorruptionKind::Malformed {
                what: "chunk",
                detail: format!(
                    "length prefix {stored_len} does not match the pointer's {}",
                    ptr.len
                ),
            },
        ));
    }
    let stored_crc = u32::from_le_bytes([logical[4], logical[5], logical[6], logical[7]]);
    let payload = &logical[CHUNK_PREFIX as usize..];
    let computed = crc32c::crc32c(payload);
    if stored_crc != computed {
        return Err(corrupt(
            ptr.offset,
            CorruptionKind::Checksum {
                stored: stored_crc,
                computed,
            },
        ));
    }
    let mut logical = logical;
    logical.drain(..CHUNK_PREFIX as usize);
    Ok(Bytes::from(logical))
}

/// What a block start holds.
#[derive(Debug, PartialEq, Eq)]
pub enum BlockProbe {
    /// A data block.
    Data,
    /// A header block whose framing and CRC are intact: its payload.
    Header(Vec<u8>),
    /// Marked as a header, or with an unknown marker, but damaged.
    Damaged(CorruptionKind),
}

/// Looks at the block starting at `offset`.
pub fn probe_block(file: &FileIo, file_len: u64, offset: u64) -> StoreResult<BlockProbe> {
    debug_assert_eq!(offset % BLOCK_SIZE, 0);
    let avail = (file_len - offset).min(BLOCK_SIZE) as usize;
    if avail == 0 {
        return Ok(BlockProbe::Data);
    }
    let mut block = vec![0u8; avail];
    file.read_at(&mut block, offset)?;
    match block[0] {
        MARKER_DATA => return Ok(BlockProbe::Data),
        MARKER_HEADER => {}
        other => {
            return Ok(BlockProbe::Damaged(CorruptionKind::Malformed {
                what: "block marker",
                detail: format!("unknown marker {other:#04x}"),
            }));
        }
    }
    if avail < 5 {
        return Ok(BlockProbe::Damaged(CorruptionKind::Truncated {
            needed: offset + 5,
            available: file_len,
        }));
    }
    let len = u32::from_le_bytes([block[1], block[2], block[3], block[4]]) as usize;
    if len > MAX_HEADER_LEN {
        return Ok(BlockProbe::Damaged(CorruptionKind::ImpossibleLength {
            len: len as u64,
            max: MAX_HEADER_LEN as u64,
        }));
    }
    if 5 + len + 4 > avail {
        return Ok(BlockProbe::Damaged(CorruptionKind::Truncated {
            needed: offset + (5 + len + 4) as u64,
            available: file_len,
        }));
    }
    let payload = &block[5..5 + len];
    let c = &block[5 + len..5 + len + 4];
    let stored = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Ok(BlockProbe::Damaged(CorruptionKind::Checksum {
            stored,
            computed,
        }));
    }
    Ok(BlockProbe::Header(payload.to_vec()))
}

/// The physical end of the header block at `offset` with a payload of
/// `payload_len` bytes: where the next write may start.
#[must_use]
pub fn header_end(offset: u64, payload_len: usize) -> u64 {
    offset + 1 + 4 + payload_len as u64 + 4
}

/// CRC32C of the physical bytes `[start, end)` of `file`, read in large
/// pieces.
pub fn crc_range(file: &FileIo, start: u64, end: u64) -> StoreResult<u32> {
    let mut crc = 0u32;
    let mut buf = vec![0u8; (1 << 20).min(end.saturating_sub(start)) as usize];
    let mut p = start;
    while p < end {
        let n = ((end - p) as usize).min(buf.len());
        file.read_at(&mut buf[..n], p)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        p += n as u64;
    }
    Ok(crc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Io;
    use proptest::prelude::*;

    #[test]
    fn span_counts_markers() {
        assert_eq!(phys_span(0, 1), 2);
        assert_eq!(phys_span(1, 4095), 4095);
        assert_eq!(phys_span(1, 4096), 4097);
        assert_eq!(phys_span(4095, 2), 3);
        assert_eq!(phys_span(10, 0), 0);
    }

    proptest! {
        #[test]
        fn chunks_roundtrip_across_blocks(
            start in 0u64..9000,
            sizes in proptest::collection::vec(0usize..10_000, 1..8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let f = FileIo::create(&dir.path().join("f"), Io::default()).unwrap();
            f.write_at(&vec![0u8; start as usize], 0).unwrap();
            let mut w = PhysWriter::new(start);
            let payloads: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (0..n).map(|j| (i * 31 + j) as u8 | 1).collect())
                .collect();
            let ptrs: Vec<ChunkPtr> = payloads.iter().map(|p| w.write_chunk(p)).collect();
            let hdr = w.write_header(b"header");
            prop_assert_eq!(hdr % BLOCK_SIZE, 0);
            w.flush_to(&f).unwrap();
            let len = f.size().unwrap();
            for (p, payload) in ptrs.iter().zip(&payloads) {
                prop_assert_eq!(&read_chunk(&f, len, *p).unwrap()[..], &payload[..]);
            }
            prop_assert_eq!(probe_block(&f, len, hdr).unwrap(), BlockProbe::Header(b"header".to_vec()));
            // Every block start that is not the header is marked as data.
            let mut b = start.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
            while b < hdr {
                prop_assert_eq!(probe_block(&f, len, b).unwrap(), BlockProbe::Data);
                b += BLOCK_SIZE;
            }
        }
    }

    #[test]
    fn damaged_chunks_are_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        let f = FileIo::create(&dir.path().join("f"), Io::default()).unwrap();
        let mut w = PhysWriter::new(0);
        let p = w.write_chunk(b"some payload");
        w.flush_to(&f).unwrap();
        let len = f.size().unwrap();
        // Flip a payload byte.
        let mut b = [0u8; 1];
        f.read_at(&mut b, 12).unwrap();
        f.write_at(&[b[0] ^ 0xff], 12).unwrap();
        let e = read_chunk(&f, len, p).unwrap_err();
        assert!(matches!(
            e.corruption().map(|c| &c.kind),
            Some(CorruptionKind::Checksum { .. })
        ));
        // A pointer past the end.
        let e = read_chunk(
            &f,
            len,
            ChunkPtr {
                offset: 5,
                len: 100,
            },
        )
        .unwrap_err();
        assert!(matches!(
            e.corruption().map(|c| &c.kind),
            Some(CorruptionKind::Truncated { .. })
        ));
        // An impossible length.
        let e = read_chunk(
            &f,
            len,
            ChunkPtr {
                offset: 0,
                len: u32::MAX,
            },
        )
        .unwrap_err();
        assert!(matches!(
            e.corruption().map(|c| &c.kind),
            Some(CorruptionKind::ImpossibleLength { .. })
        ));
        assert_eq!(e.corruption().unwrap().path, dir.path().join("f"));
    }
}
