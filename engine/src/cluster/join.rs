//! A stream join's state partitions: both sides' kept rows hash-partitioned by the
//! join's key, each state partition's task joining the batch's new rows of its keys
//! with its kept rows, as `ops::stream_join` does in one process.
//!
//! ```text
//!   StatePartitionsExec(Fold::Join)     task p: load left/right rows at `prev`,
//!     RepartitionExec(hash key, P)        drop late rows (the watermarks before the
//!       the tagged union of both sides    batch), join new ⋈ kept and new ⋈ new,
//!                                         keep the new rows, evict, write `now`,
//!                                         emit the matches and one summary row
//! ```
//!
//! The key of a row is its side's key column (`CASE WHEN side THEN left key ELSE right
//! key END`), so a key's rows of both sides meet in one task. The join itself is the
//! driver's DataFusion plan over two in-memory leaves, filled by the task. Eviction
//! uses the watermarks before the batch (the driver learns the new ones from the
//! summaries): a row the new watermark would evict stays one batch longer and matches
//! nothing in between, since rows older than a watermark are dropped as late first.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;

use super::state::{Held, LEDGER, Task, cache, purge, read_chain, write_version};
use crate::Result;
use crate::ops::stream_join::{keep_from, latest, split_sides};
use crate::state::{KeyedRows, SnapshotKind, StateConfig};

/// The columns a join's tasks add to its matches: null on a match; on one summary
/// row per task (every other column null), the rows it dropped as late and the
/// newest time it kept on each side (ms).
pub const JOIN_SUMMARY: [&str; 3] = ["__late_rows", "__left_max", "__right_max"];

/// What a join's state partitions need to know (see the module).
#[derive(Debug, Clone)]
pub struct JoinFold {
    /// The driver's join over two empty in-memory leaves, which the task fills.
    pub plan: Arc<dyn ExecutionPlan>,
    /// For each in-memory leaf of `plan`, in the order a walk of it meets them,
    /// whether it is the left side's (DataFusion may have swapped the join's inputs).
    pub leaf_sides: Vec<bool>,
    pub left: SchemaRef,
    pub right: SchemaRef,
    pub left_keys: Vec<usize>,
    pub right_keys: Vec<usize>,
    /// Each side's time column (`None` in a regular join).
    pub left_time: Option<usize>,
    pub right_time: Option<usize>,
    /// `left.time - right.time` lies in `[lo, hi]` (ms; `None`: unbounded).
    pub lo: Option<i64>,
    pub hi: Option<i64>,
}

/// The schema of what a join's tasks emit: the join's columns (nullable), then
/// [`JOIN_SUMMARY`].
pub fn task_schema(join: &SchemaRef) -> SchemaRef {
    let mut fields: Vec<Field> = join
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect();
    fields.extend(
        JOIN_SUMMARY
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true)),
    );
    Arc::new(Schema::new(fields))
}

/// A join's state partition: both sides' kept rows.
pub struct JoinState {
    left: KeyedRows,
    right: KeyedRows,
}

impl JoinState {
    pub(crate) fn rows(&self) -> u64 {
        self.left.stats().rows + self.right.stats().rows
    }
}

/// The partition's rows at version `prev`: the cache's, or each side's from its
/// folder (`left/`, `right/`).
fn load(task: &Task, f: &JoinFold) -> Result<JoinState> {
    if let Some(Held::Join(state)) = task.cached() {
        return Ok(*state);
    }
    let config = StateConfig {
        partitions: 1,
        memory: task.spec.memory,
        ttl: task.spec.ttl,
        spill_dir: None,
        ledger: LEDGER.clone(),
    };
    let side = |schema: &SchemaRef,
                keys: &[usize],
                time: Option<usize>,
                folder: &str|
     -> Result<KeyedRows> {
        let mut rows = KeyedRows::try_new(Arc::clone(schema), keys.to_vec(), time, &config)?;
        if let Some(prev) = task.versions.prev {
            rows.restore(read_chain(&task.dir(Some(folder)), task.partition, prev)?.0)?;
        }
        Ok(rows)
    };
    let left = side(&f.left, &f.left_keys, f.left_time, "left")?;
    let right = side(&f.right, &f.right_keys, f.right_time, "right")?;
    Ok(JoinState { left, right })
}

/// DataFusion's join of `left` and `right` rows, in this task.
fn run_join(f: &JoinFold, left: &[RecordBatch], right: &[RecordBatch]) -> Result<Vec<RecordBatch>> {
    let mut leaf = 0;
    let plan = Arc::clone(&f.plan)
        .transform_up(|node| {
            let Some(mem) = node
                .downcast_ref::<DataSourceExec>()
                .and_then(|d| d.data_source().downcast_ref::<MemorySourceConfig>())
            else {
                return Ok(Transformed::no(node));
            };
            let is_left = f.leaf_sides.get(leaf).copied().unwrap_or(true);
            leaf += 1;
            let rows = if is_left { left } else { right };
            Ok(Transformed::yes(MemorySourceConfig::try_new_exec(
                &[rows.to_vec()],
                mem.original_schema(),
                mem.projection().clone(),
            )? as Arc<dyn ExecutionPlan>))
        })?
        .data;
    let out = tokio::runtime::Handle::current().block_on(datafusion::physical_plan::collect(
        plan,
        Arc::new(TaskContext::default()),
    ))?;
    Ok(out)
}

/// One batch of a join's state partition (see the module).
pub(crate) fn fold_join(
    task: &Task,
    f: &JoinFold,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch> {
    let now = task.versions.now;
    let mut st = load(task, f)?;
    st.left.expire(now)?;
    st.right.expire(now)?;
    let (new_left, new_right) = split_sides(batches, &f.left, &f.right)?;
    let (lw, rw) = (task.versions.watermark, task.versions.watermark_right);
    let (new_left, late_left) = keep_from(f.left_time, new_left, lw)?;
    let (new_right, late_right) = keep_from(f.right_time, new_right, rw)?;
    let mut matches = Vec::new();
    if !new_left.is_empty() {
        let mut right = st.right.matching(&new_left, st.left.keys())?;
        right.extend(new_right.iter().cloned());
        if !right.is_empty() {
            matches.extend(run_join(f, &new_left, &right)?);
        }
    }
    if !new_right.is_empty() {
        let left = st.left.matching(&new_right, st.right.keys())?;
        if !left.is_empty() {
            matches.extend(run_join(f, &left, &new_right)?);
        }
    }
    let (left_max, right_max) = (
        latest(f.left_time, &new_left)?,
        latest(f.right_time, &new_right)?,
    );
    st.left.insert(new_left, now)?;
    st.right.insert(new_right, now)?;
    evict(&mut st, f, lw, rw)?;
    // The matches, then the summary.
    let schema = task.schema;
    let width = schema.fields().len() - JOIN_SUMMARY.len();
    let mut out = Vec::with_capacity(matches.len() + 1);
    for m in matches.into_iter().filter(|m| m.num_rows() > 0) {
        let mut columns = m.columns().to_vec();
        for _ in JOIN_SUMMARY {
            columns.push(new_null_array(&DataType::Int64, m.num_rows()));
        }
        out.push(RecordBatch::try_new(Arc::clone(schema), columns)?);
    }
    let mut summary: Vec<ArrayRef> = schema.fields()[..width]
        .iter()
        .map(|f| new_null_array(f.data_type(), 1))
        .collect();
    summary.push(Arc::new(Int64Array::from(vec![
        (late_left + late_right) as i64,
    ])));
    summary.push(Arc::new(Int64Array::from(vec![left_max])));
    summary.push(Arc::new(Int64Array::from(vec![right_max])));
    out.push(RecordBatch::try_new(Arc::clone(schema), summary)?);
    // Both sides as version `now`, a full snapshot of both when either wants one.
    let full = st.left.wants_full() || st.right.wants_full();
    for (side, rows, side_schema) in [
        ("left", &mut st.left, &f.left),
        ("right", &mut st.right, &f.right),
    ] {
        let (kind, batches) = rows.checkpoint(full)?;
        let dir = task.dir(Some(side));
        let file_schema = batches
            .first()
            .map(|b| b.schema())
            .unwrap_or_else(|| Arc::clone(side_schema));
        write_version(&dir, now, kind, &file_schema, &batches)?;
        if kind == SnapshotKind::Full
            && let Some(keep) = task.versions.keep_from
        {
            purge(&dir, keep)?;
        }
    }
    cache(task.cache_key(), now, Held::Join(Box::new(st)));
    Ok(datafusion::arrow::compute::concat_batches(schema, &out)?)
}

/// Drops the kept rows no future row of the other side can match (as
/// `StreamJoin::evict`, by the watermarks before the batch).
fn evict(st: &mut JoinState, f: &JoinFold, lw: Option<i64>, rw: Option<i64>) -> Result<()> {
    if let (Some(lo), Some(wm)) = (f.lo, rw) {
        st.left.evict(wm.saturating_add(lo))?;
    }
    if let (Some(hi), Some(wm)) = (f.hi, lw) {
        st.right.evict(wm.saturating_sub(hi))?;
    }
    Ok(())
}

/// The newest value of an Int64 column, nulls left out.
pub(crate) fn max_of(column: &ArrayRef) -> Option<i64> {
    column.as_any().downcast_ref::<Int64Array>().and_then(|a| {
        if a.null_count() == a.len() {
            None
        } else {
            datafusion::arrow::compute::max(a)
        }
    })
}
