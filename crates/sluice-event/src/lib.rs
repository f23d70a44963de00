//! Events: the validation of one captured line (SPEC §1), the wrapped form of bad lines and
//! stderr lines, sluice's own events, and the event identity (SPEC §3).
//!
//! This crate does no I/O, has no async runtime and depends on no other sluice crate. Its
//! functions never fail and never panic: bad input is data.
//!
//! # Valid lines
//!
//! A stdout line (without its `'\n'`) is **valid** when it is non-empty, at most
//! [`Limits::line_bytes_max`] bytes, UTF-8, and one JSON object (whitespace — space, tab, CR —
//! allowed around tokens; a raw `'\n'` never is) such that:
//! - key `time_ns` holds an integer from 0 to 2^63-1;
//! - there is at least one other key;
//! - every other value is a string or an integer from 0 to `u64::MAX` written without sign,
//!   fraction or exponent;
//! - no key appears twice and no key starts with `sluice_`, both judged on the key's name after
//!   unescaping (`"a"` and `"\u0061"` are one key);
//! - strings hold no lone surrogate escape (`"\ud800"` is not JSON here).
//!
//! [`process_line`] copies a valid line to the output byte for byte.
//!
//! **Cost.** A valid line is checked in one pass that allocates nothing: quotes are found 64
//! bytes at a time and the walk jumps from quote to quote; duplicate keys are caught by a small
//! hash filter. Anything unusual (escapes, whitespace other than spaces, bad values) falls back
//! to a general byte-by-byte scanner, and a bad line is then analysed a second time, with
//! allocation, to build its wrapped form. `benches/parse.rs` measures both.
//!
//! # Wrapped bad lines
//!
//! A bad stdout line becomes one valid event whose keys are, in this order:
//!
//! | key | value |
//! |---|---|
//! | `time_ns` | the line's own `time_ns` if valid, else the capture time |
//! | `sluice_bad` | the [`BadClass`] names found, joined by `,` in [`BadClass::ALL`] order |
//! | *kept keys* | for an object line: each key, in the line's order, whose value is a string or a valid integer, that is not reserved and is the first of its name, with its value's original text |
//! | `sluice_bad_values` | (only if any) a string holding the JSON text of an object: key → original value, for wrong-typed values, a bad `time_ns`, values under reserved keys and later occurrences of a duplicate key; a key with several such values maps to an array of them |
//! | `sluice_raw` | the original line, JSON-escaped, cut to [`Limits::raw_keep`] bytes at a character boundary; each invalid UTF-8 sequence shows as U+FFFD; `""` for an empty line |
//! | `sluice_raw_b64` | (only for `invalid_utf8` lines) standard base64 with padding of exactly the kept original bytes |
//! | `sluice_raw_cut` | (only if > 0) how many original bytes were not kept |
//!
//! Lines that are `empty`, `too_long`, `invalid_utf8`, `not_json` or `not_object` have no kept
//! keys and no `sluice_bad_values`. The wrapped line is never longer than
//! [`Limits::line_bytes_max`]: if the full form would be, it is written with `time_ns`,
//! `sluice_bad` and the raw keys only. It contains no raw `'\n'` and passes
//! [`check_line`]`(_, true)`. Example:
//!
//! ```
//! use sluice_event::{check_line, process_line, BadClass, Limits};
//!
//! let line = br#"{"time_ns":1700000000000000000,"msg":"hi","x":1.5,"y":{"a":1},"n":7}"#;
//! let mut out = Vec::new();
//! let classes = process_line(line, 99, &Limits::default(), &mut out);
//! assert_eq!(classes.iter().collect::<Vec<_>>(), [BadClass::Float, BadClass::Nested]);
//! let documented = concat!(
//!     r#"{"time_ns":1700000000000000000,"sluice_bad":"float,nested","msg":"hi","n":7,"#,
//!     r#""sluice_bad_values":"{\"x\":1.5,\"y\":{\"a\":1}}","#,
//!     r#""sluice_raw":"{\"time_ns\":1700000000000000000,\"msg\":\"hi\",\"x\":1.5,\"y\":{\"a\":1},\"n\":7}"}"#,
//!     "\n",
//! );
//! assert_eq!(std::str::from_utf8(&out).unwrap(), documented);
//! assert!(check_line(documented.trim_end().as_bytes(), true).is_empty());
//! ```
//!
//! # Stderr lines
//!
//! Always wrapped, never passed through:
//! `{"time_ns":T,"sluice_origin":"stderr","sluice_raw":"...","sluice_raw_b64":"...","sluice_raw_cut":N}`
//! with the capture time and the same cutting rules; `sluice_raw_b64` appears when the kept bytes
//! are not UTF-8, `sluice_raw_cut` when bytes were cut.
//!
//! ```
//! let mut out = Vec::new();
//! sluice_event::process_stderr(b"panic: \"boom\"", 5, &Default::default(), &mut out);
//! assert_eq!(out, b"{\"time_ns\":5,\"sluice_origin\":\"stderr\",\"sluice_raw\":\"panic: \\\"boom\\\"\"}\n");
//! ```

mod check;
mod class;
mod id;
mod own;
mod scan;
mod simple;
mod wrap;

pub use class::{BadClass, BadClasses};
pub use id::{event_id, CHUNK_ID_BYTES_MAX};
pub use own::{OwnEvent, ORIGIN_SUPERVISOR, OWN_VALUE_BYTES_MAX};

/// Default largest accepted line (bytes, without the '\n').
pub const LINE_BYTES_MAX_DEFAULT: usize = 256 * 1024;
/// Smallest `line_bytes_max` that still leaves room for a wrapped line with its raw text.
pub const LINE_BYTES_MAX_MIN: usize = 1024;
/// Cap on original bytes copied into sluice_raw.
pub const RAW_BYTES_MAX: usize = 8 * 1024;
/// `raw_keep` is at most this fraction of the line limit: escaping can make each kept byte six
/// (`\u0001`) and base64 adds 4/3, so the wrapped line always fits.
const RAW_KEEP_DIVISOR: usize = 12;

/// The event time key.
pub const KEY_TIME_NS: &str = "time_ns";
/// Classes of a wrapped bad line.
pub const KEY_BAD: &str = "sluice_bad";
/// Wrong-typed values of a bad line, as JSON text.
pub const KEY_BAD_VALUES: &str = "sluice_bad_values";
/// The original line, escaped and possibly cut.
pub const KEY_RAW: &str = "sluice_raw";
/// The kept original bytes in base64, when they are not UTF-8.
pub const KEY_RAW_B64: &str = "sluice_raw_b64";
/// How many original bytes were not kept.
pub const KEY_RAW_CUT: &str = "sluice_raw_cut";
/// Who wrote the event: `stderr` or `supervisor` (absent on the child's own stdout events).
pub const KEY_ORIGIN: &str = "sluice_origin";
/// The kind of one of sluice's own events.
pub const KEY_EVENT: &str = "sluice_event";
/// Value of `sluice_origin` for stderr lines.
pub const ORIGIN_STDERR: &str = "stderr";

/// Limits applied to captured lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted line in bytes, without the '\n'. A value below [`LINE_BYTES_MAX_MIN`] is
    /// treated as [`LINE_BYTES_MAX_MIN`] (use [`Limits::new`] to reject it instead).
    pub line_bytes_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { line_bytes_max: LINE_BYTES_MAX_DEFAULT }
    }
}

/// A limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("line limit of {line_bytes_max} bytes is too small: use at least {LINE_BYTES_MAX_MIN}")]
    LineBytesMaxTooSmall { line_bytes_max: usize },
}

impl Limits {
    /// Limits with this line limit, or an error if it is below [`LINE_BYTES_MAX_MIN`].
    pub fn new(line_bytes_max: usize) -> Result<Limits, LimitsError> {
        if line_bytes_max < LINE_BYTES_MAX_MIN {
            return Err(LimitsError::LineBytesMaxTooSmall { line_bytes_max });
        }
        Ok(Limits { line_bytes_max })
    }

    /// The line limit actually applied: `line_bytes_max`, raised to [`LINE_BYTES_MAX_MIN`].
    pub fn line_bytes_max_effective(&self) -> usize {
        self.line_bytes_max.max(LINE_BYTES_MAX_MIN)
    }

    /// How many original bytes of a bad line go into `sluice_raw`:
    /// `min(RAW_BYTES_MAX, line_bytes_max / 12)`.
    pub fn raw_keep(&self) -> usize {
        RAW_BYTES_MAX.min(self.line_bytes_max_effective() / RAW_KEEP_DIVISOR)
    }
}

/// Append the event for one stdout line (without its '\n') to `out`, followed by '\n'.
/// A valid line is appended byte-for-byte; a bad one is appended wrapped. Never panics, never fails.
/// Returns the classes found (empty = valid). `now_ns` is the capture time.
#[inline]
pub fn process_line(line: &[u8], now_ns: u64, limits: &Limits, out: &mut Vec<u8>) -> BadClasses {
    wrap::process_line(line, now_ns, limits, out)
}

/// Same for a line longer than limits.line_bytes_max: the caller kept only `prefix` (at most raw_keep bytes)
/// and counted `total_len` bytes in all. Class TooLong (plus InvalidUtf8 when the kept bytes are
/// not UTF-8; then `sluice_raw_b64` is written too). A character cut by the end of `prefix` is
/// dropped.
pub fn process_too_long(prefix: &[u8], total_len: u64, now_ns: u64, limits: &Limits, out: &mut Vec<u8>) {
    wrap::process_too_long(prefix, total_len, now_ns, limits, out);
}

/// A stderr line: always wrapped, never passed through.
pub fn process_stderr(line: &[u8], now_ns: u64, limits: &Limits, out: &mut Vec<u8>) {
    wrap::process_stderr(line, line.len() as u64, false, now_ns, limits, out);
}

/// A stderr line of which the caller kept only `prefix` and counted `total_len` bytes in all
/// (for stderr lines longer than the caller buffers). A character cut by the end of `prefix` is
/// dropped; `sluice_raw_cut` counts everything not kept.
pub fn process_stderr_too_long(prefix: &[u8], total_len: u64, now_ns: u64, limits: &Limits, out: &mut Vec<u8>) {
    wrap::process_stderr(prefix, total_len, true, now_ns, limits, out);
}

/// Check a line strictly. `allow_reserved` = true accepts sluice_ keys (to check sluice's own output).
/// The length limit is not checked here (it takes no [`Limits`]); `too_long` is never returned.
#[inline]
pub fn check_line(line: &[u8], allow_reserved: bool) -> BadClasses {
    check::classes(line, allow_reserved)
}
