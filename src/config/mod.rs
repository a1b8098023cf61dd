//! Typed configuration: the TOML file, `BERTH_<SECTION>__<KEY>` environment overrides on
//! top of it, validated once at load into the types below. Nothing downstream re-checks a
//! value or sees a string where a type fits.
//!
//! Layers: `raw` is the file format key for key (serde, per-value checks inside
//! `Deserialize` so errors carry a line), `env` edits the parsed document before it is
//! deserialized, and `build` (here) does the checks that span several values and produces
//! [`Config`]. The reference for users is `docs/configuration.md`.
//!
//! This module never touches the network or the file system beyond reading the one
//! config file, and never exits the process: errors are returned as [`ConfigError`].

mod aws;
pub mod cloudwatch;
pub mod elasticsearch;
pub mod enrich;
mod env;
mod local;
mod network;
mod raw;
mod sink;
mod table;
mod units;

pub use aws::AwsAuth;
pub use cloudwatch::CloudWatchConfig;
pub use elasticsearch::{ElasticsearchConfig, EsAuth, SigV4Auth, SigV4Service};
pub use enrich::{
    ApplyTo, CopyKey, DockerEnrichConfig, DockerField, Ec2EnrichConfig, EnrichConfig,
};
pub use local::Format;
use raw::RawConfig;
pub use raw::{SyncMode, WhenFull};
use serde::Deserialize;
pub use sink::{SinkConfig, SinkKind};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use units::{format_duration, format_size, parse_duration, parse_size};

/// Read when neither `--config` nor `$BERTH_CONFIG` names a file, if it exists.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

/// The configuration used when there is no file at all.
pub const BUILTIN_DEFAULTS: &str = r#"
[input.forward]
listen = ["tcp://127.0.0.1:24224"]

[admin]
listen = "127.0.0.1:24220"

[[sink]]
name = "console"
type = "stdout"
match = "**"
format = "json"
"#;

/// The `source` of a config made from [`BUILTIN_DEFAULTS`].
pub const BUILTIN_SOURCE: &str = "built-in defaults";

/// Shown instead of a non-empty secret by [`Config::to_redacted_toml`].
pub const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone)]
pub struct Config {
    /// `[input]`: where logs come in.
    pub input: InputConfig,
    /// `[admin]`: the local HTTP endpoint.
    pub admin: AdminConfig,
    /// `[buffer]`: the durable on-disk buffer.
    pub buffer: BufferConfig,
    /// `[shutdown]`: the SIGTERM sequence.
    pub shutdown: ShutdownConfig,
    /// `[enrich]`: Docker, ECS and EC2 fields added at the input; split lines and
    /// multiline groups joined on the way to the sinks.
    pub enrich: EnrichConfig,
    /// `[[sink]]`: at least one, names unique, in file order.
    pub sinks: Vec<SinkConfig>,
    /// Where the config came from: the file path, or [`BUILTIN_SOURCE`].
    pub source: String,
    /// The `BERTH_*` variables that overrode a key, in the order they were applied.
    pub overrides: Vec<String>,
}

/// `[buffer]`: see `raw::RawBuffer` for each key's meaning.
#[derive(Debug, Clone)]
pub struct BufferConfig {
    pub path: PathBuf,
    pub max_size: u64,
    pub segment_size: u64,
    pub sync: SyncMode,
    pub sync_interval: Duration,
    pub when_full: WhenFull,
}

impl BufferConfig {
    /// The storage engine's options.
    pub fn options(&self) -> crate::buffer::BufferOptions {
        crate::buffer::BufferOptions {
            path: self.path.clone(),
            max_size: self.max_size,
            segment_size: self.segment_size,
            sync: self.sync,
            sync_interval: self.sync_interval,
            when_full: self.when_full,
        }
    }
}

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
            .field("password", &REDACTED)
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
    /// At least 1.
    pub max_connections: usize,
    /// Longer than zero.
    pub idle_timeout: Duration,
    /// Only with a `shared_key`; user names non-empty and unique.
    pub users: Vec<UserConfig>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// `None` when the file says `listen = ""`.
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// How long sinks may keep delivering after SIGTERM.
    pub grace_period: Duration,
}

/// Why the config could not be loaded. Display is one line that names the file (or the
/// environment variable), the line and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file exists (or was named) but cannot be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// TOML syntax, an unknown key, or a value of the wrong type or out of range.
    #[error("{}", place(file, Some(*line), key, message))]
    Parse { file: String, line: usize, key: String, message: String },
    /// Values that are fine alone but not together (duplicate names, a missing `path`).
    #[error("{}", place(file, *line, key, message))]
    Invalid { file: String, line: Option<usize>, key: String, message: String },
    /// A `BERTH_*` variable that is malformed or whose value is invalid.
    #[error("environment variable {var}: {}", keyed(key, message))]
    Env { var: String, key: String, message: String },
}

fn pairs(env: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
}

fn keyed(key: &str, message: &str) -> String {
    if key.is_empty() {
        message.to_string()
    } else {
        format!("{key}: {message}")
    }
}

fn place(file: &str, line: Option<usize>, key: &str, message: &str) -> String {
    match line {
        Some(line) => format!("{file}: line {line}: {}", keyed(key, message)),
        None => format!("{file}: {}", keyed(key, message)),
    }
}

impl Config {
    /// `--config`, else `$BERTH_CONFIG`, else /etc/berth/berth.toml if it exists, else
    /// [`BUILTIN_DEFAULTS`]; then `BERTH_<SECTION>__<KEY>` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut vars = Vec::new();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 cannot be one of ours.
            let Some(name) = name.to_str().filter(|n| env::is_override(n) || *n == "BERTH_CONFIG")
            else {
                continue;
            };
            let value = value.into_string().map_err(|_| ConfigError::Env {
                var: name.to_string(),
                key: String::new(),
                message: "the value is not valid UTF-8".to_string(),
            })?;
            vars.push((name.to_string(), value));
        }
        Config::load_with_env(path, &vars)
    }

    /// [`Config::load`] with the environment given (tests, or a caller that read it).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let from_env =
            env.iter().find(|(k, v)| k == "BERTH_CONFIG" && !v.is_empty()).map(|(_, v)| v);
        let chosen = match (path, from_env) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(v)) => Some(PathBuf::from(v)),
            (None, None) => {
                let p = Path::new(DEFAULT_CONFIG_PATH);
                // An unreadable /etc/berth is an error to report, not a reason for defaults.
                (!matches!(p.try_exists(), Ok(false))).then(|| p.to_path_buf())
            }
        };
        match chosen {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                Config::from_toml_str(&text, &p.display().to_string(), pairs(env))
            }
            None => Config::from_toml_str(BUILTIN_DEFAULTS, BUILTIN_SOURCE, pairs(env)),
        }
    }

    /// Parse `text` (named `source` in errors) and apply the `BERTH_*` overrides found in
    /// `env`: `BERTH_<SECTION>__<KEY>` variables; all others (including `BERTH_CONFIG`,
    /// `BERTH_LOG` and any `BERTH_` name without a `__`) are ignored.
    pub fn from_toml_str<I, K, V>(text: &str, source: &str, env: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let overrides = env::collect(env).map_err(|(var, message)| ConfigError::Env {
            var,
            key: String::new(),
            message,
        })?;
        parse(text, source, &overrides)
    }

    /// The effective config as TOML, in the file's format, with `shared_key` and user
    /// passwords shown as `"<redacted>"` when set. Loading the output gives the same config
    /// (secrets aside).
    pub fn to_redacted_toml(&self) -> String {
        let raw = to_raw(self);
        let mut out = format!("# berth effective configuration, from {}\n", self.source);
        if !self.overrides.is_empty() {
            out.push_str(&format!("# with environment overrides: {}\n", self.overrides.join(", ")));
        }
        match toml::to_string(&raw) {
            Ok(body) => out.push_str(&body),
            // Every field is a plain string, number or table: this cannot fail in practice.
            Err(e) => out.push_str(&format!("# cannot print the configuration: {e}\n")),
        }
        out
    }
}

/// What error reporting needs to turn a span into a place.
struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    overrides: &'a [env::Override],
    bases: Vec<usize>,
    /// The document after overrides, kept to name the key an error span falls in.
    tree: DeValue<'a>,
}

impl Ctx<'_> {
    fn error(
        &self,
        span: Range<usize>,
        key: String,
        message: String,
        invalid: bool,
    ) -> ConfigError {
        let file = self.file.to_string();
        match env::origin(self.text, self.overrides, &self.bases, span.start) {
            env::Origin::Line(line) if invalid => {
                ConfigError::Invalid { file, line: Some(line), key, message }
            }
            env::Origin::Line(line) => ConfigError::Parse { file, line, key, message },
            env::Origin::Env(o) => ConfigError::Env { var: o.var.clone(), key, message },
        }
    }

    /// "line 7" or "BERTH_SINK__0__NAME".
    fn describe(&self, span: Range<usize>) -> String {
        match env::origin(self.text, self.overrides, &self.bases, span.start) {
            env::Origin::Line(line) => format!("line {line}"),
            env::Origin::Env(o) => o.var.clone(),
        }
    }

    /// Rephrase serde's messages in the file's vocabulary ("key", not "field") and attach
    /// the key path the span falls in.
    fn deserialize_error(&self, e: &toml::de::Error) -> ConfigError {
        let span = e.span().unwrap_or(0..0);
        let (mut path, on_key) = env::key_at(&self.tree, &span);
        let mut message = e.message().to_string();
        if let Some((name, tail)) =
            message.strip_prefix("unknown field `").and_then(|r| r.split_once('`'))
        {
            if on_key {
                path.pop();
            }
            let expected = tail.strip_prefix(", ").map(|t| format!(" ({t})")).unwrap_or_default();
            message = format!("unknown key \"{name}\"{expected}");
        } else if let Some((name, _)) =
            message.strip_prefix("missing field `").and_then(|r| r.split_once('`'))
        {
            message = format!("missing key \"{name}\"");
        }
        let message = message.replace('`', "\"");
        self.error(span, env::render_path(&path), message, false)
    }
}

fn line_of(text: &str, at: usize) -> usize {
    1 + text.as_bytes()[..at.min(text.len())].iter().filter(|&&b| b == b'\n').count()
}

fn parse(text: &str, file: &str, overrides: &[env::Override]) -> Result<Config, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| ConfigError::Parse {
        file: file.to_string(),
        line: line_of(text, e.span().map_or(0, |s| s.start)),
        key: String::new(),
        message: e.message().replace('`', "\""),
    })?;
    let root_span = doc.span();
    let mut root = Spanned::new(root_span.clone(), DeValue::Table(doc.into_inner()));
    let bases = env::bases(text.len(), overrides);
    for (o, &base) in overrides.iter().zip(&bases) {
        env::apply(&mut root, o, base).map_err(|message| ConfigError::Env {
            var: o.var.clone(),
            key: o.key(),
            message,
        })?;
    }
    let ctx = Ctx { file, text, overrides, bases, tree: root.get_ref().clone() };
    let DeValue::Table(mut table) = root.into_inner() else {
        return Err(ConfigError::Invalid {
            file: file.to_string(),
            line: None,
            key: String::new(),
            message: "the document is not a table".to_string(),
        });
    };
    // `[[sink]]` tables are read one by one, by type (see `sink`).
    let sinks = table.remove("sink");
    let raw = RawConfig::deserialize(toml::de::Deserializer::from(Spanned::new(root_span, table)))
        .map_err(|e| ctx.deserialize_error(&e))?;
    let sinks = match sinks {
        None => Vec::new(),
        Some(v) => {
            let span = v.span();
            let DeValue::Array(items) = v.into_inner() else {
                let message = "invalid type: expected an array of tables ([[sink]])".to_string();
                return Err(ctx.error(span, "sink".to_string(), message, false));
            };
            let mut sinks = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                sinks.push(sink::read(i, item, &ctx)?);
            }
            sinks
        }
    };
    build(raw, sinks, &ctx)
}

fn host_name() -> String {
    let name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

/// The checks that involve several values, then the conversion to the public types.
fn build(
    raw: RawConfig,
    sinks: Vec<(Range<usize>, sink::RawSink)>,
    ctx: &Ctx<'_>,
) -> Result<Config, ConfigError> {
    let f = raw.input.forward;
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

    let sinks = sink::build(sinks, ctx)?;

    // The buffer frees space only by deleting sealed segments: it needs room for two.
    let (seg, max) = (&raw.buffer.segment_size, &raw.buffer.max_size);
    if seg.get_ref().0 == 0 || seg.get_ref().0 > max.get_ref().0 / 2 {
        // Point at whichever of the two the file (or environment) set.
        let (span, key) = if seg.span().is_empty() {
            (max.span(), "buffer.max_size")
        } else {
            (seg.span(), "buffer.segment_size")
        };
        return Err(ctx.error(
            span,
            key.into(),
            format!(
                "buffer.segment_size ({}) must be more than 0 and at most half of buffer.max_size ({})",
                format_size(seg.get_ref().0),
                format_size(max.get_ref().0)
            ),
            true,
        ));
    }
    if raw.buffer.sync_interval.get_ref().0.is_zero() {
        return Err(ctx.error(
            raw.buffer.sync_interval.span(),
            "buffer.sync_interval".into(),
            "must be more than 0s".into(),
            true,
        ));
    }

    let enrich = enrich::build(raw.enrich, ctx)?;

    Ok(Config {
        enrich,
        input: InputConfig {
            forward: ForwardConfig {
                listen: f.listen,
                socket_mode: f.socket_mode.0,
                shared_key: f.shared_key,
                self_hostname: if f.self_hostname.is_empty() {
                    host_name()
                } else {
                    f.self_hostname
                },
                // Bounded by 1 GiB when read, so it fits any usize we build for.
                max_message_size: usize::try_from(f.max_message_size.0).unwrap_or(usize::MAX),
                max_connections: f.max_connections,
                idle_timeout: f.idle_timeout.0,
                users,
            },
        },
        admin: AdminConfig { listen: raw.admin.listen.0 },
        buffer: BufferConfig {
            path: raw.buffer.path,
            max_size: raw.buffer.max_size.get_ref().0,
            segment_size: raw.buffer.segment_size.get_ref().0,
            sync: raw.buffer.sync,
            sync_interval: raw.buffer.sync_interval.get_ref().0,
            when_full: raw.buffer.when_full,
        },
        shutdown: ShutdownConfig { grace_period: raw.shutdown.grace_period.0 },
        sinks,
        source: ctx.file.to_string(),
        overrides: ctx.overrides.iter().map(|o| o.var.clone()).collect(),
    })
}

fn redact(secret: &str) -> String {
    if secret.is_empty() {
        String::new()
    } else {
        REDACTED.to_string()
    }
}

/// The public config back in the file's shape, secrets redacted, for printing.
fn to_raw(c: &Config) -> RawConfig {
    let f = &c.input.forward;
    let none = 0..0;
    RawConfig {
        input: raw::RawInput {
            forward: raw::RawForward {
                listen: f.listen.clone(),
                socket_mode: raw::Mode(f.socket_mode),
                shared_key: redact(&f.shared_key),
                self_hostname: f.self_hostname.clone(),
                max_message_size: raw::Size(f.max_message_size as u64),
                max_connections: f.max_connections,
                idle_timeout: raw::Dur(f.idle_timeout),
                users: f
                    .users
                    .iter()
                    .map(|u| {
                        let user = raw::RawUser {
                            username: Spanned::new(none.clone(), u.username.clone()),
                            password: redact(&u.password),
                        };
                        Spanned::new(none.clone(), user)
                    })
                    .collect(),
            },
        },
        admin: raw::RawAdmin { listen: raw::AdminListen(c.admin.listen) },
        buffer: raw::RawBuffer {
            path: c.buffer.path.clone(),
            max_size: Spanned::new(none.clone(), raw::Size(c.buffer.max_size)),
            segment_size: Spanned::new(none.clone(), raw::Size(c.buffer.segment_size)),
            sync: c.buffer.sync,
            sync_interval: Spanned::new(none.clone(), raw::Dur(c.buffer.sync_interval)),
            when_full: c.buffer.when_full,
        },
        shutdown: raw::RawShutdown { grace_period: raw::Dur(c.shutdown.grace_period) },
        enrich: enrich::to_raw(&c.enrich),
        sink_keys: serde::de::IgnoredAny,
        sink: c.sinks.iter().map(sink::to_raw).collect(),
    }
}

#[cfg(test)]
mod tests;
