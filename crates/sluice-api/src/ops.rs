//! The operations endpoints, served without a token on the store's `listen` address:
//! `GET /metrics` (Prometheus text: storage, per-source pull and API figures) and `GET /healthz`
//! (`ok`, or 503 while background maintenance fails). Not here: routing and serving (api.rs,
//! serve.rs).

use http::StatusCode;
use sluice_pull::PullMetrics;
use sluice_store::Store;

pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// The `/metrics` body: the store's and the pullers' figures, then `extra` (the API's own).
pub fn metrics(store: &Store, pull: &PullMetrics, extra: &str) -> String {
    let mut text = crate::metrics::render(&store.stats(), pull);
    text.push_str(extra);
    text
}

/// The `/healthz` status and body.
pub fn healthz(store: &Store) -> (StatusCode, String) {
    match store.stats().maintenance_error {
        None => (StatusCode::OK, "ok\n".to_string()),
        Some(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("maintenance failing: {e}\n")),
    }
}
