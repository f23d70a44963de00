//! The search AST and its printing back into the query language.
//!
//! It holds what the person wrote (original case, quoted or not); normalising and typing are the
//! compiler's job, because they depend on the table's columns and on the caller's role.

use std::fmt;

use crate::parse::is_keyword;
use crate::text::tokens;

/// A parsed search. The parser produces a canonical form: `And` and `Or` have at least two
/// children, an `And` has no `And` child and an `Or` no `Or` child, and `All` appears only alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `field:value`, `field:"value"`, a bare word or a bare `"phrase"`. `phrase` records that
    /// the text was quoted; with a field it does not change what matches (see the crate docs).
    Term { field: Option<String>, text: String, phrase: bool },
    /// `field:>N`, `field:<N`, `field:>=N`, `field:<=N`.
    Compare { field: String, op: CompareOp, value: u64 },
    /// `field:*`: the event has the field.
    Exists { field: String },
    /// `-x` or `NOT x`.
    Not(Box<Query>),
    /// Terms side by side, or joined by `AND`.
    And(Vec<Query>),
    /// Terms joined by `OR`.
    Or(Vec<Query>),
    /// The empty query: every event.
    All,
}

/// The operator of a [`Query::Compare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Gt,
    Lt,
    Ge,
    Le,
}

impl CompareOp {
    /// The operator as written in the query language and in SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Lt => "<",
            CompareOp::Ge => ">=",
            CompareOp::Le => "<=",
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `text` is one run of the lexer: not empty, nothing that ends a word, and no `*`.
fn is_one_run(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '*'))
}

/// Whether `text` reads back as the same unquoted field value.
fn is_plain_value(text: &str) -> bool {
    is_one_run(text) && !text.starts_with(['<', '>'])
}

/// Whether `text` reads back as the same unquoted bare word.
fn is_plain_word(text: &str) -> bool {
    is_one_run(text)
        && !text.starts_with('-')
        && !text.contains(':')
        && !is_keyword(text)
        && tokens(text).next().is_some()
}

fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in text.chars() {
        if matches!(c, '"' | '\\') {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// Writes `q` so that it reads back as one operand of AND (or of NOT).
fn write_operand(f: &mut fmt::Formatter<'_>, q: &Query) -> fmt::Result {
    match q {
        Query::Or(_) | Query::And(_) => write!(f, "({q})"),
        _ => write!(f, "{q}"),
    }
}

/// Prints the query in the query language. For a query that [`crate::parse`] produced, parsing
/// the output gives the same query. A hand-built query prints as something readable, but a
/// non-canonical one (say an unquoted value that needs quotes, or an invalid field name) may
/// parse differently or not at all.
impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::All => Ok(()),
            Query::Term { field: Some(field), text, phrase } => {
                write!(f, "{field}:")?;
                if *phrase || !is_plain_value(text) {
                    write_quoted(f, text)
                } else {
                    f.write_str(text)
                }
            }
            Query::Term { field: None, text, phrase } => {
                if *phrase || !is_plain_word(text) {
                    write_quoted(f, text)
                } else {
                    f.write_str(text)
                }
            }
            Query::Compare { field, op, value } => write!(f, "{field}:{op}{value}"),
            Query::Exists { field } => write!(f, "{field}:*"),
            Query::Not(inner) => match inner.as_ref() {
                Query::Term { .. } | Query::Compare { .. } | Query::Exists { .. } => write!(f, "-{inner}"),
                _ => {
                    f.write_str("NOT ")?;
                    write_operand(f, inner)
                }
            },
            Query::And(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" ")?;
                    }
                    write_operand(f, item)?;
                }
                Ok(())
            }
            Query::Or(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" OR ")?;
                    }
                    match item {
                        Query::Or(_) => write!(f, "({item})")?,
                        _ => write!(f, "{item}")?,
                    }
                }
                Ok(())
            }
        }
    }
}
