//! The supervise loop: opens the chunk log, starts the listeners, runs the child with its restart
//! policy, and turns signals into actions (SIGTERM/SIGINT: forward and shut down; SIGHUP: reload
//! TLS files; SIGQUIT: write a state dump event). One task owns the child; capture runs on
//! blocking threads; a maintenance thread does group commit, chunk age and retention.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_chunk::{ChunkLog, Clock, DiskStorage, FsyncPolicy, LogConfig, SystemClock};
use sluice_event::{Limits, OwnEvent};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::capture::{capture, Pipe};
use crate::child::{self, Backoff, ChildSpec, Exit, RestartPolicy};
use crate::metrics::Metrics;
use crate::serve::ServeConfig;

/// How long capture threads may keep reading after the child is gone (a grandchild can hold the pipe).
pub const CAPTURE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Default grace between forwarding SIGTERM and SIGKILL.
pub const STOP_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Retention and chunk age are checked this often.
const TICK_PERIOD: Duration = Duration::from_secs(1);

/// The chunk listener's TLS files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub allow_clients: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    pub data_dir: PathBuf,
    pub log: LogConfig,
    pub child: ChildSpec,
    pub restart: RestartPolicy,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub stop_timeout: Duration,
    /// None: serve no chunks.
    pub listen: Option<SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub metrics_listen: Option<SocketAddr>,
    pub serve: ServeConfig,
}

/// What is up once start-up is done.
#[derive(Debug, Clone)]
pub struct Ready {
    pub stream_id: String,
    pub chunks_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub repaired: usize,
    pub strays: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("{0}")]
    Log(#[from] sluice_chunk::LogError),
    #[error("{path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Tls(String),
    #[error("cannot listen on {addr}: {source} (choose another address with the flag, or stop what uses it)")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the chunk listener needs --tls-cert, --tls-key and --allow-clients (make them with `sluice certs`), or --listen none to serve nothing")]
    TlsMissing,
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
    quit: Signal,
}

enum Wake {
    Exited(Exit),
    Shutdown(i32),
}

/// Run until SIGTERM/SIGINT, or until the child exits for good; returns the exit code.
pub async fn run(cfg: SuperviseConfig, on_ready: impl FnOnce(&Ready)) -> Result<i32, SuperviseError> {
    // Refuse bad settings before touching the disk.
    cfg.log.validate()?;
    if cfg.listen.is_some() && cfg.tls.is_none() {
        return Err(SuperviseError::TlsMissing);
    }
    let storage = DiskStorage::open(&cfg.data_dir)
        .map_err(|source| SuperviseError::DataDir { path: cfg.data_dir.clone(), source })?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (log, report) = ChunkLog::open(storage, cfg.log.clone(), clock.clone())?;
    let log = Arc::new(log);
    let metrics = Arc::new(Metrics::default());
    let limits = Limits { line_bytes_max: cfg.log.line_bytes_max };

    let mut signals = Signals {
        term: signal(SignalKind::terminate()).map_err(SuperviseError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(SuperviseError::Signals)?,
        hup: signal(SignalKind::hangup()).map_err(SuperviseError::Signals)?,
        quit: signal(SignalKind::quit()).map_err(SuperviseError::Signals)?,
    };

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (reload_tx, reload_rx) = watch::channel(0u64);
    let mut tasks = Vec::new();
    let mut tls = None;
    let mut chunks_addr = None;
    if let Some(addr) = cfg.listen {
        let files = cfg.tls.as_ref().ok_or(SuperviseError::TlsMissing)?;
        let server_tls = sluice_tls::ServerTls::load(&files.cert, &files.key, &files.allow_clients)
            .map_err(|e| SuperviseError::Tls(e.to_string()))?;
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| SuperviseError::Bind { addr, source })?;
        chunks_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(crate::serve::serve_chunks(
            listener,
            server_tls.clone(),
            log.clone(),
            metrics.clone(),
            cfg.serve.clone(),
            reload_rx.clone(),
            shutdown_rx.clone(),
        )));
        tls = Some(server_tls);
    }
    let mut metrics_addr = None;
    if let Some(addr) = cfg.metrics_listen {
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| SuperviseError::Bind { addr, source })?;
        metrics_addr = listener.local_addr().ok();
        tasks.push(tokio::spawn(crate::ops::serve_ops(listener, log.clone(), metrics.clone(), shutdown_rx.clone())));
    }

    let maintenance = spawn_maintenance(log.clone(), cfg.log.fsync);
    let _ = log.append_own(|b, now| {
        let mut e = OwnEvent::new(b, now, "supervisor_started")
            .u64("pid", std::process::id() as u64)
            .str("version", env!("CARGO_PKG_VERSION"))
            .str("stream", &log.stream_id().to_string())
            .str("data_dir", &cfg.data_dir.display().to_string())
            .str("command", &cfg.child.display());
        if let Some(a) = chunks_addr {
            e = e.str("listen", &a.to_string());
        }
        e.finish()
    });
    on_ready(&Ready {
        stream_id: log.stream_id().to_string(),
        chunks_addr,
        metrics_addr,
        repaired: report.repaired.len(),
        strays: report.strays.clone(),
    });

    let mut backoff = Backoff::new(cfg.backoff_initial, cfg.backoff_max);
    let code = loop {
        let started = Instant::now();
        let wake = match child::spawn(&cfg.child) {
            Err(e) => {
                let _ = log.append_own(|b, now| {
                    OwnEvent::new(b, now, "child_spawn_failed")
                        .str("command", &cfg.child.display())
                        .str("error", &e.to_string())
                        .finish()
                });
                Wake::Exited(Exit::Code(127))
            }
            Ok((mut proc, stdout, stderr)) => {
                let pid = proc.id();
                metrics.child_starts.fetch_add(1, Ordering::Relaxed);
                metrics.child_running.store(1, Ordering::Relaxed);
                let _ = log.append_own(|b, now| {
                    OwnEvent::new(b, now, "child_started")
                        .u64("pid", pid as u64)
                        .str("command", &cfg.child.display())
                        .finish()
                });
                let captures = [
                    spawn_capture(stdout, Pipe::Stdout, &log, &metrics, limits, &clock),
                    spawn_capture(stderr, Pipe::Stderr, &log, &metrics, limits, &clock),
                ];
                let (exit_tx, mut exit_rx) = oneshot::channel();
                std::thread::Builder::new()
                    .name("sluice-wait".into())
                    .spawn(move || {
                        let status = proc.wait().map(Exit::from_status).unwrap_or(Exit::Code(-1));
                        let _ = exit_tx.send(status);
                    })
                    .expect("a thread can be spawned");
                let wake = wait_child(&mut exit_rx, &mut signals, &log, &metrics, tls.as_ref(), &reload_tx).await;
                let exit = match wake {
                    Wake::Exited(exit) => exit,
                    Wake::Shutdown(sig) => {
                        child::signal_group(pid, sig);
                        match tokio::time::timeout(cfg.stop_timeout, &mut exit_rx).await {
                            Ok(r) => r.unwrap_or(Exit::Code(-1)),
                            Err(_) => {
                                child::signal_group(pid, libc::SIGKILL);
                                (&mut exit_rx).await.unwrap_or(Exit::Code(-1))
                            }
                        }
                    }
                };
                metrics.child_running.store(0, Ordering::Relaxed);
                if matches!(wake, Wake::Exited(_)) {
                    // What the child started is stopped with it (its process group): left running it
                    // would keep writing into this run's pipes, and each restart would add more.
                    child::signal_group(pid, libc::SIGTERM);
                }
                for mut c in captures {
                    if tokio::time::timeout(CAPTURE_DRAIN_TIMEOUT, &mut c).await.is_err() {
                        // Something in the group still holds a pipe after SIGTERM.
                        child::signal_group(pid, libc::SIGKILL);
                        let _ = tokio::time::timeout(CAPTURE_DRAIN_TIMEOUT, c).await;
                    }
                }
                let ran_ms = started.elapsed().as_millis() as u64;
                let _ = log.append_own(|b, now| {
                    let e = OwnEvent::new(b, now, "child_exited").u64("pid", pid as u64).u64("ran_ms", ran_ms);
                    match exit {
                        Exit::Code(c) if c >= 0 => e.u64("exit_code", c as u64),
                        Exit::Code(_) => e.str("exit_code", "unknown"),
                        Exit::Signal(s) => e.u64("signal", s as u64),
                    }
                    .finish()
                });
                match wake {
                    Wake::Shutdown(_) => Wake::Shutdown(0),
                    Wake::Exited(_) => Wake::Exited(exit),
                }
            }
        };
        match wake {
            Wake::Shutdown(_) => break 0,
            Wake::Exited(exit) if !cfg.restart.restarts(exit) => break exit.shell_code(),
            Wake::Exited(_) => {}
        }
        let delay = backoff.next_delay(started.elapsed());
        metrics.child_restarts.fetch_add(1, Ordering::Relaxed);
        let attempt = backoff.attempt();
        let _ = log.append_own(|b, now| {
            OwnEvent::new(b, now, "restart_scheduled")
                .u64("delay_ms", delay.as_millis() as u64)
                .u64("attempt", attempt as u64)
                .finish()
        });
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        let stop = loop {
            tokio::select! {
                _ = &mut sleep => break false,
                _ = signals.term.recv() => break true,
                _ = signals.int.recv() => break true,
                _ = signals.hup.recv() => reload(&log, tls.as_ref(), &reload_tx),
                _ = signals.quit.recv() => dump_state(&log, &metrics),
            }
        };
        if stop {
            break 0;
        }
    };

    let usage = self_usage();
    let _ = log.append_own(|b, now| {
        OwnEvent::new(b, now, "supervisor_stopping")
            .u64("exit_code", code as u64)
            .u64("cpu_user_us", usage.0)
            .u64("cpu_system_us", usage.1)
            .u64("max_rss_kb", usage.2)
            .finish()
    });
    // Closing the chunk ends every follower's response properly, then the listeners stop.
    let close = log.close();
    let _ = shutdown_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    maintenance.stop();
    close?;
    Ok(code)
}

/// (user CPU µs, system CPU µs, peak RSS KiB) of this process alone, children excluded.
fn self_usage() -> (u64, u64, u64) {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime), us(ru.ru_stime), ru.ru_maxrss as u64)
}

async fn wait_child(
    exit_rx: &mut oneshot::Receiver<Exit>,
    signals: &mut Signals,
    log: &Arc<ChunkLog<DiskStorage>>,
    metrics: &Arc<Metrics>,
    tls: Option<&sluice_tls::ServerTls>,
    reload_tx: &watch::Sender<u64>,
) -> Wake {
    loop {
        tokio::select! {
            r = &mut *exit_rx => return Wake::Exited(r.unwrap_or(Exit::Code(-1))),
            _ = signals.term.recv() => return Wake::Shutdown(libc::SIGTERM),
            _ = signals.int.recv() => return Wake::Shutdown(libc::SIGINT),
            _ = signals.hup.recv() => reload(log, tls, reload_tx),
            _ = signals.quit.recv() => dump_state(log, metrics),
        }
    }
}

/// SIGHUP: re-read the TLS files; a file that fails keeps the old configuration.
fn reload(log: &ChunkLog<DiskStorage>, tls: Option<&sluice_tls::ServerTls>, reload_tx: &watch::Sender<u64>) {
    let Some(tls) = tls else { return };
    match tls.reload() {
        Ok(summary) => {
            let text = format!("{summary:?}");
            let _ = log.append_own(|b, now| OwnEvent::new(b, now, "tls_reloaded").str("summary", &text).finish());
            reload_tx.send_modify(|g| *g += 1);
        }
        Err(e) => {
            let _ = log.append_own(|b, now| {
                OwnEvent::new(b, now, "tls_reload_failed")
                    .str("error", &e.to_string())
                    .str("message", "kept the previous certificate and allow list")
                    .finish()
            });
        }
    }
}

/// SIGQUIT: one event with the supervisor's state.
fn dump_state(log: &ChunkLog<DiskStorage>, metrics: &Metrics) {
    let chunks = log.list();
    let bytes: u64 = chunks.iter().map(|c| c.len).sum();
    let open = log.open_chunk_id().map(|c| c.to_string()).unwrap_or_default();
    let _ = log.append_own(|b, now| {
        OwnEvent::new(b, now, "state_dump")
            .u64("chunks", chunks.len() as u64)
            .u64("bytes", bytes)
            .str("open_chunk", &open)
            .u64("child_running", metrics.child_running.load(Ordering::Relaxed).max(0) as u64)
            .u64("clients_connected", metrics.clients_connected.load(Ordering::Relaxed).max(0) as u64)
            .u64("events_written", log.metrics().events_written.load(Ordering::Relaxed))
            .finish()
    });
}

/// A capture thread; the returned future resolves when it has read its pipe to the end.
fn spawn_capture(
    pipe_reader: impl std::io::Read + Send + 'static,
    pipe: Pipe,
    log: &Arc<ChunkLog<DiskStorage>>,
    metrics: &Arc<Metrics>,
    limits: Limits,
    clock: &Arc<dyn Clock>,
) -> oneshot::Receiver<()> {
    let (done_tx, done_rx) = oneshot::channel();
    let (log, metrics, clock) = (log.clone(), metrics.clone(), clock.clone());
    let name = if pipe == Pipe::Stdout { "sluice-stdout" } else { "sluice-stderr" };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // Only a closed log stops a capture early; the loop then has nowhere to write.
            let _ = capture(pipe_reader, pipe, &log, &metrics, limits, clock.as_ref());
            let _ = done_tx.send(());
        })
        .expect("a thread can be spawned");
    done_rx
}

struct Maintenance {
    stop: std::sync::mpsc::Sender<()>,
    handle: std::thread::JoinHandle<()>,
}

impl Maintenance {
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}

/// Group commit on the fsync interval, chunk age and retention every second. A failing sync is
/// reported once per run of failures, not once per attempt.
fn spawn_maintenance(log: Arc<ChunkLog<DiskStorage>>, fsync: FsyncPolicy) -> Maintenance {
    let (stop, rx) = std::sync::mpsc::channel::<()>();
    let period = match fsync {
        FsyncPolicy::Interval(d) => d.min(TICK_PERIOD),
        _ => TICK_PERIOD,
    };
    let handle = std::thread::Builder::new()
        .name("sluice-maintenance".into())
        .spawn(move || {
            let mut last_tick = Instant::now();
            let mut failing = false;
            loop {
                match rx.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let mut result = log.sync();
                if last_tick.elapsed() >= TICK_PERIOD {
                    last_tick = Instant::now();
                    result = result.and(log.tick());
                }
                match result {
                    Ok(()) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        let _ = log.append_own(|b, now| {
                            OwnEvent::new(b, now, "disk_error").str("error", &e.to_string()).finish()
                        });
                    }
                    Err(_) => {}
                }
            }
        })
        .expect("a thread can be spawned");
    Maintenance { stop, handle }
}
