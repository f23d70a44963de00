//! Pacing for `--rate`: a token bucket against a monotonic clock, sleeping between small batches.
//!
//! Event `i` (from 0) is due `i / rate` seconds after the start; whenever some are due they are
//! generated with the wall clock as `time_ns`, written and flushed together, and then the loop
//! sleeps until the next one is due (at least [`PACE_SLEEP_MIN`], so high rates come in batches
//! rather than one wake-up per event, and never a busy loop). Because the schedule is absolute,
//! oversleeping only makes the next batch larger; the long-run rate stays exact. A stall longer
//! than [`PACE_BURST_WINDOW_S`] (a reader that stopped, a suspended process) is forgiven rather
//! than paid back in one flood. The clock is a trait so tests can drive it without sleeping.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Generator, Output, TIME_NS_MAX};

/// Shortest sleep: bounds wake-ups to 1,000 per second while keeping a batch's events within a
/// few ms of their due time.
pub(crate) const PACE_SLEEP_MIN: Duration = Duration::from_millis(1);
/// Longest sleep before the schedule is looked at again (keeps tiny rates well-behaved).
pub(crate) const PACE_SLEEP_MAX: Duration = Duration::from_secs(1);
/// Most lines generated between two flushes, so a catch-up burst still reaches the reader in
/// pieces.
pub(crate) const PACE_BATCH_MAX: u64 = 4_096;
/// Seconds of events that may be owed after a stall; older debt is dropped.
pub(crate) const PACE_BURST_WINDOW_S: f64 = 1.0;

/// Time as the pacer sees it.
pub(crate) trait Clock {
    /// Monotonic time since the clock was created.
    fn elapsed(&self) -> Duration;
    /// Wall-clock ns since the Unix epoch, for `time_ns`.
    fn wall_ns(&self) -> u64;
    fn sleep(&mut self, d: Duration);
}

pub(crate) struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub(crate) fn new() -> Self {
        SystemClock { start: Instant::now() }
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn wall_ns(&self) -> u64 {
        // A clock set before 1970 gives 0 rather than failing: the events stay valid.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(TIME_NS_MAX))
            .min(TIME_NS_MAX)
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// Generates `count` lines (or forever) at `rate` lines per second. `rate` is positive and
/// finite (checked by `GenConfig::validate`).
pub(crate) fn run_paced(
    count: Option<u64>,
    rate: f64,
    gen: &mut Generator,
    output: &mut Output,
    clock: &mut dyn Clock,
) -> io::Result<u64> {
    let burst_max = ((rate * PACE_BURST_WINDOW_S) as u64).max(1);
    // Lines of the schedule already used up (written, or forgiven after a stall).
    let mut scheduled = 0u64;
    let mut written = 0u64;
    loop {
        let remaining = count.map_or(u64::MAX, |c| c - written);
        if remaining == 0 {
            return Ok(written);
        }
        let now = clock.elapsed().as_secs_f64();
        // One line is due at time 0, then one more every 1/rate seconds.
        let due = ((now * rate) as u64).saturating_add(1);
        if due.saturating_sub(scheduled) > burst_max {
            scheduled = due - burst_max;
        }
        let n = due.saturating_sub(scheduled).min(remaining).min(PACE_BATCH_MAX);
        if n == 0 {
            // Line number `scheduled` is due at `scheduled / rate`.
            let wait_s =
                (scheduled as f64 / rate - now).clamp(PACE_SLEEP_MIN.as_secs_f64(), PACE_SLEEP_MAX.as_secs_f64());
            clock.sleep(Duration::from_secs_f64(wait_s));
            continue;
        }
        for _ in 0..n {
            output.push_line(gen, clock.wall_ns());
        }
        if !output.drain(true)? {
            return Ok(written);
        }
        written += n;
        scheduled += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GenConfig;
    use std::cell::RefCell;
    use std::io::Write;
    use std::rc::Rc;

    /// Shared fake time: the clock advances it when sleeping, the writer can advance it too (a
    /// slow reader).
    #[derive(Default)]
    struct World {
        now: Duration,
        sleeps: Vec<Duration>,
        /// (time of the flush, lines in the batch)
        batches: Vec<(Duration, usize)>,
        pending_lines: usize,
        /// Stall the writer once, at this batch number, for this long.
        stall: Option<(usize, Duration)>,
    }

    /// Sleeps overshoot a little, as real ones do.
    const OVERSHOOT: Duration = Duration::from_micros(80);
    const WALL_BASE_NS: u64 = 1_800_000_000_000_000_000;

    struct FakeClock(Rc<RefCell<World>>);

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            self.0.borrow().now
        }
        fn wall_ns(&self) -> u64 {
            WALL_BASE_NS + self.0.borrow().now.as_nanos() as u64
        }
        fn sleep(&mut self, d: Duration) {
            let mut w = self.0.borrow_mut();
            w.sleeps.push(d);
            w.now += d + OVERSHOOT;
        }
    }

    struct FakeOut(Rc<RefCell<World>>);

    impl Write for FakeOut {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut w = self.0.borrow_mut();
            w.pending_lines += buf.iter().filter(|&&b| b == b'\n').count();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            let mut w = self.0.borrow_mut();
            let lines = std::mem::take(&mut w.pending_lines);
            let now = w.now;
            w.batches.push((now, lines));
            if let Some((at, d)) = w.stall {
                if w.batches.len() == at {
                    w.now += d;
                }
            }
            Ok(())
        }
    }

    fn run_fake(rate: f64, count: u64, stall: Option<(usize, Duration)>) -> (u64, World) {
        let world = Rc::new(RefCell::new(World { stall, ..World::default() }));
        let cfg = GenConfig::default();
        let mut gen = Generator::new(&cfg);
        let mut out = FakeOut(world.clone());
        let mut err = io::sink();
        let mut output = Output::new(&mut out, &mut err);
        let mut clock = FakeClock(world.clone());
        let n = run_paced(Some(count), rate, &mut gen, &mut output, &mut clock).unwrap();
        drop(output);
        drop(out);
        drop(clock);
        let world = Rc::try_unwrap(world).ok().unwrap().into_inner();
        (n, world)
    }

    #[test]
    fn twenty_thousand_per_second_keeps_the_rate_in_batches_without_busy_looping() {
        let (n, w) = run_fake(20_000.0, 200_000, None);
        assert_eq!(n, 200_000);
        let lines: usize = w.batches.iter().map(|b| b.1).sum();
        assert_eq!(lines, 200_000);
        // The last line is due at 199,999 / 20,000 s.
        let end = w.now.as_secs_f64();
        assert!((9.999..10.003).contains(&end), "took {end} s");
        assert!(w.sleeps.iter().all(|&d| d >= PACE_SLEEP_MIN), "a sleep below the minimum");
        assert!(w.sleeps.len() <= 10_000, "{} wake-ups", w.sleeps.len());
        // Batches are small: about one millisecond's worth each.
        assert!(w.batches.iter().all(|b| b.1 <= 25), "a batch larger than ~1 ms of events");
    }

    #[test]
    fn five_per_second_writes_each_line_when_it_is_due() {
        let (n, w) = run_fake(5.0, 50, None);
        assert_eq!(n, 50);
        assert_eq!(w.batches.len(), 50);
        for (i, (at, lines)) in w.batches.iter().enumerate() {
            assert_eq!(*lines, 1);
            let due = i as f64 / 5.0;
            let late = at.as_secs_f64() - due;
            assert!((0.0..0.002).contains(&late), "line {i} due {due} written at {at:?}");
        }
        // Long sleeps, not a poll loop.
        assert!(w.sleeps.len() <= 60, "{} wake-ups", w.sleeps.len());
    }

    #[test]
    fn a_stalled_reader_is_not_paid_back_in_one_flood() {
        // The 10th flush takes 5 s: at 1,000/s that is 5,000 owed lines, of which only one
        // burst window (1,000) is made up.
        let (n, w) = run_fake(1_000.0, 3_000, Some((10, Duration::from_secs(5))));
        assert_eq!(n, 3_000);
        let after: usize = w.batches[10..].iter().take(1).map(|b| b.1).sum();
        assert!(after <= 1_001, "burst of {after} after the stall");
        let end = w.now.as_secs_f64();
        // Without forgiveness it would end right after the stall (about 5 s in).
        assert!(end > 6.5, "ended at {end} s");
    }

    #[test]
    fn paced_lines_carry_the_wall_clock() {
        let world = Rc::new(RefCell::new(World::default()));
        let mut gen = Generator::new(&GenConfig::default());
        let mut out = Vec::new();
        let mut err = io::sink();
        let mut output = Output::new(&mut out, &mut err);
        let mut clock = FakeClock(world.clone());
        run_paced(Some(20), 10.0, &mut gen, &mut output, &mut clock).unwrap();
        drop(output);
        let first = std::str::from_utf8(&out).unwrap().lines().next().unwrap().to_owned();
        assert!(first.starts_with(&format!("{{\"time_ns\":{WALL_BASE_NS},")), "{first}");
        let last = std::str::from_utf8(&out).unwrap().lines().last().unwrap().to_owned();
        let t: u64 = last[11..].split(',').next().unwrap().parse().unwrap();
        // Line 19 is due at 1.9 s.
        assert!((t - WALL_BASE_NS).abs_diff(1_900_000_000) < 2_000_000, "{last}");
    }
}
