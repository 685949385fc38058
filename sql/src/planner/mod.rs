//! The streaming planner: from DataFusion's logical plan of a query over streams to
//! an engine pipeline.
//!
//! ```text
//!  SELECT ... ─▶ DataFusion LogicalPlan ─▶ rewritten bottom-up, one node at a time:
//!     what do the node's inputs hold?  (classify::rows_of)
//!        Appends  new rows that never change (sources, a join's matches, ...)
//!        Whole    a stateful operator's whole result, every batch (complete mode)
//!        Changes  a stateful operator's changed rows (update mode)
//!     ─▶ the node's role:
//!        per batch       stateless nodes; anything over a Whole result; aggregates
//!                        grouped by _batch_time or by a closed window
//!        stateful        an Aggregate, DISTINCT, ROW_NUMBER() <= N or a join of two
//!                        streams over Appends is cut out: its input feeds an engine
//!                        operator, and the node becomes a projection over that
//!                        operator's output, re-qualified so the plan above is unchanged
//!        materialized    a node that needs a whole result over Changes gets a
//!                        Materialize below it (the result kept whole), and in update
//!                        mode the query ends in a Changes (new or changed rows)
//!        refused         with the reason, as a plan error
//! ```

mod changelog_agg;
mod classify;
mod rank;
mod role;
mod window_agg;

use role::Role;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion, TreeNodeRewriter};
use datafusion::common::{Column, DFSchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{
    Aggregate, Distinct, Expr, LogicalPlan, LogicalPlanBuilder, Projection, TableScan,
};
use flumen_engine::ops::{
    Changes, Dedup, Emits, Materialize, OP_COLUMN, RunningAggregate, StreamOperator, ToChangelog,
    TopN, WindowClose,
};
use flumen_engine::{Error, Result, Stream, StreamingContext, plan_err};

pub use classify::{OperatorOutputs, reads_operator_output, reads_stream};
use classify::{OutputInfo, Rows, operator_column, operator_table, rows_of, window_length};
use flumen_engine::stream::OPERATOR_OUTPUT_PREFIX;

/// How a query emits its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputMode {
    /// Rows are emitted once and never change.
    Append,
    /// Changed rows every batch (the default; ksqlDB's `EMIT CHANGES`).
    #[default]
    Update,
    /// The whole result every batch.
    Complete,
}

impl OutputMode {
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "append" => Ok(Self::Append),
            "update" => Ok(Self::Update),
            "complete" => Ok(Self::Complete),
            other => plan_err!("unknown output_mode '{other}'; accepted: append, update, complete"),
        }
    }
}

impl fmt::Display for OutputMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Append => "append",
            Self::Update => "update",
            Self::Complete => "complete",
        })
    }
}

/// What a query reads and how it must emit, for [`plan_query`].
pub struct QueryScope<'a> {
    /// The source streams the query reads (names its plan scans).
    pub streams: &'a HashSet<String>,
    /// `stream.column` -> watermark delay.
    pub watermarks: &'a HashMap<String, Duration>,
    pub mode: OutputMode,
    /// The stateful operators of this query's context, shared with the plans of the
    /// derived streams it reads.
    pub outputs: &'a OperatorOutputs,
    /// A derived stream's defining query: planned for the query that reads it, which
    /// decides how the result is emitted.
    pub derived: bool,
}

/// A planned streaming query.
pub struct PlannedQuery {
    pub stream: Stream,
    /// Whether it keeps state across batches.
    pub stateful: bool,
    /// What each batch of its output holds.
    pub emits: Emits,
    /// Lines describing the pipeline, for EXPLAIN.
    pub explain: Vec<String>,
}

fn join_exprs(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// DataFusion's filter push-down alone: moves WHERE conditions over a join into the
/// join, where the planner reads its time bounds.
fn push_down_filters(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::optimizer::push_down_filter::PushDownFilter;
    use datafusion::optimizer::{Optimizer, OptimizerContext};
    let optimizer = Optimizer::with_rules(vec![Arc::new(PushDownFilter::new())]);
    let config = OptimizerContext::new().with_max_passes(1);
    Ok(optimizer.optimize(plan, &config, |_, _| {})?)
}

/// A refusal, carried through DataFusion's tree rewrite.
fn refuse<T>(message: impl Into<String>) -> datafusion::error::Result<T> {
    Err(DataFusionError::External(Box::new(Error::Plan(
        message.into(),
    ))))
}

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The planner's state while it rewrites one query's plan.
struct StreamPlanner<'a> {
    ctx: &'a StreamingContext,
    state: SessionState,
    scope: &'a QueryScope<'a>,
    slide: Duration,
    explain: Vec<String>,
    stateful: bool,
    /// `ROW_NUMBER()` windows over streams seen, and those a filter turned into an
    /// operator (a window not filtered by its own rank is refused at the end).
    rank_windows: usize,
    rank_filters: usize,
    /// An identical stateful subquery that appears twice (Nexmark q5 joins an
    /// aggregate with an aggregate over the same aggregate) runs once: its
    /// replacement is reused.
    shared: HashMap<LogicalPlan, LogicalPlan>,
    /// Operator output tables of changed rows -> their materialized scan.
    materialized: HashMap<String, LogicalPlan>,
}

impl TreeNodeRewriter for StreamPlanner<'_> {
    type Node = LogicalPlan;

    fn f_up(&mut self, node: LogicalPlan) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let cacheable = matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_));
        if cacheable && let Some(replacement) = self.shared.get(&node) {
            return Ok(Transformed::yes(replacement.clone()));
        }
        let key = cacheable.then(|| node.clone());
        let t = self.plan_node(node)?;
        if let (Some(k), true) = (key, t.transformed) {
            self.shared.insert(k, t.data.clone());
        }
        Ok(t)
    }
}

impl StreamPlanner<'_> {
    fn rows(&self, plan: &LogicalPlan) -> Rows {
        rows_of(plan, self.scope.streams, self.scope.outputs)
    }

    fn mode(&self) -> OutputMode {
        self.scope.mode
    }

    /// Acts on the role of one node ([`Role`], decided by `role.rs`).
    fn plan_node(
        &mut self,
        node: LogicalPlan,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        match (self.classify(&node)?, &node) {
            (Role::PerBatch(line), _) => {
                self.explain.extend(line);
                Ok(Transformed::no(node))
            }
            (Role::MaterializeInputs, _) => {
                let node = self.materialize_inputs(node)?;
                Ok(Transformed::yes(self.plan_node(node)?.data))
            }
            (Role::RunningAggregate, LogicalPlan::Aggregate(agg)) => self.running_aggregate(agg),
            (Role::WindowAggregate(k), LogicalPlan::Aggregate(agg)) => {
                self.window_aggregate(agg, k)
            }
            (Role::Distinct, LogicalPlan::Distinct(Distinct::All(input))) => {
                self.distinct(&node, input)
            }
            (Role::RankWindow, _) => {
                self.rank_windows += 1;
                Ok(Transformed::no(node))
            }
            (Role::RankFilter, LogicalPlan::Filter(f)) => self.rank_filter(&node, f),
            (Role::StreamJoin, LogicalPlan::Join(j)) => self.stream_join(&node, j),
            (Role::ChangelogInputs, _) => {
                let node = self.changelog_inputs(node)?;
                Ok(Transformed::yes(self.plan_node(node)?.data))
            }
            (Role::OverChangelog, _) => carry_op(node),
            (Role::ChangelogAggregate, LogicalPlan::Aggregate(agg)) => {
                self.changelog_aggregate(agg)
            }
            (role, _) => Err(DataFusionError::Internal(format!(
                "role {role:?} for a {} node",
                node.display()
            ))),
        }
    }

    /// A `GROUP BY` over appended rows, kept across batches.
    fn running_aggregate(
        &mut self,
        agg: &Aggregate,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let input = DataFrame::new(self.state.clone(), agg.input.as_ref().clone());
        let op = RunningAggregate::try_new(&input, agg.group_expr.clone(), agg.aggr_expr.clone())
            .map_err(external)?
            .with_changed_only(self.mode() == OutputMode::Update)
            .with_state_config(self.ctx.state_config().clone())
            .with_positional_names();
        self.replace(input, &agg.schema, Box::new(op), None)
    }

    /// A `GROUP BY` over a changelog: a running aggregate of signed values (each row
    /// +1, a retracted one -1; `changelog_agg.rs`), its values finished, and a
    /// `ToChangelog` that retracts each changed group's previous row.
    fn changelog_aggregate(
        &mut self,
        agg: &Aggregate,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let signed = changelog_agg::SignedAggregate::try_new(agg)?;
        let input = DataFrame::new(self.state.clone(), signed.aggregate.input.as_ref().clone());
        let op = RunningAggregate::try_new(
            &input,
            signed.aggregate.group_expr.clone(),
            signed.aggregate.aggr_expr.clone(),
        )
        .map_err(external)?
        .with_changed_only(true)
        .with_state_config(self.ctx.state_config().clone())
        .with_positional_names();
        let sums = self
            .replace(input, &signed.aggregate.schema, Box::new(op), None)?
            .data;
        let schema = sums.schema().clone();
        let cols: Vec<Expr> = schema
            .iter()
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        let finished = LogicalPlan::Projection(Projection::try_new(
            signed.finished(&cols)?,
            Arc::new(sums),
        )?);
        let df = DataFrame::new(self.state.clone(), finished);
        let schema = Arc::new(df.schema().as_arrow().clone());
        let op = ToChangelog::try_new(schema, (0..agg.group_expr.len()).collect())
            .map_err(external)?
            .with_positional_names();
        self.replace(df, &agg.schema, Box::new(op), None)
    }

    /// A `GROUP BY` with window key `k`: a windowed or session aggregate.
    fn window_aggregate(
        &mut self,
        agg: &Aggregate,
        k: usize,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let over_operator = reads_operator_output(&agg.input);
        let watermark_from = self.watermark_from(agg, k);
        let time = window_agg::EventTimeSource {
            streams: self.scope.streams,
            watermarks: self.scope.watermarks,
            over_operator,
            watermark_from,
        };
        let (op, input) = window_agg::windowed(self.ctx, &self.state, agg, k, &time, self.mode())
            .map_err(external)?;
        let window = match (window_length(&agg.group_expr[k]), self.mode()) {
            (Some(len), OutputMode::Append) => Some((k, len)),
            _ => None,
        };
        self.replace(input, &agg.schema, op, window)
    }

    /// For a window whose time column comes out of an operator that carries a
    /// watermark for it (a stream join): that operator's graph index and column.
    fn watermark_from(&self, agg: &Aggregate, k: usize) -> Option<(usize, usize)> {
        let Expr::ScalarFunction(f) = &agg.group_expr[k] else {
            return None;
        };
        let (table, column) = operator_column(&agg.input, f.args.first()?)?;
        let info = self.scope.outputs.get(&table)?;
        let index = table.strip_prefix(OPERATOR_OUTPUT_PREFIX)?.parse().ok()?;
        info.watermarked
            .contains(&column)
            .then_some((index, column))
    }

    fn distinct(
        &mut self,
        node: &LogicalPlan,
        input: &Arc<LogicalPlan>,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let df = DataFrame::new(self.state.clone(), input.as_ref().clone());
        let schema = Arc::new(df.schema().as_arrow().clone());
        let op = Dedup::try_new(schema, self.mode() == OutputMode::Complete)
            .and_then(|op| op.with_state_config(self.ctx.state_config().clone()))
            .map_err(external)?
            .with_positional_names();
        let replaced = node.schema().clone();
        self.replace(df, &replaced, Box::new(op), None)
    }

    /// A join of two streams' appended rows over event time.
    fn stream_join(
        &mut self,
        node: &LogicalPlan,
        j: &datafusion::logical_expr::Join,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let window_outputs = self.scope.outputs.window_lengths();
        let times = crate::join::SideTimes {
            streams: self.scope.streams,
            watermarks: self.scope.watermarks,
            window_outputs: &window_outputs,
        };
        let (op, input) =
            crate::join::stream_join(&self.state, j, &times, self.ctx.state_config(), self.mode())
                .map_err(external)?;
        let schema = node.schema().clone();
        self.replace(input, &schema, Box::new(op), None)
    }

    /// `WHERE rn <= N` over a `ROW_NUMBER()` window of a stream: deduplication or a
    /// top-N.
    fn rank_filter(
        &mut self,
        node: &LogicalPlan,
        f: &datafusion::logical_expr::Filter,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        if self.rows(&f.input) != Rows::Appends {
            return Ok(Transformed::no(node.clone()));
        }
        let Some(pattern) = rank::rank_filter(f).map_err(external)? else {
            return Ok(Transformed::no(node.clone()));
        };
        self.rank_filters += 1;
        // Deduplication runs the filter's own plan per batch (each batch's first row
        // per key); a top-N ranks the batch's rows itself, against those it keeps.
        let df = DataFrame::new(self.state.clone(), node.clone());
        let schema = Arc::new(df.schema().as_arrow().clone());
        let replaced = node.schema().clone();
        if pattern.by_arrival && pattern.limit == 1 {
            let op = Dedup::try_new(schema, self.mode() == OutputMode::Complete)
                .and_then(|op| op.with_key_columns(pattern.keys.clone()))
                .and_then(|op| op.with_state_config(self.ctx.state_config().clone()))
                .map_err(external)?
                .with_positional_names();
            return self.replace(df, &replaced, Box::new(op), None);
        }
        // A window top-N (keyed by a window's end, over rows with an event time that
        // has a watermark) is final once the watermark passes the window: append mode
        // emits it then.
        let close = (self.mode() != OutputMode::Complete)
            .then(|| {
                rank::window_close(f, &pattern.keys, |column| {
                    crate::catalog::declared_watermark(
                        self.scope.watermarks,
                        self.scope.streams.iter().map(String::as_str),
                        column,
                    )
                })
            })
            .flatten()
            .map(|(end, time, delay)| WindowClose {
                end,
                time,
                delay,
                emit_at_close: self.mode() == OutputMode::Append,
            });
        if self.mode() == OutputMode::Append && close.is_none() {
            return refuse(format!(
                "output mode append cannot run ROW_NUMBER() <= {} ordered by a column: a row \
                 arriving later can take the place of one already emitted; use SET \
                 output_mode = 'update' (rows are replaced by key and rank) or 'complete', or \
                 ORDER BY _batch_time to keep the first rows to arrive, or PARTITION BY the \
                 window_start and window_end of a window table function over a stream with a \
                 watermark (a window top-N: each window's rows once, when the watermark \
                 passes its end)",
                pattern.limit
            ));
        }
        let df = DataFrame::new(self.state.clone(), rank::unranked(f)?);
        let op = TopN::try_new(
            schema,
            pattern.keys.clone(),
            pattern.order.clone(),
            pattern.rank,
            pattern.limit,
            self.mode() == OutputMode::Complete,
        )
        .and_then(|op| op.with_positional_names())
        .and_then(|op| op.with_state_config(self.ctx.state_config().clone()))
        .and_then(|op| match close {
            Some(close) => op.with_window_close(close),
            None => Ok(op),
        })
        .map_err(external)?;
        self.replace(df, &replaced, Box::new(op), None)
    }

    /// Feed `input` into `op` and return the projection over the operator's output
    /// that stands in for the node of schema `replaced` in the plan.
    fn replace(
        &mut self,
        input: DataFrame,
        replaced: &DFSchemaRef,
        op: Box<dyn StreamOperator>,
        window: Option<(usize, Duration)>,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let emits = op.emits();
        let watermarked = op.watermarked_columns();
        // The operator describes itself (DataFusion's `DisplayAs`).
        self.explain.push(op.explain());
        let out = self.add_operator(input, op)?;
        let out_plan = out.dataframe().logical_plan().clone();
        let out_schema = out_plan.schema().clone();
        let mut exprs: Vec<Expr> = replaced
            .iter()
            .enumerate()
            .map(|(i, (qualifier, field))| {
                let (q, f) = out_schema.qualified_field(i);
                Expr::Column(Column::new(q.cloned(), f.name()))
                    .alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        if emits == Emits::Changelog {
            // The row kind, last, beyond the columns the plan above reads.
            let (q, f) = out_schema.qualified_field(out_schema.fields().len() - 1);
            let op = Expr::Column(Column::new(q.cloned(), f.name()));
            // Not aliased to its own name: DataFusion's projection push-down would
            // then find `_op` both qualified and not.
            exprs.push(if f.name() == OP_COLUMN {
                op
            } else {
                op.alias(OP_COLUMN)
            });
        }
        let projection = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(out_plan))?);
        if let Some(table) = operator_table(&projection) {
            self.scope.outputs.insert(
                table,
                OutputInfo {
                    emits,
                    window,
                    watermarked,
                },
            );
        }
        Ok(Transformed::new(
            projection,
            true,
            TreeNodeRecursion::Continue,
        ))
    }

    fn add_operator(
        &mut self,
        input: DataFrame,
        op: Box<dyn StreamOperator>,
    ) -> datafusion::error::Result<Stream> {
        let input_stream = self.ctx.stream_from(input, self.slide).map_err(external)?;
        self.stateful = true;
        input_stream.with_operator(op, self.slide).map_err(external)
    }

    /// The operator `make` builds over every column of `s` (a scan of another
    /// operator's output), added to the pipeline, its output recorded as `emits`; the
    /// scan of that output.
    fn over_whole_scan(
        &mut self,
        s: &TableScan,
        emits: Emits,
        make: impl FnOnce(SchemaRef) -> Result<Box<dyn StreamOperator>>,
    ) -> datafusion::error::Result<TableScan> {
        // The whole scan, not its projection: the operator keeps every column.
        let full =
            LogicalPlanBuilder::scan(s.table_name.clone(), Arc::clone(&s.source), None)?.build()?;
        let df = DataFrame::new(self.state.clone(), full);
        let op = make(Arc::new(df.schema().as_arrow().clone())).map_err(external)?;
        self.explain.push(op.explain());
        let out = self.add_operator(df, op)?;
        let LogicalPlan::TableScan(scan) = out.dataframe().logical_plan() else {
            return refuse("internal: an operator's output is not a scan");
        };
        self.scope.outputs.insert(
            scan.table_name.table().to_string(),
            OutputInfo {
                emits,
                window: None,
                watermarked: Vec::new(),
            },
        );
        Ok(scan.clone())
    }

    /// `node` with every scan of an operator's changed rows under it replaced by a
    /// scan of that operator's whole result, kept by a `Materialize`.
    fn materialize_inputs(&mut self, node: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
        self.replace_changes_scans(
            node,
            |planner, s, keys| {
                let table = s.table_name.table().to_string();
                if let Some(done) = planner.materialized.get(&table) {
                    return Ok(done.clone());
                }
                if keys.is_empty() {
                    return refuse(format!(
                        "the changed rows of {table} have no key to keep them by"
                    ));
                }
                let out = planner.over_whole_scan(s, Emits::WholeResult, |schema| {
                    Ok(Box::new(Materialize::try_new(schema, keys)?))
                })?;
                let replacement = as_scanned(s, out, false)?;
                planner.materialized.insert(table, replacement.clone());
                Ok(replacement)
            },
            |_, n| Ok(Transformed::no(n)),
        )
    }

    /// `node` (an aggregate) with every scan of an operator's changed rows under it
    /// replaced by a scan of the same rows as a changelog (`ToChangelog`: a changed
    /// group's old row retracted, its new row added), scanned under the old name, and
    /// the projections, filters and aliases between carrying `_op` up to `node`.
    fn changelog_inputs(&mut self, node: LogicalPlan) -> datafusion::error::Result<LogicalPlan> {
        self.replace_changes_scans(
            node,
            |planner, s, keys| {
                let out = planner.over_whole_scan(s, Emits::Changelog, |schema| {
                    Ok(Box::new(
                        ToChangelog::of_upserts(schema, keys)?.with_positional_names(),
                    ))
                })?;
                as_scanned(s, out, true)
            },
            |planner, n| {
                if planner.rows(&n) == Rows::Changelog {
                    carry_op(n)
                } else {
                    Ok(Transformed::no(n))
                }
            },
        )
    }

    /// `node` with each scan under it of an operator's changed rows replaced by
    /// `replace(scan, the rows' keys)`, and every other node under it, bottom up, by
    /// what `other` makes of it.
    fn replace_changes_scans(
        &mut self,
        node: LogicalPlan,
        mut replace: impl FnMut(
            &mut Self,
            &TableScan,
            Vec<usize>,
        ) -> datafusion::error::Result<LogicalPlan>,
        other: impl Fn(&Self, LogicalPlan) -> datafusion::error::Result<Transformed<LogicalPlan>>,
    ) -> datafusion::error::Result<LogicalPlan> {
        let inputs = node.inputs().into_iter().cloned().collect::<Vec<_>>();
        let mut rewritten = Vec::with_capacity(inputs.len());
        for input in inputs {
            let input = input.transform_up(|n| {
                let LogicalPlan::TableScan(s) = &n else {
                    return other(self, n);
                };
                match self.scope.outputs.get(s.table_name.table()) {
                    Some(OutputInfo {
                        emits: Emits::Changes { keys },
                        ..
                    }) => {
                        let keys = keys.clone();
                        Ok(Transformed::yes(replace(self, s, keys)?))
                    }
                    _ => Ok(Transformed::no(n)),
                }
            })?;
            rewritten.push(input.data);
        }
        node.with_new_exprs(node.expressions(), rewritten)
    }
}

/// The plan that reads `out` (the output of an operator over the whole of `s`) as `s`
/// was read: the columns `s` projected, under their names there, then `_op` when
/// `with_op`, aliased as `s`'s table — so the plan above reads it unchanged.
fn as_scanned(
    s: &TableScan,
    out: TableScan,
    with_op: bool,
) -> datafusion::error::Result<LogicalPlan> {
    let source = s.source.schema();
    let mut plan = LogicalPlanBuilder::from(LogicalPlan::TableScan(out.clone()));
    if s.projection.is_some() || with_op {
        let mut columns: Vec<Expr> = match &s.projection {
            Some(p) => p.clone(),
            None => (0..source.fields().len()).collect(),
        }
        .into_iter()
        .map(|i| {
            let name = out.projected_schema.field(i).name();
            let column = Expr::Column(Column::new(Some(out.table_name.clone()), name));
            match source.field(i).name() {
                was if was != name => column.alias(was),
                _ => column,
            }
        })
        .collect();
        if with_op {
            columns.push(Expr::Column(Column::new(
                Some(out.table_name.clone()),
                OP_COLUMN,
            )));
        }
        plan = plan.project(columns)?;
    }
    plan.alias(s.table_name.table())?.build()
}

/// A projection, filter or alias over a changelog, with the `_op` column carried
/// through: a projection gets it appended, and the nodes are rebuilt so that their
/// schemas have it.
fn carry_op(node: LogicalPlan) -> datafusion::error::Result<Transformed<LogicalPlan>> {
    match node {
        LogicalPlan::Projection(p) => {
            let names: Vec<&str> = p
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            match names.iter().position(|n| *n == OP_COLUMN) {
                Some(i) if i + 1 == names.len() => {
                    return Ok(Transformed::no(LogicalPlan::Projection(p)));
                }
                // Selected by name (a derived stream's rows have it): moved last.
                Some(i) => {
                    let mut exprs = p.expr.clone();
                    let op = exprs.remove(i);
                    exprs.push(op);
                    return Ok(Transformed::yes(LogicalPlan::Projection(
                        Projection::try_new(exprs, p.input)?,
                    )));
                }
                None => {}
            }
            let input_schema = p.input.schema();
            let (q, f) = input_schema.qualified_field(input_schema.fields().len() - 1);
            if f.name() != OP_COLUMN {
                return Err(DataFusionError::Internal(format!(
                    "the input of a projection over a changelog does not end in {OP_COLUMN}"
                )));
            }
            let mut exprs = p.expr.clone();
            exprs.push(Expr::Column(Column::new(q.cloned(), f.name())).alias(OP_COLUMN));
            Ok(Transformed::yes(LogicalPlan::Projection(
                Projection::try_new(exprs, p.input)?,
            )))
        }
        LogicalPlan::SubqueryAlias(a) => Ok(Transformed::yes(LogicalPlan::SubqueryAlias(
            datafusion::logical_expr::SubqueryAlias::try_new(a.input, a.alias)?,
        ))),
        other => Ok(Transformed::no(other)),
    }
}

/// The refusal for a node over new rows of one input and a whole result of another.
fn mixed(what: &str) -> String {
    format!(
        "{what} over a stream's new rows together with the whole result of a streaming \
         aggregate cannot be computed: one side adds rows each batch, the other is replaced \
         each batch; use SET output_mode = 'append' (windowed aggregates then emit each \
         window once) or read the same kind of input on both sides"
    )
}

/// Plans `df` (a query over the context's streams) as a stream.
pub fn plan_query(
    ctx: &StreamingContext,
    df: DataFrame,
    scope: &QueryScope<'_>,
) -> Result<PlannedQuery> {
    let (state, plan) = df.into_parts();
    // Conditions in WHERE that relate two joined streams belong to the join: it is
    // there that they bound the join's state.
    let plan = push_down_filters(plan)?;
    let mut planner = StreamPlanner {
        ctx,
        state: state.clone(),
        scope,
        slide: ctx.batch_interval(),
        explain: Vec::new(),
        stateful: false,
        rank_windows: 0,
        rank_filters: 0,
        shared: HashMap::new(),
        materialized: HashMap::new(),
    };
    let plan = match plan.rewrite(&mut planner) {
        Ok(t) => t.data,
        Err(DataFusionError::External(e)) => match e.downcast::<Error>() {
            Ok(e) => return Err(*e),
            Err(e) => return Err(Error::DataFusion(DataFusionError::External(e))),
        },
        Err(e) => return Err(e.into()),
    };
    if planner.rank_windows > planner.rank_filters {
        return plan_err!(
            "ROW_NUMBER() over a stream runs only filtered by itself, as deduplication or \
             top-N: SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) \
             AS rn FROM s) WHERE rn = 1 (or rn <= N), with the PARTITION BY columns \
             selected; filter other conditions in an outer query"
        );
    }
    let mut emits = match rows_of(&plan, scope.streams, scope.outputs) {
        Rows::Whole => Emits::WholeResult,
        Rows::Changes => Emits::Changes { keys: Vec::new() },
        Rows::Changelog => {
            if plan.schema().fields().last().map(|f| f.name().as_str()) != Some(OP_COLUMN) {
                return Err(Error::Internal(format!(
                    "a changelog's plan does not end in its {OP_COLUMN} column"
                )));
            }
            Emits::Changelog
        }
        _ => Emits::Appends,
    };
    let mut plan = plan;
    if emits == Emits::WholeResult && scope.mode == OutputMode::Update && !scope.derived {
        // Update mode over a result recomputed whole each batch: emit what changed.
        let df = DataFrame::new(state.clone(), plan.clone());
        let schema = Arc::new(df.schema().as_arrow().clone());
        let op = Changes::try_new(schema)?.with_positional_names();
        let replaced = plan.schema().clone();
        plan = planner
            .replace(df, &replaced, Box::new(op), None)
            .map_err(Error::DataFusion)?
            .data;
        emits = Emits::Changes { keys: Vec::new() };
    }
    let stateful = planner.stateful;
    let mut explain = planner.explain;
    if !stateful && explain.is_empty() {
        explain.push("Stateless: the whole plan runs on each batch".into());
    }
    let explain = explain
        .iter()
        .map(|l| crate::duration::readable_intervals(l))
        .collect();
    let df = DataFrame::new(state, plan);
    let stream = ctx.stream_from(df, ctx.batch_interval())?;
    Ok(PlannedQuery {
        stream,
        stateful,
        emits,
        explain,
    })
}
