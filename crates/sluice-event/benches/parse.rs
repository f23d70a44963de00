//! Throughput of the supervisor's per-line work: `process_line` on valid and on bad lines,
//! `check_line` alone, `process_stderr` and `event_id`. Run with `cargo bench -p sluice-event`
//! (`cargo bench -p sluice-event -- WORD` runs only the figures whose name contains WORD).
//!
//! Plain `std::time` (no harness): each figure is the median of 5 runs; it measures one core and
//! asserts nothing (timings belong here, never in tests). As in the supervisor, the lines sit in
//! one contiguous buffer of [`BUFFER_BYTES`] (a read buffer just filled, so warm in cache) and
//! the output buffer is emptied after each pass, as the chunk writer would.
//!
//! Two rates are printed: per wall-clock second, and per CPU-second of the benchmark thread (from
//! `/proc/thread-self/schedstat` on Linux). On a shared machine the wall-clock rate falls with
//! the load; the CPU-second rate is the cost of the code, and the one to compare with targets.

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use sluice_event::{check_line, event_id, process_line, process_stderr, Limits};

/// Size of the simulated read buffer holding the lines.
const BUFFER_BYTES: usize = 256 * 1024;
/// Bytes processed per run (the buffer is passed over repeatedly).
const RUN_BYTES_DEFAULT: usize = 64 << 20;
const RUNS: usize = 5;

/// Bytes per run; `SLUICE_BENCH_BYTES` overrides it (small values for runs under valgrind).
fn run_bytes() -> usize {
    std::env::var("SLUICE_BENCH_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(RUN_BYTES_DEFAULT)
}

/// Lines in one buffer: the text (lines separated by '\n') and each line's range.
struct Lines {
    text: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Lines {
    fn fill(mut make: impl FnMut(usize) -> Vec<u8>) -> Lines {
        let mut lines = Lines { text: Vec::with_capacity(BUFFER_BYTES), ranges: Vec::new() };
        for i in 0.. {
            let line = make(i);
            if lines.text.len() + line.len() + 1 > BUFFER_BYTES {
                break;
            }
            let start = lines.text.len();
            lines.text.extend_from_slice(&line);
            lines.ranges.push(start..lines.text.len());
            lines.text.push(b'\n');
        }
        lines
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.ranges.iter().map(|r| &self.text[r.clone()])
    }

    fn bytes(&self) -> usize {
        self.ranges.iter().map(|r| r.len()).sum()
    }
}

/// Lines in the shape of seed 000's examples, with varying numbers so no two are alike.
fn valid_line(i: usize) -> Vec<u8> {
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
}

/// The one line the brief names, always the same.
fn rpc_line(_: usize) -> Vec<u8> {
    br#"{"time_ns":1585851354242732000,"rpc_method":"UpdateAccount","user_err":"","server_error":"","duration_ms":12,"conn_ms":7,"txn_ms":3,"pii_ip":"42.102.177.61","pii_uid":"U577019"}"#.to_vec()
}

/// A mix of bad lines: wrong types (kept keys and bad values), not JSON, invalid UTF-8, reserved.
fn bad_line(i: usize) -> Vec<u8> {
    let t = 1_585_851_354_242_732_000u64 + i as u64;
    match i % 5 {
        0 => format!(r#"{{"time_ns":{t},"rpc_method":"UpdateAccount","duration_ms":12.5,"ok":true,"pii_uid":"U{i}"}}"#)
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
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU time this thread has run, if the kernel tells (Linux: first field of schedstat, in ns).
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

fn report(name: &str, lines: &Lines, mut pass: impl FnMut(&Lines)) {
    if let Some(filter) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        if !name.contains(filter.as_str()) {
            return;
        }
    }
    let passes = run_bytes().div_ceil(lines.bytes()).max(1);
    pass(lines); // warm-up: caches, the output buffer's pages
    let mut wall = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..RUNS {
        let (start, start_cpu) = (Instant::now(), thread_cpu_time());
        for _ in 0..passes {
            pass(lines);
        }
        wall.push(start.elapsed());
        if let (Some(begin), Some(end)) = (start_cpu, thread_cpu_time()) {
            cpu.push(end.saturating_sub(begin));
        }
    }
    let (bytes, count) = ((lines.bytes() * passes) as f64, (lines.ranges.len() * passes) as f64);
    let rate = |secs: f64| format!("{:>6.0} MB/s {:>9.0} lines/s", bytes / secs / 1e6, count / secs);
    let per_cpu = if cpu.len() == RUNS { rate(median(cpu).as_secs_f64()) } else { "n/a".to_owned() };
    println!(
        "{name:<28} per CPU-s: {per_cpu} | per wall-s: {} ({:.0} B/line)",
        rate(median(wall).as_secs_f64()),
        bytes / count,
    );
}

fn main() {
    let limits = Limits::default();
    let valid = Lines::fill(valid_line);
    let rpc = Lines::fill(rpc_line);
    let bad = Lines::fill(bad_line);
    let mut out = Vec::with_capacity(4 * BUFFER_BYTES);

    println!("sluice-event parse benchmark: median of {RUNS} runs, one thread, {} KiB buffer", BUFFER_BYTES / 1024);
    let mut process = |lines: &Lines| {
        out.clear();
        for line in lines.iter() {
            black_box(process_line(line, 1, &limits, &mut out));
        }
        black_box(&out);
    };
    report("process_line valid (seed)", &valid, &mut process);
    report("process_line valid (rpc)", &rpc, &mut process);
    report("process_line bad (mixed)", &bad, &mut process);
    report("check_line valid (seed)", &valid, |lines| {
        for line in lines.iter() {
            black_box(check_line(black_box(line), false));
        }
    });
    let mut out = Vec::with_capacity(4 * BUFFER_BYTES);
    report("process_stderr (seed lines)", &valid, |lines| {
        out.clear();
        for line in lines.iter() {
            process_stderr(line, 1, &limits, &mut out);
        }
        black_box(&out);
    });
    // Reference points on the same machine and lines: a UTF-8 check alone (a floor), and a
    // general JSON parser validating without building values.
    report("ref: str::from_utf8", &valid, |lines| {
        for line in lines.iter() {
            let _ = black_box(std::str::from_utf8(black_box(line)));
        }
    });
    report("ref: serde_json IgnoredAny", &valid, |lines| {
        for line in lines.iter() {
            let _ = black_box(serde_json::from_slice::<serde::de::IgnoredAny>(black_box(line)));
        }
    });
    report("event_id (seed lines)", &valid, |lines| {
        for (offset, line) in lines.iter().enumerate() {
            black_box(event_id(0x1234, "CDFG", offset as u64, line));
        }
    });
}
