//! The progress indicator of a long query: after [`PROGRESS_DELAY`] a spinner with the elapsed
//! time and the rows received so far, redrawn in place on stderr, and erased when the query ends
//! or the first row is printed to the same terminal. It draws only when stderr is a terminal, so
//! scripts and pipes never see it. It does not measure anything the store reports.
//!
//! It runs as a task on the caller's current-thread runtime, so a redraw never interleaves with
//! the caller's own writes: between two awaits of the caller, the spinner does not run.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

/// Queries that finish sooner show no spinner at all.
pub const PROGRESS_DELAY: Duration = Duration::from_millis(300);
/// Redraw period.
const TICK: Duration = Duration::from_millis(100);
const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];
/// Back to the line start, then erase to its end.
const ERASE_LINE: &str = "\r\x1b[K";

#[derive(Default)]
struct Shared {
    rows: AtomicU64,
    drawn: AtomicBool,
}

/// A running (or disabled) spinner; [`Progress::stop`] erases it, as does dropping it.
pub struct Progress {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the spinner if `enabled` (stderr is a terminal); otherwise every call is a no-op.
    pub fn start(enabled: bool) -> Progress {
        let shared = Arc::new(Shared::default());
        let task = enabled.then(|| {
            let shared = shared.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                tokio::time::sleep(PROGRESS_DELAY).await;
                let mut tick = tokio::time::interval(TICK);
                for frame in FRAMES.iter().cycle() {
                    tick.tick().await;
                    let line = progress_line(*frame, started.elapsed(), shared.rows.load(Ordering::Relaxed));
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "{ERASE_LINE}{line}");
                    let _ = err.flush();
                    shared.drawn.store(true, Ordering::Relaxed);
                }
            })
        });
        Progress { shared, task }
    }

    pub fn set_rows(&self, rows: u64) {
        self.shared.rows.store(rows, Ordering::Relaxed);
    }

    /// Stops the spinner for good and erases its line.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            if self.shared.drawn.load(Ordering::Relaxed) {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "{ERASE_LINE}");
                let _ = err.flush();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `⠋ 1.2 s · 340 rows`
fn progress_line(frame: char, elapsed: Duration, rows: u64) -> String {
    let rows = if rows == 1 { "1 row".to_string() } else { format!("{rows} rows") };
    format!("{frame} {:.1} s · {rows}", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line() {
        assert_eq!(progress_line('⠋', Duration::from_millis(1234), 340), "⠋ 1.2 s · 340 rows");
        assert_eq!(progress_line('⠙', Duration::from_millis(300), 1), "⠙ 0.3 s · 1 row");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn disabled_never_spawns() {
        let mut p = Progress::start(false);
        assert!(p.task.is_none());
        p.set_rows(5);
        p.stop();
    }
}
