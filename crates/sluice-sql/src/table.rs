//! The `events` table: one DataFusion table over a [`StoreView`] — the live Parquet segments and
//! the buffered rows together, so that an event is in exactly one of them — with segment pruning
//! by event time and by a caller-supplied segment filter (term indexes), which may also narrow a
//! segment to row ranges (its blocks that may match), counted for the stats. The filter may also
//! rule string columns of a segment out of a bare word's test (the segment's index says none of
//! their values holds the word): that segment's row filter then tests the word against the other
//! columns only, so the ruled-out columns are not decoded for it ([`NarrowWords`]).
//!
//! Not here: masking (the engine wraps this table in a masking view for callers without the
//! `pii` role) or SQL (DataFusion plans over it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{
    CachedParquetFileReaderFactory, ParquetFileReaderFactory, ParquetRowSelection,
};
use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderOptions, RowSelection};
use datafusion::parquet::arrow::async_reader::AsyncFileReader;
use datafusion::parquet::errors::Result as ParquetResult;
use datafusion::parquet::file::metadata::{PageIndexPolicy, ParquetMetaData};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use futures_util::future::{BoxFuture, FutureExt};
use sluice_store::{SegmentMeta, StoreView, COL_TIME_NS};

/// Buffered rows per partition of a scan, at least (up to the session's target partitions).
const BUFFER_PARTITION_ROWS_MIN: usize = 16 * 1024;

/// Decides per segment what of it may hold a match (term indexes).
pub type SegmentFilter = Arc<dyn Fn(&SegmentMeta) -> SegmentScan + Send + Sync>;

/// Per bare word or phrase of a search (by its `sluice_words_match` pattern), the string columns
/// of one segment that cannot hold it.
pub type RuledOut = BTreeMap<String, BTreeSet<String>>;

/// What a scan reads of one segment, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub access: SegmentAccess,
    /// Columns left out of the segment's bare-word tests (no value of theirs can match).
    pub ruled_out: RuledOut,
}

impl SegmentScan {
    /// Every row, every column.
    pub fn all() -> SegmentScan {
        SegmentScan { access: SegmentAccess::All, ruled_out: RuledOut::new() }
    }
}

/// What a scan reads of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentAccess {
    /// Nothing: it cannot hold a match.
    Skip,
    /// Every row.
    All,
    /// Only these row ranges (ascending, disjoint, non-empty, within the segment's rows).
    Rows(Vec<Range<u64>>),
}

/// What one query's scans did, shared with the engine that reports it.
#[derive(Debug, Default)]
pub struct ScanCounters {
    pub segments_read: AtomicU64,
    pub segments_skipped: AtomicU64,
    pub buffer_rows: AtomicU64,
    /// (segment, word, column) tests left out because the segment's index ruled them out.
    pub columns_skipped: AtomicU64,
}

/// The URL under which the store's object store is registered in each query's runtime.
pub(crate) fn segments_url() -> ObjectStoreUrl {
    ObjectStoreUrl::parse("sluice://segments").expect("a constant, valid URL")
}

pub struct EventsTable {
    view: StoreView,
    filter: Option<SegmentFilter>,
    counters: Arc<ScanCounters>,
}

impl fmt::Debug for EventsTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsTable")
            .field("segments", &self.view.segments.len())
            .field("buffered_batches", &self.view.buffered.len())
            .finish()
    }
}

impl EventsTable {
    pub fn new(view: StoreView, filter: Option<SegmentFilter>, counters: Arc<ScanCounters>) -> EventsTable {
        EventsTable { view, filter, counters }
    }
}

/// The `[min, max]` range of `time_ns` that `filters` (ANDed) allow, as far as simple comparisons
/// with constants say; anything else leaves the range open.
fn time_range(filters: &[Expr]) -> (u64, u64) {
    let mut lo = 0u64;
    let mut hi = u64::MAX;
    let mut visit = |e: &Expr| {
        if let Expr::BinaryExpr(BinaryExpr { left, op, right }) = e {
            let (op, value) = match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), Expr::Literal(v, _)) if c.name == COL_TIME_NS => (*op, v),
                (Expr::Literal(v, _), Expr::Column(c)) if c.name == COL_TIME_NS => match op.swap() {
                    Some(op) => (op, v),
                    None => return,
                },
                _ => return,
            };
            let Some(n) = as_u64(value) else { return };
            match op {
                Operator::Gt => lo = lo.max(n.saturating_add(1)),
                Operator::GtEq => lo = lo.max(n),
                Operator::Lt => hi = hi.min(n.saturating_sub(1)),
                Operator::LtEq => hi = hi.min(n),
                Operator::Eq => {
                    lo = lo.max(n);
                    hi = hi.min(n);
                }
                _ => {}
            }
        }
    };
    for f in filters {
        for part in split_and(f) {
            visit(part);
        }
    }
    (lo, hi)
}

fn split_and(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
            let mut v = split_and(left);
            v.extend(split_and(right));
            v
        }
        other => vec![other],
    }
}

fn as_u64(v: &ScalarValue) -> Option<u64> {
    match v {
        ScalarValue::UInt64(Some(n)) => Some(*n),
        ScalarValue::UInt32(Some(n)) => Some(u64::from(*n)),
        ScalarValue::Int64(Some(n)) => Some((*n).max(0) as u64),
        ScalarValue::Int32(Some(n)) => Some((*n).max(0) as u64),
        _ => None,
    }
}

#[async_trait]
impl TableProvider for EventsTable {
    fn schema(&self) -> SchemaRef {
        self.view.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only; DataFusion still applies every filter to the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = self.view.schema.clone();
        let (lo, hi) = time_range(filters);
        // Segments by the columns their bare-word tests leave out: one Parquet scan each.
        let mut by_ruled_out: BTreeMap<RuledOut, Vec<PartitionedFile>> = BTreeMap::new();
        let (mut read, mut skipped, mut columns_skipped) = (0u64, 0u64, 0u64);
        for seg in &self.view.segments {
            let in_time = seg.time_ns_max >= lo && seg.time_ns_min <= hi;
            let scan = match &self.filter {
                _ if !in_time => SegmentScan { access: SegmentAccess::Skip, ruled_out: RuledOut::new() },
                Some(f) => f(seg),
                None => SegmentScan::all(),
            };
            let file = PartitionedFile::new(seg.path.clone(), seg.bytes);
            let file = match scan.access {
                SegmentAccess::Skip => {
                    skipped += 1;
                    continue;
                }
                SegmentAccess::All => file,
                SegmentAccess::Rows(ranges) => {
                    let ranges = ranges.into_iter().map(|r| r.start as usize..r.end as usize);
                    let selection = RowSelection::from_consecutive_ranges(ranges, seg.rows as usize);
                    file.with_extension(ParquetRowSelection::new(selection))
                }
            };
            read += 1;
            columns_skipped += scan.ruled_out.values().map(|c| c.len() as u64).sum::<u64>();
            by_ruled_out.entry(scan.ruled_out).or_default().push(file);
        }
        self.counters.segments_read.fetch_add(read, Ordering::Relaxed);
        self.counters.segments_skipped.fetch_add(skipped, Ordering::Relaxed);
        self.counters.columns_skipped.fetch_add(columns_skipped, Ordering::Relaxed);

        let mut inputs: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        for (ruled_out, files) in by_ruled_out {
            let partitions = state.config().target_partitions().max(1);
            let mut groups: Vec<Vec<PartitionedFile>> = vec![Vec::new(); partitions.min(files.len())];
            let n = groups.len();
            for (i, f) in files.into_iter().enumerate() {
                groups[i % n].push(f);
            }
            // No predicate here: the filters are Inexact, so DataFusion keeps them in a filter
            // above this scan and its physical filter pushdown hands them to the Parquet source
            // (for row-group and page pruning, and row filtering). Setting them here as well
            // made every pushed row filter run twice.
            // Footers and page indexes come from the engine's cache (segments are immutable).
            let runtime = state.runtime_env();
            let readers = SegmentReaders(CachedParquetFileReaderFactory::new(
                runtime.object_store(segments_url())?,
                runtime.cache_manager.get_file_metadata_cache(),
            ));
            let source = ParquetSource::new(schema.clone())
                .with_table_parquet_options(state.table_options().parquet.clone())
                .with_parquet_file_reader_factory(Arc::new(readers));
            let mut config = FileScanConfigBuilder::new(segments_url(), Arc::new(source))
                .with_file_groups(groups.into_iter().map(FileGroup::new).collect())
                .with_projection_indices(projection.cloned())?
                .with_limit(limit);
            if !ruled_out.is_empty() {
                config = config.with_expr_adapter(Some(Arc::new(NarrowWords(Arc::new(ruled_out)))));
            }
            inputs.push(DataSourceExec::from_data_source(config.build()));
        }
        let buffered: Vec<_> = self.view.buffered.iter().filter(|b| b.num_rows() > 0).cloned().collect();
        if !buffered.is_empty() {
            let rows: usize = buffered.iter().map(|b| b.num_rows()).sum();
            self.counters.buffer_rows.fetch_add(rows as u64, Ordering::Relaxed);
            // A partition per batch would spread a small buffer (many small batches: one per
            // shape and freeze) over partitions that cost more than they give.
            let partitions = state.config().target_partitions().clamp(1, rows.div_ceil(BUFFER_PARTITION_ROWS_MIN));
            let mut parts: Vec<Vec<_>> = vec![Vec::new(); partitions];
            for (i, b) in buffered.into_iter().enumerate() {
                parts[i % partitions].push(b);
            }
            let mem = MemorySourceConfig::try_new(&parts, schema.clone(), projection.cloned())?.with_limit(limit);
            inputs.push(DataSourceExec::from_data_source(mem));
        }
        if inputs.is_empty() {
            let projected = match projection {
                Some(p) => Arc::new(schema.project(p)?),
                None => schema,
            };
            return Ok(Arc::new(EmptyExec::new(projected)));
        }
        UnionExec::try_new(inputs)
    }
}

/// Adapts the pushed-down predicate to each segment file of one scan (DataFusion's default
/// adapter: columns to the file's, missing columns to NULL) and then leaves the ruled-out columns
/// out of every `sluice_words_match(pattern, value, …)` call whose pattern they are ruled out for
/// (a call left with no value is FALSE). Exact: a ruled-out column holds no value that could
/// match in these files (their term index says so, and an index never misses a token), so the
/// call's answer is the same for every row; only the columns it decodes change.
#[derive(Debug)]
struct NarrowWords(Arc<RuledOut>);

impl PhysicalExprAdapterFactory for NarrowWords {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> DfResult<Arc<dyn PhysicalExprAdapter>> {
        let inner = DefaultPhysicalExprAdapterFactory.create(logical_file_schema, physical_file_schema)?;
        Ok(Arc::new(NarrowWordsAdapter { inner, ruled_out: self.0.clone() }))
    }
}

#[derive(Debug)]
struct NarrowWordsAdapter {
    inner: Arc<dyn PhysicalExprAdapter>,
    ruled_out: Arc<RuledOut>,
}

impl PhysicalExprAdapter for NarrowWordsAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> DfResult<Arc<dyn PhysicalExpr>> {
        let expr = self.inner.rewrite(expr)?;
        narrow_words(expr, &self.ruled_out)
    }
}

/// `expr` with the ruled-out columns left out of its `sluice_words_match` calls.
fn narrow_words(expr: Arc<dyn PhysicalExpr>, ruled_out: &RuledOut) -> DfResult<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|e| {
        let Some(call) = e.downcast_ref::<ScalarFunctionExpr>() else { return Ok(Transformed::no(e)) };
        if call.name() != crate::words::WORDS_MATCH {
            return Ok(Transformed::no(e));
        }
        let Some((pattern, values)) = call.args().split_first() else { return Ok(Transformed::no(e)) };
        let Some(columns) = pattern
            .downcast_ref::<Literal>()
            .and_then(|l| l.value().try_as_str().flatten())
            .and_then(|p| ruled_out.get(p))
        else {
            return Ok(Transformed::no(e));
        };
        let is_ruled_out =
            |v: &Arc<dyn PhysicalExpr>| v.downcast_ref::<Column>().is_some_and(|c| columns.contains(c.name()));
        if !values.iter().any(is_ruled_out) {
            return Ok(Transformed::no(e));
        }
        let kept: Vec<_> = values.iter().filter(|v| !is_ruled_out(v)).cloned().collect();
        if kept.is_empty() {
            let no: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Boolean(Some(false))));
            return Ok(Transformed::yes(no));
        }
        let mut args = vec![pattern.clone()];
        args.extend(kept);
        Ok(Transformed::yes(e.clone().with_new_children(args)?))
    })
    .data()
}

/// Readers of segment files whose metadata always comes with the page index, so that the
/// engine's metadata cache holds footer and page index together. DataFusion's Parquet opener asks
/// for the footer alone and loads the page index afterwards, outside the cache, when a predicate
/// can use it: every needle query then read and parsed the page index of every segment it opened
/// again (400–900 KB a segment of a million rows, about 6.7 MB of a 14-segment needle's 11 MB).
#[derive(Debug)]
struct SegmentReaders(CachedParquetFileReaderFactory);

impl ParquetFileReaderFactory for SegmentReaders {
    fn create_reader(
        &self,
        partition_index: usize,
        file: PartitionedFile,
        metadata_size_hint: Option<usize>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> DfResult<Box<dyn AsyncFileReader + Send>> {
        let inner = self.0.create_reader(partition_index, file, metadata_size_hint, metrics)?;
        Ok(Box::new(WithPageIndex(inner)))
    }
}

struct WithPageIndex(Box<dyn AsyncFileReader + Send>);

impl AsyncFileReader for WithPageIndex {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, ParquetResult<bytes::Bytes>> {
        self.0.get_bytes(range)
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, ParquetResult<Vec<bytes::Bytes>>> {
        self.0.get_byte_ranges(ranges)
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, ParquetResult<Arc<ParquetMetaData>>> {
        // Optional, not Required: a segment written without one is still read.
        let options = options.cloned().unwrap_or_default().with_page_index_policy(PageIndexPolicy::Optional);
        async move { self.0.get_metadata(Some(&options)).await }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn time_range_reads_simple_bounds_only() {
        let f = vec![col("time_ns").gt_eq(lit(10u64)).and(col("time_ns").lt(lit(20i64))), col("x").eq(lit(1u64))];
        assert_eq!(time_range(&f), (10, 19));
        assert_eq!(time_range(&[lit(5u64).lt(col("time_ns"))]), (6, u64::MAX));
        assert_eq!(time_range(&[col("time_ns").gt(lit(5u64)).or(col("time_ns").lt(lit(2u64)))]), (0, u64::MAX));
    }
}
