//! `a || b` on strings, bounded like the string functions (functions.rs, `Bounded`): an analyzer
//! rule, run after DataFusion's type coercion, makes each string `||` a call of
//! `sluice_string_concat`, which refuses (413) a call whose output could exceed the query's
//! memory limit before building it, and otherwise concatenates as `||` does (NULL if either side
//! is). Without it `||` was the one way left to double a value level by level
//! (`WITH b AS (SELECT v || v AS v FROM a), c AS (SELECT v || v …)`) past every limit: the answer
//! check saw only the end, after the memory was taken.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::concat_elements::concat_elements_utf8;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{exec_err, DFSchema, DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, ExprSchemable, LogicalPlan, Operator, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use crate::functions::PerRow;

/// The rule (see the module docs). Place it after DataFusion's `type_coercion`.
#[derive(Debug)]
pub(crate) struct BoundedStringConcat {
    udf: Arc<ScalarUDF>,
}

impl BoundedStringConcat {
    pub(crate) fn new(bytes_max: usize) -> BoundedStringConcat {
        let udf =
            ScalarUDF::new_from_impl(StringConcat { bytes_max, signature: Signature::any(2, Volatility::Immutable) });
        BoundedStringConcat { udf: Arc::new(udf) }
    }
}

impl AnalyzerRule for BoundedStringConcat {
    fn name(&self) -> &str {
        "sluice_bounded_string_concat"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        Ok(plan.transform_up_with_subqueries(|p| self.rewrite_plan(p))?.data)
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

impl BoundedStringConcat {
    fn rewrite_plan(&self, plan: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
        crate::literals::rewrite_plan_exprs(plan, |e, schema| self.rewrite_expr(e, schema))
    }

    fn rewrite_expr(&self, e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
        let Expr::BinaryExpr(BinaryExpr { left, op: Operator::StringConcat, right }) = &e else {
            return Ok(Transformed::no(e));
        };
        // After type coercion both sides are strings of one type; anything else (arrays, a type
        // not known here) is left to DataFusion.
        let (Ok(lt), Ok(rt)) = (left.get_type(schema), right.get_type(schema)) else {
            return Ok(Transformed::no(e));
        };
        if !is_string(&lt) || lt != rt {
            return Ok(Transformed::no(e));
        }
        let call =
            Expr::ScalarFunction(ScalarFunction::new_udf(self.udf.clone(), vec![(**left).clone(), (**right).clone()]));
        Ok(Transformed::yes(call))
    }
}

/// `sluice_string_concat(a, b)`: `a || b` for two strings of one type, bounded.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    bytes_max: usize,
    signature: Signature,
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        "sluice_string_concat"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(args.first().cloned().unwrap_or(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [a, b] = args.args.as_slice() else {
            return exec_err!("sluice_string_concat takes two arguments");
        };
        let rows = args.number_rows;
        let (la, lb) = (PerRow::byte_lengths(a)?, PerRow::byte_lengths(b)?);
        let bound: u128 = (0..rows.max(1)).map(|r| u128::from(la.get(r)) + u128::from(lb.get(r))).sum();
        if bound > self.bytes_max as u128 {
            // QueryError::TooLarge names the limit.
            return Err(DataFusionError::ResourcesExhausted(format!("|| would build up to {bound} bytes")));
        }
        let out_type = a.data_type();
        let scalar = matches!((a, b), (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_)));
        let size = if scalar { 1 } else { rows };
        let as_utf8 = |v: &ColumnarValue| -> DfResult<StringArray> {
            let array = match v {
                ColumnarValue::Scalar(s) => s.to_array_of_size(size)?,
                ColumnarValue::Array(a) => a.clone(),
            };
            Ok(cast(&array, &DataType::Utf8)?.as_string::<i32>().clone())
        };
        let joined: ArrayRef = Arc::new(concat_elements_utf8(&as_utf8(a)?, &as_utf8(b)?)?);
        let joined = cast(&joined, &out_type)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&joined, 0)?)
        } else {
            ColumnarValue::Array(joined)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_stay_null_as_with_the_operator() {
        let f = StringConcat { bytes_max: 1 << 20, signature: Signature::any(2, Volatility::Immutable) };
        let a = ColumnarValue::Array(Arc::new(StringArray::from(vec![Some("a"), None, Some("c")])));
        let b = ColumnarValue::Scalar(ScalarValue::Utf8(Some("-x".into())));
        let field = Arc::new(datafusion::arrow::datatypes::Field::new("a", DataType::Utf8, true));
        let out = f
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![a, b],
                arg_fields: vec![field.clone(), field.clone()],
                number_rows: 3,
                return_field: field,
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        let ColumnarValue::Array(out) = out else { panic!("an array") };
        let out = out.as_string::<i32>();
        assert_eq!(out.iter().collect::<Vec<_>>(), [Some("a-x"), None, Some("c-x")]);
    }
}
