//! The child processes of `sluice demo` and the signals that stop them: spawn with stderr into a
//! log file, notice a death, read a ready line from a log, stop everything (SIGTERM, a deadline,
//! then SIGKILL). It knows nothing of what the children are.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

/// How long children get to stop after SIGTERM: a supervisor waits up to 10 s for its command,
/// and the store flushes its buffer into segments.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How often stopping children are looked at.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Lines of a log shown when its process died or did not come up.
const LOG_TAIL_LINES: usize = 20;
/// The end of a log read for those lines.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Ctrl-C, SIGTERM and SIGHUP (a closed terminal): each one means "stop the demo".
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub fn install() -> anyhow::Result<Signals> {
        let install =
            |kind: SignalKind, name: &str| signal(kind).with_context(|| format!("cannot install a {name} handler"));
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Waits `pause`, or less when a stop signal arrives: then its name.
    pub async fn pause(&mut self, pause: Duration) -> Option<&'static str> {
        tokio::select! {
            _ = self.term.recv() => Some("SIGTERM"),
            _ = self.int.recv() => Some("SIGINT"),
            _ = self.hup.recv() => Some("SIGHUP"),
            () = tokio::time::sleep(pause) => None,
        }
    }
}

/// One child: its name in messages, the process, the file its stderr goes to.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    /// Set once its death has been reported or it has been stopped, so it is reported once.
    done: bool,
}

/// Every child of the demo, in the order started.
#[derive(Default)]
pub struct Procs {
    list: Vec<Proc>,
}

impl Procs {
    /// Starts `exe ARGS` with stdin and stdout on /dev/null and stderr into `log`; its index.
    pub fn spawn(&mut self, name: &str, exe: &Path, args: &[OsString], log: &Path) -> anyhow::Result<usize> {
        let stderr = File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let parent = std::process::id() as libc::pid_t;
        let mut cmd = Command::new(exe);
        // Its own process group, so that a terminal's Ctrl-C reaches the demo alone, which then
        // stops every child the same way (SIGTERM, a deadline) instead of all of them racing it.
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr).process_group(0);
        // If the demo dies without stopping its children (`kill -9`), the kernel sends each one
        // SIGTERM. The death signal fires when the spawning *thread* exits: the demo spawns from
        // its only thread, the main one.
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe system calls (prctl, getppid, kill on itself); it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The demo died between fork and prctl: nobody will send the signal.
                if libc::getppid() != parent {
                    libc::kill(libc::getpid(), libc::SIGTERM);
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {name} ({})", exe.display()))?;
        self.list.push(Proc { name: name.to_string(), child, log: log.to_path_buf(), done: false });
        Ok(self.list.len() - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.list[i].child.id()
    }

    /// The first child found dead since the last call: which, how it ended, and its log's end.
    pub fn exited(&mut self) -> Option<String> {
        for p in self.list.iter_mut().filter(|p| !p.done) {
            let status = match p.child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.to_string(),
                Err(e) => format!("an unknown status ({e})"),
            };
            p.done = true;
            return Some(format!(
                "{} (pid {}) ended on its own with {status}; {}",
                p.name,
                p.child.id(),
                describe_log(&p.log)
            ));
        }
        None
    }

    /// The end of child `i`'s log, described for a message.
    pub fn describe_log(&self, i: usize) -> String {
        let p = &self.list[i];
        format!("{} (pid {}): {}", p.name, p.child.id(), describe_log(&p.log))
    }

    /// `KEY=value` from the first line of child `i`'s log that starts with `prefix`, once there is one.
    pub fn ready_field(&self, i: usize, prefix: &str, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(&self.list[i].log).ok()?;
        let line = text.lines().find(|l| l.starts_with(prefix))?;
        let key = format!("{key}=");
        line.split_whitespace().find_map(|w| w.strip_prefix(key.as_str())).map(str::to_string)
    }

    /// SIGTERM to every child still running; after [`STOP_TIMEOUT`], or at a second signal,
    /// SIGKILL to the ones left. Every child is reaped when this returns.
    pub async fn stop(&mut self, signals: &mut Signals) {
        for p in self.running() {
            // SAFETY: kill(2) on our own unreaped child's pid; it touches no memory of ours.
            unsafe {
                libc::kill(p.child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            let left: Vec<String> = self.running().into_iter().map(|p| p.name.clone()).collect();
            if left.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "sluice demo: {} did not stop within {}s of SIGTERM: killing",
                    left.join(", "),
                    STOP_TIMEOUT.as_secs()
                );
                break;
            }
            if let Some(name) = signals.pause(STOP_POLL_INTERVAL).await {
                eprintln!("sluice demo: {name} while stopping: killing {}", left.join(", "));
                break;
            }
        }
        self.kill_all();
    }

    /// Children not known to have exited (each is reaped by the look).
    fn running(&mut self) -> Vec<&mut Proc> {
        self.list.iter_mut().filter_map(|p| matches!(p.child.try_wait(), Ok(None)).then_some(p)).collect()
    }

    fn kill_all(&mut self) {
        for p in self.running() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

impl Drop for Procs {
    /// An early return or a panic must not leave children behind.
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The last lines of a log, or why there are none.
fn describe_log(log: &Path) -> String {
    match log_tail(log) {
        Ok(tail) if tail.is_empty() => format!("its log {} is empty", log.display()),
        Ok(tail) => format!("the end of its log {}:\n{tail}", log.display()),
        Err(e) => format!("cannot read its log {}: {e}", log.display()),
    }
}

/// The last [`LOG_TAIL_LINES`] lines of `log`, each indented.
fn log_tail(log: &Path) -> std::io::Result<String> {
    let mut f = File::open(log)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    Ok(tail.iter().map(|l| format!("    {l}\n")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_tail_keeps_the_last_lines_indented() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("x.log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, text).expect("write log");
        let tail = log_tail(&log).expect("read log");
        let expected: String = (11..=30).map(|i| format!("    line {i}\n")).collect();
        assert_eq!(tail, expected);
        std::fs::write(&log, "").expect("write log");
        assert!(describe_log(&log).ends_with("is empty"));
    }
}
