//! Helpers for the chunk-server tests: a real chunk log and certificates in a temp dir, the server
//! on `127.0.0.1:0`, mTLS clients (hyper over tokio-rustls), and deadline helpers.
//! Nothing here sleeps to synchronise: waits poll a condition under a generous deadline.

#![allow(dead_code)] // each test uses a different part

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use sluice_chunk::{ChunkId, ChunkLog, ChunkState, DiskStorage, FsyncPolicy, LogConfig, SystemClock};
use sluice_supervisor::metrics::Metrics;
use sluice_supervisor::serve::{serve_chunks, ServeConfig};
use sluice_tls::{CertSpec, Generated, ServerTls, Trust};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;

/// Every wait in these tests: generous for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Await `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Poll `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    within(what, async {
        while !cond() {
            tokio::time::sleep(POLL_EVERY).await;
        }
    })
    .await
}

/// A small log, so that tests can fill and rotate chunks quickly.
pub fn small_log_config() -> LogConfig {
    LogConfig { chunk_bytes_max: 64 * 1024, line_bytes_max: 4096, fsync: FsyncPolicy::Never, ..LogConfig::default() }
}

/// Client names in every test's certificate set.
pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";

/// A chunk server over a real log, with real certificates.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub certs: Generated,
    pub log: Arc<ChunkLog<DiskStorage>>,
    pub metrics: Arc<Metrics>,
    pub tls: ServerTls,
    pub addr: SocketAddr,
    pub reloads: watch::Sender<u64>,
    pub shutdown: watch::Sender<bool>,
    pub server: JoinHandle<()>,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Fixture::start_with(small_log_config(), ServeConfig::default()).await
    }

    pub async fn start_with(log_config: LogConfig, serve_config: ServeConfig) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let spec = CertSpec { clients: vec![ALICE.into(), BOB.into()], ..CertSpec::default() };
        let certs = sluice_tls::generate(&dir.path().join("certs"), &spec).unwrap();
        let (log, _) = ChunkLog::open(DiskStorage::open(&data).unwrap(), log_config, Arc::new(SystemClock)).unwrap();
        let log = Arc::new(log);
        let metrics = Arc::new(Metrics::default());
        let tls = ServerTls::load(&certs.server_cert, &certs.server_key, &certs.allow_list).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reloads, reloads_rx) = watch::channel(0u64);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let server = tokio::spawn(serve_chunks(
            listener,
            tls.clone(),
            Arc::clone(&log),
            Arc::clone(&metrics),
            serve_config,
            reloads_rx,
            shutdown_rx,
        ));
        Fixture { dir, data, certs, log, metrics, tls, addr, reloads, shutdown, server }
    }

    /// Certificate and key of a client from the generated set.
    pub fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        let c = self.certs.clients.iter().find(|c| c.0 == name).unwrap();
        (c.1.clone(), c.2.clone())
    }

    /// A client config with `name`'s certificate, trusting the generated CA.
    pub fn client(&self, name: &str) -> Arc<ClientConfig> {
        let (cert, key) = self.client_files(name);
        sluice_tls::client_config(&cert, &key, &Trust::CaFile(self.certs.ca.clone())).unwrap()
    }

    /// A client config with these files, trusting the generated CA.
    pub fn client_with(&self, cert: &Path, key: &Path) -> Arc<ClientConfig> {
        sluice_tls::client_config(cert, key, &Trust::CaFile(self.certs.ca.clone())).unwrap()
    }

    /// A client config that trusts the server but presents no certificate.
    pub fn anonymous_client(&self) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.certs.ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(sluice_tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![sluice_tls::ALPN_HTTP1.to_vec()];
        Arc::new(config)
    }

    /// A TLS connection to the server (which, in TLS 1.3, may still reject the certificate: that
    /// shows on the first read).
    pub async fn connect(&self, config: Arc<ClientConfig>) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(self.addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    }

    /// An HTTP/1.1 connection over mTLS.
    pub async fn http(&self, config: Arc<ClientConfig>) -> SendRequest<Empty<Bytes>> {
        let tls = within("tls connect", self.connect(config)).await.unwrap();
        handshake(tls).await
    }

    /// An HTTP/1.1 connection over mTLS whose socket receive buffer is small, so that a client
    /// that stops reading pushes back on the server soon.
    pub async fn http_small_buffer(&self, config: Arc<ClientConfig>) -> SendRequest<Empty<Bytes>> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(64 * 1024).unwrap();
        let tcp = within("tcp connect", socket.connect(self.addr)).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let tls = within("tls connect", tokio_rustls::TlsConnector::from(config).connect(name, tcp)).await.unwrap();
        handshake(tls).await
    }

    /// The path of a chunk's file, whatever its state.
    pub fn chunk_path(&self, id: ChunkId) -> PathBuf {
        let closed = self.data.join(format!("{id}.chunk"));
        if closed.exists() {
            closed
        } else {
            self.data.join(format!("{id}.open"))
        }
    }

    pub fn chunk_bytes(&self, id: ChunkId) -> Vec<u8> {
        std::fs::read(self.chunk_path(id)).unwrap()
    }

    pub fn open_id(&self) -> ChunkId {
        self.log.open_chunk_id().unwrap()
    }

    /// Append event lines until the open chunk rotates; returns the id of the chunk that closed.
    pub fn rotate(&self) -> ChunkId {
        let open = self.open_id();
        let line = event_line(&"x".repeat(900));
        while self.log.progress(open).unwrap().state == ChunkState::Open {
            self.log.append(line.as_bytes()).unwrap();
        }
        open
    }

    /// Whether the open chunk holds a line containing all of `needles`.
    pub fn open_chunk_has(&self, needles: &[&str]) -> bool {
        let Some(id) = self.log.open_chunk_id() else { return false };
        let text = String::from_utf8(self.chunk_bytes(id)).unwrap();
        text.lines().any(|line| needles.iter().all(|n| line.contains(n)))
    }
}

/// HTTP/1.1 over an established TLS stream.
async fn handshake(tls: TlsStream<TcpStream>) -> SendRequest<Empty<Bytes>> {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// A valid event line with `msg`.
pub fn event_line(msg: &str) -> String {
    format!("{{\"time_ns\":1700000000000000000,\"msg\":\"{msg}\"}}\n")
}

/// Send a request with these headers.
pub async fn request(
    sender: &mut SendRequest<Empty<Bytes>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> hyper::Result<Response<Incoming>> {
    let mut req = Request::builder().method(method).uri(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("response head", async {
        // The previous response may still be finishing on this connection.
        sender.ready().await?;
        sender.send_request(req.body(Empty::new()).unwrap()).await
    })
    .await
}

pub async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> Response<Incoming> {
    request(sender, "GET", path, &[]).await.unwrap()
}

/// The whole body; fails the test if it does not end properly.
pub async fn body_bytes(response: Response<Incoming>) -> Vec<u8> {
    within("body", response.into_body().collect()).await.unwrap().to_bytes().to_vec()
}

pub fn header<'a>(response: &'a Response<Incoming>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

/// Read body frames into `got` until it holds at least `len` bytes.
pub async fn read_at_least(body: &mut Incoming, got: &mut Vec<u8>, len: usize) {
    within("body frames", async {
        while got.len() < len {
            let frame = body.frame().await.expect("body ended early").expect("body failed");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await
}

/// Read body frames into `got` until it contains `needle`.
pub async fn read_until_contains(body: &mut Incoming, got: &mut Vec<u8>, needle: &str) {
    within("body frames", async {
        while !String::from_utf8_lossy(got).contains(needle) {
            let frame = body.frame().await.expect("body ended early").expect("body failed");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
    })
    .await
}

/// Read the rest of the body; Ok only if it ended properly.
pub async fn read_to_end(body: &mut Incoming, got: &mut Vec<u8>) -> Result<(), hyper::Error> {
    within("body end", async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                got.extend_from_slice(&data);
            }
        }
        Ok(())
    })
    .await
}

/// Whether an error (or one of its sources) is a TLS error from rustls.
pub fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        // io::Error::source skips the error it wraps: look inside it.
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if inner.is::<rustls::Error>() {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Connect with `config` and check the server refuses it at the TLS level: either the handshake
/// fails, or (TLS 1.3, where the server judges the client certificate after the client is done)
/// the first read gets an alert. Never any HTTP.
pub async fn expect_tls_refusal(fixture: &Fixture, config: Arc<ClientConfig>) {
    let err = match within("tls connect", fixture.connect(config)).await {
        Err(e) => e,
        Ok(mut tls) => {
            let mut buf = [0u8; 64];
            match within("alert", tls.read(&mut buf)).await {
                Err(e) => e,
                Ok(n) => panic!("server sent {n} bytes instead of refusing the handshake: {:?}", &buf[..n]),
            }
        }
    };
    assert!(is_tls_error(&err), "expected a TLS alert, got {err:?}");
}
