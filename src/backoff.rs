//! The one backoff of every retry and reconnect loop: exponential, capped, reset on success,
//! with full jitter or without.
//!
//! Full jitter (delay uniform in `[0, min(cap, base·2^attempt)]`, see
//! <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>) spreads the
//! retries of many hosts that failed together (a cluster restart) instead of having them
//! return in waves: [`Backoff::new`] / [`Backoff::from_entropy`], for what many hosts share
//! (Elasticsearch, CloudWatch Logs). The random source is a small seedable generator so
//! tests can name the exact delays; production seeds it from the OS.
//!
//! Without jitter ([`Backoff::doubling`]) every delay is the ceiling itself: for what only
//! this host uses — its disk (the file and stdout sinks, the input's buffer-full retry, the
//! pipeline's reads), its Docker engine, its instance metadata service — where there is no
//! crowd to spread and exact delays keep the tests and the logs readable.
//!
//! A server's own word on when to come back (HTTP `Retry-After`, parsed in
//! `sink::retry`) is honoured as a lower bound on the next delay, and is itself bounded by
//! [`MAX_RETRY_AFTER`] so a wrong header cannot park a sink for days
//! (`retry_after_is_bounded`).

use std::time::Duration;

/// The longest `Retry-After` obeyed.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// SplitMix64: tiny, fast, and identical on every platform (unlike `SmallRng`), so a seed
/// names a sequence of delays for tests.
#[derive(Debug, Clone)]
pub struct SeededRng(u64);

impl SeededRng {
    pub fn new(seed: u64) -> SeededRng {
        SeededRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (multiply-shift: no modulo bias worth the name at 64 bits).
    pub fn below_or_equal(&mut self, max: u64) -> u64 {
        ((u128::from(self.next_u64()) * (u128::from(max) + 1)) >> 64) as u64
    }
}

/// Exponential backoff for one retry loop (one sink, one endpoint, one connection).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    /// `None`: no jitter, every delay is the ceiling.
    rng: Option<SeededRng>,
}

impl Backoff {
    /// Full jitter from `seed`. `base`: the ceiling of the first delay; `cap`: the ceiling
    /// of every delay.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff { base, cap: cap.max(base), attempt: 0, rng: Some(SeededRng::new(seed)) }
    }

    /// Full jitter seeded from the OS: hosts that failed together do not retry together.
    pub fn from_entropy(base: Duration, cap: Duration) -> Backoff {
        Backoff::new(base, cap, rand::random())
    }

    /// No jitter: `base`, `2·base`, `4·base`… up to `cap`, exactly.
    pub fn doubling(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap: cap.max(base), attempt: 0, rng: None }
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay: `min(cap, base·2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.checked_mul(factor).map_or(self.cap, |d| d.min(self.cap))
    }

    /// The delay before the next attempt, and count the failure. With jitter, whole
    /// milliseconds: the resolution of tokio's timer, finer would be noise.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        match &mut self.rng {
            Some(rng) => {
                let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
                Duration::from_millis(rng.below_or_equal(millis))
            }
            None => ceiling,
        }
    }

    /// Like `next_delay`, but at least `retry_after` (bounded by [`MAX_RETRY_AFTER`]) when
    /// the server asked for it.
    pub fn next_delay_after(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = self.next_delay();
        match retry_after {
            Some(ra) => d.max(ra.min(MAX_RETRY_AFTER)),
            None => d,
        }
    }

    /// Sleep for `next_delay_after(retry_after)` (tokio time) and return how long.
    pub async fn wait(&mut self, retry_after: Option<Duration>) -> Duration {
        let d = self.next_delay_after(retry_after);
        tokio::time::sleep(d).await;
        d
    }

    /// An attempt succeeded: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(100 * MS, 1000 * MS, 1);
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= 1000 * MS);
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.attempt(), 6);
        b.reset();
        assert_eq!((b.attempt(), b.ceiling()), (0, 100 * MS));
        // Thousands of failures never overflow.
        for _ in 0..5000 {
            assert!(b.next_delay() <= 1000 * MS);
        }
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX, 3);
        assert!(huge.next_delay() <= Duration::MAX / 2);
        huge.next_delay();
        huge.next_delay();
        assert_eq!(huge.ceiling(), Duration::MAX);
    }

    #[test]
    fn jitter_is_seeded_and_spread_over_the_whole_range() {
        let delays = |seed| {
            let mut b = Backoff::new(100 * MS, 10_000 * MS, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(42), delays(42));
        assert_ne!(delays(42), delays(43));
        // Full jitter: over many draws at a fixed ceiling, both low and high quarters occur.
        let mut rng = SeededRng::new(7);
        let draws: Vec<u64> = (0..1000).map(|_| rng.below_or_equal(1000)).collect();
        assert!(draws.iter().all(|d| *d <= 1000));
        assert!(draws.iter().any(|d| *d < 250) && draws.iter().any(|d| *d > 750));
        let mean = draws.iter().sum::<u64>() as f64 / 1000.0;
        assert!((450.0..550.0).contains(&mean), "{mean}");
        assert_eq!(SeededRng::new(0).below_or_equal(0), 0);
    }

    #[test]
    fn doubling_is_exact_capped_and_resets() {
        let mut b = Backoff::doubling(100 * MS, 10_000 * MS);
        let seq: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(seq, [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        b.reset();
        assert_eq!(b.next_delay(), 100 * MS);
        // Sub-millisecond bases are kept as they are (no jitter to round).
        let mut fine = Backoff::doubling(Duration::from_micros(250), MS);
        assert_eq!(fine.next_delay(), Duration::from_micros(250));
        assert_eq!(fine.next_delay(), Duration::from_micros(500));
        assert_eq!(fine.next_delay(), MS);
        // A cap below the base is the base.
        assert_eq!(Backoff::doubling(5 * MS, MS).next_delay(), 5 * MS);
    }

    #[test]
    fn retry_after_is_a_lower_bound() {
        let mut b = Backoff::new(MS, 2 * MS, 9);
        assert_eq!(b.next_delay_after(Some(Duration::from_secs(5))), Duration::from_secs(5));
        assert!(b.next_delay_after(None) <= 2 * MS);
    }

    #[test]
    fn retry_after_is_bounded() {
        let mut b = Backoff::new(MS, 2 * MS, 9);
        assert_eq!(b.next_delay_after(Some(Duration::from_secs(86_400))), MAX_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_follow_the_seeded_sequence_in_paused_time() {
        let mut expected = Backoff::new(100 * MS, 5000 * MS, 1234);
        let mut b = Backoff::new(100 * MS, 5000 * MS, 1234);
        let start = tokio::time::Instant::now();
        let mut total = Duration::ZERO;
        for i in 0..10 {
            let ra = (i == 4).then(|| Duration::from_secs(3));
            let want = expected.next_delay_after(ra);
            assert_eq!(b.wait(ra).await, want);
            total += want;
            // The timer may round each deadline up to its next millisecond tick.
            let elapsed = start.elapsed();
            assert!(
                elapsed >= total && elapsed <= total + (i + 1) * MS,
                "attempt {i}: {elapsed:?} vs {total:?}"
            );
        }
        b.reset();
        expected.reset();
        assert_eq!(b.wait(None).await, expected.next_delay());
    }

    #[tokio::test(start_paused = true)]
    async fn doubling_waits_are_exact_in_paused_time() {
        let mut b = Backoff::doubling(500 * MS, 2000 * MS);
        let start = tokio::time::Instant::now();
        for want in [500, 1500, 3500, 5500] {
            b.wait(None).await;
            assert_eq!(start.elapsed(), want * MS);
        }
    }
}
