//! Typed configuration: the TOML file, `BERTH_<SECTION>__<KEY>` environment overrides on
//! top of it, validated once at load into the types below. Nothing downstream re-checks a
//! value or sees a string where a type fits.
//!
//! Layers: `env` edits the parsed document before it is deserialized; each section's file
//! is the section's keys as written (`Raw*` structs, serde, per-value checks inside
//! `Deserialize` — `values` — so errors carry a line), the checks that span several of its
//! values and its typed config: `forward`, `buffer`, `enrich`, `aws` (shared by both AWS
//! sinks), and per sink type `local` (stdout, file, null), `elasticsearch`, `cloudwatch`,
//! with `sink` reading a `[[sink]]` table by its `type` and `network` the keys both network
//! sinks share. `raw` is the whole file, `build` (here) puts the sections together into
//! [`Config`], `error` names the place of an error. Adding a key is one field with its
//! `///` doc in its section's struct. The reference for users is `docs/configuration.md`.
//!
//! The sinks build their runtime types from these plain types; this module depends on no
//! sink (nor on `enrich`): limits it checks against are its own constants, checked against
//! the sinks' at compile time.
//!
//! This module never touches the network or the file system beyond reading the one
//! config file, and never exits the process: errors are returned as [`ConfigError`].

mod aws;
mod buffer;
pub mod capacity;
pub mod cloudwatch;
pub mod drain;
pub mod elasticsearch;
pub mod enrich;
mod env;
mod error;
mod forward;
mod local;
mod network;
mod raw;
mod sink;
mod table;
mod units;
mod values;

pub use aws::AwsAuth;
pub use buffer::{BufferConfig, SyncMode, WhenFull};
pub use capacity::{CapacityConfig, Dimension, EcsConfig, TaskShape};
pub use cloudwatch::CloudWatchConfig;
pub use drain::{DrainConfig, LifecycleResult, Watch};
pub use elasticsearch::{ElasticsearchConfig, EsAuth, SigV4Auth, SigV4Service};
pub use enrich::{
    ApplyTo, CopyKey, DockerEnrichConfig, DockerField, Ec2EnrichConfig, EnrichConfig,
};
pub use error::ConfigError;
use error::{line_of, Ctx};
#[cfg(test)]
use forward::host_name;
pub use forward::{ForwardConfig, InputConfig, ListenAddr, UserConfig};
pub use local::Format;
pub use network::NetworkOptions;
use raw::RawConfig;
use serde::Deserialize;
pub use sink::{SinkConfig, SinkKind};
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
    /// `[log]`: berth's own log filter; `None`: the command line's (default `info`).
    pub log_level: Option<String>,
    /// `[enrich]`: Docker, ECS and EC2 fields added at the input; split lines and
    /// multiline groups joined on the way to the sinks.
    pub enrich: EnrichConfig,
    /// `[ecs]`: the ECS agent, and the AWS identity of capacity's and the drain's calls.
    pub ecs: EcsConfig,
    /// `[capacity]`: per-host free capacity, its publishers, scale-in protection.
    pub capacity: CapacityConfig,
    /// `[drain]`: safe draining of this host.
    pub drain: DrainConfig,
    /// `[[sink]]`: at least one, names unique, in file order.
    pub sinks: Vec<SinkConfig>,
    /// Where the config came from: the file path, or [`BUILTIN_SOURCE`].
    pub source: String,
    /// The `BERTH_*` variables that overrode a key, in the order they were applied.
    pub overrides: Vec<String>,
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

fn pairs(env: &[(String, String)]) -> impl Iterator<Item = (&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str()))
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

/// Parse, typing each override by the key it sets: a value that reads as a number or a
/// boolean (`BERTH_INPUT__FORWARD__SHARED_KEY=987654321`) but sets a string key is taken as
/// the string, found by the type error it causes and parsed again (once per such variable).
fn parse(text: &str, file: &str, overrides: &[env::Override]) -> Result<Config, ConfigError> {
    let mut overrides = overrides.to_vec();
    loop {
        match parse_once(text, file, &overrides) {
            Err(ConfigError::Env { var, message, .. })
                if message.starts_with("invalid type:")
                    && message.contains("expected a string")
                    && overrides.iter().any(|o| o.var == var && !o.literal) =>
            {
                for o in overrides.iter_mut().filter(|o| o.var == var) {
                    o.literal = true;
                }
            }
            other => return other,
        }
    }
}

fn parse_once(text: &str, file: &str, overrides: &[env::Override]) -> Result<Config, ConfigError> {
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

/// The checks that involve several values, then the conversion to the public types.
fn build(
    raw: RawConfig,
    sinks: Vec<(Range<usize>, sink::RawSink)>,
    ctx: &Ctx<'_>,
) -> Result<Config, ConfigError> {
    let input = forward::build(raw.input, ctx)?;
    let sinks = sink::build(sinks, ctx)?;

    let buffer = buffer::build(raw.buffer, ctx)?;
    let enrich = enrich::build(raw.enrich, ctx)?;
    let ecs = capacity::build_ecs(raw.ecs, ctx)?;
    let capacity = capacity::build(raw.capacity, ctx)?;
    let drain = drain::build(raw.drain, raw.shutdown.grace_period.0, ctx)?;
    let log_level = match &raw.log.level {
        Some(l) => {
            let level = l.get_ref().trim().to_string();
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
                return Err(ctx.error(
                    l.span(),
                    "log.level".into(),
                    format!("{level:?} is not a level or a filter (e.g. \"info\", \"berth=debug,info\"): {e}"),
                    true,
                ));
            }
            Some(level).filter(|l| !l.is_empty())
        }
        None => None,
    };

    Ok(Config {
        enrich,
        ecs,
        capacity,
        drain,
        input,
        admin: AdminConfig { listen: raw.admin.listen.0 },
        buffer,
        shutdown: ShutdownConfig { grace_period: raw.shutdown.grace_period.0 },
        log_level,
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
    RawConfig {
        input: forward::to_raw(&c.input),
        admin: raw::RawAdmin { listen: values::AdminListen(c.admin.listen) },
        buffer: buffer::to_raw(&c.buffer),
        shutdown: raw::RawShutdown { grace_period: values::Dur(c.shutdown.grace_period) },
        log: raw::RawLog { level: c.log_level.clone().map(|l| toml::Spanned::new(0..0, l)) },
        enrich: enrich::to_raw(&c.enrich),
        ecs: capacity::ecs_to_raw(&c.ecs),
        capacity: capacity::to_raw(&c.capacity),
        drain: drain::to_raw(&c.drain),
        sink_keys: serde::de::IgnoredAny,
        sink: c.sinks.iter().map(sink::to_raw).collect(),
    }
}

#[cfg(test)]
mod tests;
