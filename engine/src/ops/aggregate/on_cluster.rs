//! What the aggregates share when their groups live in state partitions on a
//! cluster's executors (`crate::cluster::state`): the plan, the versions the driver
//! keeps, and the checkpoint's record of where the groups are.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use parking_lot::Mutex;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::record_batch::RecordBatch;

use super::event_time::{self, EventTime, EventTimeWindow};
use super::partial::PartialAggregate;
use crate::Result;
use crate::checkpoint::OperatorState;
use crate::cluster::join::JoinFold;
use crate::cluster::state::{
    FirstRows, Fold, LATE_COLUMN, Placement, Spec, StatePartitionsExec, Versions, WindowSpec,
    summary_schema,
};
use crate::ops::OperatorContext;
use crate::state::StateConfig;
use datafusion::arrow::datatypes::{DataType, Field, Schema};

/// `"state"` in the meta of a checkpoint whose groups live on a cluster.
pub(crate) const ON_CLUSTER: &str = "cluster";

/// What the driver keeps of groups that live on a cluster: where, and their version.
pub(crate) struct OnCluster {
    pub placement: Placement,
    /// Sent with the plan; set before each batch.
    pub versions: Arc<Mutex<Versions>>,
    /// The last batch processed (the version the next one starts from).
    pub version: Option<i64>,
    /// The versions at the last two snapshots: a recovery may start from the older.
    pub snapshots: (Option<i64>, Option<i64>),
    /// Append-mode windows: the second job of a batch, whose tasks emit the windows
    /// the batch's watermark closed (`Versions::close`), and its versions.
    pub close_plan: Option<Arc<dyn ExecutionPlan>>,
    close_versions: Arc<Mutex<Versions>>,
}

impl OnCluster {
    pub fn new(placement: Placement) -> Self {
        Self {
            placement,
            versions: Arc::default(),
            version: None,
            snapshots: (None, None),
            close_plan: None,
            close_versions: Arc::default(),
        }
    }

    /// Before a batch at `now` (ms): the versions its tasks read and write, and the
    /// watermark before it (windows).
    pub fn begin(&self, now: i64, watermark: Option<i64>) {
        *self.versions.lock() = Versions {
            prev: self.version,
            now,
            keep_from: self.snapshots.0.or(self.version),
            watermark,
            close: false,
            watermark_right: None,
        };
    }

    /// After the batch at `now` was folded in: the close plan (append mode) emits the
    /// windows `watermark` closes, from the version the batch wrote.
    pub fn closing(&self, now: i64, watermark: i64) -> Option<Arc<dyn ExecutionPlan>> {
        *self.close_versions.lock() = Versions {
            prev: Some(now),
            now,
            keep_from: None,
            watermark: Some(watermark),
            close: true,
            watermark_right: None,
        };
        self.close_plan.clone()
    }

    /// The tasks folded the batch at `now` in.
    pub fn processed(&mut self, now: i64) {
        self.version = Some(now);
    }

    /// An operator's EXPLAIN `line` with where its state lives on the cluster.
    pub fn explained(&self, line: &str, partitions: usize) -> String {
        format!(
            "{line}; state: {partitions} partitions on the cluster's executors, versions in {}",
            self.placement.dir.display()
        )
    }

    /// The checkpoint's state of an operator whose state is here: no rows, the
    /// record of [`OnCluster::snapshot`].
    pub fn operator_state(&mut self, partitions: usize) -> OperatorState {
        OperatorState {
            batches: Vec::new(),
            meta: self.snapshot(partitions),
        }
    }

    /// A checkpoint's record: no rows, where the groups are and their version.
    pub fn snapshot(&mut self, partitions: usize) -> serde_json::Value {
        self.snapshots = (self.snapshots.1, self.version);
        serde_json::json!({
            "state": ON_CLUSTER,
            "partitions": partitions,
            "version": self.version,
        })
    }

    /// The plan whose tasks keep the groups: `partial`'s rows hash-partitioned by
    /// their columns `keys` (the group keys; a session aggregate's other than the
    /// session) into `config.partitions` state partitions, each folded by one task
    /// emitting rows of `schema`. Append-mode windows: also the close plan, one task
    /// per state partition with no input, emitting rows of `closed_schema`.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &mut self,
        partial: Arc<dyn ExecutionPlan>,
        keys: &[usize],
        config: &StateConfig,
        changed_only: bool,
        window: Option<WindowSpec>,
        schema: SchemaRef,
        closed_schema: Option<SchemaRef>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let partial_schema = partial.schema();
        let shuffled = shuffle(Arc::clone(&partial), keys, config)?;
        let Some(input) = partial.children().first().map(|c| c.schema()) else {
            return crate::internal_err!("a partial aggregate without an input");
        };
        let template = partial.replace_children(
            vec![Arc::new(EmptyExec::new(input))],
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )?;
        let spec = Arc::new(self.spec(config, changed_only, window));
        if let Some(closed_schema) = closed_schema {
            // One empty partition per state partition: Ballista runs a task for each.
            let empty = MemorySourceConfig::try_new_exec(
                &vec![Vec::new(); config.partitions],
                Arc::clone(&partial_schema),
                None,
            )?;
            self.close_plan = Some(Arc::new(StatePartitionsExec::try_new(
                empty,
                Fold::Aggregate(Arc::clone(&template)),
                Arc::clone(&spec),
                Arc::clone(&self.close_versions),
                closed_schema,
            )?));
        }
        Ok(Arc::new(StatePartitionsExec::try_new(
            shuffled,
            Fold::Aggregate(template),
            spec,
            Arc::clone(&self.versions),
            schema,
        )?))
    }
}

impl OnCluster {
    /// A windowed aggregate's plan (windows, or sessions partitioned by their other
    /// keys `keys`): its tasks emit every aggregate's value of `wide` (the hidden ones
    /// give the watermark) and the late-row count — what [`windows_from_tasks`]
    /// reads; in append mode each task's summary, then the close plan the closed
    /// groups.
    #[allow(clippy::too_many_arguments)]
    pub fn plan_window(
        &mut self,
        partial: Arc<dyn ExecutionPlan>,
        keys: &[usize],
        wide: &SchemaRef,
        config: &StateConfig,
        changed_only: bool,
        window: &EventTimeWindow,
        sessions: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut fields: Vec<Field> = wide
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        let (schema, closed_schema) = if window.emit_closed_only {
            (summary_schema(), Some(Arc::new(Schema::new(fields))))
        } else {
            fields.push(Field::new(LATE_COLUMN, DataType::Int64, true));
            (Arc::new(Schema::new(fields)), None)
        };
        self.plan(
            partial,
            keys,
            config,
            changed_only,
            Some(WindowSpec {
                key_index: window.key_index,
                evict_closed: window.evict_closed,
                append: window.emit_closed_only,
                sessions,
            }),
            schema,
            closed_schema,
        )
    }

    fn spec(&self, config: &StateConfig, changed_only: bool, window: Option<WindowSpec>) -> Spec {
        Spec {
            dir: self.placement.dir.clone(),
            partitions: config.partitions,
            changed_only,
            memory: config.memory,
            ttl: config.ttl,
            window,
        }
    }

    /// A dedup's plan: `input`'s rows hash-partitioned by their `first_rows.keys` into
    /// `config.partitions` state partitions, each task keeping the first row of each
    /// key it has not seen and emitting those rows (or every row it keeps).
    pub fn plan_first_rows(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        first_rows: FirstRows,
        config: &StateConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let keys = first_rows.keys.clone();
        self.plan_by_keys(input, &keys, Fold::FirstRows(first_rows), config)
    }

    /// A top-N's plan: `input`'s rows (each batch's own top N per key)
    /// hash-partitioned by the keys, each task ranking them with the kept rows of
    /// their keys and emitting the rows whose rank changed (or every kept row).
    pub fn plan_top_n(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        ranked: crate::ops::top_n::Ranked,
        config: &StateConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let keys = ranked.keys.clone();
        self.plan_by_keys(input, &keys, Fold::TopN(ranked), config)
    }

    /// `input`'s rows hash-partitioned by its columns `keys`, each state
    /// partition's task folding them as `fold` says and emitting rows of `input`'s
    /// schema.
    fn plan_by_keys(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        keys: &[usize],
        fold: Fold,
        config: &StateConfig,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = input.schema();
        let shuffled = shuffle(input, keys, config)?;
        let spec = Arc::new(self.spec(config, false, None));
        Ok(Arc::new(StatePartitionsExec::try_new(
            shuffled,
            fold,
            spec,
            Arc::clone(&self.versions),
            schema,
        )?))
    }
}

impl OnCluster {
    /// A stream join's plan: the tagged union of both sides' rows (`[side, left
    /// columns..., right columns...]`) hash-partitioned by each row's own side's key
    /// columns into `config.partitions` state partitions, each task joining and
    /// keeping its keys' rows and emitting rows of `schema`
    /// (`crate::cluster::join::task_schema`).
    pub fn plan_join(
        &mut self,
        input: Arc<dyn ExecutionPlan>,
        fold: JoinFold,
        config: &StateConfig,
        schema: SchemaRef,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        use datafusion::physical_expr::expressions::CaseExpr;
        let input_schema = input.schema();
        let col = |i: usize| {
            Arc::new(Column::new(input_schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>
        };
        let nl = fold.left.fields().len();
        let exprs = fold
            .left_keys
            .iter()
            .zip(&fold.right_keys)
            .map(|(l, r)| {
                Ok(Arc::new(CaseExpr::try_new(
                    None,
                    vec![(col(0), col(1 + l))],
                    Some(col(1 + nl + r)),
                )?) as Arc<dyn PhysicalExpr>)
            })
            .collect::<Result<Vec<_>>>()?;
        let shuffled = Arc::new(RepartitionExec::try_new(
            input,
            Partitioning::Hash(exprs, config.partitions),
        )?);
        let spec = Arc::new(self.spec(config, false, None));
        Ok(Arc::new(StatePartitionsExec::try_new(
            shuffled,
            Fold::Join(Box::new(fold)),
            spec,
            Arc::clone(&self.versions),
            schema,
        )?))
    }
}

/// `input`'s rows hash-partitioned by its columns `keys` into the state partitions.
fn shuffle(
    input: Arc<dyn ExecutionPlan>,
    keys: &[usize],
    config: &StateConfig,
) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = input.schema();
    let exprs = keys
        .iter()
        .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
        .collect();
    Ok(Arc::new(RepartitionExec::try_new(
        input,
        Partitioning::Hash(exprs, config.partitions),
    )?))
}

/// Checks a checkpoint's `state` against where this run keeps the groups: on a
/// cluster (`cluster`) or here. On the cluster, takes the version back and returns
/// `true` (nothing more to restore); here, returns `false` (the rows are restored as
/// usual). Any other pairing is a clear error, never a silent empty state.
pub(crate) fn restore_placement(
    name: &str,
    cluster: Option<&mut OnCluster>,
    state: &OperatorState,
    partitions: usize,
) -> Result<bool> {
    let on_cluster = state.meta["state"] == ON_CLUSTER;
    match (cluster, on_cluster) {
        (Some(c), true) => {
            let kept = state.meta["partitions"].as_u64().unwrap_or(0) as usize;
            if kept != partitions {
                return Err(crate::Error::Checkpoint(format!(
                    "{name}: the checkpoint keeps its groups in {kept} state partitions on \
                     the cluster, this run has state_partitions = {partitions}: set \
                     state_partitions = {kept}, or start from a new checkpoint"
                )));
            }
            c.version = state.meta["version"].as_i64();
            c.snapshots = (c.version, c.version);
            Ok(true)
        }
        (Some(_), false) if state.batches.iter().any(|b| b.num_rows() > 0) => {
            Err(crate::Error::Checkpoint(format!(
                "{name}: the checkpoint holds its groups on the driver (the query ran \
                 without a cluster); on a cluster they live in state partitions on the \
                 executors: run it without SET cluster, or start from a new checkpoint"
            )))
        }
        (Some(_), false) => Ok(true),
        (None, true) => Err(crate::Error::Checkpoint(format!(
            "{name}: the checkpoint keeps its groups in state partitions on a cluster's \
             executors (the query ran with SET cluster); run it on the cluster again, or \
             start from a new checkpoint"
        ))),
        (None, false) => Ok(false),
    }
}

/// On a cluster: what a windowed aggregate's tasks (windows or sessions) emitted for
/// the batch, as its output; `closing` becomes the plan of its second job when there
/// is one.
///
/// Update and complete mode: the tasks' rows (every aggregate's value, hidden ones
/// too, and a row of late-row counts) are the output; the watermark advances from the
/// groups' newest event times (a group's `max(event time)` covers this batch's rows
/// of it, and any older value is one the watermark already counted). Append mode:
/// each task's summary (late rows, newest event time) advances the watermark, nothing
/// is emitted yet, and when the watermark moved the close plan is due
/// (`StreamOperator::emit_plan`).
pub(super) fn windows_from_tasks(
    time: &mut EventTime,
    agg: &PartialAggregate,
    cluster: &mut OnCluster,
    ctx: &OperatorContext,
    input: Vec<RecordBatch>,
    output_schema: &SchemaRef,
    closing: &mut Option<Arc<dyn ExecutionPlan>>,
) -> Result<Vec<RecordBatch>> {
    // A changelog's rows (a session aggregate's in update mode) end in their kind,
    // after every aggregate's value, in the tasks' rows as in the output.
    let changelog = output_schema
        .fields()
        .last()
        .is_some_and(|f| f.name() == crate::ops::OP_COLUMN);
    let values = if changelog {
        let n = output_schema.fields().len() - 1;
        Arc::new(output_schema.project(&(0..n).collect::<Vec<_>>())?)
    } else {
        Arc::clone(output_schema)
    };
    let now = ctx.batch_time.as_millis();
    let mut late = 0u64;
    let mut max_event_time: Option<i64> = None;
    let mut newest = |m: i64| max_event_time = Some(max_event_time.map_or(m, |x: i64| x.max(m)));
    let mut out = Vec::with_capacity(input.len());
    let append = time.window.emit_closed_only;
    if append {
        for b in &input {
            let lates = b.column(0).as_primitive::<Int64Type>();
            late += lates.iter().flatten().map(|n| n as u64).sum::<u64>();
            b.column(1)
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .for_each(&mut newest);
        }
    } else {
        // The values after the keys: one per aggregate; the hidden max is next to last.
        let max_col = agg.keys() + agg.planned()?.state_widths.len() - 2;
        for b in input {
            let late_col = b.num_columns() - 1;
            let lates = b.column(late_col).as_primitive::<Int64Type>();
            let is_group = datafusion::arrow::compute::is_null(lates)?;
            late += lates.iter().flatten().map(|n| n as u64).sum::<u64>();
            let groups = datafusion::arrow::compute::filter_record_batch(&b, &is_group)?;
            if groups.num_rows() == 0 {
                continue;
            }
            if let Some(m) = event_time::max_of(groups.column(max_col))? {
                newest(m);
            }
            let mut columns = groups.columns().to_vec();
            columns.truncate(late_col);
            let op = if changelog { columns.pop() } else { None };
            let rows = event_time::output_batch(&time.window, &values, columns)?;
            out.push(match op {
                Some(op) => {
                    let mut columns = rows.columns().to_vec();
                    columns.push(op);
                    RecordBatch::try_new(Arc::clone(output_schema), columns)?
                }
                None => rows,
            });
        }
    }
    time.late_rows_last_batch = late;
    let before = time.watermark;
    time.advance(ctx, max_event_time);
    cluster.processed(now);
    *closing = match time.watermark {
        Some(wm) if append && before.is_none_or(|b| wm > b) => cluster.closing(now, wm),
        _ => None,
    };
    if out.is_empty() {
        out.push(RecordBatch::new_empty(Arc::clone(output_schema)));
    }
    Ok(out)
}
