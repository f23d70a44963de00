//! Follow benchmark of `sluice supervise`'s HTTPS chunk server, with real processes on loopback:
//! the supervisor over `sluice gen --rate 20000`, and mTLS followers on the live chunk. It measures
//! write-to-client latency (p50/p99), supervisor CPU and RSS as followers grow; the CPU of an idle
//! supervisor with 200 followers; and the supervisor's peak RSS while one follower reads nothing.
//!
//! It asserts nothing: it prints Markdown with the targets of issue 3 beside the figures ("met" or
//! "NOT met"). It does not measure capture throughput (`bench/capture.py` does) and never leaves
//! loopback. Every process it starts is stopped when it ends, on error too.
//!
//! ```sh
//! cargo build --release -p sluice && cargo bench -p sluice --bench follow
//! cargo bench -p sluice --bench follow -- --smoke                  # followers 1,10; 2 s a step
//! cargo bench -p sluice --bench follow -- --followers 1,50 --seconds 5
//! ```

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use sluice_tls::Trust;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Events per second the generator writes while followers are measured (issue 3).
const GEN_RATE_PER_S: u32 = 20_000;
const FOLLOWERS_DEFAULT: [usize; 5] = [1, 10, 50, 200, 500];
const FOLLOWERS_SMOKE: [usize; 2] = [1, 10];
const STEP_DEFAULT: Duration = Duration::from_secs(10);
const STEP_SMOKE: Duration = Duration::from_secs(2);
/// Followers that time every line; the others only drain, so that a step of 500 does not spend
/// the client's one thread on parsing.
const PROBES_MAX: usize = 8;
const CONNECTIONS_MAX: usize = 4_000;
const IDLE_FOLLOWERS: usize = 200;
/// About 100 MB of generated events (160 bytes each on average).
const STALLED_EVENTS: u64 = 650_000;
const STALLED_EVENTS_SMOKE: u64 = 65_000;
/// The stalled runs put everything into one chunk: with 1 MB chunks the chunk a stalled client
/// follows closes after 1 MB, which would bound what the server could hold for it whatever it did.
const STALLED_CHUNK_BYTES: &str = "200MB";
/// "Flat": the stalled run's peak RSS within this of the same run without the stalled client. A
/// server that buffered for the client would need the ~100 MB written.
const STALLED_FLAT_TOLERANCE_BYTES: u64 = 8 << 20;
/// Time for the system to settle after followers connect, before a measurement starts.
const SETTLE: Duration = Duration::from_secs(1);
/// Bound on every wait for something that should happen soon (ready line, followers connecting),
/// generous for a loaded 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);
/// Bound on the stalled run's capture of all its events.
const CAPTURE_DEADLINE: Duration = Duration::from_secs(300);
/// How long a supervisor gets to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Pause before listing again when no newer chunk exists yet.
const RELIST_PAUSE: Duration = Duration::from_millis(2);
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Followers started at once; the next batch waits until these are following.
const CONNECT_BATCH: usize = 50;
/// Lines start with this (sluice gen's events and the supervisor's own alike).
const TIME_PREFIX: &[u8] = b"{\"time_ns\":";

const TARGET_P99_MS: f64 = 10.0;
const TARGET_P99_FOLLOWERS: usize = 200;
const TARGET_IDLE_CPU_PCT: f64 = 1.0;
const TARGET_GROWTH_KB: f64 = 64.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("follow bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Opts {
    followers: Vec<usize>,
    step: Duration,
    stalled_events: u64,
}

impl Opts {
    fn parse(mut args: impl Iterator<Item = String>) -> anyhow::Result<Opts> {
        const USAGE: &str = "use --followers 1,10,50,200,500 --seconds 10 or --smoke";
        let (mut smoke, mut followers, mut seconds) = (false, None, None);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "--smoke" => smoke = true,
                "--followers" => {
                    let list = args.next().with_context(|| format!("--followers needs a list: {USAGE}"))?;
                    let counts = list
                        .split(',')
                        .map(|n| n.trim().parse::<usize>().ok().filter(|&n| n > 0))
                        .collect::<Option<Vec<_>>>()
                        .with_context(|| format!("--followers {list:?} is not a list of positive counts: {USAGE}"))?;
                    followers = Some(counts);
                }
                "--seconds" => {
                    let text = args.next().with_context(|| format!("--seconds needs a number: {USAGE}"))?;
                    let s = text.parse::<f64>().ok().filter(|s| *s > 0.0 && s.is_finite());
                    seconds = Some(s.with_context(|| format!("--seconds {text:?} is not a positive number"))?);
                }
                other => bail!("unknown argument {other:?}: {USAGE}"),
            }
        }
        let mut followers =
            followers.unwrap_or_else(|| if smoke { FOLLOWERS_SMOKE.to_vec() } else { FOLLOWERS_DEFAULT.to_vec() });
        // Followers only grow from step to step.
        followers.sort_unstable();
        followers.dedup();
        let step = seconds.map(Duration::from_secs_f64).unwrap_or(if smoke { STEP_SMOKE } else { STEP_DEFAULT });
        let stalled_events = if smoke { STALLED_EVENTS_SMOKE } else { STALLED_EVENTS };
        Ok(Opts { followers, step, stalled_events })
    }
}

fn run() -> anyhow::Result<()> {
    let opts = Opts::parse(std::env::args().skip(1))?;
    let fd_limit = raise_fd_limit();
    let load_before = read_trimmed("/proc/loadavg");
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_sluice"));
    let dir = tempfile::Builder::new().prefix("sluice-follow-bench").tempdir().context("cannot make a temp dir")?;
    let certs = dir.path().join("certs");
    let out = Command::new(&exe)
        .args(["certs", "--client", "bench", "--dir"])
        .arg(&certs)
        .output()
        .context("cannot run sluice certs")?;
    ensure!(out.status.success(), "sluice certs failed: {}", String::from_utf8_lossy(&out.stderr));
    let tls = sluice_tls::client_config(
        &certs.join("bench.pem"),
        &certs.join("bench.key"),
        &Trust::CaFile(certs.join("ca.pem")),
    )
    .context("cannot load the bench client certificate")?;
    // One worker, so that the client competes as little as it can with the supervisor it measures.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let env = Env { exe, dir: dir.path().to_path_buf(), certs, tls, rt };

    let (baseline_kb, steps) = follow_steps(&env, &opts)?;
    let idle = idle_run(&env, &opts)?;
    eprintln!("stalled follower: the run without it, then with it ({} events)", opts.stalled_events);
    let without = stalled_run(&env, &opts, false)?;
    let with = stalled_run(&env, &opts, true)?;
    let load_after = read_trimmed("/proc/loadavg");

    let report = Report { opts: &opts, fd_limit, load_before, load_after, baseline_kb, steps, idle, without, with };
    print!("{}", report.markdown());
    Ok(())
}

/// What every part of the benchmark shares.
struct Env {
    exe: PathBuf,
    dir: PathBuf,
    certs: PathBuf,
    tls: Arc<ClientConfig>,
    rt: Runtime,
}

// ---------------------------------------------------------------------------------------------
// Part 1 and 2: followers on a supervisor writing 20,000 events/s.

struct Step {
    followers: usize,
    following: usize,
    connected: Option<f64>,
    samples: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    probe_lag_ms: Option<f64>,
    supervisor_cpu_pct: f64,
    client_cpu_pct: f64,
    served_mb_per_s: Option<f64>,
    needed_mb_per_s: Option<f64>,
    rss_kb: u64,
    chunks_followed: u64,
    errors: u64,
}

fn follow_steps(env: &Env, opts: &Opts) -> anyhow::Result<(u64, Vec<Step>)> {
    let rate = GEN_RATE_PER_S.to_string();
    let command: Vec<OsString> = vec![env.exe.clone().into(), "gen".into(), "--rate".into(), rate.into()];
    let connections = CONNECTIONS_MAX.to_string();
    let sup = Supervisor::start(env, "follow", &["--connections-max", &connections], &command)?;
    // The generator runs with nobody following: the baseline that growth is measured against.
    std::thread::sleep(SETTLE);
    let baseline_kb = status_kb(sup.pid(), "VmRSS")?;
    eprintln!("follow: supervisor pid {} ready, RSS {baseline_kb} kB with 0 followers", sup.pid());
    let client = Arc::new(Client::new(sup.chunks, Arc::clone(&env.tls)));
    let mut followers = Followers::new(Arc::clone(&client));
    let mut steps = Vec::new();
    for &n in &opts.followers {
        eprintln!("follow: {n} followers: connecting");
        let following = followers.grow_to(&env.rt, n);
        std::thread::sleep(SETTLE);
        let before = Sample::take(&sup)?;
        client.start_recording();
        std::thread::sleep(opts.step);
        let mut latencies = client.stop_recording();
        let probe_lag = client.probe_lag_worst(n.min(PROBES_MAX));
        let after = Sample::take(&sup)?;
        latencies.sort_unstable();
        let ms = |p: f64| percentile(&latencies, p).map(|ns| ns as f64 / 1e6);
        let wall_s = after.at.duration_since(before.at).as_secs_f64();
        let served = |m: &str| metric(m, "sluice_served_bytes_total");
        let written = |m: &str| metric(m, "sluice_written_bytes_total");
        let step = Step {
            followers: n,
            following,
            connected: metric(&after.metrics, "sluice_clients_connected"),
            samples: latencies.len(),
            p50_ms: ms(50.0),
            p99_ms: ms(99.0),
            max_ms: latencies.last().map(|&ns| ns as f64 / 1e6),
            probe_lag_ms: probe_lag.map(|d| d.as_secs_f64() * 1e3),
            supervisor_cpu_pct: cpu_pct(before.supervisor_ticks, after.supervisor_ticks, wall_s),
            client_cpu_pct: cpu_pct(before.client_ticks, after.client_ticks, wall_s),
            served_mb_per_s: served(&after.metrics)
                .zip(served(&before.metrics))
                .map(|(b1, b0)| (b1 - b0) / 1e6 / wall_s),
            needed_mb_per_s: written(&after.metrics)
                .zip(written(&before.metrics))
                .map(|(b1, b0)| (b1 - b0) / 1e6 / wall_s * n as f64),
            rss_kb: status_kb(sup.pid(), "VmRSS")?,
            chunks_followed: client.chunks_done.load(Ordering::Relaxed),
            errors: client.errors.load(Ordering::Relaxed),
        };
        eprintln!(
            "follow: {n} followers: p50 {} ms, p99 {} ms, supervisor CPU {:.1} %, RSS {} kB",
            fmt_opt(step.p50_ms, 2),
            fmt_opt(step.p99_ms, 2),
            step.supervisor_cpu_pct,
            step.rss_kb
        );
        if let Some(e) = client.last_error.lock().expect("no follower panics holding it").as_ref() {
            eprintln!("follow: last client error: {e}");
        }
        steps.push(step);
    }
    Ok((baseline_kb, steps))
}

/// CPU and metrics at one instant.
struct Sample {
    at: Instant,
    supervisor_ticks: u64,
    client_ticks: u64,
    metrics: String,
}

impl Sample {
    fn take(sup: &Supervisor) -> anyhow::Result<Sample> {
        let metrics = scrape(sup.metrics).unwrap_or_default();
        Ok(Sample {
            at: Instant::now(),
            supervisor_ticks: cpu_ticks(&sup.pid().to_string())?,
            client_ticks: cpu_ticks("self")?,
            metrics,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Part 3: an idle supervisor with 200 followers.

struct Idle {
    following: usize,
    connected: Option<f64>,
    cpu_pct: f64,
    baseline_kb: u64,
    rss_kb: u64,
}

fn idle_run(env: &Env, opts: &Opts) -> anyhow::Result<Idle> {
    let command: Vec<OsString> = vec!["sleep".into(), "3600".into()];
    let sup = Supervisor::start(env, "idle", &[], &command)?;
    std::thread::sleep(SETTLE);
    let baseline_kb = status_kb(sup.pid(), "VmRSS")?;
    let client = Arc::new(Client::new(sup.chunks, Arc::clone(&env.tls)));
    let mut followers = Followers::new(client);
    eprintln!("idle: {IDLE_FOLLOWERS} followers: connecting");
    let following = followers.grow_to(&env.rt, IDLE_FOLLOWERS);
    std::thread::sleep(SETTLE);
    let before = Sample::take(&sup)?;
    std::thread::sleep(opts.step);
    let after = Sample::take(&sup)?;
    let wall_s = after.at.duration_since(before.at).as_secs_f64();
    let idle = Idle {
        following,
        connected: metric(&after.metrics, "sluice_clients_connected"),
        cpu_pct: cpu_pct(before.supervisor_ticks, after.supervisor_ticks, wall_s),
        baseline_kb,
        rss_kb: status_kb(sup.pid(), "VmRSS")?,
    };
    eprintln!("idle: CPU {:.2} % with {following} followers", idle.cpu_pct);
    Ok(idle)
}

// ---------------------------------------------------------------------------------------------
// Part 4: one follower that reads nothing while ~100 MB are written.

struct Stalled {
    events: u64,
    bytes: Option<f64>,
    seconds: f64,
    hwm_kb: u64,
    rss_end_kb: u64,
    served_bytes: Option<f64>,
    followers_end: Option<f64>,
}

fn stalled_run(env: &Env, opts: &Opts, with_client: bool) -> anyhow::Result<Stalled> {
    let name = if with_client { "stalled" } else { "unstalled" };
    let go = env.dir.join(format!("{name}.go"));
    // The generator waits for the go file, so that the stalled client is attached before the
    // writing starts; afterwards the child sleeps, so that the supervisor stays up to be measured.
    let script = r#"while [ ! -e "$1" ]; do sleep 0.02; done; "$2" gen --count "$3"; exec sleep 3600"#;
    let command: Vec<OsString> = vec![
        "sh".into(),
        "-c".into(),
        script.into(),
        "sh".into(),
        go.clone().into(),
        env.exe.clone().into(),
        opts.stalled_events.to_string().into(),
    ];
    let sup = Supervisor::start(env, name, &["--chunk-bytes-max", STALLED_CHUNK_BYTES], &command)?;
    let stalled = if with_client {
        let stream = env.rt.block_on(stall(sup.chunks, Arc::clone(&env.tls)))?;
        wait_for("the server to follow for the stalled client", READY_DEADLINE, || {
            scrape(sup.metrics).ok().and_then(|m| metric(&m, "sluice_followers")).is_some_and(|n| n >= 1.0)
        })?;
        Some(stream)
    } else {
        None
    };
    let start = Instant::now();
    std::fs::write(&go, b"").with_context(|| format!("cannot write {}", go.display()))?;
    let events = opts.stalled_events as f64;
    wait_for("the stalled run's events to be captured", CAPTURE_DEADLINE, || {
        scrape(sup.metrics).ok().and_then(|m| metric(&m, "sluice_captured_events_total")).is_some_and(|n| n >= events)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    let metrics = scrape(sup.metrics)?;
    let run = Stalled {
        events: opts.stalled_events,
        bytes: metric(&metrics, "sluice_captured_bytes_total"),
        seconds,
        hwm_kb: status_kb(sup.pid(), "VmHWM")?,
        rss_end_kb: status_kb(sup.pid(), "VmRSS")?,
        served_bytes: metric(&metrics, "sluice_served_bytes_total"),
        followers_end: metric(&metrics, "sluice_followers"),
    };
    eprintln!("{name}: peak RSS {} kB after {seconds:.1} s", run.hwm_kb);
    // Its socket belongs to the client runtime: close it there.
    let _in_runtime = env.rt.enter();
    drop(stalled);
    Ok(run)
}

/// A connection that asks for the open chunk and then never reads a byte.
async fn stall(addr: SocketAddr, tls: Arc<ClientConfig>) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut sender = connect(addr, Arc::clone(&tls)).await?;
    let ids = list(&mut sender).await?;
    let id = ids.last().context("the listing has no open chunk")?;
    let mut stream = tls_connect(addr, tls).await?;
    let request = format!("GET /chunk/{id} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("cannot send the stalled request")?;
    stream.flush().await.context("cannot send the stalled request")?;
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// The followers.

/// State shared by the followers of one supervisor.
struct Client {
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
    /// Lines with a `time_ns` before this are not recorded; `u64::MAX` records nothing.
    step_start_ns: AtomicU64,
    /// Latencies (ns) recorded by the probes in the current step.
    samples: Mutex<Vec<u64>>,
    /// The newest `time_ns` each probe has received, recorded or not: how far behind it is, even
    /// when it is so far behind that it never reaches the lines of the current step.
    probe_newest_ns: [AtomicU64; PROBES_MAX],
    /// Followers that have had a chunk response at least once.
    following: AtomicUsize,
    chunks_done: AtomicU64,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Client {
    fn new(addr: SocketAddr, tls: Arc<ClientConfig>) -> Client {
        Client {
            addr,
            tls,
            step_start_ns: AtomicU64::new(u64::MAX),
            samples: Mutex::new(Vec::new()),
            probe_newest_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            following: AtomicUsize::new(0),
            chunks_done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    fn start_recording(&self) {
        self.samples.lock().expect("no follower panics holding it").clear();
        self.step_start_ns.store(wall_ns(), Ordering::Relaxed);
    }

    fn stop_recording(&self) -> Vec<u64> {
        self.step_start_ns.store(u64::MAX, Ordering::Relaxed);
        std::mem::take(&mut *self.samples.lock().expect("no follower panics holding it"))
    }

    /// A probe's frame: the latency of every line it completes. `carry` holds the start of a
    /// line that the previous frame cut.
    fn record(&self, probe: usize, data: &[u8], carry: &mut Vec<u8>) {
        let start_ns = self.step_start_ns.load(Ordering::Relaxed);
        let mut newest_ns = 0;
        // Every line completed by this frame arrived now.
        let now_ns = wall_ns();
        let mut found = Vec::new();
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            let time_ns = if carry.is_empty() {
                line_time_ns(&rest[..nl])
            } else {
                carry.extend_from_slice(&rest[..nl]);
                let t = line_time_ns(carry);
                carry.clear();
                t
            };
            if let Some(t) = time_ns {
                newest_ns = newest_ns.max(t);
                if t >= start_ns {
                    found.push(now_ns.saturating_sub(t));
                }
            }
            rest = &rest[nl + 1..];
        }
        carry.extend_from_slice(rest);
        self.probe_newest_ns[probe].fetch_max(newest_ns, Ordering::Relaxed);
        if !found.is_empty() {
            self.samples.lock().expect("no follower panics holding it").extend(found);
        }
    }

    /// How far behind the live data the furthest-behind of the first `probes` probes is, now.
    fn probe_lag_worst(&self, probes: usize) -> Option<Duration> {
        let oldest_ns = self.probe_newest_ns.iter().take(probes).map(|t| t.load(Ordering::Relaxed)).min()?;
        (oldest_ns > 0).then(|| Duration::from_nanos(wall_ns().saturating_sub(oldest_ns)))
    }

    fn failed(&self, err: &anyhow::Error) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().expect("no follower panics holding it") = Some(format!("{err:#}"));
    }
}

/// The follower tasks of one client; dropping it stops them (and closes their connections).
struct Followers {
    client: Arc<Client>,
    tasks: Vec<JoinHandle<()>>,
}

impl Followers {
    fn new(client: Arc<Client>) -> Followers {
        Followers { client, tasks: Vec::new() }
    }

    /// Start followers until there are `n`, a batch at a time; returns how many are following
    /// (fewer than `n` if some did not get there within [`READY_DEADLINE`]).
    fn grow_to(&mut self, rt: &Runtime, n: usize) -> usize {
        while self.tasks.len() < n {
            let batch_end = (self.tasks.len() + CONNECT_BATCH).min(n);
            while self.tasks.len() < batch_end {
                let probe = Some(self.tasks.len()).filter(|&i| i < PROBES_MAX);
                self.tasks.push(rt.spawn(follower(Arc::clone(&self.client), probe)));
            }
            let following = || self.client.following.load(Ordering::Relaxed) >= batch_end;
            if wait_for("followers to start", READY_DEADLINE, following).is_err() {
                break;
            }
        }
        self.client.following.load(Ordering::Relaxed)
    }
}

impl Drop for Followers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One follower: forever list, follow the next chunk to its proper end, and go on with the next.
/// Errors are counted, and the follower connects again.
/// `probe`: this follower's index among the probes, if it is one.
async fn follower(client: Arc<Client>, probe: Option<usize>) {
    let mut counted = false;
    // The last chunk read to its end; `None` starts at the newest.
    let mut done: Option<String> = None;
    loop {
        if let Err(e) = follow_connection(&client, probe, &mut counted, &mut done).await {
            client.failed(&e);
            tokio::time::sleep(RECONNECT_PAUSE).await;
        }
    }
}

async fn follow_connection(
    client: &Client,
    probe: Option<usize>,
    counted: &mut bool,
    done: &mut Option<String>,
) -> anyhow::Result<()> {
    let mut sender = connect(client.addr, Arc::clone(&client.tls)).await?;
    let mut carry = Vec::new();
    loop {
        let ids = list(&mut sender).await?;
        let next = match done {
            None => ids.last(),
            Some(done) => ids.iter().find(|id| chunk_order(id) > chunk_order(done)),
        };
        let Some(id) = next.cloned() else {
            tokio::time::sleep(RELIST_PAUSE).await;
            continue;
        };
        let response = get(&mut sender, &format!("/chunk/{id}")).await?;
        match response.status() {
            StatusCode::OK => {}
            // Discarded by retention before this follower got to it: go on with the next.
            StatusCode::NOT_FOUND => {
                *done = Some(id);
                continue;
            }
            status => bail!("GET /chunk/{id}: {status}"),
        }
        if !*counted {
            *counted = true;
            client.following.fetch_add(1, Ordering::Relaxed);
        }
        let mut body = response.into_body();
        carry.clear();
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("following chunk {id}"))?;
            if let (Some(probe), Some(data)) = (probe, frame.data_ref()) {
                client.record(probe, data, &mut carry);
            }
        }
        client.chunks_done.fetch_add(1, Ordering::Relaxed);
        *done = Some(id);
    }
}

/// Chunk ids sort chronologically by length, then bytewise.
fn chunk_order(id: &str) -> (usize, &[u8]) {
    (id.len(), id.as_bytes())
}

/// The `time_ns` a line starts with.
fn line_time_ns(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(TIME_PREFIX)?;
    let end = digits.iter().position(|b| !b.is_ascii_digit()).unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<ClientConfig>,
) -> anyhow::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let name = ServerName::try_from("localhost").context("localhost is a server name")?;
    tokio_rustls::TlsConnector::from(tls).connect(name, tcp).await.with_context(|| format!("TLS handshake with {addr}"))
}

/// An HTTP/1.1 connection over mTLS; its driver runs as a task that ends with the sender.
async fn connect(addr: SocketAddr, tls: Arc<ClientConfig>) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let stream = tls_connect(addr, tls).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, path: &str) -> anyhow::Result<Response<Incoming>> {
    sender.ready().await.context("connection closed")?;
    let request = Request::get(path).header(http::header::HOST, "localhost").body(Empty::new())?;
    sender.send_request(request).await.with_context(|| format!("GET {path}"))
}

async fn list(sender: &mut SendRequest<Empty<Bytes>>) -> anyhow::Result<Vec<String>> {
    let response = get(sender, "/chunk/").await?;
    ensure!(response.status() == StatusCode::OK, "GET /chunk/: {}", response.status());
    let body = response.into_body().collect().await.context("GET /chunk/ body")?.to_bytes();
    Ok(String::from_utf8_lossy(&body).split_whitespace().map(str::to_owned).collect())
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// A running `sluice supervise`; dropping it stops it (SIGTERM, then SIGKILL after
/// [`STOP_DEADLINE`], and then its command, which runs in a process group of its own).
struct Supervisor {
    child: Child,
    chunks: SocketAddr,
    metrics: SocketAddr,
}

impl Supervisor {
    fn start(env: &Env, name: &str, extra: &[&str], command: &[OsString]) -> anyhow::Result<Supervisor> {
        let certs = &env.certs;
        let child = Command::new(&env.exe)
            .arg("supervise")
            .arg("--data-dir")
            .arg(env.dir.join(name))
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--tls-cert"])
            .arg(certs.join("server.pem"))
            .arg("--tls-key")
            .arg(certs.join("server.key"))
            .arg("--allow-clients")
            .arg(certs.join("allowed-clients.txt"))
            .args(extra)
            .arg("--")
            .args(command)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start sluice supervise")?;
        let mut sup = Supervisor { child, chunks: unspecified(), metrics: unspecified() };
        let stderr = sup.child.stderr.take().expect("stderr was piped");
        let (tx, rx) = mpsc::channel();
        // Drain stderr for the whole run, so that the supervisor never blocks writing to it.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_DEADLINE;
        let mut seen = VecDeque::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(" ready stream=") => break line,
                Ok(line) => {
                    seen.push_back(line);
                    if seen.len() > 20 {
                        seen.pop_front();
                    }
                }
                Err(_) => {
                    let said = Vec::from(seen).join("\n");
                    bail!("sluice supervise ({name}) did not print its ready line; it said:\n{said}")
                }
            }
        };
        let field = |key: &str| -> anyhow::Result<SocketAddr> {
            let value = ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .with_context(|| format!("no {key} in the ready line {ready:?}"))?;
            value.parse().with_context(|| format!("{key}{value} in the ready line is not an address"))
        };
        sup.chunks = field("chunks=")?;
        sup.metrics = field("metrics=")?;
        Ok(sup)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let pid = self.pid();
        let command_pids = child_pids(pid);
        signal(pid as i32, libc::SIGTERM);
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL_EVERY),
                _ => break,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A supervisor killed cannot stop its command: do it here.
        for child in command_pids {
            signal(-(child as i32), libc::SIGKILL);
        }
    }
}

fn unspecified() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 0))
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a process (group) this benchmark started; it touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The pids of a process's children (its supervised command).
fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut pids = Vec::new();
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            pids.extend(text.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    pids
}

/// Followers, their connections and the supervisor's chunk files need more descriptors than the
/// usual soft limit of 1024: raise it to the hard limit (children inherit it). Returns the limit.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit write to and read from the struct we pass, which outlives them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Poll `cond` until it holds, or fail after `deadline`.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        ensure!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(POLL_EVERY);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// /proc and /metrics.

/// utime + stime of a process (all its threads), in clock ticks; `who` is a pid or "self".
fn cpu_ticks(who: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{who}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis,
    // where field 3 (state) comes first; utime and stime are fields 14 and 15.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).with_context(|| format!("{path} has no ')'"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (Some(utime), Some(stime)) = (field(11), field(12)) else { bail!("{path} has no utime and stime") };
    Ok(utime + stime)
}

/// CPU use between two tick counts, in % of one core.
fn cpu_pct(ticks_before: u64, ticks_after: u64, wall_s: f64) -> f64 {
    // SAFETY: sysconf reads a constant of the system; it touches no memory of ours.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks_after.saturating_sub(ticks_before) as f64 / per_s) / wall_s * 100.0
}

/// A `kB` line (`VmRSS`, `VmHWM`) of /proc/PID/status.
fn status_kb(pid: u32, key: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} in {path}"))
}

/// The text of `/metrics`, over plain HTTP on loopback.
fn scrape(addr: SocketAddr) -> anyhow::Result<String> {
    let mut tcp = std::net::TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_read_timeout(Some(READY_DEADLINE)).context("cannot set a read timeout")?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .context("cannot send GET /metrics")?;
    let mut text = String::new();
    tcp.read_to_string(&mut text).context("cannot read /metrics")?;
    Ok(text)
}

/// The value of one sample line, `name` followed by a space.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.max(1) - 1).copied()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// The report.

struct Report<'a> {
    opts: &'a Opts,
    fd_limit: u64,
    load_before: String,
    load_after: String,
    baseline_kb: u64,
    steps: Vec<Step>,
    idle: Idle,
    without: Stalled,
    with: Stalled,
}

impl Report<'_> {
    fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) -> std::fmt::Result {
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, m)| m.trim().to_string()))
            .unwrap_or_else(|| "unknown".to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_gib = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<f64>().ok())
            .map_or_else(|| "unknown".to_string(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0));
        let date = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
            .output()
            .ok()
            .map_or_else(|| "unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let kernel = read_trimmed("/proc/sys/kernel/osrelease");
        let step_s = self.opts.step.as_secs_f64();

        writeln!(out, "## sluice follow benchmark\n")?;
        writeln!(out, "- machine: {cores} cores ({model}), {mem_gib} memory, Linux {kernel}; {date}")?;
        writeln!(out, "- load average before: {}; after: {}", self.load_before, self.load_after)?;
        writeln!(
            out,
            "- everything shares these {cores} cores: the supervisor, `sluice gen --rate {GEN_RATE_PER_S}` and the \
             benchmark client (one tokio worker thread, mTLS over loopback); the machine is shared with other builds"
        )?;
        writeln!(
            out,
            "- each step: followers list `/chunk/`, follow the newest chunk and then every next one; {} of them \
             time each line (receive time − `time_ns`), the rest drain; {step_s:.0} s a step after {:.0} s to settle; \
             fd limit {}",
            PROBES_MAX,
            SETTLE.as_secs_f64(),
            self.fd_limit
        )?;
        writeln!(out, "- supervisor RSS with the generator running and 0 followers: {}\n", mib(self.baseline_kb))?;

        writeln!(
            out,
            "| followers | following | connected | latency samples | p50 ms | p99 ms | max ms | worst probe behind at end ms \
             | supervisor CPU % | client CPU % | served MB/s | needed MB/s | supervisor RSS | RSS growth KB/client \
             | chunks followed | client errors |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        for s in &self.steps {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {:.1} | {} | {} |",
                s.followers,
                s.following,
                fmt_opt(s.connected, 0),
                s.samples,
                fmt_opt(s.p50_ms, 2),
                fmt_opt(s.p99_ms, 2),
                fmt_opt(s.max_ms, 1),
                fmt_opt(s.probe_lag_ms, 1),
                s.supervisor_cpu_pct,
                s.client_cpu_pct,
                fmt_opt(s.served_mb_per_s, 1),
                fmt_opt(s.needed_mb_per_s, 1),
                mib(s.rss_kb),
                growth_kb(self.baseline_kb, s.rss_kb, s.followers),
                s.chunks_followed,
                s.errors,
            )?;
        }
        writeln!(
            out,
            "\n*served MB/s*: chunk bytes the supervisor sent; *needed MB/s*: bytes written to chunks × followers, \
             what they all need to keep up. *worst probe behind at end*: now − the newest `time_ns` the furthest-behind \
             probe has received; a step with no latency samples is one whose probes never reached the lines written \
             after it began. RSS growth is (RSS − RSS with 0 followers) / followers."
        )?;

        let idle = &self.idle;
        let idle_growth = growth_kb(idle.baseline_kb, idle.rss_kb, IDLE_FOLLOWERS);
        writeln!(out, "\n### Idle supervisor (`sleep 3600`, no events) with {IDLE_FOLLOWERS} followers\n")?;
        // SAFETY: sysconf reads a constant of the system; it touches no memory of ours.
        let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let tick_pct = 100.0 / ticks_per_s / step_s;
        writeln!(out, "CPU resolution (one clock tick of /proc/PID/stat): {tick_pct:.2} %.\n")?;
        writeln!(
            out,
            "| following | connected | CPU % of one core over {step_s:.0} s | RSS with 0 | RSS | growth KB/client |"
        )?;
        writeln!(out, "|---:|---:|---:|---:|---:|---:|")?;
        writeln!(
            out,
            "| {} | {} | {:.2} | {} | {} | {idle_growth:.1} |",
            idle.following,
            fmt_opt(idle.connected, 0),
            idle.cpu_pct,
            mib(idle.baseline_kb),
            mib(idle.rss_kb)
        )?;

        writeln!(
            out,
            "\n### Stalled follower (`sluice gen --count {}` as fast as it can, one chunk of up to {STALLED_CHUNK_BYTES})\n",
            self.with.events
        )?;
        writeln!(
            out,
            "| run | MB captured | seconds | peak RSS (VmHWM) | RSS at end | bytes served | followers at end |"
        )?;
        writeln!(out, "|---|---:|---:|---:|---:|---:|---:|")?;
        for (name, run) in [("without a client", &self.without), ("one client reading nothing", &self.with)] {
            writeln!(
                out,
                "| {name} | {} | {:.1} | {} | {} | {} | {} |",
                fmt_opt(run.bytes.map(|b| b / 1e6), 1),
                run.seconds,
                mib(run.hwm_kb),
                mib(run.rss_end_kb),
                fmt_opt(run.served_bytes, 0),
                fmt_opt(run.followers_end, 0),
            )?;
        }

        writeln!(out, "\n### Targets (issue 3)\n")?;
        writeln!(out, "| target | measured | |")?;
        writeln!(out, "|---|---|---|")?;
        let p99 = self.steps.iter().find(|s| s.followers == TARGET_P99_FOLLOWERS).and_then(|s| s.p99_ms);
        writeln!(
            out,
            "| p99 ≤ {TARGET_P99_MS} ms with {TARGET_P99_FOLLOWERS} followers | {} | {} |",
            p99.map_or_else(|| "no such step".to_string(), |v| format!("{v:.2} ms")),
            verdict(p99.map(|v| v <= TARGET_P99_MS))
        )?;
        writeln!(
            out,
            "| idle CPU < {TARGET_IDLE_CPU_PCT} % with {IDLE_FOLLOWERS} followers | {:.2} % | {} |",
            idle.cpu_pct,
            verdict(Some(idle.cpu_pct < TARGET_IDLE_CPU_PCT))
        )?;
        let extra_kb = self.with.hwm_kb as i64 - self.without.hwm_kb as i64;
        writeln!(
            out,
            "| RSS flat for a stalled follower (peak within {} MiB of the run without it) | {:+.1} MiB | {} |",
            STALLED_FLAT_TOLERANCE_BYTES >> 20,
            extra_kb as f64 / 1024.0,
            verdict(Some(extra_kb * 1024 <= STALLED_FLAT_TOLERANCE_BYTES as i64))
        )?;
        // Judged where it means most: the largest step and the idle run; with a few followers
        // the figure is mostly noise of the baseline divided by a small number.
        let largest = self.steps.last().map(|s| (s.followers, growth_kb(self.baseline_kb, s.rss_kb, s.followers)));
        let (largest_text, largest_ok) = match largest {
            Some((n, kb)) => (format!("{kb:.1} KB at {n} followers, "), kb <= TARGET_GROWTH_KB),
            None => (String::new(), true),
        };
        writeln!(
            out,
            "| RSS growth ≤ {TARGET_GROWTH_KB} KB per connected client | {largest_text}{idle_growth:.1} KB idle with {IDLE_FOLLOWERS} | {} |",
            verdict(Some(largest_ok && idle_growth <= TARGET_GROWTH_KB))
        )?;
        Ok(())
    }
}

fn growth_kb(baseline_kb: u64, rss_kb: u64, clients: usize) -> f64 {
    (rss_kb as f64 - baseline_kb as f64) / clients.max(1) as f64
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{v:.decimals$}"))
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}
