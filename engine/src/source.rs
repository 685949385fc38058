//! The [`Source`] trait: how a batch learns what data it covers and reads it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::time::Time;

/// What the scheduler tells a source about the batch being planned.
#[derive(Debug, Clone)]
pub struct BatchContext {
    /// Position of the batch in the query, from 0.
    pub batch_id: u64,
    /// The batch time.
    pub batch_time: Time,
    /// The batch interval (for rates given per second).
    pub interval: std::time::Duration,
    /// At most this many records in this batch (rate limits, back pressure).
    pub max_records: Option<u64>,
}

/// What one batch of one source covers: an offset range, a list of files, a number of
/// queue elements. Written to the offset log before the batch runs, so a replay after a
/// crash reads exactly the same data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceRange {
    /// Where the batch starts, in the source's own terms.
    pub start: serde_json::Value,
    /// Where it ends (exclusive), in the source's own terms.
    pub end: serde_json::Value,
}

impl SourceRange {
    /// True when the range covers nothing.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// A record a source could not decode, set aside under the stream's
/// `on_error = 'skip' | 'dead_letter'` policy (`fail` makes it an error instead).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Where it was: `host:port line N`, `file line N`, `topic/partition@offset`.
    pub position: String,
    /// The record as it was received.
    pub record: String,
    /// Why it was rejected.
    pub error: String,
}

/// What [`Source::read_batch`] returns: the rows, and the records set aside.
#[derive(Debug, Default)]
pub struct SourceBatch {
    /// The rows, one `Vec` per source partition.
    pub partitions: Vec<Vec<RecordBatch>>,
    /// Records that could not be decoded, set aside under `on_error = 'skip' |
    /// 'dead_letter'`. The scheduler counts them and writes them to the stream's
    /// dead-letter sink, if it has one.
    pub rejected: Vec<Rejected>,
}

impl SourceBatch {
    /// Rows, with nothing set aside.
    pub fn rows(partitions: Vec<Vec<RecordBatch>>) -> Self {
        SourceBatch {
            partitions,
            rejected: Vec::new(),
        }
    }
}

/// Whether a source keeps a batch to [`BatchContext::max_records`]
/// (`max_records_per_batch`, `backpressure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordLimit {
    Honoured,
    /// It cannot; `hint` says what to use instead (shown in the error, may be empty).
    Unsupported {
        hint: String,
    },
}

/// The columns a dead-letter sink of rejected records receives.
pub fn rejected_schema() -> SchemaRef {
    use datafusion::arrow::datatypes::{DataType, Field};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("source", DataType::Utf8, false),
        Field::new("position", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
    ]))
}

/// A source of micro-batches.
///
/// # Contract
/// For every batch the scheduler calls, in order and never concurrently for one source:
/// 1. [`Source::plan_batch`] — decide what the batch covers and return it as a
///    [`SourceRange`]; nothing is read yet. The range is made durable before step 2.
/// 2. [`Source::read_batch`] — read exactly that range as `RecordBatch`es of
///    [`Source::schema`], one `Vec` per source partition, with the records it set
///    aside. A replayable source must return the same data when called again with
///    the same range.
/// 3. [`Source::commit`] — after every sink committed the batch; the source may free
///    what the range covered (a receiver's write-ahead log, for instance).
///
/// Errors name the source and the position at fault (file and line, topic, partition
/// and offset, host and port).
#[async_trait]
pub trait Source: Debug + Send + Sync {
    /// The stream's name, used in errors and metrics.
    fn name(&self) -> &str;

    /// The schema every batch has.
    fn schema(&self) -> SchemaRef;

    /// How many partitions a batch of this source has (Kafka: one per topic partition).
    fn partitions(&self) -> usize {
        1
    }

    /// What the source reads, as far as a checkpoint's offsets and the state built
    /// from them depend on it (a topic, a folder, a generator's rate): part of the
    /// query's fingerprint, so a checkpoint is not resumed by a source reading other
    /// data. Options that do not change what is read (rate limits, `on_error`) are
    /// left out, so they may change across restarts.
    fn describe(&self) -> String {
        String::new()
    }

    /// When the query keeps a checkpoint: the folder of it where this source keeps
    /// what it must remember across restarts (the `files` source: which files it
    /// took). Called once, before [`Source::open`].
    fn use_checkpoint(&self, _store: crate::checkpoint::SourceStore) {}

    /// Called once when the query starts, before the first batch. `projection`: the
    /// columns of [`Source::schema`] the query reads (indices, ascending), when some
    /// go unread. A source may skip decoding the others and fill them with any value
    /// of their type (as Spark's CSV reader prunes columns): the plans never look at
    /// them.
    async fn open(&self, _projection: Option<&[usize]>) -> Result<()> {
        Ok(())
    }

    /// For the `AvailableNow` trigger: remember what the source holds now; later
    /// batches read only up to there, and [`Source::is_drained`] says when all of it
    /// has been planned.
    async fn freeze_available_now(&self) -> Result<()> {
        Ok(())
    }

    /// Step 1: what the batch covers.
    async fn plan_batch(&self, batch: &BatchContext) -> Result<SourceRange>;

    /// Step 2: the data of `range`, one `Vec` per partition, with the records set
    /// aside as bad input.
    async fn read_batch(&self, range: &SourceRange) -> Result<SourceBatch>;

    /// On a cluster: `range` as what the executors read themselves, in about
    /// `partitions` parts ([`crate::cluster::scan`]), instead of
    /// [`Source::read_batch`] on the driver. `None` (the default): the driver reads
    /// it and the rows ship with the plans.
    fn cluster_scan(
        &self,
        _range: &SourceRange,
        _partitions: usize,
    ) -> Result<Option<crate::cluster::scan::ClusterScan>> {
        Ok(None)
    }

    /// After a restart from a checkpoint: the last planned batch covered `last`; the
    /// next [`Source::plan_batch`] starts where it ended, and [`Source::read_batch`]
    /// may be asked for recorded ranges again. Sources whose data cannot be read again
    /// after a restart refuse.
    async fn restore(&self, _last: &SourceRange) -> Result<()> {
        Err(Error::Plan(format!(
            "stream {}: its data cannot be read again after a restart, so a query cannot resume from a checkpoint; \
             use a replayable source (kafka, files, socket with wal = 'true', rate, nexmark) or delete the checkpoint",
            self.name()
        )))
    }

    /// Step 5: the batch that covered `range` is committed.
    async fn commit(&self, _range: &SourceRange) -> Result<()> {
        Ok(())
    }

    /// Whether everything the source holds (up to the frozen end under
    /// `AvailableNow`) has been planned.
    async fn is_drained(&self) -> Result<bool>;

    /// Called once when the query stops.
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Whether [`Source::plan_batch`] keeps to [`BatchContext::max_records`].
    fn record_limit(&self) -> RecordLimit {
        RecordLimit::Unsupported {
            hint: String::new(),
        }
    }

    /// How far the last planned batch ended behind what the source held then, in the
    /// source's own unit (Kafka: records, summed over partitions; files: files not yet
    /// taken), or `None` when the source cannot tell. A metric.
    fn lag(&self) -> Option<u64> {
        None
    }

    /// Whether rows this source produced that make a query's expression fail (a cast,
    /// a division by zero) are set aside as bad records (`on_error = 'skip' |
    /// 'dead_letter'`) rather than failing the query.
    fn sets_aside_bad_rows(&self) -> bool {
        false
    }
}

/// Checks that `batch` has exactly the fields of `declared`, naming the source and the
/// first field that differs.
pub fn check_schema(source: &str, declared: &Schema, batch: &RecordBatch) -> Result<()> {
    let err = |message: String| {
        Err(Error::Schema {
            source_name: source.to_string(),
            message,
        })
    };
    let actual = batch.schema();
    for (i, field) in declared.fields().iter().enumerate() {
        let Some(got) = actual.fields().get(i) else {
            return err(format!(
                "field '{}' ({}) is missing from the data",
                field.name(),
                field.data_type()
            ));
        };
        if got.name() != field.name() {
            return err(format!(
                "field {} should be '{}' but the data has '{}'",
                i + 1,
                field.name(),
                got.name()
            ));
        }
        if got.data_type() != field.data_type() {
            return err(format!(
                "field '{}' is declared {} but the data has {}",
                field.name(),
                field.data_type(),
                got.data_type()
            ));
        }
        if !field.is_nullable() && batch.column(i).null_count() > 0 {
            return err(format!(
                "field '{}' is declared NOT NULL but the data has {} nulls",
                field.name(),
                batch.column(i).null_count()
            ));
        }
    }
    if actual.fields().len() > declared.fields().len() {
        let extra = &actual.fields()[declared.fields().len()];
        return err(format!(
            "the data has field '{}' ({}) that the stream does not declare",
            extra.name(),
            extra.data_type()
        ));
    }
    Ok(())
}

/// Re-labels `batch` with the declared schema (same types, maybe other metadata or
/// nullability) after [`check_schema`] accepted it.
pub fn with_declared_schema(declared: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema_ref() == declared {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new(
        declared.clone(),
        batch.columns().to_vec(),
    )?)
}

/// `batch` as `schema`: same columns in the same order, re-labelled, and cast where a
/// type differs (e.g. `Utf8View` where `Utf8` is expected).
pub fn conform(schema: &SchemaRef, batch: RecordBatch) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    let columns = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            if c.data_type() == f.data_type() {
                Ok(Arc::clone(c))
            } else {
                datafusion::arrow::compute::cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(
        Arc::clone(schema),
        columns,
        &datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(batch.num_rows())),
    )?)
}
