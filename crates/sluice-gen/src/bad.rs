//! Deliberately bad stdout lines (one per [`BadClass`]) and plain-text stderr lines.
//!
//! Bad lines exercise the supervisor's bad-input policy (SPEC §1): each class breaks exactly one
//! rule, and most are made from a valid event so everything else about them is realistic. This
//! module only writes them; deciding how often is `Generator::next_line`'s job.

use crate::event::{key_n, key_s, put_hex, put_ip, put_padded, put_time, put_u64, Generator};
use crate::vocab::{DEPRECATIONS, EXCEPTIONS, JAVA_CLASSES, JAVA_METHODS, RESOURCES};
use crate::TIME_NS_MAX;

/// The classes of deliberately bad stdout lines. [`Generator::next_line`] picks one uniformly at
/// random for each bad line; [`Generator::write_bad_line`] writes a chosen one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BadClass {
    /// Plain text, logfmt, an access-log line, a Python dict, ANSI colour codes.
    NotJson,
    /// A valid event cut short before its closing brace.
    Truncated,
    /// An extra key with a float value (`0.73`, `1.5e3`).
    Float,
    /// An extra key with a negative integer.
    Negative,
    /// An extra key whose value is an object or an array.
    Nested,
    /// The whole line is a JSON array (of an event, of numbers, of strings).
    ArrayLine,
    /// The first key after `time_ns` appears a second time.
    DuplicateKey,
    /// A valid event without its `time_ns` key.
    MissingTimeNs,
    /// `time_ns` as a string (its digits quoted, or an RFC 3339 date).
    TimeNsString,
    /// `time_ns` above 2^63-1 (2^63, u64::MAX, or past u64::MAX).
    TimeNsTooLarge,
    /// An extra key with `true`, `false` or `null`.
    BoolNull,
    /// An extra key starting with the reserved `sluice_` prefix.
    ReservedKey,
    /// An extra string value holding bytes that are not UTF-8.
    InvalidUtf8,
    /// Nothing but the newline.
    Empty,
    /// `{"time_ns":N}` and no other key.
    OnlyTimeNs,
}

impl BadClass {
    pub const ALL: [BadClass; 15] = [
        BadClass::NotJson,
        BadClass::Truncated,
        BadClass::Float,
        BadClass::Negative,
        BadClass::Nested,
        BadClass::ArrayLine,
        BadClass::DuplicateKey,
        BadClass::MissingTimeNs,
        BadClass::TimeNsString,
        BadClass::TimeNsTooLarge,
        BadClass::BoolNull,
        BadClass::ReservedKey,
        BadClass::InvalidUtf8,
        BadClass::Empty,
        BadClass::OnlyTimeNs,
    ];

    /// A stable snake_case name, for reports and test messages.
    pub fn name(self) -> &'static str {
        match self {
            BadClass::NotJson => "not_json",
            BadClass::Truncated => "truncated",
            BadClass::Float => "float",
            BadClass::Negative => "negative",
            BadClass::Nested => "nested",
            BadClass::ArrayLine => "array_line",
            BadClass::DuplicateKey => "duplicate_key",
            BadClass::MissingTimeNs => "missing_time_ns",
            BadClass::TimeNsString => "time_ns_string",
            BadClass::TimeNsTooLarge => "time_ns_too_large",
            BadClass::BoolNull => "bool_null",
            BadClass::ReservedKey => "reserved_key",
            BadClass::InvalidUtf8 => "invalid_utf8",
            BadClass::Empty => "empty",
            BadClass::OnlyTimeNs => "only_time_ns",
        }
    }
}

/// Length of `{"time_ns":`, the prefix of every valid event.
const TIME_PREFIX_BYTES: usize = 11;

const TOO_LARGE_TIMES: &[&str] = &["9223372036854775808", "18446744073709551615", "99999999999999999999"];
const BOOL_NULL_PAIRS: &[&str] = &[",\"cached\":true", ",\"retried\":false", ",\"parent_span\":null"];
const RESERVED_PAIRS: &[&str] =
    &[",\"sluice_source\":\"forged\"", ",\"sluice_id\":\"00000000000000000000000000000000\"", ",\"sluice_seq\":7"];
/// Each is invalid UTF-8 in its own way: a cut two-byte sequence, bytes never valid, a lone
/// continuation byte, an overlong encoding of '/', an encoded UTF-16 surrogate.
const INVALID_UTF8: &[&[u8]] = &[b"caf\xc3", b"\xff\xfe", b"\x80abc", b"\xc0\xaf", b"\xed\xa0\x80"];

impl Generator {
    /// Append one bad line of class `class` (one line + '\n') to `out`.
    pub fn write_bad_line(&mut self, class: BadClass, time_ns: u64, out: &mut Vec<u8>) {
        self.last_bad = Some(class);
        // Most classes start from a valid event: `{"time_ns":DIGITS,PAIRS}\n`.
        let mut base = std::mem::take(&mut self.scratch);
        base.clear();
        self.write_event(time_ns, &mut base);
        let body = &base[..base.len() - 1];
        let comma = TIME_PREFIX_BYTES
            + body[TIME_PREFIX_BYTES..].iter().position(|&b| b == b',').expect("every event has a key after time_ns");
        let digits = &body[TIME_PREFIX_BYTES..comma];
        // The pairs after time_ns, without the closing brace.
        let pairs = &body[comma + 1..body.len() - 1];
        let open = &body[..body.len() - 1];
        let v = self.rng.below(8);
        match class {
            BadClass::NotJson => self.write_not_json(time_ns, v, out),
            BadClass::Truncated => {
                // Any proper prefix that lacks the closing brace is not JSON.
                let cut = self.rng.range(1, body.len() as u64 - 2) as usize;
                out.extend_from_slice(&body[..cut]);
                out.push(b'\n');
            }
            BadClass::Float => {
                out.extend_from_slice(open);
                match v % 3 {
                    0 => {
                        out.extend_from_slice(key_n!("load_avg"));
                        put_u64(out, self.rng.below(8));
                        out.push(b'.');
                        put_padded(out, self.rng.below(100), 2);
                    }
                    1 => {
                        out.extend_from_slice(key_n!("cpu_ratio"));
                        out.extend_from_slice(b"0.");
                        put_padded(out, self.rng.below(1_000), 3);
                    }
                    _ => out.extend_from_slice(b",\"score\":1.5e3"),
                }
                out.extend_from_slice(b"}\n");
            }
            BadClass::Negative => {
                out.extend_from_slice(open);
                out.extend_from_slice(if v.is_multiple_of(2) { key_n!("offset_ms") } else { key_n!("balance_delta") });
                out.push(b'-');
                put_u64(out, self.rng.range(1, 5_000));
                out.extend_from_slice(b"}\n");
            }
            BadClass::Nested => {
                out.extend_from_slice(open);
                if v.is_multiple_of(2) {
                    out.extend_from_slice(b",\"ctx\":{\"trace_id\":\"");
                    put_hex(out, self.rng.next_u64(), 16);
                    out.extend_from_slice(b"\",\"span_id\":");
                    put_u64(out, self.rng.below(1_000));
                    out.push(b'}');
                } else {
                    out.extend_from_slice(b",\"tags\":[\"");
                    out.extend_from_slice(self.module().as_bytes());
                    out.extend_from_slice(b"\",\"");
                    out.extend_from_slice(self.module().as_bytes());
                    out.extend_from_slice(b"\"]");
                }
                out.extend_from_slice(b"}\n");
            }
            BadClass::ArrayLine => {
                match v % 3 {
                    0 => {
                        out.push(b'[');
                        out.extend_from_slice(body);
                        out.push(b']');
                    }
                    1 => {
                        out.push(b'[');
                        put_u64(out, time_ns.min(TIME_NS_MAX));
                        out.extend_from_slice(b",1,2]");
                    }
                    _ => out.extend_from_slice(b"[\"INFO\",\"started\"]"),
                }
                out.push(b'\n');
            }
            BadClass::DuplicateKey => {
                // Keys and string values never contain `,"`, so it marks the next pair.
                let first_end = pairs.windows(2).position(|w| w == b",\"").unwrap_or(pairs.len());
                out.extend_from_slice(open);
                out.push(b',');
                out.extend_from_slice(&pairs[..first_end]);
                out.extend_from_slice(b"}\n");
            }
            BadClass::MissingTimeNs => {
                out.push(b'{');
                out.extend_from_slice(pairs);
                out.extend_from_slice(b"}\n");
            }
            BadClass::TimeNsString => {
                out.extend_from_slice(b"{\"time_ns\":\"");
                if v.is_multiple_of(2) {
                    out.extend_from_slice(digits);
                } else {
                    put_rfc3339(out, time_ns.min(TIME_NS_MAX));
                }
                out.extend_from_slice(b"\",");
                out.extend_from_slice(pairs);
                out.extend_from_slice(b"}\n");
            }
            BadClass::TimeNsTooLarge => {
                out.extend_from_slice(b"{\"time_ns\":");
                out.extend_from_slice(TOO_LARGE_TIMES[self.rng.index(TOO_LARGE_TIMES.len())].as_bytes());
                out.push(b',');
                out.extend_from_slice(pairs);
                out.extend_from_slice(b"}\n");
            }
            BadClass::BoolNull => {
                out.extend_from_slice(open);
                out.extend_from_slice(BOOL_NULL_PAIRS[self.rng.index(BOOL_NULL_PAIRS.len())].as_bytes());
                out.extend_from_slice(b"}\n");
            }
            BadClass::ReservedKey => {
                out.extend_from_slice(open);
                out.extend_from_slice(RESERVED_PAIRS[self.rng.index(RESERVED_PAIRS.len())].as_bytes());
                out.extend_from_slice(b"}\n");
            }
            BadClass::InvalidUtf8 => {
                out.extend_from_slice(open);
                out.extend_from_slice(key_s!("note"));
                out.extend_from_slice(INVALID_UTF8[self.rng.index(INVALID_UTF8.len())]);
                out.extend_from_slice(b"\"}\n");
            }
            BadClass::Empty => out.push(b'\n'),
            BadClass::OnlyTimeNs => {
                put_time(out, time_ns);
                out.extend_from_slice(b"}\n");
            }
        }
        self.scratch = base;
    }

    fn write_not_json(&mut self, time_ns: u64, variant: u64, out: &mut Vec<u8>) {
        let time_ns = time_ns.min(TIME_NS_MAX);
        match variant % 6 {
            0 => {
                out.extend_from_slice(b"time=");
                put_rfc3339(out, time_ns);
                out.extend_from_slice(b" level=info module=");
                out.extend_from_slice(self.module().as_bytes());
                out.extend_from_slice(b" msg=\"");
                self.put_sentence(out);
                out.extend_from_slice(b"\" uid=U");
                let uid = self.sample_uid();
                put_padded(out, u64::from(uid), 6);
            }
            1 => {
                let uid = self.sample_uid();
                let ip = self.ip_for(uid);
                put_ip(out, ip);
                out.extend_from_slice(b" - - [");
                let c = Civil::from_ns(time_ns);
                put_padded(out, c.day, 2);
                out.push(b'/');
                out.extend_from_slice(MONTHS[(c.month - 1) as usize].as_bytes());
                out.push(b'/');
                put_u64(out, c.year);
                out.push(b':');
                put_hms(out, &c);
                out.extend_from_slice(b" +0000] \"GET /api/v2/");
                out.extend_from_slice(RESOURCES[self.rng.index(RESOURCES.len())].as_bytes());
                out.extend_from_slice(b" HTTP/1.1\" 200 ");
                put_u64(out, self.rng.range(200, 90_000));
                out.extend_from_slice(b" \"-\" \"Mozilla/5.0\"");
            }
            2 => {
                out.extend_from_slice(b"Starting server on 0.0.0.0:8080 (pid ");
                put_u64(out, self.rng.range(100, 65_000));
                out.push(b')');
            }
            3 => {
                out.extend_from_slice(b"{'time_ns': ");
                put_u64(out, time_ns);
                out.extend_from_slice(b", 'level': 'INFO', 'message': '");
                self.put_sentence(out);
                out.extend_from_slice(b"'}");
            }
            4 => {
                let c = Civil::from_ns(time_ns);
                out.extend_from_slice(b"INFO ");
                put_date(out, &c);
                out.push(b' ');
                put_hms(out, &c);
                out.push(b',');
                put_padded(out, c.nanos / 1_000_000, 3);
                out.extend_from_slice(b" [main] ");
                self.put_sentence(out);
            }
            _ => {
                out.extend_from_slice(b"\x1b[32m OK \x1b[0m ");
                self.put_sentence(out);
            }
        }
        out.push(b'\n');
    }

    /// Append one plain-text stderr line: warnings, Java/Python/Rust stack-trace lines, glog.
    pub(crate) fn write_stderr_line(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let time_ns = time_ns.min(TIME_NS_MAX);
        // Stack frames dominate: one exception prints many of them.
        match self.rng.below(100) {
            0..12 => {
                out.extend_from_slice(b"warning: ");
                out.extend_from_slice(DEPRECATIONS[self.rng.index(DEPRECATIONS.len())].as_bytes());
                out.extend_from_slice(b" is deprecated and will be removed in v");
                put_u64(out, self.rng.range(3, 9));
                out.extend_from_slice(b".0");
            }
            12..22 => {
                out.extend_from_slice(b"warning: slow query on table ");
                out.extend_from_slice(RESOURCES[self.rng.index(RESOURCES.len())].as_bytes());
                out.extend_from_slice(b" took ");
                put_u64(out, self.rng.duration_ms(800.0, 1.0));
                out.extend_from_slice(b" ms");
            }
            22..30 => {
                out.extend_from_slice(b"Exception in thread \"worker-");
                put_u64(out, self.rng.below(32));
                out.extend_from_slice(b"\" ");
                out.extend_from_slice(EXCEPTIONS[self.rng.index(EXCEPTIONS.len())].as_bytes());
                out.extend_from_slice(b": ");
                self.put_sentence(out);
            }
            30..70 => {
                let class = JAVA_CLASSES[self.rng.index(JAVA_CLASSES.len())];
                out.extend_from_slice(b"\tat com.mycorp.");
                out.extend_from_slice(self.module().as_bytes());
                out.push(b'.');
                out.extend_from_slice(class.as_bytes());
                out.push(b'.');
                out.extend_from_slice(JAVA_METHODS[self.rng.index(JAVA_METHODS.len())].as_bytes());
                out.push(b'(');
                out.extend_from_slice(class.as_bytes());
                out.extend_from_slice(b".java:");
                put_u64(out, self.rng.range(20, 900));
                out.push(b')');
            }
            70..76 => {
                out.extend_from_slice(b"thread 'tokio-runtime-worker' panicked at src/");
                out.extend_from_slice(self.module().as_bytes());
                out.extend_from_slice(b"/mod.rs:");
                put_u64(out, self.rng.range(10, 700));
                out.push(b':');
                put_u64(out, self.rng.range(5, 60));
                out.push(b':');
            }
            76..80 => out.extend_from_slice(b"Traceback (most recent call last):"),
            80..90 => {
                out.extend_from_slice(b"  File \"/srv/app/");
                out.extend_from_slice(self.module().as_bytes());
                out.extend_from_slice(b"/handlers.py\", line ");
                put_u64(out, self.rng.range(10, 600));
                out.extend_from_slice(b", in ");
                out.extend_from_slice(JAVA_METHODS[self.rng.index(JAVA_METHODS.len())].as_bytes());
            }
            90..97 => {
                // glog: E<MMDD> <hh:mm:ss.micros> <pid> <file:line>] <message>
                let c = Civil::from_ns(time_ns);
                out.push(b'E');
                put_padded(out, c.month, 2);
                put_padded(out, c.day, 2);
                out.push(b' ');
                put_hms(out, &c);
                out.push(b'.');
                put_padded(out, c.nanos / 1_000, 6);
                out.extend_from_slice(b"  4242 ");
                out.extend_from_slice(self.module().as_bytes());
                out.extend_from_slice(b".cc:");
                put_u64(out, self.rng.range(10, 900));
                out.extend_from_slice(b"] connection reset by peer (");
                let uid = self.sample_uid();
                let ip = self.ip_for(uid);
                put_ip(out, ip);
                out.push(b')');
            }
            _ => {
                out.extend_from_slice(b"note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace")
            }
        }
        out.push(b'\n');
    }

    /// A log-message-like sentence, for text that is not an event.
    fn put_sentence(&mut self, out: &mut Vec<u8>) {
        self.put_message(None, out);
    }
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A UTC calendar time, from ns since the Unix epoch.
struct Civil {
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    nanos: u64,
}

impl Civil {
    /// Howard Hinnant's `civil_from_days`, for non-negative days only (time_ns is unsigned).
    fn from_ns(ns: u64) -> Self {
        let secs = ns / 1_000_000_000;
        let days = secs / 86_400;
        let sod = secs % 86_400;
        let z = days + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + u64::from(month <= 2);
        Civil {
            year,
            month,
            day,
            hour: sod / 3_600,
            minute: sod / 60 % 60,
            second: sod % 60,
            nanos: ns % 1_000_000_000,
        }
    }
}

fn put_date(out: &mut Vec<u8>, c: &Civil) {
    put_padded(out, c.year, 4);
    out.push(b'-');
    put_padded(out, c.month, 2);
    out.push(b'-');
    put_padded(out, c.day, 2);
}

fn put_hms(out: &mut Vec<u8>, c: &Civil) {
    put_padded(out, c.hour, 2);
    out.push(b':');
    put_padded(out, c.minute, 2);
    out.push(b':');
    put_padded(out, c.second, 2);
}

/// `2026-11-01T00:00:00.001Z` (milliseconds).
fn put_rfc3339(out: &mut Vec<u8>, ns: u64) {
    let c = Civil::from_ns(ns);
    put_date(out, &c);
    out.push(b'T');
    put_hms(out, &c);
    out.push(b'.');
    put_padded(out, c.nanos / 1_000_000, 3);
    out.push(b'Z');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        let mut out = Vec::new();
        put_rfc3339(&mut out, crate::GEN_START_NS_DEFAULT + 1_500_000);
        assert_eq!(out, b"2026-11-01T00:00:00.001Z");
        out.clear();
        put_rfc3339(&mut out, 0);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
        out.clear();
        // 2024-02-29T23:59:59Z, a leap day.
        put_rfc3339(&mut out, 1_709_251_199_000_000_000);
        assert_eq!(out, b"2024-02-29T23:59:59.000Z");
    }
}
