//! The memcached binary protocol: header layout, classic and flexible
//! framing, frame infos, opcodes and statuses (Couchbase's
//! `BinaryProtocol.md`), and a decoder that works over a bounded buffer.
//!
//! ```
//! use bytes::BytesMut;
//! use kvserver::protocol::{decode_request, encode_request, opcode, Decoded};
//!
//! let mut buf = BytesMut::new();
//! encode_request(&mut buf, opcode::GET, 0, 7, 0, &[], b"key", &[]);
//! let Ok(Decoded::Frame(req)) = decode_request(&mut buf, 1 << 20) else { panic!() };
//! assert_eq!((req.opcode, &req.key[..], req.opaque), (opcode::GET, &b"key"[..], 7));
//! assert!(buf.is_empty());
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A classic request.
pub const MAGIC_REQ: u8 = 0x80;
/// A request with flexible framing extras.
pub const MAGIC_ALT_REQ: u8 = 0x08;
/// A classic response.
pub const MAGIC_RES: u8 = 0x81;
/// A response with flexible framing extras.
pub const MAGIC_ALT_RES: u8 = 0x18;
/// The header's size.
pub const HEADER_LEN: usize = 24;

/// Command opcodes (client to server).
#[allow(missing_docs)]
pub mod opcode {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const HELLO: u8 = 0x1f;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const SET_VBUCKET: u8 = 0x3d;
    pub const GET_VBUCKET: u8 = 0x3e;
    pub const DEL_VBUCKET: u8 = 0x3f;
    pub const SELECT_BUCKET: u8 = 0x89;
    pub const OBSERVE_SEQNO: u8 = 0x91;
    pub const GET_CLUSTER_CONFIG: u8 = 0xb5;
    pub const COLLECTIONS_SET_MANIFEST: u8 = 0xb9;
    pub const COLLECTIONS_GET_MANIFEST: u8 = 0xba;
    pub const COLLECTIONS_GET_ID: u8 = 0xbb;
    pub const COLLECTIONS_GET_SCOPE_ID: u8 = 0xbc;
    pub const GET_ERROR_MAP: u8 = 0xfe;
}

/// Response statuses.
#[allow(missing_docs)]
pub mod status {
    pub const SUCCESS: u16 = 0x00;
    pub const KEY_ENOENT: u16 = 0x01;
    pub const KEY_EEXISTS: u16 = 0x02;
    pub const E2BIG: u16 = 0x03;
    pub const EINVAL: u16 = 0x04;
    pub const NOT_STORED: u16 = 0x05;
    pub const DELTA_BADVAL: u16 = 0x06;
    pub const NOT_MY_VBUCKET: u16 = 0x07;
    pub const NO_BUCKET: u16 = 0x08;
    pub const AUTH_STALE: u16 = 0x1f;
    pub const AUTH_ERROR: u16 = 0x20;
    pub const AUTH_CONTINUE: u16 = 0x21;
    pub const ERANGE: u16 = 0x22;
    pub const EACCESS: u16 = 0x24;
    pub const UNKNOWN_FRAME_INFO: u16 = 0x80;
    pub const UNKNOWN_COMMAND: u16 = 0x81;
    pub const ENOMEM: u16 = 0x82;
    pub const NOT_SUPPORTED: u16 = 0x83;
    pub const EINTERNAL: u16 = 0x84;
    pub const EBUSY: u16 = 0x85;
    pub const ETMPFAIL: u16 = 0x86;
    pub const UNKNOWN_COLLECTION: u16 = 0x88;
    pub const CANNOT_APPLY_MANIFEST: u16 = 0x8a;
    pub const UNKNOWN_SCOPE: u16 = 0x8c;
    pub const DURABILITY_INVALID_LEVEL: u16 = 0xa0;
    pub const DURABILITY_IMPOSSIBLE: u16 = 0xa1;
}

/// HELLO features.
#[allow(missing_docs)]
pub mod feature {
    pub const TCP_NODELAY: u16 = 0x03;
    pub const MUTATION_SEQNO: u16 = 0x04;
    pub const XATTR: u16 = 0x06;
    pub const XERROR: u16 = 0x07;
    pub const SELECT_BUCKET: u16 = 0x08;
    pub const SNAPPY: u16 = 0x0a;
    pub const JSON: u16 = 0x0b;
    pub const ALT_REQUEST: u16 = 0x10;
    pub const SYNC_REPLICATION: u16 = 0x11;
    pub const COLLECTIONS: u16 = 0x12;
}

/// A frame the decoder refuses. The connection that sent it is answered
/// (when it can be) and closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The first byte is no request magic.
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    /// The declared body is larger than the server accepts.
    #[error("declared body of {declared} bytes is over the {max}-byte frame limit")]
    TooLarge {
        /// What the header says.
        declared: u64,
        /// The limit.
        max: usize,
    },
    /// Framing extras, extras and key do not fit in the body.
    #[error(
        "framing extras ({framing}) + extras ({extras}) + key ({key}) exceed the body ({body})"
    )]
    Inconsistent {
        /// Framing extras length.
        framing: usize,
        /// Extras length.
        extras: usize,
        /// Key length.
        key: usize,
        /// Body length.
        body: usize,
    },
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `MAGIC_REQ` or `MAGIC_ALT_REQ`.
    pub magic: u8,
    /// The command.
    pub opcode: u8,
    /// The datatype bits.
    pub datatype: u8,
    /// The vbucket field.
    pub vbucket: u16,
    /// Echoed in the response.
    pub opaque: u32,
    /// The CAS field.
    pub cas: u64,
    /// Flexible framing extras (alt requests only).
    pub framing: Bytes,
    /// Command extras.
    pub extras: Bytes,
    /// The key.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
}

/// What [`decode_request`] found.
#[derive(Debug)]
pub enum Decoded {
    /// A whole request, taken out of the buffer.
    Frame(Request),
    /// Not a whole frame yet: this many bytes in all are needed (at least).
    Incomplete(usize),
}

/// Takes one request out of `buf`, or says how many bytes it needs. A body
/// larger than `max_frame` is refused before it is read, so a huge declared
/// length costs nothing.
pub fn decode_request(buf: &mut BytesMut, max_frame: usize) -> Result<Decoded, FrameError> {
    if buf.is_empty() {
        return Ok(Decoded::Incomplete(HEADER_LEN));
    }
    let magic = buf[0];
    if magic != MAGIC_REQ && magic != MAGIC_ALT_REQ {
        return Err(FrameError::BadMagic(magic));
    }
    if buf.len() < HEADER_LEN {
        return Ok(Decoded::Incomplete(HEADER_LEN));
    }
    let h = &buf[..HEADER_LEN];
    let (framing, key) = if magic == MAGIC_ALT_REQ {
        (usize::from(h[2]), usize::from(h[3]))
    } else {
        (0, usize::from(u16::from_be_bytes([h[2], h[3]])))
    };
    let extras = usize::from(h[4]);
    let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    if u64::from(body) > max_frame as u64 {
        return Err(FrameError::TooLarge {
            declared: u64::from(body),
            max: max_frame,
        });
    }
    let body = body as usize;
    if framing + extras + key > body {
        return Err(FrameError::Inconsistent {
            framing,
            extras,
            key,
            body,
        });
    }
    if buf.len() < HEADER_LEN + body {
        return Ok(Decoded::Incomplete(HEADER_LEN + body));
    }
    let opcode = h[1];
    let datatype = h[5];
    let vbucket = u16::from_be_bytes([h[6], h[7]]);
    let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let cas = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    buf.advance(HEADER_LEN);
    let mut frame = buf.split_to(body).freeze();
    let framing_b = frame.split_to(framing);
    let extras_b = frame.split_to(extras);
    let key_b = frame.split_to(key);
    Ok(Decoded::Frame(Request {
        magic,
        opcode,
        datatype,
        vbucket,
        opaque,
        cas,
        framing: framing_b,
        extras: extras_b,
        key: key_b,
        value: frame,
    }))
}

/// One flexible framing extra of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameInfo {
    /// ID 0: no reordering around this command.
    Barrier,
    /// ID 1: a durability requirement.
    Durability {
        /// 1 majority, 2 majority and persist on active, 3 persist to
        /// majority.
        level: u8,
        /// Milliseconds, when given.
        timeout: Option<u16>,
    },
    /// ID 5: keep the document's expiry.
    PreserveTtl,
    /// Any other id, with its data.
    Other(u16, Bytes),
}

/// Why the framing extras could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameInfoError {
    /// An entry runs past the end.
    #[error("a frame info runs past the framing extras")]
    Truncated,
    /// A known id with a wrong length.
    #[error("frame info {id} has an invalid length {len}")]
    BadLength {
        /// The id.
        id: u16,
        /// Its length.
        len: usize,
    },
}

/// Parses the framing extras of an alt request.
pub fn parse_frame_infos(mut b: &[u8]) -> Result<Vec<FrameInfo>, FrameInfoError> {
    let mut out = Vec::new();
    while let Some((&first, rest)) = b.split_first() {
        b = rest;
        let mut id = u16::from(first >> 4);
        let mut len = usize::from(first & 0x0f);
        if id == 15 {
            let (&x, rest) = b.split_first().ok_or(FrameInfoError::Truncated)?;
            id += u16::from(x);
            b = rest;
        }
        if len == 15 {
            let (&x, rest) = b.split_first().ok_or(FrameInfoError::Truncated)?;
            len += usize::from(x);
            b = rest;
        }
        if b.len() < len {
            return Err(FrameInfoError::Truncated);
        }
        let (data, rest) = b.split_at(len);
        b = rest;
        out.push(match (id, len) {
            (0, 0) => FrameInfo::Barrier,
            (1, 1) => FrameInfo::Durability {
                level: data[0],
                timeout: None,
            },
            (1, 3) => FrameInfo::Durability {
                level: data[0],
                timeout: Some(u16::from_be_bytes([data[1], data[2]])),
            },
            (5, 0) => FrameInfo::PreserveTtl,
            (0 | 1 | 5, len) => return Err(FrameInfoError::BadLength { id, len }),
            (id, _) => FrameInfo::Other(id, Bytes::copy_from_slice(data)),
        });
    }
    Ok(out)
}

/// Appends a classic response to `out`.
#[allow(clippy::too_many_arguments)]
pub fn encode_response(
    out: &mut BytesMut,
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    datatype: u8,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body = extras.len() + key.len() + value.len();
    out.reserve(HEADER_LEN + body);
    out.put_u8(MAGIC_RES);
    out.put_u8(opcode);
    out.put_u16(u16::try_from(key.len()).unwrap_or(u16::MAX));
    out.put_u8(u8::try_from(extras.len()).unwrap_or(u8::MAX));
    out.put_u8(datatype);
    out.put_u16(status);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    out.put_u32(opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

/// Appends a classic request to `out` (for clients and tests).
#[allow(clippy::too_many_arguments)]
pub fn encode_request(
    out: &mut BytesMut,
    opcode: u8,
    vbucket: u16,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body = extras.len() + key.len() + value.len();
    out.put_u8(MAGIC_REQ);
    out.put_u8(opcode);
    out.put_u16(u16::try_from(key.len()).unwrap_or(u16::MAX));
    out.put_u8(u8::try_from(extras.len()).unwrap_or(u8::MAX));
    out.put_u8(0);
    out.put_u16(vbucket);
    out.put_u32(u32::try_from(body).unwrap_or(u32::MAX));
    out.put_u32(opaque);
    out.put_u64(cas);
    out.put_slice(extras);
    out.put_slice(key);
    out.put_slice(value);
}

/// A decoded response (for clients and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The command.
    pub opcode: u8,
    /// The status.
    pub status: u16,
    /// The datatype bits.
    pub datatype: u8,
    /// The opaque of the request.
    pub opaque: u32,
    /// The CAS.
    pub cas: u64,
    /// Framing extras (alt responses).
    pub framing: Bytes,
    /// Extras.
    pub extras: Bytes,
    /// Key.
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
}

/// Takes one response out of `buf`; `Ok(None)` when it is not whole yet.
pub fn decode_response(buf: &mut BytesMut) -> Result<Option<Response>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let magic = buf[0];
    if magic != MAGIC_RES && magic != MAGIC_ALT_RES {
        return Err(FrameError::BadMagic(magic));
    }
    let h = &buf[..HEADER_LEN];
    let (framing, key) = if magic == MAGIC_ALT_RES {
        (usize::from(h[2]), usize::from(h[3]))
    } else {
        (0, usize::from(u16::from_be_bytes([h[2], h[3]])))
    };
    let extras = usize::from(h[4]);
    let body = u32::from_be_bytes([h[8], h[9], h[10], h[11]]) as usize;
    if framing + extras + key > body {
        return Err(FrameError::Inconsistent {
            framing,
            extras,
            key,
            body,
        });
    }
    if buf.len() < HEADER_LEN + body {
        return Ok(None);
    }
    let opcode = h[1];
    let datatype = h[5];
    let status = u16::from_be_bytes([h[6], h[7]]);
    let opaque = u32::from_be_bytes([h[12], h[13], h[14], h[15]]);
    let cas = u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]);
    buf.advance(HEADER_LEN);
    let mut frame = buf.split_to(body).freeze();
    let framing_b = frame.split_to(framing);
    let extras_b = frame.split_to(extras);
    let key_b = frame.split_to(key);
    Ok(Some(Response {
        opcode,
        status,
        datatype,
        opaque,
        cas,
        framing: framing_b,
        extras: extras_b,
        key: key_b,
        value: frame,
    }))
}

/// True for the quiet variant of a command.
#[must_use]
pub fn is_quiet(op: u8) -> bool {
    use opcode::*;
    matches!(
        op,
        GETQ | GETKQ
            | SETQ
            | ADDQ
            | REPLACEQ
            | DELETEQ
            | INCREMENTQ
            | DECREMENTQ
            | QUITQ
            | FLUSHQ
            | APPENDQ
            | PREPENDQ
            | GATQ
    )
}

/// The name of a status, as the error map and logs give it.
#[must_use]
pub fn status_name(s: u16) -> (&'static str, &'static str) {
    use status::*;
    match s {
        SUCCESS => ("SUCCESS", "Success"),
        KEY_ENOENT => ("KEY_ENOENT", "Not Found"),
        KEY_EEXISTS => ("KEY_EEXISTS", "key already exists, or CAS mismatch"),
        E2BIG => ("E2BIG", "Value is too big"),
        EINVAL => ("EINVAL", "Invalid packet"),
        NOT_STORED => ("NOT_STORED", "Not Stored"),
        DELTA_BADVAL => ("DELTA_BADVAL", "Existing document not a number"),
        NOT_MY_VBUCKET => ("NOT_MY_VBUCKET", "Server does not know about this vBucket"),
        NO_BUCKET => ("NO_BUCKET", "Not connected to a bucket"),
        AUTH_STALE => ("AUTH_STALE", "Reauthentication required"),
        AUTH_ERROR => ("AUTH_ERROR", "Authentication failed"),
        AUTH_CONTINUE => ("AUTH_CONTINUE", "Authentication continue"),
        ERANGE => ("ERANGE", "Value out of range"),
        EACCESS => ("EACCESS", "No access"),
        UNKNOWN_FRAME_INFO => ("UNKNOWN_FRAME_INFO", "Unknown frame info"),
        UNKNOWN_COMMAND => ("UNKNOWN_COMMAND", "Unknown command"),
        ENOMEM => ("ENOMEM", "Out of memory"),
        NOT_SUPPORTED => ("NOT_SUPPORTED", "Command not supported"),
        EINTERNAL => ("EINTERNAL", "Internal error"),
        EBUSY => ("EBUSY", "Server busy"),
        ETMPFAIL => ("ETMPFAIL", "Temporary failure"),
        UNKNOWN_COLLECTION => ("UNKNOWN_COLLECTION", "Unknown collection"),
        CANNOT_APPLY_MANIFEST => (
            "CANNOT_APPLY_COLLECTIONS_MANIFEST",
            "Cannot apply collections manifest",
        ),
        UNKNOWN_SCOPE => ("UNKNOWN_SCOPE", "Unknown scope"),
        DURABILITY_INVALID_LEVEL => ("DURABILITY_INVALID_LEVEL", "Invalid durability level"),
        DURABILITY_IMPOSSIBLE => ("DURABILITY_IMPOSSIBLE", "Durability impossible"),
        _ => ("UNKNOWN", "Unknown status"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_infos() {
        let infos = parse_frame_infos(&[0x00, 0x11, 0x03, 0x50]).unwrap();
        assert_eq!(
            infos,
            vec![
                FrameInfo::Barrier,
                FrameInfo::Durability {
                    level: 3,
                    timeout: None
                },
                FrameInfo::PreserveTtl
            ]
        );
        assert_eq!(
            parse_frame_infos(&[0x13, 0x01, 0x00, 0x10]).unwrap(),
            vec![FrameInfo::Durability {
                level: 1,
                timeout: Some(16)
            }]
        );
        assert_eq!(
            parse_frame_infos(&[0x12, 1]),
            Err(FrameInfoError::Truncated)
        );
        assert_eq!(parse_frame_infos(&[0xf0]), Err(FrameInfoError::Truncated));
        assert!(matches!(
            parse_frame_infos(&[0x12, 1, 2]),
            Err(FrameInfoError::BadLength { id: 1, len: 2 })
        ));
    }

    #[test]
    fn alt_request_layout() {
        let mut b = BytesMut::new();
        b.put_u8(MAGIC_ALT_REQ);
        b.put_u8(opcode::SET);
        b.put_u8(1); // framing extras
        b.put_u8(1); // key
        b.put_u8(8); // extras
        b.put_u8(0);
        b.put_u16(3);
        b.put_u32(1 + 8 + 1 + 2);
        b.put_u32(9);
        b.put_u64(0);
        b.put_slice(&[0x00]);
        b.put_slice(&[0; 8]);
        b.put_slice(b"k");
        b.put_slice(b"vv");
        let Decoded::Frame(r) = decode_request(&mut b, 100).unwrap() else {
            panic!("incomplete")
        };
        assert_eq!(&r.framing[..], &[0]);
        assert_eq!(r.extras.len(), 8);
        assert_eq!(&r.key[..], b"k");
        assert_eq!(&r.value[..], b"vv");
        assert_eq!(r.vbucket, 3);
    }

    #[test]
    fn limits() {
        let mut b = BytesMut::new();
        encode_request(&mut b, opcode::SET, 0, 0, 0, &[], b"k", &[0; 200]);
        assert!(matches!(
            decode_request(&mut b.clone(), 100),
            Err(FrameError::TooLarge { .. })
        ));
        let mut bad = BytesMut::from(&[0x42u8; 30][..]);
        assert_eq!(
            decode_request(&mut bad, 100).unwrap_err(),
            FrameError::BadMagic(0x42)
        );
        let mut inconsistent = BytesMut::new();
        encode_request(&mut inconsistent, opcode::GET, 0, 0, 0, &[], b"key", &[]);
        inconsistent[11] = 1; // body 1 < key 3
        assert!(matches!(
            decode_request(&mut inconsistent, 100),
            Err(FrameError::Inconsistent { .. })
        ));
    }

    proptest! {
        /// Any bytes: the decoder returns a frame, asks for more, or refuses;
        /// it never panics and never asks for more than the limit allows.
        #[test]
        fn decoder_total(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut b = BytesMut::from(&data[..]);
            match decode_request(&mut b, 64) {
                Ok(Decoded::Incomplete(n)) => prop_assert!(n <= HEADER_LEN + 64),
                Ok(Decoded::Frame(_)) | Err(_) => {}
            }
            let _ = parse_frame_infos(&data);
        }
    }
}
