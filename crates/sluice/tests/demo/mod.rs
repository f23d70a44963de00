//! `sluice demo` end to end: the real binary starts its supervisors and store, prints export lines
//! a shell can eval, answers `sluice query` and `sluice search` with them (PII masked for the
//! viewer token), and leaves no process and no directory behind.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::support::{sluice, wait_until, DEADLINE};

/// A running `sluice demo` with its stdout and stderr read line by line.
struct Demo {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    seen: Vec<String>,
}

/// Lines of `pipe`, sent one by one to a channel.
fn lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Demo {
    fn start(args: &[&str]) -> Demo {
        let mut child = sluice()
            .arg("demo")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice demo");
        let stdout = lines(child.stdout.take().expect("piped"));
        let stderr = lines(child.stderr.take().expect("piped"));
        Demo { child, stdout, stderr, seen: Vec::new() }
    }

    /// The first stderr line (already seen or coming) that contains `marker`.
    fn stderr_line(&mut self, marker: &str) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(marker)) {
            return line.clone();
        }
        let start = Instant::now();
        loop {
            let left = DEADLINE.saturating_sub(start.elapsed());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(e) => panic!("no stderr line with {marker:?} ({e}); stderr so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The two export lines on stdout: (SLUICE_URL, SLUICE_TOKEN).
    fn exports(&mut self) -> (String, String) {
        let mut next = || {
            self.stdout
                .recv_timeout(DEADLINE)
                .unwrap_or_else(|e| panic!("no export line on stdout ({e}); stderr:\n{}", self.drain_stderr()))
        };
        let url = next();
        let token = next();
        let url = url.strip_prefix("export SLUICE_URL=").unwrap_or_else(|| panic!("{url:?}")).to_string();
        let token = token.strip_prefix("export SLUICE_TOKEN=").unwrap_or_else(|| panic!("{token:?}")).to_string();
        assert!(token.len() >= 16 && token.bytes().all(|b| b.is_ascii_alphanumeric()), "{token:?}");
        (url, token)
    }

    /// Every stderr line so far and the ones that come until the pipe closes or a short wait ends.
    fn drain_stderr(&mut self) -> String {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }

    /// The value after `key=` in the first stderr line containing `marker`.
    fn field(&mut self, marker: &str, key: &str) -> String {
        let line = self.stderr_line(marker);
        let key = format!("{key}=");
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key.as_str()))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
            .to_string()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (with the deadline) for the demo to exit.
    fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "the demo did not exit; stderr:\n{}", self.drain_stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    /// A failed test still stops the demo the polite way, so it removes its directory.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let start = Instant::now();
            while matches!(self.child.try_wait(), Ok(None)) && start.elapsed() < DEADLINE {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback address that was free a moment ago.
fn free_listen() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").to_string()
}

/// Whether `pid` is a live process (a zombie is dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The pids of the live children of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// `sluice ARGS -o json` against the demo's store: the rows, or None if the command failed.
fn rows(url: &str, token: &str, args: &[&str]) -> Option<Vec<serde_json::Value>> {
    let out = sluice()
        .args(args)
        .args(["-o", "json"])
        .env("SLUICE_URL", url)
        .env("SLUICE_TOKEN", token)
        .env_remove("SLUICE_TOKEN_FILE")
        .env_remove("SLUICE_CA")
        .output()
        .expect("run sluice");
    if !out.status.success() {
        return None;
    }
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
    Some(rows.as_array().expect("an array of rows").clone())
}

#[test]
fn demo_serves_events_of_every_source_and_stops_cleanly_on_sigterm() {
    let listen = free_listen();
    let mut demo = Demo::start(&["--listen", &listen, "--rate", "100"]);
    let (url, token) = demo.exports();
    assert_eq!(url, format!("http://{listen}"));
    let dir = PathBuf::from(demo.stderr_line("working directory ").rsplit(' ').next().expect("a path"));
    let viewer = demo.field("SLUICE_TOKEN=", "SLUICE_TOKEN");
    assert_ne!(viewer, token);
    let mut pids: Vec<u32> =
        (1..=3).map(|i| demo.field(&format!("source web-{i} "), "pid").parse().expect("a pid")).collect();
    let supervisors = pids.clone();
    pids.push(demo.field("store pid=", "pid").parse().expect("a pid"));
    assert!(dir.join("tokens.toml").is_file() && dir.join("store.toml").is_file(), "{}", dir.display());
    // The generators, one under each supervisor.
    wait_until("a generator under each supervisor", || supervisors.iter().all(|&s| !children_of(s).is_empty()));
    pids.extend(supervisors.iter().flat_map(|&s| children_of(s)));

    // Events of every source are queryable with the printed URL and token.
    let sql = "SELECT sluice_source AS source, count(*) AS n FROM events WHERE sluice_source IS NOT NULL GROUP BY 1 ORDER BY 1";
    let mut last = None;
    wait_until("events of every source in the store", || {
        let got = rows(&url, &token, &["query", sql]);
        let sources: Vec<String> = got
            .iter()
            .flatten()
            .filter(|r| r["n"].as_u64().is_some_and(|n| n > 0))
            .filter_map(|r| r["source"].as_str().map(str::to_string))
            .collect();
        last = got;
        sources == ["web-1", "web-2", "web-3"]
    });
    // The example commands it printed work as pasted.
    for marker in [" search 'level:ERROR'", " query \"SELECT"] {
        let example = demo.stderr_line(marker);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} -o json", example.trim()))
            .env("SLUICE_URL", &url)
            .env("SLUICE_TOKEN", &token)
            .output()
            .expect("run sh");
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON array");
        assert!(rows.is_array(), "{example}: {rows}");
        if marker.contains("query") {
            assert!(
                rows.as_array().is_some_and(|r| !r.is_empty() && r[0]["rpc_method"].is_string()),
                "{example}: {rows}"
            );
        }
    }
    // The full token sees personal data; the viewer token sees it masked.
    let search = ["search", "pii_uid:*", "--since", "15m", "--limit", "20"];
    wait_until("searches answer with pii_uid values", || {
        rows(&url, &token, &search).is_some_and(|r| !r.is_empty())
            && rows(&url, &viewer, &search).is_some_and(|r| !r.is_empty())
    });
    let plain = rows(&url, &token, &search).expect("a search with the full token");
    assert!(plain.iter().all(|r| r["pii_uid"].as_str().is_some_and(|v| v.starts_with('U'))), "{plain:?} ({last:?})");
    let masked = rows(&url, &viewer, &search).expect("a search with the viewer token");
    assert!(masked.iter().all(|r| r["pii_uid"].as_str().is_some_and(|v| v.starts_with("pii:"))), "{masked:?}");

    demo.signal(libc::SIGTERM);
    let status = demo.wait();
    let stderr = demo.drain_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    for pid in pids {
        assert!(!alive(pid), "process {pid} outlived the demo; stderr:\n{stderr}");
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn demo_names_the_process_that_died_stops_the_rest_and_fails() {
    let listen = free_listen();
    let mut demo = Demo::start(&["--listen", &listen, "--sources", "2", "--rate", "50"]);
    demo.exports();
    let dir = PathBuf::from(demo.stderr_line("working directory ").rsplit(' ').next().expect("a path"));
    let victim: u32 = demo.field("source web-2 ", "pid").parse().expect("a pid");
    let others: Vec<u32> = [demo.field("source web-1 ", "pid"), demo.field("store pid=", "pid")]
        .iter()
        .map(|p| p.parse().expect("a pid"))
        .collect();
    // SAFETY: kill(2) on a pid the demo reported; it touches no memory of ours.
    unsafe {
        libc::kill(victim as i32, libc::SIGKILL);
    }
    let status = demo.wait();
    let stderr = demo.drain_stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("web-2 (pid {victim}) ended on its own")), "{stderr}");
    assert!(stderr.contains("sluice supervise: ready"), "the end of its log is shown: {stderr}");
    for pid in others {
        assert!(!alive(pid), "process {pid} outlived the demo; stderr:\n{stderr}");
    }
    assert!(!dir.exists(), "{} is left behind", dir.display());
}

#[test]
fn demo_says_clearly_when_its_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let mut demo = Demo::start(&["--listen", &addr]);
    let status = demo.wait();
    let stderr = demo.drain_stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{addr} is taken")) && stderr.contains("--listen 127.0.0.1:"), "{stderr}");
    assert!(!stderr.contains("working directory"), "nothing was created: {stderr}");
}

#[test]
fn demo_stops_by_itself_after_its_duration_and_keeps_the_directory_asked_for() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let keep = tmp.path().join("kept");
    let listen = free_listen();
    let keep_arg = keep.to_str().expect("utf-8 path");
    let mut demo = Demo::start(&["--listen", &listen, "--sources", "1", "--duration", "1s", "--keep", keep_arg]);
    let (url, _) = demo.exports();
    assert_eq!(url, format!("http://{listen}"));
    let status = demo.wait();
    let stderr = demo.drain_stderr();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let kept = |p: &str| -> bool { Path::new(&keep).join(p).exists() };
    for p in [
        "certs/ca.pem",
        "certs/allowed-clients.txt",
        "tokens.toml",
        "store.toml",
        "logs/store.log",
        "logs/web-1.log",
        "web-1",
        "store",
    ] {
        assert!(kept(p), "{p} is not kept; stderr:\n{stderr}");
    }
    // The directory is the demo's alone: a second run refuses it rather than mixing two demos.
    let mut again = Demo::start(&["--listen", &free_listen(), "--keep", keep_arg]);
    let status = again.wait();
    let stderr = again.drain_stderr();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
}
