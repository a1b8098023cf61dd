//! The drain's decisions that need no I/O, table-tested: which IMDS answers start a drain,
//! the Spot notice, the deadline a drain works to, and how often the lifecycle action is
//! heart-beaten.
//!
//! Facts they rest on (EC2 and EC2 Auto Scaling user guides):
//! - `/latest/meta-data/autoscaling/target-lifecycle-state` is the state the group is moving
//!   the instance to: `InService`, `Terminated`, `Detached`, `Standby`, or a warm-pool state
//!   `Warmed:Stopped`, `Warmed:Running`, `Warmed:Hibernated`, `Warmed:Terminated`. Only
//!   `Terminated` is a scale-in; a warm-pool instance going back to the pool (or being
//!   retired from it) runs no tasks of ours and must not drain.
//! - `/latest/meta-data/spot/instance-action` is 404 until the two-minute notice, then
//!   `{"action": "terminate"|"stop"|"hibernate", "time": "<RFC 3339 UTC>"}`.
//! - A lifecycle hook keeps the instance in `Terminating:Wait` for `HeartbeatTimeout`
//!   seconds after each heartbeat, and at most the hook's global timeout in all: the smaller
//!   of 48 hours and 100 × `HeartbeatTimeout`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most a lifecycle action can be kept waiting, whatever the heartbeats.
pub const HOOK_MAX: Duration = Duration::from_secs(48 * 3600);
/// How many heartbeat timeouts the global timeout is at most.
pub const HOOK_MAX_TIMEOUTS: u32 = 100;
/// The shortest heartbeat interval berth uses (a hook of seconds would make a busy loop).
pub const MIN_HEARTBEAT: Duration = Duration::from_secs(5);

/// Whether a target lifecycle state starts a drain: `Terminated` only.
pub fn lifecycle_starts_drain(target_state: &str) -> bool {
    target_state.trim() == "Terminated"
}

/// What the Spot service will do to the instance, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpotNotice {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    pub time: SystemTime,
}

/// The body of `spot/instance-action`.
pub fn parse_spot_notice(body: &str) -> Result<SpotNotice, String> {
    #[derive(serde::Deserialize)]
    struct Raw {
        action: String,
        time: String,
    }
    let raw: Raw = serde_json::from_str(body)
        .map_err(|e| format!("not a Spot instance-action notice ({e}): {body:.200}"))?;
    let t = crate::calendar::parse_rfc3339(&raw.time)
        .ok_or_else(|| format!("the Spot notice's time {:?} is not RFC 3339", raw.time))?;
    let secs = u64::try_from(t.secs)
        .map_err(|_| format!("the Spot notice's time {:?} is before 1970", raw.time))?;
    let time = UNIX_EPOCH + Duration::new(secs, t.nanos);
    if !matches!(raw.action.as_str(), "terminate" | "stop" | "hibernate") {
        return Err(format!("unknown Spot action {:?}", raw.action));
    }
    Ok(SpotNotice { action: raw.action, time })
}

/// The longest a lifecycle action can wait: the hook's global timeout when the API gave it,
/// else the smaller of 48 h and 100 × `HeartbeatTimeout`.
pub fn hook_limit(heartbeat_timeout: Duration, global_timeout: Option<Duration>) -> Duration {
    let documented = HOOK_MAX.min(heartbeat_timeout * HOOK_MAX_TIMEOUTS);
    global_timeout.map_or(documented, |g| g.min(documented))
}

/// What bounds a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// The lifecycle hook's limit, from the drain's start.
    Hook { heartbeat_timeout: Duration, global_timeout: Option<Duration> },
    /// A Spot notice: the instance goes at this time.
    Spot(SystemTime),
    /// No hook and no notice (an operator's drain, a drain on shutdown).
    None,
}

/// The drain's deadline: the earliest of `max_duration` from the start, the bound's, and an
/// operator's `requested` deadline. A Spot deadline already past is now (drain at once).
pub fn deadline(
    start: SystemTime,
    bound: Bound,
    max_duration: Duration,
    requested: Option<SystemTime>,
) -> SystemTime {
    let mut d = start + max_duration;
    match bound {
        Bound::Hook { heartbeat_timeout, global_timeout } => {
            d = d.min(start + hook_limit(heartbeat_timeout, global_timeout));
        }
        Bound::Spot(at) => d = d.min(at.max(start)),
        Bound::None => {}
    }
    if let Some(r) = requested {
        d = d.min(r.max(start));
    }
    d
}

/// How often to heart-beat: `fraction` of the hook's `HeartbeatTimeout` (a fraction outside
/// (0, 1) is taken as 0.5), never more often than [`MIN_HEARTBEAT`] unless the timeout
/// itself is shorter (then at half of it).
pub fn heartbeat_every(heartbeat_timeout: Duration, fraction: f64) -> Duration {
    let f = if fraction > 0.0 && fraction < 1.0 { fraction } else { 0.5 };
    let every = heartbeat_timeout.mul_f64(f);
    if heartbeat_timeout <= MIN_HEARTBEAT * 2 {
        heartbeat_timeout / 2
    } else {
        every.max(MIN_HEARTBEAT)
    }
}

/// Whether another heartbeat is worth sending: the action still waits (`now` before the
/// deadline), and the last heartbeat is `every` ago.
pub fn heartbeat_due(
    last: Option<SystemTime>,
    every: Duration,
    now: SystemTime,
    deadline: SystemTime,
) -> bool {
    if now >= deadline {
        return false;
    }
    last.is_none_or(|l| now.duration_since(l).is_ok_and(|d| d >= every))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn only_terminated_starts_a_drain() {
        for (state, starts) in [
            ("Terminated", true),
            ("Terminated\n", true),
            ("InService", false),
            ("Detached", false),
            ("Standby", false),
            ("Warmed:Terminated", false),
            ("Warmed:Stopped", false),
            ("Warmed:Running", false),
            ("Warmed:Hibernated", false),
            ("", false),
        ] {
            assert_eq!(lifecycle_starts_drain(state), starts, "{state:?}");
        }
    }

    #[test]
    fn spot_notices_parse_and_bad_ones_say_why() {
        let n = parse_spot_notice(r#"{"action": "terminate", "time": "2017-09-18T08:22:00Z"}"#)
            .unwrap();
        assert_eq!(n.action, "terminate");
        assert_eq!(n.time, at(1_505_722_920));
        assert_eq!(
            parse_spot_notice(r#"{"action":"stop","time":"2017-09-18T08:22:00Z"}"#).unwrap().action,
            "stop"
        );
        for (bad, says) in [
            ("", "not a Spot instance-action notice"),
            (r#"{"action":"terminate"}"#, "missing field"),
            (r#"{"action":"terminate","time":"soon"}"#, "is not RFC 3339"),
            (
                r#"{"action":"reboot","time":"2017-09-18T08:22:00Z"}"#,
                "unknown Spot action \"reboot\"",
            ),
        ] {
            let e = parse_spot_notice(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_hook_limit_is_the_smaller_of_48h_and_100_heartbeat_timeouts() {
        let h = |s: u64| Duration::from_secs(s);
        for (ht, global, want) in [
            (h(3600), None, h(48 * 3600)),    // 100 h > 48 h
            (h(600), None, h(60_000)),        // 100 × 10 min = 16 h 40 min
            (h(30), None, h(3000)),           // the minimum heartbeat timeout
            (h(7200), None, h(48 * 3600)),    // the maximum
            (h(600), Some(h(3600)), h(3600)), // the API's own global timeout
            (h(600), Some(h(200_000)), h(60_000)),
        ] {
            assert_eq!(hook_limit(ht, global), want, "{ht:?} {global:?}");
        }
    }

    #[test]
    fn the_deadline_is_the_earliest_bound() {
        let start = at(1_000_000);
        let hook =
            Bound::Hook { heartbeat_timeout: Duration::from_secs(600), global_timeout: None };
        let h48 = Duration::from_secs(48 * 3600);
        assert_eq!(deadline(start, hook, h48, None), start + Duration::from_secs(60_000));
        assert_eq!(
            deadline(start, hook, Duration::from_secs(3600), None),
            start + Duration::from_secs(3600)
        );
        assert_eq!(
            deadline(start, Bound::Spot(start + Duration::from_secs(120)), h48, None),
            start + Duration::from_secs(120)
        );
        assert_eq!(
            deadline(start, Bound::Spot(start - Duration::from_secs(5)), h48, None),
            start,
            "a notice already past: now"
        );
        assert_eq!(
            deadline(start, Bound::None, h48, Some(start + Duration::from_secs(7200))),
            start + Duration::from_secs(7200)
        );
        assert_eq!(deadline(start, Bound::None, h48, None), start + h48);
    }

    #[test]
    fn heartbeats_at_a_fraction_of_the_timeout_and_never_past_the_deadline() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat_every(s(600), 0.5), s(300));
        assert_eq!(heartbeat_every(s(600), 0.25), s(150));
        assert_eq!(heartbeat_every(s(600), 1.5), s(300), "out of range: one half");
        assert_eq!(heartbeat_every(s(600), 0.0), s(300));
        assert_eq!(heartbeat_every(s(30), 0.1), s(5), "not more often than every 5 s");
        assert_eq!(heartbeat_every(s(8), 0.5), s(4), "a tiny timeout: half of it");
        let deadline = at(1000);
        assert!(heartbeat_due(None, s(300), at(0), deadline));
        assert!(!heartbeat_due(Some(at(0)), s(300), at(299), deadline));
        assert!(heartbeat_due(Some(at(0)), s(300), at(300), deadline));
        assert!(!heartbeat_due(Some(at(600)), s(300), at(1000), deadline), "at the deadline: none");
        assert!(
            !heartbeat_due(Some(at(600)), s(300), at(500), deadline),
            "a clock that went back: wait"
        );
    }
}
