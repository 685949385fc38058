//! [`WindowAggregate`]: a `GROUP BY` over tumbling or hopping event-time windows (or
//! windows over batch time). The groups (window and keys) are merged in the keyed
//! state store as a running aggregate's are; the watermark evicts the windows it
//! closed, which append mode emits as it drops them. Append mode without a watermark
//! re-merges its groups each batch.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::event_time::{self, EventTime, EventTimeWindow, WindowDisplay, window_ends};
use super::on_cluster::OnCluster;
use super::partial::{PartialAggregate, evaluate_all, evaluate_rows, merge_touched};
use crate::Result;
use crate::cluster::state::Placement;
use crate::ops::{Emits, OperatorContext, StreamOperator};
use crate::state::{KeyedState, StateConfig, StateStats};

/// An aggregate over tumbling or hopping windows.
pub struct WindowAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    time: EventTime,
    /// Emit only the groups each batch changed (update mode).
    pub(super) changed_only: bool,
    /// How EXPLAIN shows it.
    display: WindowDisplay,
    /// Every group (keys + state columns) in the keyed state store, but in append mode
    /// without a watermark; closed windows are evicted from it.
    store: Option<KeyedState>,
    config: StateConfig,
    /// A checkpoint's rows given before the input was planned.
    restored: Option<Vec<RecordBatch>>,
    /// Append mode without eviction (no watermark of its own): keys + state columns
    /// of every group, re-merged each batch.
    state: Option<RecordBatch>,
    /// Set when the groups live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
    /// On a cluster, append mode: the plan emitting the windows this batch's
    /// watermark closed, set by `process` when the watermark moved.
    closing: Option<Arc<dyn ExecutionPlan>>,
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
            store: None,
            config: StateConfig::default(),
            restored: None,
            state: None,
            cluster: None,
            closing: None,
        })
    }
}

impl WindowAggregate {
    /// The query's own expressions and the window's kind, for EXPLAIN.
    pub fn with_display(mut self, display: WindowDisplay) -> Self {
        self.display = display;
        self
    }

    /// How the groups are kept in update and complete mode (partitions, memory
    /// budget, time-to-live).
    pub fn with_state_config(mut self, mut config: StateConfig) -> Self {
        if self.time.window.emit_closed_only {
            // The watermark bounds append-mode windows; a time-to-live would drop a
            // group before its window closed, and with it the group's only output —
            // here or in a cluster's state partitions, whose spec is made from this.
            config.ttl = None;
        }
        self.config = config;
        self
    }

    /// The batch's groups merged in the store (the groups it touched, on every
    /// core); then every group (complete mode), the touched ones (update) or the
    /// windows the watermark closed (append) emitted, and the closed windows evicted.
    fn process_store(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
        max_event_time: Option<i64>,
    ) -> Result<Vec<RecordBatch>> {
        let now = ctx.batch_time.as_millis();
        let partial = Arc::clone(&self.agg.planned()?.partial_schema);
        let input = datafusion::arrow::compute::concat_batches(&partial, &input)?;
        let Some(store) = self.store.as_mut() else {
            return crate::internal_err!("WindowAggregate used before plan_input");
        };
        let cutoff = store.cutoff(now);
        let touched = merge_touched(&self.agg, store, &input, now, self.changed_only)?;
        self.time.advance(ctx, max_event_time);
        let groups = if self.time.window.emit_closed_only {
            // Taking the closed windows out evicts them.
            self.take_closed()?
        } else {
            let groups = if self.changed_only {
                touched
            } else {
                evaluate_all(&self.agg, store, cutoff)?
            };
            self.evict_closed()?;
            groups
        };
        let mut out = Vec::with_capacity(groups.len());
        for columns in groups {
            out.push(self.output_batch(columns)?);
        }
        if out.is_empty() {
            out.push(RecordBatch::new_empty(Arc::clone(&self.output_schema)));
        }
        Ok(out)
    }

    /// Append mode: the groups of the windows the watermark closed, taken out of the
    /// store, each as its keys then every aggregate's value.
    fn take_closed(&mut self) -> Result<Vec<Vec<ArrayRef>>> {
        let (Some(wm), Some(store)) = (self.time.watermark, self.store.as_mut()) else {
            return Ok(Vec::new());
        };
        let key = self.time.window.key_index;
        store
            .take_until(wm, &move |rows: &RecordBatch| {
                Ok(window_ends(rows.column(key))?.iter().collect())
            })?
            .iter()
            .map(|rows| evaluate_rows(&self.agg, rows))
            .collect()
    }

    /// Checkpointed rows in the store's layout. Append-mode windows written before
    /// they moved onto the store kept one table per window without the hidden
    /// `max(event time)` and `count(*)`: those come back as nulls and zero counts
    /// (neither is read from stored groups).
    fn conform(&self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let planned = self.agg.planned()?;
        let fields = planned.partial_schema.fields();
        let stored = planned.aggregates.len().saturating_sub(2);
        let old_width = self.agg.keys() + planned.state_widths[..stored].iter().sum::<usize>();
        rows.into_iter()
            .map(|b| {
                if b.num_columns() != old_width || old_width == fields.len() {
                    return Ok(b);
                }
                let mut columns = b.columns().to_vec();
                for f in &fields[old_width..] {
                    columns.push(if f.is_nullable() {
                        datafusion::arrow::array::new_null_array(f.data_type(), b.num_rows())
                    } else {
                        let zero = datafusion::common::ScalarValue::new_zero(f.data_type())?;
                        zero.to_array_of_size(b.num_rows())?
                    });
                }
                Ok(RecordBatch::try_new(
                    Arc::clone(&planned.partial_schema),
                    columns,
                )?)
            })
            .collect()
    }

    /// Keys + every aggregate's value as an output batch: the hidden aggregates
    /// dropped, windows keyed by their end given their `{start, end}`.
    fn output_batch(&self, columns: Vec<ArrayRef>) -> Result<RecordBatch> {
        event_time::output_batch(&self.time.window, &self.output_schema, columns)
    }

    /// Drops from the store the windows the watermark closed (when the window says
    /// closed windows go).
    fn evict_closed(&mut self) -> Result<()> {
        let w = self.time.window;
        let (Some(wm), true, Some(store)) =
            (self.time.watermark, w.evict_closed, self.store.as_mut())
        else {
            return Ok(());
        };
        let key = w.key_index;
        store.evict_until(wm, &move |rows: &RecordBatch| {
            Ok(window_ends(rows.column(key))?.iter().collect())
        })?;
        Ok(())
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
        let line = event_time::explain(
            "WindowAggregate",
            &self.display,
            &self.time.window,
            self.changed_only,
        );
        if let Some(c) = &self.cluster {
            return c.explained(&line, self.config.partitions);
        }
        match self.config.ttl {
            Some(ttl) if !self.time.window.emit_closed_only => format!(
                "{line}; bounded by state_ttl too: a group not updated for {} is evicted",
                crate::time::format_duration(ttl)
            ),
            _ => line,
        }
    }

    fn emits(&self) -> Emits {
        super::emits(Some(&self.time.window), self.changed_only, &self.agg)
    }

    fn can_partition_on_cluster(&self) -> bool {
        // Watermarked by its own event time (or none, but not in append mode, whose
        // groups are then re-merged each batch). Append mode emits what this batch's
        // watermark closed with a second job (`emit_plan`).
        let w = &self.time.window;
        (!w.emit_closed_only || w.evict_closed) && w.watermark_from.is_none()
    }

    fn partition_on_cluster(&mut self, placement: Placement) {
        self.cluster = Some(OnCluster::new(placement));
    }

    fn begin_batch(&mut self, ctx: &OperatorContext) {
        if let Some(c) = &self.cluster {
            c.begin(ctx.batch_time.as_millis(), self.time.watermark);
        }
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.agg.plan(input).await?;
        if let Some(c) = &mut self.cluster {
            let wide = self.agg.output_schema(input)?;
            return c.plan_window(
                plan,
                &(0..self.agg.keys()).collect::<Vec<_>>(),
                &wide,
                &self.config,
                self.changed_only,
                &self.time.window,
                false,
            );
        }
        let w = self.time.window;
        if w.emit_closed_only && !w.evict_closed {
            if let Some(rows) = self.restored.take() {
                self.state = super::partial::restored_state(&rows)?;
            }
            return Ok(plan);
        }
        let planned = self.agg.planned()?;
        let fields = planned.partial_schema.fields();
        let nk = self.agg.keys();
        let mut store = KeyedState::try_new(&fields[..nk], &fields[nk..], self.config.clone())?;
        if let Some(rows) = self.restored.take() {
            store.restore(self.conform(rows)?)?;
        }
        self.store = Some(store);
        self.evict_closed()?;
        Ok(plan)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        if let Some(c) = &mut self.cluster {
            return Ok(Some(super::on_cluster::windows_from_tasks(
                &mut self.time,
                &self.agg,
                c,
                ctx,
                input,
                &self.output_schema,
                &mut self.closing,
            )?));
        }
        let (input, max_event_time) = self.time.drop_late(&self.agg, input)?;
        if self.store.is_some() {
            return Ok(Some(self.process_store(ctx, input, max_event_time)?));
        }
        let folded = self.agg.fold(self.state.take(), input)?;
        self.time.advance(ctx, max_event_time);
        let (out, state) = self
            .time
            .emit(folded, &self.output_schema, self.changed_only)?;
        self.state = Some(state);
        Ok(Some(vec![out]))
    }

    fn emit_plan(&mut self) -> Option<Arc<dyn ExecutionPlan>> {
        self.closing.take()
    }

    fn process_emitted(&mut self, rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        let mut out = rows
            .into_iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| self.output_batch(b.columns().to_vec()))
            .collect::<Result<Vec<_>>>()?;
        if out.is_empty() {
            out.push(RecordBatch::new_empty(Arc::clone(&self.output_schema)));
        }
        Ok(out)
    }

    fn state_stats(&self) -> StateStats {
        match &self.store {
            Some(store) => store.stats(),
            None => StateStats {
                rows: self.state.as_ref().map_or(0, |s| s.num_rows() as u64),
                memory_bytes: self
                    .state
                    .as_ref()
                    .map_or(0, |s| s.get_array_memory_size() as u64),
                ..Default::default()
            },
        }
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        if let Some(c) = &mut self.cluster {
            let mut state = c.operator_state(self.config.partitions);
            state.meta["watermark"] = serde_json::json!(self.time.watermark);
            return Ok(state);
        }
        let mut meta = serde_json::json!({ "watermark": self.time.watermark });
        let batches = match self.store.as_mut() {
            Some(store) => {
                let snapshot = store.snapshot()?;
                meta["state"] = snapshot.meta["state"].clone();
                meta["partitions"] = snapshot.meta["partitions"].clone();
                snapshot.batches
            }
            None => match &self.state {
                Some(state) => vec![state.clone()],
                None => self.restored.clone().unwrap_or_default(),
            },
        };
        Ok(crate::checkpoint::OperatorState { batches, meta })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.time.watermark = state.meta["watermark"].as_i64();
        if super::on_cluster::restore_placement(
            "WindowAggregate",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            return Ok(());
        }
        if self.store.is_some() {
            let rows = self.conform(state.batches)?;
            if let Some(store) = self.store.as_mut() {
                store.restore(rows)?;
            }
            // A delta does not record the windows closed since the full snapshot
            // (append mode emitted them before that checkpoint: they go unemitted).
            return self.evict_closed();
        }
        if self.agg.planned().is_ok() {
            // Append mode without eviction, planned: re-merged each batch.
            self.state = super::partial::restored_state(&state.batches)?;
        } else {
            // Not planned yet: `plan_input` puts them where they belong.
            self.restored = Some(state.batches);
        }
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

    /// Both modes in 7 spilled partitions (append with a time-to-live far shorter
    /// than its windows, which it must not apply) emit and keep what one partition in
    /// memory does; a snapshot and restore in between changes nothing.
    #[tokio::test]
    async fn seven_spilled_partitions_emit_and_evict_as_one_partition_does() {
        for append in [false, true] {
            let spilled_config = StateConfig {
                partitions: 7,
                memory: 1,
                ttl: append.then_some(Duration::from_millis(1)),
                ..StateConfig::default()
            };
            let (plain_input, mut plain) = (input(), tumbling(append).await);
            let mut spilled_input = input();
            let mut spilled = tumbling(append)
                .await
                .with_state_config(spilled_config.clone());
            let mut emitted = 0;
            for b in 0..6i64 {
                let keys: Vec<String> = (0..300)
                    .map(|i| format!("k{}", (i * 7 + b) % 120))
                    .collect();
                let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
                // Event time moves 4 s a batch: windows close behind the watermark.
                let ms: Vec<i64> = (0..300).map(|i| b * 4_000 + i * 10).collect();
                let batch = rows_at(&refs, &ms);
                let want = plain_input.run(&mut plain, b, vec![batch.clone()]).await;
                let got = spilled_input.run(&mut spilled, b, vec![batch]).await;
                assert_eq!(rows(&got), rows(&want), "append {append}, batch {b}");
                assert_eq!(spilled.state_rows(), plain.state_rows(), "batch {b}");
                emitted += rows(&got).len();
                if b == 3 {
                    let saved = spilled.snapshot().unwrap();
                    spilled_input = input();
                    spilled = tumbling(append)
                        .await
                        .with_state_config(spilled_config.clone());
                    spilled.restore(saved).unwrap();
                }
            }
            assert!(emitted > 0);
            assert!(spilled.state_stats().spilled_bytes > 0);
            // Only the windows the watermark has not passed are kept.
            assert!(plain.state_rows() <= 2 * 120, "{}", plain.state_rows());
        }
        let with_ttl = |append| async move {
            tumbling(append).await.with_state_config(StateConfig {
                ttl: Some(Duration::from_secs(60)),
                ..StateConfig::default()
            })
        };
        let update = with_ttl(false).await.explain();
        assert!(
            update.ends_with("bounded by state_ttl too: a group not updated for 1m is evicted"),
            "{update}"
        );
        let append = with_ttl(true).await.explain();
        assert!(!append.contains("state_ttl"), "{append}");
    }

    /// Append-mode windows checkpointed before they moved onto the store (one table
    /// per window: keys and the query's own aggregates' state, no `__updated`) come
    /// back and close as they would have.
    #[tokio::test]
    async fn append_windows_come_back_from_the_per_window_format() {
        let (input, mut op) = (input(), tumbling(true).await);
        input
            .run(
                &mut op,
                1,
                vec![rows_at(&["a", "a", "b"], &[1_000, 2_000, 9_000])],
            )
            .await;
        let saved = op.snapshot().unwrap();
        // The old layout: window end, k, count's state (no hidden aggregates).
        let old: Vec<RecordBatch> = saved
            .batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(|b| b.project(&[0, 1, 2]).unwrap())
            .collect();
        assert!(!old.is_empty());
        let meta = serde_json::json!({ "watermark": saved.meta["watermark"] });
        let (input, mut restored) = (self::input(), tumbling(true).await);
        restored
            .restore(crate::checkpoint::OperatorState { batches: old, meta })
            .unwrap();
        let out = input
            .run(&mut restored, 2, vec![rows_at(&["b"], &[25_000])])
            .await;
        assert_eq!(
            rows(&out),
            [
                "{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},a,2",
                "{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},b,1"
            ]
        );
    }

    #[tokio::test]
    async fn state_given_back_before_planning_is_kept_in_every_mode() {
        for append in [true, false] {
            let (input, mut op) = (input(), tumbling(append).await);
            input
                .run(&mut op, 1, vec![rows_at(&["a", "a"], &[1_000, 2_000])])
                .await;
            let saved = op.snapshot().unwrap();
            // A restarted query: restored before its input is planned.
            let (input, mut restored) = (self::input(), tumbling(append).await);
            restored.restore(saved).unwrap();
            let out = input
                .run(&mut restored, 2, vec![rows_at(&["a"], &[12_000])])
                .await;
            let want = if append {
                "{start: 1970-01-01T00:00:00, end: 1970-01-01T00:00:10},a,2"
            } else {
                "{start: 1970-01-01T00:00:10, end: 1970-01-01T00:00:20},a,1"
            };
            assert!(
                rows(&out).contains(&want.to_string()),
                "append {append}: {out:?}"
            );
        }
    }
}
