//! How `sluice query`, `search` and `tail` print rows: an aligned table, a JSON array, NDJSON or
//! CSV, written as rows arrive; the one-line summary of a query's statistics; the one-line form
//! of a live event. It writes into any `io::Write` and never talks to the network.
//!
//! Formats, for rows `{"level":"info","n":3}` and `{"level":"warn, \"x\"","n":null}`:
//!
//! ```text
//! table:     level      n          json:   [
//!            ---------  -                  {"level":"info","n":3},
//!            info       3                  {"level":"warn, \"x\"","n":null}
//!            warn, "x"                     ]
//!
//! csv:       level,n               ndjson: the lines as received
//!            info,3
//!            "warn, ""x""",
//! ```
//!
//! The table takes its columns and widths from the first [`TABLE_SAMPLE_ROWS`] rows, then prints
//! each later row at once in those widths, so memory stays bounded however many rows come. Numbers
//! are right-aligned, a cell longer than [`COLUMN_CHARS_MAX`] characters is cut with `…`, control
//! characters inside strings are escaped (`\n`, `\t`) so that a row stays on one line, and a null
//! is an empty cell. CSV quotes a field only when it holds a comma, a quote or a line end (RFC
//! 4180), writes a null as an empty field and ends lines with `\n`; its columns are those of the
//! first row.

use std::fmt;
use std::io::{self, Write};

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Widest a table column gets, in characters; longer cells end in `…`.
pub const COLUMN_CHARS_MAX: usize = 60;
/// Rows the table reads before it decides on columns and widths.
pub const TABLE_SAMPLE_ROWS: usize = 1000;
/// Between two table columns.
const COLUMN_GAP: &str = "  ";
const ELLIPSIS: char = '…';

/// An output format, chosen with `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a person (tail: one line per event).
    Table,
    /// One JSON array of row objects (tail: one object per line, like ndjson).
    Json,
    /// One JSON object per line, as the store sends them.
    Ndjson,
    /// A header line, then one line per row (RFC 4180 quoting); not for tail.
    Csv,
}

/// One result row: the line as received and its fields in the order the store sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub raw: Vec<u8>,
    pub fields: Vec<(String, Value)>,
}

impl Row {
    /// Parse one NDJSON line, which must hold a JSON object.
    pub fn parse(line: &[u8]) -> Result<Row, serde_json::Error> {
        let Fields(fields) = serde_json::from_slice(line)?;
        Ok(Row { raw: line.to_vec(), fields })
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// The fields of a JSON object in their order on the wire (serde_json's `Map` would sort them,
/// and a table's columns must come in the order the query asked for).
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object (one row)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    fields.push((k, v));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

/// Writes rows in one format as they come; [`RowWriter::finish`] completes the output.
pub struct RowWriter<W: Write> {
    format: Format,
    out: W,
    rows: u64,
    table: Table,
    csv_columns: Option<Vec<String>>,
}

impl<W: Write> RowWriter<W> {
    pub fn new(format: Format, out: W) -> RowWriter<W> {
        RowWriter { format, out, rows: 0, table: Table::default(), csv_columns: None }
    }

    /// Rows written (or held for the table) so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn out_mut(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn row(&mut self, row: Row) -> io::Result<()> {
        self.rows += 1;
        match self.format {
            Format::Ndjson => {
                self.out.write_all(&row.raw)?;
                self.out.write_all(b"\n")
            }
            Format::Json => {
                self.out.write_all(if self.rows == 1 { b"[\n" } else { b",\n" })?;
                self.out.write_all(&row.raw)
            }
            Format::Csv => {
                let columns =
                    self.csv_columns.get_or_insert_with(|| row.fields.iter().map(|(k, _)| k.clone()).collect());
                if self.rows == 1 {
                    let header: Vec<String> = columns.iter().map(|c| csv_field(c)).collect();
                    writeln!(self.out, "{}", header.join(","))?;
                }
                let line: Vec<String> =
                    columns.iter().map(|c| csv_field(&row.get(c).map(plain_text).unwrap_or_default())).collect();
                writeln!(self.out, "{}", line.join(","))
            }
            Format::Table => self.table.row(row, &mut self.out),
        }
    }

    /// Ends the output (closes the JSON array, prints a table that had fewer rows than the
    /// sample) and flushes.
    pub fn finish(&mut self) -> io::Result<()> {
        match self.format {
            Format::Json => self.out.write_all(if self.rows == 0 { b"[]\n" } else { b"\n]\n" })?,
            Format::Table => self.table.flush_sample(&mut self.out)?,
            Format::Ndjson | Format::Csv => {}
        }
        self.out.flush()
    }
}

/// The table's state: rows held back until the widths are known, then the layout.
#[derive(Default)]
struct Table {
    sample: Vec<Row>,
    layout: Option<Layout>,
}

struct Layout {
    columns: Vec<String>,
    widths: Vec<usize>,
    numeric: Vec<bool>,
}

impl Table {
    fn row(&mut self, row: Row, out: &mut impl Write) -> io::Result<()> {
        if let Some(layout) = &self.layout {
            return layout.write_row(&row, out);
        }
        self.sample.push(row);
        if self.sample.len() >= TABLE_SAMPLE_ROWS {
            self.flush_sample(out)?;
        }
        Ok(())
    }

    fn flush_sample(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.layout.is_some() || self.sample.is_empty() {
            return Ok(());
        }
        let layout = Layout::from_sample(&self.sample);
        layout.write_header(out)?;
        for row in std::mem::take(&mut self.sample) {
            layout.write_row(&row, out)?;
        }
        self.layout = Some(layout);
        Ok(())
    }
}

impl Layout {
    fn from_sample(sample: &[Row]) -> Layout {
        let mut columns: Vec<String> = Vec::new();
        for row in sample {
            for (k, _) in &row.fields {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let mut widths: Vec<usize> = columns.iter().map(|c| c.chars().count().min(COLUMN_CHARS_MAX)).collect();
        let mut numeric = vec![false; columns.len()];
        let mut other = vec![false; columns.len()];
        for row in sample {
            for (i, c) in columns.iter().enumerate() {
                match row.get(c) {
                    None | Some(Value::Null) => {}
                    Some(v) => {
                        numeric[i] |= v.is_number();
                        other[i] |= !v.is_number();
                        widths[i] = widths[i].max(cell_text(v).chars().count().min(COLUMN_CHARS_MAX));
                    }
                }
            }
        }
        let numeric = numeric.iter().zip(&other).map(|(n, o)| *n && !*o).collect();
        Layout { columns, widths, numeric }
    }

    fn write_header(&self, out: &mut impl Write) -> io::Result<()> {
        let names: Vec<String> = self.columns.clone();
        self.write_cells(&names, out)?;
        let rules: Vec<String> = self.widths.iter().map(|w| "-".repeat(*w)).collect();
        // Rules fill their width whatever the alignment; left alignment keeps the code simple.
        let mut line = rules.join(COLUMN_GAP);
        line.truncate(line.trim_end().len());
        writeln!(out, "{line}")
    }

    fn write_row(&self, row: &Row, out: &mut impl Write) -> io::Result<()> {
        let cells: Vec<String> = self.columns.iter().map(|c| row.get(c).map(cell_text).unwrap_or_default()).collect();
        self.write_cells(&cells, out)
    }

    fn write_cells(&self, cells: &[String], out: &mut impl Write) -> io::Result<()> {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i > 0 {
                line.push_str(COLUMN_GAP);
            }
            let cell = fit(cell, self.widths[i]);
            let pad = self.widths[i] - cell.chars().count();
            if self.numeric[i] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(&cell);
            } else {
                line.push_str(&cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line.truncate(line.trim_end_matches(' ').len());
        writeln!(out, "{line}")
    }
}

/// `text` cut to `width` characters, its last one replaced by `…` when it was longer.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push(ELLIPSIS);
    cut
}

/// A value as a table cell: strings without quotes and with control characters escaped, null
/// empty, numbers and booleans as JSON writes them, arrays and objects as compact JSON.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => escape_controls(s),
        other => plain_text(other),
    }
}

/// A value as CSV or logfmt text before quoting: strings as they are, null empty, the rest JSON.
fn plain_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn escape_controls(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// One CSV field, quoted when it must be (RFC 4180).
pub fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The store's statistics for one query, from the `Sluice-Stats` header.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub rows_scanned: u64,
    pub bytes_scanned: u64,
    pub segments_read: u64,
    pub segments_skipped: u64,
    pub buffer_rows: u64,
    pub elapsed_ms: f64,
}

/// The one-line summary printed on stderr after a query:
/// `3 rows · scanned 1200 rows, 45.6 kB · segments read 2, skipped 10 · 12.3 ms`.
/// Without statistics from the store it gives the rows and the time the client measured.
pub fn summary(rows: u64, stats: Option<&Stats>, client_elapsed_ms: f64) -> String {
    let rows_text = plural(rows, "row");
    match stats {
        Some(s) => format!(
            "{rows_text} · scanned {}, {} · segments read {}, skipped {} · {:.1} ms",
            plural(s.rows_scanned, "row"),
            human_bytes(s.bytes_scanned),
            s.segments_read,
            s.segments_skipped,
            s.elapsed_ms
        ),
        None => format!("{rows_text} · {client_elapsed_ms:.1} ms"),
    }
}

fn plural(n: u64, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Bytes in decimal units with one decimal (`999 bytes`, `45.6 kB`, `1.2 GB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return plural(n, "byte");
    }
    let mut value = n as f64;
    let mut unit = UNITS[0];
    for u in UNITS {
        value /= 1000.0;
        unit = u;
        if value < 999.95 {
            break;
        }
    }
    format!("{value:.1} {unit}")
}

/// Columns a live event's line does not repeat: the time and source lead the line, the rest is
/// bookkeeping a person watching a tail does not need.
const TAIL_HIDDEN: [&str; 6] =
    ["time_ns", "sluice_source", "sluice_stream", "sluice_received_ns", "sluice_id", "sluice_seq"];

/// One live event as a line for a person:
/// `2024-05-01T12:00:00.123Z  web-1  level=info msg="GET /" status=200`.
/// `time_ns` becomes UTC time with milliseconds; nulls are left out; values holding a space, `=`,
/// a quote or a control character are quoted JSON-style (logfmt).
pub fn tail_line(row: &Row) -> String {
    let time = match row.get("time_ns").and_then(Value::as_u64) {
        Some(ns) => rfc3339_ms(ns),
        None => "-".to_string(),
    };
    let source = match row.get("sluice_source") {
        Some(Value::String(s)) => escape_controls(s),
        _ => "-".to_string(),
    };
    let mut line = format!("{time}  {source} ");
    for (k, v) in &row.fields {
        if v.is_null() || TAIL_HIDDEN.contains(&k.as_str()) {
            continue;
        }
        line.push(' ');
        line.push_str(&escape_controls(k));
        line.push('=');
        match v {
            Value::String(s)
                if s.is_empty() || s.contains(|c: char| c == ' ' || c == '=' || c == '"' || c.is_control()) =>
            {
                line.push_str(&v.to_string())
            }
            other => line.push_str(&plain_text(other)),
        }
    }
    line.truncate(line.trim_end().len());
    line
}

/// Nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, proleptic Gregorian).
pub fn rfc3339_ms(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let ms = (ns % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Howard Hinnant's `civil_from_days`, for days on or after 1970-01-01 (time_ns is unsigned).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(lines: &[&str]) -> Vec<Row> {
        lines.iter().map(|l| Row::parse(l.as_bytes()).unwrap()).collect()
    }

    fn render(format: Format, lines: &[&str]) -> String {
        let mut w = RowWriter::new(format, Vec::new());
        for row in rows(lines) {
            w.row(row).unwrap();
        }
        w.finish().unwrap();
        String::from_utf8(w.out).unwrap()
    }

    const DOC_ROWS: [&str; 2] = [r#"{"level":"info","n":3}"#, r#"{"level":"warn, \"x\"","n":null}"#];

    #[test]
    fn documented_example_holds() {
        assert_eq!(render(Format::Table, &DOC_ROWS), "level      n\n---------  -\ninfo       3\nwarn, \"x\"\n");
        assert_eq!(render(Format::Json, &DOC_ROWS), format!("[\n{},\n{}\n]\n", DOC_ROWS[0], DOC_ROWS[1]));
        assert_eq!(render(Format::Ndjson, &DOC_ROWS), format!("{}\n{}\n", DOC_ROWS[0], DOC_ROWS[1]));
        assert_eq!(render(Format::Csv, &DOC_ROWS), "level,n\ninfo,3\n\"warn, \"\"x\"\"\",\n");
    }

    #[test]
    fn table_aligns_numbers_right_and_keeps_column_order() {
        let out = render(
            Format::Table,
            &[
                r#"{"zeta":"GET /a","count":12345,"p99":1.5,"ok":true}"#,
                r#"{"zeta":"POST /checkout","count":7,"p99":null,"ok":false}"#,
            ],
        );
        assert_eq!(
            out,
            "\
zeta            count  p99  ok
--------------  -----  ---  -----
GET /a          12345  1.5  true
POST /checkout      7       false
"
        );
    }

    #[test]
    fn table_cuts_long_cells_and_escapes_line_breaks() {
        let long = "x".repeat(100);
        let line = format!(r#"{{"msg":"{long}","s":"a\nb\tc"}}"#);
        let out = render(Format::Table, &[&line]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let cell: String = "x".repeat(COLUMN_CHARS_MAX - 1) + "…";
        assert_eq!(lines[2], format!("{cell}  a\\nb\\tc"));
        assert_eq!(lines[1].split("  ").next().unwrap().len(), COLUMN_CHARS_MAX);
    }

    #[test]
    fn table_columns_are_the_union_of_the_sample_and_mixed_columns_align_left() {
        let out = render(Format::Table, &[r#"{"a":1}"#, r#"{"a":"x","b":[1,2]}"#]);
        assert_eq!(out, "a  b\n-  -----\n1\nx  [1,2]\n");
    }

    #[test]
    fn table_after_the_sample_streams_in_the_sample_widths() {
        let mut w = RowWriter::new(Format::Table, Vec::new());
        for i in 0..TABLE_SAMPLE_ROWS {
            w.row(Row::parse(format!(r#"{{"i":{i},"s":"ab"}}"#).as_bytes()).unwrap()).unwrap();
        }
        assert_eq!(w.out.iter().filter(|&&b| b == b'\n').count(), TABLE_SAMPLE_ROWS + 2, "printed when full");
        w.out.clear();
        w.row(Row::parse(br#"{"i":5,"s":"abcdef","new":1}"#).unwrap()).unwrap();
        assert_eq!(String::from_utf8(w.out.clone()).unwrap(), "  5  a…\n", "cut to the sample's width");
        w.finish().unwrap();
        assert_eq!(w.rows(), TABLE_SAMPLE_ROWS as u64 + 1);
    }

    #[test]
    fn no_rows_print_an_empty_array_or_nothing() {
        assert_eq!(render(Format::Json, &[]), "[]\n");
        assert_eq!(render(Format::Table, &[]), "");
        assert_eq!(render(Format::Csv, &[]), "");
        assert_eq!(render(Format::Ndjson, &[]), "");
    }

    #[test]
    fn csv_quotes_commas_quotes_and_line_breaks() {
        let out = render(
            Format::Csv,
            &[r#"{"a,b":"x","q":"say \"hi\"","nl":"l1\nl2","cr":"a\rb","plain":"p q","obj":{"k":[1,"a,b"]}}"#],
        );
        assert_eq!(
            out,
            "\"a,b\",q,nl,cr,plain,obj\nx,\"say \"\"hi\"\"\",\"l1\nl2\",\"a\rb\",p q,\"{\"\"k\"\":[1,\"\"a,b\"\"]}\"\n"
        );
    }

    #[test]
    fn csv_uses_the_first_rows_columns() {
        let out = render(Format::Csv, &[r#"{"a":1,"b":2}"#, r#"{"b":3,"c":4}"#]);
        assert_eq!(out, "a,b\n1,2\n,3\n");
    }

    #[test]
    fn rows_must_be_objects_and_keep_their_order() {
        assert!(Row::parse(b"[1,2]").is_err());
        assert!(Row::parse(b"{\"a\":").is_err());
        let row = Row::parse(br#"{"z":1,"a":2,"m":3}"#).unwrap();
        let keys: Vec<&str> = row.fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["z", "a", "m"]);
    }

    #[test]
    fn summaries() {
        let stats = Stats {
            rows_scanned: 1200,
            bytes_scanned: 45_600,
            segments_read: 2,
            segments_skipped: 10,
            buffer_rows: 0,
            elapsed_ms: 12.34,
        };
        assert_eq!(
            summary(3, Some(&stats), 99.0),
            "3 rows · scanned 1200 rows, 45.6 kB · segments read 2, skipped 10 · 12.3 ms"
        );
        assert_eq!(summary(1, None, 4.56), "1 row · 4.6 ms");
        let parsed: Stats = serde_json::from_str(r#"{"rows_scanned":5,"elapsed_ms":1.5,"future_field":1}"#).unwrap();
        assert_eq!((parsed.rows_scanned, parsed.elapsed_ms, parsed.segments_read), (5, 1.5, 0));
    }

    #[test]
    fn bytes_read_like_a_person_would_say_them() {
        let cases = [
            (0, "0 bytes"),
            (1, "1 byte"),
            (999, "999 bytes"),
            (1000, "1.0 kB"),
            (45_600, "45.6 kB"),
            (999_949, "999.9 kB"),
            (999_999, "1.0 MB"),
            (1_234_567_890, "1.2 GB"),
        ];
        for (n, text) in cases {
            assert_eq!(human_bytes(n), text, "{n}");
        }
    }

    #[test]
    fn tail_lines() {
        let row = Row::parse(
            br#"{"time_ns":1714564800123456789,"sluice_source":"web-1","sluice_id":"00ff","sluice_seq":9,"level":"info","msg":"GET /a b","status":200,"user":null,"empty":"","eq":"a=b","nl":"x\ny","tags":["a"]}"#,
        )
        .unwrap();
        assert_eq!(
            tail_line(&row),
            r#"2024-05-01T12:00:00.123Z  web-1  level=info msg="GET /a b" status=200 empty="" eq="a=b" nl="x\ny" tags=["a"]"#
        );
        assert_eq!(tail_line(&Row::parse(br#"{"a":1}"#).unwrap()), "-  -  a=1");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_714_564_800_999_999_999), "2024-05-01T12:00:00.999Z");
        assert_eq!(rfc3339_ms(4_102_444_799_000_000_000), "2099-12-31T23:59:59.000Z");
    }
}
