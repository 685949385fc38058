//! The streaming planner: from DataFusion's logical plan of a query over streams to
//! an engine pipeline.
//!
//! ```text
//!  SELECT ... ─▶ DataFusion LogicalPlan ─▶ classify every node that reads a stream
//!     stateless nodes (projection, filter, unnest, join with a static table) stay in
//!        the plan, executed per batch;
//!     an Aggregate is cut out: its input becomes a stream feeding the engine's
//!        RunningAggregateExec, and the node is replaced by a projection over that
//!        operator's output, re-qualified so the plan above it is unchanged;
//!     shapes that cannot run correctly are refused with the reason.
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use datafusion::common::Column;
use datafusion::common::DFSchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::logical_expr::{Aggregate, Distinct, Expr, LogicalPlan, Projection, lit};
use flumen_engine::ops::DedupExec;
use flumen_engine::ops::EventTimeWindow;
use flumen_engine::time::format_duration;

use crate::batch_time::BATCH_TIME_COLUMN;
use crate::window::{SESSION_WINDOW_FUNCTION, WINDOW_FUNCTION};
use flumen_engine::ops::RunningAggregateExec;
use flumen_engine::stream::OPERATOR_OUTPUT_PREFIX;
use flumen_engine::{Error, Result, Stream, StreamingContext, plan_err};
use std::sync::Arc;

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

/// A planned streaming query.
pub struct PlannedQuery {
    pub stream: Stream,
    /// Whether it keeps state across batches.
    pub stateful: bool,
    /// Lines describing the pipeline, for EXPLAIN.
    pub explain: Vec<String>,
}

/// Does `plan` read one of `streams`?
pub fn reads_stream(plan: &LogicalPlan, streams: &HashSet<String>) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(s) if streams.contains(s.table_name.table())))
    })
    .unwrap_or(false)
}

/// The column a hopping window's rows are expanded into.
const HOP_COLUMN: &str = "__flumen_window";

/// The operator for `GROUP BY ..., window(ts, size), ...` (group key `k`).
fn windowed(
    ctx: &StreamingContext,
    state: &SessionState,
    agg: &Aggregate,
    k: usize,
    streams: &HashSet<String>,
    watermarks: &HashMap<String, Duration>,
    mode: OutputMode,
) -> Result<(RunningAggregateExec, String, DataFrame)> {
    let Expr::ScalarFunction(f) = &agg.group_expr[k] else {
        return plan_err!("window() group key expected");
    };
    let sessions = f.name() == SESSION_WINDOW_FUNCTION;
    if sessions && f.args.len() != 2 {
        return plan_err!(
            "session_window(ts, gap) takes 2 arguments, got {}",
            f.args.len()
        );
    }
    if !(2..=3).contains(&f.args.len()) {
        return plan_err!(
            "window(ts, size [, slide]) takes 2 or 3 arguments, got {}",
            f.args.len()
        );
    }
    let mut f = f.clone();
    let ts = f.args[0].clone();
    let over_batch_time = matches!(&ts, Expr::Column(c) if c.name == BATCH_TIME_COLUMN);
    if over_batch_time {
        // Spark's windows over batch time: the window ending at T holds the batches in
        // (T - length, T]. Assigning each batch's rows at T - 1 ms to [start, end)
        // windows gives exactly that; the watermark is the batch time.
        let interval = ctx.batch_interval();
        let sizes = f.args[1..]
            .iter()
            .map(|a| match a {
                Expr::Literal(v, _) => crate::window::interval_millis(v)
                    .map(|ms| Duration::from_millis(ms as u64))
                    .map_err(Error::DataFusion),
                other => plan_err!("window sizes must be INTERVAL literals, got {other}"),
            })
            .collect::<Result<Vec<_>>>()?;
        flumen_engine::time::check_multiple("window length", sizes[0], "batch interval", interval)?;
        if let Some(slide) = sizes.get(1) {
            flumen_engine::time::check_multiple(
                "window slide",
                *slide,
                "batch interval",
                interval,
            )?;
        }
        f.args[0] = ts.clone()
            - lit(datafusion::scalar::ScalarValue::new_interval_mdn(
                0, 0, 1_000_000,
            ));
    }
    let f = &f;
    // Watermarks are keyed `stream.column`; an alias in the query falls back to the
    // one stream read here that declares a watermark on a column of that name.
    let delay = match &ts {
        _ if over_batch_time => Some(Duration::ZERO),
        Expr::Column(c) => c
            .relation
            .as_ref()
            .and_then(|r| watermarks.get(&format!("{}.{}", r.table(), c.name)))
            .or_else(|| {
                let found: Vec<&Duration> = streams
                    .iter()
                    .filter_map(|s| watermarks.get(&format!("{s}.{}", c.name)))
                    .collect();
                (found.len() == 1).then(|| found[0])
            })
            .copied(),
        _ => None,
    };
    if mode == OutputMode::Append && delay.is_none() {
        return plan_err!(
            "output mode append needs a watermark on {ts} to know when a window is complete;              declare WATERMARK FOR {ts} AS {ts} - INTERVAL '<n>' SECOND on the stream, or use              SET output_mode = 'update'"
        );
    }
    let mut aggr = agg.aggr_expr.clone();
    aggr.push(max(ts.clone()).alias("__flumen_max_event_time"));
    aggr.push(count(lit(1)).alias("__flumen_rows"));
    let mut input = DataFrame::new(state.clone(), agg.input.as_ref().clone());
    let mut group_expr = agg.group_expr.clone();
    let mut kind = if sessions { "session" } else { "tumbling" };
    let key_name = agg.group_expr[k].schema_name().to_string();
    let mut keyed_by_end = None;
    if sessions {
        if over_batch_time {
            group_expr[k] = Expr::ScalarFunction(f.clone()).alias(key_name);
        }
    } else {
        // Tumbling and hopping windows are grouped by their end (a timestamp hashes
        // faster than a `{start, end}` struct); the operator rebuilds the struct.
        let millis = |a: &Expr| match a {
            Expr::Literal(v, _) => crate::window::interval_millis(v).map_err(Error::DataFusion),
            other => plan_err!("window sizes must be INTERVAL literals, got {other}"),
        };
        let size = millis(&f.args[1])?;
        keyed_by_end = Some(Duration::from_millis(size as u64));
        if f.args.len() == 3 && f.args[1] != f.args[2] {
            // A hopping window: a row belongs to size/slide windows. Expand each row
            // into one per window, then group by that window.
            kind = "hopping";
            millis(&f.args[2])?;
            let hop = crate::window::hop_window_ends_udf().call(f.args.clone());
            input = input
                .with_column(HOP_COLUMN, hop)?
                .unnest_columns(&[HOP_COLUMN])?;
            group_expr[k] = datafusion::prelude::col(HOP_COLUMN).alias(key_name);
        } else {
            group_expr[k] = crate::window::window_end_udf()
                .call(f.args[..2].to_vec())
                .alias(key_name);
        }
    }
    let op = RunningAggregateExec::try_new(&input, group_expr, aggr)?
        .with_changed_only(mode == OutputMode::Update)
        .with_event_time_window(EventTimeWindow {
            key_index: k,
            delay,
            emit_closed_only: mode == OutputMode::Append,
            evict_closed: mode != OutputMode::Complete && delay.is_some(),
            watermark_is_batch_time: over_batch_time,
            sessions,
            keyed_by_end,
        })
        .with_positional_names();
    let bound = match (delay, mode) {
        (Some(d), OutputMode::Complete) => format!(
            "watermark {ts} - {}; complete mode keeps every window (state grows without bound)",
            format_duration(d)
        ),
        (Some(d), _) => format!(
            "watermark {ts} - {}; a window's state is dropped once the watermark passes its end, rows older than the watermark are dropped and counted",
            format_duration(d)
        ),
        (None, _) => {
            format!("WARNING: no watermark on {ts}: windows never close, state grows without bound")
        }
    };
    let line = format!(
        "WindowAggregateExec ({kind}, RunningAggregateExec over event time): group by [{}], aggregates [{}], output {mode}; {bound}",
        agg.group_expr
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        agg.aggr_expr
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok((op, line, input))
}

/// Feed `agg`'s input into `op` and return the projection over the operator's output
/// that stands in for `agg` in the plan.
fn replace_with_operator(
    ctx: &StreamingContext,
    input: DataFrame,
    replaced_schema: &DFSchemaRef,
    op: Box<dyn flumen_engine::ops::StreamOperator>,
    slide: Duration,
    stateful: &mut bool,
) -> datafusion::error::Result<Transformed<LogicalPlan>> {
    let ext = |e: Error| datafusion::error::DataFusionError::External(Box::new(e));
    let input_stream = ctx.stream_from(input, slide).map_err(ext)?;
    let out = input_stream.with_operator(op, slide).map_err(ext)?;
    *stateful = true;
    let out_plan = out.dataframe().logical_plan().clone();
    let out_schema = out_plan.schema().clone();
    let exprs: Vec<Expr> = replaced_schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            let (q, f) = out_schema.qualified_field(i);
            Expr::Column(Column::new(q.cloned(), f.name()))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let projection = Projection::try_new(exprs, Arc::new(out_plan))?;
    Ok(Transformed::new(
        LogicalPlan::Projection(projection),
        true,
        TreeNodeRecursion::Continue,
    ))
}

fn join_exprs(exprs: &[Expr]) -> String {
    exprs
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Does the join require equal `_batch_time` on both sides (in `ON` keys or as a
/// conjunct of its filter)?
fn joins_on_batch_time(j: &datafusion::logical_expr::Join) -> bool {
    let is_bt = |e: &Expr| matches!(e, Expr::Column(c) if c.name == BATCH_TIME_COLUMN);
    if j.on.iter().any(|(l, r)| is_bt(l) && is_bt(r)) {
        return true;
    }
    j.filter.as_ref().is_some_and(|f| {
        datafusion::logical_expr::utils::split_conjunction(f)
            .into_iter()
            .any(|c| {
                matches!(c, Expr::BinaryExpr(b)
                    if b.op == datafusion::logical_expr::Operator::Eq && is_bt(&b.left) && is_bt(&b.right))
            })
    })
}

/// Is `_batch_time` one of the aggregate's plain group keys?
fn groups_by_batch_time(agg: &Aggregate) -> bool {
    agg.group_expr
        .iter()
        .any(|e| matches!(e, Expr::Column(c) if c.name == BATCH_TIME_COLUMN))
}

/// Does `plan` read the output of a stateful operator?
pub fn reads_operator_output(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(s)
            if s.table_name.table().starts_with(OPERATOR_OUTPUT_PREFIX)))
    })
    .unwrap_or(false)
}

/// Is `plan` a stream: does it read a source stream or a stateful operator's output?
fn is_stream_side(plan: &LogicalPlan, streams: &HashSet<String>) -> bool {
    reads_stream(plan, streams) || reads_operator_output(plan)
}

/// The partition keys of a `ROW_NUMBER() OVER (PARTITION BY k ORDER BY x ASC)`
/// window, the only window function that runs over a stream (as deduplication).
fn dedup_window(w: &datafusion::logical_expr::Window) -> Option<&[Expr]> {
    let [e] = w.window_expr.as_slice() else {
        return None;
    };
    let f = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    match f {
        Expr::WindowFunction(f)
            if f.fun.name() == "row_number"
                && !f.params.partition_by.is_empty()
                && f.params.order_by.iter().all(|s| s.asc) =>
        {
            Some(f.params.partition_by.as_slice())
        }
        _ => None,
    }
}

/// The expression column `i` of `plan` stands for, followed down through filters,
/// aliases and projections to the nearest window node (in its input's terms).
fn origin(plan: &LogicalPlan, i: usize) -> Option<(Expr, &datafusion::logical_expr::Window)> {
    match plan {
        LogicalPlan::Filter(f) => origin(&f.input, i),
        LogicalPlan::SubqueryAlias(a) => origin(&a.input, i),
        LogicalPlan::Projection(p) => match p.expr.get(i)?.clone().unalias() {
            Expr::Column(c) => origin(&p.input, p.input.schema().index_of_column(&c).ok()?),
            _ => None,
        },
        LogicalPlan::Window(w) => {
            let inputs = w.input.schema().fields().len();
            if i < inputs {
                let (q, f) = w.input.schema().qualified_field(i);
                Some((Expr::Column(Column::new(q.cloned(), f.name())), w))
            } else {
                Some((w.window_expr.get(i - inputs)?.clone().unalias(), w))
            }
        }
        _ => None,
    }
}

/// For `WHERE rn = 1` over a deduplicating `ROW_NUMBER()` window: the positions of
/// the window's partition keys in the filter's output.
fn dedup_keys(f: &datafusion::logical_expr::Filter) -> Option<Vec<usize>> {
    let Expr::BinaryExpr(b) = &f.predicate else {
        return None;
    };
    if b.op != datafusion::logical_expr::Operator::Eq {
        return None;
    }
    let (Expr::Column(rn), Expr::Literal(one, _)) = (b.left.as_ref(), b.right.as_ref()) else {
        return None;
    };
    if !matches!(one.to_string().as_str(), "1") {
        return None;
    }
    let schema = f.input.schema();
    let (rn_expr, window) = origin(&f.input, schema.index_of_column(rn).ok()?)?;
    if !matches!(rn_expr, Expr::WindowFunction(_)) {
        return None;
    }
    let partition = dedup_window(window)?;
    let mut keys = Vec::new();
    for p in partition {
        let found = (0..schema.fields().len()).find(|&i| {
            origin(&f.input, i).is_some_and(|(e, w)| std::ptr::eq(w, window) && &e == p)
        })?;
        keys.push(found);
    }
    Some(keys)
}

/// Is `expr` (over `plan`'s output) the window of an append-mode windowed aggregate
/// (the window struct, or its start or end)?
fn is_window_of_operator(
    plan: &LogicalPlan,
    expr: &Expr,
    window_keys: &HashMap<String, usize>,
) -> bool {
    match expr {
        Expr::Alias(a) => is_window_of_operator(plan, &a.expr, window_keys),
        Expr::ScalarFunction(f) if f.name() == "get_field" => match (f.args.first(), f.args.get(1))
        {
            (Some(arg), Some(Expr::Literal(v, _)))
                if matches!(v.to_string().as_str(), "start" | "end") =>
            {
                is_window_of_operator(plan, arg, window_keys)
            }
            _ => false,
        },
        Expr::Column(c) => {
            let Ok(i) = plan.schema().index_of_column(c) else {
                return false;
            };
            match plan {
                LogicalPlan::TableScan(s) => window_keys
                    .get(s.table_name.table())
                    .is_some_and(|k| s.projected_schema.field(i).name() == &format!("c{k}")),
                LogicalPlan::Projection(p) => {
                    is_window_of_operator(&p.input, &p.expr[i], window_keys)
                }
                LogicalPlan::SubqueryAlias(a) => {
                    let (q, f) = a.input.schema().qualified_field(i);
                    is_window_of_operator(
                        &a.input,
                        &Expr::Column(Column::new(q.cloned(), f.name())),
                        window_keys,
                    )
                }
                LogicalPlan::Filter(f) => is_window_of_operator(&f.input, expr, window_keys),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The length of a `window(ts, size [, slide])` group key.
fn window_length(key: &Expr) -> Option<Duration> {
    let Expr::ScalarFunction(f) = key else {
        return None;
    };
    if f.name() != WINDOW_FUNCTION {
        return None;
    }
    match f.args.get(1) {
        Some(Expr::Literal(v, _)) => crate::window::interval_millis(v)
            .ok()
            .map(|ms| Duration::from_millis(ms as u64)),
        _ => None,
    }
}

/// The operator output table a replaced node reads.
fn operator_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::TableScan(s) => Some(s.table_name.table().to_string()),
            _ => None,
        },
        _ => None,
    }
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

/// Plans `df` (a query over the context's streams, named in `streams`) as a stream.
pub fn plan_query(
    ctx: &StreamingContext,
    df: DataFrame,
    streams: &HashSet<String>,
    watermarks: &HashMap<String, Duration>,
    mode: OutputMode,
) -> Result<PlannedQuery> {
    let (state, plan) = df.into_parts();
    let slide = ctx.batch_interval();
    let mut explain = Vec::new();
    let mut stateful = false;
    let mut refusal: Option<Error> = None;
    let mut window_outputs: HashMap<String, Duration> = HashMap::new();
    // ROW_NUMBER() windows over streams seen, and those turned into deduplication.
    let (mut dedup_windows, mut dedup_done) = (0usize, 0usize);
    // Operator output table -> the column index of its window key.
    let mut window_keys: HashMap<String, usize> = HashMap::new();
    // Conditions in WHERE that relate two joined streams belong to the join: it is
    // there that they bound the join's state.
    let plan = push_down_filters(plan)?;
    let mut plan_node = |node: LogicalPlan| -> datafusion::error::Result<Transformed<LogicalPlan>> {
        if refusal.is_some() {
            return Ok(Transformed::no(node));
        }
        let reads = reads_stream(&node, streams);
        // A stateful node over an operator's output would re-aggregate a
        // changelog, which gives wrong results.
        let reads_operator = reads_operator_output(&node);
        match &node {
            LogicalPlan::Aggregate(agg)
                if reads && !reads_operator && groups_by_batch_time(agg) =>
            {
                // Every row of a batch has the same _batch_time: a per-batch
                // aggregate, Spark's reduceByKey on each batch. No state.
                explain.push(format!(
                    "Per-batch aggregate (GROUP BY {BATCH_TIME_COLUMN}): group by [{}], no state",
                    agg.group_expr
                        .iter()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Aggregate(agg)
                if reads_operator && !reads && mode == OutputMode::Complete =>
            {
                // Each batch of the aggregate below holds its whole result: an
                // aggregate over it, per batch, is exact.
                explain.push(format!(
                    "Per-batch aggregate over the complete result of a streaming aggregate: \
                         group by [{}], no state",
                    join_exprs(&agg.group_expr)
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Aggregate(agg)
                if reads_operator
                    && !reads
                    && mode == OutputMode::Append
                    && agg
                        .group_expr
                        .iter()
                        .any(|e| is_window_of_operator(&agg.input, e, &window_keys)) =>
            {
                // In append mode a windowed aggregate emits all rows of a window
                // in the batch whose watermark closes it: grouped by that window,
                // an aggregate over them, per batch, is exact.
                explain.push(format!(
                    "Per-batch aggregate over the closed windows of a streaming aggregate: \
                         group by [{}], no state",
                    join_exprs(&agg.group_expr)
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Aggregate(agg) if reads || reads_operator => {
                if reads_operator {
                    refusal = Some(Error::Plan(
                            "an aggregate over the result of another streaming aggregate needs \
                             SET output_mode = 'complete' (each batch then holds the whole result); \
                             otherwise its input changes row by row"
                                .into(),
                        ));
                    return Ok(Transformed::no(node));
                }
                let window_key = agg.group_expr.iter().position(|e| {
                    matches!(e, Expr::ScalarFunction(f)
                            if f.name() == WINDOW_FUNCTION || f.name() == SESSION_WINDOW_FUNCTION)
                });
                if let Some(k) = window_key {
                    match windowed(ctx, &state, agg, k, streams, watermarks, mode) {
                        Ok((op, line, input)) => {
                            explain.push(line);
                            let length = window_length(&agg.group_expr[k]);
                            return replace_with_operator(
                                ctx,
                                input,
                                &agg.schema,
                                Box::new(op),
                                slide,
                                &mut stateful,
                            )
                            .inspect(|t| {
                                if let (Some(len), OutputMode::Append, Some(table)) =
                                    (length, mode, operator_table(&t.data))
                                {
                                    window_outputs.insert(table.clone(), len);
                                    window_keys.insert(table, k);
                                }
                            });
                        }
                        Err(e) => {
                            refusal = Some(e);
                            return Ok(Transformed::no(node));
                        }
                    }
                }
                if mode == OutputMode::Append {
                    refusal = Some(Error::Plan(format!(
                        "output mode append cannot run a running aggregate (GROUP BY {}): its \
                             rows change with every batch; use SET output_mode = 'update' or \
                             'complete'",
                        agg.group_expr
                            .iter()
                            .map(|e| e.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                    return Ok(Transformed::no(node));
                }
                let input = DataFrame::new(state.clone(), agg.input.as_ref().clone());
                let op = match RunningAggregateExec::try_new(
                    &input,
                    agg.group_expr.clone(),
                    agg.aggr_expr.clone(),
                ) {
                    Ok(op) => op
                        .with_changed_only(mode == OutputMode::Update)
                        .with_positional_names(),
                    Err(e) => {
                        refusal = Some(e);
                        return Ok(Transformed::no(node));
                    }
                };
                explain.push(format!(
                    "RunningAggregateExec: group by [{}], aggregates [{}], output {mode}; \
                         state: one row per group, kept for the life of the query (grows with \
                         the number of distinct keys; no watermark bounds it)",
                    join_exprs(&agg.group_expr),
                    join_exprs(&agg.aggr_expr),
                ));
                replace_with_operator(ctx, input, &agg.schema, Box::new(op), slide, &mut stateful)
            }
            LogicalPlan::Distinct(Distinct::All(input)) if reads || reads_operator => {
                if reads_operator {
                    refusal = Some(Error::Plan(
                        "DISTINCT over the result of a streaming aggregate is not supported: \
                             its input changes row by row"
                            .into(),
                    ));
                    return Ok(Transformed::no(node));
                }
                let df = DataFrame::new(state.clone(), input.as_ref().clone());
                let schema = Arc::new(df.schema().as_arrow().clone());
                let op = match DedupExec::try_new(schema, mode == OutputMode::Complete) {
                    Ok(op) => op.with_positional_names(),
                    Err(e) => {
                        refusal = Some(e);
                        return Ok(Transformed::no(node));
                    }
                };
                explain.push(
                    "DedupExec (DISTINCT): emits each distinct row once; state: every distinct \
                         row seen, kept for the life of the query (grows without bound)"
                        .into(),
                );
                let replaced = node.schema().clone();
                replace_with_operator(ctx, df, &replaced, Box::new(op), slide, &mut stateful)
            }
            LogicalPlan::Join(j)
                if is_stream_side(&j.left, streams)
                    && is_stream_side(&j.right, streams)
                    && !joins_on_batch_time(j)
                    && (mode == OutputMode::Append || !reads_operator) =>
            {
                // Two streams (or, in append mode, final rows of windowed
                // aggregates): a join over event time with state on both sides.
                let times = crate::join::SideTimes {
                    streams,
                    watermarks,
                    window_outputs: &window_outputs,
                };
                match crate::join::stream_join(&state, &node, j, &times) {
                    Ok((op, line, input)) => {
                        explain.push(line);
                        let schema = node.schema().clone();
                        replace_with_operator(
                            ctx,
                            input,
                            &schema,
                            Box::new(op),
                            slide,
                            &mut stateful,
                        )
                    }
                    Err(e) => {
                        refusal = Some(e);
                        Ok(Transformed::no(node))
                    }
                }
            }
            LogicalPlan::Join(j)
                if mode == OutputMode::Complete
                    && reads_operator
                    && (reads_stream(&j.left, streams) || reads_stream(&j.right, streams)) =>
            {
                refusal = Some(Error::Plan(
                    "in complete mode, a join of a stream with the result of a streaming \
                         aggregate would match each batch's new rows against the whole result; \
                         use SET output_mode = 'append' (the aggregate then emits each window \
                         once, when the watermark closes it) or join two aggregates"
                        .into(),
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Window(w)
                if reads_operator
                    && !reads
                    && mode == OutputMode::Append
                    && w.window_expr.iter().all(|e| match e.clone().unalias() {
                        Expr::WindowFunction(f) => f
                            .params
                            .partition_by
                            .iter()
                            .any(|p| is_window_of_operator(&w.input, p, &window_keys)),
                        _ => false,
                    }) =>
            {
                // Top-N per window: a window's rows all arrive in the batch that
                // closes it, so a window function partitioned by it runs per batch.
                explain.push(format!(
                    "Per-batch window functions over the closed windows of a streaming \
                         aggregate (partitioned by the window): [{}], no state",
                    join_exprs(&w.window_expr)
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Join(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
                if reads_operator && mode != OutputMode::Complete =>
            {
                // In update/append mode a batch of an aggregate's output holds only
                // some rows of the result; a join, sort, limit or window function
                // over it would be computed on a part of it.
                refusal = Some(Error::Plan(format!(
                    "{} over the result of a streaming aggregate needs \
                         SET output_mode = 'complete' (each batch then holds the whole \
                         result); in {mode} mode a batch holds only some of its rows",
                    match &node {
                        LogicalPlan::Join(_) => "a join",
                        LogicalPlan::Window(_) => "a window function",
                        LogicalPlan::Sort(_) => "ORDER BY",
                        _ => "LIMIT",
                    }
                )));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Distinct(_) if reads => {
                refusal = Some(Error::Plan(
                    "DISTINCT ON over a stream is not supported yet; use GROUP BY".into(),
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Window(w) if reads && dedup_window(w).is_some() => {
                // ROW_NUMBER() OVER (PARTITION BY k ORDER BY ...): allowed under a
                // `rn = 1` filter, which becomes a deduplication (checked below).
                dedup_windows += 1;
                Ok(Transformed::no(node))
            }
            LogicalPlan::Window(_) if reads => {
                refusal = Some(Error::Plan(
                    "window functions (OVER ...) over a stream run only as deduplication: \
                         SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) \
                         AS rn FROM s) WHERE rn = 1; over an aggregate's result they need \
                         SET output_mode = 'complete'"
                        .into(),
                ));
                Ok(Transformed::no(node))
            }
            LogicalPlan::Filter(f) if reads && dedup_windows > dedup_done => {
                let Some(keys) = dedup_keys(f) else {
                    return Ok(Transformed::no(node));
                };
                dedup_done += 1;
                let df = DataFrame::new(state.clone(), node.clone());
                let schema = Arc::new(df.schema().as_arrow().clone());
                let op = match DedupExec::try_new(schema, mode == OutputMode::Complete)
                    .and_then(|op| op.with_key_columns(keys.clone()))
                {
                    Ok(op) => op.with_positional_names(),
                    Err(e) => {
                        refusal = Some(e);
                        return Ok(Transformed::no(node));
                    }
                };
                explain.push(format!(
                        "DedupExec (ROW_NUMBER() = 1): emits the first row of each key [{}] (the first \
                         by ORDER BY within the batch it arrives in) and drops the key's later rows; \
                         state: every key seen, kept for the life of the query (grows without bound)",
                        keys.iter()
                            .map(|&i| node.schema().qualified_field(i).1.name().clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                let replaced = node.schema().clone();
                replace_with_operator(ctx, df, &replaced, Box::new(op), slide, &mut stateful)
            }
            LogicalPlan::Join(j)
                if reads_stream(&j.left, streams)
                    && reads_stream(&j.right, streams)
                    && joins_on_batch_time(j) =>
            {
                // Rows of different batches never match: a join within each
                // batch is the whole answer (DStream join semantics).
                explain.push(format!(
                    "Same-batch join ({} = {}): runs per batch, no state",
                    BATCH_TIME_COLUMN, BATCH_TIME_COLUMN
                ));
                Ok(Transformed::no(node))
            }
            _ => Ok(Transformed::no(node)),
        }
    };
    // An identical stateful subquery that appears twice (Nexmark q5 joins an aggregate
    // with an aggregate over the same aggregate) runs once: its replacement is reused,
    // so both places read the same operator's output.
    let mut shared: HashMap<LogicalPlan, LogicalPlan> = HashMap::new();
    let new_plan = plan
        .transform_up(|node| {
            let key = matches!(node, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_))
                .then(|| node.clone());
            if let Some(replacement) = key.as_ref().and_then(|k| shared.get(k)) {
                return Ok(Transformed::yes(replacement.clone()));
            }
            let t = plan_node(node)?;
            if let (Some(k), true) = (key, t.transformed) {
                shared.insert(k, t.data.clone());
            }
            Ok(t)
        })?
        .data;
    if let Some(e) = refusal {
        return Err(e);
    }
    if dedup_windows > dedup_done {
        return plan_err!(
            "ROW_NUMBER() over a stream runs only as deduplication, filtered by itself: \
             SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) AS rn \
             FROM s) WHERE rn = 1, with the PARTITION BY columns selected; filter other \
             conditions in an outer query"
        );
    }
    if !stateful && explain.is_empty() {
        explain.push("Stateless: the whole plan runs on each batch".into());
    }
    let explain = explain
        .iter()
        .map(|l| crate::duration::readable_intervals(l))
        .collect();
    let df = DataFrame::new(state, new_plan);
    let stream = ctx.stream_from(df, slide)?;
    Ok(PlannedQuery {
        stream,
        stateful,
        explain,
    })
}
