//! `sluice query`, `search` and `tail` against a fake store: a small hyper server in the test
//! that records each request and answers with canned query-API responses (rows, errors, an SSE
//! stream fed by the test), over plain HTTP or TLS.

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use hyper_util::rt::TokioIo;

use crate::support::{sluice, DEADLINE};

const TOKEN: &str = "s3cr3t-token-0001";
const NDJSON_ROWS: &str = "{\"level\":\"info\",\"n\":3,\"msg\":\"GET /a\"}\n\
{\"level\":\"warn, \\\"x\\\"\",\"n\":12345,\"msg\":\"line1\\nline2\"}\n";
const STATS: &str = r#"{"rows_scanned":1200,"bytes_scanned":45600,"segments_read":2,"segments_skipped":10,"buffer_rows":5,"elapsed_ms":12.34}"#;

/// One request as the fake store saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: String,
}

/// A body the test feeds frame by frame through a channel; it ends when the sender is dropped.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;
type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

fn reply(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(body.into()).boxed()).unwrap()
}

/// A reply whose body arrives in these pieces, each its own frame.
fn reply_in_pieces(status: u16, headers: &[(&str, &str)], pieces: &[&str]) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for p in pieces {
        tx.send(Bytes::copy_from_slice(p.as_bytes())).unwrap();
    }
    drop(tx);
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(ChannelBody(rx).boxed()).unwrap()
}

/// A fake store on a loopback port; it lives until the test process ends.
struct FakeStore {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl FakeStore {
    fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeStore {
        Self::start_with_tls(None, handler)
    }

    fn start_with_tls(
        tls: Option<tokio_rustls::TlsAcceptor>,
        handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static,
    ) -> FakeStore {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let (handler, seen, tls) = (handler.clone(), seen2.clone(), tls.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            let (handler, seen) = (handler.clone(), seen.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let s = Seen {
                                    method: parts.method.to_string(),
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body: String::from_utf8_lossy(&body).into_owned(),
                                };
                                seen.lock().unwrap().push(s.clone());
                                Ok::<_, Infallible>(handler(&s))
                            }
                        });
                        let http = hyper::server::conn::http1::Builder::new();
                        match tls {
                            None => {
                                let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                            }
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(tcp).await {
                                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                                }
                            }
                        }
                    });
                }
            });
        });
        FakeStore { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// `sluice ARGS` with no SLUICE_* settings inherited from the environment running the tests.
fn cli(args: &[&str]) -> Command {
    let mut cmd = sluice();
    for var in ["SLUICE_URL", "SLUICE_TOKEN", "SLUICE_TOKEN_FILE", "SLUICE_CA"] {
        cmd.env_remove(var);
    }
    cmd.args(args);
    cmd
}

/// Runs `cmd` to its end within the deadline (killing it otherwise).
fn run(mut cmd: Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    let status = wait_exit(&mut child);
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("sluice did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn rows_store() -> FakeStore {
    FakeStore::start(|seen| {
        if seen.uri.starts_with("/api/sql") || seen.uri.starts_with("/api/search") {
            // The rows come split mid-line, to check that lines are put back together.
            let (a, b) = NDJSON_ROWS.split_at(20);
            let (b, c) = b.split_at(30);
            reply_in_pieces(200, &[("content-type", "application/x-ndjson"), ("sluice-stats", STATS)], &[a, b, c])
        } else {
            reply(404, &[], "{\"error\":\"no such endpoint\"}")
        }
    })
}

#[test]
fn query_prints_every_format_and_sends_the_token() {
    let store = rows_store();
    let url = store.url();
    let sql = "SELECT level, n, msg FROM events";
    let query = |format: &str| run(cli(&["query", "--url", &url, "--token", TOKEN, "-o", format, sql]));

    let out = query("ndjson");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), NDJSON_ROWS, "ndjson is passed through as received");
    assert_eq!(text(&out.stderr), "", "no summary when stderr is not a terminal");

    let out = query("json");
    let lines: Vec<&str> = NDJSON_ROWS.lines().collect();
    assert_eq!(text(&out.stdout), format!("[\n{},\n{}\n]\n", lines[0], lines[1]));
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed[1]["n"], 12345);

    let out = query("csv");
    assert_eq!(text(&out.stdout), "level,n,msg\ninfo,3,GET /a\n\"warn, \"\"x\"\"\",12345,\"line1\nline2\"\n");

    let out = query("table");
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "\
level          n  msg
---------  -----  ------------
info           3  GET /a
warn, \"x\"  12345  line1\\nline2
"
    );
    assert_eq!(text(&out.stderr), "2 rows · scanned 1200 rows, 45.6 kB · segments read 2, skipped 10 · 12.3 ms\n");

    let out = run(cli(&["query", "--url", &url, "--token", TOKEN, sql]));
    assert_eq!(text(&out.stdout), NDJSON_ROWS, "ndjson when stdout is not a terminal");

    let seen = store.seen();
    assert_eq!(seen.len(), 5);
    for s in &seen {
        assert_eq!((s.method.as_str(), s.uri.as_str()), ("POST", "/api/sql"));
        assert_eq!(s.headers["authorization"], format!("Bearer {TOKEN}"));
        assert_eq!(s.headers["accept"], "application/x-ndjson");
        assert_eq!(s.headers["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body, serde_json::json!({ "sql": sql }));
    }
}

#[test]
fn search_encodes_its_parameters_and_reads_url_and_token_from_the_environment() {
    let store = FakeStore::start(|_| {
        reply(
            200,
            &[("content-type", "application/x-ndjson"), ("sluice-truncated", "true"), ("sluice-stats", STATS)],
            "{\"a\":1}\n{\"a\":2}",
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut cmd =
        cli(&["search", "level:error \"a b\"", "--since", "1h", "--until", "now", "--limit", "5", "-o", "table"]);
    cmd.env("SLUICE_URL", store.url()).env("SLUICE_TOKEN", "not-this-one").env("SLUICE_TOKEN_FILE", &token_file);
    let out = run(cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "a\n-\n1\n2\n", "the last row has no line end and still counts");
    let err = text(&out.stderr);
    assert!(err.starts_with("2 rows · scanned 1200 rows"), "{err}");
    assert!(err.contains("sluice: warning: the store cut the result at 2 rows"), "{err}");
    let seen = store.seen();
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].uri, "/api/search?q=level%3Aerror%20%22a%20b%22&since=1h&until=now&limit=5");
    assert_eq!(seen[0].headers["authorization"], format!("Bearer {TOKEN}"), "the token file wins");

    let out = run(cli(&["search", "x", "--limit", "10001", "--url", &store.url()]));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert_eq!(store.seen().len(), 1, "nothing sent");
    for (flag, value) in [("--since", "yesterday"), ("--until", "1.5h")] {
        let out = run(cli(&["search", "x", flag, value, "--url", &store.url()]));
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: a usage error");
        let err = text(&out.stderr);
        assert!(err.contains(&format!("{flag} \"{value}\":")) && err.contains("such as 90s, 15m"), "{err}");
    }
    assert_eq!(store.seen().len(), 1, "nothing sent");
}

#[test]
fn a_bad_query_shows_a_caret_under_its_column() {
    let store = FakeStore::start(|_| {
        reply(
            400,
            &[("content-type", "application/json")],
            r#"{"error":"expected a value after \"status:\", found end of input","position":18}"#,
        )
    });
    let out = run(cli(&["search", "level:warn status:", "--url", &store.url(), "--token", TOKEN]));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "sluice: error: expected a value after \"status:\", found end of input\n  level:warn status:\n                    ^\n"
    );
    assert_eq!(text(&out.stdout), "");
}

#[test]
fn auth_failures_are_explained() {
    let store = FakeStore::start(|seen| match seen.headers.get("authorization") {
        None => reply(401, &[], r#"{"error":"missing bearer token"}"#),
        Some(v) if v == "Bearer viewer-token-000001" => reply(403, &[], r#"{"error":"the admin role is needed"}"#),
        Some(_) => reply(401, &[], r#"{"error":"unknown token"}"#),
    });
    let url = store.url();
    let out = run(cli(&["query", "SELECT 1", "--url", &url]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("the store at {url} needs a token (401: missing bearer token)")), "{err}");
    assert!(err.contains("pass --token or --token-file, or set SLUICE_TOKEN"), "{err}");

    let out = run(cli(&["query", "SELECT 1", "--url", &url, "--token", "wrong-token-0000001"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did not accept the token (401: unknown token)"), "{}", text(&out.stderr));

    let out = run(cli(&["tail", "--url", &url, "--token", "viewer-token-000001"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("role does not allow this (403: the admin role is needed)"));
}

#[test]
fn no_store_at_the_url_names_it_and_the_setting() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    for sub in [&["query", "SELECT 1"][..], &["search", "x"], &["tail"]] {
        let mut args = sub.to_vec();
        args.extend(["--url", &url]);
        let out = run(cli(&args));
        assert_eq!(out.status.code(), Some(2), "{sub:?}");
        let err = text(&out.stderr);
        assert!(err.starts_with(&format!("sluice: error: cannot connect to {url}: ")), "{err}");
        assert!(err.contains("check --url or SLUICE_URL"), "{err}");
    }
    let out = run(cli(&["query", "SELECT 1", "--url", "127.0.0.1:7800"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("write it like http://127.0.0.1:7800"));
}

#[test]
fn ctrl_c_stops_a_streaming_query_with_130() {
    let open_bodies = Mutex::new(Vec::new());
    let store = FakeStore::start(move |_| {
        // Rows that never end: the body's sender is kept, so the query stays open.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Bytes::from_static(b"{\"a\":1}\n")).unwrap();
        open_bodies.lock().unwrap().push(tx);
        Response::builder()
            .status(200)
            .header("content-type", "application/x-ndjson")
            .body(ChannelBody(rx).boxed())
            .unwrap()
    });
    let mut child = cli(&["query", "SELECT * FROM events", "--url", &store.url(), "-o", "ndjson"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    assert_eq!(stdout.recv_timeout(DEADLINE).unwrap(), "{\"a\":1}", "rows stream before the answer ends");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut child).code(), Some(130));
}

/// Reads a child's stdout or stderr lines into a channel as they come.
fn lines_of(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line containing `needle`, within the deadline; the lines skipped on the way are kept.
fn expect_line(rx: &mpsc::Receiver<String>, needle: &str, skipped: &mut Vec<String>) -> String {
    let start = Instant::now();
    loop {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(line) => skipped.push(line),
            Err(e) => panic!("no line with {needle:?} ({e}); got {skipped:?}"),
        }
    }
}

#[test]
fn tail_prints_rows_and_drop_notices_reconnects_and_stops_on_ctrl_c() {
    let (streams_tx, streams_rx) = mpsc::channel::<tokio::sync::mpsc::UnboundedSender<Bytes>>();
    let streams_tx = Mutex::new(streams_tx);
    let store = FakeStore::start(move |_| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        streams_tx.lock().unwrap().send(tx).unwrap();
        let mut r = Response::builder().status(200).header("content-type", "text/event-stream");
        r = r.header("cache-control", "no-cache");
        r.body(ChannelBody(rx).boxed()).unwrap()
    });
    let mut child = cli(&["tail", "level:error", "--url", &store.url(), "--token", TOKEN, "-o", "table"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let mut skipped = Vec::new();

    let first = streams_rx.recv_timeout(DEADLINE).unwrap();
    let send = |tx: &tokio::sync::mpsc::UnboundedSender<Bytes>, s: &str| {
        tx.send(Bytes::copy_from_slice(s.as_bytes())).unwrap()
    };
    send(&first, ": keepalive\n\nevent: row\ndata: {\"time_ns\":1714564800123456789,");
    send(&first, "\"sluice_source\":\"web-1\",\"level\":\"error\",\"msg\":\"disk full\"}\n");
    send(&first, "\nevent: dropped\ndata: {\"dropped\": 42}\n\n");
    let row = expect_line(&stdout, "web-1", &mut skipped);
    assert_eq!(row, "2024-05-01T12:00:00.123Z  web-1  level=error msg=\"disk full\"");
    expect_line(&stderr, "dropped 42 events (client too slow)", &mut skipped);

    // The store goes away mid-stream: tail says so, reconnects and goes on.
    drop(first);
    let lost = expect_line(&stderr, "reconnecting in", &mut skipped);
    assert!(lost.contains("the store closed the stream"), "{lost}");
    let second = streams_rx.recv_timeout(DEADLINE).unwrap();
    expect_line(&stderr, "sluice: tail: reconnected", &mut skipped);
    send(&second, "event: row\r\ndata: {\"time_ns\":0,\"sluice_source\":\"web-2\",\"n\":1}\r\n\r\n");
    assert_eq!(expect_line(&stdout, "web-2", &mut skipped), "1970-01-01T00:00:00.000Z  web-2  n=1");

    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut child).code(), Some(0), "Ctrl-C is a clean end");
    let seen = store.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.uri, "/api/tail?q=level%3Aerror");
        assert_eq!(s.headers["accept"], "text/event-stream");
        assert_eq!(s.headers["authorization"], format!("Bearer {TOKEN}"));
    }
    drop(second);
}

#[test]
fn tail_ndjson_passes_rows_through_and_refuses_csv() {
    let store = FakeStore::start(|_| {
        reply_in_pieces(
            200,
            &[("content-type", "text/event-stream")],
            &["event: row\ndata: {\"b\":1,\"a\":\"x\"}\n\nevent: ro", "w\ndata: {\"c\":null}\n\n"],
        )
    });
    let mut child = cli(&["tail", "--url", &store.url()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut skipped = Vec::new();
    expect_line(&stdout, "{\"c\":null}", &mut skipped);
    assert_eq!(skipped, vec!["{\"b\":1,\"a\":\"x\"}".to_string()], "ndjson by default when piped, in order");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert_eq!(wait_exit(&mut child).code(), Some(0));

    let out = run(cli(&["tail", "-o", "csv", "--url", &store.url()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--output csv is not offered for tail"));
}

#[test]
fn https_with_the_ca_from_sluice_certs() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(cli(&["certs", "--dir"]).arg(&certs).output().unwrap().status.success());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(certs.join("server.pem")).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(certs.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(sluice_tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let store = FakeStore::start_with_tls(Some(acceptor), |_| {
        reply(200, &[("content-type", "application/x-ndjson; charset=utf-8")], "{\"ok\":true}\n")
    });
    let url = format!("https://localhost:{}", store.addr.port());
    let ca = certs.join("ca.pem");

    let out = run(cli(&["query", "SELECT true AS ok", "--url", &url, "--token", TOKEN, "--ca", ca.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "{\"ok\":true}\n");
    assert_eq!(store.seen()[0].headers["authorization"], format!("Bearer {TOKEN}"));

    // Without the CA the store's certificate is not trusted, and the message says what to give.
    let out = run(cli(&["query", "SELECT 1", "--url", &url]));
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("--ca"), "{err}");
    assert_eq!(store.seen().len(), 1, "no request was sent over an untrusted connection");
}
