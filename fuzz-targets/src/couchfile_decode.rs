//! `couchfile_decode`: every couchfile decoder on raw bytes.
//!
//! The first byte picks the decoder, the rest is its input. Checksums that
//! a decoder checks itself (a log item's body CRC) are recomputed in the
//! `fixed` variants, so the fuzzer gets past them to the parsing behind.
//! Properties: no decoder panics, hangs or allocates without bound; what
//! decodes re-encodes to something that decodes to the same thing; every
//! accessor of a decoded node answers without panicking, and a leaf finds
//! each of its own keys.

use bytes::Bytes;
use kvstore_core::{CollectionId, DiskKey, Seqno};
use kvstore_couchfile::block::BLOCK_SIZE;
use kvstore_couchfile::btree::TreeKind;
use kvstore_couchfile::header::{Header, SegmentTable};
use kvstore_couchfile::node::{Compression, Leaf, Node};
use kvstore_couchfile::wal::{
    RECORD_HEADER_LEN, Record, RecordBuilder, RecordKind, decode_item, decode_item_for,
    decode_item_head, demark,
};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => node(rest),
        1 => node_raw(rest),
        2 => header(rest),
        3 => segment_table(rest),
        4 => item(rest),
        5 => item(&fix_item_crc(rest)),
        6 => record(rest),
        7 => block_markers(rest),
        8 => leaf_round_trip(rest),
        _ => record_round_trip(rest),
    }
}

/// A node chunk payload (codec byte, length, maybe compressed body).
pub fn node(payload: &[u8]) {
    if let Ok(n) = Node::decode(payload) {
        walk_node(&n);
        for codec in [Compression::None, Compression::Lz4, Compression::Snappy] {
            match Node::decode(&n.encode(codec)) {
                Ok(back) => assert_eq!(back, n, "node round trip ({codec:?})"),
                Err(e) => panic!("a decoded node re-encodes ({codec:?}) to garbage: {e:?}"),
            }
        }
    }
}

/// An uncompressed node.
pub fn node_raw(raw: &[u8]) {
    if let Ok(n) = Node::decode_raw(Bytes::copy_from_slice(raw)) {
        walk_node(&n);
        match Node::decode_raw(Bytes::from(n.encode_raw())) {
            Ok(back) => assert_eq!(back, n, "raw node round trip"),
            Err(e) => panic!("a decoded node re-encodes to garbage: {e:?}"),
        }
    }
}

/// Every accessor of a decoded node.
fn walk_node(n: &Node) {
    let _ = n.weight();
    match n {
        Node::Leaf(leaf) => {
            let _ = leaf.prefix();
            let entries: Vec<(Bytes, Bytes)> = leaf.entries().collect();
            assert_eq!(entries.len(), leaf.len());
            for (i, (k, v)) in entries.iter().enumerate() {
                assert_eq!(leaf.key_bytes(i), *k);
                assert_eq!(leaf.value(i), *v);
                assert_eq!(leaf.key_cmp(i, k), std::cmp::Ordering::Equal);
                // Leaves hold sorted, distinct keys; one that does not is
                // corrupt, and a search in it may miss but must not panic.
                let _ = leaf.search(k);
                let _ = leaf.lower_bound(k);
                for kind in [TreeKind::ByKey, TreeKind::BySeqno, TreeKind::Local] {
                    let _ = kind.reduce(k, v);
                }
            }
            let _ = leaf.search(b"");
            let _ = leaf.search(&[0xff; 300]);
            let _ = leaf.lower_bound(b"");
        }
        Node::Interior(node) => {
            for c in node.children() {
                let _ = node.route(&c.max_key);
            }
            let _ = node.route(b"");
            let _ = node.route(&[0xff; 300]);
        }
    }
}

/// A header payload.
pub fn header(payload: &[u8]) {
    let offset = 7 * BLOCK_SIZE;
    if let Ok(h) = Header::decode(payload, offset) {
        assert_eq!(h.offset, offset);
        match Header::decode(&h.encode(), offset) {
            Ok(back) => assert_eq!(back, h, "header round trip"),
            Err(e) => panic!("a decoded header re-encodes to garbage: {e}"),
        }
    }
}

/// A segment table chunk.
pub fn segment_table(raw: &[u8]) {
    if let Ok(t) = SegmentTable::decode(raw) {
        match SegmentTable::decode(&t.encode()) {
            Ok(back) => assert_eq!(back, t, "segment table round trip"),
            Err(e) => panic!("a decoded segment table re-encodes to garbage: {e:?}"),
        }
    }
}

/// Gives an item's framing the right length and CRC for its body.
#[must_use]
pub fn fix_item_crc(raw: &[u8]) -> Vec<u8> {
    let body = raw.get(8..).unwrap_or_default();
    let mut out = Vec::with_capacity(body.len() + 8);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A log item (framing included).
pub fn item(raw: &[u8]) {
    let whole = decode_item(raw);
    let head = decode_item_head(raw);
    if let Ok(doc) = &whole {
        match &head {
            Ok(h) => {
                assert_eq!(h.key, doc.key);
                assert_eq!(h.meta, doc.meta);
                assert_eq!(h.value_len, doc.value.len() as u64);
            }
            Err(e) => panic!("an item decodes whole but not its head: {e:?}"),
        }
        match decode_item_for(raw, Some(&doc.key)) {
            Ok(again) => assert_eq!(&again, doc),
            Err(e) => panic!("decode_item_for refuses what decode_item accepts: {e:?}"),
        }
        let mut out = Vec::new();
        kvstore_couchfile::wal::encode_item(doc, &mut out);
        match decode_item(&out) {
            Ok(back) => assert_eq!(&back, doc, "item round trip"),
            Err(e) => panic!("a decoded document re-encodes to garbage: {e:?}"),
        }
    }
    if let Ok(k) = DiskKey::new(CollectionId(8), b"k") {
        let _ = decode_item_for(raw, Some(&k));
    }
}

/// A record's logical bytes (a 40-byte header, then the payload), as each
/// kind.
pub fn record(raw: &[u8]) {
    if raw.len() < RECORD_HEADER_LEN {
        return;
    }
    let logical = Bytes::copy_from_slice(raw);
    for kind in [RecordKind::Commit, RecordKind::Relocate, RecordKind::Purge] {
        let r = Record {
            kind,
            commit: 1,
            high: Seqno(1),
            seg: 3,
            offset: 2 * BLOCK_SIZE,
            phys_len: BLOCK_SIZE,
            logical: logical.clone(),
        };
        if let Ok(p) = r.payload() {
            for (ptr, bytes) in &p.items {
                assert_eq!(ptr.seg, 3);
                assert_eq!(ptr.len as usize, bytes.len());
                item(bytes);
            }
        }
    }
}

/// Physical bytes with block markers, starting at a physical offset.
pub fn block_markers(raw: &[u8]) {
    let Some((&at, phys)) = raw.split_first() else {
        return;
    };
    let at = BLOCK_SIZE - u64::from(at % 8);
    if let Ok(out) = demark(phys, at, || "fuzz".into()) {
        assert!(out.len() <= phys.len());
    }
}

/// A leaf built from sorted, distinct entries finds each of them.
pub fn leaf_round_trip(raw: &[u8]) {
    let mut entries: Vec<(Bytes, Bytes)> = raw
        .chunks(7)
        .map(|c| {
            let (k, v) = c.split_at(c.len().min(4));
            (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v))
        })
        .filter(|(k, _)| !k.is_empty())
        .collect();
    entries.sort();
    entries.dedup_by(|a, b| a.0 == b.0);
    let leaf = Leaf::from_entries(&entries);
    assert_eq!(leaf.len(), entries.len());
    for (i, (k, v)) in entries.iter().enumerate() {
        assert_eq!(leaf.search(k), Ok(i), "search {k:?}");
        assert_eq!(leaf.key_bytes(i), *k);
        assert_eq!(leaf.value(i), *v);
    }
    let node = Node::Leaf(leaf);
    match Node::decode(&node.encode(Compression::Lz4)) {
        Ok(back) => assert_eq!(back, node),
        Err(e) => panic!("a built leaf does not decode: {e:?}"),
    }
}

/// A record built from items decodes to them.
pub fn record_round_trip(raw: &[u8]) {
    let mut b = RecordBuilder::with_capacity(raw.len());
    let items: Vec<Vec<u8>> = raw.chunks(9).map(fix_item_crc).collect();
    b.push_raw(&kvstore_couchfile::wal::item_count_prefix(items.len()));
    for i in &items {
        b.push_item_bytes(i);
    }
    b.push_raw(&[0]);
    let sealed = b.seal(RecordKind::Commit, 5, Seqno(9));
    assert_eq!(sealed.phys.len() as u64 % BLOCK_SIZE, 0);
    let mut logical = Vec::new();
    for block in sealed.phys.chunks(BLOCK_SIZE as usize) {
        logical.extend_from_slice(&block[1..]);
    }
    let payload_len = u32::from_le_bytes([logical[24], logical[25], logical[26], logical[27]]);
    logical.truncate(RECORD_HEADER_LEN + payload_len as usize);
    let r = Record {
        kind: RecordKind::Commit,
        commit: 5,
        high: Seqno(9),
        seg: 1,
        offset: BLOCK_SIZE,
        phys_len: sealed.phys.len() as u64,
        logical: Bytes::from(logical),
    };
    match r.payload() {
        Ok(p) => {
            assert_eq!(p.items.len(), items.len());
            for ((_, got), want) in p.items.iter().zip(&items) {
                assert_eq!(&got[..], &want[..]);
            }
        }
        Err(e) => panic!("a built record does not decode: {e:?}"),
    }
}
