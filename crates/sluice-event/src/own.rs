//! [`OwnEvent`]: the builder for sluice's own events (supervisor lifecycle, bad-line counts, disk
//! errors), written straight into an output buffer as one JSON line.
//!
//! It does not decide which events exist or what their keys are: that belongs to the emitters.

use crate::wrap::{clamp_time_ns, escape_str_into};
use crate::{KEY_BAD, KEY_BAD_VALUES, KEY_EVENT, KEY_ORIGIN, KEY_RAW, KEY_RAW_B64, KEY_RAW_CUT, KEY_TIME_NS};

/// Longest string value (and event kind) in an own event, in bytes; longer ones are cut at a
/// character boundary so that an own event can never approach the line limit.
pub const OWN_VALUE_BYTES_MAX: usize = 1024;

/// Value of `sluice_origin` in every [`OwnEvent`].
pub const ORIGIN_SUPERVISOR: &str = "supervisor";

/// One of sluice's own events being written:
/// `{"time_ns":T,"sluice_origin":"supervisor","sluice_event":KIND,"key":value,...}` and `'\n'`.
///
/// The line is ended by [`finish`](OwnEvent::finish), or when the builder is dropped, so a
/// forgotten `finish` never leaves half a line in the buffer. Keys must be distinct (the caller's
/// duty; a debug assertion guards the reserved ones). `time_ns` past 2^63-1 is written as
/// 2^63-1 so that the event stays valid.
///
/// ```
/// let mut out = Vec::new();
/// sluice_event::OwnEvent::new(&mut out, 7, "child_exited").u64("pid", 42).str("signal", "SIGTERM").finish();
/// assert_eq!(
///     out,
///     b"{\"time_ns\":7,\"sluice_origin\":\"supervisor\",\"sluice_event\":\"child_exited\",\"pid\":42,\"signal\":\"SIGTERM\"}\n"
/// );
/// assert!(sluice_event::check_line(&out[..out.len() - 1], true).is_empty());
/// ```
pub struct OwnEvent<'a> {
    out: &'a mut Vec<u8>,
}

/// The longest prefix of `s` of at most [`OWN_VALUE_BYTES_MAX`] bytes that ends on a character.
fn truncated(s: &str) -> &str {
    if s.len() <= OWN_VALUE_BYTES_MAX {
        return s;
    }
    let mut end = OWN_VALUE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Keys that `OwnEvent::str` and `u64` may use: not the ones `new` writes, and no `sluice_` key
/// other than those this crate documents.
fn key_allowed(key: &str) -> bool {
    let written_by_new = [KEY_TIME_NS, KEY_ORIGIN, KEY_EVENT];
    let documented = [KEY_BAD, KEY_BAD_VALUES, KEY_RAW, KEY_RAW_B64, KEY_RAW_CUT];
    !written_by_new.contains(&key) && (!key.starts_with("sluice_") || documented.contains(&key))
}

impl<'a> OwnEvent<'a> {
    /// Starts the event with its time, origin and kind.
    pub fn new(out: &'a mut Vec<u8>, time_ns: u64, kind: &str) -> Self {
        out.extend_from_slice(b"{\"time_ns\":");
        out.extend_from_slice(itoa::Buffer::new().format(clamp_time_ns(time_ns)).as_bytes());
        out.extend_from_slice(b",\"sluice_origin\":\"supervisor\",\"sluice_event\":\"");
        escape_str_into(out, truncated(kind).as_bytes());
        out.push(b'"');
        OwnEvent { out }
    }

    fn key(&mut self, key: &str) {
        debug_assert!(key_allowed(key), "own event key {key:?} is reserved or already written");
        self.out.extend_from_slice(b",\"");
        escape_str_into(self.out, key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// Adds a string value, JSON-escaped and cut to [`OWN_VALUE_BYTES_MAX`] bytes.
    pub fn str(mut self, key: &str, value: &str) -> Self {
        self.key(key);
        self.out.push(b'"');
        escape_str_into(self.out, truncated(value).as_bytes());
        self.out.push(b'"');
        self
    }

    /// Adds an integer value.
    pub fn u64(mut self, key: &str, value: u64) -> Self {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self
    }

    /// Ends the line: writes `}` and `'\n'`.
    pub fn finish(self) {
        // Drop does the writing, so that dropping without `finish` also ends the line.
    }
}

impl Drop for OwnEvent<'_> {
    fn drop(&mut self) {
        self.out.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_truncated_at_a_char_boundary() {
        let mut out = Vec::new();
        let long = format!("{}é", "x".repeat(OWN_VALUE_BYTES_MAX - 1));
        OwnEvent::new(&mut out, u64::MAX, "k\"ind").str("msg", "a\nb").str("long", &long).finish();
        let line = std::str::from_utf8(&out).expect("utf-8");
        assert!(line.starts_with(
            "{\"time_ns\":9223372036854775807,\"sluice_origin\":\"supervisor\",\"sluice_event\":\"k\\\"ind\",\"msg\":\"a\\nb\",\"long\":\"xxx"
        ));
        assert!(line.ends_with(&format!("{}\"}}\n", "x".repeat(10))));
        assert_eq!(line.matches('x').count(), OWN_VALUE_BYTES_MAX - 1);
        assert!(crate::check_line(&out[..out.len() - 1], true).is_empty());
    }

    #[test]
    fn dropping_ends_the_line() {
        let mut out = Vec::new();
        {
            let _event = OwnEvent::new(&mut out, 1, "x").u64("n", 1);
        }
        assert_eq!(out, b"{\"time_ns\":1,\"sluice_origin\":\"supervisor\",\"sluice_event\":\"x\",\"n\":1}\n");
    }

    #[test]
    fn allowed_keys() {
        assert!(key_allowed("pid"));
        assert!(key_allowed(KEY_BAD));
        assert!(!key_allowed("time_ns"));
        assert!(!key_allowed(KEY_EVENT));
        assert!(!key_allowed("sluice_other"));
    }
}
