//! The plain-HTTP operations listener: `GET /metrics` (Prometheus text format 0.0.4, rendered by
//! [`Metrics::render`]) and `GET /healthz` (`200 ok` while the chunk log has an open chunk, `503`
//! once it has none). Anything else is `404` (`405` for another method on those paths).
//!
//! No TLS and no authentication: it belongs on loopback (the default) or a private network. It
//! serves nothing from the chunks themselves.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_chunk::{ChunkLog, DiskStorage};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::serve::{shutdown_requested, ACCEPT_ERROR_PAUSE};

/// Where `sluice supervise` serves `/metrics` and `/healthz` by default: loopback, port 7702.
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:7702";
/// Scrapers and probes open few connections; more than this at once are closed at once.
const OPS_CONNECTIONS_MAX: usize = 64;
/// An idle or slow connection is closed after this long without a complete request head.
const OPS_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The Prometheus text exposition format.
pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// Serve `/metrics` and `/healthz` until `shutdown` turns true (or its sender is dropped); then
/// stop at once: a scrape cut short is simply retried.
pub async fn serve_ops(
    listener: TcpListener,
    log: Arc<ChunkLog<DiskStorage>>,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(OPS_CONNECTIONS_MAX));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(OPS_HEADER_TIMEOUT);
    let http = Arc::new(http);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = shutdown_requested(&mut shutdown) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => {
                let Ok((tcp, _peer)) = accepted else {
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else { continue };
                let (log, metrics, http) = (Arc::clone(&log), Arc::clone(&metrics), Arc::clone(&http));
                tasks.spawn(async move {
                    let _permit = permit;
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let response = respond(&req, &log, &metrics);
                        async move { Ok::<_, Infallible>(response) }
                    });
                    // A broken connection concerns only its client.
                    let _ = http.serve_connection(TokioIo::new(tcp), service).await;
                });
            }
        }
    }
    tasks.shutdown().await;
}

fn respond<B>(req: &Request<B>, log: &ChunkLog<DiskStorage>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if path != "/metrics" && path != "/healthz" {
        return text(StatusCode::NOT_FOUND, "no such path: use /metrics or /healthz\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed: use GET or HEAD\n");
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    if path == "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from(metrics.render(log.metrics()))));
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_METRICS));
        return response;
    }
    match log.open_chunk_id() {
        Some(_) => text(StatusCode::OK, "ok\n"),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no open chunk: the chunk log is closed, or no new chunk could be created (a full disk, no file \
             descriptors left); events are dropped and counted meanwhile (sluice_dropped_events, sluice_disk_errors)\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
