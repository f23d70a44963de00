//! [`event_id`]: the identity of an event (SPEC §3), used by the store to de-duplicate.
//!
//! Only the hash is here; where stream ids and chunk ids come from is the chunk crate's business.

use xxhash_rust::xxh3::{xxh3_128, Xxh3Default};

/// Longest chunk id the encoding can hold (its length is one byte). Real ids have at most 16.
pub const CHUNK_ID_BYTES_MAX: usize = u8::MAX as usize;

/// Inputs up to this many bytes are hashed from a stack buffer in one call; longer ones stream.
/// Both give the same hash (xxh3 streaming equals one-shot); this only saves time on short lines.
const ONE_SHOT_BYTES_MAX: usize = 1024;

/// The identity of an event: XXH3-128 (seed 0, default secret) over these bytes, concatenated:
///
/// | bytes | what |
/// |---|---|
/// | 16 | `stream_id`, little-endian |
/// | 1 | `n`, the length of `chunk_id` in bytes |
/// | n | `chunk_id` (ASCII) |
/// | 8 | `offset` (byte position of the line in the chunk), little-endian |
/// | rest | the line, without its `'\n'` |
///
/// The length byte keeps (chunk "A", offset …) from meeting (chunk "AB", …). A chunk id longer
/// than [`CHUNK_ID_BYTES_MAX`] bytes (never valid) is hashed by its first 255 bytes.
///
/// ```
/// let id = sluice_event::event_id(1, "C", 0, b"{}");
/// let mut bytes = Vec::new();
/// bytes.extend_from_slice(&1u128.to_le_bytes());
/// bytes.extend_from_slice(&[1, b'C']);
/// bytes.extend_from_slice(&0u64.to_le_bytes());
/// bytes.extend_from_slice(b"{}");
/// assert_eq!(id, xxhash_rust::xxh3::xxh3_128(&bytes));
/// ```
pub fn event_id(stream_id: u128, chunk_id: &str, offset: u64, line: &[u8]) -> u128 {
    debug_assert!(chunk_id.len() <= CHUNK_ID_BYTES_MAX, "chunk id {chunk_id:?} is longer than any valid one");
    let chunk = &chunk_id.as_bytes()[..chunk_id.len().min(CHUNK_ID_BYTES_MAX)];
    let head_len = 16 + 1 + chunk.len() + 8;
    let total = head_len + line.len();
    if total <= ONE_SHOT_BYTES_MAX {
        let mut buf = [0u8; ONE_SHOT_BYTES_MAX];
        buf[..16].copy_from_slice(&stream_id.to_le_bytes());
        buf[16] = chunk.len() as u8;
        buf[17..17 + chunk.len()].copy_from_slice(chunk);
        buf[17 + chunk.len()..head_len].copy_from_slice(&offset.to_le_bytes());
        buf[head_len..total].copy_from_slice(line);
        return xxh3_128(&buf[..total]);
    }
    let mut hasher = Xxh3Default::new();
    hasher.update(&stream_id.to_le_bytes());
    hasher.update(&[chunk.len() as u8]);
    hasher.update(chunk);
    hasher.update(&offset.to_le_bytes());
    hasher.update(line);
    hasher.digest128()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(stream_id: u128, chunk_id: &str, offset: u64, line: &[u8]) -> u128 {
        let mut bytes = stream_id.to_le_bytes().to_vec();
        bytes.push(chunk_id.len() as u8);
        bytes.extend_from_slice(chunk_id.as_bytes());
        bytes.extend_from_slice(&offset.to_le_bytes());
        bytes.extend_from_slice(line);
        xxh3_128(&bytes)
    }

    #[test]
    fn short_and_long_lines_match_the_documented_encoding() {
        for len in [0, 1, 100, ONE_SHOT_BYTES_MAX - 41, ONE_SHOT_BYTES_MAX - 40, ONE_SHOT_BYTES_MAX, 5000] {
            let line = vec![b'x'; len];
            let expected = reference(u128::MAX - 7, "CDFGHJKLMNPQRTVW", 1234, &line);
            assert_eq!(event_id(u128::MAX - 7, "CDFGHJKLMNPQRTVW", 1234, &line), expected, "len {len}");
        }
    }

    #[test]
    fn every_input_changes_the_id() {
        let base = event_id(1, "C", 10, b"line");
        assert_ne!(base, event_id(2, "C", 10, b"line"));
        assert_ne!(base, event_id(1, "D", 10, b"line"));
        assert_ne!(base, event_id(1, "C", 11, b"line"));
        assert_ne!(base, event_id(1, "C", 10, b"linf"));
        // The length byte separates chunk id from offset.
        assert_ne!(event_id(1, "C", 0, b""), event_id(1, "", 0x43, b""));
    }
}
