//! The keys both network sinks (`elasticsearch`, `cloudwatch_logs`) have, checked the same
//! way for both: `flush_interval`, `concurrency`, `timeout`, `max_retry_duration`,
//! `dead_letter_path`; and what an endpoint URL must look like.

use super::values::{Dur, LimitDur, Size};
use super::{ConfigError, Ctx};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CONCURRENCY: usize = 4;
/// More requests in flight than this only queue on the other side.
pub const MAX_CONCURRENCY: usize = 64;

/// The shared keys as written, flattened into the table of each network sink.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    /// How long to wait for more events before sending a request that is not full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_interval: Option<Spanned<Dur>>,
    /// Requests in flight at once, 1 to 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Spanned<i64>>,
    /// Timeout of each request; a timed-out request is retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Spanned<Dur>>,
    /// How long a request is retried before its events go to the dead-letter file; `""` or
    /// `"0s"`: for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retry_duration: Option<Spanned<LimitDur>>,
    /// JSON lines file for the events that can never be delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_path: Option<Spanned<String>>,
    /// The most the dead-letter file and its one older generation (`<path>.1`) hold
    /// together; past half of it the file is rotated and the older generation dropped
    /// (counted). `"0"`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_max_size: Option<Spanned<Size>>,
}

/// The dead-letter files' default cap: rejects must not fill the buffer's disk.
pub const DEFAULT_DEAD_LETTER_MAX_SIZE: u64 = 256 << 20;

/// The keys both network sinks have, checked: how they batch, how many requests they keep
/// in flight, how long a request and its retries may take, and where what they cannot
/// deliver goes.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// A batch is sent at the latest this long after its first event.
    pub flush_interval: Duration,
    /// Requests in flight at once, 1 to `MAX_CONCURRENCY` (the `elasticsearch` sink's
    /// `_bulk` bodies; `cloudwatch_logs`' PutLogEvents calls, each for a different stream).
    pub concurrency: usize,
    pub timeout: Duration,
    /// A batch still not delivered after being retried this long goes to the dead-letter
    /// file (`retry_expired`); `None`: retried for ever (the default).
    pub max_retry_duration: Option<Duration>,
    pub dead_letter_path: PathBuf,
    /// The dead-letter file and its older generation hold at most this; `None`: no limit.
    pub dead_letter_max_size: Option<u64>,
}

pub(super) fn network_options(
    s: &RawNetwork,
    name: &str,
    i: usize,
    ctx: &Ctx<'_>,
) -> Result<NetworkOptions, ConfigError> {
    let invalid = |span: std::ops::Range<usize>, k: &str, message: String| {
        ctx.error(span, format!("sink[{i}].{k}"), message, true)
    };
    let concurrency = match &s.concurrency {
        None => DEFAULT_CONCURRENCY,
        Some(n) if (1..=MAX_CONCURRENCY as i64).contains(n.get_ref()) => *n.get_ref() as usize,
        Some(n) => {
            return Err(invalid(
                n.span(),
                "concurrency",
                format!("must be from 1 to {MAX_CONCURRENCY}"),
            ))
        }
    };
    let flush_interval =
        s.flush_interval.as_ref().map_or(DEFAULT_FLUSH_INTERVAL, |d| d.get_ref().0);
    let timeout = s.timeout.as_ref().map_or(DEFAULT_TIMEOUT, |d| d.get_ref().0);
    if let Some(t) = s.timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
        return Err(invalid(t.span(), "timeout", "must be more than 0s".into()));
    }
    // "" and "0s" both mean "for ever"; a limit shorter than one request could time out
    // would dead-letter a batch on the first slow answer, which is never what is meant.
    let max_retry_duration =
        s.max_retry_duration.as_ref().map_or(Duration::ZERO, |d| d.get_ref().0);
    if let Some(d) = s
        .max_retry_duration
        .as_ref()
        .filter(|d| !d.get_ref().0.is_zero() && d.get_ref().0 < timeout)
    {
        return Err(invalid(
            d.span(),
            "max_retry_duration",
            format!(
                "must be \"\" or \"0s\" (retry for ever), or at least the request timeout ({})",
                super::units::format_duration(timeout)
            ),
        ));
    }
    let dead_letter_path = match &s.dead_letter_path {
        None => PathBuf::from(format!("/var/lib/berth/dead-letter/{name}.ndjson")),
        Some(p) if p.get_ref().is_empty() => {
            return Err(invalid(p.span(), "dead_letter_path", "must not be empty".into()))
        }
        Some(p) => PathBuf::from(p.get_ref()),
    };
    let max =
        s.dead_letter_max_size.as_ref().map_or(DEFAULT_DEAD_LETTER_MAX_SIZE, |m| m.get_ref().0);
    if let Some(m) =
        s.dead_letter_max_size.as_ref().filter(|m| m.get_ref().0 != 0 && m.get_ref().0 < 1 << 20)
    {
        return Err(invalid(
            m.span(),
            "dead_letter_max_size",
            "must be \"0\" (no limit) or at least 1MiB".into(),
        ));
    }
    Ok(NetworkOptions {
        flush_interval,
        concurrency,
        timeout,
        max_retry_duration: (!max_retry_duration.is_zero()).then_some(max_retry_duration),
        dead_letter_path,
        dead_letter_max_size: (max != 0).then_some(max),
    })
}

/// Whether `u` is an `http://` or `https://` URL with a host.
pub(super) fn is_http_url(u: &str) -> bool {
    let host = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    host.is_some_and(|h| !h.is_empty() && !h.starts_with('/') && !h.contains(char::is_whitespace))
}

/// The checked keys back in the file's shape.
pub(super) fn to_raw(n: &NetworkOptions) -> RawNetwork {
    fn sp<T>(v: T) -> Option<Spanned<T>> {
        Some(Spanned::new(0..0, v))
    }
    RawNetwork {
        flush_interval: sp(Dur(n.flush_interval)),
        concurrency: sp(n.concurrency as i64),
        timeout: sp(Dur(n.timeout)),
        max_retry_duration: sp(LimitDur(n.max_retry_duration.unwrap_or(Duration::ZERO))),
        dead_letter_path: sp(n.dead_letter_path.display().to_string()),
        dead_letter_max_size: sp(Size(n.dead_letter_max_size.unwrap_or(0))),
    }
}
