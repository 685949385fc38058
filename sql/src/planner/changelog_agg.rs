//! An aggregate over a changelog (rows added, `_op = '+I'`, and retracted, `'-D'`: a
//! regular outer join's rows, or another aggregate's changed groups made one by a
//! `ToChangelog`):
//! each row counts with a sign, +1 or -1, so `COUNT`, `SUM` and `AVG` become sums of
//! signed values that a running aggregate keeps like any other — a retracted row takes
//! its part back out. With each group's signed row count, a group whose rows were all
//! retracted leaves the result (`ToChangelog`).
//!
//! ```text
//!  changelog ─▶ + __flumen_sign (−1 for '-D') ─▶ RunningAggregate (changed groups):
//!     COUNT(x)  → SUM(CASE WHEN x IS NOT NULL THEN sign ELSE 0 END)      c
//!     SUM(x)    → SUM(x * sign), c                        → NULL when c = 0, else s
//!     AVG(x)    → SUM(CAST(x AS DOUBLE) * sign), c        → NULL when c = 0, else s / c
//!     MIN(x), MAX(x), COUNT/SUM/AVG(DISTINCT x)
//!               → a multiset of the group's values with signed counts (`SignedMultiset`)
//!     rows      → SUM(sign)
//!  ─▶ the values finished ─▶ ToChangelog (keyed by the group): -D old row, +I new row
//! ```
//!
//! `MIN`, `MAX` and the `DISTINCT` aggregates keep every value of the group with its
//! count (a retracted maximum gives way to the next one): their state grows with the
//! distinct values per group, as Flink's retracting `MAX` does.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchemaRef, ScalarValue};
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection, cast, lit, when};
use flumen_engine::ops::aggregate::multiset::{Over, signed_multiset};
use flumen_engine::ops::{OP_COLUMN, OP_DELETE};

use super::refuse;
use crate::window::{CUMULATE_WINDOW_FUNCTION, SESSION_WINDOW_FUNCTION, WINDOW_FUNCTION};

const SIGN: &str = "__flumen_sign";

/// How one of the query's aggregates is finished from the signed sums.
enum Finish {
    /// `COUNT`: the signed count (column index).
    Count(usize),
    /// `SUM`: the signed sum, or NULL when no value is left (sum, count indexes).
    Sum(usize, usize),
    /// `AVG`: the signed sum over the count, NULL when no value is left.
    Avg(usize, usize),
    /// A multiset's value, as it is (column index).
    Value(usize),
}

/// An aggregate over a changelog as an aggregate of signed values.
pub(super) struct SignedAggregate {
    /// The aggregate over the changelog with its sign column.
    pub aggregate: Aggregate,
    finish: Vec<Finish>,
    /// The query's aggregate's output schema (names and types to finish with).
    original: DFSchemaRef,
}

impl SignedAggregate {
    /// The rewrite of `agg` (its input ends in `_op`), or the refusal naming what
    /// cannot be taken back out of a group.
    pub fn try_new(agg: &Aggregate) -> datafusion::error::Result<Self> {
        let input_schema = agg.input.schema();
        let (q, f) = input_schema.qualified_field(input_schema.fields().len() - 1);
        if f.name() != OP_COLUMN {
            return Err(datafusion::error::DataFusionError::Internal(
                "the input of an aggregate over a changelog lacks _op".into(),
            ));
        }
        let op = Expr::Column(Column::new(q.cloned(), f.name()));
        Self::check(agg)?;
        let mut columns: Vec<Expr> = input_schema
            .iter()
            .map(|(q, f)| Expr::Column(Column::new(q.cloned(), f.name())))
            .collect();
        columns.push(
            when(op.eq(lit(OP_DELETE)), lit(-1i64))
                .otherwise(lit(1i64))?
                .alias(SIGN),
        );
        let input = LogicalPlan::Projection(Projection::try_new(columns, Arc::clone(&agg.input))?);
        let sign = || Expr::Column(Column::from_name(SIGN));
        let groups = agg.group_expr.len();
        let mut aggr_expr = Vec::new();
        let mut finish = Vec::new();
        for (i, e) in agg.aggr_expr.iter().enumerate() {
            let (f, over) = kind(e)?;
            let name = f.func.name().to_ascii_lowercase();
            if let Some(over) = over {
                // The group's values with signed counts; FILTER keeps a row's value.
                let x = f.params.args[0].clone();
                let x = match f.params.filter {
                    Some(keep) => when(*keep, x).end()?,
                    None => x,
                };
                let v = groups + aggr_expr.len();
                aggr_expr.push(
                    signed_multiset(over)
                        .call(vec![x, sign()])
                        .alias(format!("__flumen_m{i}")),
                );
                finish.push(Finish::Value(v));
                continue;
            }
            let x = f.params.args[0].clone();
            let filter = f.params.filter.map(|b| *b);
            let counted = match &x {
                Expr::Literal(v, _) if !v.is_null() => filter.clone(),
                _ => Some(match filter.clone() {
                    Some(f) => x.clone().is_not_null().and(f),
                    None => x.clone().is_not_null(),
                }),
            };
            let count = match counted {
                Some(c) => sum(when(c, sign()).otherwise(lit(0i64))?),
                None => sum(sign()),
            };
            let c = groups + aggr_expr.len();
            aggr_expr.push(count.alias(format!("__flumen_c{i}")));
            if name == "count" {
                finish.push(Finish::Count(c));
                continue;
            }
            let value = if name == "avg" {
                cast(x, DataType::Float64)
            } else {
                x
            };
            let signed = match filter {
                Some(f) => when(f, value * sign()).end()?,
                None => value * sign(),
            };
            let s = groups + aggr_expr.len();
            aggr_expr.push(sum(signed).alias(format!("__flumen_s{i}")));
            finish.push(if name == "avg" {
                Finish::Avg(s, c)
            } else {
                Finish::Sum(s, c)
            });
        }
        aggr_expr.push(sum(sign()).alias("__flumen_rows"));
        let aggregate = Aggregate::try_new(Arc::new(input), agg.group_expr.clone(), aggr_expr)?;
        Ok(Self {
            aggregate,
            finish,
            original: Arc::clone(&agg.schema),
        })
    }

    /// `Ok` when `agg` can run over a changelog, or the refusal naming what cannot.
    pub fn check(agg: &Aggregate) -> datafusion::error::Result<()> {
        for g in &agg.group_expr {
            if let Expr::ScalarFunction(f) = g
                && [
                    WINDOW_FUNCTION,
                    SESSION_WINDOW_FUNCTION,
                    CUMULATE_WINDOW_FUNCTION,
                ]
                .contains(&f.name())
            {
                return refuse(
                    "a windowed aggregate over a regular outer join (a changelog) is not \
                     supported yet: group by columns, or bound the join in time (its rows \
                     then never change)",
                );
            }
            if matches!(g, Expr::GroupingSet(_)) {
                return refuse(
                    "GROUPING SETS, CUBE and ROLLUP over a regular outer join (a changelog) \
                     are not supported",
                );
            }
        }
        for e in &agg.aggr_expr {
            kind(e)?;
        }
        Ok(())
    }

    /// Over `cols`, the signed aggregate's output columns: the group columns, each of
    /// the query's aggregates finished (its type and name), then the group's row count.
    pub fn finished(&self, cols: &[Expr]) -> datafusion::error::Result<Vec<Expr>> {
        let groups = self.aggregate.group_expr.len();
        let mut out: Vec<Expr> = cols[..groups].to_vec();
        for (i, f) in self.finish.iter().enumerate() {
            let field = self.original.field(groups + i);
            let none_left = |c: usize| cols[c].clone().eq(lit(0i64));
            let value = match f {
                Finish::Count(c) => {
                    datafusion::functions::expr_fn::coalesce(vec![cols[*c].clone(), lit(0i64)])
                }
                Finish::Sum(s, c) => {
                    when(none_left(*c), lit(ScalarValue::Null)).otherwise(cols[*s].clone())?
                }
                Finish::Avg(s, c) => when(none_left(*c), lit(ScalarValue::Null))
                    .otherwise(cols[*s].clone() / cast(cols[*c].clone(), DataType::Float64))?,
                Finish::Value(v) => cols[*v].clone(),
            };
            out.push(cast(value, field.data_type().clone()).alias(field.name()));
        }
        out.push(cols[cols.len() - 1].clone());
        Ok(out)
    }
}

/// The aggregate function of `e` and, for those that keep the group's values, the
/// multiset that computes it; or the refusal.
fn kind(e: &Expr) -> datafusion::error::Result<(AggregateFunction, Option<Over>)> {
    let Expr::AggregateFunction(f) = e.clone().unalias() else {
        return refuse(format!(
            "{e} over a regular outer join (a changelog) is not supported"
        ));
    };
    let name = f.func.name().to_ascii_lowercase();
    let over = match (name.as_str(), f.params.distinct) {
        ("min", _) => Some(Over::Min),
        ("max", _) => Some(Over::Max),
        ("count", true) => Some(Over::Count),
        ("sum", true) => Some(Over::Sum),
        ("avg", true) => Some(Over::Avg),
        ("count" | "sum" | "avg", false) => None,
        _ => {
            return refuse(format!(
                "{} over a regular outer join (a changelog) is not supported: the join \
                 retracts rows it emitted, and only COUNT, SUM, AVG, MIN and MAX (with \
                 or without DISTINCT) take a retracted row back out of a group. Bound \
                 the join in time (its rows then never change), or write an inner join",
                e.schema_name()
            ));
        }
    };
    if !f.params.order_by.is_empty() || f.params.args.len() != 1 {
        return refuse(format!(
            "{} over a regular outer join (a changelog) is not supported: an aggregate \
             of one argument without ORDER BY is",
            e.schema_name()
        ));
    }
    Ok((f, over))
}
