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
//! plan, single-threaded, over its new rows.

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

use crate::search::{predicate_sql, select_list};
use crate::{Access, Engine, QueryError};

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
            let matched = self.matching(batches).await?;
            self.cursor = last;
            if matched.is_empty() && dropped == 0 {
                continue;
            }
            return Ok(TailBatch { batches: matched, dropped });
        }
    }

    /// The rows of `batches` (in commit order, one schema) that match, masked as the caller
    /// must see them.
    async fn matching(&mut self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
        let schema = batches[0].schema();
        let planned = match self.planned.take() {
            Some(p) if Arc::ptr_eq(&p.schema, &schema) || p.schema == schema => p,
            _ => self.plan(schema).await?,
        };
        planned.rows.put(batches);
        // A fresh copy of the plan's operators (their metrics would otherwise grow each step).
        let plan = reset_plan_states(planned.plan.clone()).map_err(internal)?;
        let task = planned.task.clone();
        self.planned = Some(planned);
        let out = collect(plan, task).await.map_err(internal)?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// The search's query over a table of one step's rows of `schema`, in a session of its own.
    async fn plan(&self, schema: SchemaRef) -> Result<Planned, QueryError> {
        let pred = predicate_sql(&self.query, &schema)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {pred} ORDER BY {}",
            select_list(&schema),
            crate::TABLE,
            quote_ident(COL_SEQ)
        );
        let rows = Arc::new(StepRows { schema: schema.clone(), batches: Mutex::new(Vec::new()) });
        // A step's rows come in commit order; saying so lets the plan keep it without sorting.
        let table = StreamingTable::try_new(schema.clone(), vec![rows.clone()])
            .map_err(internal)?
            .with_sort_order(vec![ident(COL_SEQ).sort(true, false)]);
        let ctx = self.engine.inner.context_over(Arc::new(table), schema.clone(), self.access)?;
        // One partition: a step holds few rows, and neither repartitioning nor merging is worth
        // its cost there.
        ctx.state_ref().write().config_mut().options_mut().execution.target_partitions = 1;
        let df = ctx.sql(&sql).await.map_err(internal)?;
        let plan = df.create_physical_plan().await.map_err(internal)?;
        Ok(Planned { schema, rows, plan, task: ctx.task_ctx() })
    }
}
