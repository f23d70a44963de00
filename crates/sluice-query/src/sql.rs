//! A reference rendering of a search as one SQL boolean expression, for the benchmark harness
//! (DuckDB or DataFusion over the Parquet segments) and as the specification that the
//! DataFusion compiler follows.
//!
//! It is deliberately simple: no pruning, no term indexes, no PII masking (the API gives a
//! caller without the `pii` role a table that is already masked, see the crate docs).

use crate::ast::Query;
use crate::parse::DEPTH_MAX;
use crate::text::{normalize, tokens};

/// The column bare words and phrases are matched against: the event's string values whose keys
/// do not start with `pii_`, joined with [`TEXT_SEPARATOR`]. Tables do not have it; a harness
/// adds it, for example `SELECT *, <text_column_sql(..)> AS sluice_text FROM events`.
pub const TEXT_COLUMN: &str = "sluice_text";

/// Joins the values in [`TEXT_COLUMN`] (U+001F, the ASCII unit separator). The regex of a phrase
/// does not cross it, so that a phrase matches within one value, as the crate docs promise.
pub const TEXT_SEPARATOR: char = '\u{1F}';

/// Deepest AST [`to_sql`] renders. A parsed query is at most about twice [`DEPTH_MAX`] deep
/// (each parenthesis can add an OR and an AND level); the bound stops hand-built ones from
/// exhausting the stack.
const SQL_DEPTH_MAX: usize = 4 * DEPTH_MAX;

/// The type of a column of the events table, as far as search cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// UTF-8 text.
    String,
    /// An unsigned 64-bit integer.
    U64,
}

/// Which engine's regular-expression function and Unicode classes to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlDialect {
    /// `regexp_matches`, RE2 syntax: letters are `\pL`, which is slightly narrower than Rust's
    /// `char::is_alphanumeric` (it lacks the combining marks that Unicode counts as
    /// alphabetic, such as Devanagari vowel signs), so a few non-Latin words can match more.
    DuckDb,
    /// `regexp_like`, Rust `regex` syntax: `\p{Alphabetic}\pN` is exactly
    /// `char::is_alphanumeric`.
    DataFusion,
}

/// Why a query has no SQL rendering. Only hand-built queries fail; parsed ones always render.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    #[error("query is nested deeper than {depth_max} levels; build a flatter query")]
    TooDeep { depth_max: usize },
    #[error("search term {text:?} has no letter or digit to look for; drop it or add one")]
    NoWord { text: String },
}

/// `name` as a double-quoted SQL identifier, with `"` doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` as a single-quoted SQL string, with `'` doubled. Backslashes stay as they are, as in
/// standard SQL, DuckDB and DataFusion.
pub fn quote_str(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SQL expression for [`TEXT_COLUMN`] over the given string columns: the columns whose names
/// start with `pii_` are left out, NULLs are skipped, and the values are joined with
/// [`TEXT_SEPARATOR`]. With no such column it is the empty string.
///
/// ```
/// assert_eq!(
///     sluice_query::text_column_sql(&["msg", "pii_email", "url"]),
///     r#"concat_ws(chr(31), "msg", "url")"#
/// );
/// ```
pub fn text_column_sql(string_columns: &[&str]) -> String {
    let searched: Vec<String> =
        string_columns.iter().filter(|name| !crate::is_pii(name)).map(|name| quote_ident(name)).collect();
    if searched.is_empty() {
        return "''".to_owned();
    }
    format!("concat_ws(chr({}), {})", u32::from(TEXT_SEPARATOR), searched.join(", "))
}

/// The regular expression that finds the bare word or phrase `text` in a lowercased
/// [`TEXT_COLUMN`]: its normalised tokens, each a whole token, separated by anything that is
/// neither a letter, a digit nor [`TEXT_SEPARATOR`]. `None` when `text` has no token.
///
/// ```
/// use sluice_query::{word_regex, SqlDialect};
/// assert_eq!(
///     word_regex("Connection refused", SqlDialect::DuckDb).unwrap(),
///     r"(^|[^\pL\pN])connection[^\pL\pN\x1F]+refused([^\pL\pN]|$)"
/// );
/// ```
pub fn word_regex(text: &str, dialect: SqlDialect) -> Option<String> {
    let letters = match dialect {
        SqlDialect::DuckDb => r"\pL\pN",
        SqlDialect::DataFusion => r"\p{Alphabetic}\pN",
    };
    let mut out = format!("(^|[^{letters}])");
    let mut any_token = false;
    for token in tokens(text) {
        if any_token {
            out.push_str(&format!("[^{letters}\\x{:02X}]+", u32::from(TEXT_SEPARATOR)));
        }
        for c in normalize(token).chars() {
            // Tokens hold letters and digits only, but lowercasing may add a combining mark;
            // escaping ASCII punctuation keeps the pattern safe whatever comes out.
            if c.is_ascii_punctuation() {
                out.push('\\');
            }
            out.push(c);
        }
        any_token = true;
    }
    if !any_token {
        return None;
    }
    out.push_str(&format!("([^{letters}]|$)"));
    Some(out)
}

/// A rendered expression, with the constants kept apart so that `NOT`, `AND` and `OR` fold them.
enum Sql {
    True,
    False,
    Expr(String),
}

impl Sql {
    fn into_string(self) -> String {
        match self {
            Sql::True => "TRUE".to_owned(),
            Sql::False => "FALSE".to_owned(),
            Sql::Expr(e) => e,
        }
    }
}

/// [`to_sql_for`] with [`SqlDialect::DuckDb`].
pub fn to_sql(q: &Query, columns: &dyn Fn(&str) -> Option<ColumnType>) -> Result<String, SqlError> {
    to_sql_for(q, columns, SqlDialect::DuckDb)
}

/// Renders `q` as a SQL boolean expression over a table whose columns `columns` describes (name
/// to type; `None` for a column the table does not have), plus [`TEXT_COLUMN`] for bare words.
///
/// Following the crate docs' rules:
/// - `field:value` → `COALESCE("field" = 'value', FALSE)` on a string column;
///   `COALESCE("field" = 500, FALSE)` on an integer column when the value is all digits, else
///   `FALSE`.
/// - `field:>N` → `COALESCE("field" > N, FALSE)` on an integer column, else `FALSE`.
/// - `field:*` → `("field" IS NOT NULL)`.
/// - A bare word or phrase → `COALESCE(regexp_matches(lower("sluice_text"), '<word_regex>'),
///   FALSE)` (`regexp_like` for DataFusion).
/// - A field the table does not have → `FALSE` (so its negation is `TRUE`).
///
/// Every leaf is wrapped so that it is never NULL: `NOT` of a missing value must be TRUE
/// (`-status:500` keeps events without `status`). Constants are folded (`x AND FALSE` is
/// `FALSE`, `NOT FALSE` is `TRUE`); the empty query is `TRUE`.
pub fn to_sql_for(
    q: &Query,
    columns: &dyn Fn(&str) -> Option<ColumnType>,
    dialect: SqlDialect,
) -> Result<String, SqlError> {
    Ok(render(q, columns, dialect, Leaves { words: None, overflow: None }, 0)?.into_string())
}

/// [`to_sql_for`], with each bare word or phrase tested by `words(regex)` instead of by the
/// dialect's regexp function over `lower("sluice_text")`: an engine that matches the values one
/// at a time (the regex never crosses [`TEXT_SEPARATOR`], so that is equivalent) renders the
/// test itself. `regex` is [`word_regex`] of the term; the result is still wrapped in
/// `COALESCE(…, FALSE)`.
///
/// With `overflow`, a field is also looked up where a table keeps values that have no column of
/// their type (a value of conflicting type, a key past the column cap): `overflow(field)` gives
/// that value as SQL expressions, as text (a number as its digits, NULL when absent) and as an
/// integer (NULL unless it is one). Each field leaf is then "the column's test OR the same test
/// on that value": `field:value` compares the text, `field:>N` the integer, `field:*` is true
/// when the text is not NULL.
pub fn to_sql_with_words(
    q: &Query,
    columns: &dyn Fn(&str) -> Option<ColumnType>,
    dialect: SqlDialect,
    words: &dyn Fn(&str) -> String,
    overflow: Option<&dyn Fn(&str) -> OverflowValue>,
) -> Result<String, SqlError> {
    Ok(render(q, columns, dialect, Leaves { words: Some(words), overflow }, 0)?.into_string())
}

/// A field's value outside its column, as two SQL expressions (see [`to_sql_with_words`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverflowValue {
    /// The value as text: a string as it is, a number as its digits; NULL when absent.
    pub text: String,
    /// The value as an unsigned integer; NULL unless it is one.
    pub integer: String,
}

/// The leaf renderers a caller brings: bare words, and fields outside their columns.
#[derive(Clone, Copy)]
struct Leaves<'a> {
    words: Option<&'a dyn Fn(&str) -> String>,
    overflow: Option<&'a dyn Fn(&str) -> OverflowValue>,
}

impl Leaves<'_> {
    /// `column`, or also `test` of the field's overflow value.
    fn or_overflow(&self, field: &str, column: Sql, test: impl FnOnce(&OverflowValue) -> Option<String>) -> Sql {
        let Some(extra) = self.overflow.and_then(|o| test(&o(field))) else {
            return column;
        };
        match column {
            Sql::True => Sql::True,
            Sql::False => Sql::Expr(extra),
            Sql::Expr(e) => Sql::Expr(format!("({e} OR {extra})")),
        }
    }
}

fn render(
    q: &Query,
    columns: &dyn Fn(&str) -> Option<ColumnType>,
    dialect: SqlDialect,
    leaves: Leaves<'_>,
    depth: usize,
) -> Result<Sql, SqlError> {
    if depth > SQL_DEPTH_MAX {
        return Err(SqlError::TooDeep { depth_max: SQL_DEPTH_MAX });
    }
    let not_null = |e: String| Sql::Expr(format!("COALESCE({e}, FALSE)"));
    Ok(match q {
        Query::All => Sql::True,
        Query::Term { field: Some(field), text, .. } => {
            let column = match columns(field) {
                Some(ColumnType::String) => not_null(format!("{} = {}", quote_ident(field), quote_str(text))),
                Some(ColumnType::U64) => match parse_digits(text) {
                    Some(n) => not_null(format!("{} = {n}", quote_ident(field))),
                    None => Sql::False,
                },
                None => Sql::False,
            };
            leaves.or_overflow(field, column, |o| Some(format!("COALESCE({} = {}, FALSE)", o.text, quote_str(text))))
        }
        Query::Term { field: None, text, .. } => {
            let regex = word_regex(text, dialect).ok_or_else(|| SqlError::NoWord { text: text.clone() })?;
            if let Some(words) = leaves.words {
                return Ok(not_null(words(&regex)));
            }
            let function = match dialect {
                SqlDialect::DuckDb => "regexp_matches",
                SqlDialect::DataFusion => "regexp_like",
            };
            not_null(format!("{function}(lower({}), {})", quote_ident(TEXT_COLUMN), quote_str(&regex)))
        }
        Query::Compare { field, op, value } => {
            let column = match columns(field) {
                Some(ColumnType::U64) => not_null(format!("{} {op} {value}", quote_ident(field))),
                Some(ColumnType::String) | None => Sql::False,
            };
            leaves.or_overflow(field, column, |o| Some(format!("COALESCE({} {op} {value}, FALSE)", o.integer)))
        }
        Query::Exists { field } => {
            let column = match columns(field) {
                Some(_) => Sql::Expr(format!("({} IS NOT NULL)", quote_ident(field))),
                None => Sql::False,
            };
            leaves.or_overflow(field, column, |o| Some(format!("({} IS NOT NULL)", o.text)))
        }
        Query::Not(inner) => match render(inner, columns, dialect, leaves, depth + 1)? {
            Sql::True => Sql::False,
            Sql::False => Sql::True,
            Sql::Expr(e) => Sql::Expr(format!("NOT {e}")),
        },
        Query::And(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match render(item, columns, dialect, leaves, depth + 1)? {
                    Sql::False => return Ok(Sql::False),
                    Sql::True => {}
                    Sql::Expr(e) => parts.push(e),
                }
            }
            combine(parts, " AND ", Sql::True)
        }
        Query::Or(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                match render(item, columns, dialect, leaves, depth + 1)? {
                    Sql::True => return Ok(Sql::True),
                    Sql::False => {}
                    Sql::Expr(e) => parts.push(e),
                }
            }
            combine(parts, " OR ", Sql::False)
        }
    })
}

fn combine(mut parts: Vec<String>, op: &str, empty: Sql) -> Sql {
    match parts.len() {
        0 => empty,
        1 => Sql::Expr(parts.pop().expect("one part was just checked")),
        _ => Sql::Expr(format!("({})", parts.join(op))),
    }
}

/// A value that is all ASCII digits, as a number (`u64::from_str` would also take `+5`).
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}
