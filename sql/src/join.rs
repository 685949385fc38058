//! Joins of two streams over event time: the planner's side of
//! [`StreamJoin`]. The join condition must bound how far apart in time two
//! matching rows can be — an interval (`a.ts BETWEEN b.ts - INTERVAL '10' SECOND AND
//! b.ts`) or equal window times (`a.window_start = b.window_start`) — so that each
//! side's watermark tells when a row can no longer match and is dropped from state.
//!
//! ```text
//!  Join(L, R, on, filter) ─▶ input = (true, L.*, NULLs) UNION ALL (false, NULLs, R.*)
//!                          ─▶ StreamJoin(join of two slots, time bound [lo, hi])
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::{Column, DFSchemaRef, ScalarValue};
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Expr, Join, JoinType, LogicalPlan, LogicalPlanBuilder, Operator, Projection, lit,
};
use flumen_engine::ops::{JoinTime, StreamJoin};
use flumen_engine::{Result, plan_err};

/// One side of a time comparison: `column + offset_ms`.
struct TimeTerm {
    left: bool,
    index: usize,
    offset: i64,
}

fn offset_millis(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            Some(i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            Some(i.days as i64 * 86_400_000 + i.milliseconds as i64)
        }
        ScalarValue::DurationSecond(Some(s)) => Some(s * 1000),
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationMicrosecond(Some(us)) => Some(us / 1000),
        ScalarValue::DurationNanosecond(Some(ns)) => Some(ns / 1_000_000),
        _ => None,
    }
}

fn is_timestamp(schema: &DFSchemaRef, index: usize) -> bool {
    matches!(
        schema.field(index).data_type(),
        datafusion::arrow::datatypes::DataType::Timestamp(..)
    )
}

/// `expr` as a timestamp column of one side plus a constant.
fn time_term(expr: &Expr, left: &DFSchemaRef, right: &DFSchemaRef) -> Option<TimeTerm> {
    match expr {
        Expr::Column(c) => {
            if let Ok(i) = left.index_of_column(c) {
                is_timestamp(left, i).then_some(TimeTerm {
                    left: true,
                    index: i,
                    offset: 0,
                })
            } else if let Ok(i) = right.index_of_column(c) {
                is_timestamp(right, i).then_some(TimeTerm {
                    left: false,
                    index: i,
                    offset: 0,
                })
            } else {
                None
            }
        }
        Expr::Alias(a) => time_term(&a.expr, left, right),
        Expr::BinaryExpr(BinaryExpr {
            left: l,
            op,
            right: r,
        }) if matches!(op, Operator::Plus | Operator::Minus) => {
            let Expr::Literal(v, _) = r.as_ref() else {
                return None;
            };
            let ms = offset_millis(v)?;
            let mut t = time_term(l, left, right)?;
            t.offset += if *op == Operator::Plus { ms } else { -ms };
            Some(t)
        }
        _ => None,
    }
}

/// The bound on `left.time - right.time` the join condition implies, per pair of
/// time columns.
#[derive(Debug, Default, Clone, Copy)]
struct Bound {
    lo: Option<i64>,
    hi: Option<i64>,
}

fn comparisons(j: &Join) -> Vec<(Expr, Operator, Expr)> {
    let mut out: Vec<(Expr, Operator, Expr)> =
        j.on.iter()
            .map(|(l, r)| (l.clone(), Operator::Eq, r.clone()))
            .collect();
    if let Some(f) = &j.filter {
        for c in split_conjunction(f) {
            match c {
                Expr::BinaryExpr(b)
                    if matches!(
                        b.op,
                        Operator::Eq
                            | Operator::Lt
                            | Operator::LtEq
                            | Operator::Gt
                            | Operator::GtEq
                    ) =>
                {
                    out.push((b.left.as_ref().clone(), b.op, b.right.as_ref().clone()))
                }
                Expr::Between(b) if !b.negated => {
                    out.push((
                        b.expr.as_ref().clone(),
                        Operator::GtEq,
                        b.low.as_ref().clone(),
                    ));
                    out.push((
                        b.expr.as_ref().clone(),
                        Operator::LtEq,
                        b.high.as_ref().clone(),
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

/// Time bounds per (left column, right column) pair.
fn time_bounds(j: &Join) -> Vec<((usize, usize), Bound)> {
    let (ls, rs) = (j.left.schema(), j.right.schema());
    let mut bounds: Vec<((usize, usize), Bound)> = Vec::new();
    for (a, op, b) in comparisons(j) {
        let (Some(ta), Some(tb)) = (time_term(&a, ls, rs), time_term(&b, ls, rs)) else {
            continue;
        };
        // Orient as left.time + x <op> right.time + y.
        let (l, r, op) = match (ta.left, tb.left) {
            (true, false) => (ta, tb, op),
            (false, true) => (
                tb,
                ta,
                match op {
                    Operator::Lt => Operator::Gt,
                    Operator::LtEq => Operator::GtEq,
                    Operator::Gt => Operator::Lt,
                    Operator::GtEq => Operator::LtEq,
                    other => other,
                },
            ),
            _ => continue,
        };
        // left.time - right.time <op> d
        let d = r.offset - l.offset;
        let key = (l.index, r.index);
        let pos = match bounds.iter().position(|(k, _)| *k == key) {
            Some(p) => p,
            None => {
                bounds.push((key, Bound::default()));
                bounds.len() - 1
            }
        };
        let bound = &mut bounds[pos].1;
        let tighter_lo = |cur: Option<i64>| Some(cur.map_or(d, |c: i64| c.max(d)));
        let tighter_hi = |cur: Option<i64>| Some(cur.map_or(d, |c: i64| c.min(d)));
        match op {
            Operator::Eq => {
                bound.lo = tighter_lo(bound.lo);
                bound.hi = tighter_hi(bound.hi);
            }
            Operator::Gt | Operator::GtEq => bound.lo = tighter_lo(bound.lo),
            Operator::Lt | Operator::LtEq => bound.hi = tighter_hi(bound.hi),
            _ => {}
        }
    }
    bounds
}

/// Where the watermark delay of a join side's time column comes from.
pub(crate) struct SideTimes<'a> {
    pub streams: &'a HashSet<String>,
    /// `stream.column` -> watermark delay.
    pub watermarks: &'a HashMap<String, Duration>,
    /// Operator output table -> window length, for windowed aggregates that emit each
    /// window once (append): their rows come in window order, so any time inside a
    /// window is at most one window length behind the latest.
    pub window_outputs: &'a HashMap<String, Duration>,
}

impl SideTimes<'_> {
    fn delay(&self, side: &LogicalPlan, index: usize) -> Option<Duration> {
        let (_, field) = side.schema().qualified_field(index);
        let mut raw = Vec::new();
        let mut derived = Vec::new();
        let mut windowed = Vec::new();
        let _ = side.apply(|node| {
            match node {
                LogicalPlan::TableScan(s) => {
                    let table = s.table_name.table();
                    if self.streams.contains(table) {
                        raw.push(table.to_string());
                    } else if let Some(len) = self.window_outputs.get(table) {
                        windowed.push(*len);
                    }
                }
                // A derived stream, planned into the query under its own name: its
                // declared watermark (`timestamp`, `watermark_delay`) is the side's.
                LogicalPlan::SubqueryAlias(a) if self.streams.contains(a.alias.table()) => {
                    derived.push(a.alias.table().to_string());
                }
                _ => {}
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        });
        let declared = |streams: &[String]| {
            crate::catalog::declared_watermark(
                self.watermarks,
                streams.iter().map(String::as_str),
                field.name(),
            )
        };
        if let Some(delay) = declared(&derived) {
            return Some(delay);
        }
        if !raw.is_empty() {
            return declared(&raw);
        }
        windowed.into_iter().max()
    }
}

use datafusion::common::tree_node::TreeNode;

/// The columns of `schema` as expressions, optionally renamed `{prefix}{i}`.
fn columns(schema: &DFSchemaRef, prefix: &str) -> Vec<Expr> {
    schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            Expr::Column(Column::new(q.cloned(), f.name())).alias(format!("{prefix}{i}"))
        })
        .collect()
}

fn nulls(schema: &DFSchemaRef, prefix: &str) -> Result<Vec<Expr>> {
    schema
        .iter()
        .enumerate()
        .map(|(i, (_, f))| {
            Ok(Expr::Literal(ScalarValue::try_from(f.data_type())?, None)
                .alias(format!("{prefix}{i}")))
        })
        .collect()
}

/// Plans `join` (whose inputs both read streams) as a [`StreamJoin`]. Returns the
/// operator, its EXPLAIN line and its input.
pub(crate) fn stream_join(
    state: &SessionState,
    j: &Join,
    times: &SideTimes<'_>,
    state_config: &flumen_engine::state::StateConfig,
    mode: crate::planner::OutputMode,
) -> Result<(StreamJoin, DataFrame)> {
    if !matches!(
        j.join_type,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
    ) {
        return plan_err!(
            "a {} join of two streams is not supported: inner, left, right and full outer \
             joins of two streams run; write one of those, or join the stream with a static \
             table",
            j.join_type
        );
    }
    let bounds = time_bounds(j);
    // Without a condition that bounds the time between matching rows, a regular
    // join: each side's rows are kept (until `state_ttl`) and none is late.
    let chosen = bounds
        .iter()
        .find(|(_, b)| b.lo.is_some() && b.hi.is_some())
        .or_else(|| bounds.first())
        .copied();
    let ((left_time, right_time), bound) = match chosen {
        Some(((li, ri), bound)) => (
            (
                JoinTime {
                    index: Some(li),
                    delay: times.delay(&j.left, li),
                },
                JoinTime {
                    index: Some(ri),
                    delay: times.delay(&j.right, ri),
                },
            ),
            bound,
        ),
        None => (
            (
                JoinTime {
                    index: None,
                    delay: None,
                },
                JoinTime {
                    index: None,
                    delay: None,
                },
            ),
            Bound { lo: None, hi: None },
        ),
    };
    check_outer(j, &left_time, &right_time, &bound, mode)?;
    let (ls, rs) = (j.left.schema().clone(), j.right.schema().clone());
    // The input: both sides in one tagged union.
    let mut lcols = vec![lit(true).alias("__flumen_side")];
    lcols.extend(columns(&ls, "l"));
    lcols.extend(nulls(&rs, "r")?);
    let mut rcols = vec![lit(false).alias("__flumen_side")];
    rcols.extend(nulls(&ls, "l")?);
    rcols.extend(columns(&rs, "r"));
    let union = LogicalPlanBuilder::from(LogicalPlan::Projection(Projection::try_new(
        lcols,
        Arc::clone(&j.left),
    )?))
    .union(LogicalPlan::Projection(Projection::try_new(
        rcols,
        Arc::clone(&j.right),
    )?))?
    .build()?;
    let input = DataFrame::new(state.clone(), union);
    // The join over the operator's two slots, with the sides' original names.
    let restore = |scan: LogicalPlan, schema: &DFSchemaRef| -> Result<LogicalPlan> {
        let scan_schema = scan.schema().clone();
        let exprs = schema
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                let (sq, sf) = scan_schema.qualified_field(i);
                Expr::Column(Column::new(sq.cloned(), sf.name()))
                    .alias_qualified(q.cloned(), f.name())
            })
            .collect();
        Ok(LogicalPlan::Projection(Projection::try_new(
            exprs,
            Arc::new(scan),
        )?))
    };
    let op = StreamJoin::try_new(
        &input,
        Arc::new(ls.as_arrow().clone()),
        Arc::new(rs.as_arrow().clone()),
        left_time,
        right_time,
        (bound.lo, bound.hi),
        |l, r| {
            let inputs = vec![restore(l, &ls)?, restore(r, &rs)?];
            // The operator runs the join's matches (an inner join) and adds an outer
            // join's unmatched rows itself, when they can no longer match.
            let matches = LogicalPlan::Join(Join {
                join_type: JoinType::Inner,
                ..j.clone()
            });
            Ok(matches.with_new_exprs(matches.expressions(), inputs)?)
        },
    )?
    .with_join_type(j.join_type)?
    .with_time_names(
        left_time
            .index
            .map_or_else(String::new, |i| qualified(&ls, i)),
        right_time
            .index
            .map_or_else(String::new, |i| qualified(&rs, i)),
    );
    // Each side's state is keyed by the condition's equalities of plain columns of
    // one type, in `ON` or the filter (others, `a.k + 1 = b.k`, are left to the
    // join's condition).
    let mut keys: Vec<(usize, usize, String, String)> = Vec::new();
    for (a, op, b) in comparisons(j) {
        let (Operator::Eq, Expr::Column(a), Expr::Column(b)) = (op, &a, &b) else {
            continue;
        };
        let (l, r) = match (ls.index_of_column(a), rs.index_of_column(b)) {
            (Ok(l), Ok(r)) => (l, r),
            _ => match (ls.index_of_column(b), rs.index_of_column(a)) {
                (Ok(l), Ok(r)) => (l, r),
                _ => continue,
            },
        };
        let fresh = !keys.iter().any(|(kl, kr, ..)| (*kl, *kr) == (l, r));
        if fresh && ls.field(l).data_type() == rs.field(r).data_type() {
            keys.push((l, r, qualified(&ls, l), qualified(&rs, r)));
        }
    }
    let op = op.with_state(keys, state_config.clone())?;
    Ok((op, input))
}

/// An outer join of two streams emits a row that never matched once no row of the
/// other side can match it any more: the other side's watermark must pass it, so that
/// side needs a watermark and the condition a bound on how much later its rows may be.
/// Without a time bound (a regular join) it emits the row at once and retracts it
/// when a match comes (a changelog), which append mode refuses.
fn check_outer(
    j: &Join,
    left: &JoinTime,
    right: &JoinTime,
    bound: &Bound,
    mode: crate::planner::OutputMode,
) -> Result<()> {
    let (outer_left, outer_right) = match j.join_type {
        JoinType::Left => (true, false),
        JoinType::Right => (false, true),
        JoinType::Full => (true, true),
        _ => return Ok(()),
    };
    let kind = j.join_type;
    if left.index.is_none() || right.index.is_none() {
        if mode != crate::planner::OutputMode::Append {
            // A regular outer join: a changelog.
            return Ok(());
        }
        return plan_err!(
            "output mode append cannot run a {kind} join of two streams without a time \
             bound: it emits a row without a match at once, padded with nulls, and retracts \
             it when the first match arrives. Use SET output_mode = 'update' (the rows carry \
             _op = '+I' or '-D'), or bound the time between matching rows (e.g. r.ts \
             BETWEEN l.ts AND l.ts + INTERVAL '1' HOUR, with watermarks on both streams: a \
             row without a match then comes out once, when the other side's watermark proves \
             none can come)"
        );
    }
    let stream = |plan: &LogicalPlan| {
        plan.schema()
            .iter()
            .next()
            .and_then(|(q, _)| q.map(|q| q.to_string()))
            .unwrap_or_else(|| "its stream".into())
    };
    let missing = |side: &str, other: &str, plan: &LogicalPlan, example: &str| {
        plan_err!(
            "a {kind} join of two streams emits a {side} row without a match once no {other} \
             row can match it: that needs a watermark on the {other} side ({}: declare \
             WATERMARK FOR its time column) and a condition bounding how much later than the \
             {side} row a {other} row may be (e.g. {example})",
            stream(plan)
        )
    };
    if outer_left && (bound.lo.is_none() || right.delay.is_none()) {
        return missing(
            "left",
            "right",
            &j.right,
            "r.ts <= l.ts + INTERVAL '10' SECOND",
        );
    }
    if outer_right && (bound.hi.is_none() || left.delay.is_none()) {
        return missing(
            "right",
            "left",
            &j.left,
            "l.ts <= r.ts + INTERVAL '10' SECOND",
        );
    }
    Ok(())
}

/// Column `i` of `schema` as the query names it (`b.ts`).
fn qualified(schema: &DFSchemaRef, i: usize) -> String {
    let (q, f) = schema.qualified_field(i);
    match q {
        Some(q) => format!("{q}.{}", f.name()),
        None => f.name().to_string(),
    }
}
