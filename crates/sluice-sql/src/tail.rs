//! Live tail: the events matching a search, as they are committed ("starting now").
//!
//! Not here: delivery to clients (the API streams [`Tail::next`] as Server-Sent Events).
//!
//! A tail reads the store's buffer from its own cursor (`sluice_seq`), so ingest never waits for
//! it: a slow reader only falls behind. What it cannot see any more it reports instead of
//! hiding: rows flushed out of the buffer before the reader got to them, and rows skipped because
//! more than [`TAIL_BACKLOG_ROWS_MAX`] were waiting, are counted in [`TailBatch::dropped`].
//! Matching and masking are the search's, run over only the new rows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, UInt64Array};
use sluice_query::{quote_ident, Query};
use sluice_store::{StoreView, COL_SEQ};
use tokio::sync::watch;

use crate::search::{from_sql, predicate_sql, select_list};
use crate::{Access, Engine, QueryError, ScanCounters};

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
}

/// What one step of a tail found.
#[derive(Debug, Default)]
pub struct TailBatch {
    /// Matching events, in commit order.
    pub batches: Vec<RecordBatch>,
    /// Committed events this tail could not examine (see the module docs).
    pub dropped: u64,
}

fn seqs(batch: &RecordBatch) -> Option<&UInt64Array> {
    batch.column_by_name(COL_SEQ).and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
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
        Ok(Tail { engine: self.clone(), query: q, access, cursor, changes })
    }
}

impl Tail {
    /// Wait for newly committed events and return those that match (possibly none, when only
    /// `dropped` has something to say). Cancel-safe: dropping the future loses nothing.
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
            self.cursor = last;
            let matched = self.matching(batches).await?;
            if matched.is_empty() && dropped == 0 {
                continue;
            }
            return Ok(TailBatch { batches: matched, dropped });
        }
    }

    async fn matching(&self, batches: Vec<RecordBatch>) -> Result<Vec<RecordBatch>, QueryError> {
        let schema = batches[0].schema();
        let (pred, needs_text) = predicate_sql(&self.query, &schema)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE {pred} ORDER BY {}",
            select_list(&schema),
            from_sql(&schema, needs_text),
            quote_ident(COL_SEQ)
        );
        let view = StoreView { schema, segments: Vec::new(), buffered: batches };
        let counters = Arc::new(ScanCounters::default());
        let ctx = self.engine.context(view, self.access, None, counters)?;
        let df = ctx.sql(&sql).await.map_err(|e| QueryError::Internal(e.to_string()))?;
        let out = df.collect().await.map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }
}
