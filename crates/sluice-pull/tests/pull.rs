//! Integration tests of the puller against an in-process fake supervisor (hyper server over
//! tokio-rustls with mTLS on 127.0.0.1:0, certificates from `sluice_tls::generate`) that speaks the
//! issue-3 contract minimally, and an in-memory sink that enforces offset order.
//! They check what is fetched, in what order, and what is committed; they do not measure speed.

// unwrap() is the house habit in tests (STYLE.md); the workspace lint is for library code.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sluice_pull::{
    run_all, run_source, Batch, ChunkProgress, CommitOutcome, Endpoint, ErrorKind, PullMetrics, Sink, SourceClient,
    SourceConfig, SourceState, BATCH_BYTES_MAX,
};
use sluice_tls::{generate, generate_client_with_validity, CertSpec, Generated, ServerTls, Trust};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

/// Generous: a loaded 2-core machine may be slow, and nothing here should take more than seconds.
const DEADLINE: Duration = Duration::from_secs(30);
const STREAM_A: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
const STREAM_B: u128 = 0xfeed_face_cafe_beef_0000_1111_2222_3333;

// ---------------------------------------------------------------------------------------------
// Certificates

struct Certs {
    _tmp: tempfile::TempDir,
    generated: Generated,
    /// A client certificate signed by the same CA but not on the allow list.
    stranger: (PathBuf, PathBuf),
}

impl Certs {
    fn new() -> Certs {
        let tmp = tempfile::tempdir().unwrap();
        let generated = generate(tmp.path(), &CertSpec::default()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let (cert, key, _) = generate_client_with_validity(
            tmp.path(),
            "stranger",
            now - time::Duration::hours(1),
            now + time::Duration::days(1),
        )
        .unwrap();
        Certs { _tmp: tmp, generated, stranger: (cert, key) }
    }

    fn server_tls(&self) -> ServerTls {
        let g = &self.generated;
        ServerTls::load(&g.server_cert, &g.server_key, &g.allow_list).unwrap()
    }

    fn source(&self, name: &str, fake: &Fake) -> SourceConfig {
        let (_, cert, key, _) = &self.generated.clients[0];
        self.source_with(name, fake, cert.clone(), key.clone(), Trust::CaFile(self.generated.ca.clone()))
    }

    fn source_with(&self, name: &str, fake: &Fake, cert: PathBuf, key: PathBuf, trust: Trust) -> SourceConfig {
        self.source_at(name, fake.addr, cert, key, trust)
    }

    fn source_at(&self, name: &str, addr: SocketAddr, cert: PathBuf, key: PathBuf, trust: Trust) -> SourceConfig {
        let url = format!("https://127.0.0.1:{}", addr.port());
        SourceConfig { name: Arc::from(name), endpoint: Endpoint::parse_https(&url).unwrap(), url, cert, key, trust }
    }
}

// ---------------------------------------------------------------------------------------------
// Fake supervisor

#[derive(Debug, Clone, Default)]
struct FakeChunk {
    id: String,
    data: Vec<u8>,
    closed: bool,
    /// Listed, but answered with 404 (discarded between listing and fetch).
    gone: bool,
}

#[derive(Debug, Default)]
struct FakeState {
    stream: u128,
    chunks: Vec<FakeChunk>,
    /// Path and query of every request, in order.
    requests: Vec<String>,
    /// Whether `GET /chunk/` carries `Sluice-Stream-Id`.
    listing_stream_header: bool,
    /// Requests for closed chunks are never answered.
    stall_closed: bool,
    /// Closed chunks are sent a byte every 100 ms: never silent for long, and never done.
    drip_closed: bool,
    /// Every chunk request is answered by the other of two supervisors (two behind one URL).
    flip_stream: bool,
    /// The next response for this closed chunk sends this many bytes, then breaks the connection
    /// when `cut_now` is notified.
    cut_once: Option<(String, usize)>,
}

struct Fake {
    addr: SocketAddr,
    state: Mutex<FakeState>,
    /// Bumped after every change, so open-chunk streams send what was appended.
    version: watch::Sender<u64>,
    /// Breaks the connection of the `cut_once` response.
    cut_now: Arc<tokio::sync::Notify>,
}

impl Fake {
    async fn start(tls: ServerTls, stream: u128, chunks: Vec<FakeChunk>) -> Arc<Fake> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = Arc::new(Fake {
            addr: listener.local_addr().unwrap(),
            state: Mutex::new(FakeState { stream, chunks, listing_stream_header: true, ..FakeState::default() }),
            version: watch::channel(0).0,
            cut_now: Arc::default(),
        });
        let server = Arc::clone(&fake);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = tls.acceptor();
                let fake = Arc::clone(&server);
                tokio::spawn(async move {
                    // Refused handshakes end here: no HTTP at all, as the contract says.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = service_fn(move |req| {
                        let fake = Arc::clone(&fake);
                        async move { Ok::<_, Infallible>(fake.handle(req).await) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
                });
            }
        });
        fake
    }

    fn modify(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().unwrap());
        self.version.send_modify(|v| *v += 1);
    }

    fn append(&self, id: &str, bytes: &[u8]) {
        self.modify(|s| s.chunks.iter_mut().find(|c| c.id == id).unwrap().data.extend_from_slice(bytes));
    }

    /// Closes the open chunk `id` and opens `next` holding `bytes`.
    fn rotate(&self, id: &str, next: &str, bytes: &[u8]) {
        self.modify(|s| {
            s.chunks.iter_mut().find(|c| c.id == id).unwrap().closed = true;
            s.chunks.push(FakeChunk { id: next.into(), data: bytes.to_vec(), ..FakeChunk::default() });
        });
    }

    fn data(&self, id: &str) -> Vec<u8> {
        self.state.lock().unwrap().chunks.iter().find(|c| c.id == id).unwrap().data.clone()
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<ChanBody> {
        match self.decide(&req) {
            Answer::Now(response) => response,
            Answer::Stall => std::future::pending().await,
            Answer::Follow { head, id, offset, stream } => {
                let (tx, body) = ChanBody::channel();
                tokio::spawn(Arc::clone(&self).follow(tx, id, offset, stream));
                head.body(body).unwrap()
            }
        }
    }

    fn decide(&self, req: &Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let mut s = self.state.lock().unwrap();
        s.requests.push(match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        });
        let stream = format!("{:032x}", s.stream);
        if path == "/chunk/" {
            let listing: String = s.chunks.iter().map(|c| format!("{}\n", c.id)).collect();
            let mut r = Response::builder().header("content-type", "text/plain");
            if s.listing_stream_header {
                r = r.header("sluice-stream-id", &stream);
            }
            return Answer::Now(r.body(ChanBody::full(listing.into_bytes())).unwrap());
        }
        let Some(id) = path.strip_prefix("/chunk/") else { return Answer::Now(status(StatusCode::NOT_FOUND, &stream)) };
        if s.flip_stream {
            s.stream = if s.stream == STREAM_A { STREAM_B } else { STREAM_A };
        }
        let stream = format!("{:032x}", s.stream);
        if sluice_chunk::ChunkId::parse(id).is_err() {
            return Answer::Now(status(StatusCode::BAD_REQUEST, &stream));
        }
        let offset: usize = match query.as_deref().and_then(|q| q.strip_prefix("offset=")) {
            Some(n) => n.parse().unwrap(),
            None => 0,
        };
        let Some(chunk) = s.chunks.iter().find(|c| c.id == id && !c.gone).cloned() else {
            return Answer::Now(status(StatusCode::NOT_FOUND, &stream));
        };
        if offset > chunk.data.len() {
            return Answer::Now(status(StatusCode::RANGE_NOT_SATISFIABLE, &stream));
        }
        if chunk.closed && s.stall_closed {
            return Answer::Stall;
        }
        let head = Response::builder()
            .header("sluice-stream-id", &stream)
            .header("sluice-chunk-state", if chunk.closed { "closed" } else { "open" })
            .header("sluice-offset", offset.to_string());
        if !chunk.closed {
            return Answer::Follow { head, id: id.to_string(), offset, stream: s.stream };
        }
        let rest = chunk.data[offset..].to_vec();
        let head = head.header("content-length", rest.len().to_string());
        if s.drip_closed {
            let (tx, body) = ChanBody::channel();
            tokio::spawn(async move {
                for b in rest {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if tx.send(Ok(Bytes::copy_from_slice(&[b]))).await.is_err() {
                        return;
                    }
                }
            });
            return Answer::Now(head.body(body).unwrap());
        }
        if s.cut_once.as_ref().is_some_and(|(cut_id, _)| cut_id == id) {
            let (_, cut_at) = s.cut_once.take().unwrap();
            let (tx, body) = ChanBody::channel();
            tx.try_send(Ok(Bytes::copy_from_slice(&rest[..cut_at]))).unwrap();
            let cut = Arc::clone(&self.cut_now);
            tokio::spawn(async move {
                // Break the connection only once the test saw the bytes arrive, so they are not
                // lost in a buffer when the connection goes.
                cut.notified().await;
                let _ = tx.send(Err(io::Error::other("cut on purpose"))).await;
            });
            return Answer::Now(head.body(body).unwrap());
        }
        Answer::Now(head.body(ChanBody::full(rest)).unwrap())
    }

    /// Streams the open chunk `id` from `offset` as it grows; ends the body properly when the
    /// chunk closes, and breaks it if the supervisor is wiped meanwhile.
    async fn follow(
        self: Arc<Self>,
        tx: mpsc::Sender<Result<Bytes, io::Error>>,
        id: String,
        offset: usize,
        my_stream: u128,
    ) {
        let mut sent = offset;
        let mut version = self.version.subscribe();
        loop {
            version.borrow_and_update();
            let (data, closed, wiped) = {
                let s = self.state.lock().unwrap();
                match s.chunks.iter().find(|c| c.id == id) {
                    Some(c) if s.stream == my_stream => (c.data[sent..].to_vec(), c.closed, false),
                    _ => (Vec::new(), false, true),
                }
            };
            if wiped {
                let _ = tx.send(Err(io::Error::other("stream wiped"))).await;
                return;
            }
            if !data.is_empty() {
                sent += data.len();
                if tx.send(Ok(Bytes::from(data))).await.is_err() {
                    return;
                }
            }
            if closed {
                return; // dropping the sender ends the response properly
            }
            if version.changed().await.is_err() {
                return;
            }
        }
    }
}

/// What the fake does with a request.
enum Answer {
    Now(Response<ChanBody>),
    /// Never answer.
    Stall,
    /// Stream the open chunk.
    Follow {
        head: http::response::Builder,
        id: String,
        offset: usize,
        stream: u128,
    },
}

fn status(code: StatusCode, stream: &str) -> Response<ChanBody> {
    Response::builder().status(code).header("sluice-stream-id", stream).body(ChanBody::full(Vec::new())).unwrap()
}

/// A response body fed from a channel: data frames, an error to break the connection, and the
/// end of the body when the sender goes.
struct ChanBody(mpsc::Receiver<Result<Bytes, io::Error>>);

impl ChanBody {
    fn channel() -> (mpsc::Sender<Result<Bytes, io::Error>>, ChanBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, ChanBody(rx))
    }

    fn full(bytes: Vec<u8>) -> ChanBody {
        let (tx, body) = ChanBody::channel();
        if !bytes.is_empty() {
            tx.try_send(Ok(Bytes::from(bytes))).unwrap();
        }
        body
    }
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut().0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory sink

#[derive(Debug, Default)]
struct SinkChunk {
    data: Vec<u8>,
    complete: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Commit {
    source: String,
    stream: u128,
    chunk: String,
    start: u64,
    len: usize,
    complete: bool,
}

#[derive(Debug, Default)]
struct SinkState {
    chunks: HashMap<(u128, String), SinkChunk>,
    commits: Vec<Commit>,
    lost: Vec<(String, u128, String, u64)>,
    violations: Vec<String>,
    /// Calls of `progress`: what the puller's bookkeeping costs.
    progress_calls: u64,
}

/// Keeps each chunk's committed bytes; a batch past the committed offset gets `Resume`, bytes
/// below it are skipped, as the store's sink does.
#[derive(Debug, Default)]
struct MemSink(Mutex<SinkState>);

impl MemSink {
    fn apply(&self, b: Batch) -> CommitOutcome {
        let mut s = self.0.lock().unwrap();
        if !b.lines.is_empty() && !b.lines.ends_with(b"\n") {
            s.violations.push(format!("batch of {} at {} does not end in a newline", b.chunk, b.start_offset));
        }
        s.commits.push(Commit {
            source: b.source.to_string(),
            stream: b.stream,
            chunk: b.chunk.to_string(),
            start: b.start_offset,
            len: b.lines.len(),
            complete: b.chunk_complete,
        });
        let mut violation = None;
        let c = s.chunks.entry((b.stream, b.chunk.to_string())).or_default();
        let committed = c.data.len() as u64;
        if b.start_offset > committed {
            return CommitOutcome::Resume { offset: committed };
        }
        let skip = (committed - b.start_offset) as usize;
        if skip < b.lines.len() {
            if skip > 0 && b.lines[skip - 1] != b'\n' {
                violation = Some(format!("committed offset {committed} of {} is inside a line", b.chunk));
            }
            c.data.extend_from_slice(&b.lines[skip..]);
        }
        c.complete |= b.chunk_complete;
        let offset = c.data.len() as u64;
        s.violations.extend(violation);
        CommitOutcome::Committed { offset }
    }

    fn data(&self, stream: u128, chunk: &str) -> Vec<u8> {
        self.0.lock().unwrap().chunks.get(&(stream, chunk.to_string())).map(|c| c.data.clone()).unwrap_or_default()
    }

    fn complete(&self, stream: u128, chunk: &str) -> bool {
        self.0.lock().unwrap().chunks.get(&(stream, chunk.to_string())).is_some_and(|c| c.complete)
    }

    fn commits(&self) -> Vec<Commit> {
        self.0.lock().unwrap().commits.clone()
    }

    /// Every chunk of `stream`: (id, data, complete), oldest first.
    fn chunks(&self, stream: u128) -> Vec<(String, Vec<u8>, bool)> {
        let s = self.0.lock().unwrap();
        let mut out: Vec<(String, Vec<u8>, bool)> = s
            .chunks
            .iter()
            .filter(|((st, _), _)| *st == stream)
            .map(|((_, id), c)| (id.clone(), c.data.clone(), c.complete))
            .collect();
        out.sort_by_key(|(id, _, _)| sluice_chunk::ChunkId::parse(id).unwrap());
        out
    }

    fn lost(&self) -> Vec<(String, u128, String, u64)> {
        self.0.lock().unwrap().lost.clone()
    }

    fn violations(&self) -> Vec<String> {
        self.0.lock().unwrap().violations.clone()
    }
}

impl Sink for MemSink {
    fn commit(&self, batch: Batch) -> impl Future<Output = Result<CommitOutcome, String>> + Send {
        std::future::ready(Ok(self.apply(batch)))
    }

    fn progress(&self, stream: u128, chunk: &str) -> Option<ChunkProgress> {
        let mut s = self.0.lock().unwrap();
        s.progress_calls += 1;
        s.chunks
            .get(&(stream, chunk.to_string()))
            .map(|c| ChunkProgress { offset: c.data.len() as u64, complete: c.complete })
    }

    fn chunk_lost(&self, source: &str, stream: u128, chunk: &str, offset: u64) {
        self.0.lock().unwrap().lost.push((source.to_string(), stream, chunk.to_string(), offset));
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `n` event lines tagged with `tag`, with increasing times.
fn lines(tag: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend_from_slice(
            format!("{{\"time_ns\":{},\"tag\":\"{tag}\",\"i\":{i}}}\n", 1_700_000_000_000_000_000u64 + i as u64)
                .as_bytes(),
        );
    }
    out
}

fn closed(id: &str, data: Vec<u8>) -> FakeChunk {
    FakeChunk { id: id.into(), data, closed: true, gone: false }
}

fn open(id: &str, data: Vec<u8>) -> FakeChunk {
    FakeChunk { id: id.into(), data, closed: false, gone: false }
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A running puller of one source, stopped on `stop`.
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(src: SourceConfig, sink: &Arc<MemSink>, pool: &Arc<Semaphore>, metrics: &Arc<PullMetrics>) -> Running {
        let (stop, shutdown) = watch::channel(false);
        let client = SourceClient::new(&src).unwrap();
        let task =
            tokio::spawn(run_source(src, client, Arc::clone(sink), Arc::clone(pool), Arc::clone(metrics), shutdown));
        Running { stop, task }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(DEADLINE, self.task).await.expect("puller stops promptly on shutdown").unwrap();
    }
}

fn first_commit_order(commits: &[Commit], source: &str) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for c in commits.iter().filter(|c| c.source == source) {
        if !order.contains(&c.chunk) {
            order.push(c.chunk.clone());
        }
    }
    order
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A closed chunk shorter than what the store already read (the supervisor lost unsynced bytes
/// in a power loss) answers 416 to the resume: the chunk is completed where the store is, nothing
/// read is dropped, and it is not asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_chunk_that_shrank_is_completed_where_the_store_is() {
    let certs = Certs::new();
    let kept = lines("a", 30);
    let fake = Fake::start(
        certs.server_tls(),
        STREAM_A,
        vec![closed("21", kept[..kept.len() / 2].to_vec()), open("22", lines("b", 2))],
    )
    .await;
    let sink = Arc::new(MemSink::default());
    sink.0.lock().unwrap().chunks.insert((STREAM_A, "21".into()), SinkChunk { data: kept.clone(), complete: false });
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("web-1", &fake), &sink, &Arc::new(Semaphore::new(2)), &metrics);
    wait_until("the shrunk chunk is complete", || sink.complete(STREAM_A, "21")).await;
    assert_eq!(sink.data(STREAM_A, "21"), kept, "what was read stays");
    wait_until("the live chunk", || sink.data(STREAM_A, "22") == fake.data("22")).await;
    let asked = fake.requests().iter().filter(|r| r.starts_with("/chunk/21")).count();
    assert_eq!(asked, 1, "{:?}", fake.requests());
    assert_eq!(metrics.source("web-1", "").chunks_lost.load(Relaxed), 0);
    run.stop().await;
}

/// A listing of thousands of chunks costs work in proportion to its length, not its square: the
/// next chunk to fetch and the backlog gauges were each found by looking at every listed chunk,
/// once per chunk fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_listing_is_walked_once_not_once_per_chunk() {
    const N: usize = 2000;
    let id = |i: usize| sluice_chunk::ChunkId::from_value(1_700_000_000 + i as u64).to_string();
    let certs = Certs::new();
    let mut chunks: Vec<FakeChunk> = (0..N).map(|i| closed(&id(i), lines("h", 1))).collect();
    chunks.push(open(&id(N), lines("live", 1)));
    let fake = Fake::start(certs.server_tls(), STREAM_A, chunks).await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("web-1", &fake), &sink, &Arc::new(Semaphore::new(2)), &metrics);
    let m = metrics.source("web-1", "");
    wait_until("every closed chunk read and the backlog counted down", || {
        (0..N).all(|i| sink.complete(STREAM_A, &id(i))) && m.backlog_chunks.load(Relaxed) == 1
    })
    .await;
    // Newest first still: the first ten history chunks asked for are among the twelve newest
    // (two fetches at a time, so neighbours may arrive in either order).
    let mut asked: Vec<String> = Vec::new();
    for r in fake.requests() {
        let Some(chunk) = r.strip_prefix("/chunk/").map(|c| c.split('?').next().unwrap_or(c).to_owned()) else {
            continue;
        };
        if !chunk.is_empty() && chunk != id(N) && !asked.contains(&chunk) {
            asked.push(chunk);
        }
    }
    let newest: Vec<String> = (N - 12..N).map(id).collect();
    assert!(asked[..10].iter().all(|c| newest.contains(c)), "{:?}", &asked[..10]);
    let calls = sink.0.lock().unwrap().progress_calls;
    // A handful per chunk (fetching it, counting the backlog now and then); once per listed chunk
    // per fetch was N * N / 2 = 2,000,000.
    assert!(calls < 40 * N as u64, "{calls} progress lookups for {N} chunks");
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingests_every_chunk_and_follows_rotation() {
    let certs = Certs::new();
    let fake = Fake::start(
        certs.server_tls(),
        STREAM_A,
        vec![closed("21", lines("a", 50)), closed("22", lines("b", 70)), open("23", lines("c", 10))],
    )
    .await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("web-1", &fake), &sink, &Arc::new(Semaphore::new(2)), &metrics);

    wait_until("closed chunks complete and the open one caught up", || {
        sink.complete(STREAM_A, "21") && sink.complete(STREAM_A, "22") && sink.data(STREAM_A, "23") == fake.data("23")
    })
    .await;
    assert_eq!(sink.data(STREAM_A, "21"), fake.data("21"));
    assert_eq!(sink.data(STREAM_A, "22"), fake.data("22"));
    assert!(!sink.complete(STREAM_A, "23"), "the open chunk is not complete");

    fake.append("23", &lines("c2", 5));
    wait_until("appended lines", || sink.data(STREAM_A, "23") == fake.data("23")).await;

    fake.rotate("23", "24", &lines("d", 3));
    wait_until("rotation: 23 complete, 24 followed", || {
        sink.complete(STREAM_A, "23") && sink.data(STREAM_A, "24") == fake.data("24")
    })
    .await;
    fake.append("24", &lines("d2", 2));
    wait_until("the new live chunk", || sink.data(STREAM_A, "24") == fake.data("24")).await;

    let m = metrics.source("web-1", "");
    assert!(m.live_bytes.load(Relaxed) > 0 && m.backfill_bytes.load(Relaxed) > 0);
    assert!(m.lag_ns().is_some());
    wait_until("backlog drained", || m.backlog_chunks.load(Relaxed) == 1 && m.backlog_bytes.load(Relaxed) == 0).await;
    let status = m.status();
    assert_eq!(status.stream.as_deref(), Some(format!("{STREAM_A:032x}").as_str()));
    assert_eq!(status.state, SourceState::Connected);
    assert_eq!(status.live_chunk.as_deref(), Some("24"));
    assert_eq!(status.live_offset, fake.data("24").len() as u64);
    assert_eq!(m.chunks_lost.load(Relaxed), 0);
    run.stop().await;
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_then_backfill_newest_first() {
    let certs = Certs::new();
    let mut chunks: Vec<FakeChunk> =
        ["21", "22", "23", "24", "25", "26"].iter().map(|id| closed(id, lines(id, 40))).collect();
    chunks.push(open("27", lines("live", 5)));
    let fake = Fake::start(certs.server_tls(), STREAM_A, chunks).await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    // One worker: the order of fetches is the order of picks.
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &metrics);
    wait_until("every closed chunk complete", || {
        ["21", "22", "23", "24", "25", "26"].iter().all(|id| sink.complete(STREAM_A, id))
    })
    .await;
    let order = first_commit_order(&sink.commits(), "s");
    assert_eq!(order, ["27", "26", "25", "24", "23", "22", "21"], "live first, then newest first");
    for id in ["21", "22", "23", "24", "25", "26", "27"] {
        assert_eq!(sink.data(STREAM_A, id), fake.data(id), "{id}");
    }
    run.stop().await;
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_from_the_committed_offset_after_restart() {
    let certs = Certs::new();
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", lines("a", 30)), open("22", lines("b", 20))]).await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let pool = Arc::new(Semaphore::new(2));
    let run = Running::start(certs.source("s", &fake), &sink, &pool, &metrics);
    wait_until("first run caught up", || sink.complete(STREAM_A, "21") && sink.data(STREAM_A, "22") == fake.data("22"))
        .await;
    run.stop().await;

    let mark = fake.requests().len();
    let committed = fake.data("22").len();
    fake.append("22", &lines("c", 10));
    let run = Running::start(certs.source("s", &fake), &sink, &pool, &metrics);
    wait_until("second run caught up", || sink.data(STREAM_A, "22") == fake.data("22")).await;
    run.stop().await;

    let after: Vec<String> = fake.requests()[mark..].to_vec();
    assert!(after.iter().all(|r| !r.starts_with("/chunk/21")), "a complete chunk is not fetched again: {after:?}");
    let fetches: Vec<&String> = after.iter().filter(|r| r.starts_with("/chunk/22")).collect();
    assert!(!fetches.is_empty());
    for r in &fetches {
        assert_eq!(**r, format!("/chunk/22?offset={committed}"), "every fetch resumes: {after:?}");
    }
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_only_whole_lines() {
    let certs = Certs::new();
    let closed_data = lines("closed", 100);
    let cut_at = closed_data.len() / 2 + 7;
    let boundary = closed_data[..cut_at].iter().rposition(|&b| b == b'\n').unwrap() + 1;
    assert_ne!(boundary, cut_at, "the cut is inside a line");
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", closed_data.clone()), open("22", Vec::new())])
            .await;
    fake.modify(|s| s.cut_once = Some(("21".into(), cut_at)));
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &metrics);

    // A live line and half of the next arrive together: only the whole line is committed.
    let first = b"{\"time_ns\":1,\"a\":\"one\"}\n";
    let second = b"{\"time_ns\":2,\"a\":\"two\"}\n";
    let mut both = first.to_vec();
    both.extend_from_slice(&second[..9]);
    fake.append("22", &both);
    wait_until("the whole live line", || !sink.data(STREAM_A, "22").is_empty()).await;
    assert_eq!(sink.data(STREAM_A, "22"), first);
    fake.append("22", &second[9..]);
    wait_until("the rest of the line", || sink.data(STREAM_A, "22") == fake.data("22")).await;

    // The closed chunk breaks mid-line. Until then nothing of it is committed (a closed chunk
    // goes in one batch when its body ends); at the break, the whole lines before the cut are
    // committed, and the fetch resumes at the last line boundary.
    let m = metrics.source("s", "");
    wait_until("the bytes before the cut", || m.backfill_bytes.load(Relaxed) >= cut_at as u64).await;
    assert!(sink.data(STREAM_A, "21").is_empty(), "a closed chunk is committed when its body ends");
    fake.cut_now.notify_one();
    wait_until("the cut chunk complete", || sink.complete(STREAM_A, "21")).await;
    assert_eq!(sink.data(STREAM_A, "21"), closed_data);
    let chunk_commits: Vec<(u64, usize)> =
        sink.commits().iter().filter(|c| c.chunk == "21").map(|c| (c.start, c.len)).collect();
    assert_eq!(
        chunk_commits,
        vec![(0, boundary), (boundary as u64, closed_data.len() - boundary)],
        "the lines before the break, then the rest in one batch"
    );
    let requests = fake.requests();
    assert!(requests.contains(&format!("/chunk/21?offset={boundary}")), "{requests:?}");
    assert!(m.errors(ErrorKind::Broken) >= 1, "{:?}", m.errors_by_kind());
    run.stop().await;
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_does_not_wait_for_an_idle_live_chunk() {
    let certs = Certs::new();
    // The live chunk has nothing past the committed offset (here: nothing at all) and gets
    // nothing new: its body stays silent, for up to LIVE_IDLE_TIMEOUT (11 minutes).
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", lines("old", 20)), open("22", Vec::new())]).await;
    let sink = Arc::new(MemSink::default());
    let run =
        Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &Arc::new(PullMetrics::new()));
    wait_until("the older chunk complete", || sink.complete(STREAM_A, "21")).await;
    assert_eq!(sink.data(STREAM_A, "21"), fake.data("21"));
    assert!(sink.data(STREAM_A, "22").is_empty());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_chunk_is_committed_in_batches_of_the_largest_size() {
    let certs = Certs::new();
    // Larger than any chunk a supervisor writes, so that it takes several batches; read over the
    // network in pieces of at most a few hundred KB.
    let big = lines("big", 50_000);
    assert!(big.len() > 2 * BATCH_BYTES_MAX + BATCH_BYTES_MAX / 2, "{}", big.len());
    let fake = Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", big.clone()), open("22", Vec::new())]).await;
    let sink = Arc::new(MemSink::default());
    let run =
        Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &Arc::new(PullMetrics::new()));
    wait_until("the big chunk complete", || sink.complete(STREAM_A, "21")).await;
    run.stop().await;
    assert_eq!(sink.data(STREAM_A, "21"), big);
    let sizes: Vec<usize> = sink.commits().iter().filter(|c| c.chunk == "21").map(|c| c.len).collect();
    let line_max = big.split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap() + 1;
    let (last, full) = sizes.split_last().unwrap();
    assert_eq!(full.len(), 2, "{sizes:?}");
    assert!(full.iter().all(|&n| n > BATCH_BYTES_MAX - line_max && n <= BATCH_BYTES_MAX), "{sizes:?}");
    assert_eq!(*last, big.len() - full.iter().sum::<usize>());
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gone_chunk_is_lost_once() {
    let certs = Certs::new();
    let mut gone = closed("21", lines("a", 10));
    gone.gone = true;
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![gone, closed("22", lines("b", 10)), open("23", lines("c", 1))])
            .await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &metrics);
    wait_until("22 complete and 21 lost", || sink.complete(STREAM_A, "22") && !sink.lost().is_empty()).await;
    // Rotations make the puller list again several times; 21 stays listed and gone.
    fake.rotate("23", "24", &lines("d", 1));
    wait_until("24 followed", || sink.data(STREAM_A, "24") == fake.data("24")).await;
    fake.rotate("24", "25", &lines("e", 1));
    wait_until("25 followed", || sink.data(STREAM_A, "25") == fake.data("25")).await;
    run.stop().await;
    assert_eq!(sink.lost(), vec![("s".to_string(), STREAM_A, "21".to_string(), 0)]);
    assert_eq!(metrics.source("s", "").chunks_lost.load(Relaxed), 1);
    let fetches = fake.requests().iter().filter(|r| r.starts_with("/chunk/21")).count();
    assert_eq!(fetches, 1, "a 404 is never retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_vanishes_from_the_listing_is_lost() {
    let certs = Certs::new();
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", lines("a", 10)), open("22", lines("b", 2))]).await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    // No backfill worker at all: 21 can only be listed, never fetched.
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(0)), &metrics);
    wait_until("live chunk", || sink.data(STREAM_A, "22") == fake.data("22")).await;
    let m = metrics.source("s", "");
    wait_until("backlog counted", || m.backlog_chunks.load(Relaxed) == 2).await;
    fake.modify(|s| s.chunks.retain(|c| c.id != "21"));
    fake.rotate("22", "23", &lines("c", 1));
    wait_until("21 reported lost", || !sink.lost().is_empty()).await;
    wait_until("23 followed", || sink.data(STREAM_A, "23") == fake.data("23")).await;
    run.stop().await;
    assert_eq!(sink.lost(), vec![("s".to_string(), STREAM_A, "21".to_string(), 0)]);
    assert_eq!(m.chunks_lost.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_supervisor_is_read_from_scratch() {
    let certs = Certs::new();
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", lines("a", 10)), open("22", lines("b", 4))]).await;
    // The stream id only comes with chunk responses.
    fake.modify(|s| s.listing_stream_header = false);
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &metrics);
    wait_until("old stream read", || sink.complete(STREAM_A, "21") && sink.data(STREAM_A, "22") == fake.data("22"))
        .await;
    // Wiped and restarted: a new stream id, and the same chunk ids with other contents.
    fake.modify(|s| {
        s.stream = STREAM_B;
        s.chunks = vec![closed("21", lines("new-a", 3)), open("22", lines("new-b", 2))];
    });
    wait_until("new stream read from offset 0", || {
        sink.complete(STREAM_B, "21") && sink.data(STREAM_B, "22") == fake.data("22")
    })
    .await;
    assert_eq!(sink.data(STREAM_B, "21"), lines("new-a", 3));
    assert_eq!(sink.data(STREAM_A, "22"), lines("b", 4), "the old stream's data is untouched");
    let status = metrics.source("s", "").status();
    assert_eq!(status.stream.as_deref(), Some(format!("{STREAM_B:032x}").as_str()));
    run.stop().await;
    assert_eq!(sink.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_id_that_keeps_changing_is_a_failure_backed_off() {
    // Before: each change sent the puller back to list at once, about 25 requests a second for
    // as long as it lasted, and nothing said why.
    let certs = Certs::new();
    let fake = Fake::start(certs.server_tls(), STREAM_A, vec![open("22", lines("b", 4))]).await;
    fake.modify(|s| s.flip_stream = true);
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(certs.source("s", &fake), &sink, &Arc::new(Semaphore::new(1)), &metrics);
    let m = metrics.source("s", "");
    wait_until("the changes reported", || {
        m.status().last_error.is_some_and(|e| e.contains("does more than one supervisor answer at this URL"))
    })
    .await;
    assert!(m.errors(ErrorKind::Protocol) >= 1, "{:?}", m.errors_by_kind());
    assert!(m.reconnects.load(Relaxed) >= 1);
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_certificates_fail_their_source_only() {
    let certs = Certs::new();
    let fake =
        Fake::start(certs.server_tls(), STREAM_A, vec![closed("21", lines("a", 20)), open("22", lines("b", 3))]).await;
    let (_, store_cert, store_key, _) = certs.generated.clients[0].clone();
    let good = certs.source("good", &fake);
    let stranger = certs.source_with(
        "stranger",
        &fake,
        certs.stranger.0.clone(),
        certs.stranger.1.clone(),
        Trust::CaFile(certs.generated.ca.clone()),
    );
    // Pinned to the CA's certificate, not the server's.
    let wrong_pin = sluice_tls::fingerprint(&std::fs::read(&certs.generated.ca).unwrap());
    let badpin = certs.source_with("badpin", &fake, store_cert, store_key, Trust::Pinned(wrong_pin));
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let (stop, shutdown) = watch::channel(false);
    let task =
        tokio::spawn(run_all(vec![stranger, badpin, good], Arc::clone(&sink), 1, Arc::clone(&metrics), shutdown));

    wait_until("good source ingested", || {
        sink.complete(STREAM_A, "21") && sink.data(STREAM_A, "22") == fake.data("22")
    })
    .await;
    for name in ["stranger", "badpin"] {
        let m = metrics.source(name, "");
        wait_until(&format!("{name} fails its handshake"), || m.errors(ErrorKind::Tls) >= 2).await;
        let status = m.status();
        assert!(status.last_error.as_deref().is_some_and(|e| e.starts_with("tls: ")), "{status:?}");
        assert_ne!(status.state, SourceState::Connected, "{status:?}");
        assert!(m.reconnects.load(Relaxed) >= 2);
    }
    let committers: Vec<String> = sink.commits().iter().map(|c| c.source.clone()).collect();
    assert!(committers.iter().all(|s| s == "good"), "{committers:?}");
    stop.send_replace(true);
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_source_does_not_delay_another() {
    let certs = Certs::new();
    let history = |tag: &str| -> Vec<FakeChunk> {
        let mut chunks: Vec<FakeChunk> =
            ["21", "22", "23", "24", "25"].iter().map(|id| closed(id, lines(&format!("{tag}{id}"), 20))).collect();
        chunks.push(open("26", lines(tag, 2)));
        chunks
    };
    let healthy = Fake::start(certs.server_tls(), STREAM_A, history("ok")).await;
    let stalled = Fake::start(certs.server_tls(), STREAM_B, history("stuck")).await;
    // Lists and streams its live chunk, but never answers for a closed chunk.
    stalled.modify(|s| s.stall_closed = true);
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let (stop, shutdown) = watch::channel(false);
    let sources = vec![certs.source("stuck", &stalled), certs.source("ok", &healthy)];
    // A single backfill worker, shared: the stalled source must not keep it.
    let task = tokio::spawn(run_all(sources, Arc::clone(&sink), 1, Arc::clone(&metrics), shutdown));
    wait_until("the stalled source's live chunk", || sink.data(STREAM_B, "26") == stalled.data("26")).await;
    wait_until("the healthy source's backlog, despite the stall", || {
        ["21", "22", "23", "24", "25"].iter().all(|id| sink.complete(STREAM_A, id))
    })
    .await;
    healthy.append("26", &lines("more", 3));
    wait_until("healthy live data", || sink.data(STREAM_A, "26") == healthy.data("26")).await;
    assert!(stalled.requests().iter().any(|r| r.starts_with("/chunk/25")), "the stalled source did try its backlog");
    assert!(!sink.complete(STREAM_B, "25"));
    stop.send_replace(true);
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_trickles_bytes_does_not_hold_the_backfill_pool() {
    // Before: a fetch gave its permit back only after a second without bytes, so a server
    // sending a byte now and then held the pool for hours (a 1 KB chunk here takes 110 s).
    let certs = Certs::new();
    let history = |tag: &str| -> Vec<FakeChunk> {
        ["21", "22", "23", "24", "25"].iter().map(|id| closed(id, lines(&format!("{tag}{id}"), 20))).collect()
    };
    let mut chunks = history("slow");
    chunks.push(open("26", lines("slow", 2)));
    let slow = Fake::start(certs.server_tls(), STREAM_B, chunks).await;
    slow.modify(|s| s.drip_closed = true);
    // The healthy source has no history until the slow one holds the only worker.
    let healthy = Fake::start(certs.server_tls(), STREAM_A, vec![open("26", lines("ok", 2))]).await;
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let (stop, shutdown) = watch::channel(false);
    let sources = vec![certs.source("slow", &slow), certs.source("ok", &healthy)];
    let task = tokio::spawn(run_all(sources, Arc::clone(&sink), 1, Arc::clone(&metrics), shutdown));
    wait_until("the slow source fetches its history", || slow.requests().iter().any(|r| r == "/chunk/25")).await;
    // History turns up on the healthy source (its live chunk closes: it lists again).
    healthy.modify(|s| {
        s.chunks.splice(0..0, history("ok"));
    });
    healthy.rotate("26", "27", &lines("ok27", 1));
    wait_until("the healthy source's history, while the slow one trickles", || {
        ["21", "22", "23", "24", "25"].iter().all(|id| sink.complete(STREAM_A, id))
    })
    .await;
    assert!(!sink.complete(STREAM_B, "25"), "the slow chunk is still coming");
    assert!(sink.data(STREAM_B, "25").len() < slow.data("25").len());
    stop.send_replace(true);
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
}

/// The one test against the real chunk server of `sluice supervise` (small chunks, so that the
/// history spans several): the whole stream arrives, in order, each line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_everything_from_the_real_supervisor() {
    use sluice_chunk::{ChunkLog, DiskStorage, FsyncPolicy, LogConfig, SystemClock};
    use sluice_supervisor::{metrics::Metrics, serve};

    let certs = Certs::new();
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        chunk_bytes_max: 64 * 1024,
        line_bytes_max: 4096,
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let (log, _) =
        ChunkLog::open(DiskStorage::open(&dir.path().join("data")).unwrap(), config, Arc::new(SystemClock)).unwrap();
    let log = Arc::new(log);
    let stream = log.stream_id().0;
    let history = lines("history", 3000);
    for line in history.split_inclusive(|&b| b == b'\n') {
        log.append(line).unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reloads, reloads_rx) = watch::channel(0u64);
    let (stop_server, server_shutdown) = watch::channel(false);
    let server = tokio::spawn(serve::serve_chunks(
        listener,
        certs.server_tls(),
        Arc::clone(&log),
        Arc::new(Metrics::default()),
        serve::ServeConfig::default(),
        reloads_rx,
        server_shutdown,
    ));

    let (_, cert, key, _) = certs.generated.clients[0].clone();
    let src = certs.source_at("real", addr, cert, key, Trust::CaFile(certs.generated.ca.clone()));
    let sink = Arc::new(MemSink::default());
    let metrics = Arc::new(PullMetrics::new());
    let run = Running::start(src, &sink, &Arc::new(Semaphore::new(1)), &metrics);

    let tagged = |tag: &str| -> Vec<u8> {
        let needle = format!("\"tag\":\"{tag}\"");
        let mut out = Vec::new();
        for (_, data, _) in sink.chunks(stream) {
            for line in data.split_inclusive(|&b| b == b'\n') {
                if line.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    out.extend_from_slice(line);
                }
            }
        }
        out
    };
    wait_until("the history", || tagged("history") == history).await;
    let live = lines("live", 200);
    for line in live.split_inclusive(|&b| b == b'\n') {
        log.append(line).unwrap();
    }
    wait_until("the live lines", || tagged("live") == live).await;
    let chunks = sink.chunks(stream);
    assert!(chunks.len() >= 3, "the history spans several chunks: {}", chunks.len());
    let (_, older) = chunks.split_last().unwrap();
    assert!(older.iter().all(|(_, _, complete)| *complete), "every chunk but the open one is complete");
    run.stop().await;
    assert_eq!(sink.violations(), Vec::<String>::new());
    stop_server.send_replace(true);
    log.close().unwrap();
    tokio::time::timeout(DEADLINE, server).await.unwrap().unwrap();
}
