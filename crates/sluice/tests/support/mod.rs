//! Helpers for end-to-end tests: run the real `sluice` binary in a temp dir, wait with deadlines,
//! read chunk files.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Generous: these tests run on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub fn sluice() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
}

/// Poll `cond` until it holds or the deadline passes.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Send `sig` to a child process.
fn signal_child(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid; it touches no memory of ours.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// Wait (with the deadline) for a child to exit; its exit code, or -1 for a signal.
fn wait_exit(child: &mut Child, what: &str) -> i32 {
    wait_status(child, what).code().unwrap_or(-1)
}

/// Wait (with the deadline) for a child to exit; how it ended.
fn wait_status(child: &mut Child, what: &str) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(start.elapsed() < DEADLINE, "{what} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Spawn `cmd` with stderr piped, forward its stderr lines to a channel, and wait for the first
/// line containing `marker`. Returns the child, that line and the channel with later lines.
fn spawn_until_ready(mut cmd: Command, marker: &str) -> (Child, String, mpsc::Receiver<String>) {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn sluice");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        match rx.recv_timeout(DEADLINE) {
            Ok(line) if line.contains(marker) => break line,
            Ok(_) => continue,
            Err(e) => panic!("no {marker:?} line from {cmd:?}: {e}"),
        }
    };
    (child, ready, rx)
}

/// Flags that make a supervisor serve chunks over mTLS on a free loopback port, with the files
/// `sluice certs` wrote into `certs` and the allow list `allow`.
pub fn tls_flags(certs: &Path, allow: &Path) -> Vec<String> {
    let path = |p: PathBuf| p.to_str().expect("utf-8 path").to_string();
    vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "none".into(),
        "--tls-cert".into(),
        path(certs.join("server.pem")),
        "--tls-key".into(),
        path(certs.join("server.key")),
        "--allow-clients".into(),
        path(allow.to_path_buf()),
    ]
}

/// A running `sluice supervise`.
pub struct Supervisor {
    pub child: Child,
    pub data_dir: PathBuf,
    pub ready: String,
    stderr_lines: mpsc::Receiver<String>,
}

impl Supervisor {
    /// Start `sluice supervise --data-dir DIR ARGS... -- COMMAND...` and wait for its ready line.
    pub fn start(data_dir: &Path, args: &[&str], command: &[&str]) -> Supervisor {
        let mut cmd = sluice();
        cmd.arg("supervise").arg("--data-dir").arg(data_dir).args(args).arg("--").args(command);
        let (child, ready, stderr_lines) = spawn_until_ready(cmd, "ready stream=");
        Supervisor { child, data_dir: data_dir.to_path_buf(), ready, stderr_lines }
    }

    /// A `key=value` field of the ready line.
    pub fn ready_field(&self, key: &str) -> String {
        self.ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.ready))
            .to_string()
    }

    pub fn signal(&self, sig: i32) {
        signal_child(&self.child, sig);
    }

    /// Wait for exit; returns the exit code.
    pub fn wait(&mut self) -> i32 {
        wait_exit(&mut self.child, "supervisor")
    }

    /// Everything it printed on stderr after the ready line, so far.
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr_lines.try_iter().collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chunk files in id order: (id, bytes, closed).
pub fn chunks(dir: &Path) -> Vec<(sluice_chunk::ChunkId, Vec<u8>, bool)> {
    let mut out = Vec::new();
    for ent in std::fs::read_dir(dir).expect("read data dir") {
        let name = ent.expect("entry").file_name().to_string_lossy().into_owned();
        let (id, closed) = if let Some(id) = name.strip_suffix(".chunk") {
            (id.to_string(), true)
        } else if let Some(id) = name.strip_suffix(".open") {
            (id.to_string(), false)
        } else {
            continue;
        };
        let id = sluice_chunk::ChunkId::parse(&id).expect("chunk file names are valid ids");
        // A file can vanish between listing and reading (retention): skip it.
        if let Ok(bytes) = std::fs::read(dir.join(&name)) {
            out.push((id, bytes, closed));
        }
    }
    out.sort_by_key(|c| c.0);
    out
}

/// Every complete line of every chunk. A chunk being written may end in part of a line (the
/// supervisor serves only whole lines; a test reading the file directly must skip the rest).
pub fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (_, bytes, _) in chunks(dir) {
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        out.extend(bytes[..whole].split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
    }
    out
}

pub fn is_own(line: &[u8]) -> bool {
    contains(line, b"\"sluice_origin\":\"supervisor\"")
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Own events of a kind, as text.
pub fn own_events(dir: &Path, kind: &str) -> Vec<String> {
    let pat = format!("\"sluice_event\":\"{kind}\"");
    all_lines(dir)
        .into_iter()
        .filter(|l| is_own(l) && contains(l, pat.as_bytes()))
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .collect()
}

/// Output of `sluice gen ARGS`.
pub fn gen_output(args: &[&str]) -> Vec<u8> {
    let out = sluice().arg("gen").args(args).output().expect("run sluice gen");
    assert!(out.status.success(), "sluice gen failed: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `sluice store --config CONFIG ARGS...` with `env` set, and no core file if it aborts (a crash
/// test makes it abort on purpose).
fn store_command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = sluice();
    cmd.arg("store").arg("--config").arg(config).args(args).envs(env.iter().copied());
    // SAFETY: setrlimit(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    cmd
}

/// A running `sluice store`.
pub struct StoreProc {
    pub child: Child,
    pub listen: String,
    stderr_lines: mpsc::Receiver<String>,
}

impl StoreProc {
    pub fn start(config: &Path) -> StoreProc {
        StoreProc::start_with(config, &[], &[])
    }

    /// Start with extra flags and environment variables, and wait for the ready line.
    pub fn start_with(config: &Path, args: &[&str], env: &[(&str, &str)]) -> StoreProc {
        let cmd = store_command(config, args, env);
        let (child, ready, rx) = spawn_until_ready(cmd, "sluice store: ready");
        let listen = ready.split_whitespace().find_map(|w| w.strip_prefix("listen=")).expect("listen=").to_string();
        StoreProc { child, listen, stderr_lines: rx }
    }

    /// Everything it printed on stderr after the ready line, so far (each line once).
    pub fn stderr_so_far(&self) -> Vec<String> {
        self.stderr_lines.try_iter().collect()
    }

    /// The whole /metrics page (empty if the scrape fails).
    pub fn metrics(&self) -> String {
        Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("http://{}/metrics", self.listen)])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .unwrap_or_default()
    }

    /// `GET /healthz`: the status code and the body (code 0 if the request fails).
    pub fn healthz(&self) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", &format!("http://{}/healthz", self.listen)])
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .unwrap_or_default();
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// One metric value from /metrics (None if the scrape or the metric is missing).
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_in(&self.metrics(), name)
    }

    pub fn signal(&self, sig: i32) {
        signal_child(&self.child, sig);
    }

    pub fn wait(&mut self) -> i32 {
        wait_exit(&mut self.child, "store")
    }

    /// Wait for exit; how it ended (a signal included).
    pub fn wait_status(&mut self) -> ExitStatus {
        wait_status(&mut self.child, "store")
    }
}

/// One metric value (`name` with its labels, if any) in a /metrics page.
pub fn metric_in(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Run `sluice store` until it ends by itself (within the deadline): how it ended and its stderr.
pub fn run_store_until_exit(config: &Path, args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String) {
    let mut child = store_command(config, args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice store");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the store did not end by itself; stderr:\n{}", reader.join().expect("stderr reader"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stderr reader"))
}

/// Paths (relative to `store_dir`, `/`-separated) of the live segments `manifest.json` lists.
pub fn manifest_segments(store_dir: &Path) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(store_dir.join("manifest.json")).expect("manifest.json");
    let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    manifest["segments"]
        .as_array()
        .expect("a segments array")
        .iter()
        .map(|s| s["path"].as_str().expect("a segment path").to_string())
        .collect()
}

/// Files under `store_dir/segments/` that the manifest does not list (crash leftovers).
pub fn unlisted_segment_files(store_dir: &Path) -> Vec<String> {
    let live = manifest_segments(store_dir);
    let mut out = Vec::new();
    let mut stack = vec![store_dir.join("segments")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read segments dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(store_dir).expect("below the store dir");
            let rel: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
            let rel = rel.join("/");
            // A segment's term-index sidecar is live with it (same path, `.terms`).
            let owner = rel.strip_suffix(".terms").map(|stem| format!("{stem}.parquet"));
            if !live.contains(&rel) && !owner.is_some_and(|p| live.contains(&p)) {
                out.push(rel);
            }
        }
    }
    out
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event ids of every line in a supervisor's data directory, computed from the chunk files.
pub fn expected_ids(data_dir: &Path) -> std::collections::HashSet<u128> {
    expected_ids_while(data_dir, |_| true)
}

/// The event ids of the lines of a supervisor's data directory, in order, as long as `keep` says
/// yes (it sees each line without its newline).
pub fn expected_ids_while(data_dir: &Path, mut keep: impl FnMut(&[u8]) -> bool) -> std::collections::HashSet<u128> {
    let stream = std::fs::read_to_string(data_dir.join("stream-id")).expect("stream-id");
    let stream = u128::from_str_radix(stream.trim(), 16).expect("hex stream id");
    let mut ids = std::collections::HashSet::new();
    for (id, bytes, _) in chunks(data_dir) {
        let chunk = id.to_string();
        let mut offset = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if let Some(line) = line.strip_suffix(b"\n") {
                if !keep(line) {
                    return ids;
                }
                ids.insert(sluice_event::event_id(stream, &chunk, offset, line));
            }
            offset += line.len() as u64;
        }
    }
    ids
}

/// Run `sql` with DuckDB over a view `e` of the live segments listed in the store's manifest; each
/// result row as its values joined by tabs. No live segment: no rows.
pub fn duckdb_query(store_dir: &Path, sql: &str) -> Vec<String> {
    let script = r#"
import duckdb, json, os, sys
d = sys.argv[1]
# No manifest yet: the store has not flushed once, so no segment is live.
if not os.path.exists(d + "/manifest.json"):
    sys.exit(0)
m = json.load(open(d + "/manifest.json"))
paths = [d + "/" + s["path"] for s in m["segments"]]
if not paths:
    sys.exit(0)
con = duckdb.connect()
con.execute("CREATE VIEW e AS SELECT * FROM read_parquet(%r, hive_partitioning=true, union_by_name=true)" % paths)
for row in con.execute(sys.argv[2]).fetchall():
    print("\t".join(str(v) for v in row))
"#;
    let out = Command::new("python3").arg("-c").arg(script).arg(store_dir).arg(sql).output().expect("python3");
    assert!(out.status.success(), "duckdb failed (pip install duckdb): {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").lines().map(str::to_string).collect()
}

/// Read every live segment listed in the store's manifest with DuckDB (an independent Parquet
/// reader): returns (rows, the sluice_id of each row).
pub fn duckdb_ids(store_dir: &Path) -> (u64, Vec<u128>) {
    let ids: Vec<u128> = duckdb_query(store_dir, "SELECT hex(sluice_id) FROM e")
        .iter()
        .map(|h| u128::from_str_radix(h, 16).expect("hex id"))
        .collect();
    (ids.len() as u64, ids)
}
