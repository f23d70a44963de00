//! `sluice_words_match(regex, value, …)`: the test of a quick-search bare word or phrase, true
//! when any non-null value, lowercased exactly as SQL `lower()` lowercases it
//! (`str::to_lowercase`), matches `regex`; never NULL.
//!
//! Not here: which values a search looks at or the regex itself (search.rs and sluice-query's
//! `word_regex`), and nothing that decides masking (the arguments are the masked view's columns).
//!
//! Matching the values one at a time is equivalent to matching the regex against their
//! concatenation with U+001F, because a word regex never crosses that separator; it saves
//! building the concatenation for every row. The work per batch is mostly one pass per column:
//! the column's bytes are ASCII-lowercased into a reused buffer (for an ASCII value that is what
//! `to_lowercase` gives), the regex's longest required literal is searched in the whole buffer at
//! once, and the regex runs only on the values with a hit or with non-ASCII bytes (those are
//! lowercased on their own, as their lowercase may differ from the ASCII one, e.g. the Kelvin
//! sign becomes `k`). The regex is compiled once per query and pattern.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, GenericStringArray, OffsetSizeTrait};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};
use memchr::memmem;
use regex_syntax::hir::{Hir, HirKind};

/// Name of [`WordsMatch`] in SQL.
pub(crate) const WORDS_MATCH: &str = "sluice_words_match";

/// Bytes looked at in one step when searching a column's buffer for non-ASCII bytes.
const ASCII_CHUNK_BYTES: usize = 64;

/// A compiled word regex.
#[derive(Debug)]
pub(crate) struct Matcher {
    regex: regex::bytes::Regex,
    /// The longest literal every match contains, when the regex has one.
    needle: Option<memmem::Finder<'static>>,
}

impl Matcher {
    /// Compiles `pattern` with the same syntax and defaults as DataFusion's `regexp_like`
    /// (the `regex` crate, Unicode on, no flags).
    pub(crate) fn new(pattern: &str) -> Result<Matcher, String> {
        let regex = regex::bytes::Regex::new(pattern)
            .map_err(|e| format!("{WORDS_MATCH}: regular expression {pattern:?} does not compile: {e}"))?;
        let needle = regex_syntax::Parser::new()
            .parse(pattern)
            .ok()
            .and_then(|hir| required_literal(&hir))
            .map(|lit| memmem::Finder::new(&lit).into_owned());
        Ok(Matcher { regex, needle })
    }

    /// Whether the value `v` (not lowercased) matches. `scratch` is reused between calls.
    pub(crate) fn value_matches(&self, v: &str, scratch: &mut Vec<u8>) -> bool {
        if v.is_ascii() {
            scratch.clear();
            scratch.extend_from_slice(v.as_bytes());
            scratch.make_ascii_lowercase();
            if self.needle.as_ref().is_some_and(|n| n.find(scratch).is_none()) {
                return false;
            }
            self.regex.is_match(scratch)
        } else {
            self.regex.is_match(v.to_lowercase().as_bytes())
        }
    }

    /// Sets `out[i]` for every row `i` of `array` whose value matches (rows already set are not
    /// looked at again).
    fn mark_offsets<O: OffsetSizeTrait>(&self, array: &GenericStringArray<O>, out: &mut [bool], scratch: &mut Vec<u8>) {
        let offsets = array.value_offsets();
        let (Some(first), Some(last)) = (offsets.first(), offsets.last()) else {
            return;
        };
        let base = first.as_usize();
        let data = &array.value_data()[base..last.as_usize()];
        // Row `i` spans `bounds(i)` in `data` and `scratch`.
        let bounds = |i: usize| offsets[i].as_usize() - base..offsets[i + 1].as_usize() - base;
        // The row holding byte `at`, and the first byte after that row.
        let row_of = |at: usize| {
            let i = offsets[1..].partition_point(|o| o.as_usize() - base <= at);
            (i, offsets[i + 1].as_usize() - base)
        };
        scratch.clear();
        scratch.extend_from_slice(data);
        scratch.make_ascii_lowercase();
        let check = |i: usize, out: &mut [bool]| {
            if out[i] || array.is_null(i) {
                return;
            }
            let range = bounds(i);
            let lowered = &scratch[range.clone()];
            out[i] = if lowered.is_ascii() {
                self.regex.is_match(lowered)
            } else {
                // Valid UTF-8: the bytes of one value of a string array.
                std::str::from_utf8(&data[range]).is_ok_and(|v| self.regex.is_match(v.to_lowercase().as_bytes()))
            };
        };
        let Some(needle) = &self.needle else {
            for i in 0..array.len() {
                check(i, out);
            }
            return;
        };
        // Values with a hit of the needle in their ASCII lowercase (for an ASCII value, its
        // lowercase): a value without one cannot match.
        let mut at = 0;
        while let Some(hit) = needle.find(&scratch[at..]) {
            let (i, end) = row_of(at + hit);
            check(i, out);
            at = end;
        }
        // Values with a non-ASCII byte, whose full lowercase may hold the needle.
        let mut at = 0;
        while let Some(found) = first_non_ascii(&data[at..]) {
            let (i, end) = row_of(at + found);
            check(i, out);
            at = end;
        }
    }

    /// Sets `out[i]` for every row whose value in `arg` (a string column or scalar) matches.
    fn mark(&self, arg: &ColumnarValue, out: &mut [bool], scratch: &mut Vec<u8>) -> DfResult<()> {
        let array = match arg {
            ColumnarValue::Scalar(s) => {
                if s.try_as_str().flatten().is_some_and(|v| self.value_matches(v, scratch)) {
                    out.fill(true);
                }
                return Ok(());
            }
            ColumnarValue::Array(a) => a,
        };
        match array.data_type() {
            DataType::Null => {}
            DataType::Utf8 => self.mark_offsets(array.as_string::<i32>(), out, scratch),
            DataType::LargeUtf8 => self.mark_offsets(array.as_string::<i64>(), out, scratch),
            DataType::Utf8View => {
                for (i, v) in array.as_string_view().iter().enumerate() {
                    if let Some(v) = v {
                        out[i] = out[i] || self.value_matches(v, scratch);
                    }
                }
            }
            DataType::Dictionary(..) => {
                let plain: ArrayRef = cast(array, &DataType::Utf8)?;
                self.mark_offsets(plain.as_string::<i32>(), out, scratch);
            }
            other => return exec_err!("{WORDS_MATCH} searches string columns only, got {other}"),
        }
        Ok(())
    }
}

/// Where the first byte of `bytes` that is not ASCII is.
fn first_non_ascii(bytes: &[u8]) -> Option<usize> {
    // `is_ascii` reads a word at a time; most chunks are all ASCII.
    let mut at = 0;
    for chunk in bytes.chunks(ASCII_CHUNK_BYTES) {
        if !chunk.is_ascii() {
            return chunk.iter().position(|b| !b.is_ascii()).map(|p| at + p);
        }
        at += chunk.len();
    }
    None
}

/// The longest literal that every match of `hir` contains: a literal at the top level of its
/// concatenation (or the whole pattern, when it is a literal).
fn required_literal(hir: &Hir) -> Option<Vec<u8>> {
    let parts = match hir.kind() {
        HirKind::Literal(lit) => return Some(lit.0.to_vec()).filter(|l| !l.is_empty()),
        HirKind::Concat(parts) => parts,
        _ => return None,
    };
    parts
        .iter()
        .filter_map(|p| match p.kind() {
            HirKind::Literal(lit) => Some(lit.0.to_vec()),
            _ => None,
        })
        .filter(|l| !l.is_empty())
        .max_by_key(Vec::len)
}

/// `sluice_words_match` (see the module docs). One instance per query; the compiled regexes
/// live as long as it.
#[derive(Debug)]
pub(crate) struct WordsMatch {
    signature: Signature,
    compiled: Mutex<HashMap<String, Arc<Matcher>>>,
}

// Two instances are the same function: the cache is not part of its identity.
impl PartialEq for WordsMatch {
    fn eq(&self, other: &Self) -> bool {
        self.signature == other.signature
    }
}

impl Eq for WordsMatch {}

impl Hash for WordsMatch {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.signature.hash(state);
    }
}

impl WordsMatch {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(WordsMatch {
            signature: Signature::variadic_any(Volatility::Immutable),
            compiled: Mutex::new(HashMap::new()),
        })
    }

    fn matcher(&self, pattern: &str) -> DfResult<Arc<Matcher>> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(m) = compiled.get(pattern) {
            return Ok(m.clone());
        }
        let m = Arc::new(Matcher::new(pattern).map_err(datafusion::common::DataFusionError::Execution)?);
        compiled.insert(pattern.to_owned(), m.clone());
        Ok(m)
    }
}

impl ScalarUDFImpl for WordsMatch {
    fn name(&self) -> &str {
        WORDS_MATCH
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn is_nullable(&self, _args: &[datafusion::prelude::Expr], _schema: &dyn datafusion::common::ExprSchema) -> bool {
        false
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some((ColumnarValue::Scalar(pattern), values)) = args.args.split_first() else {
            return exec_err!("{WORDS_MATCH} takes a constant regex, then the values to search");
        };
        let Some(Some(pattern)) = pattern.try_as_str() else {
            return exec_err!("{WORDS_MATCH} takes a constant string regex first, got {}", pattern.data_type());
        };
        let matcher = self.matcher(pattern)?;
        let all_scalar = values.iter().all(|v| matches!(v, ColumnarValue::Scalar(_)));
        let rows = if all_scalar { 1 } else { args.number_rows };
        let mut out = vec![false; rows];
        let mut scratch = Vec::new();
        for v in values {
            matcher.mark(v, &mut out, &mut scratch)?;
            if out.iter().all(|m| *m) {
                break;
            }
        }
        Ok(if all_scalar {
            ColumnarValue::Scalar(ScalarValue::Boolean(Some(out.first().copied().unwrap_or(false))))
        } else {
            ColumnarValue::Array(Arc::new(BooleanArray::from(out)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;
    use sluice_query::{quote_str, word_regex, SqlDialect};

    use super::*;

    /// Pieces values are made of: words in several cases, letters whose lowercase is not their
    /// ASCII lowercase (Kelvin sign, dotted capital I, final sigma), separators and punctuation.
    const PIECES: [&str; 24] = [
        "quokka",
        "Quokka",
        "QUOKKA",
        "quo\u{212A}ka",
        "connection",
        "Refused",
        "REFUSED",
        " ",
        "  ",
        "-",
        "_",
        ".",
        "\u{1f}",
        "42",
        "user",
        "ΣΑΣ",
        "σας",
        "İstanbul",
        "istanbul",
        "café",
        "CAFÉ",
        "e\u{301}",
        "ß",
        "x",
    ];

    /// What is searched for: words and phrases that the pieces can make.
    const TERMS: [&str; 12] = [
        "quokka",
        "\"connection refused\"",
        "connection-refused",
        "refused",
        "user 42",
        "42",
        "σας",
        "istanbul",
        "i̇stanbul",
        "café",
        "\"quokka quokka\"",
        "x",
    ];

    fn value() -> impl Strategy<Value = Option<String>> {
        prop::option::weighted(0.8, prop::collection::vec(prop::sample::select(PIECES.to_vec()), 0..6))
            .prop_map(|v| v.map(|pieces| pieces.concat()))
    }

    /// The old test (`regexp_like` over the lowercased concatenation) and the new one, over
    /// Utf8 columns, and over the same values as Utf8View and LargeUtf8, in sliced batches.
    fn both(rows: &[[Option<String>; 3]], term: &str, split: usize) -> (Vec<bool>, Vec<bool>, Vec<bool>) {
        let regex = quote_str(&word_regex(term, SqlDialect::DataFusion).expect("terms have a word"));
        let schema = Arc::new(Schema::new(
            (0..3).map(|i| Field::new(format!("c{i}"), DataType::Utf8, true)).collect::<Vec<_>>(),
        ));
        let columns: Vec<ArrayRef> =
            (0..3).map(|c| Arc::new(rows.iter().map(|r| r[c].clone()).collect::<StringArray>()) as ArrayRef).collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let split = split.min(rows.len());
        let parts = vec![batch.slice(0, split), batch.slice(split, rows.len() - split)];
        let ctx = SessionContext::new();
        ctx.register_udf(WordsMatch::udf());
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![parts]).unwrap())).unwrap();
        let sql = format!(
            "SELECT COALESCE(regexp_like(lower(concat_ws(chr(31), c0, c1, c2)), {regex}), FALSE), \
             {WORDS_MATCH}({regex}, c0, c1, c2), \
             {WORDS_MATCH}({regex}, arrow_cast(c0, 'Utf8View'), arrow_cast(c1, 'LargeUtf8'), c2) FROM t"
        );
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let out = rt.block_on(async { ctx.sql(&sql).await.unwrap().collect().await.unwrap() });
        let column = |i: usize| -> Vec<bool> {
            out.iter()
                .flat_map(|b| b.column(i).as_boolean().iter().map(|v| v.expect("never NULL")).collect::<Vec<_>>())
                .collect()
        };
        (column(0), column(1), column(2))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn agrees_with_regexp_like_over_the_concatenation(
            rows in prop::collection::vec([value(), value(), value()], 0..40),
            term in prop::sample::select(TERMS.to_vec()),
            split in 0usize..40,
        ) {
            let (old, new, other_types) = both(&rows, term, split);
            prop_assert_eq!(&old, &new);
            prop_assert_eq!(&old, &other_types);
        }
    }

    #[test]
    fn words_match_as_documented() {
        let rows = [
            [Some("QUOKKA seen".to_owned()), None, None],
            [Some("quo\u{212A}ka".to_owned()), None, None],
            [Some("quokkas".to_owned()), Some("Connection".to_owned()), Some("refused".to_owned())],
            [None, None, None],
            [Some("xconnection refused".to_owned()), None, Some("connection  -- REFUSED!".to_owned())],
        ];
        assert_eq!(both(&rows, "quokka", 2).1, [true, true, false, false, false]);
        assert_eq!(
            both(&rows, "\"connection refused\"", 1).1,
            [false, false, false, false, true],
            "phrases stay in one value"
        );
    }

    #[test]
    fn required_literal_is_the_longest_token() {
        let re = word_regex("user 4242 x", SqlDialect::DataFusion).unwrap();
        let hir = regex_syntax::Parser::new().parse(&re).unwrap();
        assert_eq!(required_literal(&hir), Some(b"4242".to_vec()));
        assert_eq!(required_literal(&regex_syntax::Parser::new().parse("a|b").unwrap()), None);
    }

    #[test]
    fn non_ascii_bytes_are_found_past_the_first_chunk() {
        let mut text = "a".repeat(ASCII_CHUNK_BYTES * 2 + 3);
        assert_eq!(first_non_ascii(text.as_bytes()), None);
        text.push('é');
        assert_eq!(first_non_ascii(text.as_bytes()), Some(ASCII_CHUNK_BYTES * 2 + 3));
    }
}
