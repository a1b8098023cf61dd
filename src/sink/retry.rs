//! The `Retry-After` header: what an HTTP server says about when to come back.
//!
//! HTTP only, so it stays with the HTTP sinks (Elasticsearch); the delay it gives is a lower
//! bound for [`crate::backoff::Backoff::next_delay_after`], which also bounds it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
}
