//! The file as a whole, and the small sections `[admin]` and `[shutdown]`: what serde reads
//! (and what `check-config` prints). The other sections' keys are in their own files.
//!
//! Every single-value check happens inside `Deserialize` (the newtypes of `values` and
//! `deserialize_with` functions), so that toml attaches the value's span to the error and
//! the message can name the line. Checks that need several values run afterwards in each
//! section's `build`, with `Spanned` fields keeping the positions they report.
//!
//! The `///` comments on the `Raw*` structs are the reference for `docs/configuration.md`.

use super::buffer::RawBuffer;
use super::capacity::{RawCapacity, RawEcs};
use super::drain::RawDrain;
use super::enrich::RawEnrich;
use super::forward::RawInput;
use super::units;
use super::values::{AdminListen, Dur};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// berth's own log lines.
    #[serde(default)]
    pub log: RawLog,
    /// Docker-aware processing: metadata added to records as they arrive (Docker, ECS,
    /// EC2), split lines and multiline groups joined on the way to the sinks.
    #[serde(default)]
    pub enrich: RawEnrich,
    /// The ECS agent on this host and the AWS identity of capacity's and the drain's calls.
    #[serde(default)]
    pub ecs: RawEcs,
    /// Per-host free capacity: computed from the ECS agent, Docker and the task cgroups,
    /// published to Prometheus and CloudWatch, and scale-in protection while busy.
    #[serde(default)]
    pub capacity: RawCapacity,
    /// Safe draining of this host before it is terminated.
    #[serde(default)]
    pub drain: RawDrain,
    /// `[[sink]]`: where logs go; at least one, names unique. Read by `sink::read` (one
    /// struct per type), so only named here for serde's list of keys.
    #[serde(default, rename = "sink", skip_serializing)]
    #[allow(dead_code)] // never holds anything: `parse` takes the sinks out first
    pub sink_keys: serde::de::IgnoredAny,
    /// The sinks, for printing.
    #[serde(skip_deserializing, rename = "sink", skip_serializing_if = "Vec::is_empty")]
    pub sink: Vec<super::sink::RawSink>,
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

/// `[log]`
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// A level (`info`, `debug`) or a tracing filter (`berth=debug,info`); re-read on SIGHUP.
    /// `--log-level` (or `BERTH_LOG`) on the command line wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<toml::Spanned<String>>,
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

// --- named defaults --------------------------------------------------------------------

pub(super) const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:24220";

fn default_admin_listen() -> AdminListen {
    AdminListen(units::parse_host_port(DEFAULT_ADMIN_LISTEN).ok())
}

fn default_grace_period() -> Dur {
    // ECS sends SIGKILL 30 s after SIGTERM (stopTimeout); leave 5 s to flush and exit.
    Dur(Duration::from_secs(25))
}
