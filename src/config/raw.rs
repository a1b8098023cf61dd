//! The file format, key for key: what serde reads (and what `check-config` prints).
//!
//! Every single-value check happens inside `Deserialize` (the newtypes and `deserialize_with`
//! functions below), so that toml attaches the value's span to the error and the message
//! can name the line. Checks that need several values (duplicate sink names, a `path` that
//! only a file sink may have) run afterwards in `super::build`, with `Spanned` fields
//! keeping the positions they report.
//!
//! The `///` comments here are the reference for `docs/configuration.md`.

use super::units;
use super::ListenAddr;
use crate::route::TagPattern;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Where logs come in.
    #[serde(default)]
    pub input: RawInput,
    /// The local HTTP endpoint (health, metrics, status).
    #[serde(default)]
    pub admin: RawAdmin,
    /// The durable on-disk buffer between inputs and sinks.
    #[serde(default)]
    pub buffer: RawBuffer,
    /// How berth stops on SIGTERM.
    #[serde(default)]
    pub shutdown: RawShutdown,
    /// Docker-aware processing: metadata added to records as they arrive (Docker, ECS,
    /// EC2), split lines and multiline groups joined on the way to the sinks.
    #[serde(default)]
    pub enrich: RawEnrich,
    /// `[[sink]]`: where logs go; at least one, names unique. Read by `sink::read` (one
    /// struct per type), so only named here for serde's list of keys.
    #[serde(default, rename = "sink", skip_serializing)]
    #[allow(dead_code)] // never holds anything: `parse` takes the sinks out first
    pub sink_keys: serde::de::IgnoredAny,
    /// The sinks, for printing.
    #[serde(skip_deserializing, rename = "sink", skip_serializing_if = "Vec::is_empty")]
    pub sink: Vec<super::sink::RawSink>,
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
    /// Most simultaneous client connections; further ones wait in the accept queue.
    #[serde(default = "default_max_connections", deserialize_with = "de_max_connections")]
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_idle_timeout")]
    pub idle_timeout: Dur,
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

/// `[admin]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    /// `HOST:PORT` of the admin endpoint; `""` disables it.
    #[serde(default = "default_admin_listen")]
    pub listen: AdminListen,
}

impl Default for RawAdmin {
    fn default() -> Self {
        RawAdmin { listen: default_admin_listen() }
    }
}

/// `[buffer]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBuffer {
    /// Directory of the buffer's segments, cursors and instance id; created if missing.
    #[serde(default = "default_buffer_path", deserialize_with = "de_buffer_path")]
    pub path: std::path::PathBuf,
    /// Total size of the segments on disk; when reached, see `when_full`.
    #[serde(default = "default_buffer_max_size")]
    pub max_size: Spanned<Size>,
    /// Size at which a segment file is closed and a new one started.
    #[serde(default = "default_segment_size")]
    pub segment_size: Spanned<Size>,
    /// `batch`: acks wait for a group-commit fsync; `always`: fsync per request;
    /// `never`: acks after write(2) (survives a crash of berth, not of the host).
    #[serde(default)]
    pub sync: SyncMode,
    /// With `sync = "never"`, the longest written data waits for an fsync. (With `batch`
    /// a group forms while the previous fsync runs: no added wait.)
    #[serde(default = "default_sync_interval")]
    pub sync_interval: Spanned<Dur>,
    /// `block`: stop reading the sockets (TCP backpressure); `drop_newest`: refuse new
    /// events, counted, and do not ack them.
    #[serde(default)]
    pub when_full: WhenFull,
}

impl Default for RawBuffer {
    fn default() -> Self {
        RawBuffer {
            path: default_buffer_path(),
            max_size: default_buffer_max_size(),
            segment_size: default_segment_size(),
            sync: SyncMode::default(),
            sync_interval: default_sync_interval(),
            when_full: WhenFull::default(),
        }
    }
}

fn default_buffer_path() -> std::path::PathBuf {
    std::path::PathBuf::from("/var/lib/berth/buffer")
}

fn de_buffer_path<'de, D: Deserializer<'de>>(d: D) -> Result<std::path::PathBuf, D::Error> {
    let p = std::path::PathBuf::deserialize(d)?;
    if p.as_os_str().is_empty() {
        return Err(de::Error::custom(
            "must not be empty (a directory berth owns, e.g. /var/lib/berth/buffer)",
        ));
    }
    Ok(p)
}

fn default_buffer_max_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(2 << 30))
}

fn default_segment_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(64 << 20))
}

fn default_sync_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_millis(50)))
}

pub use crate::buffer::{SyncMode, WhenFull};

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| match s {
            "batch" => Ok(SyncMode::Batch),
            "always" => Ok(SyncMode::Always),
            "never" => Ok(SyncMode::Never),
            other => Err(format!(
                "unknown sync mode {other:?} (expected \"batch\", \"always\" or \"never\")"
            )),
        })
    }
}

impl Serialize for SyncMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            SyncMode::Batch => "batch",
            SyncMode::Always => "always",
            SyncMode::Never => "never",
        })
    }
}

impl<'de> Deserialize<'de> for WhenFull {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| match s {
            "block" => Ok(WhenFull::Block),
            "drop_newest" => Ok(WhenFull::DropNewest),
            other => {
                Err(format!("unknown when_full {other:?} (expected \"block\" or \"drop_newest\")"))
            }
        })
    }
}

impl Serialize for WhenFull {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            WhenFull::Block => "block",
            WhenFull::DropNewest => "drop_newest",
        })
    }
}

/// `[enrich.partial]`, `[enrich.multiline]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJoin {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A group larger than this is sent as it is, marked incomplete.
    #[serde(default = "default_join_max_size")]
    pub max_size: Spanned<Size>,
    /// Partial: how long after its first part a line may wait for the rest. Multiline: how
    /// long after its last line a group waits for more.
    #[serde(default = "default_join_timeout")]
    pub timeout: Spanned<Dur>,
}

impl Default for RawJoin {
    fn default() -> Self {
        RawJoin {
            enabled: true,
            max_size: default_join_max_size(),
            timeout: default_join_timeout(),
        }
    }
}

fn default_join_max_size() -> Spanned<Size> {
    Spanned::new(0..0, Size(1 << 20))
}

fn default_join_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(5)))
}

/// `[shutdown]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawShutdown {
    /// How long sinks may keep delivering after SIGTERM before berth exits anyway.
    #[serde(default = "default_grace_period")]
    pub grace_period: Dur,
}

impl Default for RawShutdown {
    fn default() -> Self {
        RawShutdown { grace_period: default_grace_period() }
    }
}

/// `[enrich]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrich {
    /// Container, image and ECS task fields from the Docker engine.
    #[serde(default)]
    pub docker: RawEnrichDocker,
    /// Host fields from the EC2 instance metadata service (IMDSv2).
    #[serde(default)]
    pub ec2: RawEnrichEc2,
    /// Docker's partial messages (lines over 16 KiB) joined into one record.
    #[serde(default)]
    pub partial: RawJoin,
    /// Lines of one container grouped into one record, for containers labelled
    /// `berth.multiline.start` with a start-line regex.
    #[serde(default)]
    pub multiline: RawJoin,
}

/// `[enrich.docker]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrichDocker {
    /// Look containers up in the Docker engine and add their fields to Docker's records.
    /// Without a reachable engine records pass through unchanged (one warning).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The engine's API: `unix:///path`, `tcp://HOST:PORT` or `http://HOST:PORT`; empty
    /// means `$DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    #[serde(default = "default_socket")]
    pub socket: Spanned<String>,
    /// Which fields to add, in this order.
    #[serde(default = "default_docker_fields")]
    pub fields: Spanned<Vec<Spanned<String>>>,
    /// Container labels to copy: `"NAME"` (key = the label's name) or `"NAME=KEY"`.
    #[serde(default)]
    pub labels: Vec<Spanned<String>>,
    /// Container environment variables to copy: `"NAME"` or `"NAME=KEY"`.
    #[serde(default)]
    pub env: Vec<Spanned<String>>,
    /// How long a removed container's fields are kept, for its last lines still in flight.
    #[serde(default = "default_removed_grace_period")]
    pub removed_grace_period: Dur,
    /// The longest a new container's first line waits for its inspect (that connection
    /// waits; the line then goes on without the fields). At most 60 s.
    #[serde(default = "default_inspect_wait", deserialize_with = "de_inspect_wait")]
    pub inspect_wait: Dur,
    /// Most containers cached; the least recently used is dropped beyond it.
    #[serde(default = "default_max_containers", deserialize_with = "de_max_containers")]
    pub max_containers: usize,
}

impl Default for RawEnrichDocker {
    fn default() -> Self {
        RawEnrichDocker {
            enabled: true,
            socket: default_socket(),
            fields: default_docker_fields(),
            labels: Vec::new(),
            env: Vec::new(),
            removed_grace_period: default_removed_grace_period(),
            inspect_wait: default_inspect_wait(),
            max_containers: default_max_containers(),
        }
    }
}

/// `[enrich.ec2]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnrichEc2 {
    /// Add `ec2_instance_id`, `availability_zone`, `region` and `instance_type` from
    /// IMDSv2; off EC2 they are absent (one warning).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// `all`: every record gets the host fields; `docker`: only records from Docker's
    /// driver (others pass through without being copied).
    #[serde(default)]
    pub apply_to: ApplyTo,
}

impl Default for RawEnrichEc2 {
    fn default() -> Self {
        RawEnrichEc2 { enabled: true, apply_to: ApplyTo::default() }
    }
}

pub use super::enrich::ApplyTo;

impl<'de> Deserialize<'de> for ApplyTo {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| match s {
            "all" => Ok(ApplyTo::All),
            "docker" => Ok(ApplyTo::Docker),
            other => Err(format!("unknown apply_to {other:?} (expected \"all\" or \"docker\")")),
        })
    }
}

impl Serialize for ApplyTo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

fn default_socket() -> Spanned<String> {
    Spanned::new(0..0, String::new())
}

fn default_true() -> bool {
    true
}

fn default_docker_fields() -> Spanned<Vec<Spanned<String>>> {
    let v = super::enrich::DockerField::DEFAULTS
        .iter()
        .map(|f| Spanned::new(0..0, f.as_str().to_string()))
        .collect();
    Spanned::new(0..0, v)
}

fn default_removed_grace_period() -> Dur {
    Dur(Duration::from_secs(300))
}

fn default_inspect_wait() -> Dur {
    Dur(Duration::from_secs(2))
}

fn de_inspect_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let w = Dur::deserialize(d)?;
    if w.0 > Duration::from_secs(60) {
        return Err(de::Error::custom(
            "at most 60s: a longer wait holds up the connection's other lines too",
        ));
    }
    Ok(w)
}

fn default_max_containers() -> usize {
    4096
}

fn de_max_containers<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(de::Error::custom("must be at least 1"));
    }
    Ok(n)
}

// --- named defaults --------------------------------------------------------------------

pub(super) const DEFAULT_LISTEN: &str = "tcp://127.0.0.1:24224";
pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:24220";

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

fn default_admin_listen() -> AdminListen {
    AdminListen(units::parse_host_port(DEFAULT_ADMIN_LISTEN).ok())
}

fn default_grace_period() -> Dur {
    // ECS sends SIGKILL 30 s after SIGTERM (stopTimeout); leave 5 s to flush and exit.
    Dur(Duration::from_secs(25))
}

// --- value types -----------------------------------------------------------------------

/// Deserialize a string and parse it with `parse`, whose message becomes the error. The
/// parse runs inside the visitor so that toml gives the error this value's own span (an
/// element of `listen` gets its own line, not the array's).
pub(super) fn de_parsed<'de, D, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<F>(F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
            (self.0)(s).map_err(E::custom)
        }
    }
    d.deserialize_str(V(parse))
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

/// A byte size, written `"16MiB"` (or a bare integer of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"16MiB\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Size, E> {
                units::parse_size(s).map(Size).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Size, E> {
                u64::try_from(n)
                    .map(Size)
                    .map_err(|_| E::custom(format!("invalid size {n} (must not be negative)")))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Size, E> {
                Ok(Size(n))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_size(self.0))
    }
}

const MIN_MESSAGE_SIZE: u64 = 1024;
const MAX_MESSAGE_SIZE: u64 = 1024 * 1024 * 1024;

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

/// A duration, written `"5s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| units::parse_duration(s).map(Dur))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_duration(self.0))
    }
}

/// A limit written as a duration, where `""` (like `"0s"`) means "no limit" (zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LimitDur(pub Duration);

impl<'de> Deserialize<'de> for LimitDur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            if s.is_empty() {
                Ok(LimitDur(Duration::ZERO))
            } else {
                units::parse_duration(s).map(LimitDur)
            }
        })
    }
}

impl Serialize for LimitDur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0.is_zero() {
            return s.serialize_str("");
        }
        s.serialize_str(&units::format_duration(self.0))
    }
}

fn de_idle_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
    let dur = Dur::deserialize(d)?;
    if dur.0.is_zero() {
        return Err(de::Error::custom("must be longer than 0s"));
    }
    Ok(dur)
}

/// A file mode, written as an octal string `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Strings only: an integer 660 would be decimal, which is never what was meant.
        de_parsed(d, |s| units::parse_mode(s).map(Mode))
    }
}

impl Serialize for Mode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&units::format_mode(self.0))
    }
}

/// The admin address: `"HOST:PORT"` or `""` (disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AdminListen(pub Option<SocketAddr>);

impl<'de> Deserialize<'de> for AdminListen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            if s.is_empty() {
                return Ok(AdminListen(None));
            }
            units::parse_host_port(s).map(|a| AdminListen(Some(a))).map_err(|why| {
                format!("invalid address {s:?}: {why} (expected HOST:PORT such as \"127.0.0.1:24220\", or \"\" to disable)")
            })
        })
    }
}

impl Serialize for AdminListen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(a) => s.collect_str(&a),
            None => s.serialize_str(""),
        }
    }
}

/// A tag pattern, checked when read.
#[derive(Debug, Clone)]
pub(super) struct Pattern(pub TagPattern);

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            TagPattern::parse(s)
                .map(Pattern)
                .map_err(|why| format!("invalid tag pattern {s:?}: {why}"))
        })
    }
}

impl Serialize for Pattern {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.as_str())
    }
}
