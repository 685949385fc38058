//! Per-batch information and the listeners that receive it.

use std::time::Duration;

use crate::source::SourceRange;
use crate::time::Time;

/// What happened in one batch, as Spark's `BatchInfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInfo {
    pub batch_id: u64,
    pub batch_time: Time,
    /// Rows read, per source, in the order the sources were added.
    pub input_rows: Vec<(String, u64)>,
    /// What each source's part of the batch covered.
    pub source_ranges: Vec<(String, SourceRange)>,
    /// From the batch time to the start of processing.
    pub scheduling_delay: Duration,
    /// From the start to the end of processing.
    pub processing_time: Duration,
    /// Scheduling delay plus processing time.
    pub total_delay: Duration,
    /// Rows delivered to all outputs.
    pub output_rows: u64,
    /// Rows held by stateful operators after the batch.
    pub state_rows: u64,
    /// Rows dropped because they were older than the watermark.
    pub late_rows: u64,
    /// Input records the sources could not decode (skipped or dead-lettered).
    pub rejected_rows: u64,
}

impl BatchInfo {
    /// Total input rows over all sources.
    pub fn num_input_rows(&self) -> u64 {
        self.input_rows.iter().map(|(_, n)| n).sum()
    }
}

/// Receives scheduler events. Called on the scheduler's task: keep it quick.
pub trait StreamingListener: Send + Sync {
    fn on_batch_started(&self, _batch_id: u64, _batch_time: Time) {}
    fn on_batch_completed(&self, _info: &BatchInfo) {}
    /// The query stopped; `error` says why if it failed.
    fn on_terminated(&self, _error: Option<&str>) {}
}
