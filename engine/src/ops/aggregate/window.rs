//! [`WindowAggregate`]: a `GROUP BY` over tumbling or hopping event-time windows (or
//! windows over batch time). In append mode with a watermark, each window's groups
//! live in a table of their own ([`WindowState`]) that the watermark closes and
//! drops whole; otherwise the groups are merged as a running aggregate's are, and the
//! watermark filters what is emitted and kept.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::event_time::{
    self, EventTime, EventTimeWindow, WindowDisplay, window_ends, window_structs_from_ends,
};
use super::partial::{PartialAggregate, restored_state};
use crate::Result;
use crate::ops::window_state::WindowState;
use crate::ops::{Emits, OperatorContext, StreamOperator};

/// An aggregate over tumbling or hopping windows.
pub struct WindowAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    time: EventTime,
    /// Emit only the groups each batch changed (update mode).
    pub(super) changed_only: bool,
    /// How EXPLAIN shows it.
    display: WindowDisplay,
    /// Keys + state columns of every group (when not kept per window).
    state: Option<RecordBatch>,
    /// Append-mode windows whose state the watermark evicts: kept per window in
    /// persistent tables instead of `state`. (DataFusion's tables are `Send` but not
    /// `Sync`; the lock is only ever taken through `&mut self`, uncontended, or by
    /// `state_rows`.)
    windows: Option<Mutex<WindowState>>,
}

impl WindowAggregate {
    /// `GROUP BY group_exprs` over `input`, the window being group key
    /// `window.key_index`. The caller appended `max(event time)` and `count(*)` as the
    /// last two of `aggr_exprs`; they are hidden from the output.
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
            windows: None,
        })
    }

    fn windows_mut(&mut self) -> Option<&mut WindowState> {
        self.windows
            .as_mut()
            .map(|w| w.get_mut().unwrap_or_else(|e| e.into_inner()))
    }

    /// Append mode with per-window tables: merge, then emit what the watermark closed.
    fn process_windows(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
        max_event_time: Option<i64>,
    ) -> Result<Vec<RecordBatch>> {
        let w = self.time.window;
        if let Some(windows) = self.windows_mut() {
            for batch in &input {
                windows.merge(batch, &window_ends(batch.column(w.key_index))?)?;
            }
        }
        self.time.advance(ctx, max_event_time);
        let mut out = Vec::new();
        if let Some(wm) = self.time.watermark
            && let Some(windows) = self.windows_mut()
        {
            for mut columns in windows.close(wm)? {
                if let Some(size) = w.keyed_by_end {
                    columns[w.key_index] = window_structs_from_ends(&columns[w.key_index], size)?;
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
        Ok(out)
    }
}

impl WindowAggregate {
    /// The query's own expressions and the window's kind, for EXPLAIN.
    pub fn with_display(mut self, display: WindowDisplay) -> Self {
        self.display = display;
        self
    }
}

#[async_trait]
impl StreamOperator for WindowAggregate {
    fn name(&self) -> String {
        "WindowAggregate".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn describe(&self) -> String {
        let window = self.time.window.fingerprint(false);
        super::fingerprint(&self.agg, Some(window), self.changed_only)
    }

    fn explain(&self) -> String {
        event_time::explain(
            "WindowAggregate",
            &self.display,
            &self.time.window,
            self.changed_only,
        )
    }

    fn emits(&self) -> Emits {
        super::emits(Some(&self.time.window), self.changed_only, &self.agg)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.agg.plan(input).await?;
        let w = self.time.window;
        if w.emit_closed_only && w.evict_closed {
            // The hidden max(event time) and count(*) are read from each batch's
            // partials; the windows need not store them.
            let planned = self.agg.planned()?;
            let stored = planned.aggregates.len() - 2;
            self.windows = Some(Mutex::new(WindowState::try_new(
                &planned.partial_schema,
                self.agg.keys(),
                w.key_index,
                planned.aggregates[..stored].to_vec(),
                planned.state_widths[..stored].to_vec(),
            )?));
        }
        Ok(plan)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let (input, max_event_time) = self.time.drop_late(&self.agg, input)?;
        if self.windows.is_some() {
            return Ok(Some(self.process_windows(ctx, input, max_event_time)?));
        }
        let folded = self.agg.fold(self.state.take(), input)?;
        self.time.advance(ctx, max_event_time);
        let (out, state) = self
            .time
            .emit(folded, &self.output_schema, self.changed_only)?;
        self.state = Some(state);
        Ok(Some(vec![out]))
    }

    fn state_rows(&self) -> usize {
        match &self.windows {
            Some(w) => w.lock().unwrap_or_else(|e| e.into_inner()).rows(),
            None => self.state.as_ref().map_or(0, |s| s.num_rows()),
        }
    }

    fn state_bytes(&self) -> usize {
        match &self.windows {
            Some(w) => w.lock().unwrap_or_else(|e| e.into_inner()).bytes(),
            None => self.state.as_ref().map_or(0, |s| s.get_array_memory_size()),
        }
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        let batches = match self.windows_mut() {
            Some(w) => w.snapshot()?,
            None => self.state.iter().cloned().collect(),
        };
        Ok(crate::checkpoint::OperatorState {
            batches,
            meta: serde_json::json!({ "watermark": self.time.watermark }),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.time.watermark = state.meta["watermark"].as_i64();
        let key = self.time.window.key_index;
        if let Some(windows) = self.windows_mut() {
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
                windows.merge(batch, &window_ends(batch.column(key))?)?;
            }
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use datafusion::functions::expr_fn::{to_timestamp_millis, to_unixtime};
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

    /// Counts per key in 10 s tumbling windows keyed by their end, watermark 1 s.
    async fn tumbling(append: bool) -> WindowAggregate {
        let input = input();
        // The window's end: ts rounded up to the next multiple of 10 s.
        let end = to_timestamp_millis(vec![
            (to_unixtime(vec![col("ts")]) / lit(10i64) + lit(1i64)) * lit(10_000i64),
        ])
        .alias("w");
        WindowAggregate::try_new(
            &input.frame(),
            vec![end, col("k")],
            vec![
                count(lit(1)).alias("n"),
                max(col("ts")).alias("__max"),
                count(lit(1)).alias("__rows"),
            ],
            EventTimeWindow {
                key_index: 0,
                delay: Some(Duration::from_secs(1)),
                emit_closed_only: append,
                evict_closed: true,
                watermark_is_batch_time: false,
                keyed_by_end: Some(Duration::from_secs(10)),
                watermark_from: None,
            },
        )
        .unwrap()
        .with_changed_only(!append)
    }

    #[tokio::test]
    async fn append_emits_a_window_once_the_watermark_passes_its_end() {
        let (input, mut op) = (input(), tumbling(true).await);
        let out = input
            .run(
                &mut op,
                1,
                vec![rows_at(&["a", "a", "b"], &[1_000, 2_000, 9_000])],
            )
            .await;
        assert!(rows(&out).is_empty(), "the window [0, 10 s) is open");
        let out = input
            .run(&mut op, 2, vec![rows_at(&["a"], &[12_000])])
            .await;
        assert_eq!(
            rows(&out),
            [
                "{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},a,2",
                "{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},b,1"
            ]
        );
        assert_eq!(
            op.state_rows(),
            1,
            "only the open window [10 s, 20 s) is kept"
        );
        // A row of the closed window is late: dropped and counted.
        let out = input.run(&mut op, 3, vec![rows_at(&["a"], &[3_000])]).await;
        assert!(rows(&out).is_empty());
        assert_eq!(op.late_rows(), 1);
    }

    #[tokio::test]
    async fn update_emits_changed_windows_and_evicts_closed_ones() {
        let (input, mut op) = (input(), tumbling(false).await);
        let out = input.run(&mut op, 1, vec![rows_at(&["a"], &[1_000])]).await;
        assert_eq!(
            rows(&out),
            ["{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},a,1"]
        );
        let out = input
            .run(&mut op, 2, vec![rows_at(&["a"], &[15_000])])
            .await;
        assert_eq!(
            rows(&out),
            ["{start: 1970-01-01T00:00:10, end: 1970-01-01T00:00:20},a,1"]
        );
        assert_eq!(
            op.state_rows(),
            1,
            "the window the watermark passed is gone"
        );
        assert_eq!(op.watermark(), Some(14_000));
    }
}
