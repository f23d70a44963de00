//! Pulls events from supervisors over mTLS for the event store: the store's config file, an HTTPS
//! client per source, and the pullers (live chunk plus newest-first backfill on a bounded pool)
//! that hand whole lines to a [`Sink`].
//! It stores nothing itself: progress, de-duplication and durability belong to the sink.

mod client;
pub mod config;
mod metrics;
mod puller;

use std::sync::Arc;

pub use client::{
    ClientError, ErrorKind, FetchError, Response, SourceClient, Timeouts, CONNECT_TIMEOUT, LIVE_IDLE_TIMEOUT,
    STALL_TIMEOUT,
};
pub use config::{ApiTls, ConfigError, Endpoint, SourceConfig, StoreFileConfig, TlsFiles};
pub use metrics::{PullMetrics, SourceMetrics, SourceState, SourceStatus};
pub use puller::{
    clients, run_all, run_clients, run_source, BACKFILL_PERMIT_IDLE, BACKOFF_MAX, BACKOFF_MIN, BATCH_BYTES_MAX,
    IDLE_LIST_INTERVAL, LINE_BYTES_MAX, LISTING_BYTES_MAX,
};

/// A run of complete event lines read from one chunk of one supervisor, starting at `start_offset`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Configured name of the source.
    pub source: Arc<str>,
    /// `Sluice-Stream-Id` of the supervisor, as the 128-bit value.
    pub stream: u128,
    /// Chunk id, as served (validated by the puller).
    pub chunk: Arc<str>,
    /// Byte offset in the chunk of the first line.
    pub start_offset: u64,
    /// Complete lines, each ending in `\n`.
    pub lines: bytes::Bytes,
    /// When the store received the bytes, ns since the epoch.
    pub received_ns: u64,
    /// True when the response ended properly and the chunk was closed: this batch ends the chunk.
    pub chunk_complete: bool,
}

/// Read progress of one chunk as the sink has it durably.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkProgress {
    /// Bytes committed so far (the next offset to fetch).
    pub offset: u64,
    /// Every line of the closed chunk is committed.
    pub complete: bool,
}

/// What the sink did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Durable; the chunk's committed offset is now `offset`.
    Committed { offset: u64 },
    /// The batch started past the committed offset (another reader is behind or ahead): resume at `offset`.
    Resume { offset: u64 },
}

/// Where pulled batches go: the store's write path. Commits for one (stream, chunk) are applied in
/// offset order; lines below the committed offset are skipped (that is the position-based de-duplication).
pub trait Sink: Send + Sync + 'static {
    fn commit(&self, batch: Batch) -> impl std::future::Future<Output = Result<CommitOutcome, String>> + Send;
    fn progress(&self, stream: u128, chunk: &str) -> Option<ChunkProgress>;
    /// Record a chunk that was gone (404) before it was read completely.
    fn chunk_lost(&self, source: &str, stream: u128, chunk: &str, offset: u64);
    /// The source's chunk listing, which named `stream`, starts at `oldest`: the supervisor has
    /// discarded every older chunk of the stream, and chunk ids are never reused, so none of them
    /// will be served again. Called after every listing, once the chunks that vanished from it
    /// have been reported lost. The sink may forget what it keeps per older chunk.
    fn listed(&self, _stream: u128, _oldest: &str) {}
}
