//! Helpers for end-to-end tests: run the real `sluice` binary in a temp dir, wait with deadlines,
//! read chunk files.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status.code().unwrap_or(-1);
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

/// All lines of all chunks in order.
pub fn all_lines(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (_, bytes, _) in chunks(dir) {
        out.extend(bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec));
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

/// A running `sluice store`.
pub struct StoreProc {
    pub child: Child,
    pub listen: String,
    _stderr: mpsc::Receiver<String>,
}

impl StoreProc {
    pub fn start(config: &Path) -> StoreProc {
        let mut cmd = sluice();
        cmd.arg("store").arg("--config").arg(config);
        let (child, ready, rx) = spawn_until_ready(cmd, "sluice store: ready");
        let listen = ready.split_whitespace().find_map(|w| w.strip_prefix("listen=")).expect("listen=").to_string();
        StoreProc { child, listen, _stderr: rx }
    }

    /// One metric value from /metrics (None if the scrape or the metric is missing).
    pub fn metric(&self, name: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", &format!("http://{}/metrics", self.listen)])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    pub fn signal(&self, sig: i32) {
        signal_child(&self.child, sig);
    }

    pub fn wait(&mut self) -> i32 {
        wait_exit(&mut self.child, "store")
    }
}

impl Drop for StoreProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The event ids of every line in a supervisor's data directory, computed from the chunk files.
pub fn expected_ids(data_dir: &Path) -> std::collections::HashSet<u128> {
    let stream = std::fs::read_to_string(data_dir.join("stream-id")).expect("stream-id");
    let stream = u128::from_str_radix(stream.trim(), 16).expect("hex stream id");
    let mut ids = std::collections::HashSet::new();
    for (id, bytes, _) in chunks(data_dir) {
        let chunk = id.to_string();
        let mut offset = 0u64;
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            if line.ends_with(b"\n") {
                ids.insert(sluice_event::event_id(stream, &chunk, offset, &line[..line.len() - 1]));
            }
            offset += line.len() as u64;
        }
    }
    ids
}

/// Read every live segment listed in the store's manifest with DuckDB (an independent Parquet
/// reader): returns (rows, the sluice_id of each row).
pub fn duckdb_ids(store_dir: &Path) -> (u64, Vec<u128>) {
    let manifest = std::fs::read_to_string(store_dir.join("manifest.json")).expect("manifest.json");
    let script = r#"
import duckdb, json, sys
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
paths = [d + "/" + s["path"] for s in m["segments"]]
if not paths:
    print(0); sys.exit(0)
con = duckdb.connect()
rows = con.execute("SELECT hex(sluice_id) FROM read_parquet(?, hive_partitioning=true, union_by_name=true)", [paths]).fetchall()
print(len(rows))
for (h,) in rows:
    print(h)
"#;
    assert!(manifest.contains("\"segments\""));
    let out = Command::new("python3").arg("-c").arg(script).arg(store_dir).output().expect("python3");
    assert!(out.status.success(), "duckdb failed (pip install duckdb): {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let mut lines = text.lines();
    let rows: u64 = lines.next().expect("row count").parse().expect("number");
    let ids = lines.map(|h| u128::from_str_radix(h, 16).expect("hex id")).collect();
    (rows, ids)
}
