//! `[input.forward]`: where the Fluentd Forward input listens, its handshake and limits —
//! the keys as written, their checks and the typed config.

use super::values::de_parsed;
use super::values::{Dur, Mode, Size};
use super::{redact, units, ConfigError, Ctx};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub(super) const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:24224";

#[derive(Debug, Clone)]
pub struct InputConfig {
    /// `[input.forward]`
    pub forward: ForwardConfig,
}

/// Where the Forward input listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `tcp://HOST:PORT`
    Tcp(SocketAddr),
    /// `unix:///absolute/path`
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "tcp://{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        units::parse_listen(s)
    }
}

/// `[[input.forward.user]]`: credentials a client may present in the handshake.
#[derive(Clone)]
pub struct UserConfig {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for UserConfig {
    // Debug output ends up in logs; the password must not.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("username", &self.username)
            .field("password", &super::REDACTED)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct ForwardConfig {
    /// At least one address, no duplicates.
    pub listen: Vec<ListenAddr>,
    /// Permission bits of Unix sockets (≤ 0o777).
    pub socket_mode: u32,
    /// Non-empty: require the HELO/PING/PONG handshake.
    pub shared_key: String,
    /// Resolved at load: the host name when the file leaves it empty.
    pub self_hostname: String,
    /// Largest frame or decompressed payload, 1 KiB ..= 1 GiB.
    pub max_message_size: usize,
    /// Per listener; at least 1.
    pub max_connections: usize,
    /// Longer than zero.
    pub idle_timeout: Duration,
    /// Bytes all connections together may hold beyond their allowance; at least twice
    /// `max_message_size` (a whole frame and its inflated payload).
    pub memory_budget: usize,
    /// Longer than zero.
    pub handshake_timeout: Duration,
    /// Longer than zero.
    pub frame_timeout: Duration,
    /// Only with a `shared_key`; user names non-empty and unique.
    pub users: Vec<UserConfig>,
}

/// `[input]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInput {
    /// The Fluentd Forward protocol input (Docker's `fluentd` log driver, Fluent Bit).
    #[serde(default)]
    pub forward: RawForward,
}

/// `[input.forward]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForward {
    /// Addresses to accept connections on: `tcp://HOST:PORT` and `unix:///path`.
    #[serde(default = "default_listen", deserialize_with = "de_listen")]
    pub listen: Vec<ListenAddr>,
    /// Permissions of Unix sockets, an octal string.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: Mode,
    /// Non-empty: clients must complete the HELO/PING/PONG handshake with this key.
    #[serde(default)]
    pub shared_key: String,
    /// The name berth gives itself in the handshake; empty means the host name.
    #[serde(default)]
    pub self_hostname: String,
    /// Largest accepted frame or decompressed payload.
    #[serde(default = "default_max_message_size", deserialize_with = "de_message_size")]
    pub max_message_size: Size,
    /// Most simultaneous client connections per listener; further ones wait in the accept
    /// queue until one closes.
    #[serde(default = "default_max_connections", deserialize_with = "de_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_idle_timeout")]
    pub idle_timeout: Dur,
    /// Bytes all connections together may hold (unfinished frames, inflated payloads,
    /// requests waiting for their fsync) beyond a 128 KiB allowance each; when reached,
    /// connections stop being read until there is room. Default: 256MiB, or twice
    /// `max_message_size` if that is more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_budget: Option<Spanned<Size>>,
    /// With a `shared_key`: a client that has not completed the handshake this long after
    /// connecting is closed.
    #[serde(default = "default_handshake_timeout", deserialize_with = "de_positive")]
    pub handshake_timeout: Dur,
    /// A request must be whole this long after its first byte arrived, or the connection
    /// is closed (nothing of the request was acked); time spent waiting for the memory
    /// budget does not count.
    #[serde(default = "default_frame_timeout", deserialize_with = "de_positive")]
    pub frame_timeout: Dur,
    /// `[[input.forward.user]]`: username/password pairs checked in the handshake.
    #[serde(default, rename = "user", skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Spanned<RawUser>>,
}

impl Default for RawForward {
    fn default() -> Self {
        RawForward {
            listen: default_listen(),
            socket_mode: default_socket_mode(),
            shared_key: String::new(),
            self_hostname: String::new(),
            max_message_size: default_max_message_size(),
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            memory_budget: None,
            handshake_timeout: default_handshake_timeout(),
            frame_timeout: default_frame_timeout(),
            users: Vec::new(),
        }
    }
}

/// `[[input.forward.user]]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUser {
    /// The user name the client sends in PING.
    pub username: Spanned<String>,
    /// Its password.
    pub password: String,
}

fn default_listen() -> Vec<ListenAddr> {
    // A constant known to parse; `unit_tests::defaults_parse` keeps it so.
    units::parse_listen(DEFAULT_LISTEN).map(|a| vec![a]).unwrap_or_default()
}

fn default_socket_mode() -> Mode {
    Mode(0o660)
}

fn default_max_message_size() -> Size {
    Size(16 * 1024 * 1024)
}

fn default_max_connections() -> usize {
    1024
}

fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}

/// Sized for a small host: a few large requests read at once, every small one.
pub(super) const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_frame_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}

impl<'de> Deserialize<'de> for ListenAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, units::parse_listen)
    }
}

impl Serialize for ListenAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ListenAddr>, D::Error> {
    let addrs = Vec::<ListenAddr>::deserialize(d)?;
    if addrs.is_empty() {
        return Err(de::Error::custom("at least one listen address is needed"));
    }
    for (i, a) in addrs.iter().enumerate() {
        if addrs[..i].contains(a) {
            return Err(de::Error::custom(format!("listen address \"{a}\" appears twice")));
        }
    }
    Ok(addrs)
}

fn de_message_size<'de, D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
    let size = Size::deserialize(d)?;
    if !(MIN_MESSAGE_SIZE..=MAX_MESSAGE_SIZE).contains(&size.0) {
        return Err(de::Error::custom(format!(
            "{} is out of range (from 1KiB to 1GiB)",
            units::format_size(size.0)
        )));
    }
    Ok(size)
}

fn de_max_connections<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

fn de_positive<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    de_idle_timeout(d)
}

fn de_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let dur = Dur::deserialize(d)?;
    if dur.0.is_zero() {
        return Err(de::Error::custom("must be longer than 0s"));
    }
    Ok(dur)
}

const MIN_MESSAGE_SIZE: u64 = 1024;
const MAX_MESSAGE_SIZE: u64 = 1024 * 1024 * 1024;

pub(super) fn host_name() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// The checks that involve several keys (users need a shared key, names are unique), into
/// the typed config.
pub(super) fn build(raw: RawInput, ctx: &Ctx<'_>) -> Result<InputConfig, ConfigError> {
    let f = raw.forward;
    if let Some(first) = f.users.first() {
        if f.shared_key.is_empty() {
            return Err(ctx.error(
                first.span(),
                "input.forward.user".to_string(),
                "user authentication needs a shared_key (the handshake only happens when shared_key is set)"
                    .to_string(),
                true,
            ));
        }
    }
    let mut users: Vec<UserConfig> = Vec::with_capacity(f.users.len());
    for (i, u) in f.users.into_iter().enumerate() {
        let u = u.into_inner();
        let key = format!("input.forward.user[{i}].username");
        if u.username.get_ref().is_empty() {
            return Err(ctx.error(u.username.span(), key, "must not be empty".to_string(), true));
        }
        if users.iter().any(|x| x.username == *u.username.get_ref()) {
            let message = format!("duplicate user name {:?}", u.username.get_ref());
            return Err(ctx.error(u.username.span(), key, message, true));
        }
        users.push(UserConfig { username: u.username.into_inner(), password: u.password });
    }

    let max_message_size = f.max_message_size.0;
    // A frame of max_message_size and its inflated payload must fit, or such a request
    // could never be read whole.
    let min_budget = max_message_size.saturating_mul(2);
    let memory_budget = match &f.memory_budget {
        None => DEFAULT_MEMORY_BUDGET.max(min_budget),
        Some(b) if b.get_ref().0 < min_budget => {
            let message = format!(
                "{} is less than twice max_message_size ({}): a whole request and its inflated payload must fit",
                units::format_size(b.get_ref().0),
                units::format_size(min_budget)
            );
            return Err(ctx.error(
                b.span(),
                "input.forward.memory_budget".to_string(),
                message,
                true,
            ));
        }
        Some(b) => b.get_ref().0,
    };

    Ok(InputConfig {
        forward: ForwardConfig {
            listen: f.listen,
            socket_mode: f.socket_mode.0,
            shared_key: f.shared_key,
            self_hostname: if f.self_hostname.is_empty() { host_name() } else { f.self_hostname },
            // Bounded by 1 GiB when read, so it fits any usize we build for.
            max_message_size: usize::try_from(f.max_message_size.0).unwrap_or(usize::MAX),
            max_connections: f.max_connections,
            idle_timeout: f.idle_timeout.0,
            memory_budget: usize::try_from(memory_budget).unwrap_or(usize::MAX),
            handshake_timeout: f.handshake_timeout.0,
            frame_timeout: f.frame_timeout.0,
            users,
        },
    })
}

/// The typed config back in the file's shape, secrets redacted.
pub(super) fn to_raw(c: &InputConfig) -> RawInput {
    let f = &c.forward;
    let none = 0..0;
    RawInput {
        forward: RawForward {
            listen: f.listen.clone(),
            socket_mode: Mode(f.socket_mode),
            shared_key: redact(&f.shared_key),
            self_hostname: f.self_hostname.clone(),
            max_message_size: Size(f.max_message_size as u64),
            max_connections: f.max_connections,
            idle_timeout: Dur(f.idle_timeout),
            memory_budget: Some(Spanned::new(none.clone(), Size(f.memory_budget as u64))),
            handshake_timeout: Dur(f.handshake_timeout),
            frame_timeout: Dur(f.frame_timeout),
            users: f
                .users
                .iter()
                .map(|u| {
                    let user = RawUser {
                        username: Spanned::new(none.clone(), u.username.clone()),
                        password: redact(&u.password),
                    };
                    Spanned::new(none.clone(), user)
                })
                .collect(),
        },
    }
}
