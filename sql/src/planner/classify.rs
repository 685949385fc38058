//! What the rows under a plan node are — a source's new rows, a stateful operator's
//! whole result, or its changed rows — and the small predicates the planner decides
//! each node's role with. Nothing here creates an operator.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::Column;
use datafusion::logical_expr::{Aggregate, Expr, Join, LogicalPlan, Operator};
use flumen_engine::ops::Emits;
use flumen_engine::stream::OPERATOR_OUTPUT_PREFIX;
use parking_lot::Mutex;

use crate::batch_time::BATCH_TIME_COLUMN;
use crate::window::WINDOW_FUNCTION;

/// What the rows a plan reads hold, batch after batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rows {
    /// No stream: a static table.
    Static,
    /// New rows that never change (sources, a join's matches, first rows per key,
    /// windows the watermark closed).
    Appends,
    /// The whole current result of a stateful operator, every batch.
    Whole,
    /// Changed rows of a stateful operator's result (upserts by key).
    Changes,
    /// New rows of one input beside the whole result of another.
    Mixed,
    /// Rows added and retracted, as their `_op` column says (a regular outer join).
    Changelog,
}

impl Rows {
    fn and(self, other: Rows) -> Rows {
        use Rows::*;
        match (self, other) {
            (Static, x) | (x, Static) => x,
            (Changelog, _) | (_, Changelog) => Changelog,
            (Changes, _) | (_, Changes) => Changes,
            (Mixed, _) | (_, Mixed) => Mixed,
            (Appends, Appends) => Appends,
            (Whole, Whole) => Whole,
            (Appends, Whole) | (Whole, Appends) => Mixed,
        }
    }
}

/// What the planner knows of one stateful operator's output.
#[derive(Debug, Clone)]
pub(crate) struct OutputInfo {
    pub emits: Emits,
    /// For a windowed aggregate in append mode: the position of its window column and
    /// the window's length (each window's rows arrive together, in window order).
    pub window: Option<(usize, Duration)>,
    /// Output columns the operator carries a watermark for
    /// (`StreamOperator::watermarked_columns`).
    pub watermarked: Vec<usize>,
}

/// The stateful operators planned into one query's context so far, by the name of
/// the table their output is scanned as. Shared by every plan of the query (a
/// derived stream is planned before the query that reads it).
#[derive(Debug, Clone, Default)]
pub struct OperatorOutputs(Arc<Mutex<HashMap<String, OutputInfo>>>);

impl OperatorOutputs {
    pub(crate) fn insert(&self, table: String, info: OutputInfo) {
        self.0.lock().insert(table, info);
    }

    pub(crate) fn get(&self, table: &str) -> Option<OutputInfo> {
        self.0.lock().get(table).cloned()
    }

    /// Windowed aggregates in append mode: output table -> window length.
    pub(crate) fn window_lengths(&self) -> HashMap<String, Duration> {
        self.0
            .lock()
            .iter()
            .filter_map(|(t, i)| i.window.map(|(_, len)| (t.clone(), len)))
            .collect()
    }

    /// Windowed aggregates in append mode: output table -> window column.
    pub(crate) fn window_keys(&self) -> HashMap<String, usize> {
        self.0
            .lock()
            .iter()
            .filter_map(|(t, i)| i.window.map(|(k, _)| (t.clone(), k)))
            .collect()
    }
}

/// What the rows of `plan` hold: the combination of every stream it scans.
pub(crate) fn rows_of(
    plan: &LogicalPlan,
    streams: &HashSet<String>,
    outputs: &OperatorOutputs,
) -> Rows {
    let mut rows = Rows::Static;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(s) = node {
            let table = s.table_name.table();
            let r = if streams.contains(table) {
                Rows::Appends
            } else if table.starts_with(OPERATOR_OUTPUT_PREFIX) {
                match outputs.get(table).map(|i| i.emits) {
                    Some(Emits::WholeResult) => Rows::Whole,
                    Some(Emits::Changes { .. }) => Rows::Changes,
                    Some(Emits::Changelog) => Rows::Changelog,
                    // Operators the SQL planner did not make (embedded API) emit rows.
                    Some(Emits::Appends) | None => Rows::Appends,
                }
            } else {
                Rows::Static
            };
            rows = std::mem::replace(&mut rows, Rows::Static).and(r);
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    });
    rows
}

use datafusion::common::tree_node::TreeNode;

/// Does `plan` read one of `streams`?
pub fn reads_stream(plan: &LogicalPlan, streams: &HashSet<String>) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(s) if streams.contains(s.table_name.table())))
    })
    .unwrap_or(false)
}

/// Does `plan` read the output of a stateful operator?
pub fn reads_operator_output(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(s)
            if s.table_name.table().starts_with(OPERATOR_OUTPUT_PREFIX)))
    })
    .unwrap_or(false)
}

/// Does the join require equal `_batch_time` on both sides (in `ON` keys or as a
/// conjunct of its filter)?
pub(crate) fn joins_on_batch_time(j: &Join) -> bool {
    let is_bt = |e: &Expr| matches!(e, Expr::Column(c) if c.name == BATCH_TIME_COLUMN);
    if j.on.iter().any(|(l, r)| is_bt(l) && is_bt(r)) {
        return true;
    }
    j.filter.as_ref().is_some_and(|f| {
        datafusion::logical_expr::utils::split_conjunction(f)
            .into_iter()
            .any(|c| {
                matches!(c, Expr::BinaryExpr(b)
                    if b.op == Operator::Eq && is_bt(&b.left) && is_bt(&b.right))
            })
    })
}

/// Is `_batch_time` one of the aggregate's plain group keys?
pub(crate) fn groups_by_batch_time(agg: &Aggregate) -> bool {
    agg.group_expr
        .iter()
        .any(|e| matches!(e, Expr::Column(c) if c.name == BATCH_TIME_COLUMN))
}

/// Is `expr` (over `plan`'s output) the window of an append-mode windowed aggregate
/// (the window struct, or its start or end)?
pub(crate) fn is_window_of_operator(
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
pub(crate) fn window_length(key: &Expr) -> Option<Duration> {
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
pub(crate) fn operator_table(plan: &LogicalPlan) -> Option<String> {
    match plan {
        LogicalPlan::Projection(p) => match p.input.as_ref() {
            LogicalPlan::TableScan(s) => Some(s.table_name.table().to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Is `expr` (over `plan`'s output) a stream's batch time, followed through projections,
/// aliases and filters — `_batch_time` itself, or Flink's `PROCTIME()` (read as it),
/// renamed in a view (`SELECT *, PROCTIME() AS p_time FROM bid`)?
pub(crate) fn is_batch_time(plan: &LogicalPlan, expr: &Expr) -> bool {
    match expr {
        Expr::Alias(a) => is_batch_time(plan, &a.expr),
        Expr::Column(c) if c.name == crate::batch_time::BATCH_TIME_COLUMN => true,
        Expr::Column(c) => {
            let Ok(i) = plan.schema().index_of_column(c) else {
                return false;
            };
            match plan {
                LogicalPlan::Projection(p) => is_batch_time(&p.input, &p.expr[i]),
                LogicalPlan::SubqueryAlias(a) => {
                    let (q, f) = a.input.schema().qualified_field(i);
                    is_batch_time(&a.input, &Expr::Column(Column::new(q.cloned(), f.name())))
                }
                LogicalPlan::Filter(f) => is_batch_time(&f.input, expr),
                _ => false,
            }
        }
        _ => false,
    }
}

/// The stateful operator output column `expr` (over `plan`'s output) is, followed
/// through projections, aliases and filters: the operator's graph index and column.
pub(crate) fn operator_column(plan: &LogicalPlan, expr: &Expr) -> Option<(String, usize)> {
    match expr {
        Expr::Alias(a) => operator_column(plan, &a.expr),
        Expr::Column(c) => {
            let i = plan.schema().index_of_column(c).ok()?;
            match plan {
                LogicalPlan::TableScan(s)
                    if s.table_name.table().starts_with(OPERATOR_OUTPUT_PREFIX) =>
                {
                    let column = match &s.projection {
                        Some(p) => *p.get(i)?,
                        None => i,
                    };
                    Some((s.table_name.table().to_string(), column))
                }
                LogicalPlan::Projection(p) => operator_column(&p.input, &p.expr[i]),
                LogicalPlan::SubqueryAlias(a) => {
                    let (q, f) = a.input.schema().qualified_field(i);
                    operator_column(&a.input, &Expr::Column(Column::new(q.cloned(), f.name())))
                }
                LogicalPlan::Filter(f) => operator_column(&f.input, expr),
                _ => None,
            }
        }
        _ => None,
    }
}
