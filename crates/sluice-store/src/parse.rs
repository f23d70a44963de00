//! Parsing one stored line into `time_ns` and its flat (key, value) pairs, fast and without
//! allocation for lines that need no unescaping.
//!
//! This is not the validator of SPEC §1 (that is `sluice_event`, run by the supervisor): the store
//! trusts lines to be valid events and only needs their keys and values. It still never panics and
//! never guesses: anything that is not a flat JSON object of string and unsigned-integer values with
//! one integer `time_ns` is refused as a whole, and the caller keeps the raw text. Other duplicate
//! keys are returned as they are (the buffer sends the later values to the overflow column).

use std::ops::Range;

/// Where a key or a string value lives: a slice of the line (no escapes in it) or of the scratch
/// buffer (unescaped text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Text {
    Line(Range<usize>),
    Scratch(Range<usize>),
}

/// A value of a flat event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(Text),
    U64(u64),
}

/// The pairs of one line, reused from line to line so that parsing allocates only when a line
/// has more keys or more escaped text than any before it.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) time_ns: u64,
    /// Every key but `time_ns`, in line order.
    pub(crate) fields: Vec<(Text, Value)>,
    scratch: String,
}

/// Why a line was refused (only for tests and debugging: the caller keeps the raw text either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    NotUtf8,
    Syntax,
    ValueType,
    Duplicate,
    NoTime,
}

impl Parsed {
    /// The text of `t` for a line parsed from `line`.
    pub(crate) fn text<'a>(&'a self, line: &'a str, t: &Text) -> &'a str {
        match t {
            Text::Line(r) => &line[r.clone()],
            Text::Scratch(r) => &self.scratch[r.clone()],
        }
    }

    /// Parse `line` (without its '\n'). On success the line is valid UTF-8 and is returned as `&str`.
    pub(crate) fn parse<'a>(&mut self, line: &'a [u8]) -> Result<&'a str, Refused> {
        self.fields.clear();
        self.scratch.clear();
        let text = std::str::from_utf8(line).map_err(|_| Refused::NotUtf8)?;
        let mut p = Cursor { s: text.as_bytes(), i: 0 };
        let mut time_ns = None;
        p.ws();
        p.expect(b'{')?;
        p.ws();
        if p.peek() == Some(b'}') {
            return Err(Refused::NoTime);
        }
        loop {
            p.ws();
            let key = p.string(text, &mut self.scratch)?;
            p.ws();
            p.expect(b':')?;
            p.ws();
            let value = match p.peek() {
                Some(b'"') => Value::Str(p.string(text, &mut self.scratch)?),
                Some(b'0'..=b'9') => Value::U64(p.integer()?),
                Some(_) => return Err(Refused::ValueType),
                None => return Err(Refused::Syntax),
            };
            let key_text = match &key {
                Text::Line(r) => &text[r.clone()],
                Text::Scratch(r) => &self.scratch[r.clone()],
            };
            if key_text == sluice_event::KEY_TIME_NS {
                match (time_ns, value) {
                    (None, Value::U64(t)) => time_ns = Some(t),
                    (Some(_), _) => return Err(Refused::Duplicate),
                    (None, Value::Str(_)) => return Err(Refused::ValueType),
                }
            } else {
                // Duplicate keys are found by the buffer in O(1) (a column already set in this row).
                self.fields.push((key, value));
            }
            p.ws();
            match p.next() {
                Some(b',') => continue,
                Some(b'}') => break,
                _ => return Err(Refused::Syntax),
            }
        }
        p.ws();
        if p.i != p.s.len() {
            return Err(Refused::Syntax);
        }
        self.time_ns = time_ns.ok_or(Refused::NoTime)?;
        Ok(text)
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Result<(), Refused> {
        if self.next() == Some(b) {
            Ok(())
        } else {
            Err(Refused::Syntax)
        }
    }

    /// JSON whitespace except '\n', which never occurs inside a line.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    /// An unsigned integer without sign, fraction or exponent, at most u64::MAX.
    fn integer(&mut self) -> Result<u64, Refused> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            v = v.checked_mul(10).and_then(|v| v.checked_add(u64::from(d - b'0'))).ok_or(Refused::ValueType)?;
            self.i += 1;
        }
        if self.i - start > 1 && self.s[start] == b'0' {
            return Err(Refused::Syntax);
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(Refused::ValueType);
        }
        Ok(v)
    }

    /// A JSON string; the cursor is on its opening quote. Text without escapes is returned as a
    /// range of the line; escaped text is unescaped into `scratch`.
    fn string(&mut self, text: &str, scratch: &mut String) -> Result<Text, Refused> {
        self.expect(b'"')?;
        let start = self.i;
        let rest = &self.s[start..];
        let stop = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).ok_or(Refused::Syntax)?;
        match rest[stop] {
            b'"' => {
                self.i = start + stop + 1;
                return Ok(Text::Line(start..start + stop));
            }
            b'\\' => {}
            _ => return Err(Refused::Syntax),
        }
        let begin = scratch.len();
        scratch.push_str(&text[start..start + stop]);
        self.i = start + stop;
        loop {
            let b = self.next().ok_or(Refused::Syntax)?;
            match b {
                b'"' => return Ok(Text::Scratch(begin..scratch.len())),
                b'\\' => {
                    let e = self.next().ok_or(Refused::Syntax)?;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(Refused::Syntax),
                    };
                    scratch.push(c);
                }
                0..=0x1f => return Err(Refused::Syntax),
                _ => {
                    // Copy the run of plain bytes up to the next quote or backslash at once.
                    let from = self.i - 1;
                    let run = self.s[from..]
                        .iter()
                        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                        .ok_or(Refused::Syntax)?;
                    // Both ends are ASCII bytes, so they are character boundaries.
                    scratch.push_str(&text[from..from + run]);
                    self.i = from + run;
                }
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, Refused> {
        let mut v = 0u32;
        for _ in 0..4 {
            let d = match self.next() {
                Some(b @ b'0'..=b'9') => b - b'0',
                Some(b @ b'a'..=b'f') => b - b'a' + 10,
                Some(b @ b'A'..=b'F') => b - b'A' + 10,
                _ => return Err(Refused::Syntax),
            };
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }

    /// `\uXXXX`, with a following low surrogate for a high one; a lone surrogate is refused.
    fn unicode_escape(&mut self) -> Result<char, Refused> {
        let hi = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&hi) {
            if self.next() != Some(b'\\') || self.next() != Some(b'u') {
                return Err(Refused::Syntax);
            }
            let lo = self.hex4()?;
            if !(0xDC00..0xE000).contains(&lo) {
                return Err(Refused::Syntax);
            }
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            hi
        };
        char::from_u32(code).ok_or(Refused::Syntax)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(line: &str) -> Result<(u64, Vec<(String, String)>), Refused> {
        let mut p = Parsed::default();
        let text = p.parse(line.as_bytes())?;
        let fields = p
            .fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::Str(t) => format!("s:{}", p.text(text, t)),
                    Value::U64(n) => format!("u:{n}"),
                };
                (p.text(text, k).to_string(), v)
            })
            .collect();
        Ok((p.time_ns, fields))
    }

    #[test]
    fn valid_lines_give_their_pairs() {
        let (t, f) = pairs(r#"{"time_ns":5,"a":"x","n":18446744073709551615}"#).unwrap();
        assert_eq!(t, 5);
        assert_eq!(f, [("a".into(), "s:x".into()), ("n".into(), "u:18446744073709551615".into())]);
        let (_, f) = pairs(" { \"k\\u0061\" : \"a\\\"b\\\\c\\n\\u00e9\\ud83d\\ude00z\" ,\t\"time_ns\":0 } ").unwrap();
        assert_eq!(f, [("ka".into(), "s:a\"b\\c\né😀z".into())]);
        let (_, f) = pairs(r#"{"time_ns":1,"sluice_raw":"\u0000"}"#).unwrap();
        assert_eq!(f, [("sluice_raw".into(), "s:\u{0}".into())]);
    }

    #[test]
    fn every_refused_class() {
        let cases: &[(&[u8], Refused)] = &[
            (b"", Refused::Syntax),
            (b"not json", Refused::Syntax),
            (b"[1]", Refused::Syntax),
            (b"{}", Refused::NoTime),
            (br#"{"a":"b"}"#, Refused::NoTime),
            (br#"{"time_ns":"5"}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":1.5}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":1e3}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":-1}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":true}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":null}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":{"b":1}}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":18446744073709551616}"#, Refused::ValueType),
            (br#"{"time_ns":1,"a":01}"#, Refused::Syntax),
            (br#"{"time_ns":1,"time_ns":2}"#, Refused::Duplicate),
            (br#"{"time_ns":1,"a":"\ud800"}"#, Refused::Syntax),
            (br#"{"time_ns":1,"a":"x"} trailing"#, Refused::Syntax),
            (br#"{"time_ns":1,"a":"x""#, Refused::Syntax),
            (b"{\"time_ns\":1,\"a\":\"\x01\"}", Refused::Syntax),
            (b"{\"time_ns\":1,\"a\":\"\xff\"}", Refused::NotUtf8),
        ];
        for (line, want) in cases {
            let mut p = Parsed::default();
            assert_eq!(p.parse(line), Err(*want), "{}", String::from_utf8_lossy(line));
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = Parsed::default().parse(&bytes);
        }

        #[test]
        fn agrees_with_serde_on_flat_objects(
            keys in proptest::collection::btree_map("[a-z\\\\\"é]{1,6}", proptest::prop_oneof![
                proptest::prelude::any::<u64>().prop_map(serde_json::Value::from),
                "[ -~é\n]{0,8}".prop_map(serde_json::Value::from),
            ], 0..6),
            time_ns in proptest::prelude::any::<u64>(),
        ) {
            let mut obj = serde_json::Map::new();
            obj.insert("time_ns".into(), time_ns.into());
            for (k, v) in &keys {
                obj.insert(k.clone(), v.clone());
            }
            let line = serde_json::to_string(&obj).unwrap();
            let (t, fields) = pairs(&line).unwrap();
            proptest::prop_assert_eq!(t, time_ns);
            let want: Vec<(String, String)> = keys.iter().filter(|(k, _)| *k != "time_ns").map(|(k, v)| {
                let v = match v { serde_json::Value::String(s) => format!("s:{s}"), other => format!("u:{other}") };
                (k.clone(), v)
            }).collect();
            let mut got = fields;
            got.sort();
            let mut want = want;
            want.sort();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
