//! The wall clock and UTC dates ("2026-11-27T04:00:00Z"), without a date
//! library: the conversions are Howard Hinnant's civil-date algorithms.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// [`unix_ms`] as the `i64` SQLite stores.
pub fn now_ms() -> i64 {
    i64::try_from(unix_ms()).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Day count since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "2026-11-27T04:00:00Z" for a Unix time in seconds (UTC, no leap seconds).
pub fn format_utc(unix_secs: u64) -> String {
    format_utc_ms(i64::try_from(unix_secs.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// [`format_utc`] of a time in milliseconds (the service's timestamps);
/// times before 1970 are formatted too.
pub fn format_utc_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The Unix time of "2026-11-27T04:00:00Z" (also with fractional seconds,
/// "+00:00", a space for the `T` or no zone, as OpenStack writes
/// `created`/`created_at`); `None` for anything else. Inverse of
/// [`format_utc`].
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, time) = s.split_once(['T', ' '])?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))
        .unwrap_or(time);
    let time = time.split_once('.').map_or(time, |(t, _)| t);
    let num = |p: &str| -> Option<i64> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 4 {
            return None;
        }
        p.parse().ok()
    };
    let mut d = date.split('-');
    let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
    let mut t = time.split(':');
    let (hh, mm, ss) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, day);
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_utc(1_795_752_000), "2026-11-27T04:00:00Z");
        assert_eq!(format_utc_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(format_utc_ms(-1000), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn parse_inverts_format_and_accepts_openstack_forms() {
        for t in [0, 951_782_400, 1_795_752_000, 4_102_444_799, 4_102_444_800] {
            assert_eq!(parse_utc(&format_utc(t)), Some(t));
        }
        assert_eq!(
            parse_utc("2026-11-27T04:00:00.123456+00:00"),
            Some(1_795_752_000)
        );
        assert_eq!(parse_utc("2026-11-27T04:00:00"), Some(1_795_752_000));
        assert_eq!(parse_utc("2026-11-27 04:00:00"), Some(1_795_752_000));
        for bad in [
            "",
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T04:00Z",
            "2026-11-27T04:00",
            "x-1-1T1:1:1",
            "x026-11-27T04:00:00Z",
            "2026-11-27T04:00:00:00Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn clock_is_after_2020() {
        assert!(unix_secs() > 1_577_836_800);
        assert!(now_ms() > 1_577_836_800_000);
    }
}
