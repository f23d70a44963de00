//! Segments: cutting buffered or compacted rows into hourly partitions of event time, sorting
//! them by source, shape and time, and writing and reading the Parquet files through `object_store`.
//!
//! It does not decide which rows to write or when (flush and compaction do), and never touches
//! the manifest.
//!
//! # Layout
//!
//! `segments/sluice_date=YYYY-MM-DD/sluice_hour=HH/seg-NNNNNNNNNNNN.parquet`: Hive-style, UTC,
//! by the hour of `time_ns` (but a flush writes at most [`FLUSH_PARTITIONS_MAX`] hours: past
//! that, the rows of its least populated hours are filed under the hour they were received, see
//! [`bound_partitions`]); `N` is the manifest's segment counter. Each file is plain Parquet
//! (zstd but for `sluice_id` and `time_ns`, which it cannot shrink; dictionary-encoded strings,
//! page statistics, rows sorted by `sluice_source`, then shape (the set of keys a row has a value
//! for, see `sorted_partitions`), then `time_ns`; the source is declared in the file's sorting
//! columns) with the columns of
//! [`crate::FIXED_COLUMNS`] and then the key columns that have a value in the segment, in registry
//! order. `time_ns`, `sluice_received_ns` and `sluice_seq` are delta-encoded; `sluice_id` is plain
//! (it is random) and has no statistics; a string column whose values hardly repeat is plain too
//! (judged once per flush from the buffered rows; a compaction keeps what most of its rows had).
//! Beside each
//! file, `seg-NNNNNNNNNNNN.terms` is its term index (see [`crate::terms`]), written just before it.
//! On the local file system a segment is written straight to `seg-NNNNNNNNNNNN.parquet.partial`,
//! fsynced, and renamed once its term index is durable; through another object store it is put
//! whole.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{make_array, new_null_array, RecordBatch, RecordBatchOptions, UInt64Array};
use arrow_data::transform::{Capacities, MutableArrayData};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Schema, SchemaRef};
use bytes::Bytes;
use object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::buffer::{
    align, shape_bits, FxBuild, COL_ID, COL_RECEIVED_NS, COL_SEQ, COL_SOURCE, COL_TIME_NS, FIXED_COLUMNS,
};
use crate::manifest::SegmentMeta;
use crate::runtime::block_on;
use crate::terms::{terms_path, TermsBuilder, BLOCK_ROWS};

/// Directory of the segments under the data directory.
pub const SEGMENTS_DIR: &str = "segments";
/// Rows per Parquet row group: small enough for row-group pruning by time, large enough for
/// good compression.
pub const ROW_GROUP_ROWS_MAX: usize = 128 * 1024;
/// Values of a string column looked at to decide whether it gets a dictionary.
const DICTIONARY_SAMPLE_VALUES: usize = 4096;
/// Fewer values than this: the column gets a dictionary.
const DICTIONARY_SAMPLE_VALUES_MIN: usize = 256;
/// A column whose sampled values are at least this share (numerator, denominator) distinct is
/// written without a dictionary. A query that needs a few rows of a row group (a needle) must
/// decompress the whole dictionary page of every dictionary column it reads there, so a large
/// dictionary costs every needle; below half distinct, a dictionary saves enough bytes to be worth
/// it. Measured on 1,000,000 generated events (`cargo bench -p sluice-store --bench ingest`): at 50%
/// (urls, client addresses and user ids go plain) the dictionary pages of a row group shrink from
/// 483 KB to 15 KB (compressed) for +1.3 bytes per event on disk, against 90% before.
const DISTINCT_PERCENT_NO_DICTIONARY_MIN: (usize, usize) = (50, 100);
/// Rows per data page: a needle decompresses one page per column for each matching row, so pages
/// are a fraction of a term-index block ([`BLOCK_ROWS`], a multiple of this, so a skipped block is
/// still whole pages never read). Measured on the segments of 1,000,000 generated events: one
/// matching row's pages cost 282 KB compressed at 8,192 rows, 165 KB at 4,096 and 99 KB at
/// 2,048, for +1.0 and +2.6 bytes per event on disk.
pub const PAGE_ROWS: usize = 2048;
/// Rows gathered into one Arrow batch at a time while writing, bounding the extra memory.
const WRITE_SLICE_ROWS: usize = 64 * 1024;
/// Bytes per row reserved for a flushed segment's file when it is held in memory (an object store
/// other than the local file system; segments of generated events take about 40). Only the bytes
/// written are ever touched: reserving more costs address space, not memory, and saves the copies
/// and fresh pages of growing a buffer of tens of MB by doubling.
const FLUSH_ROW_BYTES_RESERVED: usize = 256;
/// Bytes a segment written to a local file collects before each `write` (the Parquet writer's own
/// buffer is 8 KiB; most pages are larger and would each be a system call).
const FILE_BUFFER_BYTES: usize = 1024 * 1024;
/// Suffix of a segment file being written to the local file system, until it is renamed to its
/// name. Not listed by any manifest, so a crash's leftover is deleted at the next start.
const PARTIAL_SUFFIX: &str = ".partial";
const NS_PER_HOUR: u64 = 3_600_000_000_000;
/// Positions of `time_ns` and `sluice_source` among the fixed columns, which every segment
/// begins with.
const TIME_NS_INDEX: i32 = 0;
const SOURCE_INDEX: i32 = 1;
const _: () = assert!(matches!(FIXED_COLUMNS[0].as_bytes(), b"time_ns"));
const _: () = assert!(matches!(FIXED_COLUMNS[1].as_bytes(), b"sluice_source"));
const _: () = assert!((BLOCK_ROWS as usize).is_multiple_of(PAGE_ROWS));

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("segment {path}: {reason}")]
    Parquet { path: String, reason: String },
    #[error("segment {path}: {source}; check the data directory (or object store) is writable")]
    Store { path: String, source: object_store::Error },
    #[error("segment {path}: {source}; check the data directory is writable")]
    Io { path: String, source: std::io::Error },
}

/// The hour partition of an event time.
pub fn partition_hour(time_ns: u64) -> u64 {
    time_ns / NS_PER_HOUR
}

/// `sluice_date=YYYY-MM-DD/sluice_hour=HH` of an hour partition (UTC, proleptic Gregorian).
pub fn partition_dir(hour: u64) -> String {
    let days = (hour / 24) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("sluice_date={y:04}-{m:02}-{d:02}/sluice_hour={:02}", hour % 24)
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Relative path of a new segment.
pub fn segment_path(hour: u64, counter: u64) -> String {
    format!("{SEGMENTS_DIR}/{}/seg-{counter:012}.parquet", partition_dir(hour))
}

/// The writer's settings for a segment of `schema`; `plain` names the string columns written
/// without a dictionary ([`plain_columns`]).
fn properties(schema: &Schema, plain: &HashSet<String>, zstd_level: i32) -> WriterProperties {
    let level = ZstdLevel::try_new(zstd_level).unwrap_or_default();
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_dictionary_enabled(true)
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
        // Pages end on the term index's block boundaries, so a block a needle query skips is
        // pages it never decompresses.
        .set_data_page_row_count_limit(PAGE_ROWS)
        // Then by shape and time (see `sorted_partitions`): a shape is not a column, so only the
        // source is declared.
        .set_sorting_columns(Some(vec![SortingColumn {
            column_idx: SOURCE_INDEX,
            descending: false,
            nulls_first: false,
        }]));
    // Within a source's run the seqs rise (jumping where a chunk fetched later begins): small deltas.
    for name in [COL_TIME_NS, COL_RECEIVED_NS, COL_SEQ] {
        let path = ColumnPath::from(name);
        b = b
            .set_column_dictionary_enabled(path.clone(), false)
            .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
    }
    // Random ids: a dictionary never pays, and min/max per page prune nothing (every page spans
    // nearly the whole range) while costing a comparison per value.
    b = b
        .set_column_dictionary_enabled(ColumnPath::from(COL_ID), false)
        .set_column_statistics_enabled(ColumnPath::from(COL_ID), EnabledStatistics::None);
    // Bytes zstd cannot shrink, so compressing them is time for nothing: random ids, and the
    // delta-packed nanosecond times, whose low bits are noise (in `cargo bench -p sluice-store
    // --bench ingest` both came out of zstd 0.03% and 0.15% larger than they went in).
    for name in [COL_ID, COL_TIME_NS] {
        b = b.set_column_compression(ColumnPath::from(name), Compression::UNCOMPRESSED);
    }
    // A string column whose values hardly repeat (message texts, item ids) gains nothing from a
    // dictionary: the writer would intern every value, then give up at the page-size limit.
    for field in schema.fields() {
        if field.data_type() == &DataType::Utf8 && plain.contains(field.name()) {
            b = b.set_column_dictionary_enabled(ColumnPath::from(field.name().as_str()), false);
        }
    }
    b.build()
}

/// The string columns of `batches` whose values are mostly distinct ([`mostly_distinct`]): judged
/// once for all the segments of a flush, from the rows in buffer order (sorted rows would show
/// only the first source's first kind of event). A compaction inherits its inputs' choice.
fn plain_columns(batches: &[&RecordBatch]) -> HashSet<String> {
    let names: HashSet<&str, FxBuild> = batches
        .iter()
        .flat_map(|b| b.schema_ref().fields().iter())
        .filter(|f| f.data_type() == &DataType::Utf8)
        .map(|f| f.name().as_str())
        .collect();
    names.into_iter().filter(|n| mostly_distinct(batches, n)).map(str::to_owned).collect()
}

/// Whether the non-null values of string column `name` of `batches` (those that have it) are
/// mostly distinct, judged from the first [`DICTIONARY_SAMPLE_VALUES`] of them.
fn mostly_distinct(batches: &[&RecordBatch], name: &str) -> bool {
    let mut seen: HashSet<&str, FxBuild> = HashSet::default();
    let mut values = 0usize;
    'batches: for batch in batches {
        let Some(column) = batch.column_by_name(name) else { continue };
        let Some(strings) = column.as_string_opt::<i32>() else { return false };
        for v in strings.iter().flatten() {
            seen.insert(v);
            values += 1;
            if values >= DICTIONARY_SAMPLE_VALUES {
                break 'batches;
            }
        }
    }
    // Too few values to tell: a dictionary costs little then.
    values >= DICTIONARY_SAMPLE_VALUES_MIN
        && seen.len() * DISTINCT_PERCENT_NO_DICTIONARY_MIN.1 > values * DISTINCT_PERCENT_NO_DICTIONARY_MIN.0
}

/// The shape of each row of `batch` (its columns after the fixed ones are key columns): the XOR
/// of [`shape_bits`] over the key columns that hold a value in the row, as the buffer computes it
/// for the line. A batch of the buffer holds one shape; a segment's batch holds runs of them.
fn row_shapes(batch: &RecordBatch) -> Vec<u64> {
    let mut shapes = vec![0u64; batch.num_rows()];
    let schema = batch.schema();
    for (field, column) in schema.fields().iter().zip(batch.columns()).skip(FIXED_COLUMNS.len()) {
        let bits = shape_bits(field.name());
        match column.logical_nulls() {
            None => shapes.iter_mut().for_each(|s| *s ^= bits),
            Some(nulls) if nulls.null_count() == nulls.len() => {}
            Some(nulls) => nulls.valid_indices().for_each(|r| shapes[r] ^= bits),
        }
    }
    shapes
}

/// Rows to write: `batches` all have `schema`. Cut by hour (at most [`FLUSH_PARTITIONS_MAX`]
/// partitions, see [`bound_partitions`]), and within an hour sorted by (`sluice_source`, shape,
/// `time_ns`, position). Returns, per partition hour in ascending order, the (batch, row) indices
/// of its rows in order.
///
/// Source first: each source's rows are then one run, in which the columns the store adds
/// (source, stream, receive time, sequence number) hardly change from row to row and compress to
/// almost nothing (47.1 → 43.2 bytes an event in `bench/ingest.py`), and a filter on the source
/// prunes pages. The shape (which keys a row has, [`row_shapes`]) next: each kind of event is then
/// a run too, in which its columns have no nulls and every other key column is only nulls, pages
/// the writer encodes as a run of one level instead of a level per row. Time order within the
/// run keeps page statistics on `time_ns` narrow.
fn sorted_partitions(batches: &[&RecordBatch]) -> Vec<(u64, Vec<(usize, usize)>)> {
    // Rank of each source name, in name order; looked up only where the name changes (rows of a
    // commit come in runs of one source).
    let sources: Vec<&arrow_array::StringArray> =
        batches.iter().map(|b| b.column_by_name(COL_SOURCE).expect("fixed column").as_string::<i32>()).collect();
    let mut names: BTreeMap<&str, u32> = BTreeMap::new();
    for col in &sources {
        let mut last: Option<&str> = None;
        for v in col.iter() {
            let v = v.unwrap_or_default();
            if last != Some(v) {
                names.insert(v, 0);
                last = Some(v);
            }
        }
    }
    for (rank, r) in names.values_mut().enumerate() {
        *r = rank as u32;
    }
    // Each row's (hour, source rank, shape) becomes a group number that sorts as they do, so
    // that rows are bucketed by group and only 16-byte keys (time_ns, row number) are sorted:
    // groups change only between runs of rows, so they are looked up once a run. Row numbers fit
    // in 32 bits: a flush holds at most `buffer_rows_max` (≤ 100,000,000) rows and one commit.
    let rows_total: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut groups: HashMap<(u64, u32, u64), u32, FxBuild> = HashMap::default();
    let mut row_groups: Vec<u32> = Vec::with_capacity(rows_total);
    for (bi, b) in batches.iter().enumerate() {
        let t = b.column(0).as_primitive::<UInt64Type>();
        let shapes = row_shapes(b);
        let mut last: Option<(&str, u32)> = None;
        let mut last_group: Option<((u64, u32, u64), u32)> = None;
        for ((v, src), shape) in t.values().iter().zip(sources[bi].iter()).zip(shapes) {
            let src = src.unwrap_or_default();
            let rank = match last {
                Some((name, rank)) if name == src => rank,
                _ => {
                    let rank = names[src];
                    last = Some((src, rank));
                    rank
                }
            };
            let key = (partition_hour(*v), rank, shape);
            let group = match last_group {
                Some((k, g)) if k == key => g,
                _ => {
                    let next = groups.len() as u32;
                    let g = *groups.entry(key).or_insert(next);
                    last_group = Some((key, g));
                    g
                }
            };
            row_groups.push(group);
        }
    }
    let mut keys: Vec<((u64, u32, u64), u32)> = groups.into_iter().collect();
    let mut group_rows = vec![0usize; keys.len()];
    for &g in &row_groups {
        group_rows[g as usize] += 1;
    }
    bound_partitions(&mut keys, &group_rows, || received_hour(batches));
    // Renumber the groups in key order; groups whose rows were moved to another hour may now share
    // a key, and become one.
    keys.sort_unstable();
    let mut rank_of = vec![0u32; keys.len()];
    let mut distinct: Vec<(u64, u32, u64)> = Vec::with_capacity(keys.len());
    for (key, g) in &keys {
        if distinct.last() != Some(key) {
            distinct.push(*key);
        }
        rank_of[*g as usize] = (distinct.len() - 1) as u32;
    }
    let keys = distinct;
    // Rows are bucketed by group (a counting sort), then each group is sorted by (time, row
    // number). A group's rows arrive as rising runs (a commit's lines of one source, in time
    // order), which the run-aware stable sort merges rather than sorts afresh.
    let mut bounds = vec![0usize; keys.len() + 1];
    for &g in &row_groups {
        bounds[rank_of[g as usize] as usize + 1] += 1;
    }
    for g in 0..keys.len() {
        bounds[g + 1] += bounds[g];
    }
    let mut fill = bounds.clone();
    let mut order: Vec<u128> = vec![0; rows_total];
    let mut starts = Vec::with_capacity(batches.len());
    for b in batches {
        let first = starts.last().map_or(0, |&(s, n): &(usize, usize)| s + n);
        starts.push((first, b.num_rows()));
        let t = b.column(0).as_primitive::<UInt64Type>();
        for (i, v) in t.values().iter().enumerate() {
            let row = first + i;
            let at = &mut fill[rank_of[row_groups[row] as usize] as usize];
            order[*at] = (u128::from(*v) << 32) | row as u128;
            *at += 1;
        }
    }
    drop(row_groups);
    // Row number → (batch, row): rows are numbered batch after batch.
    let batch_of: Vec<u32> =
        starts.iter().enumerate().flat_map(|(bi, &(_, n))| std::iter::repeat_n(bi as u32, n)).collect();
    let mut out: Vec<(u64, Vec<(usize, usize)>)> = Vec::new();
    for (g, (hour, _, _)) in keys.iter().enumerate() {
        let group = &mut order[bounds[g]..bounds[g + 1]];
        group.sort();
        if out.last().is_none_or(|(h, _)| h != hour) {
            // The rows of every group of this hour.
            let end = keys[g..].iter().take_while(|k| k.0 == *hour).count() + g;
            out.push((*hour, Vec::with_capacity(bounds[end] - bounds[g])));
        }
        let rows = &mut out.last_mut().expect("pushed above").1;
        rows.extend(group.iter().map(|&key| {
            let row = (key & u128::from(u32::MAX)) as usize;
            let bi = batch_of[row] as usize;
            (bi, row - starts[bi].0)
        }));
    }
    out
}

/// Most hour partitions one flush writes (one segment each).
pub const FLUSH_PARTITIONS_MAX: usize = 64;

/// The hour the last of `batches`' rows was received.
fn received_hour(batches: &[&RecordBatch]) -> u64 {
    let latest = batches
        .iter()
        .filter_map(|b| b.column_by_name(COL_RECEIVED_NS)?.as_primitive::<UInt64Type>().values().iter().max().copied())
        .max();
    partition_hour(latest.unwrap_or(0))
}

/// Bounds the partitions of one flush: when the groups (`(hour, source, shape)` keys, with their
/// row counts in `group_rows`) fall in more than [`FLUSH_PARTITIONS_MAX`] hours, the hours with the
/// most rows (the later of equals) keep theirs, and the rows of the others are filed under the
/// hour `spill` gives, the one they were received in (asked only then). Their `time_ns` stays as it is, and queries prune by each segment's
/// range of `time_ns` (in the manifest), never by its path, so they are found all the same. A
/// backlog or an import spans a few hours per flush and keeps every one; a source with a broken
/// clock does not: 20,000 events with random times made 19,748 segments of 15 KB each (298 MB on
/// disk for 1 MB of events) in a flush of more than a minute; bounded, 63 segments (0.73 MB) in
/// under a second.
fn bound_partitions(keys: &mut [((u64, u32, u64), u32)], group_rows: &[usize], spill: impl FnOnce() -> u64) {
    let mut per_hour: HashMap<u64, usize, FxBuild> = HashMap::default();
    for ((hour, _, _), g) in keys.iter() {
        *per_hour.entry(*hour).or_default() += group_rows[*g as usize];
    }
    if per_hour.len() <= FLUSH_PARTITIONS_MAX {
        return;
    }
    let mut hours: Vec<(usize, u64)> = per_hour.into_iter().map(|(h, n)| (n, h)).collect();
    hours.sort_unstable_by(|a, b| b.cmp(a));
    // One place is left for the spill hour, unless it is among those kept anyway.
    let spill = spill();
    let kept: HashSet<u64, FxBuild> = hours.iter().take(FLUSH_PARTITIONS_MAX - 1).map(|&(_, h)| h).collect();
    for ((hour, _, _), _) in keys.iter_mut() {
        if !kept.contains(hour) {
            *hour = spill;
        }
    }
}

/// The rows `rows` (batch, row) of `batches` (all of one schema), in that order, as one batch.
///
/// Sorted rows come in runs of consecutive rows of one batch (a commit's lines of one source, in
/// time order), so each column is built by copying whole runs (`MutableArrayData::try_extend`:
/// one offset rebase and one copy of the values per run) rather than picking row by row as
/// `interleave` does: 9% less store CPU in `bench/ingest.py` (BENCHMARKS.md, ingest "J"). No
/// slice arrays are made, so a run costs a few calls per column whatever its length.
fn gather(batches: &[&RecordBatch], rows: &[(usize, usize)]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for &(b, r) in rows {
        match runs.last_mut() {
            Some((rb, _, end)) if *rb == b && *end == r => *end += 1,
            _ => runs.push((b, r, r + 1)),
        }
    }
    // Only the batches the rows come from take part (a buffer holds hundreds of small batches, one
    // per shape and freeze, and a slice of sorted rows comes from a few of them).
    let mut used: Vec<usize> = runs.iter().map(|r| r.0).collect();
    used.sort_unstable();
    used.dedup();
    let mut local = vec![usize::MAX; batches.len()];
    for (i, &b) in used.iter().enumerate() {
        local[b] = i;
    }
    for run in &mut runs {
        run.0 = local[run.0];
    }
    let batches: Vec<&RecordBatch> = used.iter().map(|&b| batches[b]).collect();
    let schema = batches[0].schema();
    let mut columns = Vec::with_capacity(schema.fields().len());
    for c in 0..schema.fields().len() {
        // The key columns of the other shapes: nulls only, made at once.
        if batches.iter().all(|b| b.column(c).null_count() == b.column(c).len()) {
            columns.push(new_null_array(schema.field(c).data_type(), rows.len()));
            continue;
        }
        let data: Vec<ArrayData> = batches.iter().map(|b| b.column(c).to_data()).collect();
        let refs: Vec<&ArrayData> = data.iter().collect();
        let capacities = match schema.field(c).data_type() {
            DataType::Utf8 => {
                let offsets: Vec<&[i32]> =
                    batches.iter().map(|b| b.column(c).as_string::<i32>().value_offsets()).collect();
                let bytes: usize =
                    runs.iter().map(|&(b, start, end)| (offsets[b][end] - offsets[b][start]) as usize).sum();
                Capacities::Binary(rows.len(), Some(bytes))
            }
            _ => Capacities::Array(rows.len()),
        };
        let mut out = MutableArrayData::with_capacities(refs, false, capacities);
        for &(b, start, end) in &runs {
            out.try_extend(b, start, end)?;
        }
        columns.push(make_array(out.freeze()));
    }
    RecordBatch::try_new_with_options(schema, columns, &RecordBatchOptions::new().with_row_count(Some(rows.len())))
}

/// Write `batches` (any schemas whose columns are in `full`) as one segment per hour partition.
/// `next_counter` names the files and is advanced. Each file is put through `store`, then (for
/// the local file system under `local_root`) fsynced, so that the manifest that lists it can
/// never outlive it.
pub fn write_segments(
    store: &dyn ObjectStore,
    local_root: Option<&Path>,
    batches: &[RecordBatch],
    full: &SchemaRef,
    next_counter: &mut u64,
    zstd_level: i32,
) -> Result<Vec<SegmentMeta>, SegmentError> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    // The columns of `full` (by index) that each batch has with at least one value.
    let index: HashMap<&str, usize, FxBuild> =
        full.fields().iter().enumerate().map(|(i, f)| (f.name().as_str(), i)).collect();
    let has_values: Vec<Vec<usize>> = batches
        .iter()
        .map(|b| {
            let schema = b.schema();
            let names = schema.fields().iter().map(|f| f.name().as_str());
            names
                .zip(b.columns())
                .filter(|(_, c)| c.null_count() < c.len())
                .filter_map(|(n, _)| index.get(n).copied())
                .collect()
        })
        .collect();
    let plain = plain_columns(&batches);
    let mut metas = Vec::new();
    for (hour, mut rows) in sorted_partitions(&batches) {
        // Only the batches contributing rows to this partition take part, renumbered in order of
        // first use (a buffer holds hundreds of batches, an hour of a backlog's tail a few of them).
        let mut local = vec![usize::MAX; batches.len()];
        let mut used: Vec<usize> = Vec::new();
        for (bi, _) in rows.iter_mut() {
            if local[*bi] == usize::MAX {
                local[*bi] = used.len();
                used.push(*bi);
            }
            *bi = local[*bi];
        }
        // The fixed columns, and the key columns that have a value in a contributing batch.
        let mut keep = vec![false; full.fields().len()];
        keep[..FIXED_COLUMNS.len()].iter_mut().for_each(|k| *k = true);
        for &b in &used {
            has_values[b].iter().for_each(|&c| keep[c] = true);
        }
        let keep: Vec<usize> = (0..keep.len()).filter(|&c| keep[c]).collect();
        let schema = Arc::new(full.project(&keep).expect("projection indices come from the schema"));
        // Only the columns a batch lacks are made (all null); the others are shared.
        let projected: Vec<RecordBatch> = used.iter().map(|&b| align(batches[b], &schema)).collect();
        *next_counter += 1;
        let path = segment_path(hour, *next_counter);
        let props = properties(&schema, &plain, zstd_level);
        let meta = write_one(store, local_root, &path, hour, &projected, &rows, props)?;
        metas.push(meta);
    }
    Ok(metas)
}

fn write_one(
    store: &dyn ObjectStore,
    local_root: Option<&Path>,
    path: &str,
    hour: u64,
    batches: &[RecordBatch],
    rows: &[(usize, usize)],
    props: WriterProperties,
) -> Result<SegmentMeta, SegmentError> {
    let perr = |e: &dyn std::fmt::Display| SegmentError::Parquet { path: path.to_string(), reason: e.to_string() };
    let schema = batches[0].schema();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let reserve = rows.len().saturating_mul(FLUSH_ROW_BYTES_RESERVED);
    let mut out = SegmentOut::new(local_root, path, &schema, props, reserve)?;
    let col = |b: &RecordBatch, name: &str| -> UInt64Array {
        b.column_by_name(name).expect("fixed column").as_primitive::<UInt64Type>().clone()
    };
    let seqs: Vec<UInt64Array> = batches.iter().map(|b| col(b, COL_SEQ)).collect();
    let recv: Vec<UInt64Array> = batches.iter().map(|b| col(b, COL_RECEIVED_NS)).collect();
    let times: Vec<UInt64Array> = batches.iter().map(|b| col(b, COL_TIME_NS)).collect();
    let mut meta = SegmentMeta {
        path: path.to_string(),
        partition_hour: hour,
        rows: rows.len() as u64,
        bytes: 0,
        terms_bytes: 0,
        data_bytes: 0,
        time_ns_min: u64::MAX,
        time_ns_max: 0,
        seq_min: u64::MAX,
        seq_max: 0,
        received_ns_min: u64::MAX,
        received_ns_max: 0,
    };
    for &(b, r) in rows {
        let (t, s, v) = (times[b].value(r), seqs[b].value(r), recv[b].value(r));
        meta.time_ns_min = meta.time_ns_min.min(t);
        meta.time_ns_max = meta.time_ns_max.max(t);
        meta.seq_min = meta.seq_min.min(s);
        meta.seq_max = meta.seq_max.max(s);
        meta.received_ns_min = meta.received_ns_min.min(v);
        meta.received_ns_max = meta.received_ns_max.max(v);
    }
    for slice in rows.chunks(WRITE_SLICE_ROWS) {
        out.write(&gather(&refs, slice).map_err(|e| perr(&e))?)?;
    }
    (meta.bytes, meta.terms_bytes, meta.data_bytes) = out.finish(store, local_root)?;
    Ok(meta)
}

/// A segment being written: its Parquet writer and its term index.
struct SegmentOut<'a> {
    path: &'a str,
    writer: ArrowWriter<SegmentSink>,
    terms: TermsBuilder,
    /// Arrow memory of the batches written ([`SegmentMeta::data_bytes`]).
    data_bytes: u64,
}

/// Where a segment's bytes go as they are written.
enum SegmentSink {
    /// The local file system: straight into the segment's [`PARTIAL_SUFFIX`] file, renamed to its
    /// name once durable. The file is never held whole in memory, so its bytes are copied once
    /// (into the page cache) rather than into tens of MB of fresh memory first and then the
    /// page cache.
    File(PartialFile),
    /// Any other object store: the whole file in memory, then put at once.
    Memory(Vec<u8>),
}

impl std::io::Write for SegmentSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SegmentSink::File(f) => f.writer().write(buf),
            SegmentSink::Memory(v) => v.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SegmentSink::File(f) => f.writer().flush(),
            SegmentSink::Memory(_) => Ok(()),
        }
    }
}

/// A segment file being written under its [`PARTIAL_SUFFIX`] name, deleted if dropped before
/// [`PartialFile::rename`] (a write that failed leaves nothing behind).
struct PartialFile {
    file: Option<std::io::BufWriter<std::fs::File>>,
    partial: std::path::PathBuf,
    full: std::path::PathBuf,
}

impl PartialFile {
    fn create(full: std::path::PathBuf) -> std::io::Result<PartialFile> {
        let mut partial = full.clone().into_os_string();
        partial.push(PARTIAL_SUFFIX);
        if let Some(parent) = full.parent() {
            create_dirs_durably(parent)?;
        }
        let file = std::fs::File::create(&partial)?;
        Ok(PartialFile {
            file: Some(std::io::BufWriter::with_capacity(FILE_BUFFER_BYTES, file)),
            partial: partial.into(),
            full,
        })
    }

    fn writer(&mut self) -> &mut std::io::BufWriter<std::fs::File> {
        self.file.as_mut().expect("written only before the rename")
    }

    /// Write out and fsync the file; returns its size.
    fn sync(&mut self) -> std::io::Result<u64> {
        let file = self.writer();
        file.flush()?;
        file.get_ref().sync_all()?;
        file.get_ref().metadata().map(|m| m.len())
    }

    /// Rename the (synced) file to its name and fsync the directory.
    fn rename(mut self) -> std::io::Result<()> {
        std::fs::rename(&self.partial, &self.full)?;
        self.file = None;
        match self.full.parent() {
            Some(parent) => std::fs::File::open(parent)?.sync_all(),
            None => Ok(()),
        }
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Best effort: one left behind is deleted at the next start.
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

impl<'a> SegmentOut<'a> {
    /// A writer of the segment at `path`: into a file under `local_root` when the store is the
    /// local file system, else into memory (`reserve` bytes at first).
    fn new(
        local_root: Option<&Path>,
        path: &'a str,
        schema: &SchemaRef,
        props: WriterProperties,
        reserve: usize,
    ) -> Result<SegmentOut<'a>, SegmentError> {
        let sink = match local_root {
            Some(root) => SegmentSink::File(
                PartialFile::create(root.join(path))
                    .map_err(|source| SegmentError::Io { path: path.to_string(), source })?,
            ),
            None => SegmentSink::Memory(Vec::with_capacity(reserve)),
        };
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(props))
            .map_err(|e| SegmentError::Parquet { path: path.to_string(), reason: e.to_string() })?;
        Ok(SegmentOut { path, writer, terms: TermsBuilder::new(), data_bytes: 0 })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<(), SegmentError> {
        self.terms.add_batch(batch);
        self.data_bytes += batch.get_array_memory_size() as u64;
        self.writer
            .write(batch)
            .map_err(|e| SegmentError::Parquet { path: self.path.to_string(), reason: e.to_string() })
    }

    /// Put the term index, then the segment (both durable); returns the sizes of the segment, of
    /// its term index and of its data uncompressed.
    fn finish(self, store: &dyn ObjectStore, local_root: Option<&Path>) -> Result<(u64, u64, u64), SegmentError> {
        let path = self.path;
        let perr =
            |e: parquet::errors::ParquetError| SegmentError::Parquet { path: path.to_string(), reason: e.to_string() };
        let data_bytes = self.data_bytes;
        let sink = self.writer.into_inner().map_err(perr)?;
        // The term index goes first: like the segment, it must be durable before a manifest lists it.
        let terms = self.terms.finish();
        let terms_bytes = terms.len() as u64;
        match sink {
            SegmentSink::Memory(data) => {
                let bytes = data.len() as u64;
                put(store, local_root, &terms_path(path), terms)?;
                put(store, local_root, path, Bytes::from(data))?;
                Ok((bytes, terms_bytes, data_bytes))
            }
            SegmentSink::File(mut file) => {
                let io = |source| SegmentError::Io { path: path.to_string(), source };
                let bytes = file.sync().map_err(io)?;
                put(store, local_root, &terms_path(path), terms)?;
                file.rename().map_err(io)?;
                Ok((bytes, terms_bytes, data_bytes))
            }
        }
    }
}

/// Rows decoded at a time from each input of a compaction, at most: fewer for wide rows, so that
/// one input's batch holds about [`MERGE_READ_BYTES`].
const MERGE_READ_ROWS: usize = 8 * 1024;
const MERGE_READ_BYTES: u64 = 8 << 20;
/// Bytes of data a compaction's output slice holds, about: fewer rows than [`WRITE_SLICE_ROWS`]
/// when they are wide (lines of up to 8 MiB), so that no slice nears Arrow's 2 GiB offsets.
const MERGE_WRITE_BYTES: u64 = 64 << 20;

/// Rows per step for rows of `data_bytes / rows` bytes each, so that a step holds about
/// `bytes_target`, between 16 rows and `rows_max`. Without a known size (a manifest written
/// before sizes were recorded), `rows_max`.
fn rows_per_step(data_bytes: u64, rows: u64, bytes_target: u64, rows_max: usize) -> usize {
    if data_bytes == 0 || rows == 0 {
        return rows_max;
    }
    let row_bytes = (data_bytes / rows).max(1);
    usize::try_from(bytes_target / row_bytes).unwrap_or(usize::MAX).clamp(16, rows_max)
}

/// One input of a compaction: its batches decoded one at a time, and where its next row is.
struct MergeInput {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    path: String,
    /// Index of the current batch in the merge's `loaded`, and the next row in it.
    batch: usize,
    row: usize,
    rows: usize,
    /// The shape of each row of the current batch ([`row_shapes`]).
    shapes: Vec<u64>,
}

/// Merge segments `inputs` (each sorted by source, shape, then time; all of the partition `hour`)
/// into one segment, sorted the same way, with ties in input order. Streams: each input's file is held
/// compressed and decoded [`MERGE_READ_ROWS`] rows at a time, and the output is gathered and
/// written [`WRITE_SLICE_ROWS`] rows at a time (fewer when rows are wide: [`MERGE_READ_BYTES`],
/// [`MERGE_WRITE_BYTES`]), so memory does not grow with the rows merged.
/// `inputs` are the manifest entries of the segments (the output's ranges come from them). Inputs
/// that hold another number of rows than their entries say are an error, and nothing is written.
pub fn merge_segments(
    store: &dyn ObjectStore,
    local_root: Option<&Path>,
    inputs: &[SegmentMeta],
    full: &SchemaRef,
    next_counter: &mut u64,
    zstd_level: i32,
) -> Result<SegmentMeta, SegmentError> {
    let hour = inputs.first().map_or(0, |m| m.partition_hour);
    let mut readers = Vec::with_capacity(inputs.len());
    let mut present = Vec::with_capacity(inputs.len());
    // Per string column, the rows of the inputs written without and with a dictionary.
    let mut written: HashMap<String, (i64, i64), FxBuild> = HashMap::default();
    for m in inputs {
        let perr = |e: &dyn std::fmt::Display| SegmentError::Parquet { path: m.path.clone(), reason: e.to_string() };
        let builder = open_segment(store, &m.path)?;
        for rg in builder.metadata().row_groups() {
            for chunk in rg.columns().iter().filter(|c| c.column_type() == parquet::basic::Type::BYTE_ARRAY) {
                let rows = written.entry(chunk.column_path().string()).or_default();
                match chunk.dictionary_page_offset() {
                    Some(_) => rows.1 += rg.num_rows(),
                    None => rows.0 += rg.num_rows(),
                }
            }
        }
        present.push(builder.schema().clone());
        let batch_rows = rows_per_step(m.data_bytes, m.rows, MERGE_READ_BYTES, MERGE_READ_ROWS);
        readers.push(builder.with_batch_size(batch_rows).build().map_err(|e| perr(&e))?);
    }
    let schema = union_schema(full, &present);
    // Batches read and not yet written out; `None` once released.
    let mut loaded: Vec<Option<RecordBatch>> = Vec::new();
    let mut merge: Vec<MergeInput> = Vec::with_capacity(inputs.len());
    for (reader, m) in readers.into_iter().zip(inputs) {
        merge.push(MergeInput { reader, path: m.path.clone(), batch: usize::MAX, row: 0, rows: 0, shapes: Vec::new() });
    }
    // The first batch of every input.
    for input in &mut merge {
        next_batch(input, &mut loaded, &schema)?;
    }
    *next_counter += 1;
    let path = segment_path(hour, *next_counter);
    let perr = |e: &dyn std::fmt::Display| SegmentError::Parquet { path: path.clone(), reason: e.to_string() };
    // A string column stays plain if most of its rows were written plain: the flushes judged that
    // from their buffers, in arrival order, where the merge's first rows (in source, shape and time
    // order) show only the first source's first kind of event.
    let plain: HashSet<String> =
        written.into_iter().filter(|(_, (plain, dict))| plain > dict).map(|(name, _)| name).collect();
    let props = properties(&schema, &plain, zstd_level);
    // The output is about as large as its inputs.
    let reserve = inputs.iter().map(|m| m.bytes as usize).sum::<usize>();
    let mut out = SegmentOut::new(local_root, &path, &schema, props, reserve + reserve / 8)?;

    // Min-heap of the inputs' next rows by (source, shape, time, input).
    let mut heap = std::collections::BinaryHeap::new();
    for (i, input) in merge.iter().enumerate() {
        if input.rows > 0 {
            let (src, shape, t) = next_key(&loaded, input);
            heap.push(std::cmp::Reverse((src.to_string(), shape, t, i)));
        }
    }
    let slice_rows = rows_per_step(
        inputs.iter().map(|m| m.data_bytes).sum(),
        inputs.iter().map(|m| m.rows).sum(),
        MERGE_WRITE_BYTES,
        WRITE_SLICE_ROWS,
    );
    let mut picked: Vec<(usize, usize)> = Vec::with_capacity(slice_rows);
    let mut rows = 0u64;
    while let Some(std::cmp::Reverse((mut src, _, _, i))) = heap.pop() {
        // Take rows of input i while they sort before every other input's next row.
        loop {
            let input = &mut merge[i];
            picked.push((input.batch, input.row));
            rows += 1;
            input.row += 1;
            if input.row == input.rows && !next_batch(input, &mut loaded, &schema)? {
                break;
            }
            let (next_src, shape, t) = next_key(&loaded, input);
            if next_src != src {
                src.clear();
                src.push_str(next_src);
            }
            if picked.len() == slice_rows {
                write_picked(&mut out, &mut loaded, &mut picked, &merge).map_err(|e| perr(&e))?;
            }
            if heap.peek().is_some_and(|std::cmp::Reverse(top)| (&src, shape, t, i) > (&top.0, top.1, top.2, top.3)) {
                heap.push(std::cmp::Reverse((src, shape, t, i)));
                break;
            }
        }
        if picked.len() >= slice_rows {
            write_picked(&mut out, &mut loaded, &mut picked, &merge).map_err(|e| perr(&e))?;
        }
    }
    if !picked.is_empty() {
        write_picked(&mut out, &mut loaded, &mut picked, &merge).map_err(|e| perr(&e))?;
    }
    let expected: u64 = inputs.iter().map(|m| m.rows).sum();
    if rows != expected {
        return Err(SegmentError::Parquet {
            path: path.clone(),
            reason: format!("compaction read {rows} rows from inputs whose manifest entries count {expected}"),
        });
    }
    let (bytes, terms_bytes, data_bytes) = out.finish(store, local_root)?;
    let meta = SegmentMeta {
        path: path.clone(),
        partition_hour: hour,
        rows,
        bytes,
        terms_bytes,
        data_bytes,
        time_ns_min: inputs.iter().map(|m| m.time_ns_min).min().unwrap_or(0),
        time_ns_max: inputs.iter().map(|m| m.time_ns_max).max().unwrap_or(0),
        seq_min: inputs.iter().map(|m| m.seq_min).min().unwrap_or(0),
        seq_max: inputs.iter().map(|m| m.seq_max).max().unwrap_or(0),
        received_ns_min: inputs.iter().map(|m| m.received_ns_min).min().unwrap_or(0),
        received_ns_max: inputs.iter().map(|m| m.received_ns_max).max().unwrap_or(0),
    };
    Ok(meta)
}

/// The (source, shape, time) of `input`'s next row.
fn next_key<'a>(loaded: &'a [Option<RecordBatch>], input: &MergeInput) -> (&'a str, u64, u64) {
    let b = loaded[input.batch].as_ref().expect("a current batch is loaded");
    let src = b.column(SOURCE_INDEX as usize).as_string::<i32>().value(input.row);
    let time = b.column(TIME_NS_INDEX as usize).as_primitive::<UInt64Type>().value(input.row);
    (src, input.shapes[input.row], time)
}

/// Load `input`'s next non-empty batch (aligned to `schema`) into `loaded`; false at its end.
fn next_batch(
    input: &mut MergeInput,
    loaded: &mut Vec<Option<RecordBatch>>,
    schema: &SchemaRef,
) -> Result<bool, SegmentError> {
    for b in input.reader.by_ref() {
        let b = b.map_err(|e| SegmentError::Parquet { path: input.path.clone(), reason: e.to_string() })?;
        if b.num_rows() == 0 {
            continue;
        }
        input.rows = b.num_rows();
        input.row = 0;
        input.batch = loaded.len();
        input.shapes = row_shapes(&b);
        loaded.push(Some(align(&b, schema)));
        return Ok(true);
    }
    input.rows = 0;
    input.row = 0;
    Ok(false)
}

/// Gather the `picked` (loaded batch, row) pairs, write them, and release the batches no input is
/// still reading.
fn write_picked(
    out: &mut SegmentOut<'_>,
    loaded: &mut [Option<RecordBatch>],
    picked: &mut Vec<(usize, usize)>,
    merge: &[MergeInput],
) -> Result<(), SegmentError> {
    // The loaded batches the rows come from, numbered in order for `gather`.
    let mut local: BTreeMap<usize, usize> = picked.iter().map(|&(b, _)| (b, 0)).collect();
    for (n, l) in local.values_mut().enumerate() {
        *l = n;
    }
    let refs: Vec<&RecordBatch> =
        local.keys().map(|&g| loaded[g].as_ref().expect("picked rows are of loaded batches")).collect();
    let rows: Vec<(usize, usize)> = picked.iter().map(|&(b, r)| (local[&b], r)).collect();
    let batch = gather(&refs, &rows)
        .map_err(|e| SegmentError::Parquet { path: out.path.to_string(), reason: e.to_string() })?;
    out.write(&batch)?;
    picked.clear();
    let current: HashSet<usize> = merge.iter().filter(|i| i.rows > 0).map(|i| i.batch).collect();
    for (g, _) in local {
        if !current.contains(&g) {
            loaded[g] = None;
        }
    }
    Ok(())
}

/// Put a whole object; on the local file system also fsync it and its directory.
pub fn put(store: &dyn ObjectStore, local_root: Option<&Path>, path: &str, data: Bytes) -> Result<(), SegmentError> {
    if let Some(parent) = local_root.and_then(|root| root.join(path).parent().map(Path::to_path_buf)) {
        create_dirs_durably(&parent).map_err(|source| SegmentError::Io { path: path.to_string(), source })?;
    }
    block_on(store.put(&ObjectPath::from(path), PutPayload::from(data)))
        .map_err(|source| SegmentError::Store { path: path.to_string(), source })?;
    if let Some(root) = local_root {
        let full = root.join(path);
        let ioerr = |source| SegmentError::Io { path: path.to_string(), source };
        std::fs::File::open(&full).and_then(|f| f.sync_all()).map_err(ioerr)?;
        if let Some(parent) = full.parent() {
            std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(ioerr)?;
        }
    }
    Ok(())
}

/// Create `dir` and whichever of its ancestors are missing, each new directory's entry made
/// durable by syncing its parent: a segment the manifest lists must survive a power loss together
/// with the directories (`sluice_date=…/sluice_hour=…`) that lead to it.
pub(crate) fn create_dirs_durably(dir: &Path) -> std::io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        at = d.parent();
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    for d in missing.iter().rev() {
        let parent = match d.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// A reader of a whole segment, its file fetched (compressed) into memory.
fn open_segment(store: &dyn ObjectStore, path: &str) -> Result<ParquetRecordBatchReaderBuilder<Bytes>, SegmentError> {
    let data = block_on(async { store.get(&ObjectPath::from(path)).await?.bytes().await })
        .map_err(|source| SegmentError::Store { path: path.to_string(), source })?;
    ParquetRecordBatchReaderBuilder::try_new(data)
        .map_err(|e| SegmentError::Parquet { path: path.to_string(), reason: e.to_string() })
}

/// Delete a segment and its term index; one already gone is fine (a crash after a delete, before
/// the next step, or a segment written without an index).
pub fn delete(store: &dyn ObjectStore, path: &str) -> Result<(), SegmentError> {
    for path in [path.to_string(), terms_path(path)] {
        match block_on(store.delete(&ObjectPath::from(path.as_str()))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(source) => return Err(SegmentError::Store { path, source }),
        }
    }
    Ok(())
}

/// The full schema with only the key columns that occur in `present`, for a compaction output.
pub fn union_schema(full: &SchemaRef, present: &[SchemaRef]) -> SchemaRef {
    let fields: Vec<_> = full
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, f)| *i < FIXED_COLUMNS.len() || present.iter().any(|s| s.field_with_name(f.name()).is_ok()))
        .map(|(_, f)| f.clone())
        .collect();
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_rows_are_merged_a_few_at_a_time() {
        assert_eq!(rows_per_step(0, 10, MERGE_READ_BYTES, MERGE_READ_ROWS), MERGE_READ_ROWS, "size unknown");
        assert_eq!(rows_per_step(1_000_000, 10_000, MERGE_READ_BYTES, MERGE_READ_ROWS), MERGE_READ_ROWS);
        // Rows of 100 KB: 83 a batch, not 8,192 (800 MB).
        assert_eq!(rows_per_step(100_000_000, 1_000, MERGE_READ_BYTES, MERGE_READ_ROWS), 83);
        // Rows of 8 MiB: never fewer than 16.
        assert_eq!(rows_per_step(8 << 30, 1_024, MERGE_WRITE_BYTES, WRITE_SLICE_ROWS), 16);
    }
    use arrow_array::{ArrayRef, FixedSizeBinaryArray, StringArray};
    use arrow_schema::Field;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// Rows with the fixed columns, a `level` of four values and a `message` unique per row.
    fn rows(n: u64) -> RecordBatch {
        let schema = Arc::new(Schema::new(
            crate::buffer::fixed_fields()
                .into_iter()
                .chain([
                    arrow_schema::Field::new("level", DataType::Utf8, true),
                    arrow_schema::Field::new("message", DataType::Utf8, true),
                ])
                .collect::<Vec<_>>(),
        ));
        let t0 = 1_795_410_000_000_000_000u64;
        let strings = |f: &dyn Fn(u64) -> String| -> ArrayRef {
            Arc::new(StringArray::from((0..n).map(|i| Some(f(i))).collect::<Vec<_>>()))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from((0..n).map(|i| t0 + i).collect::<Vec<_>>())),
            strings(&|i| format!("src-{}", i % 2)),
            strings(&|_| "0".repeat(32)),
            Arc::new(UInt64Array::from(vec![t0; n as usize])),
            Arc::new(FixedSizeBinaryArray::try_from_iter((0..n).map(|i| u128::from(i).to_be_bytes())).unwrap()),
            Arc::new(UInt64Array::from((1..=n).collect::<Vec<_>>())),
            Arc::new(StringArray::from(vec![None::<&str>; n as usize])),
            strings(&|i| ["INFO", "WARN", "ERROR", "DEBUG"][(i % 4) as usize].to_string()),
            strings(&|i| format!("request {i} done")),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    /// `rows(n)` with the times, sources and messages given per row (a `None` message is another
    /// shape).
    fn rows_at(times: &[u64], sources: &[&str], messages: &[Option<&str>]) -> RecordBatch {
        let b = rows(times.len() as u64);
        let mut columns = b.columns().to_vec();
        let schema = b.schema();
        columns[0] = Arc::new(UInt64Array::from(times.to_vec()));
        columns[schema.index_of(COL_SOURCE).unwrap()] = Arc::new(StringArray::from(sources.to_vec()));
        columns[schema.index_of("message").unwrap()] = Arc::new(StringArray::from(messages.to_vec()));
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[test]
    fn flush_order_is_hour_source_shape_time_then_position() {
        let hour = 3_600_000_000_000u64;
        let t = 1_795_410_000_000_000_000u64 / hour * hour;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        // Times from two hours with many ties, three sources, two shapes, over several batches.
        let batches: Vec<RecordBatch> = (0..5)
            .map(|_| {
                let n = 1 + next(300) as usize;
                let times: Vec<u64> = (0..n).map(|_| t + next(2) * hour + next(20)).collect();
                let sources: Vec<&str> = (0..n).map(|_| ["web-2", "web-10", "api"][next(3) as usize]).collect();
                let messages: Vec<Option<&str>> = (0..n).map(|_| (next(2) == 0).then_some("m")).collect();
                rows_at(&times, &sources, &messages)
            })
            .collect();
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        // The reference: every row's full key, sorted.
        let mut want: Vec<(u64, String, u64, u64, usize, usize)> = Vec::new();
        for (bi, b) in batches.iter().enumerate() {
            let shapes = row_shapes(b);
            let times = b.column(0).as_primitive::<UInt64Type>();
            let sources = b.column_by_name(COL_SOURCE).unwrap().as_string::<i32>();
            for (ri, shape) in shapes.into_iter().enumerate() {
                let time = times.value(ri);
                want.push((partition_hour(time), sources.value(ri).to_string(), shape, time, bi, ri));
            }
        }
        want.sort();
        let got: Vec<(u64, usize, usize)> = sorted_partitions(&refs)
            .into_iter()
            .flat_map(|(h, rows)| rows.into_iter().map(move |(b, r)| (h, b, r)))
            .collect();
        let want: Vec<(u64, usize, usize)> = want.into_iter().map(|(h, _, _, _, b, r)| (h, b, r)).collect();
        assert_eq!(got, want);
        let hours: std::collections::BTreeSet<u64> = got.iter().map(|g| g.0).collect();
        assert_eq!(hours.len(), 2, "both hours are there");
    }

    #[test]
    fn a_flush_writes_at_most_the_bounded_number_of_partitions() {
        let hour = NS_PER_HOUR;
        // Every row's receive time in `rows_at`.
        let t0 = 1_795_410_000_000_000_000u64;
        // 30 hours with 50 rows each (a backlog), then 170 hours of one row each (a broken clock).
        let mut times: Vec<u64> = (0..30u64).flat_map(|h| (0..50).map(move |i| t0 - (h + 1) * hour + i)).collect();
        times.extend((0..170u64).map(|i| (i * 97 + 13) * 100 * hour + i));
        let sources: Vec<&str> = (0..times.len()).map(|i| ["web-1", "web-2"][i % 2]).collect();
        let messages: Vec<Option<&str>> = (0..times.len()).map(|i| (i % 3 == 0).then_some("m")).collect();
        let b = rows_at(&times, &sources, &messages);
        let got = sorted_partitions(&[&b]);
        assert_eq!(got.len(), FLUSH_PARTITIONS_MAX);
        let hours: Vec<u64> = got.iter().map(|(h, _)| *h).collect();
        // The backlog's hours all keep their own partitions, and the receive hour takes the rest.
        for h in 0..30 {
            assert!(hours.contains(&(t0 / hour - h - 1)), "backlog hour {h}");
        }
        assert!(hours.contains(&(t0 / hour)));
        let times_col = b.column(0).as_primitive::<UInt64Type>();
        let shapes = row_shapes(&b);
        let mut seen = vec![false; times.len()];
        for (h, rows) in &got {
            for &(_, r) in rows {
                assert!(!std::mem::replace(&mut seen[r], true), "row {r} twice");
                let t = times_col.value(r);
                assert!(t / hour == *h || *h == t0 / hour, "row at {t} is in its hour or the receive hour");
            }
            // Still sorted by source, shape, then time within the partition.
            let keys: Vec<(&str, u64, u64)> =
                rows.iter().map(|&(_, r)| (sources[r], shapes[r], times_col.value(r))).collect();
            assert!(keys.windows(2).all(|w| w[0] <= w[1]), "hour {h} sorted");
        }
        assert!(seen.iter().all(|&s| s), "every row is written");
        // Spilled rows are the broken clock's: the receive hour holds 170 − (64 − 1 − 30) of them.
        let spilled = got.iter().find(|(h, _)| *h == t0 / hour).unwrap().1.len();
        assert_eq!(spilled, 170 - (FLUSH_PARTITIONS_MAX - 1 - 30));
        // Within the bound nothing moves.
        let few = rows_at(&times[..1500], &sources[..1500], &messages[..1500]);
        assert_eq!(sorted_partitions(&[&few]).len(), 30);
    }

    #[test]
    fn repeating_strings_get_a_dictionary_and_unique_ones_do_not() {
        let b = rows(5000);
        let plain = plain_columns(&[&b]);
        assert!(plain.contains("message"));
        assert!(!plain.contains("level") && !plain.contains(crate::buffer::COL_SOURCE));
        // Too few values to judge: keep the dictionary.
        let few = b.slice(0, DICTIONARY_SAMPLE_VALUES_MIN - 1);
        assert!(!mostly_distinct(&[&few], "message"));
        // Judged over the batches that have the column, in order.
        let other = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("level", DataType::Utf8, true)])),
            vec![Arc::new(StringArray::from(vec!["INFO"; 300])) as ArrayRef],
        )
        .unwrap();
        assert!(plain_columns(&[&other, &b]).contains("message"));
        // The line is at half distinct: 60% goes plain, 40% keeps its dictionary.
        let share = |distinct: u64| {
            let values: Vec<String> = (0..1000u64).map(|i| format!("u{}", i % distinct)).collect();
            let schema = Arc::new(Schema::new(vec![Field::new("u", DataType::Utf8, true)]));
            let batch = RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(values)) as ArrayRef]).unwrap();
            mostly_distinct(&[&batch], "u")
        };
        assert!(share(600));
        assert!(!share(400));
    }

    #[test]
    fn gather_gives_what_picking_row_by_row_gives() {
        // Three batches of one schema with a nullable integer column `n`; the first has no nulls,
        // the others have nulls in `message` and `n`, and every array of the third is a slice
        // (offsets and null bits not starting at 0).
        let with_n = |n: u64, nulls: bool| {
            let b = rows(n);
            let mut fields = b.schema().fields().to_vec();
            fields.push(Arc::new(arrow_schema::Field::new("n", DataType::UInt64, true)));
            let mut columns = b.columns().to_vec();
            if nulls {
                let idx = b.schema().index_of("message").unwrap();
                columns[idx] = Arc::new(StringArray::from(
                    (0..n).map(|i| (i % 3 != 0).then(|| format!("m{i}"))).collect::<Vec<_>>(),
                ));
            }
            columns.push(Arc::new(UInt64Array::from(
                (0..n).map(|i| (!nulls || i % 5 != 0).then_some(i)).collect::<Vec<_>>(),
            )));
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };
        let batches = [with_n(500, false), with_n(700, true), with_n(900, true).slice(100, 800)];
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        for run_max in [1, 3, 40, 400] {
            let mut picks = Vec::new();
            while picks.len() < 3000 {
                let b = next(3);
                let len = 1 + next(run_max);
                let start = next(batches[b].num_rows() - len.min(batches[b].num_rows()) + 1);
                picks.extend((start..(start + len).min(batches[b].num_rows())).map(|r| (b, r)));
            }
            let want = arrow_select::interleave::interleave_record_batch(&refs, &picks).unwrap();
            assert_eq!(gather(&refs, &picks).unwrap(), want, "runs of up to {run_max} rows");
        }
        // Rows of some of the batches only (the others take no part).
        let picks: Vec<(usize, usize)> = (0..50).map(|r| (2, r)).chain((7..30).map(|r| (0, r))).collect();
        let want = arrow_select::interleave::interleave_record_batch(&refs, &picks).unwrap();
        assert_eq!(gather(&refs, &picks).unwrap(), want, "rows of batches 2 and 0");
    }

    #[test]
    fn written_segments_use_the_documented_encodings() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let b = rows(5000);
        let mut counter = 0;
        let metas =
            write_segments(&store, Some(dir.path()), std::slice::from_ref(&b), &b.schema(), &mut counter, 3).unwrap();
        assert_eq!(metas.len(), 1);
        let file = std::fs::File::open(dir.path().join(&metas[0].path)).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        let rg = reader.metadata().row_group(0);
        let encodings = |name: &str| {
            let c = rg.columns().iter().find(|c| c.column_path().string() == name).unwrap();
            (c.encodings().collect::<Vec<_>>(), c.dictionary_page_offset().is_some())
        };
        for name in [COL_TIME_NS, COL_RECEIVED_NS, COL_SEQ] {
            let (enc, dict) = encodings(name);
            assert!(enc.contains(&Encoding::DELTA_BINARY_PACKED) && !dict, "{name}: {enc:?}");
        }
        assert!(encodings("level").1, "a repeating string column has a dictionary");
        assert!(!encodings("message").1, "a unique string column has none");
        let stats = |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name).unwrap().statistics();
        assert!(stats(COL_ID).is_none(), "random ids get no min/max");
        assert!(stats(COL_TIME_NS).is_some() && stats("message").is_some());
        // Page statistics (the column index, whose null counts skip other shapes' pages) and the
        // offset index for strings of both kinds.
        let chunk = |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name).unwrap();
        for name in ["level", "message"] {
            assert!(chunk(name).column_index_offset().is_some() && chunk(name).offset_index_offset().is_some());
        }
        let compression =
            |name: &str| rg.columns().iter().find(|c| c.column_path().string() == name).unwrap().compression();
        for name in [COL_ID, COL_TIME_NS] {
            assert_eq!(compression(name), Compression::UNCOMPRESSED, "{name}");
        }
        for name in [COL_SEQ, "message", "level"] {
            assert!(matches!(compression(name), Compression::ZSTD(_)), "{name}");
        }
        let sorting: Vec<(i32, bool)> =
            rg.sorting_columns().unwrap().iter().map(|c| (c.column_idx, c.descending)).collect();
        assert_eq!(sorting, [(1, false)], "declared sorted by sluice_source (then shape and time_ns)");
        // And the rows read back as written, each source's (src-0: even rows, src-1: odd) in a run.
        let back = read_segment(&store, &metas[0].path).unwrap();
        let order = UInt64Array::from((0..5000).step_by(2).chain((1..5000).step_by(2)).collect::<Vec<u64>>());
        let expected = arrow_select::take::take_record_batch(&b, &order).unwrap();
        assert_eq!(arrow_select::concat::concat_batches(&b.schema(), &back).unwrap(), expected);
    }

    /// Every file under `dir`, relative to it.
    fn files_under(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn a_segment_is_written_in_place_on_local_disk_and_in_memory_elsewhere() {
        let b = rows(3000);
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let mut counter = 0;
        // Local: through a partial file that is renamed, so only the segment and its index remain.
        let local =
            write_segments(&store, Some(dir.path()), std::slice::from_ref(&b), &b.schema(), &mut counter, 3).unwrap();
        assert_eq!(files_under(dir.path()), [local[0].path.clone(), terms_path(&local[0].path)]);
        assert_eq!(std::fs::metadata(dir.path().join(&local[0].path)).unwrap().len(), local[0].bytes);
        // Not local (no root to write files under): held in memory and put.
        let memory = object_store::memory::InMemory::new();
        let mut counter = 0;
        let put = write_segments(&memory, None, std::slice::from_ref(&b), &b.schema(), &mut counter, 3).unwrap();
        assert_eq!(put[0].bytes, local[0].bytes);
        for (store, path) in [(&store as &dyn ObjectStore, &local[0].path), (&memory, &put[0].path)] {
            let back = read_segment(store, path).unwrap();
            assert_eq!(back.iter().map(|b| b.num_rows()).sum::<usize>(), 3000);
            let terms = block_on(async { store.get(&ObjectPath::from(terms_path(path))).await?.bytes().await });
            assert!(!terms.unwrap().is_empty());
        }
        // A segment file dropped before its rename (a failed write) leaves nothing behind.
        let full = dir.path().join("segments/seg-000000000009.parquet");
        let mut partial = PartialFile::create(full.clone()).unwrap();
        partial.writer().write_all(b"PAR1").unwrap();
        let partial_path = partial.partial.clone();
        assert!(partial_path.to_string_lossy().ends_with(".parquet.partial") && partial_path.exists());
        drop(partial);
        assert!(!partial_path.exists() && !full.exists());
    }

    #[test]
    fn a_sources_rows_are_grouped_by_shape_then_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        // Two kinds of events at the same times: with a level, and without (every other row of
        // the second batch, so one batch and each source hold both shapes).
        let with_level = rows(3000);
        let mut columns = with_level.columns().to_vec();
        let level = with_level.schema().index_of("level").unwrap();
        columns[level] = Arc::new(StringArray::from(
            (0..3000).map(|i| (i % 4 < 2).then_some("INFO")).collect::<Vec<Option<&str>>>(),
        ));
        let mixed = RecordBatch::try_new(with_level.schema(), columns).unwrap();
        let mut counter = 0;
        let batches = [with_level.clone(), mixed];
        let metas = write_segments(&store, Some(dir.path()), &batches, &with_level.schema(), &mut counter, 3).unwrap();
        let back = read_segment(&store, &metas[0].path).unwrap();
        let back = arrow_select::concat::concat_batches(&back[0].schema(), &back).unwrap();
        assert_eq!(back.num_rows(), 6000);
        let sources = back.column(1).as_string::<i32>();
        let times = back.column(0).as_primitive::<UInt64Type>();
        let levels = back.column_by_name("level").unwrap();
        // (source, has a level) changes three times: src-0 in two runs, then src-1 in two.
        let key = |r: usize| (sources.value(r), levels.is_valid(r));
        let changes: Vec<usize> = (1..6000).filter(|&r| key(r) != key(r - 1)).collect();
        assert_eq!(changes.len(), 3, "runs begin at {changes:?}");
        let runs = [0, changes[0], changes[1], changes[2], 6000];
        for w in runs.windows(2) {
            assert!((w[0] + 1..w[1]).all(|r| times.value(r - 1) <= times.value(r)), "time order in {w:?}");
        }
        let per_source: Vec<(&str, usize)> = runs[..4].iter().map(|&r| (sources.value(r), r)).collect();
        assert_eq!(per_source.iter().filter(|(s, _)| *s == "src-0").count(), 2);
    }

    /// `rows(n)` with times spread over one hour (ties included), seqs and ids from `first`, and
    /// key columns varied: input 1 has no `level`, input 2 an extra integer column.
    fn merge_input(k: u64, n: u64) -> RecordBatch {
        let b = rows(n);
        let t0 = 1_795_410_000_000_000_000u64;
        let first = k * 1_000_000;
        let mut fields: Vec<Field> = b.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        let mut columns = b.columns().to_vec();
        columns[0] = Arc::new(UInt64Array::from((0..n).map(|i| t0 + (i * 7919 + k * 13) % 50_000).collect::<Vec<_>>()));
        columns[4] =
            Arc::new(FixedSizeBinaryArray::try_from_iter((0..n).map(|i| u128::from(first + i).to_be_bytes())).unwrap());
        columns[5] = Arc::new(UInt64Array::from((first..first + n).collect::<Vec<_>>()));
        if k == 1 {
            fields.remove(7);
            columns.remove(7);
        }
        if k == 2 {
            fields.push(Field::new("extra", DataType::UInt64, true));
            columns.push(Arc::new(UInt64Array::from((0..n).map(|i| (i % 5 != 0).then_some(i)).collect::<Vec<_>>())));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
    }

    /// Every row of a segment.
    fn read_segment(store: &dyn ObjectStore, path: &str) -> Result<Vec<RecordBatch>, SegmentError> {
        let reader = open_segment(store, path)?.build().unwrap();
        Ok(reader.map(|b| b.unwrap()).collect())
    }

    fn walk(d: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn merging_segments_gives_what_sorting_all_their_rows_gives() {
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        // Inputs larger than a read batch and, together, than a write slice.
        let inputs: Vec<RecordBatch> =
            [40_000, 3, 30_000, 9_000].iter().enumerate().map(|(k, &n)| merge_input(k as u64, n)).collect();
        // Every column: input 2 has them all.
        let full = merge_input(2, 1).schema();
        let mut counter = 0;
        let mut metas = Vec::new();
        for b in &inputs {
            metas.extend(
                write_segments(&store, Some(dir.path()), std::slice::from_ref(b), &full, &mut counter, 3).unwrap(),
            );
        }
        assert_eq!(metas.len(), inputs.len());
        let merged = merge_segments(&store, Some(dir.path()), &metas, &full, &mut counter, 3).unwrap();
        let want = write_segments(&store, Some(dir.path()), &inputs, &full, &mut counter, 3).unwrap();
        assert_eq!(want.len(), 1);
        let read = |path: &str| {
            let b = read_segment(&store, path).unwrap();
            arrow_select::concat::concat_batches(&b[0].schema(), &b).unwrap()
        };
        assert_eq!(read(&merged.path), read(&want[0].path));
        let mut m = merged.clone();
        m.path = want[0].path.clone();
        m.bytes = want[0].bytes;
        assert_eq!(m, want[0], "manifest entry: rows and ranges");
        let file = std::fs::File::open(dir.path().join(&merged.path)).unwrap();
        let reader = SerializedFileReader::new(file).unwrap();
        // Inputs that disagree with their manifest entries: refused, and nothing written.
        let files = |d: &Path| walk(d).len();
        let before = files(dir.path());
        let mut wrong = metas.clone();
        wrong[0].rows += 1;
        let err = merge_segments(&store, Some(dir.path()), &wrong, &full, &mut counter, 3).unwrap_err();
        assert!(err.to_string().contains("compaction read 79003 rows"), "{err}");
        assert_eq!(files(dir.path()), before);
        let sorting = reader.metadata().row_group(0).sorting_columns().unwrap();
        assert_eq!(sorting.iter().map(|c| c.column_idx).collect::<Vec<_>>(), [1], "declared sorted by source");
    }

    #[test]
    fn a_compaction_keeps_its_inputs_choice_of_dictionary() {
        // In buffer order the distinct messages of source "b" come first, so the flush writes
        // `message` plain; sorted, source "a"'s repeated message comes first, which is all a
        // merge's first rows would show.
        let dir = tempfile::tempdir().unwrap();
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let n = 12_000;
        let times: Vec<u64> = (0..n).map(|i| 1_795_410_000_000_000_000 + i).collect();
        let distinct: Vec<String> = (0..n).map(|i| format!("request {i} done")).collect();
        let b = rows_at(&times, &vec!["b"; n as usize], &distinct.iter().map(|m| Some(m.as_str())).collect::<Vec<_>>());
        let a = rows_at(&times, &vec!["a"; n as usize], &vec![Some("the same"); n as usize]);
        let full = b.schema();
        let mut counter = 0;
        let mut metas = Vec::new();
        for _ in 0..2 {
            metas.extend(
                write_segments(&store, Some(dir.path()), &[b.clone(), a.clone()], &full, &mut counter, 3).unwrap(),
            );
        }
        let dictionary = |path: &str| {
            let reader = SerializedFileReader::new(std::fs::File::open(dir.path().join(path)).unwrap()).unwrap();
            let rg = reader.metadata().row_group(0);
            rg.columns()
                .iter()
                .find(|c| c.column_path().string() == "message")
                .unwrap()
                .dictionary_page_offset()
                .is_some()
        };
        assert!(!dictionary(&metas[0].path), "the flush judged in buffer order");
        let merged = merge_segments(&store, Some(dir.path()), &metas, &full, &mut counter, 3).unwrap();
        assert!(!dictionary(&merged.path), "the compaction kept it");
    }

    #[test]
    fn documented_partition_paths() {
        // 2026-11-23T05:00:00Z
        let t = 1_795_410_000_000_000_000u64;
        assert_eq!(partition_dir(partition_hour(t)), "sluice_date=2026-11-23/sluice_hour=05");
        assert_eq!(partition_dir(0), "sluice_date=1970-01-01/sluice_hour=00");
        assert_eq!(partition_dir(partition_hour(951_782_400_000_000_000)), "sluice_date=2000-02-29/sluice_hour=00");
        assert_eq!(segment_path(1, 7), "segments/sluice_date=1970-01-01/sluice_hour=01/seg-000000000007.parquet");
        // The largest time_ns still names a valid date.
        assert_eq!(partition_dir(partition_hour(u64::MAX)), "sluice_date=2554-07-21/sluice_hour=23");
    }
}
