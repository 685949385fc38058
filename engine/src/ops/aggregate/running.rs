//! [`RunningAggregate`]: a `GROUP BY` over every batch so far (Spark's
//! `updateStateByKey`), emitting every group each batch (complete) or the groups the
//! batch changed (update).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::on_cluster::OnCluster;
use super::partial::{PartialAggregate, evaluate_all, merge_touched};
use crate::Result;
use crate::checkpoint::OperatorState;
use crate::cluster::state::Placement;
use crate::ops::{Emits, OperatorContext, StreamOperator};
use crate::state::{KeyedState, StateConfig, StateStats};

/// Running aggregate over all batches so far: its groups live in a [`KeyedState`]
/// (one row per group: keys + the aggregates' state columns), so a batch costs the
/// groups it touches, on every core.
pub struct RunningAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    config: StateConfig,
    /// Built when the input is planned (its layout is the partial aggregate's).
    state: Option<KeyedState>,
    /// A checkpoint's rows given before the input was planned.
    restored: Option<Vec<RecordBatch>>,
    /// Emit only the groups this batch changed (update mode) instead of all.
    pub(super) changed_only: bool,
    /// Set when the groups live in state partitions on a cluster's executors.
    cluster: Option<OnCluster>,
}

impl RunningAggregate {
    /// A running `GROUP BY group_exprs` computing `aggr_exprs` over `input`.
    pub fn try_new(
        input: &DataFrame,
        group_exprs: Vec<Expr>,
        aggr_exprs: Vec<Expr>,
    ) -> Result<Self> {
        let agg = PartialAggregate::new(group_exprs, aggr_exprs);
        Ok(Self {
            output_schema: agg.output_schema(input)?,
            agg,
            config: StateConfig::default(),
            state: None,
            restored: None,
            changed_only: false,
            cluster: None,
        })
    }

    /// How the groups are kept: partitions, memory budget, time-to-live.
    pub fn with_state_config(mut self, config: StateConfig) -> Self {
        self.config = config;
        self
    }

    /// Every group's keys and values (complete mode: the one output that reads the
    /// whole state).
    fn everything(&mut self, cutoff: Option<i64>) -> Result<Vec<RecordBatch>> {
        let nk = self.agg.keys();
        let Some(state) = self.state.as_mut() else {
            return crate::internal_err!("RunningAggregate used before plan_input");
        };
        let groups = evaluate_all(&self.agg, state, cutoff)?;
        let mut out = groups
            .into_iter()
            .map(|columns| RecordBatch::try_new(Arc::clone(&self.output_schema), columns))
            .collect::<Result<Vec<_>, _>>()?;
        if nk == 0 && out.iter().all(|b| b.num_rows() == 0) {
            // No rows yet: one group all the same (`count(*)` is 0).
            let width = state.schema().fields().len() - 1;
            let empty: Vec<ArrayRef> = state.schema().fields()[..width]
                .iter()
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect();
            let (_, values) = self.agg.fold_groups(1, (&[], &[]), (&empty, &[]))?;
            out = vec![RecordBatch::try_new(
                Arc::clone(&self.output_schema),
                values,
            )?];
        }
        Ok(out)
    }
}

#[async_trait]
impl StreamOperator for RunningAggregate {
    fn name(&self) -> String {
        "RunningAggregate".into()
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn describe(&self) -> String {
        super::fingerprint(&self.agg, None, self.changed_only)
    }

    fn explain(&self) -> String {
        if let Some(c) = &self.cluster {
            let line = format!(
                "RunningAggregate: {}, output {}",
                self.agg.display(),
                if self.changed_only {
                    "update"
                } else {
                    "complete"
                }
            );
            return c.explained(&line, self.config.partitions);
        }
        let partitions = match self.config.partitions {
            _ if self.agg.keys() == 0 => String::new(),
            n if n == crate::state::default_partitions() => {
                " (hash-partitioned by key, one partition per core)".into()
            }
            n => format!(" (hash-partitioned by key, {n} partitions)"),
        };
        format!(
            "RunningAggregate: {}, output {}; state: one row per group{partitions}, {}",
            self.agg.display(),
            if self.changed_only {
                "update"
            } else {
                "complete"
            },
            match self.config.ttl {
                Some(ttl) => format!(
                    "bounded by state_ttl: a group not updated for {} is evicted",
                    crate::time::format_duration(ttl)
                ),
                None => "kept for the life of the query (grows with the number of distinct keys; no watermark bounds it)".into(),
            }
        )
    }

    fn emits(&self) -> Emits {
        super::emits(None, self.changed_only, &self.agg)
    }

    fn can_partition_on_cluster(&self) -> bool {
        self.agg.keys() > 0
    }

    fn partition_on_cluster(&mut self, placement: Placement) {
        self.cluster = Some(OnCluster::new(placement));
    }

    fn begin_batch(&mut self, ctx: &OperatorContext) {
        if let Some(c) = &self.cluster {
            c.begin(ctx.batch_time.as_millis(), None);
        }
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self.agg.plan(input).await?;
        if let Some(c) = &mut self.cluster {
            return c.plan(
                plan,
                &(0..self.agg.keys()).collect::<Vec<_>>(),
                &self.config,
                self.changed_only,
                None,
                Arc::clone(&self.output_schema),
                None,
            );
        }
        let planned = self.agg.planned()?;
        let fields = planned.partial_schema.fields();
        let nk = self.agg.keys();
        let mut state = KeyedState::try_new(&fields[..nk], &fields[nk..], self.config.clone())?;
        if let Some(rows) = self.restored.take() {
            state.restore(rows)?;
        }
        self.state = Some(state);
        Ok(plan)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let now = ctx.batch_time.as_millis();
        if let Some(c) = &mut self.cluster {
            // The tasks folded the batch into version `now` and emitted the groups.
            c.processed(now);
            return Ok(Some(input));
        }
        let partial = Arc::clone(&self.agg.planned()?.partial_schema);
        let input = concat_batches(&partial, &input)?;
        let Some(state) = self.state.as_mut() else {
            return crate::internal_err!("RunningAggregate used before plan_input");
        };
        let cutoff = state.cutoff(now);
        let changed = merge_touched(&self.agg, state, &input, now, self.changed_only)?
            .into_iter()
            .map(|columns| RecordBatch::try_new(Arc::clone(&self.output_schema), columns))
            .collect::<Result<Vec<_>, _>>()?;
        if self.changed_only {
            return Ok(Some(changed));
        }
        Ok(Some(self.everything(cutoff)?))
    }

    fn state_stats(&self) -> StateStats {
        self.state.as_ref().map(|s| s.stats()).unwrap_or_default()
    }

    fn snapshot(&mut self) -> Result<OperatorState> {
        if let Some(c) = &mut self.cluster {
            return Ok(c.operator_state(self.config.partitions));
        }
        match self.state.as_mut() {
            Some(state) => state.snapshot(),
            // Not planned yet: whatever was given back, whole.
            None => Ok(OperatorState {
                batches: self.restored.clone().unwrap_or_default(),
                meta: serde_json::json!({
                    "state": crate::state::SnapshotKind::Full.as_str(),
                    "partitions": self.config.partitions,
                }),
            }),
        }
    }

    fn restore(&mut self, state: OperatorState) -> Result<()> {
        if super::on_cluster::restore_placement(
            "RunningAggregate",
            self.cluster.as_mut(),
            &state,
            self.config.partitions,
        )? {
            return Ok(());
        }
        match self.state.as_mut() {
            Some(s) => s.restore(state.batches),
            None => {
                self.restored = Some(state.batches);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::DataType;
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    use datafusion::prelude::{col, lit};

    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    fn input() -> TestInput {
        TestInput::new(&[("k", DataType::Utf8), ("v", DataType::Int64)])
    }

    async fn counts(changed_only: bool) -> RunningAggregate {
        let input = input();
        RunningAggregate::try_new(
            &input.frame(),
            vec![col("k")],
            vec![count(lit(1)).alias("n"), sum(col("v")).alias("total")],
        )
        .unwrap()
        .with_changed_only(changed_only)
    }

    fn kv(keys: &[&str], values: &[i64]) -> RecordBatch {
        input().batch(vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(Int64Array::from(values.to_vec())),
        ])
    }

    #[tokio::test]
    async fn complete_emits_every_group_with_totals_across_batches() {
        let (input, mut op) = (input(), counts(false).await);
        let out = input
            .run(&mut op, 1, vec![kv(&["a", "b", "a"], &[1, 2, 3])])
            .await;
        assert_eq!(rows(&out), ["a,2,4", "b,1,2"]);
        let out = input.run(&mut op, 2, vec![kv(&["c"], &[5])]).await;
        assert_eq!(rows(&out), ["a,2,4", "b,1,2", "c,1,5"]);
        assert_eq!(op.state_rows(), 3);
        assert_eq!(op.emits(), Emits::WholeResult);
    }

    #[tokio::test]
    async fn update_emits_the_groups_a_batch_changed_and_state_survives_a_snapshot() {
        let (input, mut op) = (input(), counts(true).await);
        input.run(&mut op, 1, vec![kv(&["a", "b"], &[1, 2])]).await;
        let saved = op.snapshot().unwrap();
        // A restarted query: a new operator, planned anew, given the state back.
        let (input, mut restored) = (self::input(), counts(true).await);
        restored.restore(saved).unwrap();
        let out = input.run(&mut restored, 2, vec![kv(&["b"], &[10])]).await;
        assert_eq!(rows(&out), ["b,2,12"]);
        let out = input.run(&mut restored, 3, vec![]).await;
        assert!(rows(&out).is_empty(), "an empty batch changes nothing");
    }

    fn config(partitions: usize, memory: usize, ttl: Option<u64>) -> StateConfig {
        StateConfig {
            partitions,
            memory,
            ttl: ttl.map(std::time::Duration::from_secs),
            ..StateConfig::default()
        }
    }

    /// Keys `0..keys` pseudo-randomly, values 0..100, for batch `b`.
    fn random_batch(b: i64, rows: i64, keys: i64) -> RecordBatch {
        let k: Vec<String> = (0..rows)
            .map(|i| ((b * rows + i) * 7919 % keys).to_string())
            .collect();
        let v: Vec<i64> = (0..rows).map(|i| (b * 31 + i) % 100).collect();
        kv(&k.iter().map(String::as_str).collect::<Vec<_>>(), &v)
    }

    #[tokio::test]
    async fn partitions_and_spilling_give_the_rows_one_partition_in_memory_gives() {
        let plain_input = input();
        let mut plain = counts(false)
            .await
            .with_state_config(config(1, usize::MAX, None));
        let spilled_input = input();
        let mut spilled = counts(false).await.with_state_config(config(7, 1, None));
        for b in 0..6 {
            let batch = random_batch(b, 3_000, 5_000);
            let want = plain_input.run(&mut plain, b, vec![batch.clone()]).await;
            let got = spilled_input.run(&mut spilled, b, vec![batch]).await;
            assert_eq!(rows(&got), rows(&want), "batch {b}");
        }
        let stats = spilled.state_stats();
        assert_eq!(stats.rows, plain.state_stats().rows);
        assert!(stats.spilled_bytes > 0, "a 1-byte budget spills: {stats:?}");
        assert_eq!(stats.memory_bytes, 0, "every partition on disk: {stats:?}");
    }

    #[tokio::test]
    async fn a_key_idle_for_longer_than_state_ttl_starts_again() {
        let input = input();
        let mut op = counts(true)
            .await
            .with_state_config(config(2, usize::MAX, Some(10)));
        input.run(&mut op, 0, vec![kv(&["a", "b"], &[1, 2])]).await;
        input.run(&mut op, 5, vec![kv(&["b"], &[3])]).await;
        // At 12 s, `a` (last updated at 0 s) has expired; `b` (5 s) has not.
        let out = input
            .run(&mut op, 12, vec![kv(&["a", "b"], &[10, 10])])
            .await;
        assert_eq!(rows(&out), ["a,1,10", "b,3,15"]);
        assert_eq!(op.state_stats().evicted, 1);
        assert!(
            op.explain().contains("bounded by state_ttl"),
            "{}",
            op.explain()
        );
    }

    #[tokio::test]
    async fn checkpoints_hold_the_changes_then_a_full_snapshot_and_restore_repartitions() {
        let input = input();
        let mut op = counts(true)
            .await
            .with_state_config(config(2, usize::MAX, None));
        let mut saved = vec![op.snapshot().unwrap()];
        assert_eq!(saved[0].meta["state"], "full");
        input
            .run(&mut op, 1, vec![kv(&["a", "b", "c", "d"], &[1, 1, 1, 1])])
            .await;
        saved.push(op.snapshot().unwrap());
        input.run(&mut op, 2, vec![kv(&["a"], &[5])]).await;
        saved.push(op.snapshot().unwrap());
        // A delta holds what the batch touched: one row for `a`.
        assert_eq!(saved[2].meta["state"], "delta");
        assert_eq!(
            saved[2].batches.iter().map(|b| b.num_rows()).sum::<usize>(),
            1
        );
        for b in 3..8 {
            input.run(&mut op, b, vec![kv(&["b"], &[1])]).await;
            saved.push(op.snapshot().unwrap());
        }
        // Deltas since the last full (5 rows of `b`, 1 of `a`) outgrew the state (4 rows).
        let kinds: Vec<_> = saved.iter().map(|s| s.meta["state"].clone()).collect();
        assert!(kinds.iter().skip(2).any(|k| k == "full"), "{kinds:?}");
        // A restore from the delta chain into 7 partitions: the same totals.
        let chain = saved
            .iter()
            .flat_map(|s| s.batches.iter().cloned())
            .collect::<Vec<_>>();
        let restored_input = self::input();
        let mut restored = counts(false)
            .await
            .with_state_config(config(7, usize::MAX, None));
        restored
            .restore(crate::checkpoint::OperatorState {
                batches: chain,
                meta: serde_json::json!({}),
            })
            .unwrap();
        let out = restored_input.run(&mut restored, 8, vec![]).await;
        assert_eq!(rows(&out), ["a,2,6", "b,6,6", "c,1,1", "d,1,1"]);
    }

    #[tokio::test]
    async fn a_spill_file_that_cannot_be_written_fails_the_batch_naming_it() {
        let input = input();
        let mut op = counts(true).await.with_state_config(StateConfig {
            spill_dir: Some("/dev/null/state".into()),
            ..config(1, 1, None)
        });
        let plan = op.plan_input(&input.frame()).await.unwrap();
        drop(plan);
        let ctx = OperatorContext {
            batch_time: crate::time::Time::from_millis(0),
            zero_time: crate::time::Time::from_millis(0),
            batch_interval: std::time::Duration::from_secs(1),
            input_watermark: None,
            end_of_input: false,
        };
        // The partial rows as the input plan gives them: key, count, sum.
        let partial = Arc::clone(&op.agg.planned().unwrap().partial_schema);
        let rows = RecordBatch::try_new(
            partial,
            vec![
                Arc::new(StringArray::from(vec!["a"])),
                Arc::new(Int64Array::from(vec![1])),
                Arc::new(Int64Array::from(vec![5])),
            ],
        )
        .unwrap();
        let err = op.process(&ctx, vec![rows]).await.unwrap_err().to_string();
        // Inside a folder of the state's own under the one given.
        assert!(
            err.contains("state spill file /dev/null/state/flumen-state-")
                && err.contains("/p0.arrow"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_null_key_is_one_group_whatever_the_partitions() {
        let input = input();
        let mut op = counts(true)
            .await
            .with_state_config(config(7, usize::MAX, None));
        let batch = input.batch(vec![
            Arc::new(StringArray::from(vec![None, Some("a"), None])),
            Arc::new(Int64Array::from(vec![1, 2, 3])),
        ]);
        let out = input.run(&mut op, 1, vec![batch.clone()]).await;
        assert_eq!(rows(&out), ["NULL,2,4", "a,1,2"]);
        let out = input.run(&mut op, 2, vec![batch]).await;
        assert_eq!(rows(&out), ["NULL,4,8", "a,2,4"]);
        assert_eq!(op.state_rows(), 2);
    }
}
