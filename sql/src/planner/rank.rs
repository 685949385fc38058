//! `ROW_NUMBER()` over a stream, filtered by itself — the only window function that
//! runs over a stream's rows: `WHERE rn = 1` (deduplication) or `rn <= N` (top-N per
//! key). This reads the pattern off the plan; the planner picks the operator.

use datafusion::arrow::compute::SortOptions;
use datafusion::common::{Column, ScalarValue};
use datafusion::logical_expr::{Expr, Filter, LogicalPlan, Operator, Window};
use flumen_engine::ops::OrderColumn;
use flumen_engine::{Result, plan_err};

use crate::batch_time::BATCH_TIME_COLUMN;

/// `ROW_NUMBER() OVER (PARTITION BY keys ORDER BY order) <= limit`, with positions in
/// the filter's output.
#[derive(Debug)]
pub(super) struct RankFilter {
    pub keys: Vec<usize>,
    pub order: Vec<OrderColumn>,
    /// The position of the `ROW_NUMBER()` column.
    pub rank: usize,
    pub limit: usize,
    /// No `ORDER BY`, or only `_batch_time` ascending: the first rows to arrive win,
    /// and no later row can displace them.
    pub by_arrival: bool,
}

/// The `ROW_NUMBER()` expression of a window node with exactly one window function.
pub(super) fn row_number(w: &Window) -> Option<&datafusion::logical_expr::expr::WindowFunction> {
    let [e] = w.window_expr.as_slice() else {
        return None;
    };
    let f = match e {
        Expr::Alias(a) => a.expr.as_ref(),
        other => other,
    };
    match f {
        Expr::WindowFunction(f) if f.fun.name() == "row_number" => Some(f),
        _ => None,
    }
}

/// The expression column `i` of `plan` stands for, followed down through filters,
/// aliases and projections to the nearest window node (in its input's terms).
fn origin(plan: &LogicalPlan, i: usize) -> Option<(Expr, &Window)> {
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

/// A non-negative integer literal, through casts.
fn literal(e: &Expr) -> Option<u64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(n)) => u64::try_from(*n).ok(),
            ScalarValue::Int16(Some(n)) => u64::try_from(*n).ok(),
            ScalarValue::Int32(Some(n)) => u64::try_from(*n).ok(),
            ScalarValue::Int64(Some(n)) => u64::try_from(*n).ok(),
            ScalarValue::UInt8(Some(n)) => Some(u64::from(*n)),
            ScalarValue::UInt16(Some(n)) => Some(u64::from(*n)),
            ScalarValue::UInt32(Some(n)) => Some(u64::from(*n)),
            ScalarValue::UInt64(Some(n)) => Some(*n),
            _ => None,
        },
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

fn column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Cast(c) => column(&c.expr),
        Expr::TryCast(c) => column(&c.expr),
        _ => None,
    }
}

/// `rn = 1`, `rn <= N`, `rn < N` (either way round): the column and N.
fn rank_bound(predicate: &Expr) -> Option<(&Column, usize)> {
    let Expr::BinaryExpr(b) = predicate else {
        return None;
    };
    let (c, op, n) = match (column(&b.left), literal(&b.right)) {
        (Some(c), Some(n)) => (c, b.op, n),
        _ => match (literal(&b.left), column(&b.right)) {
            (Some(n), Some(c)) => (c, b.op.swap()?, n),
            _ => return None,
        },
    };
    let limit = match op {
        Operator::Eq if n == 1 => 1,
        Operator::LtEq if n >= 1 => n,
        Operator::Lt if n >= 2 => n - 1,
        _ => return None,
    };
    Some((c, usize::try_from(limit).ok()?))
}

/// For a filter `rn <= N` over a `ROW_NUMBER()` window: the pattern, with every
/// column it needs found in the filter's output. `None` when the filter is not one.
pub(super) fn rank_filter(f: &Filter) -> Result<Option<RankFilter>> {
    let Some((rn, limit)) = rank_bound(&f.predicate) else {
        return Ok(None);
    };
    let schema = f.input.schema();
    let Ok(rank) = schema.index_of_column(rn) else {
        return Ok(None);
    };
    let Some((rn_expr, window)) = origin(&f.input, rank) else {
        return Ok(None);
    };
    if !matches!(rn_expr, Expr::WindowFunction(_)) {
        return Ok(None);
    }
    let Some(function) = row_number(window) else {
        return Ok(None);
    };
    // Where an expression of the window's input is in the filter's output.
    let position = |e: &Expr| {
        (0..schema.fields().len())
            .find(|&i| origin(&f.input, i).is_some_and(|(o, w)| std::ptr::eq(w, window) && &o == e))
    };
    let mut keys = Vec::new();
    for p in &function.params.partition_by {
        let Some(i) = position(p) else {
            return plan_err!(
                "ROW_NUMBER() over a stream: select its PARTITION BY column {p} in the \
                 subquery, so that each key's rows can be told apart"
            );
        };
        keys.push(i);
    }
    let by_arrival = function
        .params
        .order_by
        .iter()
        .all(|s| s.asc && matches!(&s.expr, Expr::Column(c) if c.name == BATCH_TIME_COLUMN));
    let mut order = Vec::new();
    if !(by_arrival && limit == 1) {
        for s in &function.params.order_by {
            let Some(index) = position(&s.expr) else {
                return plan_err!(
                    "ROW_NUMBER() over a stream: select its ORDER BY column {} in the subquery, \
                     so that rows of later batches can be ranked against those kept",
                    s.expr
                );
            };
            order.push(OrderColumn {
                index,
                options: SortOptions {
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                },
            });
        }
    }
    Ok(Some(RankFilter {
        keys,
        order,
        rank,
        limit,
        by_arrival,
    }))
}

/// The rows a top-N's filter reads, before they are ranked: `filter`'s input with its
/// `ROW_NUMBER()` window replaced by a constant rank. The operator ranks every row
/// itself (against the rows it keeps), so ranking each batch first as well would sort
/// it twice.
pub(super) fn unranked(filter: &Filter) -> datafusion::error::Result<LogicalPlan> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::Projection;
    use std::sync::Arc;
    let plan = filter.input.as_ref().clone();
    plan.transform_down(|node| {
        let LogicalPlan::Window(w) = &node else {
            return Ok(Transformed::no(node));
        };
        if row_number(w).is_none() {
            return Ok(Transformed::no(node));
        }
        let inputs = w.input.schema().fields().len();
        let mut exprs: Vec<Expr> = w
            .input
            .schema()
            .iter()
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        let (_, rank) = w.schema.qualified_field(inputs);
        exprs.push(Expr::Literal(ScalarValue::UInt64(Some(0)), None).alias(rank.name()));
        let projection =
            Projection::try_new_with_schema(exprs, Arc::clone(&w.input), Arc::clone(&w.schema))?;
        Ok(Transformed::new(
            LogicalPlan::Projection(projection),
            true,
            TreeNodeRecursion::Jump,
        ))
    })
    .map(|t| t.data)
}

/// Flink's window top-N: `ROW_NUMBER()` partitioned by a window table function's
/// `window_end` (a key), over rows that carry their stream's event-time column (one
/// column of the rows the filter reads with a declared watermark — the window's
/// input, whatever the subquery selects). The positions of the window end and the
/// time column, and the watermark delay; `None` otherwise.
pub(super) fn window_close(
    filter: &Filter,
    keys: &[usize],
    watermark_of: impl Fn(&str) -> Option<std::time::Duration>,
) -> Option<(usize, usize, std::time::Duration)> {
    use datafusion::arrow::datatypes::DataType;
    let schema = filter.input.schema();
    let is_time = |i: usize| matches!(schema.field(i).data_type(), DataType::Timestamp(..));
    let end = keys
        .iter()
        .copied()
        .find(|&i| schema.field(i).name() == "window_end" && is_time(i))?;
    let timed: Vec<(usize, std::time::Duration)> = (0..schema.fields().len())
        .filter(|&i| {
            is_time(i) && !["window_start", "window_end"].contains(&schema.field(i).name().as_str())
        })
        .filter_map(|i| Some((i, watermark_of(schema.field(i).name())?)))
        .collect();
    match timed.as_slice() {
        [(time, delay)] => Some((end, *time, *delay)),
        _ => None,
    }
}
