//! `sluice store`: config file (+ flag/env overrides) -> storage, pullers and the ops listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_api::ops::{serve_ops, OpsState};
use sluice_pull::{PullMetrics, StoreFileConfig};
use sluice_store::{Store, StoreConfig};
use tokio::signal::unix::{signal, SignalKind};

use crate::units::{parse_bytes, parse_duration};

/// Pull events from supervisors over mTLS and keep them in compressed columnar segments.
///
/// Follows each source's open chunk live and backfills older chunks newest first on a bounded
/// pool; de-duplicates by position (each event is stored once, whatever is fetched twice); writes
/// a write-ahead log, then hourly Parquet segments under the data directory. SIGTERM/SIGINT stop
/// pulling and flush the buffer to segments.
#[derive(clap::Args)]
#[command(after_help = "Configuration file (TOML):\n  \
data_dir = \"store-data\"\n  \
listen = \"127.0.0.1:7800\"        # /metrics and /healthz (loopback)\n  \
[tls]\n  \
cert = \"client.pem\"              # client certificate presented to supervisors\n  \
key = \"client.key\"\n  \
ca = \"ca.pem\"                    # trust for the supervisors' server certificates\n  \
[[source]]\n  \
name = \"web-1\"\n  \
url = \"https://127.0.0.1:7701\"   # optional: ca = \"…\" or fingerprint = \"sha256:…\"")]
pub struct Args {
    /// The configuration file.
    #[arg(long, env = "SLUICE_STORE_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Overrides `data_dir`.
    #[arg(long, env = "SLUICE_STORE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Overrides `listen`.
    #[arg(long, env = "SLUICE_STORE_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Overrides `backfill_workers`: chunks fetched from history at once, over all sources.
    #[arg(long, env = "SLUICE_STORE_BACKFILL_WORKERS", value_name = "N")]
    backfill_workers: Option<usize>,
    /// Overrides `retention_age_max` (age of receipt, e.g. 30d).
    #[arg(long, env = "SLUICE_STORE_RETENTION_AGE_MAX", value_name = "DURATION")]
    retention_age_max: Option<String>,
    /// Overrides `retention_bytes_max` (e.g. 50GB).
    #[arg(long, env = "SLUICE_STORE_RETENTION_BYTES_MAX", value_name = "BYTES")]
    retention_bytes_max: Option<String>,
}

/// How long pullers may take to stop before the store is closed anyway.
const STOP_PULLERS_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = StoreFileConfig::load(&args.config)?;
    if let Some(d) = args.data_dir {
        cfg.data_dir = d;
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(n) = args.backfill_workers {
        anyhow::ensure!((1..=256).contains(&n), "--backfill-workers {n} must be between 1 and 256");
        cfg.backfill_workers = n;
    }
    cfg.retention_age_max = args.retention_age_max.or(cfg.retention_age_max);
    cfg.retention_bytes_max = args.retention_bytes_max.or(cfg.retention_bytes_max);
    anyhow::ensure!(
        cfg.listen.ip().is_loopback(),
        "{}: listen {} is not a loopback address; the store serves plain HTTP only on loopback (127.0.0.1 or ::1) for now",
        cfg.path.display(),
        cfg.listen
    );
    let mut store_cfg = StoreConfig::new(&cfg.data_dir);
    if let Some(s) = &cfg.retention_age_max {
        store_cfg.retention_age_max =
            parse_duration(s).map_err(|e| anyhow::anyhow!("{}: retention_age_max: {e}", cfg.path.display()))?;
    }
    if let Some(s) = &cfg.retention_bytes_max {
        store_cfg.retention_bytes_max =
            parse_bytes(s).map_err(|e| anyhow::anyhow!("{}: retention_bytes_max: {e}", cfg.path.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cfg, store_cfg))
}

async fn serve(cfg: StoreFileConfig, store_cfg: StoreConfig) -> anyhow::Result<ExitCode> {
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    let data_dir = store_cfg.data_dir.clone();
    let store = Arc::new(
        tokio::task::spawn_blocking(move || Store::open(store_cfg))
            .await
            .context("store start-up panicked")?
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?,
    );
    let pull = Arc::new(PullMetrics::new());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (change `listen` in {})", cfg.listen, cfg.path.display()))?;
    let addr = listener.local_addr().context("listener address")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ops = tokio::spawn(serve_ops(
        listener,
        Arc::new(OpsState { store: store.clone(), pull: pull.clone() }),
        shutdown_rx.clone(),
    ));
    let sources = cfg.sources.len();
    let pullers =
        tokio::spawn(sluice_pull::run_all(cfg.sources, store.clone(), cfg.backfill_workers, pull.clone(), shutdown_rx));
    eprintln!("sluice store: ready listen={addr} sources={sources} data_dir={}", cfg.data_dir.display());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = shutdown_tx.send(true);
    match tokio::time::timeout(STOP_PULLERS_TIMEOUT, pullers).await {
        Ok(Ok(Err(e))) => eprintln!("sluice store: pullers: {e}"),
        Ok(Err(e)) => eprintln!("sluice store: pullers stopped abnormally: {e}"),
        _ => {}
    }
    let _ = ops.await;
    drop(pull);
    // Every other holder is gone now; close flushes the buffer into segments.
    match Arc::try_unwrap(store) {
        Ok(store) => tokio::task::spawn_blocking(move || store.close()).await.context("store close panicked")??,
        Err(_) => {
            eprintln!("sluice store: still in use at shutdown; the write-ahead log keeps everything for the next start")
        }
    }
    Ok(ExitCode::SUCCESS)
}
