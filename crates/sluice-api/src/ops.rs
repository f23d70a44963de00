//! The plain-HTTP operations listener of the store: `GET /metrics` and `GET /healthz`.
//! Serves until `shutdown` turns true (or its sender is dropped).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use sluice_pull::PullMetrics;
use sluice_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the listener reads.
pub struct OpsState {
    pub store: Arc<Store>,
    pub pull: Arc<PullMetrics>,
}

fn text(status: StatusCode, body: impl Into<Bytes>, content_type: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static headers are valid")
}

fn route(state: &OpsState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n", "text/plain");
    }
    match req.uri().path() {
        "/metrics" => {
            text(StatusCode::OK, crate::metrics::render(&state.store.stats(), &state.pull), CONTENT_TYPE_METRICS)
        }
        "/healthz" => match state.store.stats().maintenance_error {
            None => text(StatusCode::OK, "ok\n", "text/plain"),
            Some(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("maintenance failing: {e}\n"), "text/plain"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics or /healthz\n", "text/plain"),
    }
}

/// Serve until shutdown.
pub async fn serve_ops(listener: TcpListener, state: Arc<OpsState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|&s| s) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = route(&state, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}
