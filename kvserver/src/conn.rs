//! One connection: the protocol is chosen by its first byte (a binary
//! request magic, or text), requests are served in order, and a request
//! the engine parks (would-block) holds the connection until the engine's
//! notifier wakes it and the re-issued call collects the result. A client
//! that goes away while parked releases its cookie.

use crate::cluster;
use crate::protocol::{self, Decoded, FrameError, FrameInfo, Request, feature, opcode, status};
use crate::sasl::{MECHANISMS, Mechanism, ScramServer};
use crate::server::{Bucket, Shared};
use crate::text::{self, Command, Parsed, StoreKind};
use bytes::{Bytes, BytesMut};
use engine::{
    ArithOp, ArithOptions, Cas, CollectionId, Concat, Datatype, DiskKey, EngineError,
    MutationResult, StoreMode, VbState, Vbid, WriteOptions,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a parked request may wait once shutdown has begun.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// An absolute expiry in the past: what a negative text exptime means
/// (memcached: expired at once). Above 30 days, so never read as relative.
const EXPIRED: u32 = 30 * 24 * 3600 + 1;

#[derive(Debug, Default, Clone, Copy)]
struct Features {
    xerror: bool,
    select_bucket: bool,
    collections: bool,
    json: bool,
    snappy: bool,
    alt_request: bool,
    sync_replication: bool,
    mutation_seqno: bool,
    tcp_nodelay: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Binary,
    Text,
}

/// What handling a request led to.
enum Flow {
    /// Go on with the next request.
    Continue,
    /// The engine parked the request: wait, then handle it again.
    Blocked(Request),
    /// Send what is queued and close.
    Close,
}

struct Conn {
    id: u64,
    shared: Arc<Shared>,
    notify: Arc<Notify>,
    local_host: String,
    features: Features,
    hello: bool,
    user: Option<String>,
    scram: Option<ScramServer>,
    bucket: Option<Arc<Bucket>>,
    out: BytesMut,
    /// Bytes of a too-large text data block still to discard.
    swallow: usize,
}

/// Serves one accepted connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let notify = shared.notifier.register(id);
    // Replies go out at once (as memcached and kv_engine do); the
    // TCPNODELAY feature is agreed for clients that ask.
    let _ = stream.set_nodelay(true);
    let local_host = stream
        .local_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let auth_required = shared.users.is_some();
    let bucket = if auth_required {
        None
    } else {
        shared.buckets.first().cloned()
    };
    let mut c = Conn {
        id,
        shared: Arc::clone(&shared),
        notify,
        local_host,
        features: Features::default(),
        hello: false,
        user: None,
        scram: None,
        bucket,
        out: BytesMut::with_capacity(4096),
        swallow: 0,
    };
    let (rd, wr) = stream.into_split();
    if let Err(e) = c.run(rd, wr).await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
    shared.notifier.unregister(id);
    for b in &shared.buckets {
        b.engine.release_cookie(id);
    }
}

/// A big-endian u32 from the first 4 bytes (callers check the length;
/// a short slice reads as 0 rather than panic).
fn be32(b: &[u8]) -> u32 {
    b.get(..4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, u32::from_be_bytes)
}

/// A big-endian u64 from the first 8 bytes, like [`be32`].
fn be64(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

/// memcached's text for a classic error status.
fn classic_text(s: u16) -> &'static str {
    match s {
        status::KEY_ENOENT => "Not found",
        status::KEY_EEXISTS => "Data exists for key.",
        status::E2BIG => "Too large.",
        status::EINVAL => "Invalid arguments",
        status::NOT_STORED => "Not stored.",
        status::DELTA_BADVAL => "Non-numeric server-side value for incr or decr",
        status::AUTH_ERROR => "Auth failure.",
        status::UNKNOWN_COMMAND => "Unknown command",
        status::ENOMEM => "Out of memory",
        _ => "",
    }
}

fn text_exptime(e: i64) -> u32 {
    if e < 0 {
        EXPIRED
    } else {
        u32::try_from(e).unwrap_or(u32::MAX)
    }
}

impl Conn {
    async fn run(&mut self, mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf) -> std::io::Result<()> {
        let limits = self.shared.cfg.limits.clone();
        let mut inbuf = BytesMut::with_capacity(16 << 10);
        let mut proto = None;
        let mut shutdown = self.shared.shutdown.clone();
        let mut deadline = Instant::now() + limits.idle_timeout;
        loop {
            // Serve every whole request in the buffer.
            let mut served = false;
            while self.out.len() < limits.max_output {
                if proto.is_none() {
                    match inbuf.first() {
                        None => break,
                        Some(&b) if b == protocol::MAGIC_REQ || b == protocol::MAGIC_ALT_REQ => {
                            proto = Some(Proto::Binary);
                        }
                        Some(_) => proto = Some(Proto::Text),
                    }
                }
                let flow = match proto {
                    Some(Proto::Binary) => {
                        match protocol::decode_request(&mut inbuf, limits.max_frame_size) {
                            Ok(Decoded::Incomplete(_)) => break,
                            Ok(Decoded::Frame(req)) => self.binary(req),
                            Err(e) => self.frame_error(&inbuf, &e),
                        }
                    }
                    Some(Proto::Text) => match self.text(&mut inbuf) {
                        Some(f) => f,
                        None => break,
                    },
                    None => break,
                };
                served = true;
                match flow {
                    Flow::Continue => {}
                    Flow::Close => {
                        wr.write_all(&self.out).await?;
                        self.out.clear();
                        return Ok(());
                    }
                    Flow::Blocked(req) => {
                        wr.write_all(&self.out).await?;
                        self.out.clear();
                        if !self.wait_parked(&mut rd, &mut inbuf, &req).await? {
                            return Ok(());
                        }
                        self.redo(req);
                    }
                }
            }
            if served {
                deadline = Instant::now() + limits.idle_timeout;
            }
            if !self.out.is_empty() {
                wr.write_all(&self.out).await?;
                self.out.clear();
                continue;
            }
            if *shutdown.borrow() {
                return Ok(());
            }
            // Room for the request being read, never more than one frame.
            let room = (limits.max_frame_size + protocol::HEADER_LEN + text::MAX_LINE + 2)
                .saturating_sub(inbuf.len())
                .min(64 << 10);
            if room == 0 {
                self.shared
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            inbuf.reserve(room);
            tokio::select! {
                r = rd.read_buf(&mut inbuf) => {
                    if r? == 0 {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    self.shared.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                _ = shutdown.changed() => {
                    if inbuf.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits until the parked request can be collected (true), or the
    /// client went away (false: its cookie is released by the caller).
    async fn wait_parked(
        &mut self,
        rd: &mut OwnedReadHalf,
        inbuf: &mut BytesMut,
        req: &Request,
    ) -> std::io::Result<bool> {
        self.shared.counters.parked.fetch_add(1, Ordering::Relaxed);
        let mut shutdown = self.shared.shutdown.clone();
        let mut grace: Option<Instant> = None;
        let cap = self.shared.cfg.limits.max_frame_size;
        loop {
            let can_read = inbuf.len() < cap;
            inbuf.reserve(4096);
            let until = grace.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                biased;
                r = rd.read_buf(inbuf), if can_read => {
                    if r? == 0 {
                        self.shared.counters.parked_released.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(cookie = self.id, "client left while parked");
                        return Ok(false);
                    }
                }
                () = self.notify.notified() => {
                    tracing::debug!(cookie = self.id, "parked request notified");
                    return Ok(true);
                }
                _ = shutdown.changed(), if grace.is_none() => {
                    grace = Some(Instant::now() + SHUTDOWN_GRACE);
                }
                () = tokio::time::sleep_until(until), if grace.is_some() => {
                    self.respond(req, status::ETMPFAIL, 0, 0, &[], &[], b"shutting down");
                    return Ok(true);
                }
            }
        }
    }

    /// Handles a parked request again, which collects its result.
    fn redo(&mut self, req: Request) {
        match self.binary(req) {
            Flow::Blocked(req) => {
                // Woken but not complete: cannot happen with one parking
                // per cookie; fail rather than loop.
                tracing::warn!(
                    cookie = self.id,
                    "woken, but the parked request is not complete"
                );
                self.respond(
                    &req,
                    status::ETMPFAIL,
                    0,
                    0,
                    &[],
                    &[],
                    b"parked request not complete",
                );
            }
            Flow::Continue | Flow::Close => {}
        }
    }

    fn frame_error(&mut self, inbuf: &BytesMut, e: &FrameError) -> Flow {
        self.shared
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        let (op, opaque) = if inbuf.len() >= protocol::HEADER_LEN {
            (inbuf[1], be32(&inbuf[12..16]))
        } else {
            (0, 0)
        };
        let s = match e {
            FrameError::TooLarge { .. } => status::E2BIG,
            FrameError::BadMagic(_) | FrameError::Inconsistent { .. } => status::EINVAL,
        };
        protocol::encode_response(
            &mut self.out,
            op,
            s,
            opaque,
            0,
            0,
            &[],
            &[],
            e.to_string().as_bytes(),
        );
        Flow::Close
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        req: &Request,
        s: u16,
        cas: u64,
        datatype: u8,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) {
        protocol::encode_response(
            &mut self.out,
            req.opcode,
            s,
            req.opaque,
            cas,
            datatype,
            extras,
            key,
            value,
        );
    }

    fn status_only(&mut self, req: &Request, s: u16) {
        let text = classic_text(s).as_bytes();
        self.respond(req, s, 0, 0, &[], &[], text);
    }

    fn json_dt(&self) -> u8 {
        if self.features.json {
            Datatype::JSON
        } else {
            0
        }
    }

    fn config_json(&self) -> Vec<u8> {
        let rev = self.shared.config_rev.load(Ordering::Acquire);
        let v = match &self.bucket {
            Some(b) => cluster::bucket_config(
                &b.name,
                &self.local_host,
                self.shared.port,
                b.vbuckets,
                rev,
                b.engine.manifest().uid,
            ),
            None => cluster::global_config(&self.local_host, self.shared.port, rev),
        };
        v.to_string().into_bytes()
    }

    /// Answers an engine error as the protocol wants it.
    fn engine_error(&mut self, req: &Request, e: &EngineError) {
        let mut s = match e {
            EngineError::ShuttingDown => status::ETMPFAIL,
            e => e.status_code(),
        };
        if !self.features.xerror && s > status::ETMPFAIL {
            s = match s {
                status::UNKNOWN_COLLECTION | status::UNKNOWN_SCOPE => status::KEY_ENOENT,
                _ => status::EINVAL,
            };
        }
        match e {
            EngineError::NotMyVbucket(_) => {
                let cfg = self.config_json();
                let dt = self.json_dt();
                self.respond(req, s, 0, dt, &[], &[], &cfg);
            }
            EngineError::UnknownCollection { manifest_uid }
            | EngineError::UnknownScope { manifest_uid }
                if self.features.xerror =>
            {
                let body = format!("{{\"manifest_uid\":\"{manifest_uid:x}\"}}");
                let dt = self.json_dt();
                self.respond(req, s, 0, dt, &[], &[], body.as_bytes());
            }
            _ => {
                let text = classic_text(s);
                if text.is_empty() && self.features.xerror {
                    let body = serde_json::json!({"error": {"context": e.to_string()}}).to_string();
                    let dt = self.json_dt();
                    self.respond(req, s, 0, dt, &[], &[], body.as_bytes());
                } else {
                    self.respond(req, s, 0, 0, &[], &[], text.as_bytes());
                }
            }
        }
    }

    fn vbid(&self, req: &Request, user_key: &[u8]) -> Vbid {
        match &self.bucket {
            // Classic memcached clients (no HELLO) send vbucket 0: their
            // keys are hashed like the text protocol's.
            Some(b) if !self.hello => Vbid(cluster::vbucket_of(user_key, b.vbuckets)),
            _ => Vbid(req.vbucket),
        }
    }

    fn disk_key(&self, raw: &[u8]) -> Option<DiskKey> {
        if self.features.collections {
            DiskKey::from_bytes(raw).ok()
        } else {
            DiskKey::new(CollectionId::DEFAULT, raw).ok()
        }
    }

    fn mutation_extras(&self, m: &MutationResult) -> Vec<u8> {
        if self.features.mutation_seqno {
            let mut e = Vec::with_capacity(16);
            e.extend_from_slice(&m.vbucket_uuid.to_be_bytes());
            e.extend_from_slice(&m.seqno.0.to_be_bytes());
            e
        } else {
            Vec::new()
        }
    }

    /// The value and datatype a client gets: only the bits it negotiated,
    /// compressed when it takes snappy and that saves space.
    fn outgoing(&self, value: &Bytes, datatype: Datatype) -> (Bytes, u8) {
        let mut dt = datatype.0
            & if self.features.json {
                Datatype::JSON
            } else {
                0
            };
        if self.features.snappy
            && value.len() >= 1024
            && let Ok(c) = snap::raw::Encoder::new().compress_vec(value)
            && c.len() < value.len()
        {
            dt |= Datatype::SNAPPY;
            return (Bytes::from(c), dt);
        }
        (value.clone(), dt)
    }

    /// The value and datatype to store from a request.
    fn incoming(&self, req: &Request) -> Result<(Bytes, Datatype), u16> {
        let dt = req.datatype;
        if dt & !Datatype::ALL != 0 || dt & Datatype::XATTR != 0 {
            return Err(status::EINVAL);
        }
        if (dt & Datatype::JSON != 0 && !self.features.json)
            || (dt & Datatype::SNAPPY != 0 && !self.features.snappy)
        {
            return Err(status::EINVAL);
        }
        if dt & Datatype::SNAPPY == 0 {
            return Ok((req.value.clone(), Datatype(dt)));
        }
        let max = self.shared.cfg.limits.max_value_size;
        match snap::raw::decompress_len(&req.value) {
            Ok(n) if n > max => return Err(status::E2BIG),
            Ok(_) => {}
            Err(_) => return Err(status::EINVAL),
        }
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&req.value)
            .map_err(|_| status::EINVAL)?;
        Ok((Bytes::from(raw), Datatype(dt & !Datatype::SNAPPY)))
    }

    /// The durability frame info: `Ok(true)` for a durable request.
    fn durability(&self, req: &Request) -> Result<bool, u16> {
        if req.framing.is_empty() {
            return Ok(false);
        }
        let infos = protocol::parse_frame_infos(&req.framing).map_err(|_| status::EINVAL)?;
        let mut durable = false;
        for i in infos {
            match i {
                FrameInfo::Durability { level, timeout } => {
                    if !(1..=3).contains(&level) {
                        return Err(status::DURABILITY_INVALID_LEVEL);
                    }
                    if matches!(timeout, Some(0 | 0xffff)) {
                        return Err(status::EINVAL);
                    }
                    // One node: every level means persisted here first.
                    durable = true;
                }
                FrameInfo::Barrier | FrameInfo::PreserveTtl => {}
                FrameInfo::Other(..) => return Err(status::UNKNOWN_FRAME_INFO),
            }
        }
        Ok(durable)
    }

    fn authorized(&self) -> bool {
        self.shared.users.is_none() || self.user.is_some()
    }

    fn binary(&mut self, req: Request) -> Flow {
        use opcode::*;
        let open = matches!(
            req.opcode,
            HELLO
                | SASL_LIST_MECHS
                | SASL_AUTH
                | SASL_STEP
                | GET_ERROR_MAP
                | NOOP
                | VERSION
                | QUIT
                | QUITQ
        );
        if !open && !self.authorized() {
            self.respond(
                &req,
                status::EACCESS,
                0,
                0,
                &[],
                &[],
                b"authentication required",
            );
            return Flow::Continue;
        }
        match req.opcode {
            GET | GETQ | GETK | GETKQ | GAT | GATQ => self.get(&req),
            SET | SETQ | ADD | ADDQ | REPLACE | REPLACEQ => return self.store(req),
            DELETE | DELETEQ => return self.delete(req),
            INCREMENT | INCREMENTQ | DECREMENT | DECREMENTQ => self.arith(&req),
            APPEND | APPENDQ | PREPEND | PREPENDQ => return self.concat(req),
            TOUCH => self.touch(&req),
            NOOP => self.respond(&req, 0, 0, 0, &[], &[], &[]),
            VERSION => {
                let v = format!("7.6.0-kvserver-{}", env!("CARGO_PKG_VERSION"));
                self.respond(&req, 0, 0, 0, &[], &[], v.as_bytes());
            }
            QUIT => {
                self.respond(&req, 0, 0, 0, &[], &[], &[]);
                return Flow::Close;
            }
            QUITQ => return Flow::Close,
            VERBOSITY => {
                if req.extras.len() == 4 && req.key.is_empty() && req.value.is_empty() {
                    self.respond(&req, 0, 0, 0, &[], &[], &[]);
                } else {
                    self.status_only(&req, status::EINVAL);
                }
            }
            STAT => self.stat(&req),
            HELLO => self.hello(&req),
            SASL_LIST_MECHS => self.respond(&req, 0, 0, 0, &[], &[], MECHANISMS.as_bytes()),
            SASL_AUTH | SASL_STEP => self.sasl(&req),
            GET_ERROR_MAP => {
                if req.value.len() != 2 {
                    self.status_only(&req, status::EINVAL);
                } else {
                    let v = u16::from_be_bytes([req.value[0], req.value[1]]);
                    let map = cluster::error_map(v).to_string();
                    let dt = self.json_dt();
                    self.respond(&req, 0, 0, dt, &[], &[], map.as_bytes());
                }
            }
            SELECT_BUCKET => {
                let name = String::from_utf8_lossy(&req.key).into_owned();
                if name == "@no bucket@" {
                    self.bucket = None;
                    self.respond(&req, 0, 0, 0, &[], &[], &[]);
                } else if let Some(b) = self.shared.bucket(&name) {
                    self.bucket = Some(b);
                    self.respond(&req, 0, 0, 0, &[], &[], &[]);
                } else {
                    self.status_only(&req, status::KEY_ENOENT);
                }
            }
            GET_CLUSTER_CONFIG => {
                let cfg = self.config_json();
                let dt = self.json_dt();
                self.respond(&req, 0, 0, dt, &[], &[], &cfg);
            }
            COLLECTIONS_SET_MANIFEST => return self.set_manifest(req),
            COLLECTIONS_GET_MANIFEST => {
                if let Some(b) = self.bucket.clone() {
                    let m = b.engine.manifest().to_json();
                    let dt = self.json_dt();
                    self.respond(&req, 0, 0, dt, &[], &[], m.as_bytes());
                } else {
                    self.status_only(&req, status::NO_BUCKET);
                }
            }
            COLLECTIONS_GET_ID | COLLECTIONS_GET_SCOPE_ID => self.collection_id(&req),
            SET_VBUCKET => self.set_vbucket(&req),
            GET_VBUCKET => self.get_vbucket(&req),
            DEL_VBUCKET => return self.del_vbucket(req),
            OBSERVE_SEQNO => self.observe_seqno(&req),
            FLUSH | FLUSHQ => self.status_only(&req, status::NOT_SUPPORTED),
            _ => self.status_only(&req, status::UNKNOWN_COMMAND),
        }
        Flow::Continue
    }

    fn need_bucket(&mut self, req: &Request) -> Option<Arc<Bucket>> {
        let b = self.bucket.clone();
        if b.is_none() {
            self.status_only(req, status::NO_BUCKET);
        }
        b
    }

    /// The bucket, vbucket and key of a key-value request, or the error
    /// already answered.
    fn target(&mut self, req: &Request) -> Option<(Arc<Bucket>, Vbid, DiskKey)> {
        let b = self.need_bucket(req)?;
        let Some(key) = self.disk_key(&req.key) else {
            self.status_only(req, status::EINVAL);
            return None;
        };
        let vbid = self.vbid(req, key.user_key());
        Some((b, vbid, key))
    }

    fn get(&mut self, req: &Request) {
        use opcode::*;
        let quiet = protocol::is_quiet(req.opcode);
        let touch = matches!(req.opcode, GAT | GATQ);
        let with_key = matches!(req.opcode, GETK | GETKQ);
        let extras_ok = if touch {
            req.extras.len() == 4
        } else {
            req.extras.is_empty()
        };
        if !extras_ok || !req.value.is_empty() || req.key.is_empty() {
            self.status_only(req, status::EINVAL);
            return;
        }
        if !req.framing.is_empty() && !matches!(self.durability(req), Ok(false)) {
            self.status_only(req, status::EINVAL);
            return;
        }
        let Some((b, vbid, key)) = self.target(req) else {
            return;
        };
        let c = &self.shared.counters;
        let r = if touch {
            c.cmd_touch.fetch_add(1, Ordering::Relaxed);
            b.engine
                .cookie(self.id)
                .get_and_touch(vbid, &key, be32(&req.extras))
        } else {
            c.cmd_get.fetch_add(1, Ordering::Relaxed);
            b.engine.get(vbid, &key)
        };
        match r {
            Ok(item) => {
                c.get_hits.fetch_add(1, Ordering::Relaxed);
                let (value, dt) = self.outgoing(&item.value, item.meta.datatype);
                let k = if with_key { &req.key[..] } else { &[] };
                self.respond(
                    req,
                    0,
                    item.meta.cas.0,
                    dt,
                    &item.meta.flags.to_be_bytes(),
                    k,
                    &value,
                );
            }
            Err(EngineError::KeyNotFound) => {
                c.get_misses.fetch_add(1, Ordering::Relaxed);
                if !quiet {
                    if with_key {
                        self.respond(req, status::KEY_ENOENT, 0, 0, &[], &req.key, &[]);
                    } else {
                        self.status_only(req, status::KEY_ENOENT);
                    }
                }
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    fn store(&mut self, req: Request) -> Flow {
        use opcode::*;
        let quiet = protocol::is_quiet(req.opcode);
        let mode = match req.opcode {
            SET | SETQ => StoreMode::Set,
            ADD | ADDQ => StoreMode::Add,
            _ => StoreMode::Replace,
        };
        if req.extras.len() != 8 || req.key.is_empty() || (mode == StoreMode::Add && req.cas != 0) {
            self.status_only(&req, status::EINVAL);
            return Flow::Continue;
        }
        let durable = match self.durability(&req) {
            Ok(d) => d,
            Err(s) => {
                self.status_only(&req, s);
                return Flow::Continue;
            }
        };
        let (value, datatype) = match self.incoming(&req) {
            Ok(v) => v,
            Err(s) => {
                self.status_only(&req, s);
                return Flow::Continue;
            }
        };
        let Some((b, vbid, key)) = self.target(&req) else {
            return Flow::Continue;
        };
        self.shared.counters.cmd_set.fetch_add(1, Ordering::Relaxed);
        let opts = WriteOptions {
            cas: Cas(req.cas),
            flags: be32(&req.extras[0..4]),
            expiry: be32(&req.extras[4..8]),
            datatype,
            durable,
        };
        match b
            .engine
            .cookie(self.id)
            .store(vbid, mode, &key, value, opts)
        {
            Ok(m) => {
                if !quiet {
                    let ex = self.mutation_extras(&m);
                    self.respond(&req, 0, m.cas.0, 0, &ex, &[], &[]);
                }
            }
            Err(EngineError::WouldBlock) => return Flow::Blocked(req),
            Err(e) => self.engine_error(&req, &e),
        }
        Flow::Continue
    }

    fn delete(&mut self, req: Request) -> Flow {
        let quiet = protocol::is_quiet(req.opcode);
        if !req.extras.is_empty() || !req.value.is_empty() || req.key.is_empty() {
            self.status_only(&req, status::EINVAL);
            return Flow::Continue;
        }
        let durable = match self.durability(&req) {
            Ok(d) => d,
            Err(s) => {
                self.status_only(&req, s);
                return Flow::Continue;
            }
        };
        let Some((b, vbid, key)) = self.target(&req) else {
            return Flow::Continue;
        };
        let opts = WriteOptions {
            cas: Cas(req.cas),
            durable,
            ..WriteOptions::default()
        };
        match b.engine.cookie(self.id).delete(vbid, &key, opts) {
            Ok(m) => {
                if !quiet {
                    let ex = self.mutation_extras(&m);
                    self.respond(&req, 0, m.cas.0, 0, &ex, &[], &[]);
                }
            }
            Err(EngineError::WouldBlock) => return Flow::Blocked(req),
            Err(e) => self.engine_error(&req, &e),
        }
        Flow::Continue
    }

    fn arith(&mut self, req: &Request) {
        use opcode::*;
        let quiet = protocol::is_quiet(req.opcode);
        if req.extras.len() != 20 || !req.value.is_empty() || req.key.is_empty() {
            self.status_only(req, status::EINVAL);
            return;
        }
        match self.durability(req) {
            Ok(false) => {}
            Ok(true) => {
                // A durable counter would need its value kept across the
                // parking; not offered.
                self.status_only(req, status::NOT_SUPPORTED);
                return;
            }
            Err(s) => {
                self.status_only(req, s);
                return;
            }
        }
        let Some((b, vbid, key)) = self.target(req) else {
            return;
        };
        let exptime = be32(&req.extras[16..20]);
        let opts = ArithOptions {
            delta: be64(&req.extras[0..8]),
            initial: (exptime != u32::MAX).then(|| be64(&req.extras[8..16])),
            expiry: exptime,
            cas: Cas(req.cas),
        };
        let op = if matches!(req.opcode, INCREMENT | INCREMENTQ) {
            ArithOp::Increment
        } else {
            ArithOp::Decrement
        };
        match b.engine.cookie(self.id).arithmetic(vbid, &key, op, opts) {
            Ok(c) => {
                if !quiet {
                    let ex = self.mutation_extras(&c.mutation);
                    self.respond(
                        req,
                        0,
                        c.mutation.cas.0,
                        0,
                        &ex,
                        &[],
                        &c.value.to_be_bytes(),
                    );
                }
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    fn concat(&mut self, req: Request) -> Flow {
        use opcode::*;
        let quiet = protocol::is_quiet(req.opcode);
        if !req.extras.is_empty() || req.key.is_empty() {
            self.status_only(&req, status::EINVAL);
            return Flow::Continue;
        }
        let durable = match self.durability(&req) {
            Ok(d) => d,
            Err(s) => {
                self.status_only(&req, s);
                return Flow::Continue;
            }
        };
        let (value, _) = match self.incoming(&req) {
            Ok(v) => v,
            Err(s) => {
                self.status_only(&req, s);
                return Flow::Continue;
            }
        };
        let Some((b, vbid, key)) = self.target(&req) else {
            return Flow::Continue;
        };
        let how = if matches!(req.opcode, APPEND | APPENDQ) {
            Concat::Append
        } else {
            Concat::Prepend
        };
        let opts = WriteOptions {
            cas: Cas(req.cas),
            durable,
            ..WriteOptions::default()
        };
        match b
            .engine
            .cookie(self.id)
            .concat(vbid, &key, how, value, opts)
        {
            Ok(m) => {
                if !quiet {
                    let ex = self.mutation_extras(&m);
                    self.respond(&req, 0, m.cas.0, 0, &ex, &[], &[]);
                }
            }
            Err(EngineError::WouldBlock) => return Flow::Blocked(req),
            Err(e) => self.engine_error(&req, &e),
        }
        Flow::Continue
    }

    fn touch(&mut self, req: &Request) {
        if req.extras.len() != 4 || !req.value.is_empty() || req.key.is_empty() {
            self.status_only(req, status::EINVAL);
            return;
        }
        let Some((b, vbid, key)) = self.target(req) else {
            return;
        };
        self.shared
            .counters
            .cmd_touch
            .fetch_add(1, Ordering::Relaxed);
        match b
            .engine
            .cookie(self.id)
            .get_and_touch(vbid, &key, be32(&req.extras))
        {
            Ok(item) => {
                self.respond(
                    req,
                    0,
                    item.meta.cas.0,
                    0,
                    &item.meta.flags.to_be_bytes(),
                    &[],
                    &[],
                );
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    fn hello(&mut self, req: &Request) {
        if !req.value.len().is_multiple_of(2) || !req.extras.is_empty() {
            self.status_only(req, status::EINVAL);
            return;
        }
        self.hello = true;
        let mut f = Features::default();
        let mut agreed: Vec<u16> = Vec::new();
        for pair in req.value.chunks_exact(2) {
            let code = u16::from_be_bytes([pair[0], pair[1]]);
            let on = match code {
                feature::XERROR => std::mem::replace(&mut f.xerror, true),
                feature::SELECT_BUCKET => std::mem::replace(&mut f.select_bucket, true),
                feature::COLLECTIONS => std::mem::replace(&mut f.collections, true),
                feature::JSON => std::mem::replace(&mut f.json, true),
                feature::SNAPPY => std::mem::replace(&mut f.snappy, true),
                feature::ALT_REQUEST => std::mem::replace(&mut f.alt_request, true),
                feature::SYNC_REPLICATION => std::mem::replace(&mut f.sync_replication, true),
                feature::MUTATION_SEQNO => std::mem::replace(&mut f.mutation_seqno, true),
                feature::TCP_NODELAY => std::mem::replace(&mut f.tcp_nodelay, true),
                _ => continue,
            };
            // `on` is the old value: a repeated feature is agreed once.
            if !on {
                agreed.push(code);
            }
        }
        self.features = f;
        let value: Vec<u8> = agreed.iter().flat_map(|c| c.to_be_bytes()).collect();
        let agent = String::from_utf8_lossy(&req.key);
        tracing::debug!(cookie = self.id, %agent, features = ?agreed, "hello");
        self.respond(req, 0, 0, 0, &[], &[], &value);
    }

    fn sasl(&mut self, req: &Request) {
        let fail = |c: &mut Conn, why: &str| {
            tracing::info!(cookie = c.id, reason = why, "authentication failed");
            c.shared
                .counters
                .auth_errors
                .fetch_add(1, Ordering::Relaxed);
            c.scram = None;
            c.status_only(req, status::AUTH_ERROR);
        };
        let Some(mech) = Mechanism::parse(&req.key) else {
            return fail(self, "unknown mechanism");
        };
        let Some(db) = self.shared.users.clone() else {
            // No users file: authentication is not required; PLAIN logins
            // are accepted as they are (memcached without SASL has none).
            if mech == Mechanism::Plain {
                self.respond(req, 0, 0, 0, &[], &[], b"Authenticated");
            } else {
                fail(self, "no users are configured");
            }
            return;
        };
        let done = |c: &mut Conn, user: String, value: &[u8]| {
            // The bucket named as the user is selected, as Couchbase does.
            if let Some(b) = c.shared.bucket(&user) {
                c.bucket = Some(b);
            }
            c.user = Some(user);
            c.respond(req, 0, 0, 0, &[], &[], value);
        };
        if req.opcode == opcode::SASL_AUTH {
            if mech == Mechanism::Plain {
                match db.plain(&req.value) {
                    Ok(u) => done(self, u, b"Authenticated"),
                    Err(e) => fail(self, &e.to_string()),
                }
                return;
            }
            let mut s = ScramServer::new(mech);
            match s.start(&db, &req.value) {
                Ok(first) => {
                    self.scram = Some(s);
                    self.respond(req, status::AUTH_CONTINUE, 0, 0, &[], &[], first.as_bytes());
                }
                Err(e) => fail(self, &e.to_string()),
            }
        } else {
            let Some(mut s) = self.scram.take() else {
                return fail(self, "step without auth");
            };
            match s.finish(&db, &req.value) {
                Ok((user, fin)) => done(self, user, fin.as_bytes()),
                Err(e) => fail(self, &e.to_string()),
            }
        }
    }

    fn set_manifest(&mut self, req: Request) -> Flow {
        let Some(b) = self.need_bucket(&req) else {
            return Flow::Continue;
        };
        match b.engine.cookie(self.id).set_collections(&req.value) {
            Ok(()) => {
                self.shared.bump_config();
                self.respond(&req, 0, 0, 0, &[], &[], &[]);
            }
            Err(EngineError::WouldBlock) => return Flow::Blocked(req),
            Err(e) => self.engine_error(&req, &e),
        }
        Flow::Continue
    }

    fn collection_id(&mut self, req: &Request) {
        let Some(b) = self.need_bucket(req) else {
            return;
        };
        let raw = if req.value.is_empty() {
            &req.key
        } else {
            &req.value
        };
        let path = String::from_utf8_lossy(raw).into_owned();
        let scope_only = req.opcode == opcode::COLLECTIONS_GET_SCOPE_ID;
        let (scope, coll) = match path.split_once('.') {
            Some((s, c)) => (s, c),
            None if scope_only => (path.as_str(), ""),
            None => {
                self.status_only(req, status::EINVAL);
                return;
            }
        };
        let scope = if scope.is_empty() { "_default" } else { scope };
        let coll = if coll.is_empty() { "_default" } else { coll };
        let m = b.engine.manifest();
        let Some(sc) = m.scope_by_name(scope) else {
            return self.engine_error(
                req,
                &EngineError::UnknownScope {
                    manifest_uid: m.uid,
                },
            );
        };
        let id = if scope_only {
            sc.id.0
        } else {
            match m.collection_by_path(&format!("{scope}.{coll}")) {
                Some(c) => c.id.0,
                None => {
                    return self.engine_error(
                        req,
                        &EngineError::UnknownCollection {
                            manifest_uid: m.uid,
                        },
                    );
                }
            }
        };
        let mut ex = Vec::with_capacity(12);
        ex.extend_from_slice(&m.uid.to_be_bytes());
        ex.extend_from_slice(&id.to_be_bytes());
        self.respond(req, 0, 0, 0, &ex, &[], &[]);
    }

    fn set_vbucket(&mut self, req: &Request) {
        let Some(b) = self.need_bucket(req) else {
            return;
        };
        let state = match req.extras.first() {
            Some(1) => VbState::Active,
            Some(2) => VbState::Replica,
            Some(3) => VbState::Pending,
            Some(4) => VbState::Dead,
            _ => {
                self.status_only(req, status::EINVAL);
                return;
            }
        };
        let vbid = Vbid(req.vbucket);
        let r = match b.engine.vbucket(vbid) {
            Ok(_) => b.engine.set_vbucket_state(vbid, state),
            Err(_) => b.engine.create_vbucket(vbid, state),
        };
        match r {
            Ok(()) => {
                self.shared.bump_config();
                self.respond(req, 0, 0, 0, &[], &[], &[]);
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    fn get_vbucket(&mut self, req: &Request) {
        let Some(b) = self.need_bucket(req) else {
            return;
        };
        match b.engine.vbucket(Vbid(req.vbucket)) {
            Ok(vb) => {
                let s: u32 = match vb.state() {
                    VbState::Active => 1,
                    VbState::Replica => 2,
                    VbState::Pending => 3,
                    VbState::Dead => 4,
                };
                self.respond(req, 0, 0, 0, &[], &[], &s.to_be_bytes());
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    fn del_vbucket(&mut self, req: Request) -> Flow {
        let Some(b) = self.need_bucket(&req) else {
            return Flow::Continue;
        };
        let vbid = Vbid(req.vbucket);
        let sync = &req.value[..] == b"async=0";
        let r = if sync {
            b.engine.cookie(self.id).delete_vbucket(vbid)
        } else {
            b.engine.delete_vbucket(vbid)
        };
        match r {
            Ok(()) => {
                self.shared.bump_config();
                self.respond(&req, 0, 0, 0, &[], &[], &[]);
            }
            Err(EngineError::WouldBlock) => {
                self.shared.bump_config();
                return Flow::Blocked(req);
            }
            Err(e) => self.engine_error(&req, &e),
        }
        Flow::Continue
    }

    fn observe_seqno(&mut self, req: &Request) {
        let Some(b) = self.need_bucket(req) else {
            return;
        };
        if req.value.len() != 8 {
            self.status_only(req, status::EINVAL);
            return;
        }
        let uuid = be64(&req.value);
        let vbid = Vbid(req.vbucket);
        match b.engine.vbucket_stats(vbid) {
            Ok(s) => {
                let mut v = Vec::with_capacity(43);
                let failover = s.vbucket_uuid != uuid;
                v.push(u8::from(failover));
                v.extend_from_slice(&vbid.0.to_be_bytes());
                v.extend_from_slice(&s.vbucket_uuid.to_be_bytes());
                v.extend_from_slice(&s.persisted_seqno.0.to_be_bytes());
                v.extend_from_slice(&s.high_seqno.0.to_be_bytes());
                if failover {
                    v.extend_from_slice(&uuid.to_be_bytes());
                    v.extend_from_slice(&0u64.to_be_bytes());
                }
                self.respond(req, 0, 0, 0, &[], &[], &v);
            }
            Err(e) => self.engine_error(req, &e),
        }
    }

    /// The stats of a group as name/value pairs.
    fn stats(&self, group: &str) -> Option<Vec<(String, String)>> {
        let c = &self.shared.counters;
        let mut out: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| out.push((k.to_owned(), v));
        let group = group.trim();
        let (group, arg) = group.split_once(' ').unwrap_or((group, ""));
        match group {
            "" => {
                push("pid", std::process::id().to_string());
                push(
                    "uptime",
                    self.shared.started.elapsed().as_secs().to_string(),
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                push("time", now.to_string());
                push(
                    "version",
                    format!("7.6.0-kvserver-{}", env!("CARGO_PKG_VERSION")),
                );
                let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
                push(
                    "curr_connections",
                    c.curr_connections.load(Ordering::Relaxed).to_string(),
                );
                push("total_connections", load(&c.total_connections));
                push("rejected_conns", load(&c.rejected_connections));
                push("protocol_errors", load(&c.protocol_errors));
                push("idle_closed", load(&c.idle_closed));
                push("cmd_get", load(&c.cmd_get));
                push("get_hits", load(&c.get_hits));
                push("get_misses", load(&c.get_misses));
                push("cmd_set", load(&c.cmd_set));
                push("cmd_touch", load(&c.cmd_touch));
                push("auth_errors", load(&c.auth_errors));
                push("parked_requests", load(&c.parked));
                push("parked_released", load(&c.parked_released));
                if let Some(b) = &self.bucket {
                    let s = b.engine.stats();
                    push("curr_items", s.items.to_string());
                    push("ep_vbuckets", s.vbuckets.to_string());
                    push("ep_dirty_items", s.dirty_items.to_string());
                    push("ep_mem_used", s.memory_used.to_string());
                    push("ep_mem_quota", s.memory_quota.to_string());
                    push("ep_flush_batches", s.flush_batches.to_string());
                    push("ep_flushed_items", s.flushed_items.to_string());
                    push("ep_flush_failures", s.flush_failures.to_string());
                    push("ep_disk_bytes", s.disk_bytes.to_string());
                    push("ep_pending_deletions", s.pending_deletions.to_string());
                    push("ep_parked_cookies", s.cookies.to_string());
                    push(
                        "ep_collections_update_in_flight",
                        s.collections_update_in_flight.to_string(),
                    );
                    push("ep_backend", b.engine.backend_name().to_owned());
                }
            }
            "vbucket" | "vbucket-details" => {
                let b = self.bucket.as_ref()?;
                let only: Option<u16> = arg.parse().ok();
                for (vbid, state) in b.engine.vbuckets() {
                    if only.is_some_and(|o| o != vbid.0) {
                        continue;
                    }
                    let st = match state {
                        VbState::Active => "active",
                        VbState::Replica => "replica",
                        VbState::Pending => "pending",
                        VbState::Dead => "dead",
                    };
                    push(&format!("vb_{}", vbid.0), st.to_owned());
                    if group == "vbucket-details"
                        && let Ok(s) = b.engine.vbucket_stats(vbid)
                    {
                        let p = format!("vb_{}", vbid.0);
                        push(&format!("{p}:high_seqno"), s.high_seqno.0.to_string());
                        push(
                            &format!("{p}:persisted_seqno"),
                            s.persisted_seqno.0.to_string(),
                        );
                        push(&format!("{p}:num_items"), s.items.to_string());
                        push(&format!("{p}:uuid"), s.vbucket_uuid.to_string());
                    }
                }
            }
            "collections" => {
                let b = self.bucket.as_ref()?;
                let m = b.engine.manifest();
                push("manifest_uid", format!("{:x}", m.uid));
                let mut items: std::collections::BTreeMap<u32, u64> = Default::default();
                for (vbid, _) in b.engine.vbuckets() {
                    if let Ok(cs) = b.engine.collection_stats(vbid) {
                        for ci in cs {
                            *items.entry(ci.cid.0).or_default() += ci.stats.items;
                        }
                    }
                }
                for (cid, coll) in &m.collections {
                    let scope = m.scopes.get(&coll.scope).map_or("?", |s| s.name.as_str());
                    let p = format!("0x{:x}:0x{:x}", coll.scope.0, cid.0);
                    push(&format!("{p}:name"), coll.name.clone());
                    push(&format!("{p}:scope_name"), scope.to_owned());
                    push(
                        &format!("{p}:items"),
                        items.get(&cid.0).copied().unwrap_or(0).to_string(),
                    );
                }
            }
            "key" => {
                // `key <key> <vbid>`: one document's metadata (default
                // collection), as Couchbase's key stats.
                let b = self.bucket.as_ref()?;
                let (k, vb) = arg.rsplit_once(' ')?;
                let vbid = Vbid(vb.parse().ok()?);
                let key = DiskKey::new(CollectionId::DEFAULT, k.as_bytes()).ok()?;
                let item = b.engine.get(vbid, &key).ok()?;
                push("key_exptime", item.meta.expiry.to_string());
                push("key_flags", item.meta.flags.to_string());
                push("key_cas", item.meta.cas.0.to_string());
                push("key_vb_state", "active".to_owned());
            }
            "settings" => {
                let l = &self.shared.cfg.limits;
                push("maxconns", l.max_connections.to_string());
                push("item_size_max", l.max_value_size.to_string());
                push("max_frame_size", l.max_frame_size.to_string());
                push("idle_timeout", l.idle_timeout.as_secs().to_string());
                push("num_vbuckets", self.shared.cfg.vbuckets.to_string());
                push("auth_enabled", self.shared.users.is_some().to_string());
            }
            _ => return None,
        }
        Some(out)
    }

    fn stat(&mut self, req: &Request) {
        let group = String::from_utf8_lossy(&req.key).into_owned();
        match self.stats(&group) {
            Some(pairs) => {
                for (k, v) in pairs {
                    self.respond(req, 0, 0, 0, &[], k.as_bytes(), v.as_bytes());
                }
                self.respond(req, 0, 0, 0, &[], &[], &[]);
            }
            None => self.status_only(req, status::KEY_ENOENT),
        }
    }

    // ---- text protocol ----

    fn line(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    /// Serves one text command, or `None` when more input is needed.
    fn text(&mut self, inbuf: &mut BytesMut) -> Option<Flow> {
        if self.swallow > 0 {
            let n = self.swallow.min(inbuf.len());
            let _ = inbuf.split_to(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return None;
            }
        }
        if inbuf.is_empty() {
            return None;
        }
        if !self.authorized() {
            self.line("CLIENT_ERROR unauthenticated");
            return Some(Flow::Close);
        }
        let max = self.shared.cfg.limits.max_value_size;
        match text::parse(inbuf, max) {
            Parsed::Incomplete => None,
            Parsed::Reply(r) => {
                self.line(r);
                Some(Flow::Continue)
            }
            Parsed::LineTooLong => {
                self.shared
                    .counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                self.line("CLIENT_ERROR line too long");
                Some(Flow::Close)
            }
            Parsed::TooLarge { swallow, noreply } => {
                self.swallow = swallow;
                if !noreply {
                    self.line("SERVER_ERROR object too large for cache");
                }
                Some(Flow::Continue)
            }
            Parsed::Command(cmd) => Some(self.text_command(cmd)),
        }
    }

    fn text_target(&self, key: &[u8]) -> Option<(Arc<Bucket>, Vbid, DiskKey)> {
        let b = self.bucket.clone()?;
        let k = DiskKey::new(CollectionId::DEFAULT, key).ok()?;
        let vbid = Vbid(cluster::vbucket_of(key, b.vbuckets));
        Some((b, vbid, k))
    }

    fn text_error(&mut self, e: &EngineError) {
        match e {
            EngineError::KeyNotFound => self.line("NOT_FOUND"),
            EngineError::KeyExists => self.line("EXISTS"),
            EngineError::NotStored => self.line("NOT_STORED"),
            EngineError::DeltaBadValue => {
                self.line("CLIENT_ERROR cannot increment or decrement non-numeric value");
            }
            EngineError::TooBig { .. } => self.line("SERVER_ERROR object too large for cache"),
            EngineError::NotMyVbucket(_) => self.line("SERVER_ERROR not my vbucket"),
            EngineError::TemporaryFailure(_) | EngineError::ShuttingDown => {
                self.line("SERVER_ERROR temporary failure");
            }
            e => self.line(&format!("SERVER_ERROR {e}")),
        }
    }

    fn text_command(&mut self, cmd: Command) -> Flow {
        let c = &self.shared.counters;
        match cmd {
            Command::Get { keys, with_cas } => {
                self.text_get(&keys, with_cas, None);
                self.line("END");
            }
            Command::Gat {
                exptime,
                keys,
                with_cas,
            } => {
                self.text_get(&keys, with_cas, Some(text_exptime(exptime)));
                self.line("END");
            }
            Command::Store {
                kind,
                key,
                flags,
                exptime,
                cas,
                data,
                noreply,
            } => {
                c.cmd_set.fetch_add(1, Ordering::Relaxed);
                let Some((b, vbid, k)) = self.text_target(&key) else {
                    self.line("SERVER_ERROR no bucket");
                    return Flow::Continue;
                };
                let opts = WriteOptions {
                    cas: Cas(cas),
                    flags,
                    expiry: text_exptime(exptime),
                    ..WriteOptions::default()
                };
                let r = match kind {
                    StoreKind::Set => b.engine.set(vbid, &k, data, opts),
                    StoreKind::Add => b.engine.add(vbid, &k, data, opts),
                    StoreKind::Replace => b.engine.replace(vbid, &k, data, opts),
                    StoreKind::Cas => b.engine.store(vbid, StoreMode::Set, &k, data, opts),
                    StoreKind::Append => b.engine.append(vbid, &k, data, opts.with_cas(Cas(0))),
                    StoreKind::Prepend => b.engine.prepend(vbid, &k, data, opts.with_cas(Cas(0))),
                };
                let reply = match (&r, kind) {
                    (Ok(_), _) => "STORED",
                    (Err(EngineError::KeyExists), StoreKind::Add) => "NOT_STORED",
                    (Err(EngineError::KeyNotFound), StoreKind::Replace) => "NOT_STORED",
                    (Err(EngineError::KeyNotFound), StoreKind::Cas) => "NOT_FOUND",
                    (Err(EngineError::KeyExists), StoreKind::Cas) => "EXISTS",
                    (Err(e), _) => {
                        if !noreply {
                            let e = e.clone();
                            self.text_error(&e);
                        }
                        return Flow::Continue;
                    }
                };
                if !noreply {
                    self.line(reply);
                }
            }
            Command::Delete { key, noreply } => {
                let Some((b, vbid, k)) = self.text_target(&key) else {
                    self.line("SERVER_ERROR no bucket");
                    return Flow::Continue;
                };
                match b.engine.delete(vbid, &k, WriteOptions::default()) {
                    Ok(_) if !noreply => self.line("DELETED"),
                    Err(e) if !noreply => self.text_error(&e),
                    _ => {}
                }
            }
            Command::Arith {
                incr,
                key,
                delta,
                noreply,
            } => {
                let Some((b, vbid, k)) = self.text_target(&key) else {
                    self.line("SERVER_ERROR no bucket");
                    return Flow::Continue;
                };
                let op = if incr {
                    ArithOp::Increment
                } else {
                    ArithOp::Decrement
                };
                let opts = ArithOptions {
                    delta,
                    ..ArithOptions::default()
                };
                match b.engine.arithmetic(vbid, &k, op, opts) {
                    Ok(c) if !noreply => self.line(&c.value.to_string()),
                    Err(e) if !noreply => self.text_error(&e),
                    _ => {}
                }
            }
            Command::Touch {
                key,
                exptime,
                noreply,
            } => {
                c.cmd_touch.fetch_add(1, Ordering::Relaxed);
                let Some((b, vbid, k)) = self.text_target(&key) else {
                    self.line("SERVER_ERROR no bucket");
                    return Flow::Continue;
                };
                match b.engine.touch(vbid, &k, text_exptime(exptime)) {
                    Ok(_) if !noreply => self.line("TOUCHED"),
                    Err(e) if !noreply => self.text_error(&e),
                    _ => {}
                }
            }
            Command::Stats(group) => match self.stats(group.as_deref().unwrap_or("")) {
                Some(pairs) => {
                    for (k, v) in pairs {
                        self.line(&format!("STAT {k} {v}"));
                    }
                    self.line("END");
                }
                None => self.line("ERROR"),
            },
            Command::Version => {
                self.line(&format!(
                    "VERSION 7.6.0-kvserver-{}",
                    env!("CARGO_PKG_VERSION")
                ));
            }
            Command::Verbosity { noreply } => {
                if !noreply {
                    self.line("OK");
                }
            }
            Command::Quit => return Flow::Close,
        }
        Flow::Continue
    }

    fn text_get(&mut self, keys: &[Bytes], with_cas: bool, touch: Option<u32>) {
        for key in keys {
            let Some((b, vbid, k)) = self.text_target(key) else {
                continue;
            };
            let c = &self.shared.counters;
            let r = match touch {
                Some(exp) => {
                    c.cmd_touch.fetch_add(1, Ordering::Relaxed);
                    b.engine.get_and_touch(vbid, &k, exp)
                }
                None => {
                    c.cmd_get.fetch_add(1, Ordering::Relaxed);
                    b.engine.get(vbid, &k)
                }
            };
            match r {
                Ok(item) => {
                    c.get_hits.fetch_add(1, Ordering::Relaxed);
                    let rest = if with_cas {
                        format!(
                            " {} {} {}",
                            item.meta.flags,
                            item.value.len(),
                            item.meta.cas.0
                        )
                    } else {
                        format!(" {} {}", item.meta.flags, item.value.len())
                    };
                    self.out.extend_from_slice(b"VALUE ");
                    self.out.extend_from_slice(key);
                    self.line(&rest);
                    self.out.extend_from_slice(&item.value);
                    self.out.extend_from_slice(b"\r\n");
                }
                Err(EngineError::KeyNotFound) => {
                    c.get_misses.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "text get");
                }
            }
        }
    }
}
