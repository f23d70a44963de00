//! Integration tests of the query API: a real store in a temporary directory, the engine over it,
//! and the server on 127.0.0.1:0, spoken to with a small hyper client (and raw sockets where a
//! client must misbehave). Every wait polls with a deadline.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::arrow::ipc::reader::StreamReader;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sluice_api::{Api, TokenSet};
use sluice_pull::{Batch, PullMetrics};
use sluice_sql::{Engine, EngineConfig, MaskKey};
use sluice_store::{FailPoint, Store, StoreConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const VIEWER: &str = "viewer-secret-0123456789";
const PII: &str = "pii-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";
const TOKENS: &str = r#"
[[token]]
name = "vera"
secret = "viewer-secret-0123456789"
roles = ["viewer"]

[[token]]
name = "pia"
secret = "pii-secret-0123456789"
roles = ["pii"]

[[token]]
name = "otto"
secret = "admin-secret-0123456789"
roles = ["admin"]
"#;
/// Generous: the machine is small and shared.
const DEADLINE: Duration = Duration::from_secs(120);
const KEY: [u8; 16] = *b"api-test-key-16b";

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

struct Options {
    engine: EngineConfig,
    tokens: bool,
    keepalive: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    fail_at: Option<FailPoint>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            engine: EngineConfig::default(),
            tokens: true,
            keepalive: Duration::from_secs(15),
            tls: None,
            fail_at: None,
        }
    }
}

struct Harness {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    api: Arc<Api>,
    pull: Arc<PullMetrics>,
    tokens: Option<TokenSet>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    server: JoinHandle<()>,
    chunks: std::sync::atomic::AtomicU64,
}

impl Harness {
    async fn start(o: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path().join("data"));
        cfg.maintenance = false;
        cfg.fail_at = o.fail_at;
        let store = Arc::new(tokio::task::spawn_blocking(move || Store::open(cfg)).await.unwrap().unwrap());
        let engine = Engine::with_key(store.clone(), o.engine, MaskKey::from_bytes(KEY));
        let tokens = if o.tokens {
            let path = dir.path().join("tokens.toml");
            std::fs::write(&path, TOKENS).unwrap();
            Some(TokenSet::load(&path).unwrap())
        } else {
            None
        };
        let pull = Arc::new(PullMetrics::new());
        let api = Arc::new(Api::new(engine, pull.clone(), tokens.clone()).with_tail_keepalive(o.keepalive));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (shutdown, rx) = watch::channel(false);
        let server = tokio::spawn(sluice_api::serve(listener, api.clone(), o.tls, rx));
        Harness { _dir: dir, store, api, pull, tokens, addr, shutdown, server, chunks: Default::default() }
    }

    /// Commits `lines` as one closed chunk of source `src-a`.
    async fn commit(&self, lines: &[String]) {
        self.try_commit(lines).await.unwrap();
    }

    async fn try_commit(&self, lines: &[String]) -> Result<(), sluice_store::StoreError> {
        let chunk = self.chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
        }
        let batch = Batch {
            source: Arc::from("src-a"),
            stream: 7,
            chunk: Arc::from(format!("{chunk:08}").as_str()),
            start_offset: 0,
            lines: Bytes::from(data),
            received_ns: now_ns(),
            chunk_complete: true,
        };
        self.store.commit_batch(batch).await.map(|_| ())
    }

    async fn flush(&self) {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush()).await.unwrap().unwrap();
    }

    async fn get(&self, path: &str, token: Option<&str>, accept: Option<&str>) -> Reply {
        send(self.addr, Method::GET, path, token, accept, None).await
    }

    async fn sql(&self, sql: &str, token: &str, accept: Option<&str>) -> Reply {
        let body = Bytes::from(json!({ "sql": sql }).to_string());
        send(self.addr, Method::POST, "/api/sql", Some(token), accept, Some(body)).await
    }

    /// The rows of a JSON answer to `sql`, which must succeed.
    async fn rows(&self, sql: &str, token: &str) -> Vec<Value> {
        let r = self.sql(sql, token, None).await;
        assert_eq!(r.status, StatusCode::OK, "{sql}: {}", r.text());
        r.json()["rows"].as_array().unwrap().clone()
    }

    async fn search(&self, params: &str, token: &str) -> Reply {
        self.get(&format!("/api/search?{params}"), Some(token), None).await
    }

    async fn stop(self) {
        self.shutdown.send_replace(true);
        tokio::time::timeout(DEADLINE, self.server).await.expect("the server stops").unwrap();
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", "127.0.0.1");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        b = b.header("accept", a);
    }
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(Full::new(body.unwrap_or_default())).unwrap()
}

async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    accept: Option<&str>,
    body: Option<Bytes>,
) -> Reply {
    let mut sender = connect(addr).await;
    let resp = tokio::time::timeout(DEADLINE, sender.send_request(request(method, path, token, accept, body)))
        .await
        .expect("an answer in time")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(DEADLINE, body.collect()).await.expect("a body in time").unwrap().to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// One generated event; every field is a function of `n`, so tests compute what to expect.
#[derive(Debug, Clone)]
struct Ev {
    n: u64,
    time_ns: u64,
    level: &'static str,
    status: u64,
    duration_ms: u64,
    msg: &'static str,
    trace: Option<String>,
}

impl Ev {
    fn new(n: u64, base_ns: u64) -> Ev {
        Ev {
            n,
            time_ns: base_ns + n * 1_000_000_000,
            level: if n.is_multiple_of(5) { "error" } else { "info" },
            status: match n % 10 {
                0 => 500,
                3 => 404,
                _ => 200,
            },
            duration_ms: (n * 37) % 1000,
            msg: match n % 6 {
                0 => "Connection refused (os error 111)",
                1 => "read timeout after 5s",
                2 => "timeouts are counted",
                _ => "request served",
            },
            trace: n.is_multiple_of(4).then(|| format!("t{n}")),
        }
    }

    fn line(&self) -> String {
        let mut v = json!({
            "time_ns": self.time_ns,
            "n": self.n,
            "level": self.level,
            "status": self.status,
            "duration_ms": self.duration_ms,
            "msg": self.msg,
            "pii_uid": format!("U{:06}", self.n),
        });
        if let Some(t) = &self.trace {
            v["trace"] = json!(t);
        }
        v.to_string()
    }
}

fn events(range: std::ops::Range<u64>, base_ns: u64) -> Vec<Ev> {
    range.map(|n| Ev::new(n, base_ns)).collect()
}

fn lines(evs: &[Ev]) -> Vec<String> {
    evs.iter().map(Ev::line).collect()
}

/// 300 events in three commits, the first two flushed into segments, the last one buffered.
async fn three_parts(h: &Harness, base_ns: u64) -> Vec<Ev> {
    let all = events(0..300, base_ns);
    for (i, part) in all.chunks(100).enumerate() {
        h.commit(&lines(part)).await;
        if i < 2 {
            h.flush().await;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_results_equal_what_was_committed_across_segments_and_buffer() {
    let h = Harness::start(Options::default()).await;
    let all = three_parts(&h, now_ns() - 3_600_000_000_000).await;

    let r = h.sql("SELECT count(*) AS n, sum(duration_ms) AS total FROM events", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let v = r.json();
    assert_eq!(v["rows"][0]["n"], 300);
    assert_eq!(v["rows"][0]["total"], all.iter().map(|e| e.duration_ms).sum::<u64>());
    assert_eq!(v["columns"][0], json!({"name": "n", "type": "Int64"}));
    assert_eq!(v["truncated"], false);
    let stats = &v["stats"];
    assert!(stats["segments_read"].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats["buffer_rows"], 100, "{stats}");
    assert!(stats["rows_scanned"].as_u64().unwrap() >= 300, "{stats}");
    assert!(stats["elapsed_ms"].as_f64().unwrap() > 0.0, "{stats}");

    let rows = h.rows("SELECT level, count(*) AS c FROM events GROUP BY level ORDER BY level", VIEWER).await;
    let errors = all.iter().filter(|e| e.level == "error").count();
    assert_eq!(rows, vec![json!({"level": "error", "c": errors}), json!({"level": "info", "c": 300 - errors})]);

    // Ids are 32 hex digits; a column that is null stays in the row as null.
    let rows = h.rows("SELECT sluice_id, trace FROM events WHERE n = 1", VIEWER).await;
    let id = rows[0]["sluice_id"].as_str().unwrap();
    assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{id}");
    assert_eq!(rows[0]["trace"], Value::Null);
    assert!(rows[0].as_object().unwrap().contains_key("trace"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_carries_the_same_rows() {
    let engine = EngineConfig { rows_max: 50, ..EngineConfig::default() };
    let h = Harness::start(Options { engine, ..Options::default() }).await;
    three_parts(&h, now_ns() - 3_600_000_000_000).await;
    let sql = "SELECT n, msg, trace, sluice_id FROM events WHERE n < 20 ORDER BY n";

    let json_rows = h.rows(sql, VIEWER).await;
    assert_eq!(json_rows.len(), 20);
    assert_eq!(json_rows[0]["msg"], "Connection refused (os error 111)");

    let r = h.sql(sql, VIEWER, Some("application/x-ndjson")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("sluice-truncated"), Some("false"));
    let stats: Value = serde_json::from_str(r.header("sluice-stats").unwrap()).unwrap();
    assert!(stats["rows_scanned"].as_u64().unwrap() > 0, "{stats}");
    let nd: Vec<Value> = r.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(nd, json_rows);

    let r = h.sql(sql, VIEWER, Some("text/csv")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("sluice-stats").is_some());
    let text = r.text();
    let csv: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(csv.len(), 21);
    assert_eq!(csv[0], "n,msg,trace,sluice_id");
    for (line, row) in csv[1..].iter().zip(&json_rows) {
        let expected = format!(
            "{},{},{},{}",
            row["n"],
            row["msg"].as_str().unwrap(),
            row["trace"].as_str().unwrap_or(""),
            row["sluice_id"].as_str().unwrap()
        );
        assert_eq!(*line, expected);
    }

    let r = h.sql(sql, VIEWER, Some("application/vnd.apache.arrow.stream")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header("sluice-stats").is_some());
    let reader = StreamReader::try_new(std::io::Cursor::new(r.body.to_vec()), None).unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let ns: Vec<u64> =
        batches.iter().flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec()).collect();
    assert_eq!(ns, (0..20).collect::<Vec<u64>>());
    let ids = batches[0].column_by_name("sluice_id").unwrap().as_fixed_size_binary();
    let hex: String = ids.value(0).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, json_rows[0]["sluice_id"].as_str().unwrap());

    // Over rows_max: cut, and said so in the body and the header.
    let r = h.sql("SELECT n FROM events", VIEWER, None).await;
    assert_eq!(r.json()["rows"].as_array().unwrap().len(), 50);
    assert_eq!(r.json()["truncated"], true);
    assert_eq!(r.header("sluice-truncated"), Some("true"));
    h.stop().await;
}

/// The `n` of every row of a search answer, in answer order.
fn ns_of(r: &Reply) -> Vec<u64> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.json()["rows"].as_array().unwrap().iter().map(|row| row["n"].as_u64().unwrap()).collect()
}

fn enc(q: &str) -> String {
    let mut out = String::new();
    for b in q.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_operators_match_the_expected_events() {
    let h = Harness::start(Options::default()).await;
    let base = now_ns() - 3_600_000_000_000;
    let all = three_parts(&h, base).await;
    let since = "since=2h";

    type Pred = fn(&Ev) -> bool;
    let cases: &[(&str, Pred)] = &[
        ("status:500", |e| e.status == 500),
        ("level:error", |e| e.level == "error"),
        (r#"msg:"read timeout after 5s""#, |e| e.msg == "read timeout after 5s"),
        ("duration_ms:>900", |e| e.duration_ms > 900),
        ("duration_ms:<=10", |e| e.duration_ms <= 10),
        ("-level:info", |e| e.level != "info"),
        ("-trace:t8", |e| e.trace.as_deref() != Some("t8")),
        ("trace:*", |e| e.trace.is_some()),
        ("timeout", |e| e.msg == "read timeout after 5s"),
        (r#""connection refused""#, |e| e.msg.starts_with("Connection refused")),
        ("(status:500 OR status:404) level:error", |e| (e.status == 500 || e.status == 404) && e.level == "error"),
        ("served -status:200", |e| e.msg == "request served" && e.status != 200),
        ("", |_| true),
    ];
    for (q, pred) in cases {
        let r = h.search(&format!("q={}&{since}&limit=10000", enc(q)), VIEWER).await;
        let mut expected: Vec<u64> = all.iter().filter(|e| pred(e)).map(|e| e.n).collect();
        expected.reverse();
        assert_eq!(ns_of(&r), expected, "q={q}");
    }

    // A search row looks like the event: no null columns.
    let r = h.search(&format!("q=n%3A1&{since}"), VIEWER).await;
    let row = r.json()["rows"][0].as_object().unwrap().clone();
    assert!(!row.contains_key("trace"), "{row:?}");
    assert_eq!(row["msg"], "read timeout after 5s");
    let columns: Vec<String> =
        r.json()["columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert!(!columns.contains(&"trace".to_string()), "{columns:?}");

    // Time range, limit (newest first) and truncation.
    let t = |n: u64| base + n * 1_000_000_000;
    let rfc = |ns: u64| sluice_api::format::rfc3339(ns as i64, 1);
    let r = h.search(&format!("q=&since={}&until={}", enc(&rfc(t(10))), enc(&rfc(t(14)))), VIEWER).await;
    assert_eq!(ns_of(&r), vec![14, 13, 12, 11, 10]);
    let r = h.search(&format!("q=level%3Aerror&{since}&limit=3"), VIEWER).await;
    assert_eq!(ns_of(&r), vec![295, 290, 285]);
    assert_eq!(r.json()["truncated"], true);
    assert_eq!(r.header("sluice-truncated"), Some("true"));
    // The default since is 15 minutes: these events are an hour old.
    let r = h.search("q=level%3Aerror", VIEWER).await;
    assert_eq!(ns_of(&r), Vec::<u64>::new());

    // NDJSON search rows also leave nulls out.
    let r = h.get(&format!("/api/search?q=n%3A1&{since}"), Some(VIEWER), Some("application/x-ndjson")).await;
    let line: Value = serde_json::from_str(r.text().lines().next().unwrap()).unwrap();
    assert!(line.get("trace").is_none(), "{line}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_answer_400_with_the_position() {
    let h = Harness::start(Options::default()).await;
    three_parts(&h, now_ns() - 60_000_000_000).await;

    let r = h.search(&format!("q={}", enc("level:warn status:")), VIEWER).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    let v = r.json();
    assert_eq!(v["position"], 18, "{v}");
    assert!(v["error"].as_str().unwrap().contains("status"), "{v}");

    let r = h.search(&format!("q={}", enc("(a OR b")), VIEWER).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["position"].as_u64().is_some(), "{}", r.text());

    let r = h.sql("SELEC 1", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["position"], 0, "{}", r.text());
    let r = h.sql("SELECT n FROM events WHERE", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert!(r.json()["error"].as_str().is_some());

    let r = h.sql("DROP TABLE events", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());

    for (params, expected) in [
        ("q=a&since=yesterday", "since: \"yesterday\" is not a time"),
        ("q=a&limit=0", "limit \"0\" is not a whole number from 1 to 10000"),
        ("q=a&limit=10001", "from 1 to 10000"),
        ("q=a&lmit=5", "unknown parameter \"lmit\""),
        ("q=a&since=1h&until=2h", "since is after until"),
    ] {
        let r = h.search(params, VIEWER).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{params}");
        assert!(r.json()["error"].as_str().unwrap().contains(expected), "{params}: {}", r.text());
    }
    let r = h.get("/api/tail?q=status%3A", Some(VIEWER), None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["position"].as_u64().is_some(), "{}", r.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_request_limits() {
    let h = Harness::start(Options::default()).await;
    h.commit(&lines(&events(0..10, now_ns()))).await;

    let r = h.sql("SELECT 1", "", None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(h.addr, Method::GET, "/api/sources", None, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"sluice\""));
    assert!(r.json()["error"].as_str().unwrap().contains("Authorization: Bearer"), "{}", r.text());
    let r = h.get("/api/sources", Some("not-a-known-token-at-all"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown token"), "{}", r.text());

    let r = send(h.addr, Method::POST, "/api/admin/flush", Some(VIEWER), None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let r = send(h.addr, Method::POST, "/api/admin/flush", Some(PII), None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "pii does not imply admin");
    let r = send(h.addr, Method::POST, "/api/admin/flush", Some(ADMIN), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json(), json!({"segments": 1, "rows": 10}));
    assert_eq!(h.store.stats().rows_in_segments, 10);
    // Every role may query.
    for token in [VIEWER, PII, ADMIN] {
        assert_eq!(h.rows("SELECT count(*) AS c FROM events", token).await, vec![json!({"c": 10})]);
    }

    let r = h.get("/metrics", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains("sluice_store_rows_committed_total 10\n"), "{}", r.text());
    assert!(r.text().contains("sluice_api_tails 0\n"), "{}", r.text());
    // The three queries read the one segment; its footer is cached once.
    assert!(r.text().contains("sluice_query_metadata_cache_segments 1\n"), "{}", r.text());
    let r = h.get("/healthz", None, None).await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok\n"));
    let r = send(h.addr, Method::HEAD, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);

    let r = h.get("/api/nope", Some(VIEWER), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.json()["error"].as_str().unwrap().contains("/api/sql"), "{}", r.text());
    let r = h.get("/api/sql", Some(VIEWER), None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.header("allow"), Some("POST"));
    let r = send(h.addr, Method::POST, "/metrics", None, None, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    let big = Bytes::from(format!("{{\"sql\": \"SELECT '{}'\"}}", "x".repeat(sluice_api::SQL_BODY_BYTES_MAX)));
    let r = send(h.addr, Method::POST, "/api/sql", Some(VIEWER), None, Some(big)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    for body in ["{\"sql\": 1}", "not json", "{\"query\": \"SELECT 1\"}", ""] {
        let r = send(h.addr, Method::POST, "/api/sql", Some(VIEWER), None, Some(Bytes::from(body))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.json()["error"].as_str().unwrap().contains("{\"sql\": \"SELECT …\"}"), "{body}: {}", r.text());
    }
    let r = h.sql("SELECT 1", VIEWER, Some("image/png")).await;
    assert_eq!(r.status, StatusCode::NOT_ACCEPTABLE);
    h.stop().await;

    // Without a tokens file every /api/ request says how to configure one.
    let h = Harness::start(Options { tokens: false, ..Options::default() }).await;
    let r = h.sql("SELECT 1", VIEWER, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.json()["error"].as_str().unwrap().contains("tokens = \"tokens.toml\""), "{}", r.text());
    assert_eq!(h.get("/healthz", None, None).await.status, StatusCode::OK);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_why_new_events_are_refused() {
    let metric = |text: &str, name: &str| {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().unwrap().to_string()
    };
    // A full disk: the commit is refused until there is room, and healthz says so meanwhile.
    let h = Harness::start(Options { fail_at: Some(FailPoint::WalAppendDiskFull), ..Options::default() }).await;
    let batch = lines(&events(0..5, now_ns()));
    assert!(h.try_commit(&batch).await.is_err());
    let r = h.get("/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.text().starts_with("new events refused, the write-ahead log cannot be written: wal file"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("No space left on device"), "{}", r.text());
    let m = h.get("/metrics", None, None).await.text();
    assert_eq!(metric(&m, "sluice_store_wal_append_errors_total"), "1");
    assert_eq!(metric(&m, "sluice_store_stopped"), "0");
    // Room again: a commit that succeeds does not turn it back to ok at once (a full disk often
    // still takes a small commit now and then) ...
    h.commit(&batch).await;
    let r = h.get("/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.text().contains("s ago; ok once none is refused for 10 s"), "{}", r.text());
    // ... but once no append has been refused for a while.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = h.get("/healthz", None, None).await;
        if r.status == StatusCode::OK {
            assert_eq!(r.text(), "ok\n");
            break;
        }
        assert!(r.text().starts_with("new events refused"), "{}", r.text());
        assert!(Instant::now() < deadline, "still {}: {}", r.status, r.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.stop().await;

    // A failed WAL sync: the store stops taking commits, and healthz says to restart it.
    let h = Harness::start(Options { fail_at: Some(FailPoint::BeforeSync), ..Options::default() }).await;
    assert!(h.try_commit(&batch).await.is_err());
    let r = h.get("/healthz", None, None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().starts_with("stopped after a failed write: injected failure at BeforeSync"), "{}", r.text());
    assert!(r.text().contains("restart it to recover from the write-ahead log"), "{}", r.text());
    assert_eq!(metric(&h.get("/metrics", None, None).await.text(), "sluice_store_stopped"), "1");
    h.stop().await;
}

/// A query that keeps a core busy for far longer than any test waits.
const HEAVY: &str =
    "SELECT sum(a.duration_ms * b.duration_ms + c.duration_ms) AS s FROM events a, events b, events c WHERE a.n + b.n + c.n > 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_engine_answers_429_and_a_client_that_leaves_cancels_its_query() {
    let engine = EngineConfig { concurrent_max: 1, time_max: Duration::from_secs(600), ..EngineConfig::default() };
    let h = Harness::start(Options { engine, ..Options::default() }).await;
    h.commit(&lines(&events(0..2000, now_ns()))).await;

    // The heavy query from a raw connection that will be closed.
    let heavy = || async {
        let mut raw = TcpStream::connect(h.addr).await.unwrap();
        let body = json!({ "sql": HEAVY }).to_string();
        let head = format!(
            "POST /api/sql HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {VIEWER}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        raw.write_all(body.as_bytes()).await.unwrap();
        raw
    };
    let mut raw = heavy().await;

    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = h.sql("SELECT 1 AS one", VIEWER, None).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.header("retry-after"), Some("1"));
            assert!(r.json()["error"].as_str().unwrap().contains("too many queries"), "{}", r.text());
            break;
        }
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        // An answer to the heavy query means it came while `SELECT 1` held the engine and was
        // refused (429): send it again.
        let mut buf = [0u8; 256];
        if !matches!(raw.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock) {
            raw = heavy().await;
        }
        assert!(Instant::now() < deadline, "the heavy query never held the engine");
    }

    // Closing the connection cancels the heavy query, which frees the engine long before its
    // time limit.
    drop(raw);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = h.sql("SELECT 1 AS one", VIEWER, None).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
        assert!(Instant::now() < deadline, "the query went on after its client left");
        tokio::task::yield_now().await;
    }
    h.stop().await;

    let engine = EngineConfig { time_max: Duration::from_millis(500), ..EngineConfig::default() };
    let h = Harness::start(Options { engine, ..Options::default() }).await;
    h.commit(&lines(&events(0..2000, now_ns()))).await;
    let r = h.sql(HEAVY, VIEWER, None).await;
    assert_eq!(r.status, StatusCode::REQUEST_TIMEOUT, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("time limit"), "{}", r.text());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_is_masked_for_viewers_everywhere_and_clear_for_pii_tokens() {
    let h = Harness::start(Options::default()).await;
    let base = now_ns() - 60_000_000_000;
    let mut ls = lines(&events(0..20, base));
    // pii_phone first as a string (it gets a column), then as a number: that one goes to overflow.
    ls.push(json!({"time_ns": base, "n": 100, "pii_phone": "555-0100", "msg": "phone as text"}).to_string());
    ls.push(json!({"time_ns": base, "n": 101, "pii_phone": 5550101u64, "msg": "phone as number"}).to_string());
    // A bad line as a supervisor wraps it, and a line the store cannot parse at all.
    ls.push(
        json!({"time_ns": base, "sluice_bad": "not_json", "sluice_raw": "secret U000003 in a bad line", "n": 102})
            .to_string(),
    );
    ls.push("this is not json U000004".to_string());
    h.commit(&ls).await;
    h.flush().await;
    h.commit(&lines(&events(20..30, base))).await;

    // Columns: hashes for a viewer, clear for pii.
    let viewer = h.rows("SELECT pii_uid FROM events WHERE n = 3", VIEWER).await;
    let hash = viewer[0]["pii_uid"].as_str().unwrap().to_string();
    assert!(hash.starts_with("pii:") && hash.len() == 20, "{hash}");
    let pii = h.rows("SELECT pii_uid FROM events WHERE n = 3", PII).await;
    assert_eq!(pii[0]["pii_uid"], "U000003");
    let admin = h.rows("SELECT pii_uid FROM events WHERE n = 3", ADMIN).await;
    assert_eq!(admin[0]["pii_uid"], hash, "admin does not imply pii");

    // The WHERE probe: the clear value confirms nothing, the hash shown matches.
    let count = |sql: String, token: &'static str| {
        let h = &h;
        async move { h.rows(&sql, token).await[0]["c"].as_u64().unwrap() }
    };
    assert_eq!(count("SELECT count(*) AS c FROM events WHERE pii_uid = 'U000003'".into(), VIEWER).await, 0);
    assert_eq!(count(format!("SELECT count(*) AS c FROM events WHERE pii_uid = '{hash}'"), VIEWER).await, 1);
    assert_eq!(count("SELECT count(*) AS c FROM events WHERE pii_uid = 'U000003'".into(), PII).await, 1);
    // The same through search; and bare words never look inside pii_* values.
    let r = h.search("q=pii_uid%3AU000003&since=1h", VIEWER).await;
    assert_eq!(ns_of(&r), Vec::<u64>::new());
    let r = h.search(&format!("q=pii_uid%3A%22{}%22&since=1h", enc(&hash)), VIEWER).await;
    assert_eq!(ns_of(&r), vec![3]);
    let r = h.search("q=pii_uid%3AU000003&since=1h", PII).await;
    assert_eq!(ns_of(&r), vec![3]);
    // Only the bad line's text holds the word outside pii_* columns.
    let r = h.search("q=U000003&since=1h", PII).await;
    assert_eq!(ns_of(&r), vec![102]);
    let r = h.search("q=U000003&since=1h", VIEWER).await;
    assert_eq!(ns_of(&r), Vec::<u64>::new(), "hidden text is not searched for a viewer");

    // Overflow JSON: the pii_* value hashed for a viewer.
    let v = h.rows("SELECT sluice_overflow FROM events WHERE n = 101", VIEWER).await;
    let overflow: Value = serde_json::from_str(v[0]["sluice_overflow"].as_str().unwrap()).unwrap();
    assert!(overflow["pii_phone"].is_u64(), "{overflow}");
    assert_ne!(overflow["pii_phone"], 5550101u64);
    let v = h.rows("SELECT sluice_overflow FROM events WHERE n = 101", PII).await;
    let overflow: Value = serde_json::from_str(v[0]["sluice_overflow"].as_str().unwrap()).unwrap();
    assert_eq!(overflow["pii_phone"], 5550101u64);

    // Bad-line text: hidden for a viewer, in its column and in the overflow of unparsed lines.
    let v = h.rows("SELECT sluice_raw FROM events WHERE n = 102", VIEWER).await;
    assert!(v[0]["sluice_raw"].as_str().unwrap().starts_with("(hidden"), "{v:?}");
    let v = h.rows("SELECT sluice_raw FROM events WHERE n = 102", PII).await;
    assert_eq!(v[0]["sluice_raw"], "secret U000003 in a bad line");
    let all = h.sql("SELECT * FROM events", VIEWER, Some("application/x-ndjson")).await;
    assert_eq!(all.status, StatusCode::OK);
    for word in ["U000003", "U000004", "555-0100", "secret"] {
        assert!(!all.text().contains(word), "{word} visible to a viewer: {}", all.text());
    }
    let all = h.sql("SELECT * FROM events", PII, Some("application/x-ndjson")).await;
    for word in ["U000003", "U000004", "555-0100", "5550101"] {
        assert!(all.text().contains(word), "{word} hidden from a pii token");
    }

    // Tail: masked for a viewer.
    let mut viewer_tail = Sse::open(h.addr, "q=level%3Aerror", VIEWER).await;
    let mut pii_tail = Sse::open(h.addr, "q=level%3Aerror", PII).await;
    h.commit(&lines(&events(30..31, base))).await;
    let row = viewer_tail.next_event("row").await;
    assert_eq!(row["n"], 30);
    assert!(row["pii_uid"].as_str().unwrap().starts_with("pii:"), "{row}");
    let row = pii_tail.next_event("row").await;
    assert_eq!(row["pii_uid"], "U000030");
    h.stop().await;
}

/// A tail read through hyper, one Server-Sent Event at a time.
struct Sse {
    body: hyper::body::Incoming,
    pending: String,
    _sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Sse {
    async fn open(addr: SocketAddr, params: &str, token: &str) -> Sse {
        let mut sender = connect(addr).await;
        let req = request(Method::GET, &format!("/api/tail?{params}"), Some(token), None, None);
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(req)).await.unwrap().unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Sse { body: resp.into_body(), pending: String::new(), _sender: sender }
    }

    /// The next block (event or comment), as text without its blank line; None at the end.
    async fn next_block(&mut self) -> Option<String> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(i) = self.pending.find("\n\n") {
                let block = self.pending[..i].to_string();
                self.pending.drain(..i + 2);
                return Some(block);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame()).await.expect("an event in time");
            match frame {
                None => return None,
                Some(f) => {
                    if let Ok(data) = f.unwrap().into_data() {
                        self.pending.push_str(std::str::from_utf8(&data).unwrap());
                    }
                }
            }
        }
    }

    /// The data of the next event named `name`, skipping comments; panics on another event.
    async fn next_event(&mut self, name: &str) -> Value {
        loop {
            let block = self.next_block().await.expect("the stream ended");
            if block.starts_with(':') {
                continue;
            }
            let (event, data) = parse_event(&block);
            assert_eq!(event, name, "{block}");
            return data;
        }
    }
}

fn parse_event(block: &str) -> (String, Value) {
    let mut event = String::new();
    let mut data = String::new();
    for line in block.lines() {
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            data = d.to_string();
        }
    }
    (event, serde_json::from_str(&data).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_matching_events_in_order_and_keeps_the_line_alive() {
    let h = Harness::start(Options { keepalive: Duration::from_millis(300), ..Options::default() }).await;
    let base = now_ns();
    h.commit(&lines(&events(0..50, base))).await;
    let mut tail = Sse::open(h.addr, &format!("q={}", enc("level:error OR status:404")), VIEWER).await;
    // Only events committed from now on.
    let evs = events(50..350, base);
    for part in evs.chunks(30) {
        h.commit(&lines(part)).await;
    }
    let expected: Vec<u64> = evs.iter().filter(|e| e.level == "error" || e.status == 404).map(|e| e.n).collect();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let block = tail.next_block().await.expect("the stream ended");
        if block.starts_with(':') {
            continue;
        }
        let (event, row) = parse_event(&block);
        assert_eq!(event, "row", "{block}");
        assert!(row.get("trace").is_none() || row["trace"].is_string(), "nulls are left out: {row}");
        got.push(row["n"].as_u64().unwrap());
    }
    assert_eq!(got, expected);
    // Idle: a keepalive comment comes.
    let block = tail.next_block().await.expect("the stream ended");
    assert_eq!(block, ": keepalive", "unexpected while idle");
    assert_eq!(h.api.tails_open(), 1);

    // The client leaving ends its tail.
    drop(tail);
    let deadline = Instant::now() + DEADLINE;
    while h.api.tails_open() != 0 {
        assert!(Instant::now() < deadline, "the tail outlived its client");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Shutdown ends the tails still open, and the server returns.
    let mut tail = Sse::open(h.addr, "q=", VIEWER).await;
    h.shutdown.send_replace(true);
    while let Some(block) = tail.next_block().await {
        assert!(block.starts_with(':') || block.starts_with("event: row"), "{block}");
    }
    tokio::time::timeout(DEADLINE, h.server).await.expect("the server stops").unwrap();
}

/// Re-reading the tokens file (SIGHUP) ends the open tails whose token is gone or whose roles
/// changed; the others stream on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_ends_when_its_token_is_revoked_or_its_roles_change() {
    let h = Harness::start(Options { keepalive: Duration::from_secs(3600), ..Options::default() }).await;
    let mut viewer = Sse::open(h.addr, "q=", VIEWER).await;
    let mut pii = Sse::open(h.addr, "q=", PII).await;
    let mut admin = Sse::open(h.addr, "q=", ADMIN).await;
    let deadline = Instant::now() + DEADLINE;
    while h.api.tails_open() != 3 {
        assert!(Instant::now() < deadline, "the tails did not open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // vera's token removed, pia's pii role taken away, otto's unchanged.
    let tokens = h.tokens.as_ref().unwrap();
    let without_vera = TOKENS.replacen(
        "[[token]]\nname = \"vera\"\nsecret = \"viewer-secret-0123456789\"\nroles = [\"viewer\"]\n",
        "",
        1,
    );
    let changed = without_vera.replace("roles = [\"pii\"]", "roles = [\"viewer\"]");
    assert!(!changed.contains("vera") && !changed.contains("\"pii\"]"), "{changed}");
    std::fs::write(tokens.path(), changed).unwrap();
    assert_eq!(tokens.reload().unwrap(), 2);
    for (name, tail) in [("vera", &mut viewer), ("pia", &mut pii)] {
        let block = tail.next_block().await.expect("an error event before the end");
        let (event, data) = parse_event(&block);
        assert_eq!(event, "error", "{name}: {block}");
        assert!(data["error"].as_str().unwrap().contains("token was removed or its roles changed"), "{data}");
        assert_eq!(tail.next_block().await, None, "{name}'s tail ends");
    }
    // The unchanged token's tail still streams.
    let base = now_ns();
    h.commit(&lines(&events(0..3, base))).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(admin.next_event("row").await["n"].as_u64());
    }
    assert_eq!(got, vec![Some(0), Some(1), Some(2)]);
    let deadline = Instant::now() + DEADLINE;
    while h.api.tails_open() != 1 {
        assert!(Instant::now() < deadline, "the ended tails are still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_client_that_does_not_read_does_not_slow_commits_and_learns_what_it_missed() {
    let h = Harness::start(Options::default()).await;
    let mut raw = TcpStream::connect(h.addr).await.unwrap();
    let head = format!("GET /api/tail?q= HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {VIEWER}\r\n\r\n");
    raw.write_all(head.as_bytes()).await.unwrap();
    // Wait for the tail to exist before committing.
    let deadline = Instant::now() + DEADLINE;
    while h.api.tails_open() == 0 {
        assert!(Instant::now() < deadline, "the tail never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Far more than the socket, the tail's queue and its backlog can hold.
    let padding = "p".repeat(300);
    let started = Instant::now();
    let batches = 120;
    for b in 0..batches {
        let ls: Vec<String> =
            (0..500u64).map(|i| json!({"time_ns": now_ns(), "n": b * 500 + i, "pad": padding}).to_string()).collect();
        h.commit(&ls).await;
    }
    let commit_time = started.elapsed();
    assert!(commit_time < DEADLINE, "commits took {commit_time:?} with a tail client that does not read");
    h.flush().await;
    assert_eq!(h.store.stats().rows_in_segments, 60_000);
    // A tail learns of the events flushed past it when the next one arrives.
    h.commit(&[json!({"time_ns": now_ns(), "n": 1_000_000}).to_string()]).await;

    // Now read: the stream says how many events this client missed.
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let needle = b"event: dropped\ndata: {\"dropped\":";
    loop {
        let n = tokio::time::timeout_at(deadline, raw.read(&mut buf)).await.expect("a dropped event in time").unwrap();
        assert!(n > 0, "the stream ended without a dropped event");
        seen.extend_from_slice(&buf[..n]);
        if let Some(i) = seen.windows(needle.len()).position(|w| w == needle) {
            let rest = &seen[i + needle.len()..];
            if let Some(end) = rest.iter().position(|&c| c == b'}') {
                let dropped: u64 = std::str::from_utf8(&rest[..end]).unwrap().parse().unwrap();
                assert!(dropped > 0 && dropped <= 60_000, "{dropped}");
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{}", &text[..200.min(text.len())]);
    drop(raw);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_lists_each_source_with_its_state() {
    let h = Harness::start(Options::default()).await;
    let m = h.pull.source("web-1", "https://127.0.0.1:7701");
    m.backlog_chunks.store(3, std::sync::atomic::Ordering::Relaxed);
    h.pull.source("web-2", "https://127.0.0.1:7702");
    h.pull.source("src-a", "https://127.0.0.1:7703");
    let lines: Vec<String> = (0..5).map(|i| format!(r#"{{"i":{i}}}"#)).collect();
    h.commit(&lines).await;
    let r = h.get("/api/sources", Some(VIEWER), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let sources = v["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    // Name order; only src-a has stored events.
    assert_eq!(sources[0]["name"], "src-a");
    assert_eq!(sources[0]["events_total"], 5);
    let sources = &sources[1..];
    assert_eq!(sources[0]["name"], "web-1");
    assert_eq!(sources[0]["events_total"], 0);
    assert_eq!(sources[0]["url"], "https://127.0.0.1:7701");
    assert_eq!(sources[0]["state"], "connecting");
    assert_eq!(sources[0]["last_error"], Value::Null);
    assert_eq!(sources[0]["lag_seconds"], Value::Null);
    assert_eq!(sources[0]["backlog_chunks"], 3);
    assert_eq!(sources[0]["chunks_lost"], 0);
    assert_eq!(sources[1]["name"], "web-2");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_https_with_the_configured_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let g = sluice_tls::generate(certs.path(), &sluice_tls::CertSpec::default()).unwrap();
    let e = sluice_api::tls_server_config(&g.server_key, &g.server_key).unwrap_err().to_string();
    assert!(e.contains("no certificate found") && e.contains("is it the key file?"), "{e}");
    let e = sluice_api::tls_server_config(&g.server_cert, &g.server_cert).unwrap_err().to_string();
    assert!(e.contains("no private key found"), "{e}");
    let e = sluice_api::tls_server_config(&g.server_cert, Path::new("/nonexistent/api.key")).unwrap_err().to_string();
    assert!(e.contains("cannot read /nonexistent/api.key"), "{e}");
    let tls = sluice_api::tls_server_config(&g.server_cert, &g.server_key).unwrap();
    let h = Harness::start(Options { tls: Some(tls), ..Options::default() }).await;

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&g.ca).unwrap();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(sluice_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let body = Bytes::from(json!({"sql": "SELECT 41 + 1 AS answer"}).to_string());
    let resp = sender.send_request(request(Method::POST, "/api/sql", Some(VIEWER), None, Some(body))).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["rows"], json!([{"answer": 42}]));

    // Plain HTTP to the TLS port gets nothing.
    let plain = tokio::time::timeout(DEADLINE, async {
        let mut s = TcpStream::connect(h.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
    .unwrap();
    assert!(!String::from_utf8_lossy(&plain).contains("200 OK"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_requests_get_answers_not_panics() {
    let h = Harness::start(Options::default()).await;
    h.commit(&lines(&events(0..5, now_ns()))).await;
    let paths = [
        "/api/search?q=%ZZ",
        "/api/search?q=%C3",
        "/api/search?q=a&limit=-1",
        "/api/search?q=a&since=99999999999999999999999d",
        "/api/search?q=((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((a",
        "/api/search?q=%22unterminated",
        "/api/search?q=*",
        "/api/tail?q=a&x=1",
        "/api/sources?x",
        "//api//sql",
    ];
    for p in paths {
        let r = h.get(p, Some(VIEWER), None).await;
        assert!(r.status.is_client_error() || r.status == StatusCode::OK, "{p}: {}", r.status);
        if r.status != StatusCode::OK {
            assert!(r.json()["error"].is_string(), "{p}");
        }
    }
    let r = h.get("/api/search?q=", Some("Bearer"), None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for sql in [
        "",
        ";",
        "SELECT * FROM nope",
        "SELECT 1/0",
        "COPY events TO '/tmp/x'",
        "SET x = 1",
        "SELECT sluice_mask(pii_uid) FROM events",
    ] {
        let r = h.sql(sql, VIEWER, None).await;
        assert!(r.status.is_client_error(), "{sql}: {} {}", r.status, r.text());
        assert!(r.json()["error"].is_string(), "{sql}");
    }
    assert_eq!(h.get("/healthz", None, None).await.status, StatusCode::OK);
    h.stop().await;
}
