//! Quick search for people: the query language's parser and AST, `--since/--until` times, the
//! tokenizer shared by bare-word search and the term indexes, and a reference SQL rendering.
//!
//! This crate does no I/O and knows nothing of DataFusion, HTTP or the store: a later step
//! compiles [`Query`] to DataFusion expressions, and the API applies roles and PII masking.
//!
//! # The language
//!
//! Written for people who know Kibana and Loki:
//!
//! | syntax | meaning |
//! |---|---|
//! | `status:500`, `url:/api/users` | the field equals the value exactly |
//! | `msg:"connection refused"` | the same, with a quoted value (spaces, `(`, `*`, `:` allowed) |
//! | `duration_ms:>250`, `:<`, `:>=`, `:<=` | numeric comparison with a non-negative integer |
//! | `pii_uid:*` | the field is present |
//! | `timeout`, `"connection refused"` | a word or phrase anywhere in the event (below) |
//! | `a b`, `a AND b` | both (AND is implied between terms) |
//! | `a OR b` | either; binds looser than AND, so `a OR b c` is `a OR (b AND c)` |
//! | `-status:500`, `-timeout`, `-(a OR b)`, `NOT a` | negation |
//! | `(` … `)` | grouping |
//! | (empty input) | every event ([`Query::All`]) |
//!
//! ```text
//! query   = [ or ]
//! or      = and { "OR" and }
//! and     = unary { [ "AND" ] unary }
//! unary   = "NOT" unary | "-" primary | primary        ("-" is glued to what follows)
//! primary = "(" or ")" | field ":" value | word | phrase
//! value   = "*" | (">" | "<" | ">=" | "<=") digits | phrase | text
//! field   = [A-Za-z_][A-Za-z0-9_.]*
//! phrase  = '"' { any char but '"' and '\', or '\"', or '\\' } '"'
//! ```
//!
//! A word or an unquoted value runs until whitespace, `(`, `)` or `"`. The keywords `AND`, `OR`
//! and `NOT` are upper case (Lucene's rule), so `and` and `or` are plain words; quote a keyword
//! (`"OR"`) to search for it. A word containing `:` is a field term split at its first `:`
//! (`time:12:30` is field `time`, value `12:30`); quote it to search for the text. Wildcards are
//! not supported: `*` is only valid as a whole value (`field:*`); elsewhere it is an error rather
//! than a silent literal, and quoting (`msg:"a*b"`) matches a literal `*`. A bare word must hold
//! a letter or digit (it would match nothing otherwise). Limits: [`INPUT_BYTES_MAX`] bytes of
//! input, [`DEPTH_MAX`] levels of parentheses and negation, [`TERMS_MAX`] terms; each is a
//! [`SyntaxError`] with the column where it was reached.
//!
//! `Display` for [`Query`] prints the query in this language; printing a parsed query and parsing
//! it again gives the same [`Query`] (a property test checks this).
//!
//! # What matches
//!
//! The compiler to DataFusion and [`to_sql`] implement these rules:
//!
//! - **Bare words and phrases** (`Term { field: None, .. }`) match an event when one of its
//!   string values whose key does not start with `pii_` contains the term's [`tokens`] as
//!   consecutive whole tokens, compared case-insensitively (both sides through [`normalize`]).
//!   So `timeout` matches `"read timeout after 5s"` but not `"timeouts"`; `"connection refused"`
//!   and `connection-refused` both match `"Connection refused (os error 111)"`. Integer values
//!   are not searched by bare words (use `status:500`). [`text_matches`] is the reference.
//! - **`field:value`** on a string field is exact, case-sensitive equality with the whole value,
//!   quoted or not. On an integer field, it is numeric equality when the value is all digits
//!   (`status:500`, `status:"0500"`) and matches nothing otherwise. A field the events do not
//!   have matches nothing, so its negation matches every event. Where the store keeps a value
//!   outside its field's column (a value of another type, a key past the cap of columns), the
//!   same test is applied to that value too: `field:value` to its text (a number as its digits),
//!   comparisons to it as an integer, `field:*` to its presence.
//! - **Comparisons** are numeric: an integer field compared with the number; a string field never
//!   matches.
//! - **`field:*`** matches events that have the field (with a value of the column's type).
//! - **Negation is two-valued**: `-status:500` matches every event whose `status` is not 500,
//!   including events without a `status` (as in Kibana). SQL renderings must not let a missing
//!   value (NULL) make `NOT` drop the event; [`to_sql`] turns every leaf's NULL into FALSE.
//!
//! # Personal data (`pii_*` keys)
//!
//! For a caller without the `pii` role the API runs every query over a table in which each
//! `pii_*` value has already been replaced by its keyed hash. Therefore:
//! - `pii_uid:U577019` is compared with the masked column, so a plaintext value cannot be
//!   confirmed; a hash the caller was shown (`pii_uid:"<hash>"`) does match, which keeps masked
//!   values groupable and searchable. The AST keeps the field name so the API can decide this.
//! - Bare words never look inside `pii_*` values, for any caller, and no term index or statistic
//!   on `pii_*` values may be used to prune segments for a caller without the role (skipping a
//!   segment would reveal that a value is absent from it).

mod ast;
mod parse;
mod sql;
mod text;
mod time;

pub use ast::{CompareOp, Query};
pub use parse::{parse, SyntaxError, DEPTH_MAX, INPUT_BYTES_MAX, TERMS_MAX};
pub use sql::{
    quote_ident, quote_str, text_column_sql, to_sql, to_sql_for, to_sql_with_words, word_regex, ColumnType,
    OverflowValue, SqlDialect, SqlError, TEXT_COLUMN, TEXT_SEPARATOR,
};
pub use text::{is_pii, normalize, text_matches, tokens, trigrams, PII_PREFIX};
pub use time::{parse_time, TimeError};
