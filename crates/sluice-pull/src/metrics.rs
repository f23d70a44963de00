//! What the pullers report: per-source counters and gauges (atomics, read by the store's
//! `/metrics`), a status snapshot per source (for `/api/sources` and the web page), and a line on
//! stderr when a source fails or recovers (at most one failure line per source every
//! [`ERROR_LOG_INTERVAL`], with the count of those left out).
//! It does not format Prometheus text or serve anything; the store does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::client::ErrorKind;

/// At most one failure line per source on stderr this often; the next one counts those left out.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// What a source's failures and recoveries print: the lines are rate-limited per source, so a
/// source that fails in a tight loop (or flaps) costs at most two lines a minute.
#[derive(Debug, Default)]
struct ErrorLog {
    /// When a failure line was last printed.
    last_line: Option<Instant>,
    /// Failures since the last failure line that were not printed.
    left_out: u64,
    /// Failures since the source last worked.
    failing: u64,
    /// A failure line was printed since the source last worked: its recovery is printed too.
    told: bool,
}

impl ErrorLog {
    /// A failure: the line to print, if one is due.
    fn failure(&mut self, now: Instant, source: &str, what: &str) -> Option<String> {
        self.failing += 1;
        if self.last_line.is_some_and(|t| now.duration_since(t) < ERROR_LOG_INTERVAL) {
            self.left_out += 1;
            return None;
        }
        let more = match std::mem::take(&mut self.left_out) {
            0 => String::new(),
            n => format!(" ({n} more {} since the last line)", failures(n)),
        };
        self.last_line = Some(now);
        self.told = true;
        Some(format!("sluice store: source {source}: {what}{more}"))
    }

    /// The source works (a request succeeded): the line to print, if its failure was told.
    /// Cheap when there is nothing to tell: it runs after every successful request.
    fn working(&mut self, source: impl FnOnce() -> String) -> Option<String> {
        let failing = std::mem::take(&mut self.failing);
        if !std::mem::take(&mut self.told) {
            return None;
        }
        Some(format!("sluice store: source {}: working again after {failing} {}", source(), failures(failing)))
    }
}

fn failures(n: u64) -> &'static str {
    if n == 1 {
        "failure"
    } else {
        "failures"
    }
}

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
    log: Mutex<ErrorLog>,
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
            log: Mutex::default(),
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
        let what = format!("{}: {message}", kind.as_str());
        let name = {
            let mut status = self.lock();
            status.last_error = Some(what.clone());
            status.name.clone()
        };
        if let Some(line) = self.error_log().failure(Instant::now(), &name, &what) {
            eprintln!("{line}");
        }
    }

    pub(crate) fn set_state(&self, state: SourceState) {
        self.lock().state = state;
        if state == SourceState::Connected {
            if let Some(line) = self.error_log().working(|| self.lock().name.clone()) {
                eprintln!("{line}");
            }
        }
    }

    fn error_log(&self) -> std::sync::MutexGuard<'_, ErrorLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_told_once_a_minute_with_the_count_left_out_and_the_recovery_once() {
        let mut log = ErrorLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.working(|| "web".into()), None, "nothing to tell before a failure");
        assert_eq!(
            log.failure(at(0), "web", "tls: refused").as_deref(),
            Some("sluice store: source web: tls: refused")
        );
        assert_eq!(log.failure(at(1), "web", "tls: refused"), None);
        assert_eq!(log.failure(at(59), "web", "tls: refused"), None);
        assert_eq!(
            log.failure(at(60), "web", "io: reset").as_deref(),
            Some("sluice store: source web: io: reset (2 more failures since the last line)")
        );
        assert_eq!(
            log.working(|| "web".into()).as_deref(),
            Some("sluice store: source web: working again after 4 failures")
        );
        assert_eq!(log.working(|| "web".into()), None, "told once");
        // A flapping source: the next failure within the minute is left out, and so is its
        // recovery, so a tight loop prints at most two lines a minute.
        assert_eq!(log.failure(at(61), "web", "io: reset"), None);
        assert_eq!(log.working(|| "web".into()), None);
        assert_eq!(
            log.failure(at(121), "web", "io: reset").as_deref(),
            Some("sluice store: source web: io: reset (1 more failure since the last line)")
        );
    }
}
