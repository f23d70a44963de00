//! Writing events for captured lines: valid stdout lines as they are, bad stdout lines and stderr
//! lines wrapped in the forms documented in the crate root.
//!
//! Nothing here fails or panics, and every line written passes `check_line(_, true)`, has no raw
//! `'\n'` before its final one, and fits in `Limits::line_bytes_max`.

use std::collections::HashMap;

use base64::Engine as _;

use crate::check::{self, Analysis, Role};
use crate::class::{BadClass, BadClasses};
use crate::scan::{self, TIME_NS_MAX};
use crate::Limits;

/// Character written in `sluice_raw` for each invalid UTF-8 sequence (U+FFFD, as raw UTF-8).
const REPLACEMENT_UTF8: &[u8] = "\u{FFFD}".as_bytes();

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// For each byte: 0 when it goes into a JSON string as it is, `u` when it needs `\u00XX`,
/// otherwise the letter after the backslash.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 0x20 {
        t[c] = b'u';
        c += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Appends `s` (valid UTF-8) JSON-escaped, without quotes.
pub(crate) fn escape_str_into(out: &mut Vec<u8>, s: &[u8]) {
    let mut run_start = 0;
    let mut i = 0;
    while i < s.len() {
        // Skip eight bytes at a time while none needs escaping (the same test as the scanner's
        // string loop: the lowest flagged byte is exact).
        if let Some(eight) = s.get(i..i + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(eight);
            let mask = scan::string_special_mask(u64::from_le_bytes(word));
            if mask == 0 {
                i += 8;
                continue;
            }
            i += (mask.trailing_zeros() / 8) as usize;
        }
        let c = s[i];
        let e = ESCAPE[c as usize];
        if e != 0 {
            out.extend_from_slice(&s[run_start..i]);
            if e == b'u' {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX_DIGITS[(c >> 4) as usize],
                    HEX_DIGITS[(c & 15) as usize],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', e]);
            }
            run_start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[run_start..]);
}

/// Appends any bytes JSON-escaped, each invalid UTF-8 sequence as U+FFFD.
fn escape_lossy_into(out: &mut Vec<u8>, bytes: &[u8]) {
    for chunk in bytes.utf8_chunks() {
        escape_str_into(out, chunk.valid().as_bytes());
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(REPLACEMENT_UTF8);
        }
    }
}

/// Length in bytes of the UTF-8 sequence a lead byte starts; 0 for a byte that cannot start one.
fn utf8_width(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

/// How many leading bytes of `bytes` go into `sluice_raw`: at most `keep`, cut back so that a
/// valid character is never split. `continues` says the original line goes on past `bytes`
/// (a too-long line of which the caller kept a prefix), so that a character cut by the end of
/// `bytes` is dropped rather than shown as invalid.
fn kept_len(bytes: &[u8], keep: usize, continues: bool) -> usize {
    let (cut, continues) = if bytes.len() > keep { (keep, true) } else { (bytes.len(), continues) };
    if !continues {
        return cut;
    }
    let Some(lead) = (cut.saturating_sub(3)..cut).rev().find(|&p| bytes[p] & 0xc0 != 0x80) else {
        return cut;
    };
    let width = utf8_width(bytes[lead]);
    if width == 0 || lead + width <= cut {
        return cut;
    }
    match std::str::from_utf8(&bytes[lead..bytes.len().min(lead + width)]) {
        // A whole character straddles the cut, or one that is valid so far meets the end.
        Ok(_) => lead,
        Err(e) if e.error_len().is_none() => lead,
        // Invalid anyway: keep its bytes, they show as U+FFFD and in base64.
        Err(_) => cut,
    }
}

/// The original bytes to keep, and how many were cut.
struct Raw<'a> {
    kept: &'a [u8],
    cut_bytes: u64,
    /// Add `sluice_raw_b64` with the exact kept bytes.
    b64: bool,
}

impl<'a> Raw<'a> {
    fn new(bytes: &'a [u8], keep: usize, continues: bool, total_len: u64) -> Self {
        let kept = &bytes[..kept_len(bytes, keep, continues)];
        Raw { kept, cut_bytes: total_len.saturating_sub(kept.len() as u64), b64: false }
    }

    fn kept_is_utf8(&self) -> bool {
        std::str::from_utf8(self.kept).is_ok()
    }

    /// Appends `,"sluice_raw":...` and the optional `sluice_raw_b64` and `sluice_raw_cut`.
    fn write_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"sluice_raw\":\"");
        escape_lossy_into(out, self.kept);
        out.push(b'"');
        if self.b64 {
            out.extend_from_slice(b",\"sluice_raw_b64\":\"");
            let start = out.len();
            let engine = &base64::engine::general_purpose::STANDARD;
            out.resize(start + base64::encoded_len(self.kept.len(), true).unwrap_or(0), 0);
            let written = engine.encode_slice(self.kept, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
        if self.cut_bytes > 0 {
            out.extend_from_slice(b",\"sluice_raw_cut\":");
            out.extend_from_slice(itoa::Buffer::new().format(self.cut_bytes).as_bytes());
        }
    }

    /// The same raw with only half as many bytes kept.
    fn halved(&self, total_len: u64) -> Raw<'a> {
        let mut smaller = Raw::new(self.kept, self.kept.len() / 2, true, total_len);
        smaller.b64 = self.b64;
        smaller
    }
}

/// `time_ns` as written by sluice: a value past 2^63-1 would make sluice's own event invalid.
pub(crate) fn clamp_time_ns(t: u64) -> u64 {
    t.min(TIME_NS_MAX)
}

fn write_head(out: &mut Vec<u8>, time_ns: u64) {
    out.extend_from_slice(b"{\"time_ns\":");
    out.extend_from_slice(itoa::Buffer::new().format(clamp_time_ns(time_ns)).as_bytes());
}

fn write_bad(out: &mut Vec<u8>, classes: BadClasses) {
    out.extend_from_slice(b",\"sluice_bad\":\"");
    for (n, c) in classes.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(c.name().as_bytes());
    }
    out.push(b'"');
}

/// Writes `{"time_ns":T,"sluice_bad":...,"sluice_raw":...}` plus '\n', shrinking the raw until
/// the line fits. With `raw_keep()` at a twelfth of the limit it always fits the first time; the
/// loop only makes the bound hold whatever the arithmetic.
fn write_short_form(
    out: &mut Vec<u8>,
    time_ns: u64,
    classes: BadClasses,
    mut raw: Raw<'_>,
    total_len: u64,
    limits: &Limits,
) {
    let start = out.len();
    loop {
        write_head(out, time_ns);
        write_bad(out, classes);
        raw.write_fields(out);
        out.push(b'}');
        if out.len() - start <= limits.line_bytes_max_effective() || raw.kept.is_empty() {
            break;
        }
        out.truncate(start);
        raw = raw.halved(total_len);
    }
    out.push(b'\n');
}

/// Appends the `sluice_bad_values` object (as JSON text, before string escaping) to `text`.
fn bad_values_text(line: &[u8], analysis: &Analysis<'_>, text: &mut Vec<u8>) {
    // Group by key name, in order of first bad appearance, so the object has no duplicate keys.
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    let mut group_of: HashMap<&[u8], usize> = HashMap::new();
    for (i, m) in analysis.members.iter().enumerate() {
        if m.role != Role::Bad {
            continue;
        }
        let g = *group_of.entry(&m.name).or_insert_with(|| {
            groups.push((i, Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    text.push(b'{');
    for (n, (first, values)) in groups.iter().enumerate() {
        if n > 0 {
            text.push(b',');
        }
        text.extend_from_slice(&line[analysis.members[*first].key_text.clone()]);
        text.push(b':');
        if values.len() > 1 {
            text.push(b'[');
        }
        for (v, &i) in values.iter().enumerate() {
            if v > 0 {
                text.push(b',');
            }
            text.extend_from_slice(&line[analysis.members[i].value.clone()]);
        }
        if values.len() > 1 {
            text.push(b']');
        }
    }
    text.push(b'}');
}

/// Wraps a bad line that is complete (not too long).
fn write_wrapped(line: &[u8], analysis: &Analysis<'_>, now_ns: u64, limits: &Limits, out: &mut Vec<u8>) {
    let time_ns = analysis.time_ns.unwrap_or(now_ns);
    let mut raw = Raw::new(line, limits.raw_keep(), false, line.len() as u64);
    raw.b64 = analysis.classes.contains(BadClass::InvalidUtf8);
    if analysis.members.is_empty() {
        return write_short_form(out, time_ns, analysis.classes, raw, line.len() as u64, limits);
    }
    let start = out.len();
    write_head(out, time_ns);
    write_bad(out, analysis.classes);
    let mut any_bad = false;
    for m in &analysis.members {
        match m.role {
            Role::Time => {}
            Role::Bad => any_bad = true,
            Role::Kept => {
                out.push(b',');
                out.extend_from_slice(&line[m.key_text.clone()]);
                out.push(b':');
                out.extend_from_slice(&line[m.value.clone()]);
            }
        }
    }
    if any_bad {
        let mut text = Vec::new();
        bad_values_text(line, analysis, &mut text);
        out.extend_from_slice(b",\"sluice_bad_values\":\"");
        // The text is the line's own JSON, so it is UTF-8 and contains no raw '\n'.
        escape_str_into(out, &text);
        out.push(b'"');
    }
    raw.write_fields(out);
    out.push(b'}');
    if out.len() - start > limits.line_bytes_max_effective() {
        out.truncate(start);
        return write_short_form(out, time_ns, analysis.classes, raw, line.len() as u64, limits);
    }
    out.push(b'\n');
}

/// See [`crate::process_line`].
#[inline]
pub(crate) fn process_line(line: &[u8], now_ns: u64, limits: &Limits, out: &mut Vec<u8>) -> BadClasses {
    if line.len() > limits.line_bytes_max_effective() {
        return process_too_long(line, line.len() as u64, now_ns, limits, out);
    }
    let classes = check::classes(line, false);
    if classes.is_empty() {
        out.reserve(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        return classes;
    }
    cold_wrap(line, classes, now_ns, limits, out)
}

#[cold]
#[inline(never)]
fn cold_wrap(line: &[u8], classes: BadClasses, now_ns: u64, limits: &Limits, out: &mut Vec<u8>) -> BadClasses {
    // A line that is not an object has nothing to keep: skip the second, detailed pass.
    let terminal = [BadClass::Empty, BadClass::InvalidUtf8, BadClass::NotJson, BadClass::NotObject];
    let analysis = if terminal.into_iter().any(|c| classes.contains(c)) {
        Analysis { classes, time_ns: None, members: Vec::new() }
    } else {
        check::analyze(line, false)
    };
    write_wrapped(line, &analysis, now_ns, limits, out);
    analysis.classes
}

/// See [`crate::process_too_long`]; returns the classes written.
pub(crate) fn process_too_long(
    prefix: &[u8],
    total_len: u64,
    now_ns: u64,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> BadClasses {
    let mut raw = Raw::new(prefix, limits.raw_keep(), true, total_len);
    let mut classes = BadClasses::only(BadClass::TooLong);
    if !raw.kept_is_utf8() {
        classes.insert(BadClass::InvalidUtf8);
        raw.b64 = true;
    }
    write_short_form(out, now_ns, classes, raw, total_len, limits);
    classes
}

/// See [`crate::process_stderr`] and [`crate::process_stderr_too_long`].
pub(crate) fn process_stderr(
    line: &[u8],
    total_len: u64,
    continues: bool,
    now_ns: u64,
    limits: &Limits,
    out: &mut Vec<u8>,
) {
    let mut raw = Raw::new(line, limits.raw_keep(), continues, total_len);
    raw.b64 = !raw.kept_is_utf8();
    let start = out.len();
    loop {
        write_head(out, now_ns);
        out.extend_from_slice(b",\"sluice_origin\":\"stderr\"");
        raw.write_fields(out);
        out.push(b'}');
        if out.len() - start <= limits.line_bytes_max_effective() || raw.kept.is_empty() {
            break;
        }
        out.truncate(start);
        raw = raw.halved(total_len);
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_len_never_splits_a_character() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        let cuts: Vec<usize> = (0..=s.len()).map(|k| kept_len(s, k, false)).collect();
        assert_eq!(cuts, vec![0, 1, 1, 3, 3, 3, 6, 6, 6, 6, 10]);
        // A prefix of a longer line that ends inside a character drops that character.
        assert_eq!(kept_len(&s[..8], 100, true), 6);
        assert_eq!(kept_len(&s[..8], 100, false), 8);
        // Invalid bytes are kept (shown as U+FFFD) instead of being mistaken for a cut character.
        assert_eq!(kept_len(b"ab\xe0\x80cd", 4, false), 4);
        assert_eq!(kept_len(b"ab\xff", 3, true), 3);
    }

    #[test]
    fn escaping_long_runs() {
        for len in 0..40 {
            for special in [b'"', b'\\', b'\n', 0x01] {
                let mut s = vec![b'a'; len];
                s.push(special);
                s.extend_from_slice(b"bcdefghijk\x1f");
                let mut out = Vec::new();
                escape_str_into(&mut out, &s);
                let text = String::from_utf8(out).expect("utf-8");
                let back: String = serde_json::from_str(&format!("\"{text}\"")).expect("a JSON string");
                assert_eq!(back.as_bytes(), &s[..], "{text}");
            }
        }
    }

    #[test]
    fn escaping() {
        let mut out = Vec::new();
        escape_lossy_into(&mut out, b"a\"b\\c\n\x01\x7f\xffz\xe2\x82");
        assert_eq!(out, "a\\\"b\\\\c\\n\\u0001\x7f\u{FFFD}z\u{FFFD}".as_bytes());
    }
}
