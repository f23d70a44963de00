//! The event store's storage (SPEC §3): a write-ahead log with group commit, an in-memory Arrow
//! buffer that queries can read, hourly Parquet segments written through `object_store`,
//! compaction and retention, all made consistent by one manifest. [`Store`] implements
//! [`sluice_pull::Sink`], so the puller commits fetched batches straight into it.
//!
//! Not here: pulling (sluice-pull), querying (the query crate reads [`Store::view`] and the
//! segments with DataFusion), HTTP and metrics exposition (the binary renders [`Store::stats`]).
//!
//! # Data directory
//!
//! ```text
//! manifest.json            live segments, key types, flushed seq, chunk progress (see manifest)
//! wal/NNNN….wal            write-ahead log (see [`wal`])
//! segments/sluice_date=YYYY-MM-DD/sluice_hour=HH/seg-NNNNNNNNNNNN.parquet   (see [`segment`])
//! segments/sluice_date=YYYY-MM-DD/sluice_hour=HH/seg-NNNNNNNNNNNN.terms     (see [`terms`])
//! ```
//!
//! # Write path and exactly-once
//!
//! A batch's lines are positioned: line *i* starts at byte `start_offset + (bytes before it)` of
//! its chunk. The store keeps, per (stream, chunk), the committed offset; lines starting below it
//! are skipped (position-based de-duplication: a re-fetch or a second URL of the same supervisor
//! stores nothing twice, two identical lines at different offsets are two events), and a batch
//! starting past it is answered with [`CommitOutcome::Resume`]. The kept lines get consecutive
//! `sluice_seq` numbers and go, with the chunk's new offset, into ONE WAL record, so events and
//! progress become durable together. Commits that arrive while an fsync runs wait for the next
//! one, which covers all of them (group commit; fsync runs on tokio's blocking pool). After the
//! fsync the records are parsed into the buffer in WAL order and the progress is updated; only
//! then does `commit` return [`CommitOutcome::Committed`], and the events are visible in
//! [`Store::snapshot`] from that moment.
//!
//! # Columns
//!
//! `time_ns`, `sluice_source`, `sluice_stream` (32 hex digits), `sluice_received_ns`,
//! `sluice_id` (FixedSizeBinary(16): the xxh3-128 event id, most significant byte first),
//! `sluice_seq`, `sluice_overflow`, then one column per key, Utf8 or UInt64 as decided by the
//! first value the store ever saw for it (kept in the manifest). A value of the other type, a key
//! past `keys_max`, or a key named like a column above (or `sluice_date`/`sluice_hour`) goes into
//! `sluice_overflow`, a JSON object `{"key":value,…}`: a column is never widened or poisoned.
//! A line that does not parse (not a flat object of string and unsigned-integer values with an
//! integer `time_ns`) is kept: `time_ns` is its receive time and `sluice_overflow` is
//! `{"sluice_unparsed":"<text, lossy UTF-8, at most 16 KiB>","sluice_unparsed_cut":<bytes cut>}`
//! (the cut key only when something was cut). A key repeated in one line (never from a
//! supervisor, which refuses such lines) keeps its first value in the column and the later ones
//! in the overflow object. `sluice_*` keys added by supervisors (`sluice_bad`,
//! `sluice_raw`, …) are ordinary key columns.
//!
//! # Crash safety
//!
//! Flush: write segments and their term indexes (temp name then rename, fsynced), then the manifest (temp, fsync,
//! rename, fsync dir) with the new segments and the flushed seq, then delete the WAL files wholly
//! below it. Compaction: write the output, swap the manifest, then delete the inputs. Retention:
//! swap the manifest, then delete. At start, files under `segments/` that the manifest does not
//! list (nor are term indexes of listed segments) are leftovers of a crash and are deleted; the WAL is replayed from the flushed seq on.
//! So a crash at any point loses nothing acknowledged, stores nothing twice, and never makes a
//! half-written segment live.
//!
//! # Memory bounds
//!
//! - Buffer: flushed at `flush_rows_max` rows, at half of `buffer_bytes_max` bytes of Arrow
//!   arrays or at `flush_age_max`; commits wait while it holds `buffer_rows_max` rows or
//!   `buffer_bytes_max` bytes, counting the rows being flushed (with the background maintenance
//!   running). An empty buffer always takes a commit.
//! - Compaction: streams its inputs (one input's file and a few slices of rows decoded at a
//!   time), whatever `compact_rows_max`.
//! - De-duplication: one progress entry (about 100 bytes) per (stream, chunk) that the
//!   supervisor still has, plus one floor per stream: after each listing the store learns the
//!   oldest chunk the supervisor still serves, and at the next flush forgets the entries of
//!   older chunks (untouched for [`FLOOR_GRACE`]; one left incomplete is counted lost). A chunk
//!   older than its stream's floor is never fetched again, entry or not. So the entries follow
//!   the supervisors' retention (at most about 1,008 chunks of 10 minutes in 7 days, or 500 of
//!   1 MB in 500 MB, per source by default), whatever the store's own retention: an entry is
//!   never forgotten while its chunk can still be served, which would store it again. A stream
//!   neither listed nor committed to within `retention_age_max` or [`PROGRESS_STREAM_AGE_MIN`]
//!   (30 days), whichever is longer, is forgotten whole: its supervisor is gone for good.
//! - Keys: at most `keys_max` columns.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod buffer;
pub mod manifest;
mod parse;
mod runtime;
pub mod segment;
pub mod terms;
pub mod wal;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use object_store::local::LocalFileSystem;
use object_store::ObjectStore;
use sluice_pull::{Batch, ChunkProgress, CommitOutcome, Sink};

pub use buffer::{
    KeyType, COL_DATE, COL_HOUR, COL_ID, COL_OVERFLOW, COL_RECEIVED_NS, COL_SEQ, COL_SOURCE, COL_STREAM, COL_TIME_NS,
    FIXED_COLUMNS, OVERFLOW_UNPARSED, OVERFLOW_UNPARSED_CUT, UNPARSED_BYTES_MAX,
};
pub use manifest::{Manifest, SegmentMeta};
pub use terms::{column_class, terms_path, ColumnClass, SegmentTerms, TermsCache, TermsError, TermsItems, BLOCK_ROWS};

use buffer::{Buffer, LineMeta, Registry};
use manifest::{FloorRecord, KeyEntry, ManifestError, ProgressRecord};
use segment::SegmentError;
use wal::{CommitRecord, LostRecord, Record, WalError, WalWriter};

/// Default maximum age of stored events, by receive time.
pub const RETENTION_AGE_MAX_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default maximum total size of the live segments.
pub const RETENTION_BYTES_MAX_DEFAULT: u64 = 100 * 1024 * 1024 * 1024;
/// Default buffer size that triggers a flush.
pub const FLUSH_ROWS_MAX_DEFAULT: usize = 500_000;
/// Default buffer age that triggers a flush.
pub const FLUSH_AGE_MAX_DEFAULT: Duration = Duration::from_secs(60);
/// Default buffer size at which commits wait for a flush.
pub const BUFFER_ROWS_MAX_DEFAULT: usize = 2_000_000;
/// Default memory of the buffer (rows being flushed included) at which commits wait; a flush
/// starts at half of it (or at `flush_rows_max` rows, which for generated events comes first:
/// about 100 bytes each as Arrow arrays, with one buffer part per shape). 384MiB took the same
/// CPU and ~120 MB more peak RSS on a 10M-event backlog, whose commits outrun flushes and fill
/// the buffer to its bound (BENCHMARKS.md, ingest "T, U").
pub const BUFFER_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
/// The least `buffer_bytes_max` the store accepts.
pub const BUFFER_BYTES_MAX_MIN: u64 = 16 * 1024 * 1024;
/// Default size below which a segment is a compaction candidate.
pub const COMPACT_SEGMENT_BYTES_SMALL_DEFAULT: u64 = 32 * 1024 * 1024;
/// Default number of small segments of one partition that triggers a compaction.
pub const COMPACT_INPUTS_MIN_DEFAULT: usize = 4;
/// Default largest number of rows one compaction merges (it streams them: its memory does not
/// grow with this).
pub const COMPACT_ROWS_MAX_DEFAULT: u64 = 1_000_000;
/// Default cap of distinct keys (columns); later keys go to the overflow column.
pub const KEYS_MAX_DEFAULT: usize = 1000;
/// Default zstd level of flushed segments: the fastest, as a flushed segment is small (below
/// `compact_segment_bytes_small`) and rewritten at `compact_zstd_level` once a few share its hour.
/// zstd was the largest single item of ingest CPU; level 1 against 3: 3–5% less store CPU for
/// 0.7% more bytes while uncompacted (BENCHMARKS.md, ingest "T, U" and "V").
pub const FLUSH_ZSTD_LEVEL_DEFAULT: i32 = 1;
/// Default zstd level of compacted segments. Measured on generated events: level 9 makes them
/// 1.5% smaller than level 3 for three times the CPU, so the default stays at 3.
pub const COMPACT_ZSTD_LEVEL_DEFAULT: i32 = 3;
/// How long after a refused WAL append the store still counts as refusing new events (its
/// `/healthz` answers 503 meanwhile). A full disk often still takes a small commit now and then;
/// without this, a probe would see ok and 503 alternate, and one that waits for a few failures
/// in a row would never see the disk as full.
pub const WAL_REFUSED_RECENTLY: Duration = Duration::from_secs(10);
/// A stream neither listed nor committed to for this long (or for `retention_age_max`, if
/// longer) has its read progress forgotten: its supervisor is gone for good (a wiped one has a
/// new stream id). Never shorter than the retention, so that the events of a chunk whose
/// progress is forgotten were all removed by retention before it could be fetched again.
pub const PROGRESS_STREAM_AGE_MIN: Duration = Duration::from_secs(30 * 24 * 3600);
/// A chunk older than its source's oldest listed chunk keeps its read progress this long after
/// its last commit: room for a fetch that was under way when the supervisor discarded it.
pub const FLOOR_GRACE: Duration = Duration::from_secs(3600);
/// How often the background maintenance looks at the buffer, compaction and retention.
const MAINTENANCE_TICK: Duration = Duration::from_millis(500);
/// How often retention runs in the background.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Most uncompressed data one compaction merges: small files of wide, repetitive rows can hold
/// far more than their size says.
const COMPACT_DATA_BYTES_MAX: u64 = 1 << 30;
const WAL_DIR: &str = "wal";

/// Settings of a [`Store`]. Build with [`StoreConfig::new`] and change fields.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Events received longer ago than this are deleted (whole segments, by their newest event).
    pub retention_age_max: Duration,
    /// The oldest segments are deleted while the live segments total more than this.
    pub retention_bytes_max: u64,
    pub flush_rows_max: usize,
    pub flush_age_max: Duration,
    /// Commits wait while the buffer holds this many rows (only with `maintenance`).
    pub buffer_rows_max: usize,
    /// Commits wait while the buffer (with the rows being flushed) holds this many bytes of Arrow
    /// arrays (only with `maintenance`); a flush starts at half of it.
    pub buffer_bytes_max: u64,
    pub compact_segment_bytes_small: u64,
    pub compact_inputs_min: usize,
    pub compact_rows_max: u64,
    pub keys_max: usize,
    pub flush_zstd_level: i32,
    pub compact_zstd_level: i32,
    /// Run flush, compaction and retention on a background thread (default). Without it they run
    /// only when called ([`Store::flush`], [`Store::compact`], [`Store::apply_retention`]).
    pub maintenance: bool,
    /// Testing only: act as if the process died at this point (the operation fails and the store
    /// refuses all further work, leaving the files as a crash there would).
    #[doc(hidden)]
    pub fail_at: Option<FailPoint>,
    /// Testing only: at this point the process aborts on the spot (no flush, no cleanup), as a
    /// `kill -9` would end it; for crash tests of the real binary.
    #[doc(hidden)]
    pub abort_at: Option<FailPoint>,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            retention_age_max: RETENTION_AGE_MAX_DEFAULT,
            retention_bytes_max: RETENTION_BYTES_MAX_DEFAULT,
            flush_rows_max: FLUSH_ROWS_MAX_DEFAULT,
            flush_age_max: FLUSH_AGE_MAX_DEFAULT,
            buffer_rows_max: BUFFER_ROWS_MAX_DEFAULT,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            compact_segment_bytes_small: COMPACT_SEGMENT_BYTES_SMALL_DEFAULT,
            compact_inputs_min: COMPACT_INPUTS_MIN_DEFAULT,
            compact_rows_max: COMPACT_ROWS_MAX_DEFAULT,
            keys_max: KEYS_MAX_DEFAULT,
            flush_zstd_level: FLUSH_ZSTD_LEVEL_DEFAULT,
            compact_zstd_level: COMPACT_ZSTD_LEVEL_DEFAULT,
            maintenance: true,
            fail_at: None,
            abort_at: None,
        }
    }
}

/// Points where a test can make the store "crash" (see [`StoreConfig::fail_at`] and
/// [`StoreConfig::abort_at`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailPoint {
    /// The WAL record is written but the fsync "fails": the commit is not acknowledged.
    BeforeSync,
    /// Segments written, manifest not yet replaced.
    FlushAfterSegments,
    /// Manifest replaced, WAL files not yet deleted.
    FlushAfterManifest,
    /// Compaction output written, manifest not yet replaced.
    CompactAfterOutput,
    /// Manifest replaced, compaction inputs not yet deleted.
    CompactAfterManifest,
    /// Manifest replaced, expired segments not yet deleted.
    RetentionAfterManifest,
    /// Not a crash: the first WAL append writes half of its record and then fails as a full disk
    /// does. The store refuses that commit and goes on.
    WalAppendDiskFull,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store data directory {path}: {source}; check that it exists and is writable")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Segment(#[from] SegmentError),
    #[error("object store at {path}: {source}")]
    ObjectStore { path: PathBuf, source: object_store::Error },
    #[error("store stopped after a failed write ({0}); restart it to recover from the write-ahead log")]
    Poisoned(String),
    #[error("injected failure at {0:?}")]
    Injected(FailPoint),
}

/// Counters and gauges for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Events committed since start (replayed ones not included).
    pub rows_committed: u64,
    /// The same, per configured source name.
    pub rows_committed_by_source: std::collections::BTreeMap<Arc<str>, u64>,
    /// Events in the buffer (including a flush in progress).
    pub rows_buffered: u64,
    /// Memory of the buffered rows (Arrow arrays, rows being flushed included).
    pub bytes_buffered: u64,
    /// Events in live segments.
    pub rows_in_segments: u64,
    /// Lines skipped because their offset was already committed.
    pub lines_deduplicated: u64,
    /// Batches answered with Resume.
    pub resumes: u64,
    /// Lines that did not parse (kept in the overflow column).
    pub lines_unparsed: u64,
    /// Values sent to the overflow column (type conflict, key cap, reserved name).
    pub values_overflowed: u64,
    /// Chunks recorded as lost (since the data directory was created).
    pub chunks_lost: u64,
    pub wal_bytes: u64,
    pub wal_records: u64,
    /// Group-commit syncs, their total and largest latency.
    pub fsyncs: u64,
    pub fsync_ns_total: u64,
    pub fsync_ns_max: u64,
    pub segments: u64,
    /// Bytes of the live segments and their term indexes.
    pub segment_bytes: u64,
    pub flushes: u64,
    /// Compactions (since the data directory was created).
    pub compactions: u64,
    pub retention_segments_deleted: u64,
    /// Segments, WAL and manifest.
    pub bytes_on_disk: u64,
    pub keys: u64,
    pub progress_entries: u64,
    /// The next `sluice_seq` to hand out, and the highest one in segments.
    pub seq_next: u64,
    pub seq_flushed: u64,
    /// Background maintenance failures; `maintenance_error` is the last one's message, until a
    /// pass of maintenance succeeds.
    pub maintenance_errors: u64,
    pub maintenance_error: Option<String>,
    /// WAL appends that failed and left the log as it was (a full disk): their commits were
    /// refused, to be sent again. `wal_append_error` is the last one's message and
    /// `wal_append_refused_ago` how long ago it was; both stay after appends succeed again, so
    /// that a reader can tell "refusing now and then" (a full disk that still takes a small
    /// commit at times) from "recovered" (see [`WAL_REFUSED_RECENTLY`]).
    pub wal_append_errors: u64,
    pub wal_append_error: Option<String>,
    pub wal_append_refused_ago: Option<Duration>,
    /// Why the store stopped taking commits (a failed WAL sync, or an append whose partial record
    /// could not be cut off): only a restart, which replays the WAL, recovers.
    pub stopped: Option<String>,
    /// Live segments whose term index was missing or invalid when loaded (they are read without
    /// pruning), and the last reason.
    pub terms_unavailable: u64,
    pub terms_error: Option<String>,
}

/// Read progress of one chunk, as [`Store::progress_all`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEntry {
    pub source: Arc<str>,
    pub stream: u128,
    pub chunk: Arc<str>,
    pub progress: ChunkProgress,
    pub lost: bool,
    pub updated_ns: u64,
}

/// A consistent view for a query: the live segments and the buffered rows, taken together so that
/// no event is in both or in neither.
#[derive(Debug, Clone)]
pub struct StoreView {
    pub schema: SchemaRef,
    pub segments: Vec<SegmentMeta>,
    pub buffered: Vec<RecordBatch>,
}

#[derive(Debug)]
struct Progress {
    source: Arc<str>,
    /// Offset and completeness including records written but not yet durable: de-duplication
    /// decides against this, so two concurrent commits of one chunk never both keep a line.
    reserved: ChunkProgress,
    /// What is durable (and applied): what `progress` answers.
    durable: ChunkProgress,
    lost: bool,
    updated_ns: u64,
}

/// The oldest chunk a source last listed for a stream (see [`Sink::listed`]).
struct Floor {
    oldest: Arc<str>,
    listed_ns: u64,
}

struct Pending {
    end_lsn: u64,
    file_index: u64,
    record: CommitRecord,
}

struct State {
    wal: WalWriter,
    /// Bytes appended to the WAL since open, and how many of them are synced and applied.
    lsn_appended: u64,
    lsn_applied: u64,
    syncing: bool,
    pending: VecDeque<Pending>,
    poisoned: Option<String>,
    /// When a WAL append was last refused (the log left whole: a full disk).
    wal_refused_at: Option<Instant>,
    next_seq: u64,
    /// Every seq up to this is in the buffer, a flush in progress or a segment.
    applied_seq: u64,
    registry: Registry,
    buffer: Buffer,
    /// Rows taken by a flush in progress: still visible to queries until the manifest lists them.
    flushing: Vec<RecordBatch>,
    /// Memory of `flushing`.
    flushing_bytes: usize,
    progress: HashMap<u128, HashMap<Arc<str>, Progress>>,
    floors: HashMap<u128, Floor>,
    manifest: Manifest,
    manifest_bytes: u64,
    stats: StoreStats,
    encode_buf: Vec<u8>,
}

impl State {
    /// A WAL append failed and left the log whole: counted, and its message and time kept.
    fn refused(&mut self, e: &WalError) {
        self.stats.wal_append_errors += 1;
        self.stats.wal_append_error = Some(e.to_string());
        self.wal_refused_at = Some(Instant::now());
    }
}

struct Inner {
    cfg: StoreConfig,
    objects: Arc<LocalFileSystem>,
    state: Mutex<State>,
    applied: tokio::sync::watch::Sender<u64>,
    /// Serialises flush, compaction and retention (each replaces the manifest).
    maint: Mutex<()>,
    wake: (Mutex<bool>, Condvar),
    buffer_space: tokio::sync::Notify,
    terms: TermsCache,
    /// Segments whose compaction failed (a damaged or missing file): left out of later groups
    /// until a restart, so that one bad segment neither holds back the other partitions nor is
    /// read again every tick.
    compact_skip: Mutex<std::collections::HashSet<String>>,
}

/// The store. Dropping it stops the background maintenance without flushing (like a crash: the
/// WAL has everything); call [`Store::close`] to flush first.
pub struct Store {
    inner: Arc<Inner>,
    maintenance: Option<JoinHandle<()>>,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock is a bug; the data is still consistent enough to report.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

impl Store {
    /// Open (or create) the store in `cfg.data_dir`: delete leftover segments, replay the WAL,
    /// start background maintenance.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let dir = cfg.data_dir.clone();
        let wal_dir = dir.join(WAL_DIR);
        segment::create_dirs_durably(&wal_dir).map_err(io_err(&wal_dir))?;
        let seg_dir = dir.join(segment::SEGMENTS_DIR);
        segment::create_dirs_durably(&seg_dir).map_err(io_err(&seg_dir))?;
        let objects = Arc::new(
            LocalFileSystem::new_with_prefix(&dir)
                .map_err(|source| StoreError::ObjectStore { path: dir.clone(), source })?,
        );
        let (manifest, manifest_bytes) = Manifest::load(&dir)?;
        sweep_leftovers(&dir, &manifest)?;

        let keys: Vec<(String, KeyType)> = manifest.keys.iter().map(|k| (k.name.clone(), k.key_type)).collect();
        let registry = Registry::new(&keys, cfg.keys_max);
        let mut progress: HashMap<u128, HashMap<Arc<str>, Progress>> = HashMap::new();
        for p in &manifest.progress {
            let Ok(stream) = u128::from_str_radix(&p.stream, 16) else { continue };
            let cp = ChunkProgress { offset: p.offset, complete: p.complete };
            progress.entry(stream).or_default().insert(
                Arc::from(p.chunk.as_str()),
                Progress {
                    source: Arc::from(p.source.as_str()),
                    reserved: cp,
                    durable: cp,
                    lost: p.lost,
                    updated_ns: p.updated_ns,
                },
            );
        }
        let floors: HashMap<u128, Floor> = manifest
            .floors
            .iter()
            .filter_map(|f| {
                let stream = u128::from_str_radix(&f.stream, 16).ok()?;
                Some((stream, Floor { oldest: Arc::from(f.oldest.as_str()), listed_ns: f.listed_ns }))
            })
            .collect();
        let replay = wal::replay(&wal_dir)?;
        let existing: Vec<(u64, u64)> = replay.files.iter().map(|f| (f.index, f.bytes)).collect();
        let mut wal = WalWriter::open(&wal_dir, &existing)?;
        if cfg.fail_at == Some(FailPoint::WalAppendDiskFull) {
            wal.tear_next_append();
        }
        let mut stats = StoreStats {
            chunks_lost: manifest.chunks_lost_total,
            compactions: manifest.compactions_total,
            ..Default::default()
        };
        stats.wal_records = replay.files.iter().map(|f| f.records.len() as u64).sum();
        let mut state = State {
            wal,
            lsn_appended: 0,
            lsn_applied: 0,
            syncing: false,
            pending: VecDeque::new(),
            poisoned: None,
            wal_refused_at: None,
            next_seq: manifest.next_seq.max(1),
            applied_seq: manifest.flushed_seq,
            registry,
            buffer: Buffer::default(),
            flushing: Vec::new(),
            flushing_bytes: 0,
            progress,
            floors,
            manifest_bytes,
            manifest,
            stats,
            encode_buf: Vec::new(),
        };
        for file in replay.files {
            for record in file.records {
                match record {
                    Record::Commit(c) => {
                        let replayed = c.first_seq > state.manifest.flushed_seq;
                        apply_commit(&mut state, &c, replayed);
                    }
                    Record::Lost(l) => apply_lost(&mut state, &l),
                }
            }
        }
        state.stats.rows_committed = 0;
        state.stats.rows_committed_by_source.clear();
        let (applied, _) = tokio::sync::watch::channel(0u64);
        let inner = Arc::new(Inner {
            cfg,
            objects,
            state: Mutex::new(state),
            applied,
            maint: Mutex::new(()),
            wake: (Mutex::new(false), Condvar::new()),
            buffer_space: tokio::sync::Notify::new(),
            terms: TermsCache::new(terms::TERMS_CACHE_BYTES_MAX_DEFAULT),
            compact_skip: Mutex::new(std::collections::HashSet::new()),
        });
        let maintenance = if inner.cfg.maintenance {
            let inner = inner.clone();
            Some(
                std::thread::Builder::new()
                    .name("sluice-store-maintenance".into())
                    .spawn(move || maintenance_loop(&inner))
                    .map_err(io_err(&dir))?,
            )
        } else {
            None
        };
        Ok(Store { inner, maintenance })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.cfg.data_dir
    }

    /// The object store the segments live in (paths as in [`SegmentMeta::path`]).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.objects.clone()
    }

    /// The full schema: fixed columns and every key so far.
    pub fn schema(&self) -> SchemaRef {
        lock(&self.inner.state).registry.schema()
    }

    /// Everything committed and not yet in a live segment, aligned to [`Store::schema`].
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        self.view().buffered
    }

    /// Live segments and buffered rows, consistent with each other. The listed segment files stay
    /// readable until the next compaction or retention pass deletes them (no lease yet: a query
    /// that outlives that must take a new view and retry).
    pub fn view(&self) -> StoreView {
        let mut s = lock(&self.inner.state);
        let s = &mut *s;
        let schema = s.registry.schema();
        let mut buffered: Vec<RecordBatch> = s.flushing.iter().map(|b| buffer::align(b, &schema)).collect();
        buffered.extend(s.buffer.snapshot(&s.registry));
        StoreView { schema, segments: s.manifest.segments.clone(), buffered }
    }

    /// Buffered rows with `sluice_seq` above `after`, in seq order, aligned to the current schema,
    /// and the highest seq applied so far (the cursor to pass next time). Rows already flushed
    /// into segments are not returned: a caller that falls behind a flush misses them, and can
    /// tell how many from the gap between `after` and the first seq returned. For live tail.
    pub fn buffered_after(&self, after: u64) -> (Vec<RecordBatch>, u64) {
        let mut guard = lock(&self.inner.state);
        let s = &mut *guard;
        let schema = s.registry.schema();
        let mut out: Vec<RecordBatch> = s
            .flushing
            .iter()
            .filter_map(|b| buffer::suffix_after(b, after))
            .map(|b| buffer::align(&b, &schema))
            .collect();
        out.extend(s.buffer.rows_after(&s.registry, after));
        let applied = s.applied_seq;
        drop(guard);
        (buffer::in_seq_order(out), applied)
    }

    /// Changes whenever committed events become visible (after each group commit). For live
    /// tail: wait on it, then call [`Store::buffered_after`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.applied.subscribe()
    }

    /// The term index of a segment of a [`StoreView`], cached; "may contain anything" (and
    /// counted in [`StoreStats::terms_unavailable`]) when it is missing or invalid.
    pub async fn segment_terms(&self, segment_path: &str) -> Arc<SegmentTerms> {
        self.inner.terms.get(self.inner.objects.as_ref(), segment_path).await
    }

    /// A copy of the current manifest.
    pub fn manifest(&self) -> Manifest {
        lock(&self.inner.state).manifest.clone()
    }

    pub fn stats(&self) -> StoreStats {
        let s = lock(&self.inner.state);
        let mut st = s.stats.clone();
        st.rows_buffered = (s.buffer.rows() + s.flushing.iter().map(|b| b.num_rows()).sum::<usize>()) as u64;
        st.bytes_buffered = (s.buffer.bytes() + s.flushing_bytes) as u64;
        st.rows_in_segments = s.manifest.segments.iter().map(|m| m.rows).sum();
        st.wal_bytes = s.wal.bytes();
        st.segments = s.manifest.segments.len() as u64;
        st.segment_bytes = s.manifest.segments.iter().map(SegmentMeta::disk_bytes).sum();
        st.bytes_on_disk = st.segment_bytes + st.wal_bytes + s.manifest_bytes;
        st.keys = s.registry.keys().len() as u64;
        st.progress_entries = s.progress.values().map(|m| m.len() as u64).sum();
        st.seq_next = s.next_seq;
        st.seq_flushed = s.manifest.flushed_seq;
        st.stopped = s.poisoned.clone();
        st.wal_append_refused_ago = s.wal_refused_at.map(|at| at.elapsed());
        (st.terms_unavailable, st.terms_error) = self.inner.terms.unavailable();
        st
    }

    /// Durable read progress of every chunk the store remembers.
    pub fn progress_all(&self) -> Vec<ProgressEntry> {
        let s = lock(&self.inner.state);
        let mut out: Vec<ProgressEntry> = s
            .progress
            .iter()
            .flat_map(|(stream, chunks)| {
                chunks.iter().map(|(chunk, p)| ProgressEntry {
                    source: p.source.clone(),
                    stream: *stream,
                    chunk: chunk.clone(),
                    progress: p.durable,
                    lost: p.lost,
                    updated_ns: p.updated_ns,
                })
            })
            .collect();
        out.sort_by(|a, b| (a.stream, a.chunk.len(), &a.chunk).cmp(&(b.stream, b.chunk.len(), &b.chunk)));
        out
    }

    /// Commit a batch (see the crate docs).
    pub async fn commit_batch(&self, batch: Batch) -> Result<CommitOutcome, StoreError> {
        commit(&self.inner, batch).await
    }

    /// Flush the buffer into segments now. Blocking (call it from a blocking thread).
    pub fn flush(&self) -> Result<usize, StoreError> {
        flush(&self.inner)
    }

    /// Run one compaction pass now; returns the number of outputs written. Blocking.
    pub fn compact(&self) -> Result<usize, StoreError> {
        compact(&self.inner)
    }

    /// Apply retention as of `now_ns`; returns the number of segments deleted. Blocking.
    pub fn apply_retention(&self, now_ns: u64) -> Result<usize, StoreError> {
        retention(&self.inner, now_ns)
    }

    /// Flush and stop. Blocking.
    pub fn close(mut self) -> Result<(), StoreError> {
        self.stop_maintenance();
        flush(&self.inner).map(|_| ())
    }

    fn stop_maintenance(&mut self) {
        if let Some(handle) = self.maintenance.take() {
            *lock(&self.inner.wake.0) = true;
            self.inner.wake.1.notify_all();
            // A panic in maintenance is a bug already recorded by the panic hook; stopping anyway.
            let _ = handle.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_maintenance();
    }
}

impl Sink for Store {
    fn commit(&self, batch: Batch) -> impl std::future::Future<Output = Result<CommitOutcome, String>> + Send {
        let inner = self.inner.clone();
        async move { commit(&inner, batch).await.map_err(|e| e.to_string()) }
    }

    fn progress(&self, stream: u128, chunk: &str) -> Option<ChunkProgress> {
        let s = lock(&self.inner.state);
        match s.progress.get(&stream).and_then(|m| m.get(chunk)) {
            Some(p) => Some(p.durable),
            // Older than the oldest chunk listed: gone from the supervisor (its entry may have
            // been forgotten), so nothing is to be fetched, whatever lists it.
            None if s.floors.get(&stream).is_some_and(|f| chunk_before(chunk, &f.oldest)) => {
                Some(ChunkProgress { offset: 0, complete: true })
            }
            None => None,
        }
    }

    fn listed(&self, stream: u128, oldest: &str) {
        let mut s = lock(&self.inner.state);
        let listed_ns = now_ns();
        match s.floors.get_mut(&stream) {
            Some(f) => {
                // A listing is a moment's view: a slower, older answer never moves it back.
                if chunk_before(&f.oldest, oldest) {
                    f.oldest = Arc::from(oldest);
                }
                f.listed_ns = f.listed_ns.max(listed_ns);
            }
            None => {
                s.floors.insert(stream, Floor { oldest: Arc::from(oldest), listed_ns });
            }
        }
    }

    fn chunk_lost(&self, source: &str, stream: u128, chunk: &str, offset: u64) {
        let record =
            LostRecord { stream, received_ns: now_ns(), offset, source: Arc::from(source), chunk: Arc::from(chunk) };
        let mut guard = lock(&self.inner.state);
        let s = &mut *guard;
        if s.poisoned.is_some() {
            return;
        }
        // Durable with the next group commit or flush: losing the mark in a crash only means the
        // puller finds the chunk gone again and reports it again.
        s.encode_buf.clear();
        let rec = Record::Lost(record.clone());
        if wal::encode(&rec, &mut s.encode_buf).is_ok() {
            let buf = std::mem::take(&mut s.encode_buf);
            match s.wal.append(&buf) {
                Ok(()) => s.lsn_appended += buf.len() as u64,
                Err(e) if !e.log_intact() => s.poisoned = Some(e.to_string()),
                // A full disk: the mark is applied below all the same and kept by the next
                // flush's manifest; a crash before that only means the chunk is found gone again.
                Err(e) => s.refused(&e),
            }
            s.encode_buf = buf;
        }
        apply_lost(s, &record);
    }
}

/// Iterate the lines of `data` as (offset within data, line without '\n', length with '\n').
fn lines(data: &[u8]) -> impl Iterator<Item = (usize, &[u8], usize)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        if at >= data.len() {
            return None;
        }
        let start = at;
        let (line, len) = match memchr::memchr(b'\n', &data[at..]) {
            Some(i) => (&data[at..at + i], i + 1),
            // A last line without '\n' (the puller never sends one) still counts as a line.
            None => (&data[at..], data.len() - at),
        };
        at += len;
        Some((start, line, len))
    })
}

async fn commit(inner: &Arc<Inner>, batch: Batch) -> Result<CommitOutcome, StoreError> {
    // Back-pressure: only with background maintenance, which is what drains the buffer.
    if inner.cfg.maintenance {
        loop {
            let notified = inner.buffer_space.notified();
            {
                let s = lock(&inner.state);
                if let Some(p) = &s.poisoned {
                    return Err(StoreError::Poisoned(p.clone()));
                }
                let rows = s.buffer.rows() + s.flushing.iter().map(|b| b.num_rows()).sum::<usize>();
                let bytes = (s.buffer.bytes() + s.flushing_bytes) as u64;
                // An empty buffer always takes a commit, however large.
                if rows == 0 || (rows < inner.cfg.buffer_rows_max && bytes < inner.cfg.buffer_bytes_max) {
                    break;
                }
            }
            inner.wake.1.notify_all();
            notified.await;
        }
    }
    let (target, outcome) = {
        let mut guard = lock(&inner.state);
        let s = &mut *guard;
        if let Some(p) = &s.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        let entry = s.progress.get(&batch.stream).and_then(|m| m.get(batch.chunk.as_ref()));
        let (reserved, durable) =
            entry.map_or((ChunkProgress::default(), ChunkProgress::default()), |p| (p.reserved, p.durable));
        if batch.start_offset > reserved.offset {
            s.stats.resumes += 1;
            return Ok(CommitOutcome::Resume { offset: reserved.offset });
        }
        let mut skip_bytes = 0usize;
        let mut skipped = 0u64;
        let mut kept = 0u64;
        for (at, _, len) in lines(&batch.lines) {
            if batch.start_offset + (at as u64) < reserved.offset {
                skip_bytes = at + len;
                skipped += 1;
            } else {
                kept += 1;
            }
        }
        s.stats.lines_deduplicated += skipped;
        let end = (batch.start_offset + batch.lines.len() as u64).max(reserved.offset);
        let complete = reserved.complete || batch.chunk_complete;
        if kept == 0 && complete == reserved.complete {
            if durable == reserved {
                return Ok(CommitOutcome::Committed { offset: durable.offset });
            }
            // Another commit of this chunk is on its way to disk: answer when it is there.
            (s.lsn_appended, CommitOutcome::Committed { offset: reserved.offset })
        } else {
            let record = CommitRecord {
                stream: batch.stream,
                received_ns: batch.received_ns,
                first_offset: batch.start_offset + skip_bytes as u64,
                first_seq: s.next_seq,
                progress_offset: end,
                complete,
                source: batch.source.clone(),
                chunk: batch.chunk.clone(),
                lines: batch.lines.slice(skip_bytes..),
            };
            s.encode_buf.clear();
            let mut buf = std::mem::take(&mut s.encode_buf);
            let res = wal::encode(&Record::Commit(record.clone()), &mut buf).and_then(|()| s.wal.append(&buf));
            let len = buf.len() as u64;
            s.encode_buf = buf;
            if let Err(e) = res {
                if !e.log_intact() {
                    // Part of a record is left in the log: nothing after it may be acknowledged.
                    s.poisoned = Some(e.to_string());
                } else if !matches!(e, WalError::TooLarge { .. }) {
                    // A full disk: refused, and sent again by the puller once there is room.
                    s.refused(&e);
                }
                return Err(e.into());
            }
            s.next_seq += kept;
            s.lsn_appended += len;
            s.stats.wal_records += 1;
            let end_lsn = s.lsn_appended;
            let file_index = s.wal.index();
            s.pending.push_back(Pending { end_lsn, file_index, record });
            let p =
                s.progress.entry(batch.stream).or_default().entry(batch.chunk.clone()).or_insert_with(|| Progress {
                    source: batch.source.clone(),
                    reserved: ChunkProgress::default(),
                    durable: ChunkProgress::default(),
                    lost: false,
                    updated_ns: batch.received_ns,
                });
            p.reserved = ChunkProgress { offset: end, complete };
            (end_lsn, CommitOutcome::Committed { offset: end })
        }
    };
    wait_applied(inner, target).await?;
    Ok(outcome)
}

/// Wait until the WAL is synced and applied up to `target`, leading a group sync if none runs.
async fn wait_applied(inner: &Arc<Inner>, target: u64) -> Result<(), StoreError> {
    let mut rx = inner.applied.subscribe();
    loop {
        let lead = {
            let mut s = lock(&inner.state);
            if s.lsn_applied >= target {
                return Ok(());
            }
            if let Some(p) = &s.poisoned {
                return Err(StoreError::Poisoned(p.clone()));
            }
            if s.syncing {
                // Marked under the lock: the leader notifies after it releases the lock.
                rx.borrow_and_update();
                false
            } else {
                s.syncing = true;
                true
            }
        };
        if lead {
            let leader = inner.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || sync_and_apply(&leader)).await {
                {
                    let mut s = lock(&inner.state);
                    s.poisoned = Some(format!("wal sync task failed: {e}"));
                    s.syncing = false;
                }
                inner.applied.send_modify(|_| {});
            }
            continue;
        }
        if rx.changed().await.is_err() {
            return Err(StoreError::Poisoned("store closed".into()));
        }
    }
}

/// One group commit: fsync everything appended so far, then apply those records in WAL order.
fn sync_and_apply(inner: &Inner) {
    let (set, target) = {
        let mut s = lock(&inner.state);
        (s.wal.files_to_sync(), s.lsn_appended)
    };
    let started = Instant::now();
    let mut result: Result<(), String> = Ok(());
    if inner.cfg.fail_at == Some(FailPoint::BeforeSync) {
        result = Err(format!("injected failure at {:?}", FailPoint::BeforeSync));
    } else {
        for f in &set.files {
            if let Err(e) = f.sync_data() {
                result = Err(format!("wal fsync: {e}"));
                break;
            }
        }
        if result.is_ok() {
            if let Some(dir) = &set.dir {
                if let Err(e) = wal::sync_dir(dir) {
                    result = Err(e.to_string());
                }
            }
        }
    }
    let elapsed = started.elapsed().as_nanos() as u64;
    let mut guard = lock(&inner.state);
    let s = &mut *guard;
    s.stats.fsyncs += 1;
    s.stats.fsync_ns_total += elapsed;
    s.stats.fsync_ns_max = s.stats.fsync_ns_max.max(elapsed);
    match result {
        // After a failed fsync the kernel may have dropped the dirty pages: nothing written
        // since the last good sync can be trusted, so stop and let a restart replay the log.
        Err(e) => s.poisoned = Some(e),
        Ok(()) => {
            while s.pending.front().is_some_and(|p| p.end_lsn <= target) {
                let p = s.pending.pop_front().expect("front exists");
                apply_commit(s, &p.record, true);
            }
            s.lsn_applied = target;
        }
    }
    s.syncing = false;
    let flush_due = flush_due(&s.buffer, &inner.cfg);
    drop(guard);
    inner.applied.send_modify(|_| {});
    if flush_due {
        inner.wake.1.notify_all();
    }
}

/// Whether the buffer is big enough to flush now: `flush_rows_max` rows, or half of
/// `buffer_bytes_max` (so that commits go on into the other half while it is written).
fn flush_due(buffer: &buffer::Buffer, cfg: &StoreConfig) -> bool {
    buffer.rows() >= cfg.flush_rows_max || buffer.bytes() as u64 >= cfg.buffer_bytes_max / 2
}

/// Apply a durable commit record: its lines into the buffer (if `to_buffer`) and its progress.
fn apply_commit(s: &mut State, c: &CommitRecord, to_buffer: bool) {
    let stream_hex = format!("{:032x}", c.stream);
    let mut seq = c.first_seq;
    let rows_before = s.stats.rows_committed;
    for (at, line, _) in lines(&c.lines) {
        if to_buffer {
            let offset = c.first_offset + at as u64;
            let meta = LineMeta {
                source: &c.source,
                stream_hex: &stream_hex,
                received_ns: c.received_ns,
                seq,
                id: sluice_event::event_id(c.stream, &c.chunk, offset, line),
            };
            let counts = s.buffer.push_line(&mut s.registry, line, &meta);
            s.stats.lines_unparsed += counts.unparsed;
            s.stats.values_overflowed += counts.overflow_values;
            s.stats.rows_committed += 1;
            s.applied_seq = s.applied_seq.max(seq);
        }
        seq += 1;
    }
    if s.stats.rows_committed > rows_before {
        *s.stats.rows_committed_by_source.entry(c.source.clone()).or_default() += s.stats.rows_committed - rows_before;
    }
    s.next_seq = s.next_seq.max(seq);
    let p = s.progress.entry(c.stream).or_default().entry(c.chunk.clone()).or_insert_with(|| Progress {
        source: c.source.clone(),
        reserved: ChunkProgress::default(),
        durable: ChunkProgress::default(),
        lost: false,
        updated_ns: c.received_ns,
    });
    let new = ChunkProgress { offset: c.progress_offset, complete: c.complete };
    p.durable = max_progress(p.durable, new);
    p.reserved = max_progress(p.reserved, new);
    p.updated_ns = p.updated_ns.max(c.received_ns);
}

/// A duration in nanoseconds; one past u64 (585 years) stays "forever" instead of wrapping.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn max_progress(a: ChunkProgress, b: ChunkProgress) -> ChunkProgress {
    ChunkProgress { offset: a.offset.max(b.offset), complete: a.complete || b.complete }
}

/// How long a stream's read progress is kept without a listing or a commit of it.
fn progress_window(cfg: &StoreConfig) -> Duration {
    cfg.retention_age_max.max(PROGRESS_STREAM_AGE_MIN)
}

/// Whether chunk id `a` comes before `b`: chunk ids order by length, then bytewise (SPEC §2).
fn chunk_before(a: &str, b: &str) -> bool {
    (a.len(), a.as_bytes()) < (b.len(), b.as_bytes())
}

/// Forget the read progress that can no longer prevent a duplicate (see "Memory bounds"):
/// - a chunk older than the oldest its source last listed, untouched for [`FLOOR_GRACE`]: the
///   supervisor no longer has it (a chunk left incomplete there is counted lost);
/// - every chunk of a stream neither listed nor committed to within [`progress_window`], and the
///   stream's floor with them.
///
/// Never a chunk with a commit on its way to disk. Returns the chunks newly counted lost.
fn forget_progress(
    progress: &mut HashMap<u128, HashMap<Arc<str>, Progress>>,
    floors: &mut HashMap<u128, Floor>,
    now_ns: u64,
    window: Duration,
) -> u64 {
    let stale_before = now_ns.saturating_sub(nanos(window));
    let grace_before = now_ns.saturating_sub(FLOOR_GRACE.as_nanos() as u64);
    let mut lost = 0;
    progress.retain(|stream, chunks| {
        let floor = floors.get(stream);
        let seen = chunks.values().map(|p| p.updated_ns).chain(floor.map(|f| f.listed_ns)).max().unwrap_or(0);
        let stale = seen < stale_before;
        chunks.retain(|chunk, p| {
            if p.reserved != p.durable {
                return true;
            }
            if stale {
                return false;
            }
            let gone = floor.is_some_and(|f| chunk_before(chunk, &f.oldest)) && p.updated_ns < grace_before;
            if gone && !p.durable.complete {
                lost += 1;
            }
            !gone
        });
        !chunks.is_empty()
    });
    floors.retain(|stream, f| f.listed_ns >= stale_before || progress.contains_key(stream));
    lost
}

fn apply_lost(s: &mut State, l: &LostRecord) {
    let p = s.progress.entry(l.stream).or_default().entry(l.chunk.clone()).or_insert_with(|| Progress {
        source: l.source.clone(),
        reserved: ChunkProgress::default(),
        durable: ChunkProgress::default(),
        lost: false,
        updated_ns: l.received_ns,
    });
    if !p.lost {
        s.stats.chunks_lost += 1;
    }
    p.lost = true;
    p.durable.complete = true;
    p.reserved.complete = true;
    p.updated_ns = p.updated_ns.max(l.received_ns);
}

/// Delete files under segments/ that the manifest does not list (and temp files of the manifest).
fn sweep_leftovers(dir: &Path, manifest: &Manifest) -> Result<u64, StoreError> {
    let live: std::collections::HashSet<String> =
        manifest.segments.iter().flat_map(|m| [m.path.clone(), terms_path(&m.path)]).collect();
    let mut deleted = 0;
    let mut stack = vec![dir.join(segment::SEGMENTS_DIR)];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(io_err(&d))? {
            let entry = entry.map_err(io_err(&d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io_err(&path))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(dir).expect("walked below dir");
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            if !live.contains(rel.join("/").as_str()) {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
                deleted += 1;
            }
        }
    }
    let tmp = dir.join("manifest.json.tmp");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(io_err(&tmp))?;
    }
    Ok(deleted)
}

fn poison_on(inner: &Inner, point: FailPoint) -> Result<(), StoreError> {
    if inner.cfg.abort_at == Some(point) {
        std::process::abort();
    }
    if inner.cfg.fail_at == Some(point) {
        lock(&inner.state).poisoned = Some(format!("injected failure at {point:?}"));
        return Err(StoreError::Injected(point));
    }
    Ok(())
}

fn check_poisoned(inner: &Inner) -> Result<(), StoreError> {
    match &lock(&inner.state).poisoned {
        Some(p) => Err(StoreError::Poisoned(p.clone())),
        None => Ok(()),
    }
}

fn key_entries(r: &Registry) -> Vec<KeyEntry> {
    r.keys().iter().map(|(n, t)| KeyEntry { name: n.to_string(), key_type: *t }).collect()
}

/// Write `next` as the manifest and make it current.
/// Write `next` as the manifest. If it was put in place but not made durable, the store stops
/// (as after a failed WAL write): carrying on from the old manifest in memory would reuse
/// segment names the new one on disk lists, and a restart reads from disk anyway.
fn store_manifest(inner: &Inner, next: &Manifest) -> Result<u64, StoreError> {
    next.store(&inner.cfg.data_dir).map_err(|e| {
        if matches!(e, ManifestError::Unsynced { .. }) {
            let mut s = lock(&inner.state);
            if s.poisoned.is_none() {
                s.poisoned = Some(e.to_string());
            }
            drop(s);
            inner.buffer_space.notify_waiters();
        }
        StoreError::from(e)
    })
}

fn install_manifest(inner: &Inner, next: Manifest) -> Result<(), StoreError> {
    let bytes = store_manifest(inner, &next)?;
    let mut s = lock(&inner.state);
    s.manifest = next;
    s.manifest_bytes = bytes;
    Ok(())
}

fn flush(inner: &Inner) -> Result<usize, StoreError> {
    let _m = lock(&inner.maint);
    let (batches, schema, mut next, delete_below) = {
        let mut guard = lock(&inner.state);
        let s = &mut *guard;
        if let Some(p) = &s.poisoned {
            return Err(StoreError::Poisoned(p.clone()));
        }
        // Every WAL file before the first record not yet applied is covered by this flush.
        let delete_below = match s.pending.front() {
            Some(p) => p.file_index,
            None => {
                s.wal.rotate()?;
                s.wal.index()
            }
        };
        let batches = s.buffer.take(&s.registry);
        s.flushing = batches.clone();
        s.flushing_bytes = batches.iter().map(|b| b.get_array_memory_size()).sum();
        s.stats.chunks_lost += forget_progress(&mut s.progress, &mut s.floors, now_ns(), progress_window(&inner.cfg));
        let mut next = s.manifest.clone();
        next.generation += 1;
        next.flushed_seq = s.applied_seq;
        next.next_seq = s.next_seq;
        next.keys = key_entries(&s.registry);
        next.chunks_lost_total = s.stats.chunks_lost;
        next.floors = s
            .floors
            .iter()
            .map(|(stream, f)| FloorRecord {
                stream: format!("{stream:032x}"),
                oldest: f.oldest.to_string(),
                listed_ns: f.listed_ns,
            })
            .collect();
        next.progress = s
            .progress
            .iter()
            .flat_map(|(stream, chunks)| {
                chunks.iter().map(move |(chunk, p)| ProgressRecord {
                    stream: format!("{stream:032x}"),
                    chunk: chunk.to_string(),
                    source: p.source.to_string(),
                    offset: p.durable.offset,
                    complete: p.durable.complete,
                    lost: p.lost,
                    updated_ns: p.updated_ns,
                })
            })
            .collect();
        (batches, s.registry.schema(), next, delete_below)
    };
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let result = (|| -> Result<(), StoreError> {
        let metas = segment::write_segments(
            inner.objects.as_ref(),
            Some(&inner.cfg.data_dir),
            &batches,
            &schema,
            &mut next.segment_counter,
            inner.cfg.flush_zstd_level,
        )?;
        next.segments.extend(metas);
        poison_on(inner, FailPoint::FlushAfterSegments)?;
        let bytes = store_manifest(inner, &next)?;
        poison_on(inner, FailPoint::FlushAfterManifest)?;
        let mut s = lock(&inner.state);
        s.manifest = next;
        s.manifest_bytes = bytes;
        s.flushing.clear();
        s.flushing_bytes = 0;
        s.stats.flushes += 1;
        s.wal.delete_below(delete_below)?;
        Ok(())
    })();
    if let Err(e) = result {
        let mut s = lock(&inner.state);
        if s.poisoned.is_none() {
            // A real I/O failure: keep the rows buffered and try again later.
            let batches = std::mem::take(&mut s.flushing);
            s.flushing_bytes = 0;
            s.buffer.put_back(batches);
        }
        return Err(e);
    }
    inner.buffer_space.notify_waiters();
    Ok(rows)
}

/// Segments of one partition to merge: the oldest small ones, if there are enough.
fn compaction_groups(
    m: &Manifest,
    cfg: &StoreConfig,
    skip: &std::collections::HashSet<String>,
) -> Vec<Vec<SegmentMeta>> {
    let mut by_hour: std::collections::BTreeMap<u64, Vec<&SegmentMeta>> = std::collections::BTreeMap::new();
    for seg in &m.segments {
        if seg.bytes < cfg.compact_segment_bytes_small && !skip.contains(&seg.path) {
            by_hour.entry(seg.partition_hour).or_default().push(seg);
        }
    }
    let mut groups = Vec::new();
    for (_, mut segs) in by_hour {
        if segs.len() < cfg.compact_inputs_min.max(2) {
            continue;
        }
        segs.sort_by_key(|s| s.seq_min);
        // Retention deletes a segment by the newest receive time in it: merging rows received
        // far apart (a stuck clock's events trickling into one hour) would keep the old ones
        // long past the retention age. A group spans at most an eighth of it.
        let span_max = nanos(cfg.retention_age_max) / 8;
        let mut group = Vec::new();
        let mut rows = 0u64;
        let mut data = 0u64;
        let (mut received_min, mut received_max) = (u64::MAX, 0u64);
        for seg in segs {
            let (lo, hi) = (received_min.min(seg.received_ns_min), received_max.max(seg.received_ns_max));
            if !group.is_empty() && hi - lo > span_max && group.len() < 2 {
                // A lone older segment: the group starts again from this one.
                group.clear();
                rows = 0;
                data = 0;
                (received_min, received_max) = (seg.received_ns_min, seg.received_ns_max);
            } else if !group.is_empty()
                && (rows + seg.rows > cfg.compact_rows_max
                    || hi - lo > span_max
                    || data + seg.data_bytes > COMPACT_DATA_BYTES_MAX)
            {
                break;
            } else {
                (received_min, received_max) = (lo, hi);
            }
            rows += seg.rows;
            data += seg.data_bytes;
            group.push(seg.clone());
        }
        if group.len() >= 2 {
            groups.push(group);
        }
    }
    groups
}

fn compact(inner: &Inner) -> Result<usize, StoreError> {
    let _m = lock(&inner.maint);
    check_poisoned(inner)?;
    let (manifest, full) = {
        let s = lock(&inner.state);
        (s.manifest.clone(), s.registry.schema())
    };
    let groups = compaction_groups(&manifest, &inner.cfg, &lock(&inner.compact_skip));
    if groups.is_empty() {
        return Ok(0);
    }
    let mut next = manifest.clone();
    let mut doomed = Vec::new();
    let mut merged = 0;
    let mut failed = None;
    for group in &groups {
        let meta = match segment::merge_segments(
            inner.objects.as_ref(),
            Some(&inner.cfg.data_dir),
            group,
            &full,
            &mut next.segment_counter,
            inner.cfg.compact_zstd_level,
        ) {
            Ok(meta) => meta,
            // A full disk fails every group alike: stop here and try again at the next tick.
            Err(e @ segment::SegmentError::Io { .. }) => {
                failed = Some(e);
                break;
            }
            // A damaged or missing input: its segments stay as they are (still read by queries,
            // or reported by them), the other groups go on.
            Err(e) => {
                lock(&inner.compact_skip).extend(group.iter().map(|g| g.path.clone()));
                eprintln!("sluice store: compaction left these segments as they are: {e}");
                failed = Some(e);
                continue;
            }
        };
        let paths: std::collections::HashSet<&str> = group.iter().map(|g| g.path.as_str()).collect();
        next.segments.retain(|s| !paths.contains(s.path.as_str()));
        next.segments.push(meta);
        doomed.extend(group.iter().map(|g| g.path.clone()));
        merged += 1;
    }
    if merged > 0 {
        poison_on(inner, FailPoint::CompactAfterOutput)?;
        next.generation += 1;
        next.compactions_total += merged as u64;
        install_manifest(inner, next)?;
        lock(&inner.state).stats.compactions += merged as u64;
        poison_on(inner, FailPoint::CompactAfterManifest)?;
        for path in doomed {
            segment::delete(inner.objects.as_ref(), &path)?;
            inner.terms.forget(&path);
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(merged),
    }
}

fn retention(inner: &Inner, now_ns: u64) -> Result<usize, StoreError> {
    let _m = lock(&inner.maint);
    check_poisoned(inner)?;
    let manifest = lock(&inner.state).manifest.clone();
    let cutoff = now_ns.saturating_sub(nanos(inner.cfg.retention_age_max));
    let mut live: Vec<SegmentMeta> = Vec::new();
    let mut doomed: Vec<SegmentMeta> = Vec::new();
    for seg in manifest.segments.iter().cloned() {
        if seg.received_ns_max < cutoff {
            doomed.push(seg);
        } else {
            live.push(seg);
        }
    }
    // Oldest first by receive time, then by seq.
    live.sort_by_key(|s| (s.received_ns_max, s.seq_min));
    let mut total: u64 = live.iter().map(SegmentMeta::disk_bytes).sum();
    let mut keep_from = 0;
    while total > inner.cfg.retention_bytes_max && keep_from < live.len() {
        total -= live[keep_from].disk_bytes();
        keep_from += 1;
    }
    doomed.extend(live.drain(..keep_from));
    if doomed.is_empty() {
        return Ok(0);
    }
    let paths: std::collections::HashSet<&str> = doomed.iter().map(|s| s.path.as_str()).collect();
    let mut next = manifest.clone();
    next.generation += 1;
    next.segments.retain(|s| !paths.contains(s.path.as_str()));
    install_manifest(inner, next)?;
    lock(&inner.state).stats.retention_segments_deleted += doomed.len() as u64;
    poison_on(inner, FailPoint::RetentionAfterManifest)?;
    for seg in &doomed {
        segment::delete(inner.objects.as_ref(), &seg.path)?;
        inner.terms.forget(&seg.path);
    }
    Ok(doomed.len())
}

fn maintenance_loop(inner: &Inner) {
    // The first pass applies retention at once: a store started after a long stop may hold
    // segments that expired meanwhile.
    let mut last_retention: Option<Instant> = None;
    loop {
        {
            let stop = lock(&inner.wake.0);
            if *stop {
                return;
            }
            let (stop, _) = inner.wake.1.wait_timeout(stop, MAINTENANCE_TICK).unwrap_or_else(|e| e.into_inner());
            if *stop {
                return;
            }
        }
        let (rows, size_due, first_at, poisoned) = {
            let s = lock(&inner.state);
            (s.buffer.rows(), flush_due(&s.buffer, &inner.cfg), s.buffer.first_row_at(), s.poisoned.is_some())
        };
        if poisoned {
            // Commits waiting for buffer space must see the failure rather than wait forever.
            inner.buffer_space.notify_waiters();
            return;
        }
        let flush_due = size_due || (rows > 0 && first_at.is_some_and(|t| t.elapsed() >= inner.cfg.flush_age_max));
        // Retention first and whatever else fails: it is what frees the disk that a failing flush
        // (a full disk) needs.
        let mut result = Ok(());
        if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_INTERVAL) {
            last_retention = Some(Instant::now());
            result = retention(inner, now_ns()).map(|_| ());
        }
        if flush_due {
            let flushed = flush(inner).map(|_| ());
            result = result.and(flushed);
        }
        if result.is_ok() {
            result = compact(inner).map(|_| ());
        }
        let mut s = lock(&inner.state);
        match result {
            Err(e) => {
                s.stats.maintenance_errors += 1;
                s.stats.maintenance_error = Some(e.to_string());
            }
            // The failure is over (the disk has room again, say): health reflects the last pass.
            Ok(()) => s.stats.maintenance_error = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_splits_and_keeps_a_last_line_without_newline() {
        let got: Vec<(usize, &[u8], usize)> = lines(b"a\n\nbc\nd").collect();
        assert_eq!(got, [(0, &b"a"[..], 2), (2, &b""[..], 1), (3, &b"bc"[..], 3), (6, &b"d"[..], 1)]);
    }

    #[test]
    fn a_compaction_group_is_bounded_by_its_data_as_well_as_its_rows() {
        let seg = |n: u64, data_mb: u64| SegmentMeta {
            path: format!("seg-{n}"),
            partition_hour: 7,
            rows: 100,
            bytes: 1 << 20,
            terms_bytes: 0,
            data_bytes: data_mb << 20,
            time_ns_min: 0,
            time_ns_max: 0,
            seq_min: n * 100,
            seq_max: n * 100 + 99,
            received_ns_min: 5,
            received_ns_max: 5,
        };
        let m = Manifest { segments: vec![seg(1, 700), seg(2, 200), seg(3, 200), seg(4, 10)], ..Manifest::default() };
        let mut cfg = StoreConfig::new("unused");
        cfg.compact_inputs_min = 2;
        let groups = compaction_groups(&m, &cfg, &std::collections::HashSet::new());
        let paths: Vec<Vec<&str>> = groups.iter().map(|g| g.iter().map(|s| s.path.as_str()).collect()).collect();
        assert_eq!(paths, [["seg-1", "seg-2"]], "900 MiB of data, not 1.1 GiB");
    }

    #[test]
    fn a_dropped_store_keeps_nothing_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreConfig::new(dir.path())).unwrap();
        drop(store);
        Store::open(StoreConfig::new(dir.path())).unwrap();
    }
}
