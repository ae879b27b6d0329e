//! Timestamps: milliseconds since the Unix epoch, shown as RFC 3339 UTC.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-11-25T16:30:00Z` for a time in milliseconds since the epoch.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Milliseconds since the epoch of a time written by [`rfc3339`] (`2026-11-25T16:30:00Z`).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let compact: String = text
        .strip_suffix('Z')?
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    (compact.len() == 14)
        .then(|| from_compact_utc(&compact))
        .flatten()
}

/// Milliseconds since the epoch of a UTC `YYYYmmddHHMMSS` stamp (the original store's version
/// names start with one).
pub fn from_compact_utc(stamp: &str) -> Option<u64> {
    let digits = stamp.get(..14)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| digits[r].parse::<i64>().ok();
    let (y, mo, d, h, mi, s) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(8..10)?,
        n(10..12)?,
        n(12..14)?,
    );
    // Days from civil (inverse of the above).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_772_036_102_000), "2026-02-25T16:15:02Z");
        let ms = from_compact_utc("20170306101502000123").unwrap();
        assert_eq!(rfc3339(ms), "2017-03-06T10:15:02Z");
        assert_eq!(from_compact_utc("2017"), None);
        assert_eq!(from_compact_utc("2017030610150x"), None);
        assert_eq!(
            parse_rfc3339(&rfc3339(1_772_036_102_000)),
            Some(1_772_036_102_000)
        );
        assert_eq!(parse_rfc3339("2026-02-25 16:15:02"), None);
    }
}
