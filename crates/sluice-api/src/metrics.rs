//! Prometheus text exposition (format 0.0.4) of the store's counters and each source's pull figures.

use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use sluice_pull::PullMetrics;
use sluice_store::StoreStats;

/// Escape a label value (backslash, quote, newline), as the text format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The whole exposition.
pub fn render(store: &StoreStats, pull: &PullMetrics) -> String {
    let mut out = String::with_capacity(8192);
    let mut one = |name: &str, kind: &str, help: &str, v: f64| {
        let suffix = if kind == "counter" { "_total" } else { "" };
        let _ = write!(out, "# HELP {name}{suffix} {help}\n# TYPE {name}{suffix} {kind}\n{name}{suffix} {v}\n");
    };
    let c = |v: u64| v as f64;
    one("sluice_store_rows_committed", "counter", "Events committed since start.", c(store.rows_committed));
    one(
        "sluice_store_dedup_skipped_lines",
        "counter",
        "Lines skipped because their offset was already committed.",
        c(store.lines_deduplicated),
    );
    one("sluice_store_resumes", "counter", "Batches answered with a resume offset.", c(store.resumes));
    one(
        "sluice_store_unparsed_lines",
        "counter",
        "Lines that did not parse (kept in the overflow column).",
        c(store.lines_unparsed),
    );
    one("sluice_store_overflowed_values", "counter", "Values sent to the overflow column.", c(store.values_overflowed));
    one("sluice_store_wal_records", "counter", "Write-ahead log records written.", c(store.wal_records));
    one("sluice_store_fsyncs", "counter", "Group-commit fsyncs of the write-ahead log.", c(store.fsyncs));
    one(
        "sluice_store_fsync_seconds_sum",
        "gauge",
        "Total time spent in group-commit fsyncs.",
        store.fsync_ns_total as f64 / 1e9,
    );
    one("sluice_store_fsync_seconds_max", "gauge", "Longest group-commit fsync.", store.fsync_ns_max as f64 / 1e9);
    one("sluice_store_flushes", "counter", "Buffer flushes into segments.", c(store.flushes));
    one(
        "sluice_store_compactions",
        "counter",
        "Compactions since the data directory was created.",
        c(store.compactions),
    );
    one(
        "sluice_store_retention_deleted_segments",
        "counter",
        "Segments deleted by retention.",
        c(store.retention_segments_deleted),
    );
    one(
        "sluice_store_maintenance_errors",
        "counter",
        "Background flush/compaction/retention failures.",
        c(store.maintenance_errors),
    );
    one(
        "sluice_store_wal_append_errors",
        "counter",
        "WAL appends that failed and left the log intact (a full disk): their commits were refused and are sent again.",
        c(store.wal_append_errors),
    );
    one(
        "sluice_store_stopped",
        "gauge",
        "1 once the store stopped taking commits after a failed write (restart it to recover from the WAL).",
        c(u64::from(store.stopped.is_some())),
    );
    one(
        "sluice_store_chunks_lost",
        "gauge",
        "Chunks recorded as lost since the data directory was created.",
        c(store.chunks_lost),
    );
    one("sluice_store_rows_buffered", "gauge", "Events in the in-memory buffer.", c(store.rows_buffered));
    one(
        "sluice_store_buffer_bytes",
        "gauge",
        "Memory of the in-memory buffer (Arrow arrays).",
        c(store.bytes_buffered),
    );
    one("sluice_store_rows_in_segments", "gauge", "Events in live segments.", c(store.rows_in_segments));
    one("sluice_store_wal_bytes", "gauge", "Bytes in the write-ahead log.", c(store.wal_bytes));
    one("sluice_store_segments", "gauge", "Live segments.", c(store.segments));
    one("sluice_store_segment_bytes", "gauge", "Bytes in live segments.", c(store.segment_bytes));
    one(
        "sluice_store_disk_bytes",
        "gauge",
        "Bytes on disk: segments, write-ahead log and manifest.",
        c(store.bytes_on_disk),
    );
    one("sluice_store_keys", "gauge", "Distinct keys with a column.", c(store.keys));
    one("sluice_store_progress_entries", "gauge", "Chunks whose read progress is kept.", c(store.progress_entries));
    one("sluice_store_seq_next", "gauge", "The next sluice_seq to be handed out.", c(store.seq_next));

    let sources = pull.sources();
    let families: [(&str, &str, &str); 8] = [
        ("sluice_source_lag_seconds", "gauge", "Now minus the newest event time fetched from the source."),
        ("sluice_source_backlog_chunks", "gauge", "Chunks of the source not read completely."),
        ("sluice_source_backlog_bytes", "gauge", "Unread bytes of those chunks, where known."),
        ("sluice_source_live_bytes_total", "counter", "Bytes fetched from the source's open chunk."),
        ("sluice_source_backfill_bytes_total", "counter", "Bytes fetched from older chunks."),
        ("sluice_source_chunks_lost_total", "counter", "Chunks gone before they were read completely."),
        ("sluice_source_reconnects_total", "counter", "Connections made again after a failure."),
        ("sluice_source_batches_committed_total", "counter", "Batches committed."),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for (src, m) in &sources {
            let v = match i {
                0 => m.lag_ns().map_or(f64::NAN, |ns| ns as f64 / 1e9),
                1 => m.backlog_chunks.load(Relaxed) as f64,
                2 => m.backlog_bytes.load(Relaxed) as f64,
                3 => m.live_bytes.load(Relaxed) as f64,
                4 => m.backfill_bytes.load(Relaxed) as f64,
                5 => m.chunks_lost.load(Relaxed) as f64,
                6 => m.reconnects.load(Relaxed) as f64,
                _ => m.batches_committed.load(Relaxed) as f64,
            };
            let _ = writeln!(out, "{name}{{source=\"{}\"}} {v}", label(src));
        }
    }
    let _ =
        write!(out, "# HELP sluice_source_errors_total Failures by kind.\n# TYPE sluice_source_errors_total counter\n");
    for (src, m) in &sources {
        for (kind, n) in m.errors_by_kind() {
            let _ =
                writeln!(out, "sluice_source_errors_total{{source=\"{}\",kind=\"{}\"}} {n}", label(src), kind.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_declared_once_and_sources_labelled() {
        let pull = PullMetrics::new();
        let m = pull.source("web-1", "https://127.0.0.1:7701");
        m.live_bytes.fetch_add(42, Relaxed);
        let stats = StoreStats { rows_committed: 7, bytes_buffered: 4096, ..StoreStats::default() };
        let text = render(&stats, &pull);
        assert!(text.contains("sluice_store_rows_committed_total 7\n"), "{text}");
        assert!(text.contains("sluice_store_buffer_bytes 4096\n"), "{text}");
        assert!(text.contains("sluice_source_live_bytes_total{source=\"web-1\"} 42\n"), "{text}");
        assert!(text.contains("sluice_source_errors_total{source=\"web-1\",kind=\"tls\"} 0\n"), "{text}");
        let mut types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(n, types.len());
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
