//! The query engine over a real in-process store: SQL across segments and the buffer, pruning,
//! masking, search operators, errors and live tail.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use sluice_pull::Batch;
use sluice_sql::{Access, Engine, EngineConfig, MaskKey, QueryError, SearchRequest, HIDDEN};
use sluice_store::{Store, StoreConfig};

const VIEWER: Access = Access { pii: false };
const PII: Access = Access { pii: true };
const HOUR_NS: u64 = 3_600_000_000_000;
/// 2026-11-01T00:00:00Z.
const T0: u64 = 1_761_955_200_000_000_000;

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    engine: Engine,
    offset: u64,
    chunk: u32,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with_engine(EngineConfig::default())
    }

    fn with_engine(engine: EngineConfig) -> Fixture {
        Fixture::with_configs(engine, |_| {})
    }

    fn with_configs(engine: EngineConfig, store: impl FnOnce(&mut StoreConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = StoreConfig::new(dir.path());
        cfg.maintenance = false;
        store(&mut cfg);
        let store = Arc::new(Store::open(cfg).unwrap());
        let engine = Engine::with_key(store.clone(), engine, MaskKey::from_bytes([9; 16]));
        Fixture { _dir: dir, store, engine, offset: 0, chunk: 0 }
    }

    /// Commit lines as one batch of a new chunk.
    async fn commit(&mut self, lines: &[String]) {
        let mut data = Vec::new();
        for l in lines {
            data.extend_from_slice(l.as_bytes());
            data.push(b'\n');
        }
        self.chunk += 1;
        let batch = Batch {
            source: Arc::from("web-1"),
            stream: 0xabc,
            chunk: Arc::from(format!("AAAAAA{:04}", self.chunk).as_str()),
            start_offset: self.offset,
            lines: Bytes::from(data),
            received_ns: now_ns(),
            chunk_complete: true,
        };
        self.offset = 0;
        self.store.commit_batch(batch).await.unwrap();
    }

    fn flush(&self) {
        self.store.flush().unwrap();
    }
}

fn event(i: u64, time_ns: u64) -> String {
    let method = ["GetUser", "ListOrders", "PutCart"][(i % 3) as usize];
    let level = if i.is_multiple_of(10) { "error" } else { "info" };
    format!(
        r#"{{"time_ns":{time_ns},"level":"{level}","rpc_method":"{method}","duration_ms":{},"msg":"request {i} done in time","pii_uid":"U{i:06}"}}"#,
        i % 100
    )
}

fn u64s(out: &[RecordBatch], column: &str) -> Vec<u64> {
    out.iter()
        .flat_map(|b| {
            let c = cast(b.column_by_name(column).unwrap(), &DataType::UInt64).unwrap();
            let c = c.as_primitive::<UInt64Type>().clone();
            (0..c.len()).map(move |i| c.value(i)).collect::<Vec<_>>()
        })
        .collect()
}

fn strings(out: &[RecordBatch], column: &str) -> Vec<Option<String>> {
    out.iter()
        .flat_map(|b| {
            let c = b.column_by_name(column).unwrap().as_string::<i32>().clone();
            (0..c.len()).map(move |i| c.is_valid(i).then(|| c.value(i).to_owned())).collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_segments_and_buffer_together() {
    let mut f = Fixture::new();
    let lines: Vec<String> = (0..300).map(|i| event(i, T0 + i * 1_000_000_000)).collect();
    f.commit(&lines[..100]).await;
    f.flush();
    f.commit(&lines[100..200]).await;
    f.flush();
    f.commit(&lines[200..]).await;
    let out = f.engine.sql("SELECT count(*) AS n, sum(duration_ms) AS s FROM events", PII).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(300));
    let expected: u64 = (0..300).map(|i| i % 100).sum();
    assert_eq!(u64s(&out.batches, "s"), vec![expected]);
    assert_eq!(out.stats.segments_read, 2);
    assert_eq!(out.stats.buffer_rows, 100);
    assert!(out.stats.rows_scanned >= 300, "{:?}", out.stats);

    // Grouping, with the same answer as the generator's arithmetic.
    let out = f
        .engine
        .sql("SELECT rpc_method, count(*) AS n FROM events GROUP BY rpc_method ORDER BY rpc_method", VIEWER)
        .await
        .unwrap();
    assert_eq!(
        strings(&out.batches, "rpc_method"),
        vec![Some("GetUser".into()), Some("ListOrders".into()), Some("PutCart".into())]
    );
    assert_eq!(u64s(&out.batches, "n"), vec![100, 100, 100]);
}

/// A 3-way cross join of 4,000 rows (a segment and the buffer, so several partitions): 6.4e10
/// combinations, hours of work, which its time limit must end. Without yielding above the joins
/// the aggregate pulls the joins' output in one poll and the limit never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_limit_ends_a_join_whose_output_dwarfs_its_input() {
    let mut f = Fixture::with_engine(EngineConfig { time_max: Duration::from_millis(500), ..EngineConfig::default() });
    let lines: Vec<String> = (0..4000).map(|i| event(i, T0 + i * 1_000_000)).collect();
    f.commit(&lines[..2000]).await;
    f.flush();
    f.commit(&lines[2000..]).await;
    let engine = f.engine.clone();
    let started = Instant::now();
    let query = tokio::spawn(async move {
        engine
            .sql(
                "SELECT sum(a.duration_ms * b.duration_ms + c.duration_ms) AS s FROM events a, events b, events c \
                 WHERE a.duration_ms + b.duration_ms + c.duration_ms > 1",
                PII,
            )
            .await
    });
    // Generous for a loaded machine; without the fix the answer takes hours.
    let out = tokio::time::timeout(Duration::from_secs(120), query)
        .await
        .unwrap_or_else(|_| panic!("no answer {:?} after a 500 ms time limit", started.elapsed()))
        .unwrap();
    assert!(
        matches!(out, Err(QueryError::Timeout(d)) if d == Duration::from_millis(500)),
        "{:?}",
        out.map(|o| o.stats)
    );
}

/// A join whose filter compiles a LIKE pattern per pair of rows and matches none: nothing comes
/// out to yield on, so one poll computes the whole join (minutes). The caller's runtime — in the
/// store, the one that serves `/healthz`, pulls sources and acts on SIGTERM — must stay free, and
/// the caller must get its answer at the time limit, not when the poll ends.
#[tokio::test(flavor = "current_thread")]
async fn a_query_that_never_yields_leaves_the_callers_runtime_free_and_answers_at_its_limit() {
    let mut f = Fixture::with_engine(EngineConfig { time_max: Duration::from_secs(1), ..EngineConfig::default() });
    let lines: Vec<String> = (0..6000).map(|i| event(i, T0 + i * 1_000_000)).collect();
    f.commit(&lines).await;
    let engine = f.engine.clone();
    let started = Instant::now();
    let mut query = tokio::spawn(async move {
        engine
            .sql(
                "SELECT count(*) AS n FROM events a, events b \
                 WHERE a.msg || b.rpc_method LIKE b.msg || a.rpc_method || '%zz%'",
                VIEWER,
            )
            .await
    });
    // A tick every 50 ms on this (single) thread: the longest gap is how long the query held it.
    let mut gap_max = Duration::ZERO;
    let mut last = Instant::now();
    let out = loop {
        tokio::select! {
            out = &mut query => break out.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {
                gap_max = gap_max.max(last.elapsed());
                last = Instant::now();
                assert!(started.elapsed() < Duration::from_secs(60), "no answer after 60 s for a 1 s limit");
            }
        }
    };
    gap_max = gap_max.max(last.elapsed());
    assert!(matches!(out, Err(QueryError::Timeout(_))), "{:?}", out.map(|o| o.stats));
    assert_eq!((f.engine.queries_timed_out(), f.engine.queries_running()), (1, 1), "answered, still computing");
    // Generous for a loaded machine; without its own threads the query held this one for minutes.
    assert!(started.elapsed() < Duration::from_secs(15), "answered after {:?}", started.elapsed());
    assert!(gap_max < Duration::from_secs(5), "the caller's thread was held for {gap_max:?}");
    // The runaway keeps its slot until it really stops, and the other slots still answer.
    let out = f.engine.sql("SELECT count(*) AS n FROM events", PII).await.unwrap();
    assert_eq!(u64s(&out.batches, "n"), vec![6000]);
}

/// A tail's step matches on the tails' own threads: a heavy one (200 alternatives over 20,000
/// rows) leaves the caller's runtime free, as a query does.
#[tokio::test(flavor = "current_thread")]
async fn a_tail_step_runs_off_the_callers_runtime() {
    let mut f = Fixture::new();
    f.commit(&[event(1, T0)]).await;
    let words: Vec<String> = (0..200).map(|i| format!("zz{i}q")).collect();
    let mut tail = f.engine.tail(&format!("{} OR needle", words.join(" OR ")), VIEWER).unwrap();
    let lines: Vec<String> = (0..20_000).map(|i| event(i, T0 + i * 1_000_000)).collect();
    f.commit(&lines).await;
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"a needle"}}"#, T0 + 1)]).await;
    let started = Instant::now();
    let mut step = tokio::spawn(async move { tail.next().await });
    let mut gap_max = Duration::ZERO;
    let mut last = Instant::now();
    let got = loop {
        tokio::select! {
            got = &mut step => break got.unwrap().unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                gap_max = gap_max.max(last.elapsed());
                last = Instant::now();
                assert!(started.elapsed() < Duration::from_secs(120), "no step after 120 s");
            }
        }
    };
    let took = started.elapsed();
    assert_eq!(strings(&got.batches, "msg").into_iter().flatten().collect::<Vec<_>>(), ["a needle"]);
    // Generous for a loaded machine; run on this thread, the step held it for all it took.
    assert!(gap_max < Duration::from_secs(1) && gap_max * 4 < took, "held for {gap_max:?} of {took:?}");
}

/// A result larger than the memory limit is refused, even when no operator asked the memory pool
/// for it (a scalar function can build a huge value in one call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_memory_limit_is_refused() {
    let mut f = Fixture::with_engine(EngineConfig { memory_max_bytes: 4 << 20, ..EngineConfig::default() });
    f.commit(&[event(1, T0)]).await;
    // Each part is under the limit, the answer is not.
    let both = "SELECT repeat('x', 3000000) AS a, repeat('y', 3000000) AS b";
    let ref50 = "$0".repeat(50);
    let regexp = format!("SELECT regexp_replace(repeat('a', 100000), 'a', '{ref50}', 'g') AS big");
    // One call that would build more than the limit is refused before it builds anything: a
    // literal, and per row of a column.
    for (sql, says) in [
        (both, "the result reached"),
        ("SELECT repeat('x', 8000000) AS big", "repeat would build up to 8000000 bytes"),
        ("SELECT repeat(msg, 1000000) AS big FROM events", "repeat would build up to"),
        ("SELECT lpad('x', 2000000) AS big", "lpad would build up to 8000000 bytes"),
        ("SELECT rpad(msg, 2000000, 'é') AS big FROM events", "rpad would build up to"),
        // Functions that multiply what they are given, each argument under the limit.
        (
            "SELECT replace(repeat('a', 1000000), 'a', repeat('b', 1000000)) AS big",
            "replace would build up to 1000002000000 bytes",
        ),
        ("SELECT replace(msg, '', repeat('b', 200000)) AS big FROM events", "replace would build up to"),
        (regexp.as_str(), "regexp_replace would build up to"),
        ("SELECT concat(repeat('x', 3000000), repeat('y', 3000000)) AS big", "concat would build up to 6000000 bytes"),
        (
            "SELECT concat_ws(repeat('-', 1000000), msg, msg, msg, msg) AS big FROM events",
            "concat_ws would build up to",
        ),
        ("SELECT repeat('x', 3000000) || repeat('y', 3000000) AS big", "|| would build up to 6000000 bytes"),
        (
            "SELECT msg || repeat('y', 4000000) || repeat('z', 1000000) AS big FROM events",
            "|| would build up to 5000022",
        ),
        // Doubling level by level: each level under the limit until one is not, however small
        // the answer (a length).
        (
            "WITH a AS (SELECT repeat('x', 1000000) AS v), b AS (SELECT v || v AS v FROM a), \
             c AS (SELECT v || v AS v FROM b), d AS (SELECT v || v AS v FROM c) SELECT length(v) AS n FROM d",
            "|| would build up to 8000000 bytes",
        ),
    ] {
        match f.engine.sql(sql, PII).await {
            Err(e @ QueryError::TooLarge { .. }) => {
                assert_eq!(e.status(), 413);
                assert!(e.to_string().contains(says), "{sql}: {e}");
            }
            other => panic!("{sql}: {:?}", other.map(|o| o.rows())),
        }
    }
    let out = f.engine.sql("SELECT lpad(msg, 30, '-') AS p FROM events", PII).await.unwrap();
    assert_eq!(strings(&out.batches, "p"), [Some(format!("{}request 1 done in time", "-".repeat(8)))]);
    let out = f
        .engine
        .sql(r"SELECT replace(msg, 'request', 'req') AS r, regexp_replace(msg, '(\d+)', '#$1') AS x FROM events", PII)
        .await
        .unwrap();
    assert_eq!(strings(&out.batches, "r"), [Some("req 1 done in time".to_owned())]);
    assert_eq!(strings(&out.batches, "x"), [Some("request #1 done in time".to_owned())]);
    let out = f.engine.sql("SELECT msg || ' / ' || rpc_method AS j, msg || NULL AS n FROM events", PII).await.unwrap();
    assert_eq!(strings(&out.batches, "j"), [Some("request 1 done in time / ListOrders".to_owned())]);
    assert_eq!(strings(&out.batches, "n"), [None], "|| with NULL is NULL");
    // Under the limit it is served.
    let out = f.engine.sql("SELECT repeat('x', 1000000) AS big", PII).await.unwrap();
    assert_eq!(strings(&out.batches, "big")[0].as_deref().map(str::len), Some(1_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_footers_are_read_once_and_a_compacted_segment_afresh() {
    let mut f = Fixture::new();
    let lines: Vec<String> = (0..200).map(|i| event(i, T0 + i * 1_000_000_000)).collect();
    for part in lines.chunks(50) {
        f.commit(part).await;
        f.flush();
    }
    let sum = "SELECT count(*) AS n, sum(duration_ms) AS s FROM events";
    let expected: u64 = (0..200).map(|i| i % 100).sum();
    let first = f.engine.sql(sum, PII).await.unwrap();
    assert_eq!((u64s(&first.batches, "n"), u64s(&first.batches, "s")), (vec![200], vec![expected]));
    let cached = f.engine.segment_metadata_cache();
    assert_eq!((cached.segments, cached.page_indexes, cached.hits), (4, 4, 0), "{cached:?}");
    assert!(cached.bytes > 0);
    // A filter prunes with the page index; it is cached with the footer, not read again per query.
    let filtered = "SELECT count(*) AS n FROM events WHERE duration_ms = 7";
    for _ in 0..2 {
        assert_eq!(u64s(&f.engine.sql(filtered, PII).await.unwrap().batches, "n"), vec![2]);
    }
    let cached = f.engine.segment_metadata_cache();
    assert_eq!((cached.segments, cached.page_indexes), (4, 4), "{cached:?}");

    let again = f.engine.sql(sum, PII).await.unwrap();
    assert_eq!(u64s(&again.batches, "s"), vec![expected]);
    let cached = f.engine.segment_metadata_cache();
    assert_eq!(cached.segments, 4);
    assert!(cached.hits >= 12, "every later query reuses every footer: {cached:?}");

    // A compaction's output is a new file: read fresh, the same answer.
    assert!(f.store.compact().unwrap() > 0);
    let after = f.engine.sql(sum, PII).await.unwrap();
    assert_eq!((u64s(&after.batches, "n"), u64s(&after.batches, "s")), (vec![200], vec![expected]));
    assert_eq!(after.stats.segments_read, 1);
    let cached = f.engine.segment_metadata_cache();
    assert_eq!((cached.segments, cached.page_indexes), (5, 5), "{cached:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segments_outside_the_time_range_are_skipped() {
    let mut f = Fixture::new();
    for hour in 0..4u64 {
        let lines: Vec<String> = (0..50).map(|i| event(i, T0 + hour * HOUR_NS + i)).collect();
        f.commit(&lines).await;
        f.flush();
    }
    let sql = format!(
        "SELECT count(*) AS n FROM events WHERE time_ns >= {} AND time_ns < {}",
        T0 + 3 * HOUR_NS,
        T0 + 4 * HOUR_NS
    );
    let out = f.engine.sql(&sql, VIEWER).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(50));
    assert_eq!((out.stats.segments_read, out.stats.segments_skipped), (1, 3), "{:?}", out.stats);
    let out = f.engine.sql("SELECT count(*) AS n FROM events", VIEWER).await.unwrap();
    assert_eq!((out.stats.segments_read, out.stats.segments_skipped), (4, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pii_is_masked_for_viewers_everywhere_and_cannot_be_probed() {
    let mut f = Fixture::new();
    let mut lines: Vec<String> = (0..20).map(|i| event(i, T0 + i)).collect();
    // A pii_ key whose type conflicts with its column lands in the overflow JSON.
    lines.push(format!(r#"{{"time_ns":{},"pii_uid":7,"pii_email":"x@example.com","msg":"conflict"}}"#, T0 + 100));
    lines.push(format!(r#"{{"time_ns":{},"sluice_bad":"not_json","sluice_raw":"secret U000003 text"}}"#, T0 + 101));
    lines.push("this line is not json U000004".to_owned());
    // `pii_` in any case: as columns, and as a value of conflicting type in the overflow JSON.
    lines.push(format!(r#"{{"time_ns":{},"PII_Email":"boss@example.com","Pii_n":5}}"#, T0 + 102));
    lines.push(format!(r#"{{"time_ns":{},"Pii_n":"card 4111 secret"}}"#, T0 + 103));
    f.commit(&lines[..10]).await;
    f.flush();
    f.commit(&lines[10..]).await;

    let probe = "SELECT count(*) AS n FROM events WHERE pii_uid = 'U000003'";
    let out = f.engine.sql(probe, VIEWER).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(0), "a clear value cannot be confirmed");
    let out = f.engine.sql(probe, PII).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(1));

    let out = f.engine.sql("SELECT pii_uid FROM events WHERE msg = 'request 3 done in time'", VIEWER).await.unwrap();
    let shown = strings(&out.batches, "pii_uid")[0].clone().unwrap();
    assert!(shown.starts_with("pii:") && !shown.contains("U000003"), "{shown}");
    let by_hash = format!("SELECT count(*) AS n FROM events WHERE pii_uid = '{shown}'");
    let out = f.engine.sql(&by_hash, VIEWER).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(1), "the shown hash finds the event");

    // Grouping on the masked column still works.
    let out = f.engine.sql("SELECT count(DISTINCT pii_uid) AS n FROM events", VIEWER).await.unwrap();
    assert_eq!(u64s(&out.batches, "n").first().copied(), Some(20));

    // Nothing of the clear text anywhere in a viewer's full dump; all of it for the pii role.
    let dump = |batches: &[RecordBatch]| {
        let mut text = String::new();
        for b in batches {
            for c in b.columns() {
                if let Some(s) = c.as_string_opt::<i32>() {
                    for v in s.iter().flatten() {
                        text.push_str(v);
                        text.push('\n');
                    }
                }
            }
        }
        text
    };
    let secrets = ["U000003", "x@example.com", "secret U000003", "not json U000004", "boss@example.com", "card 4111"];
    let all = f.engine.sql("SELECT * FROM events", VIEWER).await.unwrap();
    let text = dump(&all.batches);
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} leaked to a viewer:\n{text}");
    }
    assert!(text.contains(HIDDEN), "bad-line text is hidden, visibly");
    let out = f.engine.sql("SELECT \"Pii_n\" AS n FROM events WHERE \"Pii_n\" IS NOT NULL", VIEWER).await.unwrap();
    assert_ne!(u64s(&out.batches, "n"), vec![5], "an integer is masked in any case of the prefix");
    let all = f.engine.sql("SELECT * FROM events", PII).await.unwrap();
    let text = dump(&all.batches);
    for secret in secrets {
        assert!(text.contains(secret), "{secret} missing for the pii role");
    }
    for word in ["boss", "4111"] {
        let req = SearchRequest { query: word.into(), since_ns: None, until_ns: None, limit: 10 };
        assert_eq!(f.engine.search(&req, VIEWER).await.unwrap().rows(), 0, "a bare word finds {word} inside pii");
    }

    // The masking functions are not callable: nobody can hash a guess.
    let e = f.engine.sql("SELECT sluice_mask('U000003')", VIEWER).await.unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_on_pii_values_reveals_nothing_to_viewers() {
    let mut f = Fixture::new();
    for part in 0..3u64 {
        let lines: Vec<String> = (0..30).map(|i| event(part * 100 + i, T0 + part * 1000 + i)).collect();
        f.commit(&lines).await;
        f.flush();
    }
    let present = f.engine.sql("SELECT count(*) FROM events WHERE pii_uid = 'U000205'", VIEWER).await.unwrap();
    let absent = f.engine.sql("SELECT count(*) FROM events WHERE pii_uid = 'U999999'", VIEWER).await.unwrap();
    let s = |o: &sluice_sql::QueryOutput| (o.stats.rows_scanned, o.stats.segments_read, o.stats.segments_skipped);
    assert_eq!(s(&present), s(&absent), "stats must not depend on whether a clear value exists");
    for q in ["pii_uid:U000205", "pii_uid:U999999"] {
        let req = SearchRequest { query: q.into(), since_ns: None, until_ns: None, limit: 10 };
        let out = f.engine.search(&req, VIEWER).await.unwrap();
        assert_eq!((out.rows(), out.stats.segments_skipped), (0, 0), "{q}");
    }
}

async fn search(f: &Fixture, q: &str) -> Vec<String> {
    let req = SearchRequest { query: q.into(), since_ns: None, until_ns: None, limit: 1000 };
    let out = f.engine.search(&req, PII).await.unwrap_or_else(|e| panic!("{q}: {e}"));
    strings(&out.batches, "msg").into_iter().map(|m| m.unwrap_or_default()).collect()
}

/// A search for `access`, at most 10 rows, with its stats.
fn search_as(f: &Fixture, q: &str, access: Access) -> impl std::future::Future<Output = sluice_sql::QueryOutput> {
    let req = SearchRequest { query: q.into(), since_ns: None, until_ns: None, limit: 10 };
    let engine = f.engine.clone();
    async move { engine.search(&req, access).await.unwrap() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_operators_match_as_documented() {
    let mut f = Fixture::new();
    let lines = [
        format!(r#"{{"time_ns":{},"msg":"Connection refused (os error 111)","status":503,"host":"a"}}"#, T0 + 1),
        format!(r#"{{"time_ns":{},"msg":"read timeout after 5s","status":200,"host":"b"}}"#, T0 + 2),
        format!(r#"{{"time_ns":{},"msg":"timeouts are fine","status":500}}"#, T0 + 3),
        format!(r#"{{"time_ns":{},"msg":"refused connection","host":"a","pii_uid":"U1"}}"#, T0 + 4),
    ];
    f.commit(&lines[..2]).await;
    f.flush();
    f.commit(&lines[2..]).await;
    // Newest first.
    assert_eq!(
        search(&f, "").await,
        ["refused connection", "timeouts are fine", "read timeout after 5s", "Connection refused (os error 111)"]
    );
    assert_eq!(search(&f, "timeout").await, ["read timeout after 5s"]);
    assert_eq!(search(&f, "\"connection refused\"").await, ["Connection refused (os error 111)"]);
    assert_eq!(search(&f, "connection-refused").await, ["Connection refused (os error 111)"]);
    assert_eq!(search(&f, "host:a").await, ["refused connection", "Connection refused (os error 111)"]);
    assert_eq!(search(&f, "status:>=500").await, ["timeouts are fine", "Connection refused (os error 111)"]);
    assert_eq!(search(&f, "status:<500").await, ["read timeout after 5s"]);
    assert_eq!(search(&f, "-host:a").await, ["timeouts are fine", "read timeout after 5s"]);
    assert_eq!(search(&f, "status:*").await.len(), 3);
    assert_eq!(search(&f, "host:b OR (status:500 fine)").await, ["timeouts are fine", "read timeout after 5s"]);
    assert_eq!(search(&f, "nosuchfield:x").await.len(), 0);
    assert_eq!(search(&f, "-nosuchfield:x").await.len(), 4);
    // Bare words never look inside pii_ values.
    assert_eq!(search(&f, "U1").await.len(), 0);
    assert_eq!(search(&f, "pii_uid:U1").await, ["refused connection"]);

    // Time range and limit.
    let req = SearchRequest { query: String::new(), since_ns: Some(T0 + 2), until_ns: Some(T0 + 3), limit: 1 };
    let out = f.engine.search(&req, VIEWER).await.unwrap();
    assert_eq!(strings(&out.batches, "msg"), [Some("timeouts are fine".to_owned())]);
    assert!(out.truncated, "two matched, one returned");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_get_positions_and_writes_are_refused() {
    let f = Fixture::new();
    let req = SearchRequest { query: "level:warn status:".into(), since_ns: None, until_ns: None, limit: 10 };
    let e = f.engine.search(&req, VIEWER).await.unwrap_err();
    assert_eq!((e.status(), e.position()), (400, Some(18)), "{e}");

    let e = f.engine.sql("SELECT count(*) FROM events WHERE", VIEWER).await.unwrap_err();
    assert_eq!(e.status(), 400, "{e}");
    let e = f.engine.sql("SELEC 1", VIEWER).await.unwrap_err();
    assert_eq!((e.status(), e.position()), (400, Some(0)), "{e}");
    let e = f.engine.sql("SELECT nosuch FROM events", VIEWER).await.unwrap_err();
    assert!(e.to_string().contains("nosuch"), "{e}");
    // The cause, without the optimizer rule that met it.
    let e = f.engine.sql("SELECT CAST('x' AS INT) AS n", VIEWER).await.unwrap_err();
    assert_eq!(
        (e.status(), e.to_string().as_str()),
        (400, "Cast error: Cannot cast string 'x' to value of Int32 type")
    );

    for write in [
        "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
        "COPY (SELECT 1) TO '/tmp/x.parquet'",
        "INSERT INTO events SELECT * FROM events",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let e = f.engine.sql(write, PII).await.unwrap_err();
        assert!(matches!(e, QueryError::Invalid { .. }), "{write}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_capped_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StoreConfig::new(dir.path());
    cfg.maintenance = false;
    let store = Arc::new(Store::open(cfg).unwrap());
    let engine_cfg = EngineConfig { rows_max: 7, ..EngineConfig::default() };
    let engine = Engine::with_key(store.clone(), engine_cfg, MaskKey::from_bytes([1; 16]));
    let mut f = Fixture { _dir: dir, store, engine, offset: 0, chunk: 0 };
    f.commit(&(0..20).map(|i| event(i, T0 + i)).collect::<Vec<_>>()).await;
    let out = f.engine.sql("SELECT * FROM events", VIEWER).await.unwrap();
    assert_eq!((out.rows(), out.truncated), (7, true));
    let out = f.engine.sql("SELECT * FROM events LIMIT 7", VIEWER).await.unwrap();
    assert_eq!((out.rows(), out.truncated), (7, false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_delivers_new_matching_events_in_order_masked() {
    let mut f = Fixture::new();
    f.commit(&[event(1, T0)]).await;
    let mut tail = f.engine.tail("level:error", VIEWER).unwrap();
    // Events committed before the tail started are not shown ("starting now").
    let lines: Vec<String> = (10..40).map(|i| event(i, T0 + i)).collect();
    f.commit(&lines[..15]).await;
    f.flush(); // a flush while the tail is behind: those rows are reported, not hidden
    f.commit(&lines[15..]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let mut dropped = 0;
    while seen.len() + dropped < 3 {
        let step = tokio::time::timeout_at(deadline.into(), tail.next()).await.expect("tail answers").unwrap();
        dropped += step.dropped as usize;
        for b in &step.batches {
            let uids = b.column_by_name("pii_uid").unwrap().as_string::<i32>();
            assert!(uids.iter().flatten().all(|u| u.starts_with("pii:")), "masked in tail");
        }
        seen.extend(strings(&step.batches, "msg").into_iter().flatten());
    }
    // Rows 10..25 were flushed before the tail read them: they count as dropped (15 rows), and
    // the errors after them (20 is flushed; 30 is live) come through.
    assert_eq!(dropped, 15, "flushed rows the tail never saw are reported");
    assert_eq!(seen, ["request 30 done in time"]);
    f.commit(&[event(50, T0 + 50), event(51, T0 + 51), event(60, T0 + 60)]).await;
    let step = tokio::time::timeout_at(deadline.into(), tail.next()).await.unwrap().unwrap();
    assert_eq!(
        strings(&step.batches, "msg").into_iter().flatten().collect::<Vec<_>>(),
        ["request 50 done in time", "request 60 done in time"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_new_columns_across_many_steps_in_commit_order() {
    let mut f = Fixture::new();
    f.commit(&[event(1, T0)]).await;
    // `zone` does not exist yet: the tail must match it (and mask the new `pii_ip`) once it does.
    let mut tail = f.engine.tail("quokka OR zone:eu", VIEWER).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // One commit read per step, so that the tail runs its plan many times and replans once.
    for step in 0..12u64 {
        let mut lines =
            vec![event(100 + step, T0 + step), format!(r#"{{"time_ns":{},"msg":"quokka {step}"}}"#, T0 + step)];
        let mut expected = vec![format!("quokka {step}")];
        if step >= 6 {
            lines.push(format!(
                r#"{{"time_ns":{},"msg":"zoned {step}","zone":"eu","pii_ip":"10.0.0.{step}"}}"#,
                T0 + step
            ));
            expected.push(format!("zoned {step}"));
        }
        f.commit(&lines).await;
        let mut seen = Vec::new();
        while seen.len() < expected.len() {
            let got = tokio::time::timeout_at(deadline.into(), tail.next()).await.expect("tail answers").unwrap();
            assert_eq!(got.dropped, 0);
            for b in &got.batches {
                if let Some(ips) = b.column_by_name("pii_ip") {
                    let ips = ips.as_string::<i32>();
                    assert!(ips.iter().flatten().all(|ip| ip.starts_with("pii:")), "a new pii column is masked");
                }
            }
            seen.extend(strings(&got.batches, "msg").into_iter().flatten());
        }
        assert_eq!(seen, expected, "step {step}: every match, once, in commit order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_p99_by_group_and_minute() {
    let mut f = Fixture::new();
    // duration_ms = i % 100 for rpc_method by i % 3, all in one minute, split over a segment and
    // the buffer so that partial states merge.
    let lines: Vec<String> = (0..3000).map(|i| event(i, T0 + i)).collect();
    f.commit(&lines[..1700]).await;
    f.flush();
    f.commit(&lines[1700..]).await;
    let sql = "SELECT rpc_method, time_ns / 60000000000 AS minute, quantile_nearest(duration_ms, 0.99) AS p99, \
               count(*) AS n FROM events GROUP BY 1, 2 ORDER BY 1";
    let out = f.engine.sql(sql, VIEWER).await.unwrap();
    for (k, method) in ["GetUser", "ListOrders", "PutCart"].iter().enumerate() {
        let mut d: Vec<u64> = (0..3000u64).filter(|i| i % 3 == k as u64).map(|i| i % 100).collect();
        d.sort_unstable();
        let want = d[sluice_sql::nearest_rank(0.99, d.len()) - 1];
        assert_eq!(strings(&out.batches, "rpc_method")[k].as_deref(), Some(*method));
        assert_eq!(u64s(&out.batches, "p99")[k], want, "{method}");
    }
    let e = f.engine.sql("SELECT quantile_nearest(duration_ms, 2.0) FROM events", VIEWER).await.unwrap_err();
    assert!(e.to_string().contains("0 < q <= 1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_words_find_overflow_values_but_not_keys_or_pii() {
    let mut f = Fixture::new();
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"first","status":200}}"#, T0)]).await;
    // status as a string conflicts with the UInt64 column: it overflows, and stays findable.
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"second","status":"teapot brewing","pii_note":7}}"#, T0 + 1)]).await;
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"third","status":"x","pii_status":"secretword"}}"#, T0 + 2)]).await;
    f.flush();
    assert_eq!(search(&f, "teapot").await, ["second"]);
    assert_eq!(search(&f, "\"teapot brewing\"").await, ["second"]);
    assert_eq!(search(&f, "status").await.len(), 0, "JSON keys are not text");
    assert_eq!(search(&f, "secretword").await.len(), 0, "pii_ values are never searched by bare words");
}

/// `sluice_id` hashes the line's bytes, clear `pii_*` values included: without the pii role it is
/// a keyed hash of itself, as unique and as joinable, but no use for confirming a guessed line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_are_masked_without_the_pii_role_and_stay_unique_and_joinable() {
    let mut f = Fixture::new();
    let lines: Vec<String> = (0..50).map(|i| event(i, T0 + i)).collect();
    f.commit(&lines).await;
    let ids = |out: &sluice_sql::QueryOutput| -> Vec<Vec<u8>> {
        out.batches
            .iter()
            .flat_map(|b| {
                let c = b.column_by_name("sluice_id").unwrap().as_fixed_size_binary().clone();
                (0..c.len()).map(move |i| c.value(i).to_vec()).collect::<Vec<_>>()
            })
            .collect()
    };
    let sql = "SELECT sluice_id FROM events ORDER BY time_ns";
    let clear = ids(&f.engine.sql(sql, PII).await.unwrap());
    let masked = ids(&f.engine.sql(sql, VIEWER).await.unwrap());
    assert_eq!((clear.len(), masked.len()), (50, 50));
    assert!(clear.iter().zip(&masked).all(|(c, m)| c != m), "no clear id is shown to a viewer");
    assert_eq!(masked.iter().collect::<std::collections::BTreeSet<_>>().len(), 50, "still one per event");
    assert_eq!(ids(&f.engine.sql(sql, VIEWER).await.unwrap()), masked, "and the same each time");
    let joined = "SELECT count(*) AS n FROM events a JOIN events b ON a.sluice_id = b.sluice_id";
    assert_eq!(u64s(&f.engine.sql(joined, VIEWER).await.unwrap().batches, "n"), [50]);
    // A clear id (known, say, from the pii role's answer) finds nothing for a viewer.
    let hex: String = clear[0].iter().map(|b| format!("{b:02x}")).collect();
    let probe = format!("SELECT count(*) AS n FROM events WHERE sluice_id = X'{hex}'");
    assert_eq!(u64s(&f.engine.sql(&probe, VIEWER).await.unwrap().batches, "n"), [0]);
    assert_eq!(u64s(&f.engine.sql(&probe, PII).await.unwrap().batches, "n"), [1]);
}

/// A long chain of operators (parsed in a loop, so the parser's nesting limit never sees it) is
/// planned without exhausting a thread's stack, and one past the limit is refused clearly: either
/// way the store lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chain_of_operators_is_answered_or_refused_never_a_crash() {
    let mut f = Fixture::new();
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"ok","status":1}}"#, T0)]).await;
    let chain = |n: usize| format!("SELECT {} AS n FROM events", vec!["status"; n].join(" + "));
    let out = f.engine.sql(&chain(1000), VIEWER).await.expect("a chain of 1,000 is a query");
    assert_eq!(u64s(&out.batches, "n"), [1000]);
    let ors = format!(
        "SELECT count(*) AS n FROM events WHERE {}",
        (0..2000).map(|i| format!("status = {i}")).collect::<Vec<_>>().join(" OR ")
    );
    let out = f.engine.sql(&ors, VIEWER).await.expect("2,000 alternatives are a query");
    assert_eq!(u64s(&out.batches, "n"), [1]);
    // A long list of negative numbers is shallow: its signs are not a chain.
    let negatives = (1..=5000).map(|i| format!("-{i}")).collect::<Vec<_>>().join(", ");
    let list = format!("SELECT count(*) AS n FROM events WHERE CAST(status AS BIGINT) IN ({negatives})");
    assert_eq!(u64s(&f.engine.sql(&list, VIEWER).await.expect("5,000 negative values are a list").batches, "n"), [0]);
    let minus = |n: usize| format!("SELECT {} AS n FROM events", vec!["status"; n].join(" - "));
    assert!(f.engine.sql(&minus(20_000), VIEWER).await.unwrap_err().to_string().contains("operators"));
    for n in [20_000, 200_000] {
        let e = f.engine.sql(&chain(n), VIEWER).await.unwrap_err();
        assert!(matches!(e, QueryError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("operators"), "{e}");
    }
    let out = f.engine.sql("SELECT count(*) AS n FROM events", VIEWER).await.expect("the engine lives on");
    assert_eq!(u64s(&out.batches, "n"), [1]);
}

/// Past the cap of columns a bad line's original text lands in the overflow: hidden there from a
/// viewer as it is in its own column, and not findable by its words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_lines_text_in_the_overflow_is_hidden_without_the_pii_role() {
    let mut f = Fixture::with_configs(EngineConfig::default(), |c| c.keys_max = 2);
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"ok","status":1}}"#, T0)]).await;
    let raw = r#"{\"pii_email\":\"zq7secret@example.org\",\"n\":1.5}"#;
    f.commit(&[format!(r#"{{"time_ns":{},"msg":"bad","sluice_bad":"float","sluice_raw":"{raw}"}}"#, T0 + 1)]).await;
    f.flush();
    let viewer = f.engine.sql("SELECT sluice_overflow FROM events WHERE msg = 'bad'", VIEWER).await.unwrap();
    let text = strings(&viewer.batches, "sluice_overflow")[0].clone().unwrap_or_default();
    assert!(text.contains("sluice_raw") && !text.contains("zq7secret"), "{text}");
    let pii = f.engine.sql("SELECT sluice_overflow FROM events WHERE msg = 'bad'", PII).await.unwrap();
    let text = strings(&pii.batches, "sluice_overflow")[0].clone().unwrap_or_default();
    assert!(text.contains("zq7secret"), "the pii role sees the original text: {text}");
    assert_eq!(search_as(&f, "zq7secret", VIEWER).await.rows(), 0);
    assert_eq!(search(&f, "zq7secret").await, ["bad"]);
}

/// `field:value`, comparisons and `field:*` also test the value a field has outside its column:
/// a value of the other type, or a key past the cap of columns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_searches_find_values_kept_in_the_overflow() {
    let mut f = Fixture::with_configs(EngineConfig::default(), |c| c.keys_max = 4);
    let line = |n: u64, rest: &str| format!(r#"{{"time_ns":{},"msg":"e{n}",{rest}}}"#, T0 + n);
    // Columns: msg, status (integer), code (string), pii_uid; then every other key overflows.
    f.commit(&[line(0, r#""status":200,"code":"abc","pii_uid":"U1""#)]).await;
    f.flush();
    f.commit(&[
        line(1, r#""status":"teapot""#),
        line(2, r#""code":404"#),
        line(3, r#""region":"eu-west","retries":7"#),
        line(4, r#""status":503,"region":"us-east","retries":2,"pii_uid":9"#),
    ])
    .await;
    f.flush();
    let cases: [(&str, &[&str]); 12] = [
        ("status:teapot", &["e1"]),
        ("status:200", &["e0"]),
        ("status:>=500", &["e4"]),
        ("status:*", &["e0", "e1", "e4"]),
        ("-status:teapot", &["e0", "e2", "e3", "e4"]),
        ("code:404", &["e2"]),
        ("code:abc", &["e0"]),
        ("code:>400", &["e2"]),
        ("region:eu-west", &["e3"]),
        ("region:* -region:us-east", &["e3"]),
        ("retries:>5", &["e3"]),
        ("retries:7 OR region:us-east", &["e3", "e4"]),
    ];
    for (q, want) in cases {
        let mut got = search(&f, q).await;
        got.sort();
        assert_eq!(got, want, "{q}");
    }
    // For a viewer the overflow is masked like the columns: a clear pii value is not found.
    let req = SearchRequest { query: "pii_uid:9".into(), since_ns: None, until_ns: None, limit: 10 };
    assert_eq!(f.engine.search(&req, VIEWER).await.unwrap().rows(), 0);
    assert_eq!(search(&f, "pii_uid:9").await, ["e4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_words_see_bad_line_text_as_the_caller_does() {
    let mut f = Fixture::new();
    f.commit(&[
        format!(r#"{{"time_ns":{},"sluice_bad":"not_json","sluice_raw":"Secret Kangaroo text"}}"#, T0),
        "unparsed wombat line".to_owned(),
        format!(r#"{{"time_ns":{},"status":200}}"#, T0 + 1),
        format!(r#"{{"time_ns":{},"msg":"a KANGAROO, café-ready"}}"#, T0 + 2),
    ])
    .await;
    f.flush();
    let count = |q: &'static str, access: Access| {
        let engine = f.engine.clone();
        async move {
            let req = SearchRequest { query: q.into(), since_ns: None, until_ns: None, limit: 1000 };
            engine.search(&req, access).await.unwrap_or_else(|e| panic!("{q}: {e}")).rows()
        }
    };
    assert_eq!(count("kangaroo", PII).await, 2);
    assert_eq!(count("\"secret kangaroo\"", PII).await, 1);
    assert_eq!(count("wombat", PII).await, 1);
    assert_eq!(count("kangaroo", VIEWER).await, 1, "bad-line text is searched only as masked");
    assert_eq!(count("wombat", VIEWER).await, 0);
    assert!(count("hidden", VIEWER).await >= 1, "the masked text is what a viewer searches");
    assert_eq!(count("CAFÉ", VIEWER).await, 1);
    // A row without any string value is not matched, so its negation is.
    assert_eq!(count("-kangaroo -hidden -wombat", VIEWER).await, 1);
    assert_eq!(count("kangaroo OR status:200", VIEWER).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_indexes_skip_segments_that_cannot_match() {
    let mut f = Fixture::new();
    for part in 0..4u64 {
        let mut lines: Vec<String> = (0..50).map(|i| event(part * 100 + i, T0 + part * 1000 + i)).collect();
        if part == 2 {
            lines.push(format!(r#"{{"time_ns":{},"msg":"a wild okapi appears","pii_uid":"U424242"}}"#, T0 + 2500));
        }
        f.commit(&lines).await;
        f.flush();
    }
    let run = |q: &str, access| search_as(&f, q, access);
    let out = run("okapi", VIEWER).await;
    assert_eq!((out.rows(), out.stats.segments_read, out.stats.segments_skipped), (1, 1, 3), "{:?}", out.stats);
    let out = run("pii_uid:U424242", PII).await;
    assert_eq!((out.rows(), out.stats.segments_read, out.stats.segments_skipped), (1, 1, 3), "{:?}", out.stats);
    // For a viewer, a pii value never prunes.
    let out = run("pii_uid:U424242", VIEWER).await;
    assert_eq!((out.rows(), out.stats.segments_skipped), (0, 0));
    // An OR cannot be pruned by one branch.
    let out = run("okapi OR level:info", VIEWER).await;
    assert_eq!(out.stats.segments_skipped, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn term_indexes_narrow_a_segment_to_the_blocks_that_may_match() {
    let mut f = Fixture::new();
    let block = sluice_store::BLOCK_ROWS;
    let total = 4 * block + 100;
    // One segment, in time order: the okapi in block 1, a bad line in block 2, the uid in block 3.
    let (okapi_row, bad_row, uid_row) = (block + 17, 2 * block + 9, 3 * block + 5);
    let lines: Vec<String> = (0..total)
        .map(|i| match i {
            _ if i == okapi_row => format!(r#"{{"time_ns":{},"msg":"a wild okapi appears"}}"#, T0 + i),
            _ if i == bad_row => {
                format!(r#"{{"time_ns":{},"sluice_bad":"not_json","sluice_raw":"the tapir line"}}"#, T0 + i)
            }
            _ if i == uid_row => format!(r#"{{"time_ns":{},"msg":"login","pii_uid":"U424242"}}"#, T0 + i),
            _ => event(i, T0 + i),
        })
        .collect();
    f.commit(&lines).await;
    f.flush();
    let run = |q: &str, access| search_as(&f, q, access);
    // The needle's block of the five is read, and another only on a false positive of the
    // filter (0.1% per block).
    let out = run("okapi", VIEWER).await;
    assert_eq!((out.rows(), out.stats.segments_read), (1, 1), "{:?}", out.stats);
    assert!([block, 2 * block].contains(&out.stats.rows_scanned), "{:?}", out.stats);
    assert_eq!(u64s(&out.batches, "time_ns"), vec![T0 + okapi_row]);
    let out = run("pii_uid:U424242", PII).await;
    assert_eq!(out.rows(), 1);
    // Page statistics of the column may narrow the block further, to its page holding the value.
    assert!((1..=2 * block).contains(&out.stats.rows_scanned), "{:?}", out.stats);
    // A word in the text of a bad line: found by a pii caller in its block (the hidden-text
    // filter is asked only in blocks that hold hidden text), and never by a viewer.
    let out = run("tapir", PII).await;
    assert_eq!((out.rows(), out.stats.segments_read), (1, 1), "{:?}", out.stats);
    assert_eq!(u64s(&out.batches, "time_ns"), vec![T0 + bad_row]);
    assert!((1..=2 * block).contains(&out.stats.rows_scanned), "{:?}", out.stats);
    let out = run("tapir", VIEWER).await;
    assert_eq!(out.rows(), 0);
    // The last block is short: the selection ends with the segment.
    let out = run("\"wild okapi\" OR login", VIEWER).await;
    assert_eq!(out.stats.rows_scanned, total, "an OR is not narrowed");
    // For a viewer a pii value narrows nothing: the rows scanned do not depend on it.
    for uid in ["U424242", "U000001"] {
        let out = run(&format!("pii_uid:{uid}"), VIEWER).await;
        assert_eq!((out.rows(), out.stats.rows_scanned), (0, total), "{uid}: {:?}", out.stats);
    }
    // Two words in different blocks: no block holds both, so nothing is read but a block where
    // the filter is wrong about one of them.
    let out = run("okapi login", VIEWER).await;
    assert_eq!(out.rows(), 0);
    assert!(out.stats.rows_scanned <= block, "{:?}", out.stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_word_is_tested_only_against_the_columns_that_may_hold_it() {
    let mut f = Fixture::new();
    let t = |i: u64| T0 + i * 1000;
    let block = sluice_store::BLOCK_ROWS;
    // Segment 0: three blocks of events with a `trace` of 32 hex digits each (incompressible),
    // the word in `msg` of one row of the middle block. Segment 1: the word in `action`, and in
    // the raw text of a bad line. Segment 2: nowhere. Then one buffered event with the word in
    // `level`.
    let rows = 3 * block;
    let needle_row = block + 7;
    let seg0: Vec<String> = (0..rows)
        .map(|i| {
            // splitmix64 of the row, twice: 32 hex digits that do not repeat or compress.
            let mix = |mut x: u64| {
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                x ^ (x >> 31)
            };
            let trace = format!("{:016x}{:016x}", mix(i + 1), mix(!i));
            let msg = if i == needle_row { "a wild okapi appears".to_string() } else { format!("request {i}") };
            format!(r#"{{"time_ns":{},"level":"info","trace":"{trace}","msg":"{msg}"}}"#, t(i))
        })
        .collect();
    let mut seg1: Vec<String> = (rows..rows + 50).map(|i| event(i, t(i))).collect();
    seg1.push(format!(r#"{{"time_ns":{},"msg":"done","action":"feed the okapi"}}"#, t(rows + 60)));
    seg1.push(format!(r#"{{"time_ns":{},"sluice_bad":"not_json","sluice_raw":"okapi raw text"}}"#, t(rows + 61)));
    let seg2: Vec<String> = (rows + 100..rows + 150).map(|i| event(i, t(i))).collect();
    for lines in [seg0, seg1, seg2] {
        f.commit(&lines).await;
        f.flush();
    }
    f.commit(&[format!(r#"{{"time_ns":{},"level":"okapi","msg":"buffered"}}"#, t(rows + 200))]).await;
    let (in_msg, in_action, in_raw, in_level) = (t(needle_row), t(rows + 60), t(rows + 61), t(rows + 200));
    // The open string columns every bare word is tested against.
    let schema = f.store.schema();
    let open: Vec<String> = schema
        .fields()
        .iter()
        .filter(|c| c.data_type() == &DataType::Utf8)
        .map(|c| c.name().clone())
        .filter(|n| sluice_store::column_class(n) == sluice_store::ColumnClass::Open && n != "sluice_overflow")
        .collect();
    assert!(
        ["msg", "action", "level", "trace", "sluice_source"].iter().all(|c| open.iter().any(|o| o == c)),
        "{open:?}"
    );
    let at = |out: &sluice_sql::QueryOutput| {
        let mut v = u64s(&out.batches, "time_ns");
        v.sort();
        v
    };

    let out = search_as(&f, "okapi", VIEWER).await;
    assert_eq!(at(&out), vec![in_msg, in_action, in_level]);
    // Two segments read, each tested against the one column that holds the word.
    assert_eq!((out.stats.segments_read, out.stats.segments_skipped), (2, 1), "{:?}", out.stats);
    assert_eq!(out.stats.columns_skipped, 2 * (open.len() as u64 - 1), "{:?}", out.stats);
    // So in segment 0 the word reads what a test of `msg` alone reads: not the `trace` values of
    // its block (64 KiB at 32 bytes a row), only the page of the matching row.
    let in_seg0 = |q: &str| {
        let req = SearchRequest { query: q.into(), since_ns: Some(t(0)), until_ns: Some(t(rows - 1)), limit: 10 };
        let engine = f.engine.clone();
        async move { engine.search(&req, VIEWER).await.unwrap() }
    };
    let (word, field) = (in_seg0("okapi").await, in_seg0("msg:\"a wild okapi appears\"").await);
    assert_eq!((at(&word), at(&field)), (vec![in_msg], vec![in_msg]));
    // The block, and the buffered row.
    assert_eq!((word.stats.segments_read, word.stats.rows_scanned), (1, block + 1), "{:?}", word.stats);
    assert!(word.stats.bytes_scanned < field.stats.bytes_scanned + 16 * 1024, "{:?} {:?}", word.stats, field.stats);
    // A caller with the pii role also finds it in the bad line's text, which no column filter
    // rules out.
    let out = search_as(&f, "okapi", PII).await;
    assert_eq!(at(&out), vec![in_msg, in_action, in_raw, in_level]);
    assert_eq!(out.stats.columns_skipped, 2 * (open.len() as u64 - 1), "{:?}", out.stats);
    // A phrase, an OR (which prunes no segment) and a negation give the same answers as
    // without the column filter.
    let out = search_as(&f, "\"wild okapi\"", VIEWER).await;
    assert_eq!(at(&out), vec![in_msg]);
    let out = search_as(&f, "okapi OR feed", VIEWER).await;
    assert_eq!(at(&out), vec![in_msg, in_action, in_level]);
    assert_eq!(out.stats.segments_skipped, 0, "{:?}", out.stats);
    assert!(out.stats.columns_skipped >= 3 * (open.len() as u64 - 2), "{:?}", out.stats);
    // A negation, past segment 0: segment 2 holds the word in no column (its test is FALSE).
    let count = format!("SELECT count(*) AS n FROM events WHERE time_ns >= {}", t(rows));
    let all = f.engine.sql(&count, VIEWER).await.unwrap();
    let total = all.batches[0].column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().value(0) as u64;
    let req = SearchRequest { query: "-okapi".into(), since_ns: Some(t(rows)), until_ns: None, limit: 10_000 };
    let out = f.engine.search(&req, VIEWER).await.unwrap();
    assert_eq!((total, out.rows() as u64), (103, 101), "the bad line's text is hidden from a viewer");
    let out = search_as(&f, "okapi -feed", VIEWER).await;
    assert_eq!(at(&out), vec![in_msg, in_level]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_literals_take_the_unsigned_type_of_the_column() {
    let mut f = Fixture::new();
    // Five minutes of one event a second: duration_ms = i % 100.
    let lines: Vec<String> = (0..300).map(|i| event(i, T0 + i * 1_000_000_000)).collect();
    f.commit(&lines[..150]).await;
    f.flush();
    f.commit(&lines[150..]).await;

    // Integer division, not a decimal with a fraction per row.
    let sql = "SELECT arrow_typeof(time_ns / 60000000000) AS t, time_ns / 60000000000 AS minute, count(*) AS n, \
               quantile_nearest(duration_ms, 0.5) AS p50 FROM events GROUP BY 1, 2 ORDER BY 2";
    for access in [VIEWER, PII] {
        let out = f.engine.sql(sql, access).await.unwrap();
        assert_eq!(strings(&out.batches, "t"), vec![Some("UInt64".to_owned()); 5]);
        let first = T0 / 60_000_000_000;
        assert_eq!(u64s(&out.batches, "minute"), (first..first + 5).collect::<Vec<_>>());
        assert_eq!(u64s(&out.batches, "n"), vec![60; 5]);
        let want: Vec<u64> = (0..5u64)
            .map(|m| {
                let mut d: Vec<u64> = (m * 60..(m + 1) * 60).map(|i| i % 100).collect();
                d.sort_unstable();
                d[sluice_sql::nearest_rank(0.5, d.len()) - 1]
            })
            .collect();
        assert_eq!(u64s(&out.batches, "p50"), want);
    }

    // Comparisons, BETWEEN, IN and the other arithmetic operators with the natural spelling.
    let out = f
        .engine
        .sql(
            "SELECT count(*) FILTER (WHERE duration_ms >= 90) AS ge, count(*) FILTER (WHERE 10 > duration_ms) AS lt, \
             count(*) FILTER (WHERE duration_ms BETWEEN 5 AND 9) AS btw, \
             count(*) FILTER (WHERE duration_ms IN (1, 2, 3)) AS inl, sum(duration_ms % 7 * 2 + 1) AS arith, \
             arrow_typeof(sum(duration_ms * 2)) AS st FROM events",
            VIEWER,
        )
        .await
        .unwrap();
    let d: Vec<u64> = (0..300u64).map(|i| i % 100).collect();
    let count = |p: &dyn Fn(u64) -> bool| d.iter().filter(|&&x| p(x)).count() as u64;
    assert_eq!(u64s(&out.batches, "ge"), vec![count(&|x| x >= 90)]);
    assert_eq!(u64s(&out.batches, "lt"), vec![count(&|x| x < 10)]);
    assert_eq!(u64s(&out.batches, "btw"), vec![count(&|x| (5..=9).contains(&x))]);
    assert_eq!(u64s(&out.batches, "inl"), vec![count(&|x| (1..=3).contains(&x))]);
    assert_eq!(u64s(&out.batches, "arith"), vec![d.iter().map(|x| x % 7 * 2 + 1).sum::<u64>()]);
    assert_eq!(strings(&out.batches, "st"), vec![Some("UInt64".to_owned())]);

    // Negative literals and subtraction keep DataFusion's own coercion, which can go below zero.
    let out = f
        .engine
        .sql(
            "SELECT count(*) FILTER (WHERE duration_ms > -1) AS all_rows, \
             min(CAST(duration_ms - 50 AS BIGINT)) AS lowest, arrow_typeof(duration_ms - 50) AS t \
             FROM events GROUP BY 3",
            VIEWER,
        )
        .await
        .unwrap();
    assert_eq!(u64s(&out.batches, "all_rows"), vec![300]);
    let lowest = out.batches[0]
        .column_by_name("lowest")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
        .value(0);
    assert_eq!(lowest, -50);
    assert_ne!(strings(&out.batches, "t"), vec![Some("UInt64".to_owned())]);

    // The column keeps the name it is written with.
    let out = f.engine.sql("SELECT time_ns / 60000000000 FROM events LIMIT 1", VIEWER).await.unwrap();
    let name = out.schema.field(0).name().clone();
    assert!(name.contains("60000000000"), "{name}");
}
