//! Feeding an operator record batches in unit tests, as the scheduler does: its input
//! plan (`plan_input`, once) reads a [`BatchSlot`] that each batch fills, and
//! `process` gets the plan's output.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::dataframe::DataFrame;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use parking_lot::Mutex;

use super::{OperatorContext, StreamOperator};
use crate::slot::BatchSlot;
use crate::time::Time;

/// An operator's input: a table of `schema`, refilled every batch.
pub(crate) struct TestInput {
    pub schema: SchemaRef,
    ctx: SessionContext,
    slot: Arc<BatchSlot>,
    plan: Mutex<Option<Arc<dyn ExecutionPlan>>>,
}

impl TestInput {
    pub fn new(fields: &[(&str, DataType)]) -> Self {
        let schema = Arc::new(Schema::new(
            fields
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect::<Vec<_>>(),
        ));
        Self {
            slot: BatchSlot::new(Arc::clone(&schema), 1),
            schema,
            ctx: SessionContext::new(),
            plan: Mutex::new(None),
        }
    }

    /// Events: a text key `k` and a millisecond timestamp `ts`.
    pub fn keyed_events() -> Self {
        Self::new(&[
            ("k", DataType::Utf8),
            ("ts", DataType::Timestamp(TimeUnit::Millisecond, None)),
        ])
    }

    /// A batch of [`TestInput::keyed_events`]: `keys[i]` at `ms[i]`.
    pub fn events(&self, keys: &[&str], ms: &[i64]) -> RecordBatch {
        self.batch(vec![
            Arc::new(StringArray::from(keys.to_vec())),
            Arc::new(TimestampMillisecondArray::from(ms.to_vec())),
        ])
    }

    /// A batch of the input's columns.
    pub fn batch(&self, columns: Vec<ArrayRef>) -> RecordBatch {
        RecordBatch::try_new(Arc::clone(&self.schema), columns).expect("columns of the schema")
    }

    /// The input as a DataFrame (what an operator is built over and plans once).
    pub fn frame(&self) -> DataFrame {
        self.ctx
            .read_table(self.slot.table().expect("a slot table"))
            .expect("a frame")
    }

    /// One batch at second `second` (batches one second apart): the operator's input
    /// plan over `batches`, then `process`; its output (none: empty).
    pub async fn run(
        &self,
        op: &mut dyn StreamOperator,
        second: i64,
        batches: Vec<RecordBatch>,
    ) -> Vec<RecordBatch> {
        self.run_with(op, second, None, batches).await
    }

    /// [`TestInput::run`] with the watermark of the operator's event-time source.
    pub async fn run_with(
        &self,
        op: &mut dyn StreamOperator,
        second: i64,
        input_watermark: Option<i64>,
        batches: Vec<RecordBatch>,
    ) -> Vec<RecordBatch> {
        let plan = {
            let planned = self.plan.lock().clone();
            match planned {
                Some(p) => p,
                None => {
                    let p = op.plan_input(&self.frame()).await.expect("planned");
                    *self.plan.lock() = Some(Arc::clone(&p));
                    p
                }
            }
        };
        self.slot.fill(batches);
        let plan = datafusion::physical_plan::execution_plan::reset_plan_states(plan)
            .expect("a plan to run again");
        let input = datafusion::physical_plan::collect(plan, self.ctx.task_ctx())
            .await
            .expect("the input plan runs");
        let ctx = OperatorContext {
            batch_time: Time::from_millis(second * 1000),
            zero_time: Time::from_millis(0),
            batch_interval: Duration::from_secs(1),
            input_watermark,
            end_of_input: false,
        };
        op.process(&ctx, input)
            .await
            .expect("processed")
            .unwrap_or_default()
    }
}

/// The rows of `batches` as `a,b,c` lines, sorted (order within a batch is the
/// operator's business).
pub(crate) fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let formatters: Vec<ArrayFormatter> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).expect("formattable"))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                formatters
                    .iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
    }
    out.sort();
    out
}
