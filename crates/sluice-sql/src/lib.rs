//! The event store's query engine (SPEC §3 Query and Access): SQL over one `events` table with
//! DataFusion, quick search compiled to the same engine, and live tail, each for a caller with or
//! without the `pii` role.
//!
//! Not here: HTTP, tokens and output formats (sluice-api), the query language's parser
//! (sluice-query), storage (sluice-store).
//!
//! # The `events` table
//!
//! One table over a consistent [`sluice_store::StoreView`]: the live Parquet segments (listed by
//! the manifest, so a compaction's inputs and output are never both read) and the buffered rows
//! (so an event is queryable as soon as its commit returns). Segments are pruned by event time
//! (the manifest's `time_ns` range against simple `time_ns` comparisons in the query), by
//! Parquet row-group statistics, and for searches by per-segment term indexes. Columns are the
//! store's (see sluice-store): `time_ns`, `sluice_source`, `sluice_stream`, `sluice_received_ns`,
//! `sluice_id`, `sluice_seq`, `sluice_overflow`, then one per key.
//!
//! # Masking
//!
//! For a caller without the `pii` role, `events` is a view in which every `pii_*` column is
//! replaced by its keyed hash ([`MaskKey`]), `sluice_overflow` has its `pii_*` values hashed and
//! the text of unparsed lines hidden, and the bad-line columns (`sluice_raw`, `sluice_raw_b64`,
//! `sluice_bad_values`) are hidden. The query is planned against the view, so a filter on a
//! `pii_*` column compares masked values (`WHERE pii_uid = 'U577019'` matches nothing, a hash the
//! caller was shown matches), and no statistic or index of the raw values can prune: the masking
//! function is opaque to pruning, and searches use `pii_*` term indexes only for `pii` callers.
//! The masking functions are not registered under any name a query could call.
//!
//! # Functions
//!
//! Besides DataFusion's own: `quantile_nearest(x, q)`, the exact nearest-rank quantile of an
//! unsigned integer column (`quantile_nearest(duration_ms, 0.99)` is the p99 as an observed
//! value).
//!
//! Integer literals next to an unsigned column take its type (`time_ns / 60000000000` is integer
//! division, not a decimal with a fraction); see literals.rs.
//!
//! # Limits
//!
//! Each query runs under [`EngineConfig::memory_max_bytes`] (DataFusion's memory pool: an
//! operator over it fails the query with 413), [`EngineConfig::time_max`] (408), at most
//! [`EngineConfig::rows_max`] result rows (the rest is cut and `truncated` is set), and at most
//! [`EngineConfig::concurrent_max`] queries at once (429). Only queries: DDL, DML, `COPY` and
//! `SET` are refused, so no query can read or write a path. Dropping a query's future (the
//! client went away) cancels its work.
//!
//! The memory limit also holds for the answer itself: a result whose batches hold more than
//! it is refused (413), which catches a value no operator reserved (a scalar function's output).
//!
//! Each query or search runs on threads of its own (pool.rs; as many as `target_partitions`),
//! never on the caller's nor another query's: the caller gets its answer at the time limit
//! whatever the plan does.
//! The query itself stops when its stream next yields: leaves yield per batch they read, and
//! operators whose output can be far larger than their input (joins, unnest) per batch they
//! produce (coop.rs). A plan can still compute for minutes in one step (a join whose filter
//! matches no pair produces no batch to yield on); it then keeps its slot and its thread until
//! it yields, so at most `concurrent_max` of them compute at once, and the caller's runtime
//! (in the store: `/healthz`, pulling, shutdown) is never among their threads.

#![cfg_attr(test, allow(clippy::unwrap_used))]

mod concat;
mod coop;
mod functions;
mod literals;
mod mask;
mod pool;
mod search;
mod table;
mod tail;
mod terms;
mod words;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::view::ViewTable;
use datafusion::common::DataFusionError;
use datafusion::datasource::provider_as_source;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Expr, LogicalPlanBuilder};
use datafusion::optimizer::analyzer::Analyzer;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use datafusion::prelude::{ident, SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use serde::Serialize;
use sluice_store::{Store, StoreView, COL_OVERFLOW};
use tokio::sync::Semaphore;

use pool::{AbortOnDrop, QueryPool};

pub use functions::{nearest_rank, overflow_text};
pub use mask::{KeyError, MaskKey, HIDDEN, HIDDEN_COLUMNS, KEY_FILE};
pub use search::{
    needed_terms, Needed, SearchRequest, LIMIT_DEFAULT as SEARCH_LIMIT_DEFAULT, LIMIT_MAX as SEARCH_LIMIT_MAX,
};
pub use table::{EventsTable, ScanCounters, SegmentAccess, SegmentFilter};
pub use tail::{Tail, TailBatch, TAIL_BACKLOG_ROWS_MAX};

use mask::{MaskKind, MaskUdf};

/// Default memory limit of one query.
pub const MEMORY_MAX_BYTES_DEFAULT: usize = 1024 * 1024 * 1024;
/// Bytes of Parquet footers and page indexes kept between queries (least recently used first
/// out). Segments never change once written, so a cached footer stays right; without it every
/// query re-read and re-parsed the footer and page index of every segment it touched.
pub const SEGMENT_METADATA_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Default time limit of one query.
pub const TIME_MAX_DEFAULT: Duration = Duration::from_secs(30);
/// Default cap of result rows.
pub const ROWS_MAX_DEFAULT: usize = 100_000;
/// Default number of queries that run at once.
pub const CONCURRENT_MAX_DEFAULT: usize = 4;
/// The table's name in SQL.
pub const TABLE: &str = "events";

/// Limits of the engine (see the crate docs).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub memory_max_bytes: usize,
    pub time_max: Duration,
    pub rows_max: usize,
    pub concurrent_max: usize,
    /// DataFusion's partitions per query; the number of cores by default.
    pub target_partitions: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            memory_max_bytes: MEMORY_MAX_BYTES_DEFAULT,
            time_max: TIME_MAX_DEFAULT,
            rows_max: ROWS_MAX_DEFAULT,
            concurrent_max: CONCURRENT_MAX_DEFAULT,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The segment metadata cache: segments held, their bytes, and how often those were reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetadataCacheStats {
    pub segments: usize,
    /// Segments whose page index is held with the footer (every one written with a page index).
    pub page_indexes: usize,
    pub bytes: usize,
    pub hits: usize,
}

/// What the caller may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The `pii` role: `pii_*` values and bad-line text in clear.
    pub pii: bool,
}

/// What a query read, for the answer's stats.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueryStats {
    /// Rows read from segments (after row-group pruning) and from the buffer.
    pub rows_scanned: u64,
    /// Bytes read from segment files.
    pub bytes_scanned: u64,
    pub segments_read: u64,
    /// Segments left out by event time or term indexes.
    pub segments_skipped: u64,
    /// Buffered (not yet flushed) rows the query looked at.
    pub buffer_rows: u64,
    /// Tests of a bare word against a string column of a segment read that were left out because
    /// the segment's term index says no value of that column holds the word (one per segment,
    /// word and column): those columns were not decoded for it.
    pub columns_skipped: u64,
    pub elapsed_ms: f64,
}

/// A finished query.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// More rows matched than [`EngineConfig::rows_max`] (or the search limit); the rest was cut.
    pub truncated: bool,
    pub stats: QueryStats,
}

impl QueryOutput {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Why a query failed. [`QueryError::status`] is the HTTP status the API answers with.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query text is wrong; `position` is the 0-based column when known.
    #[error("{message}")]
    Invalid { message: String, position: Option<usize> },
    #[error("query needs more than the memory limit of {limit_bytes} bytes: {message}; aggregate more, select fewer columns or narrow the time range")]
    TooLarge { limit_bytes: usize, message: String },
    #[error("query exceeded the time limit of {0:?}; narrow the time range or add filters")]
    Timeout(Duration),
    #[error("too many queries running (at most {0}); retry shortly")]
    Busy(usize),
    #[error("query failed: {0}")]
    Internal(String),
}

impl QueryError {
    pub fn status(&self) -> u16 {
        match self {
            QueryError::Invalid { .. } => 400,
            QueryError::TooLarge { .. } => 413,
            QueryError::Timeout(_) => 408,
            QueryError::Busy(_) => 429,
            QueryError::Internal(_) => 500,
        }
    }

    pub fn position(&self) -> Option<usize> {
        match self {
            QueryError::Invalid { position, .. } => *position,
            _ => None,
        }
    }

    fn invalid(message: impl Into<String>) -> QueryError {
        QueryError::Invalid { message: message.into(), position: None }
    }
}

/// The 0-based column of a sqlparser message ("… at Line: 1, Column: 15" is 14), the same
/// convention as search syntax errors.
fn sql_position(message: &str) -> Option<usize> {
    let at = message.rfind("Column: ")? + "Column: ".len();
    let digits: String = message[at..].chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse::<usize>().ok().map(|c| c.saturating_sub(1))
}

fn classify(e: DataFusionError, memory_max_bytes: usize) -> QueryError {
    let message = e.to_string();
    let root = e.find_root();
    match root {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_)
        | DataFusionError::ArrowError(..) => {
            // The root alone: what wraps it names DataFusion's internals ("Optimizer rule
            // 'simplify_expressions' failed" around a cast of a literal that cannot be cast).
            let message = root.to_string();
            let message = message
                .trim_start_matches("SQL error: ")
                .trim_start_matches("Arrow error: ")
                .trim_start_matches("Execution error: ")
                .trim_start_matches("Error during planning: ")
                .trim_start_matches("Schema error: ")
                .to_owned();
            QueryError::Invalid { position: sql_position(&message), message }
        }
        DataFusionError::ResourcesExhausted(m) => {
            QueryError::TooLarge { limit_bytes: memory_max_bytes, message: m.clone() }
        }
        _ => QueryError::Internal(message),
    }
}

/// A missing segment file: a compaction or retention removed it after the view was taken.
fn is_gone(e: &QueryError) -> bool {
    matches!(e, QueryError::Internal(m) if m.contains("not found") || m.contains("No such file"))
}

struct Inner {
    store: Arc<Store>,
    key: MaskKey,
    cfg: EngineConfig,
    running: Arc<Semaphore>,
    /// Queries answered at their time limit, since the engine started.
    timeouts: std::sync::atomic::AtomicU64,
    /// Segment footers and page indexes, shared by every query of this engine.
    metadata: Arc<FileMetadataCache>,
    /// The threads live tails match on, started with the first tail.
    tails: std::sync::OnceLock<Result<QueryPool, String>>,
}

/// The query engine of one store. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// An engine over `store`, masking with the key in its data directory (created if absent).
    pub fn open(store: Arc<Store>, cfg: EngineConfig) -> Result<Engine, KeyError> {
        let key = MaskKey::load_or_create(store.data_dir())?;
        Ok(Engine::with_key(store, cfg, key))
    }

    pub fn with_key(store: Arc<Store>, cfg: EngineConfig, key: MaskKey) -> Engine {
        let running = Arc::new(Semaphore::new(cfg.concurrent_max.max(1)));
        let metadata: Arc<FileMetadataCache> =
            Arc::new(DefaultCache::new(SEGMENT_METADATA_CACHE_BYTES).with_name("sluice-segment-metadata"));
        Engine {
            inner: Arc::new(Inner {
                store,
                key,
                cfg,
                running,
                timeouts: Default::default(),
                metadata,
                tails: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Queries holding one of the [`EngineConfig::concurrent_max`] slots now, counting any still
    /// computing past its time limit (its caller was answered; its plan has not yielded since).
    pub fn queries_running(&self) -> usize {
        self.inner.cfg.concurrent_max.max(1).saturating_sub(self.inner.running.available_permits())
    }

    /// Queries answered at their time limit (408) since the engine started.
    pub fn queries_timed_out(&self) -> u64 {
        self.inner.timeouts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// What the cache of segment footers and page indexes holds.
    pub fn segment_metadata_cache(&self) -> MetadataCacheStats {
        let entries = self.inner.metadata.list_entries();
        MetadataCacheStats {
            segments: entries.len(),
            page_indexes: entries
                .values()
                .filter(|e| e.value.file_metadata.extra_info().get("page_index").is_some_and(|v| v == "true"))
                .count(),
            bytes: entries.values().map(|e| e.size_bytes).sum(),
            hits: entries.values().map(|e| e.hits).sum(),
        }
    }

    /// Run one SQL query over `events`.
    pub async fn sql(&self, sql: &str, access: Access) -> Result<QueryOutput, QueryError> {
        check_operators(sql)?;
        self.run(sql, access, None, self.inner.cfg.rows_max).await
    }

    /// Run `sql`, pruned by a quick search's term indexes if given, on threads of its own
    /// (pool.rs), answering at the time limit whether or not the query has stopped by then. Its concurrency slot is held until
    /// it has: a query that computes on past its limit counts against the limit of queries at once,
    /// and holds only its own threads.
    pub(crate) async fn run(
        &self,
        sql: &str,
        access: Access,
        terms: Option<terms::TermsRequest>,
        rows_max: usize,
    ) -> Result<QueryOutput, QueryError> {
        let permit = self
            .inner
            .running
            .clone()
            .try_acquire_owned()
            .map_err(|_| QueryError::Busy(self.inner.cfg.concurrent_max))?;
        let pool = QueryPool::new(self.inner.cfg.target_partitions.max(1), "sluice-query", Some(permit))
            .map_err(|e| QueryError::Internal(format!("cannot start threads for the query: {e}")))?;
        let started = Instant::now();
        let inner = self.inner.clone();
        let sql = sql.to_owned();
        let mut task = AbortOnDrop(pool.spawn(async move {
            let filter = match terms {
                Some(r) => terms::filter(&inner.store, r).await,
                None => None,
            };
            inner.run_retrying(&sql, access, filter, rows_max).await
        }));
        let time_max = self.inner.cfg.time_max;
        let out = match tokio::time::timeout(time_max, &mut task.0).await {
            Err(_) => {
                self.inner.timeouts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Dropping the pool keeps the slot until the query's threads have stopped.
                return Err(QueryError::Timeout(time_max));
            }
            Ok(Err(e)) => Err(QueryError::Internal(format!("the query stopped abnormally: {e}"))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Ok(Ok(mut out))) => {
                out.stats.elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
                Ok(out)
            }
        };
        pool.finished();
        out
    }
}

impl Inner {
    /// The threads every live tail's steps run on ([`tail::TAIL_THREADS`]).
    fn tail_pool(&self) -> Result<&QueryPool, QueryError> {
        self.tails
            .get_or_init(|| QueryPool::new(tail::TAIL_THREADS, "sluice-tail", None).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| QueryError::Internal(format!("cannot start threads for live tails: {e}")))
    }

    /// Run `sql` on a fresh view, once more when a segment vanished under the query (compaction
    /// or retention).
    async fn run_retrying(
        &self,
        sql: &str,
        access: Access,
        filter: Option<SegmentFilter>,
        rows_max: usize,
    ) -> Result<QueryOutput, QueryError> {
        let mut attempt = 0;
        loop {
            let view = self.store.view();
            match self.run_view(sql, access, filter.clone(), view, rows_max).await {
                Err(e) if attempt == 0 && is_gone(&e) => attempt += 1,
                result => return result,
            }
        }
    }

    /// A session whose `events` table is `view`, masked unless `access.pii`.
    fn context(
        &self,
        view: StoreView,
        access: Access,
        filter: Option<SegmentFilter>,
        counters: Arc<ScanCounters>,
    ) -> Result<SessionContext, QueryError> {
        let schema = view.schema.clone();
        self.context_over(Arc::new(EventsTable::new(view, filter, counters)), schema, access)
    }

    /// A session whose `events` table is `table` (of `schema`), masked unless `access.pii`. The
    /// live tail plans once over a table of its own rows with this.
    pub(crate) fn context_over(
        &self,
        table: Arc<dyn datafusion::catalog::TableProvider>,
        schema: SchemaRef,
        access: Access,
    ) -> Result<SessionContext, QueryError> {
        let cfg = &self.cfg;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(cfg.memory_max_bytes, 1.0)
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(self.metadata.clone()))
                    .with_metadata_cache_limit(SEGMENT_METADATA_CACHE_BYTES),
            )
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        runtime.register_object_store(table::segments_url().as_ref(), self.store.object_store());
        let mut config = SessionConfig::new().with_target_partitions(cfg.target_partitions.max(1));
        // Late materialisation: decode the other columns only for rows that pass the filters,
        // which is what makes needle queries cheap.
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        let ctx = SessionContext::new_with_state(session_state(config, runtime, cfg.memory_max_bytes));
        ctx.register_udaf(functions::QuantileNearest::udaf());
        ctx.register_udf(functions::OverflowText::udf());
        ctx.register_udf(functions::OverflowGet::udf(false));
        ctx.register_udf(functions::OverflowGet::udf(true));
        for f in functions::Bounded::all(cfg.memory_max_bytes) {
            ctx.register_udf(f);
        }
        ctx.register_udf(words::WordsMatch::udf());
        let provider: Arc<dyn datafusion::catalog::TableProvider> = if access.pii {
            table
        } else {
            let key = self.key;
            let value = MaskUdf::udf(MaskKind::Value, key);
            let overflow = MaskUdf::udf(MaskKind::Overflow, key);
            let hide = MaskUdf::udf(MaskKind::Hide, key);
            let id = MaskUdf::udf(MaskKind::Id, key);
            let exprs: Vec<Expr> = schema
                .fields()
                .iter()
                .map(|f| {
                    let name = f.name().as_str();
                    let c = ident(name);
                    if sluice_query::is_pii(name) {
                        value.call(vec![c]).alias(name)
                    } else if name == COL_OVERFLOW {
                        overflow.call(vec![c]).alias(name)
                    } else if name == sluice_store::COL_ID {
                        id.call(vec![c]).alias(name)
                    } else if HIDDEN_COLUMNS.contains(&name)
                        && f.data_type() == &datafusion::arrow::datatypes::DataType::Utf8
                    {
                        hide.call(vec![c]).alias(name)
                    } else {
                        c
                    }
                })
                .collect();
            let plan = LogicalPlanBuilder::scan(TABLE, provider_as_source(table), None)
                .and_then(|b| b.project(exprs))
                .and_then(|b| b.build())
                .map_err(|e| QueryError::Internal(e.to_string()))?;
            Arc::new(ViewTable::new(plan, None))
        };
        ctx.register_table(TABLE, provider).map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(ctx)
    }

    async fn run_view(
        &self,
        sql: &str,
        access: Access,
        filter: Option<SegmentFilter>,
        view: StoreView,
        rows_max: usize,
    ) -> Result<QueryOutput, QueryError> {
        let mem = self.cfg.memory_max_bytes;
        let counters = Arc::new(ScanCounters::default());
        let ctx = self.context(view, access, filter, counters.clone())?;
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let df = ctx.sql_with_options(sql, options).await.map_err(|e| classify(e, mem))?;
        let plan = df.create_physical_plan().await.map_err(|e| classify(e, mem))?;
        let schema = plan.schema();
        let mut stream = execute_stream(plan.clone(), ctx.task_ctx()).map_err(|e| classify(e, mem))?;
        let mut batches = Vec::new();
        let mut rows = 0usize;
        let mut bytes = 0usize;
        let mut truncated = false;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| classify(e, mem))?;
            // The memory pool sees what operators reserve, not what a scalar function builds
            // (`repeat('x', 1500000000)` is one call): the answer itself is held to the limit.
            bytes = bytes.saturating_add(result_bytes(&batch));
            if bytes > mem {
                return Err(QueryError::TooLarge {
                    limit_bytes: mem,
                    message: format!("the result reached {bytes} bytes"),
                });
            }
            if rows + batch.num_rows() > rows_max {
                batches.push(batch.slice(0, rows_max - rows));
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
        }
        drop(stream);
        let mut stats = QueryStats {
            segments_read: counters.segments_read.load(std::sync::atomic::Ordering::Relaxed),
            segments_skipped: counters.segments_skipped.load(std::sync::atomic::Ordering::Relaxed),
            buffer_rows: counters.buffer_rows.load(std::sync::atomic::Ordering::Relaxed),
            columns_skipped: counters.columns_skipped.load(std::sync::atomic::Ordering::Relaxed),
            ..QueryStats::default()
        };
        stats.rows_scanned = stats.buffer_rows;
        add_scan_metrics(&plan, &mut stats);
        Ok(QueryOutput { schema, batches, truncated, stats })
    }
}

/// Most operators one query may hold. The parser nests parentheses and calls at most 50 deep,
/// but it builds a chain of binary operators (`a + b + …`, `x = 1 OR x = 2 OR …`) in a loop, into
/// a tree as deep as the chain is long, which planning walks and dropping frees recursively.
pub const OPERATORS_MAX: usize = 4096;

/// Refuse a query with more than [`OPERATORS_MAX`] operators before it is parsed into a tree.
fn check_operators(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    // A text the tokenizer refuses is left for the parser to explain.
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else { return Ok(()) };
    let is_operator = |t: &Token| match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND | Keyword::OR | Keyword::NOT | Keyword::IS | Keyword::LIKE | Keyword::ILIKE | Keyword::BETWEEN
        ),
        Token::Whitespace(_)
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::Comma
        | Token::Period
        | Token::LParen
        | Token::RParen
        | Token::SemiColon
        | Token::EOF => false,
        _ => true,
    };
    // A sign after `(`, `,` or an operator is part of a value (`IN (-1, -2)`), not a link of a
    // chain; signs in a row nest, and the parser's depth limit holds those.
    let mut operators = 0;
    let mut prev: Option<&Token> = None;
    for t in tokens.iter().filter(|t| !matches!(t, Token::Whitespace(_))) {
        let sign = matches!(t, Token::Minus | Token::Plus);
        let after_value = prev.is_some_and(|p| !matches!(p, Token::LParen | Token::Comma) && !is_operator(p));
        if is_operator(t) && (!sign || after_value) {
            operators += 1;
        }
        prev = Some(t);
    }
    if operators > OPERATORS_MAX {
        return Err(QueryError::Invalid {
            message: format!(
                "the query has {operators} operators; at most {OPERATORS_MAX} fit in one query: write a list of \
                 alternatives as `x IN (a, b, …)`, or split the query"
            ),
            position: None,
        });
    }
    Ok(())
}

/// The bytes `batch` holds, counting only the part of each buffer a slice covers (a limit's
/// slice of a large batch is not charged for the whole batch).
fn result_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
        .sum()
}

/// DataFusion's default session with [`literals::UnsignedLiterals`] placed before its type
/// coercion (afterwards the `Int64` literals would already have turned the column to a decimal).
fn session_state(config: SessionConfig, runtime: Arc<RuntimeEnv>, bytes_max: usize) -> SessionState {
    let mut analyzer = Analyzer::new();
    let at = analyzer.rules.iter().position(|r| r.name() == "type_coercion").unwrap_or(0);
    analyzer.rules.insert(at, Arc::new(literals::UnsignedLiterals));
    // After type coercion (at + 1 is now type_coercion itself): `||` sees its operands' final types.
    analyzer.rules.insert((at + 2).min(analyzer.rules.len()), Arc::new(concat::BoundedStringConcat::new(bytes_max)));
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(coop::YieldingAmplifiers));
    *builder.analyzer() = Some(analyzer);
    builder.build()
}

/// Rows and bytes read by the plan's segment scans (the leaves that count bytes; the buffer's
/// scan records no rows, so the caller adds `buffer_rows`).
fn add_scan_metrics(plan: &Arc<dyn ExecutionPlan>, stats: &mut QueryStats) {
    let children = plan.children();
    if children.is_empty() {
        // Segment scans only (they count bytes); the buffer's rows are counted at the scan.
        if let Some(m) = plan.metrics().filter(|m| m.sum_by_name("bytes_scanned").is_some()) {
            let pruned = m.sum_by_name("pushdown_rows_pruned").map_or(0, |v| v.as_usize());
            stats.rows_scanned += (m.output_rows().unwrap_or(0) + pruned) as u64;
            stats.bytes_scanned += m.sum_by_name("bytes_scanned").map_or(0, |v| v.as_usize()) as u64;
        }
    }
    for c in children {
        add_scan_metrics(c, stats);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_positions_are_read_from_parser_messages() {
        assert_eq!(sql_position("Expected: end of statement, found: x at Line: 1, Column: 15"), Some(14));
        assert_eq!(sql_position("no position"), None);
    }
}
