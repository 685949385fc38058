//! State partitioned across a cluster's executors: Spark's state store, on Ballista.
//!
//! A running aggregate on a cluster does not keep its groups on the driver. Its plan
//! becomes
//!
//! ```text
//!   StatePartitionsExec            one task per state partition p (0..P) per batch:
//!     RepartitionExec(hash keys, P)     load p at version `prev` (the executor's cache,
//!       AggregateExec(Partial)          or the files), fold the batch's partial rows in,
//!         the batch's scan              write version `now`, emit the changed groups
//! ```
//!
//! Ballista cuts the plan at the repartition: the partial aggregate runs where the
//! batch's rows are, its rows are shuffled by key hash, and each state partition's
//! task updates a [`KeyedState`] of its own. Versions are batch times; each is a file
//! in the partition's folder, `<version>.full.arrow` (every live row) or
//! `<version>.delta.arrow` (the rows the batch changed), an Arrow IPC file written
//! under a temporary name and renamed. A task that finds the version it needs in its
//! executor's cache (the executor ran the previous version of that partition) uses
//! it; otherwise it reads the newest full snapshot at or before `prev` and the deltas
//! after it. Versions later than `prev` are never read: a batch that failed before
//! its commit is run again at the same time (the offset log replays it) and writes
//! the same version again.
//!
//! The driver keeps only the version numbers, in its own checkpoint; the folder is
//! the checkpoint's `cluster-state/` (or a temporary one without a checkpoint), and
//! must be shared by the driver and every executor (one machine, or a shared mount).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use ballista_core::JobId;
use ballista_executor::execution_engine::{
    DefaultExecutionEngine, ExecutionEngine, QueryStageExecutor,
};
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::kernels::boolean::not;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, FieldRef, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result as DfResult, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStoreExt;
use parking_lot::Mutex;

use crate::Result;
use crate::ops::aggregate::event_time::window_ends;
use crate::ops::aggregate::partial::{
    PartialAggregate, evaluate_all, evaluate_rows, merge_touched,
};
use crate::state::{KeyedState, MemoryLedger, SnapshotKind, StateConfig};

/// Where an operator's state partitions live, given by the pipeline.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The operator's folder (one sub-folder per state partition): a path every
    /// process shares, or an object store's URL (`s3://bucket/...`) which each
    /// process opens with its own `AWS_*` variables.
    pub dir: PathBuf,
    /// Removed when the last holder goes (a query without a checkpoint).
    pub temporary: Option<Arc<TemporaryDir>>,
}

/// A folder removed when dropped.
#[derive(Debug)]
pub struct TemporaryDir(pub PathBuf);

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The versions a batch's tasks read and write: set on the driver before each run,
/// sent with the plan.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Versions {
    /// The version the batch starts from (the last batch processed); `None`: empty.
    pub prev: Option<i64>,
    /// The version it writes (this batch's time, ms).
    pub now: i64,
    /// The oldest version a recovery may still start from: files older than the full
    /// snapshot it needs are deleted when a task writes a full snapshot.
    pub keep_from: Option<i64>,
    /// Windows: the watermark before this batch. The tasks drop the rows of windows it
    /// closed, and evict those windows first (the driver learns the batch's new
    /// watermark from the groups they emit; windows it closes go at the next batch).
    /// When closing: the batch's new watermark.
    pub watermark: Option<i64>,
    /// Append-mode windows' second job of a batch: emit the windows `watermark`
    /// closed, from version `prev` (the one the batch just wrote); no input, no write.
    pub close: bool,
    /// A stream join: `watermark` is its left side's, this its right side's.
    pub watermark_right: Option<i64>,
}

/// What a state partition's task keeps and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub dir: PathBuf,
    pub partitions: usize,
    /// Emit the groups the batch changed (update mode), or all of them (complete).
    pub changed_only: bool,
    /// The memory the executor's state may take before partitions spill.
    pub memory: usize,
    pub ttl: Option<Duration>,
    /// Set for a windowed aggregate.
    pub window: Option<WindowSpec>,
}

/// A windowed aggregate's state partitions: which key is the window (its end, or its
/// `{start, end}`), and whether closed windows leave the state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSpec {
    pub key_index: usize,
    pub evict_closed: bool,
    /// Append mode: a batch's tasks emit one summary row each ([`SUMMARY_COLUMNS`]);
    /// the windows the batch's watermark closed are emitted by a second job
    /// ([`Versions::close`]).
    pub append: bool,
    /// Session windows: the key is each row's session `{start, end}`, the state keeps
    /// each value of the other keys with its sessions (`ops::aggregate::session`), and
    /// the rows are partitioned by those other keys.
    pub sessions: bool,
}

/// What each task of an append-mode windowed aggregate's batch emits, one row: the
/// rows it dropped as late and the newest event time (ms) it folded in.
pub const SUMMARY_COLUMNS: [&str; 2] = ["__late_rows", "__max_event_time"];

/// The schema of an append-mode task's summary row.
pub fn summary_schema() -> SchemaRef {
    Arc::new(datafusion::arrow::datatypes::Schema::new(
        SUMMARY_COLUMNS
            .iter()
            .map(|n| datafusion::arrow::datatypes::Field::new(*n, DataType::Int64, true))
            .collect::<Vec<_>>(),
    ))
}

/// The column a windowed aggregate's tasks add to what they emit: null on group rows;
/// on one extra row (every other column null), the rows they dropped as late.
pub const LATE_COLUMN: &str = "__late_rows";

/// How a state partition's task folds the batch's rows into its state.
#[derive(Debug, Clone)]
pub enum Fold {
    /// Merge partial aggregates: the partial `AggregateExec` (over an empty input)
    /// whose accumulators the tasks merge with.
    Aggregate(Arc<dyn ExecutionPlan>),
    /// Keep the first row of each key (`Dedup`).
    FirstRows(FirstRows),
    /// Join both sides' new rows with the kept ones (`StreamJoin`).
    Join(Box<super::join::JoinFold>),
    /// Keep the first N rows of each key by an order (`TopN`).
    TopN(crate::ops::top_n::Ranked),
}

/// A dedup's state partitions: its input's columns that are the key and those the
/// state keeps besides (complete mode). A batch brings at most one row of a key (a
/// `DISTINCT`'s rows of a key are equal; `ROW_NUMBER() = 1`'s batch plan keeps one per
/// key), so the order the shuffle gives the rows changes nothing but the order
/// they are emitted in.
#[derive(Debug, Clone, PartialEq)]
pub struct FirstRows {
    pub keys: Vec<usize>,
    pub values: Vec<usize>,
    /// Complete mode: every task emits every row it keeps.
    pub emit_all: bool,
}

/// The plan node whose task `p` updates state partition `p` (see the module).
pub struct StatePartitionsExec {
    input: Arc<dyn ExecutionPlan>,
    /// What the tasks fold the batch's rows into their state with.
    fold: Fold,
    spec: Arc<Spec>,
    /// Shared with the operator on the driver; fixed in a decoded plan.
    versions: Arc<Mutex<Versions>>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// The state partition of each of the input's partitions, when they are not
    /// all of them in order (a task's restricted plan).
    global: Option<Arc<Vec<usize>>>,
}

impl fmt::Debug for StatePartitionsExec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("StatePartitionsExec")
            .field("spec", &self.spec)
            .finish()
    }
}

impl StatePartitionsExec {
    /// Over `input` (hash-partitioned by the keys into `spec.partitions`), folding as
    /// `fold` says, emitting rows of `schema` (an aggregate's: keys, then each
    /// aggregate's value).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        fold: Fold,
        spec: Arc<Spec>,
        versions: Arc<Mutex<Versions>>,
        schema: SchemaRef,
    ) -> DfResult<Self> {
        if let Fold::Aggregate(template) = &fold
            && template.downcast_ref::<AggregateExec>().is_none()
        {
            return internal_err!("StatePartitionsExec folds with an AggregateExec");
        }
        let partitions = input.output_partitioning().partition_count();
        // A task's plan holds only the partitions it runs (Ballista restricts the
        // stage's shuffle reader); which state partitions they are is set on the
        // executor (`with_partitions`).
        if partitions > spec.partitions {
            return internal_err!(
                "StatePartitionsExec over {partitions} partitions, {} state partitions",
                spec.partitions
            );
        }
        let properties = Arc::new(PlanProperties::new(
            datafusion::physical_expr::EquivalenceProperties::new(Arc::clone(&schema)),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        Ok(Self {
            input,
            fold,
            spec,
            versions,
            schema,
            properties,
            global: None,
        })
    }

    /// The same node, its input's partition `i` being state partition `global[i]`.
    pub fn with_partitions(&self, global: Vec<usize>) -> DfResult<Self> {
        let local = self.input.output_partitioning().partition_count();
        if global.len() != local || global.iter().any(|p| *p >= self.spec.partitions) {
            return internal_err!(
                "StatePartitionsExec over {local} partitions given state partitions {global:?} \
                 of {}",
                self.spec.partitions
            );
        }
        let mut node = Self::try_new(
            Arc::clone(&self.input),
            self.fold.clone(),
            Arc::clone(&self.spec),
            Arc::clone(&self.versions),
            Arc::clone(&self.schema),
        )?;
        node.global = Some(Arc::new(global));
        Ok(node)
    }

    pub fn fold(&self) -> &Fold {
        &self.fold
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn versions(&self) -> Versions {
        *self.versions.lock()
    }
}

impl DisplayAs for StatePartitionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "StatePartitionsExec: {} partitions in {}, {}",
            self.spec.partitions,
            self.spec.dir.display(),
            if self.spec.changed_only {
                "update"
            } else {
                "complete"
            }
        )?;
        if let Some(w) = &self.spec.window {
            write!(f, ", window key {}", w.key_index)?;
            if w.append {
                write!(f, ", append")?;
            }
        }
        if self.versions.lock().close {
            write!(f, ", emitting closed windows")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for StatePartitionsExec {
    fn name(&self) -> &str {
        "StatePartitionsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!(
                "StatePartitionsExec has one input, given {}",
                children.len()
            );
        }
        let mut node = Self::try_new(
            children.swap_remove(0),
            self.fold.clone(),
            Arc::clone(&self.spec),
            Arc::clone(&self.versions),
            Arc::clone(&self.schema),
        )?;
        node.global = self.global.clone();
        Ok(Arc::new(node))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let state_partition = match &self.global {
            Some(global) => global[partition],
            None if self.input.output_partitioning().partition_count() == self.spec.partitions => {
                partition
            }
            None => {
                return internal_err!(
                    "StatePartitionsExec: a task's plan without its state partitions (run \
                     `flumen executor`, whose engine names them)"
                );
            }
        };
        let input = self.input.execute(partition, context)?;
        let versions = *self.versions.lock();
        let spec = Arc::clone(&self.spec);
        let fold = self.fold.clone();
        let input_schema = self.input.schema();
        let schema = Arc::clone(&self.schema);
        let out_schema = Arc::clone(&schema);
        Ok(super::blocking_task(
            input,
            out_schema,
            "a state partition's task",
            move |batches| {
                let task = Task {
                    spec: &spec,
                    schema: &schema,
                    partition: state_partition,
                    versions,
                };
                match &fold {
                    Fold::Aggregate(template) => update(&task, template, batches),
                    Fold::FirstRows(f) => first_rows(&task, f, &input_schema, batches),
                    Fold::Join(f) => super::join::fold_join(&task, f, batches),
                    Fold::TopN(r) => top_n(&task, r, &input_schema, batches),
                }
                .map(|b| vec![b])
                .map_err(|e| DataFusionError::External(Box::new(e)))
            },
        ))
    }
}

/// An executor's execution engine: Ballista's, after telling each
/// [`StatePartitionsExec`] (and `WriteExec`) of a task's stage which partitions it
/// runs (the task's global output partitions: the node is the stage's root below its
/// writer, and keeps its input's partitioning).
#[derive(Default)]
pub struct FlumenEngine {
    inner: DefaultExecutionEngine,
}

impl ExecutionEngine for FlumenEngine {
    fn create_query_stage_exec(
        &self,
        job_id: JobId,
        stage_id: usize,
        task_id: usize,
        global_output_partition_ids: Vec<usize>,
        plan: Arc<dyn ExecutionPlan>,
        work_dir: &str,
        config: &SessionConfig,
    ) -> DfResult<Arc<dyn QueryStageExecutor>> {
        let plan = plan
            .transform_up(|node| {
                if let Some(state) = node.downcast_ref::<StatePartitionsExec>() {
                    return Ok(Transformed::yes(Arc::new(
                        state.with_partitions(global_output_partition_ids.clone())?,
                    )
                        as Arc<dyn ExecutionPlan>));
                }
                if let Some(write) = node.downcast_ref::<crate::cluster::write::WriteExec>() {
                    return Ok(Transformed::yes(Arc::new(
                        write.with_partitions(global_output_partition_ids.clone())?,
                    )
                        as Arc<dyn ExecutionPlan>));
                }
                Ok(Transformed::no(node))
            })?
            .data;
        self.inner.create_query_stage_exec(
            job_id,
            stage_id,
            task_id,
            global_output_partition_ids,
            plan,
            work_dir,
            config,
        )
    }
}

/// A state partition an executor holds after running one of its versions.
struct Cached {
    version: i64,
    state: Held,
    used: Instant,
}

/// A state partition as a task holds it: keyed groups or rows (aggregates, dedup),
/// or a stream join's two sides.
pub(crate) enum Held {
    Keyed(KeyedState),
    Join(Box<super::join::JoinState>),
}

impl Held {
    fn rows(&self) -> u64 {
        match self {
            Self::Keyed(s) => s.stats().rows,
            Self::Join(j) => j.rows(),
        }
    }
}

/// Every state partition this process ran last, by folder and partition.
static CACHE: LazyLock<Mutex<HashMap<(PathBuf, usize), Cached>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// What this process's cached state partitions hold in memory together.
pub(crate) static LEDGER: LazyLock<MemoryLedger> = LazyLock::new(MemoryLedger::default);

/// A cached partition not used for this long is dropped (its query ended or moved).
const IDLE: Duration = Duration::from_secs(600);

/// How many state partitions in folders under `dir` this process holds in its
/// cache, and their rows.
pub fn cached(dir: &Path) -> (usize, u64) {
    let cache = CACHE.lock();
    let under: Vec<_> = cache
        .iter()
        .filter(|((d, _), _)| d.starts_with(dir))
        .collect();
    (under.len(), under.iter().map(|(_, c)| c.state.rows()).sum())
}

/// Drops the cached state partitions in folders under `dir`: the next task of each
/// reads its version from the files, as on an executor that was just started.
pub fn forget(dir: &Path) {
    CACHE.lock().retain(|(d, _), _| !d.starts_with(dir));
}

/// One task of one state partition for one batch.
pub(crate) struct Task<'a> {
    pub spec: &'a Spec,
    /// What the task emits.
    pub schema: &'a SchemaRef,
    pub partition: usize,
    pub versions: Versions,
}

impl Task<'_> {
    /// The partition's state at version `prev`: from this executor's cache when it
    /// holds that version, else from the files (a state with these key and value
    /// columns).
    fn state(&self, keys: &[FieldRef], values: &[FieldRef]) -> Result<KeyedState> {
        self.state_bounded(keys, values, None)
    }

    /// [`Task::state`], its rows' eviction bound set (before its files are read, so
    /// that each segment knows its lowest).
    fn state_bounded(
        &self,
        keys: &[FieldRef],
        values: &[FieldRef],
        bound: Option<Arc<crate::state::BoundFn>>,
    ) -> Result<KeyedState> {
        match self.cached() {
            Some(Held::Keyed(state)) => Ok(state),
            _ => load(
                self.spec,
                keys,
                values,
                self.partition,
                self.versions.prev,
                bound,
            ),
        }
    }

    /// What this executor's cache holds of the partition at version `prev`, taken
    /// out (the task puts back what it leaves).
    pub(crate) fn cached(&self) -> Option<Held> {
        match CACHE.lock().remove(&self.cache_key()) {
            Some(c) if Some(c.version) == self.versions.prev => Some(c.state),
            _ => None,
        }
    }

    pub(crate) fn cache_key(&self) -> (PathBuf, usize) {
        (self.spec.dir.clone(), self.partition)
    }

    /// The partition's folder (`sub`: one of its sub-folders).
    pub(crate) fn dir(&self, sub: Option<&str>) -> PathBuf {
        let dir = partition_dir(&self.spec.dir, self.partition);
        match sub {
            Some(s) => dir.join(s),
            None => dir,
        }
    }

    /// Writes the state as version `now` (a delta, or a full snapshot once the
    /// deltas outgrow it; then purging what no recovery needs) and caches it.
    fn commit(&self, mut state: KeyedState) -> Result<()> {
        let now = self.versions.now;
        let (kind, rows) = state.checkpoint(Some(now))?;
        let dir = partition_dir(&self.spec.dir, self.partition);
        write_version(&dir, now, kind, state.schema(), &rows)?;
        if kind == SnapshotKind::Full
            && let Some(keep) = self.versions.keep_from
        {
            purge(&dir, keep)?;
        }
        cache(self.cache_key(), now, Held::Keyed(state));
        Ok(())
    }
}

/// A dedup's task: the batch's rows of this partition whose key was not seen before
/// kept and emitted (the first of each); complete mode emits every row kept.
fn first_rows(
    task: &Task,
    f: &FirstRows,
    input_schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch> {
    let field = |i: &usize| Arc::clone(&input_schema.fields()[*i]);
    let keys: Vec<FieldRef> = f.keys.iter().map(field).collect();
    let values: Vec<FieldRef> = f.values.iter().map(field).collect();
    let mut state = task.state(&keys, &values)?;
    let batch = concat_batches(input_schema, &batches)?;
    let now = task.versions.now;
    let rows = crate::ops::dedup::keep_first(&mut state, &batch, &f.keys, &f.values, now)?;
    let out = if f.emit_all {
        crate::ops::dedup::kept_rows(&mut state, task.schema, &f.keys, &f.values)?
    } else {
        vec![crate::ops::dedup::take_rows(&batch, &rows, task.schema)?]
    };
    task.commit(state)?;
    Ok(concat_batches(task.schema, &out)?)
}

/// A top-N's task: the batch's rows of this partition (each batch's own top N per
/// key) ranked with the kept rows of their keys; the rows whose rank changed, or
/// every kept row (complete mode).
fn top_n(
    task: &Task,
    r: &crate::ops::top_n::Ranked,
    input_schema: &SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch> {
    let nested = crate::ops::top_n::nested_layout(input_schema, &r.keys);
    let mut state = task.state(&nested.key_fields(), &nested.list_fields())?;
    let batch = concat_batches(input_schema, &batches)?;
    let out = crate::ops::top_n::fold_top_n(
        &mut state,
        &nested,
        r,
        input_schema,
        &batch,
        task.versions.now,
    )?;
    task.commit(state)?;
    Ok(concat_batches(task.schema, &out)?)
}

/// An aggregate's task for one batch (see the module).
fn update(
    task: &Task,
    template: &Arc<dyn ExecutionPlan>,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch> {
    let Some(template) = template.downcast_ref::<AggregateExec>() else {
        return crate::internal_err!("StatePartitionsExec folds with an AggregateExec");
    };
    let agg = PartialAggregate::from_exec(template)?;
    let (spec, schema, versions) = (task.spec, task.schema, task.versions);
    if let Some(w) = spec.window.filter(|w| w.sessions) {
        return sessions(task, &agg, &w, batches);
    }
    let planned = agg.planned()?;
    let fields = planned.partial_schema.fields();
    let mut state = task.state(&fields[..agg.keys()], &fields[agg.keys()..])?;
    if versions.close {
        return close(task, &agg, state);
    }
    let partial = Arc::clone(&planned.partial_schema);
    let mut input = concat_batches(&partial, &batches)?;
    let now = versions.now;
    let mut late = 0;
    if let (Some(w), Some(wm)) = (&spec.window, versions.watermark) {
        let key = w.key_index;
        if w.evict_closed {
            state.evict_until(wm, &move |rows: &RecordBatch| {
                Ok(window_ends(rows.column(key))?.iter().collect())
            })?;
        }
        // The rows of windows the watermark closed, as `drop_late` drops them locally:
        // counted by the hidden `count(*)`, the last state column.
        let ends = window_ends(input.column(key))?;
        let closed: BooleanArray = ends
            .iter()
            .map(|e| Some(e.is_some_and(|e| e <= wm)))
            .collect();
        let widths = &planned.state_widths;
        let count_col = agg.keys() + widths[..widths.len() - 1].iter().sum::<usize>();
        if let Some(counts) = input
            .column(count_col)
            .as_any()
            .downcast_ref::<Int64Array>()
        {
            late = closed
                .values()
                .iter()
                .zip(counts.values())
                .filter(|(c, _)| *c)
                .map(|(_, n)| *n as u64)
                .sum();
        }
        input = filter_record_batch(&input, &not(&closed)?)?;
    }
    let append = spec.window.is_some_and(|w| w.append);
    let changed = merge_touched(&agg, &mut state, &input, now, spec.changed_only && !append)?;
    let columns = if append {
        Vec::new()
    } else if spec.changed_only {
        changed
    } else {
        let cutoff = state.cutoff(now);
        evaluate_all(&agg, &mut state, cutoff)?
    };
    let max = if append {
        // The newest event time folded in: the hidden `max(event time)`, next to last.
        let widths = &planned.state_widths;
        let max_col = agg.keys() + widths[..widths.len() - 2].iter().sum::<usize>();
        crate::ops::aggregate::event_time::max_of(input.column(max_col))?
    } else {
        None
    };
    let out = task_rows(schema, columns, spec.window.as_ref(), late, max)?;
    task.commit(state)?;
    Ok(concat_batches(schema, &out)?)
}

/// What an aggregate's task returns, rows of `schema`: its `groups` (keys and every
/// aggregate's value); a windowed aggregate's with the late-row column, null, and one
/// more row with its `late` count when it dropped any; in append mode only its summary
/// row (`late`, the newest event time `max` folded in).
fn task_rows(
    schema: &SchemaRef,
    groups: Vec<Vec<ArrayRef>>,
    window: Option<&WindowSpec>,
    late: u64,
    max: Option<i64>,
) -> Result<Vec<RecordBatch>> {
    if window.is_some_and(|w| w.append) {
        return Ok(vec![RecordBatch::try_new(
            Arc::clone(schema),
            vec![
                Arc::new(Int64Array::from(vec![late as i64])),
                Arc::new(Int64Array::from(vec![max])),
            ],
        )?]);
    }
    let mut out = groups
        .into_iter()
        .map(|mut c| {
            if window.is_some() {
                let rows = c.first().map_or(0, |a| a.len());
                c.push(new_null_array(&DataType::Int64, rows));
            }
            RecordBatch::try_new(Arc::clone(schema), c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    if late > 0 {
        let mut c: Vec<ArrayRef> = schema.fields()[..schema.fields().len() - 1]
            .iter()
            .map(|f| new_null_array(f.data_type(), 1))
            .collect();
        c.push(Arc::new(Int64Array::from(vec![late as i64])));
        out.push(RecordBatch::try_new(Arc::clone(schema), c)?);
    }
    Ok(out)
}

/// A session-window aggregate's task (`SessionTask`): the rows it emits end with the
/// late-row column as a windowed aggregate's do (update, complete), or are one summary
/// row (append); the close job's are the closed sessions.
fn sessions(
    task: &Task,
    agg: &PartialAggregate,
    w: &WindowSpec,
    batches: Vec<RecordBatch>,
) -> Result<RecordBatch> {
    use crate::ops::aggregate::session::{Layout, SessionTask, emits_changelog};
    let (spec, schema, versions) = (task.spec, task.schema, task.versions);
    let planned = agg.planned()?;
    let layout = Layout::new(Arc::clone(&planned.partial_schema), agg.keys(), w.key_index);
    let (keys, lists) = layout.fields();
    let mut state = task.state_bounded(&keys, &lists, Some(layout.bound()))?;
    // Keys and every aggregate's value: the close job's rows; the fold job's without
    // their late column (update, complete) — in append mode it emits none of them.
    let wide: SchemaRef = if versions.close {
        Arc::clone(schema)
    } else if w.append {
        let fields: Vec<FieldRef> = planned
            .group_schema
            .fields()
            .iter()
            .cloned()
            .chain(planned.aggregates.iter().map(|a| a.field()))
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
            .collect();
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
    } else {
        Arc::new(schema.project(&(0..schema.fields().len() - 1).collect::<Vec<_>>())?)
    };
    // Update mode's rows are a changelog: their kind ends them, after every value.
    let changelog = (emits_changelog(spec.changed_only, w.append) && !versions.close)
        .then(|| Arc::clone(&wide));
    let wide = match &changelog {
        Some(with_op) => {
            Arc::new(with_op.project(&(0..with_op.fields().len() - 1).collect::<Vec<_>>())?)
        }
        None => wide,
    };
    let session_task = SessionTask {
        agg,
        layout: &layout,
        key_index: w.key_index,
        evict_closed: w.evict_closed,
        append: w.append,
        changed_only: spec.changed_only,
        wide: &wide,
        changelog: changelog.as_ref(),
        watermark: versions.watermark,
        now: versions.now,
    };
    if versions.close {
        let out = session_task.close(&mut state)?;
        if let Some(version) = versions.prev {
            cache(task.cache_key(), version, Held::Keyed(state));
        }
        return Ok(concat_batches(schema, &out)?);
    }
    let (rows, late, max) = session_task.fold(&mut state, batches)?;
    let groups = rows.iter().map(|b| b.columns().to_vec()).collect();
    let out = task_rows(schema, groups, Some(w), late, max)?;
    task.commit(state)?;
    Ok(concat_batches(schema, &out)?)
}

/// Append mode's second job: the windows `versions.watermark` closed, taken out of
/// the state partition at version `prev` and emitted (keys, then every aggregate's
/// value). Nothing is written: the next batch's tasks evict the same windows from
/// the files' version before folding.
fn close(task: &Task, agg: &PartialAggregate, mut state: KeyedState) -> Result<RecordBatch> {
    let (schema, versions) = (task.schema, task.versions);
    let (Some(w), Some(wm)) = (&task.spec.window, versions.watermark) else {
        return crate::internal_err!("closing windows without a window or a watermark");
    };
    let k = w.key_index;
    let closed = state.take_until(wm, &move |rows: &RecordBatch| {
        Ok(window_ends(rows.column(k))?.iter().collect())
    })?;
    let out = closed
        .iter()
        .map(|rows| {
            Ok(RecordBatch::try_new(
                Arc::clone(schema),
                evaluate_rows(agg, rows)?,
            )?)
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(version) = versions.prev {
        cache(task.cache_key(), version, Held::Keyed(state));
    }
    Ok(concat_batches(schema, &out)?)
}

/// Keeps `state` (at `version`) for the partition's next task on this executor.
pub(crate) fn cache(key: (PathBuf, usize), version: i64, state: Held) {
    let mut cache = CACHE.lock();
    cache.retain(|_, c| c.used.elapsed() < IDLE);
    cache.insert(
        key,
        Cached {
            version,
            state,
            used: Instant::now(),
        },
    );
}

fn partition_dir(dir: &Path, partition: usize) -> PathBuf {
    dir.join(format!("p{partition}"))
}

fn file_name(version: i64, kind: SnapshotKind) -> String {
    format!("{version:020}.{}.arrow", kind.as_str())
}

/// A partition's folder: on a file system every process shares, or in an object
/// store (`s3://`, `memory://`: its URL as the path), which each process opens
/// itself (the endpoint and credentials from its own `AWS_*` variables).
enum Folder {
    Dir(PathBuf),
    Store(crate::store::Location),
}

/// The object stores this process opened for state partitions, by URL.
static STORES: LazyLock<Mutex<HashMap<String, crate::store::Location>>> =
    LazyLock::new(Mutex::default);

impl Folder {
    fn of(dir: &Path) -> Result<Self> {
        let text = dir.to_string_lossy();
        if !text.contains("://") {
            return Ok(Self::Dir(dir.to_path_buf()));
        }
        if let Some(l) = STORES.lock().get(text.as_ref()) {
            return Ok(Self::Store(l.clone()));
        }
        let l = crate::store::open("state partitions", &text, &Default::default())?;
        STORES.lock().insert(text.into_owned(), l.clone());
        Ok(Self::Store(l))
    }

    fn shown(&self) -> String {
        match self {
            Self::Dir(d) => d.display().to_string(),
            Self::Store(l) => l.url.clone(),
        }
    }

    fn error(&self, name: &str, what: &str, e: impl fmt::Display) -> crate::Error {
        crate::Error::Checkpoint(format!(
            "state partition files: cannot {what} {}/{name}: {e}",
            self.shown()
        ))
    }

    /// Runs an object-store call from a task's blocking thread.
    fn wait<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Handle::current().block_on(f)
    }

    /// The names in the folder (none when it does not exist).
    fn names(&self) -> Result<Vec<String>> {
        match self {
            Self::Dir(dir) => {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(self.error("", "read", e)),
                };
                let mut out = Vec::new();
                for e in entries {
                    let e = e.map_err(|e| self.error("", "read", e))?;
                    if let Some(name) = e.file_name().to_str() {
                        out.push(name.to_string());
                    }
                }
                Ok(out)
            }
            Self::Store(l) => {
                use futures::TryStreamExt;
                let listed: Vec<_> = Self::wait(l.store.list(Some(&l.prefix)).try_collect())
                    .map_err(|e| self.error("", "list", e))?;
                Ok(listed
                    .into_iter()
                    .filter_map(|m| m.location.filename().map(str::to_string))
                    .collect())
            }
        }
    }

    fn read(&self, name: &str) -> Result<Vec<RecordBatch>> {
        let bytes = match self {
            Self::Dir(dir) => {
                std::fs::read(dir.join(name)).map_err(|e| self.error(name, "open", e))?
            }
            Self::Store(l) => {
                Self::wait(async { l.store.get(&l.child(name)).await?.bytes().await })
                    .map_err(|e| self.error(name, "read", e))?
                    .to_vec()
            }
        };
        let reader =
            datafusion::arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(bytes), None)
                .map_err(|e| self.error(name, "read", e))?;
        reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(name, "read", e))
    }

    /// Writes `name` whole or not at all: a file under a temporary name renamed, or
    /// one object put.
    fn write(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        match self {
            Self::Dir(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| self.error("", "create", e))?;
                let tmp = dir.join(format!(
                    ".tmp-{}-{}",
                    std::process::id(),
                    crate::checkpoint::new_id()
                ));
                if let Err(e) = std::fs::write(&tmp, bytes) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(self.error(name, "write", e));
                }
                std::fs::rename(&tmp, dir.join(name)).map_err(|e| self.error(name, "write", e))
            }
            Self::Store(l) => Self::wait(l.store.put(&l.child(name), bytes.into()))
                .map(|_| ())
                .map_err(|e| self.error(name, "write", e)),
        }
    }

    /// Removes `name`; one already gone is no error.
    fn remove(&self, name: &str) -> Result<()> {
        let gone = match self {
            Self::Dir(dir) => match std::fs::remove_file(dir.join(name)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r.map_err(|e| e.to_string()),
            },
            Self::Store(l) => match Self::wait(l.store.delete(&l.child(name))) {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                r => r.map_err(|e| e.to_string()),
            },
        };
        gone.map_err(|e| self.error(name, "remove", e))
    }

    /// The versions in the folder: (version, kind, name), oldest first.
    fn versions(&self) -> Result<Vec<(i64, SnapshotKind, String)>> {
        let mut out = Vec::new();
        for name in self.names()? {
            let Some((version, rest)) = name.split_once('.') else {
                continue;
            };
            let kind = match rest {
                "full.arrow" => SnapshotKind::Full,
                "delta.arrow" => SnapshotKind::Delta,
                _ => continue,
            };
            if let Ok(v) = version.parse::<i64>() {
                out.push((v, kind, name));
            }
        }
        out.sort_by_key(|(v, k, _)| (*v, *k == SnapshotKind::Delta));
        Ok(out)
    }
}

/// State partition `partition` as it was at version `prev` (empty without one).
fn load(
    spec: &Spec,
    keys: &[FieldRef],
    values: &[FieldRef],
    partition: usize,
    prev: Option<i64>,
    bound: Option<Arc<crate::state::BoundFn>>,
) -> Result<KeyedState> {
    let config = StateConfig {
        partitions: 1,
        memory: spec.memory,
        ttl: spec.ttl,
        spill_dir: None,
        ledger: LEDGER.clone(),
    };
    let mut state = KeyedState::try_new(keys, values, config)?;
    if let Some(bound) = bound {
        state.set_bound(bound);
    }
    let Some(prev) = prev else {
        return Ok(state);
    };
    let (rows, delta_rows, deltas) =
        read_chain(&partition_dir(&spec.dir, partition), partition, prev)?;
    state.restore(rows)?;
    state.resume_tracking(delta_rows, deltas);
    Ok(state)
}

/// The rows of version `prev` in `dir` (state partition `partition`): the newest
/// full snapshot at or before it, then the deltas after that; with the rows the
/// deltas hold and how many there are.
pub(crate) fn read_chain(
    dir: &Path,
    partition: usize,
    prev: i64,
) -> Result<(Vec<RecordBatch>, usize, usize)> {
    let folder = Folder::of(dir)?;
    let files: Vec<_> = folder
        .versions()?
        .into_iter()
        .filter(|(v, _, _)| *v <= prev)
        .collect();
    let Some(start) = files.iter().rposition(|(_, k, _)| *k == SnapshotKind::Full) else {
        return Err(crate::Error::Checkpoint(format!(
            "state partition {partition}: no full snapshot at or before version {prev} in {} \
             (the driver and every executor must share this folder)",
            folder.shown()
        )));
    };
    let mut rows = Vec::new();
    let mut delta_rows = 0;
    for (i, (_, _, name)) in files[start..].iter().enumerate() {
        let batches = folder.read(name)?;
        if i > 0 {
            delta_rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
        rows.extend(batches);
    }
    Ok((rows, delta_rows, files.len() - start - 1))
}

/// Writes one version of a partition (whole or not at all), and removes the other
/// kind of the same version (an earlier attempt's).
pub(crate) fn write_version(
    dir: &Path,
    version: i64,
    kind: SnapshotKind,
    schema: &SchemaRef,
    rows: &[RecordBatch],
) -> Result<()> {
    let folder = Folder::of(dir)?;
    let name = file_name(version, kind);
    let mut bytes = Vec::new();
    {
        let mut w = datafusion::arrow::ipc::writer::FileWriter::try_new(&mut bytes, schema)?;
        for b in rows {
            w.write(b)?;
        }
        w.finish()?;
    }
    folder.write(&name, bytes)?;
    let other = match kind {
        SnapshotKind::Full => SnapshotKind::Delta,
        SnapshotKind::Delta => SnapshotKind::Full,
    };
    folder.remove(&file_name(version, other))
}

/// Deletes the versions no recovery needs: those older than the newest full snapshot
/// at or before `keep_from`.
pub(crate) fn purge(dir: &Path, keep_from: i64) -> Result<()> {
    let folder = Folder::of(dir)?;
    let files = folder.versions()?;
    let Some(base) = files
        .iter()
        .filter(|(v, k, _)| *v <= keep_from && *k == SnapshotKind::Full)
        .map(|(v, _, _)| *v)
        .next_back()
    else {
        return Ok(());
    };
    for (v, _, name) in files {
        if v < base {
            folder.remove(&name)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_listed_in_order_and_purged_up_to_the_full_a_recovery_needs() {
        let dir = std::env::temp_dir().join(format!("flumen-sp-{}", crate::checkpoint::new_id()));
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::empty());
        for (v, k) in [
            (1, SnapshotKind::Full),
            (2, SnapshotKind::Delta),
            (3, SnapshotKind::Full),
            (4, SnapshotKind::Delta),
            (5, SnapshotKind::Full),
        ] {
            write_version(&dir, v, k, &schema, &[]).unwrap();
        }
        // An attempt that wrote a delta where the replay writes a full: one file left.
        write_version(&dir, 4, SnapshotKind::Full, &schema, &[]).unwrap();
        let listed: Vec<_> = Folder::of(&dir)
            .unwrap()
            .versions()
            .unwrap()
            .into_iter()
            .map(|(v, k, _)| (v, k.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                (1, "full"),
                (2, "delta"),
                (3, "full"),
                (4, "full"),
                (5, "full")
            ]
        );
        // A recovery may start from version 3: it needs 3's full, not 1 or 2.
        purge(&dir, 3).unwrap();
        let left: Vec<i64> = Folder::of(&dir)
            .unwrap()
            .versions()
            .unwrap()
            .iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(left, [3, 4, 5]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
