//! Chunk ids and stream ids: parsing, formatting and ordering. No I/O.
//!
//! A chunk id is a non-negative integer written in base 27 with the digits
//! `123456789CDFGHJKLMNPQRTVWXZ` (`1` is zero) and no leading zero digit, so ids
//! sorted by length and then bytewise are sorted by value, which is chronological:
//! the writer only ever hands out increasing values (see `log.rs`).

use std::fmt;

/// The digits of a chunk id, in increasing value (also increasing byte value).
pub const ID_ALPHABET: &[u8; 27] = b"123456789CDFGHJKLMNPQRTVWXZ";
/// The longest id the pattern allows.
pub const ID_LEN_MAX: usize = 16;

/// A chunk id, ordered chronologically.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(u64);

/// Why a string is not a chunk id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Does not match `[123456789CDFGHJKLMNPQRTVWXZ]{1,16}`: a client error (HTTP 400).
    #[error("chunk id must match [123456789CDFGHJKLMNPQRTVWXZ]{{1,16}}")]
    Malformed,
    /// Matches the pattern but cannot name a chunk this writer made (a leading `1`, or a value
    /// past u64): well-formed, simply absent (HTTP 404).
    #[error("no chunk has this id")]
    Unknown,
}

fn digit_value(b: u8) -> Option<u64> {
    ID_ALPHABET.iter().position(|&d| d == b).map(|p| p as u64)
}

impl ChunkId {
    /// The id with this numeric value.
    pub fn from_value(value: u64) -> ChunkId {
        ChunkId(value)
    }

    /// Its numeric value.
    pub fn value(self) -> u64 {
        self.0
    }

    /// The next id after this one.
    pub fn next(self) -> ChunkId {
        ChunkId(self.0.saturating_add(1))
    }

    /// Parse an id from untrusted input (a URL path, a file name).
    pub fn parse(s: &str) -> Result<ChunkId, IdError> {
        let bytes = s.as_bytes();
        if bytes.is_empty() || bytes.len() > ID_LEN_MAX {
            return Err(IdError::Malformed);
        }
        let mut value: u64 = 0;
        let mut overflow = false;
        for &b in bytes {
            let d = digit_value(b).ok_or(IdError::Malformed)?;
            match value.checked_mul(27).and_then(|v| v.checked_add(d)) {
                Some(v) => value = v,
                None => overflow = true,
            }
        }
        if overflow || (bytes.len() > 1 && bytes[0] == b'1') {
            return Err(IdError::Unknown);
        }
        Ok(ChunkId(value))
    }

    /// Write the id into a small stack buffer; returns the used part.
    fn encode(self, buf: &mut [u8; ID_LEN_MAX]) -> &str {
        let mut v = self.0;
        let mut i = ID_LEN_MAX;
        loop {
            i -= 1;
            buf[i] = ID_ALPHABET[(v % 27) as usize];
            v /= 27;
            if v == 0 {
                break;
            }
        }
        std::str::from_utf8(&buf[i..]).expect("the id alphabet is ASCII")
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; ID_LEN_MAX];
        f.write_str(self.encode(&mut buf))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// The random 128-bit identity of a data directory, created with it and kept forever.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u128);

impl StreamId {
    /// A fresh random stream id from the operating system's generator.
    pub fn random() -> std::io::Result<StreamId> {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(StreamId(u128::from_le_bytes(b)))
    }

    /// Parse the 32-hex-digit form written by [`fmt::Display`].
    pub fn parse(s: &str) -> Option<StreamId> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().map(StreamId)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_examples() {
        assert_eq!(ChunkId::from_value(0).to_string(), "1");
        assert_eq!(ChunkId::from_value(26).to_string(), "Z");
        assert_eq!(ChunkId::from_value(27).to_string(), "21");
        assert_eq!(ChunkId::parse("C5FXMD").map(|id| id.to_string()), Ok("C5FXMD".into()));
        assert_eq!(ChunkId::parse("11"), Err(IdError::Unknown));
        assert_eq!(ChunkId::parse("ZZZZZZZZZZZZZZZZ"), Err(IdError::Unknown));
        for bad in ["", "0", "c5fxmd", "A", "../x", "%2e%2e", "12345678912345678", "C5F XMD"] {
            assert_eq!(ChunkId::parse(bad), Err(IdError::Malformed), "{bad:?}");
        }
        assert_eq!(ChunkId::from_value(u64::MAX).to_string().len(), 14);
    }

    proptest! {
        #[test]
        fn round_trip_and_order(a: u64, b: u64) {
            let (ia, ib) = (ChunkId::from_value(a), ChunkId::from_value(b));
            let (sa, sb) = (ia.to_string(), ib.to_string());
            prop_assert_eq!(ChunkId::parse(&sa), Ok(ia));
            prop_assert!(sa.bytes().all(|c| ID_ALPHABET.contains(&c)));
            let by_text = (sa.len(), sa.as_bytes()).cmp(&(sb.len(), sb.as_bytes()));
            prop_assert_eq!(by_text, a.cmp(&b));
        }

        #[test]
        fn stream_id_round_trip(v: u128) {
            prop_assert_eq!(StreamId::parse(&StreamId(v).to_string()), Some(StreamId(v)));
        }
    }
}
