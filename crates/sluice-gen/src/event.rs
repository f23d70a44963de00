//! The event generator: writes one line at a time into a caller's buffer.
//!
//! Valid events only; bad lines and stderr lines are in `bad.rs`. Builds its tables once in
//! [`Generator::new`] and allocates nothing per line (numbers go through `itoa`, strings are copied
//! from static tables). It knows nothing about clocks, pacing or output streams (`lib.rs`, `pace.rs`).

use crate::bad::BadClass;
use crate::rng::{mix64, Ratio, Rng, Zipf};
use crate::vocab::*;
use crate::{GenConfig, LineKind, TIME_NS_MAX};

/// `,"key":"` for a string field.
macro_rules! key_s {
    ($k:literal) => {
        concat!(",\"", $k, "\":\"").as_bytes()
    };
}
/// `,"key":` for a number field.
macro_rules! key_n {
    ($k:literal) => {
        concat!(",\"", $k, "\":").as_bytes()
    };
}
pub(crate) use {key_n, key_s};

/// Seed of the fixed tables (endpoint popularity order): the same for every `--seed`, so the shape
/// of the data set does not change with the seed, only the sequence.
const TABLE_SEED: u64 = 0x5EED_7AB1E;
/// Distinct users; their ids are Zipf-distributed so a few users are very active.
const USERS: usize = 100_000;
/// Flattening of the user Zipf head (rank k has weight 1 / (k + 1 + q)): the busiest user makes
/// about 1% of the events rather than 8%.
const USERS_ZIPF_Q: f64 = 10.0;
/// Share (per 10,000) of events whose `pii_ip` is the user's usual address rather than a random one.
const HOME_IP_PER_10K: u64 = 8_500;
/// Event-kind mix, per 1,000, cumulative: log 30%, rpc 30%, http 20%, app 8%, worker 7%,
/// queue 2.5%, heap 2.5%.
const KIND_LOG_END: u64 = 300;
const KIND_RPC_END: u64 = 600;
const KIND_HTTP_END: u64 = 800;
const KIND_APP_END: u64 = 880;
const KIND_WORKER_END: u64 = 950;
const KIND_QUEUE_END: u64 = 975;
const KIND_MIX_SCALE: u64 = 1_000;
/// Page sizes of paginated collection requests.
const PAGE_LIMITS: [u64; 3] = [20, 50, 100];
/// Salt of the user-to-address hash, so user ids and addresses do not look alike.
const IP_SALT: u64 = 0x1B_ADD7;
/// Salt of the user-to-old-email hash.
const EMAIL_SALT: u64 = 0xE_3A11;

/// What an HTTP endpoint is, which decides its verbs, status codes and latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndpointKind {
    Collection,
    Item,
    Sub,
    Search,
    Page,
    Static,
    Blob,
}

struct Endpoint {
    /// Path up to the id (or the whole path when there is no id).
    head: Box<str>,
    /// Hex digits of a random id after `head` (0: none).
    id_hex: u8,
    /// Path after the id.
    tail: Box<str>,
    kind: EndpointKind,
    median_ms: f64,
}

struct Tables {
    modules: Zipf,
    starters: Zipf,
    nouns: Zipf,
    adjectives: Zipf,
    adverbs: Zipf,
    prepositions: Zipf,
    users: Zipf,
    rpc: Zipf,
    server_errors: Zipf,
    endpoints: Vec<Endpoint>,
    endpoint_rank: Zipf,
    actions: Zipf,
    ios_versions: Zipf,
    android_versions: Zipf,
    web_versions: Zipf,
    ios_devices: Zipf,
    android_devices: Zipf,
    web_devices: Zipf,
    workers: Zipf,
    work_types: Zipf,
}

impl Tables {
    fn new() -> Self {
        Tables {
            modules: Zipf::new(MODULES.len(), 1.0),
            starters: Zipf::new(STARTERS.len(), 2.0),
            nouns: Zipf::new(NOUNS.len(), 1.0),
            adjectives: Zipf::new(ADJECTIVES.len(), 1.0),
            adverbs: Zipf::new(ADVERBS.len(), 1.0),
            prepositions: Zipf::new(PREPOSITIONS.len(), 1.0),
            users: Zipf::new(USERS, USERS_ZIPF_Q),
            rpc: Zipf::new(RPC_METHODS.len(), 1.0),
            server_errors: Zipf::from_weights(&SERVER_ERRORS.iter().map(|(_, w)| *w).collect::<Vec<_>>()),
            endpoints: build_endpoints(),
            endpoint_rank: Zipf::new(endpoint_count(), 2.0),
            actions: Zipf::new(APP_ACTIONS.len(), 1.0),
            ios_versions: Zipf::new(IOS_VERSIONS.len(), 0.5),
            android_versions: Zipf::new(ANDROID_VERSIONS.len(), 0.5),
            web_versions: Zipf::new(WEB_VERSIONS.len(), 0.5),
            ios_devices: Zipf::new(IOS_DEVICES.len(), 2.0),
            android_devices: Zipf::new(ANDROID_DEVICES.len(), 2.0),
            web_devices: Zipf::new(WEB_DEVICES.len(), 0.5),
            workers: Zipf::new(WORKERS.len(), 8.0),
            work_types: Zipf::new(WORK_TYPES.len(), 1.0),
        }
    }
}

/// Per resource: /api/v2/r, /api/v2/r/ID, two /api/v2/r/ID/sub, /api/v2/r/search, /api/v1/r,
/// /api/v1/r/ID.
const ENDPOINTS_PER_RESOURCE: usize = 7;

fn endpoint_count() -> usize {
    RESOURCES.len() * ENDPOINTS_PER_RESOURCE + PAGES.len() + DOC_TOPICS.len() + STATIC_ASSETS.len() + 1
}

/// A few hundred endpoints, in a fixed pseudo-random popularity order.
fn build_endpoints() -> Vec<Endpoint> {
    fn ep(head: String, id_hex: u8, tail: String, kind: EndpointKind, median_ms: f64) -> Endpoint {
        Endpoint { head: head.into_boxed_str(), id_hex, tail: tail.into_boxed_str(), kind, median_ms }
    }
    use EndpointKind::*;
    let mut v = Vec::with_capacity(endpoint_count());
    for (i, r) in RESOURCES.iter().enumerate() {
        let sub_a = SUB_RESOURCES[i % SUB_RESOURCES.len()];
        // (3i + 1) mod 8 is odd when i mod 8 is even and vice versa, so never equal to sub_a.
        let sub_b = SUB_RESOURCES[(3 * i + 1) % SUB_RESOURCES.len()];
        v.push(ep(format!("/api/v2/{r}"), 0, String::new(), Collection, 35.0));
        v.push(ep(format!("/api/v2/{r}/"), 12, String::new(), Item, 12.0));
        v.push(ep(format!("/api/v2/{r}/"), 12, format!("/{sub_a}"), Sub, 20.0));
        v.push(ep(format!("/api/v2/{r}/"), 12, format!("/{sub_b}"), Sub, 25.0));
        v.push(ep(format!("/api/v2/{r}/search"), 0, String::new(), Search, 80.0));
        v.push(ep(format!("/api/v1/{r}"), 0, String::new(), Collection, 50.0));
        v.push(ep(format!("/api/v1/{r}/"), 12, String::new(), Item, 18.0));
    }
    for p in PAGES {
        v.push(ep((*p).to_owned(), 0, String::new(), Page, 25.0));
    }
    for t in DOC_TOPICS {
        v.push(ep(format!("/docs/{t}"), 0, String::new(), Page, 15.0));
    }
    for s in STATIC_ASSETS {
        v.push(ep((*s).to_owned(), 0, String::new(), Static, 2.0));
    }
    v.push(ep("/blobs/".to_owned(), 13, String::new(), Blob, 45.0));
    debug_assert_eq!(v.len(), endpoint_count());
    // Fisher-Yates with a fixed seed: popularity is spread over all kinds of endpoint.
    let mut rng = Rng::new(TABLE_SEED, 0);
    for i in (1..v.len()).rev() {
        let j = rng.index(i + 1);
        v.swap(i, j);
    }
    v
}

/// Slowly moving process gauges, so that consecutive samples look like one process.
struct Gauges {
    queue_length: u64,
    failed_item_count: u64,
    heap_size_mb: u64,
    heap_used_p: u64,
    threads: u64,
    sockets: u64,
    files: u64,
}

/// The event generator. Deterministic: the same [`GenConfig`] (seed, ratios) and the same
/// sequence of `time_ns` arguments give byte-identical lines on every platform and forever.
pub struct Generator {
    pub(crate) rng: Rng,
    timeline_rng: Rng,
    timeline_next_ns: u64,
    step_ns: u64,
    stderr_ratio: Ratio,
    bad_ratio: Ratio,
    /// Cumulative thresholds over a u64 draw, one per [`RARE_WORDS`] entry.
    pub(crate) rare_thresholds: [u64; RARE_WORDS.len()],
    t: Tables,
    gauges: Gauges,
    work_item_next: u64,
    pub(crate) last_bad: Option<BadClass>,
    /// Reused buffer for the valid event a bad line is made from.
    pub(crate) scratch: Vec<u8>,
}

/// Indexes into [`SERVER_ERRORS`] of the errors with their own latency shape.
const SERVER_ERROR_DB_CONN: usize = 0;
const SERVER_ERROR_DEADLINE: usize = 1;
const SERVER_ERROR_UPSTREAM: usize = 3;

/// Independent random streams of one seed.
const STREAM_CONTENT: u64 = 0;
const STREAM_TIMELINE: u64 = 1;

impl Generator {
    /// Builds the tables (a few milliseconds: the 100,000-user table dominates). Ratios outside
    /// `0.0..=1.0` are clamped; [`GenConfig::validate`] reports them.
    pub fn new(cfg: &GenConfig) -> Self {
        let mut rng = Rng::new(cfg.seed, STREAM_CONTENT);
        let mut rare_thresholds = [0u64; RARE_WORDS.len()];
        let mut cum = 0u64;
        for (t, rare) in rare_thresholds.iter_mut().zip(RARE_WORDS) {
            cum += u64::MAX / rare.one_in;
            *t = cum;
        }
        let gauges = Gauges {
            queue_length: rng.range(0, 20),
            failed_item_count: 0,
            heap_size_mb: 1_024,
            heap_used_p: rng.range(20, 60),
            threads: rng.range(560, 620),
            sockets: rng.range(520, 560),
            files: rng.range(150, 180),
        };
        let work_item_next = rng.range(100_000, 900_000);
        Generator {
            rng,
            timeline_rng: Rng::new(cfg.seed, STREAM_TIMELINE),
            timeline_next_ns: cfg.start_ns.min(TIME_NS_MAX),
            step_ns: cfg.step_ns,
            stderr_ratio: Ratio::new(cfg.stderr_ratio),
            bad_ratio: Ratio::new(cfg.bad_ratio),
            rare_thresholds,
            t: Tables::new(),
            gauges,
            work_item_next,
            last_bad: None,
            scratch: Vec::with_capacity(1024),
        }
    }

    /// The next time on the synthetic timeline: `start_ns` first, then steps uniform in
    /// `0..=2*step_ns` (mean `step_ns`), never past 2^63-1. Its own random stream, so the content
    /// of the lines does not depend on whether this is called.
    pub fn next_time_ns(&mut self) -> u64 {
        let t = self.timeline_next_ns;
        let span = self.step_ns.saturating_mul(2).saturating_add(1);
        self.timeline_next_ns = t.saturating_add(self.timeline_rng.below(span)).min(TIME_NS_MAX);
        t
    }

    /// Append the next line (one line + '\n') to `out` at time `time_ns` (clamped to 2^63-1);
    /// returns what kind of line it was. A [`LineKind::Stderr`] line is plain text meant for
    /// stderr; the caller routes it.
    pub fn next_line(&mut self, time_ns: u64, out: &mut Vec<u8>) -> LineKind {
        self.last_bad = None;
        if self.rng.hit(self.stderr_ratio) {
            self.write_stderr_line(time_ns, out);
            return LineKind::Stderr;
        }
        if self.rng.hit(self.bad_ratio) {
            let class = BadClass::ALL[self.rng.index(BadClass::ALL.len())];
            self.write_bad_line(class, time_ns, out);
            return LineKind::Bad;
        }
        self.write_event(time_ns, out);
        LineKind::Event
    }

    /// The class of the last line from [`Generator::next_line`] if it was [`LineKind::Bad`].
    pub fn last_bad_class(&self) -> Option<BadClass> {
        self.last_bad
    }

    /// One valid event line.
    pub(crate) fn write_event(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let r = self.rng.next_u64();
        if r < self.rare_thresholds[RARE_WORDS.len() - 1] {
            let i = self.rare_thresholds.partition_point(|&t| t <= r);
            self.write_log(time_ns, Some(RARE_WORDS[i].word), out);
            return;
        }
        match self.rng.below(KIND_MIX_SCALE) {
            k if k < KIND_LOG_END => self.write_log(time_ns, None, out),
            k if k < KIND_RPC_END => self.write_rpc(time_ns, out),
            k if k < KIND_HTTP_END => self.write_http(time_ns, out),
            k if k < KIND_APP_END => self.write_app(time_ns, out),
            k if k < KIND_WORKER_END => self.write_worker(time_ns, out),
            k if k < KIND_QUEUE_END => self.write_queue(time_ns, out),
            _ => self.write_heap(time_ns, out),
        }
    }

    fn write_log(&mut self, time_ns: u64, rare: Option<&'static str>, out: &mut Vec<u8>) {
        put_time(out, time_ns);
        let level = match self.rng.below(1_000) {
            0..870 => LEVELS_INFO,
            870..960 => LEVELS_WARN,
            960..990 => LEVELS_ERROR,
            _ => LEVELS_DEBUG,
        };
        // The seed's example: an account log line that carries both email addresses.
        if rare.is_none() && self.rng.below(1_000) < 30 {
            let uid = self.sample_uid();
            put_str(out, key_s!("level"), LEVELS_INFO);
            put_str(out, key_s!("module"), "account");
            put_str(out, key_s!("message"), "Updated email");
            put_uid(out, uid);
            out.extend_from_slice(key_s!("pii_old_email"));
            put_email(out, mix64(u64::from(uid) ^ EMAIL_SALT));
            out.push(b'"');
            out.extend_from_slice(key_s!("pii_new_email"));
            let h = self.rng.next_u64();
            put_email(out, h);
            out.extend_from_slice(b"\"}\n");
            return;
        }
        put_str(out, key_s!("level"), level);
        put_str(out, key_s!("module"), MODULES[self.t.modules.sample(&mut self.rng)]);
        out.extend_from_slice(key_s!("message"));
        self.put_message(rare, out);
        out.push(b'"');
        if self.rng.per_10k(8_500) {
            let uid = self.sample_uid();
            put_uid(out, uid);
        }
        out.extend_from_slice(b"}\n");
    }

    fn write_rpc(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let m = &RPC_METHODS[self.t.rpc.sample(&mut self.rng)];
        let uid = self.sample_uid();
        let ip = self.ip_for(uid);
        let r = self.rng.below(10_000);
        let mut user_err = "";
        let mut server_error = "";
        let duration_ms;
        let conn_ms;
        let txn_ms;
        if r < 30 {
            let mut which = self.t.server_errors.sample(&mut self.rng);
            // Methods without a database fail upstream instead.
            if !m.uses_db && SERVER_ERRORS[which].0.starts_with("DB_") {
                which = SERVER_ERROR_UPSTREAM;
            }
            server_error = SERVER_ERRORS[which].0;
            match which {
                // Pool checkout timed out: the whole call is the connection wait.
                SERVER_ERROR_DB_CONN => {
                    duration_ms = 1_000 + self.rng.below(4);
                    conn_ms = duration_ms;
                    txn_ms = 0;
                }
                // The caller's deadline.
                SERVER_ERROR_DEADLINE => {
                    duration_ms = 5_000 + self.rng.below(20);
                    conn_ms = self.rng.duration_ms(1.0, 1.0).min(duration_ms);
                    txn_ms = if m.uses_db { duration_ms - conn_ms } else { 0 };
                }
                SERVER_ERROR_UPSTREAM => {
                    duration_ms = 2_000 + self.rng.below(50);
                    conn_ms = 0;
                    txn_ms = 0;
                }
                _ => {
                    duration_ms = self.rng.duration_ms(m.median_ms * 2.0, 1.0);
                    conn_ms = self.rng.duration_ms(1.0, 1.0).min(duration_ms);
                    txn_ms = duration_ms - conn_ms;
                }
            }
        } else if r < 430 && !m.user_errs.is_empty() {
            // Rejected by validation before any real work.
            user_err = m.user_errs[self.rng.index(m.user_errs.len())];
            duration_ms = self.rng.below(4);
            conn_ms = 0;
            txn_ms = 0;
        } else {
            duration_ms = self.rng.duration_ms(m.median_ms, 1.0);
            if m.uses_db {
                conn_ms = self.rng.duration_ms(1.0, 1.0).min(duration_ms);
                txn_ms = (duration_ms - conn_ms) * self.rng.range(30, 80) / 100;
            } else {
                conn_ms = 0;
                txn_ms = 0;
            }
        }
        put_time(out, time_ns);
        put_str(out, key_s!("rpc_method"), m.name);
        put_str(out, key_s!("user_err"), user_err);
        put_str(out, key_s!("server_error"), server_error);
        put_num(out, key_n!("duration_ms"), duration_ms);
        put_num(out, key_n!("conn_ms"), conn_ms);
        put_num(out, key_n!("txn_ms"), txn_ms);
        put_ip_field(out, ip);
        put_uid(out, uid);
        out.extend_from_slice(b"}\n");
    }

    fn write_http(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        use EndpointKind::*;
        let uid = self.sample_uid();
        let ip = self.ip_for(uid);
        let rng = &mut self.rng;
        let ep = &self.t.endpoints[self.t.endpoint_rank.sample(rng)];
        let v = rng.below(100);
        let verb = match ep.kind {
            Collection if v < 80 => "GET",
            Collection => "POST",
            Item if v < 78 => "GET",
            Item if v < 87 => "PUT",
            Item if v < 94 => "PATCH",
            Item => "DELETE",
            Sub if v < 85 => "GET",
            Sub => "POST",
            Search if v < 60 => "GET",
            Search => "POST",
            Page if v < 97 => "GET",
            Page => "HEAD",
            Static | Blob => "GET",
        };
        let ok = match (verb, ep.kind) {
            ("POST", Collection) => 201,
            ("DELETE", _) => 204,
            ("GET", Static) if rng.below(4) == 0 => 304,
            _ => 200,
        };
        let status = match rng.below(10_000) {
            0..9_300 => ok,
            9_300..9_380 => 302,
            9_380..9_420 => 301,
            9_420..9_570 => 404,
            9_570..9_690 => 400,
            9_690..9_780 => 401,
            9_780..9_830 => 403,
            9_830..9_860 => 409,
            9_860..9_890 => 429,
            9_890..9_940 => 500,
            9_940..9_960 => 502,
            9_960..9_990 => 503,
            _ => 504,
        };
        let duration_ms = match status {
            301 | 302 | 304 | 400 | 401 | 403 | 404 => rng.duration_ms(ep.median_ms * 0.3, 0.8),
            429 | 503 => rng.duration_ms(1.0, 0.5),
            500 => rng.duration_ms(ep.median_ms * 2.0, 1.0),
            502 => 1_000 + rng.below(100),
            504 => 30_000 + rng.below(50),
            _ => rng.duration_ms(ep.median_ms, 1.0),
        };
        put_time(out, time_ns);
        put_str(out, key_s!("http_verb"), verb);
        out.extend_from_slice(key_s!("url"));
        out.extend_from_slice(b"https://mycorp.com");
        out.extend_from_slice(ep.head.as_bytes());
        if ep.id_hex > 0 {
            put_hex(out, rng.next_u64(), usize::from(ep.id_hex));
        }
        out.extend_from_slice(ep.tail.as_bytes());
        match ep.kind {
            Collection if verb == "GET" && rng.below(10) < 3 => {
                out.extend_from_slice(b"?page=");
                put_u64(out, rng.duration_ms(2.0, 1.5) + 1);
                out.extend_from_slice(b"&limit=");
                put_u64(out, PAGE_LIMITS[rng.index(PAGE_LIMITS.len())]);
            }
            Search if verb == "GET" => {
                out.extend_from_slice(b"?q=");
                out.extend_from_slice(NOUNS[self.t.nouns.sample(rng)].as_bytes());
                if rng.below(2) == 0 {
                    out.push(b'+');
                    out.extend_from_slice(NOUNS[self.t.nouns.sample(rng)].as_bytes());
                }
            }
            _ => {}
        }
        out.push(b'"');
        put_num(out, key_n!("status"), status);
        put_num(out, key_n!("duration_ms"), duration_ms);
        put_ip_field(out, ip);
        put_uid(out, uid);
        out.extend_from_slice(b"}\n");
    }

    fn write_app(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let uid = self.sample_uid();
        let rng = &mut self.rng;
        let t = &self.t;
        let action = APP_ACTIONS[t.actions.sample(rng)];
        let (version, device) = match rng.below(100) {
            0..45 => (IOS_VERSIONS[t.ios_versions.sample(rng)], IOS_DEVICES[t.ios_devices.sample(rng)]),
            45..85 => {
                (ANDROID_VERSIONS[t.android_versions.sample(rng)], ANDROID_DEVICES[t.android_devices.sample(rng)])
            }
            _ => (WEB_VERSIONS[t.web_versions.sample(rng)], WEB_DEVICES[t.web_devices.sample(rng)]),
        };
        put_time(out, time_ns);
        put_str(out, key_s!("action"), action);
        put_str(out, key_s!("app_version"), version);
        put_str(out, key_s!("device_type"), device);
        put_uid(out, uid);
        out.extend_from_slice(b"}\n");
    }

    fn write_worker(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let worker = WORKERS[self.t.workers.sample(rng)];
        let (work_type, median_ms, network_share_p) = WORK_TYPES[self.t.work_types.sample(rng)];
        let item = self.work_item_next;
        // Item ids grow like a database sequence, wrapping within six digits.
        self.work_item_next = (item + rng.range(1, 3)) % 1_000_000;
        let (result, duration_ms) = match rng.below(10_000) {
            0..9_400 => ("ok", rng.duration_ms(median_ms, 0.8)),
            9_400..9_700 => ("retry", rng.duration_ms(median_ms * 0.5, 1.0)),
            9_700..9_900 => ("error", rng.duration_ms(median_ms * 0.3, 1.0)),
            _ => ("timeout", 30_000 + rng.below(100)),
        };
        let network_ms = (duration_ms * network_share_p * rng.range(50, 150) / 10_000).min(duration_ms);
        put_time(out, time_ns);
        put_str(out, key_s!("worker"), worker);
        out.extend_from_slice(key_s!("work_item"));
        out.push(b'W');
        put_padded(out, item, 6);
        out.push(b'"');
        put_str(out, key_s!("type"), work_type);
        put_str(out, key_s!("result"), result);
        put_num(out, key_n!("duration_ms"), duration_ms);
        put_num(out, key_n!("network_ms"), network_ms);
        out.extend_from_slice(b"}\n");
    }

    fn write_queue(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let g = &mut self.gauges;
        // A random walk pulled back towards a short queue, with occasional bursts of work.
        let q = g.queue_length;
        g.queue_length =
            if rng.below(50) == 0 { q + rng.range(50, 500) } else { (q + rng.range(0, 6)).saturating_sub(3 + q / 10) };
        let f = g.failed_item_count;
        g.failed_item_count = if rng.below(100) == 0 {
            f + rng.range(1, 5)
        } else if f > 0 && rng.below(3) == 0 {
            f - 1
        } else {
            f
        };
        put_time(out, time_ns);
        put_num(out, key_n!("queue_length"), g.queue_length);
        put_num(out, key_n!("failed_item_count"), g.failed_item_count);
        out.extend_from_slice(b"}\n");
    }

    fn write_heap(&mut self, time_ns: u64, out: &mut Vec<u8>) {
        let rng = &mut self.rng;
        let g = &mut self.gauges;
        // Heap use climbs until a collection drops it: a sawtooth.
        g.heap_used_p += rng.range(0, 3);
        if g.heap_used_p > 85 {
            g.heap_used_p = rng.range(20, 40);
        }
        if rng.below(500) == 0 {
            g.heap_size_mb = if g.heap_size_mb == 1_024 { 2_048 } else { 1_024 };
        }
        g.threads = (g.threads + rng.range(0, 8)).saturating_sub(4 + (g.threads.saturating_sub(590)) / 8);
        g.sockets = g.threads.saturating_sub(rng.range(5, 30));
        g.files = (g.files + rng.range(0, 4)).saturating_sub(2).clamp(120, 220);
        put_time(out, time_ns);
        put_num(out, key_n!("heap_size_mb"), g.heap_size_mb);
        put_num(out, key_n!("heap_used_p"), g.heap_used_p);
        put_num(out, key_n!("threads"), g.threads);
        put_num(out, key_n!("sockets"), g.sockets);
        put_num(out, key_n!("files"), g.files);
        out.extend_from_slice(b"}\n");
    }

    /// A log message: a starter, a noun phrase, one to three prepositional phrases, sometimes an
    /// adverb and a number, e.g. "Evicted stale session token from the primary replica after 3
    /// attempts". A rare word, if given, is the head noun of the first phrase.
    pub(crate) fn put_message(&mut self, rare: Option<&'static str>, out: &mut Vec<u8>) {
        out.extend_from_slice(STARTERS[self.t.starters.sample(&mut self.rng)].as_bytes());
        self.put_noun_phrase(rare, out);
        for _ in 0..self.rng.range(1, 3) {
            out.push(b' ');
            out.extend_from_slice(PREPOSITIONS[self.t.prepositions.sample(&mut self.rng)].as_bytes());
            self.put_noun_phrase(None, out);
        }
        if self.rng.per_10k(600) {
            out.push(b' ');
            out.extend_from_slice(ADVERBS[self.t.adverbs.sample(&mut self.rng)].as_bytes());
        }
        if self.rng.per_10k(2_500) {
            let which = self.rng.index(MESSAGE_TAILS.len());
            let (before, after) = MESSAGE_TAILS[which];
            let number = match which {
                0 => self.rng.range(2, 9),
                1 => self.rng.duration_ms(40.0, 1.5),
                2 => self.rng.range(1, 500),
                3 => self.rng.below(1_000_000),
                4 => self.rng.below(1 << 20),
                _ => self.rng.below(64),
            };
            out.extend_from_slice(before.as_bytes());
            put_u64(out, number);
            out.extend_from_slice(after.as_bytes());
        }
    }

    /// ` [the] [adjective] noun [noun]`, with a leading space.
    fn put_noun_phrase(&mut self, head: Option<&'static str>, out: &mut Vec<u8>) {
        if self.rng.per_10k(2_500) {
            out.extend_from_slice(b" the");
        }
        if self.rng.per_10k(3_500) {
            out.push(b' ');
            out.extend_from_slice(ADJECTIVES[self.t.adjectives.sample(&mut self.rng)].as_bytes());
        }
        out.push(b' ');
        let noun = match head {
            Some(word) => word,
            None => NOUNS[self.t.nouns.sample(&mut self.rng)],
        };
        out.extend_from_slice(noun.as_bytes());
        if self.rng.per_10k(3_500) {
            out.push(b' ');
            out.extend_from_slice(NOUNS[self.t.nouns.sample(&mut self.rng)].as_bytes());
        }
    }

    /// A user id number (0..1,000,000), Zipf over [`USERS`] users. Ranks are scattered over the
    /// id space by an affine bijection mod 10^6 (the multiplier is coprime to 10).
    pub(crate) fn sample_uid(&mut self) -> u32 {
        let rank = self.t.users.sample(&mut self.rng) as u64;
        ((rank * 381_237 + 104_729) % 1_000_000) as u32
    }

    /// The address a request comes from: usually the user's own, sometimes anywhere.
    pub(crate) fn ip_for(&mut self, uid: u32) -> u64 {
        if self.rng.per_10k(HOME_IP_PER_10K) {
            mix64(u64::from(uid) ^ IP_SALT)
        } else {
            self.rng.next_u64()
        }
    }

    pub(crate) fn module(&mut self) -> &'static str {
        MODULES[self.t.modules.sample(&mut self.rng)]
    }
}

/// `{"time_ns":N` — the first key of every event.
#[inline]
pub(crate) fn put_time(out: &mut Vec<u8>, time_ns: u64) {
    out.extend_from_slice(b"{\"time_ns\":");
    put_u64(out, time_ns.min(TIME_NS_MAX));
}

#[inline]
pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(v).as_bytes());
}

#[inline]
fn put_str(out: &mut Vec<u8>, key: &[u8], v: &str) {
    out.extend_from_slice(key);
    out.extend_from_slice(v.as_bytes());
    out.push(b'"');
}

#[inline]
fn put_num(out: &mut Vec<u8>, key: &[u8], v: u64) {
    out.extend_from_slice(key);
    put_u64(out, v);
}

/// `v` in decimal, left-padded with zeros to `width` digits (more digits if it needs them).
#[inline]
pub(crate) fn put_padded(out: &mut Vec<u8>, v: u64, width: usize) {
    let mut b = itoa::Buffer::new();
    let s = b.format(v);
    out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
    out.extend_from_slice(s.as_bytes());
}

/// `,"pii_uid":"U123456"`.
#[inline]
pub(crate) fn put_uid(out: &mut Vec<u8>, uid: u32) {
    out.extend_from_slice(key_s!("pii_uid"));
    out.push(b'U');
    put_padded(out, u64::from(uid), 6);
    out.push(b'"');
}

/// The low `n` (at most 16) hex digits of `bits`, lowercase.
#[inline]
pub(crate) fn put_hex(out: &mut Vec<u8>, bits: u64, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..n.min(16)).rev() {
        out.push(HEX[((bits >> (4 * i)) & 0xF) as usize]);
    }
}

/// A public-looking IPv4 address from 64 random bits (first octet 1..=223, never 10 or 127).
#[inline]
pub(crate) fn put_ip(out: &mut Vec<u8>, h: u64) {
    let mut a = 1 + (h % 223);
    if a == 10 || a == 127 {
        a += 1;
    }
    put_u64(out, a);
    out.push(b'.');
    put_u64(out, (h >> 16) & 0xFF);
    out.push(b'.');
    put_u64(out, (h >> 24) & 0xFF);
    out.push(b'.');
    put_u64(out, 1 + ((h >> 32) & 0xFF) % 254);
}

#[inline]
fn put_ip_field(out: &mut Vec<u8>, h: u64) {
    out.extend_from_slice(key_s!("pii_ip"));
    put_ip(out, h);
    out.push(b'"');
}

/// `name[digits]@domain` from 64 random bits.
#[inline]
pub(crate) fn put_email(out: &mut Vec<u8>, h: u64) {
    out.extend_from_slice(EMAIL_NAMES[(h % EMAIL_NAMES.len() as u64) as usize].as_bytes());
    let digits = (h >> 16) % 1_000;
    if !(h >> 32).is_multiple_of(3) {
        put_u64(out, digits);
    }
    out.push(b'@');
    out.extend_from_slice(EMAIL_DOMAINS[((h >> 40) % EMAIL_DOMAINS.len() as u64) as usize].as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_indexes_name_the_errors_they_shape() {
        assert_eq!(SERVER_ERRORS[SERVER_ERROR_DB_CONN].0, "DB_CONN_UNAVAILABLE");
        assert_eq!(SERVER_ERRORS[SERVER_ERROR_DEADLINE].0, "DEADLINE_EXCEEDED");
        assert_eq!(SERVER_ERRORS[SERVER_ERROR_UPSTREAM].0, "UPSTREAM_UNAVAILABLE");
    }

    #[test]
    fn endpoints_are_a_few_hundred_distinct_paths() {
        let eps = build_endpoints();
        let mut keys: Vec<String> = eps.iter().map(|e| format!("{}{}{}", e.head, e.id_hex, e.tail)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), eps.len());
        assert!((200..400).contains(&eps.len()), "{}", eps.len());
    }

    /// Rare words appear exactly where promised: once, in the message of a log event, and in no
    /// other event. Probabilities are raised so that the test sees many of them.
    #[test]
    fn rare_words_appear_only_in_the_messages_of_rare_events() {
        let mut gen = Generator::new(&GenConfig::default());
        let mut cum = 0;
        for t in &mut gen.rare_thresholds {
            cum += u64::MAX / 50;
            *t = cum;
        }
        let mut out = Vec::new();
        let mut seen = [0u32; RARE_WORDS.len()];
        for i in 0..100_000 {
            out.clear();
            gen.write_event(i, &mut out);
            let line = std::str::from_utf8(&out).unwrap();
            let found: Vec<usize> = (0..RARE_WORDS.len()).filter(|&w| line.contains(RARE_WORDS[w].word)).collect();
            match found[..] {
                [] => {}
                [w] => {
                    seen[w] += 1;
                    let word = RARE_WORDS[w].word;
                    assert_eq!(line.matches(word).count(), 1, "{line}");
                    let msg = line.split("\"message\":\"").nth(1).unwrap();
                    let msg = msg.split('"').next().unwrap();
                    assert!(msg.split(' ').any(|token| token == word), "not a bare word: {line}");
                }
                _ => panic!("two rare words in one event: {line}"),
            }
        }
        // 2% per word: about 2,000 each.
        assert!(seen.iter().all(|&n| (1_700..2_300).contains(&n)), "{seen:?}");
    }

    #[test]
    fn default_rare_word_probabilities_match_their_documentation() {
        let gen = Generator::new(&GenConfig::default());
        let total: f64 = RARE_WORDS.iter().map(|r| 1.0 / r.one_in as f64).sum();
        let last = gen.rare_thresholds[RARE_WORDS.len() - 1] as f64 / u64::MAX as f64;
        assert!((last - total).abs() < 1e-12, "{last} vs {total}");
    }
}
