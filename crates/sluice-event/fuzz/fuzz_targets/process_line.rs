//! Fuzz target: any bytes as a stdout line, a stderr line and a too-long prefix. Every output
//! must be one valid event line within the limit, and a valid line must pass unchanged.
//!
//! It checks invariants only; the expected classes of particular lines are the unit tests' job.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_event::{check_line, process_line, process_stderr, process_too_long, Limits, LINE_BYTES_MAX_MIN};

/// One output line: ends with the only '\n', fits the limit, and is a valid event.
fn assert_one_valid_line(out: &[u8], limits: &Limits) {
    assert_eq!(out.last(), Some(&b'\n'), "output ends with a newline");
    let body = &out[..out.len() - 1];
    assert!(!body.contains(&b'\n'), "output is one line");
    assert!(body.len() <= limits.line_bytes_max_effective(), "output fits the line limit");
    assert!(check_line(body, true).is_empty(), "output is a valid event: {}", String::from_utf8_lossy(body));
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a small or the default limit, so that cutting and the fallback
    // form are reached with short inputs.
    let (limits, line) = match data.split_first() {
        Some((&pick, rest)) if pick & 1 == 1 => {
            (Limits { line_bytes_max: LINE_BYTES_MAX_MIN + usize::from(pick) * 4 }, rest)
        }
        Some((_, rest)) => (Limits::default(), rest),
        None => (Limits::default(), data),
    };
    let now_ns = 1_700_000_000_000_000_000;

    let mut out = Vec::new();
    let classes = process_line(line, now_ns, &limits, &mut out);
    assert_one_valid_line(&out, &limits);
    if classes.is_empty() {
        assert_eq!(&out[..out.len() - 1], line, "a valid line passes byte for byte");
    }
    assert_eq!(
        classes.is_empty(),
        check_line(line, false).is_empty() && line.len() <= limits.line_bytes_max_effective()
    );

    out.clear();
    process_stderr(line, now_ns, &limits, &mut out);
    assert_one_valid_line(&out, &limits);

    out.clear();
    let prefix = &line[..line.len().min(limits.raw_keep())];
    process_too_long(prefix, line.len() as u64 + 1, now_ns, &limits, &mut out);
    assert_one_valid_line(&out, &limits);
});
