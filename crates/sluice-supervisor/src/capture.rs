//! Reads a child's stdout or stderr and appends what it reads to the chunk log as events.
//!
//! Runs on a dedicated blocking thread per pipe: a read of up to [`READ_BYTES`] is split into lines,
//! each line is checked (`sluice_event::process_line`) and the batch goes to the log in one append.
//! Memory is bounded: a line longer than `line_bytes_max` is not buffered — its first bytes are kept
//! for the wrapped event and the rest is counted and skipped. Not here: the child's lifecycle.

use std::io::{ErrorKind, Read};
use std::sync::atomic::Ordering;

use sluice_chunk::{ChunkLog, Clock, LogError, Storage};
use sluice_event::Limits;

use crate::metrics::Metrics;

/// Bytes asked of the pipe per read.
pub const READ_BYTES: usize = 128 * 1024;

/// Which pipe is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipe {
    /// Event lines: valid ones stored byte-for-byte, bad ones wrapped.
    Stdout,
    /// Text: every line wrapped and marked as stderr.
    Stderr,
}

/// A line that outgrew the limit while it was being read.
struct Oversize {
    prefix: Vec<u8>,
    total: u64,
}

struct Splitter<'a, S: Storage> {
    pipe: Pipe,
    limits: Limits,
    log: &'a ChunkLog<S>,
    metrics: &'a Metrics,
    /// The start of a line whose end has not been read yet.
    carry: Vec<u8>,
    oversize: Option<Oversize>,
    out: Vec<u8>,
    now_ns: u64,
}

impl<S: Storage> Splitter<'_, S> {
    fn line(&mut self, line: &[u8]) {
        let m = self.metrics;
        match self.pipe {
            Pipe::Stdout => {
                m.stdout_events.fetch_add(1, Ordering::Relaxed);
                m.stdout_bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                let bad = sluice_event::process_line(line, self.now_ns, &self.limits, &mut self.out);
                if !bad.is_empty() {
                    m.count_bad(bad);
                }
            }
            Pipe::Stderr => {
                m.stderr_lines.fetch_add(1, Ordering::Relaxed);
                m.stderr_bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                sluice_event::process_stderr(line, self.now_ns, &self.limits, &mut self.out);
            }
        }
    }

    fn too_long(&mut self, prefix: &[u8], total: u64) {
        let m = self.metrics;
        match self.pipe {
            Pipe::Stdout => {
                m.stdout_events.fetch_add(1, Ordering::Relaxed);
                m.stdout_bytes.fetch_add(total + 1, Ordering::Relaxed);
                m.count_bad(sluice_event::BadClasses::only(sluice_event::BadClass::TooLong));
                sluice_event::process_too_long(prefix, total, self.now_ns, &self.limits, &mut self.out);
            }
            Pipe::Stderr => {
                m.stderr_lines.fetch_add(1, Ordering::Relaxed);
                m.stderr_bytes.fetch_add(total + 1, Ordering::Relaxed);
                sluice_event::process_stderr_too_long(prefix, total, self.now_ns, &self.limits, &mut self.out);
            }
        }
    }

    /// Handle one read: complete lines are processed, the unfinished tail is kept.
    fn feed(&mut self, data: &[u8]) {
        let max = self.limits.line_bytes_max;
        let keep = self.limits.raw_keep();
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let seg = &data[start..nl];
            start = nl + 1;
            if let Some(mut o) = self.oversize.take() {
                o.total += seg.len() as u64;
                self.too_long(&o.prefix, o.total);
            } else if self.carry.is_empty() {
                if seg.len() > max {
                    self.too_long(&seg[..keep], seg.len() as u64);
                } else {
                    self.line(seg);
                }
            } else if self.carry.len() + seg.len() > max {
                let mut prefix = std::mem::take(&mut self.carry);
                let total = (prefix.len() + seg.len()) as u64;
                let need = keep.saturating_sub(prefix.len());
                prefix.extend_from_slice(&seg[..need.min(seg.len())]);
                prefix.truncate(keep);
                self.too_long(&prefix, total);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(seg);
                self.line(&line);
                line.clear();
                self.carry = line; // keep the allocation
            }
        }
        let rest = &data[start..];
        if rest.is_empty() {
            return;
        }
        if let Some(o) = self.oversize.as_mut() {
            o.total += rest.len() as u64;
        } else if self.carry.len() + rest.len() > max {
            let mut prefix = std::mem::take(&mut self.carry);
            let total = (prefix.len() + rest.len()) as u64;
            let need = keep.saturating_sub(prefix.len());
            prefix.extend_from_slice(&rest[..need.min(rest.len())]);
            prefix.truncate(keep);
            self.oversize = Some(Oversize { prefix, total });
        } else {
            self.carry.extend_from_slice(rest);
        }
    }

    /// End of the pipe: an unfinished last line is still a line.
    fn finish(&mut self) {
        if let Some(o) = self.oversize.take() {
            self.too_long(&o.prefix, o.total);
        } else if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line);
        }
    }

    fn flush(&mut self) -> Result<(), LogError> {
        let r = self.log.append(&self.out);
        self.out.clear();
        r
    }
}

/// Read `reader` until end of file (or the log closes), appending events to `log`.
pub fn capture<S: Storage>(
    mut reader: impl Read,
    pipe: Pipe,
    log: &ChunkLog<S>,
    metrics: &Metrics,
    limits: Limits,
    clock: &dyn Clock,
) -> Result<(), LogError> {
    let mut buf = vec![0u8; READ_BYTES];
    let mut s = Splitter {
        pipe,
        limits,
        log,
        metrics,
        carry: Vec::new(),
        oversize: None,
        out: Vec::with_capacity(READ_BYTES + 4096),
        now_ns: 0,
    };
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // A broken pipe read is the end of it; there is nobody to tell but the stream.
            Err(_) => break,
        };
        s.now_ns = clock.wall_ns();
        s.feed(&buf[..n]);
        s.flush()?;
    }
    s.now_ns = clock.wall_ns();
    s.finish();
    s.flush()
}
