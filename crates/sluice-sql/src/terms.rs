//! Per-segment term indexes as a search uses them: before the query runs, the live segments'
//! indexes (cached by the store) are asked which blocks of each may hold every term the search
//! needs; segments with no such block are left out of the scan, and of the others only those
//! blocks' rows are read. Each bare word or phrase (any, ORed or negated too) is also looked up
//! in each segment's column filter: the open string columns that cannot hold it there are left
//! out of its test for that segment ([`crate::table::RuledOut`]).
//!
//! Not here: building or storing the indexes (sluice-store's `terms`).
//!
//! Role rules (see sluice-store's `terms` docs): everybody prunes with the open filters; only a
//! caller with the `pii` role consults the restricted filter (`pii_*` values and bad-line text),
//! and for such a caller a bare word may also be in the bad-line text.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::Arc;

use sluice_store::{SegmentTerms, Store};

use crate::search::{Needed, Word};
use crate::table::{RuledOut, SegmentAccess, SegmentScan};
use crate::{Access, SegmentFilter};

/// Blocks that may hold a match: `None` for every block (the index cannot tell).
type Blocks = Option<Vec<bool>>;

fn and(a: Blocks, b: Blocks) -> Blocks {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(a.iter().zip(&b).map(|(x, y)| *x && *y).collect()),
    }
}

fn or(a: Blocks, b: Blocks) -> Blocks {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.iter().zip(&b).map(|(x, y)| *x || *y).collect()),
        _ => None,
    }
}

/// The blocks that may hold hidden text (the original text of bad lines). The open filter holds
/// the tokens of the masked text in exactly those blocks (see sluice-store's `terms`), so asking
/// it first confines a hidden-text lookup to them: without this, a bare word for a caller with
/// the `pii` role met the false positives of two filters in every block.
fn hidden_text_blocks(t: &SegmentTerms) -> Blocks {
    sluice_query::tokens(crate::HIDDEN).fold(None, |b, tok| and(b, t.token_blocks_open(&sluice_query::normalize(tok))))
}

/// What to read of a segment of `rows` rows with index `t` for a search needing every term in
/// `needed`.
pub(crate) fn segment_access(t: &SegmentTerms, rows: u64, needed: &[Needed], access: Access) -> SegmentAccess {
    let mut blocks: Blocks = None;
    let mut hidden: Option<Blocks> = None;
    for n in needed {
        let b = match n {
            // A caller with the pii role also finds bare words in the hidden text of bad lines.
            Needed::Token(tok) if access.pii => {
                let hidden = hidden.get_or_insert_with(|| hidden_text_blocks(t)).clone();
                or(t.token_blocks_open(tok), and(t.token_blocks_hidden(tok), hidden))
            }
            Needed::Token(tok) => t.token_blocks_open(tok),
            Needed::PiiToken { column, token } if access.pii => t.token_blocks_pii(column, token),
            // Never asked for (see `needed_terms`); pruning on it would reveal pii values.
            Needed::PiiToken { .. } => None,
        };
        blocks = and(blocks, b);
    }
    // An index that disagrees with the manifest on the rows is not used to narrow.
    let Some(blocks) = blocks.filter(|_| t.rows() == rows) else { return SegmentAccess::All };
    if !blocks.contains(&true) {
        return SegmentAccess::Skip;
    }
    if !blocks.contains(&false) {
        return SegmentAccess::All;
    }
    let block_rows = t.block_rows();
    let mut ranges: Vec<Range<u64>> = Vec::new();
    for (b, _) in blocks.iter().enumerate().filter(|(_, on)| **on) {
        let (start, end) = (b as u64 * block_rows, ((b as u64 + 1) * block_rows).min(rows));
        match ranges.last_mut() {
            Some(last) if last.end == start => last.end = end,
            _ => ranges.push(start..end),
        }
    }
    SegmentAccess::Rows(ranges)
}

/// For each of `words`, the columns of `columns` (open string columns) that the segment's column
/// filter says hold none of its values.
pub(crate) fn ruled_out(t: &SegmentTerms, words: &[Word], columns: &[String]) -> RuledOut {
    let mut out = RuledOut::new();
    for w in words {
        let none: BTreeSet<String> =
            columns.iter().filter(|c| !t.may_contain_column_words(c, &w.text)).cloned().collect();
        if !none.is_empty() {
            out.insert(w.pattern.clone(), none);
        }
    }
    out
}

/// What a quick search prunes by: its needed terms and bare words, the open string columns, who
/// asks, and its time range.
pub(crate) struct TermsRequest {
    pub(crate) needed: Vec<Needed>,
    pub(crate) words: Vec<Word>,
    pub(crate) columns: Vec<String>,
    pub(crate) access: Access,
    pub(crate) since_ns: Option<u64>,
    pub(crate) until_ns: Option<u64>,
}

/// The filter that skips the live segments that cannot match, narrows the others to their
/// blocks that may, and leaves out of each bare word's test the columns (of `columns`, the open
/// string columns) that cannot hold it. Segments that become live after this call are read whole
/// and tested against every column (never wrongly skipped).
pub(crate) async fn filter(store: &Store, r: TermsRequest) -> Option<SegmentFilter> {
    let TermsRequest { needed, words, columns, access, since_ns, until_ns } = r;
    if needed.is_empty() && words.is_empty() {
        return None;
    }
    let mut narrowed = HashMap::new();
    for seg in store.manifest().segments {
        // Outside the time range the scan prunes the segment by its times: its index is not read.
        if since_ns.is_some_and(|t| seg.time_ns_max < t) || until_ns.is_some_and(|t| seg.time_ns_min > t) {
            continue;
        }
        let t = store.segment_terms(&seg.path).await;
        let access = segment_access(&t, seg.rows, &needed, access);
        let ruled_out = if access == SegmentAccess::Skip { RuledOut::new() } else { ruled_out(&t, &words, &columns) };
        let scan = SegmentScan { access, ruled_out };
        if scan != SegmentScan::all() {
            narrowed.insert(seg.path, scan);
        }
    }
    Some(Arc::new(move |seg: &sluice_store::SegmentMeta| {
        narrowed.get(&seg.path).cloned().unwrap_or_else(SegmentScan::all)
    }))
}
