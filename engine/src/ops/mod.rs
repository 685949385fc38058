//! Stateful operators: the parts of a pipeline that DataFusion's plan for one batch
//! cannot express, because they carry something from one batch to the next.
//!
//! ```text
//!  input DataFrame ──plan_input (once)──▶ physical plan ──execute (per batch)──▶
//!      RecordBatches ──StreamOperator::process──▶ output slot ──▶ downstream plans
//! ```

use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::dataframe::DataFrame;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::Arc;

use crate::Result;
use crate::time::Time;

pub mod aggregate;
pub mod changes;
pub mod dedup;
pub mod late;
pub mod map_with_state;
pub mod materialize;
pub mod stream_join;
#[cfg(test)]
mod test_input;
pub mod to_changelog;
pub mod top_n;
pub mod window;

pub use aggregate::{
    EventTimeWindow, RunningAggregate, SessionAggregate, WindowAggregate, WindowDisplay,
    window_struct_type,
};
pub use changes::Changes;
pub use dedup::Dedup;
pub use late::{LateRowFilter, StreamWatermark};
pub use map_with_state::{KeyedBatch, MapWithState, StateSpec, StateUpdate};
pub use materialize::Materialize;
pub use stream_join::{JoinTime, StreamJoin};
pub use to_changelog::ToChangelog;
pub use top_n::{OrderColumn, TopN, WindowClose};
pub use window::BatchWindow;

/// What the batches an operator emits hold — how the plan above must read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emits {
    /// New rows that never change once emitted: each batch adds to the result
    /// (a join's matches, the first row of each key, a window the watermark closed).
    Appends,
    /// The whole current result, every batch (complete mode).
    WholeResult,
    /// The rows of the result that changed this batch, each replacing the row with the
    /// same values in `keys` (column indexes): upserts (update mode).
    Changes { keys: Vec<usize> },
    /// A changelog: each row is added to the result or retracted from it, as its
    /// last column, [`OP_COLUMN`], says ([`OP_INSERT`] or [`OP_DELETE`]) — Flink's
    /// row kinds. A regular outer join emits one: a row without a match at once,
    /// padded with nulls, retracted when its first match arrives. A row retracted
    /// was always added in an earlier batch, so a batch's rows apply in any order.
    Changelog,
}

/// The last column of a changelog's rows ([`Emits::Changelog`]): `+I` or `-D`.
pub const OP_COLUMN: &str = "_op";
/// A row added to the result.
pub const OP_INSERT: &str = "+I";
/// A row retracted from the result (one row equal to it in every other column).
pub const OP_DELETE: &str = "-D";

/// `batch` with an [`OP_COLUMN`] of `op` appended, as `schema` (the batch's columns
/// then the op column).
pub fn with_op(batch: RecordBatch, op: &str, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(
        datafusion::arrow::array::StringArray::from_iter_values(std::iter::repeat_n(op, n)),
    ));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// `schema` with the [`OP_COLUMN`] appended.
pub fn changelog_schema(schema: &SchemaRef) -> SchemaRef {
    let mut fields = schema.fields().to_vec();
    fields.push(Arc::new(datafusion::arrow::datatypes::Field::new(
        OP_COLUMN,
        datafusion::arrow::datatypes::DataType::Utf8,
        false,
    )));
    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
}

/// A converter of whole rows of `schema` to the row format (rows compared, hashed or
/// kept by content).
pub(crate) fn row_converter(schema: &SchemaRef) -> Result<datafusion::arrow::row::RowConverter> {
    use datafusion::arrow::row::{RowConverter, SortField};
    Ok(RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?)
}

/// `rows` (in `converter`'s row format, whole rows of `schema`) as one batch.
pub(crate) fn batch_of_rows<'a>(
    converter: &datafusion::arrow::row::RowConverter,
    rows: impl IntoIterator<Item = &'a Box<[u8]>>,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let parser = converter.parser();
    let columns = converter.convert_rows(rows.into_iter().map(|r| parser.parse(r)))?;
    if columns.is_empty() || columns[0].is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// The current result of a changelog (`batches`, in the order emitted; the op column
/// at `op`): each retracted row removes one earlier row equal to it in every other
/// column. The rows left, without the op column, as one batch of `schema`.
pub fn apply_changelog(
    batches: &[RecordBatch],
    op: usize,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    use datafusion::arrow::array::AsArray;
    use std::collections::HashMap;
    let converter = row_converter(schema)?;
    // Row content -> positions (batch, row) of the copies still in the result.
    let mut live: HashMap<
        Box<[u8]>,
        Vec<(usize, usize)>,
        datafusion::common::hash_utils::RandomState,
    > = HashMap::default();
    for (b, batch) in batches.iter().enumerate() {
        let mut data = batch.columns().to_vec();
        let ops = data.remove(op);
        let Some(ops) = ops.as_string_opt::<i32>() else {
            return crate::internal_err!("a changelog's {OP_COLUMN} column is not text");
        };
        let rows = converter.convert_columns(&data)?;
        for (i, r) in rows.iter().enumerate() {
            match ops.value(i) {
                OP_DELETE => {
                    if let Some(copies) = live.get_mut(r.as_ref()) {
                        copies.pop();
                        if copies.is_empty() {
                            live.remove(r.as_ref());
                        }
                    }
                }
                _ => live.entry(r.as_ref().into()).or_default().push((b, i)),
            }
        }
    }
    let mut kept: Vec<(usize, usize)> = live.into_values().flatten().collect();
    kept.sort_unstable();
    let without_op: Vec<RecordBatch> = batches
        .iter()
        .map(|b| {
            let mut columns = b.columns().to_vec();
            columns.remove(op);
            RecordBatch::try_new(Arc::clone(schema), columns)
        })
        .collect::<std::result::Result<_, _>>()?;
    if kept.is_empty() {
        return Ok(RecordBatch::new_empty(Arc::clone(schema)));
    }
    let indices: Vec<(usize, usize)> = kept;
    Ok(datafusion::arrow::compute::interleave_record_batch(
        &without_op.iter().collect::<Vec<_>>(),
        &indices,
    )?)
}

/// `schema` with its columns named `c0, c1, ...`: SQL planners map an operator's
/// output back by position, and neutral names cannot clash with the names the plan
/// above gives them.
pub fn positional_schema(schema: &SchemaRef) -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
            .collect::<Vec<_>>(),
    ))
}

/// A timestamp column as milliseconds since the epoch (its UTC instant, whatever its
/// unit or time zone). `what` names the column in the error for other types.
pub fn timestamp_millis(
    column: &datafusion::arrow::array::ArrayRef,
    what: &str,
) -> Result<datafusion::arrow::array::Int64Array> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
    let unit = match column.data_type() {
        DataType::Timestamp(unit, _) => *unit,
        other => return crate::plan_err!("{what} must be a timestamp, got {other}"),
    };
    let raw = datafusion::arrow::compute::cast(column, &DataType::Int64)?;
    let raw = raw.as_primitive::<Int64Type>();
    Ok(match unit {
        TimeUnit::Second => raw.unary(|v| v.saturating_mul(1000)),
        TimeUnit::Millisecond => raw.clone(),
        TimeUnit::Microsecond => raw.unary(|v| v.div_euclid(1_000)),
        TimeUnit::Nanosecond => raw.unary(|v| v.div_euclid(1_000_000)),
    })
}

/// What an operator knows about the batch it processes.
#[derive(Debug, Clone, Copy)]
pub struct OperatorContext {
    pub batch_time: Time,
    /// The time before the first batch: window slides are counted from here.
    pub zero_time: Time,
    pub batch_interval: Duration,
    /// The watermark (epoch ms) of the column an operator takes its event time from,
    /// when that column comes out of another operator
    /// ([`StreamOperator::watermark_source`]).
    pub input_watermark: Option<i64>,
    /// The last batch of a run over finite input (`AvailableNow`, no checkpoint): no
    /// row will ever come, so event-time operators take their watermark to
    /// [`END_OF_INPUT_WATERMARK`] and close every window (Flink's end of bounded input).
    pub end_of_input: bool,
}

/// The watermark at the end of finite input: past every window (kept far from
/// `i64::MAX`, so that adding a bound to it cannot overflow).
pub const END_OF_INPUT_WATERMARK: i64 = i64::MAX / 4;

/// A stateful operator. The scheduler calls [`StreamOperator::plan_input`] once when
/// the query starts, then [`StreamOperator::process`] for every batch at which the
/// operator's input is due, in batch order, never concurrently.
#[async_trait]
pub trait StreamOperator: Send + Sync {
    /// The operator's name in plans and errors.
    fn name(&self) -> String;

    /// The schema of every batch `process` returns.
    fn output_schema(&self) -> SchemaRef;

    /// What the operator computes, as far as its state depends on it (group keys,
    /// aggregates, window, order, bounds): part of the query's fingerprint, so a
    /// checkpoint's state is never resumed by an operator computing something else.
    fn describe(&self) -> String {
        self.name()
    }

    /// The operator's line in EXPLAIN: what it computes and what bounds its state
    /// (DataFusion's `DisplayAs`). By default its name.
    fn explain(&self) -> String {
        self.name()
    }

    /// The physical plan whose output feeds `process`. By default, `input`'s own plan.
    async fn plan_input(&mut self, input: &DataFrame) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(input.clone().create_physical_plan().await?)
    }

    /// Whether the operator can keep its state in partitions on a cluster's executors
    /// ([`crate::cluster::state`]) instead of on the driver.
    fn can_partition_on_cluster(&self) -> bool {
        false
    }

    /// Keep the state in partitions on the cluster's executors, in `placement`'s
    /// folder: called before [`StreamOperator::plan_input`] when the query runs on a
    /// cluster and [`StreamOperator::can_partition_on_cluster`].
    fn partition_on_cluster(&mut self, _placement: crate::cluster::state::Placement) {}

    /// Called on the driver before the batch's input plan runs.
    fn begin_batch(&mut self, _ctx: &OperatorContext) {}

    /// On a cluster, after [`StreamOperator::process`]: a plan to run there whose rows
    /// [`StreamOperator::process_emitted`] turns into the batch's output, or `None`
    /// when `process` gave it. Append-mode windows keep their groups on the
    /// executors, and which windows a batch closes is known only once every task
    /// folded the batch in: a second job emits them.
    fn emit_plan(&mut self) -> Option<Arc<dyn ExecutionPlan>> {
        None
    }

    /// The batch's output from the rows of [`StreamOperator::emit_plan`]'s plan.
    fn process_emitted(&mut self, _rows: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        crate::internal_err!("{} has no plan of its own to emit with", self.name())
    }

    /// Consume one batch's input; return the output for this batch time, or `None`
    /// when the operator emits nothing at this time (a window between slides).
    async fn process(
        &mut self,
        ctx: &OperatorContext,
        input: Vec<RecordBatch>,
    ) -> Result<Option<Vec<RecordBatch>>>;

    /// What its output batches hold (see [`Emits`]). By default new rows only.
    fn emits(&self) -> Emits {
        Emits::Appends
    }

    /// Rows of state, memory, bytes spilled to disk and keys evicted by `state_ttl`
    /// (metrics; memory an estimate: the Arrow buffers, hash tables and accumulators
    /// the operator holds).
    fn state_stats(&self) -> crate::state::StateStats;

    /// Rows of state the operator holds.
    fn state_rows(&self) -> usize {
        self.state_stats().rows as usize
    }

    /// The operator's state, for a checkpoint. Operators that cannot checkpoint yet
    /// say so (a query using them with a checkpoint is refused at start).
    fn snapshot(&mut self) -> Result<crate::checkpoint::OperatorState> {
        Err(crate::error::Error::Plan(format!(
            "{} cannot keep its state in a checkpoint yet; run this query without a checkpoint location",
            self.name()
        )))
    }

    /// Puts back what [`StreamOperator::snapshot`] returned, before any batch runs.
    fn restore(&mut self, _state: crate::checkpoint::OperatorState) -> Result<()> {
        Err(crate::error::Error::Plan(format!(
            "{} cannot restore its state from a checkpoint",
            self.name()
        )))
    }

    /// Rows the last `process` dropped as late (older than the watermark).
    fn late_rows(&self) -> u64 {
        0
    }

    /// The operator's event-time watermark (epoch ms), once it has one.
    fn watermark(&self) -> Option<i64> {
        None
    }

    /// Output columns (timestamps) no future output row will be older than some
    /// time, known after each batch: [`StreamOperator::output_watermark`].
    fn watermarked_columns(&self) -> Vec<usize> {
        Vec::new()
    }

    /// The time (epoch ms) no future output row's `column` will be older than, after
    /// the batch just processed; `None` while unknown.
    fn output_watermark(&self, _column: usize) -> Option<i64> {
        None
    }

    /// The operator (graph index) and its output column this operator's watermark
    /// follows; the scheduler passes that column's [`StreamOperator::output_watermark`]
    /// as [`OperatorContext::input_watermark`] before each `process`.
    fn watermark_source(&self) -> Option<(usize, usize)> {
        None
    }
}
