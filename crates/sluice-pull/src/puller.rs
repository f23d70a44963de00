//! The puller of one source: follows the supervisor's latest chunk live and backfills the older
//! ones, newest first, on the bounded pool shared by all sources; commits whole lines to the
//! [`Sink`] and resumes from what the sink says is committed.
//! It does not store progress or de-duplicate (the sink does, keyed by stream id and chunk id),
//! and it never lets one source's failures reach another: each source runs in its own task, and
//! the only thing sources share is the backfill semaphore, whose permits are held only while
//! bytes flow, and flow at [`BACKFILL_RATE_MIN`] at least (a stalled response is abandoned after
//! [`crate::client::STALL_TIMEOUT`]; a trickling one goes on without a permit).
//!
//! # Protocol (issue 3, SPEC §2)
//! - `GET /chunk/` lists chunk ids, oldest first. Every id is checked with `ChunkId::parse`; one bad
//!   token makes the whole listing an error (the server is not a supervisor, or is broken).
//! - `GET /chunk/ID?offset=N` (no query when N is 0) fetches from the sink's committed offset.
//!   `Sluice-Stream-Id` names the stream the offset belongs to: if it is not the stream the offset
//!   was taken from, the response is dropped and the request made again with that stream's
//!   progress, so a wiped supervisor is read from scratch and nothing is skipped.
//! - A response that ends properly with `Sluice-Chunk-State: closed` completes the chunk: its last
//!   batch has `chunk_complete`. One that ended while `open` (the chunk closed during it) is
//!   re-requested from where it stopped; that answer says `closed` and completes it. When nothing
//!   is left to send with the completion, the batch is empty (zero lines at the committed offset).
//! - `404` for a chunk not complete: [`Sink::chunk_lost`] once, counted, never retried. So is a
//!   chunk that disappears from the listing before it was read completely.
//! - `416` (the supervisor lost unsynced bytes we had already read, after a power loss): a closed
//!   chunk is completed where it is (an empty completing batch); the live chunk is re-listed.
//!
//! # Batches
//! Only complete lines (ending in `\n`) are committed; a partial tail waits for the rest. Lines of
//! the open chunk are committed as soon as the response has no more bytes ready, or at
//! [`BATCH_BYTES_MAX`], so a trickle of events is committed one by one. A closed chunk's lines are
//! committed when its body ends, or at [`BATCH_BYTES_MAX`]: a backlog goes in batches of about a
//! chunk, not one per network read (about 65 KB): 6% less store CPU in `bench/ingest.py`, 10% on
//! a backlog of 10M events (BENCHMARKS.md, ingest "M"). What was read and not yet committed when
//! a fetch fails is committed first (whole lines only); at a shutdown it is not, and is fetched
//! again from the durable offset.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use sluice_chunk::{ChunkId, StreamId};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{unless_shutdown, ErrorKind, FetchError, Response, SourceClient};
use crate::config::SourceConfig;
use crate::metrics::{now_ns, PullMetrics, SourceMetrics, SourceState};
use crate::{Batch, ChunkProgress, CommitOutcome, Sink};

/// Largest batch handed to the sink (one line longer than this goes alone).
pub const BATCH_BYTES_MAX: usize = 1_000_000;
/// A partial line longer than this is not an event line (chunks are under 1 MB): the response is
/// abandoned as garbage rather than buffered without bound.
pub const LINE_BYTES_MAX: usize = 8 << 20;
/// Largest listing accepted (hundreds of thousands of ids).
pub const LISTING_BYTES_MAX: usize = 4 << 20;
/// First reconnect delay; doubled per consecutive failure up to [`BACKOFF_MAX`], with full jitter.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often to list again when the supervisor has no chunk to follow (none yet, or the last one
/// closed by a shutdown and no newer one opened).
pub const IDLE_LIST_INTERVAL: Duration = Duration::from_secs(1);
/// An open-chunk response that ends properly with nothing in it this many times in a row is a
/// misbehaving server, not a rotation: back off instead of asking again at once.
const EMPTY_OPEN_ENDS_MAX: u32 = 2;
/// How long the live chunk's next bytes may take before history starts without them (see
/// [`at_hand_or_publish`]).
pub const LIVE_AT_HAND_WAIT: Duration = Duration::from_millis(500);
/// A backfill fetch that waits on the network longer than this gives its pool permit back.
pub const BACKFILL_PERMIT_IDLE: Duration = Duration::from_secs(1);
/// The stream id of a source may change this many times within [`STREAM_CHANGES_WINDOW`] (a
/// supervisor wiped or replaced); one more is a failure, backed off like any other.
pub const STREAM_CHANGES_MAX: usize = 3;
/// The window [`STREAM_CHANGES_MAX`] counts in.
pub const STREAM_CHANGES_WINDOW: Duration = Duration::from_secs(60);
/// A backfill fetch that has held its permit this long at less than [`BACKFILL_RATE_MIN`] gives
/// it back and reads the rest of its chunk without one: a server that trickles bytes (never
/// silent for [`BACKFILL_PERMIT_IDLE`]) would otherwise keep workers from every other source for
/// hours.
pub const BACKFILL_RATE_WINDOW: Duration = Duration::from_secs(2);
/// Bytes per second below which a backfill fetch is slow (a 1 MB chunk in 16 s): far below any
/// network a supervisor is read over, so only a broken or overloaded server is ever this slow.
pub const BACKFILL_RATE_MIN: u64 = 64 * 1024;

const STREAM_HEADER: &str = "sluice-stream-id";
const STATE_HEADER: &str = "sluice-chunk-state";
const OFFSET_HEADER: &str = "sluice-offset";

/// The HTTPS clients of `sources`, in order: fails if a source's certificate, key or trust file is
/// unusable (a program checks this before it says it is ready, see [`run_clients`]).
pub fn clients(sources: &[SourceConfig]) -> Result<Vec<SourceClient>, crate::client::ClientError> {
    sources.iter().map(SourceClient::new).collect()
}

/// Runs every source, each in its own task, until `shutdown` turns true; the backfill pool has
/// `backfill_workers` permits shared by all. Fails before starting anything if a source's
/// certificate, key or trust file is unusable.
pub async fn run_all<S: Sink>(
    sources: Vec<SourceConfig>,
    sink: Arc<S>,
    backfill_workers: usize,
    metrics: Arc<PullMetrics>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), crate::client::ClientError> {
    let clients = clients(&sources)?;
    run_clients(sources.into_iter().zip(clients).collect(), sink, backfill_workers, metrics, shutdown).await;
    Ok(())
}

/// [`run_all`] with the clients made already (by [`clients`]).
pub async fn run_clients<S: Sink>(
    sources: Vec<(SourceConfig, SourceClient)>,
    sink: Arc<S>,
    backfill_workers: usize,
    metrics: Arc<PullMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let backfill = Arc::new(Semaphore::new(backfill_workers.max(1)));
    let mut tasks = JoinSet::new();
    for (src, client) in sources {
        tasks.spawn(run_source(
            src,
            client,
            Arc::clone(&sink),
            Arc::clone(&backfill),
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

/// Pulls one source until `shutdown` turns true: the live chunk in this task, older chunks in
/// fetches that each hold a permit of `backfill`.
pub async fn run_source<S: Sink>(
    src: SourceConfig,
    client: SourceClient,
    sink: Arc<S>,
    backfill: Arc<Semaphore>,
    metrics: Arc<PullMetrics>,
    shutdown: watch::Receiver<bool>,
) {
    let (listing_tx, listing_rx) = watch::channel(None);
    let shared = Arc::new(Shared {
        name: Arc::clone(&src.name),
        metrics: metrics.source(&src.name, &src.url),
        client,
        sink,
        listing_tx,
        lost: Mutex::new(HashSet::new()),
        lengths: Mutex::new(HashMap::new()),
        backfilling: Mutex::new(BTreeMap::new()),
        idle_fetches: Arc::default(),
        stream_changes: Mutex::default(),
        backlog_at: Mutex::default(),
    });
    let live = live_loop(Arc::clone(&shared), shutdown.clone());
    let history = backfill_loop(Arc::clone(&shared), backfill, listing_rx, shutdown);
    tokio::join!(live, history);
}

/// What the live task last listed, for the backfill task.
#[derive(Debug, Clone)]
struct Listing {
    stream: u128,
    /// Oldest first; the last one is followed live.
    ids: Arc<Vec<ChunkId>>,
}

/// State of one source shared by its live task and its backfill fetches.
struct Shared<S> {
    name: Arc<str>,
    metrics: Arc<SourceMetrics>,
    client: SourceClient,
    sink: Arc<S>,
    listing_tx: watch::Sender<Option<Listing>>,
    /// Chunks reported lost, so each is reported once; pruned to the listing.
    lost: Mutex<HashSet<(u128, ChunkId)>>,
    /// Lengths of closed chunks learnt from responses, for the backlog bytes; pruned to the listing.
    lengths: Mutex<HashMap<(u128, ChunkId), u64>>,
    /// Chunks being backfilled now and their offsets, for the status.
    backfilling: Mutex<BTreeMap<ChunkId, u64>>,
    idle_fetches: Arc<IdleFetches>,
    /// When the stream id last changed, most recent last (at most [`STREAM_CHANGES_MAX`]).
    stream_changes: Mutex<VecDeque<Instant>>,
    /// When the backlog gauges were last computed after a backfill fetch, and whether a fetch
    /// ended since without computing them ([`Shared::account_backlog_soon`]).
    backlog_at: Mutex<(Option<Instant>, bool)>,
}

/// Backfill fetches that end within this of the last backlog count do not count again: a count
/// looks at every listed chunk, and once per fetch made a long listing cost its square.
const BACKLOG_ACCOUNT_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain collections: a panic elsewhere cannot leave them half-updated in a way that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether a fetch follows the newest chunk or reads history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Backfill,
}

/// How a fetch of one chunk ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FollowEnd {
    /// Every line is committed and the sink knows the chunk is complete.
    Complete,
    /// `404`: reported lost (or already complete).
    Gone,
    /// The supervisor answered for another stream than the one we were reading: list again.
    StreamChanged,
    /// Shutdown came first.
    Shutdown,
}

impl<S: Sink> Shared<S> {
    fn progress(&self, stream: u128, chunk: ChunkId) -> ChunkProgress {
        self.sink.progress(stream, &chunk.to_string()).unwrap_or_default()
    }

    fn fail(&self, e: &FetchError) {
        self.metrics.error(e.kind, &e.message);
    }

    /// `GET /chunk/`: the ids, oldest first, and the stream id if the listing names it.
    async fn list(&self) -> Result<(Vec<ChunkId>, Option<u128>), FetchError> {
        let mut response = self.client.get("/chunk/").await?;
        if response.status != StatusCode::OK {
            return Err(status_error("/chunk/", response.status));
        }
        let stream = stream_header(&response)?;
        let body = response.read_all(LISTING_BYTES_MAX, self.client.timeouts().stall).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| FetchError::new(ErrorKind::Protocol, "the chunk listing is not UTF-8 text"))?;
        let mut ids = Vec::new();
        for token in text.split_ascii_whitespace() {
            let id = ChunkId::parse(token).map_err(|e| {
                FetchError::new(
                    ErrorKind::Protocol,
                    format!("the chunk listing holds {:?}: {e}; is the URL a sluice supervisor?", truncate(token)),
                )
            })?;
            ids.push(id);
        }
        // Chronological already by contract; sorting costs nothing and guards the "last is live" rule.
        ids.sort_unstable();
        ids.dedup();
        Ok((ids, stream))
    }

    /// Chunks that were listed before, are listed no more, and were not read completely: gone
    /// before we got them (retention, or a wiped supervisor).
    fn report_vanished(&self, stream: u128, before: &[ChunkId], now: &[ChunkId]) {
        let now: HashSet<ChunkId> = now.iter().copied().collect();
        for &id in before.iter().filter(|id| !now.contains(id)) {
            let p = self.progress(stream, id);
            if !p.complete {
                self.report_lost(stream, id, p.offset);
            }
        }
    }

    fn report_lost(&self, stream: u128, chunk: ChunkId, offset: u64) {
        if lock(&self.lost).insert((stream, chunk)) {
            self.metrics.chunks_lost.fetch_add(1, Relaxed);
            self.sink.chunk_lost(&self.name, stream, &chunk.to_string(), offset);
        }
    }

    /// Forgets lost marks and lengths of chunks no longer listed, and sets the backlog gauges.
    fn account_listing(&self, stream: u128, ids: &[ChunkId]) {
        let listed: HashSet<ChunkId> = ids.iter().copied().collect();
        lock(&self.lost).retain(|(s, c)| *s == stream && listed.contains(c));
        lock(&self.lengths).retain(|(s, c), _| *s == stream && listed.contains(c));
        self.account_backlog(stream, ids);
    }

    /// [`Shared::account_backlog`] after a backfill fetch, at most once per
    /// [`BACKLOG_ACCOUNT_INTERVAL`]; a skipped count is made when the backfill goes idle
    /// ([`Shared::account_backlog_owed`]).
    fn account_backlog_soon(&self, stream: u128, ids: &[ChunkId]) {
        {
            let mut at = lock(&self.backlog_at);
            if at.0.is_some_and(|t| t.elapsed() < BACKLOG_ACCOUNT_INTERVAL) {
                at.1 = true;
                return;
            }
            *at = (Some(Instant::now()), false);
        }
        self.account_backlog(stream, ids);
    }

    /// The count [`Shared::account_backlog_soon`] skipped, if any.
    fn account_backlog_owed(&self, listing: Option<&Listing>) {
        let owed = std::mem::take(&mut lock(&self.backlog_at).1);
        if let (true, Some(l)) = (owed, listing) {
            self.account_backlog(l.stream, &l.ids);
        }
    }

    fn account_backlog(&self, stream: u128, ids: &[ChunkId]) {
        let lengths = lock(&self.lengths).clone();
        let lost = lock(&self.lost).clone();
        let (mut chunks, mut bytes) = (0u64, 0u64);
        for &id in ids {
            let p = self.progress(stream, id);
            if p.complete || lost.contains(&(stream, id)) {
                continue;
            }
            chunks += 1;
            if let Some(len) = lengths.get(&(stream, id)) {
                bytes += len.saturating_sub(p.offset);
            }
        }
        self.metrics.backlog_chunks.store(chunks, Relaxed);
        self.metrics.backlog_bytes.store(bytes, Relaxed);
    }

    fn publish(&self, stream: Option<u128>, ids: &mut Option<Arc<Vec<ChunkId>>>) {
        if let (Some(stream), Some(ids)) = (stream, ids.take()) {
            self.listing_tx.send_replace(Some(Listing { stream, ids }));
        }
    }

    /// Fetches `chunk` from the committed offset until it is complete, gone, the stream changes,
    /// or a failure. `stream` is the stream the caller believes in; it is updated from responses.
    /// `publish` is handed to the backfill task once the live data at hand is committed.
    async fn follow(
        &self,
        chunk: ChunkId,
        stream: &mut Option<u128>,
        cx: &mut FetchCx<'_>,
    ) -> Result<FollowEnd, FetchError> {
        let mode = cx.mode;
        let mut empty_open_ends = 0u32;
        loop {
            let progress = stream.map(|s| self.progress(s, chunk)).unwrap_or_default();
            if progress.complete {
                return Ok(FollowEnd::Complete);
            }
            let offset = progress.offset;
            let path = if offset == 0 { format!("/chunk/{chunk}") } else { format!("/chunk/{chunk}?offset={offset}") };
            let Some(response) = unless_shutdown(cx.shutdown, hold(&mut cx.slot, self.client.get(&path))).await else {
                return Ok(FollowEnd::Shutdown);
            };
            let mut response = response?;
            self.metrics.set_state(SourceState::Connected);
            let answered = stream_header(&response)?;
            if let (Some(new), Some(old)) = (answered, *stream) {
                if new != old {
                    *stream = Some(new);
                    self.note_stream(Some(old), new)?;
                    return Ok(FollowEnd::StreamChanged);
                }
            }
            match response.status {
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => {}
                StatusCode::NOT_FOUND => {
                    let s = stream.or(answered).ok_or_else(|| status_error(&path, response.status))?;
                    if !self.progress(s, chunk).complete {
                        self.report_lost(s, chunk, offset);
                    }
                    return Ok(FollowEnd::Gone);
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let closed = mode == Mode::Backfill || response.header(STATE_HEADER) == Some("closed");
                    let Some(s) = stream.or(answered).filter(|_| closed) else {
                        return Err(status_error(&path, response.status));
                    };
                    // Our offset is past what the supervisor has: it lost bytes we already hold.
                    // Nothing more will come from this chunk; mark it complete where we are.
                    drop(response);
                    eprintln!(
                        "sluice store: source {}: chunk {chunk} is shorter than the {offset} bytes already read \
                         (416): the supervisor lost unsynced bytes (a power loss?); the chunk ends there",
                        self.name
                    );
                    match self.commit(s, chunk, offset, Bytes::new(), true).await? {
                        CommitOutcome::Committed { .. } => return Ok(FollowEnd::Complete),
                        CommitOutcome::Resume { .. } => continue,
                    }
                }
                status => return Err(status_error(&path, status)),
            }
            let Some(s) = answered else {
                return Err(FetchError::new(
                    ErrorKind::Protocol,
                    format!(
                        "GET {path} answered without a valid Sluice-Stream-Id header; is the URL a sluice supervisor?"
                    ),
                ));
            };
            if *stream != Some(s) {
                // First contact: the offset was taken without knowing the stream.
                let before = stream.replace(s);
                self.note_stream(before, s)?;
                let p = self.progress(s, chunk);
                if p.complete || p.offset != offset {
                    continue;
                }
            }
            let closed = match response.header(STATE_HEADER) {
                Some("closed") => true,
                Some("open") => false,
                other => {
                    return Err(FetchError::new(
                        ErrorKind::Protocol,
                        format!("GET {path}: Sluice-Chunk-State is {other:?}, not \"open\" or \"closed\""),
                    ))
                }
            };
            if let Some(served) = response.header(OFFSET_HEADER) {
                if served.parse::<u64>().ok() != Some(offset) {
                    return Err(FetchError::new(
                        ErrorKind::Protocol,
                        format!("GET {path} answered Sluice-Offset {served:?}, not {offset}"),
                    ));
                }
            }
            if closed {
                if let Some(len) = content_length(&response) {
                    lock(&self.lengths).insert((s, chunk), offset.saturating_add(len));
                }
            }
            let read = self.read_body(&mut response, s, chunk, offset, closed, cx).await?;
            match read {
                BodyEnd::Shutdown => return Ok(FollowEnd::Shutdown),
                BodyEnd::Resume => {
                    self.metrics.reconnects.fetch_add(1, Relaxed);
                    continue;
                }
                BodyEnd::Ended { complete: true, .. } => return Ok(FollowEnd::Complete),
                BodyEnd::Ended { complete: false, received_bytes } => {
                    // The open chunk closed during the response (or the server ended it early):
                    // ask again from where we are; the answer says whether it is closed.
                    empty_open_ends = if received_bytes == 0 { empty_open_ends + 1 } else { 0 };
                    if empty_open_ends >= EMPTY_OPEN_ENDS_MAX {
                        return Err(FetchError::new(
                            ErrorKind::Protocol,
                            format!("GET {path}: the open chunk's response ended at once {empty_open_ends} times"),
                        ));
                    }
                }
            }
        }
    }

    /// The stream id is now `stream` (it was `before`). A change is told on stderr; one change
    /// too many within [`STREAM_CHANGES_WINDOW`] is a failure (the caller backs off): more than
    /// one supervisor answers at this URL, and reading them in turn would only go round.
    fn note_stream(&self, before: Option<u128>, stream: u128) -> Result<(), FetchError> {
        self.metrics.update(|st| st.stream = Some(StreamId(stream).to_string()));
        let Some(before) = before.filter(|&b| b != stream) else { return Ok(()) };
        let mut changes = lock(&self.stream_changes);
        let now = Instant::now();
        while changes.front().is_some_and(|&t| now.duration_since(t) >= STREAM_CHANGES_WINDOW) {
            changes.pop_front();
        }
        if changes.len() >= STREAM_CHANGES_MAX {
            return Err(FetchError::new(
                ErrorKind::Protocol,
                format!(
                    "the stream id changed {} times within {} s (now {}): does more than one supervisor answer \
                     at this URL? Give each supervisor its own source",
                    changes.len() + 1,
                    STREAM_CHANGES_WINDOW.as_secs(),
                    StreamId(stream)
                ),
            ));
        }
        changes.push_back(now);
        eprintln!(
            "sluice store: source {}: new stream id {} (was {}): the supervisor's data directory is new; \
             its chunks are read from the start",
            self.name,
            StreamId(stream),
            StreamId(before)
        );
        Ok(())
    }

    /// Reads the body, committing complete lines as they come.
    async fn read_body(
        &self,
        response: &mut Response,
        stream: u128,
        chunk: ChunkId,
        offset: u64,
        closed: bool,
        cx: &mut FetchCx<'_>,
    ) -> Result<BodyEnd, FetchError> {
        let mode = cx.mode;
        let idle = if closed { self.client.timeouts().stall } else { self.client.timeouts().live_idle };
        let counter = if mode == Mode::Live { &self.metrics.live_bytes } else { &self.metrics.backfill_bytes };
        // Room for a closed chunk's batch and the read that completes it, so that it is not grown
        // (copied, and fresh memory touched) by doubling; pages never written are never used.
        let mut pending = BytesMut::with_capacity(if closed { BATCH_BYTES_MAX + BATCH_BYTES_MAX / 2 } else { 0 });
        let mut next = offset;
        let mut received_bytes = 0u64;
        loop {
            let unpublished = cx.publish.is_some();
            let first =
                at_hand_or_publish(response.next_data(idle), unpublished, || self.publish(Some(stream), cx.publish));
            let Some(first) = unless_shutdown(cx.shutdown, hold(&mut cx.slot, first)).await else {
                return Ok(BodyEnd::Shutdown);
            };
            let mut ended = false;
            let mut failure = None;
            // Take whatever else is already here too, so a backlog goes in large batches and a
            // trickle is committed at once.
            let mut data = Some(first);
            while let Some(d) = data.take() {
                match d {
                    Ok(Some(bytes)) => {
                        if let Some(slot) = cx.slot.as_mut() {
                            slot.received(bytes.len());
                        }
                        counter.fetch_add(bytes.len() as u64, Relaxed);
                        received_bytes += bytes.len() as u64;
                        pending.extend_from_slice(&bytes);
                    }
                    Ok(None) => ended = true,
                    Err(e) => failure = Some(e),
                }
                if !ended && failure.is_none() && pending.len() < BATCH_BYTES_MAX {
                    data = response.ready_data();
                }
            }
            let complete = ended && closed;
            let take = if complete {
                Take::AllAndComplete
            } else if closed && !ended && failure.is_none() {
                // A closed chunk (history, about a chunk's size) is read to its end, or to
                // BATCH_BYTES_MAX, before committing: one commit for all of it rather than one per
                // network read (see "Batches" above).
                if pending.len() < BATCH_BYTES_MAX {
                    continue;
                }
                Take::FullBatches
            } else {
                Take::All
            };
            // Commit even before reporting a failure: what arrived whole is good.
            match self.commit_lines(&mut pending, &mut next, stream, chunk, take, mode).await? {
                CommitOutcome::Committed { .. } => {}
                CommitOutcome::Resume { .. } => return Ok(BodyEnd::Resume),
            }
            if mode == Mode::Live {
                self.publish(Some(stream), cx.publish);
            }
            if let Some(e) = failure {
                return Err(e);
            }
            if ended {
                return Ok(BodyEnd::Ended { complete, received_bytes });
            }
            if pending.len() > LINE_BYTES_MAX {
                return Err(FetchError::new(
                    ErrorKind::Protocol,
                    format!(
                        "chunk {chunk} has a line longer than {LINE_BYTES_MAX} bytes at offset {next}; \
                         is the URL a sluice supervisor?"
                    ),
                ));
            }
        }
    }

    /// Commits the complete lines at the front of `pending` (which starts at `*next`) in batches
    /// of at most [`BATCH_BYTES_MAX`], as many as `take` says. Stops at the first `Resume`.
    async fn commit_lines(
        &self,
        pending: &mut BytesMut,
        next: &mut u64,
        stream: u128,
        chunk: ChunkId,
        take: Take,
        mode: Mode,
    ) -> Result<CommitOutcome, FetchError> {
        let complete = take == Take::AllAndComplete;
        let mut outcome = CommitOutcome::Committed { offset: *next };
        let mut committed_any = false;
        while let Some(cut) = batch_cut(pending) {
            let lines = pending.split_to(cut).freeze();
            let last = batch_cut(pending).is_none();
            let batch_complete = complete && last && pending.is_empty();
            let start = *next;
            if let Some(t) = lines.strip_suffix(b"\n").and_then(last_line_time_ns) {
                self.metrics.newest_event_ns.fetch_max(t, Relaxed);
            }
            *next += lines.len() as u64;
            outcome = self.commit(stream, chunk, start, lines, batch_complete).await?;
            committed_any = true;
            if matches!(outcome, CommitOutcome::Resume { .. }) {
                return Ok(outcome);
            }
            self.note_offset(chunk, *next, mode);
            if take == Take::FullBatches && pending.len() < BATCH_BYTES_MAX {
                break;
            }
        }
        if complete && !pending.is_empty() {
            // A closed chunk always ends in a newline; these bytes can never become a line.
            self.fail(&FetchError::new(
                ErrorKind::Protocol,
                format!(
                    "closed chunk {chunk} ends in {} bytes without a newline at offset {next}; they are not committed",
                    pending.len()
                ),
            ));
        }
        if complete && (!committed_any || !pending.is_empty()) {
            outcome = self.commit(stream, chunk, *next, Bytes::new(), true).await?;
        }
        if complete {
            lock(&self.lengths).insert((stream, chunk), *next);
        }
        Ok(outcome)
    }

    async fn commit(
        &self,
        stream: u128,
        chunk: ChunkId,
        start_offset: u64,
        lines: Bytes,
        chunk_complete: bool,
    ) -> Result<CommitOutcome, FetchError> {
        let batch = Batch {
            source: Arc::clone(&self.name),
            stream,
            chunk: Arc::from(chunk.to_string()),
            start_offset,
            lines,
            received_ns: now_ns(),
            chunk_complete,
        };
        let outcome = self.sink.commit(batch).await.map_err(|e| {
            FetchError::new(ErrorKind::Sink, format!("the store refused a batch of chunk {chunk}: {e}"))
        })?;
        self.metrics.batches_committed.fetch_add(1, Relaxed);
        Ok(outcome)
    }

    fn note_offset(&self, chunk: ChunkId, offset: u64, mode: Mode) {
        match mode {
            Mode::Live => self.metrics.update(|st| {
                st.live_chunk = Some(chunk.to_string());
                st.live_offset = offset;
            }),
            Mode::Backfill => {
                let list: Vec<(String, u64)> = {
                    let mut b = lock(&self.backfilling);
                    b.insert(chunk, offset);
                    b.iter().rev().map(|(c, o)| (c.to_string(), *o)).collect()
                };
                self.metrics.update(|st| st.backfilling = list);
            }
        }
    }

    fn backfill_done(&self, chunk: ChunkId) {
        let list: Vec<(String, u64)> = {
            let mut b = lock(&self.backfilling);
            b.remove(&chunk);
            b.iter().rev().map(|(c, o)| (c.to_string(), *o)).collect()
        };
        self.metrics.update(|st| st.backfilling = list);
    }
}

/// What one fetch carries along: its mode, the listing to hand to the backfill task once live data
/// is committed (live only), shutdown, and the backfill permit (backfill only).
struct FetchCx<'a> {
    mode: Mode,
    publish: &'a mut Option<Arc<Vec<ChunkId>>>,
    shutdown: &'a mut watch::Receiver<bool>,
    slot: Option<PermitSlot>,
}

/// A backfill fetch's place in the shared pool. The permit is given back while the network keeps
/// the fetch waiting longer than [`BACKFILL_PERMIT_IDLE`] and taken again (in turn) once bytes
/// come, so a stalled supervisor holds a worker for a moment, not for the stall timeout. A fetch
/// slower than [`BACKFILL_RATE_MIN`] gives it back for good (it goes on without one), so a server
/// that trickles bytes does not hold one either.
struct PermitSlot {
    pool: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    /// Counted in `idle` (gave the permit back and did not get it again yet).
    released: bool,
    /// Too slow to hold a permit: not taken again for this chunk.
    slow: bool,
    /// Since when the permit is held, and the bytes received since.
    held_since: Instant,
    held_bytes: u64,
    /// The source's count of fetches waiting without a permit (and its wake-up).
    idle: Arc<IdleFetches>,
}

/// Backfill fetches of one source that gave their permit back; while there is one, the source
/// starts no other fetch (a stalled server gets one stuck fetch, not one per chunk).
#[derive(Debug, Default)]
struct IdleFetches {
    count: std::sync::atomic::AtomicUsize,
    changed: Notify,
}

impl PermitSlot {
    fn new(pool: Arc<Semaphore>, permit: OwnedSemaphorePermit, idle: Arc<IdleFetches>) -> PermitSlot {
        PermitSlot {
            pool,
            permit: Some(permit),
            released: false,
            slow: false,
            held_since: Instant::now(),
            held_bytes: 0,
            idle,
        }
    }

    /// `bytes` arrived: give the permit back for good if the fetch has been slow while holding it.
    fn received(&mut self, bytes: usize) {
        if self.released {
            return;
        }
        self.held_bytes += bytes as u64;
        let held = self.held_since.elapsed();
        if held >= BACKFILL_RATE_WINDOW && (self.held_bytes as f64) < BACKFILL_RATE_MIN as f64 * held.as_secs_f64() {
            self.slow = true;
            self.release();
        }
    }

    fn release(&mut self) {
        if !self.released {
            self.permit = None;
            self.released = true;
            self.idle.count.fetch_add(1, Relaxed);
        }
    }

    async fn reacquire(&mut self) {
        if self.released && !self.slow {
            // A closed pool means the store is stopping; go on without a permit until shutdown.
            self.permit = Arc::clone(&self.pool).acquire_owned().await.ok();
            self.back();
            (self.held_since, self.held_bytes) = (Instant::now(), 0);
        }
    }

    fn back(&mut self) {
        if std::mem::take(&mut self.released) {
            self.idle.count.fetch_sub(1, Relaxed);
            self.idle.changed.notify_waiters();
        }
    }
}

impl Drop for PermitSlot {
    fn drop(&mut self) {
        self.back();
    }
}

/// Awaits `fut`, giving the backfill permit (if any) back while it waits long.
async fn hold<F: std::future::Future>(slot: &mut Option<PermitSlot>, fut: F) -> F::Output {
    let Some(slot) = slot else { return fut.await };
    tokio::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return out,
        _ = tokio::time::sleep(BACKFILL_PERMIT_IDLE) => {}
    }
    slot.release();
    let out = fut.await;
    slot.reacquire().await;
    out
}

/// Awaits `fut` (the next bytes of the live chunk); if they are not at hand within
/// [`LIVE_AT_HAND_WAIT`] and the listing is `unpublished`, calls `publish` first, so that history
/// (which starts once the live data at hand is committed) does not wait for an idle live chunk's
/// next event, which may be [`crate::client::LIVE_IDLE_TIMEOUT`] away.
async fn at_hand_or_publish<F: std::future::Future>(fut: F, unpublished: bool, publish: impl FnOnce()) -> F::Output {
    if !unpublished {
        return fut.await;
    }
    tokio::pin!(fut);
    tokio::select! {
        biased;
        out = &mut fut => return out,
        _ = tokio::time::sleep(LIVE_AT_HAND_WAIT) => {}
    }
    publish();
    fut.await
}

/// Which of the complete lines read so far [`Shared::commit_lines`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Take {
    /// All of them.
    All,
    /// Only batches of [`BATCH_BYTES_MAX`]: more of a closed chunk is coming, and the rest waits
    /// for it.
    FullBatches,
    /// All of them, and the last batch (empty if need be) ends the chunk.
    AllAndComplete,
}

/// How reading one response ended, when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    /// The body ended properly; `complete` if the chunk was closed and is now complete.
    Ended {
        complete: bool,
        received_bytes: u64,
    },
    /// The sink wants another offset: request again.
    Resume,
    Shutdown,
}

/// Where the next batch ends in `pending`: after the last newline within [`BATCH_BYTES_MAX`], or
/// after the first newline if a single line is longer; `None` without a complete line.
fn batch_cut(pending: &[u8]) -> Option<usize> {
    let window = &pending[..pending.len().min(BATCH_BYTES_MAX)];
    if let Some(i) = window.iter().rposition(|&b| b == b'\n') {
        return Some(i + 1);
    }
    pending[window.len()..].iter().position(|&b| b == b'\n').map(|i| window.len() + i + 1)
}

/// `time_ns` of the last line in `lines` (without its final newline), found cheaply: the first
/// `"time_ns"` key followed by `:` and digits. `None` if there is none.
fn last_line_time_ns(lines: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"time_ns\"";
    let line = match lines.iter().rposition(|&b| b == b'\n') {
        Some(i) => &lines[i + 1..],
        None => lines,
    };
    let at = line.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = line[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

/// The `Sluice-Stream-Id` of a response: `None` if absent, an error if present and malformed.
fn stream_header(response: &Response) -> Result<Option<u128>, FetchError> {
    match response.headers.get(STREAM_HEADER) {
        None => Ok(None),
        Some(v) => v.to_str().ok().and_then(StreamId::parse).map(|s| Some(s.0)).ok_or_else(|| {
            FetchError::new(ErrorKind::Protocol, format!("Sluice-Stream-Id {v:?} is not 32 hex digits"))
        }),
    }
}

fn content_length(response: &Response) -> Option<u64> {
    if response.headers.contains_key(http::header::CONTENT_ENCODING) {
        return None;
    }
    response.header("content-length")?.parse().ok()
}

fn status_error(path: &str, status: StatusCode) -> FetchError {
    FetchError::new(ErrorKind::Status, format!("GET {path} answered {status}"))
}

fn truncate(s: &str) -> &str {
    const SHOWN_CHARS_MAX: usize = 40;
    match s.char_indices().nth(SHOWN_CHARS_MAX) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Capped exponential backoff with full jitter, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`].
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_MIN.saturating_mul(1u32 << self.failures.min(16)).min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let span_ms = (ceiling - BACKOFF_MIN).as_millis() as u64;
        BACKOFF_MIN + Duration::from_millis(if span_ms == 0 { 0 } else { random_u64() % (span_ms + 1) })
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Random enough for jitter, without a dependency: each `RandomState` has fresh keys.
fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ns());
    h.finish()
}

/// Sleeps unless shutdown comes first; false on shutdown.
async fn pause(shutdown: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    unless_shutdown(shutdown, tokio::time::sleep(delay)).await.is_some()
}

/// The live task: list, follow the newest chunk, repeat.
async fn live_loop<S: Sink>(shared: Arc<Shared<S>>, mut shutdown: watch::Receiver<bool>) {
    let mut stream: Option<u128> = None;
    let mut previous: Option<(u128, Arc<Vec<ChunkId>>)> = None;
    let mut backoff = Backoff::default();
    loop {
        let result = live_cycle(&shared, &mut stream, &mut previous, &mut shutdown).await;
        let wait = match result {
            Ok(Cycle::Relist) => {
                backoff.reset();
                Duration::ZERO
            }
            Ok(Cycle::Idle) => {
                backoff.reset();
                IDLE_LIST_INTERVAL
            }
            Ok(Cycle::Shutdown) => return,
            Err(e) => {
                shared.fail(&e);
                shared.metrics.reconnects.fetch_add(1, Relaxed);
                shared.metrics.set_state(SourceState::BackingOff);
                backoff.next_delay()
            }
        };
        if !wait.is_zero() && !pause(&mut shutdown, wait).await {
            return;
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cycle {
    Relist,
    Idle,
    Shutdown,
}

async fn live_cycle<S: Sink>(
    shared: &Shared<S>,
    stream: &mut Option<u128>,
    previous: &mut Option<(u128, Arc<Vec<ChunkId>>)>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Cycle, FetchError> {
    let Some(listed) = unless_shutdown(shutdown, shared.list()).await else {
        return Ok(Cycle::Shutdown);
    };
    let (ids, listed_stream) = listed?;
    shared.metrics.set_state(SourceState::Connected);
    if let Some(s) = listed_stream {
        if *stream != Some(s) {
            let before = stream.replace(s);
            shared.note_stream(before, s)?;
        }
    }
    let ids = Arc::new(ids);
    if let Some(s) = *stream {
        if let Some((ps, before)) = previous.as_ref() {
            if *ps == s {
                shared.report_vanished(s, before, &ids);
            }
        }
        *previous = Some((s, Arc::clone(&ids)));
        shared.account_listing(s, &ids);
    }
    // Only a listing that names its stream says which stream's history starts where.
    if let (Some(s), Some(oldest)) = (listed_stream, ids.first()) {
        shared.sink.listed(s, &oldest.to_string());
    }
    let Some(&live) = ids.last() else {
        return Ok(Cycle::Idle);
    };
    shared.metrics.update(|st| {
        if st.live_chunk.as_deref() != Some(live.to_string().as_str()) {
            st.live_chunk = Some(live.to_string());
            st.live_offset = 0;
        }
    });
    // A newest chunk complete already was closed by a shutdown of the supervisor: nothing to
    // follow until it opens another, so list again after a pause rather than at once.
    let already_complete = stream.is_some_and(|s| shared.progress(s, live).complete);
    let mut publish = Some(Arc::clone(&ids));
    let mut cx = FetchCx { mode: Mode::Live, publish: &mut publish, shutdown, slot: None };
    let end = shared.follow(live, stream, &mut cx).await;
    if end != Ok(FollowEnd::StreamChanged) {
        // Even when the live chunk failed, history can go on with what we know.
        shared.publish(*stream, &mut publish);
    }
    if let Some(s) = *stream {
        shared.account_backlog(s, &ids);
    }
    match end? {
        FollowEnd::Complete if already_complete => Ok(Cycle::Idle),
        FollowEnd::Complete | FollowEnd::StreamChanged => Ok(Cycle::Relist),
        // The newest chunk gone is odd (the open chunk is never discarded): do not spin on it.
        FollowEnd::Gone => Ok(Cycle::Idle),
        FollowEnd::Shutdown => Ok(Cycle::Shutdown),
    }
}

/// The backfill task of one source: newest incomplete older chunk first, each under a permit of
/// the shared pool, retried with backoff per chunk.
async fn backfill_loop<S: Sink>(
    shared: Arc<Shared<S>>,
    pool: Arc<Semaphore>,
    mut listings: watch::Receiver<Option<Listing>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: JoinSet<(ChunkId, Result<FollowEnd, FetchError>)> = JoinSet::new();
    // Which chunk each fetch task reads, to clean up after a task that panicked.
    let mut tasks: HashMap<tokio::task::Id, ChunkId> = HashMap::new();
    let mut inflight: HashSet<ChunkId> = HashSet::new();
    let mut retry: HashMap<(u128, ChunkId), (Instant, Backoff)> = HashMap::new();
    let mut source_backoff = Backoff::default();
    let mut not_before = Instant::now();
    let mut cursor = Cursor::default();
    loop {
        while let Some(done) = running.try_join_next_with_id() {
            let chunk = done_chunk(&mut tasks, &done);
            finish(&shared, chunk, done, &mut inflight, &mut retry, &mut source_backoff, &mut not_before);
        }
        let listing = listings.borrow_and_update().clone();
        let now = Instant::now();
        let idle = shared.idle_fetches.count.load(Relaxed);
        let startable = now >= not_before
            && idle == 0
            && listing.as_ref().is_some_and(|l| next_chunk(&shared, l, &inflight, &retry, now, &mut cursor).is_some());
        if startable {
            let permit = tokio::select! {
                permit = Arc::clone(&pool).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => return, // the pool was closed: the store is stopping
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            // The newest chunk at the moment a worker is free, not when we started waiting.
            while let Some(done) = running.try_join_next_with_id() {
                let chunk = done_chunk(&mut tasks, &done);
                finish(&shared, chunk, done, &mut inflight, &mut retry, &mut source_backoff, &mut not_before);
            }
            let listing = listings.borrow().clone();
            let Some(l) = listing else { continue };
            let Some(chunk) = next_chunk(&shared, &l, &inflight, &retry, Instant::now(), &mut cursor) else { continue };
            inflight.insert(chunk);
            let task_shared = Arc::clone(&shared);
            let mut task_shutdown = shutdown.clone();
            let slot = PermitSlot::new(Arc::clone(&pool), permit, Arc::clone(&shared.idle_fetches));
            let handle = running.spawn(async move {
                let mut stream = Some(l.stream);
                task_shared.note_offset(chunk, task_shared.progress(l.stream, chunk).offset, Mode::Backfill);
                let mut cx = FetchCx {
                    mode: Mode::Backfill,
                    publish: &mut None,
                    shutdown: &mut task_shutdown,
                    slot: Some(slot),
                };
                let end = task_shared.follow(chunk, &mut stream, &mut cx).await;
                drop(cx);
                task_shared.backfill_done(chunk);
                task_shared.account_backlog_soon(l.stream, &l.ids);
                (chunk, end)
            });
            tasks.insert(handle.id(), chunk);
            continue;
        }
        // Nothing to start now: wait for a new listing, a finished fetch, a retry time, a stalled
        // fetch moving again, or shutdown.
        let idle_changed = shared.idle_fetches.changed.notified();
        if shared.idle_fetches.count.load(Relaxed) != idle {
            continue;
        }
        if running.is_empty() {
            shared.account_backlog_owed(listing.as_ref());
        }
        let wake = if not_before > now {
            Some(not_before)
        } else {
            retry.values().map(|(at, _)| *at).filter(|at| *at > now).min()
        };
        tokio::select! {
            changed = listings.changed() => if changed.is_err() { return },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let chunk = done_chunk(&mut tasks, &done);
                finish(&shared, chunk, done, &mut inflight, &mut retry, &mut source_backoff, &mut not_before);
            }
            _ = sleep_until_opt(wake) => {}
            _ = idle_changed => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // Fetches see the shutdown themselves and stop at their next wait on the network; let them,
    // rather than dropping one in the middle of a commit.
    while running.join_next().await.is_some() {}
}

type Done = Result<(tokio::task::Id, (ChunkId, Result<FollowEnd, FetchError>)), tokio::task::JoinError>;

fn done_chunk(tasks: &mut HashMap<tokio::task::Id, ChunkId>, done: &Done) -> Option<ChunkId> {
    let id = match done {
        Ok((id, _)) => *id,
        Err(e) => e.id(),
    };
    tasks.remove(&id)
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Bookkeeping after one backfill fetch.
fn finish<S: Sink>(
    shared: &Shared<S>,
    chunk: Option<ChunkId>,
    done: Done,
    inflight: &mut HashSet<ChunkId>,
    retry: &mut HashMap<(u128, ChunkId), (Instant, Backoff)>,
    source_backoff: &mut Backoff,
    not_before: &mut Instant,
) {
    let Some(chunk) = chunk else { return };
    inflight.remove(&chunk);
    let end = match done {
        Ok((_, (_, end))) => end,
        // A fetch that panicked (a bug in the sink) must not stop the source: retry it later.
        Err(e) => Err(FetchError::new(ErrorKind::Sink, format!("fetching chunk {chunk} panicked: {e}"))),
    };
    let stream = shared.listing_tx.borrow().as_ref().map(|l| l.stream);
    let failed = match end {
        Ok(FollowEnd::Complete | FollowEnd::Gone | FollowEnd::Shutdown) => false,
        // The listing is of another stream than the supervisor serves now: wait for the live
        // task's next listing rather than asking again at once.
        Ok(FollowEnd::StreamChanged) => true,
        Err(e) => {
            shared.fail(&e);
            shared.metrics.reconnects.fetch_add(1, Relaxed);
            true
        }
    };
    match failed {
        false => {
            source_backoff.reset();
            if let Some(s) = stream {
                retry.remove(&(s, chunk));
            }
        }
        true => {
            let now = Instant::now();
            *not_before = now + source_backoff.next_delay();
            if let Some(s) = stream {
                let entry = retry.entry((s, chunk)).or_insert_with(|| (now, Backoff::default()));
                entry.0 = now + entry.1.next_delay();
            }
        }
    }
    // Keep the retry table as small as the listing (sorted: see `list`).
    if let Some(l) = shared.listing_tx.borrow().as_ref() {
        retry.retain(|(s, c), _| *s == l.stream && l.ids.binary_search(c).is_ok());
    }
}

/// How far the search for the next chunk to backfill has gone down one listing, newest first.
/// Every older chunk above `below` was, when passed, complete, lost, being fetched or waiting for
/// a retry; one of those that still needs reading is in the retry table by then (a fetch that
/// does not complete its chunk is a failure, see `finish`). So each listing is walked once, not
/// once per chunk fetched.
#[derive(Default)]
struct Cursor {
    ids: Option<Arc<Vec<ChunkId>>>,
    below: usize,
}

/// The newest chunk of the listing, other than the live one, that is incomplete, not lost, not
/// being fetched and not waiting for a retry.
fn next_chunk<S: Sink>(
    shared: &Shared<S>,
    listing: &Listing,
    inflight: &HashSet<ChunkId>,
    retry: &HashMap<(u128, ChunkId), (Instant, Backoff)>,
    now: Instant,
    cursor: &mut Cursor,
) -> Option<ChunkId> {
    let (_, older) = listing.ids.split_last()?;
    if !cursor.ids.as_ref().is_some_and(|ids| Arc::ptr_eq(ids, &listing.ids)) {
        *cursor = Cursor { ids: Some(Arc::clone(&listing.ids)), below: older.len() };
    }
    let lost = lock(&shared.lost);
    let wanted = |id: ChunkId| {
        !inflight.contains(&id)
            && !lost.contains(&(listing.stream, id))
            && retry.get(&(listing.stream, id)).is_none_or(|(at, _)| *at <= now)
            && !shared.progress(listing.stream, id).complete
    };
    // Chunks passed while waiting for a retry (or being fetched, then failed) come back here.
    let retried = retry
        .iter()
        .filter(|((s, id), (at, _))| *s == listing.stream && *at <= now && older.binary_search(id).is_ok())
        .map(|((_, id), _)| *id)
        .filter(|&id| wanted(id))
        .max();
    while cursor.below > 0 && !wanted(older[cursor.below - 1]) {
        cursor.below -= 1;
    }
    let fresh = cursor.below.checked_sub(1).map(|i| older[i]);
    retried.max(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_cuts_at_line_ends() {
        assert_eq!(batch_cut(b""), None);
        assert_eq!(batch_cut(b"abc"), None);
        assert_eq!(batch_cut(b"a\nb\nc"), Some(4));
        assert_eq!(batch_cut(b"a\n"), Some(2));
        let mut long = vec![b'x'; BATCH_BYTES_MAX + 10];
        long.push(b'\n');
        long.extend_from_slice(b"y\n");
        assert_eq!(batch_cut(&long), Some(BATCH_BYTES_MAX + 11), "one long line goes alone");
        let mut many = Vec::new();
        while many.len() < BATCH_BYTES_MAX + 100 {
            many.extend_from_slice(b"0123456789\n");
        }
        let cut = batch_cut(&many).expect("lines");
        assert!(cut <= BATCH_BYTES_MAX && many[cut - 1] == b'\n', "{cut}");
    }

    #[test]
    fn time_of_last_line() {
        assert_eq!(last_line_time_ns(br#"{"time_ns":1,"a":"b"}"#), Some(1));
        assert_eq!(last_line_time_ns(b"{\"time_ns\":1}\n{\"a\":\"x\", \"time_ns\" : 42}"), Some(42));
        assert_eq!(last_line_time_ns(br#"{"a":"{\"time_ns\":5}"}"#), None, "escaped key inside a string");
        assert_eq!(last_line_time_ns(b"not json"), None);
        assert_eq!(last_line_time_ns(br#"{"time_ns":"7"}"#), None);
    }

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert_eq!(first, BACKOFF_MIN);
        let mut delays = Vec::new();
        for _ in 0..40 {
            delays.push(b.next_delay());
        }
        assert!(delays.iter().all(|d| *d >= BACKOFF_MIN && *d <= BACKOFF_MAX), "{delays:?}");
        let late = &delays[20..];
        assert!(late.iter().any(|d| *d > Duration::from_secs(1)), "{late:?}");
        assert!(late.windows(2).any(|w| w[0] != w[1]), "jitter: {late:?}");
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_MIN);
    }
}
