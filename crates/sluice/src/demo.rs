//! `sluice demo`: a whole pipeline on this machine in one command, with nothing to configure:
//! certificates, API tokens, a few supervisors each running `sluice gen`, and a store pulling from
//! them over mTLS, until Ctrl-C, SIGTERM or `--duration`; then everything is stopped and removed.
//!
//! It is a showcase and a smoke test, not a template for a deployment: everything listens on
//! loopback, the certificates and tokens are thrown away at the end, and the only settings are a
//! few flags. `sluice certs`, `sluice supervise` and `sluice store` are the pieces to deploy.
//!
//! Output contract: stdout carries only the `export SLUICE_URL=…` and `export SLUICE_TOKEN=…`
//! lines, so that a shell can eval it; progress, the viewer token and the examples go to stderr.
//!
//! The working directory (a fresh temporary one, or `--keep DIR`):
//!
//! ```text
//! certs/               CA, the supervisors' server certificate, the store's client certificate,
//!                      allowed-clients.txt (what `sluice certs` writes)
//! tokens.toml          the API tokens (mode 0600)
//! store.toml           the store's config; its paths are relative to this directory
//! store/               the store's data
//! web-1/, web-2/, …    each supervisor's chunks
//! logs/NAME.log        each child's stderr (web-1.log, …, store.log)
//! ```

mod procs;
mod setup;

use std::ffi::OsString;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::units::parse_duration;
use procs::{Procs, Signals};
use setup::{http_get, WorkDir};

/// Supervisors started when `--sources` is not given.
const SOURCES_DEFAULT: u16 = 3;
/// More sources than this would only make a laptop's fans the demo.
const SOURCES_MAX: i64 = 32;
/// Events per second each generator writes by default: a busy service, not a benchmark.
const RATE_DEFAULT: f64 = 200.0;
/// Share of deliberately bad stdout lines and of events written to stderr by each generator, so
/// that the wrapped bad lines and stderr events show up in searches.
const BAD_RATIO: &str = "0.005";
const STDERR_RATIO: &str = "0.002";
/// Everything from the first child started to the first event of every source in the store;
/// generous, for a loaded machine building in the background.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often child processes and the store are looked at while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The counter that proves a source's events reached the store.
const BATCHES_METRIC: &str = "sluice_source_batches_committed_total";

/// Run a complete pipeline on this machine: certificates, supervisors running `sluice gen`, a
/// store, API tokens. Stops and cleans up on Ctrl-C.
///
/// Creates everything in a temporary directory, starts --sources supervisors (each running
/// `sluice gen --rate RATE` with its own seed, serving its chunks over mTLS on a free loopback
/// port) and a store pulling from them, waits until events of every source are in the store,
/// then prints `export SLUICE_URL=…` and `export SLUICE_TOKEN=…` on stdout (the only output
/// there) and example commands on stderr, with a link to the store's web page carrying the token.
/// The token has the viewer, pii and admin roles; a second, viewer-only token is printed to show
/// PII masking.
///
/// Ctrl-C or SIGTERM (or the end of --duration) stops every process, removes the directory
/// unless --keep was given, and exits 0. If a process dies on its own, the demo says which, shows
/// the end of its log, stops the rest and exits 1.
#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
sluice demo                       # leave it running; paste its export lines into another shell\n  \
sluice demo --sources 5 --rate 1000 --listen 127.0.0.1:7900\n  \
sluice demo --keep /tmp/demo      # keep certificates, tokens, data and logs afterwards")]
pub struct Args {
    /// Supervisors to start, each running `sluice gen` with its own seed.
    #[arg(long, value_name = "N", default_value_t = SOURCES_DEFAULT,
          value_parser = clap::value_parser!(u16).range(1..=SOURCES_MAX))]
    sources: u16,
    /// Events per second each generator writes.
    #[arg(long, value_name = "PER_SECOND", default_value_t = RATE_DEFAULT)]
    rate: f64,
    /// Address of the store's query API, /metrics and /healthz (loopback only: plain HTTP).
    #[arg(long, value_name = "ADDR", default_value = sluice_pull::config::LISTEN_DEFAULT)]
    listen: SocketAddr,
    /// Stop by itself this long after start-up (e.g. 60s, 10m) instead of waiting for Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Keep everything (certificates, tokens, data, logs) in DIR, created if missing and empty
    /// otherwise, instead of a temporary directory removed at the end.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

/// Why the demo ends.
enum Halt {
    /// Ctrl-C, SIGTERM or SIGHUP (its name).
    Signal(&'static str),
    /// `--duration` is over.
    Elapsed,
    /// A child ended on its own: what to tell, with the end of its log.
    ChildDied(String),
    /// Start-up failed.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(e: anyhow::Error) -> Halt {
        Halt::Failed(e)
    }
}

/// What start-up produced, for the announcement.
struct Ready {
    url: String,
    admin_token: String,
    viewer_token: String,
    /// Whether the store serves a page at `/`.
    web_page: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate.is_finite(),
        "--rate {} must be a positive number of events per second",
        args.rate
    );
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "--listen {} is not a loopback address; the demo's store serves plain HTTP, which sluice allows only on \
         loopback: give 127.0.0.1:PORT",
        args.listen
    );
    let exe =
        std::env::current_exe().context("cannot find the path of this program to start supervisors and a store")?;
    // One thread: every child is spawned from it, and it lives as long as the demo, which is what
    // the children's parent-death signal needs (see procs).
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")?;
    runtime.block_on(demo(args, exe))
}

async fn demo(args: Args, exe: PathBuf) -> anyhow::Result<ExitCode> {
    // Signals first: from here on a Ctrl-C stops the children and removes the directory.
    let mut signals = Signals::install()?;
    check_port_free(args.listen)?;
    let dir = WorkDir::create(args.keep.as_deref())?;
    eprintln!("sluice demo: working directory {}", dir.path().display());
    let mut procs = Procs::default();
    let halt = match start(&args, &exe, dir.path(), &mut procs, &mut signals).await {
        Ok(ready) => {
            announce(&args, &exe, dir.path(), &ready);
            watch(&mut procs, &mut signals, args.duration).await
        }
        Err(halt) => halt,
    };
    match &halt {
        Halt::Signal(name) => eprintln!("sluice demo: {name}: stopping"),
        Halt::Elapsed => eprintln!("sluice demo: --duration is over: stopping"),
        Halt::ChildDied(what) => eprintln!("sluice demo: {what}\nsluice demo: stopping the rest"),
        Halt::Failed(_) if procs.is_empty() => {}
        Halt::Failed(_) => eprintln!("sluice demo: start-up failed: stopping"),
    }
    procs.stop(&mut signals).await;
    let failed = matches!(halt, Halt::ChildDied(_) | Halt::Failed(_));
    if failed && args.keep.is_none() && !procs.is_empty() {
        eprintln!("sluice demo: the logs go with the directory; run with --keep DIR to keep them");
    }
    let result = match halt {
        Halt::Signal(_) | Halt::Elapsed => {
            eprintln!("sluice demo: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Halt::ChildDied(_) => Ok(ExitCode::FAILURE),
        Halt::Failed(e) => Err(e),
    };
    dir.finish();
    result
}

/// The store's port must be free, or the store would die with a less helpful message.
fn check_port_free(listen: SocketAddr) -> anyhow::Result<()> {
    match TcpListener::bind(listen) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let mut other = listen;
            other.set_port(listen.port().wrapping_add(1).max(1));
            anyhow::bail!(
                "{listen} is taken (another store or demo running?); pick a free address with --listen {other}"
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot listen on {listen}; pick another address with --listen")),
    }
}

/// Certificates, tokens, supervisors, the store; returns once events of every source are in the
/// store.
async fn start(args: &Args, exe: &Path, dir: &Path, procs: &mut Procs, signals: &mut Signals) -> Result<Ready, Halt> {
    let deadline = Instant::now() + START_TIMEOUT;
    let certs = setup::certificates(dir)?;
    let tokens = setup::tokens(dir)?;
    let logs = dir.join("logs");
    std::fs::create_dir(&logs).with_context(|| format!("cannot create {}", logs.display()))?;

    let names: Vec<String> = (1..=args.sources).map(|i| format!("web-{i}")).collect();
    for (i, name) in names.iter().enumerate() {
        let seed = i + 1;
        let rate = args.rate.to_string();
        let arg_list: Vec<OsString> = [
            "supervise".into(),
            "--data-dir".into(),
            dir.join(name).into_os_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "none".into(),
            "--tls-cert".into(),
            certs.server_cert.clone().into_os_string(),
            "--tls-key".into(),
            certs.server_key.clone().into_os_string(),
            "--allow-clients".into(),
            certs.allow_list.clone().into_os_string(),
            "--".into(),
            exe.as_os_str().to_owned(),
            "gen".into(),
            "--rate".into(),
            rate.into(),
            "--seed".into(),
            seed.to_string().into(),
            "--bad-ratio".into(),
            BAD_RATIO.into(),
            "--stderr-ratio".into(),
            STDERR_RATIO.into(),
        ]
        .into_iter()
        .collect();
        procs.spawn(name, exe, &arg_list, &logs.join(format!("{name}.log")))?;
    }
    // Each supervisor picks a free port and names it in its ready line.
    let mut urls: Vec<Option<String>> = vec![None; names.len()];
    wait_for("the supervisors to start", deadline, procs, signals, |procs| {
        for (i, url) in urls.iter_mut().enumerate() {
            if url.is_none() {
                *url = procs.ready_field(i, "sluice supervise: ready ", "chunks").map(|a| format!("https://{a}"));
            }
        }
        urls.iter().all(Option::is_some)
    })
    .await?;
    let sources: Vec<(String, String)> =
        names.iter().cloned().zip(urls.into_iter().map(|u| u.expect("every url was found above"))).collect();
    for (i, (name, url)) in sources.iter().enumerate() {
        eprintln!(
            "sluice demo: source {name} pid={} chunks={url} running sluice gen --rate {}",
            procs.pid(i),
            args.rate
        );
    }

    let config = setup::store_config(dir, args.listen, &certs, &tokens, &sources)?;
    let store_arg_list: Vec<OsString> = vec!["store".into(), "--config".into(), config.into_os_string()];
    let store = procs.spawn("store", exe, &store_arg_list, &logs.join("store.log"))?;
    let url = format!("http://{}", args.listen);
    wait_for("the store to answer /healthz", deadline, procs, signals, |_| {
        http_get(args.listen, "/healthz", None).is_ok_and(|(status, _)| status == 200)
    })
    .await
    .map_err(|h| with_log(h, procs, store))?;
    eprintln!("sluice demo: store pid={} listen={url}", procs.pid(store));
    let mut missing: Vec<String> = names.clone();
    let waited = wait_for("the first events of every source in the store", deadline, procs, signals, |_| {
        if let Ok((200, page)) = http_get(args.listen, "/metrics", None) {
            missing.retain(|name| !delivered(&page, name));
        }
        missing.is_empty()
    })
    .await;
    if let Err(Halt::Failed(e)) = waited {
        let errors =
            http_get(args.listen, "/metrics", None).map(|(_, page)| source_errors(&page, &missing)).unwrap_or_default();
        let e = e.context(format!("no events yet from {}{errors}", missing.join(", ")));
        return Err(with_log(Halt::Failed(e), procs, store));
    }
    waited?;

    // The query API is being checked, not required: the store's ingest works without it.
    match http_get(args.listen, "/api/sources", Some(&tokens.admin)) {
        Ok((200, _)) => {}
        Ok((status, body)) => eprintln!(
            "sluice demo: warning: the store answered {status} to /api/sources with the demo's token ({}); the \
             example commands may fail",
            body.trim()
        ),
        Err(e) => eprintln!("sluice demo: warning: cannot ask the store's /api/sources: {e}"),
    }
    let web_page = http_get(args.listen, "/", None).is_ok_and(|(status, _)| status == 200);
    Ok(Ready { url, admin_token: tokens.admin, viewer_token: tokens.viewer, web_page })
}

/// Poll `done` until it holds, watching signals and children, until `deadline`.
async fn wait_for(
    what: &str,
    deadline: Instant,
    procs: &mut Procs,
    signals: &mut Signals,
    mut done: impl FnMut(&Procs) -> bool,
) -> Result<(), Halt> {
    loop {
        if let Some(died) = procs.exited() {
            return Err(Halt::ChildDied(died));
        }
        if done(procs) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Halt::Failed(anyhow::anyhow!(
                "gave up waiting for {what} after {}s; the machine may be overloaded: try --sources 1",
                START_TIMEOUT.as_secs()
            )));
        }
        if let Some(name) = signals.pause(POLL_INTERVAL).await {
            return Err(Halt::Signal(name));
        }
    }
}

/// Adds the end of process `i`'s log to a start-up failure.
fn with_log(halt: Halt, procs: &Procs, i: usize) -> Halt {
    match halt {
        Halt::Failed(e) => Halt::Failed(e.context(procs.describe_log(i))),
        other => other,
    }
}

/// Whether the /metrics page says a batch of `source` was committed.
fn delivered(page: &str, source: &str) -> bool {
    let key = format!("{BATCHES_METRIC}{{source=\"{source}\"}} ");
    page.lines().filter_map(|l| l.strip_prefix(&key)).any(|v| v.trim().parse::<f64>().is_ok_and(|n| n >= 1.0))
}

/// The non-zero error counters of `sources` on a /metrics page, as `; errors: …` (or nothing).
fn source_errors(page: &str, sources: &[String]) -> String {
    let lines: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("sluice_source_errors_total{"))
        .filter(|l| sources.iter().any(|s| l.contains(&format!("source=\"{s}\""))))
        .filter(|l| !l.ends_with(" 0"))
        .collect();
    if lines.is_empty() {
        String::new()
    } else {
        format!("; errors: {}", lines.join(", "))
    }
}

/// Runs until a signal, the end of `--duration`, or a child's death.
async fn watch(procs: &mut Procs, signals: &mut Signals, duration: Option<Duration>) -> Halt {
    let end = duration.map(|d| Instant::now() + d);
    loop {
        if let Some(died) = procs.exited() {
            return Halt::ChildDied(died);
        }
        let pause = match end {
            Some(end) if Instant::now() >= end => return Halt::Elapsed,
            Some(end) => end.saturating_duration_since(Instant::now()).min(POLL_INTERVAL),
            None => POLL_INTERVAL,
        };
        if let Some(name) = signals.pause(pause).await {
            return Halt::Signal(name);
        }
    }
}

/// The export lines on stdout; the rest on stderr.
fn announce(args: &Args, exe: &Path, dir: &Path, ready: &Ready) {
    let exports = format!("export SLUICE_URL={}\nexport SLUICE_TOKEN={}\n", ready.url, ready.admin_token);
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(exports.as_bytes()).and_then(|()| stdout.flush()) {
        eprintln!("sluice demo: cannot write the export lines to stdout ({e}); here they are:\n{exports}");
    }
    drop(stdout);
    let sluice = program_name(exe);
    let events_per_second = args.rate * f64::from(args.sources);
    let mut text = format!(
        "\nsluice demo: ready: {} sources writing {events_per_second} events/s in total, store at {}\n\
         In another shell, run the two export lines printed on stdout (SLUICE_URL and SLUICE_TOKEN, a token\n\
         with the viewer, pii and admin roles), then try:\n\
         \x20 {sluice} search 'level:ERROR' --since 5m\n\
         \x20 {sluice} query \"SELECT rpc_method, count(*) AS calls, quantile_nearest(duration_ms, 0.99) AS p99_ms FROM events WHERE rpc_method IS NOT NULL GROUP BY 1 ORDER BY 2 DESC\"\n\
         \x20 {sluice} tail 'status:>=500'\n\
         The same search with a viewer-only token (pii_* values masked):\n\
         \x20 SLUICE_TOKEN={} {sluice} search 'pii_uid:*' --since 5m --limit 5\n",
        args.sources, ready.url, ready.viewer_token
    );
    if ready.web_page {
        // The token rides in the fragment, which the browser never sends to a server; the page
        // moves it into the tab's session storage and drops it from the address bar.
        text.push_str(&format!(
            "Web page (search, histogram, live tail, sources; the same token):\n\x20 {}/#token={}\n",
            ready.url, ready.admin_token
        ));
    }
    let stop = match args.duration {
        Some(d) => format!("Ctrl-C, or the end of --duration in {d:?}, stops everything"),
        None => "Ctrl-C stops everything".to_string(),
    };
    let end = if args.keep.is_some() {
        format!("{stop}; {} is kept.\n", dir.display())
    } else {
        format!("{stop} and removes {}.\n", dir.display())
    };
    text.push_str(&end);
    eprint!("{text}");
}

/// `sluice` when the PATH finds this very program, else its full path (quoted for a shell), so
/// that every printed command works as pasted, also under `cargo run`.
fn program_name(exe: &Path) -> String {
    let me = std::fs::canonicalize(exe).ok();
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| me.is_some() && std::fs::canonicalize(d.join("sluice")).ok() == me)
    });
    if on_path {
        "sluice".to_string()
    } else {
        shell_quote(&exe.to_string_lossy())
    }
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_reads_the_batches_counter_of_one_source() {
        let page = "# TYPE sluice_source_batches_committed_total counter\n\
                    sluice_source_batches_committed_total{source=\"web-1\"} 3\n\
                    sluice_source_batches_committed_total{source=\"web-10\"} 0\n";
        assert!(delivered(page, "web-1"));
        assert!(!delivered(page, "web-10"));
        assert!(!delivered(page, "web-2"));
    }

    #[test]
    fn source_errors_lists_only_non_zero_counters_of_the_named_sources() {
        let page = "sluice_source_errors_total{source=\"web-1\",kind=\"tls\"} 2\n\
                    sluice_source_errors_total{source=\"web-1\",kind=\"connect\"} 0\n\
                    sluice_source_errors_total{source=\"web-2\",kind=\"tls\"} 5\n";
        let got = source_errors(page, &["web-1".to_string()]);
        assert_eq!(got, "; errors: sluice_source_errors_total{source=\"web-1\",kind=\"tls\"} 2");
        assert_eq!(source_errors(page, &["web-3".to_string()]), "");
    }

    #[test]
    fn shell_quote_leaves_plain_paths_alone() {
        assert_eq!(shell_quote("/usr/local/bin/sluice"), "/usr/local/bin/sluice");
        assert_eq!(shell_quote("/home/a b/sluice"), "'/home/a b/sluice'");
        assert_eq!(shell_quote("/x/it's"), r"'/x/it'\''s'");
    }
}
