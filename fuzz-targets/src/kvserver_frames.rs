//! `kvserver_frames`: kvserver's binary frame decoders and its text
//! protocol parser, as a connection drives them.
//!
//! The first byte picks the parser, the second a limit, the rest is the
//! byte stream a client sent. Properties:
//! - nothing panics, loops or asks for more than the limit allows;
//! - a decoded request takes exactly its header and body out of the buffer,
//!   and a classic one re-encodes to the bytes it came from;
//! - the stream gives the same frames, commands, replies and errors whether
//!   it arrives at once or in pieces (a decoder that is not prefix-stable
//!   answers a slow client differently);
//! - frame infos and text commands print back to input that parses to the
//!   same thing; responses round-trip through `encode_response`.
//!
//! A connection's state machine (kvserver's `conn` module, private, over a
//! running engine) is not driven here yet.

use bytes::{BufMut, BytesMut};
use kvserver::protocol::{
    Decoded, FrameError, FrameInfo, HEADER_LEN, MAGIC_REQ, Request, Response, decode_request,
    decode_response, encode_request, encode_response, is_quiet, parse_frame_infos, status_name,
};
use kvserver::text::{Command, MAX_KEY, Parsed, StoreKind, parse};

/// Runs one input.
pub fn run(data: &[u8]) {
    let [which, limit, rest @ ..] = data else {
        return;
    };
    match which % 5 {
        0 => requests(rest, 16 + usize::from(*limit) * 64),
        1 => responses(rest),
        2 => frame_infos(rest),
        3 => text(rest, usize::from(*limit) * 4),
        _ => response_round_trip(rest),
    }
}

/// The piece sizes a stream arrives in: 1 to 8 bytes, from the stream's
/// own bytes, so every cut point is reachable.
fn pieces(data: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < data.len() {
        let n = 1 + usize::from(data[i % data.len()] % 8);
        out.push(n.min(data.len() - at));
        at += n;
        i += 1;
    }
    out
}

/// Everything a request decoder gives for a stream, until it needs more.
#[derive(Debug, PartialEq)]
enum Event<T, E> {
    Item(T),
    Error(E),
}

fn request_events(data: &[u8], max: usize, incremental: bool) -> Vec<Event<Request, FrameError>> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let feeds = if incremental {
        pieces(data)
    } else {
        vec![data.len()]
    };
    let mut at = 0;
    'feed: for n in feeds {
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        loop {
            let before = buf.len();
            match decode_request(&mut buf, max) {
                Ok(Decoded::Frame(r)) => {
                    let body = r.framing.len() + r.extras.len() + r.key.len() + r.value.len();
                    assert_eq!(
                        before - buf.len(),
                        HEADER_LEN + body,
                        "a frame takes its header and body"
                    );
                    assert!(body <= max, "a frame over the limit: {body} > {max}");
                    out.push(Event::Item(r));
                }
                Ok(Decoded::Incomplete(need)) => {
                    assert_eq!(buf.len(), before, "an incomplete frame takes nothing");
                    assert!(need > before, "asks for {need} bytes with {before} in hand");
                    assert!(
                        need <= HEADER_LEN + max,
                        "asks for {need}, over the limit {max}"
                    );
                    break;
                }
                Err(e) => {
                    out.push(Event::Error(e));
                    break 'feed;
                }
            }
        }
    }
    out
}

/// A request stream.
pub fn requests(data: &[u8], max: usize) {
    let whole = request_events(data, max, false);
    let pieces = request_events(data, max, true);
    assert_eq!(
        whole, pieces,
        "the same stream in pieces decodes differently"
    );
    let mut at = 0;
    for e in &whole {
        let Event::Item(r) = e else { break };
        let len = HEADER_LEN + r.framing.len() + r.extras.len() + r.key.len() + r.value.len();
        let raw = &data[at..at + len];
        at += len;
        if r.magic == MAGIC_REQ && r.datatype == 0 && r.key.len() <= usize::from(u16::MAX) {
            let mut again = BytesMut::new();
            encode_request(
                &mut again, r.opcode, r.vbucket, r.opaque, r.cas, &r.extras, &r.key, &r.value,
            );
            assert_eq!(&again[..], raw, "a classic request re-encodes to its bytes");
        }
        let _ = is_quiet(r.opcode);
        let _ = parse_frame_infos(&r.framing);
    }
}

fn response_events(data: &[u8], incremental: bool) -> Vec<Event<Response, FrameError>> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let feeds = if incremental {
        pieces(data)
    } else {
        vec![data.len()]
    };
    let mut at = 0;
    'feed: for n in feeds {
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        loop {
            let before = buf.len();
            match decode_response(&mut buf) {
                Ok(Some(r)) => {
                    let body = r.framing.len() + r.extras.len() + r.key.len() + r.value.len();
                    assert_eq!(before - buf.len(), HEADER_LEN + body);
                    out.push(Event::Item(r));
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before, "an incomplete response takes nothing");
                    break;
                }
                Err(e) => {
                    out.push(Event::Error(e));
                    break 'feed;
                }
            }
        }
    }
    out
}

/// A response stream (what kvserver's own client reads).
pub fn responses(data: &[u8]) {
    let whole = response_events(data, false);
    let pieces = response_events(data, true);
    assert_eq!(
        whole, pieces,
        "the same responses in pieces decode differently"
    );
    for e in &whole {
        if let Event::Item(r) = e {
            let _ = status_name(r.status);
        }
    }
}

/// A response built from the input's bytes goes through
/// `encode_response` and `decode_response` unchanged.
pub fn response_round_trip(data: &[u8]) {
    let field = |i: usize| data.get(i).copied().unwrap_or(0);
    let (ne, nk) = (usize::from(field(0) % 32), usize::from(field(1)));
    let rest = data.get(2..).unwrap_or_default();
    let extras = &rest[..ne.min(rest.len())];
    let rest = &rest[extras.len()..];
    let key = &rest[..nk.min(rest.len())];
    let value = &rest[key.len()..];
    let status = u16::from_be_bytes([field(2), field(3)]);
    let mut buf = BytesMut::new();
    encode_response(
        &mut buf,
        field(4),
        status,
        u32::from(field(5)) << 8,
        u64::from(field(6)) << 32,
        field(7),
        extras,
        key,
        value,
    );
    let len = buf.len();
    match decode_response(&mut buf) {
        Ok(Some(r)) => {
            assert_eq!(
                (
                    r.opcode,
                    r.status,
                    r.datatype,
                    &r.extras[..],
                    &r.key[..],
                    &r.value[..]
                ),
                (field(4), status, field(7), extras, key, value)
            );
            assert_eq!(
                (r.opaque, r.cas),
                (u32::from(field(5)) << 8, u64::from(field(6)) << 32)
            );
            assert!(buf.is_empty(), "{len} bytes, {} left", buf.len());
        }
        other => panic!("an encoded response decodes to {other:?}"),
    }
}

/// The bytes of frame infos, as a client writes them.
#[must_use]
pub fn encode_frame_infos(infos: &[FrameInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    for fi in infos {
        let (id, data): (u16, Vec<u8>) = match fi {
            FrameInfo::Barrier => (0, Vec::new()),
            FrameInfo::Durability { level, timeout } => {
                let mut d = vec![*level];
                if let Some(t) = timeout {
                    d.extend_from_slice(&t.to_be_bytes());
                }
                (1, d)
            }
            FrameInfo::PreserveTtl => (5, Vec::new()),
            FrameInfo::Other(id, data) => (*id, data.to_vec()),
        };
        let (id_nib, id_ext) = if id >= 15 {
            (15u8, Some((id - 15) as u8))
        } else {
            (id as u8, None)
        };
        let (len_nib, len_ext) = if data.len() >= 15 {
            (15u8, Some((data.len() - 15) as u8))
        } else {
            (data.len() as u8, None)
        };
        out.put_u8(id_nib << 4 | len_nib);
        out.extend(id_ext);
        out.extend(len_ext);
        out.extend_from_slice(&data);
    }
    out
}

/// Flexible framing extras.
pub fn frame_infos(data: &[u8]) {
    if let Ok(infos) = parse_frame_infos(data) {
        for fi in &infos {
            if let FrameInfo::Other(id, d) = fi {
                assert!(![0, 1, 5].contains(id), "a known id as Other: {fi:?}");
                assert!(usize::from(*id) <= 15 + 255 && d.len() <= 15 + 255);
            }
        }
        let again = encode_frame_infos(&infos);
        match parse_frame_infos(&again) {
            Ok(back) => assert_eq!(back, infos, "frame infos print back"),
            Err(e) => panic!("frame infos {infos:?} print as bytes that fail: {e}"),
        }
    }
}

/// What the text parser gives for a stream, driven as a connection does
/// (the data block of a refused storage command is swallowed).
fn text_events(data: &[u8], max_value: usize, incremental: bool) -> Vec<Parsed> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    let mut swallow = 0usize;
    let feeds = if incremental {
        pieces(data)
    } else {
        vec![data.len()]
    };
    let mut at = 0;
    'feed: for n in feeds {
        buf.extend_from_slice(&data[at..at + n]);
        at += n;
        for _ in 0..=data.len() {
            let n = swallow.min(buf.len());
            let _ = buf.split_to(n);
            swallow -= n;
            if swallow > 0 {
                continue 'feed;
            }
            let before = buf.len();
            let p = parse(&mut buf, max_value);
            match &p {
                Parsed::Incomplete => {
                    assert_eq!(buf.len(), before, "an incomplete command takes nothing");
                    continue 'feed;
                }
                Parsed::LineTooLong => {
                    out.push(p);
                    break 'feed;
                }
                Parsed::TooLarge { swallow: s, .. } => {
                    assert!(buf.len() < before, "a refused command takes its line");
                    swallow = *s;
                }
                Parsed::Command(c) => {
                    assert!(buf.len() < before, "a command takes its bytes");
                    check_command(c, max_value);
                }
                Parsed::Reply(_) => assert!(buf.len() < before, "a reply takes its line"),
            }
            out.push(p);
        }
        panic!("the text parser makes no progress");
    }
    out
}

fn check_command(c: &Command, max_value: usize) {
    let key_ok = |k: &[u8]| !k.is_empty() && k.len() <= MAX_KEY && !k.contains(&b' ');
    match c {
        Command::Store { key, data, .. } => {
            assert!(key_ok(key), "key {key:?}");
            assert!(data.len() <= max_value, "a data block over the limit");
        }
        Command::Get { keys, .. } | Command::Gat { keys, .. } => {
            assert!(
                !keys.is_empty() && keys.iter().all(|k| key_ok(k)),
                "{keys:?}"
            );
        }
        Command::Delete { key, .. } | Command::Arith { key, .. } | Command::Touch { key, .. } => {
            assert!(key_ok(key), "key {key:?}");
        }
        Command::Stats(_) | Command::Version | Command::Verbosity { .. } | Command::Quit => {}
    }
    if let Some(line) = render(c) {
        let mut b = BytesMut::from(&line[..]);
        match parse(&mut b, max_value) {
            Parsed::Command(back) => assert_eq!(&back, c, "{:?}", String::from_utf8_lossy(&line)),
            other => panic!(
                "{c:?} prints as {:?}, which parses to {other:?}",
                String::from_utf8_lossy(&line)
            ),
        }
        assert!(b.is_empty(), "a printed command parses whole");
    }
}

/// The text a client sends for `c` (for the commands that print exactly).
#[must_use]
pub fn render(c: &Command) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let nr = |out: &mut Vec<u8>, noreply: bool| {
        if noreply {
            out.extend_from_slice(b" noreply");
        }
    };
    match c {
        Command::Store {
            kind,
            key,
            flags,
            exptime,
            cas,
            data,
            noreply,
        } => {
            let name: &[u8] = match kind {
                StoreKind::Set => b"set",
                StoreKind::Add => b"add",
                StoreKind::Replace => b"replace",
                StoreKind::Append => b"append",
                StoreKind::Prepend => b"prepend",
                StoreKind::Cas => b"cas",
            };
            out.extend_from_slice(name);
            out.push(b' ');
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" {flags} {exptime} {}", data.len()).as_bytes());
            if *kind == StoreKind::Cas {
                out.extend_from_slice(format!(" {cas}").as_bytes());
            }
            nr(&mut out, *noreply);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        Command::Get { keys, with_cas } => {
            out.extend_from_slice(if *with_cas { b"gets" } else { b"get" });
            for k in keys {
                out.push(b' ');
                out.extend_from_slice(k);
            }
            out.extend_from_slice(b"\r\n");
        }
        Command::Gat {
            exptime,
            keys,
            with_cas,
        } => {
            out.extend_from_slice(if *with_cas { b"gats" } else { b"gat" });
            out.extend_from_slice(format!(" {exptime}").as_bytes());
            for k in keys {
                out.push(b' ');
                out.extend_from_slice(k);
            }
            out.extend_from_slice(b"\r\n");
        }
        Command::Delete { key, noreply } => {
            out.extend_from_slice(b"delete ");
            out.extend_from_slice(key);
            out.extend_from_slice(b" 0");
            nr(&mut out, *noreply);
            out.extend_from_slice(b"\r\n");
        }
        Command::Arith {
            incr,
            key,
            delta,
            noreply,
        } => {
            out.extend_from_slice(if *incr { b"incr " } else { b"decr " });
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" {delta}").as_bytes());
            nr(&mut out, *noreply);
            out.extend_from_slice(b"\r\n");
        }
        Command::Touch {
            key,
            exptime,
            noreply,
        } => {
            out.extend_from_slice(b"touch ");
            out.extend_from_slice(key);
            out.extend_from_slice(format!(" {exptime}").as_bytes());
            nr(&mut out, *noreply);
            out.extend_from_slice(b"\r\n");
        }
        Command::Version => out.extend_from_slice(b"version\r\n"),
        Command::Quit => out.extend_from_slice(b"quit\r\n"),
        Command::Stats(_) | Command::Verbosity { .. } => return None,
    }
    Some(out)
}

/// A text stream.
pub fn text(data: &[u8], max_value: usize) {
    let whole = text_events(data, max_value, false);
    let pieces = text_events(data, max_value, true);
    assert_eq!(whole, pieces, "the same text in pieces parses differently");
}
