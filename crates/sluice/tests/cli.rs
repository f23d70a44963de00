//! End-to-end tests: the real `sluice` binary, real processes, real files.

mod support;

use support::*;

const NO_LISTEN: [&str; 4] = ["--listen", "none", "--metrics-listen", "none"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = NO_LISTEN.to_vec();
    v.extend_from_slice(extra);
    v
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
    let out = sluice().args(["supervise", "--data-dir", x, "--", "true"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sluice certs"), "{err}");
    assert!(!dir.path().join("x").exists(), "a refused start touches no disk");
}
