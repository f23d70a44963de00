//! The supervisor's counters and their Prometheus text exposition (format 0.0.4).
//!
//! Counters are plain atomics bumped on hot paths; rendering reads them at scrape time, together
//! with the chunk log's own counters. Not here: the HTTP listener (see `ops.rs`).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sluice_chunk::log::HISTOGRAM_BOUNDS_S;
use sluice_chunk::LogMetrics;
use sluice_event::BadClass;

/// Why a TLS handshake was refused, as a metric label.
pub const REJECT_REASONS: [&str; 5] = ["no_certificate", "not_allowed", "expired", "not_yet_valid", "bad_certificate"];

#[derive(Debug, Default)]
pub struct Metrics {
    pub stdout_events: AtomicU64,
    pub stdout_bytes: AtomicU64,
    pub stderr_lines: AtomicU64,
    pub stderr_bytes: AtomicU64,
    /// Bad stdout lines by class, indexed like `BadClass::ALL`. A line with several problems counts once per class.
    pub bad_lines: [AtomicU64; 16],
    pub bad_lines_total: AtomicU64,
    pub child_starts: AtomicU64,
    pub child_restarts: AtomicU64,
    pub child_running: AtomicI64,
    /// Connections that passed the handshake and are open now.
    pub clients_connected: AtomicI64,
    pub clients_accepted: AtomicU64,
    /// Refused handshakes by reason, indexed like `REJECT_REASONS`.
    pub handshakes_rejected: [AtomicU64; 5],
    /// Handshakes that failed for other reasons (garbage, timeouts, TLS errors).
    pub handshakes_failed: AtomicU64,
    pub connections_refused_cap: AtomicU64,
    pub bytes_served: AtomicU64,
    pub requests: AtomicU64,
    pub followers: AtomicI64,
}

fn class_index(c: BadClass) -> usize {
    BadClass::ALL.iter().position(|&x| x == c).expect("every class is in ALL")
}

impl Metrics {
    pub fn count_bad(&self, classes: sluice_event::BadClasses) {
        self.bad_lines_total.fetch_add(1, Ordering::Relaxed);
        for c in classes.iter() {
            self.bad_lines[class_index(c)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The whole exposition, supervisor and chunk log together.
    pub fn render(&self, log: &LogMetrics) -> String {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(8192);
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name}_total {v}\n");
        };
        counter("sluice_captured_events", "Event lines read from the child's stdout.", r(&self.stdout_events));
        counter("sluice_captured_bytes", "Bytes read from the child's stdout.", r(&self.stdout_bytes));
        counter(
            "sluice_stderr_lines",
            "Lines read from the child's stderr (each stored as a wrapped event).",
            r(&self.stderr_lines),
        );
        counter("sluice_stderr_bytes", "Bytes read from the child's stderr.", r(&self.stderr_bytes));
        counter(
            "sluice_bad_lines",
            "Stdout lines that were not valid events (stored wrapped).",
            r(&self.bad_lines_total),
        );
        counter(
            "sluice_written_events",
            "Event lines written to chunks, sluice's own events included.",
            r(&log.events_written),
        );
        counter("sluice_written_bytes", "Bytes written to chunks.", r(&log.bytes_written));
        counter("sluice_chunks_opened", "Chunks opened.", r(&log.chunks_opened));
        counter("sluice_chunks_closed", "Chunks closed.", r(&log.chunks_closed));
        counter("sluice_fsyncs", "fdatasync calls on chunk files.", r(&log.fsyncs));
        counter("sluice_dropped_events", "Events dropped because the disk refused writes.", r(&log.dropped_events));
        counter("sluice_dropped_bytes", "Bytes dropped because the disk refused writes.", r(&log.dropped_bytes));
        counter("sluice_disk_errors", "Writes refused by the disk.", r(&log.disk_errors));
        counter("sluice_child_starts", "Times the child was started.", r(&self.child_starts));
        counter("sluice_child_restarts", "Times the child was restarted after it exited.", r(&self.child_restarts));
        counter(
            "sluice_clients_accepted",
            "TLS connections accepted (client certificate allowed).",
            r(&self.clients_accepted),
        );
        counter(
            "sluice_handshakes_failed",
            "TLS handshakes that failed for reasons other than the allow list.",
            r(&self.handshakes_failed),
        );
        counter(
            "sluice_connections_refused_cap",
            "Connections closed at once because the connection cap was reached.",
            r(&self.connections_refused_cap),
        );
        counter("sluice_served_bytes", "Chunk bytes sent to clients.", r(&self.bytes_served));
        counter("sluice_requests", "HTTP requests served on the chunk listener.", r(&self.requests));

        let _ = write!(out, "# HELP sluice_bad_lines_by_class_total Bad stdout lines by problem class.\n# TYPE sluice_bad_lines_by_class_total counter\n");
        for (i, c) in BadClass::ALL.iter().enumerate() {
            let _ =
                writeln!(out, "sluice_bad_lines_by_class_total{{class=\"{}\"}} {}", c.name(), r(&self.bad_lines[i]));
        }
        let _ = write!(out, "# HELP sluice_handshakes_rejected_total TLS handshakes refused by the client allow list.\n# TYPE sluice_handshakes_rejected_total counter\n");
        for (i, reason) in REJECT_REASONS.iter().enumerate() {
            let _ = writeln!(
                out,
                "sluice_handshakes_rejected_total{{reason=\"{reason}\"}} {}",
                r(&self.handshakes_rejected[i])
            );
        }
        let _ = write!(out, "# HELP sluice_retention_discarded_chunks_total Chunks discarded by retention.\n# TYPE sluice_retention_discarded_chunks_total counter\n");
        let _ =
            writeln!(out, "sluice_retention_discarded_chunks_total{{reason=\"age\"}} {}", r(&log.retention_age_chunks));
        let _ = writeln!(
            out,
            "sluice_retention_discarded_chunks_total{{reason=\"size\"}} {}",
            r(&log.retention_size_chunks)
        );
        let _ = write!(out, "# HELP sluice_retention_discarded_bytes_total Bytes discarded by retention.\n# TYPE sluice_retention_discarded_bytes_total counter\n");
        let _ =
            writeln!(out, "sluice_retention_discarded_bytes_total{{reason=\"age\"}} {}", r(&log.retention_age_bytes));
        let _ =
            writeln!(out, "sluice_retention_discarded_bytes_total{{reason=\"size\"}} {}", r(&log.retention_size_bytes));

        let mut gauge = |name: &str, help: &str, v: i64| {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
        };
        gauge("sluice_stored_bytes", "Bytes in all chunks on disk.", r(&log.stored_bytes) as i64);
        gauge("sluice_stored_chunks", "Chunks on disk, the open one included.", r(&log.stored_chunks) as i64);
        gauge("sluice_child_running", "1 while the child runs.", self.child_running.load(Ordering::Relaxed));
        gauge("sluice_clients_connected", "TLS clients connected now.", self.clients_connected.load(Ordering::Relaxed));
        gauge("sluice_followers", "Responses following the open chunk now.", self.followers.load(Ordering::Relaxed));

        let (counts, sum) = log.fsync_seconds.snapshot();
        let _ = write!(
            out,
            "# HELP sluice_fsync_seconds Latency of fdatasync on chunk files.\n# TYPE sluice_fsync_seconds histogram\n"
        );
        let mut cumulative = 0;
        for (i, bound) in HISTOGRAM_BOUNDS_S.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "sluice_fsync_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[HISTOGRAM_BOUNDS_S.len()];
        let _ = writeln!(out, "sluice_fsync_seconds_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "sluice_fsync_seconds_sum {sum}");
        let _ = writeln!(out, "sluice_fsync_seconds_count {cumulative}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_family_once_and_counts_move() {
        let m = Metrics::default();
        let log = LogMetrics::default();
        m.stdout_events.fetch_add(3, Ordering::Relaxed);
        log.fsync_seconds.observe(std::time::Duration::from_millis(2));
        let text = m.render(&log);
        assert!(text.contains("sluice_captured_events_total 3\n"));
        assert!(text.contains("sluice_fsync_seconds_bucket{le=\"0.0025\"} 1\n"));
        assert!(text.contains("sluice_fsync_seconds_count 1\n"));
        assert!(text.contains("sluice_bad_lines_by_class_total{class=\"not_json\"} 0\n"));
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n, "a metric family is declared twice");
    }
}
