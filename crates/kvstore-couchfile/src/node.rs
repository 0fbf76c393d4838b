//! B-tree nodes: their encoding, compression and decoded form.
//!
//! A node chunk's payload is one codec byte, the uncompressed length as a
//! varint, then the (compressed) node:
//!
//! ```text
//! kind u8 (1 leaf, 2 interior) | count varint | entries
//! leaf entry:     key (len-prefixed) | value (len-prefixed)
//! interior entry: max key of the child (len-prefixed) | child offset varint
//!                 | child length varint | live varint | deleted varint | bytes varint
//! ```

use crate::block::ChunkPtr;
use crate::codec::{DecodeError, DecodeResult, Reader, put_bytes, put_varint, slice_of};
use bytes::Bytes;

/// The largest uncompressed node a file may hold.
pub const MAX_NODE_LEN: usize = 1 << 20;

/// The node compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Stored as is.
    None,
    /// Snappy.
    Snappy,
    /// LZ4 block format (the default: the fastest to decode).
    #[default]
    Lz4,
}

impl Compression {
    fn tag(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Snappy => 1,
            Compression::Lz4 => 2,
        }
    }
}

/// Counts and sizes summed over a subtree (the tree's reduction).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reduce {
    /// Live documents (or entries, for trees without tombstones).
    pub live: u64,
    /// Tombstones.
    pub deleted: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

impl Reduce {
    /// The sum of two reductions.
    #[must_use]
    pub fn plus(self, o: Reduce) -> Reduce {
        Reduce {
            live: self.live + o.live,
            deleted: self.deleted + o.deleted,
            bytes: self.bytes + o.bytes,
        }
    }

    /// Entries in the subtree.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.live + self.deleted
    }
}

/// A pointer to a child node with what the parent knows of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildRef {
    /// The largest key in the child's subtree.
    pub max_key: Bytes,
    /// Where the child is.
    pub ptr: ChunkPtr,
    /// The child's reduction.
    pub reduce: Reduce,
}

/// A decoded node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Keys and values, sorted by key.
    Leaf(Vec<(Bytes, Bytes)>),
    /// Children, sorted by their max key.
    Interior(Vec<ChildRef>),
}

const KIND_LEAF: u8 = 1;
const KIND_INTERIOR: u8 = 2;

/// The encoded size of one leaf entry.
#[must_use]
pub fn leaf_entry_size(key: &[u8], value: &[u8]) -> usize {
    varint_len(key.len() as u64) + key.len() + varint_len(value.len() as u64) + value.len()
}

/// The encoded size of one interior entry.
#[must_use]
pub fn child_entry_size(c: &ChildRef) -> usize {
    varint_len(c.max_key.len() as u64)
        + c.max_key.len()
        + varint_len(c.ptr.offset)
        + varint_len(u64::from(c.ptr.len))
        + varint_len(c.reduce.live)
        + varint_len(c.reduce.deleted)
        + varint_len(c.reduce.bytes)
}

fn varint_len(v: u64) -> usize {
    (64 - v.max(1).leading_zeros() as usize).div_ceil(7)
}

impl Node {
    /// The uncompressed encoding.
    #[must_use]
    pub fn encode_raw(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        match self {
            Node::Leaf(entries) => {
                out.push(KIND_LEAF);
                put_varint(&mut out, entries.len() as u64);
                for (k, v) in entries {
                    put_bytes(&mut out, k);
                    put_bytes(&mut out, v);
                }
            }
            Node::Interior(children) => {
                out.push(KIND_INTERIOR);
                put_varint(&mut out, children.len() as u64);
                for c in children {
                    put_bytes(&mut out, &c.max_key);
                    put_varint(&mut out, c.ptr.offset);
                    put_varint(&mut out, u64::from(c.ptr.len));
                    put_varint(&mut out, c.reduce.live);
                    put_varint(&mut out, c.reduce.deleted);
                    put_varint(&mut out, c.reduce.bytes);
                }
            }
        }
        out
    }

    /// The chunk payload: codec, length, compressed node.
    #[must_use]
    pub fn encode(&self, codec: Compression) -> Vec<u8> {
        let raw = self.encode_raw();
        let mut out = Vec::with_capacity(raw.len() / 2 + 16);
        out.push(codec.tag());
        put_varint(&mut out, raw.len() as u64);
        match codec {
            Compression::None => out.extend_from_slice(&raw),
            Compression::Lz4 => out.extend_from_slice(&lz4_flex::block::compress(&raw)),
            Compression::Snappy => match snap::raw::Encoder::new().compress_vec(&raw) {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => {
                    // Snappy refuses only inputs above 4 GiB; store raw.
                    out[0] = Compression::None.tag();
                    out.extend_from_slice(&raw);
                }
            },
        }
        out
    }

    /// Decodes a chunk payload.
    pub fn decode(payload: &[u8]) -> DecodeResult<Node> {
        let mut r = Reader::new(payload, "node");
        let tag = r.u8()?;
        let raw_len = r.varint_max(MAX_NODE_LEN as u64, "uncompressed node length")? as usize;
        let body = &payload[r.pos()..];
        let raw = match tag {
            0 => body.to_vec(),
            1 => {
                let n = snap::raw::decompress_len(body)
                    .map_err(|e| DecodeError::new("node", format!("snappy: {e}")))?;
                if n != raw_len {
                    return Err(DecodeError::new(
                        "node",
                        format!("snappy length {n}, header says {raw_len}"),
                    ));
                }
                snap::raw::Decoder::new()
                    .decompress_vec(body)
                    .map_err(|e| DecodeError::new("node", format!("snappy: {e}")))?
            }
            2 => lz4_flex::block::decompress(body, raw_len)
                .map_err(|e| DecodeError::new("node", format!("lz4: {e}")))?,
            other => {
                return Err(DecodeError::new("node", format!("unknown codec {other}")));
            }
        };
        if raw.len() != raw_len {
            return Err(DecodeError::new(
                "node",
                format!("decoded {} bytes, header says {raw_len}", raw.len()),
            ));
        }
        Self::decode_raw(Bytes::from(raw))
    }

    /// Decodes an uncompressed node; keys and values share `raw`.
    pub fn decode_raw(raw: Bytes) -> DecodeResult<Node> {
        let mut r = Reader::new(&raw, "node");
        let kind = r.u8()?;
        // Each entry takes at least two bytes, which bounds the count.
        let count = r.varint_max(raw.len() as u64 / 2, "entry count")? as usize;
        let node = match kind {
            KIND_LEAF => {
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let k = r.bytes(MAX_NODE_LEN, "key length")?;
                    let v = r.bytes(MAX_NODE_LEN, "value length")?;
                    entries.push((slice_of(&raw, k), slice_of(&raw, v)));
                }
                Node::Leaf(entries)
            }
            KIND_INTERIOR => {
                let mut children = Vec::with_capacity(count);
                for _ in 0..count {
                    let k = r.bytes(MAX_NODE_LEN, "key length")?;
                    let offset = r.varint()?;
                    let len = r.varint_max(u64::from(u32::MAX), "child length")? as u32;
                    let reduce = Reduce {
                        live: r.varint()?,
                        deleted: r.varint()?,
                        bytes: r.varint()?,
                    };
                    children.push(ChildRef {
                        max_key: slice_of(&raw, k),
                        ptr: ChunkPtr { offset, len },
                        reduce,
                    });
                }
                if children.is_empty() {
                    return Err(DecodeError::new("node", "interior node with no children"));
                }
                Node::Interior(children)
            }
            other => {
                return Err(DecodeError::new(
                    "node",
                    format!("unknown node kind {other}"),
                ));
            }
        };
        if !r.is_empty() {
            return Err(DecodeError::new(
                "node",
                format!("{} trailing bytes", r.remaining()),
            ));
        }
        if !node.is_sorted() {
            return Err(DecodeError::new("node", "keys out of order"));
        }
        Ok(node)
    }

    fn is_sorted(&self) -> bool {
        match self {
            Node::Leaf(e) => e.windows(2).all(|w| w[0].0 < w[1].0),
            Node::Interior(c) => c.windows(2).all(|w| w[0].max_key < w[1].max_key),
        }
    }

    /// Bytes the decoded node holds, for cache accounting.
    #[must_use]
    pub fn weight(&self) -> usize {
        match self {
            Node::Leaf(e) => e.iter().map(|(k, v)| k.len() + v.len() + 64).sum::<usize>() + 64,
            Node::Interior(c) => c.iter().map(|c| c.max_key.len() + 96).sum::<usize>() + 64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaf() -> Node {
        Node::Leaf(
            (0..50u32)
                .map(|i| {
                    (
                        Bytes::from(format!("key{i:04}")),
                        Bytes::from(vec![i as u8; (i % 7) as usize]),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn roundtrip_every_codec() {
        let interior = Node::Interior(vec![
            ChildRef {
                max_key: Bytes::from_static(b"a"),
                ptr: ChunkPtr { offset: 1, len: 2 },
                reduce: Reduce {
                    live: 3,
                    deleted: 4,
                    bytes: 5,
                },
            },
            ChildRef {
                max_key: Bytes::from_static(b"b"),
                ptr: ChunkPtr {
                    offset: u64::MAX,
                    len: u32::MAX,
                },
                reduce: Reduce::default(),
            },
        ]);
        for codec in [Compression::None, Compression::Snappy, Compression::Lz4] {
            for n in [leaf(), interior.clone(), Node::Leaf(vec![])] {
                let enc = n.encode(codec);
                assert_eq!(Node::decode(&enc).unwrap(), n, "{codec:?}");
            }
        }
        assert_eq!(
            leaf().encode_raw().len(),
            2 + match leaf() {
                Node::Leaf(e) => e.iter().map(|(k, v)| leaf_entry_size(k, v)).sum::<usize>(),
                Node::Interior(_) => 0,
            }
        );
    }

    #[test]
    fn unsorted_nodes_are_rejected() {
        let n = Node::Leaf(vec![
            (Bytes::from_static(b"b"), Bytes::new()),
            (Bytes::from_static(b"a"), Bytes::new()),
        ]);
        assert!(Node::decode(&n.encode(Compression::Lz4)).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Node::decode(&raw);
            let _ = Node::decode_raw(Bytes::from(raw));
        }

        #[test]
        fn bit_flips_never_panic(pos in 0usize..200, bit in 0u8..8) {
            let mut enc = leaf().encode(Compression::Lz4);
            let p = pos % enc.len();
            enc[p] ^= 1 << bit;
            let _ = Node::decode(&enc);
        }
    }
}
