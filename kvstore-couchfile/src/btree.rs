//! Copy-on-write B+trees over byte keys, stored as node chunks.
//!
//! - [`lookup`] and [`iterate`] read through a [`NodeRead`] (the file and the
//!   node cache).
//! - [`modify`] applies a whole sorted batch in one pass: each node on the
//!   way to any changed key is read once and rewritten once, however many
//!   keys of the batch fall into it, and nodes that overflow are split into
//!   evenly filled siblings. A batch of sequential keys fills new nodes
//!   densely rather than rewriting one path per key.
//! - [`Builder`] builds a tree bottom-up from a sorted stream (compaction),
//!   every node full.
//!
//! Leaves keep whole entries; interior nodes keep, per child, the largest key
//! of its subtree and the subtree's [`Reduce`], so counts and sizes of the
//! whole tree sit in the root.

use crate::block::{ChunkPtr, PhysWriter};
use crate::codec::{DecodeError, DecodeResult, key_rec_summary, seq_rec_summary};
use crate::header::Root;
use crate::node::{
    ChildRef, Compression, Interior, Leaf, Node, Reduce, Resolved, child_entry_size,
    leaf_entry_size,
};
use bytes::Bytes;
use kvstore_core::StoreResult;
use std::cmp::Ordering;
use std::sync::Arc;

/// Reads nodes (through the cache).
pub trait NodeRead {
    /// The node at `ptr`.
    fn read_node(&self, ptr: ChunkPtr) -> StoreResult<Arc<Node>>;

    /// Turns a decode failure found in the node at `ptr` into a corruption
    /// error naming the file.
    fn corrupt(&self, ptr: ChunkPtr, e: crate::codec::DecodeError) -> kvstore_core::StoreError;
}

/// Which tree, which decides how leaf entries reduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeKind {
    /// Disk key → index record (seqno, deletion, expiry, size, log item).
    ByKey,
    /// Seqno → deletion, size and log item.
    BySeqno,
    /// Name → local document value.
    Local,
}

impl TreeKind {
    /// The reduction of one leaf entry.
    pub fn reduce(self, key: &Bytes, value: &Bytes) -> DecodeResult<Reduce> {
        let (deleted, bytes) = match self {
            TreeKind::ByKey => key_rec_summary(value)?,
            TreeKind::BySeqno => seq_rec_summary(value)?,
            TreeKind::Local => (false, (key.len() + value.len()) as u64),
        };
        Ok(Reduce {
            live: u64::from(!deleted),
            deleted: u64::from(deleted),
            bytes,
        })
    }
}

/// Writes new nodes into a [`PhysWriter`].
pub struct NodeWriter<'w> {
    /// Where the bytes go.
    pub out: &'w mut PhysWriter,
    /// The node codec.
    pub codec: Compression,
    /// The target size of an uncompressed node.
    pub node_size: usize,
    /// Nodes written, kept to warm the cache after the commit lands (only
    /// when `keep` is set).
    pub written: Vec<(ChunkPtr, Arc<Node>)>,
    /// Whether to keep written nodes.
    pub keep: bool,
    /// Writes out what was built so far (called past a few MiB), so a big
    /// checkpoint holds little memory.
    pub flush: Option<&'w mut FlushHook<'w>>,
}

/// Writes out what a [`NodeWriter`] built so far.
pub type FlushHook<'a> = dyn FnMut(&mut PhysWriter) -> StoreResult<()> + 'a;

/// Built bytes past which a [`NodeWriter`] with a flush hook writes out.
pub const FLUSH_BYTES: usize = 4 << 20;

impl<'w> NodeWriter<'w> {
    /// A writer that keeps what it writes for the cache.
    pub fn new(out: &'w mut PhysWriter, codec: Compression, node_size: usize, keep: bool) -> Self {
        NodeWriter {
            out,
            codec,
            node_size,
            written: Vec::new(),
            keep,
            flush: None,
        }
    }

    fn write(&mut self, node: Node) -> StoreResult<ChunkPtr> {
        let ptr = self.out.write_chunk(&node.encode(self.codec));
        if self.keep {
            self.written.push((ptr, Arc::new(node)));
        }
        if self.out.len() >= FLUSH_BYTES
            && let Some(f) = self.flush.as_mut()
        {
            f(self.out)?;
        }
        Ok(ptr)
    }

    /// Writes `entries` (sorted) as evenly filled leaves.
    fn write_leaves(
        &mut self,
        r: &dyn NodeRead,
        kind: TreeKind,
        entries: Vec<(Bytes, Bytes)>,
    ) -> StoreResult<Vec<ChildRef>> {
        let sizes: Vec<usize> = entries.iter().map(|(k, v)| leaf_entry_size(k, v)).collect();
        let groups = split_even(&sizes, self.node_size);
        let mut refs = Vec::with_capacity(groups.len());
        let mut it = entries.into_iter();
        for n in groups {
            let group: Vec<(Bytes, Bytes)> = it.by_ref().take(n).collect();
            let mut reduce = Reduce::default();
            for (k, v) in &group {
                let red = kind
                    .reduce(k, v)
                    .map_err(|e| r.corrupt(ChunkPtr::default(), e))?;
                reduce = reduce.plus(red);
            }
            let max_key = group.last().map(|(k, _)| k.clone()).unwrap_or_default();
            let ptr = self.write(Node::Leaf(Leaf::from_entries(&group)))?;
            refs.push(ChildRef::new(max_key, ptr, reduce));
        }
        Ok(refs)
    }

    /// Writes `children` (sorted) as evenly filled interior nodes.
    fn write_interiors(&mut self, children: Vec<ChildRef>) -> StoreResult<Vec<ChildRef>> {
        let sizes: Vec<usize> = children.iter().map(child_entry_size).collect();
        let groups = split_even(&sizes, self.node_size);
        let mut refs = Vec::with_capacity(groups.len());
        let mut it = children.into_iter();
        for n in groups {
            let group: Vec<ChildRef> = it.by_ref().take(n).collect();
            let reduce = group
                .iter()
                .fold(Reduce::default(), |a, c| a.plus(c.reduce));
            let max_key = group.last().map(|c| c.max_key.clone()).unwrap_or_default();
            let ptr = self.write(Node::Interior(Interior::new(group)))?;
            refs.push(ChildRef::new(max_key, ptr, reduce));
        }
        Ok(refs)
    }
}

/// Splits items of the given encoded sizes into groups of about equal size,
/// each at most `target` bytes where possible (an item larger than `target`
/// gets a group of its own), and every group but a lone one holding at least
/// two items when the items allow it. Returns group lengths.
fn split_even(sizes: &[usize], target: usize) -> Vec<usize> {
    if sizes.is_empty() {
        return Vec::new();
    }
    let total: usize = sizes.iter().sum();
    let groups = total.div_ceil(target.max(1)).max(1);
    let per = total.div_ceil(groups);
    let mut out = Vec::with_capacity(groups + 1);
    let (mut n, mut acc) = (0usize, 0usize);
    for &s in sizes {
        if n > 0 && acc + s > per.max(s) && acc >= per / 2 {
            out.push(n);
            n = 0;
            acc = 0;
        }
        n += 1;
        acc += s;
    }
    out.push(n);
    out
}

/// One change to a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Insert or replace.
    Put(Bytes, Bytes),
    /// Remove if present.
    Remove(Bytes),
}

impl Action {
    /// The key it touches.
    #[must_use]
    pub fn key(&self) -> &Bytes {
        match self {
            Action::Put(k, _) | Action::Remove(k) => k,
        }
    }
}

/// One action of [`Actions`]: its key and value as spans of the shared
/// buffer (`v0 == u32::MAX` for a removal).
#[derive(Debug, Clone, Copy)]
struct Span {
    k0: u32,
    k1: u32,
    v0: u32,
    v1: u32,
}

/// Sorted actions on one tree, each 16 bytes over one shared buffer (a
/// checkpoint of a big memtable holds hundreds of thousands of them).
#[derive(Debug, Clone, Default)]
pub struct Actions {
    buf: Bytes,
    spans: Vec<Span>,
}

/// Where the actions of one tree lie in a shared buffer, as they are
/// built (see [`Actions::share`]).
#[derive(Debug, Default)]
pub struct SpanList(Vec<Span>);

fn offset(n: usize) -> u32 {
    // A checkpoint's buffer is bounded by the memtable it comes from, far
    // below 4 GiB.
    debug_assert!(n < u32::MAX as usize);
    n as u32
}

impl SpanList {
    /// Room for `n` actions.
    #[must_use]
    pub fn with_capacity(n: usize) -> Self {
        SpanList(Vec::with_capacity(n))
    }

    /// Adds an action whose key (and value, for a put) lie at these ranges
    /// of the buffer.
    pub fn push(&mut self, key: std::ops::Range<usize>, value: Option<std::ops::Range<usize>>) {
        let (v0, v1) = value.map_or((u32::MAX, u32::MAX), |v| (offset(v.start), offset(v.end)));
        self.0.push(Span {
            k0: offset(key.start),
            k1: offset(key.end),
            v0,
            v1,
        });
    }

    /// Actions added so far.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when none was added.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Actions {
    /// Actions from a list (tests, small trees).
    #[must_use]
    pub fn from_list(list: &[Action]) -> Self {
        let mut buf = Vec::new();
        let mut spans = SpanList::with_capacity(list.len());
        for a in list {
            let k0 = buf.len();
            buf.extend_from_slice(a.key());
            let k1 = buf.len();
            match a {
                Action::Put(_, v) => {
                    buf.extend_from_slice(v);
                    spans.push(k0..k1, Some(k1..buf.len()));
                }
                Action::Remove(_) => spans.push(k0..k1, None),
            }
        }
        let buf = Bytes::from(buf);
        Actions {
            buf,
            spans: spans.0,
        }
    }

    /// The actions of several trees over one buffer, each list sorted by
    /// key already.
    #[must_use]
    pub fn share<const N: usize>(buf: Vec<u8>, lists: [SpanList; N]) -> [Actions; N] {
        let buf = Bytes::from(buf);
        lists.map(|l| Actions {
            buf: buf.clone(),
            spans: l.0,
        })
    }

    /// All of them.
    #[must_use]
    pub fn all(&self) -> ActionSlice<'_> {
        ActionSlice {
            buf: &self.buf,
            spans: &self.spans,
        }
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// A run of [`Actions`].
#[derive(Debug, Clone, Copy)]
pub struct ActionSlice<'a> {
    buf: &'a Bytes,
    spans: &'a [Span],
}

impl<'a> ActionSlice<'a> {
    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The key of action `i`.
    #[must_use]
    pub fn key(&self, i: usize) -> &'a [u8] {
        let s = self.spans[i];
        &self.buf[s.k0 as usize..s.k1 as usize]
    }

    /// Action `i`, its key and value shared with the buffer.
    #[must_use]
    pub fn get(&self, i: usize) -> Action {
        let s = self.spans[i];
        let k = self.buf.slice(s.k0 as usize..s.k1 as usize);
        if s.v0 == u32::MAX {
            Action::Remove(k)
        } else {
            Action::Put(k, self.buf.slice(s.v0 as usize..s.v1 as usize))
        }
    }

    /// Actions `range` of this run.
    #[must_use]
    pub fn slice(&self, range: std::ops::Range<usize>) -> ActionSlice<'a> {
        ActionSlice {
            buf: self.buf,
            spans: &self.spans[range],
        }
    }

    /// Every action, in order.
    pub fn iter(&self) -> impl Iterator<Item = Action> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// The deepest tree a file may hold. Nodes of a few KiB with at least two
/// children each make this far more than any real tree needs.
pub const MAX_DEPTH: usize = 32;

/// Checks the tree-shape rules on a child pointer: a child is written before
/// its parent, so it lies at a lower offset (which rules out cycles), and
/// the tree is not deeper than [`MAX_DEPTH`].
fn check_child(
    r: &dyn NodeRead,
    parent: ChunkPtr,
    child: ChunkPtr,
    depth: usize,
) -> StoreResult<()> {
    if child.offset >= parent.offset {
        return Err(r.corrupt(
            parent,
            DecodeError::new(
                "interior node",
                format!(
                    "child at offset {} does not lie before its parent at {}",
                    child.offset, parent.offset
                ),
            ),
        ));
    }
    if depth >= MAX_DEPTH {
        return Err(r.corrupt(
            parent,
            DecodeError::new("tree", format!("deeper than {MAX_DEPTH} levels")),
        ));
    }
    Ok(())
}

/// The value stored under `key`, if any. `root_slot` caches the decoded
/// root (an interior one) for the life of the caller's view.
pub fn lookup(
    r: &dyn NodeRead,
    root: Option<&Root>,
    root_slot: Option<&Resolved>,
    key: &[u8],
) -> StoreResult<Option<Bytes>> {
    let Some(root) = root else { return Ok(None) };
    let node = match root_slot.and_then(Resolved::get) {
        Some(n) => Arc::clone(n),
        None => {
            let n = r.read_node(root.ptr)?;
            if let Some(slot) = root_slot {
                slot.keep(&n);
            }
            n
        }
    };
    lookup_in(r, &node, root.ptr, key, 0)
}

fn lookup_in(
    r: &dyn NodeRead,
    node: &Node,
    at: ChunkPtr,
    key: &[u8],
    depth: usize,
) -> StoreResult<Option<Bytes>> {
    match node {
        Node::Interior(node) => {
            let Some(c) = node.children().get(node.route(key)) else {
                return Ok(None);
            };
            check_child(r, at, c.ptr, depth + 1)?;
            if let Some(n) = c.resolved.get() {
                return lookup_in(r, n, c.ptr, key, depth + 1);
            }
            let n = r.read_node(c.ptr)?;
            c.resolved.keep(&n);
            lookup_in(r, &n, c.ptr, key, depth + 1)
        }
        Node::Leaf(leaf) => Ok(leaf.search(key).ok().map(|i| leaf.value(i))),
    }
}

/// Visits entries with `start <= key < end` in key order until `visit`
/// returns false. Returns false when stopped early.
pub fn iterate(
    r: &dyn NodeRead,
    root: Option<&Root>,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&Bytes, &Bytes) -> StoreResult<bool>,
) -> StoreResult<bool> {
    match root {
        None => Ok(true),
        Some(root) => iterate_node(r, root.ptr, start, end, visit, 0),
    }
}

fn iterate_node(
    r: &dyn NodeRead,
    ptr: ChunkPtr,
    start: &[u8],
    end: Option<&[u8]>,
    visit: &mut dyn FnMut(&Bytes, &Bytes) -> StoreResult<bool>,
    depth: usize,
) -> StoreResult<bool> {
    let node = r.read_node(ptr)?;
    match &*node {
        Node::Leaf(leaf) => {
            for i in leaf.lower_bound(start)..leaf.len() {
                if end.is_some_and(|e| leaf.key_cmp(i, e) != std::cmp::Ordering::Less) {
                    return Ok(false);
                }
                if !visit(&leaf.key_bytes(i), &leaf.value(i))? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Node::Interior(node) => {
            let children = node.children();
            for c in &children[node.route(start)..] {
                check_child(r, ptr, c.ptr, depth + 1)?;
                if !iterate_node(r, c.ptr, start, end, visit, depth + 1)? {
                    return Ok(false);
                }
                if end.is_some_and(|e| &c.max_key[..] >= e) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Applies `actions` (sorted by key, each key once) to the tree at `root`,
/// writing new nodes through `w`. `replaced` sees the old value of every key
/// that an action overwrote or removed. Returns the new root.
pub fn modify(
    r: &dyn NodeRead,
    w: &mut NodeWriter<'_>,
    kind: TreeKind,
    root: Option<Root>,
    actions: ActionSlice<'_>,
    replaced: &mut dyn FnMut(&Bytes, &Bytes),
) -> StoreResult<Option<Root>> {
    debug_assert!((1..actions.len()).all(|i| actions.key(i - 1) < actions.key(i)));
    if actions.is_empty() {
        return Ok(root);
    }
    let refs = match root {
        None => {
            let entries = merge_leaf(&[], actions, replaced).0;
            w.write_leaves(r, kind, entries)?
        }
        Some(root) => match modify_node(r, w, kind, root.ptr, actions, replaced, true, 0)? {
            Some(refs) => refs,
            None => return Ok(Some(root)),
        },
    };
    finish_root(w, refs)
}

/// Stacks interior levels on `refs` until one root remains.
fn finish_root(w: &mut NodeWriter<'_>, mut refs: Vec<ChildRef>) -> StoreResult<Option<Root>> {
    loop {
        match refs.len() {
            0 => return Ok(None),
            1 => {
                let c = &refs[0];
                return Ok(Some(Root {
                    ptr: c.ptr,
                    reduce: c.reduce,
                }));
            }
            _ => refs = w.write_interiors(refs)?,
        }
    }
}

/// Merges sorted leaf entries with sorted actions. Returns the new entries
/// and whether anything changed.
fn merge_leaf(
    entries: &[(Bytes, Bytes)],
    actions: ActionSlice<'_>,
    replaced: &mut dyn FnMut(&Bytes, &Bytes),
) -> (Vec<(Bytes, Bytes)>, bool) {
    let mut out = Vec::with_capacity(entries.len() + actions.len());
    let (mut i, mut j) = (0, 0);
    let mut changed = false;
    while i < entries.len() || j < actions.len() {
        let ord = match entries.get(i) {
            Some((k, _)) if j < actions.len() => k[..].cmp(actions.key(j)),
            Some(_) => Ordering::Less,
            None => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                out.push(entries[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                if let Action::Put(k, v) = actions.get(j) {
                    out.push((k, v));
                    changed = true;
                }
                j += 1;
            }
            Ordering::Equal => {
                replaced(&entries[i].0, &entries[i].1);
                if let Action::Put(k, v) = actions.get(j) {
                    out.push((k, v));
                }
                changed = true;
                i += 1;
                j += 1;
            }
        }
    }
    (out, changed)
}

/// Rewrites the subtree at `ptr`. Returns `None` when nothing changed, or the
/// references that replace it (none when it became empty, several when it
/// split).
#[allow(clippy::too_many_arguments)]
fn modify_node(
    r: &dyn NodeRead,
    w: &mut NodeWriter<'_>,
    kind: TreeKind,
    ptr: ChunkPtr,
    actions: ActionSlice<'_>,
    replaced: &mut dyn FnMut(&Bytes, &Bytes),
    is_root: bool,
    depth: usize,
) -> StoreResult<Option<Vec<ChildRef>>> {
    let node = r.read_node(ptr)?;
    match &*node {
        Node::Leaf(leaf) => {
            let entries: Vec<(Bytes, Bytes)> = leaf.entries().collect();
            let (merged, changed) = merge_leaf(&entries, actions, replaced);
            if !changed {
                return Ok(None);
            }
            Ok(Some(w.write_leaves(r, kind, merged)?))
        }
        Node::Interior(node) => {
            let children = node.children();
            let mut out: Vec<ChildRef> = Vec::with_capacity(children.len() + 4);
            let mut changed = false;
            let mut j = 0;
            for (ci, child) in children.iter().enumerate() {
                let last = ci + 1 == children.len();
                let start = j;
                while j < actions.len() && (last || actions.key(j) <= &child.max_key[..]) {
                    j += 1;
                }
                if start == j {
                    out.push(child.clone());
                    continue;
                }
                check_child(r, ptr, child.ptr, depth + 1)?;
                match modify_node(
                    r,
                    w,
                    kind,
                    child.ptr,
                    actions.slice(start..j),
                    replaced,
                    false,
                    depth + 1,
                )? {
                    None => out.push(child.clone()),
                    Some(sub) => {
                        changed = true;
                        out.extend(sub);
                    }
                }
            }
            if !changed {
                return Ok(None);
            }
            if is_root {
                // The caller stacks levels as needed; returning the children
                // rather than wrapping them also drops a root left with a
                // single child.
                return Ok(Some(out));
            }
            if out.is_empty() {
                return Ok(Some(out));
            }
            Ok(Some(w.write_interiors(out)?))
        }
    }
}

/// Builds a tree bottom-up from entries given in key order.
pub struct Builder {
    kind: TreeKind,
    leaf: Vec<(Bytes, Bytes)>,
    leaf_size: usize,
    levels: Vec<(Vec<ChildRef>, usize)>,
    last_key: Option<Bytes>,
}

impl Builder {
    /// An empty builder.
    #[must_use]
    pub fn new(kind: TreeKind) -> Self {
        Builder {
            kind,
            leaf: Vec::new(),
            leaf_size: 0,
            levels: Vec::new(),
            last_key: None,
        }
    }

    /// Adds the next entry; keys must strictly increase.
    pub fn push(
        &mut self,
        r: &dyn NodeRead,
        w: &mut NodeWriter<'_>,
        key: Bytes,
        value: Bytes,
    ) -> StoreResult<()> {
        debug_assert!(self.last_key.as_ref().is_none_or(|l| *l < key));
        let s = leaf_entry_size(&key, &value);
        if !self.leaf.is_empty() && self.leaf_size + s > w.node_size {
            self.flush_leaf(r, w)?;
        }
        self.leaf_size += s;
        self.last_key = Some(key.clone());
        self.leaf.push((key, value));
        Ok(())
    }

    fn flush_leaf(&mut self, r: &dyn NodeRead, w: &mut NodeWriter<'_>) -> StoreResult<()> {
        let entries = std::mem::take(&mut self.leaf);
        self.leaf_size = 0;
        let mut reduce = Reduce::default();
        for (k, v) in &entries {
            reduce = reduce.plus(
                self.kind
                    .reduce(k, v)
                    .map_err(|e| r.corrupt(ChunkPtr::default(), e))?,
            );
        }
        let max_key = entries.last().map(|(k, _)| k.clone()).unwrap_or_default();
        let ptr = w.write(Node::Leaf(Leaf::from_entries(&entries)))?;
        self.push_ref(w, 0, ChildRef::new(max_key, ptr, reduce))
    }

    fn push_ref(&mut self, w: &mut NodeWriter<'_>, level: usize, c: ChildRef) -> StoreResult<()> {
        if self.levels.len() <= level {
            self.levels.push((Vec::new(), 0));
        }
        let s = child_entry_size(&c);
        let full = {
            let (refs, size) = &self.levels[level];
            !refs.is_empty() && size + s > w.node_size
        };
        if full {
            let refs = std::mem::take(&mut self.levels[level].0);
            self.levels[level].1 = 0;
            let up = write_one_interior(w, refs)?;
            self.push_ref(w, level + 1, up)?;
        }
        let (refs, size) = &mut self.levels[level];
        refs.push(c);
        *size += s;
        Ok(())
    }

    /// Finishes the tree and returns its root.
    pub fn finish(mut self, r: &dyn NodeRead, w: &mut NodeWriter<'_>) -> StoreResult<Option<Root>> {
        if !self.leaf.is_empty() {
            self.flush_leaf(r, w)?;
        }
        let mut level = 0;
        while level < self.levels.len() {
            let refs = std::mem::take(&mut self.levels[level].0);
            let top = level + 1 == self.levels.len();
            if top && refs.len() == 1 {
                let c = &refs[0];
                return Ok(Some(Root {
                    ptr: c.ptr,
                    reduce: c.reduce,
                }));
            }
            if !refs.is_empty() {
                let up = write_one_interior(w, refs)?;
                self.push_ref(w, level + 1, up)?;
            }
            level += 1;
        }
        Ok(None)
    }
}

fn write_one_interior(w: &mut NodeWriter<'_>, refs: Vec<ChildRef>) -> StoreResult<ChildRef> {
    let reduce = refs.iter().fold(Reduce::default(), |a, c| a.plus(c.reduce));
    let max_key = refs.last().map(|c| c.max_key.clone()).unwrap_or_default();
    let ptr = w.write(Node::Interior(Interior::new(refs)))?;
    Ok(ChildRef::new(max_key, ptr, reduce))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::read_chunk;
    use crate::io::{FileIo, Io};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Reads nodes straight from a test file.
    struct TestReader {
        file: FileIo,
    }

    impl NodeRead for TestReader {
        fn read_node(&self, ptr: ChunkPtr) -> StoreResult<Arc<Node>> {
            let len = self.file.size()?;
            let payload = read_chunk(&self.file, len, ptr)?;
            Node::decode(&payload)
                .map(Arc::new)
                .map_err(|e| self.corrupt(ptr, e))
        }

        fn corrupt(&self, ptr: ChunkPtr, e: crate::codec::DecodeError) -> kvstore_core::StoreError {
            kvstore_core::StoreError::corrupt(self.file.path(), ptr.offset, e.kind())
        }
    }

    fn setup() -> (tempfile::TempDir, TestReader) {
        let dir = tempfile::tempdir().unwrap();
        let file = FileIo::create(&dir.path().join("t"), Io::default()).unwrap();
        (dir, TestReader { file })
    }

    fn apply(
        r: &TestReader,
        root: Option<Root>,
        actions: &[Action],
        node_size: usize,
    ) -> (Option<Root>, Vec<Bytes>) {
        let base = r.file.size().unwrap();
        let mut out = PhysWriter::new(base);
        let mut w = NodeWriter::new(&mut out, Compression::Lz4, node_size, false);
        let mut replaced = Vec::new();
        let actions = Actions::from_list(actions);
        let root = modify(
            r,
            &mut w,
            TreeKind::Local,
            root,
            actions.all(),
            &mut |k, _| {
                replaced.push(k.clone());
            },
        )
        .unwrap();
        out.flush_to(&r.file).unwrap();
        (root, replaced)
    }

    fn contents(r: &TestReader, root: Option<&Root>) -> Vec<(Bytes, Bytes)> {
        let mut v = Vec::new();
        iterate(r, root, b"", None, &mut |k, val| {
            v.push((k.clone(), val.clone()));
            Ok(true)
        })
        .unwrap();
        v
    }

    fn depth_ok(r: &TestReader, ptr: ChunkPtr) -> usize {
        match &*r.read_node(ptr).unwrap() {
            Node::Leaf(_) => 1,
            Node::Interior(n) => {
                let depths: Vec<usize> = n.children().iter().map(|c| depth_ok(r, c.ptr)).collect();
                assert!(
                    depths.windows(2).all(|w| w[0] == w[1]),
                    "unbalanced: {depths:?}"
                );
                depths[0] + 1
            }
        }
    }

    #[test]
    fn split_even_groups() {
        let g = split_even(&[10; 10], 30);
        assert_eq!(g.iter().sum::<usize>(), 10);
        assert!(g.iter().all(|&n| (2..=3).contains(&n)), "{g:?}");
        assert_eq!(split_even(&[100], 30), vec![1]);
        assert_eq!(split_even(&[100, 100], 30), vec![1, 1]);
        assert!(split_even(&[], 30).is_empty());
        // Sizes that fit one node stay in one node.
        assert_eq!(split_even(&[10, 10, 10], 30), vec![3]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn modify_matches_a_btreemap(
            batches in proptest::collection::vec(
                proptest::collection::btree_map(0u16..2000, proptest::option::of(0usize..60), 1..200),
                1..8,
            ),
            node_size in prop_oneof![Just(64usize), Just(300), Just(4096)],
        ) {
            let (_d, r) = setup();
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut root = None;
            for batch in batches {
                let actions: Vec<Action> = batch
                    .iter()
                    .map(|(k, v)| {
                        let key = Bytes::from(format!("{k:05}"));
                        match v {
                            Some(n) => Action::Put(key, Bytes::from(vec![*n as u8; *n])),
                            None => Action::Remove(key),
                        }
                    })
                    .collect();
                let mut expect_replaced = Vec::new();
                for a in &actions {
                    if model.contains_key(&a.key()[..]) {
                        expect_replaced.push(a.key().clone());
                    }
                    match a {
                        Action::Put(k, v) => { model.insert(k.to_vec(), v.to_vec()); }
                        Action::Remove(k) => { model.remove(&k[..]); }
                    }
                }
                let (new_root, replaced) = apply(&r, root, &actions, node_size);
                root = new_root;
                prop_assert_eq!(replaced, expect_replaced);
                let got = contents(&r, root.as_ref());
                let want: Vec<(Bytes, Bytes)> = model
                    .iter()
                    .map(|(k, v)| (Bytes::from(k.clone()), Bytes::from(v.clone())))
                    .collect();
                prop_assert_eq!(&got, &want);
                match &root {
                    None => prop_assert!(model.is_empty()),
                    Some(rt) => {
                        prop_assert_eq!(rt.reduce.live, model.len() as u64);
                        let bytes: u64 = model.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                        prop_assert_eq!(rt.reduce.bytes, bytes);
                        depth_ok(&r, rt.ptr);
                    }
                }
                for probe in [0u16, 7, 999, 1999] {
                    let k = format!("{probe:05}");
                    let got = lookup(&r, root.as_ref(), None, k.as_bytes()).unwrap();
                    prop_assert_eq!(got.map(|b| b.to_vec()), model.get(k.as_bytes()).cloned());
                }
                // Bounded iteration.
                let mut seen = Vec::new();
                iterate(&r, root.as_ref(), b"00500", Some(b"01000"), &mut |k, _| {
                    seen.push(k.clone());
                    Ok(true)
                }).unwrap();
                let want: Vec<Bytes> = model
                    .range(b"00500".to_vec()..b"01000".to_vec())
                    .map(|(k, _)| Bytes::from(k.clone()))
                    .collect();
                prop_assert_eq!(seen, want);
            }
        }

        #[test]
        fn builder_matches_input(n in 0usize..3000, node_size in prop_oneof![Just(64usize), Just(4096)]) {
            let (_d, r) = setup();
            let mut out = PhysWriter::new(0);
            let mut w = NodeWriter::new(&mut out, Compression::Snappy, node_size, false);
            let mut b = Builder::new(TreeKind::Local);
            let entries: Vec<(Bytes, Bytes)> = (0..n)
                .map(|i| (Bytes::from(format!("{i:06}")), Bytes::from(vec![1u8; i % 13])))
                .collect();
            for (k, v) in &entries {
                b.push(&r, &mut w, k.clone(), v.clone()).unwrap();
            }
            let root = b.finish(&r, &mut w).unwrap();
            out.flush_to(&r.file).unwrap();
            prop_assert_eq!(contents(&r, root.as_ref()), entries.clone());
            if let Some(rt) = root {
                prop_assert_eq!(rt.reduce.live, n as u64);
                depth_ok(&r, rt.ptr);
            } else {
                prop_assert_eq!(n, 0);
            }
        }
    }
}
