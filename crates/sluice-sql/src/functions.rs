//! SQL functions sluice adds to DataFusion's: `quantile_nearest(x, q)`, the exact
//! nearest-rank quantile of an unsigned integer column (p99 latency the way SRE books define
//! it: the smallest value with at least `q` of the values at or below it); and
//! `sluice_overflow_text(sluice_overflow)`, the string values of the overflow JSON whose keys do
//! not start with `pii_`, joined with U+001F, which is what bare words search there (never the
//! JSON's keys or escapes, so that search and the term indexes agree on what text exists).
//!
//! Not here: the masking functions (mask.rs), which are deliberately not callable by name.
//!
//! DataFusion's `approx_percentile_cont` is approximate and `percentile_cont` interpolates
//! between values; neither answers "which observed latency is the p99". This one keeps the
//! group's values (8 bytes each, counted against the query's memory limit through `size`) and
//! selects the rank in linear time.

use std::sync::Arc;

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, UInt64Array};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::{exec_err, plan_err, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TypeSignature, Volatility,
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
        let q = args.exprs.get(1).and_then(|e| e.downcast_ref::<Literal>()).and_then(|l| {
            if let ScalarValue::Float64(q) = l.value() {
                *q
            } else {
                None
            }
        });
        match q {
            Some(q) if q > 0.0 && q <= 1.0 => Ok(Box::new(NearestAcc { q, values: Vec::new() })),
            _ => plan_err!("quantile_nearest(x, q) needs a constant q with 0 < q <= 1, e.g. 0.99"),
        }
    }
}

#[derive(Debug)]
struct NearestAcc {
    q: f64,
    values: Vec<u64>,
}

impl NearestAcc {
    fn extend(&mut self, array: &ArrayRef) -> DfResult<()> {
        let Some(a) = array.as_primitive_opt::<UInt64Type>() else {
            return exec_err!("quantile_nearest takes an unsigned integer column, got {}", array.data_type());
        };
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
        let Some(lists) = states.first().and_then(|s| s.as_list_opt::<i32>()) else {
            return exec_err!("quantile_nearest: unexpected state");
        };
        for list in lists.iter().flatten() {
            self.extend(&list)?;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let values = std::mem::take(&mut self.values);
        let n = values.len() as i32;
        let list = ListArray::new(
            Arc::new(Field::new_list_field(DataType::UInt64, true)),
            OffsetBuffer::new(ScalarBuffer::from(vec![0, n])),
            Arc::new(UInt64Array::from(values)),
            None,
        );
        Ok(vec![ScalarValue::List(Arc::new(list))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        if self.values.is_empty() {
            return Ok(ScalarValue::UInt64(None));
        }
        let rank = nearest_rank(self.q, self.values.len());
        let (_, v, _) = self.values.select_nth_unstable(rank - 1);
        Ok(ScalarValue::UInt64(Some(*v)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * std::mem::size_of::<u64>()
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
                if !k.starts_with(crate::mask::PII_PREFIX) {
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
        let (array, scalar) = match arg {
            ColumnarValue::Array(a) => (a.clone(), false),
            ColumnarValue::Scalar(s) => (s.to_array()?, true),
        };
        let Some(strings) = array.as_string_opt::<i32>() else {
            return exec_err!("{OVERFLOW_TEXT} takes a string column, got {}", array.data_type());
        };
        let mut b = StringBuilder::with_capacity(strings.len(), 0);
        for v in strings.iter() {
            match v {
                Some(v) => b.append_value(overflow_text(v)),
                None => b.append_null(),
            }
        }
        let out: ArrayRef = Arc::new(b.finish());
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
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
