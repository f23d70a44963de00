//! Behaviour of the chunk log over the crash-simulating in-memory storage and over real files.

use std::sync::Arc;
use std::time::Duration;

use event_listener::Listener as _;
use proptest::prelude::*;
use sluice_chunk::{
    ChunkId, ChunkLog, ChunkState, Clock, FsyncPolicy, LogConfig, ManualClock, MemStorage, OnFull, Storage,
};

const T0: u64 = 1_790_000_000_000_000_000;

fn small_config(fsync: FsyncPolicy) -> LogConfig {
    LogConfig {
        chunk_bytes_max: 16 * 1024,
        chunk_age_max: Duration::from_secs(600),
        retention_age_max: Duration::from_secs(7 * 86400),
        retention_bytes_max: u64::MAX,
        fsync,
        on_full: OnFull::Drop,
        line_bytes_max: 1024,
    }
}

fn user_line(seq: u64, pad: usize) -> Vec<u8> {
    format!("{{\"time_ns\":{},\"seq\":{seq},\"pad\":\"{}\"}}\n", T0 + seq, "x".repeat(pad)).into_bytes()
}

/// Every chunk's bytes, oldest first, as the storage holds them now.
fn chunk_files(storage: &MemStorage) -> Vec<(ChunkId, Vec<u8>)> {
    let mut out: Vec<(ChunkId, Vec<u8>)> = storage
        .list()
        .expect("list")
        .into_iter()
        .filter_map(|e| {
            let id = e.name.strip_suffix(".chunk").or_else(|| e.name.strip_suffix(".open"))?;
            Some((ChunkId::parse(id).ok()?, storage.contents(&e.name)?))
        })
        .collect();
    out.sort_by_key(|(id, _)| *id);
    out
}

/// The `seq` of each user event across all chunks, in order; asserts every line is whole and valid.
fn user_seqs(storage: &MemStorage, chunk_bytes_max: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for (id, data) in chunk_files(storage) {
        assert!((data.len() as u64) < chunk_bytes_max, "chunk {id} has {} bytes", data.len());
        assert!(data.is_empty() || data.ends_with(b"\n"), "chunk {id} ends in a torn line");
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                sluice_event::check_line(line, true).is_empty(),
                "bad line in {id}: {}",
                String::from_utf8_lossy(line)
            );
            let text = std::str::from_utf8(line).expect("utf-8");
            if let Some(rest) = text.split("\"seq\":").nth(1) {
                let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                seqs.push(n.parse().expect("seq"));
            }
        }
    }
    seqs
}

#[derive(Debug, Clone)]
enum Op {
    Append { lines: usize, pad: usize },
    Sync,
    Tick { ms: u64 },
    ClockBack { s: u64 },
    Crash { keep_per_mille: u16 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..40, 0usize..400).prop_map(|(lines, pad)| Op::Append { lines, pad }),
        2 => Just(Op::Sync),
        1 => (1u64..700_000).prop_map(|ms| Op::Tick { ms }),
        1 => (1u64..100_000).prop_map(|s| Op::ClockBack { s }),
        1 => (0u16..=1000).prop_map(|keep_per_mille| Op::Crash { keep_per_mille }),
    ]
}

fn run_model(ops: Vec<Op>, fsync: FsyncPolicy) {
    let storage = MemStorage::new();
    storage.set_now_ns(T0);
    let clock = Arc::new(ManualClock::new(T0));
    let config = small_config(fsync);
    let open = |storage: &MemStorage| {
        ChunkLog::open(storage.clone(), config.clone(), clock.clone() as Arc<dyn Clock>).expect("open").0
    };
    let mut log = open(&storage);
    let stream = log.stream_id();
    let mut appended: u64 = 0; // user events appended in all
    let mut durable: u64 = 0; // of those, how many the policy promised
    let mut ids_seen: Vec<ChunkId> = Vec::new();
    for op in ops {
        ids_seen.extend(log.list().iter().map(|c| c.id));
        match op {
            Op::Append { lines, pad } => {
                let mut buf = Vec::new();
                for i in 0..lines as u64 {
                    buf.extend_from_slice(&user_line(appended + i, pad));
                }
                log.append(&buf).expect("append");
                appended += lines as u64;
                if fsync == FsyncPolicy::Always {
                    durable = appended;
                }
            }
            Op::Sync => {
                log.sync().expect("sync");
                durable = appended;
            }
            Op::Tick { ms } => {
                clock.advance_ns(ms * 1_000_000);
                storage.set_now_ns(clock.wall_ns());
                log.tick().expect("tick");
            }
            Op::ClockBack { s } => {
                clock.set_wall_ns(clock.wall_ns().saturating_sub(s * 1_000_000_000));
                storage.set_now_ns(clock.wall_ns());
            }
            Op::Crash { keep_per_mille } => {
                drop(log);
                storage.crash(|n| n * keep_per_mille as usize / 1000);
                log = open(&storage);
                assert_eq!(log.stream_id(), stream, "a crash never changes the stream id");
                let seqs = user_seqs(&storage, config.chunk_bytes_max);
                let recovered = seqs.len() as u64;
                assert!(recovered >= durable, "lost durable events: recovered {recovered}, promised {durable}");
                assert_eq!(seqs, (0..recovered).collect::<Vec<_>>(), "events out of order or duplicated");
                let open_id = log.open_chunk_id().expect("open chunk");
                let max_seen = ids_seen.iter().max().copied();
                assert!(max_seen.is_none_or(|m| open_id > m), "id {open_id} reused after crash (seen {max_seen:?})");
                appended = recovered;
                durable = recovered;
            }
        }
    }
    ids_seen.extend(log.list().iter().map(|c| c.id));
    // Ids only ever grow: what list() shows is sorted and the open chunk is last.
    let listed = log.list();
    assert!(listed.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(listed.last().map(|c| c.state), Some(ChunkState::Open));
    log.close().expect("close");
    assert_eq!(user_seqs(&storage, config.chunk_bytes_max), (0..appended).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn crash_keeps_what_interval_policy_promised(ops in prop::collection::vec(op(), 1..60)) {
        run_model(ops, FsyncPolicy::Interval(Duration::from_millis(200)));
    }

    #[test]
    fn crash_keeps_every_event_under_always(ops in prop::collection::vec(op(), 1..60)) {
        run_model(ops, FsyncPolicy::Always);
    }
}

fn mem_log(config: LogConfig) -> (MemStorage, Arc<ManualClock>, ChunkLog<MemStorage>) {
    let storage = MemStorage::new();
    let clock = Arc::new(ManualClock::new(T0));
    storage.set_now_ns(T0);
    let (log, report) = ChunkLog::open(storage.clone(), config, clock.clone() as Arc<dyn Clock>).expect("open");
    assert!(report.created);
    (storage, clock, log)
}

#[test]
fn rotates_before_reaching_size_limit() {
    let (storage, _clock, log) = mem_log(small_config(FsyncPolicy::Never));
    for seq in 0..2000 {
        log.append(&user_line(seq, 100)).expect("append");
    }
    let chunks = log.list();
    assert!(chunks.len() > 10, "expected many chunks, got {}", chunks.len());
    for c in &chunks {
        assert!(c.len < 16 * 1024);
    }
    log.close().expect("close");
    assert_eq!(user_seqs(&storage, 16 * 1024), (0..2000).collect::<Vec<_>>());
    // Every closed chunk ends with its closing event.
    for (id, data) in chunk_files(&storage) {
        let last = data.rsplit(|&b| b == b'\n').nth(1).expect("a line");
        let last = String::from_utf8_lossy(last);
        assert!(last.contains("\"sluice_event\":\"chunk_closed\""), "{id}: {last}");
    }
}

#[test]
fn rotates_after_age_but_not_an_empty_chunk() {
    let (_storage, clock, log) = mem_log(small_config(FsyncPolicy::Never));
    let first = log.open_chunk_id().expect("open");
    clock.advance_ns(601 * 1_000_000_000);
    log.tick().expect("tick");
    assert_eq!(log.open_chunk_id(), Some(first), "a chunk with no events is not rotated for age");
    log.append(&user_line(0, 10)).expect("append");
    clock.advance_ns(601 * 1_000_000_000);
    log.tick().expect("tick");
    let second = log.open_chunk_id().expect("open");
    assert!(second > first);
    assert_eq!(log.progress(first).map(|c| c.state), Some(ChunkState::Closed));
}

#[test]
fn ids_keep_growing_when_the_wall_clock_steps_back() {
    let (_storage, clock, log) = mem_log(small_config(FsyncPolicy::Never));
    let mut last = log.open_chunk_id().expect("open");
    for step in 0..5u64 {
        clock.set_wall_ns(T0 - step * 3_600_000_000_000);
        for seq in 0..200 {
            log.append(&user_line(seq, 100)).expect("append");
        }
        let now = log.open_chunk_id().expect("open");
        assert!(now > last, "{now} after {last}");
        last = now;
    }
}

#[test]
fn ids_are_not_reused_after_reopen_even_if_all_chunks_are_gone() {
    let storage = MemStorage::new();
    let clock = Arc::new(ManualClock::new(T0));
    let (log, _) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Always), clock.clone() as Arc<dyn Clock>)
        .expect("open");
    let first = log.open_chunk_id().expect("open");
    log.close().expect("close");
    drop(log);
    for e in storage.list().expect("list") {
        if e.name.ends_with(".chunk") {
            storage.remove(&e.name).expect("remove");
        }
    }
    clock.set_wall_ns(T0 - 86_400_000_000_000);
    let (log, _) = ChunkLog::open(storage, small_config(FsyncPolicy::Always), clock as Arc<dyn Clock>).expect("open");
    assert!(log.open_chunk_id().expect("open") > first);
}

#[test]
fn retention_by_age_and_by_size_never_takes_the_open_chunk() {
    let mut config = small_config(FsyncPolicy::Never);
    config.retention_bytes_max = 64 * 1024;
    config.retention_age_max = Duration::from_secs(3600);
    let (_storage, clock, log) = mem_log(config);
    for seq in 0..3000 {
        log.append(&user_line(seq, 100)).expect("append");
    }
    log.tick().expect("tick");
    let total: u64 = log.list().iter().map(|c| c.len).sum();
    assert!(total <= 64 * 1024 + 16 * 1024, "size retention left {total} bytes");
    assert!(log.metrics().retention_size_chunks.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Everything closed before now is older than the age limit.
    let open_before = log.open_chunk_id().expect("open");
    clock.advance_ns(3601 * 1_000_000_000);
    log.tick().expect("tick");
    let left = log.list();
    assert!(log.metrics().retention_age_chunks.load(std::sync::atomic::Ordering::Relaxed) > 0);
    // Only chunks closed after the clock moved (the discard events themselves can fill one) remain.
    assert!(left.iter().all(|c| c.id >= open_before), "{left:?}");
    assert_eq!(left.last().map(|c| c.state), Some(ChunkState::Open));
}

#[test]
fn full_disk_drops_counts_and_reports_once_writing_works() {
    let mut config = small_config(FsyncPolicy::Never);
    config.on_full = OnFull::Drop;
    let (storage, _clock, log) = mem_log(config);
    log.append(&user_line(0, 10)).expect("append");
    let used: usize = storage.list().expect("list").iter().map(|e| e.len as usize).sum();
    storage.set_capacity(Some(used + 10));
    for seq in 1..=5 {
        log.append(&user_line(seq, 10)).expect("append never fails on a full disk");
    }
    assert_eq!(log.metrics().dropped_events.load(std::sync::atomic::Ordering::Relaxed), 5);
    storage.set_capacity(None);
    log.append(&user_line(6, 10)).expect("append");
    let open = log.open_chunk_id().expect("open");
    let text = String::from_utf8(storage.contents(&format!("{open}.open")).expect("open chunk")).expect("utf-8");
    assert!(text.contains("\"sluice_event\":\"events_dropped\",\"events\":5"), "{text}");
    // No torn line from the refused writes.
    assert_eq!(user_seqs(&storage, 16 * 1024), vec![0, 6]);
}

#[test]
fn full_disk_blocks_in_block_mode_until_space_returns() {
    let mut config = small_config(FsyncPolicy::Never);
    config.on_full = OnFull::Block;
    let (storage, _clock, log) = mem_log(config);
    let log = Arc::new(log);
    let used: usize = storage.list().expect("list").iter().map(|e| e.len as usize).sum();
    storage.set_capacity(Some(used));
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || log.append(&user_line(0, 10)))
    };
    // The writer keeps retrying; nothing is dropped.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while log.metrics().disk_errors.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(std::time::Instant::now() < deadline, "writer never retried");
        std::thread::yield_now();
    }
    assert!(!writer.is_finished());
    storage.set_capacity(None);
    writer.join().expect("join").expect("append");
    assert_eq!(log.metrics().dropped_events.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(user_seqs(&storage, 16 * 1024), vec![0]);
}

fn open_chunk_text(storage: &MemStorage, log: &ChunkLog<MemStorage>) -> String {
    let open = log.open_chunk_id().expect("a chunk is open");
    String::from_utf8(storage.contents(&format!("{open}.open")).expect("open chunk")).expect("utf-8")
}

#[test]
fn a_rotation_that_cannot_create_its_next_chunk_drops_counts_and_recovers() {
    use std::sync::atomic::Ordering::Relaxed;
    let (storage, clock, log) = mem_log(small_config(FsyncPolicy::Never));
    let first = log.open_chunk_id().expect("open");
    // No file can be created (no file descriptors left): the size rotation closes the first chunk
    // and cannot open the next.
    storage.set_fail_creates(true);
    let mut seq = 0;
    while seq < 300 {
        log.append(&user_line(seq, 100)).expect("an append goes on with no chunk to write into");
        seq += 1;
    }
    let dropped = log.metrics().dropped_events.load(Relaxed);
    assert!(dropped > 0 && dropped < 300, "{dropped} dropped");
    assert_eq!(log.open_chunk_id(), None);
    assert_eq!(log.progress(first).map(|c| c.state), Some(ChunkState::Closed));
    assert!(log.tick().is_err(), "the tick tries again and says why it could not");
    storage.set_fail_creates(false);
    // Within the pause after a failed try, writes are still dropped and counted.
    log.append(&user_line(seq, 100)).expect("append");
    seq += 1;
    assert_eq!(log.open_chunk_id(), None);
    assert_eq!(log.metrics().dropped_events.load(Relaxed), dropped + 1);
    clock.advance_ns(sluice_chunk::log::REOPEN_RETRY.as_nanos() as u64);
    for _ in 0..10 {
        log.append(&user_line(seq, 100)).expect("append");
        seq += 1;
    }
    let open = log.open_chunk_id().expect("a chunk is open again");
    assert!(open > first);
    let text = open_chunk_text(&storage, &log);
    assert!(
        text.starts_with("{\"time_ns\":") && text.lines().next().is_some_and(|l| l.contains("chunk_opened")),
        "{text}"
    );
    assert!(text.contains(&format!("\"sluice_event\":\"events_dropped\",\"events\":{}", dropped + 1)), "{text}");
    let kept = user_seqs(&storage, 16 * 1024);
    assert_eq!(kept.len() as u64 + dropped + 1, seq, "every line is either kept or counted");
    assert_eq!(kept[kept.len() - 10..], (seq - 10..seq).collect::<Vec<_>>()[..]);
    assert!(kept.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn the_tick_creates_the_chunk_a_failed_rotation_left_missing() {
    let (storage, clock, log) = mem_log(small_config(FsyncPolicy::Interval(Duration::from_millis(200))));
    log.append(&user_line(0, 10)).expect("append");
    storage.set_fail_creates(true);
    clock.advance_ns(601 * 1_000_000_000);
    assert!(log.tick().is_err(), "the age rotation's next chunk cannot be created");
    assert_eq!(log.open_chunk_id(), None);
    storage.set_fail_creates(false);
    log.tick().expect("tick");
    assert!(log.open_chunk_id().is_some());
    log.append(&user_line(1, 10)).expect("append");
    log.close().expect("close");
    assert_eq!(user_seqs(&storage, 16 * 1024), vec![0, 1]);
    assert!(matches!(log.append(&user_line(2, 10)), Err(sluice_chunk::LogError::Closed)), "a closed log stays closed");
}

#[test]
fn a_failed_sync_under_always_is_counted_and_retried_not_fatal() {
    use std::sync::atomic::Ordering::Relaxed;
    let (storage, _clock, log) = mem_log(small_config(FsyncPolicy::Always));
    log.append(&user_line(0, 10)).expect("append");
    storage.set_fail_syncs(true);
    log.append(&user_line(1, 10)).expect("an append whose sync fails still succeeds");
    assert!(log.metrics().disk_errors.load(Relaxed) >= 1);
    assert!(log.sync().is_err(), "the sync pass reports it");
    storage.set_fail_syncs(false);
    log.sync().expect("the next pass syncs what the failed one left");
    storage.crash(|_| 0);
    let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
    let (_log, _) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Always), clock).expect("reopen");
    assert_eq!(user_seqs(&storage, 16 * 1024), vec![0, 1]);
}

#[test]
fn a_failed_sync_pass_keeps_its_closed_chunks_for_the_next() {
    let (storage, _clock, log) = mem_log(small_config(FsyncPolicy::Interval(Duration::from_millis(200))));
    for seq in 0..400 {
        log.append(&user_line(seq, 100)).expect("append");
    }
    let closed = log.list().iter().filter(|c| c.state == ChunkState::Closed).count();
    assert!(closed >= 3, "{closed} closed chunks");
    storage.set_fail_syncs(true);
    assert!(log.sync().is_err());
    storage.set_fail_syncs(false);
    log.sync().expect("sync");
    let names: Vec<String> = storage.list().expect("list").into_iter().map(|e| e.name).collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".chunk")).count(), closed, "{names:?}");
    // Power loss right after: every closed chunk was synced and renamed by the second pass.
    storage.crash(|_| 0);
    let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
    let (_log, _) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Always), clock).expect("reopen");
    assert_eq!(user_seqs(&storage, 16 * 1024), (0..400).collect::<Vec<_>>());
}

#[test]
fn a_rotation_on_a_full_disk_in_block_mode_closes_the_chunk_it_started_with() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut config = small_config(FsyncPolicy::Never);
    config.on_full = OnFull::Block;
    let (storage, _clock, log) = mem_log(config);
    let log = Arc::new(log);
    let first = log.open_chunk_id().expect("open");
    let mut seq = 0;
    // Fill the chunk until the next line does not fit below its limit less the closing reserve.
    while log.list().last().map(|c| c.len).unwrap_or(0) + (user_line(seq, 100).len() as u64) < 12 * 1024 {
        log.append(&user_line(seq, 100)).expect("append");
        seq += 1;
    }
    // The disk is full: the next line that does not fit rotates, and the closing event is refused.
    let used: usize = storage.list().expect("list").iter().map(|e| e.len as usize).sum();
    storage.set_capacity(Some(used));
    let writer = {
        let log = log.clone();
        let lines: Vec<u8> = (seq..seq + 40).flat_map(|s| user_line(s, 100)).collect();
        std::thread::spawn(move || log.append(&lines))
    };
    // The chunk is closed and the next opened before the writer waits for room for its lines;
    // the refused closing event is not waited for with the lock let go.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while log.progress(first).map(|c| c.state) != Some(ChunkState::Closed)
        || log.metrics().disk_errors.load(Relaxed) < 3
    {
        assert!(std::time::Instant::now() < deadline, "the rotation waited for the disk: {:?}", log.list());
        std::thread::yield_now();
    }
    assert!(!writer.is_finished(), "the user's lines wait for room (block mode)");
    // The rotation's own events (closing and opening) were dropped and counted, not waited for with
    // the lock let go: meanwhile a tick could have rotated, and the close would have taken the
    // wrong chunk.
    assert_eq!(log.metrics().dropped_events.load(Relaxed), 2);
    let second = log.open_chunk_id().expect("the next chunk is open");
    assert!(second > first);
    storage.set_capacity(None);
    writer.join().expect("join").expect("append");
    log.close().expect("close");
    // Each chunk's recorded length is its file's, and every user line is there once, in order.
    for c in log.list() {
        let len = storage.contents(&format!("{}.chunk", c.id)).map(|d| d.len() as u64);
        assert_eq!(len, Some(c.len), "chunk {}", c.id);
    }
    assert_eq!(user_seqs(&storage, 16 * 1024), (0..seq + 40).collect::<Vec<_>>());
}

#[test]
fn never_mode_cuts_a_closed_chunk_torn_by_a_power_loss() {
    let (storage, _clock, log) = mem_log(small_config(FsyncPolicy::Never));
    for seq in 0..200 {
        log.append(&user_line(seq, 100)).expect("append");
    }
    let first = log.list()[0].id;
    log.close().expect("close");
    drop(log);
    // Unsynced: the kernel wrote back a torn tail of the first closed chunk.
    let name = format!("{first}.chunk");
    let whole = storage.contents(&name).expect("chunk");
    let mut f = storage.open_append(&name).expect("open");
    sluice_chunk::StorageFile::set_len(&mut f, (whole.len() - 30) as u64).expect("cut");
    sluice_chunk::StorageFile::write_all(&mut f, &[0u8; 20]).expect("zeros");
    drop(f);
    let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
    let (log, report) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Never), clock).expect("reopen");
    assert!(report.repaired.iter().any(|&(id, _, cut)| id == first && cut > 0), "{:?}", report.repaired);
    assert_eq!(log.progress(first).map(|c| c.len), storage.contents(&name).map(|d| d.len() as u64));
    // user_seqs checks every chunk ends on a whole, valid line.
    let seqs = user_seqs(&storage, 16 * 1024);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && seqs.len() >= 190, "{}", seqs.len());
}

#[test]
fn repair_cuts_torn_tail_and_reports_strays() {
    let storage = MemStorage::new();
    let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
    let (log, _) =
        ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Interval(Duration::from_millis(200))), clock.clone())
            .expect("open");
    let id = log.open_chunk_id().expect("open");
    log.append(&user_line(0, 10)).expect("append");
    log.sync().expect("sync");
    log.append(&user_line(1, 10)).expect("append");
    drop(log);
    // Tear the last line in half and drop a stranger's file in the directory.
    storage.crash(|n| n / 2);
    let mut f = storage.create_new("notes.txt").expect("create");
    sluice_chunk::StorageFile::write_all(&mut f, b"hello").expect("write");
    let (log, report) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Always), clock).expect("reopen");
    assert_eq!(report.repaired.len(), 1);
    assert_eq!(report.repaired[0].0, id);
    assert!(report.repaired[0].2 > 0, "some bytes were cut");
    assert_eq!(report.strays, vec!["notes.txt".to_string()]);
    assert_eq!(storage.contents("notes.txt").as_deref(), Some(&b"hello"[..]), "strays are never deleted");
    assert_eq!(log.progress(id).map(|c| c.state), Some(ChunkState::Closed));
    assert_eq!(user_seqs(&storage, 16 * 1024), vec![0]);
    let open = log.open_chunk_id().expect("open");
    let text = String::from_utf8(storage.contents(&format!("{open}.open")).expect("chunk")).expect("utf-8");
    assert!(text.contains("chunk_repaired") && text.contains("stray_file"), "{text}");
}

#[test]
fn refuses_chunks_without_a_stream_id() {
    let storage = MemStorage::new();
    let clock = Arc::new(ManualClock::new(T0)) as Arc<dyn Clock>;
    let (log, _) = ChunkLog::open(storage.clone(), small_config(FsyncPolicy::Always), clock.clone()).expect("open");
    log.close().expect("close");
    drop(log);
    storage.remove("stream-id").expect("remove");
    let err = ChunkLog::open(storage, small_config(FsyncPolicy::Always), clock).err().expect("must refuse");
    assert!(err.to_string().contains("no stream-id"), "{err}");
}

#[test]
fn listeners_wake_on_append_and_close() {
    let (_storage, _clock, log) = mem_log(small_config(FsyncPolicy::Never));
    let log = Arc::new(log);
    let id = log.open_chunk_id().expect("open");
    let before = log.progress(id).expect("chunk").len;
    let listener = log.listen();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || log.append(&user_line(0, 10)))
    };
    listener.wait_timeout(Duration::from_secs(30)).expect("woken by the append");
    writer.join().expect("join").expect("append");
    assert!(log.progress(id).expect("chunk").len > before);
    let listener = log.listen();
    log.close().expect("close");
    listener.wait_timeout(Duration::from_secs(30)).expect("woken by close");
    assert_eq!(log.progress(id).map(|c| c.state), Some(ChunkState::Closed));
}

#[test]
fn disk_storage_round_trip_and_exclusive_lock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = sluice_chunk::DiskStorage::open(dir.path()).expect("open");
    assert!(sluice_chunk::DiskStorage::open(dir.path()).is_err(), "second writer must be refused");
    let (log, _) = ChunkLog::open(storage, LogConfig::default(), Arc::new(sluice_chunk::SystemClock)).expect("log");
    log.append(&user_line(0, 10)).expect("append");
    let id = log.open_chunk_id().expect("open");
    log.close().expect("close");
    let data = std::fs::read(dir.path().join(format!("{id}.chunk"))).expect("closed chunk file");
    assert!(String::from_utf8_lossy(&data).contains("\"seq\":0"));
    assert!(log.metrics().fsyncs.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
