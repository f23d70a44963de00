//! Fuzz target: any text as a quick search, and as a `--since` time. Parsing never panics, an
//! error points inside the input, and a parsed query prints as text that parses back to it and
//! renders as SQL.
//!
//! It checks invariants only; what particular queries mean is the table tests' job.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_query::{parse, parse_time, to_sql, ColumnType};

fn columns(name: &str) -> Option<ColumnType> {
    match name.as_bytes().first() {
        Some(b'a'..=b'm') => Some(ColumnType::String),
        Some(b'n'..=b'z') => Some(ColumnType::U64),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };
    match parse(input) {
        Ok(query) => {
            let printed = query.to_string();
            assert_eq!(parse(&printed).as_ref(), Ok(&query), "printed as {printed:?}");
            assert!(to_sql(&query, &columns).is_ok(), "a parsed query renders as SQL");
        }
        Err(err) => {
            assert!(err.position <= input.chars().count(), "error inside the input: {err}");
            let _ = err.caret(input);
        }
    }
    let _ = parse_time(input, 1_795_410_000_000_000_000);
});
