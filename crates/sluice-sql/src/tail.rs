//! Live tail: the events matching a search, as they are committed ("starting now").
//!
//! Not here: delivery to clients (the API streams [`Tail::next`] as Server-Sent Events).
//!
//! A tail reads the store's buffer from its own cursor (`sluice_seq`), so ingest never waits for
//! it: a slow reader only falls behind. What it cannot see any more it reports instead of
//! hiding: rows flushed out of the buffer before the reader got to them, and rows skipped because
//! more than [`TAIL_BACKLOG_ROWS_MAX`] were waiting, are counted in [`TailBatch::dropped`].
//! Matching and masking are the search's, run over only the new rows.
//!
//! Every group commit wakes every tail, so a step must be cheap: the query is planned once (and
//! again only when the buffer's schema changes, when new columns appear) over a table whose one
//! partition yields the rows the current step put there, and each step only re-executes that
//! plan, single-threaded, over its new rows. Steps run on threads shared by the engine's tails
//! ([`TAIL_THREADS`]), never on the caller's: in the store those serve `/healthz`, pull the
//! sources and act on SIGTERM, and 64 tails of 256 words each at every commit would hold them.

use std::sync::{Arc, Mutex, PoisonError};

use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::ident;
use sluice_query::{quote_ident, Query};
use sluice_store::COL_SEQ;
use tokio::sync::watch;

use crate::pool::AbortOnDrop;
use crate::search::{predicate_sql, select_list};
use crate::{Access, Engine, QueryError};

/// Threads that every tail's steps share.
pub const TAIL_THREADS: usize = 2;

/// Most rows a tail examines per step; when more are waiting, the oldest are skipped and counted
/// as dropped (the reader is too slow to keep up anyway).
pub const TAIL_BACKLOG_ROWS_MAX: usize = 50_000;

/// A live tail (see the module docs).
pub struct Tail {
    engine: Engine,
    query: Query,
    access: Access,
    cursor: u64,
    changes: watch::Receiver<u64>,
    /// The plan for the buffer's current schema, made at the first step that needs it.
    planned: Option<Planned>,
}

/// What one step of a tail found.
#[derive(Debug, Default)]
pub struct TailBatch {
    /// Matching events, in commit order.
    pub batches: Vec<RecordBatch>,
    /// Committed events this tail could not examine (see the module docs).
    pub dropped: u64,
}

/// A tail's query, planned for one schema of the buffer.
struct Planned {
    schema: SchemaRef,
    rows: Arc<StepRows>,
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
}

/// The one partition of a tail's `events` table: the rows of the current step, handed over
/// (not kept) when the plan executes.
#[derive(Debug)]
struct StepRows {
    schema: SchemaRef,
    batches: Mutex<Vec<RecordBatch>>,
}

impl StepRows {
    fn put(&self, batches: Vec<RecordBatch>) {
        *self.batches.lock().unwrap_or_else(PoisonError::into_inner) = batches;
    }
}

impl PartitionStream for StepRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let batches = std::mem::take(&mut *self.batches.lock().unwrap_or_else(PoisonError::into_inner));
        let rows = futures_util::stream::iter(batches.into_iter().map(Ok));
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), rows))
    }
}

fn seqs(batch: &RecordBatch) -> Option<&UInt64Array> {
    batch.column_by_name(COL_SEQ).and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
}

fn internal(e: impl ToString) -> QueryError {
    QueryError::Internal(e.to_string())
}

impl Engine {
    /// Start a tail of the events matching `query` committed from now on.
    pub fn tail(&self, query: &str, access: Access) -> Result<Tail, QueryError> {
        let q = sluice_query::parse(query)
            .map_err(|e| QueryError::Invalid { message: format!("query: {e}"), position: Some(e.position) })?;
        // Checked once here so that a bad query fails at the start, not at the first event.
        predicate_sql(&q, &self.store().schema())?;
        let changes = self.store().subscribe();
        let (_, cursor) = self.store().buffered_after(u64::MAX);
        Ok(Tail { engine: self.clone(), query: q, access, cursor, changes, planned: None })
    }
}

impl Tail {
    /// Wait for newly committed events and return those that match (possibly none, when only
    /// `dropped` has something to say). Cancel-safe: dropping the future loses nothing (the
    /// cursor moves only when a step's answer is returned).
    pub async fn next(&mut self) -> Result<TailBatch, QueryError> {
        loop {
            let (mut batches, _) = self.engine.store().buffered_after(self.cursor);
            batches.retain(|b| b.num_rows() > 0);
            if batches.is_empty() {
                if self.changes.changed().await.is_err() {
                    return Err(QueryError::Internal("the store is shutting down".into()));
                }
                continue;
            }
            let mut dropped = 0u64;
            let first = seqs(&batches[0]).map_or(self.cursor + 1, |s| s.value(0));
            dropped += first.saturating_sub(self.cursor + 1);
            let mut total: usize = batches.iter().map(|b| b.num_rows()).sum();
            while total > TAIL_BACKLOG_ROWS_MAX {
                let skip = (total - TAIL_BACKLOG_ROWS_MAX).min(batches[0].num_rows());
                dropped += skip as u64;
                total -= skip;
                if skip == batches[0].num_rows() {
                    batches.remove(0);
                } else {
                    let b = &batches[0];
                    batches[0] = b.slice(skip, b.num_rows() - skip);
                }
            }
            let last = batches.last().and_then(seqs).map_or(self.cursor, |s| s.value(s.len() - 1));
            let matched = self.step(batches).await?;
            self.cursor = last;
            if matched.is_empty() && dropped == 0 {
                continue;
            }
            return Ok(TailBatch { batches: matched, dropped });
        }
    }

    /// One step's matching on the tails' threads. Dropping the future (cancel-safe) aborts it;
    /// the plan is then made again at the next step.
    async fn step(&mut self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
        let pool = self.engine.inner.tail_pool()?;
        let (engine, query, access, planned) =
            (self.engine.clone(), self.query.clone(), self.access, self.planned.take());
        let mut task = AbortOnDrop(pool.spawn(matching(engine, query, access, planned, batches)));
        let (planned, out) =
            (&mut task.0).await.map_err(|e| internal(format!("a tail step stopped abnormally: {e}")))?;
        self.planned = planned;
        out
    }
}

/// The rows of `batches` (in commit order, one schema) that match, masked as the caller must see
/// them; with the plan to keep for the next step.
async fn matching(
    engine: Engine,
    query: Query,
    access: Access,
    planned: Option<Planned>,
    batches: Vec<RecordBatch>,
) -> (Option<Planned>, Result<Vec<RecordBatch>, QueryError>) {
    let schema = batches[0].schema();
    let planned = match planned {
        Some(p) if Arc::ptr_eq(&p.schema, &schema) || p.schema == schema => p,
        _ => match plan(&engine, &query, access, schema).await {
            Ok(p) => p,
            Err(e) => return (None, Err(e)),
        },
    };
    planned.rows.put(batches);
    // A fresh copy of the plan's operators (their metrics would otherwise grow each step).
    let plan = match reset_plan_states(planned.plan.clone()) {
        Ok(p) => p,
        Err(e) => return (Some(planned), Err(internal(e))),
    };
    let out = collect(plan, planned.task.clone()).await.map_err(internal);
    (Some(planned), out.map(|out| out.into_iter().filter(|b| b.num_rows() > 0).collect()))
}

/// The search's query over a table of one step's rows of `schema`, in a session of its own.
async fn plan(engine: &Engine, query: &Query, access: Access, schema: SchemaRef) -> Result<Planned, QueryError> {
    let pred = predicate_sql(query, &schema)?;
    let sql =
        format!("SELECT {} FROM {} WHERE {pred} ORDER BY {}", select_list(&schema), crate::TABLE, quote_ident(COL_SEQ));
    let rows = Arc::new(StepRows { schema: schema.clone(), batches: Mutex::new(Vec::new()) });
    // A step's rows come in commit order; saying so lets the plan keep it without sorting.
    let table = StreamingTable::try_new(schema.clone(), vec![rows.clone()])
        .map_err(internal)?
        .with_sort_order(vec![ident(COL_SEQ).sort(true, false)]);
    let ctx = engine.inner.context_over(Arc::new(table), schema.clone(), access)?;
    // One partition: a step holds few rows, and neither repartitioning nor merging is worth
    // its cost there.
    ctx.state_ref().write().config_mut().options_mut().execution.target_partitions = 1;
    let df = ctx.sql(&sql).await.map_err(internal)?;
    let plan = df.create_physical_plan().await.map_err(internal)?;
    Ok(Planned { schema, rows, plan, task: ctx.task_ctx() })
}
