//! `[drain]`: safe draining of this host — the keys as written, their checks and the typed
//! config.

use super::values::{de_parsed, one_of, Dur};
use super::{ConfigError, Ctx};
use serde::de::Deserializer;
use serde::{Deserialize, Serialize, Serializer};
use std::time::Duration;
use toml::Spanned;

/// `[drain]`
#[derive(Debug, Clone)]
pub struct DrainConfig {
    pub enabled: bool,
    pub watch: Vec<Watch>,
    pub poll_interval: Duration,
    /// `None`: the group's `autoscaling:EC2_INSTANCE_TERMINATING` hook, discovered.
    pub lifecycle_hook_name: Option<String>,
    /// `None`: this instance's group, discovered.
    pub auto_scaling_group_name: Option<String>,
    pub max_duration: Duration,
    pub heartbeat_fraction: f64,
    pub result_on_timeout: LifecycleResult,
    pub drain_on_shutdown: bool,
    /// The time between SIGTERM and SIGKILL (the ECS task's `stopTimeout`, the unit's
    /// `TimeoutStopSec`): a SIGTERM during a drain waits for it until this minus
    /// `shutdown.grace_period`, then shuts down as usual.
    pub stop_timeout: Duration,
}

/// What starts a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Watch {
    /// IMDS `autoscaling/target-lifecycle-state` becoming `Terminated`.
    AsgLifecycle,
    /// IMDS `spot/instance-action`: the two-minute notice.
    SpotInterruption,
    /// IMDS `events/recommendations/rebalance`: a soft drain.
    Rebalance,
    /// IMDS `events/maintenance/scheduled`: a soft drain.
    ScheduledEvents,
}

impl Watch {
    pub const ALL: [Watch; 4] =
        [Watch::AsgLifecycle, Watch::SpotInterruption, Watch::Rebalance, Watch::ScheduledEvents];

    pub fn as_str(self) -> &'static str {
        match self {
            Watch::AsgLifecycle => "asg_lifecycle",
            Watch::SpotInterruption => "spot_interruption",
            Watch::Rebalance => "rebalance",
            Watch::ScheduledEvents => "scheduled_events",
        }
    }
}

/// How a lifecycle action is completed (`LifecycleActionResult`), and a hook's
/// `DefaultResult`. For a terminating hook both end in termination; `ABANDON` skips the
/// group's other terminating hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleResult {
    /// `CONTINUE`.
    Continue,
    /// `ABANDON`.
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

impl<'de> Deserialize<'de> for Watch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            Watch::ALL.into_iter().find(|w| w.as_str() == s).ok_or_else(|| {
                let known: Vec<_> = Watch::ALL.iter().map(|w| w.as_str()).collect();
                format!("unknown trigger {s:?} (expected one of {})", known.join(", "))
            })
        })
    }
}

impl Serialize for Watch {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LifecycleResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_parsed(d, |s| {
            one_of(
                s,
                "result",
                &[("CONTINUE", LifecycleResult::Continue), ("ABANDON", LifecycleResult::Abandon)],
            )
        })
    }
}

impl Serialize for LifecycleResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// `[drain]`
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    /// Drain this host when it is to be terminated: DRAINING, wait for the tasks while
    /// heart-beating the lifecycle hook, flush their logs, complete the action.
    #[serde(default = "off")]
    pub enabled: Spanned<bool>,
    /// What starts a drain: `asg_lifecycle`, `spot_interruption` (a fast drain to the
    /// notice's time), `rebalance`, `scheduled_events` (soft drains).
    #[serde(default = "default_watch")]
    pub watch: Spanned<Vec<Spanned<Watch>>>,
    /// How often IMDS is asked. At least 1 s.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: Spanned<Dur>,
    /// The lifecycle hook to heart-beat and complete; empty: the group's
    /// `autoscaling:EC2_INSTANCE_TERMINATING` hook, discovered.
    #[serde(default)]
    pub lifecycle_hook_name: String,
    /// This instance's Auto Scaling group; empty: discovered.
    #[serde(default)]
    pub auto_scaling_group_name: String,
    /// The longest a drain waits for the tasks; never beyond the hook's own limit (the
    /// smaller of 48 h and 100 × its heartbeat timeout) or a Spot notice's time.
    #[serde(default = "default_max_duration")]
    pub max_duration: Spanned<Dur>,
    /// Heartbeats at this fraction of the hook's heartbeat timeout; more than 0, less than 1.
    #[serde(default = "default_fraction")]
    pub heartbeat_fraction: Spanned<f64>,
    /// `CONTINUE` or `ABANDON`: how the action is completed when the deadline comes first.
    #[serde(default = "default_result")]
    pub result_on_timeout: LifecycleResult,
    /// Drain when berth is stopped (SIGTERM) outside a drain: the systemd unit's stop.
    #[serde(default)]
    pub drain_on_shutdown: bool,
    /// The time berth is given between SIGTERM and SIGKILL (the ECS daemon task's
    /// `stopTimeout`, at most 120 s; the systemd unit's `TimeoutStopSec`). A SIGTERM during
    /// a drain lets the drain go on until this minus `shutdown.grace_period`.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: Spanned<Dur>,
}

impl Default for RawDrain {
    fn default() -> Self {
        RawDrain {
            enabled: off(),
            watch: default_watch(),
            poll_interval: default_poll_interval(),
            lifecycle_hook_name: String::new(),
            auto_scaling_group_name: String::new(),
            max_duration: default_max_duration(),
            heartbeat_fraction: default_fraction(),
            result_on_timeout: default_result(),
            drain_on_shutdown: false,
            stop_timeout: default_stop_timeout(),
        }
    }
}

fn off() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_watch() -> Spanned<Vec<Spanned<Watch>>> {
    Spanned::new(
        0..0,
        vec![Spanned::new(0..0, Watch::AsgLifecycle), Spanned::new(0..0, Watch::SpotInterruption)],
    )
}
fn default_poll_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(5)))
}
fn default_max_duration() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(48 * 3600)))
}
fn default_fraction() -> Spanned<f64> {
    Spanned::new(0..0, 0.5)
}
fn default_stop_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(120)))
}
fn default_result() -> LifecycleResult {
    LifecycleResult::Continue
}

/// `grace_period`: `[shutdown] grace_period`, which the stop timeout must leave room for.
pub(super) fn build(
    raw: RawDrain,
    grace_period: Duration,
    ctx: &Ctx<'_>,
) -> Result<DrainConfig, ConfigError> {
    let err = |span: std::ops::Range<usize>, key: &str, message: String| {
        ctx.error(span, format!("drain.{key}"), message, true)
    };
    let mut watch = Vec::new();
    for w in raw.watch.get_ref() {
        if watch.contains(w.get_ref()) {
            return Err(err(
                w.span(),
                "watch",
                format!("{:?} is listed twice", w.get_ref().as_str()),
            ));
        }
        watch.push(*w.get_ref());
    }
    let enabled = *raw.enabled.get_ref();
    if enabled && watch.is_empty() && !raw.drain_on_shutdown {
        return Err(err(
            raw.watch.span(),
            "watch",
            "nothing would start a drain (empty watch, drain_on_shutdown off)".into(),
        ));
    }
    if raw.poll_interval.get_ref().0 < Duration::from_secs(1) {
        return Err(err(raw.poll_interval.span(), "poll_interval", "must be at least 1s".into()));
    }
    if raw.max_duration.get_ref().0.is_zero() {
        return Err(err(raw.max_duration.span(), "max_duration", "must be more than 0s".into()));
    }
    let f = *raw.heartbeat_fraction.get_ref();
    if !(f > 0.0 && f < 1.0) {
        return Err(err(
            raw.heartbeat_fraction.span(),
            "heartbeat_fraction",
            format!("{f} must be more than 0 and less than 1 (a heartbeat before the timeout)"),
        ));
    }
    let stop = raw.stop_timeout.get_ref().0;
    if enabled && stop <= grace_period {
        return Err(err(
            raw.stop_timeout.span(),
            "stop_timeout",
            format!(
                "{stop:?} leaves no time to finish a drain after SIGTERM: it must be more than shutdown.grace_period ({grace_period:?})"
            ),
        ));
    }
    let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
    Ok(DrainConfig {
        enabled,
        watch,
        poll_interval: raw.poll_interval.get_ref().0,
        lifecycle_hook_name: opt(&raw.lifecycle_hook_name),
        auto_scaling_group_name: opt(&raw.auto_scaling_group_name),
        max_duration: raw.max_duration.get_ref().0,
        heartbeat_fraction: f,
        result_on_timeout: raw.result_on_timeout,
        drain_on_shutdown: raw.drain_on_shutdown,
        stop_timeout: stop,
    })
}

pub(super) fn to_raw(c: &DrainConfig) -> RawDrain {
    let sp = |v| Spanned::new(0..0, v);
    RawDrain {
        enabled: Spanned::new(0..0, c.enabled),
        watch: Spanned::new(0..0, c.watch.iter().map(|w| sp(*w)).collect()),
        poll_interval: Spanned::new(0..0, Dur(c.poll_interval)),
        lifecycle_hook_name: c.lifecycle_hook_name.clone().unwrap_or_default(),
        auto_scaling_group_name: c.auto_scaling_group_name.clone().unwrap_or_default(),
        max_duration: Spanned::new(0..0, Dur(c.max_duration)),
        heartbeat_fraction: Spanned::new(0..0, c.heartbeat_fraction),
        result_on_timeout: c.result_on_timeout,
        drain_on_shutdown: c.drain_on_shutdown,
        stop_timeout: Spanned::new(0..0, Dur(c.stop_timeout)),
    }
}
