//! Deciding which [`BadClass`]es a line has: a fast path that allocates nothing (for the valid
//! lines that are nearly all of the traffic) and a detailed analysis that also says what each
//! member is (for wrapping bad lines).
//!
//! The rules of SPEC §1 are written twice: plainly in [`Classifier`] (the detailed analysis) and
//! folded into a few bits per member in [`Fast`]. Unit and property tests check that the two, and
//! both scanners (`simple.rs`, `scan.rs`), agree. Writing the wrapped event is `wrap.rs`.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;

use crate::class::{BadClass, BadClasses};
use crate::scan::{self, Kind, Member, NotJson, Shape, Visitor, TIME_NS_MAX};
use crate::simple::{self, Defer};

/// Name of the key that carries the event time.
const TIME_NS: &[u8] = b"time_ns";
/// Prefix of keys reserved for what sluice adds.
const RESERVED_PREFIX: &[u8] = b"sluice_";
/// Keys the fast path compares without allocating; a line with more goes the detailed way.
const KEYS_FAST_MAX: usize = 32;

/// What a member becomes in a wrapped event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The first `time_ns`, valid.
    Time,
    /// Copied into the wrapped event as it was.
    Kept,
    /// Goes into `sluice_bad_values`.
    Bad,
}

/// The class a value of this kind is (as a bit of [`BadClasses`]), or 0 for a valid value.
#[inline(always)]
fn type_class_bits(kind: Kind) -> u32 {
    match kind {
        Kind::Str | Kind::Uint(_) => 0,
        Kind::Float => BadClass::Float.bit(),
        Kind::Negative => BadClass::Negative.bit(),
        Kind::Overflow => BadClass::IntegerOverflow.bit(),
        Kind::Bool => BadClass::Bool.bit(),
        Kind::Null => BadClass::Null.bit(),
        Kind::Nested => BadClass::Nested.bit(),
    }
}

/// The per-object rules of SPEC §1, fed one member at a time.
struct Classifier {
    allow_reserved: bool,
    classes: BadClasses,
    time_ns: Option<u64>,
    time_seen: bool,
    other_seen: bool,
}

impl Classifier {
    fn new(allow_reserved: bool) -> Self {
        Classifier { allow_reserved, classes: BadClasses::NONE, time_ns: None, time_seen: false, other_seen: false }
    }

    /// `name` is the unescaped key; `duplicate` says an earlier member had the same name.
    fn member(&mut self, name: &[u8], kind: Kind, duplicate: bool) -> Role {
        if name == TIME_NS {
            if duplicate {
                self.classes.insert(BadClass::DuplicateKey);
                return Role::Bad;
            }
            self.time_seen = true;
            return match kind {
                Kind::Uint(t) if t <= TIME_NS_MAX => {
                    self.time_ns = Some(t);
                    Role::Time
                }
                _ => {
                    self.classes.insert(BadClass::InvalidTimeNs);
                    Role::Bad
                }
            };
        }
        self.other_seen = true;
        let mut bits = type_class_bits(kind);
        if name.starts_with(RESERVED_PREFIX) && !self.allow_reserved {
            bits |= BadClass::ReservedKey.bit();
        }
        if duplicate {
            bits |= BadClass::DuplicateKey.bit();
        }
        self.classes.insert_bits(bits);
        if bits == 0 {
            Role::Kept
        } else {
            Role::Bad
        }
    }

    fn finish(mut self) -> (BadClasses, Option<u64>) {
        if !self.time_seen {
            self.classes.insert(BadClass::MissingTimeNs);
        } else if !self.other_seen {
            self.classes.insert(BadClass::OnlyTimeNs);
        }
        (self.classes, self.time_ns)
    }
}

/// Up to the first 8 bytes of `line[start..start + len]`, zero-padded, little-endian.
#[inline(always)]
fn head_word(line: &[u8], start: usize, len: usize) -> u64 {
    let mut bytes = [0u8; 8];
    match line.get(start..start + 8) {
        // Nearly always: the line goes on after the key (quote, colon, value, brace).
        Some(eight) => bytes.copy_from_slice(eight),
        None => {
            let n = len.min(8);
            bytes[..n].copy_from_slice(&line[start..start + n]);
        }
    }
    let word = u64::from_le_bytes(bytes);
    if len >= 8 {
        word
    } else {
        word & ((1u64 << (8 * len)) - 1)
    }
}

/// The key's last (up to) 8 bytes, zero-extended, little-endian; `end` is where the key ends.
#[inline(always)]
fn tail_word(line: &[u8], end: usize, len: usize) -> u64 {
    // Load the 8 bytes that end with the key (nearly always possible: a key rarely ends in the
    // first 8 bytes of a line) and shift out those before the key.
    let word = match end.checked_sub(8).and_then(|from| line.get(from..end)) {
        Some(eight) => {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(eight);
            u64::from_le_bytes(bytes)
        }
        None => return head_word(line, end - len, len),
    };
    word.checked_shr(8 * (8 - len.min(8)) as u32).unwrap_or(0)
}

/// `time_ns` as a zero-padded head word.
const TIME_NS_WORD: u64 = u64::from_le_bytes(*b"time_ns\0");
/// `sluice_` as the low 7 bytes of a head word.
const RESERVED_WORD: u64 = u64::from_le_bytes(*b"sluice_\0");
const LOW_7_BYTES: u64 = 0x00ff_ffff_ffff_ffff;

/// The fast path's visitor: the rules of [`Classifier`] folded into a few bits per member, with
/// the per-line conclusions drawn in [`Fast::finish`].
///
/// Duplicate keys are found by hash: a 64-bit Bloom filter answers "new" for most keys with one
/// test; on a hit the earlier hashes are compared, and an equal hash (a duplicate, or a 2^-64
/// accident) stops the fast path so the detailed analysis decides exactly.
struct Fast {
    allow_reserved: bool,
    /// Classes of wrong-typed values under keys other than `time_ns`.
    type_bits: u32,
    reserved_seen: bool,
    time_seen: bool,
    time_valid: bool,
    other_seen: bool,
    bloom: u64,
    hashes: [u64; KEYS_FAST_MAX],
    keys: usize,
}

impl Fast {
    fn new(allow_reserved: bool) -> Self {
        Fast {
            allow_reserved,
            type_bits: 0,
            reserved_seen: false,
            time_seen: false,
            time_valid: false,
            other_seen: false,
            bloom: 0,
            hashes: [0; KEYS_FAST_MAX],
            keys: 0,
        }
    }

    #[cold]
    #[inline(never)]
    fn hash_seen(&self, hash: u64) -> bool {
        self.hashes[..self.keys].contains(&hash)
    }

    /// The classes of the object, once every member was seen without a duplicate.
    fn finish(&self) -> BadClasses {
        let mut classes = BadClasses::NONE;
        classes.insert_bits(self.type_bits);
        if self.reserved_seen && !self.allow_reserved {
            classes.insert(BadClass::ReservedKey);
        }
        if !self.time_seen {
            classes.insert(BadClass::MissingTimeNs);
        } else {
            if !self.time_valid {
                classes.insert(BadClass::InvalidTimeNs);
            }
            if !self.other_seen {
                classes.insert(BadClass::OnlyTimeNs);
            }
        }
        classes
    }
}

impl Visitor for Fast {
    #[inline(always)]
    fn member(&mut self, line: &[u8], m: Member) -> bool {
        // An escaped key's bytes are not its name, and past the array the hashes cannot be
        // kept: both are rare, and the detailed analysis handles them.
        if m.key_escaped || self.keys >= KEYS_FAST_MAX {
            return false;
        }
        let (start, end) = (m.key.start + 1, m.key.end - 1);
        let len = end - start;
        let head = head_word(line, start, len);
        let tail = tail_word(line, end, len);
        let hash = (head ^ tail.rotate_left(29) ^ len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let bit = 1u64 << (hash >> 58);
        if self.bloom & bit != 0 && self.hash_seen(hash) {
            return false;
        }
        self.bloom |= bit;
        self.hashes[self.keys] = hash;
        self.keys += 1;
        if len == 7 && head == TIME_NS_WORD {
            // No duplicate got this far, so this is the only `time_ns`.
            self.time_seen = true;
            self.time_valid = matches!(m.kind, Kind::Uint(t) if t <= TIME_NS_MAX);
        } else {
            self.other_seen = true;
            self.type_bits |= type_class_bits(m.kind);
            self.reserved_seen |= len >= 7 && head & LOW_7_BYTES == RESERVED_WORD;
        }
        true
    }
}

/// The classes of a line; see [`crate::check_line`].
#[inline]
pub(crate) fn classes(line: &[u8], allow_reserved: bool) -> BadClasses {
    let mut fast = Fast::new(allow_reserved);
    match simple::walk(line, &mut fast) {
        Ok(false) => fast.finish(),
        Ok(true) if std::str::from_utf8(line).is_ok() => fast.finish(),
        Ok(true) => BadClass::InvalidUtf8.into(),
        Err(Defer) => classes_general(line, allow_reserved),
    }
}

/// The classes of any line, by the general scanner.
#[inline(never)]
pub(crate) fn classes_general(line: &[u8], allow_reserved: bool) -> BadClasses {
    if line.is_empty() {
        return BadClass::Empty.into();
    }
    if std::str::from_utf8(line).is_err() {
        return BadClass::InvalidUtf8.into();
    }
    let mut fast = Fast::new(allow_reserved);
    match scan::scan_line(line, &mut fast) {
        Err(NotJson) => BadClass::NotJson.into(),
        Ok(Shape::NotObject) => BadClass::NotObject.into(),
        Ok(Shape::Object) => fast.finish(),
        Ok(Shape::Stopped) => analyze(line, allow_reserved).classes,
    }
}

/// One top-level member as the wrapper needs it.
#[derive(Debug)]
pub(crate) struct Analyzed<'a> {
    /// The key with its quotes, as written.
    pub key_text: Range<usize>,
    /// The key's name (unescaped).
    pub name: Cow<'a, [u8]>,
    pub value: Range<usize>,
    pub role: Role,
}

/// Everything known about a line.
#[derive(Debug)]
pub(crate) struct Analysis<'a> {
    pub classes: BadClasses,
    /// The line's own valid `time_ns`.
    pub time_ns: Option<u64>,
    /// Top-level members in order; empty unless the line is a JSON object.
    pub members: Vec<Analyzed<'a>>,
}

struct Detailed<'a> {
    classifier: Classifier,
    /// Names seen, built only once there are too many members to compare one by one.
    seen: Option<HashSet<Cow<'a, [u8]>>>,
    members: Vec<Analyzed<'a>>,
}

/// Members up to which duplicates are found by comparing with each earlier name; past it, a set.
const MEMBERS_LINEAR_MAX: usize = 32;

impl<'a> Detailed<'a> {
    fn add(&mut self, line: &'a [u8], m: Member) {
        let inner = &line[m.key.start + 1..m.key.end - 1];
        let name: Cow<'a, [u8]> = if m.key_escaped {
            let mut buf = Vec::with_capacity(inner.len());
            scan::unescape_into(inner, &mut buf);
            Cow::Owned(buf)
        } else {
            Cow::Borrowed(inner)
        };
        let duplicate = match &mut self.seen {
            Some(seen) => !seen.insert(name.clone()),
            None if self.members.len() < MEMBERS_LINEAR_MAX => self.members.iter().any(|m| m.name == name),
            None => {
                let mut seen: HashSet<Cow<'a, [u8]>> = self.members.iter().map(|m| m.name.clone()).collect();
                let duplicate = !seen.insert(name.clone());
                self.seen = Some(seen);
                duplicate
            }
        };
        let role = self.classifier.member(&name, m.kind, duplicate);
        self.members.push(Analyzed { key_text: m.key, name, value: m.value, role });
    }
}

/// Collects members; the visitor trait has no lifetime for the line, so this holds it.
struct DetailedVisitor<'a, 'd> {
    line: &'a [u8],
    detailed: &'d mut Detailed<'a>,
}

impl Visitor for DetailedVisitor<'_, '_> {
    fn member(&mut self, _line: &[u8], m: Member) -> bool {
        self.detailed.add(self.line, m);
        true
    }
}

/// The classes and the role of every member of a line. Allocates; for bad lines only.
pub(crate) fn analyze(line: &[u8], allow_reserved: bool) -> Analysis<'_> {
    let terminal = |c: BadClass| Analysis { classes: c.into(), time_ns: None, members: Vec::new() };
    if line.is_empty() {
        return terminal(BadClass::Empty);
    }
    if std::str::from_utf8(line).is_err() {
        return terminal(BadClass::InvalidUtf8);
    }
    let mut detailed = Detailed { classifier: Classifier::new(allow_reserved), seen: None, members: Vec::new() };
    let shape = scan::scan_line(line, &mut DetailedVisitor { line, detailed: &mut detailed });
    match shape {
        Err(NotJson) => terminal(BadClass::NotJson),
        Ok(Shape::NotObject) => terminal(BadClass::NotObject),
        Ok(Shape::Object | Shape::Stopped) => {
            let (classes, time_ns) = detailed.classifier.finish();
            Analysis { classes, time_ns, members: detailed.members }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_and_detailed_agree_on_examples() {
        for line in [
            r#"{"time_ns":1,"a":"b"}"#,
            r#"{"time_ns":1,"a":"b","a":1}"#,
            r#"{"time_ns":1,"sluice_a":"b"}"#,
            r#"{"time_ns":-1,"a":1.5,"b":null,"c":true,"d":[],"e":{},"f":-2,"g":99999999999999999999}"#,
            r#"{"time_ns":1}"#,
            r#"{"time_ns":1,"time_ns":2}"#,
            r#"{}"#,
            r#"{"a":"b"}"#,
            r#"[]"#,
            r#"{"#,
        ] {
            let line = line.as_bytes();
            for allow in [false, true] {
                let expected = analyze(line, allow).classes;
                assert_eq!(classes(line, allow), expected, "{}", String::from_utf8_lossy(line));
                assert_eq!(classes_general(line, allow), expected, "{}", String::from_utf8_lossy(line));
            }
        }
    }

    #[test]
    fn many_keys_take_the_detailed_path_and_still_find_duplicates() {
        let mut line = String::from(r#"{"time_ns":1"#);
        for k in 0..100 {
            line.push_str(&format!(r#","k{k}":{k}"#));
        }
        line.push('}');
        assert!(classes(line.as_bytes(), false).is_empty());
        let dup = line.replacen('}', r#","k7":"again"}"#, 1);
        assert_eq!(classes(dup.as_bytes(), false), BadClass::DuplicateKey.into());
    }

    #[test]
    fn similar_keys_are_told_apart() {
        // Same length, first and last byte, same first or last 8 bytes.
        let line = br#"{"time_ns":1,"abxcd":"1","abycd":"2","":"3","a":"4"}"#;
        assert!(classes(line, false).is_empty());
        let line = br#"{"time_ns":1,"abxcd":"1","abycd":"2","":"3","abxcd":"4"}"#;
        assert_eq!(classes(line, false), BadClass::DuplicateKey.into());
        let line = br#"{"time_ns":1,"duration_ms":1,"duration_us":2,"x_duration_ms":3,"time_nsx":4}"#;
        assert!(classes(line, false).is_empty());
        // Keys near the start of the line, where the tail word cannot be loaded whole.
        let line = br#"{"a":"1","ab":"2","time_ns":3,"b":"4","a":"5"}"#;
        assert_eq!(classes(line, false), BadClass::DuplicateKey.into());
        let line = br#"{"ab":"1","a":"2","time_ns":3,"b":"4"}"#;
        assert!(classes(line, false).is_empty());
        let line = br#"{"time_ns":1,"":"1","":"2"}"#;
        assert_eq!(classes(line, false), BadClass::DuplicateKey.into());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// Objects of members drawn from keys and values that hit every rule, escapes included.
        #[test]
        fn fast_and_detailed_agree(members in proptest::collection::vec((
            proptest::sample::select(vec![
                "\"time_ns\"", "\"t\\u0069me_ns\"", "\"a\"", "\"\\u0061\"", "\"b\"", "\"sluice_x\"",
                "\"\\u0073luice_y\"", "\"ab\"", "\"ba\"",
            ]),
            proptest::sample::select(vec![
                "1", "0", "-1", "1.5", "\"s\"", "true", "null", "[1]", "{}", "18446744073709551616",
                "9223372036854775808",
            ]),
        ), 0..40), allow in proptest::bool::ANY) {
            let body: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let line = format!("{{{}}}", body.join(","));
            let line = line.as_bytes();
            let expected = analyze(line, allow).classes;
            proptest::prop_assert_eq!(classes(line, allow), expected);
            proptest::prop_assert_eq!(classes_general(line, allow), expected);
        }
    }

    #[test]
    fn roles() {
        let line = br#"{"time_ns":5,"a":"x","b":1.5,"a":"y","sluice_z":"q"}"#;
        let a = analyze(line, false);
        let roles: Vec<Role> = a.members.iter().map(|m| m.role).collect();
        assert_eq!(roles, vec![Role::Time, Role::Kept, Role::Bad, Role::Bad, Role::Bad]);
        assert_eq!(a.time_ns, Some(5));
    }
}
