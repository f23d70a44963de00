//! The query side end to end: real supervisors, a real store, its HTTP API and the CLI. Answers
//! are compared with what the generator wrote, read back from the supervisors' chunk files.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

const ADMIN: &str = "admin-token-0123456789abcdef";
const VIEWER: &str = "viewer-token-0123456789abcdef";

fn curl_api(listen: &str, token: Option<&str>, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("http://{listen}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn sql(listen: &str, token: &str, q: &str) -> Value {
    let body = serde_json::json!({ "sql": q }).to_string();
    let (code, text) = curl_api(listen, Some(token), "POST", "/api/sql", Some(&body));
    assert_eq!(code, 200, "{q}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn search(listen: &str, token: &str, q: &str) -> Value {
    let (code, text) =
        curl_api(listen, Some(token), "GET", &format!("/api/search?q={}&since=100000d&limit=10000", enc(q)), None);
    assert_eq!(code, 200, "{q}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn rows(v: &Value) -> &Vec<Value> {
    v["rows"].as_array().expect("rows")
}

/// The generated events of one supervisor (its own events left out), parsed.
fn generated(dir: &Path) -> Vec<serde_json::Map<String, Value>> {
    all_lines(dir)
        .into_iter()
        .filter(|l| !is_own(l))
        .map(|l| match serde_json::from_slice::<Value>(&l).unwrap() {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        })
        .collect()
}

fn nearest_p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    let rank = ((0.99 * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// The bare-word rule of the search language, for the reference answers.
fn has_word(ev: &serde_json::Map<String, Value>, word: &str) -> bool {
    ev.iter().any(|(k, v)| !k.starts_with("pii_") && v.as_str().is_some_and(|s| sluice_query::text_matches(s, word)))
}

#[test]
fn sql_search_tail_roles_and_cli_against_a_real_store() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).output().unwrap().status.success());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut sources = String::new();
    let mut sups = Vec::new();
    for i in 0..2 {
        let script = format!("{exe} gen --count 15000 --seed {} --bad-ratio 0.01; exec sleep 3600", i + 20);
        let sup = Supervisor::start(&dir.path().join(format!("sup{i}")), &tls_args, &["sh", "-c", &script]);
        sources.push_str(&format!("[[source]]\nname = \"web-{i}\"\nurl = \"https://{}\"\n", sup.ready_field("chunks")));
        sups.push(sup);
    }
    let fifo = dir.path().join("probe.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let probe = Supervisor::start(&dir.path().join("probe"), &tls_args, &["cat", fifo.to_str().unwrap()]);
    sources.push_str(&format!("[[source]]\nname = \"probe\"\nurl = \"https://{}\"\n", probe.ready_field("chunks")));
    let tokens = dir.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"ops\"\nsecret = \"{ADMIN}\"\nroles = [\"viewer\", \"pii\", \"admin\"]\n\
             [[token]]\nname = \"dev\"\nsecret = \"{VIEWER}\"\nroles = [\"viewer\"]\n"
        ),
    )
    .unwrap();
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nflush_rows_max = 4000\nflush_age_max = \"10m\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[api]\ntokens = \"{}\"\n{sources}",
            dir.path().join("store").display(),
            certs.join("store.pem").display(),
            certs.join("store.key").display(),
            certs.join("ca.pem").display(),
            tokens.display(),
        ),
    )
    .unwrap();
    let mut store = StoreProc::start(&config);
    let l = store.listen.clone();

    // Everything the generators wrote arrives (the supervisors' own events left out).
    for i in 0..2 {
        wait_until("the generator is done", || generated(&dir.path().join(format!("sup{i}"))).len() >= 15000);
    }
    let events: Vec<Vec<serde_json::Map<String, Value>>> =
        (0..2).map(|i| generated(&dir.path().join(format!("sup{i}")))).collect();
    let want_total: usize = events.iter().map(Vec::len).sum();
    const GENERATED: &str = "sluice_source IN ('web-0', 'web-1') AND coalesce(sluice_origin, '') <> 'supervisor'";
    let gen_count = |v: &Value| rows(v)[0]["n"].as_u64().unwrap() as usize;
    wait_until("every generated event is queryable", || {
        gen_count(&sql(&l, ADMIN, &format!("SELECT count(*) AS n FROM events WHERE {GENERATED}"))) >= want_total
    });

    // SQL answers equal the generator's, over segments and the buffer together.
    let all: Vec<&serde_json::Map<String, Value>> = events.iter().flatten().collect();
    let v = sql(&l, ADMIN, &format!("SELECT count(*) AS n, sum(duration_ms) AS d FROM events WHERE {GENERATED}"));
    assert_eq!(gen_count(&v), want_total);
    let want_sum: u64 = all.iter().filter_map(|e| e.get("duration_ms").and_then(Value::as_u64)).sum();
    assert_eq!(rows(&v)[0]["d"].as_u64(), Some(want_sum));
    assert!(v["stats"]["segments_read"].as_u64().unwrap() > 0, "{}", v["stats"]);
    let v = sql(
        &l,
        VIEWER,
        &format!(
            "SELECT rpc_method, count(*) AS n, quantile_nearest(duration_ms, 0.99) AS p99 FROM events \
             WHERE rpc_method IS NOT NULL AND {GENERATED} GROUP BY 1 ORDER BY 1"
        ),
    );
    let mut methods: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    for e in &all {
        if let (Some(m), Some(d)) =
            (e.get("rpc_method").and_then(Value::as_str), e.get("duration_ms").and_then(Value::as_u64))
        {
            methods.entry(m.to_owned()).or_default().push(d);
        }
    }
    assert_eq!(rows(&v).len(), methods.len());
    for (row, (m, d)) in rows(&v).iter().zip(&methods) {
        assert_eq!(row["rpc_method"].as_str(), Some(m.as_str()));
        assert_eq!(row["n"].as_u64(), Some(d.len() as u64), "{m}");
        assert_eq!(row["p99"].as_u64(), Some(nearest_p99(d.clone())), "{m}");
    }

    // Search operators against the reference rules.
    type Pred = Box<dyn Fn(&serde_json::Map<String, Value>) -> bool>;
    let checks: Vec<(&str, Pred)> = vec![
        ("rpc_method:Logout", Box::new(|e| e.get("rpc_method").and_then(Value::as_str) == Some("Logout"))),
        ("duration_ms:>200", Box::new(|e| e.get("duration_ms").and_then(Value::as_u64).is_some_and(|d| d > 200))),
        ("level:* -level:INFO", Box::new(|e| e.get("level").and_then(Value::as_str).is_some_and(|l| l != "INFO"))),
        ("pangolin", Box::new(|e| has_word(e, "pangolin"))),
        (
            "level:ERROR OR (rpc_method:Logout duration_ms:<=1)",
            Box::new(|e| {
                e.get("level").and_then(Value::as_str) == Some("ERROR")
                    || (e.get("rpc_method").and_then(Value::as_str) == Some("Logout")
                        && e.get("duration_ms").and_then(Value::as_u64).is_some_and(|d| d <= 1))
            }),
        ),
    ];
    for (q, pred) in &checks {
        let want = all.iter().filter(|e| pred(e)).count();
        let full = format!("({q}) -sluice_source:probe -sluice_origin:supervisor");
        let got = rows(&search(&l, ADMIN, &full)).len();
        assert_eq!(got, want.min(10000), "{q}");
        assert!(want > 0, "{q} should match something in the generated data");
    }
    // A syntax error points at its column.
    let (code, text) = curl_api(&l, Some(VIEWER), "GET", &format!("/api/search?q={}", enc("level:warn status:")), None);
    assert_eq!(code, 400, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["position"].as_u64(), Some(18), "{text}");

    // Pruning: after a flush, a narrow time range reads fewer segments than there are.
    let (code, text) = curl_api(&l, Some(ADMIN), "POST", "/api/admin/flush", None);
    assert_eq!(code, 200, "{text}");
    let tmax = rows(&sql(&l, ADMIN, "SELECT max(time_ns) AS t FROM events WHERE sluice_source = 'web-0'"))[0]["t"]
        .as_u64()
        .unwrap();
    let v = sql(&l, VIEWER, &format!("SELECT count(*) AS n FROM events WHERE time_ns > {}", tmax - 2_000_000_000));
    assert!(v["stats"]["segments_skipped"].as_u64().unwrap() > 0, "{}", v["stats"]);

    // Roles and masking.
    let uid = all.iter().find_map(|e| e.get("pii_uid").and_then(Value::as_str)).unwrap().to_owned();
    let probe_sql = format!("SELECT count(*) AS n FROM events WHERE pii_uid = '{uid}'");
    assert_eq!(gen_count(&sql(&l, VIEWER, &probe_sql)), 0, "a viewer cannot confirm a clear value");
    assert!(gen_count(&sql(&l, ADMIN, &probe_sql)) >= 1);
    let v = sql(&l, VIEWER, "SELECT pii_uid FROM events WHERE pii_uid IS NOT NULL LIMIT 20");
    assert!(rows(&v).iter().all(|r| r["pii_uid"].as_str().unwrap().starts_with("pii:")), "{v}");
    assert_eq!(curl_api(&l, None, "POST", "/api/sql", Some(r#"{"sql":"SELECT 1"}"#)).0, 401);
    assert_eq!(curl_api(&l, Some("wrong-token-0123456789"), "POST", "/api/sql", Some(r#"{"sql":"SELECT 1"}"#)).0, 401);
    assert_eq!(curl_api(&l, Some(VIEWER), "POST", "/api/admin/flush", None).0, 403);

    // Tail and freshness: a probe event written by a child comes back through tail and search.
    let mut tail = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "120", "-H", &format!("Authorization: Bearer {VIEWER}")])
        .arg(format!("http://{l}/api/tail?q={}", enc("probe_id:*")))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(data) = line.strip_prefix("data:") {
                if tx.send(data.trim().to_owned()).is_err() {
                    break;
                }
            }
        }
    });
    let mut fifo_w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    // The tail starts "now": wait until it is connected (its first keepalive is not guaranteed
    // soon, so probe until an event comes through).
    let deadline = Instant::now() + DEADLINE;
    let mut tailed: Vec<String> = Vec::new();
    let mut k = 0;
    while tailed.is_empty() {
        assert!(Instant::now() < deadline, "the tail delivered nothing");
        writeln!(fifo_w, r#"{{"time_ns":{},"probe_id":"warm{k}","pii_uid":"U000001"}}"#, k + 1).unwrap();
        k += 1;
        if let Ok(d) = rx.recv_timeout(Duration::from_millis(500)) {
            tailed.push(d);
        }
    }
    for p in 0..5 {
        writeln!(fifo_w, r#"{{"time_ns":{},"probe_id":"p{p}","pii_uid":"U000001"}}"#, 1000 + p).unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        let d = rx.recv_timeout(DEADLINE).expect("tail delivers the probes");
        let row: Value = serde_json::from_str(&d).unwrap();
        let id = row["probe_id"].as_str().unwrap().to_owned();
        if id.starts_with('p') {
            assert!(row["pii_uid"].as_str().unwrap().starts_with("pii:"), "masked in tail: {row}");
            got.push(id);
        }
    }
    assert_eq!(got, ["p0", "p1", "p2", "p3", "p4"], "in order");
    let _ = tail.kill();
    let _ = tail.wait();
    wait_until("the probe is searchable", || rows(&search(&l, VIEWER, "probe_id:p4")).len() == 1);

    // The CLI against the real store.
    let cli = |args: &[&str]| {
        let out =
            sluice().args(args).env("SLUICE_URL", format!("http://{l}")).env("SLUICE_TOKEN", VIEWER).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let csv = cli(&[
        "query",
        "--output",
        "csv",
        "SELECT probe_id, time_ns FROM events WHERE probe_id LIKE 'p%' ORDER BY probe_id",
    ]);
    assert_eq!(csv, "probe_id,time_ns\np0,1000\np1,1001\np2,1002\np3,1003\np4,1004\n");
    let json: Value =
        serde_json::from_str(&cli(&["search", "--output", "json", "--since", "100000d", "probe_id:p3"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["probe_id"], "p3");
    let nd = cli(&["search", "--output", "ndjson", "--since", "100000d", "--limit", "2", "probe_id:*"]);
    assert_eq!(nd.lines().count(), 2);

    // A query that computes for minutes in one step (a join whose LIKE pattern is a column and
    // matches nothing, so no batch comes out to yield on) holds only the query threads: /metrics,
    // /healthz, other queries and SIGTERM are still served.
    let runaway = serde_json::json!({
        "sql": "SELECT count(*) AS n FROM events a, events b \
                WHERE a.message || b.url LIKE b.message || a.url || '%zz%'"
    })
    .to_string();
    let mut slow = Command::new("curl")
        .args(["-sS", "--max-time", "300", "-o", "/dev/null", "-H", &format!("Authorization: Bearer {VIEWER}")])
        .args(["-H", "Content-Type: application/json", "--data-binary", &runaway])
        .arg(format!("http://{l}/api/sql"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the runaway query runs", || store.metric("sluice_query_running") == Some(1.0));
    let asked = Instant::now();
    assert_eq!(store.healthz().0, 200);
    assert!(asked.elapsed() < Duration::from_secs(5), "/healthz took {:?}", asked.elapsed());
    assert_eq!(gen_count(&sql(&l, VIEWER, &format!("SELECT count(*) AS n FROM events WHERE {GENERATED}"))), want_total);
    assert_eq!(store.metric("sluice_query_running"), Some(1.0), "still computing");
    let stopping = Instant::now();
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0, "the store stops without waiting for the query");
    assert!(stopping.elapsed() < Duration::from_secs(30), "stopped after {:?}", stopping.elapsed());
    // Its stderr is read by another thread: the last lines may come a moment after the exit.
    let mut said = Vec::new();
    wait_until("the store says it left the query behind", || {
        said.extend(store.stderr_so_far());
        said.iter().any(|l| l.contains("a query is still running at shutdown"))
    });
    let _ = slow.kill();
    let _ = slow.wait();
    drop(sups);
}
