//! Throughput of the supervisor's per-line work: `process_line` on valid and on bad lines,
//! `check_line` alone, and `event_id`. Run with `cargo bench -p sluice-event`.
//!
//! Plain `std::time` (no harness): each figure is the median of 5 runs over the same lines. It
//! measures one core; it asserts nothing (timings belong here, never in tests).

use std::hint::black_box;
use std::time::{Duration, Instant};

use sluice_event::{check_line, event_id, process_line, Limits};

const LINES_PER_SET_DEFAULT: usize = 200_000;

/// Lines per set; `SLUICE_BENCH_LINES` overrides it (small values for runs under valgrind).
fn lines_per_set() -> usize {
    std::env::var("SLUICE_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(LINES_PER_SET_DEFAULT)
}
const RUNS: usize = 5;

/// Lines in the shape of seed 000's examples, with varying numbers so no two are alike.
fn valid_lines() -> Vec<Vec<u8>> {
    (0..lines_per_set())
        .map(|i| {
            let t = 1_585_851_354_242_732_000u64 + i as u64 * 1_000;
            let line = match i % 4 {
                0 | 1 => format!(
                    r#"{{"time_ns":{t},"rpc_method":"UpdateAccount","user_err":"","server_error":"","duration_ms":{},"conn_ms":{},"txn_ms":{},"pii_ip":"42.102.177.{}","pii_uid":"U{}"}}"#,
                    i % 1000,
                    i % 17,
                    i % 5,
                    i % 256,
                    577_000 + i
                ),
                2 => format!(
                    r#"{{"time_ns":{t},"level":"INFO","module":"account","message":"Updated email","pii_uid":"U{}","pii_old_email":"user{i}@abc.com","pii_new_email":"user{i}@okok.com"}}"#,
                    577_000 + i
                ),
                _ => format!(
                    r#"{{"time_ns":{t},"worker":"prod2","work_item":"W{i}","type":"IMAGE_INGEST","result":"ok","duration_ms":{},"network_ms":{}}}"#,
                    i % 300,
                    i % 40
                ),
            };
            line.into_bytes()
        })
        .collect()
}

/// A mix of bad lines: wrong types (kept keys and bad values), not JSON, invalid UTF-8, reserved.
fn bad_lines() -> Vec<Vec<u8>> {
    (0..lines_per_set())
        .map(|i| {
            let t = 1_585_851_354_242_732_000u64 + i as u64;
            match i % 5 {
                0 => format!(
                    r#"{{"time_ns":{t},"rpc_method":"UpdateAccount","duration_ms":12.5,"ok":true,"pii_uid":"U{i}"}}"#
                )
                .into_bytes(),
                1 => format!(r#"{{"time_ns":{t},"tags":["a","b"],"meta":{{"k":{i}}},"msg":"hello"}}"#).into_bytes(),
                2 => format!("panic: worker {i} crashed at src/main.rs:42").into_bytes(),
                3 => {
                    let mut b = format!(r#"{{"time_ns":{t},"msg":"caf"#).into_bytes();
                    b.extend_from_slice(b"\xe9\"}");
                    b
                }
                _ => format!(r#"{{"time_ns":{t},"sluice_bad":"forged","msg":"x","msg":"y"}}"#).into_bytes(),
            }
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn report(name: &str, lines: &[Vec<u8>], mut run: impl FnMut(&[Vec<u8>])) {
    // `cargo bench -p sluice-event -- WORD` runs only the figures whose name contains WORD.
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        if !name.contains(filter.as_str()) {
            return;
        }
    }
    let bytes: usize = lines.iter().map(Vec::len).sum();
    run(lines); // warm-up: caches, page faults of the output buffer
    let samples = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            run(lines);
            start.elapsed()
        })
        .collect();
    let secs = median(samples).as_secs_f64();
    println!(
        "{name:<28} {:>9.0} MB/s {:>11.0} lines/s  ({} lines, {:.0} B/line avg)",
        bytes as f64 / secs / 1e6,
        lines.len() as f64 / secs,
        lines.len(),
        bytes as f64 / lines.len() as f64,
    );
}

fn main() {
    let limits = Limits::default();
    let valid = valid_lines();
    let bad = bad_lines();
    let mut out = Vec::with_capacity(256 << 20);

    println!("sluice-event parse benchmark: median of {RUNS} runs, one thread");
    report("process_line valid", &valid, |lines| {
        out.clear();
        for line in lines {
            black_box(process_line(line, 1, &limits, &mut out));
        }
        black_box(&out);
    });
    report("check_line valid", &valid, |lines| {
        for line in lines {
            black_box(check_line(black_box(line), false));
        }
    });
    report("process_line bad (mixed)", &bad, |lines| {
        out.clear();
        for line in lines {
            black_box(process_line(line, 1, &limits, &mut out));
        }
        black_box(&out);
    });
    report("event_id valid", &valid, |lines| {
        for (offset, line) in lines.iter().enumerate() {
            black_box(event_id(0x1234, "CDFG", offset as u64, line));
        }
    });
}
