//! End-to-end faults of `sluice store` with real supervisors over mTLS: `kill -9` at random
//! moments and aborts inside compaction (then every event exactly once in the live segments),
//! chunks discarded by a supervisor before the store could fetch them (counted as lost, not
//! retried), and a data directory on a disk that fills up (ingest pauses and resumes, nothing lost
//! or stored twice). Not here: the single-kill and outage tests of the store, which stay in
//! `cli.rs`.

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// `SLUICE_TEST_SEED=N` replays a failed run of the randomised test.
const SEED_ENV: &str = "SLUICE_TEST_SEED";

/// SplitMix64: enough randomness for kill delays, and the same sequence from the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform enough in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The seed from the environment, or a fresh one.
fn test_seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
    }
}

/// Names the seed when the test fails, whichever assertion or deadline failed.
struct SeedReport(u64);

impl Drop for SeedReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("randomised test failed with seed {0}; replay it with {SEED_ENV}={0}", self.0);
        }
    }
}

/// `sluice certs` with a client certificate named "store".
fn make_certs(dir: &Path) -> std::path::PathBuf {
    let certs = dir.join("certs");
    let out = sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    certs
}

/// A store config with `settings` (top-level lines) and one source per (name, url).
fn write_store_config(dir: &Path, certs: &Path, settings: &str, sources: &[(String, String)]) -> std::path::PathBuf {
    let mut text = format!(
        "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{settings}[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
        dir.join("store").display(),
        certs.join("store.pem").display(),
        certs.join("store.key").display(),
        certs.join("ca.pem").display()
    );
    for (name, url) in sources {
        text.push_str(&format!("[[source]]\nname = \"{name}\"\nurl = \"https://{url}\"\n"));
    }
    let path = dir.join("store.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Lines a supervisor captured from its child (its own events left out).
fn child_lines(data_dir: &Path) -> usize {
    all_lines(data_dir).iter().filter(|l| !is_own(l)).count()
}

/// What each round of the randomised test does to the store.
#[derive(Debug, Clone, Copy)]
enum Round {
    /// `kill -9` after a random delay.
    Kill,
    /// `SLUICE_STORE_CRASH_AT`: the store aborts itself at that point of its first compaction.
    Abort(&'static str),
}

/// Events each generator writes, and how fast: ingest goes on through every round.
const EVENTS_PER_SOURCE: usize = 60_000;
const EVENTS_PER_SECOND: &str = "3000";
/// Settings that make flushes and compactions happen many times a round.
const CHURN: [&str; 8] = [
    "--flush-rows-max",
    "1000",
    "--flush-age-max",
    "500ms",
    "--compact-inputs-min",
    "3",
    "--compact-segment-bytes-small",
    "1MiB",
];
/// Kill delays after the store is ready: from mid-replay/first fetch to several flushes and
/// compactions later.
const KILL_DELAY_MS: (u64, u64) = (200, 3000);

#[test]
fn store_keeps_every_event_once_across_random_kills_and_compaction_aborts() {
    let seed = test_seed();
    let _report = SeedReport(seed);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut sups = Vec::new();
    let mut sources = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("sup{i}"));
        let script = format!(
            "{exe} gen --count {EVENTS_PER_SOURCE} --rate {EVENTS_PER_SECOND} --seed {i} --bad-ratio 0.01; exec sleep 3600"
        );
        let sup = Supervisor::start(&data, &tls_args, &["sh", "-c", &script]);
        sources.push((format!("web-{i}"), sup.ready_field("chunks")));
        sups.push(sup);
    }
    let config = write_store_config(dir.path(), &certs, "", &sources);
    let store_dir = dir.path().join("store");

    let rounds = [
        Round::Kill,
        Round::Kill,
        Round::Abort("compact_after_output"),
        Round::Kill,
        Round::Abort("compact_after_manifest"),
        Round::Kill,
        Round::Kill,
    ];
    let mut compactions_seen = 0.0f64;
    let mut flushes_seen = 0.0f64;
    for (i, round) in rounds.iter().enumerate() {
        match *round {
            Round::Kill => {
                let mut store = StoreProc::start_with(&config, &CHURN, &[]);
                let delay = rng.range(KILL_DELAY_MS.0, KILL_DELAY_MS.1);
                // The delay is the point of the test (where the kill lands), not a wait for something.
                std::thread::sleep(Duration::from_millis(delay));
                let metrics = store.metrics();
                store.signal(libc::SIGKILL);
                let status = store.wait_status();
                assert_eq!(status.signal(), Some(libc::SIGKILL), "round {i}: seed {seed}");
                // Compactions are counted since the data directory was created; flushes per run.
                compactions_seen =
                    compactions_seen.max(metric_in(&metrics, "sluice_store_compactions_total").unwrap_or(0.0));
                flushes_seen += metric_in(&metrics, "sluice_store_flushes_total").unwrap_or(0.0);
                eprintln!("round {i}: kill -9 after {delay} ms; compactions so far {compactions_seen}");
            }
            Round::Abort(point) => {
                let (status, stderr) = run_store_until_exit(&config, &CHURN, &[("SLUICE_STORE_CRASH_AT", point)]);
                assert_eq!(
                    status.signal(),
                    Some(libc::SIGABRT),
                    "round {i}: the store must abort at {point}, not {status:?}; seed {seed}; stderr:\n{stderr}"
                );
                // The crash left a segment the manifest does not list (the output, or the
                // inputs it replaced): a reader that trusted the directory would count twice.
                let unlisted = unlisted_segment_files(&store_dir);
                assert!(!unlisted.is_empty(), "round {i}: {point} left no unlisted segment; seed {seed}");
                eprintln!("round {i}: aborted at {point}; unlisted segments {unlisted:?}");
            }
        }
    }
    // On a loaded machine the seeded kills may all land before the first compaction: extra kill
    // rounds, each longer, until one has happened (the kill must still land mid-run).
    let mut extra_delay_ms = KILL_DELAY_MS.1;
    while compactions_seen < 1.0 && extra_delay_ms <= 8 * KILL_DELAY_MS.1 {
        let mut store = StoreProc::start_with(&config, &CHURN, &[]);
        // The delay is the point of the round (where the kill lands), not a wait for something.
        std::thread::sleep(Duration::from_millis(extra_delay_ms));
        let metrics = store.metrics();
        store.signal(libc::SIGKILL);
        let status = store.wait_status();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "extra round: seed {seed}");
        compactions_seen = compactions_seen.max(metric_in(&metrics, "sluice_store_compactions_total").unwrap_or(0.0));
        flushes_seen += metric_in(&metrics, "sluice_store_flushes_total").unwrap_or(0.0);
        eprintln!("extra round: kill -9 after {extra_delay_ms} ms; compactions so far {compactions_seen}");
        extra_delay_ms *= 2;
    }
    assert!(flushes_seen >= 2.0, "flushes happened in the kill rounds ({flushes_seen}); seed {seed}");
    assert!(compactions_seen >= 1.0, "compactions happened in the kill rounds ({compactions_seen}); seed {seed}");

    // The last run goes to the end: the generators finish and the store catches up.
    let mut store = StoreProc::start_with(&config, &CHURN, &[]);
    let expected = || -> HashSet<u128> { sups.iter().flat_map(|s| expected_ids(&s.data_dir)).collect() };
    wait_until("the generators finish and the store holds every supervisor event", || {
        if sups.iter().any(|s| child_lines(&s.data_dir) < EVENTS_PER_SOURCE) {
            return false;
        }
        let held = store.metric("sluice_store_rows_in_segments").unwrap_or(0.0)
            + store.metric("sluice_store_rows_buffered").unwrap_or(0.0);
        held >= expected().len() as f64
    });
    let before_stop = expected();
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0, "seed {seed}");

    let (rows, ids) = duckdb_ids(&store_dir);
    let unique: HashSet<u128> = ids.iter().copied().collect();
    assert_eq!(rows as usize, unique.len(), "{} events stored twice; seed {seed}", rows as usize - unique.len());
    let missing = before_stop.difference(&unique).count();
    assert_eq!(missing, 0, "{missing} events of the supervisors are not in the live segments; seed {seed}");
    assert!(unique.is_subset(&expected()), "the store holds events no supervisor wrote; seed {seed}");
    assert!(rows as usize >= 2 * EVENTS_PER_SOURCE, "{rows} rows; seed {seed}");
    // The leftovers of the crashes are gone (removed at start), and a clean stop leaves none.
    assert!(
        unlisted_segment_files(&store_dir).is_empty(),
        "files under segments/ the manifest does not list; seed {seed}"
    );
}

/// The marker line's key and value after the burst of the lost-chunk test.
const BURST_DONE: &str = "\"burst\":\"done\"";
/// Settings of the supervisor in the lost-chunk test: small chunks, and room for only three.
const TINY_CHUNKS: [&str; 6] =
    ["--chunk-bytes-max", "100000", "--line-bytes-max", "16KiB", "--retention-bytes-max", "300000"];

#[test]
fn chunks_discarded_before_fetch_are_counted_lost_once_and_the_rest_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    flags.extend(TINY_CHUNKS.iter().map(|s| s.to_string()));
    let sup_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data = dir.path().join("sup");
    // A burst far faster than the store reads (about 24 MB through 100 kB chunks of which three
    // are kept), a marker line, then a trickle that keeps the source live.
    let script = format!(
        "{exe} gen --count 150000 --seed 5; echo '{{\"time_ns\":'$(date +%s%N)',{BURST_DONE}}}'; \
         exec {exe} gen --rate 10 --seed 6"
    );
    let sup = Supervisor::start(&data, &sup_args, &["sh", "-c", &script]);
    // The store starts late: the supervisor is already discarding chunks.
    wait_until("the supervisor discards chunks for size", || {
        own_events(&data, "retention_discard").iter().any(|e| e.contains("\"reason\":\"size\""))
    });
    let settings = "backfill_workers = 1\nflush_age_max = \"1s\"\n# no compaction: segments stay put while DuckDB reads them\ncompact_inputs_min = 10000\n";
    let config = write_store_config(dir.path(), &certs, settings, &[("late".into(), sup.ready_field("chunks"))]);
    let store_dir = dir.path().join("store");
    let mut store = StoreProc::start(&config);
    let lost = |store: &StoreProc| store.metric("sluice_source_chunks_lost_total{source=\"late\"}").unwrap_or(0.0);

    wait_until("the burst ends", || all_lines(&data).iter().any(|l| contains(l, BURST_DONE.as_bytes())));
    // Every event up to the marker that the supervisor still holds reaches the segments, once.
    // (Asked afresh each time: the growing live chunk can still push an old one out.)
    let burst = || {
        let mut after_marker = false;
        expected_ids_while(&data, |line| {
            let keep = !after_marker;
            after_marker |= contains(line, BURST_DONE.as_bytes());
            keep
        })
    };
    wait_until("the store holds every event of the burst the supervisor still has", || {
        let stored: HashSet<u128> = duckdb_ids(&store_dir).1.into_iter().collect();
        burst().is_subset(&stored)
    });
    let lost_then = lost(&store);
    eprintln!("chunks lost: {lost_then}");
    assert!(lost_then >= 1.0, "chunks discarded before the store fetched them are counted lost");
    let persisted = store.metric("sluice_store_chunks_lost").unwrap_or(0.0);
    assert!(persisted >= lost_then, "the store records each lost chunk ({persisted} < {lost_then})");
    // Live events keep arriving, and no lost chunk is reported or fetched again meanwhile.
    let committed = |store: &StoreProc| store.metric("sluice_store_rows_committed_total").unwrap_or(0.0);
    let committed_then = committed(&store);
    wait_until("more live events", || committed(&store) >= committed_then + 20.0);
    assert_eq!(lost(&store), lost_then, "the lost count stops growing once the rest is read");
    let backlog = store.metric("sluice_source_backlog_chunks{source=\"late\"}").unwrap_or(f64::NAN);
    assert!(backlog <= 1.0, "only the live chunk is left to read, not the lost ones ({backlog})");
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);

    let (rows, ids) = duckdb_ids(&store_dir);
    let unique: HashSet<u128> = ids.iter().copied().collect();
    assert_eq!(rows as usize, unique.len(), "no event twice");
    let held = burst();
    assert!(held.len() > 500, "the supervisor still holds {} events of the burst", held.len());
    assert!(held.is_subset(&unique), "every event of the burst the supervisor holds is stored");
    // The supervisor's own account of what it discarded is among the stored events.
    let discards = duckdb_query(&store_dir, "SELECT count(*) FROM e WHERE sluice_event = 'retention_discard'");
    let discards: u64 = discards.first().expect("a count").parse().unwrap();
    assert!(discards >= 1, "the supervisor's retention_discard events are stored");
}

/// Set (by `.ci/run`, where it can mount) to make the full-disk test fail rather than skip when it
/// cannot mount its small file system.
const TMPFS_ENV: &str = "SLUICE_TEST_TMPFS";

/// A tmpfs mounted on a directory for as long as this lives.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mount one of `size` (as `mount -o size=` takes it) on `dir`; `None` where mounting is not
    /// permitted (not root, or no `CAP_SYS_ADMIN`).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("mount: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let out = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

#[test]
fn a_store_keeping_events_for_less_time_than_its_supervisor_never_fetches_a_chunk_twice() {
    // Before: read progress was forgotten once older than the store's `retention_age_max`, so a
    // store keeping events for less time than its supervisors fetched their older chunks again
    // (at the latest after a restart) and stored every event of them twice.
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    flags.extend(TINY_CHUNKS[..4].iter().map(|s| s.to_string()));
    let sup_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data = dir.path().join("sup");
    let script = format!("{exe} gen --count 3000 --seed 9; exec sleep 3600");
    let sup = Supervisor::start(&data, &sup_args, &["sh", "-c", &script]);
    wait_until("the backlog is written", || child_lines(&data) == 3000);
    let closed = chunks(&data).len() - 1;
    assert!(closed >= 3, "the backlog spans several closed chunks ({closed})");
    let settings = "retention_age_max = \"2s\"\nflush_age_max = \"1s\"\n";
    let config = write_store_config(dir.path(), &certs, settings, &[("web".into(), sup.ready_field("chunks"))]);
    let store_dir = dir.path().join("store");
    let want = expected_ids_while(&data, |_| true);
    let mut store = StoreProc::start(&config);
    wait_until("every event is in the segments", || want.is_subset(&duckdb_ids(&store_dir).1.into_iter().collect()));
    // The progress of those chunks is now older than the store's retention.
    let read_at = std::time::SystemTime::now();
    wait_until("the retention period has passed since", || read_at.elapsed().is_ok_and(|e| e > Duration::from_secs(3)));
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);

    // A restart lists the chunks again: none is left to read, so none is fetched.
    let mut store = StoreProc::start(&config);
    let metric = |store: &StoreProc, name: &str| store.metric(&format!("{name}{{source=\"web\"}}"));
    wait_until("the new store follows the live chunk", || {
        metric(&store, "sluice_source_live_bytes_total").is_some_and(|b| b > 0.0)
    });
    let backlog = metric(&store, "sluice_source_backlog_chunks").unwrap_or(f64::NAN);
    assert!(backlog <= 1.0, "only the live chunk is left to read, of {} ({backlog})", closed + 1);
    assert_eq!(metric(&store, "sluice_source_backfill_bytes_total"), Some(0.0), "no closed chunk is fetched");
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);
    // (Retention runs a minute after start: it removed nothing during this test.)
    let (rows, ids) = duckdb_ids(&store_dir);
    let stored: HashSet<u128> = ids.iter().copied().collect();
    assert_eq!(rows as usize, stored.len(), "no event twice");
    assert!(want.is_subset(&stored));
}

#[test]
fn a_full_disk_pauses_ingest_and_it_resumes_with_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    // Smaller than one closed chunk (1 MB), which the store commits whole: its first commit of one
    // finds the disk full.
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "1m") else {
        assert!(std::env::var_os(TMPFS_ENV).is_none(), "{TMPFS_ENV} is set but a tmpfs cannot be mounted");
        eprintln!("skipped: cannot mount a tmpfs here (needs root); {TMPFS_ENV}=1 makes that a failure");
        return;
    };
    let certs = make_certs(dir.path());
    let flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    let sup_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let data = dir.path().join("sup");
    let exe = env!("CARGO_BIN_EXE_sluice");
    // The child stays after its events: a supervisor whose child has exited stops serving.
    let script = format!("{exe} gen --count 40000 --seed 8; exec sleep 3600");
    let sup = Supervisor::start(&data, &sup_args, &["sh", "-c", &script]);
    wait_until("the backlog is written", || child_lines(&data) == 40_000);
    let config =
        write_store_config(&disk.0, &certs, "flush_age_max = \"1s\"\n", &[("web".into(), sup.ready_field("chunks"))]);
    let store_dir = disk.0.join("store");
    let mut store = StoreProc::start(&config);

    // Commits are refused while the disk is full, and /healthz says why (and keeps saying so while
    // a small commit of the live chunk still fits now and then).
    let mut body = String::new();
    wait_until("the store reports the full disk", || {
        let (code, text) = store.healthz();
        body = text;
        code == 503 && body.contains("No space left on device")
    });
    assert!(body.starts_with("new events refused, the write-ahead log cannot be written: wal file"), "{body}");
    assert!(store.metric("sluice_store_wal_append_errors_total").unwrap_or(0.0) >= 1.0);
    assert_eq!(store.metric("sluice_store_stopped"), Some(0.0));

    // Room again: the store catches up by itself.
    disk.resize("256m");
    let child_ids = || -> HashSet<u128> {
        let stream = std::fs::read_to_string(data.join("stream-id")).unwrap();
        let stream = u128::from_str_radix(stream.trim(), 16).unwrap();
        let mut ids = HashSet::new();
        for (id, bytes, _) in chunks(&data) {
            let mut offset = 0u64;
            for line in bytes.split_inclusive(|&b| b == b'\n') {
                if let Some(l) = line.strip_suffix(b"\n").filter(|l| !is_own(l)) {
                    ids.insert(sluice_event::event_id(stream, &id.to_string(), offset, l));
                }
                offset += line.len() as u64;
            }
        }
        ids
    };
    let want = child_ids();
    assert_eq!(want.len(), 40_000);
    wait_until("every event of the backlog is in the segments", || {
        want.is_subset(&duckdb_ids(&store_dir).1.into_iter().collect())
    });
    wait_until("/healthz is ok again, once no append has been refused for a while", || {
        let (code, text) = store.healthz();
        assert!(code == 200 || text.starts_with("new events refused"), "{code} {text}");
        (code, text.as_str()) == (200, "ok\n")
    });
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);

    let (rows, ids) = duckdb_ids(&store_dir);
    let stored: HashSet<u128> = ids.iter().copied().collect();
    assert_eq!(rows as usize, stored.len(), "no event twice");
    assert!(want.is_subset(&stored), "{} of the backlog's events are missing", want.difference(&stored).count());
}

#[test]
fn the_store_runs_without_transparent_huge_pages() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    // A source nobody serves: the store starts and keeps retrying it, which is all this needs.
    let config = write_store_config(dir.path(), &certs, "", &[("none".into(), "127.0.0.1:9".into())]);
    let mut store = StoreProc::start(&config);
    let status = std::fs::read_to_string(format!("/proc/{}/status", store.child.id())).unwrap();
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);
    // Kernels before 6.x do not print the field; where it is printed it must say off.
    if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    } else {
        eprintln!("this kernel does not report THP_enabled; nothing to check");
    }
}
