//! Behaviour of the public API: the language (one table row per operator, precedence rule and
//! error), printing and re-parsing, times, the SQL rendering, and properties over random input.

use proptest::prelude::*;
use sluice_query::{
    parse, parse_time, text_column_sql, text_matches, to_sql, to_sql_for, tokens, trigrams, word_regex, ColumnType,
    CompareOp, Query, SqlDialect, SqlError, TimeError, DEPTH_MAX, INPUT_BYTES_MAX, TERMS_MAX,
};

fn word(text: &str) -> Query {
    Query::Term { field: None, text: text.into(), phrase: false }
}
fn phrase(text: &str) -> Query {
    Query::Term { field: None, text: text.into(), phrase: true }
}
fn field(name: &str, text: &str) -> Query {
    Query::Term { field: Some(name.into()), text: text.into(), phrase: false }
}
fn field_quoted(name: &str, text: &str) -> Query {
    Query::Term { field: Some(name.into()), text: text.into(), phrase: true }
}
fn cmp(name: &str, op: CompareOp, value: u64) -> Query {
    Query::Compare { field: name.into(), op, value }
}
fn exists(name: &str) -> Query {
    Query::Exists { field: name.into() }
}
fn not(q: Query) -> Query {
    Query::Not(Box::new(q))
}
fn and(items: Vec<Query>) -> Query {
    Query::And(items)
}
fn or(items: Vec<Query>) -> Query {
    Query::Or(items)
}

#[test]
fn every_operator_parses() {
    let cases: Vec<(&str, Query)> = vec![
        ("", Query::All),
        ("  \t\n ", Query::All),
        ("timeout", word("timeout")),
        ("Timeout", word("Timeout")),
        ("foo-bar", word("foo-bar")),
        ("Ünïcode", word("Ünïcode")),
        (r#""connection refused""#, phrase("connection refused")),
        (r#""OR""#, phrase("OR")),
        (r#""say \"hi\" \\o/""#, phrase(r#"say "hi" \o/"#)),
        ("status:500", field("status", "500")),
        ("url:/api/users?id=1", field("url", "/api/users?id=1")),
        ("time:12:30", field("time", "12:30")),
        ("delta:-5", field("delta", "-5")),
        ("http.status_code:200", field("http.status_code", "200")),
        ("_x.y_2:z", field("_x.y_2", "z")),
        ("sluice_source:web", field("sluice_source", "web")),
        (r#"msg:"a phrase""#, field_quoted("msg", "a phrase")),
        (r#"msg:"""#, field_quoted("msg", "")),
        (r#"msg:"a*b (c) d:e""#, field_quoted("msg", "a*b (c) d:e")),
        ("duration_ms:>250", cmp("duration_ms", CompareOp::Gt, 250)),
        ("duration_ms:<250", cmp("duration_ms", CompareOp::Lt, 250)),
        ("duration_ms:>=250", cmp("duration_ms", CompareOp::Ge, 250)),
        ("duration_ms:<=250", cmp("duration_ms", CompareOp::Le, 250)),
        ("n:>007", cmp("n", CompareOp::Gt, 7)),
        ("n:<=18446744073709551615", cmp("n", CompareOp::Le, u64::MAX)),
        ("pii_uid:*", exists("pii_uid")),
        ("-status:500", not(field("status", "500"))),
        ("-timeout", not(word("timeout"))),
        (r#"-"a b""#, not(phrase("a b"))),
        ("-pii_uid:*", not(exists("pii_uid"))),
        ("-n:>5", not(cmp("n", CompareOp::Gt, 5))),
        ("-(a OR b)", not(or(vec![word("a"), word("b")]))),
        ("NOT a", not(word("a"))),
        ("NOT(a)", not(word("a"))),
        ("NOT NOT a", not(not(word("a")))),
        ("NOT -a", not(not(word("a")))),
        ("a b", and(vec![word("a"), word("b")])),
        ("a AND b", and(vec![word("a"), word("b")])),
        ("a\tb\nc", and(vec![word("a"), word("b"), word("c")])),
        ("a OR b", or(vec![word("a"), word("b")])),
        ("a OR(b)", or(vec![word("a"), word("b")])),
        ("and or not", and(vec![word("and"), word("or"), word("not")])),
        ("((a))", word("a")),
        (
            r#"x:1 y:"two words" -z:* w:<=3"#,
            and(vec![field("x", "1"), field_quoted("y", "two words"), not(exists("z")), cmp("w", CompareOp::Le, 3)]),
        ),
        (r#"msg:foo"bar""#, and(vec![field("msg", "foo"), phrase("bar")])),
    ];
    for (input, want) in cases {
        assert_eq!(parse(input), Ok(want), "{input:?}");
    }
}

#[test]
fn precedence_and_grouping() {
    let (a, b, c, d) = (word("a"), word("b"), word("c"), word("d"));
    let cases: Vec<(&str, Query)> = vec![
        ("a OR b c", or(vec![a.clone(), and(vec![b.clone(), c.clone()])])),
        ("a OR b AND c", or(vec![a.clone(), and(vec![b.clone(), c.clone()])])),
        ("a b OR c", or(vec![and(vec![a.clone(), b.clone()]), c.clone()])),
        ("a AND b OR c AND d", or(vec![and(vec![a.clone(), b.clone()]), and(vec![c.clone(), d.clone()])])),
        ("a OR b OR c", or(vec![a.clone(), b.clone(), c.clone()])),
        ("(a OR b) c", and(vec![or(vec![a.clone(), b.clone()]), c.clone()])),
        ("a (b c)", and(vec![a.clone(), b.clone(), c.clone()])),
        ("(a OR (b OR c))", or(vec![a.clone(), b.clone(), c.clone()])),
        ("NOT a b", and(vec![not(a.clone()), b.clone()])),
        ("NOT a OR b", or(vec![not(a.clone()), b.clone()])),
        ("NOT (a b)", not(and(vec![a.clone(), b.clone()]))),
        ("-a b", and(vec![not(a.clone()), b.clone()])),
        ("a -(b OR c) d", and(vec![a.clone(), not(or(vec![b.clone(), c.clone()])), d.clone()])),
    ];
    for (input, want) in cases {
        assert_eq!(parse(input), Ok(want), "{input:?}");
    }
}

/// (input, column, expected, found) — `expected` and `found` as the error says them.
#[test]
fn every_error_names_its_column() {
    let cases: &[(&str, usize, &str, &str)] = &[
        // Quotes.
        (r#""abc"#, 0, r#"a '"' to close this quote"#, "end of input"),
        (r#"a "b \""#, 2, r#"a '"' to close this quote"#, "end of input"),
        (r#"msg:"abc"#, 4, r#"a '"' to close this quote"#, "end of input"),
        (r#""a\nb""#, 2, r#"\" or \\ after a backslash inside quotes"#, r#""\\n""#),
        (r#""!!""#, 0, "a phrase with a letter or digit", r#""\"!!\"""#),
        // Parentheses.
        ("(a b", 0, r#"a ")" to close this "(""#, "end of input"),
        ("a (b (c) d", 2, r#"a ")" to close this "(""#, "end of input"),
        ("a)", 1, "a term, AND, OR or the end of the query", r#"")" without a matching "(""#),
        (")", 0, "a term", r#"")""#),
        ("()", 1, r#"a term after "(""#, r#"")""#),
        // Dangling operators.
        ("a OR", 4, "a term after OR", "end of input"),
        ("OR a", 0, "a term", r#""OR""#),
        ("a OR OR b", 5, "a term after OR", r#""OR""#),
        ("a AND", 5, "a term after AND", "end of input"),
        ("AND a", 0, "a term", r#""AND""#),
        ("a AND OR b", 6, "a term after AND", r#""OR""#),
        ("(a OR)", 5, "a term after OR", r#"")""#),
        ("NOT", 3, "a term after NOT", "end of input"),
        ("a NOT", 5, "a term after NOT", "end of input"),
        ("-", 1, r#"a term right after "-""#, "end of input"),
        ("- a", 1, r#"a term right after "-""#, "a space"),
        ("(a -)", 4, r#"a term right after "-""#, r#"")""#),
        ("--a", 1, r#"a term after "-""#, r#""-""#),
        ("-NOT a", 1, r#"a term after "-""#, r#""NOT""#),
        // Field values.
        ("status:", 7, r#"a value after "status:""#, "end of input"),
        ("status: 500", 7, r#"a value after "status:""#, "a space"),
        ("(status:)", 8, r#"a value after "status:""#, r#"")""#),
        ("status:>abc", 8, r#"a non-negative integer after "status:>""#, r#""abc""#),
        ("status:<12abc", 8, r#"a non-negative integer after "status:<""#, r#""12abc""#),
        ("status:>-5", 8, r#"a non-negative integer after "status:>""#, r#""-5""#),
        ("status:>=", 9, r#"a number after "status:>=""#, "end of input"),
        ("status:<= 5", 9, r#"a number after "status:<=""#, "a space"),
        (
            "n:>18446744073709551616",
            3,
            r#"a number at most 18446744073709551615 after "n:>""#,
            r#""18446744073709551616""#,
        ),
        (
            "url:*api*",
            4,
            r#"a value without "*" (wildcards are not supported: url:* matches any value, and a quoted value matches a literal "*")"#,
            r#""*api*""#,
        ),
        // Field names.
        ("1abc:x", 0, "a field name ([A-Za-z_][A-Za-z0-9_.]*) before \":\"", r#""1abc:x""#),
        ("foo-bar:x", 3, "a field name ([A-Za-z_][A-Za-z0-9_.]*) before \":\"", r#""foo-bar:x""#),
        (":x", 0, "a field name ([A-Za-z_][A-Za-z0-9_.]*) before \":\"", r#"":" with no field name before it"#),
        ("ok é:x", 3, "a field name ([A-Za-z_][A-Za-z0-9_.]*) before \":\"", r#""é:x""#),
        // Bare words.
        ("*", 0, "a search term (an empty query matches every event)", r#""*""#),
        ("foo*", 3, r#"a word without "*" (wildcards are not supported)"#, r#""foo*""#),
        ("a | b", 2, "a word with a letter or digit", r#""|""#),
        ("duration_ms > 5", 12, "a word with a letter or digit", r#"">""#),
    ];
    for &(input, position, expected, found) in cases {
        let err = parse(input).expect_err(input);
        assert_eq!((err.position, err.expected.as_str(), err.found.as_str()), (position, expected, found), "{input:?}");
        assert!(err.position <= input.chars().count(), "{input:?}");
    }
}

#[test]
fn error_display_and_caret() {
    let err = parse("status:").unwrap_err();
    assert_eq!(err.to_string(), r#"column 7: expected a value after "status:", found end of input"#);
    assert_eq!(err.caret("status:"), "status:\n       ^");

    // Columns count characters, not bytes.
    let err = parse("héllo n:>x").unwrap_err();
    assert_eq!(err.position, 9);
    assert_eq!(err.caret("héllo n:>x"), "héllo n:>x\n         ^");
}

#[test]
fn nesting_is_limited() {
    let parens = |n: usize| format!("{}a{}", "(".repeat(n), ")".repeat(n));
    assert_eq!(parse(&parens(DEPTH_MAX)), Ok(word("a")));
    let err = parse(&parens(DEPTH_MAX + 1)).unwrap_err();
    assert_eq!((err.position, err.found.as_str()), (DEPTH_MAX, "level 65"));
    assert_eq!(err.expected, "at most 64 levels of parentheses and negation");

    let nots = |n: usize| format!("{}a", "NOT ".repeat(n));
    assert!(parse(&nots(DEPTH_MAX)).is_ok());
    assert_eq!(parse(&nots(DEPTH_MAX + 1)).unwrap_err().position, 4 * DEPTH_MAX);

    // Parentheses and negations count together.
    let mixed = format!("{}a{}", "-(".repeat(DEPTH_MAX / 2), ")".repeat(DEPTH_MAX / 2));
    assert!(parse(&mixed).is_ok());
    let mixed = format!("x {}a{}", "-(".repeat(DEPTH_MAX / 2 + 1), ")".repeat(DEPTH_MAX / 2 + 1));
    assert_eq!(parse(&mixed).unwrap_err().position, 2 + DEPTH_MAX);
}

#[test]
fn terms_are_limited() {
    assert!(parse(&"a ".repeat(TERMS_MAX)).is_ok());
    let err = parse(&"a ".repeat(TERMS_MAX + 1)).unwrap_err();
    assert_eq!(
        (err.position, err.expected.as_str(), err.found.as_str()),
        (2 * TERMS_MAX, "at most 256 terms", "term 257")
    );
}

#[test]
fn input_length_is_limited() {
    assert_eq!(parse(&"a".repeat(INPUT_BYTES_MAX)), Ok(word(&"a".repeat(INPUT_BYTES_MAX))));
    let err = parse(&"a".repeat(INPUT_BYTES_MAX + 1)).unwrap_err();
    assert_eq!(
        (err.position, err.expected.as_str(), err.found.as_str()),
        (INPUT_BYTES_MAX, "a query of at most 4096 bytes", "4097 bytes")
    );
    // The column is in characters: 2048 two-byte characters fill the limit.
    let err = parse(&"é".repeat(INPUT_BYTES_MAX / 2 + 1)).unwrap_err();
    assert_eq!(err.position, INPUT_BYTES_MAX / 2);
}

#[test]
fn display_prints_the_canonical_query() {
    let cases = [
        ("a  AND  b", "a b"),
        ("a OR b c", "a OR b c"),
        ("(a OR b) c", "(a OR b) c"),
        ("(a b) OR c", "a b OR c"),
        ("a (b c)", "a b c"),
        ("NOT (a OR b)", "NOT (a OR b)"),
        ("-(a b)", "NOT (a b)"),
        ("NOT a", "-a"),
        ("NOT NOT a", "NOT -a"),
        ("NOT  n:>=007", "-n:>=7"),
        (r#"msg:"x \"y\" \\z""#, r#"msg:"x \"y\" \\z""#),
        (r#""OR" and"#, r#""OR" and"#),
        ("f:* g:<1", "f:* g:<1"),
        (">AND", ">AND"),
        ("", ""),
    ];
    for (input, want) in cases {
        let q = parse(input).unwrap();
        assert_eq!(q.to_string(), want, "{input:?}");
        assert_eq!(parse(want), Ok(q), "{want:?} re-parses");
    }
}

#[test]
fn hand_built_values_are_quoted_when_needed() {
    assert_eq!(word("two words").to_string(), r#""two words""#);
    assert_eq!(word("OR").to_string(), r#""OR""#);
    assert_eq!(word("-x").to_string(), r#""-x""#);
    assert_eq!(field("f", "").to_string(), r#"f:"""#);
    assert_eq!(field("f", "*").to_string(), r#"f:"*""#);
    assert_eq!(field("f", ">5").to_string(), r#"f:">5""#);
    assert_eq!(not(and(vec![word("a"), word("b")])).to_string(), "NOT (a b)");
}

// ----- times -----

const NOW_NS: u64 = 1_795_410_000_000_000_000; // 2026-11-23T05:00:00Z
const S: u64 = 1_000_000_000;

#[test]
fn times_parse() {
    let cases: &[(&str, u64)] = &[
        ("2026-11-23T05:00:00Z", 1_795_410_000 * S),
        ("2026-11-23t05:00:00z", 1_795_410_000 * S),
        ("2026-11-23 05:00:00Z", 1_795_410_000 * S),
        ("  2026-11-23T05:00:00Z\n", 1_795_410_000 * S),
        ("2026-11-23T05:00:00+02:00", 1_795_402_800 * S),
        ("2026-11-23T05:00:00-07:30", 1_795_437_000 * S),
        ("2026-11-23T05:00:00-00:00", 1_795_410_000 * S),
        ("2026-11-23T05:00:00.5Z", 1_795_410_000 * S + 500_000_000),
        ("2026-11-23T05:00:00.123456789Z", 1_795_410_000 * S + 123_456_789),
        ("2026-11-23T05:00:00.1234567899999Z", 1_795_410_000 * S + 123_456_789),
        ("2026-11-23T05:00:00.000000001+00:00", 1_795_410_000 * S + 1),
        ("2026-11-23", 1_795_392_000 * S),
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T01:00:00+01:00", 0),
        ("2000-02-29T12:34:56Z", 951_827_696 * S),
        ("2024-02-29T00:00:00Z", 1_709_164_800 * S),
        ("2400-02-29T00:00:00Z", 13_574_563_200 * S),
        ("2100-03-01T00:00:00Z", 4_107_542_400 * S),
        ("1999-12-31T23:59:59Z", 946_684_799 * S),
        // A leap second is the first second of the next minute.
        ("2016-12-31T23:59:60Z", 1_483_228_800 * S),
        ("2262-04-11T23:47:16Z", 9_223_372_036 * S),
        ("2554-07-21T23:34:33.709551615Z", u64::MAX),
        ("now", NOW_NS),
        ("0s", NOW_NS),
        ("90s", NOW_NS - 90 * S),
        ("15m", NOW_NS - 15 * 60 * S),
        ("1h", NOW_NS - 3_600 * S),
        ("2d", NOW_NS - 2 * 86_400 * S),
        ("1w", NOW_NS - 7 * 86_400 * S),
        // Before the epoch a relative time stops at 0.
        ("100000d", 0),
        ("18446744073709551615d", 0),
    ];
    for &(input, want) in cases {
        assert_eq!(parse_time(input, NOW_NS), Ok(want), "{input:?}");
    }
}

#[test]
fn bad_times_are_rejected() {
    let problem = |input: &str| match parse_time(input, NOW_NS) {
        Err(TimeError::Rfc3339 { problem, .. }) => problem,
        other => panic!("{input:?}: {other:?}"),
    };
    let cases = [
        ("2023-02-29T00:00:00Z", "day 29 does not exist in 2023-02"),
        ("1900-02-29T00:00:00Z", "day 29 does not exist in 1900-02"),
        ("2026-04-31T00:00:00Z", "day 31 does not exist in 2026-04"),
        ("2026-11-00T00:00:00Z", "day 00 does not exist in 2026-11"),
        ("2026-13-01T00:00:00Z", "month 13 is not between 01 and 12"),
        ("2026-00-01T00:00:00Z", "month 00 is not between 01 and 12"),
        ("2026-11-23T24:00:00Z", "hour 24 is not between 00 and 23"),
        ("2026-11-23T05:60:00Z", "minute 60 is not between 00 and 59"),
        ("2026-11-23T05:00:61Z", "second 61 is not between 00 and 60"),
        ("2026-11-23T05:00:00+24:00", "offset hour 24 is not between 00 and 23"),
        ("2026-11-23T05:00:00+01:60", "offset minute 60 is not between 00 and 59"),
        (
            "2026-11-23T05:00:00",
            r#"expected "Z" or an offset such as +01:00 (a time without one is ambiguous) at column 19, found the end"#,
        ),
        ("2026-11-23T05:00Z", r#"expected ":" at column 16, found 'Z'"#),
        ("2026-11-23T05:00:00.Z", r#"expected digits after "." at column 20, found 'Z'"#),
        ("2026-11-23T05:00:00+0100", r#"expected ":" in the offset at column 22, found '0'"#),
        ("2026-11-23T05:00:00Zjunk", "unexpected 'j' at column 20 after the time"),
        ("2026-1-23T05:00:00Z", "expected 2 digits of the month at column 6, found '-'"),
        ("2026-11-23X05:00:00Z", r#"expected "T" between the date and the time at column 10, found 'X'"#),
        ("2026-11-23T5:00:00Z", "expected 2 digits of the hour at column 12, found ':'"),
    ];
    for (input, want) in cases {
        assert_eq!(problem(input), want, "{input:?}");
    }

    for input in ["", "yesterday", "1.5h", "15 m", "15min", "-1h", "1y", "1H", "2026", "12:00"] {
        assert_eq!(parse_time(input, NOW_NS), Err(TimeError::Unrecognized { input: input.trim().into() }), "{input:?}");
    }
    assert!(matches!(parse_time("1969-12-31T23:59:59Z", NOW_NS), Err(TimeError::BeforeEpoch { .. })));
    assert!(matches!(parse_time("1970-01-01T00:00:00+00:01", NOW_NS), Err(TimeError::BeforeEpoch { .. })));
    assert!(matches!(parse_time("2554-07-21T23:34:34Z", NOW_NS), Err(TimeError::TooLate { .. })));
    assert!(matches!(parse_time("9999-12-31T23:59:59Z", NOW_NS), Err(TimeError::TooLate { .. })));
    assert!(matches!(parse_time("99999999999999999999s", NOW_NS), Err(TimeError::RelativeTooLarge { .. })));

    let message = parse_time("yesterday", NOW_NS).unwrap_err().to_string();
    assert!(message.starts_with(r#""yesterday" is not a time: use an RFC 3339 time such as 2026-11-23T05:00:00Z"#));
}

// ----- SQL -----

fn columns(name: &str) -> Option<ColumnType> {
    match name {
        "status" | "duration_ms" | "time_ns" => Some(ColumnType::U64),
        "msg" | "url" | "pii_uid" | "we\"ird" => Some(ColumnType::String),
        _ => None,
    }
}

fn sql(input: &str) -> String {
    to_sql(&parse(input).expect("test queries parse"), &columns).expect("parsed queries render")
}

#[test]
fn sql_rendering() {
    let timeout = r#"COALESCE(regexp_matches(lower("sluice_text"), '(^|[^\pL\pN])timeout([^\pL\pN]|$)'), FALSE)"#;
    let cases = [
        ("", "TRUE".to_owned()),
        ("status:500", r#"COALESCE("status" = 500, FALSE)"#.to_owned()),
        (r#"status:"0500""#, r#"COALESCE("status" = 500, FALSE)"#.to_owned()),
        ("status:abc", "FALSE".to_owned()),
        ("status:+5", "FALSE".to_owned()),
        ("-status:abc", "TRUE".to_owned()),
        ("msg:it's", r#"COALESCE("msg" = 'it''s', FALSE)"#.to_owned()),
        (r#"msg:"a \\ b""#, r#"COALESCE("msg" = 'a \ b', FALSE)"#.to_owned()),
        ("url:/API", r#"COALESCE("url" = '/API', FALSE)"#.to_owned()),
        ("pii_uid:U577019", r#"COALESCE("pii_uid" = 'U577019', FALSE)"#.to_owned()),
        ("duration_ms:>=250", r#"COALESCE("duration_ms" >= 250, FALSE)"#.to_owned()),
        ("duration_ms:<250", r#"COALESCE("duration_ms" < 250, FALSE)"#.to_owned()),
        ("time_ns:>1", r#"COALESCE("time_ns" > 1, FALSE)"#.to_owned()),
        ("msg:>5", "FALSE".to_owned()),
        ("pii_uid:*", r#"("pii_uid" IS NOT NULL)"#.to_owned()),
        ("-status:*", r#"NOT ("status" IS NOT NULL)"#.to_owned()),
        ("nosuch:x", "FALSE".to_owned()),
        ("-nosuch:x", "TRUE".to_owned()),
        ("nosuch:*", "FALSE".to_owned()),
        ("-nosuch:*", "TRUE".to_owned()),
        ("nosuch:>1", "FALSE".to_owned()),
        ("timeout", timeout.to_owned()),
        ("TimeOut", timeout.to_owned()),
        ("-timeout", format!("NOT {timeout}")),
        (
            r#""Connection Refused""#,
            r#"COALESCE(regexp_matches(lower("sluice_text"), '(^|[^\pL\pN])connection[^\pL\pN\x1F]+refused([^\pL\pN]|$)'), FALSE)"#
                .to_owned(),
        ),
        ("-status:500", r#"NOT COALESCE("status" = 500, FALSE)"#.to_owned()),
        (
            "status:1 OR msg:a url:b",
            r#"(COALESCE("status" = 1, FALSE) OR (COALESCE("msg" = 'a', FALSE) AND COALESCE("url" = 'b', FALSE)))"#
                .to_owned(),
        ),
        (
            "-(status:1 OR status:2)",
            r#"NOT (COALESCE("status" = 1, FALSE) OR COALESCE("status" = 2, FALSE))"#.to_owned(),
        ),
        ("status:1 nosuch:x", "FALSE".to_owned()),
        ("status:1 -nosuch:x", r#"COALESCE("status" = 1, FALSE)"#.to_owned()),
        ("status:1 OR nosuch:x", r#"COALESCE("status" = 1, FALSE)"#.to_owned()),
        ("status:1 OR -nosuch:x", "TRUE".to_owned()),
    ];
    for (input, want) in cases {
        assert_eq!(sql(input), want, "{input:?}");
    }
    assert_eq!(to_sql(&exists("we\"ird"), &columns).unwrap(), r#"("we""ird" IS NOT NULL)"#);
}

#[test]
fn sql_for_datafusion_uses_regexp_like() {
    assert_eq!(
        to_sql_for(&parse("user-42").unwrap(), &columns, SqlDialect::DataFusion).unwrap(),
        r#"COALESCE(regexp_like(lower("sluice_text"), '(^|[^\p{Alphabetic}\pN])user[^\p{Alphabetic}\pN\x1F]+42([^\p{Alphabetic}\pN]|$)'), FALSE)"#
    );
}

#[test]
fn sql_of_hand_built_queries_can_fail() {
    assert_eq!(to_sql(&word("!!"), &columns), Err(SqlError::NoWord { text: "!!".into() }));
    let mut deep = word("a");
    for _ in 0..300 {
        deep = not(deep);
    }
    assert!(matches!(to_sql(&deep, &columns), Err(SqlError::TooDeep { .. })));
    assert_eq!(to_sql(&and(vec![]), &columns).unwrap(), "TRUE");
    assert_eq!(to_sql(&or(vec![]), &columns).unwrap(), "FALSE");
}

#[test]
fn text_column_leaves_out_pii() {
    assert_eq!(text_column_sql(&["msg", "pii_email", "url"]), r#"concat_ws(chr(31), "msg", "url")"#);
    assert_eq!(text_column_sql(&["pii_email"]), "''");
    assert_eq!(text_column_sql(&[]), "''");
    assert_eq!(text_column_sql(&["a\"b"]), r#"concat_ws(chr(31), "a""b")"#);
}

#[test]
fn word_regexes_are_valid_rust_regexes() {
    for text in ["timeout", "Connection Refused", "İstanbul 日本語", "x²½ 42", "a-b_c.d"] {
        for dialect in [SqlDialect::DuckDb, SqlDialect::DataFusion] {
            let regex = word_regex(text, dialect).unwrap();
            regex_syntax::Parser::new().parse(&regex).unwrap_or_else(|e| panic!("{regex}: {e}"));
        }
    }
    assert_eq!(word_regex("--", SqlDialect::DuckDb), None);
}

// ----- properties -----

/// Fragments that reach every corner of the lexer and the parser when glued together.
fn query_fragments() -> impl Strategy<Value = String> {
    let fragment = prop_oneof![
        Just("AND".to_owned()),
        Just("OR".to_owned()),
        Just("NOT".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("-".to_owned()),
        Just("\"".to_owned()),
        Just("\\".to_owned()),
        Just(":".to_owned()),
        Just("*".to_owned()),
        Just(">".to_owned()),
        Just("<=".to_owned()),
        Just(" ".to_owned()),
        Just(" ".to_owned()),
        Just("é".to_owned()),
        "[a-c0-9]{1,3}",
        "[a-c_][a-c0-9_.]{0,2}:",
    ];
    prop::collection::vec(fragment, 0..40).prop_map(|parts| parts.concat())
}

/// Canonical queries, as `parse` produces them, for the round trip through `Display`.
fn canonical_query() -> impl Strategy<Value = Query> {
    let name = "[A-Za-z_][A-Za-z0-9_.]{0,6}";
    let any_text = prop::collection::vec(any::<char>(), 0..8).prop_map(|c| c.into_iter().collect::<String>());
    let searchable = any_text.clone().prop_filter("has a token", |t| tokens(t).next().is_some());
    let plain_word = "[a-zA-Z0-9é][a-zA-Z0-9_.é/=-]{0,6}"
        .prop_filter("not a keyword", |w| !matches!(w.as_str(), "AND" | "OR" | "NOT"));
    let plain_value = "[a-zA-Z0-9/_.=:é-]{1,8}".prop_filter("not a comparison", |v| !v.starts_with(['<', '>']));
    let op = prop_oneof![Just(CompareOp::Gt), Just(CompareOp::Lt), Just(CompareOp::Ge), Just(CompareOp::Le)];
    let leaf = prop_oneof![
        plain_word.prop_map(|w| word(&w)),
        searchable.prop_map(|t| phrase(&t)),
        (name, plain_value).prop_map(|(n, v)| field(&n, &v)),
        (name, any_text).prop_map(|(n, v)| field_quoted(&n, &v)),
        (name, op, any::<u64>()).prop_map(|(n, op, v)| cmp(&n, op, v)),
        name.prop_map(|n| exists(&n)),
    ];
    leaf.prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(not),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|items| flat(items, true)),
            prop::collection::vec(inner, 2..4).prop_map(|items| flat(items, false)),
        ]
    })
}

/// An AND (or OR) of `items` with nested ones of the same kind merged, as the parser does.
fn flat(items: Vec<Query>, is_and: bool) -> Query {
    let mut out = Vec::new();
    for item in items {
        match item {
            Query::And(inner) if is_and => out.extend(inner),
            Query::Or(inner) if !is_and => out.extend(inner),
            item => out.push(item),
        }
    }
    if is_and {
        Query::And(out)
    } else {
        Query::Or(out)
    }
}

/// Days since the epoch to (year, month, day): the inverse of days-from-civil, for printing
/// random times in the tests.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn any_string_parses_or_fails_within_the_input(input in any::<String>()) {
        if let Err(err) = parse(&input) {
            prop_assert!(err.position <= input.chars().count());
            let _ = err.caret(&input);
        }
    }

    #[test]
    fn query_like_strings_parse_or_fail_within_the_input(input in query_fragments()) {
        match parse(&input) {
            Ok(q) => {
                let printed = q.to_string();
                prop_assert_eq!(parse(&printed), Ok(q), "printed as {:?}", printed);
            }
            Err(err) => prop_assert!(err.position <= input.chars().count(), "{:?}", err),
        }
    }

    #[test]
    fn display_round_trips(q in canonical_query()) {
        let printed = q.to_string();
        prop_assert_eq!(parse(&printed), Ok(q), "printed as {:?}", printed);
    }

    #[test]
    fn parsed_queries_render_as_sql(input in query_fragments()) {
        if let Ok(q) = parse(&input) {
            prop_assert!(to_sql(&q, &columns).is_ok());
        }
    }

    #[test]
    fn trigrams_of_a_substring_are_trigrams_of_the_text(
        text in any::<String>(),
        from in any::<prop::sample::Index>(),
        len in 0..12_usize,
    ) {
        let chars: Vec<char> = text.chars().collect();
        let start = if chars.is_empty() { 0 } else { from.index(chars.len()) };
        let sub: String = chars[start..].iter().take(len).collect();
        let all: std::collections::HashSet<[u8; 3]> = trigrams(&text).collect();
        for trigram in trigrams(&sub) {
            prop_assert!(all.contains(&trigram));
        }
    }

    #[test]
    fn a_run_of_a_values_tokens_matches_it(
        value in "[ ,.-]{0,2}[a-zA-Z0-9éÉ]{1,5}([ ,.-]{1,2}[a-zA-Z0-9éÉ]{1,5}){0,5}[ ,.-]{0,2}",
        from in any::<prop::sample::Index>(),
        len in 1..4_usize,
    ) {
        let toks: Vec<&str> = tokens(&value).collect();
        let start = from.index(toks.len());
        let needle = toks[start..].iter().take(len).copied().collect::<Vec<_>>().join(" ").to_uppercase();
        prop_assert!(text_matches(&value, &needle), "{:?} in {:?}", needle, value);
    }

    #[test]
    fn rfc3339_times_round_trip(
        seconds in 0..=u64::MAX / 1_000_000_000 - 1,
        nanos in 0..1_000_000_000_u64,
        offset_minutes in -(23 * 60 + 59)..=(23 * 60 + 59_i64),
    ) {
        // Print the UTC time as local time at the offset, then parse it back.
        let local = i64::try_from(seconds).unwrap() + offset_minutes * 60;
        prop_assume!(local >= 0);
        let (year, month, day) = civil_from_days(local.div_euclid(86_400));
        prop_assume!(year <= 9999);
        let second_of_day = local.rem_euclid(86_400);
        let sign = if offset_minutes < 0 { '-' } else { '+' };
        let text = format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}{sign}{:02}:{:02}",
            second_of_day / 3_600,
            second_of_day / 60 % 60,
            second_of_day % 60,
            offset_minutes.abs() / 60,
            offset_minutes.abs() % 60,
        );
        prop_assert_eq!(parse_time(&text, 0), Ok(seconds * 1_000_000_000 + nanos), "{}", text);
    }
}
