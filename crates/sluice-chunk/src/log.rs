//! The chunk log: an append-only stream of event lines in one directory, split into chunks.
//!
//! # Directory format
//! - `stream-id`: the stream id, 32 lowercase hex digits and a newline; written once when the
//!   directory is created, never changed.
//! - `id-watermark`: a chunk id (and a newline) at or above every id handed out so far. Ids are
//!   reserved in blocks of [`ID_RESERVE_BLOCK`] and the watermark is made durable *before* a chunk
//!   with a reserved id is created, so no id is ever handed out twice, whatever the crash and
//!   whatever the wall clock does.
//! - `<ID>.open`: the chunk being written (after a crash, possibly a chunk closed but not yet
//!   renamed). `<ID>.chunk`: a closed chunk, complete and synced (unless fsync is `never`).
//! - `LOCK`: held exclusively by the writer.
//!
//! A chunk holds complete event lines, each ending in `\n`, and nothing else. Its first line is a
//! `chunk_opened` event; a chunk closed cleanly ends with a `chunk_closed` event. A chunk file is
//! always smaller than `chunk_bytes_max`: a line goes into the open chunk only if the chunk stays
//! below the limit with [`CLOSE_RESERVE_BYTES`] to spare for the closing event.
//!
//! # Ids
//! The next id is `max(previous + 1, wall-clock seconds since the epoch)`: ids read as rough
//! creation times, and stay increasing when the clock steps back.
//!
//! # Durability
//! - `always`: every append is fdatasync'ed before `append` returns; a new chunk's directory entry is
//!   synced before any data goes into it.
//! - `interval=D` (default 200 ms): a sync pass at least every `D` fdatasyncs the open chunk if it has
//!   unsynced bytes, and every chunk closed since the last pass, renames those to `.chunk`, then
//!   syncs the directory. Appends never wait for a disk flush.
//! - `never`: no fdatasync; the kernel writes back when it likes.
//!
//! # Disk trouble
//! Only a closed log makes `append` fail. A refused write follows the `OnFull` policy (drop and
//! count, or block); a failed fdatasync is counted and retried by the next sync pass, which keeps
//! every chunk it could not sync or rename for the pass after; a rotation whose next chunk cannot
//! be created (a full disk, no file descriptors left) leaves no chunk open, and writes are dropped
//! and counted, each trying to create one at most once per [`REOPEN_RETRY`] (the tick tries too)
//! until one is created: then an `events_dropped` event tells what was lost.
//!
//! # Repair (at open)
//! Every `.open` file is cut to its longest prefix of complete, well-formed lines (a torn or
//! zero-filled tail goes), synced and renamed to `.chunk`; an empty one is removed. Under `never`
//! the `.chunk` files are checked the same way, since they were renamed without a sync. Our own
//! temporary files are removed; anything else is reported, never deleted.
//!
//! # Concurrency
//! One mutex guards the write state; fdatasync runs outside it on a cloned handle, so appends go on
//! during a flush. Readers learn about new data from an [`event_listener::Event`] notified after
//! every write: no polling.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};
use std::time::Duration;

use sluice_event::OwnEvent;

use crate::clock::Clock;
use crate::id::{ChunkId, StreamId};
use crate::storage::{Storage, StorageFile, LOCK_FILE};

/// Bytes kept free in every chunk for its closing event.
pub const CLOSE_RESERVE_BYTES: u64 = 4096;
/// How many ids one durable watermark write reserves.
pub const ID_RESERVE_BLOCK: u64 = 4096;
pub const STREAM_ID_FILE: &str = "stream-id";
pub const WATERMARK_FILE: &str = "id-watermark";
pub const OPEN_SUFFIX: &str = ".open";
pub const CLOSED_SUFFIX: &str = ".chunk";
/// Default: a chunk is closed before it would reach 1 MB.
pub const CHUNK_BYTES_MAX_DEFAULT: u64 = 1_000_000;
pub const CHUNK_AGE_MAX_DEFAULT: Duration = Duration::from_secs(600);
pub const RETENTION_AGE_MAX_DEFAULT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const RETENTION_BYTES_MAX_DEFAULT: u64 = 500_000_000;
pub const FSYNC_INTERVAL_DEFAULT: Duration = Duration::from_millis(200);
/// Longest pause between two retries of a write in `--on-full block` mode.
pub const BLOCK_RETRY_MAX: Duration = Duration::from_secs(1);
/// How often a write tries again to create a chunk after creating one failed (full disk, no file
/// descriptors left); meanwhile writes are dropped and counted. The periodic tick also tries.
pub const REOPEN_RETRY: Duration = Duration::from_secs(1);

/// When data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    Always,
    Interval(Duration),
    Never,
}

impl FsyncPolicy {
    /// Parse `always`, `never` or `interval=DURATION` (`200ms`, `1s`, `2m`).
    pub fn parse(s: &str) -> Result<FsyncPolicy, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            _ => match s.strip_prefix("interval=") {
                Some(d) => match parse_duration(d) {
                    Some(d) if !d.is_zero() => Ok(FsyncPolicy::Interval(d)),
                    _ => Err(format!("bad duration {d:?} in --fsync: write it like 200ms, 1s or 2m")),
                },
                None => Err(format!(
                    "unknown fsync policy {s:?}: use always, never or interval=DURATION (e.g. interval=200ms)"
                )),
            },
        }
    }
}

/// Parse `250ms`, `10s`, `5m`, `2h`, `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => n,
        "s" => n.checked_mul(1000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        "d" => n.checked_mul(86_400_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// What an append does when the disk refuses a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// Drop the events, count them, report the count once writing works again. The child never waits.
    Drop,
    /// Retry until the write succeeds (the child blocks on its full pipe), or until shutdown.
    Block,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub chunk_bytes_max: u64,
    pub chunk_age_max: Duration,
    pub retention_age_max: Duration,
    pub retention_bytes_max: u64,
    pub fsync: FsyncPolicy,
    pub on_full: OnFull,
    /// Longest event line the caller will append (without `\n`).
    pub line_bytes_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            chunk_bytes_max: CHUNK_BYTES_MAX_DEFAULT,
            chunk_age_max: CHUNK_AGE_MAX_DEFAULT,
            retention_age_max: RETENTION_AGE_MAX_DEFAULT,
            retention_bytes_max: RETENTION_BYTES_MAX_DEFAULT,
            fsync: FsyncPolicy::Interval(FSYNC_INTERVAL_DEFAULT),
            on_full: OnFull::Drop,
            line_bytes_max: sluice_event::LINE_BYTES_MAX_DEFAULT,
        }
    }
}

impl LogConfig {
    /// Check that the settings can work together.
    pub fn validate(&self) -> Result<(), LogError> {
        let need = 2 * self.line_bytes_max as u64 + 2 * CLOSE_RESERVE_BYTES;
        if self.chunk_bytes_max < need {
            return Err(LogError::Config(format!(
                "--chunk-bytes-max {} is too small for --line-bytes-max {}: it must be at least {need} (twice the longest line plus room for sluice's own events)",
                self.chunk_bytes_max, self.line_bytes_max
            )));
        }
        if self.line_bytes_max < sluice_event::LINE_BYTES_MAX_MIN {
            return Err(LogError::Config(format!(
                "--line-bytes-max {} is below the minimum {}",
                self.line_bytes_max,
                sluice_event::LINE_BYTES_MAX_MIN
            )));
        }
        if self.chunk_age_max.is_zero() {
            return Err(LogError::Config("--chunk-age-max must be more than zero".into()));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("data directory has chunks but no {STREAM_ID_FILE} file: restore it from a backup, or move the chunks elsewhere to start a new stream")]
    MissingStreamId,
    #[error("{STREAM_ID_FILE} is damaged (expected 32 hex digits): restore it from a backup, or move the directory aside to start a new stream")]
    BadStreamId,
    #[error("the chunk log is closed")]
    Closed,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LogError {
    let what = what.into();
    move |source| LogError::Io { what, source }
}

/// Whether a chunk is still being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    Open,
    Closed,
}

/// A chunk as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub id: ChunkId,
    /// Bytes written so far (final for a closed chunk).
    pub len: u64,
    pub state: ChunkState,
}

/// What opening the directory found and did.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    pub created: bool,
    /// (chunk, bytes kept, bytes cut) for each unclosed chunk repaired.
    pub repaired: Vec<(ChunkId, u64, u64)>,
    /// Files that are not ours, left alone.
    pub strays: Vec<String>,
}

/// Counters for `/metrics`; read with `Ordering::Relaxed`.
#[derive(Debug, Default)]
pub struct LogMetrics {
    pub events_written: AtomicU64,
    pub bytes_written: AtomicU64,
    pub chunks_opened: AtomicU64,
    pub chunks_closed: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_seconds: Histogram,
    pub retention_age_chunks: AtomicU64,
    pub retention_age_bytes: AtomicU64,
    pub retention_size_chunks: AtomicU64,
    pub retention_size_bytes: AtomicU64,
    pub dropped_events: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub disk_errors: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub stored_chunks: AtomicU64,
}

/// A fixed-bucket latency histogram (seconds), lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; HISTOGRAM_BOUNDS_S.len() + 1],
    sum_ns: AtomicU64,
}

/// Upper bounds of the histogram buckets, in seconds.
pub const HISTOGRAM_BOUNDS_S: [f64; 12] =
    [0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = HISTOGRAM_BOUNDS_S.iter().position(|&b| s <= b).unwrap_or(HISTOGRAM_BOUNDS_S.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    /// (per-bucket counts, not cumulative; the last is +Inf) and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        (
            self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect(),
            self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )
    }
}

struct ChunkMeta {
    len: u64,
    state: ChunkState,
    /// Wall time it was closed (or last modified, for chunks found at start).
    closed_ns: u64,
    /// Name on disk: `.open` until a closed chunk is synced and renamed.
    renamed: bool,
}

struct OpenChunk<F> {
    id: ChunkId,
    file: F,
    len: u64,
    events: u64,
    opened_mono_ns: u64,
    /// More than the opening event was written (an empty chunk is not rotated for age).
    has_data: bool,
    synced_len: u64,
}

struct PendingClose<F> {
    id: ChunkId,
    file: F,
}

struct DropState {
    events: u64,
    bytes: u64,
    since_ns: u64,
}

struct State<F> {
    open: Option<OpenChunk<F>>,
    chunks: BTreeMap<ChunkId, ChunkMeta>,
    pending: Vec<PendingClose<F>>,
    last_id: Option<ChunkId>,
    reserved_through: Option<ChunkId>,
    total_bytes: u64,
    dropping: Option<DropState>,
    dir_dirty: bool,
    own: Vec<u8>,
    block_attempts: u32,
    in_retention: bool,
    /// [`ChunkLog::close`] ran: no chunk is open and none will be.
    closed: bool,
    /// No chunk is open because creating one failed; writes try again from this monotonic time.
    reopen_after_mono_ns: u64,
}

/// Why a chunk cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("no such chunk")]
    NotFound,
    #[error("cannot read chunk: {0}")]
    Io(#[from] io::Error),
}

/// The log. Share it with `Arc`.
pub struct ChunkLog<S: Storage> {
    storage: S,
    config: LogConfig,
    clock: Arc<dyn Clock>,
    stream_id: StreamId,
    state: Mutex<State<S::File>>,
    sync_lock: Mutex<()>,
    changed: event_listener::Event,
    shutting_down: AtomicBool,
    metrics: LogMetrics,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

type Guard<'a, F> = MutexGuard<'a, State<F>>;

fn open_name(id: ChunkId) -> String {
    format!("{id}{OPEN_SUFFIX}")
}
fn closed_name(id: ChunkId) -> String {
    format!("{id}{CLOSED_SUFFIX}")
}

/// The longest prefix of `data` made of complete, well-formed event lines.
pub fn valid_prefix_len(data: &[u8]) -> usize {
    let mut good = 0;
    while let Some(nl) = memchr::memchr(b'\n', &data[good..]) {
        let line = &data[good..good + nl];
        if !sluice_event::check_line(line, true).is_empty() {
            break;
        }
        good += nl + 1;
    }
    good
}

impl<S: Storage> ChunkLog<S> {
    /// Open (or create) the log in `storage`: repair what a crash left, then open a new chunk.
    pub fn open(storage: S, config: LogConfig, clock: Arc<dyn Clock>) -> Result<(ChunkLog<S>, OpenReport), LogError> {
        config.validate()?;
        let mut report = OpenReport::default();
        let entries = storage.list().map_err(io_err("cannot list the data directory"))?;
        let mut chunks = BTreeMap::new();
        let mut to_repair = Vec::new();
        let mut has_stream_id = false;
        let mut watermark = None;
        for e in &entries {
            let name = e.name.as_str();
            if name == STREAM_ID_FILE {
                has_stream_id = true;
            } else if name == WATERMARK_FILE {
                let text = storage.read_all(name).map_err(io_err("cannot read id-watermark"))?;
                watermark = std::str::from_utf8(&text).ok().and_then(|t| ChunkId::parse(t.trim()).ok());
                if watermark.is_none() {
                    report.strays.push(name.to_owned());
                }
            } else if name == LOCK_FILE {
            } else if name == format!("{STREAM_ID_FILE}.tmp") || name == format!("{WATERMARK_FILE}.tmp") {
                // Our own half-written temporary file: the rename never happened, so it holds nothing.
                storage.remove(name).map_err(io_err(format!("cannot remove {name}")))?;
            } else if let Some(id) = name.strip_suffix(CLOSED_SUFFIX).and_then(|s| ChunkId::parse(s).ok()) {
                chunks.insert(
                    id,
                    ChunkMeta { len: e.len, state: ChunkState::Closed, closed_ns: e.modified_ns, renamed: true },
                );
            } else if let Some(id) = name.strip_suffix(OPEN_SUFFIX).and_then(|s| ChunkId::parse(s).ok()) {
                to_repair.push((id, e.modified_ns));
            } else {
                report.strays.push(name.to_owned());
            }
        }
        let stream_id = if has_stream_id {
            let text = storage.read_all(STREAM_ID_FILE).map_err(io_err("cannot read stream-id"))?;
            std::str::from_utf8(&text).ok().and_then(|t| StreamId::parse(t.trim())).ok_or(LogError::BadStreamId)?
        } else {
            if !chunks.is_empty() || !to_repair.is_empty() {
                return Err(LogError::MissingStreamId);
            }
            let id = StreamId::random().map_err(io_err("cannot draw a random stream id"))?;
            storage
                .write_atomic(STREAM_ID_FILE, format!("{id}\n").as_bytes())
                .map_err(io_err("cannot write stream-id"))?;
            report.created = true;
            id
        };
        for (id, modified_ns) in to_repair {
            if chunks.contains_key(&id) {
                report.strays.push(open_name(id));
                continue;
            }
            let name = open_name(id);
            let data = storage.read_all(&name).map_err(io_err(format!("cannot read {name} for repair")))?;
            let keep = valid_prefix_len(&data);
            if keep == 0 {
                storage.remove(&name).map_err(io_err(format!("cannot remove empty {name}")))?;
            } else {
                let mut f = storage.open_append(&name).map_err(io_err(format!("cannot open {name} for repair")))?;
                if keep < data.len() {
                    f.set_len(keep as u64).map_err(io_err(format!("cannot cut the torn tail of {name}")))?;
                }
                if config.fsync != FsyncPolicy::Never {
                    f.sync_data().map_err(io_err(format!("cannot sync {name}")))?;
                }
                storage.rename(&name, &closed_name(id)).map_err(io_err(format!("cannot rename {name}")))?;
                chunks.insert(
                    id,
                    ChunkMeta { len: keep as u64, state: ChunkState::Closed, closed_ns: modified_ns, renamed: true },
                );
            }
            report.repaired.push((id, keep as u64, (data.len() - keep) as u64));
        }
        if config.fsync == FsyncPolicy::Never {
            // Closed chunks were renamed without a sync: after a power loss one may end in a torn
            // or zero-filled tail, which must be cut before it is served as complete.
            let closed: Vec<ChunkId> = chunks.keys().copied().collect();
            for id in closed {
                let name = closed_name(id);
                let data = storage.read_all(&name).map_err(io_err(format!("cannot read {name} to check it")))?;
                let keep = valid_prefix_len(&data);
                if keep == data.len() {
                    continue;
                }
                if keep == 0 {
                    storage.remove(&name).map_err(io_err(format!("cannot remove empty {name}")))?;
                    chunks.remove(&id);
                } else {
                    let mut f = storage.open_append(&name).map_err(io_err(format!("cannot open {name} for repair")))?;
                    f.set_len(keep as u64).map_err(io_err(format!("cannot cut the torn tail of {name}")))?;
                    if let Some(m) = chunks.get_mut(&id) {
                        m.len = keep as u64;
                    }
                }
                report.repaired.push((id, keep as u64, (data.len() - keep) as u64));
            }
        }
        if !report.repaired.is_empty() {
            storage.sync_dir().map_err(io_err("cannot sync the data directory"))?;
        }
        let last_id = [chunks.keys().next_back().copied(), watermark].into_iter().flatten().max();
        let total_bytes = chunks.values().map(|m| m.len).sum();
        let log = ChunkLog {
            storage,
            config,
            clock,
            stream_id,
            state: Mutex::new(State {
                open: None,
                chunks,
                pending: Vec::new(),
                last_id,
                // Whatever was reserved before is spent: the next id must pass it.
                reserved_through: last_id,
                total_bytes,
                dropping: None,
                dir_dirty: false,
                own: Vec::new(),
                block_attempts: 0,
                in_retention: false,
                closed: false,
                reopen_after_mono_ns: 0,
            }),
            sync_lock: Mutex::new(()),
            changed: event_listener::Event::new(),
            shutting_down: AtomicBool::new(false),
            metrics: LogMetrics::default(),
        };
        {
            let mut st = lock(&log.state);
            log.open_new_chunk(&mut st, None)?;
            let now = log.clock.wall_ns();
            for &(id, kept, cut) in &report.repaired {
                let mut buf = std::mem::take(&mut st.own);
                buf.clear();
                OwnEvent::new(&mut buf, now, "chunk_repaired")
                    .str("chunk", &id.to_string())
                    .u64("bytes", kept)
                    .u64("bytes_cut", cut)
                    .str("message", "unclosed chunk from an earlier run closed; torn tail cut")
                    .finish();
                log.write_locked(&mut st, &buf)?;
                st.own = buf;
            }
            for name in &report.strays {
                let mut buf = std::mem::take(&mut st.own);
                buf.clear();
                OwnEvent::new(&mut buf, now, "stray_file")
                    .str("file", name)
                    .str("message", "file in the data directory is not sluice's; left alone")
                    .finish();
                log.write_locked(&mut st, &buf)?;
                st.own = buf;
            }
            log.metrics.stored_chunks.store(st.chunks.len() as u64, Ordering::Relaxed);
        }
        log.sync_if_always()?;
        Ok((log, report))
    }

    pub fn stream_id(&self) -> StreamId {
        self.stream_id
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    pub fn metrics(&self) -> &LogMetrics {
        &self.metrics
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Append complete event lines (each ending in `\n`, each at most `line_bytes_max` + 1 bytes).
    /// Errors only once the log is closed; disk trouble is handled by the `OnFull` policy, and a
    /// failed sync (`always`) is counted in `disk_errors` and tried again by the next sync pass.
    pub fn append(&self, lines: &[u8]) -> Result<(), LogError> {
        if lines.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(lines.last(), Some(&b'\n'), "append takes whole lines");
        let mut st = lock(&self.state);
        self.write_locked(&mut st, lines)?;
        drop(st);
        self.sync_after_append();
        Ok(())
    }

    /// Append one of sluice's own events, built by `build` into a scratch buffer.
    pub fn append_own(&self, build: impl FnOnce(&mut Vec<u8>, u64)) -> Result<(), LogError> {
        let now = self.clock.wall_ns();
        let mut st = lock(&self.state);
        let mut buf = std::mem::take(&mut st.own);
        buf.clear();
        build(&mut buf, now);
        let r = self.write_locked(&mut st, &buf);
        st.own = buf;
        drop(st);
        r?;
        self.sync_after_append();
        Ok(())
    }

    /// The sync of `always` after an append: a failure leaves the bytes unsynced, where the next
    /// pass (the next append's or the maintenance thread's, which reports it) syncs them.
    fn sync_after_append(&self) {
        if self.sync_if_always().is_err() {
            self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Make sure a chunk is open, creating one if a rotation could not (at most once per
    /// [`REOPEN_RETRY`]). False: none could be, and the caller drops what it was writing.
    fn ensure_open(&self, st: &mut Guard<'_, S::File>) -> Result<bool, LogError> {
        if st.open.is_some() {
            return Ok(true);
        }
        if st.closed {
            return Err(LogError::Closed);
        }
        if self.clock.mono_ns() < st.reopen_after_mono_ns {
            return Ok(false);
        }
        Ok(self.reopen(st).is_ok())
    }

    /// Create the chunk that a failed rotation left missing. On failure writes are dropped and
    /// counted until the next try, [`REOPEN_RETRY`] later.
    fn reopen(&self, st: &mut Guard<'_, S::File>) -> Result<(), LogError> {
        let previous = st.chunks.keys().next_back().copied();
        let r = self.open_new_chunk(st, previous);
        if r.is_err() {
            self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
            st.reopen_after_mono_ns = self.clock.mono_ns().saturating_add(REOPEN_RETRY.as_nanos() as u64);
        }
        r
    }

    /// Count `part` (whole lines) as dropped, to be reported by an `events_dropped` event once
    /// writing works again.
    fn drop_lines(&self, st: &mut Guard<'_, S::File>, part: &[u8]) {
        let events = memchr::memchr_iter(b'\n', part).count() as u64;
        let now = self.clock.wall_ns();
        let d = st.dropping.get_or_insert(DropState { events: 0, bytes: 0, since_ns: now });
        d.events += events;
        d.bytes += part.len() as u64;
        self.metrics.dropped_events.fetch_add(events, Ordering::Relaxed);
        self.metrics.dropped_bytes.fetch_add(part.len() as u64, Ordering::Relaxed);
    }

    /// Write lines under the lock, rotating as the size and age limits say.
    fn write_locked(&self, st: &mut Guard<'_, S::File>, mut lines: &[u8]) -> Result<(), LogError> {
        let limit = self.config.chunk_bytes_max - CLOSE_RESERVE_BYTES;
        while !lines.is_empty() {
            if !self.ensure_open(st)? {
                self.drop_lines(st, lines);
                return Ok(());
            }
            let open = st.open.as_ref().ok_or(LogError::Closed)?;
            if open.has_data
                && self.clock.mono_ns().saturating_sub(open.opened_mono_ns)
                    >= self.config.chunk_age_max.as_nanos() as u64
            {
                self.rotate(st, "age")?;
                continue;
            }
            let open = st.open.as_ref().ok_or(LogError::Closed)?;
            let room = limit.saturating_sub(open.len) as usize;
            let part_len = if lines.len() < room {
                lines.len()
            } else {
                // The longest run of whole lines that fits.
                match memchr::memrchr(b'\n', &lines[..room.min(lines.len())]) {
                    Some(i) => i + 1,
                    None => 0,
                }
            };
            if part_len == 0 {
                if open.has_data {
                    self.rotate(st, "size")?;
                    continue;
                }
                // A line that cannot fit even a fresh chunk: only a caller breaking the line limit
                // gets here. Count it as dropped rather than break the size promise.
                let end = memchr::memchr(b'\n', lines).map_or(lines.len(), |i| i + 1);
                self.metrics.dropped_events.fetch_add(1, Ordering::Relaxed);
                self.metrics.dropped_bytes.fetch_add(end as u64, Ordering::Relaxed);
                lines = &lines[end..];
                continue;
            }
            let (part, rest) = lines.split_at(part_len);
            if self.write_part(st, part, true)? {
                lines = rest;
            }
        }
        Ok(())
    }

    /// Write bytes that fit in the open chunk, applying the full-disk policy. Returns false when
    /// the lock was let go (block mode) and the caller must look at the open chunk again. With
    /// `may_block` false (sluice's own events while a chunk opens or closes, which must not let
    /// the lock go mid-rotation) a refused write is dropped and counted in every mode.
    fn write_part(&self, st: &mut Guard<'_, S::File>, part: &[u8], may_block: bool) -> Result<bool, LogError> {
        let backoff = Duration::from_millis(10);
        {
            if st.dropping.is_some() {
                self.report_dropped(st);
            }
            let open = st.open.as_mut().ok_or(LogError::Closed)?;
            match open.file.write_all(part) {
                Ok(()) => {
                    let events = memchr::memchr_iter(b'\n', part).count() as u64;
                    open.len += part.len() as u64;
                    open.events += events;
                    open.has_data = true;
                    let (id, len) = (open.id, open.len);
                    st.block_attempts = 0;
                    st.total_bytes += part.len() as u64;
                    if let Some(m) = st.chunks.get_mut(&id) {
                        m.len = len;
                    }
                    self.metrics.events_written.fetch_add(events, Ordering::Relaxed);
                    self.metrics.bytes_written.fetch_add(part.len() as u64, Ordering::Relaxed);
                    self.metrics.stored_bytes.store(st.total_bytes, Ordering::Relaxed);
                    self.changed.notify(usize::MAX);
                    Ok(true)
                }
                Err(e) => {
                    // Undo a partial write so that no torn line is ever served.
                    let len = open.len;
                    let _ = open.file.set_len(len);
                    self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
                    let blocking = may_block
                        && self.config.on_full == OnFull::Block
                        && !self.shutting_down.load(Ordering::Relaxed);
                    if !blocking {
                        drop(e);
                        self.drop_lines(st, part);
                        return Ok(true);
                    }
                    // Block: wait without holding the lock so readers and the syncer go on; the
                    // caller then looks again (the chunk may have rotated meanwhile).
                    let attempt = st.block_attempts.min(7);
                    st.block_attempts += 1;
                    let pause = (backoff * (1 << attempt)).min(BLOCK_RETRY_MAX);
                    MutexGuard::unlocked(st, || std::thread::sleep(pause));
                    Ok(false)
                }
            }
        }
    }

    /// Write the `events_dropped` report if there is room on the disk again.
    fn report_dropped(&self, st: &mut Guard<'_, S::File>) {
        let st: &mut State<S::File> = st;
        let Some(d) = st.dropping.as_ref() else { return };
        let mut buf = Vec::with_capacity(256);
        OwnEvent::new(&mut buf, self.clock.wall_ns(), "events_dropped")
            .u64("events", d.events)
            .u64("bytes", d.bytes)
            .u64("since_ns", d.since_ns)
            .str("message", "events dropped while the disk refused writes")
            .finish();
        let Some(open) = st.open.as_mut() else { return };
        // A new chunk's first line is its `chunk_opened` event: the report waits for the next write.
        if open.len == 0 || open.len + buf.len() as u64 >= self.config.chunk_bytes_max - CLOSE_RESERVE_BYTES {
            return; // It goes into the next chunk.
        }
        match open.file.write_all(&buf) {
            Ok(()) => {
                open.len += buf.len() as u64;
                open.events += 1;
                st.total_bytes += buf.len() as u64;
                let (id, len) = (open.id, open.len);
                if let Some(m) = st.chunks.get_mut(&id) {
                    m.len = len;
                }
                st.dropping = None;
            }
            Err(_) => {
                let len = open.len;
                let _ = open.file.set_len(len);
            }
        }
    }

    /// The next chunk id: increasing, never reused, reserved durably in blocks.
    fn next_id(&self, st: &mut Guard<'_, S::File>) -> Result<ChunkId, LogError> {
        let now_s = self.clock.wall_ns() / 1_000_000_000;
        let after_last = st.last_id.map_or(0, |id| id.value().saturating_add(1));
        let id = ChunkId::from_value(after_last.max(now_s));
        if st.reserved_through.is_none_or(|r| id > r) {
            let through = ChunkId::from_value(id.value().saturating_add(ID_RESERVE_BLOCK));
            self.storage
                .write_atomic(WATERMARK_FILE, format!("{through}\n").as_bytes())
                .map_err(io_err("cannot write id-watermark"))?;
            st.reserved_through = Some(through);
        }
        st.last_id = Some(id);
        Ok(id)
    }

    /// Create a new open chunk (there must be none).
    fn open_new_chunk(&self, st: &mut Guard<'_, S::File>, previous: Option<ChunkId>) -> Result<(), LogError> {
        debug_assert!(st.open.is_none());
        let id = self.next_id(st)?;
        let name = open_name(id);
        let file = self.storage.create_new(&name).map_err(io_err(format!("cannot create chunk {name}")))?;
        // Under `always` the new entry is made durable before anything goes in; should that fail,
        // the chunk is used all the same and the next sync pass (which reports) tries again.
        if self.config.fsync != FsyncPolicy::Always || self.storage.sync_dir().is_err() {
            st.dir_dirty = true;
        }
        st.open = Some(OpenChunk {
            id,
            file,
            len: 0,
            events: 0,
            opened_mono_ns: self.clock.mono_ns(),
            has_data: false,
            synced_len: 0,
        });
        st.chunks.insert(id, ChunkMeta { len: 0, state: ChunkState::Open, closed_ns: 0, renamed: false });
        self.metrics.chunks_opened.fetch_add(1, Ordering::Relaxed);
        let mut buf = Vec::with_capacity(256);
        let mut ev = OwnEvent::new(&mut buf, self.clock.wall_ns(), "chunk_opened").str("chunk", &id.to_string());
        if let Some(p) = previous {
            ev = ev.str("previous_chunk", &p.to_string());
        }
        ev.str("stream", &self.stream_id.to_string()).finish();
        self.write_part(st, &buf, false)?;
        if let Some(open) = st.open.as_mut() {
            open.has_data = false; // the opening event alone does not make a chunk worth rotating
        }
        Ok(())
    }

    /// Close the open chunk and open the next one; then apply retention, so the size limit holds
    /// at every rotation and not only at the next tick. If the next chunk cannot be created (a
    /// full disk, no file descriptors), writes are dropped and counted until one can be
    /// ([`ChunkLog::ensure_open`], [`ChunkLog::tick`]): capture goes on either way.
    fn rotate(&self, st: &mut Guard<'_, S::File>, reason: &str) -> Result<(), LogError> {
        let closed = self.close_open_chunk(st, reason)?;
        if self.open_new_chunk(st, Some(closed)).is_err() {
            self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
            st.reopen_after_mono_ns = self.clock.mono_ns().saturating_add(REOPEN_RETRY.as_nanos() as u64);
        }
        if !st.in_retention {
            self.apply_retention(st)?;
        }
        Ok(())
    }

    /// Write the closing event and retire the open chunk: synced and renamed now (always/never)
    /// or by the next sync pass (interval).
    fn close_open_chunk(&self, st: &mut Guard<'_, S::File>, reason: &str) -> Result<ChunkId, LogError> {
        let (id, len, events) = {
            let open = st.open.as_ref().ok_or(LogError::Closed)?;
            (open.id, open.len, open.events)
        };
        let mut buf = Vec::with_capacity(256);
        OwnEvent::new(&mut buf, self.clock.wall_ns(), "chunk_closed")
            .str("chunk", &id.to_string())
            .u64("bytes", len)
            .u64("events", events)
            .str("reason", reason)
            .finish();
        // Room is reserved for this line; a refused write (full disk) leaves it out, dropped and
        // counted, without letting the lock go (block mode included): the chunk closed must be
        // the chunk that was open.
        self.write_part(st, &buf, false)?;
        let open = st.open.take().ok_or(LogError::Closed)?;
        let now = self.clock.wall_ns();
        if let Some(m) = st.chunks.get_mut(&id) {
            m.state = ChunkState::Closed;
            m.closed_ns = now;
            m.len = open.len;
        }
        self.metrics.chunks_closed.fetch_add(1, Ordering::Relaxed);
        // A failed sync or rename leaves the chunk closed under its `.open` name: `always` hands
        // it to the next sync pass (which retries and reports), `never` keeps the name (a restart
        // checks and renames it). The log goes on either way.
        match self.config.fsync {
            FsyncPolicy::Interval(_) => st.pending.push(PendingClose { id, file: open.file }),
            FsyncPolicy::Always => {
                if self.timed_sync(&open.file).is_err() || self.rename_closed(st, id).is_err() {
                    self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
                    st.pending.push(PendingClose { id, file: open.file });
                }
                st.dir_dirty = true;
            }
            FsyncPolicy::Never => {
                if self.rename_closed(st, id).is_err() {
                    self.metrics.disk_errors.fetch_add(1, Ordering::Relaxed);
                }
                st.dir_dirty = true;
            }
        }
        self.changed.notify(usize::MAX);
        Ok(id)
    }

    fn rename_closed(&self, st: &mut Guard<'_, S::File>, id: ChunkId) -> Result<(), LogError> {
        self.storage.rename(&open_name(id), &closed_name(id)).map_err(io_err(format!("cannot rename chunk {id}")))?;
        if let Some(m) = st.chunks.get_mut(&id) {
            m.renamed = true;
        }
        Ok(())
    }

    fn timed_sync(&self, f: &S::File) -> io::Result<()> {
        let t = std::time::Instant::now();
        let r = f.sync_data();
        self.metrics.fsync_seconds.observe(t.elapsed());
        self.metrics.fsyncs.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn sync_if_always(&self) -> Result<(), LogError> {
        if self.config.fsync == FsyncPolicy::Always {
            self.sync()?;
        }
        Ok(())
    }

    /// One group commit: make everything written before this call durable (open chunk, chunks
    /// closed since the last pass, directory changes). Appends go on while it runs.
    pub fn sync(&self) -> Result<(), LogError> {
        if self.config.fsync == FsyncPolicy::Never {
            return Ok(());
        }
        let _one_at_a_time = lock(&self.sync_lock);
        let (open, pending) = {
            let mut st = lock(&self.state);
            let open = match st.open.as_ref() {
                Some(o) if o.len > o.synced_len => {
                    Some((o.id, o.len, o.file.try_clone().map_err(io_err(format!("cannot reopen chunk {}", o.id)))?))
                }
                _ => None,
            };
            (open, std::mem::take(&mut st.pending))
        };
        // A chunk not yet synced and renamed goes back to the list for the next pass, whatever
        // failed first: one bad sync must not leave the others closed but never made durable.
        let requeue = |pending: Vec<PendingClose<S::File>>| {
            let mut st = lock(&self.state);
            let mut later = std::mem::take(&mut st.pending);
            st.pending = pending.into_iter().filter(|p| st.chunks.contains_key(&p.id)).collect();
            st.pending.append(&mut later);
        };
        for p in &pending {
            if let Err(e) = self.timed_sync(&p.file) {
                let id = p.id;
                requeue(pending);
                return Err(io_err(format!("cannot sync chunk {id}"))(e));
            }
        }
        if let Some((_, _, f)) = &open {
            if let Err(e) = self.timed_sync(f) {
                requeue(pending);
                return Err(io_err("cannot sync the open chunk")(e));
            }
        }
        let dir_dirty = {
            let mut st = lock(&self.state);
            let had_pending = !pending.is_empty();
            let mut pending = pending.into_iter();
            while let Some(p) = pending.next() {
                // Retention may have discarded it meanwhile.
                if !st.chunks.contains_key(&p.id) || st.chunks.get(&p.id).is_some_and(|m| m.renamed) {
                    continue;
                }
                if let Err(e) = self.rename_closed(&mut st, p.id) {
                    let mut rest = vec![p];
                    rest.extend(pending);
                    st.dir_dirty = true;
                    drop(st);
                    requeue(rest);
                    return Err(e);
                }
            }
            if let (Some((id, len, _)), Some(o)) = (&open, st.open.as_mut()) {
                if o.id == *id {
                    o.synced_len = o.synced_len.max(*len);
                }
            }
            std::mem::take(&mut st.dir_dirty) || had_pending
        };
        if dir_dirty {
            if let Err(e) = self.storage.sync_dir() {
                lock(&self.state).dir_dirty = true;
                return Err(io_err("cannot sync the data directory")(e));
            }
        }
        Ok(())
    }

    /// Periodic work: close a chunk open too long, apply retention. Call about once a second
    /// (and the interval sync on its own schedule, see [`ChunkLog::sync`]).
    pub fn tick(&self) -> Result<(), LogError> {
        {
            let mut st = lock(&self.state);
            if let Some(open) = st.open.as_ref() {
                let age = self.clock.mono_ns().saturating_sub(open.opened_mono_ns);
                if open.has_data && age >= self.config.chunk_age_max.as_nanos() as u64 {
                    self.rotate(&mut st, "age")?;
                }
            }
            self.apply_retention(&mut st)?;
            // A rotation that could not create its next chunk: try again now, and say why not.
            if st.open.is_none() && !st.closed {
                self.reopen(&mut st)?;
            }
        }
        self.sync_if_always()
    }

    /// Discard closed chunks past the age limit, then the oldest while over the size limit.
    fn apply_retention(&self, st: &mut Guard<'_, S::File>) -> Result<(), LogError> {
        // Discard events can themselves rotate the chunk; that rotation must not recurse here.
        st.in_retention = true;
        let r = self.apply_retention_inner(st);
        st.in_retention = false;
        r
    }

    fn apply_retention_inner(&self, st: &mut Guard<'_, S::File>) -> Result<(), LogError> {
        let now = self.clock.wall_ns();
        let age_max = self.config.retention_age_max.as_nanos() as u64;
        loop {
            let oldest = st
                .chunks
                .iter()
                .find(|(_, m)| m.state == ChunkState::Closed)
                .map(|(id, m)| (*id, m.len, m.closed_ns, m.renamed));
            let Some((id, len, closed_ns, renamed)) = oldest else { return Ok(()) };
            let reason = if now.saturating_sub(closed_ns) > age_max {
                "age"
            } else if st.total_bytes > self.config.retention_bytes_max {
                "size"
            } else {
                return Ok(());
            };
            // A chunk closed but not yet synced is discarded too (the sync pass skips it), so a fast
            // writer cannot overshoot the size limit by a sync interval's worth of chunks.
            st.pending.retain(|p| p.id != id);
            let name = if renamed { closed_name(id) } else { open_name(id) };
            match self.storage.remove(&name) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("cannot remove chunk {id} for retention"))(e)),
            }
            st.chunks.remove(&id);
            st.total_bytes -= len;
            st.dir_dirty = true;
            let (c, b) = if reason == "age" {
                (&self.metrics.retention_age_chunks, &self.metrics.retention_age_bytes)
            } else {
                (&self.metrics.retention_size_chunks, &self.metrics.retention_size_bytes)
            };
            c.fetch_add(1, Ordering::Relaxed);
            b.fetch_add(len, Ordering::Relaxed);
            self.metrics.stored_chunks.store(st.chunks.len() as u64, Ordering::Relaxed);
            self.metrics.stored_bytes.store(st.total_bytes, Ordering::Relaxed);
            let mut buf = Vec::with_capacity(256);
            OwnEvent::new(&mut buf, now, "retention_discard")
                .str("chunk", &id.to_string())
                .u64("bytes", len)
                .str("reason", reason)
                .finish();
            self.write_locked(st, &buf)?;
        }
    }

    /// Tell appends in block mode to give up (dropping and counting) so shutdown cannot hang.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Close the open chunk, make everything durable; later appends fail with `Closed`.
    pub fn close(&self) -> Result<(), LogError> {
        self.begin_shutdown();
        {
            let mut st = lock(&self.state);
            if st.open.is_some() {
                self.apply_retention(&mut st)?;
                self.close_open_chunk(&mut st, "shutdown")?;
            }
            st.closed = true;
        }
        self.sync()?;
        self.changed.notify(usize::MAX);
        Ok(())
    }

    // ---- reading ----------------------------------------------------------------------------

    /// All chunks, oldest first, the open one last.
    pub fn list(&self) -> Vec<ChunkInfo> {
        let st = lock(&self.state);
        st.chunks.iter().map(|(id, m)| ChunkInfo { id: *id, len: m.len, state: m.state }).collect()
    }

    /// The chunk being written, if the log is not closed.
    pub fn open_chunk_id(&self) -> Option<ChunkId> {
        lock(&self.state).open.as_ref().map(|o| o.id)
    }

    /// Current length and state of one chunk; None once discarded (or never existed).
    pub fn progress(&self, id: ChunkId) -> Option<ChunkInfo> {
        let st = lock(&self.state);
        st.chunks.get(&id).map(|m| ChunkInfo { id, len: m.len, state: m.state })
    }

    /// Open a chunk for reading from its start. Bytes past `info.len` may be a write in progress
    /// in an open chunk: read only up to the length [`ChunkLog::progress`] reports.
    pub fn open_reader(&self, id: ChunkId) -> Result<(S::Reader, ChunkInfo), ReadError> {
        // A closed chunk can be renamed between the look-up and the open: look again.
        for _ in 0..3 {
            let (name, info) = {
                let st = lock(&self.state);
                let m = st.chunks.get(&id).ok_or(ReadError::NotFound)?;
                let name = if m.renamed { closed_name(id) } else { open_name(id) };
                (name, ChunkInfo { id, len: m.len, state: m.state })
            };
            match self.storage.open_read(&name) {
                Ok(r) => return Ok((r, info)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Err(ReadError::NotFound)
    }

    /// A listener that fires after the next write, close or rotation. Take it, then check
    /// [`ChunkLog::progress`], then wait: no change can slip between the two.
    pub fn listen(&self) -> event_listener::EventListener {
        self.changed.listen()
    }

    /// Wake every listener (for example at shutdown).
    pub fn notify_all(&self) {
        self.changed.notify(usize::MAX);
    }
}
