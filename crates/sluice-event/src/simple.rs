//! The fast path for the lines that are nearly all of the traffic: objects whose strings have no
//! escapes and whose values are strings or numbers. It finds the quotes of 64 bytes at a time
//! (SSE2 on x86_64, eight bytes per `u64` elsewhere) and walks from quote to quote, so string
//! contents cost no per-byte branches; it allocates nothing.
//!
//! It only ever answers for lines it fully understands; anything else (an escape, a control
//! byte, a literal, a nested value, a syntax error, a duplicate key) returns `Err(Defer)` and the
//! general scanner in `scan.rs` decides. Unit and property tests check that the two agree.

use crate::scan::{skip_ws, Kind, Member, NotJson, Visitor};

const BLOCK_BYTES: usize = 64;

/// Quotes and the bytes that send a line to the general scanner, in one block of the line.
struct Block {
    /// Bit `i` set when byte `start + i` is `"`.
    quotes: u64,
    /// The block has a backslash or a byte below 0x20.
    special: bool,
    /// The block has a byte of 0x80 or above (so UTF-8 must be checked).
    non_ascii: bool,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
/// Multiplier that gathers bit 0 of each byte of a word into the top byte, byte k to bit 56 + k.
const GATHER: u64 = 0x0102_0408_1020_4080;

/// One bit per byte of `w`: bit k set when byte k is zero. Exact for every byte (no borrow
/// crosses bytes because the high bit is handled apart).
#[inline(always)]
fn zero_bytes(w: u64) -> u64 {
    let z = !(((w & LOW7) + LOW7) | w) & HI;
    ((z >> 7).wrapping_mul(GATHER)) >> 56
}

/// Some byte of `w` is `\` or below 0x20 (the usual has-zero test; only "any" matters here).
#[inline(always)]
fn has_special(w: u64) -> bool {
    let s = w ^ (LO * u64::from(b'\\'));
    (s.wrapping_sub(LO) & !s | w.wrapping_sub(LO * 0x20) & !w) & HI != 0
}

#[inline(always)]
fn block_at(b: &[u8], start: usize) -> Block {
    // The tail is padded with spaces: neither quote nor special.
    let mut padded = [b' '; BLOCK_BYTES];
    let chunk: &[u8; BLOCK_BYTES] = match b.get(start..start + BLOCK_BYTES).and_then(|c| c.try_into().ok()) {
        Some(chunk) => chunk,
        None => {
            let rest = &b[start.min(b.len())..];
            padded[..rest.len()].copy_from_slice(rest);
            &padded
        }
    };
    block_masks(chunk)
}

/// Portable version: eight bytes per step in a `u64`.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn block_masks_swar(chunk: &[u8; BLOCK_BYTES]) -> Block {
    let mut quotes = 0u64;
    let mut special = false;
    let mut any = 0u64;
    for (k, word) in chunk.chunks_exact(8).enumerate() {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        quotes |= zero_bytes(w ^ (LO * u64::from(b'"'))) << (8 * k);
        special |= has_special(w);
        any |= w;
    }
    Block { quotes, special, non_ascii: any & HI != 0 }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn block_masks(chunk: &[u8; BLOCK_BYTES]) -> Block {
    block_masks_swar(chunk)
}

/// SSE2 version: sixteen bytes per step. The compiler does not turn the portable loop into
/// these instructions by itself, and they make this path several times cheaper.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn block_masks(chunk: &[u8; BLOCK_BYTES]) -> Block {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        _mm_setzero_si128,
    };
    let mut quotes = 0u64;
    // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has these instructions;
    // each unaligned load reads 16 bytes at offsets 0, 16, 32 and 48 of the 64-byte `chunk`.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let control_max = _mm_set1_epi8(0x1f);
        let mut special = _mm_setzero_si128();
        let mut any = _mm_setzero_si128();
        for k in 0..BLOCK_BYTES / 16 {
            let v = _mm_loadu_si128(chunk.as_ptr().add(16 * k).cast());
            quotes |= u64::from(_mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) as u16) << (16 * k);
            // Unsigned "below 0x20": min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, control_max), v);
            special = _mm_or_si128(special, _mm_or_si128(control, _mm_cmpeq_epi8(v, backslash)));
            any = _mm_or_si128(any, v);
        }
        Block { quotes, special: _mm_movemask_epi8(special) != 0, non_ascii: _mm_movemask_epi8(any) != 0 }
    }
}

/// The string-quote positions of a line in order, computed a block at a time as needed.
struct Quotes<'a> {
    b: &'a [u8],
    /// Start of the next block to compute.
    next_block: usize,
    /// Start of the block `mask` belongs to.
    base: usize,
    /// Quotes of the current block not yet returned.
    mask: u64,
    non_ascii: bool,
}

/// Why the fast path gives up on a line.
pub(crate) struct Defer;

impl Quotes<'_> {
    /// The next quote at or after the ones already returned.
    #[inline(always)]
    fn next(&mut self) -> Result<usize, Defer> {
        while self.mask == 0 {
            if self.next_block >= self.b.len() {
                return Err(Defer);
            }
            let block = block_at(self.b, self.next_block);
            if block.special {
                return Err(Defer);
            }
            self.non_ascii |= block.non_ascii;
            self.base = self.next_block;
            self.mask = block.quotes;
            self.next_block += BLOCK_BYTES;
        }
        let at = self.base + self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Ok(at)
    }

    /// The string starting with the quote at `open`: the index after its closing quote.
    #[inline(always)]
    fn string(&mut self, open: usize) -> Result<usize, Defer> {
        // Every quote is consumed in order, so the next one must be this string's opening quote;
        // anything else means a quote sat where the walk did not look (a syntax error).
        if self.next()? != open {
            return Err(Defer);
        }
        Ok(self.next()? + 1)
    }
}

impl From<NotJson> for Defer {
    fn from(_: NotJson) -> Self {
        Defer
    }
}

/// Walks an object line, reporting members to `visitor`. `Ok(non_ascii)`: the line is a JSON
/// object of strings and numbers and every member was reported; when `non_ascii` the caller
/// must still check UTF-8 (only string contents can hold such bytes here). `Err(Defer)`: let
/// the general scanner decide.
#[inline(always)]
pub(crate) fn walk<V: Visitor>(b: &[u8], visitor: &mut V) -> Result<bool, Defer> {
    let mut quotes = Quotes { b, next_block: 0, base: 0, mask: 0, non_ascii: false };
    let mut i = after(b, 0, b'{')?;
    loop {
        let key_start = if b.get(i) == Some(&b'"') { i } else { skip_ws(b, i) };
        let key_end = quotes.string(key_start)?;
        let value_start = skip_ws(b, after(b, key_end, b':')?);
        let (value_end, kind) = match b.get(value_start) {
            Some(b'"') => (quotes.string(value_start)?, Kind::Str),
            Some(b'-' | b'0'..=b'9') => crate::scan::scan_number(b, value_start)?,
            _ => return Err(Defer),
        };
        let member = Member { key: key_start..key_end, key_escaped: false, value: value_start..value_end, kind };
        if !visitor.member(b, member) {
            return Err(Defer);
        }
        match b.get(value_end) {
            Some(b',') => i = value_end + 1,
            Some(b'}') => {
                i = value_end + 1;
                break;
            }
            _ => {
                let next = skip_ws(b, value_end);
                match b.get(next) {
                    Some(b',') => i = next + 1,
                    Some(b'}') => {
                        i = next + 1;
                        break;
                    }
                    _ => return Err(Defer),
                }
            }
        }
    }
    if i != b.len() && skip_ws(b, i) != b.len() {
        return Err(Defer);
    }
    Ok(quotes.non_ascii)
}

/// The index after byte `c`, which must come at `i` or after whitespace. Compact JSON, the
/// common case, takes the first test only.
#[inline(always)]
fn after(b: &[u8], i: usize, c: u8) -> Result<usize, Defer> {
    if b.get(i) == Some(&c) {
        return Ok(i + 1);
    }
    let i = skip_ws(b, i);
    if b.get(i) == Some(&c) {
        Ok(i + 1)
    } else {
        Err(Defer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Count(usize);
    impl Visitor for Count {
        fn member(&mut self, _line: &[u8], _m: Member) -> bool {
            self.0 += 1;
            true
        }
    }

    fn walked(line: &str) -> Option<(bool, usize)> {
        let mut count = Count(0);
        walk(line.as_bytes(), &mut count).ok().map(|non_ascii| (non_ascii, count.0))
    }

    #[test]
    fn typical_lines_take_the_fast_path() {
        let seed = r#"{"time_ns":1585851354242732000,"rpc_method":"UpdateAccount","user_err":"","server_error":"","duration_ms":12,"conn_ms":7,"txn_ms":3,"pii_ip":"42.102.177.61","pii_uid":"U577019"}"#;
        assert_eq!(walked(seed), Some((false, 9)));
        assert_eq!(walked(r#" { "time_ns" : 1 , "msg" : "café" } "#), Some((true, 2)));
        assert_eq!(walked(&format!(r#"{{"time_ns":1,"long":"{}"}}"#, "x".repeat(300))), Some((false, 2)));
        // Everything else is the general scanner's.
        for other in [
            "{\"time_ns\":1,\t\"a\":\"b\"}",
            r#"{"time_ns":1,"a":"\n"}"#,
            r#"{"time_ns":1,"a":true}"#,
            r#"{"time_ns":1,"a":[]}"#,
            r#"{}"#,
            r#"{"time_ns":1,"a":"b"} x"#,
            r#"{"time_ns":1,"a":"b""#,
            r#"{"time_ns":1 "a":"b"}"#,
            r#"[1]"#,
            "",
        ] {
            assert_eq!(walked(other), None, "{other}");
        }
    }

    #[test]
    fn zero_bytes_is_exact() {
        for pattern in 0u32..256 {
            let mut w = 0u64;
            for k in 0..8 {
                // Non-zero bytes chosen to tempt borrows and carries: 0x01, 0x80, 0xff.
                let byte = if pattern & (1 << k) != 0 { 0 } else { [0x01u64, 0x80, 0xff][k % 3] };
                w |= byte << (8 * k);
            }
            assert_eq!(zero_bytes(w), u64::from(pattern), "{w:#x}");
        }
    }

    #[test]
    fn blocks_find_quotes_and_specials() {
        let mut line = vec![b'a'; 130];
        for at in [0, 7, 8, 63, 64, 100, 129] {
            line[at] = b'"';
        }
        let first = block_at(&line, 0);
        assert_eq!(first.quotes, 1 | 1 << 7 | 1 << 8 | 1 << 63);
        assert!(!first.special && !first.non_ascii);
        let tail = block_at(&line, 128);
        assert_eq!(tail.quotes, 1 << 1);
        line[5] = b'\\';
        line[70] = 0xc3;
        assert!(block_at(&line, 0).special);
        assert!(block_at(&line, 64).non_ascii);
    }

    #[test]
    fn vector_and_portable_blocks_agree() {
        let mut chunk = [b'a'; BLOCK_BYTES];
        for (i, byte) in [b'"', b'\\', 0x00, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'"'].into_iter().enumerate() {
            for at in [i, 16 + i, 63 - i] {
                chunk[at] = byte;
                let (v, p) = (block_masks(&chunk), block_masks_swar(&chunk));
                assert_eq!((v.quotes, v.special, v.non_ascii), (p.quotes, p.special, p.non_ascii), "{byte:#x} at {at}");
                chunk[at] = b'a';
            }
        }
    }
}
