//! Forged index files: checksum-valid bytes that no correct writer makes, as
//! a buggy or hostile writer could leave them. Shared with the engine's
//! tests (included there by path), so it uses only the crate's public API.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use kvstore_couchfile::Io;
use kvstore_couchfile::block::{BLOCK_SIZE, BlockProbe, ChunkPtr, PhysWriter, probe_block};
use kvstore_couchfile::header::{Header, Root};
use kvstore_couchfile::io::FileIo;
use kvstore_couchfile::node::{ChildRef, Compression, Interior, Node};
use std::path::{Path, PathBuf};

/// The newest index file of a store directory.
pub fn newest_index(store_dir: &Path) -> PathBuf {
    std::fs::read_dir(store_dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n: u32 = e
                .file_name()
                .to_str()?
                .strip_prefix("index.")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .max()
        .expect("an index file")
        .1
}

/// Appends to the store's newest index file a checkpoint, valid in every
/// checksum, whose by-key root is an interior node listing itself as its
/// only child: a cycle. Returns the root's pointer.
pub fn self_referencing_root(store_dir: &Path) -> ChunkPtr {
    let path = newest_index(store_dir);
    let file = FileIo::open(&path, true, Io::default()).unwrap();
    let len = file.size().unwrap();
    // The newest header: the last block that probes as one.
    let mut at = (len - 1) / BLOCK_SIZE * BLOCK_SIZE;
    let old = loop {
        if let BlockProbe::Header(payload) = probe_block(&file, len, at).unwrap() {
            break Header::decode(&payload, at).unwrap();
        }
        at -= BLOCK_SIZE;
    };
    let reduce = old.by_key.expect("a by-key tree").reduce;
    let end = len.next_multiple_of(BLOCK_SIZE);
    // The node's pointer is part of the node: find the length that encodes
    // to itself.
    let mut plen = 0u32;
    let payload = loop {
        let me = ChunkPtr {
            offset: end,
            len: plen,
        };
        let node = Node::Interior(Interior::new(vec![ChildRef::new(
            bytes::Bytes::from_static(&[0xff; 8]),
            me,
            reduce,
        )]));
        let p = node.encode(Compression::None);
        if p.len() as u32 == plen {
            break p;
        }
        plen = p.len() as u32;
    };
    let mut out = PhysWriter::new(end);
    let ptr = out.write_chunk(&payload);
    assert_eq!(
        ptr,
        ChunkPtr {
            offset: end,
            len: plen
        }
    );
    let mut h = old.clone();
    h.by_key = Some(Root { ptr, reduce });
    h.prev = Some(old.offset);
    h.commit = old.commit + 1;
    // The region: everything from `end` to the header block, padding
    // included.
    let pad = (BLOCK_SIZE - out.pos() % BLOCK_SIZE) % BLOCK_SIZE;
    let mut crc = crc32c::crc32c(out.bytes());
    crc = crc32c::crc32c_append(crc, &vec![0u8; pad as usize]);
    h.region_start = end;
    h.region_crc = crc;
    out.write_header(&h.encode());
    file.write_at(out.bytes(), out.base()).unwrap();
    file.sync().unwrap();
    ptr
}
