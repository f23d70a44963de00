//! A small HTTP/1.1 client for the store's query API: the store URL, one connection per request
//! (plain TCP for `http://`, rustls for `https://`), the bearer token, deadlines, and a body read
//! frame by frame (trailers kept). It does not retry, interpret statuses or parse bodies: the
//! subcommands do.
//!
//! Why one connection per request: a CLI run makes one request (a tail makes one per reconnect);
//! a pool would only add state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsConnector;

/// Largest response head hyper buffers; API headers (stats included) are well under a kilobyte.
const READ_BUF_BYTES_MAX: usize = 64 * 1024;
const USER_AGENT_VALUE: &str = concat!("sluice-cli/", env!("CARGO_PKG_VERSION"));
/// Where the usual Linux and BSD distributions keep the system's CA bundle, tried in order when
/// an https URL is given without `--ca` (after `SSL_CERT_FILE`).
const SYSTEM_CA_FILES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

/// A store URL: `http://HOST[:PORT][/PATH]` or `https://…`, the path being a prefix the API is
/// mounted under (behind a proxy), without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Without IPv6 brackets.
    pub host: String,
    pub port: u16,
    pub base_path: String,
    /// `HOST:PORT` as written, for the `Host` header.
    authority: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let example = "write it like http://127.0.0.1:7800 or https://store.example.com:7800";
        let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL ({e}); {example}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("{url:?}: scheme {other:?} is not http or https; {example}")),
            None => return Err(format!("{url:?} has no scheme; {example}")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host; {example}"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: a user name in the URL is not used; give the token with --token"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: the URL must not have a query string; {example}"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Endpoint {
            tls,
            host,
            port,
            base_path: uri.path().trim_end_matches('/').to_string(),
            authority: authority.as_str().to_string(),
        })
    }
}

/// A request failed before a response head arrived, or while its body was read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the TLS handshake with {url} failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("no answer from {url} within {}", seconds(*.after))]
    Timeout { url: String, after: Duration },
    #[error("{url} broke off: {reason}")]
    Broken { url: String, reason: String },
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// A client for one store.
pub struct Client {
    endpoint: Endpoint,
    url: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    host_header: HeaderValue,
    authorization: Option<HeaderValue>,
}

impl Client {
    /// `ca` is a PEM file of trusted certificates for https (default: the system's CA bundle).
    pub fn new(url: &str, token: Option<&str>, ca: Option<&Path>) -> anyhow::Result<Client> {
        let endpoint = Endpoint::parse(url).map_err(|e| anyhow::anyhow!("--url: {e}"))?;
        let tls = if endpoint.tls {
            let config = tls_config(ca)?;
            let server_name = match endpoint.host.parse::<std::net::IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(endpoint.host.clone())
                    .map_err(|_| anyhow::anyhow!("--url: {:?} is not a host name TLS accepts", endpoint.host))?,
            };
            Some((TlsConnector::from(config), server_name))
        } else {
            // --ca (often from SLUICE_CA) has nothing to do for plain HTTP on loopback.
            None
        };
        let host_header = HeaderValue::from_str(&endpoint.authority)
            .map_err(|_| anyhow::anyhow!("--url: {:?} cannot be sent as a Host header", endpoint.authority))?;
        let authorization = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    anyhow::anyhow!(
                        "the token holds characters an HTTP header cannot carry; check --token or the token file"
                    )
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Client { url: url.trim_end_matches('/').to_string(), endpoint, tls, host_header, authorization })
    }

    /// The URL as the user gave it, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one request on a new connection and returns once the response head is in; the
    /// connection, the TLS handshake and the head must all come before `deadline`.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        accept: &str,
        body: Option<(&str, Bytes)>,
        deadline: Instant,
    ) -> Result<Response, HttpError> {
        let started = Instant::now();
        let late = || HttpError::Timeout { url: self.url.clone(), after: deadline.saturating_duration_since(started) };
        let uri = format!("{}{}", self.endpoint.base_path, path_and_query);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri.as_str())
            .header(HOST, self.host_header.clone())
            .header(USER_AGENT, USER_AGENT_VALUE)
            .header(ACCEPT, accept);
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        let body = match body {
            Some((content_type, bytes)) => {
                builder = builder.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let request = builder.body(Full::new(body)).map_err(|e| HttpError::Broken {
            url: self.url.clone(),
            reason: format!("cannot build the request for {uri}: {e}"),
        })?;
        let tcp = timeout_at(deadline, self.connect_tcp()).await.map_err(|_| late())??;
        // Requests are small and a person is waiting.
        let _ = tcp.set_nodelay(true);
        let exchange = async {
            match &self.tls {
                None => self.exchange(tcp, request).await,
                Some((connector, name)) => {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| HttpError::Tls { url: self.url.clone(), reason: error_chain(&e) })?;
                    self.exchange(tls, request).await
                }
            }
        };
        timeout_at(deadline, exchange).await.map_err(|_| late())?
    }

    async fn connect_tcp(&self) -> Result<TcpStream, HttpError> {
        let host = self.endpoint.host.as_str();
        let addrs: Vec<_> = tokio::net::lookup_host((host, self.endpoint.port))
            .await
            .map_err(|e| HttpError::Resolve { host: host.to_string(), reason: e.to_string() })?
            .collect();
        let mut last = HttpError::Resolve { host: host.to_string(), reason: "no address".to_string() };
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = HttpError::Connect { url: self.url.clone(), reason: e.to_string() },
            }
        }
        Err(last)
    }

    async fn exchange<S>(&self, io: S, request: Request<Full<Bytes>>) -> Result<Response, HttpError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let broken = |e: hyper::Error| HttpError::Broken { url: self.url.clone(), reason: error_chain(&e) };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUF_BYTES_MAX)
            .handshake::<_, Full<Bytes>>(TokioIo::new(io))
            .await
            .map_err(broken)?;
        let conn = AbortOnDrop(tokio::spawn(async move {
            // Errors surface through the response and its body.
            let _ = conn.await;
        }));
        let response = sender.send_request(request).await.map_err(broken)?;
        let (parts, body) = response.into_parts();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
            trailers: None,
            url: self.url.clone(),
            _conn: conn,
        })
    }
}

/// The TLS settings for https: TLS 1.3 or 1.2 with the ring provider, ALPN http/1.1, no client
/// certificate (the token is the credential), trusting `ca` or the system's bundle.
fn tls_config(ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
    let (path, origin) = match ca {
        Some(p) => (p.to_path_buf(), "--ca"),
        None => match std::env::var_os("SSL_CERT_FILE") {
            Some(p) => (p.into(), "SSL_CERT_FILE"),
            None => match SYSTEM_CA_FILES.iter().map(Path::new).find(|p| p.is_file()) {
                Some(p) => (p.to_path_buf(), "the system CA bundle"),
                None => anyhow::bail!(
                    "no CA bundle found for https: pass --ca FILE (for example ca.pem from `sluice certs`) or set SLUICE_CA"
                ),
            },
        },
    };
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&path)
        .map_err(|e| anyhow::anyhow!("{origin} {}: {e}; give a PEM file of CA certificates", path.display()))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| anyhow::anyhow!("{origin} {}: {e}; give a PEM file of CA certificates", path.display()))?;
        // A bundle may hold certificates rustls cannot use as anchors; the usable ones suffice.
        let _ = roots.add(cert);
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "{origin} {} holds no usable CA certificate; give a PEM file such as ca.pem from `sluice certs`",
        path.display()
    );
    let config = ClientConfig::builder_with_provider(sluice_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("cannot set up TLS 1.3 and 1.2: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = vec![sluice_tls::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// A response whose head has arrived; the body is read frame by frame.
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    trailers: Option<HeaderMap>,
    url: String,
    /// Dropping the response closes the connection.
    _conn: AbortOnDrop,
}

impl Response {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer (a header sent after the body), once the body has been read to its end.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.as_ref()?.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next bytes of the body; `None` once it ended properly.
    pub async fn next_data(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(HttpError::Broken { url: self.url.clone(), reason: error_chain(&e) }),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => return Ok(Some(data)),
                    Ok(_) => {}
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers.get_or_insert_with(HeaderMap::new).extend(trailers);
                        }
                    }
                },
            }
        }
    }

    /// The body up to `bytes_max` (the rest is read and dropped), for error answers.
    pub async fn read_to_end(&mut self, bytes_max: usize) -> Result<Vec<u8>, HttpError> {
        let mut out = Vec::new();
        while let Some(data) = self.next_data().await? {
            let room = bytes_max.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
        }
        Ok(out)
    }
}

/// Aborts the connection task when the response is dropped, so an abandoned response closes its
/// socket at once.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An error and its sources as one line, repeated parts left out.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last().is_none_or(|last| !last.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// `key=value&…` with everything but unreserved characters percent-encoded (RFC 3986).
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("http://127.0.0.1:7800").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.base_path.as_str()), (false, "127.0.0.1", 7800, ""));
        let e = Endpoint::parse("https://[::1]:8443/sluice/").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.base_path.as_str()), (true, "::1", 8443, "/sluice"));
        assert_eq!(e.authority, "[::1]:8443");
        assert_eq!(Endpoint::parse("https://store.example").unwrap().port, 443);
        assert_eq!(Endpoint::parse("http://store.example").unwrap().port, 80);
        for bad in ["127.0.0.1:7800", "ftp://x", "http://u:p@x", "http://x/?a=1", "http://"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert!(Endpoint::parse("127.0.0.1:7800").unwrap_err().contains("write it like http://127.0.0.1:7800"));
    }

    #[test]
    fn query_strings_encode_everything_reserved() {
        assert_eq!(
            query_string(&[("q", "level:warn \"a b\" -x:1 é&=+"), ("since", "1h")]),
            "q=level%3Awarn%20%22a%20b%22%20-x%3A1%20%C3%A9%26%3D%2B&since=1h"
        );
    }

    #[test]
    fn timeouts_read_in_seconds() {
        let e = HttpError::Timeout { url: "http://x".into(), after: Duration::from_millis(1500) };
        assert_eq!(e.to_string(), "no answer from http://x within 1.5 s");
    }
}
