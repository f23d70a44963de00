//! What the pullers report: per-source counters and gauges (atomics, read by the store's
//! `/metrics`) and a status snapshot per source (for `/api/sources` and the web page).
//! It does not format Prometheus text or serve anything; the store does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::ErrorKind;

/// Every source's metrics, by configured name.
#[derive(Debug, Default)]
pub struct PullMetrics {
    sources: RwLock<BTreeMap<Arc<str>, Arc<SourceMetrics>>>,
}

impl PullMetrics {
    pub fn new() -> PullMetrics {
        PullMetrics::default()
    }

    /// The metrics of source `name`, created on first use.
    pub fn source(&self, name: &str, url: &str) -> Arc<SourceMetrics> {
        if let Some(m) = self.sources.read().unwrap_or_else(PoisonError::into_inner).get(name) {
            return Arc::clone(m);
        }
        let mut sources = self.sources.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(sources.entry(Arc::from(name)).or_insert_with(|| Arc::new(SourceMetrics::new(name, url))))
    }

    /// Every source, in name order.
    pub fn sources(&self) -> Vec<(Arc<str>, Arc<SourceMetrics>)> {
        let sources = self.sources.read().unwrap_or_else(PoisonError::into_inner);
        sources.iter().map(|(k, v)| (Arc::clone(k), Arc::clone(v))).collect()
    }

    /// A status snapshot of every source, in name order.
    pub fn statuses(&self) -> Vec<SourceStatus> {
        self.sources().iter().map(|(_, m)| m.status()).collect()
    }
}

/// Counters and gauges of one source. Counters only grow; gauges are set by the puller.
#[derive(Debug)]
pub struct SourceMetrics {
    /// Largest `time_ns` among the last lines of batches fetched (0 before any).
    pub newest_event_ns: AtomicU64,
    /// Chunks in the last listing that are not completely read (the live one included).
    pub backlog_chunks: AtomicU64,
    /// Unread bytes of those chunks whose length is known (closed chunks fetched at least once).
    pub backlog_bytes: AtomicU64,
    /// Bytes received on the live chunk.
    pub live_bytes: AtomicU64,
    /// Bytes received on older chunks.
    pub backfill_bytes: AtomicU64,
    /// Chunks gone (`404`, or vanished from the listing) before they were read completely.
    pub chunks_lost: AtomicU64,
    /// Connections given up and made again (after errors, stalls, resumes).
    pub reconnects: AtomicU64,
    /// Batches the sink accepted.
    pub batches_committed: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    status: Mutex<SourceStatus>,
}

impl SourceMetrics {
    fn new(name: &str, url: &str) -> SourceMetrics {
        SourceMetrics {
            newest_event_ns: AtomicU64::new(0),
            backlog_chunks: AtomicU64::new(0),
            backlog_bytes: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            backfill_bytes: AtomicU64::new(0),
            chunks_lost: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            batches_committed: AtomicU64::new(0),
            errors: Default::default(),
            status: Mutex::new(SourceStatus {
                name: name.to_string(),
                url: url.to_string(),
                stream: None,
                state: SourceState::Connecting,
                last_error: None,
                live_chunk: None,
                live_offset: 0,
                backfilling: Vec::new(),
                lag_ns: None,
            }),
        }
    }

    /// Now minus the newest event time fetched; `None` before any event.
    pub fn lag_ns(&self) -> Option<u64> {
        match self.newest_event_ns.load(Relaxed) {
            0 => None,
            newest => Some(now_ns().saturating_sub(newest)),
        }
    }

    /// Failures of `kind` so far.
    pub fn errors(&self, kind: ErrorKind) -> u64 {
        self.errors[kind.index()].load(Relaxed)
    }

    /// Failures so far, by kind.
    pub fn errors_by_kind(&self) -> Vec<(ErrorKind, u64)> {
        ErrorKind::ALL.iter().map(|&k| (k, self.errors(k))).collect()
    }

    /// The current status, with the lag computed now.
    pub fn status(&self) -> SourceStatus {
        let mut s = self.lock().clone();
        s.lag_ns = self.lag_ns();
        s
    }

    pub(crate) fn error(&self, kind: ErrorKind, message: &str) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
        self.lock().last_error = Some(format!("{}: {message}", kind.as_str()));
    }

    pub(crate) fn set_state(&self, state: SourceState) {
        self.lock().state = state;
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        f(&mut self.lock());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceStatus> {
        // Only plain fields behind it: a panic elsewhere cannot leave it inconsistent.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One source as `/api/sources` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    pub name: String,
    pub url: String,
    /// `Sluice-Stream-Id` last seen, 32 hex digits.
    pub stream: Option<String>,
    pub state: SourceState,
    /// The last failure, `kind: message`; kept after recovery, for the status page.
    pub last_error: Option<String>,
    /// The chunk being followed live, and how far it is committed.
    pub live_chunk: Option<String>,
    pub live_offset: u64,
    /// Older chunks being fetched now, with the offset reached.
    pub backfilling: Vec<(String, u64)>,
    /// Now minus the newest event time fetched, when there was one.
    pub lag_ns: Option<u64>,
}

/// Whether a source is reachable right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Not yet connected since start (or since the last backoff ended).
    Connecting,
    /// The last request succeeded.
    Connected,
    /// Waiting before the next attempt after a failure (see `last_error`).
    BackingOff,
}

/// Wall time, ns since the epoch (0 if the clock is before 1970).
pub(crate) fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)).unwrap_or(0)
}
