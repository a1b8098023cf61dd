//! Civil (proleptic Gregorian, UTC) dates and times from seconds since the Unix epoch and
//! back, and their RFC 3339 text, written and read: the one copy of the date arithmetic that
//! JSON output, index and log-group names, `Retry-After` HTTP-dates, `berth cat --time-key`
//! and the Spot interruption notice's `time` share.
//! Pure integer arithmetic; no clock, no time zone but UTC, no leap seconds.
//!
//! The two conversions are Howard Hinnant's `days_from_civil` and `civil_from_days`
//! (<http://howardhinnant.github.io/date_algorithms.html>): eras of 400 years, each exactly
//! 146097 days, so they hold for any year without tables.

use crate::event::EventTime;

const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date. `m` is 1-12 and `d` 1-31; other
/// values are not rejected but count on from the month's start.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 → (year, month 1-12, day 1-31); the inverse of
/// [`days_from_civil`].
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days in `month` (1-12) of `year`.
pub fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A UTC date and time of day, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl DateTime {
    /// The UTC date and time `secs` seconds after the Unix epoch (negative: before it).
    pub fn from_unix(secs: i64) -> DateTime {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let sod = secs.rem_euclid(SECS_PER_DAY) as u32;
        DateTime { year, month, day, hour: sod / 3600, minute: sod / 60 % 60, second: sod % 60 }
    }

    /// Seconds since the Unix epoch; the inverse of [`DateTime::from_unix`] (fields out of
    /// their ranges count on, as in [`days_from_civil`]).
    pub fn to_unix(&self) -> i64 {
        days_from_civil(self.year, i64::from(self.month), i64::from(self.day)) * SECS_PER_DAY
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }
}

/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59Z: the range RFC 3339's four-digit years
/// can express.
pub(crate) const MIN_RFC3339_SECS: i64 = -62_167_219_200;
pub(crate) const MAX_RFC3339_SECS: i64 = 253_402_300_799;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// Append `t` as RFC 3339 text in UTC with nine fractional digits, without quotes:
/// `2026-11-22T07:00:05.123456789Z`.
///
/// Times before year 0 or after year 9999 are clamped to the first / last representable
/// nanosecond (RFC 3339 has four-digit years; a clamped time is still sortable and
/// obviously wrong, where a five-digit year would break readers). Nanoseconds of a second
/// or more are carried into the seconds.
pub fn write_rfc3339(out: &mut Vec<u8>, t: EventTime) {
    let mut secs = t.secs.saturating_add(i64::from(t.nanos / NANOS_PER_SEC));
    let mut nanos = t.nanos % NANOS_PER_SEC;
    if secs < MIN_RFC3339_SECS {
        secs = MIN_RFC3339_SECS;
        nanos = 0;
    } else if secs > MAX_RFC3339_SECS {
        secs = MAX_RFC3339_SECS;
        nanos = NANOS_PER_SEC - 1;
    }
    let dt = DateTime::from_unix(secs);

    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut b[0..4], dt.year as u32);
    put_digits(&mut b[5..7], dt.month);
    put_digits(&mut b[8..10], dt.day);
    put_digits(&mut b[11..13], dt.hour);
    put_digits(&mut b[14..16], dt.minute);
    put_digits(&mut b[17..19], dt.second);
    put_digits(&mut b[20..29], nanos);
    out.extend_from_slice(&b);
}

/// Write `v` as decimal digits right-aligned in `dst`, zero-padded (dst is pre-zeroed).
fn put_digits(dst: &mut [u8], mut v: u32) {
    for d in dst.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`; `t`, `T` or a space between date and time.
pub fn parse_rfc3339(s: &str) -> Option<EventTime> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut nanos: u32 = 0;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Digits past nanoseconds are dropped.
        for (k, d) in b[start..i].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
        }
    }
    let offset = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = crate::calendar::days_from_civil(year, month, day);
    // A leap second (:60) is folded into the next second, as most systems do.
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(EventTime::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc(secs: i64, nanos: u32) -> String {
        let mut out = Vec::new();
        write_rfc3339(&mut out, EventTime::new(secs, nanos));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_vectors() {
        assert_eq!(rfc(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(1_795_330_805, 123_456_789), "2026-11-22T07:00:05.123456789Z");
        assert_eq!(rfc(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc(1_709_251_199, 999_999_999), "2024-02-29T23:59:59.999999999Z");
        assert_eq!(rfc(4_107_456_000, 0), "2100-02-28T00:00:00.000000000Z");
        assert_eq!(rfc(4_107_542_400, 0), "2100-03-01T00:00:00.000000000Z"); // 2100 is not leap
        assert_eq!(rfc(2_147_483_647, 0), "2038-01-19T03:14:07.000000000Z");
        assert_eq!(rfc(2_147_483_648, 0), "2038-01-19T03:14:08.000000000Z");
        assert_eq!(rfc(4_294_967_295, 0), "2106-02-07T06:28:15.000000000Z");
        assert_eq!(rfc(-1, 500_000_000), "1969-12-31T23:59:59.500000000Z");
        assert_eq!(rfc(-86_400 * 365, 0), "1969-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(-62_135_596_800, 0), "0001-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MIN_RFC3339_SECS, 0), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MAX_RFC3339_SECS, 7), "9999-12-31T23:59:59.000000007Z");
    }

    #[test]
    fn rfc3339_clamps_out_of_range_and_carries_nanos() {
        assert_eq!(rfc(i64::MIN, 5), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(MIN_RFC3339_SECS - 1, 0), "0000-01-01T00:00:00.000000000Z");
        assert_eq!(rfc(i64::MAX, u32::MAX), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(rfc(MAX_RFC3339_SECS + 1, 0), "9999-12-31T23:59:59.999999999Z");
        assert_eq!(rfc(0, 2_500_000_000), "1970-01-01T00:00:02.500000000Z");
    }

    #[test]
    fn civil_from_days_matches_day_by_day_walk() {
        // Walk every day from 1600-01-01 (a leap century) to 2400-12-31 by hand; the
        // inverse must give the day count back.
        let (mut y, mut m, mut d) = (1600i64, 1u32, 1u32);
        let start = -135_140; // days from 1970-01-01 back to 1600-01-01
        for days in start.. {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
            if (y, m, d) == (2400, 12, 31) {
                break;
            }
            d += 1;
            if i64::from(d) > days_in_month(y, i64::from(m)) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn leap_years() {
        for (y, leap) in [(1900, false), (2000, true), (2024, true), (2026, false), (2100, false)] {
            assert_eq!(is_leap_year(y), leap, "{y}");
        }
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2026, 2), 28);
        assert_eq!(days_in_month(2026, 4), 30);
        assert_eq!(days_in_month(2026, 12), 31);
    }

    #[test]
    fn date_time_round_trips_and_counts_on() {
        for secs in [0, -1, 1_795_330_805, -62_135_596_800, 253_402_300_799, 951_782_400] {
            assert_eq!(DateTime::from_unix(secs).to_unix(), secs, "{secs}");
        }
        let t = DateTime::from_unix(1_795_330_805);
        assert_eq!(t, DateTime { year: 2026, month: 11, day: 22, hour: 7, minute: 0, second: 5 });
        // A leap second (:60) counts on into the next minute.
        let leap = DateTime { second: 60, ..DateTime::from_unix(1_795_330_799) };
        assert_eq!(leap.to_unix(), 1_795_330_800);
    }
}
