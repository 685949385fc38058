//! [`RunningAggregate`]: a `GROUP BY` over every batch so far (Spark's
//! `updateStateByKey`), emitting every group each batch (complete) or the groups the
//! batch changed (update).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;

use super::partial::{PartialAggregate, restored_state};
use crate::Result;
use crate::ops::{Emits, OperatorContext, StreamOperator};

/// Running aggregate over all batches so far.
pub struct RunningAggregate {
    agg: PartialAggregate,
    pub(super) output_schema: SchemaRef,
    /// Keys + state columns of every group, in the partial aggregate's layout.
    state: Option<RecordBatch>,
    /// Emit only the groups this batch changed (update mode) instead of all.
    pub(super) changed_only: bool,
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
            state: None,
            changed_only: false,
        })
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
        format!(
            "RunningAggregate: {}, output {}; state: one row per group, kept for the life of the query (grows with the number of distinct keys; no watermark bounds it)",
            self.agg.display(),
            if self.changed_only {
                "update"
            } else {
                "complete"
            }
        )
    }

    fn emits(&self) -> Emits {
        super::emits(None, self.changed_only, &self.agg)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        self.agg.plan(input).await
    }

    async fn process(
        &mut self,
        _ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let folded = self.agg.fold(self.state.take(), input)?;
        let mut out = RecordBatch::try_new(Arc::clone(&self.output_schema), folded.output)?;
        if self.changed_only {
            out = filter_record_batch(&out, &BooleanArray::from(folded.changed))?;
        }
        self.state = Some(folded.state);
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
            meta: serde_json::json!({ "watermark": null }),
        })
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.state = restored_state(&state.batches)?;
        Ok(())
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
}
