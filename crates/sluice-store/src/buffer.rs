//! The in-memory buffer of committed events as Arrow columns, and the store-wide key registry that
//! decides each key's column type.
//!
//! It does no I/O and no locking (the store holds it under its state lock), and it does not sort
//! or partition: that is the flush's job.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{FixedSizeBinaryBuilder, StringBuilder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{new_null_array, ArrayRef, FixedSizeBinaryArray, RecordBatch, StringArray, UInt64Array};
use arrow_buffer::{BooleanBuffer, Buffer as Bytes, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::parse::{Parsed, Value};

/// Event time, ns since the epoch (the line's own `time_ns`; the receive time for unparsed lines).
pub const COL_TIME_NS: &str = "time_ns";
/// Configured name of the source the event came from.
pub const COL_SOURCE: &str = "sluice_source";
/// Stream id of the supervisor, 32 lowercase hex digits.
pub const COL_STREAM: &str = "sluice_stream";
/// When the store received the event, ns since the epoch.
pub const COL_RECEIVED_NS: &str = "sluice_received_ns";
/// The event id (xxh3-128, SPEC §3) as 16 bytes, most significant first.
pub const COL_ID: &str = "sluice_id";
/// Store-wide sequence number.
pub const COL_SEQ: &str = "sluice_seq";
/// JSON object of the values that have no column of their type, and the text of unparsed lines.
pub const COL_OVERFLOW: &str = "sluice_overflow";
/// Hive partition columns of the segment paths: never event keys, or queries would see two.
pub const COL_DATE: &str = "sluice_date";
pub const COL_HOUR: &str = "sluice_hour";
/// Overflow key holding the text of a line that did not parse (lossy UTF-8, cut).
pub const OVERFLOW_UNPARSED: &str = "sluice_unparsed";
/// Overflow key holding how many bytes of an unparsed line were cut.
pub const OVERFLOW_UNPARSED_CUT: &str = "sluice_unparsed_cut";
/// Bytes of an unparsed line kept in the overflow column.
pub const UNPARSED_BYTES_MAX: usize = 16 * 1024;
/// Columns before the key columns, in this order.
pub const FIXED_COLUMNS: [&str; 7] =
    [COL_TIME_NS, COL_SOURCE, COL_STREAM, COL_RECEIVED_NS, COL_ID, COL_SEQ, COL_OVERFLOW];
/// Names that are never key columns: a line key of one of these names goes to the overflow column.
const RESERVED_NAMES: [&str; 9] =
    [COL_TIME_NS, COL_SOURCE, COL_STREAM, COL_RECEIVED_NS, COL_ID, COL_SEQ, COL_OVERFLOW, COL_DATE, COL_HOUR];
/// The active parts of the buffer become immutable RecordBatches when they hold this many rows
/// together, so that a snapshot copies at most this many rows.
pub const FREEZE_ROWS: usize = 16 * 1024;

/// The type of a key column, decided by the first value of the key the store ever saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Utf8,
    Uint64,
}

impl KeyType {
    pub fn data_type(self) -> DataType {
        match self {
            KeyType::Utf8 => DataType::Utf8,
            KeyType::Uint64 => DataType::UInt64,
        }
    }
}

/// FxHash (rustc's): keys are short and not attacker-chosen in a way that matters here (their
/// number is capped by `keys_max`), so a fast hash beats SipHash on the hot path.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let v = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;

/// The part a key column contributes to a row's shape: a row's shape is the XOR of these over
/// the key columns that hold a value in the row (so it depends on the set of keys, not their order
/// in the line). The buffer groups lines by it and segments are sorted by it within a source;
/// both compute it with this function, so a flushed segment and a compaction agree.
pub fn shape_bits(column: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(column.as_bytes())
}

/// Keys and their column types, in the order first seen; at most `keys_max`.
#[derive(Debug, Clone)]
pub struct Registry {
    keys: Vec<(Arc<str>, KeyType)>,
    /// [`shape_bits`] of each key, by registry index.
    shape_bits: Vec<u64>,
    index: HashMap<Arc<str>, u32, FxBuild>,
    keys_max: usize,
    schema: SchemaRef,
}

impl Registry {
    pub fn new(keys: &[(String, KeyType)], keys_max: usize) -> Registry {
        let mut r = Registry {
            keys: Vec::new(),
            shape_bits: Vec::new(),
            index: HashMap::default(),
            keys_max,
            schema: Arc::new(Schema::empty()),
        };
        for (name, t) in keys {
            if !r.index.contains_key(name.as_str()) {
                let name: Arc<str> = Arc::from(name.as_str());
                r.index.insert(name.clone(), r.keys.len() as u32);
                r.shape_bits.push(shape_bits(&name));
                r.keys.push((name, *t));
            }
        }
        r.schema = r.build_schema();
        r
    }

    pub fn keys(&self) -> &[(Arc<str>, KeyType)] {
        &self.keys
    }

    /// The full schema: fixed columns, then every key in registry order.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn build_schema(&self) -> SchemaRef {
        let mut fields = fixed_fields();
        fields.extend(self.keys.iter().map(|(n, t)| Field::new(n.as_ref(), t.data_type(), true)));
        Arc::new(Schema::new(fields))
    }

    /// The column for `key` holding a value of type `t`: `None` sends the value to the overflow
    /// column (reserved name, other type, or no room for another key).
    fn column(&mut self, key: &str, t: KeyType) -> Option<u32> {
        if let Some(&i) = self.index.get(key) {
            return (self.keys[i as usize].1 == t).then_some(i);
        }
        if self.keys.len() >= self.keys_max || RESERVED_NAMES.contains(&key) {
            return None;
        }
        let name: Arc<str> = Arc::from(key);
        let i = self.keys.len() as u32;
        self.index.insert(name.clone(), i);
        self.shape_bits.push(shape_bits(key));
        self.keys.push((name, t));
        self.schema = self.build_schema();
        Some(i)
    }
}

pub fn fixed_fields() -> Vec<Field> {
    vec![
        Field::new(COL_TIME_NS, DataType::UInt64, false),
        Field::new(COL_SOURCE, DataType::Utf8, false),
        Field::new(COL_STREAM, DataType::Utf8, false),
        Field::new(COL_RECEIVED_NS, DataType::UInt64, false),
        Field::new(COL_ID, DataType::FixedSizeBinary(16), false),
        Field::new(COL_SEQ, DataType::UInt64, false),
        Field::new(COL_OVERFLOW, DataType::Utf8, true),
    ]
}

/// The same rows with `schema`'s columns: columns missing from `batch` are all null. Every
/// column of `batch` must be in `schema` with the same type.
///
/// The missing columns of one type share one all-null array, so a batch that lacks most of
/// `keys_max` keys (a flood of distinct keys elsewhere in the buffer) costs two arrays, not one per
/// key. Columns are looked up in order (both are in registry order), by name only when that fails,
/// so aligning is linear in the columns.
pub fn align(batch: &RecordBatch, schema: &SchemaRef) -> RecordBatch {
    if batch.schema() == *schema {
        return batch.clone();
    }
    let rows = batch.num_rows();
    let have = batch.schema();
    let mut next = 0;
    let mut nulls: Vec<(&DataType, ArrayRef)> = Vec::new();
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| {
            let found = if have.fields().get(next).is_some_and(|h| h.name() == f.name()) {
                next += 1;
                Some(batch.column(next - 1).clone())
            } else {
                batch.column_by_name(f.name()).cloned()
            };
            found.unwrap_or_else(|| match nulls.iter().find(|(t, _)| *t == f.data_type()) {
                Some((_, a)) => a.clone(),
                None => {
                    let a = new_null_array(f.data_type(), rows);
                    nulls.push((f.data_type(), a.clone()));
                    a
                }
            })
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).expect("aligned columns match the schema they were built from")
}

/// The rows of `batch` with a `sluice_seq` above `after` (seqs rise within a batch), without
/// copying; `None` when there are none.
pub fn suffix_after(batch: &RecordBatch, after: u64) -> Option<RecordBatch> {
    let seqs = batch.column_by_name(COL_SEQ)?.as_primitive_opt::<UInt64Type>()?;
    let n = seqs.len();
    if n == 0 || seqs.value(n - 1) <= after {
        return None;
    }
    let start = seqs.values().partition_point(|&s| s <= after);
    Some(batch.slice(start, n - start))
}

/// Rows a batch of [`in_seq_order`] holds when it has to merge.
const SEQ_ORDER_BATCH_ROWS: usize = 8 * 1024;

/// `batches` (all of one schema, each in rising `sluice_seq`) as batches in rising seq overall: as
/// they are when they already are, else merged, which copies their rows.
pub fn in_seq_order(batches: Vec<RecordBatch>) -> Vec<RecordBatch> {
    let seqs = |b: &RecordBatch| -> UInt64Array {
        b.column_by_name(COL_SEQ).expect("fixed column").as_primitive::<UInt64Type>().clone()
    };
    let columns: Vec<UInt64Array> = batches.iter().map(seqs).collect();
    let mut last: Option<u64> = None;
    let ordered = columns.iter().filter(|c| !c.is_empty()).all(|c| {
        let rises = last.is_none_or(|l| l < c.value(0));
        last = Some(c.value(c.len() - 1));
        rises
    });
    if ordered {
        return batches;
    }
    let mut order: Vec<(u64, usize, usize)> = Vec::with_capacity(columns.iter().map(|c| c.len()).sum());
    for (b, c) in columns.iter().enumerate() {
        order.extend(c.values().iter().enumerate().map(|(r, &s)| (s, b, r)));
    }
    order.sort_unstable();
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    let picks: Vec<(usize, usize)> = order.iter().map(|&(_, b, r)| (b, r)).collect();
    picks
        .chunks(SEQ_ORDER_BATCH_ROWS)
        .map(|p| arrow_select::interleave::interleave_record_batch(&refs, p).expect("batches of one schema"))
        .collect()
}

/// Rows `from..` of a builder's validity bitmap (`None`: no null so far).
fn nulls_from(validity: Option<&[u8]>, from: usize, len: usize) -> Option<NullBuffer> {
    validity.map(|bits| NullBuffer::new(BooleanBuffer::new(Bytes::from_slice_ref(bits), from, len)))
}

fn u64s_from(b: &UInt64Builder, from: usize) -> ArrayRef {
    let values = &b.values_slice()[from..];
    Arc::new(UInt64Array::new(ScalarBuffer::from(values.to_vec()), nulls_from(b.validity_slice(), from, values.len())))
}

fn strings_from(b: &StringBuilder, from: usize) -> ArrayRef {
    let offsets = b.offsets_slice();
    let (first, last) = (offsets[from], offsets[offsets.len() - 1]);
    let rebased: Vec<i32> = offsets[from..].iter().map(|o| o - first).collect();
    let values = Bytes::from_slice_ref(&b.values_slice()[first as usize..last as usize]);
    let len = rebased.len() - 1;
    Arc::new(StringArray::new(OffsetBuffer::new(rebased.into()), values, nulls_from(b.validity_slice(), from, len)))
}

fn ids_from(b: &FixedSizeBinaryBuilder, from: usize, rows: usize) -> ArrayRef {
    let values = Bytes::from_slice_ref(&b.values_slice()[from * 16..]);
    Arc::new(FixedSizeBinaryArray::new(16, values, nulls_from(b.validity_slice(), from, rows - from)))
}

/// Per-line facts that do not come from the line.
pub struct LineMeta<'a> {
    pub source: &'a str,
    pub stream_hex: &'a str,
    pub received_ns: u64,
    pub seq: u64,
    pub id: u128,
}

/// Counts from appending lines, for the store's stats.
#[derive(Debug, Default, Clone, Copy)]
pub struct AppendCounts {
    pub unparsed: u64,
    pub overflow_values: u64,
}

enum KeyData {
    Str(StringBuilder),
    U64(UInt64Builder),
}

struct KeyCol {
    data: KeyData,
    len: usize,
}

impl KeyCol {
    fn pad(&mut self, rows: usize) {
        let n = rows - self.len;
        if n > 0 {
            match &mut self.data {
                KeyData::Str(b) => b.append_nulls(n),
                KeyData::U64(b) => b.append_nulls(n),
            }
            self.len = rows;
        }
    }
}

struct Active {
    /// The shape of its lines (apart from lines past [`SHAPES_MAX`] shapes, in the first part).
    shape: u64,
    /// Whether rows were added since the last [`Buffer::take`].
    used: bool,
    rows: usize,
    /// Estimated memory of the rows: their line bytes plus [`ACTIVE_ROW_BYTES`] each. The
    /// estimate lasts only until the next freeze, which measures the real size.
    bytes: usize,
    time_ns: UInt64Builder,
    source: StringBuilder,
    stream: StringBuilder,
    received_ns: UInt64Builder,
    id: FixedSizeBinaryBuilder,
    seq: UInt64Builder,
    overflow: StringBuilder,
    keys: Vec<Option<KeyCol>>,
    /// Rows the builders have room for: the rows of the last batch this part froze, plus an
    /// eighth. The builders are made anew at every freeze, and growing them from nothing would
    /// copy each value about once more and touch fresh memory at every doubling; a frozen batch
    /// keeps its builders' whole room, which the buffer's bound counts, so the room follows what
    /// the part needed last time rather than [`FREEZE_ROWS`].
    room: usize,
    /// Bytes of string values each key column (by registry index) held when the last batch was
    /// frozen: the next builder of that key starts with room for as many, plus an eighth.
    key_bytes: Vec<usize>,
}

/// Room of the builders of a part that has not frozen a batch yet.
const ACTIVE_ROOM_FIRST: usize = 1024;

fn string_builder(items: usize, bytes: usize) -> StringBuilder {
    StringBuilder::with_capacity(items, bytes + bytes / 8)
}

impl Active {
    fn new(shape: u64, room: usize) -> Active {
        Active {
            shape,
            used: false,
            rows: 0,
            bytes: 0,
            time_ns: UInt64Builder::with_capacity(room),
            source: string_builder(room, 0),
            stream: string_builder(room, 0),
            received_ns: UInt64Builder::with_capacity(room),
            id: FixedSizeBinaryBuilder::with_capacity(room, 16),
            seq: UInt64Builder::with_capacity(room),
            overflow: string_builder(room, 0),
            keys: Vec::new(),
            room,
            key_bytes: Vec::new(),
        }
    }

    /// Rows `from..` as a batch with the columns [`Active::finish`] would give, copying only
    /// those rows; the builders are left as they are (apart from padding).
    fn batch_from(&mut self, registry: &Registry, from: usize) -> RecordBatch {
        let rows = self.rows;
        let mut fields = fixed_fields();
        let mut columns: Vec<ArrayRef> = vec![
            u64s_from(&self.time_ns, from),
            strings_from(&self.source, from),
            strings_from(&self.stream, from),
            u64s_from(&self.received_ns, from),
            ids_from(&self.id, from, rows),
            u64s_from(&self.seq, from),
            strings_from(&self.overflow, from),
        ];
        for (i, col) in self.keys.iter_mut().enumerate() {
            let Some(col) = col else { continue };
            col.pad(rows);
            let (name, t) = &registry.keys()[i];
            fields.push(Field::new(name.as_ref(), t.data_type(), true));
            columns.push(match &col.data {
                KeyData::Str(b) => strings_from(b, from),
                KeyData::U64(b) => u64s_from(b, from),
            });
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("every column has one value per row")
    }

    /// Every row as a batch: fixed columns, then the keys that have a value, in registry order.
    /// Empties the builders (a copy without emptying them is [`Active::batch_from`]`(0)`).
    fn finish(&mut self, registry: &Registry) -> RecordBatch {
        let rows = self.rows;
        let mut fields = fixed_fields();
        let room = rows + rows / 8;
        let mut next = Active::new(self.shape, room);
        next.used = self.used;
        next.source = string_builder(room, self.source.values_slice().len());
        next.stream = string_builder(room, self.stream.values_slice().len());
        next.overflow = string_builder(room, self.overflow.values_slice().len());
        next.key_bytes = std::mem::take(&mut self.key_bytes);
        let mut done = std::mem::replace(self, next);
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(done.time_ns.finish()),
            Arc::new(done.source.finish()),
            Arc::new(done.stream.finish()),
            Arc::new(done.received_ns.finish()),
            Arc::new(done.id.finish()),
            Arc::new(done.seq.finish()),
            Arc::new(done.overflow.finish()),
        ];
        for (i, col) in done.keys.iter_mut().enumerate() {
            let Some(col) = col else { continue };
            col.pad(rows);
            let (name, t) = &registry.keys()[i];
            fields.push(Field::new(name.as_ref(), t.data_type(), true));
            columns.push(match &mut col.data {
                KeyData::Str(b) => {
                    if self.key_bytes.len() <= i {
                        self.key_bytes.resize(i + 1, 0);
                    }
                    self.key_bytes[i] = b.values_slice().len();
                    Arc::new(b.finish())
                }
                KeyData::U64(b) => Arc::new(b.finish()),
            });
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("every column has one value per row")
    }
}

/// Committed events not yet in segments.
///
/// # Shapes
///
/// Lines are kept apart by their shape (the set of key columns they have a value in, see
/// [`shape_bits`]): each shape has an active part of its own, so a batch holds the columns of
/// its keys and no column of nulls for the keys of other kinds of events. Generated events have
/// about 50 keys and 5 to 9 in a line; in one wide batch, the nulls of the absent keys took about
/// 300 of the 380 bytes a buffered row cost. At most [`SHAPES_MAX`] shapes get a part of their
/// own; the lines of any further shape share the first part (wider batches, same rows). Rows of
/// one part rise in `sluice_seq`; rows of different parts interleave, so [`Buffer::snapshot`] and
/// [`Buffer::rows_after`] are not in seq order ([`in_seq_order`] puts them in it).
#[derive(Default)]
pub struct Buffer {
    frozen: Vec<RecordBatch>,
    /// `frozen[..aligned.len()]` aligned to `aligned_to`, so that a snapshot does not rebuild
    /// the all-null columns of keys a frozen batch lacks at every call.
    aligned: Vec<RecordBatch>,
    aligned_to: Option<SchemaRef>,
    /// The active part of each shape, in the order the shapes were first seen.
    actives: Vec<Active>,
    /// Index in `actives` of each shape.
    shapes: HashMap<u64, usize, FxBuild>,
    rows: usize,
    /// Rows in the active parts: all of them are frozen at [`FREEZE_ROWS`], so that a snapshot
    /// copies at most that many.
    active_rows: usize,
    /// Memory of `frozen` (Arrow arrays as allocated).
    frozen_bytes: usize,
    first_row_at: Option<Instant>,
    parsed: Parsed,
    overflow: String,
    /// The registry index of each key of the line being added (`None`: to the overflow column).
    columns: Vec<Option<u32>>,
    /// Per registry index, the number of the line that last had a value in that column
    /// (`lines` counts them): finds the second value of a key in one line.
    last_line: Vec<u64>,
    lines: u64,
}

/// Shapes that get an active part of their own; the lines of any further shape go to the first
/// part. Bounds the parts (each a set of builders) a flood of differently shaped lines can make;
/// a take frees the places of the shapes not seen since the one before.
pub const SHAPES_MAX: usize = 64;

/// Estimated memory of an active row beside its line's bytes: the fixed columns (time, source,
/// stream, receive time, id, seq, overflow) and a few offsets. The estimate lasts only until the
/// next freeze ([`FREEZE_ROWS`] rows), which measures the real size.
const ACTIVE_ROW_BYTES: usize = 128;

impl Buffer {
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Memory the buffered rows take (frozen batches as allocated, active rows estimated).
    pub fn bytes(&self) -> usize {
        self.frozen_bytes + self.actives.iter().map(|a| a.bytes).sum::<usize>()
    }

    /// When the oldest row still here was added.
    pub fn first_row_at(&self) -> Option<Instant> {
        self.first_row_at
    }

    /// Append one line (without its '\n'). Never fails: a line that does not parse becomes a row
    /// with the receive time as `time_ns` and its text in the overflow column.
    pub fn push_line(&mut self, registry: &mut Registry, line: &[u8], meta: &LineMeta<'_>) -> AppendCounts {
        let mut counts = AppendCounts::default();
        self.overflow.clear();
        self.columns.clear();
        self.lines += 1;
        let parsed = self.parsed.parse(line);
        // The key columns of the line (and so its shape) first, then the part of that shape.
        let mut shape = 0u64;
        if let Ok(text) = parsed {
            for (key, value) in &self.parsed.fields {
                let t = match value {
                    Value::Str(_) => KeyType::Utf8,
                    Value::U64(_) => KeyType::Uint64,
                };
                let column = registry.column(self.parsed.text(text, key), t).filter(|&i| {
                    let i = i as usize;
                    if self.last_line.len() <= i {
                        self.last_line.resize(i + 1, 0);
                    }
                    // A duplicate key: the first value keeps the column, later ones overflow.
                    std::mem::replace(&mut self.last_line[i], self.lines) != self.lines
                });
                if let Some(i) = column {
                    shape ^= registry.shape_bits[i as usize];
                }
                self.columns.push(column);
            }
        }
        let part = match self.shapes.get(&shape) {
            Some(&p) => p,
            None if self.actives.len() < SHAPES_MAX => {
                self.actives.push(Active::new(shape, ACTIVE_ROOM_FIRST));
                self.shapes.insert(shape, self.actives.len() - 1);
                self.actives.len() - 1
            }
            None => 0,
        };
        let a = &mut self.actives[part];
        a.used = true;
        let row = a.rows;
        match parsed {
            Ok(text) => {
                a.time_ns.append_value(self.parsed.time_ns);
                for ((key, value), column) in self.parsed.fields.iter().zip(&self.columns) {
                    let Some(i) = column else {
                        counts.overflow_values += 1;
                        overflow_pair(&mut self.overflow, self.parsed.text(text, key), value, &self.parsed, text);
                        continue;
                    };
                    let i = *i as usize;
                    if a.keys.len() <= i {
                        a.keys.resize_with(i + 1, || None);
                    }
                    let (key_bytes, room) = (&a.key_bytes, a.room);
                    let col = a.keys[i].get_or_insert_with(|| KeyCol {
                        data: match value {
                            Value::Str(_) => KeyData::Str(string_builder(room, key_bytes.get(i).copied().unwrap_or(0))),
                            Value::U64(_) => KeyData::U64(UInt64Builder::with_capacity(room)),
                        },
                        len: 0,
                    });
                    col.pad(row);
                    match (&mut col.data, value) {
                        (KeyData::Str(b), Value::Str(s)) => b.append_value(self.parsed.text(text, s)),
                        (KeyData::U64(b), Value::U64(n)) => b.append_value(*n),
                        _ => unreachable!("the registry returns a column of the value's type"),
                    }
                    col.len = row + 1;
                }
            }
            Err(_) => {
                counts.unparsed += 1;
                a.time_ns.append_value(meta.received_ns);
                let lossy = String::from_utf8_lossy(line);
                let mut end = lossy.len().min(UNPARSED_BYTES_MAX);
                while !lossy.is_char_boundary(end) {
                    end -= 1;
                }
                self.overflow.push('{');
                push_json_str(&mut self.overflow, OVERFLOW_UNPARSED);
                self.overflow.push(':');
                push_json_str(&mut self.overflow, &lossy[..end]);
                let cut = line.len().saturating_sub(end);
                if end < lossy.len() {
                    self.overflow.push(',');
                    push_json_str(&mut self.overflow, OVERFLOW_UNPARSED_CUT);
                    self.overflow.push(':');
                    self.overflow.push_str(&cut.to_string());
                }
            }
        }
        if self.overflow.is_empty() {
            a.overflow.append_null();
        } else {
            self.overflow.push('}');
            a.overflow.append_value(&self.overflow);
        }
        a.source.append_value(meta.source);
        a.stream.append_value(meta.stream_hex);
        a.received_ns.append_value(meta.received_ns);
        a.id.append_value(meta.id.to_be_bytes()).expect("16 bytes for a 16-byte column");
        a.seq.append_value(meta.seq);
        a.rows += 1;
        a.bytes += line.len() + ACTIVE_ROW_BYTES;
        self.rows += 1;
        if self.first_row_at.is_none() {
            self.first_row_at = Some(Instant::now());
        }
        self.active_rows += 1;
        if self.active_rows >= FREEZE_ROWS {
            self.freeze(registry);
        }
        counts
    }

    /// Every active part with rows becomes a frozen batch.
    fn freeze(&mut self, registry: &Registry) {
        for a in self.actives.iter_mut().filter(|a| a.rows > 0) {
            let batch = a.finish(registry);
            self.frozen_bytes += batch.get_array_memory_size();
            self.frozen.push(batch);
        }
        self.active_rows = 0;
    }

    /// Every row, as batches aligned to the registry's full schema. Cheap for frozen rows (shared,
    /// aligned once per schema), a copy of at most [`FREEZE_ROWS`] rows for the active part.
    pub fn snapshot(&mut self, registry: &Registry) -> Vec<RecordBatch> {
        let schema = registry.schema();
        if !self.aligned_to.as_ref().is_some_and(|a| Arc::ptr_eq(a, &schema)) {
            self.aligned.clear();
            self.aligned_to = Some(schema.clone());
        }
        for b in &self.frozen[self.aligned.len()..] {
            self.aligned.push(align(b, &schema));
        }
        let mut out = self.aligned.clone();
        for a in self.actives.iter_mut().filter(|a| a.rows > 0) {
            out.push(align(&a.batch_from(registry, 0), &schema));
        }
        out
    }

    /// The rows with a `sluice_seq` above `after`, aligned to the registry's full schema (not in
    /// seq order: see [`in_seq_order`]). Copies only the active rows among them: what the live
    /// tail asks after every group commit, where a whole [`Buffer::snapshot`] would copy every
    /// active row each time.
    pub fn rows_after(&mut self, registry: &Registry, after: u64) -> Vec<RecordBatch> {
        let schema = registry.schema();
        let mut out: Vec<RecordBatch> = self.frozen.iter().filter_map(|b| suffix_after(b, after)).collect();
        for a in &mut self.actives {
            let seqs = a.seq.values_slice();
            let start = seqs.partition_point(|&s| s <= after);
            if start < seqs.len() {
                out.push(a.batch_from(registry, start));
            }
        }
        out.iter().map(|b| align(b, &schema)).collect()
    }

    /// Take every row out (for a flush); the buffer is empty afterwards.
    pub fn take(&mut self, registry: &Registry) -> Vec<RecordBatch> {
        self.freeze(registry);
        // The parts of shapes not seen since the last take make room for new ones.
        self.actives.retain(|a| a.used);
        self.shapes.clear();
        for (i, a) in self.actives.iter_mut().enumerate() {
            a.used = false;
            self.shapes.insert(a.shape, i);
        }
        self.rows = 0;
        self.frozen_bytes = 0;
        self.first_row_at = None;
        self.aligned.clear();
        std::mem::take(&mut self.frozen)
    }

    /// Put rows back in front (a flush that failed).
    pub fn put_back(&mut self, mut batches: Vec<RecordBatch>) {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            return;
        }
        self.frozen_bytes += batches.iter().map(|b| b.get_array_memory_size()).sum::<usize>();
        batches.append(&mut self.frozen);
        self.frozen = batches;
        self.aligned.clear();
        self.rows += rows;
        self.first_row_at = Some(self.first_row_at.map_or(Instant::now(), |t| t.min(Instant::now())));
    }
}

fn overflow_pair(out: &mut String, key: &str, value: &Value, parsed: &Parsed, text: &str) {
    out.push(if out.is_empty() { '{' } else { ',' });
    push_json_str(out, key);
    out.push(':');
    match value {
        Value::Str(s) => push_json_str(out, parsed.text(text, s)),
        Value::U64(n) => out.push_str(&n.to_string()),
    }
}

/// Append `s` as a JSON string.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[from..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => out.push_str(&format!("\\u{b:04x}")),
        }
        from = i + 1;
    }
    out.push_str(&s[from..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, StringArray, UInt64Array};

    fn meta(seq: u64) -> LineMeta<'static> {
        LineMeta { source: "src", stream_hex: "00", received_ns: 77, seq, id: seq as u128 }
    }

    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
        b.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
    }

    #[test]
    fn types_are_decided_by_the_first_value_and_conflicts_overflow() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        buf.push_line(&mut reg, br#"{"time_ns":1,"a":"x","n":5}"#, &meta(1));
        let c = buf.push_line(&mut reg, br#"{"time_ns":2,"a":7,"n":"five","sluice_seq":"forged"}"#, &meta(2));
        assert_eq!(c.overflow_values, 3);
        buf.push_line(&mut reg, br#"{"time_ns":3,"b":"y"}"#, &meta(3));
        let c = buf.push_line(&mut reg, b"garbage \"line\"", &meta(4));
        assert_eq!(c.unparsed, 1);
        let c = buf.push_line(&mut reg, br#"{"time_ns":5,"a":"first","a":"second","\u0061":"third"}"#, &meta(5));
        assert_eq!(c.overflow_values, 2);
        let batches = in_seq_order(buf.snapshot(&reg));
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.schema().field_with_name("a").unwrap().data_type(), &DataType::Utf8);
        assert_eq!(b.schema().field_with_name("n").unwrap().data_type(), &DataType::UInt64);
        let a = col::<StringArray>(b, "a");
        assert_eq!((a.value(0), a.is_null(1), a.is_null(2)), ("x", true, true));
        let n = col::<UInt64Array>(b, "n");
        assert_eq!((n.value(0), n.is_null(1)), (5, true));
        let o = col::<StringArray>(b, COL_OVERFLOW);
        assert!(o.is_null(0));
        assert_eq!(o.value(1), r#"{"a":7,"n":"five","sluice_seq":"forged"}"#);
        assert_eq!(o.value(3), r#"{"sluice_unparsed":"garbage \"line\""}"#);
        assert_eq!(col::<UInt64Array>(b, COL_TIME_NS).values(), &[1, 2, 3, 77, 5]);
        assert_eq!(a.value(4), "first");
        assert_eq!(o.value(4), r#"{"a":"second","a":"third"}"#);
        assert_eq!(col::<StringArray>(b, "b").value(2), "y");
    }

    #[test]
    fn keys_past_the_cap_overflow() {
        let mut reg = Registry::new(&[], 2);
        let mut buf = Buffer::default();
        let c = buf.push_line(&mut reg, br#"{"time_ns":1,"a":"x","b":1,"c":"z"}"#, &meta(1));
        assert_eq!(c.overflow_values, 1);
        assert_eq!(reg.keys().len(), 2);
        let b = &buf.snapshot(&reg)[0];
        assert!(b.column_by_name("c").is_none());
        assert_eq!(col::<StringArray>(b, COL_OVERFLOW).value(0), r#"{"c":"z"}"#);
    }

    /// `snapshot` filtered by seq, as one batch: what `rows_after` must equal.
    fn after_by_snapshot(buf: &mut Buffer, reg: &Registry, after: u64) -> RecordBatch {
        let all = arrow_select::concat::concat_batches(&reg.schema(), &buf.snapshot(reg)).unwrap();
        let keep: arrow_array::BooleanArray =
            col::<UInt64Array>(&all, COL_SEQ).iter().map(|s| Some(s.unwrap() > after)).collect();
        arrow_select::filter::filter_record_batch(&all, &keep).unwrap()
    }

    #[test]
    fn rows_after_equal_the_snapshot_past_a_seq() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        let total = FREEZE_ROWS as u64 + 700;
        let check = |buf: &mut Buffer, reg: &Registry, upto: u64| {
            for after in [0, 1, upto / 2, upto.saturating_sub(3), upto.saturating_sub(1), upto, upto + 5] {
                let got = arrow_select::concat::concat_batches(&reg.schema(), &buf.rows_after(reg, after)).unwrap();
                assert_eq!(got, after_by_snapshot(buf, reg, after), "after {after} of {upto}");
            }
        };
        for seq in 1..=total {
            // Keys come and go (nulls, a key first seen late, a bad line, a conflicting type).
            let line = match seq % 7 {
                0 => format!(r#"{{"time_ns":{seq},"a":"v{seq}","late":{seq}}}"#),
                1 => "not json at all".to_string(),
                2 => format!(r#"{{"time_ns":{seq},"n":{seq},"a":"ünï{seq}"}}"#),
                3 => format!(r#"{{"time_ns":{seq},"n":"text"}}"#),
                _ => format!(r#"{{"time_ns":{seq},"b":"{}"}}"#, "x".repeat((seq % 13) as usize)),
            };
            buf.push_line(&mut reg, line.as_bytes(), &meta(seq));
            if [1, 2, 9, 300, FREEZE_ROWS as u64 - 1, FREEZE_ROWS as u64, FREEZE_ROWS as u64 + 1, total].contains(&seq)
            {
                check(&mut buf, &reg, seq);
            }
        }
        // A schema grown after freezing: the frozen rows gain the new column as nulls.
        buf.push_line(&mut reg, br#"{"time_ns":1,"newest":"z"}"#, &meta(total + 1));
        check(&mut buf, &reg, total + 1);
        assert!(buf.rows_after(&reg, total + 1).is_empty());
        // Against the other way of building batches (emptying the builders): the same rows.
        let copied = arrow_select::concat::concat_batches(&reg.schema(), &buf.rows_after(&reg, 0)).unwrap();
        let taken: Vec<RecordBatch> = buf.take(&reg).iter().map(|b| align(b, &reg.schema())).collect();
        assert_eq!(copied, arrow_select::concat::concat_batches(&reg.schema(), &taken).unwrap());
    }

    #[test]
    fn freezing_and_take_keep_every_row() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        let n = 2 * FREEZE_ROWS;
        for i in 0..n {
            let line = if i % 3 == 0 {
                format!(r#"{{"time_ns":{i},"k{}":"v"}}"#, i % 5)
            } else {
                format!(r#"{{"time_ns":{i},"x":{i}}}"#)
            };
            buf.push_line(&mut reg, line.as_bytes(), &meta(i as u64));
        }
        let snap = buf.snapshot(&reg);
        assert_eq!(snap.iter().map(|b| b.num_rows()).sum::<usize>(), n);
        assert!(snap.iter().all(|b| b.schema() == reg.schema()));
        let active: usize = buf.actives.iter().map(|a| a.rows).sum();
        assert!(active < FREEZE_ROWS, "a snapshot copies {active} active rows");
        let taken = buf.take(&reg);
        assert_eq!(taken.iter().map(|b| b.num_rows()).sum::<usize>(), n);
        assert_eq!(buf.rows(), 0);
        // Each batch holds one shape: its key columns are those of the shape, without a null.
        for b in &taken {
            let schema = b.schema();
            let keys: Vec<&str> = schema.fields()[FIXED_COLUMNS.len()..].iter().map(|f| f.name().as_str()).collect();
            assert_eq!(keys.len(), 1, "one key per line here: {keys:?}");
            assert_eq!(b.column_by_name(keys[0]).unwrap().null_count(), 0, "{keys:?}");
            let seqs = col::<UInt64Array>(b, COL_SEQ).values();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "rows of a shape stay in seq order");
        }
        assert_eq!(taken.len(), 2 * 6, "six shapes, all frozen at FREEZE_ROWS rows together and at the take");
        let mut seqs: Vec<u64> = taken.iter().flat_map(|b| col::<UInt64Array>(b, COL_SEQ).values().to_vec()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (0..n as u64).collect::<Vec<_>>());
    }

    #[test]
    fn lines_are_kept_apart_by_their_set_of_keys_up_to_the_bound() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        // The same keys in another order, or a key given twice, are the same shape.
        buf.push_line(&mut reg, br#"{"time_ns":1,"a":"x","n":1}"#, &meta(1));
        buf.push_line(&mut reg, br#"{"time_ns":2,"n":2,"a":"y"}"#, &meta(2));
        buf.push_line(&mut reg, br#"{"time_ns":3,"a":"z","n":3,"a":"again"}"#, &meta(3));
        buf.push_line(&mut reg, br#"{"time_ns":4,"b":"w"}"#, &meta(4));
        buf.push_line(&mut reg, b"not json", &meta(5));
        // A value of the other type is not in its column: that line has the shape {n}.
        buf.push_line(&mut reg, br#"{"time_ns":6,"a":7,"n":6}"#, &meta(6));
        let widths = |batches: &[RecordBatch]| -> Vec<(usize, usize)> {
            batches.iter().map(|b| (b.num_columns() - FIXED_COLUMNS.len(), b.num_rows())).collect()
        };
        let taken = buf.take(&reg);
        assert_eq!(widths(&taken), [(2, 3), (1, 1), (0, 1), (1, 1)]);
        // Past SHAPES_MAX shapes, the lines of new shapes go to the first part: nothing is lost.
        let mut buf = Buffer::default();
        let mut seq = 10;
        for i in 0..SHAPES_MAX + 5 {
            for _ in 0..2 {
                seq += 1;
                buf.push_line(&mut reg, format!(r#"{{"time_ns":1,"k{i}":{seq}}}"#).as_bytes(), &meta(seq));
            }
        }
        let taken = buf.take(&reg);
        assert_eq!(taken.len(), SHAPES_MAX, "every part, the first one's batch wider");
        assert_eq!(widths(&taken)[0], (6, 2 + 5 * 2));
        assert_eq!(taken.iter().map(|b| b.num_rows()).sum::<usize>(), 2 * (SHAPES_MAX + 5));
        // And in seq order again, every value in place.
        let all = in_seq_order(taken.iter().map(|b| align(b, &reg.schema())).collect());
        let all = arrow_select::concat::concat_batches(&reg.schema(), &all).unwrap();
        let seqs = col::<UInt64Array>(&all, COL_SEQ);
        assert_eq!(seqs.values().to_vec(), (11..=seq).collect::<Vec<_>>());
        for r in 0..all.num_rows() {
            let key = format!("k{}", r / 2);
            assert_eq!(col::<UInt64Array>(&all, &key).value(r), seqs.value(r), "row {r}");
        }
        // A take keeps the parts that had rows since the last one and frees the others' places.
        buf.push_line(&mut reg, br#"{"time_ns":1,"new":1}"#, &meta(1000));
        assert_eq!(buf.actives.len(), SHAPES_MAX, "still full: the line went to the first part");
        assert_eq!(widths(&buf.take(&reg)), [(1, 1)]);
        assert_eq!(buf.actives.len(), 1);
        buf.push_line(&mut reg, br#"{"time_ns":1,"new":1}"#, &meta(1001));
        buf.push_line(&mut reg, br#"{"time_ns":1,"newer":1}"#, &meta(1002));
        assert_eq!(buf.actives.len(), 3);
        assert_eq!(widths(&buf.take(&reg)), [(1, 1), (1, 1)]);
    }

    #[test]
    fn bytes_follow_the_rows_held() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        let value = "v".repeat(1000);
        let n = FREEZE_ROWS + 10;
        for i in 0..n {
            let line = format!(r#"{{"time_ns":{i},"text":"{value}"}}"#);
            buf.push_line(&mut reg, line.as_bytes(), &meta(i as u64));
        }
        let held = buf.bytes();
        assert!(held >= n * 1000, "{held} bytes for {n} rows of 1000-byte values");
        assert!(held <= n * 1400, "{held} bytes for {n} rows of 1000-byte values");
        let taken = buf.take(&reg);
        assert_eq!(buf.bytes(), 0);
        let frozen: usize = taken.iter().map(|b| b.get_array_memory_size()).sum();
        buf.put_back(taken);
        assert_eq!(buf.bytes(), frozen);
    }

    #[test]
    fn aligning_shares_one_null_array_per_type() {
        let mut reg = Registry::new(&[], 1000);
        let mut buf = Buffer::default();
        buf.push_line(&mut reg, br#"{"time_ns":1,"b":"x","k":2}"#, &meta(1));
        for i in 0..300 {
            reg.column(&format!("s{i}"), KeyType::Utf8).unwrap();
            reg.column(&format!("u{i}"), KeyType::Uint64).unwrap();
        }
        reg.column("a", KeyType::Utf8).unwrap();
        let batch = buf.take(&reg).remove(0);
        let schema = reg.schema();
        let aligned = align(&batch, &schema);
        assert_eq!(aligned.schema(), schema);
        for name in ["b", "k", "time_ns", "sluice_id"] {
            let (want, got) = (batch.column_by_name(name).unwrap(), aligned.column_by_name(name).unwrap());
            assert!(Arc::ptr_eq(want, got), "{name} is the batch's own column");
        }
        let missing: Vec<&ArrayRef> = schema
            .fields()
            .iter()
            .filter(|f| batch.column_by_name(f.name()).is_none())
            .map(|f| aligned.column_by_name(f.name()).unwrap())
            .collect();
        assert_eq!(missing.len(), 601);
        assert!(missing.iter().all(|c| c.null_count() == 1 && c.len() == 1));
        let mut distinct: Vec<&ArrayRef> = Vec::new();
        for c in &missing {
            if !distinct.iter().any(|d| Arc::ptr_eq(d, c)) {
                distinct.push(c);
            }
        }
        assert_eq!(distinct.len(), 2, "one all-null array for strings, one for integers");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, r#""a\"b\\c\n\u0001é""#);
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}é");
    }
}
