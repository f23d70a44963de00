//! An analyzer rule that gives integer literals the type of the unsigned column they meet:
//! in `time_ns / 60000000000` or `duration_ms > 1000` a non-negative `Int64` literal next to a
//! `UInt64` expression becomes a `UInt64` literal before DataFusion's type coercion runs.
//!
//! Why: every integer column of the store is `UInt64` and SQL integer literals are `Int64`.
//! DataFusion coerces `UInt64 ⊕ Int64` to `Decimal128`, so `time_ns / 60000000000` keeps a
//! fraction (every row becomes its own group when it is grouped by), and comparisons run on
//! decimals that Parquet statistics cannot prune with. With the literal as `UInt64` the division
//! is integer division and the comparison stays on the column's own type.
//!
//! Not rewritten: negative literals (no `UInt64` value; they keep DataFusion's coercion), and
//! subtraction (`duration_ms - 100` is negative for short requests, which only the decimal
//! result can hold; unsigned subtraction would fail the query with an overflow).

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::merge_schema;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

/// The rule (see the module docs). Place it before DataFusion's `type_coercion`.
#[derive(Debug, Default)]
pub(crate) struct UnsignedLiterals;

/// Its name in `EXPLAIN VERBOSE`.
pub(crate) const RULE_NAME: &str = "sluice_unsigned_literals";

impl AnalyzerRule for UnsignedLiterals {
    fn name(&self) -> &str {
        RULE_NAME
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        Ok(plan.transform_up_with_subqueries(rewrite_plan)?.data)
    }
}

fn rewrite_plan(plan: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
    rewrite_plan_exprs(plan, rewrite_expr)
}

/// Rewrite every expression of one plan node bottom-up with `rewrite`, which sees the types the
/// node's inputs give; output names stay as written and the node's schema is recomputed. Shared
/// by the analyzer rules (this one and concat.rs).
pub(crate) fn rewrite_plan_exprs(
    plan: LogicalPlan,
    rewrite: impl Fn(Expr, &DFSchema) -> DfResult<Transformed<Expr>>,
) -> DfResult<Transformed<LogicalPlan>> {
    // The types of a node's expressions come from its inputs (a scan's from its table).
    let mut schema = merge_schema(&plan.inputs());
    if let LogicalPlan::TableScan(ts) = &plan {
        schema.merge(&DFSchema::try_from_qualified_schema(ts.table_name.clone(), &ts.source.schema())?);
    }
    // Keep output names as written (`time_ns / 60000000000`), so that the nodes above, which
    // refer to this node's columns by name, still find them.
    let names = NamePreserver::new(&plan);
    plan.map_expressions(|e| {
        let saved = names.save(&e);
        Ok(e.transform_up(|e| rewrite(e, &schema))?.update_data(|e| saved.restore(e)))
    })?
    // An output's type may have changed here or below (Decimal128 to UInt64).
    .map_data(|p| p.recompute_schema())
}

/// Whether `op` takes two operands of one type (so a literal may take the other's).
fn same_type_operator(op: Operator) -> bool {
    use Operator::*;
    matches!(
        op,
        Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom | Plus | Multiply | Divide | Modulo
    )
}

fn is_u64(e: &Expr, schema: &DFSchema) -> bool {
    // A type that cannot be known yet (an outer reference, a function still to coerce) is left
    // to DataFusion.
    matches!(e.get_type(schema), Ok(DataType::UInt64))
}

/// `e` as a `UInt64` literal if it is a non-negative `Int64` one.
fn as_u64_literal(e: &Expr) -> Option<Expr> {
    match e {
        Expr::Literal(ScalarValue::Int64(Some(v)), meta) if *v >= 0 => {
            Some(Expr::Literal(ScalarValue::UInt64(Some(v.unsigned_abs())), meta.clone()))
        }
        _ => None,
    }
}

/// Replace `e` by its `UInt64` literal when it is one and `other` is `UInt64`.
fn retype(e: &mut Box<Expr>, other: &Expr, schema: &DFSchema) -> bool {
    match as_u64_literal(e) {
        Some(lit) if is_u64(other, schema) => {
            **e = lit;
            true
        }
        _ => false,
    }
}

fn rewrite_expr(e: Expr, schema: &DFSchema) -> DfResult<Transformed<Expr>> {
    Ok(match e {
        Expr::BinaryExpr(BinaryExpr { mut left, op, mut right }) if same_type_operator(op) => {
            let changed = retype(&mut right, &left, schema) || retype(&mut left, &right, schema);
            Transformed::new_transformed(Expr::BinaryExpr(BinaryExpr { left, op, right }), changed)
        }
        Expr::Between(Between { expr, negated, mut low, mut high }) => {
            let changed = retype(&mut low, &expr, schema) | retype(&mut high, &expr, schema);
            Transformed::new_transformed(Expr::Between(Between { expr, negated, low, high }), changed)
        }
        Expr::InList(InList { expr, mut list, negated }) if is_u64(&expr, schema) => {
            // Only when every item fits, so that the list keeps one type.
            match list.iter().map(as_u64_literal).collect::<Option<Vec<_>>>() {
                Some(items) if !items.is_empty() => {
                    list = items;
                    Transformed::yes(Expr::InList(InList { expr, list, negated }))
                }
                _ => Transformed::no(Expr::InList(InList { expr, list, negated })),
            }
        }
        e => Transformed::no(e),
    })
}
