//! The store's web page in a real headless browser: Chromium driven by chromedriver through the
//! W3C WebDriver HTTP protocol (plain HTTP/JSON on loopback, the small client below), against
//! the real `sluice` binary: a store pulling from supervisors that run `sluice gen`. What the
//! page shows is compared with the API's own answers to the same questions.
//!
//! Without `chromium` and `chromedriver` on the PATH this test fails, saying how to install
//! them; it never passes without a browser.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::support::*;

const ADMIN: &str = "web-admin-token-0123456789abcdef";
const VIEWER: &str = "web-viewer-token-0123456789abcdef";
/// Events the generator writes, spread over the half hour before the test's time range ends.
const GENERATED: u64 = 3000;
/// Generous: a browser, a store and the supervisors share a loaded 2-core machine.
const BROWSER_DEADLINE: Duration = Duration::from_secs(120);
/// Chromium's flags: headless, and nothing that reaches for the network (this machine has none,
/// and Chromium would stall on it).
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
];
/// The WebDriver key code of Enter.
const KEY_ENTER: &str = "\u{E007}";

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// One HTTP/1.1 request to chromedriver on loopback: (status, JSON body).
fn http_json(port: u16, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    s.set_read_timeout(Some(BROWSER_DEADLINE)).unwrap();
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver may keep the connection open whatever the request says: read the head, then
    // exactly the body it announces.
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = s.read(&mut buf).expect("read chromedriver's answer");
        assert!(n > 0, "chromedriver closed the connection before its answer's head");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut payload = raw[split + 4..].to_vec();
    let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let length =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse::<usize>().unwrap());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let complete = match length {
            Some(n) => payload.len() >= n,
            None if chunked => payload.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if complete {
            break;
        }
        let n = s.read(&mut buf).expect("read chromedriver's answer");
        if n == 0 {
            break;
        }
        payload.extend_from_slice(&buf[..n]);
    }
    if chunked {
        payload = dechunk(&payload);
    }
    let value = if payload.is_empty() { Value::Null } else { serde_json::from_slice(&payload).expect("JSON") };
    (status, value)
}

/// A chunked HTTP body, joined.
fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[line_end + 2..line_end + 2 + size]);
        b = &b[line_end + 2 + size + 2..];
    }
}

/// A running chromedriver with one browser session.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver")) else {
            panic!(
                "the web page's test needs Chromium and its WebDriver: install them (Debian: apt-get install \
                 chromium chromium-driver; .ci/run does) so that chromium and chromedriver are on the PATH"
            );
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser { driver, port, session: String::new(), profile };
        let start = Instant::now();
        loop {
            let ready = TcpStream::connect(("127.0.0.1", port)).is_ok()
                && http_json(port, "GET", "/status", None).1["value"]["ready"] == json!(true);
            if ready {
                break;
            }
            assert!(start.elapsed() < BROWSER_DEADLINE, "chromedriver did not become ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", browser.profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args},
        }}});
        let (status, v) = http_json(port, "POST", "/session", Some(&caps));
        assert_eq!(status, 200, "chromedriver could not start Chromium: {v}");
        browser.session = v["value"]["sessionId"].as_str().expect("a session id").to_owned();
        browser
    }

    /// One WebDriver command of this session; its `value`.
    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let (status, v) = http_json(self.port, method, &full, if method == "GET" { None } else { Some(&body) });
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    fn js(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", json!({ "script": script, "args": args }))
    }

    fn element(&self, css: &str) -> String {
        let v = self.cmd("POST", "/element", json!({ "using": "css selector", "value": css }));
        // The W3C element reference is the single value of this object.
        v.as_object().and_then(|o| o.values().next()).and_then(Value::as_str).expect("an element reference").to_owned()
    }

    /// Clears the field `css` and types `text` into it, as a person would.
    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/clear"), json!({}));
        if !text.is_empty() {
            self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": text }));
        }
    }

    fn press_enter(&self, css: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/value"), json!({ "text": KEY_ENTER }));
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.cmd("POST", &format!("/element/{e}/click"), json!({}));
    }

    /// Polls `script` until it returns something other than null or false; that value.
    fn wait_js(&self, what: &str, script: &str, args: Value) -> Value {
        let start = Instant::now();
        loop {
            let v = self.js(script, args.clone());
            if !v.is_null() && v != json!(false) {
                return v;
            }
            assert!(start.elapsed() < BROWSER_DEADLINE, "timed out waiting for {what}; page: {}", self.page_state());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What the page says, for a failure message.
    fn page_state(&self) -> Value {
        self.js(
            "const t = (id) => document.getElementById(id)?.textContent;
             return {error: t('error-message'), summary: t('summary'), histogram: t('histogram-note'),
                     tail: t('tail-state'), sources: t('sources-error'), token: t('token-state')};",
            json!([]),
        )
    }

    /// Sets the search form, presses Enter in the query box, and waits until both the rows and
    /// the histogram are done (or one failed): "done" or "failed".
    fn search(&self, q: &str, since: &str, until: &str) -> String {
        self.js(
            "document.getElementById('results').dataset.state = 'stale';
             document.getElementById('histogram').dataset.state = 'stale';",
            json!([]),
        );
        self.type_into("#since", since);
        self.type_into("#until", until);
        self.type_into("#q", q);
        self.press_enter("#q");
        let v = self.wait_js(
            "the search to finish",
            "const r = document.getElementById('results').dataset.state;
             const h = document.getElementById('histogram').dataset.state;
             if (r === 'failed' || h === 'failed') return 'failed';
             return r === 'done' && h === 'done' ? 'done' : null;",
            json!([]),
        );
        v.as_str().unwrap().to_owned()
    }

    /// The sluice_id of every row of the results table, in order.
    fn result_ids(&self) -> Vec<String> {
        let v = self
            .js("return [...document.querySelectorAll('#results tbody tr')].map((tr) => tr.dataset.id);", json!([]));
        serde_json::from_value(v).unwrap()
    }

    /// The shown values of field `key` in the table `table`, row by row.
    fn field_values(&self, table: &str, key: &str) -> Vec<String> {
        let v = self.js(
            "return [...document.querySelectorAll(`#${arguments[0]} tbody .kv[data-key='${arguments[1]}'] .v`)]
                 .map((e) => e.textContent);",
            json!([table, key]),
        );
        serde_json::from_value(v).unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            // Ends Chromium; a driver already gone must not turn a failure into an abort.
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| http_json(self.port, "DELETE", &path, None)));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn curl_api(listen: &str, token: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "60", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
    cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.arg(format!("http://{listen}{path}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The API's search answer for what the page was asked.
fn api_search(listen: &str, token: &str, q: &str, since: &str, until: &str, limit: u32) -> Value {
    let path = format!("/api/search?q={}&since={}&until={}&limit={limit}", enc(q), enc(since), enc(until));
    let (code, v) = curl_api(listen, token, "GET", &path, None);
    assert_eq!(code, 200, "{path}: {v}");
    v
}

fn api_count(listen: &str, sql: &str) -> u64 {
    try_count(listen, sql).unwrap_or_else(|v| panic!("{sql}: {v}"))
}

/// A count from the API, or its error (a column no event has yet is one).
fn try_count(listen: &str, sql: &str) -> Result<u64, Value> {
    let body = json!({ "sql": sql }).to_string();
    match curl_api(listen, ADMIN, "POST", "/api/sql", Some(&body)) {
        (200, v) => Ok(v["rows"][0]["n"].as_u64().expect("a count")),
        (_, v) => Err(v),
    }
}

/// Seconds since the epoch as RFC 3339 in UTC (days-from-civil, inverted).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

#[test]
fn the_web_page_searches_draws_tails_and_shows_sources_in_a_real_browser() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).output().unwrap().status.success());
    let flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();

    // The range the page is asked about: the last hour but five minutes, in whole seconds. The
    // generator's events fall in it; the supervisors' own events (at the real time) do not, so
    // the counts in it are settled once the generator's events are stored.
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (since, until) = (rfc3339(now_s - 3600), rfc3339(now_s - 300));
    let (since_ns, until_ns) = ((now_s - 3600) * 1_000_000_000, (now_s - 300) * 1_000_000_000);
    let start_ns = (now_s - 40 * 60) * 1_000_000_000;
    let exe = env!("CARGO_BIN_EXE_sluice");
    // Mean step 0.6 s: 3000 events over about 30 minutes, ending about 10 minutes ago.
    let script =
        format!("{exe} gen --count {GENERATED} --seed 11 --start-ns {start_ns} --step-ns 600000000; exec sleep 3600");
    let web = Supervisor::start(&dir.path().join("web"), &tls_args, &["sh", "-c", &script]);
    let fifo = dir.path().join("probe.fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let probe = Supervisor::start(&dir.path().join("probe"), &tls_args, &["cat", fifo.to_str().unwrap()]);
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
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[api]\ntokens = \"{}\"\n\
             [[source]]\nname = \"web\"\nurl = \"https://{}\"\n[[source]]\nname = \"probe\"\nurl = \"https://{}\"\n",
            dir.path().join("store").display(),
            certs.join("store.pem").display(),
            certs.join("store.key").display(),
            certs.join("ca.pem").display(),
            tokens.display(),
            web.ready_field("chunks"),
            probe.ready_field("chunks"),
        ),
    )
    .unwrap();
    let store = StoreProc::start(&config);
    let l = store.listen.clone();
    let generated_sql = "SELECT count(*) AS n FROM events WHERE sluice_source = 'web' \
                         AND coalesce(sluice_origin, '') <> 'supervisor'";
    wait_until("every generated event is stored", || try_count(&l, generated_sql).is_ok_and(|n| n >= GENERATED));
    let in_range = format!("time_ns >= {since_ns} AND time_ns <= {until_ns}");
    assert_eq!(
        api_count(&l, &format!("SELECT count(*) AS n FROM events WHERE {in_range}")),
        GENERATED,
        "the generator's events, and only they, are in the range"
    );

    // The page's files need no token, carry the security headers, and are the only files served.
    let head = Command::new("curl").args(["-sS", "-i", "--max-time", "60", &format!("http://{l}/")]).output().unwrap();
    let head = String::from_utf8_lossy(&head.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'self'\r\n"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff\r\n"), "{head}");
    let status = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", &format!("http://{l}{path}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for path in ["/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
        assert_eq!(status(path), "200", "{path}");
    }
    for path in ["/ui/", "/ui/../Cargo.toml", "/ui/%2e%2e/Cargo.toml", "/index.html"] {
        assert_eq!(status(path), "404", "{path}");
    }

    let b = Browser::start();
    let browser_ready = started.elapsed();
    b.goto(&format!("http://{l}/"));
    b.wait_js("the page's script", "return document.body.dataset.ready === 'true';", json!([]));

    // The token, typed and confirmed with Enter, is kept for this tab only.
    b.type_into("#token", ADMIN);
    b.press_enter("#token");
    assert_eq!(b.js("return sessionStorage.getItem('sluice.token');", json!([])), json!(ADMIN));

    // The sources panel lists both sources as ok, with the generator's events counted.
    b.wait_js(
        "both sources shown as ok",
        "const rows = [...document.querySelectorAll('#sources tbody tr[data-source]')];
         const ok = (n) => rows.some((r) => r.dataset.source === n && r.dataset.state === 'ok'
             && r.querySelector('[data-col=state]').textContent === 'ok');
         return ok('web') && ok('probe');",
        json!([]),
    );
    let shown_events =
        b.js("return document.querySelector('#sources tr[data-source=web] [data-col=events]').textContent;", json!([]));
    assert!(shown_events.as_str().unwrap().parse::<u64>().unwrap() >= GENERATED, "{shown_events}");

    // The rows shown are the API's; the histogram's bars add up to the API's count for the whole
    // range (not just the rows shown), whether the page counts with SQL (no bare word) or with
    // the search itself (a bare word: only the store knows how words match).
    let queries = [
        ("", "sql"),
        ("level:WARN", "sql"),
        ("(level:WARN OR status:>=400) -http_verb:GET", "sql"),
        ("pii_uid:* -no_such_field:1", "sql"),
        ("cache", "search"),
    ];
    for (q, how) in queries {
        assert_eq!(b.search(q, &since, &until), "done", "{q}: {}", b.page_state());
        let api = api_search(&l, ADMIN, q, &since, &until, 100);
        let want: Vec<String> =
            api["rows"].as_array().unwrap().iter().map(|r| r["sluice_id"].as_str().unwrap().to_owned()).collect();
        assert!(!want.is_empty(), "{q}");
        assert_eq!(b.result_ids(), want, "{q}: the rows shown are the API's, in its order");
        let all = api_search(&l, ADMIN, q, &since, &until, 10000);
        assert_eq!(all["truncated"], json!(false), "{q}: every match fits in one answer");
        let count = all["rows"].as_array().unwrap().len() as u64;
        let bars = b.js(
            "return [...document.querySelectorAll('#histogram rect.bar')].map((r) => Number(r.dataset.count));",
            json!([]),
        );
        let bars: Vec<u64> = serde_json::from_value(bars).unwrap();
        assert!(bars.len() > 1, "{q}: the histogram has bars ({bars:?})");
        assert_eq!(bars.iter().sum::<u64>(), count, "{q}: the bars add up to the API's count for the range");
        let histogram = b.js(
            "const h = document.getElementById('histogram').dataset; return {total: h.total, how: h.how};",
            json!([]),
        );
        assert_eq!(histogram, json!({"total": count.to_string(), "how": how}), "{q}");
        if q.is_empty() {
            assert_eq!(count, GENERATED, "the generator's events, and only they, are in the range");
            // A click on a row shows the whole event, its 64-bit integers exact.
            b.click("#results tbody tr");
            let shown = b.wait_js(
                "the event's details",
                "const d = document.getElementById('detail'); return d.open && document.getElementById('detail-json').textContent;",
                json!([]),
            );
            let shown: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
            assert_eq!(shown, api["rows"][0], "the full event as the API gave it");
            b.click("#detail-close");
            b.wait_js("the details to close", "return !document.getElementById('detail').open;", json!([]));
        }
    }

    // A bad query: the API's message, and a caret under the column it names.
    let bad = "level:warn status:";
    let (code, v) = curl_api(&l, ADMIN, "GET", &format!("/api/search?q={}", enc(bad)), None);
    assert_eq!(code, 400, "{v}");
    let position = v["position"].as_u64().expect("a position") as usize;
    assert_eq!(b.search(bad, &since, &until), "failed");
    let shown = b.js(
        "return {hidden: document.getElementById('error').hidden,
                 message: document.getElementById('error-message').textContent,
                 caret: document.getElementById('error-caret').textContent};",
        json!([]),
    );
    assert_eq!(shown["hidden"], json!(false), "{shown}");
    assert_eq!(shown["message"].as_str().unwrap(), format!("400: {}", v["error"].as_str().unwrap()), "{shown}");
    assert_eq!(shown["caret"].as_str().unwrap(), format!("{bad}\n{}^", " ".repeat(position)), "{shown}");
    assert!(b.result_ids().is_empty(), "no rows of the earlier search under the error");

    // A viewer-only token sees pii_* values masked, exactly as the API gives them.
    b.type_into("#token", VIEWER);
    b.click("#token-use");
    assert_eq!(b.js("return sessionStorage.getItem('sluice.token');", json!([])), json!(VIEWER));
    assert_eq!(b.search("pii_uid:*", &since, &until), "done", "{}", b.page_state());
    let masked = b.field_values("results", "pii_uid");
    let api_masked: Vec<String> = api_search(&l, VIEWER, "pii_uid:*", &since, &until, 100)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pii_uid"].as_str().unwrap().to_owned())
        .collect();
    assert!(!masked.is_empty());
    assert_eq!(masked, api_masked, "masked values appear as the API returns them");
    assert!(masked.iter().all(|v| v.starts_with("pii:")), "{masked:?}");
    let clear: Vec<String> = api_search(&l, ADMIN, "pii_uid:*", &since, &until, 100)["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["pii_uid"].as_str().unwrap().to_owned())
        .collect();
    assert!(clear.iter().all(|c| !c.starts_with("pii:")), "the full token sees clear values");
    assert!(masked.iter().all(|m| !clear.contains(m)), "no clear value on the viewer's page");

    // Live tail: started first, then a probe event written; it appears, masked for the viewer.
    b.type_into("#q", "probe_id:*");
    b.click("#tail-toggle");
    b.wait_js(
        "the tail to connect",
        "return document.getElementById('tail-state').dataset.state === 'live';",
        json!([]),
    );
    let mut fifo_w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    // The tail starts "now" at the store: warm-up probes until one comes through.
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let mut k = 0;
    loop {
        writeln!(fifo_w, r#"{{"time_ns":{},"probe_id":"warm{k}","pii_uid":"U000001"}}"#, k + 1).unwrap();
        k += 1;
        let start = Instant::now();
        let mut seen = false;
        while !seen && start.elapsed() < Duration::from_secs(2) {
            seen = !b.field_values("tail", "probe_id").is_empty();
            std::thread::sleep(Duration::from_millis(100));
        }
        if seen {
            break;
        }
        assert!(Instant::now() < deadline, "the tail showed nothing; page: {}", b.page_state());
    }
    writeln!(fifo_w, r#"{{"time_ns":5000,"probe_id":"final","pii_uid":"U000001"}}"#).unwrap();
    b.wait_js(
        "the probe in the tail",
        "const ids = [...document.querySelectorAll('#tail tbody .kv[data-key=probe_id] .v')].map((e) => e.textContent);
         return ids[0] === 'final';",
        json!([]),
    );
    let tail_uids = b.field_values("tail", "pii_uid");
    assert!(!tail_uids.is_empty() && tail_uids.iter().all(|v| v.starts_with("pii:")), "{tail_uids:?}");
    assert!(
        b.js("return document.getElementById('tail-dropped').hidden;", json!([])) == json!(true),
        "nothing dropped"
    );
    b.click("#tail-toggle");
    b.wait_js(
        "the tail to stop",
        "return document.getElementById('tail-state').dataset.state === 'stopped';",
        json!([]),
    );

    // A link with the token in its fragment: the page takes it and drops it from the address.
    b.goto(&format!("http://{l}/#token={ADMIN}"));
    b.wait_js(
        "the token from the link",
        "return sessionStorage.getItem('sluice.token') === arguments[0] && location.hash === '';",
        json!([ADMIN]),
    );

    eprintln!(
        "web page test: browser ready after {:.1} s, whole test {:.1} s",
        browser_ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(b);
    drop((store, web, probe));
}
