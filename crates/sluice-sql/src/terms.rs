//! Per-segment term indexes as a search uses them: before the query runs, the live segments'
//! indexes (cached by the store) are asked whether each may hold every term the search needs;
//! the ones that cannot are left out of the scan.
//!
//! Not here: building or storing the indexes (sluice-store's `terms`).
//!
//! Role rules (see sluice-store's `terms` docs): everybody prunes with the open filters; only a
//! caller with the `pii` role consults the restricted filter (`pii_*` values and bad-line text),
//! and for such a caller a bare word may also be in the bad-line text.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_store::{SegmentTerms, Store};

use crate::search::Needed;
use crate::{Access, SegmentFilter};

/// Whether a segment with index `t` may hold every term in `needed`.
fn may_match(t: &SegmentTerms, needed: &[Needed], access: Access) -> bool {
    needed.iter().all(|n| match n {
        Needed::Token(tok) => t.may_contain_token(tok) || (access.pii && t.may_contain_hidden_token(tok)),
        Needed::PiiToken { column, token } => access.pii && t.may_contain_pii_token(column, token),
    })
}

/// The filter that skips the live segments that cannot match. Segments that become live after
/// this call are read (never wrongly skipped).
pub(crate) async fn filter(store: &Store, needed: Vec<Needed>, access: Access) -> Option<SegmentFilter> {
    if needed.is_empty() {
        return None;
    }
    let mut skip = HashSet::new();
    for seg in store.manifest().segments {
        let t = store.segment_terms(&seg.path).await;
        if !may_match(&t, &needed, access) {
            skip.insert(seg.path);
        }
    }
    Some(Arc::new(move |seg: &sluice_store::SegmentMeta| !skip.contains(&seg.path)))
}
