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
    /// How far each source that can tell ended behind what it held ([`crate::Source::lag`]).
    pub source_lag: Vec<(String, u64)>,
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
    /// Memory those rows take, in bytes (an estimate).
    pub state_bytes: u64,
    /// The query's event-time watermark after the batch (the lowest of its operators').
    pub watermark: Option<Time>,
    /// Rows dropped because they were older than the watermark.
    pub late_rows: u64,
    /// Input records the sources could not decode (skipped or dead-lettered).
    pub rejected_rows: u64,
    /// Sink writes of this batch that failed and were tried again.
    pub sink_retries: u64,
    /// Each stateful operator's state after the batch, in the query's operator order.
    pub operators: Vec<OperatorStateInfo>,
    /// Where the batch ran, when its query runs on a cluster (none: in this process).
    pub cluster: Option<ClusterInfo>,
}

/// What a cluster did for one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The scheduler, `df://host:port`.
    pub url: String,
    /// Ballista jobs the batch ran: one per plan executed there (each output's plan,
    /// each stateful operator's input plan).
    pub jobs: u64,
    /// The task attempts those jobs launched, retries included, as the scheduler
    /// reported them; without its report, the tasks they planned (one per partition
    /// of each stage: a stage ends at each exchange of the plan, and at its root).
    pub tasks: u64,
    /// Task attempts that failed or were lost with their executor and ran again (none
    /// when the scheduler's report of the batch's jobs did not come).
    pub retries: Option<u64>,
    /// The executors alive after the batch, as the scheduler counts them.
    pub executors: Option<u64>,
    /// The streams whose batch the executors read themselves (the others' rows were
    /// read here and shipped with the jobs).
    pub read_by_executors: Vec<String>,
    /// Of those, the streams whose rows are not counted (the scheduler's report of the
    /// batch's jobs did not come, or no job read them): their input rows read 0.
    pub uncounted: Vec<String>,
    /// The sinks the tasks wrote themselves (the driver committed what they wrote).
    pub written_by_tasks: Vec<String>,
}

/// One stateful operator's state after a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperatorStateInfo {
    /// The operator's name (`RunningAggregate`, `WindowAggregate`, ...).
    pub name: String,
    pub rows: u64,
    /// Memory its state takes (an estimate).
    pub memory_bytes: u64,
    /// Bytes of its state spilled to local disk (`state_memory`).
    pub spilled_bytes: u64,
    /// Keys evicted by `state_ttl` since the query started.
    pub evicted_rows: u64,
    /// Bytes the batch's checkpoint wrote for it (0 when the batch wrote none).
    pub checkpoint_bytes: u64,
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
    fn on_terminated(&self, _error: Option<&crate::Error>) {}

    /// The query failed and starts again from its checkpoint (its restart policy);
    /// `attempt` counts from 1.
    fn on_restarted(&self, _attempt: u32, _error: &crate::Error) {}
}

impl BatchInfo {
    /// The batch as one JSON progress record, in the shape of Spark's
    /// `StreamingQueryProgress` (`id`, `batchId`, `numInputRows`, rates, `durationMs`,
    /// `stateOperators`, `sources` with their offsets, `sink`).
    pub fn progress(&self, query: &str) -> serde_json::Value {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let input = self.num_input_rows();
        let processed_per_s = if self.processing_time.is_zero() {
            0.0
        } else {
            input as f64 / self.processing_time.as_secs_f64()
        };
        serde_json::json!({
            "name": query,
            "batchId": self.batch_id,
            "batchTimeMs": self.batch_time.as_millis(),
            "numInputRows": input,
            "processedRowsPerSecond": processed_per_s.round(),
            "durationMs": {
                "schedulingDelay": ms(self.scheduling_delay),
                "processing": ms(self.processing_time),
                "total": ms(self.total_delay),
            },
            "stateOperators": {
                "numRowsTotal": self.state_rows,
                "memoryUsedBytes": self.state_bytes,
                "operators": self.operators.iter().map(|o| serde_json::json!({
                    "name": o.name,
                    "numRowsTotal": o.rows,
                    "memoryUsedBytes": o.memory_bytes,
                    "spilledBytes": o.spilled_bytes,
                    "numRowsEvicted": o.evicted_rows,
                    "checkpointBytes": o.checkpoint_bytes,
                })).collect::<Vec<_>>(),
            },
            "eventTime": { "watermark": self.watermark.map(|w| w.as_millis()) },
            "lateRows": self.late_rows,
            "rejectedRows": self.rejected_rows,
            "sinkRetries": self.sink_retries,
            "sources": self.input_rows.iter().map(|(name, rows)| {
                let range = self
                    .source_ranges
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, r)| r);
                let lag = self.source_lag.iter().find(|(n, _)| n == name).map(|(_, l)| *l);
                serde_json::json!({
                    "description": name,
                    "startOffset": range.map(|r| r.start.clone()),
                    "endOffset": range.map(|r| r.end.clone()),
                    "numInputRows": rows,
                    "lag": lag,
                })
            }).collect::<Vec<_>>(),
            "sink": { "numOutputRows": self.output_rows },
            "cluster": self.cluster.as_ref().map(|c| serde_json::json!({
                "url": c.url,
                "jobs": c.jobs,
                "tasks": c.tasks,
                "retries": c.retries,
                "executors": c.executors,
                "readByExecutors": c.read_by_executors,
                "uncountedSources": c.uncounted,
                "writtenByTasks": c.written_by_tasks,
            })),
        })
    }
}

/// Appends every completed batch's [`BatchInfo::progress`] to a file as one JSON line
/// (`--progress-log FILE`). A failed write is logged as a warning naming the file; it
/// never stops the query.
pub struct ProgressLog {
    path: std::path::PathBuf,
    query: String,
    file: parking_lot::Mutex<std::fs::File>,
}

impl ProgressLog {
    /// Opens (creating, appending to) `path` for the query named `query`.
    pub fn open(path: impl Into<std::path::PathBuf>, query: &str) -> crate::Result<Self> {
        let path = path.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| crate::Error::Plan(format!("progress log {}: {e}", path.display())))?;
        Ok(Self {
            path,
            query: query.to_string(),
            file: parking_lot::Mutex::new(file),
        })
    }
}

impl StreamingListener for ProgressLog {
    fn on_batch_completed(&self, info: &BatchInfo) {
        use std::io::Write;
        let mut line = info.progress(&self.query).to_string();
        line.push('\n');
        if let Err(e) = self.file.lock().write_all(line.as_bytes()) {
            log::warn!(
                "progress log {}: batch {} not recorded: {e}",
                self.path.display(),
                info.batch_id
            );
        }
    }
}
