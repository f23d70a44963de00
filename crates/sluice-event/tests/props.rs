//! Property tests: whatever the input, the output is one valid event line within the limit;
//! valid lines pass unchanged; and `check_line` agrees with a reference built on serde_json.

use proptest::prelude::*;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use sluice_event::{
    check_line, process_line, process_stderr, process_stderr_too_long, process_too_long, BadClass, BadClasses, Limits,
    LINE_BYTES_MAX_MIN,
};

fn assert_one_valid_line(out: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    prop_assert_eq!(out.last(), Some(&b'\n'));
    let body = &out[..out.len() - 1];
    prop_assert!(!body.contains(&b'\n'));
    prop_assert!(body.len() <= limits.line_bytes_max_effective());
    prop_assert_eq!(check_line(body, true), BadClasses::NONE, "{}", String::from_utf8_lossy(body));
    Ok(())
}

fn limits_strategy() -> impl Strategy<Value = Limits> {
    prop_oneof![Just(Limits::default()), (LINE_BYTES_MAX_MIN..3000usize).prop_map(|n| Limits { line_bytes_max: n })]
}

/// Pieces of JSON-like text, so that random lines are often almost valid.
fn json_ish_line() -> impl Strategy<Value = Vec<u8>> {
    let ws = prop::sample::select(vec!["", "", "", " ", "\t", " \r", "\n"]);
    let key = prop::sample::select(vec![
        r#""time_ns""#,
        r#""time_ns""#,
        r#""\u0074ime_ns""#,
        r#""a""#,
        r#""\u0061""#,
        r#""b""#,
        r#""sluice_x""#,
        r#""\u0073luice_y""#,
        r#""pii_ip""#,
        r#""é""#,
        r#""\ud83d\ude00""#,
        r#""k\"q""#,
        r#""\ud800""#,
    ]);
    let value = prop_oneof![
        4 => any::<u64>().prop_map(|n| n.to_string()),
        1 => (0..=i64::MAX as u64).prop_map(|n| n.to_string()),
        4 => prop::sample::select(vec![
            r#""""#, r#""x""#, r#""a\"b\\c""#, r#""\u00e9\n""#, r#""é""#, "1.5", "-1", "-0", "1e3", "0",
            "01", "18446744073709551616", "99999999999999999999999", "9223372036854775807",
            "9223372036854775808", "true", "false", "null", "{}", "[]", r#"{"a":[1,{"b":null}]}"#,
            r#"[1,"x",[]]"#, r#""\ud800""#, "tru", r#""unterminated"#,
        ])
        .prop_map(str::to_owned),
    ];
    let member = (ws.clone(), key, ws.clone(), value, ws.clone())
        .prop_map(|(w1, k, w2, v, w3)| format!("{w1}{k}{w2}:{w2}{v}{w3}"));
    let object = (ws.clone(), prop::collection::vec(member, 0..7), ws)
        .prop_map(|(w, members, w2)| format!("{w}{{{}}}{w2}", members.join(",")));
    let mutated = (object.clone(), any::<prop::sample::Index>(), any::<u8>(), 0..4u8).prop_map(|(s, at, byte, how)| {
        let mut b = s.into_bytes();
        let i = at.index(b.len() + 1);
        match how {
            0 => b.insert(i, byte),
            1 => b.truncate(i),
            2 if i < b.len() => {
                b.remove(i);
            }
            _ => b.extend_from_slice(b"[1]"),
        }
        b
    });
    prop_oneof![3 => object.prop_map(String::into_bytes), 2 => mutated, 1 => prop::collection::vec(any::<u8>(), 0..64)]
}

/// A line that follows every rule: distinct plain keys, string or integer values.
fn valid_line() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        "[ -~&&[^\"\\\\]]{0,20}".prop_map(|s| format!("\"{s}\"")),
        "\\PC{0,10}".prop_map(|s| serde_json::to_string(&s).expect("string")),
    ];
    let others = prop::collection::btree_map("[a-z][a-z_0-9]{0,12}", value, 1..12);
    (0..=i64::MAX as u64, others, any::<prop::sample::Index>(), prop::sample::select(vec!["", " ", "\t"])).prop_map(
        |(t, others, at, ws)| {
            let mut members: Vec<String> = others
                .into_iter()
                .filter(|(k, _)| !k.starts_with("sluice_") && k != "time_ns")
                .map(|(k, v)| format!("\"{k}\"{ws}:{v}"))
                .collect();
            members.insert(at.index(members.len() + 1), format!("\"time_ns\":{ws}{t}"));
            if members.len() < 2 {
                members.push("\"x\":1".to_owned());
            }
            format!("{{{ws}{}{ws}}}", members.join(",")).into_bytes()
        },
    )
}

/// Reference classification: serde_json for the grammar, its RawValue for value kinds. `None`
/// where serde_json cannot judge: it rejects numbers past f64's range (`1e400`), which the JSON
/// grammar allows.
fn reference(line: &[u8], allow_reserved: bool) -> Option<BadClasses> {
    match reference_classes(line, allow_reserved) {
        Err(e) if e.to_string().contains("number out of range") => None,
        Err(_) => Some(BadClass::NotJson.into()),
        Ok(classes) => Some(classes),
    }
}

fn reference_classes(line: &[u8], allow_reserved: bool) -> Result<BadClasses, serde_json::Error> {
    use BadClass::*;
    if line.is_empty() {
        return Ok(Empty.into());
    }
    let Ok(text) = std::str::from_utf8(line) else {
        return Ok(InvalidUtf8.into());
    };
    // serde_json takes '\n' as whitespace; a line cannot contain one.
    if text.contains('\n') {
        return Ok(NotJson.into());
    }
    let value = serde_json::from_str::<serde_json::Value>(text)?;
    if !value.is_object() {
        return Ok(NotObject.into());
    }
    let members = collect_members(text);
    let mut classes = BadClasses::NONE;
    let mut seen = std::collections::HashSet::new();
    let (mut time_seen, mut other_seen) = (false, false);
    for (key, raw) in &members {
        let raw = raw.get();
        let duplicate = !seen.insert(key.clone());
        let kind = kind_of(raw);
        if key == "time_ns" {
            if duplicate {
                classes.insert(DuplicateKey);
            } else {
                time_seen = true;
                if !matches!(kind, Ok(Some(n)) if n <= i64::MAX as u64) {
                    classes.insert(InvalidTimeNs);
                }
            }
            continue;
        }
        other_seen = true;
        if let Err(c) = kind {
            classes.insert(c);
        }
        if !allow_reserved && key.starts_with("sluice_") {
            classes.insert(ReservedKey);
        }
        if duplicate {
            classes.insert(DuplicateKey);
        }
    }
    if !time_seen {
        classes.insert(MissingTimeNs);
    } else if !other_seen {
        classes.insert(OnlyTimeNs);
    }
    Ok(classes)
}

/// Ok(Some(integer)) for a valid integer, Ok(None) for a string, Err(class) otherwise.
fn kind_of(raw: &str) -> Result<Option<u64>, BadClass> {
    match raw.as_bytes()[0] {
        b'"' => Ok(None),
        b'{' | b'[' => Err(BadClass::Nested),
        b't' | b'f' => Err(BadClass::Bool),
        b'n' => Err(BadClass::Null),
        _ if raw.contains(['.', 'e', 'E']) => Err(BadClass::Float),
        b'-' => Err(BadClass::Negative),
        _ => raw.parse::<u64>().map(Some).map_err(|_| BadClass::IntegerOverflow),
    }
}

/// Top-level members in order, duplicates included.
fn collect_members(text: &str) -> Vec<(String, Box<RawValue>)> {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, Box<RawValue>)>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                members.push(entry);
            }
            Ok(members)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(Members).expect("parsed as a Value already")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_give_one_valid_line(line in prop::collection::vec(any::<u8>(), 0..3000), limits in limits_strategy(), now in any::<u64>()) {
        let mut out = Vec::new();
        let classes = process_line(&line, now, &limits, &mut out);
        assert_one_valid_line(&out, &limits)?;
        if classes.is_empty() {
            prop_assert_eq!(&out[..out.len() - 1], &line[..]);
        }
        out.clear();
        process_stderr(&line, now, &limits, &mut out);
        assert_one_valid_line(&out, &limits)?;
    }

    #[test]
    fn json_ish_lines_give_one_valid_line_and_match_the_reference(line in json_ish_line(), limits in limits_strategy()) {
        let mut out = Vec::new();
        let classes = process_line(&line, 5, &limits, &mut out);
        assert_one_valid_line(&out, &limits)?;
        if classes.is_empty() {
            prop_assert_eq!(&out[..out.len() - 1], &line[..]);
        }
        let Some(expected) = reference(&line, false) else {
            return Ok(());
        };
        if line.len() <= limits.line_bytes_max_effective() {
            prop_assert_eq!(classes, expected, "{}", String::from_utf8_lossy(&line));
        }
        prop_assert_eq!(check_line(&line, false), expected);
        prop_assert_eq!(Some(check_line(&line, true)), reference(&line, true));
    }

    #[test]
    fn valid_lines_pass_byte_for_byte(line in valid_line()) {
        prop_assert_eq!(reference(&line, false), Some(BadClasses::NONE), "{}", String::from_utf8_lossy(&line));
        let mut out = b"x\n".to_vec();
        let classes = process_line(&line, 5, &Limits::default(), &mut out);
        prop_assert_eq!(classes, BadClasses::NONE);
        prop_assert_eq!(&out[2..out.len() - 1], &line[..]);
        prop_assert_eq!(out.last(), Some(&b'\n'));
    }

    #[test]
    fn prefixes_of_long_lines_give_one_valid_line(prefix in prop::collection::vec(any::<u8>(), 0..9000), extra in 0..u64::MAX / 2, limits in limits_strategy()) {
        let total = prefix.len() as u64 + extra;
        let mut out = Vec::new();
        process_too_long(&prefix, total, 5, &limits, &mut out);
        assert_one_valid_line(&out, &limits)?;
        out.clear();
        process_stderr_too_long(&prefix, total, 5, &limits, &mut out);
        assert_one_valid_line(&out, &limits)?;
    }
}
