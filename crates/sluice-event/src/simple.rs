//! The fast path for the lines that are nearly all of the traffic: objects whose strings have no
//! escapes and whose values are strings or numbers. It finds quotes 64 bytes at a time (a loop
//! the compiler turns into vector compares) and walks from quote to quote, so string contents
//! cost no per-byte branches.
//!
//! It only ever answers for lines it fully understands; anything else (an escape, a control
//! byte, a literal, a nested value, a syntax error) returns `None` and the general scanner in
//! `scan.rs` decides. A property test checks the two agree.

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

#[inline(always)]
fn block_at(b: &[u8], start: usize) -> Block {
    // The tail is padded with spaces: neither quote nor special.
    let mut padded = [b' '; BLOCK_BYTES];
    let chunk: &[u8] = match b.get(start..start + BLOCK_BYTES) {
        Some(chunk) => chunk,
        None => {
            let rest = &b[start.min(b.len())..];
            padded[..rest.len()].copy_from_slice(rest);
            &padded
        }
    };
    let mut quotes = 0u64;
    let mut special = 0u8;
    let mut high = 0u8;
    for (i, &c) in chunk.iter().enumerate() {
        quotes |= u64::from(c == b'"') << i;
        special |= u8::from(c < 0x20) | u8::from(c == b'\\');
        high |= c;
    }
    Block { quotes, special: special != 0, non_ascii: high & 0x80 != 0 }
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
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err(Defer);
    }
    i = skip_ws(b, i + 1);
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(Defer);
        }
        let key_start = i;
        let key_end = quotes.string(i)?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(Defer);
        }
        let value_start = skip_ws(b, i + 1);
        let (value_end, kind) = match b.get(value_start) {
            Some(b'"') => (quotes.string(value_start)?, Kind::Str),
            Some(b'-' | b'0'..=b'9') => crate::scan::scan_number(b, value_start)?,
            _ => return Err(Defer),
        };
        let member = Member { key: key_start..key_end, key_escaped: false, value: value_start..value_end, kind };
        if !visitor.member(b, member) {
            return Err(Defer);
        }
        i = skip_ws(b, value_end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => break,
            _ => return Err(Defer),
        }
    }
    if skip_ws(b, i + 1) != b.len() {
        return Err(Defer);
    }
    Ok(quotes.non_ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_masks() {
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
}
