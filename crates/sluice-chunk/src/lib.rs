//! The supervisor's on-disk event stream: chunk ids, the chunk log (append, rotate, group commit,
//! repair, retention) and the read/follow API the HTTPS server serves from.
//!
//! Uses std::fs only (no async runtime); the format and its crash invariants are documented in
//! [`log`]. Not here: capturing a child, HTTP, TLS.

pub mod clock;
pub mod id;
pub mod log;
pub mod storage;

pub use clock::{Clock, ManualClock, SystemClock};
pub use id::{ChunkId, IdError, StreamId, ID_ALPHABET};
pub use log::{
    parse_duration, ChunkInfo, ChunkLog, ChunkState, FsyncPolicy, LogConfig, LogError, LogMetrics, OnFull, OpenReport,
    ReadError,
};
pub use storage::{DiskStorage, Entry, MemStorage, Storage, StorageFile};
