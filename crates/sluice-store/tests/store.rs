//! Integration tests of the store: exactly-once across crashes, de-duplication, overflow rules,
//! segments read back with an independent Parquet reader, compaction, retention, term indexes.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use proptest::prelude::*;
use sluice_pull::{Batch, ChunkProgress, CommitOutcome, Sink};
use sluice_query::{normalize, tokens};
use sluice_store::{terms_path, FailPoint, SegmentTerms, Store, StoreConfig, TermsError};

const HOUR_NS: u64 = 3_600_000_000_000;
/// 2026-11-23T05:00:00Z
const T0: u64 = 1_795_410_000_000_000_000;

fn cfg(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.maintenance = false;
    c
}

fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn batch(stream: u128, chunk: &str, start_offset: u64, lines: &[String], complete: bool) -> Batch {
    let mut data = Vec::new();
    for l in lines {
        data.extend_from_slice(l.as_bytes());
        data.push(b'\n');
    }
    Batch {
        source: Arc::from("src-a"),
        stream,
        chunk: Arc::from(chunk),
        start_offset,
        lines: Bytes::from(data),
        received_ns: now_ns(),
        chunk_complete: complete,
    }
}

/// A chunk's content: line i of (stream, chunk) is the same every time it is generated.
fn chunk_lines(stream: u128, chunk: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(r#"{{"time_ns":{},"msg":"s{stream} c{chunk} line {i}","n":{i}}}"#, T0 + (i as u64) * 1_000_000)
        })
        .collect()
}

/// Offsets of each line and the end, for lines each followed by '\n'.
fn offsets(lines: &[String]) -> Vec<u64> {
    let mut out = vec![0];
    for l in lines {
        out.push(out.last().unwrap() + l.len() as u64 + 1);
    }
    out
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One stored event, from a segment or the buffer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Row {
    seq: u64,
    id: [u8; 16],
    time_ns: u64,
    source: String,
    stream: String,
    received_ns: u64,
    /// Key columns with a value, and the overflow JSON under "sluice_overflow".
    fields: BTreeMap<String, String>,
}

fn rows_of(batch: &RecordBatch) -> Vec<Row> {
    let schema = batch.schema();
    let u = |name: &str| batch.column_by_name(name).unwrap().as_primitive::<UInt64Type>().clone();
    let s = |name: &str| batch.column_by_name(name).unwrap().as_string::<i32>().clone();
    let (seq, time, recv) = (u("sluice_seq"), u("time_ns"), u("sluice_received_ns"));
    let (source, stream) = (s("sluice_source"), s("sluice_stream"));
    let id = batch.column_by_name("sluice_id").unwrap().as_fixed_size_binary().clone();
    (0..batch.num_rows())
        .map(|r| {
            let mut fields = BTreeMap::new();
            for (i, f) in schema.fields().iter().enumerate().skip(6) {
                let col = batch.column(i);
                if col.is_null(r) {
                    continue;
                }
                let v = match f.data_type() {
                    DataType::Utf8 => format!("s:{}", col.as_string::<i32>().value(r)),
                    DataType::UInt64 => format!("u:{}", col.as_primitive::<UInt64Type>().value(r)),
                    other => panic!("unexpected column type {other}"),
                };
                fields.insert(f.name().clone(), v);
            }
            Row {
                seq: seq.value(r),
                id: id.value(r).try_into().unwrap(),
                time_ns: time.value(r),
                source: source.value(r).to_string(),
                stream: stream.value(r).to_string(),
                received_ns: recv.value(r),
                fields,
            }
        })
        .collect()
}

/// Read a segment with the parquet crate's own reader, straight from the file.
fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(f).unwrap().build().unwrap().map(|b| b.unwrap()).collect()
}

/// Every event: the live segments (read independently) and the buffer.
fn all_rows(store: &Store) -> Vec<Row> {
    let view = store.view();
    let mut rows = Vec::new();
    for seg in &view.segments {
        for b in read_parquet(&store.data_dir().join(&seg.path)) {
            rows.extend(rows_of(&b));
        }
    }
    for b in &view.buffered {
        rows.extend(rows_of(b));
    }
    rows.sort();
    rows
}

fn id_of(stream: u128, chunk: &str, offset: u64, line: &str) -> [u8; 16] {
    sluice_event::event_id(stream, chunk, offset, line.as_bytes()).to_be_bytes()
}

/// Checks that the stored ids are exactly `want` with no duplicate, and seqs are unique.
fn assert_exactly(store: &Store, want: &BTreeSet<[u8; 16]>) {
    let rows = all_rows(store);
    let ids: Vec<[u8; 16]> = rows.iter().map(|r| r.id).collect();
    let set: BTreeSet<[u8; 16]> = ids.iter().copied().collect();
    assert_eq!(set.len(), ids.len(), "duplicate events stored");
    assert_eq!(&set, want, "stored events differ from the model");
    let seqs: BTreeSet<u64> = rows.iter().map(|r| r.seq).collect();
    assert_eq!(seqs.len(), rows.len(), "duplicate sluice_seq");
}

/// Wait for the background maintenance to make `done` true (deadline 60 s: a loaded machine).
fn poll_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 60 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn committed(o: CommitOutcome) -> u64 {
    match o {
        CommitOutcome::Committed { offset } => offset,
        other => panic!("expected Committed, got {other:?}"),
    }
}

#[test]
fn commit_is_visible_at_once_and_replayed_exactly_once_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let lines = chunk_lines(1, "C", 6);
    let off = offsets(&lines);
    let mut want = BTreeSet::new();
    {
        let store = Store::open(cfg(dir.path())).unwrap();
        let o = rt.block_on(store.commit(batch(1, "C", 0, &lines[..3], false))).unwrap();
        assert_eq!(committed(o), off[3]);
        for i in 0..3 {
            want.insert(id_of(1, "C", off[i], &lines[i]));
        }
        assert_exactly(&store, &want);
        assert_eq!(store.progress(1, "C"), Some(ChunkProgress { offset: off[3], complete: false }));
        // Dropped without flushing: a crash.
    }
    let store = Store::open(cfg(dir.path())).unwrap();
    assert_exactly(&store, &want);
    assert_eq!(store.progress(1, "C"), Some(ChunkProgress { offset: off[3], complete: false }));
    // A re-fetch of everything after the restart stores only the new lines.
    let o = rt.block_on(store.commit(batch(1, "C", 0, &lines, true))).unwrap();
    assert_eq!(committed(o), off[6]);
    for i in 3..6 {
        want.insert(id_of(1, "C", off[i], &lines[i]));
    }
    assert_exactly(&store, &want);
    assert_eq!(store.stats().lines_deduplicated, 3);
    assert_eq!(store.progress(1, "C"), Some(ChunkProgress { offset: off[6], complete: true }));
    // Seqs continue after the restart and are never reused.
    let seqs: Vec<u64> = all_rows(&store).iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    drop(store);
    let store = Store::open(cfg(dir.path())).unwrap();
    store.flush().unwrap();
    drop(store);
    let store = Store::open(cfg(dir.path())).unwrap();
    assert_exactly(&store, &want);
    let o = rt.block_on(store.commit(batch(1, "D", 0, &chunk_lines(1, "D", 1), false))).unwrap();
    committed(o);
    assert_eq!(all_rows(&store).iter().map(|r| r.seq).max(), Some(7));
}

#[test]
fn overlapping_batches_resume_on_a_gap_and_identical_lines_are_two_events() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    let lines = chunk_lines(2, "C", 5);
    let off = offsets(&lines);
    // A gap: nothing committed yet, a batch from line 2.
    let o = rt.block_on(store.commit(batch(2, "C", off[2], &lines[2..], false))).unwrap();
    assert_eq!(o, CommitOutcome::Resume { offset: 0 });
    assert_eq!(store.stats().resumes, 1);
    rt.block_on(store.commit(batch(2, "C", 0, &lines[..3], false))).unwrap();
    // Overlap: lines 1..5 after 0..3 keeps 3 and 4 only.
    let o = rt.block_on(store.commit(batch(2, "C", off[1], &lines[1..], false))).unwrap();
    assert_eq!(committed(o), off[5]);
    assert_eq!(all_rows(&store).len(), 5);
    assert_eq!(store.stats().lines_deduplicated, 2);
    // A batch wholly below the offset: nothing stored, the offset answered.
    let o = rt.block_on(store.commit(batch(2, "C", 0, &lines[..2], false))).unwrap();
    assert_eq!(committed(o), off[5]);

    // The same bytes at two offsets of one chunk are two events with two ids.
    let same = vec![r#"{"time_ns":5,"msg":"same"}"#.to_string(); 2];
    rt.block_on(store.commit(batch(2, "E", 0, &same, false))).unwrap();
    let rows: Vec<Row> =
        all_rows(&store).into_iter().filter(|r| r.fields.get("msg").map(String::as_str) == Some("s:same")).collect();
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0].id, rows[1].id);
    assert_eq!(rows[1].id, id_of(2, "E", same[0].len() as u64 + 1, &same[1]));
}

#[test]
fn two_urls_of_one_supervisor_committing_at_once_store_each_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Arc::new(Store::open(cfg(dir.path())).unwrap());
    let lines = chunk_lines(3, "C", 200);
    let off = offsets(&lines);
    let mut want = BTreeSet::new();
    for (i, l) in lines.iter().enumerate() {
        want.insert(id_of(3, "C", off[i], l));
    }
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let store = store.clone();
            let lines = lines.clone();
            let off = off.clone();
            tasks.push(tokio::spawn(async move {
                // Each "URL" reads in its own batch sizes and resumes where told.
                let mut at = 0usize;
                while at < lines.len() {
                    let end = (at + 7).min(lines.len());
                    match store.commit(batch(3, "C", off[at], &lines[at..end], end == lines.len())).await.unwrap() {
                        CommitOutcome::Committed { offset } => at = off.iter().position(|o| *o == offset).unwrap(),
                        CommitOutcome::Resume { offset } => at = off.iter().position(|o| *o == offset).unwrap(),
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    assert_exactly(&store, &want);
    assert_eq!(store.progress(3, "C"), Some(ChunkProgress { offset: off[200], complete: true }));
}

#[test]
fn type_conflicts_and_the_key_cap_go_to_overflow_and_columns_stay_typed() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.keys_max = 3;
    let store = Store::open(c).unwrap();
    let lines: Vec<String> = [
        r#"{"time_ns":1,"status":200,"path":"/a"}"#,
        r#"{"time_ns":2,"status":"OK","path":7,"sluice_bad":"float","sluice_raw":"x"}"#,
        r#"{"time_ns":3,"extra":"past the cap","sluice_seq":99}"#,
        "not json at all",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    rt.block_on(store.commit(batch(4, "C", 0, &lines, false))).unwrap();
    store.flush().unwrap();
    let rows = all_rows(&store);
    assert_eq!(rows.len(), 4);
    let by_seq: HashMap<u64, &Row> = rows.iter().map(|r| (r.seq, r)).collect();
    assert_eq!(by_seq[&1].fields.get("status").unwrap(), "u:200");
    assert_eq!(by_seq[&2].fields.get("sluice_overflow").unwrap(), r#"s:{"status":"OK","path":7,"sluice_raw":"x"}"#);
    assert_eq!(by_seq[&2].fields.get("sluice_bad").unwrap(), "s:float");
    assert_eq!(by_seq[&3].fields.get("sluice_overflow").unwrap(), r#"s:{"extra":"past the cap","sluice_seq":99}"#);
    assert_eq!(by_seq[&4].fields.get("sluice_overflow").unwrap(), r#"s:{"sluice_unparsed":"not json at all"}"#);
    assert_eq!(by_seq[&4].time_ns, by_seq[&4].received_ns);
    // The columns in the file keep their first types.
    let seg = &store.manifest().segments[0];
    let batches = read_parquet(&store.data_dir().join(&seg.path));
    let schema = batches[0].schema();
    assert_eq!(schema.field_with_name("status").unwrap().data_type(), &DataType::UInt64);
    assert_eq!(schema.field_with_name("path").unwrap().data_type(), &DataType::Utf8);
    assert_eq!(schema.field_with_name("sluice_bad").unwrap().data_type(), &DataType::Utf8);
    assert!(schema.field_with_name("extra").is_err());
    let keys: Vec<(String, sluice_store::KeyType)> =
        store.manifest().keys.iter().map(|k| (k.name.clone(), k.key_type)).collect();
    assert_eq!(keys.len(), 3);
    let st = store.stats();
    assert_eq!((st.lines_unparsed, st.values_overflowed), (1, 5));
}

#[test]
fn flushed_segments_hold_every_row_once_sorted_and_partitioned_by_hour() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    // Events over three hours, out of time order within and across batches, from two sources.
    let lines: Vec<String> = (0..300u64)
        .map(|i| {
            let t = T0 + (i * 7919 % 300) * HOUR_NS / 100;
            format!(r#"{{"time_ns":{t},"level":"INFO","i":{i},"host":"h{}"}}"#, i % 3)
        })
        .collect();
    let off = offsets(&lines);
    for part in 0..3 {
        let r = part * 100..(part + 1) * 100;
        let mut b = batch(5, "C", off[r.start], &lines[r], false);
        if part == 1 {
            b.source = Arc::from("src-0");
        }
        rt.block_on(store.commit(b)).unwrap();
    }
    let before = all_rows(&store);
    assert_eq!(store.flush().unwrap(), 300);
    assert!(store.snapshot().is_empty());
    let m = store.manifest();
    assert_eq!(m.segments.len(), 3);
    assert_eq!(m.flushed_seq, 300);
    let mut rows = Vec::new();
    for seg in &m.segments {
        assert!(seg.path.starts_with("segments/sluice_date=2026-11-23/sluice_hour=0"), "{}", seg.path);
        let batches = read_parquet(&dir.path().join(&seg.path));
        let seg_rows: Vec<Row> = batches.iter().flat_map(rows_of).collect();
        assert_eq!(seg_rows.len() as u64, seg.rows);
        // Sorted by source, then shape (one here: every line has the same keys), then time: each
        // source's rows are one run.
        let keys: Vec<(&str, u64)> = seg_rows.iter().map(|r| (r.source.as_str(), r.time_ns)).collect();
        assert!(keys.windows(2).all(|w| w[0] <= w[1]), "rows sorted by (sluice_source, time_ns)");
        assert_eq!((keys[0].0, keys.last().unwrap().0), ("src-0", "src-a"), "both sources in {}", seg.path);
        let times: Vec<u64> = seg_rows.iter().map(|r| r.time_ns).collect();
        assert_eq!((*times.iter().min().unwrap(), *times.iter().max().unwrap()), (seg.time_ns_min, seg.time_ns_max));
        assert!(times.iter().all(|t| t / HOUR_NS == seg.partition_hour));
        let hour = format!("sluice_hour={:02}", seg.partition_hour % 24);
        assert!(seg.path.contains(&hour));
        assert_eq!(std::fs::metadata(dir.path().join(&seg.path)).unwrap().len(), seg.bytes);
        // Column order and types as documented.
        let names: Vec<String> = batches[0].schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(&names[..7], sluice_store::FIXED_COLUMNS);
        assert_eq!(batches[0].schema().field(4).data_type(), &DataType::FixedSizeBinary(16));
        rows.extend(seg_rows);
    }
    rows.sort();
    assert_eq!(rows, before, "segments hold exactly what the buffer held");
    for r in &rows {
        let i: usize = r.fields["i"].strip_prefix("u:").unwrap().parse().unwrap();
        assert_eq!(r.id, id_of(5, "C", off[i], &lines[i]));
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.stream, format!("{:032x}", 5));
        assert_eq!(r.source, if (100..200).contains(&i) { "src-0" } else { "src-a" });
    }
    // The WAL files before the flush are gone, and a restart replays nothing twice.
    drop(store);
    let store = Store::open(cfg(dir.path())).unwrap();
    assert!(store.snapshot().is_empty());
    assert_eq!(all_rows(&store), before);
}

#[test]
fn rows_after_a_seq_come_in_seq_order_whatever_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    // Three kinds of lines (three shapes, kept apart in the buffer), interleaved.
    let lines: Vec<String> = (0..600u64)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"time_ns":{},"level":"INFO","i":{i}}}"#, T0 + i),
            1 => format!(r#"{{"time_ns":{},"url":"/u{i}","i":{i},"status":200}}"#, T0 + i),
            _ => format!(r#"{{"time_ns":{},"i":{i}}}"#, T0 + i),
        })
        .collect();
    let off = offsets(&lines);
    rt.block_on(store.commit(batch(3, "C", 0, &lines[..300], false))).unwrap();
    // Half of them being flushed would be in `flushing`; here, a flush in between.
    store.flush().unwrap();
    rt.block_on(store.commit(batch(3, "C", off[300], &lines[300..], false))).unwrap();
    for after in [0, 300, 301, 450, 599, 600] {
        let (batches, applied) = store.buffered_after(after);
        assert_eq!(applied, 600);
        let rows: Vec<Row> = batches.iter().flat_map(rows_of).collect();
        let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
        let want: Vec<u64> = (after.max(300) + 1..=600).collect();
        assert_eq!(seqs, want, "after {after}");
        for r in &rows {
            assert_eq!(r.fields["i"], format!("u:{}", r.seq - 1));
        }
    }
}

#[test]
fn compaction_keeps_every_row_once_with_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    let lines = chunk_lines(6, "C", 50);
    let off = offsets(&lines);
    for part in 0..5 {
        let r = part * 10..(part + 1) * 10;
        rt.block_on(store.commit(batch(6, "C", off[r.start], &lines[r], false))).unwrap();
        store.flush().unwrap();
    }
    let before = all_rows(&store);
    let inputs: Vec<String> = store.manifest().segments.iter().map(|s| s.path.clone()).collect();
    assert_eq!(inputs.len(), 5);
    assert_eq!(store.compact().unwrap(), 1);
    let m = store.manifest();
    assert_eq!(m.segments.len(), 1);
    assert_eq!((m.segments[0].seq_min, m.segments[0].seq_max, m.segments[0].rows), (1, 50, 50));
    assert_eq!(all_rows(&store), before);
    for p in inputs {
        assert!(!dir.path().join(p).exists(), "inputs are deleted");
    }
    assert_eq!(store.stats().compactions, 1);
    assert_eq!(store.compact().unwrap(), 0);
}

#[test]
fn retention_by_size_drops_the_oldest_and_by_age_the_expired() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    let store = Store::open(c.clone()).unwrap();
    for chunk in ["C", "D", "F"] {
        let lines = chunk_lines(7, chunk, 20);
        rt.block_on(store.commit(batch(7, chunk, 0, &lines, true))).unwrap();
        store.flush().unwrap();
    }
    let segs = store.manifest().segments;
    assert_eq!(segs.len(), 3);
    let newest_two: u64 = segs[1].disk_bytes() + segs[2].disk_bytes();
    drop(store);
    c.retention_bytes_max = newest_two;
    let store = Store::open(c.clone()).unwrap();
    assert_eq!(store.apply_retention(now_ns()).unwrap(), 1);
    let left: Vec<String> = store.manifest().segments.iter().map(|s| s.path.clone()).collect();
    assert_eq!(left, [segs[1].path.clone(), segs[2].path.clone()]);
    assert!(!dir.path().join(&segs[0].path).exists());
    assert_eq!(all_rows(&store).len(), 40);
    // By age: an hour later, with a 30-minute window, everything is gone.
    drop(store);
    c.retention_age_max = std::time::Duration::from_secs(1800);
    let store = Store::open(c).unwrap();
    assert_eq!(store.apply_retention(now_ns() + HOUR_NS).unwrap(), 2);
    assert!(store.manifest().segments.is_empty());
    assert_eq!(store.stats().retention_segments_deleted, 2);
}

#[test]
fn a_truncated_wal_tail_is_cut_and_progress_matches_the_events_kept() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let lines = chunk_lines(8, "C", 9);
    let off = offsets(&lines);
    {
        let store = Store::open(cfg(dir.path())).unwrap();
        for part in 0..3 {
            rt.block_on(store.commit(batch(8, "C", off[part * 3], &lines[part * 3..part * 3 + 3], false))).unwrap();
        }
    }
    // Cut the newest WAL file in the middle of its last record.
    let wal_dir = dir.path().join("wal");
    let mut files: Vec<_> = std::fs::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let last = files.iter().rev().find(|p| std::fs::metadata(p).unwrap().len() > 8).unwrap();
    let len = std::fs::metadata(last).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(last).unwrap().set_len(len - 10).unwrap();
    let store = Store::open(cfg(dir.path())).unwrap();
    let want: BTreeSet<[u8; 16]> = (0..6).map(|i| id_of(8, "C", off[i], &lines[i])).collect();
    assert_exactly(&store, &want);
    assert_eq!(store.progress(8, "C").unwrap().offset, off[6]);
    // The puller resumes at the offset and the lost tail comes back once.
    rt.block_on(store.commit(batch(8, "C", off[6], &lines[6..], true))).unwrap();
    let want: BTreeSet<[u8; 16]> = (0..9).map(|i| id_of(8, "C", off[i], &lines[i])).collect();
    assert_exactly(&store, &want);
}

#[test]
fn a_crash_at_every_step_loses_nothing_acknowledged_and_stores_nothing_twice() {
    let points = [
        FailPoint::BeforeSync,
        FailPoint::FlushAfterSegments,
        FailPoint::FlushAfterManifest,
        FailPoint::CompactAfterOutput,
        FailPoint::CompactAfterManifest,
        FailPoint::RetentionAfterManifest,
    ];
    for point in points {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let lines = chunk_lines(9, "C", 40);
        let off = offsets(&lines);
        let mut want = BTreeSet::new();
        let mut c = cfg(dir.path());
        c.fail_at = Some(point);
        if point == FailPoint::RetentionAfterManifest {
            c.retention_bytes_max = 1;
        }
        {
            let store = Store::open(c).unwrap();
            let mut failed = false;
            for part in 0..4 {
                let r = part * 10..(part + 1) * 10;
                let res = rt.block_on(store.commit(batch(9, "C", off[r.start], &lines[r.clone()], false)));
                match res {
                    Ok(_) => want.extend(r.map(|i| id_of(9, "C", off[i], &lines[i]))),
                    Err(_) => {
                        assert_eq!(point, FailPoint::BeforeSync);
                        // Written but never acknowledged: a restart finds the record whole (the
                        // page cache outlives the process) and keeps it, with its progress, so
                        // the re-fetch below cannot store it twice.
                        want.extend(r.map(|i| id_of(9, "C", off[i], &lines[i])));
                        failed = true;
                        break;
                    }
                }
                if let Err(e) = store.flush() {
                    assert!(e.to_string().contains("injected"), "{e}");
                    failed = true;
                    break;
                }
            }
            if !failed {
                let res = match point {
                    FailPoint::RetentionAfterManifest => store.apply_retention(now_ns()).map(|_| ()),
                    _ => store.compact().map(|_| ()),
                };
                assert!(res.is_err(), "{point:?} was reached");
                if point == FailPoint::RetentionAfterManifest {
                    want.clear();
                }
            }
            // Everything refuses work after the "crash".
            assert!(rt.block_on(store.commit(batch(9, "Z", 0, &lines[..1], false))).is_err());
        }
        let store = Store::open(cfg(dir.path())).unwrap();
        assert_exactly(&store, &want);
        // Nothing under segments/ but the live segments and their valid term indexes.
        assert_term_indexes_consistent(&store, &rt);
        // And it goes on working: a re-fetch of the whole chunk adds only what was not acked.
        rt.block_on(store.commit(batch(9, "C", 0, &lines, true))).unwrap();
        if point != FailPoint::RetentionAfterManifest {
            let all: BTreeSet<[u8; 16]> = (0..40).map(|i| id_of(9, "C", off[i], &lines[i])).collect();
            assert_exactly(&store, &all);
        }
    }
}

#[test]
fn a_full_disk_refuses_a_commit_and_the_retry_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let lines = chunk_lines(11, "C", 30);
    let off = offsets(&lines);
    let ids = |r: std::ops::Range<usize>| r.map(|i| id_of(11, "C", off[i], &lines[i])).collect::<BTreeSet<_>>();
    {
        let mut c = cfg(dir.path());
        c.fail_at = Some(FailPoint::WalAppendDiskFull);
        let store = Store::open(c).unwrap();
        // The disk fills half-way through the first record: refused, not acknowledged, and said so.
        let e = rt.block_on(store.commit(batch(11, "C", 0, &lines[..10], false))).unwrap_err();
        assert!(e.contains("No space left on device"), "{e}");
        let st = store.stats();
        assert_eq!((st.wal_append_errors, st.stopped.as_deref()), (1, None));
        assert!(st.wal_append_error.as_deref().is_some_and(|m| m.contains("disk not full")), "{st:?}");
        assert_eq!(store.progress(11, "C"), None);
        // Room again: the puller sends the same lines again, then goes on.
        rt.block_on(store.commit(batch(11, "C", 0, &lines[..10], false))).unwrap();
        // The last refusal stays, with its age, so that a reader can tell "refusing now and
        // then" from "recovered".
        let st = store.stats();
        assert!(st.wal_append_error.as_deref().is_some_and(|m| m.contains("disk not full")), "{st:?}");
        assert!(st.wal_append_refused_ago.is_some_and(|ago| ago < std::time::Duration::from_secs(60)), "{st:?}");
        assert_eq!(st.wal_append_errors, 1);
        rt.block_on(store.commit(batch(11, "C", off[10], &lines[10..20], false))).unwrap();
        assert_exactly(&store, &ids(0..20));
        // Dropped without a flush: the rows live only in the WAL, behind the failed append.
    }
    let store = Store::open(cfg(dir.path())).unwrap();
    assert_exactly(&store, &ids(0..20));
    rt.block_on(store.commit(batch(11, "C", 0, &lines, true))).unwrap();
    store.flush().unwrap();
    assert_exactly(&store, &ids(0..30));
}

#[test]
fn events_from_a_broken_clock_make_a_bounded_number_of_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    // 2,000 events with times anywhere in three centuries (about 2,000 hours), and a few of T0.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut lines: Vec<String> = (0..2000)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            format!(r#"{{"time_ns":{},"i":{i}}}"#, state % 9_000_000_000_000_000_000)
        })
        .collect();
    lines.extend((0..5).map(|i| format!(r#"{{"time_ns":{},"i":{}}}"#, T0 + i, 2000 + i)));
    let sent = batch(40, "C", 0, &lines, true);
    let received_hour = sent.received_ns / HOUR_NS;
    rt.block_on(store.commit(sent)).unwrap();
    assert_eq!(store.flush().unwrap(), 2005);
    let m = store.manifest();
    assert_eq!(m.segments.len(), sluice_store::segment::FLUSH_PARTITIONS_MAX);
    let hours: BTreeSet<u64> = m.segments.iter().map(|s| s.partition_hour).collect();
    assert!(hours.contains(&(T0 / HOUR_NS)) && hours.contains(&received_hour), "{hours:?}");
    // Every event keeps its own time, and a query's pruning (by each segment's range of times in
    // the manifest) still finds it.
    let rows = all_rows(&store);
    assert_eq!(rows.len(), 2005);
    for line in &lines {
        let t: u64 = line[11..line.find(',').unwrap()].parse().unwrap();
        assert!(rows.iter().any(|r| r.time_ns == t), "{t} kept");
        assert!(m.segments.iter().any(|s| (s.time_ns_min..=s.time_ns_max).contains(&t)), "{t} in a segment's range");
    }
}

#[test]
fn a_stray_file_under_segments_is_deleted_at_start_and_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = Store::open(cfg(dir.path())).unwrap();
        rt.block_on(store.commit(batch(10, "C", 0, &chunk_lines(10, "C", 3), false))).unwrap();
        store.flush().unwrap();
    }
    let stray = dir.path().join("segments/sluice_date=2026-11-23/sluice_hour=05/seg-999999999999.parquet");
    std::fs::write(&stray, b"half a segm").unwrap();
    let stray_terms = dir.path().join("segments/sluice_date=2026-11-23/sluice_hour=05/seg-999999999998.terms");
    std::fs::write(&stray_terms, b"SLTERMS").unwrap();
    // What a crash while writing a segment leaves.
    let partial = dir.path().join("segments/sluice_date=2026-11-23/sluice_hour=05/seg-000000000002.parquet.partial");
    std::fs::write(&partial, b"PAR1").unwrap();
    let store = Store::open(cfg(dir.path())).unwrap();
    assert!(!stray.exists() && !stray_terms.exists() && !partial.exists());
    assert_eq!(all_rows(&store).len(), 3);
    // The live segment keeps its term index.
    assert_term_indexes_consistent(&store, &rt);
}

#[test]
fn a_lost_chunk_is_recorded_complete_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    {
        let store = Store::open(cfg(dir.path())).unwrap();
        store.chunk_lost("src-a", 11, "C", 0);
        // A later commit's group sync makes the mark durable too.
        rt.block_on(store.commit(batch(11, "D", 0, &chunk_lines(11, "D", 1), false))).unwrap();
        assert_eq!(store.stats().chunks_lost, 1);
    }
    let store = Store::open(cfg(dir.path())).unwrap();
    assert_eq!(store.progress(11, "C"), Some(ChunkProgress { offset: 0, complete: true }));
    let all = store.progress_all();
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|p| &*p.chunk == "C" && p.lost));
    assert_eq!(store.stats().chunks_lost, 1);
}

#[test]
fn background_maintenance_flushes_at_the_row_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = StoreConfig::new(dir.path());
    c.flush_rows_max = 10;
    let store = Store::open(c).unwrap();
    rt.block_on(store.commit(batch(12, "C", 0, &chunk_lines(12, "C", 25), false))).unwrap();
    poll_until("a flush", || !store.manifest().segments.is_empty());
    assert_eq!(all_rows(&store).len(), 25);
    store.close().unwrap();
}

#[test]
fn a_flush_that_fails_is_retried_and_the_error_clears_once_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = StoreConfig::new(dir.path());
    c.flush_rows_max = 10;
    let store = Store::open(c).unwrap();
    // A file where the events' partition directory goes: writing their segment fails (as a full
    // or broken disk would make it), whoever runs the test.
    let hour_dir = sluice_store::segment::partition_dir(T0 / HOUR_NS);
    let blocker = dir.path().join("segments").join(hour_dir.split('/').next().unwrap());
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap();
    rt.block_on(store.commit(batch(14, "C", 0, &chunk_lines(14, "C", 25), false))).unwrap();
    poll_until("a failed flush", || store.stats().maintenance_error.is_some());
    assert!(store.manifest().segments.is_empty());
    assert_eq!(store.stats().rows_buffered, 25, "the rows stay buffered");
    std::fs::remove_file(&blocker).unwrap();
    poll_until("a flush after the failure", || !store.manifest().segments.is_empty());
    poll_until("the error to clear", || store.stats().maintenance_error.is_none());
    assert!(store.stats().maintenance_errors >= 1);
    assert_eq!(all_rows(&store).len(), 25);
    store.close().unwrap();
}

#[test]
fn retention_frees_the_disk_while_flushes_fail() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    {
        let store = Store::open(c.clone()).unwrap();
        for chunk in ["C", "D"] {
            rt.block_on(store.commit(old_batch(15, chunk, 10, true, 2 * HOUR_NS))).unwrap();
            store.flush().unwrap();
        }
        assert_eq!(store.manifest().segments.len(), 2);
        store.close().unwrap();
    }
    // Events two days later, whose partition directory is blocked by a file: their flush fails
    // at every pass, as on a full disk.
    let later = T0 + 48 * HOUR_NS;
    let date_dir = sluice_store::segment::partition_dir(later / HOUR_NS);
    let blocker = dir.path().join("segments").join(date_dir.split('/').next().unwrap());
    c.maintenance = true;
    c.flush_rows_max = 5;
    c.retention_age_max = std::time::Duration::from_secs(3600);
    let store = Store::open(c).unwrap();
    std::fs::write(&blocker, b"in the way").unwrap(); // after the start, which deletes strays
    let lines: Vec<String> = (0..10).map(|i| format!(r#"{{"time_ns":{},"msg":"late {i}"}}"#, later + i)).collect();
    rt.block_on(store.commit(batch(16, "E", 0, &lines, false))).unwrap();
    poll_until("the expired segments deleted while the flush fails", || {
        store.manifest().segments.is_empty() && store.stats().maintenance_error.is_some()
    });
    assert_eq!(store.stats().retention_segments_deleted, 2);
    assert_eq!(store.stats().rows_buffered, 10);
    std::fs::remove_file(&blocker).unwrap();
    poll_until("the flush once the way is clear", || store.manifest().segments.len() == 1);
    assert_eq!(all_rows(&store).len(), 10);
    store.close().unwrap();
}

#[test]
fn a_damaged_segment_is_left_out_of_compaction_and_other_hours_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.compact_inputs_min = 2;
    let store = Store::open(c).unwrap();
    // Two small segments in each of two hours.
    for (hour, chunks) in [(0u64, ["C", "D"]), (1, ["F", "G"])] {
        for chunk in chunks {
            let lines: Vec<String> =
                (0..10).map(|i| format!(r#"{{"time_ns":{},"msg":"{chunk} {i}"}}"#, T0 + hour * HOUR_NS + i)).collect();
            rt.block_on(store.commit(batch(17, chunk, 0, &lines, true))).unwrap();
            store.flush().unwrap();
        }
    }
    let segs = store.manifest().segments;
    assert_eq!(segs.len(), 4);
    // The first hour's first segment loses its footer.
    let damaged = segs.iter().filter(|s| s.partition_hour == T0 / HOUR_NS).min_by_key(|s| s.seq_min).unwrap();
    let file = dir.path().join(&damaged.path);
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    let e = store.compact().unwrap_err().to_string();
    assert!(e.contains(&damaged.path), "{e}");
    let m = store.manifest();
    let in_hour = |h: u64| m.segments.iter().filter(|s| s.partition_hour == h).count();
    assert_eq!(in_hour(T0 / HOUR_NS + 1), 1, "the healthy hour was compacted");
    assert_eq!(in_hour(T0 / HOUR_NS), 2, "the damaged hour is left as it was");
    assert_eq!(store.compact().unwrap(), 0, "the damaged group is not tried again at every pass");
}

#[test]
fn compaction_never_merges_rows_received_far_apart() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.compact_inputs_min = 2;
    c.retention_age_max = std::time::Duration::from_secs(8 * 3600); // groups span at most 1 h
    let store = Store::open(c).unwrap();
    // One hour of event time, received 3 h ago (twice) and now (twice): a stuck clock's events.
    for (chunk, ago) in [("C", 3 * HOUR_NS), ("D", 3 * HOUR_NS - 60_000_000_000), ("F", 0), ("G", 0)] {
        rt.block_on(store.commit(old_batch(19, chunk, 10, true, ago))).unwrap();
        store.flush().unwrap();
    }
    assert_eq!(store.compact().unwrap(), 1);
    let m = store.manifest();
    assert_eq!(m.segments.len(), 3, "only the two received 3 h ago were merged: {:?}", m.segments);
    assert!(m.segments.iter().all(|s| s.received_ns_max - s.received_ns_min < HOUR_NS));
    // Then the two received now, never with the older output.
    assert_eq!(store.compact().unwrap(), 1);
    let m = store.manifest();
    assert_eq!(m.segments.len(), 2);
    assert!(m.segments.iter().all(|s| s.received_ns_max - s.received_ns_min < HOUR_NS));
    assert_eq!(all_rows(&store).len(), 40);
}

#[test]
fn wide_rows_are_compacted_whole_and_their_size_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.compact_inputs_min = 2;
    let store = Store::open(c).unwrap();
    // Repetitive 100 KB values: small files, large rows.
    let wide = "stack frame ".repeat(8_500);
    for chunk in ["C", "D", "F"] {
        let lines: Vec<String> =
            (0..40).map(|i| format!(r#"{{"time_ns":{},"msg":"{chunk} {i}","trace":"{wide}"}}"#, T0 + i)).collect();
        rt.block_on(store.commit(batch(20, chunk, 0, &lines, true))).unwrap();
        store.flush().unwrap();
    }
    let segs = store.manifest().segments;
    assert!(segs.iter().all(|s| s.data_bytes > 40 * 100_000 && s.bytes < s.data_bytes / 10), "{segs:?}");
    let before = all_rows(&store);
    assert_eq!(store.compact().unwrap(), 1);
    let m = store.manifest();
    assert_eq!(m.segments.len(), 1);
    assert!(m.segments[0].data_bytes >= segs.iter().map(|s| s.data_bytes).sum::<u64>() / 2);
    assert_eq!(all_rows(&store), before);
}

#[test]
fn bytes_on_disk_count_the_term_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    let store = Store::open(c.clone()).unwrap();
    for chunk in ["C", "D", "F"] {
        rt.block_on(store.commit(batch(18, chunk, 0, &chunk_lines(18, chunk, 200), true))).unwrap();
        store.flush().unwrap();
    }
    let on_disk: u64 =
        files_under_segments(dir.path()).iter().map(|p| std::fs::metadata(dir.path().join(p)).unwrap().len()).sum();
    assert!(files_under_segments(dir.path()).iter().any(|p| p.ends_with(".terms")));
    assert_eq!(store.stats().segment_bytes, on_disk);
    // Retention by size counts them too: a limit of the two newest segments' files (Parquet
    // only) keeps just one.
    let segs = store.manifest().segments;
    let newest_two_parquet: u64 = segs[1].bytes + segs[2].bytes;
    drop(store);
    c.retention_bytes_max = newest_two_parquet;
    let store = Store::open(c).unwrap();
    assert_eq!(store.apply_retention(now_ns()).unwrap(), 2);
}

#[test]
fn the_buffer_is_bounded_by_bytes_and_flushes_at_half_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = StoreConfig::new(dir.path());
    c.buffer_bytes_max = 16 * 1024 * 1024;
    c.flush_rows_max = 10_000_000;
    c.flush_age_max = std::time::Duration::from_secs(3600);
    let store = Store::open(c).unwrap();
    // 48 MB of events, three times the bound, in batches of 200 lines of ~2 KB: far below the
    // row threshold, so only the byte bound can flush them.
    let pad = "x".repeat(2000);
    let lines: Vec<String> =
        (0..24_000).map(|i| format!(r#"{{"time_ns":{},"text":"{pad}","n":{i}}}"#, T0 + i as u64 * 1_000_000)).collect();
    let off = offsets(&lines);
    let mut peak = 0u64;
    for start in (0..lines.len()).step_by(200) {
        let r = start..start + 200;
        rt.block_on(store.commit(batch(13, "C", off[r.start], &lines[r], false))).unwrap();
        peak = peak.max(store.stats().bytes_buffered);
    }
    // A commit is let in below the bound, so the buffer may pass it by one batch (~420 KB).
    assert!(peak <= 16 * 1024 * 1024 + 1024 * 1024, "buffer held {peak} bytes");
    assert!(peak >= 4 * 1024 * 1024, "buffer held only {peak} bytes: is it measured?");
    assert!(!store.manifest().segments.is_empty(), "flushed by bytes");
    assert_eq!(all_rows(&store).len(), lines.len());
    store.close().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    /// Commit lines [from, from+len) of chunk `chunk` (of 4: two streams × two chunks).
    Commit {
        chunk: usize,
        from: usize,
        len: usize,
    },
    Flush,
    Compact,
    /// Drop the store without flushing, optionally appending a torn record to the WAL.
    Crash {
        torn_tail: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..30usize, 1..8usize).prop_map(|(chunk, from, len)| Op::Commit { chunk, from, len }),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => any::<bool>().prop_map(|torn_tail| Op::Crash { torn_tail }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random batches (behind, at and past the committed offset), flushes, compactions and
    /// crashes against a model of the committed (stream, chunk, offset) set.
    #[test]
    fn random_batches_and_crashes_match_the_model(ops in proptest::collection::vec(op(), 1..30)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let chunks: Vec<(u128, &str)> = vec![(21, "C"), (21, "D"), (22, "C"), (22, "D")];
        let contents: Vec<Vec<String>> = chunks.iter().map(|(s, c)| chunk_lines(*s, c, 40)).collect();
        let offs: Vec<Vec<u64>> = contents.iter().map(|l| offsets(l)).collect();
        let mut model_offset = [0usize; 4]; // committed line count per chunk
        let mut want = BTreeSet::new();
        let mut c = cfg(dir.path());
        c.compact_inputs_min = 2;
        let mut store = Store::open(c.clone()).unwrap();
        for op in ops {
            match op {
                Op::Commit { chunk, from, len } => {
                    let (stream, id) = chunks[chunk];
                    let to = (from + len).min(40);
                    let res = rt.block_on(store.commit(batch(stream, id, offs[chunk][from], &contents[chunk][from..to], false))).unwrap();
                    if from > model_offset[chunk] {
                        prop_assert_eq!(res, CommitOutcome::Resume { offset: offs[chunk][model_offset[chunk]] });
                    } else {
                        for i in model_offset[chunk].max(from)..to {
                            want.insert(id_of(stream, id, offs[chunk][i], &contents[chunk][i]));
                        }
                        model_offset[chunk] = model_offset[chunk].max(to);
                        prop_assert_eq!(res, CommitOutcome::Committed { offset: offs[chunk][model_offset[chunk]] });
                    }
                }
                Op::Flush => { store.flush().unwrap(); }
                Op::Compact => { store.compact().unwrap(); }
                Op::Crash { torn_tail } => {
                    drop(store);
                    if torn_tail {
                        let wal_dir = dir.path().join("wal");
                        let mut files: Vec<_> = std::fs::read_dir(&wal_dir).unwrap().map(|e| e.unwrap().path()).collect();
                        files.sort();
                        let last = files.last().unwrap();
                        let mut data = std::fs::read(last).unwrap();
                        data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 1, 9, 9]);
                        std::fs::write(last, data).unwrap();
                    }
                    store = Store::open(c.clone()).unwrap();
                }
            }
        }
        assert_exactly(&store, &want);
        for (i, (stream, id)) in chunks.iter().enumerate() {
            let got = store.progress(*stream, id).map_or(0, |p| p.offset);
            prop_assert_eq!(got, offs[i][model_offset[i]]);
        }
        drop(store);
        let store = Store::open(c).unwrap();
        assert_exactly(&store, &want);
        assert_term_indexes_consistent(&store, &rt);
    }
}

/// A batch of `n` lines of (stream, chunk) received `ago_ns` ago.
fn old_batch(stream: u128, chunk: &str, n: usize, complete: bool, ago_ns: u64) -> Batch {
    let mut b = batch(stream, chunk, 0, &chunk_lines(stream, chunk, n), complete);
    b.received_ns = now_ns() - ago_ns;
    b
}

#[test]
fn progress_is_kept_while_the_supervisor_lists_the_chunk_whatever_the_store_retention() {
    // Before: progress was forgotten once older than `retention_age_max`, so a store keeping
    // less than its supervisors fetched and stored their older chunks again.
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.retention_age_max = std::time::Duration::from_secs(3600);
    let store = Store::open(c.clone()).unwrap();
    let done = |store: &Store, chunk: &str| store.progress(13, chunk).is_some_and(|p| p.complete);
    rt.block_on(store.commit(old_batch(13, "B", 2, false, 2 * HOUR_NS))).unwrap();
    rt.block_on(store.commit(old_batch(13, "C", 2, true, 2 * HOUR_NS))).unwrap();
    rt.block_on(store.commit(old_batch(13, "D", 2, false, 0))).unwrap();
    store.listed(13, "B");
    store.flush().unwrap();
    let chunks = |store: &Store| store.progress_all().iter().map(|p| p.chunk.to_string()).collect::<Vec<_>>();
    assert_eq!(chunks(&store), ["B", "C", "D"]);
    assert!(done(&store, "C"));
    assert_eq!(store.stats().chunks_lost, 0);

    // The supervisor discards B and C: their entries go, C stays done, and B, left incomplete,
    // is counted lost.
    store.listed(13, "D");
    store.flush().unwrap();
    assert_eq!(chunks(&store), ["D"]);
    assert!(done(&store, "B") && done(&store, "C") && !done(&store, "D"));
    assert_eq!(store.stats().chunks_lost, 1);
    // An older listing arriving late does not move the floor back.
    store.listed(13, "C");
    assert!(done(&store, "C"));
    drop(store);

    // All of it is durable.
    let store = Store::open(c).unwrap();
    assert_eq!(chunks(&store), ["D"]);
    assert!(done(&store, "B") && done(&store, "C"));
    assert_eq!(store.stats().chunks_lost, 1);
    // Another stream knows nothing of that floor.
    assert_eq!(store.progress(14, "C"), None);
}

#[test]
fn progress_of_a_chunk_below_the_floor_is_kept_while_a_fetch_may_still_be_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    rt.block_on(store.commit(old_batch(13, "C", 2, false, 0))).unwrap();
    store.listed(13, "D");
    store.flush().unwrap();
    assert_eq!(store.progress(13, "C").map(|p| p.complete), Some(false));
    assert_eq!(store.stats().chunks_lost, 0);
}

#[test]
fn progress_of_a_stream_gone_for_the_whole_window_is_forgotten_at_flush() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.retention_age_max = std::time::Duration::from_secs(3600);
    let store = Store::open(c.clone()).unwrap();
    let day = 24 * HOUR_NS;
    // Stream 13: nothing for 31 days, longer than the window (30 days, the retention is shorter).
    rt.block_on(store.commit(old_batch(13, "C", 2, true, 31 * day))).unwrap();
    // Stream 14: 2 days, longer than the retention but within the window.
    rt.block_on(store.commit(old_batch(14, "C", 2, true, 2 * day))).unwrap();
    store.flush().unwrap();
    let left: Vec<u128> = store.progress_all().iter().map(|p| p.stream).collect();
    assert_eq!(left, [14]);
    drop(store);
    let store = Store::open(c).unwrap();
    assert_eq!(store.progress_all().len(), 1);
    assert_eq!(store.stats().progress_entries, 1);
}

/// Every file under segments/, relative to the data directory.
fn files_under_segments(data_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![data_dir.join("segments")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.strip_prefix(data_dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// Nothing under segments/ but the live segments and their term indexes, each of which verifies
/// and records the segment's row count.
fn assert_term_indexes_consistent(store: &Store, rt: &tokio::runtime::Runtime) {
    let segments = store.manifest().segments;
    let want: BTreeSet<String> = segments.iter().flat_map(|s| [s.path.clone(), terms_path(&s.path)]).collect();
    assert_eq!(files_under_segments(store.data_dir()), want, "live segments and their term indexes only");
    for seg in &segments {
        let terms = rt.block_on(SegmentTerms::load(store.object_store().as_ref(), &seg.path)).unwrap();
        assert_eq!(terms.rows(), seg.rows, "{}", seg.path);
    }
}

fn load_terms(store: &Store, rt: &tokio::runtime::Runtime, segment: &str) -> SegmentTerms {
    rt.block_on(SegmentTerms::load(store.object_store().as_ref(), segment)).unwrap()
}

/// Text with ASCII words and punctuation, any printable Unicode, or letters whose lowercase
/// is longer or special (İ, Σ, ß).
fn text_value() -> impl Strategy<Value = String> {
    prop_oneof!["[a-zA-Z0-9 _./:=-]{0,30}", "\\PC{0,12}", "[aİΣß日本 -]{0,8}"]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No false negatives: every token and substring of every open value written is "may
    /// contain" in its segment's index, every pii token in the pii filter under its column, every
    /// token and substring of bad-line text in the hidden part; with values in columns and in the
    /// overflow object, flushed and then compacted.
    #[test]
    fn term_indexes_find_every_token_and_substring_written(
        events in proptest::collection::vec((text_value(), text_value(), text_value(), text_value()), 1..16)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut c = cfg(dir.path());
        c.compact_inputs_min = 2;
        let store = Store::open(c).unwrap();
        // The first line makes `code` and `pii_code` integer columns, so the strings below go to
        // the overflow object under the same keys.
        let mut lines = vec![r#"{"time_ns":1795410000000000000,"code":1,"pii_code":2}"#.to_string()];
        let (mut open, mut hidden): (Vec<String>, Vec<String>) = (vec!["src-a".into()], vec![]);
        let mut pii: Vec<(&str, String)> = vec![];
        for (i, (msg, uid, raw, over)) in events.iter().enumerate() {
            let line = serde_json::json!({
                "time_ns": T0 + i as u64, "msg": msg, "pii_uid": uid, "sluice_raw": raw,
                "code": over, "pii_code": uid,
            });
            lines.push(line.to_string());
            lines.push(format!("not json {raw}"));
            open.extend([msg.clone(), over.clone()]);
            hidden.extend([raw.clone(), format!("not json {raw}")]);
            pii.extend([("pii_uid", uid.clone()), ("pii_code", uid.clone())]);
        }
        let half = lines.len() / 2;
        rt.block_on(store.commit(batch(30, "C", 0, &lines[..half], false))).unwrap();
        store.flush().unwrap();
        let start = offsets(&lines)[half];
        rt.block_on(store.commit(batch(30, "C", start, &lines[half..], false))).unwrap();
        store.flush().unwrap();
        for round in ["flushed", "compacted"] {
            let segments = store.manifest().segments;
            let indexes: Vec<SegmentTerms> = segments.iter().map(|s| load_terms(&store, &rt, &s.path)).collect();
            let any = |f: &dyn Fn(&SegmentTerms) -> bool| indexes.iter().any(f);
            for v in &open {
                for t in tokens(v) {
                    prop_assert!(any(&|x| x.may_contain_token(&normalize(t))), "{round}: token {t:?} of {v:?}");
                }
                prop_assert!(any(&|x| x.may_contain_substring(v)), "{round}: substring {v:?}");
            }
            for (column, v) in &pii {
                for t in tokens(v) {
                    prop_assert!(any(&|x| x.may_contain_pii_token(column, &normalize(t))), "{round}: {column} {t:?}");
                }
            }
            for v in &hidden {
                prop_assert!(any(&|x| x.may_contain_hidden_words(v)), "{round}: hidden words {v:?}");
                prop_assert!(any(&|x| x.may_contain_hidden_substring(v)), "{round}: hidden substring {v:?}");
            }
            store.compact().unwrap();
        }
        assert_term_indexes_consistent(&store, &rt);
    }
}

#[test]
fn pii_values_and_bad_line_text_stay_out_of_the_open_filters() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    let lines: Vec<String> = [
        r#"{"time_ns":1000000000000000000,"pii_uid":"U577019 alice@example.com","pii_n":5}"#,
        r#"{"time_ns":1000000000000000001,"pii_n":"Secret-X","sluice_raw":"{\"pii_uid\":\"U577019\"}"}"#,
        r#"garbage U577019 line"#,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    rt.block_on(store.commit(batch(31, "C", 0, &lines, false))).unwrap();
    store.flush().unwrap();
    // The bad line's time is its receive time, years later: it is in a segment of its own.
    let segments = store.manifest().segments;
    assert_eq!(segments.len(), 2);
    let indexes: Vec<SegmentTerms> = segments.iter().map(|s| load_terms(&store, &rt, &s.path)).collect();
    // The open filters hold only `sluice_source` ("src-a") and what callers without the pii role
    // see in place of the bad-line text: nothing of the pii values or of the raw lines.
    let open_text = ["src-a", sluice_store::terms::MASKED_TEXT];
    let want_tokens: BTreeSet<String> = open_text.iter().flat_map(|v| tokens(v).map(normalize)).collect();
    let want_trigrams: BTreeSet<[u8; 3]> = open_text.iter().flat_map(|v| sluice_query::trigrams(v)).collect();
    for t in &indexes {
        let items = t.items();
        assert_eq!((items.tokens, items.trigrams), (want_tokens.len() as u64, want_trigrams.len() as u64));
        assert!(t.may_contain_words("src-a") && t.may_contain_words("(hidden)") && t.may_contain_substring("hidde"));
        for probe in ["u577019", "alice", "secret", "garbage"] {
            assert!(!t.may_contain_token(probe), "{probe} is not open text");
        }
        assert!(!t.may_contain_substring("577") && !t.may_contain_substring("garb"));
    }
    // The restricted filter has them, for callers with the pii role.
    let (t, bad) = (&indexes[0], &indexes[1]);
    assert!(t.may_contain_pii_token("pii_uid", "u577019") && t.may_contain_pii_words("pii_uid", "alice@EXAMPLE"));
    assert!(t.may_contain_pii_words("pii_n", "secret-x"));
    assert!(!t.may_contain_pii_token("pii_other", "u577019"), "pairs are per column");
    assert!(t.may_contain_hidden_words("U577019") && t.may_contain_hidden_substring("d\":\"u5"));
    assert!(bad.may_contain_hidden_words("garbage line") && bad.may_contain_hidden_substring("bage u57"));
}

/// A tiny deterministic generator for test data.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word of 5 to 9 letters from `letters`.
    fn word(&mut self, letters: &[u8]) -> String {
        let len = 5 + (self.next() % 5) as usize;
        (0..len).map(|_| letters[(self.next() % letters.len() as u64) as usize] as char).collect()
    }
}

#[test]
fn an_absent_token_is_rejected_by_most_segments_near_the_target_rate() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let store = Store::open(cfg(dir.path())).unwrap();
    let mut rng = XorShift(0x5eed);
    const DATA: &[u8] = b"abcdefghijklm";
    const ABSENT: &[u8] = b"nopqrstuvwxyz";
    // Three hour partitions (three segments) of 2,000 events with four random words each.
    let mut lines = Vec::new();
    for hour in 0..3u64 {
        for i in 0..2000u64 {
            let msg: Vec<String> = (0..4).map(|_| rng.word(DATA)).collect();
            lines.push(format!(r#"{{"time_ns":{},"msg":"{}"}}"#, T0 + hour * HOUR_NS + i, msg.join(" ")));
        }
    }
    rt.block_on(store.commit(batch(32, "C", 0, &lines, false))).unwrap();
    store.flush().unwrap();
    let segments = store.manifest().segments;
    assert_eq!(segments.len(), 3);
    let indexes: Vec<SegmentTerms> = segments.iter().map(|s| load_terms(&store, &rt, &s.path)).collect();
    let probes: Vec<String> = (0..3000).map(|_| rng.word(ABSENT)).collect();
    let checks = (probes.len() * indexes.len()) as f64;
    let token_hits = probes.iter().flat_map(|p| indexes.iter().filter(move |t| t.may_contain_token(p))).count();
    let trigram_hits =
        probes.iter().flat_map(|p| indexes.iter().filter(move |t| t.may_contain_substring(&p[..3]))).count();
    let (token_rate, trigram_rate) = (token_hits as f64 / checks, trigram_hits as f64 / checks);
    eprintln!(
        "false positives: tokens {token_rate:.4}, 3-grams {trigram_rate:.4} (target {})",
        sluice_store::terms::FPR_TARGET
    );
    assert!(token_rate < 3.0 * sluice_store::terms::FPR_TARGET, "token false-positive rate {token_rate}");
    assert!(trigram_rate < 3.0 * sluice_store::terms::FPR_TARGET, "3-gram false-positive rate {trigram_rate}");
    // A present word is never rejected, a longer absent substring almost always is.
    assert!(lines[0].split('"').nth(5).unwrap().split(' ').all(|w| indexes.iter().any(|t| t.may_contain_token(w))));
    assert!(indexes.iter().all(|t| !t.may_contain_substring(&probes[0])));
}

#[test]
fn term_indexes_come_and_go_with_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    let store = Store::open(c.clone()).unwrap();
    let lines = chunk_lines(33, "C", 50);
    let off = offsets(&lines);
    for part in 0..5 {
        let r = part * 10..(part + 1) * 10;
        rt.block_on(store.commit(batch(33, "C", off[r.start], &lines[r], false))).unwrap();
        store.flush().unwrap();
        assert_term_indexes_consistent(&store, &rt);
    }
    let inputs: Vec<String> = store.manifest().segments.iter().map(|s| s.path.clone()).collect();
    assert_eq!(files_under_segments(dir.path()).len(), 10);
    assert_eq!(store.compact().unwrap(), 1);
    assert_term_indexes_consistent(&store, &rt);
    for p in &inputs {
        assert!(!dir.path().join(terms_path(p)).exists(), "{p}: the input's index is deleted with it");
    }
    // The compacted segment's index has every line's words.
    let out = store.manifest().segments[0].path.clone();
    let t = rt.block_on(store.segment_terms(&out));
    assert!(t.is_available());
    assert!((0..50).all(|i| t.may_contain_words(&format!("line {i}"))) && t.may_contain_words("s33 cC"));
    // Retention deletes segment and index.
    drop(store);
    c.retention_age_max = std::time::Duration::from_secs(1800);
    let store = Store::open(c).unwrap();
    assert_eq!(store.apply_retention(now_ns() + HOUR_NS).unwrap(), 1);
    assert!(files_under_segments(dir.path()).is_empty());
    assert_eq!(store.stats().terms_unavailable, 0);
}

#[test]
fn a_missing_or_corrupt_term_index_answers_may_contain_and_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let mut c = cfg(dir.path());
    c.compact_inputs_min = 2;
    {
        let store = Store::open(c.clone()).unwrap();
        for chunk in ["C", "D"] {
            rt.block_on(store.commit(batch(34, chunk, 0, &chunk_lines(34, chunk, 5), true))).unwrap();
            store.flush().unwrap();
        }
    }
    let segs: Vec<String> =
        Store::open(c.clone()).unwrap().manifest().segments.iter().map(|s| s.path.clone()).collect();
    let corrupt = dir.path().join(terms_path(&segs[0]));
    let mut data = std::fs::read(&corrupt).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    std::fs::write(&corrupt, data).unwrap();
    std::fs::remove_file(dir.path().join(terms_path(&segs[1]))).unwrap();
    // Start keeps the damaged index of a live segment (it is not a leftover).
    let store = Store::open(c).unwrap();
    assert!(corrupt.exists());
    let objects = store.object_store();
    match rt.block_on(SegmentTerms::load(objects.as_ref(), &segs[0])) {
        Err(TermsError::Invalid { reason, .. }) => assert_eq!(reason, "checksum mismatch"),
        other => panic!("expected an invalid index, got {other:?}"),
    }
    assert!(matches!(rt.block_on(SegmentTerms::load(objects.as_ref(), &segs[1])), Err(TermsError::Missing { .. })));
    for _ in 0..2 {
        for seg in &segs {
            let t = rt.block_on(store.segment_terms(seg));
            assert!(!t.is_available());
            assert!(t.may_contain_token("anything") && t.may_contain_substring("zzzz"));
            assert!(t.may_contain_pii_token("pii_uid", "x") && t.may_contain_hidden_token("x"));
        }
    }
    let st = store.stats();
    assert_eq!(st.terms_unavailable, 2, "counted once per segment");
    assert!(st.terms_error.unwrap().contains(".terms"));
    // The segments are still read in full, and compaction writes them a fresh index.
    assert_eq!(all_rows(&store).len(), 10);
    assert_eq!(store.compact().unwrap(), 1);
    assert_term_indexes_consistent(&store, &rt);
    let out = store.manifest().segments[0].path.clone();
    assert!(rt.block_on(store.segment_terms(&out)).may_contain_words("s34 cD line 4"));
}
