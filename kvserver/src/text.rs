//! The memcached text protocol (`protocol.txt`): command lines parsed out
//! of a bounded buffer, with the replies memcached gives for malformed ones.
//!
//! ```
//! use bytes::BytesMut;
//! use kvserver::text::{parse, Parsed, Command, StoreKind};
//!
//! let mut buf = BytesMut::from(&b"set k 5 0 2\r\nhi\r\nget k\r\n"[..]);
//! let Parsed::Command(Command::Store { kind, key, flags, data, .. }) = parse(&mut buf, 1024) else { panic!() };
//! assert_eq!((kind, &key[..], flags, &data[..]), (StoreKind::Set, &b"k"[..], 5, &b"hi"[..]));
//! let Parsed::Command(Command::Get { keys, .. }) = parse(&mut buf, 1024) else { panic!() };
//! assert_eq!(keys.len(), 1);
//! ```

use bytes::{Buf, Bytes, BytesMut};

/// The longest command line accepted (memcached's limit on a key line is
/// about the same); a longer one closes the connection.
pub const MAX_LINE: usize = 8192;

/// The longest key.
pub const MAX_KEY: usize = 250;

/// A storage command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// `set`
    Set,
    /// `add`
    Add,
    /// `replace`
    Replace,
    /// `append`
    Append,
    /// `prepend`
    Prepend,
    /// `cas`
    Cas,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `get` / `gets`.
    Get {
        /// The keys.
        keys: Vec<Bytes>,
        /// `gets`: reply with CAS.
        with_cas: bool,
    },
    /// `gat` / `gats`.
    Gat {
        /// The new expiry.
        exptime: i64,
        /// The keys.
        keys: Vec<Bytes>,
        /// `gats`.
        with_cas: bool,
    },
    /// `set`, `add`, `replace`, `append`, `prepend`, `cas`.
    Store {
        /// Which.
        kind: StoreKind,
        /// The key.
        key: Bytes,
        /// Client flags.
        flags: u32,
        /// Expiry (negative: already expired).
        exptime: i64,
        /// The CAS of `cas`.
        cas: u64,
        /// The data block.
        data: Bytes,
        /// No reply wanted.
        noreply: bool,
    },
    /// `delete`.
    Delete {
        /// The key.
        key: Bytes,
        /// No reply wanted.
        noreply: bool,
    },
    /// `incr` / `decr`.
    Arith {
        /// `incr`.
        incr: bool,
        /// The key.
        key: Bytes,
        /// The delta.
        delta: u64,
        /// No reply wanted.
        noreply: bool,
    },
    /// `touch`.
    Touch {
        /// The key.
        key: Bytes,
        /// The new expiry.
        exptime: i64,
        /// No reply wanted.
        noreply: bool,
    },
    /// `stats [group]`.
    Stats(Option<String>),
    /// `version`.
    Version,
    /// `verbosity`.
    Verbosity {
        /// No reply wanted.
        noreply: bool,
    },
    /// `quit`.
    Quit,
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A command, taken out of the buffer.
    Command(Command),
    /// More bytes are needed.
    Incomplete,
    /// A bad line (taken out of the buffer), answered with this reply.
    Reply(&'static str),
    /// A storage command whose data block is too large: answer it, then
    /// discard this many bytes that follow (the block and its `\r\n`).
    TooLarge {
        /// Bytes of the data block still to discard.
        swallow: usize,
        /// No reply wanted.
        noreply: bool,
    },
    /// The line is longer than [`MAX_LINE`]: answer and close.
    LineTooLong,
}

const BAD_FORMAT: &str = "CLIENT_ERROR bad command line format";

fn key_ok(k: &[u8]) -> bool {
    !k.is_empty() && k.len() <= MAX_KEY
}

fn num<T: std::str::FromStr>(t: &[u8]) -> Option<T> {
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// Takes one command out of `buf`. `max_value` bounds a data block.
pub fn parse(buf: &mut BytesMut, max_value: usize) -> Parsed {
    let Some(nl) = buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') else {
        return if buf.len() > MAX_LINE {
            Parsed::LineTooLong
        } else {
            Parsed::Incomplete
        };
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    let line = Bytes::copy_from_slice(&buf[..line_end]);
    let tokens: Vec<Bytes> = line
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .map(|t| line.slice_ref(t))
        .collect();
    let Some(cmd) = tokens.first() else {
        buf.advance(nl + 1);
        return Parsed::Reply("ERROR");
    };
    let args = &tokens[1..];
    let noreply = args.last().is_some_and(|t| &t[..] == b"noreply");
    let store = match &cmd[..] {
        b"set" => Some(StoreKind::Set),
        b"add" => Some(StoreKind::Add),
        b"replace" => Some(StoreKind::Replace),
        b"append" => Some(StoreKind::Append),
        b"prepend" => Some(StoreKind::Prepend),
        b"cas" => Some(StoreKind::Cas),
        _ => None,
    };
    if let Some(kind) = store {
        let want = if kind == StoreKind::Cas { 5 } else { 4 };
        if args.len() != want && args.len() != want + 1 {
            buf.advance(nl + 1);
            return Parsed::Reply("ERROR");
        }
        let key = args[0].clone();
        let (Some(flags), Some(exptime), Some(bytes)) = (
            num::<u32>(&args[1]),
            num::<i64>(&args[2]),
            num::<i64>(&args[3]),
        ) else {
            buf.advance(nl + 1);
            return Parsed::Reply(BAD_FORMAT);
        };
        let cas = if kind == StoreKind::Cas {
            match num::<u64>(&args[4]) {
                Some(c) => c,
                None => {
                    buf.advance(nl + 1);
                    return Parsed::Reply(BAD_FORMAT);
                }
            }
        } else {
            0
        };
        if !key_ok(&key) || bytes < 0 {
            buf.advance(nl + 1);
            return Parsed::Reply(BAD_FORMAT);
        }
        let Ok(bytes) = usize::try_from(bytes) else {
            buf.advance(nl + 1);
            return Parsed::Reply(BAD_FORMAT);
        };
        if bytes > max_value {
            buf.advance(nl + 1);
            return Parsed::TooLarge {
                swallow: bytes.saturating_add(2),
                noreply,
            };
        }
        let total = nl + 1 + bytes + 2;
        if buf.len() < total {
            return Parsed::Incomplete;
        }
        buf.advance(nl + 1);
        let data = buf.split_to(bytes).freeze();
        let term = buf.split_to(2);
        if &term[..] != b"\r\n" {
            return Parsed::Reply("CLIENT_ERROR bad data chunk");
        }
        return Parsed::Command(Command::Store {
            kind,
            key,
            flags,
            exptime,
            cas,
            data,
            noreply,
        });
    }
    buf.advance(nl + 1);
    let parsed = match &cmd[..] {
        b"get" | b"gets" => {
            if args.is_empty() {
                return Parsed::Reply("ERROR");
            }
            if !args.iter().all(|k| key_ok(k)) {
                return Parsed::Reply(BAD_FORMAT);
            }
            Command::Get {
                keys: args.to_vec(),
                with_cas: &cmd[..] == b"gets",
            }
        }
        b"gat" | b"gats" => {
            if args.len() < 2 {
                return Parsed::Reply("ERROR");
            }
            let Some(exptime) = num::<i64>(&args[0]) else {
                return Parsed::Reply("CLIENT_ERROR invalid exptime argument");
            };
            if !args[1..].iter().all(|k| key_ok(k)) {
                return Parsed::Reply(BAD_FORMAT);
            }
            Command::Gat {
                exptime,
                keys: args[1..].to_vec(),
                with_cas: &cmd[..] == b"gats",
            }
        }
        b"delete" => {
            // `delete <key> [0] [noreply]`: a time other than 0 is refused.
            let rest = &args[..args.len() - usize::from(noreply)];
            match rest {
                [key] if key_ok(key) => Command::Delete {
                    key: key.clone(),
                    noreply,
                },
                [key, zero] if key_ok(key) && &zero[..] == b"0" => Command::Delete {
                    key: key.clone(),
                    noreply,
                },
                [] => return Parsed::Reply("ERROR"),
                _ => {
                    return Parsed::Reply(
                        "CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
                    );
                }
            }
        }
        b"incr" | b"decr" => {
            if args.len() != 2 && args.len() != 3 {
                return Parsed::Reply("ERROR");
            }
            if !key_ok(&args[0]) {
                return Parsed::Reply(BAD_FORMAT);
            }
            let Some(delta) = num::<u64>(&args[1]) else {
                return Parsed::Reply("CLIENT_ERROR invalid numeric delta argument");
            };
            Command::Arith {
                incr: &cmd[..] == b"incr",
                key: args[0].clone(),
                delta,
                noreply,
            }
        }
        b"touch" => {
            if args.len() != 2 && args.len() != 3 {
                return Parsed::Reply("ERROR");
            }
            if !key_ok(&args[0]) {
                return Parsed::Reply(BAD_FORMAT);
            }
            let Some(exptime) = num::<i64>(&args[1]) else {
                return Parsed::Reply("CLIENT_ERROR invalid exptime argument");
            };
            Command::Touch {
                key: args[0].clone(),
                exptime,
                noreply,
            }
        }
        b"stats" => Command::Stats(
            args.first()
                .map(|g| String::from_utf8_lossy(g).into_owned()),
        ),
        b"version" => Command::Version,
        b"verbosity" => {
            if args.is_empty() || args.len() > 2 {
                return Parsed::Reply("ERROR");
            }
            Command::Verbosity { noreply }
        }
        b"quit" => Command::Quit,
        _ => return Parsed::Reply("ERROR"),
    };
    Parsed::Command(parsed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn one(s: &[u8]) -> Parsed {
        parse(&mut BytesMut::from(s), 100)
    }

    #[test]
    fn commands() {
        assert_eq!(one(b"set k 0 0"), Parsed::Incomplete);
        assert_eq!(one(b"set k 0 0\r\n"), Parsed::Reply("ERROR"));
        assert_eq!(one(b"set k 0 0 5\r\nab"), Parsed::Incomplete);
        assert_eq!(
            one(b"set k 0 0 2\r\nabcd"),
            Parsed::Reply("CLIENT_ERROR bad data chunk")
        );
        assert_eq!(one(b"set k x 0 2\r\nab\r\n"), Parsed::Reply(BAD_FORMAT));
        assert_eq!(
            one(b"set k 0 0 1000\r\n"),
            Parsed::TooLarge {
                swallow: 1002,
                noreply: false
            }
        );
        assert!(matches!(
            one(b"cas k 1 2 1 99 noreply\r\nx\r\n"),
            Parsed::Command(Command::Store {
                kind: StoreKind::Cas,
                cas: 99,
                noreply: true,
                ..
            })
        ));
        assert!(matches!(
            one(b"delete k 0\r\n"),
            Parsed::Command(Command::Delete { .. })
        ));
        assert!(matches!(one(b"delete k 5\r\n"), Parsed::Reply(_)));
        assert!(matches!(
            one(b"incr k abc\r\n"),
            Parsed::Reply("CLIENT_ERROR invalid numeric delta argument")
        ));
        assert!(matches!(
            one(b"gats 10 a b\r\n"),
            Parsed::Command(Command::Gat { exptime: 10, .. })
        ));
        assert_eq!(one(b"bogus\r\n"), Parsed::Reply("ERROR"));
        assert_eq!(one(b"\r\n"), Parsed::Reply("ERROR"));
        let long = vec![b'a'; MAX_LINE + 10];
        assert_eq!(one(&long), Parsed::LineTooLong);
        let key = "k".repeat(251);
        assert_eq!(
            one(format!("get {key}\r\n").as_bytes()),
            Parsed::Reply(BAD_FORMAT)
        );
    }

    proptest! {
        /// Any bytes: a command, a reply, more wanted, or a close; never a
        /// panic, and a reply always consumes input (no loop).
        #[test]
        fn parser_total(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::from(&data[..]);
            for _ in 0..400 {
                let before = b.len();
                match parse(&mut b, 64) {
                    Parsed::Incomplete | Parsed::LineTooLong | Parsed::TooLarge { .. } => break,
                    Parsed::Command(_) | Parsed::Reply(_) => prop_assert!(b.len() < before),
                }
            }
        }
    }
}
