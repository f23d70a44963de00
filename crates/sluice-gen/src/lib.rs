//! `sluice gen`: a deterministic generator of realistic observability events, for tests,
//! benchmarks and the demo. It writes lines to the writers it is given; parsing arguments and
//! choosing stdout/stderr is the binary's job.
//!
//! # Output
//!
//! Stdout gets one JSON object per line, `time_ns` first, every other value a string or a
//! non-negative integer, no escapes needed (all strings are plain ASCII). Lines average about
//! 160 bytes. The mix of kinds (seed 000):
//!
//! | share | kind | keys after `time_ns` |
//! |---|---|---|
//! | 30% | log message | `level` (INFO 87%, WARN 9%, ERROR 3%, DEBUG 1%), `module`, `message`, `pii_uid` (85%); 3% are `"Updated email"` with `pii_old_email`, `pii_new_email` |
//! | 30% | RPC | `rpc_method` (15, skewed), `user_err` (4%), `server_error` (0.3%, e.g. `DB_CONN_UNAVAILABLE`), `duration_ms`, `conn_ms`, `txn_ms`, `pii_ip`, `pii_uid` |
//! | 20% | HTTP request | `http_verb`, `url` (`https://mycorp.com/...`, ~270 endpoints, Zipf, random hex ids), `status`, `duration_ms`, `pii_ip`, `pii_uid` |
//! | 8% | app action | `action`, `app_version`, `device_type`, `pii_uid` |
//! | 7% | worker item | `worker`, `work_item`, `type`, `result`, `duration_ms`, `network_ms` |
//! | 2.5% | queue gauge | `queue_length`, `failed_item_count` |
//! | 2.5% | heap gauge | `heap_size_mb`, `heap_used_p`, `threads`, `sockets`, `files` |
//!
//! Users (`"U"` + 6 digits) are Zipf over 100,000 ids; a user's `pii_ip` is usually the same
//! address. Durations are log-normal-ish per method/endpoint with a long tail. Message words come
//! from a Zipf-ranked vocabulary of about 400 words. The words of [`RARE_WORDS`] (`pangolin` 1e-4,
//! `axolotl` 1e-5, `quokka` and `narwhal` 1e-6, `okapi` 1e-7 per valid event) appear nowhere else,
//! each as a bare word in a log `message`, so a benchmark can search for them.
//!
//! With [`GenConfig::bad_ratio`], that share of stdout lines is deliberately bad, one
//! [`BadClass`] each; with [`GenConfig::stderr_ratio`], that share of all lines is plain text
//! for stderr instead (stack-trace lines, `warning: ...`).
//!
//! # Determinism
//!
//! The same seed and configuration give byte-identical output on every platform and with every
//! dependency version (own PRNG, no system maths functions; see `rng.rs`); a golden test pins it.
//! With a `rate`, `time_ns` is the wall clock, so only the content is reproducible.

mod bad;
mod event;
mod pace;
mod rng;
mod vocab;

use std::io::{self, Write};

pub use bad::BadClass;
pub use event::Generator;
pub use vocab::{RareWord, RARE_WORDS};

/// Default start of the synthetic timeline: 2026-11-01T00:00:00Z in ns since the Unix epoch.
pub const GEN_START_NS_DEFAULT: u64 = 1_793_491_200_000_000_000;
/// Default mean spacing of the synthetic timeline: 1 ms.
pub const GEN_STEP_NS_DEFAULT: u64 = 1_000_000;
/// The largest `time_ns` an event may carry (SPEC §1: 2^63-1).
pub(crate) const TIME_NS_MAX: u64 = i64::MAX as u64;
/// Unpaced output is written in blocks of about this size: large enough that the cost of a write
/// call vanishes, small enough to stay in cache.
const BLOCK_BYTES: usize = 256 * 1024;

/// What to generate. Fields are public so that the CLI can fill them from flags.
#[derive(Clone, Debug, PartialEq)]
pub struct GenConfig {
    /// Seed of all randomness; default 1.
    pub seed: u64,
    /// Lines to write (events, bad lines and stderr lines together); `None` = forever.
    pub count: Option<u64>,
    /// Lines per second (all kinds); `None` = as fast as possible.
    pub rate: Option<f64>,
    /// Share of stdout lines that are deliberately bad (0.0..=1.0); default 0.
    pub bad_ratio: f64,
    /// Share of lines written as plain text lines to stderr instead (0.0..=1.0); default 0.
    pub stderr_ratio: f64,
    /// Start of the synthetic timeline (used without `rate`); default [`GEN_START_NS_DEFAULT`].
    pub start_ns: u64,
    /// Mean spacing of the synthetic timeline; default [`GEN_STEP_NS_DEFAULT`].
    pub step_ns: u64,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            seed: 1,
            count: None,
            rate: None,
            bad_ratio: 0.0,
            stderr_ratio: 0.0,
            start_ns: GEN_START_NS_DEFAULT,
            step_ns: GEN_STEP_NS_DEFAULT,
        }
    }
}

/// A [`GenConfig`] that cannot be run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenConfigError {
    #[error("gen rate must be a positive, finite number of events per second (got {0}); omit it to generate as fast as possible")]
    Rate(f64),
    #[error("gen bad ratio must be between 0 and 1 (got {0})")]
    BadRatio(f64),
    #[error("gen stderr ratio must be between 0 and 1 (got {0})")]
    StderrRatio(f64),
}

impl GenConfig {
    pub fn validate(&self) -> Result<(), GenConfigError> {
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(GenConfigError::Rate(rate));
            }
        }
        if !(0.0..=1.0).contains(&self.bad_ratio) {
            return Err(GenConfigError::BadRatio(self.bad_ratio));
        }
        if !(0.0..=1.0).contains(&self.stderr_ratio) {
            return Err(GenConfigError::StderrRatio(self.stderr_ratio));
        }
        Ok(())
    }
}

/// What [`Generator::next_line`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineKind {
    /// A valid event: a flat JSON object, `time_ns` first.
    Event,
    /// A deliberately bad stdout line; [`Generator::last_bad_class`] says which [`BadClass`].
    Bad,
    /// A plain-text line meant for stderr.
    Stderr,
}

/// Writes events: stdout gets one JSON object per line. With `rate` set, time_ns is the wall clock
/// at emission and output is flushed after each paced batch (so a reader sees events within a few
/// ms); without `rate`, time_ns follows the synthetic timeline (start_ns + jittered steps) and
/// output is written in large buffered blocks. Returns the number of lines written (all kinds).
/// A broken pipe on stdout ends generation quietly with Ok (like `yes | head`); a broken pipe on
/// stderr only stops the stderr lines. An invalid configuration is an `InvalidInput` error
/// wrapping a [`GenConfigError`].
pub fn run(cfg: &GenConfig, stdout: &mut dyn Write, stderr: &mut dyn Write) -> io::Result<u64> {
    cfg.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut gen = Generator::new(cfg);
    let mut output = Output::new(stdout, stderr);
    match cfg.rate {
        None => run_unpaced(cfg.count, &mut gen, &mut output),
        Some(rate) => pace::run_paced(cfg.count, rate, &mut gen, &mut output, &mut pace::SystemClock::new()),
    }
}

fn run_unpaced(count: Option<u64>, gen: &mut Generator, output: &mut Output) -> io::Result<u64> {
    let mut written = 0u64;
    let mut pending = 0u64;
    while count.is_none_or(|c| written + pending < c) {
        let t = gen.next_time_ns();
        output.push_line(gen, t);
        pending += 1;
        if output.buffered_bytes() >= BLOCK_BYTES {
            if !output.drain(false)? {
                return Ok(written);
            }
            written += pending;
            pending = 0;
        }
    }
    if output.drain(true)? {
        written += pending;
    }
    Ok(written)
}

/// The two output streams and their buffers, with the broken-pipe policy of [`run`].
pub(crate) struct Output<'a> {
    stdout: &'a mut dyn Write,
    stderr: &'a mut dyn Write,
    stderr_open: bool,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Output { stdout, stderr, stderr_open: true, out_buf: Vec::with_capacity(BLOCK_BYTES * 2), err_buf: Vec::new() }
    }

    /// Generates one line into the buffer of the stream it belongs to.
    #[inline]
    pub(crate) fn push_line(&mut self, gen: &mut Generator, time_ns: u64) -> LineKind {
        let start = self.out_buf.len();
        let kind = gen.next_line(time_ns, &mut self.out_buf);
        if kind == LineKind::Stderr {
            if self.stderr_open {
                self.err_buf.extend_from_slice(&self.out_buf[start..]);
            }
            self.out_buf.truncate(start);
        }
        kind
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.out_buf.len().max(self.err_buf.len())
    }

    /// Writes out both buffers (and flushes both writers if `flush`). `Ok(false)`: stdout's
    /// reader has gone, stop quietly.
    pub(crate) fn drain(&mut self, flush: bool) -> io::Result<bool> {
        if self.stderr_open && (!self.err_buf.is_empty() || flush) {
            let r =
                self.stderr.write_all(&self.err_buf).and_then(|()| if flush { self.stderr.flush() } else { Ok(()) });
            self.err_buf.clear();
            match r {
                // Nobody reads stderr any more: stop producing for it, keep going on stdout.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => self.stderr_open = false,
                r => r?,
            }
        }
        let r = self.stdout.write_all(&self.out_buf).and_then(|()| if flush { self.stdout.flush() } else { Ok(()) });
        self.out_buf.clear();
        match r {
            // Like `yes | head`: the reader has what it wanted; that is not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
            r => r.map(|()| true),
        }
    }
}
