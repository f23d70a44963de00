//! `sluice store`: config file (+ flag/env overrides) -> storage, pullers, and the query API with
//! /metrics and /healthz on `listen`.
//!
//! Every top-level setting of the file is also a flag and an environment variable
//! (`SLUICE_STORE_` and the key in capitals); a flag or variable wins over the file.
//!
//! One hidden switch exists for crash tests of this binary: `SLUICE_STORE_CRASH_AT=<point>` makes
//! the process abort (as `kill -9` would end it: no flush, no cleanup) the first time the store
//! reaches that point. The points are `flush_after_segments`, `flush_after_manifest`,
//! `compact_after_output`, `compact_after_manifest` and `retention_after_manifest` (see
//! `sluice_store::FailPoint`). It is not a flag, so no help text or config file can offer it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_api::{Api, TokenSet};
use sluice_pull::config::{
    Limits, Written, BACKFILL_WORKERS_LIMITS, BUFFER_ROWS_MAX_LIMITS, COMPACT_INPUTS_MIN_LIMITS,
    COMPACT_ROWS_MAX_LIMITS, COMPACT_ZSTD_LEVEL_LIMITS, FLUSH_ROWS_MAX_LIMITS, FLUSH_ZSTD_LEVEL_LIMITS,
    KEYS_MAX_LIMITS,
};
use sluice_pull::{PullMetrics, StoreFileConfig};
use sluice_store::{FailPoint, Store, StoreConfig, BUFFER_BYTES_MAX_MIN};
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
listen = \"127.0.0.1:7800\"        # the query API, /metrics, /healthz; off loopback needs [api] TLS\n  \
backfill_workers = 2             # optional, as is every setting down to [tls]\n  \
retention_age_max = \"30d\"        # by receive time\n  \
retention_bytes_max = \"100GiB\"   # total size of the live segments\n  \
flush_rows_max = 500000          # buffered events that trigger a flush into segments\n  \
flush_age_max = \"60s\"            # oldest buffered event's age that triggers a flush\n  \
buffer_rows_max = 2000000        # commits wait while the buffer holds this many events\n  \
buffer_bytes_max = \"256MiB\"      # ... or this much memory; a flush starts at half of it\n  \
compact_segment_bytes_small = \"32MiB\"  # smaller segments are merged by compaction\n  \
compact_inputs_min = 4           # small segments of one hour that trigger a compaction\n  \
compact_rows_max = 1000000       # most events one compaction merges\n  \
keys_max = 1000                  # distinct keys with a column; later ones go to overflow\n  \
flush_zstd_level = 1             # 1 to 22 (compaction rewrites them)\n  \
compact_zstd_level = 3           # 1 to 22\n  \
[tls]\n  \
cert = \"client.pem\"              # client certificate presented to supervisors\n  \
key = \"client.key\"\n  \
ca = \"ca.pem\"                    # trust for the supervisors' server certificates\n  \
[api]\n  \
tokens = \"tokens.toml\"           # API tokens and roles (see the README, \"HTTP API\")\n  \
tls_cert = \"api.pem\"             # optional on loopback: TLS for the API (both or neither)\n  \
tls_key = \"api.key\"\n  \
[[source]]\n  \
name = \"web-1\"\n  \
url = \"https://127.0.0.1:7701\"   # optional: ca = \"…\" or fingerprint = \"sha256:…\"\n\n\
Each top-level setting is also a flag (see above) and an environment variable (SLUICE_STORE_ and\n\
the key in capitals, e.g. SLUICE_STORE_FLUSH_ROWS_MAX); a flag or variable wins over the file.")]
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
    #[arg(long, env = "SLUICE_STORE_BACKFILL_WORKERS", value_name = "N", value_parser = in_range::<usize>(BACKFILL_WORKERS_LIMITS))]
    backfill_workers: Option<usize>,
    /// Overrides `retention_age_max` (age of receipt, e.g. 30d).
    #[arg(long, env = "SLUICE_STORE_RETENTION_AGE_MAX", value_name = "DURATION", value_parser = parse_retention_age)]
    retention_age_max: Option<Duration>,
    /// Overrides `retention_bytes_max` (e.g. 50GB).
    #[arg(long, env = "SLUICE_STORE_RETENTION_BYTES_MAX", value_name = "BYTES", value_parser = parse_retention_bytes)]
    retention_bytes_max: Option<u64>,
    /// Overrides `flush_rows_max`: buffered events that trigger a flush into segments.
    #[arg(long, env = "SLUICE_STORE_FLUSH_ROWS_MAX", value_name = "N", value_parser = in_range::<usize>(FLUSH_ROWS_MAX_LIMITS))]
    flush_rows_max: Option<usize>,
    /// Overrides `flush_age_max`: the oldest buffered event's age that triggers a flush (e.g. 60s).
    #[arg(long, env = "SLUICE_STORE_FLUSH_AGE_MAX", value_name = "DURATION", value_parser = parse_flush_age)]
    flush_age_max: Option<Duration>,
    /// Overrides `buffer_rows_max`: commits wait while the buffer holds this many events.
    #[arg(long, env = "SLUICE_STORE_BUFFER_ROWS_MAX", value_name = "N", value_parser = in_range::<usize>(BUFFER_ROWS_MAX_LIMITS))]
    buffer_rows_max: Option<usize>,
    /// Overrides `buffer_bytes_max`: commits wait while the buffer holds this much memory (e.g.
    /// 256MiB); a flush starts at half of it.
    #[arg(long, env = "SLUICE_STORE_BUFFER_BYTES_MAX", value_name = "BYTES", value_parser = parse_bytes)]
    buffer_bytes_max: Option<u64>,
    /// Overrides `compact_segment_bytes_small`: segments below this size are merged (e.g. 32MiB).
    #[arg(long, env = "SLUICE_STORE_COMPACT_SEGMENT_BYTES_SMALL", value_name = "BYTES", value_parser = parse_bytes)]
    compact_segment_bytes_small: Option<u64>,
    /// Overrides `compact_inputs_min`: small segments of one hour that trigger a compaction.
    #[arg(long, env = "SLUICE_STORE_COMPACT_INPUTS_MIN", value_name = "N", value_parser = in_range::<usize>(COMPACT_INPUTS_MIN_LIMITS))]
    compact_inputs_min: Option<usize>,
    /// Overrides `compact_rows_max`: the most events one compaction merges.
    #[arg(long, env = "SLUICE_STORE_COMPACT_ROWS_MAX", value_name = "N", value_parser = in_range::<u64>(COMPACT_ROWS_MAX_LIMITS))]
    compact_rows_max: Option<u64>,
    /// Overrides `keys_max`: distinct keys with a column; later keys go to the overflow column.
    #[arg(long, env = "SLUICE_STORE_KEYS_MAX", value_name = "N", value_parser = in_range::<usize>(KEYS_MAX_LIMITS))]
    keys_max: Option<usize>,
    /// Overrides `flush_zstd_level` (1 to 22) of freshly flushed segments.
    #[arg(long, env = "SLUICE_STORE_FLUSH_ZSTD_LEVEL", value_name = "LEVEL", value_parser = in_range::<i32>(FLUSH_ZSTD_LEVEL_LIMITS))]
    flush_zstd_level: Option<i32>,
    /// Overrides `compact_zstd_level` (1 to 22) of compacted segments.
    #[arg(long, env = "SLUICE_STORE_COMPACT_ZSTD_LEVEL", value_name = "LEVEL", value_parser = in_range::<i32>(COMPACT_ZSTD_LEVEL_LIMITS))]
    compact_zstd_level: Option<i32>,
    /// Overrides `[api] tokens`: the API's tokens file (re-read on SIGHUP).
    #[arg(long, env = "SLUICE_STORE_TOKENS", value_name = "FILE")]
    tokens: Option<PathBuf>,
}

/// How long pullers may take to stop before the store is closed anyway.
const STOP_PULLERS_TIMEOUT: Duration = Duration::from_secs(10);
/// The hidden crash switch for tests (see the module doc).
const CRASH_AT_ENV: &str = "SLUICE_STORE_CRASH_AT";

/// A flag parser for a whole number within `limits` (the ones the config file is checked with).
fn in_range<T: TryFrom<i64>>(limits: Limits) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| {
        let n: i64 = s.trim().parse().map_err(|_| format!("{s:?} is not a whole number"))?;
        let n = limits.check(n)?;
        T::try_from(n).map_err(|_| format!("{n} is too large for this machine"))
    }
}

/// A retention age of zero would delete every event as soon as it is flushed.
fn parse_retention_age(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => {
            Err(format!("{s:?} is zero, which would delete every event once flushed; give an age like 7d"))
        }
        d => Ok(d),
    }
}

/// A retention size of zero would delete every segment as soon as it is written.
fn parse_retention_bytes(s: &str) -> Result<u64, String> {
    match parse_bytes(s)? {
        0 => Err(format!(
            "{s:?} is zero, which would delete every segment once written; give the most disk segments may use, like 50GB"
        )),
        n => Ok(n),
    }
}

/// A flush age of zero would flush on every maintenance tick, one tiny segment each time.
fn parse_flush_age(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?} is zero; give a duration like 60s")),
        d => Ok(d),
    }
}

/// The flag's value if given, else the file's, parsed here so that an error names its line.
fn setting<T>(
    flag: Option<T>,
    file: &Option<Written>,
    path: &Path,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
) -> anyhow::Result<Option<T>> {
    match (flag, file) {
        (Some(v), _) => Ok(Some(v)),
        (None, Some(w)) => {
            parse(&w.text).map(Some).map_err(|e| anyhow::anyhow!("{}:{}: {key}: {e}", path.display(), w.line))
        }
        (None, None) => Ok(None),
    }
}

/// `SLUICE_STORE_CRASH_AT`, if set.
fn crash_point() -> anyhow::Result<Option<FailPoint>> {
    let Ok(name) = std::env::var(CRASH_AT_ENV) else { return Ok(None) };
    let point = match name.as_str() {
        "flush_after_segments" => FailPoint::FlushAfterSegments,
        "flush_after_manifest" => FailPoint::FlushAfterManifest,
        "compact_after_output" => FailPoint::CompactAfterOutput,
        "compact_after_manifest" => FailPoint::CompactAfterManifest,
        "retention_after_manifest" => FailPoint::RetentionAfterManifest,
        other => anyhow::bail!(
            "{CRASH_AT_ENV}={other:?} is not a crash point; use flush_after_segments, flush_after_manifest, \
             compact_after_output, compact_after_manifest or retention_after_manifest, or unset it"
        ),
    };
    Ok(Some(point))
}

/// The file's settings with the flags (and environment variables) over them.
fn store_config(args: &Args, cfg: &StoreFileConfig) -> anyhow::Result<StoreConfig> {
    let path = cfg.path.as_path();
    let mut c = StoreConfig::new(&cfg.data_dir);
    c.retention_age_max =
        setting(args.retention_age_max, &cfg.retention_age_max, path, "retention_age_max", parse_retention_age)?
            .unwrap_or(c.retention_age_max);
    c.retention_bytes_max = setting(
        args.retention_bytes_max,
        &cfg.retention_bytes_max,
        path,
        "retention_bytes_max",
        parse_retention_bytes,
    )?
    .unwrap_or(c.retention_bytes_max);
    c.flush_age_max = setting(args.flush_age_max, &cfg.flush_age_max, path, "flush_age_max", parse_flush_age)?
        .unwrap_or(c.flush_age_max);
    c.compact_segment_bytes_small = setting(
        args.compact_segment_bytes_small,
        &cfg.compact_segment_bytes_small,
        path,
        "compact_segment_bytes_small",
        parse_bytes,
    )?
    .unwrap_or(c.compact_segment_bytes_small);
    c.buffer_bytes_max = setting(args.buffer_bytes_max, &cfg.buffer_bytes_max, path, "buffer_bytes_max", parse_bytes)?
        .unwrap_or(c.buffer_bytes_max);
    c.flush_rows_max = args.flush_rows_max.or(cfg.flush_rows_max).unwrap_or(c.flush_rows_max);
    c.buffer_rows_max = args.buffer_rows_max.or(cfg.buffer_rows_max).unwrap_or(c.buffer_rows_max);
    c.compact_inputs_min = args.compact_inputs_min.or(cfg.compact_inputs_min).unwrap_or(c.compact_inputs_min);
    c.compact_rows_max = args.compact_rows_max.or(cfg.compact_rows_max).unwrap_or(c.compact_rows_max);
    c.keys_max = args.keys_max.or(cfg.keys_max).unwrap_or(c.keys_max);
    c.flush_zstd_level = args.flush_zstd_level.or(cfg.flush_zstd_level).unwrap_or(c.flush_zstd_level);
    c.compact_zstd_level = args.compact_zstd_level.or(cfg.compact_zstd_level).unwrap_or(c.compact_zstd_level);
    anyhow::ensure!(
        c.buffer_rows_max >= c.flush_rows_max,
        "buffer_rows_max {} is below flush_rows_max {} (from {} and the flags), so commits would stall until \
         every flush age; raise buffer_rows_max or lower flush_rows_max",
        c.buffer_rows_max,
        c.flush_rows_max,
        path.display()
    );
    anyhow::ensure!(
        c.buffer_bytes_max >= BUFFER_BYTES_MAX_MIN,
        "buffer_bytes_max {} (from {} and the flags) is below the least the store can work with, {} bytes \
         (16MiB); raise it",
        c.buffer_bytes_max,
        path.display(),
        BUFFER_BYTES_MAX_MIN
    );
    c.abort_at = crash_point()?;
    Ok(c)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut cfg = StoreFileConfig::load(&args.config)?;
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(n) = args.backfill_workers {
        cfg.backfill_workers = n;
    }
    if let Some(t) = &args.tokens {
        cfg.api_tokens = Some(t.clone());
    }
    anyhow::ensure!(
        cfg.listen.ip().is_loopback() || cfg.api.is_some(),
        "{}: listen {} is not a loopback address, and the API serves plain HTTP only on loopback; add tls_cert \
         and tls_key under [api], or listen on 127.0.0.1",
        cfg.path.display(),
        cfg.listen
    );
    let store_cfg = store_config(&args, &cfg)?;
    // Certificates, keys and trust files that cannot be used fail the start, not each source later.
    let clients = sluice_pull::clients(&cfg.sources).map_err(|e| anyhow::anyhow!("{}: {e}", cfg.path.display()))?;
    refuse_transparent_huge_pages();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(cfg, clients, store_cfg))
}

/// Asks the kernel not to back this process's memory with transparent huge pages (Linux
/// `PR_SET_THP_DISABLE`; threads started later inherit it). The store fills and frees hundreds of
/// megabytes of buffers per flush; the allocator returns freed pages to the kernel, and with huge
/// pages every first touch of fresh memory then makes the kernel zero a whole 2 MiB page, however
/// little of it is used. In `bench/ingest.py` that zeroing was a quarter of the store's CPU; without
/// huge pages the store used 21% less CPU and a fifth less peak memory (BENCHMARKS.md, ingest "I").
/// Where the kernel refuses, the store says so once and runs as before.
fn refuse_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE reads only its integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    if rc != 0 {
        eprintln!("sluice store: transparent huge pages stay allowed: {}", std::io::Error::last_os_error());
    }
}

/// The query API, the tokens it reloads on SIGHUP, and its TLS config.
struct QueryApi {
    api: Arc<Api>,
    tokens: Option<TokenSet>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The query API over `store`: its engine, the tokens file and the TLS config, each checked
/// before anything listens.
fn query_api(cfg: &StoreFileConfig, store: &Arc<Store>, pull: &Arc<PullMetrics>) -> anyhow::Result<QueryApi> {
    let engine = sluice_api::Engine::open(store.clone(), sluice_api::EngineConfig::default())?;
    let tokens = cfg.api_tokens.as_deref().map(TokenSet::load).transpose()?;
    if tokens.is_none() {
        eprintln!(
            "sluice store: no tokens file ([api] tokens or --tokens), so the query API refuses every request; \
             /metrics and /healthz are served"
        );
    }
    let tls = cfg.api.as_ref().map(|t| sluice_api::tls_server_config(&t.tls_cert, &t.tls_key)).transpose()?;
    Ok(QueryApi { api: Arc::new(Api::new(engine, pull.clone(), tokens.clone())), tokens, tls })
}

/// Re-reads the tokens file on each SIGHUP; a bad file leaves the tokens in force.
async fn reload_tokens_on_sighup(tokens: Option<TokenSet>) {
    let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
    while hup.recv().await.is_some() {
        match &tokens {
            None => eprintln!("sluice store: SIGHUP: no tokens file to re-read"),
            Some(t) => match t.reload() {
                Ok(n) => eprintln!("sluice store: SIGHUP: {} re-read; tokens in force: {n}", t.path().display()),
                Err(e) => eprintln!("sluice store: SIGHUP: {e}; the tokens in force stay"),
            },
        }
    }
}

async fn serve(
    cfg: StoreFileConfig,
    clients: Vec<sluice_pull::SourceClient>,
    store_cfg: StoreConfig,
) -> anyhow::Result<ExitCode> {
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
    let QueryApi { api, tokens, tls } = query_api(&cfg, &store, &pull)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (change `listen` in {})", cfg.listen, cfg.path.display()))?;
    let addr = listener.local_addr().context("listener address")?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let ops = tokio::spawn(sluice_api::serve(listener, api, tls, shutdown_rx.clone()));
    tokio::spawn(reload_tokens_on_sighup(tokens));
    let sources = cfg.sources.len();
    let pullers = tokio::spawn(sluice_pull::run_clients(
        cfg.sources.into_iter().zip(clients).collect(),
        store.clone(),
        cfg.backfill_workers,
        pull.clone(),
        shutdown_rx,
    ));
    eprintln!("sluice store: ready listen={addr} sources={sources} data_dir={}", cfg.data_dir.display());
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    let _ = shutdown_tx.send(true);
    if let Ok(Err(e)) = tokio::time::timeout(STOP_PULLERS_TIMEOUT, pullers).await {
        eprintln!("sluice store: pullers stopped abnormally: {e}");
    }
    let _ = ops.await;
    drop(pull);
    // Every other holder is gone now; close flushes the buffer into segments.
    match Arc::try_unwrap(store) {
        Ok(store) => tokio::task::spawn_blocking(move || store.close()).await.context("store close panicked")??,
        // A query still computing past its time limit holds the store (its thread ends with the
        // process): the buffer is flushed all the same.
        Err(store) => {
            eprintln!("sluice store: a query is still running at shutdown; it is abandoned");
            tokio::task::spawn_blocking(move || store.flush()).await.context("store flush panicked")??;
        }
    }
    Ok(ExitCode::SUCCESS)
}
