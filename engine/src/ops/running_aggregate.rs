//! `RunningAggregateExec`: a `GROUP BY` whose groups live across batches (Spark's
//! `updateStateByKey`), kept as DataFusion aggregate *state*.
//!
//! ```text
//!  batch ─▶ AggregateExec(Partial) ─▶ keys + state columns ─┐
//!                                   stored state (keys + state columns) ─┤
//!                         GroupValues::intern + GroupsAccumulator::merge_batch
//!                                     ├─▶ state()    ─▶ new stored state
//!                                     └─▶ evaluate() ─▶ keys + values (output)
//! ```
//!
//! Because only `state`/`merge_batch` are used, every aggregate DataFusion can merge
//! (count, sum, avg, min, max, stddev, count(distinct), approx_distinct, user-defined
//! ones) runs incrementally with no special case.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{EmitTo, Expr, GroupsAccumulator, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};

use super::{OperatorContext, StreamOperator};
use crate::{Result, internal_err};

/// Running aggregate over all batches so far, emitting every group each batch.
pub struct RunningAggregateExec {
    group_exprs: Vec<Expr>,
    aggr_exprs: Vec<Expr>,
    output_schema: SchemaRef,
    planned: Option<Planned>,
    /// Keys + state columns of every group, in the partial aggregate's layout.
    state: Option<RecordBatch>,
    /// Emit only the groups this batch changed (update mode) instead of all.
    changed_only: bool,
}

/// Group keys, accumulators holding every group, number of groups.
type Merged = (Vec<ArrayRef>, Vec<Box<dyn GroupsAccumulator>>, usize);

struct Planned {
    aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// How many state columns each aggregate has.
    state_widths: Vec<usize>,
    group_schema: SchemaRef,
    partial_schema: SchemaRef,
}

impl RunningAggregateExec {
    /// A running `GROUP BY group_exprs` computing `aggr_exprs` over `input`.
    pub fn try_new(
        input: &DataFrame,
        group_exprs: Vec<Expr>,
        aggr_exprs: Vec<Expr>,
    ) -> Result<Self> {
        let agg = input
            .clone()
            .aggregate(group_exprs.clone(), aggr_exprs.clone())?;
        let output_schema = Arc::new(agg.schema().as_arrow().clone());
        Ok(Self {
            group_exprs,
            aggr_exprs,
            output_schema,
            planned: None,
            state: None,
            changed_only: false,
        })
    }

    /// Emit only the groups each batch changed (the `update` output mode); by
    /// default every group is emitted (`complete`, Spark's `updateStateByKey`).
    pub fn with_changed_only(mut self, changed_only: bool) -> Self {
        self.changed_only = changed_only;
        self
    }

    fn planned(&self) -> Result<&Planned> {
        match &self.planned {
            Some(p) => Ok(p),
            None => internal_err!("RunningAggregateExec used before plan_input"),
        }
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.planned()?
            .aggregates
            .iter()
            .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    Ok(a.create_groups_accumulator()?)
                } else {
                    let a = Arc::clone(a);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    /// Merge `batches` (keys + state columns) into fresh accumulators; returns the
    /// group keys and the accumulators.
    fn merge(
        &self,
        previous: Option<RecordBatch>,
        batches: Vec<RecordBatch>,
        changed: &mut Vec<bool>,
    ) -> Result<Merged> {
        let planned = self.planned()?;
        let nk = planned.group_schema.fields().len();
        let mut accs = self.accumulators()?;
        let mut groups: Option<Box<dyn GroupValues>> = if nk > 0 {
            Some(new_group_values(
                Arc::clone(&planned.group_schema),
                &GroupOrdering::None,
            )?)
        } else {
            None
        };
        let mut indices = Vec::new();
        let mut total = if nk == 0 { 1 } else { 0 };
        let from_previous = previous.is_some();
        for (i, batch) in previous.into_iter().chain(batches).enumerate() {
            match groups.as_mut() {
                Some(g) => {
                    g.intern(&batch.columns()[..nk], &mut indices)?;
                    total = g.len();
                }
                None => {
                    indices.clear();
                    indices.resize(batch.num_rows(), 0);
                }
            }
            changed.resize(total, false);
            if i > 0 || !from_previous {
                for g in &indices {
                    changed[*g] = true;
                }
            }
            let mut col = nk;
            for (acc, width) in accs.iter_mut().zip(&planned.state_widths) {
                acc.merge_batch(&batch.columns()[col..col + width], &indices, total)?;
                col += width;
            }
        }
        let keys = match groups.as_mut() {
            Some(g) => g.emit(EmitTo::All)?,
            None => Vec::new(),
        };
        Ok((keys, accs, total))
    }
}

#[async_trait]
impl StreamOperator for RunningAggregateExec {
    fn name(&self) -> String {
        "RunningAggregateExec".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let (state, plan) = input.clone().into_parts();
        // Type coercion only: the optimizer could rewrite the aggregate itself
        // (count(distinct) into two group-bys), which would not merge across batches.
        let plan = LogicalPlanBuilder::from(plan)
            .aggregate(self.group_exprs.clone(), self.aggr_exprs.clone())?
            .build()?;
        let plan = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})?;
        let LogicalPlan::Aggregate(agg) = plan else {
            return internal_err!("aggregate plan expected, got {}", plan.display());
        };
        let input_plan = state.create_physical_plan(&agg.input).await?;
        let logical_schema: &DFSchema = agg.input.schema();
        let physical_schema = input_plan.schema();
        let props = state.execution_props();
        let planning = Default::default();
        let groups = agg
            .group_expr
            .iter()
            .map(|e| -> Result<(Arc<dyn PhysicalExpr>, String)> {
                let p = datafusion::physical_expr::create_physical_expr(
                    e,
                    logical_schema,
                    props,
                    &planning,
                )?;
                Ok((p, e.schema_name().to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut aggregates = Vec::new();
        let mut filters = Vec::new();
        for e in &agg.aggr_expr {
            let lowered =
                LoweredAggregateBuilder::new(e, logical_schema, &physical_schema, props, &planning)
                    .build()?;
            aggregates.push(lowered.aggregate);
            filters.push(lowered.filter);
        }
        let state_widths = aggregates
            .iter()
            .map(|a| a.state_fields().map(|f| f.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let partial = AggregateExec::try_new(
            AggregateMode::Partial,
            PhysicalGroupBy::new_single(groups),
            aggregates.clone(),
            filters,
            Arc::clone(&input_plan),
            physical_schema,
        )?;
        let partial_schema = partial.schema();
        let nk = agg.group_expr.len();
        let group_schema = Arc::new(Schema::new(partial_schema.fields()[..nk].to_vec()));
        self.planned = Some(Planned {
            aggregates,
            state_widths,
            group_schema,
            partial_schema,
        });
        Ok(Arc::new(partial))
    }

    fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let previous = self.state.take();
        let mut changed = Vec::new();
        let (keys, mut accs, groups) = self.merge(previous, input, &mut changed)?;
        let planned = self.planned()?;
        let mut state_cols = keys.clone();
        for acc in accs.iter_mut() {
            state_cols.extend(acc.state(EmitTo::All)?);
        }
        let state = RecordBatch::try_new(Arc::clone(&planned.partial_schema), state_cols)?;
        // evaluate() consumes the accumulator, so the output comes from a second
        // merge of the new state, leaving `state` intact for the next batch.
        let identity: Vec<usize> = (0..groups).collect();
        let mut out_cols = keys;
        let mut eval_accs = self.accumulators()?;
        let mut col = planned.group_schema.fields().len();
        for (acc, width) in eval_accs.iter_mut().zip(&planned.state_widths) {
            acc.merge_batch(&state.columns()[col..col + width], &identity, groups)?;
            out_cols.push(acc.evaluate(EmitTo::All)?);
            col += width;
        }
        let mut out = RecordBatch::try_new(Arc::clone(&self.output_schema), out_cols)?;
        if self.changed_only {
            changed.resize(groups, false);
            out = filter_record_batch(&out, &BooleanArray::from(changed))?;
        }
        self.state = Some(state);
        Ok(Some(vec![out]))
    }

    fn state_rows(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.num_rows())
    }
}
