//! B-tree nodes: their encoding, compression and decoded form.
//!
//! A node chunk's payload is one codec byte, the uncompressed length as a
//! varint, then the (compressed) node:
//!
//! ```text
//! leaf:     kind u8 (3: 16-bit offsets, 4: 32-bit) | count u16 | prefix len u16
//!           | prefix | offsets[count + 1] | entries
//! leaf entry (from offsets[i] to offsets[i+1], relative to the entries):
//!           key suffix (len-prefixed) | value (the rest of the entry)
//! interior: kind u8 (2) | count varint | entries
//! interior entry: max key of the child (len-prefixed) | child offset varint
//!                 | child length varint | live varint | deleted varint | bytes varint
//! ```
//!
//! A leaf stores the prefix its keys share once, and a table of entry
//! offsets, so a leaf read from disk is searched in place: nothing to parse
//! per entry, and a search compares the short suffixes.

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

/// A leaf, kept as its encoding: a search reads the offset table and the
/// probed suffixes in place.
#[derive(Clone)]
pub struct Leaf {
    raw: Bytes,
    count: usize,
    prefix: (u32, u32),
    /// Where the offset table starts, and whether its entries are 32-bit.
    table: usize,
    wide: bool,
    /// Where the entries start.
    base: usize,
}

const KIND_LEAF16: u8 = 3;
const KIND_LEAF32: u8 = 4;

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

impl Leaf {
    /// Encodes `entries` (sorted by key) into a leaf.
    #[must_use]
    pub fn from_entries(entries: &[(Bytes, Bytes)]) -> Leaf {
        let prefix = match (entries.first(), entries.last()) {
            (Some(f), Some(l)) if entries.len() > 1 => {
                common_prefix(&f.0, &l.0).min(u16::MAX as usize)
            }
            _ => 0,
        };
        let body: usize = entries
            .iter()
            .map(|(k, v)| leaf_entry_size(&k[prefix..], v))
            .sum();
        let wide = body > u16::MAX as usize;
        let width = if wide { 4 } else { 2 };
        let mut out = Vec::with_capacity(5 + prefix + (entries.len() + 1) * width + body);
        out.push(if wide { KIND_LEAF32 } else { KIND_LEAF16 });
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(prefix as u16).to_le_bytes());
        if let Some((k, _)) = entries.first() {
            out.extend_from_slice(&k[..prefix]);
        }
        let table = out.len();
        out.resize(table + (entries.len() + 1) * width, 0);
        let base = out.len();
        for (i, (k, v)) in entries.iter().enumerate() {
            let off = out.len() - base;
            put_off(&mut out, table, i, off, wide);
            put_bytes(&mut out, &k[prefix..]);
            out.extend_from_slice(v);
        }
        let end = out.len() - base;
        put_off(&mut out, table, entries.len(), end, wide);
        Leaf {
            raw: Bytes::from(out),
            count: entries.len(),
            prefix: (5, prefix as u32),
            table,
            wide,
            base,
        }
    }

    /// Checks and wraps an encoded leaf (`raw` starts with its kind byte).
    fn decode(raw: Bytes) -> DecodeResult<Leaf> {
        let bad = |d: String| DecodeError::new("leaf node", d);
        if raw.len() < 5 {
            return Err(bad("shorter than its header".into()));
        }
        let wide = match raw[0] {
            KIND_LEAF16 => false,
            KIND_LEAF32 => true,
            k => return Err(bad(format!("unknown leaf kind {k}"))),
        };
        let count = usize::from(u16::from_le_bytes([raw[1], raw[2]]));
        let prefix = usize::from(u16::from_le_bytes([raw[3], raw[4]]));
        let width = if wide { 4 } else { 2 };
        let table = 5 + prefix;
        let base = table + (count + 1) * width;
        if base > raw.len() {
            return Err(bad(format!(
                "{count} entries and a {prefix}-byte prefix do not fit in {} bytes",
                raw.len()
            )));
        }
        let leaf = Leaf {
            raw,
            count,
            prefix: (5, prefix as u32),
            table,
            wide,
            base,
        };
        // Offsets rise and stay inside the node; each entry holds its
        // suffix; keys strictly increase.
        let body = leaf.raw.len() - base;
        if leaf.off(0) != 0 || leaf.off(count) != body {
            return Err(bad("the offset table does not span the entries".into()));
        }
        for i in 0..count {
            let (a, b) = (leaf.off(i), leaf.off(i + 1));
            if a > b || b > body {
                return Err(bad(format!("offset {i} runs backwards or past the node")));
            }
            let e = &leaf.raw[base + a..base + b];
            let mut r = Reader::new(e, "leaf entry");
            r.bytes(e.len(), "key suffix")?;
        }
        for i in 1..count {
            if leaf.suffix(i - 1) >= leaf.suffix(i) {
                return Err(bad("keys out of order".into()));
            }
        }
        Ok(leaf)
    }

    fn off(&self, i: usize) -> usize {
        let at = self.table + i * if self.wide { 4 } else { 2 };
        if self.wide {
            u32::from_le_bytes([
                self.raw[at],
                self.raw[at + 1],
                self.raw[at + 2],
                self.raw[at + 3],
            ]) as usize
        } else {
            usize::from(u16::from_le_bytes([self.raw[at], self.raw[at + 1]]))
        }
    }

    fn entry(&self, i: usize) -> (usize, usize) {
        (self.base + self.off(i), self.base + self.off(i + 1))
    }

    /// Entry `i`'s key suffix and where its value starts (checked at decode).
    fn split(&self, i: usize) -> (&[u8], usize) {
        let (a, b) = self.entry(i);
        let e = &self.raw[a..b];
        let (len, n) = read_varint(e);
        let start = (n + len).min(e.len());
        (&e[n.min(e.len())..start], a + start)
    }

    fn suffix(&self, i: usize) -> &[u8] {
        self.split(i).0
    }

    /// The prefix every key of the leaf shares.
    #[must_use]
    pub fn prefix(&self) -> &[u8] {
        let (o, l) = self.prefix;
        &self.raw[o as usize..(o + l) as usize]
    }

    /// Entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Compares the key of entry `i` with `key`.
    #[must_use]
    pub fn key_cmp(&self, i: usize, key: &[u8]) -> std::cmp::Ordering {
        let p = self.prefix();
        let n = p.len().min(key.len());
        match p[..n].cmp(&key[..n]) {
            std::cmp::Ordering::Equal if key.len() >= p.len() => {
                self.suffix(i).cmp(&key[p.len()..])
            }
            std::cmp::Ordering::Equal => std::cmp::Ordering::Greater,
            other => other,
        }
    }

    /// The key of entry `i` (zero-copy when the leaf has no shared prefix).
    #[must_use]
    pub fn key_bytes(&self, i: usize) -> Bytes {
        let (suffix, _) = self.split(i);
        if self.prefix.1 == 0 {
            return self.raw.slice_ref(suffix);
        }
        let mut k = Vec::with_capacity(self.prefix.1 as usize + suffix.len());
        k.extend_from_slice(self.prefix());
        k.extend_from_slice(suffix);
        Bytes::from(k)
    }

    /// The value of entry `i`, shared.
    #[must_use]
    pub fn value(&self, i: usize) -> Bytes {
        let (_, v) = self.split(i);
        let (_, end) = self.entry(i);
        self.raw.slice(v..end)
    }

    /// The index of `key`, or where it would go.
    pub fn search(&self, key: &[u8]) -> Result<usize, usize> {
        let p = self.prefix();
        if !key.starts_with(p) {
            // Every key of the leaf starts with the prefix: all of them are
            // on one side of the probe.
            return Err(if key < p { 0 } else { self.count });
        }
        let probe = &key[p.len()..];
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.suffix(mid).cmp(probe) {
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
        (0..self.count).map(|i| (self.key_bytes(i), self.value(i)))
    }

    /// The encoded (uncompressed) leaf.
    #[must_use]
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

fn put_off(out: &mut [u8], table: usize, i: usize, off: usize, wide: bool) {
    if wide {
        let at = table + i * 4;
        out[at..at + 4].copy_from_slice(&(off as u32).to_le_bytes());
    } else {
        let at = table + i * 2;
        out[at..at + 2].copy_from_slice(&(off as u16).to_le_bytes());
    }
}

/// A varint at the start of `b` (checked at decode; a short read gives a
/// length past the end, which callers clamp).
fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut v: usize = 0;
    for (i, byte) in b.iter().enumerate().take(5) {
        v |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (usize::MAX / 2, b.len())
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
        match raw.first() {
            Some(&KIND_LEAF16) | Some(&KIND_LEAF32) => return Leaf::decode(raw).map(Node::Leaf),
            Some(&KIND_INTERIOR) => {}
            Some(other) => {
                return Err(DecodeError::new(
                    "node",
                    format!("unknown node kind {other}"),
                ));
            }
            None => return Err(DecodeError::new("node", "empty")),
        }
        let mut r = Reader::new(&raw, "node");
        r.u8()?;
        // Each entry takes at least two bytes, which bounds the count.
        let count = r.varint_max(raw.len() as u64 / 2, "entry count")? as usize;
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
        if !r.is_empty() {
            return Err(DecodeError::new(
                "node",
                format!("{} trailing bytes", r.remaining()),
            ));
        }
        let node = Node::Interior(Interior::new(children));
        if !node.is_sorted() {
            return Err(DecodeError::new("node", "keys out of order"));
        }
        Ok(node)
    }

    fn is_sorted(&self) -> bool {
        match self {
            Node::Leaf(_) => true,
            Node::Interior(n) => n.children().windows(2).all(|w| w[0].max_key < w[1].max_key),
        }
    }

    /// Bytes the decoded node holds, for cache accounting.
    #[must_use]
    pub fn weight(&self) -> usize {
        match self {
            Node::Leaf(l) => l.raw.len() + 128,
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
        // The shared prefix ("key0") is stored once.
        assert!(
            leaf().encode_raw().len()
                < entries()
                    .iter()
                    .map(|(k, v)| leaf_entry_size(k, v))
                    .sum::<usize>()
        );
        let Node::Leaf(l) = leaf() else { panic!() };
        assert_eq!(l.prefix(), b"key00");
        assert_eq!(l.search(b"a"), Err(0), "below the prefix");
        assert_eq!(l.search(b"z"), Err(50), "above the prefix");
        assert_eq!(l.search(b"key0"), Err(0), "a proper prefix of the prefix");
        assert_eq!(&l.key_bytes(7)[..], b"key0007");
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
        fn leaf_search_matches_a_sorted_list(
            keys in proptest::collection::btree_set(
                (0u8..3, proptest::collection::vec(0u8..4, 0..6)),
                0..80,
            ),
            probes in proptest::collection::vec(
                (0u8..3, proptest::collection::vec(0u8..4, 0..7)),
                20,
            ),
        ) {
            // Keys share a prefix of varying length, some are prefixes of
            // others.
            let mk = |(a, rest): &(u8, Vec<u8>)| {
                let mut k = b"shared/".to_vec();
                k.push(*a);
                k.extend_from_slice(rest);
                k
            };
            let sorted: Vec<Vec<u8>> = {
                let mut v: Vec<Vec<u8>> = keys.iter().map(mk).collect();
                v.sort();
                v.dedup();
                v
            };
            let entries: Vec<(Bytes, Bytes)> = sorted
                .iter()
                .map(|k| (Bytes::from(k.clone()), Bytes::from(vec![k.len() as u8])))
                .collect();
            let leaf = Leaf::from_entries(&entries);
            let back = match Node::decode(&Node::Leaf(leaf.clone()).encode(Compression::Lz4)).unwrap() {
                Node::Leaf(l) => l,
                _ => unreachable!(),
            };
            for l in [&leaf, &back] {
                prop_assert_eq!(l.len(), sorted.len());
                for (i, k) in sorted.iter().enumerate() {
                    prop_assert_eq!(&l.key_bytes(i)[..], &k[..]);
                    prop_assert_eq!(&l.value(i)[..], &[k.len() as u8][..]);
                }
                for p in probes.iter().map(mk).chain([b"a".to_vec(), b"z".to_vec(), b"shared".to_vec()]) {
                    prop_assert_eq!(l.search(&p), sorted.binary_search(&p));
                    for (i, k) in sorted.iter().enumerate() {
                        prop_assert_eq!(l.key_cmp(i, &p), k.cmp(&p));
                    }
                }
            }
        }

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
