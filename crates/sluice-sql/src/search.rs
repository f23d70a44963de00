//! Quick search: a parsed [`Query`] compiled to SQL over `events` (the rendering sluice-query
//! specifies, in DataFusion's dialect), a time range, newest first, and the terms every match
//! must contain, from which the term indexes skip segments.
//!
//! Not here: the parser (sluice-query) or the term index files (sluice-store).

use datafusion::arrow::datatypes::{DataType, Schema};
use sluice_query::{
    normalize, quote_ident, quote_str, to_sql_with_words, tokens, ColumnType, OverflowValue, Query, SqlDialect,
};
use sluice_store::{COL_OVERFLOW, COL_TIME_NS};

use crate::{Access, Engine, QueryError, QueryOutput, TABLE};

/// Rows a search returns unless asked otherwise.
pub const LIMIT_DEFAULT: usize = 100;
/// Most rows a search returns.
pub const LIMIT_MAX: usize = 10_000;

/// One search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    pub query: String,
    /// Events with `time_ns` at or after this (ns since the epoch).
    pub since_ns: Option<u64>,
    /// Events with `time_ns` at or before this.
    pub until_ns: Option<u64>,
    /// At most this many rows (newest first), 1..=[`LIMIT_MAX`].
    pub limit: usize,
}

/// A term every matching event contains, for the term indexes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Needed {
    /// A normalized token of a non-`pii_*` string value.
    Token(String),
    /// A normalized token of the value of this `pii_*` column.
    PiiToken { column: String, token: String },
}

/// A bare word or phrase of a search: its text and the pattern its `sluice_words_match` calls
/// test (the same for every occurrence of the text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Word {
    pub text: String,
    pub pattern: String,
}

/// Every bare word or phrase of `q`, wherever it is (ANDed, ORed or negated), once.
pub fn words(q: &Query) -> Vec<Word> {
    fn collect(q: &Query, out: &mut Vec<Word>) {
        match q {
            Query::Term { field: None, text, .. } => {
                if let Some(pattern) = sluice_query::word_regex(text, SqlDialect::DataFusion) {
                    out.push(Word { text: text.clone(), pattern });
                }
            }
            Query::And(children) | Query::Or(children) => children.iter().for_each(|c| collect(c, out)),
            Query::Not(inner) => collect(inner, out),
            Query::Term { .. } | Query::Compare { .. } | Query::Exists { .. } | Query::All => {}
        }
    }
    let mut out = Vec::new();
    collect(q, &mut out);
    out.sort();
    out.dedup();
    out
}

/// The columns a segment's column filter may rule out of a bare word's test: the open string
/// columns among those the word is tested against (`searched_sql`); never hidden text, `pii_*`
/// columns or the overflow, which that filter does not index.
fn open_searched_columns(schema: &Schema) -> Vec<String> {
    searched_columns(schema)
        .filter(|n| sluice_store::column_class(n) == sluice_store::ColumnClass::Open)
        .map(str::to_owned)
        .collect()
}

pub(crate) fn column_type(schema: &Schema, name: &str) -> Option<ColumnType> {
    match schema.field_with_name(name).ok()?.data_type() {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => Some(ColumnType::String),
        DataType::UInt64 => Some(ColumnType::U64),
        _ => None,
    }
}

/// The query's condition as a SQL expression over `events` (bare words and phrases test the
/// values themselves with `sluice_words_match`, see words.rs).
pub(crate) fn predicate_sql(q: &Query, schema: &Schema) -> Result<String, QueryError> {
    let searched = searched_sql(schema);
    let words = |regex: &str| {
        if searched.is_empty() {
            // No value to find a word in.
            return "FALSE".to_owned();
        }
        format!("{}({}, {})", crate::words::WORDS_MATCH, quote_str(regex), searched.join(", "))
    };
    let overflow = |field: &str| {
        let call = |f: &str| format!("{f}({}, {})", quote_ident(COL_OVERFLOW), quote_str(field));
        OverflowValue {
            text: call(crate::functions::OVERFLOW_VALUE),
            integer: call(crate::functions::OVERFLOW_INTEGER),
        }
    };
    let has_overflow = schema.field_with_name(COL_OVERFLOW).is_ok();
    let overflow: Option<&dyn Fn(&str) -> OverflowValue> = if has_overflow { Some(&overflow) } else { None };
    let pred = to_sql_with_words(q, &|name| column_type(schema, name), SqlDialect::DataFusion, &words, overflow)
        .map_err(|e| QueryError::invalid(e.to_string()))?;
    Ok(pred)
}

/// The values bare words search, as SQL expressions over `events`: the string columns whose
/// names do not start with `pii_` (as the masking view shows them, so that hidden bad-line text
/// is searched only as masked), except `sluice_stream`, and the overflow's string values.
fn searched_sql(schema: &Schema) -> Vec<String> {
    let mut out: Vec<String> = searched_columns(schema).map(quote_ident).collect();
    if schema.field_with_name(COL_OVERFLOW).is_ok() {
        // The overflow's string values, not its JSON text (see functions.rs).
        out.push(format!("{}({})", crate::functions::OVERFLOW_TEXT, quote_ident(COL_OVERFLOW)));
    }
    out
}

/// The string columns whose values bare words search: not `pii_*`, `sluice_stream` or the overflow
/// (whose string values are searched apart, see `searched_sql`).
fn searched_columns(schema: &Schema) -> impl Iterator<Item = &str> {
    schema
        .fields()
        .iter()
        .filter(|f| matches!(f.data_type(), DataType::Utf8))
        .map(|f| f.name().as_str())
        .filter(|n| *n != "sluice_stream" && *n != COL_OVERFLOW && !sluice_query::is_pii(n))
}

/// The columns of `events`, quoted, for `SELECT` lists.
pub(crate) fn select_list(schema: &Schema) -> String {
    schema.fields().iter().map(|f| quote_ident(f.name())).collect::<Vec<_>>().join(", ")
}

/// Terms every event matching `q` contains (AND of the leaves it cannot do without).
pub fn needed_terms(q: &Query, schema: &Schema, access: Access) -> Vec<Needed> {
    let mut out = Vec::new();
    collect_needed(q, schema, access, &mut out);
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out.dedup();
    out
}

fn collect_needed(q: &Query, schema: &Schema, access: Access, out: &mut Vec<Needed>) {
    match q {
        Query::Term { field: None, text, .. } => out.extend(tokens(text).map(|t| Needed::Token(normalize(t)))),
        Query::Term { field: Some(field), text, .. } => {
            // A number kept in the overflow (`code:404` where `code` is a string column) is not
            // in any term index: a value of digits only needs nothing.
            if column_type(schema, field) != Some(ColumnType::String) || text.bytes().all(|b| b.is_ascii_digit()) {
                return;
            }
            if sluice_query::is_pii(field) {
                // Only a caller who sees clear values compares them, and only such a caller may
                // learn from an index whether a value is absent.
                if access.pii {
                    out.extend(tokens(text).map(|t| Needed::PiiToken { column: field.clone(), token: normalize(t) }));
                }
            } else if matches!(
                sluice_store::column_class(field),
                sluice_store::ColumnClass::Open | sluice_store::ColumnClass::Hidden
            ) {
                out.extend(tokens(text).map(|t| Needed::Token(normalize(t))));
            }
        }
        Query::And(children) => {
            for c in children {
                collect_needed(c, schema, access, out);
            }
        }
        // An OR needs none of its branches in particular, a negation nothing at all.
        Query::Or(_) | Query::Not(_) | Query::Compare { .. } | Query::Exists { .. } | Query::All => {}
    }
}

impl Engine {
    /// Run a search: newest events first, at most `req.limit`.
    pub async fn search(&self, req: &SearchRequest, access: Access) -> Result<QueryOutput, QueryError> {
        let q = sluice_query::parse(&req.query)
            .map_err(|e| QueryError::Invalid { message: format!("query: {e}"), position: Some(e.position) })?;
        if !(1..=LIMIT_MAX).contains(&req.limit) {
            return Err(QueryError::invalid(format!("limit {} must be between 1 and {LIMIT_MAX}", req.limit)));
        }
        let schema = self.store().schema();
        let pred = predicate_sql(&q, &schema)?;
        let mut conditions = vec![pred];
        let time = quote_ident(COL_TIME_NS);
        if let Some(since) = req.since_ns {
            conditions.push(format!("{time} >= {since}"));
        }
        if let Some(until) = req.until_ns {
            conditions.push(format!("{time} <= {until}"));
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {time} DESC, {} DESC LIMIT {}",
            select_list(&schema),
            TABLE,
            conditions.join(" AND "),
            quote_ident(sluice_store::COL_SEQ),
            req.limit + 1
        );
        // Reading the term indexes is part of the query: on its threads, under its slot and time limit.
        let filter = crate::terms::TermsRequest {
            needed: needed_terms(&q, &schema, access),
            words: words(&q),
            columns: open_searched_columns(&schema),
            access,
            since_ns: req.since_ns,
            until_ns: req.until_ns,
        };
        let mut out = self.run(&sql, access, Some(filter), req.limit).await?;
        // One row past the limit was asked for only to tell whether there were more.
        out.truncated = out.truncated || out.rows() > req.limit;
        Ok(out)
    }
}
