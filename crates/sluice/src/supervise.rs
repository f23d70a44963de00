//! `sluice supervise`: flags -> `sluice_supervisor::supervise::run`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use sluice_chunk::{FsyncPolicy, LogConfig, OnFull};
use sluice_supervisor::child::{ChildSpec, RestartPolicy};
use sluice_supervisor::supervise::{SuperviseConfig, TlsFiles};

use crate::units::{parse_bytes, parse_duration};

/// Run a command, keep its events on disk in chunks, and serve them over mTLS HTTPS.
///
/// Stdout lines are events (one JSON object per line); valid ones are stored byte-for-byte, bad
/// ones wrapped in an event that says what was wrong. Stderr lines are stored as wrapped events.
/// SIGTERM/SIGINT are forwarded to the command, then the chunk is closed and flushed; SIGHUP
/// re-reads the TLS files; SIGQUIT writes a state dump event.
#[derive(clap::Args)]
#[command(
    after_help = "Example:\n  sluice certs --dir certs\n  sluice supervise --data-dir data --tls-cert certs/server.pem --tls-key certs/server.key \\\n      --allow-clients certs/allowed-clients.txt -- sluice gen --rate 1000\n  curl --cacert certs/ca.pem --cert certs/store.pem --key certs/store.key https://localhost:7701/chunk/"
)]
pub struct Args {
    /// Directory for the chunks (created if missing; one supervisor per directory).
    #[arg(long, env = "SLUICE_DATA_DIR", value_name = "DIR")]
    data_dir: PathBuf,
    /// Close a chunk before it would reach this size.
    #[arg(long, default_value = "1000000", value_parser = parse_bytes, value_name = "BYTES")]
    chunk_bytes_max: u64,
    /// Close a chunk that has been open this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
    chunk_age_max: Duration,
    /// Discard closed chunks older than this.
    #[arg(long, default_value = "7d", value_parser = parse_duration, value_name = "DURATION")]
    retention_age_max: Duration,
    /// Discard the oldest chunks while all chunks together are larger than this.
    #[arg(long, default_value = "500MB", value_parser = parse_bytes, value_name = "BYTES")]
    retention_bytes_max: u64,
    /// When writes reach the disk: always, never, or interval=DURATION (group commit at least that
    /// often, and on every chunk close).
    #[arg(long, default_value = "interval=200ms", value_parser = FsyncPolicy::parse, value_name = "POLICY")]
    fsync: FsyncPolicy,
    /// What a full disk does: drop (count the events and report the count once writing works; the
    /// command never waits) or block (the command waits on its full pipe).
    #[arg(long, default_value = "drop", value_parser = parse_on_full, value_name = "drop|block")]
    on_full: OnFull,
    /// Longest stdout line kept as it is; longer lines are stored wrapped, their start kept.
    #[arg(long, default_value = "256KiB", value_parser = parse_bytes, value_name = "BYTES")]
    line_bytes_max: u64,
    /// When to start the command again after it exits.
    #[arg(long, default_value = "on-failure", value_parser = RestartPolicy::parse, value_name = "always|on-failure|never")]
    restart: RestartPolicy,
    /// First delay before a restart; it doubles after each quick exit.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    restart_delay_min: Duration,
    /// Largest delay before a restart.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    restart_delay_max: Duration,
    /// After forwarding SIGTERM, wait this long before SIGKILL.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    stop_timeout: Duration,
    /// Address of the HTTPS chunk server, or "none".
    #[arg(long, default_value = sluice_supervisor::serve::LISTEN_DEFAULT, value_name = "ADDR|none")]
    listen: String,
    /// Server certificate (PEM) for the chunk server.
    #[arg(long, env = "SLUICE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Server private key (PEM).
    #[arg(long, env = "SLUICE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Allowed client certificates: PEM certificates and/or SHA-256 fingerprints, one per line.
    #[arg(long, env = "SLUICE_ALLOW_CLIENTS", value_name = "FILE")]
    allow_clients: Option<PathBuf>,
    /// Plain-HTTP address for /metrics and /healthz, or "none".
    #[arg(long, default_value = sluice_supervisor::ops::METRICS_LISTEN_DEFAULT, value_name = "ADDR|none")]
    metrics_listen: String,
    /// Most TLS connections at once; more are closed at once.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    connections_max: usize,
    /// The command to run and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<OsString>,
}

fn parse_on_full(s: &str) -> Result<OnFull, String> {
    match s {
        "drop" => Ok(OnFull::Drop),
        "block" => Ok(OnFull::Block),
        _ => Err(format!("unknown --on-full {s:?}: use drop or block")),
    }
}

fn parse_addr(flag: &str, s: &str) -> anyhow::Result<Option<SocketAddr>> {
    if s == "none" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .with_context(|| format!("{flag} {s:?} is not an address: write it like 127.0.0.1:7701, or none"))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let listen = parse_addr("--listen", &args.listen)?;
    let metrics_listen = parse_addr("--metrics-listen", &args.metrics_listen)?;
    let tls = match (args.tls_cert, args.tls_key, args.allow_clients) {
        (Some(cert), Some(key), Some(allow_clients)) => Some(TlsFiles { cert, key, allow_clients }),
        (None, None, None) => None,
        _ => anyhow::bail!(
            "--tls-cert, --tls-key and --allow-clients go together: give all three (make them with `sluice certs`)"
        ),
    };
    let mut command = args.command.into_iter();
    let program =
        command.next().context("no command given: put it after --, e.g. sluice supervise --data-dir d -- my-app")?;
    let line_bytes_max = usize::try_from(args.line_bytes_max).context("--line-bytes-max is too large")?;
    let cfg = SuperviseConfig {
        data_dir: args.data_dir,
        log: LogConfig {
            chunk_bytes_max: args.chunk_bytes_max,
            chunk_age_max: args.chunk_age_max,
            retention_age_max: args.retention_age_max,
            retention_bytes_max: args.retention_bytes_max,
            fsync: args.fsync,
            on_full: args.on_full,
            line_bytes_max,
        },
        child: ChildSpec { program, args: command.collect() },
        restart: args.restart,
        backoff_initial: args.restart_delay_min,
        backoff_max: args.restart_delay_max,
        stop_timeout: args.stop_timeout,
        listen,
        tls,
        metrics_listen,
        serve: sluice_supervisor::serve::ServeConfig { connections_max: args.connections_max, ..Default::default() },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(sluice_supervisor::supervise::run(cfg, |ready| {
        let show = |a: Option<SocketAddr>| a.map_or_else(|| "none".to_string(), |a| a.to_string());
        eprintln!(
            "sluice supervise: ready stream={} chunks={} metrics={}",
            ready.stream_id,
            show(ready.chunks_addr),
            show(ready.metrics_addr)
        );
        for (what, n) in [("repaired unclosed chunks", ready.repaired), ("stray files left alone", ready.strays.len())]
        {
            if n > 0 {
                eprintln!("sluice supervise: {what}: {n} (see the events in the stream)");
            }
        }
    }))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
