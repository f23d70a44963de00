//! Deciding which [`BadClass`]es a line has: a fast path that allocates nothing (for the valid
//! lines that are nearly all of the traffic) and a detailed analysis that also says what each
//! member is (for wrapping bad lines).
//!
//! Both share [`Classifier`], so they cannot disagree; a unit test and a property test check that
//! they do not. Writing the wrapped event is `wrap.rs`.

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
    #[inline]
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
        let mut role = Role::Kept;
        let type_class = match kind {
            Kind::Str | Kind::Uint(_) => None,
            Kind::Float => Some(BadClass::Float),
            Kind::Negative => Some(BadClass::Negative),
            Kind::Overflow => Some(BadClass::IntegerOverflow),
            Kind::Bool => Some(BadClass::Bool),
            Kind::Null => Some(BadClass::Null),
            Kind::Nested => Some(BadClass::Nested),
        };
        if let Some(c) = type_class {
            self.classes.insert(c);
            role = Role::Bad;
        }
        if !self.allow_reserved && name.starts_with(RESERVED_PREFIX) {
            self.classes.insert(BadClass::ReservedKey);
            role = Role::Bad;
        }
        if duplicate {
            self.classes.insert(BadClass::DuplicateKey);
            role = Role::Bad;
        }
        role
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

/// A key seen by the fast path, in one word: where it starts in the line (high 32 bits), its
/// length (16 bits), its first and last byte. Equal low halves mean "compare the bytes"; most
/// pairs of different keys differ there, so the common case is one integer comparison.
#[inline(always)]
fn key_word(start: usize, key: &[u8]) -> Option<u64> {
    let len = u16::try_from(key.len()).ok()?;
    let (first, last) = match key {
        [] => (0, 0),
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
    };
    let start = u32::try_from(start).ok()?;
    Some(u64::from(start) << 32 | u64::from(len) << 16 | u64::from(first) << 8 | u64::from(last))
}

/// The part of a key word that depends only on the key's bytes.
const KEY_WORD_SUMMARY: u64 = 0xffff_ffff;

/// The fast path's visitor: duplicate detection over a fixed array of key words.
struct Fast {
    classifier: Classifier,
    words: [u64; KEYS_FAST_MAX],
    keys: usize,
}

impl Visitor for Fast {
    #[inline(always)]
    fn member(&mut self, line: &[u8], m: Member) -> bool {
        // An escaped key's bytes are not its name, and past the array the quadratic search stops
        // being cheap: both are rare, and the detailed analysis handles them.
        if m.key_escaped || self.keys == KEYS_FAST_MAX {
            return false;
        }
        let (start, end) = (m.key.start + 1, m.key.end - 1);
        let name = &line[start..end];
        let Some(word) = key_word(start, name) else {
            return false;
        };
        let mut duplicate = false;
        for &seen in &self.words[..self.keys] {
            if (seen ^ word) & KEY_WORD_SUMMARY == 0 {
                let seen_start = (seen >> 32) as usize;
                if line.get(seen_start..seen_start + name.len()) == Some(name) {
                    duplicate = true;
                    break;
                }
            }
        }
        self.words[self.keys] = word;
        self.keys += 1;
        self.classifier.member(name, m.kind, duplicate);
        true
    }
}

/// The classes of a line; see [`crate::check_line`].
#[inline]
pub(crate) fn classes(line: &[u8], allow_reserved: bool) -> BadClasses {
    let mut fast = Fast { classifier: Classifier::new(allow_reserved), words: [0; KEYS_FAST_MAX], keys: 0 };
    match simple::walk(line, &mut fast) {
        Ok(false) => fast.classifier.finish().0,
        Ok(true) if std::str::from_utf8(line).is_ok() => fast.classifier.finish().0,
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
    let mut fast = Fast { classifier: Classifier::new(allow_reserved), words: [0; KEYS_FAST_MAX], keys: 0 };
    match scan::scan_line(line, &mut fast) {
        Err(NotJson) => BadClass::NotJson.into(),
        Ok(Shape::NotObject) => BadClass::NotObject.into(),
        Ok(Shape::Object) => fast.classifier.finish().0,
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
    seen: HashSet<Cow<'a, [u8]>>,
    members: Vec<Analyzed<'a>>,
}

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
        let duplicate = !self.seen.insert(name.clone());
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
    let mut detailed = Detailed { classifier: Classifier::new(allow_reserved), seen: HashSet::new(), members: Vec::new() };
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
    fn key_word_collisions_still_compare_bytes() {
        // Same length, first and last byte: only the full comparison tells them apart.
        let line = br#"{"time_ns":1,"abxcd":"1","abycd":"2","":"3","a":"4"}"#;
        assert!(classes(line, false).is_empty());
        let line = br#"{"time_ns":1,"abxcd":"1","abycd":"2","":"3","abxcd":"4"}"#;
        assert_eq!(classes(line, false), BadClass::DuplicateKey.into());
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
