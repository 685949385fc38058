//! The queue source, Spark's `queueStream`: a queue of `RecordBatch` sets that the
//! program fills, one element per batch or everything queued at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use serde_json::json;

use crate::error::Result;
use crate::source::{
    BatchContext, RecordLimit, Source, SourceBatch, SourceRange, check_schema, with_declared_schema,
};

/// A queue of batch sets. Elements may be pushed before or while the query runs.
///
/// The queue is not replayable: what a batch took is gone once the batch committed,
/// as with Spark's `queueStream`.
#[derive(Debug)]
pub struct QueueSource {
    name: String,
    schema: SchemaRef,
    one_at_a_time: bool,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    queue: VecDeque<Vec<RecordBatch>>,
    /// Elements pushed so far; element `i` has position `i`.
    pushed: u64,
    /// Elements planned so far.
    planned: u64,
    /// Planned, not yet read: by end position.
    in_flight: BTreeMap<u64, Vec<Vec<RecordBatch>>>,
    /// Under `AvailableNow`: plan only up to here.
    frozen_end: Option<u64>,
}

impl QueueSource {
    /// A queue source named `name` whose elements have `schema`. With `one_at_a_time`
    /// each batch takes one element; otherwise it takes everything queued.
    pub fn new(name: impl Into<String>, schema: SchemaRef, one_at_a_time: bool) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            schema,
            one_at_a_time,
            state: Mutex::new(QueueState::default()),
        })
    }

    /// Append one element (the batches of one future batch). Refused, with the field at
    /// fault named, when a batch does not have the declared schema.
    pub fn push(&self, batches: Vec<RecordBatch>) -> Result<()> {
        let mut checked = Vec::with_capacity(batches.len());
        for b in batches {
            check_schema(&self.name, &self.schema, &b)?;
            checked.push(with_declared_schema(&self.schema, b)?);
        }
        let mut st = self.state.lock();
        st.queue.push_back(checked);
        st.pushed += 1;
        Ok(())
    }

    /// Elements queued and not yet taken by a batch.
    pub fn len(&self) -> usize {
        self.state.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl Source for QueueSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn freeze_available_now(&self) -> Result<()> {
        let mut st = self.state.lock();
        st.frozen_end = Some(st.pushed);
        Ok(())
    }

    async fn plan_batch(&self, _batch: &BatchContext) -> Result<SourceRange> {
        let mut st = self.state.lock();
        let start = st.planned;
        let limit = st.frozen_end.unwrap_or(u64::MAX);
        let available = (st.queue.len() as u64).min(limit.saturating_sub(start));
        let take = if self.one_at_a_time {
            available.min(1)
        } else {
            available
        };
        let mut element = Vec::new();
        for _ in 0..take {
            if let Some(batches) = st.queue.pop_front() {
                element.extend(batches);
            }
        }
        let end = start + take;
        st.planned = end;
        if take > 0 {
            st.in_flight.insert(end, vec![element]);
        }
        Ok(SourceRange {
            start: json!(start),
            end: json!(end),
        })
    }

    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch> {
        if range.is_empty() {
            return Ok(SourceBatch::rows(vec![Vec::new()]));
        }
        let end = range.end.as_u64().unwrap_or_default();
        let mut st = self.state.lock();
        match st.in_flight.remove(&end) {
            Some(data) => Ok(SourceBatch::rows(data)),
            None => Err(crate::Error::Source {
                source_name: self.name.clone(),
                message: format!(
                    "queue elements {}..{end} are gone: a queue source cannot replay a batch",
                    range.start
                ),
                retryable: false,
            }),
        }
    }

    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Unsupported {
            hint: "; a batch takes whole queued elements".into(),
        }
    }

    async fn is_drained(&self) -> Result<bool> {
        let st = self.state.lock();
        Ok(match st.frozen_end {
            Some(end) => st.planned >= end,
            None => st.queue.is_empty(),
        })
    }
}
