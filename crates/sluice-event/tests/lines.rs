//! One test per class of line (SPEC §1), and tests of the wrapped forms parsed back with serde_json.
//!
//! Properties over arbitrary input are in `props.rs`.

use base64::Engine as _;
use serde_json::{json, Value};
use sluice_event::{
    check_line, process_line, process_stderr, process_stderr_too_long, process_too_long, BadClass, BadClass::*,
    BadClasses, Limits, LINE_BYTES_MAX_MIN, RAW_BYTES_MAX,
};

const NOW_NS: u64 = 1_000;

/// Runs `process_line` and checks the invariants every output line has.
fn process(line: &[u8], limits: &Limits) -> (BadClasses, Vec<u8>) {
    let mut out = b"previous\n".to_vec();
    let classes = process_line(line, NOW_NS, limits, &mut out);
    let out = out.split_off("previous\n".len());
    assert_invariants(&out, limits);
    if classes.is_empty() {
        assert_eq!(&out[..out.len() - 1], line, "a valid line passes byte for byte");
    }
    (classes, out)
}

fn assert_invariants(out: &[u8], limits: &Limits) {
    assert_eq!(out.last(), Some(&b'\n'), "ends with a newline");
    let body = &out[..out.len() - 1];
    assert!(!body.contains(&b'\n'), "one line: {}", String::from_utf8_lossy(out));
    let max = limits.line_bytes_max_effective();
    assert!(body.len() <= max, "{} > {max}", body.len());
    assert_eq!(check_line(body, true), BadClasses::NONE, "{}", String::from_utf8_lossy(body));
}

/// The wrapped event as a JSON object (serde_json keeps the last of duplicate keys; there are none).
fn parsed(out: &[u8]) -> serde_json::Map<String, Value> {
    match serde_json::from_slice(out).expect("wrapped line is JSON") {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn set(classes: &[BadClass]) -> BadClasses {
    classes.iter().copied().collect()
}

const VALID: &str = r#"{"time_ns":1585851354242732000,"rpc_method":"UpdateAccount","user_err":"","server_error":"","duration_ms":12,"conn_ms":7,"txn_ms":3,"pii_ip":"42.102.177.61","pii_uid":"U577019"}"#;

#[test]
fn every_class_of_line() {
    let cases: &[(&str, &[u8], &[BadClass])] = &[
        ("valid", VALID.as_bytes(), &[]),
        ("valid with spaces", br#"  { "time_ns" : 1 , "a" : "b" }  "#, &[]),
        ("valid with tabs and cr", b"{\t\"time_ns\":\t1,\"a\":\"b\"\t}\r", &[]),
        ("valid escaped keys", br#"{"\u0074ime_ns":1,"\u0061":"b","\ud83d\ude00":"c"}"#, &[]),
        ("valid limits", br#"{"time_ns":9223372036854775807,"u":18446744073709551615,"z":0}"#, &[]),
        ("valid time zero", r#"{"time_ns":0,"msg":"h\u00e9 \"q\" \\ é"}"#.as_bytes(), &[]),
        ("empty", b"", &[Empty]),
        ("not json", b"hello world", &[NotJson]),
        ("only whitespace", b"   ", &[NotJson]),
        ("unterminated", br#"{"time_ns":1,"a":"b""#, &[NotJson]),
        ("trailing garbage", br#"{"time_ns":1,"a":"b"} x"#, &[NotJson]),
        ("two objects", br#"{"time_ns":1,"a":"b"}{}"#, &[NotJson]),
        ("leading zero", br#"{"time_ns":1,"a":01}"#, &[NotJson]),
        ("lone surrogate", br#"{"time_ns":1,"a":"\ud800"}"#, &[NotJson]),
        ("lone low surrogate", br#"{"time_ns":1,"a":"\udc00x"}"#, &[NotJson]),
        ("raw newline", b"{\"time_ns\":1,\n\"a\":\"b\"}", &[NotJson]),
        ("raw control char in string", b"{\"time_ns\":1,\"a\":\"\x01\"}", &[NotJson]),
        ("not object array", b"[1,2]", &[NotObject]),
        ("not object string", br#""time_ns""#, &[NotObject]),
        ("not object number", b"42", &[NotObject]),
        ("missing time_ns", br#"{"a":"b"}"#, &[MissingTimeNs]),
        ("empty object", b"{}", &[MissingTimeNs]),
        ("invalid time_ns string", br#"{"time_ns":"1","a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns float", br#"{"time_ns":1.5,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns exponent", br#"{"time_ns":1e18,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns negative", br#"{"time_ns":-1,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns 2^63", br#"{"time_ns":9223372036854775808,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns past u64", br#"{"time_ns":99999999999999999999,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns bool", br#"{"time_ns":true,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns null", br#"{"time_ns":null,"a":"b"}"#, &[InvalidTimeNs]),
        ("invalid time_ns nested", br#"{"time_ns":[1],"a":"b"}"#, &[InvalidTimeNs]),
        ("only time_ns", br#"{"time_ns":1}"#, &[OnlyTimeNs]),
        ("float", br#"{"time_ns":1,"a":1.5}"#, &[Float]),
        ("float exponent", br#"{"time_ns":1,"a":1E+2}"#, &[Float]),
        ("negative", br#"{"time_ns":1,"a":-3}"#, &[Negative]),
        ("negative zero", br#"{"time_ns":1,"a":-0}"#, &[Negative]),
        ("integer overflow", br#"{"time_ns":1,"a":18446744073709551616}"#, &[IntegerOverflow]),
        ("bool", br#"{"time_ns":1,"a":false}"#, &[Bool]),
        ("null", br#"{"time_ns":1,"a":null}"#, &[Null]),
        ("nested object", br#"{"time_ns":1,"a":{"b":1}}"#, &[Nested]),
        ("nested array", br#"{"time_ns":1,"a":[1,2]}"#, &[Nested]),
        ("duplicate key", br#"{"time_ns":1,"a":"b","a":"c"}"#, &[DuplicateKey]),
        ("escaped duplicate key", br#"{"time_ns":1,"a":"b","\u0061":"c"}"#, &[DuplicateKey]),
        ("duplicate time_ns", br#"{"time_ns":1,"a":"b","time_ns":2}"#, &[DuplicateKey]),
        ("reserved key", br#"{"time_ns":1,"sluice_x":"b"}"#, &[ReservedKey]),
        ("escaped reserved key", br#"{"time_ns":1,"\u0073luice_x":"b"}"#, &[ReservedKey]),
        ("invalid utf-8", b"{\"time_ns\":1,\"a\":\"\xff\"}", &[InvalidUtf8]),
        ("several", br#"{"time_ns":1,"a":1.5,"b":{},"a":2,"c":true}"#, &[Float, Bool, Nested, DuplicateKey]),
    ];
    let limits = Limits::default();
    for (name, line, expected) in cases {
        let (classes, out) = process(line, &limits);
        assert_eq!(classes, set(expected), "{name}");
        assert_eq!(check_line(line, false), set(expected), "{name}: check_line agrees");
        if !expected.is_empty() {
            let event = parsed(&out);
            assert_eq!(event["sluice_bad"], json!(set(expected).to_string()), "{name}");
        }
    }
}

#[test]
fn allow_reserved_accepts_sluice_keys() {
    let line = br#"{"time_ns":1,"sluice_x":"b","\u0073luice_y":2}"#;
    assert_eq!(check_line(line, true), BadClasses::NONE);
    assert_eq!(check_line(line, false), set(&[ReservedKey]));
}

#[test]
fn too_long_lines() {
    let limits = Limits::new(2048).expect("limit");
    let line = format!(r#"{{"time_ns":1,"a":"{}"}}"#, "x".repeat(3000));
    let (classes, out) = process(line.as_bytes(), &limits);
    assert_eq!(classes, set(&[TooLong]));
    let event = parsed(&out);
    assert_eq!(event["time_ns"], json!(NOW_NS));
    assert_eq!(event["sluice_raw"].as_str().map(str::len), Some(limits.raw_keep()));
    assert_eq!(event["sluice_raw_cut"], json!(line.len() - limits.raw_keep()));
    assert!(!event.contains_key("a"), "no kept keys for a line that was not parsed");

    // A line exactly at the limit is accepted.
    let at_limit = format!(r#"{{"time_ns":1,"a":"{}"}}"#, "x".repeat(2048 - 20));
    assert_eq!(at_limit.len(), 2048);
    assert_eq!(process(at_limit.as_bytes(), &limits).0, BadClasses::NONE);

    // The caller kept a prefix that ends inside a character: that character is dropped.
    let mut out = Vec::new();
    let prefix = "é".repeat(100);
    process_too_long(&prefix.as_bytes()[..151], 1_000_000, NOW_NS, &limits, &mut out);
    assert_invariants(&out, &limits);
    let event = parsed(&out);
    assert_eq!(event["sluice_bad"], json!("too_long"));
    assert_eq!(event["sluice_raw"], json!("é".repeat(75)));
    assert_eq!(event["sluice_raw_cut"], json!(1_000_000 - 150));

    // Invalid bytes in the kept prefix: class invalid_utf8 too, and the exact bytes in base64.
    let mut out = Vec::new();
    process_too_long(b"{\"a\xff", 10_000, NOW_NS, &limits, &mut out);
    assert_invariants(&out, &limits);
    let event = parsed(&out);
    assert_eq!(event["sluice_bad"], json!("too_long,invalid_utf8"));
    assert_eq!(event["sluice_raw"], json!("{\"a\u{FFFD}"));
    assert_eq!(event["sluice_raw_b64"], json!(b64(b"{\"a\xff")));
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn kept_keys_keep_their_values_and_types() {
    let line = br#"{"s":"x","time_ns":5,"u":3,"f":1.5,"s":"dup","sluice_r":"v","b":true,"e":"\u00e9"}"#;
    let (classes, out) = process(line, &Limits::default());
    assert_eq!(classes, set(&[Float, Bool, DuplicateKey, ReservedKey]));
    let text = std::str::from_utf8(&out).expect("utf-8");
    // Kept keys follow sluice_bad in the line's order, with their original text.
    assert!(text.starts_with(
        r#"{"time_ns":5,"sluice_bad":"float,bool,duplicate_key,reserved_key","s":"x","u":3,"e":"\u00e9","sluice_bad_values":"#
    ));
    let event = parsed(&out);
    assert_eq!(event["u"], json!(3));
    assert_eq!(event["e"], json!("é"));
    let bad: Value = serde_json::from_str(event["sluice_bad_values"].as_str().expect("string")).expect("json text");
    assert_eq!(bad, json!({"f": 1.5, "s": "dup", "sluice_r": "v", "b": true}));
    assert_eq!(event["sluice_raw"], json!(std::str::from_utf8(line).expect("utf-8")));
    assert!(!event.contains_key("sluice_raw_b64"));
    assert!(!event.contains_key("sluice_raw_cut"));
}

#[test]
fn several_bad_values_under_one_key_become_an_array() {
    let line = br#"{"time_ns":1,"a":1.5,"\u0061":2,"a":[3],"b":"ok"}"#;
    let (classes, out) = process(line, &Limits::default());
    assert_eq!(classes, set(&[Float, Nested, DuplicateKey]));
    let event = parsed(&out);
    let bad_text = event["sluice_bad_values"].as_str().expect("string");
    assert_eq!(bad_text, r#"{"a":[1.5,2,[3]]}"#);
    assert_eq!(event["b"], json!("ok"));
}

#[test]
fn bad_time_ns_uses_capture_time_and_is_kept_as_bad_value() {
    let line = br#"{"time_ns":"yesterday","time_ns":7,"a":"b"}"#;
    let (classes, out) = process(line, &Limits::default());
    assert_eq!(classes, set(&[InvalidTimeNs, DuplicateKey]));
    let event = parsed(&out);
    assert_eq!(event["time_ns"], json!(NOW_NS));
    assert_eq!(event["a"], json!("b"));
    let bad: Value = serde_json::from_str(event["sluice_bad_values"].as_str().expect("string")).expect("json");
    assert_eq!(bad, json!({"time_ns": ["yesterday", 7]}));
}

#[test]
fn capture_time_past_i64_is_clamped() {
    let mut out = Vec::new();
    process_line(b"x", u64::MAX, &Limits::default(), &mut out);
    assert_eq!(parsed(&out)["time_ns"], json!(i64::MAX));
}

#[test]
fn invalid_utf8_keeps_exact_bytes_in_base64() {
    let line = b"{\"time_ns\":1,\"a\":\"caf\xe9\"}";
    let (classes, out) = process(line, &Limits::default());
    assert_eq!(classes, set(&[InvalidUtf8]));
    let event = parsed(&out);
    assert_eq!(event["sluice_raw"], json!("{\"time_ns\":1,\"a\":\"caf\u{FFFD}\"}"));
    assert_eq!(event["sluice_raw_b64"], json!(b64(line)));
    assert!(!event.contains_key("a"));
}

#[test]
fn empty_line_has_empty_raw() {
    let (_, out) = process(b"", &Limits::default());
    assert_eq!(out, format!("{{\"time_ns\":{NOW_NS},\"sluice_bad\":\"empty\",\"sluice_raw\":\"\"}}\n").as_bytes());
}

#[test]
fn raw_is_cut_at_raw_keep_and_counted() {
    let line = format!(r#"{{"time_ns":1,"f":1.5,"s":"{}"}}"#, "y".repeat(20_000));
    let (_, out) = process(line.as_bytes(), &Limits::default());
    let event = parsed(&out);
    assert_eq!(Limits::default().raw_keep(), RAW_BYTES_MAX);
    assert_eq!(event["sluice_raw"].as_str().map(str::len), Some(RAW_BYTES_MAX));
    assert_eq!(event["sluice_raw_cut"], json!(line.len() - RAW_BYTES_MAX));
    assert_eq!(event["s"].as_str().map(str::len), Some(20_000), "the kept key is whole");
}

#[test]
fn full_form_too_big_falls_back_to_raw_only() {
    let limits = Limits::new(LINE_BYTES_MAX_MIN).expect("limit");
    // Quotes double in sluice_bad_values and again in sluice_raw: the full form cannot fit.
    let line = format!(r#"{{"time_ns":3,"a":"{}","f":["{}"]}}"#, "q".repeat(400), "\\\"".repeat(200));
    assert!(line.len() <= LINE_BYTES_MAX_MIN);
    let (classes, out) = process(line.as_bytes(), &limits);
    assert_eq!(classes, set(&[Nested]));
    let event = parsed(&out);
    let mut keys: Vec<&str> = event.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["sluice_bad", "sluice_raw", "sluice_raw_cut", "time_ns"]);
    assert_eq!(event["time_ns"], json!(3));
}

#[test]
fn worst_case_escaping_still_fits_small_limits() {
    let limits = Limits::new(LINE_BYTES_MAX_MIN).expect("limit");
    // Every control byte escapes to six bytes, and the invalid byte adds base64.
    let mut line = vec![0xffu8];
    line.extend(std::iter::repeat_n(0x01u8, 5000));
    let (_, out) = process(&line, &limits);
    assert!(out.len() - 1 <= LINE_BYTES_MAX_MIN);
    let mut out = Vec::new();
    process_stderr(&line, NOW_NS, &limits, &mut out);
    assert_invariants(&out, &limits);
}

#[test]
fn limits_below_the_minimum() {
    assert!(Limits::new(LINE_BYTES_MAX_MIN - 1).is_err());
    let tiny = Limits { line_bytes_max: 10 };
    assert_eq!(tiny.line_bytes_max_effective(), LINE_BYTES_MAX_MIN);
    let (classes, out) = process(br#"{"time_ns":1,"a":"b"}"#, &tiny);
    assert!(classes.is_empty());
    assert_eq!(out.len(), 22);
    assert_eq!(
        Limits::new(5).map_err(|e| e.to_string()),
        Err("line limit of 5 bytes is too small: use at least 1024".to_owned())
    );
}

#[test]
fn stderr_lines_are_always_wrapped() {
    let limits = Limits::default();
    let mut out = Vec::new();
    process_stderr(VALID.as_bytes(), NOW_NS, &limits, &mut out);
    assert_invariants(&out, &limits);
    let event = parsed(&out);
    assert_eq!(event["sluice_origin"], json!("stderr"));
    assert_eq!(event["sluice_raw"], json!(VALID));
    assert_eq!(event["time_ns"], json!(NOW_NS));

    out.clear();
    process_stderr(b"bad \xc3\x28 bytes", NOW_NS, &limits, &mut out);
    let event = parsed(&out);
    assert_eq!(event["sluice_raw"], json!("bad \u{FFFD}( bytes"));
    assert_eq!(event["sluice_raw_b64"], json!(b64(b"bad \xc3\x28 bytes")));

    out.clear();
    let long = "z".repeat(RAW_BYTES_MAX + 10);
    process_stderr(long.as_bytes(), NOW_NS, &limits, &mut out);
    assert_eq!(parsed(&out)["sluice_raw_cut"], json!(10));

    out.clear();
    process_stderr_too_long(b"abc", 50, NOW_NS, &limits, &mut out);
    assert_invariants(&out, &limits);
    assert_eq!(parsed(&out)["sluice_raw_cut"], json!(47));
}

#[test]
fn deep_nesting_is_a_bad_line_not_a_crash() {
    let limits = Limits::default();
    let open = "[".repeat(100_000);
    assert_eq!(process(open.as_bytes(), &limits).0, set(&[NotJson]));
    let nested = format!(r#"{{"time_ns":1,"a":"b","n":{}{}}}"#, "[".repeat(60_000), "]".repeat(60_000));
    let (classes, out) = process(nested.as_bytes(), &limits);
    assert_eq!(classes, set(&[Nested]));
    let event = parsed(&out);
    assert_eq!(event["a"], json!("b"));
}

#[test]
fn exponents_past_f64_range_are_still_json_floats() {
    // serde_json would reject these; the JSON grammar does not.
    let (classes, _) = process(br#"{"time_ns":1,"a":6E73274303,"b":"c"}"#, &Limits::default());
    assert_eq!(classes, set(&[Float]));
}
