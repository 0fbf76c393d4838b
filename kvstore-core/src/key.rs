//! Disk keys: an unsigned LEB128 collection id followed by the user key.
//!
//! LEB128 is prefix-free, so every key of one collection shares one byte
//! prefix and the keys of a collection form one contiguous range in byte
//! order. That lets a collection be scanned or purged as a single range
//! (see [`DiskKey::collection_range`]). Only the canonical (shortest)
//! encoding is accepted; an overlong one would give a collection two
//! prefixes and break that property.

use crate::error::KeyError;
use crate::types::CollectionId;
use bytes::Bytes;
use std::fmt;

/// The longest user key, in bytes, not counting the collection prefix.
pub const MAX_USER_KEY_LEN: usize = 250;

/// The longest LEB128 encoding of a `u32`.
pub const MAX_PREFIX_LEN: usize = 5;

/// The longest disk key: the prefix plus the longest user key.
pub const MAX_DISK_KEY_LEN: usize = MAX_PREFIX_LEN + MAX_USER_KEY_LEN;

/// A validated key as stored on disk: collection prefix, then user key.
///
/// Ordering and equality are those of the raw bytes, which is the order every
/// backend stores keys in.
///
/// ```
/// use kvstore_core::{CollectionId, DiskKey};
///
/// let key = DiskKey::new(CollectionId(8), b"user::1").unwrap();
/// assert_eq!(key.as_bytes(), b"\x08user::1");
/// assert_eq!(key.collection(), CollectionId(8));
/// assert_eq!(key.user_key(), b"user::1");
/// let back = DiskKey::from_bytes(key.as_bytes()).unwrap();
/// assert_eq!(back, key);
/// ```
#[derive(Clone)]
pub struct DiskKey {
    raw: Bytes,
    prefix_len: u8,
    cid: CollectionId,
}

impl DiskKey {
    /// Builds a disk key from a collection and a user key of 1 to 250 bytes.
    pub fn new(cid: CollectionId, user_key: &[u8]) -> Result<Self, KeyError> {
        check_user_key(user_key)?;
        let mut raw = Vec::with_capacity(MAX_PREFIX_LEN + user_key.len());
        encode_leb128(cid.0, &mut raw);
        let prefix_len = raw.len() as u8;
        raw.extend_from_slice(user_key);
        Ok(DiskKey {
            raw: Bytes::from(raw),
            prefix_len,
            cid,
        })
    }

    /// Parses and validates raw disk-key bytes (for example read from a file).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, KeyError> {
        let (cid, prefix_len) = decode_leb128(raw)?;
        check_user_key(&raw[prefix_len..])?;
        Ok(DiskKey {
            raw: Bytes::copy_from_slice(raw),
            prefix_len: prefix_len as u8,
            cid: CollectionId(cid),
        })
    }

    /// Like [`DiskKey::from_bytes`], but takes ownership without copying.
    pub fn from_shared(raw: Bytes) -> Result<Self, KeyError> {
        let (cid, prefix_len) = decode_leb128(&raw)?;
        check_user_key(&raw[prefix_len..])?;
        Ok(DiskKey {
            raw,
            prefix_len: prefix_len as u8,
            cid: CollectionId(cid),
        })
    }

    /// The collection this key belongs to.
    #[must_use]
    pub fn collection(&self) -> CollectionId {
        self.cid
    }

    /// The user key, without the collection prefix.
    #[must_use]
    pub fn user_key(&self) -> &[u8] {
        &self.raw[usize::from(self.prefix_len)..]
    }

    /// The whole encoded key.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The encoded key as shared bytes (a cheap clone).
    #[must_use]
    pub fn to_shared(&self) -> Bytes {
        self.raw.clone()
    }

    /// The encoded length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Always false: a valid key has at least one user-key byte.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The byte prefix shared by every key of `cid`.
    #[must_use]
    pub fn collection_prefix(cid: CollectionId) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_PREFIX_LEN);
        encode_leb128(cid.0, &mut out);
        out
    }

    /// The half-open byte range `[start, end)` that holds exactly the keys of
    /// `cid`.
    #[must_use]
    pub fn collection_range(cid: CollectionId) -> (Vec<u8>, Vec<u8>) {
        let start = Self::collection_prefix(cid);
        let mut end = start.clone();
        // The last byte of a canonical LEB128 encoding has its top bit clear,
        // so it is at most 0x7f and incrementing it cannot overflow. Nothing
        // else starts with the incremented prefix's bytes below it.
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        (start, end)
    }
}

// Equality, order and hash are those of the raw bytes alone (the other fields
// are derived from them), which keeps them consistent with `Borrow<[u8]>`.
impl PartialEq for DiskKey {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}

impl Eq for DiskKey {}

impl PartialOrd for DiskKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for DiskKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.raw.cmp(&other.raw)
    }
}

impl std::hash::Hash for DiskKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl std::borrow::Borrow<[u8]> for DiskKey {
    fn borrow(&self) -> &[u8] {
        &self.raw
    }
}

impl fmt::Debug for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DiskKey({}:{})",
            self.cid,
            self.user_key().escape_ascii()
        )
    }
}

impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.cid, self.user_key().escape_ascii())
    }
}

fn check_user_key(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_USER_KEY_LEN {
        return Err(KeyError::TooLong {
            len: key.len(),
            max: MAX_USER_KEY_LEN,
        });
    }
    Ok(())
}

/// Appends the unsigned LEB128 encoding of `v` to `out`.
pub fn encode_leb128(mut v: u32, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Decodes a canonical unsigned LEB128 `u32` from the front of `raw`.
/// Returns the value and the number of bytes it used.
pub fn decode_leb128(raw: &[u8]) -> Result<(u32, usize), KeyError> {
    let mut value: u64 = 0;
    for (i, &byte) in raw.iter().enumerate().take(MAX_PREFIX_LEN) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            if i > 0 && byte == 0 {
                return Err(KeyError::NonCanonicalPrefix);
            }
            let v = u32::try_from(value).map_err(|_| KeyError::PrefixOverflow)?;
            return Ok((v, i + 1));
        }
    }
    if raw.len() >= MAX_PREFIX_LEN {
        Err(KeyError::PrefixOverflow)
    } else {
        Err(KeyError::TruncatedPrefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn leb128_known_values() {
        let cases: &[(u32, &[u8])] = &[
            (0, &[0]),
            (1, &[1]),
            (0x7f, &[0x7f]),
            (0x80, &[0x80, 0x01]),
            (0x3fff, &[0xff, 0x7f]),
            (u32::MAX, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for (v, bytes) in cases {
            let mut out = Vec::new();
            encode_leb128(*v, &mut out);
            assert_eq!(&out[..], *bytes, "encode {v}");
            assert_eq!(decode_leb128(bytes).unwrap(), (*v, bytes.len()));
        }
    }

    #[test]
    fn bad_prefixes_are_typed_errors() {
        assert_eq!(decode_leb128(&[]), Err(KeyError::TruncatedPrefix));
        assert_eq!(decode_leb128(&[0x80]), Err(KeyError::TruncatedPrefix));
        assert_eq!(
            decode_leb128(&[0x80, 0x00]),
            Err(KeyError::NonCanonicalPrefix)
        );
        assert_eq!(
            decode_leb128(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(KeyError::PrefixOverflow)
        );
        assert_eq!(
            decode_leb128(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(KeyError::PrefixOverflow)
        );
    }

    #[test]
    fn key_length_limits() {
        assert_eq!(DiskKey::new(CollectionId(0), b""), Err(KeyError::Empty));
        let long = vec![b'a'; MAX_USER_KEY_LEN + 1];
        assert_eq!(
            DiskKey::new(CollectionId(0), &long),
            Err(KeyError::TooLong {
                len: 251,
                max: MAX_USER_KEY_LEN
            })
        );
        assert!(DiskKey::new(CollectionId(0), &long[..MAX_USER_KEY_LEN]).is_ok());
        // A prefix with no user key after it.
        assert_eq!(DiskKey::from_bytes(&[0x08]), Err(KeyError::Empty));
    }

    proptest! {
        #[test]
        fn roundtrip(cid in any::<u32>(), key in proptest::collection::vec(any::<u8>(), 1..=250)) {
            let k = DiskKey::new(CollectionId(cid), &key).unwrap();
            prop_assert_eq!(k.collection(), CollectionId(cid));
            prop_assert_eq!(k.user_key(), &key[..]);
            let back = DiskKey::from_bytes(k.as_bytes()).unwrap();
            prop_assert_eq!(back, k);
        }

        #[test]
        fn collection_range_holds_exactly_its_keys(
            a in any::<u32>(), b in any::<u32>(),
            key in proptest::collection::vec(any::<u8>(), 1..=16),
        ) {
            let (start, end) = DiskKey::collection_range(CollectionId(a));
            let kb = DiskKey::new(CollectionId(b), &key).unwrap();
            let inside = kb.as_bytes() >= &start[..] && kb.as_bytes() < &end[..];
            prop_assert_eq!(inside, a == b);
        }

        #[test]
        fn from_bytes_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = DiskKey::from_bytes(&raw);
        }
    }
}
