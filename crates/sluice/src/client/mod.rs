//! `sluice query`, `sluice search` and `sluice tail`: the command-line client of a store's query
//! API (`/api/sql`, `/api/search`, `/api/tail`). It resolves the URL, token and trust, sends one
//! request (a tail reconnects), streams rows to stdout in the chosen format and says on stderr
//! what happened. It has no query logic: parsing, planning and masking are the store's.
//!
//! Exit status: 0 when the rows were printed (or the tail was stopped with Ctrl-C), 1 when the
//! store refused or failed the query, 2 for usage, configuration, token and connection problems.
//! Ctrl-C ends a tail with 0 and a query or search with 130. A closed stdout (`| head`) ends
//! the run with 0: the reader has what it wanted.

mod errors;
mod http;
mod output;
mod progress;
mod sse;

use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::time::{timeout, timeout_at, Instant};

use self::errors::{ApiError, ERROR_BODY_BYTES_MAX};
use self::http::{query_string, Client, HttpError, Response};
use self::output::{Format, Row, RowWriter, Stats};
use self::progress::Progress;
use self::sse::SseParser;

use crate::units::parse_duration;

/// Response header with the query's statistics (JSON), and its twin for a cut result.
const STATS_HEADER: &str = "sluice-stats";
const TRUNCATED_HEADER: &str = "sluice-truncated";
const NDJSON: &str = "application/x-ndjson";
const EVENT_STREAM: &str = "text/event-stream";
/// Longest row line accepted from the store; a row beyond this is a broken server, not data.
const ROW_BYTES_MAX: usize = 16 * 1024 * 1024;
/// A tail connection silent for this long (the store sends a keepalive every 15 s) is dead.
const TAIL_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// First pause before reconnecting a tail; it doubles on each failed attempt up to the maximum.
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(500);
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(30);
/// Longest token file read; a token is a line.
const TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

const ENVIRONMENT_HELP: &str = "\
Environment:
  SLUICE_URL, SLUICE_TOKEN (or SLUICE_TOKEN_FILE) and SLUICE_CA stand for --url, --token,
  --token-file and --ca; `sluice demo` prints export lines for them.";

const ROWS_HELP: &str = "\
Output (--output): a table when stdout is a terminal, NDJSON otherwise; json is one array of row
objects, csv a header line and RFC 4180 rows. After the rows a summary of the scan goes to stderr
(always for a table, otherwise only when stderr is a terminal), with a warning if the store cut
the result at its row limit. A spinner shows on stderr when a query runs longer than 0.3 s.

Exit status: 0 rows printed, 1 the store refused or failed the query, 2 usage, token or
connection problem, 130 stopped with Ctrl-C.";

const TAIL_HELP: &str = "\
Exit status: 0 after Ctrl-C, 1 the store refused the search, 2 usage, token or connection
problem (only the first connection; later ones are retried).";

/// Where the store is and how to prove who we are.
#[derive(clap::Args)]
#[command(next_help_heading = "Connection")]
struct Connection {
    /// The store's query API: http://HOST:PORT on loopback, https://HOST:PORT elsewhere.
    #[arg(long, env = "SLUICE_URL", value_name = "URL", default_value = "http://127.0.0.1:7800")]
    url: String,
    /// API token, sent as `Authorization: Bearer TOKEN`.
    #[arg(long, env = "SLUICE_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from the first line of FILE (wins over --token and SLUICE_TOKEN).
    #[arg(long, env = "SLUICE_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust the CA certificates in this PEM file for an https URL (default: the system's CAs).
    #[arg(long, env = "SLUICE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Give up when the answer takes longer than this (e.g. 30s, 2m); for tail, when connecting
    /// does.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    timeout: Duration,
}

/// Run SQL over all events (the table `events`) on a store and print the rows.
///
/// The store reads its Parquet segments and the events not yet flushed together, so an event is
/// queryable about a second after it was written. Rows are printed as they arrive.
#[derive(clap::Args)]
#[command(after_help = format!("Examples:
  sluice query \"SELECT level, count(*) AS n FROM events GROUP BY level ORDER BY n DESC\"
  sluice query -o csv \"SELECT time_ns, url, duration_ms FROM events LIMIT 100\" > slow.csv
  echo \"SELECT count(*) FROM events\" | sluice query -

{ENVIRONMENT_HELP}

{ROWS_HELP}"))]
pub struct QueryArgs {
    /// The SQL statement, or - to read it from stdin.
    #[arg(value_name = "SQL")]
    sql: String,
    /// Output format (default: table when stdout is a terminal, ndjson otherwise).
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    output: Option<Format>,
    #[command(flatten)]
    connection: Connection,
}

/// Find events with the quick search syntax, newest first.
///
/// `field:value`, `field:"a phrase"`, `field:>N` (also <, >=, <=), `-field:value`, `field:*`,
/// bare words and "quoted phrases" anywhere in the event; terms are ANDed, `OR` and parentheses
/// group. An empty query matches every event in the time range.
#[derive(clap::Args)]
#[command(after_help = format!("Examples:
  sluice search 'level:error' --since 1h
  sluice search 'status:>=500 -url:/healthz' --since 2h --until 1h
  sluice search '\"connection reset\" OR timeout' --since 2024-05-01T10:00:00Z --limit 1000 -o json

{ENVIRONMENT_HELP}

{ROWS_HELP}"))]
pub struct SearchArgs {
    /// The search, e.g. 'level:error status:>=500'.
    #[arg(value_name = "QUERY", default_value = "", hide_default_value = true)]
    query: String,
    /// Start of the time range: relative (15m, 1h, 2d) or RFC 3339 (the store's default: 15m).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// End of the time range: relative, RFC 3339 or now (the default).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Most events to return, newest first (the store's default: 100).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: Option<u32>,
    /// Output format (default: table when stdout is a terminal, ndjson otherwise).
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    output: Option<Format>,
    #[command(flatten)]
    connection: Connection,
}

/// Follow events matching a search live, starting now, until Ctrl-C.
///
/// Events are printed as the store ingests them (one line each: time, source, key=value...; or
/// one JSON object per line with -o json or ndjson; csv is not offered, as events differ in their
/// fields). A client too slow to keep up loses events, and is told how many. When the connection
/// drops, tail reconnects with a growing pause (up to 30 s) and says so; events in between are
/// not shown.
#[derive(clap::Args)]
#[command(after_help = format!("Examples:
  sluice tail 'level:error'
  sluice tail 'rpc_method:GetUser duration_ms:>500' -o ndjson | jq .duration_ms

{ENVIRONMENT_HELP}

{TAIL_HELP}"))]
pub struct TailArgs {
    /// The search events must match (empty: every event).
    #[arg(value_name = "QUERY", default_value = "", hide_default_value = true)]
    query: String,
    /// Output format (default: table when stdout is a terminal, ndjson otherwise).
    #[arg(long, short = 'o', value_enum, value_name = "FORMAT")]
    output: Option<Format>,
    #[command(flatten)]
    connection: Connection,
}

pub fn query(args: QueryArgs) -> anyhow::Result<ExitCode> {
    let sql = if args.sql == "-" {
        let mut sql = String::new();
        io::stdin().read_to_string(&mut sql).context("cannot read the SQL from stdin")?;
        sql
    } else {
        args.sql
    };
    anyhow::ensure!(
        !sql.trim().is_empty(),
        "the SQL is empty; give a statement such as \"SELECT count(*) FROM events\""
    );
    let setup = Setup::new(&args.connection, args.output)?;
    let body = serde_json::json!({ "sql": sql }).to_string();
    let request = RowsRequest {
        method: ::http::Method::POST,
        path: "/api/sql".to_string(),
        body: Some(Bytes::from(body)),
        query_text: sql,
    };
    runtime()?.block_on(interruptible(fetch_rows(&setup, request)))
}

pub fn search(args: SearchArgs) -> anyhow::Result<ExitCode> {
    // A time the store would refuse is a usage error (exit 2), told before any connection.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    for (flag, value) in [("--since", &args.since), ("--until", &args.until)] {
        if let Some(v) = value {
            sluice_query::parse_time(v, now).map_err(|e| anyhow::anyhow!("{flag} {v:?}: {e}"))?;
        }
    }
    let setup = Setup::new(&args.connection, args.output)?;
    let limit = args.limit.map(|n| n.to_string());
    let mut pairs = vec![("q", args.query.as_str())];
    if let Some(s) = &args.since {
        pairs.push(("since", s));
    }
    if let Some(u) = &args.until {
        pairs.push(("until", u));
    }
    if let Some(l) = &limit {
        pairs.push(("limit", l));
    }
    let request = RowsRequest {
        method: ::http::Method::GET,
        path: format!("/api/search?{}", query_string(&pairs)),
        body: None,
        query_text: args.query,
    };
    runtime()?.block_on(interruptible(fetch_rows(&setup, request)))
}

pub fn tail(args: TailArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.output != Some(Format::Csv),
        "--output csv is not offered for tail: live events differ in their fields; use table, json or ndjson"
    );
    let setup = Setup::new(&args.connection, args.output)?;
    let path = format!("/api/tail?{}", query_string(&[("q", &args.query)]));
    runtime()?.block_on(follow(&setup, &path, &args.query))
}

/// Exit status after Ctrl-C stopped a query: 128 + SIGINT, as a shell reports it.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs `work` until Ctrl-C; then drops it, which erases the spinner and closes the connection
/// (the store cancels a query whose client went away), and exits with 130.
async fn interruptible(work: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> anyhow::Result<ExitCode> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::from(EXIT_INTERRUPTED)),
    }
}

/// A current-thread runtime: one request at a time, and the spinner never runs during a write.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// What every subcommand resolved from its flags.
struct Setup {
    client: Client,
    format: Format,
    token_given: bool,
    timeout: Duration,
}

impl Setup {
    fn new(c: &Connection, output: Option<Format>) -> anyhow::Result<Setup> {
        let token = match &c.token_file {
            Some(path) => Some(read_token_file(path)?),
            None => c.token.clone().filter(|t| !t.is_empty()),
        };
        let client = Client::new(&c.url, token.as_deref(), c.ca.as_deref())?;
        let format = output.unwrap_or(if io::stdout().is_terminal() { Format::Table } else { Format::Ndjson });
        Ok(Setup { client, format, token_given: token.is_some(), timeout: c.timeout })
    }

    fn url(&self) -> &str {
        self.client.url()
    }
}

fn read_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(TOKEN_FILE_BYTES_MAX).read_to_string(&mut text))
        .with_context(|| format!("cannot read the token file {}; check --token-file", path.display()))?;
    let token = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    anyhow::ensure!(!token.is_empty(), "the token file {} is empty; put the token on its first line", path.display());
    Ok(token.to_string())
}

/// A request answered with rows: `/api/sql` or `/api/search`.
struct RowsRequest {
    method: ::http::Method,
    path: String,
    body: Option<Bytes>,
    /// The SQL or search as typed, to point at a syntax error.
    query_text: String,
}

/// Sends the request, streams the NDJSON answer to stdout in the chosen format, then prints the
/// summary and a warning if the store cut the result.
async fn fetch_rows(setup: &Setup, request: RowsRequest) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let deadline = started + setup.timeout;
    let stderr_tty = io::stderr().is_terminal();
    let stdout_tty = io::stdout().is_terminal();
    let mut progress = Progress::start(stderr_tty);
    let body = request.body.map(|b| ("application/json", b));
    let mut response = setup
        .client
        .request(request.method, &request.path, NDJSON, body, deadline)
        .await
        .map_err(|e| connection_error(e, setup))?;
    if !response.status.is_success() {
        let error = read_api_error(&mut response, deadline).await;
        progress.stop();
        eprintln!("{}", error.render(Some(&request.query_text), setup.token_given, setup.url()));
        return Ok(ExitCode::from(error.exit_code()));
    }
    check_content_type(&response, NDJSON, setup)?;

    let mut writer = RowWriter::new(setup.format, Vec::new());
    let mut pending: Vec<u8> = Vec::new();
    let mut stdout = io::stdout().lock();
    loop {
        let data = match timeout_at(deadline, response.next_data()).await {
            Err(_) => anyhow::bail!(
                "the answer took longer than --timeout {}; raise --timeout or narrow the query",
                humane(setup.timeout)
            ),
            Ok(Err(e)) => return Err(anyhow::anyhow!("{e}")),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(data))) => data,
        };
        pending.extend_from_slice(&data);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            add_row(&mut writer, &pending[start..start + end], setup)?;
            start += end + 1;
        }
        pending.drain(..start);
        anyhow::ensure!(
            pending.len() <= ROW_BYTES_MAX,
            "{} sent a row longer than {ROW_BYTES_MAX} bytes; is it a sluice store?",
            setup.url()
        );
        progress.set_rows(writer.rows());
        if !writer.out_mut().is_empty() && stdout_tty {
            progress.stop();
        }
        if !emit(&mut stdout, writer.out_mut())? {
            return Ok(ExitCode::SUCCESS);
        }
    }
    add_row(&mut writer, &pending, setup)?;
    writer.finish().context("cannot format the rows")?;
    progress.stop();
    if !emit(&mut stdout, writer.out_mut())? {
        return Ok(ExitCode::SUCCESS);
    }
    drop(stdout);

    let stats_text = response.trailer(STATS_HEADER).or(response.header(STATS_HEADER));
    let stats = stats_text.and_then(|t| serde_json::from_str::<Stats>(t).ok());
    let truncated = response.trailer(TRUNCATED_HEADER).or(response.header(TRUNCATED_HEADER)) == Some("true");
    let rows = writer.rows();
    if setup.format == Format::Table || stderr_tty {
        let client_ms = started.elapsed().as_secs_f64() * 1000.0;
        eprintln!("{}", output::summary(rows, stats.as_ref(), client_ms));
    }
    if truncated {
        eprintln!(
            "sluice: warning: the store cut the result at {rows} rows (its row limit); \
             aggregate, add a LIMIT or narrow the time range to see everything"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses one NDJSON line (blank lines and a trailing `\r` are tolerated) into the writer.
fn add_row(writer: &mut RowWriter<Vec<u8>>, line: &[u8], setup: &Setup) -> anyhow::Result<()> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let row = Row::parse(line).map_err(|e| {
        let start: String = String::from_utf8_lossy(line).chars().take(80).collect();
        anyhow::anyhow!("{} sent a row that is not a JSON object ({e}): {start}", setup.url())
    })?;
    writer.row(row).context("cannot format a row")
}

/// Writes `buf` to stdout and empties it; `false` when stdout was closed by its reader.
fn emit(stdout: &mut impl Write, buf: &mut Vec<u8>) -> anyhow::Result<bool> {
    if buf.is_empty() {
        return Ok(true);
    }
    let result = stdout.write_all(buf).and_then(|()| stdout.flush());
    buf.clear();
    match result {
        Ok(()) => Ok(true),
        // `sluice query … | head`: the reader has what it wanted; not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

async fn read_api_error(response: &mut Response, deadline: Instant) -> ApiError {
    // A body that does not come in time or breaks still leaves the status to report.
    let body = timeout_at(deadline, response.read_to_end(ERROR_BODY_BYTES_MAX))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    ApiError::new(response.status, &body, response.header("retry-after"))
}

fn check_content_type(response: &Response, expected: &str, setup: &Setup) -> anyhow::Result<()> {
    let got = response.header("content-type").unwrap_or("");
    let mime = got.split(';').next().unwrap_or("").trim();
    anyhow::ensure!(
        mime.eq_ignore_ascii_case(expected),
        "{} answered with Content-Type {got:?} instead of {expected}; is it a sluice store's query API? check --url or SLUICE_URL",
        setup.url()
    );
    Ok(())
}

/// A failed connection as the user should read it: what failed, and which setting to check.
fn connection_error(e: HttpError, setup: &Setup) -> anyhow::Error {
    match e {
        HttpError::Resolve { .. } | HttpError::Connect { .. } => {
            anyhow::anyhow!("{e}; is the store running there? check --url or SLUICE_URL")
        }
        HttpError::Tls { .. } => anyhow::anyhow!(
            "{e}; check --ca or SLUICE_CA (the CA that signed the store's certificate) and that the certificate names the host in --url"
        ),
        HttpError::Timeout { .. } => {
            anyhow::anyhow!("no answer from {} within --timeout {}; raise --timeout or check --url", setup.url(), humane(setup.timeout))
        }
        HttpError::Broken { .. } => anyhow::anyhow!("{e}"),
    }
}

fn humane(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// How one tail connection ended.
enum TailEnd {
    /// Stop with this exit code (an error the store will repeat, or stdout closed).
    Exit(ExitCode),
    /// Stop with this error (exit 2).
    Fatal(anyhow::Error),
    /// The connection was lost or refused; try again. `was_connected`: it had been streaming.
    Lost { reason: String, was_connected: bool },
}

/// Follows the tail, reconnecting with capped exponential backoff, until Ctrl-C (exit 0), a
/// closed stdout (exit 0), or an error reconnecting cannot fix.
async fn follow(setup: &Setup, path: &str, query_text: &str) -> anyhow::Result<ExitCode> {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut streamed_before = false;
    let mut delay = RECONNECT_DELAY_MIN;
    loop {
        let end = tokio::select! {
            _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
            end = follow_once(setup, path, query_text, &mut streamed_before) => end,
        };
        match end {
            TailEnd::Exit(code) => return Ok(code),
            TailEnd::Fatal(e) => return Err(e),
            TailEnd::Lost { reason, was_connected } => {
                if was_connected {
                    delay = RECONNECT_DELAY_MIN;
                }
                eprintln!(
                    "sluice: tail: {reason}; reconnecting in {} (events in between are not shown)",
                    humane(delay)
                );
                tokio::select! {
                    _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
            }
        }
    }
}

/// One tail connection: connect, then print events until the stream ends or fails.
async fn follow_once(setup: &Setup, path: &str, query_text: &str, streamed_before: &mut bool) -> TailEnd {
    let deadline = Instant::now() + setup.timeout;
    let mut response = match setup.client.request(::http::Method::GET, path, EVENT_STREAM, None, deadline).await {
        Ok(r) => r,
        // The first connection failing is most likely a wrong URL: say so and stop. Later, the
        // store is probably restarting: keep trying.
        Err(e) if !*streamed_before => return TailEnd::Fatal(connection_error(e, setup)),
        Err(e) => return TailEnd::Lost { reason: e.to_string(), was_connected: false },
    };
    if !response.status.is_success() {
        let error = read_api_error(&mut response, deadline).await;
        let passing = error.status == ::http::StatusCode::TOO_MANY_REQUESTS || error.status.is_server_error();
        if passing && *streamed_before {
            let text = error.render(None, setup.token_given, setup.url());
            let reason = text.strip_prefix("sluice: error: ").unwrap_or(&text).to_string();
            return TailEnd::Lost { reason, was_connected: false };
        }
        eprintln!("{}", error.render(Some(query_text), setup.token_given, setup.url()));
        return TailEnd::Exit(ExitCode::from(error.exit_code()));
    }
    if let Err(e) = check_content_type(&response, EVENT_STREAM, setup) {
        return TailEnd::Fatal(e);
    }
    if *streamed_before {
        eprintln!("sluice: tail: reconnected");
    }
    *streamed_before = true;

    let mut parser = SseParser::new();
    let mut events = Vec::new();
    let mut out = Vec::new();
    loop {
        let data = match timeout(TAIL_IDLE_TIMEOUT, response.next_data()).await {
            Err(_) => {
                let reason = format!("nothing from the store for {} (not even a keepalive)", humane(TAIL_IDLE_TIMEOUT));
                return TailEnd::Lost { reason, was_connected: true };
            }
            Ok(Err(e)) => return TailEnd::Lost { reason: e.to_string(), was_connected: true },
            Ok(Ok(None)) => {
                return TailEnd::Lost { reason: "the store closed the stream".to_string(), was_connected: true }
            }
            Ok(Ok(Some(data))) => data,
        };
        if let Err(e) = parser.feed(&data, &mut events) {
            return TailEnd::Lost { reason: e.to_string(), was_connected: true };
        }
        for event in events.drain(..) {
            tail_event(&event.event, &event.data, setup.format, &mut out);
        }
        let mut stdout = io::stdout().lock();
        match emit(&mut stdout, &mut out) {
            Ok(true) => {}
            Ok(false) => return TailEnd::Exit(ExitCode::SUCCESS),
            Err(e) => return TailEnd::Fatal(e),
        }
    }
}

/// Formats one SSE event: a `row` into `out`, a `dropped` notice onto stderr; other event
/// names are ignored (a newer store may send more).
fn tail_event(name: &str, data: &str, format: Format, out: &mut Vec<u8>) {
    match name {
        "row" => match Row::parse(data.as_bytes()) {
            Ok(row) => match format {
                Format::Table => {
                    out.extend_from_slice(output::tail_line(&row).as_bytes());
                    out.push(b'\n');
                }
                _ => {
                    // Line breaks between JSON tokens are insignificant (inside strings they are
                    // escaped), so a row sent over several data lines stays one NDJSON line.
                    out.extend(row.raw.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
                    out.push(b'\n');
                }
            },
            Err(e) => eprintln!("sluice: tail: skipped an event that is not a JSON object: {e}"),
        },
        "dropped" => {
            #[derive(serde::Deserialize)]
            struct Dropped {
                dropped: u64,
            }
            match serde_json::from_str::<Dropped>(data) {
                Ok(d) => eprintln!("sluice: tail: dropped {} events (client too slow)", d.dropped),
                Err(_) => eprintln!("sluice: tail: dropped events (client too slow)"),
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_rows_become_one_line_each() {
        let mut out = Vec::new();
        tail_event("row", "{\"time_ns\":0,\n\"a\":1}", Format::Ndjson, &mut out);
        tail_event("message", "{\"x\":1}", Format::Ndjson, &mut out);
        tail_event("row", "{\"time_ns\":0,\"sluice_source\":\"web-1\",\"a\":1}", Format::Table, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "{\"time_ns\":0, \"a\":1}\n1970-01-01T00:00:00.000Z  web-1  a=1\n");
    }

    #[test]
    fn broken_pipe_is_a_quiet_end() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut buf = b"row\n".to_vec();
        assert!(!emit(&mut Closed, &mut buf).unwrap());
        assert!(emit(&mut Closed, &mut Vec::new()).unwrap(), "nothing to write, nothing fails");
    }

    #[test]
    fn token_files_give_their_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n  s3cr3t-token-0001  \nsecond\n").unwrap();
        assert_eq!(read_token_file(&path).unwrap(), "s3cr3t-token-0001");
        std::fs::write(&path, "\n \n").unwrap();
        assert!(read_token_file(&path).unwrap_err().to_string().contains("is empty"));
    }
}
