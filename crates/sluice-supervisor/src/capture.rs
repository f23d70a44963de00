//! Reads a child's stdout or stderr and appends what it reads to the chunk log as events.
//!
//! Runs on a dedicated blocking thread per pipe: a read of up to [`READ_BYTES`] is split into lines,
//! each line is checked; runs of valid lines go to the log straight from the read buffer (no copy),
//! bad lines are wrapped (`sluice_event::process_line`) into a small side buffer.
//! Memory is bounded: a line longer than `line_bytes_max` is not buffered — its first bytes are kept
//! for the wrapped event and the rest is counted and skipped. Not here: the child's lifecycle.

use std::io::{ErrorKind, Read};
use std::sync::atomic::Ordering;

use sluice_chunk::{ChunkLog, Clock, LogError, Storage};
use sluice_event::Limits;

use crate::metrics::Metrics;

/// Bytes asked of the pipe per read.
pub const READ_BYTES: usize = 1024 * 1024;

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
    fn line(&mut self, line: &[u8]) -> Result<(), LogError> {
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
        self.flush_if_full()
    }

    fn too_long(&mut self, prefix: &[u8], total: u64) -> Result<(), LogError> {
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
        self.flush_if_full()
    }

    /// Wrapping makes a line longer (an empty line becomes an event of about 70 bytes): the
    /// wrapped output goes to the log once it holds a read's worth, so one read of short bad lines
    /// cannot build tens of MB here. Order is kept: a pending run was appended before any wrap.
    fn flush_if_full(&mut self) -> Result<(), LogError> {
        if self.out.len() >= READ_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Handle one read: complete lines are processed, the unfinished tail is kept.
    ///
    /// Valid stdout lines that lie wholly inside `data` are not copied: consecutive ones form a
    /// run that goes to the log straight from the read buffer. Order is kept by flushing the
    /// wrapped output before a run starts and a run before anything else is written.
    fn feed(&mut self, data: &[u8]) -> Result<(), LogError> {
        let max = self.limits.line_bytes_max;
        let keep = self.limits.raw_keep();
        let mut start = 0;
        let mut run: Option<usize> = None;
        for nl in memchr::memchr_iter(b'\n', data) {
            let seg = &data[start..nl];
            let line_start = start;
            start = nl + 1;
            let plain =
                self.pipe == Pipe::Stdout && self.oversize.is_none() && self.carry.is_empty() && seg.len() <= max;
            if plain && sluice_event::check_line(seg, false).is_empty() {
                self.metrics.stdout_events.fetch_add(1, Ordering::Relaxed);
                self.metrics.stdout_bytes.fetch_add(seg.len() as u64 + 1, Ordering::Relaxed);
                if run.is_none() {
                    self.flush()?;
                    run = Some(line_start);
                }
                continue;
            }
            if let Some(r) = run.take() {
                self.log.append(&data[r..line_start])?;
            }
            if let Some(mut o) = self.oversize.take() {
                o.total += seg.len() as u64;
                self.too_long(&o.prefix, o.total)?;
            } else if self.carry.is_empty() {
                if seg.len() > max {
                    self.too_long(&seg[..keep], seg.len() as u64)?;
                } else {
                    self.line(seg)?;
                }
            } else if self.carry.len() + seg.len() > max {
                let mut prefix = std::mem::take(&mut self.carry);
                let total = (prefix.len() + seg.len()) as u64;
                let need = keep.saturating_sub(prefix.len());
                prefix.extend_from_slice(&seg[..need.min(seg.len())]);
                prefix.truncate(keep);
                self.too_long(&prefix, total)?;
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(seg);
                let r = self.line(&line);
                line.clear();
                self.carry = line; // keep the allocation
                r?;
            }
        }
        if let Some(r) = run {
            self.log.append(&data[r..start])?;
        }
        let rest = &data[start..];
        if rest.is_empty() {
            return Ok(());
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
        Ok(())
    }

    /// End of the pipe: an unfinished last line is still a line.
    fn finish(&mut self) -> Result<(), LogError> {
        if let Some(o) = self.oversize.take() {
            self.too_long(&o.prefix, o.total)
        } else if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            self.line(&line)
        } else {
            Ok(())
        }
    }

    fn flush(&mut self) -> Result<(), LogError> {
        if self.out.is_empty() {
            return Ok(());
        }
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
        s.feed(&buf[..n])?;
        s.flush()?;
    }
    s.now_ns = clock.wall_ns();
    s.finish()?;
    s.flush()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use sluice_chunk::{ChunkLog, FsyncPolicy, LogConfig, ManualClock, MemStorage, Storage};

    use super::*;

    const T: u64 = 1_790_000_000_000_000_000;

    /// Returns `data` in reads of the given sizes (cycled), like a pipe under varying load.
    struct Chopped {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        i: usize,
    }

    impl Read for Chopped {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = self.sizes[self.i % self.sizes.len()].min(buf.len());
            self.i += 1;
            let n = want.min(self.data.len() - self.pos);
            buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => (0u64..1000, "[a-z ]{0,40}").prop_map(|(n, s)| format!("{{\"time_ns\":{n},\"msg\":\"{s}\"}}").into_bytes()),
            1 => Just(b"not json at all".to_vec()),
            1 => Just(b"{\"time_ns\":1,\"f\":1.5}".to_vec()),
            1 => Just(Vec::new()),
            1 => (1100usize..3000).prop_map(|n| format!("{{\"time_ns\":1,\"big\":\"{}\"}}", "x".repeat(n)).into_bytes()),
            1 => prop::collection::vec(any::<u8>(), 0..60).prop_map(|mut v| { v.retain(|&b| b != b'\n'); v }),
        ]
    }

    /// A read of a MiB of empty lines wraps each into an event of about 70 bytes: the wrapped
    /// output is handed to the log a read's worth at a time, never held whole (about 70 MB).
    #[test]
    fn wrapped_output_is_bounded_by_a_read_not_by_what_wrapping_makes_of_it() {
        let storage = MemStorage::new();
        let clock = Arc::new(ManualClock::new(T));
        let config = LogConfig { fsync: FsyncPolicy::Never, ..LogConfig::default() };
        let (log, _) = ChunkLog::open(storage, config, clock.clone()).expect("open");
        let metrics = Metrics::default();
        let limits = Limits { line_bytes_max: 1024 };
        let mut s = Splitter {
            pipe: Pipe::Stdout,
            limits,
            log: &log,
            metrics: &metrics,
            carry: Vec::new(),
            oversize: None,
            out: Vec::with_capacity(READ_BYTES + 4096),
            now_ns: T,
        };
        let empty_lines = vec![b'\n'; READ_BYTES];
        s.feed(&empty_lines).expect("feed");
        s.flush().expect("flush");
        assert!(s.out.capacity() < 2 * READ_BYTES, "the side buffer grew to {} bytes", s.out.capacity());
        assert_eq!(metrics.stdout_events.load(Ordering::Relaxed), READ_BYTES as u64);
        // Every empty line is an event in the log (none dropped: the retention here is 500 MB).
        assert_eq!(log.metrics().dropped_events.load(Ordering::Relaxed), 0);
        let written = log.metrics().events_written.load(Ordering::Relaxed);
        assert!(written >= READ_BYTES as u64, "{written} events written");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the read sizes, capture stores exactly what checking each line alone gives.
        #[test]
        fn capture_equals_line_by_line_processing(
            lines in prop::collection::vec(line(), 0..60),
            trailing_newline: bool,
            sizes in prop::collection::vec(1usize..4000, 1..8),
        ) {
            let limits = Limits { line_bytes_max: 1024 };
            let mut input = lines.join(&b'\n');
            if trailing_newline && !lines.is_empty() {
                input.push(b'\n');
            }
            let mut expected = Vec::new();
            let mut pieces: Vec<&[u8]> = input.split(|&b| b == b'\n').collect();
            if input.is_empty() || input.ends_with(b"\n") {
                pieces.pop(); // nothing after the last newline
            }
            for l in pieces {
                if l.len() > limits.line_bytes_max {
                    sluice_event::process_too_long(&l[..limits.raw_keep()], l.len() as u64, T, &limits, &mut expected);
                } else {
                    sluice_event::process_line(l, T, &limits, &mut expected);
                }
            }

            let storage = MemStorage::new();
            let clock = Arc::new(ManualClock::new(T));
            let config = LogConfig { chunk_bytes_max: 64 * 1024, line_bytes_max: 1024, fsync: FsyncPolicy::Never, ..LogConfig::default() };
            let (log, _) = ChunkLog::open(storage.clone(), config, clock.clone()).expect("open");
            let metrics = Metrics::default();
            capture(Chopped { data: input, pos: 0, sizes, i: 0 }, Pipe::Stdout, &log, &metrics, limits, clock.as_ref()).expect("capture");
            log.close().expect("close");

            let mut names: Vec<String> = storage.list().expect("list").into_iter().map(|e| e.name).filter(|n| n.ends_with(".chunk")).collect();
            names.sort_by_key(|n| (n.len(), n.clone()));
            let mut stored = Vec::new();
            for n in names {
                let data = storage.contents(&n).expect("chunk");
                for l in data.split_inclusive(|&b| b == b'\n') {
                    let own = l.windows(30).any(|w| w == b",\"sluice_origin\":\"supervisor\",");
                    if !own {
                        stored.extend_from_slice(l);
                    }
                }
            }
            prop_assert_eq!(String::from_utf8_lossy(&stored), String::from_utf8_lossy(&expected));
        }
    }
}
