//! Answer formats of `/api/sql` and `/api/search`, chosen by `Accept`, and the row objects of
//! `/api/tail`. It does not run queries or set statuses (the API does).
//!
//! | `Accept` | body |
//! |---|---|
//! | `application/json` (default, `*/*`) | `{"columns":[{"name":…,"type":…}],"rows":[{…}],"truncated":false,"stats":{…}}` |
//! | `application/x-ndjson` | one row object a line |
//! | `text/csv` | a header line, then one line a row (RFC 4180: quoted when needed, CRLF) |
//! | `application/vnd.apache.arrow.stream` | an Arrow IPC stream |
//!
//! Every format but JSON carries the stats in the `Sluice-Stats` header (the API sets it).
//!
//! A row object maps column names to JSON values: integers and floats as numbers (a float that is
//! not finite as `null`), strings as strings, binary values (`sluice_id`) as lowercase hex,
//! timestamps as RFC 3339 strings in UTC, decimals as numbers, anything else as the text Arrow
//! prints for it. A null is `null`, or left out with [`Nulls::Omit`] (search and tail rows,
//! where events are sparse and a row should look like the event). In CSV a null is an empty
//! field.

use std::io::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, FixedSizeBinaryArray, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde::Serialize;
use sluice_sql::{QueryOutput, QueryStats};

pub const JSON: &str = "application/json";
pub const NDJSON: &str = "application/x-ndjson";
pub const CSV: &str = "text/csv";
pub const ARROW: &str = "application/vnd.apache.arrow.stream";

/// An answer format (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Ndjson,
    Csv,
    Arrow,
}

impl Format {
    /// The first supported type of an `Accept` header, in the client's order (quality values
    /// are not weighed: clients of this API name one type). No header, or `*/*`, is JSON.
    pub fn from_accept(accept: Option<&str>) -> Result<Format, String> {
        let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(Format::Json) };
        for item in accept.split(',') {
            let mime = item.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            let format = match mime.as_str() {
                JSON | "*/*" | "application/*" => Format::Json,
                NDJSON | "application/ndjson" | "application/jsonl" => Format::Ndjson,
                CSV | "text/*" => Format::Csv,
                ARROW => Format::Arrow,
                _ => continue,
            };
            return Ok(format);
        }
        Err(format!("Accept {accept:?} names no format this API writes; ask for {JSON}, {NDJSON}, {CSV} or {ARROW}"))
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => ARROW,
        }
    }
}

/// What a row object does with nulls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nulls {
    /// `"column": null`.
    Keep,
    /// The column is left out of that row.
    Omit,
}

/// A column ready to be written cell by cell, in one of the few shapes the writers know.
enum Column {
    Null,
    Bool(BooleanArray),
    I64(Int64Array),
    U64(UInt64Array),
    F64(Float64Array),
    Str(StringArray),
    Binary(BinaryArray),
    Fixed(FixedSizeBinaryArray),
    /// Raw values and nanoseconds per unit.
    Time(Int64Array, i64),
    /// Decimals: Arrow's text is a valid JSON number.
    Number(Vec<Option<String>>),
    /// Everything else, as Arrow prints it.
    Text(Vec<Option<String>>),
}

fn cast_to(array: &ArrayRef, to: &DataType) -> Result<ArrayRef, ArrowError> {
    cast(array.as_ref(), to)
}

fn printed(array: &ArrayRef) -> Result<Vec<Option<String>>, ArrowError> {
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(array.as_ref(), &options)?;
    Ok((0..array.len()).map(|i| if array.is_null(i) { None } else { Some(f.value(i).to_string()) }).collect())
}

impl Column {
    fn new(array: &ArrayRef) -> Result<Column, ArrowError> {
        use DataType as T;
        Ok(match array.data_type() {
            T::Null => Column::Null,
            T::Boolean => Column::Bool(array.as_boolean().clone()),
            T::Int8 | T::Int16 | T::Int32 | T::Int64 => Column::I64(cast_to(array, &T::Int64)?.as_primitive().clone()),
            T::UInt8 | T::UInt16 | T::UInt32 | T::UInt64 => {
                Column::U64(cast_to(array, &T::UInt64)?.as_primitive().clone())
            }
            T::Float16 | T::Float32 | T::Float64 => Column::F64(cast_to(array, &T::Float64)?.as_primitive().clone()),
            T::Utf8 | T::LargeUtf8 | T::Utf8View => Column::Str(cast_to(array, &T::Utf8)?.as_string::<i32>().clone()),
            T::Binary | T::LargeBinary | T::BinaryView => {
                Column::Binary(cast_to(array, &T::Binary)?.as_binary::<i32>().clone())
            }
            T::FixedSizeBinary(_) => Column::Fixed(array.as_fixed_size_binary().clone()),
            T::Timestamp(unit, _) => {
                let per = match unit {
                    TimeUnit::Second => 1_000_000_000,
                    TimeUnit::Millisecond => 1_000_000,
                    TimeUnit::Microsecond => 1_000,
                    TimeUnit::Nanosecond => 1,
                };
                Column::Time(cast_to(array, &T::Int64)?.as_primitive().clone(), per)
            }
            T::Decimal32(..) | T::Decimal64(..) | T::Decimal128(..) | T::Decimal256(..) => {
                Column::Number(printed(array)?)
            }
            _ => Column::Text(printed(array)?),
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::Null => true,
            Column::Bool(a) => a.is_null(row),
            Column::I64(a) => a.is_null(row),
            Column::U64(a) => a.is_null(row),
            Column::F64(a) => a.is_null(row) || !a.value(row).is_finite(),
            Column::Str(a) => a.is_null(row),
            Column::Binary(a) => a.is_null(row),
            Column::Fixed(a) => a.is_null(row),
            Column::Time(a, _) => a.is_null(row),
            Column::Number(v) | Column::Text(v) => v[row].is_none(),
        }
    }

    /// The cell as JSON; the caller has checked [`Column::is_null`].
    fn write_json(&self, row: usize, out: &mut Vec<u8>) {
        match self {
            Column::Null => out.extend_from_slice(b"null"),
            Column::Bool(a) => out.extend_from_slice(if a.value(row) { b"true" } else { b"false" }),
            Column::I64(a) => push_display(out, a.value(row)),
            Column::U64(a) => push_display(out, a.value(row)),
            Column::F64(a) => push_display(out, a.value(row)),
            Column::Str(a) => push_json_str(out, a.value(row)),
            Column::Binary(a) => push_hex_quoted(out, a.value(row)),
            Column::Fixed(a) => push_hex_quoted(out, a.value(row)),
            Column::Time(a, per) => push_json_str(out, &rfc3339(a.value(row), *per)),
            Column::Number(v) => out.extend_from_slice(v[row].as_deref().unwrap_or("null").as_bytes()),
            Column::Text(v) => push_json_str(out, v[row].as_deref().unwrap_or("")),
        }
    }

    /// The cell as a CSV field; empty for null.
    fn write_csv(&self, row: usize, out: &mut Vec<u8>) {
        if self.is_null(row) {
            return;
        }
        match self {
            Column::Str(a) => push_csv_str(out, a.value(row)),
            Column::Time(a, per) => out.extend_from_slice(rfc3339(a.value(row), *per).as_bytes()),
            Column::Number(v) | Column::Text(v) => push_csv_str(out, v[row].as_deref().unwrap_or("")),
            Column::Binary(a) => push_hex(out, a.value(row)),
            Column::Fixed(a) => push_hex(out, a.value(row)),
            // Numbers and booleans are written as in JSON, which CSV needs no quotes for.
            other => other.write_json(row, out),
        }
    }
}

fn push_display(out: &mut Vec<u8>, v: impl std::fmt::Display) {
    let _ = write!(out, "{v}");
}

fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

fn push_hex_quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    push_hex(out, bytes);
    out.push(b'"');
}

fn push_csv_str(out: &mut Vec<u8>, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (the inverse of the
/// days-from-civil algorithm sluice-query uses).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A timestamp of `value` units of `ns_per_unit` nanoseconds since the epoch, as RFC 3339 UTC
/// with as many fraction digits as it needs (none, 3, 6 or 9).
pub fn rfc3339(value: i64, ns_per_unit: i64) -> String {
    let ns = i128::from(value) * i128::from(ns_per_unit);
    let secs = ns.div_euclid(1_000_000_000);
    let frac = ns.rem_euclid(1_000_000_000) as u32;
    let days = secs.div_euclid(86_400) as i64;
    let sod = secs.rem_euclid(86_400) as u32;
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (sod / 3600, sod / 60 % 60, sod % 60);
    let fraction = if frac == 0 {
        String::new()
    } else if frac.is_multiple_of(1_000_000) {
        format!(".{:03}", frac / 1_000_000)
    } else if frac.is_multiple_of(1_000) {
        format!(".{:06}", frac / 1_000)
    } else {
        format!(".{frac:09}")
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{fraction}Z")
}

/// Writes row objects of one batch.
pub struct RowEncoder {
    /// Column names as JSON strings, with the colon.
    keys: Vec<Vec<u8>>,
    columns: Vec<Column>,
    rows: usize,
}

impl RowEncoder {
    pub fn new(batch: &RecordBatch) -> Result<RowEncoder, ArrowError> {
        let schema = batch.schema();
        let keys = schema
            .fields()
            .iter()
            .map(|f| {
                let mut k = Vec::with_capacity(f.name().len() + 3);
                push_json_str(&mut k, f.name());
                k.push(b':');
                k
            })
            .collect();
        let columns = batch.columns().iter().map(Column::new).collect::<Result<_, _>>()?;
        Ok(RowEncoder { keys, columns, rows: batch.num_rows() })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `row` as one JSON object.
    pub fn write_row(&self, row: usize, nulls: Nulls, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        for (key, col) in self.keys.iter().zip(&self.columns) {
            let null = col.is_null(row);
            if null && nulls == Nulls::Omit {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            out.extend_from_slice(key);
            if null {
                out.extend_from_slice(b"null");
            } else {
                col.write_json(row, out);
            }
        }
        out.push(b'}');
    }

    fn write_csv_row(&self, row: usize, out: &mut Vec<u8>) {
        for (i, col) in self.columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            col.write_csv(row, out);
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The `columns` entries of the JSON answer.
#[derive(Debug, Serialize)]
struct ColumnInfo<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    data_type: String,
}

/// The stats as the `Sluice-Stats` header carries them.
pub fn stats_json(stats: &QueryStats) -> String {
    serde_json::to_string(stats).expect("plain numbers serialize")
}

/// Why an answer could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    /// Escaping can make text up to six times longer (a control character is `\u0001`): the body
    /// is held to the same limit as the result, checked as it grows.
    #[error("the answer reached {bytes} bytes once encoded")]
    TooLarge { bytes: usize },
}

/// The answer body in `format`, refused once it grows past `bytes_max`.
pub fn encode(out: &QueryOutput, format: Format, nulls: Nulls, bytes_max: usize) -> Result<Bytes, EncodeError> {
    let rows = out.rows();
    let mut buf: Vec<u8> = Vec::with_capacity((64 + rows * 128).min(bytes_max));
    let check =
        |buf: &Vec<u8>| if buf.len() > bytes_max { Err(EncodeError::TooLarge { bytes: buf.len() }) } else { Ok(()) };
    match format {
        Format::Json => {
            buf.extend_from_slice(b"{\"columns\":");
            let columns: Vec<ColumnInfo<'_>> = out
                .schema
                .fields()
                .iter()
                .map(|f| ColumnInfo { name: f.name(), data_type: f.data_type().to_string() })
                .collect();
            serde_json::to_writer(&mut buf, &columns).expect("writing to a Vec cannot fail");
            buf.extend_from_slice(b",\"rows\":[");
            let mut first = true;
            for batch in &out.batches {
                let enc = RowEncoder::new(batch)?;
                for r in 0..enc.rows() {
                    if !first {
                        buf.push(b',');
                    }
                    first = false;
                    enc.write_row(r, nulls, &mut buf);
                    check(&buf)?;
                }
            }
            let _ = write!(buf, "],\"truncated\":{},\"stats\":{}}}", out.truncated, stats_json(&out.stats));
        }
        Format::Ndjson => {
            for batch in &out.batches {
                let enc = RowEncoder::new(batch)?;
                for r in 0..enc.rows() {
                    enc.write_row(r, nulls, &mut buf);
                    buf.push(b'\n');
                    check(&buf)?;
                }
            }
        }
        Format::Csv => {
            for (i, f) in out.schema.fields().iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                push_csv_str(&mut buf, f.name());
            }
            buf.extend_from_slice(b"\r\n");
            for batch in &out.batches {
                let enc = RowEncoder::new(batch)?;
                for r in 0..enc.rows() {
                    enc.write_csv_row(r, &mut buf);
                    check(&buf)?;
                }
            }
        }
        Format::Arrow => {
            let mut w = StreamWriter::try_new(&mut buf, &out.schema)?;
            for batch in &out.batches {
                w.write(batch)?;
                check(w.get_ref())?;
            }
            w.finish()?;
        }
    }
    Ok(Bytes::from(buf))
}

/// `out` without the columns that are null in every row (a search over sparse events would
/// otherwise carry every key the store has ever seen). With no rows, the columns stay.
pub fn without_empty_columns(out: QueryOutput) -> QueryOutput {
    if out.rows() == 0 {
        return out;
    }
    let keep: Vec<usize> = (0..out.schema.fields().len())
        .filter(|&i| out.batches.iter().any(|b| b.column(i).null_count() < b.num_rows()))
        .collect();
    if keep.len() == out.schema.fields().len() {
        return out;
    }
    let fields: Vec<Field> = keep.iter().map(|&i| out.schema.field(i).clone()).collect();
    let schema: SchemaRef = Arc::new(Schema::new_with_metadata(fields, out.schema.metadata().clone()));
    let batches = out.batches.iter().map(|b| b.project(&keep).expect("indexes come from the same schema")).collect();
    QueryOutput { schema, batches, truncated: out.truncated, stats: out.stats }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{FixedSizeBinaryBuilder, TimestampMillisecondArray};

    fn output(batch: RecordBatch) -> QueryOutput {
        QueryOutput { schema: batch.schema(), batches: vec![batch], truncated: false, stats: QueryStats::default() }
    }

    fn sample() -> RecordBatch {
        let mut id = FixedSizeBinaryBuilder::new(16);
        id.append_value([0xab; 16]).unwrap();
        id.append_null();
        RecordBatch::try_from_iter(vec![
            ("time_ns", Arc::new(UInt64Array::from(vec![1, 2])) as ArrayRef),
            ("msg", Arc::new(StringArray::from(vec![Some("a,\"b\"\n"), None])) as ArrayRef),
            ("sluice_id", Arc::new(id.finish()) as ArrayRef),
            ("avg", Arc::new(Float64Array::from(vec![1.5, f64::NAN])) as ArrayRef),
            ("n", Arc::new(Int64Array::from(vec![Some(-3), None])) as ArrayRef),
            ("at", Arc::new(TimestampMillisecondArray::from(vec![1_795_410_000_123, 0])) as ArrayRef),
        ])
        .unwrap()
    }

    /// A control character is six bytes in JSON: a result under the limit can encode far past
    /// it, and the body is refused as it grows, whatever the format.
    #[test]
    fn an_answer_is_held_to_the_limit_once_encoded() {
        let text = "\u{1}".repeat(10_000);
        let batch =
            RecordBatch::try_from_iter(vec![("s", Arc::new(StringArray::from(vec![text.as_str(); 10])) as ArrayRef)])
                .unwrap();
        let raw = 10 * 10_000;
        for format in [Format::Json, Format::Ndjson] {
            match encode(&output(batch.clone()), format, Nulls::Keep, 2 * raw) {
                Err(EncodeError::TooLarge { bytes }) => assert!(bytes > 2 * raw && bytes < 2 * raw + 70_000, "{bytes}"),
                other => panic!("{format:?}: {:?}", other.map(|b| b.len())),
            }
            let whole = encode(&output(batch.clone()), format, Nulls::Keep, usize::MAX).unwrap();
            assert!(whole.len() > 6 * raw, "{format:?}: {} bytes", whole.len());
        }
        // Arrow and CSV carry the bytes as they are: the same limit lets them through.
        for format in [Format::Arrow, Format::Csv] {
            assert!(encode(&output(batch.clone()), format, Nulls::Keep, 2 * raw).is_ok(), "{format:?}");
        }
    }

    #[test]
    fn json_rows_keep_or_omit_nulls_and_write_ids_as_hex() {
        let body = encode(&output(sample()), Format::Json, Nulls::Keep, usize::MAX).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["columns"][0], serde_json::json!({"name":"time_ns","type":"UInt64"}));
        assert_eq!(v["rows"][0]["sluice_id"], "abababababababababababababababab");
        assert_eq!(v["rows"][0]["msg"], "a,\"b\"\n");
        assert_eq!(v["rows"][0]["avg"], 1.5);
        assert_eq!(v["rows"][0]["n"], -3);
        assert_eq!(v["rows"][0]["at"], "2026-11-23T05:00:00.123Z");
        assert_eq!(v["rows"][1]["at"], "1970-01-01T00:00:00Z");
        assert_eq!(v["rows"][1]["msg"], serde_json::Value::Null);
        assert_eq!(v["rows"][1]["avg"], serde_json::Value::Null, "NaN has no JSON form");
        assert_eq!(v["truncated"], false);
        assert_eq!(v["stats"]["segments_read"], 0);

        let body = encode(&output(sample()), Format::Ndjson, Nulls::Omit, usize::MAX).unwrap();
        let lines: Vec<&str> = std::str::from_utf8(&body).unwrap().lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], r#"{"time_ns":2,"at":"1970-01-01T00:00:00Z"}"#);
    }

    #[test]
    fn csv_quotes_as_rfc_4180_says() {
        let body = encode(&output(sample()), Format::Csv, Nulls::Keep, usize::MAX).unwrap();
        let text = std::str::from_utf8(&body).unwrap();
        assert_eq!(
            text,
            "time_ns,msg,sluice_id,avg,n,at\r\n\
             1,\"a,\"\"b\"\"\n\",abababababababababababababababab,1.5,-3,2026-11-23T05:00:00.123Z\r\n\
             2,,,,,1970-01-01T00:00:00Z\r\n"
        );
    }

    #[test]
    fn accept_picks_the_first_known_type() {
        assert_eq!(Format::from_accept(None), Ok(Format::Json));
        assert_eq!(Format::from_accept(Some("*/*")), Ok(Format::Json));
        assert_eq!(Format::from_accept(Some("text/html, text/csv;q=0.9")), Ok(Format::Csv));
        assert_eq!(Format::from_accept(Some("Application/X-NDJSON")), Ok(Format::Ndjson));
        assert_eq!(Format::from_accept(Some(ARROW)), Ok(Format::Arrow));
        assert!(Format::from_accept(Some("image/png")).unwrap_err().contains("text/csv"));
    }

    #[test]
    fn rfc3339_covers_units_and_dates_before_the_epoch() {
        assert_eq!(rfc3339(1_795_410_000, 1_000_000_000), "2026-11-23T05:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_001, 1_000), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(-1, 1), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn empty_columns_are_dropped_for_searches() {
        let out = without_empty_columns(output(sample()));
        let names: Vec<&str> = out.schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["time_ns", "msg", "sluice_id", "avg", "n", "at"]);
        let batch = RecordBatch::try_from_iter(vec![
            ("a", Arc::new(UInt64Array::from(vec![1])) as ArrayRef),
            ("b", Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef),
        ])
        .unwrap();
        let out = without_empty_columns(output(batch));
        assert_eq!(out.schema.fields().len(), 1);
        assert_eq!(out.batches[0].num_columns(), 1);
    }
}
