//! The operations endpoints, served without a token on the store's `listen` address:
//! `GET /metrics` (Prometheus text: storage, per-source pull and API figures) and `GET /healthz`
//! (`ok`, or 503 with the reason: the store stopped after a failed write, the write-ahead log
//! cannot be written, or background maintenance fails). Not here: routing and serving (api.rs,
//! serve.rs).

use http::StatusCode;
use sluice_pull::PullMetrics;
use sluice_store::{Store, WAL_REFUSED_RECENTLY};

pub const CONTENT_TYPE_METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=utf-8";

/// The `/metrics` body: the store's and the pullers' figures, then `extra` (the API's own).
pub fn metrics(store: &Store, pull: &PullMetrics, extra: &str) -> String {
    let mut text = crate::metrics::render(&store.stats(), pull);
    text.push_str(extra);
    text
}

/// The `/healthz` status and body. A refused WAL append keeps it at 503 for
/// [`WAL_REFUSED_RECENTLY`] after the last one, so that a disk that is full but takes a small
/// commit now and then reads as full, not as ok and 503 in turn.
pub fn healthz(store: &Store) -> (StatusCode, String) {
    let stats = store.stats();
    let refused_ago = stats.wal_append_refused_ago.filter(|ago| *ago < WAL_REFUSED_RECENTLY);
    let reason = if let Some(e) = stats.stopped {
        format!("stopped after a failed write: {e}; restart it to recover from the write-ahead log\n")
    } else if let (Some(ago), Some(e)) = (refused_ago, stats.wal_append_error) {
        format!(
            "new events refused, the write-ahead log cannot be written: {e} (last refused {} s ago; ok once none \
             is refused for {} s)\n",
            ago.as_secs(),
            WAL_REFUSED_RECENTLY.as_secs()
        )
    } else if let Some(e) = stats.maintenance_error {
        format!("maintenance failing: {e}\n")
    } else {
        return (StatusCode::OK, "ok\n".to_string());
    };
    (StatusCode::SERVICE_UNAVAILABLE, reason)
}
