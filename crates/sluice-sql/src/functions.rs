//! SQL functions sluice adds to DataFusion's: `quantile_nearest(x, q)`, the exact
//! nearest-rank quantile of an unsigned integer column (p99 latency the way SRE books define
//! it: the smallest value with at least `q` of the values at or below it); and
//! `sluice_overflow_text(sluice_overflow)`, the string values of the overflow JSON whose keys do
//! not start with `pii_`, joined with U+001F, which is what bare words search there (never the
//! JSON's keys or escapes, so that search and the term indexes agree on what text exists); and
//! `sluice_overflow_value(sluice_overflow, 'key')` and `sluice_overflow_integer(sluice_overflow,
//! 'key')`, one key's value there as text (a number as its digits) or as an unsigned integer
//! (NULL unless it is one), with which search tests a field outside its column.
//!
//! Not here: the masking functions (mask.rs), which are deliberately not callable by name.
//!
//! DataFusion's `approx_percentile_cont` is approximate and `percentile_cont` interpolates
//! between values; neither answers "which observed latency is the p99". This one keeps the
//! group's values (8 bytes each, counted against the query's memory limit through `size`) and
//! selects the rank in linear time. Grouped queries use its `GroupsAccumulator`, which keeps
//! every group's values side by side and takes each batch in one pass, rather than DataFusion's
//! fallback of one accumulator per group fed with per-group slices of every batch.
//!
//! The string functions whose output can outgrow their input — `repeat`, `lpad`, `rpad`,
//! `replace`, `regexp_replace`, `concat`, `concat_ws` — are DataFusion's, wrapped ([`Bounded`]) so
//! that a call whose output could exceed the query's memory limit fails (413) before anything is
//! built: one call with a large count allocated gigabytes that no memory pool saw, and the store
//! could be killed for it. Each bound is the worst case of its arguments, row by row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, ListArray, UInt64Array};
use datafusion::arrow::array::{StringBuilder, UInt64Builder};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::{exec_err, plan_err, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, EmitTo, GroupsAccumulator, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

/// `quantile_nearest(x, q)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct QuantileNearest {
    signature: Signature,
}

impl QuantileNearest {
    pub(crate) fn udaf() -> AggregateUDF {
        AggregateUDF::new_from_impl(QuantileNearest {
            signature: Signature::one_of(
                vec![TypeSignature::Exact(vec![DataType::UInt64, DataType::Float64])],
                Volatility::Immutable,
            ),
        })
    }
}

/// Rank of the nearest-rank `q` quantile among `n` values, 1-based: `ceil(q * n)`, at least 1.
pub fn nearest_rank(q: f64, n: usize) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1))
}

impl AggregateUDFImpl for QuantileNearest {
    fn name(&self) -> &str {
        "quantile_nearest"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::UInt64)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        let item = Field::new_list_field(DataType::UInt64, true);
        Ok(vec![Arc::new(Field::new(format!("{}[values]", args.name), DataType::List(Arc::new(item)), true))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(NearestAcc { q: quantile_arg(&args)?, values: Vec::new() }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(NearestGroupsAcc::new(quantile_arg(&args)?)))
    }
}

/// The constant `q` of `quantile_nearest(x, q)`, checked.
fn quantile_arg(args: &AccumulatorArgs) -> DfResult<f64> {
    let q = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>()).and_then(|l| {
        if let ScalarValue::Float64(q) = l.value() {
            *q
        } else {
            None
        }
    });
    match q {
        Some(q) if q > 0.0 && q <= 1.0 => Ok(q),
        _ => plan_err!("quantile_nearest(x, q) needs a constant q with 0 < q <= 1, e.g. 0.99"),
    }
}

/// The unsigned integer argument of `quantile_nearest`.
fn u64_arg(array: &ArrayRef) -> DfResult<&UInt64Array> {
    match array.as_primitive_opt::<UInt64Type>() {
        Some(a) => Ok(a),
        None => exec_err!("quantile_nearest takes an unsigned integer column, got {}", array.data_type()),
    }
}

/// The list-of-values state of `quantile_nearest` (one list per group).
fn state_lists(array: &ArrayRef) -> DfResult<&ListArray> {
    match array.as_list_opt::<i32>() {
        Some(l) => Ok(l),
        None => exec_err!("quantile_nearest: unexpected state {}", array.data_type()),
    }
}

/// The nearest-rank `q` quantile of `values` (reordered), `None` when empty.
fn select_nearest(q: f64, values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let rank = nearest_rank(q, values.len());
    let (_, v, _) = values.select_nth_unstable(rank - 1);
    Some(*v)
}

/// Lists of `groups`' values as one state column (never null: an empty group is an empty list).
fn to_list_array(groups: &[Vec<u64>]) -> ListArray {
    let total: usize = groups.iter().map(Vec::len).sum();
    let mut values = Vec::with_capacity(total);
    for g in groups {
        values.extend_from_slice(g);
    }
    ListArray::new(
        Arc::new(Field::new_list_field(DataType::UInt64, true)),
        OffsetBuffer::from_lengths(groups.iter().map(Vec::len)),
        Arc::new(UInt64Array::from(values)),
        None,
    )
}

#[derive(Debug)]
struct NearestAcc {
    q: f64,
    values: Vec<u64>,
}

impl NearestAcc {
    fn extend(&mut self, array: &ArrayRef) -> DfResult<()> {
        let a = u64_arg(array)?;
        if a.null_count() == 0 {
            self.values.extend_from_slice(a.values());
        } else {
            self.values.extend(a.iter().flatten());
        }
        Ok(())
    }
}

impl Accumulator for NearestAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        match values.first() {
            Some(a) => self.extend(a),
            None => exec_err!("quantile_nearest takes two arguments"),
        }
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let Some(lists) = states.first() else {
            return exec_err!("quantile_nearest: missing state");
        };
        for list in state_lists(lists)?.iter().flatten() {
            self.extend(&list)?;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let values = std::mem::take(&mut self.values);
        Ok(vec![ScalarValue::List(Arc::new(to_list_array(&[values])))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        Ok(ScalarValue::UInt64(select_nearest(self.q, &mut self.values)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * std::mem::size_of::<u64>()
    }
}

/// `quantile_nearest` for all groups of a grouped aggregation at once: the values of group `g`
/// are `groups[g]`. DataFusion hands over whole batches with a group index per row, so a row
/// costs one push, where the one-accumulator-per-group fallback slices every batch per group.
#[derive(Debug)]
struct NearestGroupsAcc {
    q: f64,
    groups: Vec<Vec<u64>>,
    /// Sum of the capacities of `groups`' vectors, kept as they grow so that `size` is O(1).
    values_capacity: usize,
}

impl NearestGroupsAcc {
    fn new(q: f64) -> NearestGroupsAcc {
        NearestGroupsAcc { q, groups: Vec::new(), values_capacity: 0 }
    }

    fn push(&mut self, group: usize, value: u64) {
        let g = &mut self.groups[group];
        let before = g.capacity();
        g.push(value);
        self.values_capacity += g.capacity() - before;
    }

    fn extend(&mut self, group: usize, values: &[u64]) {
        let g = &mut self.groups[group];
        let before = g.capacity();
        g.extend_from_slice(values);
        self.values_capacity += g.capacity() - before;
    }

    /// The first groups as `emit_to` says, shifting the rest down.
    fn take(&mut self, emit_to: EmitTo) -> Vec<Vec<u64>> {
        let taken = emit_to.take_needed(&mut self.groups);
        self.values_capacity -= taken.iter().map(Vec::capacity).sum::<usize>();
        taken
    }
}

impl GroupsAccumulator for NearestGroupsAcc {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        let Some(array) = values.first() else {
            return exec_err!("quantile_nearest takes two arguments");
        };
        let a = u64_arg(array)?;
        self.groups.resize_with(total_num_groups, Vec::new);
        let data = a.values();
        match (a.nulls().filter(|n| n.null_count() > 0), opt_filter) {
            (None, None) => {
                for (&g, &v) in group_indices.iter().zip(data.iter()) {
                    self.push(g, v);
                }
            }
            (nulls, filter) => {
                for (i, (&g, &v)) in group_indices.iter().zip(data.iter()).enumerate() {
                    let valid = nulls.is_none_or(|n| n.is_valid(i));
                    let kept = filter.is_none_or(|f| f.is_valid(i) && f.value(i));
                    if valid && kept {
                        self.push(g, v);
                    }
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let q = self.q;
        let out: UInt64Array = self.take(emit_to).iter_mut().map(|g| select_nearest(q, g)).collect();
        Ok(Arc::new(out))
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        Ok(vec![Arc::new(to_list_array(&self.take(emit_to)))])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        let Some(states) = values.first() else {
            return exec_err!("quantile_nearest: missing state");
        };
        let lists = state_lists(states)?;
        let items = u64_arg(lists.values())?;
        let items_have_nulls = items.null_count() > 0;
        self.groups.resize_with(total_num_groups, Vec::new);
        let offsets = lists.value_offsets();
        for (row, &g) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            if items_have_nulls {
                for i in start..end {
                    if items.is_valid(i) {
                        self.push(g, items.value(i));
                    }
                }
            } else {
                self.extend(g, &items.values()[start..end]);
            }
        }
        Ok(())
    }

    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> DfResult<Vec<ArrayRef>> {
        let Some(array) = values.first() else {
            return exec_err!("quantile_nearest takes two arguments");
        };
        // Each row its own group: a one-value list, or an empty one for a NULL or filtered row.
        let a = u64_arg(array)?;
        let kept = |i: usize| a.is_valid(i) && opt_filter.is_none_or(|f| f.is_valid(i) && f.value(i));
        let items: UInt64Array = (0..a.len()).filter(|&i| kept(i)).map(|i| a.value(i)).collect();
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::UInt64, true)),
            OffsetBuffer::from_lengths((0..a.len()).map(|i| usize::from(kept(i)))),
            Arc::new(items),
            None,
        );
        Ok(vec![Arc::new(list)])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
            + self.groups.capacity() * std::mem::size_of::<Vec<u64>>()
            + self.values_capacity * std::mem::size_of::<u64>()
    }
}

/// `sluice_overflow_text(json)` (see the module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct OverflowText {
    signature: Signature,
}

/// Name of [`OverflowText`] in SQL.
pub(crate) const OVERFLOW_TEXT: &str = "sluice_overflow_text";

impl OverflowText {
    pub(crate) fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(OverflowText {
            signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
        })
    }
}

/// The searchable text of one overflow JSON value.
pub fn overflow_text(json: &str) -> String {
    let mut out = String::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(json) {
        for (k, v) in map {
            if let serde_json::Value::String(s) = v {
                if !sluice_query::is_pii(&k) {
                    if !out.is_empty() {
                        out.push(sluice_query::TEXT_SEPARATOR);
                    }
                    out.push_str(&s);
                }
            }
        }
    }
    out
}

impl ScalarUDFImpl for OverflowText {
    fn name(&self) -> &str {
        OVERFLOW_TEXT
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{OVERFLOW_TEXT} takes one argument");
        };
        map_strings(arg, OVERFLOW_TEXT, |strings| {
            let mut b = StringBuilder::with_capacity(strings.len(), 0);
            for v in strings.iter() {
                match v {
                    Some(v) => b.append_value(overflow_text(v)),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        })
    }
}

/// `f` over the strings of `arg` (an overflow column, or a literal), the answer in the same form.
fn map_strings(
    arg: &ColumnarValue,
    name: &str,
    f: impl FnOnce(&datafusion::arrow::array::StringArray) -> ArrayRef,
) -> DfResult<ColumnarValue> {
    let (array, scalar) = match arg {
        ColumnarValue::Array(a) => (a.clone(), false),
        ColumnarValue::Scalar(s) => (s.to_array()?, true),
    };
    let Some(strings) = array.as_string_opt::<i32>() else {
        return exec_err!("{name} takes a string column, got {}", array.data_type());
    };
    let out = f(strings);
    Ok(if scalar { ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?) } else { ColumnarValue::Array(out) })
}

/// `sluice_overflow_value(json, key)` or, with `integer`, `sluice_overflow_integer(json, key)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct OverflowGet {
    signature: Signature,
    integer: bool,
}

/// Names of [`OverflowGet`] in SQL.
pub(crate) const OVERFLOW_VALUE: &str = "sluice_overflow_value";
pub(crate) const OVERFLOW_INTEGER: &str = "sluice_overflow_integer";

impl OverflowGet {
    pub(crate) fn udf(integer: bool) -> ScalarUDF {
        ScalarUDF::new_from_impl(OverflowGet {
            signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable),
            integer,
        })
    }
}

/// The value of `key` in one overflow JSON object.
fn overflow_get(json: &str, key: &str) -> Option<serde_json::Value> {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(mut map)) => map.remove(key),
        _ => None,
    }
}

impl ScalarUDFImpl for OverflowGet {
    fn name(&self) -> &str {
        if self.integer {
            OVERFLOW_INTEGER
        } else {
            OVERFLOW_VALUE
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(if self.integer { DataType::UInt64 } else { DataType::Utf8 })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = self.name();
        let [json, key] = args.args.as_slice() else {
            return exec_err!("{name} takes two arguments: the overflow column and a key");
        };
        let ColumnarValue::Scalar(ScalarValue::Utf8(Some(key))) = key else {
            return exec_err!("{name} takes the key as a string literal");
        };
        let integer = self.integer;
        map_strings(json, name, |strings| {
            let values = strings.iter().map(|v| v.and_then(|v| overflow_get(v, key)));
            if integer {
                let mut b = UInt64Builder::with_capacity(strings.len());
                b.extend(values.map(|v| v.and_then(|v| v.as_u64())));
                Arc::new(b.finish()) as ArrayRef
            } else {
                let mut b = StringBuilder::with_capacity(strings.len(), 0);
                for v in values {
                    match v {
                        None | Some(serde_json::Value::Null) => b.append_null(),
                        Some(serde_json::Value::String(s)) => b.append_value(s),
                        Some(other) => b.append_value(other.to_string()),
                    }
                }
                Arc::new(b.finish())
            }
        })
    }
}

/// One of DataFusion's functions whose output can dwarf its input (`repeat`, `lpad`, `rpad`),
/// refusing a call whose output could exceed `bytes_max` before it is built.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bounded {
    inner: Arc<ScalarUDF>,
    bytes_max: usize,
}

impl Bounded {
    /// The wrapped functions, to register over DataFusion's own (same names).
    pub(crate) fn all(bytes_max: usize) -> Vec<ScalarUDF> {
        use datafusion::functions::{regex, string, unicode};
        [
            string::repeat(),
            unicode::lpad(),
            unicode::rpad(),
            string::replace(),
            regex::regexp_replace(),
            string::concat(),
            string::concat_ws(),
        ]
        .into_iter()
        .map(|inner| ScalarUDF::new_from_impl(Bounded { inner, bytes_max }))
        .collect()
    }
}

/// One argument's value per row: the same for all (a literal) or one each.
pub(crate) enum PerRow {
    Same(u64),
    Each(Vec<u64>),
}

impl PerRow {
    pub(crate) fn get(&self, row: usize) -> u64 {
        match self {
            PerRow::Same(v) => *v,
            PerRow::Each(v) => v.get(row).copied().unwrap_or(0),
        }
    }

    /// Characters of a string literal that can refer to a capture group (`$1`, `\\1`): each can
    /// bring back at most its match's text. Per row for a column.
    fn group_refs(arg: &ColumnarValue) -> PerRow {
        let refs = |v: &str| v.bytes().filter(|&b| b == b'$' || b == b'\\').count() as u64;
        match arg {
            ColumnarValue::Scalar(s) => PerRow::Same(match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    v.as_deref().map_or(0, refs)
                }
                _ => 0,
            }),
            ColumnarValue::Array(a) => PerRow::Each(if let Some(s) = a.as_string_opt::<i32>() {
                s.iter().map(|v| v.map_or(0, refs)).collect()
            } else if let Some(s) = a.as_string_opt::<i64>() {
                s.iter().map(|v| v.map_or(0, refs)).collect()
            } else if let Some(s) = a.as_string_view_opt() {
                s.iter().map(|v| v.map_or(0, refs)).collect()
            } else {
                vec![0; a.len()]
            }),
        }
    }

    /// Byte lengths of a string argument (0 for NULL).
    pub(crate) fn byte_lengths(arg: &ColumnarValue) -> DfResult<PerRow> {
        Ok(match arg {
            ColumnarValue::Scalar(s) => PerRow::Same(match s {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                    v.as_ref().map_or(0, |v| v.len() as u64)
                }
                _ => 0,
            }),
            ColumnarValue::Array(a) => {
                let lens: Vec<u64> = if let Some(s) = a.as_string_opt::<i32>() {
                    s.iter().map(|v| v.map_or(0, |v| v.len() as u64)).collect()
                } else if let Some(s) = a.as_string_opt::<i64>() {
                    s.iter().map(|v| v.map_or(0, |v| v.len() as u64)).collect()
                } else if let Some(s) = a.as_string_view_opt() {
                    s.iter().map(|v| v.map_or(0, |v| v.len() as u64)).collect()
                } else {
                    vec![0; a.len()]
                };
                PerRow::Each(lens)
            }
        })
    }

    /// An integer argument, negative and NULL as 0.
    fn counts(arg: &ColumnarValue) -> DfResult<PerRow> {
        Ok(match arg {
            ColumnarValue::Scalar(s) => PerRow::Same(match s.cast_to(&DataType::Int64)? {
                ScalarValue::Int64(Some(n)) => n.max(0) as u64,
                _ => 0,
            }),
            ColumnarValue::Array(a) => {
                let a = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
                let a = a.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                PerRow::Each(a.iter().map(|v| v.map_or(0, |n| n.max(0) as u64)).collect())
            }
        })
    }
}

impl Bounded {
    /// The most bytes this call can build, summed over its rows:
    /// - `repeat(s, n)`: the length of `s` times `n`; a pad to `n` characters, 4 bytes each;
    /// - `replace(s, from, to)`: `s` with each of at most `len(s) / len(from) + 1` matches made
    ///   `to` (an empty `from` matches between every two characters);
    /// - `regexp_replace(s, re, with)`: at most `len(s) + 1` matches, each made `with`, and each
    ///   group reference in `with` bringing back at most all of `s` (matches do not overlap);
    /// - `concat(…)`, `concat_ws(sep, …)`: the sum of the arguments (the separator once each).
    fn bound(&self, args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
        let lens = |i: usize| args.get(i).map(PerRow::byte_lengths).transpose();
        let rows = 0..rows.max(1);
        let at = |p: &Option<PerRow>, row: usize| u128::from(p.as_ref().map_or(0, |p| p.get(row)));
        Ok(match self.inner.name() {
            "repeat" | "lpad" | "rpad" => {
                let Some(count) = args.get(1) else { return Ok(0) };
                let (count, text) = (PerRow::counts(count)?, lens(0)?);
                let repeat = self.inner.name() == "repeat";
                rows.map(|r| {
                    let n = u128::from(count.get(r));
                    if repeat {
                        at(&text, r) * n
                    } else {
                        n * 4
                    }
                })
                .sum()
            }
            "replace" => {
                let (text, from, to) = (lens(0)?, lens(1)?, lens(2)?);
                rows.map(|r| at(&text, r) + (at(&text, r) / at(&from, r).max(1) + 1) * at(&to, r)).sum()
            }
            "regexp_replace" => {
                let (text, with) = (lens(0)?, lens(2)?);
                let refs = args.get(2).map(PerRow::group_refs);
                rows.map(|r| at(&text, r) + (at(&text, r) + 1) * at(&with, r) + at(&refs, r) * at(&text, r)).sum()
            }
            _ => {
                let all: Vec<PerRow> = args.iter().map(PerRow::byte_lengths).collect::<DfResult<_>>()?;
                rows.map(|r| {
                    all.iter().map(|p| u128::from(p.get(r))).sum::<u128>()
                        + if self.inner.name() == "concat_ws" {
                            all.first().map_or(0, |p| u128::from(p.get(r))) * args.len() as u128
                        } else {
                            0
                        }
                })
                .sum()
            }
        })
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(args)
    }

    fn return_field_from_args(&self, args: datafusion::logical_expr::ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let bound = self.bound(&args.args, args.number_rows)?;
        if bound > self.bytes_max as u128 {
            // QueryError::TooLarge names the limit.
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{} would build up to {bound} bytes",
                self.name()
            )));
        }
        self.inner.invoke_with_args(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_follows_the_definition() {
        assert_eq!(nearest_rank(0.99, 100), 99);
        assert_eq!(nearest_rank(0.99, 101), 100);
        assert_eq!(nearest_rank(0.5, 1), 1);
        assert_eq!(nearest_rank(1.0, 7), 7);
        assert_eq!(nearest_rank(0.01, 7), 1);
    }

    #[test]
    fn evaluates_to_an_observed_value() {
        let mut acc = NearestAcc { q: 0.99, values: Vec::new() };
        let a: ArrayRef = Arc::new(UInt64Array::from((1..=1000u64).rev().collect::<Vec<_>>()));
        acc.update_batch(&[a]).unwrap();
        // Merging a partial state gives the same answer as one accumulator.
        let mut other = NearestAcc { q: 0.99, values: vec![5000] };
        let state = other.state().unwrap()[0].to_array().unwrap();
        acc.merge_batch(&[state]).unwrap();
        assert_eq!(acc.evaluate().unwrap(), ScalarValue::UInt64(Some(991)));
    }

    fn u64s(values: &[Option<u64>]) -> ArrayRef {
        Arc::new(UInt64Array::from(values.to_vec()))
    }

    fn answers(a: &ArrayRef) -> Vec<Option<u64>> {
        a.as_primitive::<UInt64Type>().iter().collect()
    }

    #[test]
    fn groups_ignore_nulls_and_filtered_rows_and_emit_in_order() {
        let mut acc = NearestGroupsAcc::new(0.5);
        let values = u64s(&[Some(7), None, Some(3), Some(9), Some(1), Some(4)]);
        let filter = BooleanArray::from(vec![Some(true), Some(true), Some(true), Some(true), Some(false), None]);
        acc.update_batch(&[values], &[0, 1, 0, 2, 1, 2], Some(&filter), 3).unwrap();
        // Group 1 saw only a NULL and a filtered row; group 3 appears later with no values yet.
        acc.update_batch(&[u64s(&[Some(5)])], &[0], None, 4).unwrap();
        assert_eq!(answers(&acc.evaluate(EmitTo::First(2)).unwrap()), vec![Some(5), None]);
        // The remaining groups shifted down: old 2 is now 0.
        acc.update_batch(&[u64s(&[Some(2)])], &[0], None, 2).unwrap();
        assert_eq!(answers(&acc.evaluate(EmitTo::All).unwrap()), vec![Some(2), None]);
        assert_eq!(acc.values_capacity, 0, "everything emitted");
    }

    #[test]
    fn group_size_counts_every_kept_value() {
        let mut acc = NearestGroupsAcc::new(0.99);
        let empty = acc.size();
        let values: Vec<Option<u64>> = (0..10_000u64).map(Some).collect();
        let groups: Vec<usize> = (0..10_000).map(|i| i % 10).collect();
        acc.update_batch(&[u64s(&values)], &groups, None, 10).unwrap();
        let grown = acc.size() - empty;
        assert!(grown >= 10_000 * 8, "{grown} bytes for 10,000 values");
        assert!(grown <= 3 * 10_000 * 8, "{grown} bytes for 10,000 values");
        acc.evaluate(EmitTo::All).unwrap();
        assert!(acc.size() <= empty + 10 * std::mem::size_of::<Vec<u64>>(), "released");
    }

    /// How a batch reaches the accumulator under test.
    #[derive(Debug, Clone, Copy)]
    enum Route {
        /// `update_batch` on the partial accumulator.
        Update,
        /// Skipped partial aggregation: `convert_to_state`, then `merge_batch` on the partial.
        Converted,
    }

    fn reference(q: f64, groups_n: usize, rows: &[(usize, Option<u64>, Option<bool>)]) -> Vec<Option<u64>> {
        (0..groups_n)
            .map(|g| {
                let mut v: Vec<u64> = rows
                    .iter()
                    .filter(|(rg, _, keep)| *rg == g && keep.unwrap_or(false))
                    .filter_map(|(_, v, _)| *v)
                    .collect();
                v.sort_unstable();
                (!v.is_empty()).then(|| v[nearest_rank(q, v.len()) - 1])
            })
            .collect()
    }

    /// Take all `groups` groups in chunks of `first` (then the rest with `EmitTo::All`), as
    /// DataFusion does under memory pressure or with a sorted input; `first == 0` is `All` only.
    fn emit_all<T>(groups: usize, first: usize, mut emit: impl FnMut(EmitTo) -> T) -> Vec<T> {
        let mut out = Vec::new();
        let mut left = groups;
        while first > 0 && left > first {
            out.push(emit(EmitTo::First(first)));
            left -= first;
        }
        out.push(emit(EmitTo::All));
        out
    }

    proptest::proptest! {
        #[test]
        fn groups_match_a_sort_based_reference(
            q in proptest::sample::select(vec![0.01, 0.25, 0.5, 0.9, 0.99, 1.0]),
            groups_n in 1usize..12,
            rows in proptest::collection::vec(
                (0usize..12, proptest::option::weighted(0.85, 0u64..500), proptest::option::weighted(0.9, proptest::bool::weighted(0.9))),
                0..400,
            ),
            batch_rows in 1usize..64,
            routes in proptest::collection::vec(proptest::bool::ANY, 1..16),
            use_filter in proptest::bool::ANY,
            state_first in 0usize..5,
            evaluate_first in 0usize..5,
        ) {
            let rows: Vec<_> = rows
                .into_iter()
                .map(|(g, v, f)| (g % groups_n, v, if use_filter { f } else { Some(true) }))
                .collect();
            // Two partial accumulators, as with two partitions; groups numbered in order of
            // first appearance per accumulator, as DataFusion's group tables do.
            let mut partials = [NearestGroupsAcc::new(q), NearestGroupsAcc::new(q)];
            let mut numbering: [Vec<usize>; 2] = [Vec::new(), Vec::new()];
            for (b, chunk) in rows.chunks(batch_rows).enumerate() {
                let p = b % 2;
                let route = if routes[b % routes.len()] { Route::Update } else { Route::Converted };
                let local: Vec<usize> = chunk
                    .iter()
                    .map(|(g, _, _)| match numbering[p].iter().position(|x| x == g) {
                        Some(i) => i,
                        None => {
                            numbering[p].push(*g);
                            numbering[p].len() - 1
                        }
                    })
                    .collect();
                let values = u64s(&chunk.iter().map(|(_, v, _)| *v).collect::<Vec<_>>());
                let filter = use_filter.then(|| BooleanArray::from(chunk.iter().map(|(_, _, f)| *f).collect::<Vec<_>>()));
                let total = numbering[p].len();
                match route {
                    Route::Update => partials[p].update_batch(&[values], &local, filter.as_ref(), total).unwrap(),
                    Route::Converted => {
                        let state = partials[p].convert_to_state(&[values], filter.as_ref()).unwrap();
                        partials[p].merge_batch(&state, &local, total).unwrap();
                    }
                }
            }
            // The final accumulator numbers groups by their real index.
            let mut last = NearestGroupsAcc::new(q);
            for (p, acc) in partials.iter_mut().enumerate() {
                let states = emit_all(acc.groups.len(), state_first, |e| acc.state(e).unwrap());
                let mut at = 0;
                for s in states {
                    let groups: Vec<usize> = (at..at + s[0].len()).map(|i| numbering[p][i]).collect();
                    at += s[0].len();
                    last.merge_batch(&s, &groups, groups_n).unwrap();
                }
                proptest::prop_assert_eq!(at, numbering[p].len());
            }
            last.groups.resize_with(groups_n, Vec::new);
            let got: Vec<Option<u64>> = emit_all(groups_n, evaluate_first, |e| last.evaluate(e).unwrap())
                .iter()
                .flat_map(answers)
                .collect();
            proptest::prop_assert_eq!(got, reference(q, groups_n, &rows));
            proptest::prop_assert_eq!(last.values_capacity, 0);
        }
    }
}

#[cfg(test)]
mod overflow_tests {
    use super::overflow_text;

    #[test]
    fn overflow_text_is_values_without_keys_or_pii() {
        let t = overflow_text(r#"{"status":"a\"b","pii_email":"x@y.z","n":5,"msg":"two words"}"#);
        assert_eq!(t, "two words\u{1f}a\"b", "values in key order");
        assert_eq!(overflow_text("not json"), "");
    }
}
