//! The output contract of sluice-gen, checked from outside: flat JSON events with `time_ns`
//! first, the mix of kinds, determinism (with a golden digest), bad and stderr lines, `count` and
//! a broken pipe. Pacing against real time is not tested here (no timing asserts in tests): the
//! pacer has fake-clock tests in `pace.rs` and the benchmark measures the real thing.

use std::collections::{HashMap, HashSet};
use std::io::{self, Write};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use sluice_gen::{run, BadClass, GenConfig, Generator, LineKind, GEN_START_NS_DEFAULT};

/// Every pair of a JSON object, in order and with duplicates (a map type would hide both).
struct Pairs(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Pairs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PairsVisitor;
        impl<'de> Visitor<'de> for PairsVisitor {
            type Value = Pairs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = m.next_entry::<String, Value>()? {
                    pairs.push(pair);
                }
                Ok(Pairs(pairs))
            }
        }
        d.deserialize_map(PairsVisitor)
    }
}

/// Why `line` (with its newline) is not a valid event per SPEC §1, or `None` if it is one.
fn event_problem(line: &[u8]) -> Option<String> {
    let Some(body) = line.strip_suffix(b"\n") else {
        return Some("no final newline".into());
    };
    if body.contains(&b'\n') {
        return Some("a newline inside the line".into());
    }
    if !body.starts_with(b"{\"time_ns\":") || !body.ends_with(b"}") {
        return Some("does not start with {\"time_ns\": and end with }".into());
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Some("not UTF-8".into());
    };
    let pairs = match serde_json::from_str::<Pairs>(text) {
        Ok(p) => p.0,
        Err(e) => return Some(format!("not a JSON object: {e}")),
    };
    if pairs.len() < 2 {
        return Some("no key besides time_ns".into());
    }
    match pairs[0].1.as_u64() {
        Some(t) if t <= i64::MAX as u64 => {}
        _ => return Some("time_ns is not an integer in 0..=2^63-1".into()),
    }
    let mut keys = HashSet::new();
    for (k, v) in &pairs {
        if !keys.insert(k.as_str()) {
            return Some(format!("duplicate key {k}"));
        }
        if k.starts_with("sluice_") {
            return Some(format!("reserved key {k}"));
        }
        if !(v.is_string() || v.is_u64()) {
            return Some(format!("{k} is neither a string nor a non-negative integer: {v}"));
        }
    }
    None
}

fn parse(line: &[u8]) -> HashMap<String, Value> {
    serde_json::from_slice(line).expect("an event line is a JSON object")
}

fn generate(cfg: &GenConfig) -> (Vec<u8>, Vec<u8>, u64) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let n = run(cfg, &mut out, &mut err).expect("writing to a Vec cannot fail");
    (out, err, n)
}

fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split_inclusive(|&b| b == b'\n')
}

fn count(n: u64) -> GenConfig {
    GenConfig { count: Some(n), ..GenConfig::default() }
}

/// FNV-1a 64, for the golden digest (no dependency whose output could change).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[test]
fn every_line_is_a_flat_json_event_with_time_ns_first() {
    let (out, err, n) = generate(&count(100_000));
    assert_eq!(n, 100_000);
    assert!(err.is_empty());
    let mut total = 0;
    for line in lines(&out) {
        if let Some(problem) = event_problem(line) {
            panic!("{problem}: {}", String::from_utf8_lossy(line));
        }
        total += 1;
    }
    assert_eq!(total, 100_000);
}

#[test]
fn kinds_are_mixed_as_specified_and_lines_are_150_to_250_bytes_on_average() {
    let n = 100_000;
    let (out, _, _) = generate(&count(n));
    let avg = out.len() as f64 / n as f64;
    assert!((150.0..=250.0).contains(&avg), "average line {avg} bytes");
    // Kind by its first key after time_ns; expected shares per mille.
    let expected = [
        ("level", 300.0),
        ("rpc_method", 300.0),
        ("http_verb", 200.0),
        ("action", 80.0),
        ("worker", 70.0),
        ("queue_length", 25.0),
        ("heap_size_mb", 25.0),
    ];
    let mut seen: HashMap<String, u64> = HashMap::new();
    for line in lines(&out) {
        let key = std::str::from_utf8(line).unwrap().split('"').nth(3).unwrap();
        *seen.entry(key.to_owned()).or_default() += 1;
    }
    assert_eq!(seen.len(), expected.len(), "{seen:?}");
    for (key, per_mille) in expected {
        let got = seen[key] as f64 * 1_000.0 / n as f64;
        assert!((got - per_mille).abs() < 10.0, "{key}: {got} per mille, want {per_mille}");
    }
}

#[test]
fn field_values_are_realistic_and_consistent() {
    let (out, _, _) = generate(&count(50_000));
    let mut users: HashMap<String, u64> = HashMap::new();
    let mut server_errors = 0;
    let mut statuses = HashSet::new();
    let mut levels = HashSet::new();
    for line in lines(&out) {
        let e = parse(line);
        let num = |k: &str| e[k].as_u64().unwrap();
        let s = |k: &str| e[k].as_str().unwrap().to_owned();
        if let Some(uid) = e.get("pii_uid") {
            let uid = uid.as_str().unwrap();
            assert!(uid.len() == 7 && uid.starts_with('U'), "{uid}");
            assert!(uid[1..].bytes().all(|b| b.is_ascii_digit()), "{uid}");
            *users.entry(uid.to_owned()).or_default() += 1;
        }
        if let Some(ip) = e.get("pii_ip") {
            let octets: Vec<u8> = ip.as_str().unwrap().split('.').map(|o| o.parse().unwrap()).collect();
            assert_eq!(octets.len(), 4, "{ip}");
        }
        if e.contains_key("rpc_method") {
            assert!(num("conn_ms") + num("txn_ms") <= num("duration_ms"), "{e:?}");
            if s("server_error") == "DB_CONN_UNAVAILABLE" {
                assert!(num("duration_ms") >= 1_000 && num("conn_ms") == num("duration_ms"));
            }
            server_errors += u64::from(!s("server_error").is_empty());
        }
        if e.contains_key("http_verb") {
            assert!(s("url").starts_with("https://mycorp.com/"), "{e:?}");
            statuses.insert(num("status"));
        }
        if e.contains_key("level") {
            levels.insert(s("level"));
            if e.contains_key("pii_old_email") {
                assert!(s("pii_old_email").contains('@') && s("pii_new_email").contains('@'));
            }
        }
        if e.contains_key("worker") {
            assert!(num("network_ms") <= num("duration_ms"));
            assert!(s("work_item").starts_with('W') && s("work_item").len() == 7);
        }
        if e.contains_key("heap_used_p") {
            assert!(num("heap_used_p") <= 100);
        }
    }
    // Rare but present: 0.3% of ~15,000 RPCs.
    assert!((10..150).contains(&server_errors), "{server_errors} server errors");
    for status in [200, 201, 204, 302, 404, 500] {
        assert!(statuses.contains(&status), "no {status} in {statuses:?}");
    }
    for level in ["INFO", "WARN", "ERROR", "DEBUG"] {
        assert!(levels.contains(level), "no {level}");
    }
    // Zipf over many users: a busy head, but no single user dominates.
    let top = users.values().max().unwrap();
    let total: u64 = users.values().sum();
    assert!(*top as f64 / (total as f64) < 0.03, "top user has {top} of {total}");
    assert!(users.len() > 10_000, "only {} distinct users", users.len());
}

#[test]
fn synthetic_time_starts_at_start_ns_and_steps_by_step_ns_on_average() {
    let (out, _, _) = generate(&count(20_000));
    let times: Vec<u64> = lines(&out).map(|l| parse(l)["time_ns"].as_u64().unwrap()).collect();
    assert_eq!(times[0], GEN_START_NS_DEFAULT);
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "time went backwards");
    let mean_step = (times[times.len() - 1] - times[0]) as f64 / (times.len() - 1) as f64;
    assert!((950_000.0..1_050_000.0).contains(&mean_step), "mean step {mean_step} ns");
}

#[test]
fn same_seed_and_config_give_the_same_bytes_and_another_seed_does_not() {
    let cfg = GenConfig { count: Some(30_000), bad_ratio: 0.05, stderr_ratio: 0.02, ..GenConfig::default() };
    let a = generate(&cfg);
    let b = generate(&cfg);
    assert!(a.0 == b.0 && a.1 == b.1, "same config, different output");
    let c = generate(&GenConfig { seed: 2, ..cfg });
    assert_ne!(a.0, c.0);
}

/// Pins the exact bytes: the generator must never change its output for a given seed (tests and
/// benchmarks elsewhere rely on it). If a change is deliberate, update these values and say so.
#[test]
fn golden_output_for_seed_1() {
    let (out, _, _) = generate(&count(3));
    let text = String::from_utf8(out).unwrap();
    let want = concat!(
        r#"{"time_ns":1793491200000000000,"rpc_method":"Logout","user_err":"","server_error":"","duration_ms":3,"conn_ms":1,"txn_ms":0,"pii_ip":"165.198.180.62","pii_uid":"U670056"}"#,
        "\n",
        r#"{"time_ns":1793491200001458078,"rpc_method":"GetAccount","user_err":"","server_error":"","duration_ms":4,"conn_ms":0,"txn_ms":2,"pii_ip":"44.122.245.235","pii_uid":"U741423"}"#,
        "\n",
        r#"{"time_ns":1793491200001658645,"level":"INFO","module":"auth","message":"Handled the schema queue in session via order","pii_uid":"U739845"}"#,
        "\n",
    );
    assert_eq!(text, want);
    let cfg = GenConfig { count: Some(100_000), bad_ratio: 0.05, stderr_ratio: 0.02, ..GenConfig::default() };
    let (out, err, _) = generate(&cfg);
    assert_eq!((fnv1a(&out), fnv1a(&err)), (GOLDEN_STDOUT_FNV, GOLDEN_STDERR_FNV), "generated bytes changed");
}
const GOLDEN_STDOUT_FNV: u64 = 1_161_541_341_056_021_643;
const GOLDEN_STDERR_FNV: u64 = 8_451_376_706_360_039_180;

/// One check per bad class: the line breaks the rule its class names (and so is not a valid
/// event).
#[test]
fn each_bad_class_breaks_its_rule() {
    let mut gen = Generator::new(&GenConfig::default());
    let mut out = Vec::new();
    for class in BadClass::ALL {
        for i in 0..200u64 {
            out.clear();
            gen.write_bad_line(class, GEN_START_NS_DEFAULT + i, &mut out);
            let line = &out[..];
            let shown = String::from_utf8_lossy(line).into_owned();
            let what = format!("{}: {shown}", class.name());
            assert!(line.ends_with(b"\n") && line.iter().filter(|&&b| b == b'\n').count() == 1, "{what}");
            assert!(event_problem(line).is_some(), "valid event from {what}");
            let body = &line[..line.len() - 1];
            let json: Option<Value> = serde_json::from_slice(body).ok();
            let pairs: Option<Vec<(String, Value)>> = serde_json::from_slice::<Pairs>(body).ok().map(|p| p.0);
            let values = || pairs.as_ref().unwrap().iter().map(|(_, v)| v);
            match class {
                BadClass::NotJson | BadClass::Truncated => assert!(json.is_none(), "{what}"),
                BadClass::Float => assert!(values().any(|v| v.is_f64()), "{what}"),
                BadClass::Negative => assert!(values().any(|v| v.as_i64().is_some_and(|n| n < 0)), "{what}"),
                BadClass::Nested => assert!(values().any(|v| v.is_object() || v.is_array()), "{what}"),
                BadClass::ArrayLine => assert!(json.unwrap().is_array(), "{what}"),
                BadClass::DuplicateKey => {
                    let p = pairs.as_ref().unwrap();
                    let distinct: HashSet<&String> = p.iter().map(|(k, _)| k).collect();
                    assert!(distinct.len() < p.len(), "{what}");
                }
                BadClass::MissingTimeNs => {
                    let p = pairs.as_ref().unwrap();
                    assert!(!p.is_empty() && p.iter().all(|(k, _)| k != "time_ns"), "{what}");
                }
                BadClass::TimeNsString => assert!(pairs.unwrap()[0].1.is_string(), "{what}"),
                BadClass::TimeNsTooLarge => {
                    let digits: String = shown[11..].chars().take_while(char::is_ascii_digit).collect();
                    assert!(digits.parse::<u128>().unwrap() > i64::MAX as u128, "{what}");
                }
                BadClass::BoolNull => assert!(values().any(|v| v.is_boolean() || v.is_null()), "{what}"),
                BadClass::ReservedKey => {
                    assert!(pairs.unwrap().iter().any(|(k, _)| k.starts_with("sluice_")), "{what}")
                }
                BadClass::InvalidUtf8 => assert!(std::str::from_utf8(line).is_err(), "{what}"),
                BadClass::Empty => assert_eq!(line, b"\n"),
                BadClass::OnlyTimeNs => {
                    let p = pairs.unwrap();
                    assert!(p.len() == 1 && p[0].0 == "time_ns" && p[0].1.is_u64(), "{what}");
                }
            }
        }
    }
}

#[test]
fn next_line_reports_what_it_wrote() {
    let cfg = GenConfig { bad_ratio: 0.2, stderr_ratio: 0.1, ..GenConfig::default() };
    let mut gen = Generator::new(&cfg);
    let mut out = Vec::new();
    let mut classes = HashSet::new();
    let mut kinds: HashMap<&str, u32> = HashMap::new();
    for i in 0..20_000 {
        out.clear();
        let kind = gen.next_line(GEN_START_NS_DEFAULT + i, &mut out);
        assert!(out.ends_with(b"\n"));
        match kind {
            LineKind::Event => assert_eq!(event_problem(&out), None),
            LineKind::Bad => {
                assert!(event_problem(&out).is_some());
                classes.insert(gen.last_bad_class().unwrap());
            }
            LineKind::Stderr => {
                assert!(!out.starts_with(b"{") && out.len() > 1, "{}", String::from_utf8_lossy(&out));
                assert_eq!(gen.last_bad_class(), None);
            }
        }
        *kinds.entry(format!("{kind:?}").leak()).or_default() += 1;
    }
    assert_eq!(classes.len(), BadClass::ALL.len(), "classes never generated");
    // stderr 10% of all lines; bad 20% of the remaining 90%.
    assert!((1_800..2_200).contains(&kinds["Stderr"]), "{kinds:?}");
    assert!((3_300..3_900).contains(&kinds["Bad"]), "{kinds:?}");
}

#[test]
fn run_routes_stderr_lines_and_keeps_the_bad_share_of_stdout() {
    let cfg = GenConfig { count: Some(50_000), bad_ratio: 0.1, stderr_ratio: 0.05, ..GenConfig::default() };
    let (out, err, n) = generate(&cfg);
    assert_eq!(n, 50_000);
    let stdout_lines = lines(&out).count();
    let stderr_lines = lines(&err).count();
    assert_eq!(stdout_lines + stderr_lines, 50_000);
    assert!((2_200..2_800).contains(&stderr_lines), "{stderr_lines} stderr lines");
    let bad = lines(&out).filter(|l| event_problem(l).is_some()).count();
    let share = bad as f64 / stdout_lines as f64;
    assert!((0.09..0.11).contains(&share), "bad share {share}");
    assert!(lines(&err).all(|l| !l.starts_with(b"{\"time_ns\":") && l.len() > 1));
}

#[test]
fn count_is_exact_including_zero() {
    for n in [0, 1, 7, 12_345] {
        let (out, err, written) = generate(&GenConfig { stderr_ratio: 0.3, ..count(n) });
        assert_eq!(written, n);
        assert_eq!((lines(&out).count() + lines(&err).count()) as u64, n);
    }
}

/// A reader that takes some bytes, then goes away.
struct ClosingPipe {
    left: usize,
}

impl Write for ClosingPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(self.left);
        self.left -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_broken_stdout_pipe_ends_an_endless_run_quietly() {
    let mut out = ClosingPipe { left: 3_000_000 };
    let n = run(&GenConfig::default(), &mut out, &mut io::sink()).unwrap();
    assert!(n > 10_000, "{n}");
}

#[test]
fn a_broken_stderr_pipe_only_stops_stderr_lines() {
    let cfg = GenConfig { stderr_ratio: 0.5, ..count(20_000) };
    let mut out = Vec::new();
    let n = run(&cfg, &mut out, &mut ClosingPipe { left: 0 }).unwrap();
    assert_eq!(n, 20_000);
    assert!((9_000..11_000).contains(&lines(&out).count()));
}

#[test]
fn invalid_configurations_are_refused_with_a_message_naming_the_setting() {
    let bad = [
        GenConfig { rate: Some(0.0), ..GenConfig::default() },
        GenConfig { rate: Some(f64::NAN), ..GenConfig::default() },
        GenConfig { rate: Some(-5.0), ..GenConfig::default() },
        GenConfig { bad_ratio: 1.5, ..GenConfig::default() },
        GenConfig { stderr_ratio: -0.1, ..GenConfig::default() },
        GenConfig { stderr_ratio: f64::NAN, ..GenConfig::default() },
    ];
    for cfg in bad {
        let e = run(&cfg, &mut io::sink(), &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let msg = e.to_string();
        assert!(msg.starts_with("gen ") && (msg.contains("rate") || msg.contains("ratio")), "{msg}");
    }
}

#[test]
fn a_paced_run_stamps_lines_with_the_wall_clock() {
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    // 10 lines at 1,000/s: about 9 ms, whatever the machine's load.
    let cfg = GenConfig { rate: Some(1_000.0), ..count(10) };
    let (out, _, n) = generate(&cfg);
    assert_eq!(n, 10);
    for line in lines(&out) {
        assert_eq!(event_problem(line), None);
        assert!(parse(line)["time_ns"].as_u64().unwrap() >= before);
    }
}
