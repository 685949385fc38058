//! The [`Sink`] trait and the in-memory sink.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use parking_lot::Mutex;

use crate::Result;
use crate::time::Time;

/// The idempotency key of one write: a replay of the same batch carries the same key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteKey {
    /// Stable across restarts of the same query.
    pub query_id: String,
    pub batch_time: Time,
    pub partition: usize,
}

/// Where a query's output goes.
///
/// # Contract
/// - [`Sink::open`] once at query start, with the schema of every batch to come.
/// - For each batch: [`Sink::write`] once per output partition (concurrently for
///   different partitions when [`Sink::writes_partitions_in_parallel`]), then
///   [`Sink::commit`] once. A batch whose commit did not
///   return may be written again after a restart with the same keys: a sink must then
///   overwrite what the first attempt wrote, or skip it if it had committed.
/// - What `commit` made visible is durable when it returns.
#[async_trait]
pub trait Sink: Debug + Send + Sync {
    /// The sink's name, used in errors and metrics.
    fn name(&self) -> &str;

    async fn open(&self, _query_id: &str, _schema: SchemaRef) -> Result<()> {
        Ok(())
    }

    /// Write one partition of one batch.
    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()>;

    /// Told before a query starts writing (before [`Sink::open`]) whether its rows
    /// are a changelog: `Some(i)` when column `i` (the last) holds each row's kind,
    /// `+I` or `-D` ([`crate::ops::Emits::Changelog`]). By default that column is
    /// written as any other (files, Kafka, the console: their reader applies it); a
    /// sink that cannot hold it refuses the query here.
    fn set_changelog(&self, _op: Option<usize>) -> Result<()> {
        Ok(())
    }

    /// Make the batch at `batch_time` visible.
    async fn commit(&self, query_id: &str, batch_time: Time, partitions: usize) -> Result<()>;

    /// Whether this sink acts on the query's event-time watermark
    /// ([`Sink::advance_watermark`]): the query must then have an operator with one
    /// (the SQL layer puts an [`crate::ops::EventTimeTracker`] over each stream with a
    /// declared watermark that such a query reads). `false` by default.
    fn needs_watermark(&self) -> bool {
        false
    }

    /// The query's watermark after a batch was committed, when it has one and
    /// [`Sink::needs_watermark`] says so (a files sink commits the partitions it
    /// has passed, Flink's partition commit). Called for every batch, replayed ones
    /// too, so it must be idempotent.
    async fn advance_watermark(&self, _watermark: Time) -> Result<()> {
        Ok(())
    }

    /// Whether the scheduler may run this sink's writes of a batch's partitions at once,
    /// each on its own task (so on its own core): a sink whose partitions are
    /// independent (a file each) and whose encoding costs CPU. `false` (the default):
    /// one after the other, in partition order.
    fn writes_partitions_in_parallel(&self) -> bool {
        false
    }

    /// On a cluster: how the tasks write this sink's partitions themselves
    /// ([`crate::cluster::write`]); `None` (the default): the driver writes them.
    fn write_on_cluster(&self) -> Option<crate::cluster::write::ClusterWrite> {
        None
    }

    /// What the tasks wrote for the batch at `batch_time` (the files their writer
    /// returned), before [`Sink::commit`] makes it visible.
    fn written_by_tasks(&self, _batch_time: Time, _written: Vec<String>) -> Result<()> {
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Keeps committed output in memory (Spark's memory sink): for tests, the REPL and
/// small results. Idempotent: a rewrite of a key replaces its rows.
#[derive(Debug, Default)]
pub struct MemorySink {
    name: String,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// By batch time, writing query and partition: queries writing one sink (the
    /// dead letters of a stream several queries read) keep their own rows.
    written: BTreeMap<(Time, String, usize), Vec<RecordBatch>>,
    committed: BTreeSet<Time>,
    schema: Option<SchemaRef>,
}

impl MemorySink {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            inner: Mutex::default(),
        })
    }

    /// Committed batch times, in order.
    pub fn batch_times(&self) -> Vec<Time> {
        self.inner.lock().committed.iter().copied().collect()
    }

    /// The committed rows of batch `t`.
    pub fn batch(&self, t: Time) -> Vec<RecordBatch> {
        let inner = self.inner.lock();
        if !inner.committed.contains(&t) {
            return Vec::new();
        }
        inner
            .written
            .range((t, String::new(), 0)..)
            .take_while(|((time, _, _), _)| *time == t)
            .flat_map(|(_, b)| b.iter().cloned())
            .collect()
    }

    /// Every committed row, in batch order.
    pub fn all(&self) -> Vec<RecordBatch> {
        self.batch_times()
            .into_iter()
            .flat_map(|t| self.batch(t))
            .collect()
    }

    /// The committed rows of the newest batch.
    pub fn last(&self) -> Vec<RecordBatch> {
        self.batch_times()
            .last()
            .map(|t| self.batch(*t))
            .unwrap_or_default()
    }

    /// The schema given at open.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.inner.lock().schema.clone()
    }
}

#[async_trait]
impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn open(&self, _query_id: &str, schema: SchemaRef) -> Result<()> {
        self.inner.lock().schema = Some(schema);
        Ok(())
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        self.inner.lock().written.insert(
            (key.batch_time, key.query_id.clone(), key.partition),
            batches,
        );
        Ok(())
    }

    async fn commit(&self, _query_id: &str, batch_time: Time, _partitions: usize) -> Result<()> {
        self.inner.lock().committed.insert(batch_time);
        Ok(())
    }
}

/// How a [`ConsoleSink`] prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleFormat {
    /// Spark's `print()` layout, its header naming the sink.
    Print,
    /// Data rows only, as CSV (one header line, before the first row).
    Csv,
    /// Data rows only, one JSON object per line.
    Json,
}

/// Prints every batch to stdout (`connector = 'console'`): Spark's `print()` layout, or
/// data rows only as CSV or JSON lines, so the output can be piped.
#[derive(Debug)]
pub struct ConsoleSink {
    name: String,
    max_rows: usize,
    format: ConsoleFormat,
    header_written: std::sync::atomic::AtomicBool,
    pending: Mutex<BTreeMap<(Time, usize), Vec<RecordBatch>>>,
}

impl ConsoleSink {
    /// Prints at most `max_rows` rows per batch (Spark's layout).
    pub fn new(name: impl Into<String>, max_rows: usize) -> Arc<Self> {
        Self::with_format(name, max_rows, ConsoleFormat::Print)
    }

    /// Prints in `format` (`max_rows` applies to Spark's layout).
    pub fn with_format(
        name: impl Into<String>,
        max_rows: usize,
        format: ConsoleFormat,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            max_rows,
            format,
            header_written: std::sync::atomic::AtomicBool::new(false),
            pending: Mutex::default(),
        })
    }

    fn render(&self, batch_time: Time, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match self.format {
            ConsoleFormat::Print => {
                let label = format!("sink {}", self.name);
                out = crate::print::format_print_named(
                    batch_time,
                    batches,
                    self.max_rows,
                    Some(&label),
                )?
                .into_bytes();
            }
            ConsoleFormat::Csv => {
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                let header = rows > 0
                    && !self
                        .header_written
                        .swap(true, std::sync::atomic::Ordering::Relaxed);
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .build(&mut out);
                for b in batches.iter().filter(|b| b.num_rows() > 0) {
                    w.write(b)?;
                }
            }
            ConsoleFormat::Json => {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Sink for ConsoleSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, key: &WriteKey, batches: Vec<RecordBatch>) -> Result<()> {
        self.pending
            .lock()
            .insert((key.batch_time, key.partition), batches);
        Ok(())
    }

    async fn commit(&self, _query_id: &str, batch_time: Time, _partitions: usize) -> Result<()> {
        let batches: Vec<RecordBatch> = {
            let mut pending = self.pending.lock();
            let keys: Vec<_> = pending
                .range((batch_time, 0)..=(batch_time, usize::MAX))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| pending.remove(&k))
                .flatten()
                .collect()
        };
        let text = self.render(batch_time, &batches)?;
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&text)?;
        out.flush()?;
        Ok(())
    }
}

/// `connector = 'blackhole'` (Flink's): takes every row and keeps none, for measuring a
/// query without a sink's cost (the query's progress still counts the rows out).
#[derive(Debug)]
pub struct BlackholeSink {
    name: String,
}

impl BlackholeSink {
    pub fn new(name: impl Into<String>) -> Arc<Self> {
        Arc::new(Self { name: name.into() })
    }
}

#[async_trait]
impl Sink for BlackholeSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&self, _key: &WriteKey, _batches: Vec<RecordBatch>) -> Result<()> {
        Ok(())
    }

    async fn commit(&self, _query_id: &str, _batch_time: Time, _partitions: usize) -> Result<()> {
        Ok(())
    }
}
