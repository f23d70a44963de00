//! SHA-256 certificate fingerprints: computing, printing and parsing the notations operators paste.
//! It does not decide whether a fingerprint is trusted; the allow list and verifiers do.

use sha2::{Digest, Sha256};

/// SHA-256 of a certificate's DER encoding: the identity the allow list and pinned trust use.
pub type Fingerprint = [u8; 32];

/// The prefix of the canonical notation, `sha256:` followed by 64 lowercase hex digits.
const PREFIX: &str = "sha256:";

/// Prefixes accepted (case-insensitively) before the hex digits: ours, and OpenSSL's
/// `openssl x509 -noout -fingerprint -sha256` output, which operators paste as is.
const ACCEPTED_PREFIXES: [&str; 3] = [PREFIX, "sha256 fingerprint=", "sha256="];

/// SHA-256 of `cert_der`.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Sha256::digest(cert_der).into()
}

/// The canonical notation: `sha256:` and 64 lowercase hex digits.
pub fn format_fingerprint(fp: &Fingerprint) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(PREFIX.len() + 2 * fp.len());
    out.push_str(PREFIX);
    for byte in fp {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out
}

/// Parses `sha256:HEX`, bare `HEX`, or `HEX` with `:` between every pair of digits
/// (`AB:CD:...`, as OpenSSL prints it, also after `SHA256 Fingerprint=`), in any case.
/// Surrounding whitespace is ignored; anything else (a SHA-1 fingerprint, stray characters,
/// separators in odd places) gives `None`.
pub fn parse_fingerprint(s: &str) -> Option<Fingerprint> {
    let s = s.trim();
    let hex = ACCEPTED_PREFIXES.iter().find_map(|prefix| strip_prefix_ignore_case(s, prefix)).unwrap_or(s);
    let mut fp = [0u8; 32];
    if hex.contains(':') {
        let mut pairs = hex.split(':');
        for byte in &mut fp {
            *byte = parse_hex_byte(pairs.next()?)?;
        }
        if pairs.next().is_some() {
            return None;
        }
    } else {
        if hex.len() != 2 * fp.len() {
            return None;
        }
        for (byte, pair) in fp.iter_mut().zip(hex.as_bytes().chunks_exact(2)) {
            *byte = parse_hex_byte(std::str::from_utf8(pair).ok()?)?;
        }
    }
    Some(fp)
}

/// The number of hex digits in `s` if it looks like an attempt at a fingerprint (hex digits and
/// separators only, after an optional prefix); used to explain why one was refused.
pub(crate) fn hex_digit_count(s: &str) -> Option<usize> {
    let s = s.trim();
    let hex = ACCEPTED_PREFIXES.iter().find_map(|prefix| strip_prefix_ignore_case(s, prefix)).unwrap_or(s);
    if hex.is_empty() || !hex.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
        return None;
    }
    Some(hex.chars().filter(char::is_ascii_hexdigit).count())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

fn parse_hex_byte(pair: &str) -> Option<u8> {
    // from_str_radix alone would accept a sign ("+f"), so insist on two hex digits.
    if pair.len() != 2 || !pair.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(pair, 16).ok()
}

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FP: Fingerprint = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0xa0, 0xb1,
        0xc2, 0xd3, 0xe4, 0xf5, 0x16, 0x27, 0x38, 0x49, 0x5a, 0x6b, 0x7c, 0x8d, 0x9e, 0xff,
    ];
    const CANONICAL: &str = "sha256:000102030405060708090a0b0c0d0e0fa0b1c2d3e4f5162738495a6b7c8d9eff";

    #[test]
    fn formats_canonical_lowercase() {
        assert_eq!(format_fingerprint(&FP), CANONICAL);
    }

    #[test]
    fn fingerprint_is_sha256_of_der() {
        // SHA-256 of the empty string, a well-known value.
        assert_eq!(
            format_fingerprint(&fingerprint(b"")),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parses_every_notation() {
        let bare = &CANONICAL[PREFIX.len()..];
        let colons: Vec<String> =
            bare.as_bytes().chunks(2).map(|p| String::from_utf8(p.to_vec()).expect("ascii")).collect();
        let colons = colons.join(":");
        for text in [
            CANONICAL.to_string(),
            CANONICAL.to_uppercase(),
            format!("  {CANONICAL}\t"),
            bare.to_string(),
            bare.to_uppercase(),
            colons.clone(),
            colons.to_uppercase(),
            format!("sha256:{colons}"),
            format!("SHA256 Fingerprint={}", colons.to_uppercase()),
            format!("sha256={bare}"),
        ] {
            assert_eq!(parse_fingerprint(&text), Some(FP), "{text}");
        }
    }

    #[test]
    fn refuses_malformed() {
        let bare = &CANONICAL[PREFIX.len()..];
        for text in [
            "",
            "sha256:",
            &bare[..62],
            &format!("{bare}00"),
            // SHA-1 length
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            &format!("{}g", &bare[..63]),
            &format!("sha1:{bare}"),
            &format!("{}:{}", &bare[..1], &bare[1..]),
            &format!("{bare}:"),
            "+f:00",
        ] {
            assert_eq!(parse_fingerprint(text), None, "{text}");
        }
    }

    #[test]
    fn counts_hex_digits_of_near_misses() {
        assert_eq!(hex_digit_count("sha256:abcd"), Some(4));
        assert_eq!(hex_digit_count("AB:CD:EF"), Some(6));
        assert_eq!(hex_digit_count("hello"), None);
    }
}
