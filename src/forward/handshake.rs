//! The Forward protocol's optional handshake: `HELO` (server) → `PING` (client) → `PONG`
//! (server), as pure functions over msgpack bytes. No sockets and no clocks; randomness is
//! used only where a nonce or salt is generated ([`ServerHandshake::new`],
//! [`ClientHandshake::from_helo`]).
//!
//! Spec: <https://github.com/fluent/fluentd/wiki/Forward-Protocol-Specification-v1#handshake-messages>.
//!
//! Details real peers rely on, beyond the spec's tables:
//! - fluentd's `in_forward` sends `nonce` and `auth` as msgpack `bin`; Fluent Bit's sends them
//!   as `str` holding raw (not UTF-8) bytes, and sends an `auth` salt even without users. Every
//!   string here is therefore read as bytes, `str` and `bin` alike, and never required to be
//!   UTF-8.
//! - fluentd's `out_forward` refuses to answer a non-empty `auth` without a username, so the
//!   server sends an empty `auth` when no users are configured.
//! - Fluent Bit's `out_forward` sends 16 raw random bytes as a `str` salt; fluentd sends 32
//!   hex characters. The salt is opaque bytes to the server either way.
//! - On failure, fluentd and Fluent Bit answer `["PONG", false, reason, "", ""]` and close;
//!   the reasons below are fluentd's wording, except "shared key mismatch" (fluentd writes
//!   `shared_key`); clients only show the reason.

use crate::msgpack::{Reader, Token};
use sha2::{Digest, Sha512};

/// Bytes of the server nonce and user-auth salt (fluentd and Fluent Bit use 16).
const NONCE_LEN: usize = 16;

/// What the server needs to authenticate clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerAuth {
    pub shared_key: String,
    /// Sent in PONG and hashed into the server's digest.
    pub self_hostname: String,
    /// `(username, password)` pairs; empty means no user authentication.
    pub users: Vec<(String, String)>,
}

/// What the client needs to answer a HELO.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientAuth {
    pub shared_key: String,
    /// Sent in PING and hashed into the client's digest.
    pub self_hostname: String,
    /// Sent only when the server's HELO asks for user authentication (non-empty `auth`).
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// PING is not `["PING", host, salt, digest, user, password]` of strings.
    #[error("invalid ping message")]
    InvalidPing,
    /// The client's digest does not match our shared key.
    #[error("shared key mismatch")]
    SharedKeyMismatch,
    /// No configured user matches the username and password digest.
    #[error("username/password mismatch")]
    UserMismatch,
    /// The server's first message is not `["HELO", {options}]`.
    #[error("invalid helo message")]
    InvalidHelo,
    /// The server's answer to PING is not `["PONG", bool, reason, host, digest]`.
    #[error("invalid pong message")]
    InvalidPong,
    /// The server refused us; `reason` is its own words.
    #[error("authentication failed: {reason}")]
    Rejected { reason: String },
    /// The server accepted us but does not know our shared key: it is not who we meant to
    /// talk to.
    #[error("server's shared key digest mismatch")]
    ServerKeyMismatch,
}

impl HandshakeError {
    /// Metric label: `bad_handshake` for malformed messages, `auth_failed` for wrong keys
    /// or credentials.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::InvalidPing
            | HandshakeError::InvalidHelo
            | HandshakeError::InvalidPong => "bad_handshake",
            HandshakeError::SharedKeyMismatch
            | HandshakeError::UserMismatch
            | HandshakeError::Rejected { .. }
            | HandshakeError::ServerKeyMismatch => "auth_failed",
        }
    }
}

/// `sha512_hex(salt + hostname + nonce + shared_key)`, the digest of PING and PONG.
pub fn shared_key_hexdigest(
    salt: &[u8],
    hostname: &[u8],
    nonce: &[u8],
    shared_key: &[u8],
) -> String {
    let mut h = Sha512::new();
    h.update(salt);
    h.update(hostname);
    h.update(nonce);
    h.update(shared_key);
    hex::encode(h.finalize())
}

/// `sha512_hex(auth_salt + username + password)`, PING's password field.
pub fn password_hexdigest(auth_salt: &[u8], username: &[u8], password: &[u8]) -> String {
    let mut h = Sha512::new();
    h.update(auth_salt);
    h.update(username);
    h.update(password);
    hex::encode(h.finalize())
}

/// Equality that looks at every byte, so the time taken does not reveal how long a prefix
/// of a guessed digest was right. The lengths are public (a hex SHA-512 is 128 bytes).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's state for one connection: the nonce and user-auth salt it sent in HELO.
#[derive(Clone, Debug)]
pub struct ServerHandshake {
    nonce: [u8; NONCE_LEN],
    /// Empty when no users are configured (see the module doc).
    auth_salt: Vec<u8>,
}

/// The server's verdict on a PING.
#[derive(Debug)]
pub struct PingOutcome {
    pub accepted: bool,
    /// Why the client was refused, as sent in the PONG; empty when accepted.
    pub reason: String,
    /// The PONG to send, in both cases; on failure the caller closes after sending it.
    pub pong: Vec<u8>,
    /// As the client named itself (lossy UTF-8); empty when the PING was malformed.
    pub client_hostname: String,
    /// The typed refusal (its [`HandshakeError::reason`] is the metric label); `None` when
    /// accepted.
    pub error: Option<HandshakeError>,
}

impl ServerHandshake {
    /// A fresh random nonce, and a random user-auth salt when `auth` has users.
    pub fn new(auth: &ServerAuth) -> ServerHandshake {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let salt: [u8; NONCE_LEN] = rand::random();
        let auth_salt = if auth.users.is_empty() { Vec::new() } else { salt.to_vec() };
        ServerHandshake { nonce, auth_salt }
    }

    /// A handshake with a chosen nonce and salt, for tests and known-answer checks.
    pub fn from_parts(nonce: [u8; NONCE_LEN], auth_salt: Vec<u8>) -> ServerHandshake {
        ServerHandshake { nonce, auth_salt }
    }

    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// `["HELO", {"nonce": bin, "auth": bin, "keepalive": true}]`.
    pub fn helo(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        put_array_len(&mut out, 2);
        put_str(&mut out, b"HELO");
        put_map_len(&mut out, 3);
        put_str(&mut out, b"nonce");
        put_bin(&mut out, &self.nonce);
        put_str(&mut out, b"auth");
        put_bin(&mut out, &self.auth_salt);
        put_str(&mut out, b"keepalive");
        put_bool(&mut out, true);
        out
    }

    /// Verifies one PING. `frame` is one complete msgpack value (the connection code finds
    /// frame boundaries).
    pub fn check_ping(&self, auth: &ServerAuth, frame: &[u8]) -> PingOutcome {
        let Some(ping) = Ping::parse(frame) else {
            return self.refuse(HandshakeError::InvalidPing, String::new());
        };
        let client_hostname = String::from_utf8_lossy(ping.hostname).into_owned();
        let expected =
            shared_key_hexdigest(ping.salt, ping.hostname, &self.nonce, auth.shared_key.as_bytes());
        if !ct_eq(expected.as_bytes(), ping.digest) {
            return self.refuse(HandshakeError::SharedKeyMismatch, client_hostname);
        }
        if !auth.users.is_empty() {
            // Every user with this name is tried (fluentd allows duplicates), and no
            // comparison stops early.
            let mut ok = false;
            for (user, password) in &auth.users {
                if user.as_bytes() == ping.username {
                    let want =
                        password_hexdigest(&self.auth_salt, user.as_bytes(), password.as_bytes());
                    ok |= ct_eq(want.as_bytes(), ping.password);
                }
            }
            if !ok {
                return self.refuse(HandshakeError::UserMismatch, client_hostname);
            }
        }
        let digest = shared_key_hexdigest(
            ping.salt,
            auth.self_hostname.as_bytes(),
            &self.nonce,
            auth.shared_key.as_bytes(),
        );
        let mut pong = Vec::with_capacity(160 + auth.self_hostname.len());
        put_array_len(&mut pong, 5);
        put_str(&mut pong, b"PONG");
        put_bool(&mut pong, true);
        put_str(&mut pong, b"");
        put_str(&mut pong, auth.self_hostname.as_bytes());
        put_str(&mut pong, digest.as_bytes());
        PingOutcome { accepted: true, reason: String::new(), pong, client_hostname, error: None }
    }

    /// `["PONG", false, reason, "", ""]`, as fluentd and Fluent Bit answer a refused PING.
    fn refuse(&self, error: HandshakeError, client_hostname: String) -> PingOutcome {
        let reason = error.to_string();
        let mut pong = Vec::with_capacity(16 + reason.len());
        put_array_len(&mut pong, 5);
        put_str(&mut pong, b"PONG");
        put_bool(&mut pong, false);
        put_str(&mut pong, reason.as_bytes());
        put_str(&mut pong, b"");
        put_str(&mut pong, b"");
        PingOutcome { accepted: false, reason, pong, client_hostname, error: Some(error) }
    }
}

/// The fields of a PING, borrowed from its frame.
struct Ping<'a> {
    hostname: &'a [u8],
    salt: &'a [u8],
    digest: &'a [u8],
    username: &'a [u8],
    password: &'a [u8],
}

impl<'a> Ping<'a> {
    fn parse(frame: &'a [u8]) -> Option<Ping<'a>> {
        let mut r = Fields::new(frame);
        if r.array_len()? != 6 || r.bytes()? != b"PING" {
            return None;
        }
        let ping = Ping {
            hostname: r.bytes()?,
            salt: r.bytes()?,
            digest: r.bytes()?,
            username: r.bytes()?,
            password: r.bytes()?,
        };
        r.at_end().then_some(ping)
    }
}

/// The client's state between HELO and PONG.
#[derive(Clone, Debug)]
pub struct ClientHandshake {
    nonce: Vec<u8>,
    auth_salt: Vec<u8>,
    keepalive: bool,
    /// 32 hex characters, like fluentd's `out_forward`: a `str` that every server accepts
    /// (Fluent Bit's `in_forward` rejects a `bin` salt).
    shared_key_salt: String,
}

impl ClientHandshake {
    /// Parses `["HELO", {"nonce": .., "auth": .., "keepalive": ..}]` and draws this
    /// connection's shared-key salt.
    pub fn from_helo(frame: &[u8]) -> Result<ClientHandshake, HandshakeError> {
        let salt: [u8; NONCE_LEN] = rand::random();
        Self::from_helo_with_salt(frame, hex::encode(salt))
    }

    /// [`from_helo`](Self::from_helo) with a chosen salt, for known-answer tests.
    pub fn from_helo_with_salt(
        frame: &[u8],
        shared_key_salt: String,
    ) -> Result<ClientHandshake, HandshakeError> {
        parse_helo(frame)
            .map(|(nonce, auth_salt, keepalive)| ClientHandshake {
                nonce,
                auth_salt,
                keepalive,
                shared_key_salt,
            })
            .ok_or(HandshakeError::InvalidHelo)
    }

    /// Whether the server allows more than one request per connection (default true).
    pub fn keepalive(&self) -> bool {
        self.keepalive
    }

    /// Whether the server asked for a username and password.
    pub fn user_auth_required(&self) -> bool {
        !self.auth_salt.is_empty()
    }

    /// `["PING", hostname, salt, digest, username, password_digest]`. Username and password
    /// are sent only when the server asked for them; without them they go out empty, and the
    /// server's refusal names the problem (fluentd's client fails locally instead).
    pub fn ping(&self, auth: &ClientAuth) -> Vec<u8> {
        let digest = shared_key_hexdigest(
            self.shared_key_salt.as_bytes(),
            auth.self_hostname.as_bytes(),
            &self.nonce,
            auth.shared_key.as_bytes(),
        );
        let (user, password) = if self.user_auth_required() {
            let pw = password_hexdigest(
                &self.auth_salt,
                auth.username.as_bytes(),
                auth.password.as_bytes(),
            );
            (auth.username.as_str(), pw)
        } else {
            ("", String::new())
        };
        let mut out = Vec::with_capacity(320 + auth.self_hostname.len() + user.len());
        put_array_len(&mut out, 6);
        put_str(&mut out, b"PING");
        put_str(&mut out, auth.self_hostname.as_bytes());
        put_str(&mut out, self.shared_key_salt.as_bytes());
        put_str(&mut out, digest.as_bytes());
        put_str(&mut out, user.as_bytes());
        put_str(&mut out, password.as_bytes());
        out
    }

    /// Checks `["PONG", auth_result, reason, server_hostname, digest]`, including that the
    /// server knows the shared key. Returns the server's hostname.
    ///
    /// Unlike fluentd's client this does not refuse a server with our own hostname: that
    /// check guards fluentd against forwarding loops, while `berth cat` talking to the berth
    /// on the same host is the common case.
    pub fn check_pong(&self, auth: &ClientAuth, frame: &[u8]) -> Result<String, HandshakeError> {
        let mut r = Fields::new(frame);
        let parsed = (|| {
            if r.array_len()? != 5 || r.bytes()? != b"PONG" {
                return None;
            }
            let ok = r.bool()?;
            let reason = r.bytes()?;
            let host = r.bytes()?;
            let digest = r.bytes()?;
            r.at_end().then_some((ok, reason, host, digest))
        })();
        let (ok, reason, host, digest) = parsed.ok_or(HandshakeError::InvalidPong)?;
        if !ok {
            return Err(HandshakeError::Rejected {
                reason: String::from_utf8_lossy(reason).into_owned(),
            });
        }
        let expected = shared_key_hexdigest(
            self.shared_key_salt.as_bytes(),
            host,
            &self.nonce,
            auth.shared_key.as_bytes(),
        );
        if !ct_eq(expected.as_bytes(), digest) {
            return Err(HandshakeError::ServerKeyMismatch);
        }
        Ok(String::from_utf8_lossy(host).into_owned())
    }
}

/// `(nonce, auth_salt, keepalive)`; absent options are empty / true, as in fluentd's client.
fn parse_helo(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>, bool)> {
    let mut r = Fields::new(frame);
    if r.array_len()? != 2 || r.bytes()? != b"HELO" {
        return None;
    }
    let (mut nonce, mut auth, mut keepalive) = (&[][..], &[][..], true);
    let n = r.map_len()?;
    for _ in 0..n {
        match r.bytes()? {
            b"nonce" => nonce = r.bytes()?,
            b"auth" => auth = r.bytes()?,
            b"keepalive" => keepalive = r.bool()?,
            _ => r.skip()?,
        }
    }
    r.at_end().then(|| (nonce.to_vec(), auth.to_vec(), keepalive))
}

/// The value of an ack `{"ack": chunk}` (`str` or `bin`), `None` for anything else.
pub(crate) fn ack_chunk(frame: &[u8]) -> Option<&[u8]> {
    let mut r = Fields::new(frame);
    if r.map_len()? != 1 || r.bytes()? != b"ack" {
        return None;
    }
    let chunk = r.bytes()?;
    r.at_end().then_some(chunk)
}

/// Whether `frame` is a HELO: a client that did not expect a handshake can say so.
pub(crate) fn is_helo(frame: &[u8]) -> bool {
    parse_helo(frame).is_some()
}

// ---- the little msgpack the handshake needs -------------------------------------------

fn put_array_len(out: &mut Vec<u8>, n: u8) {
    debug_assert!(n < 16);
    out.push(0x90 | n);
}

fn put_map_len(out: &mut Vec<u8>, n: u8) {
    debug_assert!(n < 16);
    out.push(0x80 | n);
}

fn put_bool(out: &mut Vec<u8>, b: bool) {
    out.push(if b { 0xc3 } else { 0xc2 });
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= u8::MAX as usize {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= u16::MAX as usize {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
}

fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len();
    if n <= u8::MAX as usize {
        out.extend_from_slice(&[0xc4, n as u8]);
    } else if n <= u16::MAX as usize {
        out.push(0xc5);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

/// The handshake's reads over one msgpack frame, through the crate's one [`Reader`]: every
/// method returns `None` on a type mismatch or malformed bytes.
struct Fields<'a>(Reader<'a>);

/// Nesting allowed when skipping unknown HELO options.
const MAX_SKIP_DEPTH: usize = 8;

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields(Reader::new(buf))
    }

    fn at_end(&self) -> bool {
        self.0.at_end()
    }

    fn array_len(&mut self) -> Option<usize> {
        self.0.array_len().ok()?
    }

    fn map_len(&mut self) -> Option<usize> {
        self.0.map_len().ok()?
    }

    fn bool(&mut self) -> Option<bool> {
        match self.0.read().ok()? {
            Token::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A `str` or `bin`, as bytes.
    fn bytes(&mut self) -> Option<&'a [u8]> {
        self.0.str_or_bin().ok()?.map(|(b, _)| b)
    }

    /// Skips one value of any type, at most [`MAX_SKIP_DEPTH`] containers deep.
    fn skip(&mut self) -> Option<()> {
        self.0.skip_nested::<MAX_SKIP_DEPTH>().ok().map(drop)
    }
}

#[cfg(test)]
mod tests;
