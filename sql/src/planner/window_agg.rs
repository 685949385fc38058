//! Windowed aggregates: `GROUP BY ..., window(ts, size [, slide]), ...` and
//! `session_window(ts, gap)` as a [`WindowAggregate`] or a [`SessionAggregate`] over
//! event time.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionState;
use datafusion::functions_aggregate::expr_fn::{count, max};
use datafusion::logical_expr::{Aggregate, Expr, lit};
use flumen_engine::ops::{
    EventTimeWindow, SessionAggregate, StreamOperator, WindowAggregate, WindowDisplay,
};
use flumen_engine::{Error, Result, StreamingContext, plan_err};

use super::OutputMode;
use crate::batch_time::BATCH_TIME_COLUMN;
use crate::window::{CUMULATE_WINDOW_FUNCTION, SESSION_WINDOW_FUNCTION};

/// The column a hopping window's rows are expanded into.
const HOP_COLUMN: &str = "__flumen_window";

/// Where a windowed aggregate's watermark comes from.
pub(super) struct EventTimeSource<'a> {
    pub streams: &'a HashSet<String>,
    /// `stream.column` -> watermark delay.
    pub watermarks: &'a HashMap<String, Duration>,
    /// The time column comes out of a stateful operator (a join's matches).
    pub over_operator: bool,
    /// That operator (graph index, column), when it carries a watermark for it.
    pub watermark_from: Option<(usize, usize)>,
}

/// The operator for `GROUP BY ..., window(ts, size), ...` (group key `k`): a
/// [`WindowAggregate`] or a [`SessionAggregate`] (which describes itself for EXPLAIN),
/// and its input.
pub(super) fn windowed(
    ctx: &StreamingContext,
    state: &SessionState,
    agg: &Aggregate,
    k: usize,
    time: &EventTimeSource<'_>,
    mode: OutputMode,
) -> Result<(Box<dyn StreamOperator>, DataFrame)> {
    let spec = WindowSpec::parse(ctx, agg, k)?;
    let ts = spec.written_time.clone();
    let delay = watermark_delay(&ts, spec.over_batch_time, time, mode)?;
    let mut aggr = agg.aggr_expr.clone();
    aggr.push(max(ts.clone()).alias("__flumen_max_event_time"));
    aggr.push(count(lit(1)).alias("__flumen_rows"));
    let input = DataFrame::new(state.clone(), agg.input.as_ref().clone());
    let keys = window_keys(agg, k, &spec, input)?;
    let window = EventTimeWindow {
        key_index: k,
        delay,
        emit_closed_only: mode == OutputMode::Append,
        evict_closed: mode != OutputMode::Complete && delay.is_some(),
        watermark_is_batch_time: spec.over_batch_time,
        keyed_by_end: keys.keyed_by_end,
        watermark_from: time.watermark_from,
    };
    let changed_only = mode == OutputMode::Update;
    let display = WindowDisplay {
        kind: spec.kind_name().into(),
        group_by: super::join_exprs(&agg.group_expr),
        aggregates: super::join_exprs(&agg.aggr_expr),
        time: ts.to_string(),
    };
    let op: Box<dyn StreamOperator> = if spec.is_session() {
        Box::new(
            SessionAggregate::try_new(&keys.input, keys.group_expr, aggr, window)?
                .with_changed_only(changed_only)
                .with_state_config(ctx.state_config().clone())
                .with_positional_names()
                .with_display(display),
        )
    } else {
        Box::new(
            WindowAggregate::try_new(&keys.input, keys.group_expr, aggr, window)?
                .with_changed_only(changed_only)
                .with_state_config(ctx.state_config().clone())
                .with_positional_names()
                .with_display(display),
        )
    };
    Ok((op, keys.input))
}

/// A window as the planner reads it. Every way to write one — `window(ts, size [,
/// slide])`, `session_window(ts, gap)`, the `TUMBLE` / `HOP` / `SESSION` table
/// functions and ksqlDB's `WINDOW` clause (the last two rewritten onto those calls on
/// the syntax tree) — is parsed here, once.
struct WindowSpec {
    /// The time column as written (its watermark is looked up by it).
    written_time: Expr,
    /// The time rows are assigned to windows by: over `_batch_time`, 1 ms before it.
    time: Expr,
    over_batch_time: bool,
    kind: WindowKind,
}

enum WindowKind {
    Tumbling {
        size: Expr,
        size_ms: i64,
    },
    Hopping {
        size: Expr,
        slide: Expr,
        size_ms: i64,
    },
    Session {
        gap: Expr,
    },
    /// Flink's `CUMULATE`: windows of `size` aligned to it, growing by `step`.
    Cumulating {
        step: Expr,
        size: Expr,
    },
}

impl WindowSpec {
    /// The window of group key `k`, its arguments checked.
    fn parse(ctx: &StreamingContext, agg: &Aggregate, k: usize) -> Result<WindowSpec> {
        let Expr::ScalarFunction(f) = &agg.group_expr[k] else {
            return plan_err!("window() group key expected");
        };
        let sessions = f.name() == SESSION_WINDOW_FUNCTION;
        let cumulating = f.name() == CUMULATE_WINDOW_FUNCTION;
        if cumulating && f.args.len() != 3 {
            return plan_err!(
                "cumulate_window(ts, step, size) takes 3 arguments, got {}",
                f.args.len()
            );
        }
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
        let written_time = f.args[0].clone();
        let over_batch_time = matches!(&written_time, Expr::Column(c) if c.name == BATCH_TIME_COLUMN)
            || super::classify::is_batch_time(&agg.input, &written_time);
        let mut time = written_time.clone();
        if over_batch_time {
            check_batch_multiples(ctx, &f.args[1..])?;
            // Spark's windows over batch time: the window ending at T holds the batches
            // in (T - length, T]. Assigning each batch's rows at T - 1 ms to [start, end)
            // windows gives exactly that; the watermark is the batch time.
            time = time
                - lit(datafusion::scalar::ScalarValue::new_interval_mdn(
                    0, 0, 1_000_000,
                ));
        }
        let kind = if sessions {
            WindowKind::Session {
                gap: f.args[1].clone(),
            }
        } else if cumulating {
            crate::window::check_cumulate(millis(&f.args[1])?, millis(&f.args[2])?)?;
            WindowKind::Cumulating {
                step: f.args[1].clone(),
                size: f.args[2].clone(),
            }
        } else if f.args.len() == 3 && f.args[1] != f.args[2] {
            let (size_ms, slide_ms) = (millis(&f.args[1])?, millis(&f.args[2])?);
            crate::window::check_windows_per_row(size_ms, slide_ms)?;
            WindowKind::Hopping {
                size: f.args[1].clone(),
                slide: f.args[2].clone(),
                size_ms,
            }
        } else {
            WindowKind::Tumbling {
                size: f.args[1].clone(),
                size_ms: millis(&f.args[1])?,
            }
        };
        Ok(WindowSpec {
            written_time,
            time,
            over_batch_time,
            kind,
        })
    }

    fn is_session(&self) -> bool {
        matches!(self.kind, WindowKind::Session { .. })
    }

    /// `tumbling`, `hopping` or `session`, for EXPLAIN.
    fn kind_name(&self) -> &'static str {
        match self.kind {
            WindowKind::Tumbling { .. } => "tumbling",
            WindowKind::Hopping { .. } => "hopping",
            WindowKind::Session { .. } => "session",
            WindowKind::Cumulating { .. } => "cumulating",
        }
    }
}

/// A window size as milliseconds; sizes must be `INTERVAL` literals.
fn millis(size: &Expr) -> Result<i64> {
    match size {
        Expr::Literal(v, _) => crate::window::interval_millis(v).map_err(Error::DataFusion),
        other => plan_err!("window sizes must be INTERVAL literals, got {other}"),
    }
}

/// Windows over batch time: their length and slide must be multiples of the batch
/// interval.
fn check_batch_multiples(ctx: &StreamingContext, sizes: &[Expr]) -> Result<()> {
    let interval = ctx.batch_interval();
    let sizes = sizes
        .iter()
        .map(|a| millis(a).map(|ms| Duration::from_millis(ms as u64)))
        .collect::<Result<Vec<_>>>()?;
    flumen_engine::time::check_multiple("window length", sizes[0], "batch interval", interval)?;
    if let Some(slide) = sizes.get(1) {
        flumen_engine::time::check_multiple("window slide", *slide, "batch interval", interval)?;
    }
    Ok(())
}

/// The watermark delay of time column `ts`. Watermarks are keyed `stream.column`; an
/// alias in the query falls back to the one stream read here that declares a
/// watermark on a column of that name. Rows that come out of a stateful operator (a
/// join's matches) carry one only when that operator does. Append mode needs one.
fn watermark_delay(
    ts: &Expr,
    over_batch_time: bool,
    time: &EventTimeSource<'_>,
    mode: OutputMode,
) -> Result<Option<Duration>> {
    let delay = match ts {
        _ if over_batch_time => Some(Duration::ZERO),
        // A join's matches: the join carries its inputs' watermarks to the column.
        _ if time.over_operator => time.watermark_from.map(|_| Duration::ZERO),
        Expr::Column(c) => c
            .relation
            .as_ref()
            .and_then(|r| time.watermarks.get(&format!("{}.{}", r.table(), c.name)))
            .copied()
            .or_else(|| {
                crate::catalog::declared_watermark(
                    time.watermarks,
                    time.streams.iter().map(String::as_str),
                    &c.name,
                )
            }),
        _ => None,
    };
    if mode == OutputMode::Append && delay.is_none() {
        if time.over_operator {
            return plan_err!(
                "output mode append cannot close windows on {ts}: it comes out of a stream join \
                 or another stateful operator that carries no watermark for it (a join carries \
                 one to a side's time column when both sides declare a watermark and its \
                 condition bounds the other side's time from that side: for the right side's \
                 column, left.ts <= right.ts + INTERVAL ...); use SET output_mode = 'update' or \
                 'complete'"
            );
        }
        return plan_err!(
            "output mode append needs a watermark on {ts} to know when a window is complete; \
             declare WATERMARK FOR {ts} AS {ts} - INTERVAL '<n>' SECOND on the stream, or use \
             SET output_mode = 'update'"
        );
    }
    Ok(delay)
}

/// The group keys a windowed aggregate runs with, over which input.
struct WindowKeys {
    group_expr: Vec<Expr>,
    input: DataFrame,
    keyed_by_end: Option<Duration>,
}

/// Tumbling and hopping windows are grouped by their end (a timestamp hashes faster
/// than a `{start, end}` struct; the operator rebuilds the struct); a hopping window's
/// rows are first expanded into one per window. Sessions keep their `{start, end}`.
fn window_keys(
    agg: &Aggregate,
    k: usize,
    spec: &WindowSpec,
    input: DataFrame,
) -> Result<WindowKeys> {
    let mut group_expr = agg.group_expr.clone();
    let key_name = agg.group_expr[k].schema_name().to_string();
    let time = spec.time.clone();
    match &spec.kind {
        WindowKind::Session { gap } => {
            if spec.over_batch_time {
                group_expr[k] = crate::window::session_window_udf()
                    .call(vec![time, gap.clone()])
                    .alias(key_name);
            }
            Ok(WindowKeys {
                group_expr,
                input,
                keyed_by_end: None,
            })
        }
        WindowKind::Cumulating { step, size } => {
            // Cumulating windows differ in length, so they are keyed by their
            // `{start, end}` struct, as sessions are.
            let windows =
                crate::window::cumulate_windows_udf().call(vec![time, step.clone(), size.clone()]);
            let input = input
                .with_column(HOP_COLUMN, windows)?
                .unnest_columns(&[HOP_COLUMN])?;
            group_expr[k] = datafusion::prelude::col(HOP_COLUMN).alias(key_name);
            Ok(WindowKeys {
                group_expr,
                input,
                keyed_by_end: None,
            })
        }
        WindowKind::Hopping {
            size,
            slide,
            size_ms,
        } => {
            let hop =
                crate::window::hop_window_ends_udf().call(vec![time, size.clone(), slide.clone()]);
            let input = input
                .with_column(HOP_COLUMN, hop)?
                .unnest_columns(&[HOP_COLUMN])?;
            group_expr[k] = datafusion::prelude::col(HOP_COLUMN).alias(key_name);
            Ok(WindowKeys {
                group_expr,
                input,
                keyed_by_end: Some(Duration::from_millis(*size_ms as u64)),
            })
        }
        WindowKind::Tumbling { size, size_ms } => {
            group_expr[k] = crate::window::window_end_udf()
                .call(vec![time, size.clone()])
                .alias(key_name);
            Ok(WindowKeys {
                group_expr,
                input,
                keyed_by_end: Some(Duration::from_millis(*size_ms as u64)),
            })
        }
    }
}
