//! Rate-limited warnings: a client that sends garbage in a loop must not flood the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lets through at most `per_interval` events per `interval_secs`, and counts the rest so the
/// next message that passes can say how many were suppressed.
pub struct RateLimit {
    per_interval: u64,
    interval_secs: u64,
    window: AtomicU64,
    in_window: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimit {
    pub const fn new(per_interval: u64, interval_secs: u64) -> RateLimit {
        RateLimit {
            per_interval,
            interval_secs,
            window: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event may be logged, `n` being how many were suppressed since the
    /// last one that was; `None` when it must be dropped.
    pub fn check(&self) -> Option<u64> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.check_at(now)
    }

    fn check_at(&self, now_secs: u64) -> Option<u64> {
        let window = now_secs / self.interval_secs.max(1);
        if self.window.swap(window, Ordering::Relaxed) != window {
            self.in_window.store(0, Ordering::Relaxed);
        }
        if self.in_window.fetch_add(1, Ordering::Relaxed) < self.per_interval {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_window_and_reports_suppressed() {
        let rl = RateLimit::new(2, 10);
        assert_eq!(rl.check_at(100), Some(0));
        assert_eq!(rl.check_at(101), Some(0));
        assert_eq!(rl.check_at(102), None);
        assert_eq!(rl.check_at(103), None);
        assert_eq!(rl.check_at(110), Some(2));
    }
}
