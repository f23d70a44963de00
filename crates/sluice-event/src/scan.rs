//! A strict, single-pass JSON scanner for one line: it reports the top-level members of an object
//! (spans and value kinds) to a visitor and checks the rest of the grammar (RFC 8259).
//!
//! It does not decide which members are bad (that is `check.rs`), does not build values, and
//! never recurses: nested values are skipped with an explicit stack so that a line of 100k `[`
//! cannot overflow the thread's stack. A raw `'\n'` is not whitespace here, because a line can
//! never contain one.

use std::ops::Range;

/// The line is not JSON (syntax error, bad escape, lone surrogate, trailing bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotJson;

/// What a value is, as far as the event rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Str,
    /// A non-negative integer without fraction or exponent that fits in u64.
    Uint(u64),
    Float,
    Negative,
    Overflow,
    Bool,
    Null,
    Nested,
}

/// One top-level member of an object line.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The key including its quotes.
    pub key: Range<usize>,
    /// The key contains a backslash escape, so its bytes are not its name.
    pub key_escaped: bool,
    /// The value's text, without surrounding whitespace.
    pub value: Range<usize>,
    pub kind: Kind,
}

/// Receives the members of an object line in order.
pub(crate) trait Visitor {
    /// Returns false to stop scanning (the caller will use a slower path).
    fn member(&mut self, line: &[u8], member: Member) -> bool;
}

/// How a line that is JSON turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Object,
    NotObject,
    /// The visitor stopped the scan; nothing is known about the rest of the line.
    Stopped,
}

/// Byte classes, so the inner loops are one table look-up per byte.
const C_OTHER: u8 = 0;
const C_DIGIT: u8 = 1;
const C_HEX_LETTER: u8 = 2;

static CLASS: [u8; 256] = {
    let mut t = [C_OTHER; 256];
    let mut c = b'0';
    while c <= b'9' {
        t[c as usize] = C_DIGIT;
        c += 1;
    }
    let mut c = b'a';
    while c <= b'f' {
        t[c as usize] = C_HEX_LETTER;
        t[(c - b'a' + b'A') as usize] = C_HEX_LETTER;
        c += 1;
    }
    t
};

/// Largest `time_ns`: 2^63-1, so that it fits a signed 64-bit timestamp column downstream.
pub(crate) const TIME_NS_MAX: u64 = i64::MAX as u64;

/// Bit `c` set for each JSON whitespace byte `c` we accept (space, tab, CR).
const WS_MASK: u64 = 1 << b' ' | 1 << b'\t' | 1 << b'\r';

#[inline(always)]
fn is_ws(c: u8) -> bool {
    // One compare rejects every byte of compact JSON; no table load on the hot path.
    c <= b' ' && WS_MASK & (1 << c) != 0
}

#[inline(always)]
fn is_digit(c: u8) -> bool {
    CLASS[c as usize] == C_DIGIT
}

#[inline(always)]
pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_ws(b[i]) {
        i += 1;
    }
    i
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that is `"`, `\` or below 0x20. The lowest set bit is always
/// exact (the usual SWAR false positives only appear above a true hit), which is all the caller uses.
#[inline(always)]
pub(crate) fn string_special_mask(w: u64) -> u64 {
    let q = w ^ (LO * b'"' as u64);
    let s = w ^ (LO * b'\\' as u64);
    let has_q = q.wrapping_sub(LO) & !q;
    let has_s = s.wrapping_sub(LO) & !s;
    let has_ctl = w.wrapping_sub(LO * 0x20) & !w;
    (has_q | has_s | has_ctl) & HI
}

/// Scans a string whose opening quote is at `i - 1`. Returns the index after the closing quote
/// and whether the string contains an escape.
#[inline(always)]
pub(crate) fn scan_string(b: &[u8], mut i: usize) -> Result<(usize, bool), NotJson> {
    let mut escaped = false;
    loop {
        // Eight bytes at a time until a byte that needs a look.
        while i + 8 <= b.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&b[i..i + 8]);
            let mask = string_special_mask(u64::from_le_bytes(word));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        let c = *b.get(i).ok_or(NotJson)?;
        match c {
            b'"' => return Ok((i + 1, escaped)),
            b'\\' => {
                escaped = true;
                i = scan_escape(b, i)?;
            }
            0..=0x1f => return Err(NotJson),
            // Near the end of the line the word test is skipped and bytes come one at a time.
            _ => i += 1,
        }
    }
}

#[inline]
fn hex_value(c: u8) -> Option<u16> {
    match CLASS[c as usize] {
        C_DIGIT => Some(u16::from(c - b'0')),
        C_HEX_LETTER => Some(u16::from((c | 0x20) - b'a' + 10)),
        _ => None,
    }
}

/// The four hex digits at `b[j..j + 4]`.
pub(crate) fn hex4(b: &[u8], j: usize) -> Result<u16, NotJson> {
    let digits = b.get(j..j + 4).ok_or(NotJson)?;
    let mut v = 0u16;
    for &d in digits {
        v = (v << 4) | hex_value(d).ok_or(NotJson)?;
    }
    Ok(v)
}

pub(crate) fn is_high_surrogate(u: u16) -> bool {
    (0xD800..0xDC00).contains(&u)
}

pub(crate) fn is_low_surrogate(u: u16) -> bool {
    (0xDC00..0xE000).contains(&u)
}

/// Checks the escape whose backslash is at `i`; returns the index after it. A high surrogate must
/// be followed by an escaped low surrogate; a lone one of either kind is not JSON text we accept
/// (it has no UTF-8 form, so no consumer could store it faithfully).
fn scan_escape(b: &[u8], i: usize) -> Result<usize, NotJson> {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(i + 2),
        Some(b'u') => {
            let u = hex4(b, i + 2)?;
            if is_high_surrogate(u) {
                if b.get(i + 6) == Some(&b'\\') && b.get(i + 7) == Some(&b'u') {
                    let low = hex4(b, i + 8)?;
                    if is_low_surrogate(low) {
                        return Ok(i + 12);
                    }
                }
                Err(NotJson)
            } else if is_low_surrogate(u) {
                Err(NotJson)
            } else {
                Ok(i + 6)
            }
        }
        _ => Err(NotJson),
    }
}

/// Most decimal digits that always fit in u64 (10^19 - 1 < 2^64).
const U64_DIGITS_SAFE: usize = 19;

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.len() <= U64_DIGITS_SAFE {
        let mut v = 0u64;
        for &d in digits {
            v = v * 10 + u64::from(d - b'0');
        }
        Some(v)
    } else {
        let mut v = 0u64;
        for &d in digits {
            v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        Some(v)
    }
}

/// Powers of ten by exponent, for joining a partial word of digits to the value so far.
const POW10: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// The value of eight decimal digits, one per byte (0..=9), the first (most significant) in the
/// lowest byte: three multiplications instead of eight dependent ones.
#[inline(always)]
fn eight_digits(t: u64) -> u64 {
    const MASK: u64 = 0x0000_00ff_0000_00ff;
    const MUL1: u64 = 100 + (1_000_000 << 32);
    const MUL2: u64 = 1 + (10_000 << 32);
    let t = t.wrapping_mul(10).wrapping_add(t >> 8);
    ((t & MASK).wrapping_mul(MUL1).wrapping_add(((t >> 16) & MASK).wrapping_mul(MUL2))) >> 32
}

/// Scans the run of digits starting at `i`, eight at a time. Returns the index after it and its
/// value modulo 2^64 (exact when the run has at most 19 digits).
#[inline(always)]
fn scan_digits(b: &[u8], mut i: usize) -> (usize, u64) {
    let mut value = 0u64;
    while let Some(eight) = b.get(i..i + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(eight);
        // Digit bytes become 0..=9. A borrow or carry only runs upward from a non-digit byte, so
        // the lowest flagged byte is exactly the first non-digit.
        let t = u64::from_le_bytes(bytes).wrapping_sub(LO * u64::from(b'0'));
        let non_digit = (t | t.wrapping_add(LO * 0x76)) & HI;
        if non_digit == 0 {
            value = value.wrapping_mul(POW10[8]).wrapping_add(eight_digits(t));
            i += 8;
            continue;
        }
        let n = (non_digit.trailing_zeros() / 8) as usize;
        if n > 0 {
            // Keep the n digits, moved to the top bytes: the zero bytes below are leading zeros.
            let digits = t << (8 * (8 - n));
            value = value.wrapping_mul(POW10[n]).wrapping_add(eight_digits(digits));
        }
        return (i + n, value);
    }
    while let Some(d) = b.get(i).map(|c| c.wrapping_sub(b'0')).filter(|d| *d <= 9) {
        value = value.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    (i, value)
}

/// Scans a number starting at `i` (a `-` or a digit) by the JSON grammar. The integer case,
/// nearly every number in real lines, is one pass; fractions and exponents go the cold way.
#[inline(always)]
pub(crate) fn scan_number(b: &[u8], start: usize) -> Result<(usize, Kind), NotJson> {
    let negative = b[start] == b'-';
    let int_start = start + usize::from(negative);
    let (i, value) = match b.get(int_start) {
        // A leading zero stands alone: "01" ends the number after "0" and fails in the caller.
        Some(b'0') => (int_start + 1, 0),
        Some(c) if is_digit(*c) => scan_digits(b, int_start),
        _ => return Err(NotJson),
    };
    if let Some(&c) = b.get(i) {
        if c == b'.' || c | 0x20 == b'e' {
            return scan_fraction_exponent(b, i);
        }
    }
    let kind = if negative {
        Kind::Negative
    } else if i - int_start <= U64_DIGITS_SAFE {
        Kind::Uint(value)
    } else {
        parse_u64(&b[int_start..i]).map_or(Kind::Overflow, Kind::Uint)
    };
    Ok((i, kind))
}

/// The rest of a number from its `.`, `e` or `E` at `i`; the number is a float if it is valid.
#[cold]
fn scan_fraction_exponent(b: &[u8], mut i: usize) -> Result<(usize, Kind), NotJson> {
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while i < b.len() && is_digit(b[i]) {
            i += 1;
        }
        if i == frac_start {
            return Err(NotJson);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while i < b.len() && is_digit(b[i]) {
            i += 1;
        }
        if i == exp_start {
            return Err(NotJson);
        }
    }
    Ok((i, Kind::Float))
}

fn scan_literal(b: &[u8], i: usize, word: &[u8], kind: Kind) -> Result<(usize, Kind), NotJson> {
    if b[i..].starts_with(word) {
        Ok((i + word.len(), kind))
    } else {
        Err(NotJson)
    }
}

/// Scans a value that is not an object or array, starting at `i`.
#[inline(always)]
fn scan_scalar(b: &[u8], i: usize) -> Result<(usize, Kind), NotJson> {
    match b.get(i) {
        Some(b'"') => scan_string(b, i + 1).map(|(end, _)| (end, Kind::Str)),
        Some(b'-') => scan_number(b, i),
        Some(c) if is_digit(*c) => scan_number(b, i),
        Some(b't') => scan_literal(b, i, b"true", Kind::Bool),
        Some(b'f') => scan_literal(b, i, b"false", Kind::Bool),
        Some(b'n') => scan_literal(b, i, b"null", Kind::Null),
        _ => Err(NotJson),
    }
}

/// Scans any value starting at `i` (no leading whitespace).
#[inline(always)]
pub(crate) fn scan_value(b: &[u8], i: usize) -> Result<(usize, Kind), NotJson> {
    match b.get(i) {
        Some(b'{' | b'[') => skip_nested(b, i).map(|end| (end, Kind::Nested)),
        _ => scan_scalar(b, i),
    }
}

/// From `i` at a key's opening quote: past the key, whitespace, `:` and whitespace.
fn skip_key_colon(b: &[u8], i: usize) -> Result<usize, NotJson> {
    if b.get(i) != Some(&b'"') {
        return Err(NotJson);
    }
    let (end, _) = scan_string(b, i + 1)?;
    let i = skip_ws(b, end);
    if b.get(i) != Some(&b':') {
        return Err(NotJson);
    }
    Ok(skip_ws(b, i + 1))
}

/// Skips an object or array starting at `i`, iteratively. Returns the index after it.
fn skip_nested(b: &[u8], mut i: usize) -> Result<usize, NotJson> {
    // The closing byte of every open container; its length is the depth. Memory is bounded by
    // the line length, which the caller bounds.
    let mut closers: Vec<u8> = Vec::new();
    'value: loop {
        // `i` is at the start of a value.
        match b.get(i) {
            Some(b'{') => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b'}') {
                    i += 1;
                } else {
                    closers.push(b'}');
                    i = skip_key_colon(b, i)?;
                    continue 'value;
                }
            }
            Some(b'[') => {
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&b']') {
                    i += 1;
                } else {
                    closers.push(b']');
                    continue 'value;
                }
            }
            _ => i = scan_scalar(b, i)?.0,
        }
        // After a complete value: close containers or move to the next element.
        loop {
            let Some(&closer) = closers.last() else {
                return Ok(i);
            };
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i = skip_ws(b, i + 1);
                    if closer == b'}' {
                        i = skip_key_colon(b, i)?;
                    }
                    continue 'value;
                }
                Some(&c) if c == closer => {
                    closers.pop();
                    i += 1;
                }
                _ => return Err(NotJson),
            }
        }
    }
}

/// Scans a whole line, reporting each top-level member of an object to `visitor`.
#[inline]
pub(crate) fn scan_line<V: Visitor>(b: &[u8], visitor: &mut V) -> Result<Shape, NotJson> {
    let mut i = skip_ws(b, 0);
    match b.get(i) {
        Some(b'{') => {}
        Some(_) => {
            let (end, _) = scan_value(b, i)?;
            return if skip_ws(b, end) == b.len() { Ok(Shape::NotObject) } else { Err(NotJson) };
        }
        None => return Err(NotJson),
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            if b.get(i) != Some(&b'"') {
                return Err(NotJson);
            }
            let key_start = i;
            let (key_end, key_escaped) = scan_string(b, i + 1)?;
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return Err(NotJson);
            }
            let value_start = skip_ws(b, i + 1);
            let (value_end, kind) = scan_value(b, value_start)?;
            let member = Member { key: key_start..key_end, key_escaped, value: value_start..value_end, kind };
            if !visitor.member(b, member) {
                return Ok(Shape::Stopped);
            }
            i = skip_ws(b, value_end);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return Err(NotJson),
            }
        }
    }
    if skip_ws(b, i) == b.len() {
        Ok(Shape::Object)
    } else {
        Err(NotJson)
    }
}

/// Appends the name of a key (the text between its quotes, with escapes decoded) to `out`.
/// The key must have passed [`scan_string`]; anything else is decoded leniently, never panicking.
pub(crate) fn unescape_into(s: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let simple = match s.get(i + 1) {
            Some(b'b') => Some(0x08),
            Some(b'f') => Some(0x0c),
            Some(b'n') => Some(b'\n'),
            Some(b'r') => Some(b'\r'),
            Some(b't') => Some(b'\t'),
            Some(b'u') => None,
            Some(&other) => Some(other),
            None => Some(b'\\'),
        };
        if let Some(byte) = simple {
            out.push(byte);
            i += 2;
            continue;
        }
        let Ok(u) = hex4(s, i + 2) else {
            out.extend_from_slice(&s[i..]);
            return;
        };
        let mut code = u32::from(u);
        i += 6;
        if is_high_surrogate(u) && s.get(i) == Some(&b'\\') && s.get(i + 1) == Some(&b'u') {
            if let Ok(low) = hex4(s, i + 2) {
                if is_low_surrogate(low) {
                    code = 0x10000 + ((code - 0xD800) << 10) + (u32::from(low) - 0xDC00);
                    i += 6;
                }
            }
        }
        let ch = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
        let mut buf = [0u8; 4];
        out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Collect(Vec<(String, Kind)>);
    impl Visitor for Collect {
        fn member(&mut self, line: &[u8], m: Member) -> bool {
            let key = String::from_utf8_lossy(&line[m.key]).into_owned();
            self.0.push((key, m.kind));
            true
        }
    }

    fn scan(s: &str) -> Result<(Shape, Vec<(String, Kind)>), NotJson> {
        let mut c = Collect(Vec::new());
        let shape = scan_line(s.as_bytes(), &mut c)?;
        Ok((shape, c.0))
    }

    #[test]
    fn kinds_of_values() {
        let (shape, members) = scan(
            r#"{"s":"x","u":18446744073709551615,"o":18446744073709551616,"f":1.0,"e":1e3,"n":-1,"z":-0,"t":true,"b":false,"l":null,"a":[1,{"x":[]}],"m":{}}"#,
        )
        .expect("valid json");
        assert_eq!(shape, Shape::Object);
        let kinds: Vec<Kind> = members.into_iter().map(|(_, k)| k).collect();
        assert_eq!(
            kinds,
            vec![
                Kind::Str,
                Kind::Uint(u64::MAX),
                Kind::Overflow,
                Kind::Float,
                Kind::Float,
                Kind::Negative,
                Kind::Negative,
                Kind::Bool,
                Kind::Bool,
                Kind::Null,
                Kind::Nested,
                Kind::Nested,
            ]
        );
    }

    #[test]
    fn grammar_errors() {
        for bad in [
            "",
            " ",
            "{",
            "}",
            "{\"a\"}",
            "{\"a\":}",
            "{\"a\":1,}",
            "{,}",
            "{\"a\":01}",
            "{\"a\":1.}",
            "{\"a\":.5}",
            "{\"a\":1e}",
            "{\"a\":+1}",
            "{\"a\":tru}",
            "{\"a\":\"\\x\"}",
            "{\"a\":\"\\u12\"}",
            "{\"a\":\"\\ud800\"}",
            "{\"a\":\"\\udc00\"}",
            "{\"a\":\"\\ud800\\u0041\"}",
            "{\"a\":\"\t\"}",
            "{\"a\":1}x",
            "{\"a\":1}{}",
            "{\"a\":1,\n\"b\":2}",
            "[1,2",
            "[1 2]",
            "{\"a\":[1,]}",
            "{\"a\":{\"b\"}}",
            "{'a':1}",
            "{\"a\":1 \"b\":2}",
            "{\"a\":[}",
            "{\"a\":{]}",
        ] {
            assert_eq!(scan(bad), Err(NotJson), "{bad:?}");
        }
    }

    #[test]
    fn not_objects() {
        for s in ["1", " [1, 2] ", "\"x\"", "null", "true", "[]", "-5"] {
            assert_eq!(scan(s).map(|r| r.0), Ok(Shape::NotObject), "{s:?}");
        }
    }

    #[test]
    fn digits_parse_at_every_length_and_alignment() {
        for len in 1..=20 {
            for pad in 0..9 {
                let digits: String = (0..len).map(|k| char::from(b'1' + (k * 7 % 9) as u8)).collect();
                let text = format!("{}{digits}x{}", " ".repeat(pad), " ".repeat(pad));
                let (end, value) = scan_digits(text.as_bytes(), pad);
                assert_eq!(end, pad + len, "{text:?}");
                if len <= 19 {
                    assert_eq!(value, digits.parse::<u64>().unwrap(), "{text:?}");
                }
            }
        }
        assert_eq!(scan_digits(b"12345678901234567890", 0), (20, 12345678901234567890));
        assert_eq!(scan_digits(b"9/:0", 0), (1, 9));
        assert_eq!(scan_digits(b"00000000123", 0), (11, 123));
        assert_eq!(scan_digits(b"a", 0), (0, 0));
    }

    #[test]
    fn deep_nesting_does_not_recurse() {
        let deep = "[".repeat(100_000);
        assert_eq!(scan(&deep), Err(NotJson));
        let balanced = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(scan(&balanced).map(|r| r.0), Ok(Shape::NotObject));
        let in_object = format!("{{\"a\":{}1{}}}", "[".repeat(50_000), "]".repeat(50_000));
        assert_eq!(scan(&in_object).map(|r| r.1[0].1), Ok(Kind::Nested));
    }

    #[test]
    fn swar_finds_the_first_special_byte() {
        // Specials at every position of an 8-byte word, behind high bytes and near other specials.
        for pos in 0..16 {
            let mut s = vec![b'"'];
            s.extend(std::iter::repeat_n(b'a', pos));
            s.extend_from_slice("é\"\\\u{1}".as_bytes());
            let end = scan_string(&s, 1).expect("string ends");
            assert_eq!(end, (pos + 4, false));
        }
        assert_eq!(scan_string(b"\"abcdefgh\x01ijk\"", 1), Err(NotJson));
        assert_eq!(scan_string(b"\"abcdefg\\nhijklmn\"", 1), Ok((18, true)));
    }

    #[test]
    fn unescape_decodes_names() {
        let mut out = Vec::new();
        unescape_into(br#"\u0073luice_\ud83d\ude00\n\"\/"#, &mut out);
        assert_eq!(out, "sluice_\u{1F600}\n\"/".as_bytes());
    }
}
