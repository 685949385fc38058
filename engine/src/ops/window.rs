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

    fn state_rows(&self) -> usize {
        self.buffer
            .iter()
            .flat_map(|(_, b)| b.iter())
            .map(|b| b.num_rows())
            .sum()
    }

    fn state_bytes(&self) -> usize {
        self.buffer
            .iter()
            .flat_map(|(_, b)| b.iter())
            .map(|b| b.get_array_memory_size())
            .sum()
    }
}
