//! Starting the supervised child, signalling it, and the restart policy with capped exponential
//! backoff. Not here: reading its output (`capture.rs`) or the main loop (`supervise.rs`).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::time::Duration;

/// When the child is started again after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        match s {
            "always" => Ok(RestartPolicy::Always),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "never" => Ok(RestartPolicy::Never),
            _ => Err(format!("unknown restart policy {s:?}: use always, on-failure or never")),
        }
    }

    /// Whether a child that ended with `exit` is started again.
    pub fn restarts(self, exit: Exit) -> bool {
        match self {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !exit.success(),
            RestartPolicy::Never => false,
        }
    }
}

/// How the child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_status(s: ExitStatus) -> Exit {
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Code(-1),
        }
    }
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
    /// The exit code a shell would show: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Capped exponential backoff that forgets failures once the child has run for a while.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub reset_after: Duration,
    attempt: u32,
}

pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(30);
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, reset_after: BACKOFF_RESET_AFTER, attempt: 0 }
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.attempt = 0;
        }
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.attempt = self.attempt.saturating_add(1);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Restarts so far in the current run of failures.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

/// The command line to run.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
}

impl ChildSpec {
    /// The command as one line of text, for events.
    pub fn display(&self) -> String {
        let mut s = self.program.to_string_lossy().into_owned();
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }
}

/// Start the child in its own process group (so that a terminal's Ctrl-C reaches only the
/// supervisor, which forwards it once), stdin from /dev/null, stdout and stderr piped.
///
/// If the supervisor dies without stopping it (`kill -9`), the kernel sends the child SIGTERM
/// (`PR_SET_PDEATHSIG`): a child that never writes would otherwise outlive it forever. The death
/// signal fires when the *thread* that spawned the child exits, so call this from a thread that
/// lives as long as the supervisor (the main thread does).
pub fn spawn(spec: &ChildSpec) -> std::io::Result<(Child, ChildStdout, ChildStderr)> {
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, kill on itself); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The supervisor died between fork and prctl: nobody will send the signal.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stderr = child.stderr.take().expect("stderr was piped");
    widen_pipe(&stdout);
    Ok((child, stdout, stderr))
}

/// Bytes of the stdout pipe: a busy child fills it while capture works on the previous read,
/// and the supervisor wakes less often. Linux caps it at /proc/sys/fs/pipe-max-size (1 MiB by
/// default); a refusal leaves the default 64 KiB, which only costs speed.
pub const PIPE_BYTES: i32 = 1024 * 1024;

fn widen_pipe(pipe: &ChildStdout) {
    use std::os::fd::AsRawFd;
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; no memory is passed.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES);
    }
}

/// Send `signal` to the child's whole process group (a shell's children included).
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it touches no memory of ours.
    // An error (the group is already gone) needs no handling.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let short = Duration::from_millis(5);
        let delays: Vec<u128> = (0..6).map(|_| b.next_delay(short).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.next_delay(Duration::from_secs(11)), Duration::from_millis(100));
    }

    #[test]
    fn restart_policy_table() {
        let ok = Exit::Code(0);
        let fail = Exit::Code(3);
        let killed = Exit::Signal(9);
        assert!(RestartPolicy::Always.restarts(ok));
        assert!(!RestartPolicy::OnFailure.restarts(ok));
        assert!(RestartPolicy::OnFailure.restarts(fail) && RestartPolicy::OnFailure.restarts(killed));
        assert!(!RestartPolicy::Never.restarts(fail));
        assert_eq!(killed.shell_code(), 137);
        assert!(RestartPolicy::parse("sometimes").is_err());
    }
}
