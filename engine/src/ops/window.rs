//! `BatchWindow`: Spark's `window(length, slide)` over batch time. Keeps the input of
//! the last `length / interval` batches and, at every slide, emits all of it.
//!
//! ```text
//!  batch t ─▶ buffer[(t, rows)] ─ evict t' <= t - length ─▶ at slide times: all rows
//! ```

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::{OperatorContext, StreamOperator};
use crate::Result;
use crate::time::{Time, format_duration};

/// A sliding window over batch time: the rows of the batches in `(t - length, t]`,
/// emitted at every `slide`.
pub struct BatchWindow {
    schema: SchemaRef,
    length: Duration,
    slide: Duration,
    buffer: VecDeque<(Time, Vec<RecordBatch>)>,
}

impl BatchWindow {
    /// Lengths and slides must already be checked against the batch interval.
    pub fn new(schema: SchemaRef, length: Duration, slide: Duration) -> Self {
        Self {
            schema,
            length,
            slide,
            buffer: VecDeque::new(),
        }
    }
}

#[async_trait]
impl StreamOperator for BatchWindow {
    fn name(&self) -> String {
        format!(
            "BatchWindow(length={}, slide={})",
            format_duration(self.length),
            format_duration(self.slide)
        )
    }

    /// The name checkpoints were fingerprinted under before the rename.
    fn describe(&self) -> String {
        format!(
            "WindowExec(length={}, slide={})",
            format_duration(self.length),
            format_duration(self.slide)
        )
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>> {
        let t = ctx.batch_time;
        self.buffer.push_back((t, input));
        let oldest_kept = t.minus(self.length);
        while self
            .buffer
            .front()
            .is_some_and(|(time, _)| *time <= oldest_kept)
        {
            self.buffer.pop_front();
        }
        if !t.is_multiple_of(ctx.zero_time, self.slide) {
            return Ok(None);
        }
        Ok(Some(
            self.buffer
                .iter()
                .flat_map(|(_, batches)| batches.iter().cloned())
                .collect(),
        ))
    }

    fn state_stats(&self) -> crate::state::StateStats {
        let batches = || self.buffer.iter().flat_map(|(_, b)| b.iter());
        crate::state::StateStats {
            rows: batches().map(|b| b.num_rows() as u64).sum(),
            memory_bytes: batches().map(|b| b.get_array_memory_size() as u64).sum(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_input::{TestInput, rows};

    #[tokio::test]
    async fn the_last_length_of_batches_every_slide() {
        let input = TestInput::keyed_events();
        let mut op = BatchWindow::new(
            Arc::clone(&input.schema),
            Duration::from_secs(2),
            Duration::from_secs(2),
        );
        let at = |k: &str, ms: i64| input.events(&[k], &[ms]);
        let out = input.run(&mut op, 1, vec![at("a", 1)]).await;
        assert!(out.is_empty(), "1 s is not a slide time");
        let out = input.run(&mut op, 2, vec![at("b", 2)]).await;
        assert_eq!(
            rows(&out),
            ["a,1970-01-01T00:00:00.001", "b,1970-01-01T00:00:00.002"]
        );
        input.run(&mut op, 3, vec![at("c", 3)]).await;
        let out = input.run(&mut op, 4, vec![at("d", 4)]).await;
        assert_eq!(
            rows(&out),
            ["c,1970-01-01T00:00:00.003", "d,1970-01-01T00:00:00.004"],
            "the batches of (2 s, 4 s]"
        );
    }
}
