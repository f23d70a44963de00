//! End-to-end tests: the real `sluice` binary, real processes, real files.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod client;
mod demo;
mod query;
mod store_faults;
mod support;
mod web;

use support::*;

const NO_LISTEN: [&str; 4] = ["--listen", "none", "--metrics-listen", "none"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = NO_LISTEN.to_vec();
    v.extend_from_slice(extra);
    v
}

/// What the child left running (here a `sleep` holding its stdout) is stopped when the child
/// exits, with its process group: not orphaned, and not writing into a finished run's pipes.
#[test]
fn what_the_child_started_is_stopped_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pid_file = dir.path().join("grandchild.pid");
    let script =
        format!("sleep 300 & echo $! > {}; echo '{{\"time_ns\":1,\"msg\":\"bye\"}}'; exit 3", pid_file.display());
    let mut sup = Supervisor::start(&data, &args(&["--restart", "never"]), &["sh", "-c", &script]);
    assert_eq!(sup.wait(), 3);
    let pid: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // Gone, or a zombie waiting for whoever adopted it to reap it: not running.
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim_start().starts_with(|c| c != 'Z')))
            .unwrap_or(false)
    };
    wait_until("the grandchild to stop", || !running());
}

#[test]
fn good_and_bad_lines_land_valid_ones_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let gen_args = ["--count", "20000", "--seed", "7", "--bad-ratio", "0.02"];
    let expected = gen_output(&gen_args);
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut cmd = vec![exe, "gen"];
    cmd.extend_from_slice(&gen_args);
    let mut sup = Supervisor::start(&data, &args(&["--restart", "never"]), &cmd);
    assert_eq!(sup.wait(), 0);

    let user: Vec<Vec<u8>> = all_lines(&data).into_iter().filter(|l| !is_own(l)).collect();
    let lines: Vec<&[u8]> = expected.split(|&b| b == b'\n').collect();
    // The generator's output ends with a newline: the last split piece is empty, not a line.
    let lines = &lines[..lines.len() - 1];
    assert_eq!(user.len(), lines.len(), "every line is stored once");
    let mut bad = 0;
    for (stored, original) in user.iter().zip(lines) {
        if sluice_event::check_line(original, false).is_empty() {
            assert_eq!(stored.as_slice(), *original, "valid lines are stored byte-for-byte");
        } else {
            bad += 1;
            assert!(contains(stored, b"\"sluice_bad\":"), "bad line wrapped: {}", String::from_utf8_lossy(stored));
            assert!(sluice_event::check_line(stored, true).is_empty(), "the wrapped event is well-formed");
        }
    }
    assert!(bad > 100, "the generator made bad lines ({bad})");
    // Ids valid, increasing, chunks closed and below the size limit.
    let chunks = chunks(&data);
    assert!(chunks.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(chunks.iter().all(|(_, bytes, closed)| *closed && bytes.len() < 1_000_000));
    assert!(chunks.len() >= 3, "4 MB of events fill several 1 MB chunks");
}

#[test]
fn stderr_lines_are_wrapped_and_marked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let script = r#"echo 'panic: oh no {"time_ns":1,"a":"b"}' >&2; echo '{"time_ns":5,"a":"b"}'"#;
    let mut sup = Supervisor::start(&data, &args(&["--restart", "never"]), &["sh", "-c", script]);
    assert_eq!(sup.wait(), 0);
    let lines: Vec<String> = all_lines(&data).iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    let stderr: Vec<&String> = lines.iter().filter(|l| l.contains("\"sluice_origin\":\"stderr\"")).collect();
    assert_eq!(stderr.len(), 1, "{lines:#?}");
    assert!(stderr[0].contains(r#"panic: oh no {\"time_ns\":1,\"a\":\"b\"}"#), "{}", stderr[0]);
    assert!(lines.iter().any(|l| l == r#"{"time_ns":5,"a":"b"}"#));
}

#[test]
fn rotates_at_size_and_every_chunk_stays_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut sup = Supervisor::start(
        &data,
        &args(&["--restart", "never", "--chunk-bytes-max", "150000", "--line-bytes-max", "16KiB"]),
        &[exe, "gen", "--count", "10000"],
    );
    assert_eq!(sup.wait(), 0);
    let chunks = chunks(&data);
    assert!(chunks.len() >= 10, "{} chunks", chunks.len());
    for (id, bytes, _) in &chunks {
        assert!(bytes.len() < 150_000, "chunk {id} has {} bytes", bytes.len());
    }
    assert!(own_events(&data, "chunk_closed").iter().filter(|e| e.contains("\"reason\":\"size\"")).count() >= 9);
}

#[test]
fn rotates_at_age() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut sup = Supervisor::start(&data, &args(&["--chunk-age-max", "1s"]), &[exe, "gen", "--rate", "200"]);
    wait_until("two chunks closed for age", || {
        own_events(&data, "chunk_closed").iter().filter(|e| e.contains("\"reason\":\"age\"")).count() >= 2
    });
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait(), 0);
}

#[test]
fn retention_by_size_discards_oldest_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut sup = Supervisor::start(
        &data,
        &args(&["--chunk-bytes-max", "100000", "--line-bytes-max", "16KiB", "--retention-bytes-max", "300000"]),
        &[exe, "gen", "--rate", "20000"],
    );
    wait_until("a size retention event", || {
        own_events(&data, "retention_discard").iter().any(|e| e.contains("\"reason\":\"size\""))
    });
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait(), 0);
    let total: usize = chunks(&data).iter().map(|c| c.1.len()).sum();
    assert!(total <= 300_000 + 100_000, "{total} bytes kept");
    // The oldest chunks went first: the first chunk id is gone.
    let first_opened = own_events(&data, "chunk_opened");
    assert!(!first_opened.is_empty());
}

#[test]
fn retention_by_age_discards_old_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut sup = Supervisor::start(
        &data,
        &args(&["--chunk-age-max", "1s", "--retention-age-max", "2s"]),
        &[exe, "gen", "--rate", "200"],
    );
    wait_until("an age retention event", || {
        own_events(&data, "retention_discard").iter().any(|e| e.contains("\"reason\":\"age\""))
    });
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait(), 0);
}

#[test]
fn restart_policies() {
    let dir = tempfile::tempdir().unwrap();
    // on-failure restarts a failing child with backoff until stopped.
    let data = dir.path().join("a");
    let sup = Supervisor::start(
        &data,
        &args(&["--restart", "on-failure", "--restart-delay-min", "10ms"]),
        &["sh", "-c", "exit 3"],
    );
    wait_until("three starts", || own_events(&data, "child_started").len() >= 3);
    let scheduled = own_events(&data, "restart_scheduled");
    assert!(scheduled.len() >= 2);
    assert!(own_events(&data, "child_exited").iter().all(|e| e.contains("\"exit_code\":3")));
    sup.signal(libc::SIGTERM);
    let mut sup = sup;
    assert_eq!(sup.wait(), 0);
    // never: the supervisor exits with the child's code.
    let data = dir.path().join("b");
    let mut sup = Supervisor::start(&data, &args(&["--restart", "never"]), &["sh", "-c", "exit 3"]);
    assert_eq!(sup.wait(), 3);
    assert_eq!(own_events(&data, "child_started").len(), 1);
    // on-failure does not restart a child that succeeded.
    let data = dir.path().join("c");
    let mut sup = Supervisor::start(&data, &args(&[]), &["true"]);
    assert_eq!(sup.wait(), 0);
    assert_eq!(own_events(&data, "child_started").len(), 1);
    // always restarts a child that succeeded.
    let data = dir.path().join("d");
    let sup = Supervisor::start(&data, &args(&["--restart", "always", "--restart-delay-min", "10ms"]), &["true"]);
    wait_until("a restart of a successful child", || own_events(&data, "child_started").len() >= 2);
    sup.signal(libc::SIGTERM);
    let mut sup = sup;
    assert_eq!(sup.wait(), 0);
}

#[test]
fn sigterm_forwards_flushes_and_closes_the_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let mut sup = Supervisor::start(&data, &args(&[]), &[exe, "gen", "--rate", "500"]);
    wait_until("some events", || all_lines(&data).iter().filter(|l| !is_own(l)).count() > 20);
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait(), 0);
    let chunks = chunks(&data);
    assert!(chunks.iter().all(|c| c.2), "every chunk closed");
    let exited = own_events(&data, "child_exited");
    assert_eq!(exited.len(), 1);
    assert!(exited[0].contains("\"signal\":15") || exited[0].contains("\"exit_code\":0"), "{}", exited[0]);
    let last = String::from_utf8_lossy(all_lines(&data).last().unwrap()).into_owned();
    assert!(last.contains("\"chunk_closed\"") && last.contains("\"reason\":\"shutdown\""), "{last}");
}

#[test]
fn kill_9_then_restart_keeps_events_and_never_reuses_ids() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let expected = gen_output(&["--count", "3000000", "--seed", "3"]);
    let mut sup = Supervisor::start(&data, &args(&[]), &[exe, "gen", "--count", "3000000", "--seed", "3"]);
    wait_until("a few chunks", || chunks(&data).len() >= 3);
    sup.signal(libc::SIGKILL);
    sup.wait();
    let before = chunks(&data);
    let max_before = before.iter().map(|c| c.0).max().unwrap();
    assert!(before.iter().any(|c| !c.2), "an unclosed chunk is left by kill -9");

    let mut sup = Supervisor::start(&data, &args(&["--restart", "never"]), &["true"]);
    assert_eq!(sup.wait(), 0);
    let after = chunks(&data);
    assert!(after.iter().all(|c| c.2), "repair closed every chunk");
    assert!(after.iter().any(|c| c.0 > max_before), "new chunks after the restart");
    assert!(!own_events(&data, "chunk_repaired").is_empty());
    for (id, bytes, _) in &after {
        assert!(bytes.ends_with(b"\n"), "chunk {id} ends in a torn line");
    }
    // The events before the kill are exactly a prefix of what the generator wrote.
    let user: Vec<Vec<u8>> = all_lines(&data).into_iter().filter(|l| !is_own(l)).collect();
    assert!(!user.is_empty());
    let mut lines = expected.split(|&b| b == b'\n');
    for (i, stored) in user.iter().enumerate() {
        assert_eq!(Some(stored.as_slice()), lines.next(), "event {i} differs");
    }
}

#[test]
fn bad_flags_get_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("x");
    let x = x.to_str().unwrap();
    let out = sluice().args(["supervise", "--data-dir", x, "--fsync", "sometimes", "--", "true"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("always, never or interval=DURATION"), "{err}");
    let out = sluice()
        .args(["supervise", "--data-dir", x, "--chunk-bytes-max", "10000", "--listen", "none", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--chunk-bytes-max"), "{err}");
    assert_eq!(err.matches("is too small for").count(), 1, "said once: {err}");
    let out = sluice().args(["store", "--config"]).arg(dir.path().join("none.toml")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("none.toml: No such file or directory"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "said once: {err}");
    let out = sluice().args(["supervise", "--data-dir", x, "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sluice certs"), "{err}");
    assert!(!dir.path().join("x").exists(), "a refused start touches no disk");
}

/// A refused `sluice store` start: file lines after `data_dir` and `listen`, flags, environment,
/// the line the error names (if it names one) and what it must say.
struct RefusedStart {
    file: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    line: Option<usize>,
    says: &'static str,
}

const REFUSED_STARTS: &[RefusedStart] = &[
    RefusedStart {
        file: "\nflush_age_max = \"soon\"\n",
        args: &[],
        env: &[],
        line: Some(4),
        says: "flush_age_max: \"soon\" is not a duration",
    },
    RefusedStart {
        file: "compact_segment_bytes_small = \"1 parsec\"\n",
        args: &[],
        env: &[],
        line: Some(3),
        says: "compact_segment_bytes_small: unknown size unit",
    },
    RefusedStart {
        file: "",
        args: &[],
        env: &[("SLUICE_STORE_BUFFER_BYTES_MAX", "1MiB")],
        line: None,
        says: "buffer_bytes_max 1048576 (from",
    },
    RefusedStart {
        file: "flush_zstd_level = 30\n",
        args: &[],
        env: &[],
        line: Some(3),
        says: "flush_zstd_level = 30 is out of range; give a number from 1 to 22",
    },
    RefusedStart {
        file: "flush_rows_max = 5000\n",
        args: &["--buffer-rows-max", "10"],
        env: &[],
        line: None,
        says: "buffer_rows_max 10 is below flush_rows_max 5000",
    },
    RefusedStart {
        file: "",
        args: &["--compact-inputs-min", "1"],
        env: &[],
        line: None,
        says: "'--compact-inputs-min <N>': 1 is out of range; give a number from 2 to 10000",
    },
    RefusedStart {
        file: "",
        args: &["--flush-age-max", "0s"],
        env: &[],
        line: None,
        says: "\"0s\" is zero; give a duration like 60s",
    },
    RefusedStart {
        file: "",
        args: &[],
        env: &[("SLUICE_STORE_KEYS_MAX", "many")],
        line: None,
        says: "'--keys-max <N>': \"many\" is not a whole number",
    },
    RefusedStart {
        file: "",
        args: &[],
        env: &[("SLUICE_STORE_KEYS_MAX", "many")],
        line: None,
        says: "note: the value came from the environment variable SLUICE_STORE_KEYS_MAX",
    },
    RefusedStart {
        file: "retention_bytes_max = \"0\"\n",
        args: &[],
        env: &[],
        line: Some(3),
        says: "retention_bytes_max: \"0\" is zero, which would delete every segment once written",
    },
    RefusedStart {
        file: "",
        args: &["--retention-age-max", "0s"],
        env: &[],
        line: None,
        says: "\"0s\" is zero, which would delete every event once flushed; give an age like 7d",
    },
    RefusedStart {
        file: "",
        args: &["--buffer-bytes-max", "1.5GiB"],
        env: &[],
        line: None,
        says: "\"1.5GiB\" has a fraction; a size is a whole number of a unit: write 1536MiB, not 1.5GiB",
    },
    RefusedStart {
        file: "",
        args: &[],
        env: &[("SLUICE_STORE_CRASH_AT", "now")],
        line: None,
        says: "SLUICE_STORE_CRASH_AT=\"now\" is not a crash point",
    },
];

#[test]
fn store_settings_errors_name_the_flag_variable_or_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("store.toml");
    let data = dir.path().join("store-data");
    for case in REFUSED_STARTS {
        let what = format!("{:?} {:?} {:?}", case.file, case.args, case.env);
        let text = format!("data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n{}", data.display(), case.file);
        std::fs::write(&config, text).unwrap();
        let out = sluice()
            .arg("store")
            .arg("--config")
            .arg(&config)
            .args(case.args)
            .envs(case.env.iter().copied())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{what} must be refused");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(case.says), "{what}: expected {:?} in\n{err}", case.says);
        if let Some(line) = case.line {
            let at = format!("{}:{line}: {}", config.display(), case.says);
            assert!(err.contains(&at), "{what}: expected {at:?} in\n{err}");
        }
    }
    assert!(!data.exists(), "a refused start touches no disk");
}

#[test]
fn a_store_whose_client_key_or_certificate_is_unusable_refuses_to_start() {
    // Before: it said "ready", answered /healthz "ok", and pulled nothing, ever.
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).status().unwrap().success());
    let config = dir.path().join("store.toml");
    let data = dir.path().join("store-data");
    let cases = [
        ("server.key", "store.pem", "cannot use key"),
        ("store.key", "store.key", "no certificate found"),
        ("store.key", ".", "cannot read"),
    ];
    for (key, cert, says) in cases {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n\
                 [[source]]\nname = \"web\"\nurl = \"https://127.0.0.1:9\"\n",
                data.display(),
                certs.join(cert).display(),
                certs.join(key).display(),
                certs.join("ca.pem").display()
            ),
        )
        .unwrap();
        let out = sluice().arg("store").arg("--config").arg(&config).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "key {key}, cert {cert}: {err}");
        let at = format!("{}: source \"web\": ", config.display());
        assert!(
            err.contains(&at) && err.contains(says),
            "key {key}, cert {cert}: expected {at:?} and {says:?} in\n{err}"
        );
        assert!(!err.contains("ready"), "{err}");
    }
    assert!(!data.exists(), "a refused start touches no disk");
}

/// `curl` with a client certificate from `certs`, as the README shows.
fn curl(certs: &std::path::Path, client: &str, url: &str) -> std::process::Command {
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--fail-with-body", "--max-time", "60", "--cacert"])
        .arg(certs.join("ca.pem"))
        .arg("--cert")
        .arg(certs.join(format!("{client}.pem")))
        .arg("--key")
        .arg(certs.join(format!("{client}.key")))
        .arg(url);
    c
}

#[test]
fn mtls_end_to_end_with_curl_sighup_reload_and_metrics() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = sluice().args(["certs", "--client", "alice", "--client", "bob", "--dir"]).arg(&certs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let data = dir.path().join("data");
    let exe = env!("CARGO_BIN_EXE_sluice");
    let allow = certs.join("allowed-clients.txt");
    let mut flags = tls_flags(&certs, &allow);
    flags[3] = "127.0.0.1:0".into(); // --metrics-listen: this test scrapes it
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut sup = Supervisor::start(&data, &tls_args, &[exe, "gen", "--rate", "200"]);
    let base = format!("https://localhost:{}", sup.ready_field("chunks").rsplit(':').next().unwrap());
    let metrics_url = format!("http://{}/metrics", sup.ready_field("metrics"));

    let list = curl(&certs, "alice", &format!("{base}/chunk/")).output().unwrap();
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let ids = String::from_utf8(list.stdout).unwrap();
    let open = ids.split_whitespace().last().expect("at least the open chunk").to_string();

    // Alice follows the open chunk.
    let mut follow = curl(&certs, "alice", &format!("{base}/chunk/{open}"))
        .arg("-N")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::io::BufReader::new(follow.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut received = Vec::new();
    let take = |received: &mut Vec<String>| received.extend(rx.try_iter());
    wait_until("alice's stream starts", || {
        take(&mut received);
        received.len() > 5
    });
    assert!(curl(&certs, "bob", &format!("{base}/chunk/")).output().unwrap().status.success());

    // Drop bob from the allow list; SIGHUP.
    let text = std::fs::read_to_string(&allow).unwrap();
    let alice_fp = text.lines().skip_while(|l| !l.contains("\"alice\"")).nth(1).unwrap().to_string();
    std::fs::write(&allow, format!("# only alice now\n{alice_fp}\n")).unwrap();
    sup.signal(libc::SIGHUP);
    wait_until("the reload event", || !own_events(&data, "tls_reloaded").is_empty());
    let refused = curl(&certs, "bob", &format!("{base}/chunk/")).output().unwrap();
    assert!(!refused.status.success(), "bob must be refused after the reload");
    assert!(refused.stdout.is_empty(), "a refused client gets no HTTP response at all");
    wait_until("a client_rejected event", || !own_events(&data, "client_rejected").is_empty());

    // Alice's stream goes on after the reload.
    take(&mut received);
    let before = received.len();
    wait_until("alice still receives events", || {
        take(&mut received);
        received.len() > before + 5
    });
    // A broken allow list keeps the old one.
    std::fs::write(&allow, "not a fingerprint\n").unwrap();
    sup.signal(libc::SIGHUP);
    wait_until("the failed reload event", || !own_events(&data, "tls_reload_failed").is_empty());
    assert!(curl(&certs, "alice", &format!("{base}/chunk/")).output().unwrap().status.success());

    let scrape = || {
        let out = std::process::Command::new("curl").args(["-sS", &metrics_url]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let read = |metrics: &str, prefix: &str| -> Option<f64> {
        metrics.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    };
    // The first group commit comes within one fsync interval.
    wait_until("a group commit", || read(&scrape(), "sluice_fsyncs_total").is_some_and(|v| v >= 1.0));
    let metrics = scrape();
    let value = |prefix: &str| read(&metrics, prefix).unwrap_or_else(|| panic!("{prefix} missing in\n{metrics}"));
    assert!(value("sluice_handshakes_rejected_total{reason=\"not_allowed\"}") >= 1.0);
    assert!(value("sluice_clients_accepted_total") >= 3.0);
    assert!(value("sluice_served_bytes_total") > 0.0);
    assert!(value("sluice_captured_events_total") > 0.0);

    // Shutdown ends alice's response properly: curl exits 0 only for a complete chunked body.
    sup.signal(libc::SIGTERM);
    assert_eq!(sup.wait(), 0);
    let status = follow.wait().unwrap();
    assert!(status.success(), "the follow response must end properly at shutdown: {status:?}");
}

#[test]
fn store_pulls_every_event_exactly_once_across_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).output().unwrap();
    assert!(out.status.success());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut sups = Vec::new();
    let mut sources = String::new();
    for i in 0..3 {
        let data = dir.path().join(format!("sup{i}"));
        // The generator writes its events, then the child stays up so the supervisor keeps serving.
        let script = format!("{exe} gen --count 40000 --seed {i} --bad-ratio 0.01; exec sleep 3600");
        let sup = Supervisor::start(&data, &tls_args, &["sh", "-c", &script]);
        sources.push_str(&format!("[[source]]\nname = \"web-{i}\"\nurl = \"https://{}\"\n", sup.ready_field("chunks")));
        sups.push(sup);
    }
    // A second URL for the first supervisor: the same stream, so nothing may be stored twice.
    let port0 = sups[0].ready_field("chunks").rsplit(':').next().unwrap().to_string();
    sources.push_str(&format!("[[source]]\nname = \"web-0-again\"\nurl = \"https://localhost:{port0}\"\n"));
    // A supervisor whose allow list does not hold the store's certificate: an error for that
    // source alone.
    let other = dir.path().join("other-certs");
    assert!(sluice()
        .args(["certs", "--client", "someone-else", "--dir"])
        .arg(&other)
        .output()
        .unwrap()
        .status
        .success());
    let refusing_flags = tls_flags(&certs, &other.join("allowed-clients.txt"));
    let refusing_args: Vec<&str> = refusing_flags.iter().map(String::as_str).collect();
    let refusing = Supervisor::start(&dir.path().join("refusing"), &refusing_args, &["sleep", "3600"]);
    sources
        .push_str(&format!("[[source]]\nname = \"refusing\"\nurl = \"https://{}\"\n", refusing.ready_field("chunks")));
    let store_dir = dir.path().join("store");
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n{sources}",
            store_dir.display(),
            certs.join("store.pem").display(),
            certs.join("store.key").display(),
            certs.join("ca.pem").display()
        ),
    )
    .unwrap();

    // Crash the store in the middle of ingesting.
    let store = StoreProc::start(&config);
    wait_until("some events committed", || {
        store.metric("sluice_store_rows_committed_total").is_some_and(|n| n >= 10_000.0)
    });
    store.signal(libc::SIGKILL);
    let mut store = store;
    store.wait();

    // Restart: it must catch up with everything the supervisors hold.
    let mut store = StoreProc::start(&config);
    let expected =
        || -> std::collections::HashSet<u128> { sups.iter().flat_map(|s| expected_ids(&s.data_dir)).collect() };
    wait_until("the store holds every supervisor event", || {
        let want = expected().len() as f64;
        let held = store.metric("sluice_store_rows_in_segments").unwrap_or(0.0)
            + store.metric("sluice_store_rows_buffered").unwrap_or(0.0);
        held >= want
    });
    let refused = store.metric("sluice_source_errors_total{source=\"refusing\",kind=\"tls\"}").unwrap_or(0.0);
    assert!(refused >= 1.0, "the refusing source reports TLS errors");
    // And the store says so on stderr, naming the source (once a minute at most).
    let mut told = Vec::new();
    wait_until("the refusing source's failure on stderr", || {
        told.extend(store.stderr_so_far());
        told.iter().any(|l| l.starts_with("sluice store: source refusing: tls: "))
    });
    let before_stop = expected();
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);

    let (rows, ids) = duckdb_ids(&store_dir);
    let unique: std::collections::HashSet<u128> = ids.iter().copied().collect();
    assert_eq!(rows as usize, unique.len(), "an event is stored twice");
    let missing = before_stop.difference(&unique).count();
    assert_eq!(missing, 0, "{missing} events of the supervisors are not in the store's segments");
    // Nothing the supervisors did not write (they only grow, so read them again now).
    let after = expected();
    assert!(unique.is_subset(&after), "the store holds events no supervisor wrote");
    assert!(rows >= 120_000, "{rows} rows");
}

/// A port that was free a moment ago (for a config written before its server starts).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn store_takes_newest_events_first_after_a_source_outage() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    assert!(sluice().args(["certs", "--client", "store", "--dir"]).arg(&certs).output().unwrap().status.success());
    let exe = env!("CARGO_BIN_EXE_sluice");
    let data = dir.path().join("sup");
    // A backlog written while the store could not reach the supervisor: synthetic times in 2026-11.
    let mut prefill =
        Supervisor::start(&data, &args(&["--restart", "never"]), &[exe, "gen", "--count", "60000", "--seed", "9"]);
    assert_eq!(prefill.wait(), 0);
    assert!(chunks(&data).len() >= 8, "a backlog of several chunks");

    let port = free_port();
    let store_dir = dir.path().join("store");
    let config = dir.path().join("store.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\nlisten = \"127.0.0.1:0\"\nbackfill_workers = 1\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[[source]]\nname = \"back\"\nurl = \"https://127.0.0.1:{port}\"\n",
            store_dir.display(),
            certs.join("store.pem").display(),
            certs.join("store.key").display(),
            certs.join("ca.pem").display()
        ),
    )
    .unwrap();
    let mut store = StoreProc::start(&config);
    wait_until("the store notices the source is down", || {
        store.metric("sluice_source_errors_total{source=\"back\",kind=\"connect\"}").is_some_and(|n| n >= 1.0)
    });
    // The source comes back, with live events (wall-clock times) on top of its backlog.
    let mut flags = tls_flags(&certs, &certs.join("allowed-clients.txt"));
    flags[1] = format!("127.0.0.1:{port}"); // --listen: the port the store already knows
    let tls_args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let script = format!("{exe} gen --rate 200 --count 400; exec sleep 3600");
    let sup = Supervisor::start(&data, &tls_args, &["sh", "-c", &script]);
    // Until the live child has written all its events, the backlog is not yet everything there is.
    wait_until("the live events are written", || {
        let generated: usize = chunks(&sup.data_dir)
            .iter()
            .map(|(_, bytes, _)| {
                bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty() && !contains(l, b"\"sluice_origin\"")).count()
            })
            .sum();
        generated >= 60_400
    });
    wait_until("the backlog completes", || {
        let want = expected_ids(&sup.data_dir).len() as f64;
        let held = store.metric("sluice_store_rows_in_segments").unwrap_or(0.0)
            + store.metric("sluice_store_rows_buffered").unwrap_or(0.0);
        held >= want
    });
    store.signal(libc::SIGTERM);
    assert_eq!(store.wait(), 0);

    // Receive times: the first live event arrived before the first event of the oldest backlog.
    let script = r#"
import duckdb, json, sys
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
paths = [d + "/" + s["path"] for s in m["segments"]]
con = duckdb.connect()
con.execute("CREATE VIEW e AS SELECT * FROM read_parquet(%r, hive_partitioning=true, union_by_name=true)" % paths)
first_synthetic = con.execute("SELECT min(time_ns) FROM e WHERE time_ns < 1794000000000000000 AND sluice_origin IS NULL").fetchone()[0]
oldest = con.execute("SELECT min(sluice_received_ns) FROM e WHERE time_ns < ? + 1000000000", [first_synthetic]).fetchone()[0]
live = con.execute("SELECT min(sluice_received_ns) FROM e WHERE time_ns > 1794000000000000000 AND sluice_origin IS NULL").fetchone()[0]
last_synthetic = con.execute("SELECT max(time_ns) FROM e WHERE time_ns < 1794000000000000000 AND sluice_origin IS NULL").fetchone()[0]
newest_backlog = con.execute("SELECT min(sluice_received_ns) FROM e WHERE time_ns > ? - 1000000000 AND time_ns < 1794000000000000000", [last_synthetic]).fetchone()[0]
total = con.execute("SELECT count(*), count(DISTINCT sluice_id) FROM e").fetchone()
print(oldest, live, total[0], total[1], newest_backlog)
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&store_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: Vec<u64> = text.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (oldest, live, rows, distinct, newest_backlog) = (v[0], v[1], v[2], v[3], v[4]);
    assert!(newest_backlog < oldest, "backfill goes newest first: {newest_backlog} vs oldest {oldest}");
    assert!(live < oldest, "live events (received {live}) must come before the oldest backlog (received {oldest})");
    assert_eq!(rows, distinct, "no event twice");
    assert!(rows >= 60_400, "{rows}");
}

#[test]
fn the_child_does_not_outlive_a_killed_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pid_file = dir.path().join("child.pid");
    let script = format!("echo $$ > {}; exec sleep 3600", pid_file.display());
    let mut sup = Supervisor::start(&data, &args(&[]), &["sh", "-c", &script]);
    wait_until("the child wrote its pid", || std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    sup.signal(libc::SIGKILL);
    sup.wait();
    // Ended: gone, or a zombie waiting for whoever reaps orphans here.
    let ended = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    };
    wait_until("the orphaned child to end", ended);
}
