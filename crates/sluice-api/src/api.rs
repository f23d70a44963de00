//! The store's HTTP routes: the query API under `/api/` (SQL, search, tail, sources, flush),
//! with tokens and roles, the operations endpoints `/metrics` and `/healthz`, and the web page
//! at `/` and `/ui/…` (its files are in web.rs). One
//! [`Api::handle`] maps a request to a response; it needs no socket, so it is tested as a
//! function. Not here: listening, TLS and shutdown (serve.rs), answer formats (format.rs), the
//! tokens file (tokens.rs), the queries themselves (sluice-sql).
//!
//! Every failure is a JSON body `{"error": "…"}` (with `"position"`, the 0-based character
//! column in the query, for a query error that has one) and a status from one mapping:
//! [`sluice_sql::QueryError::status`] for queries, and 400 bad request, 401 no or unknown token
//! (with `WWW-Authenticate: Bearer`), 403 a role missing, 404 no such path, 405 wrong method
//! (with `Allow`), 406 no format the client accepts, 408 a request body too slow, 413 a body
//! over [`SQL_BODY_BYTES_MAX`], 429 too many queries or tails (with `Retry-After: 1`).

use std::collections::HashSet;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use sluice_pull::{PullMetrics, SourceState};
use sluice_sql::{Access, Engine, QueryError, SearchRequest, Tail, TailBatch};
use tokio::sync::{mpsc, watch};

use crate::format::{self, Format, Nulls, RowEncoder};
use crate::ops;
use crate::tokens::{Caller, Roles, TokenSet};
use crate::web;

/// Largest `POST /api/sql` body.
pub const SQL_BODY_BYTES_MAX: usize = 1024 * 1024;
/// A request body not received within this is refused (408).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A comment line goes to every tail this often, so proxies and clients see the stream alive.
pub const TAIL_KEEPALIVE_DEFAULT: Duration = Duration::from_secs(15);
/// Tails open at once; each runs its own matching as events arrive.
pub const TAILS_MAX: usize = 64;
/// Encoded tail frames waiting for one client. Past these (and the socket's buffers) the tail
/// stops reading the store for that client; it falls behind and reports what it dropped.
pub const TAIL_QUEUE_FRAMES: usize = 8;
/// A tail frame is cut once it holds this many bytes of rows.
pub const TAIL_FRAME_BYTES: usize = 64 * 1024;

const CONTENT_TYPE_JSON: &str = "application/json";
const CONTENT_TYPE_EVENT_STREAM: &str = "text/event-stream";
const STATS_HEADER: &str = "sluice-stats";
const TRUNCATED_HEADER: &str = "sluice-truncated";
const ENDPOINTS: &str =
    "/api/sql, /api/search, /api/tail, /api/sources, /api/admin/flush, /metrics, /healthz and the web page at /";

/// A response body: whole, or the frames of a tail as they come.
pub struct ApiBody(BodyKind);

enum BodyKind {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl ApiBody {
    pub fn full(bytes: impl Into<Bytes>) -> ApiBody {
        ApiBody(BodyKind::Full(Some(bytes.into())))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            BodyKind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Stream(rx) => rx.poll_recv(cx).map(|f| f.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, BodyKind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            BodyKind::Full(None) => SizeHint::with_exact(0),
            BodyKind::Stream(_) => SizeHint::default(),
        }
    }
}

/// A refused or failed request, as the client will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub position: Option<usize>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), position: None }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn response(&self) -> Response<ApiBody> {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(p) = self.position {
            body["position"] = p.into();
        }
        let mut r = Response::builder()
            .status(self.status)
            .header(header::CONTENT_TYPE, CONTENT_TYPE_JSON)
            .header(header::CACHE_CONTROL, "no-store");
        match self.status {
            StatusCode::UNAUTHORIZED => r = r.header(header::WWW_AUTHENTICATE, "Bearer realm=\"sluice\""),
            StatusCode::TOO_MANY_REQUESTS => r = r.header(header::RETRY_AFTER, "1"),
            _ => {}
        }
        r.body(ApiBody::full(format!("{body}\n"))).expect("static headers are valid")
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError { status, position: e.position(), message: e.to_string() }
    }
}

/// Counters of the API itself, for `/metrics`.
#[derive(Debug, Default)]
struct ApiCounters {
    tails_open: AtomicU64,
    tail_rows_sent: AtomicU64,
    tail_rows_dropped: AtomicU64,
    queries_failed: AtomicU64,
}

/// Where a path goes, and what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Sql,
    Search,
    Tail,
    Sources,
    Flush,
}

impl Route {
    fn find(path: &str) -> Option<Route> {
        Some(match path {
            "/metrics" => Route::Metrics,
            "/healthz" => Route::Healthz,
            "/api/sql" => Route::Sql,
            "/api/search" => Route::Search,
            "/api/tail" => Route::Tail,
            "/api/sources" => Route::Sources,
            "/api/admin/flush" => Route::Flush,
            _ => return None,
        })
    }

    fn methods(self) -> &'static [Method] {
        match self {
            Route::Metrics | Route::Healthz => &[Method::GET, Method::HEAD],
            Route::Sql | Route::Flush => &[Method::POST],
            Route::Search | Route::Tail | Route::Sources => &[Method::GET],
        }
    }

    fn needs_token(self) -> bool {
        !matches!(self, Route::Metrics | Route::Healthz)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlBody {
    sql: String,
}

/// The query API of one store (see the module docs).
pub struct Api {
    engine: Engine,
    pull: Arc<PullMetrics>,
    tokens: Option<TokenSet>,
    tail_keepalive: Duration,
    tails: Arc<tokio::sync::Semaphore>,
    stop: watch::Sender<bool>,
    counters: Arc<ApiCounters>,
}

impl Api {
    /// The API over `engine`'s store. Without `tokens`, every `/api/` request is refused with
    /// 401 and a message saying how to configure them.
    pub fn new(engine: Engine, pull: Arc<PullMetrics>, tokens: Option<TokenSet>) -> Api {
        Api {
            engine,
            pull,
            tokens,
            tail_keepalive: TAIL_KEEPALIVE_DEFAULT,
            tails: Arc::new(tokio::sync::Semaphore::new(TAILS_MAX)),
            stop: watch::channel(false).0,
            counters: Arc::new(ApiCounters::default()),
        }
    }

    /// Another interval for tail keepalive comments (tests).
    pub fn with_tail_keepalive(mut self, every: Duration) -> Api {
        self.tail_keepalive = every;
        self
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Ends every tail (their streams finish); new tails are refused. For shutdown.
    pub fn stop_tails(&self) {
        self.stop.send_replace(true);
    }

    /// Tails streaming now.
    pub fn tails_open(&self) -> u64 {
        self.counters.tails_open.load(Relaxed)
    }

    /// Answers one request. Never fails and never panics on any input: every problem is a
    /// response.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ApiBody>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                if e.status.is_server_error() {
                    self.counters.queries_failed.fetch_add(1, Relaxed);
                }
                e.response()
            }
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if let Some(asset) = web::find(path) {
            // The page's files hold no data: no token.
            if let Some(r) = web::respond(asset, req.method()) {
                return Ok(r);
            }
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes GET, HEAD, not {}", req.method().as_str()),
            )
            .response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return Ok(r);
        }
        let Some(route) = Route::find(path) else {
            let shown: String = path.chars().take(100).collect();
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no endpoint {shown}; this store serves {ENDPOINTS}"),
            ));
        };
        let methods = route.methods();
        if !methods.contains(req.method()) {
            let allow: Vec<&str> = methods.iter().map(Method::as_str).collect();
            let allow = allow.join(", ");
            let mut r = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {allow}, not {}", req.method().as_str()),
            )
            .response();
            r.headers_mut().insert(header::ALLOW, HeaderValue::from_str(&allow).expect("method names are valid"));
            return Ok(r);
        }
        let caller = if route.needs_token() { Some(self.authenticate(req.headers())?) } else { None };
        let access = Access { pii: caller.as_ref().is_some_and(|c| c.roles.pii) };
        match route {
            Route::Metrics => {
                let text = ops::metrics(self.engine.store(), &self.pull, &self.render_metrics());
                Ok(text_response(StatusCode::OK, ops::CONTENT_TYPE_METRICS, text))
            }
            Route::Healthz => {
                let (status, text) = ops::healthz(self.engine.store());
                Ok(text_response(status, ops::CONTENT_TYPE_TEXT, text))
            }
            Route::Sql => self.sql(req, access).await,
            Route::Search => self.search(&req, access).await,
            Route::Tail => self.tail(&req, access, caller.map(|c| c.roles)),
            Route::Sources => Ok(json_response(StatusCode::OK, self.sources())),
            Route::Flush => {
                if !caller.as_ref().is_some_and(|c| c.roles.admin) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "flushing needs a token with the admin role; ask the store's operator for one",
                    ));
                }
                self.flush().await
            }
        }
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let Some(tokens) = &self.tokens else {
            return Err(unauthorized(
                "this store has no API tokens, so it refuses every query; write a tokens file (see the README, \
                 \"HTTP API\"), name it with tokens = \"tokens.toml\" under [api] in store.toml (or --tokens FILE, \
                 SLUICE_STORE_TOKENS) and restart the store",
            ));
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized("no token: send the header Authorization: Bearer <token>"));
        };
        let Some(secret) = bearer(value) else {
            return Err(unauthorized("the Authorization header must be Bearer <token>"));
        };
        tokens
            .authenticate(secret)
            .ok_or_else(|| unauthorized("unknown token; check the token, or ask the store's operator for one"))
    }

    async fn sql<B>(&self, req: Request<B>, access: Access) -> Result<Response<ApiBody>, ApiError>
    where
        B: Body<Data = Bytes> + Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let format = accept(req.headers())?;
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body is larger than {SQL_BODY_BYTES_MAX} bytes; send a shorter query"),
            )
        };
        let declared =
            req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > SQL_BODY_BYTES_MAX as u64) {
            return Err(too_large());
        }
        let collected =
            tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(req.into_body(), SQL_BODY_BYTES_MAX).collect())
                .await
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        format!("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs()),
                    )
                })?;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
            Err(e) => return Err(ApiError::bad_request(format!("cannot read the request body: {e}"))),
        };
        let body: SqlBody = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not the JSON this endpoint takes ({e}); send {{\"sql\": \"SELECT …\"}}"
            ))
        })?;
        let out = self.engine.sql(&body.sql, access).await?;
        encode_answer(out, format, Nulls::Keep, self.engine.config().memory_max_bytes).await
    }

    async fn search<B>(&self, req: &Request<B>, access: Access) -> Result<Response<ApiBody>, ApiError> {
        let format = accept(req.headers())?;
        let params = Params::parse(req.uri().query(), &["q", "since", "until", "limit"], "/api/search")?;
        let now = now_ns();
        let time = |name: &str, default: Option<&str>| -> Result<Option<u64>, ApiError> {
            match params.get(name).or(default) {
                None => Ok(None),
                Some(text) => sluice_query::parse_time(text, now)
                    .map(Some)
                    .map_err(|e| ApiError::bad_request(format!("{name}: {e}"))),
            }
        };
        let since_ns = time("since", Some(SEARCH_SINCE_DEFAULT))?;
        let until_ns = time("until", None)?;
        if let (Some(s), Some(u)) = (since_ns, until_ns) {
            if s > u {
                return Err(ApiError::bad_request("since is after until; swap them or widen the range"));
            }
        }
        let limit = match params.get("limit") {
            None => sluice_sql::SEARCH_LIMIT_DEFAULT,
            Some(text) => match text.trim().parse::<usize>() {
                Ok(n) if (1..=sluice_sql::SEARCH_LIMIT_MAX).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit {text:?} is not a whole number from 1 to {}",
                        sluice_sql::SEARCH_LIMIT_MAX
                    )))
                }
            },
        };
        let request = SearchRequest { query: params.get("q").unwrap_or("").to_string(), since_ns, until_ns, limit };
        let out = self.engine.search(&request, access).await?;
        encode_answer(format::without_empty_columns(out), format, Nulls::Omit, self.engine.config().memory_max_bytes)
            .await
    }

    fn tail<B>(&self, req: &Request<B>, access: Access, roles: Option<Roles>) -> Result<Response<ApiBody>, ApiError> {
        let params = Params::parse(req.uri().query(), &["q"], "/api/tail")?;
        if *self.stop.borrow() {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the store is shutting down"));
        }
        let permit = self.tails.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many tails open (at most {TAILS_MAX}); close one or retry shortly"),
            )
        })?;
        let tail = self.engine.tail(params.get("q").unwrap_or(""), access)?;
        let grant = match (&self.tokens, req.headers().get(header::AUTHORIZATION).and_then(bearer), roles) {
            (Some(tokens), Some(secret), Some(roles)) => {
                Some(Grant { tokens: tokens.clone(), reloads: tokens.reloads(), secret: secret.to_owned(), roles })
            }
            _ => None,
        };
        let (tx, rx) = mpsc::channel(TAIL_QUEUE_FRAMES);
        let driver = TailDriver {
            tail,
            tx,
            keepalive: self.tail_keepalive,
            stop: self.stop.subscribe(),
            counters: self.counters.clone(),
            grant,
        };
        self.counters.tails_open.fetch_add(1, Relaxed);
        tokio::spawn(async move {
            let counters = driver.counters.clone();
            driver.run().await;
            counters.tails_open.fetch_sub(1, Relaxed);
            drop(permit);
        });
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, CONTENT_TYPE_EVENT_STREAM)
            .header(header::CACHE_CONTROL, "no-store")
            // Reverse proxies that buffer responses would hold rows back.
            .header("x-accel-buffering", "no")
            .body(ApiBody(BodyKind::Stream(rx)))
            .expect("static headers are valid"))
    }

    fn sources(&self) -> serde_json::Value {
        let committed = self.engine.store().stats().rows_committed_by_source;
        let sources: Vec<serde_json::Value> = self
            .pull
            .sources()
            .iter()
            .map(|(_, m)| {
                let status = m.status();
                let state = match status.state {
                    SourceState::Connected => "ok",
                    SourceState::BackingOff => "error",
                    SourceState::Connecting => "connecting",
                };
                serde_json::json!({
                    "name": status.name,
                    "url": status.url,
                    "state": state,
                    "last_error": status.last_error,
                    "lag_seconds": status.lag_ns.map(|ns| ns as f64 / 1e9),
                    "backlog_chunks": m.backlog_chunks.load(Relaxed),
                    "backlog_bytes": m.backlog_bytes.load(Relaxed),
                    "chunks_lost": m.chunks_lost.load(Relaxed),
                    // Stored since the store started (duplicates skipped are not counted).
                    "events_total": committed.get(status.name.as_str()).copied().unwrap_or(0),
                    "batches_total": m.batches_committed.load(Relaxed),
                    "stream": status.stream,
                    "live_chunk": status.live_chunk,
                })
            })
            .collect();
        serde_json::json!({ "sources": sources })
    }

    /// Flushes the buffer; answers the segments written and the events they hold.
    async fn flush(&self) -> Result<Response<ApiBody>, ApiError> {
        let store = self.engine.store().clone();
        let (rows, segments) = tokio::task::spawn_blocking(move || {
            let before: HashSet<String> = store.manifest().segments.into_iter().map(|s| s.path).collect();
            let rows = store.flush()?;
            let written = store.manifest().segments.iter().filter(|s| !before.contains(&s.path)).count();
            Ok::<_, sluice_store::StoreError>((rows, written))
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("flush stopped abnormally: {e}")))?
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("flush failed: {e}")))?;
        Ok(json_response(StatusCode::OK, serde_json::json!({ "segments": segments, "rows": rows })))
    }

    fn render_metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
        };
        one("sluice_api_tails", "gauge", "Live tails streaming now.", c.tails_open.load(Relaxed));
        one("sluice_api_tail_rows_sent_total", "counter", "Rows sent to tails.", c.tail_rows_sent.load(Relaxed));
        one(
            "sluice_api_tail_rows_dropped_total",
            "counter",
            "Rows tails could not deliver because their client was too slow.",
            c.tail_rows_dropped.load(Relaxed),
        );
        one(
            "sluice_api_requests_failed_total",
            "counter",
            "Requests answered with a server error.",
            c.queries_failed.load(Relaxed),
        );
        one(
            "sluice_query_running",
            "gauge",
            "SQL queries and searches running now, counting any still computing past its time limit.",
            self.engine.queries_running() as u64,
        );
        one(
            "sluice_query_timeouts_total",
            "counter",
            "SQL queries and searches answered at their time limit (408).",
            self.engine.queries_timed_out(),
        );
        let cache = self.engine.segment_metadata_cache();
        one(
            "sluice_query_metadata_cache_bytes",
            "gauge",
            "Bytes of segment footers and page indexes cached for queries.",
            cache.bytes as u64,
        );
        one(
            "sluice_query_metadata_cache_segments",
            "gauge",
            "Segments whose footer and page index are cached.",
            cache.segments as u64,
        );
        out
    }
}

/// Where a search starts when it names no `since`.
pub const SEARCH_SINCE_DEFAULT: &str = "15m";

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The secret of an `Authorization: Bearer <secret>` value.
fn bearer(value: &HeaderValue) -> Option<&str> {
    match value.to_str().ok()?.split_once(' ') {
        Some((scheme, secret)) if scheme.eq_ignore_ascii_case("bearer") => Some(secret.trim()),
        _ => None,
    }
}

fn accept(headers: &HeaderMap) -> Result<Format, ApiError> {
    let value = headers.get(header::ACCEPT).map(|v| v.to_str().unwrap_or("?"));
    Format::from_accept(value).map_err(|m| ApiError::new(StatusCode::NOT_ACCEPTABLE, m))
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(ApiBody::full(body))
        .expect("static headers are valid")
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, CONTENT_TYPE_JSON)
        .header(header::CACHE_CONTROL, "no-store")
        .body(ApiBody::full(format!("{body}\n")))
        .expect("static headers are valid")
}

/// The answer to a query in `format`, encoded on a blocking thread (a large result takes a
/// while to write), held to `bytes_max` (the query memory limit) as it grows.
async fn encode_answer(
    out: sluice_sql::QueryOutput,
    format: Format,
    nulls: Nulls,
    bytes_max: usize,
) -> Result<Response<ApiBody>, ApiError> {
    let stats = format::stats_json(&out.stats);
    let truncated = out.truncated;
    let body = tokio::task::spawn_blocking(move || format::encode(&out, format, nulls, bytes_max))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the answer stopped: {e}")))?
        .map_err(|e| match e {
            format::EncodeError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "query needs more than the memory limit of {bytes_max} bytes: {e}; aggregate more, select fewer \
                     columns or narrow the time range"
                ),
            ),
            format::EncodeError::Arrow(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}"))
            }
        })?;
    let mut r = Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.content_type())
        .header(header::CACHE_CONTROL, "no-store")
        .header(TRUNCATED_HEADER, if truncated { "true" } else { "false" });
    if let Ok(v) = HeaderValue::from_str(&stats) {
        r = r.header(STATS_HEADER, v);
    }
    Ok(r.body(ApiBody::full(body)).expect("static headers are valid"))
}

/// The parameters of a query string, percent-decoded, each known name at most once.
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, known: &[&str], endpoint: &str) -> Result<Params, ApiError> {
        let mut out: Vec<(String, String)> = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)
                .ok_or_else(|| ApiError::bad_request("the query string is not valid percent-encoded UTF-8"))?;
            let v = percent_decode(v).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "parameter {k}: not valid percent-encoded UTF-8; encode the value as UTF-8"
                ))
            })?;
            if !known.contains(&k.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {k:?}; {endpoint} takes {}",
                    known.join(", ")
                )));
            }
            if out.iter().any(|(seen, _)| *seen == k) {
                return Err(ApiError::bad_request(format!("parameter {k} is given twice; give it once")));
            }
            out.push((k, v));
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result must
/// be UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Runs one client's tail: waits for matching events and queues them as Server-Sent Events,
/// with a keepalive comment when idle. Ends when the client goes away (its body is dropped),
/// at shutdown, or on a failed step (reported as an `error` event).
struct TailDriver {
    tail: Tail,
    tx: mpsc::Sender<Bytes>,
    keepalive: Duration,
    stop: watch::Receiver<bool>,
    counters: Arc<ApiCounters>,
    grant: Option<Grant>,
}

/// The token a tail was opened with, checked again at every reload of the tokens file: a tail
/// whose token was removed, or whose roles changed, ends.
struct Grant {
    tokens: TokenSet,
    reloads: watch::Receiver<u64>,
    secret: String,
    roles: Roles,
}

impl Grant {
    /// Resolves at the next reload (never, once the token set is gone).
    async fn reloaded(grant: &mut Option<Grant>) {
        let changed = match grant {
            Some(g) => g.reloads.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            std::future::pending::<()>().await;
        }
    }

    fn still_holds(&self) -> bool {
        self.tokens.authenticate(&self.secret).is_some_and(|c| c.roles == self.roles)
    }
}

enum Step {
    Reloaded,
    Keepalive,
    Batch(Result<TailBatch, QueryError>),
    End,
}

impl TailDriver {
    async fn run(mut self) {
        let start = tokio::time::Instant::now() + self.keepalive;
        let mut tick = tokio::time::interval_at(start, self.keepalive);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                _ = self.tx.closed() => Step::End,
                _ = self.stop.wait_for(|&s| s) => Step::End,
                _ = Grant::reloaded(&mut self.grant) => Step::Reloaded,
                _ = tick.tick() => Step::Keepalive,
                r = self.tail.next() => Step::Batch(r),
            };
            let frames = match step {
                Step::End => return,
                Step::Reloaded if self.grant.as_ref().is_some_and(Grant::still_holds) => continue,
                Step::Reloaded => {
                    let data = serde_json::json!({
                        "error": "this tail's token was removed or its roles changed; open the tail again with a valid token"
                    });
                    let _ = self.send(Bytes::from(format!("event: error\ndata: {data}\n\n"))).await;
                    return;
                }
                Step::Keepalive => vec![Bytes::from_static(b": keepalive\n\n")],
                Step::Batch(Ok(batch)) => {
                    // Up to TAIL_BACKLOG_ROWS_MAX rows to write: not on an async worker.
                    let counters = self.counters.clone();
                    match tokio::task::spawn_blocking(move || frames(batch, &counters)).await {
                        Ok(frames) => frames,
                        Err(_) => return,
                    }
                }
                Step::Batch(Err(e)) => {
                    let data = serde_json::json!({ "error": e.to_string() });
                    let _ = self.send(Bytes::from(format!("event: error\ndata: {data}\n\n"))).await;
                    return;
                }
            };
            for f in frames {
                if !self.send(f).await {
                    return;
                }
            }
            // Whatever was just sent counts as a sign of life.
            tick.reset();
        }
    }

    /// Queues one frame, waiting while the client is behind; false when the tail should end.
    async fn send(&mut self, frame: Bytes) -> bool {
        tokio::select! {
            r = self.tx.send(frame) => r.is_ok(),
            _ = self.stop.wait_for(|&s| s) => false,
        }
    }
}

/// A tail step as Server-Sent Events: `dropped` first (those events came before these), then
/// one `row` event a row, cut into frames of about [`TAIL_FRAME_BYTES`].
fn frames(batch: TailBatch, counters: &ApiCounters) -> Vec<Bytes> {
    let mut frames = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    if batch.dropped > 0 {
        counters.tail_rows_dropped.fetch_add(batch.dropped, Relaxed);
        // The dropped rows came before the ones below.
        let _ = std::io::Write::write_fmt(
            &mut buf,
            format_args!("event: dropped\ndata: {{\"dropped\":{}}}\n\n", batch.dropped),
        );
    }
    let mut sent = 0u64;
    for b in &batch.batches {
        let enc = match RowEncoder::new(b) {
            Ok(enc) => enc,
            Err(e) => {
                let data = serde_json::json!({ "error": format!("cannot encode a row: {e}") });
                buf.extend_from_slice(format!("event: error\ndata: {data}\n\n").as_bytes());
                continue;
            }
        };
        for r in 0..enc.rows() {
            buf.extend_from_slice(b"event: row\ndata: ");
            enc.write_row(r, Nulls::Omit, &mut buf);
            buf.extend_from_slice(b"\n\n");
            sent += 1;
            if buf.len() >= TAIL_FRAME_BYTES {
                frames.push(Bytes::from(std::mem::take(&mut buf)));
            }
        }
    }
    counters.tail_rows_sent.fetch_add(sent, Relaxed);
    if !buf.is_empty() {
        frames.push(Bytes::from(buf));
    }
    frames
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_follows_forms() {
        assert_eq!(percent_decode("a+b%3Ac%22").as_deref(), Some("a b:c\""));
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("%2"), None);
    }

    #[test]
    fn params_refuse_unknown_and_repeated_names() {
        let p = Params::parse(Some("q=status%3A500&limit=5&"), &["q", "limit"], "/api/search").unwrap();
        assert_eq!(p.get("q"), Some("status:500"));
        assert_eq!(p.get("limit"), Some("5"));
        assert_eq!(p.get("since"), None);
        let e = Params::parse(Some("lmit=5"), &["q", "limit"], "/api/search").err().unwrap();
        assert!(e.message.contains("unknown parameter \"lmit\"; /api/search takes q, limit"), "{}", e.message);
        let e = Params::parse(Some("q=a&q=b"), &["q"], "/api/tail").err().unwrap();
        assert!(e.message.contains("given twice"), "{}", e.message);
    }

    #[test]
    fn routes_know_their_methods() {
        assert_eq!(Route::find("/api/sql"), Some(Route::Sql));
        assert_eq!(Route::find("/api/sql/"), None);
        assert!(Route::Sql.methods().contains(&Method::POST));
        assert!(!Route::Search.methods().contains(&Method::POST));
        assert!(!Route::Healthz.needs_token());
        assert!(Route::Sources.needs_token());
    }
}
