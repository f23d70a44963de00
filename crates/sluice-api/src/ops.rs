//! The operations endpoints, served without a token on the store's `listen` address:
//! `GET /metrics` (Prometheus text: storage, per-source pull and API figures) and `GET /healthz`
//! (`ok`, or 503 with the reason: the store stopped after a failed write, the write-ahead log
//! cannot be written, or background maintenance fails). Not here: routing and serving (api.rs,
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
    let stats = store.stats();
    let unavailable = |text: String| (StatusCode::SERVICE_UNAVAILABLE, text);
    if let Some(e) = stats.stopped {
        unavailable(format!("stopped after a failed write: {e}; restart it to recover from the write-ahead log\n"))
    } else if let Some(e) = stats.wal_append_error {
        unavailable(format!("new events refused, the write-ahead log cannot be written: {e}\n"))
    } else if let Some(e) = stats.maintenance_error {
        unavailable(format!("maintenance failing: {e}\n"))
    } else {
        (StatusCode::OK, "ok\n".to_string())
    }
}
