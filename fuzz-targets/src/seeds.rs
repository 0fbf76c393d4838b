//! The seed corpus: a few small inputs per target, made by code so the
//! repository holds no opaque binaries it cannot remake.
//!
//! `cargo test -p fuzz-targets --test replay -- --ignored write_seeds`
//! writes them to `fuzz/seeds/<target>/`. Inputs of the byte-level targets
//! are built from the real encoders (a leaf node, a header, a segment
//! table, a log item, a binary request, text commands); inputs of the
//! structure-aware targets (`arbitrary`) are pseudo-random bytes from a
//! fixed seed, which `arbitrary` turns into varied operation sequences and
//! manifests. libFuzzer grows its own corpus from these in a scratch
//! directory under `target/`, never in the repository.

use bytes::{BufMut, Bytes, BytesMut};
use kvstore_core::{
    CollectionId, DiskKey, Document, FailoverEntry, Seqno, VbState, VbucketState,
    key::encode_leb128,
};
use kvstore_couchfile::header::{Header, SegmentStat, SegmentTable};
use kvstore_couchfile::node::{Compression, Leaf, Node};

/// The largest seed, in bytes.
pub const MAX_SEED: usize = 4096;

/// Deterministic pseudo-random bytes (xorshift64*).
#[must_use]
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(body);
    v
}

fn key(cid: u32, k: &str) -> DiskKey {
    match DiskKey::new(CollectionId(cid), k.as_bytes()) {
        Ok(k) => k,
        Err(e) => panic!("a seed key is valid: {e}"),
    }
}

/// The seeds of `target`, as (file name, bytes).
#[must_use]
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| out.push((name.to_owned(), bytes));
    match target {
        "core_codecs" => {
            add("disk-key", tagged(0, key(8, "user::1").as_bytes()));
            add("disk-key-wide", tagged(0, key(0x1234_5678, "k").as_bytes()));
            let mut leb = Vec::new();
            encode_leb128(300, &mut leb);
            add("leb128", tagged(1, &leb));
            let state = VbucketState {
                state: VbState::Replica,
                high_seqno: Seqno(10),
                max_cas: kvstore_core::Cas(99),
                failover: vec![FailoverEntry {
                    uuid: 7,
                    seqno: Seqno(0),
                }],
                ..VbucketState::default()
            };
            add("vbstate", tagged(2, &state.encode()));
            add("bytes", tagged(3, &[0, 1, 2, 3, 7, 0x80]));
        }
        "couchfile_decode" => {
            let entries: Vec<(Bytes, Bytes)> = (0..12u8)
                .map(|i| {
                    (
                        Bytes::from(format!("key-{i:02}")),
                        Bytes::from(vec![i; usize::from(i)]),
                    )
                })
                .collect();
            let leaf = Node::Leaf(Leaf::from_entries(&entries));
            add("leaf-lz4", tagged(0, &leaf.encode(Compression::Lz4)));
            add("leaf-snappy", tagged(0, &leaf.encode(Compression::Snappy)));
            add("leaf-raw", tagged(1, &leaf.encode_raw()));
            let header = Header {
                commit: 3,
                high_seqno: Seqno(42),
                prev: Some(4096),
                wal_seg: 1,
                wal_off: 8192,
                next_commit: 9,
                ..Header::default()
            };
            add("header", tagged(2, &header.encode()));
            let table = SegmentTable(vec![
                SegmentStat {
                    no: 1,
                    total: 9000,
                    live: 4000,
                    phys: 12288,
                    empty_since: None,
                },
                SegmentStat {
                    no: 2,
                    total: 100,
                    live: 0,
                    phys: 4096,
                    empty_since: Some(3),
                },
            ]);
            add("segments", tagged(3, &table.encode()));
            let mut item = Vec::new();
            let mut doc = Document::new(key(8, "item"), Seqno(5), "value bytes");
            doc.meta.flags = 7;
            kvstore_couchfile::wal::encode_item(&doc, &mut item);
            add("item", tagged(4, &item));
            add("records", tagged(9, &noise(9, 200)));
        }
        "manifest" | "ops" | "couchfile_open" => {
            for (i, len) in [64usize, 400, 1500].into_iter().enumerate() {
                add(&format!("noise-{len}"), noise(i as u64 + 1, len));
            }
        }
        "kvserver_frames" => {
            let mut b = BytesMut::new();
            kvserver::protocol::encode_request(
                &mut b,
                kvserver::protocol::opcode::SET,
                3,
                9,
                0,
                &[0; 8],
                b"key",
                b"value",
            );
            kvserver::protocol::encode_request(
                &mut b,
                kvserver::protocol::opcode::GET,
                3,
                10,
                0,
                &[],
                b"key",
                &[],
            );
            add("binary-requests", [&[0u8, 4][..], &b[..]].concat());
            let mut alt = BytesMut::new();
            alt.put_u8(kvserver::protocol::MAGIC_ALT_REQ);
            alt.put_u8(kvserver::protocol::opcode::SET);
            alt.put_u8(4); // framing extras: durability with a timeout
            alt.put_u8(1);
            alt.put_u8(8);
            alt.put_u8(0);
            alt.put_u16(0);
            alt.put_u32(4 + 8 + 1 + 2);
            alt.put_u32(1);
            alt.put_u64(0);
            alt.put_slice(&[0x13, 1, 0, 100]);
            alt.put_slice(&[0; 8]);
            alt.put_slice(b"k");
            alt.put_slice(b"vv");
            add("binary-alt", [&[0u8, 4][..], &alt[..]].concat());
            let mut res = BytesMut::new();
            kvserver::protocol::encode_response(&mut res, 0, 0, 9, 77, 1, &[0; 4], b"", b"{}");
            add("responses", [&[1u8, 0][..], &res[..]].concat());
            add(
                "frame-infos",
                vec![2, 0, 0x00, 0x11, 1, 0x50, 0xf2, 3, 1, 2],
            );
            add(
                "text",
                b"\x03\x10set k 0 0 2\r\nab\r\ngets k j\r\ndelete k\r\nincr n 5 noreply\r\ntouch k 10\r\ncas k 1 2 1 55\r\nx\r\nset big 0 0 999\r\n"
                    .to_vec(),
            );
            add("response-fields", tagged(4, &noise(4, 40)));
        }
        _ => {}
    }
    out
}
