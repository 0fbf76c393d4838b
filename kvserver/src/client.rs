//! A small blocking client of the binary protocol, for tests, tools and
//! health checks. It speaks classic and flexible framing, HELLO and SCRAM.
//!
//! ```no_run
//! use kvserver::client::Client;
//! use kvserver::protocol::{opcode, status};
//! # fn main() -> std::io::Result<()> {
//! let mut c = Client::connect("127.0.0.1:11210")?;
//! let r = c.request(opcode::SET, 0, 0, &[0; 8], b"k", b"v")?;
//! assert_eq!(r.status, status::SUCCESS);
//! # Ok(())
//! # }
//! ```

use crate::protocol::{self, MAGIC_ALT_REQ, Response, opcode, status};
use crate::sasl::{Mechanism, scram_client_final};
use bytes::{BufMut, BytesMut};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};

/// A connection to a server.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    opaque: u32,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl Client {
    /// Connects.
    pub fn connect(addr: impl ToSocketAddrs) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: BytesMut::with_capacity(8192),
            opaque: 0,
        })
    }

    /// The socket (to set timeouts, or to shut it down).
    #[must_use]
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads one response.
    pub fn read_response(&mut self) -> io::Result<Response> {
        loop {
            if let Some(r) =
                protocol::decode_response(&mut self.buf).map_err(|e| invalid(e.to_string()))?
            {
                return Ok(r);
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a classic request and reads its response.
    pub fn request(
        &mut self,
        op: u8,
        vbucket: u16,
        cas: u64,
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> io::Result<Response> {
        self.opaque = self.opaque.wrapping_add(1);
        let mut b = BytesMut::new();
        protocol::encode_request(&mut b, op, vbucket, self.opaque, cas, extras, key, value);
        self.stream.write_all(&b)?;
        self.read_response()
    }

    /// Sends a request with flexible framing extras (alt magic) and reads
    /// its response.
    #[allow(clippy::too_many_arguments)]
    pub fn request_alt(
        &mut self,
        op: u8,
        vbucket: u16,
        cas: u64,
        framing: &[u8],
        extras: &[u8],
        key: &[u8],
        value: &[u8],
    ) -> io::Result<Response> {
        self.opaque = self.opaque.wrapping_add(1);
        let mut b = BytesMut::new();
        let body = framing.len() + extras.len() + key.len() + value.len();
        b.put_u8(MAGIC_ALT_REQ);
        b.put_u8(op);
        b.put_u8(u8::try_from(framing.len()).map_err(|_| invalid("framing too long"))?);
        b.put_u8(u8::try_from(key.len()).map_err(|_| invalid("key too long"))?);
        b.put_u8(u8::try_from(extras.len()).map_err(|_| invalid("extras too long"))?);
        b.put_u8(0);
        b.put_u16(vbucket);
        b.put_u32(u32::try_from(body).map_err(|_| invalid("body too long"))?);
        b.put_u32(self.opaque);
        b.put_u64(cas);
        b.put_slice(framing);
        b.put_slice(extras);
        b.put_slice(key);
        b.put_slice(value);
        self.stream.write_all(&b)?;
        self.read_response()
    }

    /// HELLO with `features`; returns those the server agreed to.
    pub fn hello(&mut self, agent: &str, features: &[u16]) -> io::Result<Vec<u16>> {
        let v: Vec<u8> = features.iter().flat_map(|f| f.to_be_bytes()).collect();
        let r = self.request(opcode::HELLO, 0, 0, &[], agent.as_bytes(), &v)?;
        if r.status != status::SUCCESS {
            return Err(invalid(format!("HELLO failed with {:#x}", r.status)));
        }
        Ok(r.value
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect())
    }

    /// Authenticates with SCRAM; returns the final status.
    pub fn auth_scram(&mut self, mech: Mechanism, user: &str, password: &str) -> io::Result<u16> {
        let name: &[u8] = match mech {
            Mechanism::ScramSha512 => b"SCRAM-SHA512",
            Mechanism::ScramSha256 => b"SCRAM-SHA256",
            Mechanism::ScramSha1 => b"SCRAM-SHA1",
            Mechanism::Plain => {
                let msg = format!("\0{user}\0{password}");
                return Ok(self
                    .request(opcode::SASL_AUTH, 0, 0, &[], b"PLAIN", msg.as_bytes())?
                    .status);
            }
        };
        let nonce: [u8; 12] = rand::random();
        let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
        let first = format!("n,,n={user},r={nonce}");
        let r = self.request(opcode::SASL_AUTH, 0, 0, &[], name, first.as_bytes())?;
        if r.status != status::AUTH_CONTINUE {
            return Ok(r.status);
        }
        let sf = String::from_utf8_lossy(&r.value).into_owned();
        let (fin, expect) =
            scram_client_final(mech, password, &first, &sf).map_err(|e| invalid(e.to_string()))?;
        let r = self.request(opcode::SASL_STEP, 0, 0, &[], name, fin.as_bytes())?;
        if r.status == status::SUCCESS && r.value[..] != *expect.as_bytes() {
            return Err(invalid("the server's signature is wrong"));
        }
        Ok(r.status)
    }
}
