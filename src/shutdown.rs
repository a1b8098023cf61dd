//! The one shutdown sequence's tokens, tracker and deadlines.
//!
//! One root token; a child per phase, cancelled in order by `app`:
//! 1. `intake`: listeners stop accepting, connections finish what their clients sent;
//! 2. (the buffer closes for writes; sinks deliver what is left — no token: they end when
//!    the buffer has nothing more for them);
//! 3. `background`: services beside the log path (Docker events, IMDS, and next capacity
//!    and the drain), spawned on [`Shutdown::tracker`];
//! 4. `admin`: the HTTP endpoint, last, so that the shutdown can be watched.
//!
//! Cancelling the root (a second signal) cancels every phase at once. Every wait of the
//! sequence goes through [`Shutdown::until`]: it ends at its deadline or when the root is
//! cancelled, whichever is first, so nothing — a client that pipelines requests without
//! reading, a sink whose endpoint never answers, a stalled fsync — keeps berth alive past
//! its grace period.

use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The part of the grace period kept for the last steps (cursor sync, background tasks,
/// admin) after the sinks' deadline: a tenth, at most 2 s.
pub fn finish_reserve(grace: Duration) -> Duration {
    (grace / 10).min(Duration::from_secs(2))
}

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    root: CancellationToken,
    intake: CancellationToken,
    background: CancellationToken,
    admin: CancellationToken,
    tracker: TaskTracker,
}

/// The two deadlines of one shutdown, from the moment it started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deadlines {
    /// Inputs and sinks stop here: what is not delivered stays in the buffer.
    pub work: Instant,
    /// Everything is over here.
    pub end: Instant,
}

impl Deadlines {
    pub fn from(start: Instant, grace: Duration) -> Deadlines {
        let end = start + grace;
        Deadlines { work: end - finish_reserve(grace), end }
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let root = CancellationToken::new();
        Shutdown {
            intake: root.child_token(),
            background: root.child_token(),
            admin: root.child_token(),
            root,
            tracker: TaskTracker::new(),
        }
    }

    /// Cut every phase short (a second signal).
    pub fn abort(&self) {
        self.root.cancel();
    }

    /// Stop accepting and reading input.
    pub fn intake(&self) -> &CancellationToken {
        &self.intake
    }

    /// Background services: spawn them on [`Shutdown::tracker`], stop them with this.
    pub fn background(&self) -> &CancellationToken {
        &self.background
    }

    pub fn admin(&self) -> &CancellationToken {
        &self.admin
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// `fut`'s output, or `None` when `deadline` passed or the shutdown was aborted first.
    pub async fn until<F: Future>(&self, deadline: Instant, fut: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = fut => Some(out),
            _ = tokio::time::sleep_until(deadline) => None,
            _ = self.root.cancelled() => None,
        }
    }

    /// Phase 3: stop the background services and wait for them until `deadline`. False
    /// when some were still running then.
    pub async fn stop_background(&self, deadline: Instant) -> bool {
        self.background.cancel();
        self.tracker.close();
        self.until(deadline, self.tracker.wait()).await.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_tenth_at_most_two_seconds() {
        for (grace, reserve) in [(0, 0), (1_000, 100), (10_000, 1_000), (25_000, 2_000)] {
            assert_eq!(
                finish_reserve(Duration::from_millis(grace)),
                Duration::from_millis(reserve),
                "{grace} ms"
            );
        }
        let start = Instant::now();
        let d = Deadlines::from(start, Duration::from_secs(25));
        assert_eq!(d.end - start, Duration::from_secs(25));
        assert_eq!(d.work - start, Duration::from_secs(23));
    }

    #[tokio::test(start_paused = true)]
    async fn until_ends_at_the_deadline_or_the_abort() {
        let s = Shutdown::new();
        let never = std::future::pending::<()>();
        let t0 = Instant::now();
        assert_eq!(s.until(t0 + Duration::from_secs(3), never).await, None);
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
        assert_eq!(s.until(t0 + Duration::from_secs(60), async { 7 }).await, Some(7));

        let s2 = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            s2.abort();
        });
        let t1 = Instant::now();
        assert_eq!(s.until(t1 + Duration::from_secs(60), std::future::pending::<()>()).await, None);
        assert_eq!(t1.elapsed(), Duration::from_secs(1));
        assert!(s.intake().is_cancelled() && s.background().is_cancelled(), "children follow");
    }

    #[tokio::test(start_paused = true)]
    async fn background_tasks_stop_with_their_phase_and_are_waited_for_boundedly() {
        let s = Shutdown::new();
        let token = s.background().clone();
        s.tracker().spawn(async move { token.cancelled().await });
        s.tracker().spawn(std::future::pending::<()>());
        let t0 = Instant::now();
        assert!(!s.stop_background(t0 + Duration::from_secs(2)).await, "one never ends");
        assert_eq!(t0.elapsed(), Duration::from_secs(2));
        assert!(!s.intake().is_cancelled(), "phases are cancelled one by one");

        let s = Shutdown::new();
        let token = s.background().clone();
        s.tracker().spawn(async move { token.cancelled().await });
        assert!(s.stop_background(Instant::now() + Duration::from_secs(2)).await);
    }
}
