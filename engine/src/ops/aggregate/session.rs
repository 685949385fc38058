//! [`SessionAggregate`]: a `GROUP BY` over session windows. Each row arrives as its
//! own session `{ts, ts + gap}`; before every merge, the overlapping sessions of a key
//! (stored and new) are coalesced into their union, so the merge combines their
//! aggregates. The watermark closes sessions as it closes windows.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, StructArray, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::event_time::{self, EventTime, EventTimeWindow, WindowDisplay};
use super::partial::{PartialAggregate, restored_state};
use crate::ops::{Emits, OperatorContext, StreamOperator};
use crate::{Result, internal_err};

/// An aggregate over session windows.
pub struct SessionAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    time: EventTime,
    /// Emit only the sessions each batch changed (update mode).
    pub(super) changed_only: bool,
    /// How EXPLAIN shows it.
    display: WindowDisplay,
    /// Keys + state columns of every session.
    state: Option<RecordBatch>,
}

impl SessionAggregate {
    /// `GROUP BY group_exprs` over `input`, the session being group key
    /// `window.key_index` (a `{start, end}` struct); the last two of `aggr_exprs` are
    /// the hidden `max(event time)` and `count(*)`.
    pub fn try_new(
        input: &DataFrame,
        group_exprs: Vec<Expr>,
        aggr_exprs: Vec<Expr>,
        window: EventTimeWindow,
    ) -> Result<Self> {
        let agg = PartialAggregate::new(group_exprs, aggr_exprs);
        Ok(Self {
            output_schema: window.output_schema(&agg.output_schema(input)?),
            agg,
            time: EventTime::new(window),
            changed_only: false,
            display: WindowDisplay::default(),
            state: None,
        })
    }
}

impl SessionAggregate {
    /// The query's own expressions and the window's kind, for EXPLAIN.
    pub fn with_display(mut self, display: WindowDisplay) -> Self {
        self.display = display;
        self
    }
}

#[async_trait]
impl StreamOperator for SessionAggregate {
    fn name(&self) -> String {
        "SessionAggregate".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn describe(&self) -> String {
        let window = self.time.window.fingerprint(true);
        super::fingerprint(&self.agg, Some(window), self.changed_only)
    }

    fn explain(&self) -> String {
        event_time::explain(
            "SessionAggregate",
            &self.display,
            &self.time.window,
            self.changed_only,
        )
    }

    fn emits(&self) -> Emits {
        super::emits(Some(&self.time.window), self.changed_only, &self.agg)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        self.agg.plan(input).await
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let (input, max_event_time) = self.time.drop_late(&self.agg, input)?;
        let previous = self.state.take();
        let had_previous = previous.is_some();
        let mut all: Vec<RecordBatch> = previous.into_iter().chain(input).collect();
        coalesce_sessions(&mut all, self.time.window.key_index, self.agg.keys())?;
        let (previous, input) = if had_previous {
            let rest = all.split_off(1);
            (all.pop(), rest)
        } else {
            (None, all)
        };
        let folded = self.agg.fold(previous, input)?;
        self.time.advance(ctx, max_event_time);
        let (out, state) = self
            .time
            .emit(folded, &self.output_schema, self.changed_only)?;
        self.state = Some(state);
        Ok(Some(vec![out]))
    }

    fn state_rows(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.num_rows())
    }

    fn state_bytes(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.get_array_memory_size())
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(crate::checkpoint::OperatorState {
            batches: self.state.iter().cloned().collect(),
            meta: serde_json::json!({ "watermark": self.time.watermark }),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.time.watermark = state.meta["watermark"].as_i64();
        self.state = restored_state(&state.batches)?;
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        self.time.late_rows_last_batch
    }

    fn watermark(&self) -> Option<i64> {
        self.time.watermark
    }

    fn watermark_source(&self) -> Option<(usize, usize)> {
        self.time.window.watermark_from
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::functions_aggregate::expr_fn::{count, max};
    use datafusion::prelude::{col, lit};

    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    fn input() -> TestInput {
        TestInput::keyed_events()
    }

    fn rows_at(keys: &[&str], ms: &[i64]) -> RecordBatch {
        input().events(keys, ms)
    }

    /// Sessions with a 5 s gap per key, counted; watermark 1 s, update mode.
    async fn sessions() -> SessionAggregate {
        let input = input();
        let session = datafusion::prelude::named_struct(vec![
            lit("start"),
            col("ts"),
            lit("end"),
            col("ts") + lit(datafusion::scalar::ScalarValue::new_interval_dt(0, 5_000)),
        ])
        .alias("s");
        SessionAggregate::try_new(
            &input.frame(),
            vec![col("k"), session],
            vec![
                count(lit(1)).alias("n"),
                max(col("ts")).alias("__max"),
                count(lit(1)).alias("__rows"),
            ],
            EventTimeWindow {
                key_index: 1,
                delay: Some(Duration::from_secs(1)),
                emit_closed_only: false,
                evict_closed: true,
                watermark_is_batch_time: false,
                keyed_by_end: None,
                watermark_from: None,
            },
        )
        .unwrap()
        .with_changed_only(true)
    }

    #[tokio::test]
    async fn rows_within_the_gap_of_each_other_make_one_session_across_batches() {
        let (input, mut op) = (input(), sessions().await);
        let out = input
            .run(
                &mut op,
                1,
                vec![rows_at(&["a", "a", "b"], &[1_000, 4_000, 1_000])],
            )
            .await;
        assert_eq!(
            rows(&out),
            [
                "a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:09},2",
                "b,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:06},1"
            ]
        );
        // 8 s is within 5 s of a's session (ends at 9 s): the session grows.
        let out = input.run(&mut op, 2, vec![rows_at(&["a"], &[8_000])]).await;
        assert_eq!(
            rows(&out),
            ["a,{start: 1970-01-01T00:00:01, end: 1970-01-01T00:00:13},3"]
        );
        assert_eq!(
            op.state_rows(),
            1,
            "b's session closed at watermark 7 s and left"
        );
    }
}
