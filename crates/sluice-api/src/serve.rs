//! The store's listener: HTTP/1.1 on `listen`, plain or over TLS, every request answered by
//! [`Api::handle`]; and the TLS config built from `[api] tls_cert`/`tls_key`. It does not
//! decide whether TLS is needed (the binary refuses plain HTTP off loopback).
//!
//! Bounds: at most [`CONNECTIONS_MAX`] connections at once (further ones wait in the kernel's
//! backlog), a request head within [`HEADER_READ_TIMEOUT`], a TLS handshake within
//! [`TLS_HANDSHAKE_TIMEOUT`]. At shutdown the listener stops accepting, tails end, requests in
//! flight get [`SHUTDOWN_GRACE`] to finish, and then their connections are closed.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::Api;

/// Connections served at once.
pub const CONNECTIONS_MAX: usize = 512;
/// A request head must arrive within this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A TLS handshake must finish within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long requests in flight may run on after shutdown begins.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of file descriptors, most likely) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Largest certificate or key file read.
const PEM_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Serves `api` on `listener` until `shutdown` turns true (or its sender is dropped); with
/// `tls`, HTTPS. Returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = shutdown.wait_for(|&s| s) => break,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|&s| s) => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, _)) => {
                connections.spawn(connection(stream, api.clone(), acceptor.clone(), shutdown.clone(), permit));
            }
            Err(_) => tokio::time::sleep(ACCEPT_ERROR_PAUSE).await,
        }
    }
    drop(listener);
    api.stop_tails();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

async fn connection(
    stream: TcpStream,
    api: Arc<Api>,
    acceptor: Option<TlsAcceptor>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    // Tail rows and small answers should leave at once, not wait for more to fill a packet.
    let _ = stream.set_nodelay(true);
    match acceptor {
        None => http(TokioIo::new(stream), api, shutdown).await,
        Some(acceptor) => {
            if let Ok(Ok(tls)) = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                http(TokioIo::new(tls), api, shutdown).await;
            }
        }
    }
}

async fn http<I>(io: TokioIo<I>, api: Arc<Api>, mut shutdown: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|&s| s) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Why the API's TLS config cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("cannot read {}: {source}; check [api] tls_cert/tls_key in store.toml and the file's permissions", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is {size_bytes} bytes, more than a certificate or key file has; check that [api] names the right file", path.display())]
    TooLarge { path: PathBuf, size_bytes: u64 },
    #[error("{}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Key { path: PathBuf, message: String },
    #[error("cannot use key {} with certificate {}: {source}; give the key that belongs to the certificate", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

fn read_pem(path: &Path) -> Result<Vec<u8>, ApiTlsError> {
    let read_err = |source| ApiTlsError::Read { path: path.to_path_buf(), source };
    let size_bytes = std::fs::metadata(path).map_err(read_err)?.len();
    if size_bytes > PEM_FILE_BYTES_MAX {
        return Err(ApiTlsError::TooLarge { path: path.to_path_buf(), size_bytes });
    }
    std::fs::read(path).map_err(read_err)
}

/// The server config of the API: the certificate chain in `cert` (PEM, the server's own
/// certificate first) with the key in `key`; no client certificates (tokens authenticate);
/// TLS 1.3 and 1.2, ALPN `http/1.1`, the ring provider like every sluice config.
pub fn tls_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ApiTlsError> {
    let cert_bytes = read_pem(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes).collect::<Result<Vec<_>, _>>().map_err(|e| {
        ApiTlsError::Certificate {
            path: cert.to_path_buf(),
            message: format!("not a valid PEM file ({e}); give the certificate in PEM form"),
        }
    })?;
    if chain.is_empty() {
        return Err(ApiTlsError::Certificate {
            path: cert.to_path_buf(),
            message: "no certificate found; expected a '-----BEGIN CERTIFICATE-----' block (is it the key file?)"
                .to_string(),
        });
    }
    let key_bytes = read_pem(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| ApiTlsError::Key {
        path: key.to_path_buf(),
        message: match e {
            pem::Error::NoItemsFound => "no private key found; expected a '-----BEGIN PRIVATE KEY-----' block \
                                         (is it the certificate file?)"
                .to_string(),
            other => format!("not a valid PEM private key ({other}); give the key in PEM form"),
        },
    })?;
    let mismatch = |source| ApiTlsError::Mismatch { cert: cert.to_path_buf(), key: key.to_path_buf(), source };
    let mut config = rustls::ServerConfig::builder_with_provider(sluice_tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![sluice_tls::ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}
