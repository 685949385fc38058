//! What the three aggregates share: the partial aggregate each batch runs, and the
//! merge of partial rows into stored state.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
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

use crate::state::KeyedState;
use crate::{Result, internal_err};

/// A `GROUP BY` split in two: the partial aggregate DataFusion runs over each batch
/// (keys + state columns), and the merge of those rows into the groups kept so far.
pub(crate) struct PartialAggregate {
    pub group_exprs: Vec<Expr>,
    pub aggr_exprs: Vec<Expr>,
    planned: Option<Planned>,
}

pub(crate) struct Planned {
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// How many state columns each aggregate has.
    pub state_widths: Vec<usize>,
    pub group_schema: SchemaRef,
    pub partial_schema: SchemaRef,
}

/// Group keys, accumulators holding every group, number of groups.
type Merged = (Vec<ArrayRef>, Vec<Box<dyn GroupsAccumulator>>, usize);

/// The groups after a merge: the new stored state, the output values, and which
/// groups the batch touched.
pub(crate) struct Folded {
    /// Keys + state columns of every group (the partial aggregate's layout).
    pub state: RecordBatch,
    /// Keys + evaluated aggregates of every group.
    pub output: Vec<ArrayRef>,
    /// Per group: whether this batch's rows touched it.
    pub changed: Vec<bool>,
    pub groups: usize,
}

impl PartialAggregate {
    pub fn new(group_exprs: Vec<Expr>, aggr_exprs: Vec<Expr>) -> Self {
        Self {
            group_exprs,
            aggr_exprs,
            planned: None,
        }
    }

    /// The output schema of `GROUP BY group_exprs` with `aggr_exprs` over `input`.
    pub fn output_schema(&self, input: &DataFrame) -> Result<SchemaRef> {
        let agg = input
            .clone()
            .aggregate(self.group_exprs.clone(), self.aggr_exprs.clone())?;
        Ok(Arc::new(agg.schema().as_arrow().clone()))
    }

    /// `group by [k] aggregates [a]`: what the state depends on (the fingerprint).
    pub fn describe(&self) -> String {
        self.listed(" ")
    }

    /// `group by [k], aggregates [a]`, for EXPLAIN.
    pub fn display(&self) -> String {
        self.listed(", ")
    }

    fn listed(&self, between: &str) -> String {
        let list = |e: &[Expr]| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "group by [{}]{between}aggregates [{}]",
            list(&self.group_exprs),
            list(&self.aggr_exprs)
        )
    }

    /// The merge half of a partial aggregate already planned (`exec`, in `Partial`
    /// mode): what a task on a cluster's executor folds its state partition with.
    /// Its logical expressions are not known there; it cannot plan or describe.
    pub fn from_exec(exec: &AggregateExec) -> Result<Self> {
        let aggregates = exec.aggr_expr().to_vec();
        let state_widths = aggregates
            .iter()
            .map(|a| a.state_fields().map(|f| f.len()))
            .collect::<Result<Vec<_>, _>>()?;
        let partial_schema = exec.schema();
        let nk = exec.group_expr().expr().len();
        let group_schema = Arc::new(Schema::new(partial_schema.fields()[..nk].to_vec()));
        Ok(Self {
            group_exprs: Vec::new(),
            aggr_exprs: Vec::new(),
            planned: Some(Planned {
                aggregates,
                state_widths,
                group_schema,
                partial_schema,
            }),
        })
    }

    pub fn planned(&self) -> Result<&Planned> {
        match &self.planned {
            Some(p) => Ok(p),
            None => internal_err!("an aggregate used before plan_input"),
        }
    }

    /// How many group keys.
    pub fn keys(&self) -> usize {
        match &self.planned {
            Some(p) => p.group_schema.fields().len(),
            None => self.group_exprs.len(),
        }
    }

    /// The partial aggregate over `input`, planned once: its rows are what each batch
    /// merges.
    pub async fn plan(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
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
        // Only the columns the aggregate reads: a hopping window multiplies every input
        // row, and columns nobody reads would be copied with it.
        let mut used = std::collections::HashSet::new();
        for e in agg.group_expr.iter().chain(&agg.aggr_expr) {
            datafusion::logical_expr::utils::expr_to_columns(e, &mut used)?;
        }
        let columns: Vec<Expr> = agg
            .input
            .schema()
            .columns()
            .into_iter()
            .filter(|c| used.contains(c))
            .map(Expr::Column)
            .collect();
        let input = if columns.is_empty() || columns.len() == agg.input.schema().fields().len() {
            agg.input.as_ref().clone()
        } else {
            LogicalPlanBuilder::from(agg.input.as_ref().clone())
                .project(columns)?
                .build()?
        };
        let input_plan = state.create_physical_plan(&input).await?;
        let logical_schema: &DFSchema = input.schema();
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

    pub fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        new_accumulators(&self.planned()?.aggregates)
    }

    /// Merges `previous` (stored state) and `batches` (this batch's partial rows) into
    /// fresh accumulators; the group keys, the accumulators, the number of groups.
    /// `changed` marks the groups `batches` touched.
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

    /// The new state columns and values of `groups` groups: their `previous` state
    /// columns (rows of groups `previous_group`) merged with a batch's partial state
    /// columns (`rows`, of groups `row_group`). Costs what the two inputs hold.
    pub fn fold_groups(
        &self,
        groups: usize,
        previous: (&[ArrayRef], &[usize]),
        rows: (&[ArrayRef], &[usize]),
    ) -> Result<(Vec<ArrayRef>, Vec<ArrayRef>)> {
        let state = self.fold_state(groups, previous, rows)?;
        let output = self.evaluate(&state, groups)?;
        Ok((state, output))
    }

    /// [`PartialAggregate::fold_groups`]'s new state columns only.
    pub fn fold_state(
        &self,
        groups: usize,
        (previous, previous_group): (&[ArrayRef], &[usize]),
        (rows, row_group): (&[ArrayRef], &[usize]),
    ) -> Result<Vec<ArrayRef>> {
        let planned = self.planned()?;
        let mut accs = self.accumulators()?;
        let mut col = 0;
        for (acc, width) in accs.iter_mut().zip(&planned.state_widths) {
            if !previous_group.is_empty() {
                acc.merge_batch(&previous[col..col + width], previous_group, groups)?;
            }
            // Even when empty: it sizes the accumulator to `groups`.
            acc.merge_batch(&rows[col..col + width], row_group, groups)?;
            col += width;
        }
        let mut state = Vec::with_capacity(col);
        for acc in accs.iter_mut() {
            state.extend(acc.state(EmitTo::All)?);
        }
        Ok(state)
    }

    /// Each aggregate's value from `groups` groups' state columns.
    pub fn evaluate(&self, state: &[ArrayRef], groups: usize) -> Result<Vec<ArrayRef>> {
        let planned = self.planned()?;
        let identity: Vec<usize> = (0..groups).collect();
        let mut out = Vec::with_capacity(planned.state_widths.len());
        let mut col = 0;
        for ((mut acc, width), aggregate) in self
            .accumulators()?
            .into_iter()
            .zip(&planned.state_widths)
            .zip(&planned.aggregates)
        {
            let columns = &state[col..col + width];
            col += width;
            if let Some(counted) = distinct_count(aggregate, columns) {
                out.push(counted);
                continue;
            }
            if groups > 0 {
                acc.merge_batch(columns, &identity, groups)?;
            }
            out.push(acc.evaluate(EmitTo::All)?);
        }
        Ok(out)
    }

    /// `previous` and `input` merged: the new state and every group's values.
    pub fn fold(&self, previous: Option<RecordBatch>, input: Vec<RecordBatch>) -> Result<Folded> {
        let mut changed = Vec::new();
        let (keys, mut accs, groups) = self.merge(previous, input, &mut changed)?;
        let planned = self.planned()?;
        let mut state_cols = keys.clone();
        for acc in accs.iter_mut() {
            state_cols.extend(acc.state(EmitTo::All)?);
        }
        let state = RecordBatch::try_new(Arc::clone(&planned.partial_schema), state_cols)?;
        // evaluate() consumes the accumulator, so the output comes from the new state
        // (merged again where it must be), leaving `state` intact for the next batch.
        let mut output = keys;
        let nk = planned.group_schema.fields().len();
        output.extend(self.evaluate(&state.columns()[nk..], groups)?);
        changed.resize(groups, false);
        Ok(Folded {
            state,
            output,
            changed,
            groups,
        })
    }
}

/// `count(DISTINCT x)`'s value straight from its state, the list of each group's
/// distinct values: its length. Merging the lists into sets again only to count them
/// costs as much as the merge that made them. `None`: another aggregate.
fn distinct_count(aggregate: &AggregateFunctionExpr, state: &[ArrayRef]) -> Option<ArrayRef> {
    use datafusion::arrow::array::{Array, AsArray, Int64Array};
    if aggregate.fun().name() != "count" || !aggregate.is_distinct() {
        return None;
    }
    let [lists] = state else { return None };
    let lists = lists.as_list_opt::<i32>()?;
    if lists.values().null_count() > 0 {
        return None;
    }
    let counts: Int64Array = (0..lists.len())
        .map(|i| {
            Some(if lists.is_null(i) {
                0
            } else {
                lists.value_length(i) as i64
            })
        })
        .collect();
    Some(Arc::new(counts))
}

/// Fresh accumulators for `aggregates`, the vectorised kind where DataFusion has one.
pub(crate) fn new_accumulators(
    aggregates: &[Arc<AggregateFunctionExpr>],
) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
    aggregates
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

/// A batch's partial rows (`input`, the partial aggregate's layout) merged into
/// `store` at batch time `now`: only the groups they touch, every partition in
/// parallel. With `emit`, per partition, the touched groups' keys then every
/// aggregate's value (none otherwise: append mode emits at close).
pub(crate) fn merge_touched(
    agg: &PartialAggregate,
    store: &mut KeyedState,
    input: &RecordBatch,
    now: i64,
    emit: bool,
) -> Result<Vec<Vec<ArrayRef>>> {
    let nk = agg.keys();
    let cutoff = store.cutoff(now);
    let routed = store.route(input.columns(), input.num_rows())?;
    let touched = store.for_each(routed, |p, columns: Vec<ArrayRef>| {
        let rows = columns.first().map_or(0, |c| c.len());
        let touched = p.touch(&columns, rows, cutoff)?;
        let previous = (&touched.previous[..], &touched.previous_group[..]);
        let batch = (&columns[nk..], &touched.row_group[..]);
        let (values, out) = if emit {
            let (values, output) = agg.fold_groups(touched.len(), previous, batch)?;
            let mut out = touched.keys.clone();
            out.extend(output);
            (values, Some(out))
        } else {
            (agg.fold_state(touched.len(), previous, batch)?, None)
        };
        p.put(touched, values, None, now, cutoff)?;
        Ok(out)
    })?;
    Ok(touched.into_iter().flatten().collect())
}

/// Keys + every aggregate's value of stored rows (keys, state columns, `__updated`).
pub(crate) fn evaluate_rows(agg: &PartialAggregate, rows: &RecordBatch) -> Result<Vec<ArrayRef>> {
    let nk = agg.keys();
    let width = rows.num_columns() - 1;
    let mut columns = rows.columns()[..nk].to_vec();
    columns.extend(agg.evaluate(&rows.columns()[nk..width], rows.num_rows())?);
    Ok(columns)
}

/// Every group in `store` (rows written before `cutoff` left out) as its keys then
/// every aggregate's value: complete mode, the one output that reads all the state.
pub(crate) fn evaluate_all(
    agg: &PartialAggregate,
    store: &mut KeyedState,
    cutoff: Option<i64>,
) -> Result<Vec<Vec<ArrayRef>>> {
    let per_partition = store.all(|p, ()| {
        p.scan(cutoff)?
            .iter()
            .map(|b| evaluate_rows(agg, b))
            .collect::<Result<Vec<_>>>()
    })?;
    Ok(per_partition.into_iter().flatten().collect())
}

/// One batch of stored state from what a checkpoint kept (one or more batches).
pub(crate) fn restored_state(batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    Ok(match batches {
        [] => None,
        [one] => Some(one.clone()),
        more => Some(datafusion::arrow::compute::concat_batches(
            &more[0].schema(),
            more,
        )?),
    })
}
