//! The quick-search parser: a lexer that turns the input into terms, keywords and brackets, and
//! a recursive-descent parser over them. Errors point at a character column.
//!
//! It never panics and never recurses deeper than [`DEPTH_MAX`] levels, whatever the input; it
//! does not interpret values (types and PII masking belong to the compiler and the API).

use crate::ast::{CompareOp, Query};
use crate::text::tokens;

/// Longest accepted query, in bytes. A query is typed or pasted by a person; anything longer is
/// a mistake or an attack, and the bound keeps the parser's work small.
pub const INPUT_BYTES_MAX: usize = 4096;
/// Deepest accepted nesting of parentheses and negations (`NOT`, `-`) together.
pub const DEPTH_MAX: usize = 64;
/// Most terms (words, phrases, field terms) in one query.
pub const TERMS_MAX: usize = 256;

/// How many characters of the offending input an error quotes.
const FOUND_CHARS_MAX: usize = 32;

/// A query that does not parse: where, what the parser expected there, and what it found.
///
/// `position` is a 0-based column counted in characters (not bytes), at most the input's length
/// in characters (equal to it when the problem is the end of the input). `Display` gives, for
/// example, `column 7: expected a value after "status:", found end of input`; the column there
/// is the same 0-based number, so that it agrees with `position` in API answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {position}: expected {expected}, found {found}")]
pub struct SyntaxError {
    pub position: usize,
    pub expected: String,
    pub found: String,
}

impl SyntaxError {
    fn new(position: usize, expected: impl Into<String>, found: impl Into<String>) -> Self {
        SyntaxError { position, expected: expected.into(), found: found.into() }
    }

    /// The input on one line and a `^` under the error's column, for a terminal:
    ///
    /// ```text
    /// status: 500
    ///        ^
    /// ```
    ///
    /// Control characters are shown as spaces (a tab is kept, under and over, so the caret stays
    /// aligned); characters that a terminal draws two cells wide shift the caret left.
    pub fn caret(&self, input: &str) -> String {
        let mut line = String::with_capacity(input.len());
        let mut under = String::new();
        for (i, c) in input.chars().enumerate() {
            let shown = if c == '\t' {
                '\t'
            } else if c.is_control() {
                ' '
            } else {
                c
            };
            line.push(shown);
            if i < self.position {
                under.push(if c == '\t' { '\t' } else { ' ' });
            }
        }
        // A position past the end (impossible from `parse`) still gets a caret, after the text.
        let shown_chars = input.chars().count();
        for _ in shown_chars..self.position {
            under.push(' ');
        }
        format!("{line}\n{under}^")
    }
}

/// Whether `word` is one of the upper-case keywords.
pub(crate) fn is_keyword(word: &str) -> bool {
    matches!(word, "AND" | "OR" | "NOT")
}

/// Whether `name` is a valid field name, `[A-Za-z_][A-Za-z0-9_.]*`; `Err` holds the index of
/// the first character that is not allowed.
fn check_field_name(name: &[char]) -> Result<(), usize> {
    for (i, &c) in name.iter().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || (i > 0 && (c.is_ascii_digit() || c == '.'));
        if !ok {
            return Err(i);
        }
    }
    if name.is_empty() {
        Err(0)
    } else {
        Ok(())
    }
}

/// `text` quoted for an error message, cut to a readable length.
fn quote(text: &str) -> String {
    let mut cut: String = text.chars().take(FOUND_CHARS_MAX).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// What an error says it found at a character (or at the end of the input).
fn describe(c: Option<char>) -> String {
    match c {
        None => "end of input".to_owned(),
        Some(' ') => "a space".to_owned(),
        Some('\t') => "a tab".to_owned(),
        Some('\n' | '\r') => "a line break".to_owned(),
        Some(c) if c.is_whitespace() => "whitespace".to_owned(),
        Some(c) => quote(c.encode_utf8(&mut [0; 4])),
    }
}

#[derive(Debug)]
enum TokKind {
    LParen,
    RParen,
    And,
    Or,
    Not,
    /// A `-` glued to the term after it.
    Minus,
    /// A complete term; always a `Term`, `Compare` or `Exists`.
    Leaf(Query),
}

#[derive(Debug)]
struct Tok {
    kind: TokKind,
    /// Column of the token's first character.
    pos: usize,
    /// Column just past the token.
    end: usize,
}

/// Ends an unquoted word or value.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '(' | ')' | '"')
}

struct Lexer<'a> {
    chars: &'a [char],
    toks: Vec<Tok>,
}

impl Lexer<'_> {
    fn text(&self, from: usize, to: usize) -> String {
        self.chars[from..to].iter().collect()
    }

    fn run(mut self) -> Result<Vec<Tok>, SyntaxError> {
        let chars = self.chars;
        let mut i = 0;
        while let Some(&c) = chars.get(i) {
            i = match c {
                c if c.is_whitespace() => i + 1,
                '(' => self.push(TokKind::LParen, i, i + 1),
                ')' => self.push(TokKind::RParen, i, i + 1),
                '"' => {
                    let (text, end) = self.quoted(i)?;
                    if tokens(&text).next().is_none() {
                        return Err(SyntaxError::new(i, "a phrase with a letter or digit", quote(&self.text(i, end))));
                    }
                    self.push(TokKind::Leaf(Query::Term { field: None, text, phrase: true }), i, end)
                }
                '-' => match chars.get(i + 1) {
                    // `-` negates only the term it is glued to; alone it is a mistake (and as a
                    // word it would match nothing).
                    Some(&next) if !next.is_whitespace() && next != ')' => self.push(TokKind::Minus, i, i + 1),
                    next => return Err(SyntaxError::new(i + 1, "a term right after \"-\"", describe(next.copied()))),
                },
                _ => self.word(i)?,
            };
        }
        Ok(self.toks)
    }

    fn push(&mut self, kind: TokKind, pos: usize, end: usize) -> usize {
        self.toks.push(Tok { kind, pos, end });
        end
    }

    /// A quoted string whose opening `"` is at `start`: its unescaped text and the column after
    /// the closing `"`.
    fn quoted(&self, start: usize) -> Result<(String, usize), SyntaxError> {
        let unclosed = || SyntaxError::new(start, "a '\"' to close this quote", "end of input");
        let mut text = String::new();
        let mut i = start + 1;
        loop {
            match self.chars.get(i) {
                None => return Err(unclosed()),
                Some('"') => return Ok((text, i + 1)),
                Some('\\') => match self.chars.get(i + 1) {
                    Some(&c @ ('"' | '\\')) => {
                        text.push(c);
                        i += 2;
                    }
                    None => return Err(unclosed()),
                    Some(&c) => {
                        return Err(SyntaxError::new(
                            i,
                            "\\\" or \\\\ after a backslash inside quotes",
                            quote(&format!("\\{c}")),
                        ))
                    }
                },
                Some(&c) => {
                    text.push(c);
                    i += 1;
                }
            }
        }
    }

    /// An unquoted run starting at `start`: a keyword, a bare word or a field term.
    fn word(&mut self, start: usize) -> Result<usize, SyntaxError> {
        let chars = self.chars;
        let end = chars[start..].iter().position(|&c| is_delimiter(c)).map_or(chars.len(), |n| start + n);
        let word = self.text(start, end);
        if is_keyword(&word) {
            let kind = match word.as_str() {
                "AND" => TokKind::And,
                "OR" => TokKind::Or,
                _ => TokKind::Not,
            };
            return Ok(self.push(kind, start, end));
        }
        let Some(colon_offset) = chars[start..end].iter().position(|&c| c == ':') else {
            return self.bare_word(word, start, end);
        };
        let colon = start + colon_offset;
        let name = &chars[start..colon];
        if let Err(bad) = check_field_name(name) {
            let found = if name.is_empty() { "\":\" with no field name before it".to_owned() } else { quote(&word) };
            return Err(SyntaxError::new(start + bad, "a field name ([A-Za-z_][A-Za-z0-9_.]*) before \":\"", found));
        }
        let field = self.text(start, colon);
        let value_start = colon + 1;
        if value_start == end {
            // Nothing glued after the colon: a quoted value, or a missing one.
            return match chars.get(end) {
                Some('"') => {
                    let (text, after) = self.quoted(end)?;
                    Ok(self.push(TokKind::Leaf(Query::Term { field: Some(field), text, phrase: true }), start, after))
                }
                next => Err(SyntaxError::new(
                    end,
                    format!("a value after {}", quote(&format!("{field}:"))),
                    describe(next.copied()),
                )),
            };
        }
        let value = &chars[value_start..end];
        let leaf = match value {
            ['*'] => Query::Exists { field },
            ['>', '=', ..] | ['<', '=', ..] | ['>', ..] | ['<', ..] => {
                let (op, op_chars) = match value {
                    ['>', '=', ..] => (CompareOp::Ge, 2),
                    ['<', '=', ..] => (CompareOp::Le, 2),
                    ['>', ..] => (CompareOp::Gt, 1),
                    _ => (CompareOp::Lt, 1),
                };
                let value = self.number(&field, op, value_start + op_chars, end)?;
                Query::Compare { field, op, value }
            }
            _ => {
                if let Some(star) = value.iter().position(|&c| c == '*') {
                    return Err(SyntaxError::new(
                        value_start + star,
                        format!(
                            "a value without \"*\" (wildcards are not supported: {field}:* matches any value, \
                             and a quoted value matches a literal \"*\")"
                        ),
                        quote(&self.text(value_start, end)),
                    ));
                }
                Query::Term { field: Some(field), text: self.text(value_start, end), phrase: false }
            }
        };
        Ok(self.push(TokKind::Leaf(leaf), start, end))
    }

    /// The number of a comparison, from `start` to `end`.
    fn number(&self, field: &str, op: CompareOp, start: usize, end: usize) -> Result<u64, SyntaxError> {
        let after = quote(&format!("{field}:{op}"));
        if start == end {
            return Err(SyntaxError::new(
                start,
                format!("a number after {after}"),
                describe(self.chars.get(end).copied()),
            ));
        }
        let digits = self.text(start, end);
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SyntaxError::new(start, format!("a non-negative integer after {after}"), quote(&digits)));
        }
        digits.parse::<u64>().map_err(|_| {
            SyntaxError::new(start, format!("a number at most {} after {after}", u64::MAX), quote(&digits))
        })
    }

    fn bare_word(&mut self, word: String, start: usize, end: usize) -> Result<usize, SyntaxError> {
        if let Some(star) = word.chars().position(|c| c == '*') {
            let expected = if word == "*" {
                "a search term (an empty query matches every event)"
            } else {
                "a word without \"*\" (wildcards are not supported)"
            };
            return Err(SyntaxError::new(start + star, expected, quote(&word)));
        }
        if tokens(&word).next().is_none() {
            return Err(SyntaxError::new(start, "a word with a letter or digit", quote(&word)));
        }
        Ok(self.push(TokKind::Leaf(Query::Term { field: None, text: word, phrase: false }), start, end))
    }
}

struct Parser<'a> {
    chars: &'a [char],
    toks: Vec<Tok>,
    next: usize,
    terms: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.next)
    }

    /// Column of the next token, or the end of the input.
    fn peek_pos(&self) -> usize {
        self.peek().map_or(self.chars.len(), |t| t.pos)
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "end of input".to_owned(),
            Some(tok) => quote(&self.chars[tok.pos..tok.end].iter().collect::<String>()),
        }
    }

    fn expected_term(&self, after: Option<&str>) -> SyntaxError {
        let expected = match after {
            Some(after) => format!("a term after {after}"),
            None => "a term".to_owned(),
        };
        SyntaxError::new(self.peek_pos(), expected, self.found())
    }

    /// Checks that going one level deeper (at `pos`) stays within [`DEPTH_MAX`].
    fn deeper(depth: usize, pos: usize) -> Result<usize, SyntaxError> {
        if depth >= DEPTH_MAX {
            return Err(SyntaxError::new(
                pos,
                format!("at most {DEPTH_MAX} levels of parentheses and negation"),
                format!("level {}", depth + 1),
            ));
        }
        Ok(depth + 1)
    }

    fn or(&mut self, depth: usize, after: Option<&str>) -> Result<Query, SyntaxError> {
        let mut items = vec![self.and(depth, after)?];
        while let Some(Tok { kind: TokKind::Or, .. }) = self.peek() {
            self.next += 1;
            items.push(self.and(depth, Some("OR"))?);
        }
        Ok(join(items, Join::Or))
    }

    fn and(&mut self, depth: usize, after: Option<&str>) -> Result<Query, SyntaxError> {
        let mut items = vec![self.unary(depth, after)?];
        loop {
            match self.peek().map(|t| &t.kind) {
                Some(TokKind::And) => {
                    self.next += 1;
                    items.push(self.unary(depth, Some("AND"))?);
                }
                Some(TokKind::LParen | TokKind::Not | TokKind::Minus | TokKind::Leaf(_)) => {
                    items.push(self.unary(depth, None)?);
                }
                _ => break,
            }
        }
        Ok(join(items, Join::And))
    }

    fn unary(&mut self, depth: usize, after: Option<&str>) -> Result<Query, SyntaxError> {
        match self.peek() {
            Some(Tok { kind: TokKind::Not, pos, .. }) => {
                let depth = Self::deeper(depth, *pos)?;
                self.next += 1;
                Ok(Query::Not(Box::new(self.unary(depth, Some("NOT"))?)))
            }
            Some(Tok { kind: TokKind::Minus, pos, .. }) => {
                let depth = Self::deeper(depth, *pos)?;
                self.next += 1;
                Ok(Query::Not(Box::new(self.primary(depth, Some("\"-\""))?)))
            }
            _ => self.primary(depth, after),
        }
    }

    fn primary(&mut self, depth: usize, after: Option<&str>) -> Result<Query, SyntaxError> {
        let Some(tok) = self.toks.get_mut(self.next) else { return Err(self.expected_term(after)) };
        match &mut tok.kind {
            TokKind::LParen => {
                let open = tok.pos;
                let depth = Self::deeper(depth, open)?;
                self.next += 1;
                let inner = self.or(depth, Some("\"(\""))?;
                match self.peek() {
                    Some(Tok { kind: TokKind::RParen, .. }) => {
                        self.next += 1;
                        Ok(inner)
                    }
                    _ => Err(SyntaxError::new(open, "a \")\" to close this \"(\"", self.found())),
                }
            }
            TokKind::Leaf(leaf) => {
                if self.terms >= TERMS_MAX {
                    return Err(SyntaxError::new(
                        tok.pos,
                        format!("at most {TERMS_MAX} terms"),
                        format!("term {}", self.terms + 1),
                    ));
                }
                self.terms += 1;
                let leaf = std::mem::replace(leaf, Query::All);
                self.next += 1;
                Ok(leaf)
            }
            _ => Err(self.expected_term(after)),
        }
    }
}

/// How the items of [`join`] are joined.
#[derive(Clone, Copy)]
enum Join {
    And,
    Or,
}

/// One query from the items of an AND or an OR, merging nested ones of the same kind so that
/// `a (b c)` and `a b c` give the same AST.
fn join(items: Vec<Query>, how: Join) -> Query {
    if items.len() == 1 {
        return items.into_iter().next().expect("one item was just checked");
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match (how, item) {
            (Join::And, Query::And(inner)) | (Join::Or, Query::Or(inner)) => out.extend(inner),
            (_, item) => out.push(item),
        }
    }
    match how {
        Join::And => Query::And(out),
        Join::Or => Query::Or(out),
    }
}

/// Parses a quick search. Empty (or all-whitespace) input is [`Query::All`].
///
/// ```
/// use sluice_query::{parse, Query};
/// let q = parse("status:500 -timeout").unwrap();
/// assert_eq!(q.to_string(), "status:500 -timeout");
/// assert!(matches!(q, Query::And(_)));
///
/// let err = parse("status:").unwrap_err();
/// assert_eq!(err.to_string(), r#"column 7: expected a value after "status:", found end of input"#);
/// ```
pub fn parse(input: &str) -> Result<Query, SyntaxError> {
    if input.len() > INPUT_BYTES_MAX {
        // Point at the first character past the limit.
        let column = input.char_indices().take_while(|&(byte, _)| byte < INPUT_BYTES_MAX).count();
        let found = format!("{} bytes", input.len());
        return Err(SyntaxError::new(column, format!("a query of at most {INPUT_BYTES_MAX} bytes"), found));
    }
    let chars: Vec<char> = input.chars().collect();
    let toks = Lexer { chars: &chars, toks: Vec::new() }.run()?;
    if toks.is_empty() {
        return Ok(Query::All);
    }
    let mut parser = Parser { chars: &chars, toks, next: 0, terms: 0 };
    let query = parser.or(0, None)?;
    if parser.peek().is_some() {
        // `or` stops only at a ")" that no "(" opened.
        return Err(SyntaxError::new(
            parser.peek_pos(),
            "a term, AND, OR or the end of the query",
            "\")\" without a matching \"(\"",
        ));
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_the_column() {
        let err = SyntaxError::new(7, "x", "y");
        assert_eq!(err.caret("status: 500"), "status: 500\n       ^");
        assert_eq!(SyntaxError::new(3, "x", "y").caret("a\tb\nc"), "a\tb c\n \t ^");
        assert_eq!(SyntaxError::new(2, "x", "y").caret("ab"), "ab\n  ^");
    }

    #[test]
    fn field_names() {
        for good in ["a", "_", "A_b.c9", "http.status_code"] {
            assert_eq!(check_field_name(&good.chars().collect::<Vec<_>>()), Ok(()), "{good}");
        }
        for (bad, at) in [("", 0), ("1a", 0), (".a", 0), ("a-b", 1), ("é", 0), ("a b", 1)] {
            assert_eq!(check_field_name(&bad.chars().collect::<Vec<_>>()), Err(at), "{bad}");
        }
    }
}
