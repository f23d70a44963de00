//! The supervisor's HTTPS chunk server: the mutual-TLS accept loop (connection cap, handshake
//! timeout, `client_accepted` / `client_rejected` events, cutting clients a reload removed) and the
//! `/chunk/` routes (listing, closed chunks with validators and ranges, live following of the open
//! chunk, `?offset=` resume).
//!
//! It does not decide who may connect (sluice-tls's allow list does), write chunks (the chunk log
//! does) or parse command lines. It never builds a file path from a request: an id goes through
//! [`ChunkId::parse`] and the log opens the file.
//!
//! # Routes (GET and HEAD; anything else is `405` with `Allow: GET, HEAD`)
//!
//! Every response carries `Sluice-Stream-Id: <32 hex digits>`. Errors are short `text/plain`
//! bodies saying what was wrong; any path other than these is `404`.
//!
//! - `GET /chunk/` → `200 text/plain`: the chunk ids, one per line, oldest first, the open chunk
//!   last, each line ending in `\n`:
//!   ```text
//!   TLKQ9F1
//!   TLKQ9F2
//!   TLKQ9G7
//!   ```
//! - `GET /chunk/ID` → the chunk, `Content-Type: application/x-ndjson`, with
//!   `Sluice-Chunk-State: open|closed` (the state when the response started). `400` if `ID` does
//!   not match `[123456789CDFGHJKLMNPQRTVWXZ]{1,16}` (the raw path segment is checked: `%2e%2e` is
//!   not decoded first), `404` once the chunk is discarded or if it never existed.
//!   - **Closed**: `200` with `Content-Length`, a strong `ETag: "<stream id>-<chunk id>-<bytes>"`
//!     (`If-None-Match` → `304`) and `Accept-Ranges: bytes`. `Range: bytes=N-`, `bytes=N-M` or
//!     `bytes=-N` → `206` with `Content-Range`, or `416` with `Content-Range: bytes */LEN` when it
//!     starts past the end; other range forms (several ranges) get the whole chunk. `If-Range`
//!     with an etag that no longer matches also gets the whole chunk.
//!   - **Open**: `200`, chunked transfer encoding, `Cache-Control: no-store`: everything written so
//!     far, then new bytes as they are written; when the chunk closes the rest follows and the
//!     body ends properly (the final empty chunk), so a body cut without it means the connection
//!     broke. `Range` is ignored (as HTTP allows): the whole chunk.
//! - `GET /chunk/ID?offset=N` (decimal) → the same answer from byte `N`, with `Sluice-Offset: N`;
//!   `416` if `N` is past the bytes written so far (`N` equal to them is fine: an empty body for a
//!   closed chunk, new data as it comes for the open one). `Range` is ignored with an offset.
//!   Any other query parameter is `400`, so that a misspelt `offset` never silently restarts a
//!   reader from byte 0.
//!
//! Offsets count bytes of the uncompressed chunk. Bodies are read from the chunk file at most
//! [`READ_BYTES_MAX`] bytes at a time and only when hyper asks for the next frame, so a client
//! that stops reading holds at most about twice that (plus TLS buffers), whatever is written.

use std::convert::Infallible;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use sluice_chunk::{ChunkId, ChunkLog, ChunkState, DiskStorage, IdError, ReadError};
use sluice_event::OwnEvent;
use sluice_tls::{format_fingerprint, Rejection, ServerTls};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::{Metrics, REJECT_REASONS};

/// Where `sluice supervise` listens for HTTPS by default: every interface, port 7701.
pub const LISTEN_DEFAULT: &str = "0.0.0.0:7701";
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
pub const REQUEST_HEADER_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
pub const DRAIN_DEFAULT: Duration = Duration::from_secs(5);
/// The most chunk bytes read from disk (and handed to hyper) at once, per response.
pub const READ_BYTES_MAX: usize = 64 * 1024;
/// hyper's write buffer per connection: it stops asking the body for frames past this, so a
/// stalled client holds this plus one frame, not the chunk.
const WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
const TCP_KEEPALIVE_RETRIES: u32 = 4;
/// At most this many `client_rejected` events per window; the rest are counted (metrics always,
/// and in the `suppressed` key of the next event), so a scan cannot flood the stream.
const REJECT_EVENTS_PER_WINDOW: u32 = 10;
const REJECT_EVENT_WINDOW: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors, most likely), so the loop does not spin
/// while connections close.
pub(crate) const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

pub const CHUNK_PATH_PREFIX: &str = "/chunk/";
pub const HEADER_STREAM_ID: HeaderName = HeaderName::from_static("sluice-stream-id");
pub const HEADER_CHUNK_STATE: HeaderName = HeaderName::from_static("sluice-chunk-state");
pub const HEADER_OFFSET: HeaderName = HeaderName::from_static("sluice-offset");
pub const CONTENT_TYPE_NDJSON: &str = "application/x-ndjson";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";
/// Longest `offset` value: u64::MAX has 20 digits.
const OFFSET_DIGITS_MAX: usize = 20;

/// Limits of the chunk server.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Connections open at once (handshaking or established); more are closed at once.
    pub connections_max: usize,
    /// A connection that sends no complete request head in this time (after connecting or after
    /// its last response) is closed. Never applies while a response is streaming.
    pub request_header_timeout: Duration,
    pub handshake_timeout: Duration,
    /// After shutdown, how long responses in progress may take to end before they are cut.
    pub drain: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            request_header_timeout: REQUEST_HEADER_TIMEOUT_DEFAULT,
            handshake_timeout: HANDSHAKE_TIMEOUT_DEFAULT,
            drain: DRAIN_DEFAULT,
        }
    }
}

/// Accept loop of the chunk server. Ends when `shutdown` turns true (or its sender is dropped):
/// stops accepting, lets responses in progress finish — those following the open chunk end
/// properly once the log closes the chunk, so close the log when shutdown begins — and cuts
/// whatever is still open after `config.drain`.
///
/// A change on `reloads` (after [`ServerTls::reload`]) closes the connections of clients no
/// longer on the allow list; the others keep streaming.
pub async fn serve_chunks(
    listener: TcpListener,
    tls: ServerTls,
    log: Arc<ChunkLog<DiskStorage>>,
    metrics: Arc<Metrics>,
    config: ServeConfig,
    reloads: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(config.connections_max));
    let drain = config.drain;
    let server = Arc::new(Server::new(tls, Chunks::new(log, Arc::clone(&metrics)), config));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                        metrics.connections_refused_cap.fetch_add(1, Ordering::Relaxed);
                        drop(tcp);
                        continue;
                    };
                    let conn = Arc::clone(&server).connection(tcp, peer, permit, reloads.clone(), shutdown.clone());
                    tasks.spawn(conn);
                }
                Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
            },
        }
    }
    drop(listener);
    let finished = tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tasks.shutdown().await;
    }
}

/// Resolves once `rx` holds true, or its sender is gone (nobody is left to say "go on").
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|&stop| stop).await;
}

/// State shared by all connections.
struct Server {
    tls: ServerTls,
    chunks: Arc<Chunks>,
    config: ServeConfig,
    http: http1::Builder,
    rejects: Mutex<RejectEvents>,
}

impl Server {
    fn new(tls: ServerTls, chunks: Chunks, config: ServeConfig) -> Server {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.request_header_timeout)
            .max_buf_size(WRITE_BUFFER_BYTES_MAX)
            .keep_alive(true);
        Server { tls, chunks: Arc::new(chunks), config, http, rejects: Mutex::new(RejectEvents::default()) }
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        _permit: OwnedSemaphorePermit,
        mut reloads: watch::Receiver<u64>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        configure_socket(&tcp);
        let metrics = &self.chunks.metrics;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.current());
        let handshake = tokio::select! {
            r = tokio::time::timeout(self.config.handshake_timeout, acceptor.accept(tcp)) => r,
            () = shutdown_requested(&mut shutdown) => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return self.handshake_failed(&e, peer),
            Err(_elapsed) => {
                metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        // The verifier makes a certificate mandatory, so an established connection has one.
        let Some(fp) = sluice_tls::peer_fingerprint(stream.get_ref().1) else {
            metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // The handshake was judged by the list of its start: a reload while it ran (it may take
        // the whole handshake timeout) may have removed this client, who gets no response at all.
        if !self.tls.is_allowed(&fp) {
            metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            self.record_revoked(
                peer,
                &fp,
                "client removed from the allow list during its handshake; connection closed",
            );
            return;
        }
        metrics.clients_accepted.fetch_add(1, Ordering::Relaxed);
        let _connected = GaugeUnit::new(Arc::clone(metrics), |m| &m.clients_connected);
        let (peer_text, fp_text) = (peer.to_string(), format_fingerprint(&fp));
        self.chunks.record(move |buf, now| {
            OwnEvent::new(buf, now, "client_accepted").str("peer", &peer_text).str("fingerprint", &fp_text).finish()
        });

        let chunks = Arc::clone(&self.chunks);
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let response = chunks.respond(&req);
            async move { Ok::<_, Infallible>(response) }
        });
        let conn = self.http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let (mut watching_reloads, mut draining) = (true, false);
        loop {
            // A reload is looked at before the connection is served again, so a client it removed
            // gets no further response.
            tokio::select! {
                biased;
                changed = reloads.changed(), if watching_reloads => match changed {
                    Ok(()) if !self.tls.is_allowed(&fp) => {
                        // Dropping the connection closes the socket mid-response: the client sees
                        // a body cut without its final chunk, and its next handshake fails.
                        self.record_revoked(peer, &fp, "client removed from the allow list by a reload; connection closed");
                        return;
                    }
                    Ok(()) => {}
                    Err(_) => watching_reloads = false,
                },
                () = shutdown_requested(&mut shutdown), if !draining => {
                    draining = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = conn.as_mut() => return,
            }
        }
    }

    fn record_revoked(&self, peer: SocketAddr, fp: &sluice_tls::Fingerprint, message: &'static str) {
        let (peer_text, fp_text) = (peer.to_string(), format_fingerprint(fp));
        self.chunks.record(move |buf, now| {
            OwnEvent::new(buf, now, "client_revoked")
                .str("peer", &peer_text)
                .str("fingerprint", &fp_text)
                .str("message", message)
                .finish()
        });
    }

    /// Count a failed handshake; a refused certificate also gets a (rate-limited) event.
    fn handshake_failed(&self, err: &io::Error, peer: SocketAddr) {
        let metrics = &self.chunks.metrics;
        let Some(Rejection { fingerprint, reason }) = sluice_tls::rejection(err) else {
            metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match REJECT_REASONS.iter().position(|&name| name == reason.as_str()) {
            Some(i) => metrics.handshakes_rejected[i].fetch_add(1, Ordering::Relaxed),
            None => metrics.handshakes_failed.fetch_add(1, Ordering::Relaxed),
        };
        let Some(suppressed) = self.rejects.lock().admit(Instant::now()) else { return };
        let message = Rejection { fingerprint, reason }.to_string();
        let fp_text = fingerprint.as_ref().map(format_fingerprint).unwrap_or_default();
        let peer_text = peer.to_string();
        self.chunks.record(move |buf, now| {
            let mut event = OwnEvent::new(buf, now, "client_rejected")
                .str("peer", &peer_text)
                .str("fingerprint", &fp_text)
                .str("reason", reason.as_str())
                .str("message", &message);
            if suppressed > 0 {
                event = event.u64("suppressed", suppressed);
            }
            event.finish()
        });
    }
}

/// Keepalive finds peers that vanished without a FIN (a long follow may send nothing for minutes);
/// no Nagle, because followers send small frames that should leave at once.
fn configure_socket(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL)
        .with_retries(TCP_KEEPALIVE_RETRIES);
    // Failures here only make the connection less well-behaved, never wrong: go on without.
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
    let _ = tcp.set_nodelay(true);
}

/// The rate limit on `client_rejected` events: a fixed window.
#[derive(Debug, Default)]
struct RejectEvents {
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl RejectEvents {
    /// `Some(n)`: write an event now, mentioning the `n` rejections left out before it.
    /// `None`: leave this one out (it is counted for the next event).
    fn admit(&mut self, now: Instant) -> Option<u64> {
        if self.window_start.is_none_or(|start| now.saturating_duration_since(start) >= REJECT_EVENT_WINDOW) {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < REJECT_EVENTS_PER_WINDOW {
            self.in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

/// Holds one unit of a gauge (`clients_connected`, `followers`) while it lives.
struct GaugeUnit {
    metrics: Arc<Metrics>,
    gauge: fn(&Metrics) -> &AtomicI64,
}

impl GaugeUnit {
    fn new(metrics: Arc<Metrics>, gauge: fn(&Metrics) -> &AtomicI64) -> GaugeUnit {
        gauge(&metrics).fetch_add(1, Ordering::Relaxed);
        GaugeUnit { metrics, gauge }
    }
}

impl Drop for GaugeUnit {
    fn drop(&mut self) {
        (self.gauge)(&self.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}

type Body = UnsyncBoxBody<Bytes, io::Error>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Why a request gets an error status: the one place statuses come from.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("method not allowed: use GET or HEAD")]
    MethodNotAllowed,
    #[error("no such path: list chunks at /chunk/ and fetch one at /chunk/ID")]
    NoSuchPath,
    #[error("bad chunk id: {0}")]
    BadId(IdError),
    #[error("missing chunk id: an offset needs one, as in /chunk/ID?offset=N")]
    MissingId,
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("no such chunk: it was discarded by retention or never existed; list chunks at /chunk/")]
    NoSuchChunk,
    #[error("offset {offset} is past the {len} bytes written to this chunk so far")]
    OffsetPastEnd { offset: u64, len: u64, state: ChunkState },
    #[error("range not satisfiable: the chunk has {len} bytes")]
    RangeNotSatisfiable { len: u64 },
    #[error("cannot read the chunk: {0}")]
    Read(io::Error),
}

impl ServeError {
    fn status(&self) -> StatusCode {
        match self {
            ServeError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::NoSuchPath | ServeError::NoSuchChunk => StatusCode::NOT_FOUND,
            ServeError::BadId(_) | ServeError::MissingId | ServeError::BadQuery(_) => StatusCode::BAD_REQUEST,
            ServeError::OffsetPastEnd { .. } | ServeError::RangeNotSatisfiable { .. } => {
                StatusCode::RANGE_NOT_SATISFIABLE
            }
            ServeError::Read(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut response = Response::new(full(format!("{self}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
        match self {
            ServeError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            ServeError::OffsetPastEnd { len, state, .. } => {
                headers.insert(HEADER_CHUNK_STATE, state_value(state));
                if state == ChunkState::Closed {
                    headers.insert(header::CONTENT_RANGE, unsatisfied_range(len));
                }
            }
            ServeError::RangeNotSatisfiable { len } => {
                headers.insert(HEADER_CHUNK_STATE, state_value(ChunkState::Closed));
                headers.insert(header::CONTENT_RANGE, unsatisfied_range(len));
            }
            _ => {}
        }
        response
    }
}

fn state_value(state: ChunkState) -> HeaderValue {
    HeaderValue::from_static(match state {
        ChunkState::Open => "open",
        ChunkState::Closed => "closed",
    })
}

fn unsatisfied_range(len: u64) -> HeaderValue {
    ascii_header(format!("bytes */{len}"))
}

fn ascii_header(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("header built from digits, ids and ASCII punctuation")
}

/// The request handlers: routing and responses over the chunk log. Knows nothing of TLS or
/// sockets, so it is tested with plain `Request` values.
struct Chunks {
    log: Arc<ChunkLog<DiskStorage>>,
    metrics: Arc<Metrics>,
    stream_id: HeaderValue,
}

impl Chunks {
    fn new(log: Arc<ChunkLog<DiskStorage>>, metrics: Arc<Metrics>) -> Chunks {
        let stream_id = ascii_header(log.stream_id().to_string());
        Chunks { log, metrics, stream_id }
    }

    /// Write one of sluice's own events without blocking an async worker (the log may fsync).
    fn record(&self, build: impl FnOnce(&mut Vec<u8>, u64) + Send + 'static) {
        let log = Arc::clone(&self.log);
        // An event that cannot be written (the log is closed at shutdown) is not worth more than
        // the connection it describes: let it go.
        drop(tokio::task::spawn_blocking(move || log.append_own(build)));
    }

    /// The response to one request. Never waits: bodies are read later, as hyper pulls them.
    fn respond<B>(&self, req: &Request<B>) -> Response<Body> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = self.route(req).unwrap_or_else(ServeError::into_response);
        response.headers_mut().insert(HEADER_STREAM_ID, self.stream_id.clone());
        response
    }

    fn route<B>(&self, req: &Request<B>) -> Result<Response<Body>, ServeError> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(ServeError::MethodNotAllowed),
        };
        let rest = req.uri().path().strip_prefix(CHUNK_PATH_PREFIX).ok_or(ServeError::NoSuchPath)?;
        let offset = parse_offset(req.uri().query())?;
        if rest.is_empty() {
            return match offset {
                Some(_) => Err(ServeError::MissingId),
                None => Ok(self.listing()),
            };
        }
        let id = ChunkId::parse(rest).map_err(|e| match e {
            IdError::Malformed => ServeError::BadId(e),
            IdError::Unknown => ServeError::NoSuchChunk,
        })?;
        let (file, info) = self.log.open_reader(id).map_err(|e| match e {
            ReadError::NotFound => ServeError::NoSuchChunk,
            ReadError::Io(e) => ServeError::Read(e),
        })?;
        let file = Arc::new(file);
        match info.state {
            ChunkState::Open => self.open_chunk(id, file, info.len, offset, head),
            ChunkState::Closed => self.closed_chunk(id, file, info.len, offset, head, req.headers()),
        }
    }

    fn listing(&self) -> Response<Body> {
        let mut text = String::new();
        for info in self.log.list() {
            text.push_str(&info.id.to_string());
            text.push('\n');
        }
        let mut response = Response::new(full(text));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn open_chunk(
        &self,
        id: ChunkId,
        file: Arc<File>,
        len: u64,
        offset: Option<u64>,
        head: bool,
    ) -> Result<Response<Body>, ServeError> {
        let start = offset.unwrap_or(0);
        if start > len {
            return Err(ServeError::OffsetPastEnd { offset: start, len, state: ChunkState::Open });
        }
        let body = if head {
            empty()
        } else {
            ChunkBody {
                log: Arc::clone(&self.log),
                metrics: Arc::clone(&self.metrics),
                id,
                file,
                pos: start,
                end: None,
                // The open chunk was written moments ago and sits in the page cache: a read costs
                // less than a hop to the blocking pool would.
                cold: false,
                following: Some(GaugeUnit::new(Arc::clone(&self.metrics), |m| &m.followers)),
            }
            .into_body()
        };
        let mut response = Response::new(body);
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_NDJSON));
        headers.insert(HEADER_CHUNK_STATE, state_value(ChunkState::Open));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(n) = offset {
            headers.insert(HEADER_OFFSET, HeaderValue::from(n));
        }
        Ok(response)
    }

    fn closed_chunk(
        &self,
        id: ChunkId,
        file: Arc<File>,
        len: u64,
        offset: Option<u64>,
        head: bool,
        request: &HeaderMap,
    ) -> Result<Response<Body>, ServeError> {
        let etag = format!("\"{}-{id}-{len}\"", self.log.stream_id());
        let mut response = Response::new(empty());
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_NDJSON));
        headers.insert(HEADER_CHUNK_STATE, state_value(ChunkState::Closed));
        headers.insert(header::ETAG, ascii_header(etag.clone()));
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if if_none_match(request, &etag) {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return Ok(response);
        }
        let mut partial = false;
        let (start, end) = if let Some(n) = offset {
            if n > len {
                return Err(ServeError::OffsetPastEnd { offset: n, len, state: ChunkState::Closed });
            }
            headers.insert(HEADER_OFFSET, HeaderValue::from(n));
            (n, len)
        } else if let Some(range) = requested_range(request, &etag) {
            let (start, end) = range.resolve(len).ok_or(ServeError::RangeNotSatisfiable { len })?;
            partial = true;
            headers.insert(header::CONTENT_RANGE, ascii_header(format!("bytes {start}-{}/{len}", end - 1)));
            (start, end)
        } else {
            (0, len)
        };
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        if partial {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        if !head && start < end {
            *response.body_mut() = ChunkBody {
                log: Arc::clone(&self.log),
                metrics: Arc::clone(&self.metrics),
                id,
                file,
                pos: start,
                end: Some(end),
                // An old chunk may be cold on disk: read it on the blocking pool.
                cold: true,
                following: None,
            }
            .into_body();
        }
        Ok(response)
    }
}

/// The `offset` query parameter, if any. Anything but one decimal `offset` is an error.
fn parse_offset(query: Option<&str>) -> Result<Option<u64>, ServeError> {
    let mut offset = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "offset" {
            return Err(ServeError::BadQuery(format!(
                "unknown parameter {:?}: the only one is offset=N",
                key.chars().take(32).collect::<String>()
            )));
        }
        if offset.is_some() {
            return Err(ServeError::BadQuery("offset given twice: give it once".into()));
        }
        let decimal =
            !value.is_empty() && value.len() <= OFFSET_DIGITS_MAX && value.bytes().all(|b| b.is_ascii_digit());
        let n = value
            .parse::<u64>()
            .ok()
            .filter(|_| decimal)
            .ok_or_else(|| ServeError::BadQuery("offset must be a decimal byte count, as in offset=4096".into()))?;
        offset = Some(n);
    }
    Ok(offset)
}

/// Whether `If-None-Match` names this etag (weak comparison, as RFC 9110 says for this header).
fn if_none_match(request: &HeaderMap, etag: &str) -> bool {
    request.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(
        |tag| {
            let tag = tag.trim();
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag
        },
    )
}

/// A single byte range the server honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ByteRange {
    /// `bytes=N-`
    From(u64),
    /// `bytes=N-M`, M inclusive.
    FromTo(u64, u64),
    /// `bytes=-N`: the last N bytes.
    Last(u64),
}

impl ByteRange {
    /// Parse one `Range` value; `None` for forms the server ignores (not bytes, several ranges,
    /// malformed), which HTTP answers with the whole representation.
    fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => number(last).map(ByteRange::Last),
            (false, true) => number(first).map(ByteRange::From),
            (false, false) => {
                let (a, b) = (number(first)?, number(last)?);
                (a <= b).then_some(ByteRange::FromTo(a, b))
            }
            (true, true) => None,
        }
    }

    /// `[start, end)` within a representation of `len` bytes, or `None` if unsatisfiable.
    fn resolve(self, len: u64) -> Option<(u64, u64)> {
        let (start, end) = match self {
            ByteRange::From(n) => (n, len),
            ByteRange::FromTo(a, b) => (a, b.saturating_add(1).min(len)),
            ByteRange::Last(n) => (len.saturating_sub(n), len),
        };
        (start < end).then_some((start, end))
    }
}

/// The `Range` to apply: a single supported range, and `If-Range` (if sent) naming this etag.
fn requested_range(request: &HeaderMap, etag: &str) -> Option<ByteRange> {
    let mut ranges = request.get_all(header::RANGE).iter();
    let (value, None) = (ranges.next()?, ranges.next()) else { return None };
    if let Some(if_range) = request.get(header::IF_RANGE) {
        // Strong comparison: a range of a different representation would splice two chunks.
        if if_range.to_str().map(str::trim).ok() != Some(etag) {
            return None;
        }
    }
    ByteRange::parse(value.to_str().ok()?)
}

/// The bytes of one response, read from the chunk file as hyper asks for them.
struct ChunkBody {
    log: Arc<ChunkLog<DiskStorage>>,
    metrics: Arc<Metrics>,
    id: ChunkId,
    file: Arc<File>,
    pos: u64,
    /// Where the body ends: known for a closed chunk, and once a followed chunk closes.
    end: Option<u64>,
    /// Read on the blocking pool (closed chunks) rather than inline (the open chunk).
    cold: bool,
    following: Option<GaugeUnit>,
}

impl ChunkBody {
    fn into_body(self) -> Body {
        let frames = futures_util::stream::unfold(self, |mut body| async move {
            let next = body.next_bytes().await?;
            Some((next.map(Frame::data), body))
        });
        StreamBody::new(frames).boxed_unsync()
    }

    /// The next piece of the body; `None` at its proper end; an error cuts the connection.
    async fn next_bytes(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            if let Some(end) = self.end {
                if self.pos >= end {
                    return None;
                }
                return Some(self.read_up_to(end).await);
            }
            // Following: take the listener, look again, and only then wait, so no write can
            // slip between the look and the wait.
            let mut listener = None;
            loop {
                let Some(info) = self.log.progress(self.id) else {
                    // Closed and then discarded before this reader looked again. Only closed,
                    // complete chunks are discarded, and the open handle still reads the file:
                    // its length is final.
                    match self.file.metadata() {
                        Ok(meta) => self.end = Some(meta.len()),
                        Err(e) => return Some(Err(e)),
                    }
                    self.following = None;
                    break;
                };
                if info.state == ChunkState::Closed {
                    self.end = Some(info.len);
                    self.following = None;
                    break;
                }
                if info.len > self.pos {
                    return Some(self.read_up_to(info.len).await);
                }
                match listener.take() {
                    None => listener = Some(self.log.listen()),
                    Some(wait) => wait.await,
                }
            }
        }
    }

    /// Read at most [`READ_BYTES_MAX`] bytes from `pos`, never past `limit` (what the log says is
    /// written: bytes beyond may be a write in progress).
    async fn read_up_to(&mut self, limit: u64) -> io::Result<Bytes> {
        let n = (limit - self.pos).min(READ_BYTES_MAX as u64) as usize;
        let pos = self.pos;
        let bytes = if self.cold {
            let file = Arc::clone(&self.file);
            tokio::task::spawn_blocking(move || read_at(&file, pos, n)).await.map_err(io::Error::other)??
        } else {
            read_at(&self.file, pos, n)?
        };
        self.pos += n as u64;
        self.metrics.bytes_served.fetch_add(n as u64, Ordering::Relaxed);
        Ok(bytes)
    }
}

/// Exactly `n` bytes at `pos`: the log said they are written, so a short file is an error.
fn read_at(file: &File, pos: u64, n: usize) -> io::Result<Bytes> {
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, pos)?;
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_chunk::{FsyncPolicy, LogConfig, SystemClock};

    #[test]
    fn byte_ranges_parse_and_resolve() {
        let cases: [(&str, Option<ByteRange>); 12] = [
            ("bytes=0-", Some(ByteRange::From(0))),
            ("bytes=100-", Some(ByteRange::From(100))),
            (" bytes=10-19 ", Some(ByteRange::FromTo(10, 19))),
            ("bytes=-5", Some(ByteRange::Last(5))),
            ("bytes=19-10", None),
            ("bytes=0-1,5-6", None),
            ("bytes=-", None),
            ("bytes=a-", None),
            ("bytes=+1-", None),
            ("items=0-", None),
            ("bytes=99999999999999999999999-", None),
            ("", None),
        ];
        for (text, want) in cases {
            assert_eq!(ByteRange::parse(text), want, "{text:?}");
        }
        let len = 100;
        assert_eq!(ByteRange::From(0).resolve(len), Some((0, 100)));
        assert_eq!(ByteRange::From(99).resolve(len), Some((99, 100)));
        assert_eq!(ByteRange::From(100).resolve(len), None);
        assert_eq!(ByteRange::FromTo(10, 19).resolve(len), Some((10, 20)));
        assert_eq!(ByteRange::FromTo(90, u64::MAX).resolve(len), Some((90, 100)));
        assert_eq!(ByteRange::FromTo(100, 200).resolve(len), None);
        assert_eq!(ByteRange::Last(5).resolve(len), Some((95, 100)));
        assert_eq!(ByteRange::Last(500).resolve(len), Some((0, 100)));
        assert_eq!(ByteRange::Last(0).resolve(len), None);
    }

    #[test]
    fn offsets_are_one_decimal_parameter() {
        assert_eq!(parse_offset(None).ok(), Some(None));
        assert_eq!(parse_offset(Some("")).ok(), Some(None));
        assert_eq!(parse_offset(Some("offset=0")).ok(), Some(Some(0)));
        assert_eq!(parse_offset(Some("offset=4096")).ok(), Some(Some(4096)));
        assert_eq!(parse_offset(Some("offset=18446744073709551615")).ok(), Some(Some(u64::MAX)));
        for bad in [
            "offset",
            "offset=",
            "offset=x",
            "offset=-1",
            "offset=+1",
            "offset=1.5",
            "offset=0x10",
            "offset=1&offset=1",
            "limit=5",
            "offset=18446744073709551616",
        ] {
            assert!(matches!(parse_offset(Some(bad)), Err(ServeError::BadQuery(_))), "{bad:?}");
        }
    }

    #[test]
    fn if_none_match_uses_weak_comparison() {
        let etag = "\"s-C-10\"";
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            if_none_match(&h, etag)
        };
        assert!(with("\"s-C-10\""));
        assert!(with("W/\"s-C-10\""));
        assert!(with("\"x\", \"s-C-10\""));
        assert!(with("*"));
        assert!(!with("\"s-C-11\""));
        assert!(!if_none_match(&HeaderMap::new(), etag));
    }

    #[test]
    fn rejection_events_admit_ten_a_second_and_report_the_rest() {
        let mut limit = RejectEvents::default();
        let t0 = Instant::now();
        for _ in 0..REJECT_EVENTS_PER_WINDOW {
            assert_eq!(limit.admit(t0), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(limit.admit(t0 + Duration::from_millis(999)), None);
        }
        assert_eq!(limit.admit(t0 + REJECT_EVENT_WINDOW), Some(5), "the next window reports what was left out");
        assert_eq!(limit.admit(t0 + REJECT_EVENT_WINDOW), Some(0));
    }

    fn chunks() -> (tempfile::TempDir, Chunks) {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = LogConfig {
            chunk_bytes_max: 64 * 1024,
            line_bytes_max: 4096,
            fsync: FsyncPolicy::Never,
            ..LogConfig::default()
        };
        let storage = DiskStorage::open(dir.path()).expect("data dir");
        let (log, _) = ChunkLog::open(storage, config, Arc::new(SystemClock)).expect("log");
        (dir, Chunks::new(Arc::new(log), Arc::new(Metrics::default())))
    }

    fn status(chunks: &Chunks, method: &str, uri: &str) -> StatusCode {
        let req = Request::builder().method(method).uri(uri).body(()).expect("request");
        let response = chunks.respond(&req);
        assert_eq!(response.headers().get(HEADER_STREAM_ID), Some(&chunks.stream_id), "{uri}");
        response.status()
    }

    #[test]
    fn routes_map_to_statuses() {
        let (_dir, chunks) = chunks();
        let open = chunks.log.open_chunk_id().expect("open chunk");
        let len = chunks.log.progress(open).expect("open chunk").len;
        let cases = [
            ("GET", "/chunk/".to_string(), 200),
            ("HEAD", "/chunk/".to_string(), 200),
            ("GET", format!("/chunk/{open}"), 200),
            ("GET", format!("/chunk/{open}?offset={len}"), 200),
            ("GET", format!("/chunk/{open}?offset={}", len + 1), 416),
            ("GET", format!("/chunk/{open}?offset=x"), 400),
            ("GET", "/chunk/Z".to_string(), 404),
            ("GET", "/chunk/11".to_string(), 404),
            ("GET", "/chunk/../x".to_string(), 400),
            ("GET", "/chunk/%2e%2e".to_string(), 400),
            ("GET", "/chunk/abc".to_string(), 400),
            ("GET", "/chunk/CCCCCCCCCCCCCCCCC".to_string(), 400),
            ("GET", "/chunk//".to_string(), 400),
            ("GET", "/chunk/?offset=1".to_string(), 400),
            ("GET", "/chunk".to_string(), 404),
            ("GET", "/".to_string(), 404),
            ("PUT", "/chunk/".to_string(), 405),
            ("DELETE", format!("/chunk/{open}"), 405),
        ];
        for (method, uri, want) in cases {
            assert_eq!(status(&chunks, method, &uri), want, "{method} {uri}");
        }
    }

    #[test]
    fn documented_listing_example_is_what_the_listing_writes() {
        let doc_example = "TLKQ9F1\nTLKQ9F2\nTLKQ9G7\n";
        let ids: Vec<ChunkId> =
            doc_example.lines().map(|l| ChunkId::parse(l).expect("documented ids are valid")).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
        let (_dir, chunks) = chunks();
        let response = chunks.listing();
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(CONTENT_TYPE_TEXT.as_bytes())
        );
        let expected: String = chunks.log.list().iter().map(|c| format!("{}\n", c.id)).collect();
        let body = futures_util::FutureExt::now_or_never(response.into_body().collect())
            .expect("a listing body is ready at once")
            .expect("a listing body cannot fail")
            .to_bytes();
        assert_eq!(body, expected.as_bytes());
    }
}
