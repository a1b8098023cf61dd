//! Backoff between attempts: exponential with full jitter, capped, reset on success; and
//! the `Retry-After` header.
//!
//! Full jitter (delay uniform in `[0, min(cap, base·2^attempt)]`, see
//! <https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/>) spreads the
//! retries of many hosts that failed together (a cluster restart) instead of having them
//! return in waves. The random source is a small seedable generator so tests can name the
//! exact delays; production seeds it from the OS.
//!
//! `Retry-After` is honoured as a lower bound on the next delay, and is itself bounded by
//! [`MAX_RETRY_AFTER`] so a wrong header cannot park a sink for days
//! (`retry_after_is_bounded`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// Exponential backoff with full jitter for one sink (or one endpoint).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
    rng: SeededRng,
}

impl Backoff {
    /// `base`: the ceiling of the first delay; `cap`: the ceiling of every delay.
    pub fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff { base, cap: cap.max(base), attempt: 0, rng: SeededRng::new(seed) }
    }

    /// Seeded from the OS: hosts that failed together do not retry together.
    pub fn from_entropy(base: Duration, cap: Duration) -> Backoff {
        Backoff::new(base, cap, rand::random())
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

    /// The delay before the next attempt, and count the failure. Whole milliseconds: the
    /// resolution of tokio's timer, finer would be noise.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_millis(self.rng.below_or_equal(millis))
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

/// Parse a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds or an HTTP-date (IMF-fixdate,
/// and the obsolete RFC 850 and asctime forms). A date in the past gives zero. `None` when
/// the value is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit is still "a very long time".
        return Some(v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = parse_http_date(v)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(u64::try_from(at - now).unwrap_or(0)))
}

/// Seconds since the epoch of an HTTP-date.
fn parse_http_date(v: &str) -> Option<i64> {
    let words: Vec<&str> = v.split_ascii_whitespace().collect();
    let (day, month, year, time) = match words.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') => (d.parse().ok()?, *m, y.parse().ok()?, *t),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [wd, dmy, t, "GMT"] if wd.ends_with(',') => {
            let mut p = dmy.split('-');
            let (d, m, y) = (p.next()?, p.next()?, p.next()?);
            let y: i64 = y.parse().ok()?;
            // Two-digit years (RFC 9110: more than 50 years ahead means the past century).
            let y = if y < 100 {
                if y < 70 {
                    2000 + y
                } else {
                    1900 + y
                }
            } else {
                y
            };
            (d.parse().ok()?, m, y, *t)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, m, d, t, y] => (d.parse().ok()?, *m, y.parse().ok()?, *t),
        _ => return None,
    };
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|n| *n == month)? as i64
        + 1;
    let mut hms = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (hms.next()??, hms.next()??, hms.next()??);
    let day: i64 = day;
    if !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 || hms.next().is_some() {
        return None;
    }
    Some(crate::calendar::days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + s)
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

    #[test]
    fn parse_retry_after_table() {
        // 1994-11-06T08:49:37Z = 784111777
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 30);
        for (v, want) in [
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("99999999999999999999999", Some(u64::MAX)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(30)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(30)),
            ("Sun Nov  6 08:49:37 1994", Some(30)),
            ("Sun, 06 Nov 1994 08:48:00 GMT", Some(0)), // in the past
            ("Sun, 06 Nov 1994 08:50:37 GMT", Some(90)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
            ("Sun, 06 Nov 1994 08:49:37 UTC", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 24:49:37 GMT", None),
            ("Sun, 06 Nov 1994 08:49 GMT", None),
        ] {
            let got = parse_retry_after(v, now).map(|d| {
                if d == Duration::MAX {
                    u64::MAX
                } else {
                    d.as_secs()
                }
            });
            assert_eq!(got, want, "{v:?}");
        }
    }

    #[test]
    fn http_dates_match_known_epochs() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        assert_eq!(parse_http_date("Sun, 22 Nov 2026 07:00:05 GMT"), Some(1_795_330_805));
        assert_eq!(parse_http_date("Mon, 01 Mar 2100 00:00:00 GMT"), Some(4_107_542_400));
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
}
