//! Ingest benchmark (not a test): commits generated events from 4 sources through the store's
//! write path, flushes and compacts, then reports throughput per CPU-second, peak RSS and bytes on
//! disk per event beside `zstd -19` of the same raw lines, and the size of the term indexes.
//!
//! Run: `cargo bench -p sluice-store --bench ingest` (`BENCH_LINES=N` to change the 2,000,000;
//! `BENCH_ZSTD=0` skips the reference compression; `BENCH_MAINTENANCE=0` times the commit path and
//! one flush of everything apart; `BENCH_KEEP=DIR` keeps a copy of the segments).
//! It does not measure the network or TLS (that is the puller's benchmark).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_gen::{GenConfig, Generator, LineKind};
use sluice_pull::{Batch, Sink};
use sluice_store::{Store, StoreConfig};

const SOURCES: usize = 4;
/// Chunks close before 1 MB, like the supervisor's default.
const CHUNK_BYTES_MAX: usize = 1_000_000;
/// About what one puller read carries.
const BATCH_BYTES: usize = 256 * 1024;

fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn peak_rss_bytes() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

fn dir_bytes(p: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        total += if m.is_dir() { dir_bytes(&e.path()) } else { m.len() };
    }
    total
}

/// One source's batches: (chunk id, start offset, lines, chunk complete).
fn generate(seed: u64, lines: usize, raw: &mut Vec<u8>) -> Vec<(String, u64, Bytes, bool)> {
    let mut gen = Generator::new(&GenConfig { seed, ..GenConfig::default() });
    let mut batches = Vec::new();
    let mut chunk_no = 0u64;
    let mut chunk_len = 0usize;
    let mut batch: Vec<u8> = Vec::new();
    let mut batch_start = 0u64;
    let mut line = Vec::new();
    let mut made = 0;
    let chunk_id = |n: u64| {
        format!("C{n:06}")
            .replace('0', "D")
            .replace('1', "F")
            .replace('2', "G")
            .replace('3', "H")
            .replace('4', "J")
            .replace('5', "K")
            .replace('6', "L")
            .replace('7', "M")
            .replace('8', "N")
            .replace('9', "P")
    };
    while made < lines {
        line.clear();
        let t = gen.next_time_ns();
        if gen.next_line(t, &mut line) != LineKind::Event {
            continue;
        }
        made += 1;
        if chunk_len + line.len() >= CHUNK_BYTES_MAX {
            batches.push((chunk_id(chunk_no), batch_start, Bytes::from(std::mem::take(&mut batch)), true));
            chunk_no += 1;
            chunk_len = 0;
            batch_start = 0;
        } else if batch.len() + line.len() > BATCH_BYTES {
            let len = batch.len() as u64;
            batches.push((chunk_id(chunk_no), batch_start, Bytes::from(std::mem::take(&mut batch)), false));
            batch_start += len;
        }
        batch.extend_from_slice(&line);
        raw.extend_from_slice(&line);
        chunk_len += line.len();
    }
    batches.push((chunk_id(chunk_no), batch_start, Bytes::from(batch), false));
    batches
}

/// Size of `zstd -19` of the file at `path`.
fn zstd19(path: &Path) -> (u64, &'static str) {
    let out = std::process::Command::new("zstd").args(["-19", "-T0", "-q", "-c"]).arg(path).output();
    match out {
        Ok(o) if o.status.success() => (o.stdout.len() as u64, "zstd -19 -T0 (cli)"),
        _ => {
            let raw = std::fs::read(path).unwrap();
            let mut enc = zstd::Encoder::new(Vec::new(), 19).unwrap();
            enc.write_all(&raw).unwrap();
            (enc.finish().unwrap().len() as u64, "zstd crate level 19")
        }
    }
}

fn main() {
    let total: usize = std::env::var("BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(2_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("store");
    let mut raw = Vec::new();
    let sources: Vec<Vec<(String, u64, Bytes, bool)>> =
        (0..SOURCES).map(|i| generate(i as u64 + 1, total / SOURCES, &mut raw)).collect();
    let raw_bytes = raw.len() as u64;
    // Kept on disk, not in memory, so that peak RSS is the store's (plus the batches to send).
    let raw_path = tmp.path().join("raw.jsonl");
    std::fs::write(&raw_path, &raw).unwrap();
    drop(raw);
    eprintln!("generated {total} lines, {:.1} MB raw", raw_bytes as f64 / 1e6);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut cfg = StoreConfig::new(&data_dir);
    // Background maintenance flushes during ingest, as in production.
    cfg.maintenance = true;
    // BENCH_MAINTENANCE=0: no background flushes, so "ingest" is the commit path alone (WAL,
    // parsing, Arrow builders) and "final" one flush of every row (sort, Parquet, term index).
    if std::env::var("BENCH_MAINTENANCE").as_deref() == Ok("0") {
        cfg.maintenance = false;
    }
    let store = Arc::new(Store::open(cfg).unwrap());

    let cpu0 = cpu_time();
    let wall0 = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, batches) in sources.into_iter().enumerate() {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let source: Arc<str> = Arc::from(format!("src-{i}").as_str());
                let stream = 0x5100_0000_0000_0000_0000_0000_0000_0000u128 + i as u128;
                for (chunk, start, lines, complete) in batches {
                    let b = Batch {
                        source: source.clone(),
                        stream,
                        chunk: Arc::from(chunk.as_str()),
                        start_offset: start,
                        lines,
                        received_ns: std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_nanos() as u64,
                        chunk_complete: complete,
                    };
                    store.commit(b).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let ingest_wall = wall0.elapsed();
    let ingest_cpu = cpu_time() - cpu0;
    let store = Arc::try_unwrap(store).ok().expect("tasks are done");
    let cpu1 = cpu_time();
    let wall1 = Instant::now();
    store.flush().unwrap();
    while store.compact().unwrap() > 0 {}
    let finish_wall = wall1.elapsed();
    let finish_cpu = cpu_time() - cpu1;
    let stats = store.stats();
    let manifest = store.manifest();
    let segments = manifest.segments.len();
    // Where the bytes go: compressed size per column over all segments.
    let mut per_column: std::collections::BTreeMap<String, u64> = Default::default();
    for seg in &manifest.segments {
        let f = std::fs::File::open(data_dir.join(&seg.path)).unwrap();
        let reader = parquet::file::reader::SerializedFileReader::new(f).unwrap();
        use parquet::file::reader::FileReader;
        for rg in reader.metadata().row_groups() {
            for c in rg.columns() {
                *per_column.entry(c.column_path().string()).or_default() += c.compressed_size() as u64;
            }
        }
    }
    // Term indexes beside the segments.
    let terms_bytes: u64 = manifest
        .segments
        .iter()
        .map(|seg| std::fs::metadata(data_dir.join(sluice_store::terms_path(&seg.path))).unwrap().len())
        .sum();
    let mut cols: Vec<(String, u64)> = per_column.into_iter().collect();
    cols.sort_by_key(|(_, b)| std::cmp::Reverse(*b));
    for (name, b) in cols.iter().take(15) {
        println!("  column {name:<24} {:.2} bytes/event", *b as f64 / total as f64);
    }
    store.close().unwrap();
    let disk = dir_bytes(&data_dir);
    // BENCH_KEEP=DIR keeps a copy of the segments there, for looking at their encodings.
    if let Ok(keep) = std::env::var("BENCH_KEEP") {
        let out = Path::new(&keep);
        std::fs::create_dir_all(out).unwrap();
        for (i, seg) in manifest.segments.iter().enumerate() {
            std::fs::copy(data_dir.join(&seg.path), out.join(format!("seg-{i}.parquet"))).unwrap();
        }
    }
    // BENCH_ZSTD=0 skips the (slow) reference compression, for profiling the store alone.
    let (z, how) =
        if std::env::var("BENCH_ZSTD").as_deref() == Ok("0") { (1, "zstd skipped") } else { zstd19(&raw_path) };

    let mb = raw_bytes as f64 / 1e6;
    let cpu_all = (ingest_cpu + finish_cpu).as_secs_f64();
    println!("events                      {total}");
    println!("raw json                    {mb:.1} MB ({:.1} bytes/event)", raw_bytes as f64 / total as f64);
    println!(
        "ingest (commit, incl. background flushes)  wall {:.2} s, cpu {:.2} s",
        ingest_wall.as_secs_f64(),
        ingest_cpu.as_secs_f64()
    );
    println!(
        "final flush + compaction    wall {:.2} s, cpu {:.2} s",
        finish_wall.as_secs_f64(),
        finish_cpu.as_secs_f64()
    );
    println!("MB/s raw per cpu-second     {:.1} (ingest only: {:.1})", mb / cpu_all, mb / ingest_cpu.as_secs_f64());
    println!("events/s (wall, ingest)     {:.0}", total as f64 / ingest_wall.as_secs_f64());
    println!("events per cpu-second       {:.0}", total as f64 / cpu_all);
    println!(
        "fsyncs                      {} (mean {:.2} ms)",
        stats.fsyncs,
        stats.fsync_ns_total as f64 / stats.fsyncs.max(1) as f64 / 1e6
    );
    println!("segments after compaction   {segments}");
    println!(
        "term indexes                {terms_bytes} bytes ({:.0} KB per segment, {:.2}% of segment bytes)",
        terms_bytes as f64 / segments.max(1) as f64 / 1e3,
        terms_bytes as f64 * 100.0 / stats.segment_bytes.max(1) as f64
    );
    println!(
        "peak rss                    {:.0} MB (includes the {:.0} MB of generated batches waiting to be committed)",
        peak_rss_bytes() as f64 / 1e6,
        mb
    );
    println!(
        "bytes on disk               {disk} ({:.2} bytes/event, everything under data_dir)",
        disk as f64 / total as f64
    );
    println!("{how:<27} {z} ({:.2} bytes/event)", z as f64 / total as f64);
    println!("store / zstd -19            {:.3}", disk as f64 / z as f64);
}
