//! `core_codecs`: kvstore-core's disk-key and document codecs.
//!
//! The first byte picks the codec, the rest is its input:
//! - disk keys: whatever `from_bytes` accepts is canonical (it re-encodes
//!   to the same bytes), lies in its collection's range and agrees with
//!   `from_shared`; whatever it refuses, `from_shared` refuses too;
//! - the LEB128 prefix alone: a decoded prefix re-encodes to the bytes read;
//! - the `_local/vbstate` document: what decodes re-encodes and decodes to
//!   the same state;
//! - deletion bytes and datatype bits: the byte forms round-trip.

use bytes::Bytes;
use kvstore_core::key::{decode_leb128, encode_leb128};
use kvstore_core::{Datatype, DeleteSource, DiskKey, KeyRange, VbucketState};

/// Runs one input.
pub fn run(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => disk_key(rest),
        1 => leb128(rest),
        2 => vbstate(rest),
        _ => bytes_forms(rest),
    }
}

/// A disk key from raw bytes.
pub fn disk_key(raw: &[u8]) {
    let shared = DiskKey::from_shared(Bytes::copy_from_slice(raw));
    match DiskKey::from_bytes(raw) {
        Ok(k) => {
            assert_eq!(k.as_bytes(), raw, "a parsed key keeps its bytes");
            assert!(!k.is_empty() && k.len() == raw.len());
            let again = match DiskKey::new(k.collection(), k.user_key()) {
                Ok(again) => again,
                Err(e) => panic!("{k:?} parsed but does not rebuild: {e}"),
            };
            assert_eq!(again.as_bytes(), raw, "only canonical keys parse");
            assert!(
                KeyRange::collection(k.collection()).contains(raw),
                "{k:?} lies outside its collection's range"
            );
            let prefix = DiskKey::collection_prefix(k.collection());
            assert!(raw.starts_with(&prefix));
            assert_eq!(prefix.len() + k.user_key().len(), raw.len());
            match shared {
                Ok(s) => assert_eq!(s, k),
                Err(e) => panic!("from_bytes accepts {k:?}, from_shared refuses: {e}"),
            }
        }
        Err(e) => match shared {
            Ok(s) => panic!("from_bytes refuses ({e}), from_shared accepts {s:?}"),
            Err(e2) => assert_eq!(e, e2),
        },
    }
}

/// The LEB128 prefix.
pub fn leb128(raw: &[u8]) {
    if let Ok((v, n)) = decode_leb128(raw) {
        let mut out = Vec::new();
        encode_leb128(v, &mut out);
        assert_eq!(&out[..], &raw[..n], "a decoded prefix is canonical");
    }
}

/// The vbucket-state document.
pub fn vbstate(raw: &[u8]) {
    if let Ok(state) = VbucketState::decode(raw) {
        let encoded = state.encode();
        match VbucketState::decode(&encoded) {
            Ok(back) => assert_eq!(back, state, "vbstate round trip"),
            Err(e) => panic!("{state:?} encodes to something it cannot decode: {e}"),
        }
    }
}

/// Deletion bytes and datatype bits.
pub fn bytes_forms(raw: &[u8]) {
    for &b in raw {
        match DeleteSource::from_byte(b) {
            Some(d) => assert_eq!(DeleteSource::to_byte(d), b),
            None => assert!(b > 2),
        }
        let dt = Datatype(b);
        assert_eq!(dt.is_valid(), b & !Datatype::ALL == 0);
    }
}
