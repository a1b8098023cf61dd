//! The one warn rate limiter: a client that sends garbage in a loop, or a sink retrying a
//! failed write every few seconds for an hour, must not flood the log.
//!
//! At most `per_interval` messages per interval, the interval starting at the first message
//! let through after the previous one ended; the rest are counted, so the next message that
//! passes can say how many were suppressed. Two uses:
//!
//! - [`RateLimit::check`]: one budget for every message of a kind (a `static` per call site,
//!   shared by all connections).
//! - [`RateLimit::check_key`]: the same, but a message different from the last (its key)
//!   starts afresh: the stdout and file sinks warn once per distinct error, and again only
//!   when it persists past the interval.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimit {
    per_interval: u64,
    interval: Duration,
    state: Mutex<State>,
}

struct State {
    /// The key of the last message (`check_key`).
    key: Option<String>,
    /// When the current interval started; `None` before the first message.
    started: Option<Instant>,
    in_window: u64,
    suppressed: u64,
}

impl RateLimit {
    pub const fn new(per_interval: u64, interval_secs: u64) -> RateLimit {
        RateLimit {
            per_interval,
            interval: Duration::from_secs(interval_secs),
            state: Mutex::new(State { key: None, started: None, in_window: 0, suppressed: 0 }),
        }
    }

    /// `Some(n)` when this message may be logged, `n` being how many were suppressed since
    /// the last one that was; `None` when it must be dropped.
    pub fn check(&self) -> Option<u64> {
        self.check_at(None, Instant::now())
    }

    /// Like [`RateLimit::check`], but a `key` different from the last one's starts a new
    /// interval at once.
    pub fn check_key(&self, key: &str) -> Option<u64> {
        self.check_at(Some(key), Instant::now())
    }

    /// Forget the past: the next message passes (the problem it warned of is over).
    pub fn reset(&self) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        *s = State { key: None, started: None, in_window: 0, suppressed: 0 };
    }

    fn check_at(&self, key: Option<&str>, now: Instant) -> Option<u64> {
        // A panic while holding the lock leaves plain counters behind: keep going.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let new_key = key.is_some_and(|k| s.key.as_deref() != Some(k));
        let ended = s.started.is_none_or(|at| now.saturating_duration_since(at) >= self.interval);
        if new_key || ended {
            s.started = Some(now);
            s.in_window = 0;
        }
        if new_key {
            s.key = key.map(str::to_owned);
        }
        if s.in_window < self.per_interval {
            s.in_window += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn limits_per_window_and_reports_suppressed() {
        let rl = RateLimit::new(2, 10);
        let t = Instant::now();
        assert_eq!(rl.check_at(None, at(t, 100)), Some(0));
        assert_eq!(rl.check_at(None, at(t, 101)), Some(0));
        assert_eq!(rl.check_at(None, at(t, 102)), None);
        assert_eq!(rl.check_at(None, at(t, 103)), None);
        assert_eq!(rl.check_at(None, at(t, 110)), Some(2));
    }

    /// The stdout and file sinks' use: once per distinct error, again after the interval
    /// while it persists, and at once after a reset (the writes recovered).
    #[test]
    fn warnings_once_per_distinct_key() {
        let w = RateLimit::new(1, 300);
        let t = Instant::now();
        assert!(w.check_at(Some("a"), t).is_some());
        assert!(w.check_at(Some("a"), at(t, 1)).is_none());
        assert!(w.check_at(Some("b"), at(t, 2)).is_some());
        assert!(w.check_at(Some("a"), at(t, 3)).is_some());
        assert!(w.check_at(Some("a"), at(t, 302)).is_none(), "300 s after its last warning");
        assert_eq!(w.check_at(Some("a"), at(t, 303)), Some(1), "the repeat was counted");
        w.reset();
        assert!(w.check_at(Some("a"), at(t, 304)).is_some());
    }
}
