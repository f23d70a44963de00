//! `--since` / `--until` (and the API's `since`/`until`): an RFC 3339 time or a time relative to
//! now, as nanoseconds since the Unix epoch.
//!
//! Hand-written so that the crate needs no date library; it converts civil dates with the
//! days-from-civil algorithm (proleptic Gregorian calendar, no leap seconds, like Unix time). It
//! does not read the clock: the caller passes `now_ns`.

const NANOS_PER_SECOND: u64 = 1_000_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Digits of a fraction of a second that count; later ones are dropped (truncating).
const FRACTION_DIGITS_MAX: usize = 9;

/// Why a `--since`/`--until` value was rejected. Messages name the input and a valid example.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(
        "{input:?} is not a time: use an RFC 3339 time such as 2026-11-23T05:00:00Z or \
         2026-11-23T06:00:00+01:00, or a time before now such as 90s, 15m, 1h, 2d, 1w or now"
    )]
    Unrecognized { input: String },
    #[error("{input:?} is not a valid RFC 3339 time: {problem} (example: 2026-11-23T05:00:00.5+01:00)")]
    Rfc3339 { input: String, problem: String },
    #[error("{input:?} is before 1970-01-01T00:00:00Z, the earliest time sluice stores")]
    BeforeEpoch { input: String },
    #[error("{input:?} is after 2554-07-21T23:34:33Z, the latest time in 64-bit nanoseconds")]
    TooLate { input: String },
    #[error("{input:?}: the number is too large for a relative time; use an RFC 3339 time instead")]
    RelativeTooLarge { input: String },
}

/// Days from 1970-01-01 to the given date of the proleptic Gregorian calendar (negative
/// before). `month` is 1–12 and `day` 1–31; the caller has checked that the date exists.
///
/// The algorithm counts in 400-year eras that start on 1 March, so that the leap day is the
/// last day of its year and month lengths follow a simple linear formula.
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    // 719_468 days from 0000-03-01 to 1970-01-01.
    era * 146_097 + day_of_era - 719_468
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

pub(crate) fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses a time for `--since`/`--until` into nanoseconds since the Unix epoch.
///
/// - **RFC 3339**: `2026-11-23T05:00:00Z`, `2026-11-23T05:00:00.123456789+01:00`,
///   `2026-11-23 05:00:00z` (the RFC's space and lower case are accepted). The offset is
///   required, because a local time would be ambiguous. Digits of the fraction beyond the ninth
///   are dropped. A leap second (`:60`) counts as the first second of the next minute, as in
///   Unix time. A plain date (`2026-11-23`) means its midnight UTC.
/// - **Relative**, meaning that long before `now_ns`: a whole number followed by `s`, `m`
///   (minutes), `h`, `d` or `w` (7 days) — `90s`, `15m`, `1h`, `2d`; and `now`. A relative time
///   reaching before the epoch gives 0 (the same range of events).
///
/// Leading and trailing whitespace is ignored.
///
/// ```
/// use sluice_query::parse_time;
/// assert_eq!(parse_time("2026-11-23T05:00:00Z", 0), Ok(1_795_410_000_000_000_000));
/// assert_eq!(parse_time("15m", 1_000_000_000_000), Ok(100_000_000_000));
/// ```
pub fn parse_time(s: &str, now_ns: u64) -> Result<u64, TimeError> {
    let s = s.trim();
    if s == "now" {
        return Ok(now_ns);
    }
    let bytes = s.as_bytes();
    match bytes {
        [digits @ .., unit] if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            let seconds_per_unit: u64 = match unit {
                b's' => 1,
                b'm' => 60,
                b'h' => 3_600,
                b'd' => 86_400,
                b'w' => 7 * 86_400,
                _ => return Err(TimeError::Unrecognized { input: s.to_owned() }),
            };
            let count: u64 =
                s[..digits.len()].parse().map_err(|_| TimeError::RelativeTooLarge { input: s.to_owned() })?;
            let ago_ns = count.saturating_mul(seconds_per_unit).saturating_mul(NANOS_PER_SECOND);
            Ok(now_ns.saturating_sub(ago_ns))
        }
        [b'0'..=b'9', b'0'..=b'9', b'0'..=b'9', b'0'..=b'9', b'-', ..] => rfc3339(s),
        _ => Err(TimeError::Unrecognized { input: s.to_owned() }),
    }
}

/// A cursor over an RFC 3339 string that reports problems by column.
struct Cursor<'a> {
    input: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn problem(&self, problem: impl Into<String>) -> TimeError {
        TimeError::Rfc3339 { input: self.input.to_owned(), problem: problem.into() }
    }

    fn found(&self) -> String {
        match self.input.get(self.at..).and_then(|rest| rest.chars().next()) {
            None => "the end".to_owned(),
            Some(c) => format!("{c:?}"),
        }
    }

    /// Exactly `n` ASCII digits, for the part named `what`.
    fn digits(&mut self, n: usize, what: &str) -> Result<u32, TimeError> {
        let mut value = 0;
        for _ in 0..n {
            match self.bytes.get(self.at) {
                Some(b) if b.is_ascii_digit() => {
                    value = value * 10 + u32::from(b - b'0');
                    self.at += 1;
                }
                _ => {
                    return Err(self.problem(format!(
                        "expected {n} digits of the {what} at column {}, found {}",
                        self.at,
                        self.found()
                    )))
                }
            }
        }
        Ok(value)
    }

    fn expect(&mut self, allowed: &[u8], what: &str) -> Result<u8, TimeError> {
        match self.bytes.get(self.at) {
            Some(b) if allowed.contains(b) => {
                self.at += 1;
                Ok(*b)
            }
            _ => Err(self.problem(format!("expected {what} at column {}, found {}", self.at, self.found()))),
        }
    }

    fn at_end(&self) -> bool {
        self.at == self.bytes.len()
    }
}

fn in_range(cursor: &Cursor<'_>, what: &str, value: u32, min: u32, max: u32) -> Result<(), TimeError> {
    if value < min || value > max {
        return Err(cursor.problem(format!("{what} {value:02} is not between {min:02} and {max:02}")));
    }
    Ok(())
}

fn rfc3339(input: &str) -> Result<u64, TimeError> {
    let mut c = Cursor { input, bytes: input.as_bytes(), at: 0 };
    let year = c.digits(4, "year")?;
    c.expect(b"-", "\"-\"")?;
    let month = c.digits(2, "month")?;
    in_range(&c, "month", month, 1, 12)?;
    c.expect(b"-", "\"-\"")?;
    let day = c.digits(2, "day")?;
    let month_days = days_in_month(i64::from(year), month);
    if day < 1 || day > month_days {
        return Err(c.problem(format!("day {day:02} does not exist in {year:04}-{month:02}")));
    }
    let days = days_from_civil(i64::from(year), month, day);

    let (mut seconds, mut nanos, mut offset_seconds) = (0_i64, 0_i64, 0_i64);
    if !c.at_end() {
        c.expect(b"Tt ", "\"T\" between the date and the time")?;
        let hour = c.digits(2, "hour")?;
        in_range(&c, "hour", hour, 0, 23)?;
        c.expect(b":", "\":\"")?;
        let minute = c.digits(2, "minute")?;
        in_range(&c, "minute", minute, 0, 59)?;
        c.expect(b":", "\":\"")?;
        let second = c.digits(2, "second")?;
        in_range(&c, "second", second, 0, 60)?;
        seconds = i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second);

        if c.bytes.get(c.at) == Some(&b'.') {
            c.at += 1;
            let start = c.at;
            while c.bytes.get(c.at).is_some_and(u8::is_ascii_digit) {
                c.at += 1;
            }
            if c.at == start {
                return Err(c.problem(format!("expected digits after \".\" at column {}, found {}", c.at, c.found())));
            }
            let mut scale = 100_000_000;
            for &digit in c.bytes[start..c.at].iter().take(FRACTION_DIGITS_MAX) {
                nanos += i64::from(digit - b'0') * scale;
                scale /= 10;
            }
        }

        let sign = c.expect(b"Zz+-", "\"Z\" or an offset such as +01:00 (a time without one is ambiguous)")?;
        if sign != b'Z' && sign != b'z' {
            let offset_hour = c.digits(2, "offset hours")?;
            in_range(&c, "offset hour", offset_hour, 0, 23)?;
            c.expect(b":", "\":\" in the offset")?;
            let offset_minute = c.digits(2, "offset minutes")?;
            in_range(&c, "offset minute", offset_minute, 0, 59)?;
            let magnitude = i64::from(offset_hour) * 3_600 + i64::from(offset_minute) * 60;
            offset_seconds = if sign == b'+' { magnitude } else { -magnitude };
        }
        if !c.at_end() {
            return Err(c.problem(format!("unexpected {} at column {} after the time", c.found(), c.at)));
        }
    }

    // A local time ahead of UTC by the offset: UTC = local - offset. Years have four digits,
    // so none of this can overflow i128.
    let utc_seconds = days * SECONDS_PER_DAY + seconds - offset_seconds;
    let ns = i128::from(utc_seconds) * i128::from(NANOS_PER_SECOND) + i128::from(nanos);
    if ns < 0 {
        return Err(TimeError::BeforeEpoch { input: input.to_owned() });
    }
    u64::try_from(ns).map_err(|_| TimeError::TooLate { input: input.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the calendar one day at a time — the slow, obviously right way — and checks the
    /// formula on every day from 1600 to 2600, which covers every rule of the leap years.
    #[test]
    fn days_from_civil_agrees_with_counting_days() {
        let mut expected = days_from_civil(1600, 1, 1);
        assert_eq!(expected, -135_140, "1600-01-01 is 135140 days before the epoch");
        for year in 1600..2600 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), expected, "{year}-{month}-{day}");
                    expected += 1;
                }
            }
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
    }

    #[test]
    fn leap_years() {
        for (year, leap) in [(1900, false), (2000, true), (2023, false), (2024, true), (2100, false), (2400, true)] {
            assert_eq!(is_leap_year(year), leap, "{year}");
        }
    }
}
