//! Time sources for the chunk log: wall time (event times, chunk ids, retention) and monotonic
//! time (chunk age), injectable so that tests can step the wall clock backwards.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Nanoseconds since the Unix epoch; may jump in either direction.
    fn wall_ns(&self) -> u64;
    /// Nanoseconds since an arbitrary start; never goes backwards.
    fn mono_ns(&self) -> u64;
}

/// The operating system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn wall_ns(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }
    fn mono_ns(&self) -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    wall: AtomicU64,
    mono: AtomicU64,
}

impl ManualClock {
    pub fn new(wall_ns: u64) -> ManualClock {
        ManualClock { wall: AtomicU64::new(wall_ns), mono: AtomicU64::new(0) }
    }
    /// Set the wall clock (backwards is allowed).
    pub fn set_wall_ns(&self, wall_ns: u64) {
        self.wall.store(wall_ns, Ordering::SeqCst);
    }
    /// Let `ns` pass on both clocks.
    pub fn advance_ns(&self, ns: u64) {
        self.wall.fetch_add(ns, Ordering::SeqCst);
        self.mono.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall_ns(&self) -> u64 {
        self.wall.load(Ordering::SeqCst)
    }
    fn mono_ns(&self) -> u64 {
        self.mono.load(Ordering::SeqCst)
    }
}
