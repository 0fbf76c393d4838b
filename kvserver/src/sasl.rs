//! SASL: SCRAM-SHA512, SCRAM-SHA256 and SCRAM-SHA1 (RFC 5802) and PLAIN,
//! against a users file that holds salted SCRAM secrets, never passwords.
//!
//! The users file is JSON:
//!
//! ```json
//! {"users": [{"name": "app", "scram": {"SHA512": {"salt": "...", "iterations": 15000,
//!   "stored_key": "...", "server_key": "..."}, "SHA256": {...}, "SHA1": {...}}}]}
//! ```
//!
//! `kvserver user add` writes entries. PLAIN checks the password by
//! deriving the SCRAM-SHA512 stored key from it.
//!
//! ```
//! use kvserver::sasl::{Mechanism, ScramServer, UserEntry, UserDb, scram_client_final};
//! let db = UserDb::from_entries(vec![UserEntry::new("app", "secret", 4096)]);
//! let mut server = ScramServer::new(Mechanism::ScramSha256);
//! let first = server.start(&db, b"n,,n=app,r=abc").unwrap();
//! let (final_msg, _) = scram_client_final(Mechanism::ScramSha256, "secret", "n,,n=app,r=abc", &first).unwrap();
//! let (user, server_final) = server.finish(&db, final_msg.as_bytes()).unwrap();
//! assert_eq!(user, "app");
//! assert!(server_final.starts_with("v="));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The mechanisms offered, strongest first.
pub const MECHANISMS: &str = "SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN";

/// A SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// SCRAM with SHA-512.
    ScramSha512,
    /// SCRAM with SHA-256.
    ScramSha256,
    /// SCRAM with SHA-1.
    ScramSha1,
    /// Clear-text user and password.
    Plain,
}

impl Mechanism {
    /// Parses a mechanism name as clients send it.
    #[must_use]
    pub fn parse(name: &[u8]) -> Option<Self> {
        match name {
            b"SCRAM-SHA512" => Some(Mechanism::ScramSha512),
            b"SCRAM-SHA256" => Some(Mechanism::ScramSha256),
            b"SCRAM-SHA1" => Some(Mechanism::ScramSha1),
            b"PLAIN" => Some(Mechanism::Plain),
            _ => None,
        }
    }

    fn key(self) -> &'static str {
        match self {
            Mechanism::ScramSha512 | Mechanism::Plain => "SHA512",
            Mechanism::ScramSha256 => "SHA256",
            Mechanism::ScramSha1 => "SHA1",
        }
    }
}

/// Why authentication failed. Clients are told only `AUTH_ERROR`; the
/// reason goes to the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A message that does not parse.
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// No such user, or no secret for this mechanism.
    #[error("unknown user or mechanism")]
    UnknownUser,
    /// The proof or password is wrong.
    #[error("wrong password")]
    BadProof,
    /// A step out of order.
    #[error("SASL step without a started authentication")]
    NoExchange,
}

/// Why a users file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersFileError {
    /// It could not be read or written.
    #[error("users file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("users file {path}: {msg}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// One hash's SCRAM secret of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramSecret {
    /// Base64 salt.
    pub salt: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Base64 `H(HMAC(SaltedPassword, "Client Key"))`.
    pub stored_key: String,
    /// Base64 `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: String,
}

/// One user of the users file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The user name.
    pub name: String,
    /// Secrets by hash: `SHA512`, `SHA256`, `SHA1`.
    pub scram: HashMap<String, ScramSecret>,
}

impl UserEntry {
    /// Derives the secrets of every hash from `password`, with fresh salts.
    #[must_use]
    pub fn new(name: &str, password: &str, iterations: u32) -> Self {
        let mut scram = HashMap::new();
        for m in [
            Mechanism::ScramSha512,
            Mechanism::ScramSha256,
            Mechanism::ScramSha1,
        ] {
            let salt: [u8; 16] = rand::random();
            let salted = salted_password(m, password.as_bytes(), &salt, iterations);
            let client_key = hmac(m, &salted, b"Client Key");
            scram.insert(
                m.key().to_owned(),
                ScramSecret {
                    salt: B64.encode(salt),
                    iterations,
                    stored_key: B64.encode(hash(m, &client_key)),
                    server_key: B64.encode(hmac(m, &salted, b"Server Key")),
                },
            );
        }
        UserEntry {
            name: name.to_owned(),
            scram,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct UsersFile {
    users: Vec<UserEntry>,
}

/// The users the server knows.
#[derive(Debug, Default, Clone)]
pub struct UserDb {
    users: HashMap<String, UserEntry>,
}

impl UserDb {
    /// Loads a users file.
    pub fn load(path: &Path) -> Result<Self, UsersFileError> {
        let p = path.display().to_string();
        let raw = std::fs::read(path).map_err(|source| UsersFileError::Io {
            path: p.clone(),
            source,
        })?;
        let f: UsersFile = serde_json::from_slice(&raw).map_err(|e| UsersFileError::Invalid {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        for u in &f.users {
            for (k, s) in &u.scram {
                let ok = ["SHA512", "SHA256", "SHA1"].contains(&k.as_str())
                    && s.iterations > 0
                    && B64.decode(&s.salt).is_ok()
                    && B64.decode(&s.stored_key).is_ok()
                    && B64.decode(&s.server_key).is_ok();
                if !ok {
                    return Err(UsersFileError::Invalid {
                        path: p,
                        msg: format!("user {:?}: bad {k} secret", u.name),
                    });
                }
            }
        }
        Ok(Self::from_entries(f.users))
    }

    /// A database of these users.
    #[must_use]
    pub fn from_entries(users: Vec<UserEntry>) -> Self {
        UserDb {
            users: users.into_iter().map(|u| (u.name.clone(), u)).collect(),
        }
    }

    /// Adds or replaces `entry` in the users file at `path` (created when
    /// missing), writing it atomically.
    pub fn add_to_file(path: &Path, entry: UserEntry) -> Result<(), UsersFileError> {
        let p = path.display().to_string();
        let mut f = if path.exists() {
            let raw = std::fs::read(path).map_err(|source| UsersFileError::Io {
                path: p.clone(),
                source,
            })?;
            serde_json::from_slice::<UsersFile>(&raw).map_err(|e| UsersFileError::Invalid {
                path: p.clone(),
                msg: e.to_string(),
            })?
        } else {
            UsersFile::default()
        };
        f.users.retain(|u| u.name != entry.name);
        f.users.push(entry);
        let json = serde_json::to_vec_pretty(&f).map_err(|e| UsersFileError::Invalid {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| UsersFileError::Io { path: p, source })
    }

    fn secret(&self, user: &str, m: Mechanism) -> Option<Secret> {
        let s = self.users.get(user)?.scram.get(m.key())?;
        Some(Secret {
            salt: B64.decode(&s.salt).ok()?,
            iterations: s.iterations,
            stored_key: B64.decode(&s.stored_key).ok()?,
            server_key: B64.decode(&s.server_key).ok()?,
        })
    }

    /// Checks a PLAIN message (`authzid NUL user NUL password`); returns
    /// the user.
    pub fn plain(&self, msg: &[u8]) -> Result<String, AuthError> {
        let mut parts = msg.split(|&b| b == 0);
        let (Some(_authz), Some(user), Some(pass), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "PLAIN wants authzid\\0user\\0password",
            ));
        };
        let user = std::str::from_utf8(user).map_err(|_| AuthError::Malformed("user"))?;
        let m = Mechanism::ScramSha512;
        let s = self.secret(user, m).ok_or(AuthError::UnknownUser)?;
        let salted = salted_password(m, pass, &s.salt, s.iterations);
        let stored = hash(m, &hmac(m, &salted, b"Client Key"));
        if ct_eq(&stored, &s.stored_key) {
            Ok(user.to_owned())
        } else {
            Err(AuthError::BadProof)
        }
    }

    /// True when no user is defined.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

struct Secret {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

fn hmac(m: Mechanism, key: &[u8], data: &[u8]) -> Vec<u8> {
    fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes a key of any length, so this cannot fail.
        match <M as hmac::digest::KeyInit>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
    match m {
        Mechanism::ScramSha512 | Mechanism::Plain => run::<Hmac<sha2::Sha512>>(key, data),
        Mechanism::ScramSha256 => run::<Hmac<sha2::Sha256>>(key, data),
        Mechanism::ScramSha1 => run::<Hmac<sha1::Sha1>>(key, data),
    }
}

fn hash(m: Mechanism, data: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    match m {
        Mechanism::ScramSha512 | Mechanism::Plain => sha2::Sha512::digest(data).to_vec(),
        Mechanism::ScramSha256 => sha2::Sha256::digest(data).to_vec(),
        Mechanism::ScramSha1 => sha1::Sha1::digest(data).to_vec(),
    }
}

fn salted_password(m: Mechanism, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; hash(m, b"").len()];
    match m {
        Mechanism::ScramSha512 | Mechanism::Plain => {
            pbkdf2::pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, &mut out);
        }
        Mechanism::ScramSha256 => {
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, &mut out);
        }
        Mechanism::ScramSha1 => {
            pbkdf2::pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, &mut out);
        }
    }
    out
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn attr(msg: &str, name: char) -> Option<&str> {
    msg.split(',')
        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
}

/// The server side of one SCRAM exchange.
#[derive(Debug)]
pub struct ScramServer {
    mech: Mechanism,
    state: Option<Exchange>,
}

#[derive(Debug)]
struct Exchange {
    user: String,
    gs2: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// A new exchange for `mech` (a SCRAM mechanism).
    #[must_use]
    pub fn new(mech: Mechanism) -> Self {
        ScramServer { mech, state: None }
    }

    /// Takes the client-first message; returns the server-first message.
    pub fn start(&mut self, db: &UserDb, client_first: &[u8]) -> Result<String, AuthError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("utf-8"))?;
        // gs2 header: "n,," or "y,," (no channel binding), then the bare part.
        let mut it = msg.splitn(3, ',');
        let (Some(cb), Some(authz), Some(bare)) = (it.next(), it.next(), it.next()) else {
            return Err(AuthError::Malformed("client-first"));
        };
        if cb != "n" && cb != "y" {
            return Err(AuthError::Malformed("channel binding is not supported"));
        }
        let user = attr(bare, 'n')
            .ok_or(AuthError::Malformed("no user"))?
            .replace("=2C", ",")
            .replace("=3D", "=");
        let cnonce = attr(bare, 'r').ok_or(AuthError::Malformed("no nonce"))?;
        let secret = db.secret(&user, self.mech).ok_or(AuthError::UnknownUser)?;
        let snonce: [u8; 18] = rand::random();
        let nonce = format!("{cnonce}{}", B64.encode(snonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&secret.salt),
            secret.iterations
        );
        self.state = Some(Exchange {
            user,
            gs2: format!("{cb},{authz},"),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        });
        Ok(server_first)
    }

    /// Takes the client-final message; returns the user and the
    /// server-final message.
    pub fn finish(
        &mut self,
        db: &UserDb,
        client_final: &[u8],
    ) -> Result<(String, String), AuthError> {
        let ex = self.state.take().ok_or(AuthError::NoExchange)?;
        let msg = std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("utf-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(AuthError::Malformed("no proof"))?;
        let channel = attr(without_proof, 'c').ok_or(AuthError::Malformed("no channel"))?;
        if B64.decode(channel).ok().as_deref() != Some(ex.gs2.as_bytes()) {
            return Err(AuthError::Malformed("channel binding mismatch"));
        }
        if attr(without_proof, 'r') != Some(ex.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce mismatch"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| AuthError::Malformed("proof"))?;
        let secret = db
            .secret(&ex.user, self.mech)
            .ok_or(AuthError::UnknownUser)?;
        let auth_message = format!(
            "{},{},{}",
            ex.client_first_bare, ex.server_first, without_proof
        );
        let signature = hmac(self.mech, &secret.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(AuthError::BadProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        if !ct_eq(&hash(self.mech, &client_key), &secret.stored_key) {
            return Err(AuthError::BadProof);
        }
        let server_sig = hmac(self.mech, &secret.server_key, auth_message.as_bytes());
        Ok((ex.user, format!("v={}", B64.encode(server_sig))))
    }
}

/// The client side of a SCRAM exchange's last step (for tests and tools):
/// from the client-first message sent and the server-first received,
/// the client-final message and the server signature to expect.
pub fn scram_client_final(
    mech: Mechanism,
    password: &str,
    client_first: &str,
    server_first: &str,
) -> Result<(String, String), AuthError> {
    let bare = client_first
        .splitn(3, ',')
        .nth(2)
        .ok_or(AuthError::Malformed("client-first"))?;
    let gs2 = &client_first[..client_first.len() - bare.len()];
    let nonce = attr(server_first, 'r').ok_or(AuthError::Malformed("nonce"))?;
    let salt = B64
        .decode(attr(server_first, 's').ok_or(AuthError::Malformed("salt"))?)
        .map_err(|_| AuthError::Malformed("salt"))?;
    let iterations: u32 = attr(server_first, 'i')
        .and_then(|i| i.parse().ok())
        .ok_or(AuthError::Malformed("iterations"))?;
    let salted = salted_password(mech, password.as_bytes(), &salt, iterations);
    let client_key = hmac(mech, &salted, b"Client Key");
    let stored = hash(mech, &client_key);
    let without_proof = format!("c={},r={nonce}", B64.encode(gs2));
    let auth_message = format!("{bare},{server_first},{without_proof}");
    let sig = hmac(mech, &stored, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
    let server_key = hmac(mech, &salted, b"Server Key");
    let server_sig = hmac(mech, &server_key, auth_message.as_bytes());
    Ok((
        format!("{without_proof},p={}", B64.encode(proof)),
        format!("v={}", B64.encode(server_sig)),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 test vector (user "user", password
    /// "pencil"), checked through our server with its salt and nonce.
    #[test]
    fn rfc7677_vector() {
        let m = Mechanism::ScramSha256;
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = salted_password(m, b"pencil", &salt, 4096);
        let client_key = hmac(m, &salted, b"Client Key");
        let cf = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
        let sf = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (fin, v) = scram_client_final(m, "pencil", cf, sf).unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(v, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        let _ = client_key;
    }

    #[test]
    fn every_mechanism_and_wrong_passwords() {
        let db = UserDb::from_entries(vec![UserEntry::new("u", "pw", 4096)]);
        for m in [
            Mechanism::ScramSha512,
            Mechanism::ScramSha256,
            Mechanism::ScramSha1,
        ] {
            let mut s = ScramServer::new(m);
            let cf = "n,,n=u,r=nonce1";
            let sf = s.start(&db, cf.as_bytes()).unwrap();
            let (fin, v) = scram_client_final(m, "pw", cf, &sf).unwrap();
            let (user, got) = s.finish(&db, fin.as_bytes()).unwrap();
            assert_eq!((user.as_str(), got), ("u", v));
            let mut s = ScramServer::new(m);
            let sf = s.start(&db, cf.as_bytes()).unwrap();
            let (fin, _) = scram_client_final(m, "wrong", cf, &sf).unwrap();
            assert_eq!(s.finish(&db, fin.as_bytes()), Err(AuthError::BadProof));
        }
        assert_eq!(db.plain(b"\0u\0pw").unwrap(), "u");
        assert_eq!(db.plain(b"\0u\0no"), Err(AuthError::BadProof));
        assert_eq!(db.plain(b"\0x\0pw"), Err(AuthError::UnknownUser));
        assert!(db.plain(b"garbage").is_err());
        let mut s = ScramServer::new(Mechanism::ScramSha1);
        assert_eq!(
            s.start(&db, b"n,,n=nobody,r=x"),
            Err(AuthError::UnknownUser)
        );
        assert!(s.start(&db, b"p=tls,,n=u,r=x").is_err());
        assert_eq!(s.finish(&db, b"c=biws"), Err(AuthError::NoExchange));
    }
}
