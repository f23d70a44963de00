//! The tokenizer shared by bare-word search and the per-segment term indexes, so that a word the
//! search looks for is always a token the index was built from.
//!
//! Both sides must use these functions in the same order: split with [`tokens`] first, then
//! lowercase each token with [`normalize`] (lowercasing can produce characters that are not
//! alphanumeric, such as the combining dot of `İ`, so normalising first would split differently).
//! It does not decide which values are indexed; that is the store's job (never `pii_*` values).

/// Keys starting with this, in any case, hold personal data ([`is_pii`]); bare words never look
/// inside their values.
pub const PII_PREFIX: &str = "pii_";

/// Whether `key` holds personal data: it starts with [`PII_PREFIX`] in any ASCII case, so
/// `PII_email` and `Pii_ip` are masked like `pii_email`.
///
/// ```
/// assert!(sluice_query::is_pii("pii_uid") && sluice_query::is_pii("PII_Email") && sluice_query::is_pii("Pii_"));
/// assert!(!sluice_query::is_pii("pii") && !sluice_query::is_pii("piiuid") && !sluice_query::is_pii("x_pii_uid"));
/// ```
pub fn is_pii(key: &str) -> bool {
    key.as_bytes().get(..PII_PREFIX.len()).is_some_and(|p| p.eq_ignore_ascii_case(PII_PREFIX.as_bytes()))
}

/// The tokens of `text`: the maximal runs of alphanumeric characters (Unicode-aware,
/// [`char::is_alphanumeric`]), in order, with their original case. Everything else — spaces,
/// punctuation, `_`, `-`, `.`, symbols — separates tokens and is never part of one.
///
/// ```
/// let t: Vec<&str> = sluice_query::tokens("GET /api/v1/users?id=42 → Ünïcode_ok").collect();
/// assert_eq!(t, ["GET", "api", "v1", "users", "id", "42", "Ünïcode", "ok"]);
/// ```
pub fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|token| !token.is_empty())
}

/// The form in which tokens are compared and indexed: lowercase, character by character
/// ([`char::to_lowercase`], without the context rules of [`str::to_lowercase`], so that the
/// lowercase of a substring is always a substring of the lowercase of the text).
pub fn normalize(token: &str) -> String {
    token.chars().flat_map(char::to_lowercase).collect()
}

/// Every window of three bytes of the [`normalize`]d UTF-8 text, in order, with repeats, for the
/// substring indexes. Windows may cut through a multi-byte character; because the query side
/// does the same, the trigrams of a substring are always among the trigrams of the text. Text
/// shorter than three bytes has none.
pub fn trigrams(text: &str) -> impl Iterator<Item = [u8; 3]> {
    let bytes = normalize(text).into_bytes();
    let windows = bytes.len().saturating_sub(2);
    (0..windows).map(move |i| [bytes[i], bytes[i + 1], bytes[i + 2]])
}

/// The reference for what a bare word or phrase matches in one string value: whether the
/// [`tokens`] of `needle` appear consecutively among the tokens of `value`, compared after
/// [`normalize`]. A needle without tokens matches nothing (the parser rejects such terms).
///
/// ```
/// use sluice_query::text_matches;
/// assert!(text_matches("Connection refused (os error 111)", "connection refused"));
/// assert!(text_matches("read timeout", "TIMEOUT"));
/// assert!(!text_matches("timeouts", "timeout"));
/// assert!(!text_matches("refused connection", "connection refused"));
/// ```
pub fn text_matches(value: &str, needle: &str) -> bool {
    let needle: Vec<String> = tokens(needle).map(normalize).collect();
    if needle.is_empty() {
        return false;
    }
    let value: Vec<String> = tokens(value).map(normalize).collect();
    value.windows(needle.len()).any(|window| window == needle.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_on_everything_but_letters_and_digits() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[]),
            ("  --  ", &[]),
            ("hello", &["hello"]),
            ("snake_case.and-kebab", &["snake", "case", "and", "kebab"]),
            ("10.0.0.1:8080", &["10", "0", "0", "1", "8080"]),
            ("日本語のテキスト", &["日本語のテキスト"]),
            ("emoji🙂here", &["emoji", "here"]),
            ("x²½", &["x²½"]),
        ];
        for (text, want) in cases {
            assert_eq!(tokens(text).collect::<Vec<_>>(), *want, "{text:?}");
        }
    }

    #[test]
    fn normalize_is_per_character_lowercase() {
        assert_eq!(normalize("HeLLo"), "hello");
        assert_eq!(normalize("ÄÖÜ"), "äöü");
        // Context-free: a final capital sigma becomes σ, as in the middle of a word.
        assert_eq!(normalize("ΟΔΟΣ"), "οδοσ");
        assert_eq!(normalize("İ"), "i\u{307}");
    }

    #[test]
    fn trigrams_are_byte_windows_of_the_lowercase_text() {
        assert_eq!(trigrams("ab").count(), 0);
        assert_eq!(trigrams("AbCd").collect::<Vec<_>>(), [*b"abc", *b"bcd"]);
        assert_eq!(trigrams("é!").collect::<Vec<_>>(), [[0xC3, 0xA9, b'!']]);
    }

    #[test]
    fn text_matches_whole_tokens_in_order() {
        let cases = [
            ("user 42 logged in", "logged in", true),
            ("user 42 logged in", "42", true),
            ("user 42 logged in", "4", false),
            ("user-42", "user 42", true),
            ("user 42", "user-42", true),
            ("ERROR: disk full", "error", true),
            ("a b c", "a c", false),
            ("anything", "!!", false),
            ("", "x", false),
        ];
        for (value, needle, want) in cases {
            assert_eq!(text_matches(value, needle), want, "{value:?} ~ {needle:?}");
        }
    }
}
