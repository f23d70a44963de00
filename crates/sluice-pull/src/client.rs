//! The HTTPS client for one source: a fresh mutual-TLS connection per request (hyper 1 HTTP/1.1
//! over tokio-rustls), TCP keepalive, a connect deadline, and body reads with the deadline the
//! caller picks (a stall bound for closed chunks, a long idle bound for live streams).
//! It does not retry, back off or interpret chunk responses: the puller does.
//!
//! Why no connection pool: a request is either a listing or a whole chunk (up to 1 MB) or a live
//! stream lasting up to the chunk age; one TLS handshake per request costs well under a
//! millisecond of CPU beside that, and a fresh connection never inherits a half-dead socket.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, HOST, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_rustls::TlsConnector;

use crate::config::{Endpoint, SourceConfig};

/// DNS, TCP connect and TLS handshake together must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A response (headers, or the next bytes of a closed chunk or a listing) that makes no progress
/// for this long is abandoned: the data exists, so silence means a stuck server or network.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// A live stream may be silent while the child writes nothing, but the supervisor closes a chunk
/// with data after 10 minutes at most; past 11 minutes of silence the puller reconnects (cheaply,
/// with `?offset=`). TCP keepalive finds dead peers sooner.
pub const LIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(11 * 60);
/// Keepalive probes start after this much silence on a connection...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// ...and repeat this often (the kernel's probe count, 9 on Linux, then declares the peer dead).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Largest response head hyper buffers (headers of a chunk response are a few hundred bytes).
const READ_BUF_BYTES_MAX: usize = 64 * 1024;
const USER_AGENT_VALUE: &str = concat!("sluice-store/", env!("CARGO_PKG_VERSION"));

/// The deadlines a client applies; [`Timeouts::default`] is the documented set, tests shorten them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub stall: Duration,
    pub live_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: CONNECT_TIMEOUT, stall: STALL_TIMEOUT, live_idle: LIVE_IDLE_TIMEOUT }
    }
}

/// A class of failure, for the per-source `errors by kind` counters and the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The host name did not resolve.
    Dns,
    /// No TCP connection (refused, unreachable, timed out).
    Connect,
    /// The TLS handshake failed: our certificate refused, the server's not trusted or not pinned.
    Tls,
    /// The server's bytes are not HTTP.
    Http,
    /// An HTTP status the puller has no use for (5xx, 400, 403...).
    Status,
    /// HTTP, but not the supervisor API: a bad listing, missing or wrong `Sluice-*` headers.
    Protocol,
    /// A response made no progress within its bound.
    Stall,
    /// The connection broke mid-response (a body cut without its final empty chunk).
    Broken,
    /// The sink refused a batch.
    Sink,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Dns,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Http,
        ErrorKind::Status,
        ErrorKind::Protocol,
        ErrorKind::Stall,
        ErrorKind::Broken,
        ErrorKind::Sink,
    ];

    /// A stable snake_case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Status => "status",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Stall => "stall",
            ErrorKind::Broken => "broken",
            ErrorKind::Sink => "sink",
        }
    }

    /// Position in [`ErrorKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A failed request or response, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub kind: ErrorKind,
    pub message: String,
}

impl FetchError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FetchError {
        FetchError { kind, message: message.into() }
    }
}

/// Building a client failed: the certificate, key or trust file is unusable.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name:?}: {error}")]
pub struct ClientError {
    pub source_name: String,
    pub error: sluice_tls::TlsError,
}

/// An HTTPS client for one source.
pub struct SourceClient {
    endpoint: Endpoint,
    connector: TlsConnector,
    server_name: ServerName<'static>,
    host_header: HeaderValue,
    timeouts: Timeouts,
}

impl fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceClient").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

impl SourceClient {
    /// Loads the source's client certificate, key and trust.
    pub fn new(src: &SourceConfig) -> Result<SourceClient, ClientError> {
        let config = sluice_tls::client_config(&src.cert, &src.key, &src.trust)
            .map_err(|error| ClientError { source_name: src.name.to_string(), error })?;
        let endpoint = src.endpoint.clone();
        let server_name = match endpoint.host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(endpoint.host.clone()).unwrap_or_else(|_| {
                // The config check only lets DNS-like names through; a name rustls still refuses
                // would fail every handshake, so fall back to a placeholder that fails the same way
                // with a readable certificate error.
                ServerName::try_from("invalid.invalid").expect("a valid DNS name")
            }),
        };
        let host_header = HeaderValue::from_str(&endpoint.authority())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid.invalid"));
        Ok(SourceClient {
            endpoint,
            connector: TlsConnector::from(config),
            server_name,
            host_header,
            timeouts: Timeouts::default(),
        })
    }

    /// The same client with other deadlines.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> SourceClient {
        self.timeouts = timeouts;
        self
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `GET {base_path}{path_and_query}` on a new connection; returns once the response head is in.
    pub async fn get(&self, path_and_query: &str) -> Result<Response, FetchError> {
        let deadline = Instant::now() + self.timeouts.connect;
        let tls = self.connect(deadline).await?;
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUF_BYTES_MAX)
            .handshake::<_, Empty<Bytes>>(TokioIo::new(tls))
            .await
            .map_err(|e| classify(&e, ErrorKind::Http))?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            // Errors surface through the response and its body; nothing to do with them here.
            let _ = conn.await;
        }));
        let uri = format!("{}{}", self.endpoint.base_path, path_and_query);
        let request = Request::get(uri.as_str())
            .header(HOST, self.host_header.clone())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .body(Empty::new())
            .map_err(|e| FetchError::new(ErrorKind::Protocol, format!("cannot build request for {uri}: {e}")))?;
        let response = timeout(self.timeouts.stall, sender.send_request(request))
            .await
            .map_err(|_| {
                FetchError::new(
                    ErrorKind::Stall,
                    format!("no response to GET {uri} within {} s", self.timeouts.stall.as_secs()),
                )
            })?
            .map_err(|e| classify(&e, ErrorKind::Http))?;
        let (parts, body) = response.into_parts();
        Ok(Response { status: parts.status, headers: parts.headers, body, _conn: conn })
    }

    async fn connect(&self, deadline: Instant) -> Result<tokio_rustls::client::TlsStream<TcpStream>, FetchError> {
        let host = self.endpoint.host.as_str();
        let port = self.endpoint.port;
        let late = |what: &str| {
            FetchError::new(
                ErrorKind::Connect,
                format!("{what} {} took longer than {} s", self.endpoint, self.timeouts.connect.as_secs()),
            )
        };
        let addrs: Vec<_> = timeout_at(deadline, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| FetchError::new(ErrorKind::Dns, format!("resolving {host} timed out")))?
            .map_err(|e| FetchError::new(ErrorKind::Dns, format!("cannot resolve {host}: {e}")))?
            .collect();
        let mut last_error = FetchError::new(ErrorKind::Dns, format!("{host} resolves to no address"));
        let mut stream = None;
        for addr in addrs {
            match timeout_at(deadline, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(e)) => {
                    last_error = FetchError::new(ErrorKind::Connect, format!("cannot connect to {addr}: {e}"))
                }
                Err(_) => return Err(late("connecting to")),
            }
        }
        let stream = stream.ok_or(last_error)?;
        let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE).with_interval(KEEPALIVE_INTERVAL);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(|e| FetchError::new(ErrorKind::Connect, format!("cannot enable TCP keepalive: {e}")))?;
        // Requests are tiny and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        timeout_at(deadline, self.connector.connect(self.server_name.clone(), stream))
            .await
            .map_err(|_| late("the TLS handshake with"))?
            .map_err(|e| classify(&e, ErrorKind::Tls))
    }
}

/// A response whose head has arrived; its body is read frame by frame.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    /// Dropping the response drops the connection.
    _conn: AbortOnDrop,
}

impl Response {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next bytes of the body, waiting at most `idle`; `None` once the body ended properly.
    pub async fn next_data(&mut self, idle: Duration) -> Result<Option<Bytes>, FetchError> {
        loop {
            let frame = match timeout(idle, self.body.frame()).await {
                Ok(frame) => frame,
                Err(_) => {
                    return Err(FetchError::new(
                        ErrorKind::Stall,
                        format!("the response made no progress for {} s", idle.as_secs()),
                    ))
                }
            };
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(classify(&e, ErrorKind::Broken)),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                    // Trailers and empty frames carry nothing for us.
                }
            }
        }
    }

    /// The next bytes if the body has them ready now, without waiting: `None` when it would have
    /// to wait, `Some(Ok(None))` when it ended properly.
    pub fn ready_data(&mut self) -> Option<Result<Option<Bytes>, FetchError>> {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            match Pin::new(&mut self.body).poll_frame(&mut cx) {
                Poll::Pending => return None,
                Poll::Ready(None) => return Some(Ok(None)),
                Poll::Ready(Some(Err(e))) => return Some(Err(classify(&e, ErrorKind::Broken))),
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Some(Ok(Some(data)));
                        }
                    }
                }
            }
        }
    }

    /// The whole body, at most `bytes_max`, with `stall` as the bound between frames.
    pub async fn read_all(&mut self, bytes_max: usize, stall: Duration) -> Result<Bytes, FetchError> {
        let mut out = Vec::new();
        while let Some(data) = self.next_data(stall).await? {
            if out.len() + data.len() > bytes_max {
                return Err(FetchError::new(
                    ErrorKind::Protocol,
                    format!("response larger than {bytes_max} bytes; is the URL a sluice supervisor?"),
                ));
            }
            out.extend_from_slice(&data);
        }
        Ok(Bytes::from(out))
    }
}

/// Aborts the connection task when the response is dropped, so an abandoned stream (stall,
/// shutdown, reconnect) closes its socket at once.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sorts an error from hyper or tokio-rustls into a kind, by what is in its source chain, with a
/// message made of the whole chain.
fn classify(err: &(dyn StdError + 'static), fallback: ErrorKind) -> FetchError {
    let mut kind = None;
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            // io::Error::source skips the wrapped error itself: look inside explicitly.
            if io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) {
                kind = Some(ErrorKind::Tls);
            } else if kind.is_none() {
                kind = Some(match io.kind() {
                    std::io::ErrorKind::InvalidData => ErrorKind::Tls,
                    std::io::ErrorKind::TimedOut => ErrorKind::Stall,
                    _ => fallback,
                });
            }
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            kind = Some(ErrorKind::Tls);
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_parse() || h.is_parse_status() || h.is_parse_too_large() {
                kind = Some(ErrorKind::Http);
            } else if h.is_incomplete_message() && kind.is_none() {
                kind = Some(ErrorKind::Broken);
            }
        }
        current = e.source();
    }
    FetchError::new(kind.unwrap_or(fallback), parts.join(": "))
}

/// Races `fut` against shutdown; `None` if shutdown came first (or the sender is gone).
pub(crate) async fn unless_shutdown<F: Future>(
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
    fut: F,
) -> Option<F::Output> {
    if *shutdown.borrow() {
        return None;
    }
    tokio::select! {
        out = fut => Some(out),
        _ = shutdown.wait_for(|stop| *stop) => None,
    }
}
