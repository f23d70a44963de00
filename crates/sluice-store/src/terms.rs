//! Per-segment term indexes: a sidecar file beside every segment holding bloom filters of the
//! tokens and 3-grams of its searchable text, so that a needle query can skip the segments that
//! cannot match (SPEC §3).
//!
//! This module builds, writes, reads and caches the indexes and answers "may this segment contain
//! …?". It does not decide which segments a query reads (the query engine does, following the
//! rules below) and does not change the segments themselves.
//!
//! # What is indexed
//!
//! Only string values, split with [`sluice_query::tokens`] and lowercased with
//! [`sluice_query::normalize`], and cut into 3-grams with [`sluice_query::trigrams`]: the same
//! functions bare-word search uses, so a token the search looks for is found in a segment's
//! index whenever the segment holds it. Integer values are not indexed. Each string column (and
//! each key inside the `sluice_overflow` JSON object, whose string values are indexed one by one,
//! never the JSON text) falls into one [`ColumnClass`]:
//!
//! | class | columns / overflow keys | where |
//! |---|---|---|
//! | open | every other string column, `sluice_source` included | token, 3-gram and column filters |
//! | hidden | `sluice_raw`, `sluice_raw_b64`, `sluice_bad_values`, overflow `sluice_unparsed` | restricted filter: tokens and 3-grams |
//! | pii | names starting with `pii_`, in any case | restricted filter: (name, token) pairs |
//! | not indexed | `sluice_stream`, `sluice_overflow` as a whole, non-string columns | — |
//!
//! The open filters hold only what every caller may search, so any caller may prune with them.
//! The hidden columns hold the original text of bad lines, which may contain personal data and
//! which the API shows only to callers with the `pii` role ([`MASKED_TEXT`] to the others);
//! pruning on them for another caller would confirm that a value exists. So would pruning on
//! `pii_*` values. Both therefore live in the restricted filter, which only a query run for a
//! caller with the `pii` role may consult. When a segment holds hidden text, the open filters
//! also hold the tokens and 3-grams of [`MASKED_TEXT`], which is what other callers see there.
//!
//! The column filter holds (column, token) pairs of the open string columns (and open overflow
//! keys) for the whole segment: it answers "may column c of this segment hold token t?", so that a
//! bare word, which is tested against every open string column, decodes only the columns of a
//! segment that may hold it (sluice-sql leaves the others out of that segment's row filter).
//!
//! A bare word or phrase is absent from a segment if one of its tokens is absent:
//! [`SegmentTerms::may_contain_words`] for everybody, plus
//! [`SegmentTerms::may_contain_hidden_words`] for a caller with the `pii` role. A substring
//! (`LIKE '%text%'` on an open column) is absent if one of its 3-grams, taken after
//! [`sluice_query::normalize`], is absent: that holds for case-sensitive matching and for
//! case-insensitive matching that lowercases character by character as `normalize` does.
//! A value the builder cannot read (an overflow object that does not parse, which the store
//! never writes) makes every filter of the segment answer "may contain".
//!
//! # Sizing
//!
//! Each filter is sized from the number of distinct items counted while building: about 14.4 bits
//! and 10 hash functions per item for a false-positive rate of [`FPR_TARGET`] (0.1%). The four
//! filters of one segment together take at most [`TERMS_BYTES_MAX`] bytes; beyond that every
//! filter is shrunk in proportion, so the false-positive rate grows (about 3% at half the bits
//! per item) but building never fails. The 3-gram filter's items are at most the 2^24 possible
//! byte triples. Positions come from one xxh3-64 hash per item by double hashing
//! (`h1 + i·h2 mod bits`, with `h1`, `h2` its low and high 32 bits, `h2` with its lowest bit
//! set). Items: a token's UTF-8
//! bytes; a 3-gram's three bytes; in the restricted filter, with seeds [`SEED_PII`],
//! [`SEED_HIDDEN_TOKEN`] and [`SEED_HIDDEN_TRIGRAM`], `column 0xFF token` (0xFF never occurs in
//! UTF-8), the token, or the three bytes; in the column filter, the token's hash mixed with the
//! column name's (seed [`SEED_COLUMN`], `column_item`).
//!
//! # Blocks
//!
//! Token items (open tokens, pii pairs, hidden tokens) are indexed per block of [`BLOCK_ROWS`]
//! rows: the item is the token's hash mixed with its block number ([`block_item`]), so one filter
//! answers "may block b hold t?" for every block, and a needle query reads only the row ranges of
//! the blocks that may match (the segment writer cuts data pages at block boundaries, so a
//! skipped block's pages are not even decompressed). A token is counted once per block it occurs
//! in, which is what sizes the filters; most tokens repeat within a block, so this costs far less
//! than a filter per block would. 3-grams are indexed for the whole segment. The open tokens of
//! [`MASKED_TEXT`] are in exactly the blocks that hold hidden text. With 0.1% false positives per
//! block, a token absent from a segment of `n` blocks still leaves about `n / 1000` blocks to read.
//!
//! # File format
//!
//! `seg-N.terms` beside `seg-N.parquet` ([`terms_path`]); all integers little-endian:
//!
//! ```text
//! offset  size        field
//! 0       8           magic "SLTERMS\0"
//! 8       4           version (1)
//! 12      4           filter count (4: tokens, 3-grams, restricted, columns)
//! 16      8           rows of the segment
//! 24      8           rows per block (BLOCK_ROWS when written)
//! 32      4 × 24      per filter: items u64 (distinct items inserted), hashes u32,
//!                     flags u32 (bit 0: shrunk below the target rate by the cap), words u64
//! 128     8 × words   the bit words of each filter in turn (bit i is bit i%64 of word i/64)
//! end-4   4           crc32c of every byte before it
//! ```
//!
//! A filter with no items has no words and contains nothing. Version 2 files are the same without
//! the column filter (count 3, header 104 bytes): they are read, and answer "may hold" to every
//! column. Version 1 files (one item per token for the whole segment, no block field) are not
//! read: their segments are searched without an index until a compaction rewrites them.
//!
//! # Life cycle and crash safety
//!
//! A segment's sidecar is written and fsynced (through a temporary name and a rename, like the
//! segment) before the manifest lists the segment, and deleted with it by compaction and
//! retention; at start, sidecars of segments the manifest does not list are deleted with the other
//! leftovers. A live segment whose sidecar is missing or does not verify stays queryable: the
//! store's [`TermsCache`] then answers "may contain" for it, counts it
//! ([`crate::StoreStats::terms_unavailable`]) and keeps the reason. It is not rebuilt in place;
//! a compaction that rewrites the segment writes a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use bytes::Bytes;
use object_store::{path::Path as ObjectPath, ObjectStore, ObjectStoreExt};
use sluice_query::{normalize, tokens, trigrams};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::buffer::{COL_OVERFLOW, COL_STREAM, OVERFLOW_UNPARSED};

/// False-positive rate each filter is sized for (below the cap).
/// A needle reads every block its filter wrongly lets through: at 1%, a rare word in ~15 events of
/// 10,000,000 read about as many false blocks as true ones; 0.1% costs 1.5× the bits (the
/// indexes are about 4% of the segments' bytes at 10M events).
pub const FPR_TARGET: f64 = 0.001;
/// Most bytes the filters of one segment take together. About 4.6 million distinct items fit at
/// the target rate; a bigger segment gets a higher rate.
pub const TERMS_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Bytes of term indexes [`TermsCache`] keeps in memory by default.
pub const TERMS_CACHE_BYTES_MAX_DEFAULT: usize = 256 * 1024 * 1024;
/// Version written; another version is not read (the segment is then searched without it).
pub const TERMS_VERSION: u32 = 3;
/// The previous version, still read: no column filter.
const TERMS_VERSION_NO_COLUMNS: u32 = 2;
/// Rows per block: tokens are indexed per block of this many rows of the segment (in the order
/// they are written), so that a needle query reads only the blocks that may hold it. The segment
/// writer cuts its data pages within blocks too, so a skipped block is skipped pages. A needle
/// scans whole blocks of its predicate's columns (of every string column for a bare word), so
/// 4,096 rows against 8,192 halves that for about twice the distinct items per segment.
pub const BLOCK_ROWS: u64 = 4096;
/// What the API shows callers without the `pii` role instead of hidden text.
pub const MASKED_TEXT: &str = "(hidden)";
/// Hash seeds of the restricted filter's three kinds of item.
pub const SEED_PII: u64 = 1;
pub const SEED_HIDDEN_TOKEN: u64 = 2;
pub const SEED_HIDDEN_TRIGRAM: u64 = 3;
/// Hash seed of a column name in the column filter's items (and of open values' repeat check).
pub const SEED_COLUMN: u64 = 4;

const MAGIC: [u8; 8] = *b"SLTERMS\0";
const FILTERS: usize = 4;
/// Index of each filter.
const OPEN_TOKENS: usize = 0;
const OPEN_TRIGRAMS: usize = 1;
const RESTRICTED: usize = 2;
const COLUMNS: usize = 3;
const FIXED_HEADER_BYTES: usize = 32;
const HEADER_BYTES: usize = FIXED_HEADER_BYTES + FILTERS * 24;
const CRC_BYTES: usize = 4;
const SEGMENT_EXTENSION: &str = ".parquet";
const TERMS_EXTENSION: &str = ".terms";
/// More hash functions than this buy nothing at any sensible rate.
const HASHES_MAX: u32 = 16;
const FLAG_SHRUNK: u32 = 1;
/// Values remembered to skip repeats (`level`, `rpc_method`, `sluice_source` repeat on most
/// rows): a direct-mapped table of value hashes, small enough to stay in the L1 cache.
const SEEN_SLOTS: usize = 1024;
/// The same for item hashes, in front of each set of distinct items: common words repeat on most
/// rows, and each repeat it catches is an item the set need not append and later sort. 32 KiB
/// each, in the L2 cache (measured with hash sets behind it): against 1,024 slots, 5% less time
/// in `cargo bench -p sluice-store --bench terms` (4,096 in the value table instead gained
/// nothing).
const RECENT_SLOTS: usize = 4096;
/// Every possible 3-gram is a 24-bit number: a bitmap of them is 2 MiB.
const TRIGRAM_SPACE: usize = 1 << 24;
/// Rough in-memory overhead of one cached index beyond its filters, for the cache's budget.
const CACHE_ENTRY_OVERHEAD_BYTES: usize = 256;

/// The sidecar path of a segment: `.parquet` replaced by `.terms`.
///
/// ```
/// assert_eq!(sluice_store::terms_path("segments/d/seg-000000000001.parquet"), "segments/d/seg-000000000001.terms");
/// ```
pub fn terms_path(segment_path: &str) -> String {
    let stem = segment_path.strip_suffix(SEGMENT_EXTENSION).unwrap_or(segment_path);
    format!("{stem}{TERMS_EXTENSION}")
}

/// How the values of a string column (or of an overflow key) are indexed; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnClass {
    /// In the token and 3-gram filters: any caller may prune with them.
    Open,
    /// Original text of bad lines: tokens and 3-grams in the restricted filter.
    Hidden,
    /// Personal data: (name, token) pairs in the restricted filter.
    Pii,
    /// Not indexed.
    NotIndexed,
}

/// The class of a column or overflow key by its name (string values only are ever indexed).
pub fn column_class(name: &str) -> ColumnClass {
    use sluice_event::{KEY_BAD_VALUES, KEY_RAW, KEY_RAW_B64};
    if sluice_query::is_pii(name) {
        ColumnClass::Pii
    } else if [KEY_RAW, KEY_RAW_B64, KEY_BAD_VALUES, OVERFLOW_UNPARSED].contains(&name) {
        ColumnClass::Hidden
    } else if name == COL_STREAM || name == COL_OVERFLOW {
        ColumnClass::NotIndexed
    } else {
        ColumnClass::Open
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TermsError {
    #[error("term index {path} is missing; the segment is read without it until a compaction rewrites it")]
    Missing { path: String },
    #[error(
        "term index {path} is not valid ({reason}); the segment is read without it until a compaction rewrites it"
    )]
    Invalid { path: String, reason: String },
    #[error("term index {path}: {source}; check that the data directory is readable")]
    Store { path: String, source: object_store::Error },
}

/// The distinct item hashes of one filter. Items are appended, and sorted and deduplicated when
/// they reach twice the distinct count of the last time (and before they are read), so it holds
/// at most about twice the distinct items. Appending costs less than probing a hash set of
/// hundreds of thousands of items, which misses the caches: 10% less time building an index in
/// `cargo bench -p sluice-store --bench terms` (268–270 against 286–316 ns a row).
#[derive(Default)]
struct ItemSet {
    items: Vec<u64>,
    /// Length of the sorted, deduplicated prefix (all of `items` right after `compact`).
    sorted: usize,
    /// Length at which the next compaction runs.
    bound: usize,
}

/// The least `bound`, so that small sets are not sorted over and over.
const ITEM_SET_BOUND_MIN: usize = 1 << 16;

impl ItemSet {
    fn insert(&mut self, h: u64) {
        self.items.push(h);
        if self.items.len() >= self.bound.max(ITEM_SET_BOUND_MIN) {
            self.compact();
            self.bound = self.items.len() * 2;
        }
    }

    fn compact(&mut self) {
        if self.sorted != self.items.len() {
            self.items.sort_unstable();
            self.items.dedup();
            self.sorted = self.items.len();
        }
    }

    /// The distinct items, once each.
    fn distinct(&mut self) -> &[u64] {
        self.compact();
        &self.items
    }
}

/// Printable ASCII but upper-case letters (which normalised text has none of): 69 bytes.
const DENSE_BYTES: usize = 0x7F - 0x20 - 26;
/// 3-grams of only [`DENSE_BYTES`]: a 41 KiB bitmap, which stays in the CPU caches where one of
/// all 2^24 3-grams (2 MiB) would not.
const DENSE_TRIGRAMS: usize = DENSE_BYTES * DENSE_BYTES * DENSE_BYTES;
const NOT_DENSE: u8 = u8::MAX;
/// Byte → dense code, or [`NOT_DENSE`].
const DENSE_CODE: [u8; 256] = {
    let mut t = [NOT_DENSE; 256];
    let (mut b, mut code) = (0x20usize, 0u8);
    while b < 0x7F {
        if !(b >= 0x41 && b <= 0x5A) {
            t[b] = code;
            code += 1;
        }
        b += 1;
    }
    t
};
/// Dense code → byte.
const DENSE_BYTE: [u8; DENSE_BYTES] = {
    let mut t = [0u8; DENSE_BYTES];
    let mut b = 0;
    while b < 256 {
        if DENSE_CODE[b] != NOT_DENSE {
            t[DENSE_CODE[b] as usize] = b as u8;
        }
        b += 1;
    }
    t
};

/// A set of 3-grams: a bitmap of the common ones (see [`DENSE_TRIGRAMS`]) and, made when first
/// needed, one over all 2^24 byte triples for the others.
struct TrigramSet {
    dense: Vec<u64>,
    wide: Option<Vec<u64>>,
}

impl TrigramSet {
    fn new() -> TrigramSet {
        TrigramSet { dense: vec![0; DENSE_TRIGRAMS.div_ceil(64)], wide: None }
    }

    fn insert(&mut self, g: [u8; 3]) {
        let c = g.map(|b| DENSE_CODE[b as usize]);
        let (bits, i) = if c.contains(&NOT_DENSE) {
            let wide = self.wide.get_or_insert_with(|| vec![0; TRIGRAM_SPACE / 64]);
            (wide, u32::from_be_bytes([0, g[0], g[1], g[2]]) as usize)
        } else {
            let [a, b, c] = c.map(usize::from);
            (&mut self.dense, (a * DENSE_BYTES + b) * DENSE_BYTES + c)
        };
        bits[i / 64] |= 1 << (i % 64);
    }

    /// Insert every 3-byte window of `text`; text of dense bytes only, most of it, skips the
    /// per-window check.
    fn insert_text(&mut self, text: &[u8]) {
        if text.iter().any(|&b| DENSE_CODE[b as usize] == NOT_DENSE) {
            for w in text.windows(3) {
                self.insert([w[0], w[1], w[2]]);
            }
            return;
        }
        let code = |b: u8| usize::from(DENSE_CODE[b as usize]);
        for w in text.windows(3) {
            // Each window computed on its own: no chain from one to the next for the CPU to wait on.
            let i = (code(w[0]) * DENSE_BYTES + code(w[1])) * DENSE_BYTES + code(w[2]);
            self.dense[i / 64] |= 1 << (i % 64);
        }
    }

    fn len(&self) -> u64 {
        let ones = |v: &Vec<u64>| v.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        ones(&self.dense) + self.wide.as_ref().map_or(0, ones)
    }

    /// Every 3-gram in the set, once.
    fn iter(&self) -> impl Iterator<Item = [u8; 3]> + '_ {
        let dense = set_bits(&self.dense).map(|i| {
            let (ab, c) = (i / DENSE_BYTES, i % DENSE_BYTES);
            [DENSE_BYTE[ab / DENSE_BYTES], DENSE_BYTE[ab % DENSE_BYTES], DENSE_BYTE[c]]
        });
        let wide = self.wide.iter().flat_map(|w| set_bits(w)).map(|i| {
            let [_, a, b, c] = (i as u32).to_be_bytes();
            [a, b, c]
        });
        dense.chain(wide)
    }
}

/// Indices of the set bits of a bitmap, ascending.
fn set_bits(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(wi, &w)| {
        let mut bits = w;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(wi * 64 + b)
        })
    })
}

/// Collects the distinct items of one segment; [`TermsBuilder::finish`] sizes and fills the
/// filters and encodes the file.
pub struct TermsBuilder {
    rows: u64,
    /// Block of the values being added (see [`BLOCK_ROWS`]).
    block: u64,
    /// Blocks holding hidden text, whose open token items then include [`MASKED_TEXT`]'s.
    hidden_blocks: Vec<u64>,
    open_tokens: ItemSet,
    open_trigrams: TrigramSet,
    /// Pii pairs and hidden tokens, already hashed with their seeds.
    restricted: ItemSet,
    /// (column, token) items of open values, for the whole segment.
    column_tokens: ItemSet,
    /// The last column name seen, its hash and its pii seed (values come a column at a time).
    column: (String, u64, u64),
    hidden_trigrams: Option<TrigramSet>,
    seen: Vec<u64>,
    recent_open: Vec<u64>,
    recent_restricted: Vec<u64>,
    recent_column: Vec<u64>,
    pair: Vec<u8>,
    lower: Vec<u8>,
    /// A value could not be read: every filter must answer "may contain".
    unreadable: bool,
}

impl Default for TermsBuilder {
    fn default() -> Self {
        TermsBuilder::new()
    }
}

impl TermsBuilder {
    pub fn new() -> TermsBuilder {
        TermsBuilder {
            rows: 0,
            block: 0,
            hidden_blocks: Vec::new(),
            open_tokens: ItemSet::default(),
            open_trigrams: TrigramSet::new(),
            restricted: ItemSet::default(),
            column_tokens: ItemSet::default(),
            column: (String::new(), xxh3_64_with_seed(b"", SEED_COLUMN), SEED_PII ^ xxh3_64(b"")),
            hidden_trigrams: None,
            seen: vec![0; SEEN_SLOTS],
            recent_open: vec![0; RECENT_SLOTS],
            recent_restricted: vec![0; RECENT_SLOTS],
            recent_column: vec![0; RECENT_SLOTS],
            pair: Vec::new(),
            lower: Vec::new(),
            unreadable: false,
        }
    }

    /// Index every string value of `batch` by its column's class. Batches must come in the
    /// order their rows are written: a row's block is its position in the segment.
    pub fn add_batch(&mut self, batch: &RecordBatch) {
        let first = self.rows;
        self.rows += batch.num_rows() as u64;
        let schema = batch.schema();
        for (field, column) in schema.fields().iter().zip(batch.columns()) {
            let name = field.name().as_str();
            if name == COL_OVERFLOW {
                for_each_str(column.as_ref(), |i, json| {
                    self.block = (first + i as u64) / BLOCK_ROWS;
                    self.add_overflow(json)
                });
                continue;
            }
            let class = column_class(name);
            if class != ColumnClass::NotIndexed {
                for_each_str(column.as_ref(), |i, v| {
                    self.block = (first + i as u64) / BLOCK_ROWS;
                    self.add_value(class, name, v)
                });
            }
        }
        self.block = self.rows / BLOCK_ROWS;
    }

    /// Index the string values of one overflow JSON object by their keys' classes. Keys may repeat
    /// (later values of a duplicate key), so the object is walked rather than collected.
    fn add_overflow(&mut self, json: &str) {
        let mut pairs = Vec::new();
        let mut de = serde_json::Deserializer::from_str(json);
        // The store writes this JSON itself, so it parses; if it ever did not, its text could be
        // anything of any class, and only an index that rules nothing out is safe.
        if serde::Deserializer::deserialize_map(&mut de, OverflowPairs(&mut pairs)).is_err() {
            self.unreadable = true;
            return;
        }
        for (key, value) in pairs {
            let class = column_class(&key);
            if class != ColumnClass::NotIndexed {
                self.add_value(class, &key, &value);
            }
        }
    }

    /// Index one string value of the column (or overflow key) `name` of class `class`, in the
    /// block of the last row added (the first block before any).
    pub fn add_value(&mut self, class: ColumnClass, name: &str, value: &str) {
        if class != ColumnClass::Hidden && self.column.0 != name {
            let bytes = name.as_bytes();
            self.column = (name.to_owned(), xxh3_64_with_seed(bytes, SEED_COLUMN), SEED_PII ^ xxh3_64(bytes));
        }
        let column = self.column.1;
        let seed = match class {
            // The same value in another column adds that column's items.
            ColumnClass::Open => column,
            ColumnClass::Hidden => SEED_HIDDEN_TOKEN,
            ColumnClass::Pii => self.column.2,
            ColumnClass::NotIndexed => return,
        };
        // A repeat of a recent value in the same block adds nothing; hash 0 is the empty slot and
        // always indexed.
        let block = self.block;
        let h = xxh3_64_with_seed(value.as_bytes(), seed) ^ block_salt(block);
        let slot = &mut self.seen[(h as usize) % SEEN_SLOTS];
        if *slot == h && h != 0 {
            return;
        }
        *slot = h;
        let lower = &mut self.lower;
        match class {
            ColumnClass::Open => {
                let (set, recent, grams) = (&mut self.open_tokens, &mut self.recent_open, &mut self.open_trigrams);
                let (columns, recent_column) = (&mut self.column_tokens, &mut self.recent_column);
                let on_token = |t: &[u8]| {
                    let h = xxh3_64(t);
                    insert_hash(set, recent, block_item(h, block));
                    insert_hash(columns, recent_column, column_item(h, column));
                };
                for_each_term(value, lower, true, on_token, |text| grams.insert_text(text));
            }
            ColumnClass::Hidden => {
                let (set, recent) = (&mut self.restricted, &mut self.recent_restricted);
                let grams = self.hidden_trigrams.get_or_insert_with(TrigramSet::new);
                if self.hidden_blocks.last() != Some(&block) {
                    self.hidden_blocks.push(block);
                }
                let on_token =
                    |t: &[u8]| insert_hash(set, recent, block_item(xxh3_64_with_seed(t, SEED_HIDDEN_TOKEN), block));
                for_each_term(value, lower, true, on_token, |text| grams.insert_text(text));
            }
            ColumnClass::Pii => {
                let (set, recent, pair) = (&mut self.restricted, &mut self.recent_restricted, &mut self.pair);
                // `column 0xFF` once, then each token after it.
                pair_item(pair, name, b"");
                let prefix = pair.len();
                let on_token = |t: &[u8]| {
                    pair.truncate(prefix);
                    pair.extend_from_slice(t);
                    insert_hash(set, recent, block_item(xxh3_64_with_seed(pair, SEED_PII), block));
                };
                for_each_term(value, lower, false, on_token, |_| {});
            }
            ColumnClass::NotIndexed => {}
        }
    }

    /// Size the filters, fill them and encode the sidecar file.
    pub fn finish(mut self) -> Bytes {
        if self.hidden_trigrams.is_some() {
            self.hidden_blocks.sort_unstable();
            self.hidden_blocks.dedup();
            for token in tokens(MASKED_TEXT) {
                let h = xxh3_64(normalize(token).as_bytes());
                for &block in &self.hidden_blocks {
                    self.open_tokens.insert(block_item(h, block));
                }
            }
            for g in trigrams(MASKED_TEXT) {
                self.open_trigrams.insert(g);
            }
        }
        let hidden_trigrams = self.hidden_trigrams.as_ref().map_or(0, TrigramSet::len);
        let (open_tokens, restricted, column_tokens) =
            (self.open_tokens.distinct(), self.restricted.distinct(), self.column_tokens.distinct());
        let items = [
            open_tokens.len() as u64,
            self.open_trigrams.len(),
            restricted.len() as u64 + hidden_trigrams,
            column_tokens.len() as u64,
        ];
        let mut filters = size_filters(items);
        for &h in open_tokens {
            filters[OPEN_TOKENS].insert(h);
        }
        for g in self.open_trigrams.iter() {
            filters[OPEN_TRIGRAMS].insert(xxh3_64(&g));
        }
        for &h in restricted {
            filters[RESTRICTED].insert(h);
        }
        if let Some(hidden) = &self.hidden_trigrams {
            for g in hidden.iter() {
                filters[RESTRICTED].insert(xxh3_64_with_seed(&g, SEED_HIDDEN_TRIGRAM));
            }
        }
        for &h in column_tokens {
            filters[COLUMNS].insert(h);
        }
        if self.unreadable {
            for f in &mut filters {
                *f = Bloom::everything(f.words.len());
            }
        }
        encode(self.rows, &filters)
    }
}

/// The column filter's item for token hash `h` in the column whose name hashes to `column`
/// (`xxh3_64_with_seed(name, SEED_COLUMN)`); mixed as [`block_item`] mixes.
fn column_item(h: u64, column: u64) -> u64 {
    let mut x = h ^ column.rotate_left(29);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Mixed into a value's hash so that the same value in another block is indexed again.
fn block_salt(block: u64) -> u64 {
    block.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The item a token hash `h` of block `block` is in the filters as: both halves of the result
/// (the double hashing's two hashes) depend on both inputs (the splitmix64 finalizer).
fn block_item(h: u64, block: u64) -> u64 {
    let mut x = h ^ block_salt(block);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Add an item hash to `set` unless `recent` shows it was just added.
fn insert_hash(set: &mut ItemSet, recent: &mut [u64], h: u64) {
    let slot = &mut recent[(h as usize) % RECENT_SLOTS];
    // 0 marks an empty slot, so an item hashing to 0 always goes to the set.
    if *slot != h || h == 0 {
        *slot = h;
        set.insert(h);
    }
}

/// `column 0xFF token`, the restricted filter's item for a pii value's token.
fn pair_item(out: &mut Vec<u8>, column: &str, normalized: &[u8]) {
    out.clear();
    out.extend_from_slice(column.as_bytes());
    out.push(0xFF);
    out.extend_from_slice(normalized);
}

/// Call `on_token` with each normalised token of `value` and (if `want_text`) `on_text` with the
/// normalised text, whose 3-byte windows are its 3-grams, exactly as [`sluice_query::tokens`],
/// [`sluice_query::normalize`] and [`sluice_query::trigrams`] make them. ASCII text, most of it,
/// takes a path that allocates nothing: for ASCII, `char::is_alphanumeric` and
/// `char::to_lowercase` are their ASCII forms (a test checks both paths agree on any text).
fn for_each_term(
    value: &str,
    lower: &mut Vec<u8>,
    want_text: bool,
    mut on_token: impl FnMut(&[u8]),
    mut on_text: impl FnMut(&[u8]),
) {
    if !value.is_ascii() {
        for token in tokens(value) {
            on_token(normalize(token).as_bytes());
        }
        if want_text {
            on_text(normalize(value).as_bytes());
        }
        return;
    }
    lower.clear();
    lower.extend(value.bytes().map(|b| b.to_ascii_lowercase()));
    for token in lower.split(|b| !b.is_ascii_alphanumeric()).filter(|t| !t.is_empty()) {
        on_token(token);
    }
    if want_text {
        on_text(lower);
    }
}

/// Call `f` with the row and value of every non-null value of a string array; other arrays are
/// skipped.
fn for_each_str(array: &dyn Array, mut f: impl FnMut(usize, &str)) {
    if array.null_count() == array.len() {
        return;
    }
    let mut each = |(i, v): (usize, Option<&str>)| {
        if let Some(v) = v {
            f(i, v)
        }
    };
    match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().iter().enumerate().for_each(&mut each),
        DataType::LargeUtf8 => array.as_string::<i64>().iter().enumerate().for_each(&mut each),
        DataType::Utf8View => array.as_string_view().iter().enumerate().for_each(&mut each),
        _ => {}
    }
}

/// Visits an overflow object's pairs in order, keeping the string values.
struct OverflowPairs<'a>(&'a mut Vec<(String, String)>);

impl<'de> serde::de::Visitor<'de> for OverflowPairs<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if let serde_json::Value::String(s) = map.next_value::<serde_json::Value>()? {
                self.0.push((key, s));
            }
        }
        Ok(())
    }
}

/// One bloom filter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bloom {
    items: u64,
    hashes: u32,
    flags: u32,
    words: Vec<u64>,
}

impl Bloom {
    /// A filter that holds everything, of `words` words (at least one).
    fn everything(words: usize) -> Bloom {
        Bloom { items: 1, hashes: 1, flags: 0, words: vec![u64::MAX; words.max(1)] }
    }

    fn bits(&self) -> u64 {
        self.words.len() as u64 * 64
    }

    /// The `hashes` bit positions of an item hash: `h1 + i·h2 mod bits` (double hashing). `h2`
    /// is made odd: `bits` is a multiple of 64, and an even step would revisit fewer positions.
    fn position(h: u64, i: u64, bits: u64) -> u64 {
        let (h1, h2) = (h & 0xFFFF_FFFF, (h >> 32) | 1);
        h1.wrapping_add(i.wrapping_mul(h2)) % bits
    }

    fn insert(&mut self, h: u64) {
        let bits = self.bits();
        for i in 0..u64::from(self.hashes) {
            let p = Bloom::position(h, i, bits);
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
    }

    fn contains(&self, h: u64) -> bool {
        let bits = self.bits();
        bits > 0
            && (0..u64::from(self.hashes)).all(|i| {
                let p = Bloom::position(h, i, bits);
                self.words[(p / 64) as usize] & (1 << (p % 64)) != 0
            })
    }
}

/// Bits per item for `fpr` in an optimally loaded bloom filter: `-ln(fpr) / ln(2)^2`.
fn bits_per_item(fpr: f64) -> f64 {
    -fpr.ln() / (std::f64::consts::LN_2 * std::f64::consts::LN_2)
}

/// Empty filters for `items` distinct items each, at the target rate within the byte cap.
fn size_filters(items: [u64; FILTERS]) -> [Bloom; FILTERS] {
    let want: [f64; FILTERS] = items.map(|n| n as f64 * bits_per_item(FPR_TARGET));
    let total_bits: f64 = want.iter().sum();
    let cap_bits = (TERMS_BYTES_MAX - HEADER_BYTES - CRC_BYTES) as f64 * 8.0;
    let scale = if total_bits > cap_bits { cap_bits / total_bits } else { 1.0 };
    std::array::from_fn(|i| {
        if items[i] == 0 {
            return Bloom { items: 0, hashes: 0, flags: 0, words: Vec::new() };
        }
        // Rounded down to whole words under the cap, but never below one word.
        let words = ((want[i] * scale) / 64.0).floor().max(1.0) as usize;
        let words = if scale < 1.0 { words } else { words.max((want[i] / 64.0).ceil() as usize) };
        let per_item = (words * 64) as f64 / items[i] as f64;
        let hashes = (per_item * std::f64::consts::LN_2).round().clamp(1.0, f64::from(HASHES_MAX)) as u32;
        let flags = if scale < 1.0 { FLAG_SHRUNK } else { 0 };
        Bloom { items: items[i], hashes, flags, words: vec![0; words] }
    })
}

fn encode(rows: u64, filters: &[Bloom; FILTERS]) -> Bytes {
    let words: usize = filters.iter().map(|f| f.words.len()).sum();
    let mut out = Vec::with_capacity(HEADER_BYTES + words * 8 + CRC_BYTES);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&TERMS_VERSION.to_le_bytes());
    out.extend_from_slice(&(FILTERS as u32).to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
    out.extend_from_slice(&BLOCK_ROWS.to_le_bytes());
    for f in filters {
        out.extend_from_slice(&f.items.to_le_bytes());
        out.extend_from_slice(&f.hashes.to_le_bytes());
        out.extend_from_slice(&f.flags.to_le_bytes());
        out.extend_from_slice(&(f.words.len() as u64).to_le_bytes());
    }
    for f in filters {
        for w in &f.words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_BYTES + words * 8 + CRC_BYTES);
    Bytes::from(out)
}

/// Distinct items of each filter of a [`SegmentTerms`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermsItems {
    /// Open tokens (with the tokens of [`MASKED_TEXT`] when the segment holds hidden text).
    pub tokens: u64,
    /// Open 3-grams.
    pub trigrams: u64,
    /// Pii pairs, hidden tokens and hidden 3-grams.
    pub restricted: u64,
    /// (column, token) pairs of open values (0 in a version 2 index, which has no column filter).
    pub columns: u64,
}

/// The term index of one segment, loaded and verified; or, when it is unavailable, a stand-in
/// that answers "may contain" to everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentTerms {
    rows: u64,
    block_rows: u64,
    /// `None`: unavailable, everything may be contained. A version 2 index's column filter is
    /// [`Bloom::everything`] with 0 items.
    filters: Option<[Bloom; FILTERS]>,
}

impl SegmentTerms {
    /// Read and verify the sidecar of the segment at `segment_path` in `store`.
    pub async fn load(store: &dyn ObjectStore, segment_path: &str) -> Result<SegmentTerms, TermsError> {
        let path = terms_path(segment_path);
        let got = async { store.get(&ObjectPath::from(path.as_str())).await?.bytes().await }.await;
        match got {
            Ok(bytes) => SegmentTerms::from_bytes(&bytes).map_err(|reason| TermsError::Invalid { path, reason }),
            Err(object_store::Error::NotFound { .. }) => Err(TermsError::Missing { path }),
            Err(source) => Err(TermsError::Store { path, source }),
        }
    }

    /// Parse and verify a sidecar file's bytes; the error says what is wrong.
    pub fn from_bytes(data: &[u8]) -> Result<SegmentTerms, String> {
        if data.len() < FIXED_HEADER_BYTES {
            return Err(format!("{} bytes is shorter than the header", data.len()));
        }
        if data[..8] != MAGIC {
            return Err("wrong magic".into());
        }
        let u32_at = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
        let version = u32_at(8);
        let count = match version {
            TERMS_VERSION => FILTERS,
            TERMS_VERSION_NO_COLUMNS => FILTERS - 1,
            _ => return Err(format!("version {version} is not {TERMS_VERSION} or {TERMS_VERSION_NO_COLUMNS}")),
        };
        if u32_at(12) as usize != count {
            return Err(format!("{} filters, expected {count} in version {version}", u32_at(12)));
        }
        let header_bytes = FIXED_HEADER_BYTES + count * 24;
        if data.len() < header_bytes + CRC_BYTES {
            return Err(format!("{} bytes is shorter than the header", data.len()));
        }
        let (body, crc) = data.split_at(data.len() - CRC_BYTES);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        let rows = u64_at(16);
        let block_rows = u64_at(24);
        if block_rows == 0 {
            return Err("block rows 0".into());
        }
        let mut at = header_bytes;
        let mut filters = Vec::with_capacity(FILTERS);
        for i in 0..count {
            let d = FIXED_HEADER_BYTES + i * 24;
            let (items, hashes, flags, words) = (u64_at(d), u32_at(d + 8), u32_at(d + 12), u64_at(d + 16));
            let bytes = words.checked_mul(8).filter(|b| *b <= (body.len() - at) as u64).ok_or("filter past the end")?;
            if (words == 0) != (items == 0) || (words > 0 && !(1..=HASHES_MAX).contains(&hashes)) {
                return Err(format!("filter {i}: {items} items, {words} words, {hashes} hashes"));
            }
            let end = at + bytes as usize;
            let bits = body[at..end].chunks_exact(8).map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")));
            filters.push(Bloom { items, hashes, flags, words: bits.collect() });
            at = end;
        }
        if at != body.len() {
            return Err(format!("{} bytes after the filters", body.len() - at));
        }
        if count < FILTERS {
            // No column filter: every column may hold every token.
            filters.push(Bloom { items: 0, ..Bloom::everything(1) });
        }
        let filters: [Bloom; FILTERS] = filters.try_into().expect("FILTERS filters were read");
        Ok(SegmentTerms { rows, block_rows, filters: Some(filters) })
    }

    /// The stand-in for a segment whose index is missing or invalid: may contain anything.
    pub fn unavailable() -> SegmentTerms {
        SegmentTerms { rows: 0, block_rows: BLOCK_ROWS, filters: None }
    }

    /// Whether this is a real index (not [`SegmentTerms::unavailable`]).
    pub fn is_available(&self) -> bool {
        self.filters.is_some()
    }

    /// Distinct items in each filter (all 0 when unavailable).
    pub fn items(&self) -> TermsItems {
        let n = |i: usize| self.filters.as_ref().map_or(0, |f| f[i].items);
        TermsItems {
            tokens: n(OPEN_TOKENS),
            trigrams: n(OPEN_TRIGRAMS),
            restricted: n(RESTRICTED),
            columns: n(COLUMNS),
        }
    }

    /// Rows of the segment as the index recorded them (0 when unavailable).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether a filter was shrunk by [`TERMS_BYTES_MAX`] (its false-positive rate is above
    /// [`FPR_TARGET`]).
    pub fn is_shrunk(&self) -> bool {
        self.filters.as_ref().is_some_and(|f| f.iter().any(|b| b.flags & FLAG_SHRUNK != 0))
    }

    fn check(&self, filter: usize, h: u64) -> bool {
        self.filters.as_ref().is_none_or(|f| f[filter].contains(h))
    }

    /// Rows per block of this index.
    pub fn block_rows(&self) -> u64 {
        self.block_rows
    }

    /// Blocks of the segment: rows divided by [`SegmentTerms::block_rows`], rounded up, at least 1.
    pub fn blocks(&self) -> u64 {
        self.rows.div_ceil(self.block_rows).max(1)
    }

    /// The blocks whose filter `filter` may hold token item `h`: `None` when the index is
    /// unavailable (every block may).
    fn token_blocks(&self, filter: usize, h: u64) -> Option<Vec<bool>> {
        let f = &self.filters.as_ref()?[filter];
        Some((0..self.blocks()).map(|b| f.contains(block_item(h, b))).collect())
    }

    fn check_token(&self, filter: usize, h: u64) -> bool {
        match &self.filters {
            None => true,
            Some(f) => (0..self.blocks()).any(|b| f[filter].contains(block_item(h, b))),
        }
    }

    /// The blocks in which an open value may hold this token (`None`: the index cannot tell, every
    /// block may). Row `r` of the segment is in block `r / block_rows()`.
    pub fn token_blocks_open(&self, normalized: &str) -> Option<Vec<bool>> {
        self.token_blocks(OPEN_TOKENS, xxh3_64(normalized.as_bytes()))
    }

    /// [`SegmentTerms::token_blocks_open`] for the `pii_*` column (or overflow key) `column`; only
    /// for a query run for a caller with the `pii` role.
    pub fn token_blocks_pii(&self, column: &str, normalized: &str) -> Option<Vec<bool>> {
        let mut item = Vec::with_capacity(column.len() + 1 + normalized.len());
        pair_item(&mut item, column, normalized.as_bytes());
        self.token_blocks(RESTRICTED, xxh3_64_with_seed(&item, SEED_PII))
    }

    /// [`SegmentTerms::token_blocks_open`] for hidden values (original text of bad lines); only
    /// for a caller with the `pii` role.
    pub fn token_blocks_hidden(&self, normalized: &str) -> Option<Vec<bool>> {
        self.token_blocks(RESTRICTED, xxh3_64_with_seed(normalized.as_bytes(), SEED_HIDDEN_TOKEN))
    }

    /// May a value of the open string column `column` hold this token (one
    /// [`sluice_query::tokens`] item after [`sluice_query::normalize`])? False means no value of
    /// that column in this segment does. True when the index cannot tell (unavailable, version 2).
    pub fn may_contain_column_token(&self, column: &str, normalized: &str) -> bool {
        let c = xxh3_64_with_seed(column.as_bytes(), SEED_COLUMN);
        self.check(COLUMNS, column_item(xxh3_64(normalized.as_bytes()), c))
    }

    /// May one value of the open string column `column` hold every token of `text` (a bare word
    /// or phrase; split and normalised here)? True for text without tokens.
    pub fn may_contain_column_words(&self, column: &str, text: &str) -> bool {
        tokens(text).all(|t| self.may_contain_column_token(column, &normalize(t)))
    }

    /// May an open value hold this token? `normalized` is one [`sluice_query::tokens`] item
    /// after [`sluice_query::normalize`]. False means certainly not.
    pub fn may_contain_token(&self, normalized: &str) -> bool {
        self.check_token(OPEN_TOKENS, xxh3_64(normalized.as_bytes()))
    }

    /// May an open value hold every token of `text` (a bare word or phrase; tokens are split and
    /// normalised here)? True for text without tokens.
    pub fn may_contain_words(&self, text: &str) -> bool {
        tokens(text).all(|t| self.may_contain_token(&normalize(t)))
    }

    /// May an open value contain `text` as a substring (compared after
    /// [`sluice_query::normalize`])? Every 3-gram must be present; text shorter than three bytes
    /// cannot be ruled out.
    pub fn may_contain_substring(&self, text: &str) -> bool {
        trigrams(text).all(|g| self.check(OPEN_TRIGRAMS, xxh3_64(&g)))
    }

    /// May the `pii_*` column (or overflow key) `column` hold this normalized token? Only for a
    /// query run for a caller with the `pii` role.
    pub fn may_contain_pii_token(&self, column: &str, normalized: &str) -> bool {
        let mut item = Vec::with_capacity(column.len() + 1 + normalized.len());
        pair_item(&mut item, column, normalized.as_bytes());
        self.check_token(RESTRICTED, xxh3_64_with_seed(&item, SEED_PII))
    }

    /// May `column`'s values hold every token of `value` (for `pii_x:value`)? Only for a caller
    /// with the `pii` role. True for a value without tokens.
    pub fn may_contain_pii_words(&self, column: &str, value: &str) -> bool {
        tokens(value).all(|t| self.may_contain_pii_token(column, &normalize(t)))
    }

    /// May a hidden value (original text of bad lines) hold this normalized token? Only for a
    /// caller with the `pii` role, whose bare words also search that text.
    pub fn may_contain_hidden_token(&self, normalized: &str) -> bool {
        self.check_token(RESTRICTED, xxh3_64_with_seed(normalized.as_bytes(), SEED_HIDDEN_TOKEN))
    }

    /// [`SegmentTerms::may_contain_words`] for hidden values; only for a caller with the `pii` role.
    pub fn may_contain_hidden_words(&self, text: &str) -> bool {
        tokens(text).all(|t| self.may_contain_hidden_token(&normalize(t)))
    }

    /// [`SegmentTerms::may_contain_substring`] for hidden values; only for a caller with the `pii`
    /// role.
    pub fn may_contain_hidden_substring(&self, text: &str) -> bool {
        trigrams(text).all(|g| self.check(RESTRICTED, xxh3_64_with_seed(&g, SEED_HIDDEN_TRIGRAM)))
    }

    /// Bytes the filters take in memory.
    pub fn bytes(&self) -> usize {
        self.filters.as_ref().map_or(0, |f| f.iter().map(|b| b.words.len() * 8).sum())
    }
}

#[derive(Default)]
struct CacheState {
    map: HashMap<String, Arc<SegmentTerms>>,
    /// Insertion order, oldest first, for eviction (may name entries already forgotten).
    order: VecDeque<String>,
    bytes: usize,
    unavailable: u64,
    last_error: Option<String>,
}

/// Loaded term indexes by segment path, within a memory budget (oldest loaded evicted first).
/// A sidecar that cannot be loaded is remembered as [`SegmentTerms::unavailable`] and counted.
pub struct TermsCache {
    bytes_max: usize,
    state: Mutex<CacheState>,
}

impl TermsCache {
    pub fn new(bytes_max: usize) -> TermsCache {
        TermsCache { bytes_max, state: Mutex::new(CacheState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // Nothing here panics while holding the lock; the data stays usable if it did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The index of the live segment at `segment_path`, loading it if needed.
    pub async fn get(&self, store: &dyn ObjectStore, segment_path: &str) -> Arc<SegmentTerms> {
        if let Some(t) = self.lock().map.get(segment_path) {
            return t.clone();
        }
        let terms = match SegmentTerms::load(store, segment_path).await {
            Ok(t) => Arc::new(t),
            Err(e) => {
                let mut s = self.lock();
                s.unavailable += 1;
                s.last_error = Some(e.to_string());
                Arc::new(SegmentTerms::unavailable())
            }
        };
        let mut s = self.lock();
        let size = terms.bytes() + CACHE_ENTRY_OVERHEAD_BYTES + segment_path.len();
        if s.map.insert(segment_path.to_string(), terms.clone()).is_none() {
            s.order.push_back(segment_path.to_string());
            s.bytes += size;
        }
        while s.bytes > self.bytes_max {
            let Some(old) = s.order.pop_front() else { break };
            if let Some(t) = s.map.remove(&old) {
                s.bytes -= t.bytes() + CACHE_ENTRY_OVERHEAD_BYTES + old.len();
            }
        }
        terms
    }

    /// Drop a deleted segment's entry.
    pub fn forget(&self, segment_path: &str) {
        let mut s = self.lock();
        if let Some(t) = s.map.remove(segment_path) {
            s.bytes -= t.bytes() + CACHE_ENTRY_OVERHEAD_BYTES + segment_path.len();
            s.order.retain(|p| p != segment_path);
        }
    }

    /// Sidecars found missing or invalid so far, and the last reason.
    pub fn unavailable(&self) -> (u64, Option<String>) {
        let s = self.lock();
        (s.unavailable, s.last_error.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_layout_parses_and_damage_is_refused() {
        let mut b = TermsBuilder::new();
        b.add_value(ColumnClass::Open, "msg", "Connection refused");
        b.add_value(ColumnClass::Pii, "pii_uid", "U577019");
        let data = b.finish();
        assert_eq!(&data[..8], b"SLTERMS\0");
        assert_eq!(u32::from_le_bytes(data[8..12].try_into().unwrap()), TERMS_VERSION);
        assert_eq!(u32::from_le_bytes(data[12..16].try_into().unwrap()), 4);
        assert_eq!(u64::from_le_bytes(data[24..32].try_into().unwrap()), BLOCK_ROWS);
        let items = |i: usize| u64::from_le_bytes(data[32 + i * 24..40 + i * 24].try_into().unwrap());
        assert_eq!(items(0), 2, "two tokens");
        assert_eq!(items(1), 16, "distinct 3-grams of \"connection refused\"");
        assert_eq!(items(2), 1, "one pii pair");
        assert_eq!(items(3), 2, "two (column, token) pairs");
        let t = SegmentTerms::from_bytes(&data).unwrap();
        assert!(t.may_contain_column_words("msg", "connection REFUSED"));
        assert!(t.may_contain_token("connection") && t.may_contain_words("REFUSED"));
        assert!(t.may_contain_substring("ion ref") && t.may_contain_pii_token("pii_uid", "u577019"));
        for cut in [0, 10, data.len() - 1] {
            assert!(SegmentTerms::from_bytes(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = data.to_vec();
        bad[HEADER_BYTES + 3] ^= 0x10;
        assert_eq!(SegmentTerms::from_bytes(&bad).unwrap_err(), "checksum mismatch");
        let mut v1 = data.to_vec();
        v1[8] = 1;
        assert!(SegmentTerms::from_bytes(&v1).unwrap_err().contains("version 1"));
    }

    /// The same index as version 2 wrote it: no column filter.
    fn as_version_2(data: &[u8]) -> Vec<u8> {
        let u64_at = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        let words = |i: usize| u64_at(FIXED_HEADER_BYTES + i * 24 + 16) as usize;
        let kept_words: usize = (0..FILTERS - 1).map(words).sum();
        let mut out = data[..FIXED_HEADER_BYTES + (FILTERS - 1) * 24].to_vec();
        out[8..12].copy_from_slice(&2u32.to_le_bytes());
        out[12..16].copy_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&data[HEADER_BYTES..HEADER_BYTES + kept_words * 8]);
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    #[test]
    fn the_column_filter_knows_which_column_holds_a_token() {
        let mut b = TermsBuilder::new();
        b.add_value(ColumnClass::Open, "message", "Scheduled quokka on the upstream");
        b.add_value(ColumnClass::Open, "url", "/api/v1/orders");
        // The same value in two columns: each column holds it.
        b.add_value(ColumnClass::Open, "level", "ERROR");
        b.add_value(ColumnClass::Open, "result", "ERROR");
        b.add_value(ColumnClass::Hidden, "sluice_raw", "secret text");
        b.add_value(ColumnClass::Pii, "pii_uid", "U577019");
        let data = b.finish();
        let t = SegmentTerms::from_bytes(&data).unwrap();
        assert_eq!(t.items().columns, 10, "message 5, url 3, level 1, result 1");
        assert!(
            t.may_contain_column_words("message", "quokka") && t.may_contain_column_words("message", "the UPSTREAM")
        );
        assert!(!t.may_contain_column_words("url", "quokka") && !t.may_contain_column_words("level", "quokka"));
        assert!(t.may_contain_column_words("url", "v1 orders") && !t.may_contain_column_words("url", "quokka orders"));
        assert!(t.may_contain_column_token("level", "error") && t.may_contain_column_token("result", "error"));
        for (column, token) in [("sluice_raw", "secret"), ("pii_uid", "u577019"), ("message", "secret")] {
            assert!(!t.may_contain_column_token(column, token), "{column}: {token} is not open text");
        }
        // A version 2 index (no column filter) is read and rules no column out.
        let v2 = SegmentTerms::from_bytes(&as_version_2(&data)).unwrap();
        assert_eq!(v2.items().columns, 0);
        assert!(v2.may_contain_column_words("url", "quokka") && v2.may_contain_token("quokka"));
        assert!(!v2.may_contain_token("absent") && v2.token_blocks_open("quokka") == t.token_blocks_open("quokka"));
        assert!(SegmentTerms::unavailable().may_contain_column_token("url", "quokka"));
    }

    #[test]
    fn tokens_are_found_in_their_own_blocks_only() {
        use arrow_array::StringArray;
        let rows = (2 * BLOCK_ROWS + 10) as usize;
        // msg: "row N" everywhere, "needle" at one row of block 1; raw text at one row of block 2;
        // a pii value at one row of block 0.
        let msg: Vec<String> = (0..rows)
            .map(|i| if i == BLOCK_ROWS as usize + 3 { "the needle".into() } else { format!("row {i}") })
            .collect();
        let raw: Vec<Option<&str>> = (0..rows).map(|i| (i == rows - 1).then_some("secret bad text")).collect();
        let uid: Vec<Option<&str>> = (0..rows).map(|i| (i == 7).then_some("U577019")).collect();
        let batch = |from: usize, to: usize| {
            RecordBatch::try_from_iter([
                ("msg", Arc::new(StringArray::from_iter_values(msg[from..to].iter())) as arrow_array::ArrayRef),
                ("sluice_raw", Arc::new(StringArray::from(raw[from..to].to_vec()))),
                ("pii_uid", Arc::new(StringArray::from(uid[from..to].to_vec()))),
            ])
            .unwrap()
        };
        let mut b = TermsBuilder::new();
        // Batches that do not end on block boundaries.
        b.add_batch(&batch(0, 5000));
        b.add_batch(&batch(5000, rows));
        let t = SegmentTerms::from_bytes(&b.finish()).unwrap();
        assert_eq!((t.rows(), t.blocks(), t.block_rows()), (rows as u64, 3, BLOCK_ROWS));
        assert_eq!(t.token_blocks_open("needle"), Some(vec![false, true, false]));
        assert_eq!(t.token_blocks_open("row"), Some(vec![true, true, true]));
        assert_eq!(t.token_blocks_open("secret"), Some(vec![false, false, false]), "hidden text is not open");
        assert_eq!(t.token_blocks_hidden("secret"), Some(vec![false, false, true]));
        assert_eq!(t.token_blocks_open("hidden"), Some(vec![false, false, true]), "the masked text's block");
        assert_eq!(t.token_blocks_pii("pii_uid", "u577019"), Some(vec![true, false, false]));
        assert!(t.may_contain_token("needle") && !t.may_contain_token("absent"));
        assert_eq!(SegmentTerms::unavailable().token_blocks_open("x"), None);
    }

    #[test]
    fn item_sets_hold_each_item_once_across_their_compactions() {
        let mut set = ItemSet::default();
        // 300,000 distinct items, each added three times, the repeats far apart (so several
        // compactions run in between), and 0 among them.
        let item = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for round in 0..3 {
            for i in 0..300_000u64 {
                set.insert(item(if round == 1 { 299_999 - i } else { i }));
            }
        }
        assert!(set.items.len() < 3 * 300_000, "compacted while adding");
        let distinct = set.distinct().to_vec();
        let mut want: Vec<u64> = (0..300_000).map(item).collect();
        want.sort_unstable();
        assert_eq!(distinct, want);
        // Adding after reading goes on counting right.
        set.insert(item(7));
        set.insert(1);
        assert_eq!(set.distinct().len(), 300_001);
    }

    #[test]
    fn pii_values_of_several_tokens_and_columns_are_each_under_their_own_column() {
        let mut b = TermsBuilder::new();
        // Columns alternate, as the values of a batch's columns do, and a value has many tokens.
        for _ in 0..2 {
            b.add_value(ColumnClass::Pii, "pii_ip", "10.21.132.243");
            b.add_value(ColumnClass::Pii, "pii_uid", "U577019");
            b.add_value(ColumnClass::Open, "msg", "plain words");
        }
        let t = SegmentTerms::from_bytes(&b.finish()).unwrap();
        for token in ["10", "21", "132", "243"] {
            assert!(t.may_contain_pii_token("pii_ip", token), "{token}");
            assert!(!t.may_contain_pii_token("pii_uid", token), "{token} is not a pii_uid token");
        }
        assert!(t.may_contain_pii_words("pii_ip", "10.21.132.243"));
        assert!(t.may_contain_pii_token("pii_uid", "u577019") && !t.may_contain_pii_token("pii_ip", "u577019"));
        assert!(!t.may_contain_token("10") && !t.may_contain_token("u577019"), "pii stays out of the open filter");

        // One value in two pii columns is no repeat: each column gets its pair.
        let mut b = TermsBuilder::new();
        b.add_value(ColumnClass::Pii, "pii_a", "same");
        b.add_value(ColumnClass::Pii, "pii_b", "same");
        let t = SegmentTerms::from_bytes(&b.finish()).unwrap();
        assert!(t.may_contain_pii_token("pii_a", "same") && t.may_contain_pii_token("pii_b", "same"));
    }

    #[test]
    fn an_unreadable_overflow_object_rules_nothing_out() {
        let mut b = TermsBuilder::new();
        b.add_value(ColumnClass::Open, "msg", "hello");
        b.add_overflow("{\"msg\":");
        let t = SegmentTerms::from_bytes(&b.finish()).unwrap();
        assert!(t.may_contain_token("anything") && t.may_contain_substring("anything"));
        assert!(t.may_contain_pii_token("pii_x", "y") && t.may_contain_hidden_token("z"));
        assert!(t.may_contain_column_token("url", "anything"));
    }

    #[test]
    fn classes_follow_the_documented_table() {
        for (name, class) in [
            ("msg", ColumnClass::Open),
            ("sluice_source", ColumnClass::Open),
            ("sluice_bad", ColumnClass::Open),
            ("pii_uid", ColumnClass::Pii),
            ("PII_uid", ColumnClass::Pii),
            ("Pii_x", ColumnClass::Pii),
            ("piiuid", ColumnClass::Open),
            ("x_pii_uid", ColumnClass::Open),
            ("sluice_raw", ColumnClass::Hidden),
            ("sluice_raw_b64", ColumnClass::Hidden),
            ("sluice_bad_values", ColumnClass::Hidden),
            ("sluice_unparsed", ColumnClass::Hidden),
            ("sluice_stream", ColumnClass::NotIndexed),
            ("sluice_overflow", ColumnClass::NotIndexed),
        ] {
            assert_eq!(column_class(name), class, "{name}");
        }
    }

    #[test]
    fn the_cap_shrinks_filters_instead_of_failing() {
        let f = size_filters([100_000_000, 1_000, 0, 5_000]);
        let bytes: usize = f.iter().map(|b| b.words.len() * 8).sum();
        assert!(bytes <= TERMS_BYTES_MAX - HEADER_BYTES - CRC_BYTES, "{bytes}");
        assert_eq!(f[0].flags, FLAG_SHRUNK);
        assert!(f[2].words.is_empty() && f[2].hashes == 0);
        let f = size_filters([1, 1000, 10, 100]);
        assert_eq!(f[1].hashes, 10, "about 14.4 bits per item");
        assert!(f.iter().all(|b| b.flags == 0));
    }

    proptest::proptest! {
        // Each case walks a 2 MiB bitmap (slow unoptimised): fewer cases.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        #[test]
        fn insert_text_adds_every_window(text in proptest::collection::vec(proptest::sample::select(b" aZz09~\x1f\x7f\xc3\xa9".to_vec()), 0..40)) {
            let (mut s, mut t) = (TrigramSet::new(), TrigramSet::new());
            s.insert_text(&text);
            for w in text.windows(3) {
                t.insert([w[0], w[1], w[2]]);
            }
            proptest::prop_assert_eq!(s.iter().collect::<Vec<_>>(), t.iter().collect::<Vec<_>>());
        }

        #[test]
        fn trigram_sets_hold_exactly_what_was_inserted(grams in proptest::collection::vec(proptest::prelude::any::<[u8; 3]>(), 0..200)) {
            let mut s = TrigramSet::new();
            for g in &grams {
                s.insert(*g);
            }
            // The same through insert_text, one 3-gram at a time (dense or not).
            let mut t = TrigramSet::new();
            for g in &grams {
                t.insert_text(g);
            }
            proptest::prop_assert_eq!(s.iter().collect::<Vec<_>>(), t.iter().collect::<Vec<_>>());
            let want: std::collections::BTreeSet<[u8; 3]> = grams.into_iter().collect();
            let got: std::collections::BTreeSet<[u8; 3]> = s.iter().collect();
            proptest::prop_assert_eq!(s.len(), want.len() as u64);
            proptest::prop_assert_eq!(got, want);
        }
    }

    proptest::proptest! {
        #[test]
        fn the_fast_path_makes_the_reference_tokens_and_trigrams(value in "[ -~]{0,40}|\\PC{0,20}|[aZ9İΣ_ .-]{0,12}") {
            let mut got_tokens = Vec::new();
            let mut got_grams = Vec::new();
            let mut lower = Vec::new();
            let on_text = |text: &[u8]| got_grams.extend(text.windows(3).map(|w| [w[0], w[1], w[2]]));
            for_each_term(&value, &mut lower, true, |t| got_tokens.push(t.to_vec()), on_text);
            let want_tokens: Vec<Vec<u8>> = tokens(&value).map(|t| normalize(t).into_bytes()).collect();
            let want_grams: Vec<[u8; 3]> = trigrams(&value).collect();
            proptest::prop_assert_eq!(got_tokens, want_tokens);
            proptest::prop_assert_eq!(got_grams, want_grams);
        }
    }

    #[test]
    fn trigram_sets_iterate_what_was_inserted() {
        let mut s = TrigramSet::new();
        for g in [*b"abc", [0, 0, 0], [255, 255, 255], *b"abc"] {
            s.insert(g);
        }
        for g in [*b" ~!", *b"~~~", *b"aBc", *b"  a"] {
            s.insert(g);
        }
        assert_eq!(s.len(), 7);
        let want = [*b"  a", *b" ~!", *b"abc", *b"~~~", [0, 0, 0], *b"aBc", [255, 255, 255]];
        assert_eq!(s.iter().collect::<Vec<_>>(), want, "the dense ones first, each in order");
    }
}
