//! Term index benchmark (not a test): builds the index of generated events the way a flush does
//! and reports CPU time per row, index bytes and the measured false-positive rate of absent
//! tokens.
//!
//! Run: `cargo bench -p sluice-store --bench terms` (`BENCH_LINES=N` to change the 500,000, one
//! flush's worth). It does not measure Parquet encoding or I/O (the ingest benchmark does).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_gen::{GenConfig, Generator, LineKind};
use sluice_pull::{Batch, Sink};
use sluice_store::terms::TermsBuilder;
use sluice_store::{SegmentTerms, Store, StoreConfig};

const ROUNDS: usize = 5;
const PROBES: usize = 100_000;
const BATCH_BYTES: usize = 256 * 1024;

fn main() {
    let total: usize = std::env::var("BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(500_000);
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(tmp.path());
    cfg.maintenance = false;
    let store = Store::open(cfg).unwrap();
    let mut gen = Generator::new(&GenConfig::default());
    let mut data = Vec::new();
    let mut line = Vec::new();
    let mut made = 0;
    while made < total {
        line.clear();
        let t = gen.next_time_ns();
        if gen.next_line(t, &mut line) == LineKind::Event {
            data.extend_from_slice(&line);
            made += 1;
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // In pieces of about what one puller read carries (a WAL record has a size limit).
    let data = Bytes::from(data);
    let mut at = 0;
    while at < data.len() {
        let end = (at + BATCH_BYTES).min(data.len());
        let end = end + data[end..].iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        let batch = Batch {
            source: Arc::from("src-0"),
            stream: 1,
            chunk: Arc::from("C"),
            start_offset: at as u64,
            lines: data.slice(at..end),
            received_ns: 1,
            chunk_complete: false,
        };
        rt.block_on(store.commit(batch)).unwrap();
        at = end;
    }
    let batches = store.snapshot();
    let mut best = f64::MAX;
    let mut file = Bytes::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let mut b = TermsBuilder::new();
        for batch in &batches {
            b.add_batch(batch);
        }
        file = b.finish();
        best = best.min(started.elapsed().as_secs_f64());
    }
    let terms = SegmentTerms::from_bytes(&file).unwrap();
    let items = terms.items();
    // Tokens that cannot occur: the generator writes no `q` followed by digits and `x`.
    let hits = (0..PROBES).filter(|i| terms.may_contain_token(&format!("q{i}x"))).count();
    println!("rows                        {total}");
    println!("build (best of {ROUNDS})            {:.3} s, {:.0} ns per row", best, best * 1e9 / total as f64);
    println!(
        "distinct items              tokens {}, 3-grams {}, restricted {}",
        items.tokens, items.trigrams, items.restricted
    );
    println!(
        "index bytes                 {} ({:.2} bytes per row){}",
        file.len(),
        file.len() as f64 / total as f64,
        if terms.is_shrunk() { ", shrunk by the cap" } else { "" }
    );
    println!("absent-token false positives {:.4} ({PROBES} probes)", hits as f64 / PROBES as f64);
}
