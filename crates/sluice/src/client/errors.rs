//! What the client says when the store answers with an error: the message from the JSON body
//! `{"error": "…", "position": N}`, a caret under the offending column of the query for a 400,
//! an explanation of 401/403, and the exit code. It only builds text; the caller prints it.

use http::StatusCode;

/// Exit code for a query the store refused or could not run (bad syntax, time or memory limit,
/// busy, server failure).
pub const EXIT_QUERY: u8 = 1;
/// Exit code for a usage, configuration or connection problem (bad flags, no store at the URL,
/// missing or refused token).
pub const EXIT_USAGE: u8 = 2;

/// Longest error body read from the store; an error message is a line, not a document.
pub const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;
/// A non-JSON error body is quoted up to this many characters.
const BODY_QUOTE_CHARS_MAX: usize = 200;
/// A query line longer than this is shown as a window around the error column.
const CARET_LINE_CHARS_MAX: usize = 100;
/// Characters shown before the error column when the line is cut.
const CARET_CONTEXT_CHARS: usize = 60;

/// An error answer from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// The `error` text, or the start of a body that is not JSON, or the status's reason.
    pub message: String,
    /// 0-based column (in characters) of the problem in the query, when the store knows it.
    pub position: Option<usize>,
    /// The `Retry-After` header of a 429, in seconds.
    pub retry_after_secs: Option<u64>,
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    position: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, body: &[u8], retry_after: Option<&str>) -> ApiError {
        let (message, position) = match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => (b.error, b.position),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                if text.is_empty() {
                    (status.canonical_reason().unwrap_or("no reason given").to_lowercase(), None)
                } else {
                    let mut quoted: String = text.chars().take(BODY_QUOTE_CHARS_MAX).collect();
                    if quoted.len() < text.len() {
                        quoted.push('…');
                    }
                    (quoted, None)
                }
            }
        };
        let retry_after_secs = retry_after.and_then(|v| v.trim().parse().ok());
        ApiError { status, message, position, retry_after_secs }
    }

    /// 1 when the query itself failed, 2 when the token or the request was the problem.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => EXIT_USAGE,
            _ => EXIT_QUERY,
        }
    }

    /// The text for stderr, every line starting with `sluice: error:` or indented under it:
    ///
    /// ```text
    /// sluice: error: expected a value after "status:", found end of input
    ///   level:warn status:
    ///                     ^
    /// ```
    ///
    /// `query` is what the user typed (for the caret); `token_given` tells a missing token from
    /// a refused one; `url` names the store.
    pub fn render(&self, query: Option<&str>, token_given: bool, url: &str) -> String {
        let code = self.status.as_u16();
        let msg = &self.message;
        match self.status {
            StatusCode::BAD_REQUEST => match (self.position, query) {
                (Some(pos), Some(q)) => {
                    let caret = caret(q, pos + 1);
                    let indented: Vec<String> = caret.lines().map(|l| format!("  {l}")).collect();
                    format!("sluice: error: {msg}\n{}", indented.join("\n"))
                }
                _ => format!("sluice: error: {msg}"),
            },
            StatusCode::UNAUTHORIZED if token_given => format!(
                "sluice: error: the store at {url} did not accept the token (401: {msg}); \
                 check --token, --token-file or SLUICE_TOKEN"
            ),
            StatusCode::UNAUTHORIZED => format!(
                "sluice: error: the store at {url} needs a token (401: {msg}); \
                 pass --token or --token-file, or set SLUICE_TOKEN"
            ),
            StatusCode::FORBIDDEN => format!(
                "sluice: error: the token's role does not allow this (403: {msg}); \
                 queries need a token with the viewer role (pii to see pii_* values)"
            ),
            StatusCode::NOT_FOUND => format!(
                "sluice: error: {url} has no query API (404: {msg}); check --url or SLUICE_URL \
                 (the address in `listen` of the store's config)"
            ),
            StatusCode::REQUEST_TIMEOUT => {
                format!("sluice: error: {msg} (408); narrow the time range or add filters")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("sluice: error: {msg} (413); ask for fewer rows (LIMIT, --limit) or aggregate")
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let when = match self.retry_after_secs {
                    Some(s) => format!("try again in {s} s"),
                    None => "try again shortly".to_string(),
                };
                format!("sluice: error: the store is busy (429: {msg}); {when}")
            }
            s if s.is_server_error() => format!("sluice: error: the store failed ({code}: {msg})"),
            _ => format!("sluice: error: unexpected answer from the store ({code}: {msg})"),
        }
    }
}

/// The query's line holding 1-based character `position` (counted over the whole query, line
/// breaks included), and a `^` under that character, in the style of the search parser's own
/// caret: tabs are kept under and over so the caret stays aligned, other control characters are
/// shown as spaces, and a position just past the end points after the last character. A line
/// longer than 100 characters is shown as a window around the position, cut ends marked `…`.
pub fn caret(query: &str, position: usize) -> String {
    let index = position.max(1) - 1;
    let chars: Vec<char> = query.chars().collect();
    let index = index.min(chars.len());
    let line_start = chars[..index].iter().rposition(|&c| c == '\n').map_or(0, |i| i + 1);
    let line_end = chars[index..].iter().position(|&c| c == '\n').map_or(chars.len(), |i| index + i);
    let mut from = line_start;
    let mut to = line_end;
    if to - from > CARET_LINE_CHARS_MAX {
        from = index.saturating_sub(CARET_CONTEXT_CHARS).max(line_start);
        to = (from + CARET_LINE_CHARS_MAX).min(line_end);
    }
    let mut line = String::new();
    let mut under = String::new();
    if from > line_start {
        line.push('…');
        under.push(' ');
    }
    for (i, &c) in chars[from..to].iter().enumerate() {
        let shown = match c {
            '\t' => '\t',
            c if c.is_control() => ' ',
            c => c,
        };
        line.push(shown);
        if from + i < index {
            under.push(if c == '\t' { '\t' } else { ' ' });
        }
    }
    if to < line_end {
        line.push('…');
    }
    format!("{line}\n{under}^")
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:7800";

    #[test]
    fn caret_points_at_the_one_based_column() {
        assert_eq!(caret("status: 500", 8), "status: 500\n       ^");
        assert_eq!(caret("ab", 3), "ab\n  ^", "just past the end");
        assert_eq!(caret("ab", 99), "ab\n  ^", "far past the end");
        assert_eq!(caret("ab", 0), "ab\n^", "0 is taken as the first column");
        assert_eq!(caret("a\tb\u{7}c", 5), "a\tb c\n \t  ^");
    }

    #[test]
    fn caret_shows_only_the_line_of_a_multi_line_query() {
        let sql = "SELECT a\nFROM events\nWHERE x = = 1";
        // 'W' of WHERE is character 22; the second '=' is 11 characters further.
        assert_eq!(caret(sql, 32), "WHERE x = = 1\n          ^");
        assert_eq!(caret(sql, 9), "SELECT a\n        ^", "the line break itself: after the line");
    }

    #[test]
    fn caret_windows_a_long_line() {
        let q = format!("{}ERR{}", "a".repeat(150), "b".repeat(150));
        let out = caret(&q, 151);
        let (line, under) = out.split_once('\n').unwrap();
        assert_eq!(line, format!("…{}ERR{}…", "a".repeat(60), "b".repeat(37)));
        assert_eq!(under, format!("{}^", " ".repeat(61)));
        assert_eq!(line.chars().nth(under.len() - 1), Some('E'));
    }

    #[test]
    fn a_bad_query_gets_its_message_and_a_caret() {
        let e = ApiError::new(
            StatusCode::BAD_REQUEST,
            br#"{"error":"expected a value after \"status:\", found end of input","position":19}"#,
            None,
        );
        assert_eq!(e.exit_code(), EXIT_QUERY);
        assert_eq!(
            e.render(Some("level:warn status:"), true, URL),
            "sluice: error: expected a value after \"status:\", found end of input\n  level:warn status:\n                    ^"
        );
        let e = ApiError::new(StatusCode::BAD_REQUEST, br#"{"error":"no such table"}"#, None);
        assert_eq!(e.render(Some("SELECT 1 FROM x"), true, URL), "sluice: error: no such table");
    }

    #[test]
    fn auth_errors_say_what_to_change() {
        let e = ApiError::new(StatusCode::UNAUTHORIZED, br#"{"error":"unknown token"}"#, None);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(
            e.render(None, true, URL),
            "sluice: error: the store at http://127.0.0.1:7800 did not accept the token (401: unknown token); check --token, --token-file or SLUICE_TOKEN"
        );
        assert_eq!(
            e.render(None, false, URL),
            "sluice: error: the store at http://127.0.0.1:7800 needs a token (401: unknown token); pass --token or --token-file, or set SLUICE_TOKEN"
        );
        let e = ApiError::new(StatusCode::FORBIDDEN, br#"{"error":"role viewer required"}"#, None);
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert!(e
            .render(None, true, URL)
            .starts_with("sluice: error: the token's role does not allow this (403: role viewer required); "));
    }

    #[test]
    fn other_statuses() {
        let busy = ApiError::new(StatusCode::TOO_MANY_REQUESTS, br#"{"error":"too many queries"}"#, Some("1"));
        assert_eq!(
            busy.render(None, true, URL),
            "sluice: error: the store is busy (429: too many queries); try again in 1 s"
        );
        assert_eq!(busy.exit_code(), EXIT_QUERY);
        let late =
            ApiError::new(StatusCode::REQUEST_TIMEOUT, br#"{"error":"query exceeded the time limit of 30s"}"#, None);
        assert_eq!(
            late.render(Some("x"), true, URL),
            "sluice: error: query exceeded the time limit of 30s (408); narrow the time range or add filters"
        );
        let html = ApiError::new(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>\n", None);
        assert_eq!(html.render(None, true, URL), "sluice: error: the store failed (502: <html>bad gateway</html>)");
        let empty = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, b"", None);
        assert_eq!(empty.message, "internal server error");
        let long = ApiError::new(StatusCode::IM_A_TEAPOT, "é".repeat(500).as_bytes(), None);
        assert_eq!(long.message.chars().count(), BODY_QUOTE_CHARS_MAX + 1);
    }
}
