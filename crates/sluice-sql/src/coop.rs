//! Yielding for operators whose output can be far larger than their input, so that a query's
//! time limit and its cancelling take effect in every plan.
//!
//! A query stops (time limit, client gone) only when its stream returns `Pending` to the runtime.
//! DataFusion's `EnsureCooperative` makes the leaves of a plan spend the task's budget per batch
//! they produce, so a plan that reads a lot yields often. An operator that amplifies its input does
//! not: a cross or nested-loop join reads its few small batches, spends a few units of budget, then
//! produces batch after batch from memory; a join on a repeated key and an unnest can do the same.
//! Above it, an aggregate pulls all of that in one poll: a cross join of three copies of 2,000
//! rows answered its 500 ms limit after about 290 s. [`YieldingAmplifiers`] puts a
//! `CooperativeExec` above every such operator, so the budget is spent per batch it outputs and
//! the stream yields every ~128 of them.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::ExecutionPlan;

/// Physical optimizer rule, run after DataFusion's own: wraps every operator with two or more
/// inputs (the joins; a union gains nothing and loses nothing) and every unnest in a
/// `CooperativeExec`. The wrapper passes batches through unchanged and keeps its input's
/// properties (partitioning, order).
#[derive(Debug, Default)]
pub(crate) struct YieldingAmplifiers;

fn amplifies(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.children().len() >= 2 || plan.is::<UnnestExec>()
}

impl PhysicalOptimizerRule for YieldingAmplifiers {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            Ok(if amplifies(&node) {
                Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>)
            } else {
                Transformed::no(node)
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_yielding_amplifiers"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
