//! One index file: finding its newest valid header, and reading nodes and
//! older headers from it.

use crate::block::{
    BLOCK_SIZE, BlockProbe, ChunkPtr, crc_range, header_end, probe_block, read_chunk,
};
use crate::btree::NodeRead;
use crate::cache::{NodeCache, new_file_id};
use crate::codec::DecodeError;
use crate::fdcache::FileSlot;
use crate::header::Header;
use crate::io::FileIo;
use crate::node::Node;
use bytes::Bytes;
use kvstore_core::{CorruptionKind, StoreError, StoreResult};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// An open index file.
#[derive(Debug)]
pub struct CouchFile {
    slot: Arc<FileSlot>,
    id: u64,
    cache: Arc<NodeCache>,
    /// The end of the durable, committed part: reads never go past it.
    end: AtomicU64,
}

/// What opening a file found.
#[derive(Debug)]
pub struct Opened {
    /// The file.
    pub file: Arc<CouchFile>,
    /// Its newest valid header.
    pub header: Header,
    /// Bytes after that header that belonged to a torn commit (removed when
    /// the file was opened for writing).
    pub torn_bytes: u64,
}

impl CouchFile {
    /// Wraps a file whose committed part ends at `end`.
    pub(crate) fn new(slot: Arc<FileSlot>, cache: Arc<NodeCache>, end: u64) -> Arc<Self> {
        Arc::new(CouchFile {
            slot,
            id: new_file_id(),
            cache,
            end: AtomicU64::new(end),
        })
    }

    /// Opens `path` and finds its newest valid header.
    ///
    /// Scanning back from the end, the first header-marked block is either a
    /// valid header whose region checks, or the header of a torn final
    /// commit, which must sit in the file's last block; the header before a
    /// torn one must then be valid. A damaged header anywhere else has later
    /// data after it and is reported as corruption, as is a newest header
    /// whose predecessor is damaged. A torn tail is cut off when `writable`.
    pub fn open(slot: Arc<FileSlot>, writable: bool, cache: Arc<NodeCache>) -> StoreResult<Opened> {
        let fio = slot.get()?;
        let path = &slot.path();
        let len = fio.size()?;
        let corrupt = |offset: u64, kind| StoreError::corrupt(path, offset, kind);
        if len == 0 {
            return Err(corrupt(0, CorruptionKind::NoHeader));
        }
        let last_block = (len - 1) / BLOCK_SIZE * BLOCK_SIZE;
        let mut torn: Option<u64> = None;
        let mut block = last_block;
        let (header, payload_len) = loop {
            let damaged = match probe_block(&fio, len, block)? {
                BlockProbe::Data => None,
                BlockProbe::Damaged(kind) => Some(kind),
                BlockProbe::Header(payload) => match Header::decode(&payload, block) {
                    Ok(h) => {
                        let crc = crc_range(&fio, h.region_start, h.offset)?;
                        if crc == h.region_crc {
                            break (h, payload.len());
                        }
                        Some(CorruptionKind::Checksum {
                            stored: h.region_crc,
                            computed: crc,
                        })
                    }
                    Err(CorruptionKind::UnknownVersion(v)) => {
                        return Err(corrupt(block, CorruptionKind::UnknownVersion(v)));
                    }
                    Err(kind) => Some(kind),
                },
            };
            if let Some(kind) = damaged {
                if let Some(later) = torn {
                    tracing::error!(path = %path.display(), block, later, %kind, "second damaged header");
                    return Err(corrupt(
                        block,
                        CorruptionKind::BadHeaderBeforeValidData {
                            later_offset: later,
                        },
                    ));
                }
                if block != last_block {
                    tracing::error!(path = %path.display(), block, %kind, "damaged header before later data");
                    return Err(corrupt(
                        block,
                        CorruptionKind::BadHeaderBeforeValidData {
                            later_offset: block + BLOCK_SIZE,
                        },
                    ));
                }
                tracing::warn!(path = %path.display(), block, %kind, "ignoring the torn final commit");
                torn = Some(block);
            }
            if block == 0 {
                return Err(corrupt(0, CorruptionKind::NoHeader));
            }
            block -= BLOCK_SIZE;
        };
        if let Some(prev) = header.prev {
            match probe_block(&fio, len, prev)? {
                BlockProbe::Header(p) if Header::decode(&p, prev).is_ok() => {}
                _ => {
                    return Err(corrupt(
                        prev,
                        CorruptionKind::BadHeaderBeforeValidData {
                            later_offset: header.offset,
                        },
                    ));
                }
            }
        }
        let end = header_end(header.offset, payload_len);
        let torn_bytes = len.saturating_sub(end);
        if torn_bytes > 0 && writable {
            tracing::warn!(path = %path.display(), torn_bytes, "cutting off a torn final commit");
            // No sync needed: if a crash loses the truncation, the tail is
            // torn again and ignored again; the next commit's sync makes the
            // new length durable along with its data.
            fio.truncate(end)?;
        }
        drop(fio);
        let file = CouchFile::new(slot, cache, end);
        Ok(Opened {
            file,
            header,
            torn_bytes,
        })
    }

    /// The file's path.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        self.slot.path()
    }

    /// The open descriptor.
    pub fn io(&self) -> StoreResult<Arc<FileIo>> {
        self.slot.get()
    }

    /// The file's slot.
    #[must_use]
    pub fn slot(&self) -> &Arc<FileSlot> {
        &self.slot
    }

    /// The end of the committed part.
    #[must_use]
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// Records a newly committed end.
    pub(crate) fn set_end(&self, end: u64) {
        self.end.store(end, Ordering::Release);
    }

    /// The id naming this file in the node cache.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The node cache.
    #[must_use]
    pub fn cache(&self) -> &Arc<NodeCache> {
        &self.cache
    }

    /// Caches a node just written at `ptr`.
    pub(crate) fn cache_node(&self, ptr: ChunkPtr, node: Arc<Node>) {
        self.cache.insert((self.id, ptr.offset), node);
    }

    /// Reads a chunk.
    pub fn read_chunk(&self, ptr: ChunkPtr) -> StoreResult<Bytes> {
        read_chunk(&*self.io()?, self.end(), ptr)
    }

    /// Reads and checks the header at `offset` (for rollback and dumps).
    pub fn read_header(&self, offset: u64) -> StoreResult<Header> {
        let corrupt = |kind| StoreError::corrupt(self.path(), offset, kind);
        if !offset.is_multiple_of(BLOCK_SIZE) || offset >= self.end() {
            return Err(corrupt(CorruptionKind::Malformed {
                what: "header pointer",
                detail: "not at a block boundary".into(),
            }));
        }
        match probe_block(&*self.io()?, self.end(), offset)? {
            BlockProbe::Header(p) => Header::decode(&p, offset).map_err(corrupt),
            BlockProbe::Damaged(kind) => Err(corrupt(kind)),
            BlockProbe::Data => Err(corrupt(CorruptionKind::Malformed {
                what: "header pointer",
                detail: "points at a data block".into(),
            })),
        }
    }
}

impl NodeRead for CouchFile {
    fn read_node(&self, ptr: ChunkPtr) -> StoreResult<Arc<Node>> {
        let key = (self.id, ptr.offset);
        if let Some(n) = self.cache.get(key) {
            return Ok(n);
        }
        let payload = self.read_chunk(ptr)?;
        let node = Arc::new(Node::decode(&payload).map_err(|e| self.corrupt(ptr, e))?);
        self.cache.insert(key, Arc::clone(&node));
        Ok(node)
    }

    fn corrupt(&self, ptr: ChunkPtr, e: DecodeError) -> StoreError {
        StoreError::corrupt(self.path(), ptr.offset, e.kind())
    }
}
