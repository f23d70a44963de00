//! Benchmark of sluice-gen: `cargo bench -p sluice-gen`. Prints the unpaced generation rate (the
//! generator alone, and `run` into a sink) and how accurately `rate` is kept at 20,000/s and 5/s,
//! with the CPU it costs. Measures only; asserts nothing (timing belongs here, not in tests).

use std::io::{self, Write};
use std::time::{Duration, Instant};

use sluice_gen::{run, GenConfig, Generator};

/// Events per unpaced measurement.
const UNPACED_EVENTS: u64 = 5_000_000;
/// Paced measurements: (events per second, seconds).
const PACED: &[(f64, f64)] = &[(20_000.0, 5.0), (5.0, 3.0)];

/// CPU time of this thread (Linux; `None` elsewhere), from /proc/thread-self/schedstat.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = s.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Counts bytes and flushes.
struct Counter {
    bytes: u64,
    flushes: u64,
}

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.flushes += 1;
        Ok(())
    }
}

/// Wall-clock rates are noisy on a shared machine, so the rate per CPU-second is printed too.
fn report(what: &str, events: u64, bytes: u64, wall: Duration, cpu: Option<Duration>) {
    let secs = wall.as_secs_f64();
    let cpu_s = cpu.map_or(f64::NAN, |c| c.as_secs_f64());
    println!(
        "{what:<30} {events:>8} events {:>10.0}/s wall {:>10.0}/cpu-s {:>6.1} MB/cpu-s {:>6.1} B/event, cpu {:.1}% of wall",
        events as f64 / secs,
        events as f64 / cpu_s,
        bytes as f64 / cpu_s / 1e6,
        bytes as f64 / events as f64,
        100.0 * cpu_s / secs,
    );
}

fn main() {
    // The generator alone, into a reused buffer.
    let cfg = GenConfig::default();
    let mut gen = Generator::new(&cfg);
    let mut buf = Vec::with_capacity(512 * 1024);
    let mut bytes = 0u64;
    let cpu0 = thread_cpu();
    let t0 = Instant::now();
    for _ in 0..UNPACED_EVENTS {
        let t = gen.next_time_ns();
        gen.next_line(t, &mut buf);
        if buf.len() >= 256 * 1024 {
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    bytes += buf.len() as u64;
    let cpu = thread_cpu().zip(cpu0).map(|(a, b)| a - b);
    report("Generator::next_line", UNPACED_EVENTS, bytes, t0.elapsed(), cpu);

    // `run`, as `sluice gen --count N > /dev/null` does it.
    for (what, bad_ratio, stderr_ratio) in
        [("run (no rate) into a sink", 0.0, 0.0), ("run, 1% bad, 1% stderr", 0.01, 0.01)]
    {
        let cfg = GenConfig { count: Some(UNPACED_EVENTS), bad_ratio, stderr_ratio, ..GenConfig::default() };
        let mut out = Counter { bytes: 0, flushes: 0 };
        let mut err = Counter { bytes: 0, flushes: 0 };
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let n = run(&cfg, &mut out, &mut err).expect("writing to a counter cannot fail");
        let cpu = thread_cpu().zip(cpu0).map(|(a, b)| a - b);
        report(what, n, out.bytes + err.bytes, t0.elapsed(), cpu);
    }

    // Pacing against the real clock.
    for &(rate, secs) in PACED {
        let events = (rate * secs) as u64;
        let cfg = GenConfig { count: Some(events), rate: Some(rate), ..GenConfig::default() };
        let mut out = Counter { bytes: 0, flushes: 0 };
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        let n = run(&cfg, &mut out, &mut io::sink()).expect("writing to a counter cannot fail");
        let wall = t0.elapsed();
        let cpu = thread_cpu().zip(cpu0).map(|(a, b)| a - b);
        // Line i is due at i / rate, so n lines span (n - 1) / rate seconds.
        let achieved = (n - 1) as f64 / wall.as_secs_f64();
        report(&format!("run --rate {rate}"), n, out.bytes, wall, cpu);
        println!(
            "{:<30} achieved {achieved:.1}/s ({:+.2}% of target), {} flushes, {:.1} lines per flush",
            "",
            100.0 * (achieved / rate - 1.0),
            out.flushes,
            n as f64 / out.flushes as f64,
        );
    }
}
