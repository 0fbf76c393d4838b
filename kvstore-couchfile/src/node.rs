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
#[derive(Debug, Clone)]
pub struct ChildRef {
    /// The largest key in the child's subtree.
    pub max_key: Bytes,
    /// Where the child is.
    pub ptr: ChunkPtr,
    /// The child's reduction.
    pub reduce: Reduce,
    /// The decoded child, once read, when it is an interior node (a
    /// "swizzled" pointer). Interior nodes are a small share of a tree, so
    /// keeping them reachable from their parent bounds memory while saving
    /// a cache lookup per level; leaves always go through the node cache.
    pub resolved: Resolved,
}

impl ChildRef {
    /// A reference to a child not read yet.
    #[must_use]
    pub fn new(max_key: Bytes, ptr: ChunkPtr, reduce: Reduce) -> Self {
        ChildRef {
            max_key,
            ptr,
            reduce,
            resolved: Resolved::default(),
        }
    }
}

impl PartialEq for ChildRef {
    fn eq(&self, o: &Self) -> bool {
        self.max_key == o.max_key && self.ptr == o.ptr && self.reduce == o.reduce
    }
}

impl Eq for ChildRef {}

/// A lazily filled slot for a decoded interior node.
#[derive(Debug, Clone, Default)]
pub struct Resolved(std::sync::OnceLock<std::sync::Arc<Node>>);

impl Resolved {
    /// The node, if resolved.
    #[must_use]
    pub fn get(&self) -> Option<&std::sync::Arc<Node>> {
        self.0.get()
    }

    /// Keeps `node` if it is an interior node (first writer wins).
    pub fn keep(&self, node: &std::sync::Arc<Node>) {
        if matches!(**node, Node::Interior(_)) {
            let _ = self.0.set(std::sync::Arc::clone(node));
        }
    }
}

/// A decoded leaf, kept compact for lookups: its encoded bytes plus, per
/// entry, where its key and value sit in them. A binary search touches the
/// small offset array and the probed keys only.
#[derive(Clone)]
pub struct Leaf {
    raw: Bytes,
    keys: Vec<(u32, u32)>,
    vals: Vec<(u32, u32)>,
}

impl Leaf {
    /// Encodes `entries` (sorted by key) into a leaf.
    #[must_use]
    pub fn from_entries(entries: &[(Bytes, Bytes)]) -> Leaf {
        let size: usize = 10
            + entries
                .iter()
                .map(|(k, v)| leaf_entry_size(k, v))
                .sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.push(KIND_LEAF);
        put_varint(&mut out, entries.len() as u64);
        let mut keys = Vec::with_capacity(entries.len());
        let mut vals = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            put_varint(&mut out, k.len() as u64);
            keys.push((out.len() as u32, k.len() as u32));
            out.extend_from_slice(k);
            put_varint(&mut out, v.len() as u64);
            vals.push((out.len() as u32, v.len() as u32));
            out.extend_from_slice(v);
        }
        Leaf {
            raw: Bytes::from(out),
            keys,
            vals,
        }
    }

    /// Entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key of entry `i`.
    #[must_use]
    pub fn key(&self, i: usize) -> &[u8] {
        let (o, l) = self.keys[i];
        &self.raw[o as usize..(o + l) as usize]
    }

    /// The key of entry `i`, shared.
    #[must_use]
    pub fn key_bytes(&self, i: usize) -> Bytes {
        let (o, l) = self.keys[i];
        self.raw.slice(o as usize..(o + l) as usize)
    }

    /// The value of entry `i`, shared.
    #[must_use]
    pub fn value(&self, i: usize) -> Bytes {
        let (o, l) = self.vals[i];
        self.raw.slice(o as usize..(o + l) as usize)
    }

    /// The index of `key`, or where it would go.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    /// The first entry whose key is at least `key`.
    #[must_use]
    pub fn lower_bound(&self, key: &[u8]) -> usize {
        match self.search(key) {
            Ok(i) | Err(i) => i,
        }
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (Bytes, Bytes)> + '_ {
        (0..self.len()).map(|i| (self.key_bytes(i), self.value(i)))
    }

    /// The encoded (uncompressed) leaf.
    #[must_use]
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

impl PartialEq for Leaf {
    fn eq(&self, o: &Self) -> bool {
        self.len() == o.len() && self.entries().eq(o.entries())
    }
}

impl Eq for Leaf {}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.entries()).finish()
    }
}

/// A decoded interior node: its children, plus a packed copy of their max
/// keys so a search reads a small contiguous buffer.
#[derive(Debug, Clone)]
pub struct Interior {
    children: Vec<ChildRef>,
    keys: Vec<u8>,
    offs: Vec<(u32, u32)>,
}

impl Interior {
    /// An interior node over `children` (sorted by max key).
    #[must_use]
    pub fn new(children: Vec<ChildRef>) -> Self {
        let mut keys = Vec::with_capacity(children.iter().map(|c| c.max_key.len()).sum());
        let mut offs = Vec::with_capacity(children.len());
        for c in &children {
            offs.push((keys.len() as u32, c.max_key.len() as u32));
            keys.extend_from_slice(&c.max_key);
        }
        Interior {
            children,
            keys,
            offs,
        }
    }

    /// The children.
    #[must_use]
    pub fn children(&self) -> &[ChildRef] {
        &self.children
    }

    /// The children, by value.
    #[must_use]
    pub fn into_children(self) -> Vec<ChildRef> {
        self.children
    }

    fn max_key(&self, i: usize) -> &[u8] {
        let (o, l) = self.offs[i];
        &self.keys[o as usize..(o + l) as usize]
    }

    /// The first child whose max key is at least `key` (`len()` if none).
    #[must_use]
    pub fn route(&self, key: &[u8]) -> usize {
        let (mut lo, mut hi) = (0, self.offs.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.max_key(mid) < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl PartialEq for Interior {
    fn eq(&self, o: &Self) -> bool {
        self.children == o.children
    }
}

impl Eq for Interior {}

/// A decoded node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// Keys and values, sorted by key.
    Leaf(Leaf),
    /// Children, sorted by their max key.
    Interior(Interior),
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
            Node::Leaf(leaf) => out.extend_from_slice(leaf.raw()),
            Node::Interior(node) => {
                let children = node.children();
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
        let built;
        let raw: &[u8] = match self {
            // A leaf already holds its encoding.
            Node::Leaf(leaf) => leaf.raw(),
            Node::Interior(_) => {
                built = self.encode_raw();
                &built
            }
        };
        let mut out = Vec::with_capacity(raw.len() / 2 + 16);
        out.push(codec.tag());
        put_varint(&mut out, raw.len() as u64);
        match codec {
            Compression::None => out.extend_from_slice(raw),
            Compression::Lz4 => out.extend_from_slice(&lz4_flex::block::compress(raw)),
            Compression::Snappy => match snap::raw::Encoder::new().compress_vec(raw) {
                Ok(c) => out.extend_from_slice(&c),
                Err(_) => {
                    // Snappy refuses only inputs above 4 GiB; store raw.
                    out[0] = Compression::None.tag();
                    out.extend_from_slice(raw);
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
                let mut keys = Vec::with_capacity(count);
                let mut vals = Vec::with_capacity(count);
                for _ in 0..count {
                    let klen = r.varint_max(MAX_NODE_LEN as u64, "key length")? as u32;
                    keys.push((r.pos() as u32, klen));
                    r.take(klen as usize)?;
                    let vlen = r.varint_max(MAX_NODE_LEN as u64, "value length")? as u32;
                    vals.push((r.pos() as u32, vlen));
                    r.take(vlen as usize)?;
                }
                Node::Leaf(Leaf {
                    raw: raw.clone(),
                    keys,
                    vals,
                })
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
                    children.push(ChildRef::new(
                        slice_of(&raw, k),
                        ChunkPtr { offset, len },
                        reduce,
                    ));
                }
                if children.is_empty() {
                    return Err(DecodeError::new("node", "interior node with no children"));
                }
                Node::Interior(Interior::new(children))
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
            Node::Leaf(l) => (1..l.len()).all(|i| l.key(i - 1) < l.key(i)),
            Node::Interior(n) => n.children().windows(2).all(|w| w[0].max_key < w[1].max_key),
        }
    }

    /// Bytes the decoded node holds, for cache accounting.
    #[must_use]
    pub fn weight(&self) -> usize {
        match self {
            Node::Leaf(l) => l.raw.len() + l.len() * 16 + 96,
            Node::Interior(n) => {
                n.children()
                    .iter()
                    .map(|c| c.max_key.len() * 2 + 112)
                    .sum::<usize>()
                    + 64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries() -> Vec<(Bytes, Bytes)> {
        (0..50u32)
            .map(|i| {
                (
                    Bytes::from(format!("key{i:04}")),
                    Bytes::from(vec![i as u8; (i % 7) as usize]),
                )
            })
            .collect()
    }

    fn leaf() -> Node {
        Node::Leaf(Leaf::from_entries(&entries()))
    }

    #[test]
    fn roundtrip_every_codec() {
        let interior = Node::Interior(Interior::new(vec![
            ChildRef::new(
                Bytes::from_static(b"a"),
                ChunkPtr { offset: 1, len: 2 },
                Reduce {
                    live: 3,
                    deleted: 4,
                    bytes: 5,
                },
            ),
            ChildRef::new(
                Bytes::from_static(b"b"),
                ChunkPtr {
                    offset: u64::MAX,
                    len: u32::MAX,
                },
                Reduce::default(),
            ),
        ]));
        for codec in [Compression::None, Compression::Snappy, Compression::Lz4] {
            for n in [
                leaf(),
                interior.clone(),
                Node::Leaf(Leaf::from_entries(&[])),
            ] {
                let enc = n.encode(codec);
                assert_eq!(Node::decode(&enc).unwrap(), n, "{codec:?}");
            }
        }
        assert_eq!(
            leaf().encode_raw().len(),
            2 + entries()
                .iter()
                .map(|(k, v)| leaf_entry_size(k, v))
                .sum::<usize>()
        );
        let Node::Leaf(l) = leaf() else { panic!() };
        assert_eq!(l.search(b"key0010"), Ok(10));
        assert_eq!(l.search(b"key0010x"), Err(11));
        assert_eq!(l.lower_bound(b""), 0);
        assert_eq!(&l.value(3)[..], &[3, 3, 3]);
    }

    #[test]
    fn unsorted_nodes_are_rejected() {
        let n = Node::Leaf(Leaf::from_entries(&[
            (Bytes::from_static(b"b"), Bytes::new()),
            (Bytes::from_static(b"a"), Bytes::new()),
        ]));
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
