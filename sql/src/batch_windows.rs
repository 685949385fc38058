//! Hopping, cumulating and session windows in a batch query (over tables only), so that the text of
//! a streaming query runs unchanged as the batch query over all its input. A streaming
//! query's planner gives these GROUP BY keys to its operators; in a batch query
//! DataFusion would call the functions row by row — `window(ts, size, slide)` has no
//! single answer for a row and `session_window(ts, gap)` only knows the row's own
//! session — so before planning, each such key becomes a column of the input:
//!
//! ```text
//!  GROUP BY k, window(ts, size, slide)  ─▶ input ⨝ unnest(flumen_hop_windows(ts, size, slide))
//!  GROUP BY k, cumulate_window(ts, step, size)
//!                                      ─▶ input ⨝ unnest(flumen_cumulate_windows(ts, step, size))
//!  GROUP BY k, session_window(ts, gap)  ─▶ per k, rows in ts order; a row more than gap
//!                                          after the previous opens a session;
//!                                          {first ts, last ts + gap} of its session
//! ```
//!
//! Sessions merge as the streaming operator merges them (`SessionAggregate`): a row at
//! most `gap` after the previous one of its key joins its session.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, WindowFrame, case, col, lit,
};
use flumen_engine::Result;

const WINDOW_COLUMN: &str = "__flumen_batch_window";

/// `plan` with every batch aggregate's hopping or session window key expanded.
pub(crate) fn expand(plan: LogicalPlan) -> Result<LogicalPlan> {
    let has_window_key = plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::Aggregate(a) if a.group_expr.iter().any(|e| key_of(e).is_some())))
    })?;
    if !has_window_key {
        return Ok(plan);
    }
    let out = plan.transform_up(|node| {
        let LogicalPlan::Aggregate(agg) = &node else {
            // Parents see their children's new schemas.
            return Ok(Transformed::yes(node.recompute_schema()?));
        };
        match expand_aggregate(agg)
            .map_err(|e| datafusion::error::DataFusionError::External(e.into()))?
        {
            Some(plan) => Ok(Transformed::yes(plan)),
            None => Ok(Transformed::yes(node.recompute_schema()?)),
        }
    })?;
    Ok(out.data)
}

/// The window call a group key is (through an alias), if it is one to expand.
#[derive(Clone, Copy)]
enum Key<'a> {
    Hop(&'a ScalarFunction),
    Cumulate(&'a ScalarFunction),
    Session(&'a ScalarFunction),
}

fn key_of(e: &Expr) -> Option<Key<'_>> {
    match e {
        Expr::Alias(a) => key_of(&a.expr),
        Expr::ScalarFunction(f)
            if f.name() == crate::window::WINDOW_FUNCTION
                && f.args.len() == 3
                && f.args[1] != f.args[2] =>
        {
            Some(Key::Hop(f))
        }
        Expr::ScalarFunction(f)
            if f.name() == crate::window::CUMULATE_WINDOW_FUNCTION && f.args.len() == 3 =>
        {
            Some(Key::Cumulate(f))
        }
        Expr::ScalarFunction(f)
            if f.name() == crate::window::SESSION_WINDOW_FUNCTION && f.args.len() == 2 =>
        {
            Some(Key::Session(f))
        }
        _ => None,
    }
}

fn expand_aggregate(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
    let Some((k, key)) = agg
        .group_expr
        .iter()
        .enumerate()
        .find_map(|(k, e)| key_of(e).map(|key| (k, key)))
    else {
        return Ok(None);
    };
    let input = agg.input.as_ref().clone();
    let columns: Vec<Expr> = input
        .schema()
        .iter()
        .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
        .collect();
    let input = match key {
        Key::Hop(f) | Key::Cumulate(f) => {
            let udf = match key {
                Key::Hop(_) => crate::window::hop_windows_udf(),
                _ => crate::window::cumulate_windows_udf(),
            };
            let mut exprs = columns.clone();
            exprs.push(udf.call(f.args.clone()).alias(WINDOW_COLUMN));
            LogicalPlanBuilder::from(input)
                .project(exprs)?
                .unnest_column(WINDOW_COLUMN)?
                .build()?
        }
        Key::Session(f) => {
            let others: Vec<Expr> = agg
                .group_expr
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != k)
                .map(|(_, e)| e.clone().unalias())
                .collect();
            sessions(input, &columns, others, &f.args[0], &f.args[1])?
        }
    };
    let mut group_expr = agg.group_expr.clone();
    group_expr[k] = col(WINDOW_COLUMN).alias(agg.group_expr[k].schema_name().to_string());
    Ok(Some(LogicalPlan::Aggregate(Aggregate::try_new(
        Arc::new(input),
        group_expr,
        agg.aggr_expr.clone(),
    )?)))
}

/// `input` with a column `{start, end}`: the session of each row among the rows of its
/// `keys`, by `ts` and `gap`.
fn sessions(
    input: LogicalPlan,
    columns: &[Expr],
    keys: Vec<Expr>,
    ts: &Expr,
    gap: &Expr,
) -> Result<LogicalPlan> {
    let ms = datafusion::arrow::datatypes::DataType::Timestamp(
        datafusion::arrow::datatypes::TimeUnit::Millisecond,
        None,
    );
    let ts = Expr::Cast(datafusion::logical_expr::Cast::new(
        Box::new(ts.clone()),
        ms,
    ));
    let order = vec![ts.clone().sort(true, false)];
    let prev = datafusion::functions_window::expr_fn::lag(ts.clone(), Some(1), None)
        .partition_by(keys.clone())
        .order_by(order.clone())
        .build()?
        .alias("__flumen_prev");
    let opens = case(
        col("__flumen_prev")
            .is_null()
            .or(ts.clone().gt(col("__flumen_prev") + gap.clone())),
    )
    .when(lit(true), lit(1i64))
    .otherwise(lit(0i64))?;
    let mut with_opens = columns.to_vec();
    with_opens.push(opens.alias("__flumen_opens"));
    let session_no = over(
        datafusion::functions_aggregate::sum::sum_udaf(),
        col("__flumen_opens"),
    )
    .partition_by(keys.clone())
    .order_by(order)
    .window_frame(WindowFrame::new_bounds(
        datafusion::logical_expr::WindowFrameUnits::Rows,
        datafusion::logical_expr::WindowFrameBound::Preceding(ScalarValue::UInt64(None)),
        datafusion::logical_expr::WindowFrameBound::CurrentRow,
    ))
    .build()?
    .alias("__flumen_session");
    let mut per_session = keys;
    per_session.push(col("__flumen_session"));
    let first = over(
        datafusion::functions_aggregate::min_max::min_udaf(),
        ts.clone(),
    )
    .partition_by(per_session.clone())
    .build()?
    .alias("__flumen_first");
    let last = over(datafusion::functions_aggregate::min_max::max_udaf(), ts)
        .partition_by(per_session)
        .build()?
        .alias("__flumen_last");
    let mut out = columns.to_vec();
    out.push(
        datafusion::functions::core::expr_fn::named_struct(vec![
            lit("start"),
            col("__flumen_first"),
            lit("end"),
            col("__flumen_last") + gap.clone(),
        ])
        .alias(WINDOW_COLUMN),
    );
    Ok(LogicalPlanBuilder::from(input)
        .window(vec![prev])?
        .project(with_opens)?
        .window(vec![session_no])?
        .window(vec![first, last])?
        .project(out)?
        .build()?)
}

/// Aggregate `f` of `arg` as a window function (`f(arg) OVER (...)`, the window given
/// by the caller).
fn over(f: Arc<datafusion::logical_expr::AggregateUDF>, arg: Expr) -> Expr {
    Expr::WindowFunction(Box::new(
        datafusion::logical_expr::expr::WindowFunction::new(
            datafusion::logical_expr::expr::WindowFunctionDefinition::AggregateUDF(f),
            vec![arg],
        ),
    ))
}
