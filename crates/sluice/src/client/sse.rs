//! An incremental parser for Server-Sent Events (`text/event-stream`), as `sluice tail` receives
//! them from `GET /api/tail`: bytes go in as they arrive, split anywhere, and whole events come out.
//! It does no I/O and does not interpret event data (the tail loop does).
//!
//! The wire format, as the HTML standard defines it: lines end with `\n`, `\r\n` or `\r`; a line
//! `field: value` adds to the event being built (`event` names it, each `data` line appends a line
//! of data, `id` sets its id, other fields are ignored); a line starting with `:` is a comment (the
//! store sends `: keepalive` every 15 s); an empty line dispatches the event, unless it has no
//! data. One space after the colon is dropped. For example
//!
//! ```text
//! event: row
//! data: {"time_ns":1,"msg":"hello"}
//!
//! event: dropped
//! data: {"dropped": 12}
//!
//! : keepalive
//! ```

/// Longest line accepted. A row is one `data:` line; rows larger than this are not events a
/// person reads in a terminal, and the bound keeps a broken server from filling memory.
pub const LINE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most data one event may gather over all its `data:` lines, for the same reason.
pub const EVENT_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The event name when no `event:` field was given.
const DEFAULT_EVENT: &str = "message";
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message`.
    pub event: String,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The last `id:` field seen, if any (it carries over to later events, as the standard says).
    pub id: Option<String>,
}

/// The stream broke one of the bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("the event stream sent a line longer than {LINE_BYTES_MAX} bytes")]
    LineTooLong,
    #[error("the event stream sent an event larger than {EVENT_BYTES_MAX} bytes")]
    EventTooLarge,
}

/// Parser state between calls to [`SseParser::feed`].
#[derive(Debug, Default)]
pub struct SseParser {
    /// The current line so far, without its end.
    line: Vec<u8>,
    /// The previous byte ended a line with `\r`: a `\n` right after it belongs to that line end,
    /// even when it arrives in the next call.
    after_cr: bool,
    /// Whether the start of the stream (and a possible byte-order mark) has been passed.
    started: bool,
    event: String,
    data: String,
    has_data: bool,
    last_id: Option<String>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Parse `bytes` (any piece of the stream) and append the events they complete to `out`.
    /// After an error the parser should be dropped: the stream is not one to follow.
    pub fn feed(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if !self.started {
            // The byte-order mark may itself arrive split; wait until it can be recognised.
            let have = self.line.len() + bytes.len();
            if have < BOM.len() {
                let mut joined = std::mem::take(&mut self.line);
                joined.extend_from_slice(bytes);
                if BOM.starts_with(&joined) {
                    self.line = joined;
                    return Ok(());
                }
                self.started = true;
                return self.feed_started(&joined, out);
            }
            self.started = true;
            let mut joined = std::mem::take(&mut self.line);
            joined.extend_from_slice(bytes);
            let rest = joined.strip_prefix(BOM).unwrap_or(&joined).to_vec();
            return self.feed_started(&rest, out);
        }
        if self.after_cr {
            if let Some(rest) = bytes.strip_prefix(b"\n") {
                bytes = rest;
            }
            self.after_cr = false;
        }
        self.feed_started(bytes, out)
    }

    fn feed_started(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            if self.line.len() + end > LINE_BYTES_MAX {
                return Err(SseError::LineTooLong);
            }
            self.line.extend_from_slice(&bytes[..end]);
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out)?;
            self.line = line;
            self.line.clear();
            let mut next = end + 1;
            if bytes[end] == b'\r' {
                match bytes.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            bytes = &bytes[next..];
        }
        if self.line.len() + bytes.len() > LINE_BYTES_MAX {
            return Err(SseError::LineTooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let mut data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.has_data) {
                data.pop(); // the '\n' after the last data line
                let event = if event.is_empty() { DEFAULT_EVENT.to_string() } else { event };
                out.push(SseEvent { event, data, id: self.last_id.clone() });
            }
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment: keepalives and the like
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"event" => self.event = value.into_owned(),
            b"data" => {
                if self.data.len() + value.len() + 1 > EVENT_BYTES_MAX {
                    return Err(SseError::EventTooLarge);
                }
                self.data.push_str(&value);
                self.data.push('\n');
                self.has_data = true;
            }
            b"id" if !value.contains('\0') => self.last_id = Some(value.into_owned()),
            _ => {} // `retry` and unknown fields: the reconnect policy is the client's own
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.to_string(), data: data.to_string(), id: None }
    }

    fn parse_in_pieces(input: &[u8], piece: usize) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        for chunk in input.chunks(piece) {
            parser.feed(chunk, &mut out).unwrap();
        }
        out
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: keepalive\r\n\r\nevent: row\r\ndata: {\"a\":1}\r\n\r\n\
: keepalive\n\nevent: dropped\ndata: {\"dropped\": 3}\n\n\
event:row\rdata:first\rdata: second\r\rdata\n\ndata: x\nevent: row\n";

    #[test]
    fn documented_example_parses() {
        let doc = b"event: row\ndata: {\"time_ns\":1,\"msg\":\"hello\"}\n\n\
event: dropped\ndata: {\"dropped\": 12}\n\n: keepalive\n";
        assert_eq!(
            parse_in_pieces(doc, doc.len()),
            vec![ev("row", r#"{"time_ns":1,"msg":"hello"}"#), ev("dropped", r#"{"dropped": 12}"#)]
        );
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let expected = vec![
            ev("row", r#"{"a":1}"#),
            ev("dropped", r#"{"dropped": 3}"#),
            ev("row", "first\nsecond"),
            ev("message", ""),
        ];
        for piece in 1..=STREAM.len() {
            assert_eq!(parse_in_pieces(STREAM, piece), expected, "pieces of {piece} bytes");
        }
    }

    #[test]
    fn comments_and_data_less_events_dispatch_nothing() {
        assert_eq!(parse_in_pieces(b": hello\n\nevent: row\n\n:x\n\n", 4), vec![]);
    }

    #[test]
    fn event_name_does_not_leak_into_the_next_event() {
        assert_eq!(parse_in_pieces(b"event: dropped\n\ndata: a\n\n", 3), vec![ev("message", "a")]);
    }

    #[test]
    fn ids_carry_over_and_fields_without_colon_are_names() {
        let out = parse_in_pieces(b"id: 7\ndata: a\n\ndata: b\n\nid\ndata\n\n", 5);
        let ids: Vec<Option<&str>> = out.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, vec![Some("7"), Some("7"), Some("")]);
        assert_eq!(out[2].data, "");
    }

    #[test]
    fn only_one_space_after_the_colon_is_dropped() {
        assert_eq!(parse_in_pieces(b"data:  two\n\n", 1), vec![ev("message", " two")]);
    }

    #[test]
    fn crlf_split_between_calls_is_one_line_end() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        parser.feed(b"data: a\r", &mut out).unwrap();
        parser.feed(b"\n", &mut out).unwrap();
        assert!(out.is_empty(), "a \\r\\n split in two is one line end, not an empty line");
        parser.feed(b"\r\n", &mut out).unwrap();
        assert_eq!(out, vec![ev("message", "a")]);
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut parser = SseParser::new();
        let mut out = Vec::new();
        let big = vec![b'x'; LINE_BYTES_MAX / 2 + 1];
        parser.feed(b"data: ", &mut out).unwrap();
        parser.feed(&big, &mut out).unwrap();
        assert_eq!(parser.feed(&big, &mut out), Err(SseError::LineTooLong));
    }
}
