//! Integration tests of the HTTPS chunk server and the ops listener: real sockets on loopback,
//! real certificates, a real chunk log on disk, a hyper client over tokio-rustls.
//! Not here: the `sluice supervise` binary end to end (the binary's own tests do that).

#![allow(clippy::unwrap_used)] // a test that fails on unwrap says where; helpers included

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use sluice_chunk::{ChunkState, LogConfig};
use sluice_supervisor::metrics::REJECT_REASONS;
use sluice_supervisor::serve::ServeConfig;
use support::*;
use tokio::io::AsyncReadExt;

fn rejected(fixture: &Fixture, reason: &str) -> u64 {
    let i = REJECT_REASONS.iter().position(|&r| r == reason).unwrap();
    fixture.metrics.handshakes_rejected[i].load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_names_every_chunk_oldest_first_open_last() {
    let f = Fixture::start().await;
    f.rotate();
    f.rotate();
    let mut c = f.http(f.client(ALICE)).await;
    let response = get(&mut c, "/chunk/").await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(header(&response, "sluice-stream-id"), Some(f.log.stream_id().to_string().as_str()));
    let body = String::from_utf8(body_bytes(response).await).unwrap();
    let expected: String = f.log.list().iter().map(|c| format!("{}\n", c.id)).collect();
    assert_eq!(body, expected);
    assert_eq!(body.lines().count(), 3);
    assert_eq!(body.lines().last().unwrap(), f.open_id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_chunk_is_served_byte_identical_with_validators() {
    let f = Fixture::start().await;
    let id = f.rotate();
    let on_disk = f.chunk_bytes(id);
    let mut c = f.http(f.client(ALICE)).await;

    let response = get(&mut c, &format!("/chunk/{id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "sluice-chunk-state"), Some("closed"));
    assert_eq!(header(&response, "content-type"), Some("application/x-ndjson"));
    assert_eq!(header(&response, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&response, "content-length"), Some(on_disk.len().to_string().as_str()));
    let etag = format!("\"{}-{id}-{}\"", f.log.stream_id(), on_disk.len());
    assert_eq!(header(&response, "etag"), Some(etag.as_str()));
    assert_eq!(body_bytes(response).await, on_disk);

    let response = request(&mut c, "GET", &format!("/chunk/{id}"), &[("if-none-match", &etag)]).await.unwrap();
    assert_eq!(response.status(), 304);
    assert!(body_bytes(response).await.is_empty());

    let response = request(&mut c, "HEAD", &format!("/chunk/{id}"), &[]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-length"), Some(on_disk.len().to_string().as_str()));
    assert!(body_bytes(response).await.is_empty());
    assert!(f.metrics.bytes_served.load(Ordering::Relaxed) >= on_disk.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_chunk_streams_new_lines_and_ends_properly_at_rotation() {
    let f = Fixture::start().await;
    let id = f.open_id();
    f.log.append(event_line("before").as_bytes()).unwrap();
    let written = f.log.progress(id).unwrap().len as usize;
    let mut c = f.http(f.client(ALICE)).await;
    let response = get(&mut c, &format!("/chunk/{id}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "sluice-chunk-state"), Some("open"));
    assert_eq!(header(&response, "cache-control"), Some("no-store"));
    assert_eq!(header(&response, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&response, "content-length"), None);
    let mut body = response.into_body();
    let mut got = Vec::new();
    read_at_least(&mut body, &mut got, written).await;
    assert_eq!(f.metrics.followers.load(Ordering::Relaxed), 1);

    // New lines arrive while the response is open.
    for i in 0..3 {
        let marker = format!("live-{i}");
        f.log.append(event_line(&marker).as_bytes()).unwrap();
        read_until_contains(&mut body, &mut got, &marker).await;
    }

    // Rotation closes the chunk: the rest arrives and the body ends with its final chunk.
    let closed = f.rotate();
    assert_eq!(closed, id);
    read_to_end(&mut body, &mut got).await.expect("the body ends properly when the chunk closes");
    assert_eq!(got, f.chunk_bytes(id));
    wait_until("followers back to 0", || f.metrics.followers.load(Ordering::Relaxed) == 0).await;

    // The connection is still good for another request.
    assert_eq!(get(&mut c, "/chunk/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_does_not_make_the_server_read_ahead() {
    let written_bytes = 32 << 20;
    let config = LogConfig { chunk_bytes_max: 2 * written_bytes, ..small_log_config() };
    let f = Fixture::start_with(config, ServeConfig::default()).await;
    let id = f.open_id();
    let mut c = f.http_small_buffer(f.client(ALICE)).await;
    let mut body = get(&mut c, &format!("/chunk/{id}")).await.into_body();
    let line = event_line(&"y".repeat(1000));
    let mut batch = String::new();
    while batch.len() < 1 << 20 {
        batch.push_str(&line);
    }
    while f.log.progress(id).unwrap().len < written_bytes {
        f.log.append(batch.as_bytes()).unwrap();
    }
    // The client reads nothing: wait until the server has stopped pushing (kernel, TLS and
    // hyper buffers full), then check it read only a bounded amount of the chunk.
    let served = || f.metrics.bytes_served.load(Ordering::Relaxed);
    let mut last = (served(), 0);
    wait_until("the server stalls", || {
        let now = served();
        last = if now == last.0 { (now, last.1 + 1) } else { (now, 0) };
        last.1 >= 50
    })
    .await;
    let stalled_at = served();
    assert!(stalled_at > 0);
    assert!(stalled_at < written_bytes / 4, "the server read {stalled_at} bytes ahead of a stalled client");
    assert_eq!(f.metrics.followers.load(Ordering::Relaxed), 1);

    // Once the client reads again, everything arrives.
    f.log.close().unwrap();
    let mut got = Vec::new();
    read_to_end(&mut body, &mut got).await.unwrap();
    assert!(got == f.chunk_bytes(id), "the body differs from the chunk file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_resumes_closed_and_open_chunks() {
    let f = Fixture::start().await;
    let closed = f.rotate();
    let data = f.chunk_bytes(closed);
    let mut c = f.http(f.client(ALICE)).await;

    let mid = data.len() / 2;
    let response = get(&mut c, &format!("/chunk/{closed}?offset={mid}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "sluice-offset"), Some(mid.to_string().as_str()));
    assert_eq!(header(&response, "content-length"), Some((data.len() - mid).to_string().as_str()));
    assert_eq!(body_bytes(response).await, &data[mid..]);

    let response = get(&mut c, &format!("/chunk/{closed}?offset={}", data.len())).await;
    assert_eq!(response.status(), 200);
    assert!(body_bytes(response).await.is_empty());

    let response = get(&mut c, &format!("/chunk/{closed}?offset={}", data.len() + 1)).await;
    assert_eq!(response.status(), 416);
    assert_eq!(header(&response, "content-range"), Some(format!("bytes */{}", data.len()).as_str()));

    // Open chunk: from the middle of what is written, then live, then the proper end.
    let open = f.open_id();
    f.log.append(event_line("first").as_bytes()).unwrap();
    let written = f.log.progress(open).unwrap().len;
    let past = get(&mut c, &format!("/chunk/{open}?offset={}", written + 1)).await;
    assert_eq!(past.status(), 416);
    assert_eq!(header(&past, "sluice-chunk-state"), Some("open"));
    body_bytes(past).await;
    let from = written / 2;
    let response = get(&mut c, &format!("/chunk/{open}?offset={from}")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "sluice-offset"), Some(from.to_string().as_str()));
    assert_eq!(header(&response, "sluice-chunk-state"), Some("open"));
    let mut body = response.into_body();
    let mut got = Vec::new();
    f.log.append(event_line("second").as_bytes()).unwrap();
    read_until_contains(&mut body, &mut got, "second").await;
    f.log.close().unwrap();
    read_to_end(&mut body, &mut got).await.unwrap();
    assert_eq!(got, &f.chunk_bytes(open)[from as usize..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_offsets_are_400() {
    let f = Fixture::start().await;
    let id = f.rotate();
    let mut c = f.http(f.client(ALICE)).await;
    for query in [
        "offset=",
        "offset=abc",
        "offset=-1",
        "offset=+5",
        "offset=1&offset=2",
        "ofset=3",
        "offset=99999999999999999999999",
    ] {
        let response = get(&mut c, &format!("/chunk/{id}?{query}")).await;
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(header(&response, "content-type"), Some("text/plain; charset=utf-8"));
        assert!(!body_bytes(response).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_on_closed_chunks_and_ignored_on_the_open_one() {
    let f = Fixture::start().await;
    let id = f.rotate();
    let data = f.chunk_bytes(id);
    let len = data.len();
    let mut c = f.http(f.client(ALICE)).await;
    let path = format!("/chunk/{id}");

    let response = request(&mut c, "GET", &path, &[("range", "bytes=100-")]).await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-range"), Some(format!("bytes 100-{}/{len}", len - 1).as_str()));
    assert_eq!(body_bytes(response).await, &data[100..]);

    let response = request(&mut c, "GET", &path, &[("range", "bytes=10-19")]).await.unwrap();
    assert_eq!(response.status(), 206);
    assert_eq!(header(&response, "content-range"), Some(format!("bytes 10-19/{len}").as_str()));
    assert_eq!(body_bytes(response).await, &data[10..20]);

    let response = request(&mut c, "GET", &path, &[("range", &format!("bytes={len}-"))]).await.unwrap();
    assert_eq!(response.status(), 416);
    assert_eq!(header(&response, "content-range"), Some(format!("bytes */{len}").as_str()));
    body_bytes(response).await;

    // A stale If-Range gets the whole chunk.
    let response = request(&mut c, "GET", &path, &[("range", "bytes=100-"), ("if-range", "\"other\"")]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(body_bytes(response).await, data);

    let open = f.open_id();
    let response = request(&mut c, "GET", &format!("/chunk/{open}"), &[("range", "bytes=10-")]).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "content-range"), None);
    f.log.close().unwrap();
    assert_eq!(body_bytes(response).await, f.chunk_bytes(open));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_and_unknown_chunks_are_404() {
    let config = LogConfig { retention_bytes_max: 100_000, ..small_log_config() };
    let f = Fixture::start_with(config, ServeConfig::default()).await;
    let first = f.rotate();
    let mut c = f.http(f.client(ALICE)).await;
    let response = get(&mut c, &format!("/chunk/{first}")).await;
    assert_eq!(response.status(), 200);
    body_bytes(response).await;
    // Past the size limit, retention (on rotation, or at the latest on the next tick) discards
    // the oldest chunk.
    f.rotate();
    f.rotate();
    f.log.tick().unwrap();
    assert!(f.log.progress(first).is_none(), "retention discarded the oldest chunk");
    let response = get(&mut c, &format!("/chunk/{first}")).await;
    assert_eq!(response.status(), 404);
    assert!(String::from_utf8(body_bytes(response).await).unwrap().contains("no such chunk"));
    let listing = String::from_utf8(body_bytes(get(&mut c, "/chunk/").await).await).unwrap();
    assert!(!listing.contains(&first.to_string()));
    // Well-formed ids no chunk has: one never handed out, one with a leading zero digit.
    for id in ["Z", "11"] {
        assert_eq!(get(&mut c, &format!("/chunk/{id}")).await.status(), 404, "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_400_other_paths_404_other_methods_405() {
    let f = Fixture::start().await;
    let mut c = f.http(f.client(ALICE)).await;
    let cases = [
        "/chunk/../x",
        "/chunk/..",
        "/chunk/%2e%2e",
        "/chunk/%2E%2E%2Fstream-id",
        "/chunk/c5fxmd",
        "/chunk/12345678912345678",
        "/chunk//",
        "/chunk/?offset=0",
        "/chunk/C5FXMD/",
        "/chunk/C5F%20XMD",
    ];
    for path in cases {
        let response = get(&mut c, path).await;
        assert_eq!(response.status(), 400, "{path}");
        assert_eq!(header(&response, "content-type"), Some("text/plain; charset=utf-8"), "{path}");
        assert!(!body_bytes(response).await.is_empty(), "{path}");
    }
    for path in ["/", "/chunk", "/chunks/", "/stream-id", "/metrics"] {
        let response = get(&mut c, path).await;
        assert_eq!(response.status(), 404, "{path}");
        body_bytes(response).await;
    }
    let response = request(&mut c, "POST", "/chunk/", &[]).await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(header(&response, "allow"), Some("GET, HEAD"));
    body_bytes(response).await;
    assert!(f.metrics.requests.load(Ordering::Relaxed) >= cases.len() as u64 + 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_an_allowed_valid_certificate_are_refused() {
    let f = Fixture::start().await;

    expect_tls_refusal(&f, f.anonymous_client()).await;
    wait_until("no_certificate counted", || rejected(&f, "no_certificate") == 1).await;

    // A certificate from another CA set, unknown to the allow list.
    let stranger = sluice_tls::generate(
        &f.dir.path().join("stranger"),
        &sluice_tls::CertSpec { clients: vec!["stranger".into()], ..Default::default() },
    )
    .unwrap();
    let (_, cert, key, stranger_fp) = stranger.clients[0].clone();
    expect_tls_refusal(&f, f.client_with(&cert, &key)).await;
    wait_until("not_allowed counted", || rejected(&f, "not_allowed") == 1).await;

    // An expired certificate, even though it is listed.
    let now = time::OffsetDateTime::now_utc();
    let (cert, key, expired_fp) = sluice_tls::generate_client_with_validity(
        &f.certs.dir,
        "old",
        now - time::Duration::days(30),
        now - time::Duration::days(1),
    )
    .unwrap();
    let mut allow = std::fs::read_to_string(&f.certs.allow_list).unwrap();
    allow.push_str(&format!("{}\n", sluice_tls::format_fingerprint(&expired_fp)));
    std::fs::write(&f.certs.allow_list, allow).unwrap();
    f.tls.reload().unwrap();
    expect_tls_refusal(&f, f.client_with(&cert, &key)).await;
    wait_until("expired counted", || rejected(&f, "expired") == 1).await;

    assert_eq!(f.metrics.clients_accepted.load(Ordering::Relaxed), 0);
    let stranger_fp = sluice_tls::format_fingerprint(&stranger_fp);
    let expired_fp = sluice_tls::format_fingerprint(&expired_fp);
    for needles in [
        &["\"client_rejected\"", "\"reason\":\"no_certificate\"", "\"fingerprint\":\"\"", "\"peer\":\"127.0.0.1:"][..],
        &["\"client_rejected\"", "\"reason\":\"not_allowed\"", &stranger_fp],
        &["\"client_rejected\"", "\"reason\":\"expired\"", &expired_fp],
    ] {
        wait_until(&format!("event {needles:?}"), || f.open_chunk_has(needles)).await;
    }

    // A client that gets in is recorded too.
    let mut c = f.http(f.client(ALICE)).await;
    assert_eq!(get(&mut c, "/chunk/").await.status(), 200);
    let alice_fp = sluice_tls::format_fingerprint(&f.certs.clients[0].3);
    wait_until("client_accepted event", || f.open_chunk_has(&["\"client_accepted\"", &alice_fp])).await;
    assert_eq!(f.metrics.clients_accepted.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_events_are_rate_limited() {
    let f = Fixture::start().await;
    let attempts = 40;
    let started = std::time::Instant::now();
    for _ in 0..attempts {
        expect_tls_refusal(&f, f.anonymous_client()).await;
    }
    let windows = started.elapsed().as_secs() + 1;
    // Every refusal is counted, events or not.
    wait_until("all rejections counted", || rejected(&f, "no_certificate") == attempts).await;
    let id = f.open_id();
    let events = || -> (u64, u64) {
        let text = String::from_utf8(f.chunk_bytes(id)).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("\"client_rejected\"")).collect();
        let suppressed = lines
            .iter()
            .filter_map(|l| l.split("\"suppressed\":").nth(1))
            .map(|rest| rest.trim_end_matches('}').parse::<u64>().unwrap())
            .sum();
        (lines.len() as u64, suppressed)
    };
    // The first window always admits its first 10.
    wait_until("the first window's events", || events().0 >= 10).await;
    let (written, suppressed) = events();
    // At most 10 events per window; windows start at least a second apart, so a burst of E
    // seconds touches at most floor(E) + 1 of them.
    assert!(written <= 10 * windows, "{written} events in at most {windows} windows");
    assert!(written + suppressed <= attempts, "{written} events + {suppressed} suppressed > {attempts} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_cuts_removed_clients_and_keeps_allowed_streams() {
    let f = Fixture::start().await;
    let id = f.open_id();
    let mut alice = f.http(f.client(ALICE)).await;
    let mut bob = f.http(f.client(BOB)).await;
    let mut alice_body = get(&mut alice, &format!("/chunk/{id}")).await.into_body();
    let mut bob_body = get(&mut bob, &format!("/chunk/{id}")).await.into_body();
    let (mut alice_got, mut bob_got) = (Vec::new(), Vec::new());
    f.log.append(event_line("both-see-this").as_bytes()).unwrap();
    read_until_contains(&mut alice_body, &mut alice_got, "both-see-this").await;
    read_until_contains(&mut bob_body, &mut bob_got, "both-see-this").await;

    let bob_fp = sluice_tls::format_fingerprint(&f.certs.clients[1].3);
    std::fs::write(&f.certs.allow_list, format!("# only bob now\n{bob_fp}\n")).unwrap();
    f.tls.reload().unwrap();
    f.reloads.send_modify(|n| *n += 1);

    // Alice's stream is cut: an error, never a proper end.
    let cut = within("alice cut", async {
        loop {
            match alice_body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Ok(e),
                None => return Err("alice's body ended properly instead of being cut"),
            }
        }
    })
    .await;
    cut.unwrap();

    // Bob's goes on.
    f.log.append(event_line("bob-only").as_bytes()).unwrap();
    read_until_contains(&mut bob_body, &mut bob_got, "bob-only").await;
    // Alice's connection task ends after her stream is cut, not necessarily before Bob's read.
    wait_until("alice's connection gone", || f.metrics.clients_connected.load(Ordering::Relaxed) == 1).await;

    // Alice cannot come back.
    expect_tls_refusal(&f, f.client(ALICE)).await;
    wait_until("not_allowed counted", || rejected(&f, "not_allowed") == 1).await;
    let alice_fp = sluice_tls::format_fingerprint(&f.certs.clients[0].3);
    wait_until("client_revoked event", || f.open_chunk_has(&["\"client_revoked\"", &alice_fp])).await;

    f.log.close().unwrap();
    read_to_end(&mut bob_body, &mut bob_got).await.unwrap();
    assert_eq!(bob_got, f.chunk_bytes(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let config = ServeConfig { connections_max: 1, ..ServeConfig::default() };
    let f = Fixture::start_with(small_log_config(), config).await;
    let mut first = f.http(f.client(ALICE)).await;
    assert_eq!(get(&mut first, "/chunk/").await.status(), 200);
    // The second connection is accepted by the kernel and closed by the server unread.
    let second = within("second connect", f.connect(f.client(BOB))).await;
    if let Ok(mut tls) = second {
        let mut buf = [0u8; 16];
        let n = within("second read", tls.read(&mut buf)).await;
        assert!(!matches!(n, Ok(n) if n > 0), "the second connection got data: {n:?}");
    }
    assert_eq!(f.metrics.connections_refused_cap.load(Ordering::Relaxed), 1);
    assert_eq!(get(&mut first, "/chunk/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_header_timeout() {
    let config =
        ServeConfig { request_header_timeout: std::time::Duration::from_millis(200), ..ServeConfig::default() };
    let f = Fixture::start_with(small_log_config(), config).await;
    let mut tls = within("connect", f.connect(f.client(ALICE))).await.unwrap();
    let mut buf = [0u8; 64];
    // No request: the server closes (a clean end or a reset, but never data).
    let n = within("server closes the idle connection", tls.read(&mut buf)).await;
    assert!(!matches!(n, Ok(n) if n > 0), "{n:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_followers_end_properly() {
    let f = Fixture::start().await;
    let id = f.open_id();
    let mut c = f.http(f.client(ALICE)).await;
    let mut body = get(&mut c, &format!("/chunk/{id}")).await.into_body();
    let mut got = Vec::new();
    f.log.append(event_line("before-shutdown").as_bytes()).unwrap();
    read_until_contains(&mut body, &mut got, "before-shutdown").await;
    f.shutdown.send(true).unwrap();
    f.log.close().unwrap();
    read_to_end(&mut body, &mut got).await.unwrap();
    assert_eq!(got, f.chunk_bytes(id));
    let Fixture { server, .. } = f;
    within("server ends", server).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_metrics_move_with_traffic_and_healthz_follows_the_log() {
    let f = Fixture::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops_addr = listener.local_addr().unwrap();
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(sluice_supervisor::ops::serve_ops(listener, Arc::clone(&f.log), Arc::clone(&f.metrics), stop_rx));
    let scrape = |path: &'static str| async move {
        let tcp = tokio::net::TcpStream::connect(ops_addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
        let response = within("ops response", sender.send_request(req)).await.unwrap();
        let status = response.status();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
        let body = within("ops body", response.into_body().collect()).await.unwrap().to_bytes();
        (status, content_type, String::from_utf8(body.to_vec()).unwrap())
    };
    let value = |text: &str, name: &str| -> u64 {
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(' ')).unwrap();
        line[name.len() + 1..].parse().unwrap()
    };
    let served = "sluice_served_bytes_total";
    let accepted = "sluice_clients_accepted_total";
    let no_cert = "sluice_handshakes_rejected_total{reason=\"no_certificate\"}";

    let (status, content_type, before) = scrape("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4; charset=utf-8"));
    assert_eq!((value(&before, served), value(&before, accepted), value(&before, no_cert)), (0, 0, 0));

    let closed = f.rotate();
    let mut c = f.http(f.client(ALICE)).await;
    let n = body_bytes(get(&mut c, &format!("/chunk/{closed}")).await).await.len() as u64;
    expect_tls_refusal(&f, f.anonymous_client()).await;
    wait_until("rejection counted", || rejected(&f, "no_certificate") == 1).await;

    let (_, _, after) = scrape("/metrics").await;
    assert_eq!(value(&after, served), n);
    assert_eq!(value(&after, accepted), 1);
    assert_eq!(value(&after, no_cert), 1);
    assert_eq!(value(&after, "sluice_clients_connected"), 1);
    assert!(value(&after, "sluice_requests_total") >= 1);
    assert!(value(&after, "sluice_chunks_closed_total") >= 1);

    assert_eq!(
        scrape("/healthz").await,
        (http::StatusCode::OK, Some("text/plain; charset=utf-8".into()), "ok\n".into())
    );
    assert_eq!(scrape("/nope").await.0, 404);
    f.log.close().unwrap();
    assert_eq!(scrape("/healthz").await.0, 503);
    assert!(matches!(f.log.progress(closed).map(|c| c.state), Some(ChunkState::Closed)));
}
