//! What the windowed and session aggregates share: the window column's values, the
//! watermark, rows that arrive late, and which windows a watermark closed.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, StructArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use super::partial::{Folded, PartialAggregate};
use crate::ops::OperatorContext;
use crate::{Result, internal_err};

/// Event-time windows in an aggregate: the group key at `key_index` is the window;
/// the last two aggregates are the hidden `max(event time)` and `count(*)` the
/// operator needs for the watermark and for counting late rows.
#[derive(Debug, Clone, Copy)]
pub struct EventTimeWindow {
    pub key_index: usize,
    /// Watermark = max event time seen - `delay`; `None`: no watermark (no window
    /// ever closes, nothing is late).
    pub delay: Option<Duration>,
    /// Emit a window only once the watermark closed it (append); otherwise as the
    /// output mode says.
    pub emit_closed_only: bool,
    /// Drop the state of windows the watermark closed.
    pub evict_closed: bool,
    /// Windows over batch time: the watermark is the batch time itself (every row of
    /// batches up to it has arrived), not derived from the rows.
    pub watermark_is_batch_time: bool,
    /// The window key is the window's end (a timestamp) and the windows are this
    /// long; the output shows the `{start, end}` struct. `None`: the key is the struct.
    pub keyed_by_end: Option<Duration>,
    /// The event time comes out of another operator (graph index, output column) —
    /// a stream join's matches: the watermark is that column's output watermark
    /// ([`crate::ops::StreamOperator::output_watermark`]) instead of max event time -
    /// `delay`.
    pub watermark_from: Option<(usize, usize)>,
}

impl EventTimeWindow {
    /// The window as checkpoints fingerprint it (the layout of the one operator that
    /// ran all three kinds before, so their checkpoints still resume).
    pub(super) fn fingerprint(&self, sessions: bool) -> String {
        format!(
            "EventTimeWindow {{ key_index: {:?}, delay: {:?}, emit_closed_only: {:?}, evict_closed: {:?}, watermark_is_batch_time: {:?}, sessions: {sessions:?}, keyed_by_end: {:?}, watermark_from: {:?} }}",
            self.key_index,
            self.delay,
            self.emit_closed_only,
            self.evict_closed,
            self.watermark_is_batch_time,
            self.keyed_by_end,
            self.watermark_from
        )
    }

    /// The output schema of an aggregate over this window: the hidden aggregates
    /// dropped, a window keyed by its end shown as `{start, end}`.
    pub(super) fn output_schema(&self, aggregate: &SchemaRef) -> SchemaRef {
        let fields = aggregate.fields();
        let visible = fields.len().saturating_sub(2);
        let mut fields = fields[..visible].to_vec();
        if self.keyed_by_end.is_some() && self.key_index < fields.len() {
            let f = &fields[self.key_index];
            fields[self.key_index] =
                Arc::new(Field::new(f.name(), window_struct_type(), f.is_nullable()));
        }
        Arc::new(Schema::new(fields))
    }
}

/// How EXPLAIN shows a windowed aggregate: the window's kind and the query's own
/// expressions (the operator runs rewritten ones: the window's end, hidden aggregates).
#[derive(Debug, Clone, Default)]
pub struct WindowDisplay {
    /// `tumbling`, `hopping` or `session`.
    pub kind: String,
    pub group_by: String,
    pub aggregates: String,
    /// The event-time column, as the query names it.
    pub time: String,
}

/// The EXPLAIN line of a windowed aggregate: what it computes and what bounds its
/// state (the watermark, or nothing: a warning).
pub(super) fn explain(
    operator: &str,
    d: &WindowDisplay,
    w: &EventTimeWindow,
    changed_only: bool,
) -> String {
    let mode = if w.emit_closed_only {
        "append"
    } else if changed_only {
        "update"
    } else {
        "complete"
    };
    let ts = &d.time;
    let through_join = w.watermark_from.is_some();
    if w.watermark_is_batch_time {
        let bound = if mode == "complete" {
            "the batch time is the watermark; complete mode keeps every window (state grows without bound)"
        } else {
            "the batch time is the watermark: a window's state is dropped once the batches pass its end"
        };
        return format!(
            "{operator} ({}, over batch time): group by [{}], aggregates [{}], output {mode}; {bound}",
            d.kind, d.group_by, d.aggregates
        );
    }
    let bound = match w.delay {
        Some(_) if through_join && mode == "complete" => format!(
            "watermark on {ts} carried through the join; complete mode keeps every window (state grows without bound)"
        ),
        Some(_) if through_join => format!(
            "watermark on {ts} carried through the join (no future match is older); a window's state is dropped once the watermark passes its end, rows older than the watermark are dropped and counted"
        ),
        Some(delay) if mode == "complete" => format!(
            "watermark {ts} - {}; complete mode keeps every window (state grows without bound)",
            crate::time::format_duration(delay)
        ),
        Some(delay) => format!(
            "watermark {ts} - {}; a window's state is dropped once the watermark passes its end, rows older than the watermark are dropped and counted",
            crate::time::format_duration(delay)
        ),
        None => {
            format!("WARNING: no watermark on {ts}: windows never close, state grows without bound")
        }
    };
    format!(
        "{operator} ({}, over event time): group by [{}], aggregates [{}], output {mode}; {bound}",
        d.kind, d.group_by, d.aggregates
    )
}

/// The `{start, end}` struct of timestamps (ms) a window column holds.
pub fn window_struct_type() -> DataType {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    DataType::Struct(Fields::from(vec![
        Field::new("start", ts.clone(), true),
        Field::new("end", ts, true),
    ]))
}

/// `{end - size, end}` structs for window ends (ms).
pub(super) fn window_structs_from_ends(ends: &ArrayRef, size: Duration) -> Result<ArrayRef> {
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
/// Keys + every aggregate's value (hidden ones too) as an output batch of `schema`:
/// the hidden aggregates dropped, windows keyed by their end given their
/// `{start, end}`.
pub(super) fn output_batch(
    window: &EventTimeWindow,
    schema: &SchemaRef,
    mut columns: Vec<ArrayRef>,
) -> Result<RecordBatch> {
    columns.truncate(schema.fields().len());
    if let Some(size) = window.keyed_by_end {
        columns[window.key_index] = window_structs_from_ends(&columns[window.key_index], size)?;
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

pub(crate) fn window_ends(column: &ArrayRef) -> Result<TimestampMillisecondArray> {
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
pub(crate) fn max_of(column: &ArrayRef) -> Result<Option<i64>> {
    let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    match ms.as_any().downcast_ref::<TimestampMillisecondArray>() {
        Some(a) => Ok(datafusion::arrow::compute::max(a)),
        None => internal_err!("event time is not a timestamp"),
    }
}

/// An aggregate's event time: its window, its watermark, the rows it dropped as late.
#[derive(Debug)]
pub(super) struct EventTime {
    pub window: EventTimeWindow,
    /// Event-time watermark (ms), once rows have been seen.
    pub watermark: Option<i64>,
    pub late_rows_last_batch: u64,
}

impl EventTime {
    pub fn new(window: EventTimeWindow) -> Self {
        Self {
            window,
            watermark: None,
            late_rows_last_batch: 0,
        }
    }

    /// Drops the partial rows of windows the watermark already closed (counting the
    /// rows they stand for); the batch's max event time.
    pub fn drop_late(
        &mut self,
        agg: &PartialAggregate,
        input: Vec<RecordBatch>,
    ) -> Result<(Vec<RecordBatch>, Option<i64>)> {
        self.late_rows_last_batch = 0;
        let planned = agg.planned()?;
        let nk = planned.group_schema.fields().len();
        let widths = &planned.state_widths;
        let n = widths.len();
        let max_col = nk + widths[..n - 2].iter().sum::<usize>();
        let count_col = max_col + widths[n - 2];
        let mut max_event_time = None;
        let mut kept = Vec::with_capacity(input.len());
        for batch in input {
            if let Some(m) = max_of(batch.column(max_col))? {
                max_event_time = Some(max_event_time.map_or(m, |x: i64| x.max(m)));
            }
            let Some(wm) = self.watermark else {
                kept.push(batch);
                continue;
            };
            let ends = window_ends(batch.column(self.window.key_index))?;
            let late: BooleanArray = ends
                .iter()
                .map(|e| Some(e.is_some_and(|e| e <= wm)))
                .collect();
            if let Some(counts) = batch
                .column(count_col)
                .as_any()
                .downcast_ref::<Int64Array>()
            {
                for (i, l) in late.values().iter().enumerate() {
                    if l {
                        self.late_rows_last_batch += counts.value(i) as u64;
                    }
                }
            }
            kept.push(filter_record_batch(&batch, &not(&late)?)?);
        }
        Ok((kept, max_event_time))
    }

    /// The watermark after a batch whose rows reached `max_event_time`.
    pub fn advance(&mut self, ctx: &OperatorContext, max_event_time: Option<i64>) {
        if ctx.end_of_input {
            self.watermark = Some(crate::ops::END_OF_INPUT_WATERMARK);
            return;
        }
        let w = &self.window;
        let candidate = if w.watermark_is_batch_time {
            self.watermark = Some(ctx.batch_time.as_millis());
            return;
        } else if w.watermark_from.is_some() {
            ctx.input_watermark
        } else {
            match (max_event_time, w.delay) {
                (Some(m), Some(delay)) => Some(m - delay.as_millis() as i64),
                _ => None,
            }
        };
        if let Some(c) = candidate {
            self.watermark = Some(self.watermark.map_or(c, |wm| wm.max(c)));
        }
    }

    /// What a merge of every group emits — the windows the watermark closed (append),
    /// the changed ones (update) or all (complete) — and the state to keep (closed
    /// windows evicted when the window says so).
    pub fn emit(
        &self,
        folded: Folded,
        output_schema: &SchemaRef,
        changed_only: bool,
    ) -> Result<(RecordBatch, RecordBatch)> {
        let w = &self.window;
        let Folded {
            state,
            mut output,
            changed,
            groups,
        } = folded;
        output.truncate(output_schema.fields().len());
        if let Some(size) = w.keyed_by_end {
            output[w.key_index] = window_structs_from_ends(&output[w.key_index], size)?;
        }
        let out = RecordBatch::try_new(Arc::clone(output_schema), output)?;
        let ends = window_ends(state.column(w.key_index))?;
        let closed: BooleanArray = ends
            .iter()
            .map(|e| Some(matches!((e, self.watermark), (Some(e), Some(wm)) if e <= wm)))
            .collect();
        let emit = if w.emit_closed_only {
            closed.clone()
        } else if changed_only {
            BooleanArray::from(changed)
        } else {
            BooleanArray::from(vec![true; groups])
        };
        let out = filter_record_batch(&out, &emit)?;
        let state = if w.evict_closed {
            filter_record_batch(&state, &not(&closed)?)?
        } else {
            state
        };
        Ok((out, state))
    }
}
