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

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, StructArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::DFSchema;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{EmitTo, Expr, GroupsAccumulator, LogicalPlan, LogicalPlanBuilder};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};

use super::window_state::{WindowState, new_accumulators};
use super::{OperatorContext, StreamOperator};

/// The `{start, end}` struct of timestamps (ms) a window column holds.
pub fn window_struct_type() -> DataType {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ]))
}

/// `{end - size, end}` structs for window ends (ms).
fn window_structs_from_ends(ends: &ArrayRef, size: std::time::Duration) -> Result<ArrayRef> {
    let DataType::Struct(fields) = window_struct_type() else {
        return internal_err!("window type is not a struct");
    };
    let ends = window_ends(ends)?;
    let size = size.as_millis() as i64;
    let starts: TimestampMillisecondArray = ends.unary(|e| e - size);
    let nulls = ends.nulls().cloned();
    Ok(Arc::new(StructArray::try_new(
        fields,
        vec![Arc::new(starts), Arc::new(ends)],
        nulls,
    )?))
}

/// Window ends as ms: a window column is either its end (tumbling and hopping windows
/// are keyed by it) or a `{start, end}` struct (sessions).
fn window_ends(column: &ArrayRef) -> Result<TimestampMillisecondArray> {
    if let DataType::Timestamp(_, _) = column.data_type() {
        let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
        return match ms.as_any().downcast_ref::<TimestampMillisecondArray>() {
            Some(e) => Ok(e.clone()),
            None => internal_err!("window end is not a timestamp"),
        };
    }
    let Some(s) = column.as_any().downcast_ref::<StructArray>() else {
        return internal_err!("window key is not a struct: {}", column.data_type());
    };
    let end = cast(
        s.column(1),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    match end.as_any().downcast_ref::<TimestampMillisecondArray>() {
        Some(e) => Ok(e.clone()),
        None => internal_err!("window end is not a timestamp"),
    }
}

/// The largest value of a timestamp column, in ms.
fn max_of(column: &ArrayRef) -> Result<Option<i64>> {
    let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    match ms.as_any().downcast_ref::<TimestampMillisecondArray>() {
        Some(a) => Ok(datafusion::arrow::compute::max(a)),
        None => internal_err!("event time is not a timestamp"),
    }
}
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
    window: Option<EventTimeWindow>,
    /// Event-time watermark (ms), once rows have been seen.
    watermark: Option<i64>,
    late_rows_last_batch: u64,
    /// Append-mode windows whose state the watermark evicts: kept per window in
    /// persistent tables instead of `state`.
    /// (DataFusion's tables are `Send` but not `Sync`; the lock is only ever taken
    /// through `&mut self`, uncontended, or by `state_rows`.)
    windows: Option<Mutex<WindowState>>,
}

/// Event-time windows in a running aggregate: the group key at `key_index` is a
/// `{start, end}` struct; the last two aggregates are the hidden `max(event time)` and
/// `count(*)` the operator needs for the watermark and for counting late rows.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeWindow {
    pub key_index: usize,
    /// Watermark = max event time seen - `delay`; `None`: no watermark (no window
    /// ever closes, nothing is late).
    pub delay: Option<std::time::Duration>,
    /// Emit a window only once the watermark closed it (append); otherwise as the
    /// output mode says.
    pub emit_closed_only: bool,
    /// Drop the state of windows the watermark closed.
    pub evict_closed: bool,
    /// Windows over batch time: the watermark is the batch time itself (every row of
    /// batches up to it has arrived), not derived from the rows.
    pub watermark_is_batch_time: bool,
    /// Session windows: each row arrives as its own `{ts, ts + gap}`; before merging,
    /// overlapping sessions of the same key are coalesced into one.
    pub sessions: bool,
    /// The window key is the window's end (a timestamp) and the windows are this
    /// long; the output shows the `{start, end}` struct. `None`: the key is the struct.
    pub keyed_by_end: Option<std::time::Duration>,
    /// The event time comes out of another operator (graph index, output column) —
    /// a stream join's matches: the watermark is that column's output watermark
    /// ([`StreamOperator::output_watermark`]) instead of max event time - `delay`.
    pub watermark_from: Option<(usize, usize)>,
}

/// The `{start, end}` session column of `batch`.
fn session_struct(batch: &RecordBatch, index: usize) -> Result<&StructArray> {
    match batch.column(index).as_any().downcast_ref::<StructArray>() {
        Some(s) => Ok(s),
        None => internal_err!("session key is not a struct"),
    }
}

/// Rewrites the session column (`{start, end}` structs at `session_index`) of
/// `batches` so that, per value of the other group keys, overlapping sessions become
/// their union. The state merge then combines their aggregates.
fn coalesce_sessions(batches: &mut [RecordBatch], session_index: usize, nk: usize) -> Result<()> {
    let rows_total: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows_total == 0 {
        return Ok(());
    }
    // Other group keys of every row, in the row format, and each row's session.
    let other: Vec<usize> = (0..nk).filter(|i| *i != session_index).collect();
    let fields: Vec<SortField> = other
        .iter()
        .map(|i| SortField::new(batches[0].schema().field(*i).data_type().clone()))
        .collect();
    let converter = RowConverter::new(fields)?;
    let mut keys = converter.empty_rows(rows_total, 64);
    let mut starts = Vec::with_capacity(rows_total);
    let mut ends = Vec::with_capacity(rows_total);
    for b in batches.iter() {
        let cols: Vec<ArrayRef> = other.iter().map(|i| Arc::clone(b.column(*i))).collect();
        converter.append(&mut keys, &cols)?;
        let s = session_struct(b, session_index)?;
        for (col, out) in [(0, &mut starts), (1, &mut ends)] {
            let ms = cast(
                s.column(col),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?;
            let Some(ms) = ms.as_any().downcast_ref::<TimestampMillisecondArray>() else {
                return internal_err!("session bounds are not timestamps");
            };
            out.extend(ms.iter().map(|v| v.unwrap_or(i64::MIN)));
        }
    }
    let mut order: Vec<usize> = (0..rows_total).collect();
    order.sort_by(|a, b| {
        keys.row(*a)
            .cmp(&keys.row(*b))
            .then(starts[*a].cmp(&starts[*b]))
    });
    // One pass: runs of overlapping sessions of one key share (min start, max end).
    let mut merged_start = vec![0i64; rows_total];
    let mut merged_end = vec![0i64; rows_total];
    let mut run_begin = 0;
    while run_begin < order.len() {
        let first = order[run_begin];
        let (start, mut end) = (starts[first], ends[first]);
        let mut run_end = run_begin + 1;
        while run_end < order.len() {
            let r = order[run_end];
            if keys.row(r) != keys.row(first) || starts[r] > end {
                break;
            }
            end = end.max(ends[r]);
            run_end += 1;
        }
        for i in &order[run_begin..run_end] {
            merged_start[*i] = start;
            merged_end[*i] = end;
        }
        run_begin = run_end;
    }
    let mut offset = 0;
    for b in batches.iter_mut() {
        let n = b.num_rows();
        let s = session_struct(b, session_index)?;
        let DataType::Struct(fields) = s.data_type().clone() else {
            return internal_err!("session key is not a struct");
        };
        let start = cast(
            &(Arc::new(TimestampMillisecondArray::from(
                merged_start[offset..offset + n].to_vec(),
            )) as ArrayRef),
            fields[0].data_type(),
        )?;
        let end = cast(
            &(Arc::new(TimestampMillisecondArray::from(
                merged_end[offset..offset + n].to_vec(),
            )) as ArrayRef),
            fields[1].data_type(),
        )?;
        let rebuilt = StructArray::try_new(fields, vec![start, end], s.nulls().cloned())?;
        let mut cols = b.columns().to_vec();
        cols[session_index] = Arc::new(rebuilt);
        *b = RecordBatch::try_new(b.schema(), cols)?;
        offset += n;
    }
    Ok(())
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
            window: None,
            watermark: None,
            late_rows_last_batch: 0,
            windows: None,
        })
    }

    /// Make this a windowed aggregate over event time. The caller appended
    /// `max(event time)` and `count(*)` as the last two aggregates; they are hidden
    /// from the output.
    pub fn with_event_time_window(mut self, window: EventTimeWindow) -> Self {
        let fields = self.output_schema.fields();
        let visible = fields.len().saturating_sub(2);
        let mut fields = fields[..visible].to_vec();
        if window.keyed_by_end.is_some() && window.key_index < fields.len() {
            let f = &fields[window.key_index];
            fields[window.key_index] =
                Arc::new(Field::new(f.name(), window_struct_type(), f.is_nullable()));
        }
        self.output_schema = Arc::new(Schema::new(fields));
        self.window = Some(window);
        self
    }

    /// Name the output columns `c0, c1, ...`: a SQL planner that maps them back by
    /// position avoids clashes between these names and the aggregate's own.
    pub fn with_positional_names(mut self) -> Self {
        self.output_schema = super::positional_schema(&self.output_schema);
        self
    }

    /// The current watermark (ms since the epoch), if any row has been seen.
    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Emit only the groups each batch changed (the `update` output mode); by
    /// default every group is emitted (`complete`, Spark's `updateStateByKey`).
    pub fn with_changed_only(mut self, changed_only: bool) -> Self {
        self.changed_only = changed_only;
        self
    }

    fn windows_mut(&mut self) -> Option<&mut WindowState> {
        self.windows
            .as_mut()
            .map(|w| w.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// The watermark after a batch whose rows reached `max_event_time`.
    fn advance_watermark(
        &mut self,
        ctx: &OperatorContext,
        w: &EventTimeWindow,
        max_event_time: Option<i64>,
    ) {
        if w.watermark_is_batch_time {
            self.watermark = Some(ctx.batch_time.as_millis());
        } else if w.watermark_from.is_some() {
            if let Some(candidate) = ctx.input_watermark {
                self.watermark = Some(self.watermark.map_or(candidate, |wm| wm.max(candidate)));
            }
        } else if let (Some(m), Some(delay)) = (max_event_time, w.delay) {
            let candidate = m - delay.as_millis() as i64;
            self.watermark = Some(self.watermark.map_or(candidate, |wm| wm.max(candidate)));
        }
    }

    fn planned(&self) -> Result<&Planned> {
        match &self.planned {
            Some(p) => Ok(p),
            None => internal_err!("RunningAggregateExec used before plan_input"),
        }
    }

    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        new_accumulators(&self.planned()?.aggregates)
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

    fn describe(&self) -> String {
        let list = |e: &[Expr]| {
            e.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "RunningAggregateExec group by [{}] aggregates [{}]{}{}",
            list(&self.group_exprs),
            list(&self.aggr_exprs),
            match &self.window {
                Some(w) => format!(" window {w:?}"),
                None => String::new(),
            },
            if self.changed_only {
                " changed only"
            } else {
                ""
            }
        )
    }

    fn emits(&self) -> super::Emits {
        match self.window {
            Some(w) if w.emit_closed_only => super::Emits::Appends,
            _ if self.changed_only => super::Emits::Changes {
                keys: (0..self.group_exprs.len()).collect(),
            },
            _ => super::Emits::WholeResult,
        }
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
        if let Some(w) = self.window
            && w.emit_closed_only
            && w.evict_closed
            && !w.sessions
        {
            // The hidden max(event time) and count(*) are read from each batch's
            // partials; the windows need not store them.
            let stored = aggregates.len() - 2;
            self.windows = Some(Mutex::new(WindowState::try_new(
                &partial_schema,
                nk,
                w.key_index,
                aggregates[..stored].to_vec(),
                state_widths[..stored].to_vec(),
            )?));
        }
        self.planned = Some(Planned {
            aggregates,
            state_widths,
            group_schema,
            partial_schema,
        });
        Ok(Arc::new(partial))
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let previous = self.state.take();
        let mut input = input;
        self.late_rows_last_batch = 0;
        let mut max_event_time = None;
        if let Some(w) = self.window {
            let planned = self.planned()?;
            let nk = planned.group_schema.fields().len();
            let widths = &planned.state_widths;
            let n = widths.len();
            let max_col = nk + widths[..n - 2].iter().sum::<usize>();
            let count_col = max_col + widths[n - 2];
            let mut kept = Vec::with_capacity(input.len());
            for batch in input {
                if let Some(m) = max_of(batch.column(max_col))? {
                    max_event_time = Some(max_event_time.map_or(m, |x: i64| x.max(m)));
                }
                match self.watermark {
                    Some(wm) => {
                        let ends = window_ends(batch.column(w.key_index))?;
                        let late: BooleanArray = ends
                            .iter()
                            .map(|e| Some(e.is_some_and(|e| e <= wm)))
                            .collect();
                        let counts = batch
                            .column(count_col)
                            .as_any()
                            .downcast_ref::<Int64Array>();
                        if let Some(counts) = counts {
                            for (i, l) in late.values().iter().enumerate() {
                                if l {
                                    self.late_rows_last_batch += counts.value(i) as u64;
                                }
                            }
                        }
                        kept.push(filter_record_batch(&batch, &not(&late)?)?);
                    }
                    None => kept.push(batch),
                }
            }
            input = kept;
        }
        let window = self.window;
        if let (Some(windows), Some(w)) = (self.windows_mut(), window) {
            for batch in &input {
                windows.merge(batch, &window_ends(batch.column(w.key_index))?)?;
            }
            self.advance_watermark(ctx, &w, max_event_time);
            let mut out = Vec::new();
            if let Some(wm) = self.watermark
                && let Some(windows) = self.windows_mut()
            {
                for mut columns in windows.close(wm)? {
                    if let Some(size) = w.keyed_by_end {
                        columns[w.key_index] =
                            window_structs_from_ends(&columns[w.key_index], size)?;
                    }
                    out.push(RecordBatch::try_new(
                        Arc::clone(&self.output_schema),
                        columns,
                    )?);
                }
            }
            if out.is_empty() {
                out.push(RecordBatch::new_empty(Arc::clone(&self.output_schema)));
            }
            return Ok(Some(out));
        }
        let (previous, input) = match self.window {
            Some(w) if w.sessions => {
                let nk = self.planned()?.group_schema.fields().len();
                let had_previous = previous.is_some();
                let mut all: Vec<RecordBatch> = previous.into_iter().chain(input).collect();
                coalesce_sessions(&mut all, w.key_index, nk)?;
                if had_previous {
                    let rest = all.split_off(1);
                    (all.pop(), rest)
                } else {
                    (None, all)
                }
            }
            _ => (previous, input),
        };
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
        changed.resize(groups, false);
        let Some(w) = self.window else {
            let mut out = RecordBatch::try_new(Arc::clone(&self.output_schema), out_cols)?;
            if self.changed_only {
                out = filter_record_batch(&out, &BooleanArray::from(changed))?;
            }
            self.state = Some(state);
            return Ok(Some(vec![out]));
        };
        self.advance_watermark(ctx, &w, max_event_time);
        out_cols.truncate(self.output_schema.fields().len());
        if let Some(size) = w.keyed_by_end {
            out_cols[w.key_index] = window_structs_from_ends(&out_cols[w.key_index], size)?;
        }
        let out = RecordBatch::try_new(Arc::clone(&self.output_schema), out_cols)?;
        let ends = window_ends(state.column(w.key_index))?;
        let closed: BooleanArray = ends
            .iter()
            .map(|e| Some(matches!((e, self.watermark), (Some(e), Some(wm)) if e <= wm)))
            .collect();
        let emit = if w.emit_closed_only {
            closed.clone()
        } else if self.changed_only {
            BooleanArray::from(changed)
        } else {
            BooleanArray::from(vec![true; groups])
        };
        let out = filter_record_batch(&out, &emit)?;
        self.state = Some(if w.evict_closed {
            filter_record_batch(&state, &not(&closed)?)?
        } else {
            state
        });
        Ok(Some(vec![out]))
    }

    fn state_rows(&self) -> usize {
        match &self.windows {
            Some(w) => w.lock().unwrap_or_else(|e| e.into_inner()).rows(),
            None => self.state.as_ref().map_or(0, |s| s.num_rows()),
        }
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let batches = match self.windows_mut() {
            Some(w) => w.snapshot()?,
            None => self.state.iter().cloned().collect(),
        };
        Ok(crate::checkpoint::OperatorState {
            batches,
            meta: serde_json::json!({ "watermark": self.watermark }),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.watermark = state.meta["watermark"].as_i64();
        let window = self.window;
        if let (Some(windows), Some(w)) = (self.windows_mut(), window) {
            // A restore replaces the state (a restart after a failure restores again).
            windows.clear();
            for batch in &state.batches {
                if batch.schema().fields() != windows.snapshot_schema().fields() {
                    return Err(crate::error::Error::Checkpoint(format!(
                        "the window state in the checkpoint has {} columns, this query keeps {}: it was written by another version of the query",
                        batch.num_columns(),
                        windows.snapshot_schema().fields().len()
                    )));
                }
                windows.merge(batch, &window_ends(batch.column(w.key_index))?)?;
            }
            return Ok(());
        }
        self.state = match state.batches.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            more => Some(datafusion::arrow::compute::concat_batches(
                &more[0].schema(),
                more,
            )?),
        };
        self.watermark = state.meta["watermark"].as_i64();
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        self.late_rows_last_batch
    }

    fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    fn watermark_source(&self) -> Option<(usize, usize)> {
        self.window.and_then(|w| w.watermark_from)
    }

    fn state_bytes(&self) -> usize {
        match &self.windows {
            Some(w) => w.lock().unwrap_or_else(|e| e.into_inner()).bytes(),
            None => self.state.as_ref().map_or(0, |s| s.get_array_memory_size()),
        }
    }
}
