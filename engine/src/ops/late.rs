//! `LateRowFilter`: a stream's watermark applied where the stream enters a query.
//! Rows older than the watermark are late: they leave the pipeline, are counted, and
//! are written to a dead-letter sink — never dropped silently. Used for streams
//! declared with `late_rows = 'dead_letter'`. [`StreamWatermark`]: the same watermark
//! kept from the stream's time column, emitting nothing, for a sink that acts on it (a
//! stateless query has no other operator to keep one).
//!
//! ```text
//!  source batch ─▶ ts >= watermark ─▶ on to the query
//!               └▶ ts <  watermark ─▶ dead-letter sink (keyed by stream and batch time)
//!  watermark = max(ts seen) - delay, advanced after each batch
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, BooleanArray, Int64Array};
use datafusion::arrow::compute::kernels::cmp::lt;
use datafusion::arrow::compute::{filter_record_batch, max, not, prep_null_mask_filter};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::physical_plan::ExecutionPlan;

use super::{OperatorContext, StreamOperator};
use crate::sink::{Sink, WriteKey};
use crate::{Result, plan_err};

/// A stream's declared watermark (`WATERMARK FOR ts AS ts - delay`) where the stream
/// enters a query: its time column, the delay, and the latest time read less it.
struct Declared {
    stream: String,
    schema: SchemaRef,
    time_index: usize,
    delay: Duration,
    watermark: Option<i64>,
}

impl Declared {
    fn try_new(
        stream: &str,
        schema: SchemaRef,
        time_index: usize,
        delay: Duration,
    ) -> Result<Self> {
        match schema.fields().get(time_index).map(|f| f.data_type()) {
            Some(DataType::Timestamp(_, _)) => {}
            other => {
                return plan_err!(
                    "stream {stream}: the watermark column must be a timestamp, got {other:?}"
                );
            }
        }
        Ok(Self {
            stream: stream.to_string(),
            schema,
            time_index,
            delay,
            watermark: None,
        })
    }

    fn millis(&self, batch: &RecordBatch) -> Result<Int64Array> {
        super::timestamp_millis(batch.column(self.time_index), "the watermark column")
    }

    /// After a batch whose latest time was `latest`: that less the delay when it is
    /// ahead; past every time at the end of finite input.
    fn advance(&mut self, latest: Option<i64>, ctx: &OperatorContext) {
        if ctx.end_of_input {
            self.watermark = Some(super::END_OF_INPUT_WATERMARK);
        } else if let Some(l) = latest {
            let candidate = l.saturating_sub(self.delay.as_millis() as i64);
            self.watermark = Some(self.watermark.map_or(candidate, |w| w.max(candidate)));
        }
    }

    /// Only the watermark is kept.
    fn snapshot(&self) -> crate::checkpoint::OperatorState {
        crate::checkpoint::OperatorState {
            batches: Vec::new(),
            meta: serde_json::json!({ "watermark": self.watermark }),
        }
    }

    fn restore(&mut self, state: &crate::checkpoint::OperatorState) {
        self.watermark = state.meta["watermark"].as_i64();
    }
}

pub struct LateRowFilter {
    declared: Declared,
    dead_letter: Arc<dyn Sink>,
    late_last_batch: u64,
}

impl LateRowFilter {
    /// Late rows of `stream` (by its column `time_index` and watermark `delay`) go to
    /// `dead_letter`.
    pub fn try_new(
        stream: &str,
        schema: SchemaRef,
        time_index: usize,
        delay: Duration,
        dead_letter: Arc<dyn Sink>,
    ) -> Result<Self> {
        Ok(Self {
            declared: Declared::try_new(stream, schema, time_index, delay)?,
            dead_letter,
            late_last_batch: 0,
        })
    }
}

#[async_trait]
impl StreamOperator for LateRowFilter {
    fn name(&self) -> String {
        format!("LateRowFilter({})", self.declared.stream)
    }

    /// The name checkpoints were fingerprinted under before the rename.
    fn describe(&self) -> String {
        format!("LateRowsExec({})", self.declared.stream)
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.declared.schema)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        self.dead_letter
            .open(&self.declared.stream, Arc::clone(&self.declared.schema))
            .await?;
        Ok(input.clone().create_physical_plan().await?)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let mut kept = Vec::with_capacity(input.len());
        let mut late = Vec::new();
        let mut latest: Option<i64> = None;
        for b in input {
            if b.num_rows() == 0 {
                continue;
            }
            let ms = self.declared.millis(&b)?;
            if let Some(m) = max(&ms) {
                latest = Some(latest.map_or(m, |l| l.max(m)));
            }
            let Some(wm) = self.declared.watermark else {
                kept.push(b);
                continue;
            };
            // Null times are never late.
            let is_late: BooleanArray = lt(&ms, &Int64Array::new_scalar(wm))?;
            let n = is_late.true_count();
            if n == 0 {
                kept.push(b);
                continue;
            }
            let is_late = if is_late.null_count() > 0 {
                prep_null_mask_filter(&is_late)
            } else {
                is_late
            };
            late.push(filter_record_batch(&b, &is_late)?);
            let on_time = filter_record_batch(&b, &not(&is_late)?)?;
            if on_time.num_rows() > 0 {
                kept.push(on_time);
            }
        }
        self.late_last_batch = late.iter().map(|b| b.num_rows() as u64).sum();
        if !late.is_empty() {
            // Keyed by stream and batch time: every query reading the stream writes
            // the same rows under the same key, so the sink holds them once.
            let key = WriteKey {
                query_id: self.declared.stream.clone(),
                batch_time: ctx.batch_time,
                partition: 0,
            };
            self.dead_letter.write(&key, late).await?;
            self.dead_letter
                .commit(&self.declared.stream, ctx.batch_time, 1)
                .await?;
        }
        self.declared.advance(latest, ctx);
        Ok(Some(kept))
    }

    /// Only the watermark.
    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats::default()
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(self.declared.snapshot())
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.declared.restore(&state);
        Ok(())
    }

    fn late_rows(&self) -> u64 {
        self.late_last_batch
    }

    fn watermark(&self) -> Option<i64> {
        self.declared.watermark
    }
}

/// A stream's declared watermark (`WATERMARK FOR ts AS ts - delay`): the latest time
/// read less the delay. It reads the stream's time column beside the query (which
/// reads the stream as it would without it) and emits nothing: the SQL layer adds
/// one per stream a query reads when its sink acts on the watermark (a files sink
/// committing partitions by time), so that a stateless query has one.
pub struct StreamWatermark {
    declared: Declared,
}

impl StreamWatermark {
    /// The watermark of `stream` by its column `time_index` (a timestamp) and `delay`.
    pub fn try_new(
        stream: &str,
        schema: SchemaRef,
        time_index: usize,
        delay: Duration,
    ) -> Result<Self> {
        Ok(Self {
            declared: Declared::try_new(stream, schema, time_index, delay)?,
        })
    }
}

#[async_trait]
impl StreamOperator for StreamWatermark {
    fn name(&self) -> String {
        format!("StreamWatermark({})", self.declared.stream)
    }

    fn describe(&self) -> String {
        format!(
            "StreamWatermark({}, column {}, delay {} ms)",
            self.declared.stream,
            self.declared.time_index,
            self.declared.delay.as_millis()
        )
    }

    fn explain(&self) -> String {
        format!(
            "StreamWatermark: {}'s watermark, {} - {}, kept for the sink",
            self.declared.stream,
            self.declared.schema.field(self.declared.time_index).name(),
            crate::time::format_duration(self.declared.delay)
        )
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.declared.schema)
    }

    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(input.clone().create_physical_plan().await?)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let mut latest: Option<i64> = None;
        for b in input.iter().filter(|b| b.num_rows() > 0) {
            let ms = self.declared.millis(b)?;
            if let Some(m) = max(&ms) {
                latest = Some(latest.map_or(m, |l| l.max(m)));
            }
        }
        self.declared.advance(latest, ctx);
        Ok(None)
    }

    /// Only the watermark.
    fn state_stats(&self) -> crate::state::StateStats {
        crate::state::StateStats::default()
    }

    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Ok(self.declared.snapshot())
    }

    fn restore(&mut self, state: crate::checkpoint::OperatorState) -> Result<()> {
        self.declared.restore(&state);
        Ok(())
    }

    fn watermark(&self) -> Option<i64> {
        self.declared.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemorySink;
    use crate::ops::test_input::{TestInput, rows};

    #[tokio::test]
    async fn rows_older_than_the_watermark_go_to_the_dead_letter_counted() {
        let input = TestInput::keyed_events();
        let dead = MemorySink::new("late");
        let mut op = LateRowFilter::try_new(
            "ev",
            Arc::clone(&input.schema),
            1,
            Duration::from_secs(1),
            Arc::clone(&dead) as Arc<dyn Sink>,
        )
        .unwrap();
        let out = input
            .run(
                &mut op,
                1,
                vec![input.events(&["a", "b"], &[5_000, 10_000])],
            )
            .await;
        assert_eq!(rows(&out).len(), 2, "no watermark yet: nothing is late");
        // Watermark 9 s: 8 s is late, 12 s is not.
        let out = input
            .run(
                &mut op,
                2,
                vec![input.events(&["c", "d"], &[8_000, 12_000])],
            )
            .await;
        assert_eq!(rows(&out), ["d,1970-01-01T00:00:12"]);
        assert_eq!(op.late_rows(), 1);
        assert_eq!(rows(&dead.all()), ["c,1970-01-01T00:00:08"]);
        assert!(
            LateRowFilter::try_new("ev", Arc::clone(&input.schema), 0, Duration::ZERO, dead)
                .is_err(),
            "the watermark column must be a timestamp"
        );
    }

    /// It emits nothing; the watermark is the latest time less the delay, never goes
    /// back, comes back from a snapshot and passes every time at the end of input.
    #[tokio::test]
    async fn a_stream_watermark_emits_nothing_and_keeps_the_latest_time_less_the_delay() {
        let input = TestInput::keyed_events();
        let mut op =
            StreamWatermark::try_new("ev", Arc::clone(&input.schema), 1, Duration::from_secs(1))
                .unwrap();
        let out = input
            .run(
                &mut op,
                1,
                vec![input.events(&["a", "b"], &[5_000, 10_000])],
            )
            .await;
        assert!(out.is_empty());
        assert_eq!(op.watermark(), Some(9_000));
        input
            .run(&mut op, 2, vec![input.events(&["c"], &[2_000])])
            .await;
        assert_eq!(op.watermark(), Some(9_000), "an older row moves nothing");
        let mut back =
            StreamWatermark::try_new("ev", Arc::clone(&input.schema), 1, Duration::from_secs(1))
                .unwrap();
        back.restore(op.snapshot().unwrap()).unwrap();
        assert_eq!(back.watermark(), Some(9_000));
        let end = OperatorContext {
            batch_time: crate::Time::from_millis(3_000),
            zero_time: crate::Time::from_millis(0),
            batch_interval: Duration::from_secs(1),
            input_watermark: None,
            end_of_input: true,
        };
        back.process(&end, Vec::new()).await.unwrap();
        assert_eq!(back.watermark(), Some(crate::ops::END_OF_INPUT_WATERMARK));
        assert!(
            StreamWatermark::try_new("ev", Arc::clone(&input.schema), 0, Duration::ZERO).is_err(),
            "the watermark column must be a timestamp"
        );
    }
}
